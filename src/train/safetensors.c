/*
 * safetensors.c: the safetensors reader and writer (see safetensors.h).
 *
 * The reader treats the file as hostile: every number in the header is checked
 * (with overflow checks) before it is used, and the tensors must tile the data
 * buffer exactly, so that no accessor can read outside the file. The writer
 * never leaves a half-written file at the destination.
 */
#define _FILE_OFFSET_BITS 64 /* 64-bit off_t on 32-bit hosts: checkpoints can exceed 2 GB */

#include "train/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/status.h"
#include "core/utf8.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* The reference implementation's limit; real headers are a few MB at most. */
#define ST_MAX_HEADER 100000000ull
/* JSON numbers are doubles in cJSON: integers are exact up to 2^53. */
#define ST_MAX_JSON_INT 9007199254740992.0

static const char *const dtype_names[] = {"F32", "F64", "F16", "BF16", "I64",
                                          "I32", "I16", "I8",  "U8",   "BOOL"};
static const size_t dtype_sizes[] = {4, 8, 2, 2, 8, 4, 2, 1, 1, 1};
#define N_DTYPES ((int)(sizeof dtype_sizes / sizeof dtype_sizes[0]))

size_t tfm_dtype_size(tfm_dtype dt) {
    TFM_ASSERT((int)dt >= 0 && (int)dt < N_DTYPES);
    return dtype_sizes[dt];
}

const char *tfm_dtype_name(tfm_dtype dt) {
    TFM_ASSERT((int)dt >= 0 && (int)dt < N_DTYPES);
    return dtype_names[dt];
}

static int dtype_from_name(const char *s, tfm_dtype *out) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtype_names[i]) == 0) {
            *out = (tfm_dtype)i;
            return 1;
        }
    return 0;
}

/* "[3, 4]" into buf (truncated if it does not fit). */
static const char *format_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t len = 0;
    len += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

/* ------------------------------------------------------------------ reader */

/* A JSON number that is an integer in [0, 2^53]. */
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double v = item->valuedouble;
    if (!(v >= 0.0 && v <= ST_MAX_JSON_INT) || floor(v) != v) return 0;
    *out = (uint64_t)v;
    return 1;
}

static void reset(tfm_safetensors *st) { memset(st, 0, sizeof *st); }

void tfm_st_close(tfm_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->meta_keys);
    free(st->meta_values);
    free(st->by_name_);
    if (st->map_) munmap(st->map_, st->map_size_);
    free(st->owned_);
    free(st->path);
    reset(st);
}

