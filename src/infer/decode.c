/*
 * decode.c: one decoder step over a KV cache, greedy search and generation.
 *
 * A step runs the decoder layers on one new token per row (N = B rows), with
 * the same ops and the same block order as the training forward (model.c):
 * self-attention over the cached keys/values plus the new ones,
 * cross-attention over the keys/values cached at start, the FFN, each wrapped
 * post-LN or pre-LN. Dropout never applies here.
 *
 * Caches and scratch live in the model's backend memory; the host keeps
 * mirrors of the small per-row state (padding, positions) and uploads them
 * each step, and reads each step's logits (downloaded from a device).
 *
 * Beam search reorders rows after every step (tfm_decoder_reorder). On the
 * CPU the self-attention caches never move: a map per row names the cache
 * row that holds each of its positions, and a reorder copies maps (ints)
 * instead of cache rows (a base model's beam 4 on 64 sentences moved ~1.8 GB
 * per run). A device gathers the cache rows. Either way the beams of a
 * sentence share one copy of its cross-attention keys and values (kv_group):
 * the cross-attention runs one batch per sentence with a query per beam.
 */
#include "infer/decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/status.h"
#include "backend/backend.h"
#include "ops/sgemm_avx512.h"

/* Carves the caches and scratch out of one allocation (count, then assign). */
typedef struct carver {
    float *base;
    size_t used;
} carver;

static float *take(carver *c, size_t n) {
    float *p = c->base ? c->base + c->used : NULL;
    c->used += (n + 15) & ~(size_t)15;
    return p;
}

/* Every self-attention cache has the size of spare_self and every cross K/V
 * the size of spare_cross, so that reordering can gather a cache into its
 * spare and swap the two pointers (one copy instead of two). */
static void carve(carver *c, tfm_decoder *d) {
    const tfm_model *m = d->m;
    const tfm_config *cfg = &m->cfg;
    size_t B = (size_t)d->max_B, T = (size_t)d->max_T, S = (size_t)d->max_S;
    int D = cfg->d_model, H = cfg->heads, has_enc = cfg->enc_layers > 0;
    size_t self = B * T * H * (m->dk > m->dv ? m->dk : m->dv), cross = B * S * H * (m->dk + m->dv);
    for (int l = 0; l < cfg->dec_layers; l++) {
        d->k_cache[l] = take(c, self);
        d->v_cache[l] = take(c, self);
        if (has_enc) d->cross_kv[l] = take(c, cross);
    }
    if (!d->kv_map) d->spare_self = take(c, self);
    if (has_enc) d->spare_cross = take(c, cross);
    size_t L = T > S ? T : S;
    d->x = take(c, B * D);
    d->ln = take(c, B * D);
    d->mean = take(c, B);
    d->rstd = take(c, B);
    d->res = take(c, B * D);
    d->qkv = take(c, B * m->qkv_dim);
    d->att = take(c, B * H * m->dv);
    d->proj = take(c, B * D);
    d->ffn = take(c, B * cfg->d_ff);
    d->probs = take(c, B * H * L);
    d->top = take(c, B * D);
    d->dev_logits = take(c, B * cfg->tgt_vocab);
}

/* tfm_decoder_reorder's host scratch for n rows: the row and slot maps, then
 * the positions, sentences, self and source padding of the new rows. */
static size_t host_reorder_bytes(const tfm_decoder *d, int n) {
    return (size_t)n * (4 * sizeof(int32_t) + (size_t)d->max_T + (size_t)d->max_S);
}

