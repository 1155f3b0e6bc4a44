/*
 * test_grad_ops.c: every reference op's backward against central finite
 * differences, in double precision (the tfm_<op>_f64 build of the same code).
 *
 * Method. For an op out = f(inputs) and a fixed random R, the scalar loss is
 * L = sum(out * R), so dL/dout = R is what each backward receives. Every input
 * element x is moved by +-h (h = 1e-6) and num = (L(x+h) - L(x-h)) / 2h is
 * compared with the analytic gradient:
 *     rel err = max|num - ana| / max(max|ana|, 1e-8)  must be <= 1e-6.
 * Sizes are small and odd (not multiples of 8 or 16), batch > 1.
 *
 * Besides the gradients, each op is checked for:
 *   - the float build (tfm_<op>) agreeing with the double build on the same,
 *     float-representable inputs to 1e-5 (so the library runs the code checked here);
 *   - the write (=) or accumulate (+=) contract of each gradient in ops_decl.h:
 *     "=" outputs are pre-filled with NaN (so a read of them shows up), "+="
 *     outputs are pre-filled with random values that must be kept;
 *   - attention: masked probabilities exactly 0.0, rows with every key masked
 *     giving exactly 0 output and gradients, and strided buffers whose gaps are
 *     neither read nor written.
 * One line per op: the worst finite-difference error and the worst float/double error.
 *
 * It does not compare with PyTorch: test_ref_ops.c does.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/status.h"
#include "ops/ops.h"
#include "test_util.h"

#define FD_H 1e-6
#define FD_TOL 1e-6   /* finite differences vs analytic, double */
#define F32_TOL 1e-5  /* float build vs double build */
#define EXACT_TOL 1e-13 /* identities that hold up to double rounding */

/* ------------------------------------------------------------------ helpers */

static tfm_rng g_rng;

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* Uniform in [lo, hi), rounded to float so that both builds see the same value. */
static double urand(double lo, double hi) {
    return (double)(float)(lo + (hi - lo) * tfm_rng_next_uniform(&g_rng));
}

