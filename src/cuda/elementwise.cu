/*
 * elementwise.cu: ReLU and exact-erf GELU, dropout and the residual
 * connection with dropout on the GPU (src/ops/activation.c on the device).
 *
 *   in, out, din, dout, x, y [n]   (any shape, flattened)
 *
 * Every op is one element-wise function f(i, a[i], b[i]) run by tfm_cuda_map_kernel
 * (cuda_internal.cuh),
 * which moves four elements per load and store (float4) when all the
 * pointers are 16-byte aligned, the rest (n % 4, or everything when a pointer
 * is not aligned) one at a time through the same f, so the result does not
 * depend on the path. These kernels only move memory: scalar loads left them
 * at a third of the bandwidth.
 *
 * Dropout draws keep/drop from the device port of the counter-based RNG
 * (cuda_internal.cuh) with the element index, so the masks are the CPU's bit
 * for bit; the kept values are scaled with one correctly rounded multiply, and
 * the residual sum is a separate rounded add (no fused multiply-add), so the
 * outputs are the CPU's bit for bit too. Each element is read before it is
 * written, by the same thread, so out may alias in (and din may alias dout)
 * as the contracts allow.
 */
#include "cuda/cuda_internal.cuh"

/* ----------------------------------------------------------- activations */

struct relu_fwd {
    __device__ float operator()(size_t, float x, float) const { return x > 0.0f ? x : 0.0f; }
};
struct gelu_fwd {
    __device__ float operator()(size_t, float x, float) const {
        return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
    }
};
/* a = dout, b = in */
struct relu_bwd {
    __device__ float operator()(size_t, float dy, float x) const { return x > 0.0f ? dy : 0.0f; }
};
struct gelu_bwd {
    __device__ float operator()(size_t, float dy, float x) const {
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
        float pdf = expf(-0.5f * x * x) * 0.39894228040143267794f;
        return dy * (cdf + x * pdf);
    }
};

/* out[n] = act(in[n]) (ReLU or GELU, erf form). Device pointers. */
void tfm_cuda_activation_forward(float *out, const float *in, size_t n, tfm_act_kind kind) {
    if (n == 0) return;
    if (kind == TFM_OP_RELU) tfm_cuda_map<1>(out, in, NULL, n, relu_fwd());
    else tfm_cuda_map<1>(out, in, NULL, n, gelu_fwd());
}

/* din[n] = dout[n] * act'(in[n])   (=; din may alias dout). Device pointers. */
void tfm_cuda_activation_backward(float *din, const float *dout, const float *in, size_t n, tfm_act_kind kind) {
    if (n == 0) return;
    if (kind == TFM_OP_RELU) tfm_cuda_map<2>(din, dout, in, n, relu_bwd());
    else tfm_cuda_map<2>(din, dout, in, n, gelu_bwd());
}

/* --------------------------------------------------------------- dropout */

/* a = in: a * keep(i) / (1 - p). key: of (seed, stream) (in a recorded step
 * made from the seed's slot per element: these run twice a step). */
struct dropout_op {
    tfm_cuda_drop_key key;
    float p, scale;
    __device__ float operator()(size_t i, float x, float) const {
        return tfm_cuda_rng_uniform_key(key.get(), i) >= p ? __fmul_rn(x, scale) : 0.0f;
    }
};
/* a = x, b = y: x + dropout(y), two roundings as on the CPU. */
struct residual_dropout_op {
    tfm_cuda_drop_key key;
    float p, scale;
    __device__ float operator()(size_t i, float x, float y) const {
        float kept = tfm_cuda_rng_uniform_key(key.get(), i) >= p ? __fmul_rn(y, scale) : 0.0f;
        return __fadd_rn(x, kept);
    }
};
struct add_op {
    __device__ float operator()(size_t, float x, float y) const { return __fadd_rn(x, y); }
};

/* out[n] = in[n] * keep(n) / (1 - p), keep(n) = uniform(seed, stream, n) >= p;
 * p == 0 copies. out may alias in. Device pointers. */
void tfm_cuda_dropout(float *out, const float *in, size_t n, float p, uint64_t seed, uint64_t stream) {
    if (n == 0) return;
    if (p <= 0) {
        if (out != in)
            TFM_CUDA_CHECK(cudaMemcpyAsync(out, in, n * sizeof(float), cudaMemcpyDeviceToDevice, tfm_cuda_stream()));
        return;
    }
    dropout_op op;
    op.key = tfm_cuda_drop_key_make(seed, stream);
    op.p = p;
    op.scale = (float)(1.0 / (1.0 - p)); /* as the CPU rounds it */
    tfm_cuda_map<1>(out, in, NULL, n, op);
}

/* out[n] = x[n] + dropout(y)[n]; out may alias x. Device pointers. */
void tfm_cuda_residual_dropout(float *out, const float *x, const float *y, size_t n, float p, uint64_t seed,
                               uint64_t stream) {
    if (n == 0) return;
    if (p <= 0) {
        tfm_cuda_map<2>(out, x, y, n, add_op());
        return;
    }
    residual_dropout_op op;
    op.key = tfm_cuda_drop_key_make(seed, stream);
    op.p = p;
    op.scale = (float)(1.0 / (1.0 - p));
    tfm_cuda_map<2>(out, x, y, n, op);
}
