/*
 * checkpoint.c: weights and train-state files, checkpoint directories and
 * averaging (see checkpoint.h and docs/checkpoints.md).
 *
 * Every file is opened with the safetensors reader, which validates the whole
 * container; this file then checks what a checkpoint must hold (metadata,
 * every tensor with its exact shape, no extras, finite values) BEFORE it copies
 * a single value, so that a failed load never leaves a half-loaded model.
 * Every write goes through tfm_st_writer_save (temporary file, fsync, rename).
 */
#define _FILE_OFFSET_BITS 64

#include "train/checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "core/status.h"
#include "train/safetensors.h"

/* Floats copied per chunk when checking or converting tensor data, so that
 * unaligned tensors (from other writers) are never read through a float *. */
#define CHUNK 4096

/* ---------------------------------------------------------------- helpers */

/* A malloc'd printf. NULL when out of memory. */
static char *dup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *dup_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Re-raises the thread's last error with `path: what: ` in front. */
static tfm_status wrap_error(tfm_status s, const char *path, const char *what) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tfm_last_error());
    return tfm_error(s, "%s: %s: %s", path, what, msg);
}

/* The shortest decimal that reads back as x (JSON has no NaN/Inf: null). */
static void fmt_float(char *out, size_t cap, float x) {
    if (!isfinite(x)) {
        snprintf(out, cap, "null");
        return;
    }
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(out, cap, "%.*g", digits, (double)x);
        if (strtof(out, NULL) == x) return;
    }
}

/* "[3, 4]" for a layout tensor / a file tensor. */
static const char *layout_shape(char *buf, size_t cap, const tfm_tensor_info *t) {
    if (t->ndim == 2) snprintf(buf, cap, "[%d, %d]", t->shape[0], t->shape[1]);
    else snprintf(buf, cap, "[%d]", t->shape[0]);
    return buf;
}

static const char *file_shape(char *buf, size_t cap, const tfm_st_tensor *t) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* A strict non-negative decimal (no sign, no spaces, fits a long). */
static int parse_long(const char *s, long *out) {
    if (!s || !*s) return 0;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return 0;
        int d = *p - '0';
        if (v > (LONG_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static int parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s) return 0;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return 0;
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* The canonical (stored) tensor that tensor i of the layout aliases. Tied
 * tensors may point at a tensor that is itself tied (generator -> tgt_embed ->
 * src_embed with sharing "all"), so follow the chain. */
static int canonical(const tfm_layout *L, int i) {
    int guard = L->n_tensors;
    while (L->tensors[i].tied_to >= 0 && guard-- > 0) i = L->tensors[i].tied_to;
    TFM_ASSERT(L->tensors[i].tied_to < 0);
    return i;
}

/* "tgt_embed.weight=src_embed.weight,generator.weight=src_embed.weight", or
 * "" without tying. malloc'd; NULL when out of memory. */
static char *tied_description(const tfm_layout *L) {
    size_t cap = 1;
    for (int i = 0; i < L->n_tensors; i++)
        if (L->tensors[i].tied_to >= 0) cap += 2 * sizeof L->tensors[i].name + 2;
    char *s = malloc(cap);
    if (!s) return NULL;
    size_t o = 0;
    s[0] = '\0';
    for (int i = 0; i < L->n_tensors; i++) {
        if (L->tensors[i].tied_to < 0) continue;
        o += (size_t)snprintf(s + o, cap - o, "%s%s=%s", o ? "," : "", L->tensors[i].name,
                              L->tensors[canonical(L, i)].name);
    }
    return s;
}

/* ------------------------------------------------------- config comparison */

int tfm_checkpoint_config_diff(const tfm_config *a, const tfm_config *b, char *buf, size_t cap) {
    TFM_ASSERT(a && b);
    tfm_config x = *a, y = *b;
    x.d_k = tfm_config_dk(a);
    x.d_v = tfm_config_dv(a);
    y.d_k = tfm_config_dk(b);
    y.d_v = tfm_config_dv(b);
    char *ja = tfm_config_to_json(&x), *jb = tfm_config_to_json(&y);
    cJSON *ra = ja ? cJSON_Parse(ja) : NULL, *rb = jb ? cJSON_Parse(jb) : NULL;
    int differ = 0;
    if (!ra || !rb) {
        /* Out of memory: fall back to comparing the JSON text. */
        differ = !ja || !jb || strcmp(ja, jb) != 0;
        if (differ && buf && cap) snprintf(buf, cap, "(out of memory comparing configs)");
    } else {
        for (const cJSON *ia = ra->child; ia && !differ; ia = ia->next) {
            const cJSON *ib = cJSON_GetObjectItemCaseSensitive(rb, ia->string);
            if (ib && cJSON_Compare(ia, ib, 1)) continue;
            differ = 1;
            if (buf && cap) {
                char *va = cJSON_PrintUnformatted(ia), *vb = ib ? cJSON_PrintUnformatted(ib) : NULL;
                snprintf(buf, cap, "%s: %s vs %s", ia->string, va ? va : "?", vb ? vb : "(absent)");
                free(va);
                free(vb);
            }
        }
    }
    cJSON_Delete(ra);
    cJSON_Delete(rb);
    free(ja);
    free(jb);
    if (!differ && buf && cap) buf[0] = '\0';
    return differ;
}

/* ---------------------------------------------------- reading and checking */

/* An open weights file whose metadata has been checked. */
typedef struct ckpt_file {
    tfm_safetensors st;
    tfm_config cfg;
    long step;
} ckpt_file;

static void ckpt_close(ckpt_file *f) { tfm_st_close(&f->st); }

/* Checks "format" and "format_version" against `format`. */
static tfm_status check_format(const tfm_safetensors *st, const char *path, const char *format) {
    const char *fmt = tfm_st_meta(st, "format");
    if (!fmt)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: not a %s file: metadata \"format\" is missing (expected \"%s\")",
                         path, format, format);
    if (strcmp(fmt, format) != 0)
        return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"format\" is \"%.64s\", expected \"%s\"",
                         path, fmt, format);
    const char *ver = tfm_st_meta(st, "format_version");
    if (!ver)
        return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"format_version\" is missing", path);
    if (strcmp(ver, TFM_CHECKPOINT_VERSION) != 0)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: metadata \"format_version\" is \"%.32s\"; this build reads version %s",
                         path, ver, TFM_CHECKPOINT_VERSION);
    return TFM_OK;
}

