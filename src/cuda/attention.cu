/*
 * attention.cu: scaled dot-product attention on the GPU, with the contract of
 * src/ops/attention.c:
 *
 *   probs = softmax(Q K^T * scale + mask)      [Tq, Tk] per (b, h), saved before dropout
 *   out   = dropout(probs) V                   [Tq, dv]
 *
 *   q [B, Tq, H*dk]  k [B, Tk, H*dk]  v [B, Tk, H*dv]  out [B, Tq, H*dv]
 *   (all strided, see tfm_attn_dims)   probs, scratch [B, H, Tq, Tk]
 *   key_pad [B, key_pad_stride] (device memory, 1 = masked)
 *
 * Every path materialises the probabilities in `probs`, as the CPU does (the
 * backward reads them); none is flash attention. Two paths:
 *
 *   forward, Tq <= 4 (decoding: one query per step over a KV cache), when the
 *     row's query and scores fit the default 48 KiB of shared memory:
 *     attn_rows_forward_kernel, one warp per query row: scores, masks,
 *     softmax, dropout and P V in one launch, the row's scores in shared memory.
 *   every other forward, and every backward: the unfused path. The products
 *     go through the strided-batched GEMM of gemm.cu (one launch covers every
 *     (b, h) pair, whose two strides cuBLASLt's single batch stride cannot
 *     express), and the masking, softmax, dropout and softmax backward are
 *     row kernels, one warp per row of [B*H*Tq, Tk]; the scores make a round
 *     trip through device memory.
 *
 * A tile forward (a block per 32 query rows, K and V in shared memory) and a
 * fused backward (a block per (b, h)), both on fp32 CUDA cores, were tried and
 * measured no faster than the unfused path at the base shapes (0.99x forward,
 * 0.92x backward, H200). Training in bf16 mode uses the tensor-core tiled
 * kernels of attention_tiled.cu instead (3.3x this path at those shapes).
 *
 * Both paths run the same float arithmetic in the same order: the products
 * sum over their depth in order with one FMA per step (as bgemm_kernel does),
 * and the softmax is the same device function (softmax_row) with the same
 * lane assignment. So the row kernel and the unfused path agree bit for bit
 * (attn_micro checks it), and both agree with the CPU within rounding.
 * tfm_cuda_attention_set_fused(0) forces the unfused path.
 *
 * Masked keys get probability exactly 0; a row whose keys are all masked is
 * all zeros (and so is its output and its gradient), never NaN. Dropout uses
 * the element index of the [B, H, Tq, Tk] layout, as the CPU's apply_dropout.
 */
#include "cuda/cuda_internal.cuh"

#define ROWS_PER_BLOCK 8 /* unfused row kernels: warps per block; one warp per row */

#define ROW_WARPS 4              /* attn_rows_forward_kernel: warps per block, one query row each */
#define ROW_MAX_TQ 4             /* ... which takes Tq <= this */
#define ROW_SMEM_MAX (48 * 1024) /* ... and at most this dynamic shared memory (needs no opt-in) */

static int g_fused = 1; /* tfm_cuda_attention_set_fused */

struct mask_args {
    int H, Tq, Tk, causal, q_offset;
    const uint8_t *key_pad;
    long key_pad_stride;
};

static mask_args make_mask(const tfm_attn_dims *d) {
    mask_args m;
    m.H = d->H, m.Tq = d->Tq, m.Tk = d->Tk, m.causal = d->causal, m.q_offset = d->q_offset;
    m.key_pad = d->key_pad, m.key_pad_stride = d->key_pad_stride;
    return m;
}

__device__ __forceinline__ bool key_masked(const mask_args &m, int b, int i, int j) {
    if (m.causal && j > i + m.q_offset) return true;
    return m.key_pad && m.key_pad[(long)b * m.key_pad_stride + j];
}

/* What the kernels take besides the tensors: tfm_attn_dims with the scalars
 * as the kernels use them. */
struct attn_args {
    int B, H, Tq, Tk, dk, dv;
    long q_row, q_batch, k_row, k_batch, v_row, v_batch, o_row, o_batch;
    mask_args m;
    float scale, p, dscale; /* dscale = 1 / (1 - p) */
    uint64_t key;           /* tfm_cuda_rng_key(seed, stream) */
};

