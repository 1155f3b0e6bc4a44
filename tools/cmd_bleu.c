/*
 * cmd_bleu.c: `transformer bleu REF [REF...] [-i HYP] < HYP`, corpus or
 * sentence BLEU / chrF / chrF++ as sacreBLEU 2.6.0's command line computes it.
 *
 * Lines are read as UTF-8 and, as sacreBLEU's CLI does, stripped of trailing
 * whitespace; line i of every file is segment i. Output: per metric a score
 * line in sacreBLEU's text style ("BLEU = 34.12 65.2/41.0/... (BP = ...)")
 * followed by the signature line, or sacreBLEU's JSON (--json).
 *
 * Differences from sacreBLEU's CLI, on purpose: the default width is 2
 * decimals (sacreBLEU 2.x: 1; pass -w 1 for its numbers); text output puts the
 * signature on its own line instead of "BLEU|signature = ..."; standard input
 * is one system (sacreBLEU splits it on tabs into several systems); no test
 * sets, TER, confidence intervals or paired tests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "core/utf8.h"
#include "text/bleu.h"

#define MAX_REFS 64

typedef struct lines {
    char *data;    /* the whole file, lines NUL-terminated in place */
    char **line;
    size_t n;
} lines;

typedef struct bleu_opts {
    const char *refs[MAX_REFS];
    int nrefs;
    const char *input; /* NULL: standard input */
    int want_bleu, want_chrf;
    tfm_bleu_params bleu;
    tfm_chrf_params chrf;
    int width;
    int json;
    int score_only;
    int sentence;
} bleu_opts;

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer bleu REF [REF...] [-i HYP] [options] < HYP\n"
            "\n"
            "Scores hypotheses against one or more reference files as sacreBLEU 2.6.0 does.\n"
            "Files are UTF-8, one segment per line, trailing whitespace stripped; line i of\n"
            "every file is segment i.\n"
            "\n"
            "  -i, --input FILE           hypotheses (default: standard input)\n"
            "  -m, --metrics M [M...]     bleu and/or chrf (default: bleu)\n"
            "  -lc, --lowercase           BLEU: case-insensitive (default: off)\n"
            "  -tok, --tokenize T         BLEU: 13a, intl, none or char (default: 13a)\n"
            "  -s, --smooth-method S      BLEU: exp, floor, add-k or none (default: exp)\n"
            "  -sv, --smooth-value V      BLEU: value for floor / add-k (default: floor 0.1, add-k 1)\n"
            "  -cc, --chrf-char-order N   chrF: character n-gram order (default: 6)\n"
            "  -cw, --chrf-word-order N   chrF: word n-gram order, 2 = chrF++ (default: 0)\n"
            "  --chrf-beta N              chrF: weight of recall over precision (default: 2)\n"
            "  --chrf-lowercase           chrF: case-insensitive (default: off)\n"
            "  --chrf-whitespace          chrF: keep whitespace in character n-grams (default: off)\n"
            "  --chrf-eps-smoothing       chrF: epsilon smoothing, not effective order (default: off)\n"
            "  -sl, --sentence-level      score each line; BLEU uses effective order (default: off)\n"
            "  -w, --width N              decimals of the score (default: 2)\n"
            "  -b, --score-only           print only the score (default: off)\n"
            "  --json, -f json|text       sacreBLEU's JSON output, or text (default: text)\n"
            "  -h, --help                 print this help\n"
            "\n"
            "example: transformer bleu newstest.de -i output.de -m bleu chrf\n");
}

/* ------------------------------------------------------------------ reading */

static void lines_free(lines *l) {
    free(l->data);
    free(l->line);
    memset(l, 0, sizeof *l);
}

/* Reads a whole file (path NULL: standard input) into l, one entry per line
 * (a last line without '\n' counts), each checked for UTF-8 and NUL bytes and
 * stripped of trailing whitespace. `what` names it in messages. Returns 0, or
 * 1 after printing an error. */
