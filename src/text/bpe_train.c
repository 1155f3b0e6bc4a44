/*
 * bpe_train.c: learning a BPE vocabulary from text (tfm_bpe_learn).
 *
 * 1. Count words. Every line is pre-tokenized exactly as the encoder of the
 *    model's version does (tfm_bpe_pretokenize: at whitespace, and in v2 at
 *    changes of character class too), and each distinct word is kept once with
 *    its count. Merges never cross words, so they never cross those
 *    boundaries either.
 * 2. Choose the characters: '▁' always, then the most frequent characters until
 *    they cover params->char_coverage of all characters. The rest, U+0000 and
 *    a literal U+2581 become barriers that no pair crosses (the encoder spells
 *    them as byte tokens).
 * 3. Merge. Pair counts (weighted by word counts) live in a hash table, each
 *    pair with the list of words it occurs in; a max-heap orders the pairs by
 *    count. Merging the best pair visits only the words on its list and
 *    applies count deltas to the neighbouring pairs, so the work per merge is
 *    proportional to the pair's occurrences, not to the corpus. The heap is
 *    lazy: an entry whose count is out of date is re-pushed with the current
 *    count when it reaches the top (counts only fall, except for pairs touched
 *    by the merge, which are pushed afresh).
 *
 * Ties: the higher count wins, then the lower left id, then the lower right id,
 * so the result depends only on the text and the parameters. When a merge
 * makes a string that is already a piece (ab+c after a+bc), the existing id is
 * reused, as HuggingFace tokenizers does. A pair whose string would read as a
 * reserved piece ("<s>", "<0x41>") is never merged.
 *
 * What it does not do: sample or limit the input (all of it is read into the
 * word table), or learn anything but plain BPE (no unigram LM, no dropout).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "core/status.h"
#include "core/u64map.h"
#include "core/utf8.h"
#include "text/bpe.h"

#define MAX_VOCAB (1 << 24)


/* Grows *arr (of elements of `size` bytes) to hold at least `need`. */
static tfm_status grow(void **arr, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return TFM_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *p = realloc(*arr, c * size);
    if (!p) return tfm_error(TFM_ERR_NOMEM, "bpe learn: out of memory");
    *arr = p;
    *cap = c;
    return TFM_OK;
}
#define GROW(arr, cap, need) grow((void **)&(arr), &(cap), (need), sizeof *(arr))

/* ----------------------------------------------------------- word counts */

typedef struct pair {
    int32_t a, b;       /* left and right symbol ids */
    int64_t count;      /* occurrences, weighted by word counts */
    int32_t *words;     /* words it occurs (or once occurred) in; may repeat */
    size_t nwords, cap;
    uint32_t stamp;     /* merge step that last pushed it on `touched` */
    int forbidden;      /* never merged (reserved string, or merged already) */
} pair;

typedef struct heap_ent {
    int64_t count;
    int32_t pair;
} heap_ent;

typedef struct trainer {
    tfm_bpe_params p;

    /* distinct words: code points (then symbol ids) in one pool */
    uint32_t *cps;
    size_t ncps, cps_cap;
    size_t *woff;
    uint32_t *wlen;
    int64_t *wcount;
    uint64_t *whash;
    size_t nwords, wcap;
    int32_t *wslots;            /* open addressing over word indices, -1 empty */
    size_t wslots_cap;
    int64_t total_words;

    /* one line at a time */
    uint32_t *lcps, *lstarts;
    size_t lcps_cap, lstarts_cap;

    /* merging */
    int32_t *sym;               /* [ncps] symbol ids, word w at woff[w], wlen[w] long */
    pair *pairs;
    size_t npairs, pairs_cap;
    tfm_u64map pair_map;            /* (a << 32 | b) -> index in pairs */
    heap_ent *heap;
    size_t nheap, heap_cap;
    int32_t *touched;
    size_t ntouched, touched_cap;
    uint32_t step;
} trainer;

static void trainer_free(trainer *t) {
    free(t->cps);
    free(t->woff);
    free(t->wlen);
    free(t->wcount);
    free(t->whash);
    free(t->wslots);
    free(t->lcps);
    free(t->lstarts);
    free(t->sym);
    for (size_t i = 0; i < t->npairs; i++) free(t->pairs[i].words);
    free(t->pairs);
    tfm_u64map_free(&t->pair_map);
    free(t->heap);
    free(t->touched);
}

static uint64_t hash_cps(const uint32_t *c, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ n;
    for (size_t i = 0; i < n; i++) h = tfm_mix64(h ^ c[i]) + i;
    return h;
}

