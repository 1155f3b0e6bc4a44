/*
 * ops.h: the reference CPU ops, each a forward/backward pair.
 *
 * Shape legend (used in every op file):
 *   N  rows (tokens: B*S or B*T)     D  d_model        F  d_ff
 *   B  batch     Tq/Tk query/key length     H heads    dk/dv sizes per head
 *   V  vocabulary     P  positions
 * Everything is row-major and contiguous unless a stride says otherwise.
 *
 * Each op exists as float (tfm_<op>) and as double (tfm_<op>_f64); the double
 * build is for finite-difference checks. Backward contracts say whether a
 * gradient is written (=) or accumulated (+=): parameter gradients always
 * accumulate, which gives gradient accumulation across micro-batches for free.
 */
#ifndef TFM_OPS_H
#define TFM_OPS_H

#include <stddef.h>
#include <stdint.h>

typedef enum tfm_act_kind { TFM_OP_RELU = 0, TFM_OP_GELU = 1 } tfm_act_kind;

/* Scaled dot-product attention over strided Q, K, V (see attention.c).
 * q[b, t, h*dk + i] lives at q + b*q_batch + t*q_row + h*dk + i; likewise k, v
 * and out (with dv). */
typedef struct tfm_attn_dims {
    int B, H, Tq, Tk, dk, dv;
    long q_row, q_batch, k_row, k_batch, v_row, v_batch, o_row, o_batch;
    int causal;               /* key j visible to query i only if j <= i + q_offset */
    int q_offset;
    const uint8_t *key_pad;   /* [B, key_pad_stride]: 1 = key masked; NULL = none */
    long key_pad_stride;
    /* NULL, or [B, kv_rows_stride]: key j of batch b is read from batch
     * kv_rows[b * kv_rows_stride + j] of k and v (the key mask stays batch
     * b's). A beam search whose cache rows never move: each row's history is
     * a map of the rows its keys were written to. Only tfm_attention_forward
     * with Tq <= 8 and no dropout reads it (the CPU decoder's step); every
     * other attention op requires NULL. */
    const int32_t *kv_rows;
    long kv_rows_stride;
    double scale;             /* usually 1/sqrt(dk) */
    float dropout;            /* on the probabilities */
    uint64_t seed, stream;    /* dropout randomness (core/rng.h) */
    /* NULL, or the keep of the linear that reads the output next
     * (backend.h: linear_keep_bytes(B*Tq, H*dv, n_out) bytes): a backend's
     * tiled forward may also write into it the form of out that
     * linear_forward_keep would (CUDA's bf16 kernels) and says so. */
    void *out_keep;
} tfm_attn_dims;

/* Elements of scratch the tiled attention ops need for d's sizes (B, H, Tq,
 * Tk, dk, dv) with up to omp_get_max_threads() threads (attention_tiled.c). */
size_t tfm_attention_tiled_scratch(const tfm_attn_dims *d);

/* One Adam/AdamW update's scalars, rounded as PyTorch rounds them
 * (src/train/optim.c prepares them; see optim.h for the formulas):
 *   AdamW: w *= decay;  Adam: g += l2 * w
 *   m = one_minus_beta1*g + beta1*m;  v = one_minus_beta2*g*g + beta2*v
 *   w += neg_step * m / (sqrt(v) / bc2_sqrt + eps) */
typedef struct tfm_adam_coefs {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, eps;
    float neg_step;   /* -lr / (1 - beta1^step) */
    float bc2_sqrt;   /* sqrt(1 - beta2^step) */
    float decay;      /* AdamW: 1 - lr * weight_decay */
    float l2;         /* Adam: weight_decay */
    int adamw;
} tfm_adam_coefs;

/* Optimizer ops over a flat buffer x[n] (float only; src/ops/adam.c).
 * tfm_global_norm: sqrt(sum x^2), accumulated in double in an order fixed by n.
 * tfm_scale: x *= s.  tfm_add: y += x.
 * tfm_adam_update: param, m, v updated in place from grad (no aliasing). */
float tfm_global_norm(const float *x, size_t n);
void tfm_scale(float *x, size_t n, float s);
void tfm_add(float *y, const float *x, size_t n);
void tfm_adam_update(const tfm_adam_coefs *c, float *param, const float *grad, float *m, float *v,
                     size_t n);
/* clip_grad_norm_'s coefficient: max_norm / (norm + 1e-6) in float32, where
 * PyTorch's float / tensor is tensor.reciprocal() * float. */
static inline float tfm_clip_coef(float norm, float max_norm) { return (1.0f / (norm + 1e-6f)) * max_norm; }
/* The trainer's update given the gradient norm: when norm is not finite,
 * nothing (one bad batch must not poison the moments); otherwise, when
 * clip_norm > 0 and coef = tfm_clip_coef(norm, clip_norm) < 1, grad *= coef,
 * then tfm_adam_update. */
void tfm_adam_update_clipped(const tfm_adam_coefs *c, float *param, float *grad, float *m, float *v, size_t n,
                             float norm, float clip_norm);

/* Beam search's candidates (float only; src/ops/xent.c): for each row n of
 * x[N, V], the k ids with the largest x[n, v] over v != skip_a, skip_b,
 * skip_c (-1: none), best first, the lower id first on ties, in ids[n, 0..k), and their
 * log-probabilities x[n, v] - logsumexp(x[n, :]) in vals[n, 0..k) (the values
 * tfm_log_softmax gives). k <= V minus the skipped ids. */
void tfm_topk_logprobs(int32_t *ids, float *vals, const float *x, int N, int V, int k, int skip_a, int skip_b,
                       int skip_c);

#ifdef TFM_OPS_F64
#define TFM_OPS_H_WAS_F64
#undef TFM_OPS_F64
#endif
#include "ops/real.h"
#include "ops/ops_decl.h"
#define TFM_OPS_F64
#include "ops/real.h"
#include "ops/ops_decl.h"
#ifndef TFM_OPS_H_WAS_F64
#undef TFM_OPS_F64
#endif
#undef TFM_OPS_H_WAS_F64
#include "ops/real.h"

#endif
