/*
 * gemm.c: the one GEMM entry point, with the CBLAS contract (row-major).
 *
 *   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C
 *
 * Built with OpenBLAS it calls cblas_sgemm / cblas_dgemm, or cblas_sgemv /
 * cblas_dgemv when C is a single row (M == 1); without BLAS it runs a
 * portable, cache-friendly loop parallelised over rows of C. beta == 0 never
 * reads C, so C may hold garbage (NaN) on entry, as with BLAS.
 *
 * Float GEMMs with M > 1 large enough to win (own_wins below: the linear
 * layers, not the small attention products) go to the library's own AVX-512
 * kernel (sgemm_avx512.c) instead, when the CPU has AVX-512 and TFM_GEMM
 * does not say otherwise: TFM_GEMM=blas keeps every GEMM on BLAS, =own sends
 * every one with M > 1 to the own kernel, =auto (the default) chooses per
 * shape. docs/performance.md has the figures. The double build (ops_f64.c)
 * always takes the BLAS or portable path.
 *
 * Decoding makes a cache of packed weights current (tfm_gemm_packs_*, in
 * sgemm_avx512.h): the own kernel's products whose op(B) lies in the model's
 * parameters then read a copy packed once instead of packing op(B) again on
 * every call (bit-identical results).
 */
#define _DEFAULT_SOURCE 1 /* madvise and MADV_HUGEPAGE (before any system header; ops_f64.c includes this file first) */
#include "ops/ops.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ops/sgemm_avx512.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef TFM_HAVE_CBLAS
#include <cblas.h>
#endif

#ifdef TFM_HAVE_CBLAS
#define TFM_GEMM_HAVE_BLAS 1
#else
#define TFM_GEMM_HAVE_BLAS 0
#endif

#ifndef TFM_OPS_F64
/* The float GEMM in use (TFM_GEMM_IMPL_*): read from TFM_GEMM on first use
 * (blas, own or auto; unset = auto), or set by tfm_gemm_impl_set. A relaxed
 * atomic: every thread reads the same value once it is set, and racing first
 * readers compute the same one. */
static int gemm_impl = -1;

static int gemm_impl_from_env(void) {
    const char *env = getenv("TFM_GEMM");
    int own = tfm_sgemm_avx512_available();
    if (!env || !*env || !strcmp(env, "auto")) return own ? TFM_GEMM_IMPL_AUTO : TFM_GEMM_IMPL_BLAS;
    if (!strcmp(env, "blas")) return TFM_GEMM_IMPL_BLAS;
    if (!strcmp(env, "own")) {
        if (!own) fprintf(stderr, "transformer: TFM_GEMM=own needs a CPU with AVX-512; using BLAS\n");
        return own ? TFM_GEMM_IMPL_OWN : TFM_GEMM_IMPL_BLAS;
    }
    fprintf(stderr, "transformer: TFM_GEMM=%s: expected blas, own or auto; using auto\n", env);
    return own ? TFM_GEMM_IMPL_AUTO : TFM_GEMM_IMPL_BLAS;
}

/* AUTO's choice for one product (M > 1). The own kernel packs both operands
 * and computes whole 12 x 32 tiles; OpenBLAS 0.3.21 has unpacked kernels for
 * small products. Measured single-threaded on the project's machine (Zen 4;
 * docs/performance.md): OpenBLAS wins below about 2^20 multiply-adds (24x24x64,
 * the attention products of a training step: 77 vs 51 GFLOP/s) and at K = 64
 * (64x512x64: 90 vs 84); the own kernel wins from 128^3 up (1.03-1.07x) and at
 * every linear-layer shape of the training step. Without BLAS the own kernel
 * always beats the portable loop. */
static int own_wins(int M, int N, int K) {
    if (!TFM_GEMM_HAVE_BLAS) return 1;
    return K >= 128 && (double)M * N * K >= 1048576.0;
}

