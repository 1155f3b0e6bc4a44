/*
 * test_sgemm_avx512.c: the library's own AVX-512 sgemm (src/ops/sgemm_avx512.c)
 * against a naive double-precision reference; skipped on a CPU without AVX-512.
 *
 * Error bound, per element of C (rigorous, first order in u = 2^-24):
 *   |C - Cref| <= (kc + 2 * nb + 4) * u * (|alpha| sum_k |a_ik b_kj| + |beta c_ij|)
 * where kc = min(K, TFM_SGEMM_AVX512_KC) and nb = ceil(K / TFM_SGEMM_AVX512_KC):
 * the kernel sums each block of at most KC products with one FMA rounding
 * per product (<= kc u), then scales by alpha and adds to C once per block
 * (2 roundings per block), and the first block adds beta * C. Random inputs
 * in [-1, 1) see about sqrt(K) u (the worst ratio to u * S is printed); a
 * wrong index (a term dropped or taken twice, a wrong row) gives an error of
 * the size of one term or more, |a b| ~ S / K, which exceeds the bound by at
 * least 2x at every K tested (K <= 1536: bound 272 u S = 1.6e-5 S, one term
 * 6.5e-4 S), so the bound cannot hide an indexing bug.
 *
 * Cases:
 *   - every M, N, K in {1, 2, 3, 5, 7, 11, 12, 13, 16, 17, 24, 31, 32, 33,
 *     47, 64, 67} (edges of the 12 x 32 tile and the 16-wide packing; last
 *     row panels of 1-4, 5-8 and 9-12 rows, which take the 4-, 8- and
 *     12-row kernels), all four
 *     transposes, alpha / beta cycling through (1, 0) with C full of NaN,
 *     (1, 1), (-0.5, 0.25), (2, -1), and leading dimensions either tight or
 *     padded by 1..5 elements; the padding of A, B and C holds NaN or a
 *     sentinel, and each matrix ends (or, every other case, starts) at a page
 *     boundary next to an inaccessible page, so a read past (before) a matrix
 *     faults and a read of padding shows as NaN; C's padding must be intact;
 *   - the model's shapes (NN 1536x256x1024, NT 1536x768x256, TN 768x256x1536
 *     with beta 1) and shapes that cross the KC and NC blocks and take each
 *     way of sharing the work between threads (blocks shared: TT
 *     300x1100x600, NN 67x531x517 padded; columns split: NT 5x2000x300; K
 *     split: TN 2x3x70000, TN 100x200x1300 beta 1, NT 37x45x3000 beta 0),
 *     each at 1, 2 and 3 threads;
 *   - K == 0 and alpha == 0 (C = beta C; beta 0 writes zeros over NaN);
 *   - calls from inside a parallel region (as attention makes them), one
 *     product per thread;
 *   - tfm_gemm with TFM_GEMM_IMPL_OWN against TFM_GEMM_IMPL_BLAS;
 *   - the pre-packed op(B) (tfm_sgemm_avx512_pack_b + _packed): M in {1, 4,
 *     13, 64, 256}, odd N and K that cross the KC and NC blocks, both
 *     transposes of A and B, the alpha / beta cases, padded leading
 *     dimensions, at 1, 2 and 3 threads (every way of sharing the work):
 *     within the bound of the reference and bit-identical to the unpacked
 *     kernel (the same kernel calls in the same order); the packed copy sits
 *     against a guard page;
 *   - the weight gradient with its bias gradient (tfm_sgemm_avx512_tn_sums:
 *     column sums of A taken while packing it) at every way of sharing the
 *     work, each sum against the double sum;
 *   - the bias epilogue (tfm_sgemm_avx512_bias, a linear layer's forward):
 *     edges, each way of sharing the work (a K split must add the bias
 *     once), K == 0, packed and unpacked op(B) bit-identical, at 1..3 threads;
 *   - the packed-weight cache of tfm_gemm (tfm_gemm_packs_*): nothing happens
 *     without a current cache; a miss packs, a repeat hits, a different
 *     pointer, N or ldb misses, a matrix outside (or reaching past) the range
 *     is not cached; results bit-identical to the unpacked kernel; use
 *     returns the previous cache; free releases the copies (the sanitizer
 *     build checks for leaks); TFM_GEMM_PACKED=0 gives no cache.
 */
