/*
 * ffn.cu: the position-wise feed-forward network as one op each way
 * (backend.h: ffn_forward, ffn_backward): in BF16 mode the forward's
 * element-wise work rides in the epilogue of cuBLASLt's product, and the
 * backward's takes one pass of its own over a bf16 gradient.
 *
 *   in [N, D]   w1 [F, D]   b1 [F]   w2 [D, F]   b2 [D]   out, dout, din [N, D]
 *   hidden, act, dact [N, F]: buffers of 4NF bytes each (sized for fp32)
 *
 * Two paths, chosen by the forward, which notes per act buffer which one it
 * took (note_set): the backward must read the saved state in the layout the
 * forward wrote, and it cannot tell from the arguments it gets (the forward's
 * choice depends on out, b1 and b2, which it does not see, and on cuBLASLt).
 *
 * The composition (backend.h's definition: linear, activation + dropout,
 * linear): fp32 and tf32 modes, GELU, activation dropout, odd sizes, few rows.
 *
 * The fused path: BF16 mode, ReLU without dropout (the paper's FFN), D and F
 * multiples of 8 (16-byte rows of bf16), D <= F, products large enough for
 * bf16 copies to pay (tfm_cuda_bf16_pays, as gemm.cu judges), and cuBLASLt
 * taking the products below; TFM_FFN_FUSED=0 in the environment turns it
 * off (the composition then runs: for A/B timing and for debugging).
 *
 *   forward   in16   = bf16(in)                                   kept for dw1
 *             act16  = bf16(relu(in16 w1^T + b1)), mask bits      one product, RELU_AUX_BIAS epilogue
 *             out    = act16 w2^T + b2                            one product, BIAS epilogue (fp32 out)
 *   backward  dout16 = bf16(dout)
 *             dw2   += dout16^T act16;  db2 += column sums of dout
 *             dact16 = bf16(dout16 w2)                             one product, bf16 out
 *             dact16 = mask ? dact16 : 0;  db1 += its column sums  drelu_colsum (this file)
 *             dw1   += dact16^T in16
 *             din    = (or +=) dact16 w1
 * (w1, w2: their bf16 copies, gemm.cu's B buffer, converted on each use as
 * gemm.cu does.) Numerically this is BF16 mode's composition: the same
 * operands rounded to bf16 at the same points, fp32 sums, the ReLU taken in
 * fp32 before the activation is rounded; but b1 rides in the epilogue
 * rounded to bf16 (cuBLASLt 13.0 takes no fp32 bias beside a bf16 output).
 * Against the composition it skips, per layer: writing the fp32 hidden and
 * reading it back for the ReLU, the fp32 act and its bf16 conversion, the
 * fp32 dact (written as bf16 instead), the ReLU backward's fp32 pass and
 * dact's conversion (about 25 bytes per element of [N, F], 1.3 GB per layer
 * of the base model's training step).
 * Why not cuBLASLt's backward epilogues: on an H200 (cuBLASLt 13.0) DRELU
 * ran as a separate epilogue kernel after the product (0.30 ms per layer of
 * the base model, against 0.09 ms for the product itself), DRELU_BGRAD
 * refused an fp32 bias gradient beside the bf16 output, and BGRADB (db2 from
 * dw2's product) was another separate kernel as slow as the column sums of
 * dout. drelu_colsum applies the mask in place and sums the columns of the
 * result in one read and one write of dact16, in a fixed order (two passes,
 * no atomics: the same bits run to run).
 * The mask's bit order within a byte is not documented: the first fused
 * forward of a process checks it against the activation it just wrote
 * (mask_order; H200: least significant bit first), and if neither order
 * fits the backward masks by act16 > 0 instead.
 *
 * Saved state of the fused path (the buffers' 4NF bytes, reinterpreted):
 *   act:    act16 [N, F] bf16 (2NF bytes), then in16 [N, D] bf16 (2ND <= 2NF
 *           bytes: D <= F). Rows of F and D elements: 16-byte aligned.
 *   hidden: the ReLU mask from the first 256-byte boundary: one bit per
 *           element, N rows of mask_ld bits, mask_ld = F rounded up to 128
 *           (cuBLASLt's rule for the mask's leading dimension): about NF/8
 *           bytes, a 32nd of the buffer.
 *   dact:   dact16 [N, F] bf16 (the backward's scratch).
 * Where the backward's products cannot run on that state (dact not 16-byte
 * aligned, cuBLASLt refusing one of them for the gradients' alignment), the
 * backward widens act16 into dact and runs the composition's linear
 * backwards on it (fallback_backward): slower, the same result.
 */
