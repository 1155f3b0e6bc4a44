/*
 * attn_micro.cu: times the kernels that the base model's training profile
 * singled out, the version before (copied here) against the library's:
 *
 *   the six attention products (QK^T, PV and the four of the backward) at the
 *   base model's shapes (800 x 32 tokens, 8 heads, head size 64, q/k/v slices
 *   of one [N, 3*512] buffer): old 64x64-tile bgemm vs tfm_cuda_bgemm;
 *   the bias gradient (column sums of [25600, C]): one-pass colsum vs
 *   tfm_cuda_linear_backward(db only);
 *   linear forward with bias, and linear backward (din and dw, no db), at
 *   the model's shapes (the generator's 512 -> 37000 included): cuBLASLt on
 *   the fp32 operands in the mode's compute type (COMPUTE_32F, or with
 *   --bf16 COMPUTE_32F_FAST_16BF, the library's bf16 path before it made
 *   bf16 copies) plus a bias kernel, vs tfm_cuda_linear_forward /
 *   tfm_cuda_linear_backward (with --bf16: conversion to bf16 copies, bf16
 *   cuBLASLt, bias in the epilogue; the time includes the conversions).
 *
 *   the whole attention op through the backend table: at the base model's
 *   training shapes (800 x 32 tokens, 8 heads, head size 64; self-attention
 *   causal, cross-attention with padding; dropout 0.1) the forward and the
 *   backward timed alone, as the library runs them (the unfused path: bgemm
 *   products and row kernels; attention.cu has no fused training kernel); at
 *   beam search's decoding shapes (256 rows = 64 sentences x beam 4, one
 *   query over a KV cache of 33 keys, cross-attention over 32) the forward
 *   unfused (tfm_cuda_attention_set_fused(0)) vs attention.cu's row kernel,
 *   which must agree bit for bit: diff 0 expected. --attn runs this part only.
 *
 *   --tiled (this part only): the tiled ops of attention_tiled.cu against the
 *   materialised ones at the base model's training calls (decoder self
 *   causal + padding, encoder self + padding, cross + padding; dropout 0.1),
 *   forward and backward, in fp32 mode and in BF16 mode (see tiled_op).
 *   --tiled --quick: the same at 16 batch rows, each op once, plus shapes
 *   of the tiled kernels' other paths (for compute-sanitizer).
 *
 * Each line: median of 20 timed calls (CUDA events on the backend's stream)
 * and the largest |new - old| relative to max|old| (a sanity check only;
 * tests/test_cuda_ops.c is the test). Not built by CMake. Build (after
 * building the library in build-cuda, say) and run from the repository root:
 *
 *   nvcc -O2 -arch=sm_90 -std=c++17 -Iinclude -Isrc bench/gpu/attn_micro.cu -Lbuild-cuda -ltransformer -lcublasLt \
 *        -Xlinker -rpath,$PWD/build-cuda -o build-cuda/attn_micro &&
 *   build-cuda/attn_micro [--bf16] [--attn] [--tiled [--quick]]
 */
#include "cuda/cuda_internal.cuh"

#include <algorithm>
#include <string.h>
#include <vector>

/* ------------------------------------------------ the old kernels, verbatim */

#define OLD_TM 64
#define OLD_TN 64
#define OLD_TK 16
#define OLD_THREADS 256

template <int TA, int TB>
__global__ void __launch_bounds__(OLD_THREADS) old_bgemm_kernel(tfm_cuda_bgemm_args g) {
    __shared__ float As[OLD_TK][OLD_TM + 1];
    __shared__ float Bs[OLD_TK][OLD_TN + 1];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    int row0 = blockIdx.y * OLD_TM, col0 = blockIdx.x * OLD_TN;
    for (int z = blockIdx.z; z < g.B * g.H; z += gridDim.z) {
        int b = z / g.H, h = z % g.H;
        const float *A = g.A + b * g.a_batch + h * g.a_head;
        const float *Bm = g.Bm + b * g.b_batch + h * g.b_head;
        float *C = g.C + b * g.c_batch + h * g.c_head;
        float acc[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[r][c] = 0.0f;
        for (int k0 = 0; k0 < g.K; k0 += OLD_TK) {
#pragma unroll
            for (int l = tid; l < OLD_TM * OLD_TK; l += OLD_THREADS) {
                int i = TA ? l % OLD_TM : l / OLD_TK, p = TA ? l / OLD_TM : l % OLD_TK;
                int gi = row0 + i, gp = k0 + p;
                float a = 0.0f;
                if (gi < g.M && gp < g.K) a = TA ? A[(long)gp * g.lda + gi] : A[(long)gi * g.lda + gp];
                As[p][i] = a;
            }
#pragma unroll
            for (int l = tid; l < OLD_TN * OLD_TK; l += OLD_THREADS) {
                int j = TB ? l / OLD_TK : l % OLD_TN, p = TB ? l % OLD_TK : l / OLD_TN;
                int gj = col0 + j, gp = k0 + p;
                float v = 0.0f;
                if (gj < g.N && gp < g.K) v = TB ? Bm[(long)gj * g.ldb + gp] : Bm[(long)gp * g.ldb + gj];
                Bs[p][j] = v;
            }
            __syncthreads();
#pragma unroll
            for (int p = 0; p < OLD_TK; p++) {
                float a[4], bv[4];
#pragma unroll
                for (int r = 0; r < 4; r++) a[r] = As[p][ty + 16 * r];
#pragma unroll
                for (int c = 0; c < 4; c++) bv[c] = Bs[p][tx + 16 * c];
#pragma unroll
                for (int r = 0; r < 4; r++)
#pragma unroll
                    for (int c = 0; c < 4; c++) acc[r][c] += a[r] * bv[c];
            }
            __syncthreads();
        }
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int gi = row0 + ty + 16 * r;
            if (gi >= g.M) continue;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int gj = col0 + tx + 16 * c;
                if (gj >= g.N) continue;
                float *dst = C + (long)gi * g.ldc + gj;
                *dst = g.beta == 0.0f ? g.alpha * acc[r][c] : g.alpha * acc[r][c] + g.beta * *dst;
            }
        }
    }
}

