/*
 * embedding.cu: token embeddings, added positions (sinusoidal or learned)
 * and rotary positions on the GPU (src/ops/embedding.c on the device).
 *
 *   ids [N]   table [V, D]   out, dout [N, D]   pos [N]   positions table [P, D]
 *   rope: x rows of stride `row`, H heads of size dk at the start of each row
 *
 * ids and pos are device memory. The callers have checked them against V and
 * P, as on the CPU.
 *
 * The backward passes scatter-add rows into the table with atomicAdd, since
 * several rows may share an id. The additions into one table element then
 * happen in no fixed order: results agree with the CPU to rounding, but are
 * not bit-reproducible run to run (a deterministic version would sort the ids
 * first).
 */
#include "cuda/cuda_internal.cuh"

/* x over the D columns (coalesced), y over the N rows. */
static dim3 rows_grid(int N, int D) {
    unsigned gx = (unsigned)((D + TFM_CUDA_THREADS - 1) / TFM_CUDA_THREADS);
    return dim3(gx ? gx : 1, N < 65535 ? N : 65535);
}

__global__ void embedding_forward_kernel(float *out, const int32_t *ids, const float *table, int N, int D,
                                         float scale) {
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        const float *src = table + (long)ids[n] * D;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < D; i += gridDim.x * blockDim.x)
            out[(long)n * D + i] = src[i] * scale;
    }
}

/* out[N,D] = table[ids[n]] * scale */
void tfm_cuda_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int D, float scale) {
    if (N <= 0 || D <= 0) return;
    embedding_forward_kernel<<<rows_grid(N, D), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(out, ids, table, N, D,
                                                                                          scale);
    TFM_CUDA_LAUNCHED();
}

__global__ void scatter_add_kernel(float *dtable, const float *dout, const int32_t *ids, int N, int D, float scale) {
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        float *dst = dtable + (long)ids[n] * D;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < D; i += gridDim.x * blockDim.x)
            atomicAdd(dst + i, dout[(long)n * D + i] * scale);
    }
}

/* dtable[ids[n]] += dout[n] * scale  (atomic; see the top of the file) */
void tfm_cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int D, float scale) {
    if (N <= 0 || D <= 0) return;
    scatter_add_kernel<<<rows_grid(N, D), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(dtable, dout, ids, N, D, scale);
    TFM_CUDA_LAUNCHED();
}

__global__ void positions_forward_kernel(float *x, const float *table, const int32_t *pos, int N, int D) {
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        const float *src = table + (long)pos[n] * D;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < D; i += gridDim.x * blockDim.x)
            x[(long)n * D + i] += src[i];
    }
}

/* x[n] += table[pos[n]]   (x [N,D], table [P,D]) */
void tfm_cuda_positions_forward(float *x, const float *table, const int32_t *pos, int N, int D) {
    if (N <= 0 || D <= 0) return;
    positions_forward_kernel<<<rows_grid(N, D), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(x, table, pos, N, D);
    TFM_CUDA_LAUNCHED();
}

/* dtable[pos[n]] += dx[n]   (atomic, as the embedding backward) */
void tfm_cuda_positions_backward(float *dtable, const float *dx, const int32_t *pos, int N, int D) {
    tfm_cuda_embedding_backward(dtable, dx, pos, N, D, 1.0f);
}

/* One thread per (row, frequency): the angle in double as the CPU computes it
 * (the same expression, so the float cos/sin agree to the last bit in all
 * but rare ties of the double libm), then the pair rotated in every head. */
__global__ void rope_kernel(float *x, long row, const int32_t *pos, int N, int H, int dk, double theta,
                            int inverse) {
    int half = dk / 2;
    long total = (long)N * half;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total; e += (long)gridDim.x * blockDim.x) {
        int n = (int)(e / half), i = (int)(e % half);
        double freq = pow(theta, -2.0 * i / dk);
        double angle = pos[n] * freq;
        float c = (float)cos(angle), s = (float)(inverse ? -sin(angle) : sin(angle));
        for (int h = 0; h < H; h++) {
            float *head = x + (long)n * row + (long)h * dk;
            float a = head[i], b = head[i + half];
            head[i] = a * c - b * s;
            head[i + half] = b * c + a * s;
        }
    }
}

/* Rotary positions in place on H heads of size dk (even) at the start of each
 * of the N rows of x (row stride `row`); inverse = 1 rotates by minus the
 * angle (the backward). pos [N] is device memory. */
void tfm_cuda_rope(float *x, long row, const int32_t *pos, int N, int H, int dk, double theta, int inverse) {
    TFM_CUDA_ASSERT(dk % 2 == 0);
    if (N <= 0 || H <= 0 || dk <= 0) return;
    size_t total = (size_t)N * (dk / 2);
    rope_kernel<<<tfm_cuda_blocks(total, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(
        x, row, pos, N, H, dk, theta, inverse);
    TFM_CUDA_LAUNCHED();
}