static double *rnd(size_t n, double lo, double hi) {
    double *x = xcalloc(n, sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}

static double *nans(size_t n) {
    double *x = xcalloc(n, sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

static double *dup(const double *x, size_t n) {
    double *y = xcalloc(n, sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

static float *f32(const double *x, size_t n) {
    float *y = xcalloc(n, sizeof *y);
    for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
    return y;
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static int all_finite(const double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* max|a - b| / max(max|b|, 1e-8); infinite when either holds a NaN or Inf. */
static double rel_err(const double *a, const double *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        md = fmax(md, fabs(a[i] - b[i]));
        mb = fmax(mb, fabs(b[i]));
    }
    return md / fmax(mb, 1e-8);
}

static double rel_err_f32(const float *a, const double *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        md = fmax(md, fabs((double)a[i] - b[i]));
        mb = fmax(mb, fabs(b[i]));
    }
    return md / fmax(mb, 1e-8);
}

/* The scalar loss of one op as a function of its (mutable) inputs. */
typedef double (*loss_fn)(void *ctx);

/* Central differences over x[0..n) against ana[0..n); returns the relative error. */
static double fd_err(loss_fn f, void *ctx, double *x, size_t n, const double *ana) {
    double md = 0, ma = 0;
    for (size_t i = 0; i < n; i++) {
        double xi = x[i], xp = xi + FD_H, xm = xi - FD_H;
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = xi;
        double num = (lp - lm) / (xp - xm); /* the step actually taken */
        if (!isfinite(num) || !isfinite(ana[i])) return INFINITY;
        md = fmax(md, fabs(num - ana[i]));
        ma = fmax(ma, fabs(ana[i]));
    }
    return md / fmax(ma, 1e-8);
}

/* One line per op: the worst error of each kind and which tensor it came from. */
typedef struct report {
    const char *op;
    double fd, f32;
    char fd_what[48], f32_what[48];
    int checks;
} report;

static void rep_begin(report *r, const char *op) {
    memset(r, 0, sizeof *r);
    r->op = op;
    strcpy(r->fd_what, "-");
    strcpy(r->f32_what, "-");
    r->fd = -1;
    r->f32 = -1;
}

static void rep_fd(report *r, const char *what, double err) {
    CHECK(err <= FD_TOL, "%s %s: finite-difference rel err %.3e > %.0e", r->op, what, err, FD_TOL);
    if (err > r->fd || isnan(err)) {
        r->fd = err;
        snprintf(r->fd_what, sizeof r->fd_what, "%s", what);
    }
    r->checks++;
}

static void rep_f32(report *r, const char *what, const float *a, const double *b, size_t n) {
    double err = rel_err_f32(a, b, n);
    CHECK(err <= F32_TOL, "%s %s: float vs double rel err %.3e > %.0e", r->op, what, err, F32_TOL);
    if (err > r->f32) {
        r->f32 = err;
        snprintf(r->f32_what, sizeof r->f32_what, "%s", what);
    }
}

static void rep_end(const report *r) {
    char fd[96], fl[96];
    if (r->fd < 0) snprintf(fd, sizeof fd, "fd      n/a (no backward)");
    else snprintf(fd, sizeof fd, "fd %.2e [%s]", r->fd, r->fd_what);
    if (r->f32 < 0) snprintf(fl, sizeof fl, "f32/f64 n/a");
    else snprintf(fl, sizeof fl, "f32/f64 %.2e [%s]", r->f32, r->f32_what);
    printf("%-18s %-44s %s\n", r->op, fd, fl);
}

/* -------------------------------------------------------------------- gemm */

/* No backward: the four transpose cases, leading dimensions wider than the
 * matrices, alpha, beta = 0 on a NaN-filled C and beta != 0, against a naive loop. */
static void test_gemm(void) {
    report r;
    rep_begin(&r, "gemm");
    int M = 7, N = 5, K = 9;
    double worst = 0;
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            int lda = ta ? M + 3 : K + 2, ldb = tb ? K + 1 : N + 4, ldc = N + 3;
            size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
            size_t nc = (size_t)M * ldc;
            double *A = rnd(na, -1, 1), *B = rnd(nb, -1, 1), *C0 = rnd(nc, -1, 1);
            for (int beta_case = 0; beta_case < 2; beta_case++) {
                double alpha = 0.75, beta = beta_case ? 0.5 : 0;
                double *want = dup(C0, nc), *C = beta_case ? dup(C0, nc) : nans(nc);
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        double s = 0;
                        for (int p = 0; p < K; p++) {
                            double a = ta ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p];
                            double b = tb ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j];
                            s += a * b;
                        }
                        want[(size_t)i * ldc + j] = alpha * s + beta * C0[(size_t)i * ldc + j];
                    }
                float *Af = f32(A, na), *Bf = f32(B, nb), *Cf = f32(C, nc);
                tfm_gemm_f64(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                tfm_gemm(ta, tb, M, N, K, (float)alpha, Af, lda, Bf, ldb, (float)beta, Cf, ldc);
                /* Columns N..ldc of C are not part of the matrix: untouched. */
                int gaps_ok = 1;
                for (int i = 0; i < M; i++)
                    for (int j = N; j < ldc; j++) {
                        double g = C[(size_t)i * ldc + j], w = beta_case ? C0[(size_t)i * ldc + j] : NAN;
                        if (!(beta_case ? g == w : isnan(g))) gaps_ok = 0;
                        want[(size_t)i * ldc + j] = 0;
                        C[(size_t)i * ldc + j] = 0;
                        Cf[(size_t)i * ldc + j] = 0;
                    }
                CHECK(gaps_ok, "gemm ta=%d tb=%d beta=%g wrote outside the N columns", ta, tb, beta);
                double e = rel_err(C, want, nc);
                CHECK(e <= EXACT_TOL, "gemm ta=%d tb=%d beta=%g: rel err %.3e vs naive", ta, tb, beta, e);
                worst = fmax(worst, e);
                char what[32];
                snprintf(what, sizeof what, "C ta%d tb%d b%d", ta, tb, beta_case);
                rep_f32(&r, what, Cf, want, nc);
                free(want), free(C), free(Af), free(Bf), free(Cf);
            }
            free(A), free(B), free(C0);
        }
    }
    rep_end(&r);
    printf("%-18s f64 vs naive loop %.2e (tol %.0e)\n", "", worst, EXACT_TOL);
}

/* ------------------------------------------------------------------ linear */

typedef struct linear_ctx {
    int N, I, O;
    double *in, *w, *b, *out, *R;
} linear_ctx;

static double linear_loss(void *p) {
    linear_ctx *c = p;
    tfm_linear_forward_f64(c->out, c->in, c->w, c->b, c->N, c->I, c->O);
    return dot(c->out, c->R, (size_t)c->N * c->O);
}

static void test_linear(void) {
    report r;
    rep_begin(&r, "linear");
    int B = 3, T = 5, N = B * T, I = 13, O = 11;
    size_t nin = (size_t)N * I, nw = (size_t)O * I, nout = (size_t)N * O;
    linear_ctx c = {N, I, O, rnd(nin, -1, 1), rnd(nw, -1, 1), rnd(O, -1, 1),
                    xcalloc(nout, sizeof(double)), rnd(nout, -1, 1)};
    double *din = nans(nin), *dw = xcalloc(nw, sizeof(double)), *db = xcalloc(O, sizeof(double));
    tfm_linear_backward_f64(din, dw, db, c.R, c.in, c.w, N, I, O, 0);
    CHECK(all_finite(din, nin), "linear din (accumulate=0) read its NaN-filled input");
    rep_fd(&r, "din", fd_err(linear_loss, &c, c.in, nin, din));
    rep_fd(&r, "dw", fd_err(linear_loss, &c, c.w, nw, dw));
    rep_fd(&r, "db", fd_err(linear_loss, &c, c.b, O, db));

    /* accumulate = 1: din += ; dw, db always += */
    double *din0 = rnd(nin, -1, 1), *dw0 = rnd(nw, -1, 1), *db0 = rnd(O, -1, 1);
    double *din2 = dup(din0, nin), *dw2 = dup(dw0, nw), *db2 = dup(db0, O);
    tfm_linear_backward_f64(din2, dw2, db2, c.R, c.in, c.w, N, I, O, 1);
    for (size_t i = 0; i < nin; i++) din0[i] += din[i];
    for (size_t i = 0; i < nw; i++) dw0[i] += dw[i];
    for (int i = 0; i < O; i++) db0[i] += db[i];
    CHECK(rel_err(din2, din0, nin) <= EXACT_TOL, "linear din with accumulate=1 is not old + new");
    CHECK(rel_err(dw2, dw0, nw) <= EXACT_TOL, "linear dw is not accumulated");
    CHECK(rel_err(db2, db0, O) <= EXACT_TOL, "linear db is not accumulated");
    /* din and db may be NULL */
    double *dw3 = xcalloc(nw, sizeof(double));
    tfm_linear_backward_f64(NULL, dw3, NULL, c.R, c.in, c.w, N, I, O, 0);
    CHECK(rel_err(dw3, dw, nw) <= EXACT_TOL, "linear dw differs when din, db are NULL");
    /* b may be NULL */
    double *out_nb = xcalloc(nout, sizeof(double));
    tfm_linear_forward_f64(out_nb, c.in, c.w, NULL, N, I, O);
    tfm_linear_forward_f64(c.out, c.in, c.w, c.b, N, I, O);
    int nb_ok = 1;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++)
            if (fabs(out_nb[(size_t)n * O + o] + c.b[o] - c.out[(size_t)n * O + o]) > 1e-14) nb_ok = 0;
    CHECK(nb_ok, "linear forward without bias is not the biased forward minus b");

    /* float build */
    float *inf = f32(c.in, nin), *wf = f32(c.w, nw), *bf = f32(c.b, O), *Rf = f32(c.R, nout);
    float *outf = xcalloc(nout, sizeof(float)), *dinf = xcalloc(nin, sizeof(float));
    float *dwf = xcalloc(nw, sizeof(float)), *dbf = xcalloc(O, sizeof(float));
    tfm_linear_forward(outf, inf, wf, bf, N, I, O);
    tfm_linear_backward(dinf, dwf, dbf, Rf, inf, wf, N, I, O, 0);
    rep_f32(&r, "out", outf, c.out, nout);
    rep_f32(&r, "din", dinf, din, nin);
    rep_f32(&r, "dw", dwf, dw, nw);
    rep_f32(&r, "db", dbf, db, O);
    rep_end(&r);
    free(c.in), free(c.w), free(c.b), free(c.out), free(c.R), free(din), free(dw), free(db);
    free(din0), free(dw0), free(db0), free(din2), free(dw2), free(db2), free(dw3), free(out_nb);
    free(inf), free(wf), free(bf), free(Rf), free(outf), free(dinf), free(dwf), free(dbf);
}

/* --------------------------------------------------- embedding, positions */

typedef struct emb_ctx {
    int N, D;
    const int32_t *ids;
    double *table, *out, *R, scale;
} emb_ctx;

static double emb_loss(void *p) {
    emb_ctx *c = p;
    tfm_embedding_forward_f64(c->out, c->ids, c->table, c->N, c->D, c->scale);
    return dot(c->out, c->R, (size_t)c->N * c->D);
}

