/*
 * cuda_internal.cuh: what the files of the CUDA backend share: error checking,
 * the backend's one stream, its scratch memory, launch sizes, block
 * reductions, the device port of the counter-based RNG, and the op entry
 * points that backend.cu puts into the table.
 *
 * CUDA C++ (nvcc) only; nothing outside src/cuda includes it (named .cuh so
 * that the install rule for the module headers, *.h, leaves it out). The table's
 * functions have C++ linkage (only tfm_backend_cuda is extern "C"): C code
 * reaches them through the table alone.
 *
 * Errors. A failing CUDA or cuBLASLt call inside an op is an environment
 * error (lost device, out of memory in a library, a launch that cannot run)
 * that the caller cannot recover from in the middle of a training step, and
 * the table's ops return void: the check macros print the call, file, line
 * and the library's error string, and abort. Only `alloc` (NULL when out of
 * memory) and tfm_backend_cuda (NULL with a reason) report errors to the
 * caller.
 *
 * Threads. The backend state (stream, cuBLASLt handle, plan cache, scratch)
 * is process-global and not locked: call the table from one host thread at a
 * time.
 */
#ifndef TFM_CUDA_INTERNAL_CUH
#define TFM_CUDA_INTERNAL_CUH

/* System and CUDA headers first: ops/real.h defines `real` as a macro. */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "backend/backend.h"
}
/* The ops headers leave `real` defined as float; CUDA code must not see it. */
#undef real

/* ------------------------------------------------------------------ errors */

/* Prints "cuda: CALL failed at FILE:LINE: MSG" and aborts (see the header comment). */
[[noreturn]] void tfm_cuda_fail(const char *call, const char *file, int line, const char *msg);

