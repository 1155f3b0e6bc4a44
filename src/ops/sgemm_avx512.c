/*
 * sgemm_avx512.c: single-precision GEMM with AVX-512 for the CPU training
 * step (the CBLAS contract of tfm_gemm; see sgemm_avx512.h).
 *
 *   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C     (row-major)
 *
 * A Goto/BLIS-style GEMM. For each block of NC columns of C and KC of K:
 *   pack op(B)[KC, NC] into panels of NR = 32 columns, k-major (KC x NR);
 *   for each panel of MR = 12 rows of C:
 *     pack op(A)[MR, KC] (A: a copy of 12 row segments, [MR][KC]; A^T: a
 *     copy of 12-float pieces of kc rows, [KC][MR], 8 panels at a time);
 *     for each B panel: the micro-kernel C[MR, NR] (+)= A panel x B panel.
 * The micro-kernel keeps the 12 x 32 tile of C in 24 zmm registers: per k it
 * loads 2 vectors of the B panel and broadcasts 12 scalars of the A panel
 * into 24 FMAs (98% of the FMA peak on L1/L2-resident panels). The A panel
 * (12 KiB) stays in L1 while the B block (KC x NC, 512 KiB) streams from L2,
 * reused by every A panel. Neither operand is transposed while packing
 * except op(B) = B^T (x W^T, the forward of a linear layer), which is packed
 * once per block and amortised over all M rows.
 * Pre-packed op(B) (tfm_sgemm_avx512_pack_b, _packed): decoding multiplies
 * by the same weights at every step, so it packs each op(B) once, all its
 * blocks in the layout above, and the driver reads the panels from there
 * (src/ops/gemm.c keeps the copies for the decoder).
 * Threads (sg_body): they share each B block (one barrier per block, two
 * buffers), own column ranges (wide N), or own K ranges and add their sums
 * at the end (small C, long K: the weight gradients). While the kernel runs,
 * the data of the next packing step is prefetched into L2 (pf_cursor).
 * Edges: A panels are packed with zero rows and B panels with zero columns
 * past M and N, so the kernel always runs full tiles; it stores only the
 * rows < M and (masked) columns < N of C. Nothing reads outside a matrix's
 * elements: packing loads are masked to the elements that exist.
 *
 * Sizes are for the machine this project measures on (AMD EPYC, Zen 4: 32
 * KiB L1d and 1 MiB L2 per core; AVX-512 as 2 x 256-bit FMA per cycle, i.e.
 * one zmm FMA per cycle, 116 GFLOP/s per core at 3.6 GHz), and the training
 * step's shapes (M = tokens 1024-1536, N and K = 256-32000); see
 * docs/performance.md for the figures.
 *
 * The whole file is compiled for AVX-512 (the pragma below) while the rest
 * of the library is not: only tfm_sgemm_avx512_available(), compiled before
 * the pragma, runs on any CPU, and tfm_gemm calls tfm_sgemm_avx512 only when
 * it returns 1. Summation order: each C element is alpha * (sum over a KC
 * block, in k order) added block after block (with a K split: each thread's
 * blocks, then the threads' sums in thread order); the result differs from
 * OpenBLAS's in rounding only (tests/test_sgemm_avx512.c bounds it).
 */
#include "ops/sgemm_avx512.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* GCC on x86-64 only: the file relies on #pragma GCC target (as real.h's
 * clones rely on GCC's target_clones). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(TFM_NO_AVX512_GEMM)
#define TFM_SGEMM_AVX512_BUILT 1
#endif

#ifndef TFM_SGEMM_AVX512_BUILT

int tfm_sgemm_avx512_available(void) { return 0; }

void tfm_sgemm_avx512(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    (void)trans_a, (void)trans_b, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B;
    (void)ldb, (void)beta, (void)C, (void)ldc;
    fprintf(stderr, "tfm_sgemm_avx512: not built for this target\n");
    abort();
}

void tfm_sgemm_avx512_tn_sums(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                              float *C, int ldc, float *sums) {
    (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C, (void)ldc, (void)sums;
    fprintf(stderr, "tfm_sgemm_avx512_tn_sums: not built for this target\n");
    abort();
}

void tfm_sgemm_avx512_bias(int trans_b, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                           const float *packed, const float *bias, float *C, int ldc) {
    (void)trans_b, (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)packed, (void)bias;
    (void)C, (void)ldc;
    fprintf(stderr, "tfm_sgemm_avx512_bias: not built for this target\n");
    abort();
}

size_t tfm_sgemm_avx512_packed_floats(int K, int N) {
    (void)K, (void)N;
    return 0;
}

void tfm_sgemm_avx512_pack_b(int trans_b, int K, int N, const float *B, int ldb, float *packed) {
    (void)trans_b, (void)K, (void)N, (void)B, (void)ldb, (void)packed;
    fprintf(stderr, "tfm_sgemm_avx512_pack_b: not built for this target\n");
    abort();
}

void tfm_sgemm_avx512_packed(int trans_a, int M, int N, int K, float alpha, const float *A, int lda,
                             const float *packed, float beta, float *C, int ldc) {
    (void)trans_a, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)packed, (void)beta;
    (void)C, (void)ldc;
    fprintf(stderr, "tfm_sgemm_avx512_packed: not built for this target\n");
    abort();
}