#define _DEFAULT_SOURCE 1 /* MAP_ANONYMOUS */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/rng.h"
#include "ops/ops.h"
#include "ops/sgemm_avx512.h"
#include "test_util.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define U 0x1p-24
#define SENTINEL 12345.0f

static tfm_rng g_rng;
static double g_worst_ratio; /* worst |C - Cref| / (u * S) seen */

/* A float matrix of n elements at an edge of its mapping: the page after
 * its last element (guard_after) or before its first is inaccessible. */
typedef struct guarded {
    void *map;
    size_t map_len;
    float *p;
} guarded;

static guarded guarded_alloc(size_t n, int guard_after) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), bytes = (n ? n : 1) * sizeof(float);
    size_t data = (bytes + page - 1) / page * page;
    guarded g = {.map_len = data + page};
    g.map = mmap(NULL, g.map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g.map == MAP_FAILED) {
        fprintf(stderr, "mmap failed\n");
        exit(1);
    }
    char *base = g.map;
    if (guard_after) {
        mprotect(base + data, page, PROT_NONE);
        g.p = (float *)(base + data - bytes);
    } else {
        mprotect(base, page, PROT_NONE);
        g.p = (float *)(base + page);
    }
    return g;
}

static void guarded_free(guarded *g) { munmap(g->map, g->map_len); }

static float rnd(void) { return 2.0f * tfm_rng_next_uniform(&g_rng) - 1.0f; }

/* op(X)[r, c] for a row-major X with row stride ld */
static double at(const float *X, int trans, long r, long c, long ld) {
    return trans ? X[c * ld + r] : X[r * ld + c];
}

/* Checks C (after the call) against the double reference computed from A, B
 * and C0 (C before the call). Counts one pass or failure per call. */
static int check(const char *what, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, const float *C0, const float *C, int ldc) {
    long kc = K < TFM_SGEMM_AVX512_KC ? K : TFM_SGEMM_AVX512_KC;
    long nb = (K + TFM_SGEMM_AVX512_KC - 1) / TFM_SGEMM_AVX512_KC;
    double factor = (double)(kc + 2 * nb + 4) * U;
    double worst = 0, worst_ratio = 0;
    long bad_i = -1, bad_j = -1, pad_written = 0;
    for (long i = 0; i < M; i++) {
        for (long j = 0; j < N; j++) {
            double sum = 0, mag = 0;
            for (long k = 0; k < K; k++) {
                double p = at(A, ta, i, k, lda) * at(B, tb, k, j, ldb);
                sum += p;
                mag += fabs(p);
            }
            double c0 = beta == 0 ? 0 : C0[i * ldc + j];
            double ref = (double)alpha * sum + (double)beta * c0;
            double S = fabs((double)alpha) * mag + fabs((double)beta * c0);
            double err = fabs((double)C[i * ldc + j] - ref);
            double ratio = S > 0 ? err / (U * S) : (err > 0 ? INFINITY : 0);
            if (!(err <= factor * S)) { /* NaN fails too */
                if (bad_i < 0) bad_i = i, bad_j = j;
                worst = isnan(err) ? NAN : fmax(worst, err);
            }
            if (ratio > worst_ratio || isnan(ratio)) worst_ratio = ratio;
        }
        for (long j = N; j < ldc && i < M - 1; j++)
            if (memcmp(&C[i * ldc + j], &C0[i * ldc + j], sizeof(float))) pad_written++;
    }
    if (!isnan(worst_ratio) && worst_ratio > g_worst_ratio) g_worst_ratio = worst_ratio;
    CHECK(bad_i < 0, "%s %c%c M=%d N=%d K=%d alpha=%g beta=%g lda=%d ldb=%d ldc=%d: element (%ld, %ld) off, worst "
                     "error %g over a bound of %g u S",
          what, ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, beta, lda, ldb, ldc, bad_i, bad_j, worst,
          factor / U);
    CHECK(pad_written == 0, "%s %c%c M=%d N=%d K=%d: %ld elements of C's row padding written", what, ta ? 'T' : 'N',
          tb ? 'T' : 'N', M, N, K, pad_written);
    return bad_i < 0 && pad_written == 0;
}

