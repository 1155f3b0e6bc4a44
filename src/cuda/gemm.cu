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
 *   TF32: CUBLAS_COMPUTE_32F_FAST_TF32 on the fp32 operands (cuBLASLt rounds
 *         them to tf32 inside its kernels; tensor cores, fp32 sums);
 *   BF16: true bf16 operands. A and B are rounded to bf16 (to nearest even)
 *         by to_bf16_kernel into two buffers owned by this file, and
 *         cuBLASLt multiplies those (A/B CUDA_R_16BF, C/D and the bias fp32,
 *         CUBLAS_COMPUTE_32F: fp32 sums, and beta accumulates into the fp32 C
 *         as in fp32 mode). Why not CUBLAS_COMPUTE_32F_FAST_16BF on the fp32
 *         operands: cuBLASLt then runs its tf32 kernels (sm90_xmma_gemm_
 *         f32f32_tf32f32 in a profile, ~260 TFLOP/s on an H200), reading 4
 *         bytes an operand; bf16 kernels reach ~800. The conversion costs one
 *         read (4 bytes) and one write (2 bytes) per operand element, small
 *         next to a training step's products, so the copies are made only
 *         where they pay (bf16_pays: not for decoding's few rows), and
 *         linear_backward converts its dout once for its two products. Where
 *         they do not pay or cannot run (no device memory for the copies,
 *         cuBLASLt refuses them) the product runs FAST_16BF on the fp32
 *         operands. Both round the operands to bf16 and sum in fp32.
 * The attention products (bgemm) stay fp32 in every mode.
 *
 * Row-major through a column-major library: a row-major X with row stride ld
 * is, read column-major with the same ld, X^T. So C = op(A) op(B) row-major is
 * C^T = op(B)^T op(A)^T column-major: cuBLASLt's "A" is our B, its "B" is our
 * A, m = N, n = M, and the transpose flags carry over unchanged.
 *
 * cuBLASLt's heuristic query costs microseconds, so each distinct shape
 * (compute, operand and output types, transposes, sizes, leading dimensions,
 * pointer alignments, the epilogue with its vector type and mask stride)
 * keeps its descriptors and chosen algorithm in a small cache. If the
 * heuristic finds no algorithm (an odd alignment), the product runs through
 * bgemm instead. The same machinery serves ffn.cu (tfm_cuda_lt_matmul in
 * cuda_internal.cuh): products on bf16 operands it keeps itself, a bf16
 * output, the ReLU epilogues.
 *
 * linear's bias is added in cuBLASLt's epilogue (CUBLASLT_EPILOGUE_BIAS:
 * column-major D gets bias[row], i.e. our row-major C gets bias[column]) when
 * the bias is 16-byte aligned and cuBLASLt runs the product; otherwise by a
 * separate kernel after it. Its backward's bias gradient is a two-pass,
 * deterministic column sum (cuBLASLt's BGRADB epilogue ran as a separate
 * kernel just as long on an H200: see ffn.cu).
 */
#include "cuda/cuda_internal.cuh"

#include <cuda_bf16.h>
#include <string.h>

/* ---------------------------------------------------------------- bgemm */

#define BG_TK 32 /* depth staged through shared memory per step */

/* One TM x TN tile of C per block (TM, TN = 32 or 64), for each batch z the
 * block walks; the depth is staged through shared memory BG_TK at a time.
 * TM*TN/16 threads, each owning a 4x4 set of outputs strided by TM/4 rows and
 * TN/4 columns, so that a warp's shared-memory reads of B are consecutive
 * words and its reads of A broadcasts (no bank conflicts; the +1 padding
 * keeps the transposing stores conflict-free too). Loads are coalesced along
 * whichever dimension is contiguous in memory for the given transpose.
 *
 * Why several tile sizes: the attention products are 32x32 or 32x64 per
 * (batch, head) with a depth of 32 or 64 (model lengths around 32, head size
 * 64), and a 64x64 tile would compute (and stage) two to four times the work
 * on them. At these sizes the product is bound by memory, not arithmetic
 * (about 6 FLOP per byte), so plain fp32 FMAs suffice; what matters is not
 * wasting lanes and keeping many loads in flight (small blocks, many per SM).
 * The launch bound asks for at least 1024 resident threads per SM (64
 * registers a thread at most). */
template <int TA, int TB, int TM, int TN>
__global__ void __launch_bounds__(TM * TN / 16, 1024 / (TM * TN / 16)) bgemm_kernel(tfm_cuda_bgemm_args g) {
    constexpr int T = TM * TN / 16, CX = TN / 4, CY = TM / 4; /* threads; CX x CY of them */
    static_assert(T % BG_TK == 0 && T % TM == 0 && T % TN == 0, "the loads step whole rows of a tile");
    __shared__ float As[BG_TK][TM + 1];
    __shared__ float Bs[BG_TK][TN + 1];
    int tid = threadIdx.x, tx = tid % CX, ty = tid / CX;
    int row0 = blockIdx.y * TM, col0 = blockIdx.x * TN;
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
            /* op(A)(i, p) into As[p][i]: contiguous along p when not
             * transposed (consecutive threads take consecutive p), along i
             * when transposed. Each thread keeps its p (or i) and steps the
             * other index, which keeps the address arithmetic in few registers. */
#pragma unroll
            for (int u = 0; u < TM * BG_TK / T; u++) {
                int i = TA ? tid % TM : tid / BG_TK + u * (T / BG_TK);
                int p = TA ? tid / TM + u * (T / TM) : tid % BG_TK;
                int gi = row0 + i, gp = k0 + p;
                float a = 0.0f;
                if (gi < g.M && gp < g.K) a = TA ? A[(long)gp * g.lda + gi] : A[(long)gi * g.lda + gp];
                As[p][i] = a;
            }
            /* op(B)(p, j) into Bs[p][j]: contiguous along j when not transposed, along p when transposed. */
#pragma unroll
            for (int u = 0; u < TN * BG_TK / T; u++) {
                int j = TB ? tid / BG_TK + u * (T / BG_TK) : tid % TN;
                int p = TB ? tid % BG_TK : tid / TN + u * (T / TN);
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
                for (int r = 0; r < 4; r++) a[r] = As[p][ty + CY * r];
#pragma unroll
                for (int c = 0; c < 4; c++) bv[c] = Bs[p][tx + CX * c];
#pragma unroll
                for (int r = 0; r < 4; r++)
#pragma unroll
                    for (int c = 0; c < 4; c++) acc[r][c] += a[r] * bv[c];
            }
            __syncthreads();
        }
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int gi = row0 + ty + CY * r;
            if (gi >= g.M) continue;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int gj = col0 + tx + CX * c;
                if (gj >= g.N) continue;
                float *dst = C + (long)gi * g.ldc + gj;
                /* beta == 0 must not read C: it may hold NaN (the CBLAS contract). */
                *dst = g.beta == 0.0f ? g.alpha * acc[r][c] : g.alpha * acc[r][c] + g.beta * *dst;
            }
        }
    }
}

template <int TM, int TN>
static void bgemm_launch(const tfm_cuda_bgemm_args *g) {
    int batches = g->B * g->H;
    dim3 grid((g->N + TN - 1) / TN, (g->M + TM - 1) / TM, batches < 65535 ? batches : 65535);
    TFM_CUDA_ASSERT(grid.y <= 65535);
    const int threads = TM * TN / 16;
    cudaStream_t st = tfm_cuda_stream();
    if (!g->ta && !g->tb) bgemm_kernel<0, 0, TM, TN><<<grid, threads, 0, st>>>(*g);
    else if (!g->ta && g->tb) bgemm_kernel<0, 1, TM, TN><<<grid, threads, 0, st>>>(*g);
    else if (g->ta && !g->tb) bgemm_kernel<1, 0, TM, TN><<<grid, threads, 0, st>>>(*g);
    else bgemm_kernel<1, 1, TM, TN><<<grid, threads, 0, st>>>(*g);
    TFM_CUDA_LAUNCHED();
}

/* See cuda_internal.cuh. Queued on the backend's stream. The tile is the
 * smallest of 32 or 64 per dimension that covers M (N) when it can. */
