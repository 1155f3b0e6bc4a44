/*
 * adam.cu: the optimizer's flat-buffer ops on the GPU: the global L2 norm,
 * scaling, y += x, and one Adam/AdamW update (src/ops/adam.c on the device).
 *
 *   x, y, param, grad, m, v [n]   (flat buffers laid out like the parameters)
 *
 * The Adam update rounds exactly as the CPU's default build does (no fused
 * multiply-add: GCC in ISO C mode does not contract, and FP_FAST_FMAF is
 * unset without -march): every product and sum here is an explicit
 * round-to-nearest intrinsic, which nvcc never fuses, and sqrt and division
 * are IEEE (no fast math). With TFM_NATIVE=ON the CPU fuses and the two then
 * differ by an ulp.
 *
 * The norm accumulates in double in a fixed order (per-block partials, then
 * one block over the partials): reproducible run to run, though not in the
 * CPU's order, so it can differ from the CPU in the last bit of the float.
 */
#include "cuda/cuda_internal.cuh"

/* Partials of the norm: at most this many blocks. */
#define NORM_BLOCKS 1024

__global__ void sum_squares_kernel(double *partial, const float *x, size_t n) {
    __shared__ double sh[32];
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = tfm_block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* *norm = sqrt of the sum of the partials, rounded to float as the CPU's
 * (float)sqrt(total) (both square roots are correctly rounded). */
__global__ void sum_partials_kernel(float *norm, const double *partial, int count) {
    __shared__ double sh[32];
    double s = 0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = tfm_block_sum(s, sh);
    if (threadIdx.x == 0) *norm = (float)sqrt(s);
}

/* *norm_out (device) = sqrt(sum x^2) over x[n] (device), accumulated in
 * double; queued, no wait. The partials live in the scratch buffer, read by
 * the next kernel on the stream before anything else can reuse it. */
void tfm_cuda_global_norm_to(float *norm_out, const float *x, size_t n) {
    cudaStream_t st = tfm_cuda_stream();
    if (n == 0) {
        TFM_CUDA_CHECK(cudaMemsetAsync(norm_out, 0, sizeof *norm_out, st));
        return;
    }
    unsigned blocks = tfm_cuda_blocks(n, TFM_CUDA_THREADS * 8);
    if (blocks > NORM_BLOCKS) blocks = NORM_BLOCKS;
    double *partial = (double *)tfm_cuda_scratch(NORM_BLOCKS * sizeof(double) + sizeof(float));
    sum_squares_kernel<<<blocks, TFM_CUDA_THREADS, 0, st>>>(partial, x, n);
    TFM_CUDA_LAUNCHED();
    sum_partials_kernel<<<1, TFM_CUDA_THREADS, 0, st>>>(norm_out, partial, (int)blocks);
    TFM_CUDA_LAUNCHED();
}

/* The same, brought to the host; waits for the result. */
float tfm_cuda_global_norm(const float *x, size_t n) {
    if (n == 0) return 0.0f;
    float *slot = (float *)((double *)tfm_cuda_scratch(NORM_BLOCKS * sizeof(double) + sizeof(float)) + NORM_BLOCKS);
    tfm_cuda_global_norm_to(slot, x, n);
    float norm;
    TFM_CUDA_CHECK(cudaMemcpyAsync(&norm, slot, sizeof norm, cudaMemcpyDeviceToHost, tfm_cuda_stream()));
    TFM_CUDA_CHECK(cudaStreamSynchronize(tfm_cuda_stream()));
    return norm;
}

__global__ void scale_kernel(float *x, size_t n, float s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = x[i] * s;
}

/* x[n] *= s */
void tfm_cuda_scale(float *x, size_t n, float s) {
    if (n == 0) return;
    tfm_cuda_params_written(x, n * sizeof *x);
    scale_kernel<<<tfm_cuda_blocks(n, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(x, n, s);
    TFM_CUDA_LAUNCHED();
}

/* y[i] += x[i] for i < n. vec: both pointers 16-byte aligned, so the first
 * 4*(n/4) elements go as float4 (as elementwise.cu's map_kernel: the kernel
 * only moves memory, and scalar accesses leave it at a fraction of the
 * bandwidth); the n % 4 left over, or all of them when !vec, one at a time.
 * The same rounded add either way. */
__global__ void add_kernel(float *y, const float *x, size_t n, int vec) {
    size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (vec) {
        size_t n4 = n / 4;
        for (size_t j = tid; j < n4; j += stride) {
            float4 a = ((const float4 *)x)[j], b = ((float4 *)y)[j];
            b.x += a.x, b.y += a.y, b.z += a.z, b.w += a.w;
            ((float4 *)y)[j] = b;
        }
        done = 4 * n4;
    }
    for (size_t i = done + tid; i < n; i += stride) y[i] += x[i];
}

/* y[n] += x[n] */
void tfm_cuda_add(float *y, const float *x, size_t n) {
    if (n == 0) return;
    tfm_cuda_params_written(y, n * sizeof *y);
    int vec = (uintptr_t)y % 16 == 0 && (uintptr_t)x % 16 == 0;
    unsigned blocks = tfm_cuda_blocks(vec ? (n + 3) / 4 : n, TFM_CUDA_THREADS);
    add_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(y, x, n, vec);
    TFM_CUDA_LAUNCHED();
}

/* madd(a, b, c) of adam.c without FP_FAST_FMAF: two roundings. */
__device__ __forceinline__ float madd2(float a, float b, float c) { return __fadd_rn(__fmul_rn(a, b), c); }

/* norm: NULL, or the gradient norm in device memory: when it is not finite
 * the kernel changes nothing; when clip > 0 and tfm_clip_coef(norm, clip) < 1
 * each gradient is multiplied by that coefficient as it is read (the CPU's
 * tfm_scale then update, the same roundings). */
/* param16 (NULL: none): the parameters' bf16 copy (gemm.cu's params_lowp),
 * written with each updated parameter so that it stays current. */
__global__ void adam_kernel(tfm_adam_coefs c, float *param, const float *grad, float *m, float *v, size_t n,
                            const float *norm, float clip, __nv_bfloat16 *param16) {
    float coef = 1.0f;
    if (norm) {
        float nv = *norm;
        if (!isfinite(nv)) return;
        if (clip > 0.0f) coef = __fmul_rn(__fdiv_rn(1.0f, __fadd_rn(nv, 1e-6f)), clip);
    }
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float w = param[i], g = grad[i];
        if (coef < 1.0f) g = __fmul_rn(g, coef);
        if (c.adamw) w = __fmul_rn(w, c.decay);
        else if (c.l2 != 0.0f) g = madd2(c.l2, w, g);
        float mi = madd2(c.one_minus_beta1, g, __fmul_rn(m[i], c.beta1));
        float vi = madd2(__fmul_rn(c.one_minus_beta2, g), g, __fmul_rn(v[i], c.beta2));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.bc2_sqrt), c.eps);
        float updated = __fadd_rn(w, __fdiv_rn(__fmul_rn(c.neg_step, mi), denom));
        param[i] = updated;
        if (param16) param16[i] = __float2bfloat16_rn(updated);
        m[i] = mi;
        v[i] = vi;
    }
}