#else

int tfm_sgemm_avx512_available(void) {
    static int cached = -1;
    if (cached < 0) {
        /* every extension the pragma below lets the compiler use (GCC's
         * checks include the OS's support for the zmm state) */
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#include <immintrin.h>

/* Register tile: MR rows x NR = 16 * NV columns of C in MR * NV = 24 zmm
 * accumulators; NV B vectors and one broadcast take 3 of the other 8. Both
 * fixed: pack_a_t_chunk stores 8 + 4 floats per k. */
#define SG_MR 12
#define SG_NV 2
#define SG_NR (16 * SG_NV)

/* KC: the A panel (MR x KC floats = 12 KiB) stays in L1 (32 KiB) beside the
 * B panel streaming through; NC: the packed B block (KC x NC floats =
 * 512 KiB) stays in L2 (1 MiB). Both are balanced over K and N (no thin
 * last block). KC 192..384 and NC 384..768 measured the same within noise. */
#define SG_KC TFM_SGEMM_AVX512_KC
#define SG_NC 512

/* Threads own column ranges (see sg_body) when each one's range holds at
 * least a full N block; else they share blocks. */
#define SG_SPLIT_N(M, N, K, nt) ((long)(N) >= (long)(nt) * SG_NC)

/* Threads own K ranges (see sg_body) when C is small (each extra thread
 * writes an M x N partial sum, added to C at the end) and K holds at least
 * two blocks per thread: the weight gradients (M x N = 256 x 256 .. 1024 x
 * 256, K = 1536 tokens), where sharing blocks cost a barrier per K block and
 * owning columns packed A once per thread. */
#define SG_SPLIT_K(M, N, K, nt) ((double)(M) * (N) <= 524288.0 && (long)(K) >= 2L * (nt) * SG_KC)

/* Below this many multiply-adds one thread does the whole product: a
 * parallel region and its barriers cost a few microseconds. */
#define SG_PAR_MIN (1L << 18)

/* Software prefetch distances: SG_PF_T floats ahead along the 16 rows of a
 * transposing pack, SG_PF_C rows ahead in a strided copy. A prefetch past
 * the end of a matrix is harmless (prefetches do not fault). */
#define SG_PF_T 64
#define SG_PF_C 8

/* Panels of op(A) = A^T packed at once (pack_a_t_chunk): 8 x 12 rows x KC
 * = 96 KiB per thread, in L2. */
#define SG_MC_T 8

/* ------------------------------------------------------------ micro-kernel */

/* C[mr, nr] = alpha * sum_k a[k, 0:MR] (x) b[k, 0:NR] + beta * C, for
 * kc >= 1. a: the packed A panel, element (r, k) at a[k * MR + r] (k-major,
 * a_rows == 0) or a[r * KC + k] (row-major, a_rows == 1): both strides are
 * constants, so every broadcast is one base register plus a displacement;
 * b: the packed B panel, kc x NR, 64-byte aligned; c: row stride ldc; mr <=
 * MR rows and nr <= NR columns are stored, the rest of the tile (zero
 * padding) is dropped. beta == 0 never reads C. */
static inline __attribute__((always_inline)) void kernel_body(long kc, const float *restrict a,
                                                               const float *restrict b, float *restrict c,
                                                               long ldc, float alpha, float beta, int mr, int nr,
                                                               const float *bias, const int a_rows, const int R) {
    /* R (a constant: 12, 8 or 4) rows computed; mr <= R of them stored */
    __m512 acc[SG_MR][SG_NV];
#pragma GCC unroll 32
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < SG_NV; v++) acc[r][v] = _mm512_setzero_ps();
    for (int r = 0; r < R && r < mr; r++) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + SG_NR - 1), _MM_HINT_T0);
    }
    for (long k = 0; k < kc; k++) {
        __m512 bv[SG_NV];
#pragma GCC unroll 4
        for (int v = 0; v < SG_NV; v++) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 32
        for (int r = 0; r < R; r++) {
            __m512 av = _mm512_set1_ps(a_rows ? a[r * SG_KC] : a[r]);
#pragma GCC unroll 4
            for (int v = 0; v < SG_NV; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
        a += a_rows ? 1 : SG_MR;
        b += SG_NR;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta), vbias[SG_NV];
    __mmask16 mask[SG_NV];
    for (int v = 0; v < SG_NV; v++) {
        int left = nr - 16 * v;
        mask[v] = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
        vbias[v] = bias ? _mm512_maskz_loadu_ps(mask[v], bias + 16 * v) : _mm512_setzero_ps();
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; r++) {
        if (r >= mr) break;
        float *cr = c + r * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < SG_NV; v++) {
            __m512 x = alpha == 1.0f ? acc[r][v] : _mm512_mul_ps(acc[r][v], va);
            if (bias) x = _mm512_add_ps(x, vbias[v]);
            if (nr == SG_NR) {
                if (beta != 0.0f) x = _mm512_fmadd_ps(_mm512_loadu_ps(cr + 16 * v), vb, x);
                _mm512_storeu_ps(cr + 16 * v, x);
            } else {
                if (beta != 0.0f) x = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask[v], cr + 16 * v), vb, x);
                _mm512_mask_storeu_ps(cr + 16 * v, mask[v], x);
            }
        }
    }
}

