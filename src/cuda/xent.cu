/*
 * xent.cu: log-softmax and label-smoothed cross-entropy over the vocabulary
 * on the GPU (src/ops/xent.c on the device).
 *
 *   logits, dlogits, out [N, V]    targets [N] (device)    lse [N]
 *
 * One block per row. Each row is read once in the forward (the logits of a
 * training step are 3.8 GB): every thread keeps an online log-sum-exp of its
 * elements (the running max in float, the sum of exp(x - max) in double,
 * rescaled by exp(old max - new max) when the max grows) and the plain sum of
 * its elements, which gives the label smoothing term without a second pass:
 * sum_v (x_v - lse) = sum_v x_v - V lse. The block then rescales every
 * thread's sum to the row's max and adds them. This is the CPU's arithmetic
 * up to rounding (max in float, lse = max + (float)log(sum), the per-row loss
 * in double); the exponentials of four elements are added in float before
 * they join the double sum, which costs ~1e-7 relative. Rows are read as
 * float4 from the first 16-byte boundary on (any V).
 *
 * The forward writes each row's loss and whether it counts into scratch, then
 * one block adds the rows in a fixed order, so the returned loss is
 * reproducible run to run (it waits for that result). Rows whose target is
 * pad_id count nothing.
 */
#include "cuda/cuda_internal.cuh"

#define XENT_THREADS 256

/* The elements before x's first 16-byte boundary (0..3), at most V. */
__device__ __forceinline__ int head_len(const float *x, int V) {
    int h = (int)(((16 - ((uintptr_t)x & 15)) & 15) >> 2);
    return h < V ? h : V;
}

/* One thread's online log-sum-exp and sum over its elements of a row. */
struct lse_acc {
    float m;   /* running max */
    double s;  /* sum of exp(x - m) */
    double sx; /* sum of x */
};

__device__ __forceinline__ void acc_max(lse_acc *a, float mx) {
    if (mx > a->m) { /* rare after the first elements */
        a->s = a->s == 0 ? 0.0 : a->s * exp((double)a->m - (double)mx);
        a->m = mx;
    }
}
/* exp(x): expf, or with FAST the hardware's ex2.approx on x log2(e)
 * (__expf: ~2 ulp, and the rounding of x log2(e)), for logits that are
 * bf16 already (their own rounding is 2^-9 relative): the bf16 loss is
 * bound by these exponentials, not by its 1.9 GB of memory, with expf. */
template <bool FAST>
__device__ __forceinline__ float exp_(float x) { return FAST ? __expf(x) : expf(x); }

template <bool FAST = false>
__device__ __forceinline__ void acc_add1(lse_acc *a, float x) {
    acc_max(a, x);
    a->s += exp_<FAST>(x - a->m);
    a->sx += x;
}
template <bool FAST = false>
__device__ __forceinline__ void acc_add4(lse_acc *a, float4 x) {
    acc_max(a, fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w)));
    a->s += (exp_<FAST>(x.x - a->m) + exp_<FAST>(x.y - a->m)) + (exp_<FAST>(x.z - a->m) + exp_<FAST>(x.w - a->m));
    a->sx += (x.x + x.y) + (x.z + x.w);
}

/* The block's end of a row's reductions: every thread's partial sums rescaled
 * to the row's max and added; in every thread. */
__device__ void row_lse_finish(const lse_acc *a, float *shf, double *shd, float *lse, double *sum_x) {
    float mx = tfm_block_max(a->m, shf);
    double s = a->s == 0 ? 0.0 : a->s * exp((double)a->m - (double)mx); /* threads without elements add 0 */
    s = tfm_block_sum(s, shd);
    *sum_x = tfm_block_sum(a->sx, shd);
    *lse = mx + (float)log(s);
}

/* One read of the row x[V] by the block: *lse = max + (float)log(sum of exp),
 * *sum_x = the sum of the row (double); both in every thread. */
