/* cuda_absent.c: tfm_backend_cuda for builds without the CUDA backend
 * (TFM_CUDA=OFF); with it, src/cuda/backend.cu defines the real one. */
#include "backend/backend.h"

#ifndef TFM_HAVE_CUDA
const tfm_backend *tfm_backend_cuda(const char **why) {
    if (why) *why = "this build has no CUDA backend (configure with -DTFM_CUDA=ON)";
    return NULL;
}
#endif
