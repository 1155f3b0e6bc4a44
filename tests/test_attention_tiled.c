/*
 * test_attention_tiled.c: the tiled (memory-efficient) attention ops
 * (attention_tiled.c) against the reference ops (attention.c), which are the
 * specification.
 *
 * Every case runs the reference and the tiled forward + backward on the same
 * inputs, which are float-representable so that both builds see the same
 * values, with dout = R random. Errors are max|a - b| / max|b| over a tensor's
 * elements (tfm_test_close), the gaps of strided buffers left out.
 *   - double: tiled _f64 vs reference _f64, out, dq, dk, dv within 1e-12: the
 *     same products in another grouping (rows of a block, exp(s - lse) instead
 *     of exp(s - max) / sum), so only double rounding differs (seen: ~1e-15).
 *     lse vs log-sum-exp of the scores recomputed here, within 1e-12 * max(1, |lse|).
 *   - float: tiled vs reference float ops: out, dq, dk, dv within 1e-5
 *     (float rounding, ~6e-8, grown by sums over up to 300 keys and the
 *     cancellation in dS = P * (dP - delta); seen: up to 7e-7); lse within
 *     1e-5 * max(1, |lse|) of the double one (seen: 2e-7).
 *   - exactness: a query that sees no key has lse = -INFINITY, an output of
 *     exactly 0 and a dq of exactly 0; a key no query sees gets dk = dv = 0
 *     exactly; no NaN anywhere; the gaps of strided buffers (NaN-filled) are
 *     neither read (outputs stay finite) nor written.
 *   - scratch: with room for one slot only (one thread), results are
 *     bit-identical to the full scratch's (OpenBLAS kept to one thread per
 *     product in both, see run_one_thread); with less than a slot (a
 *     caller's bug the ops tolerate with smaller blocks) within the float
 *     tolerance.
 * Then central finite differences of the tiled backward in double on two
 * small cases (causal + padding + dropout; cross with q_offset and an
 * all-masked row): every element of q, k, v, relative error <= 1e-6 with
 * h = 1e-6, as test_grad_ops.c. And the scratch size: linear in Tk,
 * independent of Tq (asserted exactly, not timed); and the CPU backend's
 * table holds these ops.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "core/status.h"
#include "ops/ops.h"
#include "test_util.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define F64_TOL 1e-12
#define F32_OUT_TOL 1e-5
#define F32_GRAD_TOL 1e-5
#define F32_LSE_TOL 1e-5
#define FD_H 1e-6
#define FD_TOL 1e-6

static tfm_rng g_rng;

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static double *nans(size_t n) {
    double *x = xcalloc(n, sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

static float *nansf(size_t n) {
    float *x = xcalloc(n, sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

/* ------------------------------------------------------------------ cases */

/* Where q, k, v live (as the model lays them out): self-attention reads all
 * three from one packed buffer [B, T, 2*H*dk + H*dv] (q at 0, k at H*dk, v at
 * 2*H*dk); cross-attention reads q from its own buffer and k, v from a packed
 * memory buffer; or three separate buffers. */
typedef enum { SEPARATE, SELF_PACKED, CROSS_KV_PACKED } layout;
/* PAD_TAIL: batch b masks its last b % 3 keys. PAD_MIXED: also keys inside
 * the row (and key 0 for even b, as left padding). PAD_ALL: PAD_TAIL, and
 * batch 1 masks every key. */
typedef enum { PAD_NONE, PAD_TAIL, PAD_MIXED, PAD_ALL } pad_kind;

typedef struct attn_case {
    const char *name;
    int B, H, Tq, Tk, dk, dv;
    layout lay;
    int causal, q_offset;
    pad_kind pad;
    float dropout;
    long gap; /* extra elements after each batch of every buffer and after each row of out */
} attn_case;

