/*
 * model.c: model and workspace lifetimes, and the forward and backward passes.
 *
 * The forward is written once as explicit layer sequencing; the backward
 * replays it in reverse. There is no graph and no autodiff. Each layer is three
 * blocks (self-attention, cross-attention in decoder layers of an
 * encoder-decoder model, FFN), each wrapped the same way:
 *   post-LN (paper): out = LN(x + dropout(f(x)))
 *   pre-LN:          out = x + dropout(f(LN(x)))
 * Every op goes through the model's backend (m->be): the reference CPU ops,
 * or a device backend whose memory holds the parameters and the workspace.
 * The host prepares token ids, padding masks and positions and uploads them.
 */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/status.h"
#include "backend/backend.h"

/* ------------------------------------------------------------- model init */

static void init_tensor(float *p, const tfm_tensor_info *t, int D, uint64_t seed, int index) {
    tfm_rng rng;
    tfm_rng_init(&rng, seed, 1000 + (uint64_t)index);
    switch (t->init) {
    case TFM_INIT_ZERO:
        memset(p, 0, t->numel * sizeof *p);
        break;
    case TFM_INIT_ONE:
        for (size_t i = 0; i < t->numel; i++) p[i] = 1.0f;
        break;
    case TFM_INIT_XAVIER: {
        float bound = sqrtf(6.0f / (float)(t->shape[0] + t->shape[1]));
        for (size_t i = 0; i < t->numel; i++) p[i] = (2.0f * tfm_rng_next_uniform(&rng) - 1.0f) * bound;
        break;
    }
    case TFM_INIT_EMBED: {
        float std = 1.0f / sqrtf((float)D);
        for (size_t i = 0; i < t->numel; i++) p[i] = std * tfm_rng_next_normal(&rng);
        break;
    }
    }
}

tfm_status tfm_model_init(tfm_model *m, const tfm_config *cfg, uint64_t seed) {
    memset(m, 0, sizeof *m);
    TFM_TRY(tfm_config_validate(cfg));
    m->cfg = *cfg;
    m->be = tfm_backend_cpu();
    m->dk = tfm_config_dk(cfg);
    m->dv = tfm_config_dv(cfg);
    m->qkv_dim = cfg->heads * (2 * m->dk + m->dv);
    TFM_TRY(tfm_layout_init(&m->layout, cfg));
    m->params = m->be->alloc(m->layout.n_params * sizeof *m->params);
    if (!m->params) {
        tfm_model_free(m);
        return tfm_error(TFM_ERR_NOMEM, "out of memory for %zu parameters", m->layout.n_params);
    }
    tfm_status st = tfm_weights_bind(&m->w, cfg, m->params);
    if (st != TFM_OK) {
        tfm_model_free(m);
        return st;
    }
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const tfm_tensor_info *t = &m->layout.tensors[i];
        if (t->tied_to < 0) init_tensor(m->params + t->offset, t, cfg->d_model, seed, i);
    }
    if (cfg->positions == TFM_POS_SINUSOIDAL) {
        m->pos_table = m->be->alloc((size_t)cfg->max_positions * cfg->d_model * sizeof *m->pos_table);
        if (!m->pos_table) {
            tfm_model_free(m);
            return tfm_error(TFM_ERR_NOMEM, "out of memory for the position table");
        }
        tfm_sinusoidal_table(m->pos_table, cfg->max_positions, cfg->d_model);
    }
    return TFM_OK;
}

void tfm_model_free(tfm_model *m) {
    tfm_weights_free(&m->w);
    tfm_layout_free(&m->layout);
    if (m->be) {
        m->be->free(m->params);
        m->be->free(m->pos_table);
    }
    memset(m, 0, sizeof *m);
}

/* A copy of n floats of `from`'s memory in `to`'s memory; NULL when out of memory. */
static float *move_floats(const tfm_backend *from, const tfm_backend *to, const float *p, size_t n) {
    float *owned, *dst = to->alloc(n * sizeof *dst);
    const float *host = dst ? tfm_backend_host_floats(from, p, n, &owned) : NULL;
    if (!host) {
        if (dst) to->free(dst);
        return NULL;
    }
    to->upload(dst, host, n * sizeof *dst);
    free(owned);
    return dst;
}

tfm_status tfm_model_to_backend(tfm_model *m, const tfm_backend *be) {
    if (be == m->be) return TFM_OK;
    size_t np = m->layout.n_params, npos = (size_t)m->cfg.max_positions * m->cfg.d_model;
    float *params = move_floats(m->be, be, m->params, np);
    float *pos = params && m->pos_table ? move_floats(m->be, be, m->pos_table, npos) : NULL;
    tfm_weights w;
    tfm_status st = !params || (m->pos_table && !pos)
                        ? tfm_error(TFM_ERR_NOMEM, "out of %s memory for %zu parameters", be->name, np)
                        : tfm_weights_bind(&w, &m->cfg, params);
    if (st != TFM_OK) {
        if (params) be->free(params);
        if (pos) be->free(pos);
        return st;
    }
    tfm_weights_free(&m->w);
    m->be->free(m->params);
    m->be->free(m->pos_table);
    m->w = w;
    m->params = params;
    m->pos_table = pos;
    m->be = be;
    return TFM_OK;
}

void tfm_model_get_params(const tfm_model *m, float *host) {
    m->be->download(host, m->params, m->layout.n_params * sizeof *host);
}

void tfm_model_set_params(tfm_model *m, const float *host) {
    m->be->upload(m->params, host, m->layout.n_params * sizeof *host);
}

/* -------------------------------------------------------------- workspace */

/* Carves named arrays out of one allocation: a first pass with base == NULL
 * counts, a second assigns. */
typedef struct carver {
    float *base;
    size_t used;
} carver;

static float *take(carver *c, size_t n) {
    float *p = c->base ? c->base + c->used : NULL;
    c->used += (n + 15) & ~(size_t)15; /* keep every array 64-byte aligned */
    return p;
}

