/* trainer.c: see trainer.h. */
#include "train/trainer.h"

#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/status.h"

tfm_status tfm_trainer_init(tfm_trainer *tr, tfm_model *m, const tfm_adam_params *opt,
                            const tfm_lr_schedule *sched, int max_B, int max_S, int max_T,
                            uint64_t seed) {
    return tfm_trainer_init_cells(tr, m, opt, sched, max_B, max_S, max_T, 0, 0, seed);
}

tfm_status tfm_trainer_init_cells(tfm_trainer *tr, tfm_model *m, const tfm_adam_params *opt,
                                  const tfm_lr_schedule *sched, int max_B, int max_S, int max_T,
                                  long max_src_cells, long max_tgt_cells, uint64_t seed) {
    memset(tr, 0, sizeof *tr);
    TFM_TRY(tfm_adam_validate(opt));
    TFM_TRY(tfm_lr_validate(sched));
    tr->m = m;
    tr->opt = *opt;
    tr->sched = *sched;
    tr->seed = seed;
    size_t n = m->layout.n_params;
    tr->grad = m->be->alloc(3 * n * sizeof *tr->grad);
    tr->stats = m->be->alloc(2 * sizeof *tr->stats);
    if (!tr->grad || !tr->stats) {
        tfm_trainer_free(tr);
        return tfm_error(TFM_ERR_NOMEM, "trainer: out of memory for gradients and moments");
    }
    tr->adam_m = tr->grad + n;
    tr->adam_v = tr->grad + 2 * n;
    const char *graphs = getenv("TFM_CUDA_GRAPHS");
    tr->graphs_on = m->be->graph_begin && m->be->step_values && !(graphs && !strcmp(graphs, "0"));
    tfm_status st = tfm_weights_bind(&tr->grad_views, &m->cfg, tr->grad);
    if (st == TFM_OK)
        st = tfm_workspace_init_cells(&tr->ws, m, max_B, max_S, max_T, max_src_cells, max_tgt_cells);
    if (st != TFM_OK) tfm_trainer_free(tr);
    return st;
}

void tfm_trainer_free(tfm_trainer *tr) {
    for (int i = 0; i < TFM_TRAINER_GRAPHS; i++)
        if (tr->graphs[i].graph) tr->m->be->graph_free(tr->graphs[i].graph);
    if (tr->ws.mem) tfm_workspace_free(&tr->ws);
    tfm_weights_free(&tr->grad_views);
    if (tr->m) {
        tr->m->be->free(tr->grad);
        tr->m->be->free(tr->stats);
    }
    memset(tr, 0, sizeof *tr);
}

/* The graph slot of b's shape: its own, else a free or the least recently
 * used one (its recording freed), counted from zero runs. */
static tfm_step_graph *graph_slot(tfm_trainer *tr, const tfm_batch *b) {
    tfm_step_graph *oldest = &tr->graphs[0];
    for (int i = 0; i < TFM_TRAINER_GRAPHS; i++) {
        tfm_step_graph *g = &tr->graphs[i];
        if (g->runs > 0 && g->B == b->B && g->S == b->S && g->T == b->T) return g;
        if (g->last_used < oldest->last_used) oldest = g;
    }
    if (oldest->graph) tr->m->be->graph_free(oldest->graph);
    memset(oldest, 0, sizeof *oldest);
    oldest->B = b->B, oldest->S = b->S, oldest->T = b->T;
    return oldest;
}

/* Forward + backward of the staged batch b: replayed from its shape's
 * recording, recorded now (its shape's second run), or run directly. */
