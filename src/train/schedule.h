/*
 * schedule.h: learning-rate schedules, as pure functions of the step number.
 *
 * tfm_lr_at(s, step) is the learning rate of optimizer step `step` (1-based: the
 * first update is step 1). It equals what PyTorch's scheduler holds in
 * optimizer.param_groups[0]["lr"] before the step-th optimizer.step() when
 * scheduler.step() is called once after every optimizer step, i.e. at the
 * scheduler's epoch `step - 1`. Computed in double, returned as float.
 *
 * Notation: s = step, w = warmup, lr = s->lr, T = total_steps - w,
 * e = s - 1 - w (the epoch of the scheduler that takes over after warmup).
 *
 *   NOAM        factor * d_model^-0.5 * min(s^-0.5, s * w^-1.5)     (paper 5.3; ignores lr)
 *               = LambdaLR(opt with lr 1, lambda e: factor * d_model**-0.5 *
 *                          min((e+1)**-0.5, (e+1) * w**-1.5))
 *
 * Every other kind starts with an optional linear warmup from 0 to lr:
 *   s <= w:     lr * s / w                   = LambdaLR(lambda e: (e+1) / w)
 * and after it (s > w, or always when w = 0):
 *   COSINE      min_lr + (lr - min_lr) * (1 + cos(pi * e / T)) / 2   while e <= T,
 *               min_lr after (e > T, i.e. from step total_steps + 1 on)
 *               = CosineAnnealingLR(T_max=T, eta_min=min_lr) at epoch e, joined to the
 *                 warmup by SequentialLR(milestones=[w]); PyTorch's cosine is periodic
 *                 beyond T_max, ours holds min_lr. The warmup reaches lr at s = w and the
 *                 cosine starts from lr at s = w + 1, as SequentialLR does.
 *   STEP        lr * gamma^floor(e / step_size)    = StepLR(step_size, gamma) at epoch e
 *   EXP         lr * gamma^e                       = ExponentialLR(gamma) at epoch e
 *   CONSTANT    lr                                 = no scheduler (LambdaLR(lambda e: 1))
 *   INVSQRT     lr * sqrt(w / s)                   fairseq's inverse_sqrt (warmup_init_lr 0):
 *               = LambdaLR(lambda e: min((e+1) / w, (w / (e+1))**0.5)); continuous at s = w
 *
 * With w = 0 the first step uses lr itself (StepLR/ExponentialLR/CosineAnnealingLR
 * at epoch 0). Fields a kind does not use are ignored and not validated.
 */
#ifndef TFM_TRAIN_SCHEDULE_H
#define TFM_TRAIN_SCHEDULE_H

#include "transformer.h"

typedef enum tfm_lr_kind {
    TFM_LR_NOAM = 0,     /* "noam": the paper's warmup + inverse square root, scaled by d_model */
    TFM_LR_COSINE = 1,   /* "cosine": warmup, cosine decay to min_lr over total_steps, then min_lr */
    TFM_LR_STEP = 2,     /* "step": warmup, then multiply by gamma every step_size steps */
    TFM_LR_EXP = 3,      /* "exp": warmup, then multiply by gamma every step */
    TFM_LR_CONSTANT = 4, /* "constant": warmup, then lr */
    TFM_LR_INVSQRT = 5,  /* "inverse_sqrt": warmup to lr, then lr * sqrt(warmup / step) */
} tfm_lr_kind;

typedef struct tfm_lr_schedule {
    tfm_lr_kind kind;
    float lr;          /* peak learning rate (all but noam); > 0 */
    float factor;      /* noam: scale of the formula; > 0 */
    int d_model;       /* noam: model width; >= 1 */
    long warmup;       /* warmup steps; >= 0, and >= 1 for noam and inverse_sqrt */
    long total_steps;  /* cosine: the decay ends after this step; > warmup */
    float min_lr;      /* cosine: the floor; in [0, lr] */
    float gamma;       /* step, exp: decay factor; > 0 */
    long step_size;    /* step: decay every step_size steps; >= 1 */
} tfm_lr_schedule;

/* The paper: noam with factor 1, d_model 512, warmup 4000. The other fields get
 * usable values for when only the kind is changed: lr 1e-3, total_steps
 * 100000, min_lr 0, gamma 0.5, step_size 10000. */
void tfm_lr_schedule_default(tfm_lr_schedule *s);

/* Checks the fields the kind uses. On failure returns TFM_ERR_INVALID with a
 * message naming the field, e.g.
 * "lr schedule: total_steps: 100 must be greater than warmup 4000 for cosine". */
tfm_status tfm_lr_validate(const tfm_lr_schedule *s);

/* The learning rate of 1-based optimizer step `step` (>= 1, asserted) under a
 * schedule that passed tfm_lr_validate. Pure; safe from any thread. */
float tfm_lr_at(const tfm_lr_schedule *s, long step);

/* CLI names "noam", "cosine", "step", "exp", "constant", "inverse_sqrt" <-> kind.
 * Parse returns TFM_ERR_INVALID for another name, with a message listing the
 * valid ones; name returns "?" for a kind out of range. */
tfm_status tfm_lr_kind_parse(const char *name, tfm_lr_kind *out);
const char *tfm_lr_kind_name(tfm_lr_kind kind);

#endif