typedef struct ctx {
    tfm_attn_dims d;
    int nmem, q_mem, k_mem, v_mem;
    size_t q_off, k_off, v_off, mem_n[3], out_n, lse_n, probs_n;
    double *mem[3], *R;          /* inputs (NaN in the gaps), dout (NaN in the gaps) */
    uint8_t *valid[3], *out_valid, *pad;
} ctx;

/* The result of one forward + backward, widened to double; full buffers (gaps included). */
typedef struct result {
    double *out, *lse, *g[3];
} result;

static void mark(uint8_t *m, int B, int T, int width, long row, long batch, size_t off) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < width; i++) m[off + (size_t)b * batch + (size_t)t * row + i] = 1;
}

static int masked(const tfm_attn_dims *d, int b, int i, int j) {
    if (d->causal && j > i + d->q_offset) return 1;
    return d->key_pad && d->key_pad[(size_t)b * d->key_pad_stride + j];
}

static void ctx_init(ctx *c, const attn_case *ac) {
    memset(c, 0, sizeof *c);
    tfm_attn_dims *d = &c->d;
    int B = ac->B, H = ac->H, Tq = ac->Tq, Tk = ac->Tk, dk = ac->dk, dv = ac->dv;
    long gap = ac->gap;
    d->B = B, d->H = H, d->Tq = Tq, d->Tk = Tk, d->dk = dk, d->dv = dv;
    d->causal = ac->causal, d->q_offset = ac->q_offset;
    d->scale = 1.0 / sqrt((double)dk);
    d->dropout = ac->dropout, d->seed = 2024, d->stream = 5;
    if (ac->lay == SELF_PACKED) {
        TFM_ASSERT(Tq == Tk);
        long row = 2L * H * dk + (long)H * dv, batch = Tq * row + gap;
        c->nmem = 1, c->mem_n[0] = (size_t)B * batch;
        c->q_mem = c->k_mem = c->v_mem = 0;
        c->q_off = 0, c->k_off = (size_t)H * dk, c->v_off = 2 * (size_t)H * dk;
        d->q_row = d->k_row = d->v_row = row, d->q_batch = d->k_batch = d->v_batch = batch;
    } else if (ac->lay == CROSS_KV_PACKED) {
        long qrow = (long)H * dk, kvrow = (long)H * dk + (long)H * dv;
        c->nmem = 2, c->q_mem = 0, c->k_mem = c->v_mem = 1;
        c->q_off = 0, c->k_off = 0, c->v_off = (size_t)H * dk;
        d->q_row = qrow, d->q_batch = Tq * qrow + gap;
        d->k_row = d->v_row = kvrow, d->k_batch = d->v_batch = Tk * kvrow + gap;
        c->mem_n[0] = (size_t)B * d->q_batch, c->mem_n[1] = (size_t)B * d->k_batch;
    } else {
        c->nmem = 3, c->q_mem = 0, c->k_mem = 1, c->v_mem = 2;
        d->q_row = (long)H * dk, d->k_row = (long)H * dk, d->v_row = (long)H * dv;
        d->q_batch = Tq * d->q_row + gap, d->k_batch = Tk * d->k_row + gap, d->v_batch = Tk * d->v_row + gap;
        c->mem_n[0] = (size_t)B * d->q_batch, c->mem_n[1] = (size_t)B * d->k_batch;
        c->mem_n[2] = (size_t)B * d->v_batch;
    }
    d->o_row = (long)H * dv + gap, d->o_batch = Tq * d->o_row + gap;
    c->out_n = (size_t)B * d->o_batch;
    c->lse_n = (size_t)B * H * Tq;
    c->probs_n = (size_t)B * H * Tq * Tk;

    if (ac->pad != PAD_NONE) {
        d->key_pad_stride = Tk + gap;
        c->pad = xcalloc((size_t)B * d->key_pad_stride, 1);
        for (int b = 0; b < B; b++) {
            uint8_t *m = c->pad + (size_t)b * d->key_pad_stride;
            int n_tail = b % 3;
            if (ac->pad == PAD_ALL && b == 1) n_tail = Tk;
            for (int j = 0; j < Tk; j++) {
                m[j] = j >= Tk - n_tail;
                if (ac->pad == PAD_MIXED) m[j] |= (j * 7 + b) % 5 == 0 || (b % 2 == 0 && j == 0);
            }
            for (long j = Tk; j < d->key_pad_stride; j++) m[j] = 0xAA; /* beyond Tk: never read */
        }
        d->key_pad = c->pad;
    }

    for (int m = 0; m < c->nmem; m++) c->valid[m] = xcalloc(c->mem_n[m], 1);
    mark(c->valid[c->q_mem], B, Tq, H * dk, d->q_row, d->q_batch, c->q_off);
    mark(c->valid[c->k_mem], B, Tk, H * dk, d->k_row, d->k_batch, c->k_off);
    mark(c->valid[c->v_mem], B, Tk, H * dv, d->v_row, d->v_batch, c->v_off);
    c->out_valid = xcalloc(c->out_n, 1);
    mark(c->out_valid, B, Tq, H * dv, d->o_row, d->o_batch, 0);
    for (int m = 0; m < c->nmem; m++) {
        c->mem[m] = nans(c->mem_n[m]);
        for (size_t i = 0; i < c->mem_n[m]; i++)
            if (c->valid[m][i]) c->mem[m][i] = (float)(-1.5 + 3.0 * tfm_rng_next_uniform(&g_rng));
    }
    c->R = nans(c->out_n);
    for (size_t i = 0; i < c->out_n; i++)
        if (c->out_valid[i]) c->R[i] = (float)(-1.0 + 2.0 * tfm_rng_next_uniform(&g_rng));
}