tfm_status tfm_decoder_init(tfm_decoder *d, const tfm_model *m, int max_B, int max_S, int max_T) {
    memset(d, 0, sizeof *d);
    const tfm_config *cfg = &m->cfg;
    int has_enc = cfg->enc_layers > 0;
    if (cfg->dec_layers == 0) return tfm_error(TFM_ERR_INVALID, "decoder: the model has no decoder");
    if (max_B <= 0 || max_T <= 0 || (has_enc && max_S <= 0))
        return tfm_error(TFM_ERR_INVALID, "decoder: empty capacity %d x %d x %d", max_B, max_S, max_T);
    if (max_T > cfg->max_positions || (has_enc && max_S > cfg->max_positions))
        return tfm_error(TFM_ERR_INVALID, "decoder: length %d exceeds max_positions %d",
                         max_T > max_S ? max_T : max_S, cfg->max_positions);
    d->m = m;
    d->max_B = max_B;
    d->max_S = has_enc ? max_S : 0;
    d->max_T = max_T;
    if (has_enc) TFM_TRY(tfm_workspace_init(&d->enc_ws, m, max_B, max_S, 1));
    d->k_cache = calloc((size_t)cfg->dec_layers, sizeof *d->k_cache);
    d->v_cache = calloc((size_t)cfg->dec_layers, sizeof *d->v_cache);
    d->cross_kv = calloc((size_t)cfg->dec_layers, sizeof *d->cross_kv);
    const tfm_backend *be = m->be;
    d->self_pad = be->alloc((size_t)max_B * max_T);
    d->pos = be->alloc((size_t)max_B * sizeof *d->pos);
    d->tokens = be->alloc((size_t)max_B * sizeof *d->tokens);
    d->rows = be->alloc((size_t)max_B * sizeof *d->rows);
    d->slots = be->alloc((size_t)max_B * sizeof *d->slots);
    d->best = be->alloc((size_t)max_B * sizeof *d->best);
    d->host_self_pad = calloc((size_t)max_B * max_T, 1);
    d->host_src_pad = calloc((size_t)max_B * (d->max_S + 1), 1);
    d->host_pos = calloc((size_t)max_B, sizeof *d->host_pos);
    d->host_src_row = calloc((size_t)max_B, sizeof *d->host_src_row);
    d->host_reorder = malloc(host_reorder_bytes(d, max_B));
    if (be->host_memory) {
        d->kv_map = malloc((size_t)max_B * max_T * sizeof *d->kv_map);
        d->kv_map_spare = malloc((size_t)max_B * max_T * sizeof *d->kv_map_spare);
    }
    carver count = {0};
    if (d->k_cache && d->v_cache && d->cross_kv) carve(&count, d);
    d->mem = count.used ? be->alloc(count.used * sizeof(float)) : NULL;
    d->logits = be->host_memory ? NULL : malloc((size_t)max_B * cfg->tgt_vocab * sizeof *d->logits);
    if (!d->k_cache || !d->v_cache || !d->cross_kv || !d->self_pad || !d->pos || !d->tokens || !d->rows ||
        !d->slots || !d->best || !d->host_self_pad || !d->host_src_pad || !d->host_pos || !d->host_src_row || !d->host_reorder || !d->mem ||
        (be->host_memory && (!d->kv_map || !d->kv_map_spare)) ||
        (!be->host_memory && !d->logits)) {
        tfm_decoder_free(d);
        return tfm_error(TFM_ERR_NOMEM, "decoder: out of memory for the KV cache of %d x %d x %d", max_B,
                         max_S, max_T);
    }
    carver fill = {.base = d->mem};
    carve(&fill, d);
    if (be->host_memory) d->logits = d->dev_logits;
    /* The CPU backend's linears reach tfm_gemm: pack the weights once for
     * all steps (NULL without the own kernel; a device backend never calls
     * tfm_gemm, and its parameters are not host memory). */
    if (be->host_memory) d->packs = tfm_gemm_packs_new(m->params, m->layout.n_params);
    return TFM_OK;
}

void tfm_decoder_free(tfm_decoder *d) {
    tfm_gemm_packs_free(d->packs);
    if (d->enc_ws.mem) tfm_workspace_free(&d->enc_ws);
    free(d->k_cache);
    free(d->v_cache);
    free(d->cross_kv);
    if (d->m) {
        const tfm_backend *be = d->m->be;
        be->free(d->self_pad);
        be->free(d->pos);
        be->free(d->tokens);
        be->free(d->rows);
        be->free(d->slots);
        be->free(d->best);
        be->free(d->mem);
        if (!be->host_memory) free(d->logits);
    }
    free(d->host_self_pad);
    free(d->host_src_pad);
    free(d->host_pos);
    free(d->host_src_row);
    free(d->host_reorder);
    free(d->kv_map);
    free(d->kv_map_spare);
    memset(d, 0, sizeof *d);
}