__device__ void row_lse(const float *x, int V, float *shf, double *shd, float *lse, double *sum_x) {
    lse_acc a = {-INFINITY, 0.0, 0.0};
    int head = head_len(x, V), n4 = (V - head) / 4, bd = (int)blockDim.x;
    if ((int)threadIdx.x < head) acc_add1(&a, x[threadIdx.x]);
    const float4 *x4 = (const float4 *)(x + head);
    int j = threadIdx.x;
    for (; j + bd < n4; j += 2 * bd) { /* two loads in flight per thread */
        float4 u = x4[j], w = x4[j + bd];
        acc_add4(&a, u);
        acc_add4(&a, w);
    }
    if (j < n4) acc_add4(&a, x4[j]);
    for (int v = head + 4 * n4 + threadIdx.x; v < V; v += bd) acc_add1(&a, x[v]);
    row_lse_finish(&a, shf, shd, lse, sum_x);
}

/* The two floats of a packed pair of bf16 (the lower address first). */
__device__ __forceinline__ float2 bf16x2_floats(unsigned u) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&u));
}

/* row_lse over a row of bf16 logits (16-byte aligned: the BF16 mode's
 * logits, rows of ld = a multiple of 8 elements): 8 elements per load, the
 * exponentials by __expf. */
__device__ void row_lse(const __nv_bfloat16 *x, int V, float *shf, double *shd, float *lse, double *sum_x) {
    lse_acc a = {-INFINITY, 0.0, 0.0};
    int n8 = V / 8;
    const uint4 *x8 = (const uint4 *)x;
    for (int j = threadIdx.x; j < n8; j += blockDim.x) {
        uint4 u = x8[j];
        float2 p0 = bf16x2_floats(u.x), p1 = bf16x2_floats(u.y), p2 = bf16x2_floats(u.z), p3 = bf16x2_floats(u.w);
        acc_add4<true>(&a, make_float4(p0.x, p0.y, p1.x, p1.y));
        acc_add4<true>(&a, make_float4(p2.x, p2.y, p3.x, p3.y));
    }
    for (int v = 8 * n8 + threadIdx.x; v < V; v += blockDim.x) acc_add1<true>(&a, __bfloat162float(x[v]));
    row_lse_finish(&a, shf, shd, lse, sum_x);
}

/* Row n of logits (T: float, or bf16 in BF16 mode's logits op) at row stride ld. */
__device__ __forceinline__ float logit_at(const float *x, int v) { return x[v]; }
__device__ __forceinline__ float logit_at(const __nv_bfloat16 *x, int v) { return __bfloat162float(x[v]); }

template <typename T>
__global__ void xent_rows_kernel(float *lse, double *row_loss, const T *logits, int ld, const int32_t *targets,
                                 int N, int V, int pad_id, float smoothing) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const T *x = logits + (long)n * ld;
        float l;
        double sum_x;
        row_lse(x, V, shf, shd, &l, &sum_x);
        if (threadIdx.x == 0) {
            int t = targets[n];
            lse[n] = l;
            if (t == pad_id) {
                row_loss[n] = 0;
                row_loss[N + n] = 0; /* counts nothing */
            } else {
                double nll = (double)l - logit_at(x, t);
                /* -mean_v log p_v = -(sum_v x_v - V lse) / V */
                double smooth = smoothing > 0 ? -(sum_x - (double)V * l) / V : 0.0;
                row_loss[n] = (1.0 - smoothing) * nll + smoothing * smooth;
                row_loss[N + n] = 1;
            }
        }
    }
}

/* out[0] = sum of row_loss[0..N), out[1] = sum of the counted flags; with
 * acc, out[0] += the sum instead (and out[1] is not written). */
__global__ void xent_total_kernel(double *out, const double *row_loss, int N, int acc) {
    __shared__ double sh[32];
    double s = 0, c = 0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        s += row_loss[n];
        c += row_loss[N + n];
    }
    s = tfm_block_sum(s, sh);
    c = tfm_block_sum(c, sh);
    if (threadIdx.x == 0) {
        if (acc) {
            out[0] += s;
        } else {
            out[0] = s;
            out[1] = c;
        }
    }
}