static void ctx_free(ctx *c) {
    for (int m = 0; m < c->nmem; m++) free(c->mem[m]), free(c->valid[m]);
    free(c->R), free(c->out_valid), free(c->pad);
}

static void result_free(result *r) {
    free(r->out), free(r->lse);
    for (int m = 0; m < 3; m++) free(r->g[m]);
    memset(r, 0, sizeof *r);
}

/* scratch_len for the tiled ops: 0 means tfm_attention_tiled_scratch(d). */
static void run_f64(const ctx *c, int tiled, size_t scratch_len, result *res) {
    const tfm_attn_dims *d = &c->d;
    memset(res, 0, sizeof *res);
    res->out = nans(c->out_n);
    for (int m = 0; m < c->nmem; m++) res->g[m] = nans(c->mem_n[m]);
    const double *q = c->mem[c->q_mem] + c->q_off, *k = c->mem[c->k_mem] + c->k_off;
    const double *v = c->mem[c->v_mem] + c->v_off;
    double *dq = res->g[c->q_mem] + c->q_off, *dk = res->g[c->k_mem] + c->k_off;
    double *dv = res->g[c->v_mem] + c->v_off;
    if (tiled) {
        if (!scratch_len) scratch_len = tfm_attention_tiled_scratch(d);
        double *scratch = nans(scratch_len);
        res->lse = nans(c->lse_n);
        tfm_attention_tiled_forward_f64(res->out, res->lse, scratch, scratch_len, q, k, v, d);
        tfm_attention_tiled_backward_f64(dq, dk, dv, scratch, scratch_len, c->R, res->out, res->lse, q, k, v, d);
        free(scratch);
    } else {
        double *probs = nans(c->probs_n), *scratch = nans(c->probs_n);
        tfm_attention_forward_f64(res->out, probs, scratch, q, k, v, d);
        tfm_attention_backward_f64(dq, dk, dv, scratch, c->R, probs, q, k, v, d);
        free(probs), free(scratch);
    }
}