#define TFM_CUDA_CHECK(call)                                                          \
    do {                                                                              \
        cudaError_t tfm_e_ = (call);                                                  \
        if (tfm_e_ != cudaSuccess) tfm_cuda_fail(#call, __FILE__, __LINE__, cudaGetErrorString(tfm_e_)); \
    } while (0)

#define TFM_CUBLAS_CHECK(call)                                                        \
    do {                                                                              \
        cublasStatus_t tfm_s_ = (call);                                               \
        if (tfm_s_ != CUBLAS_STATUS_SUCCESS)                                          \
            tfm_cuda_fail(#call, __FILE__, __LINE__, cublasLtGetStatusString(tfm_s_)); \
    } while (0)

/* After every kernel launch: a bad configuration shows up here, not later. */
#define TFM_CUDA_LAUNCHED() TFM_CUDA_CHECK(cudaGetLastError())

/* Programmer errors (a broken op contract), as TFM_ASSERT does for C. */
#define TFM_CUDA_ASSERT(cond)                                                         \
    do {                                                                              \
        if (!(cond)) tfm_cuda_fail("assertion " #cond, __FILE__, __LINE__, "contract violated"); \
    } while (0)

/* ------------------------------------------------------------- backend state */

/* The one stream every op is queued on (backend.cu). */
cudaStream_t tfm_cuda_stream(void);
/* The cuBLASLt handle and its workspace (backend.cu). */
cublasLtHandle_t tfm_cuda_lt(void);
void *tfm_cuda_lt_workspace(size_t *bytes);
/* Device scratch of at least `bytes`, for reductions that need a second pass
 * (global_norm, xent_forward, layernorm_backward). Growing it synchronises the
 * stream; the memory is shared, so its contents live only until the next op
 * that uses it. */
void *tfm_cuda_scratch(size_t bytes);

/* The parameters' bf16 copy (gemm.cu; backend.h's params_lowp):
 * tfm_cuda_params_written: a write of `bytes` at dst is queued; the copy is
 * no longer current if that touches the parameters. tfm_cuda_params_lowp_for:
 * the current copy when param[n] is exactly the registered buffer (an Adam
 * update of it writes the copy too), else NULL. */
void tfm_cuda_params_lowp(const float *params, size_t n);
void tfm_cuda_params_written(const void *dst, size_t bytes);
__nv_bfloat16 *tfm_cuda_params_lowp_for(const float *param, size_t n);

/* ------------------------------------------------------------ launch sizes */

#define TFM_CUDA_THREADS 256
/* Blocks for a grid-stride loop over n elements: enough to fill the GPU,
 * never more than the work. */
static inline unsigned tfm_cuda_blocks(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    if (b > 65536) b = 65536;
    return b ? (unsigned)b : 1u;
}

/* ----------------------------------------------------------- reductions */

__device__ __forceinline__ float tfm_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double tfm_warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float tfm_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The end of a LayerNorm row done by one warp from memory (the any-D kernels
 * of layernorm.cu and fused.cu): x[D] the row, sum the warp's sum of it
 * (every lane); y[D] = (x - mean) * rstd * w + b with mean and rstd in
 * double as the CPU's rows, and lane 0 stores them in *mean, *rstd. */
__device__ __forceinline__ void tfm_cuda_layernorm_row_finish(float *y, float *mean, float *rstd, const float *x,
                                                              double sum, const float *w, const float *b, int D,
                                                              float eps, int lane) {
    double m = sum / D, var = 0;
    for (int i = lane; i < D; i += 32) var += (x[i] - m) * (x[i] - m);
    var = tfm_warp_sum(var) / D;
    float s = (float)(1.0 / sqrt(var + eps));
    for (int i = lane; i < D; i += 32) y[i] = (float)((x[i] - m) * s) * w[i] + b[i];
    if (lane == 0) {
        *mean = (float)m;
        *rstd = s;
    }
}

/* Sum (or max) over a block whose size is a multiple of 32 (at most 1024),
 * returned to every thread. The combining order is fixed by the block size,
 * so results are reproducible run to run. `sh` is 32 elements of shared memory. */
template <typename T>
__device__ T tfm_block_sum(T v, T *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = tfm_warp_sum(v);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    T t = lane < nw ? sh[lane] : (T)0;
    return tfm_warp_sum(t);
}
__device__ __forceinline__ float tfm_block_max(float v, float *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = tfm_warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : -INFINITY;
    return tfm_warp_max(t);
}

/* ------------------------------------------------------ element-wise map */

/* out[i] = f(i, a[i], b[i]) for i < n; b is not read when NIN == 1 (f then
 * gets 0). vec: every pointer is 16-byte aligned, so the first 4*(n/4)
 * elements go as float4; the n % 4 left over, or all of them when !vec, go one
 * at a time. */
template <int NIN, class F>
__global__ void tfm_cuda_map_kernel(float *out, const float *a, const float *b, size_t n, int vec, F f) {
    size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (vec) {
        size_t n4 = n / 4;
        for (size_t j = tid; j < n4; j += stride) {
            float4 x = ((const float4 *)a)[j], y = NIN == 2 ? ((const float4 *)b)[j] : make_float4(0, 0, 0, 0);
            size_t i = 4 * j; /* each lane with its own element index (the dropout draws) */
            float4 r;
            r.x = f(i, x.x, y.x);
            r.y = f(i + 1, x.y, y.y);
            r.z = f(i + 2, x.z, y.z);
            r.w = f(i + 3, x.w, y.w);
            ((float4 *)out)[j] = r;
        }
        done = 4 * n4;
    }
    for (size_t i = done + tid; i < n; i += stride) out[i] = f(i, a[i], NIN == 2 ? b[i] : 0.0f);
}

static inline int tfm_cuda_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* lo and hi rounded to bf16 (to nearest even, as every bf16 copy here is
 * made), packed with lo in the low half (the lower address). */
__device__ __forceinline__ unsigned tfm_cuda_bf16x2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&h);
}

/* Launches tfm_cuda_map_kernel over n elements (n > 0) on the backend's stream. */
template <int NIN, class F>
static void tfm_cuda_map(float *out, const float *a, const float *b, size_t n, F f) {
    int vec = tfm_cuda_aligned16(out) && tfm_cuda_aligned16(a) && (NIN == 1 || tfm_cuda_aligned16(b));
    unsigned blocks = tfm_cuda_blocks(vec ? (n + 3) / 4 : n, TFM_CUDA_THREADS);
    tfm_cuda_map_kernel<NIN><<<blocks, TFM_CUDA_THREADS, 0, tfm_cuda_stream()>>>(out, a, b, n, vec, f);
    TFM_CUDA_LAUNCHED();
}

/* ------------------------------------------------------------------- RNG */

/* core/rng.h on the device, with the same 64-bit arithmetic (wrapping
 * multiplies and shifts), so that dropout masks match the CPU bit for bit:
 * test_cuda_ops compares them. */
__host__ __device__ __forceinline__ uint64_t tfm_cuda_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* The part of a draw that depends on (seed, stream) only: element-wise
 * kernels compute it once (on the host) instead of once per element. */
__host__ __device__ __forceinline__ uint64_t tfm_cuda_rng_key(uint64_t seed, uint64_t stream) {
    return tfm_cuda_mix64(seed + 0x9e3779b97f4a7c15ULL * (stream + 1));
}
__device__ __forceinline__ float tfm_cuda_rng_uniform_key(uint64_t key, uint64_t index) {
    /* 24 bits to float is exact, and so is the power-of-two scale. */
    uint64_t z = tfm_cuda_mix64(key ^ (index * 0xd1b54a32d192ed03ULL + 0x8cb92ba72f3d8dd7ULL));
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}
__device__ __forceinline__ float tfm_cuda_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    return tfm_cuda_rng_uniform_key(tfm_cuda_rng_key(seed, stream), index);
}