static void test_embedding(void) {
    report r;
    rep_begin(&r, "embedding");
    int B = 2, T = 7, N = B * T, V = 17, D = 11;
    int32_t ids[14];
    for (int n = 0; n < N; n++) ids[n] = (int32_t)(tfm_rng_next(&g_rng) % (uint64_t)V);
    ids[4] = ids[0], ids[9] = ids[0], ids[12] = ids[3]; /* repeated ids must sum */
    double scale = (double)(float)sqrt((double)D);
    size_t nt = (size_t)V * D, nout = (size_t)N * D;
    emb_ctx c = {N, D, ids, rnd(nt, -1, 1), xcalloc(nout, sizeof(double)), rnd(nout, -1, 1), scale};
    double *dt0 = rnd(nt, -1, 1), *dt = dup(dt0, nt);
    tfm_embedding_backward_f64(dt, c.R, ids, N, D, scale);
    for (size_t i = 0; i < nt; i++) dt[i] -= dt0[i]; /* += contract: what was there stays */
    rep_fd(&r, "dtable (+=)", fd_err(emb_loss, &c, c.table, nt, dt));

    float *tf = f32(c.table, nt), *Rf = f32(c.R, nout), *outf = xcalloc(nout, sizeof(float));
    float *dtf = xcalloc(nt, sizeof(float));
    emb_loss(&c);
    tfm_embedding_forward(outf, ids, tf, N, D, (float)scale);
    tfm_embedding_backward(dtf, Rf, ids, N, D, (float)scale);
    rep_f32(&r, "out", outf, c.out, nout);
    rep_f32(&r, "dtable", dtf, dt, nt);
    rep_end(&r);
    free(c.table), free(c.out), free(c.R), free(dt0), free(dt), free(tf), free(Rf), free(outf), free(dtf);
}

typedef struct pos_ctx {
    int N, D;
    const int32_t *pos;
    double *x0, *x, *table, *R;
} pos_ctx;

static double pos_loss(void *p) {
    pos_ctx *c = p;
    size_t n = (size_t)c->N * c->D;
    memcpy(c->x, c->x0, n * sizeof *c->x);
    tfm_positions_forward_f64(c->x, c->table, c->pos, c->N, c->D);
    return dot(c->x, c->R, n);
}

static void test_positions(void) {
    report r;
    rep_begin(&r, "positions");
    int B = 2, T = 7, N = B * T, P = 9, D = 11;
    int32_t pos[14];
    for (int n = 0; n < N; n++) pos[n] = (int32_t)(n % T); /* each position used B times */
    pos[13] = 8;
    size_t nt = (size_t)P * D, nx = (size_t)N * D;
    pos_ctx c = {N, D, pos, rnd(nx, -1, 1), xcalloc(nx, sizeof(double)), rnd(nt, -1, 1), rnd(nx, -1, 1)};
    double *dt0 = rnd(nt, -1, 1), *dt = dup(dt0, nt);
    tfm_positions_backward_f64(dt, c.R, pos, N, D);
    for (size_t i = 0; i < nt; i++) dt[i] -= dt0[i];
    rep_fd(&r, "dtable (learned, +=)", fd_err(pos_loss, &c, c.table, nt, dt));
    /* The forward adds: dx = dout, which the model passes through unchanged. */
    rep_fd(&r, "dx", fd_err(pos_loss, &c, c.x0, nx, c.R));

    float *xf = f32(c.x0, nx), *tf = f32(c.table, nt), *Rf = f32(c.R, nx), *dtf = xcalloc(nt, sizeof(float));
    pos_loss(&c);
    tfm_positions_forward(xf, tf, pos, N, D);
    tfm_positions_backward(dtf, Rf, pos, N, D);
    rep_f32(&r, "x + table[pos]", xf, c.x, nx);
    rep_f32(&r, "dtable", dtf, dt, nt);

    /* Sinusoidal table: the paper's formula, odd D, both builds identical. */
    int SP = 23, SD = 13;
    size_t ns = (size_t)SP * SD;
    double *st = xcalloc(ns, sizeof(double)), *want = xcalloc(ns, sizeof(double));
    float *stf = xcalloc(ns, sizeof(float));
    tfm_sinusoidal_table_f64(st, SP, SD);
    tfm_sinusoidal_table(stf, SP, SD);
    for (int p = 0; p < SP; p++)
        for (int j = 0; j < SD; j++) {
            int i2 = j - (j % 2); /* 2i */
            double a = p * exp(-log(10000.0) * i2 / SD);
            want[(size_t)p * SD + j] = j % 2 ? cos(a) : sin(a);
        }
    double e = rel_err(st, want, ns);
    CHECK(e <= 1e-12, "sinusoidal table vs formula rel err %.3e", e);
    int same = 1;
    for (size_t i = 0; i < ns; i++) same &= stf[i] == (float)st[i];
    CHECK(same, "float sinusoidal table is not the double table rounded");
    rep_f32(&r, "sinusoidal", stf, st, ns);
    rep_end(&r);
    printf("%-18s sinusoidal table vs paper formula %.2e (tol 1e-12)\n", "", e);
    free(c.x0), free(c.x), free(c.table), free(c.R), free(dt0), free(dt), free(xf), free(tf), free(Rf);
    free(dtf), free(st), free(want), free(stf);
}

/* -------------------------------------------------------------------- rope */

/* Rope is applied in place to q and k inside a packed [N, 2*H*dk + H*dv]
 * buffer, as the model does; v and everything else must stay untouched. */
typedef struct rope_ctx {
    int N, H, dk;
    long row;
    const int32_t *pos;
    double *x0, *x, *R, theta;
} rope_ctx;

static void rope_apply_f64(double *x, const rope_ctx *c, int inverse) {
    tfm_rope_f64(x, c->row, c->pos, c->N, c->H, c->dk, c->theta, inverse);                     /* q */
    tfm_rope_f64(x + (size_t)c->H * c->dk, c->row, c->pos, c->N, c->H, c->dk, c->theta, inverse); /* k */
}

static double rope_loss(void *p) {
    rope_ctx *c = p;
    size_t n = (size_t)c->N * c->row;
    memcpy(c->x, c->x0, n * sizeof *c->x);
    rope_apply_f64(c->x, c, 0);
    return dot(c->x, c->R, n);
}

static void test_rope(void) {
    report r;
    rep_begin(&r, "rope");
    int B = 2, T = 3, N = B * T, H = 3, dk = 6, dv = 5;
    long row = 2L * H * dk + H * dv;
    int32_t pos[6] = {0, 1, 2, 0, 57, 1000}; /* position 0 is the identity; large angles too */
    size_t n = (size_t)N * row;
    rope_ctx c = {N, H, dk, row, pos, rnd(n, -1, 1), xcalloc(n, sizeof(double)), rnd(n, -1, 1), 10000.0};
    /* backward = the inverse rotation applied to dout */
    double *g = dup(c.R, n);
    rope_apply_f64(g, &c, 1);
    rep_fd(&r, "dx (inverse of dout)", fd_err(rope_loss, &c, c.x0, n, g));

    /* Exact inverse: rope^-1(rope(x)) = x. Exact adjoint: <rope(x), y> = <x, rope^-1(y)>. */
    double *y = dup(c.x0, n);
    rope_apply_f64(y, &c, 0);
    double lhs = dot(y, c.R, n), rhs = dot(c.x0, g, n);
    double nx = sqrt(dot(c.x0, c.x0, n)), nr = sqrt(dot(c.R, c.R, n));
    double adj = fabs(lhs - rhs) / (nx * nr);
    rope_apply_f64(y, &c, 1);
    double inv = rel_err(y, c.x0, n);
    CHECK(inv <= EXACT_TOL, "rope inverse(forward(x)) != x: rel err %.3e", inv);
    CHECK(adj <= EXACT_TOL, "rope inverse is not the adjoint: |<Rx,y> - <x,R^-1 y>| / |x||y| = %.3e", adj);
    /* v columns and position 0 untouched */
    y = memcpy(y, c.x0, n * sizeof *y);
    rope_apply_f64(y, &c, 0);
    int untouched = 1;
    for (int i = 0; i < N; i++)
        for (long j = 2L * H * dk; j < row; j++) untouched &= y[i * row + j] == c.x0[i * row + j];
    for (long j = 0; j < row; j++) untouched &= y[j] == c.x0[j];
    CHECK(untouched, "rope changed v columns or rows at position 0");

    float *xf = f32(c.x0, n), *gf = f32(c.R, n);
    tfm_rope(xf, row, pos, N, H, dk, c.theta, 0);
    tfm_rope(xf + H * dk, row, pos, N, H, dk, c.theta, 0);
    tfm_rope(gf, row, pos, N, H, dk, c.theta, 1);
    tfm_rope(gf + H * dk, row, pos, N, H, dk, c.theta, 1);
    rep_f32(&r, "forward", xf, y, n);
    rep_f32(&r, "inverse", gf, g, n);
    rep_end(&r);
    printf("%-18s inverse(forward) %.2e, adjoint identity %.2e (tol %.0e)\n", "", inv, adj, EXACT_TOL);
    free(c.x0), free(c.x), free(c.R), free(g), free(y), free(xf), free(gf);
}