static double *widen(const float *x, size_t n) {
    double *y = xcalloc(n, sizeof *y);
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

static void run_f32(const ctx *c, int tiled, size_t scratch_len, result *res) {
    const tfm_attn_dims *d = &c->d;
    float *mem[3] = {0}, *g[3] = {0}, *out = nansf(c->out_n), *R = xcalloc(c->out_n, sizeof *R);
    for (size_t i = 0; i < c->out_n; i++) R[i] = (float)c->R[i];
    for (int m = 0; m < c->nmem; m++) {
        mem[m] = xcalloc(c->mem_n[m], sizeof(float));
        for (size_t i = 0; i < c->mem_n[m]; i++) mem[m][i] = (float)c->mem[m][i];
        g[m] = nansf(c->mem_n[m]);
    }
    const float *q = mem[c->q_mem] + c->q_off, *k = mem[c->k_mem] + c->k_off, *v = mem[c->v_mem] + c->v_off;
    float *dq = g[c->q_mem] + c->q_off, *dk = g[c->k_mem] + c->k_off, *dv = g[c->v_mem] + c->v_off;
    memset(res, 0, sizeof *res);
    if (tiled) {
        if (!scratch_len) scratch_len = tfm_attention_tiled_scratch(d);
        float *scratch = nansf(scratch_len), *lse = nansf(c->lse_n);
        tfm_attention_tiled_forward(out, lse, scratch, scratch_len, q, k, v, d);
        tfm_attention_tiled_backward(dq, dk, dv, scratch, scratch_len, R, out, lse, q, k, v, d);
        res->lse = widen(lse, c->lse_n);
        free(scratch), free(lse);
    } else {
        float *probs = nansf(c->probs_n), *scratch = nansf(c->probs_n);
        tfm_attention_forward(out, probs, scratch, q, k, v, d);
        tfm_attention_backward(dq, dk, dv, scratch, R, probs, q, k, v, d);
        free(probs), free(scratch);
    }
    res->out = widen(out, c->out_n);
    for (int m = 0; m < c->nmem; m++) res->g[m] = widen(g[m], c->mem_n[m]);
    for (int m = 0; m < c->nmem; m++) free(mem[m]), free(g[m]);
    free(out), free(R);
}

/* The tiled ops with scratch_len reals of scratch, called from inside an
 * enclosing parallel region in which one thread works. With one slot the
 * ops run on one thread, and OpenBLAS, left alone, would then thread a large
 * product itself, whose partitions can round differently (seen in double
 * with 3 threads); inside a parallel region it runs each product on one
 * thread, as it does inside the ops' own region. So this compares the ops'
 * decomposition only, which must not change a bit. */
static void run_one_thread(const ctx *c, int f64, size_t scratch_len, result *res) {
#pragma omp parallel num_threads(2)
#pragma omp single
    {
        if (f64) run_f64(c, 1, scratch_len, res);
        else run_f32(c, 1, scratch_len, res);
    }
}

/* lse[B, H, Tq] from the (double) inputs: -INFINITY where no key is visible. */
static double *exact_lse(const ctx *c) {
    const tfm_attn_dims *d = &c->d;
    double *lse = xcalloc(c->lse_n, sizeof *lse), *s = xcalloc((size_t)d->Tk, sizeof *s);
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->H; h++)
            for (int i = 0; i < d->Tq; i++) {
                const double *q = c->mem[c->q_mem] + c->q_off + b * d->q_batch + i * d->q_row + h * d->dk;
                double mx = -INFINITY;
                for (int j = 0; j < d->Tk; j++) {
                    const double *k = c->mem[c->k_mem] + c->k_off + b * d->k_batch + j * d->k_row + h * d->dk;
                    double dot = 0;
                    for (int e = 0; e < d->dk; e++) dot += q[e] * k[e];
                    s[j] = dot * d->scale;
                    if (!masked(d, b, i, j)) mx = fmax(mx, s[j]);
                }
                double sum = 0;
                for (int j = 0; j < d->Tk; j++)
                    if (!masked(d, b, i, j)) sum += exp(s[j] - mx);
                lse[((size_t)b * d->H + h) * d->Tq + i] = sum > 0 ? mx + log(sum) : -INFINITY;
            }
    free(s);
    return lse;
}

