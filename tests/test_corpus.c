/*
 * test_corpus.c: the corpus reader and token-count batching (src/text/corpus.c).
 *
 *   - a small parallel corpus written here (random sentences, empty and
 *     whitespace-only sides, over-long sides, '\r\n' line ends, a last line
 *     without '\n') with a tiny BPE learned from it: the skip counts, the ids
 *     and raw lines of every example, against encoding each line directly;
 *   - batching invariants for the sorted order and several epochs: every
 *     example exactly once per epoch, no batch over batch_tokens (padded)
 *     except a single over-size pair, max_sentences, padding, bos/eos
 *     placement, the token counts;
 *   - the batch order: deterministic per (seed, epoch), different across
 *     epochs and seeds, and batch (epoch, index) the same whatever was asked
 *     before (resuming);
 *   - a decoder-only corpus: the blocks overlap by one id and cover exactly
 *     the encoding of the whole text;
 *   - Multi30k and Tiny Shakespeare (when TFM_SHARED_DIR/data has them): the
 *     stats, the number of batches at batch_tokens 4096, and the load time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/rng.h"
#include "test_util.h"
#include "text/bpe.h"
#include "text/corpus.h"

static char tmpdir[64];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void write_file(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fwrite(data, 1, len, f);
    fclose(f);
}

/* A growable string. */
typedef struct str {
    char *p;
    size_t n, cap;
} str;

static void put(str *s, const char *t, size_t n) {
    if (s->n + n + 1 > s->cap) {
        s->cap = 2 * (s->n + n + 1);
        s->p = realloc(s->p, s->cap);
        if (!s->p) exit(1);
    }
    memcpy(s->p + s->n, t, n);
    s->n += n;
    s->p[s->n] = '\0';
}
static void puts_(str *s, const char *t) { put(s, t, strlen(t)); }

static const char *WORDS[] = {"the", "a", "man", "woman", "dog", "cat", "runs", "sits",
                              "on", "in", "red", "blue", "street", "park", "ein", "Mann",
                              "läuft", "über", "die", "Straße", "Hund", "schläft", "."};

static void random_sentence(str *s, tfm_rng *r, int words) {
    for (int w = 0; w < words; w++) {
        if (w) puts_(s, " ");
        puts_(s, WORDS[tfm_rng_next(r) % (sizeof WORDS / sizeof *WORDS)]);
    }
}

/* The lines of a file as the corpus reads them: split at '\n', one trailing
 * '\r' dropped, a last line without '\n' counted. */
static char **split(const char *text, size_t len, long *n) {
    long cap = 16;
    char **lines = malloc(cap * sizeof *lines);
    *n = 0;
    size_t p = 0;
    while (p < len) {
        const char *nl = memchr(text + p, '\n', len - p);
        size_t e = nl ? (size_t)(nl - text) : len, l = e - p;
        if (l && text[p + l - 1] == '\r') l--;
        if (*n == cap) lines = realloc(lines, (cap *= 2) * sizeof *lines);
        lines[*n] = malloc(l + 1);
        memcpy(lines[*n], text + p, l);
        lines[*n][l] = '\0';
        (*n)++;
        p = e + 1;
    }
    return lines;
}

static void free_lines(char **lines, long n) {
    for (long i = 0; i < n; i++) free(lines[i]);
    free(lines);
}

/* Encodes a line trimmed of ASCII whitespace; *n = -1 when that is empty. */
static int32_t *encode_trimmed(const tfm_bpe *bpe, const char *line, long *n) {
    const char *a = line, *b = line + strlen(line);
    while (a < b && strchr(" \t\r\v\f", *a)) a++;
    while (b > a && strchr(" \t\r\v\f", b[-1])) b--;
    if (a == b) {
        *n = -1;
        return NULL;
    }
    int32_t *ids = NULL;
    size_t k = 0;
    if (tfm_bpe_encode(bpe, a, (size_t)(b - a), &ids, &k) != TFM_OK) {
        fprintf(stderr, "encode: %s\n", tfm_last_error());
        exit(1);
    }
    *n = (long)k;
    return ids;
}

