/*
 * optim.c: Adam / AdamW and gradient clipping over one flat buffer (see optim.h).
 *
 * The scalars are prepared here; the loops are the optimizer ops of
 * src/ops/adam.c (or a backend's), element-wise except the norm, whose
 * reduction order is fixed by n alone.
 */
#include "train/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "ops/ops.h"


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

float tfm_grad_global_norm(const float *grad, size_t n) {
    TFM_ASSERT(grad != NULL || n == 0);
    return tfm_global_norm(grad, n);
}

float tfm_grad_clip(float *grad, size_t n, float max_norm) {
    TFM_ASSERT(max_norm > 0.0f);
    float norm = tfm_grad_global_norm(grad, n);
    float coef = tfm_clip_coef(norm, max_norm);
    if (coef < 1.0f) tfm_scale(grad, n, coef);
    return norm;
}

tfm_adam_coefs tfm_adam_coefs_at(const tfm_adam_params *p, long step, float lr) {
    TFM_ASSERT(p != NULL && step >= 1);
    const double beta1 = tfm_float_as_decimal(p->beta1), beta2 = tfm_float_as_decimal(p->beta2);
    const double dlr = tfm_float_as_decimal(lr), wd = tfm_float_as_decimal(p->weight_decay);
    const int adamw = p->kind == TFM_OPT_ADAMW;
    /* The scalars exactly as PyTorch rounds them: Python floats (double) cast
     * to float32 where a tensor op takes them as a Scalar. */
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    tfm_adam_coefs c = {
        .beta1 = p->beta1,
        .beta2 = p->beta2,
        .one_minus_beta1 = (float)(1.0 - beta1),           /* add_(g, alpha=1-beta1) */
        .one_minus_beta2 = (float)(1.0 - beta2),           /* addcmul_(value=1-beta2) */
        .eps = p->eps,
        .neg_step = (float)-(dlr / bc1),                   /* addcdiv_(value=-step_size) */
        .bc2_sqrt = (float)sqrt(bc2),                      /* math.sqrt(bias_correction2) */
        .decay = adamw ? (float)(1.0 - dlr * wd) : 1.0f,  /* param.mul_(1 - lr*wd) */
        .l2 = adamw ? 0.0f : p->weight_decay,              /* grad.add(param, alpha=wd) */
        .adamw = adamw,
    };
    return c;
}

void tfm_adam_step(const tfm_adam_params *p, float *param, const float *grad, float *m, float *v,
                   size_t n, long step, float lr) {
    TFM_ASSERT(n == 0 || (param && grad && m && v));
    tfm_adam_coefs c = tfm_adam_coefs_at(p, step, lr);
    tfm_adam_update(&c, param, grad, m, v, n);
}

void tfm_optim_step_on(const tfm_backend *be, const tfm_adam_params *p, float *param, float *grad, float *m,
                       float *v, size_t n, long step, float lr, float *norm_out) {
    TFM_ASSERT(be != NULL && p != NULL && norm_out != NULL);
    be->global_norm_to(norm_out, grad, n);
    tfm_adam_coefs c = tfm_adam_coefs_at(p, step, lr);
    be->adam_update_clipped(&c, param, grad, m, v, n, norm_out, p->clip_norm);
}

float tfm_optim_step(const tfm_adam_params *p, float *param, float *grad, float *m, float *v,
                     size_t n, long step, float lr) {
    float norm;
    tfm_optim_step_on(tfm_backend_cpu(), p, param, grad, m, v, n, step, lr, &norm);
    return norm;
}
