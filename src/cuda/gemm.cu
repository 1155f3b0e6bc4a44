/*
 * gemm.cu: the GEMM entry point through cuBLASLt, the affine layer on top of
 * it, and a plain strided-batched GEMM kernel for the attention products.
 *
 *   gemm:    C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C   (row-major, CBLAS contract)
 *   linear:  in [N, I]   w [O, I]   b [O]   out [N, O]   (I = n_in, O = n_out)
 *   bgemm:   the same product for every (batch, head) pair of a [B, T, H*dk] layout
 *
 * Precision: by default cuBLASLt runs with CUBLAS_COMPUTE_32F, never the
 * TF32 modes (which round operands to 10 mantissa bits and miss the 1e-4
 * tolerance against the CPU). tfm_cuda_set_matmul_precision switches to
 * CUBLAS_COMPUTE_32F_FAST_TF32 or _FAST_16BF: fp32 storage, operands rounded
 * to tf32 / bf16 inside cuBLASLt, tensor cores, fp32 accumulation. The
 * attention products (bgemm) stay fp32.
 *
 * Row-major through a column-major library: a row-major X with row stride ld
 * is, read column-major with the same ld, X^T. So C = op(A) op(B) row-major is
 * C^T = op(B)^T op(A)^T column-major: cuBLASLt's "A" is our B, its "B" is our
 * A, m = N, n = M, and the transpose flags carry over unchanged.
 *
 * cuBLASLt's heuristic query costs microseconds, so each distinct shape
 * (transposes, sizes, leading dimensions, pointer alignments) keeps its
 * descriptors and chosen algorithm in a small cache. If the heuristic finds
 * no algorithm (an odd alignment), the product runs through bgemm instead.
 */
#include "cuda/cuda_internal.cuh"

#include <string.h>

/* ---------------------------------------------------------------- bgemm */

#define BG_TM 64   /* tile rows (of C) */
#define BG_TN 64   /* tile columns */
#define BG_TK 16   /* depth per step */
#define BG_THREADS 256 /* 16 x 16 threads, 4 x 4 outputs each */

/* One 64x64 tile of C per block, depth staged through shared memory in steps
 * of 16; threads own a 4x4 set of outputs strided by 16, so that a warp's
 * shared-memory reads of B are 16 consecutive words (no bank conflicts) and
 * its reads of A are broadcasts. Loads are coalesced along whichever
 * dimension is contiguous in memory for the given transpose. */
template <int TA, int TB>
__global__ void __launch_bounds__(BG_THREADS) bgemm_kernel(tfm_cuda_bgemm_args g) {
    __shared__ float As[BG_TK][BG_TM + 1];
    __shared__ float Bs[BG_TK][BG_TN + 1];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    int row0 = blockIdx.y * BG_TM, col0 = blockIdx.x * BG_TN;
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
        for (int k0 = 0; k0 < g.K; k0 += BG_TK) {
#pragma unroll
            for (int l = tid; l < BG_TM * BG_TK; l += BG_THREADS) {
                /* op(A)(i, p): contiguous along p when not transposed, along i when transposed. */
                int i = TA ? l % BG_TM : l / BG_TK, p = TA ? l / BG_TM : l % BG_TK;
                int gi = row0 + i, gp = k0 + p;
                float a = 0.0f;
                if (gi < g.M && gp < g.K) a = TA ? A[(long)gp * g.lda + gi] : A[(long)gi * g.lda + gp];
                As[p][i] = a;
            }
#pragma unroll
            for (int l = tid; l < BG_TN * BG_TK; l += BG_THREADS) {
                /* op(B)(p, j): contiguous along j when not transposed, along p when transposed. */
                int j = TB ? l / BG_TK : l % BG_TN, p = TB ? l % BG_TK : l / BG_TN;
                int gj = col0 + j, gp = k0 + p;
                float v = 0.0f;
                if (gj < g.N && gp < g.K) v = TB ? Bm[(long)gj * g.ldb + gp] : Bm[(long)gp * g.ldb + gj];
                Bs[p][j] = v;
            }
            __syncthreads();
#pragma unroll
            for (int p = 0; p < BG_TK; p++) {
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
                /* beta == 0 must not read C: it may hold NaN (the CBLAS contract). */
                *dst = g.beta == 0.0f ? g.alpha * acc[r][c] : g.alpha * acc[r][c] + g.beta * *dst;
            }
        }
    }
}

