/*
 * attention_html.c: the attention weights of one sentence pair as one
 * self-contained HTML page with inline SVG heatmaps (see attention_html.h).
 *
 * The page is plain HTML + CSS + SVG: no script, no web font, no external
 * reference, so it opens the same anywhere, offline, and can be mailed. Hover
 * text uses SVG <title> elements, which every browser shows as a tooltip.
 *
 * Every piece of text that comes from outside (token pieces, the sentences,
 * the model name) goes through put_text(), which escapes HTML/XML
 * metacharacters, shows control characters as their visible Control Pictures
 * (U+2400..), and turns invalid UTF-8 into U+FFFD, so the page stays
 * well-formed whatever the tokenizer or the user hands us.
 *
 * Shapes: Tq query positions (rows), Tk key positions (columns), H heads.
 */
#include "infer/attention_html.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/atomic_file.h"
#include "core/status.h"
#include "core/utf8.h"

/* ------------------------------------------------------------------ text */

/* How put_text_n shows U+2581, the BPE space marker. */
enum { MARK_PLAIN = 0, MARK_SVG = 1, MARK_HTML = 2 };

/* Writes [s, s+len) as escaped text. At most max_cps code points are written
 * (then "…"); max_cps <= 0 means all. With marker MARK_SVG / MARK_HTML each
 * U+2581 is wrapped in <tspan class="sp"> / <span class="sp">, so it reads as
 * a muted marker rather than as part of the word. */
static void put_text_n(FILE *f, const char *s, size_t len, int max_cps, int marker) {
    const char *p = s, *end = s + len;
    int n = 0;
    while (p < end) {
        if (max_cps > 0 && n == max_cps) {
            fputs("\xE2\x80\xA6", f); /* … */
            return;
        }
        uint32_t cp;
        int k = tfm_utf8_decode(p, end, &cp);
        if (k == 0) { /* invalid byte: one replacement character per byte */
            fputs("\xEF\xBF\xBD", f);
            p++;
            n++;
            continue;
        }
        switch (cp) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default:
            if (cp < 0x20) {
                /* Control Pictures: U+2400 + cp (tab -> ␉, newline -> ␊). */
                char buf[4];
                int m = tfm_utf8_encode(0x2400 + cp, buf);
                fwrite(buf, 1, (size_t)m, f);
            } else if (cp == 0x7F) {
                fputs("\xE2\x90\xA1", f); /* ␡ */
            } else if ((cp >= 0x80 && cp <= 0x9F) || cp == 0xFFFE || cp == 0xFFFF) {
                fputs("\xEF\xBF\xBD", f); /* not allowed in HTML text */
            } else if (cp == 0x2581 && marker == MARK_SVG) {
                fputs("<tspan class=\"sp\">\xE2\x96\x81</tspan>", f);
            } else if (cp == 0x2581 && marker == MARK_HTML) {
                fputs("<span class=\"sp\">\xE2\x96\x81</span>", f);
            } else {
                fwrite(p, 1, (size_t)k, f);
            }
        }
        p += k;
        n++;
    }
}

static void put_text(FILE *f, const char *s) {
    if (s) put_text_n(f, s, strlen(s), 0, MARK_PLAIN);
}

/* Width of a label in character cells: code points, wide (East Asian,
 * emoji) ones counting two; capped at max_cps + 1 (the ellipsis). */
static int label_cells(const char *s, int max_cps) {
    const char *p = s, *end = s + strlen(s);
    int cells = 0, n = 0;
    while (p < end) {
        if (n == max_cps) return cells + 1;
        uint32_t cp;
        int k = tfm_utf8_decode(p, end, &cp);
        if (k == 0) k = 1, cp = '?';
        cells += (cp >= 0x1100 && cp != 0x2581 && !(cp >= 0x2400 && cp < 0x2500)) ? 2 : 1;
        p += k;
        n++;
    }
    return cells;
}