static unsigned row_grid(int N) { return (unsigned)(N < 65535 ? (N > 0 ? N : 1) : 65535); }

/* Saves lse[N]; returns the summed label-smoothed loss over the rows whose
 * target is not pad_id, and their number in *count. Waits for the result. */
double tfm_cuda_xent_forward(float *lse, const float *logits, const int32_t *targets, int N, int V, int pad_id,
                             float smoothing, long *count) {
    *count = 0;
    if (N <= 0) return 0.0;
    double *ws = (double *)tfm_cuda_scratch(((size_t)2 * N + 2) * sizeof(double));
    cudaStream_t st = tfm_cuda_stream();
    xent_rows_kernel<<<row_grid(N), XENT_THREADS, 0, st>>>(lse, ws, logits, V, targets, N, V, pad_id, smoothing);
    TFM_CUDA_LAUNCHED();
    xent_total_kernel<<<1, 1024, 0, st>>>(ws + 2 * (size_t)N, ws, N, 0);
    TFM_CUDA_LAUNCHED();
    double res[2];
    TFM_CUDA_CHECK(cudaMemcpyAsync(res, ws + 2 * (size_t)N, sizeof res, cudaMemcpyDeviceToHost, st));
    TFM_CUDA_CHECK(cudaStreamSynchronize(st));
    *count = (long)res[1];
    return res[0];
}

/* Saves lse[N] and adds the summed loss to *loss_acc (device); queued. */
template <typename T>
static void xent_acc(float *lse, const T *logits, int ld, const int32_t *targets, int N, int V, int pad_id,
                     float smoothing, double *loss_acc) {
    if (N <= 0) return;
    double *ws = (double *)tfm_cuda_scratch((size_t)2 * N * sizeof(double));
    cudaStream_t st = tfm_cuda_stream();
    xent_rows_kernel<<<row_grid(N), XENT_THREADS, 0, st>>>(lse, ws, logits, ld, targets, N, V, pad_id, smoothing);
    TFM_CUDA_LAUNCHED();
    xent_total_kernel<<<1, 1024, 0, st>>>(loss_acc, ws, N, 1);
    TFM_CUDA_LAUNCHED();
}

/* xent_forward_acc (backend.h): the same sum added to *loss_acc (device),
 * queued without waiting. */
void tfm_cuda_xent_forward_acc(float *lse, const float *logits, const int32_t *targets, int N, int V, int pad_id,
                               float smoothing, double *loss_acc) {
    xent_acc(lse, logits, V, targets, N, V, pad_id, smoothing, loss_acc);
}

/* The same over bf16 logits [N, ld] (ld a multiple of 8, rows 16-byte aligned). */
void tfm_cuda_xent_forward_acc_bf16(float *lse, const __nv_bfloat16 *logits, int ld, const int32_t *targets, int N,
                                    int V, int pad_id, float smoothing, double *loss_acc) {
    TFM_CUDA_ASSERT(ld >= V && ld % 8 == 0 && (uintptr_t)logits % 16 == 0);
    xent_acc(lse, logits, ld, targets, N, V, pad_id, smoothing, loss_acc);
}

/* vec: dlogits - logits is a multiple of 16 bytes, so the rows of both reach a
 * 16-byte boundary after the same head and go on as float4; otherwise every
 * element goes one at a time. */
