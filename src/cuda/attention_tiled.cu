/*
 * attention_tiled.cu: tiled (flash) attention on the GPU, the contract of
 * tfm_attention_tiled_forward / _backward (src/ops/ops_decl.h):
 *
 *   out = dropout(softmax(Q K^T * scale + masks)) V      [Tq, dv] per (b, h)
 *   lse = log-sum-exp of each row's scaled visible scores [B, H, Tq]
 *         (-INFINITY when every key is masked; that row's output is 0)
 *
 *   q [B, Tq, H*dk]  k [B, Tk, H*dk]  v [B, Tk, H*dv]  out [B, Tq, H*dv]
 *   (all strided, see tfm_attn_dims)   key_pad [B, key_pad_stride] (device
 *   memory, 1 = masked)   scratch: delta [B, H, Tq] (the fp32 backward)
 *
 * The [Tq, Tk] probabilities never reach device memory: the forward keeps
 * each tile of scores on chip with an online softmax, the backward
 * recomputes them from lse:
 *   P = exp(scale * s - lse), delta_i = dO_i . O_i (= sum_j dropout(P)_ij dP_ij,
 *   so it holds with dropout), dS = P * (mask/(1-p) * dO V^T - delta) * scale,
 *   dQ = dS K, dK = dS^T Q, dV = dropout(P)^T dO;   dq, dk, dv written (=).
 * Dropout draws tfm_cuda_rng_uniform_key at the element index of the
 * [B, H, Tq, Tk] layout (keep iff u >= p, scale 1/(1-p)), so it drops what
 * the CPU's materialised op drops. No atomics: every output element is summed
 * by one thread in a fixed order, so equal inputs give equal bits.
 *
 * Two paths, chosen per call:
 *
 *   BF16 mode (tfm_cuda_matmul_is_bf16) and dk, dv <= 128: tensor cores,
 *     mma.sync m16n8k16 bf16 x bf16 -> fp32 through inline PTX (ldmatrix for
 *     the operands). q, k, v, dO are read as fp32 and rounded to bf16 (ties
 *     to even) while they are staged into shared memory, no separate
 *     conversion pass; scores, softmax, dropout, lse, delta and every
 *     accumulator are fp32; P and dS are rounded to bf16 as operands of the
 *     second products. Tiles of T = 16 * NW rows (NW warps of 16 rows each;
 *     NW = 2 when both lengths are <= 32, as in training on sentences, or
 *     when the head is 128 wide, else 4); heads padded with zeros to D = 32,
 *     64 or 128.
 *     staging (stage_async): each thread issues cp.async copies of all its
 *       16-byte pieces of every tensor the step needs into fp32 slots
 *       [T][D], waits once, and rewrites its own pieces as the bf16 tile
 *       [T][D + 8] at the start of the same slot (the 16-byte pad puts the
 *       8 rows of an ldmatrix in different banks). The blocks are small
 *       (64 threads at the training shapes) and each waits for device
 *       memory once, with no registers held by the loads in flight. Tensors
 *       that are not 16-byte aligned go through registers (stage_bf16).
 *     forward: a block per (b, h, tile of T queries); Q with the first key
 *       tile, then each tile of T keys (K and V); warp w computes S = Q K^T
 *       for its 16 queries in registers, the online softmax, and O += P V
 *       with P taken from the score registers as the A operand (the
 *       accumulator layout of m16n8 is the A layout of m16k16).
 *     backward: a block per (b, h), which owns all of dq, dk, dv of that pair,
 *       so it needs no atomics: for each key tile, for each query tile, warp w
 *       takes 16 keys and computes S^T = K Q^T and dP^T = V dO^T, then P, dS,
 *       dV += dropout(P)^T dO and dK += dS^T Q (operands from registers, dK
 *       and dV accumulated in registers over the query tiles), stores dS as
 *       bf16 in shared memory, and after a barrier warp w computes dQ = dS K
 *       for 16 queries, written at the first key tile and added at later ones
 *       (the same thread, the same element: program order suffices). delta
 *       comes from the fp32 dO and O while they are staged (O through
 *       registers: it needs no slot, which leaves room for 6 blocks per SM).
 *     At the training shapes (Tq = Tk = 32, D = 64) each block stages its
 *     tiles once: the forward reads q, k, v once and writes out and lse
 *     (210 MB at B = 800, H = 8), the backward reads q, k, v, dO, O once and
 *     writes dq, dk, dv (420 MB); measured on an H200 (bench/gpu/attn_micro
 *     --tiled), 65 us and 138-143 us, about 3.2 and 3.0 TB/s, against 236
 *     and 435 us for the materialised ops (attention.cu).
 *   otherwise (fp32 and tf32 modes, head sizes past 128, GPUs before sm_80):
 *     fp32 on CUDA cores, so the CPU's results within 1e-4 (test_cuda_ops).
 *     forward: a block of 8 warps per (b, h, 8 * QR queries), each warp owning
 *       QR query rows; tiles of 32 keys staged in shared memory; lane j
 *       computes the score of key j, the warp runs the online softmax, and
 *       lanes along dv add P V into the row's accumulator in shared memory.
 *     backward: dq_f32_kernel (the same layout over queries: delta, dS of the
 *       tile's keys, dQ += dS K; it writes delta to scratch), then
 *       dkv_f32_kernel (warps over key rows, tiles of 32 queries: dV, dK).
 *     Shared memory permitting (head sizes up to a few hundred), tiles are
 *     staged; past that the lanes read K/V (Q/dO) rows from device memory.
 *
 * The fp32 path is slower than the materialised ops at the training shapes
 * (measured 445 / 1175 us against 236 / 435 us): it is for the lengths
 * whose probabilities would not fit, and tfm_cuda_attention_tiled_preferred
 * says 0 for it.
 *
 * Not done: the bf16 backward runs one block per (b, h) whatever the
 * lengths, so a long sequence with few (b, h) pairs uses few SMs; causal
 * tiles that see no key are skipped in the forward and the backward, but
 * padding is not used to skip tiles; heads wider than 128 take the fp32 path.
 */
#include "cuda/cuda_internal.cuh"

#include <string.h>

#include <cuda_bf16.h>

namespace {

typedef __nv_bfloat16 bf16;

/* tfm_attn_dims as the kernels use it. */
struct targs {
    int B, H, Tq, Tk, dk, dv;
    long q_row, q_batch, k_row, k_batch, v_row, v_batch, o_row, o_batch;
    int causal, q_offset;
    const uint8_t *key_pad;
    long key_pad_stride;
    float scale, p, dscale; /* dscale = 1 / (1 - p) as the CPU rounds it */
    uint64_t key;           /* tfm_cuda_rng_key(seed, stream) */
    __nv_bfloat16 *out16;   /* NULL, or out's bf16 copy (a linear's keep: out's indexing, bf16) */
};

targs make_targs(const tfm_attn_dims *d) {
    targs a;
    a.B = d->B, a.H = d->H, a.Tq = d->Tq, a.Tk = d->Tk, a.dk = d->dk, a.dv = d->dv;
    a.q_row = d->q_row, a.q_batch = d->q_batch, a.k_row = d->k_row, a.k_batch = d->k_batch;
    a.v_row = d->v_row, a.v_batch = d->v_batch, a.o_row = d->o_row, a.o_batch = d->o_batch;
    a.causal = d->causal, a.q_offset = d->q_offset;
    a.key_pad = d->key_pad, a.key_pad_stride = d->key_pad_stride;
    a.scale = (float)d->scale;
    a.p = d->dropout;
    a.dscale = d->dropout > 0 ? (float)(1.0 / (1.0 - d->dropout)) : 1.0f;
    a.key = tfm_cuda_rng_key(d->seed, d->stream);
    a.out16 = NULL;
    if (d->dropout > 0) tfm_cuda_capture_refuse("attention dropout (its key is an argument)");
    return a;
}

__device__ __forceinline__ bool key_padded(const targs &a, int b, int j) {
    return a.key_pad && a.key_pad[(long)b * a.key_pad_stride + j];
}

/* Whether element idx of [B, H, Tq, Tk] survives dropout (a.p > 0). */
__device__ __forceinline__ bool kept(const targs &a, uint64_t idx) {
    return tfm_cuda_rng_uniform_key(a.key, idx) >= a.p;
}

/* The last key (exclusive) that any of queries [i0, i1) sees: causal
 * attention skips the key tiles past the block's last query. */
__device__ __forceinline__ int key_end(const targs &a, int i1) {
    if (!a.causal) return a.Tk;
    long e = (long)i1 - 1 + a.q_offset + 1;
    return (int)(e < 0 ? 0 : (e < a.Tk ? e : a.Tk));
}

/* =====================================================================
 * fp32 path (CUDA cores)
 * ===================================================================== */

#define F32_WARPS 8 /* warps per block */
#define F32_TILE 32 /* keys (queries) per staged tile: one per lane */

/* Rows [0, n) of a [rows][cols] fp32 tile with row pitch `pitch` from
 * src + r * stride; rows n..F32_TILE zeroed. Whole block. */
__device__ __forceinline__ void stage_f32(float *dst, int pitch, const float *__restrict__ src, long stride, int n,
                                          int cols) {
    for (int e = threadIdx.x; e < F32_TILE * cols; e += blockDim.x) {
        int r = e / cols, c = e - r * cols;
        dst[r * pitch + c] = r < n ? src[(long)r * stride + c] : 0.0f;
    }
}

/* Forward. Block: (b, h, R = F32_WARPS * QR query rows from i0); warp w owns
 * rows w*QR .. w*QR + QR - 1. Shared memory (floats):
 *   sQ [R][dk], sO [R][dv] (the rows' unnormalised outputs), sP [warps][32],
 *   staged: sK [32][dk | 1] (odd pitch: lane j reads row j, conflict-free),
 *           sV [32][dv].
 * Unstaged, lanes read the K/V rows from device memory (L1/L2 serve the
 * reuse across the block's rows). */
template <int QR>
__global__ void __launch_bounds__(32 * F32_WARPS)
    fwd_f32_kernel(float *__restrict__ out, float *__restrict__ lse, const float *__restrict__ q,
                   const float *__restrict__ k, const float *__restrict__ v, targs a, int nblk_q, int staged) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int R = F32_WARPS * QR;
    const int dk = a.dk, dv = a.dv, ks = dk | 1;
    float *sQ = reinterpret_cast<float *>(smem), *sO = sQ + R * dk, *sP = sO + R * dv;
    float *sK = sP + F32_WARPS * 32, *sV = sK + F32_TILE * ks;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long bh = blockIdx.x / nblk_q;
    const int i0 = (int)(blockIdx.x % nblk_q) * R, b = (int)(bh / a.H), h = (int)(bh % a.H);
    const int nq = min(R, a.Tq - i0);
    const float *Q = q + b * a.q_batch + (long)h * dk + (long)i0 * a.q_row;
    const float *K = k + b * a.k_batch + (long)h * dk;
    const float *V = v + b * a.v_batch + (long)h * dv;