void tfm_cuda_bgemm(const tfm_cuda_bgemm_args *g) {
    if (g->M <= 0 || g->N <= 0 || g->B * g->H <= 0) return;
    int small_m = g->M <= 32, small_n = g->N <= 32;
    if (small_m && small_n) bgemm_launch<32, 32>(g);
    else if (small_m) bgemm_launch<32, 64>(g);
    else if (small_n) bgemm_launch<64, 32>(g);
    else bgemm_launch<64, 64>(g);
}

/* --------------------------------------------------------- cuBLASLt plans */

/* One operand as cuBLASLt gets it: tfm_cuda_mat (cuda_internal.cuh): element
 * type (CUDA_R_32F, or CUDA_R_16BF for a bf16 copy), device pointer, row
 * stride in elements, and the pointer's alignment in bytes (ptr_align).
 * Row-major as stored; the transpose flags say how the product reads it. */
typedef tfm_cuda_mat lt_operand;

/* The plan of one product: everything cuBLASLt's heuristic looks at, as the
 * cache's key, and what it chose. The epilogue's pointers (bias, bias
 * gradient, ReLU mask) are not part of the key: the caller sets them on the
 * descriptor before each call; only their alignment matters to the
 * heuristic (the vector's is BIAS_ALIGN, the mask's aux_align). */
typedef struct gemm_plan {
    int used;
    cublasComputeType_t compute;
    cudaDataType_t type;   /* of A and B */
    cudaDataType_t c_type; /* of C and D (fp32, or bf16 for the FFN's activations) */
    int ta, tb, M, N, K, lda, ldb, ldc;
    unsigned align_a, align_b, align_c;
    cublasLtEpilogue_t epi; /* CUBLASLT_EPILOGUE_DEFAULT: none */
    cudaDataType_t vec_type; /* of the bias or bias gradient, when the epilogue has one */
    int64_t aux_ld;          /* the ReLU mask's row stride in bits, when the epilogue has one */
    unsigned aux_align;
    int has_algo; /* 0: cuBLASLt found none; run another route */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

#define PLAN_CACHE 128
static gemm_plan g_plans[PLAN_CACHE];
static int g_plan_next; /* round-robin eviction */

/* The mode (tfm_cuda_set_matmul_precision): the compute type of products on
 * the fp32 operands, and whether products run on bf16 copies of them (BF16
 * mode; g_compute is then FAST_16BF, the fallback when they cannot). */
static cublasComputeType_t g_compute = CUBLAS_COMPUTE_32F;
static int g_bf16;

int tfm_cuda_set_matmul_precision(tfm_matmul_precision p) {
    tfm_cuda_graphs_stale(); /* recorded steps ran in the old mode */
    switch (p) {
    case TFM_MATMUL_FP32: g_compute = CUBLAS_COMPUTE_32F, g_bf16 = 0; return 1;
    case TFM_MATMUL_TF32: g_compute = CUBLAS_COMPUTE_32F_FAST_TF32, g_bf16 = 0; return 1;
    case TFM_MATMUL_BF16: g_compute = CUBLAS_COMPUTE_32F_FAST_16BF, g_bf16 = 1; return 1;
    }
    return 0;
}

/* See cuda_internal.cuh. */
int tfm_cuda_matmul_is_bf16(void) { return g_bf16; }

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

/* The bias epilogue's vector must be 16-byte aligned here (cuBLASLt has no
 * preference attribute for the bias alignment; its heuristic reads it from
 * the pointer; 16 bytes is what other users of the epilogue found safe). A
 * less aligned bias is added by bias_add_kernel after the product. */
#define BIAS_ALIGN 16

static void plan_destroy(gemm_plan *p) {
    if (!p->used) return;
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->la));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lb));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lc));
    TFM_CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->desc));
    p->used = 0;
}

/* Which pointers an epilogue takes: the vector (bias, read; bias gradient,
 * written) and the ReLU bit mask (written by RELU_AUX*, read by DRELU*). */
static int epi_has_vec(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_RELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DRELU_BGRAD ||
           e == CUBLASLT_EPILOGUE_BGRADA || e == CUBLASLT_EPILOGUE_BGRADB;
}
static int epi_has_aux(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_RELU_AUX || e == CUBLASLT_EPILOGUE_RELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DRELU ||
           e == CUBLASLT_EPILOGUE_DRELU_BGRAD;
}

/* The alignment of the mask for the heuristic: as ptr_align, up to 256
 * (what cudaMalloc gives; ffn.cu puts the mask on such a boundary). */
static unsigned aux_align_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 4 && (a % al) != 0) al >>= 1;
    return al;
}

/* One attribute of a matmul descriptor (a failure aborts, as every cuBLASLt call here). */
static void desc_set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void *value, size_t size) {
    TFM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, value, size));
}

/* A plan's epilogue pointer (bias vector, ReLU mask): the heuristic takes its
 * alignment from the pointer, so it gets a probe aligned to exactly `align`
 * bytes (never dereferenced) and the algorithm it picks suits every pointer
 * the plan will see; each launch sets the real one. */
static void desc_set_probe(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void *p,
                           uintptr_t align) {
    const void *probe = (const void *)((uintptr_t)p | align);
    desc_set(desc, attr, &probe, sizeof probe);
}

/* The plan of one shape, computed in `compute` on operands a, b (both of one
 * type; their pointers are not kept) into C (c: fp32, or bf16 with an
 * epilogue that writes the FFN's activations; its pointer is not kept either),
 * with the epilogue `e` (NULL: none). The epilogue's vector must be
 * BIAS_ALIGN-aligned and its mask row stride a multiple of 128 bits; the plan
 * keeps neither address: the caller sets them on the descriptor before each
 * call (lt_matmul). */
static gemm_plan *plan_get(cublasComputeType_t compute, int ta, int tb, int M, int N, int K, const lt_operand *a,
                           const lt_operand *b, const lt_operand *c, const tfm_cuda_epilogue *e) {
    TFM_CUDA_ASSERT(a->type == b->type);
    cublasLtEpilogue_t epi = e ? e->kind : CUBLASLT_EPILOGUE_DEFAULT;
    cudaDataType_t vec_type = epi_has_vec(epi) ? e->vec_type : CUDA_R_32F;
    int64_t aux_ld = epi_has_aux(epi) ? e->aux_ld : 0;
    unsigned aux_align = epi_has_aux(epi) ? aux_align_of(e->aux) : 0;
    for (int i = 0; i < PLAN_CACHE; i++) {
        gemm_plan *p = &g_plans[i];
        if (p->used && p->compute == compute && p->type == a->type && p->c_type == c->type && p->ta == ta &&
            p->tb == tb && p->M == M && p->N == N && p->K == K && p->lda == a->ld && p->ldb == b->ld &&
            p->ldc == c->ld && p->align_a == a->align && p->align_b == b->align && p->align_c == c->align &&
            p->epi == epi && p->vec_type == vec_type && p->aux_ld == aux_ld && p->aux_align == aux_align)
            return p;
    }
    gemm_plan *p = &g_plans[g_plan_next];
    g_plan_next = (g_plan_next + 1) % PLAN_CACHE;
    plan_destroy(p);
    memset(p, 0, sizeof *p);
    p->compute = compute, p->type = a->type, p->c_type = c->type;
    p->ta = ta, p->tb = tb, p->M = M, p->N = N, p->K = K, p->lda = a->ld, p->ldb = b->ld, p->ldc = c->ld;
    p->align_a = a->align, p->align_b = b->align, p->align_c = c->align;
    p->epi = epi, p->vec_type = vec_type, p->aux_ld = aux_ld, p->aux_align = aux_align;

    /* Column-major view (see the top of the file): m = N, n = M; "A" = our B, "B" = our A.
     * The scale type (alpha, beta) is fp32 in every mode. */
    cublasOperation_t op_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    TFM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, compute, CUDA_R_32F));
    desc_set(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a);
    desc_set(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b);
    if (epi != CUBLASLT_EPILOGUE_DEFAULT) desc_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    if (epi_has_vec(epi)) {
        /* D = A B + bias with D column-major [m = N, n = M]: the bias (BIAS,
         * RELU_AUX_BIAS) and the gradient of DRELU_BGRAD have one value per
         * row of D, i.e. per column of our row-major C, which is what
         * linear's b[O] is; BGRADB's has one per column of D (our row of C:
         * the sums of op(A) over K). Its type is set explicitly (cuBLASLt's
         * default is D's type, which for a bf16 D would be a bf16 vector). */
        desc_set(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &vec_type, sizeof vec_type);
        desc_set_probe(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, e->vec, BIAS_ALIGN);
    }
    if (epi_has_aux(epi)) {
        /* The ReLU bit mask, one bit per element of D: column-major [N, M]
         * with aux_ld bits per column, i.e. one row of aux_ld bits per row
         * of our C. */
        desc_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld);
        desc_set_probe(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, e->aux, aux_align);
    }
    /* Column-major shapes (rows x cols) of what is stored: our B, row-major
     * [K,N] (or [N,K] when transposed), reads as [N,K] (or [K,N]); likewise A. */
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, b->type, tb ? K : N, tb ? N : K, b->ld));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, a->type, ta ? M : K, ta ? K : M, a->ld));
    TFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, c->type, N, M, c->ld));
    p->used = 1;

    size_t ws_bytes = 0;
    (void)tfm_cuda_lt_workspace(&ws_bytes);
    cublasLtMatmulPreference_t pref;
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    TFM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &ws_bytes, sizeof ws_bytes));
    uint32_t al_a = b->align, al_b = a->align, al_c = c->align; /* cuBLASLt's A is our B */
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
    /* NOT_SUPPORTED means "no algorithm for this problem": the fallback
     * handles it. So does any refusal of an epilogue or of bf16 operands (a
     * type combination or layout it does not take): the plain product, the
     * fp32 operands or the FFN's composition then run. */
    int plain = epi == CUBLASLT_EPILOGUE_DEFAULT && a->type == CUDA_R_32F && c->type == CUDA_R_32F;
    if (s != CUBLAS_STATUS_NOT_SUPPORTED && plain) TFM_CUBLAS_CHECK(s);
    p->has_algo = s == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p->has_algo) p->algo = res.algo;
    return p;
}

