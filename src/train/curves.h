/*
 * curves.h: the training and validation curves of a model directory, as CSV
 * files (appended as training goes) and one SVG plot redrawn from them.
 *
 *   DIR/train.csv   step,epoch,loss,lr,grad_norm,tokens_per_s,elapsed_s
 *   DIR/valid.csv   step,epoch,loss,perplexity,bleu,elapsed_s
 *   DIR/curves.svg  training loss and validation loss against step, BLEU on
 *                   a second axis
 */
#ifndef TFM_TRAIN_CURVES_H
#define TFM_TRAIN_CURVES_H

#include "transformer.h"

/* Appends one row (creating the file with its header). */
tfm_status tfm_curves_append_train(const char *dir, long step, long epoch, double loss, double lr,
                                   double grad_norm, double tokens_per_s, double elapsed);
tfm_status tfm_curves_append_valid(const char *dir, long step, long epoch, double loss, double bleu,
                                   double elapsed);
/* Drops the rows after `step` (a resumed run rewrites its future). */
tfm_status tfm_curves_truncate(const char *dir, long step);
/* Reads both CSV files and writes DIR/curves.svg atomically. */
tfm_status tfm_curves_plot(const char *dir);

#endif
