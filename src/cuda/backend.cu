/*
 * backend.cu: the CUDA backend's table: start-up on the current device, the
 * one stream every op is queued on, the cuBLASLt handle and its workspace,
 * memory (alloc, upload, download, copy, zero, sync) and error reporting.
 *
 * The ops themselves live beside this file, one file per family (gemm.cu,
 * elementwise.cu, layernorm.cu, embedding.cu, attention.cu, xent.cu,
 * adam.cu), each with the contract of src/ops/ops_decl.h (float versions).
 * Every pointer an op takes is device memory from `alloc`, token ids,
 * positions and masks included.
 *
 * It does not pick a GPU: it runs on the current device (cudaSetDevice
 * before the first tfm_backend_cuda call to choose another). Start-up is not
 * thread-safe; see cuda_internal.cuh for threads and errors.
 */
#include "cuda/cuda_internal.cuh"

#include <string.h>

#ifndef TFM_CUDA_ARCHS
#define TFM_CUDA_ARCHS "?"
#endif

/* cuBLASLt's workspace: 32 MiB is what NVIDIA recommends for Hopper. */
#define LT_WORKSPACE_BYTES ((size_t)32 << 20)

static int g_state;          /* 0: not started, 1: ready, -1: unusable (g_why says why) */
static char g_why[512];
static cudaStream_t g_stream;
static cublasLtHandle_t g_lt;
static void *g_lt_ws;
static void *g_scratch;
static size_t g_scratch_bytes;

void tfm_cuda_fail(const char *call, const char *file, int line, const char *msg) {
    fflush(stdout);
    fprintf(stderr, "cuda: %s failed at %s:%d: %s\n", call, file, line, msg ? msg : "(no message)");
    abort();
}

cudaStream_t tfm_cuda_stream(void) { return g_stream; }
cublasLtHandle_t tfm_cuda_lt(void) { return g_lt; }
void *tfm_cuda_lt_workspace(size_t *bytes) {
    *bytes = LT_WORKSPACE_BYTES;
    return g_lt_ws;
}

void *tfm_cuda_scratch(size_t bytes) {
    if (bytes <= g_scratch_bytes) return g_scratch;
    size_t grow = g_scratch_bytes * 2 > bytes ? g_scratch_bytes * 2 : bytes;
    /* Queued ops may still read the old buffer. */
    TFM_CUDA_CHECK(cudaStreamSynchronize(g_stream));
    TFM_CUDA_CHECK(cudaFree(g_scratch));
    g_scratch = NULL;
    TFM_CUDA_CHECK(cudaMalloc(&g_scratch, grow));
    g_scratch_bytes = grow;
    return g_scratch;
}

/* ------------------------------------------------------------------ memory */

static void *cu_alloc(size_t bytes) {
    /* Never a NULL for 0 bytes (as the CPU backend), and a multiple of 256 so
     * vector loads at the end of a buffer stay inside it. */
    size_t rounded = (bytes + 255) & ~(size_t)255;
    if (!rounded) rounded = 256;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, rounded);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError(); /* not sticky: clear it, the caller handles NULL */
        return NULL;
    }
    TFM_CUDA_CHECK(e);
    TFM_CUDA_CHECK(cudaMemsetAsync(p, 0, rounded, g_stream));
    return p;
}

static void cu_free(void *p) {
    if (p) TFM_CUDA_CHECK(cudaFree(p)); /* cudaFree waits for work that may use p */
}

/* From pageable host memory the copy is staged before cudaMemcpyAsync
 * returns, so the caller may reuse src_host at once; the device sees the data
 * in stream order. */
static void cu_upload(void *dst, const void *src_host, size_t bytes) {
    if (bytes) TFM_CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, g_stream));
}

static void cu_download(void *dst_host, const void *src, size_t bytes) {
    if (bytes) TFM_CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    TFM_CUDA_CHECK(cudaStreamSynchronize(g_stream)); /* the data is the host's on return */
}

/* Unlike the CPU's memmove, the ranges must not overlap (no caller needs it). */
static void cu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) TFM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream));
}

static void cu_zero(void *dst, size_t bytes) {
    if (bytes) TFM_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, g_stream));
}

static void cu_sync(void) { TFM_CUDA_CHECK(cudaStreamSynchronize(g_stream)); }

/* Strided rows (the KV-cache append): one 2-D copy. */
static void cu_copy_rows(float *dst, long dst_row, const float *src, long src_row, size_t width, int rows) {
    if (!width || rows <= 0) return;
    TFM_CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)dst_row * sizeof(float), src, (size_t)src_row * sizeof(float),
                                     width * sizeof(float), (size_t)rows, cudaMemcpyDeviceToDevice, g_stream));
}

/* dst[r, i] = src[from[r], i]: one block row per destination row. */
__global__ void gather_rows_kernel(float *dst, const float *src, long row, size_t width, const int32_t *from) {
    int r = blockIdx.y;
    const float *s = src + (size_t)from[r] * row;
    float *d = dst + (size_t)r * row;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < width; i += (size_t)gridDim.x * blockDim.x)
        d[i] = s[i];
}

