/*
 * elementwise.cu: ReLU and exact-erf GELU, dropout and the residual
 * connection with dropout on the GPU (src/ops/activation.c on the device).
 *
 *   in, out, din, dout, x, y [n]   (any shape, flattened)
 *
 * Dropout draws keep/drop from the device port of the counter-based RNG
 * (cuda_internal.cuh) with the element index, so the masks are the CPU's bit
 * for bit; the kept values are scaled with one correctly rounded multiply, and
 * the residual sum is a separate rounded add (no fused multiply-add), so the
 * outputs are the CPU's bit for bit too. Every kernel is element-wise, so out
 * may alias in (and din may alias dout) as the contracts allow.
 */
#include "cuda/cuda_internal.cuh"

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

__global__ void relu_forward_kernel(float *out, const float *in, size_t n) {
    GRID_STRIDE(i, n) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}
__global__ void gelu_forward_kernel(float *out, const float *in, size_t n) {
    GRID_STRIDE(i, n) {
        float x = in[i];
        out[i] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
    }
}
__global__ void relu_backward_kernel(float *din, const float *dout, const float *in, size_t n) {
    GRID_STRIDE(i, n) din[i] = in[i] > 0.0f ? dout[i] : 0.0f;
}
__global__ void gelu_backward_kernel(float *din, const float *dout, const float *in, size_t n) {
    GRID_STRIDE(i, n) {
        float x = in[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
        float pdf = expf(-0.5f * x * x) * 0.39894228040143267794f;
        din[i] = dout[i] * (cdf + x * pdf);
    }
}

/* out[n] = act(in[n]) (ReLU or GELU, erf form). Device pointers. */
void tfm_cuda_activation_forward(float *out, const float *in, size_t n, tfm_act_kind kind) {
    if (n == 0) return;
    unsigned blocks = tfm_cuda_blocks(n, TFM_CUDA_THREADS);
    if (kind == TFM_OP_RELU) relu_forward_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(out, in, n);
    else gelu_forward_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(out, in, n);
    TFM_CUDA_LAUNCHED();
}

/* din[n] = dout[n] * act'(in[n])   (=; din may alias dout). Device pointers. */
void tfm_cuda_activation_backward(float *din, const float *dout, const float *in, size_t n, tfm_act_kind kind) {
    if (n == 0) return;
    unsigned blocks = tfm_cuda_blocks(n, TFM_CUDA_THREADS);
    if (kind == TFM_OP_RELU)
        relu_backward_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(din, dout, in, n);
    else gelu_backward_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(din, dout, in, n);
    TFM_CUDA_LAUNCHED();
}

__global__ void dropout_kernel(float *out, const float *in, size_t n, float p, float scale, uint64_t seed,
                               uint64_t stream) {
    GRID_STRIDE(i, n) out[i] = tfm_cuda_rng_uniform(seed, stream, i) >= p ? __fmul_rn(in[i], scale) : 0.0f;
}

/* out[n] = in[n] * keep(n) / (1 - p), keep(n) = uniform(seed, stream, n) >= p;
 * p == 0 copies. out may alias in. Device pointers. */
void tfm_cuda_dropout(float *out, const float *in, size_t n, float p, uint64_t seed, uint64_t stream) {
    if (n == 0) return;
    if (p <= 0) {
        if (out != in)
            TFM_CUDA_CHECK(cudaMemcpyAsync(out, in, n * sizeof(float), cudaMemcpyDeviceToDevice, tfm_cuda_stream()));
        return;
    }
    float scale = (float)(1.0 / (1.0 - p)); /* as the CPU rounds it */
    dropout_kernel<<<tfm_cuda_blocks(n, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(out, in, n, p,
                                                                                                     scale, seed,
                                                                                                     stream);
    TFM_CUDA_LAUNCHED();
}

__global__ void residual_add_kernel(float *out, const float *x, const float *y, size_t n) {
    GRID_STRIDE(i, n) out[i] = x[i] + y[i];
}
__global__ void residual_dropout_kernel(float *out, const float *x, const float *y, size_t n, float p, float scale,
                                        uint64_t seed, uint64_t stream) {
    GRID_STRIDE(i, n) {
        float kept = tfm_cuda_rng_uniform(seed, stream, i) >= p ? __fmul_rn(y[i], scale) : 0.0f;
        out[i] = __fadd_rn(x[i], kept);
    }
}

/* out[n] = x[n] + dropout(y)[n]; out may alias x. Device pointers. */
void tfm_cuda_residual_dropout(float *out, const float *x, const float *y, size_t n, float p, uint64_t seed,
                               uint64_t stream) {
    if (n == 0) return;
    unsigned blocks = tfm_cuda_blocks(n, TFM_CUDA_THREADS);
    if (p <= 0) {
        residual_add_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(out, x, y, n);
    } else {
        float scale = (float)(1.0 / (1.0 - p));
        residual_dropout_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(out, x, y, n, p, scale, seed,
                                                                                    stream);
    }
    TFM_CUDA_LAUNCHED();
}