/* One product of the given shape on guarded matrices with padded leading
 * dimensions (pad elements per row, holding NaN in A and B and SENTINEL in
 * C); C starts as NaN when beta == 0. */
static int run_case(const char *what, int ta, int tb, int M, int N, int K, float alpha, float beta, int pad,
                    int guard_after) {
    int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    /* The last row of each matrix stops at its last element: no padding past
     * the end, so the guard page sits right after the last element. */
    size_t na = (size_t)(a_rows - 1) * lda + a_cols, nbe = (size_t)(b_rows - 1) * ldb + b_cols,
           nc = (size_t)(M - 1) * ldc + N;
    guarded ga = guarded_alloc(na, guard_after), gb = guarded_alloc(nbe, guard_after),
            gc = guarded_alloc(nc, guard_after);
    float *A = ga.p, *B = gb.p, *C = gc.p, *C0 = malloc(nc * sizeof *C0);
    for (size_t e = 0; e < na; e++) A[e] = (long)(e % lda) < a_cols ? rnd() : NAN;
    for (size_t e = 0; e < nbe; e++) B[e] = (long)(e % ldb) < b_cols ? rnd() : NAN;
    for (size_t e = 0; e < nc; e++) C[e] = (long)(e % ldc) < N ? (beta == 0 ? NAN : rnd()) : SENTINEL;
    memcpy(C0, C, nc * sizeof *C);
    tfm_sgemm_avx512(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    int ok = check(what, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, C, ldc);
    free(C0);
    guarded_free(&ga), guarded_free(&gb), guarded_free(&gc);
    return ok;
}

static void small_cases(void) {
    static const int sizes[] = {1, 2, 3, 5, 7, 11, 12, 13, 16, 17, 24, 31, 32, 33, 47, 64, 67};
    static const float ab[4][2] = {{1, 0}, {1, 1}, {-0.5f, 0.25f}, {2, -1}};
    int ns = (int)(sizeof sizes / sizeof *sizes), failures = 0;
    long n = 0;
    for (int t = 0; t < 4; t++)
        for (int im = 0; im < ns; im++)
            for (int in = 0; in < ns; in++)
                for (int ik = 0; ik < ns; ik++, n++) {
                    const float *c = ab[n % 4];
                    int pad = (n / 4) % 3 == 0 ? 0 : 1 + (int)(n % 5);
                    if (!run_case("small", t >> 1, t & 1, sizes[im], sizes[in], sizes[ik], c[0], c[1], pad,
                                  (int)(n & 1)) &&
                        ++failures >= 10) {
                        fprintf(stderr, "small cases: stopping after 10 failures\n");
                        return;
                    }
                }
    printf("small cases: %ld products (4 transposes x %d^3 sizes)\n", n, ns);
}

static void set_threads(int t) {
#ifdef _OPENMP
    omp_set_num_threads(t);
#else
    (void)t;
#endif
}

/* set_threads(t), returning the thread count to restore afterwards */
static int set_threads_saving(int t) {
#ifdef _OPENMP
    int saved = omp_get_max_threads();
#else
    int saved = 1;
#endif
    set_threads(t);
    return saved;
}

static void large_cases(void) {
    static const struct {
        int ta, tb, M, N, K;
        float alpha, beta;
        int pad;
    } cs[] = {
        {0, 0, 1536, 256, 1024, 1, 0, 0},   /* linear1.dx (small config) */
        {0, 1, 1536, 768, 256, 1, 0, 0},    /* in_proj.fwd */
        {1, 0, 768, 256, 1536, 1, 1, 0},    /* in_proj.dw, accumulated */
        {1, 1, 300, 1100, 600, 0.5f, -0.75f, 0}, /* 3 NC blocks, 3 KC blocks */
        {0, 1, 5, 2000, 300, 1, 0, 0},      /* few rows: the threads split the columns */
        {0, 0, 67, 531, 517, 1, 1, 3},      /* edges everywhere, padded */
        {1, 0, 2, 3, 70000, 1, 0, 0},       /* many KC blocks; the threads split K */
        {1, 0, 100, 200, 1300, 0.5f, 1, 2}, /* split K, uneven blocks (6 of 217) */
        {0, 1, 37, 45, 3000, 1, 0, 1},      /* split K over C full of NaN */
    };
    int max_t = 3;
#ifdef _OPENMP
    int saved = omp_get_max_threads();
#endif
    for (int t = 1; t <= max_t; t++) {
        set_threads(t);
        for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
            char what[32];
            snprintf(what, sizeof what, "large, %d threads", t);
            run_case(what, cs[i].ta, cs[i].tb, cs[i].M, cs[i].N, cs[i].K, cs[i].alpha, cs[i].beta, cs[i].pad,
                     (int)(i & 1));
        }
    }
#ifdef _OPENMP
    set_threads(saved);
#endif
    printf("large cases at 1..%d threads done\n", max_t);
}

