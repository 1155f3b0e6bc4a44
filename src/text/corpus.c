/*
 * corpus.c: loading a parallel or language-model corpus, and batching it by
 * token count (see corpus.h for the contract).
 *
 * Loading a parallel corpus: both files are read whole, checked for equal line
 * counts and for UTF-8, and split into NUL-terminated lines in place. Lines
 * are then encoded a block of CHUNK_LINES pairs at a time: OpenMP threads
 * encode every line of the block into a scratch buffer with room for the
 * worst case, then one thread appends the pairs that pass the filters to the
 * corpus. The scratch is bounded by the block, not by the corpus.
 *
 * Batching: examples are sorted by (source length, target length, index), so
 * that a batch holds similar lengths and little padding, and cut greedily.
 * The batches are fixed at load time; an epoch visits them in an order given
 * by a Fisher-Yates shuffle seeded with (seed, epoch).
 */
#include "text/corpus.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/status.h"
#include "core/utf8.h"

enum { CHUNK_LINES = 16384 };

/* One kept example. Ids are ids[src .. src+src_len) and ids[tgt .. tgt+tgt_len);
 * the raw lines are at byte offsets src_text / tgt_text of the file buffers. */
typedef struct example {
    int64_t src, tgt;
    int64_t src_text, tgt_text;
    int64_t src_text_len, tgt_text_len;
    int32_t src_len, tgt_len;
    int64_t line;
} example;

struct tfm_corpus {
    tfm_corpus_params p;
    int lm;
    long n;                  /* examples */
    example *ex;             /* [n] */
    int32_t *ids;            /* every id, sources and targets (or the LM stream) */
    int64_t n_ids;
    char *src_buf, *tgt_buf; /* the files, lines NUL-terminated in place */
    long n_batches;
    int32_t *sorted;         /* [n] example ids in (src len, tgt len, id) order */
    int64_t *bstart;         /* [n_batches+1] batch b is sorted[bstart[b] .. bstart[b+1]) */
    tfm_corpus_shape shape;
};

void tfm_corpus_default_params(tfm_corpus_params *p) {
    TFM_ASSERT(p);
    p->max_len = 256;
    p->batch_tokens = 25000;
    p->max_sentences = 0;
    p->seed = 1;
    p->pad_id = TFM_BPE_PAD;
    p->bos_id = TFM_BPE_BOS;
    p->eos_id = TFM_BPE_EOS;
}

static tfm_status check_params(const tfm_corpus_params *p) {
    if (p->max_len < 1)
        return tfm_error(TFM_ERR_INVALID, "corpus: max_len: must be at least 1, not %d",
                         p->max_len);
    if (p->max_len > (1 << 24))
        return tfm_error(TFM_ERR_INVALID, "corpus: max_len: %d is more than 16777216",
                         p->max_len);
    if (p->batch_tokens < 1)
        return tfm_error(TFM_ERR_INVALID, "corpus: batch_tokens: must be at least 1, not %ld",
                         p->batch_tokens);
    if (p->max_sentences < 0)
        return tfm_error(TFM_ERR_INVALID,
                         "corpus: max_sentences: must be 0 (no limit) or more, not %d",
                         p->max_sentences);
    if (p->pad_id < 0 || p->bos_id < 0 || p->eos_id < 0)
        return tfm_error(TFM_ERR_INVALID, "corpus: pad_id, bos_id, eos_id: must not be negative");
    return TFM_OK;
}

/* ------------------------------------------------------------- reading */

/* Reads the whole file into a new buffer with one spare byte (for a NUL). */
static tfm_status read_file(const char *path, char **out, size_t *size) {
    *out = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return tfm_error(TFM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        return tfm_error(TFM_ERR_NOMEM, "%s: out of memory reading the file", path);
    }
    for (;;) {
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (n < cap) break;
        char *nb = cap < ((size_t)1 << 62) ? realloc(buf, 2 * cap + 1) : NULL;
        if (!nb) {
            free(buf);
            fclose(f);
            return tfm_error(TFM_ERR_NOMEM, "%s: out of memory reading the file", path);
        }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err) {
        free(buf);
        return tfm_error(TFM_ERR_IO, "%s: cannot read: %s", path, strerror(err));
    }
    buf[n] = '\0';
    *out = buf;
    *size = n;
    return TFM_OK;
}

