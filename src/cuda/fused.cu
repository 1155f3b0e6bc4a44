/*
 * fused.cu: the fused element-wise ops of src/ops/fused.c on the GPU: the
 * post-LN residual sum with dropout and LayerNorm, the LayerNorm backward
 * that also drops out its result, and activation with dropout both ways.
 * It also holds the one-pass LayerNorm backward that layernorm.cu's
 * layernorm_backward runs where D <= 1024.
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
 * The dropout draws are the device port of the counter-based RNG with the
 * CPU's element indices (n * D + i, or i), compared in integers (fu_drop).
 *
 * The LayerNorm backward (D <= 1024) reads dout and the input once: each
 * block owns a chunk of LB_CHUNK rows, writes din (and ddrop) row by row and
 * adds the rows' terms of dw and db into shared memory, then writes them as
 * the chunk's partial sums; a second kernel adds the chunks' partials in
 * order. The order is fixed by N and D alone: no atomics, the same bits
 * run to run and on any GPU. TFM_LN_FUSED_DPARAMS=0 selects the two-pass route
 * (din kernel, then layernorm.cu's column sums reading dout and the input
 * again), for A/B timing; D > 1024 always takes it.
 */
#include "cuda/cuda_internal.cuh"

#include <string.h>

#define FU_WARPS 4       /* rows per block: one warp per row */
#define FU_REG_MAX_D 1024 /* the register kernels' largest D: 32 values per lane */

/* The index hash of tfm_cuda_rng_uniform_key (cuda_internal.cuh): the draw of
 * element i is mix64(key ^ (i * FU_RNG_MUL + FU_RNG_ADD)). Kept equal to the
 * header's constants: test_cuda_ops compares every mask with the CPU's. */
#define FU_RNG_MUL 0xd1b54a32d192ed03ULL
#define FU_RNG_ADD 0x8cb92ba72f3d8dd7ULL

/* The dropout of one value: v * scale where the draw keeps element i, else
 * 0; drop == 0 passes v through (p == 0).
 *
 * The draw u = k 2^-24 (k its top 24 bits, exact in float), and u >= p
 * exactly when k >= thr = ceil(p 2^24), so the draw is compared in integers
 * (no 64-bit int-to-float conversion per element). The index hash is linear
 * in i (mod 2^64): a row kernel computes hash(first index) once and adds
 * multiples of FU_RNG_MUL per element (keep_h). */
struct fu_drop {
    tfm_cuda_drop_key key; /* resolve() at a kernel's start: the key of a recorded step once */
    float p, scale;
    uint32_t thr;
    int drop;
    __device__ __forceinline__ void resolve() { key.resolve(); }
    __device__ __forceinline__ bool keep_h(uint64_t h) const {
        return (uint32_t)(tfm_cuda_mix64(key.get() ^ h) >> 40) >= thr;
    }
    __device__ __forceinline__ bool keep(uint64_t i) const { return keep_h(i * FU_RNG_MUL + FU_RNG_ADD); }
    __device__ __forceinline__ float apply_h(uint64_t h, float v) const {
        if (!drop) return v;
        return keep_h(h) ? __fmul_rn(v, scale) : 0.0f;
    }
    __device__ __forceinline__ float operator()(size_t i, float v) const {
        return apply_h((uint64_t)i * FU_RNG_MUL + FU_RNG_ADD, v);
    }
};

static fu_drop make_drop(float p, uint64_t seed, uint64_t stream) {
    fu_drop d;
    d.drop = p > 0;
    if (d.drop) {
        d.key = tfm_cuda_drop_key_make(seed, stream);
    } else { /* nothing drawn: nothing per step */
        d.key.key = 0, d.key.slot = NULL, d.key.stream = 0;
    }
    d.p = p;
    d.scale = d.drop ? (float)(1.0 / (1.0 - p)) : 1.0f; /* as the CPU rounds it */
    /* p 2^24 is exact in double; p < 1 keeps thr below 2^24. */
    d.thr = d.drop ? (uint32_t)ceil((double)p * 16777216.0) : 0;
    return d;
}


/* ------------------------------------- residual + dropout + LayerNorm */

