/*
 * optim.c: Adam / AdamW and gradient clipping over one flat buffer (see optim.h).
 *
 * Each loop is element-wise except the norm, whose reduction order is fixed by
 * n alone, so results do not depend on the number of OpenMP threads.
 */
#include "train/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

/* Below this many elements a parallel region costs more than it saves. */
#define TFM_OPTIM_PAR_MIN 16384

#ifdef _OPENMP
#define TFM_PRAGMA(x) _Pragma(#x)
#define TFM_OMP(x) TFM_PRAGMA(omp x)
#else
#define TFM_OMP(x)
#endif

void tfm_adam_default_params(tfm_adam_params *p) {
    TFM_ASSERT(p != NULL);
    p->kind = TFM_OPT_ADAM;
    p->beta1 = 0.9f;
    p->beta2 = 0.98f;
    p->eps = 1e-9f;
    p->weight_decay = 0.0f;
    p->clip_norm = 0.0f;
}

tfm_status tfm_adam_validate(const tfm_adam_params *p) {
    TFM_ASSERT(p != NULL);
    if (p->kind != TFM_OPT_ADAM && p->kind != TFM_OPT_ADAMW)
        return tfm_error(TFM_ERR_INVALID, "optimizer: kind: %d is not adam (0) or adamw (1)",
                         (int)p->kind);
    /* Written as !(ok) so that NaN fails too. */
    if (!(p->beta1 >= 0.0f && p->beta1 < 1.0f))
        return tfm_error(TFM_ERR_INVALID, "optimizer: beta1: %g must be in [0, 1)", p->beta1);
    if (!(p->beta2 >= 0.0f && p->beta2 < 1.0f))
        return tfm_error(TFM_ERR_INVALID, "optimizer: beta2: %g must be in [0, 1)", p->beta2);
    if (!(p->eps >= 0.0f && isfinite(p->eps)))
        return tfm_error(TFM_ERR_INVALID, "optimizer: eps: %g must be finite and >= 0", p->eps);
    if (!(p->weight_decay >= 0.0f && isfinite(p->weight_decay)))
        return tfm_error(TFM_ERR_INVALID, "optimizer: weight_decay: %g must be finite and >= 0",
                         p->weight_decay);
    if (!(p->clip_norm >= 0.0f && isfinite(p->clip_norm)))
        return tfm_error(TFM_ERR_INVALID,
                         "optimizer: clip_norm: %g must be finite and >= 0 (0 = no clipping)",
                         p->clip_norm);
    return TFM_OK;
}

static const char *const opt_names[] = {"adam", "adamw"};

tfm_status tfm_opt_kind_parse(const char *name, tfm_opt_kind *out) {
    TFM_ASSERT(name != NULL && out != NULL);
    for (int k = 0; k < 2; k++) {
        if (strcmp(name, opt_names[k]) == 0) {
            *out = (tfm_opt_kind)k;
            return TFM_OK;
        }
    }
    return tfm_error(TFM_ERR_INVALID, "optimizer: unknown optimizer '%s' (use adam or adamw)",
                     name);
}

const char *tfm_opt_kind_name(tfm_opt_kind kind) {
    return kind == TFM_OPT_ADAM ? opt_names[0] : kind == TFM_OPT_ADAMW ? opt_names[1] : "?";
}

/* A few snprintf calls; called a handful of times per step, never per element. */
double tfm_float_as_decimal(float x) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)x);
        double d = strtod(buf, NULL);
        if ((float)d == x) return d;
    }
    return (double)x; /* NaN */
}

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

float tfm_grad_global_norm(const float *grad, size_t n) {
    TFM_ASSERT(grad != NULL || n == 0);
    if (n == 0) return 0.0f;
    size_t chunk = (n + NORM_MAX_CHUNKS - 1) / NORM_MAX_CHUNKS;
    if (chunk < NORM_MIN_CHUNK) chunk = NORM_MIN_CHUNK;
    long nchunks = (long)((n + chunk - 1) / chunk);
    double partial[NORM_MAX_CHUNKS];
    TFM_OMP(parallel for schedule(static) if(nchunks > 1))
    for (long c = 0; c < nchunks; c++) {
        size_t lo = (size_t)c * chunk;
        size_t len = n - lo < chunk ? n - lo : chunk;
        partial[c] = sum_squares(grad + lo, len);
    }
    double total = 0;
    for (long c = 0; c < nchunks; c++) total += partial[c];
    return (float)sqrt(total);
}

float tfm_grad_clip(float *grad, size_t n, float max_norm) {
    TFM_ASSERT(max_norm > 0.0f);
    float norm = tfm_grad_global_norm(grad, n);
    /* clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6) in float32,
     * where float / tensor is tensor.reciprocal() * float. */
    float coef = (1.0f / (norm + 1e-6f)) * max_norm;
    if (coef < 1.0f) {
        TFM_OMP(parallel for simd schedule(static) if(n >= TFM_OPTIM_PAR_MIN))
        for (size_t i = 0; i < n; i++) grad[i] = grad[i] * coef;
    }
    return norm;
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

void tfm_adam_step(const tfm_adam_params *p, float *param, const float *grad, float *m, float *v,
                   size_t n, long step, float lr) {
    TFM_ASSERT(p != NULL && step >= 1);
    TFM_ASSERT(n == 0 || (param && grad && m && v));
    const double beta1 = tfm_float_as_decimal(p->beta1), beta2 = tfm_float_as_decimal(p->beta2);
    const double dlr = tfm_float_as_decimal(lr), wd = tfm_float_as_decimal(p->weight_decay);
    const int adamw = p->kind == TFM_OPT_ADAMW;

    /* The scalars exactly as PyTorch rounds them: Python floats (double) cast
     * to float32 where a tensor op takes them as a Scalar. */
    const float b1 = p->beta1, b2 = p->beta2, eps = p->eps;
    const float a1 = (float)(1.0 - beta1);                  /* add_(g, alpha=1-beta1) */
    const float a2 = (float)(1.0 - beta2);                  /* addcmul_(value=1-beta2) */
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const float neg_step = (float)-(dlr / bc1);             /* addcdiv_(value=-step_size) */
    const float bc2_sqrt = (float)sqrt(bc2);                /* math.sqrt(bias_correction2) */
    const float decay = adamw ? (float)(1.0 - dlr * wd) : 1.0f; /* param.mul_(1 - lr*wd) */
    const float l2 = adamw ? 0.0f : p->weight_decay;        /* grad.add(param, alpha=wd) */

    TFM_OMP(parallel for simd schedule(static) if(n >= TFM_OPTIM_PAR_MIN))
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

float tfm_optim_step(const tfm_adam_params *p, float *param, float *grad, float *m, float *v,
                     size_t n, long step, float lr) {
    TFM_ASSERT(p != NULL);
    float norm = p->clip_norm > 0.0f ? tfm_grad_clip(grad, n, p->clip_norm)
                                     : tfm_grad_global_norm(grad, n);
    if (!isfinite(norm)) return norm;
    tfm_adam_step(p, param, grad, m, v, n, step, lr);
    return norm;
}
