/*
 * beam.c: batched beam search with a length penalty and n-best output.
 *
 * Layout: the decoder holds n_act * beam rows, sentence act[i]'s beams in rows
 * i*beam .. i*beam+beam-1 ("slots" k = 0..beam-1). Each step:
 *   1. one decoder step for all rows, then log_softmax of every row;
 *   2. per sentence, the top 2*beam candidates (slot k, token v) by raw
 *      log-probability s_k + log p(v), over live slots and every token but
 *      pad and bos; ties go to the lower slot, then the lower token;
 *   3. walking the candidates best first: an eos among the first `beam` is a
 *      finished hypothesis for the sentence's pool (an eos ranked lower is
 *      dropped, as in fairseq, which makes beam 1 exactly greedy search);
 *      the first `beam` other candidates become the new live beams;
 *   4. at the sentence's maximum length the new live beams join the pool as
 *      they are (cut, no eos) and the sentence is done; before it, the
 *      sentence is done when the stopping rule says so (beam.h);
 *   5. one tfm_decoder_reorder moves the parents' caches to the new slots and
 *      drops the rows of done sentences.
 * The pool keeps the `beam` best hypotheses by score (ties: found first).
 * Step 1 runs one row per sentence (only slot 0 is live: every beam starts
 * from bos), and its reorder gives every sentence its `beam` rows. Later
 * slots with no live beam (score -inf: when a tiny vocabulary gives too few
 * candidates) are computed as dummies and never chosen.
 */
#include "infer/beam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "backend/backend.h"

void tfm_beam_default_params(tfm_beam_params *p) {
    memset(p, 0, sizeof *p);
    p->beam = 4;
    p->alpha = 0.6f;
    p->max_len_a_plus = 50;
    p->max_len_override = 0;
    p->nbest = 1;
    p->stop = TFM_BEAM_STOP_BOUND;
}

double tfm_beam_length_penalty(int n, float alpha) { return pow((5.0 + n) / 6.0, (double)alpha); }

void tfm_hypotheses_free(tfm_hypothesis *h, int n) {
    for (int i = 0; i < n; i++) {
        free(h[i].tokens);
        memset(&h[i], 0, sizeof h[i]);
    }
}

typedef struct cand {
    double raw;      /* s_k + log p(v) */
    int k;           /* slot of the parent beam */
    int32_t v;       /* token */
} cand;

typedef struct pool_entry {
    double score, raw;
    int len;         /* tokens, eos excluded */
    int eos;
    long seq;        /* arrival order: the tie-break */
} pool_entry;

/* Everything one search allocates (freed by search_free). */
typedef struct search {
    int B, beam, V, Lcap;
    int *lmax;           /* [B] maximum output tokens of each sentence */
    int *act;            /* [B] sentences in the batch, in row order */
    int *from;           /* [B*beam] reorder map */
    int32_t *tok_in;     /* [B*beam] next input token of each row */
    double *score;       /* [B*beam] raw log-prob of slot (b, k); -inf = dead */
    double *score_new;
    int32_t *hist;       /* [B*beam, Lcap] tokens of slot (b, k) */
    int32_t *hist_new;
    int K;               /* candidates kept per row: 2*beam (at most V - 2) */
    const tfm_backend *be;
    int32_t *top_ids;    /* [B*beam, K] each row's best tokens, on the host */
    float *top_vals;     /* [B*beam, K] their log-probabilities */
    int32_t *dev_ids;    /* the same in the backend's memory (== the host ones on the CPU) */
    float *dev_vals;
    cand *cands;         /* [2*beam] */
    int *parent;         /* [beam] slot of each new live beam's parent */
    pool_entry *pool;    /* [B*beam] */
    int32_t *pool_tok;   /* [B*beam, Lcap] */
    int *pool_n;         /* [B] */
} search;

