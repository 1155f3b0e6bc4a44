/*
 * bpe.c: the BPE model: building, loading and saving, encoding, decoding.
 *
 * Encoding follows SentencePiece's bpe_model.cc: a word's symbols form a
 * linked list, every adjacent pair that has a merge goes into a min-heap keyed
 * by (merge rank, position), and the lowest-ranked pair is merged until none
 * is left. That is O(n log n) per word, against O(n^2) for rescanning.
 * Encoding allocates its scratch per call (on the stack for short texts), so
 * one model serves any number of threads.
 * Words come from tfm_bpe_pretokenize, which the trainer shares, so learning
 * and encoding split text alike: at whitespace (v1), and also at changes of
 * character class (v2, tfm_bpe_char_class). The model remembers its version.
 *
 * What it does not do: learn (bpe_train.c), normalise text (NFKC, case,
 * collapsing spaces: the text is kept byte for byte), or add <s> / </s>.
 */
#include "text/bpe.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/rng.h"
#include "core/atomic_file.h"
#include "core/status.h"
#include "core/u64map.h"
#include "core/utf8.h"
#include "text/unicode_tables.h"

/* Code points below this are looked up in a direct table, the rest hashed. */
#define CHAR_DIRECT 0x3000
/* A model file larger than this is not one of ours (an 8k vocabulary is ~100 kB). */
#define MAX_MODEL_BYTES (1u << 30)
/* Largest vocabulary a model file may declare. */
#define MAX_VOCAB (1 << 24)
/* Texts up to this many bytes encode with scratch on the stack. */
#define STACK_BYTES 256


/* ------------------------------------------------------------------ model */

struct tfm_bpe {
    int version;             /* pre-tokenization: TFM_BPE_VERSION_MIN..MAX */
    int32_t n, cap;          /* ids in use and allocated */
    size_t *piece_off;       /* [cap] the text-form piece, NUL-terminated in pool */
    size_t *surf_off;        /* [cap] the decoded bytes ('▁' as a space) in pool */
    uint32_t *piece_len;     /* [cap] */
    uint32_t *surf_len;      /* [cap] */
    char *pool;
    size_t pool_len, pool_cap;

    uint32_t *chars;         /* [nchars] code point of id TFM_BPE_FIRST_PIECE + i */
    int32_t nchars, chars_cap;
    int32_t meta_id;         /* the '▁' character, -1 until added */
    int32_t char_direct[CHAR_DIRECT]; /* code point -> id, -1 when absent */
    tfm_u64map char_map;         /* code points >= CHAR_DIRECT -> id */

    int32_t *merges;         /* [3 * nmerges]: left, right, result, by rank */
    int32_t nmerges, merges_cap;
    tfm_u64map merge_map;        /* (left << 32 | right) -> rank */

    int32_t *slots;          /* [slots_cap] open addressing over normal piece ids, -1 empty */
    size_t slots_cap;
};

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return tfm_mix64(h);
}

static const char *piece_str(const tfm_bpe *b, int32_t id) { return b->pool + b->piece_off[id]; }

/* Looks up a normal (character or merged) piece by its string; -1 if absent. */
static int32_t slots_find(const tfm_bpe *b, const char *s, size_t len) {
    if (!b->slots_cap) return -1;
    size_t mask = b->slots_cap - 1, i = (size_t)hash_bytes(s, len) & mask;
    for (;;) {
        int32_t id = b->slots[i];
        if (id < 0) return -1;
        if (b->piece_len[id] == len && !memcmp(piece_str(b, id), s, len)) return id;
        i = (i + 1) & mask;
    }
}

static void slots_place(int32_t *slots, size_t cap, const tfm_bpe *b, int32_t id) {
    size_t mask = cap - 1, i = (size_t)hash_bytes(piece_str(b, id), b->piece_len[id]) & mask;
    while (slots[i] >= 0) i = (i + 1) & mask;
    slots[i] = id;
}

static tfm_status slots_insert(tfm_bpe *b, int32_t id) {
    size_t used = (size_t)(b->n - TFM_BPE_FIRST_PIECE);
    if ((used + 1) * 2 > b->slots_cap) {
        size_t cap = b->slots_cap ? b->slots_cap * 2 : 256;
        int32_t *slots = malloc(cap * sizeof *slots);
        if (!slots) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
        memset(slots, 0xFF, cap * sizeof *slots);
        for (size_t j = 0; j < b->slots_cap; j++)
            if (b->slots[j] >= 0) slots_place(slots, cap, b, b->slots[j]);
        free(b->slots);
        b->slots = slots;
        b->slots_cap = cap;
    }
    slots_place(b->slots, b->slots_cap, b, id);
    return TFM_OK;
}