    for (int e = threadIdx.x; e < R * dk; e += blockDim.x) {
        int r = e / dk, c = e - r * dk;
        sQ[e] = r < nq ? Q[(long)r * a.q_row + c] : 0.0f;
    }
    for (int e = threadIdx.x; e < R * dv; e += blockDim.x) sO[e] = 0.0f;
    float m[QR], l[QR];
#pragma unroll
    for (int rr = 0; rr < QR; rr++) m[rr] = -INFINITY, l[rr] = 0.0f;

    const int kend = key_end(a, i0 + nq);
    for (int j0 = 0; j0 < kend; j0 += F32_TILE) {
        const int nk = min(F32_TILE, a.Tk - j0);
        const float *Kt = K + (long)j0 * a.k_row, *Vt = V + (long)j0 * a.v_row;
        long kst = a.k_row, vst = a.v_row;
        __syncthreads(); /* the previous tile is done with sK, sV; sQ, sO are written */
        if (staged) {
            stage_f32(sK, ks, Kt, a.k_row, nk, dk);
            stage_f32(sV, dv, Vt, a.v_row, nk, dv);
            Kt = sK, Vt = sV, kst = ks, vst = dv;
        }
        __syncthreads();
        const int j = j0 + lane;
        const bool jvis = j < a.Tk && !key_padded(a, b, j);
        float *P = sP + w * 32;
#pragma unroll
        for (int rr = 0; rr < QR; rr++) {
            const int r = w * QR + rr, i = i0 + r;
            if (i >= a.Tq) break; /* warp-uniform */
            float s = -INFINITY;
            if (jvis && !(a.causal && j > i + a.q_offset)) {
                const float *qr = sQ + r * dk, *kr = Kt + lane * kst;
                float acc = 0.0f;
                for (int c = 0; c < dk; c++) acc += qr[c] * kr[c];
                s = acc * a.scale;
            }
            const float mx = fmaxf(m[rr], tfm_warp_max(s));
            float pr = s == -INFINITY ? 0.0f : expf(s - mx);
            /* m = -inf: nothing accumulated yet (l = 0, O = 0), any factor does */
            const float corr = m[rr] == -INFINITY ? 0.0f : expf(m[rr] - mx);
            l[rr] = l[rr] * corr + tfm_warp_sum(pr);
            m[rr] = mx;
            if (a.p > 0.0f && pr > 0.0f)
                pr = kept(a, ((uint64_t)bh * a.Tq + i) * a.Tk + j) ? pr * a.dscale : 0.0f;
            P[lane] = pr;
            __syncwarp();
            float *o = sO + r * dv;
            for (int e = lane; e < dv; e += 32) {
                float acc = o[e] * corr;
                for (int jj = 0; jj < nk; jj++) acc += P[jj] * Vt[jj * vst + e];
                o[e] = acc;
            }
            __syncwarp(); /* P is rewritten by the next row */
        }
    }
    __syncthreads(); /* sO was zeroed by other threads (no key tile may have run) */
#pragma unroll
    for (int rr = 0; rr < QR; rr++) {
        const int r = w * QR + rr, i = i0 + r;
        if (i >= a.Tq) break;
        const float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
        float *O = out + b * a.o_batch + (long)i * a.o_row + (long)h * dv;
        for (int e = lane; e < dv; e += 32) O[e] = sO[r * dv + e] * inv;
        if (lane == 0) lse[bh * a.Tq + i] = l[rr] > 0.0f ? m[rr] + logf(l[rr]) : -INFINITY;
    }
}

/* Backward, dQ and delta. Block and warps as fwd_f32_kernel. Shared memory
 * (floats): sQ [R][dk], sD [R][dv] (dO), sA [R][dk] (dQ), sP [warps][32],
 * staged: sK [32][dk | 1], sV [32][dv | 1] (lane j reads rows j of both). */
template <int QR>
__global__ void __launch_bounds__(32 * F32_WARPS)
    dq_f32_kernel(float *__restrict__ dq, float *__restrict__ delta, const float *__restrict__ dout,
                  const float *__restrict__ out, const float *__restrict__ lse, const float *__restrict__ q,
                  const float *__restrict__ k, const float *__restrict__ v, targs a, int nblk_q, int staged) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int R = F32_WARPS * QR;
    const int dk = a.dk, dv = a.dv, ks = dk | 1, vs = dv | 1;
    float *sQ = reinterpret_cast<float *>(smem), *sD = sQ + R * dk, *sA = sD + R * dv, *sP = sA + R * dk;
    float *sK = sP + F32_WARPS * 32, *sV = sK + F32_TILE * ks;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long bh = blockIdx.x / nblk_q;
    const int i0 = (int)(blockIdx.x % nblk_q) * R, b = (int)(bh / a.H), h = (int)(bh % a.H);
    const int nq = min(R, a.Tq - i0);
    const float *Q = q + b * a.q_batch + (long)h * dk + (long)i0 * a.q_row;
    const float *dO = dout + b * a.o_batch + (long)h * dv + (long)i0 * a.o_row;
    const float *O = out + b * a.o_batch + (long)h * dv + (long)i0 * a.o_row;
    const float *K = k + b * a.k_batch + (long)h * dk;
    const float *V = v + b * a.v_batch + (long)h * dv;

    for (int e = threadIdx.x; e < R * dk; e += blockDim.x) {
        int r = e / dk, c = e - r * dk;
        sQ[e] = r < nq ? Q[(long)r * a.q_row + c] : 0.0f;
        sA[e] = 0.0f;
    }
    for (int e = threadIdx.x; e < R * dv; e += blockDim.x) {
        int r = e / dv, c = e - r * dv;
        sD[e] = r < nq ? dO[(long)r * a.o_row + c] : 0.0f;
    }
    /* delta and lse of the warp's rows */
    float dl[QR], ls[QR];
#pragma unroll
    for (int rr = 0; rr < QR; rr++) {
        const int r = w * QR + rr;
        float s = 0.0f;
        if (r < nq)
            for (int e = lane; e < dv; e += 32) s += dO[(long)r * a.o_row + e] * O[(long)r * a.o_row + e];
        dl[rr] = tfm_warp_sum(s);
        ls[rr] = r < nq ? lse[bh * a.Tq + i0 + r] : -INFINITY;
        if (r < nq && lane == 0) delta[bh * a.Tq + i0 + r] = dl[rr];
    }

    const int kend = key_end(a, i0 + nq);
    for (int j0 = 0; j0 < kend; j0 += F32_TILE) {
        const int nk = min(F32_TILE, a.Tk - j0);
        const float *Kt = K + (long)j0 * a.k_row, *Vt = V + (long)j0 * a.v_row;
        long kst = a.k_row, vst = a.v_row;
        __syncthreads();
        if (staged) {
            stage_f32(sK, ks, Kt, a.k_row, nk, dk);
            stage_f32(sV, vs, Vt, a.v_row, nk, dv);
            Kt = sK, Vt = sV, kst = ks, vst = vs;
        }
        __syncthreads();
        const int j = j0 + lane;
        const bool jvis = j < a.Tk && !key_padded(a, b, j);
        float *P = sP + w * 32;
#pragma unroll
        for (int rr = 0; rr < QR; rr++) {
            const int r = w * QR + rr, i = i0 + r;
            if (i >= a.Tq) break;
            float ds = 0.0f;
            if (jvis && ls[rr] != -INFINITY && !(a.causal && j > i + a.q_offset)) {
                const float *qr = sQ + r * dk, *kr = Kt + lane * kst, *gr = sD + r * dv, *vr = Vt + lane * vst;
                float s = 0.0f, dp = 0.0f;
                for (int c = 0; c < dk; c++) s += qr[c] * kr[c];
                for (int c = 0; c < dv; c++) dp += gr[c] * vr[c];
                const float pr = expf(s * a.scale - ls[rr]);
                if (a.p > 0.0f) dp = kept(a, ((uint64_t)bh * a.Tq + i) * a.Tk + j) ? dp * a.dscale : 0.0f;
                ds = pr * (dp - dl[rr]) * a.scale;
            }
            P[lane] = ds;
            __syncwarp();
            float *acc = sA + r * dk;
            for (int e = lane; e < dk; e += 32) {
                float x = acc[e];
                for (int jj = 0; jj < nk; jj++) x += P[jj] * Kt[jj * kst + e];
                acc[e] = x;
            }
            __syncwarp();
        }
    }
    __syncthreads(); /* sA was zeroed by other threads (no key tile may have run) */
