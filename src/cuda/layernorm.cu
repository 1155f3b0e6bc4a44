/*
 * layernorm.cu: LayerNorm over the last dimension on the GPU (src/ops/layernorm.c
 * on the device): biased variance, eps inside the square root.
 *
 *   in, out, din, dout [N, D]    w, b, dw, db [D]    mean, rstd [N]
 *
 * One warp per row for the statistics and din (the forward keeps a row of
 * D <= 1024 in registers), with the CPU's mixture of precisions: mean and
 * variance accumulate in double (two passes, as the CPU), and so do the two
 * sums of the backward. The parameter gradients are
 * column sums over the rows in two passes (partial sums over chunks of rows,
 * then over the chunks), combined in a fixed order: deterministic, no
 * atomics. For D <= 1024 the backward runs fused.cu's one-pass kernel, which
 * writes din and the chunks' partial sums from one read of dout and the
 * input; the kernels here serve larger D (and TFM_LN_FUSED_DPARAMS=0).
 */
#include "cuda/cuda_internal.cuh"

#define LN_WARPS 8     /* rows per block (the backward's din, and the forward for D > 1024) */
#define LN_FWD_WARPS 4 /* rows per block of the register forward: a decoding step's few rows reach more SMs */
#define LN_FWD_MAX_D 1024 /* the register forward's largest D: 32 values per lane */

/* Lane `lane`'s j-th column: lane + 32 j (scalar loads, coalesced), or with
 * float4 loads element j % 4 of the float4 at 4 (lane + 32 (j / 4)). */
template <bool VEC4>
__device__ __forceinline__ int ln_col(int lane, int j) {
    return VEC4 ? 4 * (lane + 32 * (j / 4)) + j % 4 : lane + 32 * j;
}

/* r[j] = p[ln_col(lane, j)], 0 past D. */
template <int PER, bool VEC4>
__device__ __forceinline__ void ln_load(float (&r)[PER], const float *p, int D, int lane) {
#pragma unroll
    for (int j = 0; j < PER; j += VEC4 ? 4 : 1) {
        int c = ln_col<VEC4>(lane, j);
        if (VEC4) {
            float4 g = c < D ? *(const float4 *)(p + c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            r[j] = g.x, r[j + 1] = g.y, r[j + 2] = g.z, r[j + 3] = g.w;
        } else {
            r[j] = c < D ? p[c] : 0.0f;
        }
    }
}

/* The forward for D <= 32 PER (decoding's few rows are latency-bound): one
 * warp per row, and every load (the row, w, b) issued at once into
 * registers, so the statistics and the output never wait on memory again.
 * VEC4 needs D % 4 == 0 and 16-byte aligned pointers. The CPU's arithmetic:
 * mean and variance summed in double (in another order), two passes (over
 * the registers). */
template <int PER, bool VEC4>
__global__ void __launch_bounds__(32 * LN_FWD_WARPS)
    layernorm_forward_regs_kernel(float *out, float *mean, float *rstd, const float *in, const float *w,
                                  const float *b, int N, int D, float eps) {
    int lane = threadIdx.x & 31, n = blockIdx.x * LN_FWD_WARPS + (threadIdx.x >> 5);
    if (n >= N) return; /* the whole warp: n is per warp */
    float x[PER], wr[PER], br[PER];
    ln_load<PER, VEC4>(x, in + (long)n * D, D, lane);
    ln_load<PER, VEC4>(wr, w, D, lane);
    ln_load<PER, VEC4>(br, b, D, lane);
    double m = 0;
#pragma unroll
    for (int j = 0; j < PER; j++) m += x[j]; /* columns past D hold 0 */
    m = tfm_warp_sum(m) / D;
    double var = 0;
#pragma unroll
    for (int j = 0; j < PER; j++)
        if (ln_col<VEC4>(lane, j) < D) var += (x[j] - m) * (x[j] - m);
    var = tfm_warp_sum(var) / D;
    float s = (float)(1.0 / sqrt(var + eps));
#pragma unroll
    for (int j = 0; j < PER; j++) x[j] = (float)((x[j] - m) * s) * wr[j] + br[j];
    float *y = out + (long)n * D;
#pragma unroll
    for (int j = 0; j < PER; j += VEC4 ? 4 : 1) {
        int c = ln_col<VEC4>(lane, j);
        if (c >= D) continue;
        if (VEC4)
            *(float4 *)(y + c) = make_float4(x[j], x[j + 1], x[j + 2], x[j + 3]);
        else
            y[c] = x[j];
    }
    if (lane == 0) {
        mean[n] = (float)m;
        rstd[n] = s;
    }
}

/* The forward for any D: one warp per row, three passes over memory. */
__global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *in, const float *w,
                                         const float *b, int N, int D, float eps) {
    int lane = threadIdx.x & 31;
    for (int n = blockIdx.x * LN_WARPS + (threadIdx.x >> 5); n < N; n += gridDim.x * LN_WARPS) {
        const float *x = in + (long)n * D;
        double m = 0;
        for (int i = lane; i < D; i += 32) m += x[i];
        tfm_cuda_layernorm_row_finish(out + (long)n * D, mean + n, rstd + n, x, tfm_warp_sum(m), w, b, D, eps, lane);
    }
}

