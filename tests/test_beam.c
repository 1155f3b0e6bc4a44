/*
 * test_beam.c: beam search (src/infer/beam.c) on tiny random models.
 *
 *   1. exhaustive: with a beam wide enough to keep every prefix (see
 *      exhaustive_beam below), the best hypothesis and the whole n-best list
 *      equal an enumeration of every output sequence up to the maximum length,
 *      each scored with the uncached forward; alpha 0 and 0.6, both stopping
 *      rules;
 *   2. beam 1 gives exactly tfm_greedy_translate's tokens;
 *   3. n-best lists are sorted, distinct, and their log-probabilities equal
 *      the uncached forward's to 1e-4;
 *   4. a batch of sources of different lengths gives what each sentence gives
 *      alone, and done sentences leave the batch (fewer rows computed);
 *   5. the n-best lists equal those of a plain reference beam search written
 *      in this file (uncached forward, one sentence, no early stop);
 *   6. the exact early stop gives the same n-best lists as no early stop;
 *   7. bad arguments are refused with TFM_ERR_INVALID.
 *
 * The models: 1+1 layers, d_model 16, 2 heads, d_ff 32, target vocabulary 6
 * (pad 0, bos 1, eos 2, content 3..5); every weight scaled up and perturbed
 * so that the next-token distributions are peaked and differ from step to
 * step, and a logit offset on eos sets how soon outputs end (see main: A
 * short outputs, B long ones, C exact ties between tokens 4 and 5). Every test
 * runs on all three.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "infer/beam.h"
#include "infer/decode.h"
#include "model/model.h"
#include "ops/ops.h"
#include "test_util.h"

#define PAD 0
#define BOS 1
#define EOS 2
#define V 6
#define C 3         /* content tokens 3..5 */
#define E (C + 1)   /* tokens beam search may emit: content and eos */
#define MAXS 8
#define MAXT 64
#define MAXB 64

static tfm_model model;
static tfm_workspace ws;  /* the uncached forward, for rescoring */
static tfm_decoder dec;

static void build_model(uint64_t seed, float gain, float noise, float eos_bias, int tie_tokens) {
    tfm_config cfg;
    tfm_config_default(&cfg);
    cfg.enc_layers = 1;
    cfg.dec_layers = 1;
    cfg.d_model = 16;
    cfg.heads = 2;
    cfg.d_ff = 32;
    cfg.max_positions = MAXT;
    cfg.src_vocab = 9;
    cfg.tgt_vocab = V;
    cfg.share = TFM_SHARE_NONE;
    cfg.dropout = cfg.embed_dropout = cfg.attn_dropout = cfg.act_dropout = 0;
    cfg.label_smoothing = 0;
    cfg.pad_id = PAD;
    cfg.bos_id = BOS;
    cfg.eos_id = EOS;
    if (tfm_model_init(&model, &cfg, seed) != TFM_OK) {
        fprintf(stderr, "model init: %s\n", tfm_last_error());
        exit(1);
    }
    tfm_rng rng;
    tfm_rng_init(&rng, seed, 9);
    for (size_t i = 0; i < model.layout.n_params; i++)
        model.params[i] = model.params[i] * gain + noise * tfm_rng_next_normal(&rng);
    /* eos gets a logit offset of eos_bias: the last LayerNorm (post-LN: its
     * output is the decoder's output) makes feature 0 the constant 1, and
     * only eos reads it. Without this eos is rarely the best token. */
    int D = cfg.d_model;
    tfm_norm_weights *ln = &model.w.dec[cfg.dec_layers - 1].norm_ffn;
    ln->w[0] = 0;
    ln->b[0] = 1;
    for (int v = 0; v < V; v++) model.w.generator[v * D] = v == EOS ? eos_bias : 0;
    /* Tokens 4 and 5 get the same logit at every step: exact ties, which
     * must go to the lower token. */
    if (tie_tokens) memcpy(model.w.generator + 5 * D, model.w.generator + 4 * D, (size_t)D * sizeof(float));
    if (tfm_workspace_init(&ws, &model, 1, MAXS, MAXT) != TFM_OK ||
        tfm_decoder_init(&dec, &model, MAXB, MAXS, MAXT) != TFM_OK) {
        fprintf(stderr, "workspace/decoder: %s\n", tfm_last_error());
        exit(1);
    }
}