/* ---------------------------------------------------------------- colour */

/* White -> dark blue ("Blues" of ColorBrewer), piecewise linear in v. */
static void colour(float v, char out[8]) {
    static const unsigned char stops[9][3] = {
        {255, 255, 255}, {222, 235, 247}, {198, 219, 239}, {158, 202, 225}, {107, 174, 214},
        {66, 146, 198},  {33, 113, 181},  {8, 81, 156},    {8, 48, 107},
    };
    if (!(v > 0)) v = 0; /* NaN too */
    if (v > 1) v = 1;
    float x = v * 8;
    int i = (int)x;
    if (i > 7) i = 7;
    float t = x - (float)i;
    int rgb[3];
    for (int c = 0; c < 3; c++)
        rgb[c] = (int)lroundf((float)stops[i][c] + t * (float)(stops[i + 1][c] - stops[i][c]));
    snprintf(out, 8, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

/* --------------------------------------------------------------- heatmap */

enum { LABEL_MAX_CPS = 14 }; /* longer axis labels are cut (the tooltip has all) */

typedef struct heatmap_style {
    const char *cls;       /* "heatmap" or "average" */
    int cell;              /* px per cell */
    int font;              /* px; 0 = no axis labels */
    int mark_argmax;       /* outline the largest cell of each row */
    int values;            /* print values >= 0.1 inside the cells */
} heatmap_style;

static int labels_width(const char *const *labels, int n, int font) {
    int w = 0;
    for (int i = 0; i < n; i++) {
        int c = label_cells(labels[i], LABEL_MAX_CPS);
        if (c > w) w = c;
    }
    /* Monospace glyphs are 0.6em wide. */
    return (int)ceil(w * 0.6 * font) + 6;
}

static void put_label(FILE *f, const char *s) {
    put_text_n(f, s, strlen(s), LABEL_MAX_CPS, MARK_SVG);
}

/* One heatmap: p [Tq, Tk] row-major; rows labelled by rlab, columns by clab.
 * causal != 0 marks the cells above the diagonal as masked (the decoder's
 * future). Writes exactly Tq*Tk <rect> elements. */
static void heatmap(FILE *f, const heatmap_style *st, const char *kind, int layer, int head,
                    const float *p, int Tq, int Tk, const char *const *rlab,
                    const char *const *clab, int causal) {
    int cell = st->cell, font = st->font;
    int left = font ? labels_width(rlab, Tq, font) : 2;
    int top = font ? labels_width(clab, Tk, font) : 2;
    int W = left + Tk * cell + 2, Hh = top + Tq * cell + 2;
    fprintf(f, "<svg class=\"%s\" data-kind=\"%s\" data-layer=\"%d\" data-head=\"%d\" data-rows=\"%d\" "
               "data-cols=\"%d\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "xmlns=\"http://www.w3.org/2000/svg\">\n",
            st->cls, kind, layer, head, Tq, Tk, W, Hh, W, Hh);
    if (font) {
        fprintf(f, "<g class=\"lab\" font-size=\"%d\">\n", font);
        for (int i = 0; i < Tq; i++) {
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" dominant-baseline=\"central\">",
                    left - 4, top + (i + 0.5) * cell);
            put_label(f, rlab[i]);
            fputs("</text>\n", f);
        }
        for (int j = 0; j < Tk; j++) {
            fprintf(f, "<text transform=\"translate(%.1f %d) rotate(-90)\" dominant-baseline=\"central\">",
                    left + (j + 0.5) * cell, top - 4);
            put_label(f, clab[j]);
            fputs("</text>\n", f);
        }
        fputs("</g>\n", f);
    }
    fputs("<g class=\"cells\">\n", f);
    for (int i = 0; i < Tq; i++) {
        const float *row = p + (size_t)i * Tk;
        int best = 0;
        for (int j = 1; j < Tk; j++)
            if (row[j] > row[best]) best = j;
        for (int j = 0; j < Tk; j++) {
            int masked = causal && j > i;
            char fill[8];
            if (masked)
                memcpy(fill, "#ececec", 8);
            else
                colour(row[j], fill);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"", left + j * cell,
                    top + i * cell, cell, cell, fill);
            if (st->mark_argmax && j == best && !masked) fputs(" class=\"max\"", f);
            fputs("><title>", f);
            put_text(f, rlab[i]);
            fputs(" \xE2\x86\x92 ", f); /* → */
            put_text(f, clab[j]);
            if (masked)
                fputs(": masked (future position)", f);
            else
                fprintf(f, ": %.3f", (double)row[j]);
            fputs("</title></rect>\n", f);
        }
    }
    fputs("</g>\n", f);
    if (st->values) {
        /* Two digits where they matter; pointer-events off so hovering a
         * number still shows its cell's tooltip. */
        fprintf(f, "<g class=\"vals\" font-size=\"%d\" text-anchor=\"middle\" dominant-baseline=\"central\" "
                   "pointer-events=\"none\">\n",
                cell * 2 / 5);
        for (int i = 0; i < Tq; i++)
            for (int j = 0; j < Tk && !(causal && j > i); j++) {
                float v = p[(size_t)i * Tk + j];
                if (!(v >= 0.1f)) continue;
                long pct = lroundf(v * 100);
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\"%s>", left + (j + 0.5) * cell, top + (i + 0.5) * cell,
                        v > 0.55f ? " class=\"hi\"" : "");
                if (pct >= 100)
                    fputs("1</text>\n", f);
                else
                    fprintf(f, ".%02ld</text>\n", pct);
            }
        fputs("</g>\n", f);
    }
    fputs("</svg>\n", f);
}