/* Lane `lane`'s j-th column: lane + 32 j, or with float4 loads element j % 4
 * of the float4 at 4 (lane + 32 (j / 4)) (as layernorm.cu). Either way
 * fu_col(lane, 0) + fu_col(0, j), the second a constant once unrolled. */
template <bool VEC4>
__device__ __forceinline__ int fu_col(int lane, int j) {
    return VEC4 ? 4 * (lane + 32 * (j / 4)) + j % 4 : lane + 32 * j;
}

/* r[j] = p[fu_col(lane, j)], 0 past D. FULL: D == 32 PER, every column is
 * in the row (no bounds tests). */
template <int PER, bool VEC4, bool FULL>
__device__ __forceinline__ void fu_load(float (&r)[PER], const float *p, int D, int lane) {
#pragma unroll
    for (int j = 0; j < PER; j += VEC4 ? 4 : 1) {
        int c = fu_col<VEC4>(lane, j);
        if (VEC4) {
            float4 g = FULL || c < D ? *(const float4 *)(p + c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            r[j] = g.x, r[j + 1] = g.y, r[j + 2] = g.z, r[j + 3] = g.w;
        } else {
            r[j] = FULL || c < D ? p[c] : 0.0f;
        }
    }
}

template <int PER, bool VEC4, bool FULL>
__device__ __forceinline__ void fu_store(float *p, const float (&r)[PER], int D, int lane) {
#pragma unroll
    for (int j = 0; j < PER; j += VEC4 ? 4 : 1) {
        int c = fu_col<VEC4>(lane, j);
        if (!FULL && c >= D) continue;
        if (VEC4)
            *(float4 *)(p + c) = make_float4(r[j], r[j + 1], r[j + 2], r[j + 3]);
        else
            p[c] = r[j];
    }
}

/* With VEC4: each lane's 4 consecutive columns rounded to bf16 into a row of
 * bf16 (8-byte stores; the row 8-byte aligned). */
template <int PER, bool FULL>
__device__ __forceinline__ void fu_store_bf16(__nv_bfloat16 *p, const float (&r)[PER], int D, int lane) {
#pragma unroll
    for (int j = 0; j < PER; j += 4) {
        int c = fu_col<true>(lane, j);
        if (!FULL && c >= D) continue;
        *(uint2 *)(p + c) = make_uint2(tfm_cuda_bf16x2(r[j], r[j + 1]), tfm_cuda_bf16x2(r[j + 2], r[j + 3]));
    }
}

/* D <= 32 PER: one warp per row, the row of x and y (and w, b) loaded at once
 * into registers; the residual sum is stored and normalised from registers.
 * VEC4 needs D % 4 == 0 and 16-byte aligned pointers; FULL, VEC4 and
 * D == 32 PER. ln16 (VEC4 only; NULL: none): ln rounded to bf16 as well,
 * rows of D (a linear's keep, gemm.cu's layout when D % 8 == 0). The launch bounds ask for five blocks of 4 warps per SM (94
 * registers at PER 16, was 98 and four blocks): each warp has one row in
 * flight, so the more warps, the more bytes in flight. */
template <int PER, bool VEC4, bool FULL>
__global__ void __launch_bounds__(32 * FU_WARPS, PER <= 16 ? 5 : 1)
    residual_dropout_layernorm_regs_kernel(float *res, float *ln, __nv_bfloat16 *ln16, float *mean, float *rstd,
                                           const float *x, const float *y, const float *w, const float *b, int N,
                                           int D, float eps, fu_drop drop) {
    drop.resolve();
    int lane = threadIdx.x & 31, n = blockIdx.x * FU_WARPS + (threadIdx.x >> 5);
    if (n >= N) return; /* the whole warp: n is per warp */
    size_t base = (size_t)n * D;
    float r[PER], yr[PER];
    fu_load<PER, VEC4, FULL>(r, x + base, D, lane);
    fu_load<PER, VEC4, FULL>(yr, y + base, D, lane);
    uint64_t h = (uint64_t)(base + fu_col<VEC4>(lane, 0)) * FU_RNG_MUL + FU_RNG_ADD;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int c = fu_col<VEC4>(lane, j);
        float d = drop.apply_h(h + (uint64_t)fu_col<VEC4>(0, j) * FU_RNG_MUL, yr[j]);
        r[j] = FULL || c < D ? __fadd_rn(r[j], d) : 0.0f;
    }
    fu_store<PER, VEC4, FULL>(res + base, r, D, lane);
    float wr[PER], br[PER];
    fu_load<PER, VEC4, FULL>(wr, w, D, lane);
    fu_load<PER, VEC4, FULL>(br, b, D, lane);
    double m = 0;
#pragma unroll
    for (int j = 0; j < PER; j++) m += r[j]; /* columns past D hold 0 */
    m = tfm_warp_sum(m) / D;
    double var = 0;
#pragma unroll
    for (int j = 0; j < PER; j++)
        if (FULL || fu_col<VEC4>(lane, j) < D) var += (r[j] - m) * (r[j] - m);
    var = tfm_warp_sum(var) / D;
    float s = (float)(1.0 / sqrt(var + eps));
#pragma unroll
    for (int j = 0; j < PER; j++) r[j] = (float)((r[j] - m) * s) * wr[j] + br[j];
    fu_store<PER, VEC4, FULL>(ln + base, r, D, lane);
    if (VEC4 && ln16) fu_store_bf16<PER, FULL>(ln16 + base, r, D, lane);
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
    drop.resolve();
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
        tfm_cuda_layernorm_row_finish(ln + base, mean + n, rstd + n, r, tfm_warp_sum(m), w, b, D, eps, lane);
    }
}