/* Reads the whole file into memory (when mmap is not possible). */
static tfm_status read_all(int fd, const char *path, unsigned char *buf, size_t size) {
    size_t done = 0;
    while (done < size) {
        size_t chunk = size - done > (1u << 30) ? (1u << 30) : size - done;
        ssize_t n = pread(fd, buf + done, chunk, (off_t)done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return tfm_error(TFM_ERR_IO, "%s: read failed: %s", path, strerror(errno));
        if (n == 0)
            return tfm_error(TFM_ERR_IO, "%s: file shrank while reading (%zu of %zu bytes)", path,
                             done, size);
        done += (size_t)n;
    }
    return TFM_OK;
}

/* qsort comparators over arrays of tensor pointers (no global context, so
 * that files can be opened from several threads). */
static int cmp_by_offset(const void *a, const void *b) {
    const tfm_st_tensor *x = *(const tfm_st_tensor *const *)a;
    const tfm_st_tensor *y = *(const tfm_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(const tfm_st_tensor *const *)a)->name,
                  (*(const tfm_st_tensor *const *)b)->name);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Parses one tensor entry `item` into *t; the buffer holds data_size bytes. */
static tfm_status parse_tensor(const char *path, const cJSON *item, size_t data_size,
                               tfm_st_tensor *t) {
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": entry is not a JSON object", path,
                         name);
    const cJSON *jdtype = NULL, *jshape = NULL, *joff = NULL;
    for (const cJSON *f = item->child; f; f = f->next) {
        const cJSON **slot = strcmp(f->string, "dtype") == 0          ? &jdtype
                             : strcmp(f->string, "shape") == 0        ? &jshape
                             : strcmp(f->string, "data_offsets") == 0 ? &joff
                                                                      : NULL;
        if (!slot)
            return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": unknown field \"%s\"", path, name,
                             f->string);
        if (*slot)
            return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": field \"%s\" given twice", path,
                             name, f->string);
        *slot = f;
    }
    if (!jdtype || !jshape || !joff)
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": missing field \"%s\"", path, name,
                         !jdtype ? "dtype" : !jshape ? "shape" : "data_offsets");

    if (!cJSON_IsString(jdtype))
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": dtype is not a string", path, name);
    if (!dtype_from_name(jdtype->valuestring, &t->dtype))
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: tensor \"%s\": unsupported dtype \"%s\" (supported: F32 F64 F16 "
                         "BF16 I64 I32 I16 I8 U8 BOOL)",
                         path, name, jdtype->valuestring);

    if (!cJSON_IsArray(jshape))
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": shape is not an array", path, name);
    int ndim = cJSON_GetArraySize(jshape);
    if (ndim > TFM_ST_MAX_DIMS)
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": shape has %d dimensions (at most %d)",
                         path, name, ndim, TFM_ST_MAX_DIMS);
    t->ndim = ndim;
    size_t numel = 1, elem = dtype_sizes[t->dtype];
    int d = 0, overflow = 0;
    for (const cJSON *e = jshape->child; e; e = e->next, d++) {
        uint64_t v;
        if (!json_uint(e, &v))
            return tfm_error(TFM_ERR_FORMAT,
                             "%s: tensor \"%s\": shape[%d] is not a non-negative integer", path,
                             name, d);
        t->shape[d] = (int64_t)v;
        if (v != 0 && numel > SIZE_MAX / elem / v) overflow = 1;
        else numel *= (size_t)v;
    }
    char sbuf[256];
    format_shape(sbuf, sizeof sbuf, ndim, t->shape);
    /* A zero dimension makes the tensor empty even if others overflow. */
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] == 0) overflow = 0, numel = 0;
    if (overflow)
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": shape %s is too large (overflow)",
                         path, name, sbuf);
    t->numel = numel;
    size_t nbytes = numel * elem;

    uint64_t b, e;
    if (!cJSON_IsArray(joff) || cJSON_GetArraySize(joff) != 2 || !json_uint(joff->child, &b) ||
        !json_uint(joff->child->next, &e))
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: tensor \"%s\": data_offsets is not an array of two non-negative "
                         "integers",
                         path, name);
    if (e < b)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: tensor \"%s\": data_offsets [%llu, %llu] end before they begin",
                         path, name, (unsigned long long)b, (unsigned long long)e);
    if (e - b != nbytes)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: tensor \"%s\": data_offsets [%llu, %llu] do not match %s shape %s "
                         "(%zu bytes)",
                         path, name, (unsigned long long)b, (unsigned long long)e,
                         dtype_names[t->dtype], sbuf, nbytes);
    if (e > data_size)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: tensor \"%s\": data_offsets [%llu, %llu] lie outside the data "
                         "buffer (%zu bytes: the file is truncated or the offsets are wrong)",
                         path, name, (unsigned long long)b, (unsigned long long)e, data_size);
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return TFM_OK;
}