/* The kernels: A panel layout (k-major for op(A) = A^T, row-major for A) x
 * rows computed. A tile with few real rows (the last row panel of M = 256
 * or 64, a decoding step's batch: 4 of 12) takes a shorter kernel: its time
 * is per row computed. Each row's sums are the same in every variant. */
#define SG_KERNEL(name, a_rows, R)                                                                               \
    static void name(long kc, const float *a, const float *b, float *c, long ldc, float alpha, float beta, int mr, \
                     int nr, const float *bias) {                                                                \
        kernel_body(kc, a, b, c, ldc, alpha, beta, mr, nr, bias, a_rows, R);                                     \
    }
SG_KERNEL(kernel_kmajor, 0, SG_MR)
SG_KERNEL(kernel_kmajor8, 0, 8)
SG_KERNEL(kernel_kmajor4, 0, 4)
SG_KERNEL(kernel_rows, 1, SG_MR)
SG_KERNEL(kernel_rows8, 1, 8)
SG_KERNEL(kernel_rows4, 1, 4)

typedef void (*sg_kernel)(long, const float *, const float *, float *, long, float, float, int, int, const float *);

/* The kernel for a tile of mr real rows. */
static inline sg_kernel kernel_for(int trans_a, int mr) {
    if (mr <= 4) return trans_a ? kernel_kmajor4 : kernel_rows4;
    if (mr <= 8) return trans_a ? kernel_kmajor8 : kernel_rows8;
    return trans_a ? kernel_kmajor : kernel_rows;
}

/* ---------------------------------------------------------------- packing */

/* Transposes the 16 x 16 block r in place: r[i] lane j becomes r[j] lane i. */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        __m512d t0 = _mm512_castps_pd(t[i]), t1 = _mm512_castps_pd(t[i + 1]);
        __m512d t2 = _mm512_castps_pd(t[i + 2]), t3 = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

static inline __mmask16 lanes(int n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* dst[k * dst_ld + j] = src[j * ld + k] for j < 16, k < kc, with src rows
 * j >= rows (<= 16) taken as 0: 16 x 16 transposes, for op(B) = B^T, whose
 * rows are contiguous in k. */
static void pack_transpose(float *restrict dst, long dst_ld, const float *restrict src, long ld, int rows, long kc) {
    for (long k0 = 0; k0 < kc; k0 += 16) {
        int kn = kc - k0 < 16 ? (int)(kc - k0) : 16;
        __mmask16 kmask = lanes(kn);
        __m512 r[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++)
            r[j] = j < rows ? _mm512_maskz_loadu_ps(kmask, src + j * ld + k0) : _mm512_setzero_ps();
        /* the rows are up to 16 streams: SG_PF_T floats ahead on each */
        if (k0 + SG_PF_T < kc)
            for (int j = 0; j < rows; j++) _mm_prefetch((const char *)(src + j * ld + k0 + SG_PF_T), _MM_HINT_T0);
        transpose16(r);
#pragma GCC unroll 16
        for (int k = 0; k < 16; k++)
            if (k < kn) _mm512_store_ps(dst + (k0 + k) * dst_ld, r[k]);
    }
}

/* Panels of op(A) = A^T for rows i0..i0+rows-1 (rows <= SG_MC_T * MR), k in
 * p0..p0+kc-1: panel c at ap + c * kc * MR, k-major as pack_a's, rows past
 * `rows` zero. Packing several panels at once reads each row of A as one
 * contiguous run of rows * 4 bytes: one panel at a time read 48 bytes of
 * each of kc rows lda apart, and at lda = 1024 those lines share a few L2
 * sets and were evicted before the next panel read the rest of them. */
static void pack_a_t_chunk(float *restrict ap, const float *A, long lda, long i0, long rows, long p0, long kc,
                           float *restrict sums, long sum_from) {
    long np = (rows + SG_MR - 1) / SG_MR, full = rows / SG_MR;
    const float *src = A + p0 * lda + i0;
    for (long k = 0; k < kc; k++, src += lda) {
        /* sums[r] += op(A)[i0 + r, p0 + k] for rows r >= sum_from (a weight
         * gradient's bias gradient, read while the rows are in L1) */
        if (sums)
            for (long l = sum_from; l < rows; l += 16) {
                __mmask16 m = lanes((int)(rows - l));
                _mm512_mask_storeu_ps(sums + l, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, sums + l),
                                                                 _mm512_maskz_loadu_ps(m, src + l)));
            }
        for (long l = 0; l < rows; l += 16) _mm_prefetch((const char *)(src + SG_PF_C * lda + l), _MM_HINT_T0);
        float *dst = ap + k * SG_MR;
        for (long c = 0; c < full; c++) {
            _mm256_storeu_ps(dst + c * kc * SG_MR, _mm256_loadu_ps(src + c * SG_MR));
            _mm_storeu_ps(dst + c * kc * SG_MR + 8, _mm_loadu_ps(src + c * SG_MR + 8));
        }
        if (full < np) {
            __m512 v = _mm512_maskz_loadu_ps(lanes((int)(rows - full * SG_MR)), src + full * SG_MR);
            _mm256_storeu_ps(dst + full * kc * SG_MR, _mm512_castps512_ps256(v));
            _mm_storeu_ps(dst + full * kc * SG_MR + 8, _mm512_extractf32x4_ps(v, 2));
        }
    }
}