static tfm_status decoder_start(tfm_decoder *d, const int32_t *src, int B, int S);
static tfm_status decoder_step(tfm_decoder *d, const int32_t *tokens);

/* start and step run with the decoder's packed weights current on this
 * thread, and restore what was current before. */
tfm_status tfm_decoder_start(tfm_decoder *d, const int32_t *src, int B, int S) {
    tfm_gemm_packs *prev = tfm_gemm_packs_use(d->packs);
    tfm_status st = decoder_start(d, src, B, S);
    tfm_gemm_packs_use(prev);
    return st;
}

tfm_status tfm_decoder_step(tfm_decoder *d, const int32_t *tokens) {
    tfm_gemm_packs *prev = tfm_gemm_packs_use(d->packs);
    tfm_status st = decoder_step(d, tokens);
    tfm_gemm_packs_use(prev);
    return st;
}

static tfm_status decoder_start(tfm_decoder *d, const int32_t *src, int B, int S) {
    const tfm_model *m = d->m;
    const tfm_config *cfg = &m->cfg;
    if (B <= 0 || B > d->max_B)
        return tfm_error(TFM_ERR_INVALID, "decoder: %d rows do not fit the capacity %d", B, d->max_B);
    d->B = B;
    d->step = 0;
    d->kv_group = 1;
    memset(d->host_pos, 0, (size_t)B * sizeof *d->host_pos);
    for (int r = 0; r < d->max_B; r++) d->host_src_row[r] = r < B ? r : -1; /* -1: holds no sentence */
    if (cfg->enc_layers == 0) {
        d->S = 0;
        return TFM_OK;
    }
    if (!src) return tfm_error(TFM_ERR_INVALID, "decoder: the model has an encoder but src is NULL");
    if (S > d->max_S)
        return tfm_error(TFM_ERR_INVALID, "decoder: source length %d exceeds the capacity %d", S, d->max_S);
    TFM_TRY(tfm_model_encode(m, &d->enc_ws, src, B, S));
    d->S = S;
    for (size_t i = 0; i < (size_t)B * S; i++) d->host_src_pad[i] = src[i] == cfg->pad_id;
    int D = cfg->d_model, qd = cfg->heads * m->dk, kvd = cfg->heads * (m->dk + m->dv);
    for (int l = 0; l < cfg->dec_layers; l++) {
        const tfm_attn_weights *w = &m->w.dec[l].cross_attn;
        m->be->linear_forward(d->cross_kv[l], d->enc_ws.enc.out, w->in_w + (size_t)qd * D, w->in_b + qd, B * S,
                           D, kvd);
    }
    return TFM_OK;
}

/* The shared residual wrapper of a block, like block_forward in model.c:
 * before() gives the branch input, after() adds the branch output d->proj. */
static const float *block_in(tfm_decoder *d, const tfm_norm_weights *nw, const float *x) {
    const tfm_config *cfg = &d->m->cfg;
    if (cfg->norm != TFM_NORM_PRE) return x;
    d->m->be->layernorm_forward(d->ln, d->mean, d->rstd, x, nw->w, nw->b, d->B, cfg->d_model, cfg->ln_eps);
    return d->ln;
}

static void block_out(tfm_decoder *d, const tfm_norm_weights *nw) {
    const tfm_config *cfg = &d->m->cfg;
    if (cfg->norm == TFM_NORM_POST) {
        /* x = LayerNorm(x + proj) in one pass (the sum to res, the norm to
         * ln, which post-LN leaves free); then ln and x trade places */
        d->m->be->residual_dropout_layernorm(d->res, d->ln, d->mean, d->rstd, d->x, d->proj, nw->w, nw->b, d->B,
                                             cfg->d_model, cfg->ln_eps, 0.0f, 0, 0, NULL);
        float *t = d->x;
        d->x = d->ln;
        d->ln = t;
    } else {
        d->m->be->add(d->x, d->proj, (size_t)d->B * cfg->d_model);
    }
}

