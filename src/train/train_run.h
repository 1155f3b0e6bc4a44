/*
 * train_run.h: a whole training run over a model directory, as
 * `transformer train` does it.
 *
 * The directory holds everything a run needs and leaves:
 *   bpe.model               the tokenizer (learned here when missing)
 *   config.json             the model configuration
 *   model.safetensors       the latest weights (what translate loads)
 *   train_state.safetensors the latest optimizer state and data position
 *   checkpoint_<step>.safetensors (+ .state) the last K checkpoints
 *   train.csv, valid.csv, curves.svg   the curves
 * A resumed run (resume = 1) continues from model.safetensors and
 * train_state.safetensors so that every later step's loss equals an
 * uninterrupted run's, bit for bit, on the CPU.
 */
#ifndef TFM_TRAIN_TRAIN_RUN_H
#define TFM_TRAIN_TRAIN_RUN_H

#include <stdint.h>
#include <stdio.h>

#include "text/corpus.h"
#include "train/optim.h"
#include "train/schedule.h"
#include "transformer.h"

typedef struct tfm_train_opts {
    const char *train_src, *train_tgt;  /* parallel corpus (encoder-decoder) */
    const char *valid_src, *valid_tgt;  /* optional */
    const char *train_text, *valid_text;/* language-model corpus (decoder-only) instead */
    const char *model_dir;
    tfm_config cfg;                     /* vocabulary sizes come from the BPE model */
    int vocab_size;                     /* BPE vocabulary when it is learned: 8000 */
    tfm_corpus_params corpus;           /* batch_tokens, max_len, seed */
    int accum;                          /* micro-batches per update: 1 */
    tfm_adam_params opt;
    tfm_lr_schedule sched;
    long max_steps;                     /* 0 = no limit */
    long max_epochs;                    /* 0 = no limit */
    double max_seconds;                 /* 0 = no limit */
    long valid_every;                   /* steps between validations and checkpoints: 1000 */
    long log_every;                     /* steps between plain log lines: 100 */
    int keep_last;                      /* checkpoints kept: 5 */
    int bleu_sentences;                 /* validation sentences decoded for BLEU; 0 = all, -1 = none */
    uint64_t seed;                      /* initialisation, dropout and shuffling: 1 */
    const char *device;                 /* "cpu" (default, also NULL) or "cuda" */
    const char *precision;              /* GEMM arithmetic: "fp32" (default, also NULL), "tf32", "bf16" */
    int resume;
    int progress;                       /* 1: one line updated in place (a terminal) */
    FILE *log;                          /* where progress goes (stderr) */
} tfm_train_opts;

/* The paper's base recipe (post-LN, sinusoidal positions, all embeddings
 * shared, Adam 0.9/0.98/1e-9, the paper's schedule with warmup 4000, label
 * smoothing 0.1, dropout 0.1) with batches of 4096 tokens. */
void tfm_train_opts_default(tfm_train_opts *o);

/* Runs until max_steps / max_epochs / max_seconds or SIGINT/SIGTERM (which
 * end the run after the current step, with a checkpoint). */
tfm_status tfm_train_run(const tfm_train_opts *o);

/* Greedy translations of the first n sentences of a corpus and their
 * sacreBLEU score against the raw target lines; n = 0 means all. */
tfm_status tfm_corpus_bleu(const tfm_model *m, const tfm_bpe *bpe, const tfm_corpus *c, long n,
                           double *bleu);

#endif
