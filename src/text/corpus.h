/*
 * corpus.h: training data for `transformer train`: a parallel corpus (or a
 * language-model text) encoded with the BPE model, and batches cut by token
 * count, as in the paper and fairseq.
 *
 * What it does
 *   - Reads two line-aligned UTF-8 files (line i of one translates line i of
 *     the other), encodes both sides with one shared BPE model (OpenMP over
 *     lines), drops pairs with an empty side or a side longer than max_len
 *     tokens, and keeps the ids in one int32 array.
 *   - Or reads one text (decoder-only language modelling, Tiny Shakespeare),
 *     encodes it as a single token stream and cuts it into blocks of
 *     max_len + 1 tokens.
 *   - Sorts the examples by (source length, target length), cuts them
 *     greedily into batches whose padded size max(B*S, B*T) is at most
 *     batch_tokens, and visits the batches in a shuffled order each epoch. The
 *     order is a pure function of (seed, epoch), so a run resumes from
 *     (epoch, index) alone.
 *   - Keeps the raw lines, so that BLEU can be scored against the original
 *     reference text.
 *
 * What it does not do: read compressed files or stdin, tokenize or normalise
 * text beyond trimming, shuffle examples between batches (the batches are fixed
 * at load time; only their order changes), or stream a corpus larger than
 * memory.
 *
 * Memory: a parallel corpus keeps the text of both files (for the raw lines),
 * 4 bytes per token and 64 bytes per pair; loading needs 4 bytes per byte of
 * 16384 lines more. A language-model corpus keeps only its ids, and needs 4
 * bytes per byte of the text while encoding.
 *
 * Thread safety: a loaded corpus is immutable; tfm_corpus_batch writes only
 * into the caller's batch buffer, so threads with a buffer each may share one
 * corpus.
 */
#ifndef TFM_TEXT_CORPUS_H
#define TFM_TEXT_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "text/bpe.h"
#include "transformer.h"

typedef struct tfm_corpus tfm_corpus;

typedef struct tfm_corpus_params {
    int max_len;        /* a pair with a side of more ids than this (before bos/eos)
                           is skipped; a language-model block holds max_len + 1
                           ids: 256 */
    long batch_tokens;  /* the most padded tokens per batch, max(B*S, B*T) with
                           S = longest source, T = longest target + 1 (fairseq's
                           max_tokens); a pair bigger than this on its own gets
                           a batch of its own. The paper's ~25000: 25000 */
    int max_sentences;  /* the most examples per batch; 0 = no limit: 0 */
    uint64_t seed;      /* the batch order of each epoch: 1 */
    int pad_id;         /* 0 = TFM_BPE_PAD */
    int bos_id;         /* 1 = TFM_BPE_BOS */
    int eos_id;         /* 2 = TFM_BPE_EOS */
} tfm_corpus_params;

/* What loading found; for the log. For a language-model corpus, read counts
 * lines, kept counts blocks, the skip counts are 0 and src_tokens is 0. */
typedef struct tfm_corpus_stats {
    long read;          /* pairs (lines) read */
    long kept;          /* examples kept */
    long skipped_empty; /* pairs with a side that is empty after trimming */
    long skipped_long;  /* pairs with a side longer than max_len ids */
    long src_tokens;    /* ids of the kept sources (no eos) */
    long tgt_tokens;    /* ids of the kept targets (no bos/eos); the stream for a LM */
    long batches;
} tfm_corpus_stats;

/* Fills *p with the defaults above. */
void tfm_corpus_default_params(tfm_corpus_params *p);

/* Loads a parallel corpus from src_path and tgt_path.
 *
 * Lines end at '\n' (a last line without one counts); one trailing '\r' is
 * dropped. Each side is trimmed of ASCII whitespace (space, \t, \v, \f, \r)
 * before it is encoded; a pair with a side that is then empty is skipped, as
 * is a pair with a side longer than params->max_len ids. The bpe model is only
 * read, and is not needed after loading.
 *
 * On success *out owns a new corpus (tfm_corpus_free) and *stats (may be NULL)
 * is filled. Errors (the message names the files, and the line where there is
 * one):
 *   TFM_ERR_INVALID  a bad parameter ("corpus: max_len: must be at least 1").
 *   TFM_ERR_IO       a file cannot be opened or read.
 *   TFM_ERR_FORMAT   unequal line counts ("train.de has 29000 lines but
 *                    train.en has 28999"), invalid UTF-8 ("train.de:17:
 *                    invalid UTF-8 at byte 5 of the line"), or no pair left
 *                    after the filters (the message gives the counts).
 *   TFM_ERR_NOMEM.
 */
tfm_status tfm_corpus_load(const tfm_corpus_params *params, const tfm_bpe *bpe,
                           const char *src_path, const char *tgt_path, tfm_corpus **out,
                           tfm_corpus_stats *stats);

/* Loads a decoder-only (language model) corpus: the whole file is encoded as
 * one text (exactly as tfm_bpe_encode would encode it, newlines included) and
 * the stream of n ids is cut into blocks of max_len + 1 ids that overlap by
 * one: block k starts at id k*max_len, so every id but the first is a target
 * once. The last block may be shorter (at least 2 ids); its rows are padded.
 * Example k has no source; its target ids are the block. In a batch, tgt_in is
 * block[:-1] and targets is block[1:] (no bos or eos is added), S is 0 and
 * src is NULL. Errors as tfm_corpus_load; a text of fewer than 2 ids is
 * TFM_ERR_FORMAT. */