static void take_block(carver *c, tfm_block_acts *a, size_t N, int D) {
    a->ln = take(c, N * D);
    a->mean = take(c, N);
    a->rstd = take(c, N);
    a->res = take(c, N * D);
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* A kept input of a linear of n_in -> n_out over N rows (backend.h): the
 * backend's bytes, in whole floats; NULL where the backend keeps nothing. */
static void *take_keep(carver *c, const tfm_model *m, size_t N, int n_in, int n_out) {
    size_t bytes = m->be->linear_keep_bytes((int)N, n_in, n_out);
    return bytes ? (void *)take(c, (bytes + sizeof(float) - 1) / sizeof(float)) : NULL;
}

/* One stack's activations: N rows of length at most L (B rows at most), and
 * for cross-attention sources of at most S tokens in at most `src_cells`. A
 * [B, H, Lq, Lk] score array holds at most rows * Lk elements per head. */
static void take_stack(carver *c, tfm_stack_acts *s, const tfm_model *m, int layers, int cross,
                       int B, int L, size_t N, int S, size_t src_cells, int tiled) {
    const tfm_config *cfg = &m->cfg;
    int D = cfg->d_model, H = cfg->heads;
    s->embed = take(c, N * D);
    for (int i = 0; i < layers; i++) {
        tfm_layer_acts *a = &s->layers[i];
        take_block(c, &a->self, N, D);
        a->qkv = take(c, N * m->qkv_dim);
        if (tiled) a->lse = take(c, (size_t)H * N);
        else a->probs = take(c, (size_t)H * min_size((size_t)B * L * L, N * L));
        a->att = take(c, N * H * m->dv);
        a->keep_qkv = take_keep(c, m, N, D, m->qkv_dim);
        a->keep_att = take_keep(c, m, N, H * m->dv, D);
        if (cross) {
            take_block(c, &a->cross, N, D);
            a->cq = take(c, N * H * m->dk);
            a->ckv = take(c, src_cells * H * (m->dk + m->dv));
            if (tiled) a->clse = take(c, (size_t)H * N);
            else a->cprobs = take(c, (size_t)H * min_size(N * S, src_cells * L));
            a->catt = take(c, N * H * m->dv);
            a->keep_cq = take_keep(c, m, N, D, H * m->dk);
            /* one copy of the encoder output for every layer's keys|values */
            a->keep_ckv = i == 0 ? take_keep(c, m, src_cells, D, H * (m->dk + m->dv)) : s->layers[0].keep_ckv;
            a->keep_catt = take_keep(c, m, N, H * m->dv, D);
        }
        take_block(c, &a->ffn, N, D);
        a->ffn_h = take(c, N * cfg->d_ff);
        a->ffn_a = take(c, N * cfg->d_ff);
    }
    if (cfg->norm == TFM_NORM_PRE) take_block(c, &s->final, N, D);
}

static void carve_workspace(carver *c, tfm_workspace *ws, const tfm_model *m) {
    const tfm_config *cfg = &m->cfg;
    int B = ws->max_B, S = ws->max_S, T = ws->max_T, D = cfg->d_model, H = cfg->heads;
    int has_enc = cfg->enc_layers > 0, has_dec = cfg->dec_layers > 0;
    size_t ns = (size_t)ws->max_src_cells, nt = (size_t)ws->max_tgt_cells;
    if (has_enc) take_stack(c, &ws->enc, m, cfg->enc_layers, 0, B, S, ns, 0, 0, ws->attn_tiled);
    if (has_dec) take_stack(c, &ws->dec, m, cfg->dec_layers, has_enc, B, T, nt, S, ns, ws->attn_tiled);
    size_t n_out = has_dec ? nt : ns;
    size_t n_max = ns > nt ? ns : nt;
    int L = S > T ? S : T;
    /* Attention scratch: the largest score array of any stack. */
    size_t scores = (size_t)H * min_size((size_t)B * L * L, n_max * L);
    ws->logits = take(c, n_out * cfg->tgt_vocab);
    ws->lse = take(c, n_out);
    ws->proj = take(c, n_max * D);
    ws->g0 = take(c, n_max * D);
    ws->g1 = take(c, n_max * D);
    ws->gtmp = take(c, n_max * D);
    ws->datt = take(c, n_max * H * m->dv);
    ws->dqkv = take(c, n_max * m->qkv_dim);
    ws->dprobs = take(c, ws->attn_tiled ? ws->attn_scratch_len : scores);
    ws->dffn = take(c, n_max * cfg->d_ff);
    if (has_enc && has_dec) {
        ws->dmem = take(c, ns * D);
        ws->dckv = take(c, ns * H * (m->dk + m->dv));
    }
}

tfm_status tfm_workspace_init(tfm_workspace *ws, const tfm_model *m, int max_B, int max_S,
                              int max_T) {
    return tfm_workspace_init_cells(ws, m, max_B, max_S, max_T, 0, 0);
}

tfm_status tfm_workspace_init_cells(tfm_workspace *ws, const tfm_model *m, int max_B, int max_S, int max_T,
                                    long max_src_cells, long max_tgt_cells) {
    return tfm_workspace_init_mode(ws, m, max_B, max_S, max_T, max_src_cells, max_tgt_cells, TFM_ATTENTION_AUTO);
}

/* The dims of the largest attention call of a workspace: self-attention over
 * L keys or cross-attention over S (sizes only; for the backend's scratch and
 * preference queries). */
static tfm_attn_dims largest_dims(const tfm_model *m, int B, int Tq, int Tk) {
    tfm_attn_dims d = {.B = B, .H = m->cfg.heads, .Tq = Tq, .Tk = Tk, .dk = m->dk, .dv = m->dv};
    return d;
}

/* Chooses full or tiled attention (see tfm_attention_mode) and sizes the
 * tiled ops' scratch for the largest call. */
static tfm_status choose_attention(tfm_workspace *ws, const tfm_model *m, tfm_attention_mode mode) {
    const tfm_backend *be = m->be;
    int has_tiled = be->attention_tiled_forward && be->attention_tiled_backward && be->attention_tiled_scratch;
    const char *env = getenv("TFM_ATTENTION");
    if (mode == TFM_ATTENTION_AUTO && env && *env) {
        if (!strcmp(env, "full")) mode = TFM_ATTENTION_FULL;
        else if (!strcmp(env, "tiled")) mode = TFM_ATTENTION_TILED;
        else if (strcmp(env, "auto"))
            return tfm_error(TFM_ERR_INVALID, "TFM_ATTENTION=%s: expected full, tiled or auto", env);
    }
    if (mode == TFM_ATTENTION_TILED && !has_tiled)
        return tfm_error(TFM_ERR_INVALID, "workspace: backend %s has no tiled attention", be->name);
    int S = ws->max_S, T = ws->max_T, L = S > T ? S : T;
    tfm_attn_dims self = largest_dims(m, ws->max_B, L, L);
    ws->attn_tiled = mode == TFM_ATTENTION_TILED ||
                     (mode == TFM_ATTENTION_AUTO && has_tiled &&
                      (L >= TFM_TILED_MIN_LEN ||
                       (be->attention_tiled_preferred && be->attention_tiled_preferred(&self))));
    if (ws->attn_tiled) {
        size_t n = be->attention_tiled_scratch(&self);
        if (S > 0 && T > 0) {
            tfm_attn_dims cross = largest_dims(m, ws->max_B, T, S);
            size_t nc = be->attention_tiled_scratch(&cross);
            if (nc > n) n = nc;
        }
        ws->attn_scratch_len = n > 0 ? n : 1;
    }
    return TFM_OK;
}

tfm_status tfm_workspace_init_mode(tfm_workspace *ws, const tfm_model *m, int max_B, int max_S, int max_T,
                                   long max_src_cells, long max_tgt_cells, tfm_attention_mode mode) {
    memset(ws, 0, sizeof *ws);
    const tfm_config *cfg = &m->cfg;
    int has_enc = cfg->enc_layers > 0, has_dec = cfg->dec_layers > 0;
    if (max_B <= 0 || (has_enc && max_S <= 0) || (has_dec && max_T <= 0))
        return tfm_error(TFM_ERR_INVALID, "workspace: batch %d x source %d x target %d is empty",
                         max_B, max_S, max_T);
    if (max_S > cfg->max_positions || max_T > cfg->max_positions)
        return tfm_error(TFM_ERR_INVALID,
                         "workspace: length %d exceeds max_positions %d", max_S > max_T ? max_S : max_T,
                         cfg->max_positions);
    ws->be = m->be;
    ws->max_B = max_B;
    ws->max_S = has_enc ? max_S : 0;
    ws->max_T = has_dec ? max_T : 0;
    long full_src = (long)max_B * ws->max_S, full_tgt = (long)max_B * ws->max_T;
    ws->max_src_cells = max_src_cells > 0 && max_src_cells < full_src ? max_src_cells : full_src;
    ws->max_tgt_cells = max_tgt_cells > 0 && max_tgt_cells < full_tgt ? max_tgt_cells : full_tgt;
    tfm_status ast = choose_attention(ws, m, mode);
    if (ast != TFM_OK) {
        memset(ws, 0, sizeof *ws);
        return ast;
    }
    if (has_enc) ws->enc.layers = calloc((size_t)cfg->enc_layers, sizeof *ws->enc.layers);
    if (has_dec) ws->dec.layers = calloc((size_t)cfg->dec_layers, sizeof *ws->dec.layers);
    const tfm_backend *be = m->be;
    size_t ns = (size_t)max_B * (ws->max_S + 1), nt = (size_t)max_B * (ws->max_T + 1);
    size_t nl = ns > nt ? ns : nt;
    ws->src_ids = be->alloc(ns * sizeof(int32_t));
    ws->tgt_ids = be->alloc(nt * sizeof(int32_t));
    ws->targets = be->alloc(nl * sizeof(int32_t));
    ws->src_pad = be->alloc(ns);
    ws->tgt_pad = be->alloc(nt);
    ws->src_pos = be->alloc(ns * sizeof(int32_t));
    ws->tgt_pos = be->alloc(nt * sizeof(int32_t));
    ws->stage = malloc(nl * (sizeof(int32_t) + 1));
    carver count = {0};
    carve_workspace(&count, ws, m);
    ws->mem = be->alloc(count.used * sizeof(float));
    if ((has_enc && !ws->enc.layers) || (has_dec && !ws->dec.layers) || !ws->src_ids || !ws->tgt_ids ||
        !ws->targets || !ws->src_pad || !ws->tgt_pad || !ws->src_pos || !ws->tgt_pos || !ws->stage ||
        !ws->mem) {
        size_t mb = count.used * sizeof(float) >> 20;
        tfm_workspace_free(ws);
        return tfm_error(TFM_ERR_NOMEM, "out of memory for activations (%zu MiB) of batch %d x %d x %d",
                         mb, max_B, max_S, max_T);
    }
    carver fill = {.base = ws->mem};
    carve_workspace(&fill, ws, m);
    return TFM_OK;
}

void tfm_workspace_free(tfm_workspace *ws) {
    free(ws->enc.layers);
    free(ws->dec.layers);
    free(ws->stage);
    if (ws->be) {
        ws->be->free(ws->src_ids);
        ws->be->free(ws->tgt_ids);
        ws->be->free(ws->targets);
        ws->be->free(ws->src_pad);
        ws->be->free(ws->tgt_pad);
        ws->be->free(ws->src_pos);
        ws->be->free(ws->tgt_pos);
        ws->be->free(ws->mem);
    }
    memset(ws, 0, sizeof *ws);
}

/* ------------------------------------------------------------ batch check */

static tfm_status check_tokens(const char *what, const int32_t *ids, int B, int L, int vocab) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < L; t++) {
            int32_t id = ids[(size_t)b * L + t];
            if (id < 0 || id >= vocab)
                return tfm_error(TFM_ERR_INVALID,
                                 "batch: %s[%d][%d] = %d is outside the vocabulary [0, %d)", what, b,
                                 t, id, vocab);
        }
    return TFM_OK;
}

