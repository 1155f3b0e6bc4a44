/*
 * cli_util.h: small helpers shared by the subcommands: strict number parsing,
 * flag-name normalisation, durations, whole-file reads, thread count.
 */
#ifndef TFM_TOOLS_CLI_UTIL_H
#define TFM_TOOLS_CLI_UTIL_H

#include <stddef.h>

/* "d-model" / "--d-model" -> "d_model". */
void tfm_cli_normalize(char *out, size_t cap, const char *name);
/* Strict parses: the whole string must be the number, within [lo, hi].
 * Return 1 on success. */
int tfm_cli_int(const char *s, int lo, int hi, int *out);
int tfm_cli_long(const char *s, long lo, long hi, long *out);
int tfm_cli_float(const char *s, float *out);
/* "3600", "90s", "30m", "1.5h" -> seconds. */
int tfm_cli_duration(const char *s, double *seconds);
/* The whole file, NUL-terminated (free()), or NULL with errno set. */
char *tfm_cli_read_file(const char *path);
/* Sets the thread count of OpenMP (and so of OpenBLAS's OpenMP build):
 * n > 0, else TFM_NUM_THREADS, else the runtime's default (all cores). */
void tfm_cli_set_threads(int n);

#endif
