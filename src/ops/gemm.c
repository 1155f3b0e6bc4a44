/*
 * gemm.c: the one GEMM entry point, with the CBLAS contract (row-major).
 *
 *   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C
 *
 * Built with OpenBLAS it calls cblas_sgemm / cblas_dgemm; without BLAS it runs
 * a portable, cache-friendly loop parallelised over rows of C. beta == 0 never
 * reads C, so C may hold garbage (NaN) on entry, as with BLAS.
 */
#include "ops/ops.h"

#ifdef TFM_HAVE_CBLAS
#include <cblas.h>
#endif

/* Element (r, c) of op(X) for a row-major stored X with row stride ld. */
#define OP_AT(X, trans, r, c, ld) ((trans) ? (X)[(size_t)(c) * (ld) + (r)] : (X)[(size_t)(r) * (ld) + (c)])

void OPFN(tfm_gemm)(int trans_a, int trans_b, int M, int N, int K, real alpha, const real *A,
                    int lda, const real *B, int ldb, real beta, real *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];
        return;
    }
#ifdef TFM_HAVE_CBLAS
#ifdef TFM_OPS_F64
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
#else
    /* Portable fallback: i-k-j order so the inner loop streams rows of B and C
     * when B is not transposed. */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        real *c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) c[j] = beta == 0 ? 0 : beta * c[j];
        for (int p = 0; p < K; p++) {
            real a = alpha * OP_AT(A, trans_a, i, p, lda);
            if (!trans_b) {
                const real *b = B + (size_t)p * ldb;
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            } else {
                for (int j = 0; j < N; j++) c[j] += a * B[(size_t)j * ldb + p];
            }
        }
    }
#endif
}