#pragma unroll
    for (int rr = 0; rr < QR; rr++) {
        const int r = w * QR + rr, i = i0 + r;
        if (i >= a.Tq) break;
        float *G = dq + b * a.q_batch + (long)i * a.q_row + (long)h * dk;
        for (int e = lane; e < dk; e += 32) G[e] = sA[r * dk + e];
    }
}

/* Backward, dK and dV. Block: (b, h, R = F32_WARPS * KR key rows from j0);
 * warp w owns keys w*KR .. w*KR + KR - 1; tiles of 32 queries. Shared memory
 * (floats): sK [R][dk], sV [R][dv], sGk [R][dk], sGv [R][dv] (dK, dV),
 * sP, sS [warps][32], sL, sDl [32] (lse, delta of the tile), staged:
 * sQ [32][dk | 1], sD [32][dv | 1] (dO). Runs after dq_f32_kernel (delta). */
template <int KR>
__global__ void __launch_bounds__(32 * F32_WARPS)
    dkv_f32_kernel(float *__restrict__ dk, float *__restrict__ dv, const float *__restrict__ dout,
                   const float *__restrict__ lse, const float *__restrict__ delta, const float *__restrict__ q,
                   const float *__restrict__ k, const float *__restrict__ v, targs a, int nblk_k, int staged) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int R = F32_WARPS * KR;
    const int dkk = a.dk, dvv = a.dv, qs = dkk | 1, os = dvv | 1;
    float *sK = reinterpret_cast<float *>(smem), *sV = sK + R * dkk, *sGk = sV + R * dvv, *sGv = sGk + R * dkk;
    float *sP = sGv + R * dvv, *sS = sP + F32_WARPS * 32, *sL = sS + F32_WARPS * 32, *sDl = sL + F32_TILE;
    float *sQ = sDl + F32_TILE, *sD = sQ + F32_TILE * qs;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long bh = blockIdx.x / nblk_k;
    const int j0 = (int)(blockIdx.x % nblk_k) * R, b = (int)(bh / a.H), h = (int)(bh % a.H);
    const int nk = min(R, a.Tk - j0);
    const float *K = k + b * a.k_batch + (long)h * dkk + (long)j0 * a.k_row;
    const float *V = v + b * a.v_batch + (long)h * dvv + (long)j0 * a.v_row;
    const float *Q = q + b * a.q_batch + (long)h * dkk;
    const float *dO = dout + b * a.o_batch + (long)h * dvv;

    for (int e = threadIdx.x; e < R * dkk; e += blockDim.x) {
        int r = e / dkk, c = e - r * dkk;
        sK[e] = r < nk ? K[(long)r * a.k_row + c] : 0.0f;
        sGk[e] = 0.0f;
    }
    for (int e = threadIdx.x; e < R * dvv; e += blockDim.x) {
        int r = e / dvv, c = e - r * dvv;
        sV[e] = r < nk ? V[(long)r * a.v_row + c] : 0.0f;
        sGv[e] = 0.0f;
    }
    /* Causal: queries before j0 - q_offset see none of the block's keys. */
    int istart = a.causal ? j0 - a.q_offset : 0;
    istart = istart < 0 ? 0 : istart;
    for (int i0 = istart; i0 < a.Tq; i0 += F32_TILE) {
        const int nq = min(F32_TILE, a.Tq - i0);
        const float *Qt = Q + (long)i0 * a.q_row, *Dt = dO + (long)i0 * a.o_row;
        long qst = a.q_row, ost = a.o_row;
        __syncthreads();
        if (staged) {
            stage_f32(sQ, qs, Qt, a.q_row, nq, dkk);
            stage_f32(sD, os, Dt, a.o_row, nq, dvv);
            Qt = sQ, Dt = sD, qst = qs, ost = os;
        }
        for (int r = threadIdx.x; r < F32_TILE; r += blockDim.x) {
            sL[r] = r < nq ? lse[bh * a.Tq + i0 + r] : -INFINITY;
            sDl[r] = r < nq ? delta[bh * a.Tq + i0 + r] : 0.0f;
        }
        __syncthreads();
        const int i = i0 + lane;
        float *P = sP + w * 32, *S = sS + w * 32;
#pragma unroll
        for (int rr = 0; rr < KR; rr++) {
            const int r = w * KR + rr, j = j0 + r;
            if (j >= a.Tk) break;               /* warp-uniform */
            if (key_padded(a, b, j)) continue; /* P = 0: adds nothing */
            float pd = 0.0f, ds = 0.0f;
            const float L = sL[lane];
            if (i < a.Tq && L != -INFINITY && !(a.causal && j > i + a.q_offset)) {
                const float *qr = Qt + lane * qst, *kr = sK + r * dkk, *gr = Dt + lane * ost, *vr = sV + r * dvv;
                float s = 0.0f, dp = 0.0f;
                for (int c = 0; c < dkk; c++) s += qr[c] * kr[c];
                for (int c = 0; c < dvv; c++) dp += gr[c] * vr[c];
                const float pr = expf(s * a.scale - L);
                pd = pr;
                if (a.p > 0.0f) {
                    const bool keep = kept(a, ((uint64_t)bh * a.Tq + i) * a.Tk + j);
                    pd = keep ? pr * a.dscale : 0.0f;
                    dp = keep ? dp * a.dscale : 0.0f;
                }
                ds = pr * (dp - sDl[lane]) * a.scale;
            }
            P[lane] = pd, S[lane] = ds;
            __syncwarp();
            float *gv = sGv + r * dvv, *gk = sGk + r * dkk;
            for (int e = lane; e < dvv; e += 32) {
                float x = gv[e];
                for (int ii = 0; ii < nq; ii++) x += P[ii] * Dt[ii * ost + e];
                gv[e] = x;
            }
            for (int e = lane; e < dkk; e += 32) {
                float x = gk[e];
                for (int ii = 0; ii < nq; ii++) x += S[ii] * Qt[ii * qst + e];
                gk[e] = x;
            }
            __syncwarp();
        }
    }
    __syncthreads(); /* sGk, sGv were zeroed by other threads (no query tile may have run) */
#pragma unroll
    for (int rr = 0; rr < KR; rr++) {
        const int r = w * KR + rr, j = j0 + r;
        if (j >= a.Tk) break;
        float *Gk = dk + b * a.k_batch + (long)j * a.k_row + (long)h * dkk;
        float *Gv = dv + b * a.v_batch + (long)j * a.v_row + (long)h * dvv;
        for (int e = lane; e < dkk; e += 32) Gk[e] = sGk[r * dkk + e];
        for (int e = lane; e < dvv; e += 32) Gv[e] = sGv[r * dvv + e];
    }
}

/* =====================================================================
 * bf16 tensor-core path
 * ===================================================================== */

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 x = __floats2bfloat162_rn(lo, hi); /* lo in the low half: the lower column */
    return *reinterpret_cast<uint32_t *>(&x);
}

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* ldmatrix x4: four 8x8 bf16 matrices, rows addressed by lanes 8i..8i+7 for
 * matrix i. Plain: lane holds row lane/4, columns 2(lane%4), +1 of each;
 * .trans: the transposed element pair (rows 2(lane%4), +1 of column lane/4). */
__device__ __forceinline__ void ldsm4(uint32_t r[4], const bf16 *p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
#else
    (void)p, r[0] = r[1] = r[2] = r[3] = 0u, __trap();
#endif
}
__device__ __forceinline__ void ldsm4t(uint32_t r[4], const bf16 *p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
#else
    (void)p, r[0] = r[1] = r[2] = r[3] = 0u, __trap();
#endif
}

/* c[16x8] += a[16x16] b[16x8], bf16 operands, fp32 accumulators. Fragments
 * (g = lane/4, t = lane%4): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..),
 * a3 (g+8, 2t+8..); b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g); c0, c1 (g,
 * 2t, 2t+1), c2, c3 (g+8, 2t, 2t+1). */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)c, (void)a, (void)b0, (void)b1, __trap();
#endif
}

/* The operand loads from bf16 tiles in shared memory with row pitch `pitch`
 * (elements). A 16x16 at (m0, k0) of a tile stored [m][k]: */