static void old_bgemm(const tfm_cuda_bgemm_args *g) {
    int batches = g->B * g->H;
    dim3 grid((g->N + OLD_TN - 1) / OLD_TN, (g->M + OLD_TM - 1) / OLD_TM, batches < 65535 ? batches : 65535);
    cudaStream_t st = tfm_cuda_stream();
    if (!g->ta && !g->tb) old_bgemm_kernel<0, 0><<<grid, OLD_THREADS, 0, st>>>(*g);
    else if (!g->ta && g->tb) old_bgemm_kernel<0, 1><<<grid, OLD_THREADS, 0, st>>>(*g);
    else if (g->ta && !g->tb) old_bgemm_kernel<1, 0><<<grid, OLD_THREADS, 0, st>>>(*g);
    else old_bgemm_kernel<1, 1><<<grid, OLD_THREADS, 0, st>>>(*g);
    TFM_CUDA_LAUNCHED();
}

__global__ void old_colsum_add_kernel(float *sums, const float *x, int N, int C) {
    __shared__ float part[16][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (c < C)
        for (int n = threadIdx.y; n < N; n += 16) s += x[(long)n * C + c];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0.0f;
        for (int r = 0; r < 16; r++) t += part[r][threadIdx.x];
        sums[c] += t;
    }
}

__global__ void old_bias_add_kernel(float *out, const float *b, int N, int O) {
    for (int n = blockIdx.y; n < N; n += gridDim.y)
        for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < O; o += gridDim.x * blockDim.x)
            out[(long)n * O + o] += b[o];
}

/* ------------------------------------------- option: cuBLASLt per head */

/* The same strided-batched product as H cuBLASLt calls, one per head, each
 * batched over B with the batch strides (the head is an offset of the base
 * pointers): the alternative to a hand-written kernel, timed for comparison.
 * Row-major through column-major as in gemm.cu. */
struct lt_batched {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    int ok;
};

static void layout(cublasLtMatrixLayout_t *l, int rows, int cols, long ld, int count, long stride) {
    int64_t st = stride;
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, CUDA_R_32F, rows, cols, ld));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    TFM_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof st));
}

static lt_batched lt_plan(const tfm_cuda_bgemm_args &g, cublasComputeType_t compute) {
    lt_batched p;
    memset(&p, 0, sizeof p);
    cublasOperation_t op_a = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    TFM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F));
    TFM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    TFM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    layout(&p.la, g.tb ? g.K : g.N, g.tb ? g.N : g.K, g.ldb, g.B, g.b_batch);
    layout(&p.lb, g.ta ? g.M : g.K, g.ta ? g.K : g.M, g.lda, g.B, g.a_batch);
    layout(&p.lc, g.N, g.M, g.ldc, g.B, g.c_batch);
    size_t ws_bytes = 0;
    (void)tfm_cuda_lt_workspace(&ws_bytes);
    cublasLtMatmulPreference_t pref;
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                          sizeof ws_bytes));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(tfm_cuda_lt(), p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &res, &found);
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    p.ok = s == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p.ok) p.algo = res.algo;
    return p;
}

static void lt_run(const lt_batched &p, const tfm_cuda_bgemm_args &g) {
    size_t ws_bytes = 0;
    void *ws = tfm_cuda_lt_workspace(&ws_bytes);
    for (int h = 0; h < g.H; h++) {
        const float *A = g.A + h * g.a_head, *Bm = g.Bm + h * g.b_head;
        float *C = g.C + h * g.c_head;
        TFM_CUBLAS_CHECK(cublasLtMatmul(tfm_cuda_lt(), p.desc, &g.alpha, Bm, p.la, A, p.lb, &g.beta, C, p.lc, C, p.lc,
                                        &p.algo, ws, ws_bytes, tfm_cuda_stream()));
    }
}