static tfm_status pool_append(tfm_bpe *b, const char *s, size_t len, size_t *off) {
    if (b->pool_len + len + 1 > b->pool_cap) {
        size_t cap = b->pool_cap ? b->pool_cap * 2 : 8192;
        while (cap < b->pool_len + len + 1) cap *= 2;
        char *p = realloc(b->pool, cap);
        if (!p) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
        b->pool = p;
        b->pool_cap = cap;
    }
    *off = b->pool_len;
    if (len) memcpy(b->pool + b->pool_len, s, len);
    b->pool[b->pool_len + len] = '\0';
    b->pool_len += len + 1;
    return TFM_OK;
}

/* Appends an id with its text-form piece and its decoded bytes. */
static tfm_status add_id(tfm_bpe *b, const char *piece, size_t plen, const char *surf,
                         size_t slen, int32_t *id) {
    if (b->n >= MAX_VOCAB)
        return tfm_error(TFM_ERR_INVALID, "bpe: more than %d pieces", MAX_VOCAB);
    if (b->n == b->cap) {
        int32_t cap = b->cap ? b->cap * 2 : 1024;
        size_t *po = realloc(b->piece_off, (size_t)cap * sizeof *po);
        if (po) b->piece_off = po;
        size_t *so = realloc(b->surf_off, (size_t)cap * sizeof *so);
        if (so) b->surf_off = so;
        uint32_t *pl = realloc(b->piece_len, (size_t)cap * sizeof *pl);
        if (pl) b->piece_len = pl;
        uint32_t *sl = realloc(b->surf_len, (size_t)cap * sizeof *sl);
        if (sl) b->surf_len = sl;
        if (!po || !so || !pl || !sl) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
        b->cap = cap;
    }
    int32_t i = b->n;
    TFM_TRY(pool_append(b, piece, plen, &b->piece_off[i]));
    TFM_TRY(pool_append(b, surf, slen, &b->surf_off[i]));
    b->piece_len[i] = (uint32_t)plen;
    b->surf_len[i] = (uint32_t)slen;
    b->n++;
    *id = i;
    return TFM_OK;
}

void tfm_bpe_free(tfm_bpe *b) {
    if (!b) return;
    free(b->piece_off);
    free(b->surf_off);
    free(b->piece_len);
    free(b->surf_len);
    free(b->pool);
    free(b->chars);
    tfm_u64map_free(&b->char_map);
    free(b->merges);
    tfm_u64map_free(&b->merge_map);
    free(b->slots);
    free(b);
}

tfm_status tfm_bpe_build_new(int version, tfm_bpe **out) {
    TFM_ASSERT(version >= TFM_BPE_VERSION_MIN && version <= TFM_BPE_VERSION_MAX);
    *out = NULL;
    tfm_bpe *b = calloc(1, sizeof *b);
    if (!b) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
    b->version = version;
    b->meta_id = -1;
    for (int i = 0; i < CHAR_DIRECT; i++) b->char_direct[i] = -1;
    static const char *const specials[] = {"<pad>", "<s>", "</s>", "<unk>"};
    int32_t id;
    tfm_status st = TFM_OK;
    for (int i = 0; i < 4 && st == TFM_OK; i++)
        st = add_id(b, specials[i], strlen(specials[i]), "", 0, &id);
    for (int v = 0; v < 256 && st == TFM_OK; v++) {
        char piece[8], byte = (char)v;
        snprintf(piece, sizeof piece, "<0x%02X>", v);
        st = add_id(b, piece, 6, &byte, 1, &id);
    }
    if (st != TFM_OK) {
        tfm_bpe_free(b);
        return st;
    }
    TFM_ASSERT(b->n == TFM_BPE_FIRST_PIECE);
    *out = b;
    return TFM_OK;
}

static int32_t char_id(const tfm_bpe *b, uint32_t cp) {
    if (cp < CHAR_DIRECT) return b->char_direct[cp];
    return tfm_u64map_get(&b->char_map, cp);
}