/* K == 0 or alpha == 0: C = beta * C, and beta == 0 writes zeros over NaN. */
static void degenerate_cases(void) {
    float C[6], A[1] = {NAN}, B[1] = {NAN};
    for (int i = 0; i < 6; i++) C[i] = NAN;
    tfm_sgemm_avx512(0, 0, 2, 3, 0, 1, A, 1, B, 3, 0, C, 3);
    int zeros = 1;
    for (int i = 0; i < 6; i++) zeros &= C[i] == 0;
    CHECK(zeros, "K == 0, beta == 0 must give zeros over NaN");
    for (int i = 0; i < 6; i++) C[i] = (float)i;
    float X[6] = {1, 2, 3, 4, 5, 6};
    tfm_sgemm_avx512(0, 0, 2, 3, 2, 0, X, 2, X, 3, 2, C, 3);
    int scaled = 1;
    for (int i = 0; i < 6; i++) scaled &= C[i] == 2.0f * i;
    CHECK(scaled, "alpha == 0 must give C = beta C");
}

/* Products called from inside a parallel region run single-threaded, each
 * thread with its own packing buffer. */
static void nested_cases(void) {
#ifdef _OPENMP
    enum { T = 3, M = 100, N = 90, K = 80 };
    float *A = malloc(sizeof(float) * T * M * K), *B = malloc(sizeof(float) * T * K * N),
          *C = malloc(sizeof(float) * T * M * N), *C0 = malloc(sizeof(float) * M * N);
    for (long i = 0; i < (long)T * M * K; i++) A[i] = rnd();
    for (long i = 0; i < (long)T * K * N; i++) B[i] = rnd();
    for (int rep = 0; rep < 20; rep++) {
#pragma omp parallel for num_threads(T) schedule(static, 1)
        for (int t = 0; t < T; t++) {
            int n = N - 7 * t; /* different shapes, different buffer sizes */
            tfm_sgemm_avx512(0, t & 1, M, n, K, 1, A + (size_t)t * M * K, K, B + (size_t)t * K * N,
                             (t & 1) ? K : n, 0, C + (size_t)t * M * N, n);
        }
    }
    for (int t = 0; t < T; t++) {
        int n = N - 7 * t;
        for (int i = 0; i < M * n; i++) C0[i] = NAN;
        check("nested", 0, t & 1, M, n, K, 1, A + (size_t)t * M * K, K, B + (size_t)t * K * N, (t & 1) ? K : n,
              0, C0, C + (size_t)t * M * N, n);
    }
    free(A), free(B), free(C), free(C0);
    printf("nested calls done\n");
#endif
}