static unsigned fu_row_blocks(int N) {
    long b = ((long)N + FU_WARPS - 1) / FU_WARPS;
    return (unsigned)(b > 65535 ? 65535 : b);
}

template <int PER, bool VEC4, bool FULL>
static void residual_dropout_layernorm_regs_launch(float *res, float *ln, __nv_bfloat16 *ln16, float *mean,
                                                   float *rstd, const float *x, const float *y, const float *w,
                                                   const float *b, int N, int D, float eps, fu_drop drop) {
    unsigned blocks = (unsigned)(((long)N + FU_WARPS - 1) / FU_WARPS);
    residual_dropout_layernorm_regs_kernel<PER, VEC4, FULL><<<blocks, 32 * FU_WARPS, 0, tfm_cuda_stream()>>>(
        res, ln, ln16, mean, rstd, x, y, w, b, N, D, eps, drop);
}

template <int PER>
static void residual_dropout_layernorm_regs(bool vec4, float *res, float *ln, __nv_bfloat16 *ln16, float *mean,
                                            float *rstd, const float *x, const float *y, const float *w,
                                            const float *b, int N, int D, float eps, fu_drop drop) {
    if (vec4 && D == 32 * PER)
        residual_dropout_layernorm_regs_launch<PER, true, true>(res, ln, ln16, mean, rstd, x, y, w, b, N, D, eps,
                                                                drop);
    else if (vec4)
        residual_dropout_layernorm_regs_launch<PER, true, false>(res, ln, ln16, mean, rstd, x, y, w, b, N, D, eps,
                                                                 drop);
    else
        residual_dropout_layernorm_regs_launch<PER, false, false>(res, ln, NULL, mean, rstd, x, y, w, b, N, D, eps,
                                                                  drop);
}

/* res[N,D] = x + dropout(y); ln = LayerNorm(res), mean[N], rstd[N] saved.
 * res may alias x. Device pointers. ln_keep (backend.h): filled, and 1
 * returned, where the register kernels run with float4 rows (D <= 1024,
 * D % 8 == 0, aligned rows) and gemm.cu would keep a bf16 copy there
 * (tfm_cuda_keep_writable): the bf16 of each normalised element, as
 * to_bf16 would round it from ln. */