tfm_status tfm_bpe_build_char(tfm_bpe *b, uint32_t cp, int32_t *id) {
    if (b->nmerges)
        return tfm_error(TFM_ERR_INVALID, "bpe: characters must come before merges");
    /* U+0000 and the space have no piece: NUL would end the piece strings, and
     * a space is always the meta symbol U+2581. */
    if (cp == 0 || cp == ' ' || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return tfm_error(TFM_ERR_INVALID, "bpe: U+%04X cannot be a character piece", cp);
    if (char_id(b, cp) >= 0)
        return tfm_error(TFM_ERR_INVALID, "bpe: character U+%04X listed twice", cp);
    char buf[4];
    int len = tfm_utf8_encode(cp, buf);
    int is_meta = cp == 0x2581;
    TFM_TRY(add_id(b, buf, (size_t)len, is_meta ? " " : buf, is_meta ? 1 : (size_t)len, id));
    if (b->nchars == b->chars_cap) {
        int32_t cap = b->chars_cap ? b->chars_cap * 2 : 256;
        uint32_t *c = realloc(b->chars, (size_t)cap * sizeof *c);
        if (!c) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
        b->chars = c;
        b->chars_cap = cap;
    }
    b->chars[b->nchars++] = cp;
    if (cp < CHAR_DIRECT) b->char_direct[cp] = *id;
    else TFM_TRY(tfm_u64map_put(&b->char_map, cp, *id));
    if (is_meta) b->meta_id = *id;
    return slots_insert(b, *id);
}

/* 1 when s would read as a reserved piece in the text form. */
static int looks_reserved(const char *s, size_t len) {
    static const char *const specials[] = {"<pad>", "<s>", "</s>", "<unk>"};
    for (int i = 0; i < 4; i++)
        if (len == strlen(specials[i]) && !memcmp(s, specials[i], len)) return 1;
    if (len == 6 && s[0] == '<' && s[1] == '0' && (s[2] == 'x' || s[2] == 'X') && s[5] == '>') {
        const char *hex = "0123456789abcdefABCDEF";
        return s[3] && s[4] && strchr(hex, s[3]) && strchr(hex, s[4]);
    }
    return 0;
}

tfm_status tfm_bpe_build_merge(tfm_bpe *b, int32_t left, int32_t right, int32_t *id) {
    if (left < TFM_BPE_FIRST_PIECE || left >= b->n || right < TFM_BPE_FIRST_PIECE ||
        right >= b->n)
        return tfm_error(TFM_ERR_INVALID, "bpe: merge of %d and %d: not pieces", left, right);
    uint64_t key = (uint64_t)left << 32 | (uint32_t)right;
    if (tfm_u64map_get(&b->merge_map, key) >= 0)
        return tfm_error(TFM_ERR_INVALID, "bpe: merge '%s %s' listed twice", piece_str(b, left),
                         piece_str(b, right));
    size_t ll = b->piece_len[left], rl = b->piece_len[right];
    char stack[256], *s = ll + rl <= sizeof stack ? stack : malloc(ll + rl);
    if (!s) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
    memcpy(s, piece_str(b, left), ll);
    memcpy(s + ll, piece_str(b, right), rl);
    tfm_status st = TFM_OK;
    if (looks_reserved(s, ll + rl)) {
        st = tfm_error(TFM_ERR_INVALID, "bpe: merge '%s %s' makes a reserved piece",
                       piece_str(b, left), piece_str(b, right));
        goto done;
    }
    int32_t r = slots_find(b, s, ll + rl);
    if (r < 0) {
        /* The decoded form is the two decoded forms side by side. */
        size_t sl = b->surf_len[left] + b->surf_len[right];
        char sstack[256], *surf = sl <= sizeof sstack ? sstack : malloc(sl);
        if (!surf) {
            st = tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
            goto done;
        }
        memcpy(surf, b->pool + b->surf_off[left], b->surf_len[left]);
        memcpy(surf + b->surf_len[left], b->pool + b->surf_off[right], b->surf_len[right]);
        st = add_id(b, s, ll + rl, surf, sl, &r);
        if (surf != sstack) free(surf);
        if (st == TFM_OK) st = slots_insert(b, r);
        if (st != TFM_OK) goto done;
    }
    if (b->nmerges == b->merges_cap) {
        int32_t cap = b->merges_cap ? b->merges_cap * 2 : 1024;
        int32_t *m = realloc(b->merges, (size_t)cap * 3 * sizeof *m);
        if (!m) {
            st = tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
            goto done;
        }
        b->merges = m;
        b->merges_cap = cap;
    }
    st = tfm_u64map_put(&b->merge_map, key, b->nmerges);
    if (st != TFM_OK) goto done;
    b->merges[3 * b->nmerges] = left;
    b->merges[3 * b->nmerges + 1] = right;
    b->merges[3 * b->nmerges + 2] = r;
    b->nmerges++;
    *id = r;
done:
    if (s != stack) free(s);
    return st;
}

int32_t tfm_bpe_vocab_size(const tfm_bpe *b) { return b->n; }
int tfm_bpe_version(const tfm_bpe *b) { return b->version; }
int32_t tfm_bpe_num_chars(const tfm_bpe *b) { return b->nchars; }
int32_t tfm_bpe_num_merges(const tfm_bpe *b) { return b->nmerges; }

const char *tfm_bpe_piece(const tfm_bpe *b, int32_t id) {
    return id >= 0 && id < b->n ? piece_str(b, id) : NULL;
}

int32_t tfm_bpe_piece_id(const tfm_bpe *b, const char *s, size_t len) {
    if (len && s[0] == '<') {
        /* Reserved pieces: no normal piece looks like one (build_merge). */
        for (int32_t i = 0; i < TFM_BPE_BYTE0; i++)
            if (b->piece_len[i] == len && !memcmp(piece_str(b, i), s, len)) return i;
        if (len == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
            int v = 0;
            for (int i = 3; i < 5; i++) {
                char c = s[i];
                if (c >= '0' && c <= '9') v = v * 16 + (c - '0');
                else if (c >= 'A' && c <= 'F') v = v * 16 + (c - 'A' + 10);
                else return -1;
            }
            return TFM_BPE_BYTE0 + v;
        }
    }
    return slots_find(b, s, len);
}

/* -------------------------------------------------------- pre-tokenizing */

int tfm_bpe_is_space(uint32_t cp) {
    if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D);
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

int tfm_bpe_char_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return TFM_BPE_CLASS_LETTER;
        if (cp >= '0' && cp <= '9') return TFM_BPE_CLASS_DIGIT;
        return TFM_BPE_CLASS_OTHER;
    }
    if (cp <= 0x9F) return TFM_BPE_CLASS_OTHER; /* C1 controls, like ASCII's */
    if (tfm_uni_in(tfm_uni_number, tfm_uni_number_count, cp)) return TFM_BPE_CLASS_DIGIT;
    if (tfm_uni_in(tfm_uni_punct, tfm_uni_punct_count, cp) ||
        tfm_uni_in(tfm_uni_symbol, tfm_uni_symbol_count, cp))
        return TFM_BPE_CLASS_OTHER;
    /* Case_Ignorable is Mn, Me, Cf, Lm, Sk and some punctuation; with P and S
     * gone, what is left are the marks, joiners and modifier letters that
     * belong with the character before them (é as e + U+0301, the ZWJ and
     * U+FE0F of emoji sequences, Japanese ー). */
    if (tfm_uni_in(tfm_uni_case_ignorable, tfm_uni_case_ignorable_count, cp))
        return TFM_BPE_CLASS_EXTEND;
    /* Letters of every script, Mc marks, private use and unassigned code
     * points: one class, so that a script's letters and marks stay together. */
    return TFM_BPE_CLASS_LETTER;
}