/* A dropout's key in an op's arguments: tfm_cuda_rng_key(seed, stream) made
 * on the host, or, while a step is recorded (graph.cu), made on the device
 * from the step's seed slot at each run (`slot` set). get(): the key either
 * way; kernels that take one call resolve() first, once. */
struct tfm_cuda_drop_key {
    uint64_t key;
    const uint64_t *slot; /* NULL: key is the key */
    uint64_t stream;
    __device__ __forceinline__ uint64_t get() const { return slot ? tfm_cuda_rng_key(*slot, stream) : key; }
    __device__ __forceinline__ void resolve() {
        key = get();
        slot = nullptr;
    }
};
const uint64_t *tfm_cuda_seed_slot(uint64_t seed);
static inline tfm_cuda_drop_key tfm_cuda_drop_key_make(uint64_t seed, uint64_t stream) {
    tfm_cuda_drop_key k;
    k.slot = tfm_cuda_seed_slot(seed);
    k.stream = stream;
    k.key = k.slot ? 0 : tfm_cuda_rng_key(seed, stream);
    return k;
}

/* -------------------------------------------------- strided batched GEMM */

/* C_z[M,N] = alpha * op(A_z) op(B_z) + beta * C_z for z = b*H + h (z < B*H),
 * where X_z = X + b*x_batch + h*x_head and op(X) transposes when tX is set;
 * row-major with row strides lda/ldb/ldc. beta == 0 never reads C. The
 * attention products (per batch and head, two strides each) run through it;
 * gemm.cu also uses it when cuBLASLt has no algorithm for an odd alignment. */
typedef struct tfm_cuda_bgemm_args {
    int ta, tb, M, N, K, B, H;
    float alpha, beta;
    const float *A;
    long lda, a_batch, a_head;
    const float *Bm;
    long ldb, b_batch, b_head;
    float *C;
    long ldc, c_batch, c_head;
} tfm_cuda_bgemm_args;
void tfm_cuda_bgemm(const tfm_cuda_bgemm_args *g);

/* --------------------------------------------- the table's entry points */

/* adam.cu */
float tfm_cuda_global_norm(const float *x, size_t n);
void tfm_cuda_global_norm_to(float *norm_out, const float *x, size_t n);
void tfm_cuda_adam_update_clipped(const tfm_adam_coefs *c, float *param, float *grad, float *m, float *v, size_t n,
                                  const float *norm, float clip_norm);
void tfm_cuda_scale(float *x, size_t n, float s);
void tfm_cuda_add(float *y, const float *x, size_t n);
void tfm_cuda_adam_update(const tfm_adam_coefs *c, float *param, const float *grad, float *m, float *v,
                          size_t n);
/* gemm.cu */
int tfm_cuda_set_matmul_precision(tfm_matmul_precision p);
/* 1 in BF16 mode (TFM_MATMUL_BF16), else 0: the tiled attention (attention_tiled.cu)
 * runs its products on tensor cores in bf16 only then. */
int tfm_cuda_matmul_is_bf16(void);
void tfm_cuda_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc);
void tfm_cuda_linear_forward(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                             int n_out);
void tfm_cuda_linear_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                              const float *w, int N, int n_in, int n_out, int accumulate);
/* linear_keep_bytes, linear_forward_keep, linear_backward_kept (backend.h). */
size_t tfm_cuda_linear_keep_bytes(int N, int n_in, int n_out);
void tfm_cuda_linear_forward_keep(float *out, const float *in, const float *w, const float *b, int N, int n_in,
                                  int n_out, void *keep, int keep_filled);
/* Whether a producer of a linear's input may fill its keep (backend.h's
 * keep_filled): BF16 mode and a 16-byte aligned keep; the keep then holds the
 * input rounded to bf16, rows of (n_in + 7) & ~7 (gemm.cu). */