/* The valid elements of x, in order (gaps dropped). */
static double *gather(const double *x, const uint8_t *valid, size_t n, size_t *count) {
    double *y = xcalloc(n, sizeof *y);
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (valid[i]) y[c++] = x[i];
    *count = c;
    return y;
}

/* tfm_test_close over the valid elements, and a CHECK that every gap still holds its NaN. */
static void close_valid(const char *name, const double *a, const double *b, const uint8_t *valid, size_t n,
                        double tol) {
    size_t na, nb;
    double *ga = gather(a, valid, n, &na), *gb = gather(b, valid, n, &nb);
    tfm_test_close_f64(name, ga, gb, na, tol);
    int gaps = 1;
    for (size_t i = 0; i < n; i++)
        if (!valid[i]) gaps &= isnan(a[i]) != 0;
    CHECK(gaps, "%s: written outside its rows (a gap lost its NaN)", name);
    free(ga), free(gb);
}

/* lse against the exact one: -INFINITY exactly where it must be, elsewhere within tol * max(1, |lse|). */
static void check_lse(const char *name, const double *lse, const double *want, size_t n, double tol) {
    double worst = 0;
    int inf_ok = 1;
    for (size_t i = 0; i < n; i++) {
        if (want[i] == -INFINITY || lse[i] == -INFINITY || isnan(lse[i])) {
            inf_ok &= lse[i] == want[i];
            continue;
        }
        worst = fmax(worst, fabs(lse[i] - want[i]) / fmax(1, fabs(want[i])));
    }
    printf("%-48s worst err %.3e (tol %.0e, n=%zu)\n", name, worst, tol, n);
    CHECK(worst <= tol, "%s: lse off by %.3e", name, worst);
    CHECK(inf_ok, "%s: lse is not -INFINITY exactly where no key is visible", name);
}

/* Queries that see no key: exactly zero output and dq. Keys that no query
 * sees: exactly zero dk and dv. No NaN in any valid element. */
static void check_exact(const char *name, const ctx *c, const result *r, int *n_dead_rows) {
    const tfm_attn_dims *d = &c->d;
    int ok_out = 1, ok_dq = 1, ok_dkv = 1, finite = 1, dead = 0;
    for (int b = 0; b < d->B; b++) {
        for (int i = 0; i < d->Tq; i++) {
            int any = 0;
            for (int j = 0; j < d->Tk; j++) any |= !masked(d, b, i, j);
            if (any) continue;
            dead++;
            for (int h = 0; h < d->H; h++) {
                for (int e = 0; e < d->dv; e++) ok_out &= r->out[b * d->o_batch + i * d->o_row + h * d->dv + e] == 0.0;
                for (int e = 0; e < d->dk; e++)
                    ok_dq &= r->g[c->q_mem][c->q_off + b * d->q_batch + i * d->q_row + h * d->dk + e] == 0.0;
            }
        }
        for (int j = 0; j < d->Tk; j++) {
            int seen = 0;
            for (int i = 0; i < d->Tq; i++) seen |= !masked(d, b, i, j);
            if (seen) continue;
            for (int e = 0; e < d->H * d->dk; e++)
                ok_dkv &= r->g[c->k_mem][c->k_off + b * d->k_batch + j * d->k_row + e] == 0.0;
            for (int e = 0; e < d->H * d->dv; e++)
                ok_dkv &= r->g[c->v_mem][c->v_off + b * d->v_batch + j * d->v_row + e] == 0.0;
        }
    }
    for (size_t i = 0; i < c->out_n; i++)
        if (c->out_valid[i]) finite &= isfinite(r->out[i]) != 0;
    for (int m = 0; m < c->nmem; m++)
        for (size_t i = 0; i < c->mem_n[m]; i++)
            if (c->valid[m][i]) finite &= isfinite(r->g[m][i]) != 0;
    CHECK(finite, "%s: NaN or Inf in out or a gradient", name);
    CHECK(ok_out, "%s: a query with no visible key has a non-zero output", name);
    CHECK(ok_dq, "%s: a query with no visible key has a non-zero dq", name);
    CHECK(ok_dkv, "%s: a key no query sees has a non-zero dk or dv", name);
    *n_dead_rows = dead;
}

