/* cpu.c: the CPU backend: the table filled with the reference ops. */
#include "backend/backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* calloc, not an aligned allocation cleared by hand: large zeroed blocks come
 * from the kernel's zero pages and stay out of resident memory until touched
 * (a workspace sized for the longest batch is mostly never touched). */
static void *cpu_alloc(size_t bytes) { return calloc(1, bytes ? bytes : 1); }
static void cpu_free(void *p) { free(p); }
static void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) memmove(dst, src, bytes);
}
static void cpu_zero(void *dst, size_t bytes) {
    if (bytes) memset(dst, 0, bytes);
}
static void cpu_sync(void) {}
/* logits_loss_forward and logits_backward (backend.h): exactly the
 * compositions they are defined as; the CPU's logits are always fp32. */
static void cpu_logits_loss_forward(float *logits, float *lse, double *loss_acc, const float *in, const float *w,
                                    const int32_t *targets, int N, int D, int V, int pad_id, float smoothing) {
    long count;
    tfm_linear_forward(logits, in, w, NULL, N, D, V);
    *loss_acc += tfm_xent_forward(lse, logits, targets, N, V, pad_id, smoothing, &count);
}
static void cpu_logits_backward(float *din, float *dw, float *dlogits, const float *logits, const float *lse,
                                const int32_t *targets, const float *in, const float *w, int N, int D, int V,
                                int pad_id, float smoothing, float scale, int accumulate, int packed) {
    tfm_xent_backward(dlogits, logits, lse, targets, N, V, pad_id, smoothing, scale);
    tfm_linear_backward(din, dw, NULL, dlogits, in, w, N, D, V, accumulate);
}
/* ffn_forward and ffn_backward (backend.h): exactly the compositions. */
static void cpu_ffn_forward(float *out, float *hidden, float *act, const float *in, const float *w1, const float *b1,
                            const float *w2, const float *b2, int N, int D, int F, tfm_act_kind kind, float p,
                            uint64_t seed, uint64_t stream, int in_filled) {
    tfm_linear_forward(hidden, in, w1, b1, N, D, F);
    tfm_activation_dropout_forward(act, hidden, (size_t)N * F, kind, p, seed, stream);
    tfm_linear_forward(out, act, w2, b2, N, F, D);
}
static void cpu_ffn_backward(float *din, float *dw1, float *db1, float *dw2, float *db2, float *dact,
                             const float *dout, const float *in, const float *hidden, const float *act,
                             const float *w1, const float *w2, int N, int D, int F, tfm_act_kind kind, float p,
                             uint64_t seed, uint64_t stream, int accumulate) {
    tfm_linear_backward(dact, dw2, db2, dout, act, w2, N, F, D, 0);
    tfm_activation_dropout_backward(dact, dact, hidden, (size_t)N * F, kind, p, seed, stream);
    tfm_linear_backward(din, dw1, db1, dact, in, w1, N, D, F, accumulate);
}
static int cpu_attention_tiled_forward(float *out, float *lse, float *scratch, size_t scratch_len, const float *q,
                                       const float *k, const float *v, const tfm_attn_dims *d) {
    tfm_attention_tiled_forward(out, lse, scratch, scratch_len, q, k, v, d);
    return 0; /* nothing kept */
}
static void *cpu_ffn_in_keep(float *hidden, float *act, int N, int D, int F, tfm_act_kind kind, float p) {
    return NULL; /* nothing kept */
}
static void cpu_global_norm_to(float *norm_out, const float *x, size_t n) { *norm_out = tfm_global_norm(x, n); }
static void cpu_adam_update_clipped(const tfm_adam_coefs *c, float *param, float *grad, float *m, float *v, size_t n,
                                    const float *norm, float clip_norm) {
    tfm_adam_update_clipped(c, param, grad, m, v, n, *norm, clip_norm);
}
static void cpu_xent_forward_acc(float *lse, const float *logits, const int32_t *targets, int N, int V, int pad_id,
                                 float smoothing, double *loss_acc) {
    long count;
    *loss_acc += tfm_xent_forward(lse, logits, targets, N, V, pad_id, smoothing, &count);
}
/* The CPU keeps nothing: the kept-input linears are the plain ones. */
static size_t cpu_linear_keep_bytes(int N, int n_in, int n_out) { return 0; }
static void cpu_linear_forward_keep(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                                    int n_out, void *keep, int keep_filled) {
    tfm_linear_forward(out, in, w, b, N, n_in, n_out);
}
static int cpu_residual_dropout_layernorm(float *res, float *ln, float *mean, float *rstd, const float *x,
                                          const float *y, const float *w, const float *b, int N, int D, float eps,
                                          float p, uint64_t seed, uint64_t stream, void *ln_keep) {
    tfm_residual_dropout_layernorm(res, ln, mean, rstd, x, y, w, b, N, D, eps, p, seed, stream);
    return 0; /* nothing kept */
}
static void cpu_linear_backward_kept(float *din, float *dw, float *db, const float *dout, const float *in,
                                     const void *keep, const float *w, int N, int n_in, int n_out, int accumulate) {
    tfm_linear_backward(din, dw, db, dout, in, w, N, n_in, n_out, accumulate);
}
static void cpu_params_lowp(const float *params, size_t n) {}
static int cpu_set_matmul_precision(tfm_matmul_precision p) { return p == TFM_MATMUL_FP32; }
static void cpu_copy_rows(float *dst, long dst_row, const float *src, long src_row, size_t width, int rows) {
    for (int r = 0; r < rows; r++) memmove(dst + r * dst_row, src + r * src_row, width * sizeof *dst);
}
/* For each row, the first v (other than the skipped ids) with the largest
 * x[n, v]; -1 if every id is skipped. The answer of the scan
 * `if (x[v] > x[best]) best = v`, in two passes that vectorise (the largest
 * value, then its first index, looked for a block at a time): NaNs never win,
 * except a NaN at the first allowed id, which the scan keeps. Rows on all
 * threads when there are many (greedy decoding: 64 x 32000). */
