/*
 * attention_tiled.c: scaled dot-product attention without the [Tq, Tk]
 * probabilities (memory-efficient, "flash-style"), forward and backward.
 *
 *   q [B, Tq, H*dk]  k [B, Tk, H*dk]  v [B, Tk, H*dv]  out [B, Tq, H*dv]
 *   (all strided, see tfm_attn_dims)   lse [B, H, Tq]
 *   scratch: one slot of 2*BR*Tk reals per thread (two [BR, Tk] tiles)
 *
 * The function is tfm_attention_forward/backward's (attention.c is the
 * specification: the same masks, the same dropout elements, zero output and
 * zero gradients for a query that sees no key); only the memory differs.
 *
 * Tile shape: each (batch, head) pair's queries go in blocks of up to BR
 * rows against whole key rows, so a block's scores S [BR, Tk] are one tile,
 * softmaxed exactly in two passes (max, then sum) as the reference does: no
 * online rescaling, the same arithmetic, one GEMM per product per block. The
 * alternative, key tiles of Bc with an online softmax, would make the
 * scratch independent of Tk. Measured on 2 threads: OpenBLAS runs the
 * 128 x Bc x 64 products about as fast for Bc = 64..512 as for Bc = Tk, and a
 * backward split into key tiles of 512 was 1-2% faster at T = 2048 and 10%
 * at T = 4096 (7% of forward + backward). Not taken: the forward would need
 * the online softmax (output rows rescaled per key tile, rounded unlike the
 * reference) for a gain seen only past T = 2048. Memory is linear in length
 * either way, which is the point.
 * Masked scores become -INFINITY in the tile (padding, the causal future),
 * so the row loops test one float and vectorise.
 *
 * Work skipped (not computed, never a change in results): a block stops at
 * the last key its last query may see (causal), and at the last unpadded key
 * of its batch row, so causal self-attention does about half the reference's
 * products.
 *
 * Parallelism and determinism: the forward runs (pair, block) tasks, each
 * writing its own rows of out and lse. The backward runs whole pairs, one per
 * thread, so that dK and dV (summed over the pair's query blocks, in block
 * order) have one writer; a single pair (B*H = 1) runs on one thread.
 * Every element's arithmetic is the same on any thread and any thread count,
 * so results do not depend on either, with one caveat shared by every GEMM
 * in the library: where an op runs on one thread (one slot of scratch, a
 * single pair, or too little work for a parallel region), OpenBLAS may
 * thread a large product itself, and its partitions can round differently
 * from its one-thread run (seen in double with 3 threads, at 1e-16).
 */
#include "ops/ops.h"

#include "core/rng.h"
#include "core/status.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below about this much work (elements) a parallel region costs more than it
 * saves (as in attention.c). */
#ifndef PAR_MIN
#define PAR_MIN 16384
#endif

/* Query rows per block. Measured (2 threads, H = 8, dk = dv = 64, forward +
 * backward): 128 is 5-8% faster than 64 at T = 1024..4096 (the backward's
 * dK, dV products have K = rows per block, and each block reads and writes
 * all of dK and dV), 256 no faster than 128, 32 and 16 20-50% slower. The two
 * [128, Tk] tiles of a slot take 1 KiB per key: L2-sized up to Tk ~ 1024. */
#ifndef TILED_BR
#define TILED_BR 128
#endif

/* Reals of one thread's slot for blocks of br rows: the score / probability
 * tile [br, Tk] and the dP / dS tile [br, Tk] of the backward (the forward
 * uses the first). */
static size_t tiled_slot(int br, int Tk) { return 2 * (size_t)br * (size_t)(Tk > 0 ? Tk : 1); }

