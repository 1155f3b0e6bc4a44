/* curves.c: see curves.h. */
#include "train/curves.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/atomic_file.h"
#include "core/status.h"

static const char *TRAIN_HEADER = "step,epoch,loss,lr,grad_norm,tokens_per_s,elapsed_s\n";
static const char *VALID_HEADER = "step,epoch,loss,perplexity,bleu,elapsed_s\n";

static tfm_status append_line(const char *dir, const char *name, const char *header, const char *line) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fresh = access(path, F_OK) != 0;
    FILE *f = fopen(path, "a");
    if (!f) return tfm_error(TFM_ERR_IO, "%s: cannot open for appending", path);
    if (fresh) fputs(header, f);
    fputs(line, f);
    if (fclose(f) != 0) return tfm_error(TFM_ERR_IO, "%s: write failed", path);
    return TFM_OK;
}

tfm_status tfm_curves_append_train(const char *dir, long step, long epoch, double loss, double lr,
                                   double grad_norm, double tokens_per_s, double elapsed) {
    char line[256];
    snprintf(line, sizeof line, "%ld,%ld,%.9g,%.6g,%.6g,%.1f,%.1f\n", step, epoch, loss, lr, grad_norm,
             tokens_per_s, elapsed);
    return append_line(dir, "train.csv", TRAIN_HEADER, line);
}

tfm_status tfm_curves_append_valid(const char *dir, long step, long epoch, double loss, double bleu,
                                   double elapsed) {
    char line[256];
    snprintf(line, sizeof line, "%ld,%ld,%.9g,%.6g,%.4f,%.1f\n", step, epoch, loss, exp(loss), bleu, elapsed);
    return append_line(dir, "valid.csv", VALID_HEADER, line);
}

/* Rewrites one CSV keeping the header and the rows whose step <= `step`. */
static tfm_status truncate_file(const char *dir, const char *name, long step) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *in = fopen(path, "r");
    if (!in) return TFM_OK;
    tfm_atomic_file af;
    tfm_status st = tfm_atomic_open(&af, path);
    if (st != TFM_OK) {
        fclose(in);
        return st;
    }
    char line[1024];
    int first = 1;
    while (fgets(line, sizeof line, in)) {
        if (first || atol(line) <= step) fputs(line, af.f);
        first = 0;
    }
    fclose(in);
    return tfm_atomic_commit(&af);
}

tfm_status tfm_curves_truncate(const char *dir, long step) {
    TFM_TRY(truncate_file(dir, "train.csv", step));
    return truncate_file(dir, "valid.csv", step);
}

typedef struct series {
    double *x, *y;
    int n, cap;
} series;

static void push(series *s, double x, double y) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        double *nx = realloc(s->x, cap * sizeof *nx), *ny = realloc(s->y, cap * sizeof *ny);
        if (!nx || !ny) {
            free(nx ? nx : s->x);
            free(ny ? ny : s->y);
            s->x = s->y = NULL;
            s->n = s->cap = 0;
            return;
        }
        s->x = nx;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n++] = y;
}

/* Reads column `col` (0-based) against column 0 from a CSV. */
static void read_series(const char *dir, const char *name, int col, series *s) {
    char path[4096], line[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return;
    int first = 1;
    while (fgets(line, sizeof line, f)) {
        if (first) { first = 0; continue; }
        double vals[8] = {0};
        int k = 0;
        for (char *p = line; k < 8 && p; k++) {
            vals[k] = strtod(p, NULL);
            p = strchr(p, ',');
            if (p) p++;
        }
        if (k > col && isfinite(vals[col])) push(s, vals[0], vals[col]);
    }
    fclose(f);
}

static void polyline(FILE *f, const series *s, double x0, double x1, double y0, double y1, const char *color,
                     double left, double top, double w, double h) {
    if (s->n == 0) return;
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", color);
    for (int i = 0; i < s->n; i++) {
        double px = left + (x1 > x0 ? (s->x[i] - x0) / (x1 - x0) : 0) * w;
        double py = top + h - (y1 > y0 ? (s->y[i] - y0) / (y1 - y0) : 0) * h;
        fprintf(f, "%.1f,%.1f ", px, py);
    }
    fprintf(f, "\"/>\n");
}

tfm_status tfm_curves_plot(const char *dir) {
    series train = {0}, valid = {0}, bleu = {0};
    read_series(dir, "train.csv", 2, &train);
    read_series(dir, "valid.csv", 2, &valid);
    read_series(dir, "valid.csv", 4, &bleu);
    double x0 = 0, x1 = 1, y0 = 0, y1 = 1, b1 = 1;
    for (int i = 0; i < train.n; i++) { x1 = fmax(x1, train.x[i]); y1 = fmax(y1, train.y[i]); }
    for (int i = 0; i < valid.n; i++) { x1 = fmax(x1, valid.x[i]); y1 = fmax(y1, valid.y[i]); }
    for (int i = 0; i < bleu.n; i++) b1 = fmax(b1, bleu.y[i]);
    y1 = ceil(y1);
    b1 = ceil(b1 / 10) * 10;
    char path[4096];
    snprintf(path, sizeof path, "%s/curves.svg", dir);
    tfm_atomic_file af;
    tfm_status st = tfm_atomic_open(&af, path);
    if (st != TFM_OK) {
        free(train.x); free(train.y); free(valid.x); free(valid.y); free(bleu.x); free(bleu.y);
        return st;
    }
    FILE *f = af.f;
    double L = 60, T = 30, W = 640, H = 320;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" "
               "font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", L + W + 60, T + H + 50);
    fprintf(f, "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#999\"/>\n", L, T, W, H);
    for (int k = 0; k <= 5; k++) {
        double y = T + H - k * H / 5;
        fprintf(f, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#eee\"/>\n", L, y, L + W, y);
        fprintf(f, "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%.2g</text>\n", L - 4, y + 4, y0 + k * (y1 - y0) / 5);
        fprintf(f, "<text x=\"%g\" y=\"%.1f\" fill=\"#2a7\">%.0f</text>\n", L + W + 4, y + 4, k * b1 / 5);
        double x = L + k * W / 5;
        fprintf(f, "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%.0f</text>\n", x, T + H + 14, x0 + k * (x1 - x0) / 5);
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">step</text>\n", L + W / 2, T + H + 32);
    fprintf(f, "<text x=\"%g\" y=\"18\">training loss (blue), validation loss (red), validation BLEU (green, right axis)</text>\n", L);
    polyline(f, &train, x0, x1, y0, y1, "#36c", L, T, W, H);
    polyline(f, &valid, x0, x1, y0, y1, "#c33", L, T, W, H);
    polyline(f, &bleu, x0, x1, 0, b1, "#2a7", L, T, W, H);
    fprintf(f, "</svg>\n");
    free(train.x); free(train.y); free(valid.x); free(valid.y); free(bleu.x); free(bleu.y);
    return tfm_atomic_commit(&af);
}