tfm_status tfm_batch_check(const tfm_model *m, const tfm_workspace *ws, const tfm_batch *b) {
    const tfm_config *cfg = &m->cfg;
    int has_enc = cfg->enc_layers > 0, has_dec = cfg->dec_layers > 0;
    if (b->B <= 0) return tfm_error(TFM_ERR_INVALID, "batch: empty batch (B = %d)", b->B);
    if (b->B > ws->max_B)
        return tfm_error(TFM_ERR_INVALID, "batch: B = %d exceeds the workspace's %d", b->B, ws->max_B);
    if (has_enc) {
        if (!b->src) return tfm_error(TFM_ERR_INVALID, "batch: the model has an encoder but src is NULL");
        if (b->S <= 0) return tfm_error(TFM_ERR_INVALID, "batch: empty source (S = %d)", b->S);
        if (b->S > cfg->max_positions)
            return tfm_error(TFM_ERR_INVALID, "batch: source length %d exceeds max_positions %d",
                             b->S, cfg->max_positions);
        if (b->S > ws->max_S)
            return tfm_error(TFM_ERR_INVALID, "batch: source length %d exceeds the workspace's %d",
                             b->S, ws->max_S);
        if ((long)b->B * b->S > ws->max_src_cells)
            return tfm_error(TFM_ERR_INVALID, "batch: %d x %d source tokens exceed the workspace's %ld", b->B, b->S,
                             ws->max_src_cells);
        TFM_TRY(check_tokens("src", b->src, b->B, b->S, cfg->src_vocab));
    }
    if (has_dec) {
        if (!b->tgt_in) return tfm_error(TFM_ERR_INVALID, "batch: the model has a decoder but tgt_in is NULL");
        if (b->T <= 0) return tfm_error(TFM_ERR_INVALID, "batch: empty target (T = %d)", b->T);
        if (b->T > cfg->max_positions)
            return tfm_error(TFM_ERR_INVALID, "batch: target length %d exceeds max_positions %d",
                             b->T, cfg->max_positions);
        if (b->T > ws->max_T)
            return tfm_error(TFM_ERR_INVALID, "batch: target length %d exceeds the workspace's %d",
                             b->T, ws->max_T);
        if ((long)b->B * b->T > ws->max_tgt_cells)
            return tfm_error(TFM_ERR_INVALID, "batch: %d x %d target tokens exceed the workspace's %ld", b->B, b->T,
                             ws->max_tgt_cells);
        TFM_TRY(check_tokens("tgt_in", b->tgt_in, b->B, b->T, cfg->tgt_vocab));
    }
    if (b->targets) TFM_TRY(check_tokens("targets", b->targets, b->B, has_dec ? b->T : b->S, cfg->tgt_vocab));
    return TFM_OK;
}