/* Parses and validates the "config" metadata into *cfg. */
static tfm_status read_config_meta(const tfm_safetensors *st, const char *path, tfm_config *cfg) {
    const char *json = tfm_st_meta(st, "config");
    if (!json) return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"config\" is missing", path);
    char origin[600];
    snprintf(origin, sizeof origin, "%s: metadata \"config\"", path);
    tfm_config_default(cfg);
    if (tfm_config_from_json(cfg, json, origin) != TFM_OK) {
        char msg[700];
        snprintf(msg, sizeof msg, "%s", tfm_last_error());
        return tfm_error(TFM_ERR_FORMAT, "%s", msg);
    }
    if (tfm_config_validate(cfg) != TFM_OK)
        return wrap_error(TFM_ERR_FORMAT, path, "metadata \"config\"");
    return TFM_OK;
}

static tfm_status read_step_meta(const tfm_safetensors *st, const char *path, long *step) {
    const char *s = tfm_st_meta(st, "step");
    if (!s) return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"step\" is missing", path);
    if (!parse_long(s, step))
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: metadata \"step\": \"%.32s\" is not a non-negative integer", path, s);
    return TFM_OK;
}

/* Opens `path` and checks its metadata (format, version, config, step). */
static tfm_status ckpt_open(ckpt_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    tfm_status s = tfm_st_open(&f->st, path);
    if (s == TFM_OK) s = check_format(&f->st, path, TFM_CHECKPOINT_FORMAT);
    if (s == TFM_OK) s = read_config_meta(&f->st, path, &f->cfg);
    if (s == TFM_OK) s = read_step_meta(&f->st, path, &f->step);
    if (s != TFM_OK) ckpt_close(f);
    return s;
}

/* Checks that every element of F32 tensor t is finite. */
static tfm_status check_finite(const tfm_safetensors *st, const tfm_st_tensor *t, const char *path) {
    const unsigned char *p = tfm_st_data(st, t);
    float buf[CHUNK];
    for (size_t i = 0; i < t->numel; i += CHUNK) {
        size_t n = t->numel - i < CHUNK ? t->numel - i : CHUNK;
        memcpy(buf, p + i * sizeof(float), n * sizeof(float));
        for (size_t j = 0; j < n; j++)
            if (!isfinite(buf[j]))
                return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": element %zu is %s", path,
                                 t->name, i + j, isnan(buf[j]) ? "NaN" : "infinite");
    }
    return TFM_OK;
}

/* Checks a file's tensors against the layout: every canonical tensor present,
 * F32, exactly the layout's shape and finite; nothing else. */
static tfm_status check_tensors(const tfm_safetensors *st, const tfm_layout *L, const char *path) {
    char a[64], b[64];
    for (int i = 0; i < L->n_tensors; i++) {
        const tfm_tensor_info *e = &L->tensors[i];
        if (e->tied_to >= 0) continue;
        const tfm_st_tensor *t = tfm_st_find(st, e->name);
        if (!t)
            return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\" is missing (expected F32 %s)", path,
                             e->name, layout_shape(a, sizeof a, e));
        int same = t->ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++) same = t->shape[d] == e->shape[d];
        if (!same)
            return tfm_error(TFM_ERR_FORMAT,
                             "%s: tensor \"%s\": shape %s in the file, expected %s for this config",
                             path, e->name, file_shape(a, sizeof a, t), layout_shape(b, sizeof b, e));
        if (t->dtype != TFM_DT_F32)
            return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": dtype %s, expected F32", path,
                             e->name, tfm_dtype_name(t->dtype));
    }
    for (int k = 0; k < st->n_tensors; k++) {
        const tfm_st_tensor *t = &st->tensors[k];
        int idx = tfm_layout_find(L, t->name);
        if (idx < 0)
            return tfm_error(TFM_ERR_FORMAT,
                             "%s: unexpected tensor \"%.120s\": this config has no such parameter",
                             path, t->name);
        if (L->tensors[idx].tied_to >= 0)
            return tfm_error(TFM_ERR_FORMAT,
                             "%s: unexpected tensor \"%s\": it is tied to \"%s\" in this config "
                             "and stored only under that name",
                             path, t->name, L->tensors[canonical(L, idx)].name);
    }
    /* Finite last: it is the only check that reads the data. */
    for (int i = 0; i < L->n_tensors; i++) {
        if (L->tensors[i].tied_to >= 0) continue;
        TFM_TRY(check_finite(st, tfm_st_find(st, L->tensors[i].name), path));
    }
    return TFM_OK;
}

/* Copies every canonical tensor of a checked file into params. Cannot fail. */
static void copy_tensors(const tfm_safetensors *st, const tfm_layout *L, float *params) {
    for (int i = 0; i < L->n_tensors; i++) {
        const tfm_tensor_info *e = &L->tensors[i];
        if (e->tied_to >= 0) continue;
        const tfm_st_tensor *t = tfm_st_find(st, e->name);
        memcpy(params + e->offset, tfm_st_data(st, t), e->numel * sizeof(float));
    }
}

tfm_status tfm_checkpoint_read_config(const char *path, tfm_config *cfg, long *step) {
    TFM_ASSERT(path && cfg);
    ckpt_file f;
    TFM_TRY(ckpt_open(&f, path));
    *cfg = f.cfg;
    if (step) *step = f.step;
    ckpt_close(&f);
    return TFM_OK;
}

tfm_status tfm_checkpoint_load(tfm_model *m_out, const char *path, long *step) {
    TFM_ASSERT(m_out && path);
    memset(m_out, 0, sizeof *m_out);
    ckpt_file f;
    TFM_TRY(ckpt_open(&f, path));
    tfm_layout L;
    tfm_status s = tfm_layout_init(&L, &f.cfg);
    if (s != TFM_OK) {
        ckpt_close(&f);
        return s;
    }
    s = check_tensors(&f.st, &L, path);
    tfm_layout_free(&L);
    if (s == TFM_OK) s = tfm_model_init(m_out, &f.cfg, 0);
    if (s == TFM_OK) {
        copy_tensors(&f.st, &m_out->layout, m_out->params);
        if (step) *step = f.step;
    }
    ckpt_close(&f);
    return s;
}