static void self_attn_step(tfm_decoder *d, int l, const float *in) {
    const tfm_model *m = d->m;
    const tfm_config *cfg = &m->cfg;
    const tfm_attn_weights *w = &m->w.dec[l].self_attn;
    int D = cfg->d_model, H = cfg->heads, hk = H * m->dk, hv = H * m->dv, B = d->B, T = d->max_T;
    m->be->linear_forward(d->qkv, in, w->in_w, w->in_b, B, D, m->qkv_dim);
    if (cfg->positions == TFM_POS_ROPE) {
        m->be->rope(d->qkv, m->qkv_dim, d->pos, B, H, m->dk, cfg->rope_theta, 0);
        m->be->rope(d->qkv + hk, m->qkv_dim, d->pos, B, H, m->dk, cfg->rope_theta, 0);
    }
    /* Append this step's keys and values: row b of qkv to position `step` of cache row b. */
    m->be->copy_rows(d->k_cache[l] + (size_t)d->step * hk, (long)T * hk, d->qkv + hk, m->qkv_dim, hk, B);
    m->be->copy_rows(d->v_cache[l] + (size_t)d->step * hv, (long)T * hv, d->qkv + 2 * hk, m->qkv_dim, hv, B);
    tfm_attn_dims dims = {
        .B = B, .H = H, .Tq = 1, .Tk = d->step + 1, .dk = m->dk, .dv = m->dv,
        .q_row = m->qkv_dim, .q_batch = m->qkv_dim, .k_row = hk, .k_batch = (long)T * hk,
        .v_row = hv, .v_batch = (long)T * hv, .o_row = hv, .o_batch = hv,
        .key_pad = d->self_pad, .key_pad_stride = T, .scale = 1.0 / sqrt((double)m->dk),
        .kv_rows = d->kv_map, .kv_rows_stride = T,
    };
    m->be->attention_forward(d->att, d->probs, NULL, d->qkv, d->k_cache[l], d->v_cache[l], &dims);
    m->be->linear_forward(d->proj, d->att, w->out_w, w->out_b, B, hv, D);
}

/* The g = kv_group rows of a cross slot are its g queries: attention over
 * B / g batches of g queries each. */
static void cross_attn_step(tfm_decoder *d, int l, const float *in) {
    const tfm_model *m = d->m;
    const tfm_config *cfg = &m->cfg;
    const tfm_attn_weights *w = &m->w.dec[l].cross_attn;
    int D = cfg->d_model, H = cfg->heads, hk = H * m->dk, hv = H * m->dv, kvd = hk + hv, B = d->B;
    int g = d->kv_group;
    m->be->linear_forward(d->qkv, in, w->in_w, w->in_b, B, D, hk);
    tfm_attn_dims dims = {
        .B = B / g, .H = H, .Tq = g, .Tk = d->S, .dk = m->dk, .dv = m->dv,
        .q_row = hk, .q_batch = (long)g * hk, .k_row = kvd, .k_batch = (long)d->S * kvd,
        .v_row = kvd, .v_batch = (long)d->S * kvd, .o_row = hv, .o_batch = (long)g * hv,
        .key_pad = d->enc_ws.src_pad, .key_pad_stride = d->S, .scale = 1.0 / sqrt((double)m->dk),
    };
    m->be->attention_forward(d->att, d->probs, NULL, d->qkv, d->cross_kv[l], d->cross_kv[l] + hk, &dims);
    m->be->linear_forward(d->proj, d->att, w->out_w, w->out_b, B, hv, D);
}

static void ffn_step(tfm_decoder *d, int l, const float *in) {
    const tfm_model *m = d->m;
    const tfm_config *cfg = &m->cfg;
    const tfm_layer_weights *w = &m->w.dec[l];
    int D = cfg->d_model, F = cfg->d_ff, B = d->B;
    m->be->linear_forward(d->ffn, in, w->ffn_w1, w->ffn_b1, B, D, F);
    m->be->activation_forward(d->ffn, d->ffn, (size_t)B * F, (tfm_act_kind)cfg->activation);
    m->be->linear_forward(d->proj, d->ffn, w->ffn_w2, w->ffn_b2, B, F, D);
}