int tfm_cuda_residual_dropout_layernorm(float *res, float *ln, float *mean, float *rstd, const float *x,
                                        const float *y, const float *w, const float *b, int N, int D, float eps,
                                        float p, uint64_t seed, uint64_t stream, void *ln_keep) {
    if (N <= 0 || D <= 0) return 0;
    fu_drop drop = make_drop(p, seed, stream);
    bool vec4 = D % 4 == 0 && tfm_cuda_aligned16(res) && tfm_cuda_aligned16(ln) && tfm_cuda_aligned16(x) &&
                tfm_cuda_aligned16(y) && tfm_cuda_aligned16(w) && tfm_cuda_aligned16(b);
    const char *off = getenv("TFM_LN_KEEP"); /* "0": never fill (A/B timing) */
    __nv_bfloat16 *ln16 = vec4 && D % 8 == 0 && D <= FU_REG_MAX_D && tfm_cuda_keep_writable(ln_keep) &&
                                  !(off && !strcmp(off, "0"))
                              ? (__nv_bfloat16 *)ln_keep
                              : NULL;
    if (D <= 128)
        residual_dropout_layernorm_regs<4>(vec4, res, ln, ln16, mean, rstd, x, y, w, b, N, D, eps, drop);
    else if (D <= 256)
        residual_dropout_layernorm_regs<8>(vec4, res, ln, ln16, mean, rstd, x, y, w, b, N, D, eps, drop);
    else if (D <= 512)
        residual_dropout_layernorm_regs<16>(vec4, res, ln, ln16, mean, rstd, x, y, w, b, N, D, eps, drop);
    else if (D <= FU_REG_MAX_D)
        residual_dropout_layernorm_regs<FU_REG_MAX_D / 32>(vec4, res, ln, ln16, mean, rstd, x, y, w, b, N, D, eps,
                                                           drop);
    else
        residual_dropout_layernorm_kernel<<<fu_row_blocks(N), 32 * FU_WARPS, 0, tfm_cuda_stream()>>>(
            res, ln, mean, rstd, x, y, w, b, N, D, eps, drop);
    TFM_CUDA_LAUNCHED();
    return ln16 != NULL;
}

/* ------------------------------------ LayerNorm backward + dropout */

/* layernorm.cu's din kernel (accumulate 0) that also writes ddrop = dropout(din):
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w. The
 * two-pass route (TFM_LN_FUSED_DPARAMS=0, or D > 1024). */