/* C = alpha op(A) op(B) + beta C through cuBLASLt in `compute`, with the
 * epilogue `e` (NULL: none; its pointers as plan_get says). Returns 0,
 * having queued nothing, when cuBLASLt has no algorithm for it. */
static int lt_matmul(cublasComputeType_t compute, int ta, int tb, int M, int N, int K, float alpha,
                     const lt_operand *a, const lt_operand *b, float beta, const lt_operand *c,
                     const tfm_cuda_epilogue *e) {
    gemm_plan *p = plan_get(compute, ta, tb, M, N, K, a, b, c, e);
    if (!p->has_algo) return 0;
    if (epi_has_vec(p->epi)) desc_set(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &e->vec, sizeof e->vec);
    if (epi_has_aux(p->epi)) desc_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &e->aux, sizeof e->aux);
    size_t ws_bytes = 0;
    void *ws = tfm_cuda_lt_workspace(&ws_bytes);
    void *C = (void *)c->p;
    cublasStatus_t s = cublasLtMatmul(tfm_cuda_lt(), p->desc, &alpha, b->p, p->la, a->p, p->lb, &beta, C, p->lc, C,
                                      p->lc, &p->algo, ws, ws_bytes, tfm_cuda_stream());
    int plain = p->epi == CUBLASLT_EPILOGUE_DEFAULT && a->type == CUDA_R_32F && c->type == CUDA_R_32F;
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || (!plain && s == CUBLAS_STATUS_INVALID_VALUE)) {
        /* The heuristic's algorithm refused these operands after all (an
         * alignment it did not account for, the epilogue, the bf16 types):
         * nothing ran, and this plan falls back from now on. */
        p->has_algo = 0;
        return 0;
    }
    TFM_CUBLAS_CHECK(s);
    return 1;
}

/* The product into the fp32 C (row stride ldc) through cuBLASLt with the
 * bias in its epilogue when `epi` (a BIAS_ALIGN-aligned bias, or NULL) is
 * given and cuBLASLt takes it: returns 2; else without a bias: returns 1; 0
 * when cuBLASLt runs neither (nothing queued). */
static int lt_product(cublasComputeType_t compute, int ta, int tb, int M, int N, int K, float alpha,
                      const lt_operand *a, const lt_operand *b, float beta, float *C, int ldc, const float *epi) {
    lt_operand c = {CUDA_R_32F, C, ldc, ptr_align(C)};
    tfm_cuda_epilogue bias = {CUBLASLT_EPILOGUE_BIAS, CUDA_R_32F, (void *)epi, NULL, 0};
    if (epi && lt_matmul(compute, ta, tb, M, N, K, alpha, a, b, beta, &c, &bias)) return 2;
    return lt_matmul(compute, ta, tb, M, N, K, alpha, a, b, beta, &c, NULL);
}

/* ------------------------------------------------------- bf16 operands */

/* BF16 mode converts only where it pays. Converting moves 6 bytes an element
 * (read 4, write 2): about 1.5 ps at 4 TB/s; the bf16 product saves about
 * 1/260T - 1/800T = 2.6 fs a flop over FAST_16BF on fp32 operands (the
 * profile's rates on an H200). So the copies pay from about 600 flops per
 * element converted; below 512 (decoding: a few rows against the 37000 x 512
 * generator does 2 * rows flops per weight element), the product runs on the
 * fp32 operands. A training step's products do 1000 and more (the
 * generator's about 30000). */
#define BF16_MIN_FLOPS_PER_ELEMENT 512.0

static int bf16_pays(double flops, double elements) { return flops >= BF16_MIN_FLOPS_PER_ELEMENT * elements; }

/* The row stride of a bf16 copy: its columns rounded up to 8, so that each
 * row starts 16-byte aligned (the copy's start is cudaMalloc's, 256). */
static int bf16_ld(int cols) { return (cols + 7) & ~7; }

/* One grow-only device buffer for the bf16 copy of one operand. Two of them
 * (a product reads A's and B's copies at once), apart from tfm_cuda_scratch,
 * which colsum_add and other ops use for their own partials. They grow during
 * a training run's first step and never after: no allocation in the steady
 * state. */
typedef struct bf16_buffer {
    __nv_bfloat16 *p;
    size_t bytes;   /* allocated */
    size_t refused; /* the smallest size cudaMalloc refused (0: none): not asked again */
} bf16_buffer;
static bf16_buffer g_bf16_a, g_bf16_b; /* copies of A and of B */

__device__ __forceinline__ unsigned bf16x2_bits(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi); /* to nearest even; lo in the low half */
    return *reinterpret_cast<unsigned *>(&h);
}

/* dst[r, j] = bf16(src[r, j]) rounded to nearest even for r < rows, j < cols,
 * and 0 for cols <= j < ldd: src row-major with row stride lds, dst with row
 * stride ldd = bf16_ld(cols) and 16-byte aligned. One thread per chunk of 8
 * values of dst: one 16-byte store, and two float4 loads when `vec` (src
 * 16-byte aligned and lds % 4 == 0, so every whole chunk of a row is too),
 * else 8 scalar loads (and at the end of a row). */
__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, int rows, int cols, size_t lds, int ldd,
                               int vec) {
    size_t per_row = (size_t)ldd / 8, chunks = (size_t)rows * per_row;
    for (size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x; c < chunks; c += (size_t)gridDim.x * blockDim.x) {
        size_t r = c / per_row;
        int j = (int)(c - r * per_row) * 8;
        const float *s = src + r * lds + j;
        float v[8];
        if (vec && j + 8 <= cols) {
            float4 lo = ((const float4 *)s)[0], hi = ((const float4 *)s)[1];
            v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
            v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
        } else {
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = j + u < cols ? s[u] : 0.0f;
        }
        uint4 out;
        out.x = bf16x2_bits(v[0], v[1]);
        out.y = bf16x2_bits(v[2], v[3]);
        out.z = bf16x2_bits(v[4], v[5]);
        out.w = bf16x2_bits(v[6], v[7]);
        ((uint4 *)dst)[c] = out; /* = dst + r * ldd + j */
    }
}

/* Grows buf to hold `bytes` if need be (which waits for the queued work: a
 * product may still read the old contents). Returns 0 when the device has no
 * memory for it (buf is then empty). */