#define ARGMAX_BLOCK 64
TFM_CLONES_F32 static void cpu_argmax_rows(int32_t *out, const float *x, int N, int V, int skip_a, int skip_b,
                                           int skip_c) {
#pragma omp parallel for schedule(static) if(N > 1 && (size_t)N * V >= 65536)
    for (int n = 0; n < N; n++) {
        const float *row = x + (size_t)n * V;
        int first = 0;
        while (first < V && (first == skip_a || first == skip_b || first == skip_c)) first++;
        out[n] = first < V ? first : -1;
        if (first == V || isnan(row[first])) continue;
        float mx = row[first];
#pragma omp simd reduction(max : mx)
        for (int v = first + 1; v < V; v++) {
            float r = row[v];
            int take = (r > mx) & (v != skip_a) & (v != skip_b) & (v != skip_c);
            mx = take ? r : mx;
        }
        int v = first;
        for (; v + ARGMAX_BLOCK <= V; v += ARGMAX_BLOCK) { /* to the first block holding mx */
            int hit = 0;
#pragma omp simd reduction(| : hit)
            for (int j = 0; j < ARGMAX_BLOCK; j++) hit |= row[v + j] == mx;
            if (hit) break;
        }
        for (; v < V; v++) {
            if (row[v] == mx && v != skip_a && v != skip_b && v != skip_c) {
                out[n] = v;
                break;
            }
        }
    }
}
/* On all threads once there is a KV cache's worth to move (256 KiB): one
 * core's copy does not use the memory bandwidth of two. */
static void cpu_gather_rows(float *dst, const float *src, long row, size_t width, const int32_t *from, int n) {
#pragma omp parallel for schedule(static) if((size_t)n * width >= 65536)
    for (int r = 0; r < n; r++) memcpy(dst + r * row, src + from[r] * row, width * sizeof *dst);
}