/* --------------------------------------------------------------- layernorm */

typedef struct ln_ctx {
    int N, D;
    double *in, *w, *b, *out, *mean, *rstd, *R, eps;
} ln_ctx;

static double ln_loss(void *p) {
    ln_ctx *c = p;
    tfm_layernorm_forward_f64(c->out, c->mean, c->rstd, c->in, c->w, c->b, c->N, c->D, c->eps);
    return dot(c->out, c->R, (size_t)c->N * c->D);
}

static void test_layernorm(void) {
    report r;
    rep_begin(&r, "layernorm");
    int B = 2, T = 7, N = B * T, D = 13;
    size_t n = (size_t)N * D;
    ln_ctx c = {N, D, rnd(n, -1, 1), rnd(D, 0.5, 1.5), rnd(D, -0.5, 0.5), xcalloc(n, sizeof(double)),
                xcalloc(N, sizeof(double)), xcalloc(N, sizeof(double)), rnd(n, -1, 1), (double)1e-5f};
    for (int i = 0; i < N; i++) /* rows with a mean away from 0 */
        for (int j = 0; j < D; j++) c.in[(size_t)i * D + j] = (double)(float)(c.in[(size_t)i * D + j] + 0.37 * i);
    ln_loss(&c);
    double *din = nans(n), *dw0 = rnd(D, -1, 1), *db0 = rnd(D, -1, 1);
    double *dw = dup(dw0, D), *db = dup(db0, D);
    tfm_layernorm_backward_f64(din, dw, db, c.R, c.in, c.mean, c.rstd, c.w, N, D, 0);
    CHECK(all_finite(din, n), "layernorm din (accumulate=0) read its NaN-filled input");
    for (int i = 0; i < D; i++) dw[i] -= dw0[i], db[i] -= db0[i]; /* += : the old values stay */
    rep_fd(&r, "din", fd_err(ln_loss, &c, c.in, n, din));
    rep_fd(&r, "dw (+=)", fd_err(ln_loss, &c, c.w, D, dw));
    rep_fd(&r, "db (+=)", fd_err(ln_loss, &c, c.b, D, db));

    ln_loss(&c);
    double *din2 = rnd(n, -1, 1), *want = dup(din2, n), *dw2 = xcalloc(D, sizeof(double));
    double *db2 = xcalloc(D, sizeof(double));
    for (size_t i = 0; i < n; i++) want[i] += din[i];
    tfm_layernorm_backward_f64(din2, dw2, db2, c.R, c.in, c.mean, c.rstd, c.w, N, D, 1);
    CHECK(rel_err(din2, want, n) <= EXACT_TOL, "layernorm din with accumulate=1 is not old + new");

    float *inf = f32(c.in, n), *wf = f32(c.w, D), *bf = f32(c.b, D), *Rf = f32(c.R, n);
    float *outf = xcalloc(n, sizeof(float)), *mf = xcalloc(N, sizeof(float)), *sf = xcalloc(N, sizeof(float));
    float *dinf = xcalloc(n, sizeof(float)), *dwf = xcalloc(D, sizeof(float)), *dbf = xcalloc(D, sizeof(float));
    tfm_layernorm_forward(outf, mf, sf, inf, wf, bf, N, D, 1e-5f);
    tfm_layernorm_backward(dinf, dwf, dbf, Rf, inf, mf, sf, wf, N, D, 0);
    rep_f32(&r, "out", outf, c.out, n);
    rep_f32(&r, "mean", mf, c.mean, N);
    rep_f32(&r, "rstd", sf, c.rstd, N);
    rep_f32(&r, "din", dinf, din, n);
    rep_f32(&r, "dw", dwf, dw, D);
    rep_f32(&r, "db", dbf, db, D);
    rep_end(&r);
    free(c.in), free(c.w), free(c.b), free(c.out), free(c.mean), free(c.rstd), free(c.R), free(din);
    free(dw0), free(db0), free(dw), free(db), free(din2), free(want), free(dw2), free(db2);
    free(inf), free(wf), free(bf), free(Rf), free(outf), free(mf), free(sf), free(dinf), free(dwf), free(dbf);
}

/* -------------------------------------------------------------- activation */

typedef struct act_ctx {
    size_t n;
    tfm_act_kind kind;
    double *in, *out, *R;
} act_ctx;

static double act_loss(void *p) {
    act_ctx *c = p;
    tfm_activation_forward_f64(c->out, c->in, c->n, c->kind);
    return dot(c->out, c->R, c->n);
}

static void test_activation(tfm_act_kind kind) {
    report r;
    rep_begin(&r, kind == TFM_OP_RELU ? "relu" : "gelu");
    size_t n = 3 * 67;
    act_ctx c = {n, kind, rnd(n, -3, 3), xcalloc(n, sizeof(double)), rnd(n, -1, 1)};
    if (kind == TFM_OP_RELU) /* away from the kink: |x| >= 0.05 >> h */
        for (size_t i = 0; i < n; i++) c.in[i] = (i % 2 ? -1 : 1) * urand(0.05, 2);
    double *din = nans(n);
    tfm_activation_backward_f64(din, c.R, c.in, n, kind);
    CHECK(all_finite(din, n), "%s din read its NaN-filled input", r.op);
    rep_fd(&r, "din", fd_err(act_loss, &c, c.in, n, din));
    double *alias = dup(c.R, n);
    tfm_activation_backward_f64(alias, alias, c.in, n, kind);
    CHECK(memcmp(alias, din, n * sizeof *din) == 0, "%s backward with din == dout differs", r.op);
    act_loss(&c);
    if (kind == TFM_OP_RELU) {
        double *inplace = dup(c.in, n);
        tfm_activation_forward_f64(inplace, inplace, n, kind);
        CHECK(memcmp(inplace, c.out, n * sizeof *inplace) == 0, "relu in place differs");
        free(inplace);
    }
    float *inf = f32(c.in, n), *Rf = f32(c.R, n), *outf = xcalloc(n, sizeof(float)), *dinf = xcalloc(n, sizeof(float));
    tfm_activation_forward(outf, inf, n, kind);
    tfm_activation_backward(dinf, Rf, inf, n, kind);
    rep_f32(&r, "out", outf, c.out, n);
    rep_f32(&r, "din", dinf, din, n);
    rep_end(&r);
    free(c.in), free(c.out), free(c.R), free(din), free(alias), free(inf), free(Rf), free(outf), free(dinf);
}