static tfm_status word_slots_grow(trainer *t) {
    size_t cap = t->wslots_cap ? t->wslots_cap * 2 : 1 << 14;
    int32_t *slots = malloc(cap * sizeof *slots);
    if (!slots) return tfm_error(TFM_ERR_NOMEM, "bpe learn: out of memory");
    memset(slots, 0xFF, cap * sizeof *slots);
    for (size_t w = 0; w < t->nwords; w++) {
        size_t i = (size_t)t->whash[w] & (cap - 1);
        while (slots[i] >= 0) i = (i + 1) & (cap - 1);
        slots[i] = (int32_t)w;
    }
    free(t->wslots);
    t->wslots = slots;
    t->wslots_cap = cap;
    return TFM_OK;
}

static tfm_status count_word(trainer *t, const uint32_t *c, size_t n) {
    if ((t->nwords + 1) * 2 > t->wslots_cap) TFM_TRY(word_slots_grow(t));
    uint64_t h = hash_cps(c, n);
    size_t mask = t->wslots_cap - 1, i = (size_t)h & mask;
    for (;;) {
        int32_t w = t->wslots[i];
        if (w < 0) break;
        if (t->whash[w] == h && t->wlen[w] == n && !memcmp(t->cps + t->woff[w], c, n * sizeof *c)) {
            t->wcount[w]++;
            t->total_words++;
            return TFM_OK;
        }
        i = (i + 1) & mask;
    }
    if (t->nwords >= INT32_MAX - 1 || t->ncps + n >= INT32_MAX)
        return tfm_error(TFM_ERR_INVALID, "bpe learn: more than 2^31 distinct word characters");
    if (t->nwords == t->wcap) {
        size_t cap = t->wcap ? t->wcap * 2 : 1 << 13;
        size_t *woff = realloc(t->woff, cap * sizeof *woff);
        if (woff) t->woff = woff;
        uint32_t *wlen = realloc(t->wlen, cap * sizeof *wlen);
        if (wlen) t->wlen = wlen;
        int64_t *wcount = realloc(t->wcount, cap * sizeof *wcount);
        if (wcount) t->wcount = wcount;
        uint64_t *whash = realloc(t->whash, cap * sizeof *whash);
        if (whash) t->whash = whash;
        if (!woff || !wlen || !wcount || !whash)
            return tfm_error(TFM_ERR_NOMEM, "bpe learn: out of memory");
        t->wcap = cap;
    }
    TFM_TRY(GROW(t->cps, t->cps_cap, t->ncps + n));
    size_t w = t->nwords++;
    memcpy(t->cps + t->ncps, c, n * sizeof *c);
    t->woff[w] = t->ncps;
    t->wlen[w] = (uint32_t)n;
    t->wcount[w] = 1;
    t->whash[w] = h;
    t->ncps += n;
    t->wslots[i] = (int32_t)w;
    t->total_words++;
    return TFM_OK;
}

/* Counts the words of one line; `origin` and `lineno` name it in errors. */
static tfm_status count_line(trainer *t, const char *s, size_t len, const char *origin,
                             size_t lineno) {
    if (!len) return TFM_OK;
    if (len > (size_t)INT32_MAX - 4)
        return tfm_error(TFM_ERR_INVALID, "%s:%zu: line longer than 2 GB", origin, lineno);
    TFM_TRY(GROW(t->lcps, t->lcps_cap, len + 1));
    TFM_TRY(GROW(t->lstarts, t->lstarts_cap, len + 2));
    size_t bad = 0;
    size_t nw = tfm_bpe_pretokenize(s, len, t->p.version, t->lcps, t->lstarts, &bad);
    if (nw == (size_t)-1)
        return tfm_error(TFM_ERR_FORMAT, "%s:%zu: invalid UTF-8 at byte %zu of the line", origin,
                         lineno, bad + 1);
    for (size_t k = 0; k < nw; k++)
        TFM_TRY(count_word(t, t->lcps + t->lstarts[k], t->lstarts[k + 1] - t->lstarts[k]));
    return TFM_OK;
}

/* ------------------------------------------------------------ characters */

typedef struct char_count {
    uint32_t cp;
    int64_t count;
} char_count;

static int by_count_then_cp(const void *x, const void *y) {
    const char_count *a = x, *b = y;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    return a->cp < b->cp ? -1 : a->cp > b->cp;
}

/* Adds the kept characters to the model and turns t->cps into symbol ids in
 * t->sym (-1 for a barrier). */
