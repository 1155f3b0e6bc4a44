/*
 * atomic_file.h: writing a file so that a crash or kill at any moment leaves
 * either the old file or the complete new one at its path, never a part.
 *
 *   tfm_atomic_file af;
 *   TFM_TRY(tfm_atomic_open(&af, path));       writes go to path.tmp.PID
 *   fprintf(af.f, ...);
 *   return tfm_atomic_commit(&af);             flush, fsync, close, rename, fsync dir
 *
 * On any error commit removes the temporary file; tfm_atomic_abort does the
 * same for a writer that gives up. (The safetensors writer does the same with
 * plain write() calls: src/train/safetensors.c.)
 */
#ifndef TFM_CORE_ATOMIC_FILE_H
#define TFM_CORE_ATOMIC_FILE_H

#include <stdio.h>

#include "transformer.h"

typedef struct tfm_atomic_file {
    FILE *f;
    char *path, *tmp;
} tfm_atomic_file;

/* TFM_ERR_IO naming the path when the temporary file cannot be created. */
tfm_status tfm_atomic_open(tfm_atomic_file *af, const char *path);
/* TFM_ERR_IO naming the path when any write, the flush, the sync or the
 * rename failed (the old file, if any, is then untouched). Frees af. */
tfm_status tfm_atomic_commit(tfm_atomic_file *af);
/* Discards the temporary file. Frees af. */
void tfm_atomic_abort(tfm_atomic_file *af);

#endif