tfm_status tfm_checkpoint_load_into(const tfm_model *m, const char *path) {
    TFM_ASSERT(m && m->params && path);
    ckpt_file f;
    TFM_TRY(ckpt_open(&f, path));
    char diff[256];
    tfm_status s = TFM_OK;
    if (tfm_checkpoint_config_diff(&f.cfg, &m->cfg, diff, sizeof diff))
        s = tfm_error(TFM_ERR_INVALID,
                      "%s: the checkpoint's config differs from the model's: %s (file vs model)",
                      path, diff);
    if (s == TFM_OK) s = check_tensors(&f.st, &m->layout, path);
    if (s == TFM_OK && m->be->host_memory) {
        copy_tensors(&f.st, &m->layout, m->params);
    } else if (s == TFM_OK) {
        float *host = malloc(m->layout.n_params * sizeof *host);
        if (!host) s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
        if (host) {
            /* Tied tensors are not in the file: keep the model's values there. */
            tfm_model_get_params(m, host);
            copy_tensors(&f.st, &m->layout, host);
            tfm_model_set_params((tfm_model *)m, host);
            free(host);
        }
    }
    ckpt_close(&f);
    return s;
}

/* ------------------------------------------------------------------ saving */

/* Removes temporary files NAME.tmp.PID.N in `dir` left by writers that are no
 * longer running (PID gone on this host), where NAME starts with `prefix`
 * (NULL: any NAME ending in ".safetensors"). Best effort: failures are
 * ignored, since a stray temporary file is harmless. */
static void clean_stale_tmp(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return;
    size_t plen = prefix ? strlen(prefix) : 0;
    pid_t self = getpid();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (prefix && strncmp(name, prefix, plen) != 0) continue;
        const char *tmp = strstr(name, ".tmp.");
        if (!tmp) continue;
        /* the suffix must be exactly .tmp.<pid>.<n> */
        const char *p = tmp + 5;
        long pid = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 12) pid = pid * 10 + (*p++ - '0'), digits++;
        if (!digits || *p != '.') continue;
        p++;
        if (!(*p >= '0' && *p <= '9')) continue;
        while (*p >= '0' && *p <= '9') p++;
        if (*p) continue;
        if (prefix ? (size_t)(tmp - name) != plen
                   : ((size_t)(tmp - name) < 12 || strncmp(tmp - 12, ".safetensors", 12) != 0))
            continue;
        if (pid <= 0 || pid > INT_MAX || (pid_t)pid == self) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
        char *full = dup_printf("%s/%s", dir, name);
        if (full) unlink(full);
        free(full);
    }
    closedir(d);
}

/* The directory part of path ("." when none); malloc'd, NULL when out of memory. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static const char *base_of(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Cleans stale temporaries of `path` itself (path.tmp.PID.N). */
static void clean_stale_tmp_of(const char *path) {
    char *dir = dir_of(path);
    if (!dir) return;
    clean_stale_tmp(dir, base_of(path));
    free(dir);
}

/* Writes a weights file from a config, its layout and a parameter buffer.
 * extra_key/extra_value: one more metadata entry (NULL: none). */
static tfm_status write_weights(const tfm_config *cfg, const tfm_layout *L, const float *params,
                                long step, const char *path, const char *extra_key,
                                const char *extra_value) {
    if (step < 0) return tfm_error(TFM_ERR_INVALID, "%s: step %ld is negative", path, step);
    /* Refuse to write a file that could not be loaded back. */
    for (int i = 0; i < L->n_tensors; i++) {
        const tfm_tensor_info *e = &L->tensors[i];
        if (e->tied_to >= 0) continue;
        const float *p = params + e->offset;
        for (size_t j = 0; j < e->numel; j++)
            if (!isfinite(p[j]))
                return tfm_error(TFM_ERR_INVALID,
                                 "%s: not saved: tensor \"%s\": element %zu is %s (the training "
                                 "diverged?)",
                                 path, e->name, j, isnan(p[j]) ? "NaN" : "infinite");
    }
    clean_stale_tmp_of(path);
    tfm_st_writer *w = NULL;
    char *config = NULL, *tied = NULL, stepbuf[32];
    tfm_status s = tfm_st_writer_init(&w);
    if (s != TFM_OK) return s;
    config = tfm_config_to_json(cfg);
    tied = tied_description(L);
    if (!config || !tied) s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; s == TFM_OK && i < L->n_tensors; i++) {
        const tfm_tensor_info *e = &L->tensors[i];
        if (e->tied_to >= 0) continue;
        int64_t shape[2] = {e->shape[0], e->shape[1]};
        s = tfm_st_writer_add(w, e->name, TFM_DT_F32, e->ndim, shape, params + e->offset);
    }
    snprintf(stepbuf, sizeof stepbuf, "%ld", step);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "format", TFM_CHECKPOINT_FORMAT);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "format_version", TFM_CHECKPOINT_VERSION);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "config", config);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "step", stepbuf);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "tied", tied);
    if (s == TFM_OK && extra_key) s = tfm_st_writer_meta(w, extra_key, extra_value);
    if (s == TFM_OK) s = tfm_st_writer_save(w, path);
    tfm_st_writer_free(w);
    free(config);
    free(tied);
    return s;
}

tfm_status tfm_checkpoint_save(const tfm_model *m, long step, const char *path) {
    TFM_ASSERT(m && m->params && path);
    float *owned;
    const float *params = tfm_backend_host_floats(m->be, m->params, m->layout.n_params, &owned);
    if (!params) return tfm_error(TFM_ERR_NOMEM, "%s: out of memory for a host copy of the parameters", path);
    tfm_status s = write_weights(&m->cfg, &m->layout, params, step, path, NULL, NULL);
    free(owned);
    return s;
}

/* ------------------------------------------------------------- train state */

static void opt_json(char *out, size_t cap, const tfm_adam_params *p) {
    char b1[32], b2[32], eps[32], wd[32], clip[32];
    fmt_float(b1, sizeof b1, p->beta1);
    fmt_float(b2, sizeof b2, p->beta2);
    fmt_float(eps, sizeof eps, p->eps);
    fmt_float(wd, sizeof wd, p->weight_decay);
    fmt_float(clip, sizeof clip, p->clip_norm);
    snprintf(out, cap,
             "{\"kind\": \"%s\", \"beta1\": %s, \"beta2\": %s, \"eps\": %s, \"weight_decay\": %s, "
             "\"clip_norm\": %s}",
             tfm_opt_kind_name(p->kind), b1, b2, eps, wd, clip);
}