int tfm_cuda_keep_writable(const void *keep);
void tfm_cuda_linear_backward_kept(float *din, float *dw, float *db, const float *dout, const float *in,
                                   const void *keep, const float *w, int N, int n_in, int n_out, int accumulate);
/* logits_backward (backend.h): in BF16 mode, where the bf16 copy pays, the
 * gradient goes straight to bf16 (tfm_cuda_xent_backward_bf16) and dlogits is
 * left unwritten; otherwise tfm_cuda_xent_backward then
 * tfm_cuda_linear_backward. */
void tfm_cuda_logits_backward(float *din, float *dw, float *dlogits, const float *logits, const float *lse,
                              const int32_t *targets, const float *in, const float *w, int N, int D, int V,
                              int pad_id, float smoothing, float scale, int accumulate, int packed);
/* logits_loss_forward (backend.h): in BF16 mode, where the copies pay, bf16
 * logits with rows padded to 64 (TFM_VOCAB_PAD), noted per buffer for
 * logits_backward; otherwise the composition (fp32 logits). */
void tfm_cuda_logits_loss_forward(float *logits, float *lse, double *loss_acc, const float *in, const float *w,
                                  const int32_t *targets, int N, int D, int V, int pad_id, float smoothing);
/* gemm.cu's product machinery, for ops that run their own products (ffn.cu).
 *
 * One matrix as cuBLASLt gets it, row-major as stored: element type
 * (CUDA_R_32F, or CUDA_R_16BF), device pointer, row stride in elements, and
 * the pointer's alignment in bytes (tfm_cuda_ptr_align; 16 for bf16 copies). */
typedef struct tfm_cuda_mat {
    cudaDataType_t type;
    const void *p;
    int ld;
    unsigned align;
} tfm_cuda_mat;
/* A product's epilogue, in our row-major terms (C[M,N] = op(A) op(B)):
 *   CUBLASLT_EPILOGUE_DEFAULT        none;
 *   CUBLASLT_EPILOGUE_BIAS           C[i,j] += vec[j];
 *   CUBLASLT_EPILOGUE_RELU_AUX(_BIAS) C = relu(op(A) op(B) (+ vec[j])), mask bit (i,j) = that sum > 0;
 *   CUBLASLT_EPILOGUE_DRELU(_BGRAD)  C = op(A) op(B) where mask bit (i,j), else 0 (vec[j] = sum over i);
 *   CUBLASLT_EPILOGUE_BGRADB         vec[i] = sum over p of op(A)[i,p] (written, never added).
 * (ffn.cu uses the first three; the gradient ones, measured slower than its
 * own pass, are kept for the plan's sake: see ffn.cu.) vec: vec_type (fp32,
 * or bf16 where cuBLASLt wants the output's type), 16-byte aligned. aux: the
 * ReLU bit mask, one row of aux_ld bits per row of C (aux_ld a multiple of
 * 128, >= N). */
typedef struct tfm_cuda_epilogue {
    cublasLtEpilogue_t kind;
    cudaDataType_t vec_type;
    void *vec;
    void *aux;
    int64_t aux_ld;
} tfm_cuda_epilogue;
/* C = alpha op(A) op(B) + beta C (C and D one matrix, c's type) with epilogue
 * e (NULL: none) through cuBLASLt; M, N, K > 0; bf16 operands multiply with
 * fp32 sums. run = 0: only says whether cuBLASLt has an algorithm for it
 * (the plan is cached; pointers are not read, only alignments); run = 1:
 * queues it. Returns 0, having queued nothing, when cuBLASLt refuses it. */
int tfm_cuda_lt_matmul(int ta, int tb, int M, int N, int K, float alpha, const tfm_cuda_mat *a,
                       const tfm_cuda_mat *b, float beta, const tfm_cuda_mat *c, const tfm_cuda_epilogue *e,
                       int run);
/* The largest power of two, 4 to 16, that divides p's address. */
unsigned tfm_cuda_ptr_align(const void *p);
/* Whether BF16 mode's bf16 copies pay for products of `flops` that convert
 * `elements` fp32 values (gemm.cu, bf16_pays). */
int tfm_cuda_bf16_pays(double flops, double elements);
/* dst[r, j] = bf16(src[r, j]) (to nearest even) for r < rows, j < cols, 0 for
 * cols <= j < ldd; src row stride lds; dst 16-byte aligned, ldd % 8 == 0. */
void tfm_cuda_to_bf16(__nv_bfloat16 *dst, int ldd, const float *src, int rows, int cols, int lds);
/* The bf16 copy of src [rows, cols] into gemm.cu's buffer for A (which = 0)
 * or B (1), grown if need be, described in *op; valid until the next product
 * that converts into the same buffer. Returns 0 when there is no memory. */
