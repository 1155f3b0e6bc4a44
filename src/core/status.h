/*
 * status.h: error reporting inside the library.
 *
 * Environment errors (I/O, bad files, bad input) are returned as a tfm_status
 * with a message kept per thread (tfm_last_error()). Programmer errors abort
 * through TFM_ASSERT, which stays on in release builds.
 */
#ifndef TFM_CORE_STATUS_H
#define TFM_CORE_STATUS_H

#include "transformer.h"

/* Records a printf-style message for tfm_last_error() and returns `status`,
 * so that callers can write `return tfm_error(TFM_ERR_IO, "%s: ...", path);`. */
tfm_status tfm_error(tfm_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears the thread's message. */
void tfm_error_clear(void);

/* Aborts with the expression, file and line. Never compiled out. */
#define TFM_ASSERT(cond)                                                       \
    do {                                                                       \
        if (!(cond)) tfm_assert_fail(#cond, __FILE__, __LINE__);               \
    } while (0)

_Noreturn void tfm_assert_fail(const char *expr, const char *file, int line);

/* Propagates a non-OK status: TFM_TRY(tfm_foo(...)); */
#define TFM_TRY(expr)                                                          \
    do {                                                                       \
        tfm_status tfm_try_status_ = (expr);                                   \
        if (tfm_try_status_ != TFM_OK) return tfm_try_status_;                 \
    } while (0)

#endif
