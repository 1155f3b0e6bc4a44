/*
 * model.h: the Transformer model, its activations, and the forward/backward
 * written once as an explicit sequence of layer calls.
 *
 * A tfm_model is immutable after init (config, parameters, derived tables) and
 * may be shared by many threads; a tfm_workspace holds one run's activations
 * and scratch, sized once for a maximum batch shape, so a training step never
 * allocates.
 *
 * Shapes: B batch, S source length, T target length, L the length of the
 * stack at hand (S for the encoder, T for the decoder), N = B*L rows,
 * D d_model, H heads, dk/dv sizes per head, F d_ff, V output vocabulary.
 */
#ifndef TFM_MODEL_MODEL_H
#define TFM_MODEL_MODEL_H

#include <stdint.h>

#include "backend/backend.h"
#include "model/params.h"
#include "transformer.h"

typedef struct tfm_model {
    tfm_config cfg;            /* validated */
    int dk, dv;                /* per head, defaults resolved */
    int qkv_dim;               /* H * (2*dk + dv): rows of in_proj_weight */
    tfm_layout layout;
    float *params;             /* [layout.n_params], the backend's memory */
    tfm_weights w;             /* views into params */
    float *pos_table;          /* [P, D] sinusoidal positions (backend memory), or NULL */
    const tfm_backend *be;     /* where the parameters live and the ops run */
} tfm_model;

/* Validates cfg, allocates the parameters and initialises them from `seed`:
 * xavier_uniform for matrices (as nn.Transformer), normal(0, D^-0.5) for
 * embeddings and learned positions, LayerNorm 1/0, biases 0. */
tfm_status tfm_model_init(tfm_model *m, const tfm_config *cfg, uint64_t seed);
void tfm_model_free(tfm_model *m);

/* Moves a model's parameters to backend `be` (a no-op when they are there):
 * allocates them there, uploads, frees the old copy. Workspaces, trainers and
 * decoders made afterwards live on `be` too. On failure the model is
 * unchanged. */
tfm_status tfm_model_to_backend(tfm_model *m, const tfm_backend *be);

/* Parameters to and from a host buffer of layout.n_params floats. */
void tfm_model_get_params(const tfm_model *m, float *host);
void tfm_model_set_params(tfm_model *m, const float *host);

/* One batch. Token matrices are row-major and padded with cfg.pad_id.
 *   encoder-decoder: src [B,S], tgt_in [B,T] (starts with bos), targets [B,T]
 *   decoder-only:    tgt_in [B,T], targets [B,T]           (src NULL, S = 0)
 *   encoder-only:    src [B,S], targets [B,S]              (tgt_in NULL, T = 0)
 * targets may be NULL for a forward without loss. */
typedef struct tfm_batch {
    int B, S, T;
    const int32_t *src;
    const int32_t *tgt_in;
    const int32_t *targets;
} tfm_batch;

/* Activations of one sublayer block: the LayerNorm output and statistics, and
 * the residual sum. Post-LN: out = ln = LN(x + dropout(f(x))), res is the LN
 * input. Pre-LN: ln = LN(x), out = res = x + dropout(f(ln)). */
typedef struct tfm_block_acts {
    float *ln, *mean, *rstd;   /* [N, D], [N], [N] */
    float *res;                /* [N, D] */
} tfm_block_acts;

typedef struct tfm_layer_acts {
    tfm_block_acts self, cross, ffn;
    float *qkv;                /* [N, H*(2dk+dv)] self-attention q|k|v (q, k rotated with rope) */
    float *probs;              /* [B, H, L, L] self-attention probabilities (full attention) */
    float *lse;                /* [B, H, L] their rows' log-sum-exp (tiled attention) */
    float *att;                /* [N, H*dv] heads concatenated */
    float *cq;                 /* [N, H*dk] cross-attention queries */
    float *ckv;                /* [B*S, H*(dk+dv)] cross-attention keys|values */
    float *cprobs;             /* [B, H, T, S] (full attention) */
    float *clse;               /* [B, H, T] (tiled attention) */
    float *catt;               /* [N, H*dv] */
    float *ffn_h;              /* [N, F] before the activation */
    float *ffn_a;              /* [N, F] after activation and dropout */
    /* The attention linears' kept inputs (backend.h, linear_forward_keep):
     * backend-format copies of x (q|k|v and cross q), att, memory (cross
     * k|v) and catt for the backward's weight gradients; empty on the CPU. */
    void *keep_qkv, *keep_att, *keep_cq, *keep_ckv, *keep_catt;
} tfm_layer_acts;