static tfm_status decoder_step(tfm_decoder *d, const int32_t *tokens) {
    const tfm_model *m = d->m;
    const tfm_config *cfg = &m->cfg;
    int D = cfg->d_model, B = d->B;
    if (d->step >= d->max_T)
        return tfm_error(TFM_ERR_INVALID, "decoder: step %d exceeds the cache length %d", d->step, d->max_T);
    for (int b = 0; b < B; b++) {
        if (tokens[b] < 0 || tokens[b] >= cfg->tgt_vocab)
            return tfm_error(TFM_ERR_INVALID, "decoder: token %d of row %d is outside the vocabulary [0, %d)",
                             tokens[b], b, cfg->tgt_vocab);
        if (d->host_pos[b] >= cfg->max_positions)
            return tfm_error(TFM_ERR_INVALID, "decoder: row %d reached max_positions %d", b, cfg->max_positions);
        d->host_self_pad[(size_t)b * d->max_T + d->step] = tokens[b] == cfg->pad_id;
    }
    const tfm_backend *be = m->be;
    if (d->kv_map) /* this step's keys and values go to each row's own cache row */
        for (int b = 0; b < B; b++) d->kv_map[(size_t)b * d->max_T + d->step] = b;
    be->upload(d->tokens, tokens, (size_t)B * sizeof *tokens);
    be->upload(d->pos, d->host_pos, (size_t)B * sizeof *d->pos);
    be->upload(d->self_pad, d->host_self_pad, (size_t)B * d->max_T);
    float scale = cfg->embed_scale ? sqrtf((float)D) : 1.0f;
    m->be->embedding_forward(d->x, d->tokens, m->w.tgt_embed, B, D, scale);
    if (cfg->positions == TFM_POS_SINUSOIDAL) m->be->positions_forward(d->x, m->pos_table, d->pos, B, D);
    if (cfg->positions == TFM_POS_LEARNED) m->be->positions_forward(d->x, m->w.tgt_pos, d->pos, B, D);
    int has_enc = cfg->enc_layers > 0;
    for (int l = 0; l < cfg->dec_layers; l++) {
        const tfm_layer_weights *w = &m->w.dec[l];
        self_attn_step(d, l, block_in(d, &w->norm_self, d->x));
        block_out(d, &w->norm_self);
        if (has_enc) {
            cross_attn_step(d, l, block_in(d, &w->norm_cross, d->x));
            block_out(d, &w->norm_cross);
        }
        ffn_step(d, l, block_in(d, &w->norm_ffn, d->x));
        block_out(d, &w->norm_ffn);
    }
    const float *top = d->x;
    if (cfg->norm == TFM_NORM_PRE) {
        m->be->layernorm_forward(d->top, d->mean, d->rstd, d->x, m->w.dec_norm.w, m->w.dec_norm.b, B, D, cfg->ln_eps);
        top = d->top;
    }
    m->be->linear_forward(d->dev_logits, top, m->w.generator, NULL, B, D, cfg->tgt_vocab);
    d->logits_on_host = be->host_memory;
    for (int b = 0; b < B; b++)
        if (tokens[b] != cfg->pad_id) d->host_pos[b]++;
    d->step++;
    return TFM_OK;
}

/* Gathers the rows of the backend array *a [max_B, row] (from: the sources,
 * in backend memory; only the first `used` floats of a row hold data) into
 * *spare, then swaps the two: *a is the gathered array, *spare the old one,
 * free for the next gather. Both were allocated with the same size (carve). */
static void gather_swap(tfm_decoder *d, float **a, float **spare, size_t row, size_t used, const int32_t *from,
                        int n) {
    if (used == 0) return;
    d->m->be->gather_rows(*spare, *a, (long)row, used, from, n);
    float *t = *a;
    *a = *spare;
    *spare = t;
}

/* Rows per cross slot for the new rows' sentences src_row[n]: the length g
 * of the first run of one sentence when every block of g rows holds one
 * sentence (beam search: its beams); else 1. */
static int rows_per_slot(const int32_t *src_row, int n) {
    int g = 1;
    while (g < n && src_row[g] == src_row[0]) g++;
    if (n % g) return 1;
    for (int r = 0; r < n; r++)
        if (src_row[r] != src_row[r - r % g]) return 1;
    return g;
}