static int bf16_reserve(bf16_buffer *buf, size_t bytes) {
    if (bytes > buf->bytes) {
        const size_t unit = (size_t)2 << 20;          /* whole 2 MiB: no growth by a few rows */
        size_t grow = (bytes + unit - 1) / unit * unit; /* exact, not doubled: the generator's dlogits copy is ~2 GB */
        if (buf->refused && grow >= buf->refused) return 0;
        TFM_CUDA_CHECK(cudaStreamSynchronize(tfm_cuda_stream()));
        TFM_CUDA_CHECK(cudaFree(buf->p));
        buf->p = NULL, buf->bytes = 0;
        tfm_cuda_graphs_stale(); /* recorded steps hold the old address */
        cudaError_t e = cudaMalloc(&buf->p, grow);
        if (e == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError(); /* not sticky: clear it; the fp32 operands serve */
            buf->p = NULL;
            buf->refused = grow;
            return 0;
        }
        TFM_CUDA_CHECK(e);
        buf->bytes = grow;
    }
    return 1;
}

/* See cuda_internal.cuh: to_bf16_kernel into any 16-byte aligned dst. */
void tfm_cuda_to_bf16(__nv_bfloat16 *dst, int ldd, const float *src, int rows, int cols, int lds) {
    if (rows <= 0 || cols <= 0) return;
    TFM_CUDA_ASSERT(ldd % 8 == 0 && ldd >= cols && (uintptr_t)dst % 16 == 0);
    int vec = (uintptr_t)src % 16 == 0 && lds % 4 == 0;
    size_t chunks = (size_t)rows * (size_t)(ldd / 8);
    to_bf16_kernel<<<tfm_cuda_blocks(chunks, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(
        dst, src, rows, cols, (size_t)lds, ldd, vec);
    TFM_CUDA_LAUNCHED();
}

/* ------------------------------------------- the parameters' bf16 copy */

/* backend.h's params_lowp: in BF16 mode a bf16 copy of the model's whole
 * parameter buffer, so that the weights are not converted at every product
 * that reads them (a base training step converted each of its ~150 weight
 * matrices twice, forward and din, in ~150 small launches: ~0.4 ms with the
 * gaps between them). The copy is `current` from params_lowp (which converts
 * when it is not) until a write into the buffer other than an Adam update of
 * the whole buffer (which writes the copy too: adam.cu):
 * tfm_cuda_params_written, called by every such op of the table. Products
 * take it for operands inside the buffer (shadow_operand). */
static struct {
    const float *p;          /* the registered buffer (NULL: none) */
    size_t n;
    __nv_bfloat16 *copy;     /* [n], the same layout */
    size_t cap;
    int current;
} g_params16;

__global__ void flat_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

void tfm_cuda_params_lowp(const float *params, size_t n) {
    if (g_params16.p != params || g_params16.n != n) g_params16.current = 0;
    g_params16.p = params, g_params16.n = n;
    if (!g_bf16 || !params || !n || g_params16.current) return;
    if (g_params16.cap < n) {
        TFM_CUDA_CHECK(cudaStreamSynchronize(tfm_cuda_stream())); /* products may read the old copy */
        TFM_CUDA_CHECK(cudaFree(g_params16.copy));
        g_params16.copy = NULL, g_params16.cap = 0;
        tfm_cuda_graphs_stale(); /* recorded steps hold the old address */
        cudaError_t e = cudaMalloc(&g_params16.copy, n * sizeof(__nv_bfloat16));
        if (e == cudaErrorMemoryAllocation) { /* no copy: every product converts, as without one */
            (void)cudaGetLastError();
            g_params16.copy = NULL;
            return;
        }
        TFM_CUDA_CHECK(e);
        g_params16.cap = n;
    }
    flat_to_bf16_kernel<<<tfm_cuda_blocks(n, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(
        g_params16.copy, params, n);
    TFM_CUDA_LAUNCHED();
    g_params16.current = 1;
}

void tfm_cuda_params_written(const void *dst, size_t bytes) {
    const char *d = (const char *)dst, *p = (const char *)g_params16.p;
    if (g_params16.current && bytes && d < p + g_params16.n * sizeof(float) && p < d + bytes)
        g_params16.current = 0;
}

__nv_bfloat16 *tfm_cuda_params_lowp_for(const float *param, size_t n) {
    return g_params16.current && param == g_params16.p && n == g_params16.n ? g_params16.copy : NULL;
}

/* The current bf16 copy of src [rows, cols] (row stride lds) where src lies
 * in the parameter buffer with 16-byte aligned rows there: *op describes it
 * (row stride lds) and 1 is returned; else 0. */
static int shadow_operand(const float *src, int rows, int cols, int lds, lt_operand *op) {
    if (!g_params16.current || !g_params16.copy || rows <= 0 || cols <= 0) return 0;
    if (src < g_params16.p || src >= g_params16.p + g_params16.n) return 0;
    size_t off = (size_t)(src - g_params16.p), end = off + (size_t)(rows - 1) * lds + cols;
    if (end > g_params16.n || off % 8 || lds % 8) return 0;
    op->type = CUDA_R_16BF, op->p = g_params16.copy + off, op->ld = lds, op->align = 16;
    return 1;
}

/* Queues the bf16 copy of src [rows, cols] (row stride lds, device) into buf,
 * growing buf first if need be (bf16_reserve), and describes the copy in
 * *op; or, for a weight with a current copy (shadow_operand), describes that
 * copy and queues nothing. Returns 0, having queued nothing, when the device
 * has no memory for it. */
static int to_bf16(bf16_buffer *buf, const float *src, int rows, int cols, int lds, lt_operand *op) {
    if (shadow_operand(src, rows, cols, lds, op)) return 1;
    int ldd = bf16_ld(cols);
    if (!bf16_reserve(buf, (size_t)rows * ldd * sizeof(__nv_bfloat16))) return 0;
    tfm_cuda_to_bf16(buf->p, ldd, src, rows, cols, lds);
    op->type = CUDA_R_16BF, op->p = buf->p, op->ld = ldd, op->align = 16;
    return 1;
}

/* The product on bf16 copies of A and B (BF16 mode), returning as lt_product
 * does (0: no product queued: no memory for the copies, or cuBLASLt has no
 * algorithm for them). a16, b16: A's and B's copies, already queued by the
 * caller (linear_backward's dout, a kept input), or NULL to make them here. The weights, converted on every call: a bf16 copy of the
 * parameters refreshed once per optimizer step would save converting them in
 * the forward and again in din's product (2 x 6 bytes per weight a step:
 * ~0.75 GB, ~0.2 ms, for the base model's ~63M GEMM weights); the
 * activations are most of what is converted. */
static int product_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                        int ldb, float beta, float *C, int ldc, const float *epi, const lt_operand *a16,
                        const lt_operand *b16) {
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N; /* as stored */
    lt_operand a = {CUDA_R_16BF, NULL, bf16_ld(ac), 16}, b = {CUDA_R_16BF, NULL, bf16_ld(bc), 16};
    if (a16) a = *a16;
    if (b16) b = *b16;
    lt_operand sa, sb; /* weights' current copies, described before the plan check (their row stride) */
    if (!a16 && shadow_operand(A, ar, ac, lda, &sa)) a16 = &sa, a = sa;
    if (!b16 && shadow_operand(B, br, bc, ldb, &sb)) b16 = &sb, b = sb;
    /* Skip converting where cuBLASLt would refuse the product anyway (the plan remembers). */
    lt_operand c = {CUDA_R_32F, C, ldc, ptr_align(C)};
    if (!plan_get(CUBLAS_COMPUTE_32F, ta, tb, M, N, K, &a, &b, &c, NULL)->has_algo) return 0;
    if (!a16 && !to_bf16(&g_bf16_a, A, ar, ac, lda, &a)) return 0;
    if (!b16 && !to_bf16(&g_bf16_b, B, br, bc, ldb, &b)) return 0;
    return lt_product(CUBLAS_COMPUTE_32F, ta, tb, M, N, K, alpha, &a, &b, beta, C, ldc, epi);
}

/* ------------------------------------- the product machinery for ffn.cu */

/* See cuda_internal.cuh. */
unsigned tfm_cuda_ptr_align(const void *p) { return ptr_align(p); }
int tfm_cuda_bf16_pays(double flops, double elements) { return bf16_pays(flops, elements); }

/* See cuda_internal.cuh: to_bf16 into the A (which = 0) or B (1) buffer. */
int tfm_cuda_bf16_operand(int which, const float *src, int rows, int cols, int lds, tfm_cuda_mat *op) {
    return to_bf16(which ? &g_bf16_b : &g_bf16_a, src, rows, cols, lds, op);
}

/* See cuda_internal.cuh. bf16 operands multiply in CUBLAS_COMPUTE_32F (as
 * product_bf16's copies), fp32 ones in the mode's compute type. */
int tfm_cuda_lt_matmul(int ta, int tb, int M, int N, int K, float alpha, const tfm_cuda_mat *a,
                       const tfm_cuda_mat *b, float beta, const tfm_cuda_mat *c, const tfm_cuda_epilogue *e,
                       int run) {
    TFM_CUDA_ASSERT(M > 0 && N > 0 && K > 0);
    cublasComputeType_t compute = a->type == CUDA_R_16BF ? CUBLAS_COMPUTE_32F : g_compute;
    if (!run) return plan_get(compute, ta ? 1 : 0, tb ? 1 : 0, M, N, K, a, b, c, e)->has_algo;
    return lt_matmul(compute, ta ? 1 : 0, tb ? 1 : 0, M, N, K, alpha, a, b, beta, c, e);
}

/* ------------------------------------------------------------ the routes */

__global__ void scale_matrix_kernel(float *C, int M, int N, int ldc, float beta) {
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < (long)M * N; e += (long)gridDim.x * blockDim.x) {
        float *c = C + (e / N) * ldc + e % N;
        *c = beta == 0.0f ? 0.0f : beta * *c;
    }
}