/* Checks one batch against the corpus; marks its rows in seen[]. */
static void check_batch(const tfm_corpus *c, const tfm_corpus_batch_buf *buf, int *seen,
                        const char *what) {
    const tfm_corpus_params *p = tfm_corpus_params_of(c);
    const tfm_batch *b = &buf->batch;
    int lm = tfm_corpus_is_lm(c);
    int B = b->B, S = b->S, T = b->T;
    CHECK(B >= 1, "%s: empty batch", what);
    tfm_corpus_shape cap = tfm_corpus_max_shape(c);
    CHECK(B <= cap.max_B && S <= cap.max_S && T <= cap.max_T, "%s: %dx(%d,%d) over the max shape",
          what, B, S, T);
    long wide = (long)B * (S > T ? S : T);
    CHECK(wide <= p->batch_tokens || B == 1, "%s: %d x max(%d, %d) > batch_tokens %ld", what, B,
          S, T, p->batch_tokens);
    CHECK(!p->max_sentences || B <= p->max_sentences, "%s: B %d > max_sentences", what, B);
    CHECK(b->tgt_in == buf->tgt_in && b->targets == buf->targets, "%s: batch pointers", what);
    CHECK(lm ? (b->src == NULL && S == 0) : b->src == buf->src, "%s: src pointer", what);
    int maxS = 0, maxT = 0, bad = 0;
    long ns = 0, nt = 0;
    for (int r = 0; r < B; r++) {
        long i = buf->rows[r];
        if (i < 0 || i >= tfm_corpus_size(c)) {
            bad++;
            continue;
        }
        seen[i]++;
        int sl, tl;
        const int32_t *x = tfm_corpus_src(c, i, &sl);
        const int32_t *y = tfm_corpus_tgt(c, i, &tl);
        const int32_t *src = buf->src + (size_t)r * S;
        const int32_t *tin = b->tgt_in + (size_t)r * T, *tout = b->targets + (size_t)r * T;
        if (lm) {
            int n = tl - 1; /* input = block[:-1], target = block[1:] */
            if (n > maxT) maxT = n;
            for (int k = 0; k < T; k++) {
                bad += k < n ? (tin[k] != y[k] || tout[k] != y[k + 1])
                             : (tin[k] != p->pad_id || tout[k] != p->pad_id);
            }
            nt += n;
        } else {
            if (sl > maxS) maxS = sl;
            if (tl + 1 > maxT) maxT = tl + 1;
            for (int k = 0; k < S; k++) bad += src[k] != (k < sl ? x[k] : p->pad_id);
            bad += tin[0] != p->bos_id;
            for (int k = 1; k < T; k++) bad += tin[k] != (k <= tl ? y[k - 1] : p->pad_id);
            for (int k = 0; k < T; k++)
                bad += tout[k] != (k < tl ? y[k] : k == tl ? p->eos_id : p->pad_id);
            ns += sl;
            nt += tl + 1;
        }
    }
    CHECK(!bad, "%s: %d wrong cells or rows", what, bad);
    CHECK(S == maxS && T == maxT, "%s: S %d T %d, longest rows %d %d", what, S, T, maxS, maxT);
    CHECK(buf->n_src_tokens == ns && buf->n_tgt_tokens == nt, "%s: token counts %ld %ld, want %ld %ld",
          what, buf->n_src_tokens, buf->n_tgt_tokens, ns, nt);
}