/* Cell size for a heatmap of n x n or so: `budget` px for the longer side,
 * within [lo, hi]. */
static int cell_size(int Tq, int Tk, int budget, int lo, int hi) {
    int n = Tq > Tk ? Tq : Tk;
    int c = budget / (n > 0 ? n : 1);
    return c < lo ? lo : c > hi ? hi : c;
}

/* ----------------------------------------------------------------- page */

static const char *CSS =
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;"
    "background:#fff}\n"
    "h1{font-size:22px;margin:0 0 12px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd;"
    "padding-bottom:4px}\n"
    "p.note{color:#555;font-size:13px;margin:4px 0 10px;max-width:70em}\n"
    "table.info{border-collapse:collapse;font-size:14px}\n"
    "table.info th{text-align:left;vertical-align:top;padding:3px 14px 3px 0;color:#555;font-weight:600;"
    "white-space:nowrap}\n"
    "table.info td{padding:3px 0}\n"
    ".toks{display:flex;flex-wrap:wrap;gap:3px}\n"
    ".tok{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:12px;"
    "background:#eef3f8;border:1px solid #cfdbe7;border-radius:3px;padding:0 4px;white-space:pre}\n"
    ".sp{fill:#aaa;color:#aaa}\n"
    "nav a{margin-right:14px;font-size:14px}\n"
    ".layer{display:flex;align-items:flex-start;margin:6px 0 2px;padding-bottom:6px;"
    "border-bottom:1px dashed #eee}\n"
    ".lname{flex:0 0 72px;font-weight:600;font-size:13px;padding-top:4px}\n"
    ".heads{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:flex-start}\n"
    "figure{margin:0}figcaption{font-size:12px;color:#555;text-align:center}\n"
    ".avgs{display:flex;flex-wrap:wrap;gap:10px 40px;align-items:flex-start}\n"
    ".avgs figcaption{font-size:14px;color:#333;text-align:left;margin-bottom:4px}\n"
    "svg .lab{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace;fill:#222}\n"
    "svg .cells{shape-rendering:crispEdges}\n"
    "svg rect.max{stroke:#d62728;stroke-width:2}\n"
    "svg .vals{font-family:system-ui,sans-serif;fill:#222}svg .vals .hi{fill:#fff}\n"
    "svg .cells rect:hover{stroke:#f0a020;stroke-width:2}\n";