/* ------------------------------------------------------------- harness */

static float *dev_random(size_t n, unsigned seed) {
    std::vector<float> h(n);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        h[i] = (float)(seed >> 8) / 16777216.0f * 2.0f - 1.0f;
    }
    float *d;
    TFM_CUDA_CHECK(cudaMalloc(&d, n * sizeof(float)));
    TFM_CUDA_CHECK(cudaMemcpy(d, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

static int g_warm = 3, g_reps = 20; /* --quick: 0 and 1 */

/* Median milliseconds of 20 calls of fn, after 3 warm-up calls. */
template <typename F>
static double time_ms(F fn) {
    cudaStream_t st = tfm_cuda_stream();
    cudaEvent_t e0, e1;
    TFM_CUDA_CHECK(cudaEventCreate(&e0));
    TFM_CUDA_CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < g_warm; i++) fn();
    std::vector<double> t;
    for (int i = 0; i < g_reps; i++) {
        TFM_CUDA_CHECK(cudaEventRecord(e0, st));
        fn();
        TFM_CUDA_CHECK(cudaEventRecord(e1, st));
        TFM_CUDA_CHECK(cudaEventSynchronize(e1));
        float ms;
        TFM_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    TFM_CUDA_CHECK(cudaEventDestroy(e0));
    TFM_CUDA_CHECK(cudaEventDestroy(e1));
    return t[t.size() / 2];
}

/* max|x - y| / max|y| over n device floats. */
static double rel_diff(const float *x, const float *y, size_t n) {
    std::vector<float> hx(n), hy(n);
    TFM_CUDA_CHECK(cudaStreamSynchronize(tfm_cuda_stream()));
    TFM_CUDA_CHECK(cudaMemcpy(hx.data(), x, n * sizeof(float), cudaMemcpyDeviceToHost));
    TFM_CUDA_CHECK(cudaMemcpy(hy.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost));
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = std::max(d, (double)fabsf(hx[i] - hy[i]));
        m = std::max(m, (double)fabsf(hy[i]));
    }
    return m > 0 ? d / m : d;
}

static void line(const char *name, double old_ms, double new_ms, double flop, double diff) {
    printf("%-34s old %8.1f us  new %8.1f us  x%5.2f", name, old_ms * 1e3, new_ms * 1e3, old_ms / new_ms);
    if (flop > 0) printf("  new %6.1f TFLOP/s", flop / (new_ms * 1e-3) / 1e12);
    printf("  diff %.1e\n", diff);
}

/* One time, nothing to compare it with. */
static void line_one(const char *name, double ms, double flop) {
    printf("%-34s     %8.1f us", name, ms * 1e3);
    if (flop > 0) printf("  %6.1f TFLOP/s", flop / (ms * 1e-3) / 1e12);
    printf("\n");
}

/* ------------------------------------------------------- the attention op */

/* One shape of the attention op and its buffers' layout (in floats). */
struct attn_shape {
    const char *name;
    int B, H, Tq, Tk, d, causal, q_offset, pad, train;
    float dropout;
    long q_row, q_batch, kv_row, kv_batch, k_off, v_off, o_row, o_batch; /* k = kv + k_off, v = kv + v_off */
    size_t nq, nkv, no;                                                   /* buffer sizes of q, kv, out */
};

static uint8_t *dev_pad(int B, int stride, unsigned seed) {
    std::vector<uint8_t> h((size_t)B * stride);
    for (size_t i = 0; i < h.size(); i++) {
        seed = seed * 1664525u + 1013904223u;
        h[i] = (seed >> 24) < 26; /* about 10% of the keys masked */
    }
    uint8_t *d;
    TFM_CUDA_CHECK(cudaMalloc(&d, h.size()));
    TFM_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size(), cudaMemcpyHostToDevice));
    return d;
}

static float *dev_zeros(size_t n) {
    float *d;
    TFM_CUDA_CHECK(cudaMalloc(&d, n * sizeof(float)));
    TFM_CUDA_CHECK(cudaMemset(d, 0, n * sizeof(float)));
    return d;
}

/* Training shapes: times the forward and the backward as the library runs
 * them (the unfused path). Decoding shapes: times the forward with the row
 * kernel off (old), then on (new), and compares the two results. */