/* ----------------------------------------------------------------- dropout */

typedef struct drop_ctx {
    size_t n;
    float p;
    uint64_t seed, stream;
    double *x, *y, *out, *R;
} drop_ctx;

static double drop_loss(void *p) {
    drop_ctx *c = p;
    tfm_dropout_f64(c->out, c->y, c->n, c->p, c->seed, c->stream);
    return dot(c->out, c->R, c->n);
}

static double resdrop_loss(void *p) {
    drop_ctx *c = p;
    tfm_residual_dropout_f64(c->out, c->x, c->y, c->n, c->p, c->seed, c->stream);
    return dot(c->out, c->R, c->n);
}

static void test_dropout(void) {
    report r;
    rep_begin(&r, "dropout");
    size_t n = 3 * 67;
    drop_ctx c = {n, 0.3f, 1234, 5, rnd(n, -1, 1), rnd(n, -1, 1), xcalloc(n, sizeof(double)), rnd(n, -1, 1)};
    for (size_t i = 0; i < n; i++) c.y[i] = (i % 2 ? -1 : 1) * urand(0.1, 1); /* nonzero: drops are visible */
    /* backward = the same dropout applied to dout */
    double *g = xcalloc(n, sizeof(double));
    tfm_dropout_f64(g, c.R, n, c.p, c.seed, c.stream);
    rep_fd(&r, "din", fd_err(drop_loss, &c, c.y, n, g));

    drop_loss(&c);
    double scale = 1.0 / (1.0 - c.p);
    size_t dropped = 0;
    int values_ok = 1;
    for (size_t i = 0; i < n; i++) {
        int keep = tfm_rng_uniform(c.seed, c.stream, i) >= c.p;
        dropped += !keep;
        values_ok &= keep ? c.out[i] == c.y[i] * scale : c.out[i] == 0;
    }
    CHECK(values_ok, "dropout output is not in * keep(n) / (1 - p) with keep(n) = uniform(seed, stream, n) >= p");
    CHECK(dropped > n / 7 && dropped < n / 2, "dropout dropped %zu of %zu at p = 0.3", dropped, n);
    double *inplace = dup(c.y, n);
    tfm_dropout_f64(inplace, inplace, n, c.p, c.seed, c.stream);
    CHECK(memcmp(inplace, c.out, n * sizeof *inplace) == 0, "dropout in place differs");
    double *other = xcalloc(n, sizeof(double));
    tfm_dropout_f64(other, c.y, n, c.p, c.seed, c.stream + 1);
    CHECK(memcmp(other, c.out, n * sizeof *other) != 0, "dropout ignores the stream");
    tfm_dropout_f64(other, c.y, n, 0.0f, c.seed, c.stream);
    CHECK(memcmp(other, c.y, n * sizeof *other) == 0, "dropout with p = 0 is not a copy");

    float *yf = f32(c.y, n), *outf = xcalloc(n, sizeof(float));
    tfm_dropout(outf, yf, n, c.p, c.seed, c.stream);
    int same_mask = 1;
    for (size_t i = 0; i < n; i++) same_mask &= (outf[i] == 0) == (c.out[i] == 0);
    CHECK(same_mask, "float and double dropout masks differ");
    rep_f32(&r, "out", outf, c.out, n);
    rep_end(&r);

    rep_begin(&r, "residual_dropout");
    /* dx = dout, dy = dropout(dout) */
    rep_fd(&r, "dx", fd_err(resdrop_loss, &c, c.x, n, c.R));
    rep_fd(&r, "dy", fd_err(resdrop_loss, &c, c.y, n, g));
    resdrop_loss(&c);
    drop_loss(&c);
    double *want = dup(c.out, n);
    for (size_t i = 0; i < n; i++) want[i] += c.x[i];
    double *res = dup(c.x, n);
    tfm_residual_dropout_f64(res, res, c.y, n, c.p, c.seed, c.stream); /* out aliases x */
    CHECK(memcmp(res, want, n * sizeof *res) == 0, "residual_dropout(x, y) != x + dropout(y)");
    tfm_residual_dropout_f64(res, c.x, c.y, n, 0.0f, c.seed, c.stream);
    int p0 = 1;
    for (size_t i = 0; i < n; i++) p0 &= res[i] == c.x[i] + c.y[i];
    CHECK(p0, "residual_dropout with p = 0 is not x + y");
    float *xf = f32(c.x, n);
    tfm_residual_dropout(outf, xf, yf, n, c.p, c.seed, c.stream);
    rep_f32(&r, "out", outf, want, n);
    rep_end(&r);
    free(c.x), free(c.y), free(c.out), free(c.R), free(g), free(inplace), free(other), free(yf), free(outf);
    free(want), free(res), free(xf);
}

/* --------------------------------------------------------------- attention */

/* Where q, k, v live: self-attention reads all three from one packed buffer
 * [B, T, 2*H*dk + H*dv] (q at 0, k at H*dk, v at 2*H*dk); cross-attention
 * reads q from its own buffer and k, v from a packed memory buffer. */
typedef enum { LAYOUT_SELF_PACKED, LAYOUT_CROSS_KV_PACKED, LAYOUT_SEPARATE } attn_layout;
typedef enum { PAD_NONE, PAD_TAIL, PAD_TAIL_AND_ALL } attn_pad;

typedef struct attn_case {
    const char *name;
    int B, H, Tq, Tk, dk, dv;
    attn_layout layout;
    int causal, q_offset;
    attn_pad pad;
    float dropout;
    long batch_gap, o_gap, pad_gap; /* extra elements between batches / rows of out / mask rows */
} attn_case;

typedef struct attn_ctx {
    tfm_attn_dims d;
    int nmem;
    double *mem[3];
    size_t mem_n[3];
    int q_mem, k_mem, v_mem;
    size_t q_off, k_off, v_off;
    double *out, *probs, *scratch, *R;
    uint8_t *out_valid;
    size_t out_n, probs_n;
} attn_ctx;

static void mark(uint8_t *m, int B, int T, int width, long row, long batch, size_t off) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < width; i++) m[off + (size_t)b * batch + (size_t)t * row + i] = 1;
}

static double attn_loss(void *p) {
    attn_ctx *c = p;
    tfm_attention_forward_f64(c->out, c->probs, c->scratch, c->mem[c->q_mem] + c->q_off,
                              c->mem[c->k_mem] + c->k_off, c->mem[c->v_mem] + c->v_off, &c->d);
    double s = 0;
    for (size_t i = 0; i < c->out_n; i++)
        if (c->out_valid[i]) s += c->out[i] * c->R[i];
    return s;
}