int tfm_cuda_bf16_operand(int which, const float *src, int rows, int cols, int lds, tfm_cuda_mat *op);
/* The bf16 copy of dout [N, C] into the A buffer (as tfm_cuda_bf16_operand
 * with which = 0) and, with sums not NULL, sums[c] += its column sums, in one
 * read of dout where it can; 0 (nothing queued, sums untouched) when there is
 * no memory for the copy. */
int tfm_cuda_bf16_operand_colsum(float *sums, const float *dout, int N, int C, tfm_cuda_mat *op);
/* C[i, j] += b[j] for i < M, j < N (row stride ldc). */
void tfm_cuda_bias_add(float *C, const float *b, int M, int N, int ldc);
/* sums[c] += sum over rows n of x[n*C + c]: the deterministic two-pass column
 * sums of linear_backward's bias gradient (uses tfm_cuda_scratch). */
void tfm_cuda_colsum_add(float *sums, const float *x, int N, int C);
/* ffn.cu: ffn_forward / ffn_backward of backend.h (see the top of ffn.cu). */
void tfm_cuda_ffn_forward(float *out, float *hidden, float *act, const float *in, const float *w1, const float *b1,
                          const float *w2, const float *b2, int N, int D, int F, tfm_act_kind kind, float p,
                          uint64_t seed, uint64_t stream, int in_filled);
void *tfm_cuda_ffn_in_keep(float *hidden, float *act, int N, int D, int F, tfm_act_kind kind, float p);
void tfm_cuda_ffn_backward(float *din, float *dw1, float *db1, float *dw2, float *db2, float *dact,
                           const float *dout, const float *in, const float *hidden, const float *act,
                           const float *w1, const float *w2, int N, int D, int F, tfm_act_kind kind, float p,
                           uint64_t seed, uint64_t stream, int accumulate);
/* embedding.cu */
void tfm_cuda_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int D, float scale);
void tfm_cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int D, float scale);
void tfm_cuda_positions_forward(float *x, const float *table, const int32_t *pos, int N, int D);
void tfm_cuda_positions_backward(float *dtable, const float *dx, const int32_t *pos, int N, int D);
void tfm_cuda_rope(float *x, long row, const int32_t *pos, int N, int H, int dk, double theta, int inverse);
/* layernorm.cu */
void tfm_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *w,
                                const float *b, int N, int D, float eps);
void tfm_cuda_layernorm_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                                 const float *mean, const float *rstd, const float *w, int N, int D,
                                 int accumulate);
/* The parameter gradients of the LayerNorm backward alone (dw[D] +=, db[D] +=),
 * deterministic two-pass column sums; for fused.cu. N, D > 0. */
void tfm_cuda_layernorm_dparams(float *dw, float *db, const float *dout, const float *in, const float *mean,
                                const float *rstd, int N, int D);
/* elementwise.cu */
void tfm_cuda_activation_forward(float *out, const float *in, size_t n, tfm_act_kind kind);
void tfm_cuda_activation_backward(float *din, const float *dout, const float *in, size_t n, tfm_act_kind kind);
void tfm_cuda_dropout(float *out, const float *in, size_t n, float p, uint64_t seed, uint64_t stream);
void tfm_cuda_residual_dropout(float *out, const float *x, const float *y, size_t n, float p, uint64_t seed,
                               uint64_t stream);
/* fused.cu */
int tfm_cuda_residual_dropout_layernorm(float *res, float *ln, float *mean, float *rstd, const float *x,
                                        const float *y, const float *w, const float *b, int N, int D, float eps,
                                        float p, uint64_t seed, uint64_t stream, void *ln_keep);
void tfm_cuda_layernorm_backward_dropout(float *din, float *ddrop, float *dw, float *db, const float *dout,
                                         const float *in, const float *mean, const float *rstd, const float *w,
                                         int N, int D, float p, uint64_t seed, uint64_t stream);
void tfm_cuda_activation_dropout_forward(float *out, const float *in, size_t n, tfm_act_kind kind, float p,
                                         uint64_t seed, uint64_t stream);
void tfm_cuda_activation_dropout_backward(float *din, const float *dout, const float *in, size_t n,
                                          tfm_act_kind kind, float p, uint64_t seed, uint64_t stream);
/* attention.cu */
void tfm_cuda_attention_forward(float *out, float *probs, float *scratch, const float *q, const float *k,
                                const float *v, const tfm_attn_dims *d);
