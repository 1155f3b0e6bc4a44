/*
 * linear.c: the affine layer y = x W^T + b, in PyTorch's nn.Linear layout.
 *
 *   in  [N, I]    w [O, I]    b [O]    out [N, O]
 *
 * Both directions are GEMMs through gemm.c, which also adds the bias
 * (tfm_gemm_nt_bias) and sums its gradient (tfm_gemm_tn_sums).
 */
#include "ops/ops.h"

void OPFN(tfm_linear_forward)(real *out, const real *in, const real *w, const real *b, int N,
                              int n_in, int n_out) {
    OPFN(tfm_gemm_nt_bias)(N, n_out, n_in, in, n_in, w, n_in, b, out, n_out);
}

void OPFN(tfm_linear_backward)(real *din, real *dw, real *db, const real *dout, const real *in,
                               const real *w, int N, int n_in, int n_out, int accumulate) {
    if (din) OPFN(tfm_gemm)(0, 0, N, n_in, n_out, 1, dout, n_out, w, n_in, accumulate ? 1 : 0, din, n_in);
    /* dw and db in one call: the own AVX-512 kernel sums db while it packs dout */
    OPFN(tfm_gemm_tn_sums)(n_out, n_in, N, dout, n_out, in, n_in, 1, dw, n_in, db);
}