static void search_free(search *s) {
    free(s->lmax);
    free(s->act);
    free(s->from);
    free(s->tok_in);
    free(s->score);
    free(s->score_new);
    free(s->hist);
    free(s->hist_new);
    if (s->be && !s->be->host_memory) {
        free(s->top_ids);
        free(s->top_vals);
    }
    if (s->be) {
        s->be->free(s->dev_ids);
        s->be->free(s->dev_vals);
    }
    free(s->cands);
    free(s->parent);
    free(s->pool);
    free(s->pool_tok);
    free(s->pool_n);
}

/* n_allowed: the tokens a candidate may be (V minus pad, bos, and eos when forbidden). */
static tfm_status search_alloc(search *s, const tfm_backend *be, int B, int beam, int V, int n_allowed, int Lcap) {
    size_t R = (size_t)B * beam;
    s->be = be;
    s->K = 2 * beam < n_allowed ? 2 * beam : n_allowed;
    s->B = B;
    s->beam = beam;
    s->V = V;
    s->Lcap = Lcap;
    s->lmax = malloc((size_t)B * sizeof *s->lmax);
    s->act = malloc((size_t)B * sizeof *s->act);
    s->from = malloc(R * sizeof *s->from);
    s->tok_in = malloc(R * sizeof *s->tok_in);
    s->score = malloc(R * sizeof *s->score);
    s->score_new = malloc(R * sizeof *s->score_new);
    s->hist = malloc(R * Lcap * sizeof *s->hist);
    s->hist_new = malloc(R * Lcap * sizeof *s->hist_new);
    s->dev_ids = be->alloc(R * s->K * sizeof *s->dev_ids);
    s->dev_vals = be->alloc(R * s->K * sizeof *s->dev_vals);
    s->top_ids = be->host_memory ? s->dev_ids : malloc(R * s->K * sizeof *s->top_ids);
    s->top_vals = be->host_memory ? s->dev_vals : malloc(R * s->K * sizeof *s->top_vals);
    s->cands = malloc((size_t)2 * beam * sizeof *s->cands);
    s->parent = malloc((size_t)beam * sizeof *s->parent);
    s->pool = malloc(R * sizeof *s->pool);
    s->pool_tok = malloc(R * Lcap * sizeof *s->pool_tok);
    s->pool_n = calloc((size_t)B, sizeof *s->pool_n);
    if (!s->lmax || !s->act || !s->from || !s->tok_in || !s->score || !s->score_new || !s->hist ||
        !s->hist_new || !s->dev_ids || !s->dev_vals || !s->top_ids || !s->top_vals || !s->cands || !s->parent || !s->pool || !s->pool_tok || !s->pool_n)
        return tfm_error(TFM_ERR_NOMEM, "beam: out of memory for %d sentences x beam %d x %d tokens", B, beam,
                         Lcap);
    return TFM_OK;
}

/* Offers a hypothesis (prefix of `len` tokens, eos or not) to sentence b's
 * pool, which keeps the `beam` best by score; an equal score never displaces
 * an earlier hypothesis. */
static void pool_offer(search *s, int b, const int32_t *tokens, int len, int eos, double raw, float alpha,
                       long *seq) {
    pool_entry *P = s->pool + (size_t)b * s->beam;
    double score = raw / tfm_beam_length_penalty(len + eos, alpha);
    int e;
    if (s->pool_n[b] < s->beam) {
        e = s->pool_n[b]++;
    } else {
        e = 0;
        for (int j = 1; j < s->beam; j++)
            if (P[j].score < P[e].score || (P[j].score == P[e].score && P[j].seq > P[e].seq)) e = j;
        if (!(score > P[e].score)) return;
    }
    P[e] = (pool_entry){.score = score, .raw = raw, .len = len, .eos = eos, .seq = (*seq)++};
    memcpy(s->pool_tok + ((size_t)b * s->beam + e) * s->Lcap, tokens, (size_t)len * sizeof *tokens);
}

static double pool_worst(const search *s, int b) {
    const pool_entry *P = s->pool + (size_t)b * s->beam;
    double w = INFINITY;
    for (int j = 0; j < s->pool_n[b]; j++)
        if (P[j].score < w) w = P[j].score;
    return w;
}

