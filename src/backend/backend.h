/*
 * backend.h: the backend table: every op the model runs, as function
 * pointers with the contracts of src/ops/ops.h (float versions).
 *
 * The model, the decoder and beam search call ops only through
 * `model->be`, so another backend (the CUDA one) plugs in by filling the same
 * table with its kernels; `supports` lets a backend decline a configuration
 * (ggml's "supports op" query). The CPU backend is the reference ops
 * themselves. Pointers passed to a backend's ops are that backend's memory.
 */
#ifndef TFM_BACKEND_BACKEND_H
#define TFM_BACKEND_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "ops/ops.h"
#include "transformer.h"

typedef struct tfm_backend {
    const char *name;
    /* Whether this backend runs every op a model of this configuration needs. */
    int (*supports)(const tfm_config *cfg);
    void (*gemm)(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);
    void (*linear_forward)(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                           int n_out);
    void (*linear_backward)(float *din, float *dw, float *db, const float *dout, const float *in,
                            const float *w, int N, int n_in, int n_out, int accumulate);
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
    void (*attention_forward)(float *out, float *probs, float *scratch, const float *q, const float *k,
                              const float *v, const tfm_attn_dims *d);
    void (*attention_backward)(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               const float *probs, const float *q, const float *k, const float *v,
                               const tfm_attn_dims *d);
    double (*xent_forward)(float *lse, const float *logits, const int32_t *targets, int N, int V, int pad_id,
                           float smoothing, long *count);
    void (*xent_backward)(float *dlogits, const float *logits, const float *lse, const int32_t *targets, int N,
                          int V, int pad_id, float smoothing, float scale);
    void (*log_softmax)(float *out, const float *logits, int N, int V);
} tfm_backend;

/* The reference CPU backend (src/ops). */
const tfm_backend *tfm_backend_cpu(void);

#endif
