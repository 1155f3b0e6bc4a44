/*
 * test_fused_ops.c: the fused ops of src/ops/fused.c against the
 * compositions of reference ops they replace, and their gradients against
 * finite differences.
 *
 * Method.
 *   - Composition. Each fused op, in the float build (tfm_<op>) and the
 *     double build (tfm_<op>_f64), runs on random inputs of odd sizes (N 37,
 *     D 24 and 257; the FFN's N x F with F 1000), dropout p = 0 and 0.1,
 *     ReLU and GELU, and is compared with the composition of the unfused ops
 *     on the same inputs: bit for bit (the arithmetic is the same, in the
 *     same order), every output. "=" outputs start as NaN on both sides;
 *     "+=" outputs (dw, db) start from the same random values, and a second
 *     call must accumulate again. The aliases the contracts allow (res = x,
 *     out = in, din = dout) are run too, and dropout must drop about p of
 *     the elements.
 *   - Gradients (double). For residual_dropout_layernorm followed by its
 *     backward, layernorm_backward_dropout, with L = sum(ln * R): dx = din,
 *     dy = ddrop, dw, db against central differences in x, y, w, b; for the
 *     activation with dropout, L = sum(out * R): din against differences in
 *     in. h = 1e-6, max|num - ana| / max|ana| <= 1e-6, p = 0.1.
 * The body that compares with the compositions is written once over `real`
 * and included twice, as the ops are (ops/real.h).
 * It does not test the CUDA kernels (test_cuda_ops.c does) or the model's
 * use of the ops (the whole-model tests do).
 */
#ifndef FUSED_BODY
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "test_util.h"

#define FD_H 1e-6
#define FD_TOL 1e-6
#define SEED 20250101u
#define STREAM 77u

static tfm_rng g_rng;

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* Uniform in [lo, hi), rounded to float so that both builds see the same value. */
static double urand(double lo, double hi) { return (double)(float)(lo + (hi - lo) * tfm_rng_next_uniform(&g_rng)); }

/* Bitwise agreement of n elements of `size` bytes; one line per comparison. */
static void same(const char *what, const void *got, const void *want, size_t n, size_t size) {
    size_t diff = 0, first = n;
    for (size_t i = 0; i < n; i++)
        if (memcmp((const char *)got + i * size, (const char *)want + i * size, size) != 0) {
            if (!diff) first = i;
            diff++;
        }
    printf("  %-62s %s\n", what, diff ? "DIFFERS" : "same bits");
    CHECK(diff == 0, "%s: %zu of %zu elements differ from the composition (first at %zu)", what, diff, n, first);
}

/* Dropout must have dropped about p of n elements (dropped counted by the
 * caller); too few elements to tell say nothing. */
static void check_dropped(const char *what, size_t dropped, size_t n, float p) {
    double want = p * (double)n;
    if (p > 0 && want < 20) return;
    CHECK(p > 0 ? dropped > want / 2 && dropped < want * 2 : dropped == 0, "%s: dropped %zu of %zu at p = %g",
          what, dropped, n, p);
}

#define FUSED_BODY 1
#include "ops/real.h" /* float */
#include "test_fused_ops.c"
#define TFM_OPS_F64 1
#include "ops/real.h" /* double */
#include "test_fused_ops.c"
#undef TFM_OPS_F64
#undef FUSED_BODY

/* ---------------------------------------------------- finite differences */