/* The top 2*beam candidates of the sentence in rows row0.., best first (ties:
 * lower slot, then lower token, because those are seen first and a candidate
 * only passes another if strictly better). Returns how many were found. */
static int top_candidates(search *s, int b, int row0, int per) {
    int cap = 2 * s->beam, n = 0;
    for (int k = 0; k < s->beam; k++) {
        double sk = s->score[(size_t)b * s->beam + k];
        if (sk == -INFINITY) continue;
        TFM_ASSERT(k < per); /* a live slot has a row */
        const int32_t *ids = s->top_ids + (size_t)(row0 + k) * s->K;
        const float *lp = s->top_vals + (size_t)(row0 + k) * s->K;
        /* The row's K best tokens (pad and bos never), best first, lower id
         * first on ties: the same candidates, in the same order of arrival,
         * as a scan of the whole row. */
        for (int j = 0; j < s->K; j++) {
            int v = ids[j];
            double x = sk + lp[j];
            if (!(x > -INFINITY)) continue; /* -inf and NaN never enter */
            if (n == cap && !(x > s->cands[n - 1].raw)) continue;
            int pos = n < cap ? n++ : cap - 1;
            while (pos > 0 && s->cands[pos - 1].raw < x) {
                s->cands[pos] = s->cands[pos - 1];
                pos--;
            }
            s->cands[pos] = (cand){.raw = x, .k = k, .v = v};
        }
    }
    return n;
}

/* Copies sentence b's pool, best first, into out[0..nbest). */
static tfm_status emit(search *s, int b, int nbest, tfm_hypothesis *out) {
    pool_entry *P = s->pool + (size_t)b * s->beam;
    int n = s->pool_n[b], order[n > 0 ? n : 1];
    for (int j = 0; j < n; j++) order[j] = j;
    for (int j = 1; j < n; j++) { /* insertion sort: score desc, then arrival */
        int e = order[j], i = j;
        while (i > 0 && (P[order[i - 1]].score < P[e].score ||
                         (P[order[i - 1]].score == P[e].score && P[order[i - 1]].seq > P[e].seq))) {
            order[i] = order[i - 1];
            i--;
        }
        order[i] = e;
    }
    for (int i = 0; i < nbest; i++) {
        tfm_hypothesis *h = &out[i];
        if (i >= n) {
            h->logprob = h->score = -INFINITY;
            continue;
        }
        const pool_entry *e = &P[order[i]];
        h->tokens = malloc((size_t)(e->len > 0 ? e->len : 1) * sizeof *h->tokens);
        if (!h->tokens) return tfm_error(TFM_ERR_NOMEM, "beam: out of memory for the output");
        memcpy(h->tokens, s->pool_tok + ((size_t)b * s->beam + order[i]) * s->Lcap,
               (size_t)e->len * sizeof *h->tokens);
        h->length = e->len;
        h->ends_with_eos = e->eos;
        h->logprob = (float)e->raw;
        h->score = (float)e->score;
    }
    return TFM_OK;
}

