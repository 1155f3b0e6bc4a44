/*
 * attention.c: scaled dot-product attention (paper 3.2.1), per head:
 *
 *   probs = softmax(Q K^T * scale + mask)      [Tq, Tk]   saved for backward
 *   out   = dropout(probs) V                   [Tq, dv]
 *
 *   q [B, Tq, H*dk]  k [B, Tk, H*dk]  v [B, Tk, H*dv]  out [B, Tq, H*dv]
 *   (all strided, see tfm_attn_dims)   probs, scratch [B, H, Tq, Tk]
 *
 * This is the reference version: it materialises the score matrix of each
 * (batch, head) pair and runs the products through tfm_gemm; pairs run in
 * parallel. Masked keys (padding, or the future when causal) get probability
 * exactly 0, and a row whose keys are all masked is all zeros, never NaN.
 */
#include "ops/ops.h"

#include <string.h>

#include "core/rng.h"
#include "core/status.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below about this much work (elements) a parallel region costs more than it
 * saves: a region costs microseconds, and decoding one sentence runs dozens
 * of ops over a single [1, D] row per token. Each element's arithmetic is
 * the same whether a loop runs in parallel or not, so results do not change. */
#ifndef PAR_MIN
#define PAR_MIN 16384
#endif

static int key_masked(const tfm_attn_dims *d, int b, int i, int j) {
    if (d->causal && j > i + d->q_offset) return 1;
    return d->key_pad && d->key_pad[(size_t)b * d->key_pad_stride + j];
}

/* Index of probs[b, h, i, 0] in the [B, H, Tq, Tk] layout. */
static size_t prob_offset(const tfm_attn_dims *d, int b, int h, int i) {
    return (((size_t)b * d->H + h) * d->Tq + i) * d->Tk;
}

/* W[i, j] = P[i, j] * keep / (1 - p), with the element index of probs. */
static void OPFN(apply_dropout)(real *W, const real *P, const tfm_attn_dims *d, int b, int h) {
    size_t base = prob_offset(d, b, h, 0), n = (size_t)d->Tq * d->Tk;
    real scale = (real)(1.0 / (1.0 - d->dropout));
#pragma omp simd
    for (size_t e = 0; e < n; e++)
        W[e] = tfm_rng_uniform(d->seed, d->stream, base + e) >= d->dropout ? P[e] * scale : 0;
}

/* A few queries per batch without dropout: a decoder step over its KV cache
 * (self-attention: Tq = 1, Tk = the tokens so far; cross-attention: Tq = the
 * beams of a sentence, Tk = its source length). The scores, the softmax and
 * the weighted sum of the values run as plain loops over [dk] and [dv] that
 * the compiler vectorises (the AVX-512 / AVX2 clones): the general path's two
 * tfm_gemm calls per (batch, head) are small BLAS calls whose fixed cost
 * outweighs their Tq * Tk * (dk + dv) multiply-adds (a few thousand).
 * A unit of work is one batch and heads [h0, h1) (with kv_rows, each key
 * from the batch the map names): its keys are read in key order, all heads of a key row before the next row, so that a batch's K and
 * V (a beam-search cache: 256 rows x 24 keys x 512 floats, per layer, far
 * from any cache) stream from memory in address order once instead of once
 * per head at a stride of the row. Units are the batches when there are
 * enough for the threads, else (batch, head) pairs; split evenly between the
 * threads, as each costs about the same. Same contract as below. */
#define FEW_QUERIES 8

/* sum_c x[c] y[c] in a vector of 64 bytes (GCC's vector extension: one zmm
 * in the AVX-512 clone, two or four registers elsewhere), its lanes then
 * added pairwise by halving. A plain `omp simd reduction` left GCC's last
 * step as 16 dependent scalar adds through memory: most of the time of a
 * 64-float dot. */
typedef real OPFN(vec64) __attribute__((vector_size(64)));
#define VEC_LANES ((int)(64 / sizeof(real)))

static inline __attribute__((always_inline)) real OPFN(dot)(const real *x, const real *y, int n) {
    OPFN(vec64) acc = {0};
    int c = 0;
    for (; c + VEC_LANES <= n; c += VEC_LANES) {
        OPFN(vec64) a, b;
        memcpy(&a, x + c, sizeof a);
        memcpy(&b, y + c, sizeof b);
        acc += a * b;
    }
    real sum = 0;
    for (; c < n; c++) sum += x[c] * y[c];
#if defined(TFM_OPS_F64)
    typedef double half __attribute__((vector_size(32)));
    typedef double quarter __attribute__((vector_size(16)));
    half h = __builtin_shufflevector(acc, acc, 0, 1, 2, 3) + __builtin_shufflevector(acc, acc, 4, 5, 6, 7);
    quarter q = __builtin_shufflevector(h, h, 0, 1) + __builtin_shufflevector(h, h, 2, 3);
    return sum + (q[0] + q[1]);
#else
    typedef float half __attribute__((vector_size(32)));
    typedef float quarter __attribute__((vector_size(16)));
    half h = __builtin_shufflevector(acc, acc, 0, 1, 2, 3, 4, 5, 6, 7) +
             __builtin_shufflevector(acc, acc, 8, 9, 10, 11, 12, 13, 14, 15);
    quarter q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return sum + ((q[0] + q[2]) + (q[1] + q[3]));
#endif
}