static attn_args make_args(const tfm_attn_dims *d) {
    attn_args a;
    a.B = d->B, a.H = d->H, a.Tq = d->Tq, a.Tk = d->Tk, a.dk = d->dk, a.dv = d->dv;
    a.q_row = d->q_row, a.q_batch = d->q_batch, a.k_row = d->k_row, a.k_batch = d->k_batch;
    a.v_row = d->v_row, a.v_batch = d->v_batch, a.o_row = d->o_row, a.o_batch = d->o_batch;
    a.m = make_mask(d);
    a.scale = (float)d->scale;
    a.p = d->dropout;
    a.dscale = d->dropout > 0 ? (float)(1.0 / (1.0 - d->dropout)) : 1.0f;
    a.key = tfm_cuda_rng_key(d->seed, d->stream);
    if (d->dropout > 0) tfm_cuda_capture_refuse("attention dropout (its key is an argument)");
    return a;
}

/* ------------------------------------------------- softmax rows, one warp each */

/* dropout(pr) of element idx of [B, H, Tq, Tk], as the CPU's apply_dropout. */
__device__ __forceinline__ float drop(float pr, float p, float dscale, uint64_t key, uint64_t idx) {
    return tfm_cuda_rng_uniform_key(key, idx) >= p ? __fmul_rn(pr, dscale) : 0.0f;
}

/* Masked softmax of the row of query i of batch row b, by one warp (lanes take
 * j = lane, lane + 32, ...):
 *   s[Tk]    in: the scores; out: what multiplies V (drow[j] when p > 0, else prow[j]),
 *            unless s is prow itself (the unfused path), which ends as the probabilities
 *   prow[Tk] out: the probabilities (device memory)
 *   drow[Tk] out when p > 0: dropout(probs), element indices idx0 + j
 * Each lane reads back only the elements it wrote; the caller syncs before
 * other lanes read s. */
__device__ __forceinline__ void softmax_row(float *s, float *prow, float *drow, const mask_args &m, int b, int i,
                                            float p, float dscale, uint64_t key, uint64_t idx0) {
    int lane = threadIdx.x & 31;
    float mx = -INFINITY;
    for (int j = lane; j < m.Tk; j += 32)
        if (!key_masked(m, b, i, j)) mx = fmaxf(mx, s[j]);
    mx = tfm_warp_max(mx);
    bool any = mx != -INFINITY; /* scores are finite, so -inf means every key is masked */
    float sum = 0.0f;
    for (int j = lane; j < m.Tk; j += 32) {
        float e = (any && !key_masked(m, b, i, j)) ? expf(s[j] - mx) : 0.0f;
        s[j] = e;
        sum += e;
    }
    sum = tfm_warp_sum(sum);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = lane; j < m.Tk; j += 32) {
        float pr = s[j] * inv, w = pr;
        if (p > 0.0f) {
            w = drop(pr, p, dscale, key, idx0 + j);
            drow[j] = w;
        }
        prow[j] = pr;
        if (s != prow) s[j] = w;
    }
}

/* Softmax backward of one row by one warp, in place on w[Tk] = dP (any memory):
 *   w = dropout mask applied (when p > 0, element indices idx0 + j);
 *   w = P * (w - sum_j w P) * scale.
 * Masked keys have P = 0, so their gradient is 0. */
__device__ __forceinline__ void softmax_backward_row(float *w, const float *pr, int Tk, float scale, float p,
                                                     float dscale, uint64_t key, uint64_t idx0) {
    int lane = threadIdx.x & 31;
    float c = 0.0f;
    for (int j = lane; j < Tk; j += 32) {
        float wj = w[j];
        if (p > 0.0f) wj = drop(wj, p, dscale, key, idx0 + j);
        w[j] = wj;
        c += wj * pr[j];
    }
    c = tfm_warp_sum(c);
    for (int j = lane; j < Tk; j += 32) w[j] = pr[j] * (w[j] - c) * scale;
}

/* ------------------------------------------------------ the unfused path */

/* Row r of [B*H*Tq, Tk] in place: scores -> masked softmax; with dropout,
 * W = dropout(probs) into scratch as well. */