static int tiled_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int tiled_thread(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* How the ops use scratch_len reals: returns the thread count (at most the
 * slots that fit) and sets *br, the rows per block. One full slot is the
 * documented minimum. With less (a caller's bug), the ops still compute the
 * right answer, on one thread with blocks of as many rows as fit (results may
 * then differ from the full-slot ones in the last bits); with not even a
 * one-row slot they abort through TFM_ASSERT rather than run off the end. */
static int tiled_plan(size_t scratch_len, int Tk, int *br) {
    size_t slot = tiled_slot(TILED_BR, Tk), fit = scratch_len / slot;
    *br = TILED_BR;
    if (fit >= 1) {
        int max_threads = tiled_max_threads();
        return fit < (size_t)max_threads ? (int)fit : max_threads;
    }
    size_t rows = scratch_len / tiled_slot(1, Tk);
    TFM_ASSERT(rows >= 1 && "attention_tiled: scratch smaller than one row's tiles");
    *br = (int)rows;
    return 1;
}

/* Dropout keeps element `index` iff tfm_rng_uniform(seed, stream, index) >= p
 * (apply_dropout in attention.c). That uniform is exactly (bits >> 40) / 2^24
 * (core/rng.h), so the test is (bits >> 40) >= ceil(p * 2^24) on integers:
 * the same elements, and a loop that vectorises (the float conversion of a
 * 64-bit integer does not without AVX-512DQ). The tests compare the dropped
 * elements with the reference's, so a change to the generator shows there. */
static uint32_t tiled_keep_min(float p) { return (uint32_t)ceil((double)p * 16777216.0); }

static inline int tiled_keep(uint64_t seed, uint64_t stream, uint64_t index, uint32_t keep_min) {
    return (uint32_t)(tfm_rng_u64(seed, stream, index) >> 40) >= keep_min;
}

/* Keys past the last unpadded key of batch row b are masked for every query:
 * the ops stop there. 0 when every key is padding. */
static int tiled_key_end(const tfm_attn_dims *d, int b) {
    int end = d->Tk;
    if (d->key_pad) {
        const uint8_t *m = d->key_pad + (size_t)b * d->key_pad_stride;
        while (end > 0 && m[end - 1]) end--;
    }
    return end;
}

/* Query i may see only keys j < tiled_row_end(...) (a bound: padding inside
 * the range is masked separately); <= 0 means none. */
static int tiled_row_end(const tfm_attn_dims *d, int key_end, int i) {
    if (d->causal) {
        long lim = (long)i + d->q_offset + 1;
        if (lim < key_end) return lim < 0 ? 0 : (int)lim;
    }
    return key_end;
}

/* Row stride of a block's tiles [nr, kl]: kl rounded up to 16 reals where
 * the slot's half has room, so that the exp loops run whole vectors (GCC 12
 * finishes a loop's last kl % 16 elements one at a time: at kl = 24, a third
 * of the exps, and 10% of the training shape's attention time). The extra
 * columns are masked like padded keys, and no product reads them. */
static int tiled_ld(int nr, int kl, int br, int Tk) {
    int ld = (kl + 15) / 16 * 16;
    return (size_t)nr * ld <= (size_t)br * Tk ? ld : kl;
}

/* Every masked entry of a block's scores S [nr, ld] (rows i0.., keys 0..kl,
 * then up to ld the stride's padding) becomes -INFINITY: padded keys'
 * columns, each row's future (causal), the columns past kl. The row loops
 * below then test one float per entry instead of mask bytes and per-row
 * bounds, and vectorise. Padding goes a column at a time: one pass over the
 * mask for the block, and only padded columns are written. */
static inline __attribute__((always_inline)) void OPFN(tiled_mask)(real *S, int nr, int kl, int ld, int i0,
                                                                  int key_end, const uint8_t *pad,
                                                                  const tfm_attn_dims *d) {
    if (pad)
        for (int j = 0; j < kl; j++)
            if (pad[j])
                for (int r = 0; r < nr; r++) S[(size_t)r * ld + j] = -INFINITY;
    for (int r = 0; r < nr; r++) {
        int end = d->causal ? tiled_row_end(d, key_end, i0 + r) : kl;
        for (int j = end; j < ld; j++) S[(size_t)r * ld + j] = -INFINITY;
    }
}

/* One row of masked scores s[0, n) (tiled_mask) becomes probabilities in
 * place, exactly 0 where masked. The reference's arithmetic: e = exp(s - max),
 * p = e * (1 / sum e). Returns the row's log-sum-exp, -INFINITY when every
 * key is masked (then the row is all zeros). Inlined so that it takes its
 * caller's AVX-512 / AVX2 clone. */
static inline __attribute__((always_inline)) real OPFN(tiled_softmax_row)(real *s, int n) {
    real mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    if (mx == -INFINITY) { /* every key masked (scores of finite inputs are finite) */
        for (int j = 0; j < n; j++) s[j] = 0;
        return -INFINITY;
    }
    real sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        real e = R_VEXP(s[j] - mx); /* fast_expf(-inf) is not 0: masked next */
        e = s[j] == -INFINITY ? 0 : e;
        s[j] = e;
        sum += e;
    }
    real inv = 1 / sum; /* sum >= 1: the maximum contributes exp(0) */
#pragma omp simd
    for (int j = 0; j < n; j++) s[j] *= inv;
    return mx + R_LOG(sum);
}

TFM_CLONES void OPFN(tfm_attention_tiled_forward)(real *out, real *lse, real *scratch, size_t scratch_len,
                                                  const real *q, const real *k, const real *v,
                                                  const tfm_attn_dims *d) {
    TFM_ASSERT(!d->kv_rows); /* the decoder's row map: attention.c only */
    int br, nt = tiled_plan(scratch_len, d->Tk, &br);
    size_t slot = tiled_slot(br, d->Tk);
    int Tq = d->Tq, Tk = d->Tk, nblk = (Tq + br - 1) / br;
    long tasks = (long)d->B * d->H * nblk;
    size_t work = (size_t)d->B * d->H * Tq * Tk * (d->dk + d->dv);
    real drop_scale = (real)(1.0 / (1.0 - d->dropout));
    uint32_t keep_min = tiled_keep_min(d->dropout);
    (void)nt, (void)work; /* read by OpenMP only */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if(nt > 1 && tasks > 1 && work >= 4 * PAR_MIN)
    for (long t = 0; t < tasks; t++) {
        int bh = (int)(t / nblk), b = bh / d->H, h = bh % d->H;
        int i0 = (int)(t % nblk) * br, nr = Tq - i0 < br ? Tq - i0 : br;
        real *S = scratch + slot * tiled_thread(); /* [nr, kl], row stride ld */
        const real *Q = q + b * d->q_batch + (size_t)i0 * d->q_row + (size_t)h * d->dk;
        const real *K = k + b * d->k_batch + (size_t)h * d->dk;
        const real *V = v + b * d->v_batch + (size_t)h * d->dv;
        real *O = out + b * d->o_batch + (size_t)i0 * d->o_row + (size_t)h * d->dv;
        real *L = lse + (size_t)bh * Tq + i0;
        const uint8_t *pad = d->key_pad ? d->key_pad + (size_t)b * d->key_pad_stride : NULL;
        int key_end = tiled_key_end(d, b);
        int kl = tiled_row_end(d, key_end, i0 + nr - 1); /* keys the block may see */
        if (kl <= 0) {
            for (int r = 0; r < nr; r++) {
                L[r] = -INFINITY;
                for (int e = 0; e < d->dv; e++) O[(size_t)r * d->o_row + e] = 0;
            }
            continue;
        }
        int ld = tiled_ld(nr, kl, br, Tk);
        /* S = scale * Q K^T   [nr, kl] */
        OPFN(tfm_gemm)(0, 1, nr, kl, d->dk, (real)d->scale, Q, (int)d->q_row, K, (int)d->k_row, 0, S, ld);
        OPFN(tiled_mask)(S, nr, kl, ld, i0, key_end, pad, d);
        for (int r = 0; r < nr; r++) L[r] = OPFN(tiled_softmax_row)(S + (size_t)r * ld, ld);
        if (d->dropout > 0) {
            /* element (b, h, i, j) of the [B, H, Tq, Tk] layout, as apply_dropout */
            for (int r = 0; r < nr; r++) {
                real *s = S + (size_t)r * ld;
                uint64_t base = ((uint64_t)bh * Tq + i0 + r) * Tk;
#pragma omp simd
                for (int j = 0; j < kl; j++)
                    s[j] = tiled_keep(d->seed, d->stream, base + j, keep_min) ? s[j] * drop_scale : 0;
            }
        }
        /* O = dropout(P) V   [nr, dv] */
        OPFN(tfm_gemm)(0, 0, nr, d->dv, kl, 1, S, ld, V, (int)d->v_row, 0, O, (int)d->o_row);
    }
}

/* Rows [j0, j1) of one head's dK (dk wide) and dV (dv wide) become 0. */
static void OPFN(tiled_zero_rows)(real *dK, real *dV, int j0, int j1, const tfm_attn_dims *d) {
    for (int j = j0; j < j1; j++) {
        for (int e = 0; e < d->dk; e++) dK[(size_t)j * d->k_row + e] = 0;
        for (int e = 0; e < d->dv; e++) dV[(size_t)j * d->v_row + e] = 0;
    }
}

TFM_CLONES void OPFN(tfm_attention_tiled_backward)(real *dq, real *dk, real *dv, real *scratch,
                                                   size_t scratch_len, const real *dout, const real *out,
                                                   const real *lse, const real *q, const real *k,
                                                   const real *v, const tfm_attn_dims *d) {
    TFM_ASSERT(!d->kv_rows); /* the decoder's row map: attention.c only */
    int br, nt = tiled_plan(scratch_len, d->Tk, &br);
    size_t slot = tiled_slot(br, d->Tk);
    int BH = d->B * d->H, Tq = d->Tq, Tk = d->Tk;
    size_t work = (size_t)BH * Tq * Tk * (d->dk + d->dv);
    real scale = (real)d->scale, drop_scale = (real)(1.0 / (1.0 - d->dropout));
    uint32_t keep_min = tiled_keep_min(d->dropout);
    (void)nt, (void)work; /* read by OpenMP only */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if(nt > 1 && BH > 1 && work >= 4 * PAR_MIN)
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / d->H, h = bh % d->H;
        real *P = scratch + slot * tiled_thread(); /* [nr, kl] (stride ld): P, then dropout(P) */
        real *G = P + (size_t)br * (Tk > 0 ? Tk : 1); /* [nr, kl] (stride ld): dP, then dS */
        const real *Q = q + b * d->q_batch + (size_t)h * d->dk;
        const real *K = k + b * d->k_batch + (size_t)h * d->dk;
        const real *V = v + b * d->v_batch + (size_t)h * d->dv;
        const real *O = out + b * d->o_batch + (size_t)h * d->dv;
        const real *dO = dout + b * d->o_batch + (size_t)h * d->dv;
        real *dQ = dq + b * d->q_batch + (size_t)h * d->dk;
        real *dK = dk + b * d->k_batch + (size_t)h * d->dk;
        real *dV = dv + b * d->v_batch + (size_t)h * d->dv;
        const uint8_t *pad = d->key_pad ? d->key_pad + (size_t)b * d->key_pad_stride : NULL;
        int key_end = tiled_key_end(d, b);

        /* dK, dV sum over the query blocks. A block sees keys [0, kl), kl not
         * decreasing from block to block, so the first block that sees any
         * writes its rows (beta = 0) and clears the rest, which later blocks
         * add to; keys that no block sees stay 0. */
        int first = 1;
        for (int i0 = 0; i0 < Tq; i0 += br) {
            int nr = Tq - i0 < br ? Tq - i0 : br;
            int kl = tiled_row_end(d, key_end, i0 + nr - 1);
            const real *Qb = Q + (size_t)i0 * d->q_row, *Ob = O + (size_t)i0 * d->o_row;
            const real *dOb = dO + (size_t)i0 * d->o_row;
            real *dQb = dQ + (size_t)i0 * d->q_row;
            const real *L = lse + (size_t)bh * Tq + i0;
            if (kl <= 0) {
                for (int r = 0; r < nr; r++)
                    for (int e = 0; e < d->dk; e++) dQb[(size_t)r * d->q_row + e] = 0;
                continue;
            }
            int ld = tiled_ld(nr, kl, br, Tk);
            /* P = scale * Q K^T (exponentiated below);  dP = dO V^T   both [nr, kl] */
            OPFN(tfm_gemm)(0, 1, nr, kl, d->dk, scale, Qb, (int)d->q_row, K, (int)d->k_row, 0, P, ld);
            OPFN(tfm_gemm)(0, 1, nr, kl, d->dv, 1, dOb, (int)d->o_row, V, (int)d->v_row, 0, G, ld);
            OPFN(tiled_mask)(P, nr, kl, ld, i0, key_end, pad, d);
            for (int r = 0; r < nr; r++) {
                real *p = P + (size_t)r * ld, *g = G + (size_t)r * ld, l = L[r];
                /* P = exp(s - lse), exactly 0 where masked (all of a row that sees no key) */
                if (l == -INFINITY) {
                    for (int j = 0; j < kl; j++) p[j] = 0;
                } else {
#pragma omp simd
                    for (int j = 0; j < ld; j++) {
                        real e = R_VEXP(p[j] - l);
                        p[j] = p[j] == -INFINITY ? 0 : e;
                    }
                }
                /* delta = dO . O = sum_j P dP through the dropout mask (O = dropout(P) V) */
                real delta = 0;
                const real *o = Ob + (size_t)r * d->o_row, *go = dOb + (size_t)r * d->o_row;
#pragma omp simd reduction(+ : delta)
                for (int e = 0; e < d->dv; e++) delta += go[e] * o[e];
                /* dS = P * (dropout(dP) - delta) * scale;  P becomes dropout(P) for dV */
                if (d->dropout > 0) {
                    uint64_t base = ((uint64_t)bh * Tq + i0 + r) * Tk;
#pragma omp simd
                    for (int j = 0; j < kl; j++) {
                        real m = tiled_keep(d->seed, d->stream, base + j, keep_min) ? drop_scale : 0;
                        g[j] = p[j] * (g[j] * m - delta) * scale;
                        p[j] *= m;
                    }
                } else {
#pragma omp simd
                    for (int j = 0; j < kl; j++) g[j] = p[j] * (g[j] - delta) * scale;
                }
            }
            /* dV += dropout(P)^T dO;  dQ = dS K;  dK += dS^T Q */
            real beta = first ? 0 : 1;
            if (first) OPFN(tiled_zero_rows)(dK, dV, kl, Tk, d);
            first = 0;
            OPFN(tfm_gemm)(1, 0, kl, d->dv, nr, 1, P, ld, dOb, (int)d->o_row, beta, dV, (int)d->v_row);
            OPFN(tfm_gemm)(0, 0, nr, d->dk, kl, 1, G, ld, K, (int)d->k_row, 0, dQb, (int)d->q_row);
            OPFN(tfm_gemm)(1, 0, kl, d->dk, nr, 1, G, ld, Qb, (int)d->q_row, beta, dK, (int)d->k_row);
        }
        if (first) OPFN(tiled_zero_rows)(dK, dV, 0, Tk, d);
    }
}

#ifndef TFM_OPS_F64
size_t tfm_attention_tiled_scratch(const tfm_attn_dims *d) {
    return (size_t)tiled_max_threads() * tiled_slot(TILED_BR, d->Tk);
}
#endif
