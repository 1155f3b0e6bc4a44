/*
 * fused.cu: the fused element-wise ops of src/ops/fused.c on the GPU: the
 * post-LN residual sum with dropout and LayerNorm, the LayerNorm backward
 * that also drops out its result, and activation with dropout both ways.
 *
 *   x, y, res, ln, din, ddrop, dout [N, D]    w, b, dw, db [D]    mean, rstd [N]
 *   (activation ops) in, out, din, dout [n]
 *
 * Each kernel is the composition of the unfused kernels (elementwise.cu,
 * layernorm.cu) with the intermediate kept in registers: the same
 * arithmetic (double row statistics; dropout scaled with one correctly
 * rounded multiply and the residual a separately rounded add), so the
 * results match the unfused GPU ops, and the CPU's as test_cuda_ops checks:
 * dropout masks and the residual sum bit for bit, the rest within 1e-4.
 * The dropout draws use the device port of the counter-based RNG with the
 * CPU's element indices (n * D + i, or i).
 *
 * The LayerNorm backward's parameter gradients go through layernorm.cu's
 * deterministic two-pass column sums (tfm_cuda_layernorm_dparams).
 */
#include "cuda/cuda_internal.cuh"

#define FU_WARPS 4       /* rows per block: one warp per row */
#define FU_REG_MAX_D 1024 /* the register kernel's largest D: 32 values per lane */

/* The dropout of one value: v * scale where the draw keeps element i, else
 * 0; drop == 0 passes v through (p == 0). */
struct fu_drop {
    uint64_t key;
    float p, scale;
    int drop;
    __device__ __forceinline__ float operator()(size_t i, float v) const {
        if (!drop) return v;
        return tfm_cuda_rng_uniform_key(key, i) >= p ? __fmul_rn(v, scale) : 0.0f;
    }
};

static fu_drop make_drop(float p, uint64_t seed, uint64_t stream) {
    fu_drop d;
    d.drop = p > 0;
    d.key = d.drop ? tfm_cuda_rng_key(seed, stream) : 0;
    d.p = p;
    d.scale = d.drop ? (float)(1.0 / (1.0 - p)) : 1.0f; /* as the CPU rounds it */
    return d;
}


/* ------------------------------------- residual + dropout + LayerNorm */

/* Lane `lane`'s j-th column: lane + 32 j, or with float4 loads element j % 4
 * of the float4 at 4 (lane + 32 (j / 4)) (as layernorm.cu). */
template <bool VEC4>
__device__ __forceinline__ int fu_col(int lane, int j) {
    return VEC4 ? 4 * (lane + 32 * (j / 4)) + j % 4 : lane + 32 * j;
}

template <int PER, bool VEC4>
__device__ __forceinline__ void fu_load(float (&r)[PER], const float *p, int D, int lane) {
#pragma unroll
    for (int j = 0; j < PER; j += VEC4 ? 4 : 1) {
        int c = fu_col<VEC4>(lane, j);
        if (VEC4) {
            float4 g = c < D ? *(const float4 *)(p + c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            r[j] = g.x, r[j + 1] = g.y, r[j + 2] = g.z, r[j + 3] = g.w;
        } else {
            r[j] = c < D ? p[c] : 0.0f;
        }
    }
}

template <int PER, bool VEC4>
__device__ __forceinline__ void fu_store(float *p, const float (&r)[PER], int D, int lane) {
#pragma unroll
    for (int j = 0; j < PER; j += VEC4 ? 4 : 1) {
        int c = fu_col<VEC4>(lane, j);
        if (c >= D) continue;
        if (VEC4)
            *(float4 *)(p + c) = make_float4(r[j], r[j + 1], r[j + 2], r[j + 3]);
        else
            p[c] = r[j];
    }
}

/* D <= 32 PER: one warp per row, the row of x and y (and w, b) loaded at once
 * into registers; the residual sum is stored and normalised from registers.
 * VEC4 needs D % 4 == 0 and 16-byte aligned pointers. */
template <int PER, bool VEC4>
__global__ void __launch_bounds__(32 * FU_WARPS)
    residual_dropout_layernorm_regs_kernel(float *res, float *ln, float *mean, float *rstd, const float *x,
                                           const float *y, const float *w, const float *b, int N, int D,
                                           float eps, fu_drop drop) {
    int lane = threadIdx.x & 31, n = blockIdx.x * FU_WARPS + (threadIdx.x >> 5);
    if (n >= N) return; /* the whole warp: n is per warp */
    size_t base = (size_t)n * D;
    float r[PER], yr[PER];
    fu_load<PER, VEC4>(r, x + base, D, lane);
    fu_load<PER, VEC4>(yr, y + base, D, lane);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int c = fu_col<VEC4>(lane, j);
        r[j] = c < D ? __fadd_rn(r[j], drop(base + c, yr[j])) : 0.0f;
    }
    fu_store<PER, VEC4>(res + base, r, D, lane);
    float wr[PER], br[PER];
    fu_load<PER, VEC4>(wr, w, D, lane);
    fu_load<PER, VEC4>(br, b, D, lane);
    double m = 0;
#pragma unroll
    for (int j = 0; j < PER; j++) m += r[j]; /* columns past D hold 0 */
    m = tfm_warp_sum(m) / D;
    double var = 0;
#pragma unroll
    for (int j = 0; j < PER; j++)
        if (fu_col<VEC4>(lane, j) < D) var += (r[j] - m) * (r[j] - m);
    var = tfm_warp_sum(var) / D;
    float s = (float)(1.0 / sqrt(var + eps));
#pragma unroll
    for (int j = 0; j < PER; j++) r[j] = (float)((r[j] - m) * s) * wr[j] + br[j];
    fu_store<PER, VEC4>(ln + base, r, D, lane);
    if (lane == 0) {
        mean[n] = (float)m;
        rstd[n] = s;
    }
}

