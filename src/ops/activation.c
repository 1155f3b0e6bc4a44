/*
 * activation.c: ReLU and GELU (the exact erf form, PyTorch's default), dropout
 * and the residual connection with dropout.
 *
 *   in, out, din, dout [n]   (any shape, flattened)
 *
 * Dropout draws keep/drop from the counter-based RNG (core/rng.h) as a pure
 * function of (seed, stream, element index): the backward regenerates the
 * mask instead of storing it, and results do not depend on the thread count.
 */
#include "ops/ops.h"

#include "core/rng.h"

/* Below about this much work (elements) a parallel region costs more than it
 * saves: a region costs microseconds, and decoding one sentence runs dozens
 * of ops over a single [1, D] row per token. Each element's arithmetic is
 * the same whether a loop runs in parallel or not, so results do not change. */
#ifndef PAR_MIN
#define PAR_MIN 16384
#endif

TFM_CLONES void OPFN(tfm_activation_forward)(real *out, const real *in, size_t n, tfm_act_kind kind) {
    if (kind == TFM_OP_RELU) {
#pragma omp parallel for simd schedule(static) if(n >= PAR_MIN)
        for (size_t i = 0; i < n; i++) out[i] = in[i] > 0 ? in[i] : 0;
    } else {
#pragma omp parallel for schedule(static) if(n >= PAR_MIN / 8) /* erf: ~8x the cost */
        for (size_t i = 0; i < n; i++) {
            real x = in[i];
            out[i] = (real)0.5 * x * (1 + R_ERF(x * (real)0.70710678118654752440));
        }
    }
}

TFM_CLONES void OPFN(tfm_activation_backward)(real *din, const real *dout, const real *in, size_t n,
                                   tfm_act_kind kind) {
    if (kind == TFM_OP_RELU) {
#pragma omp parallel for simd schedule(static) if(n >= PAR_MIN)
        for (size_t i = 0; i < n; i++) din[i] = in[i] > 0 ? dout[i] : 0;
    } else {
#pragma omp parallel for schedule(static) if(n >= PAR_MIN / 8) /* erf: ~8x the cost */
        for (size_t i = 0; i < n; i++) {
            real x = in[i];
            real cdf = (real)0.5 * (1 + R_ERF(x * (real)0.70710678118654752440));
            real pdf = R_EXP((real)-0.5 * x * x) * (real)0.39894228040143267794;
            din[i] = dout[i] * (cdf + x * pdf);
        }
    }
}

TFM_CLONES void OPFN(tfm_dropout)(real *out, const real *in, size_t n, float p, uint64_t seed,
                       uint64_t stream) {
    if (p <= 0) {
        if (out != in)
            for (size_t i = 0; i < n; i++) out[i] = in[i];
        return;
    }
    real scale = (real)(1.0 / (1.0 - p));
#pragma omp parallel for simd schedule(static) if(n >= PAR_MIN / 8) /* one hash per element */
    for (size_t i = 0; i < n; i++)
        out[i] = tfm_rng_uniform(seed, stream, i) >= p ? in[i] * scale : 0;
}

TFM_CLONES void OPFN(tfm_residual_dropout)(real *out, const real *x, const real *y, size_t n, float p,
                                uint64_t seed, uint64_t stream) {
    if (p <= 0) {
#pragma omp parallel for simd schedule(static) if(n >= PAR_MIN)
        for (size_t i = 0; i < n; i++) out[i] = x[i] + y[i];
        return;
    }
    real scale = (real)(1.0 / (1.0 - p));
#pragma omp parallel for simd schedule(static) if(n >= PAR_MIN / 8)
    for (size_t i = 0; i < n; i++)
        out[i] = x[i] + (tfm_rng_uniform(seed, stream, i) >= p ? y[i] * scale : 0);
}