static tfm_status check_args(const tfm_decoder *d, const int32_t *src, int B, int S, const tfm_beam_params *p) {
    const tfm_config *cfg = &d->m->cfg;
    if (cfg->enc_layers == 0 || cfg->dec_layers == 0)
        return tfm_error(TFM_ERR_INVALID, "beam: needs an encoder-decoder model");
    if (p->beam < 1) return tfm_error(TFM_ERR_INVALID, "beam: beam %d must be >= 1", p->beam);
    if (p->nbest < 1 || p->nbest > p->beam)
        return tfm_error(TFM_ERR_INVALID, "beam: nbest %d outside [1, beam %d]", p->nbest, p->beam);
    if (!(p->alpha >= 0) || isinf(p->alpha))
        return tfm_error(TFM_ERR_INVALID, "beam: alpha %g must be finite and >= 0", (double)p->alpha);
    if (p->max_len_a_plus < 0 || p->max_len_override < 0)
        return tfm_error(TFM_ERR_INVALID, "beam: negative maximum length (a_plus %d, override %d)",
                         p->max_len_a_plus, p->max_len_override);
    if (p->max_len_override > d->max_T)
        return tfm_error(TFM_ERR_INVALID, "beam: max_len_override %d exceeds the decoder's max_T %d",
                         p->max_len_override, d->max_T);
    if (p->stop != TFM_BEAM_STOP_BOUND && p->stop != TFM_BEAM_STOP_FULL && p->stop != TFM_BEAM_STOP_NEVER)
        return tfm_error(TFM_ERR_INVALID, "beam: unknown stopping rule %d", (int)p->stop);
    if (B < 1 || S < 1 || S > d->max_S)
        return tfm_error(TFM_ERR_INVALID, "beam: source batch %d x %d does not fit the decoder (max_S %d)", B, S,
                         d->max_S);
    if ((long)B * p->beam > d->max_B)
        return tfm_error(TFM_ERR_INVALID, "beam: %d sentences x beam %d = %ld rows exceed the decoder's max_B %d",
                         B, p->beam, (long)B * p->beam, d->max_B);
    for (int b = 0; b < B; b++) {
        int n = 0;
        for (int j = 0; j < S; j++) n += src[(size_t)b * S + j] != cfg->pad_id;
        if (n == 0) return tfm_error(TFM_ERR_INVALID, "beam: source row %d is all padding", b);
    }
    return TFM_OK;
}