/* Parses and checks the header text hdr[0..n) (NUL-terminated at n). */
static tfm_status parse_header(tfm_safetensors *st, const char *hdr, size_t n) {
    const char *path = st->path;
    size_t bad;
    if (!tfm_utf8_valid(hdr, n, &bad))
        return tfm_error(TFM_ERR_FORMAT, "%s: header is not valid UTF-8 (at header byte %zu)",
                         path, bad);
    if (n == 0 || hdr[0] != '{')
        return tfm_error(TFM_ERR_FORMAT, "%s: header does not start with '{' (not a JSON object)",
                         path);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, n, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr && end <= hdr + n ? (size_t)(end - hdr) : 0;
        return tfm_error(TFM_ERR_FORMAT, "%s: header is not valid JSON (near header byte %zu)",
                         path, at);
    }
    tfm_status s = TFM_OK;
    /* The spec pads the header with spaces; accept any JSON whitespace. */
    for (const char *p = end; p < hdr + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            s = tfm_error(TFM_ERR_FORMAT,
                          "%s: header has trailing bytes after the JSON object (at header byte "
                          "%zu)",
                          path, (size_t)(p - hdr));
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        s = tfm_error(TFM_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }

    int n_items = 0, n_meta_obj = 0;
    const cJSON *meta = NULL;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (++n_meta_obj > 1) {
                s = tfm_error(TFM_ERR_FORMAT, "%s: \"__metadata__\" given twice", path);
                goto done;
            }
            meta = it;
        } else {
            n_items++;
        }
    }

    if (meta) {
        if (!cJSON_IsObject(meta)) {
            s = tfm_error(TFM_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", path);
            goto done;
        }
        int nm = cJSON_GetArraySize(meta);
        st->meta_keys = calloc((size_t)nm + 1, sizeof(char *));
        st->meta_values = calloc((size_t)nm + 1, sizeof(char *));
        if (!st->meta_keys || !st->meta_values) {
            s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory for metadata", path);
            goto done;
        }
        for (const cJSON *m = meta->child; m; m = m->next) {
            if (!cJSON_IsString(m)) {
                s = tfm_error(TFM_ERR_FORMAT, "%s: __metadata__ \"%s\": value is not a string",
                              path, m->string);
                goto done;
            }
            char *k = strdup(m->string), *v = strdup(m->valuestring);
            if (!k || !v) {
                free(k);
                free(v);
                s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory for metadata", path);
                goto done;
            }
            st->meta_keys[st->n_meta] = k;
            st->meta_values[st->n_meta] = v;
            st->n_meta++;
        }
        /* Repeated keys, found by sorting (a header may hold millions of keys). */
        char **keys = malloc(((size_t)st->n_meta + 1) * sizeof *keys);
        if (!keys) {
            s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory for metadata", path);
            goto done;
        }
        memcpy(keys, st->meta_keys, (size_t)st->n_meta * sizeof *keys);
        qsort(keys, (size_t)st->n_meta, sizeof *keys, cmp_str);
        for (int i = 1; i < st->n_meta && s == TFM_OK; i++)
            if (strcmp(keys[i], keys[i - 1]) == 0)
                s = tfm_error(TFM_ERR_FORMAT, "%s: __metadata__ \"%s\": key given twice", path,
                              keys[i]);
        free(keys);
        if (s != TFM_OK) goto done;
    }

    st->tensors = calloc((size_t)n_items + 1, sizeof(tfm_st_tensor));
    st->by_name_ = calloc((size_t)n_items + 1, sizeof(int));
    if (!st->tensors || !st->by_name_) {
        s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory for %d tensors", path, n_items);
        goto done;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (it == meta) continue;
        tfm_st_tensor *t = &st->tensors[st->n_tensors];
        s = parse_tensor(path, it, st->data_size, t);
        if (s != TFM_OK) goto done;
        t->name = strdup(it->string);
        if (!t->name) {
            s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        st->n_tensors++;
    }

    /* Duplicate names (JSON allows repeated keys; cJSON keeps them all). */
    const tfm_st_tensor **order = malloc(((size_t)st->n_tensors + 1) * sizeof *order);
    if (!order) {
        s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < st->n_tensors; i++) order[i] = &st->tensors[i];
    qsort(order, (size_t)st->n_tensors, sizeof *order, cmp_by_name);
    for (int i = 0; i < st->n_tensors; i++) st->by_name_[i] = (int)(order[i] - st->tensors);
    for (int i = 1; i < st->n_tensors; i++)
        if (strcmp(order[i]->name, order[i - 1]->name) == 0) {
            s = tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\" appears twice in the header", path,
                          order[i]->name);
            free(order);
            goto done;
        }

    /* The tensors must tile [0, data_size) exactly. */
    qsort(order, (size_t)st->n_tensors, sizeof *order, cmp_by_offset);
    size_t pos = 0;
    const tfm_st_tensor *prev = NULL;
    for (int i = 0; i < st->n_tensors && s == TFM_OK; i++) {
        const tfm_st_tensor *t = order[i];
        if (t->begin > pos)
            s = tfm_error(TFM_ERR_FORMAT,
                          "%s: data bytes [%zu, %zu) belong to no tensor (hole before tensor "
                          "\"%s\")",
                          path, pos, t->begin, t->name);
        else if (t->begin < pos)
            s = tfm_error(TFM_ERR_FORMAT,
                          "%s: tensor \"%s\" (data_offsets [%zu, %zu]) overlaps tensor \"%s\" "
                          "(data_offsets [%zu, %zu])",
                          path, t->name, t->begin, t->end, prev->name, prev->begin, prev->end);
        if (t->end > pos) {
            pos = t->end;
            prev = t;
        } else if (!prev) {
            prev = t;
        }
    }
    free(order);
    if (s == TFM_OK && pos != st->data_size)
        s = tfm_error(TFM_ERR_FORMAT,
                      "%s: data bytes [%zu, %zu) at the end of the file belong to no tensor", path,
                      pos, st->data_size);
done:
    cJSON_Delete(root);
    return s;
}

