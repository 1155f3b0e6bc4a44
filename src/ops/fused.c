/*
 * fused.c: element-wise ops fused with their neighbours, for the residual
 * blocks and the FFN: each is the composition of reference ops of
 * layernorm.c and activation.c in one pass over the rows instead of two.
 *
 *   x, y, res, ln, din, ddrop, dout [N, D]    w, b, dw, db [D]    mean, rstd [N]
 *   (activation ops) in, out, din, dout [n]
 *
 *   tfm_residual_dropout_layernorm   res = x + dropout(y); ln = LayerNorm(res)
 *   tfm_layernorm_backward_dropout   din = LayerNorm backward; ddrop = dropout(din)
 *   tfm_activation_dropout_forward   out = dropout(act(in))
 *   tfm_activation_dropout_backward  din = act'(in) * dropout(dout)
 *
 * Each element's arithmetic is the composition's, written out again in the
 * same order (double statistics, the same roundings, the same dropout draws
 * by element index), so results are the unfused ops' bit for bit; the tests
 * (test_fused_ops.c) compare them exactly. What the fusion saves is memory
 * traffic: the residual sum is normalised while its row is still in cache,
 * and the FFN's [N, F] activations are read and written once, not twice.
 * This file does not decide where the model uses them (model.c does).
 */
#include "ops/ops.h"

#include "core/rng.h"

/* Below about this much work (elements) a parallel region costs more than it
 * saves (see layernorm.c); a dropout draw costs about 8x an add. Thread count
 * never changes the results. */
#ifndef PAR_MIN
#define PAR_MIN 16384
#endif

TFM_CLONES void OPFN(tfm_residual_dropout_layernorm)(real *res, real *ln, real *mean, real *rstd,
                                                     const real *x, const real *y, const real *w,
                                                     const real *b, int N, int D, real eps, float p,
                                                     uint64_t seed, uint64_t stream) {
    real scale = p > 0 ? (real)(1.0 / (1.0 - p)) : 1;
#pragma omp parallel for schedule(static) if((size_t)N * D >= (p > 0 ? PAR_MIN / 8 : PAR_MIN))
    for (int n = 0; n < N; n++) {
        size_t base = (size_t)n * D;
        const real *xr = x + base, *yr = y + base;
        real *r = res + base;
        if (p > 0) {
#pragma omp simd
            for (int i = 0; i < D; i++)
                r[i] = xr[i] + (tfm_rng_uniform(seed, stream, base + i) >= p ? yr[i] * scale : 0);
        } else {
            for (int i = 0; i < D; i++) r[i] = xr[i] + yr[i];
        }
        OPFN(tfm_layernorm_row)(ln + base, mean + n, rstd + n, r, w, b, D, eps);
    }
}

TFM_CLONES void OPFN(tfm_layernorm_backward_dropout)(real *din, real *ddrop, real *dw, real *db,
                                                     const real *dout, const real *in,
                                                     const real *mean, const real *rstd,
                                                     const real *w, int N, int D, float p,
                                                     uint64_t seed, uint64_t stream) {
    real scale = p > 0 ? (real)(1.0 / (1.0 - p)) : 1;
    /* tfm_layernorm_backward's rows (accumulate 0), each value also dropped out. */
#pragma omp parallel for schedule(static) if((size_t)N * D >= (p > 0 ? PAR_MIN / 8 : PAR_MIN))
    for (int n = 0; n < N; n++) {
        size_t base = (size_t)n * D;
        const real *x = in + base, *dy = dout + base;
        real m = mean[n], s = rstd[n], mg, mgx;
        OPFN(tfm_layernorm_din_means)(&mg, &mgx, dy, x, w, m, s, D);
        real *dx = din + base, *dd = ddrop + base;
        if (p > 0) {
#pragma omp simd
            for (int i = 0; i < D; i++) {
                real xhat = (x[i] - m) * s;
                real v = s * (dy[i] * w[i] - mg - xhat * mgx);
                dx[i] = v;
                dd[i] = tfm_rng_uniform(seed, stream, base + i) >= p ? v * scale : 0;
            }
        } else {
            for (int i = 0; i < D; i++) {
                real xhat = (x[i] - m) * s;
                real v = s * (dy[i] * w[i] - mg - xhat * mgx);
                dx[i] = v;
                dd[i] = v;
            }
        }
    }
    /* The parameter gradients exactly as tfm_layernorm_backward sums them. */
    OPFN(tfm_layernorm_dparams)(dw, db, dout, in, mean, rstd, N, D);
}

TFM_CLONES void OPFN(tfm_activation_dropout_forward)(real *out, const real *in, size_t n,
                                                     tfm_act_kind kind, float p, uint64_t seed,
                                                     uint64_t stream) {
    if (p <= 0) {
        OPFN(tfm_activation_forward)(out, in, n, kind);
        return;
    }
    real scale = (real)(1.0 / (1.0 - p));
    if (kind == TFM_OP_RELU) {
#pragma omp parallel for simd schedule(static) if(n >= PAR_MIN / 8)
        for (size_t i = 0; i < n; i++) {
            real a = in[i] > 0 ? in[i] : 0;
            out[i] = tfm_rng_uniform(seed, stream, i) >= p ? a * scale : 0;
        }
    } else {
        /* A dropped element is 0 whatever GELU gives, so its erf is skipped. */
#pragma omp parallel for schedule(static) if(n >= PAR_MIN / 8)
        for (size_t i = 0; i < n; i++) {
            real x = in[i];
            if (tfm_rng_uniform(seed, stream, i) >= p) {
                real a = (real)0.5 * x * (1 + R_ERF(x * (real)0.70710678118654752440));
                out[i] = a * scale;
            } else {
                out[i] = 0;
            }
        }
    }
}

TFM_CLONES void OPFN(tfm_activation_dropout_backward)(real *din, const real *dout, const real *in,
                                                      size_t n, tfm_act_kind kind, float p,
                                                      uint64_t seed, uint64_t stream) {
    if (p <= 0) {
        OPFN(tfm_activation_backward)(din, dout, in, n, kind);
        return;
    }
    real scale = (real)(1.0 / (1.0 - p));
    if (kind == TFM_OP_RELU) {
#pragma omp parallel for simd schedule(static) if(n >= PAR_MIN / 8)
        for (size_t i = 0; i < n; i++) {
            real d = tfm_rng_uniform(seed, stream, i) >= p ? dout[i] * scale : 0;
            din[i] = in[i] > 0 ? d : 0;
        }
    } else {
        /* The product is formed for dropped elements too (0 times the
         * derivative): its sign and any NaN are the composition's. */
#pragma omp parallel for schedule(static) if(n >= PAR_MIN / 8)
        for (size_t i = 0; i < n; i++) {
            real x = in[i];
            real d = tfm_rng_uniform(seed, stream, i) >= p ? dout[i] * scale : 0;
            real cdf = (real)0.5 * (1 + R_ERF(x * (real)0.70710678118654752440));
            real pdf = R_EXP((real)-0.5 * x * x) * (real)0.39894228040143267794;
            din[i] = d * (cdf + x * pdf);
        }
    }
}