/* See cuda_internal.cuh. Queued on the backend's stream. */
void tfm_cuda_bgemm(const tfm_cuda_bgemm_args *g) {
    if (g->M <= 0 || g->N <= 0 || g->B * g->H <= 0) return;
    int batches = g->B * g->H;
    dim3 grid((g->N + BG_TN - 1) / BG_TN, (g->M + BG_TM - 1) / BG_TM, batches < 65535 ? batches : 65535);
    TFM_CUDA_ASSERT(grid.y <= 65535);
    cudaStream_t st = tfm_cuda_stream();
    if (!g->ta && !g->tb) bgemm_kernel<0, 0><<<grid, BG_THREADS, 0, st>>>(*g);
    else if (!g->ta && g->tb) bgemm_kernel<0, 1><<<grid, BG_THREADS, 0, st>>>(*g);
    else if (g->ta && !g->tb) bgemm_kernel<1, 0><<<grid, BG_THREADS, 0, st>>>(*g);
    else bgemm_kernel<1, 1><<<grid, BG_THREADS, 0, st>>>(*g);
    TFM_CUDA_LAUNCHED();
}

/* --------------------------------------------------------- cuBLASLt plans */

typedef struct gemm_plan {
    int used;
    cublasComputeType_t compute;
    int ta, tb, M, N, K, lda, ldb, ldc;
    unsigned align_a, align_b, align_c;
    int has_algo; /* 0: cuBLASLt found none; run bgemm */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

#define PLAN_CACHE 128
static gemm_plan g_plans[PLAN_CACHE];
static cublasComputeType_t g_compute = CUBLAS_COMPUTE_32F;

int tfm_cuda_set_matmul_precision(tfm_matmul_precision p) {
    switch (p) {
    case TFM_MATMUL_FP32: g_compute = CUBLAS_COMPUTE_32F; return 1;
    case TFM_MATMUL_TF32: g_compute = CUBLAS_COMPUTE_32F_FAST_TF32; return 1;
    case TFM_MATMUL_BF16: g_compute = CUBLAS_COMPUTE_32F_FAST_16BF; return 1;
    }
    return 0;
}
static int g_plan_next; /* round-robin eviction */

/* The largest power of two (4 to 16) that divides the address: cuBLASLt
 * assumes 256-byte aligned operands unless told otherwise, and offsets into
 * one buffer (a layer's weights, a head) are often only 4-byte aligned.
 * Capped at 16, the widest vector access, so that parameters at different
 * offsets of one buffer share plans instead of crowding the cache. */
static unsigned ptr_align(const void *p) {
    uintptr_t a = (uintptr_t)p;
    unsigned al = 16;
    while (al > 4 && (a % al) != 0) al >>= 1;
    return al;
}

static void plan_destroy(gemm_plan *p) {
    if (!p->used) return;
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->la));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lb));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lc));
    TFM_CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->desc));
    p->used = 0;
}

static gemm_plan *plan_get(int ta, int tb, int M, int N, int K, int lda, int ldb, int ldc, unsigned aa,
                           unsigned ab, unsigned ac) {
    for (int i = 0; i < PLAN_CACHE; i++) {
        gemm_plan *p = &g_plans[i];
        if (p->used && p->compute == g_compute && p->ta == ta && p->tb == tb && p->M == M && p->N == N && p->K == K && p->lda == lda &&
            p->ldb == ldb && p->ldc == ldc && p->align_a == aa && p->align_b == ab && p->align_c == ac)
            return p;
    }
    gemm_plan *p = &g_plans[g_plan_next];
    g_plan_next = (g_plan_next + 1) % PLAN_CACHE;
    plan_destroy(p);
    memset(p, 0, sizeof *p);
    p->ta = ta, p->tb = tb, p->M = M, p->N = N, p->K = K, p->lda = lda, p->ldb = ldb, p->ldc = ldc;
    p->align_a = aa, p->align_b = ab, p->align_c = ac;
    p->compute = g_compute;

    /* Column-major view (see the top of the file): m = N, n = M; "A" = our B, "B" = our A. */
    cublasOperation_t op_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    TFM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, g_compute, CUDA_R_32F));
    TFM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    TFM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    /* Column-major shapes (rows x cols) of what is stored: our B, row-major
     * [K,N] (or [N,K] when transposed), reads as [N,K] (or [K,N]); likewise A. */
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_32F, tb ? K : N, tb ? N : K, ldb));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_32F, ta ? M : K, ta ? K : M, lda));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, CUDA_R_32F, N, M, ldc));
    p->used = 1;

    size_t ws_bytes = 0;
    (void)tfm_cuda_lt_workspace(&ws_bytes);
    cublasLtMatmulPreference_t pref;
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &ws_bytes, sizeof ws_bytes));
    uint32_t al_a = ab, al_b = aa, al_c = ac; /* cuBLASLt's A is our B */
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                                          sizeof al_a));
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                                          sizeof al_b));
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                                          sizeof al_c));
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                                          sizeof al_c));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(tfm_cuda_lt(), p->desc, p->la, p->lb, p->lc, p->lc, pref, 1,
                                                      &res, &found);
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    /* NOT_SUPPORTED means "no algorithm for this problem": the fallback handles it. */
    if (s != CUBLAS_STATUS_NOT_SUPPORTED) TFM_CUBLAS_CHECK(s);
    p->has_algo = s == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p->has_algo) p->algo = res.algo;
    return p;
}