/* Lines of a buffer: '\n'-terminated, plus a last one without '\n'. */
static long count_lines(const char *buf, size_t size) {
    long n = 0;
    const char *p = buf, *end = buf + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        n++;
        if (!nl) break;
        p = nl + 1;
    }
    return n;
}

/* UTF-8 of the whole file at once: a valid sequence never holds a '\n' byte,
 * so the file is valid exactly when every line is. */
static tfm_status check_utf8(const char *path, const char *buf, size_t size) {
    size_t bad = 0;
    if (tfm_utf8_valid(buf, size, &bad)) return TFM_OK;
    long line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < bad; i++)
        if (buf[i] == '\n') {
            line++;
            line_start = i + 1;
        }
    return tfm_error(TFM_ERR_FORMAT, "%s:%ld: invalid UTF-8 at byte %zu of the line", path, line,
                     bad - line_start + 1);
}

/* Splits buf into lines in place: each '\n' (and a '\r' before it, or at the
 * end of a last line without '\n') becomes a NUL. off/len receive each line's
 * offset and length ([nlines] each). */
static void split_lines(char *buf, size_t size, long nlines, int64_t *off, int64_t *len) {
    size_t p = 0;
    for (long i = 0; i < nlines; i++) {
        char *nl = memchr(buf + p, '\n', size - p);
        size_t e = nl ? (size_t)(nl - buf) : size;
        size_t l = e - p;
        if (l > 0 && buf[p + l - 1] == '\r') l--;
        buf[p + l] = '\0';
        off[i] = (int64_t)p;
        len[i] = (int64_t)l;
        p = e + 1;
    }
}

static int is_trim_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* [*s, *s + *n) without leading and trailing ASCII whitespace. */
static void trim(const char **s, size_t *n) {
    const char *a = *s, *b = *s + *n;
    while (a < b && is_trim_space(*a)) a++;
    while (b > a && is_trim_space(b[-1])) b--;
    *s = a;
    *n = (size_t)(b - a);
}

/* ------------------------------------------------------------- batching */

typedef struct sort_key {
    int32_t s, t, i;
} sort_key;