size_t tfm_bpe_pretokenize(const char *text, size_t len, int version, uint32_t *cps,
                           uint32_t *starts, size_t *bad) {
    if (!len) {
        starts[0] = 0;
        return 0;
    }
    const char *p = text, *end = text + len;
    size_t n = 0, nw = 0;
    /* The dummy prefix: the text reads as if it followed a space. */
    starts[nw++] = 0;
    cps[n++] = TFM_BPE_META_CP;
    int open = 1; /* the current word takes more characters */
    int cls = 0;  /* v2: the class of the current word's characters, 0 for none yet */
    while (p < end) {
        uint32_t cp;
        unsigned char c = (unsigned char)*p;
        if (c < 0x80) {
            cp = c;
            p++;
        } else {
            int k = tfm_utf8_decode(p, end, &cp);
            if (!k) {
                *bad = (size_t)(p - text);
                return (size_t)-1;
            }
            p += k;
        }
        if (cp == ' ') {
            starts[nw++] = (uint32_t)n;
            cps[n++] = TFM_BPE_META_CP;
            open = 1;
            cls = 0;
        } else if (tfm_bpe_is_space(cp)) {
            starts[nw++] = (uint32_t)n;
            cps[n++] = cp;
            open = 0;
        } else {
            if (!open) {
                starts[nw++] = (uint32_t)n;
                open = 1;
                cls = 0;
            }
            if (version >= 2) {
                /* A new word where the class changes; the '▁' (no class)
                 * stays with the first run. Every start is a distinct index
                 * of cps, so starts never needs more than len + 2 entries. */
                int k = tfm_bpe_char_class(cp);
                if (k == TFM_BPE_CLASS_EXTEND) k = cls ? cls : TFM_BPE_CLASS_LETTER;
                if (cls && k != cls) starts[nw++] = (uint32_t)n;
                cls = k;
            }
            cps[n++] = cp;
        }
    }
    starts[nw] = (uint32_t)n;
    return nw;
}

/* --------------------------------------------------------------- encoding */

typedef struct heap_ent {
    int32_t rank; /* merge rank: lower merges first */
    int32_t pos;  /* index of the left symbol: leftmost first among equal ranks */
} heap_ent;

