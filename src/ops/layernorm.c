/*
 * layernorm.c: LayerNorm over the last dimension (Ba et al. 2016), as
 * torch.nn.LayerNorm: biased variance, eps inside the square root.
 *
 *   in, out, din, dout [N, D]    w, b, dw, db [D]    mean, rstd [N]
 *
 * Statistics are accumulated in double so that the float build matches
 * PyTorch to ~1e-6 even for rows with a large mean.
 */
#include "ops/ops.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below about this much work (elements) a parallel region costs more than it
 * saves: a region costs microseconds, and decoding one sentence runs dozens
 * of ops over a single [1, D] row per token. Each element's arithmetic is
 * the same whether a loop runs in parallel or not, so results do not change. */
#ifndef PAR_MIN
#define PAR_MIN 16384
#endif

/* The statistics' double sums run in 8 lanes (element i into lane i mod 8,
 * the lanes added pairwise at the end), written with GCC's vector extension
 * so that the AVX-512 / AVX2 clones add 8 doubles per instruction: one
 * dependent double add per element made these sums most of a decoder
 * step's LayerNorm time. Each element's arithmetic is unchanged; only the
 * order of the sum differs (double sums of a few thousand floats: ~1e-16). */
typedef double OPFN(dlanes) __attribute__((vector_size(8 * sizeof(double))));
typedef real OPFN(rlanes) __attribute__((vector_size(8 * sizeof(real))));

/* LOAD8(v, p): v = the 8 reals at p; WIDEN(v): as doubles. Macros, not
 * functions: a function returning a vector type outside the clones' AVX
 * targets has a different ABI (GCC warns). */
#define LOAD8(v, p) memcpy(&(v), (p), sizeof(v))
#ifdef TFM_OPS_F64
#define WIDEN(v) (v)
#else
#define WIDEN(v) __builtin_convertvector((v), OPFN(dlanes))
#endif

/* Lanes added pairwise: ((0+1)+(2+3)) + ((4+5)+(6+7)). */
#define LANES_SUM(v) ((((v)[0] + (v)[1]) + ((v)[2] + (v)[3])) + (((v)[4] + (v)[5]) + ((v)[6] + (v)[7])))

/* One row: y[D] = (x - mean) * rstd * w + b, and the row's mean and rstd. */
TFM_CLONES void OPFN(tfm_layernorm_row)(real *y, real *mean, real *rstd, const real *x, const real *w,
                                        const real *b, int D, real eps) {
    OPFN(dlanes) acc = {0};
    OPFN(rlanes) xv;
    int i = 0;
    for (; i + 8 <= D; i += 8) {
        LOAD8(xv, x + i);
        acc += WIDEN(xv);
    }
    double m = LANES_SUM(acc);
    for (; i < D; i++) m += x[i];
    m /= D;
    OPFN(dlanes) dev = {0};
    for (i = 0; i + 8 <= D; i += 8) {
        LOAD8(xv, x + i);
        OPFN(dlanes) t = WIDEN(xv) - m;
        dev += t * t;
    }
    double var = LANES_SUM(dev);
    for (; i < D; i++) var += (x[i] - m) * (x[i] - m);
    var /= D;
    real s = (real)(1.0 / sqrt(var + eps));
    for (i = 0; i < D; i++) y[i] = (real)((x[i] - m) * s) * w[i] + b[i];
    *mean = (real)m;
    *rstd = s;
}

TFM_CLONES void OPFN(tfm_layernorm_forward)(real *out, real *mean, real *rstd, const real *in, const real *w,
                                 const real *b, int N, int D, real eps) {
#pragma omp parallel for schedule(static) if((size_t)N * D >= PAR_MIN)
    for (int n = 0; n < N; n++)
        OPFN(tfm_layernorm_row)(out + (size_t)n * D, mean + n, rstd + n, in + (size_t)n * D, w, b, D, eps);
}

/* The row means the input gradient needs, with g = dy * w and xhat = (x - m) * s:
 * *mg = mean(g), *mgx = mean(g * xhat), summed in double (8 lanes, as above). */
TFM_CLONES void OPFN(tfm_layernorm_din_means)(real *mg, real *mgx, const real *dy, const real *x, const real *w,
                                              real m, real s, int D) {
    OPFN(dlanes) acc_g = {0}, acc_gx = {0};
    int i = 0;
    for (; i + 8 <= D; i += 8) {
        OPFN(rlanes) dyv, wv, xv;
        LOAD8(dyv, dy + i);
        LOAD8(wv, w + i);
        LOAD8(xv, x + i);
        OPFN(rlanes) xhat = (xv - m) * s;
        OPFN(dlanes) g = WIDEN(dyv) * WIDEN(wv);
        acc_g += g;
        acc_gx += g * WIDEN(xhat);
    }
    double sum_g = LANES_SUM(acc_g), sum_gx = LANES_SUM(acc_gx);
    for (; i < D; i++) {
        double g = (double)dy[i] * w[i];
        sum_g += g;
        sum_gx += g * ((x[i] - m) * s);
    }
    *mg = (real)(sum_g / D);
    *mgx = (real)(sum_gx / D);
}

TFM_CLONES void OPFN(tfm_layernorm_backward)(real *din, real *dw, real *db, const real *dout, const real *in,
                                  const real *mean, const real *rstd, const real *w, int N, int D,
                                  int accumulate) {
    /* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w */
#pragma omp parallel for schedule(static) if((size_t)N * D >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const real *x = in + (size_t)n * D, *dy = dout + (size_t)n * D;
        real m = mean[n], s = rstd[n], mg, mgx;
        OPFN(tfm_layernorm_din_means)(&mg, &mgx, dy, x, w, m, s, D);
        real *dx = din + (size_t)n * D;
        for (int i = 0; i < D; i++) {
            real xhat = (x[i] - m) * s;
            real v = s * (dy[i] * w[i] - mg - xhat * mgx);
            dx[i] = accumulate ? dx[i] + v : v;
        }
    }
    OPFN(tfm_layernorm_dparams)(dw, db, dout, in, mean, rstd, N, D);
}

/* dw[D] += sum_n dout[n] * xhat[n];  db[D] += sum_n dout[n]. Threads own
 * column blocks and walk the rows in order (contiguous reads, a fixed sum
 * order at any thread count). Shared with the fused LayerNorm backward. */
TFM_CLONES void OPFN(tfm_layernorm_dparams)(real *dw, real *db, const real *dout, const real *in, const real *mean,
                                            const real *rstd, int N, int D) {
#pragma omp parallel if((size_t)N * D >= PAR_MIN)
    {
#ifdef _OPENMP
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
        int nt = 1, t = 0;
#endif
        int lo = (int)((long)D * t / nt), hi = (int)((long)D * (t + 1) / nt);
        for (int n = 0; n < N; n++) {
            const real *dy = dout + (size_t)n * D, *x = in + (size_t)n * D;
            real m = mean[n], s = rstd[n];
            for (int i = lo; i < hi; i++) {
                dw[i] += dy[i] * ((x[i] - m) * s);
                db[i] += dy[i];
            }
        }
    }
}