#include "cuda/cuda_internal.cuh"

#include <stdarg.h>
#include <string.h>

/* ------------------------------------------------------------ the notes */

/* Which path the last forward into each act buffer took. A host array,
 * grown when a new buffer shows up (a model has one per layer, so it grows
 * during the first step and never after). */
typedef struct ffn_note {
    const float *act;
    int N, D, F;
    int fused;
} ffn_note;
static ffn_note *g_notes;
static int g_n_notes, g_cap_notes;

static ffn_note *note_find(const float *act) {
    for (int i = 0; i < g_n_notes; i++)
        if (g_notes[i].act == act) return &g_notes[i];
    return NULL;
}

static void note_set(const float *act, int N, int D, int F, int fused) {
    ffn_note *n = note_find(act);
    if (!n) {
        if (g_n_notes == g_cap_notes) {
            int cap = g_cap_notes ? 2 * g_cap_notes : 64;
            ffn_note *grown = (ffn_note *)realloc(g_notes, (size_t)cap * sizeof *grown);
            if (!grown) tfm_cuda_fail("realloc", __FILE__, __LINE__, "out of host memory");
            g_notes = grown, g_cap_notes = cap;
        }
        n = &g_notes[g_n_notes++];
    }
    n->act = act, n->N = N, n->D = D, n->F = F, n->fused = fused;
}

/* ------------------------------------------------------------ helpers */

/* An environment switch, on unless set to "0". Read on every call (a few
 * dozen calls a step), so that a test can flip it. */
static int env_on(const char *name) {
    const char *v = getenv(name);
    return !(v && strcmp(v, "0") == 0);
}

/* A refusal by cuBLASLt of a product whose plan it had accepted, after the
 * op has started changing its outputs: nothing correct can follow. Never
 * seen; the message says how to avoid the path. */
#define FFN_MUST(ran)                                                                                         \
    do {                                                                                                      \
        if (!(ran))                                                                                           \
            tfm_cuda_fail(#ran, __FILE__, __LINE__,                                                           \
                          "cuBLASLt refused a product of the fused FFN after accepting its plan "             \
                          "(TFM_FFN_FUSED=0 runs the composition)");                                          \
    } while (0)

/* TFM_FFN_VERBOSE=1: one line on stderr the first time each kind of call
 * runs (which path, what cuBLASLt accepted): for debugging and reports. */
__attribute__((format(printf, 2, 3))) static void tell(int *told, const char *fmt, ...) {
    if (*told || !getenv("TFM_FFN_VERBOSE")) return;
    *told = 1;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ffn: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}
static int g_told_forward, g_told_backward, g_told_fallback, g_told_mask;

/* A 16-byte aligned copy of b1 for the forward's epilogue (bf16: see the
 * top; or fp32 when b1 itself is off a 16-byte boundary). Grow-only (waits
 * for queued work when it grows: the first step). */
static float *g_vec;
static size_t g_vec_floats;

static float *vec_reserve(int F) {
    if ((size_t)F > g_vec_floats) {
        TFM_CUDA_CHECK(cudaStreamSynchronize(tfm_cuda_stream()));
        TFM_CUDA_CHECK(cudaFree(g_vec));
        g_vec = NULL, g_vec_floats = 0;
        TFM_CUDA_CHECK(cudaMalloc(&g_vec, (size_t)F * sizeof(float)));
        g_vec_floats = (size_t)F;
        tfm_cuda_graphs_stale(); /* recorded steps hold the old address */
    }
    return g_vec;
}