static int attn_masked(const tfm_attn_dims *d, int b, int i, int j) {
    if (d->causal && j > i + d->q_offset) return 1;
    return d->key_pad && d->key_pad[(size_t)b * d->key_pad_stride + j];
}

static void test_attention_case(report *op_report, const attn_case *ac) {
    report case_report, *r = &case_report; /* one indented line per case, merged into the op's */
    rep_begin(r, "attention");
    attn_ctx c;
    memset(&c, 0, sizeof c);
    tfm_attn_dims *d = &c.d;
    int B = ac->B, H = ac->H, Tq = ac->Tq, Tk = ac->Tk, dk = ac->dk, dv = ac->dv;
    d->B = B, d->H = H, d->Tq = Tq, d->Tk = Tk, d->dk = dk, d->dv = dv;
    d->causal = ac->causal, d->q_offset = ac->q_offset;
    d->scale = 1.0 / sqrt((double)dk);
    d->dropout = ac->dropout, d->seed = 4242, d->stream = 17;
    if (ac->layout == LAYOUT_SELF_PACKED) {
        TFM_ASSERT(Tq == Tk);
        long row = 2L * H * dk + H * dv, batch = Tq * row + ac->batch_gap;
        c.nmem = 1, c.mem_n[0] = (size_t)B * batch;
        c.q_mem = c.k_mem = c.v_mem = 0, c.q_off = 0, c.k_off = (size_t)H * dk, c.v_off = 2 * (size_t)H * dk;
        d->q_row = d->k_row = d->v_row = row, d->q_batch = d->k_batch = d->v_batch = batch;
    } else if (ac->layout == LAYOUT_CROSS_KV_PACKED) {
        long qrow = (long)H * dk, kvrow = (long)H * dk + H * dv;
        c.nmem = 2, c.mem_n[0] = (size_t)B * (Tq * qrow + ac->batch_gap);
        c.mem_n[1] = (size_t)B * (Tk * kvrow + ac->batch_gap);
        c.q_mem = 0, c.k_mem = c.v_mem = 1, c.q_off = 0, c.k_off = 0, c.v_off = (size_t)H * dk;
        d->q_row = qrow, d->q_batch = Tq * qrow + ac->batch_gap;
        d->k_row = d->v_row = kvrow, d->k_batch = d->v_batch = Tk * kvrow + ac->batch_gap;
    } else {
        c.nmem = 3;
        c.q_mem = 0, c.k_mem = 1, c.v_mem = 2;
        d->q_row = (long)H * dk, d->k_row = (long)H * dk, d->v_row = (long)H * dv;
        d->q_batch = Tq * d->q_row + ac->batch_gap, d->k_batch = Tk * d->k_row + ac->batch_gap;
        d->v_batch = Tk * d->v_row + ac->batch_gap;
        c.mem_n[0] = (size_t)B * d->q_batch, c.mem_n[1] = (size_t)B * d->k_batch;
        c.mem_n[2] = (size_t)B * d->v_batch;
    }
    d->o_row = (long)H * dv + ac->o_gap, d->o_batch = Tq * d->o_row + ac->batch_gap;
    c.out_n = (size_t)B * d->o_batch;
    c.probs_n = (size_t)B * H * Tq * Tk;
    uint8_t *pad = NULL;
    if (ac->pad != PAD_NONE) {
        d->key_pad_stride = Tk + ac->pad_gap;
        pad = xcalloc((size_t)B * d->key_pad_stride, 1);
        for (int b = 0; b < B; b++) {
            int n_pad = b % 3; /* batch 0: none, 1: last key, 2: last two keys */
            if (ac->pad == PAD_TAIL_AND_ALL && b == 1) n_pad = Tk; /* every key masked */
            for (int j = 0; j < Tk; j++) pad[(size_t)b * d->key_pad_stride + j] = j >= Tk - n_pad;
            for (long j = Tk; j < d->key_pad_stride; j++) pad[(size_t)b * d->key_pad_stride + j] = 0xAA; /* ignored */
        }
        d->key_pad = pad;
    }

    /* Inputs (gaps hold values too: reading them would show in the gradient). */
    uint8_t *valid[3] = {0};
    for (int m = 0; m < c.nmem; m++) {
        c.mem[m] = rnd(c.mem_n[m], -1.5, 1.5);
        valid[m] = xcalloc(c.mem_n[m], 1);
    }
    mark(valid[c.q_mem], B, Tq, H * dk, d->q_row, d->q_batch, c.q_off);
    mark(valid[c.k_mem], B, Tk, H * dk, d->k_row, d->k_batch, c.k_off);
    mark(valid[c.v_mem], B, Tk, H * dv, d->v_row, d->v_batch, c.v_off);
    c.out_valid = xcalloc(c.out_n, 1);
    mark(c.out_valid, B, Tq, H * dv, d->o_row, d->o_batch, 0);
    c.R = rnd(c.out_n, -1, 1);
    for (size_t i = 0; i < c.out_n; i++)
        if (!c.out_valid[i]) c.R[i] = NAN; /* dout's gaps must not be read */
    c.out = nans(c.out_n);
    c.probs = nans(c.probs_n);
    c.scratch = ac->dropout > 0 ? nans(c.probs_n) : NULL;

    /* Forward: out's gaps untouched, no NaN, masked probabilities exactly 0. */
    attn_loss(&c);
    int gaps_ok = 1, out_finite = 1;
    for (size_t i = 0; i < c.out_n; i++) {
        if (c.out_valid[i]) out_finite &= isfinite(c.out[i]) != 0;
        else gaps_ok &= isnan(c.out[i]) != 0;
    }
    CHECK(out_finite, "%s: attention output has NaN/Inf", ac->name);
    CHECK(gaps_ok, "%s: attention forward wrote outside the output rows", ac->name);
    int masked_zero = 1, sums_ok = 1, dead_out_zero = 1, n_dead = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++) {
                const double *p = c.probs + (((size_t)b * H + h) * Tq + i) * Tk;
                double s = 0;
                int live = 0;
                for (int j = 0; j < Tk; j++) {
                    if (attn_masked(d, b, i, j)) masked_zero &= p[j] == 0.0;
                    else live = 1;
                    s += p[j];
                }
                if (live) sums_ok &= fabs(s - 1) <= 1e-14;
                else {
                    n_dead++;
                    sums_ok &= s == 0;
                    for (int e = 0; e < dv; e++)
                        dead_out_zero &= c.out[(size_t)b * d->o_batch + (size_t)i * d->o_row + h * dv + e] == 0.0;
                }
            }
    CHECK(masked_zero, "%s: a masked probability is not exactly 0", ac->name);
    CHECK(sums_ok, "%s: probability rows do not sum to 1 (or to 0 when every key is masked)", ac->name);
    CHECK(dead_out_zero, "%s: a query with every key masked has a non-zero output", ac->name);
    if (ac->pad == PAD_TAIL_AND_ALL) CHECK(n_dead == H * Tq, "%s: expected %d all-masked rows, found %d", ac->name, H * Tq, n_dead);

    /* Backward (=): gradient buffers NaN-filled; the valid elements are written, the gaps not. */
    double *g[3] = {0};
    for (int m = 0; m < c.nmem; m++) g[m] = nans(c.mem_n[m]);
    double *scratch_b = nans(c.probs_n);
    tfm_attention_backward_f64(g[c.q_mem] + c.q_off, g[c.k_mem] + c.k_off, g[c.v_mem] + c.v_off, scratch_b,
                               c.R, c.probs, c.mem[c.q_mem] + c.q_off, c.mem[c.k_mem] + c.k_off,
                               c.mem[c.v_mem] + c.v_off, d);
    int written = 1, untouched = 1;
    for (int m = 0; m < c.nmem; m++)
        for (size_t i = 0; i < c.mem_n[m]; i++) {
            if (valid[m][i]) written &= isfinite(g[m][i]) != 0;
            else {
                untouched &= isnan(g[m][i]) != 0;
                g[m][i] = 0; /* the gap's true gradient */
            }
        }
    CHECK(written, "%s: dq/dk/dv not all written (or NaN)", ac->name);
    CHECK(untouched, "%s: attention backward wrote into the gaps of the strided buffers", ac->name);
    if (ac->pad == PAD_TAIL_AND_ALL) {
        /* batch 1 attends to nothing: its dq, dk, dv are exactly 0 */
        int zero = 1;
        for (int t = 0; t < Tq; t++)
            for (int e = 0; e < H * dk; e++)
                zero &= g[c.q_mem][c.q_off + d->q_batch + (size_t)t * d->q_row + e] == 0.0;
        for (int t = 0; t < Tk; t++) {
            for (int e = 0; e < H * dk; e++)
                zero &= g[c.k_mem][c.k_off + d->k_batch + (size_t)t * d->k_row + e] == 0.0;
            for (int e = 0; e < H * dv; e++)
                zero &= g[c.v_mem][c.v_off + d->v_batch + (size_t)t * d->v_row + e] == 0.0;
        }
        CHECK(zero, "%s: gradients of the all-masked batch row are not exactly 0", ac->name);
    }
    static const char *mem_names[3][3] = {{"dqkv (packed)", "", ""},
                                          {"dq", "dkv (packed)", ""},
                                          {"dq", "dk", "dv"}};
    for (int m = 0; m < c.nmem; m++) {
        char what[48];
        snprintf(what, sizeof what, "%s %s", ac->name, mem_names[c.nmem - 1][m]);
        rep_fd(r, what, fd_err(attn_loss, &c, c.mem[m], c.mem_n[m], g[m]));
    }

    /* Float build on the same inputs: out, probs, gradients; exact zeros too. */
    attn_loss(&c);
    float *mf[3] = {0}, *gf[3] = {0};
    for (int m = 0; m < c.nmem; m++) {
        mf[m] = f32(c.mem[m], c.mem_n[m]);
        gf[m] = xcalloc(c.mem_n[m], sizeof(float));
    }
    float *outf = xcalloc(c.out_n, sizeof(float)), *pf = xcalloc(c.probs_n, sizeof(float));
    float *sf = xcalloc(c.probs_n, sizeof(float)), *Rf = f32(c.R, c.out_n);
    double *out0 = dup(c.out, c.out_n);
    for (size_t i = 0; i < c.out_n; i++)
        if (!c.out_valid[i]) out0[i] = 0, Rf[i] = 0;
    tfm_attention_forward(outf, pf, sf, mf[c.q_mem] + c.q_off, mf[c.k_mem] + c.k_off, mf[c.v_mem] + c.v_off, d);
    tfm_attention_backward(gf[c.q_mem] + c.q_off, gf[c.k_mem] + c.k_off, gf[c.v_mem] + c.v_off, sf, Rf, pf,
                           mf[c.q_mem] + c.q_off, mf[c.k_mem] + c.k_off, mf[c.v_mem] + c.v_off, d);
    int fzero = 1;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++)
                for (int j = 0; j < Tk; j++)
                    if (attn_masked(d, b, i, j)) fzero &= pf[(((size_t)b * H + h) * Tq + i) * Tk + j] == 0.0f;
    CHECK(fzero, "%s: float build: a masked probability is not exactly 0.0f", ac->name);
    if (ac->pad == PAD_TAIL_AND_ALL) {
        int z = 1;
        for (int t = 0; t < Tq; t++)
            for (int e = 0; e < H * dv; e++) z &= outf[d->o_batch + (size_t)t * d->o_row + e] == 0.0f;
        CHECK(z, "%s: float build: all-masked batch row has a non-zero output", ac->name);
    }
    char what[48];
    snprintf(what, sizeof what, "%s out", ac->name);
    rep_f32(r, what, outf, out0, c.out_n);
    snprintf(what, sizeof what, "%s probs", ac->name);
    rep_f32(r, what, pf, c.probs, c.probs_n);
    for (int m = 0; m < c.nmem; m++) {
        snprintf(what, sizeof what, "%s %s", ac->name, mem_names[c.nmem - 1][m]);
        rep_f32(r, what, gf[m], g[m], c.mem_n[m]);
    }

    printf("  %-16s fd %.2e [%s]  f32/f64 %.2e [%s]\n", ac->name, r->fd, r->fd_what, r->f32, r->f32_what);
    if (r->fd > op_report->fd || isnan(r->fd)) {
        op_report->fd = r->fd;
        snprintf(op_report->fd_what, sizeof op_report->fd_what, "%s", r->fd_what);
    }
    if (r->f32 > op_report->f32) {
        op_report->f32 = r->f32;
        snprintf(op_report->f32_what, sizeof op_report->f32_what, "%s", r->f32_what);
    }
    for (int m = 0; m < c.nmem; m++) free(c.mem[m]), free(valid[m]), free(g[m]), free(mf[m]), free(gf[m]);
    free(pad), free(c.out_valid), free(c.R), free(c.out), free(c.probs), free(c.scratch), free(scratch_b);
    free(outf), free(pf), free(sf), free(Rf), free(out0);
}