__global__ void layernorm_din_dropout_kernel(float *din, float *ddrop, const float *dout, const float *in,
                                             const float *mean, const float *rstd, const float *w, int N, int D,
                                             fu_drop drop) {
    drop.resolve();
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

/* The one-pass backward (D <= 1024). Block b owns rows [b LB_CHUNK, (b + 1)
 * LB_CHUNK); its warp k takes rows k, k + LB_WARPS, ... of them, one row in
 * registers at a time with the next row's loads already in flight (PER <= 16;
 * at PER 32 the two rows would not fit the registers). Each warp adds its
 * rows' dout * xhat and dout into its own slice of shared memory (registers
 * would hold 2 PER more values and spill). For the 400 chunks of a training
 * step's 25,600 rows the grid fits the GPU at once (at most 128 registers: 4
 * blocks per SM), so no block waits for a second wave. */
#define LB_WARPS 4
#define LB_CHUNK 64 /* rows per block, and per partial sum of dw, db */

/* r = the row at p (fu_load), or zeros where !valid (past the chunk). */
template <int PER, bool VEC4, bool FULL>
__device__ __forceinline__ void lb_load_row(float (&r)[PER], const float *p, int D, int lane, bool valid) {
    if (valid) {
        fu_load<PER, VEC4, FULL>(r, p, D, lane);
    } else {
#pragma unroll
        for (int j = 0; j < PER; j++) r[j] = 0.0f;
    }
}

/* sw[c] += dy * xhat, sb[c] += dy for the lane's columns c (shared memory),
 * a float4 (or one column) at a time. */
template <int PER, bool VEC4, bool FULL>
__device__ __forceinline__ void lb_accumulate(float *sw, float *sb, const float (&dy)[PER], const float (&xhat)[PER],
                                              int D, int lane) {
#pragma unroll
    for (int j = 0; j < PER; j += VEC4 ? 4 : 1) {
        int c = fu_col<VEC4>(lane, j);
        if (!FULL && c >= D) continue;
        if (VEC4) {
            float4 a = *(float4 *)(sw + c), b = *(float4 *)(sb + c);
            a.x += dy[j] * xhat[j], a.y += dy[j + 1] * xhat[j + 1];
            a.z += dy[j + 2] * xhat[j + 2], a.w += dy[j + 3] * xhat[j + 3];
            b.x += dy[j], b.y += dy[j + 1], b.z += dy[j + 2], b.w += dy[j + 3];
            *(float4 *)(sw + c) = a, *(float4 *)(sb + c) = b;
        } else {
            sw[c] += dy[j] * xhat[j];
            sb[c] += dy[j];
        }
    }
}

/* din = (ACC: +=) rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w,
 * with the sums of the row in double (layernorm_din_kernel's arithmetic);
 * ddrop = dropout(din) where ddrop != NULL (!ACC only); pw[b][i] =
 * sum over the chunk's rows of dout * xhat, pb[b][i] = of dout (the
 * partial kernel's arithmetic: xhat = (in - mean) * rstd in float, float
 * sums), each warp over its rows in order, then the warps 0..3 in order.
 * Columns past D hold 0 in dout and w, so they add 0 and need no tests. */
template <int PER, bool VEC4, bool FULL, bool ACC>
__global__ void __launch_bounds__(32 * LB_WARPS, 4)
    layernorm_backward_rows_kernel(float *din, float *ddrop, float *pw, float *pb, const float *dout,
                                   const float *in, const float *mean, const float *rstd, const float *w, int N,
                                   int D, fu_drop drop) {
    drop.resolve();
    constexpr bool PREF = PER <= 16;
    extern __shared__ float4 lb_sh4[]; /* [LB_WARPS][2][D]: each warp's sums of dout * xhat, dout */
    float *lb_sh = (float *)lb_sh4;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int n = blockIdx.x * LB_CHUNK + warp, hi = min(N, (blockIdx.x + 1) * LB_CHUNK);
    float *sw = lb_sh + (size_t)warp * 2 * D, *sb = sw + D;
    for (int c = lane; c < D; c += 32) sw[c] = sb[c] = 0.0f;
    float dy[PER], x[PER], m = 0.0f, s = 0.0f;
    if (PREF) {
        lb_load_row<PER, VEC4, FULL>(dy, dout + (size_t)n * D, D, lane, n < hi);
        lb_load_row<PER, VEC4, FULL>(x, in + (size_t)n * D, D, lane, n < hi);
        if (n < hi) m = mean[n], s = rstd[n];
    }
    __syncwarp(); /* the zeros above are other lanes' columns under float4 */
    for (; n < hi; n += LB_WARPS) {
        size_t base = (size_t)n * D;
        int nn = n + LB_WARPS;
        float dyn[PER], xn[PER], mn = 0.0f, sn = 0.0f;
        if (PREF) {
            /* The next row's loads first: they fly while this row is computed. */
            lb_load_row<PER, VEC4, FULL>(dyn, dout + (size_t)nn * D, D, lane, nn < hi);
            lb_load_row<PER, VEC4, FULL>(xn, in + (size_t)nn * D, D, lane, nn < hi);
            if (nn < hi) mn = mean[nn], sn = rstd[nn];
        } else {
            fu_load<PER, VEC4, FULL>(dy, dout + base, D, lane);
            fu_load<PER, VEC4, FULL>(x, in + base, D, lane);
            m = mean[n], s = rstd[n];
        }

        float wr[PER];
        fu_load<PER, VEC4, FULL>(wr, w, D, lane); /* from L1 */
        double sum_g = 0, sum_gx = 0;
#pragma unroll
        for (int j = 0; j < PER; j++) {
            double g = (double)dy[j] * wr[j];
            sum_g += g;
            x[j] = (x[j] - m) * s; /* xhat from here on */
            sum_gx += g * x[j];
        }
        float mg = (float)(tfm_warp_sum(sum_g) / D), mgx = (float)(tfm_warp_sum(sum_gx) / D);
        lb_accumulate<PER, VEC4, FULL>(sw, sb, dy, x, D, lane);
#pragma unroll
        for (int j = 0; j < PER; j++) dy[j] = s * (dy[j] * wr[j] - mg - x[j] * mgx); /* dy is din's row now */
        if (ACC) {
            fu_load<PER, VEC4, FULL>(wr, din + base, D, lane);
#pragma unroll
            for (int j = 0; j < PER; j++) dy[j] = wr[j] + dy[j];
        }
        fu_store<PER, VEC4, FULL>(din + base, dy, D, lane);
        if (!ACC && ddrop) {
            uint64_t h = (uint64_t)(base + fu_col<VEC4>(lane, 0)) * FU_RNG_MUL + FU_RNG_ADD;
#pragma unroll
            for (int j = 0; j < PER; j++) dy[j] = drop.apply_h(h + (uint64_t)fu_col<VEC4>(0, j) * FU_RNG_MUL, dy[j]);
            fu_store<PER, VEC4, FULL>(ddrop + base, dy, D, lane);
        }
        if (PREF) {
#pragma unroll
            for (int j = 0; j < PER; j++) dy[j] = dyn[j], x[j] = xn[j];
            m = mn, s = sn;
        }
    }

    /* The chunk's sums: the warps' in order, 0 to LB_WARPS - 1. */
    __syncthreads();
    for (int c = threadIdx.x; c < D; c += 32 * LB_WARPS) {
        float tw = lb_sh[c], tb = lb_sh[D + c];
        for (int k = 1; k < LB_WARPS; k++) {
            tw += lb_sh[(size_t)k * 2 * D + c];
            tb += lb_sh[(size_t)k * 2 * D + D + c];
        }
        pw[(size_t)blockIdx.x * D + c] = tw;
        pb[(size_t)blockIdx.x * D + c] = tb;
    }
}

/* Pass 2: dw[i] += sum_r pw[r][i] (blockIdx.y 0), db[i] += sum_r pb[r][i]
 * (1), for the R chunks. Block (32 columns, 32 groups): group g adds chunks
 * g, g + 32, ...; then warp k adds the 32 groups of column k by a fixed
 * shuffle tree. 2 x 16 blocks of 1024 threads for D = 512 (layernorm.cu's
 * sum kernel: 16 blocks of 256; H200, 400 chunks: 4.8 us, against 6.5 us for
 * that kernel over 200). */
#define LB_GROUPS 32
__global__ void __launch_bounds__(32 * LB_GROUPS)
    layernorm_partials_sum_kernel(float *dw, float *db, const float *pw, const float *pb, int R, int D) {
    __shared__ float sh[LB_GROUPS][33];
    const float *p = blockIdx.y ? pb : pw;
    int i = blockIdx.x * 32 + threadIdx.x;
    float a = 0.0f;
    if (i < D) {
#pragma unroll 4
        for (int r = threadIdx.y; r < R; r += LB_GROUPS) a += p[(size_t)r * D + i];
    }
    sh[threadIdx.y][threadIdx.x] = a;
    __syncthreads();
    int col = blockIdx.x * 32 + threadIdx.y; /* warp threadIdx.y: one column, its groups across the lanes */
    float t = tfm_warp_sum(sh[threadIdx.x][threadIdx.y]);
    if (threadIdx.x == 0 && col < D) {
        float *out = blockIdx.y ? db : dw;
        out[col] += t;
    }
}

template <int PER, bool VEC4, bool FULL, bool ACC>
static void layernorm_backward_rows(float *din, float *ddrop, float *pw, float *pb, const float *dout,
                                    const float *in, const float *mean, const float *rstd, const float *w, int N,
                                    int D, fu_drop drop, unsigned R) {
    size_t sh = (size_t)2 * LB_WARPS * D * sizeof(float); /* 32 KB at D = 1024 */
    layernorm_backward_rows_kernel<PER, VEC4, FULL, ACC><<<R, 32 * LB_WARPS, sh, tfm_cuda_stream()>>>(
        din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D, drop);
}

template <int PER, bool ACC>
static void layernorm_backward_rows_d(bool vec4, float *din, float *ddrop, float *pw, float *pb, const float *dout,
                                      const float *in, const float *mean, const float *rstd, const float *w, int N,
                                      int D, fu_drop drop, unsigned R) {
    if (vec4 && D == 32 * PER)
        layernorm_backward_rows<PER, true, true, ACC>(din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D, drop, R);
    else if (vec4)
        layernorm_backward_rows<PER, true, false, ACC>(din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D, drop, R);
    else
        layernorm_backward_rows<PER, false, false, ACC>(din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D, drop, R);
}

template <bool ACC>
static void layernorm_backward_rows_any(bool vec4, float *din, float *ddrop, float *pw, float *pb,
                                        const float *dout, const float *in, const float *mean, const float *rstd,
                                        const float *w, int N, int D, fu_drop drop, unsigned R) {
    if (D <= 128)
        layernorm_backward_rows_d<4, ACC>(vec4, din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D, drop, R);
    else if (D <= 256)
        layernorm_backward_rows_d<8, ACC>(vec4, din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D, drop, R);
    else if (D <= 512)
        layernorm_backward_rows_d<16, ACC>(vec4, din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D, drop, R);
    else
        layernorm_backward_rows_d<FU_REG_MAX_D / 32, ACC>(vec4, din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D,
                                                          drop, R);
}

/* The one-pass LayerNorm backward: din[N,D] = (or += where accumulate; then
 * ddrop must be NULL), ddrop[N,D] = dropout(din) unless NULL, dw[D] +=, db[D]
 * += (chunk partials in the backend's scratch, then one pass over them).
 * Returns 0, having queued nothing, where it does not apply (D > 1024, or
 * TFM_LN_FUSED_DPARAMS=0, read on every call so that a test can flip it):
 * the caller runs the two-pass kernels. Device pointers; N, D > 0. For
 * layernorm.cu's tfm_cuda_layernorm_backward too (declared there). */
int tfm_cuda_layernorm_backward_onepass(float *din, float *ddrop, float *dw, float *db, const float *dout,
                                        const float *in, const float *mean, const float *rstd, const float *w,
                                        int N, int D, int accumulate, float p, uint64_t seed, uint64_t stream) {
    const char *env = getenv("TFM_LN_FUSED_DPARAMS");
    if (D > FU_REG_MAX_D || (env && strcmp(env, "0") == 0)) return 0;
    TFM_CUDA_ASSERT(!accumulate || !ddrop);
    unsigned R = (unsigned)(((long)N + LB_CHUNK - 1) / LB_CHUNK);
    /* Growing the scratch synchronises the stream (the kernels queued before
     * this only wait; their results do not change). */
    float *pw = (float *)tfm_cuda_scratch((size_t)2 * R * D * sizeof(float)), *pb = pw + (size_t)R * D;
    bool vec4 = D % 4 == 0 && tfm_cuda_aligned16(din) && (!ddrop || tfm_cuda_aligned16(ddrop)) &&
                tfm_cuda_aligned16(dout) && tfm_cuda_aligned16(in) && tfm_cuda_aligned16(w) &&
                tfm_cuda_aligned16(pw);
    fu_drop drop = make_drop(ddrop ? p : 0.0f, seed, stream);
    if (accumulate)
        layernorm_backward_rows_any<true>(vec4, din, NULL, pw, pb, dout, in, mean, rstd, w, N, D, drop, R);
    else
        layernorm_backward_rows_any<false>(vec4, din, ddrop, pw, pb, dout, in, mean, rstd, w, N, D, drop, R);
    TFM_CUDA_LAUNCHED();
    layernorm_partials_sum_kernel<<<dim3((D + 31) / 32, 2), dim3(32, LB_GROUPS), 0, tfm_cuda_stream()>>>(
        dw, db, pw, pb, (int)R, D);
    TFM_CUDA_LAUNCHED();
    return 1;
}

/* din[N,D] =; ddrop[N,D] = dropout(din); dw[D] +=; db[D] +=. Device pointers. */
void tfm_cuda_layernorm_backward_dropout(float *din, float *ddrop, float *dw, float *db, const float *dout,
                                         const float *in, const float *mean, const float *rstd, const float *w,
                                         int N, int D, float p, uint64_t seed, uint64_t stream) {
    if (N <= 0 || D <= 0) return;
    if (tfm_cuda_layernorm_backward_onepass(din, ddrop, dw, db, dout, in, mean, rstd, w, N, D, 0, p, seed, stream))
        return;
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
        return drop.keep(i) ? __fmul_rn(fu_gelu(x), drop.scale) : 0.0f;
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