static double *drnd(size_t n, double lo, double hi) {
    double *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

typedef double (*loss_fn)(void *ctx);

/* Central differences of f over x[0..n) against ana: max|num - ana| / max|ana|. */
static double fd_err(loss_fn f, void *ctx, double *x, size_t n, const double *ana) {
    double md = 0, ma = 0;
    for (size_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + FD_H;
        double lp = f(ctx);
        x[i] = keep - FD_H;
        double lm = f(ctx);
        x[i] = keep;
        double num = (lp - lm) / (2 * FD_H);
        if (!isfinite(num) || !isfinite(ana[i])) return INFINITY;
        md = fmax(md, fabs(num - ana[i]));
        ma = fmax(ma, fabs(ana[i]));
    }
    return md / fmax(ma, 1e-8);
}

static void report_fd(const char *what, double err) {
    printf("  %-62s fd %.2e (tol %.0e)\n", what, err, FD_TOL);
    CHECK(err <= FD_TOL, "%s: finite differences disagree (%.3e)", what, err);
}

/* L = sum(LayerNorm(x + dropout(y)) * R) */
typedef struct rdl_ctx {
    int N, D;
    float p;
    double *x, *y, *w, *b, *R, *res, *ln, *mean, *rstd;
} rdl_ctx;

static double rdl_loss(void *p) {
    rdl_ctx *c = p;
    tfm_residual_dropout_layernorm_f64(c->res, c->ln, c->mean, c->rstd, c->x, c->y, c->w, c->b, c->N, c->D,
                                       (double)1e-5f, c->p, SEED, STREAM);
    return dot(c->ln, c->R, (size_t)c->N * c->D);
}

static void fd_residual_layernorm(int N, int D, float p) {
    printf("finite differences: residual_dropout_layernorm + layernorm_backward_dropout N=%d D=%d p=%g\n", N, D,
           p);
    size_t n = (size_t)N * D;
    rdl_ctx c = {N, D, p, drnd(n, -1, 1), drnd(n, -1, 1), drnd(D, 0.5, 1.5), drnd(D, -0.5, 0.5), drnd(n, -1, 1),
                 xmalloc(n * sizeof(double)), xmalloc(n * sizeof(double)), xmalloc(N * sizeof(double)),
                 xmalloc(N * sizeof(double))};
    for (size_t i = 0; i < n; i++) c.x[i] += 2.0; /* a mean away from 0 */
    rdl_loss(&c);
    double *dx = xmalloc(n * sizeof *dx), *dy = xmalloc(n * sizeof *dy);
    double *dw = calloc(D, sizeof *dw), *db = calloc(D, sizeof *db);
    tfm_layernorm_backward_dropout_f64(dx, dy, dw, db, c.R, c.res, c.mean, c.rstd, c.w, N, D, p, SEED, STREAM);
    report_fd("dx (= din: the residual path)", fd_err(rdl_loss, &c, c.x, n, dx));
    report_fd("dy (= ddrop: the branch output)", fd_err(rdl_loss, &c, c.y, n, dy));
    report_fd("dw", fd_err(rdl_loss, &c, c.w, D, dw));
    report_fd("db", fd_err(rdl_loss, &c, c.b, D, db));
    free(c.x), free(c.y), free(c.w), free(c.b), free(c.R), free(c.res), free(c.ln), free(c.mean), free(c.rstd);
    free(dx), free(dy), free(dw), free(db);
}

/* L = sum(dropout(act(in)) * R) */
typedef struct act_ctx {
    size_t n;
    tfm_act_kind kind;
    float p;
    double *in, *out, *R;
} act_ctx;

static double act_loss(void *p) {
    act_ctx *c = p;
    tfm_activation_dropout_forward_f64(c->out, c->in, c->n, c->kind, c->p, SEED, STREAM);
    return dot(c->out, c->R, c->n);
}

static void fd_activation(size_t n, tfm_act_kind kind, float p) {
    const char *name = kind == TFM_OP_RELU ? "relu" : "gelu";
    printf("finite differences: activation_dropout %s n=%zu p=%g\n", name, n, p);
    act_ctx c = {n, kind, p, drnd(n, -3, 3), xmalloc(n * sizeof(double)), drnd(n, -1, 1)};
    for (size_t i = 0; i < n; i++) /* away from ReLU's kink, by far more than h */
        if (fabs(c.in[i]) < 1e-2) c.in[i] = c.in[i] < 0 ? -1e-2 : 1e-2;
    double *din = xmalloc(n * sizeof *din);
    tfm_activation_dropout_backward_f64(din, c.R, c.in, n, kind, p, SEED, STREAM);
    report_fd("din", fd_err(act_loss, &c, c.in, n, din));
    free(c.in), free(c.out), free(c.R), free(din);
}

int main(void) {
    tfm_rng_init(&g_rng, 4242u, 9);
    const tfm_backend *cpu = tfm_backend_cpu();
    /* (residual_dropout_layernorm goes through a wrapper that keeps nothing: backend.h's ln_keep) */
    CHECK(cpu->residual_dropout_layernorm != NULL &&
              cpu->layernorm_backward_dropout == tfm_layernorm_backward_dropout &&
              cpu->activation_dropout_forward == tfm_activation_dropout_forward &&
              cpu->activation_dropout_backward == tfm_activation_dropout_backward,
          "the CPU backend's table holds the fused ops");
    run_all();
    run_all_f64();
    fd_residual_layernorm(37, 24, 0.1f);
    fd_residual_layernorm(5, 257, 0.1f);
    fd_activation(37 * 24, TFM_OP_RELU, 0.1f);
    fd_activation(37 * 24, TFM_OP_GELU, 0.1f);
    return tfm_test_finish();
}

#else
/* ------------------------------------------------------------------------
 * The body, once over float (tfm_<op>) and once over double (tfm_<op>_f64):
 * each fused op against the composition it replaces, bit for bit.
 */

static real *OPFN(rnd)(size_t n, double lo, double hi) {
    real *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (real)urand(lo, hi);
    return x;
}

static real *OPFN(nans)(size_t n) {
    real *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (real)NAN;
    return x;
}

static real *OPFN(dup)(const real *x, size_t n) {
    real *y = xmalloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* residual_dropout_layernorm vs residual_dropout + layernorm_forward, then
 * layernorm_backward_dropout vs layernorm_backward (accumulate 0) + dropout. */
static void OPFN(check_residual_layernorm)(int N, int D, float p) {
    const char *type = sizeof(real) == sizeof(double) ? "double" : "float";
    printf("%s residual_dropout_layernorm / layernorm_backward_dropout N=%d D=%d p=%g\n", type, N, D, p);
    size_t n = (size_t)N * D;
    real eps = (real)1e-5f;
    real *x = OPFN(rnd)(n, -1, 1), *y = OPFN(rnd)(n, -1, 1), *w = OPFN(rnd)(D, 0.5, 1.5), *b = OPFN(rnd)(D, -0.5, 0.5);
    for (size_t i = 0; i < n; i++) x[i] += 3; /* a large mean, as after residual sums */

    /* Forward: the composition, then the fused op, then the fused op with res = x. */
    real *res_r = OPFN(nans)(n), *ln_r = OPFN(nans)(n), *mean_r = OPFN(nans)(N), *rstd_r = OPFN(nans)(N);
    OPFN(tfm_residual_dropout)(res_r, x, y, n, p, SEED, STREAM);
    OPFN(tfm_layernorm_forward)(ln_r, mean_r, rstd_r, res_r, w, b, N, D, eps);
    real *res = OPFN(nans)(n), *ln = OPFN(nans)(n), *mean = OPFN(nans)(N), *rstd = OPFN(nans)(N);
    OPFN(tfm_residual_dropout_layernorm)(res, ln, mean, rstd, x, y, w, b, N, D, eps, p, SEED, STREAM);
    same("forward res", res, res_r, n, sizeof(real));
    same("forward ln", ln, ln_r, n, sizeof(real));
    same("forward mean", mean, mean_r, N, sizeof(real));
    same("forward rstd", rstd, rstd_r, N, sizeof(real));
    real *io = OPFN(dup)(x, n), *ln2 = OPFN(nans)(n);
    OPFN(tfm_residual_dropout_layernorm)(io, ln2, mean, rstd, io, y, w, b, N, D, eps, p, SEED, STREAM);
    same("forward res (res aliases x)", io, res_r, n, sizeof(real));
    same("forward ln (res aliases x)", ln2, ln_r, n, sizeof(real));
    size_t dropped = 0;
    for (size_t i = 0; i < n; i++) dropped += res_r[i] == x[i];
    check_dropped("residual_dropout_layernorm", dropped, n, p);

    /* Backward, from the saved statistics; dw, db start from random values. */
    real *dout = OPFN(rnd)(n, -1, 1), *dw0 = OPFN(rnd)(D, -1, 1), *db0 = OPFN(rnd)(D, -1, 1);
    real *din_r = OPFN(nans)(n), *dd_r = OPFN(nans)(n), *dw_r = OPFN(dup)(dw0, D), *db_r = OPFN(dup)(db0, D);
    OPFN(tfm_layernorm_backward)(din_r, dw_r, db_r, dout, res_r, mean_r, rstd_r, w, N, D, 0);
    OPFN(tfm_dropout)(dd_r, din_r, n, p, SEED, STREAM);
    real *din = OPFN(nans)(n), *dd = OPFN(nans)(n), *dw = OPFN(dup)(dw0, D), *db = OPFN(dup)(db0, D);
    OPFN(tfm_layernorm_backward_dropout)(din, dd, dw, db, dout, res, mean, rstd, w, N, D, p, SEED, STREAM);
    same("backward din (=)", din, din_r, n, sizeof(real));
    same("backward ddrop (=)", dd, dd_r, n, sizeof(real));
    same("backward dw (+= from random)", dw, dw_r, D, sizeof(real));
    same("backward db (+= from random)", db, db_r, D, sizeof(real));
    /* A second call adds again (gradient accumulation); din, ddrop are overwritten. */
    OPFN(tfm_layernorm_backward)(din_r, dw_r, db_r, dout, res_r, mean_r, rstd_r, w, N, D, 0);
    OPFN(tfm_layernorm_backward_dropout)(din, dd, dw, db, dout, res, mean, rstd, w, N, D, p, SEED, STREAM);
    same("backward dw after a second call (+=)", dw, dw_r, D, sizeof(real));
    same("backward db after a second call (+=)", db, db_r, D, sizeof(real));
    same("backward ddrop after a second call (=)", dd, dd_r, n, sizeof(real));
    dropped = 0;
    for (size_t i = 0; i < n; i++) dropped += dd[i] == 0 && din[i] != 0;
    check_dropped("layernorm_backward_dropout", dropped, n, p);

    free(x), free(y), free(w), free(b), free(res_r), free(ln_r), free(mean_r), free(rstd_r);
    free(res), free(ln), free(mean), free(rstd), free(io), free(ln2);
    free(dout), free(dw0), free(db0), free(din_r), free(dd_r), free(dw_r), free(db_r);
    free(din), free(dd), free(dw), free(db);
}

/* activation_dropout_forward vs activation_forward + dropout;
 * activation_dropout_backward vs dropout + activation_backward. */
static void OPFN(check_activation)(int N, int F, tfm_act_kind kind, float p) {
    const char *type = sizeof(real) == sizeof(double) ? "double" : "float";
    printf("%s activation_dropout %s N=%d F=%d p=%g\n", type, kind == TFM_OP_RELU ? "relu" : "gelu", N, F, p);
    size_t n = (size_t)N * F;
    real *in = OPFN(rnd)(n, -4, 4), *dout = OPFN(rnd)(n, -1, 1);
    real *out_r = OPFN(nans)(n);
    OPFN(tfm_activation_forward)(out_r, in, n, kind);
    OPFN(tfm_dropout)(out_r, out_r, n, p, SEED, STREAM);
    real *out = OPFN(nans)(n);
    OPFN(tfm_activation_dropout_forward)(out, in, n, kind, p, SEED, STREAM);
    same("forward out", out, out_r, n, sizeof(real));
    real *io = OPFN(dup)(in, n);
    OPFN(tfm_activation_dropout_forward)(io, io, n, kind, p, SEED, STREAM);
    same("forward out (out aliases in)", io, out_r, n, sizeof(real));
    size_t dropped = 0;
    for (size_t i = 0; i < n; i++) dropped += out[i] == 0 && in[i] > 0;
    check_dropped("activation_dropout_forward (positive inputs)", dropped * 2, n, p);

    real *din_r = OPFN(nans)(n);
    OPFN(tfm_dropout)(din_r, dout, n, p, SEED, STREAM);
    OPFN(tfm_activation_backward)(din_r, din_r, in, n, kind);
    real *din = OPFN(nans)(n);
    OPFN(tfm_activation_dropout_backward)(din, dout, in, n, kind, p, SEED, STREAM);
    same("backward din (=)", din, din_r, n, sizeof(real));
    real *g = OPFN(dup)(dout, n);
    OPFN(tfm_activation_dropout_backward)(g, g, in, n, kind, p, SEED, STREAM);
    same("backward din (din aliases dout)", g, din_r, n, sizeof(real));
    free(in), free(dout), free(out_r), free(out), free(io), free(din_r), free(din), free(g);
}

static void OPFN(run_all)(void) {
    static const float ps[2] = {0.0f, 0.1f};
    for (int k = 0; k < 2; k++) {
        OPFN(check_residual_layernorm)(37, 24, ps[k]);
        OPFN(check_residual_layernorm)(37, 257, ps[k]);
        OPFN(check_residual_layernorm)(1, 257, ps[k]);
        OPFN(check_activation)(37, 1000, TFM_OP_RELU, ps[k]);
        OPFN(check_activation)(37, 1000, TFM_OP_GELU, ps[k]);
        OPFN(check_activation)(3, 7, TFM_OP_GELU, ps[k]); /* below the parallel threshold */
    }
}
#endif