/* ---------------------------------------------------------------- forward */

/* What one stack needs to run: its shape, masks and positions, and for the
 * decoder of an encoder-decoder model the encoder output. */
typedef struct stack_ctx {
    int id;                    /* 0 encoder, 1 decoder: part of the dropout stream */
    int B, L, N;               /* batch, length, rows */
    const uint8_t *pad;        /* [B, L] key padding of self-attention */
    const int32_t *pos;        /* [N] */
    int causal;
    const float *memory;       /* [B*S, D] or NULL */
    int memory_filled;         /* the encoder's last LayerNorm filled the shared keep of memory */
    const uint8_t *mem_pad;    /* [B, S] */
    int S;
    int training;
    uint64_t seed;
} stack_ctx;

enum { SITE_SELF_PROBS, SITE_SELF_RES, SITE_CROSS_PROBS, SITE_CROSS_RES, SITE_FFN_ACT, SITE_FFN_RES, SITE_EMBED };

/* A distinct random stream for every dropout site of the model. */
static uint64_t stream_id(const stack_ctx *c, int layer, int site) {
    return ((uint64_t)c->id * 4096 + (uint64_t)(layer + 1)) * 16 + (uint64_t)site;
}

static float drop_p(const stack_ctx *c, float p) { return c->training ? p : 0.0f; }

/* A linear's kept input (linear_forward_keep) in training forwards, whose
 * backward reads it; NULL otherwise. The backward's stack_ctx has the
 * forward's `training`, so both sides pass the same. */
static void *kept(const stack_ctx *c, void *keep) { return c->training ? keep : NULL; }

static tfm_attn_dims self_dims(const tfm_model *m, const stack_ctx *c, int layer) {
    int H = m->cfg.heads, row = m->qkv_dim;
    tfm_attn_dims d = {
        .B = c->B, .H = H, .Tq = c->L, .Tk = c->L, .dk = m->dk, .dv = m->dv,
        .q_row = row, .q_batch = (long)c->L * row, .k_row = row, .k_batch = (long)c->L * row,
        .v_row = row, .v_batch = (long)c->L * row,
        .o_row = H * m->dv, .o_batch = (long)c->L * H * m->dv,
        .causal = c->causal, .q_offset = 0, .key_pad = c->pad, .key_pad_stride = c->L,
        .scale = 1.0 / sqrt((double)m->dk),
        .dropout = drop_p(c, m->cfg.attn_dropout), .seed = c->seed,
        .stream = stream_id(c, layer, SITE_SELF_PROBS),
    };
    return d;
}

static tfm_attn_dims cross_dims(const tfm_model *m, const stack_ctx *c, int layer) {
    int H = m->cfg.heads, qrow = H * m->dk, kvrow = H * (m->dk + m->dv);
    tfm_attn_dims d = {
        .B = c->B, .H = H, .Tq = c->L, .Tk = c->S, .dk = m->dk, .dv = m->dv,
        .q_row = qrow, .q_batch = (long)c->L * qrow, .k_row = kvrow, .k_batch = (long)c->S * kvrow,
        .v_row = kvrow, .v_batch = (long)c->S * kvrow,
        .o_row = H * m->dv, .o_batch = (long)c->L * H * m->dv,
        .causal = 0, .q_offset = 0, .key_pad = c->mem_pad, .key_pad_stride = c->S,
        .scale = 1.0 / sqrt((double)m->dk),
        .dropout = drop_p(c, m->cfg.attn_dropout), .seed = c->seed,
        .stream = stream_id(c, layer, SITE_CROSS_PROBS),
    };
    return d;
}

/* The output of a block, given the norm placement. */
static const float *block_out(const tfm_model *m, const tfm_block_acts *a) {
    return m->cfg.norm == TFM_NORM_PRE ? a->res : a->ln;
}

/* Self-attention branch: proj = W^O attention(rope(W_q x), rope(W_k x), W_v x).
 * x_filled: x's copy is in keep_qkv already (backend.h, keep_filled). */
static void self_attn_forward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c,
                              int layer, const tfm_attn_weights *w, tfm_layer_acts *a,
                              const float *x, int x_filled) {
    int D = m->cfg.d_model, H = m->cfg.heads;
    m->be->linear_forward_keep(a->qkv, x, w->in_w, w->in_b, c->N, D, m->qkv_dim, kept(c, a->keep_qkv), x_filled);
    if (m->cfg.positions == TFM_POS_ROPE) {
        m->be->rope(a->qkv, m->qkv_dim, c->pos, c->N, H, m->dk, m->cfg.rope_theta, 0);
        m->be->rope(a->qkv + H * m->dk, m->qkv_dim, c->pos, c->N, H, m->dk, m->cfg.rope_theta, 0);
    }
    tfm_attn_dims d = self_dims(m, c, layer);
    d.out_keep = kept(c, a->keep_att); /* the tiled forward may write the output projection's input copy */
    const float *q = a->qkv, *k = a->qkv + H * m->dk, *v = a->qkv + 2 * H * m->dk;
    int att_filled = 0;
    if (ws->attn_tiled)
        att_filled = m->be->attention_tiled_forward(a->att, a->lse, ws->dprobs, ws->attn_scratch_len, q, k, v, &d);
    else m->be->attention_forward(a->att, a->probs, ws->dprobs, q, k, v, &d);
    m->be->linear_forward_keep(ws->proj, a->att, w->out_w, w->out_b, c->N, H * m->dv, D, kept(c, a->keep_att),
                               att_filled);
}

/* Cross-attention branch: queries from x, keys and values from the encoder
 * output (rows H*dk.. of in_proj_weight). x_filled: x's copy is in keep_cq
 * already. Every layer's keys|values read the one keep of the encoder output
 * (take_stack), made by layer 0 unless the encoder's last LayerNorm did. */