static unsigned row_blocks(int N) {
    long b = ((long)N + LN_WARPS - 1) / LN_WARPS;
    return (unsigned)(b > 65535 ? 65535 : b);
}

template <int PER>
static void layernorm_forward_regs(bool vec4, float *out, float *mean, float *rstd, const float *in,
                                   const float *w, const float *b, int N, int D, float eps) {
    unsigned blocks = (unsigned)(((long)N + LN_FWD_WARPS - 1) / LN_FWD_WARPS);
    if (vec4)
        layernorm_forward_regs_kernel<PER, true>
            <<<blocks, 32 * LN_FWD_WARPS, 0, tfm_cuda_stream()>>>(out, mean, rstd, in, w, b, N, D, eps);
    else
        layernorm_forward_regs_kernel<PER, false>
            <<<blocks, 32 * LN_FWD_WARPS, 0, tfm_cuda_stream()>>>(out, mean, rstd, in, w, b, N, D, eps);
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* out[N,D] = (in - mean) * rstd * w + b; saves mean[N], rstd[N]. Device pointers. */
void tfm_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *w,
                                const float *b, int N, int D, float eps) {
    if (N <= 0 || D <= 0) return;
    bool vec4 = D % 4 == 0 && aligned16(out) && aligned16(in) && aligned16(w) && aligned16(b);
    if (D <= 128)
        layernorm_forward_regs<4>(vec4, out, mean, rstd, in, w, b, N, D, eps);
    else if (D <= 256)
        layernorm_forward_regs<8>(vec4, out, mean, rstd, in, w, b, N, D, eps);
    else if (D <= 512)
        layernorm_forward_regs<16>(vec4, out, mean, rstd, in, w, b, N, D, eps);
    else if (D <= LN_FWD_MAX_D)
        layernorm_forward_regs<LN_FWD_MAX_D / 32>(vec4, out, mean, rstd, in, w, b, N, D, eps);
    else
        layernorm_forward_kernel<<<row_blocks(N), 32 * LN_WARPS, 0, tfm_cuda_stream()>>>(out, mean, rstd, in, w, b,
                                                                                        N, D, eps);
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

/* The parameter gradients dw[i] += sum_n dout * xhat, db[i] += sum_n dout
 * are column sums over all N rows (25600 in a training step) of only D
 * columns (512): blocks that each own a column tile and walk every row would
 * be too few to fill the GPU. So two passes: blocks over column tiles x chunks
 * of LN_CHUNK rows write partial sums to scratch, then blocks over the column
 * tiles add the chunks. Both passes combine in an order fixed by N and D alone:
 * no atomics, the same bits run to run (and on any GPU). */
#define LN_CHUNK 128 /* rows per partial sum */
#define LN_COLS 32   /* columns per block: one warp reads 128 contiguous bytes of a row */
#define LN_GROUPS 8  /* row groups per block, added in order at the end */

/* Adds sw, sb [LN_GROUPS][LN_COLS + 1] (shared) down the groups, in order; the
 * result is valid in the threads of group 0. */
__device__ void sum_groups(float aw, float ab, float (*sw)[LN_COLS + 1], float (*sb)[LN_COLS + 1], float *tw,
                           float *tb) {
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    *tw = 0.0f, *tb = 0.0f;
    if (threadIdx.y == 0)
        for (int g = 0; g < LN_GROUPS; g++) {
            *tw += sw[g][threadIdx.x];
            *tb += sb[g][threadIdx.x];
        }
    __syncthreads(); /* sw, sb are reused by the next chunk */
}

/* Pass 1. pw, pb [R, D], R = ceil(N / LN_CHUNK): the sums over the rows of
 * chunk r. Block (LN_COLS, LN_GROUPS); grid (column tiles, chunks), the chunks
 * grid-strided in case R exceeds the grid's y limit. */
__global__ void layernorm_dparams_partial_kernel(float *pw, float *pb, const float *dout, const float *in,
                                                 const float *mean, const float *rstd, int N, int D) {
    __shared__ float sw[LN_GROUPS][LN_COLS + 1], sb[LN_GROUPS][LN_COLS + 1];
    int i = blockIdx.x * LN_COLS + threadIdx.x, R = (N + LN_CHUNK - 1) / LN_CHUNK;
    for (int r = blockIdx.y; r < R; r += gridDim.y) {
        int hi = min(N, (r + 1) * LN_CHUNK);
        float aw = 0.0f, ab = 0.0f;
        if (i < D)
            for (int n = r * LN_CHUNK + threadIdx.y; n < hi; n += LN_GROUPS) {
                float dy = dout[(long)n * D + i];
                aw += dy * ((in[(long)n * D + i] - mean[n]) * rstd[n]);
                ab += dy;
            }
        float tw, tb;
        sum_groups(aw, ab, sw, sb, &tw, &tb);
        if (threadIdx.y == 0 && i < D) {
            pw[(long)r * D + i] = tw;
            pb[(long)r * D + i] = tb;
        }
    }
}

/* Pass 2. dw[i] += sum_r pw[r][i], db[i] += sum_r pb[r][i]. Same block shape:
 * each row group adds every LN_GROUPS-th chunk, then the groups in order. */
__global__ void layernorm_dparams_sum_kernel(float *dw, float *db, const float *pw, const float *pb, int R, int D) {
    __shared__ float sw[LN_GROUPS][LN_COLS + 1], sb[LN_GROUPS][LN_COLS + 1];
    int i = blockIdx.x * LN_COLS + threadIdx.x;
    float aw = 0.0f, ab = 0.0f;
    if (i < D)
        for (int r = threadIdx.y; r < R; r += LN_GROUPS) {
            aw += pw[(long)r * D + i];
            ab += pb[(long)r * D + i];
        }
    float tw, tb;
    sum_groups(aw, ab, sw, sb, &tw, &tb);
    if (threadIdx.y == 0 && i < D) {
        dw[i] += tw;
        db[i] += tb;
    }
}

/* dw[D] += sum_n dout * (in - mean) * rstd; db[D] += sum_n dout: the two
 * passes above, through the backend's scratch. Device pointers; N, D > 0.
 * Also used by fused.cu. */
void tfm_cuda_layernorm_dparams(float *dw, float *db, const float *dout, const float *in, const float *mean,
                                const float *rstd, int N, int D) {
    cudaStream_t st = tfm_cuda_stream();
    int R = (N + LN_CHUNK - 1) / LN_CHUNK;
    /* Growing the scratch synchronises the stream (the kernels queued before
     * this only wait; their results do not change). */
    float *pw = (float *)tfm_cuda_scratch((size_t)2 * R * D * sizeof(float)), *pb = pw + (size_t)R * D;
    dim3 block(LN_COLS, LN_GROUPS), grid((D + LN_COLS - 1) / LN_COLS, R < 65535 ? R : 65535);
    layernorm_dparams_partial_kernel<<<grid, block, 0, st>>>(pw, pb, dout, in, mean, rstd, N, D);
    TFM_CUDA_LAUNCHED();
    layernorm_dparams_sum_kernel<<<grid.x, block, 0, st>>>(dw, db, pw, pb, R, D);
    TFM_CUDA_LAUNCHED();
}

/* fused.cu: the one-pass backward (din, and dw, db from the same reads of
 * dout and in) for D <= 1024; returns 0 where it does not apply. Declared
 * here, not in cuda_internal.cuh, as only this file calls it. */
int tfm_cuda_layernorm_backward_onepass(float *din, float *ddrop, float *dw, float *db, const float *dout,
                                        const float *in, const float *mean, const float *rstd, const float *w,
                                        int N, int D, int accumulate, float p, uint64_t seed, uint64_t stream);

/* din[N,D] (= or += when accumulate); dw[D] +=; db[D] +=. Device pointers.
 * The one-pass kernel where D <= 1024, else (or with TFM_LN_FUSED_DPARAMS=0)
 * the din kernel and the two-pass column sums. */
void tfm_cuda_layernorm_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                                 const float *mean, const float *rstd, const float *w, int N, int D,
                                 int accumulate) {
    if (N <= 0 || D <= 0) return;
    if (tfm_cuda_layernorm_backward_onepass(din, NULL, dw, db, dout, in, mean, rstd, w, N, D, accumulate, 0.0f, 0, 0))
        return;
    layernorm_din_kernel<<<row_blocks(N), 32 * LN_WARPS, 0, tfm_cuda_stream()>>>(din, dout, in, mean, rstd, w, N, D,
                                                                                 accumulate);
    TFM_CUDA_LAUNCHED();
    tfm_cuda_layernorm_dparams(dw, db, dout, in, mean, rstd, N, D);
}
