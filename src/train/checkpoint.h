/*
 * checkpoint.h: model checkpoints (weights), training state for an exact
 * resume, a checkpoint directory with keep-last-K, and checkpoint averaging.
 *
 * Two files, both safetensors (see docs/checkpoints.md for the full format):
 *
 *   weights      one F32 tensor per canonical parameter, named and shaped as
 *                the layout of src/model/params.h says (torch.nn.Transformer
 *                names); tied tensors are stored once, under the name they are
 *                tied to. Metadata: "format" = "transformer.c",
 *                "format_version" = "1", "config" (tfm_config_to_json),
 *                "step", "tied" ("generator.weight=tgt_embed.weight,...").
 *                Loadable by PyTorch: every tensor is a plain F32 array.
 *   train state  "adam.m" and "adam.v" (F32 [n_params], the flat moment
 *                buffers in parameter-buffer order). Metadata: "format" =
 *                "transformer.c-train-state", "format_version" = "1", "step",
 *                "seed", "n_params", "config", "optimizer" and "schedule" (JSON)
 *                and the caller's data position as "data.<key>" entries.
 *
 * Weights + train state + the data position give a bit-exact resume: the
 * optimizer is deterministic and the trainer's dropout is a pure function of
 * (seed, step, micro-batch).
 *
 * A checkpoint directory holds checkpoint_<step>.safetensors,
 * checkpoint_<step>.state.safetensors, and model.safetensors /
 * train_state.safetensors, atomically replaced copies (hard links) of the
 * latest. Every file is written to a temporary file, fsynced and renamed into
 * place (tfm_st_writer_save), so a kill at any moment leaves either the old or
 * the new file at every path. Temporary files left by a killed writer
 * (NAME.tmp.PID.N whose PID is no longer running on this host) are removed by
 * the next save into the same directory.
 *
 * Not here: writing config.json (the train command does), the order in which
 * batches are drawn (the caller saves its data position as key/values), sharded
 * or half-precision checkpoints.
 */
#ifndef TFM_TRAIN_CHECKPOINT_H
#define TFM_TRAIN_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "train/trainer.h"
#include "transformer.h"

#define TFM_CHECKPOINT_FORMAT "transformer.c"
#define TFM_TRAIN_STATE_FORMAT "transformer.c-train-state"
#define TFM_CHECKPOINT_VERSION "1"

/* ---------------------------------------------------------------- weights */

/* Writes the weights of m and `step` (>= 0) to `path` atomically. Errors:
 * TFM_ERR_IO / TFM_ERR_NOMEM with a message naming the path; on error any
 * existing file at `path` is untouched. */
tfm_status tfm_checkpoint_save(const tfm_model *m, long step, const char *path);

/* Reads the config from the file's metadata, validates it, initialises *m_out
 * with it (tfm_model_init, seed 0) and overwrites every parameter from the
 * file. *step (may be NULL) receives the saved step. The file must hold every
 * canonical tensor of the config as F32 with exactly the layout's shape, no
 * other tensor, and only finite values. Errors (TFM_ERR_FORMAT unless said
 * otherwise; the message names the file and the tensor, field or key):
 * missing/invalid format, format_version, config or step metadata; a missing
 * tensor; a wrong shape (both shapes named) or dtype; an unexpected tensor;
 * a NaN/Inf element; TFM_ERR_IO when the file cannot be read. A corrupt or
 * truncated file is an error, never a crash. On error *m_out is left empty
 * (tfm_model_free is safe on it). */
tfm_status tfm_checkpoint_load(tfm_model *m_out, const char *path, long *step);

/* Loads the weights of `path` into an existing model (its parameter buffer is
 * overwritten; the struct itself is not). The file's config must equal m->cfg
 * in every field (d_k/d_v compared with their defaults resolved); otherwise
 * TFM_ERR_INVALID naming the first differing field and both values. The whole
 * file is checked before the first parameter is written, so on any error the
 * model is unchanged. */
tfm_status tfm_checkpoint_load_into(const tfm_model *m, const char *path);

/* Reads only the config and step of a weights file (both outputs may be NULL
 * except cfg), with the same metadata checks as tfm_checkpoint_load; does not
 * check the tensors. For tools that want to build a model and workspace before
 * loading. */
tfm_status tfm_checkpoint_read_config(const char *path, tfm_config *cfg, long *step);

/* Compares two valid configs field by field, in tfm_config_to_json order, with
 * d_k/d_v defaults resolved. Returns 0 when they are equal; otherwise 1, and
 * writes "FIELD: A vs B" (the JSON values) into buf[cap] (may be NULL). */
int tfm_checkpoint_config_diff(const tfm_config *a, const tfm_config *b, char *buf, size_t cap);

/* ----------------------------------------------------------- train state */

