/* translate.c: see translate.h. */
#include "infer/translate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/utf8.h"
#include "train/checkpoint.h"

tfm_status tfm_translator_load(tfm_translator *t, const char *dir, const char *checkpoint) {
    memset(t, 0, sizeof *t);
    char path[4096];
    snprintf(path, sizeof path, "%s/bpe.model", dir);
    TFM_TRY(tfm_bpe_load(path, &t->bpe));
    if (!checkpoint) snprintf(path, sizeof path, "%s/model.safetensors", dir);
    tfm_status st = tfm_checkpoint_load(&t->model, checkpoint ? checkpoint : path, &t->step);
    if (st != TFM_OK) {
        tfm_bpe_free(t->bpe);
        t->bpe = NULL;
        return st;
    }
    if (t->model.cfg.enc_layers == 0 || t->model.cfg.dec_layers == 0) {
        tfm_translator_free(t);
        return tfm_error(TFM_ERR_INVALID, "%s: not an encoder-decoder model (use `transformer generate`)",
                         checkpoint ? checkpoint : path);
    }
    if (t->model.cfg.tgt_vocab != tfm_bpe_vocab_size(t->bpe)) {
        int v = t->model.cfg.tgt_vocab;
        tfm_translator_free(t);
        return tfm_error(TFM_ERR_FORMAT, "%s/bpe.model has %d pieces but the model's vocabulary is %d", dir,
                         tfm_bpe_vocab_size(t->bpe), v);
    }
    return TFM_OK;
}

void tfm_translator_free(tfm_translator *t) {
    if (t->bpe) tfm_bpe_free(t->bpe);
    tfm_model_free(&t->model);
    memset(t, 0, sizeof *t);
}

void tfm_translate_default_params(tfm_translate_params *p) {
    tfm_beam_default_params(&p->beam);
    p->batch_sentences = 64;
}

typedef struct item {
    size_t line;
    int32_t *ids;
    int len;
} item;

static int by_length(const void *a, const void *b) {
    const item *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->line < y->line ? -1 : x->line > y->line;
}

static int blank(const char *s) {
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r') return 0;
    return 1;
}

tfm_status tfm_translate_lines(const tfm_translator *t, const char *const *lines, size_t n,
                               const tfm_translate_params *p, char **out, float *scores, size_t *truncated) {
    const tfm_model *m = &t->model;
    const tfm_config *cfg = &m->cfg;
    int nbest = p->beam.nbest, beam = p->beam.beam;
    int max_S = cfg->max_positions;
    size_t cut = 0, n_items = 0;
    for (size_t i = 0; i < n * nbest; i++) {
        out[i] = NULL;
        if (scores) scores[i] = 0;
    }
    item *items = calloc(n ? n : 1, sizeof *items);
    if (!items) return tfm_error(TFM_ERR_NOMEM, "translate: out of memory");
    tfm_status st = TFM_OK;
    for (size_t i = 0; i < n && st == TFM_OK; i++) {
        size_t len = strlen(lines[i]), bad;
        if (!tfm_utf8_valid(lines[i], len, &bad)) {
            st = tfm_error(TFM_ERR_FORMAT, "line %zu: invalid UTF-8 at byte %zu", i + 1, bad + 1);
            break;
        }
        if (blank(lines[i])) continue;
        /* Trimmed of ASCII whitespace, as the training corpus was. */
        const char *text = lines[i];
        while (*text == ' ' || *text == '\t' || *text == '\r') text++, len--;
        while (len && (text[len - 1] == ' ' || text[len - 1] == '\t' || text[len - 1] == '\r')) len--;
        int32_t *ids;
        size_t k;
        st = tfm_bpe_encode(t->bpe, text, len, &ids, &k);
        if (st != TFM_OK) break;
        if ((int)k > max_S) {
            k = (size_t)max_S;
            cut++;
        }
        items[n_items++] = (item){.line = i, .ids = ids, .len = (int)k};
    }
    qsort(items, n_items, sizeof *items, by_length);
    int rows = p->batch_sentences > 0 ? p->batch_sentences : 64;
    int longest = n_items ? items[n_items - 1].len : 1;
    int max_T = longest + p->beam.max_len_a_plus < cfg->max_positions ? longest + p->beam.max_len_a_plus : cfg->max_positions;
    if (p->beam.max_len_override > 0 && p->beam.max_len_override < max_T) max_T = p->beam.max_len_override;
    tfm_decoder dec;
    int have_dec = 0;
    int32_t *src = NULL;
    tfm_hypothesis *hyps = NULL;
    if (st == TFM_OK && n_items) {
        st = tfm_decoder_init(&dec, m, rows * beam, longest, max_T);
        have_dec = st == TFM_OK;
        src = malloc((size_t)rows * longest * sizeof *src);
        hyps = calloc((size_t)rows * nbest, sizeof *hyps);
        if (st == TFM_OK && (!src || !hyps)) st = tfm_error(TFM_ERR_NOMEM, "translate: out of memory");
    }
    for (size_t first = 0; st == TFM_OK && first < n_items; first += rows) {
        int B = n_items - first < (size_t)rows ? (int)(n_items - first) : rows;
        int S = items[first + B - 1].len; /* sorted: the last is the longest */
        for (int b = 0; b < B; b++)
            for (int j = 0; j < S; j++) src[b * S + j] = j < items[first + b].len ? items[first + b].ids[j] : cfg->pad_id;
        st = tfm_beam_search(&dec, src, B, S, &p->beam, hyps);
        for (int b = 0; st == TFM_OK && b < B; b++)
            for (int k = 0; k < nbest && st == TFM_OK; k++) {
                const tfm_hypothesis *h = &hyps[b * nbest + k];
                size_t slot = items[first + b].line * nbest + k;
                st = tfm_bpe_decode(t->bpe, h->tokens, (size_t)h->length, &out[slot], NULL);
                if (scores) scores[slot] = h->score;
            }
        if (st == TFM_OK) tfm_hypotheses_free(hyps, B * nbest);
    }
    /* Empty inputs give empty outputs. */
    for (size_t i = 0; st == TFM_OK && i < n * nbest; i++)
        if (!out[i] && !(out[i] = calloc(1, 1))) st = tfm_error(TFM_ERR_NOMEM, "translate: out of memory");
    if (st != TFM_OK)
        for (size_t i = 0; i < n * nbest; i++) {
            free(out[i]);
            out[i] = NULL;
        }
    for (size_t i = 0; i < n_items; i++) free(items[i].ids);
    free(items);
    free(src);
    free(hyps);
    if (have_dec) tfm_decoder_free(&dec);
    if (truncated) *truncated = cut;
    return st;
}