/* The A panel of rows i0..i0+mr-1 and k in p0..p0+kc-1 of op(A) = A (rows
 * of A contiguous in k), row-major, ap[r * KC + k], rows mr..MR-1 zero: a
 * copy of row segments, no transpose (kernel_rows reads this layout;
 * op(A) = A^T goes through pack_a_t_chunk and kernel_kmajor). */
static void pack_a(float *restrict ap, const float *A, long lda, long i0, int mr, long p0, long kc) {
    for (int r = 0; r < SG_MR; r++) {
        float *dst = ap + r * SG_KC;
        const float *src = A + (i0 + r) * lda + p0;
        long k = 0;
        if (r < mr) {
            for (; k + 16 <= kc; k += 16) _mm512_store_ps(dst + k, _mm512_loadu_ps(src + k));
            if (k < kc) _mm512_store_ps(dst + k, _mm512_maskz_loadu_ps(lanes((int)(kc - k)), src + k));
        } else {
            for (; k < kc; k += 16) _mm512_store_ps(dst + k, _mm512_setzero_ps());
        }
    }
}

/* Panels q0..q1-1 of the B block whose first column is j0 (nc columns) and
 * k in p0..p0+kc-1 of op(B), each packed k-major, bb[q * kc * NR + k * NR +
 * j], columns past nc zero. op(B) = B (rows of B contiguous in j): row by
 * row, reading (q1 - q0) * NR contiguous floats of each row of B, which the
 * hardware prefetcher follows (a panel at a time would read 128 bytes per
 * row at a stride of ldb, a new page each row at ldb >= 1024). op(B) = B^T
 * (rows of B contiguous in k): 16 x 16 transposes, 16 rows streamed at a
 * time. */
static void pack_b(float *restrict bb, int trans_b, const float *B, long ldb, long j0, long nc, long q0, long q1,
                   long p0, long kc) {
    if (q0 >= q1) return;
    if (trans_b) {
        for (long q = q0; q < q1; q++) {
            float *bp = bb + q * kc * SG_NR;
            for (int v = 0; v < SG_NV; v++) {
                long cols = nc - q * SG_NR - 16 * v;
                if (cols <= 0) {
                    for (long k = 0; k < kc; k++) _mm512_store_ps(bp + k * SG_NR + 16 * v, _mm512_setzero_ps());
                } else {
                    pack_transpose(bp + 16 * v, SG_NR, B + (j0 + q * SG_NR + 16 * v) * ldb + p0, ldb,
                                   cols > 16 ? 16 : (int)cols, kc);
                }
            }
        }
        return;
    }
    long full = (nc - q0 * SG_NR) / 16; /* 16-column pieces with 16 real columns, from panel q0 on */
    long pieces = (q1 - q0) * SG_NV;
    if (full > pieces) full = pieces;
    __mmask16 tail = lanes((int)(nc - q0 * SG_NR - full * 16));
    for (long k = 0; k < kc; k++) {
        const float *src = B + (p0 + k) * ldb + j0 + q0 * SG_NR;
        float *dst = bb + q0 * kc * SG_NR + k * SG_NR;
        /* Each row is a short run (a few KiB at most), ldb apart: prefetch
         * the run SG_PF_C rows ahead, which the hardware would not. */
        if (k + SG_PF_C < kc)
            for (long u = 0; u < pieces; u++) _mm_prefetch((const char *)(src + SG_PF_C * ldb + u * 16), _MM_HINT_T0);
        long u = 0;
        for (; u < full; u++)
            _mm512_store_ps(dst + (u / SG_NV) * kc * SG_NR + (u % SG_NV) * 16, _mm512_loadu_ps(src + u * 16));
        for (__mmask16 m = tail; u < pieces; u++, m = 0) /* the partial piece, then zero padding */
            _mm512_store_ps(dst + (u / SG_NV) * kc * SG_NR + (u % SG_NV) * 16, _mm512_maskz_loadu_ps(m, src + u * 16));
    }
}

/* ----------------------------------------------------------------- driver */

/* The calling thread's packing buffer (B blocks, A^T chunks, partial sums):
 * grown when a call needs more, never shrunk, so the steady state allocates
 * nothing. Per thread, so that calls from inside a parallel region
 * (attention) do not share one; a pthread key frees it when its thread exits
 * (OpenMP retires threads when a team shrinks). */