static void put_tokens(FILE *f, const char *const *labels, int n) {
    fputs("<div class=\"toks\">", f);
    for (int i = 0; i < n; i++) {
        fputs("<span class=\"tok\">", f);
        put_text_n(f, labels[i], strlen(labels[i]), 0, MARK_HTML);
        fputs("</span>", f);
    }
    fputs("</div>", f);
}

static const char *positions_name(tfm_positions p) {
    switch (p) {
    case TFM_POS_SINUSOIDAL: return "sinusoidal";
    case TFM_POS_LEARNED: return "learned";
    case TFM_POS_ROPE: return "rotary";
    case TFM_POS_NONE: return "none";
    }
    return "?";
}

static void put_model_summary(FILE *f, const tfm_model *m) {
    const tfm_config *c = &m->cfg;
    if (c->enc_layers && c->dec_layers)
        fprintf(f, "encoder-decoder, %d + %d layers", c->enc_layers, c->dec_layers);
    else if (c->dec_layers)
        fprintf(f, "decoder-only, %d layers", c->dec_layers);
    else
        fprintf(f, "encoder-only, %d layers", c->enc_layers);
    fprintf(f, "; d_model %d, %d heads (d_k %d, d_v %d), d_ff %d %s; %s-LN; %s positions (max %d); ",
            c->d_model, c->heads, m->dk, m->dv, c->d_ff, c->activation == TFM_ACT_GELU ? "GELU" : "ReLU",
            c->norm == TFM_NORM_PRE ? "pre" : "post", positions_name(c->positions), c->max_positions);
    if (c->enc_layers && c->dec_layers)
        fprintf(f, "vocabulary %d / %d", c->src_vocab, c->tgt_vocab);
    else if (c->dec_layers)
        fprintf(f, "vocabulary %d", c->tgt_vocab);
    else
        fprintf(f, "vocabulary %d", c->src_vocab);
}

/* The colour scale: a gradient bar from 0 to 1 and a masked swatch. */
static void put_legend(FILE *f, int causal) {
    fputs("<svg class=\"legend\" width=\"420\" height=\"40\" viewBox=\"0 0 420 40\" "
          "xmlns=\"http://www.w3.org/2000/svg\">\n<defs><linearGradient id=\"scale\">",
          f);
    for (int k = 0; k <= 8; k++) {
        char c[8];
        colour((float)k / 8, c);
        fprintf(f, "<stop offset=\"%d%%\" stop-color=\"%s\"/>", k * 100 / 8, c);
    }
    fputs("</linearGradient></defs>\n"
          "<rect x=\"10\" y=\"4\" width=\"300\" height=\"14\" fill=\"url(#scale)\" stroke=\"#999\"/>\n",
          f);
    for (int k = 0; k <= 4; k++)
        fprintf(f, "<text x=\"%d\" y=\"33\" font-size=\"11\" text-anchor=\"middle\">%.2g</text>\n", 10 + k * 75,
                k / 4.0);
    if (causal)
        fputs("<rect x=\"335\" y=\"4\" width=\"14\" height=\"14\" fill=\"#ececec\" stroke=\"#999\"/>"
              "<text x=\"355\" y=\"15\" font-size=\"11\">masked</text>\n",
              f);
    fputs("</svg>\n", f);
}

/* Mean over heads (and over layers first..last-1) of one kind of attention,
 * into avg [Tq, Tk]. */