static void cross_attn_forward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c,
                               int layer, const tfm_attn_weights *w, tfm_layer_acts *a,
                               const float *x, int x_filled) {
    int D = m->cfg.d_model, H = m->cfg.heads, qd = H * m->dk, kvd = H * (m->dk + m->dv);
    m->be->linear_forward_keep(a->cq, x, w->in_w, w->in_b, c->N, D, qd, kept(c, a->keep_cq), x_filled);
    m->be->linear_forward_keep(a->ckv, c->memory, w->in_w + (size_t)qd * D, w->in_b + qd, c->B * c->S, D, kvd,
                               kept(c, a->keep_ckv), layer > 0 || c->memory_filled);
    tfm_attn_dims d = cross_dims(m, c, layer);
    d.out_keep = kept(c, a->keep_catt);
    int att_filled = 0;
    if (ws->attn_tiled)
        att_filled = m->be->attention_tiled_forward(a->catt, a->clse, ws->dprobs, ws->attn_scratch_len, a->cq,
                                                    a->ckv, a->ckv + qd, &d);
    else m->be->attention_forward(a->catt, a->cprobs, ws->dprobs, a->cq, a->ckv, a->ckv + qd, &d);
    m->be->linear_forward_keep(ws->proj, a->catt, w->out_w, w->out_b, c->N, H * m->dv, D, kept(c, a->keep_catt),
                               att_filled);
}

static void ffn_forward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c, int layer,
                        const tfm_layer_weights *w, tfm_layer_acts *a, const float *x, int x_filled) {
    int D = m->cfg.d_model, F = m->cfg.d_ff;
    m->be->ffn_forward(ws->proj, a->ffn_h, a->ffn_a, x, w->ffn_w1, w->ffn_b1, w->ffn_w2, w->ffn_b2, c->N, D, F,
                       (tfm_act_kind)m->cfg.activation, drop_p(c, m->cfg.act_dropout), c->seed,
                       stream_id(c, layer, SITE_FFN_ACT), x_filled);
}

/* The keep of the FFN's input inside its saved state (backend.h:
 * ffn_in_keep), in training forwards; NULL otherwise. */
static void *ffn_keep(const tfm_model *m, const stack_ctx *c, tfm_layer_acts *a) {
    if (!c->training) return NULL;
    return m->be->ffn_in_keep(a->ffn_h, a->ffn_a, c->N, m->cfg.d_model, m->cfg.d_ff,
                              (tfm_act_kind)m->cfg.activation, drop_p(c, m->cfg.act_dropout));
}

typedef enum { BLOCK_SELF, BLOCK_CROSS, BLOCK_FFN } block_kind;

/* One residual block: the branch, dropout, the residual sum and LayerNorm,
 * in the configured order. Returns the block output. x_filled: x's copy is
 * in the keep of the branch's first linear already; out_keep: the keep of
 * the linear that reads the block output next, or NULL; *out_filled: whether
 * the LayerNorm (post-LN) filled it. */
static const float *block_forward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c,
                                  int layer, const tfm_layer_weights *w, tfm_layer_acts *a,
                                  block_kind kind, const float *x, int x_filled, void *out_keep,
                                  int *out_filled) {
    int D = m->cfg.d_model, pre = m->cfg.norm == TFM_NORM_PRE;
    tfm_block_acts *blk = kind == BLOCK_SELF ? &a->self : kind == BLOCK_CROSS ? &a->cross : &a->ffn;
    const tfm_norm_weights *nw = kind == BLOCK_SELF ? &w->norm_self : kind == BLOCK_CROSS ? &w->norm_cross : &w->norm_ffn;
    const float *in = x;
    if (pre) {
        m->be->layernorm_forward(blk->ln, blk->mean, blk->rstd, x, nw->w, nw->b, c->N, D, m->cfg.ln_eps);
        in = blk->ln;
        x_filled = 0;
    }
    int site;
    if (kind == BLOCK_SELF) {
        self_attn_forward(m, ws, c, layer, &w->self_attn, a, in, x_filled);
        site = SITE_SELF_RES;
    } else if (kind == BLOCK_CROSS) {
        cross_attn_forward(m, ws, c, layer, &w->cross_attn, a, in, x_filled);
        site = SITE_CROSS_RES;
    } else {
        ffn_forward(m, ws, c, layer, w, a, in, x_filled);
        site = SITE_FFN_RES;
    }
    float p = drop_p(c, m->cfg.dropout);
    *out_filled = 0;
    if (pre)
        m->be->residual_dropout(blk->res, x, ws->proj, (size_t)c->N * D, p, c->seed, stream_id(c, layer, site));
    else
        *out_filled = m->be->residual_dropout_layernorm(blk->res, blk->ln, blk->mean, blk->rstd, x, ws->proj,
                                                        nw->w, nw->b, c->N, D, m->cfg.ln_eps, p, c->seed,
                                                        stream_id(c, layer, site), out_keep);
    return block_out(m, blk);
}

static void embed_forward(const tfm_model *m, const stack_ctx *c, float *out, const int32_t *ids,
                          const float *table, const float *learned_pos) {
    const tfm_config *cfg = &m->cfg;
    int D = cfg->d_model;
    float scale = cfg->embed_scale ? sqrtf((float)D) : 1.0f;
    m->be->embedding_forward(out, ids, table, c->N, D, scale);
    if (cfg->positions == TFM_POS_SINUSOIDAL) m->be->positions_forward(out, m->pos_table, c->pos, c->N, D);
    if (cfg->positions == TFM_POS_LEARNED) m->be->positions_forward(out, learned_pos, c->pos, c->N, D);
    m->be->dropout(out, out, (size_t)c->N * D, drop_p(c, cfg->embed_dropout), c->seed,
                stream_id(c, -1, SITE_EMBED));
}

/* One stack's forward. out_keep: the keep of the linear that reads the
 * stack's output next (the decoder's shared keep of the encoder output) or
 * NULL; returns whether the last LayerNorm filled it. Each block's
 * LayerNorm (post-LN) fills the keep of the linear that reads its output
 * next: the next layer's q|k|v, the cross-attention queries, the FFN's
 * input copy (ffn_in_keep). */
static int stack_forward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c,
                         tfm_stack_acts *s, const tfm_layer_weights *layers, int n_layers,
                         const tfm_norm_weights *final_norm, const int32_t *ids,
                         const float *table, const float *learned_pos, void *out_keep) {
    embed_forward(m, c, s->embed, ids, table, learned_pos);
    const float *x = s->embed;
    int filled = 0; /* x's copy is in the keep of the linear that reads it */
    for (int l = 0; l < n_layers; l++) {
        tfm_layer_acts *a = &s->layers[l];
        void *next = c->memory ? kept(c, a->keep_cq) : ffn_keep(m, c, a);
        x = block_forward(m, ws, c, l, &layers[l], a, BLOCK_SELF, x, filled, next, &filled);
        if (c->memory)
            x = block_forward(m, ws, c, l, &layers[l], a, BLOCK_CROSS, x, filled, ffn_keep(m, c, a), &filled);
        next = l + 1 < n_layers ? kept(c, s->layers[l + 1].keep_qkv) : out_keep;
        x = block_forward(m, ws, c, l, &layers[l], a, BLOCK_FFN, x, filled, next, &filled);
    }
    if (m->cfg.norm == TFM_NORM_PRE) {
        m->be->layernorm_forward(s->final.ln, s->final.mean, s->final.rstd, x, final_norm->w,
                              final_norm->b, c->N, m->cfg.d_model, m->cfg.ln_eps);
        x = s->final.ln;
        filled = 0;
    }
    s->out = x;
    return filled;
}

