/*
 * test_bleu.c: BLEU, chrF and chrF++ against sacreBLEU 2.6.0's own numbers.
 *
 * Reproduces every row of shared/bleu/expected.tsv (corpus level, every
 * metric and option), sentence_bleu.tsv and sentence_chrf.tsv: score and
 * precisions within 0.01, BP within 1e-4, lengths, counts, totals and chrF
 * statistics exactly, signatures exactly. Then golden checks of the pieces
 * (lowercasing, tokenizers, Python float repr), the API's error paths, the
 * `transformer bleu` command line end to end, and a timing check.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"
#include "text/bleu.h"

#define MAX_CASES 32
#define MAX_REF_STREAMS 4

static const char *shared_dir;

/* ---------------------------------------------------------------- file data */

typedef struct text_lines {
    char *data;
    char **line;
    size_t n;
} text_lines;

/* Reads a file into lines (split on '\n', a final '\n' ends the last line).
 * Returns 0 when the file does not exist. */
static int load_lines(const char *path, text_lines *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    out->data = malloc((size_t)len + 1);
    if (!out->data || fread(out->data, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    out->data[len] = '\0';
    size_t n = 0;
    for (long i = 0; i < len; i++) n += out->data[i] == '\n';
    if (len > 0 && out->data[len - 1] != '\n') n++;
    out->line = malloc((n + 1) * sizeof *out->line);
    char *p = out->data;
    for (size_t k = 0; k < n; k++) {
        out->line[k] = p;
        char *nl = strchr(p, '\n');
        if (nl) {
            *nl = '\0';
            p = nl + 1;
        }
    }
    out->n = n;
    return 1;
}

static void free_lines(text_lines *l) {
    free(l->data);
    free(l->line);
}

typedef struct test_case {
    char name[64];
    text_lines hyp;
    text_lines refs[MAX_REF_STREAMS];
    int nrefs;
} test_case;

static test_case cases[MAX_CASES];
static int ncases;

static test_case *get_case(const char *name) {
    for (int i = 0; i < ncases; i++)
        if (!strcmp(cases[i].name, name)) return &cases[i];
    if (ncases == MAX_CASES) {
        fprintf(stderr, "too many cases\n");
        exit(1);
    }
    test_case *c = &cases[ncases];
    snprintf(c->name, sizeof c->name, "%s", name);
    char path[1024];
    snprintf(path, sizeof path, "%s/bleu/cases/%s.hyp", shared_dir, name);
    if (!load_lines(path, &c->hyp)) {
        fprintf(stderr, "missing %s\n", path);
        exit(1);
    }
    for (int r = 0; r < MAX_REF_STREAMS; r++) {
        if (r == 0) snprintf(path, sizeof path, "%s/bleu/cases/%s.ref", shared_dir, name);
        else snprintf(path, sizeof path, "%s/bleu/cases/%s.ref%d", shared_dir, name, r + 1);
        if (!load_lines(path, &c->refs[r])) break;
        c->nrefs++;
    }
    ncases++;
    return c;
}

/* ------------------------------------------------------------ TSV parsing */

#define MAX_FIELDS 20

/* Splits a line (modified in place) on tabs; returns the field count. */
static int split_tabs(char *line, char **f) {
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p; p++) {
        if (*p == '\t') {
            *p = '\0';
            if (n < MAX_FIELDS) f[n++] = p + 1;
        }
    }
    return n;
}

static int parse_i64s(const char *s, int64_t *out, int max) {
    int n = 0;
    char *end;
    while (*s && n < max) {
        out[n++] = strtoll(s, &end, 10);
        if (end == s) break;
        s = end;
    }
    return n;
}

/* Applies a comma-separated option list ("lowercase,tokenize=intl"). */
static int apply_options(const char *opts, tfm_bleu_params *b, tfm_chrf_params *c) {
    if (!strcmp(opts, "default")) return 1;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", opts);
    for (char *o = strtok(buf, ","); o; o = strtok(NULL, ",")) {
        char *eq = strchr(o, '=');
        const char *v = eq ? eq + 1 : "";
        if (eq) *eq = '\0';
        if (!strcmp(o, "lowercase")) b->lowercase = c->lowercase = 1;
        else if (!strcmp(o, "tokenize")) {
            if (!strcmp(v, "13a")) b->tokenize = TFM_BLEU_TOK_13A;
            else if (!strcmp(v, "intl")) b->tokenize = TFM_BLEU_TOK_INTL;
            else if (!strcmp(v, "none")) b->tokenize = TFM_BLEU_TOK_NONE;
            else if (!strcmp(v, "char")) b->tokenize = TFM_BLEU_TOK_CHAR;
            else return 0;
        } else if (!strcmp(o, "smooth")) {
            if (!strcmp(v, "exp")) b->smooth = TFM_BLEU_SMOOTH_EXP;
            else if (!strcmp(v, "floor")) b->smooth = TFM_BLEU_SMOOTH_FLOOR;
            else if (!strcmp(v, "add-k")) b->smooth = TFM_BLEU_SMOOTH_ADD_K;
            else if (!strcmp(v, "none")) b->smooth = TFM_BLEU_SMOOTH_NONE;
            else return 0;
        } else if (!strcmp(o, "smooth_value")) b->smooth_value = atof(v);
        else if (!strcmp(o, "effective_order")) b->effective_order = 1;
        else if (!strcmp(o, "whitespace")) c->whitespace = 1;
        else if (!strcmp(o, "eps_smoothing")) c->eps_smoothing = 1;
        else if (!strcmp(o, "beta")) c->beta = atoi(v);
        else if (!strcmp(o, "char_order")) c->char_order = atoi(v);
        else if (!strcmp(o, "word_order")) c->word_order = atoi(v);
        else return 0;
    }
    return 1;
}

/* ------------------------------------------------------------- comparisons */

typedef struct worst {
    double score, prec, bp;
    char score_at[160], prec_at[160], bp_at[160];
    int rows, rows_ok;
} worst;

static void track(double *w, char *at, double d, const char *where) {
    if (d > *w || isnan(d)) {
        *w = isnan(d) ? INFINITY : d;
        snprintf(at, 160, "%s", where);
    }
}

/* Compares one BLEU result with the TSV fields starting at f[0] = score:
 * score p1 p2 p3 p4 bp sys_len ref_len counts totals. Returns 1 if all match. */
static int check_bleu(const char *where, const tfm_bleu_result *r, char **f, const char *want_sig,
                      const char *got_sig, worst *w) {
    int ok = 1;
    double d = fabs(r->score - atof(f[0]));
    track(&w->score, w->score_at, d, where);
    if (!(d <= 0.01)) {
        ok = 0;
        fprintf(stderr, "  %s: score %.12g, want %s\n", where, r->score, f[0]);
    }
    for (int n = 0; n < 4; n++) {
        double dp = fabs(r->precisions[n] - atof(f[1 + n]));
        track(&w->prec, w->prec_at, dp, where);
        if (!(dp <= 0.01)) {
            ok = 0;
            fprintf(stderr, "  %s: p%d %.12g, want %s\n", where, n + 1, r->precisions[n], f[1 + n]);
        }
    }
    double db = fabs(r->bp - atof(f[5]));
    track(&w->bp, w->bp_at, db, where);
    if (!(db <= 1e-4)) {
        ok = 0;
        fprintf(stderr, "  %s: bp %.12g, want %s\n", where, r->bp, f[5]);
    }
    if (r->sys_len != atoll(f[6]) || r->ref_len != atoll(f[7])) {
        ok = 0;
        fprintf(stderr, "  %s: sys_len/ref_len %lld/%lld, want %s/%s\n", where,
                (long long)r->sys_len, (long long)r->ref_len, f[6], f[7]);
    }
    int64_t counts[4], totals[4];
    if (parse_i64s(f[8], counts, 4) != 4 || parse_i64s(f[9], totals, 4) != 4) {
        fprintf(stderr, "  %s: malformed counts/totals\n", where);
        return 0;
    }
    for (int n = 0; n < 4; n++) {
        if (r->counts[n] != counts[n] || r->totals[n] != totals[n]) {
            ok = 0;
            fprintf(stderr, "  %s: order %d counts/totals %lld/%lld, want %lld/%lld\n", where, n + 1,
                    (long long)r->counts[n], (long long)r->totals[n], (long long)counts[n],
                    (long long)totals[n]);
        }
    }
    if (strcmp(want_sig, got_sig)) {
        ok = 0;
        fprintf(stderr, "  %s: signature\n    got  %s\n    want %s\n", where, got_sig, want_sig);
    }
    return ok;
}

static int check_chrf(const char *where, const tfm_chrf_result *r, const char *want_score,
                      const char *want_stats, const char *want_sig, const char *got_sig, worst *w) {
    int ok = 1;
    double d = fabs(r->score - atof(want_score));
    track(&w->score, w->score_at, d, where);
    if (!(d <= 0.01)) {
        ok = 0;
        fprintf(stderr, "  %s: score %.12g, want %s\n", where, r->score, want_score);
    }
    int64_t st[3 * TFM_CHRF_MAX_ORDERS];
    int n = parse_i64s(want_stats, st, 3 * TFM_CHRF_MAX_ORDERS);
    if (n != 3 * r->stats.norders) {
        ok = 0;
        fprintf(stderr, "  %s: %d statistics, want %d\n", where, 3 * r->stats.norders, n);
    } else {
        for (int i = 0; i < n; i++) {
            if (r->stats.v[i] != st[i]) {
                ok = 0;
                fprintf(stderr, "  %s: chrf_stats[%d] (order slot %d, %s) = %lld, want %lld\n", where,
                        i, i / 3 + 1, (const char *[]){"hyp", "ref", "match"}[i % 3],
                        (long long)r->stats.v[i], (long long)st[i]);
            }
        }
    }
    if (strcmp(want_sig, got_sig)) {
        ok = 0;
        fprintf(stderr, "  %s: signature\n    got  %s\n    want %s\n", where, got_sig, want_sig);
    }
    return ok;
}

/* Reads a TSV file and calls row() for each data row. */
static void for_rows(const char *file, void (*row)(char **f, int nf, worst *w), worst *w) {
    char path[1024];
    snprintf(path, sizeof path, "%s/bleu/%s", shared_dir, file);
    text_lines t;
    if (!load_lines(path, &t)) {
        CHECK(0, "missing %s", path);
        return;
    }
    for (size_t i = 1; i < t.n; i++) {
        if (!t.line[i][0]) continue;
        char *f[MAX_FIELDS];
        int nf = split_tabs(t.line[i], f);
        row(f, nf, w);
    }
    free_lines(&t);
}

/* ------------------------------------------------------------ expected.tsv */

static void expected_row(char **f, int nf, worst *w) {
    char where[160];
    snprintf(where, sizeof where, "expected.tsv %s %s %s", f[0], f[1], f[2]);
    w->rows++;
    if (nf != 15) {
        CHECK(0, "%s: %d fields", where, nf);
        return;
    }
    test_case *c = get_case(f[0]);
    tfm_bleu_params bp;
    tfm_chrf_params cp;
    tfm_bleu_default_params(&bp);
    tfm_chrf_default_params(&cp);
    if (!strcmp(f[1], "chrF++")) cp.word_order = 2;
    if (!apply_options(f[2], &bp, &cp)) {
        CHECK(0, "%s: unknown option", where);
        return;
    }
    const char *const *refs[MAX_REF_STREAMS];
    for (int r = 0; r < c->nrefs; r++) {
        refs[r] = (const char *const *)c->refs[r].line;
        if (c->refs[r].n != c->hyp.n) {
            CHECK(0, "%s: line counts differ", where);
            return;
        }
    }
    char sig[256];
    int ok;
    if (!strcmp(f[1], "BLEU")) {
        tfm_bleu_result r;
        tfm_status st = tfm_bleu_corpus((const char *const *)c->hyp.line, refs, c->nrefs, c->hyp.n,
                                        &bp, &r);
        if (st != TFM_OK) {
            CHECK(0, "%s: %s", where, tfm_last_error());
            return;
        }
        tfm_bleu_signature(&bp, r.nrefs, sig, sizeof sig);
        ok = check_bleu(where, &r, f + 3, f[14], sig, w);
    } else {
        tfm_chrf_result r;
        tfm_status st = tfm_chrf_corpus((const char *const *)c->hyp.line, refs, c->nrefs, c->hyp.n,
                                        &cp, &r);
        if (st != TFM_OK) {
            CHECK(0, "%s: %s", where, tfm_last_error());
            return;
        }
        tfm_chrf_signature(&cp, r.stats.nrefs, sig, sizeof sig);
        ok = check_chrf(where, &r, f[3], f[13], f[14], sig, w);
    }
    w->rows_ok += ok;
    CHECK(ok, "%s", where);
}

/* ----------------------------------------------------- sentence_*.tsv rows */

static test_case *sentence_case(char **f, size_t *line, const char *where) {
    test_case *c = get_case(f[0]);
    *line = (size_t)atol(f[1]);
    if (*line < 1 || *line > c->hyp.n) {
        CHECK(0, "%s: line out of range", where);
        return NULL;
    }
    return c;
}

static void sentence_bleu_row(char **f, int nf, worst *w) {
    char where[160];
    snprintf(where, sizeof where, "sentence_bleu.tsv %s:%s", f[0], nf > 1 ? f[1] : "?");
    w->rows++;
    if (nf != 13) {
        CHECK(0, "%s: %d fields", where, nf);
        return;
    }
    size_t line;
    test_case *c = sentence_case(f, &line, where);
    if (!c) return;
    const char *refs[MAX_REF_STREAMS];
    for (int r = 0; r < c->nrefs; r++) refs[r] = c->refs[r].line[line - 1];
    tfm_bleu_params bp;
    tfm_bleu_default_params(&bp);
    bp.effective_order = 1; /* sacrebleu.sentence_bleu's default */
    tfm_bleu_result r;
    if (tfm_bleu_sentence(c->hyp.line[line - 1], refs, c->nrefs, &bp, &r) != TFM_OK) {
        CHECK(0, "%s: %s", where, tfm_last_error());
        return;
    }
    char sig[256];
    tfm_bleu_signature(&bp, r.nrefs, sig, sizeof sig);
    int ok = check_bleu(where, &r, f + 2, f[12], sig, w);
    w->rows_ok += ok;
    CHECK(ok, "%s", where);
}

static void sentence_chrf_row(char **f, int nf, worst *w) {
    char where[160];
    snprintf(where, sizeof where, "sentence_chrf.tsv %s:%s %s", f[0], nf > 1 ? f[1] : "?",
             nf > 2 ? f[2] : "?");
    w->rows++;
    if (nf != 6) {
        CHECK(0, "%s: %d fields", where, nf);
        return;
    }
    size_t line;
    test_case *c = sentence_case(f, &line, where);
    if (!c) return;
    const char *refs[MAX_REF_STREAMS];
    for (int r = 0; r < c->nrefs; r++) refs[r] = c->refs[r].line[line - 1];
    tfm_chrf_params cp;
    tfm_chrf_default_params(&cp);
    if (!strcmp(f[2], "chrF++")) cp.word_order = 2;
    tfm_chrf_result r;
    if (tfm_chrf_sentence(c->hyp.line[line - 1], refs, c->nrefs, &cp, &r) != TFM_OK) {
        CHECK(0, "%s: %s", where, tfm_last_error());
        return;
    }
    char sig[256];
    tfm_chrf_signature(&cp, r.stats.nrefs, sig, sizeof sig);
    int ok = check_chrf(where, &r, f[3], f[4], f[5], sig, w);
    w->rows_ok += ok;
    CHECK(ok, "%s", where);
}

static void report(const char *name, const worst *w, int with_bleu) {
    printf("%-20s %d/%d rows match; worst |score diff| %.3g (%s)\n", name, w->rows_ok, w->rows,
           w->score, w->score_at[0] ? w->score_at : "all exact");
    if (with_bleu) {
        printf("%-20s worst |precision diff| %.3g (%s)\n", "", w->prec,
               w->prec_at[0] ? w->prec_at : "all exact");
        printf("%-20s worst |bp diff| %.3g (%s)\n", "", w->bp, w->bp_at[0] ? w->bp_at : "all exact");
    }
}

/* ---------------------------------------------------------- golden pieces */

static void check_tokenize(const char *in, tfm_bleu_tokenize tok, int lc, const char *want) {
    tfm_bleu_params p;
    tfm_bleu_default_params(&p);
    p.tokenize = tok;
    p.lowercase = lc;
    char *out = NULL;
    tfm_status st = tfm_bleu_tokenize_string(in, &p, &out);
    CHECK(st == TFM_OK && !strcmp(out, want), "tokenize(%s, tok %d, lc %d): got '%s', want '%s'", in,
          (int)tok, lc, out ? out : tfm_last_error(), want);
    free(out);
}

static void check_lower(const char *in, const char *want) {
    char *out = NULL;
    size_t n = 0;
    tfm_status st = tfm_text_lower(in, strlen(in), &out, &n);
    CHECK(st == TFM_OK && !strcmp(out, want) && n == strlen(want), "lower(%s): got '%s', want '%s'",
          in, out ? out : "", want);
    free(out);
}

static void check_pyfloat(double x, const char *want) {
    char buf[64];
    tfm_format_py_float(x, buf, sizeof buf);
    CHECK(!strcmp(buf, want), "py float %.17g: got %s, want %s", x, buf, want);
}

/* Expected strings from Python 3.11 / sacreBLEU 2.6.0's tokenizers. */
static void test_pieces(void) {
    /* 13a: entities once each in order, regex rules, apostrophes kept, '<skipped>' dropped */
    check_tokenize("Hello, world! 3.5 1,000 $10 a-b 1-2 don't", TFM_BLEU_TOK_13A, 0,
                   "Hello , world ! 3.5 1,000 $ 10 a-b 1 - 2 don't");
    check_tokenize("&amp;quot; &amp;lt; &lt;b&gt; <skipped>x", TFM_BLEU_TOK_13A, 0,
                   "& quot ; < < b > x");
    check_tokenize("a.,b end.", TFM_BLEU_TOK_13A, 0, "a . , b end .");
    check_tokenize("Hello, world! 3.5 1,000 $10 a-b 1-2 don't", TFM_BLEU_TOK_INTL, 0,
                   "Hello , world ! 3.5 1,000 $ 10 a - b 1-2 don ' t");
    check_tokenize("\u201cquoted\u201d \u2014 \u3002 trailing   \t", TFM_BLEU_TOK_13A, 0,
                   "\u201cquoted\u201d \u2014 \u3002 trailing");
    check_tokenize("x\u00a0y\u3000z\u200bw", TFM_BLEU_TOK_NONE, 0, "x y z\u200bw");
    check_tokenize("\u201cquoted\u201d \u20ac5 1.5 2023.", TFM_BLEU_TOK_INTL, 0,
                   "\u201c quoted \u201d \u20ac 5 1.5 2023.");
    check_tokenize("ab c", TFM_BLEU_TOK_CHAR, 0, "a b c");
    check_tokenize("\u0130STANBUL", TFM_BLEU_TOK_CHAR, 1, "i \u0307 s t a n b u l");
    /* lowercase: full mappings and the final-sigma rule */
    check_lower("\u0130", "i\u0307");
    check_lower("\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3", "\u03bf\u03b4\u03c5\u03c3\u03c3\u03b5\u03c5\u03c2");
    check_lower("\u03a3", "\u03c3");
    check_lower("A\u03a3.", "a\u03c2.");
    check_lower("A\u03a3'B", "a\u03c3'b");
    check_lower("STRASSE \u1e9e \u00c9", "strasse \u00df \u00e9");
    check_lower("\U0001D400 \U00010400", "\U0001D400 \U00010428");
    /* Python repr of floats (sacreBLEU's JSON scores) */
    check_pyfloat(100.0, "100.0");
    check_pyfloat(34.12, "34.12");
    check_pyfloat(0.1, "0.1");
    check_pyfloat(0.0, "0.0");
    check_pyfloat(1e-05, "1e-05");
    check_pyfloat(0.0001, "0.0001");
    check_pyfloat(1e16, "1e+16");
    check_pyfloat(123456789012.5, "123456789012.5");
    check_pyfloat(100.00000000000004, "100.00000000000004");
    /* signatures of non-default settings */
    char sig[256];
    tfm_bleu_params bp;
    tfm_bleu_default_params(&bp);
    bp.smooth = TFM_BLEU_SMOOTH_ADD_K;
    bp.lowercase = 1;
    tfm_bleu_signature(&bp, -1, sig, sizeof sig);
    CHECK(!strcmp(sig, "nrefs:var|case:lc|eff:no|tok:13a|smooth:add-k[1.00]|version:2.6.0"), "%s", sig);
    tfm_chrf_params cp;
    tfm_chrf_default_params(&cp);
    cp.word_order = 1;
    tfm_chrf_name(&cp, sig, sizeof sig);
    CHECK(!strcmp(sig, "chrF2+"), "%s", sig);
    cp.word_order = 2;
    tfm_chrf_name(&cp, sig, sizeof sig);
    CHECK(!strcmp(sig, "chrF2++"), "%s", sig);
}

/* ----------------------------------------------------------- API error paths */

static void test_api_errors(void) {
    tfm_bleu_params bp;
    tfm_bleu_default_params(&bp);
    tfm_chrf_params cp;
    tfm_chrf_default_params(&cp);
    tfm_bleu_result br;
    tfm_chrf_result cr;
    const char *good[] = {"the cat"};
    const char *bad_utf8[] = {"the \xff cat"};
    const char *empty[] = {"", ""};

    tfm_status st = tfm_bleu_sentence("the \xc3 cat", good, 1, &bp, &br);
    CHECK(st == TFM_ERR_INVALID && strstr(tfm_last_error(), "hypothesis") &&
              strstr(tfm_last_error(), "UTF-8"),
          "invalid hypothesis UTF-8: %d %s", st, tfm_last_error());
    st = tfm_chrf_sentence("the cat", bad_utf8, 1, &cp, &cr);
    CHECK(st == TFM_ERR_INVALID && strstr(tfm_last_error(), "reference 1"),
          "invalid reference UTF-8: %d %s", st, tfm_last_error());
    st = tfm_bleu_sentence("the cat", empty, 2, &bp, &br);
    CHECK(st == TFM_ERR_INVALID && strstr(tfm_last_error(), "empty"), "all refs empty: %d %s", st,
          tfm_last_error());

    const char *hyps[] = {"a b", "c d", "e \xed\xa0\x80"};
    const char *ref1[] = {"a b", "c d", "e f"};
    const char *const *refs[] = {ref1};
    st = tfm_bleu_corpus(hyps, refs, 1, 3, &bp, &br);
    CHECK(st == TFM_ERR_INVALID && strstr(tfm_last_error(), "segment 3"),
          "corpus error names the segment: %s", tfm_last_error());
    st = tfm_bleu_corpus(hyps, refs, 1, 0, &bp, &br);
    CHECK(st == TFM_OK && br.score == 0 && br.sys_len == 0, "empty corpus");

    tfm_chrf_params bad = cp;
    bad.char_order = 0;
    bad.word_order = 0;
    CHECK(tfm_chrf_corpus(hyps, refs, 1, 2, &bad, &cr) == TFM_ERR_INVALID, "zero orders accepted");
    bad = cp;
    bad.char_order = 40;
    CHECK(tfm_chrf_params_validate(&bad) == TFM_ERR_INVALID, "char_order 40 accepted");
    tfm_bleu_params badb = bp;
    badb.tokenize = (tfm_bleu_tokenize)9;
    CHECK(tfm_bleu_corpus(hyps, refs, 1, 2, &badb, &br) == TFM_ERR_INVALID, "tokenizer 9 accepted");

    /* An empty reference among others is dropped (nrefs:var), as in sacreBLEU. */
    const char *r1[] = {"a b c", ""};
    const char *r2[] = {"a b d", "x y"};
    const char *h2[] = {"a b c", "x y"};
    const char *const *two[] = {r1, r2};
    st = tfm_bleu_corpus(h2, two, 2, 2, &bp, &br);
    CHECK(st == TFM_OK && br.nrefs == -1, "variable references: %d nrefs %d", st, br.nrefs);
}

/* ---------------------------------------------------------------- the CLI */

static int run_cli(const char *args, char *out, size_t cap) {
    const char *cli = tfm_test_env("TFM_CLI", "./transformer");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd '%s/bleu/cases' && '%s' bleu %s 2>&1", shared_dir, cli, args);
    return tfm_test_run(cmd, out, cap);
}

/* Finds the expected.tsv row (case, metric, options); copies its fields. */
static int find_expected(const char *cs, const char *metric, const char *opts, char *line_buf,
                         size_t cap, char **f) {
    char path[1024];
    snprintf(path, sizeof path, "%s/bleu/expected.tsv", shared_dir);
    text_lines t;
    if (!load_lines(path, &t)) return 0;
    int found = 0;
    for (size_t i = 1; i < t.n && !found; i++) {
        snprintf(line_buf, cap, "%s", t.line[i]);
        int nf = split_tabs(line_buf, f);
        found = nf == 15 && !strcmp(f[0], cs) && !strcmp(f[1], metric) && !strcmp(f[2], opts);
    }
    free_lines(&t);
    return found;
}

static void cli_score(const char *args, const char *cs, const char *metric, const char *opts,
                      const char *name) {
    char out[8192], row[4096], *f[MAX_FIELDS];
    int rc = run_cli(args, out, sizeof out);
    if (!find_expected(cs, metric, opts, row, sizeof row, f)) {
        CHECK(0, "no expected row %s %s %s", cs, metric, opts);
        return;
    }
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s = ", name);
    double got = strncmp(out, prefix, strlen(prefix)) ? NAN : atof(out + strlen(prefix));
    char *sig = strchr(out, '\n');
    sig = sig ? sig + 1 : out;
    char *end = strchr(sig, '\n');
    if (end) *end = '\0';
    CHECK(rc == 0 && fabs(got - atof(f[3])) <= 0.01 && !strcmp(sig, f[14]),
          "CLI '%s': rc %d, score %.12g want %s, signature '%s' want '%s'", args, rc, got, f[3], sig,
          f[14]);
}

static void test_cli(void) {
    const char *cli = getenv("TFM_CLI");
    if (!cli || !*cli) {
        printf("CLI tests skipped: TFM_CLI is not set\n");
        return;
    }
    char out[16384];
    /* sacreBLEU's README examples, through the command line */
    cli_score("mild.ref -i mild.hyp -w 12", "mild", "BLEU", "default", "BLEU");
    cli_score("mild.ref < mild.hyp -w 12", "mild", "BLEU", "default", "BLEU");
    cli_score("multiref.ref multiref.ref2 -i multiref.hyp -m bleu -lc -w 12", "multiref", "BLEU",
              "lowercase", "BLEU");
    cli_score("multiref.ref multiref.ref2 -i multiref.hyp -m bleu -tok intl -w 12", "multiref", "BLEU",
              "tokenize=intl", "BLEU");
    cli_score("unicode.ref -i unicode.hyp -m chrf --chrf-word-order 2 -w 12", "unicode", "chrF++",
              "default", "chrF2++");
    cli_score("zero.ref -i zero.hyp -m bleu -s floor -sv 0.01 -w 12", "zero", "BLEU",
              "smooth=floor,smooth_value=0.01", "BLEU");
    cli_score("punct.ref -i punct.hyp -m chrf --chrf-whitespace", "punct", "chrF", "whitespace", "chrF2");
    cli_score("mild.ref -i mild.hyp -m chrf --chrf-eps-smoothing -cw 2", "mild", "chrF++",
              "eps_smoothing", "chrF2++");

    /* exact text format */
    int rc = run_cli("short.ref -i short.hyp -s add-k", out, sizeof out);
    CHECK(rc == 0 && !strcmp(out, "BLEU = 90.36 66.7/100.0/100.0/100.0 (BP = 1.000 ratio = 1.000 "
                                  "hyp_len = 3 ref_len = 3)\n"
                                  "nrefs:1|case:mixed|eff:no|tok:13a|smooth:add-k[1.00]|version:2.6.0\n"),
          "text format: rc %d\n%s", rc, out);
    rc = run_cli("identical.ref -i identical.hyp -m bleu chrf -w 1", out, sizeof out);
    CHECK(rc == 0 && !strcmp(out,
                             "BLEU = 100.0 100.0/100.0/100.0/100.0 (BP = 1.000 ratio = 1.000 hyp_len "
                             "= 13289 ref_len = 13289)\n"
                             "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0\n"
                             "chrF2 = 100.0\n"
                             "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0\n"),
          "two metrics, text: rc %d\n%s", rc, out);
    /* JSON as sacreBLEU writes it (json.dumps(indent=1)) */
    rc = run_cli("identical.ref -i identical.hyp --json -m bleu chrf", out, sizeof out);
    CHECK(rc == 0 && !strcmp(out,
                             "[\n{\n \"name\": \"BLEU\",\n \"score\": 100.0,\n \"signature\": "
                             "\"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0\",\n "
                             "\"verbose_score\": \"100.0/100.0/100.0/100.0 (BP = 1.000 ratio = 1.000 "
                             "hyp_len = 13289 ref_len = 13289)\",\n \"nrefs\": \"1\",\n \"case\": "
                             "\"mixed\",\n \"eff\": \"no\",\n \"tok\": \"13a\",\n \"smooth\": \"exp\",\n "
                             "\"version\": \"2.6.0\"\n},\n{\n \"name\": \"chrF2\",\n \"score\": 100.0,\n "
                             "\"signature\": \"nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:"
                             "2.6.0\",\n \"nrefs\": \"1\",\n \"case\": \"mixed\",\n \"eff\": \"yes\",\n "
                             "\"nc\": \"6\",\n \"nw\": \"0\",\n \"space\": \"no\",\n \"version\": "
                             "\"2.6.0\"\n}\n]\n"),
          "JSON: rc %d\n%s", rc, out);
    rc = run_cli("mild.ref -i mild.hyp -b", out, sizeof out);
    CHECK(rc == 0 && !strcmp(out, "82.76\n"), "score only: %s", out);

    /* Sentence level: the first 50 lines of mild against sentence_bleu.tsv */
    rc = run_cli("mild.ref -i mild.hyp -sl -b -w 12", out, sizeof out);
    char path[1024];
    snprintf(path, sizeof path, "%s/bleu/sentence_bleu.tsv", shared_dir);
    text_lines t;
    int compared = 0, agree = 0;
    if (rc == 0 && load_lines(path, &t)) {
        char *p = out;
        for (size_t i = 1; i < t.n && compared < 50; i++) {
            char *f[MAX_FIELDS];
            int nf = split_tabs(t.line[i], f);
            if (nf != 13 || strcmp(f[0], "mild")) continue;
            size_t line = (size_t)atol(f[1]);
            /* the CLI printed one score per line, in order */
            char *q = p;
            for (size_t k = 1; k < line && q; k++) {
                q = strchr(q, '\n');
                if (q) q++;
            }
            compared++;
            if (q && fabs(atof(q) - atof(f[2])) <= 0.01) agree++;
        }
        free_lines(&t);
    }
    CHECK(rc == 0 && compared == 50 && agree == 50, "CLI -sl: %d of %d lines agree (rc %d)", agree,
          compared, rc);
    rc = run_cli("short.ref -i short.hyp -sl", out, sizeof out);
    CHECK(rc == 0 && strstr(out, "BLEU = ") == out &&
              strstr(out, "\nnrefs:1|case:mixed|eff:yes|tok:13a|smooth:exp|version:2.6.0\n"),
          "CLI -sl text: %s", out);

    rc = run_cli("--help", out, sizeof out);
    CHECK(rc == 0 && strstr(out, "usage: transformer bleu") && strstr(out, "--chrf-word-order") &&
              strstr(out, "(default: 13a)"),
          "--help: %s", out);
}

/* --------------------------------------------------------------- timing */

static void test_speed(void) {
    test_case *c = get_case("mild");
    const char *const *refs[] = {(const char *const *)c->refs[0].line};
    tfm_bleu_params bp;
    tfm_bleu_default_params(&bp);
    tfm_chrf_params cp;
    tfm_chrf_default_params(&cp);
    cp.word_order = 2;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tfm_bleu_result br;
    tfm_chrf_result cr;
    tfm_status a = tfm_bleu_corpus((const char *const *)c->hyp.line, refs, 1, c->hyp.n, &bp, &br);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double bleu_s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tfm_status b = tfm_chrf_corpus((const char *const *)c->hyp.line, refs, 1, c->hyp.n, &cp, &cr);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double chrf_s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("speed: %zu lines: BLEU %.1f ms, chrF++ %.1f ms\n", c->hyp.n, 1e3 * bleu_s, 1e3 * chrf_s);
    /* Generous bounds: sanitizer builds are several times slower. */
    CHECK(a == TFM_OK && b == TFM_OK && bleu_s < 1.0 && chrf_s < 1.0, "too slow: %g s, %g s", bleu_s,
          chrf_s);
}

int main(void) {
    shared_dir = tfm_test_env("TFM_SHARED_DIR", "../shared");
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/bleu/expected.tsv", shared_dir);
    FILE *f = fopen(probe, "r");
    if (!f) {
        test_pieces();
        test_api_errors();
        if (tfm_test_failed) return tfm_test_finish();
        tfm_test_skip("shared/bleu/expected.tsv not found (set TFM_SHARED_DIR to the folder "
                      "holding bleu/): the sacreBLEU reference rows were not checked");
    }
    fclose(f);

    test_pieces();
    test_api_errors();

    worst corpus = {0}, sbleu = {0}, schrf = {0};
    for_rows("expected.tsv", expected_row, &corpus);
    for_rows("sentence_bleu.tsv", sentence_bleu_row, &sbleu);
    for_rows("sentence_chrf.tsv", sentence_chrf_row, &schrf);
    report("expected.tsv", &corpus, 1);
    report("sentence_bleu.tsv", &sbleu, 1);
    report("sentence_chrf.tsv", &schrf, 0);
    CHECK(corpus.rows == 132 && sbleu.rows == 215 && schrf.rows == 430,
          "row counts %d %d %d, want 132 215 430", corpus.rows, sbleu.rows, schrf.rows);

    test_cli();
    test_speed();

    for (int i = 0; i < ncases; i++) {
        free_lines(&cases[i].hyp);
        for (int r = 0; r < cases[i].nrefs; r++) free_lines(&cases[i].refs[r]);
    }
    return tfm_test_finish();
}