/* Where the fused path keeps its state (see the top of the file). */
typedef struct ffn_layout {
    __nv_bfloat16 *act16; /* [N, F] */
    __nv_bfloat16 *in16;  /* [N, D] */
    unsigned char *mask;  /* N rows of mask_ld bits */
    int64_t mask_ld;
} ffn_layout;

static int64_t mask_ld_of(int F) { return ((int64_t)F + 127) / 128 * 128; }

/* The backward reads through the same layout; it writes none of it. */
static ffn_layout layout_of(const float *hidden, const float *act, int N, int F) {
    ffn_layout L;
    L.act16 = (__nv_bfloat16 *)act;
    L.in16 = L.act16 + (size_t)N * F;
    L.mask = (unsigned char *)(((uintptr_t)hidden + 255) & ~(uintptr_t)255);
    L.mask_ld = mask_ld_of(F);
    return L;
}

/* Whether the fused path may run (before asking cuBLASLt): see the top. */
static int fused_possible(const float *hidden, const float *act, int N, int D, int F, tfm_act_kind kind, float p) {
    if (!tfm_cuda_matmul_is_bf16() || !env_on("TFM_FFN_FUSED")) return 0;
    if (kind != TFM_OP_RELU || p != 0.0f || N <= 0 || D <= 0 || F <= 0) return 0;
    if (D % 8 != 0 || F % 8 != 0 || D > F) return 0;
    if (tfm_cuda_ptr_align(hidden) < 16 || tfm_cuda_ptr_align(act) < 16) return 0;
    if (255 + (size_t)N * (size_t)(mask_ld_of(F) / 8) > (size_t)4 * N * F) return 0; /* tiny F only */
    /* The two products of each direction, against what they convert (the
     * forward: in and both weights; the backward: dout and both weights). */
    return tfm_cuda_bf16_pays(4.0 * N * D * F, (double)N * D + 2.0 * D * F);
}

/* ------------------------------------------------------- the ReLU mask */

/* How the mask's bits sit in its bytes: element (n, f) is bit f % 8 of byte
 * n * mask_ld / 8 + f / 8, counted from the least significant bit
 * (MASK_LSB) or from the most (MASK_MSB); MASK_UNKNOWN: neither matched, and
 * the backward masks by act16 > 0. MASK_UNCHECKED until the first fused
 * forward checks (mask_order). */
enum { MASK_UNCHECKED = -1, MASK_UNKNOWN = 0, MASK_LSB = 1, MASK_MSB = 2 };
static int g_mask_order = MASK_UNCHECKED;

__device__ __forceinline__ unsigned mask_byte(const unsigned char *mask, long row_bytes, long n, int f, int order) {
    unsigned b = mask[n * row_bytes + (f >> 3)];
    return order == MASK_MSB ? __brev(b) >> 24 : b; /* bit k: column f + k */
}

/* The elements where the mask read LSB first (bad[0], bad[1]) or MSB first
 * (bad[2], bad[3]) disagrees with act > 0: bad[0] and bad[2] count set bits
 * over a zero activation, bad[1] and bad[3] clear bits over a positive one.
 * One thread per byte of mask (F % 8 == 0). */
__global__ void mask_check_kernel(unsigned *bad, const unsigned char *mask, long row_bytes,
                                  const __nv_bfloat16 *act, int N, int F) {
    size_t per_row = (size_t)F / 8, bytes = (size_t)N * per_row;
    unsigned miss[4] = {0, 0, 0, 0};
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < bytes; i += (size_t)gridDim.x * blockDim.x) {
        long n = (long)(i / per_row);
        int f = (int)(i - (size_t)n * per_row) * 8;
        unsigned lsb = mask_byte(mask, row_bytes, n, f, MASK_LSB), msb = mask_byte(mask, row_bytes, n, f, MASK_MSB);
        for (int k = 0; k < 8; k++) {
            unsigned pos = __bfloat162float(act[(size_t)n * F + f + k]) > 0.0f, bl = (lsb >> k) & 1u;
            unsigned bm = (msb >> k) & 1u;
            miss[0] += bl && !pos, miss[1] += !bl && pos, miss[2] += bm && !pos, miss[3] += !bm && pos;
        }
    }
    for (int j = 0; j < 4; j++)
        if (miss[j]) atomicAdd(&bad[j], miss[j]);
}