tfm_status tfm_beam_search_stats(tfm_decoder *d, const int32_t *src, int B, int S, const tfm_beam_params *p,
                                 tfm_hypothesis *out, tfm_beam_stats *stats) {
    TFM_ASSERT(d && d->m && src && p && out);
    const tfm_config *cfg = &d->m->cfg;
    tfm_beam_stats st_local = {0};
    if (!stats) stats = &st_local;
    memset(stats, 0, sizeof *stats);
    TFM_TRY(check_args(d, src, B, S, p));
    int beam = p->beam, V = cfg->tgt_vocab;

    /* Maximum output tokens per sentence (eos included), capped by the cache. */
    int Lcap = 1;
    int *lmax = malloc((size_t)B * sizeof *lmax);
    if (!lmax) return tfm_error(TFM_ERR_NOMEM, "beam: out of memory");
    for (int b = 0; b < B; b++) {
        int n = 0;
        for (int j = 0; j < S; j++) n += src[(size_t)b * S + j] != cfg->pad_id;
        long L = p->max_len_override > 0 ? p->max_len_override : (long)n + p->max_len_a_plus;
        lmax[b] = (int)(L < d->max_T ? L : d->max_T);
        if (lmax[b] < 1) lmax[b] = 1;
        if (lmax[b] > Lcap) Lcap = lmax[b];
    }
    search s = {0};
    tfm_status st = search_alloc(&s, d->m->be, B, beam, V, V - 2 - (p->forbid_eos ? 1 : 0), Lcap);
    if (st == TFM_OK) {
        memcpy(s.lmax, lmax, (size_t)B * sizeof *lmax);
        st = tfm_decoder_start(d, src, B, S); /* one row per sentence until step 1's reorder */
    }
    free(lmax);
    if (st != TFM_OK) {
        search_free(&s);
        return st;
    }

    for (int b = 0; b < B; b++) {
        s.act[b] = b;
        for (int k = 0; k < beam; k++) s.score[(size_t)b * beam + k] = k == 0 ? 0.0 : -INFINITY;
    }
    for (int r = 0; r < B * beam; r++) s.tok_in[r] = cfg->bos_id;
    int n_act = B;
    long seq = 0;
    for (int t = 1; n_act > 0; t++) { /* step t computes the t-th output token */
        int per = t == 1 ? 1 : beam; /* decoder rows per sentence */
        int rows = n_act * per;
        if ((st = tfm_decoder_step(d, s.tok_in)) != TFM_OK) break;
        stats->steps++;
        stats->row_steps += rows;
        /* Each row's K best tokens and log-probabilities, on the backend;
         * only those come to the host. */
        s.be->topk_logprobs(s.dev_ids, s.dev_vals, d->dev_logits, rows, V, s.K, cfg->pad_id, cfg->bos_id,
                            p->forbid_eos ? cfg->eos_id : -1);
        if (!s.be->host_memory) {
            s.be->download(s.top_ids, s.dev_ids, (size_t)rows * s.K * sizeof *s.top_ids);
            s.be->download(s.top_vals, s.dev_vals, (size_t)rows * s.K * sizeof *s.top_vals);
        }
        int new_act = 0;
        for (int i = 0; i < n_act; i++) {
            int b = s.act[i];
            int nc = top_candidates(&s, b, i * per, per);
            const int32_t *hb = s.hist + (size_t)b * beam * Lcap;
            int32_t *hn = s.hist_new + (size_t)b * beam * Lcap;
            double *sn = s.score_new + (size_t)b * beam;
            int *parent = s.parent, n_live = 0;
            for (int c = 0; c < nc; c++) {
                const cand *cd = &s.cands[c];
                const int32_t *prefix = hb + (size_t)cd->k * Lcap;
                if (cd->v == cfg->eos_id) {
                    if (c < beam) pool_offer(&s, b, prefix, t - 1, 1, cd->raw, p->alpha, &seq);
                } else if (n_live < beam) {
                    int32_t *h = hn + (size_t)n_live * Lcap;
                    memcpy(h, prefix, (size_t)(t - 1) * sizeof *h);
                    h[t - 1] = cd->v;
                    sn[n_live] = cd->raw;
                    parent[n_live++] = cd->k;
                }
            }
            int done = 0;
            if (t >= s.lmax[b]) {
                for (int k = 0; k < n_live; k++) pool_offer(&s, b, hn + (size_t)k * Lcap, t, 0, sn[k], p->alpha, &seq);
                done = 1;
            } else if (n_live == 0) {
                done = 1;
            } else if (s.pool_n[b] == beam && p->stop != TFM_BEAM_STOP_NEVER) {
                /* sn[0] is the best live raw log-probability: candidates are sorted. */
                done = p->stop == TFM_BEAM_STOP_FULL ||
                       sn[0] / tfm_beam_length_penalty(s.lmax[b], p->alpha) <= pool_worst(&s, b);
            }
            if (done) {
                stats->stopped_early += t < s.lmax[b];
                continue;
            }
            int j = new_act++; /* j <= i: compacting act in place is safe */
            s.act[j] = b;
            for (int k = 0; k < beam; k++) {
                int live = k < n_live;
                int src_k = live ? k : 0; /* a dead slot shadows live beam 0 */
                s.from[j * beam + k] = i * per + parent[src_k];
                s.tok_in[j * beam + k] = hn[(size_t)src_k * Lcap + t - 1];
                if (!live) {
                    sn[k] = -INFINITY;
                    memcpy(hn + (size_t)k * Lcap, hn, (size_t)t * sizeof *hn);
                }
            }
        }
        int32_t *th = s.hist;
        s.hist = s.hist_new;
        s.hist_new = th;
        double *ts = s.score;
        s.score = s.score_new;
        s.score_new = ts;
        if (new_act == 0) break;
        /* When no row moves (always so with beam 1 until a sentence leaves),
         * there is nothing to copy. */
        int identity = new_act == n_act && per == beam;
        for (int r = 0; identity && r < new_act * beam; r++) identity = s.from[r] == r;
        if (!identity && (st = tfm_decoder_reorder(d, s.from, new_act * beam)) != TFM_OK) break;
        n_act = new_act;
    }
    if (st == TFM_OK) {
        memset(out, 0, (size_t)B * p->nbest * sizeof *out);
        for (int b = 0; b < B && st == TFM_OK; b++) st = emit(&s, b, p->nbest, out + (size_t)b * p->nbest);
        if (st != TFM_OK) tfm_hypotheses_free(out, B * p->nbest);
    }
    search_free(&s);
    return st;
}

tfm_status tfm_beam_search(tfm_decoder *d, const int32_t *src, int B, int S, const tfm_beam_params *p,
                           tfm_hypothesis *out) {
    return tfm_beam_search_stats(d, src, B, S, p, out, NULL);
}