/* Uploads tokens ids [B, L] (host) into the workspace arrays `dst_ids`,
 * with their padding mask and positions, computed on the host. */
static void stage_tokens(const tfm_model *m, tfm_workspace *ws, const int32_t *ids, int B, int L,
                         int32_t *dst_ids, uint8_t *dst_pad, int32_t *dst_pos) {
    size_t n = (size_t)B * L;
    int32_t *pos = ws->stage;
    uint8_t *pad = (uint8_t *)(pos + n);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < L; t++) {
            pad[(size_t)b * L + t] = ids[(size_t)b * L + t] == m->cfg.pad_id;
            pos[(size_t)b * L + t] = t;
        }
    m->be->upload(dst_ids, ids, n * sizeof *ids);
    m->be->upload(dst_pad, pad, n);
    m->be->upload(dst_pos, pos, n * sizeof *pos);
}

static stack_ctx encoder_ctx(const tfm_workspace *ws, int training, uint64_t seed) {
    stack_ctx c = {.id = 0, .B = ws->B, .L = ws->S, .N = ws->B * ws->S, .pad = ws->src_pad,
                   .pos = ws->src_pos, .causal = 0, .training = training, .seed = seed};
    return c;
}

static stack_ctx decoder_ctx(const tfm_model *m, const tfm_workspace *ws, int training, uint64_t seed) {
    int has_enc = m->cfg.enc_layers > 0;
    stack_ctx c = {.id = 1, .B = ws->B, .L = ws->T, .N = ws->B * ws->T, .pad = ws->tgt_pad,
                   .pos = ws->tgt_pos, .causal = 1, .training = training, .seed = seed,
                   .memory = has_enc ? ws->enc.out : NULL, .mem_pad = ws->src_pad, .S = ws->S};
    return c;
}

tfm_status tfm_model_stage(const tfm_model *m, tfm_workspace *ws, const tfm_batch *b, int training,
                           uint64_t seed) {
    TFM_TRY(tfm_batch_check(m, ws, b));
    const tfm_config *cfg = &m->cfg;
    int has_enc = cfg->enc_layers > 0, has_dec = cfg->dec_layers > 0;
    ws->B = b->B;
    ws->S = has_enc ? b->S : 0;
    ws->T = has_dec ? b->T : 0;
    ws->training = training;
    ws->seed = seed;
    m->be->params_lowp(m->params, m->layout.n_params); /* unchanged until the backward is done */
    if (has_enc) stage_tokens(m, ws, b->src, b->B, b->S, ws->src_ids, ws->src_pad, ws->src_pos);
    if (has_dec) stage_tokens(m, ws, b->tgt_in, b->B, b->T, ws->tgt_ids, ws->tgt_pad, ws->tgt_pos);
    int N = b->B * (has_dec ? b->T : b->S);
    ws->has_targets = b->targets != NULL;
    ws->loss_sum = 0;
    ws->n_tokens = 0;
    /* With loss_acc (the trainer's step) nobody reads the logits but the
     * backward: the backend keeps them in its own format (logits_packed). */
    ws->logits_packed = b->targets && ws->loss_acc;
    if (b->targets) m->be->upload(ws->targets, b->targets, (size_t)N * sizeof *b->targets);
    if (ws->logits_packed)
        for (int i = 0; i < N; i++) ws->n_tokens += b->targets[i] != cfg->pad_id;
    return TFM_OK;
}

void tfm_model_forward_staged(const tfm_model *m, tfm_workspace *ws) {
    const tfm_config *cfg = &m->cfg;
    int has_enc = cfg->enc_layers > 0, has_dec = cfg->dec_layers > 0;
    int memory_filled = 0; /* the encoder's last LayerNorm filled the decoder's keep of its output */
    if (has_enc) {
        stack_ctx c = encoder_ctx(ws, ws->training, ws->seed);
        void *memory_keep = has_dec ? kept(&c, ws->dec.layers[0].keep_ckv) : NULL;
        memory_filled = stack_forward(m, ws, &c, &ws->enc, m->w.enc, cfg->enc_layers, &m->w.enc_norm,
                                      ws->src_ids, m->w.src_embed, m->w.src_pos, memory_keep);
    }
    if (has_dec) {
        stack_ctx c = decoder_ctx(m, ws, ws->training, ws->seed);
        c.memory_filled = memory_filled;
        stack_forward(m, ws, &c, &ws->dec, m->w.dec, cfg->dec_layers, &m->w.dec_norm, ws->tgt_ids,
                      m->w.tgt_embed, m->w.tgt_pos, NULL);
    }
    const float *top = has_dec ? ws->dec.out : ws->enc.out;
    int N = ws->B * (has_dec ? ws->T : ws->S);
    if (ws->logits_packed) {
        m->be->logits_loss_forward(ws->logits, ws->lse, ws->loss_acc, top, m->w.generator, ws->targets, N,
                                   cfg->d_model, cfg->tgt_vocab, cfg->pad_id, cfg->label_smoothing);
        return;
    }
    m->be->linear_forward(ws->logits, top, m->w.generator, NULL, N, cfg->d_model, cfg->tgt_vocab);
    if (ws->has_targets)
        ws->loss_sum = m->be->xent_forward(ws->lse, ws->logits, ws->targets, N, cfg->tgt_vocab, cfg->pad_id,
                                           cfg->label_smoothing, &ws->n_tokens);
}

tfm_status tfm_model_forward(const tfm_model *m, tfm_workspace *ws, const tfm_batch *b,
                             int training, uint64_t seed) {
    TFM_TRY(tfm_model_stage(m, ws, b, training, seed));
    tfm_model_forward_staged(m, ws);
    return TFM_OK;
}

/* --------------------------------------------------------------- backward */

/* Self-attention branch backward: dproj (gradient of the branch output) in
 * ws->proj; writes (accumulate 0) or adds (1) the gradient of the branch
 * input x into din. */