tfm_status tfm_st_open(tfm_safetensors *st, const char *path) {
    TFM_ASSERT(st && path);
    reset(st);
    tfm_status s = TFM_OK;
    char *hdr = NULL;
    st->path = strdup(path);
    if (!st->path) return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);

    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        s = tfm_error(TFM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        s = tfm_error(TFM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        s = tfm_error(TFM_ERR_IO, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        s = tfm_error(TFM_ERR_IO, "%s: file too large for this address space", path);
        close(fd);
        goto fail;
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        s = tfm_error(TFM_ERR_FORMAT,
                      "%s: truncated: the file has %zu bytes, fewer than the 8-byte header size",
                      path, size);
        close(fd);
        goto fail;
    }
    const unsigned char *bytes;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map != MAP_FAILED) {
        st->map_ = map;
        st->map_size_ = size;
        bytes = map;
    } else {
        st->owned_ = malloc(size);
        if (!st->owned_) {
            s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, size);
            close(fd);
            goto fail;
        }
        s = read_all(fd, path, st->owned_, size);
        if (s != TFM_OK) {
            close(fd);
            goto fail;
        }
        bytes = st->owned_;
    }
    close(fd);

    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | bytes[i];
    if (n > size - 8) {
        s = tfm_error(TFM_ERR_FORMAT,
                      "%s: truncated: header size is %llu bytes but the file has only %zu after "
                      "the size field",
                      path, (unsigned long long)n, size - 8);
        goto fail;
    }
    if (n > ST_MAX_HEADER) {
        s = tfm_error(TFM_ERR_FORMAT, "%s: header size %llu exceeds the limit of %llu bytes", path,
                      (unsigned long long)n, ST_MAX_HEADER);
        goto fail;
    }
    st->header_size = (size_t)n;
    st->data_size = size - 8 - (size_t)n;

    /* A NUL-terminated copy: cJSON must never read past the header. */
    hdr = malloc((size_t)n + 1);
    if (!hdr) {
        s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory for a %llu-byte header", path,
                      (unsigned long long)n);
        goto fail;
    }
    memcpy(hdr, bytes + 8, (size_t)n);
    hdr[n] = '\0';
    s = parse_header(st, hdr, (size_t)n);
    free(hdr);
    hdr = NULL;
    if (s != TFM_OK) goto fail;

    const unsigned char *data = bytes + 8 + n;
    if (((8 + n) % 8) != 0 && st->data_size > 0) {
        /* Unpadded header (some older writers): copy the buffer so that tensors
         * are aligned to their element size, then drop the file image. */
        void *copy = malloc(st->data_size);
        if (!copy) {
            s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory copying %zu bytes of unaligned data",
                          path, st->data_size);
            goto fail;
        }
        memcpy(copy, data, st->data_size);
        if (st->map_) munmap(st->map_, st->map_size_);
        free(st->owned_);
        st->map_ = NULL;
        st->map_size_ = 0;
        st->owned_ = copy;
        data = copy;
    }
    st->data = data;
    return TFM_OK;