static void attention_op(const tfm_backend *be, const attn_shape &s) {
    size_t np = (size_t)s.B * s.H * s.Tq * s.Tk;
    float *q = dev_random(s.nq, 11), *kv = dev_random(s.nkv, 12), *dout = dev_random(s.no, 13);
    const float *k = kv + s.k_off, *v = kv + s.v_off;
    uint8_t *pad = s.pad ? dev_pad(s.B, s.Tk, 14) : NULL;
    int f0 = s.train ? 1 : 0; /* f = 0: unfused; 1: the library's choice (unfused too when training) */
    float *out[2] = {NULL, NULL}, *probs[2] = {NULL, NULL}, *scr[2] = {NULL, NULL};
    for (int f = f0; f < 2; f++) out[f] = dev_zeros(s.no), probs[f] = dev_zeros(np), scr[f] = dev_zeros(np);
    tfm_attn_dims d;
    memset(&d, 0, sizeof d);
    d.B = s.B, d.H = s.H, d.Tq = s.Tq, d.Tk = s.Tk, d.dk = d.dv = s.d;
    d.q_row = s.q_row, d.q_batch = s.q_batch, d.k_row = d.v_row = s.kv_row, d.k_batch = d.v_batch = s.kv_batch;
    d.o_row = s.o_row, d.o_batch = s.o_batch;
    d.causal = s.causal, d.q_offset = s.q_offset, d.key_pad = pad, d.key_pad_stride = s.Tk;
    d.scale = 1.0 / sqrt((double)s.d), d.dropout = s.dropout, d.seed = 1, d.stream = 2;
    double t_fwd[2] = {0, 0}, flop = 4.0 * s.B * s.H * s.Tq * s.Tk * s.d;
    for (int f = f0; f < 2; f++) {
        tfm_cuda_attention_set_fused(f);
        float *sc = s.dropout > 0 ? scr[f] : NULL;
        t_fwd[f] = time_ms([&] { be->attention_forward(out[f], probs[f], sc, q, k, v, &d); });
    }
    tfm_cuda_attention_set_fused(1);
    char name[96];
    snprintf(name, sizeof name, "%s fwd", s.name);
    if (s.train) {
        line_one(name, t_fwd[1], flop);
        float *dq = dev_zeros(s.nq), *dkv = dev_zeros(s.nkv);
        double t_bwd = time_ms([&] {
            be->attention_backward(dq, dkv + s.k_off, dkv + s.v_off, scr[1], dout, probs[1], q, k, v, &d);
        });
        snprintf(name, sizeof name, "%s bwd", s.name);
        line_one(name, t_bwd, 2 * flop);
        TFM_CUDA_CHECK(cudaFree(dq));
        TFM_CUDA_CHECK(cudaFree(dkv));
    } else {
        double diff = std::max(rel_diff(out[1], out[0], s.no), rel_diff(probs[1], probs[0], np));
        if (s.dropout > 0) diff = std::max(diff, rel_diff(scr[1], scr[0], np));
        line(name, t_fwd[0], t_fwd[1], flop, diff);
    }
    for (int f = f0; f < 2; f++) {
        TFM_CUDA_CHECK(cudaFree(out[f]));
        TFM_CUDA_CHECK(cudaFree(probs[f]));
        TFM_CUDA_CHECK(cudaFree(scr[f]));
    }
    TFM_CUDA_CHECK(cudaFree(q));
    TFM_CUDA_CHECK(cudaFree(kv));
    TFM_CUDA_CHECK(cudaFree(dout));
    TFM_CUDA_CHECK(cudaFree(pad));
}

static void attention_ops(const tfm_backend *be) {
    const int H = 8, d = 64, D = H * d;
    /* Training, B = 800, T = S = 32 (model.c). Self: q, k, v slices of one
     * [N, 3D] buffer. Cross: q [N, D]; k, v slices of [B*S, 2D]. */
    const int B = 800, T = 32;
    const size_t N = (size_t)B * T;
    attn_shape self = {"self 800x8 32x32 causal dropout", B, H, T, T, d, 1, 0, 0, 1, 0.1f,
                       3 * D, (long)T * 3 * D, 3 * D, (long)T * 3 * D, D, 2 * D, D, (long)T * D,
                       N * 3 * D, N * 3 * D, N * D};
    attn_shape cross = {"cross 800x8 32x32 pad dropout", B, H, T, T, d, 0, 0, 1, 1, 0.1f,
                        D, (long)T * D, 2 * D, (long)T * 2 * D, 0, D, D, (long)T * D,
                        N * D, N * 2 * D, N * D};
    /* Decoding, 256 rows of one query each (decode.c): self over caches
     * [R, Tmax = 33, D] for k and v (one buffer here, v behind k), q in the
     * step's [R, 3D]; cross over [R, S = 32, 2D]. */
    const int R = 256, L = 33, S = 32;
    attn_shape dself = {"decode self 256x8 Tq 1 Tk 33 pad", R, H, 1, L, d, 1, L - 1, 1, 0, 0.0f,
                        3 * D, 3 * D, D, (long)L * D, 0, (long)R * L * D, D, D,
                        (size_t)R * 3 * D, (size_t)2 * R * L * D, (size_t)R * D};
    attn_shape dcross = {"decode cross 256x8 Tq 1 Tk 32 pad", R, H, 1, S, d, 0, 0, 1, 0, 0.0f,
                         D, D, 2 * D, (long)S * 2 * D, 0, D, D, D,
                         (size_t)R * D, (size_t)R * S * 2 * D, (size_t)R * D};
    printf("attention op, flops QK^T and PV (x2 backward): training shapes as the library runs them (unfused);\n"
           "decoding: old = unfused (bgemm + row kernels), new = the row kernel\n");
    attention_op(be, self);
    attention_op(be, cross);
    attention_op(be, dself);
    attention_op(be, dcross);
}