/* tfm_gemm's dispatch: OWN and BLAS give the same product within the bound. */
static void dispatch_case(void) {
    enum { M = 70, N = 50, K = 300 };
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K), *C1 = malloc(sizeof(float) * M * N),
          *C2 = malloc(sizeof(float) * M * N), *C0 = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) A[i] = rnd();
    for (int i = 0; i < N * K; i++) B[i] = rnd();
    for (int i = 0; i < M * N; i++) C0[i] = NAN;
    int saved = tfm_gemm_impl_set(TFM_GEMM_IMPL_OWN);
    CHECK(tfm_gemm_impl_get() == TFM_GEMM_IMPL_OWN, "TFM_GEMM_IMPL_OWN not selected on an AVX-512 CPU");
    tfm_gemm(0, 1, M, N, K, 1, A, K, B, K, 0, C1, N);
    tfm_gemm_impl_set(TFM_GEMM_IMPL_BLAS);
    tfm_gemm(0, 1, M, N, K, 1, A, K, B, K, 0, C2, N);
    tfm_gemm_impl_set(saved);
    check("tfm_gemm own", 0, 1, M, N, K, 1, A, K, B, K, 0, C0, C1, N);
    check("tfm_gemm blas", 0, 1, M, N, K, 1, A, K, B, K, 0, C0, C2, N);
    free(A), free(B), free(C1), free(C2), free(C0);
}

/* One product through the pre-packed op(B) and through the unpacked kernel,
 * from the same C0: bit-identical, and within the bound of the reference. */
static int run_packed_case(int ta, int tb, int M, int N, int K, float alpha, float beta, int pad, int guard_after) {
    int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    size_t na = (size_t)(a_rows - 1) * lda + a_cols, nbe = (size_t)(b_rows - 1) * ldb + b_cols,
           nc = (size_t)(M - 1) * ldc + N, np = tfm_sgemm_avx512_packed_floats(K, N);
    /* the packed copy ends at a page boundary: a multiple of 32 floats, so
     * it stays 64-byte aligned */
    guarded ga = guarded_alloc(na, guard_after), gb = guarded_alloc(nbe, guard_after), gp = guarded_alloc(np, 1);
    float *A = ga.p, *B = gb.p, *P = gp.p, *C = malloc(nc * sizeof *C), *C0 = malloc(nc * sizeof *C0),
          *C1 = malloc(nc * sizeof *C1);
    CHECK(((uintptr_t)P & 63) == 0, "packed copy not 64-byte aligned");
    for (size_t e = 0; e < na; e++) A[e] = (long)(e % lda) < a_cols ? rnd() : NAN;
    for (size_t e = 0; e < nbe; e++) B[e] = (long)(e % ldb) < b_cols ? rnd() : NAN;
    for (size_t e = 0; e < nc; e++) C0[e] = (long)(e % ldc) < N ? (beta == 0 ? NAN : rnd()) : SENTINEL;
    for (size_t e = 0; e < np; e++) P[e] = NAN;
    tfm_sgemm_avx512_pack_b(tb, K, N, B, ldb, P);
    memcpy(C, C0, nc * sizeof *C);
    memcpy(C1, C0, nc * sizeof *C);
    tfm_sgemm_avx512_packed(ta, M, N, K, alpha, A, lda, P, beta, C, ldc);
    tfm_sgemm_avx512(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C1, ldc);
    int same = memcmp(C, C1, nc * sizeof *C) == 0;
    CHECK(same, "packed %c%c M=%d N=%d K=%d alpha=%g beta=%g: not bit-identical to the unpacked kernel",
          ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, beta);
    int ok = check("packed", ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, C, ldc) && same;
    free(C), free(C0), free(C1);
    guarded_free(&ga), guarded_free(&gb), guarded_free(&gp);
    return ok;
}

static void packed_cases(void) {
    static const int Ms[] = {1, 4, 13, 64, 256};
    static const int NKs[][2] = {{1, 1}, {33, 17}, {95, 257}, {531, 300}, {1100, 517}, {45, 1300}, {2000, 130}};
    static const float ab[4][2] = {{1, 0}, {1, 1}, {-0.5f, 0.25f}, {2, -1}};
    int max_t = 3;
#ifdef _OPENMP
    int saved = omp_get_max_threads();
#endif
    long n = 0;
    int failures = 0;
    for (int t = 1; t <= max_t; t++) {
        set_threads(t);
        for (size_t im = 0; im < sizeof Ms / sizeof *Ms; im++)
            for (size_t is = 0; is < sizeof NKs / sizeof *NKs; is++)
                for (int tr = 0; tr < 4; tr++, n++) {
                    const float *c = ab[n % 4];
                    int M = Ms[im], N = NKs[is][0], K = NKs[is][1];
                    if ((double)M * N * K > 4e7 && tr != 1) continue; /* the reference's time: NT, the linear */
                    if (!run_packed_case(tr >> 1, tr & 1, M, N, K, c[0], c[1], (int)(n % 3), (int)(n & 1)) &&
                        ++failures >= 10) {
                        fprintf(stderr, "packed cases: stopping after 10 failures\n");
                        goto out;
                    }
                }
    }
out:
#ifdef _OPENMP
    set_threads(saved);
#endif
    printf("packed cases at 1..%d threads done\n", max_t);
}