/* Every batch of one epoch; every example exactly once. */
static void check_epoch(const tfm_corpus *c, tfm_corpus_batch_buf *buf, long epoch) {
    long n = tfm_corpus_size(c);
    int *seen = calloc((size_t)n, sizeof *seen);
    char what[64];
    for (long k = 0; k < tfm_corpus_n_batches(c); k++) {
        snprintf(what, sizeof what, "epoch %ld batch %ld", epoch, k);
        tfm_corpus_batch(c, epoch, k, buf);
        check_batch(c, buf, seen, what);
    }
    long wrong = 0;
    for (long i = 0; i < n; i++) wrong += seen[i] != 1;
    CHECK(wrong == 0, "epoch %ld: %ld examples not seen exactly once", epoch, wrong);
    free(seen);
}

/* A digest of a batch's content. */
static uint64_t batch_hash(const tfm_corpus_batch_buf *buf) {
    const tfm_batch *b = &buf->batch;
    uint64_t h = tfm_mix64((uint64_t)b->B * 1000003u + (uint64_t)b->S * 1009u + (uint64_t)b->T);
    for (int r = 0; r < b->B; r++) h = tfm_mix64(h ^ (uint64_t)buf->rows[r]);
    for (long k = 0; k < (long)b->B * b->S; k++) h = tfm_mix64(h ^ (uint64_t)b->src[k]);
    for (long k = 0; k < (long)b->B * b->T; k++)
        h = tfm_mix64(h ^ (uint64_t)b->tgt_in[k] ^ ((uint64_t)b->targets[k] << 32));
    return h;
}

/* The first row of each batch of an epoch, as that epoch's order. */
static void epoch_order(const tfm_corpus *c, tfm_corpus_batch_buf *buf, long epoch, long *first) {
    for (long k = 0; k < tfm_corpus_n_batches(c); k++) {
        tfm_corpus_batch(c, epoch, k, buf);
        first[k] = buf->rows[0];
    }
}