/* One block per row: each thread keeps its best (value, index), then a tree
 * in shared memory; ties go to the lower index, as on the CPU. */
__global__ void argmax_rows_kernel(int32_t *out, const float *x, int V, int sa, int sb, int sc) {
    __shared__ float val[TFM_CUDA_THREADS];
    __shared__ int idx[TFM_CUDA_THREADS];
    const float *row = x + (size_t)blockIdx.x * V;
    float bv = 0.0f;
    int bi = -1;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        if (v == sa || v == sb || v == sc) continue;
        float f = row[v];
        if (bi < 0 || f > bv) bv = f, bi = v; /* v grows: the first maximum stays */
    }
    val[threadIdx.x] = bv;
    idx[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = val[threadIdx.x + s];
            int oi = idx[threadIdx.x + s];
            int mi = idx[threadIdx.x];
            if (oi >= 0 && (mi < 0 || ov > val[threadIdx.x] || (ov == val[threadIdx.x] && oi < mi))) {
                val[threadIdx.x] = ov;
                idx[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = idx[0];
}

static void cu_argmax_rows(int32_t *out, const float *x, int N, int V, int skip_a, int skip_b, int skip_c) {
    if (N <= 0) return;
    argmax_rows_kernel<<<(unsigned)N, TFM_CUDA_THREADS, 0, g_stream>>>(out, x, V, skip_a, skip_b, skip_c);
    TFM_CUDA_LAUNCHED();
}

/* Beam candidates: one block per row. The row's log-sum-exp (max, then the
 * sum of exp), then k rounds of a block argmax over the ids not yet taken
 * (k = 2 x beam is small; each round rescans the row, which stays in L2). */
__device__ static void block_best(float *sv, int *si, float v, int i) {
    sv[threadIdx.x] = v;
    si[threadIdx.x] = i;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = sv[threadIdx.x + s];
            int oi = si[threadIdx.x + s], mi = si[threadIdx.x];
            if (oi >= 0 && (mi < 0 || ov > sv[threadIdx.x] || (ov == sv[threadIdx.x] && oi < mi))) {
                sv[threadIdx.x] = ov;
                si[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
}

__global__ void topk_logprobs_kernel(int32_t *ids, float *vals, const float *x, int V, int k, int sa, int sb,
                                     int sc) {
    extern __shared__ int taken[]; /* [k] */
    __shared__ float sv[TFM_CUDA_THREADS];
    __shared__ int si[TFM_CUDA_THREADS];
    const float *row = x + (size_t)blockIdx.x * V;
    float m = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, row[v]);
    sv[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sv[threadIdx.x] = fmaxf(sv[threadIdx.x], sv[threadIdx.x + s]);
        __syncthreads();
    }
    float mx = sv[0];
    __syncthreads();
    float sum = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += expf(row[v] - mx);
    sv[threadIdx.x] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sv[threadIdx.x] += sv[threadIdx.x + s];
        __syncthreads();
    }
    float lse = mx + logf(sv[0]);
    __syncthreads();
    for (int j = 0; j < k; j++) {
        float bv = 0.0f;
        int bi = -1;
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            if (v == sa || v == sb || v == sc) continue;
            int used = 0;
            for (int c = 0; c < j; c++) used |= taken[c] == v;
            if (used) continue;
            float f = row[v];
            if (bi < 0 || f > bv) bv = f, bi = v;
        }
        block_best(sv, si, bv, bi);
        if (threadIdx.x == 0) {
            taken[j] = si[0];
            ids[(size_t)blockIdx.x * k + j] = si[0];
            vals[(size_t)blockIdx.x * k + j] = sv[0] - lse;
        }
        __syncthreads();
    }
}

static void cu_topk_logprobs(int32_t *ids, float *vals, const float *x, int N, int V, int k, int skip_a,
                             int skip_b, int skip_c) {
    if (N <= 0 || k <= 0) return;
    topk_logprobs_kernel<<<(unsigned)N, TFM_CUDA_THREADS, (size_t)k * sizeof(int), g_stream>>>(ids, vals, x, V, k,
                                                                                            skip_a, skip_b, skip_c);
    TFM_CUDA_LAUNCHED();
}

static void cu_gather_rows(float *dst, const float *src, long row, size_t width, const int32_t *from, int n) {
    if (!width || n <= 0) return;
    unsigned bx = tfm_cuda_blocks(width, TFM_CUDA_THREADS);
    if (bx > 64) bx = 64;
    gather_rows_kernel<<<dim3(bx, (unsigned)n), TFM_CUDA_THREADS, 0, g_stream>>>(dst, src, row, width, from);
    TFM_CUDA_LAUNCHED();
}

/* Every op of a CPU model exists here, so every configuration runs. */
static int cu_supports(const tfm_config *cfg) {
    (void)cfg;
    return 1;
}

/* Filled by name in fill_table() (C++ has no designated initialisers before
 * C++20, and a positional list would silently accept two swapped ops of the
 * same type). */
static tfm_backend cuda_backend;

static void fill_table(tfm_backend *t) {
    memset(t, 0, sizeof *t);
    t->name = "cuda";
    t->supports = cu_supports;
    t->host_memory = 0;
    t->set_matmul_precision = tfm_cuda_set_matmul_precision;
    t->alloc = cu_alloc;
    t->free = cu_free;
    t->upload = cu_upload;
    t->download = cu_download;
    t->copy = cu_copy;
    t->zero = cu_zero;
    t->sync = cu_sync;
    t->copy_rows = cu_copy_rows;
    t->gather_rows = cu_gather_rows;
    t->argmax_rows = cu_argmax_rows;
    t->topk_logprobs = cu_topk_logprobs;
    t->global_norm = tfm_cuda_global_norm;
    t->scale = tfm_cuda_scale;
    t->add = tfm_cuda_add;
    t->adam_update = tfm_cuda_adam_update;
    t->gemm = tfm_cuda_gemm;
    t->linear_forward = tfm_cuda_linear_forward;
    t->linear_backward = tfm_cuda_linear_backward;
    t->embedding_forward = tfm_cuda_embedding_forward;
    t->embedding_backward = tfm_cuda_embedding_backward;
    t->positions_forward = tfm_cuda_positions_forward;
    t->positions_backward = tfm_cuda_positions_backward;
    t->rope = tfm_cuda_rope;
    t->layernorm_forward = tfm_cuda_layernorm_forward;
    t->layernorm_backward = tfm_cuda_layernorm_backward;
    t->activation_forward = tfm_cuda_activation_forward;
    t->activation_backward = tfm_cuda_activation_backward;
    t->dropout = tfm_cuda_dropout;
    t->residual_dropout = tfm_cuda_residual_dropout;
    t->attention_forward = tfm_cuda_attention_forward;
    t->attention_backward = tfm_cuda_attention_backward;
    t->xent_forward = tfm_cuda_xent_forward;
    t->xent_backward = tfm_cuda_xent_backward;
    t->log_softmax = tfm_cuda_log_softmax;
}

/* ---------------------------------------------------------------- start-up */

__global__ void probe_kernel(int *flag) { *flag = 1; }

/* Sets g_why and returns 0 when a start-up call fails (these failures mean
 * "no usable GPU here", which the caller handles, so they do not abort). */
static int start_failed(const char *what, cudaError_t e) {
    snprintf(g_why, sizeof g_why, "%s: %s", what, cudaGetErrorString(e));
    return 0;
}

static int start(void) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) return start_failed("no CUDA device (cudaGetDeviceCount)", e);
    if (count == 0) {
        snprintf(g_why, sizeof g_why, "no CUDA device");
        return 0;
    }
    int dev = 0;
    cudaDeviceProp prop;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess) return start_failed("cudaGetDevice", e);
    if ((e = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess) return start_failed("cudaGetDeviceProperties", e);
    if ((e = cudaStreamCreate(&g_stream)) != cudaSuccess) return start_failed("cudaStreamCreate", e);

    /* A GPU older than every architecture this build carries has no kernel
     * image: launch a probe so that this shows up here, as a reason, and
     * not as an abort inside the first op. */
    int *flag = NULL, host_flag = 0;
    if ((e = cudaMalloc(&flag, sizeof *flag)) != cudaSuccess) return start_failed("cudaMalloc", e);
    probe_kernel<<<1, 1, 0, g_stream>>>(flag);
    e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpyAsync(&host_flag, flag, sizeof host_flag, cudaMemcpyDeviceToHost, g_stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(g_stream);
    cudaFree(flag); /* unchecked: the probe's own error, if any, is the one to report */
    if (e != cudaSuccess || host_flag != 1) {
        snprintf(g_why, sizeof g_why,
                 "cannot run kernels on %s (sm_%d%d); this build has CUDA architectures %s "
                 "(configure with -DCMAKE_CUDA_ARCHITECTURES=%d%d): %s",
                 prop.name, prop.major, prop.minor, TFM_CUDA_ARCHS, prop.major, prop.minor,
                 cudaGetErrorString(e));
        return 0;
    }

    cublasStatus_t s = cublasLtCreate(&g_lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(g_why, sizeof g_why, "cublasLtCreate: %s", cublasLtGetStatusString(s));
        return 0;
    }
    if ((e = cudaMalloc(&g_lt_ws, LT_WORKSPACE_BYTES)) != cudaSuccess)
        return start_failed("cudaMalloc of the cuBLASLt workspace", e);
    fill_table(&cuda_backend);
    return 1;
}

/* backend.h: the table, or NULL with *why set when no GPU here can run it.
 * The first call starts the backend (not thread-safe); later calls return the
 * same answer. */
extern "C" const tfm_backend *tfm_backend_cuda(const char **why) {
    if (g_state == 0) g_state = start() ? 1 : -1;
    if (g_state < 0) {
        if (why) *why = g_why;
        return NULL;
    }
    return &cuda_backend;
}