static _Thread_local float *tls_buf;
static _Thread_local size_t tls_cap;
static pthread_key_t buf_key;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
static int buf_key_ok;

static void buf_key_init(void) { buf_key_ok = pthread_key_create(&buf_key, free) == 0; }

static float *b_buffer(size_t n) {
    if (n > tls_cap) {
        pthread_once(&buf_once, buf_key_init);
        free(tls_buf);
        size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
        tls_buf = aligned_alloc(64, bytes);
        if (!tls_buf) {
            fprintf(stderr, "tfm_sgemm_avx512: out of memory (%zu bytes of packing buffer)\n", bytes);
            abort();
        }
        tls_cap = n;
        if (buf_key_ok) pthread_setspecific(buf_key, tls_buf);
    }
    return tls_buf;
}

/* Prefetching what the next packing step will read, while the kernel runs:
 * packing reads A and B from L3 or memory in a phase of its own, which the
 * kernel's compute does not hide (small M or N products spend up to 15% of
 * their time there). A cursor walks the cache lines of `rows` rows of
 * row_bytes bytes, `stride` bytes apart, and prefetches some of them into L2
 * after each kernel call. Prefetches never fault, and stay inside the
 * matrices' rows. */
typedef struct pf_cursor {
    const char *base;
    long stride, rows, row_bytes;
    long r;          /* the row being walked */
    uintptr_t line;  /* the next line of row r to prefetch */
    long per_call;   /* lines per step */
} pf_cursor;

static void pf_start(pf_cursor *c, const float *base, long stride_floats, long rows, long row_floats, long steps) {
    c->base = (const char *)base;
    c->stride = stride_floats * (long)sizeof(float);
    c->rows = rows;
    c->row_bytes = row_floats * (long)sizeof(float);
    c->r = 0;
    c->line = (uintptr_t)c->base & ~(uintptr_t)63;
    long lines = rows * (c->row_bytes / 64 + 2);
    c->per_call = steps > 0 ? (lines + steps - 1) / steps : lines;
}

static inline void pf_step(pf_cursor *c) {
    for (long n = c->per_call; n > 0 && c->r < c->rows; n--) {
        _mm_prefetch((const char *)c->line, _MM_HINT_T1);
        c->line += 64;
        const char *row = c->base + c->r * c->stride;
        if (c->line >= (uintptr_t)(row + c->row_bytes)) {
            if (++c->r < c->rows) c->line = (uintptr_t)(row + c->stride) & ~(uintptr_t)63;
        }
    }
}

/* The region of B that pack_b reads for panels q0..q1-1 of the block at
 * (j0, nc) and k from p0, kc. */
static void pf_b(pf_cursor *c, int trans_b, const float *B, long ldb, long j0, long nc, long q0, long q1, long p0,
                 long kc, long steps) {
    long c0 = q0 * SG_NR, c1 = q1 * SG_NR < nc ? q1 * SG_NR : nc;
    if (c1 <= c0) {
        c->rows = 0, c->r = 0;
        return;
    }
    if (trans_b) pf_start(c, B + (j0 + c0) * ldb + p0, ldb, c1 - c0, kc, steps);
    else pf_start(c, B + p0 * ldb + j0 + c0, ldb, kc, c1 - c0, steps);
}

typedef struct sg_args {
    int trans_a, trans_b, M, N, K;
    float alpha, beta;
    const float *A, *B;
    float *C;
    long lda, ldb, ldc;
    long kc_blk;         /* balanced K block */
    long nc_max;         /* the largest N block, a multiple of NR: the size of a B buffer's blocks */
    float *bbuf;         /* the B blocks: see sg_body */
    float *abuf;         /* op(A) = A^T: per thread, SG_MC_T panels of MR x kc_blk */
    int split_n;         /* threads own column ranges (1) or share blocks (0) */
    int split_k;         /* threads own K ranges (overrides split_n) */
    float *cbuf;         /* split_k: the partial C of threads 1..nt-1, M x N each */
    const float *bpk;    /* op(B) packed once (tfm_sgemm_avx512_pack_b), or NULL: pack per block */
    const float *bias;   /* [N] added to every row of C, or NULL */
    float *sums;         /* op(A) = A^T: [M] += the row sums of op(A), or NULL (see sg_body) */
    float *sbuf;         /* sums in a K split: the partial sums of threads 1..nt-1, M each */
    long npad;           /* bpk: N rounded up to NR, the row length of each of its K blocks */
} sg_args;