/* The mask's bit order, read once per process off the first fused forward's
 * mask and activation. act16 > 0 where the ReLU's input was positive, but
 * not quite everywhere (seen on an H200, cuBLASLt 13.0: 1 element of
 * 52,428,800 disagreed with the right order, 26 million with the other;
 * presumably a positive input below what the bf16 output keeps). So an order
 * is taken when at most one element in 10,000 disagrees with it; the mask,
 * set from the fp32 pre-activation, is what the composition's ReLU backward
 * tests too. TFM_FFN_VERBOSE=1 prints the counts. Waits for the GPU once. */
static int mask_order(const ffn_layout *L, int N, int F) {
    if (g_mask_order != MASK_UNCHECKED) return g_mask_order;
    unsigned *bad = NULL, h[4];
    TFM_CUDA_CHECK(cudaMalloc(&bad, sizeof h));
    TFM_CUDA_CHECK(cudaMemsetAsync(bad, 0, sizeof h, tfm_cuda_stream()));
    size_t bytes = (size_t)N * (F / 8), elements = (size_t)N * F;
    mask_check_kernel<<<tfm_cuda_blocks(bytes, TFM_CUDA_THREADS), TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(
        bad, L->mask, (long)(L->mask_ld / 8), L->act16, N, F);
    TFM_CUDA_LAUNCHED();
    TFM_CUDA_CHECK(cudaMemcpyAsync(h, bad, sizeof h, cudaMemcpyDeviceToHost, tfm_cuda_stream()));
    TFM_CUDA_CHECK(cudaStreamSynchronize(tfm_cuda_stream()));
    TFM_CUDA_CHECK(cudaFree(bad));
    size_t lsb = (size_t)h[0] + h[1], msb = (size_t)h[2] + h[3];
    g_mask_order = lsb <= msb && lsb * 10000 <= elements   ? MASK_LSB
                   : msb < lsb && msb * 10000 <= elements ? MASK_MSB
                                                          : MASK_UNKNOWN;
    tell(&g_told_mask,
         "ReLU mask bit order: %s (of %zu elements, LSB first: %u set over 0, %u clear over > 0; "
         "MSB first: %u, %u)",
         g_mask_order == MASK_LSB ? "LSB first" : g_mask_order == MASK_MSB ? "MSB first" : "unknown: act16 > 0 masks",
         elements, h[0], h[1], h[2], h[3]);
    return g_mask_order;
}

/* ------------------------------------------------- drelu_colsum */

/* The ReLU's backward on the bf16 gradient g [N, F] in place, g = keep ? g :
 * 0 (keep: the mask's bit in `order`, or act > 0 for MASK_UNKNOWN), and
 * part[blockIdx.y * F + f] = the sum of the result over this block's rows
 * (part NULL: none). Block (32, 8): each thread 8 columns (one 16-byte load
 * and store of g, one byte of mask), rows strided by 8 over `rows` rows;
 * grid (F / 256 rounded up, row chunks). F % 8 == 0. */