static void test_parallel(void) {
    /* 300 random pairs, then the special cases. */
    str src = {0}, tgt = {0};
    tfm_rng r;
    tfm_rng_init(&r, 7, 0);
    for (int i = 0; i < 300; i++) {
        random_sentence(&src, &r, 1 + (int)(tfm_rng_next(&r) % 14));
        puts_(&src, i % 7 == 3 ? "\r\n" : "\n");
        random_sentence(&tgt, &r, 1 + (int)(tfm_rng_next(&r) % 14));
        puts_(&tgt, "\n");
    }
    /* empty source, a good pair, whitespace-only source, empty target */
    puts_(&src, "\nthe dog\n  \t \nthe cat sits\n");
    puts_(&tgt, "ein Hund\nein Mann\nder Hund\n\n");
    /* a long source (skipped) and a long target (skipped) */
    for (int i = 0; i < 2; i++) {
        str *longer = i ? &tgt : &src, *other = i ? &src : &tgt;
        for (int w = 0; w < 40; w++) puts_(longer, "Straße über Straße ");
        puts_(longer, "\n");
        puts_(other, "short\n");
    }
    puts_(&src, "  the red dog  \n");   /* trimmed */
    puts_(&tgt, "der rote Hund\r");     /* a last line without '\n', '\r' dropped */

    char sp[128], tp[128];
    snprintf(sp, sizeof sp, "%s/train.src", tmpdir);
    snprintf(tp, sizeof tp, "%s/train.tgt", tmpdir);
    write_file(sp, src.p, src.n);
    write_file(tp, tgt.p, tgt.n);

    tfm_bpe_params bp;
    tfm_bpe_default_params(&bp);
    bp.vocab_size = 400;
    tfm_bpe *bpe = NULL;
    const char *files[2] = {sp, tp};
    CHECK(tfm_bpe_learn(&bp, files, 2, &bpe) == TFM_OK, "learn: %s", tfm_last_error());
    if (!bpe) return;

    /* What the corpus should hold, from the lines encoded one by one. */
    long ns_lines, nt_lines;
    char **sl = split(src.p, src.n, &ns_lines), **tl = split(tgt.p, tgt.n, &nt_lines);
    CHECK(ns_lines == nt_lines && ns_lines == 307, "test files: %ld and %ld lines", ns_lines,
          nt_lines);

    tfm_corpus_params p;
    tfm_corpus_default_params(&p);
    CHECK(p.pad_id == TFM_BPE_PAD && p.bos_id == TFM_BPE_BOS && p.eos_id == TFM_BPE_EOS,
          "default special ids");
    p.max_len = 24;
    p.batch_tokens = 100;
    p.seed = 42;
    tfm_corpus *c = NULL;
    tfm_corpus_stats st;
    tfm_status s = tfm_corpus_load(&p, bpe, sp, tp, &c, &st);
    CHECK(s == TFM_OK, "load: %s", tfm_last_error());
    if (!c) return;
    printf("small corpus: read %ld kept %ld empty %ld long %ld, %ld+%ld tokens, %ld batches\n",
           st.read, st.kept, st.skipped_empty, st.skipped_long, st.src_tokens, st.tgt_tokens,
           st.batches);

    long want_empty = 0, want_long = 0, kept = 0, want_src = 0, want_tgt = 0, mismatch = 0;
    for (long i = 0; i < ns_lines; i++) {
        long a, b;
        int32_t *x = encode_trimmed(bpe, sl[i], &a), *y = encode_trimmed(bpe, tl[i], &b);
        if (a < 0 || b < 0) {
            want_empty++;
        } else if (a > p.max_len || b > p.max_len) {
            want_long++;
        } else if (kept < tfm_corpus_size(c)) {
            int n1, n2;
            const int32_t *cx = tfm_corpus_src(c, kept, &n1), *cy = tfm_corpus_tgt(c, kept, &n2);
            size_t l1, l2;
            const char *t1 = tfm_corpus_src_text(c, kept, &l1), *t2 = tfm_corpus_tgt_text(c, kept, &l2);
            int ok = n1 == a && n2 == b && !memcmp(cx, x, a * sizeof *x) &&
                     !memcmp(cy, y, b * sizeof *y) && tfm_corpus_line(c, kept) == i + 1 &&
                     l1 == strlen(sl[i]) && !strcmp(t1, sl[i]) && l2 == strlen(tl[i]) &&
                     !strcmp(t2, tl[i]);
            if (!ok && mismatch++ < 3)
                fprintf(stderr, "example %ld (line %ld) differs from its lines\n", kept, i + 1);
            kept++;
            want_src += a;
            want_tgt += b;
        } else {
            kept++;
        }
        free(x);
        free(y);
    }
    CHECK(mismatch == 0, "%ld examples differ from their lines", mismatch);
    CHECK(st.read == 307 && st.kept == kept && st.kept == tfm_corpus_size(c) &&
              st.skipped_empty == want_empty && st.skipped_long == want_long &&
              st.src_tokens == want_src && st.tgt_tokens == want_tgt,
          "stats: read %ld kept %ld/%ld empty %ld/%ld long %ld/%ld", st.read, st.kept, kept,
          st.skipped_empty, want_empty, st.skipped_long, want_long);
    CHECK(want_empty == 3 && want_long == 2, "the test's lines: %ld empty, %ld long", want_empty,
          want_long);
    {
        /* The last line: trimmed source, '\r' dropped from the target. */
        long last = tfm_corpus_size(c) - 1;
        CHECK(!strcmp(tfm_corpus_tgt_text(c, last, NULL), "der rote Hund") &&
                  !strcmp(tfm_corpus_src_text(c, last, NULL), "  the red dog  ") &&
                  tfm_corpus_line(c, last) == 307,
              "last example: '%s' / '%s'", tfm_corpus_src_text(c, last, NULL),
              tfm_corpus_tgt_text(c, last, NULL));
    }
    CHECK(st.batches == tfm_corpus_n_batches(c) && st.batches > 10, "%ld batches", st.batches);

    tfm_corpus_batch_buf buf, buf2;
    CHECK(tfm_corpus_batch_buf_init(&buf, c) == TFM_OK, "buf: %s", tfm_last_error());
    CHECK(tfm_corpus_batch_buf_init(&buf2, c) == TFM_OK, "buf: %s", tfm_last_error());
    for (long e = -1; e < 3; e++) check_epoch(c, &buf, e);

    /* The sorted order is sorted, and lengths never decrease along it. */
    {
        long prev_s = -1, prev_t = -1, unsorted = 0;
        for (long k = 0; k < tfm_corpus_n_batches(c); k++) {
            tfm_corpus_batch(c, -1, k, &buf);
            for (int rr = 0; rr < buf.batch.B; rr++) {
                int a, b;
                tfm_corpus_src(c, buf.rows[rr], &a);
                tfm_corpus_tgt(c, buf.rows[rr], &b);
                unsorted += a < prev_s || (a == prev_s && b < prev_t);
                prev_s = a;
                prev_t = b;
            }
        }
        CHECK(unsorted == 0, "epoch -1 is not in (source, target) length order: %ld", unsorted);
    }

    /* Orders: per (seed, epoch); resuming from any (epoch, index). */
    long nb = tfm_corpus_n_batches(c);
    long *o0 = malloc(nb * sizeof *o0), *o1 = malloc(nb * sizeof *o1),
         *o0b = malloc(nb * sizeof *o0b), *os = malloc(nb * sizeof *os);
    uint64_t *h = malloc(3 * nb * sizeof *h);
    epoch_order(c, &buf, 0, o0);
    epoch_order(c, &buf, 1, o1);
    epoch_order(c, &buf2, 0, o0b);
    epoch_order(c, &buf, -1, os);
    CHECK(!memcmp(o0, o0b, nb * sizeof *o0), "epoch 0 differs between two buffers");
    CHECK(memcmp(o0, o1, nb * sizeof *o0) != 0, "epochs 0 and 1 have the same order");
    CHECK(memcmp(o0, os, nb * sizeof *o0) != 0, "epoch 0 is not shuffled");
    for (long e = 0; e < 3; e++)
        for (long k = 0; k < nb; k++) {
            tfm_corpus_batch(c, e, k, &buf);
            h[e * nb + k] = batch_hash(&buf);
        }
    {
        /* The same batches asked in a scrambled order, with a fresh buffer. */
        tfm_corpus_batch_buf_free(&buf2);
        CHECK(tfm_corpus_batch_buf_init(&buf2, c) == TFM_OK, "buf: %s", tfm_last_error());
        tfm_rng rr;
        tfm_rng_init(&rr, 99, 0);
        long diff = 0;
        for (int t = 0; t < 200; t++) {
            long e = (long)(tfm_rng_next(&rr) % 3), k = (long)(tfm_rng_next(&rr) % (uint64_t)nb);
            tfm_corpus_batch(c, e, k, &buf2);
            diff += batch_hash(&buf2) != h[e * nb + k];
        }
        CHECK(diff == 0, "resume: %ld of 200 batches differ from the sequential run", diff);
        /* The position after the last batch of an epoch is the next epoch's first. */
        tfm_corpus_pos pos = {1, nb - 1};
        pos = tfm_corpus_next(c, pos);
        CHECK(pos.epoch == 2 && pos.index == 0, "next: %ld %ld", pos.epoch, pos.index);
        pos = tfm_corpus_next(c, pos);
        CHECK(pos.epoch == 2 && pos.index == 1, "next: %ld %ld", pos.epoch, pos.index);
    }

    /* Another seed, another order; the same seed in a new corpus, the same. */
    {
        tfm_corpus *c2 = NULL, *c3 = NULL;
        tfm_corpus_params p2 = p;
        p2.seed = 43;
        CHECK(tfm_corpus_load(&p2, bpe, sp, tp, &c2, NULL) == TFM_OK, "%s", tfm_last_error());
        CHECK(tfm_corpus_load(&p, bpe, sp, tp, &c3, NULL) == TFM_OK, "%s", tfm_last_error());
        if (c2 && c3) {
            tfm_corpus_batch_buf b2, b3;
            tfm_corpus_batch_buf_init(&b2, c2);
            tfm_corpus_batch_buf_init(&b3, c3);
            epoch_order(c2, &b2, 0, o1);
            CHECK(memcmp(o0, o1, nb * sizeof *o0) != 0, "seeds 42 and 43 give the same order");
            long diff = 0;
            for (long k = 0; k < nb; k++) {
                tfm_corpus_batch(c3, 0, k, &b3);
                diff += batch_hash(&b3) != h[k];
            }
            CHECK(diff == 0, "reloading changed %ld batches of epoch 0", diff);
            tfm_corpus_batch_buf_free(&b2);
            tfm_corpus_batch_buf_free(&b3);
        }
        tfm_corpus_free(c2);
        tfm_corpus_free(c3);
    }

    /* max_sentences, and batches smaller than one pair (each pair alone). */
    {
        tfm_corpus_params p3 = p;
        p3.max_sentences = 3;
        p3.batch_tokens = 100000;
        tfm_corpus *c3 = NULL;
        CHECK(tfm_corpus_load(&p3, bpe, sp, tp, &c3, NULL) == TFM_OK, "%s", tfm_last_error());
        if (c3) {
            tfm_corpus_batch_buf b3;
            tfm_corpus_batch_buf_init(&b3, c3);
            CHECK(tfm_corpus_max_shape(c3).max_B == 3 &&
                      tfm_corpus_n_batches(c3) == (tfm_corpus_size(c3) + 2) / 3,
                  "max_sentences 3: max_B %d, %ld batches", tfm_corpus_max_shape(c3).max_B,
                  tfm_corpus_n_batches(c3));
            check_epoch(c3, &b3, 0);
            tfm_corpus_batch_buf_free(&b3);
            tfm_corpus_free(c3);
        }
        p3 = p;
        p3.batch_tokens = 5; /* below most pairs: each gets a batch of its own */
        CHECK(tfm_corpus_load(&p3, bpe, sp, tp, &c3, NULL) == TFM_OK, "%s", tfm_last_error());
        if (c3) {
            tfm_corpus_batch_buf b3;
            tfm_corpus_batch_buf_init(&b3, c3);
            long over = 0;
            for (long k = 0; k < tfm_corpus_n_batches(c3); k++) {
                tfm_corpus_batch(c3, -1, k, &b3);
                const tfm_batch *b = &b3.batch;
                over += (long)b->B * (b->S > b->T ? b->S : b->T) > 5;
            }
            CHECK(over > 0, "no over-size pair in the test");
            check_epoch(c3, &b3, 0);
            tfm_corpus_batch_buf_free(&b3);
            tfm_corpus_free(c3);
        }
    }

    free(o0);
    free(o1);
    free(o0b);
    free(os);
    free(h);
    tfm_corpus_batch_buf_free(&buf);
    tfm_corpus_batch_buf_free(&buf2);
    tfm_corpus_free(c);
    free_lines(sl, ns_lines);
    free_lines(tl, nt_lines);
    tfm_bpe_free(bpe);
    free(src.p);
    free(tgt.p);
}

