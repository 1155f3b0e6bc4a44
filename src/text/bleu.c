/*
 * bleu.c: BLEU, chrF and chrF++ as sacreBLEU 2.6.0 computes them (see bleu.h).
 *
 * The pipeline of one segment, following sacreBLEU step by step:
 *   BLEU  text -> [str.lower()] -> str.rstrip() -> tokenizer -> str.split()
 *         -> token ids (interned per segment) -> n-grams 1..4 -> clipped counts
 *   chrF  text -> [str.lower()] -> code points [without str.split() whitespace]
 *         -> character n-grams; [chrF++: str.split() words, punctuation split
 *         off one end -> word n-grams]
 * N-grams are (order, pointer to a run of uint32 symbols) entries, sorted and
 * collapsed into (n-gram, count) lists; matching is a merge of two sorted
 * lists. That is O(L log L) per segment and needs no hash table.
 *
 * The regular expressions of the 13a tokenizer look only at ASCII bytes, so
 * 13a runs on UTF-8 bytes (a continuation byte is never '.', ',', '-' or a
 * digit, so byte-wise and code-point-wise substitution give the same string).
 * The intl tokenizer needs Unicode categories and runs on code points.
 *
 * Each of sacreBLEU's regex substitutions is reproduced as a left-to-right scan
 * with Python's semantics: the leftmost match wins, and the search resumes
 * after the end of a match, so in "a.,b" only the '.' is split by
 * ([^0-9])([\.,]).
 */
#include "text/bleu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/utf8.h"
#include "text/unicode_tables.h"

/* ------------------------------------------------------------ growable buffers */

typedef struct strbuf {
    char *p;
    size_t len, cap;
} strbuf;

