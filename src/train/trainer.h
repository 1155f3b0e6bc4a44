/*
 * trainer.h: one training step over the flat parameter buffer.
 *
 * The trainer owns the per-run training state: the gradient buffer and the
 * Adam moments (same layout as the parameters), the activation workspace,
 * the optimizer settings, the learning-rate schedule and the step count.
 * Nothing is allocated after tfm_trainer_init.
 *
 * A step is: zero the gradients; for each micro-batch forward, backward
 * (gradients accumulate); clip; Adam with the scheduled learning rate.
 * tfm_trainer_step does all of it for one batch; tfm_trainer_accumulate and
 * tfm_trainer_update split it for gradient accumulation.
 *
 * On a device backend nothing in a step waits for the device until its end:
 * the loss accumulates in device memory (stats), the gradient norm is
 * computed there and the clipped update reads it there; tfm_trainer_update
 * then downloads both in one copy.
 *
 * On a backend that records (backend.h: graph_begin; CUDA graphs) the
 * forward + backward of a micro-batch is recorded the second time its shape
 * (B, S, T) comes, and replayed from then on: the per-step values (dropout
 * seed, loss scale) go to the backend's slots first (step_values). Up to
 * TFM_TRAINER_GRAPHS shapes keep a recording (the least recently used one
 * goes); a recording the backend refuses is made again, one it cannot make
 * leaves that shape to run directly. TFM_CUDA_GRAPHS=0 in the environment
 * turns recording off.
 */
#ifndef TFM_TRAIN_TRAINER_H
#define TFM_TRAIN_TRAINER_H

#include <stdint.h>

#include "model/model.h"
#include "train/optim.h"
#include "train/schedule.h"

#define TFM_TRAINER_GRAPHS 16

/* One batch shape's recorded forward + backward (backend memory's graph). */
typedef struct tfm_step_graph {
    int B, S, T;
    int runs;        /* times this shape has run */
    long last_used;  /* the trainer's micro-batch count when it last ran */
    int failed;      /* the backend could not record it: run directly */
    void *graph;     /* NULL: not recorded (yet) */
} tfm_step_graph;

typedef struct tfm_trainer {
    tfm_model *m;
    tfm_workspace ws;
    float *grad, *adam_m, *adam_v;  /* [n_params] each, one allocation of the model's backend */
    tfm_weights grad_views;
    tfm_adam_params opt;
    tfm_lr_schedule sched;
    uint64_t seed;                  /* dropout randomness */
    long step;                      /* updates done so far */
    int micro;                      /* micro-batches accumulated since the last update */
    double *stats;                  /* backend memory: [0] summed loss of this update's micro-batches,
                                       [1] the gradient norm (a float in the slot's first bytes) */
    double loss_sum;                /* of the last update (downloaded from stats) */
    long n_tokens;                  /* non-pad targets accumulated since the last update */
    float last_lr, last_grad_norm;
    int graphs_on;                  /* the backend records, and TFM_CUDA_GRAPHS is not 0 */
    long micro_total;               /* micro-batches run so far (the graphs' clock) */
    tfm_step_graph graphs[TFM_TRAINER_GRAPHS];
} tfm_trainer;

tfm_status tfm_trainer_init(tfm_trainer *tr, tfm_model *m, const tfm_adam_params *opt,
                            const tfm_lr_schedule *sched, int max_B, int max_S, int max_T,
                            uint64_t seed);
/* The same with the workspace bounded by token counts (tfm_workspace_init_cells). */
tfm_status tfm_trainer_init_cells(tfm_trainer *tr, tfm_model *m, const tfm_adam_params *opt,
                                  const tfm_lr_schedule *sched, int max_B, int max_S, int max_T,
                                  long max_src_cells, long max_tgt_cells, uint64_t seed);
void tfm_trainer_free(tfm_trainer *tr);

/* Forward + backward of one micro-batch; gradients accumulate. grad_scale is
 * the factor on the summed loss (1/tokens of the whole update for a mean). */
tfm_status tfm_trainer_accumulate(tfm_trainer *tr, const tfm_batch *b, float grad_scale);
/* Clips, applies Adam, advances the step, zeroes the gradients; returns the
 * mean loss over the tokens accumulated since the last update (the step's one
 * wait for the device). */
float tfm_trainer_update(tfm_trainer *tr);
/* The mean loss over the micro-batches accumulated since the last update,
 * without updating (waits for the device); 0 when none. */
double tfm_trainer_pending_loss(tfm_trainer *tr);
/* One whole step on one batch; *loss receives its mean loss per token. */
tfm_status tfm_trainer_step(tfm_trainer *tr, const tfm_batch *b, float *loss);

/* Loss of a batch without dropout or gradients (validation). */
tfm_status tfm_trainer_eval(tfm_trainer *tr, const tfm_batch *b, double *loss_sum, long *n_tokens);

#endif
