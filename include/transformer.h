/*
 * transformer.h: the public C API of libtransformer.
 *
 * The Transformer of "Attention Is All You Need" (Vaswani et al., 2017):
 * encoder-decoder, decoder-only and encoder-only models, trained with
 * hand-written backward passes and decoded with a KV cache.
 *
 * Conventions
 *   - Every function that can fail on its environment or its input returns a
 *     tfm_status; tfm_last_error() then holds a message naming the file, line
 *     or field. Programmer errors (NULL where a pointer is required, a shape
 *     that breaks a documented contract) abort through TFM_ASSERT.
 *   - Tensors are row-major float32; token ids are int32.
 *   - Lifetime pairs are *_init / *_free; *_default() fills a struct with the
 *     paper's defaults.
 */
#ifndef TRANSFORMER_H
#define TRANSFORMER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TFM_VERSION "0.1.0"

/* ------------------------------------------------------------------ status */

typedef enum tfm_status {
    TFM_OK = 0,
    TFM_ERR_INVALID = 1,     /* an argument or configuration value is invalid */
    TFM_ERR_IO = 2,          /* a file could not be opened, read or written */
    TFM_ERR_FORMAT = 3,      /* a file is malformed, truncated or of the wrong version */
    TFM_ERR_NOMEM = 4,       /* an allocation failed */
    TFM_ERR_UNSUPPORTED = 5, /* valid, but not built into this library */
    TFM_ERR_DEVICE = 6,      /* a CUDA / cuBLAS call failed */
} tfm_status;

/* The message of the last error set on this thread ("" when none). */
const char *tfm_last_error(void);
/* A short name for a status ("ok", "invalid", "io", ...). */
const char *tfm_status_name(tfm_status s);

/* ------------------------------------------------------------ configuration */

typedef enum tfm_activation { TFM_ACT_RELU = 0, TFM_ACT_GELU = 1 } tfm_activation;
/* post: x = LN(x + sublayer(x)) as in the paper; pre: x = x + sublayer(LN(x)),
 * plus a final LayerNorm at the end of each stack. */
typedef enum tfm_norm_placement { TFM_NORM_POST = 0, TFM_NORM_PRE = 1 } tfm_norm_placement;
typedef enum tfm_positions {
    TFM_POS_SINUSOIDAL = 0, /* fixed sin/cos added to the embeddings (paper 3.5) */
    TFM_POS_LEARNED = 1,    /* a learned table [max_positions, d_model] per stack */
    TFM_POS_ROPE = 2,       /* rotary: q and k of self-attention rotated (rotate-half form) */
    TFM_POS_NONE = 3,
} tfm_positions;
/* Weight sharing (paper 3.4). DECODER ties the target embedding and the
 * pre-softmax projection; ALL also ties the source embedding (needs one shared
 * vocabulary). For an encoder-only model DECODER ties the source embedding and
 * the output projection. */
typedef enum tfm_sharing { TFM_SHARE_NONE = 0, TFM_SHARE_DECODER = 1, TFM_SHARE_ALL = 2 } tfm_sharing;

typedef struct tfm_config {
    int enc_layers;          /* encoder layers; 0 = decoder-only */
    int dec_layers;          /* decoder layers; 0 = encoder-only */
    int d_model;
    int heads;
    int d_k;                 /* query/key size per head; 0 = d_model / heads */
    int d_v;                 /* value size per head; 0 = d_model / heads */
    int d_ff;
    tfm_activation activation;
    tfm_norm_placement norm;
    tfm_positions positions;
    int max_positions;       /* longest sequence the positions cover */
    float rope_theta;        /* rotary base, 10000 */
    int src_vocab;           /* source vocabulary size (ignored when decoder-only) */
    int tgt_vocab;           /* target vocabulary size (also the output size) */
    tfm_sharing share;
    int embed_scale;         /* 1: multiply embeddings by sqrt(d_model) (paper 3.4) */
    float dropout;           /* on each residual branch (paper 5.4) */
    float attn_dropout;      /* on attention probabilities */
    float embed_dropout;     /* on embeddings + positions */
    float act_dropout;       /* on the FFN inner activation */
    float ln_eps;            /* LayerNorm epsilon, 1e-5 as in PyTorch */
    float label_smoothing;   /* 0.1 in the paper */
    int pad_id;              /* padding token: masked in attention, ignored in the loss */
    int bos_id;              /* decoder start token */
    int eos_id;              /* end of sentence */
} tfm_config;

/* The paper's base model with a shared vocabulary of 32000, all three
 * embeddings tied. */
void tfm_config_default(tfm_config *cfg);
/* Resolves d_k/d_v defaults and checks every field. On failure the message
 * names the field, e.g. "config: heads: d_model 512 is not divisible by 7". */
tfm_status tfm_config_validate(const tfm_config *cfg);
/* d_k and d_v with their defaults applied (cfg must be valid). */
int tfm_config_dk(const tfm_config *cfg);
int tfm_config_dv(const tfm_config *cfg);
/* Parses a JSON object whose keys are the field names above; keys not given
 * keep their value in *cfg. Unknown keys and wrong types are errors naming the
 * key. `origin` names the source in messages (a file path or "<string>"). */
tfm_status tfm_config_from_json(tfm_config *cfg, const char *json, const char *origin);
tfm_status tfm_config_load(tfm_config *cfg, const char *path);
/* Every field as a JSON object; the caller frees the string with free(). */
char *tfm_config_to_json(const tfm_config *cfg);
tfm_status tfm_config_save(const tfm_config *cfg, const char *path);
/* Sets one field from a command-line flag: name without the leading dashes,
 * spelled with dashes or underscores ("d-model", "enc_layers"). Returns
 * TFM_ERR_INVALID for an unknown name or a malformed value. */
tfm_status tfm_config_set(tfm_config *cfg, const char *name, const char *value);

#ifdef __cplusplus
}
#endif
#endif /* TRANSFORMER_H */
