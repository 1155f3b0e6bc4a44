/*
 * params.c: the parameter layout, walked once in checkpoint order.
 *
 * One walk both describes the layout (names, shapes, offsets) and binds the
 * views of a tfm_weights to a buffer, so the two can never disagree.
 */
#include "model/params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

typedef struct walker {
    tfm_layout *layout; /* filled when not NULL */
    float *base;        /* views bound when not NULL */
    size_t offset;
    int count;
} walker;

static int add_info(walker *wk, const char *name, int ndim, int s0, int s1, tfm_init_kind init,
                    int tied_to) {
    int idx = wk->count++;
    if (!wk->layout) return idx;
    tfm_tensor_info *t = &wk->layout->tensors[idx];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = s0;
    t->shape[1] = ndim == 2 ? s1 : 0;
    t->numel = (size_t)s0 * (ndim == 2 ? (size_t)s1 : 1);
    t->tied_to = tied_to;
    t->init = init;
    t->offset = tied_to >= 0 ? wk->layout->tensors[tied_to].offset : wk->offset;
    return idx;
}

/* A tensor with storage of its own. */
static int add(walker *wk, float **slot, const char *name, int ndim, int s0, int s1,
               tfm_init_kind init) {
    int idx = add_info(wk, name, ndim, s0, s1, init, -1);
    if (wk->base) *slot = wk->base + wk->offset;
    wk->offset += (size_t)s0 * (ndim == 2 ? (size_t)s1 : 1);
    return idx;
}

/* An alias of tensor `target` (index `target_idx`, view *target). */
static int tie(walker *wk, float **slot, const char *name, int s0, int s1, float **target,
               int target_idx) {
    int idx = add_info(wk, name, 2, s0, s1, TFM_INIT_EMBED, target_idx);
    if (wk->base) *slot = *target;
    return idx;
}

static void add_attn(walker *wk, tfm_attn_weights *a, const char *prefix, const tfm_config *cfg) {
    int D = cfg->d_model, H = cfg->heads, dk = tfm_config_dk(cfg), dv = tfm_config_dv(cfg);
    char name[96];
    snprintf(name, sizeof name, "%s.in_proj_weight", prefix);
    add(wk, &a->in_w, name, 2, H * (2 * dk + dv), D, TFM_INIT_XAVIER);
    snprintf(name, sizeof name, "%s.in_proj_bias", prefix);
    add(wk, &a->in_b, name, 1, H * (2 * dk + dv), 0, TFM_INIT_ZERO);
    snprintf(name, sizeof name, "%s.out_proj.weight", prefix);
    add(wk, &a->out_w, name, 2, D, H * dv, TFM_INIT_XAVIER);
    snprintf(name, sizeof name, "%s.out_proj.bias", prefix);
    add(wk, &a->out_b, name, 1, D, 0, TFM_INIT_ZERO);
}

static void add_norm(walker *wk, tfm_norm_weights *n, const char *prefix, int D) {
    char name[96];
    snprintf(name, sizeof name, "%s.weight", prefix);
    add(wk, &n->w, name, 1, D, 0, TFM_INIT_ONE);
    snprintf(name, sizeof name, "%s.bias", prefix);
    add(wk, &n->b, name, 1, D, 0, TFM_INIT_ZERO);
}

static void add_layer(walker *wk, tfm_layer_weights *l, const char *stack, int i, int cross,
                      const tfm_config *cfg) {
    int D = cfg->d_model, F = cfg->d_ff;
    char prefix[96], name[96];
    snprintf(prefix, sizeof prefix, "%s.layers.%d.self_attn", stack, i);
    add_attn(wk, &l->self_attn, prefix, cfg);
    if (cross) {
        snprintf(prefix, sizeof prefix, "%s.layers.%d.multihead_attn", stack, i);
        add_attn(wk, &l->cross_attn, prefix, cfg);
    }
    snprintf(name, sizeof name, "%s.layers.%d.linear1.weight", stack, i);
    add(wk, &l->ffn_w1, name, 2, F, D, TFM_INIT_XAVIER);
    snprintf(name, sizeof name, "%s.layers.%d.linear1.bias", stack, i);
    add(wk, &l->ffn_b1, name, 1, F, 0, TFM_INIT_ZERO);
    snprintf(name, sizeof name, "%s.layers.%d.linear2.weight", stack, i);
    add(wk, &l->ffn_w2, name, 2, D, F, TFM_INIT_XAVIER);
    snprintf(name, sizeof name, "%s.layers.%d.linear2.bias", stack, i);
    add(wk, &l->ffn_b2, name, 1, D, 0, TFM_INIT_ZERO);
    /* nn.TransformerDecoderLayer: norm1 self, norm2 cross, norm3 FFN. */
    snprintf(prefix, sizeof prefix, "%s.layers.%d.norm1", stack, i);
    add_norm(wk, &l->norm_self, prefix, D);
    if (cross) {
        snprintf(prefix, sizeof prefix, "%s.layers.%d.norm2", stack, i);
        add_norm(wk, &l->norm_cross, prefix, D);
    }
    snprintf(prefix, sizeof prefix, "%s.layers.%d.norm%d", stack, i, cross ? 3 : 2);
    add_norm(wk, &l->norm_ffn, prefix, D);
}