tfm_status tfm_decoder_reorder(tfm_decoder *d, const int *from, int n_rows) {
    const tfm_model *m = d->m;
    const tfm_config *cfg = &m->cfg;
    if (n_rows <= 0 || n_rows > d->max_B)
        return tfm_error(TFM_ERR_INVALID, "decoder: cannot reorder into %d rows", n_rows);
    for (int r = 0; r < n_rows; r++)
        if (from[r] < 0 || from[r] >= d->B)
            return tfm_error(TFM_ERR_INVALID, "decoder: reorder source row %d outside [0, %d)", from[r], d->B);
    int H = cfg->heads, has_enc = cfg->enc_layers > 0;
    size_t krow = (size_t)d->max_T * H * m->dk, vrow = (size_t)d->max_T * H * m->dv;
    size_t crow = (size_t)d->S * H * (m->dk + m->dv); /* slots are S long (start) */
    uint8_t *host = d->host_reorder;
    int32_t *from32 = (int32_t *)host, *slot_from = from32 + n_rows, *pos = slot_from + n_rows;
    int32_t *src_row = pos + n_rows;
    uint8_t *pad = (uint8_t *)(src_row + n_rows), *spad = pad + (size_t)n_rows * d->max_T;
    for (int r = 0; r < n_rows; r++) {
        from32[r] = from[r];
        pos[r] = d->host_pos[from[r]];
        src_row[r] = d->host_src_row[from[r]];
        memcpy(pad + (size_t)r * d->max_T, d->host_self_pad + (size_t)from[r] * d->max_T, d->max_T);
    }
    /* The cross slots: new slot s takes the old slot of its first row. They
     * move only when sentences leave the batch or the grouping changes (not
     * when beams are reordered within their sentence). */
    int g = has_enc ? rows_per_slot(src_row, n_rows) : 1, n_slots = n_rows / g;
    int cross_moves = n_slots != d->B / d->kv_group;
    for (int s = 0; s < n_slots; s++) {
        slot_from[s] = from[s * g] / d->kv_group;
        cross_moves |= slot_from[s] != s;
        if (has_enc) memcpy(spad + (size_t)s * d->S, d->host_src_pad + (size_t)slot_from[s] * d->S, (size_t)d->S);
    }
    if (!d->kv_map) m->be->upload(d->rows, from32, (size_t)n_rows * sizeof *from32);
    if (has_enc && cross_moves) m->be->upload(d->slots, slot_from, (size_t)n_slots * sizeof *slot_from);
    if (d->kv_map) { /* the rows stay; each new row takes its source's map */
        for (int r = 0; r < n_rows; r++)
            memcpy(d->kv_map_spare + (size_t)r * d->max_T, d->kv_map + (size_t)from[r] * d->max_T,
                   (size_t)d->step * sizeof *d->kv_map);
        int32_t *t = d->kv_map;
        d->kv_map = d->kv_map_spare;
        d->kv_map_spare = t;
    }
    for (int l = 0; l < cfg->dec_layers; l++) {
        /* Only the first `step` positions of a cache row are filled. */
        if (!d->kv_map) {
            gather_swap(d, &d->k_cache[l], &d->spare_self, krow, (size_t)d->step * H * m->dk, d->rows, n_rows);
            gather_swap(d, &d->v_cache[l], &d->spare_self, vrow, (size_t)d->step * H * m->dv, d->rows, n_rows);
        }
        if (has_enc && cross_moves) gather_swap(d, &d->cross_kv[l], &d->spare_cross, crow, crow, d->slots, n_slots);
    }
    memcpy(d->host_self_pad, pad, (size_t)n_rows * d->max_T);
    memcpy(d->host_pos, pos, (size_t)n_rows * sizeof *pos);
    memcpy(d->host_src_row, src_row, (size_t)n_rows * sizeof *src_row);
    if (has_enc && cross_moves) {
        memcpy(d->host_src_pad, spad, (size_t)n_slots * d->S);
        m->be->upload(d->enc_ws.src_pad, spad, (size_t)n_slots * d->S);
    }
    d->B = n_rows;
    d->kv_group = g;
    return TFM_OK;
}

