/*
 * backend.cu: the CUDA backend's table: start-up on the current device, the
 * one stream every op is queued on, the cuBLASLt handle and its workspace,
 * memory (alloc, upload, download, copy, zero, sync) and error reporting.
 *
 * The ops themselves live beside this file, one file per family (gemm.cu,
 * elementwise.cu, layernorm.cu, fused.cu, embedding.cu, attention.cu, xent.cu,
 * adam.cu), each with the contract of src/ops/ops_decl.h (float versions).
 * Every pointer an op takes is device memory from `alloc`, token ids,
 * positions and masks included.
 *
 * It does not pick a GPU: it runs on the current device (cudaSetDevice
 * before the first tfm_backend_cuda call to choose another). Start-up is not
 * thread-safe; see cuda_internal.cuh for threads and errors.
 */
#include "cuda/cuda_internal.cuh"

#include <limits.h>
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
    tfm_cuda_graphs_stale(); /* recorded steps hold the old address */
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
/* The writes of the table into device memory tell gemm.cu, whose bf16 copy
 * of the parameters is then no longer current if they hit them
 * (tfm_cuda_params_written; backend.h's params_lowp). */
static void cu_upload(void *dst, const void *src_host, size_t bytes) {
    tfm_cuda_params_written(dst, bytes);
    if (bytes) TFM_CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, g_stream));
}

static void cu_download(void *dst_host, const void *src, size_t bytes) {
    if (bytes) TFM_CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    TFM_CUDA_CHECK(cudaStreamSynchronize(g_stream)); /* the data is the host's on return */
}

/* Unlike the CPU's memmove, the ranges must not overlap (no caller needs it). */
static void cu_copy(void *dst, const void *src, size_t bytes) {
    tfm_cuda_params_written(dst, bytes);
    if (bytes && dst != src) TFM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream));
}

static void cu_zero(void *dst, size_t bytes) {
    tfm_cuda_params_written(dst, bytes);
    if (bytes) TFM_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, g_stream));
}

static void cu_sync(void) { TFM_CUDA_CHECK(cudaStreamSynchronize(g_stream)); }