/* What a train state file holds besides the moments. */
typedef struct tfm_train_state_info {
    long step;                 /* updates done when it was saved */
    uint64_t seed;             /* the trainer's dropout seed */
    tfm_adam_params opt;       /* the optimizer settings of the saving run */
    tfm_lr_schedule sched;     /* the LR schedule of the saving run */
    /* "" when opt and sched equal the loading trainer's; otherwise the first
     * differing setting, e.g. "schedule.lr: 0.001 in the file, 0.0005 now".
     * The load keeps the trainer's settings either way; the caller decides
     * whether a difference is an error or a deliberate change. */
    char settings_diff[192];
    int n;                     /* the caller's data-position entries */
    char **keys, **values;     /* n each, NUL-terminated, owned */
} tfm_train_state_info;

/* Writes tr's Adam moments, step and seed, its optimizer and schedule
 * settings, the model config, and n (>= 0) caller key/values (the data
 * position: epoch, batch index, shuffle seed, ...) to `path` atomically. Keys
 * must be non-empty, distinct UTF-8 strings; values UTF-8. Errors:
 * TFM_ERR_INVALID for a bad key/value or when tr is between the micro-batches
 * of an update (tr->micro != 0: the accumulated gradients would be lost);
 * TFM_ERR_IO / TFM_ERR_NOMEM naming the path. */
tfm_status tfm_train_state_save(const tfm_trainer *tr, const char *const *keys,
                                const char *const *values, int n, const char *path);

/* Restores tr->adam_m, tr->adam_v, tr->step and tr->seed from `path`, zeroes
 * the gradients and the micro-batch counters; tr's optimizer and schedule
 * settings are kept (see info->settings_diff). `info` (may be NULL) receives
 * everything else; release it with tfm_train_state_info_free, also after an
 * error. Errors (the message names the file and the field or tensor):
 * TFM_ERR_FORMAT for bad metadata, a missing or mis-shaped "adam.m"/"adam.v",
 * non-finite moments, or n_params / a tensor of the saved model's layout that
 * differs from tr's model; TFM_ERR_IO when unreadable. Nothing in tr is
 * changed unless the whole file checks out. */
tfm_status tfm_train_state_load(tfm_trainer *tr, const char *path, tfm_train_state_info *info);

/* The value of data-position key `key`, or NULL. */
const char *tfm_train_state_get(const tfm_train_state_info *info, const char *key);
void tfm_train_state_info_free(tfm_train_state_info *info);

/* ------------------------------------------------------------- directory */

/* Saves step `step` into directory `dir` (created if missing, one level):
 *   1. DIR/checkpoint_<step>.safetensors          (weights)
 *   2. DIR/checkpoint_<step>.state.safetensors    (train state; only when tr)
 *   3. DIR/train_state.safetensors -> 2, then DIR/model.safetensors -> 1, each
 *      replaced atomically by a hard link (a copy where links are refused)
 *   4. when keep_last > 0, deletes the oldest checkpoint_*.safetensors (by
 *      step) and their .state files until keep_last remain; the one just
 *      written always stays and counts as one of them, even when newer
 *      steps exist; keep_last 0 keeps all.
 * tr, when given, must be the trainer of m (asserted: same n_params).
 * Stale temporary files of dead writers are removed first. keys/values/n are
 * the data position, as for tfm_train_state_save (ignored when tr is NULL).
 * With tr NULL an existing train_state.safetensors is left alone: its "step"
 * then differs from model.safetensors', which a resume must check. Errors:
 * those of the saves, and TFM_ERR_IO naming the file that could not be
 * created, linked or deleted. */
tfm_status tfm_checkpoint_dir_save(const tfm_model *m, const tfm_trainer *tr, long step,
                                   int keep_last, const char *dir, const char *const *keys,
                                   const char *const *values, int n);

/* The weights checkpoints of a directory (checkpoint_<digits>.safetensors; not
 * .state files, temporary files or model.safetensors), sorted by step. */
typedef struct tfm_checkpoint_list {
    int n;
    long *steps;               /* [n], ascending */
    char **paths;              /* [n], "DIR/checkpoint_<step>.safetensors" */
} tfm_checkpoint_list;

/* Lists `dir` into *out (empty when the directory has no checkpoint). Errors:
 * TFM_ERR_IO when the directory cannot be read, TFM_ERR_NOMEM. Release with
 * tfm_checkpoint_list_free, also after an error. */
tfm_status tfm_checkpoint_dir_list(const char *dir, tfm_checkpoint_list *out);
void tfm_checkpoint_list_free(tfm_checkpoint_list *l);

/* ------------------------------------------------------------- averaging */

/* Averages n >= 1 weights checkpoints element by element (summed in double in
 * the order given, divided by n, rounded to float once) and writes the result
 * atomically to out_path with the step of the last one and the metadata
 * "averaged_from" (the steps, comma-separated). Every file is checked as by
 * tfm_checkpoint_load and must have the first one's config: otherwise
 * TFM_ERR_INVALID naming the file and the first differing field. out_path may
 * be one of the inputs. */
tfm_status tfm_checkpoint_average(const char *const *paths, int n, const char *out_path);

#endif