static inline __attribute__((always_inline)) void OPFN(few_queries_unit)(real *out, real *probs, const real *q,
                                                                          const real *k, const real *v,
                                                                          const tfm_attn_dims *d, int b, int h0,
                                                                          int h1, const int dk, const int dv) {
    int Tq = d->Tq, Tk = d->Tk;
    real scale = (real)d->scale;
    const int32_t *rows = d->kv_rows ? d->kv_rows + b * d->kv_rows_stride : NULL;
#define KV_BATCH(j) (rows ? (long)rows[j] : (long)b) /* the batch key j is read from */
    /* scores: P[b, h, i, j] for the visible keys */
    for (int j = 0; j < Tk; j++) {
        const real *Kj = k + KV_BATCH(j) * d->k_batch + (size_t)j * d->k_row;
        for (int i = 0; i < Tq; i++) {
            if (key_masked(d, b, i, j)) continue;
            const real *Qi = q + b * d->q_batch + i * d->q_row;
            for (int h = h0; h < h1; h++) {
                const real *Qh = Qi + (size_t)h * dk, *Kh = Kj + (size_t)h * dk;
                probs[prob_offset(d, b, h, i) + j] = OPFN(dot)(Qh, Kh, dk) * scale;
            }
        }
    }
    /* softmax over each (head, query) row; masked keys exactly 0 */
    for (int h = h0; h < h1; h++)
        for (int i = 0; i < Tq; i++) {
            real *P = probs + prob_offset(d, b, h, i);
            real mx = 0;
            int any = 0;
            for (int j = 0; j < Tk; j++) {
                if (key_masked(d, b, i, j)) continue;
                if (!any || P[j] > mx) mx = P[j];
                any = 1;
            }
            real sum = 0;
            for (int j = 0; j < Tk; j++) {
                real e = (any && !key_masked(d, b, i, j)) ? R_VEXP(P[j] - mx) : 0;
                P[j] = e;
                sum += e;
            }
            real inv = sum > 0 ? 1 / sum : 0;
            for (int j = 0; j < Tk; j++) P[j] *= inv;
            real *O = out + b * d->o_batch + i * d->o_row + (size_t)h * dv;
            for (int c = 0; c < dv; c++) O[c] = 0;
        }
    /* out[b, i, h] = sum_j P[b, h, i, j] V[b, j, h] */
    for (int j = 0; j < Tk; j++) {
        const real *Vj = v + KV_BATCH(j) * d->v_batch + (size_t)j * d->v_row;
        for (int i = 0; i < Tq; i++) {
            real *Oi = out + b * d->o_batch + i * d->o_row;
            for (int h = h0; h < h1; h++) {
                real p = probs[prob_offset(d, b, h, i) + j];
                if (p == 0) continue; /* masked: V may hold anything there */
                real *Oh = Oi + (size_t)h * dv;
                const real *Vh = Vj + (size_t)h * dv;
#pragma omp simd
                for (int c = 0; c < dv; c++) Oh[c] += p * Vh[c];
            }
        }
    }
#undef KV_BATCH
}

TFM_CLONES static void OPFN(attention_few_queries)(real *out, real *probs, const real *q, const real *k,
                                                    const real *v, const tfm_attn_dims *d) {
    int H = d->H, threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    int per_head = d->B < 2 * threads, units = per_head ? d->B * H : d->B;
#pragma omp parallel for schedule(static) if(units > 1 && (size_t)d->B * H * d->Tq * d->Tk * (d->dk + d->dv) >= 4 * PAR_MIN)
    for (int u = 0; u < units; u++) {
        int b = per_head ? u / H : u, h0 = per_head ? u % H : 0, h1 = per_head ? h0 + 1 : H;
        /* heads of 64 (the paper's base and big models) with the loop bounds
         * known: fully unrolled, no remainder loops */
        if (d->dk == 64 && d->dv == 64) OPFN(few_queries_unit)(out, probs, q, k, v, d, b, h0, h1, 64, 64);
        else OPFN(few_queries_unit)(out, probs, q, k, v, d, b, h0, h1, d->dk, d->dv);
    }
}