/* Strided rows (the KV-cache append): one 2-D copy. */
static void cu_copy_rows(float *dst, long dst_row, const float *src, long src_row, size_t width, int rows) {
    if (!width || rows <= 0) return;
    tfm_cuda_params_written(dst, ((size_t)(rows - 1) * dst_row + width) * sizeof(float));
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

/* ---------------------------------------------- row argmax and top k (decoding)
 *
 *   x [N, V] logits    ids, vals [N, k]    out [N]
 *
 * Greedy decoding wants each row's argmax, beam search each row's k = 2 x beam
 * best ids with their log-probabilities; both skip up to three ids (pad, bos).
 * One block per row reads the row once: each thread walks its share in float4
 * loads, keeping the running log-sum-exp and its own k best in registers
 * (only values that reach its warp's bar, see topk_rows_kernel, are tried),
 * then rounds of a warp argmax merge the threads' lists (within each warp,
 * then across the warps). The CPU keeps the first of equal values in id
 * order; here candidates are compared on (value, then the lower id), a total
 * order, so the scan order does not matter and the ids come out the same. */

#define TOPK_THREADS 256 /* one block per row */
#define TOPK_WARPS (TOPK_THREADS / 32)
#define TOPK_UNROLL 8    /* float4 loads in flight per thread: 2 rows per SM keep ~64 KiB in flight */
#define TOPK_MAX 16      /* the largest k kept in registers (<= 29, the bar); larger k: the rescanning kernel */
#define TOPK_NONE INT_MAX /* the id of an empty list slot (value -inf): worse than any real id */

/* (v, i) before (bv, bi): the larger value, then the lower id. NaN is never before anything. */
__device__ __forceinline__ bool cand_before(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

/* A thread's KT best candidates, best first, in registers (KT is a template
 * argument so that every index is static). */
template <int KT>
struct topk_list {
    float v[KT];
    int i[KT];

    __device__ __forceinline__ void clear() {
#pragma unroll
        for (int j = 0; j < KT; j++) v[j] = -INFINITY, i[j] = TOPK_NONE;
    }
    /* Takes (f, id) unless the list is full of better ones or id is skipped
     * (the skip test is here, on the rare path, not on every element). */
    __device__ __forceinline__ void add(float f, int id, int sa, int sb, int sc) {
        if (!cand_before(f, id, v[KT - 1], i[KT - 1]) || id == sa || id == sb || id == sc) return;
        v[KT - 1] = f, i[KT - 1] = id;
#pragma unroll
        for (int j = KT - 1; j > 0; j--) /* one bubble pass: the rest is sorted */
            if (cand_before(v[j], i[j], v[j - 1], i[j - 1])) {
                float tv = v[j];
                int ti = i[j];
                v[j] = v[j - 1], i[j] = i[j - 1];
                v[j - 1] = tv, i[j - 1] = ti;
            }
    }
    /* One round of the merge: every lane of the warp gets the best head of
     * the 32 lists in (bv, bi), and the lane that held it drops it. Real ids
     * are in one list only; empty slots (TOPK_NONE) win only when every list
     * is empty, and then dropping them changes nothing. */
    __device__ __forceinline__ void pop_warp_best(float &bv, int &bi) {
        bv = v[0], bi = i[0];
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (cand_before(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        if (i[0] != bi) return;
#pragma unroll
        for (int j = 0; j < KT - 1; j++) v[j] = v[j + 1], i[j] = i[j + 1];
        v[KT - 1] = -INFINITY, i[KT - 1] = TOPK_NONE;
    }
};

/* The k-th largest (1 <= k <= 32) of the lanes' values x, in every lane: a
 * bitonic sort across the warp, descending. */
__device__ __forceinline__ float warp_kth_largest(float x, int k) {
    int lane = threadIdx.x & 31;
    for (int size = 2; size <= 32; size <<= 1)
        for (int j = size >> 1; j > 0; j >>= 1) {
            float y = __shfl_xor_sync(0xffffffffu, x, j);
            bool desc = (lane & size) == 0, low = (lane & j) == 0;
            x = low == desc ? fmaxf(x, y) : fminf(x, y);
        }
    return __shfl_sync(0xffffffffu, x, k - 1);
}

/* Running log-sum-exp: the row so far is m + log(s), s = sum exp(x - m).
 * Adds n values whose maximum is bm (-inf values add nothing). */
template <int n>
__device__ __forceinline__ void lse_add(float &m, float &s, const float (&x)[n], float bm) {
    float hi = fmaxf(m, bm);
    if (hi == -INFINITY) return; /* all -inf so far: exp(-inf - -inf) would be NaN */
    float t = s * expf(m - hi);
#pragma unroll
    for (int j = 0; j < n; j++) t += expf(x[j] - hi);
    m = hi, s = t;
}
/* (m, s) += (om, os). */
__device__ __forceinline__ void lse_merge(float &m, float &s, float om, float os) {
    float hi = fmaxf(m, om);
    if (hi == -INFINITY) return;
    s = s * expf(m - hi) + os * expf(om - hi);
    m = hi;
}

/* Block n: the k <= KT best of row n (skipping sa, sb, sc) into ids[n, 0..k),
 * and with LOGPROBS their x - logsumexp(row) into vals[n, 0..k). A slot with
 * no candidate (k above V minus the skipped ids) gets id -1. */
template <int KT, bool LOGPROBS>
__global__ void __launch_bounds__(TOPK_THREADS)
    topk_rows_kernel(int32_t *ids, float *vals, const float *x, int V, int k, int sa, int sb, int sc) {
    __shared__ float wv[TOPK_WARPS][KT], wm[TOPK_WARPS], ws[TOPK_WARPS];
    __shared__ int wi[TOPK_WARPS][KT];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float *row = x + (size_t)blockIdx.x * V;
    topk_list<KT> best;
    best.clear();
    float m = -INFINITY, s = 0.0f;

    /* float4 loads need 16-byte addresses (rows start anywhere when V % 4 != 0):
     * the ids before the first aligned one ([0, head)) and after the last whole
     * vector ([tail, V)) are read one by one. */
    int head = (int)((4 - (((uintptr_t)row >> 2) & 3)) & 3);
    if (head > V) head = V;
    int nvec = (V - head) >> 2, tail = head + 4 * nvec;
    float lm = -INFINITY; /* the largest value this thread has read */
    for (int t = threadIdx.x; t < head + V - tail; t += TOPK_THREADS) {
        int v = t < head ? t : tail + t - head;
        float f[1] = {row[v]};
        if (LOGPROBS) lse_add(m, s, f, f[0]);
        lm = fmaxf(lm, f[0]);
        best.add(f[0], v, sa, sb, sc);
    }
    /* The warp's bar: a value its k-th best candidate is known to reach, so
     * that lanes test most values against it and leave their lists alone (a
     * lane's own list would take about KT / i of its i-th values, and the
     * warp would run every insertion that any of its lanes makes). The
     * (k+3)-th largest of the lanes' maxima: of those k+3 lanes at most 3 owe
     * their maximum to a skipped id, so at least k candidates of the warp
     * reach the bar. */
    float bar = -INFINITY;
    const float4 *vec = (const float4 *)(row + head);
    for (int q0 = 0; q0 < nvec; q0 += TOPK_UNROLL * TOPK_THREADS) { /* the same trip count in every thread */
        float f[4 * TOPK_UNROLL]; /* every load of the batch before any use; -inf past the row */
#pragma unroll
        for (int u = 0; u < TOPK_UNROLL; u++) {
            int q = q0 + u * TOPK_THREADS + threadIdx.x;
            float4 g = q < nvec ? __ldg(vec + q) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
            f[4 * u] = g.x, f[4 * u + 1] = g.y, f[4 * u + 2] = g.z, f[4 * u + 3] = g.w;
        }
        float bm = f[0];
#pragma unroll
        for (int j = 1; j < 4 * TOPK_UNROLL; j++) bm = fmaxf(bm, f[j]);
        if (LOGPROBS) lse_add(m, s, f, bm);
        lm = fmaxf(lm, bm);
        bar = fmaxf(bar, warp_kth_largest(lm, k + 3));
        if (bm < bar) continue; /* the usual case: nothing of this batch can be among the best */
#pragma unroll
        for (int u = 0; u < TOPK_UNROLL; u++) {
            int q = q0 + u * TOPK_THREADS + threadIdx.x;
            if (q >= nvec) break;
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (f[4 * u + e] >= bar) best.add(f[4 * u + e], head + 4 * q + e, sa, sb, sc);
        }
    }

    /* Each warp's k best (a warp's top k holds at most k from one lane, so
     * KT >= k per lane is enough) and its log-sum-exp, to shared memory. */
    for (int j = 0; j < k; j++) {
        float bv;
        int bi;
        best.pop_warp_best(bv, bi);
        if (lane == 0) wv[warp][j] = bv, wi[warp][j] = bi;
    }
    if (LOGPROBS) {
        for (int o = 16; o > 0; o >>= 1)
            lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
        if (lane == 0) wm[warp] = m, ws[warp] = s;
    }
    __syncthreads();
    if (warp != 0) return;

    /* Warp 0: lane w takes warp w's list (sorted), and the same rounds give the block's k best. */
    best.clear();
#pragma unroll
    for (int j = 0; j < KT; j++)
        if (lane < TOPK_WARPS && j < k) best.v[j] = wv[lane][j], best.i[j] = wi[lane][j];
    float lse = 0.0f;
    if (LOGPROBS) {
        m = lane < TOPK_WARPS ? wm[lane] : -INFINITY;
        s = lane < TOPK_WARPS ? ws[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1)
            lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
        lse = m + (float)log((double)s); /* as the CPU's row_logsumexp */
    }
    for (int j = 0; j < k; j++) {
        float bv;
        int bi;
        best.pop_warp_best(bv, bi);
        if (lane == 0) {
            ids[(size_t)blockIdx.x * k + j] = bi == TOPK_NONE ? -1 : bi;
            if (LOGPROBS) vals[(size_t)blockIdx.x * k + j] = bv - lse;
        }
    }
}

static void cu_argmax_rows(int32_t *out, const float *x, int N, int V, int skip_a, int skip_b, int skip_c) {
    if (N <= 0) return;
    topk_rows_kernel<1, false><<<(unsigned)N, TOPK_THREADS, 0, g_stream>>>(out, NULL, x, V, 1, skip_a, skip_b,
                                                                          skip_c);
    TFM_CUDA_LAUNCHED();
}

/* The fallback for k > TOPK_MAX: one block per row, the row's log-sum-exp
 * (max, then the sum of exp), then k rounds of a block argmax over the ids
 * not yet taken (each round rescans the row, which stays in L2: slow, but no
 * caller asks for such k today). */
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

__global__ void topk_logprobs_rescan_kernel(int32_t *ids, float *vals, const float *x, int V, int k, int sa,
                                            int sb, int sc) {
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

/* The list length is k rounded up to a power of two (a longer list than k
 * only keeps a few more candidates; the output is the same). */
static void cu_topk_logprobs(int32_t *ids, float *vals, const float *x, int N, int V, int k, int skip_a,
                             int skip_b, int skip_c) {
    if (N <= 0 || k <= 0) return;
    dim3 grid((unsigned)N), block(TOPK_THREADS);
    if (k <= 2)
        topk_rows_kernel<2, true><<<grid, block, 0, g_stream>>>(ids, vals, x, V, k, skip_a, skip_b, skip_c);
    else if (k <= 4)
        topk_rows_kernel<4, true><<<grid, block, 0, g_stream>>>(ids, vals, x, V, k, skip_a, skip_b, skip_c);
    else if (k <= 8)
        topk_rows_kernel<8, true><<<grid, block, 0, g_stream>>>(ids, vals, x, V, k, skip_a, skip_b, skip_c);
    else if (k <= TOPK_MAX)
        topk_rows_kernel<TOPK_MAX, true><<<grid, block, 0, g_stream>>>(ids, vals, x, V, k, skip_a, skip_b, skip_c);
    else
        topk_logprobs_rescan_kernel<<<grid, TFM_CUDA_THREADS, (size_t)k * sizeof(int), g_stream>>>(
            ids, vals, x, V, k, skip_a, skip_b, skip_c);
    TFM_CUDA_LAUNCHED();
}

static void cu_gather_rows(float *dst, const float *src, long row, size_t width, const int32_t *from, int n) {
    if (!width || n <= 0) return;
    tfm_cuda_params_written(dst, ((size_t)(n - 1) * row + width) * sizeof(float));
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
    t->params_lowp = tfm_cuda_params_lowp;
    t->graph_begin = tfm_cuda_graph_begin;
    t->graph_end = tfm_cuda_graph_end;
    t->graph_launch = tfm_cuda_graph_launch;
    t->graph_free = tfm_cuda_graph_free;
    t->step_values = tfm_cuda_step_values;
    t->global_norm = tfm_cuda_global_norm;
    t->global_norm_to = tfm_cuda_global_norm_to;
    t->adam_update_clipped = tfm_cuda_adam_update_clipped;
    t->scale = tfm_cuda_scale;
    t->add = tfm_cuda_add;
    t->adam_update = tfm_cuda_adam_update;
    t->gemm = tfm_cuda_gemm;
    t->linear_forward = tfm_cuda_linear_forward;
    t->linear_backward = tfm_cuda_linear_backward;
    t->linear_keep_bytes = tfm_cuda_linear_keep_bytes;
    t->linear_forward_keep = tfm_cuda_linear_forward_keep;
    t->linear_backward_kept = tfm_cuda_linear_backward_kept;
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
    t->residual_dropout_layernorm = tfm_cuda_residual_dropout_layernorm;
    t->layernorm_backward_dropout = tfm_cuda_layernorm_backward_dropout;
    t->activation_dropout_forward = tfm_cuda_activation_dropout_forward;
    t->activation_dropout_backward = tfm_cuda_activation_dropout_backward;
    t->attention_forward = tfm_cuda_attention_forward;
    t->attention_backward = tfm_cuda_attention_backward;
    t->attention_tiled_scratch = tfm_cuda_attention_tiled_scratch;
    t->attention_tiled_preferred = tfm_cuda_attention_tiled_preferred;
    t->attention_tiled_forward = tfm_cuda_attention_tiled_forward;
    t->attention_tiled_backward = tfm_cuda_attention_tiled_backward;
    t->xent_forward = tfm_cuda_xent_forward;
    t->xent_forward_acc = tfm_cuda_xent_forward_acc;
    t->xent_backward = tfm_cuda_xent_backward;
    t->logits_loss_forward = tfm_cuda_logits_loss_forward;
    t->logits_backward = tfm_cuda_logits_backward;
    t->ffn_forward = tfm_cuda_ffn_forward; /* ffn.cu */
    t->ffn_in_keep = tfm_cuda_ffn_in_keep;
    t->ffn_backward = tfm_cuda_ffn_backward;
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