static tfm_status choose_chars(trainer *t, tfm_bpe *model, int32_t *nkept, int32_t *nseen) {
    tfm_u64map index = {0};
    char_count *counts = NULL;
    size_t ncounts = 0, counts_cap = 0;
    int64_t meta = 0, total = 0;
    tfm_status st = TFM_OK;
    for (size_t w = 0; w < t->nwords && st == TFM_OK; w++) {
        const uint32_t *c = t->cps + t->woff[w];
        int64_t f = t->wcount[w];
        for (uint32_t i = 0; i < t->wlen[w] && st == TFM_OK; i++) {
            total += f;
            if (c[i] == TFM_BPE_META_CP) {
                meta += f;
                continue;
            }
            if (c[i] == 0 || c[i] == 0x2581) continue; /* always bytes */
            int32_t k = tfm_u64map_get(&index, c[i]);
            if (k < 0) {
                st = GROW(counts, counts_cap, ncounts + 1);
                if (st == TFM_OK) st = tfm_u64map_put(&index, c[i], (int32_t)ncounts);
                if (st != TFM_OK) break;
                counts[ncounts++] = (char_count){c[i], 0};
                k = (int32_t)ncounts - 1;
            }
            counts[k].count += f;
        }
    }
    tfm_u64map_free(&index);
    if (st != TFM_OK) {
        free(counts);
        return st;
    }
    if (ncounts) qsort(counts, ncounts, sizeof *counts, by_count_then_cp);
    int32_t id;
    st = tfm_bpe_build_char(model, 0x2581, &id);
    int64_t room = (int64_t)t->p.vocab_size - TFM_BPE_FIRST_PIECE - 1;
    double covered = (double)meta, want = t->p.char_coverage * (double)total;
    size_t kept = 0;
    for (; kept < ncounts && room > 0 && covered < want && st == TFM_OK; kept++, room--) {
        st = tfm_bpe_build_char(model, counts[kept].cp, &id);
        covered += (double)counts[kept].count;
    }
    *nkept = (int32_t)kept + 1;
    *nseen = (int32_t)ncounts + (meta > 0);
    free(counts);
    TFM_TRY(st);

    t->sym = malloc((t->ncps ? t->ncps : 1) * sizeof *t->sym);
    if (!t->sym) return tfm_error(TFM_ERR_NOMEM, "bpe learn: out of memory");
    for (size_t i = 0; i < t->ncps; i++) {
        uint32_t cp = t->cps[i];
        if (cp == TFM_BPE_META_CP) cp = 0x2581;
        else if (cp == 0x2581 || cp == 0) {
            t->sym[i] = -1;
            continue;
        }
        char buf[4];
        int k = tfm_utf8_encode(cp, buf);
        t->sym[i] = tfm_bpe_piece_id(model, buf, (size_t)k);
    }
    free(t->cps);
    t->cps = NULL;
    return TFM_OK;
}

/* ------------------------------------------------------------- the heap */

static inline int heap_before(const trainer *t, heap_ent x, heap_ent y) {
    if (x.count != y.count) return x.count > y.count;
    const pair *a = &t->pairs[x.pair], *b = &t->pairs[y.pair];
    return a->a < b->a || (a->a == b->a && a->b < b->b);
}

static tfm_status heap_push(trainer *t, heap_ent e) {
    TFM_TRY(GROW(t->heap, t->heap_cap, t->nheap + 1));
    size_t i = t->nheap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_before(t, e, t->heap[parent])) break;
        t->heap[i] = t->heap[parent];
        i = parent;
    }
    t->heap[i] = e;
    return TFM_OK;
}

