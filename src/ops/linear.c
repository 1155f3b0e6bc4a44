/*
 * linear.c: the affine layer y = x W^T + b, in PyTorch's nn.Linear layout.
 *
 *   in  [N, I]    w [O, I]    b [O]    out [N, O]
 *
 * Both directions are GEMMs through tfm_gemm; the bias is a row broadcast.
 */
#include "ops/ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below about this much work (elements) a parallel region costs more than it
 * saves: a region costs microseconds, and decoding one sentence runs dozens
 * of ops over a single [1, D] row per token. Each element's arithmetic is
 * the same whether a loop runs in parallel or not, so results do not change. */
#ifndef PAR_MIN
#define PAR_MIN 16384
#endif

void OPFN(tfm_linear_forward)(real *out, const real *in, const real *w, const real *b, int N,
                              int n_in, int n_out) {
    OPFN(tfm_gemm_nt_bias)(N, n_out, n_in, in, n_in, w, n_in, b, out, n_out);
}

void OPFN(tfm_linear_backward)(real *din, real *dw, real *db, const real *dout, const real *in,
                               const real *w, int N, int n_in, int n_out, int accumulate) {
    if (din) OPFN(tfm_gemm)(0, 0, N, n_in, n_out, 1, dout, n_out, w, n_in, accumulate ? 1 : 0, din, n_in);
    if (dw) {
        /* with the own AVX-512 kernel, db is summed while it packs dout */
        if (OPFN(tfm_gemm_tn_sums)(n_out, n_in, N, dout, n_out, in, n_in, 1, dw, n_in, db)) return;
    }
    if (db) {
        /* Threads own column blocks and walk the rows in order: contiguous
         * reads, and the same sum order at any thread count. */
#pragma omp parallel if((size_t)N * n_out >= PAR_MIN)
        {
#ifdef _OPENMP
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
            int nt = 1, t = 0;
#endif
            int lo = (int)((long)n_out * t / nt), hi = (int)((long)n_out * (t + 1) / nt);
            for (int n = 0; n < N; n++) {
                const real *row = dout + (size_t)n * n_out;
                for (int o = lo; o < hi; o++) db[o] += row[o];
            }
        }
    }
}
