/* schedule.c: learning-rate schedules (formulas and PyTorch equivalents in schedule.h). */
#include "train/schedule.h"

#include <math.h>
#include <string.h>

#include "core/status.h"
#include "train/optim.h" /* tfm_float_as_decimal */

/* M_PI is not in ISO C. */
#define TFM_PI 3.14159265358979323846

static const char *const lr_names[] = {"noam", "cosine", "step", "exp", "constant", "inverse_sqrt"};
#define LR_KINDS ((int)(sizeof lr_names / sizeof lr_names[0]))

void tfm_lr_schedule_default(tfm_lr_schedule *s) {
    TFM_ASSERT(s != NULL);
    s->kind = TFM_LR_NOAM;
    s->lr = 1e-3f;
    s->factor = 1.0f;
    s->d_model = 512;
    s->warmup = 4000;
    s->total_steps = 100000;
    s->min_lr = 0.0f;
    s->gamma = 0.5f;
    s->step_size = 10000;
}

tfm_status tfm_lr_kind_parse(const char *name, tfm_lr_kind *out) {
    TFM_ASSERT(name != NULL && out != NULL);
    for (int k = 0; k < LR_KINDS; k++) {
        if (strcmp(name, lr_names[k]) == 0) {
            *out = (tfm_lr_kind)k;
            return TFM_OK;
        }
    }
    return tfm_error(TFM_ERR_INVALID,
                     "lr schedule: unknown schedule '%s' (use noam, cosine, step, exp, constant "
                     "or inverse_sqrt)",
                     name);
}

const char *tfm_lr_kind_name(tfm_lr_kind kind) {
    return (int)kind >= 0 && (int)kind < LR_KINDS ? lr_names[kind] : "?";
}

tfm_status tfm_lr_validate(const tfm_lr_schedule *s) {
    TFM_ASSERT(s != NULL);
    if ((int)s->kind < 0 || (int)s->kind >= LR_KINDS)
        return tfm_error(TFM_ERR_INVALID, "lr schedule: kind: %d is not a schedule", (int)s->kind);
    const char *name = lr_names[s->kind];
    if (s->warmup < 0)
        return tfm_error(TFM_ERR_INVALID, "lr schedule: warmup: %ld must be >= 0", s->warmup);
    /* Conditions are written as !(ok) so that NaN fails too. */
    if (s->kind == TFM_LR_NOAM) {
        if (!(s->factor > 0.0f && isfinite(s->factor)))
            return tfm_error(TFM_ERR_INVALID, "lr schedule: factor: %g must be finite and > 0",
                             s->factor);
        if (s->d_model < 1)
            return tfm_error(TFM_ERR_INVALID, "lr schedule: d_model: %d must be >= 1 for noam",
                             s->d_model);
    } else if (!(s->lr > 0.0f && isfinite(s->lr))) {
        return tfm_error(TFM_ERR_INVALID, "lr schedule: lr: %g must be finite and > 0", s->lr);
    }
    if ((s->kind == TFM_LR_NOAM || s->kind == TFM_LR_INVSQRT) && s->warmup < 1)
        return tfm_error(TFM_ERR_INVALID,
                         "lr schedule: warmup: %ld must be >= 1 for %s (its decay is scaled by "
                         "the warmup length)",
                         s->warmup, name);
    if (s->kind == TFM_LR_COSINE) {
        if (s->total_steps <= s->warmup)
            return tfm_error(TFM_ERR_INVALID,
                             "lr schedule: total_steps: %ld must be greater than warmup %ld for "
                             "cosine",
                             s->total_steps, s->warmup);
        if (!(s->min_lr >= 0.0f && s->min_lr <= s->lr))
            return tfm_error(TFM_ERR_INVALID, "lr schedule: min_lr: %g must be in [0, lr = %g]",
                             s->min_lr, s->lr);
    }
    if ((s->kind == TFM_LR_STEP || s->kind == TFM_LR_EXP) &&
        !(s->gamma > 0.0f && isfinite(s->gamma)))
        return tfm_error(TFM_ERR_INVALID, "lr schedule: gamma: %g must be finite and > 0 for %s",
                         s->gamma, name);
    if (s->kind == TFM_LR_STEP && s->step_size < 1)
        return tfm_error(TFM_ERR_INVALID, "lr schedule: step_size: %ld must be >= 1 for step",
                         s->step_size);
    return TFM_OK;
}

float tfm_lr_at(const tfm_lr_schedule *s, long step) {
    TFM_ASSERT(s != NULL && step >= 1);
    const double st = (double)step, w = (double)s->warmup;
    if (s->kind == TFM_LR_NOAM) {
        double rate = fmin(1.0 / sqrt(st), st * pow(w, -1.5));
        return (float)(tfm_float_as_decimal(s->factor) / sqrt((double)s->d_model) * rate);
    }
    /* Hyperparameters as the decimals the user wrote (see tfm_float_as_decimal):
     * with gamma = 0.99f instead of 0.99, gamma^500 would be off by 5e-6. */
    const double lr = tfm_float_as_decimal(s->lr);
    if (step <= s->warmup) return (float)(lr * st / w);
    const long e = step - 1 - s->warmup; /* epoch of the scheduler after warmup */
    switch (s->kind) {
    case TFM_LR_COSINE: {
        const long t = s->total_steps - s->warmup;
        if (e >= t) return s->min_lr;
        const double lo = tfm_float_as_decimal(s->min_lr);
        return (float)(lo + (lr - lo) * (1.0 + cos(TFM_PI * (double)e / (double)t)) / 2.0);
    }
    case TFM_LR_STEP:
        return (float)(lr * pow(tfm_float_as_decimal(s->gamma), (double)(e / s->step_size)));
    case TFM_LR_EXP: return (float)(lr * pow(tfm_float_as_decimal(s->gamma), (double)e));
    case TFM_LR_CONSTANT: return s->lr;
    case TFM_LR_INVSQRT: return (float)(lr * sqrt(w / st));
    case TFM_LR_NOAM: break;
    }
    TFM_ASSERT(!"tfm_lr_at: invalid kind (call tfm_lr_validate first)");
    return 0.0f;
}