static int same_bits(const ctx *c, const result *a, const result *b) {
    int same = memcmp(a->out, b->out, c->out_n * sizeof(double)) == 0;
    same &= memcmp(a->lse, b->lse, c->lse_n * sizeof(double)) == 0;
    for (int m = 0; m < c->nmem; m++) same &= memcmp(a->g[m], b->g[m], c->mem_n[m] * sizeof(double)) == 0;
    return same;
}

static const char *grad_name(const ctx *c, int m) {
    static const char *names[3][3] = {{"dqkv", "", ""}, {"dq", "dkv", ""}, {"dq", "dk", "dv"}};
    return names[c->nmem - 1][m];
}

/* out and every gradient of t against ref; label names the case and the precision. */
static void compare(const char *label, const ctx *c, const result *t, const result *ref, double out_tol,
                    double grad_tol) {
    char what[128];
    snprintf(what, sizeof what, "%s out", label);
    close_valid(what, t->out, ref->out, c->out_valid, c->out_n, out_tol);
    for (int m = 0; m < c->nmem; m++) {
        snprintf(what, sizeof what, "%s %s", label, grad_name(c, m));
        close_valid(what, t->g[m], ref->g[m], c->valid[m], c->mem_n[m], grad_tol);
    }
}

static void test_case(const attn_case *ac) {
    ctx c;
    ctx_init(&c, ac);
    const tfm_attn_dims *d = &c.d;
    char what[128];
    double *lse = exact_lse(&c);
    size_t one_slot = tfm_attention_tiled_scratch(d);
#ifdef _OPENMP
    one_slot /= (size_t)omp_get_max_threads();
#endif

    /* double */
    result ref, t, t1;
    run_f64(&c, 0, 0, &ref);
    run_f64(&c, 1, 0, &t);
    snprintf(what, sizeof what, "%s f64", ac->name);
    compare(what, &c, &t, &ref, F64_TOL, F64_TOL);
    snprintf(what, sizeof what, "%s f64 lse", ac->name);
    check_lse(what, t.lse, lse, c.lse_n, F64_TOL);
    int dead;
    snprintf(what, sizeof what, "%s f64", ac->name);
    check_exact(what, &c, &t, &dead);
    run_one_thread(&c, 1, one_slot, &t1);
    CHECK(same_bits(&c, &t, &t1), "%s f64: one slot of scratch changes the results", ac->name);
    result_free(&ref), result_free(&t), result_free(&t1);

    /* float */
    run_f32(&c, 0, 0, &ref);
    run_f32(&c, 1, 0, &t);
    snprintf(what, sizeof what, "%s f32", ac->name);
    compare(what, &c, &t, &ref, F32_OUT_TOL, F32_GRAD_TOL);
    snprintf(what, sizeof what, "%s f32 lse", ac->name);
    check_lse(what, t.lse, lse, c.lse_n, F32_LSE_TOL);
    snprintf(what, sizeof what, "%s f32", ac->name);
    int dead32;
    check_exact(what, &c, &t, &dead32);
    run_one_thread(&c, 0, one_slot, &t1);
    CHECK(same_bits(&c, &t, &t1), "%s f32: one slot of scratch changes the results", ac->name);
    result_free(&t1);
    /* Less than a slot: room for the two [5, Tk] tiles of 5-row blocks
     * (attention_tiled.c). Still the right answer, on one thread. */
    run_f32(&c, 1, 2 * 5 * (size_t)d->Tk, &t1);
    snprintf(what, sizeof what, "%s f32 5-row blocks", ac->name);
    compare(what, &c, &t1, &ref, F32_OUT_TOL, F32_GRAD_TOL);
    printf("  %s: %d queries (per head) see no key\n", ac->name, dead);
    if (ac->pad == PAD_ALL) CHECK(dead >= d->Tq, "%s: expected a batch row with every key masked", ac->name);
    result_free(&ref), result_free(&t), result_free(&t1);
    free(lse);
    ctx_free(&c);
}