static int read_lines(const char *path, const char *what, lines *l) {
    memset(l, 0, sizeof *l);
    FILE *f = path ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "transformer bleu: cannot open %s: %s\n", what, strerror(errno));
        return 1;
    }
    size_t len = 0, cap = 1 << 16;
    char *data = malloc(cap);
    int err = 0;
    while (data) {
        if (len + 1 >= cap) {
            char *p = realloc(data, cap * 2);
            if (!p) { free(data); data = NULL; break; }
            data = p;
            cap *= 2;
        }
        size_t got = fread(data + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) err = errno ? errno : EIO;
            break;
        }
    }
    if (path) fclose(f);
    if (!data) {
        fprintf(stderr, "transformer bleu: out of memory reading %s\n", what);
        return 1;
    }
    if (err) {
        fprintf(stderr, "transformer bleu: cannot read %s: %s\n", what, strerror(err));
        free(data);
        return 1;
    }
    data[len] = '\0';
    size_t nlines = 0;
    for (size_t i = 0; i < len; i++) nlines += data[i] == '\n';
    if (len > 0 && data[len - 1] != '\n') nlines++;
    l->data = data;
    l->line = malloc((nlines + 1) * sizeof *l->line);
    if (!l->line) {
        fprintf(stderr, "transformer bleu: out of memory reading %s\n", what);
        lines_free(l);
        return 1;
    }
    size_t start = 0;
    for (size_t k = 0; k < nlines; k++) {
        size_t end = start;
        while (end < len && data[end] != '\n') end++;
        size_t n = end - start;
        char *s = data + start;
        if (memchr(s, '\0', n)) {
            fprintf(stderr, "transformer bleu: %s: line %zu: contains a NUL byte\n", what, k + 1);
            lines_free(l);
            return 1;
        }
        size_t bad;
        if (!tfm_utf8_valid(s, n, &bad)) {
            fprintf(stderr, "transformer bleu: %s: line %zu: invalid UTF-8 at byte %zu of the line\n",
                    what, k + 1, bad + 1);
            lines_free(l);
            return 1;
        }
        s[tfm_text_rstrip_len(s, n)] = '\0';
        l->line[k] = s;
        start = end + 1;
    }
    l->n = nlines;
    return 0;
}

/* ------------------------------------------------------------------ parsing */

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "transformer bleu: %s: expected an integer in [%d, %d], got '%s'\n", flag,
                lo, hi, v ? v : "");
        return 2;
    }
    *out = (int)x;
    return 0;
}

/* a is the flag `x`, or its other spelling `y` (NULL: none). */
static int is_flag(const char *a, const char *x, const char *y) {
    return !strcmp(a, x) || (y && !strcmp(a, y));
}