static heap_ent heap_pop(trainer *t) {
    heap_ent top = t->heap[0], last = t->heap[--t->nheap];
    size_t i = 0, n = t->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_before(t, t->heap[c + 1], t->heap[c])) c++;
        if (!heap_before(t, t->heap[c], last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (n) t->heap[i] = last;
    return top;
}

/* ------------------------------------------------------------ pair counts */

/* Adds delta to the count of pair (a, b); a positive delta records word w on
 * the pair's list and marks the pair for re-pushing after this merge. */
static tfm_status pair_add(trainer *t, int32_t a, int32_t b, int64_t delta, int32_t w) {
    if (a < 0 || b < 0) return TFM_OK; /* a barrier */
    uint64_t key = (uint64_t)a << 32 | (uint32_t)b;
    int32_t k = tfm_u64map_get(&t->pair_map, key);
    if (k < 0) {
        TFM_ASSERT(delta > 0);
        TFM_TRY(GROW(t->pairs, t->pairs_cap, t->npairs + 1));
        TFM_TRY(tfm_u64map_put(&t->pair_map, key, (int32_t)t->npairs));
        k = (int32_t)t->npairs++;
        t->pairs[k] = (pair){.a = a, .b = b};
    }
    pair *p = &t->pairs[k];
    p->count += delta;
    TFM_ASSERT(p->count >= 0);
    if (delta > 0) {
        if (!p->nwords || p->words[p->nwords - 1] != w) {
            TFM_TRY(GROW(p->words, p->cap, p->nwords + 1));
            p->words[p->nwords++] = w;
        }
        if (p->stamp != t->step) {
            p->stamp = t->step;
            TFM_TRY(GROW(t->touched, t->touched_cap, t->ntouched + 1));
            t->touched[t->ntouched++] = k;
        }
    }
    return TFM_OK;
}

/* Replaces every (a, b) in word w, left to right, by x, updating the counts
 * of the neighbouring pairs as it goes. */
static tfm_status merge_word(trainer *t, int32_t w, int32_t a, int32_t b, int32_t x) {
    int32_t *s = t->sym + t->woff[w];
    uint32_t n = t->wlen[w], k = 0;
    int64_t f = t->wcount[w];
    for (uint32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            TFM_TRY(pair_add(t, a, b, -f, w));
            if (k > 0) {
                TFM_TRY(pair_add(t, s[k - 1], a, -f, w));
                TFM_TRY(pair_add(t, s[k - 1], x, f, w));
            }
            if (i + 2 < n) {
                TFM_TRY(pair_add(t, b, s[i + 2], -f, w));
                TFM_TRY(pair_add(t, x, s[i + 2], f, w));
            }
            s[k++] = x;
            i += 2;
        } else {
            s[k++] = s[i++];
        }
    }
    t->wlen[w] = k;
    return TFM_OK;
}

/* ---------------------------------------------------------------- learning */

static tfm_status learn_merges(trainer *t, tfm_bpe *model) {
    t->step = 1;
    for (size_t w = 0; w < t->nwords; w++) {
        const int32_t *s = t->sym + t->woff[w];
        for (uint32_t i = 0; i + 1 < t->wlen[w]; i++)
            TFM_TRY(pair_add(t, s[i], s[i + 1], t->wcount[w], (int32_t)w));
    }
    t->ntouched = 0;
    for (size_t k = 0; k < t->npairs; k++)
        TFM_TRY(heap_push(t, (heap_ent){t->pairs[k].count, (int32_t)k}));

    while (tfm_bpe_vocab_size(model) < t->p.vocab_size) {
        int32_t best = -1;
        while (t->nheap) {
            heap_ent e = heap_pop(t);
            pair *p = &t->pairs[e.pair];
            if (p->forbidden || p->count <= 0) continue;
            if (p->count != e.count) {
                TFM_TRY(heap_push(t, (heap_ent){p->count, e.pair}));
                continue;
            }
            best = e.pair;
            break;
        }
        if (best < 0 || t->pairs[best].count < t->p.min_frequency) break;
        int32_t a = t->pairs[best].a, b = t->pairs[best].b, x;
        tfm_status st = tfm_bpe_build_merge(model, a, b, &x);
        if (st == TFM_ERR_INVALID) {
            /* A reserved-looking string, or a pair merged before that came
             * back through a reused id: leave it unmerged. */
            t->pairs[best].forbidden = 1;
            continue;
        }
        TFM_TRY(st);
        t->step++;
        /* Detach the word list: merging never adds (a, b) back, but it may
         * grow t->pairs, which would move it. */
        int32_t *words = t->pairs[best].words;
        size_t nwords = t->pairs[best].nwords;
        t->pairs[best].words = NULL;
        t->pairs[best].nwords = t->pairs[best].cap = 0;
        for (size_t i = 0; i < nwords && st == TFM_OK; i++)
            st = merge_word(t, words[i], a, b, x);
        free(words);
        TFM_TRY(st);
        TFM_ASSERT(t->pairs[best].count == 0);
        for (size_t i = 0; i < t->ntouched; i++) {
            const pair *p = &t->pairs[t->touched[i]];
            if (p->count > 0 && !p->forbidden)
                TFM_TRY(heap_push(t, (heap_ent){p->count, t->touched[i]}));
        }
        t->ntouched = 0;
    }
    return TFM_OK;
}