__global__ void softmax_rows_kernel(float *probs, float *scratch, mask_args m, long rows, float p, float dscale,
                                    uint64_t key) {
    for (long r = blockIdx.x * (long)ROWS_PER_BLOCK + (threadIdx.x >> 5); r < rows;
         r += (long)gridDim.x * ROWS_PER_BLOCK) {
        int i = (int)(r % m.Tq), b = (int)(r / m.Tq / m.H);
        float *row = probs + r * m.Tk;
        softmax_row(row, row, p > 0.0f ? scratch + r * m.Tk : nullptr, m, b, i, p, dscale, key,
                    (uint64_t)(r * m.Tk));
    }
}

/* W = dropout(P) over the whole [B, H, Tq, Tk] array (flat index = element index). */
__global__ void dropout_probs_kernel(float *W, const float *P, size_t n, float p, float dscale, uint64_t key) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x)
        W[e] = drop(P[e], p, dscale, key, e);
}

/* Softmax backward per row of [B*H*Tq, Tk], in place on W = dP. */
__global__ void softmax_backward_rows_kernel(float *W, const float *P, int Tk, long rows, float scale, float p,
                                             float dscale, uint64_t key) {
    for (long r = blockIdx.x * (long)ROWS_PER_BLOCK + (threadIdx.x >> 5); r < rows;
         r += (long)gridDim.x * ROWS_PER_BLOCK)
        softmax_backward_row(W + r * Tk, P + r * Tk, Tk, scale, p, dscale, key, (uint64_t)(r * Tk));
}

static unsigned rows_blocks(long rows) {
    long b = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    return (unsigned)(b > 65535 ? 65535 : (b ? b : 1));
}

/* The strided-batched product over every (b, h): X_z = X + b*batch + h*head. */
static void product(int ta, int tb, int M, int N, int K, float alpha, const float *A, long lda, long a_batch,
                    long a_head, const float *Bm, long ldb, long b_batch, long b_head, float *C, long ldc,
                    long c_batch, long c_head, const tfm_attn_dims *d) {
    tfm_cuda_bgemm_args g;
    g.ta = ta, g.tb = tb, g.M = M, g.N = N, g.K = K, g.B = d->B, g.H = d->H;
    g.alpha = alpha, g.beta = 0.0f;
    g.A = A, g.lda = lda, g.a_batch = a_batch, g.a_head = a_head;
    g.Bm = Bm, g.ldb = ldb, g.b_batch = b_batch, g.b_head = b_head;
    g.C = C, g.ldc = ldc, g.c_batch = c_batch, g.c_head = c_head;
    tfm_cuda_bgemm(&g);
}

static void unfused_forward(float *out, float *probs, float *scratch, const float *q, const float *k,
                            const float *v, const tfm_attn_dims *d) {
    long Tq = d->Tq, Tk = d->Tk, ph = Tq * Tk, pb = (long)d->H * ph; /* probs strides per head, per batch */
    long rows = (long)d->B * d->H * Tq;
    attn_args a = make_args(d);

    /* scores = scale * Q K^T into probs */
    product(0, 1, d->Tq, d->Tk, d->dk, a.scale, q, d->q_row, d->q_batch, d->dk, k, d->k_row, d->k_batch, d->dk,
            probs, Tk, pb, ph, d);
    if (Tk > 0) {
        softmax_rows_kernel<<<rows_blocks(rows), 32 * ROWS_PER_BLOCK, 0, tfm_cuda_stream()>>>(
            probs, scratch, a.m, rows, a.p, a.dscale, a.key);
        TFM_CUDA_LAUNCHED();
    }
    /* out = A V, A = the probabilities after dropout */
    const float *A = d->dropout > 0 ? scratch : probs;
    product(0, 0, d->Tq, d->dv, d->Tk, 1.0f, A, Tk, pb, ph, v, d->v_row, d->v_batch, d->dv, out, d->o_row,
            d->o_batch, d->dv, d);
}