__global__ void __launch_bounds__(256) drelu_colsum_kernel(__nv_bfloat16 *g, const unsigned char *mask, long row_bytes,
                                                           int order, const __nv_bfloat16 *act, int N, int F,
                                                           int rows, float *part) {
    __shared__ float red[8][32 * 8 + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int f = (blockIdx.x * 32 + tx) * 8;
    long n0 = (long)blockIdx.y * rows, n1 = n0 + rows < N ? n0 + rows : N;
    float s[8];
#pragma unroll
    for (int k = 0; k < 8; k++) s[k] = 0.0f;
    if (f < F) {
        for (long n = n0 + ty; n < n1; n += 8) {
            uint4 *gp = (uint4 *)(g + (size_t)n * F + f);
            uint4 v = *gp;
            __nv_bfloat162 *h = (__nv_bfloat162 *)&v;
            unsigned keep = 0;
            if (order != MASK_UNKNOWN) {
                keep = mask_byte(mask, row_bytes, n, f, order);
            } else {
                uint4 a = *(const uint4 *)(act + (size_t)n * F + f);
                const __nv_bfloat162 *ah = (const __nv_bfloat162 *)&a;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float2 x = __bfloat1622float2(ah[k]);
                    keep |= (x.x > 0.0f ? 1u : 0u) << (2 * k) | (x.y > 0.0f ? 1u : 0u) << (2 * k + 1);
                }
            }
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float2 x = __bfloat1622float2(h[k]);
                if (!((keep >> (2 * k)) & 1u)) x.x = 0.0f;
                if (!((keep >> (2 * k + 1)) & 1u)) x.y = 0.0f;
                s[2 * k] += x.x, s[2 * k + 1] += x.y;
                h[k] = __floats2bfloat162_rn(x.x, x.y); /* exact: bf16 values or 0 */
            }
            *gp = v;
        }
    }
    if (!part) return; /* uniform across the block */
#pragma unroll
    for (int k = 0; k < 8; k++) red[ty][tx * 8 + k] = s[k];
    __syncthreads();
    if (ty == 0 && f < F) {
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float t = 0.0f;
            for (int r = 0; r < 8; r++) t += red[r][tx * 8 + k];
            part[(size_t)blockIdx.y * F + f + k] = t;
        }
    }
}

/* db[c] += sum over k < chunks of part[k * F + c]. Block (32, 32): 32
 * columns, the chunks strided over threadIdx.y, then summed in a fixed
 * order. */
__global__ void __launch_bounds__(1024) sum_parts_kernel(float *db, const float *part, int chunks, int F) {
    __shared__ float red[32][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (c < F)
        for (int k = threadIdx.y; k < chunks; k += 32) s += part[(size_t)k * F + c];
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < F) {
        float t = 0.0f;
        for (int r = 0; r < 32; r++) t += red[r][threadIdx.x];
        db[c] += t;
    }
}

#define DRELU_ROWS 128 /* rows per chunk of drelu_colsum_kernel */

/* dact16 = mask ? dact16 : 0 in place, and db1 += its column sums when db1
 * is not NULL (two passes through tfm_cuda_scratch, deterministic). */
static void drelu_colsum(__nv_bfloat16 *dact16, float *db1, const ffn_layout *L, int N, int F) {
    int rows = DRELU_ROWS;
    long chunks = (N + rows - 1) / rows;
    if (chunks > 65535) { /* the grid's y limit: longer chunks */
        rows = (int)((N + 65534) / 65535);
        chunks = (N + rows - 1) / rows;
    }
    float *part = db1 ? (float *)tfm_cuda_scratch((size_t)chunks * F * sizeof(float)) : NULL;
    dim3 grid((unsigned)((F / 8 + 31) / 32), (unsigned)chunks);
    drelu_colsum_kernel<<<grid, dim3(32, 8), 0, tfm_cuda_stream()>>>(dact16, L->mask, (long)(L->mask_ld / 8),
                                                                     g_mask_order, L->act16, N, F, rows, part);
    TFM_CUDA_LAUNCHED();
    if (!db1) return;
    sum_parts_kernel<<<(unsigned)((F + 31) / 32), dim3(32, 32), 0, tfm_cuda_stream()>>>(db1, part, (int)chunks, F);
    TFM_CUDA_LAUNCHED();
}

