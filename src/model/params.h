/*
 * params.h: every parameter of a model in ONE buffer, with named views.
 *
 * The same layout serves the parameters, their gradients and the Adam
 * moments, so zeroing, clipping and the optimizer are flat loops over
 * `n_params` floats. Tensors are laid out in checkpoint order, and their names
 * follow torch.nn.Transformer where it has them:
 *
 *   src_embed.weight                         [Vs, D]   source token embedding
 *   tgt_embed.weight                         [Vt, D]   target token embedding
 *   src_pos.weight, tgt_pos.weight           [P, D]    learned positions only
 *   encoder.layers.{i}.self_attn.in_proj_weight   [H*(2dk+dv), D]  rows: W_q, W_k, W_v
 *   encoder.layers.{i}.self_attn.in_proj_bias     [H*(2dk+dv)]
 *   encoder.layers.{i}.self_attn.out_proj.weight  [D, H*dv]        W^O
 *   encoder.layers.{i}.self_attn.out_proj.bias    [D]
 *   encoder.layers.{i}.linear1.weight [F, D], .bias [F]; linear2.weight [D, F], .bias [D]
 *   encoder.layers.{i}.norm1.{weight,bias}, norm2.{weight,bias}        [D]
 *   encoder.norm.{weight,bias}                                          [D] (pre-LN only)
 *   decoder.layers.{i}: self_attn.*, multihead_attn.* (cross-attention, only
 *       with an encoder), linear1/2, norm1 (self), norm2 (cross), norm3 (FFN);
 *       without an encoder a decoder layer has norm1 (self) and norm2 (FFN).
 *   decoder.norm.{weight,bias}                                          [D] (pre-LN only)
 *   generator.weight                         [Vt, D]   pre-softmax projection (no bias)
 *
 * Tied tensors (weight sharing, paper 3.4) are stored once: the tied name is
 * an alias of the first (e.g. generator.weight -> tgt_embed.weight).
 */
#ifndef TFM_MODEL_PARAMS_H
#define TFM_MODEL_PARAMS_H

#include <stddef.h>

#include "transformer.h"

typedef struct tfm_attn_weights {
    float *in_w;   /* [H*(2dk+dv), D]  q rows, then k rows, then v rows */
    float *in_b;   /* [H*(2dk+dv)] */
    float *out_w;  /* [D, H*dv] */
    float *out_b;  /* [D] */
} tfm_attn_weights;

typedef struct tfm_norm_weights {
    float *w, *b;  /* [D] each */
} tfm_norm_weights;

typedef struct tfm_layer_weights {
    tfm_attn_weights self_attn;
    tfm_attn_weights cross_attn;      /* decoder layers of an encoder-decoder model */
    tfm_norm_weights norm_self, norm_cross, norm_ffn;
    float *ffn_w1, *ffn_b1;           /* [F, D], [F] */
    float *ffn_w2, *ffn_b2;           /* [D, F], [D] */
} tfm_layer_weights;

typedef struct tfm_weights {
    float *src_embed;                 /* [Vs, D] */
    float *tgt_embed;                 /* [Vt, D] */
    float *src_pos, *tgt_pos;         /* [P, D], learned positions */
    tfm_layer_weights *enc, *dec;     /* [enc_layers], [dec_layers] */
    tfm_norm_weights enc_norm, dec_norm;
    float *generator;                 /* [Vout, D] */
} tfm_weights;

typedef enum tfm_init_kind {
    TFM_INIT_XAVIER = 0, /* xavier_uniform, as nn.Transformer._reset_parameters */
    TFM_INIT_ZERO,
    TFM_INIT_ONE,
    TFM_INIT_EMBED,      /* normal(0, D^-0.5): unit variance after the sqrt(D) scale */
} tfm_init_kind;

typedef struct tfm_tensor_info {
    char name[96];
    int ndim;
    int shape[2];
    size_t offset;     /* in floats from the start of the buffer */
    size_t numel;
    int tied_to;       /* index of the tensor this one aliases, or -1 */
    tfm_init_kind init;
} tfm_tensor_info;

typedef struct tfm_layout {
    tfm_tensor_info *tensors;
    int n_tensors;
    size_t n_params;   /* floats in the buffer (tied tensors counted once) */
} tfm_layout;

/* Builds the layout of a valid config. Returns TFM_ERR_NOMEM on failure. */
tfm_status tfm_layout_init(tfm_layout *layout, const tfm_config *cfg);
void tfm_layout_free(tfm_layout *layout);
/* Index of a tensor by name, or -1. */
int tfm_layout_find(const tfm_layout *layout, const char *name);

/* Points every view of *w into `base` (a buffer of layout->n_params floats laid
 * out by tfm_layout_init for the same config). w->enc / w->dec are allocated
 * here; release them with tfm_weights_free. */
tfm_status tfm_weights_bind(tfm_weights *w, const tfm_config *cfg, float *base);
void tfm_weights_free(tfm_weights *w);

#endif
