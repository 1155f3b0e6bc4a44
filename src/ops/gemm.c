/*
 * gemm.c: the one GEMM entry point, with the CBLAS contract (row-major).
 *
 *   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C
 *
 * Built with OpenBLAS it calls cblas_sgemm / cblas_dgemm, or cblas_sgemv /
 * cblas_dgemv when C is a single row (M == 1); without BLAS it runs a
 * portable, cache-friendly loop parallelised over rows of C. beta == 0 never
 * reads C, so C may hold garbage (NaN) on entry, as with BLAS.
 */
#include "ops/ops.h"

#ifdef TFM_HAVE_CBLAS
#include <cblas.h>
#endif

/* Below about this many multiply-adds a parallel region costs more than it
 * saves (the fallback loop only). */
#ifndef GEMM_PAR_MIN
#define GEMM_PAR_MIN 65536
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
    if (M == 1) {
        /* One row (a decoding step of one sentence, attention with one query):
         * a matrix-vector product. OpenBLAS's sgemm would pack op(B) on every
         * call (for x W^T, the whole weight matrix), which dominated decoding
         * one sentence; gemv streams it once. C is cleared here and beta set to
         * 1, so that beta == 0 never reads C whatever gemv's scal does with 0. */
        if (beta == 0) {
            for (int j = 0; j < N; j++) C[j] = 0;
            beta = 1;
        }
        int incx = trans_a ? lda : 1;
#ifdef TFM_OPS_F64
        if (trans_b) cblas_dgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, incx, beta, C, 1);
        else cblas_dgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, incx, beta, C, 1);
#else
        if (trans_b) cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, incx, beta, C, 1);
        else cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, incx, beta, C, 1);
#endif
        return;
    }
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
#pragma omp parallel for schedule(static) if(M > 1 && (double)M * N * K >= GEMM_PAR_MIN)
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
