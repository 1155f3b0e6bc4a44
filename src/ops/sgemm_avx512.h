/*
 * sgemm_avx512.h: the library's own single-precision GEMM for x86-64 CPUs
 * with AVX-512 (src/ops/sgemm_avx512.c), internal to src/ops/gemm.c, the
 * tests and `transformer bench sgemm`.
 *
 *   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C     (row-major)
 *
 * The CBLAS contract of tfm_gemm: op(X) = X or X^T, leading dimensions in
 * elements, beta == 0 never reads C (C may hold NaN).
 */
#ifndef TFM_SGEMM_AVX512_H
#define TFM_SGEMM_AVX512_H

/* The kernel sums blocks of at most this many k before adding to C (its KC;
 * the test's error bound uses it). */
#define TFM_SGEMM_AVX512_KC 256

/* 1 when this build has the kernel (GCC, x86-64) and the CPU it runs on has
 * AVX-512 F, VL, BW and DQ (checked once, cached); 0 otherwise, and tfm_sgemm_avx512 must not be
 * called. */
int tfm_sgemm_avx512_available(void);

/* The GEMM above, any M, N, K >= 0 and lda/ldb/ldc at least the stored row
 * length. Parallel over the omp_get_max_threads() threads of an OpenMP team
 * when called outside a parallel region and the product is large enough;
 * single-threaded inside one (as attention calls it). Reads only the
 * matrices' elements; writes only C's M x N elements. Allocates a per-thread
 * packing buffer on first use and when a larger one is needed, then reuses
 * it: no allocation in the steady state. Out of memory aborts (TFM_ASSERT
 * style), as the buffer is at most a few MiB. */
void tfm_sgemm_avx512(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);

/* Which float GEMM tfm_gemm runs (src/ops/gemm.c), also for benchmarks that
 * compare them in one process. TFM_GEMM_IMPL_BLAS: cblas_sgemm (or the
 * portable loop in a build without BLAS); TFM_GEMM_IMPL_OWN: tfm_sgemm_avx512
 * for every product with M > 1 (M == 1 stays on gemv); TFM_GEMM_IMPL_AUTO:
 * the own kernel for the shapes where it was measured to win, BLAS for the
 * rest. The default comes from the environment: TFM_GEMM=blas, own or auto
 * (unset: auto when tfm_sgemm_avx512_available(), else blas).
 * tfm_gemm_impl_set returns the previous choice; OWN or AUTO without
 * AVX-512 selects BLAS. Not for use while GEMMs run on other threads. */
enum { TFM_GEMM_IMPL_BLAS = 0, TFM_GEMM_IMPL_OWN = 1, TFM_GEMM_IMPL_AUTO = 2 };
int tfm_gemm_impl_get(void);
/* The GEMM tfm_gemm runs for one M x N x K product now: TFM_GEMM_IMPL_BLAS
 * or TFM_GEMM_IMPL_OWN (AUTO resolved). */
int tfm_gemm_impl_for(int M, int N, int K);
int tfm_gemm_impl_set(int impl);

#endif
