/*
 * cmd_translate.c: `transformer translate`: one detokenized translation per
 * input line, in order, with beam search (src/infer/translate.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "infer/translate.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer translate --model DIR [options] < source.txt > translation.txt\n"
            "  --model DIR            model directory written by `transformer train` (required)\n"
            "  --checkpoint FILE      weights to use instead of DIR/model.safetensors (e.g. an average)\n"
            "  --input FILE           source lines (default: standard input)\n"
            "  --output FILE          translations (default: standard output)\n"
            "  --beam N               beam width; 1 = greedy (default 4, the paper's)\n"
            "  --alpha F              length penalty ((5+|Y|)/6)^alpha (default 0.6, the paper's)\n"
            "  --max-len-plus N       longest output = source length + N (default 50, the paper's)\n"
            "  --nbest N              print the N best as `line ||| text ||| score` (default 1: text only)\n"
            "  --batch-sentences N    sentences decoded together (default 64)\n"
            "  --chunk N              input lines read and sorted at a time (default 10000)\n"
            "  --threads N            (default: all cores, or TFM_NUM_THREADS)\n"
            "  --device cpu|cuda      where the model runs (default cpu; cuda needs a CUDA build)\n"
            "  --precision P          GEMM arithmetic: fp32, tf32 or bf16 (cuda only; default fp32)\n");
}

/* Reads up to `max` lines (without '\n'); returns the count, 0 at the end. */
static size_t read_lines(FILE *in, char **lines, size_t max, int *err) {
    size_t n = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (n < max && (len = getline(&line, &cap, in)) >= 0) {
        if (len && line[len - 1] == '\n') line[--len] = '\0';
        if ((size_t)len != strlen(line)) {
            *err = 1; /* a NUL byte inside a line */
            break;
        }
        lines[n++] = strdup(line);
    }
    free(line);
    return n;
}

int cmd_translate(int argc, char **argv) {
    const char *model = NULL, *checkpoint = NULL, *input = NULL, *output = NULL, *device = "cpu", *precision = NULL;
    tfm_translate_params p;
    tfm_translate_default_params(&p);
    int threads = 0, chunk = 10000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (!v) { fprintf(stderr, "transformer translate: %s needs a value\n", a); return 2; }
        int ok = 1;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--checkpoint")) checkpoint = v;
        else if (!strcmp(a, "--input")) input = v;
        else if (!strcmp(a, "--output")) output = v;
        else if (!strcmp(a, "--beam")) ok = tfm_cli_int(v, 1, 1024, &p.beam.beam);
        else if (!strcmp(a, "--alpha")) ok = tfm_cli_float(v, &p.beam.alpha) && p.beam.alpha >= 0;
        else if (!strcmp(a, "--max-len-plus")) ok = tfm_cli_int(v, 0, 1 << 20, &p.beam.max_len_a_plus);
        else if (!strcmp(a, "--nbest")) ok = tfm_cli_int(v, 1, 1024, &p.beam.nbest);
        else if (!strcmp(a, "--batch-sentences")) ok = tfm_cli_int(v, 1, 1 << 16, &p.batch_sentences);
        else if (!strcmp(a, "--chunk")) ok = tfm_cli_int(v, 1, 1 << 24, &chunk);
        else if (!strcmp(a, "--threads")) ok = tfm_cli_int(v, 1, 4096, &threads);
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--precision")) precision = v;
        else { fprintf(stderr, "transformer translate: unknown option %s\n", a); usage(stderr); return 2; }
        if (!ok) { fprintf(stderr, "transformer translate: %s: bad value '%s'\n", a, v); return 2; }
        i++;
    }
    if (!model) { fprintf(stderr, "transformer translate: --model DIR is required\n"); return 2; }
    if (p.beam.nbest > p.beam.beam) {
        fprintf(stderr, "transformer translate: --nbest %d exceeds --beam %d\n", p.beam.nbest, p.beam.beam);
        return 2;
    }
    tfm_cli_set_threads(threads);
    const tfm_backend *be;
    if (tfm_backend_select(device, &be) != TFM_OK || (precision && tfm_backend_set_precision(be, precision) != TFM_OK)) {
        fprintf(stderr, "transformer translate: %s\n", tfm_last_error());
        return 2;
    }
    tfm_translator t;
    if (tfm_translator_load(&t, model, checkpoint) != TFM_OK) {
        fprintf(stderr, "transformer translate: %s\n", tfm_last_error());
        return 1;
    }
    if (tfm_model_to_backend(&t.model, be) != TFM_OK) {
        fprintf(stderr, "transformer translate: %s\n", tfm_last_error());
        tfm_translator_free(&t);
        return 1;
    }
    FILE *in = input ? fopen(input, "rb") : stdin;
    if (!in) {
        fprintf(stderr, "transformer translate: %s: cannot open: %s\n", input, strerror(errno));
        tfm_translator_free(&t);
        return 1;
    }
    FILE *out = output ? fopen(output, "w") : stdout;
    if (!out) {
        fprintf(stderr, "transformer translate: %s: cannot write: %s\n", output, strerror(errno));
        if (input) fclose(in);
        tfm_translator_free(&t);
        return 1;
    }
    const char *name = input ? input : "<stdin>";
    char **lines = malloc((size_t)chunk * sizeof *lines);
    char **res = malloc((size_t)chunk * p.beam.nbest * sizeof *res);
    float *scores = malloc((size_t)chunk * p.beam.nbest * sizeof *scores);
    int rc = lines && res && scores ? 0 : 1;
    size_t done = 0, n, cut_total = 0;
    int nul = 0;
    while (!rc && (n = read_lines(in, lines, (size_t)chunk, &nul)) > 0) {
        size_t cut = 0;
        if (tfm_translate_lines(&t, (const char *const *)lines, n, &p, res, scores, &cut) != TFM_OK) {
            /* Messages name the line within the chunk: make it the file's. */
            const char *msg = tfm_last_error();
            size_t l;
            if (sscanf(msg, "line %zu:", &l) == 1)
                fprintf(stderr, "transformer translate: %s:%zu:%s\n", name, done + l, strchr(msg, ':') + 1);
            else
                fprintf(stderr, "transformer translate: %s\n", msg);
            rc = 1;
        }
        for (size_t i = 0; !rc && i < n; i++)
            for (int k = 0; k < p.beam.nbest; k++) {
                if (p.beam.nbest == 1) fprintf(out, "%s\n", res[i]);
                else fprintf(out, "%zu ||| %s ||| %.4f\n", done + i, res[i * p.beam.nbest + k], scores[i * p.beam.nbest + k]);
            }
        for (size_t i = 0; !rc && i < n * p.beam.nbest; i++) free(res[i]);
        for (size_t i = 0; i < n; i++) free(lines[i]);
        done += n;
        cut_total += cut;
    }
    if (nul) {
        fprintf(stderr, "transformer translate: %s:%zu: a NUL byte inside the line\n", name, done + 1);
        rc = 1;
    }
    if (!rc && ferror(in)) {
        fprintf(stderr, "transformer translate: %s: read error\n", name);
        rc = 1;
    }
    if (cut_total) fprintf(stderr, "transformer translate: %zu source(s) cut to %d tokens\n", cut_total, t.model.cfg.max_positions);
    if (output && fclose(out) != 0) {
        fprintf(stderr, "transformer translate: %s: write failed\n", output);
        rc = 1;
    } else if (!output && fflush(out) != 0) {
        rc = 1;
    }
    if (input) fclose(in);
    free(lines);
    free(res);
    free(scores);
    tfm_translator_free(&t);
    return rc;
}