__device__ __forceinline__ void load_a(uint32_t a[4], const bf16 *s, int pitch, int m0, int k0, int lane) {
    ldsm4(a, s + (m0 + (lane & 15)) * pitch + k0 + (lane >> 4) * 8);
}
/* ... of a tile stored [k][m] (the transpose of A): */
__device__ __forceinline__ void load_a_t(uint32_t a[4], const bf16 *s, int pitch, int m0, int k0, int lane) {
    ldsm4t(a, s + (k0 + (lane & 7) + (lane >> 4) * 8) * pitch + m0 + ((lane >> 3) & 1) * 8);
}
/* B for two n-tiles, 16(k) x 16(n) at (k0, n0): b[0], b[1] for n0..n0+7,
 * b[2], b[3] for n0+8..n0+15. From a tile stored [n][k] (as K for Q K^T): */
__device__ __forceinline__ void load_b(uint32_t b[4], const bf16 *s, int pitch, int k0, int n0, int lane) {
    ldsm4(b, s + (n0 + (lane & 7) + ((lane >> 4) << 3)) * pitch + k0 + ((lane >> 3) & 1) * 8);
}
/* ... from a tile stored [k][n] (as V for P V): */
__device__ __forceinline__ void load_b_t(uint32_t b[4], const bf16 *s, int pitch, int k0, int n0, int lane) {
    ldsm4t(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * pitch + n0 + (lane >> 4) * 8);
}

/* One tensor to stage: rows [0, nrows) of src (row stride `stride`, columns
 * [0, ncols)) into dst [T][D + 8] as bf16, zeros elsewhere. */
struct tile_src {
    bf16 *dst;
    const float *src;
    long stride;
    int nrows, ncols;
    float *raw; /* stage_async: the fp32 slot [T][D] that dst aliases */
};

/* Four floats of row r at column c (zeros outside the tensor). VEC: c, the
 * row stride and src are multiples of 4 floats (16-byte loads). */
template <bool VEC>
__device__ __forceinline__ float4 load4(const tile_src &s, int r, int c) {
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < s.nrows && c < s.ncols) {
        const float *p = s.src + (long)r * s.stride + c;
        if (VEC) {
            x = __ldg(reinterpret_cast<const float4 *>(p));
        } else {
            x.x = __ldg(p);
            if (c + 1 < s.ncols) x.y = __ldg(p + 1);
            if (c + 2 < s.ncols) x.z = __ldg(p + 2);
            if (c + 3 < s.ncols) x.w = __ldg(p + 3);
        }
    }
    return x;
}

__device__ __forceinline__ void store4(bf16 *dst, float4 x) {
    uint2 u;
    u.x = pack_bf16(x.x, x.y);
    u.y = pack_bf16(x.z, x.w);
    *reinterpret_cast<uint2 *>(dst) = u;
}

/* Knobs for bench/gpu experiments (compile with -D...). TILED_ASYNC: stage
 * aligned tensors through cp.async (stage_async), else through registers
 * (stage_bf16); at the base shapes (H200) 65 / 141 us forward / backward
 * against 73 / 222 us. TILED_LOADS: stage_bf16's loads in flight per thread
 * (24 against 10: forward 73 against 78 us, backward no change).
 * TILED_*_MIN_BLOCKS: minimum blocks per SM for __launch_bounds__ (0: the
 * compiler's choice of registers; forcing 10 forward blocks measured no
 * faster). */
#ifndef TILED_LOADS
#define TILED_LOADS 24
#endif
#ifndef TILED_ASYNC
#define TILED_ASYNC 1
#endif
#ifndef TILED_BWD_MIN_BLOCKS
#define TILED_BWD_MIN_BLOCKS 0
#endif
#ifndef TILED_FWD_MIN_BLOCKS
#define TILED_FWD_MIN_BLOCKS 0
#endif
/* __launch_bounds__ of the bf16 kernels: the minimum blocks per SM apply to
 * the training shapes' configuration (NW = 2, D <= 64) only. */
#define TILED_BOUNDS(NW, D, MIN) __launch_bounds__(32 * (NW), ((NW) == 2 && (D) <= 64 && (MIN) > 0) ? (MIN) : 0)

/* The largest power of two <= x (x >= 1). */
__host__ __device__ constexpr int pow2_floor(int x) { return x >= 2 ? 2 * pow2_floor(x / 2) : 1; }

/* Stages N tensors into T x D bf16 tiles through registers (tensors that
 * are not 16-byte aligned, or TILED_ASYNC 0), the whole block (32 NW
 * threads, D/4 per row, a float4 each; D/8 float4 per thread and tensor):
 * all N tensors' loads of a chunk of CH rows are issued before the first
 * store, so each thread keeps N * CH loads in flight. The blocks are small
 * and few per SM (registers), and each one waits for its loads once per
 * chunk, so the fewer chunks the better: up to TILED_LOADS loads in flight
 * per thread (half for D = 128, whose kernels are short of registers),
 * which stages the forward's Q, K, V (3 x 8 float4 at D = 64) in one round
 * trip and the backward's five tensors in two. DELTA: ts[N-1] is O, not stored:
 * sdelta[r] = dO_r . O_r in fp32 (ts[N-2] is dO), reduced over the row's D/4
 * lanes in a fixed order. */
template <int D, int NW, bool VEC, int N, bool DELTA>
__device__ __forceinline__ void stage_bf16(const tile_src *ts, float *sdelta) {
    constexpr int C4 = D / 4, RPI = 32 * NW / C4, ITER = D / 8;
    constexpr int BUDGET = (D > 64 ? TILED_LOADS / 2 : TILED_LOADS) / N, CH = pow2_floor(ITER < BUDGET ? ITER : BUDGET);
    static_assert(ITER * RPI == 16 * NW && ITER % CH == 0, "rows of a tile");
    const int c = (threadIdx.x % C4) * 4, r0 = threadIdx.x / C4;
#pragma unroll
    for (int it0 = 0; it0 < ITER; it0 += CH) {
        float4 x[N][CH];
#pragma unroll
        for (int n = 0; n < N; n++)
#pragma unroll
            for (int u = 0; u < CH; u++) x[n][u] = load4<VEC>(ts[n], r0 + (it0 + u) * RPI, c);
#pragma unroll
        for (int u = 0; u < CH; u++) {
            const int r = r0 + (it0 + u) * RPI;
#pragma unroll
            for (int n = 0; n < (DELTA ? N - 1 : N); n++) store4(ts[n].dst + r * (D + 8) + c, x[n][u]);
            if (DELTA) {
                const float4 y = x[N - 2][u], o = x[N - 1][u];
                float s = y.x * o.x + y.y * o.y + y.z * o.z + y.w * o.w;
#pragma unroll
                for (int off = C4 / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
                if (threadIdx.x % C4 == 0) sdelta[r] = s;
            }
        }
    }
}

__device__ __forceinline__ void cp_async16(float *dst, const float *src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src) : "memory");
#else
    *reinterpret_cast<float4 *>(dst) = *reinterpret_cast<const float4 *>(src);
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

/* stage_bf16 through the copy engine (16-byte aligned tensors): every
 * thread issues all its 16-byte copies of all tensors at once (cp.async
 * into the fp32 slots ts[n].raw [T][D], zeros stored for the rows and
 * columns outside the tensor), so a block waits for device memory once and
 * holds no registers for the loads in flight; then each thread converts the
 * floats it copied itself (visible to it after the wait) into the bf16 tile
 * that aliases the start of the slot, one tensor at a time, a barrier
 * between reading a slot and overwriting it. DELTA as stage_bf16, except
 * that O (ts[N-1], only needed for delta) is loaded into registers, issued
 * before the copies, and needs no slot. The caller syncs before reading the
 * tiles. */
