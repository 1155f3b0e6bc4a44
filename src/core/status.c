/* status.c: the per-thread error message and the assertion handler. */
#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static _Thread_local char error_message[1024];

tfm_status tfm_error(tfm_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return status;
}

void tfm_error_clear(void) { error_message[0] = '\0'; }

const char *tfm_last_error(void) { return error_message; }

const char *tfm_status_name(tfm_status s) {
    switch (s) {
    case TFM_OK: return "ok";
    case TFM_ERR_INVALID: return "invalid";
    case TFM_ERR_IO: return "io";
    case TFM_ERR_FORMAT: return "format";
    case TFM_ERR_NOMEM: return "out of memory";
    case TFM_ERR_UNSUPPORTED: return "unsupported";
    case TFM_ERR_DEVICE: return "device";
    }
    return "unknown";
}

void tfm_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "transformer: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}