fail:
    free(hdr);
    tfm_st_close(st);
    return s;
}

const tfm_st_tensor *tfm_st_find(const tfm_safetensors *st, const char *name) {
    TFM_ASSERT(st && name);
    int lo = 0, hi = st->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const tfm_st_tensor *t = &st->tensors[st->by_name_[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *tfm_st_meta(const tfm_safetensors *st, const char *key) {
    TFM_ASSERT(st && key);
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    return NULL;
}

const void *tfm_st_data(const tfm_safetensors *st, const tfm_st_tensor *t) {
    TFM_ASSERT(st && t && t >= st->tensors && t < st->tensors + st->n_tensors);
    return st->data + t->begin;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        float v = ldexpf((float)mant, -24); /* zero or subnormal: mant * 2^-24, exact */
        return sign ? -v : v;
    }
    if (exp == 31) bits = sign | 0x7f800000u | (mant << 13); /* inf / NaN (payload kept) */
    else bits = sign | ((exp + 112) << 23) | (mant << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Finds `name` and checks that it has `numel` elements. */
static tfm_status lookup(const tfm_safetensors *st, const char *name, size_t numel,
                         const tfm_st_tensor **out) {
    const tfm_st_tensor *t = tfm_st_find(st, name);
    if (!t) return tfm_error(TFM_ERR_FORMAT, "%s: no tensor \"%s\"", st->path, name);
    if (t->numel != numel) {
        char sbuf[256];
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: tensor \"%s\": expects %zu elements, file has %zu with shape %s",
                         st->path, name, numel, t->numel,
                         format_shape(sbuf, sizeof sbuf, t->ndim, t->shape));
    }
    *out = t;
    return TFM_OK;
}

static tfm_status not_dtype(const tfm_safetensors *st, const tfm_st_tensor *t, const char *want) {
    return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\" is %s, expected %s", st->path, t->name,
                     dtype_names[t->dtype], want);
}

/* Element i of a floating tensor as double (memcpy: the data may be unaligned). */
static double float_at(const unsigned char *p, tfm_dtype dt, size_t i) {
    switch (dt) {
    case TFM_DT_F32: { float v; memcpy(&v, p + 4 * i, 4); return v; }
    case TFM_DT_F64: { double v; memcpy(&v, p + 8 * i, 8); return v; }
    case TFM_DT_F16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return half_to_float(v); }
    case TFM_DT_BF16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return bf16_to_float(v); }
    default: TFM_ASSERT(0 && "not a floating dtype");
    }
    return 0;
}

static int is_float(tfm_dtype dt) {
    return dt == TFM_DT_F32 || dt == TFM_DT_F64 || dt == TFM_DT_F16 || dt == TFM_DT_BF16;
}

tfm_status tfm_st_read_f32(const tfm_safetensors *st, const char *name, float *dst, size_t numel) {
    TFM_ASSERT(st && name && (dst || numel == 0));
    const tfm_st_tensor *t;
    TFM_TRY(lookup(st, name, numel, &t));
    if (!is_float(t->dtype)) return not_dtype(st, t, "a floating dtype (F32, F64, F16, BF16)");
    const unsigned char *p = st->data + t->begin;
    if (t->dtype == TFM_DT_F32) {
        if (numel) memcpy(dst, p, numel * 4);
        return TFM_OK;
    }
    for (size_t i = 0; i < numel; i++) dst[i] = (float)float_at(p, t->dtype, i);
    return TFM_OK;
}

tfm_status tfm_st_read_f64(const tfm_safetensors *st, const char *name, double *dst,
                           size_t numel) {
    TFM_ASSERT(st && name && (dst || numel == 0));
    const tfm_st_tensor *t;
    TFM_TRY(lookup(st, name, numel, &t));
    if (!is_float(t->dtype)) return not_dtype(st, t, "a floating dtype (F32, F64, F16, BF16)");
    const unsigned char *p = st->data + t->begin;
    for (size_t i = 0; i < numel; i++) dst[i] = float_at(p, t->dtype, i);
    return TFM_OK;
}