void tfm_cuda_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                 const float *probs, const float *q, const float *k, const float *v,
                                 const tfm_attn_dims *d);
/* 1 (the default): the attention forward takes its fused row kernel where the
 * shape qualifies (Tq <= 4, decoding); 0: always the unfused path (bgemm
 * products and row kernels). Both give the same bits; the backward is always
 * unfused. For bench/gpu/attn_micro.cu, which times one against the other;
 * returns the previous setting. */
int tfm_cuda_attention_set_fused(int on);
/* attention_tiled.cu: the tiled (flash) attention ops of ops_decl.h; see the
 * top of that file for the two paths (bf16 tensor cores in BF16 mode, fp32
 * CUDA cores otherwise). scratch: delta [B, H, Tq] for the fp32 backward. */
size_t tfm_cuda_attention_tiled_scratch(const tfm_attn_dims *d);
int tfm_cuda_attention_tiled_preferred(const tfm_attn_dims *d);
int tfm_cuda_attention_tiled_forward(float *out, float *lse, float *scratch, size_t scratch_len, const float *q,
                                      const float *k, const float *v, const tfm_attn_dims *d);
void tfm_cuda_attention_tiled_backward(float *dq, float *dk, float *dv, float *scratch, size_t scratch_len,
                                       const float *dout, const float *out, const float *lse, const float *q,
                                       const float *k, const float *v, const tfm_attn_dims *d);
/* graph.cu: recorded steps (backend.h's graph_* and step_values). */
int tfm_cuda_graph_begin(void);
void *tfm_cuda_graph_end(void);
int tfm_cuda_graph_launch(void *graph);
void tfm_cuda_graph_free(void *graph);
void tfm_cuda_step_values(uint64_t seed, float loss_scale);
/* The recordings so far no longer fit (a grow-only buffer moved, the
 * precision changed): graph_launch refuses them. */
void tfm_cuda_graphs_stale(void);
/* Whether ops are being recorded; tfm_cuda_capture_refuse: the recording
 * under way must not be used (an op baked a per-step value into it). */
int tfm_cuda_capturing(void);
void tfm_cuda_capture_refuse(const char *why);
/* While recording: the device slot holding the step's dropout seed / loss
 * scale (the ops read it at each run; a seed or scale other than the step's
 * refuses the recording); NULL when not recording (use the argument). */
const uint64_t *tfm_cuda_seed_slot(uint64_t seed);
const float *tfm_cuda_scale_slot(float scale);

/* xent.cu */
void tfm_cuda_xent_forward_acc(float *lse, const float *logits, const int32_t *targets, int N, int V, int pad_id,
                               float smoothing, double *loss_acc);
double tfm_cuda_xent_forward(float *lse, const float *logits, const int32_t *targets, int N, int V, int pad_id,
                             float smoothing, long *count);
void tfm_cuda_xent_backward(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                            int N, int V, int pad_id, float smoothing, float scale);
/* gemm.cu's bf16 copy of dlogits, made from the logits directly (see xent.cu). */
void tfm_cuda_xent_backward_bf16(__nv_bfloat16 *dst, int ld, const float *logits, const float *lse,
                                 const int32_t *targets, int N, int V, int pad_id, float smoothing, float scale);
/* BF16 mode's logits op (gemm.cu, logits_loss_forward): the loss over bf16
 * logits [N, ld], and their gradient into bf16 dst [N, ld] (may alias them). */
void tfm_cuda_xent_forward_acc_bf16(float *lse, const __nv_bfloat16 *logits, int ld, const int32_t *targets, int N,
                                    int V, int pad_id, float smoothing, double *loss_acc);
void tfm_cuda_xent_backward_bf16_from_bf16(__nv_bfloat16 *dst, int ld, const __nv_bfloat16 *logits, const float *lse,
                                           const int32_t *targets, int N, int V, int pad_id, float smoothing,
                                           float scale);
/* Both in one pass, the gradient over the logits (xent.cu; a training step's
 * logits, whose loss logits_loss_forward left to the backward). fits: whether
 * rows of ld bf16 go through it. */
int tfm_cuda_xent_fused_fits(int ld);
void tfm_cuda_xent_fused_bf16(__nv_bfloat16 *logits, int ld, float *lse, const int32_t *targets, int N, int V,
                              int pad_id, float smoothing, float scale, double *loss_acc);
void tfm_cuda_log_softmax(float *out, const float *logits, int N, int V);

#endif