static void test_attention(void) {
    report r;
    rep_begin(&r, "attention");
    static const attn_case cases[] = {
        /* decoder self-attention on the packed qkv projection: causal, dk != dv, padding */
        {"self-causal", 2, 3, 5, 5, 5, 3, LAYOUT_SELF_PACKED, 1, 0, PAD_TAIL, 0.0f, 0, 0, 0},
        /* cross-attention: Tq != Tk, k/v packed, gaps between batches and out rows,
         * a padding row wider than Tk, batch 1 with every key masked */
        {"cross-allmask", 3, 2, 4, 7, 3, 5, LAYOUT_CROSS_KV_PACKED, 0, 0, PAD_TAIL_AND_ALL, 0.0f, 2, 1, 3},
        /* incremental decoding shape: 3 new queries after 4 cached keys */
        {"causal-offset", 2, 2, 3, 7, 4, 4, LAYOUT_SEPARATE, 1, 4, PAD_TAIL, 0.0f, 0, 0, 0},
        /* attention dropout with a fixed seed (the mask is fixed, so the op is smooth) */
        {"dropout", 3, 3, 5, 5, 3, 5, LAYOUT_SELF_PACKED, 0, 0, PAD_TAIL, 0.25f, 1, 0, 0},
        /* no masks at all */
        {"plain", 2, 1, 5, 3, 7, 3, LAYOUT_SEPARATE, 0, 0, PAD_NONE, 0.0f, 0, 0, 0},
        /* a decoder step: one query over the cache (the one-query forward), k/v packed,
         * gaps, batch 1 with every key masked */
        {"one-query", 3, 2, 1, 6, 5, 3, LAYOUT_CROSS_KV_PACKED, 0, 0, PAD_TAIL_AND_ALL, 0.0f, 1, 2, 1},
        /* more queries than the few-query loop takes: the general path */
        {"many-queries", 2, 2, 10, 11, 3, 4, LAYOUT_SEPARATE, 1, 1, PAD_TAIL, 0.0f, 0, 0, 0},
        /* one query with a causal offset hiding the last keys */
        {"one-query-causal", 2, 3, 1, 7, 3, 4, LAYOUT_SEPARATE, 1, 4, PAD_TAIL, 0.0f, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_attention_case(&r, &cases[i]);
    /* the line below is the worst over the cases above */
    rep_end(&r);
}

/* ----------------------------------------------------------- cross-entropy */

typedef struct xent_ctx {
    int N, V, pad;
    const int32_t *targets;
    double *logits, *lse, smoothing;
    long count;
} xent_ctx;

static double xent_loss(void *p) {
    xent_ctx *c = p;
    return tfm_xent_forward_f64(c->lse, c->logits, c->targets, c->N, c->V, c->pad, c->smoothing, &c->count);
}

static void test_xent(double smoothing) {
    report r;
    rep_begin(&r, smoothing > 0 ? "xent (ls=0.1)" : "xent (ls=0)");
    int B = 2, T = 7, N = B * T, V = 11, pad = 0;
    int32_t targets[14];
    long want_count = 0;
    for (int n = 0; n < N; n++) {
        targets[n] = (n % T >= T - 2) ? pad : (int32_t)(1 + tfm_rng_next(&g_rng) % (uint64_t)(V - 1));
        want_count += targets[n] != pad;
    }
    size_t n = (size_t)N * V;
    xent_ctx c = {N, V, pad, targets, rnd(n, -3, 3), xcalloc(N, sizeof(double)), smoothing, 0};
    /* The loss is already a scalar: L = loss, dL/dloss = 1 (scale = 1, a summed loss). */
    double loss = xent_loss(&c);
    CHECK(c.count == want_count, "xent count %ld, want %ld (pad rows must not count)", c.count, want_count);
    double *g = nans(n);
    tfm_xent_backward_f64(g, c.logits, c.lse, targets, N, V, pad, smoothing, 1.0);
    int pad_zero = 1;
    for (int i = 0; i < N; i++)
        if (targets[i] == pad)
            for (int v = 0; v < V; v++) pad_zero &= g[(size_t)i * V + v] == 0.0;
    CHECK(pad_zero, "xent gradient on pad rows is not exactly 0");
    rep_fd(&r, "dlogits", fd_err(xent_loss, &c, c.logits, n, g));

    /* scale multiplies (a mean loss uses 1/count); dlogits may alias logits. */
    xent_loss(&c);
    double *gs = xcalloc(n, sizeof(double)), *want = dup(g, n);
    tfm_xent_backward_f64(gs, c.logits, c.lse, targets, N, V, pad, smoothing, 1.0 / c.count);
    for (size_t i = 0; i < n; i++) want[i] /= c.count;
    CHECK(rel_err(gs, want, n) <= EXACT_TOL, "xent backward scale is not a multiplier");
    double *alias = dup(c.logits, n);
    tfm_xent_backward_f64(alias, alias, c.lse, targets, N, V, pad, smoothing, 1.0);
    CHECK(memcmp(alias, g, n * sizeof *g) == 0, "xent backward with dlogits == logits differs");

    /* The loss from log_softmax: sum over counted rows of -(1-eps) logp[y] - eps/V sum logp. */
    double *lp = xcalloc(n, sizeof(double));
    tfm_log_softmax_f64(lp, c.logits, N, V);
    double direct = 0;
    for (int i = 0; i < N; i++) {
        if (targets[i] == pad) continue;
        double s = 0;
        for (int v = 0; v < V; v++) s += lp[(size_t)i * V + v];
        direct += -(1 - smoothing) * lp[(size_t)i * V + targets[i]] - smoothing / V * s;
    }
    CHECK(fabs(loss - direct) <= EXACT_TOL * fabs(direct), "xent loss %.17g != log_softmax formula %.17g", loss, direct);

    float *lf = f32(c.logits, n), *lsef = xcalloc(N, sizeof(float)), *gf = xcalloc(n, sizeof(float));
    long countf = 0;
    double lossf = tfm_xent_forward(lsef, lf, targets, N, V, pad, (float)smoothing, &countf);
    tfm_xent_backward(gf, lf, lsef, targets, N, V, pad, (float)smoothing, 1.0f);
    CHECK(countf == c.count, "float xent count differs");
    float lossf32 = (float)lossf;
    rep_f32(&r, "loss", &lossf32, &loss, 1);
    rep_f32(&r, "lse", lsef, c.lse, N);
    rep_f32(&r, "dlogits", gf, g, n);
    rep_end(&r);
    free(c.logits), free(c.lse), free(g), free(gs), free(want), free(alias), free(lp), free(lf), free(lsef), free(gf);
}

static void test_log_softmax(void) {
    report r;
    rep_begin(&r, "log_softmax");
    int N = 2 * 7, V = 19;
    size_t n = (size_t)N * V;
    double *x = rnd(n, -4, 4), *y = xcalloc(n, sizeof(double));
    for (int v = 0; v < V; v++) x[3 * V + v] += 80; /* a large row: needs the max shift */
    tfm_log_softmax_f64(y, x, N, V);
    int norm = 1;
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int v = 0; v < V; v++) s += exp(y[(size_t)i * V + v]);
        norm &= fabs(s - 1) <= 1e-14;
    }
    CHECK(norm, "log_softmax rows do not exponentiate to sum 1");
    double *inplace = dup(x, n);
    tfm_log_softmax_f64(inplace, inplace, N, V);
    CHECK(memcmp(inplace, y, n * sizeof *y) == 0, "log_softmax in place differs");
    float *xf = f32(x, n), *yf = xcalloc(n, sizeof(float));
    tfm_log_softmax(yf, xf, N, V);
    rep_f32(&r, "out", yf, y, n);
    rep_end(&r);
    free(x), free(y), free(inplace), free(xf), free(yf);
}

int main(void) {
    tfm_rng_init(&g_rng, 20240601, 0);
    printf("finite differences: h = %.0e, tol %.0e (max|num-ana| / max|ana|); float vs double tol %.0e\n",
           FD_H, FD_TOL, F32_TOL);
    test_gemm();
    test_linear();
    test_embedding();
    test_positions();
    test_rope();
    test_layernorm();
    test_activation(TFM_OP_RELU);
    test_activation(TFM_OP_GELU);
    test_dropout();
    test_attention();
    test_xent(0.0);
    test_xent((double)0.1f);
    test_log_softmax();
    return tfm_test_finish();
}