static void unfused_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *probs,
                             const float *q, const float *k, const float *v, const tfm_attn_dims *d) {
    long Tq = d->Tq, Tk = d->Tk, ph = Tq * Tk, pb = (long)d->H * ph;
    long rows = (long)d->B * d->H * Tq;
    size_t np = (size_t)rows * Tk;
    attn_args a = make_args(d);
    cudaStream_t st = tfm_cuda_stream();

    /* dV = dropout(P)^T dO */
    const float *A = probs;
    if (d->dropout > 0 && np > 0) {
        dropout_probs_kernel<<<tfm_cuda_blocks(np, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, st>>>(
            scratch, probs, np, a.p, a.dscale, a.key);
        TFM_CUDA_LAUNCHED();
        A = scratch;
    }
    product(1, 0, d->Tk, d->dv, d->Tq, 1.0f, A, Tk, pb, ph, dout, d->o_row, d->o_batch, d->dv, dv, d->v_row,
            d->v_batch, d->dv, d);

    /* dP = dO V^T into scratch, then through the dropout mask and the softmax */
    product(0, 1, d->Tq, d->Tk, d->dv, 1.0f, dout, d->o_row, d->o_batch, d->dv, v, d->v_row, d->v_batch, d->dv,
            scratch, Tk, pb, ph, d);
    if (np > 0) {
        softmax_backward_rows_kernel<<<rows_blocks(rows), 32 * ROWS_PER_BLOCK, 0, st>>>(
            scratch, probs, d->Tk, rows, a.scale, a.p, a.dscale, a.key);
        TFM_CUDA_LAUNCHED();
    }

    /* dQ = dS K;  dK = dS^T Q */
    product(0, 0, d->Tq, d->dk, d->Tk, 1.0f, scratch, Tk, pb, ph, k, d->k_row, d->k_batch, d->dk, dq, d->q_row,
            d->q_batch, d->dk, d);
    product(1, 0, d->Tk, d->dk, d->Tq, 1.0f, scratch, Tk, pb, ph, q, d->q_row, d->q_batch, d->dk, dk, d->k_row,
            d->k_batch, d->dk, d);
}

/* ------------------------------------------ fused forward, one warp per query */

/* One warp per row r of [B*H*Tq, Tk] (query i of (b, h)): the row's query
 * [dk] and scores [Tk] in shared memory (ROW_WARPS * (dk + Tk) floats).
 *   scores: one lane per key (j = lane, lane + 32, ...), its dot product over
 *           dk read along the key's row (float4 loads when VEC: dk, k_row,
 *           k_batch multiples of 4 and k 16-byte aligned);
 *   softmax_row, then out[e] = sum_j W[j] V[j, e] with lanes along e.
 * With Tq = 1 (the decoder's steps) the (b, h) pairs are the rows: nothing
 * is computed for padding, as a 32-row GEMM tile would (1/32 useful work).
 * For Tq > 1 the rows of one (b, h) sit in one block and re-read K and V
 * from the caches, which is why this kernel takes small Tq only. */
template <bool VEC>
__global__ void __launch_bounds__(32 * ROW_WARPS)
    attn_rows_forward_kernel(float *__restrict__ out, float *__restrict__ probs, float *__restrict__ scratch,
                             const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                             attn_args a) {
    extern __shared__ float sh[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    long r = (long)blockIdx.x * ROW_WARPS + warp;
    if (r >= (long)a.B * a.H * a.Tq) return; /* whole warps; the block never syncs */
    int i = (int)(r % a.Tq), Tk = a.Tk, dk = a.dk, dv = a.dv;
    long bh = r / a.Tq;
    int b = (int)(bh / a.H), h = (int)(bh % a.H);
    const float *Q = q + b * a.q_batch + i * a.q_row + (long)h * dk;
    const float *K = k + b * a.k_batch + (long)h * dk;
    const float *V = v + b * a.v_batch + (long)h * dv;
    float *qs = sh + warp * (dk + Tk), *s = qs + dk;

    for (int p = lane; p < dk; p += 32) qs[p] = Q[p];
    __syncwarp();
    for (int j = lane; j < Tk; j += 32) {
        const float *kr = K + j * a.k_row;
        float acc = 0.0f;
        if (VEC) {
#pragma unroll 8
            for (int p = 0; p < dk; p += 4) {
                float4 kv = *reinterpret_cast<const float4 *>(kr + p);
                acc += qs[p] * kv.x;
                acc += qs[p + 1] * kv.y;
                acc += qs[p + 2] * kv.z;
                acc += qs[p + 3] * kv.w;
            }
        } else {
#pragma unroll 4
            for (int p = 0; p < dk; p++) acc += qs[p] * kr[p];
        }
        s[j] = a.scale * acc;
    }
    softmax_row(s, probs + r * Tk, a.p > 0.0f ? scratch + r * Tk : nullptr, a.m, b, i, a.p, a.dscale, a.key,
                (uint64_t)(r * Tk));
    __syncwarp(); /* every lane reads every s[j] below */

    /* out[e] for e = e0 + lane and e0 + 32 + lane; columns past dv read column
     * dv - 1 (in bounds) and are not stored. */
    float *O = out + b * a.o_batch + i * a.o_row + (long)h * dv;
    for (int e0 = 0; e0 < dv; e0 += 64) {
        int e1 = e0 + lane, e2 = e0 + 32 + lane;
        int c1 = min(e1, dv - 1), c2 = min(e2, dv - 1);
        float o1 = 0.0f, o2 = 0.0f;
        const float *vr = V;
#pragma unroll 8
        for (int j = 0; j < Tk; j++, vr += a.v_row) {
            float w = s[j];
            o1 += w * vr[c1];
            o2 += w * vr[c2];
        }
        if (e1 < dv) O[e1] = o1;
        if (e2 < dv) O[e2] = o2;
    }
}

/* ------------------------------------------------------------ dispatch */

/* Runs the forward through attn_rows_forward_kernel when the shape qualifies
 * (see the top of the file); returns 0 when it does not. */
static int rows_forward(float *out, float *probs, float *scratch, const float *q, const float *k, const float *v,
                        const tfm_attn_dims *d) {
    if (d->Tq > ROW_MAX_TQ || d->Tk < 1 || d->dk < 1 || d->dv < 1) return 0;
    long rows = (long)d->B * d->H * d->Tq, blocks = (rows + ROW_WARPS - 1) / ROW_WARPS;
    size_t smem = (size_t)ROW_WARPS * (d->dk + d->Tk) * sizeof(float);
    if (smem > ROW_SMEM_MAX || blocks > 0x7fffffffL) return 0;
    attn_args a = make_args(d);
    int vec = d->dk % 4 == 0 && d->k_row % 4 == 0 && d->k_batch % 4 == 0 && (uintptr_t)k % 16 == 0;
    void (*kernel)(float *, float *, float *, const float *, const float *, const float *, attn_args) =
        vec ? attn_rows_forward_kernel<true> : attn_rows_forward_kernel<false>;
    kernel<<<(unsigned)blocks, 32 * ROW_WARPS, smem, tfm_cuda_stream()>>>(out, probs, scratch, q, k, v, a);
    TFM_CUDA_LAUNCHED();
    return 1;
}

/* ---------------------------------------------------------- entry points */

/* See cuda_internal.cuh. */
int tfm_cuda_attention_set_fused(int on) {
    int old = g_fused;
    g_fused = on != 0;
    return old;
}

/* probs[B,H,Tq,Tk] = softmax(Q K^T * scale + masks) (saved before dropout);
 * out = dropout(probs) V; scratch[B,H,Tq,Tk] receives the dropped-out
 * probabilities (may be NULL when d->dropout == 0). Every pointer, key_pad
 * included, is device memory. */
void tfm_cuda_attention_forward(float *out, float *probs, float *scratch, const float *q, const float *k,
                                const float *v, const tfm_attn_dims *d) {
    if (d->B <= 0 || d->H <= 0 || d->Tq <= 0) return;
    TFM_CUDA_ASSERT(d->dropout <= 0 || scratch);
    TFM_CUDA_ASSERT(!d->kv_rows); /* a device decoder gathers its cache rows instead */
    if (g_fused && rows_forward(out, probs, scratch, q, k, v, d)) return;
    unfused_forward(out, probs, scratch, q, k, v, d);
}

/* dq, dk, dv (=, same strides as q, k, v) from dout and the saved probs;
 * scratch[B,H,Tq,Tk] is overwritten. Device pointers. Always the unfused path. */
void tfm_cuda_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                 const float *probs, const float *q, const float *k, const float *v,
                                 const tfm_attn_dims *d) {
    if (d->B <= 0 || d->H <= 0) return;
    TFM_CUDA_ASSERT(!d->kv_rows);
    unfused_backward(dq, dk, dv, scratch, dout, probs, q, k, v, d);
}