/* --tiled: the tiled ops (attention_tiled.cu, lse instead of probabilities)
 * against the materialised ones (old: attention.cu, the unfused path) at the
 * base model's training shapes, forward and backward timed apart, in fp32
 * mode (the tiled ops on CUDA cores) and in BF16 mode (tensor cores; the
 * materialised ops are the same fp32 kernels in both modes). diff: the
 * largest |new - old| over max|old| of out (forward) and of dq, dk, dv
 * (backward): rounding in fp32 mode, bf16 operands in BF16 mode. */
static void tiled_op(const tfm_backend *be, const attn_shape &s, int bf16) {
    size_t np = (size_t)s.B * s.H * s.Tq * s.Tk, nl = (size_t)s.B * s.H * s.Tq;
    float *q = dev_random(s.nq, 21), *kv = dev_random(s.nkv, 22), *dout = dev_random(s.no, 23);
    const float *k = kv + s.k_off, *v = kv + s.v_off;
    uint8_t *pad = s.pad ? dev_pad(s.B, s.Tk, 24) : NULL;
    tfm_attn_dims d;
    memset(&d, 0, sizeof d);
    d.B = s.B, d.H = s.H, d.Tq = s.Tq, d.Tk = s.Tk, d.dk = d.dv = s.d;
    d.q_row = s.q_row, d.q_batch = s.q_batch, d.k_row = d.v_row = s.kv_row, d.k_batch = d.v_batch = s.kv_batch;
    d.o_row = s.o_row, d.o_batch = s.o_batch;
    d.causal = s.causal, d.q_offset = s.q_offset, d.key_pad = pad, d.key_pad_stride = s.Tk;
    d.scale = 1.0 / sqrt((double)s.d), d.dropout = s.dropout, d.seed = 1, d.stream = 2;
    size_t ns = be->attention_tiled_scratch(&d);
    float *out0 = dev_zeros(s.no), *out1 = dev_zeros(s.no), *probs = dev_zeros(np), *scr = dev_zeros(np);
    float *lse = dev_zeros(nl), *tscr = dev_zeros(ns ? ns : 1);
    float *dq0 = dev_zeros(s.nq), *dq1 = dev_zeros(s.nq), *dkv0 = dev_zeros(s.nkv), *dkv1 = dev_zeros(s.nkv);
    tfm_cuda_set_matmul_precision(bf16 ? TFM_MATMUL_BF16 : TFM_MATMUL_FP32);
    double flop = 4.0 * s.B * s.H * s.Tq * s.Tk * s.d;
    double f0 = time_ms([&] { be->attention_forward(out0, probs, scr, q, k, v, &d); });
    double f1 = time_ms([&] { be->attention_tiled_forward(out1, lse, tscr, ns, q, k, v, &d); });
    double b0 = time_ms([&] {
        be->attention_backward(dq0, dkv0 + s.k_off, dkv0 + s.v_off, scr, dout, probs, q, k, v, &d);
    });
    double b1 = time_ms([&] {
        be->attention_tiled_backward(dq1, dkv1 + s.k_off, dkv1 + s.v_off, tscr, ns, dout, out1, lse, q, k, v, &d);
    });
    char name[96];
    snprintf(name, sizeof name, "%s %s fwd", s.name, bf16 ? "bf16" : "fp32");
    line(name, f0, f1, flop, rel_diff(out1, out0, s.no));
    snprintf(name, sizeof name, "%s %s bwd", s.name, bf16 ? "bf16" : "fp32");
    line(name, b0, b1, 2 * flop, std::max(rel_diff(dq1, dq0, s.nq), rel_diff(dkv1, dkv0, s.nkv)));
    printf("%-34s old %8.1f us  new %8.1f us  x%5.2f  (preferred: %d)\n", "  fwd + bwd", (f0 + b0) * 1e3,
           (f1 + b1) * 1e3, (f0 + b0) / (f1 + b1), be->attention_tiled_preferred(&d));
    tfm_cuda_set_matmul_precision(TFM_MATMUL_FP32);
    float *all[] = {q, kv, dout, out0, out1, probs, scr, lse, tscr, dq0, dq1, dkv0, dkv1};
    for (float *x : all) TFM_CUDA_CHECK(cudaFree(x));
    TFM_CUDA_CHECK(cudaFree(pad));
}