void tfm_bpe_default_params(tfm_bpe_params *p) {
    p->vocab_size = 8000;
    p->min_frequency = 2;
    p->char_coverage = 0.9999;
    p->verbose = 0;
    p->version = TFM_BPE_VERSION_MAX;
}

static tfm_status check_params(const tfm_bpe_params *p) {
    if (p->vocab_size <= TFM_BPE_FIRST_PIECE || p->vocab_size > MAX_VOCAB)
        return tfm_error(TFM_ERR_INVALID,
                         "bpe learn: vocab_size %d: must be in [%d, %d] (%d ids are reserved "
                         "for <pad> <s> </s> <unk> and the 256 bytes)",
                         p->vocab_size, TFM_BPE_FIRST_PIECE + 1, MAX_VOCAB, TFM_BPE_FIRST_PIECE);
    if (p->min_frequency < 1)
        return tfm_error(TFM_ERR_INVALID, "bpe learn: min_frequency %d: must be at least 1",
                         p->min_frequency);
    if (p->version < TFM_BPE_VERSION_MIN || p->version > TFM_BPE_VERSION_MAX)
        return tfm_error(TFM_ERR_INVALID, "bpe learn: version %d: must be in [%d, %d]",
                         p->version, TFM_BPE_VERSION_MIN, TFM_BPE_VERSION_MAX);
    if (!(p->char_coverage > 0 && p->char_coverage <= 1))
        return tfm_error(TFM_ERR_INVALID, "bpe learn: char_coverage %g: must be in (0, 1]",
                         p->char_coverage);
    return TFM_OK;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Steps 2 and 3, once the words are counted. */
static tfm_status learn_counted(trainer *t, double t0, tfm_bpe **out) {
    tfm_bpe *model;
    TFM_TRY(tfm_bpe_build_new(t->p.version, &model));
    int32_t kept = 0, seen = 0;
    tfm_status st = choose_chars(t, model, &kept, &seen);
    if (st == TFM_OK && t->p.verbose)
        fprintf(stderr,
                "bpe learn: %lld words, %zu distinct; %d of %d distinct characters kept "
                "(%.2f s)\n",
                (long long)t->total_words, t->nwords, kept, seen, now_s() - t0);
    if (st == TFM_OK) st = learn_merges(t, model);
    if (st != TFM_OK) {
        tfm_bpe_free(model);
        return st;
    }
    if (t->p.verbose)
        fprintf(stderr, "bpe learn: %d merges, vocabulary %d (%.2f s)\n",
                tfm_bpe_num_merges(model), tfm_bpe_vocab_size(model), now_s() - t0);
    *out = model;
    return TFM_OK;
}

tfm_status tfm_bpe_learn(const tfm_bpe_params *params, const char *const *files, size_t nfiles,
                         tfm_bpe **out) {
    *out = NULL;
    TFM_TRY(check_params(params));
    double t0 = now_s();
    trainer t = {.p = *params};
    tfm_status st = TFM_OK;
    char *line = NULL;
    size_t line_cap = 0;
    for (size_t i = 0; i < nfiles && st == TFM_OK; i++) {
        FILE *f = fopen(files[i], "rb");
        if (!f) {
            st = tfm_error(TFM_ERR_IO, "%s: cannot open: %s", files[i], strerror(errno));
            break;
        }
        size_t lineno = 0;
        ssize_t k;
        while (st == TFM_OK && (k = getline(&line, &line_cap, f)) >= 0) {
            lineno++;
            size_t len = (size_t)k;
            if (len && line[len - 1] == '\n') len--;
            st = count_line(&t, line, len, files[i], lineno);
        }
        if (st == TFM_OK && ferror(f))
            st = tfm_error(TFM_ERR_IO, "%s: read error: %s", files[i], strerror(errno));
        fclose(f);
    }
    free(line);
    if (st == TFM_OK) st = learn_counted(&t, t0, out);
    trainer_free(&t);
    return st;
}

tfm_status tfm_bpe_learn_text(const tfm_bpe_params *params, const char *text, size_t len,
                              tfm_bpe **out) {
    *out = NULL;
    TFM_TRY(check_params(params));
    double t0 = now_s();
    trainer t = {.p = *params};
    tfm_status st = TFM_OK;
    size_t lineno = 0;
    for (const char *p = text, *end = text + len; p < end && st == TFM_OK;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        st = count_line(&t, p, (size_t)(e - p), "<text>", ++lineno);
        p = nl ? nl + 1 : end;
    }
    if (st == TFM_OK) st = learn_counted(&t, t0, out);
    trainer_free(&t);
    return st;
}