/* tfm_sgemm_avx512_bias: C = A op(B) + bias (the bias added with the first
 * K block), checked as beta = 1 against C0 whose rows are the bias (the
 * bound covers it); C starts as NaN (never read), its padding must stay
 * intact, and the pre-packed op(B) gives the same bits. */
static int run_bias_case(int tb, int M, int N, int K, int pad) {
    int b_rows = tb ? N : K, b_cols = tb ? K : N, lda = K + pad, ldb = b_cols + pad, ldc = N + pad;
    size_t na = (size_t)(M - 1) * lda + (K > 0 ? K : 1), nbe = (size_t)(b_rows > 0 ? b_rows - 1 : 0) * ldb + b_cols,
           nc = (size_t)(M - 1) * ldc + N, np = tfm_sgemm_avx512_packed_floats(K, N);
    float *A = malloc((na + 1) * sizeof *A), *B = malloc((nbe + 1) * sizeof *B), *bias = malloc(N * sizeof *bias);
    float *C0 = malloc(nc * sizeof *C0), *C = malloc(nc * sizeof *C), *C1 = malloc(nc * sizeof *C1);
    float *P = np ? aligned_alloc(64, (np * sizeof *P + 63) / 64 * 64) : NULL;
    for (size_t e = 0; e < na; e++) A[e] = (long)(e % lda) < K ? rnd() : NAN;
    for (size_t e = 0; e < nbe; e++) B[e] = (long)(e % ldb) < b_cols ? rnd() : NAN;
    for (int j = 0; j < N; j++) bias[j] = 4 * rnd();
    for (size_t e = 0; e < nc; e++) {
        C0[e] = (long)(e % ldc) < N ? bias[e % ldc] : SENTINEL;
        C[e] = C1[e] = (long)(e % ldc) < N ? NAN : SENTINEL;
    }
    if (P) tfm_sgemm_avx512_pack_b(tb, K, N, B, ldb, P);
    tfm_sgemm_avx512_bias(tb, M, N, K, A, lda, B, ldb, NULL, bias, C, ldc);
    tfm_sgemm_avx512_bias(tb, M, N, K, A, lda, B, ldb, P, bias, C1, ldc);
    int same = memcmp(C, C1, nc * sizeof *C) == 0;
    CHECK(same, "bias %c M=%d N=%d K=%d: packed and unpacked differ", tb ? 'T' : 'N', M, N, K);
    int ok = check("bias", 0, tb, M, N, K, 1, A, lda, B, ldb, 1, C0, C, ldc) && same;
    free(A), free(B), free(bias), free(C0), free(C), free(C1), free(P);
    return ok;
}

static void bias_cases(void) {
    /* tile and packing edges; blocks shared; columns split (wide N); K split
     * (small C, long K: only thread 0 may add the bias); K == 0 (C = bias) */
    static const int MNK[][3] = {{1, 1, 1}, {5, 17, 3}, {13, 33, 64}, {12, 32, 256}, {67, 531, 517},
                                 {5, 2000, 300}, {37, 45, 3000}, {100, 200, 1300}, {3, 7, 0}, {256, 1536, 512}};
    int failures = 0;
    for (int t = 1; t <= 3; t++) {
        int saved = set_threads_saving(t);
        for (size_t i = 0; i < sizeof MNK / sizeof *MNK; i++)
            for (int tb = 0; tb < 2; tb++)
                failures += !run_bias_case(tb, MNK[i][0], MNK[i][1], MNK[i][2], (int)(i % 3));
        set_threads(saved);
    }
    printf("bias cases at 1..3 threads: %d failed\n", failures);
}