/* C[i, j] += b[j] for i < M, j < N (row stride ldc). x over columns
 * (coalesced), y over rows. */
__global__ void bias_add_kernel(float *C, const float *b, int M, int N, int ldc) {
    for (int i = blockIdx.y; i < M; i += gridDim.y)
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x)
            C[(long)i * ldc + j] += b[j];
}

/* See cuda_internal.cuh. */
void tfm_cuda_bias_add(float *C, const float *b, int M, int N, int ldc) {
    if (M <= 0 || N <= 0) return;
    dim3 grid((N + 255) / 256, M < 65535 ? M : 65535);
    bias_add_kernel<<<grid, 256, 0, tfm_cuda_stream()>>>(C, b, M, N, ldc);
    TFM_CUDA_LAUNCHED();
}

/* C = alpha op(A) op(B) + beta C (+ bias[j] on every row when bias is not
 * NULL), by the fastest route that takes these operands: in BF16 mode, where
 * it pays (bf16_pays) or a16 (A's bf16 copy, made by the caller) is given,
 * cuBLASLt on bf16 copies; otherwise, or when that cannot run, cuBLASLt on
 * the fp32 operands in the mode's compute type; else bgemm. The bias rides
 * in cuBLASLt's epilogue when it is BIAS_ALIGN-aligned and cuBLASLt takes
 * it; otherwise bias_add_kernel adds it after the product. */
static void gemm_bias(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc, const float *bias, const lt_operand *a16,
                      const lt_operand *b16) {
    if (M <= 0 || N <= 0) return;
    cudaStream_t st = tfm_cuda_stream();
    const float *epi = bias && (uintptr_t)bias % BIAS_ALIGN == 0 ? bias : NULL;
    int ran = 0; /* 2: the product and the bias are done; 1: the product only */
    if (K <= 0) { /* no product: C = beta C (cuBLASLt wants k >= 1) */
        scale_matrix_kernel<<<tfm_cuda_blocks((size_t)M * N, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, st>>>(C, M, N,
                                                                                                          ldc, beta);
        TFM_CUDA_LAUNCHED();
        ran = 1;
    }
    if (!ran && g_bf16 && (a16 || b16 || bf16_pays(2.0 * M * N * K, (double)M * K + (double)N * K)))
        ran = product_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, epi, a16, b16);
    if (!ran) {
        lt_operand a = {CUDA_R_32F, A, lda, ptr_align(A)}, b = {CUDA_R_32F, B, ldb, ptr_align(B)};
        ran = lt_product(g_compute, ta, tb, M, N, K, alpha, &a, &b, beta, C, ldc, epi);
    }
    if (!ran) {
        tfm_cuda_bgemm_args g;
        memset(&g, 0, sizeof g);
        g.ta = ta, g.tb = tb, g.M = M, g.N = N, g.K = K, g.B = 1, g.H = 1;
        g.alpha = alpha, g.beta = beta;
        g.A = A, g.lda = lda, g.Bm = B, g.ldb = ldb, g.C = C, g.ldc = ldc;
        tfm_cuda_bgemm(&g);
        ran = 1;
    }
    if (bias && ran == 1) tfm_cuda_bias_add(C, bias, M, N, ldc);
}

/* C[M,N] = alpha op(A) op(B) + beta C, row-major with row strides lda, ldb,
 * ldc (the CBLAS contract of ops_decl.h). All pointers on the device;
 * beta == 0 never reads C. Queued; does not wait. */
void tfm_cuda_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_bias(trans_a ? 1 : 0, trans_b ? 1 : 0, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, NULL, NULL);
}

/* --------------------------------------------------------------- linear */

/* The bias gradient, sums[c] += sum over rows n of x[n*C + c], in two passes
 * (one block of 32 columns x RG row groups each): the first over a grid of
 * column tiles x row chunks of COLSUM_ROWS rows writes one partial sum per
 * chunk and column to scratch, the second sums those partials. One pass with
 * a block per column tile had only C/32 blocks (16 for C = 512) for tens of
 * thousands of rows: the GPU sat idle. Every sum runs in a fixed order (rows
 * within a thread, row groups, chunks), so the result is the same run to run;
 * no atomics. */
#define COLSUM_ROWS 128                   /* rows per chunk of the first pass */
#define COLSUM_SCRATCH ((size_t)4 << 20)  /* at most this many partial sums (16 MiB) */

/* Block (32, RG): columns blockIdx.x*32 + [0, 32), rows [blockIdx.y*rows,
 * +rows) of x[N, C]. out[blockIdx.y * C + c] = the block's sum, or with
 * `accumulate`, out[c] += it (then blockIdx.y must be 0). */