static void sched_json(char *out, size_t cap, const tfm_lr_schedule *s) {
    char lr[32], factor[32], min_lr[32], gamma[32];
    fmt_float(lr, sizeof lr, s->lr);
    fmt_float(factor, sizeof factor, s->factor);
    fmt_float(min_lr, sizeof min_lr, s->min_lr);
    fmt_float(gamma, sizeof gamma, s->gamma);
    snprintf(out, cap,
             "{\"kind\": \"%s\", \"lr\": %s, \"factor\": %s, \"d_model\": %d, \"warmup\": %ld, "
             "\"total_steps\": %ld, \"min_lr\": %s, \"gamma\": %s, \"step_size\": %ld}",
             tfm_lr_kind_name(s->kind), lr, factor, s->d_model, s->warmup, s->total_steps, min_lr,
             gamma, s->step_size);
}

/* Field tables for reading the settings back and comparing them. */
typedef enum { SF_FLOAT, SF_INT, SF_LONG } setting_kind;
typedef struct setting {
    const char *name;
    setting_kind kind;
    size_t offset;
} setting;

static const setting opt_settings[] = {
    {"beta1", SF_FLOAT, offsetof(tfm_adam_params, beta1)},
    {"beta2", SF_FLOAT, offsetof(tfm_adam_params, beta2)},
    {"eps", SF_FLOAT, offsetof(tfm_adam_params, eps)},
    {"weight_decay", SF_FLOAT, offsetof(tfm_adam_params, weight_decay)},
    {"clip_norm", SF_FLOAT, offsetof(tfm_adam_params, clip_norm)},
};
static const setting sched_settings[] = {
    {"lr", SF_FLOAT, offsetof(tfm_lr_schedule, lr)},
    {"factor", SF_FLOAT, offsetof(tfm_lr_schedule, factor)},
    {"d_model", SF_INT, offsetof(tfm_lr_schedule, d_model)},
    {"warmup", SF_LONG, offsetof(tfm_lr_schedule, warmup)},
    {"total_steps", SF_LONG, offsetof(tfm_lr_schedule, total_steps)},
    {"min_lr", SF_FLOAT, offsetof(tfm_lr_schedule, min_lr)},
    {"gamma", SF_FLOAT, offsetof(tfm_lr_schedule, gamma)},
    {"step_size", SF_LONG, offsetof(tfm_lr_schedule, step_size)},
};

/* Reads the JSON object `json` (metadata `key`) into the struct at base:
 * "kind" through kind_parse, the rest by the table. */
static tfm_status read_settings(const char *json, const char *path, const char *key,
                                const setting *tab, int n, void *base, int is_opt) {
    if (!json) return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"%s\" is missing", path, key);
    cJSON *root = cJSON_Parse(json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"%s\" is not a JSON object", path, key);
    }
    tfm_status s = TFM_OK;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "kind");
    if (!cJSON_IsString(kind)) {
        s = tfm_error(TFM_ERR_FORMAT, "%s: metadata \"%s\": \"kind\" is missing", path, key);
    } else {
        s = is_opt ? tfm_opt_kind_parse(kind->valuestring, &((tfm_adam_params *)base)->kind)
                   : tfm_lr_kind_parse(kind->valuestring, &((tfm_lr_schedule *)base)->kind);
        if (s != TFM_OK) s = wrap_error(TFM_ERR_FORMAT, path, key);
    }
    for (int i = 0; s == TFM_OK && i < n; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, tab[i].name);
        if (!cJSON_IsNumber(it)) {
            s = tfm_error(TFM_ERR_FORMAT, "%s: metadata \"%s\": \"%s\" is missing or not a number",
                          path, key, tab[i].name);
            break;
        }
        double v = it->valuedouble;
        char *p = (char *)base + tab[i].offset;
        if (tab[i].kind == SF_FLOAT) {
            if (!(fabs(v) <= FLT_MAX)) {
                s = tfm_error(TFM_ERR_FORMAT, "%s: metadata \"%s\": \"%s\" is out of float range",
                              path, key, tab[i].name);
                break;
            }
            float f = (float)v;
            memcpy(p, &f, sizeof f);
        } else if (floor(v) != v || fabs(v) > (tab[i].kind == SF_INT ? (double)INT_MAX : 9e15)) {
            s = tfm_error(TFM_ERR_FORMAT, "%s: metadata \"%s\": \"%s\" is not an integer", path,
                          key, tab[i].name);
        } else if (tab[i].kind == SF_INT) {
            int x = (int)v;
            memcpy(p, &x, sizeof x);
        } else {
            long x = (long)v;
            memcpy(p, &x, sizeof x);
        }
    }
    cJSON_Delete(root);
    return s;
}

/* Writes "what.FIELD: A in the file, B now" for the first differing setting. */
static int diff_settings(const setting *tab, int n, const void *file, const void *now,
                         const char *what, char *out, size_t cap) {
    for (int i = 0; i < n; i++) {
        const char *a = (const char *)file + tab[i].offset, *b = (const char *)now + tab[i].offset;
        char va[32], vb[32];
        if (tab[i].kind == SF_FLOAT) {
            float x, y;
            memcpy(&x, a, sizeof x);
            memcpy(&y, b, sizeof y);
            if (x == y) continue;
            fmt_float(va, sizeof va, x);
            fmt_float(vb, sizeof vb, y);
        } else if (tab[i].kind == SF_INT) {
            int x, y;
            memcpy(&x, a, sizeof x);
            memcpy(&y, b, sizeof y);
            if (x == y) continue;
            snprintf(va, sizeof va, "%d", x);
            snprintf(vb, sizeof vb, "%d", y);
        } else {
            long x, y;
            memcpy(&x, a, sizeof x);
            memcpy(&y, b, sizeof y);
            if (x == y) continue;
            snprintf(va, sizeof va, "%ld", x);
            snprintf(vb, sizeof vb, "%ld", y);
        }
        snprintf(out, cap, "%s.%s: %s in the file, %s now", what, tab[i].name, va, vb);
        return 1;
    }
    return 0;
}

#define N_OPT_SETTINGS ((int)(sizeof opt_settings / sizeof opt_settings[0]))
#define N_SCHED_SETTINGS ((int)(sizeof sched_settings / sizeof sched_settings[0]))

#define DATA_PREFIX "data."

