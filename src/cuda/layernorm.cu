/*
 * layernorm.cu: LayerNorm over the last dimension on the GPU (src/ops/layernorm.c
 * on the device): biased variance, eps inside the square root.
 *
 *   in, out, din, dout [N, D]    w, b, dw, db [D]    mean, rstd [N]
 *
 * One warp per row for the statistics and din, with the CPU's mixture of
 * precisions: mean and variance accumulate in double (two passes, as the
 * CPU), and so do the two sums of the backward. The parameter gradients are
 * column sums over the rows, done by blocks that own 32 columns each and add
 * their row groups in a fixed order: deterministic, no atomics.
 */
#include "cuda/cuda_internal.cuh"

#define LN_WARPS 8 /* rows per block */

__global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *in, const float *w,
                                         const float *b, int N, int D, float eps) {
    int lane = threadIdx.x & 31;
    for (int n = blockIdx.x * LN_WARPS + (threadIdx.x >> 5); n < N; n += gridDim.x * LN_WARPS) {
        const float *x = in + (long)n * D;
        double m = 0;
        for (int i = lane; i < D; i += 32) m += x[i];
        m = tfm_warp_sum(m) / D;
        double var = 0;
        for (int i = lane; i < D; i += 32) var += (x[i] - m) * (x[i] - m);
        var = tfm_warp_sum(var) / D;
        float s = (float)(1.0 / sqrt(var + eps));
        float *y = out + (long)n * D;
        for (int i = lane; i < D; i += 32) y[i] = (float)((x[i] - m) * s) * w[i] + b[i];
        if (lane == 0) {
            mean[n] = (float)m;
            rstd[n] = s;
        }
    }
}

static unsigned row_blocks(int N) {
    long b = ((long)N + LN_WARPS - 1) / LN_WARPS;
    return (unsigned)(b > 65535 ? 65535 : b);
}

/* out[N,D] = (in - mean) * rstd * w + b; saves mean[N], rstd[N]. Device pointers. */
void tfm_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *w,
                                const float *b, int N, int D, float eps) {
    if (N <= 0 || D <= 0) return;
    layernorm_forward_kernel<<<row_blocks(N), 32 * LN_WARPS, 0, tfm_cuda_stream()>>>(out, mean, rstd, in, w, b, N,
                                                                                    D, eps);
    TFM_CUDA_LAUNCHED();
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w */
__global__ void layernorm_din_kernel(float *din, const float *dout, const float *in, const float *mean,
                                     const float *rstd, const float *w, int N, int D, int accumulate) {
    int lane = threadIdx.x & 31;
    for (int n = blockIdx.x * LN_WARPS + (threadIdx.x >> 5); n < N; n += gridDim.x * LN_WARPS) {
        const float *x = in + (long)n * D, *dy = dout + (long)n * D;
        float m = mean[n], s = rstd[n];
        double sum_g = 0, sum_gx = 0;
        for (int i = lane; i < D; i += 32) {
            double g = (double)dy[i] * w[i];
            sum_g += g;
            sum_gx += g * ((x[i] - m) * s);
        }
        float mg = (float)(tfm_warp_sum(sum_g) / D), mgx = (float)(tfm_warp_sum(sum_gx) / D);
        float *dx = din + (long)n * D;
        for (int i = lane; i < D; i += 32) {
            float xhat = (x[i] - m) * s;
            float v = s * (dy[i] * w[i] - mg - xhat * mgx);
            dx[i] = accumulate ? dx[i] + v : v;
        }
    }
}

/* dw[i] += sum_n dout * xhat, db[i] += sum_n dout: 32 columns per block, 16
 * row groups combined in a fixed order. */
__global__ void layernorm_dparams_kernel(float *dw, float *db, const float *dout, const float *in,
                                         const float *mean, const float *rstd, int N, int D) {
    __shared__ float pw[16][33], pb[16][33];
    int i = blockIdx.x * 32 + threadIdx.x;
    float sw = 0.0f, sb = 0.0f;
    if (i < D)
        for (int n = threadIdx.y; n < N; n += 16) {
            float dy = dout[(long)n * D + i];
            sw += dy * ((in[(long)n * D + i] - mean[n]) * rstd[n]);
            sb += dy;
        }
    pw[threadIdx.y][threadIdx.x] = sw;
    pb[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && i < D) {
        float tw = 0.0f, tb = 0.0f;
        for (int r = 0; r < 16; r++) {
            tw += pw[r][threadIdx.x];
            tb += pb[r][threadIdx.x];
        }
        dw[i] += tw;
        db[i] += tb;
    }
}

/* din[N,D] (= or += when accumulate); dw[D] +=; db[D] +=. Device pointers. */
void tfm_cuda_layernorm_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                                 const float *mean, const float *rstd, const float *w, int N, int D,
                                 int accumulate) {
    if (N <= 0 || D <= 0) return;
    cudaStream_t st = tfm_cuda_stream();
    layernorm_din_kernel<<<row_blocks(N), 32 * LN_WARPS, 0, st>>>(din, dout, in, mean, rstd, w, N, D, accumulate);
    TFM_CUDA_LAUNCHED();
    layernorm_dparams_kernel<<<(D + 31) / 32, dim3(32, 16), 0, st>>>(dw, db, dout, in, mean, rstd, N, D);
    TFM_CUDA_LAUNCHED();
}
