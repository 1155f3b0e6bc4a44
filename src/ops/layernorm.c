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

/* One row: y[D] = (x - mean) * rstd * w + b, and the row's mean and rstd. */
TFM_CLONES void OPFN(tfm_layernorm_row)(real *y, real *mean, real *rstd, const real *x, const real *w,
                                        const real *b, int D, real eps) {
    double m = 0;
    for (int i = 0; i < D; i++) m += x[i];
    m /= D;
    double var = 0;
    for (int i = 0; i < D; i++) var += (x[i] - m) * (x[i] - m);
    var /= D;
    real s = (real)(1.0 / sqrt(var + eps));
    for (int i = 0; i < D; i++) y[i] = (real)((x[i] - m) * s) * w[i] + b[i];
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
 * *mg = mean(g), *mgx = mean(g * xhat), summed in double. */
void OPFN(tfm_layernorm_din_means)(real *mg, real *mgx, const real *dy, const real *x, const real *w, real m,
                                   real s, int D) {
    double sum_g = 0, sum_gx = 0;
    for (int i = 0; i < D; i++) {
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
