/* cli_util.c: see cli_util.h. */
#include "cli_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

void tfm_cli_normalize(char *out, size_t cap, const char *name) {
    while (*name == '-') name++;
    size_t i = 0;
    for (; name[i] && i + 1 < cap; i++) out[i] = name[i] == '-' ? '_' : name[i];
    out[i] = '\0';
}

int tfm_cli_long(const char *s, long lo, long hi, long *out) {
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

int tfm_cli_int(const char *s, int lo, int hi, int *out) {
    long v;
    if (!tfm_cli_long(s, lo, hi, &v)) return 0;
    *out = (int)v;
    return 1;
}

int tfm_cli_float(const char *s, float *out) {
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return 0;
    *out = (float)v;
    return 1;
}

int tfm_cli_duration(const char *s, double *seconds) {
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !isfinite(v) || v < 0) return 0;
    double unit = 1;
    if (*end == 's') unit = 1, end++;
    else if (*end == 'm') unit = 60, end++;
    else if (*end == 'h') unit = 3600, end++;
    if (*end) return 0;
    *seconds = v * unit;
    return 1;
}

char *tfm_cli_read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

void tfm_cli_set_threads(int n) {
    if (n <= 0) {
        const char *env = getenv("TFM_NUM_THREADS");
        if (env) n = atoi(env);
    }
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}