const float *tfm_decoder_logits(tfm_decoder *d) {
    if (!d->logits_on_host) {
        d->m->be->download(d->logits, d->dev_logits, (size_t)d->B * d->m->cfg.tgt_vocab * sizeof *d->logits);
        d->logits_on_host = 1;
    }
    return d->logits;
}

void tfm_decoder_argmax(tfm_decoder *d, int skip_a, int skip_b, int skip_c, int32_t *out) {
    const tfm_backend *be = d->m->be;
    be->argmax_rows(d->best, d->dev_logits, d->B, d->m->cfg.tgt_vocab, skip_a, skip_b, skip_c);
    be->download(out, d->best, (size_t)d->B * sizeof *out);
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The most likely token that may be emitted: never pad or bos (fairseq does the
 * same), so a generated token is never mistaken for padding. */
static int32_t best_token(const tfm_config *cfg, const float *x) {
    int32_t best = -1;
    for (int i = 0; i < cfg->tgt_vocab; i++) {
        if (i == cfg->pad_id || i == cfg->bos_id) continue;
        if (best < 0 || x[i] > x[best]) best = i;
    }
    return best;
}

/* Records the chosen tokens; returns the number of rows still running. */
static int record(const tfm_config *cfg, const int32_t *next, int B, int t, int max_len, int32_t *out,
                  int *lengths, uint8_t *done) {
    int running = 0;
    for (int b = 0; b < B; b++) {
        out[(size_t)b * max_len + t] = done[b] ? cfg->pad_id : next[b];
        if (!done[b] && next[b] == cfg->eos_id) done[b] = 1;
        else if (!done[b]) lengths[b] = t + 1;
        running += !done[b];
    }
    return running;
}

tfm_status tfm_greedy_translate(tfm_decoder *d, const int32_t *src, int B, int S, int max_len,
                                int32_t *out, int *lengths) {
    const tfm_config *cfg = &d->m->cfg;
    if (max_len <= 0 || max_len > d->max_T)
        return tfm_error(TFM_ERR_INVALID, "greedy: max_len %d outside [1, %d]", max_len, d->max_T);
    TFM_TRY(tfm_decoder_start(d, src, B, S));
    int32_t *tok = malloc((size_t)B * sizeof *tok);
    uint8_t *done = calloc((size_t)B, 1);
    if (!tok || !done) {
        free(tok);
        free(done);
        return tfm_error(TFM_ERR_NOMEM, "greedy: out of memory");
    }
    for (int b = 0; b < B; b++) {
        tok[b] = cfg->bos_id;
        lengths[b] = 0;
    }
    for (int b = 0; b < B * max_len; b++) out[b] = cfg->pad_id;
    tfm_status st = TFM_OK;
    for (int t = 0; t < max_len; t++) {
        if ((st = tfm_decoder_step(d, tok)) != TFM_OK) break;
        /* The most likely token that may be emitted: never pad or bos (as
         * fairseq), so a generated token is never mistaken for padding. */
        tfm_decoder_argmax(d, cfg->pad_id, cfg->bos_id, -1, tok);
        if (!record(cfg, tok, B, t, max_len, out, lengths, done)) break;
    }
    free(tok);
    free(done);
    return st;
}

tfm_status tfm_generate(tfm_decoder *d, const int32_t *prompts, int B, int P, int max_new,
                        float temperature, int top_k, uint64_t seed, int32_t *out, int *lengths) {
    const tfm_config *cfg = &d->m->cfg;
    int V = cfg->tgt_vocab;
    if (P <= 0 || max_new <= 0 || P + max_new > d->max_T + 1)
        return tfm_error(TFM_ERR_INVALID, "generate: prompt %d + %d new tokens exceed the cache length %d", P,
                         max_new, d->max_T);
    TFM_TRY(tfm_decoder_start(d, NULL, B, 0));
    int32_t *tok = malloc((size_t)B * sizeof *tok);
    uint8_t *done = calloc((size_t)B, 1);
    float *probs = malloc((size_t)V * sizeof *probs);
    if (!tok || !done || !probs) {
        free(tok);
        free(done);
        free(probs);
        return tfm_error(TFM_ERR_NOMEM, "generate: out of memory");
    }
    tfm_status st = TFM_OK;
    /* The prompt, one position per step (left padding is masked). */
    for (int t = 0; t < P && st == TFM_OK; t++) {
        for (int b = 0; b < B; b++) tok[b] = prompts[(size_t)b * P + t];
        st = tfm_decoder_step(d, tok);
    }
    for (int b = 0; b < B; b++) lengths[b] = 0;
    tfm_rng rng;
    tfm_rng_init(&rng, seed, 7);
    for (int t = 0; t < max_new && st == TFM_OK; t++) {
        for (int b = 0; b < B; b++) {
            const float *lg = tfm_decoder_logits(d) + (size_t)b * V;
            if (temperature <= 0) {
                tok[b] = best_token(cfg, lg);
                continue;
            }
            /* Softmax at the temperature, keeping only the top_k largest. */
            float kth = -INFINITY;
            if (top_k > 0 && top_k < V) {
                memcpy(probs, lg, (size_t)V * sizeof *probs);
                for (int i = 0; i < top_k; i++) { /* partial selection: k passes */
                    int j = argmax(probs, V);
                    kth = probs[j];
                    probs[j] = -INFINITY;
                }
            }
            float mx = lg[argmax(lg, V)];
            double sum = 0;
            for (int v = 0; v < V; v++) {
                int allowed = lg[v] >= kth && v != cfg->pad_id && v != cfg->bos_id;
                probs[v] = allowed ? expf((lg[v] - mx) / temperature) : 0.0f;
                sum += probs[v];
            }
            double u = tfm_rng_next_uniform(&rng) * sum, acc = 0;
            int32_t pick = V - 1;
            for (int v = 0; v < V; v++) {
                acc += probs[v];
                if (u < acc) { pick = v; break; }
            }
            tok[b] = pick;
        }
        if (!record(cfg, tok, B, t, max_new, out, lengths, done)) break;
        if (t + 1 < max_new) st = tfm_decoder_step(d, tok);
    }
    free(tok);
    free(done);
    free(probs);
    return st;
}

tfm_status tfm_greedy_translate_uncached(const tfm_model *m, tfm_workspace *ws, const int32_t *src,
                                         int B, int S, int max_len, int32_t *out, int *lengths) {
    const tfm_config *cfg = &m->cfg;
    int V = cfg->tgt_vocab;
    int32_t *prefix = malloc((size_t)B * (max_len + 1) * sizeof *prefix);
    uint8_t *done = calloc((size_t)B, 1);
    int32_t *next = malloc((size_t)B * sizeof *next);
    if (!prefix || !done || !next) {
        free(prefix);
        free(done);
        free(next);
        return tfm_error(TFM_ERR_NOMEM, "greedy: out of memory");
    }
    for (int b = 0; b < B; b++) lengths[b] = 0;
    for (int b = 0; b < B * max_len; b++) out[b] = cfg->pad_id;
    tfm_status st = TFM_OK;
    for (int t = 0; t < max_len; t++) {
        /* prefix [B, t+1] = bos, out[0..t) */
        for (int b = 0; b < B; b++) {
            prefix[(size_t)b * (t + 1)] = cfg->bos_id;
            for (int j = 0; j < t; j++) prefix[(size_t)b * (t + 1) + 1 + j] = out[(size_t)b * max_len + j];
        }
        tfm_batch batch = {.B = B, .S = S, .T = t + 1, .src = src, .tgt_in = prefix};
        if ((st = tfm_model_forward(m, ws, &batch, 0, 0)) != TFM_OK) break;
        float *owned;
        const float *logits = tfm_backend_host_floats(m->be, ws->logits, (size_t)B * (t + 1) * V, &owned);
        if (!logits) {
            st = tfm_error(TFM_ERR_NOMEM, "greedy: out of memory");
            break;
        }
        for (int b = 0; b < B; b++) next[b] = best_token(cfg, logits + ((size_t)b * (t + 1) + t) * V);
        free(owned);
        if (!record(cfg, next, B, t, max_len, out, lengths, done)) break;
    }
    free(prefix);
    free(done);
    free(next);
    return st;
}