/* -------------------------------------------------- finite differences */

typedef struct fd_ctx {
    ctx *c;
    double *out, *lse, *scratch;
    size_t scratch_len;
} fd_ctx;

static double fd_loss(fd_ctx *f) {
    ctx *c = f->c;
    tfm_attention_tiled_forward_f64(f->out, f->lse, f->scratch, f->scratch_len, c->mem[c->q_mem] + c->q_off,
                                    c->mem[c->k_mem] + c->k_off, c->mem[c->v_mem] + c->v_off, &c->d);
    double s = 0;
    for (size_t i = 0; i < c->out_n; i++)
        if (c->out_valid[i]) s += f->out[i] * c->R[i];
    return s;
}

static void test_fd(const attn_case *ac) {
    ctx c;
    ctx_init(&c, ac);
    fd_ctx f = {.c = &c, .out = nans(c.out_n), .lse = nans(c.lse_n)};
    f.scratch_len = tfm_attention_tiled_scratch(&c.d);
    f.scratch = nans(f.scratch_len);
    result r;
    run_f64(&c, 1, 0, &r);
    for (int m = 0; m < c.nmem; m++) {
        double md = 0, ma = 0;
        for (size_t i = 0; i < c.mem_n[m]; i++) {
            if (!c.valid[m][i]) continue;
            double xi = c.mem[m][i], xp = xi + FD_H, xm = xi - FD_H;
            c.mem[m][i] = xp;
            double lp = fd_loss(&f);
            c.mem[m][i] = xm;
            double lm = fd_loss(&f);
            c.mem[m][i] = xi;
            double num = (lp - lm) / (xp - xm), ana = r.g[m][i];
            md = isfinite(num) && isfinite(ana) ? fmax(md, fabs(num - ana)) : INFINITY;
            ma = fmax(ma, fabs(ana));
        }
        double err = md / fmax(ma, 1e-8);
        char what[96];
        snprintf(what, sizeof what, "%s %s", ac->name, grad_name(&c, m));
        printf("%-48s fd rel err %.3e (tol %.0e)\n", what, err, FD_TOL);
        CHECK(err <= FD_TOL, "%s %s: finite differences disagree (%.3e)", ac->name, grad_name(&c, m), err);
    }
    result_free(&r);
    free(f.out), free(f.lse), free(f.scratch);
    ctx_free(&c);
}

/* ------------------------------------------------------- scratch size */

static void test_scratch_size(void) {
    tfm_attn_dims d = {.B = 4, .H = 8, .Tq = 100, .Tk = 1, .dk = 64, .dv = 64};
    size_t per_key = tfm_attention_tiled_scratch(&d);
    int linear = per_key > 0, q_free = 1;
    int tks[] = {1, 7, 24, 300, 1024, 4096};
    int tqs[] = {1, 24, 64, 65, 1000, 4096};
    for (size_t a = 0; a < sizeof tks / sizeof tks[0]; a++) {
        d.Tk = tks[a];
        d.Tq = 100;
        size_t s = tfm_attention_tiled_scratch(&d);
        linear &= s == per_key * (size_t)tks[a];
        for (size_t b = 0; b < sizeof tqs / sizeof tqs[0]; b++) {
            d.Tq = tqs[b];
            q_free &= tfm_attention_tiled_scratch(&d) == s;
        }
    }
    d.Tq = d.Tk = 4096;
    printf("scratch: %zu floats per key (all threads); at B=4 H=8 T=4096: %.1f MiB vs probs %.0f MiB\n", per_key,
           tfm_attention_tiled_scratch(&d) * 4.0 / (1 << 20), (double)d.B * d.H * d.Tq * d.Tk * 4.0 / (1 << 20));
    CHECK(linear, "tiled scratch is not linear in Tk");
    CHECK(q_free, "tiled scratch depends on Tq");
}