static tfm_status save_state(const tfm_trainer *tr, const char *const *keys, const char *const *values,
                             int n, const char *path, const float *adam_m, const float *adam_v);

tfm_status tfm_train_state_save(const tfm_trainer *tr, const char *const *keys,
                                const char *const *values, int n, const char *path) {
    TFM_ASSERT(tr && tr->m && tr->adam_m && tr->adam_v && path && n >= 0);
    TFM_ASSERT(n == 0 || (keys && values));
    if (tr->micro != 0)
        return tfm_error(TFM_ERR_INVALID,
                         "%s: not saved: the trainer is between micro-batches (%d accumulated "
                         "since the last update); save after tfm_trainer_update",
                         path, tr->micro);
    for (int i = 0; i < n; i++) {
        if (!keys[i] || !keys[i][0] || !values[i])
            return tfm_error(TFM_ERR_INVALID, "%s: data-position entry %d: empty key or NULL value",
                             path, i);
        for (int j = 0; j < i; j++)
            if (strcmp(keys[i], keys[j]) == 0)
                return tfm_error(TFM_ERR_INVALID, "%s: data-position key \"%.64s\" given twice",
                                 path, keys[i]);
    }
    const tfm_model *m = tr->m;
    size_t np = m->layout.n_params;
    /* The moments, readable on the host (downloaded from a device backend). */
    float *owned_m, *owned_v;
    const float *adam_m = tfm_backend_host_floats(m->be, tr->adam_m, np, &owned_m);
    const float *adam_v = adam_m ? tfm_backend_host_floats(m->be, tr->adam_v, np, &owned_v) : NULL;
    if (!adam_v) {
        free(owned_m);
        return tfm_error(TFM_ERR_NOMEM, "%s: out of memory for a host copy of the moments", path);
    }
    tfm_status s = save_state(tr, keys, values, n, path, adam_m, adam_v);
    free(owned_m);
    free(owned_v);
    return s;
}

static tfm_status save_state(const tfm_trainer *tr, const char *const *keys, const char *const *values,
                             int n, const char *path, const float *adam_m, const float *adam_v) {
    const tfm_model *m = tr->m;
    size_t np = m->layout.n_params;
    for (int k = 0; k < 2; k++) {
        const float *p = k ? adam_v : adam_m;
        for (size_t j = 0; j < np; j++)
            if (!isfinite(p[j]))
                return tfm_error(TFM_ERR_INVALID, "%s: not saved: \"%s\" element %zu is %s", path,
                                 k ? "adam.v" : "adam.m", j, isnan(p[j]) ? "NaN" : "infinite");
    }
    clean_stale_tmp_of(path);
    tfm_st_writer *w = NULL;
    TFM_TRY(tfm_st_writer_init(&w));
    char num[32], optj[512], schedj[768];
    char *config = tfm_config_to_json(&m->cfg);
    tfm_status s = config ? TFM_OK : tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
    int64_t shape[1] = {(int64_t)np};
    if (s == TFM_OK) s = tfm_st_writer_add(w, "adam.m", TFM_DT_F32, 1, shape, adam_m);
    if (s == TFM_OK) s = tfm_st_writer_add(w, "adam.v", TFM_DT_F32, 1, shape, adam_v);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "format", TFM_TRAIN_STATE_FORMAT);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "format_version", TFM_CHECKPOINT_VERSION);
    snprintf(num, sizeof num, "%ld", tr->step);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "step", num);
    snprintf(num, sizeof num, "%llu", (unsigned long long)tr->seed);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "seed", num);
    snprintf(num, sizeof num, "%zu", np);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "n_params", num);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "config", config);
    opt_json(optj, sizeof optj, &tr->opt);
    sched_json(schedj, sizeof schedj, &tr->sched);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "optimizer", optj);
    if (s == TFM_OK) s = tfm_st_writer_meta(w, "schedule", schedj);
    for (int i = 0; s == TFM_OK && i < n; i++) {
        char *key = dup_printf(DATA_PREFIX "%s", keys[i]);
        s = key ? tfm_st_writer_meta(w, key, values[i])
                : tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
        if (s != TFM_OK && key) s = wrap_error(s, path, "data position");
        free(key);
    }
    if (s == TFM_OK) s = tfm_st_writer_save(w, path);
    tfm_st_writer_free(w);
    free(config);
    return s;
}

void tfm_train_state_info_free(tfm_train_state_info *info) {
    if (!info) return;
    for (int i = 0; i < info->n; i++) {
        free(info->keys[i]);
        free(info->values[i]);
    }
    free(info->keys);
    free(info->values);
    memset(info, 0, sizeof *info);
}

const char *tfm_train_state_get(const tfm_train_state_info *info, const char *key) {
    TFM_ASSERT(info && key);
    for (int i = 0; i < info->n; i++)
        if (strcmp(info->keys[i], key) == 0) return info->values[i];
    return NULL;
}

/* Checks that the layout of the saved model (from its config) equals the
 * trainer's, tensor by tensor. */
static tfm_status check_state_layout(const tfm_safetensors *st, const char *path,
                                     const tfm_layout *now) {
    tfm_config cfg;
    TFM_TRY(read_config_meta(st, path, &cfg));
    tfm_layout L;
    TFM_TRY(tfm_layout_init(&L, &cfg));
    tfm_status s = TFM_OK;
    char a[64], b[64];
    for (int i = 0; s == TFM_OK && (i < L.n_tensors || i < now->n_tensors); i++) {
        if (i >= L.n_tensors || i >= now->n_tensors) {
            s = tfm_error(TFM_ERR_FORMAT,
                          "%s: the saved model has %d tensors, the trainer's model %d", path,
                          L.n_tensors, now->n_tensors);
            break;
        }
        const tfm_tensor_info *x = &L.tensors[i], *y = &now->tensors[i];
        if (strcmp(x->name, y->name) != 0 || x->offset != y->offset)
            s = tfm_error(TFM_ERR_FORMAT,
                          "%s: tensor %d of the saved model is \"%s\" at offset %zu, of the "
                          "trainer's model \"%s\" at offset %zu",
                          path, i, x->name, x->offset, y->name, y->offset);
        else if (x->ndim != y->ndim || x->shape[0] != y->shape[0] || x->shape[1] != y->shape[1])
            s = tfm_error(TFM_ERR_FORMAT,
                          "%s: tensor \"%s\": shape %s in the saved model, %s in the trainer's",
                          path, x->name, layout_shape(a, sizeof a, x), layout_shape(b, sizeof b, y));
    }
    tfm_layout_free(&L);
    return s;
}