/* Any D: one warp per row; the residual sum is stored in the first pass and
 * read back (each lane its own columns) by the other two. */
__global__ void residual_dropout_layernorm_kernel(float *res, float *ln, float *mean, float *rstd, const float *x,
                                                  const float *y, const float *w, const float *b, int N, int D,
                                                  float eps, fu_drop drop) {
    int lane = threadIdx.x & 31;
    for (int n = blockIdx.x * FU_WARPS + (threadIdx.x >> 5); n < N; n += gridDim.x * FU_WARPS) {
        size_t base = (size_t)n * D;
        float *r = res + base;
        double m = 0;
        for (int i = lane; i < D; i += 32) {
            float v = __fadd_rn(x[base + i], drop(base + i, y[base + i]));
            r[i] = v;
            m += v;
        }
        m = tfm_warp_sum(m) / D;
        double var = 0;
        for (int i = lane; i < D; i += 32) var += (r[i] - m) * (r[i] - m);
        var = tfm_warp_sum(var) / D;
        float s = (float)(1.0 / sqrt(var + eps));
        float *o = ln + base;
        for (int i = lane; i < D; i += 32) o[i] = (float)((r[i] - m) * s) * w[i] + b[i];
        if (lane == 0) {
            mean[n] = (float)m;
            rstd[n] = s;
        }
    }
}

static unsigned fu_row_blocks(int N) {
    long b = ((long)N + FU_WARPS - 1) / FU_WARPS;
    return (unsigned)(b > 65535 ? 65535 : b);
}

template <int PER>
static void residual_dropout_layernorm_regs(bool vec4, float *res, float *ln, float *mean, float *rstd,
                                            const float *x, const float *y, const float *w, const float *b, int N,
                                            int D, float eps, fu_drop drop) {
    unsigned blocks = (unsigned)(((long)N + FU_WARPS - 1) / FU_WARPS);
    if (vec4)
        residual_dropout_layernorm_regs_kernel<PER, true><<<blocks, 32 * FU_WARPS, 0, tfm_cuda_stream()>>>(
            res, ln, mean, rstd, x, y, w, b, N, D, eps, drop);
    else
        residual_dropout_layernorm_regs_kernel<PER, false><<<blocks, 32 * FU_WARPS, 0, tfm_cuda_stream()>>>(
            res, ln, mean, rstd, x, y, w, b, N, D, eps, drop);
}

/* res[N,D] = x + dropout(y); ln = LayerNorm(res), mean[N], rstd[N] saved.
 * res may alias x. Device pointers. */
void tfm_cuda_residual_dropout_layernorm(float *res, float *ln, float *mean, float *rstd, const float *x,
                                         const float *y, const float *w, const float *b, int N, int D, float eps,
                                         float p, uint64_t seed, uint64_t stream) {
    if (N <= 0 || D <= 0) return;
    fu_drop drop = make_drop(p, seed, stream);
    bool vec4 = D % 4 == 0 && tfm_cuda_aligned16(res) && tfm_cuda_aligned16(ln) && tfm_cuda_aligned16(x) &&
                tfm_cuda_aligned16(y) && tfm_cuda_aligned16(w) && tfm_cuda_aligned16(b);
    if (D <= 128)
        residual_dropout_layernorm_regs<4>(vec4, res, ln, mean, rstd, x, y, w, b, N, D, eps, drop);
    else if (D <= 256)
        residual_dropout_layernorm_regs<8>(vec4, res, ln, mean, rstd, x, y, w, b, N, D, eps, drop);
    else if (D <= 512)
        residual_dropout_layernorm_regs<16>(vec4, res, ln, mean, rstd, x, y, w, b, N, D, eps, drop);
    else if (D <= FU_REG_MAX_D)
        residual_dropout_layernorm_regs<FU_REG_MAX_D / 32>(vec4, res, ln, mean, rstd, x, y, w, b, N, D, eps, drop);
    else
        residual_dropout_layernorm_kernel<<<fu_row_blocks(N), 32 * FU_WARPS, 0, tfm_cuda_stream()>>>(
            res, ln, mean, rstd, x, y, w, b, N, D, eps, drop);
    TFM_CUDA_LAUNCHED();
}