static inline int heap_less(heap_ent a, heap_ent b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(e, h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
    heap_ent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* Scratch for one encode call, sized for a text of len bytes: a word never has
 * more than len + 1 symbols (one per byte at most, plus the dummy prefix), and
 * the heap never holds more than 3 per symbol (one per initial pair, two per
 * merge). */
typedef struct scratch {
    uint32_t *cps, *starts;
    int32_t *sym, *prev, *next;
    heap_ent *heap;
} scratch;

static size_t scratch_bytes(size_t len) {
    size_t m = len + 2;
    return m * (2 * sizeof(uint32_t) + 3 * sizeof(int32_t) + 3 * sizeof(heap_ent));
}

static void scratch_carve(scratch *s, void *mem, size_t len) {
    size_t m = len + 2;
    /* heap_ent first: it has the strictest alignment of the arrays. */
    s->heap = mem;
    s->cps = (uint32_t *)(s->heap + 3 * m);
    s->starts = s->cps + m;
    s->sym = (int32_t *)(s->starts + m);
    s->prev = s->sym + m;
    s->next = s->prev + m;
}

static inline void try_push(const tfm_bpe *b, const int32_t *sym, heap_ent *heap, size_t *nh,
                            int32_t left, int32_t right) {
    int32_t rank = tfm_u64map_get(&b->merge_map, (uint64_t)sym[left] << 32 | (uint32_t)sym[right]);
    if (rank >= 0) heap_push(heap, nh, (heap_ent){rank, left});
}

/* Encodes one word cps[0..n) and appends its ids to out (up to cap; *count
 * counts them all). */
static void encode_word(const tfm_bpe *b, const uint32_t *cps, size_t n, scratch *s,
                        int32_t *out, size_t cap, size_t *count) {
    int32_t *sym = s->sym, *prev = s->prev, *next = s->next;
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = cps[i];
        int32_t id;
        if (cp == TFM_BPE_META_CP) id = b->meta_id;
        else if (cp == 0x2581) id = -1; /* a literal '▁' always goes to bytes */
        else id = char_id(b, cp);
        if (id >= 0) {
            sym[ns++] = id;
        } else {
            char buf[4];
            int k = tfm_utf8_encode(cp, buf);
            for (int j = 0; j < k; j++) sym[ns++] = TFM_BPE_BYTE0 + (unsigned char)buf[j];
        }
    }
    if (ns > 1 && b->nmerges) {
        size_t nh = 0;
        for (int32_t i = 0; i < ns; i++) {
            prev[i] = i - 1;
            next[i] = i + 1 < ns ? i + 1 : -1;
        }
        for (int32_t i = 0; i + 1 < ns; i++) try_push(b, sym, s->heap, &nh, i, i + 1);
        while (nh) {
            heap_ent e = heap_pop(s->heap, &nh);
            int32_t l = e.pos, r = next[l];
            /* Stale entries: the left symbol was merged away (sym < 0), or
             * either side changed since the entry was pushed. */
            if (sym[l] < 0 || r < 0) continue;
            const int32_t *m = b->merges + 3 * e.rank;
            if (sym[l] != m[0] || sym[r] != m[1]) continue;
            sym[l] = m[2];
            sym[r] = -1;
            next[l] = next[r];
            if (next[r] >= 0) prev[next[r]] = l;
            if (prev[l] >= 0) try_push(b, sym, s->heap, &nh, prev[l], l);
            if (next[l] >= 0) try_push(b, sym, s->heap, &nh, l, next[l]);
        }
        for (int32_t i = 0; i >= 0; i = next[i]) {
            if (*count < cap) out[*count] = sym[i];
            (*count)++;
        }
        return;
    }
    for (int32_t i = 0; i < ns; i++) {
        if (*count < cap) out[*count] = sym[i];
        (*count)++;
    }
}

tfm_status tfm_bpe_encode_into(const tfm_bpe *b, const char *text, size_t len, int32_t *ids,
                               size_t cap, size_t *n) {
    TFM_ASSERT(b && (text || !len) && n && (ids || !cap));
    TFM_ASSERT(b->meta_id >= 0);
    *n = 0;
    if (!len) return TFM_OK;
    if (len > (size_t)INT32_MAX - 4)
        return tfm_error(TFM_ERR_INVALID, "bpe: text of %zu bytes is too long to encode", len);
    _Alignas(heap_ent) unsigned char stack[(STACK_BYTES + 2) *
                                           (2 * sizeof(uint32_t) + 3 * sizeof(int32_t) +
                                            3 * sizeof(heap_ent))];
    void *mem = len <= STACK_BYTES ? (void *)stack : malloc(scratch_bytes(len));
    if (!mem) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory encoding %zu bytes", len);
    scratch s;
    scratch_carve(&s, mem, len);
    size_t bad = 0;
    size_t nw = tfm_bpe_pretokenize(text, len, b->version, s.cps, s.starts, &bad);
    tfm_status st = TFM_OK;
    if (nw == (size_t)-1) {
        st = tfm_error(TFM_ERR_INVALID, "invalid UTF-8 at byte %zu", bad + 1);
    } else {
        size_t count = 0;
        for (size_t w = 0; w < nw; w++)
            encode_word(b, s.cps + s.starts[w], s.starts[w + 1] - s.starts[w], &s, ids, cap,
                        &count);
        *n = count;
        if (count > cap)
            st = tfm_error(TFM_ERR_INVALID, "bpe: %zu ids do not fit a buffer of %zu", count,
                           cap);
    }
    if (mem != (void *)stack) free(mem);
    return st;
}

tfm_status tfm_bpe_encode(const tfm_bpe *b, const char *text, size_t len, int32_t **ids,
                          size_t *n) {
    *ids = NULL;
    *n = 0;
    if (!len) return TFM_OK;
    size_t cap = tfm_bpe_max_tokens(len);
    int32_t *out = malloc(cap * sizeof *out);
    if (!out) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory encoding %zu bytes", len);
    tfm_status st = tfm_bpe_encode_into(b, text, len, out, cap, n);
    if (st != TFM_OK || !*n) {
        free(out);
        if (st != TFM_OK) *n = 0;
        return st;
    }
    int32_t *shrunk = realloc(out, *n * sizeof *out);
    *ids = shrunk ? shrunk : out;
    return TFM_OK;
}

tfm_status tfm_bpe_encode_pieces(const tfm_bpe *b, const char *text, size_t len, char **pieces,
                                 size_t *pieces_len) {
    *pieces = NULL;
    if (pieces_len) *pieces_len = 0;
    int32_t stack_ids[STACK_BYTES + 1], *ids = stack_ids;
    size_t cap = tfm_bpe_max_tokens(len), n = 0;
    if (cap > STACK_BYTES + 1) {
        ids = malloc(cap * sizeof *ids);
        if (!ids) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory encoding %zu bytes", len);
    }
    tfm_status st = tfm_bpe_encode_into(b, text, len, ids, cap, &n);
    if (st == TFM_OK) {
        size_t total = n ? n - 1 : 0;
        for (size_t i = 0; i < n; i++) total += b->piece_len[ids[i]];
        char *out = malloc(total + 1), *p = out;
        if (!out) {
            st = tfm_error(TFM_ERR_NOMEM, "bpe: out of memory");
        } else {
            for (size_t i = 0; i < n; i++) {
                if (i) *p++ = ' ';
                memcpy(p, piece_str(b, ids[i]), b->piece_len[ids[i]]);
                p += b->piece_len[ids[i]];
            }
            *p = '\0';
            *pieces = out;
            if (pieces_len) *pieces_len = total;
        }
    }
    if (ids != stack_ids) free(ids);
    return st;
}

/* --------------------------------------------------------------- decoding */

tfm_status tfm_bpe_decode(const tfm_bpe *b, const int32_t *ids, size_t n, char **text,
                          size_t *len) {
    TFM_ASSERT(b && (ids || !n) && text);
    *text = NULL;
    if (len) *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= b->n)
            return tfm_error(TFM_ERR_INVALID, "bpe: id %d at position %zu is outside [0, %d)",
                             ids[i], i, b->n);
        total += b->surf_len[ids[i]];
    }
    char *out = malloc(total + 1), *p = out;
    if (!out) return tfm_error(TFM_ERR_NOMEM, "bpe: out of memory decoding %zu ids", n);
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < TFM_BPE_BYTE0) continue; /* <pad> <s> </s> <unk> */
        const char *s = b->pool + b->surf_off[id];
        size_t k = b->surf_len[id];
        /* The dummy prefix: a leading '▁' of the first normal piece. A byte
         * token 0x20 is not one (encoding never produces it). */
        if (first && id >= TFM_BPE_FIRST_PIECE && k && s[0] == ' ' && b->piece_len[id] >= 3 &&
            !memcmp(piece_str(b, id), TFM_BPE_META, 3)) {
            s++;
            k--;
        }
        first = 0;
        memcpy(p, s, k);
        p += k;
    }
    *p = '\0';
    *text = out;
    if (len) *len = (size_t)(p - out);
    return TFM_OK;
}

