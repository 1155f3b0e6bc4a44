/*
 * test_util.h: the small test harness every test uses.
 *
 * A test calls CHECK(...) and the tfm_test_close* comparisons, then returns
 * tfm_test_finish(), which prints "N passed, N failed" and gives a non-zero
 * exit status when anything failed. tfm_test_skip() exits with 77, which CTest
 * reports as skipped, after printing why.
 */
#ifndef TFM_TEST_UTIL_H
#define TFM_TEST_UTIL_H

#include <stddef.h>
#include <stdio.h>

#include "transformer.h"

extern int tfm_test_passed;
extern int tfm_test_failed;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (cond) {                                                              \
            tfm_test_passed++;                                                   \
        } else {                                                                 \
            tfm_test_failed++;                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, "\n");                                               \
        }                                                                        \
    } while (0)

/* Worst relative error max|a-b| / max(max|b|, floor) over n floats; prints
 * "name: worst rel err E (tol T)" and counts a pass or a failure. Returns the
 * error. A NaN anywhere fails. */
double tfm_test_close(const char *name, const float *actual, const float *expected, size_t n,
                      double tol);
double tfm_test_close_f64(const char *name, const double *actual, const double *expected,
                          size_t n, double tol);

/* Prints the closing line and returns the exit status for main(). */
int tfm_test_finish(void);

/* Prints "SKIP: why" and exits with 77. */
_Noreturn void tfm_test_skip(const char *why);

/* An environment variable set by CTest (TFM_SOURCE_DIR, TFM_SHARED_DIR,
 * TFM_REF_DIR, TFM_CLI, TFM_REF_PYTHON), or a fallback for running by hand. */
const char *tfm_test_env(const char *name, const char *fallback);

/* Runs a shell command, captures up to cap-1 bytes of its stdout+stderr into
 * out, and returns its exit status (-1 when it could not be run). */
int tfm_test_run(const char *cmd, char *out, size_t cap);

#endif