typedef struct tfm_stack_acts {
    float *embed;              /* [N, D] embeddings * scale + positions, after dropout */
    tfm_layer_acts *layers;
    tfm_block_acts final;      /* pre-LN: the stack's final LayerNorm */
    const float *out;          /* [N, D] the stack's output (points into the above) */
} tfm_stack_acts;

/* How a workspace runs attention. FULL keeps each layer's probabilities
 * [B, H, Tq, Tk] for the backward (and for tfm_workspace_attention); TILED
 * keeps only each query row's log-sum-exp and recomputes the probabilities a
 * tile at a time in the backward, so memory grows linearly with length. AUTO
 * takes TILED where the backend runs it faster (attention_tiled_preferred)
 * or where sequences reach TFM_TILED_MIN_LEN tokens, FULL otherwise; the
 * environment variable TFM_ATTENTION=full|tiled overrides AUTO. */
typedef enum tfm_attention_mode {
    TFM_ATTENTION_AUTO = 0,
    TFM_ATTENTION_FULL = 1,
    TFM_ATTENTION_TILED = 2,
} tfm_attention_mode;
#define TFM_TILED_MIN_LEN 512

typedef struct tfm_workspace {
    int max_B, max_S, max_T;   /* capacity */
    int attn_tiled;            /* 1: tiled attention (lse, clse), 0: full (probs, cprobs) */
    long max_src_cells;        /* capacity in source rows B*S (<= max_B*max_S) */
    long max_tgt_cells;        /* capacity in target rows B*T (<= max_B*max_T) */
    int B, S, T;               /* shape of the last forward */
    int training;              /* the last forward applied dropout */
    uint64_t seed;             /* dropout seed of the last forward */
    const tfm_backend *be;     /* the model's backend: every array below is its memory */
    float *mem;                /* the one allocation everything below points into */
    tfm_stack_acts enc, dec;
    int32_t *src_ids, *tgt_ids;   /* [B, S], [B, T]: the batch's tokens (src, tgt_in) */
    int32_t *targets;             /* [B, L]: the batch's targets */
    uint8_t *src_pad, *tgt_pad;   /* [B, S], [B, T]: 1 where the token is pad */
    int32_t *src_pos, *tgt_pos;   /* [B*S], [B*T]: position of each row */
    void *stage;               /* host staging for the above (not backend memory) */
    float *logits;             /* [B*L, V]; becomes dlogits in the backward */
    int logits_packed;         /* logits are logits_loss_forward's (the backend's format, loss_acc set) */
    int has_targets;           /* the staged batch has targets (uploaded into `targets`) */
    float *lse;                /* [B*L] log-sum-exp of each row of logits */
    /* forward/backward scratch */
    float *proj;               /* [N, D] a block's branch output / its gradient */
    float *g0, *g1, *gtmp;     /* [N, D] gradient ping-pong and temporary */
    float *datt;               /* [N, H*dv] */
    float *dqkv;               /* [N, H*(2dk+dv)] */
    float *dprobs;             /* attention scratch: [B, H, L, L] (full) or attn_scratch_len floats (tiled) */
    size_t attn_scratch_len;
    float *dffn;               /* [N, F] */
    float *dmem;               /* [B*S, D] gradient of the encoder output */
    float *dckv;               /* [B*S, H*(dk+dv)] */
    double loss_sum;           /* summed label-smoothed loss of the last forward (loss_acc NULL) */
    long n_tokens;             /* non-pad targets of the last forward */
    /* NULL: the forward brings its loss to the host, into loss_sum (it waits
     * for the GPU). Otherwise one double of backend memory the forward adds
     * its summed loss to, without waiting (the trainer's: one download per
     * step, at its end); loss_sum is then left 0. Set by the caller. */
    double *loss_acc;
} tfm_workspace;

/* Allocates activations for batches up to max_B x max_S (source) and
 * max_B x max_T (target); zero lengths where the model has no such stack. */
