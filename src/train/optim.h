/*
 * optim.h: Adam / AdamW and global-norm gradient clipping over one flat buffer.
 *
 * Every model parameter lives in ONE float buffer; its gradient and the two
 * Adam moments live in buffers of the same layout. The optimizer is therefore a
 * flat element-wise loop over n floats and knows nothing about tensors.
 *
 * The arithmetic is PyTorch's single-tensor path (torch.optim.Adam / AdamW with
 * foreach=False, amsgrad=False, maximize=False) in float32, operation for
 * operation, as written in torch/optim/adam.py and adamw.py of torch 1.13:
 *
 *   Adam:   g  = g + wd * p                           (L2, only when wd != 0)
 *   AdamW:  p  = p * (1 - lr * wd)                    (decoupled, before the moments)
 *   both:   m  = m * beta1 + (1 - beta1) * g          (exp_avg.mul_(b1).add_(g, alpha=1-b1))
 *           v  = v * beta2 + (1 - beta2) * g * g      (exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2))
 *           bc1 = 1 - beta1^step,  bc2 = 1 - beta2^step   (double, step 1-based)
 *           denom = sqrt(v) / sqrt(bc2) + eps
 *           p  = p + (-lr / bc1) * m / denom          (param.addcdiv_(m, denom, value=-step_size))
 *
 * PyTorch's AVX2 kernels round g + wd*p, the m update and the v update with one
 * fused multiply-add each; so do we where the build has hardware FMA
 * (FP_FAST_FMAF, e.g. TFM_NATIVE=ON), and then parameters and moments agree
 * with torch 1.13 bit for bit. Without it they differ by about one ulp per step
 * (measured: 2e-7 relative on the moments, 1e-7 on parameters). Newer PyTorch
 * (>= 2.0) writes the first moment as exp_avg.lerp_(g, 1-beta1), also an ulp away.
 *
 * Scalar coefficients (1 - beta, bias corrections, lr / bc1, 1 - lr*wd) are
 * computed in double and rounded to float once, as PyTorch does with Python
 * floats. Hyperparameters are stored as float; each is read back as the
 * shortest decimal that rounds to it (0.98f is used as 0.98, as the user wrote
 * it), so 1 - beta2 agrees with PyTorch's (1 - 0.98) exactly rather than to 1e-6.
 *
 * Not here: AMSGrad, maximize, fused/foreach kernels, per-tensor weight-decay
 * exclusion (decay applies to every element of the buffer), mixed precision.
 * Every function is deterministic at any OpenMP thread count.
 */
#ifndef TFM_TRAIN_OPTIM_H
#define TFM_TRAIN_OPTIM_H

#include <stddef.h>

#include "backend/backend.h"
#include "transformer.h"

typedef enum tfm_opt_kind {
    TFM_OPT_ADAM = 0,  /* torch.optim.Adam: weight decay is an L2 term added to the gradient */
    TFM_OPT_ADAMW = 1, /* torch.optim.AdamW: decoupled weight decay p *= 1 - lr*wd */
} tfm_opt_kind;

typedef struct tfm_adam_params {
    tfm_opt_kind kind;
    float beta1;        /* first-moment decay, in [0, 1) */
    float beta2;        /* second-moment decay, in [0, 1) */
    float eps;          /* added to sqrt(v_hat); >= 0 */
    float weight_decay; /* >= 0; its meaning depends on kind (above) */
    float clip_norm;    /* global L2 norm to clip gradients to; 0 = no clipping.
                           tfm_adam_step never reads it: the caller clips with
                           tfm_grad_clip, or calls tfm_optim_step which does both. */
} tfm_adam_params;

/* The paper's settings (section 5.3): Adam, beta1 0.9, beta2 0.98, eps 1e-9,
 * no weight decay, no clipping. */
void tfm_adam_default_params(tfm_adam_params *p);

/* Checks every field; on failure returns TFM_ERR_INVALID with a message naming
 * the field, e.g. "adam: beta2: 1 must be in [0, 1)". */
tfm_status tfm_adam_validate(const tfm_adam_params *p);

/* "adam" / "adamw" <-> kind. Parse returns TFM_ERR_INVALID for another name,
 * with a message listing the valid ones; name returns "?" for a bad kind. */
tfm_status tfm_opt_kind_parse(const char *name, tfm_opt_kind *out);
const char *tfm_opt_kind_name(tfm_opt_kind kind);

/* The L2 norm of grad[0..n) as one vector, accumulated in double and rounded
 * to float. The buffer is cut into chunks whose size depends only on n, each
 * chunk is summed serially, and the chunk sums are added in order: the result
 * is the same bit for bit at any thread count. NaN/Inf in grad give NaN/Inf. */
float tfm_grad_global_norm(const float *grad, size_t n);

/* torch.nn.utils.clip_grad_norm_(params, max_norm) over the whole buffer:
 * coef = max_norm / (norm + 1e-6); when coef < 1 every gradient is multiplied
 * by coef, otherwise grad is left untouched (PyTorch multiplies by the clamped
 * coefficient 1.0, which is the same). Returns the norm BEFORE clipping, so
 * the caller can log it, and can skip the step when it is not finite (a NaN
 * norm leaves grad untouched; an infinite one scales it by 0, as PyTorch).
 * max_norm must be > 0. */
float tfm_grad_clip(float *grad, size_t n, float max_norm);

/* One Adam/AdamW update of param[0..n) in place, with the moments m and v
 * (same layout, zeroed before the first step) updated in place. `step` is the
 * 1-based count of updates including this one (it sets the bias correction);
 * `lr` is this step's learning rate (e.g. from tfm_lr_at). p->clip_norm is
 * ignored. The arrays must not overlap. Element-wise, so deterministic. */
void tfm_adam_step(const tfm_adam_params *p, float *param, const float *grad, float *m, float *v,
                   size_t n, long step, float lr);

/* The trainer's whole update: when p->clip_norm > 0 clips grad in place with
 * tfm_grad_clip, then calls tfm_adam_step. Returns the gradient norm before
 * clipping (computed even when clipping is off, for logging). When that norm
 * is not finite it returns it WITHOUT touching param, m or v, so one bad batch
 * does not poison the moments; the caller decides whether to stop. */
float tfm_optim_step(const tfm_adam_params *p, float *param, float *grad, float *m, float *v,
                     size_t n, long step, float lr);

/* The scalars of one update (step 1-based, lr this step's rate), rounded as
 * PyTorch rounds them; the loop is tfm_adam_update (src/ops) or a backend's. */
tfm_adam_coefs tfm_adam_coefs_at(const tfm_adam_params *p, long step, float lr);

/* tfm_optim_step on a backend's buffers (param, grad, m, v and norm_out are
 * its memory), queued without waiting: the gradient norm before clipping
 * lands in *norm_out (one float), where the update reads it; grad's contents
 * are unspecified afterwards. The caller downloads the norm when it wants it. */
void tfm_optim_step_on(const tfm_backend *be, const tfm_adam_params *p, float *param, float *grad, float *m,
                       float *v, size_t n, long step, float lr, float *norm_out);

/* The shortest decimal that rounds to x, as a double: 0.98f -> 0.98, 1e-3f ->
 * 0.001. PyTorch forms 1 - beta2, lr / bc1, gamma^e and friends in double from
 * the Python float the user wrote; (double)0.98f = 0.98000001907 would make
 * 1 - beta2 wrong by 1e-6 relative. The result is within half a float ulp of x,
 * so nothing is lost when x did not come from a decimal. NaN/Inf map to
 * themselves. Used by the optimizer and the LR schedules. */
double tfm_float_as_decimal(float x);

#endif
