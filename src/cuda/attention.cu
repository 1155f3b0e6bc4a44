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
 * This version materialises the probabilities, as the CPU does: the products
 * run through the strided-batched GEMM kernel of gemm.cu (one launch covers
 * every (b, h) pair, whose two strides cuBLASLt's single batch stride cannot
 * express; its tiles shrink to 32x32 or 32x64 for the model's short
 * sequences), and the masking, softmax, dropout and softmax backward are
 * row kernels, one warp per row of [B*H*Tq, Tk]. It is correct and
 * reasonably fast for the model's lengths; it is not flash attention (the
 * scores make a round trip through device memory, O(Tq*Tk) per head).
 *
 * Masked keys get probability exactly 0; a row whose keys are all masked is
 * all zeros (and so is its output and its gradient), never NaN. Dropout uses
 * the element index of the [B, H, Tq, Tk] layout, as the CPU's apply_dropout.
 */
#include "cuda/cuda_internal.cuh"

#define ROWS_PER_BLOCK 8 /* warps per block; one warp per row */

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

/* Row r of [B*H*Tq, Tk] in place: scores -> masked softmax; with dropout,
 * W = dropout(probs) into scratch as well. */
__global__ void softmax_rows_kernel(float *probs, float *scratch, mask_args m, long rows, float p, float dscale,
                                    uint64_t seed, uint64_t stream) {
    int lane = threadIdx.x & 31;
    for (long r = blockIdx.x * (long)ROWS_PER_BLOCK + (threadIdx.x >> 5); r < rows;
         r += (long)gridDim.x * ROWS_PER_BLOCK) {
        int i = (int)(r % m.Tq), b = (int)(r / m.Tq / m.H);
        float *row = probs + r * m.Tk;
        float mx = -INFINITY;
        for (int j = lane; j < m.Tk; j += 32)
            if (!key_masked(m, b, i, j)) mx = fmaxf(mx, row[j]);
        mx = tfm_warp_max(mx);
        bool any = mx != -INFINITY; /* scores are finite, so -inf means every key is masked */
        float sum = 0.0f;
        for (int j = lane; j < m.Tk; j += 32) {
            float e = (any && !key_masked(m, b, i, j)) ? expf(row[j] - mx) : 0.0f;
            row[j] = e;
            sum += e;
        }
        sum = tfm_warp_sum(sum);
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int j = lane; j < m.Tk; j += 32) {
            float pr = row[j] * inv;
            row[j] = pr;
            if (p > 0.0f)
                scratch[r * m.Tk + j] =
                    tfm_cuda_rng_uniform(seed, stream, (uint64_t)(r * m.Tk + j)) >= p ? __fmul_rn(pr, dscale) : 0.0f;
        }
    }
}

/* W = dropout(P) over the whole [B, H, Tq, Tk] array (flat index = element index). */
__global__ void dropout_probs_kernel(float *W, const float *P, size_t n, float p, float dscale, uint64_t seed,
                                     uint64_t stream) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x)
        W[e] = tfm_cuda_rng_uniform(seed, stream, e) >= p ? __fmul_rn(P[e], dscale) : 0.0f;
}

/* Softmax backward per row, in place on W = dP:
 *   W = dropout mask applied (when p > 0);  W = P * (W - sum_j W P) * scale.
 * Masked keys have P = 0, so their gradient is 0. */
