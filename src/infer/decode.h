/*
 * decode.h: incremental decoding with a KV cache, and greedy search.
 *
 * A tfm_decoder is the per-run state of decoding (whisper.cpp's "state"): the
 * self-attention keys and values of every decoder layer, appended one
 * position per step; the cross-attention keys and values, computed once per
 * source; and scratch for one step. The model stays immutable, so several
 * decoders may share one model.
 *
 * Rows of a batch advance together, one token per step. For decoder-only
 * prompts of different lengths, left-pad them with pad_id: a pad token is
 * masked out of every later step and does not advance its row's position.
 *
 * Shapes: B rows, S source length, Tm maximum target length, D d_model,
 * H heads, dk/dv per head, V output vocabulary.
 */
#ifndef TFM_INFER_DECODE_H
#define TFM_INFER_DECODE_H

#include <stdint.h>

#include "model/model.h"

typedef struct tfm_decoder {
    const tfm_model *m;
    int max_B, max_S, max_T;
    int B, S;                 /* rows and source length of the current run */
    int step;                 /* positions cached so far */
    tfm_workspace enc_ws;     /* the encoder's activations (encoder-decoder only) */
    /* In the model's backend memory: */
    float **k_cache, **v_cache;  /* per layer [B, Tm, H*dk], [B, Tm, H*dv], each the size of spare_self */
    float **cross_kv;         /* per layer [B / kv_group, S, H*(dk+dv)] (one slot per group of rows),
                                 each the size of spare_cross */
    int kv_group;             /* rows per cross-attention slot: rows [s*g, (s+1)*g) read slot s's
                                 cross K/V and source mask. 1 after start; beam search's reorders
                                 place a sentence's beams side by side, which makes it the beam,
                                 so the beams of a sentence share one copy of its encoder keys */
    uint8_t *self_pad;        /* [B, Tm] 1 = cached position holds a pad token */
    int32_t *pos;             /* [B] position of each row's next token */
    int32_t *tokens;          /* [B] this step's tokens */
    int32_t *rows;            /* [B] reorder source rows */
    int32_t *slots;           /* [B] reorder source cross-attention slots */
    int32_t *best;            /* [B] argmax results */
    float *mem;               /* one allocation for caches and scratch */
    float *spare_self;        /* [B, Tm, H*max(dk, dv)] the spare self-attention cache: reordering
                                 gathers a cache into it and the two trade places (device
                                 backends; NULL with kv_map) */
    int32_t *kv_map;          /* host-memory (CPU) backends: [max_B, Tm] the cache row that holds
                                 row r's key and value at position j. A reorder rewrites this map
                                 instead of moving cache rows (each key is written once, at its
                                 step, to the row that computed it); the attention reads through
                                 it (tfm_attn_dims.kv_rows). NULL on a device: rows are gathered */
    int32_t *kv_map_spare;    /* [max_B, Tm] the reorder's destination; the two trade places */
    float *spare_cross;       /* [B, S, H*(dk+dv)] the same for the cross K/V (encoder-decoder only) */
    uint8_t *host_reorder;    /* host scratch of tfm_decoder_reorder, sized at init */
    /* one step's scratch */
    float *x, *ln, *mean, *rstd, *res, *qkv, *att, *proj, *ffn, *probs, *top;
    float *dev_logits;        /* [B, V] the last step's logits */
    /* On the host: */
    float *logits;            /* [B, V] the last step's logits (dev_logits itself on the CPU);
                                 on a device, valid after tfm_decoder_logits */
    int logits_on_host;       /* logits holds this step's values */
    uint8_t *host_self_pad;   /* [B, Tm] mirror of self_pad */
    uint8_t *host_src_pad;    /* [B / kv_group, S] the source padding mask of each cross slot */
    int32_t *host_pos;        /* [B] mirror of pos */
    int32_t *host_src_row;    /* [B] the encoded sentence whose cross K/V (and source mask) row r holds:
                                 a reorder that keeps every row's sentence (beam search
                                 shuffling hypotheses within a sentence) leaves those rows alone */
    struct tfm_gemm_packs *packs; /* CPU: the weights packed once for the own GEMM kernel, made current
                                 during tfm_decoder_start and _step (src/ops/sgemm_avx512.h); NULL elsewhere */
} tfm_decoder;