/* One thread's part of the product: thread t of nt.
 *
 * Shared blocks (split_n 0): every thread runs the same block loops over all
 * N; each packs a share of a block's B panels into one of two buffers
 * (bbuf, 2 x kc_blk x nc_max), meets the others at a barrier, then computes
 * its share of the block's tiles. The buffers alternate, so one barrier per
 * block suffices: the buffer a thread overwrites was last read before the
 * previous barrier. The tiles (row panel, column panel), in row-panel order,
 * are cut into nt equal runs: the kernel's time does not depend on how many
 * rows of a tile are real, so equal counts are equal work; a thread whose run
 * starts inside a row panel packs that A panel too.
 *
 * Own columns (split_n 1): thread t takes the t-th of nt NR-aligned column
 * ranges and runs the whole product on it alone, with its own B buffer
 * (bbuf + t x kc_blk x nc_max): no barrier, and its B panels stay in its
 * core's L2; every thread packs all of A once per N block of its range.
 * Chosen when each thread's range spans at least one full N block (the
 * caller), where that is no more A packing than sharing.
 *
 * Own K ranges (split_k 1): thread t takes the t-th of nt runs of K blocks
 * and runs the whole product over them alone, with its own B buffer; thread
 * 0 sums into C (with beta), thread t > 0 into its M x N buffer (cbuf); after
 * a barrier each thread adds the buffers, in thread order, to its share of
 * C's rows. Every thread has at least two K blocks (the caller's rule).
 *
 * Pre-packed op(B) (bpk): the same loops and the same kernel calls on the
 * same panels, so the result is bit-identical; a block's panels are read
 * where tfm_sgemm_avx512_pack_b put them instead of being packed into bbuf,
 * and shared blocks need no barrier (nothing is written to share). */
