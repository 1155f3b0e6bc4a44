/*
 * safetensors.h: reading and writing safetensors files (model checkpoints and
 * the PyTorch reference tensors the tests load).
 *
 * Format (huggingface/safetensors):
 *   u64 N (little-endian)  | N bytes of UTF-8 JSON header | byte buffer
 * The header maps each tensor name to {"dtype", "shape", "data_offsets":
 * [begin, end]} (offsets relative to the start of the byte buffer) and may hold
 * "__metadata__": {string: string}. Data is little-endian and row-major. The
 * buffer must be covered exactly by the tensors: no overlaps, no holes.
 *
 * Reading maps the file (falling back to reading it into memory) and checks the
 * whole header up front, so that every later accessor works on validated
 * offsets. Writing builds the header, orders the tensors by element size
 * (largest first) then by name, pads the header with spaces to a multiple of 8
 * bytes so that every tensor is aligned to its element size, and replaces the
 * destination atomically (temporary file, fsync, rename).
 *
 * Not supported: the dtypes U16/U32/U64 and the F8 formats (they are rejected
 * with a message naming them), big-endian hosts, partial reads of files larger
 * than the address space.
 */
#ifndef TFM_TRAIN_SAFETENSORS_H
#define TFM_TRAIN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "transformer.h"

typedef enum tfm_dtype {
    TFM_DT_F32,
    TFM_DT_F64,
    TFM_DT_F16,
    TFM_DT_BF16,
    TFM_DT_I64,
    TFM_DT_I32,
    TFM_DT_I16,
    TFM_DT_I8,
    TFM_DT_U8,
    TFM_DT_BOOL,
} tfm_dtype;

#define TFM_ST_MAX_DIMS 8

/* Bytes per element (1, 2, 4 or 8). */
size_t tfm_dtype_size(tfm_dtype dt);
/* The safetensors spelling: "F32", "BF16", "BOOL", ... */
const char *tfm_dtype_name(tfm_dtype dt);

/* One tensor of an open file. begin/end are byte offsets into the data buffer;
 * end - begin == numel * tfm_dtype_size(dtype). A scalar has ndim 0, numel 1. */
typedef struct tfm_st_tensor {
    char *name;
    tfm_dtype dtype;
    int ndim;
    int64_t shape[TFM_ST_MAX_DIMS];
    size_t numel;
    size_t begin, end;
} tfm_st_tensor;

/* An open file. Fields are read-only for callers; tensors[] is in header order. */
typedef struct tfm_safetensors {
    char *path;            /* as given to tfm_st_open, used in messages */
    tfm_st_tensor *tensors;
    int n_tensors;
    char **meta_keys;      /* "__metadata__" entries, in header order */
    char **meta_values;
    int n_meta;
    const unsigned char *data; /* the byte buffer (8-byte aligned) */
    size_t data_size;
    size_t header_size;    /* N */
    /* private */
    void *map_;            /* the mmap of the file, or NULL */
    size_t map_size_;
    void *owned_;          /* malloc'd copy of the file / buffer, or NULL */
    int *by_name_;         /* indices of tensors sorted by name, for lookups */
} tfm_safetensors;

/* Opens and validates `path`. On success *st holds the file until
 * tfm_st_close. On failure *st is left empty (tfm_st_close is still safe) and
 * the status is TFM_ERR_IO (cannot open / read), TFM_ERR_NOMEM, or
 * TFM_ERR_FORMAT with a message naming the file and the tensor or field:
 * truncated file, header size beyond the file or above 100 MB, header not
 * UTF-8 JSON object, unknown dtype, bad shape, data_offsets that do not match
 * the shape or lie outside the buffer, overlapping tensors, holes, duplicate
 * names, non-string metadata. */
tfm_status tfm_st_open(tfm_safetensors *st, const char *path);

/* Releases everything tfm_st_open acquired; *st becomes empty. NULL-safe. */
void tfm_st_close(tfm_safetensors *st);

/* The tensor called `name`, or NULL. O(log n). */
const tfm_st_tensor *tfm_st_find(const tfm_safetensors *st, const char *name);

/* The metadata value for `key`, or NULL. */
const char *tfm_st_meta(const tfm_safetensors *st, const char *key);

/* The raw little-endian bytes of `t` (a tensor of `st`), valid until
 * tfm_st_close. Aligned to the element size whenever t->begin is a multiple of
 * it, which holds for files from this writer and from the safetensors library. */
const void *tfm_st_data(const tfm_safetensors *st, const tfm_st_tensor *t);

/* Copies tensor `name` into dst[numel], converting F32/F64/F16/BF16 to float
 * (F64 values beyond float range become +-inf). Errors (TFM_ERR_FORMAT, the
 * message naming the file and tensor): no such tensor; numel differs from the
 * file's; the dtype is not floating. */
tfm_status tfm_st_read_f32(const tfm_safetensors *st, const char *name, float *dst, size_t numel);
/* The same into double (exact for every floating dtype). */
tfm_status tfm_st_read_f64(const tfm_safetensors *st, const char *name, double *dst, size_t numel);
/* The same into int32 from I32, I64 (each value range-checked), I16, I8, U8 or
 * BOOL. */
tfm_status tfm_st_read_i32(const tfm_safetensors *st, const char *name, int32_t *dst,
                           size_t numel);

/* ------------------------------------------------------------------ writer */

typedef struct tfm_st_writer tfm_st_writer;

/* A new, empty writer. TFM_ERR_NOMEM on allocation failure. */
tfm_status tfm_st_writer_init(tfm_st_writer **w);
/* Frees the writer (not the tensor data it points to). NULL-safe. */
void tfm_st_writer_free(tfm_st_writer *w);

/* Adds a tensor. The writer keeps the `data` pointer (numel * dtype size bytes,
 * little-endian row-major); it must stay valid until tfm_st_writer_save.
 * `shape` has ndim entries (ndim 0..8; a scalar has ndim 0). data may be NULL
 * only when numel is 0. TFM_ERR_INVALID for a duplicate or reserved name
 * ("__metadata__"), a name that is not UTF-8, ndim out of range, a negative
 * dimension or a size that overflows. */
tfm_status tfm_st_writer_add(tfm_st_writer *w, const char *name, tfm_dtype dtype, int ndim,
                             const int64_t *shape, const void *data);

/* Sets a "__metadata__" entry (copied; a repeated key replaces the value).
 * TFM_ERR_INVALID when key or value is not UTF-8. */
tfm_status tfm_st_writer_meta(tfm_st_writer *w, const char *key, const char *value);

/* Writes the file atomically: a temporary file beside `path`
 * (path.tmp.PID.N), every write checked, flushed and fsynced, then renamed over
 * `path` and the directory fsynced. On failure (TFM_ERR_IO naming the path) the
 * temporary file is removed and any existing file at `path` is untouched. The
 * writer can be saved again or freed afterwards. */
tfm_status tfm_st_writer_save(tfm_st_writer *w, const char *path);

#endif