static void test_lm(void) {
    str text = {0};
    tfm_rng r;
    tfm_rng_init(&r, 11, 0);
    for (int i = 0; i < 60; i++) {
        random_sentence(&text, &r, 1 + (int)(tfm_rng_next(&r) % 12));
        puts_(&text, i % 10 == 9 ? "\n\n" : "\n");
    }
    char path[128];
    snprintf(path, sizeof path, "%s/lm.txt", tmpdir);
    write_file(path, text.p, text.n);
    tfm_bpe_params bp;
    tfm_bpe_default_params(&bp);
    bp.vocab_size = 350;
    tfm_bpe *bpe = NULL;
    CHECK(tfm_bpe_learn_text(&bp, text.p, text.n, &bpe) == TFM_OK, "learn: %s", tfm_last_error());
    if (!bpe) return;
    int32_t *want = NULL;
    size_t nwant = 0;
    CHECK(tfm_bpe_encode(bpe, text.p, text.n, &want, &nwant) == TFM_OK, "%s", tfm_last_error());

    for (int max_len = 1; max_len <= 40; max_len += 13) {
        tfm_corpus_params p;
        tfm_corpus_default_params(&p);
        p.max_len = max_len;
        p.batch_tokens = 64;
        tfm_corpus *c = NULL;
        tfm_corpus_stats st;
        CHECK(tfm_corpus_load_lm(&p, bpe, path, &c, &st) == TFM_OK, "load_lm: %s",
              tfm_last_error());
        if (!c) continue;
        CHECK(tfm_corpus_is_lm(c) && st.read == 66 && st.tgt_tokens == (long)nwant &&
                  st.kept == tfm_corpus_size(c) && st.src_tokens == 0,
              "lm stats: read %ld tokens %ld (want %zu)", st.read, st.tgt_tokens, nwant);
        /* Blocks of max_len + 1 overlapping by one, covering the stream. */
        long bad = 0, n = tfm_corpus_size(c);
        CHECK(n == (long)((nwant - 2) / max_len + 1), "max_len %d: %ld blocks for %zu ids",
              max_len, n, nwant);
        for (long k = 0; k < n; k++) {
            int len, sl;
            const int32_t *y = tfm_corpus_tgt(c, k, &len);
            CHECK(tfm_corpus_src(c, k, &sl) == NULL && sl == 0, "lm source");
            long start = k * max_len;
            long want_len = (long)nwant - start < max_len + 1 ? (long)nwant - start : max_len + 1;
            bad += len != want_len || len < 2 || memcmp(y, want + start, len * sizeof *y);
        }
        CHECK(bad == 0, "max_len %d: %ld blocks differ from the stream", max_len, bad);
        /* Each id but the first is a target exactly once per epoch. */
        tfm_corpus_batch_buf buf;
        CHECK(tfm_corpus_batch_buf_init(&buf, c) == TFM_OK, "%s", tfm_last_error());
        CHECK(tfm_corpus_max_shape(c).max_T == max_len && tfm_corpus_max_shape(c).max_S == 0,
              "lm shape T %d", tfm_corpus_max_shape(c).max_T);
        check_epoch(c, &buf, -1);
        check_epoch(c, &buf, 0);
        long targets = 0;
        for (long k = 0; k < tfm_corpus_n_batches(c); k++) {
            tfm_corpus_batch(c, 3, k, &buf);
            targets += buf.n_tgt_tokens;
        }
        CHECK(targets == (long)nwant - 1, "lm: %ld targets per epoch, want %zu", targets,
              nwant - 1);
        tfm_corpus_batch_buf_free(&buf);
        tfm_corpus_free(c);
    }
    free(want);
    tfm_bpe_free(bpe);
    free(text.p);
}