__global__ void xent_backward_kernel(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                                     int N, int V, int pad_id, float smoothing, float scale, int vec) {
    int bd = (int)blockDim.x;
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = logits + (long)n * V;
        float *g = dlogits + (long)n * V;
        int t = targets[n], pad = t == pad_id;
        float uniform = smoothing / V, l = lse[n], hit = scale * (1 - smoothing);
        /* The CPU's two roundings: scale * (p - uniform), then the target's -= hit. Pad rows are 0, unread. */
        auto grad = [&](int v, float xv) {
            float gv = scale * (expf(xv - l) - uniform);
            return v == t ? gv - hit : gv;
        };
        /* Element-wise, each element read before the same thread writes it: dlogits may alias logits. */
        int head = vec ? head_len(g, V) : V, n4 = (V - head) / 4;
        for (int v = threadIdx.x; v < head; v += bd) g[v] = pad ? 0.0f : grad(v, x[v]);
        const float4 *x4 = (const float4 *)(x + head);
        float4 *g4 = (float4 *)(g + head);
        if (pad) {
            for (int j = threadIdx.x; j < n4; j += bd) g4[j] = make_float4(0, 0, 0, 0);
        } else {
            int j = threadIdx.x;
            for (; j < n4; j += 2 * bd) { /* two loads in flight per thread */
                int j2 = j + bd;
                float4 u = x4[j], w = j2 < n4 ? x4[j2] : u;
                int v = head + 4 * j, v2 = head + 4 * j2;
                g4[j] = make_float4(grad(v, u.x), grad(v + 1, u.y), grad(v + 2, u.z), grad(v + 3, u.w));
                if (j2 < n4)
                    g4[j2] = make_float4(grad(v2, w.x), grad(v2 + 1, w.y), grad(v2 + 2, w.z), grad(v2 + 3, w.w));
            }
        }
        for (int v = head + 4 * n4 + threadIdx.x; v < V; v += bd) g[v] = pad ? 0.0f : grad(v, x[v]);
    }
}

/* dlogits[N,V] (=, may alias logits) = scale * (softmax - smoothed one-hot);
 * zero on pad rows. Device pointers. */
void tfm_cuda_xent_backward(float *dlogits, const float *logits, const float *lse, const int32_t *targets, int N,
                            int V, int pad_id, float smoothing, float scale) {
    if (N <= 0) return;
    int vec = (((uintptr_t)dlogits - (uintptr_t)logits) & 15) == 0;
    xent_backward_kernel<<<row_grid(N), XENT_THREADS, 0, tfm_cuda_stream()>>>(dlogits, logits, lse, targets, N, V,
                                                                              pad_id, smoothing, scale, vec);
    TFM_CUDA_LAUNCHED();
}

/* As gemm.cu's: lo and hi rounded to bf16 (to nearest even), lo in the low half. */
__device__ __forceinline__ unsigned xent_bf16x2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&h);
}

/* xent_backward_kernel's gradient, rounded to bf16, into dst with row stride
 * ld = (V + 7) & ~7 (16-byte aligned rows): columns V..ld-1 are 0, as
 * to_bf16_kernel pads them. One thread per chunk of 8 columns: one 16-byte
 * store; two float4 loads when the row of logits is 16-byte aligned (V % 4
 * == 0 on an aligned buffer, the model's 37000), else 8 scalar loads (and at
 * the end of a row). logits is only read. */
/* Eight logits v0..v0+7 of row x (zeros past V): fp32 rows (ld V) as two
 * float4 loads when aligned, else one at a time. */
__device__ __forceinline__ void load8(float (&g)[8], const float *x, int v0, int V) {
    if (((uintptr_t)x & 15) == 0 && v0 + 8 <= V) {
        float4 lo = ((const float4 *)(x + v0))[0], hi = ((const float4 *)(x + v0))[1];
        g[0] = lo.x, g[1] = lo.y, g[2] = lo.z, g[3] = lo.w;
        g[4] = hi.x, g[5] = hi.y, g[6] = hi.z, g[7] = hi.w;
    } else {
#pragma unroll
        for (int u = 0; u < 8; u++) g[u] = v0 + u < V ? x[v0 + u] : 0.0f;
    }
}
/* The eight floats of a 16-byte chunk of bf16 (the lowest address first). */
__device__ __forceinline__ void unpack8(float (&g)[8], uint4 u) {
    float2 p0 = bf16x2_floats(u.x), p1 = bf16x2_floats(u.y), p2 = bf16x2_floats(u.z), p3 = bf16x2_floats(u.w);
    g[0] = p0.x, g[1] = p0.y, g[2] = p1.x, g[3] = p1.y, g[4] = p2.x, g[5] = p2.y, g[6] = p3.x, g[7] = p3.y;
}
/* bf16 rows (ld a multiple of 8, 16-byte aligned): one 16-byte load; the
 * columns past V are masked by the caller. */