/* tfm_sgemm_avx512_tn_sums: C = A^T B + beta C (a weight gradient) and
 * sums += the column sums of A (its bias gradient, summed while A is
 * packed): C within the bound, every sum within (K + 2) u sum_k |a| of the
 * double sum plus its start value, so a row counted twice or missed fails. */
static int run_sums_case(int M, int N, int K, int pad) {
    int lda = M + pad, ldb = N + pad, ldc = N + pad;
    size_t na = (size_t)(K - 1) * lda + M, nbe = (size_t)(K - 1) * ldb + N, nc = (size_t)(M - 1) * ldc + N;
    float *A = malloc(na * sizeof *A), *B = malloc(nbe * sizeof *B), *C0 = malloc(nc * sizeof *C0),
          *C = malloc(nc * sizeof *C), *sums = malloc(M * sizeof *sums), *start = malloc(M * sizeof *start);
    for (size_t e = 0; e < na; e++) A[e] = (long)(e % lda) < M ? rnd() : NAN;
    for (size_t e = 0; e < nbe; e++) B[e] = (long)(e % ldb) < N ? rnd() : NAN;
    for (size_t e = 0; e < nc; e++) C0[e] = C[e] = (long)(e % ldc) < N ? rnd() : SENTINEL;
    for (int i = 0; i < M; i++) sums[i] = start[i] = rnd();
    tfm_sgemm_avx512_tn_sums(M, N, K, A, lda, B, ldb, 1, C, ldc, sums);
    int ok = check("tn_sums", 1, 0, M, N, K, 1, A, lda, B, ldb, 1, C0, C, ldc);
    double worst = 0;
    for (int i = 0; i < M; i++) {
        double ref = start[i], mag = fabs(start[i]);
        for (int k = 0; k < K; k++) ref += A[(size_t)k * lda + i], mag += fabs(A[(size_t)k * lda + i]);
        double r = fabs(sums[i] - ref) / ((K + 2) * U * mag);
        if (r > worst) worst = r;
    }
    CHECK(worst <= 1, "tn_sums M=%d N=%d K=%d: a column sum is off by %.1f x its bound", M, N, K, worst);
    free(A), free(B), free(C0), free(C), free(sums), free(start);
    return ok && worst <= 1;
}

static void sums_cases(void) {
    /* K split (one and two N blocks), own columns, blocks shared with a
     * thread's run starting inside a row panel, edges */
    static const int MNK[][3] = {{37, 45, 3000}, {100, 200, 1300}, {256, 1024, 1536}, {5, 2000, 300},
                                 {700, 300, 200}, {13, 17, 5}, {1, 1, 1}, {768, 256, 1536}};
    int failures = 0;
    for (int t = 1; t <= 3; t++) {
        int saved = set_threads_saving(t);
        for (size_t i = 0; i < sizeof MNK / sizeof *MNK; i++)
            failures += !run_sums_case(MNK[i][0], MNK[i][1], MNK[i][2], (int)(i % 3));
        set_threads(saved);
    }
    printf("tn_sums cases at 1..3 threads: %d failed\n", failures);
}