static int parse_args(int argc, char **argv, bleu_opts *o) {
    memset(o, 0, sizeof *o);
    tfm_bleu_default_params(&o->bleu);
    tfm_chrf_default_params(&o->chrf);
    o->width = 2;
    int metrics_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define IS(x, y) is_flag(a, x, y)
#define NEED_VALUE()                                                                           \
    do {                                                                                       \
        if (!v) {                                                                              \
            fprintf(stderr, "transformer bleu: %s needs a value\n", a);                        \
            return 2;                                                                          \
        }                                                                                      \
        i++;                                                                                   \
    } while (0)
        if (IS("-h", "--help")) {
            usage(stdout);
            return -1;
        } else if (IS("-i", "--input")) {
            NEED_VALUE();
            if (o->input) {
                fprintf(stderr, "transformer bleu: -i/--input given twice (one system at a time)\n");
                return 2;
            }
            o->input = v;
        } else if (IS("-m", "--metrics")) {
            int n = 0;
            /* Like sacreBLEU's nargs='+': the metric names that follow. */
            while (i + 1 < argc && (!strcmp(argv[i + 1], "bleu") || !strcmp(argv[i + 1], "chrf") ||
                                    !strcmp(argv[i + 1], "ter"))) {
                const char *m = argv[++i];
                if (!strcmp(m, "bleu")) o->want_bleu = 1;
                else if (!strcmp(m, "chrf")) o->want_chrf = 1;
                else {
                    fprintf(stderr, "transformer bleu: -m: TER is not implemented (bleu, chrf)\n");
                    return 2;
                }
                n++;
            }
            if (!n) {
                fprintf(stderr, "transformer bleu: -m needs at least one metric: bleu, chrf (got '%s')\n",
                        v ? v : "");
                return 2;
            }
            metrics_given = 1;
        } else if (IS("-lc", "--lowercase")) {
            o->bleu.lowercase = 1;
        } else if (IS("-tok", "--tokenize")) {
            NEED_VALUE();
            if (!strcmp(v, "13a")) o->bleu.tokenize = TFM_BLEU_TOK_13A;
            else if (!strcmp(v, "intl")) o->bleu.tokenize = TFM_BLEU_TOK_INTL;
            else if (!strcmp(v, "none")) o->bleu.tokenize = TFM_BLEU_TOK_NONE;
            else if (!strcmp(v, "char")) o->bleu.tokenize = TFM_BLEU_TOK_CHAR;
            else {
                fprintf(stderr, "transformer bleu: -tok: unknown tokenizer '%s' (13a, intl, none, char)\n", v);
                return 2;
            }
        } else if (IS("-s", "--smooth-method")) {
            NEED_VALUE();
            if (!strcmp(v, "exp")) o->bleu.smooth = TFM_BLEU_SMOOTH_EXP;
            else if (!strcmp(v, "floor")) o->bleu.smooth = TFM_BLEU_SMOOTH_FLOOR;
            else if (!strcmp(v, "add-k")) o->bleu.smooth = TFM_BLEU_SMOOTH_ADD_K;
            else if (!strcmp(v, "none")) o->bleu.smooth = TFM_BLEU_SMOOTH_NONE;
            else {
                fprintf(stderr, "transformer bleu: -s: unknown smoothing '%s' (exp, floor, add-k, none)\n", v);
                return 2;
            }
        } else if (IS("-sv", "--smooth-value")) {
            NEED_VALUE();
            char *end;
            errno = 0;
            double x = strtod(v, &end);
            if (!*v || *end || errno || !(x >= 0) || x > 1e300) {
                fprintf(stderr, "transformer bleu: -sv: expected a number >= 0, got '%s'\n", v);
                return 2;
            }
            o->bleu.smooth_value = x;
        } else if (IS("-cc", "--chrf-char-order")) {
            NEED_VALUE();
            if (parse_int(a, v, 0, TFM_CHRF_MAX_ORDERS, &o->chrf.char_order)) return 2;
        } else if (IS("-cw", "--chrf-word-order")) {
            NEED_VALUE();
            if (parse_int(a, v, 0, TFM_CHRF_MAX_ORDERS, &o->chrf.word_order)) return 2;
        } else if (IS("--chrf-beta", NULL)) {
            NEED_VALUE();
            if (parse_int(a, v, 0, 1000000, &o->chrf.beta)) return 2;
        } else if (IS("--chrf-lowercase", NULL)) {
            o->chrf.lowercase = 1;
        } else if (IS("--chrf-whitespace", NULL)) {
            o->chrf.whitespace = 1;
        } else if (IS("--chrf-eps-smoothing", NULL)) {
            o->chrf.eps_smoothing = 1;
        } else if (IS("-sl", "--sentence-level")) {
            o->sentence = 1;
        } else if (IS("-w", "--width")) {
            NEED_VALUE();
            if (parse_int(a, v, 0, 17, &o->width)) return 2;
        } else if (IS("-b", "--score-only")) {
            o->score_only = 1;
        } else if (IS("--json", NULL)) {
            o->json = 1;
        } else if (IS("-f", "--format")) {
            NEED_VALUE();
            if (!strcmp(v, "json")) o->json = 1;
            else if (!strcmp(v, "text")) o->json = 0;
            else {
                fprintf(stderr, "transformer bleu: -f: unknown format '%s' (json, text)\n", v);
                return 2;
            }
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "transformer bleu: unknown option '%s' (see --help)\n", a);
            return 2;
        } else {
            if (o->nrefs == MAX_REFS) {
                fprintf(stderr, "transformer bleu: at most %d reference files\n", MAX_REFS);
                return 2;
            }
            o->refs[o->nrefs++] = a;
        }