template <int RG>
__global__ void __launch_bounds__(32 * RG) colsum_kernel(float *out, const float *x, int N, int C, int rows,
                                                         int accumulate) {
    __shared__ float part[RG][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    long n0 = (long)blockIdx.y * rows, n1 = n0 + rows < N ? n0 + rows : N;
    float s = 0.0f;
    if (c < C) {
#pragma unroll 4
        for (long n = n0 + threadIdx.y; n < n1; n += RG) s += x[n * C + c];
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0.0f;
        for (int r = 0; r < RG; r++) t += part[r][threadIdx.x];
        if (accumulate) out[c] += t;
        else out[(long)blockIdx.y * C + c] = t;
    }
}

/* colsum_kernel with 4 columns a thread (16-byte loads: x 16-byte aligned,
 * C % 4 == 0), 128 columns a block: the same sums in the same order (each
 * column's rows within a thread, then the RG row groups), so the same bits,
 * with a quarter of the load instructions (H200, the base model's training
 * step: 1.87 -> 1.75 ms over its 66 bias gradients).
 * copy (NULL: none): the bf16 copy of x as to_bf16_kernel makes it, rows of
 * ldc16 = bf16_ld(C) (16-byte aligned, columns C..ldc16-1 zero), written from
 * the same loads: linear_backward's output gradient is both summed and
 * multiplied, and this reads it once instead of twice.
 * sums and counters (NULL: none; with several chunks, out the partials): the
 * second pass in the same launch: the last block of each column tile to
 * finish (counters[blockIdx.x], an atomic count, reset to 0 after) adds the
 * partials of its columns, chunks in order within a row group and the row
 * groups in order, into sums: the same total whichever block finishes last,
 * without a second kernel (54 launches a base training step). */
template <int RG>
__global__ void __launch_bounds__(32 * RG) colsum4_kernel(float *out, const float *x, int N, int C, int rows,
                                                          int accumulate, __nv_bfloat16 *copy, int ldc16,
                                                          float *sums, unsigned *counters) {
    __shared__ float4 part[RG][32];
    int c = (blockIdx.x * 32 + threadIdx.x) * 4;
    long n0 = (long)blockIdx.y * rows, n1 = n0 + rows < N ? n0 + rows : N;
    float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (c < C) {
#pragma unroll 4
        for (long n = n0 + threadIdx.y; n < n1; n += RG) {
            float4 v = *(const float4 *)(x + n * C + c);
            s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
            if (copy) {
                uint2 *d = (uint2 *)(copy + n * ldc16 + c);
                d[0] = make_uint2(bf16x2_bits(v.x, v.y), bf16x2_bits(v.z, v.w));
                if (c + 4 == C && ldc16 > C) d[1] = make_uint2(0, 0); /* the row's padding (C % 8 == 4) */
            }
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float4 t = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int r = 0; r < RG; r++) {
            float4 v = part[r][threadIdx.x];
            t.x += v.x, t.y += v.y, t.z += v.z, t.w += v.w;
        }
        float *o = accumulate ? out + c : out + (long)blockIdx.y * C + c;
        if (accumulate) t.x += o[0], t.y += o[1], t.z += o[2], t.w += o[3];
        o[0] = t.x, o[1] = t.y, o[2] = t.z, o[3] = t.w;
    }
    if (!counters) return; /* the whole block */
    __shared__ int last;
    __threadfence(); /* this block's partials, visible before it is counted */
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicAdd(&counters[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    float4 s2 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (c < C)
        for (int r = threadIdx.y; r < (int)gridDim.y; r += RG) {
            float4 v = __ldcg((const float4 *)(out + (long)r * C + c)); /* from L2: other blocks wrote them */
            s2.x += v.x, s2.y += v.y, s2.z += v.z, s2.w += v.w;
        }
    part[threadIdx.y][threadIdx.x] = s2;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float4 t = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int r = 0; r < RG; r++) {
            float4 v = part[r][threadIdx.x];
            t.x += v.x, t.y += v.y, t.z += v.z, t.w += v.w;
        }
        sums[c] += t.x, sums[c + 1] += t.y, sums[c + 2] += t.z, sums[c + 3] += t.w;
    }
    if (threadIdx.x == 0 && threadIdx.y == 0) counters[blockIdx.x] = 0; /* for the next launch */
}

/* The column tiles' finish counters of colsum4_kernel: zeroed once, left
 * zeroed by every launch. COLSUM_TILES_MAX tiles of 128 columns. */
#define COLSUM_TILES_MAX 4096
static unsigned *colsum_counters(void) {
    static unsigned *counters;
    if (!counters) {
        TFM_CUDA_CHECK(cudaMalloc(&counters, COLSUM_TILES_MAX * sizeof *counters));
        TFM_CUDA_CHECK(cudaMemsetAsync(counters, 0, COLSUM_TILES_MAX * sizeof *counters, tfm_cuda_stream()));
    }
    return counters;
}

/* sums[c] += column sums of x[N, C]; with copy (C % 4 == 0, x 16-byte
 * aligned: colsum4_kernel), x's bf16 copy [N, bf16_ld(C)] too. */
static void colsum_add(float *sums, const float *x, int N, int C, __nv_bfloat16 *copy = NULL) {
    if (N <= 0 || C <= 0) return;
    cudaStream_t st = tfm_cuda_stream();
    unsigned col_tiles = (unsigned)((C + 31) / 32);
    /* Chunks of COLSUM_ROWS rows, fewer (and longer) if their partials would
     * not fit in COLSUM_SCRATCH; the split depends on N and C only. */
    long max_chunks = (long)(COLSUM_SCRATCH / (size_t)C);
    if (max_chunks < 1) max_chunks = 1;
    if (max_chunks > 65535) max_chunks = 65535;
    int rows = COLSUM_ROWS;
    long chunks = (N + rows - 1) / rows;
    if (chunks > max_chunks) {
        rows = (int)((N + max_chunks - 1) / max_chunks);
        chunks = (N + rows - 1) / rows;
    }
    float *part = chunks == 1 ? sums : (float *)tfm_cuda_scratch((size_t)chunks * C * sizeof(float)); /* [chunks, C] */
    int acc = chunks == 1; /* one chunk: straight into sums */
    TFM_CUDA_ASSERT(!copy || (C % 4 == 0 && (uintptr_t)x % 16 == 0));
    unsigned tiles4 = (unsigned)((C + 127) / 128);
    if (C % 4 == 0 && (uintptr_t)x % 16 == 0 && tiles4 <= COLSUM_TILES_MAX) {
        /* one launch: the last block of each column tile adds the partials */
        colsum4_kernel<8><<<dim3(tiles4, (unsigned)chunks), dim3(32, 8), 0, st>>>(
            part, x, N, C, rows, acc, copy, bf16_ld(C), acc ? NULL : sums, acc ? NULL : colsum_counters());
        TFM_CUDA_LAUNCHED();
        return;
    }
    colsum_kernel<8><<<dim3(col_tiles, (unsigned)chunks), dim3(32, 8), 0, st>>>(part, x, N, C, rows, acc);
    TFM_CUDA_LAUNCHED();
    if (acc) return;
    colsum_kernel<32><<<dim3(col_tiles, 1), dim3(32, 32), 0, st>>>(sums, part, (int)chunks, C, (int)chunks, 1);
    TFM_CUDA_LAUNCHED();
}

/* See cuda_internal.cuh. */
void tfm_cuda_colsum_add(float *sums, const float *x, int N, int C) { colsum_add(sums, x, N, C); }

/* The bf16 copy of an output gradient dout[N, C] into the A buffer (as
 * to_bf16), and with sums (not NULL) its column sums added to sums, in one
 * read of dout where colsum4_kernel can make the copy (C % 4 == 0, dout
 * 16-byte aligned), else the two passes. 0, with nothing queued, when
 * there is no memory for the copy. */
static int to_bf16_colsum(float *sums, const float *dout, int N, int C, lt_operand *op) {
    int one_read = sums && N > 0 && C % 4 == 0 && (uintptr_t)dout % 16 == 0;
    if (!one_read) {
        if (!to_bf16(&g_bf16_a, dout, N, C, C, op)) return 0;
        if (sums) colsum_add(sums, dout, N, C);
        return 1;
    }
    int ldd = bf16_ld(C);
    if (!bf16_reserve(&g_bf16_a, (size_t)N * ldd * sizeof(__nv_bfloat16))) return 0;
    colsum_add(sums, dout, N, C, g_bf16_a.p);
    op->type = CUDA_R_16BF, op->p = g_bf16_a.p, op->ld = ldd, op->align = 16;
    return 1;
}

/* See cuda_internal.cuh. */
int tfm_cuda_bf16_operand_colsum(float *sums, const float *dout, int N, int C, tfm_cuda_mat *op) {
    return to_bf16_colsum(sums, dout, N, C, op);
}

/* out[N,O] = in[N,I] w[O,I]^T + b[O] (b may be NULL); device pointers. The
 * bias rides in cuBLASLt's epilogue when it can (see gemm_bias). */
void tfm_cuda_linear_forward(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                             int n_out) {
    gemm_bias(0, 1, N, n_out, n_in, 1.0f, in, n_in, w, n_in, 0.0f, out, n_out, b, NULL, NULL);
}

/* The kept input (backend.h: linear_forward_keep, linear_backward_kept): in
 * BF16 mode, where the forward's bf16 copies pay, the forward converts `in`
 * into keep (bf16, rows of bf16_ld(n_in)) and multiplies that copy; the
 * backward's weight gradient multiplies it again instead of converting `in`
 * a second time (a read of 4 and a write of 2 bytes per element saved: for
 * the base model's step 42 inputs of 25,600 x 512). Whether the copy is
 * there is decided from the mode and the sizes alone, so the backward
 * decides as its forward did. */
static int keep_used(const void *keep, int N, int n_in, int n_out) {
    return g_bf16 && keep && ptr_align(keep) == 16 && N > 0 && n_in > 0 && n_out > 0 &&
           bf16_pays(2.0 * N * n_in * n_out, (double)N * n_in + (double)n_out * n_in);
}

/* Where a producer of `in` may write the keep itself (fused.cu's residual +
 * LayerNorm): BF16 mode and a 16-byte aligned keep; the copy's layout is
 * then bf16 rows of bf16_ld(n_in), as to_bf16 writes them. */
int tfm_cuda_keep_writable(const void *keep) { return g_bf16 && keep && ptr_align(keep) == 16; }

size_t tfm_cuda_linear_keep_bytes(int N, int n_in, int n_out) {
    return N > 0 && n_in > 0 ? (size_t)N * bf16_ld(n_in) * sizeof(__nv_bfloat16) : 0;
}

void tfm_cuda_linear_forward_keep(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                                  int n_out, void *keep, int keep_filled) {
    lt_operand k = {CUDA_R_16BF, keep, bf16_ld(n_in), 16}, *a16 = NULL;
    if (keep_used(keep, N, n_in, n_out)) {
        if (!keep_filled) tfm_cuda_to_bf16((__nv_bfloat16 *)keep, k.ld, in, N, n_in, n_in);
        a16 = &k;
    }
    gemm_bias(0, 1, N, n_out, n_in, 1.0f, in, n_in, w, n_in, 0.0f, out, n_out, b, a16, NULL);
}

/* din[N,I] (= or += when accumulate) dout[N,O] w;  dw[O,I] += dout^T in;
 * db[O] += column sums of dout. din and db may be NULL.
 * In BF16 mode dout is the A of both products (din's as stored, dw's
 * transposed: the same stored matrix), so its bf16 copy is made once for
 * both (for the generator's [N, 37000] dlogits that saves a 5.7 GB pass);
 * whether that pays is judged on the two products together. */
void tfm_cuda_linear_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                              const float *w, int N, int n_in, int n_out, int accumulate) {
    tfm_cuda_linear_backward_kept(din, dw, db, dout, in, NULL, w, N, n_in, n_out, accumulate);
}

