/*
 * attention_html.h: the attention weights of one sentence pair as a single
 * self-contained HTML page (inline CSS and SVG, no script, no external
 * resource), for `transformer attention`.
 *
 * What it does: runs one forward pass of the model (no dropout) on one
 * source/target pair, reads the attention probabilities of every layer and
 * head (tfm_workspace_attention), and draws them as heatmaps whose axes are
 * labelled with the BPE pieces:
 *   - encoder self-attention        rows and columns: source pieces
 *   - decoder (masked) self-attn.   rows and columns: <s> + target pieces
 *   - cross-attention               rows: <s> + target pieces, columns: source
 * one row of small heatmaps (one per head) per layer, plus a larger averaged
 * view: the mean over the heads of the last layer and the mean over all layers
 * and heads, of the cross-attention (the soft word alignment) or, for a model
 * without an encoder-decoder pair, of its one self-attention. Every cell has a
 * <title> (query piece, key piece, value) shown on hover. Colours are linear in
 * the probability, white 0 to dark blue 1, the same scale for every heatmap.
 *
 * What it does not do: decode (the caller passes the target, e.g. the
 * model's own greedy translation), tokenize raw text, or load models.
 *
 * Page structure (tests rely on it): it starts with "<!DOCTYPE html>"; each
 * per-head heatmap is an
 *   <svg class="heatmap" data-kind="encoder|decoder|cross" data-layer="L"
 *        data-head="H" data-rows="Tq" data-cols="Tk" ...>
 * holding exactly Tq*Tk <rect> elements (the cells, row-major) and no other
 * rect; each averaged view is an <svg class="average" data-kind=...
 * data-rows=... data-cols=...> with the same cell rule.
 */
#ifndef TFM_INFER_ATTENTION_HTML_H
#define TFM_INFER_ATTENTION_HTML_H

#include <stdint.h>
#include <stdio.h>

#include "model/model.h"
#include "text/bpe.h"

/* What to show besides the weights. Every string may be NULL; all are
 * escaped, and invalid UTF-8 in them is shown as U+FFFD. */
typedef struct tfm_attention_html_params {
    const char *title;          /* page title and heading: "Attention weights" */
    const char *model_name;     /* e.g. the model directory, shown in the header: NULL */
    const char *source_text;    /* the source sentence as typed: NULL (not shown) */
    const char *target_text;    /* the target sentence: NULL (not shown) */
    const char *target_note;    /* after the target, e.g. "greedy translation by the
                                   model" or "given": NULL */
    long step;                  /* training step of the weights; < 0 = unknown: -1 */
} tfm_attention_html_params;

/* Fills *p with the defaults above. */
void tfm_attention_html_default_params(tfm_attention_html_params *p);

/* Runs the forward pass for one pair and writes the page to `out`.
 *   encoder-decoder: src [S] (no bos/eos) and tgt [T] (no bos/eos): the
 *                    encoder reads src, the decoder reads <s> + tgt (T+1).
 *   decoder-only:    the decoder reads <s> + src + tgt (src is the text, tgt
 *                    an optional continuation; S + T may be 0).
 *   encoder-only:    the encoder reads src; tgt must be empty (T = 0).
 * Labels come from `bpe` (tfm_bpe_piece); ids must be below the model's
 * vocabularies. Errors (the message says what and by how much):
 * TFM_ERR_INVALID for an empty source of a model with an encoder, a sequence
 * longer than max_positions, an id outside the vocabulary, a target for an
 * encoder-only model; TFM_ERR_NOMEM; TFM_ERR_IO when writing `out` fails.
 * `out` is written only after the forward pass succeeded. */
tfm_status tfm_attention_html_write(const tfm_model *m, const tfm_bpe *bpe, const int32_t *src,
                                    int S, const int32_t *tgt, int T,
                                    const tfm_attention_html_params *p, FILE *out);

/* As tfm_attention_html_write, into `path` atomically: a temporary file next
 * to it is written, flushed, synced and renamed over it, so a failed run
 * leaves any existing file untouched. Errors: those above, and TFM_ERR_IO
 * naming the path. */
tfm_status tfm_attention_html_save(const tfm_model *m, const tfm_bpe *bpe, const int32_t *src,
                                   int S, const int32_t *tgt, int T,
                                   const tfm_attention_html_params *p, const char *path);

#endif