/* Multi30k and Tiny Shakespeare, when present. */
static void test_real(void) {
    const char *shared = tfm_test_env("TFM_SHARED_DIR", "../shared");
    char de[512], en[512], vde[512], ven[512], ts[512];
    snprintf(de, sizeof de, "%s/data/multi30k/train.de", shared);
    snprintf(en, sizeof en, "%s/data/multi30k/train.en", shared);
    snprintf(vde, sizeof vde, "%s/data/multi30k/val.de", shared);
    snprintf(ven, sizeof ven, "%s/data/multi30k/val.en", shared);
    snprintf(ts, sizeof ts, "%s/data/tinyshakespeare/input.txt", shared);
    if (access(de, R_OK) || access(en, R_OK)) {
        printf("SKIP Multi30k: %s or %s is missing (set TFM_SHARED_DIR)\n", de, en);
    } else {
        tfm_bpe_params bp;
        tfm_bpe_default_params(&bp);
        bp.vocab_size = 8000;
        tfm_bpe *bpe = NULL;
        const char *files[2] = {de, en};
        double t0 = now();
        CHECK(tfm_bpe_learn(&bp, files, 2, &bpe) == TFM_OK, "learn: %s", tfm_last_error());
        double t1 = now();
        printf("Multi30k: BPE learned (vocab %d) in %.2f s\n", bpe ? tfm_bpe_vocab_size(bpe) : 0,
               t1 - t0);
        if (bpe) {
            tfm_corpus_params p;
            tfm_corpus_default_params(&p);
            p.batch_tokens = 4096;
            tfm_corpus *c = NULL, *v = NULL;
            tfm_corpus_stats st, vst;
            t0 = now();
            CHECK(tfm_corpus_load(&p, bpe, de, en, &c, &st) == TFM_OK, "load: %s",
                  tfm_last_error());
            t1 = now();
            if (c) {
                tfm_corpus_shape sh = tfm_corpus_max_shape(c);
                printf("Multi30k train.de/en: read %ld kept %ld skipped empty %ld long %ld; "
                       "tokens de %ld en %ld; %ld batches at batch_tokens 4096 (largest B %d, "
                       "S %d, T %d); loaded in %.3f s\n",
                       st.read, st.kept, st.skipped_empty, st.skipped_long, st.src_tokens,
                       st.tgt_tokens, st.batches, sh.max_B, sh.max_S, sh.max_T, t1 - t0);
                CHECK(st.read == 29000 && st.kept + st.skipped_empty + st.skipped_long == 29000,
                      "Multi30k counts");
                CHECK(t1 - t0 < 5.0, "Multi30k took %.2f s to load", t1 - t0);
                tfm_corpus_batch_buf buf;
                CHECK(tfm_corpus_batch_buf_init(&buf, c) == TFM_OK, "%s", tfm_last_error());
                double t2 = now();
                check_epoch(c, &buf, 0);
                printf("Multi30k: one epoch of batches filled and checked in %.3f s\n",
                       now() - t2);
                tfm_corpus_batch_buf_free(&buf);
            }
            if (!access(vde, R_OK) &&
                tfm_corpus_load(&p, bpe, vde, ven, &v, &vst) == TFM_OK) {
                printf("Multi30k val: read %ld kept %ld, %ld batches\n", vst.read, vst.kept,
                       vst.batches);
                CHECK(vst.kept == 1014, "val kept %ld", vst.kept);
            }
            tfm_corpus_free(c);
            tfm_corpus_free(v);
        }
        tfm_bpe_free(bpe);
    }
    if (access(ts, R_OK)) {
        printf("SKIP Tiny Shakespeare: %s is missing\n", ts);
    } else {
        tfm_bpe_params bp;
        tfm_bpe_default_params(&bp);
        bp.vocab_size = 2000;
        tfm_bpe *bpe = NULL;
        const char *files[1] = {ts};
        CHECK(tfm_bpe_learn(&bp, files, 1, &bpe) == TFM_OK, "learn: %s", tfm_last_error());
        if (bpe) {
            tfm_corpus_params p;
            tfm_corpus_default_params(&p);
            p.max_len = 256;
            p.batch_tokens = 16384;
            tfm_corpus *c = NULL;
            tfm_corpus_stats st;
            double t0 = now();
            CHECK(tfm_corpus_load_lm(&p, bpe, ts, &c, &st) == TFM_OK, "load_lm: %s",
                  tfm_last_error());
            double t1 = now();
            if (c)
                printf("Tiny Shakespeare (BPE 2000): %ld lines, %ld tokens, %ld blocks of 257, "
                       "%ld batches at 16384 tokens; loaded in %.3f s\n",
                       st.read, st.tgt_tokens, st.kept, st.batches, t1 - t0);
            tfm_corpus_free(c);
        }
        tfm_bpe_free(bpe);
    }
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tfm_corpus_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_parallel();
    test_lm();
    test_real();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return tfm_test_finish();
}
