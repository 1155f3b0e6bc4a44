/*
 * adam.c: the optimizer's element-wise ops over the flat parameter buffer:
 * the global L2 norm, scaling, and one Adam/AdamW update.
 *
 *   param, grad, m, v [n]   (one buffer each, laid out like the parameters)
 *
 * The scalar coefficients are prepared by src/train/optim.c exactly as
 * PyTorch rounds them (tfm_adam_coefs); this file is only the loops, so that a
 * backend (CUDA) can run the same arithmetic. Every loop is element-wise
 * except the norm, whose reduction order depends on n alone: results do not
 * depend on the number of OpenMP threads.
 */
#include "ops/ops.h"

#include <math.h>

/* Below this many elements a parallel region costs more than it saves. */
#define PAR_MIN 16384

#ifdef _OPENMP
#define TFM_PRAGMA(x) _Pragma(#x)
#define TFM_OMP(x) TFM_PRAGMA(omp x)
#else
#define TFM_OMP(x)
#endif

/* Chunks of the norm's reduction: their size depends on n only. */
#define NORM_MAX_CHUNKS 256
#define NORM_MIN_CHUNK 8192

/* Sum of squares of x[0..n) in double, four interleaved accumulators (a fixed
 * order, only to shorten the dependency chain). */
static double sum_squares(const float *x, size_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++) s0 += (double)x[i] * x[i];
    return (s0 + s1) + (s2 + s3);
}

float tfm_global_norm(const float *x, size_t n) {
    if (n == 0) return 0.0f;
    size_t chunk = (n + NORM_MAX_CHUNKS - 1) / NORM_MAX_CHUNKS;
    if (chunk < NORM_MIN_CHUNK) chunk = NORM_MIN_CHUNK;
    long nchunks = (long)((n + chunk - 1) / chunk);
    double partial[NORM_MAX_CHUNKS];
    TFM_OMP(parallel for schedule(static) if(nchunks > 1))
    for (long c = 0; c < nchunks; c++) {
        size_t lo = (size_t)c * chunk;
        size_t len = n - lo < chunk ? n - lo : chunk;
        partial[c] = sum_squares(x + lo, len);
    }
    double total = 0;
    for (long c = 0; c < nchunks; c++) total += partial[c];
    return (float)sqrt(total);
}

TFM_CLONES_F32 void tfm_scale(float *x, size_t n, float s) {
    TFM_OMP(parallel for simd schedule(static) if(n >= PAR_MIN))
    for (size_t i = 0; i < n; i++) x[i] = x[i] * s;
}

TFM_CLONES_F32 void tfm_add(float *y, const float *x, size_t n) {
    TFM_OMP(parallel for simd schedule(static) if(n >= PAR_MIN))
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* a*b + c. PyTorch's AVX2 kernels compute add_(x, alpha) and addcmul_ with one
 * fused multiply-add (GCC contracts its vector intrinsics); where this build
 * has hardware FMA (FP_FAST_FMAF, e.g. TFM_NATIVE=ON) we do too and the moments
 * agree bit for bit. Otherwise two roundings: within an ulp, a 1e-7 relative
 * difference. Never a libm call in the loop. */
static inline float madd(float a, float b, float c) {
#ifdef FP_FAST_FMAF
    return fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

TFM_CLONES_F32 void tfm_adam_update(const tfm_adam_coefs *c, float *param, const float *grad, float *m, float *v,
                     size_t n) {
    const float b1 = c->beta1, b2 = c->beta2, a1 = c->one_minus_beta1, a2 = c->one_minus_beta2;
    const float eps = c->eps, neg_step = c->neg_step, bc2_sqrt = c->bc2_sqrt, decay = c->decay, l2 = c->l2;
    const int adamw = c->adamw;
    TFM_OMP(parallel for simd schedule(static) if(n >= PAR_MIN))
    for (size_t i = 0; i < n; i++) {
        float w = param[i], g = grad[i];
        if (adamw) w = w * decay;
        else if (l2 != 0.0f) g = madd(l2, w, g);
        float mi = madd(a1, g, m[i] * b1);
        float vi = madd(a2 * g, g, v[i] * b2);
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        param[i] = w + (neg_step * mi) / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

void tfm_adam_update_clipped(const tfm_adam_coefs *c, float *param, float *grad, float *m, float *v, size_t n,
                             float norm, float clip_norm) {
    if (!isfinite(norm)) return;
    if (clip_norm > 0.0f) {
        float coef = tfm_clip_coef(norm, clip_norm);
        if (coef < 1.0f) tfm_scale(grad, n, coef);
    }
    tfm_adam_update(c, param, grad, m, v, n);
}