__global__ void scale_matrix_kernel(float *C, int M, int N, int ldc, float beta) {
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < (long)M * N; e += (long)gridDim.x * blockDim.x) {
        float *c = C + (e / N) * ldc + e % N;
        *c = beta == 0.0f ? 0.0f : beta * *c;
    }
}

/* C[M,N] = alpha op(A) op(B) + beta C, row-major with row strides lda, ldb,
 * ldc (the CBLAS contract of ops_decl.h). All pointers on the device;
 * beta == 0 never reads C. Queued; does not wait. */
void tfm_cuda_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cudaStream_t st = tfm_cuda_stream();
    if (K <= 0) { /* no product: C = beta C (cuBLASLt wants k >= 1) */
        scale_matrix_kernel<<<tfm_cuda_blocks((size_t)M * N, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, st>>>(C, M, N,
                                                                                                          ldc, beta);
        TFM_CUDA_LAUNCHED();
        return;
    }
    gemm_plan *p = plan_get(trans_a ? 1 : 0, trans_b ? 1 : 0, M, N, K, lda, ldb, ldc, ptr_align(A), ptr_align(B),
                            ptr_align(C));
    if (!p->has_algo) {
        tfm_cuda_bgemm_args g;
        memset(&g, 0, sizeof g);
        g.ta = trans_a ? 1 : 0, g.tb = trans_b ? 1 : 0, g.M = M, g.N = N, g.K = K, g.B = 1, g.H = 1;
        g.alpha = alpha, g.beta = beta;
        g.A = A, g.lda = lda, g.Bm = B, g.ldb = ldb, g.C = C, g.ldc = ldc;
        tfm_cuda_bgemm(&g);
        return;
    }
    size_t ws_bytes = 0;
    void *ws = tfm_cuda_lt_workspace(&ws_bytes);
    cublasStatus_t s = cublasLtMatmul(tfm_cuda_lt(), p->desc, &alpha, B, p->la, A, p->lb, &beta, C, p->lc, C,
                                      p->lc, &p->algo, ws, ws_bytes, st);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED) {
        /* The heuristic's algorithm refused these operands after all (an
         * alignment it did not account for): this shape goes to bgemm from now on. */
        p->has_algo = 0;
        tfm_cuda_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    TFM_CUBLAS_CHECK(s);
}

/* --------------------------------------------------------------- linear */

__global__ void bias_add_kernel(float *out, const float *b, int N, int O) {
    /* x over columns (coalesced), y over rows */
    for (int n = blockIdx.y; n < N; n += gridDim.y)
        for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < O; o += gridDim.x * blockDim.x)
            out[(long)n * O + o] += b[o];
}

/* sums[c] += sum over rows n of x[n*C + c], for c < C. Each block owns 32
 * columns; its 16 row groups walk the rows in a fixed order and are combined in
 * a fixed order: deterministic, and no atomics. */
__global__ void colsum_add_kernel(float *sums, const float *x, int N, int C) {
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

/* out[N,O] = in[N,I] w[O,I]^T + b[O] (b may be NULL); device pointers. */
void tfm_cuda_linear_forward(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                             int n_out) {
    tfm_cuda_gemm(0, 1, N, n_out, n_in, 1.0f, in, n_in, w, n_in, 0.0f, out, n_out);
    if (!b || N <= 0 || n_out <= 0) return;
    dim3 grid((n_out + 255) / 256, N < 65535 ? N : 65535);
    bias_add_kernel<<<grid, 256, 0, tfm_cuda_stream()>>>(out, b, N, n_out);
    TFM_CUDA_LAUNCHED();
}

/* din[N,I] (= or += when accumulate) dout[N,O] w;  dw[O,I] += dout^T in;
 * db[O] += column sums of dout. din and db may be NULL. */
void tfm_cuda_linear_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                              const float *w, int N, int n_in, int n_out, int accumulate) {
    if (din) tfm_cuda_gemm(0, 0, N, n_in, n_out, 1.0f, dout, n_out, w, n_in, accumulate ? 1.0f : 0.0f, din, n_in);
    if (dw) tfm_cuda_gemm(1, 0, n_out, n_in, N, 1.0f, dout, n_out, in, n_in, 1.0f, dw, n_in);
    if (db && n_out > 0) {
        colsum_add_kernel<<<(n_out + 31) / 32, dim3(32, 16), 0, tfm_cuda_stream()>>>(db, dout, N, n_out);
        TFM_CUDA_LAUNCHED();
    }
}