template <int D, int NW, int N, bool DELTA>
__device__ __forceinline__ void stage_async(const tile_src *ts, float *sdelta) {
    constexpr int C4 = D / 4, RPI = 32 * NW / C4, ITER = D / 8, NC = DELTA ? N - 1 : N;
    const int c = (threadIdx.x % C4) * 4, r0 = threadIdx.x / C4;
    float4 o[DELTA ? ITER : 1];
    if (DELTA) {
#pragma unroll
        for (int it = 0; it < ITER; it++) o[it] = load4<true>(ts[N - 1], r0 + it * RPI, c);
    }
#pragma unroll
    for (int n = 0; n < NC; n++)
#pragma unroll
        for (int it = 0; it < ITER; it++) {
            const int r = r0 + it * RPI;
            float *dst = ts[n].raw + r * D + c;
            if (r < ts[n].nrows && c < ts[n].ncols) cp_async16(dst, ts[n].src + (long)r * ts[n].stride + c);
            else *reinterpret_cast<float4 *>(dst) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    cp_async_wait_all();
#pragma unroll
    for (int n = 0; n < NC; n++) {
        float4 x[ITER];
#pragma unroll
        for (int it = 0; it < ITER; it++)
            x[it] = *reinterpret_cast<const float4 *>(ts[n].raw + (r0 + it * RPI) * D + c);
        if (DELTA && n == NC - 1) {
#pragma unroll
            for (int it = 0; it < ITER; it++) {
                float s = x[it].x * o[it].x + x[it].y * o[it].y + x[it].z * o[it].z + x[it].w * o[it].w;
#pragma unroll
                for (int off = C4 / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
                if (threadIdx.x % C4 == 0) sdelta[r0 + it * RPI] = s;
            }
        }
        __syncthreads(); /* every thread has read slot n */
#pragma unroll
        for (int it = 0; it < ITER; it++) store4(ts[n].dst + (r0 + it * RPI) * (D + 8) + c, x[it]);
    }
}

/* The staging of the kernels: through the copy engine when the tensors are
 * 16-byte aligned (VEC) and TILED_ASYNC, else through registers. */
template <int D, int NW, bool VEC, int N, bool DELTA>
__device__ __forceinline__ void stage(const tile_src *ts, float *sdelta) {
    if (TILED_ASYNC && VEC) stage_async<D, NW, N, DELTA>(ts, sdelta);
    else stage_bf16<D, NW, VEC, N, DELTA>(ts, sdelta);
}

/* Bytes of one tile slot: the fp32 tile [T][D] that stage_async copies
 * into, or only the bf16 tile [T][D + 8] that it becomes. */
__host__ __device__ constexpr int slot_bytes(int D, int NW) {
    return TILED_ASYNC ? 16 * NW * D * 4 : 16 * NW * (D + 8) * 2;
}

/* Key flags of a tile: 0 where key k0 + j exists and is not padded, -inf
 * elsewhere (added to the scores). */
__device__ __forceinline__ void stage_key_flags(float *sM, int T, const targs &a, int b, int k0) {
    for (int j = threadIdx.x; j < T; j += blockDim.x)
        sM[j] = (k0 + j < a.Tk && !key_padded(a, b, k0 + j)) ? 0.0f : -INFINITY;
}

/* Stores the pair (x0, x1) at row pointer p, columns c, c+1 (< ncols);
 * accumulate adds to what is there. VEC: 8-byte aligned pairs. */
template <bool VEC>
__device__ __forceinline__ void store2(float *p, int c, int ncols, float x0, float x1, bool accumulate) {
    if (c >= ncols) return;
    if (VEC) {
        float2 *q = reinterpret_cast<float2 *>(p + c);
        if (accumulate) {
            float2 o = *q;
            x0 += o.x, x1 += o.y;
        }
        *q = make_float2(x0, x1);
    } else {
        p[c] = accumulate ? p[c] + x0 : x0;
        if (c + 1 < ncols) p[c + 1] = accumulate ? p[c + 1] + x1 : x1;
    }
}

/* The bf16 copy of one output row's head (out16 row: the fp32 row's offset
 * from out), as the fp32 stores write it: pairs (n * 8 + 2t, + 1) of o[n][j],
 * o[n][j + 1] times inv, rounded to bf16 (to nearest even, as to_bf16).
 * ncols: the head's dv. */
template <int ND>
__device__ __forceinline__ void store2_bf16(__nv_bfloat16 *row16, int ncols, const float (&o)[ND][4], int j,
                                            float inv, int t) {
#pragma unroll
    for (int n = 0; n < ND; n++) {
        int c = n * 8 + 2 * t;
        if (c < ncols) *reinterpret_cast<unsigned *>(row16 + c) = tfm_cuda_bf16x2(o[n][j] * inv, o[n][j + 1] * inv);
    }
}
__device__ __forceinline__ int n_cols_of(const targs &a) { return a.dv; }

/* Forward. Block: (b, h, queries q0 .. q0 + T - 1), T = 16 NW; warp w owns
 * queries 16w .. 16w + 15 of the tile, and the thread rows g and g + 8 of
 * those (g = lane / 4). Shared memory: the K, V and Q slots (slot_bytes:
 * their bf16 tiles [T][D + 8] at the start), sM [T]. (Q through registers,
 * which needs no fp32 slot, measured slower: 77 against 65 us at the base
 * shapes, H200.) */
template <int D, int NW, bool VEC>
__global__ void TILED_BOUNDS(NW, D, TILED_FWD_MIN_BLOCKS)
    fwd_bf16_kernel(float *__restrict__ out, float *__restrict__ lse, const float *__restrict__ q,
                    const float *__restrict__ k, const float *__restrict__ v, targs a, int nqt) {
    constexpr int T = 16 * NW, P = D + 8, NT = T / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int SLOT = slot_bytes(D, NW);
    float *rK = reinterpret_cast<float *>(smem), *rV = rK + SLOT / 4, *rQ = rV + SLOT / 4;
    bf16 *sK = reinterpret_cast<bf16 *>(rK), *sV = reinterpret_cast<bf16 *>(rV), *sQ = reinterpret_cast<bf16 *>(rQ);
    float *sM = rQ + SLOT / 4;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const long bh = blockIdx.x / nqt;
    const int q0 = (int)(blockIdx.x % nqt) * T, b = (int)(bh / a.H), h = (int)(bh % a.H);
    const int nq = min(T, a.Tq - q0);
    const float *Q = q + b * a.q_batch + (long)h * a.dk + (long)q0 * a.q_row;
    const float *K = k + b * a.k_batch + (long)h * a.dk;
    const float *V = v + b * a.v_batch + (long)h * a.dv;
    const int i_lo = q0 + 16 * w + g, i_hi = i_lo + 8;
    const uint64_t base_lo = ((uint64_t)bh * a.Tq + i_lo) * a.Tk, base_hi = base_lo + 8 * (uint64_t)a.Tk;

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    const int kend = key_end(a, q0 + nq);
    for (int k0 = 0; k0 < kend; k0 += T) {
        const int nk = min(T, a.Tk - k0);
        __syncthreads(); /* the previous tile's readers are done */
        const tile_src kv[3] = {{sK, K + (long)k0 * a.k_row, a.k_row, nk, a.dk, rK},
                                {sV, V + (long)k0 * a.v_row, a.v_row, nk, a.dv, rV},
                                {sQ, Q, a.q_row, nq, a.dk, rQ}};
        if (k0 == 0) stage<D, NW, VEC, 3, false>(kv, nullptr); /* Q with the first keys */
        else stage<D, NW, VEC, 2, false>(kv, nullptr);
        stage_key_flags(sM, T, a, b, k0);
        __syncthreads();
        if (16 * w >= nq) continue; /* no query rows (warp-uniform); the barriers above are shared */

        /* S = Q K^T for the warp's 16 queries x T keys */
        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t af[4];
            load_a(af, sQ, P, 16 * w, 16 * kk, lane);
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t bf[4];
                load_b(bf, sK, P, 16 * kk, 16 * np, lane);
                mma_bf16(s[2 * np], af, bf[0], bf[1]);
                mma_bf16(s[2 * np + 1], af, bf[2], bf[3]);
            }
        }
        /* scale, masks, the rows' maxima (a row's 4 threads: lanes 4g..4g+3) */
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int jl = n * 8 + 2 * t + (e & 1), i = e < 2 ? i_lo : i_hi;
                float x = s[n][e] * a.scale + sM[jl];
                if (a.causal && k0 + jl > i + a.q_offset) x = -INFINITY;
                s[n][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            corr[r] = mx[r] == -INFINITY ? 1.0f : __expf(m[r] - mx[r]); /* m = -inf: 0, nothing summed yet */
            m[r] = mx[r];
            l[r] *= corr[r];
        }
        /* P (unnormalised, before dropout, into l), then dropout */
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float x = s[n][e];
                float pr = x == -INFINITY ? 0.0f : __expf(x - mx[e >> 1]);
                l[e >> 1] += pr;
                if (a.p > 0.0f && pr > 0.0f) {
                    const int jl = n * 8 + 2 * t + (e & 1);
                    pr = kept(a, (e < 2 ? base_lo : base_hi) + k0 + jl) ? pr * a.dscale : 0.0f;
                }
                s[n][e] = pr;
            }
#pragma unroll
        for (int n = 0; n < ND; n++) o[n][0] *= corr[0], o[n][1] *= corr[0], o[n][2] *= corr[1], o[n][3] *= corr[1];
        /* O += P V: P's accumulators are the A fragments of m16k16 */
#pragma unroll
        for (int kk = 0; kk < T / 16; kk++) {
            uint32_t af[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int np = 0; np < ND / 2; np++) {
                uint32_t bf[4];
                load_b_t(bf, sV, P, 16 * kk, 16 * np, lane);
                mma_bf16(o[2 * np], af, bf[0], bf[1]);
                mma_bf16(o[2 * np + 1], af, bf[2], bf[3]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    const float inv_lo = l[0] > 0.0f ? 1.0f / l[0] : 0.0f, inv_hi = l[1] > 0.0f ? 1.0f / l[1] : 0.0f;
    float *O = out + b * a.o_batch + (long)h * a.dv;
    if (i_lo < a.Tq) {
        float *row = O + (long)i_lo * a.o_row;
#pragma unroll
        for (int n = 0; n < ND; n++) store2<VEC>(row, n * 8 + 2 * t, a.dv, o[n][0] * inv_lo, o[n][1] * inv_lo, false);
        if (VEC && a.out16) store2_bf16(a.out16 + (row - out), n_cols_of(a), o, 0, inv_lo, t);
        if (t == 0) lse[bh * a.Tq + i_lo] = l[0] > 0.0f ? m[0] + logf(l[0]) : -INFINITY;
    }
    if (i_hi < a.Tq) {
        float *row = O + (long)i_hi * a.o_row;
#pragma unroll
        for (int n = 0; n < ND; n++) store2<VEC>(row, n * 8 + 2 * t, a.dv, o[n][2] * inv_hi, o[n][3] * inv_hi, false);
        if (VEC && a.out16) store2_bf16(a.out16 + (row - out), n_cols_of(a), o, 2, inv_hi, t);
        if (t == 0) lse[bh * a.Tq + i_hi] = l[1] > 0.0f ? m[1] + logf(l[1]) : -INFINITY;
    }
}

/* Backward. Block: one (b, h); key tiles of T = 16 NW, and for each, query
 * tiles of T. Warp w owns keys 16w .. 16w + 15 of the key tile (rows g and
 * g + 8 of those per thread) for S^T, dP^T, dK, dV, and queries 16w ..
 * 16w + 15 of the query tile for dQ. Shared memory: sK, sV, sQ, sG (dO)
 * bf16 [T][D + 8]; sS bf16 [T][T + 8] (dS^T, keys x queries); sM [T] (key
 * flags), sL [T] (lse), sDl [T] (delta). */
template <int D, int NW, bool VEC>
__global__ void TILED_BOUNDS(NW, D, TILED_BWD_MIN_BLOCKS)
    bwd_bf16_kernel(float *__restrict__ dq, float *__restrict__ dk, float *__restrict__ dv,
                    const float *__restrict__ dout, const float *__restrict__ out, const float *__restrict__ lse,
                    const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v, targs a) {
    constexpr int T = 16 * NW, P = D + 8, PT = T + 8, NT = T / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int SLOT = slot_bytes(D, NW);
    float *rK = reinterpret_cast<float *>(smem), *rV = rK + SLOT / 4, *rQ = rV + SLOT / 4, *rG = rQ + SLOT / 4;
    bf16 *sK = reinterpret_cast<bf16 *>(rK), *sV = reinterpret_cast<bf16 *>(rV);
    bf16 *sQ = reinterpret_cast<bf16 *>(rQ), *sG = reinterpret_cast<bf16 *>(rG);
    bf16 *sS = reinterpret_cast<bf16 *>(rG + SLOT / 4);
    float *sM = reinterpret_cast<float *>(sS + T * PT), *sL = sM + T, *sDl = sL + T;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const long bh = blockIdx.x;
    const int b = (int)(bh / a.H), h = (int)(bh % a.H);
    const float *Q = q + b * a.q_batch + (long)h * a.dk, *K = k + b * a.k_batch + (long)h * a.dk;
    const float *V = v + b * a.v_batch + (long)h * a.dv;
    const float *G = dout + b * a.o_batch + (long)h * a.dv, *O = out + b * a.o_batch + (long)h * a.dv;
    float *dQ = dq + b * a.q_batch + (long)h * a.dk, *dK = dk + b * a.k_batch + (long)h * a.dk;
    float *dV = dv + b * a.v_batch + (long)h * a.dv;
    const int jl_lo = 16 * w + g, jl_hi = jl_lo + 8; /* the thread's key rows in the tile */

    for (int k0 = 0; k0 < a.Tk; k0 += T) {
        const int nk = min(T, a.Tk - k0);
        float gk[ND][4], gv[ND][4];
#pragma unroll
        for (int n = 0; n < ND; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) gk[n][e] = gv[n][e] = 0.0f;
        bool kv_staged = false;
        for (int q0 = 0; q0 < a.Tq; q0 += T) {
            const int nq = min(T, a.Tq - q0);
            /* Causal: a later key tile that no query of this tile sees adds
             * nothing (dq was written at k0 = 0). Block-uniform. */
            if (k0 > 0 && a.causal && k0 > q0 + nq - 1 + a.q_offset) continue;
            __syncthreads(); /* the previous iteration's readers are done */
            const tile_src ts[5] = {{sK, K + (long)k0 * a.k_row, a.k_row, nk, a.dk, rK},
                                    {sV, V + (long)k0 * a.v_row, a.v_row, nk, a.dv, rV},
                                    {sQ, Q + (long)q0 * a.q_row, a.q_row, nq, a.dk, rQ},
                                    {sG, G + (long)q0 * a.o_row, a.o_row, nq, a.dv, rG},
                                    {nullptr, O + (long)q0 * a.o_row, a.o_row, nq, a.dv, nullptr}};
            if (!kv_staged) {
                stage<D, NW, VEC, 5, true>(ts, sDl);
                stage_key_flags(sM, T, a, b, k0);
                kv_staged = true;
            } else {
                stage<D, NW, VEC, 3, true>(ts + 2, sDl);
            }
            for (int r = threadIdx.x; r < T; r += blockDim.x) sL[r] = r < nq ? lse[bh * a.Tq + q0 + r] : -INFINITY;
            __syncthreads();

            /* S^T = K Q^T and dP^T = V dO^T: the warp's 16 keys x T queries */
            float s[NT][4], dp[NT][4];
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t ak[4], av[4];
                load_a(ak, sK, P, 16 * w, 16 * kk, lane);
                load_a(av, sV, P, 16 * w, 16 * kk, lane);
#pragma unroll
                for (int np = 0; np < NT / 2; np++) {
                    uint32_t bq[4], bg[4];
                    load_b(bq, sQ, P, 16 * kk, 16 * np, lane);
                    load_b(bg, sG, P, 16 * kk, 16 * np, lane);
                    mma_bf16(s[2 * np], ak, bq[0], bq[1]);
                    mma_bf16(s[2 * np + 1], ak, bq[2], bq[3]);
                    mma_bf16(dp[2 * np], av, bg[0], bg[1]);
                    mma_bf16(dp[2 * np + 1], av, bg[2], bg[3]);
                }
            }
            /* s <- dropout(P), dp <- dS (fp32) */
            const float m_lo = sM[jl_lo], m_hi = sM[jl_hi];
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int il = n * 8 + 2 * t + (e & 1), i = q0 + il, j = k0 + (e < 2 ? jl_lo : jl_hi);
                    const float L = sL[il];
                    float pd = 0.0f, ds = 0.0f;
                    if ((e < 2 ? m_lo : m_hi) == 0.0f && L != -INFINITY && !(a.causal && j > i + a.q_offset)) {
                        const float pr = __expf(s[n][e] * a.scale - L);
                        float g_ = dp[n][e];
                        pd = pr;
                        if (a.p > 0.0f) {
                            const bool keep = kept(a, ((uint64_t)bh * a.Tq + i) * a.Tk + j);
                            pd = keep ? pr * a.dscale : 0.0f;
                            g_ = keep ? g_ * a.dscale : 0.0f;
                        }
                        ds = pr * (g_ - sDl[il]) * a.scale;
                    }
                    s[n][e] = pd, dp[n][e] = ds;
                }
            /* dV += dropout(P)^T dO, dK += dS^T Q (over the tile's queries) */
#pragma unroll
            for (int kq = 0; kq < T / 16; kq++) {
                uint32_t ap[4] = {pack_bf16(s[2 * kq][0], s[2 * kq][1]), pack_bf16(s[2 * kq][2], s[2 * kq][3]),
                                  pack_bf16(s[2 * kq + 1][0], s[2 * kq + 1][1]),
                                  pack_bf16(s[2 * kq + 1][2], s[2 * kq + 1][3])};
                uint32_t ad[4] = {pack_bf16(dp[2 * kq][0], dp[2 * kq][1]), pack_bf16(dp[2 * kq][2], dp[2 * kq][3]),
                                  pack_bf16(dp[2 * kq + 1][0], dp[2 * kq + 1][1]),
                                  pack_bf16(dp[2 * kq + 1][2], dp[2 * kq + 1][3])};
#pragma unroll
                for (int np = 0; np < ND / 2; np++) {
                    uint32_t bg[4], bq[4];
                    load_b_t(bg, sG, P, 16 * kq, 16 * np, lane);
                    load_b_t(bq, sQ, P, 16 * kq, 16 * np, lane);
                    mma_bf16(gv[2 * np], ap, bg[0], bg[1]);
                    mma_bf16(gv[2 * np + 1], ap, bg[2], bg[3]);
                    mma_bf16(gk[2 * np], ad, bq[0], bq[1]);
                    mma_bf16(gk[2 * np + 1], ad, bq[2], bq[3]);
                }
            }
            /* dS^T as bf16 for dQ */
#pragma unroll
            for (int n = 0; n < NT; n++) {
                *reinterpret_cast<uint32_t *>(sS + jl_lo * PT + n * 8 + 2 * t) = pack_bf16(dp[n][0], dp[n][1]);
                *reinterpret_cast<uint32_t *>(sS + jl_hi * PT + n * 8 + 2 * t) = pack_bf16(dp[n][2], dp[n][3]);
            }
            __syncthreads();

            /* dQ (the warp's 16 queries) = dS K over the tile's keys */
            if (16 * w < nq) {
                float gq[ND][4];
#pragma unroll
                for (int n = 0; n < ND; n++) gq[n][0] = gq[n][1] = gq[n][2] = gq[n][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < T / 16; kk++) {
                    uint32_t af[4];
                    load_a_t(af, sS, PT, 16 * w, 16 * kk, lane);
#pragma unroll
                    for (int np = 0; np < ND / 2; np++) {
                        uint32_t bk[4];
                        load_b_t(bk, sK, P, 16 * kk, 16 * np, lane);
                        mma_bf16(gq[2 * np], af, bk[0], bk[1]);
                        mma_bf16(gq[2 * np + 1], af, bk[2], bk[3]);
                    }
                }
                const int i_lo = q0 + 16 * w + g, i_hi = i_lo + 8;
                const bool acc = k0 > 0;
                if (i_lo < a.Tq) {
                    float *row = dQ + (long)i_lo * a.q_row;
#pragma unroll
                    for (int n = 0; n < ND; n++) store2<VEC>(row, n * 8 + 2 * t, a.dk, gq[n][0], gq[n][1], acc);
                }
                if (i_hi < a.Tq) {
                    float *row = dQ + (long)i_hi * a.q_row;
#pragma unroll
                    for (int n = 0; n < ND; n++) store2<VEC>(row, n * 8 + 2 * t, a.dk, gq[n][2], gq[n][3], acc);
                }
            }
        }
        /* dK, dV of the key tile */
        const int j_lo = k0 + jl_lo, j_hi = k0 + jl_hi;
        if (j_lo < a.Tk) {
            float *rk = dK + (long)j_lo * a.k_row, *rv = dV + (long)j_lo * a.v_row;
#pragma unroll
            for (int n = 0; n < ND; n++) {
                store2<VEC>(rk, n * 8 + 2 * t, a.dk, gk[n][0], gk[n][1], false);
                store2<VEC>(rv, n * 8 + 2 * t, a.dv, gv[n][0], gv[n][1], false);
            }
        }
        if (j_hi < a.Tk) {
            float *rk = dK + (long)j_hi * a.k_row, *rv = dV + (long)j_hi * a.v_row;
#pragma unroll
            for (int n = 0; n < ND; n++) {
                store2<VEC>(rk, n * 8 + 2 * t, a.dk, gk[n][2], gk[n][3], false);
                store2<VEC>(rv, n * 8 + 2 * t, a.dv, gv[n][2], gv[n][3], false);
            }
        }
    }
}

/* =====================================================================
 * host side
 * ===================================================================== */

#define SMEM_DEFAULT (48 * 1024) /* dynamic shared memory a launch gets without opting in */

int g_smem_optin = -1; /* the device's opt-in limit per block (bytes) */
int g_sm80 = -1;       /* compute capability >= 8.0: bf16 mma */

void device_limits(void) {
    if (g_smem_optin >= 0) return;
    int dev = 0, major = 0, optin = 0;
    TFM_CUDA_CHECK(cudaGetDevice(&dev));
    TFM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    TFM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    g_sm80 = major >= 8;
    g_smem_optin = optin > SMEM_DEFAULT ? optin : SMEM_DEFAULT;
}

/* Raises a kernel's dynamic shared memory limit when a launch needs more
 * than the default 48 KiB (a no-op otherwise). */
template <typename K>
void allow_smem(K kernel, size_t bytes) {
    if (bytes > SMEM_DEFAULT)
        TFM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

/* The bf16 path's padded head size: 32, 64 or 128; 0 when it does not apply
 * (not BF16 mode, a head past 128, an empty head, a GPU before sm_80). */
int bf16_head(const tfm_attn_dims *d) {
    if (!tfm_cuda_matmul_is_bf16() || d->dk < 1 || d->dv < 1 || d->dk > 128 || d->dv > 128) return 0;
    device_limits();
    if (!g_sm80) return 0;
    int m = d->dk > d->dv ? d->dk : d->dv;
    return m <= 32 ? 32 : m <= 64 ? 64 : 128;
}

/* Warps per bf16 block: tiles of 32 rows for short sequences (the training
 * sentences), 64 for longer ones; 128-wide heads keep 32-row tiles (the
 * backward's accumulators would not fit in registers). */
int bf16_warps(const tfm_attn_dims *d, int D) {
    int L = d->Tq > d->Tk ? d->Tq : d->Tk;
    return (L <= 32 || D > 64) ? 2 : 4;
}

/* 16-byte loads and 8-byte stores: every base pointer 16-byte aligned, every
 * stride and head size a multiple of 4 floats. */
bool aligned4(long x) { return x % 4 == 0; }
bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }
bool vec_ok(const tfm_attn_dims *d) {
    return aligned4(d->dk) && aligned4(d->dv) && aligned4(d->q_row) && aligned4(d->q_batch) && aligned4(d->k_row) &&
           aligned4(d->k_batch) && aligned4(d->v_row) && aligned4(d->v_batch) && aligned4(d->o_row) &&
           aligned4(d->o_batch);
}

/* Shared memory of the bf16 kernels (see their layouts). */
size_t fwd_bf16_smem(int D, int NW) { return (size_t)3 * slot_bytes(D, NW) + (size_t)16 * NW * 4; }
size_t bwd_bf16_smem(int D, int NW) {
    int T = 16 * NW;
    return (size_t)4 * slot_bytes(D, NW) + (size_t)T * (T + 8) * 2 + (size_t)3 * T * 4;
}

template <int D, int NW>
void launch_fwd_bf16(bool vec, unsigned blocks, float *out, float *lse, const float *q, const float *k,
                     const float *v, const targs &a, int nqt) {
    size_t smem = fwd_bf16_smem(D, NW);
    cudaStream_t st = tfm_cuda_stream();
    if (vec) {
        allow_smem(fwd_bf16_kernel<D, NW, true>, smem);
        fwd_bf16_kernel<D, NW, true><<<blocks, 32 * NW, smem, st>>>(out, lse, q, k, v, a, nqt);
    } else {
        allow_smem(fwd_bf16_kernel<D, NW, false>, smem);
        fwd_bf16_kernel<D, NW, false><<<blocks, 32 * NW, smem, st>>>(out, lse, q, k, v, a, nqt);
    }
    TFM_CUDA_LAUNCHED();
}

template <int D, int NW>
void launch_bwd_bf16(bool vec, unsigned blocks, float *dq, float *dk, float *dv, const float *dout, const float *out,
                     const float *lse, const float *q, const float *k, const float *v, const targs &a) {
    size_t smem = bwd_bf16_smem(D, NW);
    cudaStream_t st = tfm_cuda_stream();
    if (vec) {
        allow_smem(bwd_bf16_kernel<D, NW, true>, smem);
        bwd_bf16_kernel<D, NW, true><<<blocks, 32 * NW, smem, st>>>(dq, dk, dv, dout, out, lse, q, k, v, a);
    } else {
        allow_smem(bwd_bf16_kernel<D, NW, false>, smem);
        bwd_bf16_kernel<D, NW, false><<<blocks, 32 * NW, smem, st>>>(dq, dk, dv, dout, out, lse, q, k, v, a);
    }
    TFM_CUDA_LAUNCHED();
}

/* Returns whether it filled d->out_keep: with float2 stores (vec), out's rows
 * contiguous ([B*Tq, H*dv], the keep's rows of bf16_ld(H*dv) = H*dv bf16 when
 * H*dv % 8 == 0), and a keep gemm.cu would use (tfm_cuda_keep_writable). */
int forward_bf16(float *out, float *lse, const float *q, const float *k, const float *v, const tfm_attn_dims *d,
                 int D) {
    int NW = bf16_warps(d, D), T = 16 * NW;
    long nqt = (d->Tq + T - 1) / T, blocks = (long)d->B * d->H * nqt;
    TFM_CUDA_ASSERT(blocks <= 0x7fffffffL);
    bool vec = vec_ok(d) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
    targs a = make_targs(d);
    long width = (long)d->H * d->dv;
    const char *off = getenv("TFM_ATTN_KEEP"); /* "0": never fill (A/B timing) */
    if (vec && tfm_cuda_keep_writable(d->out_keep) && d->o_row == width && d->o_batch == d->Tq * width &&
        width % 8 == 0 && !(off && !strcmp(off, "0")))
        a.out16 = (__nv_bfloat16 *)d->out_keep;
    unsigned nb = (unsigned)blocks;
    if (D == 32 && NW == 2) launch_fwd_bf16<32, 2>(vec, nb, out, lse, q, k, v, a, (int)nqt);
    else if (D == 32) launch_fwd_bf16<32, 4>(vec, nb, out, lse, q, k, v, a, (int)nqt);
    else if (D == 64 && NW == 2) launch_fwd_bf16<64, 2>(vec, nb, out, lse, q, k, v, a, (int)nqt);
    else if (D == 64) launch_fwd_bf16<64, 4>(vec, nb, out, lse, q, k, v, a, (int)nqt);
    else launch_fwd_bf16<128, 2>(vec, nb, out, lse, q, k, v, a, (int)nqt);
    return a.out16 != NULL;
}

void backward_bf16(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                   const float *q, const float *k, const float *v, const tfm_attn_dims *d, int D) {
    int NW = bf16_warps(d, D);
    long blocks = (long)d->B * d->H;
    TFM_CUDA_ASSERT(blocks <= 0x7fffffffL);
    bool vec = vec_ok(d) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout) && aligned16(out) &&
               aligned16(dq) && aligned16(dk) && aligned16(dv);
    targs a = make_targs(d);
    unsigned nb = (unsigned)blocks;
    if (D == 32 && NW == 2) launch_bwd_bf16<32, 2>(vec, nb, dq, dk, dv, dout, out, lse, q, k, v, a);
    else if (D == 32) launch_bwd_bf16<32, 4>(vec, nb, dq, dk, dv, dout, out, lse, q, k, v, a);
    else if (D == 64 && NW == 2) launch_bwd_bf16<64, 2>(vec, nb, dq, dk, dv, dout, out, lse, q, k, v, a);
    else if (D == 64) launch_bwd_bf16<64, 4>(vec, nb, dq, dk, dv, dout, out, lse, q, k, v, a);
    else launch_bwd_bf16<128, 2>(vec, nb, dq, dk, dv, dout, out, lse, q, k, v, a);
}