/* Checks tensor `name` of a state file: F32, shape [np], finite (and >= 0
 * when nonneg). */
static tfm_status check_moment(const tfm_safetensors *st, const char *path, const char *name,
                               size_t np, int nonneg) {
    const tfm_st_tensor *t = tfm_st_find(st, name);
    char a[64];
    if (!t)
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\" is missing (expected F32 [%zu])", path,
                         name, np);
    if (t->ndim != 1 || (uint64_t)t->shape[0] != (uint64_t)np)
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": shape %s in the file, expected [%zu]",
                         path, name, file_shape(a, sizeof a, t), np);
    if (t->dtype != TFM_DT_F32)
        return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": dtype %s, expected F32", path, name,
                         tfm_dtype_name(t->dtype));
    TFM_TRY(check_finite(st, t, path));
    if (nonneg) {
        const unsigned char *p = tfm_st_data(st, t);
        float buf[CHUNK];
        for (size_t i = 0; i < t->numel; i += CHUNK) {
            size_t n = t->numel - i < CHUNK ? t->numel - i : CHUNK;
            memcpy(buf, p + i * sizeof(float), n * sizeof(float));
            for (size_t j = 0; j < n; j++)
                if (buf[j] < 0.0f)
                    return tfm_error(TFM_ERR_FORMAT, "%s: tensor \"%s\": element %zu is negative",
                                     path, name, i + j);
        }
    }
    return TFM_OK;
}

/* Everything of a state file except the moments, checked. */
static tfm_status read_state_meta(const tfm_safetensors *st, const char *path,
                                  const tfm_trainer *tr, tfm_train_state_info *info) {
    size_t np = tr->m->layout.n_params;
    TFM_TRY(check_format(st, path, TFM_TRAIN_STATE_FORMAT));
    const char *nps = tfm_st_meta(st, "n_params");
    long file_np;
    if (!nps) return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"n_params\" is missing", path);
    if (!parse_long(nps, &file_np))
        return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"n_params\": \"%.32s\" is not an integer",
                         path, nps);
    if ((size_t)file_np != np)
        return tfm_error(TFM_ERR_FORMAT,
                         "%s: n_params: the state is for a model of %ld parameters, the trainer's "
                         "model has %zu",
                         path, file_np, np);
    TFM_TRY(check_state_layout(st, path, &tr->m->layout));
    TFM_TRY(read_step_meta(st, path, &info->step));
    const char *seed = tfm_st_meta(st, "seed");
    if (!seed) return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"seed\" is missing", path);
    if (!parse_u64(seed, &info->seed))
        return tfm_error(TFM_ERR_FORMAT, "%s: metadata \"seed\": \"%.32s\" is not an integer", path,
                         seed);
    info->opt = tr->opt;
    info->sched = tr->sched;
    TFM_TRY(read_settings(tfm_st_meta(st, "optimizer"), path, "optimizer", opt_settings,
                          N_OPT_SETTINGS, &info->opt, 1));
    TFM_TRY(read_settings(tfm_st_meta(st, "schedule"), path, "schedule", sched_settings,
                          N_SCHED_SETTINGS, &info->sched, 0));
    info->settings_diff[0] = '\0';
    if (info->opt.kind != tr->opt.kind)
        snprintf(info->settings_diff, sizeof info->settings_diff,
                 "optimizer.kind: %s in the file, %s now", tfm_opt_kind_name(info->opt.kind),
                 tfm_opt_kind_name(tr->opt.kind));
    else if (info->sched.kind != tr->sched.kind)
        snprintf(info->settings_diff, sizeof info->settings_diff,
                 "schedule.kind: %s in the file, %s now", tfm_lr_kind_name(info->sched.kind),
                 tfm_lr_kind_name(tr->sched.kind));
    else if (!diff_settings(opt_settings, N_OPT_SETTINGS, &info->opt, &tr->opt, "optimizer",
                            info->settings_diff, sizeof info->settings_diff))
        diff_settings(sched_settings, N_SCHED_SETTINGS, &info->sched, &tr->sched, "schedule",
                      info->settings_diff, sizeof info->settings_diff);

    for (int i = 0; i < st->n_tensors; i++) {
        const char *name = st->tensors[i].name;
        if (strcmp(name, "adam.m") != 0 && strcmp(name, "adam.v") != 0)
            return tfm_error(TFM_ERR_FORMAT, "%s: unexpected tensor \"%.120s\" in a train state",
                             path, name);
    }
    /* the data position */
    size_t plen = strlen(DATA_PREFIX);
    int count = 0;
    for (int i = 0; i < st->n_meta; i++) count += strncmp(st->meta_keys[i], DATA_PREFIX, plen) == 0;
    if (count) {
        info->keys = calloc((size_t)count, sizeof *info->keys);
        info->values = calloc((size_t)count, sizeof *info->values);
        if (!info->keys || !info->values) return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < st->n_meta; i++) {
        if (strncmp(st->meta_keys[i], DATA_PREFIX, plen) != 0) continue;
        char *k = strdup(st->meta_keys[i] + plen), *v = strdup(st->meta_values[i]);
        if (!k || !v) {
            free(k);
            free(v);
            return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
        }
        info->keys[info->n] = k;
        info->values[info->n] = v;
        info->n++;
    }
    return TFM_OK;
}

tfm_status tfm_train_state_load(tfm_trainer *tr, const char *path, tfm_train_state_info *info) {
    TFM_ASSERT(tr && tr->m && tr->adam_m && tr->adam_v && path);
    tfm_train_state_info local;
    tfm_train_state_info *out = info ? info : &local;
    memset(out, 0, sizeof *out);
    tfm_safetensors st;
    TFM_TRY(tfm_st_open(&st, path));
    size_t np = tr->m->layout.n_params;
    tfm_status s = read_state_meta(&st, path, tr, out);
    if (s == TFM_OK) s = check_moment(&st, path, "adam.m", np, 0);
    if (s == TFM_OK) s = check_moment(&st, path, "adam.v", np, 1);
    if (s == TFM_OK) {
        const tfm_backend *be = tr->m->be;
        be->upload(tr->adam_m, tfm_st_data(&st, tfm_st_find(&st, "adam.m")), np * sizeof(float));
        be->upload(tr->adam_v, tfm_st_data(&st, tfm_st_find(&st, "adam.v")), np * sizeof(float));
        be->zero(tr->grad, np * sizeof(float));
        tr->step = out->step;
        tr->seed = out->seed;
        tr->micro = 0;
        tr->n_tokens = 0;
    }
    tfm_st_close(&st);
    if (s != TFM_OK || !info) tfm_train_state_info_free(out);
    return s;
}

