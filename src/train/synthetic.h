/*
 * synthetic.h: the synthetic copy and reverse tasks.
 *
 * A source is a random sequence of `symbols` symbols (token ids
 * first_symbol..first_symbol+symbols-1) with a length drawn uniformly from
 * [min_len, max_len]; the target is the same sequence (copy) or its reverse.
 * Sequences are split deterministically into training and held-out sets by a
 * hash of their content (1 in 10 is held out), so evaluation never sees a
 * training sequence.
 */
#ifndef TFM_TRAIN_SYNTHETIC_H
#define TFM_TRAIN_SYNTHETIC_H

#include <stdint.h>

#include "core/rng.h"
#include "model/model.h"

typedef enum tfm_task_kind { TFM_TASK_COPY = 0, TFM_TASK_REVERSE = 1 } tfm_task_kind;

typedef struct tfm_task {
    tfm_task_kind kind;
    int symbols, first_symbol;   /* first_symbol: after pad, bos, eos */
    int min_len, max_len;
    int pad_id, bos_id, eos_id;
} tfm_task;

/* Fills one padded batch of B pairs: src [B, max_len], tgt_in [B, max_len+1]
 * (bos + target), targets [B, max_len+1] (target + eos), drawn from the
 * training (held_out = 0) or held-out (held_out = 1) set. */
void tfm_task_batch(const tfm_task *task, tfm_rng *rng, int held_out, int B, int32_t *src,
                    int32_t *tgt_in, int32_t *targets);

/* Whether out [max_len] (decoded, eos-terminated) is exactly the expected
 * target of src [max_len]. */
int tfm_task_correct(const tfm_task *task, const int32_t *src, const int32_t *out, int out_len);

#include <stdio.h>

#include "train/optim.h"
#include "train/schedule.h"

/* A whole experiment: train a model on the task, then decode held-out
 * sequences greedily with the KV cache and count exact matches. */
typedef struct tfm_task_run {
    tfm_task task;
    tfm_config cfg;          /* vocabulary sizes are set from the task */
    tfm_adam_params opt;
    tfm_lr_schedule sched;
    int batch;               /* pairs per step */
    long max_steps;
    double max_seconds;      /* 0 = no limit */
    int eval_size;           /* held-out sequences decoded at the end */
    uint64_t seed;
    FILE *log;               /* progress lines, or NULL */
} tfm_task_run;

typedef struct tfm_task_result {
    long steps;
    double train_seconds;
    float final_loss;
    double accuracy;         /* exact-match sequence accuracy on held-out data */
    int correct, total;
} tfm_task_result;

/* Fills *run with defaults that reach 99% on copy and reverse in well under a
 * minute on 2 cores. */
void tfm_task_run_default(tfm_task_run *run, tfm_task_kind kind);
/* Trains and evaluates; `model` receives the trained model when not NULL
 * (free it with tfm_model_free), otherwise it is freed here. */
tfm_status tfm_task_train(const tfm_task_run *run, tfm_task_result *res, tfm_model *model);

#endif