__device__ __forceinline__ void load8(float (&g)[8], const __nv_bfloat16 *x, int v0, int V) {
    unpack8(g, *(const uint4 *)(x + v0));
}

/* T: float logits [N, V], or bf16 logits [N, ld] (dst may then alias them:
 * each thread reads its 8 columns before it writes them). */
template <typename T>
__global__ void xent_backward_bf16_kernel(__nv_bfloat16 *dst, int ld, const T *logits, int ld_in, const float *lse,
                                          const int32_t *targets, int N, int V, int pad_id, float smoothing,
                                          float scale) {
    int bd = (int)blockDim.x, chunks = ld / 8;
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const T *x = logits + (long)n * ld_in;
        uint4 *d = (uint4 *)(dst + (long)n * ld);
        int t = targets[n];
        if (t == pad_id) { /* pad rows are 0, unread */
            for (int c = threadIdx.x; c < chunks; c += bd) d[c] = make_uint4(0, 0, 0, 0);
            continue;
        }
        float uniform = smoothing / V, l = lse[n], hit = scale * (1 - smoothing);
        for (int c = threadIdx.x; c < chunks; c += bd) {
            int v0 = 8 * c;
            float g[8];
            load8(g, x, v0, V);
            /* The CPU's two roundings (as xent_backward_kernel), then bf16's. */
#pragma unroll
            for (int u = 0; u < 8; u++) {
                int v = v0 + u;
                float gv = scale * (exp_<sizeof(T) == 2>(g[u] - l) - uniform); /* bf16 logits: __expf */
                g[u] = v >= V ? 0.0f : v == t ? gv - hit : gv;
            }
            d[c] = make_uint4(xent_bf16x2(g[0], g[1]), xent_bf16x2(g[2], g[3]), xent_bf16x2(g[4], g[5]),
                              xent_bf16x2(g[6], g[7]));
        }
    }
}

/* dst[N, ld] (bf16, device, 16-byte aligned, ld = (V + 7) & ~7) = the
 * gradient tfm_cuda_xent_backward writes, rounded to bf16 (to nearest even),
 * with 0 in columns V..ld-1. logits is not written. Queued. */
void tfm_cuda_xent_backward_bf16(__nv_bfloat16 *dst, int ld, const float *logits, const float *lse,
                                 const int32_t *targets, int N, int V, int pad_id, float smoothing, float scale) {
    if (N <= 0) return;
    TFM_CUDA_ASSERT(ld == ((V + 7) & ~7) && (uintptr_t)dst % 16 == 0);
    xent_backward_bf16_kernel<<<row_grid(N), XENT_THREADS, 0, tfm_cuda_stream()>>>(dst, ld, logits, V, lse, targets,
                                                                                   N, V, pad_id, smoothing, scale);
    TFM_CUDA_LAUNCHED();
}

/* The same from bf16 logits [N, ld] (logits_loss_forward's in BF16 mode);
 * dst may alias logits. */
void tfm_cuda_xent_backward_bf16_from_bf16(__nv_bfloat16 *dst, int ld, const __nv_bfloat16 *logits, const float *lse,
                                           const int32_t *targets, int N, int V, int pad_id, float smoothing,
                                           float scale) {
    if (N <= 0) return;
    TFM_CUDA_ASSERT(ld >= V && ld % 8 == 0 && (uintptr_t)dst % 16 == 0 && (uintptr_t)logits % 16 == 0);
    xent_backward_bf16_kernel<<<row_grid(N), XENT_THREADS, 0, tfm_cuda_stream()>>>(dst, ld, logits, ld, lse, targets,
                                                                                   N, V, pad_id, smoothing, scale);
    TFM_CUDA_LAUNCHED();
}