/* ---------------------------------------------------------- save and load */

/* Characters written after their code point in the model file, for people;
 * whitespace and control characters are left bare. */
static int printable(uint32_t cp) {
    return cp > 0x20 && !(cp >= 0x7F && cp <= 0x9F) && !tfm_bpe_is_space(cp);
}

tfm_status tfm_bpe_save(const tfm_bpe *b, const char *path) {
    tfm_atomic_file af;
    TFM_TRY(tfm_atomic_open(&af, path));
    fprintf(af.f, "transformer.c bpe v%d\nvocab_size %d\nchars %d\n", b->version, b->n, b->nchars);
    for (int32_t i = 0; i < b->nchars; i++) {
        uint32_t cp = b->chars[i];
        fprintf(af.f, "U+%04X", cp);
        if (printable(cp)) fprintf(af.f, " %s", piece_str(b, TFM_BPE_FIRST_PIECE + i));
        fputc('\n', af.f);
    }
    fprintf(af.f, "merges %d\n", b->nmerges);
    for (int32_t r = 0; r < b->nmerges; r++)
        fprintf(af.f, "%s %s\n", piece_str(b, b->merges[3 * r]), piece_str(b, b->merges[3 * r + 1]));
    fputs("end\n", af.f);
    return tfm_atomic_commit(&af);
}