/* dst[i] = src[i] widened to fp32. */
__global__ void widen_kernel(float *dst, const __nv_bfloat16 *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

/* g[i] = 0 where the ReLU's output act[i] is not positive (fallback_backward). */
__global__ void relu_grad_kernel(float *g, const __nv_bfloat16 *act, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (!(__bfloat162float(act[i]) > 0.0f)) g[i] = 0.0f;
}

/* ------------------------------------------------------------ forward */

/* The fused forward; returns 0 when cuBLASLt (or the device's memory) will
 * not run it, having then written nothing but parts of act's memory, which
 * the composition overwrites. */
static int fused_forward(float *out, float *hidden, float *act, const float *in, const float *w1, const float *b1,
                         const float *w2, const float *b2, int N, int D, int F, int in_filled) {
    ffn_layout L = layout_of(hidden, act, N, F);
    float *vec = vec_reserve(F);
    tfm_cuda_mat in16 = {CUDA_R_16BF, L.in16, D, 16}, act16 = {CUDA_R_16BF, L.act16, F, 16};
    tfm_cuda_mat w1_16 = {CUDA_R_16BF, NULL, D, 16}, w2_16 = {CUDA_R_16BF, NULL, F, 16}; /* gemm.cu's B buffer */
    tfm_cuda_mat outm = {CUDA_R_32F, out, D, tfm_cuda_ptr_align(out)};

    /* act16[N, F] = relu(in16 w1^T + b1) and its mask: the bias in fp32 if
     * cuBLASLt takes an fp32 vector beside the bf16 output, else rounded to
     * bf16 (into vec); an fp32 b1 off a 16-byte boundary is copied to vec. */
    tfm_cuda_epilogue e1 = {b1 ? CUBLASLT_EPILOGUE_RELU_AUX_BIAS : CUBLASLT_EPILOGUE_RELU_AUX, CUDA_R_32F,
                            b1 && tfm_cuda_ptr_align(b1) == 16 ? (void *)b1 : (void *)vec, L.mask, L.mask_ld};
    int ok1 = tfm_cuda_lt_matmul(0, 1, N, F, D, 1.0f, &in16, &w1_16, 0.0f, &act16, &e1, 0), bias16 = 0;
    if (!ok1 && b1) {
        e1.vec_type = CUDA_R_16BF, e1.vec = vec;
        ok1 = bias16 = tfm_cuda_lt_matmul(0, 1, N, F, D, 1.0f, &in16, &w1_16, 0.0f, &act16, &e1, 0);
    }
    /* out[N, D] = act16 w2^T + b2: b2 in the epilogue where it can ride. */
    tfm_cuda_epilogue e2 = {CUBLASLT_EPILOGUE_BIAS, CUDA_R_32F, (void *)b2, NULL, 0};
    int epi2 = b2 && tfm_cuda_ptr_align(b2) == 16 &&
               tfm_cuda_lt_matmul(0, 1, N, D, F, 1.0f, &act16, &w2_16, 0.0f, &outm, &e2, 0);
    int ok2 = epi2 || tfm_cuda_lt_matmul(0, 1, N, D, F, 1.0f, &act16, &w2_16, 0.0f, &outm, NULL, 0);
    if (!ok1 || !ok2) return 0;

    if (bias16) tfm_cuda_to_bf16((__nv_bfloat16 *)vec, F, b1, 1, F, F);
    else if (b1 && e1.vec == vec)
        TFM_CUDA_CHECK(cudaMemcpyAsync(vec, b1, (size_t)F * sizeof(float), cudaMemcpyDeviceToDevice,
                                       tfm_cuda_stream()));
    if (!in_filled) tfm_cuda_to_bf16(L.in16, D, in, N, D, D); /* else its producer wrote it (ffn_in_keep) */
    if (!tfm_cuda_bf16_operand(1, w1, F, D, D, &w1_16)) return 0;
    if (!tfm_cuda_lt_matmul(0, 1, N, F, D, 1.0f, &in16, &w1_16, 0.0f, &act16, &e1, 1)) return 0;
    (void)mask_order(&L, N, F);
    if (!tfm_cuda_bf16_operand(1, w2, D, F, F, &w2_16)) return 0;
    tell(&g_told_forward, "fused forward: b1 %s in RELU_AUX_BIAS, b2 %s", bias16 ? "bf16" : "fp32",
         epi2 ? "in BIAS" : "added after");
    if (epi2 && tfm_cuda_lt_matmul(0, 1, N, D, F, 1.0f, &act16, &w2_16, 0.0f, &outm, &e2, 1)) return 1;
    if (!tfm_cuda_lt_matmul(0, 1, N, D, F, 1.0f, &act16, &w2_16, 0.0f, &outm, NULL, 1)) return 0;
    if (b2) tfm_cuda_bias_add(out, b2, N, D, D);
    return 1;
}

/* backend.h's ffn_in_keep: in16 of the fused path's layout, rows of D bf16
 * (D % 8 == 0 there: a linear keep's layout), where that path may run. */
void *tfm_cuda_ffn_in_keep(float *hidden, float *act, int N, int D, int F, tfm_act_kind kind, float p) {
    return fused_possible(hidden, act, N, D, F, kind, p) ? (void *)layout_of(hidden, act, N, F).in16 : NULL;
}

/* See backend.h (ffn_forward) and the top of this file. */
void tfm_cuda_ffn_forward(float *out, float *hidden, float *act, const float *in, const float *w1, const float *b1,
                          const float *w2, const float *b2, int N, int D, int F, tfm_act_kind kind, float p,
                          uint64_t seed, uint64_t stream, int in_filled) {
    int fused = fused_possible(hidden, act, N, D, F, kind, p) &&
                fused_forward(out, hidden, act, in, w1, b1, w2, b2, N, D, F, in_filled);
    note_set(act, N, D, F, fused);
    if (fused) return;
    tfm_cuda_linear_forward(hidden, in, w1, b1, N, D, F);
    tfm_cuda_activation_dropout_forward(act, hidden, (size_t)N * F, kind, p, seed, stream);
    tfm_cuda_linear_forward(out, act, w2, b2, N, F, D);
}

/* ------------------------------------------------------------ backward */

/* The fused backward (the forward was fused); returns 0, having changed
 * nothing, when its products cannot run on these gradients' buffers. */
static int fused_backward(float *din, float *dw1, float *db1, float *dw2, float *db2, float *dact,
                          const float *dout, const float *hidden, const float *act, const float *w1, const float *w2,
                          int N, int D, int F, int accumulate) {
    if (tfm_cuda_ptr_align(dact) < 16) return 0;
    ffn_layout L = layout_of(hidden, act, N, F);
    tfm_cuda_mat g16 = {CUDA_R_16BF, NULL, D, 16}; /* dout's copy: gemm.cu's A buffer */
    tfm_cuda_mat w1_16 = {CUDA_R_16BF, NULL, D, 16}, w2_16 = {CUDA_R_16BF, NULL, F, 16}; /* its B buffer */
    tfm_cuda_mat act16 = {CUDA_R_16BF, L.act16, F, 16}, in16 = {CUDA_R_16BF, L.in16, D, 16};
    tfm_cuda_mat dact16 = {CUDA_R_16BF, dact, F, 16};
    tfm_cuda_mat dw2m = {CUDA_R_32F, dw2, F, tfm_cuda_ptr_align(dw2)};
    tfm_cuda_mat dw1m = {CUDA_R_32F, dw1, D, tfm_cuda_ptr_align(dw1)};
    tfm_cuda_mat dinm = {CUDA_R_32F, din, D, tfm_cuda_ptr_align(din)};
    float beta = accumulate ? 1.0f : 0.0f;

    /* Every product's plan first (no side effects), so that a refusal falls
     * back before anything changed:
     *   dw2[D, F] += dout16^T act16     dact16[N, F] = dout16 w2
     *   dw1[F, D] += dact16^T in16      din[N, D] (+)= dact16 w1 */
    int ok = (!dw2 || tfm_cuda_lt_matmul(1, 0, D, F, N, 1.0f, &g16, &act16, 1.0f, &dw2m, NULL, 0)) &&
             tfm_cuda_lt_matmul(0, 0, N, F, D, 1.0f, &g16, &w2_16, 0.0f, &dact16, NULL, 0) &&
             (!dw1 || tfm_cuda_lt_matmul(1, 0, F, D, N, 1.0f, &dact16, &in16, 1.0f, &dw1m, NULL, 0)) &&
             (!din || tfm_cuda_lt_matmul(0, 0, N, D, F, 1.0f, &dact16, &w1_16, beta, &dinm, NULL, 0));
    if (!ok) return 0;
    /* w2 first: once dout's copy is made, db2 has its column sums (one read of dout for both). */
    if (!tfm_cuda_bf16_operand(1, w2, D, F, F, &w2_16) || !tfm_cuda_bf16_operand_colsum(db2, dout, N, D, &g16))
        return 0;

    tell(&g_told_backward, "fused backward: ReLU mask %s",
         g_mask_order == MASK_UNKNOWN ? "from act16 > 0" : "from the forward's bits");
    /* From here on the gradients change. */
    if (dw2) FFN_MUST(tfm_cuda_lt_matmul(1, 0, D, F, N, 1.0f, &g16, &act16, 1.0f, &dw2m, NULL, 1));
    FFN_MUST(tfm_cuda_lt_matmul(0, 0, N, F, D, 1.0f, &g16, &w2_16, 0.0f, &dact16, NULL, 1));
    drelu_colsum((__nv_bfloat16 *)dact, db1, &L, N, F);
    if (dw1) FFN_MUST(tfm_cuda_lt_matmul(1, 0, F, D, N, 1.0f, &dact16, &in16, 1.0f, &dw1m, NULL, 1));
    if (din) {
        /* w1's copy replaces w2's in the B buffer (queued after the product
         * that reads w2's); the buffer already holds D*F values. */
        FFN_MUST(tfm_cuda_bf16_operand(1, w1, F, D, D, &w1_16));
        FFN_MUST(tfm_cuda_lt_matmul(0, 0, N, D, F, 1.0f, &dact16, &w1_16, beta, &dinm, NULL, 1));
    }
    return 1;
}

/* The backward from the fused forward's state by the composition's routes:
 * act widened from act16 into dact (exactly what the fused forward's second
 * product multiplied), dw2 and db2 from it; then dact = dout w2, zeroed where
 * the activation is not positive, and the first layer's backward. */
static void fallback_backward(float *din, float *dw1, float *db1, float *dw2, float *db2, float *dact,
                              const float *dout, const float *in, const float *hidden, const float *act,
                              const float *w1, const float *w2, int N, int D, int F, int accumulate) {
    tell(&g_told_fallback, "backward from the fused state by the composition's routes");
    ffn_layout L = layout_of(hidden, act, N, F);
    size_t n = (size_t)N * F;
    unsigned blocks = tfm_cuda_blocks(n, TFM_CUDA_THREADS);
    widen_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(dact, L.act16, n);
    TFM_CUDA_LAUNCHED();
    tfm_cuda_linear_backward(NULL, dw2, db2, dout, dact, w2, N, F, D, 0);
    tfm_cuda_linear_backward(dact, NULL, NULL, dout, NULL, w2, N, F, D, 0);
    relu_grad_kernel<<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(dact, L.act16, n);
    TFM_CUDA_LAUNCHED();
    tfm_cuda_linear_backward(din, dw1, db1, dact, in, w1, N, D, F, accumulate);
}

/* See backend.h (ffn_backward) and the top of this file. */
void tfm_cuda_ffn_backward(float *din, float *dw1, float *db1, float *dw2, float *db2, float *dact,
                           const float *dout, const float *in, const float *hidden, const float *act,
                           const float *w1, const float *w2, int N, int D, int F, tfm_act_kind kind, float p,
                           uint64_t seed, uint64_t stream, int accumulate) {
    const ffn_note *note = note_find(act);
    /* The forward of this act buffer, with these sizes, came first (backend.h). */
    TFM_CUDA_ASSERT(note != NULL && note->N == N && note->D == D && note->F == F);
    if (!note->fused) {
        tfm_cuda_linear_backward(dact, dw2, db2, dout, act, w2, N, F, D, 0);
        tfm_cuda_activation_dropout_backward(dact, dact, hidden, (size_t)N * F, kind, p, seed, stream);
        tfm_cuda_linear_backward(din, dw1, db1, dact, in, w1, N, D, F, accumulate);
        return;
    }
    if (!fused_backward(din, dw1, db1, dw2, db2, dact, dout, hidden, act, w1, w2, N, D, F, accumulate))
        fallback_backward(din, dw1, db1, dw2, db2, dact, dout, in, hidden, act, w1, w2, N, D, F, accumulate);
}
