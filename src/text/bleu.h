/*
 * bleu.h: BLEU, chrF and chrF++ exactly as sacreBLEU 2.6.0 computes them.
 *
 * What it does
 *   - BLEU (Papineni et al., 2002) with sacreBLEU's tokenizers 13a, intl, none
 *     and char, optional lowercasing (Python's str.lower(), full Unicode), the
 *     smoothing methods exp, floor, add-k and none, effective order, several
 *     references (clipping by the largest count in any one reference, closest
 *     reference length, the shorter on a tie).
 *   - chrF / chrF++ (Popovic 2015, 2017): character n-grams of code points
 *     (whitespace removed unless asked otherwise), word n-grams after
 *     sacreBLEU's punctuation split, effective-order or epsilon smoothing, and
 *     per segment the reference with the best sentence-level F.
 *   - sacreBLEU's signature strings and score lines.
 * The numbers agree with sacreBLEU 2.6.0 to within float rounding: the
 * statistics are identical integers, and tests/test_bleu.c checks every row of
 * the reference vectors in shared/bleu.
 *
 * What it does not do: the zh, ja-mecab, ko-mecab, spm and flores101/200 tokenizers,
 * TER, bootstrap confidence intervals, paired significance tests.
 *
 * Strings are NUL-terminated UTF-8. Invalid UTF-8 is an error
 * (TFM_ERR_INVALID), never undefined behaviour. A segment is scored as given:
 * like sacreBLEU's API, BLEU strips trailing whitespace itself, chrF does not
 * (sacreBLEU's command line strips every line it reads; tools/cmd_bleu.c does
 * the same).
 *
 * Empty references: as in sacreBLEU, a reference that is the empty string is
 * left out of its segment (so segments may have fewer references, and the
 * signature then says nrefs:var); a segment whose references are all empty is
 * an error.
 */
#ifndef TFM_TEXT_BLEU_H
#define TFM_TEXT_BLEU_H

#include <stddef.h>
#include <stdint.h>

#include "transformer.h"

/* The sacreBLEU version whose numbers these are; goes into signatures. */
#define TFM_SACREBLEU_VERSION "2.6.0"

/* ------------------------------------------------------------------- BLEU */

#define TFM_BLEU_ORDER 4 /* BLEU's maximum n-gram order, as in sacreBLEU */

typedef enum tfm_bleu_tokenize {
    TFM_BLEU_TOK_13A = 0,  /* mteval-v13a: split ASCII punctuation, unescape 4 entities */
    TFM_BLEU_TOK_INTL = 1, /* mteval-v14 international: split all Unicode punctuation/symbols */
    TFM_BLEU_TOK_NONE = 2, /* whitespace only */
    TFM_BLEU_TOK_CHAR = 3, /* every non-space code point is a token */
} tfm_bleu_tokenize;

typedef enum tfm_bleu_smooth {
    TFM_BLEU_SMOOTH_EXP = 0,   /* the k-th zero-match order gets precision 1 / (2^k * total) */
    TFM_BLEU_SMOOTH_FLOOR = 1, /* a zero-match order gets precision smooth_value / total */
    TFM_BLEU_SMOOTH_ADD_K = 2, /* orders 2..4 get smooth_value added to matches and totals */
    TFM_BLEU_SMOOTH_NONE = 3,
} tfm_bleu_smooth;

typedef struct tfm_bleu_params {
    int lowercase;              /* 1: Python's str.lower() first (sacreBLEU -lc) */
    tfm_bleu_tokenize tokenize; /* 13a */
    tfm_bleu_smooth smooth;     /* exp */
    double smooth_value;        /* < 0: the method's default (floor 0.1, add-k 1) */
    int effective_order;        /* 1: average only the orders that have n-grams */
} tfm_bleu_params;

/* sacreBLEU's BLEU() defaults: case-sensitive, 13a, exp, no effective order. */
void tfm_bleu_default_params(tfm_bleu_params *p);

/* Sufficient statistics, summed over segments. Zero it (or use
 * tfm_bleu_stats_init) before the first tfm_bleu_add_segment. */
typedef struct tfm_bleu_stats {
    int64_t sys_len;                /* hypothesis tokens */
    int64_t ref_len;                /* closest reference tokens */
    int64_t counts[TFM_BLEU_ORDER]; /* clipped n-gram matches, n = 1..4 */
    int64_t totals[TFM_BLEU_ORDER]; /* hypothesis n-grams, n = 1..4 */
    int nrefs;                      /* references per segment: 0 none yet, -1 varies */
} tfm_bleu_stats;

typedef struct tfm_bleu_result {
    double score;                       /* 0..100 */
    double precisions[TFM_BLEU_ORDER];  /* percent, smoothing applied */
    double bp;                          /* brevity penalty */
    double ratio;                       /* sys_len / ref_len (0 when ref_len is 0) */
    int64_t sys_len, ref_len;
    int64_t counts[TFM_BLEU_ORDER];     /* raw integer statistics (add-k not added) */
    int64_t totals[TFM_BLEU_ORDER];
    int nrefs;                          /* -1: variable */
} tfm_bleu_result;

void tfm_bleu_stats_init(tfm_bleu_stats *s);

/* Checks the enums and smooth_value. TFM_ERR_INVALID names the field. */
tfm_status tfm_bleu_params_validate(const tfm_bleu_params *p);

/* Adds one segment's statistics to *stats: hypothesis `hyp` against the
 * `nrefs` >= 1 references refs[0..nrefs-1]. Empty-string references are left
 * out. Errors (stats unchanged): TFM_ERR_INVALID for invalid UTF-8 or when
 * every reference is empty; TFM_ERR_NOMEM. */