static int cpu_supports(const tfm_config *cfg) {
    (void)cfg;
    return 1;
}

/* Whether the tiled attention ops (attention_tiled.c) run at least as fast
 * as the materialised ones at d's sizes: when both lengths are 16 or more.
 * Measured, forward + backward on 2 threads, dk = dv = 64 (min of medians):
 * B=64 H=4 T=24 causal with dropout 0.1 (the small training shape) 1.63 vs
 * 2.21 ms, T=16 0.78 vs 0.98 ms; without masks or dropout even at T=16 and
 * ahead beyond (T=24: 1.47 vs 1.77 ms, T=100: 24 vs 33 ms; B=1 H=8 T=1024:
 * 54 vs 75 ms, causal with dropout 34 vs 103 ms). Below 16 the tiled
 * backward's extra product (it recomputes the scores) and per-block costs
 * lose: T=8..12 5-30% slower, a decoding step (Tq = 1) even to 5% slower. */
static int cpu_attention_tiled_preferred(const tfm_attn_dims *d) { return d->Tq >= 16 && d->Tk >= 16; }

static const tfm_backend cpu_backend = {
    .name = "cpu",
    .supports = cpu_supports,
    .host_memory = 1,
    .set_matmul_precision = cpu_set_matmul_precision,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .copy_rows = cpu_copy_rows,
    .gather_rows = cpu_gather_rows,
    .argmax_rows = cpu_argmax_rows,
    .topk_logprobs = tfm_topk_logprobs,
    .params_lowp = cpu_params_lowp,
    .global_norm = tfm_global_norm,
    .global_norm_to = cpu_global_norm_to,
    .adam_update_clipped = cpu_adam_update_clipped,
    .scale = tfm_scale,
    .add = tfm_add,
    .adam_update = tfm_adam_update,
    .gemm = tfm_gemm,
    .linear_forward = tfm_linear_forward,
    .linear_backward = tfm_linear_backward,
    .linear_keep_bytes = cpu_linear_keep_bytes,
    .linear_forward_keep = cpu_linear_forward_keep,
    .linear_backward_kept = cpu_linear_backward_kept,
    .embedding_forward = tfm_embedding_forward,
    .embedding_backward = tfm_embedding_backward,
    .positions_forward = tfm_positions_forward,
    .positions_backward = tfm_positions_backward,
    .rope = tfm_rope,
    .layernorm_forward = tfm_layernorm_forward,
    .layernorm_backward = tfm_layernorm_backward,
    .activation_forward = tfm_activation_forward,
    .activation_backward = tfm_activation_backward,
    .dropout = tfm_dropout,
    .residual_dropout = tfm_residual_dropout,
    .residual_dropout_layernorm = cpu_residual_dropout_layernorm,
    .layernorm_backward_dropout = tfm_layernorm_backward_dropout,
    .activation_dropout_forward = tfm_activation_dropout_forward,
    .activation_dropout_backward = tfm_activation_dropout_backward,
    .attention_forward = tfm_attention_forward,
    .attention_backward = tfm_attention_backward,
    .attention_tiled_scratch = tfm_attention_tiled_scratch,
    .attention_tiled_preferred = cpu_attention_tiled_preferred,
    .attention_tiled_forward = cpu_attention_tiled_forward,
    .attention_tiled_backward = tfm_attention_tiled_backward,
    .xent_forward = tfm_xent_forward,
    .xent_forward_acc = cpu_xent_forward_acc,
    .xent_backward = tfm_xent_backward,
    .logits_loss_forward = cpu_logits_loss_forward,
    .logits_backward = cpu_logits_backward,
    .ffn_forward = cpu_ffn_forward,
    .ffn_in_keep = cpu_ffn_in_keep,
    .ffn_backward = cpu_ffn_backward,
    .log_softmax = tfm_log_softmax,
};

const tfm_backend *tfm_backend_cpu(void) { return &cpu_backend; }