tfm_status tfm_corpus_load_lm(const tfm_corpus_params *params, const tfm_bpe *bpe,
                              const char *path, tfm_corpus **out, tfm_corpus_stats *stats);

/* Frees a corpus; NULL is allowed. */
void tfm_corpus_free(tfm_corpus *c);

/* 1 for a language-model corpus (tfm_corpus_load_lm), 0 for a parallel one. */
int tfm_corpus_is_lm(const tfm_corpus *c);

/* The parameters it was loaded with. */
const tfm_corpus_params *tfm_corpus_params_of(const tfm_corpus *c);

/* ------------------------------------------------------------ the examples
 * Example i (0 <= i < tfm_corpus_size) is the i-th kept pair in file order
 * (or block i of a language-model corpus). */

long tfm_corpus_size(const tfm_corpus *c);

/* The source ids of example i (no bos or eos); *n receives the count. Owned by
 * the corpus. A language-model corpus has none (*n = 0, NULL returned). */
const int32_t *tfm_corpus_src(const tfm_corpus *c, long i, int *n);
/* The target ids of example i (no bos or eos), or the block of a
 * language-model corpus. */
const int32_t *tfm_corpus_tgt(const tfm_corpus *c, long i, int *n);

/* The 1-based line of example i in the files; 0 for a language-model corpus
 * (a block need not start at a line). */
long tfm_corpus_line(const tfm_corpus *c, long i);

/* The raw source and target lines of example i, NUL-terminated, without the
 * line end or its '\r' and not trimmed; len (may be NULL) receives the length
 * (a line may hold a NUL byte). The target line is the reference for BLEU.
 * NULL for a language-model corpus. Owned by the corpus. */
const char *tfm_corpus_src_text(const tfm_corpus *c, long i, size_t *len);
const char *tfm_corpus_tgt_text(const tfm_corpus *c, long i, size_t *len);

/* --------------------------------------------------------------- batching */

/* A position in the training data, to save with a checkpoint: the batch at
 * `index` of epoch `epoch`'s order. */
typedef struct tfm_corpus_pos {
    long epoch;
    long index;
} tfm_corpus_pos;

long tfm_corpus_n_batches(const tfm_corpus *c);

/* The largest batch: the most rows, the longest source (S), the longest
 * target row (T = target ids + 1; max_len for a language model), and the most
 * source and target cells (B*S, B*T) of any one batch. Size the model's
 * workspace with max_B, max_S, max_T (taking the maximum over the training
 * and validation corpora). */
typedef struct tfm_corpus_shape {
    int max_B, max_S, max_T;
    long max_src_cells, max_tgt_cells;
} tfm_corpus_shape;
tfm_corpus_shape tfm_corpus_max_shape(const tfm_corpus *c);

/* One batch, in buffers allocated once for the largest batch. After
 * tfm_corpus_batch:
 *   batch    B, S, T and src [B,S], tgt_in [B,T], targets [B,T] (the arrays
 *            below), ready for tfm_model_forward. Rows are padded with pad_id.
 *            Parallel: src = x, tgt_in = bos y, targets = y eos.
 *            Language model: src NULL, S 0, tgt_in = block[:-1],
 *            targets = block[1:].
 *   rows     [B] the example index (tfm_corpus_src/tgt/..._text) of each row.
 *   n_src_tokens  non-pad source ids; n_tgt_tokens non-pad targets (the
 *                 tokens the loss is averaged over).
 * The shuffled order of the last epoch asked for is cached here too, so
 * consecutive calls in one epoch cost only the copying. */
typedef struct tfm_corpus_batch_buf {
    tfm_batch batch;
    int32_t *src, *tgt_in, *targets;
    long *rows;
    long n_src_tokens, n_tgt_tokens;
    tfm_corpus_shape cap;     /* what the buffers hold */
    const tfm_corpus *corpus; /* the corpus it was made for */
    long order_epoch;         /* the epoch of `order`; -2 when none */
    int32_t *order;           /* [n_batches] batch ids in that epoch's order */
    long n_batches;
    void *mem;                /* the one allocation */
} tfm_corpus_batch_buf;

/* Allocates buffers for the largest batch of c and for its batch order; the
 * buffer then serves c only (one buffer per corpus). Errors: TFM_ERR_NOMEM. */
tfm_status tfm_corpus_batch_buf_init(tfm_corpus_batch_buf *buf, const tfm_corpus *c);
void tfm_corpus_batch_buf_free(tfm_corpus_batch_buf *buf);

/* Fills buf with batch `index` (0 <= index < tfm_corpus_n_batches) of epoch
 * `epoch`. epoch >= 0: the batches in a shuffled order that depends only on
 * (params->seed, epoch), different for each epoch; the same (epoch, index)
 * always gives the same batch, whatever was asked before. epoch = -1: sorted
 * order, unshuffled (shortest sources first), for evaluation. Never allocates.
 * An index out of range or a buffer from another corpus is a programmer error
 * (TFM_ASSERT). */
void tfm_corpus_batch(const tfm_corpus *c, long epoch, long index, tfm_corpus_batch_buf *buf);

/* The next position after pos: the next index, or index 0 of the next epoch. */
tfm_corpus_pos tfm_corpus_next(const tfm_corpus *c, tfm_corpus_pos pos);

#endif