tfm_status tfm_st_read_i32(const tfm_safetensors *st, const char *name, int32_t *dst,
                           size_t numel) {
    TFM_ASSERT(st && name && (dst || numel == 0));
    const tfm_st_tensor *t;
    TFM_TRY(lookup(st, name, numel, &t));
    const unsigned char *p = st->data + t->begin;
    switch (t->dtype) {
    case TFM_DT_I32:
        if (numel) memcpy(dst, p, numel * 4);
        return TFM_OK;
    case TFM_DT_I64:
        for (size_t i = 0; i < numel; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            if (v < INT32_MIN || v > INT32_MAX)
                return tfm_error(TFM_ERR_FORMAT,
                                 "%s: tensor \"%s\": element %zu is %lld, outside the int32 range",
                                 st->path, name, i, (long long)v);
            dst[i] = (int32_t)v;
        }
        return TFM_OK;
    case TFM_DT_I16:
        for (size_t i = 0; i < numel; i++) {
            int16_t v;
            memcpy(&v, p + 2 * i, 2);
            dst[i] = v;
        }
        return TFM_OK;
    case TFM_DT_I8:
        for (size_t i = 0; i < numel; i++) dst[i] = (int8_t)p[i];
        return TFM_OK;
    case TFM_DT_U8:
    case TFM_DT_BOOL:
        for (size_t i = 0; i < numel; i++) dst[i] = p[i];
        return TFM_OK;
    default: return not_dtype(st, t, "an integer dtype (I32, I64, I16, I8, U8, BOOL)");
    }
}

/* ------------------------------------------------------------------ writer */

typedef struct st_entry {
    char *name;
    tfm_dtype dtype;
    int ndim;
    int64_t shape[TFM_ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
} st_entry;

struct tfm_st_writer {
    st_entry *entries;
    int n, cap;
    int *slots;      /* open-addressing hash of entry indices by name (-1 empty) */
    size_t n_slots;  /* a power of two, at least 2 * n */
    char **meta_keys, **meta_values;
    int n_meta, cap_meta;
};

tfm_status tfm_st_writer_init(tfm_st_writer **w) {
    TFM_ASSERT(w);
    *w = calloc(1, sizeof **w);
    if (!*w) return tfm_error(TFM_ERR_NOMEM, "safetensors writer: out of memory");
    return TFM_OK;
}

void tfm_st_writer_free(tfm_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->entries[i].name);
    free(w->entries);
    free(w->slots);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w);
}

static size_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

/* The slot holding `name`, or the empty slot where it would go. */
static size_t find_slot(const tfm_st_writer *w, const char *name) {
    size_t mask = w->n_slots - 1, i = hash_name(name) & mask;
    while (w->slots[i] >= 0 && strcmp(w->entries[w->slots[i]].name, name) != 0) i = (i + 1) & mask;
    return i;
}

/* Makes room for one more entry in the hash (load <= 1/2). */
static int grow_slots(tfm_st_writer *w) {
    if (w->n_slots && (size_t)(w->n + 1) * 2 <= w->n_slots) return 1;
    size_t n_slots = w->n_slots ? 2 * w->n_slots : 64;
    int *slots = malloc(n_slots * sizeof *slots);
    if (!slots) return 0;
    for (size_t i = 0; i < n_slots; i++) slots[i] = -1;
    free(w->slots);
    w->slots = slots;
    w->n_slots = n_slots;
    for (int k = 0; k < w->n; k++) w->slots[find_slot(w, w->entries[k].name)] = k;
    return 1;
}