tfm_status tfm_bleu_add_segment(tfm_bleu_stats *stats, const char *hyp, const char *const *refs,
                                int nrefs, const tfm_bleu_params *p);

/* The score from summed statistics (sacreBLEU's compute_bleu). */
void tfm_bleu_compute(const tfm_bleu_stats *stats, const tfm_bleu_params *p, tfm_bleu_result *out);

/* Corpus BLEU of nseg hypotheses hyps[i] against nrefs reference streams
 * refs[r][i] (stream-major, as sacreBLEU takes them). Errors name the
 * 1-based segment: TFM_ERR_INVALID (bad params, invalid UTF-8, all references
 * empty), TFM_ERR_NOMEM. nseg may be 0 (score 0). */
tfm_status tfm_bleu_corpus(const char *const *hyps, const char *const *const *refs, int nrefs,
                           size_t nseg, const tfm_bleu_params *p, tfm_bleu_result *out);

/* Sentence BLEU of one hypothesis against refs[0..nrefs-1]. sacreBLEU's
 * sentence_bleu() is this with effective_order = 1. */
tfm_status tfm_bleu_sentence(const char *hyp, const char *const *refs, int nrefs,
                             const tfm_bleu_params *p, tfm_bleu_result *out);

/* sacreBLEU's signature, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
 * into buf (always NUL-terminated). nrefs -1 prints "var". Returns the length
 * it needed, as snprintf does. */
int tfm_bleu_signature(const tfm_bleu_params *p, int nrefs, char *buf, size_t cap);

/* sacreBLEU's verbose part, "65.2/41.0/27.9/19.5 (BP = 1.000 ratio = 1.012
 * hyp_len = 1234 ref_len = 1219)". Returns the length needed. */
int tfm_bleu_verbose(const tfm_bleu_result *r, char *buf, size_t cap);

/* The tokens sacreBLEU's BLEU would count for `text` (lowercasing and
 * trailing-whitespace strip included), joined by single spaces, as a
 * malloc'd string the caller frees. For tests and debugging. */
tfm_status tfm_bleu_tokenize_string(const char *text, const tfm_bleu_params *p, char **out);

/* ------------------------------------------------------------ chrF / chrF++ */

#define TFM_CHRF_MAX_ORDERS 32 /* char_order + word_order */

typedef struct tfm_chrf_params {
    int char_order;    /* 6 */
    int word_order;    /* 0; chrF++ is 2 */
    int beta;          /* 2: recall weighs beta times as much as precision */
    int lowercase;     /* 0 */
    int whitespace;    /* 0: spaces are removed before character n-grams */
    int eps_smoothing; /* 0: average over orders both sides have (sacreBLEU 2 default) */
} tfm_chrf_params;

/* sacreBLEU's CHRF() defaults (chrF2, char order 6, word order 0). */
void tfm_chrf_default_params(tfm_chrf_params *p);

/* Per order (character orders 1..char_order, then word orders 1..word_order)
 * three counts: hypothesis n-grams (0 when the reference has none of that
 * order), reference n-grams, matches. */
typedef struct tfm_chrf_stats {
    int64_t v[3 * TFM_CHRF_MAX_ORDERS];
    int norders; /* char_order + word_order */
    int nrefs;   /* 0 none yet, -1 varies */
} tfm_chrf_stats;

typedef struct tfm_chrf_result {
    double score; /* 0..100 */
    tfm_chrf_stats stats;
} tfm_chrf_result;

/* TFM_ERR_INVALID when an order is negative, both are 0, their sum exceeds
 * TFM_CHRF_MAX_ORDERS, or beta < 0. */
tfm_status tfm_chrf_params_validate(const tfm_chrf_params *p);

void tfm_chrf_stats_init(tfm_chrf_stats *s, const tfm_chrf_params *p);

/* As tfm_bleu_add_segment, for chrF: the best reference's statistics. */
tfm_status tfm_chrf_add_segment(tfm_chrf_stats *stats, const char *hyp, const char *const *refs,
                                int nrefs, const tfm_chrf_params *p);

/* The score from summed statistics. */
double tfm_chrf_compute(const tfm_chrf_stats *stats, const tfm_chrf_params *p);

/* As tfm_bleu_corpus / tfm_bleu_sentence. */
tfm_status tfm_chrf_corpus(const char *const *hyps, const char *const *const *refs, int nrefs,
                           size_t nseg, const tfm_chrf_params *p, tfm_chrf_result *out);
tfm_status tfm_chrf_sentence(const char *hyp, const char *const *refs, int nrefs,
                             const tfm_chrf_params *p, tfm_chrf_result *out);

/* "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0". */
int tfm_chrf_signature(const tfm_chrf_params *p, int nrefs, char *buf, size_t cap);

/* The metric's name as sacreBLEU prints it: "chrF2", "chrF2++" (word order 2). */
int tfm_chrf_name(const tfm_chrf_params *p, char *buf, size_t cap);

/* ---------------------------------------------------------------- helpers */

/* Python's str.lower() of a UTF-8 string (full mappings, final sigma), as a
 * malloc'd string. TFM_ERR_INVALID for invalid UTF-8, TFM_ERR_NOMEM. */
tfm_status tfm_text_lower(const char *s, size_t len, char **out, size_t *out_len);

/* Length of s[0..len) without its trailing Python whitespace (str.rstrip()).
 * s must be valid UTF-8. */
size_t tfm_text_rstrip_len(const char *s, size_t len);

/* Writes x as Python's repr(float) does (shortest round-trip digits,
 * "100.0", "1e-05"). Returns the length needed. */
int tfm_format_py_float(double x, char *buf, size_t cap);

#endif