tfm_status tfm_workspace_init(tfm_workspace *ws, const tfm_model *m, int max_B, int max_S,
                              int max_T);
/* The same, for batches of at most max_src_cells source tokens (B*S) and
 * max_tgt_cells target tokens (B*T), padding included: token-count batching
 * has many short rows or few long ones, never both, so this is much smaller
 * than max_B x max_S x max_T. 0 = no limit beyond max_B x max_S / max_T. */
tfm_status tfm_workspace_init_cells(tfm_workspace *ws, const tfm_model *m, int max_B, int max_S, int max_T,
                                    long max_src_cells, long max_tgt_cells);
/* The same, with the attention mode spelled out (init_cells: AUTO).
 * TILED fails (TFM_ERR_INVALID) on a backend without tiled attention. */
tfm_status tfm_workspace_init_mode(tfm_workspace *ws, const tfm_model *m, int max_B, int max_S, int max_T,
                                   long max_src_cells, long max_tgt_cells, tfm_attention_mode mode);
void tfm_workspace_free(tfm_workspace *ws);

/* Checks a batch against the model and the workspace: shapes, token ids in
 * range, lengths within max_positions. The message names the tensor, the
 * position and the value. */
tfm_status tfm_batch_check(const tfm_model *m, const tfm_workspace *ws, const tfm_batch *b);

/* Forward pass. training != 0 applies dropout with randomness from `seed`.
 * Fills ws->logits [B*L, V] and, when b->targets is set, ws->loss_sum (or
 * *ws->loss_acc) and ws->n_tokens (mean loss = loss_sum / n_tokens). */
tfm_status tfm_model_forward(const tfm_model *m, tfm_workspace *ws, const tfm_batch *b,
                             int training, uint64_t seed);

/* tfm_model_forward in two halves. tfm_model_stage checks the batch and does
 * the forward's host work: the token ids, padding masks, positions and
 * targets uploaded, the target count (ws->n_tokens, where ws->loss_acc is
 * set), the parameters' low-precision copy made current (params_lowp).
 * tfm_model_forward_staged then queues the forward of the staged batch on
 * the device: with ws->loss_acc set, nothing but ops that neither copy
 * between host and device nor wait, which a backend may record
 * (backend.h: graph_begin; the trainer's recorded steps). */
tfm_status tfm_model_stage(const tfm_model *m, tfm_workspace *ws, const tfm_batch *b, int training,
                           uint64_t seed);
void tfm_model_forward_staged(const tfm_model *m, tfm_workspace *ws);

/* Backward pass of the last forward (same batch; targets required).
 * Accumulates (+=) parameter gradients into `grads` (views of a buffer laid
 * out like the parameters). The loss being differentiated is
 * grad_scale * loss_sum; pass 1/n_tokens for the mean over tokens, or
 * 1/(tokens of all micro-batches) when accumulating. ws->logits is
 * overwritten. */
tfm_status tfm_model_backward(const tfm_model *m, tfm_workspace *ws, const tfm_batch *b,
                              const tfm_weights *grads, float grad_scale);

/* Runs only the encoder (no dropout) on src [B, S]; the output is ws->enc.out
 * [B*S, D] and the padding mask ws->src_pad [B, S]. For decoding. */
tfm_status tfm_model_encode(const tfm_model *m, tfm_workspace *ws, const int32_t *src, int B, int S);

typedef enum tfm_attn_kind {
    TFM_ATTN_ENCODER = 0,  /* encoder self-attention */
    TFM_ATTN_DECODER = 1,  /* decoder (masked) self-attention */
    TFM_ATTN_CROSS = 2,    /* decoder-encoder cross-attention */
} tfm_attn_kind;

/* The attention probabilities of one layer from the last forward,
 * [B, H, Tq, Tk] (before attention dropout), in the backend's memory (read
 * them directly only when model->be->host_memory); *Tq and *Tk receive the lengths.
 * NULL when the model has no such attention or layer is out of range, or
 * when the workspace runs tiled attention (it keeps no probabilities). */
const float *tfm_workspace_attention(const tfm_model *m, const tfm_workspace *ws, tfm_attn_kind kind,
                                     int layer, int *Tq, int *Tk);

#endif
