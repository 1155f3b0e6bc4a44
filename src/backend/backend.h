/*
 * backend.h: the backend table: every op the model runs, as function
 * pointers with the contracts of src/ops/ops.h (float versions).
 *
 * The model, the decoder and beam search call ops only through
 * `model->be`, so another backend (the CUDA one) plugs in by filling the same
 * table with its kernels; `supports` lets a backend decline a configuration
 * (ggml's "supports op" query). The CPU backend is the reference ops
 * themselves.
 *
 * Memory: every pointer an op receives is the backend's memory, from its
 * `alloc` (parameters, gradients, moments, activations, token ids, masks,
 * positions). The host moves data in and out with `upload` and `download`.
 * `host_memory` says the backend's memory is ordinary host memory (the CPU
 * backend), so callers may read it directly and skip a staging copy.
 * Ops are queued in order on the backend's one stream; only `download`,
 * `global_norm`, `xent_forward` (it returns the loss) and `sync` wait for
 * the queued work. A training step waits once, at its end (the trainer
 * downloads its loss and gradient norm): its loss, norm and clipped update go
 * through xent_forward_acc, global_norm_to and adam_update_clipped, which
 * leave their results in backend memory.
 */
#ifndef TFM_BACKEND_BACKEND_H
#define TFM_BACKEND_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "ops/ops.h"
#include "transformer.h"

/* The arithmetic of a backend's GEMMs. Storage is fp32 in every mode. */
typedef enum tfm_matmul_precision {
    TFM_MATMUL_FP32 = 0,  /* fp32 products and sums: the CPU's results within 1e-4 (the default) */
    TFM_MATMUL_TF32 = 1,  /* operands rounded to tf32 (10-bit mantissa) on tensor cores, fp32 sums */
    TFM_MATMUL_BF16 = 2,  /* operands rounded to bf16 (7-bit mantissa) on tensor cores, fp32 sums */
} tfm_matmul_precision;

