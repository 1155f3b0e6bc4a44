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

#include "core/rng.h"

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

void OPFN(tfm_attention_forward)(real *out, real *probs, real *scratch, const real *q,
                                 const real *k, const real *v, const tfm_attn_dims *d) {
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
