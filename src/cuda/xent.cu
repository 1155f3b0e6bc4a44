/*
 * xent.cu: log-softmax and label-smoothed cross-entropy over the vocabulary
 * on the GPU (src/ops/xent.c on the device).
 *
 *   logits, dlogits, out [N, V]    targets [N] (device)    lse [N]
 *
 * One block per row. The log-sum-exp is computed as the CPU does: the max in
 * float, the sum of exponentials in double, lse = max + (float)log(sum); the
 * per-row loss in double. The forward writes each row's loss and whether it
 * counts into scratch, then one block adds the rows in a fixed order, so the
 * returned loss is reproducible run to run (it waits for that result).
 * Rows whose target is pad_id count nothing.
 */
#include "cuda/cuda_internal.cuh"

#define XENT_THREADS 256

/* max over the row in float, sum of exp in double (every thread gets the result). */
__device__ float row_logsumexp(const float *x, int V, float *shf, double *shd) {
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
    mx = tfm_block_max(mx, shf);
    double s = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(x[v] - mx);
    s = tfm_block_sum(s, shd);
    return mx + (float)log(s);
}

__global__ void xent_rows_kernel(float *lse, double *row_loss, const float *logits, const int32_t *targets, int N,
                                 int V, int pad_id, float smoothing) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = logits + (long)n * V;
        float l = row_logsumexp(x, V, shf, shd);
        int t = targets[n];
        double smooth = 0;
        if (smoothing > 0 && t != pad_id) {
            double sum_logp = 0;
            for (int v = threadIdx.x; v < V; v += blockDim.x) sum_logp += (double)x[v] - l;
            smooth = -tfm_block_sum(sum_logp, shd) / V;
        }
        if (threadIdx.x == 0) {
            lse[n] = l;
            if (t == pad_id) {
                row_loss[n] = 0;
                row_loss[N + n] = 0; /* counts nothing */
            } else {
                double nll = (double)l - x[t];
                row_loss[n] = (1.0 - smoothing) * nll + smoothing * smooth;
                row_loss[N + n] = 1;
            }
        }
    }
}

/* out[0] = sum of row_loss[0..N), out[1] = sum of the counted flags. */
__global__ void xent_total_kernel(double *out, const double *row_loss, int N) {
    __shared__ double sh[32];
    double s = 0, c = 0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        s += row_loss[n];
        c += row_loss[N + n];
    }
    s = tfm_block_sum(s, sh);
    c = tfm_block_sum(c, sh);
    if (threadIdx.x == 0) {
        out[0] = s;
        out[1] = c;
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
    xent_rows_kernel<<<row_grid(N), XENT_THREADS, 0, st>>>(lse, ws, logits, targets, N, V, pad_id, smoothing);
    TFM_CUDA_LAUNCHED();
    xent_total_kernel<<<1, 1024, 0, st>>>(ws + 2 * (size_t)N, ws, N);
    TFM_CUDA_LAUNCHED();
    double res[2];
    TFM_CUDA_CHECK(cudaMemcpyAsync(res, ws + 2 * (size_t)N, sizeof res, cudaMemcpyDeviceToHost, st));
    TFM_CUDA_CHECK(cudaStreamSynchronize(st));
    *count = (long)res[1];
    return res[0];
}

__global__ void xent_backward_kernel(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                                     int N, int V, int pad_id, float smoothing, float scale) {
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = logits + (long)n * V;
        float *g = dlogits + (long)n * V;
        int t = targets[n];
        if (t == pad_id) {
            for (int v = threadIdx.x; v < V; v += blockDim.x) g[v] = 0.0f;
            continue;
        }
        float uniform = smoothing / V, l = lse[n];
        /* Element-wise, each element read before it is written: dlogits may alias logits. */
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float gv = scale * (expf(x[v] - l) - uniform);
            if (v == t) gv -= scale * (1 - smoothing);
            g[v] = gv;
        }
    }
}

/* dlogits[N,V] (=, may alias logits) = scale * (softmax - smoothed one-hot);
 * zero on pad rows. Device pointers. */
void tfm_cuda_xent_backward(float *dlogits, const float *logits, const float *lse, const int32_t *targets, int N,
                            int V, int pad_id, float smoothing, float scale) {
    if (N <= 0) return;
    xent_backward_kernel<<<row_grid(N), XENT_THREADS, 0, tfm_cuda_stream()>>>(dlogits, logits, lse, targets, N, V,
                                                                              pad_id, smoothing, scale);
    TFM_CUDA_LAUNCHED();
}

__global__ void log_softmax_kernel(float *out, const float *logits, int N, int V) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = logits + (long)n * V;
        /* The reductions end in a barrier, so in-place writes below cannot race their reads. */
        float l = row_logsumexp(x, V, shf, shd);
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