static void sg_body(const sg_args *g, int t, int nt) {
    float ap[SG_MR * SG_KC] __attribute__((aligned(64))); /* op(A) = A: one panel */
    float *achunk = g->abuf + (size_t)t * SG_MC_T * SG_MR * g->kc_blk;
    long mp = (g->M + SG_MR - 1) / SG_MR, n_lo = 0, n_hi = g->N, nc_blk = g->nc_max;
    long k_lo = 0, k_hi = g->K;
    float *C = g->C, beta0 = g->beta;
    long ldc = g->ldc;
    int share = nt;
    if (g->split_k) {
        /* K blocks [kb * t / nt, kb * (t + 1) / nt); thread t > 0 sums into
         * its own buffer, added to C after the barrier below */
        long kb = (g->K + g->kc_blk - 1) / g->kc_blk;
        k_lo = kb * t / nt * g->kc_blk;
        k_hi = kb * (t + 1) / nt * g->kc_blk;
        if (k_hi > g->K) k_hi = g->K;
        if (t > 0) C = g->cbuf + (size_t)(t - 1) * g->M * g->N, ldc = g->N, beta0 = 0.0f;
        share = 1;
    }
    if (g->split_n) {
        long np_all = (g->N + SG_NR - 1) / SG_NR;
        n_lo = np_all * t / nt * SG_NR;
        n_hi = np_all * (t + 1) / nt * SG_NR;
        if (n_hi > g->N) n_hi = g->N;
        long nnb = (n_hi - n_lo + SG_NC - 1) / SG_NC;
        if (nnb < 1) nnb = 1;
        nc_blk = ((n_hi - n_lo + nnb - 1) / nnb + SG_NR - 1) / SG_NR * SG_NR;
        share = 1;
    }
    /* row sums: thread t > 0 of a K split into its own buffer (added below) */
    float *sum_dst = g->sums && g->split_k && t > 0 ? g->sbuf + (size_t)(t - 1) * g->M : g->sums;
    if (g->sums && g->split_k && t > 0)
        for (long i = 0; i < g->M; i++) sum_dst[i] = 0.0f;
    long round = 0, u = share > 1 ? t : 0;
    for (long j0 = n_lo; j0 < n_hi; j0 += nc_blk) {
        long nc = n_hi - j0 < nc_blk ? n_hi - j0 : nc_blk;
        long np = (nc + SG_NR - 1) / SG_NR;
        for (long p0 = k_lo; p0 < k_hi; p0 += g->kc_blk, round++) {
            long kc = k_hi - p0 < g->kc_blk ? k_hi - p0 : g->kc_blk;
            float beta = p0 == k_lo ? beta0 : 1.0f;
            const float *bb;
            if (g->bpk) {
                /* K block p0 starts at p0 * npad (every earlier block has
                 * kc_blk rows); panel j0 / NR of it at j0 / NR * kc * NR */
                bb = g->bpk + p0 * g->npad + j0 * kc;
            } else {
                float *w = g->bbuf + (share > 1 ? (round & 1) : g->split_n || g->split_k ? t : 0) * g->kc_blk * g->nc_max;
                pack_b(w, g->trans_b, g->B, g->ldb, j0, nc, np * u / share, np * (u + 1) / share, p0, kc);
#ifdef _OPENMP
                if (share > 1) {
#pragma omp barrier
                }
#endif
                bb = w;
            }
            long tiles = mp * np, t0 = tiles * u / share, t1 = tiles * (u + 1) / share, packed = -1;
            long chunk0 = 0, chunk1 = 0; /* op(A) = A^T: the panels in achunk */
            /* What this thread packs next: its share of the next block's B
             * (spread over this block's kernel calls), and the next A panel
             * (over the current panel's calls). */
            pf_cursor pfa = {0}, pfb = {0};
            long p0n = p0 + g->kc_blk, j0n = j0;
            if (p0n >= k_hi) p0n = k_lo, j0n = j0 + nc_blk;
            if (j0n < n_hi) {
                long kcn = k_hi - p0n < g->kc_blk ? k_hi - p0n : g->kc_blk;
                long ncn = n_hi - j0n < nc_blk ? n_hi - j0n : nc_blk, npn = (ncn + SG_NR - 1) / SG_NR;
                if (g->bpk) /* the next block, one contiguous run (a thread's tiles span its columns) */
                    pf_start(&pfb, g->bpk + p0n * g->npad + j0n * kcn, 0, 1, npn * kcn * SG_NR, t1 - t0);
                else
                    pf_b(&pfb, g->trans_b, g->B, g->ldb, j0n, ncn, npn * u / share, npn * (u + 1) / share, p0n,
                         kcn, t1 - t0);
            }
            for (long tile = t0; tile < t1; tile++) {
                long m = tile / np, q = tile % np, i0 = m * SG_MR, jq = j0 + q * SG_NR;
                int mr = g->M - i0 < SG_MR ? (int)(g->M - i0) : SG_MR;
                if (g->trans_a && (m < chunk0 || m >= chunk1)) {
                    /* the panels from m to the end of the run, SG_MC_T at most */
                    chunk0 = m;
                    chunk1 = (t1 - 1) / np + 1;
                    if (chunk1 > m + SG_MC_T) chunk1 = m + SG_MC_T;
                    long rows = (chunk1 * SG_MR < g->M ? chunk1 * SG_MR : g->M) - i0;
                    /* Row sums: every element of op(A) once. Each thread
                     * packs its panels once per N block, so only on its
                     * first; a row panel shared by two runs counts for the
                     * run holding its first tile; with own columns every
                     * thread packs all of A, so thread 0 alone. */
                    float *sums = g->sums && j0 == n_lo && (!g->split_n || t == 0) ? sum_dst + i0 : NULL;
                    long sum_from = m * np < t0 ? SG_MR : 0;
                    if (sums && sum_from >= rows) sums = NULL;
                    pack_a_t_chunk(achunk, g->A, g->lda, i0, rows, p0, kc, sums, sum_from);
                    /* the next chunk of the run, prefetched over this one's tiles */
                    long next1 = (t1 - 1) / np + 1, in = chunk1 * SG_MR;
                    if (next1 > chunk1 + SG_MC_T) next1 = chunk1 + SG_MC_T;
                    long next_rows = (next1 * SG_MR < g->M ? next1 * SG_MR : g->M) - in;
                    if (next_rows > 0)
                        pf_start(&pfa, g->A + p0 * g->lda + in, g->lda, kc, next_rows, (chunk1 - chunk0) * np);
                    else
                        pfa.rows = 0;
                } else if (!g->trans_a && m != packed) {
                    pack_a(ap, g->A, g->lda, i0, mr, p0, kc);
                    packed = m;
                    long in = i0 + SG_MR;
                    if (in < g->M && (m + 1) * np < t1)
                        pf_start(&pfa, g->A + in * g->lda + p0, g->lda, g->M - in < SG_MR ? g->M - in : SG_MR, kc, np);
                    else
                        pfa.rows = 0;
                }
                const float *apan = g->trans_a ? achunk + (m - chunk0) * kc * SG_MR : ap;
                int nr = n_hi - jq < SG_NR ? (int)(n_hi - jq) : SG_NR;
                /* the bias goes in with the first K block of the product (in
                 * a K split, thread 0's), once per element */
                const float *bias = g->bias && p0 == 0 ? g->bias + jq : NULL;
                kernel_for(g->trans_a, mr)(kc, apan, bb + q * kc * SG_NR, C + i0 * ldc + jq, ldc, g->alpha, beta, mr,
                                           nr, bias);
                pf_step(&pfa);
                pf_step(&pfb);
            }
        }
    }
    if (g->split_k) {
#ifdef _OPENMP
#pragma omp barrier
#endif
        /* C += the other threads' sums, in thread order; rows split */
        for (long i = g->M * t / nt; i < g->M * (t + 1) / nt; i++) {
            float *c = g->C + i * g->ldc;
            for (long j = 0; j < g->N; j += 16) {
                __mmask16 m = lanes((int)(g->N - j));
                __m512 x = _mm512_maskz_loadu_ps(m, c + j);
                for (int u = 1; u < nt; u++)
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, g->cbuf + (size_t)(u - 1) * g->M * g->N +
                                                                     i * g->N + j));
                _mm512_mask_storeu_ps(c + j, m, x);
            }
        }
        if (g->sums && t == 0) /* after the barrier: the other threads' row sums, in thread order */
            for (long i = 0; i < g->M; i++)
                for (int u = 1; u < nt; u++) g->sums[i] += g->sbuf[(size_t)(u - 1) * g->M + i];
    }
}