static void tiled_ops(const tfm_backend *be, int B) {
    const int H = 8, d = 64, D = H * d, T = 32;
    const size_t N = (size_t)B * T;
    /* The base model's training calls (model.c): decoder self-attention over
     * q, k, v slices of one [N, 3D] buffer, causal with target padding;
     * encoder self-attention, source padding; cross-attention, q [N, D] and
     * k, v slices of [B*S, 2D], source padding. Dropout 0.1 on each. */
    attn_shape dec = {"dec self causal pad", B, H, T, T, d, 1, 0, 1, 1, 0.1f,
                      3 * D, (long)T * 3 * D, 3 * D, (long)T * 3 * D, D, 2 * D, D, (long)T * D,
                      N * 3 * D, N * 3 * D, N * D};
    attn_shape enc = {"enc self pad", B, H, T, T, d, 0, 0, 1, 1, 0.1f,
                      3 * D, (long)T * 3 * D, 3 * D, (long)T * 3 * D, D, 2 * D, D, (long)T * D,
                      N * 3 * D, N * 3 * D, N * D};
    attn_shape cross = {"cross pad", B, H, T, T, d, 0, 0, 1, 1, 0.1f,
                        D, (long)T * D, 2 * D, (long)T * 2 * D, 0, D, D, (long)T * D,
                        N * D, N * 2 * D, N * D};
    printf("tiled attention (new) vs materialised (old), %d x 8 heads, 32 x 32, head 64, dropout 0.1;\n"
           "flops QK^T and PV (x2 backward); diff: max|new - old| / max|old| of out, dq, dk, dv\n", B);
    /* --quick (for compute-sanitizer) adds the kernels' other paths: several
     * tiles of 64 (T = 150), 128-wide heads, unaligned k and v (no 16-byte
     * loads or copies). */
    const int L = 150, BL = 4;
    const size_t NL = (size_t)BL * L;
    attn_shape lng = {"long self causal pad T 150", BL, H, L, L, d, 1, 0, 1, 1, 0.1f,
                      3 * D, (long)L * 3 * D, 3 * D, (long)L * 3 * D, D, 2 * D, D, (long)L * D,
                      NL * 3 * D, NL * 3 * D, NL * D};
    attn_shape h128 = cross;
    h128.name = "cross head 128 pad", h128.H = D / 128, h128.d = 128;
    attn_shape odd = dec;
    odd.name = "dec self unaligned k v", odd.k_off = D + 1, odd.v_off = 2 * D + 1, odd.nkv += 4;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        tiled_op(be, dec, bf16);
        tiled_op(be, enc, bf16);
        tiled_op(be, cross, bf16);
        if (g_reps == 1) {
            tiled_op(be, lng, bf16);
            tiled_op(be, h128, bf16);
            tiled_op(be, odd, bf16);
        }
    }
}