/* tfm_gemm's packed-weight cache. */
static void cache_cases(void) {
    enum { M = 40, N = 70, K = 300, NW = 4 * N * K };
    float *W = malloc(sizeof(float) * NW), *A = malloc(sizeof(float) * M * K), *C = malloc(sizeof(float) * M * N),
          *C1 = malloc(sizeof(float) * M * N), *Out = malloc(sizeof(float) * N * K);
    for (int i = 0; i < NW; i++) W[i] = rnd();
    for (int i = 0; i < M * K; i++) A[i] = rnd();
    for (int i = 0; i < N * K; i++) Out[i] = rnd();
    int saved = tfm_gemm_impl_set(TFM_GEMM_IMPL_OWN);
    long hits, misses, copies;
    size_t bytes, one = tfm_sgemm_avx512_packed_floats(K, N) * sizeof(float);
#define STATS(h, m, c)                                                                                               \
    do {                                                                                                             \
        tfm_gemm_packs_stats(p, &hits, &misses, &copies, &bytes);                                                    \
        CHECK(hits == (h) && misses == (m) && copies == (c), "cache line %d: hits %ld misses %ld copies %ld, "        \
              "expected %d %d %d", __LINE__, hits, misses, copies, (h), (m), (c));                                  \
    } while (0)
/* tfm_gemm(trans_b, B, ldb) against the unpacked kernel, bit for bit (N x K or K x N per trans_b) */
#define SAME(tb, Bp, ldb_)                                                                                           \
    do {                                                                                                             \
        tfm_gemm(0, tb, M, N, K, 1, A, K, Bp, ldb_, 0, C, N);                                                         \
        tfm_sgemm_avx512(0, tb, M, N, K, 1, A, K, Bp, ldb_, 0, C1, N);                                                \
        CHECK(!memcmp(C, C1, sizeof(float) * M * N), "cache line %d: tfm_gemm differs from the unpacked kernel",   \
              __LINE__);                                                                                             \
    } while (0)
    tfm_gemm_packs *p = tfm_gemm_packs_new(W, NW);
    CHECK(p != NULL, "tfm_gemm_packs_new gave NULL on an AVX-512 CPU");
    if (!p) goto done;
    SAME(1, W, K); /* not current: not consulted */
    STATS(0, 0, 0);
    CHECK(tfm_gemm_packs_use(p) == NULL, "use must return the previous cache (none)");
    SAME(1, W, K); /* miss: packs */
    STATS(0, 1, 1);
    SAME(1, W, K); /* hit */
    SAME(1, W, K);
    STATS(2, 1, 1);
    SAME(1, W + N * K, K); /* another pointer in the range */
    STATS(2, 2, 2);
    SAME(0, W, N); /* the same pointer as op(B) = B: another key */
    STATS(2, 3, 3);
    SAME(1, W, K + 1); /* another ldb (the rows overlap: still inside the range) */
    STATS(2, 4, 4);
    SAME(1, Out, K); /* outside the range */
    SAME(1, W + NW - N * K + 1, K); /* reaches one float past the end of the range */
    STATS(2, 4, 4);
    SAME(1, W + NW - N * K, K); /* ends exactly at the end: inside */
    STATS(2, 5, 5);
    tfm_gemm(0, 1, 1, N, K, 1, A, K, W, K, 0, C, N); /* M == 1 stays on gemv (BLAS builds) */
    tfm_gemm_packs_stats(p, &hits, &misses, &copies, &bytes);
    CHECK(bytes == 5 * one, "cache bytes %zu, expected 5 copies of %zu", bytes, one); /* op(B) is K x N in all */
    CHECK(tfm_gemm_packs_use(NULL) == p, "use must return the previous cache");
    SAME(1, W, K); /* not current any more */
    STATS(2, 5, 5);
    tfm_gemm_packs_use(p);
    tfm_gemm_packs_free(p); /* frees the copies and stops being current */
    p = NULL;
    CHECK(tfm_gemm_packs_use(NULL) == NULL, "a freed cache must not stay current");
    SAME(1, W, K);
    STATS(0, 0, 0);
    setenv("TFM_GEMM_PACKED", "0", 1);
    p = tfm_gemm_packs_new(W, NW);
    CHECK(p == NULL, "TFM_GEMM_PACKED=0 must give no cache");
    tfm_gemm_packs_free(p);
    unsetenv("TFM_GEMM_PACKED");
done:
#undef STATS
#undef SAME
    tfm_gemm_impl_set(saved);
    free(W), free(A), free(C), free(C1), free(Out);
    printf("packed-weight cache done\n");
}

int main(void) {
    if (!tfm_sgemm_avx512_available()) tfm_test_skip("this CPU (or build) has no AVX-512: the kernel is not used");
    tfm_rng_init(&g_rng, 20261122, 0);
    degenerate_cases();
    small_cases();
    large_cases();
    nested_cases();
    dispatch_case();
    packed_cases();
    bias_cases();
    sums_cases();
    cache_cases();
    printf("worst error seen: %.1f u S (bound: (kc + 2 nb + 4) u S)\n", g_worst_ratio);
    return tfm_test_finish();
}