/* Sizes the caches for up to max_B rows, sources of max_S tokens (ignored for
 * decoder-only models) and max_T target positions (<= max_positions).
 * The model's weights must not change while the decoder exists: on the CPU
 * (with the AVX-512 GEMM) the decoder keeps packed copies of the weight
 * matrices its GEMMs use, made on first use and freed by tfm_decoder_free,
 * about the size of the weights (a base model: ~240 MB). TFM_GEMM_PACKED=0
 * turns the copies off. */
tfm_status tfm_decoder_init(tfm_decoder *d, const tfm_model *m, int max_B, int max_S, int max_T);
void tfm_decoder_free(tfm_decoder *d);

/* Starts a run of B rows: for an encoder-decoder model encodes src [B, S]
 * (padded with pad_id) and caches the cross-attention keys and values; for a
 * decoder-only model src is NULL and S is 0. Clears the self-attention cache. */
tfm_status tfm_decoder_start(tfm_decoder *d, const int32_t *src, int B, int S);

/* Feeds one token per row (tokens [B]) at the next position and computes
 * d->logits [B, V] for the token after it. */
tfm_status tfm_decoder_step(tfm_decoder *d, const int32_t *tokens);

/* The last step's logits [B, V], readable on the host: downloaded from a
 * device backend at the first call after a step (d->logits itself on the CPU). */
const float *tfm_decoder_logits(tfm_decoder *d);

/* out[B] (host) = each row's most likely next token after the last step,
 * never skip_a, skip_b or skip_c (-1: none), the lowest id on ties. Runs on
 * the backend: only B ids come back from a device. */
void tfm_decoder_argmax(tfm_decoder *d, int skip_a, int skip_b, int skip_c, int32_t *out);

/* Reorders the rows of every cache: new row r takes old row from[r] (beam
 * search). B may shrink to n_rows. When every block of g consecutive new rows
 * (g the length of the first block) holds one sentence, as beam search's
 * rows do, each block shares one slot of cross K/V (kv_group = g); otherwise
 * every row has its own (g = 1). */
tfm_status tfm_decoder_reorder(tfm_decoder *d, const int *from, int n_rows);

/* Greedy decoding of an encoder-decoder model: out [B, max_len] receives the
 * tokens after bos up to and including eos, then pad; lengths[B] the number of
 * tokens before eos (eos excluded). Stops when every row has emitted eos or
 * after max_len tokens. src [B, S] padded with pad_id. */
tfm_status tfm_greedy_translate(tfm_decoder *d, const int32_t *src, int B, int S, int max_len,
                                int32_t *out, int *lengths);

/* Greedy (temperature 0) or sampled continuation of decoder-only prompts
 * [B, P], left-padded with pad_id: out [B, max_new] receives the new tokens
 * (pad after eos); lengths[B] counts them before eos. temperature > 0 samples
 * from softmax(logits / temperature), restricted to the top_k most likely
 * tokens when top_k > 0, with randomness from seed. */
tfm_status tfm_generate(tfm_decoder *d, const int32_t *prompts, int B, int P, int max_new,
                        float temperature, int top_k, uint64_t seed, int32_t *out, int *lengths);

/* Greedy decoding WITHOUT the cache, by running the whole decoder on the
 * growing prefix at every step: the reference the cached decoder must equal
 * token for token. ws must hold B x S x max_len+1. */
tfm_status tfm_greedy_translate_uncached(const tfm_model *m, tfm_workspace *ws, const int32_t *src,
                                         int B, int S, int max_len, int32_t *out, int *lengths);

#endif