void tfm_cuda_linear_backward_kept(float *din, float *dw, float *db, const float *dout, const float *in,
                                   const void *keep, const float *w, int N, int n_in, int n_out, int accumulate) {
    lt_operand d16, *a16 = NULL, k = {CUDA_R_16BF, keep, bf16_ld(n_in), 16};
    const lt_operand *b16 = keep_used(keep, N, n_in, n_out) ? &k : NULL;
    if (g_bf16 && N > 0 && n_in > 0 && n_out > 0 && (din || dw)) {
        double flops = 2.0 * N * n_in * n_out * ((din ? 1 : 0) + (dw ? 1 : 0));
        double elements = (double)N * n_out + (din ? (double)n_out * n_in : 0) + (dw ? (double)N * n_in : 0);
        if (bf16_pays(flops, elements) && to_bf16_colsum(db, dout, N, n_out, &d16)) {
            a16 = &d16;
            db = NULL; /* summed with the copy */
        }
    }
    if (din)
        gemm_bias(0, 0, N, n_in, n_out, 1.0f, dout, n_out, w, n_in, accumulate ? 1.0f : 0.0f, din, n_in, NULL, a16, NULL);
    if (dw) gemm_bias(1, 0, n_out, n_in, N, 1.0f, dout, n_out, in, n_in, 1.0f, dw, n_in, NULL, a16, b16);
    if (db) colsum_add(db, dout, N, n_out);
}

/* See backend.h (logits_backward) and cuda_internal.cuh. In BF16 mode, where
 * the bf16 copy of dlogits pays (judged as linear_backward judges it), the
 * gradient is written as that copy straight from the logits (xent.cu): the
 * fp32 dlogits of a training step (3.8 GB written, then read again by the
 * conversion) is never made, and dlogits is not written. If a product then
 * cannot run on the copy (cuBLASLt refuses it), the fp32 dlogits is made
 * after all and that product runs on it. Otherwise, and in the fp32 and tf32
 * modes: the composition. */
typedef struct packed_note packed_note;
static void logits_backward_packed(float *din, float *dw, float *dlogits, const float *logits, const float *lse,
                                   const int32_t *targets, const float *in, const float *w, int N, int D, int V,
                                   const packed_note *note, int pad_id, float smoothing, float scale,
                                   int accumulate);
static const packed_note *packed_note_get(const float *logits, int N, int D, int V);
static int packed_note_deferred(const packed_note *note);

void tfm_cuda_logits_backward(float *din, float *dw, float *dlogits, const float *logits, const float *lse,
                              const int32_t *targets, const float *in, const float *w, int N, int D, int V,
                              int pad_id, float smoothing, float scale, int accumulate, int packed) {
    const packed_note *note = packed ? packed_note_get(logits, N, D, V) : NULL;
    /* Recorded (graph.cu), only the one-pass kernel reads the scale from its slot. */
    if (!packed_note_deferred(note)) tfm_cuda_capture_refuse("a loss gradient with its scale as an argument");
    if (note) {
        logits_backward_packed(din, dw, dlogits, logits, lse, targets, in, w, N, D, V, note, pad_id,
                               smoothing, scale, accumulate);
        return;
    }
    int direct = 0;
    lt_operand d16 = {CUDA_R_16BF, NULL, bf16_ld(V), 16};
    if (g_bf16 && N > 0 && D > 0 && V > 0 && (din || dw)) {
        double flops = 2.0 * N * D * V * ((din ? 1 : 0) + (dw ? 1 : 0));
        double elements = (double)N * V + (din ? (double)V * D : 0) + (dw ? (double)N * D : 0);
        direct = bf16_pays(flops, elements) &&
                 bf16_reserve(&g_bf16_a, (size_t)N * d16.ld * sizeof(__nv_bfloat16));
    }
    if (!direct) {
        tfm_cuda_xent_backward(dlogits, logits, lse, targets, N, V, pad_id, smoothing, scale);
        tfm_cuda_linear_backward(din, dw, NULL, dlogits, in, w, N, D, V, accumulate);
        return;
    }
    d16.p = g_bf16_a.p;
    tfm_cuda_xent_backward_bf16(g_bf16_a.p, d16.ld, logits, lse, targets, N, V, pad_id, smoothing, scale);
    /* din[N,D] = dlogits[N,V] w[V,D];  dw[V,D] += dlogits^T in[N,D]. product_bf16 (not gemm_bias, whose
     * fallback would read the fp32 dlogits) says whether each ran; it grows only g_bf16_b. */
    float beta = accumulate ? 1.0f : 0.0f;
    int din_left = din && !product_bf16(0, 0, N, D, V, 1.0f, dlogits, V, w, D, beta, din, D, NULL, &d16, NULL);
    int dw_left = dw && !product_bf16(1, 0, V, D, N, 1.0f, dlogits, V, in, D, 1.0f, dw, D, NULL, &d16, NULL);
    if (!din_left && !dw_left) return;
    tfm_cuda_xent_backward(dlogits, logits, lse, targets, N, V, pad_id, smoothing, scale);
    if (din_left) gemm_bias(0, 0, N, D, V, 1.0f, dlogits, V, w, D, beta, din, D, NULL, NULL, NULL);
    if (dw_left) gemm_bias(1, 0, V, D, N, 1.0f, dlogits, V, in, D, 1.0f, dw, D, NULL, NULL, NULL);
}

/* ------------------------------------------- the logits op, BF16 mode */

/* logits_loss_forward (backend.h). In BF16 mode, where the bf16 copies pay,
 * the logits are "packed": bf16 rows of ldv = V rounded up to
 * LOGITS_PAD_DEFAULT (TFM_VOCAB_PAD in the environment: another multiple of
 * 8), written by the product itself (bf16 output) into the logits buffer
 * (N ldv 2 bytes <= its N V 4), against a bf16 copy of the generator with
 * zero rows V..ldv-1, so the padding columns are 0; the loss reads them
 * (tfm_cuda_xent_forward_acc_bf16) and logits_backward turns them into the
 * bf16 gradient in place. Against the composition (fp32 logits, 3.8 GB for
 * the base model's step, written by the product, read by the loss, read
 * again by the backward) that halves the bytes of all three; and the product
 * runs over a vocabulary that cuBLASLt's tiles divide (37,000 is not a
 * multiple of 64; issue 5 measured its kernels at ~570 TFLOP/s there against
 * ~700 at multiples of 64). PyTorch's autocast rounds its logits to bf16 too
 * (a bf16 linear); the loss is then summed in fp32/double as ever.
 * Which layout the forward wrote is noted per logits buffer (the backward
 * reads it back): the packed path can be declined by cuBLASLt or for lack of
 * memory, and then the composition's fp32 logits are what is there. */
#define LOGITS_PAD_DEFAULT 64

static int logits_pad(void) {
    const char *v = getenv("TFM_VOCAB_PAD");
    int p = v ? atoi(v) : LOGITS_PAD_DEFAULT;
    return p >= 8 && p % 8 == 0 ? p : LOGITS_PAD_DEFAULT;
}