static int cmp_key(const void *a, const void *b) {
    const sort_key *x = a, *y = b;
    if (x->s != y->s) return x->s < y->s ? -1 : 1;
    if (x->t != y->t) return x->t < y->t ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Length of example e's target rows: bos+y (or y+eos), or block[:-1]. */
static int32_t row_len(const tfm_corpus *c, const example *e) {
    return c->lm ? e->tgt_len - 1 : e->tgt_len + 1;
}

/* Sorts the examples and cuts the batches (corpus.h). A batch takes the next
 * example unless that would make B*max(S, T) exceed batch_tokens or B exceed
 * max_sentences; an example too big on its own gets a batch of its own. */
static tfm_status make_batches(tfm_corpus *c) {
    long n = c->n;
    TFM_ASSERT(n > 0 && n <= INT32_MAX);
    sort_key *keys = malloc((size_t)n * sizeof *keys);
    c->sorted = malloc((size_t)n * sizeof *c->sorted);
    c->bstart = malloc((size_t)(n + 1) * sizeof *c->bstart);
    if (!keys || !c->sorted || !c->bstart) {
        free(keys);
        return tfm_error(TFM_ERR_NOMEM, "corpus: out of memory sorting %ld examples", n);
    }
    for (long i = 0; i < n; i++) {
        keys[i].s = c->ex[i].src_len;
        keys[i].t = c->ex[i].tgt_len;
        keys[i].i = (int32_t)i;
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_key);
    for (long i = 0; i < n; i++) c->sorted[i] = keys[i].i;
    free(keys);

    tfm_corpus_shape sh = {0, 0, 0, 0, 0};
    long nb = 0, B = 0;
    int64_t S = 0, T = 0;
    const long cap_b = c->p.max_sentences;
    for (long k = 0; k <= n; k++) {
        int64_t s = 0, t = 0;
        int close = k == n;
        if (k < n) {
            const example *e = &c->ex[c->sorted[k]];
            s = e->src_len;
            t = row_len(c, e);
            int64_t ns = S > s ? S : s, nt = T > t ? T : t;
            int64_t wide = ns > nt ? ns : nt;
            close = B > 0 && ((B + 1) * wide > c->p.batch_tokens || (cap_b && B >= cap_b));
        }
        if (close && B > 0) {
            if (B > sh.max_B) sh.max_B = (int)B;
            if (S > sh.max_S) sh.max_S = (int)S;
            if (T > sh.max_T) sh.max_T = (int)T;
            if (B * S > sh.max_src_cells) sh.max_src_cells = B * S;
            if (B * T > sh.max_tgt_cells) sh.max_tgt_cells = B * T;
            nb++;
            B = 0;
            S = T = 0;
        }
        if (k == n) break;
        if (B == 0) c->bstart[nb] = k;
        B++;
        if (s > S) S = s;
        if (t > T) T = t;
    }
    c->bstart[nb] = n;
    int64_t *shrunk = realloc(c->bstart, (size_t)(nb + 1) * sizeof *shrunk);
    if (shrunk) c->bstart = shrunk;
    c->n_batches = nb;
    c->shape = sh;
    return TFM_OK;
}

/* ------------------------------------------------------------- loading */

void tfm_corpus_free(tfm_corpus *c) {
    if (!c) return;
    free(c->ex);
    free(c->ids);
    free(c->src_buf);
    free(c->tgt_buf);
    free(c->sorted);
    free(c->bstart);
    free(c);
}

static tfm_corpus *corpus_new(const tfm_corpus_params *params) {
    tfm_corpus *c = calloc(1, sizeof *c);
    if (c) c->p = *params;
    return c;
}

/* Appends n ids to c->ids (capacity *cap, doubled as needed). */
static int append_ids(tfm_corpus *c, int64_t *cap, const int32_t *ids, int64_t n) {
    if (c->n_ids + n > *cap) {
        int64_t nc = *cap ? *cap : 1024;
        while (nc < c->n_ids + n) nc *= 2;
        int32_t *p = realloc(c->ids, (size_t)nc * sizeof *p);
        if (!p) return 0;
        c->ids = p;
        *cap = nc;
    }
    memcpy(c->ids + c->n_ids, ids, (size_t)n * sizeof *ids);
    c->n_ids += n;
    return 1;
}

/* Scratch for encoding one block of lines of both files. */
typedef struct chunk_scratch {
    int32_t *ids;        /* room for every line of the block, worst case */
    size_t cap;
    int64_t *at;         /* [2*CHUNK_LINES] where line j's side k starts in ids */
    int32_t *count;      /* [2*CHUNK_LINES] ids of each; -1 for an empty side */
    tfm_status *st;      /* [2*CHUNK_LINES] */
} chunk_scratch;

/* Encodes lines [first, first+m) of both sides into s; returns TFM_OK or the
 * error of the first line that failed, with its message (set on this thread). */
static tfm_status encode_chunk(const tfm_bpe *bpe, char *const bufs[2], const char *const paths[2],
                               const int64_t *const off[2], const int64_t *const len[2],
                               long first, long m, chunk_scratch *s) {
    size_t need = 0;
    for (long j = 0; j < m; j++)
        for (int k = 0; k < 2; k++) {
            s->at[2 * j + k] = (int64_t)need;
            need += tfm_bpe_max_tokens((size_t)len[k][first + j]);
        }
    if (need > s->cap) {
        int32_t *p = realloc(s->ids, need * sizeof *p);
        if (!p) return tfm_error(TFM_ERR_NOMEM, "corpus: out of memory encoding");
        s->ids = p;
        s->cap = need;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 64)
#endif
    for (long q = 0; q < 2 * m; q++) {
        long j = q / 2;
        int k = (int)(q % 2);
        const char *text = bufs[k] + off[k][first + j];
        size_t tl = (size_t)len[k][first + j];
        trim(&text, &tl);
        s->count[q] = -1;
        s->st[q] = TFM_OK;
        if (!tl) continue;
        size_t n = 0;
        s->st[q] = tfm_bpe_encode_into(bpe, text, tl, s->ids + s->at[q],
                                       tfm_bpe_max_tokens(tl), &n);
        s->count[q] = (int32_t)(n > INT32_MAX ? INT32_MAX : n);
    }
    for (long q = 0; q < 2 * m; q++) {
        if (s->st[q] == TFM_OK) continue;
        /* Again on this thread, for the message: a worker's is its own. */
        long j = q / 2;
        int k = (int)(q % 2);
        const char *text = bufs[k] + off[k][first + j];
        size_t tl = (size_t)len[k][first + j], n = 0;
        trim(&text, &tl);
        char why[512];
        if (tfm_bpe_encode_into(bpe, text, tl, s->ids + s->at[q], tfm_bpe_max_tokens(tl), &n) !=
            TFM_OK)
            snprintf(why, sizeof why, "%s", tfm_last_error());
        else
            snprintf(why, sizeof why, "encoding failed (%s)", tfm_status_name(s->st[q]));
        return tfm_error(s->st[q], "%s:%ld: %s", paths[k], first + j + 1, why);
    }
    return TFM_OK;
}

static void fill_stats(const tfm_corpus *c, tfm_corpus_stats *stats, tfm_corpus_stats *acc) {
    acc->kept = c->n;
    acc->batches = c->n_batches;
    if (stats) *stats = *acc;
}

tfm_status tfm_corpus_load(const tfm_corpus_params *params, const tfm_bpe *bpe,
                           const char *src_path, const char *tgt_path, tfm_corpus **out,
                           tfm_corpus_stats *stats) {
    TFM_ASSERT(params && bpe && src_path && tgt_path && out);
    *out = NULL;
    if (stats) memset(stats, 0, sizeof *stats);
    TFM_TRY(check_params(params));
    tfm_corpus *c = corpus_new(params);
    if (!c) return tfm_error(TFM_ERR_NOMEM, "corpus: out of memory");
    const char *paths[2] = {src_path, tgt_path};
    char *bufs[2] = {NULL, NULL};
    size_t sizes[2] = {0, 0};
    int64_t *lines = NULL;
    chunk_scratch s = {0};
    tfm_status st = TFM_OK;
    tfm_corpus_stats acc = {0};

    for (int k = 0; k < 2 && st == TFM_OK; k++) st = read_file(paths[k], &bufs[k], &sizes[k]);
    c->src_buf = bufs[0];
    c->tgt_buf = bufs[1];
    if (st != TFM_OK) goto fail;
    long nl[2] = {count_lines(bufs[0], sizes[0]), count_lines(bufs[1], sizes[1])};
    if (nl[0] != nl[1]) {
        st = tfm_error(TFM_ERR_FORMAT, "%s has %ld lines but %s has %ld", src_path, nl[0],
                       tgt_path, nl[1]);
        goto fail;
    }
    for (int k = 0; k < 2 && st == TFM_OK; k++) st = check_utf8(paths[k], bufs[k], sizes[k]);
    if (st != TFM_OK) goto fail;
    if (nl[0] > INT32_MAX) {
        st = tfm_error(TFM_ERR_FORMAT, "%s: %ld lines are more than this reader takes (%d)",
                       src_path, nl[0], INT32_MAX);
        goto fail;
    }

    long n = nl[0];
    acc.read = n;
    lines = malloc((size_t)(4 * n + 1) * sizeof *lines);
    c->ex = malloc((size_t)(n ? n : 1) * sizeof *c->ex);
    s.at = malloc(2 * CHUNK_LINES * sizeof *s.at);
    s.count = malloc(2 * CHUNK_LINES * sizeof *s.count);
    s.st = malloc(2 * CHUNK_LINES * sizeof *s.st);
    if (!lines || !c->ex || !s.at || !s.count || !s.st) {
        st = tfm_error(TFM_ERR_NOMEM, "corpus: out of memory for %ld lines", n);
        goto fail;
    }
    const int64_t *off[2] = {lines, lines + n}, *len[2] = {lines + 2 * n, lines + 3 * n};
    split_lines(bufs[0], sizes[0], n, lines, lines + 2 * n);
    split_lines(bufs[1], sizes[1], n, lines + n, lines + 3 * n);

    int64_t ids_cap = 0;
    for (long first = 0; first < n; first += CHUNK_LINES) {
        long m = n - first < CHUNK_LINES ? n - first : CHUNK_LINES;
        st = encode_chunk(bpe, bufs, paths, off, len, first, m, &s);
        if (st != TFM_OK) goto fail;
        for (long j = 0; j < m; j++) {
            int32_t ns = s.count[2 * j], nt = s.count[2 * j + 1];
            if (ns < 0 || nt < 0) {
                acc.skipped_empty++;
                continue;
            }
            if (ns > params->max_len || nt > params->max_len) {
                acc.skipped_long++;
                continue;
            }
            example *e = &c->ex[c->n];
            e->src = c->n_ids;
            e->tgt = c->n_ids + ns;
            if (!append_ids(c, &ids_cap, s.ids + s.at[2 * j], ns) ||
                !append_ids(c, &ids_cap, s.ids + s.at[2 * j + 1], nt)) {
                st = tfm_error(TFM_ERR_NOMEM, "corpus: out of memory for the ids");
                goto fail;
            }
            e->src_len = ns;
            e->tgt_len = nt;
            e->src_text = off[0][first + j];
            e->tgt_text = off[1][first + j];
            e->src_text_len = len[0][first + j];
            e->tgt_text_len = len[1][first + j];
            e->line = first + j + 1;
            c->n++;
            acc.src_tokens += ns;
            acc.tgt_tokens += nt;
        }
    }
    if (c->n == 0) {
        st = tfm_error(TFM_ERR_FORMAT,
                       "%s, %s: no pair left after filtering: %ld read, %ld with an empty "
                       "side, %ld with a side of more than %d tokens (max_len)",
                       src_path, tgt_path, acc.read, acc.skipped_empty, acc.skipped_long,
                       params->max_len);
        goto fail;
    }
    example *ex = realloc(c->ex, (size_t)c->n * sizeof *ex);
    if (ex) c->ex = ex;
    int32_t *ids = realloc(c->ids, (size_t)(c->n_ids ? c->n_ids : 1) * sizeof *ids);
    if (ids) c->ids = ids;
    st = make_batches(c);
    if (st != TFM_OK) goto fail;
    free(lines);
    free(s.ids);
    free(s.at);
    free(s.count);
    free(s.st);
    fill_stats(c, stats, &acc);
    *out = c;
    return TFM_OK;

fail:
    free(lines);
    free(s.ids);
    free(s.at);
    free(s.count);
    free(s.st);
    tfm_corpus_free(c);
    return st;
}

tfm_status tfm_corpus_load_lm(const tfm_corpus_params *params, const tfm_bpe *bpe,
                              const char *path, tfm_corpus **out, tfm_corpus_stats *stats) {
    TFM_ASSERT(params && bpe && path && out);
    *out = NULL;
    if (stats) memset(stats, 0, sizeof *stats);
    TFM_TRY(check_params(params));
    tfm_corpus *c = corpus_new(params);
    if (!c) return tfm_error(TFM_ERR_NOMEM, "corpus: out of memory");
    c->lm = 1;
    tfm_corpus_stats acc = {0};
    size_t size = 0, n = 0;
    tfm_status st = read_file(path, &c->tgt_buf, &size);
    if (st != TFM_OK) goto fail;
    st = check_utf8(path, c->tgt_buf, size);
    if (st != TFM_OK) goto fail;
    acc.read = count_lines(c->tgt_buf, size);
    /* One text, on one thread: encoding pieces separately would add a dummy
     * prefix to each. A 1 MB text takes a fraction of a second. */
    size_t cap = tfm_bpe_max_tokens(size);
    c->ids = malloc(cap * sizeof *c->ids);
    if (!c->ids) {
        st = tfm_error(TFM_ERR_NOMEM, "%s: out of memory encoding %zu bytes", path, size);
        goto fail;
    }
    st = tfm_bpe_encode_into(bpe, c->tgt_buf, size, c->ids, cap, &n);
    if (st != TFM_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", tfm_last_error());
        st = tfm_error(st, "%s: %s", path, why);
        goto fail;
    }
    if (n < 2) {
        st = tfm_error(TFM_ERR_FORMAT, "%s: %zu tokens are too few for a language model (at least 2)",
                       path, n);
        goto fail;
    }
    c->n_ids = (int64_t)n;
    int32_t *ids = realloc(c->ids, n * sizeof *ids);
    if (ids) c->ids = ids;
    /* The text is not needed after encoding. */
    free(c->tgt_buf);
    c->tgt_buf = NULL;

    const int64_t L = params->max_len;
    long nblocks = (long)((n - 2) / (size_t)L + 1); /* the last block holds >= 2 ids */
    c->ex = calloc((size_t)nblocks, sizeof *c->ex);
    if (!c->ex) {
        st = tfm_error(TFM_ERR_NOMEM, "%s: out of memory for %ld blocks", path, nblocks);
        goto fail;
    }
    for (long k = 0; k < nblocks; k++) {
        example *e = &c->ex[k];
        e->tgt = k * L;
        int64_t left = (int64_t)n - e->tgt;
        e->tgt_len = (int32_t)(left < L + 1 ? left : L + 1);
    }
    c->n = nblocks;
    acc.tgt_tokens = (long)n;
    st = make_batches(c);
    if (st != TFM_OK) goto fail;
    fill_stats(c, stats, &acc);
    *out = c;
    return TFM_OK;

fail:
    tfm_corpus_free(c);
    return st;
}

/* ------------------------------------------------------------- accessors */

int tfm_corpus_is_lm(const tfm_corpus *c) { return c->lm; }
const tfm_corpus_params *tfm_corpus_params_of(const tfm_corpus *c) { return &c->p; }
long tfm_corpus_size(const tfm_corpus *c) { return c->n; }
long tfm_corpus_n_batches(const tfm_corpus *c) { return c->n_batches; }
tfm_corpus_shape tfm_corpus_max_shape(const tfm_corpus *c) { return c->shape; }

const int32_t *tfm_corpus_src(const tfm_corpus *c, long i, int *n) {
    TFM_ASSERT(c && i >= 0 && i < c->n && n);
    *n = c->ex[i].src_len;
    return c->lm ? NULL : c->ids + c->ex[i].src;
}

const int32_t *tfm_corpus_tgt(const tfm_corpus *c, long i, int *n) {
    TFM_ASSERT(c && i >= 0 && i < c->n && n);
    *n = c->ex[i].tgt_len;
    return c->ids + c->ex[i].tgt;
}

long tfm_corpus_line(const tfm_corpus *c, long i) {
    TFM_ASSERT(c && i >= 0 && i < c->n);
    return (long)c->ex[i].line;
}

const char *tfm_corpus_src_text(const tfm_corpus *c, long i, size_t *len) {
    TFM_ASSERT(c && i >= 0 && i < c->n);
    if (len) *len = c->lm ? 0 : (size_t)c->ex[i].src_text_len;
    return c->lm ? NULL : c->src_buf + c->ex[i].src_text;
}

const char *tfm_corpus_tgt_text(const tfm_corpus *c, long i, size_t *len) {
    TFM_ASSERT(c && i >= 0 && i < c->n);
    if (len) *len = c->lm ? 0 : (size_t)c->ex[i].tgt_text_len;
    return c->lm ? NULL : c->tgt_buf + c->ex[i].tgt_text;
}

/* ------------------------------------------------------------- batches */

tfm_status tfm_corpus_batch_buf_init(tfm_corpus_batch_buf *buf, const tfm_corpus *c) {
    TFM_ASSERT(buf && c);
    memset(buf, 0, sizeof *buf);
    const tfm_corpus_shape sh = c->shape;
    size_t src = (size_t)sh.max_src_cells, tgt = (size_t)sh.max_tgt_cells;
    size_t bytes = (src + 2 * tgt + (size_t)c->n_batches) * sizeof(int32_t) +
                   (size_t)sh.max_B * sizeof(long);
    /* longs first, for their alignment */
    buf->mem = malloc(bytes ? bytes : 1);
    if (!buf->mem)
        return tfm_error(TFM_ERR_NOMEM, "corpus: out of memory for a batch of %d x (%d, %d)",
                         sh.max_B, sh.max_S, sh.max_T);
    buf->rows = buf->mem;
    int32_t *p = (int32_t *)(buf->rows + sh.max_B);
    buf->src = p;
    buf->tgt_in = p + src;
    buf->targets = p + src + tgt;
    buf->order = p + src + 2 * tgt;
    buf->cap = sh;
    buf->corpus = c;
    buf->n_batches = c->n_batches;
    buf->order_epoch = -2;
    return TFM_OK;
}

void tfm_corpus_batch_buf_free(tfm_corpus_batch_buf *buf) {
    if (!buf) return;
    free(buf->mem);
    memset(buf, 0, sizeof *buf);
}

/* The order of epoch `epoch`: a Fisher-Yates shuffle of the batch ids drawn
 * from stream `epoch` of the seed. (The modulo's bias is below n/2^64.) */
static void make_order(const tfm_corpus *c, long epoch, int32_t *order) {
    long nb = c->n_batches;
    for (long b = 0; b < nb; b++) order[b] = (int32_t)b;
    tfm_rng r;
    tfm_rng_init(&r, c->p.seed, (uint64_t)epoch);
    for (long i = nb - 1; i > 0; i--) {
        long j = (long)(tfm_rng_next(&r) % (uint64_t)(i + 1));
        int32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

void tfm_corpus_batch(const tfm_corpus *c, long epoch, long index, tfm_corpus_batch_buf *buf) {
    TFM_ASSERT(c && buf && buf->corpus == c && buf->mem);
    TFM_ASSERT(index >= 0 && index < c->n_batches && epoch >= -1);
    long b = index;
    if (epoch >= 0) {
        if (buf->order_epoch != epoch) {
            make_order(c, epoch, buf->order);
            buf->order_epoch = epoch;
        }
        b = buf->order[index];
    }
    const int32_t *rows = c->sorted + c->bstart[b];
    int B = (int)(c->bstart[b + 1] - c->bstart[b]);
    int S = 0, T = 0;
    for (int r = 0; r < B; r++) {
        const example *e = &c->ex[rows[r]];
        if (e->src_len > S) S = e->src_len;
        if (row_len(c, e) > T) T = row_len(c, e);
    }
    TFM_ASSERT(B <= buf->cap.max_B && (long)B * S <= buf->cap.max_src_cells &&
               (long)B * T <= buf->cap.max_tgt_cells);
    const int32_t pad = c->p.pad_id, bos = c->p.bos_id, eos = c->p.eos_id;
    long ns = 0, nt = 0;
    for (int r = 0; r < B; r++) {
        const example *e = &c->ex[rows[r]];
        buf->rows[r] = rows[r];
        int32_t *src = buf->src + (size_t)r * S;
        int32_t *tin = buf->tgt_in + (size_t)r * T;
        int32_t *tout = buf->targets + (size_t)r * T;
        const int32_t *x = c->ids + e->src, *y = c->ids + e->tgt;
        int sl = e->src_len, tl = row_len(c, e);
        memcpy(src, x, (size_t)sl * sizeof *src);
        for (int i = sl; i < S; i++) src[i] = pad;
        if (c->lm) {
            memcpy(tin, y, (size_t)tl * sizeof *tin);
            memcpy(tout, y + 1, (size_t)tl * sizeof *tout);
        } else {
            tin[0] = bos;
            memcpy(tin + 1, y, (size_t)e->tgt_len * sizeof *tin);
            memcpy(tout, y, (size_t)e->tgt_len * sizeof *tout);
            tout[e->tgt_len] = eos;
        }
        for (int i = tl; i < T; i++) tin[i] = tout[i] = pad;
        ns += sl;
        nt += tl;
    }
    buf->n_src_tokens = ns;
    buf->n_tgt_tokens = nt;
    buf->batch.B = B;
    buf->batch.S = S;
    buf->batch.T = T;
    buf->batch.src = c->lm ? NULL : buf->src;
    buf->batch.tgt_in = buf->tgt_in;
    buf->batch.targets = buf->targets;
}

tfm_corpus_pos tfm_corpus_next(const tfm_corpus *c, tfm_corpus_pos pos) {
    TFM_ASSERT(c && pos.index >= 0 && pos.index < c->n_batches);
    if (pos.index + 1 < c->n_batches) {
        pos.index++;
    } else {
        pos.index = 0;
        if (pos.epoch >= 0) pos.epoch++;
    }
    return pos;
}