static void walk(walker *wk, const tfm_config *cfg, tfm_weights *w) {
    int D = cfg->d_model, P = cfg->max_positions;
    int has_enc = cfg->enc_layers > 0, has_dec = cfg->dec_layers > 0;
    int src_idx = -1, tgt_idx = -1;
    if (has_enc) src_idx = add(wk, &w->src_embed, "src_embed.weight", 2, cfg->src_vocab, D, TFM_INIT_EMBED);
    if (has_dec) {
        if (has_enc && cfg->share == TFM_SHARE_ALL)
            tgt_idx = tie(wk, &w->tgt_embed, "tgt_embed.weight", cfg->tgt_vocab, D, &w->src_embed, src_idx);
        else
            tgt_idx = add(wk, &w->tgt_embed, "tgt_embed.weight", 2, cfg->tgt_vocab, D, TFM_INIT_EMBED);
    }
    if (cfg->positions == TFM_POS_LEARNED) {
        if (has_enc) add(wk, &w->src_pos, "src_pos.weight", 2, P, D, TFM_INIT_EMBED);
        if (has_dec) add(wk, &w->tgt_pos, "tgt_pos.weight", 2, P, D, TFM_INIT_EMBED);
    }
    char prefix[32];
    for (int i = 0; i < cfg->enc_layers; i++) add_layer(wk, &w->enc[i], "encoder", i, 0, cfg);
    if (has_enc && cfg->norm == TFM_NORM_PRE) {
        snprintf(prefix, sizeof prefix, "encoder.norm");
        add_norm(wk, &w->enc_norm, prefix, D);
    }
    for (int i = 0; i < cfg->dec_layers; i++) add_layer(wk, &w->dec[i], "decoder", i, has_enc, cfg);
    if (has_dec && cfg->norm == TFM_NORM_PRE) {
        snprintf(prefix, sizeof prefix, "decoder.norm");
        add_norm(wk, &w->dec_norm, prefix, D);
    }
    /* The output projection reads the top stack: the decoder, or the encoder of
     * an encoder-only model (whose "input embedding" is then src_embed). */
    float **embed = has_dec ? &w->tgt_embed : &w->src_embed;
    int embed_idx = has_dec ? tgt_idx : src_idx;
    if (cfg->share != TFM_SHARE_NONE)
        tie(wk, &w->generator, "generator.weight", cfg->tgt_vocab, D, embed, embed_idx);
    else
        add(wk, &w->generator, "generator.weight", 2, cfg->tgt_vocab, D, TFM_INIT_EMBED);
}

static tfm_status alloc_layers(tfm_weights *w, const tfm_config *cfg) {
    memset(w, 0, sizeof *w);
    if (cfg->enc_layers > 0 && !(w->enc = calloc((size_t)cfg->enc_layers, sizeof *w->enc)))
        return tfm_error(TFM_ERR_NOMEM, "out of memory for layer views");
    if (cfg->dec_layers > 0 && !(w->dec = calloc((size_t)cfg->dec_layers, sizeof *w->dec))) {
        free(w->enc);
        return tfm_error(TFM_ERR_NOMEM, "out of memory for layer views");
    }
    return TFM_OK;
}

tfm_status tfm_layout_init(tfm_layout *layout, const tfm_config *cfg) {
    memset(layout, 0, sizeof *layout);
    tfm_weights scratch;
    TFM_TRY(alloc_layers(&scratch, cfg));
    walker count = {0};
    walk(&count, cfg, &scratch);
    layout->tensors = calloc((size_t)count.count, sizeof *layout->tensors);
    if (!layout->tensors) {
        tfm_weights_free(&scratch);
        return tfm_error(TFM_ERR_NOMEM, "out of memory for the parameter layout");
    }
    walker fill = {.layout = layout};
    walk(&fill, cfg, &scratch);
    layout->n_tensors = fill.count;
    layout->n_params = fill.offset;
    tfm_weights_free(&scratch);
    return TFM_OK;
}

void tfm_layout_free(tfm_layout *layout) {
    free(layout->tensors);
    memset(layout, 0, sizeof *layout);
}

int tfm_layout_find(const tfm_layout *layout, const char *name) {
    for (int i = 0; i < layout->n_tensors; i++)
        if (!strcmp(layout->tensors[i].name, name)) return i;
    return -1;
}

tfm_status tfm_weights_bind(tfm_weights *w, const tfm_config *cfg, float *base) {
    TFM_ASSERT(base);
    TFM_TRY(alloc_layers(w, cfg));
    walker bind = {.base = base};
    walk(&bind, cfg, w);
    return TFM_OK;
}

void tfm_weights_free(tfm_weights *w) {
    free(w->enc);
    free(w->dec);
    w->enc = w->dec = NULL;
}
