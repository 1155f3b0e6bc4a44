/*
 * translate.h: text in, text out: a model directory's tokenizer and weights,
 * and beam search over many sentences at once.
 *
 * Sentences are sorted by length internally and decoded in batches; outputs
 * come back in input order. An empty (or all-whitespace) input gives an empty
 * output. A source longer than the model's positions is cut to fit, with a
 * warning counted in the result.
 */
#ifndef TFM_INFER_TRANSLATE_H
#define TFM_INFER_TRANSLATE_H

#include <stddef.h>

#include "infer/beam.h"
#include "model/model.h"
#include "text/bpe.h"

typedef struct tfm_translator {
    tfm_model model;
    tfm_bpe *bpe;
    long step;              /* of the checkpoint */
} tfm_translator;

/* Loads DIR/bpe.model and DIR/model.safetensors (or `checkpoint` when not
 * NULL). Errors name the missing or bad file. */
tfm_status tfm_translator_load(tfm_translator *t, const char *dir, const char *checkpoint);
void tfm_translator_free(tfm_translator *t);

typedef struct tfm_translate_params {
    tfm_beam_params beam;   /* beam 4, alpha 0.6, +50 (the paper); beam 1 = greedy */
    int batch_sentences;    /* sentences decoded together: 64 */
} tfm_translate_params;
void tfm_translate_default_params(tfm_translate_params *p);

/* One output per input line: out[i * nbest + k] is the k-th best translation
 * of line i (NUL-terminated, owned by the caller: free each), scores[same]
 * its length-normalised log-probability (may be NULL). *truncated counts the
 * sources cut to fit (may be NULL). Lines must be valid UTF-8 (checked: the
 * error names the line, 1-based, of this call). */
tfm_status tfm_translate_lines(const tfm_translator *t, const char *const *lines, size_t n,
                               const tfm_translate_params *p, char **out, float *scores, size_t *truncated);

#endif