static tfm_status forward_backward(tfm_trainer *tr, const tfm_batch *b, uint64_t seed, float grad_scale) {
    const tfm_backend *be = tr->m->be;
    tfm_step_graph *g = tr->graphs_on ? graph_slot(tr, b) : NULL;
    if (g) {
        g->runs++;
        g->last_used = ++tr->micro_total;
        be->step_values(seed, grad_scale);
        if (g->graph && be->graph_launch(g->graph)) return TFM_OK;
        if (g->graph) { /* stale: the backend's buffers moved; record it again */
            be->graph_free(g->graph);
            g->graph = NULL;
        }
        if (!g->failed && g->runs >= 2 && be->graph_begin()) {
            tfm_model_forward_staged(tr->m, &tr->ws);
            tfm_status st = tfm_model_backward(tr->m, &tr->ws, b, &tr->grad_views, grad_scale);
            g->graph = be->graph_end(); /* nothing ran: the graph runs it, or the ops below */
            if (st != TFM_OK) {
                if (g->graph) be->graph_free(g->graph), g->graph = NULL;
                return st;
            }
            if (g->graph && be->graph_launch(g->graph)) return TFM_OK;
            g->failed = g->graph == NULL;
        }
    }
    tfm_model_forward_staged(tr->m, &tr->ws);
    return tfm_model_backward(tr->m, &tr->ws, b, &tr->grad_views, grad_scale);
}

tfm_status tfm_trainer_accumulate(tfm_trainer *tr, const tfm_batch *b, float grad_scale) {
    /* Each micro-batch of each step gets its own dropout randomness. */
    uint64_t seed = tfm_rng_u64(tr->seed, (uint64_t)tr->step, (uint64_t)tr->micro);
    if (tr->micro == 0) tr->m->be->zero(tr->stats, sizeof *tr->stats);
    if (!b->targets) return tfm_error(TFM_ERR_INVALID, "train step: the batch has no targets");
    tr->ws.loss_acc = tr->stats; /* the loss stays on the device until the update */
    tfm_status st = tfm_model_stage(tr->m, &tr->ws, b, 1, seed);
    if (st == TFM_OK) st = forward_backward(tr, b, seed, grad_scale);
    tr->ws.loss_acc = NULL;
    TFM_TRY(st);
    tr->micro++;
    tr->n_tokens += tr->ws.n_tokens;
    return TFM_OK;
}

float tfm_trainer_update(tfm_trainer *tr) {
    size_t n = tr->m->layout.n_params;
    tr->step++;
    tr->last_lr = tfm_lr_at(&tr->sched, tr->step);
    const tfm_backend *be = tr->m->be;
    if (tr->micro == 0) be->zero(tr->stats, sizeof *tr->stats); /* an update without micro-batches */
    tfm_optim_step_on(be, &tr->opt, tr->m->params, tr->grad, tr->adam_m, tr->adam_v, n, tr->step, tr->last_lr,
                      (float *)(tr->stats + 1));
    be->zero(tr->grad, n * sizeof *tr->grad);
    double stats[2];
    be->download(stats, tr->stats, sizeof stats);
    memcpy(&tr->last_grad_norm, &stats[1], sizeof tr->last_grad_norm);
    tr->loss_sum = stats[0];
    float loss = tr->n_tokens ? (float)(tr->loss_sum / tr->n_tokens) : 0.0f;
    tr->micro = 0;
    tr->n_tokens = 0;
    return loss;
}

tfm_status tfm_trainer_step(tfm_trainer *tr, const tfm_batch *b, float *loss) {
    long count = 0;
    const int32_t *tg = b->targets;
    int L = tr->m->cfg.dec_layers > 0 ? b->T : b->S;
    if (!tg) return tfm_error(TFM_ERR_INVALID, "train step: the batch has no targets");
    for (long i = 0; i < (long)b->B * L; i++) count += tg[i] != tr->m->cfg.pad_id;
    if (count == 0) return tfm_error(TFM_ERR_INVALID, "train step: every target is padding");
    TFM_TRY(tfm_trainer_accumulate(tr, b, 1.0f / (float)count));
    float l = tfm_trainer_update(tr);
    if (loss) *loss = l;
    return TFM_OK;
}

double tfm_trainer_pending_loss(tfm_trainer *tr) {
    if (tr->micro == 0 || tr->n_tokens == 0) return 0;
    double sum;
    tr->m->be->download(&sum, tr->stats, sizeof sum);
    return sum / tr->n_tokens;
}

tfm_status tfm_trainer_eval(tfm_trainer *tr, const tfm_batch *b, double *loss_sum, long *n_tokens) {
    TFM_TRY(tfm_model_forward(tr->m, &tr->ws, b, 0, 0));
    *loss_sum = tr->ws.loss_sum;
    *n_tokens = tr->ws.n_tokens;
    return TFM_OK;
}