/* fp32 path: rows per warp (4, else 1) and whether tiles are staged, the
 * first layout whose shared memory the device allows; floats of shared
 * memory given R rows per block (a function of the kernel). */
struct f32_plan {
    int rows_per_warp, staged;
    size_t smem;
};

template <typename F>
f32_plan plan_f32(F floats) {
    device_limits();
    const int options[3][2] = {{4, 1}, {1, 1}, {1, 0}};
    for (int o = 0; o < 3; o++) {
        f32_plan p = {options[o][0], options[o][1], floats(F32_WARPS * options[o][0], options[o][1]) * sizeof(float)};
        if (p.smem <= (size_t)g_smem_optin) return p;
    }
    tfm_cuda_fail("tiled attention", __FILE__, __LINE__, "head size too large for shared memory");
}

void forward_f32(float *out, float *lse, const float *q, const float *k, const float *v, const tfm_attn_dims *d) {
    const long dk = d->dk, dv = d->dv, ks = dk | 1;
    f32_plan p = plan_f32([&](long R, int staged) {
        return (size_t)(R * dk + R * dv + F32_WARPS * 32 + (staged ? F32_TILE * (ks + dv) : 0));
    });
    long R = F32_WARPS * p.rows_per_warp, nblk = (d->Tq + R - 1) / R, blocks = (long)d->B * d->H * nblk;
    TFM_CUDA_ASSERT(blocks <= 0x7fffffffL);
    targs a = make_targs(d);
    cudaStream_t st = tfm_cuda_stream();
    if (p.rows_per_warp == 4) {
        allow_smem(fwd_f32_kernel<4>, p.smem);
        fwd_f32_kernel<4><<<(unsigned)blocks, 32 * F32_WARPS, p.smem, st>>>(out, lse, q, k, v, a, (int)nblk, p.staged);
    } else {
        allow_smem(fwd_f32_kernel<1>, p.smem);
        fwd_f32_kernel<1><<<(unsigned)blocks, 32 * F32_WARPS, p.smem, st>>>(out, lse, q, k, v, a, (int)nblk, p.staged);
    }
    TFM_CUDA_LAUNCHED();
}