/* Random source rows [B, S]: row b has len[b] tokens in 1..8 (pad 0 after). */
static void random_sources(int32_t *src, int B, int S, const int *len, uint64_t seed) {
    tfm_rng rng;
    tfm_rng_init(&rng, seed, 3);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S; j++)
            src[b * S + j] = j < len[b] ? 1 + (int32_t)(tfm_rng_next(&rng) % 8) : PAD;
}

/* log p(Y | x) with the uncached forward, in double: Y = tokens[0..len) then
 * eos when `eos`. src is one row of S tokens. */
static double rescore(const int32_t *src, int S, const int32_t *tokens, int len, int eos) {
    int T = len + eos;
    if (T == 0) return 0;
    int32_t tin[MAXT], y[MAXT];
    tin[0] = BOS;
    for (int j = 0; j < T; j++) {
        y[j] = j < len ? tokens[j] : EOS;
        if (j + 1 < T) tin[j + 1] = y[j];
    }
    tfm_batch b = {.B = 1, .S = S, .T = T, .src = src, .tgt_in = tin};
    if (tfm_model_forward(&model, &ws, &b, 0, 0) != TFM_OK) {
        fprintf(stderr, "forward: %s\n", tfm_last_error());
        exit(1);
    }
    double sum = 0;
    for (int j = 0; j < T; j++) {
        const float *x = ws.logits + (size_t)j * V;
        double mx = x[0], z = 0;
        for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
        for (int v = 0; v < V; v++) z += exp(x[v] - mx);
        sum += x[y[j]] - mx - log(z);
    }
    return sum;
}

/* ------------------------------------------------------------ 1. exhaustive */

/* When beam search is exhaustive. At a step t before the last, the live
 * prefixes are all C^(t-1) content sequences (if the search has been
 * exhaustive so far), so there are C^(t-1) * E candidates. If they all rank
 * within the first `beam` (C^(t-1) * E <= beam), every eos among them is
 * finished (only eos in the first `beam` candidates are) and every content
 * candidate stays live, so the search stays exhaustive. At the last step
 * every candidate has the same |Y| = max_len, so the best by raw
 * log-probability is also the best by score, and it ranks first. Stopping
 * early with TFM_BEAM_STOP_BOUND never drops a better hypothesis; with
 * TFM_BEAM_STOP_FULL the pool must not fill before the last step: it holds
 * at most sum_{t<L} C^(t-1) < beam by then. And the pool keeps the `beam`
 * best, so the whole n-best list is exact too (same |Y| at the last step
 * again). Returns the smallest such beam. */
static int exhaustive_beam(int L) {
    int need = 1, cpow = 1, pooled = 0;
    for (int t = 1; t < L; t++) {
        if (cpow * E > need) need = cpow * E;
        pooled += cpow;
        cpow *= C;
    }
    return need > pooled ? need : pooled + 1;
}

typedef struct enum_hyp {
    int32_t tok[MAXT];
    int len, eos;
    double raw, score;
    long seq;   /* arrival order, the tie-break (reference beam search) */
} enum_hyp;