/* One Adam/AdamW step over param, m, v [n] (device) from grad [n]; the
 * coefficients as src/train/optim.c prepares them (ops.h). No aliasing. */
void tfm_cuda_adam_update(const tfm_adam_coefs *c, float *param, const float *grad, float *m, float *v,
                          size_t n) {
    if (n == 0) return;
    __nv_bfloat16 *param16 = tfm_cuda_params_lowp_for(param, n);
    if (!param16) tfm_cuda_params_written(param, n * sizeof *param);
    adam_kernel<<<tfm_cuda_blocks(n, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(*c, param, grad,
                                                                                                   m, v, n, NULL, 0,
                                                                                                   param16);
    TFM_CUDA_LAUNCHED();
}

/* adam_update_clipped (backend.h): the norm read on the device (no wait);
 * grad itself is left as it was. */
void tfm_cuda_adam_update_clipped(const tfm_adam_coefs *c, float *param, float *grad, float *m, float *v, size_t n,
                                  const float *norm, float clip_norm) {
    if (n == 0) return;
    __nv_bfloat16 *param16 = tfm_cuda_params_lowp_for(param, n);
    if (!param16) tfm_cuda_params_written(param, n * sizeof *param);
    adam_kernel<<<tfm_cuda_blocks(n, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(
        *c, param, grad, m, v, n, norm, clip_norm, param16);
    TFM_CUDA_LAUNCHED();
}