/* --------------------------------------------------------------- directory */

void tfm_checkpoint_list_free(tfm_checkpoint_list *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) free(l->paths[i]);
    free(l->paths);
    free(l->steps);
    memset(l, 0, sizeof *l);
}

/* checkpoint_<digits>.safetensors -> step; 0 when the name does not match. */
static int checkpoint_step(const char *name, long *step) {
    static const char pre[] = "checkpoint_", suf[] = ".safetensors";
    size_t n = strlen(name), lp = sizeof pre - 1, ls = sizeof suf - 1;
    if (n <= lp + ls || strncmp(name, pre, lp) != 0 || strcmp(name + n - ls, suf) != 0) return 0;
    char digits[24];
    size_t nd = n - lp - ls;
    if (nd >= sizeof digits) return 0;
    memcpy(digits, name + lp, nd);
    digits[nd] = '\0';
    return parse_long(digits, step);
}

typedef struct list_entry {
    long step;
    char *path;
} list_entry;

static int cmp_entry(const void *a, const void *b) {
    const list_entry *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? -1 : 1;
    return strcmp(x->path, y->path);
}

tfm_status tfm_checkpoint_dir_list(const char *dir, tfm_checkpoint_list *out) {
    TFM_ASSERT(dir && out);
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d) return tfm_error(TFM_ERR_IO, "%s: cannot read the directory: %s", dir, strerror(errno));
    list_entry *e = NULL;
    int n = 0, cap = 0;
    tfm_status s = TFM_OK;
    struct dirent *de;
    while (s == TFM_OK && (de = readdir(d)) != NULL) {
        long step;
        if (!checkpoint_step(de->d_name, &step)) continue;
        if (n == cap) {
            int nc = cap ? 2 * cap : 16;
            list_entry *ne = realloc(e, (size_t)nc * sizeof *ne);
            if (!ne) {
                s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory listing checkpoints", dir);
                break;
            }
            e = ne;
            cap = nc;
        }
        e[n].step = step;
        e[n].path = dup_printf("%s/%s", dir, de->d_name);
        if (!e[n].path) s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory listing checkpoints", dir);
        else n++;
    }
    closedir(d);
    if (s == TFM_OK && n) {
        qsort(e, (size_t)n, sizeof *e, cmp_entry);
        out->steps = malloc((size_t)n * sizeof *out->steps);
        out->paths = malloc((size_t)n * sizeof *out->paths);
        if (!out->steps || !out->paths) {
            free(out->steps);
            free(out->paths);
            out->steps = NULL;
            out->paths = NULL;
            s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory listing checkpoints", dir);
        }
    }
    if (s == TFM_OK) {
        for (int i = 0; i < n; i++) {
            out->steps[i] = e[i].step;
            out->paths[i] = e[i].path;
        }
        out->n = n;
    } else {
        for (int i = 0; i < n; i++) free(e[i].path);
    }
    free(e);
    return s;
}

/* Copies src to a new file tmp (O_EXCL), fsynced. */
static tfm_status copy_file(const char *src, const char *tmp, const char *dst) {
    int in = open(src, O_RDONLY);
    if (in < 0) return tfm_error(TFM_ERR_IO, "%s: cannot open %s: %s", dst, src, strerror(errno));
    int out = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (out < 0) {
        int err = errno;
        close(in);
        return tfm_error(TFM_ERR_IO, "%s: cannot create %s: %s", dst, tmp, strerror(err));
    }
    char *chunk = malloc(1 << 20);
    tfm_status s = TFM_OK;
    if (!chunk) s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory", dst);
    while (s == TFM_OK) {
        ssize_t n = read(in, chunk, 1 << 20);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            s = tfm_error(TFM_ERR_IO, "%s: cannot read %s: %s", dst, src, strerror(errno));
            break;
        }
        if (n == 0) break;
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, chunk + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) {
                s = tfm_error(TFM_ERR_IO, "%s: cannot write %s: %s", dst, tmp, strerror(errno));
                break;
            }
            done += w;
        }
    }
    free(chunk);
    if (s == TFM_OK && fsync(out) != 0)
        s = tfm_error(TFM_ERR_IO, "%s: fsync of %s failed: %s", dst, tmp, strerror(errno));
    if (close(out) != 0 && s == TFM_OK)
        s = tfm_error(TFM_ERR_IO, "%s: close of %s failed: %s", dst, tmp, strerror(errno));
    close(in);
    return s;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd); /* best effort: some file systems refuse fsync on directories */
        close(fd);
    }
}

/* Atomically makes dst (in dir) a hard link to src, or a copy of it where the
 * file system refuses links: tmp link/copy beside dst, then rename. */
static tfm_status publish(const char *src, const char *dst, const char *dir) {
    static atomic_uint counter;
    char *tmp = dup_printf("%s.tmp.%ld.%u", dst, (long)getpid(), atomic_fetch_add(&counter, 1));
    if (!tmp) return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", dst);
    tfm_status s = TFM_OK;
    if (link(src, tmp) != 0) {
        int err = errno;
        if (err == EEXIST) {
            unlink(tmp);
            if (link(src, tmp) == 0) err = 0;
            else err = errno;
        }
        if (err == EPERM || err == EXDEV || err == EMLINK || err == ENOSYS ||
            err == EOPNOTSUPP || err == EACCES)
            s = copy_file(src, tmp, dst);
        else if (err)
            s = tfm_error(TFM_ERR_IO, "%s: cannot link %s to %s: %s", dst, src, tmp, strerror(err));
    }
    if (s == TFM_OK && rename(tmp, dst) != 0)
        s = tfm_error(TFM_ERR_IO, "%s: cannot rename %s into place: %s", dst, tmp, strerror(errno));
    if (s != TFM_OK) unlink(tmp);
    else fsync_dir(dir);
    free(tmp);
    return s;
}