typedef struct tfm_backend {
    const char *name;
    /* Whether this backend runs every op a model of this configuration needs. */
    int (*supports)(const tfm_config *cfg);
    int host_memory;
    /* Sets the arithmetic of the GEMMs from now on; 0 when this backend has
     * no such mode (the CPU runs fp32 only). */
    int (*set_matmul_precision)(tfm_matmul_precision p);

    /* ---- memory ---- */
    /* `bytes` of zero-filled memory; NULL when out of memory. */
    void *(*alloc)(size_t bytes);
    void (*free)(void *p);                                          /* NULL is fine */
    void (*upload)(void *dst, const void *src_host, size_t bytes);     /* host -> backend */
    void (*download)(void *dst_host, const void *src, size_t bytes);   /* backend -> host */
    void (*copy)(void *dst, const void *src, size_t bytes);            /* backend -> backend */
    void (*zero)(void *dst, size_t bytes);
    void (*sync)(void);                     /* waits for every queued op */
    /* Strided rows: for r < rows, dst[r*dst_row + i] = src[r*src_row + i], i < width
     * (floats; the KV cache append). */
    void (*copy_rows)(float *dst, long dst_row, const float *src, long src_row, size_t width, int rows);
    /* Gather: for r < n, dst[r*row + i] = src[from[r]*row + i], i < width
     * (floats; from[n] is backend memory; dst and src do not overlap; beam
     * search reordering the KV cache). */
    void (*gather_rows)(float *dst, const float *src, long row, size_t width, const int32_t *from, int n);
    /* out[n] = the v < V with the largest x[n, v], skipping the ids skip_a,
     * skip_b and skip_c (-1: none); the lowest such v on ties. out[N] is
     * backend memory (greedy decoding without bringing the logits back). */
    void (*argmax_rows)(int32_t *out, const float *x, int N, int V, int skip_a, int skip_b, int skip_c);
    /* tfm_topk_logprobs (ops.h): each row's k best ids and log-probabilities
     * (beam search: only N x k candidates leave a device, not N x V logits). */
    void (*topk_logprobs)(int32_t *ids, float *vals, const float *x, int N, int V, int k, int skip_a, int skip_b,
                          int skip_c);

    /* The model's parameters params[n] (backend memory) are about to be read
     * by a forward and its backward: a backend may keep a lower-precision
     * copy of them for its products (CUDA in BF16 mode: a bf16 copy, made
     * here when it is not current, kept current by the Adam updates of that
     * buffer, and dropped by every other write into it through this table:
     * upload, copy, zero, scale, add, copy_rows, gather_rows). A product
     * reads the copy only while it is current, so a weight changed by any of
     * those is never read stale. The CPU keeps nothing. */
    void (*params_lowp)(const float *params, size_t n);

    /* ---- recorded steps (CUDA graphs); NULL on a backend without them ----
     * Between graph_begin and graph_end the backend records the ops it is
     * given instead of running them; graph_end returns the recording, or NULL
     * when it could not make one (nothing ran then: run the ops again
     * directly). graph_launch runs a recording: 1, or 0 when the backend's
     * state no longer fits it (its buffers moved, its precision changed:
     * free it and record again). Only ops that neither copy between host and
     * device nor wait may be recorded. Recorded ops read two per-step values
     * from the backend's memory instead of their arguments, as of each run:
     * the dropout seed and the scale of the loss gradient (logits_backward),
     * both set by step_values before the recording and before each run;
     * a recording whose ops would need any other per-step value (a dropout
     * the backend cannot draw from the seed's slot) is refused (NULL). */
    int (*graph_begin)(void);
    void *(*graph_end)(void);
    int (*graph_launch)(void *graph);
    void (*graph_free)(void *graph);
    void (*step_values)(uint64_t seed, float loss_scale);

    /* ---- flat buffers (optimizer, residual sums): src/ops/adam.c ---- */
    float (*global_norm)(const float *x, size_t n);   /* sqrt(sum x^2); waits */
    void (*scale)(float *x, size_t n, float s);      /* x *= s */
    void (*add)(float *y, const float *x, size_t n); /* y += x */
    void (*adam_update)(const tfm_adam_coefs *c, float *param, const float *grad, float *m, float *v,
                        size_t n);
    /* Without waiting: *norm_out (one float of backend memory) = global_norm(x, n). */
    void (*global_norm_to)(float *norm_out, const float *x, size_t n);
    /* tfm_adam_update_clipped (ops.h) with the norm read from backend memory
     * (global_norm_to's), without waiting; grad's contents are unspecified on
     * return (the CPU scales it in place, CUDA scales as it reads). */
    void (*adam_update_clipped)(const tfm_adam_coefs *c, float *param, float *grad, float *m, float *v, size_t n,
                                const float *norm, float clip_norm);

    /* ---- ops: contracts in src/ops/ops_decl.h ---- */
    void (*gemm)(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);
    void (*linear_forward)(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                           int n_out);
    void (*linear_backward)(float *din, float *dw, float *db, const float *dout, const float *in,
                            const float *w, int N, int n_in, int n_out, int accumulate);
    /* The same two with a kept copy of `in` for the backward (a training
     * step's linears whose input stays until the backward): keep is backend
     * memory of linear_keep_bytes(N, n_in, n_out) bytes, or NULL (where that
     * is 0); linear_forward_keep may leave in it the form of `in` its
     * backward's weight-gradient product reads (CUDA in BF16 mode: the bf16
     * copy its own product multiplies), which linear_backward_kept then
     * reads instead of converting `in` again. Results: linear_forward's and
     * linear_backward's; the pair must run in the same matmul precision, on
     * the same `in`, with nothing else writing keep in between.
     * keep_filled = 1 says that keep already holds that form of this `in`
     * (unchanged since it was made) for these N and n_in: left there by an
     * earlier linear_forward_keep of the same sizes (several linears of one
     * input share one keep: the decoder layers' cross-attention keys and
     * values of the encoder output), or by a residual_dropout_layernorm that
     * was given keep and returned 1; the backend may then use it as it is. */
    size_t (*linear_keep_bytes)(int N, int n_in, int n_out);
    void (*linear_forward_keep)(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                                int n_out, void *keep, int keep_filled);
    void (*linear_backward_kept)(float *din, float *dw, float *db, const float *dout, const float *in,
                                 const void *keep, const float *w, int N, int n_in, int n_out, int accumulate);
    void (*embedding_forward)(float *out, const int32_t *ids, const float *table, int N, int D, float scale);
    void (*embedding_backward)(float *dtable, const float *dout, const int32_t *ids, int N, int D,
                               float scale);
    void (*positions_forward)(float *x, const float *table, const int32_t *pos, int N, int D);
    void (*positions_backward)(float *dtable, const float *dx, const int32_t *pos, int N, int D);
    void (*rope)(float *x, long row, const int32_t *pos, int N, int H, int dk, double theta, int inverse);
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *in, const float *w,
                              const float *b, int N, int D, float eps);
    void (*layernorm_backward)(float *din, float *dw, float *db, const float *dout, const float *in,
                               const float *mean, const float *rstd, const float *w, int N, int D,
                               int accumulate);
    void (*activation_forward)(float *out, const float *in, size_t n, tfm_act_kind kind);
    void (*activation_backward)(float *din, const float *dout, const float *in, size_t n, tfm_act_kind kind);
    void (*dropout)(float *out, const float *in, size_t n, float p, uint64_t seed, uint64_t stream);
    void (*residual_dropout)(float *out, const float *x, const float *y, size_t n, float p, uint64_t seed,
                             uint64_t stream);
    /* Fused element-wise ops (ops_decl.h, src/ops/fused.c): the compositions'
     * results in one pass. residual_dropout_layernorm's ln_keep: NULL, or the
     * keep (linear_keep_bytes(N, D, n_out) bytes) of the linear_forward_keep
     * that reads ln next; the op may also leave in it the form of ln that
     * linear would (CUDA in BF16 mode: the bf16 copy, written as the rows are
     * normalised, which saves that linear a pass over ln) and returns 1 if it
     * did, 0 if it left keep as it was (the CPU: always). */
    int (*residual_dropout_layernorm)(float *res, float *ln, float *mean, float *rstd, const float *x,
                                      const float *y, const float *w, const float *b, int N, int D, float eps,
                                      float p, uint64_t seed, uint64_t stream, void *ln_keep);
    void (*layernorm_backward_dropout)(float *din, float *ddrop, float *dw, float *db, const float *dout,
                                       const float *in, const float *mean, const float *rstd, const float *w,
                                       int N, int D, float p, uint64_t seed, uint64_t stream);
    void (*activation_dropout_forward)(float *out, const float *in, size_t n, tfm_act_kind kind, float p,
                                       uint64_t seed, uint64_t stream);
    void (*activation_dropout_backward)(float *din, const float *dout, const float *in, size_t n,
                                        tfm_act_kind kind, float p, uint64_t seed, uint64_t stream);
    /* The position-wise feed-forward network as one op each way: exactly the
     * compositions
     *   ffn_forward:  linear_forward(hidden, in, w1, b1, N, D, F);
     *                 activation_dropout_forward(act, hidden, N*F, kind, p, seed, stream);
     *                 linear_forward(out, act, w2, b2, N, F, D);
     *   ffn_backward: linear_backward(dact, dw2, db2, dout, act, w2, N, F, D, 0);
     *                 activation_dropout_backward(dact, dact, hidden, N*F, kind, p, seed, stream);
     *                 linear_backward(din, dw1, db1, dact, in, w1, N, D, F, accumulate);
     * (in [N,D], w1 [F,D], b1 [F], w2 [D,F], b2 [D], out and dout [N,D]).
     * hidden[N,F] and act[N,F] are the forward's saved state and only
     * ffn_backward reads them: a backend may keep them in a format of its own
     * (CUDA in BF16 mode: the bf16 activation, a ReLU mask and a bf16 copy of
     * `in`, written by the GEMMs' epilogues). dact[N,F] is the backward's
     * scratch; on return its contents are unspecified.
     * ffn_in_keep: where, inside hidden and act, ffn_forward with these
     * arguments keeps the form of `in` its backward reads, laid out as a
     * linear's keep (linear_keep_bytes(N, D, F)), or NULL (the CPU; CUDA
     * outside its fused path). A producer of `in` may fill it
     * (residual_dropout_layernorm's ln_keep); ffn_forward called with
     * in_filled = 1 then takes it as it is instead of converting `in`. */
    void (*ffn_forward)(float *out, float *hidden, float *act, const float *in, const float *w1, const float *b1,
                        const float *w2, const float *b2, int N, int D, int F, tfm_act_kind kind, float p,
                        uint64_t seed, uint64_t stream, int in_filled);
    void *(*ffn_in_keep)(float *hidden, float *act, int N, int D, int F, tfm_act_kind kind, float p);
    void (*ffn_backward)(float *din, float *dw1, float *db1, float *dw2, float *db2, float *dact, const float *dout,
                         const float *in, const float *hidden, const float *act, const float *w1, const float *w2,
                         int N, int D, int F, tfm_act_kind kind, float p, uint64_t seed, uint64_t stream,
                         int accumulate);
    void (*attention_forward)(float *out, float *probs, float *scratch, const float *q, const float *k,
                              const float *v, const tfm_attn_dims *d);
    void (*attention_backward)(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               const float *probs, const float *q, const float *k, const float *v,
                               const tfm_attn_dims *d);
    /* Tiled attention (ops_decl.h): lse[B, H, Tq] instead of probabilities,
     * memory linear in length. attention_tiled_scratch: floats of scratch for
     * d's sizes. attention_tiled_preferred: whether this backend runs the
     * tiled ops faster than the materialised ones at d's sizes (the workspace
     * also takes them, whatever this says, where probabilities would not fit). */
    size_t (*attention_tiled_scratch)(const tfm_attn_dims *d);
    int (*attention_tiled_preferred)(const tfm_attn_dims *d);
    /* Returns 1 when it also filled d->out_keep (ops.h), 0 otherwise (the CPU: always). */
    int (*attention_tiled_forward)(float *out, float *lse, float *scratch, size_t scratch_len, const float *q,
                                   const float *k, const float *v, const tfm_attn_dims *d);
    void (*attention_tiled_backward)(float *dq, float *dk, float *dv, float *scratch, size_t scratch_len,
                                     const float *dout, const float *out, const float *lse, const float *q,
                                     const float *k, const float *v, const tfm_attn_dims *d);
    double (*xent_forward)(float *lse, const float *logits, const int32_t *targets, int N, int V, int pad_id,
                           float smoothing, long *count);
    /* xent_forward without waiting: adds the summed loss to *loss_acc (one
     * double of backend memory); the caller counts the non-pad targets. */
    void (*xent_forward_acc)(float *lse, const float *logits, const int32_t *targets, int N, int V, int pad_id,
                             float smoothing, double *loss_acc);
    void (*xent_backward)(float *dlogits, const float *logits, const float *lse, const int32_t *targets, int N,
                          int V, int pad_id, float smoothing, float scale);
    /* A training forward's end, the logits and their loss, as one op: the
     * composition
     *   linear_forward(logits, in, w, NULL, N, D, V);
     *   xent_forward_acc(lse, logits, targets, N, V, pad_id, smoothing, loss_acc);
     * except that logits[N,V] is left in a format of the backend's own, which
     * only logits_backward reads, and may overwrite (called with packed = 1:
     * the logits are consumed; one backward per forward): the CPU writes the
     * fp32 logits; CUDA in BF16 mode writes bf16 logits with rows padded to a
     * multiple of 64 (the product's output and the loss's input at half the
     * bytes, and a vocabulary the tensor-core tiles divide). A backend may
     * also leave lse and the loss to that backward (CUDA in BF16 mode: one
     * read of the logits gives the loss and the gradient): the loss then
     * reaches *loss_acc when logits_backward returns, not before, lse is
     * left unwritten, and loss_acc must stay valid until then. */
    void (*logits_loss_forward)(float *logits, float *lse, double *loss_acc, const float *in, const float *w,
                                const int32_t *targets, int N, int D, int V, int pad_id, float smoothing);
    /* The logits' backward, the end of a training step's: the composition
     *   xent_backward(dlogits, logits, lse, targets, N, V, pad_id, smoothing, scale);
     *   linear_backward(din, dw, NULL, dlogits, in, w, N, D, V, accumulate);
     * i.e. dlogits[N,V] = scale * (softmax - smoothed one-hot), zero on pad
     * rows (dlogits may alias logits), then din[N,D] (= or += when
     * accumulate) dlogits w[V,D] and dw[V,D] += dlogits^T in[N,D]; din may
     * be NULL. On return dlogits' contents are unspecified: a backend may
     * never write it (CUDA in BF16 mode writes a bf16 copy of the gradient
     * instead and multiplies that), or write it (the CPU: the composition
     * itself). Its buffer is still needed, as scratch. packed: 1 when logits
     * are logits_loss_forward's (the backend's format), 0 when they are fp32
     * logits (linear_forward's). */
    void (*logits_backward)(float *din, float *dw, float *dlogits, const float *logits, const float *lse,
                            const int32_t *targets, const float *in, const float *w, int N, int D, int V,
                            int pad_id, float smoothing, float scale, int accumulate, int packed);
    void (*log_softmax)(float *out, const float *logits, int N, int V);
} tfm_backend;

/* The reference CPU backend (src/ops). */
const tfm_backend *tfm_backend_cpu(void);

/* The backend called `name`: "cpu" (also for NULL) or "cuda". On failure
 * TFM_ERR_INVALID with the reason ("device cuda: no CUDA device ..."). */
tfm_status tfm_backend_select(const char *name, const tfm_backend **out);

/* Sets be's GEMM arithmetic by name: "fp32", "tf32" or "bf16". TFM_ERR_INVALID
 * for another name or a mode the backend does not have. */
tfm_status tfm_backend_set_precision(const tfm_backend *be, const char *name);

/* n floats of the backend's memory p, readable on the host: p itself on a
 * host-memory backend (*owned = NULL), otherwise a downloaded copy in a new
 * allocation the caller frees (*owned). NULL when out of memory. */
const float *tfm_backend_host_floats(const tfm_backend *be, const float *p, size_t n, float **owned);

/* The CUDA backend (src/cuda), on the current device. NULL, with *why set to
 * a reason ("built without CUDA", "no CUDA device", the CUDA error), when it
 * cannot run here. Built only with TFM_CUDA=ON; otherwise always NULL. */
const tfm_backend *tfm_backend_cuda(const char **why);

#endif
