/* select.c: choosing a backend by name, and reading its buffers on the host. */
#include "backend/backend.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"

tfm_status tfm_backend_select(const char *name, const tfm_backend **out) {
    *out = NULL;
    if (!name || !strcmp(name, "cpu")) {
        *out = tfm_backend_cpu();
        return TFM_OK;
    }
    if (!strcmp(name, "cuda")) {
        const char *why = NULL;
        *out = tfm_backend_cuda(&why);
        if (!*out) return tfm_error(TFM_ERR_INVALID, "device cuda: %s", why ? why : "unavailable");
        return TFM_OK;
    }
    return tfm_error(TFM_ERR_INVALID, "device '%s': unknown (use cpu or cuda)", name);
}

tfm_status tfm_backend_set_precision(const tfm_backend *be, const char *name) {
    static const char *const names[] = {"fp32", "tf32", "bf16"};
    for (int p = 0; p < 3; p++) {
        if (!name || strcmp(name, names[p])) continue;
        if (be->set_matmul_precision(p)) return TFM_OK;
        return tfm_error(TFM_ERR_INVALID, "precision %s: the %s backend runs fp32 only", name, be->name);
    }
    return tfm_error(TFM_ERR_INVALID, "precision '%s': unknown (use fp32, tf32 or bf16)", name ? name : "(null)");
}

const float *tfm_backend_host_floats(const tfm_backend *be, const float *p, size_t n, float **owned) {
    *owned = NULL;
    if (be->host_memory) return p;
    float *copy = malloc((n ? n : 1) * sizeof *copy);
    if (!copy) return NULL;
    be->download(copy, p, n * sizeof *copy);
    *owned = copy;
    return copy;
}