static void self_attn_backward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c,
                               int layer, const tfm_attn_weights *w, const tfm_attn_weights *gw,
                               const tfm_layer_acts *a, const float *x, float *din, int accumulate) {
    int D = m->cfg.d_model, H = m->cfg.heads, hk = H * m->dk;
    m->be->linear_backward_kept(ws->datt, gw->out_w, gw->out_b, ws->proj, a->att, kept(c, a->keep_att), w->out_w,
                                c->N, H * m->dv, D, 0);
    tfm_attn_dims d = self_dims(m, c, layer);
    if (ws->attn_tiled)
        m->be->attention_tiled_backward(ws->dqkv, ws->dqkv + hk, ws->dqkv + 2 * hk, ws->dprobs, ws->attn_scratch_len,
                                        ws->datt, a->att, a->lse, a->qkv, a->qkv + hk, a->qkv + 2 * hk, &d);
    else
        m->be->attention_backward(ws->dqkv, ws->dqkv + hk, ws->dqkv + 2 * hk, ws->dprobs, ws->datt, a->probs,
                                  a->qkv, a->qkv + hk, a->qkv + 2 * hk, &d);
    if (m->cfg.positions == TFM_POS_ROPE) {
        m->be->rope(ws->dqkv, m->qkv_dim, c->pos, c->N, H, m->dk, m->cfg.rope_theta, 1);
        m->be->rope(ws->dqkv + hk, m->qkv_dim, c->pos, c->N, H, m->dk, m->cfg.rope_theta, 1);
    }
    m->be->linear_backward_kept(din, gw->in_w, gw->in_b, ws->dqkv, x, kept(c, a->keep_qkv), w->in_w, c->N, D,
                                m->qkv_dim, accumulate);
}

static void cross_attn_backward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c,
                                int layer, const tfm_attn_weights *w, const tfm_attn_weights *gw,
                                const tfm_layer_acts *a, const float *x, float *din, int accumulate) {
    int D = m->cfg.d_model, H = m->cfg.heads, qd = H * m->dk, kvd = H * (m->dk + m->dv);
    m->be->linear_backward_kept(ws->datt, gw->out_w, gw->out_b, ws->proj, a->catt, kept(c, a->keep_catt), w->out_w,
                                c->N, H * m->dv, D, 0);
    tfm_attn_dims d = cross_dims(m, c, layer);
    float *dq = ws->dqkv; /* [N, H*dk] */
    if (ws->attn_tiled)
        m->be->attention_tiled_backward(dq, ws->dckv, ws->dckv + qd, ws->dprobs, ws->attn_scratch_len, ws->datt,
                                        a->catt, a->clse, a->cq, a->ckv, a->ckv + qd, &d);
    else
        m->be->attention_backward(dq, ws->dckv, ws->dckv + qd, ws->dprobs, ws->datt, a->cprobs, a->cq, a->ckv,
                                  a->ckv + qd, &d);
    m->be->linear_backward_kept(din, gw->in_w, gw->in_b, dq, x, kept(c, a->keep_cq), w->in_w, c->N, D, qd,
                                accumulate);
    /* Keys and values read the encoder output: its gradient accumulates over
     * every decoder layer. */
    m->be->linear_backward_kept(ws->dmem, gw->in_w + (size_t)qd * D, gw->in_b + qd, ws->dckv, c->memory,
                                kept(c, a->keep_ckv), w->in_w + (size_t)qd * D, c->B * c->S, D, kvd, 1);
}

static void ffn_backward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c, int layer,
                         const tfm_layer_weights *w, const tfm_layer_weights *gw, const tfm_layer_acts *a,
                         const float *x, float *din, int accumulate) {
    int D = m->cfg.d_model, F = m->cfg.d_ff;
    m->be->ffn_backward(din, gw->ffn_w1, gw->ffn_b1, gw->ffn_w2, gw->ffn_b2, ws->dffn, ws->proj, x, a->ffn_h,
                        a->ffn_a, w->ffn_w1, w->ffn_w2, c->N, D, F, (tfm_act_kind)m->cfg.activation,
                        drop_p(c, m->cfg.act_dropout), c->seed, stream_id(c, layer, SITE_FFN_ACT), accumulate);
}

/* Backward of one block: g is the gradient of the block output, x the block
 * input; writes the gradient of x into dx (dx != g). */
static void block_backward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c, int layer,
                           const tfm_layer_weights *w, const tfm_layer_weights *gw,
                           const tfm_layer_acts *a, block_kind kind, const float *x,
                           const float *g, float *dx) {
    int D = m->cfg.d_model, pre = m->cfg.norm == TFM_NORM_PRE;
    size_t nd = (size_t)c->N * D;
    const tfm_block_acts *blk = kind == BLOCK_SELF ? &a->self : kind == BLOCK_CROSS ? &a->cross : &a->ffn;
    const tfm_norm_weights *nw = kind == BLOCK_SELF ? &w->norm_self : kind == BLOCK_CROSS ? &w->norm_cross : &w->norm_ffn;
    const tfm_norm_weights *gnw = kind == BLOCK_SELF ? &gw->norm_self : kind == BLOCK_CROSS ? &gw->norm_cross : &gw->norm_ffn;
    int site = kind == BLOCK_SELF ? SITE_SELF_RES : kind == BLOCK_CROSS ? SITE_CROSS_RES : SITE_FFN_RES;

    /* The gradient of the residual sum (gres) and of the branch output
     * (ws->proj = dropout(gres)). Post-LN runs g back through the norm, one
     * pass writing gres straight into dx (the residual path's share of the
     * gradient of x); pre-LN's gres is g itself. */
    float p = drop_p(c, m->cfg.dropout);
    if (pre)
        m->be->dropout(ws->proj, g, nd, p, c->seed, stream_id(c, layer, site));
    else
        m->be->layernorm_backward_dropout(dx, ws->proj, gnw->w, gnw->b, g, blk->res, blk->mean, blk->rstd, nw->w,
                                          c->N, D, p, c->seed, stream_id(c, layer, site));

    /* The branch reads x (post) or LN(x) (pre); its input gradient adds to
     * dx (post) or goes to gtmp, to be run back through the norm (pre). */
    const float *in = pre ? blk->ln : x;
    float *din = pre ? ws->gtmp : dx;
    int acc = !pre;
    if (kind == BLOCK_SELF) self_attn_backward(m, ws, c, layer, &w->self_attn, &gw->self_attn, a, in, din, acc);
    else if (kind == BLOCK_CROSS) cross_attn_backward(m, ws, c, layer, &w->cross_attn, &gw->cross_attn, a, in, din, acc);
    else ffn_backward(m, ws, c, layer, w, gw, a, in, din, acc);

    if (pre) {
        m->be->copy(dx, g, nd * sizeof *dx);
        m->be->layernorm_backward(dx, gnw->w, gnw->b, ws->gtmp, x, blk->mean, blk->rstd, nw->w, c->N, D, 1);
    }
}

/* Backward of a stack. The gradient of the stack output is in ws->g0; on
 * return the gradients of its parameters and embeddings have accumulated. */