#undef IS
#undef NEED_VALUE
    }
    if (!metrics_given) o->want_bleu = 1;
    if (o->nrefs == 0) {
        fprintf(stderr, "transformer bleu: no reference file given\n");
        usage(stderr);
        return 2;
    }
    if (o->sentence && o->want_bleu && o->want_chrf) {
        fprintf(stderr, "transformer bleu: -sl takes one metric at a time\n");
        return 2;
    }
    if (o->want_chrf && tfm_chrf_params_validate(&o->chrf) != TFM_OK) {
        fprintf(stderr, "transformer bleu: %s\n", tfm_last_error());
        return 2;
    }
    /* sacreBLEU's CLI turns effective order on for sentence-level BLEU. */
    if (o->sentence) o->bleu.effective_order = 1;
    return 0;
}

/* ----------------------------------------------------------------- printing */

typedef struct scored {
    char name[48];
    double score;
    char signature[160];
    char verbose[160]; /* "" for chrF */
} scored;

static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

/* One result as sacreBLEU's Score.format(is_json=True) writes it
 * (json.dumps(indent=1)): name, score rounded to the width, signature,
 * verbose_score, then each signature field as a string. */
static void print_json(const scored *r, int width) {
    char num[64], rounded[64];
    snprintf(num, sizeof num, "%.*f", width, r->score);
    tfm_format_py_float(strtod(num, NULL), rounded, sizeof rounded);
    printf("{\n \"name\": ");
    print_json_string(r->name);
    printf(",\n \"score\": %s,\n \"signature\": ", rounded);
    print_json_string(r->signature);
    if (r->verbose[0]) {
        printf(",\n \"verbose_score\": ");
        print_json_string(r->verbose);
    }
    char sig[160];
    snprintf(sig, sizeof sig, "%s", r->signature);
    for (char *field = strtok(sig, "|"); field; field = strtok(NULL, "|")) {
        char *colon = strchr(field, ':');
        if (!colon) continue;
        *colon = '\0';
        printf(",\n ");
        print_json_string(field);
        printf(": ");
        print_json_string(colon + 1);
    }
    printf("\n}");
}

static void print_text(const scored *r, int width) {
    printf("%s = %.*f", r->name, width, r->score);
    if (r->verbose[0]) printf(" %s", r->verbose);
    putchar('\n');
}

static void fill_bleu(scored *s, const tfm_bleu_result *r, const tfm_bleu_params *p, int nrefs) {
    snprintf(s->name, sizeof s->name, "BLEU");
    s->score = r->score;
    tfm_bleu_signature(p, nrefs, s->signature, sizeof s->signature);
    tfm_bleu_verbose(r, s->verbose, sizeof s->verbose);
}

static void fill_chrf(scored *s, const tfm_chrf_result *r, const tfm_chrf_params *p, int nrefs) {
    tfm_chrf_name(p, s->name, sizeof s->name);
    s->score = r->score;
    tfm_chrf_signature(p, nrefs, s->signature, sizeof s->signature);
    s->verbose[0] = '\0';
}

/* --------------------------------------------------------------------- main */