int tfm_gemm_impl_get(void) {
    int v = __atomic_load_n(&gemm_impl, __ATOMIC_RELAXED);
    if (v < 0) {
        v = gemm_impl_from_env();
        __atomic_store_n(&gemm_impl, v, __ATOMIC_RELAXED);
    }
    return v;
}

int tfm_gemm_impl_for(int M, int N, int K) {
    int impl = tfm_gemm_impl_get();
    if (M <= 1 && TFM_GEMM_HAVE_BLAS) return TFM_GEMM_IMPL_BLAS;
    if (impl == TFM_GEMM_IMPL_AUTO) return own_wins(M, N, K) ? TFM_GEMM_IMPL_OWN : TFM_GEMM_IMPL_BLAS;
    return impl;
}

int tfm_gemm_impl_set(int impl) {
    int old = tfm_gemm_impl_get();
    if (impl != TFM_GEMM_IMPL_BLAS && !tfm_sgemm_avx512_available()) impl = TFM_GEMM_IMPL_BLAS;
    __atomic_store_n(&gemm_impl, impl, __ATOMIC_RELAXED);
    return old;
}

/* ------------------------------------------------------- packed weights */

/* One packed op(B), keyed by what determines its content and layout. */
typedef struct pack_entry {
    const float *B;
    int trans_b, K, N, ldb;
    float *packed; /* NULL: allocation failed once; the product runs unpacked */
} pack_entry;

struct tfm_gemm_packs {
    uintptr_t lo, hi;    /* the constant range, bytes [lo, hi) */
    pack_entry *e;
    int n, cap;
    long hits, misses;
    size_t bytes;
};

static _Thread_local tfm_gemm_packs *packs_current;

tfm_gemm_packs *tfm_gemm_packs_new(const float *lo, size_t n) {
    const char *env = getenv("TFM_GEMM_PACKED");
    if (!tfm_sgemm_avx512_available() || (env && !strcmp(env, "0")) || !lo) return NULL;
    tfm_gemm_packs *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->lo = (uintptr_t)lo;
    p->hi = (uintptr_t)(lo + n);
    return p;
}

void tfm_gemm_packs_free(tfm_gemm_packs *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) free(p->e[i].packed);
    free(p->e);
    if (packs_current == p) packs_current = NULL;
    free(p);
}

tfm_gemm_packs *tfm_gemm_packs_use(tfm_gemm_packs *p) {
    tfm_gemm_packs *old = packs_current;
    packs_current = p;
    return old;
}

void tfm_gemm_packs_stats(const tfm_gemm_packs *p, long *hits, long *misses, long *copies, size_t *bytes) {
    if (hits) *hits = p ? p->hits : 0;
    if (misses) *misses = p ? p->misses : 0;
    if (copies) *copies = p ? p->n : 0;
    if (bytes) *bytes = p ? p->bytes : 0;
}

/* The packed copy of op(B) from the calling thread's current cache, made on
 * first use; NULL when there is no cache, op(B) is outside its range, or no
 * memory for the copy. A linear search: a model has a few dozen weight
 * matrices, and every product that gets here is over 2^20 multiply-adds. */
static const float *packs_lookup(int trans_b, int K, int N, const float *B, int ldb) {
    tfm_gemm_packs *p = packs_current;
    if (!p) return NULL;
    size_t rows = trans_b ? (size_t)N : (size_t)K, cols = trans_b ? (size_t)K : (size_t)N;
    uintptr_t b0 = (uintptr_t)B, b1 = (uintptr_t)(B + (rows - 1) * (size_t)ldb + cols);
    if (b0 < p->lo || b1 > p->hi) return NULL;
    for (int i = 0; i < p->n; i++) {
        pack_entry *e = &p->e[i];
        if (e->B == B && e->trans_b == trans_b && e->K == K && e->N == N && e->ldb == ldb) {
            if (e->packed) p->hits++;
            return e->packed;
        }
    }
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        pack_entry *e = realloc(p->e, (size_t)cap * sizeof *e);
        if (!e) return NULL;
        p->e = e;
        p->cap = cap;
    }
    /* 2 MiB-aligned and advised onto huge pages: a decoding step streams
     * every copy from memory, and a 4 KiB page holds only 1024 floats */
    size_t bytes = tfm_sgemm_avx512_packed_floats(K, N) * sizeof(float), align = (size_t)2 << 20;
    if (bytes < align) align = 64;
    float *packed = aligned_alloc(align, (bytes + align - 1) / align * align);