void backward_f32(float *dq, float *dk, float *dv, float *delta, const float *dout, const float *out,
                  const float *lse, const float *q, const float *k, const float *v, const tfm_attn_dims *d) {
    const long dkk = d->dk, dvv = d->dv, ks = dkk | 1, vs = dvv | 1;
    targs a = make_targs(d);
    cudaStream_t st = tfm_cuda_stream();
    if (d->Tq > 0) {
        f32_plan p = plan_f32([&](long R, int staged) {
            return (size_t)(2 * R * dkk + R * dvv + F32_WARPS * 32 + (staged ? F32_TILE * (ks + vs) : 0));
        });
        long R = F32_WARPS * p.rows_per_warp, nblk = (d->Tq + R - 1) / R, blocks = (long)d->B * d->H * nblk;
        TFM_CUDA_ASSERT(blocks <= 0x7fffffffL);
        if (p.rows_per_warp == 4) {
            allow_smem(dq_f32_kernel<4>, p.smem);
            dq_f32_kernel<4><<<(unsigned)blocks, 32 * F32_WARPS, p.smem, st>>>(dq, delta, dout, out, lse, q, k, v, a,
                                                                                (int)nblk, p.staged);
        } else {
            allow_smem(dq_f32_kernel<1>, p.smem);
            dq_f32_kernel<1><<<(unsigned)blocks, 32 * F32_WARPS, p.smem, st>>>(dq, delta, dout, out, lse, q, k, v, a,
                                                                                (int)nblk, p.staged);
        }
        TFM_CUDA_LAUNCHED();
    }
    if (d->Tk > 0) {
        f32_plan p = plan_f32([&](long R, int staged) {
            return (size_t)(2 * R * (dkk + dvv) + 2 * F32_WARPS * 32 + 2 * F32_TILE +
                            (staged ? F32_TILE * (ks + vs) : 0));
        });
        long R = F32_WARPS * p.rows_per_warp, nblk = (d->Tk + R - 1) / R, blocks = (long)d->B * d->H * nblk;
        TFM_CUDA_ASSERT(blocks <= 0x7fffffffL);
        if (p.rows_per_warp == 4) {
            allow_smem(dkv_f32_kernel<4>, p.smem);
            dkv_f32_kernel<4><<<(unsigned)blocks, 32 * F32_WARPS, p.smem, st>>>(dk, dv, dout, lse, delta, q, k, v, a,
                                                                                 (int)nblk, p.staged);
        } else {
            allow_smem(dkv_f32_kernel<1>, p.smem);
            dkv_f32_kernel<1><<<(unsigned)blocks, 32 * F32_WARPS, p.smem, st>>>(dk, dv, dout, lse, delta, q, k, v, a,
                                                                                 (int)nblk, p.staged);
        }
        TFM_CUDA_LAUNCHED();
    }
}

} /* namespace */