static int run(const bleu_opts *o, lines *hyp, lines *refs) {
    size_t n = hyp->n;
    const char *const *ref_streams[MAX_REFS];
    for (int r = 0; r < o->nrefs; r++) ref_streams[r] = (const char *const *)refs[r].line;
    const char *const *hyps = (const char *const *)hyp->line;

    if (!o->sentence) {
        scored res[2];
        int nres = 0;
        /* sacreBLEU prints the metrics sorted by name: BLEU, then CHRF. */
        if (o->want_bleu) {
            tfm_bleu_result r;
            if (tfm_bleu_corpus(hyps, ref_streams, o->nrefs, n, &o->bleu, &r) != TFM_OK) goto fail;
            fill_bleu(&res[nres++], &r, &o->bleu, r.nrefs);
        }
        if (o->want_chrf) {
            tfm_chrf_result r;
            if (tfm_chrf_corpus(hyps, ref_streams, o->nrefs, n, &o->chrf, &r) != TFM_OK) goto fail;
            fill_chrf(&res[nres++], &r, &o->chrf, r.stats.nrefs);
        }
        if (o->score_only) {
            for (int i = 0; i < nres; i++) printf("%.*f\n", o->width, res[i].score);
        } else if (o->json) {
            if (nres > 1) printf("[\n");
            for (int i = 0; i < nres; i++) {
                print_json(&res[i], o->width);
                printf(i + 1 < nres ? ",\n" : "\n");
            }
            if (nres > 1) printf("]\n");
        } else {
            for (int i = 0; i < nres; i++) {
                print_text(&res[i], o->width);
                printf("%s\n", res[i].signature);
            }
        }
        return 0;
    }

    /* Sentence level: one score per line, then the signature once. */
    const char *seg[MAX_REFS];
    int nrefs_seen = 0;
    char last_sig[160] = "";
    if (o->json && !o->score_only) printf("[\n");
    for (size_t i = 0; i < n; i++) {
        for (int r = 0; r < o->nrefs; r++) seg[r] = refs[r].line[i];
        scored s;
        int k;
        if (o->want_bleu) {
            tfm_bleu_result r;
            if (tfm_bleu_sentence(hyps[i], seg, o->nrefs, &o->bleu, &r) != TFM_OK) goto fail_line;
            fill_bleu(&s, &r, &o->bleu, r.nrefs);
            k = r.nrefs;
        } else {
            tfm_chrf_result r;
            if (tfm_chrf_sentence(hyps[i], seg, o->nrefs, &o->chrf, &r) != TFM_OK) goto fail_line;
            fill_chrf(&s, &r, &o->chrf, r.stats.nrefs);
            k = r.stats.nrefs;
        }
        if (nrefs_seen == 0) nrefs_seen = k;
        else if (nrefs_seen != k) nrefs_seen = -1;
        if (o->score_only) {
            printf("%.*f\n", o->width, s.score);
        } else if (o->json) {
            print_json(&s, o->width);
            printf(i + 1 < n ? ",\n" : "\n");
        } else {
            print_text(&s, o->width);
        }
        continue;
    fail_line:
        fprintf(stderr, "transformer bleu: line %zu: %s\n", i + 1, tfm_last_error());
        return 1;
    }
    if (o->json && !o->score_only) printf("]\n");
    if (!o->json && !o->score_only) {
        if (o->want_bleu) tfm_bleu_signature(&o->bleu, nrefs_seen ? nrefs_seen : o->nrefs, last_sig, sizeof last_sig);
        else tfm_chrf_signature(&o->chrf, nrefs_seen ? nrefs_seen : o->nrefs, last_sig, sizeof last_sig);
        printf("%s\n", last_sig);
    }
    return 0;
fail:
    fprintf(stderr, "transformer bleu: %s\n", tfm_last_error());
    return 1;
}

int cmd_bleu(int argc, char **argv) {
    bleu_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc < 0) return 0; /* --help */
    if (rc) return rc;

    lines refs[MAX_REFS];
    lines hyp;
    memset(refs, 0, sizeof refs);
    memset(&hyp, 0, sizeof hyp);
    char what[4096];
    int nread = 0;
    rc = 1;
    for (int r = 0; r < o.nrefs; r++, nread++) {
        snprintf(what, sizeof what, "reference file '%s'", o.refs[r]);
        if (read_lines(o.refs[r], what, &refs[r])) goto done;
    }
    if (o.input) snprintf(what, sizeof what, "hypothesis file '%s'", o.input);
    else snprintf(what, sizeof what, "hypotheses on standard input");
    if (read_lines(o.input, what, &hyp)) goto done;
    if (hyp.n == 0) {
        fprintf(stderr, "transformer bleu: %s: no lines to score\n", what);
        goto done;
    }
    for (int r = 0; r < o.nrefs; r++) {
        if (refs[r].n != hyp.n) {
            fprintf(stderr,
                    "transformer bleu: line counts differ: %zu lines in %s, %zu lines in reference "
                    "file '%s'\n",
                    hyp.n, what, refs[r].n, o.refs[r]);
            goto done;
        }
    }
    /* sacreBLEU drops empty references and refuses a line left with none. */
    for (size_t i = 0; i < hyp.n; i++) {
        int any = 0;
        for (int r = 0; r < o.nrefs; r++) any |= refs[r].line[i][0] != '\0';
        if (!any) {
            fprintf(stderr,
                    "transformer bleu: line %zu: the reference is empty in every reference file "
                    "(sacreBLEU refuses such a line too)\n",
                    i + 1);
            goto done;
        }
    }
    rc = run(&o, &hyp, refs);
done:
    for (int r = 0; r < nread; r++) lines_free(&refs[r]);
    lines_free(&hyp);
    return rc;
}