int main(int argc, char **argv) {
    const char *why = NULL;
    const tfm_backend *be = tfm_backend_cuda(&why);
    if (!be) {
        fprintf(stderr, "attn_micro: no CUDA backend: %s\n", why ? why : "?");
        return 2;
    }
    int bf16 = 0, attn_only = 0, tiled_only = 0, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bf16")) bf16 = 1;
        else if (!strcmp(argv[i], "--attn")) attn_only = 1;
        else if (!strcmp(argv[i], "--tiled")) tiled_only = 1;
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else {
            fprintf(stderr, "usage: attn_micro [--bf16] [--attn] [--tiled [--quick]]\n");
            return 2;
        }
    }
    if (tiled_only) {
        /* --quick: 16 batch rows, one call of each op, no warm-up, and the
         * shapes of the kernels' other paths: for compute-sanitizer, whose
         * tools slow each launch down a lot. */
        if (quick) g_warm = 0, g_reps = 1;
        tiled_ops(be, quick ? 16 : 800);
        return 0;
    }
    if (attn_only) {
        attention_ops(be);
        return 0;
    }
    if (bf16) tfm_cuda_set_matmul_precision(TFM_MATMUL_BF16);
    printf("attn_micro: precision %s (the linear lines; the attention products are fp32)\n", bf16 ? "bf16" : "fp32");

    /* ---- attention products: B = 800, T = 32, H = 8, dk = 64, q/k/v in [N, 3D]. */
    const int B = 800, T = 32, H = 8, dk = 64, D = H * dk;
    const long row = 3 * D, batch = (long)T * row, ph = (long)T * T, pb = H * ph;
    size_t nqkv = (size_t)B * T * row, np = (size_t)B * H * T * T, no = (size_t)B * T * D;
    float *qkv = dev_random(nqkv, 1), *P = dev_random(np, 2), *dO = dev_random(no, 3);
    const float *q = qkv, *k = qkv + D, *v = qkv + 2 * D;
    float *c_old, *c_new;
    size_t nc = np > no ? np : no;
    TFM_CUDA_CHECK(cudaMalloc(&c_old, nc * sizeof(float)));
    TFM_CUDA_CHECK(cudaMalloc(&c_new, nc * sizeof(float)));
    struct prod {
        const char *name;
        int ta, tb, M, N, K;
        const float *A;
        long lda, a_batch, a_head;
        const float *Bm;
        long ldb, b_batch, b_head;
        long ldc, c_batch, c_head;
    } prods[] = {
        /* what attention.cu's product() asks for, in its order */
        {"fwd S = Q K^T  (32x32x64)", 0, 1, T, T, dk, q, row, batch, dk, k, row, batch, dk, T, pb, ph},
        {"fwd O = P V    (32x64x32)", 0, 0, T, dk, T, P, T, pb, ph, v, row, batch, dk, D, (long)T * D, dk},
        {"bwd dV = P^T dO (32x64x32)", 1, 0, T, dk, T, P, T, pb, ph, dO, D, (long)T * D, dk, D, (long)T * D, dk},
        {"bwd dP = dO V^T (32x32x64)", 0, 1, T, T, dk, dO, D, (long)T * D, dk, v, row, batch, dk, T, pb, ph},
        {"bwd dQ = dS K  (32x64x32)", 0, 0, T, dk, T, P, T, pb, ph, k, row, batch, dk, D, (long)T * D, dk},
        {"bwd dK = dS^T Q (32x64x32)", 1, 0, T, dk, T, P, T, pb, ph, q, row, batch, dk, D, (long)T * D, dk},
    };
    double sum_old = 0, sum_new = 0, sum_lt = 0;
    for (const prod &p : prods) {
        tfm_cuda_bgemm_args g;
        memset(&g, 0, sizeof g);
        g.ta = p.ta, g.tb = p.tb, g.M = p.M, g.N = p.N, g.K = p.K, g.B = B, g.H = H, g.alpha = 1.0f, g.beta = 0.0f;
        g.A = p.A, g.lda = p.lda, g.a_batch = p.a_batch, g.a_head = p.a_head;
        g.Bm = p.Bm, g.ldb = p.ldb, g.b_batch = p.b_batch, g.b_head = p.b_head;
        g.ldc = p.ldc, g.c_batch = p.c_batch, g.c_head = p.c_head;
        tfm_cuda_bgemm_args go = g, gn = g;
        go.C = c_old, gn.C = c_new;
        double t_old = time_ms([&] { old_bgemm(&go); });
        double t_new = time_ms([&] { tfm_cuda_bgemm(&gn); });
        size_t n_out = p.c_batch == pb ? np : no;
        line(p.name, t_old, t_new, 2.0 * B * H * p.M * p.N * p.K, rel_diff(c_new, c_old, n_out));
        sum_old += t_old, sum_new += t_new;
        /* The cuBLASLt alternative, fp32 (and bf16 tensor cores with --bf16). */
        lt_batched lp = lt_plan(gn, bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F);
        if (lp.ok) {
            double t_lt = time_ms([&] { lt_run(lp, gn); });
            printf("%-34s cuBLASLt, %d calls of batch %d: %8.1f us  diff %.1e\n", "", H, B, t_lt * 1e3,
                   rel_diff(c_new, c_old, n_out));
            sum_lt += t_lt;
        } else {
            printf("%-34s cuBLASLt: no algorithm\n", "");
        }
    }
    printf("%-34s old %8.1f us  new %8.1f us  x%5.2f  cuBLASLt %8.1f us  (x18 attention layers a step)\n",
           "six products", sum_old * 1e3, sum_new * 1e3, sum_old / sum_new, sum_lt * 1e3);

    /* ---- the whole attention op through the table (see attention_ops) */
    attention_ops(be);

    /* ---- bias gradient: column sums of [25600, C] */
    const int N = 25600;
    float *x = dev_random((size_t)N * 2048, 8), *s_old, *s_new;
    TFM_CUDA_CHECK(cudaMalloc(&s_old, 2048 * sizeof(float)));
    TFM_CUDA_CHECK(cudaMalloc(&s_new, 2048 * sizeof(float)));
    const int cols[] = {512, 1536, 2048};
    for (int C : cols) {
        double t_old = time_ms([&] {
            old_colsum_add_kernel<<<(C + 31) / 32, dim3(32, 16), 0, tfm_cuda_stream()>>>(s_old, x, N, C);
        });
        double t_new = time_ms([&] { tfm_cuda_linear_backward(NULL, NULL, s_new, x, NULL, NULL, N, 0, C, 0); });
        /* Same number of accumulations on both sides: compare one fresh call. */
        TFM_CUDA_CHECK(cudaMemsetAsync(s_old, 0, C * sizeof(float), tfm_cuda_stream()));
        TFM_CUDA_CHECK(cudaMemsetAsync(s_new, 0, C * sizeof(float), tfm_cuda_stream()));
        old_colsum_add_kernel<<<(C + 31) / 32, dim3(32, 16), 0, tfm_cuda_stream()>>>(s_old, x, N, C);
        tfm_cuda_linear_backward(NULL, NULL, s_new, x, NULL, NULL, N, 0, C, 0);
        char name[64];
        snprintf(name, sizeof name, "colsum 25600x%d", C);
        line(name, t_old, t_new, 0, rel_diff(s_new, s_old, C));
        printf("%-34s new %.0f GB/s\n", "", (double)N * C * 4 / (t_new * 1e-3) / 1e9);
    }

    /* ---- linear forward with bias and backward (din, dw): [25600, I] -> O.
     * old: cuBLASLt on the fp32 operands (lt_plan as one batch of one head)
     * in the mode's compute type, and the bias kernel. */
    const cublasComputeType_t old_compute = bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    const int io[][2] = {{512, 512}, {512, 1536}, {512, 2048}, {2048, 512}, {512, 37000}};
    const size_t max_out = (size_t)N * 37000, max_w = (size_t)37000 * 512;
    float *w = dev_random(max_w, 9), *bias = dev_random(37000, 10), *y_old, *y_new;
    float *din_old, *din_new, *dw_old, *dw_new;
    TFM_CUDA_CHECK(cudaMalloc(&y_old, max_out * sizeof(float)));
    TFM_CUDA_CHECK(cudaMalloc(&y_new, max_out * sizeof(float)));
    TFM_CUDA_CHECK(cudaMalloc(&din_old, (size_t)N * 2048 * sizeof(float)));
    TFM_CUDA_CHECK(cudaMalloc(&din_new, (size_t)N * 2048 * sizeof(float)));
    TFM_CUDA_CHECK(cudaMalloc(&dw_old, max_w * sizeof(float)));
    TFM_CUDA_CHECK(cudaMalloc(&dw_new, max_w * sizeof(float)));
    for (const auto &s : io) {
        int I = s[0], O = s[1];
        /* One row-major product C[M,N] = A op(B) (+ beta C) as bgemm args, for lt_plan. */
        auto args = [&](int ta, int tb, int M, int Nc, int K, const float *A, int lda, const float *Bm, int ldb,
                        float beta, float *Cm, int ldc) {
            tfm_cuda_bgemm_args g;
            memset(&g, 0, sizeof g);
            g.ta = ta, g.tb = tb, g.M = M, g.N = Nc, g.K = K, g.B = 1, g.H = 1, g.alpha = 1.0f, g.beta = beta;
            g.A = A, g.lda = lda, g.Bm = Bm, g.ldb = ldb, g.C = Cm, g.ldc = ldc;
            return g;
        };
        tfm_cuda_bgemm_args fwd = args(0, 1, N, O, I, x, I, w, I, 0.0f, y_old, O);
        lt_batched pf = lt_plan(fwd, old_compute);
        char name[64];
        snprintf(name, sizeof name, "linear+bias 25600x%d->%d", I, O);
        if (pf.ok) {
            double t_old = time_ms([&] {
                lt_run(pf, fwd);
                dim3 grid((O + 255) / 256, 65535);
                old_bias_add_kernel<<<grid, 256, 0, tfm_cuda_stream()>>>(y_old, bias, N, O);
            });
            double t_new = time_ms([&] { tfm_cuda_linear_forward(y_new, x, w, bias, N, I, O); });
            line(name, t_old, t_new, 2.0 * N * I * O, rel_diff(y_new, y_old, (size_t)N * O));
        } else {
            printf("%-34s old: cuBLASLt has no algorithm\n", name);
        }

        /* Backward: dout = the forward's output; din = dout w (beta 0), dw += dout^T x (beta 1). */
        const float *dout = y_old;
        tfm_cuda_bgemm_args gdin = args(0, 0, N, I, O, dout, O, w, I, 0.0f, din_old, I);
        tfm_cuda_bgemm_args gdw = args(1, 0, O, I, N, dout, O, x, I, 1.0f, dw_old, I);
        lt_batched pdin = lt_plan(gdin, old_compute), pdw = lt_plan(gdw, old_compute);
        snprintf(name, sizeof name, "linear bwd din,dw 25600x%d->%d", I, O);
        if (pdin.ok && pdw.ok) {
            double t_old = time_ms([&] {
                lt_run(pdin, gdin);
                lt_run(pdw, gdw);
            });
            double t_new =
                time_ms([&] { tfm_cuda_linear_backward(din_new, dw_new, NULL, dout, x, w, N, I, O, 0); });
            /* dw accumulated a different number of times on each side: compare one fresh call. */
            TFM_CUDA_CHECK(cudaMemsetAsync(dw_old, 0, (size_t)O * I * sizeof(float), tfm_cuda_stream()));
            TFM_CUDA_CHECK(cudaMemsetAsync(dw_new, 0, (size_t)O * I * sizeof(float), tfm_cuda_stream()));
            lt_run(pdw, gdw);
            tfm_cuda_linear_backward(NULL, dw_new, NULL, dout, x, w, N, I, O, 0);
            double diff = std::max(rel_diff(din_new, din_old, (size_t)N * I), rel_diff(dw_new, dw_old, (size_t)O * I));
            line(name, t_old, t_new, 4.0 * N * I * O, diff);
        } else {
            printf("%-34s old: cuBLASLt has no algorithm\n", name);
        }
    }
    return 0;
}