/* A cursor over the lines of a model file held in memory. */
typedef struct reader {
    const char *path;
    const char *p, *end;
    int line;               /* number of the line last returned */
    const char *s;          /* that line, without its '\n' */
    size_t len;
} reader;

/* Advances to the next line; a format error at end of file or when the last
 * line has no '\n' (a truncated file). `what` says what was expected. */
static tfm_status next_line(reader *r, const char *what) {
    if (r->p >= r->end && r->line == 0)
        return tfm_error(TFM_ERR_FORMAT, "%s: empty file: not a transformer.c BPE model",
                         r->path);
    if (r->p >= r->end)
        return tfm_error(TFM_ERR_FORMAT, "%s:%d: truncated: expected %s after the last line",
                         r->path, r->line, what);
    const char *nl = memchr(r->p, '\n', (size_t)(r->end - r->p));
    r->line++;
    if (!nl)
        return tfm_error(TFM_ERR_FORMAT, "%s:%d: truncated: the last line has no newline",
                         r->path, r->line);
    r->s = r->p;
    r->len = (size_t)(nl - r->p);
    r->p = nl + 1;
    return TFM_OK;
}

/* Turns the message of a failed tfm_bpe_build_* into a format error that
 * names the file and line (copied first: tfm_error writes the same buffer). */
static tfm_status rewrap(const reader *r, tfm_status st) {
    if (st == TFM_ERR_NOMEM) return st;
    char msg[512];
    const char *m = tfm_last_error();
    if (!strncmp(m, "bpe: ", 5)) m += 5;
    snprintf(msg, sizeof msg, "%s", m);
    return tfm_error(TFM_ERR_FORMAT, "%s:%d: %s", r->path, r->line, msg);
}

/* Parses "<key> <decimal>" into *v in [0, max]. */
static tfm_status keyed_int(reader *r, const char *key, long max, long *v) {
    TFM_TRY(next_line(r, key));
    size_t kl = strlen(key);
    const char *s = r->s, *e = r->s + r->len;
    if (r->len <= kl + 1 || memcmp(s, key, kl) || s[kl] != ' ')
        return tfm_error(TFM_ERR_FORMAT, "%s:%d: expected '%s N', found '%.*s'", r->path, r->line,
                         key, (int)(r->len > 60 ? 60 : r->len), s);
    long x = 0;
    const char *num = s + kl + 1;
    for (s = num; s < e; s++) {
        if (*s < '0' || *s > '9' || x > max || e - num > 9)
            return tfm_error(TFM_ERR_FORMAT, "%s:%d: %s: '%.*s' is not a number in [0, %ld]",
                             r->path, r->line, key, (int)(e - num > 20 ? 20 : e - num), num, max);
        x = x * 10 + (*s - '0');
    }
    if (x > max)
        return tfm_error(TFM_ERR_FORMAT, "%s:%d: %s: %ld is more than %ld", r->path, r->line, key,
                         x, max);
    *v = x;
    return TFM_OK;
}

static tfm_status parse_char(reader *r, tfm_bpe *b) {
    TFM_TRY(next_line(r, "a character line 'U+XXXX'"));
    const char *s = r->s, *e = r->s + r->len;
    uint32_t cp = 0;
    int digits = 0;
    if (r->len >= 2 && s[0] == 'U' && s[1] == '+') {
        for (s += 2; s < e && *s != ' ' && digits <= 6; s++, digits++) {
            int d = (*s >= '0' && *s <= '9')   ? *s - '0'
                    : (*s >= 'A' && *s <= 'F') ? *s - 'A' + 10
                    : (*s >= 'a' && *s <= 'f') ? *s - 'a' + 10
                                               : -1;
            if (d < 0) {
                digits = 0;
                break;
            }
            cp = cp * 16 + (uint32_t)d;
        }
    }
    if (digits < 4 || digits > 6)
        return tfm_error(TFM_ERR_FORMAT, "%s:%d: expected a character 'U+XXXX', found '%.*s'",
                         r->path, r->line, (int)(r->len > 60 ? 60 : r->len), r->s);
    if (s < e) {
        /* The optional rendering must be the character itself. */
        char buf[4];
        int k = cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF) ? tfm_utf8_encode(cp, buf) : 0;
        if (!k || (size_t)(e - s) != (size_t)k + 1 || memcmp(s + 1, buf, (size_t)k))
            return tfm_error(TFM_ERR_FORMAT, "%s:%d: '%.*s' is not U+%04X", r->path, r->line,
                             (int)(e - s - 1), s + 1, cp);
    }
    int32_t id;
    tfm_status st = tfm_bpe_build_char(b, cp, &id);
    if (st != TFM_OK) return rewrap(r, st);
    return TFM_OK;
}