/* The packed layouts written, by logits buffer (a trainer has one; tests a
 * few), and whether the forward left the loss to the backward (loss_acc: the
 * forward's accumulator, which the backward then adds to). */
struct packed_note {
    const float *logits;
    int N, D, V, ldv; /* ldv 0: the last forward into this buffer wrote fp32 logits */
    double *loss_acc; /* NULL: the forward added the loss itself */
};
#define PACKED_NOTES 16
static packed_note g_packed[PACKED_NOTES];
static int g_packed_next;

static void packed_note_set(const float *logits, int N, int D, int V, int ldv, double *loss_acc) {
    packed_note *n = NULL;
    for (int i = 0; i < PACKED_NOTES && !n; i++)
        if (g_packed[i].logits == logits) n = &g_packed[i];
    if (!n) n = &g_packed[g_packed_next++ % PACKED_NOTES];
    n->logits = logits, n->N = N, n->D = D, n->V = V, n->ldv = ldv, n->loss_acc = loss_acc;
}

/* The note of the packed logits in this buffer for these sizes, or NULL (fp32). */
static const packed_note *packed_note_get(const float *logits, int N, int D, int V) {
    for (int i = 0; i < PACKED_NOTES; i++) {
        const packed_note *n = &g_packed[i];
        if (n->logits == logits) return n->N == N && n->D == D && n->V == V && n->ldv ? n : NULL;
    }
    return NULL;
}

/* Whether the forward of these packed logits left the loss to the backward. */
static int packed_note_deferred(const packed_note *note) { return note && note->loss_acc; }

/* Whether a packed forward leaves the loss to the backward (TFM_XENT_FUSED=0:
 * never, for comparisons). */
static int xent_fused_enabled(void) {
    const char *v = getenv("TFM_XENT_FUSED");
    return !(v && !strcmp(v, "0"));
}

/* The generator's bf16 copy [ldv, D] (row stride bf16_ld(D)) in g_bf16_b,
 * rows V..ldv-1 zero. Returns 0 when there is no memory for it. */
static int generator_bf16(const float *w, int V, int D, int ldv, lt_operand *op) {
    int ldd = bf16_ld(D);
    if (!bf16_reserve(&g_bf16_b, (size_t)ldv * ldd * sizeof(__nv_bfloat16))) return 0;
    tfm_cuda_to_bf16(g_bf16_b.p, ldd, w, V, D, D);
    if (ldv > V)
        TFM_CUDA_CHECK(cudaMemsetAsync(g_bf16_b.p + (size_t)V * ldd, 0,
                                       (size_t)(ldv - V) * ldd * sizeof(__nv_bfloat16), tfm_cuda_stream()));
    op->type = CUDA_R_16BF, op->p = g_bf16_b.p, op->ld = ldd, op->align = 16;
    return 1;
}

void tfm_cuda_logits_loss_forward(float *logits, float *lse, double *loss_acc, const float *in, const float *w,
                                  const int32_t *targets, int N, int D, int V, int pad_id, float smoothing) {
    int p = logits_pad(), ldv = (V + p - 1) / p * p;
    int packed = g_bf16 && N > 0 && D > 0 && V > 0 && ldv <= 2 * V && ptr_align(logits) == 16 &&
                 bf16_pays(2.0 * N * D * V, (double)N * D + (double)V * D);
    lt_operand a = {CUDA_R_16BF, NULL, bf16_ld(D), 16}, b = a, c = {CUDA_R_16BF, logits, ldv, 16};
    /* logits16[N, ldv] = in16[N, D] w16[ldv, D]^T */
    packed = packed && plan_get(CUBLAS_COMPUTE_32F, 0, 1, N, ldv, D, &a, &b, &c, NULL)->has_algo &&
             to_bf16(&g_bf16_a, in, N, D, D, &a) && generator_bf16(w, V, D, ldv, &b) &&
             lt_matmul(CUBLAS_COMPUTE_32F, 0, 1, N, ldv, D, 1.0f, &a, &b, 0.0f, &c, NULL);
    int defer = packed && xent_fused_enabled() && tfm_cuda_xent_fused_fits(ldv);
    packed_note_set(logits, N, D, V, packed ? ldv : 0, defer ? loss_acc : NULL);
    if (defer) return; /* lse and the loss: logits_backward, in one pass with the gradient */
    if (packed) {
        tfm_cuda_xent_forward_acc_bf16(lse, (const __nv_bfloat16 *)logits, ldv, targets, N, V, pad_id, smoothing,
                                       loss_acc);
        return;
    }
    tfm_cuda_linear_forward(logits, in, w, NULL, N, D, V);
    tfm_cuda_xent_forward_acc(lse, logits, targets, N, V, pad_id, smoothing, loss_acc);
}

/* dst[r, j] = src[r, j] widened to fp32, r < rows, j < cols (row strides ldd, lds). */
__global__ void widen_rows_kernel(float *dst, int ldd, const __nv_bfloat16 *src, int lds, int rows, int cols) {
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < (long)rows * cols;
         e += (long)gridDim.x * blockDim.x) {
        long r = e / cols, j = e - r * cols;
        dst[r * ldd + j] = __bfloat162float(src[r * lds + j]);
    }
}

/* logits_backward on packed logits: the bf16 gradient written over them
 * (packed logits are consumed: backend.h; dlogits is not used), then din[N,D] (=/+=) g16[N,ldv]
 * w16[ldv,D] (zero rows past V) and dw[V,D] += g16^T[V,N] in16[N,D]. Where
 * cuBLASLt refuses one of those products (the fp32 outputs' alignment), that
 * product runs on fp32 rows widened from g16, a chunk of rows at a time in
 * the scratch buffer (no fp32 copy of the whole gradient exists). */
static void logits_backward_packed(float *din, float *dw, float *dlogits, const float *logits, const float *lse,
                                   const int32_t *targets, const float *in, const float *w, int N, int D, int V,
                                   const packed_note *note, int pad_id, float smoothing, float scale,
                                   int accumulate) {
    __nv_bfloat16 *g16 = (__nv_bfloat16 *)logits; /* 16-byte aligned: the forward checked */
    int ldv = note->ldv;
    if (note->loss_acc)
        tfm_cuda_xent_fused_bf16(g16, ldv, NULL, targets, N, V, pad_id, smoothing, scale, note->loss_acc);
    else
        tfm_cuda_xent_backward_bf16_from_bf16(g16, ldv, g16, lse, targets, N, V, pad_id, smoothing, scale);
    lt_operand g = {CUDA_R_16BF, g16, ldv, 16}, w16, in16;
    float beta = accumulate ? 1.0f : 0.0f;
    int din_left = din != NULL, dw_left = dw != NULL;
    if (din && generator_bf16(w, V, D, ldv, &w16)) {
        lt_operand c = {CUDA_R_32F, din, D, ptr_align(din)};
        din_left = !lt_matmul(CUBLAS_COMPUTE_32F, 0, 0, N, D, ldv, 1.0f, &g, &w16, beta, &c, NULL);
    }
    if (dw && to_bf16(&g_bf16_a, in, N, D, D, &in16)) {
        lt_operand c = {CUDA_R_32F, dw, D, ptr_align(dw)};
        dw_left = !lt_matmul(CUBLAS_COMPUTE_32F, 1, 0, V, D, N, 1.0f, &g, &in16, 1.0f, &c, NULL);
    }
    if (!din_left && !dw_left) return;
    int rows = (int)(((size_t)64 << 20) / ((size_t)V * sizeof(float)));
    if (rows < 1) rows = 1;
    for (int r0 = 0; r0 < N; r0 += rows) {
        int R = N - r0 < rows ? N - r0 : rows;
        float *s = (float *)tfm_cuda_scratch((size_t)R * V * sizeof(float));
        widen_rows_kernel<<<tfm_cuda_blocks((size_t)R * V, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0,
                            tfm_cuda_stream()>>>(s, V, g16 + (size_t)r0 * ldv, ldv, R, V);
        TFM_CUDA_LAUNCHED();
        if (din_left) gemm_bias(0, 0, R, D, V, 1.0f, s, V, w, D, beta, din + (size_t)r0 * D, D, NULL, NULL, NULL);
        if (dw_left) gemm_bias(1, 0, V, D, R, 1.0f, s, V, in + (size_t)r0 * D, D, 1.0f, dw, D, NULL, NULL, NULL);
    }
}