/* C (alpha, beta) only: K == 0 or alpha == 0. */
static void scale_c(int M, int N, float beta, float *C, int ldc) {
    for (long i = 0; i < M; i++)
        for (long j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

/* The product with op(B) read from B (bpk NULL: packed block by block) or
 * from its packed copy bpk (B unused). M, N, K >= 1, alpha != 0. */
static void sg_run(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, const float *bpk, const float *bias, float *sums, float beta, float *C,
                   int ldc) {
    sg_args g = {.trans_a = trans_a, .trans_b = trans_b, .M = M, .N = N, .K = K, .alpha = alpha, .beta = beta,
                 .A = A, .B = B, .C = C, .lda = lda, .ldb = ldb, .ldc = ldc, .bpk = bpk, .bias = bias,
                 .sums = sums};
    long nkb = (K + SG_KC - 1) / SG_KC;
    g.kc_blk = (K + nkb - 1) / nkb;
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && (double)M * N * K >= SG_PAR_MIN) nt = omp_get_max_threads();
#endif
    long mp = (M + SG_MR - 1) / SG_MR, np_all = (N + SG_NR - 1) / SG_NR;
    g.npad = np_all * SG_NR;
    g.split_k = nt > 1 && SG_SPLIT_K(M, N, K, nt);
    g.split_n = nt > 1 && !g.split_k && SG_SPLIT_N(M, N, K, nt);
    if (g.split_n) {
        if (nt > np_all) nt = (int)np_all;
        long per = (np_all + nt - 1) / nt * SG_NR; /* the widest thread range */
        long nnb = (per + SG_NC - 1) / SG_NC;
        g.nc_max = ((per + nnb - 1) / nnb + SG_NR - 1) / SG_NR * SG_NR;
    } else {
        long nnb = (N + SG_NC - 1) / SG_NC;
        g.nc_max = ((N + nnb - 1) / nnb + SG_NR - 1) / SG_NR * SG_NR;
        if (!g.split_k && nt > mp * (g.nc_max / SG_NR)) nt = (int)(mp * (g.nc_max / SG_NR));
    }
    if (nt <= 1) g.split_n = g.split_k = 0;
    size_t nbuf = nt <= 1 ? 1 : g.split_n || g.split_k ? (size_t)nt : 2;
    size_t nb = bpk ? 0 : nbuf * g.kc_blk * g.nc_max;
    size_t na = trans_a ? (size_t)nt * SG_MC_T * SG_MR * g.kc_blk : 0;
    size_t ncb = g.split_k ? (size_t)(nt - 1) * M * N : 0;
    size_t nsb = g.split_k && sums ? (size_t)(nt - 1) * M : 0;
    g.bbuf = b_buffer(nb + na + ncb + nsb > 0 ? nb + na + ncb + nsb : 16);
    g.abuf = g.bbuf + nb;
    g.cbuf = g.abuf + na;
    g.sbuf = g.cbuf + ncb;
    if (nt <= 1) {
        sg_body(&g, 0, 1);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    sg_body(&g, omp_get_thread_num(), omp_get_num_threads());
#endif
}

void tfm_sgemm_avx512(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    sg_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, NULL, NULL, NULL, beta, C, ldc);
}

void tfm_sgemm_avx512_tn_sums(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                              float *C, int ldc, float *sums) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    sg_run(1, 0, M, N, K, 1.0f, A, lda, B, ldb, NULL, NULL, sums, beta, C, ldc);
}

void tfm_sgemm_avx512_bias(int trans_b, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                           const float *packed, const float *bias, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (long i = 0; i < M; i++)
            for (long j = 0; j < N; j++) C[i * ldc + j] = bias[j];
        return;
    }
    sg_run(0, trans_b, M, N, K, 1.0f, A, lda, packed ? NULL : B, ldb, packed, bias, NULL, 0.0f, C, ldc);
}

size_t tfm_sgemm_avx512_packed_floats(int K, int N) {
    if (K <= 0 || N <= 0) return 0;
    return (size_t)K * (size_t)((N + SG_NR - 1) / SG_NR * SG_NR);
}

void tfm_sgemm_avx512_pack_b(int trans_b, int K, int N, const float *B, int ldb, float *packed) {
    if (K <= 0 || N <= 0) return;
    long nkb = (K + SG_KC - 1) / SG_KC, kc_blk = (K + nkb - 1) / nkb;
    long np_all = (N + SG_NR - 1) / SG_NR, npad = np_all * SG_NR;
    /* work items: (K block, 16 panels = 512 columns), in memory order */
    enum { CHUNK = 16 };
    long nch = (np_all + CHUNK - 1) / CHUNK, items = nkb * nch;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && (double)K * N >= SG_PAR_MIN)
#endif
    for (long it = 0; it < items; it++) {
        long kb = it / nch, c = it % nch, p0 = kb * kc_blk;
        long kc = K - p0 < kc_blk ? K - p0 : kc_blk;
        long q0 = c * CHUNK, q1 = q0 + CHUNK < np_all ? q0 + CHUNK : np_all;
        pack_b(packed + p0 * npad, trans_b, B, ldb, 0, N, q0, q1, p0, kc);
    }
}

void tfm_sgemm_avx512_packed(int trans_a, int M, int N, int K, float alpha, const float *A, int lda,
                             const float *packed, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    sg_run(trans_a, 0, M, N, K, alpha, A, lda, NULL, 0, packed, NULL, NULL, beta, C, ldc);
}

#pragma GCC pop_options

#endif