static tfm_status parse_merge(reader *r, tfm_bpe *b) {
    TFM_TRY(next_line(r, "a merge line 'LEFT RIGHT'"));
    const char *sp = memchr(r->s, ' ', r->len);
    if (!sp || sp == r->s || sp + 1 == r->s + r->len ||
        memchr(sp + 1, ' ', (size_t)(r->s + r->len - sp - 1)))
        return tfm_error(TFM_ERR_FORMAT,
                         "%s:%d: expected a merge 'LEFT RIGHT' (two pieces, one space), found "
                         "'%.*s'",
                         r->path, r->line, (int)(r->len > 60 ? 60 : r->len), r->s);
    size_t ll = (size_t)(sp - r->s), rl = r->len - ll - 1;
    int32_t left = slots_find(b, r->s, ll), right = slots_find(b, sp + 1, rl);
    if (left < 0 || right < 0) {
        int bad_left = left < 0;
        return tfm_error(TFM_ERR_FORMAT,
                         "%s:%d: merge '%.*s': '%.*s' is not a character or an earlier merge",
                         r->path, r->line, (int)(r->len > 60 ? 60 : r->len), r->s,
                         (int)(bad_left ? ll : rl), bad_left ? r->s : sp + 1);
    }
    int32_t id;
    tfm_status st = tfm_bpe_build_merge(b, left, right, &id);
    if (st != TFM_OK) return rewrap(r, st);
    return TFM_OK;
}

/* Reads the header line "transformer.c bpe vN" into *version. */
static tfm_status parse_header(reader *r, int *version) {
    static const char magic[] = "transformer.c bpe v";
    const size_t ml = sizeof magic - 1;
    TFM_TRY(next_line(r, "the header"));
    if (r->len < ml || memcmp(r->s, magic, ml))
        return tfm_error(TFM_ERR_FORMAT,
                         "%s:1: not a transformer.c BPE model (expected '%s%d' on the first "
                         "line)",
                         r->path, magic, TFM_BPE_VERSION_MAX);
    if (r->len != ml + 1 || r->s[ml] < '0' + TFM_BPE_VERSION_MIN ||
        r->s[ml] > '0' + TFM_BPE_VERSION_MAX)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s:1: unsupported BPE model version '%.*s' (this build reads v%d to "
                         "v%d)",
                         r->path, (int)(r->len > 40 ? 40 : r->len), r->s, TFM_BPE_VERSION_MIN,
                         TFM_BPE_VERSION_MAX);
    *version = r->s[ml] - '0';
    return TFM_OK;
}

/* Everything after the header. */
static tfm_status parse_model(reader *r, tfm_bpe *b) {
    long vocab, nchars, nmerges;
    TFM_TRY(keyed_int(r, "vocab_size", MAX_VOCAB, &vocab));
    int vocab_line = r->line;
    TFM_TRY(keyed_int(r, "chars", MAX_VOCAB, &nchars));
    for (long i = 0; i < nchars; i++) TFM_TRY(parse_char(r, b));
    if (b->meta_id < 0)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s:%d: the characters lack U+2581, the space symbol '▁'", r->path,
                         r->line);
    TFM_TRY(keyed_int(r, "merges", MAX_VOCAB, &nmerges));
    for (long i = 0; i < nmerges; i++) TFM_TRY(parse_merge(r, b));
    TFM_TRY(next_line(r, "'end'"));
    if (r->len != 3 || memcmp(r->s, "end", 3))
        return tfm_error(TFM_ERR_FORMAT, "%s:%d: expected 'end' after %ld merges, found '%.*s'",
                         r->path, r->line, nmerges, (int)(r->len > 60 ? 60 : r->len), r->s);
    if (r->p != r->end)
        return tfm_error(TFM_ERR_FORMAT, "%s:%d: unexpected text after 'end'", r->path,
                         r->line + 1);
    if (vocab != b->n)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s:%d: vocab_size %ld, but the characters and merges make %d pieces",
                         r->path, vocab_line, vocab, b->n);
    return TFM_OK;
}

tfm_status tfm_bpe_load(const char *path, tfm_bpe **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return tfm_error(TFM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    tfm_status st = TFM_OK;
    while (buf) {
        if (len == cap) {
            if (cap >= MAX_MODEL_BYTES) {
                st = tfm_error(TFM_ERR_FORMAT, "%s: larger than %u bytes: not a BPE model", path,
                               MAX_MODEL_BYTES);
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0) {
            if (ferror(f)) st = tfm_error(TFM_ERR_IO, "%s: read error: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!buf) return tfm_error(TFM_ERR_NOMEM, "%s: out of memory reading the model", path);
    if (st == TFM_OK) {
        tfm_bpe *b = NULL;
        reader r = {path, buf, buf + len, 0, NULL, 0};
        int version = 0;
        st = parse_header(&r, &version);
        if (st == TFM_OK) st = tfm_bpe_build_new(version, &b);
        if (st == TFM_OK) {
            st = parse_model(&r, b);
            if (st == TFM_OK) *out = b;
            else tfm_bpe_free(b);
        }
    }
    free(buf);
    return st;
}