/* ------------------------------------ LayerNorm backward + dropout */

/* layernorm.cu's din kernel (accumulate 0) that also writes ddrop = dropout(din):
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w. */
__global__ void layernorm_din_dropout_kernel(float *din, float *ddrop, const float *dout, const float *in,
                                             const float *mean, const float *rstd, const float *w, int N, int D,
                                             fu_drop drop) {
    int lane = threadIdx.x & 31;
    for (int n = blockIdx.x * FU_WARPS + (threadIdx.x >> 5); n < N; n += gridDim.x * FU_WARPS) {
        size_t base = (size_t)n * D;
        const float *x = in + base, *dy = dout + base;
        float m = mean[n], s = rstd[n];
        double sum_g = 0, sum_gx = 0;
        for (int i = lane; i < D; i += 32) {
            double g = (double)dy[i] * w[i];
            sum_g += g;
            sum_gx += g * ((x[i] - m) * s);
        }
        float mg = (float)(tfm_warp_sum(sum_g) / D), mgx = (float)(tfm_warp_sum(sum_gx) / D);
        float *dx = din + base, *dd = ddrop + base;
        for (int i = lane; i < D; i += 32) {
            float xhat = (x[i] - m) * s;
            float v = s * (dy[i] * w[i] - mg - xhat * mgx);
            dx[i] = v;
            dd[i] = drop(base + i, v);
        }
    }
}

/* din[N,D] =; ddrop[N,D] = dropout(din); dw[D] +=; db[D] +=. Device pointers. */
void tfm_cuda_layernorm_backward_dropout(float *din, float *ddrop, float *dw, float *db, const float *dout,
                                         const float *in, const float *mean, const float *rstd, const float *w,
                                         int N, int D, float p, uint64_t seed, uint64_t stream) {
    if (N <= 0 || D <= 0) return;
    layernorm_din_dropout_kernel<<<fu_row_blocks(N), 32 * FU_WARPS, 0, tfm_cuda_stream()>>>(
        din, ddrop, dout, in, mean, rstd, w, N, D, make_drop(p, seed, stream));
    TFM_CUDA_LAUNCHED();
    tfm_cuda_layernorm_dparams(dw, db, dout, in, mean, rstd, N, D);
}

/* ---------------------------------------------- activation + dropout */

/* The activations as elementwise.cu computes them. */
__device__ __forceinline__ float fu_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }
__device__ __forceinline__ float fu_gelu_grad(float dy, float x) {
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
    float pdf = expf(-0.5f * x * x) * 0.39894228040143267794f;
    return dy * (cdf + x * pdf);
}

/* a = in */
struct relu_drop_fwd {
    fu_drop drop;
    __device__ float operator()(size_t i, float x, float) const { return drop(i, x > 0.0f ? x : 0.0f); }
};
struct gelu_drop_fwd {
    fu_drop drop;
    __device__ float operator()(size_t i, float x, float) const {
        /* a dropped element is 0 whatever GELU gives: its erf is skipped */
        return tfm_cuda_rng_uniform_key(drop.key, i) >= drop.p ? __fmul_rn(fu_gelu(x), drop.scale) : 0.0f;
    }
};
/* a = dout, b = in */
struct relu_drop_bwd {
    fu_drop drop;
    __device__ float operator()(size_t i, float dy, float x) const { return x > 0.0f ? drop(i, dy) : 0.0f; }
};
struct gelu_drop_bwd {
    fu_drop drop;
    __device__ float operator()(size_t i, float dy, float x) const { return fu_gelu_grad(drop(i, dy), x); }
};

/* out[n] = dropout(act(in))[n]; out may alias in. Device pointers. */
void tfm_cuda_activation_dropout_forward(float *out, const float *in, size_t n, tfm_act_kind kind, float p,
                                         uint64_t seed, uint64_t stream) {
    if (n == 0) return;
    if (p <= 0) {
        tfm_cuda_activation_forward(out, in, n, kind);
        return;
    }
    fu_drop drop = make_drop(p, seed, stream);
    if (kind == TFM_OP_RELU) tfm_cuda_map<1>(out, in, NULL, n, relu_drop_fwd{drop});
    else tfm_cuda_map<1>(out, in, NULL, n, gelu_drop_fwd{drop});
}

/* din[n] = act'(in[n]) * dropout(dout)[n]; din may alias dout. Device pointers. */
void tfm_cuda_activation_dropout_backward(float *din, const float *dout, const float *in, size_t n,
                                          tfm_act_kind kind, float p, uint64_t seed, uint64_t stream) {
    if (n == 0) return;
    if (p <= 0) {
        tfm_cuda_activation_backward(din, dout, in, n, kind);
        return;
    }
    fu_drop drop = make_drop(p, seed, stream);
    if (kind == TFM_OP_RELU) tfm_cuda_map<2>(din, dout, in, n, relu_drop_bwd{drop});
    else tfm_cuda_map<2>(din, dout, in, n, gelu_drop_bwd{drop});
}