__global__ void softmax_backward_rows_kernel(float *W, const float *P, int Tk, long rows, float scale, float p,
                                             float dscale, uint64_t seed, uint64_t stream) {
    int lane = threadIdx.x & 31;
    for (long r = blockIdx.x * (long)ROWS_PER_BLOCK + (threadIdx.x >> 5); r < rows;
         r += (long)gridDim.x * ROWS_PER_BLOCK) {
        float *w = W + r * Tk;
        const float *pr = P + r * Tk;
        float c = 0.0f;
        for (int j = lane; j < Tk; j += 32) {
            float wj = w[j];
            if (p > 0.0f)
                wj = tfm_cuda_rng_uniform(seed, stream, (uint64_t)(r * Tk + j)) >= p ? __fmul_rn(wj, dscale) : 0.0f;
            w[j] = wj;
            c += wj * pr[j];
        }
        c = tfm_warp_sum(c);
        for (int j = lane; j < Tk; j += 32) w[j] = pr[j] * (w[j] - c) * scale;
    }
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

/* probs[B,H,Tq,Tk] = softmax(Q K^T * scale + masks) (saved before dropout);
 * out = dropout(probs) V; scratch[B,H,Tq,Tk] receives the dropped-out
 * probabilities (may be NULL when d->dropout == 0). Every pointer, key_pad
 * included, is device memory. */
void tfm_cuda_attention_forward(float *out, float *probs, float *scratch, const float *q, const float *k,
                                const float *v, const tfm_attn_dims *d) {
    if (d->B <= 0 || d->H <= 0 || d->Tq <= 0) return;
    TFM_CUDA_ASSERT(d->dropout <= 0 || scratch);
    long Tq = d->Tq, Tk = d->Tk, ph = Tq * Tk, pb = (long)d->H * ph; /* probs strides per head, per batch */
    long rows = (long)d->B * d->H * Tq;
    float dscale = d->dropout > 0 ? (float)(1.0 / (1.0 - d->dropout)) : 1.0f;

    /* scores = scale * Q K^T into probs */
    product(0, 1, d->Tq, d->Tk, d->dk, (float)d->scale, q, d->q_row, d->q_batch, d->dk, k, d->k_row, d->k_batch,
            d->dk, probs, Tk, pb, ph, d);
    if (Tk > 0) {
        softmax_rows_kernel<<<rows_blocks(rows), 32 * ROWS_PER_BLOCK, 0, tfm_cuda_stream()>>>(
            probs, scratch, make_mask(d), rows, d->dropout, dscale, d->seed, d->stream);
        TFM_CUDA_LAUNCHED();
    }
    /* out = A V, A = the probabilities after dropout */
    const float *A = d->dropout > 0 ? scratch : probs;
    product(0, 0, d->Tq, d->dv, d->Tk, 1.0f, A, Tk, pb, ph, v, d->v_row, d->v_batch, d->dv, out, d->o_row,
            d->o_batch, d->dv, d);
}

/* dq, dk, dv (=, same strides as q, k, v) from dout and the saved probs;
 * scratch[B,H,Tq,Tk] is overwritten. Device pointers. */
void tfm_cuda_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                 const float *probs, const float *q, const float *k, const float *v,
                                 const tfm_attn_dims *d) {
    if (d->B <= 0 || d->H <= 0) return;
    long Tq = d->Tq, Tk = d->Tk, ph = Tq * Tk, pb = (long)d->H * ph;
    long rows = (long)d->B * d->H * Tq;
    size_t np = (size_t)rows * Tk;
    float dscale = d->dropout > 0 ? (float)(1.0 / (1.0 - d->dropout)) : 1.0f;
    cudaStream_t st = tfm_cuda_stream();

    /* dV = dropout(P)^T dO */
    const float *A = probs;
    if (d->dropout > 0 && np > 0) {
        dropout_probs_kernel<<<tfm_cuda_blocks(np, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, st>>>(
            scratch, probs, np, d->dropout, dscale, d->seed, d->stream);
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
            scratch, probs, d->Tk, rows, (float)d->scale, d->dropout, dscale, d->seed, d->stream);
        TFM_CUDA_LAUNCHED();
    }

    /* dQ = dS K;  dK = dS^T Q */
    product(0, 0, d->Tq, d->dk, d->Tk, 1.0f, scratch, Tk, pb, ph, k, d->k_row, d->k_batch, d->dk, dq, d->q_row,
            d->q_batch, d->dk, d);
    product(1, 0, d->Tk, d->dk, d->Tq, 1.0f, scratch, Tk, pb, ph, q, d->q_row, d->q_batch, d->dk, dk, d->k_row,
            d->k_batch, d->dk, d);
}