/* The CPU backend's table holds the tiled ops, and prefers them from 16 keys and queries up. */
static void test_backend(void) {
    const tfm_backend *be = tfm_backend_cpu();
    CHECK(be->attention_tiled_forward != NULL, "cpu backend: tiled forward slot (a wrapper keeping nothing)");
    CHECK(be->attention_tiled_backward == tfm_attention_tiled_backward, "cpu backend: tiled backward slot");
    CHECK(be->attention_tiled_scratch == tfm_attention_tiled_scratch, "cpu backend: tiled scratch slot");
    tfm_attn_dims d = {.B = 64, .H = 4, .Tq = 24, .Tk = 24, .dk = 64, .dv = 64};
    CHECK(be->attention_tiled_preferred(&d), "cpu backend: tiled not preferred at the training shape");
    d.Tq = 1;
    CHECK(!be->attention_tiled_preferred(&d), "cpu backend: tiled preferred for one query");
}

int main(void) {
    tfm_rng_init(&g_rng, 77, 3);
    static const attn_case cases[] = {
        /* name        B  H  Tq   Tk  dk  dv  layout           causal off  pad        drop  gap */
        {"plain",       2, 2, 16,  16, 16, 16, SEPARATE,        0,     0,  PAD_NONE,  0.0f, 0},
        {"causal",      2, 2, 20,  20,  8,  8, SELF_PACKED,     1,     0,  PAD_NONE,  0.0f, 0},
        {"causal-off",  2, 2,  5,  12,  8,  8, SEPARATE,        1,     7,  PAD_TAIL,  0.0f, 0},
        /* q_offset < 0: the first queries see no key, inside a block with live rows */
        {"causal-neg",  2, 2,  9,   9,  4,  6, SEPARATE,        1,    -3,  PAD_NONE,  0.0f, 2},
        {"cross-pad",   3, 2,  7,  11,  8,  5, CROSS_KV_PACKED, 0,     0,  PAD_MIXED, 0.0f, 3},
        {"all-masked",  3, 2,  4,   7,  3,  5, CROSS_KV_PACKED, 0,     0,  PAD_ALL,   0.0f, 1},
        {"dropout",     2, 3, 17,  17,  8,  8, SELF_PACKED,     1,     0,  PAD_TAIL,  0.1f, 0},
        {"odd",         2, 3, 37,  53, 24, 40, SEPARATE,        0,     0,  PAD_MIXED, 0.1f, 1},
        /* the model's decoder self-attention: one packed qkv buffer */
        {"packed",      2, 4, 24,  24, 16, 16, SELF_PACKED,     1,     0,  PAD_TAIL,  0.1f, 0},
        /* longer than a block (128 rows): three blocks, causal limits per block */
        {"long-causal", 1, 2, 300, 300, 32, 32, SELF_PACKED,    1,     0,  PAD_TAIL,  0.1f, 0},
        {"long-cross",  2, 1, 300, 130, 16, 24, SEPARATE,       0,     0,  PAD_ALL,   0.0f, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_case(&cases[i]);

    static const attn_case fd_cases[] = {
        {"fd causal+pad+dropout", 2, 2, 6, 6, 4, 3, SELF_PACKED,   1, 0,  PAD_TAIL, 0.2f, 0},
        {"fd cross q_offset",     3, 2, 4, 7, 3, 5, SEPARATE,      1, 2,  PAD_ALL,  0.3f, 1},
    };
    for (size_t i = 0; i < sizeof fd_cases / sizeof fd_cases[0]; i++) test_fd(&fd_cases[i]);

    test_scratch_size();
    test_backend();
    return tfm_test_finish();
}