static void stack_backward(const tfm_model *m, tfm_workspace *ws, const stack_ctx *c,
                           const tfm_stack_acts *s, const tfm_layer_weights *layers,
                           const tfm_layer_weights *glayers, int n_layers, const tfm_norm_weights *final_norm,
                           const tfm_norm_weights *gfinal, const int32_t *ids, float *gtable, float *gpos) {
    const tfm_config *cfg = &m->cfg;
    int D = cfg->d_model, pre = cfg->norm == TFM_NORM_PRE;
    float *g = ws->g0, *dx = ws->g1;
    if (pre) {
        const float *x = n_layers > 0 ? block_out(m, &s->layers[n_layers - 1].ffn) : s->embed;
        m->be->layernorm_backward(dx, gfinal->w, gfinal->b, g, x, s->final.mean, s->final.rstd,
                               final_norm->w, c->N, D, 0);
        float *t = g; g = dx; dx = t;
    }
    for (int l = n_layers - 1; l >= 0; l--) {
        const tfm_layer_acts *a = &s->layers[l];
        const float *layer_in = l > 0 ? block_out(m, &s->layers[l - 1].ffn) : s->embed;
        const float *self_out = block_out(m, &a->self);
        const float *ffn_in = c->memory ? block_out(m, &a->cross) : self_out;
        float *t;
        block_backward(m, ws, c, l, &layers[l], &glayers[l], a, BLOCK_FFN, ffn_in, g, dx);
        t = g; g = dx; dx = t;
        if (c->memory) {
            block_backward(m, ws, c, l, &layers[l], &glayers[l], a, BLOCK_CROSS, self_out, g, dx);
            t = g; g = dx; dx = t;
        }
        block_backward(m, ws, c, l, &layers[l], &glayers[l], a, BLOCK_SELF, layer_in, g, dx);
        t = g; g = dx; dx = t;
    }
    /* g is now the gradient of the embedding output. */
    m->be->dropout(g, g, (size_t)c->N * D, drop_p(c, cfg->embed_dropout), c->seed, stream_id(c, -1, SITE_EMBED));
    float scale = cfg->embed_scale ? sqrtf((float)D) : 1.0f;
    m->be->embedding_backward(gtable, g, ids, c->N, D, scale);
    if (cfg->positions == TFM_POS_LEARNED) m->be->positions_backward(gpos, g, c->pos, c->N, D);
}

tfm_status tfm_model_backward(const tfm_model *m, tfm_workspace *ws, const tfm_batch *b,
                              const tfm_weights *grads, float grad_scale) {
    const tfm_config *cfg = &m->cfg;
    int has_enc = cfg->enc_layers > 0, has_dec = cfg->dec_layers > 0;
    if (!b->targets) return tfm_error(TFM_ERR_INVALID, "backward: the batch has no targets");
    if (b->B != ws->B || (has_enc && b->S != ws->S) || (has_dec && b->T != ws->T))
        return tfm_error(TFM_ERR_INVALID, "backward: the batch is not the one of the last forward");
    int N = b->B * (has_dec ? b->T : b->S), D = cfg->d_model;
    const float *top = has_dec ? ws->dec.out : ws->enc.out;

    m->be->logits_backward(ws->g0, grads->generator, ws->logits, ws->logits, ws->lse, ws->targets, top,
                           m->w.generator, N, D, cfg->tgt_vocab, cfg->pad_id, cfg->label_smoothing, grad_scale, 0,
                           ws->logits_packed);
    if (has_dec) {
        stack_ctx c = decoder_ctx(m, ws, ws->training, ws->seed);
        if (has_enc) m->be->zero(ws->dmem, (size_t)ws->B * ws->S * D * sizeof *ws->dmem);
        stack_backward(m, ws, &c, &ws->dec, m->w.dec, grads->dec, cfg->dec_layers, &m->w.dec_norm,
                       &grads->dec_norm, ws->tgt_ids, grads->tgt_embed, grads->tgt_pos);
        if (has_enc) m->be->copy(ws->g0, ws->dmem, (size_t)ws->B * ws->S * D * sizeof *ws->g0);
    }
    if (has_enc) {
        stack_ctx c = encoder_ctx(ws, ws->training, ws->seed);
        stack_backward(m, ws, &c, &ws->enc, m->w.enc, grads->enc, cfg->enc_layers, &m->w.enc_norm,
                       &grads->enc_norm, ws->src_ids, grads->src_embed, grads->src_pos);
    }
    return TFM_OK;
}

tfm_status tfm_model_encode(const tfm_model *m, tfm_workspace *ws, const int32_t *src, int B, int S) {
    const tfm_config *cfg = &m->cfg;
    if (cfg->enc_layers == 0) return tfm_error(TFM_ERR_INVALID, "encode: the model has no encoder");
    if (B <= 0 || B > ws->max_B || S <= 0 || S > ws->max_S || (long)B * S > ws->max_src_cells)
        return tfm_error(TFM_ERR_INVALID, "encode: batch %d x %d does not fit the workspace (%d x %d)", B, S,
                         ws->max_B, ws->max_S);
    if (S > cfg->max_positions)
        return tfm_error(TFM_ERR_INVALID, "encode: source length %d exceeds max_positions %d", S,
                         cfg->max_positions);
    TFM_TRY(check_tokens("src", src, B, S, cfg->src_vocab));
    ws->B = B;
    ws->S = S;
    ws->training = 0;
    stage_tokens(m, ws, src, B, S, ws->src_ids, ws->src_pad, ws->src_pos);
    stack_ctx c = encoder_ctx(ws, 0, 0);
    stack_forward(m, ws, &c, &ws->enc, m->w.enc, cfg->enc_layers, &m->w.enc_norm, ws->src_ids,
                  m->w.src_embed, m->w.src_pos, NULL);
    return TFM_OK;
}

const float *tfm_workspace_attention(const tfm_model *m, const tfm_workspace *ws, tfm_attn_kind kind,
                                     int layer, int *Tq, int *Tk) {
    const tfm_config *cfg = &m->cfg;
    int has_enc = cfg->enc_layers > 0;
    if (ws->attn_tiled) return NULL; /* no probabilities kept */
    if (kind == TFM_ATTN_ENCODER) {
        if (layer < 0 || layer >= cfg->enc_layers) return NULL;
        *Tq = *Tk = ws->S;
        return ws->enc.layers[layer].probs;
    }
    if (layer < 0 || layer >= cfg->dec_layers) return NULL;
    if (kind == TFM_ATTN_DECODER) {
        *Tq = *Tk = ws->T;
        return ws->dec.layers[layer].probs;
    }
    if (!has_enc) return NULL;
    *Tq = ws->T;
    *Tk = ws->S;
    return ws->dec.layers[layer].cprobs;
}