__global__ void log_softmax_kernel(float *out, const float *logits, int N, int V) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = logits + (long)n * V;
        /* The reductions end in a barrier, so in-place writes below cannot race their reads. */
        float l;
        double sum_x;
        row_lse(x, V, shf, shd, &l, &sum_x);
        float *y = out + (long)n * V;
        for (int v = threadIdx.x; v < V; v += blockDim.x) y[v] = x[v] - l;
        __syncthreads(); /* the next row's reductions reuse shared memory */
    }
}

/* out[N,V] = log_softmax(logits) (out may alias logits). Device pointers. */
void tfm_cuda_log_softmax(float *out, const float *logits, int N, int V) {
    if (N <= 0) return;
    log_softmax_kernel<<<row_grid(N), XENT_THREADS, 0, tfm_cuda_stream()>>>(out, logits, N, V);
    TFM_CUDA_LAUNCHED();
}

/* ------------------------------------ the loss and its gradient in one pass */

/* A training step's loss and gradient over packed bf16 logits [N, ld] in one
 * read and one write (logits_loss_forward left the loss to logits_backward:
 * gemm.cu). The two kernels it replaces each read the 1.9 GB of the base
 * model's logits: the loss (row_lse) and the gradient
 * (xent_backward_bf16_kernel). Here one block per row copies its row into
 * shared memory as it takes the row's max; then, from shared memory, the sum
 * of exp(x - max) and of x (each 8 elements' sums in float, added in double:
 * the arithmetic of the two-kernel path up to rounding), lse = max +
 * (float)log(sum), the row's loss as xent_rows_kernel's, and the gradient as
 * xent_backward_bf16_kernel's, written over the row (pad rows: zeros). Rows
 * up to XENT_FUSED_SMEM bytes (the base model's 37,056 columns: 74 KB, three
 * blocks to an SM). */
#define XENT_FUSED_THREADS 512
#define XENT_FUSED_LOADS 4 /* 16-byte loads in flight per thread */
#define XENT_FUSED_SMEM (112 * 1024)

static int xent_fused_smem_optin(void) {
    static int optin = -1;
    if (optin < 0) {
        int dev = 0, v = 0;
        TFM_CUDA_CHECK(cudaGetDevice(&dev));
        TFM_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        optin = v;
    }
    return optin;
}

int tfm_cuda_xent_fused_fits(int ld) {
    size_t bytes = (size_t)ld * sizeof(__nv_bfloat16);
    return ld > 0 && ld % 8 == 0 && bytes <= XENT_FUSED_SMEM && (int)bytes + 1024 <= xent_fused_smem_optin();
}