void OPFN(tfm_attention_forward)(real *out, real *probs, real *scratch, const real *q,
                                 const real *k, const real *v, const tfm_attn_dims *d) {
    if (d->Tq <= FEW_QUERIES && d->dropout <= 0) {
        OPFN(attention_few_queries)(out, probs, q, k, v, d);
        return;
    }
    TFM_ASSERT(!d->kv_rows);
    int BH = d->B * d->H;
#pragma omp parallel for schedule(dynamic, 1) if(BH > 1 && (size_t)BH * d->Tq * d->Tk * (d->dk + d->dv) >= 4 * PAR_MIN)
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / d->H, h = bh % d->H;
        const real *Q = q + b * d->q_batch + (size_t)h * d->dk;
        const real *K = k + b * d->k_batch + (size_t)h * d->dk;
        const real *V = v + b * d->v_batch + (size_t)h * d->dv;
        real *O = out + b * d->o_batch + (size_t)h * d->dv;
        real *P = probs + prob_offset(d, b, h, 0);
        OPFN(tfm_gemm)(0, 1, d->Tq, d->Tk, d->dk, (real)d->scale, Q, (int)d->q_row, K,
                       (int)d->k_row, 0, P, d->Tk);
        for (int i = 0; i < d->Tq; i++) {
            real *row = P + (size_t)i * d->Tk;
            real mx = 0;
            int any = 0;
            for (int j = 0; j < d->Tk; j++) {
                if (key_masked(d, b, i, j)) continue;
                if (!any || row[j] > mx) mx = row[j];
                any = 1;
            }
            real sum = 0;
            for (int j = 0; j < d->Tk; j++) {
                real e = (any && !key_masked(d, b, i, j)) ? R_VEXP(row[j] - mx) : 0;
                row[j] = e;
                sum += e;
            }
            real inv = sum > 0 ? 1 / sum : 0;
            for (int j = 0; j < d->Tk; j++) row[j] *= inv;
        }
        const real *A = P;
        if (d->dropout > 0) {
            real *W = scratch + prob_offset(d, b, h, 0);
            OPFN(apply_dropout)(W, P, d, b, h);
            A = W;
        }
        OPFN(tfm_gemm)(0, 0, d->Tq, d->dv, d->Tk, 1, A, d->Tk, V, (int)d->v_row, 0, O,
                       (int)d->o_row);
    }
}

void OPFN(tfm_attention_backward)(real *dq, real *dk, real *dv, real *scratch, const real *dout,
                                  const real *probs, const real *q, const real *k, const real *v,
                                  const tfm_attn_dims *d) {
    TFM_ASSERT(!d->kv_rows);
    int BH = d->B * d->H;
#pragma omp parallel for schedule(dynamic, 1) if(BH > 1 && (size_t)BH * d->Tq * d->Tk * (d->dk + d->dv) >= 4 * PAR_MIN)
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / d->H, h = bh % d->H;
        const real *Q = q + b * d->q_batch + (size_t)h * d->dk;
        const real *K = k + b * d->k_batch + (size_t)h * d->dk;
        const real *V = v + b * d->v_batch + (size_t)h * d->dv;
        const real *dO = dout + b * d->o_batch + (size_t)h * d->dv;
        real *dQ = dq + b * d->q_batch + (size_t)h * d->dk;
        real *dK = dk + b * d->k_batch + (size_t)h * d->dk;
        real *dV = dv + b * d->v_batch + (size_t)h * d->dv;
        const real *P = probs + prob_offset(d, b, h, 0);
        real *W = scratch + prob_offset(d, b, h, 0);
        int Tq = d->Tq, Tk = d->Tk;

        /* dV = dropout(P)^T dO */
        const real *A = P;
        if (d->dropout > 0) {
            OPFN(apply_dropout)(W, P, d, b, h);
            A = W;
        }
        OPFN(tfm_gemm)(1, 0, Tk, d->dv, Tq, 1, A, Tk, dO, (int)d->o_row, 0, dV, (int)d->v_row);

        /* dP = (dO V^T) through the dropout mask */
        OPFN(tfm_gemm)(0, 1, Tq, Tk, d->dv, 1, dO, (int)d->o_row, V, (int)d->v_row, 0, W, Tk);
        if (d->dropout > 0) OPFN(apply_dropout)(W, W, d, b, h);

        /* dS = P * (dP - sum_j dP P) * scale   (softmax backward; 0 where masked) */
        for (int i = 0; i < Tq; i++) {
            real *w = W + (size_t)i * Tk;
            const real *p = P + (size_t)i * Tk;
            real c = 0;
            for (int j = 0; j < Tk; j++) c += w[j] * p[j];
            for (int j = 0; j < Tk; j++) w[j] = p[j] * (w[j] - c) * (real)d->scale;
        }
        /* dQ = dS K;  dK = dS^T Q */
        OPFN(tfm_gemm)(0, 0, Tq, d->dk, Tk, 1, W, Tk, K, (int)d->k_row, 0, dQ, (int)d->q_row);
        OPFN(tfm_gemm)(1, 0, Tk, d->dk, Tq, 1, W, Tk, Q, (int)d->q_row, 0, dK, (int)d->k_row);
    }
}