static int cmp_hyp(const void *a, const void *b) {
    const enum_hyp *x = a, *y = b;
    if (x->score != y->score) return (x->score < y->score) - (x->score > y->score);
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* Every output of at most L tokens: content^k + eos for k < L, content^L. */
static int enumerate(const int32_t *src, int S, int L, float alpha, enum_hyp *out) {
    int n = 0;
    for (int k = 0; k <= L; k++) {
        int count = 1;
        for (int i = 0; i < k; i++) count *= C;
        for (int code = 0; code < count; code++) {
            enum_hyp h = {.len = k, .eos = k < L};
            for (int i = 0, c = code; i < k; i++, c /= C) h.tok[i] = 3 + c % C;
            h.raw = rescore(src, S, h.tok, h.len, h.eos);
            h.score = h.raw / tfm_beam_length_penalty(h.len + h.eos, alpha);
            out[n++] = h;
        }
    }
    qsort(out, (size_t)n, sizeof *out, cmp_hyp);
    return n;
}

static int same_tokens(const int32_t *a, int la, const int32_t *b, int lb) {
    return la == lb && (la == 0 || !memcmp(a, b, (size_t)la * sizeof *a));
}

static void print_hyp(const char *tag, const int32_t *tok, int len, int eos, double raw, double score) {
    printf("    %s:", tag);
    for (int i = 0; i < len; i++) printf(" %d", tok[i]);
    printf("%s  logprob %.6f score %.6f\n", eos ? " </s>" : " (cut)", raw, score);
}

static void test_exhaustive(void) {
    const int S = 5, lens[3] = {5, 3, 1};
    int32_t src[3 * 5];
    random_sources(src, 3, S, lens, 11);
    enum_hyp *all = malloc(400 * sizeof *all);
    int n_cases = 0, n_ties = 0, n_eos = 0, n_not_greedy = 0;
    /* (max length, beam): beam = V for length 2 as asked, and the smallest
     * exhaustive beam for each length. */
    const int cases[4][2] = {{2, V}, {2, 4}, {3, 12}, {4, 36}};
    for (int ci = 0; ci < 4; ci++) {
        int L = cases[ci][0], beam = cases[ci][1];
        CHECK(exhaustive_beam(L) <= beam, "max length %d needs beam %d", L, exhaustive_beam(L));
        CHECK(ci == 0 || exhaustive_beam(L) == beam, "case %d is not the smallest exhaustive beam", ci);
        for (int ai = 0; ai < 2; ai++) {
            float alpha = ai ? 0.6f : 0.0f;
            for (int stop = 0; stop < 2; stop++) {
                tfm_beam_params p;
                tfm_beam_default_params(&p);
                p.beam = beam;
                p.alpha = alpha;
                p.max_len_override = L;
                p.nbest = beam < 5 ? beam : 5;
                p.stop = (tfm_beam_stop)stop;
                for (int b = 0; b < 3; b++) {
                    const int32_t *row = src + b * S;
                    int n_all = enumerate(row, lens[b], L, alpha, all);
                    tfm_hypothesis hyp[5];
                    tfm_status st = tfm_beam_search(&dec, row, 1, S, &p, hyp);
                    CHECK(st == TFM_OK, "beam: %s", tfm_last_error());
                    if (st != TFM_OK) continue;
                    n_cases++;
                    const enum_hyp *best = &all[0];
                    n_eos += best->eos;
                    int32_t gout[8];
                    int glen;
                    if (tfm_greedy_translate(&dec, row, 1, S, L, gout, &glen) == TFM_OK)
                        n_not_greedy += !same_tokens(gout, glen, best->tok, best->len) || (glen < L) != best->eos;
                    int same = same_tokens(hyp[0].tokens, hyp[0].length, best->tok, best->len) &&
                               hyp[0].ends_with_eos == best->eos;
                    /* A different sequence is acceptable only when it ties the
                     * argmax within float noise (never seen with these seeds). */
                    int tie = !same && fabs(hyp[0].score - best->score) < 1e-5;
                    n_ties += tie;
                    CHECK(same || tie, "L=%d beam=%d alpha=%.1f stop=%d sentence %d: not the exhaustive argmax", L,
                          beam, alpha, stop, b);
                    if (!same) {
                        print_hyp("beam      ", hyp[0].tokens, hyp[0].length, hyp[0].ends_with_eos, hyp[0].logprob,
                                  hyp[0].score);
                        print_hyp("exhaustive", best->tok, best->len, best->eos, best->raw, best->score);
                    }
                    /* The whole n-best list is the exhaustive top-n. */
                    for (int i = 0; i < p.nbest && i < n_all; i++) {
                        CHECK(fabs(hyp[i].score - all[i].score) < 1e-4,
                              "L=%d alpha=%.1f stop=%d sentence %d: n-best %d score %.6f, exhaustive %.6f", L, alpha,
                              stop, b, i, hyp[i].score, all[i].score);
                        int gap_ok = (i == 0 || all[i - 1].score - all[i].score > 1e-4) &&
                                     (i + 1 >= n_all || all[i].score - all[i + 1].score > 1e-4);
                        if (gap_ok)
                            CHECK(same_tokens(hyp[i].tokens, hyp[i].length, all[i].tok, all[i].len) &&
                                      hyp[i].ends_with_eos == all[i].eos,
                                  "L=%d alpha=%.1f stop=%d sentence %d: n-best %d differs from exhaustive", L, alpha,
                                  stop, b, i);
                    }
                    if (L == 4 && ai == 1 && stop == 0 && b == 0) {
                        printf("  L=4 alpha=0.6 sentence 0: %d sequences enumerated\n", n_all);
                        print_hyp("beam #1   ", hyp[0].tokens, hyp[0].length, hyp[0].ends_with_eos,
                                  hyp[0].logprob, hyp[0].score);
                        print_hyp("exhaustive", best->tok, best->len, best->eos, best->raw, best->score);
                    }
                    tfm_hypotheses_free(hyp, p.nbest);
                }
            }
        }
    }
    printf("exhaustive: %d searches (max length 2, 2, 3, 4 with beam 6, 4, 12, 36): argmax ends with eos in %d, "
           "is not the greedy output in %d; %d float ties\n",
           n_cases, n_eos, n_not_greedy, n_ties);
    free(all);
}

/* -------------------------------------------------------- 2. beam 1 = greedy */

static void test_greedy(void) {
    enum { B = 6, S = 7 };
    const int lens[B] = {7, 7, 7, 7, 7, 7};
    int32_t src[B * S];
    random_sources(src, B, S, lens, 22);
    const int Ls[3] = {4, 12, 7 + 50}; /* the last is the default rule: source length + 50 */
    int compared = 0, with_eos = 0;
    for (int li = 0; li < 3; li++) {
        int L = Ls[li];
        int32_t out[B * MAXT];
        int glen[B];
        CHECK(tfm_greedy_translate(&dec, src, B, S, L, out, glen) == TFM_OK, "greedy: %s", tfm_last_error());
        /* Exact for every alpha with fairseq's stop; with the bound only for alpha 0. */
        for (int mode = 0; mode < 3; mode++) {
            tfm_beam_params p;
            tfm_beam_default_params(&p);
            p.beam = 1;
            p.max_len_override = li < 2 ? L : 0;
            p.stop = mode == 0 ? TFM_BEAM_STOP_BOUND : TFM_BEAM_STOP_FULL;
            p.alpha = mode == 2 ? 0.6f : 0.0f;
            tfm_hypothesis hyp[B];
            if (tfm_beam_search(&dec, src, B, S, &p, hyp) != TFM_OK) {
                CHECK(0, "beam: %s", tfm_last_error());
                continue;
            }
            for (int b = 0; b < B; b++) {
                int geos = glen[b] < L; /* greedy stopped on eos */
                CHECK(same_tokens(hyp[b].tokens, hyp[b].length, out + b * L, glen[b]) &&
                          hyp[b].ends_with_eos == geos,
                      "max_len %d mode %d sentence %d: beam 1 (%d tokens) != greedy (%d tokens)", L, mode, b,
                      hyp[b].length, glen[b]);
                compared++;
                with_eos += geos;
            }
            tfm_hypotheses_free(hyp, B);
        }
    }
    printf("beam 1 == greedy: %d sentences compared (%d ended with eos)\n", compared, with_eos);
}

/* ------------------------------------------------ 3. n-best and rescoring */

static void test_nbest(void) {
    enum { B = 4, S = 6, NB = 4 };
    const int lens[B] = {6, 2, 4, 1};
    int32_t src[B * S];
    random_sources(src, B, S, lens, 33);
    double worst = 0;
    int checked = 0;
    for (int ai = 0; ai < 2; ai++) {
        tfm_beam_params p;
        tfm_beam_default_params(&p);
        p.nbest = NB;
        p.alpha = ai ? 0.6f : 0.0f;
        tfm_hypothesis hyp[B * NB];
        if (tfm_beam_search(&dec, src, B, S, &p, hyp) != TFM_OK) {
            CHECK(0, "beam: %s", tfm_last_error());
            continue;
        }
        for (int b = 0; b < B; b++) {
            for (int i = 0; i < NB; i++) {
                const tfm_hypothesis *h = &hyp[b * NB + i];
                CHECK(h->tokens != NULL, "sentence %d: n-best %d missing", b, i);
                if (!h->tokens) continue;
                if (i > 0) CHECK(h->score <= hyp[b * NB + i - 1].score, "sentence %d: n-best not sorted at %d", b, i);
                for (int j = 0; j < i; j++)
                    CHECK(!same_tokens(h->tokens, h->length, hyp[b * NB + j].tokens, hyp[b * NB + j].length) ||
                              h->ends_with_eos != hyp[b * NB + j].ends_with_eos,
                          "sentence %d: n-best %d duplicates %d", b, i, j);
                int bad = 0;
                for (int j = 0; j < h->length; j++) bad += h->tokens[j] < 3 || h->tokens[j] >= V;
                CHECK(!bad, "sentence %d: n-best %d holds pad/bos/eos", b, i);
                CHECK(h->length + h->ends_with_eos <= lens[b] + 50, "sentence %d: too long", b);
                double raw = rescore(src + b * S, lens[b], h->tokens, h->length, h->ends_with_eos);
                double err = fabs(raw - h->logprob);
                if (err > worst) worst = err;
                CHECK(err < 1e-4, "sentence %d n-best %d: logprob %.6f, uncached forward %.6f", b, i, h->logprob, raw);
                double score = h->logprob / tfm_beam_length_penalty(h->length + h->ends_with_eos, p.alpha);
                CHECK(fabs(score - h->score) <= 1e-6 * fabs(score) + 1e-7, "sentence %d n-best %d: score %.7f != %.7f",
                      b, i, h->score, score);
                checked++;
            }
            if (ai == 1 && b == 0)
                for (int i = 0; i < NB; i++)
                    print_hyp("n-best", hyp[i].tokens, hyp[i].length, hyp[i].ends_with_eos, hyp[i].logprob,
                              hyp[i].score);
        }
        tfm_hypotheses_free(hyp, B * NB);
    }
    printf("n-best: %d hypotheses rescored, worst |logprob - uncached| = %.2e\n", checked, worst);
}

/* ----------------------------------------------- 4. batch = one at a time */

static void test_batch(void) {
    enum { B = 5, S = 7, NB = 2 };
    const int lens[B] = {7, 2, 4, 1, 5};
    int32_t src[B * S];
    random_sources(src, B, S, lens, 44);
    for (int ai = 0; ai < 2; ai++) {
        tfm_beam_params p;
        tfm_beam_default_params(&p);
        p.nbest = NB;
        p.alpha = ai ? 0.6f : 0.0f;
        tfm_hypothesis all[B * NB];
        tfm_beam_stats stats;
        if (tfm_beam_search_stats(&dec, src, B, S, &p, all, &stats) != TFM_OK) {
            CHECK(0, "beam: %s", tfm_last_error());
            continue;
        }
        printf("batch alpha %.1f: %d steps, %ld row-steps (%ld without dropping done sentences), %d stopped early\n",
               p.alpha, stats.steps, stats.row_steps, (long)stats.steps * B * p.beam, stats.stopped_early);
        CHECK(stats.row_steps < (long)stats.steps * B * p.beam, "done sentences were not dropped");
        for (int b = 0; b < B; b++) {
            tfm_hypothesis one[NB];
            /* Alone, with the source cut to its own length (no padding). */
            if (tfm_beam_search(&dec, src + b * S, 1, lens[b], &p, one) != TFM_OK) {
                CHECK(0, "beam alone: %s", tfm_last_error());
                continue;
            }
            for (int i = 0; i < NB; i++) {
                const tfm_hypothesis *x = &all[b * NB + i], *y = &one[i];
                CHECK(same_tokens(x->tokens, x->length, y->tokens, y->length) && x->ends_with_eos == y->ends_with_eos,
                      "alpha %.1f sentence %d n-best %d: batch and alone differ", p.alpha, b, i);
                CHECK(fabs(x->score - y->score) < 1e-5, "alpha %.1f sentence %d: score %.7f batch, %.7f alone",
                      p.alpha, b, x->score, y->score);
            }
            tfm_hypotheses_free(one, NB);
        }
        tfm_hypotheses_free(all, B * NB);
    }
}

/* ------------------------------------ 5. a plain reference beam search */

/* The algorithm of beam.c written the simplest way, for one sentence: every
 * live prefix rescored with the uncached forward at every step, all
 * candidates sorted, no early stop, no batching, no KV cache, an unbounded
 * list of finished hypotheses sorted at the end. Returns the number of
 * finished hypotheses in `fin` (sorted best first). */
typedef struct ref_cand {
    double raw;
    int k, v;
} ref_cand;

static int cmp_cand(const void *a, const void *b) {
    const ref_cand *x = a, *y = b;
    if (x->raw != y->raw) return (x->raw < y->raw) - (x->raw > y->raw);
    if (x->k != y->k) return x->k - y->k;
    return x->v - y->v;
}

static int ref_beam(const int32_t *src, int S, int beam, int L, float alpha, enum_hyp *fin, int cap) {
    enum_hyp live[8], next[8];
    ref_cand cands[8 * V];
    int n_live = 1, n_fin = 0;
    long seq = 0;
    memset(&live[0], 0, sizeof live[0]);
    for (int t = 1; t <= L && n_live > 0; t++) {
        int nc = 0;
        for (int k = 0; k < n_live; k++) {
            /* log p(. | prefix): the forward on bos + prefix, last position */
            int32_t tin[MAXT];
            tin[0] = BOS;
            memcpy(tin + 1, live[k].tok, (size_t)(t - 1) * sizeof *tin);
            tfm_batch b = {.B = 1, .S = S, .T = t, .src = src, .tgt_in = tin};
            if (tfm_model_forward(&model, &ws, &b, 0, 0) != TFM_OK) {
                fprintf(stderr, "forward: %s\n", tfm_last_error());
                exit(1);
            }
            const float *x = ws.logits + (size_t)(t - 1) * V;
            double mx = x[0], z = 0;
            for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
            for (int v = 0; v < V; v++) z += exp(x[v] - mx);
            for (int v = 0; v < V; v++)
                if (v != PAD && v != BOS) cands[nc++] = (ref_cand){live[k].raw + x[v] - mx - log(z), k, v};
        }
        qsort(cands, (size_t)nc, sizeof *cands, cmp_cand);
        int n_next = 0;
        for (int c = 0; c < nc && c < 2 * beam; c++) {
            const enum_hyp *par = &live[cands[c].k];
            if (cands[c].v == EOS) {
                if (c < beam && n_fin < cap) {
                    enum_hyp h = *par;
                    h.eos = 1;
                    h.raw = cands[c].raw;
                    h.score = h.raw / tfm_beam_length_penalty(h.len + 1, alpha);
                    h.seq = seq++;
                    fin[n_fin++] = h;
                }
            } else if (n_next < beam) {
                enum_hyp h = *par;
                h.tok[h.len++] = cands[c].v;
                h.raw = cands[c].raw;
                next[n_next++] = h;
            }
        }
        if (t == L)
            for (int k = 0; k < n_next && n_fin < cap; k++) {
                enum_hyp h = next[k];
                h.score = h.raw / tfm_beam_length_penalty(h.len, alpha);
                h.seq = seq++;
                fin[n_fin++] = h;
            }
        memcpy(live, next, (size_t)n_next * sizeof *next);
        n_live = n_next;
    }
    qsort(fin, (size_t)n_fin, sizeof *fin, cmp_hyp);
    return n_fin;
}

static void test_reference(void) {
    enum { B = 3, S = 6 };
    const int lens[B] = {6, 3, 1};
    int32_t src[B * S];
    random_sources(src, B, S, lens, 66);
    enum_hyp *fin = malloc(512 * sizeof *fin);
    int compared = 0;
    double worst = 0;
    /* Maximum lengths: 16 keeps the reference quick; 3, 2 and 1 put
     * hypotheses cut at the maximum length into the n-best lists, where with
     * model C siblings ending in 4 and 5 tie exactly (the pool's tie-breaks). */
    const int Ls[4] = {16, 3, 2, 1};
    for (int li = 0; li < 4; li++)
    for (int beam = 2; beam <= 4; beam += 2) {
        for (int ai = 0; ai < 3; ai++) {
            const int L = Ls[li];
            const float alphas[3] = {0.0f, 0.6f, 1.5f};
            tfm_beam_params p;
            tfm_beam_default_params(&p);
            p.beam = beam;
            p.nbest = beam;
            p.alpha = alphas[ai];
            p.max_len_override = L;
            for (int b = 0; b < B; b++) {
                int n_fin = ref_beam(src + b * S, lens[b], beam, L, p.alpha, fin, 512);
                for (int m = 0; m < 2; m++) {
                    p.stop = m ? TFM_BEAM_STOP_BOUND : TFM_BEAM_STOP_NEVER;
                    tfm_hypothesis hyp[4];
                    if (tfm_beam_search(&dec, src + b * S, 1, lens[b], &p, hyp) != TFM_OK) {
                        CHECK(0, "beam: %s", tfm_last_error());
                        continue;
                    }
                    for (int i = 0; i < beam && i < n_fin; i++) {
                        double err = fabs(hyp[i].score - fin[i].score);
                        worst = err > worst ? err : worst;
                        CHECK(same_tokens(hyp[i].tokens, hyp[i].length, fin[i].tok, fin[i].len) &&
                                  hyp[i].ends_with_eos == fin[i].eos && err < 1e-4,
                              "L %d beam %d alpha %.1f stop %d sentence %d n-best %d: %d tokens score %.6f, reference %d "
                              "tokens score %.6f",
                              L, beam, p.alpha, (int)p.stop, b, i, hyp[i].length, hyp[i].score, fin[i].len, fin[i].score);
                        compared++;
                    }
                    tfm_hypotheses_free(hyp, beam);
                }
            }
        }
    }
    printf("reference beam search (uncached, unbatched, no early stop): %d n-best entries equal, worst score "
           "diff %.2e\n",
           compared, worst);
    free(fin);
}

/* --------------------------------- 6. the early stop changes nothing */

/* TFM_BEAM_STOP_BOUND stops a sentence only when no live beam can enter its
 * pool any more, so its whole n-best list must equal the one of running every
 * sentence to its maximum length (TFM_BEAM_STOP_NEVER). fairseq's rule
 * (TFM_BEAM_STOP_FULL) may differ: the count is printed, not checked. */
static void test_early_stop(void) {
    enum { B = 5, S = 7 };
    const int lens[B] = {7, 2, 4, 1, 5};
    int32_t src[B * S];
    random_sources(src, B, S, lens, 55);
    for (int beam = 2; beam <= 4; beam += 2) {
        for (int ai = 0; ai < 3; ai++) {
            const float alphas[3] = {0.0f, 0.6f, 1.5f};
            tfm_beam_params p;
            tfm_beam_default_params(&p);
            p.beam = beam;
            p.nbest = beam;
            p.alpha = alphas[ai];
            tfm_hypothesis h[3][B * 4];
            tfm_beam_stats stats[3];
            const tfm_beam_stop stops[3] = {TFM_BEAM_STOP_NEVER, TFM_BEAM_STOP_BOUND, TFM_BEAM_STOP_FULL};
            int ok = 1;
            for (int m = 0; m < 3; m++) {
                p.stop = stops[m];
                if (tfm_beam_search_stats(&dec, src, B, S, &p, h[m], &stats[m]) != TFM_OK) {
                    CHECK(0, "beam: %s", tfm_last_error());
                    ok = 0;
                    for (int j = 0; j < m; j++) tfm_hypotheses_free(h[j], B * beam);
                    break;
                }
            }
            if (!ok) continue;
            int full_differs = 0;
            for (int i = 0; i < B * beam; i++) {
                const tfm_hypothesis *x = &h[0][i], *y = &h[1][i], *z = &h[2][i];
                CHECK(same_tokens(x->tokens, x->length, y->tokens, y->length) && x->ends_with_eos == y->ends_with_eos &&
                          fabs(x->score - y->score) < 1e-5,
                      "beam %d alpha %.1f: sentence %d n-best %d: the early stop changed the result", beam, p.alpha,
                      i / beam, i % beam);
                full_differs += i % beam == 0 && !same_tokens(x->tokens, x->length, z->tokens, z->length);
            }
            printf("beam %d alpha %.1f: row-steps never/bound/full = %ld/%ld/%ld; bound == never; "
                   "full's best differs in %d of %d sentences\n",
                   beam, p.alpha, stats[0].row_steps, stats[1].row_steps, stats[2].row_steps, full_differs, B);
            for (int m = 0; m < 3; m++) tfm_hypotheses_free(h[m], B * beam);
        }
    }
}

/* ----------------------------------------------------------- 7. bad input */

static void test_bad(void) {
    int32_t src[2 * 3] = {3, 4, 5, 0, 0, 0};
    tfm_hypothesis hyp[8];
    tfm_beam_params p;
    tfm_beam_default_params(&p);
    CHECK(tfm_beam_search(&dec, src, 2, 3, &p, hyp) == TFM_ERR_INVALID, "an all-pad source row is refused");
    p.nbest = 5;
    CHECK(tfm_beam_search(&dec, src, 1, 3, &p, hyp) == TFM_ERR_INVALID, "nbest > beam is refused");
    tfm_beam_default_params(&p);
    p.beam = MAXB;
    CHECK(tfm_beam_search(&dec, src, 2, 3, &p, hyp) == TFM_ERR_INVALID, "B*beam > max_B is refused");
    printf("  (%s)\n", tfm_last_error());
    tfm_beam_default_params(&p);
    p.max_len_override = MAXT + 1;
    CHECK(tfm_beam_search(&dec, src, 1, 3, &p, hyp) == TFM_ERR_INVALID, "max_len_override > max_T is refused");
    tfm_beam_default_params(&p);
    p.alpha = -1;
    CHECK(tfm_beam_search(&dec, src, 1, 3, &p, hyp) == TFM_ERR_INVALID, "negative alpha is refused");
    tfm_beam_default_params(&p);
    CHECK(tfm_beam_search(&dec, src, 1, MAXS + 1, &p, hyp) == TFM_ERR_INVALID, "S > max_S is refused");
}

static void print_peak(void) {
    /* How peaked the model is: the mean top probability at step 1. */
    int32_t src[4 * 5];
    const int lens[4] = {5, 5, 5, 5};
    random_sources(src, 4, 5, lens, 1);
    int32_t bos[4] = {BOS, BOS, BOS, BOS};
    float lp[4 * V];
    if (tfm_decoder_start(&dec, src, 4, 5) != TFM_OK || tfm_decoder_step(&dec, bos) != TFM_OK) {
        CHECK(0, "decoder: %s", tfm_last_error());
        return;
    }
    tfm_log_softmax(lp, dec.logits, 4, V);
    double top = 0;
    for (int b = 0; b < 4; b++) {
        float mx = lp[b * V];
        for (int v = 1; v < V; v++) mx = lp[b * V + v] > mx ? lp[b * V + v] : mx;
        top += exp(mx) / 4;
    }
    printf("mean top probability at step 1 = %.3f\n", top);
}

int main(void) {
    /* A ends most outputs with eos after a few tokens (early stopping at
     * different steps); B gives long outputs, many cut at the maximum length
     * (source length + 50, different per sentence); C is A with exact ties
     * between two tokens, to pin the tie-breaks. */
    const struct { const char *name; float gain, eos_bias; int tie; } models[3] = {
        {"A (short outputs)", 1.5f, 3.0f, 0},
        {"B (long outputs)", 2.5f, 10.0f, 0},
        {"C (tokens 4 and 5 always tie)", 1.5f, 3.0f, 1},
    };
    for (int i = 0; i < 3; i++) {
        printf("== model %s: ", models[i].name);
        build_model(5, models[i].gain, 0.3f, models[i].eos_bias, models[i].tie);
        print_peak();
        test_exhaustive();
        test_greedy();
        test_nbest();
        test_batch();
        test_reference();
        test_early_stop();
        test_bad();
        tfm_decoder_free(&dec);
        tfm_workspace_free(&ws);
        tfm_model_free(&model);
    }
    return tfm_test_finish();
}