tfm_status tfm_st_writer_add(tfm_st_writer *w, const char *name, tfm_dtype dtype, int ndim,
                             const int64_t *shape, const void *data) {
    TFM_ASSERT(w && name && (int)dtype >= 0 && (int)dtype < N_DTYPES);
    if (!tfm_utf8_valid(name, strlen(name), NULL))
        return tfm_error(TFM_ERR_INVALID, "safetensors writer: tensor name is not valid UTF-8");
    if (strcmp(name, "__metadata__") == 0)
        return tfm_error(TFM_ERR_INVALID, "safetensors writer: \"__metadata__\" is reserved");
    if (ndim < 0 || ndim > TFM_ST_MAX_DIMS)
        return tfm_error(TFM_ERR_INVALID, "safetensors writer: tensor \"%s\": ndim %d not in 0..%d",
                         name, ndim, TFM_ST_MAX_DIMS);
    TFM_ASSERT(shape || ndim == 0);
    size_t elem = dtype_sizes[dtype], nbytes = elem;
    int zero = 0, overflow = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return tfm_error(TFM_ERR_INVALID,
                             "safetensors writer: tensor \"%s\": shape[%d] = %lld is negative",
                             name, i, (long long)shape[i]);
        if (shape[i] == 0) zero = 1;
        else if ((uint64_t)shape[i] > (uint64_t)(ST_MAX_JSON_INT) ||
                 nbytes > SIZE_MAX / (uint64_t)shape[i])
            overflow = 1;
        else nbytes *= (size_t)shape[i];
    }
    if (zero) nbytes = 0;
    else if (overflow)
        return tfm_error(TFM_ERR_INVALID, "safetensors writer: tensor \"%s\": size overflows",
                         name);
    if (nbytes > 0) TFM_ASSERT(data);
    if (w->n == INT_MAX - 1 || !grow_slots(w))
        return tfm_error(TFM_ERR_NOMEM, "safetensors writer: out of memory");
    size_t slot = find_slot(w, name);
    if (w->slots[slot] >= 0)
        return tfm_error(TFM_ERR_INVALID, "safetensors writer: tensor \"%s\" added twice",
                         name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        st_entry *e = realloc(w->entries, (size_t)cap * sizeof *e);
        if (!e) return tfm_error(TFM_ERR_NOMEM, "safetensors writer: out of memory");
        w->entries = e;
        w->cap = cap;
    }
    st_entry *e = &w->entries[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return tfm_error(TFM_ERR_NOMEM, "safetensors writer: out of memory");
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = nbytes;
    e->data = data;
    w->slots[slot] = w->n;
    w->n++;
    return TFM_OK;
}

tfm_status tfm_st_writer_meta(tfm_st_writer *w, const char *key, const char *value) {
    TFM_ASSERT(w && key && value);
    if (!tfm_utf8_valid(key, strlen(key), NULL) || !tfm_utf8_valid(value, strlen(value), NULL))
        return tfm_error(TFM_ERR_INVALID, "safetensors writer: metadata is not valid UTF-8");
    char *v = strdup(value);
    if (!v) return tfm_error(TFM_ERR_NOMEM, "safetensors writer: out of memory");
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_values[i]);
            w->meta_values[i] = v;
            return TFM_OK;
        }
    if (w->n_meta == w->cap_meta) {
        int cap = w->cap_meta ? 2 * w->cap_meta : 8;
        char **k = realloc(w->meta_keys, (size_t)cap * sizeof *k);
        if (k) w->meta_keys = k;
        char **vv = k ? realloc(w->meta_values, (size_t)cap * sizeof *vv) : NULL;
        if (vv) w->meta_values = vv;
        if (!k || !vv) {
            free(v);
            return tfm_error(TFM_ERR_NOMEM, "safetensors writer: out of memory");
        }
        w->cap_meta = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        return tfm_error(TFM_ERR_NOMEM, "safetensors writer: out of memory");
    }
    w->meta_keys[w->n_meta] = k;
    w->meta_values[w->n_meta] = v;
    w->n_meta++;
    return TFM_OK;
}

/* A growing string for the header. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_fmt(sbuf *b, const char *fmt, unsigned long long v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, fmt, v);
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string literal; s is valid UTF-8, which JSON carries unescaped. */
static void sb_json(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"') sb_put(b, "\\\"", 2);
        else if (*p == '\\') sb_put(b, "\\\\", 2);
        else if (*p < 0x20) sb_fmt(b, "\\u%04llx", *p);
        else sb_put(b, (const char *)p, 1);
    }
    sb_put(b, "\"", 1);
}

