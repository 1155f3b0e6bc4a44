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

#include <stddef.h>

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

/* C[M, N] = A[M, K] op(B)[K, N] + bias[N] (added to every row): a linear
 * layer's forward with its bias added as the kernel stores the first K
 * block of each tile (one pass over C fewer than a GEMM and then the bias).
 * op(B) is read from `packed` (tfm_sgemm_avx512_pack_b with this trans_b, K
 * and N; B unused) when not NULL, else from B. The sum's rounding order is
 * (first K block + bias) + the later blocks. */
void tfm_sgemm_avx512_bias(int trans_b, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                           const float *packed, const float *bias, float *C, int ldc);

/* C[M, N] = A^T[M, K] B[K, N] + beta C (A stored [K, M], lda >= M) and
 * sums[M] += the row sums of A^T (sums[i] += sum_k A[k, i]): a linear
 * layer's weight gradient dW = dout^T in with its bias gradient, summed
 * while the packing reads dout. In a K split each thread sums its K range
 * and thread 0 adds the others' sums in thread order. */
void tfm_sgemm_avx512_tn_sums(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                              float *C, int ldc, float *sums);

/* Pre-packed op(B): a matrix used as op(B) in many products (a weight in
 * decoding) packed once, so that the products skip packing it.
 *
 * tfm_sgemm_avx512_packed_floats(K, N): the floats a packed op(B) [K, N]
 * takes: K x N rounded up to 32 columns (0 when K or N <= 0).
 *
 * tfm_sgemm_avx512_pack_b: writes op(B) [K, N] (op(B) = B when trans_b is
 * 0, B^T otherwise; ldb as for tfm_sgemm_avx512) to `packed` (64-byte
 * aligned, tfm_sgemm_avx512_packed_floats(K, N) floats) in the layout the
 * micro-kernel reads: K blocks of the driver's KC (balanced over K, as every
 * product with this K cuts them), each a row of panels of 32 columns, each
 * panel k-major, columns past N zero. Parallel like the GEMM.
 *
 * tfm_sgemm_avx512_packed: tfm_sgemm_avx512 with op(B) read from `packed`
 * (made by tfm_sgemm_avx512_pack_b with this K and N) instead of B: the same
 * blocks, threads and kernel calls minus the packing of B (and the barrier
 * that shares it), so C is bit-identical to tfm_sgemm_avx512's on the same
 * matrices at the same thread count. */
size_t tfm_sgemm_avx512_packed_floats(int K, int N);
void tfm_sgemm_avx512_pack_b(int trans_b, int K, int N, const float *B, int ldb, float *packed);
void tfm_sgemm_avx512_packed(int trans_a, int M, int N, int K, float alpha, const float *A, int lda,
                             const float *packed, float beta, float *C, int ldc);

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

/* Packed weights for tfm_gemm (src/ops/gemm.c): a cache of pre-packed op(B)
 * copies of matrices that lie in one range of constant memory (a model's
 * parameter buffer), for decoding, where every step multiplies by the same
 * weights. It is consulted only on the thread that made it current with
 * tfm_gemm_packs_use, and only for products that tfm_gemm sends to the own
 * kernel (tfm_gemm_impl_for: OWN) whose op(B) lies wholly inside the range:
 * the first such product packs op(B) (keyed by B, trans_b, K, N and ldb),
 * later ones read the copy. Results are bit-identical to the unpacked own
 * kernel's.
 *
 * Contract: while a cache exists, the memory of its range must not change
 * (stale copies would be used silently); the owner frees it before writing
 * there again. Memory: one copy per distinct op(B), the size of the weights
 * multiplied (a base model: ~240 MB), until tfm_gemm_packs_free. Out of
 * memory for a copy is not an error: that product runs unpacked.
 *
 * tfm_gemm_packs_new: a cache for [lo, lo + n floats); NULL when the own
 * kernel is not available or TFM_GEMM_PACKED=0 is set (a switch for A/B
 * measurements), or out of memory; every function here accepts NULL.
 * tfm_gemm_packs_use: makes `p` the calling thread's current cache (NULL:
 * none) and returns the previous one, to be restored. A cache must not be
 * current on two threads at once.
 * tfm_gemm_packs_stats: hits (products that read a copy), misses (products
 * that made one), copies and their bytes so far; any pointer may be NULL. */
typedef struct tfm_gemm_packs tfm_gemm_packs;
tfm_gemm_packs *tfm_gemm_packs_new(const float *lo, size_t n);
void tfm_gemm_packs_free(tfm_gemm_packs *p);
tfm_gemm_packs *tfm_gemm_packs_use(tfm_gemm_packs *p);
void tfm_gemm_packs_stats(const tfm_gemm_packs *p, long *hits, long *misses, long *copies, size_t *bytes);

#endif
