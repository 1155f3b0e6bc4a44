/*
 * beam.h: batched beam search for encoder-decoder translation, with n-best
 * output (paper 6.1: beam 4, length penalty alpha 0.6, maximum output length
 * = source length + 50, terminate early when possible).
 *
 * All B sentences of a batch decode together as B*beam rows of one
 * tfm_decoder (one KV cache); each source is encoded once and its
 * cross-attention keys/values copied to its beam rows. A sentence leaves the
 * batch as soon as it is done, so later steps only compute live sentences.
 *
 * Scoring (GNMT, Wu et al. 2016):
 *   logprob(Y) = sum of log p(y_t | y_<t, x) over the tokens of Y
 *   score(Y)   = logprob(Y) / lp(|Y|),   lp(n) = ((5 + n) / 6)^alpha
 * |Y| counts the eos token when Y ends with one (as fairseq and tensor2tensor
 * do); a hypothesis cut at the maximum length has no eos and |Y| = its tokens.
 * The maximum length counts eos too: at most max_len tokens are generated per
 * sentence, like tfm_greedy_translate's max_len.
 *
 * Not here: sampling, diverse beams, decoder-only prompts, constraints.
 * See docs/beam.md for the algorithm step by step.
 */
#ifndef TFM_INFER_BEAM_H
#define TFM_INFER_BEAM_H

#include <stdint.h>

#include "infer/decode.h"

/* When a sentence stops before its maximum length. */
typedef enum tfm_beam_stop {
    /* The pool holds `beam` finished hypotheses and no live beam can still
     * beat the worst of them: a live beam with raw log-probability s can at
     * best reach s / lp(max_len) (log-probabilities only fall, lp only grows).
     * Exact: early stopping never changes the result (tensor2tensor's rule,
     * used for the paper's results). */
    TFM_BEAM_STOP_BOUND = 0,
    /* The pool holds `beam` finished hypotheses (fairseq's rule): faster, an
     * approximation when alpha > 0. With beam 1 it is exactly greedy search
     * for every alpha. */
    TFM_BEAM_STOP_FULL = 1,
    /* Every sentence runs to its maximum length: the reference that the
     * early stop of TFM_BEAM_STOP_BOUND is tested against (same n-best). */
    TFM_BEAM_STOP_NEVER = 2,
} tfm_beam_stop;

typedef struct tfm_beam_params {
    int beam;              /* beam width, 4 */
    float alpha;           /* length penalty exponent, 0.6; 0 = raw log-probability; must be >= 0 */
    int max_len_a_plus;    /* max output tokens = source tokens (non-pad) + this, 50 */
    int max_len_override;  /* > 0: max output tokens for every sentence instead (tests); 0 = off */
    int nbest;             /* hypotheses returned per sentence, in [1, beam]; 1 */
    tfm_beam_stop stop;    /* TFM_BEAM_STOP_BOUND */
    int forbid_eos;        /* 1: eos is never a candidate, so every hypothesis runs to its maximum
                              length (fixed work, for benchmarks); 0 */
} tfm_beam_params;

/* The paper's settings: beam 4, alpha 0.6, +50, nbest 1, exact early stop. */
void tfm_beam_default_params(tfm_beam_params *p);

/* One output sentence. tokens excludes bos and eos; ends_with_eos says whether
 * it finished (1) or was cut at the maximum length (0). A slot the search had
 * no hypothesis for (only with tiny vocabularies) has tokens NULL, length 0,
 * logprob and score -INFINITY. */
typedef struct tfm_hypothesis {
    int32_t *tokens;       /* [length], owned: release with tfm_hypotheses_free */
    int length;
    int ends_with_eos;
    float logprob;         /* raw sum of token log-probabilities, eos included */
    float score;           /* logprob / lp(length + ends_with_eos) */
} tfm_hypothesis;

/* What a search did (for tests and benchmarks). */
typedef struct tfm_beam_stats {
    int steps;             /* decoder steps run */
    long row_steps;        /* sum over steps of the rows computed (dropping done sentences lowers it) */
    int stopped_early;     /* sentences that stopped before their maximum length */
} tfm_beam_stats;

/* Beam search over src [B, S] (padded with pad_id; every row needs at least
 * one non-pad token). The decoder must come from tfm_decoder_init on an
 * encoder-decoder model with max_B >= B * beam and max_S >= S; each
 * sentence's maximum length is capped at the decoder's max_T. On success
 * out[b * nbest + i] is the i-th best hypothesis of sentence b (by score,
 * best first; ties keep the one found first); free them with
 * tfm_hypotheses_free(out, B * nbest). On error nothing in out needs freeing.
 * Errors: TFM_ERR_INVALID (bad params, capacity, tokens), TFM_ERR_NOMEM.
 * The decoder's state is overwritten. */
tfm_status tfm_beam_search(tfm_decoder *d, const int32_t *src, int B, int S, const tfm_beam_params *p,
                           tfm_hypothesis *out);

/* tfm_beam_search that also fills *stats (which may be NULL). */
tfm_status tfm_beam_search_stats(tfm_decoder *d, const int32_t *src, int B, int S, const tfm_beam_params *p,
                                 tfm_hypothesis *out, tfm_beam_stats *stats);

/* Frees the tokens of n hypotheses and clears them. */
void tfm_hypotheses_free(tfm_hypothesis *h, int n);

/* lp(n) = ((5 + n) / 6)^alpha, the GNMT length penalty. */
double tfm_beam_length_penalty(int n, float alpha);

#endif