/* ---------------------------------------------------------- entry points */

/* Floats of scratch for d's sizes: delta [B, H, Tq] (the fp32 backward; the
 * bf16 backward computes delta in shared memory and uses none). */
size_t tfm_cuda_attention_tiled_scratch(const tfm_attn_dims *d) {
    if (d->B <= 0 || d->H <= 0 || d->Tq <= 0) return 0;
    return (size_t)d->B * d->H * d->Tq;
}

/* 1 where the tiled ops beat the materialised ones (attention.cu): in BF16
 * mode on the tensor-core path, except for decoding's few queries, which
 * attention.cu's row kernel serves. The fp32 path is no faster than the
 * materialised one at the training shapes, so it is taken only where the
 * probabilities would not fit (the workspace decides that). Sizes only. */
int tfm_cuda_attention_tiled_preferred(const tfm_attn_dims *d) {
    return bf16_head(d) > 0 && d->Tq > 4;
}

/* out [B, Tq, H*dv] (strided as d), lse [B, H, Tq]; scratch unused.
 * Device pointers, key_pad included. */
int tfm_cuda_attention_tiled_forward(float *out, float *lse, float *scratch, size_t scratch_len, const float *q,
                                     const float *k, const float *v, const tfm_attn_dims *d) {
    (void)scratch, (void)scratch_len;
    TFM_CUDA_ASSERT(!d->kv_rows); /* the CPU decoder's row map */
    if (d->B <= 0 || d->H <= 0 || d->Tq <= 0) return 0;
    int D = bf16_head(d);
    if (D) return forward_bf16(out, lse, q, k, v, d, D);
    forward_f32(out, lse, q, k, v, d);
    return 0;
}

/* dq, dk, dv (=, strided as q, k, v) from dout, the forward's out and lse;
 * scratch holds at least tfm_cuda_attention_tiled_scratch(d) floats (the
 * fp32 path's delta). Device pointers. */
void tfm_cuda_attention_tiled_backward(float *dq, float *dk, float *dv, float *scratch, size_t scratch_len,
                                       const float *dout, const float *out, const float *lse, const float *q,
                                       const float *k, const float *v, const tfm_attn_dims *d) {
    TFM_CUDA_ASSERT(!d->kv_rows);
    if (d->B <= 0 || d->H <= 0) return;
    if (d->Tq <= 0 || d->Tk <= 0) {
        /* No products: dk, dv (Tq == 0) or dq (Tk == 0) are zero. */
        if (d->Tq <= 0 && d->Tk > 0) {
            for (int b = 0; b < d->B; b++) {
                TFM_CUDA_CHECK(cudaMemset2DAsync(dk + b * d->k_batch, d->k_row * sizeof(float), 0,
                                                 (size_t)d->H * d->dk * sizeof(float), d->Tk, tfm_cuda_stream()));
                TFM_CUDA_CHECK(cudaMemset2DAsync(dv + b * d->v_batch, d->v_row * sizeof(float), 0,
                                                 (size_t)d->H * d->dv * sizeof(float), d->Tk, tfm_cuda_stream()));
            }
        } else if (d->Tq > 0) {
            for (int b = 0; b < d->B; b++)
                TFM_CUDA_CHECK(cudaMemset2DAsync(dq + b * d->q_batch, d->q_row * sizeof(float), 0,
                                                 (size_t)d->H * d->dk * sizeof(float), d->Tq, tfm_cuda_stream()));
        }
        return;
    }
    int D = bf16_head(d);
    if (D) {
        backward_bf16(dq, dk, dv, dout, out, lse, q, k, v, d, D);
        return;
    }
    TFM_CUDA_ASSERT(scratch && scratch_len >= tfm_cuda_attention_tiled_scratch(d));
    backward_f32(dq, dk, dv, scratch, dout, out, lse, q, k, v, d);
}