#ifdef MADV_HUGEPAGE
    if (packed && align > 64) madvise(packed, (bytes + align - 1) / align * align, MADV_HUGEPAGE);
#endif
    p->e[p->n++] = (pack_entry){.B = B, .trans_b = trans_b, .K = K, .N = N, .ldb = ldb, .packed = packed};
    if (!packed) return NULL;
    tfm_sgemm_avx512_pack_b(trans_b, K, N, B, ldb, packed);
    p->misses++;
    p->bytes += bytes;
    return packed;
}
#endif

/* Below about this many multiply-adds a parallel region costs more than it
 * saves (the fallback loop only). */
#ifndef GEMM_PAR_MIN
#define GEMM_PAR_MIN 65536
#endif

/* Below this many elements of C (or of A, for its column sums) the bias
 * loops run on one thread. */
#ifndef BIAS_PAR_MIN
#define BIAS_PAR_MIN 16384
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
#ifndef TFM_OPS_F64
    /* M == 1 stays on gemv below (it streams op(B) once; a packed GEMM would
     * copy it first). */
    if (tfm_gemm_impl_for(M, N, K) == TFM_GEMM_IMPL_OWN) {
        const float *packed = packs_lookup(trans_b, K, N, B, ldb);
        if (packed) tfm_sgemm_avx512_packed(trans_a, M, N, K, alpha, A, lda, packed, beta, C, ldc);
        else tfm_sgemm_avx512(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
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

void OPFN(tfm_gemm_nt_bias)(int M, int N, int K, const real *A, int lda, const real *B, int ldb,
                            const real *bias, real *C, int ldc) {
#ifndef TFM_OPS_F64
    if (bias && M > 0 && N > 0 && tfm_gemm_impl_for(M, N, K) == TFM_GEMM_IMPL_OWN) {
        tfm_sgemm_avx512_bias(1, M, N, K, A, lda, B, ldb, packs_lookup(1, K, N, B, ldb), bias, C, ldc);
        return;
    }
#endif
    OPFN(tfm_gemm)(0, 1, M, N, K, 1, A, lda, B, ldb, 0, C, ldc);
    if (!bias) return;
#pragma omp parallel for schedule(static) if((double)M * N >= BIAS_PAR_MIN)
    for (int i = 0; i < M; i++) {
        real *row = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) row[j] += bias[j];
    }
}

void OPFN(tfm_gemm_tn_sums)(int M, int N, int K, const real *A, int lda, const real *B, int ldb, real beta,
                            real *C, int ldc, real *sums) {
#ifndef TFM_OPS_F64
    if (C && sums && M > 0 && N > 0 && K > 0 && tfm_gemm_impl_for(M, N, K) == TFM_GEMM_IMPL_OWN) {
        tfm_sgemm_avx512_tn_sums(M, N, K, A, lda, B, ldb, beta, C, ldc, sums);
        return;
    }
#endif
    if (C) OPFN(tfm_gemm)(1, 0, M, N, K, 1, A, lda, B, ldb, beta, C, ldc);
    if (!sums) return;
    /* Threads own column blocks of A and walk its rows in order: contiguous
     * reads, and the same sum order at any thread count. */
#pragma omp parallel if((double)K * M >= BIAS_PAR_MIN)
    {
#ifdef _OPENMP
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
        int nt = 1, t = 0;
#endif
        int lo = (int)((long)M * t / nt), hi = (int)((long)M * (t + 1) / nt);
        for (int k = 0; k < K; k++) {
            const real *row = A + (size_t)k * lda;
            for (int i = lo; i < hi; i++) sums[i] += row[i];
        }
    }
}