/* Makes room for `add` more bytes plus a NUL. Returns 0, or -1 when out of memory. */
static int sb_reserve(strbuf *b, size_t add) {
    if (b->len + add + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + add + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Appends without checking room: callers reserve first. */
static inline void sb_putc(strbuf *b, char c) { b->p[b->len++] = c; }

static int sb_set(strbuf *b, const char *s, size_t n) {
    b->len = 0;
    if (sb_reserve(b, n)) return -1;
    memcpy(b->p, s, n);
    b->len = n;
    b->p[n] = '\0';
    return 0;
}

static void sb_free(strbuf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Grows *arr (elements of `size` bytes, capacity *cap) to hold `need`. */
static int grow(void **arr, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 32;
    while (c < need) c *= 2;
    void *p = realloc(*arr, c * size);
    if (!p) return -1;
    *arr = p;
    *cap = c;
    return 0;
}
#define GROW(arr, cap, need) grow((void **)&(arr), &(cap), (need), sizeof *(arr))

/* ------------------------------------------------------------------ Unicode */

static inline int is_cased(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z');
    return tfm_uni_in(tfm_uni_cased, tfm_uni_cased_count, cp);
}

static inline int is_case_ignorable(uint32_t cp) {
    if (cp < 0x80) return cp == '\'' || cp == '.' || cp == ':' || cp == '^' || cp == '`';
    return tfm_uni_in(tfm_uni_case_ignorable, tfm_uni_case_ignorable_count, cp);
}

/* str.lower() of one code point other than U+03A3: writes 1..3 code points. */
static int lower_cp(uint32_t cp, uint32_t out[3]) {
    if (cp < 0x80) {
        out[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
        return 1;
    }
    size_t lo = 0, hi = tfm_uni_lower_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (tfm_uni_lower[mid].from < cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo < tfm_uni_lower_count && tfm_uni_lower[lo].from == cp) {
        out[0] = tfm_uni_lower[lo].to;
        return 1;
    }
    for (size_t i = 0; i < tfm_uni_lower_multi_count; i++) {
        if (tfm_uni_lower_multi[i].from == cp) {
            for (uint32_t k = 0; k < tfm_uni_lower_multi[i].n; k++)
                out[k] = tfm_uni_lower_multi[i].to[k];
            return (int)tfm_uni_lower_multi[i].n;
        }
    }
    out[0] = cp;
    return 1;
}

/* Decodes valid UTF-8 s[0..len) into cps (grown as needed); returns the count
 * in *n. -1 when out of memory. The caller has validated s. */
static int decode_all(const char *s, size_t len, uint32_t **cps, size_t *cap, size_t *n) {
    if (GROW(*cps, *cap, len + 1)) return -1;
    const char *p = s, *end = s + len;
    size_t k = 0;
    while (p < end) {
        uint32_t cp;
        int m = tfm_utf8_decode(p, end, &cp);
        TFM_ASSERT(m > 0);
        (*cps)[k++] = cp;
        p += m;
    }
    *n = k;
    return 0;
}

/* Appends the UTF-8 of cp (reserve 4 bytes first). */
static inline void sb_put_cp(strbuf *b, uint32_t cp) {
    if (cp < 0x80) {
        b->p[b->len++] = (char)cp;
        return;
    }
    b->len += (size_t)tfm_utf8_encode(cp, b->p + b->len);
}

/* Python's str.lower() of valid UTF-8 s[0..len) into out. The final-sigma rule
 * is CPython's handle_capital_sigma(): U+03A3 becomes U+03C2 when a cased
 * letter precedes it and none follows, case-ignorable characters skipped on
 * both sides. */
static int lower_into(const char *s, size_t len, strbuf *out, uint32_t **cps, size_t *cpcap) {
    out->len = 0;
    int ascii = 1;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] >= 0x80) { ascii = 0; break; }
    if (ascii) {
        if (sb_reserve(out, len)) return -1;
        for (size_t i = 0; i < len; i++) {
            char c = s[i];
            out->p[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        out->len = len;
        out->p[len] = '\0';
        return 0;
    }
    size_t n;
    if (decode_all(s, len, cps, cpcap, &n)) return -1;
    const uint32_t *c = *cps;
    /* A lowercase mapping is at most 3 code points of at most 4 bytes each. */
    if (sb_reserve(out, n * 12)) return -1;
    for (size_t i = 0; i < n; i++) {
        uint32_t m[3];
        int k;
        if (c[i] == 0x3A3) {
            size_t j = i;
            int final_sigma = 0;
            while (j > 0 && is_case_ignorable(c[j - 1])) j--;
            if (j > 0 && is_cased(c[j - 1])) {
                size_t f = i + 1;
                while (f < n && is_case_ignorable(c[f])) f++;
                final_sigma = f == n || !is_cased(c[f]);
            }
            m[0] = final_sigma ? 0x3C2 : 0x3C3;
            k = 1;
        } else {
            k = lower_cp(c[i], m);
        }
        for (int t = 0; t < k; t++) sb_put_cp(out, m[t]);
    }
    out->p[out->len] = '\0';
    return 0;
}

size_t tfm_text_rstrip_len(const char *s, size_t len) {
    const char *p = s, *end = s + len;
    size_t keep = 0;
    while (p < end) {
        uint32_t cp;
        int m = tfm_utf8_decode(p, end, &cp);
        TFM_ASSERT(m > 0);
        p += m;
        if (!tfm_uni_is_space(cp)) keep = (size_t)(p - s);
    }
    return keep;
}

tfm_status tfm_text_lower(const char *s, size_t len, char **out, size_t *out_len) {
    TFM_ASSERT(s && out);
    size_t bad;
    if (!tfm_utf8_valid(s, len, &bad))
        return tfm_error(TFM_ERR_INVALID, "lowercase: invalid UTF-8 at byte %zu", bad);
    strbuf b = {0};
    uint32_t *cps = NULL;
    size_t cap = 0;
    int rc = lower_into(s, len, &b, &cps, &cap);
    free(cps);
    if (rc || sb_reserve(&b, 0)) {
        sb_free(&b);
        return tfm_error(TFM_ERR_NOMEM, "lowercase: out of memory");
    }
    b.p[b.len] = '\0';
    *out = b.p;
    if (out_len) *out_len = b.len;
    return TFM_OK;
}

/* ----------------------------------------------------------------- workspace */

typedef struct tok {
    uint32_t off, len; /* bytes within the side's text */
} tok;

/* One side of a segment (the hypothesis or one reference) once preprocessed. */
typedef struct side {
    strbuf text;     /* preprocessed text the tokens point into */
    tok *toks;       /* words */
    size_t ntok, captok;
    uint32_t *sym;   /* token ids (BLEU, chrF++ words) */
    size_t capsym;
    uint32_t *chars; /* code points (chrF) */
    size_t nchars, capchars;
} side;

/* An n-gram: `len` symbols at `seq`, in order slot `slot`, seen `count` times. */
typedef struct ngram {
    const uint32_t *seq;
    uint32_t slot, len;
    int64_t count;
} ngram;

typedef struct intern_item {
    const char *s;
    uint32_t len;
    uint32_t *id;
} intern_item;

typedef struct workspace {
    side *sides;
    int nsides;
    strbuf t1, t2; /* scratch strings */
    uint32_t *cps, *cps2;
    size_t capcps, capcps2;
    intern_item *items;
    size_t capitems;
    ngram *hyp, *ref, *all;
    size_t caphyp, capref, capall;
} workspace;

static void ws_free(workspace *w) {
    for (int i = 0; i < w->nsides; i++) {
        sb_free(&w->sides[i].text);
        free(w->sides[i].toks);
        free(w->sides[i].sym);
        free(w->sides[i].chars);
    }
    free(w->sides);
    sb_free(&w->t1);
    sb_free(&w->t2);
    free(w->cps);
    free(w->cps2);
    free(w->items);
    free(w->hyp);
    free(w->ref);
    free(w->all);
    memset(w, 0, sizeof *w);
}

static int ws_sides(workspace *w, int n) {
    if (n <= w->nsides) return 0;
    side *s = realloc(w->sides, (size_t)n * sizeof *s);
    if (!s) return -1;
    memset(s + w->nsides, 0, (size_t)(n - w->nsides) * sizeof *s);
    w->sides = s;
    w->nsides = n;
    return 0;
}

/* Splits text into words as str.split() does (runs of non-whitespace). */
static int split_words(side *sd) {
    const char *s = sd->text.p, *end = s + sd->text.len, *p = s;
    sd->ntok = 0;
    const char *start = NULL;
    while (p < end) {
        uint32_t cp;
        int m;
        if ((unsigned char)*p < 0x80) {
            cp = (unsigned char)*p;
            m = 1;
        } else {
            m = tfm_utf8_decode(p, end, &cp);
            TFM_ASSERT(m > 0);
        }
        if (tfm_uni_is_space(cp)) {
            if (start) {
                if (GROW(sd->toks, sd->captok, sd->ntok + 1)) return -1;
                sd->toks[sd->ntok++] = (tok){(uint32_t)(start - s), (uint32_t)(p - start)};
                start = NULL;
            }
        } else if (!start) {
            start = p;
        }
        p += m;
    }
    if (start) {
        if (GROW(sd->toks, sd->captok, sd->ntok + 1)) return -1;
        sd->toks[sd->ntok++] = (tok){(uint32_t)(start - s), (uint32_t)(end - start)};
    }
    return 0;
}

/* ------------------------------------------------------------------ tokenizers */

/* dst = src with every occurrence of pat replaced by rep (Python str.replace). */
static int replace_all(strbuf *dst, const char *src, size_t n, const char *pat, const char *rep) {
    size_t pl = strlen(pat), rl = strlen(rep);
    dst->len = 0;
    if (sb_reserve(dst, n + (rl > pl ? (n / pl + 1) * (rl - pl) : 0))) return -1;
    size_t i = 0;
    while (i < n) {
        if (i + pl <= n && src[i] == pat[0] && !memcmp(src + i, pat, pl)) {
            memcpy(dst->p + dst->len, rep, rl);
            dst->len += rl;
            i += pl;
        } else {
            dst->p[dst->len++] = src[i++];
        }
    }
    dst->p[dst->len] = '\0';
    return 0;
}

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* The character class of 13a's first rule: ASCII punctuation and symbols
 * except ' , - . and the space (which it does match, harmlessly). */
static inline int is_13a_punct(unsigned char c) {
    return (c >= 0x7B && c <= 0x7E) || (c >= 0x5B && c <= 0x60) || (c >= 0x20 && c <= 0x26) ||
           (c >= 0x28 && c <= 0x2B) || (c >= 0x3A && c <= 0x40) || c == '/';
}

/* sacreBLEU's Tokenizer13a + TokenizerRegexp on valid UTF-8 src; result in out
 * (whitespace-separated; the caller splits it). */
static int tokenize_13a(workspace *w, const char *src, size_t n, strbuf *out) {
    strbuf *a = &w->t1, *b = &w->t2;
    if (replace_all(a, src, n, "<skipped>", "")) return -1;
    if (replace_all(b, a->p, a->len, "-\n", "")) return -1;
    if (replace_all(a, b->p, b->len, "\n", " ")) return -1;
    if (replace_all(b, a->p, a->len, "&quot;", "\"")) return -1;
    if (replace_all(a, b->p, b->len, "&amp;", "&")) return -1;
    if (replace_all(b, a->p, a->len, "&lt;", "<")) return -1;
    if (replace_all(a, b->p, b->len, "&gt;", ">")) return -1;
    /* line = " {} ".format(line) */
    b->len = 0;
    if (sb_reserve(b, a->len + 2)) return -1;
    sb_putc(b, ' ');
    memcpy(b->p + 1, a->p, a->len);
    b->len = a->len + 1;
    sb_putc(b, ' ');

    /* ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 ' */
    const unsigned char *s = (const unsigned char *)b->p;
    size_t len = b->len;
    a->len = 0;
    if (sb_reserve(a, len * 3)) return -1;
    for (size_t i = 0; i < len; i++) {
        if (is_13a_punct(s[i])) {
            sb_putc(a, ' ');
            sb_putc(a, (char)s[i]);
            sb_putc(a, ' ');
        } else {
            sb_putc(a, (char)s[i]);
        }
    }
    /* ([^0-9])([\.,]) -> '\1 \2 ' */
    s = (const unsigned char *)a->p;
    len = a->len;
    b->len = 0;
    if (sb_reserve(b, len * 2)) return -1;
    for (size_t i = 0; i < len;) {
        if (i + 1 < len && !is_digit(s[i]) && (s[i + 1] == '.' || s[i + 1] == ',')) {
            sb_putc(b, (char)s[i]);
            sb_putc(b, ' ');
            sb_putc(b, (char)s[i + 1]);
            sb_putc(b, ' ');
            i += 2;
        } else {
            sb_putc(b, (char)s[i++]);
        }
    }
    /* ([\.,])([^0-9]) -> ' \1 \2' */
    s = (const unsigned char *)b->p;
    len = b->len;
    a->len = 0;
    if (sb_reserve(a, len * 2)) return -1;
    for (size_t i = 0; i < len;) {
        if (i + 1 < len && (s[i] == '.' || s[i] == ',') && !is_digit(s[i + 1])) {
            sb_putc(a, ' ');
            sb_putc(a, (char)s[i]);
            sb_putc(a, ' ');
            sb_putc(a, (char)s[i + 1]);
            i += 2;
        } else {
            sb_putc(a, (char)s[i++]);
        }
    }
    /* ([0-9])(-) -> '\1 \2 ' */
    s = (const unsigned char *)a->p;
    len = a->len;
    out->len = 0;
    if (sb_reserve(out, len * 2)) return -1;
    for (size_t i = 0; i < len;) {
        if (i + 1 < len && is_digit(s[i]) && s[i + 1] == '-') {
            sb_putc(out, (char)s[i]);
            sb_putc(out, ' ');
            sb_putc(out, '-');
            sb_putc(out, ' ');
            i += 2;
        } else {
            sb_putc(out, (char)s[i++]);
        }
    }
    out->p[out->len] = '\0';
    return 0;
}

static inline int is_P(uint32_t cp) { return tfm_uni_in(tfm_uni_punct, tfm_uni_punct_count, cp); }
static inline int is_S(uint32_t cp) { return tfm_uni_in(tfm_uni_symbol, tfm_uni_symbol_count, cp); }
static inline int is_N(uint32_t cp) { return tfm_uni_in(tfm_uni_number, tfm_uni_number_count, cp); }

/* sacreBLEU's TokenizerV14International on valid UTF-8 src. */
static int tokenize_intl(workspace *w, const char *src, size_t n, strbuf *out) {
    size_t m;
    if (decode_all(src, n, &w->cps, &w->capcps, &m)) return -1;
    if (GROW(w->cps2, w->capcps2, 2 * m + 1)) return -1;
    uint32_t *a = w->cps, *b = w->cps2;
    size_t nb = 0;
    /* (\P{N})(\p{P}) -> '\1 \2 ' */
    for (size_t i = 0; i < m;) {
        if (i + 1 < m && !is_N(a[i]) && is_P(a[i + 1])) {
            b[nb++] = a[i];
            b[nb++] = ' ';
            b[nb++] = a[i + 1];
            b[nb++] = ' ';
            i += 2;
        } else {
            b[nb++] = a[i++];
        }
    }
    /* (\p{P})(\P{N}) -> ' \1 \2' */
    if (GROW(w->cps, w->capcps, 2 * nb + 1)) return -1;
    a = w->cps;
    size_t na = 0;
    for (size_t i = 0; i < nb;) {
        if (i + 1 < nb && is_P(b[i]) && !is_N(b[i + 1])) {
            a[na++] = ' ';
            a[na++] = b[i];
            a[na++] = ' ';
            a[na++] = b[i + 1];
            i += 2;
        } else {
            a[na++] = b[i++];
        }
    }
    /* (\p{S}) -> ' \1 ', written straight out as UTF-8 */
    out->len = 0;
    if (sb_reserve(out, na * 6)) return -1;
    for (size_t i = 0; i < na; i++) {
        if (is_S(a[i])) {
            sb_putc(out, ' ');
            sb_put_cp(out, a[i]);
            sb_putc(out, ' ');
        } else {
            sb_put_cp(out, a[i]);
        }
    }
    out->p[out->len] = '\0';
    return 0;
}

/* TokenizerChar: every code point, space-separated (whitespace falls out at
 * the split). */
static int tokenize_char(const char *src, size_t n, strbuf *out) {
    out->len = 0;
    if (sb_reserve(out, 2 * n)) return -1;
    const char *p = src, *end = src + n;
    while (p < end) {
        uint32_t cp;
        int m = tfm_utf8_decode(p, end, &cp);
        TFM_ASSERT(m > 0);
        memcpy(out->p + out->len, p, (size_t)m);
        out->len += (size_t)m;
        sb_putc(out, ' ');
        p += m;
    }
    out->p[out->len] = '\0';
    return 0;
}

/* BLEU preprocessing of valid UTF-8 text into sd->text and sd->toks:
 * lower (optional), rstrip, tokenize, split. */
static int bleu_preprocess(workspace *w, const char *text, const tfm_bleu_params *p, side *sd) {
    size_t n = strlen(text);
    const char *s = text;
    strbuf low = {0};
    if (p->lowercase) {
        if (lower_into(text, n, &low, &w->cps, &w->capcps)) return -1;
        s = low.p;
        n = low.len;
    }
    n = tfm_text_rstrip_len(s, n);
    int rc = 0;
    switch (p->tokenize) {
    case TFM_BLEU_TOK_13A: rc = tokenize_13a(w, s, n, &sd->text); break;
    case TFM_BLEU_TOK_INTL: rc = tokenize_intl(w, s, n, &sd->text); break;
    case TFM_BLEU_TOK_CHAR: rc = tokenize_char(s, n, &sd->text); break;
    case TFM_BLEU_TOK_NONE: rc = sb_set(&sd->text, s, n); break;
    }
    sb_free(&low);
    if (rc) return -1;
    return split_words(sd);
}

/* ------------------------------------------------------------------ interning */

static int cmp_item(const void *a, const void *b) {
    const intern_item *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return memcmp(x->s, y->s, x->len);
}

/* Gives every token of sides[0..n) an id (sd->sym), equal ids for equal strings. */
static int intern_tokens(workspace *w, side *sides, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += sides[i].ntok;
    if (GROW(w->items, w->capitems, total + 1)) return -1;
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        side *sd = &sides[i];
        if (GROW(sd->sym, sd->capsym, sd->ntok + 1)) return -1;
        for (size_t t = 0; t < sd->ntok; t++)
            w->items[k++] = (intern_item){sd->text.p + sd->toks[t].off, sd->toks[t].len, &sd->sym[t]};
    }
    qsort(w->items, k, sizeof *w->items, cmp_item);
    uint32_t id = 0;
    for (size_t i = 0; i < k; i++) {
        if (i > 0 && cmp_item(&w->items[i - 1], &w->items[i])) id++;
        *w->items[i].id = id;
    }
    return 0;
}

/* ------------------------------------------------------------------- n-grams */

static int cmp_ngram(const void *a, const void *b) {
    const ngram *x = a, *y = b;
    if (x->slot != y->slot) return x->slot < y->slot ? -1 : 1;
    return memcmp(x->seq, y->seq, (size_t)x->len * sizeof(uint32_t));
}

/* Appends the n-grams of orders 1..max_n of seq[0..len) to *list, order n in
 * slot slot0 + n - 1. */
static int add_ngrams(ngram **list, size_t *cap, size_t *n, const uint32_t *seq, size_t len,
                      int max_n, uint32_t slot0) {
    for (int order = 1; order <= max_n; order++) {
        if ((size_t)order > len) break;
        size_t cnt = len - (size_t)order + 1;
        if (grow((void **)list, cap, *n + cnt, sizeof **list)) return -1;
        for (size_t i = 0; i < cnt; i++)
            (*list)[(*n)++] = (ngram){seq + i, slot0 + (uint32_t)order - 1, (uint32_t)order, 1};
    }
    return 0;
}

/* Sorts list[0..n) and merges equal n-grams, summing counts (sum = 1) or
 * keeping the largest (sum = 0). Returns the new length. */
static size_t collapse(ngram *list, size_t n, int sum) {
    if (n == 0) return 0;
    qsort(list, n, sizeof *list, cmp_ngram);
    size_t k = 0;
    for (size_t i = 1; i < n; i++) {
        if (!cmp_ngram(&list[k], &list[i])) {
            if (sum) list[k].count += list[i].count;
            else if (list[i].count > list[k].count) list[k].count = list[i].count;
        } else {
            list[++k] = list[i];
        }
    }
    return k + 1;
}

/* For two collapsed lists, adds sum over common n-grams of min(counts) to
 * match[slot]. */
static void match_counts(const ngram *h, size_t nh, const ngram *r, size_t nr, int64_t *match) {
    size_t i = 0, j = 0;
    while (i < nh && j < nr) {
        int c = cmp_ngram(&h[i], &r[j]);
        if (c < 0) i++;
        else if (c > 0) j++;
        else {
            match[h[i].slot] += h[i].count < r[j].count ? h[i].count : r[j].count;
            i++;
            j++;
        }
    }
}

/* ---------------------------------------------------------------------- BLEU */

void tfm_bleu_default_params(tfm_bleu_params *p) {
    TFM_ASSERT(p);
    p->lowercase = 0;
    p->tokenize = TFM_BLEU_TOK_13A;
    p->smooth = TFM_BLEU_SMOOTH_EXP;
    p->smooth_value = -1.0;
    p->effective_order = 0;
}

void tfm_bleu_stats_init(tfm_bleu_stats *s) {
    TFM_ASSERT(s);
    memset(s, 0, sizeof *s);
}

tfm_status tfm_bleu_params_validate(const tfm_bleu_params *p) {
    TFM_ASSERT(p);
    if ((int)p->tokenize < 0 || (int)p->tokenize > TFM_BLEU_TOK_CHAR)
        return tfm_error(TFM_ERR_INVALID, "bleu: tokenize: unknown tokenizer %d", (int)p->tokenize);
    if ((int)p->smooth < 0 || (int)p->smooth > TFM_BLEU_SMOOTH_NONE)
        return tfm_error(TFM_ERR_INVALID, "bleu: smooth: unknown method %d", (int)p->smooth);
    if (isnan(p->smooth_value) || isinf(p->smooth_value))
        return tfm_error(TFM_ERR_INVALID, "bleu: smooth_value: must be finite");
    return TFM_OK;
}

static double smooth_value_of(const tfm_bleu_params *p) {
    if (p->smooth_value >= 0) return p->smooth_value;
    if (p->smooth == TFM_BLEU_SMOOTH_FLOOR) return 0.1;
    if (p->smooth == TFM_BLEU_SMOOTH_ADD_K) return 1.0;
    return 0.0;
}

/* Validates every string of a segment; names the first bad one. */
static tfm_status check_utf8(const char *hyp, const char *const *refs, int nrefs) {
    size_t bad;
    TFM_ASSERT(hyp);
    if (!tfm_utf8_valid(hyp, strlen(hyp), &bad))
        return tfm_error(TFM_ERR_INVALID, "hypothesis: invalid UTF-8 at byte %zu", bad);
    for (int r = 0; r < nrefs; r++) {
        TFM_ASSERT(refs[r]);
        if (!tfm_utf8_valid(refs[r], strlen(refs[r]), &bad))
            return tfm_error(TFM_ERR_INVALID, "reference %d: invalid UTF-8 at byte %zu", r + 1, bad);
    }
    return TFM_OK;
}

static int count_nonempty(const char *const *refs, int nrefs) {
    int k = 0;
    for (int r = 0; r < nrefs; r++) k += refs[r][0] != '\0';
    return k;
}

static void note_nrefs(int *have, int k) {
    if (*have == 0) *have = k;
    else if (*have != k) *have = -1;
}

static tfm_status bleu_segment(workspace *w, tfm_bleu_stats *st, const char *hyp,
                               const char *const *refs, int nrefs, const tfm_bleu_params *p) {
    TFM_ASSERT(nrefs >= 1 && refs);
    TFM_TRY(check_utf8(hyp, refs, nrefs));
    int k = count_nonempty(refs, nrefs);
    if (k == 0)
        return tfm_error(TFM_ERR_INVALID,
                         "every reference is empty (sacreBLEU rejects a segment without a reference)");
    if (ws_sides(w, k + 1)) goto nomem;
    if (bleu_preprocess(w, hyp, p, &w->sides[0])) goto nomem;
    int s = 1;
    for (int r = 0; r < nrefs; r++) {
        if (!refs[r][0]) continue;
        if (bleu_preprocess(w, refs[r], p, &w->sides[s++])) goto nomem;
    }
    if (intern_tokens(w, w->sides, k + 1)) goto nomem;

    side *h = &w->sides[0];
    size_t nh = 0, nr = 0;
    if (add_ngrams(&w->hyp, &w->caphyp, &nh, h->sym, h->ntok, TFM_BLEU_ORDER, 0)) goto nomem;
    nh = collapse(w->hyp, nh, 1);
    int64_t hyp_len = (int64_t)h->ntok;
    int64_t closest_diff = -1, closest_len = -1;
    for (int r = 1; r <= k; r++) {
        side *sd = &w->sides[r];
        size_t n1 = 0;
        if (add_ngrams(&w->ref, &w->capref, &n1, sd->sym, sd->ntok, TFM_BLEU_ORDER, 0)) goto nomem;
        n1 = collapse(w->ref, n1, 1);
        if (GROW(w->all, w->capall, nr + n1 + 1)) goto nomem;
        if (n1) memcpy(w->all + nr, w->ref, n1 * sizeof *w->ref);
        nr += n1;
        /* _get_closest_ref_len: the closest length, the shorter on a tie */
        int64_t rl = (int64_t)sd->ntok;
        int64_t diff = hyp_len > rl ? hyp_len - rl : rl - hyp_len;
        if (closest_diff == -1 || diff < closest_diff) {
            closest_diff = diff;
            closest_len = rl;
        } else if (diff == closest_diff && rl < closest_len) {
            closest_len = rl;
        }
    }
    /* Several references: each n-gram counts up to its largest count in any one. */
    nr = collapse(w->all, nr, 0);

    int64_t match[TFM_BLEU_ORDER] = {0};
    match_counts(w->hyp, nh, w->all, nr, match);
    st->sys_len += hyp_len;
    st->ref_len += closest_len;
    for (int n = 0; n < TFM_BLEU_ORDER; n++) {
        st->counts[n] += match[n];
        st->totals[n] += hyp_len > n ? hyp_len - n : 0;
    }
    note_nrefs(&st->nrefs, k);
    return TFM_OK;
nomem:
    return tfm_error(TFM_ERR_NOMEM, "bleu: out of memory");
}

tfm_status tfm_bleu_add_segment(tfm_bleu_stats *stats, const char *hyp, const char *const *refs,
                                int nrefs, const tfm_bleu_params *p) {
    TFM_ASSERT(stats && hyp && refs && p && nrefs >= 1);
    TFM_TRY(tfm_bleu_params_validate(p));
    workspace w = {0};
    tfm_status st = bleu_segment(&w, stats, hyp, refs, nrefs, p);
    ws_free(&w);
    return st;
}

/* utils.my_log: log with log(0) floored to -9999999999. */
static double my_log(double x) { return x == 0.0 ? -9999999999.0 : log(x); }

void tfm_bleu_compute(const tfm_bleu_stats *s, const tfm_bleu_params *p, tfm_bleu_result *out) {
    TFM_ASSERT(s && p && out);
    memset(out, 0, sizeof *out);
    out->sys_len = s->sys_len;
    out->ref_len = s->ref_len;
    out->nrefs = s->nrefs;
    memcpy(out->counts, s->counts, sizeof s->counts);
    memcpy(out->totals, s->totals, sizeof s->totals);
    out->ratio = s->ref_len ? (double)s->sys_len / (double)s->ref_len : 0.0;

    if (s->sys_len < s->ref_len)
        out->bp = s->sys_len > 0 ? exp(1.0 - (double)s->ref_len / (double)s->sys_len) : 0.0;
    else
        out->bp = 1.0;

    int any = 0;
    for (int n = 0; n < TFM_BLEU_ORDER; n++) any |= s->counts[n] != 0;
    if (!any) { /* early exit when nothing matches (sacreBLEU #141) */
        out->score = 0.0;
        return;
    }
    double sv = smooth_value_of(p);
    double smooth_mteval = 1.0;
    int eff_order = TFM_BLEU_ORDER;
    for (int n = 1; n <= TFM_BLEU_ORDER; n++) {
        double correct = (double)s->counts[n - 1], total = (double)s->totals[n - 1];
        if (p->smooth == TFM_BLEU_SMOOTH_ADD_K && n > 1) {
            correct += sv;
            total += sv;
        }
        if (total == 0) break;
        if (p->effective_order) eff_order = n;
        if (correct == 0) {
            if (p->smooth == TFM_BLEU_SMOOTH_EXP) {
                smooth_mteval *= 2;
                out->precisions[n - 1] = 100.0 / (smooth_mteval * total);
            } else if (p->smooth == TFM_BLEU_SMOOTH_FLOOR) {
                out->precisions[n - 1] = 100.0 * sv / total;
            }
        } else {
            out->precisions[n - 1] = 100.0 * correct / total;
        }
    }
    double sum = 0.0;
    for (int n = 0; n < eff_order; n++) sum += my_log(out->precisions[n]);
    out->score = out->bp * exp(sum / eff_order);
}

static tfm_status chrf_segment(workspace *w, tfm_chrf_stats *st, const char *hyp,
                               const char *const *refs, int nrefs, const tfm_chrf_params *p);

/* Adds the statistics of every segment through `fn` (bleu_segment or
 * chrf_segment behind a void* signature); errors name the segment. */
typedef tfm_status (*segment_fn)(workspace *w, void *stats, const char *hyp, const char **refs, int nrefs,
                                 const void *params);

static tfm_status bleu_segment_any(workspace *w, void *stats, const char *hyp, const char **refs, int nrefs,
                                   const void *params) {
    return bleu_segment(w, stats, hyp, refs, nrefs, params);
}

static tfm_status chrf_segment_any(workspace *w, void *stats, const char *hyp, const char **refs, int nrefs,
                                   const void *params) {
    return chrf_segment(w, stats, hyp, refs, nrefs, params);
}

static tfm_status for_each_segment(const char *metric, segment_fn fn, void *stats, const void *params,
                                   const char *const *hyps, const char *const *const *refs, int nrefs,
                                   size_t nseg) {
    workspace w = {0};
    const char *local[64];
    const char **seg = nrefs <= 64 ? local : malloc((size_t)nrefs * sizeof *seg);
    if (!seg) return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", metric);
    tfm_status status = TFM_OK;
    for (size_t i = 0; i < nseg; i++) {
        for (int r = 0; r < nrefs; r++) seg[r] = refs[r][i];
        status = fn(&w, stats, hyps[i], seg, nrefs, params);
        if (status != TFM_OK) {
            char msg[768];
            snprintf(msg, sizeof msg, "%s", tfm_last_error());
            tfm_error(status, "%s: segment %zu: %s", metric, i + 1, msg);
            break;
        }
    }
    ws_free(&w);
    if (seg != local) free(seg);
    return status;
}

tfm_status tfm_bleu_corpus(const char *const *hyps, const char *const *const *refs, int nrefs,
                           size_t nseg, const tfm_bleu_params *p, tfm_bleu_result *out) {
    TFM_ASSERT(p && out && nrefs >= 1 && (nseg == 0 || (hyps && refs)));
    TFM_TRY(tfm_bleu_params_validate(p));
    for (int r = 0; r < nrefs && nseg; r++) TFM_ASSERT(refs[r]);
    tfm_bleu_stats st;
    tfm_bleu_stats_init(&st);
    TFM_TRY(for_each_segment("bleu", bleu_segment_any, &st, p, hyps, refs, nrefs, nseg));
    if (st.nrefs == 0) st.nrefs = nrefs;
    tfm_bleu_compute(&st, p, out);
    return TFM_OK;
}

tfm_status tfm_bleu_sentence(const char *hyp, const char *const *refs, int nrefs,
                             const tfm_bleu_params *p, tfm_bleu_result *out) {
    TFM_ASSERT(hyp && refs && p && out && nrefs >= 1);
    tfm_bleu_stats st;
    tfm_bleu_stats_init(&st);
    TFM_TRY(tfm_bleu_add_segment(&st, hyp, refs, nrefs, p));
    tfm_bleu_compute(&st, p, out);
    return TFM_OK;
}

static const char *tok_name(tfm_bleu_tokenize t) {
    switch (t) {
    case TFM_BLEU_TOK_13A: return "13a";
    case TFM_BLEU_TOK_INTL: return "intl";
    case TFM_BLEU_TOK_NONE: return "none";
    case TFM_BLEU_TOK_CHAR: return "char";
    }
    return "?";
}

int tfm_bleu_signature(const tfm_bleu_params *p, int nrefs, char *buf, size_t cap) {
    TFM_ASSERT(p && (buf || cap == 0));
    char nr[16], smooth[48];
    if (nrefs < 0) snprintf(nr, sizeof nr, "var");
    else snprintf(nr, sizeof nr, "%d", nrefs);
    switch (p->smooth) {
    case TFM_BLEU_SMOOTH_FLOOR: snprintf(smooth, sizeof smooth, "floor[%.2f]", smooth_value_of(p)); break;
    case TFM_BLEU_SMOOTH_ADD_K: snprintf(smooth, sizeof smooth, "add-k[%.2f]", smooth_value_of(p)); break;
    case TFM_BLEU_SMOOTH_NONE: snprintf(smooth, sizeof smooth, "none"); break;
    default: snprintf(smooth, sizeof smooth, "exp"); break;
    }
    return snprintf(buf, cap, "nrefs:%s|case:%s|eff:%s|tok:%s|smooth:%s|version:%s", nr,
                    p->lowercase ? "lc" : "mixed", p->effective_order ? "yes" : "no",
                    tok_name(p->tokenize), smooth, TFM_SACREBLEU_VERSION);
}

int tfm_bleu_verbose(const tfm_bleu_result *r, char *buf, size_t cap) {
    TFM_ASSERT(r && (buf || cap == 0));
    return snprintf(buf, cap,
                    "%.1f/%.1f/%.1f/%.1f (BP = %.3f ratio = %.3f hyp_len = %lld ref_len = %lld)",
                    r->precisions[0], r->precisions[1], r->precisions[2], r->precisions[3], r->bp,
                    r->ratio, (long long)r->sys_len, (long long)r->ref_len);
}

tfm_status tfm_bleu_tokenize_string(const char *text, const tfm_bleu_params *p, char **out) {
    TFM_ASSERT(text && p && out);
    TFM_TRY(tfm_bleu_params_validate(p));
    size_t bad;
    if (!tfm_utf8_valid(text, strlen(text), &bad))
        return tfm_error(TFM_ERR_INVALID, "tokenize: invalid UTF-8 at byte %zu", bad);
    workspace w = {0};
    strbuf res = {0};
    int fail = ws_sides(&w, 1) || bleu_preprocess(&w, text, p, &w.sides[0]);
    if (!fail) {
        side *sd = &w.sides[0];
        fail = sb_reserve(&res, sd->text.len);
        for (size_t t = 0; !fail && t < sd->ntok; t++) {
            if (t) sb_putc(&res, ' ');
            memcpy(res.p + res.len, sd->text.p + sd->toks[t].off, sd->toks[t].len);
            res.len += sd->toks[t].len;
        }
        if (!fail) res.p[res.len] = '\0';
    }
    ws_free(&w);
    if (fail) {
        sb_free(&res);
        return tfm_error(TFM_ERR_NOMEM, "tokenize: out of memory");
    }
    *out = res.p;
    return TFM_OK;
}

/* ---------------------------------------------------------------------- chrF */

void tfm_chrf_default_params(tfm_chrf_params *p) {
    TFM_ASSERT(p);
    p->char_order = 6;
    p->word_order = 0;
    p->beta = 2;
    p->lowercase = 0;
    p->whitespace = 0;
    p->eps_smoothing = 0;
}

tfm_status tfm_chrf_params_validate(const tfm_chrf_params *p) {
    TFM_ASSERT(p);
    if (p->char_order < 0)
        return tfm_error(TFM_ERR_INVALID, "chrf: char_order: %d is negative", p->char_order);
    if (p->word_order < 0)
        return tfm_error(TFM_ERR_INVALID, "chrf: word_order: %d is negative", p->word_order);
    if (p->char_order + p->word_order < 1)
        return tfm_error(TFM_ERR_INVALID, "chrf: char_order + word_order must be at least 1");
    if (p->char_order + p->word_order > TFM_CHRF_MAX_ORDERS)
        return tfm_error(TFM_ERR_INVALID, "chrf: char_order + word_order: %d exceeds %d",
                         p->char_order + p->word_order, TFM_CHRF_MAX_ORDERS);
    if (p->beta < 0) return tfm_error(TFM_ERR_INVALID, "chrf: beta: %d is negative", p->beta);
    return TFM_OK;
}

void tfm_chrf_stats_init(tfm_chrf_stats *s, const tfm_chrf_params *p) {
    TFM_ASSERT(s && p);
    memset(s, 0, sizeof *s);
    s->norders = p->char_order + p->word_order;
}

/* CHRF._compute_f_score on v[0..3*norders). */
static double chrf_f(const int64_t *v, int norders, int beta, int eps_smoothing) {
    const double eps = 1e-16;
    double score = 0.0, avg_prec = 0.0, avg_rec = 0.0;
    double factor = (double)beta * (double)beta;
    int effective_order = 0;
    for (int i = 0; i < norders; i++) {
        int64_t n_hyp = v[3 * i], n_ref = v[3 * i + 1], n_match = v[3 * i + 2];
        double prec = n_hyp > 0 ? (double)n_match / (double)n_hyp : eps;
        double rec = n_ref > 0 ? (double)n_match / (double)n_ref : eps;
        double denom = factor * prec + rec;
        score += denom > 0 ? (1 + factor) * prec * rec / denom : eps;
        if (n_hyp > 0 && n_ref > 0) {
            avg_prec += prec;
            avg_rec += rec;
            effective_order++;
        }
    }
    if (eps_smoothing) return 100 * score / norders;
    if (effective_order == 0) {
        avg_prec = avg_rec = 0.0;
    } else {
        avg_prec /= effective_order;
        avg_rec /= effective_order;
    }
    if (avg_prec + avg_rec != 0) {
        score = (1 + factor) * avg_prec * avg_rec;
        score /= (factor * avg_prec) + avg_rec;
        return 100 * score;
    }
    return 0.0;
}

double tfm_chrf_compute(const tfm_chrf_stats *s, const tfm_chrf_params *p) {
    TFM_ASSERT(s && p && s->norders == p->char_order + p->word_order);
    return chrf_f(s->v, s->norders, p->beta, p->eps_smoothing);
}

/* string.punctuation */
static inline int is_ascii_punct(unsigned char c) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
}

/* chrF preprocessing of valid UTF-8 text: lowercase (optional), code points
 * (whitespace dropped unless p->whitespace), and for chrF++ the words of
 * CHRF._remove_punctuation: str.split(), then a word longer than one code
 * point loses a final ASCII punctuation mark, or else a leading one, into a
 * token of its own. */
static int chrf_preprocess(workspace *w, const char *text, const tfm_chrf_params *p, side *sd) {
    size_t n = strlen(text);
    if (p->lowercase) {
        if (lower_into(text, n, &sd->text, &w->cps, &w->capcps)) return -1;
    } else {
        if (sb_set(&sd->text, text, n)) return -1;
    }
    size_t m;
    if (decode_all(sd->text.p, sd->text.len, &sd->chars, &sd->capchars, &m)) return -1;
    if (!p->whitespace) {
        size_t k = 0;
        for (size_t i = 0; i < m; i++)
            if (!tfm_uni_is_space(sd->chars[i])) sd->chars[k++] = sd->chars[i];
        m = k;
    }
    sd->nchars = m;
    sd->ntok = 0;
    if (p->word_order > 0) {
        if (split_words(sd)) return -1;
        /* Each word becomes at most two tokens. */
        size_t nw = sd->ntok;
        if (GROW(sd->toks, sd->captok, 2 * nw + 1)) return -1;
        memmove(sd->toks + nw, sd->toks, nw * sizeof *sd->toks);
        size_t k = 0;
        for (size_t i = 0; i < nw; i++) {
            tok t = sd->toks[nw + i];
            const unsigned char *ws = (const unsigned char *)sd->text.p + t.off;
            /* len(w) == 1 in code points: one multi-byte character is one too */
            int one = 1;
            for (uint32_t b = 1; b < t.len; b++)
                if ((ws[b] & 0xC0) != 0x80) { one = 0; break; }
            if (one) {
                sd->toks[k++] = t;
            } else if (is_ascii_punct(ws[t.len - 1])) {
                sd->toks[k++] = (tok){t.off, t.len - 1};
                sd->toks[k++] = (tok){t.off + t.len - 1, 1};
            } else if (is_ascii_punct(ws[0])) {
                sd->toks[k++] = (tok){t.off, 1};
                sd->toks[k++] = (tok){t.off + 1, t.len - 1};
            } else {
                sd->toks[k++] = t;
            }
        }
        sd->ntok = k;
    }
    return 0;
}

static tfm_status chrf_segment(workspace *w, tfm_chrf_stats *st, const char *hyp,
                               const char *const *refs, int nrefs, const tfm_chrf_params *p) {
    TFM_ASSERT(nrefs >= 1 && refs);
    TFM_TRY(check_utf8(hyp, refs, nrefs));
    int k = count_nonempty(refs, nrefs);
    if (k == 0)
        return tfm_error(TFM_ERR_INVALID,
                         "every reference is empty (sacreBLEU rejects a segment without a reference)");
    int nc = p->char_order, nw = p->word_order, no = nc + nw;
    if (ws_sides(w, k + 1)) goto nomem;
    if (chrf_preprocess(w, hyp, p, &w->sides[0])) goto nomem;
    int s = 1;
    for (int r = 0; r < nrefs; r++) {
        if (!refs[r][0]) continue;
        if (chrf_preprocess(w, refs[r], p, &w->sides[s++])) goto nomem;
    }
    if (nw > 0 && intern_tokens(w, w->sides, k + 1)) goto nomem;

    /* Hypothesis n-grams, and how many of each order. */
    side *h = &w->sides[0];
    size_t nh = 0;
    if (add_ngrams(&w->hyp, &w->caphyp, &nh, h->chars, h->nchars, nc, 0)) goto nomem;
    if (nw > 0 && add_ngrams(&w->hyp, &w->caphyp, &nh, h->sym, h->ntok, nw, (uint32_t)nc)) goto nomem;
    nh = collapse(w->hyp, nh, 1);
    int64_t hyp_tot[TFM_CHRF_MAX_ORDERS] = {0};
    for (int o = 0; o < no; o++) {
        size_t len = o < nc ? h->nchars : h->ntok;
        size_t n = (size_t)(o < nc ? o + 1 : o - nc + 1);
        hyp_tot[o] = len >= n ? (int64_t)(len - n + 1) : 0;
    }

    int64_t best[3 * TFM_CHRF_MAX_ORDERS];
    double best_f = -1.0;
    for (int r = 1; r <= k; r++) {
        side *sd = &w->sides[r];
        size_t n1 = 0;
        if (add_ngrams(&w->ref, &w->capref, &n1, sd->chars, sd->nchars, nc, 0)) goto nomem;
        if (nw > 0 && add_ngrams(&w->ref, &w->capref, &n1, sd->sym, sd->ntok, nw, (uint32_t)nc))
            goto nomem;
        n1 = collapse(w->ref, n1, 1);
        int64_t v[3 * TFM_CHRF_MAX_ORDERS] = {0};
        int64_t match[TFM_CHRF_MAX_ORDERS] = {0};
        match_counts(w->hyp, nh, w->ref, n1, match);
        for (int o = 0; o < no; o++) {
            size_t len = o < nc ? sd->nchars : sd->ntok;
            size_t n = (size_t)(o < nc ? o + 1 : o - nc + 1);
            int64_t ref_tot = len >= n ? (int64_t)(len - n + 1) : 0;
            /* hyp n-grams count only when the reference has n-grams of that order */
            v[3 * o] = ref_tot > 0 ? hyp_tot[o] : 0;
            v[3 * o + 1] = ref_tot;
            v[3 * o + 2] = match[o];
        }
        double f = chrf_f(v, no, p->beta, p->eps_smoothing);
        if (f > best_f) { /* the first reference wins a tie */
            best_f = f;
            memcpy(best, v, sizeof v);
        }
    }
    for (int i = 0; i < 3 * no; i++) st->v[i] += best[i];
    note_nrefs(&st->nrefs, k);
    return TFM_OK;
nomem:
    return tfm_error(TFM_ERR_NOMEM, "chrf: out of memory");
}

tfm_status tfm_chrf_add_segment(tfm_chrf_stats *stats, const char *hyp, const char *const *refs,
                                int nrefs, const tfm_chrf_params *p) {
    TFM_ASSERT(stats && hyp && refs && p && nrefs >= 1);
    TFM_TRY(tfm_chrf_params_validate(p));
    TFM_ASSERT(stats->norders == p->char_order + p->word_order);
    workspace w = {0};
    tfm_status st = chrf_segment(&w, stats, hyp, refs, nrefs, p);
    ws_free(&w);
    return st;
}

tfm_status tfm_chrf_corpus(const char *const *hyps, const char *const *const *refs, int nrefs,
                           size_t nseg, const tfm_chrf_params *p, tfm_chrf_result *out) {
    TFM_ASSERT(p && out && nrefs >= 1 && (nseg == 0 || (hyps && refs)));
    TFM_TRY(tfm_chrf_params_validate(p));
    for (int r = 0; r < nrefs && nseg; r++) TFM_ASSERT(refs[r]);
    tfm_chrf_stats st;
    tfm_chrf_stats_init(&st, p);
    TFM_TRY(for_each_segment("chrf", chrf_segment_any, &st, p, hyps, refs, nrefs, nseg));
    if (st.nrefs == 0) st.nrefs = nrefs;
    out->stats = st;
    out->score = tfm_chrf_compute(&st, p);
    return TFM_OK;
}

tfm_status tfm_chrf_sentence(const char *hyp, const char *const *refs, int nrefs,
                             const tfm_chrf_params *p, tfm_chrf_result *out) {
    TFM_ASSERT(hyp && refs && p && out && nrefs >= 1);
    TFM_TRY(tfm_chrf_params_validate(p));
    tfm_chrf_stats st;
    tfm_chrf_stats_init(&st, p);
    TFM_TRY(tfm_chrf_add_segment(&st, hyp, refs, nrefs, p));
    out->stats = st;
    out->score = tfm_chrf_compute(&st, p);
    return TFM_OK;
}

int tfm_chrf_signature(const tfm_chrf_params *p, int nrefs, char *buf, size_t cap) {
    TFM_ASSERT(p && (buf || cap == 0));
    char nr[16];
    if (nrefs < 0) snprintf(nr, sizeof nr, "var");
    else snprintf(nr, sizeof nr, "%d", nrefs);
    return snprintf(buf, cap, "nrefs:%s|case:%s|eff:%s|nc:%d|nw:%d|space:%s|version:%s", nr,
                    p->lowercase ? "lc" : "mixed", p->eps_smoothing ? "no" : "yes", p->char_order,
                    p->word_order, p->whitespace ? "yes" : "no", TFM_SACREBLEU_VERSION);
}

int tfm_chrf_name(const tfm_chrf_params *p, char *buf, size_t cap) {
    TFM_ASSERT(p && (buf || cap == 0));
    char plus[TFM_CHRF_MAX_ORDERS + 1];
    int n = p->word_order < 0 ? 0 : p->word_order > TFM_CHRF_MAX_ORDERS ? TFM_CHRF_MAX_ORDERS : p->word_order;
    memset(plus, '+', (size_t)n);
    plus[n] = '\0';
    return snprintf(buf, cap, "chrF%d%s", p->beta, plus);
}

/* ---------------------------------------------------------------- formatting */

int tfm_format_py_float(double x, char *buf, size_t cap) {
    TFM_ASSERT(buf || cap == 0);
    if (isnan(x)) return snprintf(buf, cap, "nan");
    if (isinf(x)) return snprintf(buf, cap, x < 0 ? "-inf" : "inf");
    if (x == 0) return snprintf(buf, cap, signbit(x) ? "-0.0" : "0.0");
    /* The shortest %.{p}e that reads back as x: Python's repr digits. */
    char e[40];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec, x);
        if (strtod(e, NULL) == x) break;
    }
    /* e is "[-]d[.ddd]e[+-]XX": pull out the digits and the exponent. */
    const char *q = e;
    int neg = 0;
    if (*q == '-') { neg = 1; q++; }
    char digits[24];
    int nd = 0;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    int exp10 = atoi(q + 1);
    char out[64];
    int k = 0;
    if (neg) out[k++] = '-';
    if (exp10 < -4 || exp10 >= 16) {
        out[k++] = digits[0];
        if (nd > 1) {
            out[k++] = '.';
            for (int i = 1; i < nd; i++) out[k++] = digits[i];
        }
        k += snprintf(out + k, sizeof out - (size_t)k, "e%c%02d", exp10 < 0 ? '-' : '+',
                      exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = -1; i > exp10; i--) out[k++] = '0';
        for (int i = 0; i < nd; i++) out[k++] = digits[i];
    } else {
        for (int i = 0; i <= exp10; i++) out[k++] = i < nd ? digits[i] : '0';
        out[k++] = '.';
        if (nd > exp10 + 1)
            for (int i = exp10 + 1; i < nd; i++) out[k++] = digits[i];
        else
            out[k++] = '0';
    }
    out[k] = '\0';
    return snprintf(buf, cap, "%s", out);
}