static void mean_attention(const tfm_model *m, const tfm_workspace *ws, tfm_attn_kind kind, int first,
                           int last, float *avg, int Tq, int Tk) {
    int H = m->cfg.heads;
    size_t n = (size_t)Tq * Tk;
    for (size_t i = 0; i < n; i++) avg[i] = 0;
    double scale = 1.0 / ((double)H * (last - first));
    for (int l = first; l < last; l++) {
        int q, k;
        const float *p = tfm_workspace_attention(m, ws, kind, l, &q, &k);
        TFM_ASSERT(p != NULL && q == Tq && k == Tk);
        for (int h = 0; h < H; h++)
            for (size_t i = 0; i < n; i++) avg[i] += (float)(p[(size_t)h * n + i] * scale);
    }
}

static const char *kind_key(tfm_attn_kind k) {
    return k == TFM_ATTN_ENCODER ? "encoder" : k == TFM_ATTN_DECODER ? "decoder" : "cross";
}

/* One section: a row of per-head heatmaps for every layer of `kind`. */
static void put_section(FILE *f, const tfm_model *m, const tfm_workspace *ws, tfm_attn_kind kind,
                        int layers, const char *title, const char *note, const char *const *rlab,
                        const char *const *clab) {
    fprintf(f, "<section id=\"%s\">\n<h2>%s</h2>\n<p class=\"note\">%s</p>\n", kind_key(kind), title, note);
    for (int l = 0; l < layers; l++) {
        int Tq, Tk;
        const float *p = tfm_workspace_attention(m, ws, kind, l, &Tq, &Tk);
        TFM_ASSERT(p != NULL);
        heatmap_style st = {"heatmap", cell_size(Tq, Tk, 200, 5, 14), 0, 0, 0};
        /* Labels only where they can be read; the tooltips always name the pieces. */
        st.font = st.cell >= 7 ? (st.cell < 10 ? st.cell : 10) : 0;
        fprintf(f, "<div class=\"layer\"><div class=\"lname\">layer %d</div><div class=\"heads\">\n", l + 1);
        for (int h = 0; h < m->cfg.heads; h++) {
            fprintf(f, "<figure><figcaption>head %d</figcaption>\n", h + 1);
            heatmap(f, &st, kind_key(kind), l, h, p + (size_t)h * Tq * Tk, Tq, Tk, rlab, clab,
                    kind == TFM_ATTN_DECODER);
            fputs("</figure>\n", f);
        }
        fputs("</div></div>\n", f);
    }
    fputs("</section>\n", f);
}

/* Labels of an id sequence: the BPE pieces ("<id N>" past the tokenizer's
 * vocabulary), stored in one buffer. */
typedef struct labels {
    const char **s;
    char *buf;
} labels;

static tfm_status make_labels(labels *L, const tfm_bpe *bpe, int bos, const int32_t *a, int na,
                              const int32_t *b, int nb) {
    int n = bos + na + nb;
    L->s = calloc((size_t)(n > 0 ? n : 1), sizeof *L->s);
    L->buf = calloc((size_t)(n > 0 ? n : 1), 24);
    if (!L->s || !L->buf) return tfm_error(TFM_ERR_NOMEM, "attention page: out of memory for %d labels", n);
    int k = 0;
    if (bos) L->s[k++] = "<s>";
    for (int i = 0; i < na + nb; i++, k++) {
        int32_t id = i < na ? a[i] : b[i - na];
        const char *piece = tfm_bpe_piece(bpe, id);
        if (!piece) {
            char *slot = L->buf + (size_t)k * 24;
            snprintf(slot, 24, "<id %d>", (int)id);
            piece = slot;
        }
        L->s[k] = piece;
    }
    return TFM_OK;
}

static void free_labels(labels *L) {
    free(L->s);
    free(L->buf);
}

void tfm_attention_html_default_params(tfm_attention_html_params *p) {
    TFM_ASSERT(p != NULL);
    memset(p, 0, sizeof *p);
    p->title = "Attention weights";
    p->step = -1;
}

static tfm_status check_ids(const int32_t *ids, int n, int vocab, const char *what) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return tfm_error(TFM_ERR_INVALID,
                             "attention page: %s piece %d has id %d, outside the model's vocabulary of %d "
                             "(is the tokenizer the one this model was trained with?)",
                             what, i + 1, (int)ids[i], vocab);
    return TFM_OK;
}