/* Deletes path; a missing file is fine. */
static tfm_status remove_file(const char *path) {
    if (unlink(path) != 0 && errno != ENOENT)
        return tfm_error(TFM_ERR_IO, "%s: cannot delete: %s", path, strerror(errno));
    return TFM_OK;
}

/* Deletes the oldest checkpoints beyond the newest keep_last, never `keep`. */
static tfm_status prune(const char *dir, int keep_last, long keep) {
    tfm_checkpoint_list l;
    TFM_TRY(tfm_checkpoint_dir_list(dir, &l));
    tfm_status s = TFM_OK;
    int excess = l.n - keep_last;
    for (int i = 0; s == TFM_OK && i < l.n && excess > 0; i++) {
        if (l.steps[i] == keep) continue;
        /* The state first: an interrupted prune then leaves a weights file,
         * which the next prune finds, never an orphaned state file. */
        size_t len = strlen(l.paths[i]);
        char *state = dup_printf("%.*s.state.safetensors", (int)(len - strlen(".safetensors")),
                                 l.paths[i]);
        if (!state) s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory", dir);
        if (s == TFM_OK) s = remove_file(state);
        if (s == TFM_OK) s = remove_file(l.paths[i]);
        free(state);
        excess--;
    }
    tfm_checkpoint_list_free(&l);
    return s;
}

tfm_status tfm_checkpoint_dir_save(const tfm_model *m, const tfm_trainer *tr, long step,
                                   int keep_last, const char *dir, const char *const *keys,
                                   const char *const *values, int n) {
    TFM_ASSERT(m && dir && keep_last >= 0);
    TFM_ASSERT(!tr || tr->m->layout.n_params == m->layout.n_params);
    if (step < 0) return tfm_error(TFM_ERR_INVALID, "%s: step %ld is negative", dir, step);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return tfm_error(TFM_ERR_IO, "%s: cannot create the directory: %s", dir, strerror(errno));
    clean_stale_tmp(dir, NULL);
    char *ckpt = dup_printf("%s/checkpoint_%ld.safetensors", dir, step);
    char *state = dup_printf("%s/checkpoint_%ld.state.safetensors", dir, step);
    char *latest = dup_printf("%s/model.safetensors", dir);
    char *latest_state = dup_printf("%s/train_state.safetensors", dir);
    tfm_status s = TFM_OK;
    if (!ckpt || !state || !latest || !latest_state)
        s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory", dir);
    if (s == TFM_OK) s = tfm_checkpoint_save(m, step, ckpt);
    if (s == TFM_OK && tr) s = tfm_train_state_save(tr, keys, values, n, state);
    /* The state is published before the weights: model.safetensors is what
     * translate reads, and it should be the last file to change. */
    if (s == TFM_OK && tr) s = publish(state, latest_state, dir);
    if (s == TFM_OK) s = publish(ckpt, latest, dir);
    if (s == TFM_OK && keep_last > 0) s = prune(dir, keep_last, step);
    free(ckpt);
    free(state);
    free(latest);
    free(latest_state);
    return s;
}

/* --------------------------------------------------------------- averaging */

/* acc[j] += the file's parameter j, for every canonical tensor. */
static void accumulate(const tfm_safetensors *st, const tfm_layout *L, double *acc) {
    float buf[CHUNK];
    for (int i = 0; i < L->n_tensors; i++) {
        const tfm_tensor_info *e = &L->tensors[i];
        if (e->tied_to >= 0) continue;
        const unsigned char *p = tfm_st_data(st, tfm_st_find(st, e->name));
        double *a = acc + e->offset;
        for (size_t k = 0; k < e->numel; k += CHUNK) {
            size_t n = e->numel - k < CHUNK ? e->numel - k : CHUNK;
            memcpy(buf, p + k * sizeof(float), n * sizeof(float));
            for (size_t j = 0; j < n; j++) a[k + j] += (double)buf[j];
        }
    }
}

tfm_status tfm_checkpoint_average(const char *const *paths, int n, const char *out_path) {
    TFM_ASSERT(paths && out_path);
    if (n < 1) return tfm_error(TFM_ERR_INVALID, "%s: average: no checkpoints given", out_path);
    ckpt_file f;
    TFM_TRY(ckpt_open(&f, paths[0]));
    tfm_config cfg = f.cfg;
    tfm_layout L;
    tfm_status s = tfm_layout_init(&L, &cfg);
    if (s != TFM_OK) {
        ckpt_close(&f);
        return s;
    }
    double *acc = calloc(L.n_params ? L.n_params : 1, sizeof *acc);
    float *avg = malloc((L.n_params ? L.n_params : 1) * sizeof *avg);
    size_t steps_cap = (size_t)n * 21 + 1;
    char *steps = malloc(steps_cap);
    size_t so = 0;
    if (!acc || !avg || !steps)
        s = tfm_error(TFM_ERR_NOMEM, "%s: out of memory for %zu parameters", out_path, L.n_params);
    if (s == TFM_OK) s = check_tensors(&f.st, &L, paths[0]);
    long last_step = f.step;
    if (s == TFM_OK) {
        accumulate(&f.st, &L, acc);
        so += (size_t)snprintf(steps + so, steps_cap - so, "%ld", f.step);
    }
    ckpt_close(&f);
    for (int i = 1; s == TFM_OK && i < n; i++) {
        s = ckpt_open(&f, paths[i]);
        if (s != TFM_OK) break;
        char diff[256];
        if (tfm_checkpoint_config_diff(&f.cfg, &cfg, diff, sizeof diff))
            s = tfm_error(TFM_ERR_INVALID, "%s: config differs from %s's: %s (this file vs that)",
                          paths[i], paths[0], diff);
        if (s == TFM_OK) s = check_tensors(&f.st, &L, paths[i]);
        if (s == TFM_OK) {
            accumulate(&f.st, &L, acc);
            last_step = f.step;
            so += (size_t)snprintf(steps + so, steps_cap - so, ",%ld", f.step);
        }
        ckpt_close(&f);
    }
    if (s == TFM_OK) {
        for (size_t j = 0; j < L.n_params; j++) avg[j] = (float)(acc[j] / (double)n);
        s = write_weights(&cfg, &L, avg, last_step, out_path, "averaged_from", steps);
    }
    free(acc);
    free(avg);
    free(steps);
    tfm_layout_free(&L);
    return s;
}