__global__ void __launch_bounds__(XENT_FUSED_THREADS, 3) xent_fused_bf16_kernel(__nv_bfloat16 *logits, int ld,
                                                                             float *lse, double *row_loss,
                                                                             const int32_t *targets, int N, int V,
                                                                             int pad_id, float smoothing,
                                                                             float scale, const float *scale_slot) {
    extern __shared__ uint4 sh_row[]; /* [ld / 8] */
    __shared__ float shf[32];
    __shared__ double shd[32];
    int n = blockIdx.x, bd = (int)blockDim.x, chunks = ld / 8, t = targets[n];
    if (scale_slot) scale = *scale_slot; /* a recorded step's (graph.cu) */
    uint4 *row = (uint4 *)(logits + (long)n * ld);
    float mx = -INFINITY;
    for (int c0 = threadIdx.x; c0 < chunks; c0 += XENT_FUSED_LOADS * bd) {
        uint4 u[XENT_FUSED_LOADS]; /* the loads all in flight before the first use */
#pragma unroll
        for (int i = 0; i < XENT_FUSED_LOADS; i++)
            if (c0 + i * bd < chunks) u[i] = row[c0 + i * bd];
#pragma unroll
        for (int i = 0; i < XENT_FUSED_LOADS; i++) {
            int c = c0 + i * bd;
            if (c >= chunks) break;
            sh_row[c] = u[i];
            float g[8];
            unpack8(g, u[i]);
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (8 * c + k < V) mx = fmaxf(mx, g[k]);
        }
    }
    mx = tfm_block_max(mx, shf); /* its barriers also publish sh_row */
    double s = 0, sx = 0;
    for (int c = threadIdx.x; c < chunks; c += bd) {
        float g[8], e = 0, x = 0;
        unpack8(g, sh_row[c]);
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (8 * c + k < V) {
                e += __expf(g[k] - mx);
                x += g[k];
            }
        s += e, sx += x;
    }
    s = tfm_block_sum(s, shd);
    sx = tfm_block_sum(sx, shd);
    float l = mx + (float)log(s);
    if (threadIdx.x == 0) {
        if (lse) lse[n] = l;
        if (t == pad_id) {
            row_loss[n] = 0;
            row_loss[N + n] = 0;
        } else {
            double nll = (double)l - __bfloat162float(((const __nv_bfloat16 *)sh_row)[t]);
            double smooth = smoothing > 0 ? -(sx - (double)V * l) / V : 0.0;
            row_loss[n] = (1.0 - smoothing) * nll + smoothing * smooth;
            row_loss[N + n] = 1;
        }
    }
    float uniform = smoothing / V, hit = scale * (1 - smoothing);
    for (int c = threadIdx.x; c < chunks; c += bd) {
        float g[8];
        unpack8(g, sh_row[c]);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int v = 8 * c + k;
            float gv = scale * (__expf(g[k] - l) - uniform);
            g[k] = t == pad_id || v >= V ? 0.0f : v == t ? gv - hit : gv;
        }
        row[c] = make_uint4(xent_bf16x2(g[0], g[1]), xent_bf16x2(g[2], g[3]), xent_bf16x2(g[4], g[5]),
                            xent_bf16x2(g[6], g[7]));
    }
}

/* logits[N, ld] (bf16, device, 16-byte aligned; tfm_cuda_xent_fused_fits(ld))
 * becomes the gradient tfm_cuda_xent_backward_bf16_from_bf16 writes, and
 * *loss_acc (+=) and lse[N] (unless NULL) what tfm_cuda_xent_forward_acc_bf16
 * writes, in one kernel (and the loss's fixed-order sum). Queued. */
void tfm_cuda_xent_fused_bf16(__nv_bfloat16 *logits, int ld, float *lse, const int32_t *targets, int N, int V,
                              int pad_id, float smoothing, float scale, double *loss_acc) {
    const float *scale_slot = tfm_cuda_scale_slot(scale); /* NULL unless the step is being recorded */
    if (N <= 0) return;
    TFM_CUDA_ASSERT(tfm_cuda_xent_fused_fits(ld) && ld >= V && (uintptr_t)logits % 16 == 0);
    size_t smem = (size_t)ld * sizeof(__nv_bfloat16);
    static int allowed = 48 * 1024; /* the kernel's dynamic shared memory limit, raised once */
    if ((int)smem > allowed) {
        int room = xent_fused_smem_optin() - 1024; /* the optin limit counts the static shared memory too */
        int most = room < XENT_FUSED_SMEM ? room : XENT_FUSED_SMEM;
        TFM_CUDA_CHECK(cudaFuncSetAttribute(xent_fused_bf16_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, most));
        allowed = most;
    }
    double *ws = (double *)tfm_cuda_scratch((size_t)2 * N * sizeof(double));
    cudaStream_t st = tfm_cuda_stream();
    xent_fused_bf16_kernel<<<(unsigned)N, XENT_FUSED_THREADS, smem, st>>>(logits, ld, lse, ws, targets, N, V,
                                                                          pad_id, smoothing, scale, scale_slot);
    TFM_CUDA_LAUNCHED();
    xent_total_kernel<<<1, 1024, 0, st>>>(loss_acc, ws, N, 1);
    TFM_CUDA_LAUNCHED();
}