tfm_status tfm_attention_html_write(const tfm_model *m, const tfm_bpe *bpe, const int32_t *src, int S,
                                    const int32_t *tgt, int T, const tfm_attention_html_params *params,
                                    FILE *f) {
    TFM_ASSERT(m != NULL && bpe != NULL && f != NULL && S >= 0 && T >= 0);
    TFM_ASSERT((S == 0 || src != NULL) && (T == 0 || tgt != NULL));
    tfm_attention_html_params defaults;
    tfm_attention_html_default_params(&defaults);
    const tfm_attention_html_params *p = params ? params : &defaults;
    const tfm_config *c = &m->cfg;
    int has_enc = c->enc_layers > 0, has_dec = c->dec_layers > 0, P = c->max_positions;

    /* The sequences each stack reads. */
    int Se = has_enc ? S : 0;                      /* encoder length */
    int Td = !has_dec ? 0 : has_enc ? 1 + T : 1 + S + T; /* decoder length, <s> included */
    if (has_enc && S == 0) return tfm_error(TFM_ERR_INVALID, "attention page: the source is empty");
    if (has_enc && S > P)
        return tfm_error(TFM_ERR_INVALID,
                         "attention page: the source is %d pieces long; this model takes at most %d "
                         "(max_positions)",
                         S, P);
    if (!has_dec && T > 0)
        return tfm_error(TFM_ERR_INVALID,
                         "attention page: an encoder-only model has no target side; give only a source");
    if (has_dec && Td > P)
        return tfm_error(TFM_ERR_INVALID,
                         "attention page: the %s is %d pieces long with <s>; this model takes at most %d "
                         "(max_positions)",
                         has_enc ? "target" : "text", Td, P);
    if (has_enc) TFM_TRY(check_ids(src, S, c->src_vocab, "source"));
    if (has_dec) {
        if (!has_enc) TFM_TRY(check_ids(src, S, c->tgt_vocab, "text"));
        TFM_TRY(check_ids(tgt, T, c->tgt_vocab, has_enc ? "target" : "continuation"));
    }

    tfm_status st = TFM_OK;
    tfm_workspace ws;
    memset(&ws, 0, sizeof ws);
    labels enc_lab = {0}, dec_lab = {0};
    int32_t *tgt_in = NULL;
    float *avg = NULL;

    st = make_labels(&enc_lab, bpe, 0, src, Se, NULL, 0);
    if (st == TFM_OK)
        st = has_enc ? make_labels(&dec_lab, bpe, 1, tgt, has_dec ? T : 0, NULL, 0)
                     : make_labels(&dec_lab, bpe, 1, src, S, tgt, T);
    if (st != TFM_OK) goto done;
    if (has_dec) {
        tgt_in = malloc((size_t)Td * sizeof *tgt_in);
        if (!tgt_in) {
            st = tfm_error(TFM_ERR_NOMEM, "attention page: out of memory");
            goto done;
        }
        tgt_in[0] = c->bos_id;
        if (has_enc) {
            if (T) memcpy(tgt_in + 1, tgt, (size_t)T * sizeof *tgt);
        } else {
            if (S) memcpy(tgt_in + 1, src, (size_t)S * sizeof *src);
            if (T) memcpy(tgt_in + 1 + S, tgt, (size_t)T * sizeof *tgt);
        }
    }
    st = tfm_workspace_init_mode(&ws, m, 1, Se, Td, 0, 0, TFM_ATTENTION_FULL); /* keeps the probabilities */
    if (st != TFM_OK) goto done;
    tfm_batch batch = {.B = 1, .S = Se, .T = Td, .src = has_enc ? src : NULL, .tgt_in = tgt_in};
    st = tfm_model_forward(m, &ws, &batch, 0, 0);
    if (st != TFM_OK) goto done;

    /* The averaged view: cross-attention when there is one, else the one
     * self-attention the model has. */
    tfm_attn_kind avg_kind = has_enc && has_dec ? TFM_ATTN_CROSS : has_dec ? TFM_ATTN_DECODER : TFM_ATTN_ENCODER;
    int avg_layers = avg_kind == TFM_ATTN_ENCODER ? c->enc_layers : c->dec_layers;
    int aq = avg_kind == TFM_ATTN_ENCODER ? Se : Td, ak = avg_kind == TFM_ATTN_DECODER ? Td : Se;
    const char *const *arl = avg_kind == TFM_ATTN_ENCODER ? enc_lab.s : dec_lab.s;
    const char *const *acl = avg_kind == TFM_ATTN_DECODER ? dec_lab.s : enc_lab.s;
    avg = malloc((size_t)aq * ak * sizeof *avg);
    if (!avg) {
        st = tfm_error(TFM_ERR_NOMEM, "attention page: out of memory");
        goto done;
    }

    /* ---- head */
    const char *title = p->title ? p->title : "Attention weights";
    fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>",
          f);
    put_text(f, title);
    if (p->model_name) {
        fputs(": ", f);
        put_text(f, p->model_name);
    }
    fprintf(f, "</title>\n<style>\n%s</style>\n</head>\n<body>\n<header>\n<h1>", CSS);
    put_text(f, title);
    fputs("</h1>\n<table class=\"info\">\n", f);
    if (p->model_name) {
        fputs("<tr><th>model</th><td>", f);
        put_text(f, p->model_name);
        if (p->step >= 0) fprintf(f, " (step %ld)", p->step);
        fputs("</td></tr>\n", f);
    }
    fputs("<tr><th>config</th><td>", f);
    put_model_summary(f, m);
    fputs("</td></tr>\n", f);
    const char *src_name = has_enc ? "source" : "text";
    if (p->source_text) {
        fprintf(f, "<tr><th>%s</th><td>", src_name);
        put_text(f, p->source_text);
        fputs("</td></tr>\n", f);
    }
    if (has_enc) {
        fprintf(f, "<tr><th>source pieces (%d)</th><td>", Se);
        put_tokens(f, enc_lab.s, Se);
        fputs("</td></tr>\n", f);
    }
    if (p->target_text && has_dec) {
        fprintf(f, "<tr><th>%s</th><td>", has_enc ? "target" : "continuation");
        put_text(f, p->target_text);
        if (p->target_note) {
            fputs(" <i>(", f);
            put_text(f, p->target_note);
            fputs(")</i>", f);
        }
        fputs("</td></tr>\n", f);
    }
    if (has_dec) {
        fprintf(f, "<tr><th>decoder input (%d)</th><td>", Td);
        put_tokens(f, dec_lab.s, Td);
        fputs("</td></tr>\n", f);
    }
    fputs("</table>\n<nav>", f);
    if (has_enc && has_dec) fputs("<a href=\"#alignment\">alignment</a>", f);
    else fputs("<a href=\"#alignment\">average</a>", f);
    if (has_enc) fputs("<a href=\"#encoder\">encoder self-attention</a>", f);
    if (has_dec) fputs("<a href=\"#decoder\">decoder self-attention</a>", f);
    if (has_enc && has_dec) fputs("<a href=\"#cross\">cross-attention</a>", f);
    fputs("</nav>\n</header>\n", f);

    fputs("<h2>Colour scale</h2>\n<p class=\"note\">Each row is a query position (the piece that "
          "attends), each column a key position (the piece attended to); a row's cells sum to 1. The "
          "colour is linear in the probability and the same for every heatmap. Hover over a cell for "
          "its value. <span class=\"tok\">\xE2\x96\x81</span> marks a piece that starts with a space. "
          "The decoder row labelled &lt;s&gt; is the first decoder input; row i predicts the piece "
          "of row i+1.</p>\n",
          f);
    put_legend(f, has_dec);

    /* ---- averaged view */
    fputs("<section id=\"alignment\">\n", f);
    if (avg_kind == TFM_ATTN_CROSS)
        fputs("<h2>Alignment: cross-attention averaged over heads</h2>\n<p class=\"note\">Rows: decoder "
              "inputs; columns: source pieces. The red outline marks the source piece each decoder "
              "position attends to most: a soft word alignment.</p>\n",
              f);
    else
        fprintf(f, "<h2>%s self-attention averaged over heads</h2>\n<p class=\"note\">The red outline marks "
                   "the key each position attends to most.</p>\n",
                avg_kind == TFM_ATTN_DECODER ? "Decoder" : "Encoder");
    fputs("<div class=\"avgs\">\n", f);
    heatmap_style big = {"average", cell_size(aq, ak, 560, 12, 34), 0, 1, 0};
    big.font = big.cell >= 16 ? 13 : big.cell;
    big.values = big.cell >= 22;
    for (int pass = 0; pass < (avg_layers > 1 ? 2 : 1); pass++) {
        int first = pass == 0 ? avg_layers - 1 : 0;
        mean_attention(m, &ws, avg_kind, first, avg_layers, avg, aq, ak);
        if (pass == 0)
            fprintf(f, "<figure><figcaption>last layer (%d), mean of %d heads</figcaption>\n", avg_layers,
                    c->heads);
        else
            fprintf(f, "<figure><figcaption>all %d layers, mean of %d heads each</figcaption>\n", avg_layers,
                    c->heads);
        heatmap(f, &big, kind_key(avg_kind), pass == 0 ? avg_layers - 1 : -1, -1, avg, aq, ak, arl, acl,
                avg_kind == TFM_ATTN_DECODER);
        fputs("</figure>\n", f);
    }
    fputs("</div>\n</section>\n", f);

    /* ---- per layer and head */
    if (has_enc)
        put_section(f, m, &ws, TFM_ATTN_ENCODER, c->enc_layers, "Encoder self-attention",
                    "Rows and columns: source pieces. One row per layer, one heatmap per head.", enc_lab.s,
                    enc_lab.s);
    if (has_dec)
        put_section(f, m, &ws, TFM_ATTN_DECODER, c->dec_layers, "Decoder self-attention (masked)",
                    "Rows and columns: decoder inputs. Grey cells are future positions, masked out.",
                    dec_lab.s, dec_lab.s);
    if (has_enc && has_dec)
        put_section(f, m, &ws, TFM_ATTN_CROSS, c->dec_layers, "Cross-attention (decoder \xE2\x86\x92 encoder)",
                    "Rows: decoder inputs; columns: source pieces.", dec_lab.s, enc_lab.s);
    fputs("</body>\n</html>\n", f);
    if (fflush(f) != 0 || ferror(f))
        st = tfm_error(TFM_ERR_IO, "attention page: writing failed: %s", strerror(errno));

done:
    free(avg);
    free(tgt_in);
    free_labels(&enc_lab);
    free_labels(&dec_lab);
    tfm_workspace_free(&ws);
    return st;
}

tfm_status tfm_attention_html_save(const tfm_model *m, const tfm_bpe *bpe, const int32_t *src, int S,
                                   const int32_t *tgt, int T, const tfm_attention_html_params *p,
                                   const char *path) {
    TFM_ASSERT(path != NULL);
    tfm_atomic_file af;
    TFM_TRY(tfm_atomic_open(&af, path));
    tfm_status st = tfm_attention_html_write(m, bpe, src, S, tgt, T, p, af.f);
    if (st != TFM_OK) {
        tfm_atomic_abort(&af);
        return st == TFM_ERR_IO ? tfm_error(TFM_ERR_IO, "%s: write failed: %s", path, strerror(errno)) : st;
    }
    return tfm_atomic_commit(&af);
}