/* Largest element first, then by name: with the header padded to 8 bytes every
 * tensor starts at a multiple of its element size (the safetensors library's
 * order). Sorts an array of entry pointers. */
static int cmp_entries(const void *a, const void *b) {
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    size_t sx = dtype_sizes[x->dtype], sy = dtype_sizes[y->dtype];
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int write_all(int fd, const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : n;
        ssize_t k = write(fd, p, chunk);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = EIO;
            return 0;
        }
        p += k;
        n -= (size_t)k;
    }
    return 1;
}

static void fsync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd); /* best effort: some file systems refuse fsync on directories */
        close(fd);
    }
    free(dir);
}

tfm_status tfm_st_writer_save(tfm_st_writer *w, const char *path) {
    TFM_ASSERT(w && path);
    static atomic_uint counter;
    tfm_status s = TFM_OK;
    const st_entry **order = malloc(((size_t)w->n + 1) * sizeof *order);
    sbuf h = {0};
    char *tmp = NULL;
    int fd = -1;
    if (!order) return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < w->n; i++) order[i] = &w->entries[i];
    qsort(order, (size_t)w->n, sizeof *order, cmp_entries);

    sb_str(&h, "{");
    if (w->n_meta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) sb_str(&h, ",");
            sb_json(&h, w->meta_keys[i]);
            sb_str(&h, ":");
            sb_json(&h, w->meta_values[i]);
        }
        sb_str(&h, "}");
    }
    size_t offset = 0;
    for (int i = 0; i < w->n; i++) {
        const st_entry *e = order[i];
        if (i || w->n_meta) sb_str(&h, ",");
        sb_json(&h, e->name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, dtype_names[e->dtype]);
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) sb_fmt(&h, d ? ",%llu" : "%llu", (unsigned long long)e->shape[d]);
        sb_fmt(&h, "],\"data_offsets\":[%llu,", offset);
        if (e->nbytes > SIZE_MAX - offset || offset + e->nbytes > (size_t)ST_MAX_JSON_INT) {
            s = tfm_error(TFM_ERR_INVALID, "%s: total tensor size overflows", path);
            goto out;
        }
        offset += e->nbytes;
        sb_fmt(&h, "%llu]}", offset);
    }
    sb_str(&h, "}");
    while ((8 + h.len) % 8 != 0) sb_str(&h, " ");
    if (h.oom) {
        s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory building the header", path);
        goto out;
    }

    size_t tlen = strlen(path) + 64;
    tmp = malloc(tlen);
    if (!tmp) {
        s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&counter, 1));
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd < 0) {
        s = tfm_error(TFM_ERR_IO, "%s: cannot create temporary file %s: %s", path, tmp,
                      strerror(errno));
        free(tmp);
        tmp = NULL; /* nothing to remove */
        goto out;
    }
    unsigned char size_le[8];
    uint64_t n = h.len;
    for (int i = 0; i < 8; i++) size_le[i] = (unsigned char)(n >> (8 * i));
    int ok = write_all(fd, size_le, 8) && write_all(fd, h.p, h.len);
    for (int i = 0; ok && i < w->n; i++) {
        const st_entry *e = order[i];
        if (e->nbytes) ok = write_all(fd, e->data, e->nbytes);
    }
    if (!ok) {
        s = tfm_error(TFM_ERR_IO, "%s: write to %s failed: %s", path, tmp, strerror(errno));
        goto out;
    }
    if (fsync(fd) != 0) {
        s = tfm_error(TFM_ERR_IO, "%s: fsync of %s failed: %s", path, tmp, strerror(errno));
        goto out;
    }
    int rc = close(fd);
    fd = -1;
    if (rc != 0) {
        s = tfm_error(TFM_ERR_IO, "%s: close of %s failed: %s", path, tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        s = tfm_error(TFM_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp,
                      strerror(errno));
        goto out;
    }
    free(tmp);
    tmp = NULL;
    fsync_parent_dir(path);

out:
    if (fd >= 0) close(fd);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    free(h.p);
    free(order);
    return s;
}
