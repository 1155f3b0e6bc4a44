/*
 * test_cuda_ops.c: the GPU op harness: every entry of the CUDA backend's
 * table against the CPU reference backend (tfm_backend_cpu), on random
 * inputs of odd sizes (not multiples of 4 or 32).
 *
 * Method. Each case builds its inputs on the host, uploads them, runs the
 * CUDA op, downloads, and runs the CPU op on the same host inputs. Outputs
 * that an op writes (=) are poisoned with NaN before the CUDA run, on both
 * sides, so an element the GPU leaves unwritten shows up as NaN; outputs that
 * accumulate (+=) start from the same random values on both sides; gaps of
 * strided buffers hold a finite sentinel that neither side may change.
 *
 * Tolerance (fp32): worst relative error max|gpu - cpu| / max|cpu| <= 1e-4
 * per tensor (tfm_test_close; one line per op and tensor). The GPU sums in
 * other orders than the CPU (blocked GEMMs, tree reductions, atomics in the
 * embedding backward), so most tensors differ by rounding only, ~1e-7.
 * Exact where the arithmetic is the same: dropout masks and dropped values
 * (zero patterns and bits compared element by element), the Adam update (when
 * the CPU build has no FMA), memory ops, token counts.
 *
 * Skips (exit 77) when the build has no CUDA backend or the machine no GPU.
 * TFM_CUDA_OPS_TIME=1 also prints the time of a few ops at a training step's
 * size (informational; see time_ops).
 * It does not check gradients by finite differences (test_grad_ops.c does,
 * for the CPU ops this compares with).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "test_util.h"

#define TOL 1e-4
#define GAP 7.25f /* sentinel in the gaps of strided buffers */

static const tfm_backend *G; /* CUDA */
static const tfm_backend *C; /* CPU reference */
static tfm_rng g_rng;

/* ---------------------------------------------------------------- helpers */

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static float urand(float lo, float hi) { return lo + (hi - lo) * tfm_rng_next_uniform(&g_rng); }

static float *hrand(size_t n, float lo, float hi) {
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}

static float *hfill(size_t n, float v) {
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = v;
    return x;
}

static float *hnan(size_t n) { return hfill(n, NAN); }

static float *hdup(const float *x, size_t n) {
    float *y = xmalloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* A device copy of host memory. */
static void *dput(const void *host, size_t bytes) {
    void *d = G->alloc(bytes);
    if (!d) {
        fprintf(stderr, "FAIL: cuda alloc of %zu bytes\n", bytes);
        exit(1);
    }
    G->upload(d, host, bytes);
    return d;
}
static float *dputf(const float *host, size_t n) { return dput(host, n * sizeof(float)); }

static float *dget(const float *d, size_t n) {
    float *h = xmalloc(n * sizeof *h);
    G->download(h, d, n * sizeof *h);
    return h;
}

/* Downloads the device tensor and compares it with the CPU result. */
static void cmp_tol(const char *name, const float *dev, const float *ref, size_t n, double tol) {
    float *got = dget(dev, n);
    tfm_test_close(name, got, ref, n, tol);
    free(got);
}
static void cmp(const char *name, const float *dev, const float *ref, size_t n) { cmp_tol(name, dev, ref, n, TOL); }

/* Exact agreement: the same zero pattern (which elements were dropped) and the
 * same bits everywhere. */
static void cmp_exact(const char *name, const float *dev, const float *ref, size_t n) {
    float *got = dget(dev, n);
    size_t zero_diff = 0, bit_diff = 0, zeros = 0;
    for (size_t i = 0; i < n; i++) {
        zeros += ref[i] == 0.0f;
        zero_diff += (got[i] == 0.0f) != (ref[i] == 0.0f);
        bit_diff += memcmp(&got[i], &ref[i], sizeof(float)) != 0;
    }
    printf("%-48s zero pattern: %zu of %zu differ (%zu zeros); bits: %zu differ\n", name, zero_diff, n, zeros,
           bit_diff);
    CHECK(zero_diff == 0 && bit_diff == 0, "%s: must match the CPU exactly", name);
    free(got);
}

/* A [rows, cols] matrix with row stride ld >= cols: `inside` in the matrix
 * (NaN poisons it, or random values), GAP between rows. */
static float *hstrided(int rows, int cols, int ld, int poison) {
    float *x = hfill((size_t)rows * ld, GAP);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) x[(size_t)r * ld + c] = poison ? NAN : urand(-1, 1);
    return x;
}

/* ----------------------------------------------------------------- memory */

static void test_memory(void) {
    size_t bytes = 1237;
    unsigned char *z = G->alloc(bytes), host[1237];
    CHECK(z != NULL, "alloc");
    memset(host, 0xab, sizeof host);
    G->download(host, z, bytes);
    int zero = 1;
    for (size_t i = 0; i < bytes; i++) zero &= host[i] == 0;
    CHECK(zero, "alloc must return zero-filled memory");
    void *empty = G->alloc(0);
    CHECK(empty != NULL, "alloc(0) returns a pointer, as the CPU backend does");
    G->free(empty);
    G->free(NULL);

    size_t n = 3001;
    float *x = hrand(n, -1, 1), *y = hnan(n);
    float *dx = dputf(x, n), *dy = G->alloc(n * sizeof(float));
    G->copy(dy, dx, n * sizeof(float));
    G->zero(dy + 10, 100 * sizeof(float));
    G->sync();
    G->download(y, dy, n * sizeof(float));
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= (i >= 10 && i < 110) ? y[i] == 0.0f : y[i] == x[i];
    CHECK(ok, "upload, copy, zero, download");
    printf("%-48s %s\n", "memory: alloc zero-fill, upload, copy, zero", ok && zero ? "exact" : "FAIL");
    G->free(z), G->free(dx), G->free(dy);
    free(x), free(y);
}

/* topk_logprobs and argmax_rows on x [N, V] (host) against the CPU: ids
 * exact; log-probabilities within 1e-5 where finite, and -inf (rows of -inf
 * logits) at the same places. Returns the GPU's ids [N, K] (the caller frees). */
static int32_t *topk_case(const char *what, const float *x, int N, int V, int K, int sa, int sb, int sc) {
    size_t nk = (size_t)N * K;
    int32_t *ids = xmalloc(nk * sizeof *ids), *gids = xmalloc(nk * sizeof *gids);
    float *vals = xmalloc(nk * sizeof *vals);
    float *d_x = dputf(x, (size_t)N * V), *d_vals = G->alloc(nk * sizeof *d_vals);
    int32_t *d_ids = G->alloc(nk * sizeof *d_ids);
    G->topk_logprobs(d_ids, d_vals, d_x, N, V, K, sa, sb, sc);
    C->topk_logprobs(ids, vals, x, N, V, K, sa, sb, sc);
    G->download(gids, d_ids, nk * sizeof *gids);
    float *gvals = dget(d_vals, nk);
    size_t id_diff = 0, inf_diff = 0, nfin = 0;
    for (size_t i = 0; i < nk; i++) {
        id_diff += ids[i] != gids[i];
        if (!isfinite(vals[i]) || !isfinite(gvals[i])) {
            inf_diff += !(vals[i] == -INFINITY && gvals[i] == -INFINITY);
            continue;
        }
        vals[nfin] = vals[i], gvals[nfin] = gvals[i], nfin++; /* the finite ones, compacted */
    }
    char name[96];
    snprintf(name, sizeof name, "topk_logprobs %s: ids", what);
    printf("%-48s %s (%zu of %zu differ; %zu -inf misplaced)\n", name, id_diff || inf_diff ? "FAIL" : "exact",
           id_diff, nk, inf_diff);
    CHECK(id_diff == 0 && inf_diff == 0, "%s", name);
    snprintf(name, sizeof name, "topk_logprobs %s: log-probabilities", what);
    tfm_test_close(name, gvals, vals, nfin, 1e-5);

    int32_t *best = xmalloc((size_t)N * sizeof *best), *gbest = xmalloc((size_t)N * sizeof *gbest);
    int32_t *d_best = G->alloc((size_t)N * sizeof *d_best);
    G->argmax_rows(d_best, d_x, N, V, sa, sb, sc);
    C->argmax_rows(best, x, N, V, sa, sb, sc);
    G->download(gbest, d_best, (size_t)N * sizeof *gbest);
    int same = !memcmp(best, gbest, (size_t)N * sizeof *best);
    snprintf(name, sizeof name, "argmax_rows %s", what);
    printf("%-48s %s\n", name, same ? "exact" : "FAIL");
    CHECK(same, "%s", name);
    G->free(d_x), G->free(d_vals), G->free(d_ids), G->free(d_best);
    free(ids), free(vals), free(gvals), free(best), free(gbest);
    return gids;
}

/* Decoding logits [N, V] in [-3, 3], with what the top k must get right,
 * by row mod 4: (0) the skipped ids 0 and 1 hold the best values, id V-1 the
 * best of the rest; (1) twelve equal values above the rest, spread over the
 * threads' shares of the row (the lowest ids win); (2) k-1 distinct best
 * values, then a tie at the k-th place between ids 5 and V-3 (5 wins; needs
 * V >= k * 8); (3) random (ties by chance only). */
static float *topk_logits(int N, int V, int K) {
    float *x = hrand((size_t)N * V, -3, 3);
    for (int r = 0; r < N; r++) {
        float *row = x + (size_t)r * V;
        if (r % 4 == 0) row[0] = row[1] = 50.0f, row[V - 1] = 10.0f;
        if (r % 4 == 1)
            for (int j = 0; j < 12; j++) row[j * (V / 12) + r % 7] = 8.0f;
        if (r % 4 == 2) {
            for (int j = 0; j < K - 1; j++) row[(j + 1) * (V / K)] = 40.0f - j; /* all above 5 for K <= 36 */
            row[5] = row[V - 3] = 5.0f;
        }
    }
    return x;
}

/* The top k at decoding's sizes (beam 4 over 64 sentences: 256 rows of a
 * 37000-token vocabulary; V % 4 != 0 for rows that start unaligned), ties,
 * rows of -inf, few candidates per thread, and k above the fast path's 16. */
static void test_topk(void) {
    static const struct {
        int N, V, K;
    } cases[] = {{256, 37000, 8}, {256, 37000, 2}, {64, 37003, 16}, {13, 5001, 3}, {7, 5003, 20}, {3, 21, 16}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int N = cases[c].N, V = cases[c].V, K = cases[c].K;
        float *x = topk_logits(N, V, K);
        char what[64];
        snprintf(what, sizeof what, "%d x %d, k %d", N, V, K);
        int32_t *ids = topk_case(what, x, N, V, K, 0, 1, 2);
        if (V >= 8 * K && N >= 3) /* the planted rows; in row 1 the first tie is id 1, skipped */
            CHECK(ids[0] == V - 1 && ids[K] == V / 12 + 1 && ids[2 * K + K - 1] == 5,
                  "topk %s: ids %d %d %d, want %d %d 5", what, ids[0], ids[K], ids[2 * K + K - 1], V - 1,
                  V / 12 + 1);
        free(ids), free(x);
    }
    /* Rows of -inf but for a few values (k beyond the finite ones: the lowest
     * ids of -inf follow, as on the CPU), one with every finite value
     * skipped but the last id, one half -inf. */
    int N = 4, V = 1001, K = 8;
    float *x = hrand((size_t)N * V, -3, 3);
    for (int v = 0; v < V; v++) {
        x[v] = x[V + v] = -INFINITY;
        if (v % 2) x[2 * V + v] = -INFINITY;
    }
    x[17] = 1.0f, x[500] = 2.0f, x[999] = 1.0f;
    x[V + 0] = 3.0f, x[V + 998] = 4.0f, x[V + 1000] = -2.0f;
    int32_t *ids = topk_case("4 x 1001, k 8, rows of -inf", x, N, V, K, 0, 1, 998);
    CHECK(ids[0] == 500 && ids[1] == 17 && ids[2] == 999 && ids[3] == 2 && ids[K] == 1000 && ids[K + 1] == 2,
          "topk rows of -inf: %d %d %d %d, %d %d", ids[0], ids[1], ids[2], ids[3], ids[K], ids[K + 1]);
    free(ids), free(x);
}

/* Row ops of decoding: strided row copies (the KV-cache append), gathers
 * (beam reordering) and the argmax of each row (greedy), with ties and
 * skipped ids; all exact. */
static void test_rows(void) {
    int rows = 7, width = 37, src_row = 53, dst_row = 61, V = 1001;
    size_t ns = (size_t)rows * src_row, nd = (size_t)rows * dst_row;
    float *src = hrand(ns, -1, 1), *dst = hrand(nd, -1, 1), *dst_ref = hdup(dst, nd);
    float *d_src = dputf(src, ns), *d_dst = dputf(dst, nd);
    G->copy_rows(d_dst + 3, dst_row, d_src + 5, src_row, (size_t)width, rows);
    C->copy_rows(dst_ref + 3, dst_row, src + 5, src_row, (size_t)width, rows);
    cmp_exact("copy_rows 7 rows of 37 (strides 53 -> 61)", d_dst, dst_ref, nd);

    int32_t from[5] = {6, 0, 3, 3, 1};
    int32_t *d_from = dput(from, sizeof from);
    float *g_ref = hfill((size_t)5 * src_row, 0), *d_g = dputf(g_ref, (size_t)5 * src_row);
    G->gather_rows(d_g, d_src, src_row, (size_t)width, d_from, 5);
    C->gather_rows(g_ref, src, src_row, (size_t)width, from, 5);
    cmp_exact("gather_rows 5 of 7 rows (repeats)", d_g, g_ref, (size_t)5 * src_row);

    int N = 9;
    float *x = hrand((size_t)N * V, -3, 3);
    x[2 * V + 500] = x[2 * V + 17] = 10.0f;      /* a tie: the lower id wins */
    x[4 * V + 0] = 50.0f, x[4 * V + 1] = 40.0f;  /* the best ids are skipped */
    x[4 * V + 999] = 30.0f;
    x[5 * V + V - 1] = 20.0f;                    /* the last id */
    float *d_x = dputf(x, (size_t)N * V);
    int32_t got[9], ref[9], *d_out = G->alloc(sizeof got);
    G->argmax_rows(d_out, d_x, N, V, 0, 1, -1);
    C->argmax_rows(ref, x, N, V, 0, 1, -1);
    G->download(got, d_out, sizeof got);
    int same = !memcmp(got, ref, sizeof got);
    CHECK(same && ref[2] == 17 && ref[4] == 999 && ref[5] == V - 1, "argmax_rows: %d %d %d vs %d %d %d", got[2],
          got[4], got[5], ref[2], ref[4], ref[5]);
    printf("%-48s %s\n", "argmax_rows 9 x 1001 (ties, skipped ids)", same ? "exact" : "FAIL");
    /* Beam candidates: the k best ids (pad 0 and bos 1 skipped) and their
     * log-probabilities; ids exact (distinct random values), values within
     * 1e-5 (the GPU sums the row's exp in another order). */
    int K = 8;
    int32_t *ids = malloc((size_t)N * K * sizeof *ids), *gids = malloc((size_t)N * K * sizeof *gids);
    float *vals = malloc((size_t)N * K * sizeof *vals);
    int32_t *d_ids = G->alloc((size_t)N * K * sizeof *d_ids);
    float *d_vals = G->alloc((size_t)N * K * sizeof *d_vals);
    G->topk_logprobs(d_ids, d_vals, d_x, N, V, K, 0, 1, 998);
    C->topk_logprobs(ids, vals, x, N, V, K, 0, 1, 998);
    G->download(gids, d_ids, (size_t)N * K * sizeof *gids);
    int same_ids = !memcmp(ids, gids, (size_t)N * K * sizeof *ids);
    CHECK(same_ids && ids[2 * K] == 17 && ids[2 * K + 1] == 500, "topk_logprobs: ids differ");
    printf("%-48s %s\n", "topk_logprobs 9 x 1001, k 8: ids", same_ids ? "exact" : "FAIL");
    float *gvals = dget(d_vals, (size_t)N * K);
    tfm_test_close("topk_logprobs 9 x 1001, k 8: log-probabilities", gvals, vals, (size_t)N * K, 1e-5);
    free(ids), free(gids), free(vals), free(gvals);
    G->free(d_ids), G->free(d_vals);
    G->free(d_src), G->free(d_dst), G->free(d_from), G->free(d_g), G->free(d_x), G->free(d_out);
    free(src), free(dst), free(dst_ref), free(g_ref), free(x);
    test_topk();
}

/* ---------------------------------------------------- flat buffers, Adam */

static void test_flat(void) {
    size_t n = 1000003;
    float *x = hrand(n, -1, 1), *y = hrand(n, -1, 1);
    float *dx = dputf(x, n), *dy = dputf(y, n);

    float ng = G->global_norm(dx, n), nc = C->global_norm(x, n);
    tfm_test_close("global_norm", &ng, &nc, 1, TOL);
    float n0 = G->global_norm(dx, 0);
    CHECK(n0 == 0.0f, "global_norm of nothing is 0");

    G->scale(dx, n, 0.37f), C->scale(x, n, 0.37f);
    cmp("scale", dx, x, n);
    G->add(dy, dx, n), C->add(y, x, n);
    cmp("add", dy, y, n);
    G->free(dx), G->free(dy);
    free(x), free(y);

    for (int adamw = 0; adamw < 2; adamw++) {
        size_t m = 100003;
        int step = 7;
        float lr = 1e-3f, wd = 0.01f;
        tfm_adam_coefs c = {0};
        c.beta1 = 0.9f, c.beta2 = 0.98f, c.one_minus_beta1 = 1 - 0.9f, c.one_minus_beta2 = 1 - 0.98f, c.eps = 1e-9f;
        c.neg_step = (float)(-lr / (1 - pow(0.9, step)));
        c.bc2_sqrt = (float)sqrt(1 - pow(0.98, step));
        c.adamw = adamw;
        c.decay = adamw ? 1 - lr * wd : 1;
        c.l2 = adamw ? 0 : wd;
        float *p = hrand(m, -1, 1), *g = hrand(m, -0.1f, 0.1f), *mm = hrand(m, -0.01f, 0.01f);
        float *v = hrand(m, 0, 1e-4f);
        float *dp = dputf(p, m), *dg = dputf(g, m), *dm = dputf(mm, m), *dv = dputf(v, m);
        G->adam_update(&c, dp, dg, dm, dv, m);
        C->adam_update(&c, p, g, mm, v, m);
        const char *tag = adamw ? "adamw" : "adam_l2";
        char name[64];
        snprintf(name, sizeof name, "%s param", tag), cmp(name, dp, p, m);
        snprintf(name, sizeof name, "%s m", tag), cmp(name, dm, mm, m);
        snprintf(name, sizeof name, "%s v", tag), cmp(name, dv, v, m);
#ifndef FP_FAST_FMAF
        /* Without hardware FMA in this build the CPU rounds every step, as the
         * GPU kernel does: the update is then the same bit for bit. */
        snprintf(name, sizeof name, "%s param (bits)", tag), cmp_exact(name, dp, p, m);
        snprintf(name, sizeof name, "%s m (bits)", tag), cmp_exact(name, dm, mm, m);
        snprintf(name, sizeof name, "%s v (bits)", tag), cmp_exact(name, dv, v, m);
#endif
        G->free(dp), G->free(dg), G->free(dm), G->free(dv);
        free(p), free(g), free(mm), free(v);
    }
}

/* ------------------------------------------------------------------ GEMM */

/* x rounded to the nearest bf16 (ties to even), as a float: what the CUDA
 * backend's BF16 mode multiplies. Finite x only (the tests' inputs). */
static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* A copy of x[n] with every element rounded to bf16. */
/* n bf16 values of device memory, widened to floats on the host (exactly). */
static float *dget_bf16(const void *dev, size_t n) {
    uint16_t *bits = xmalloc(n * sizeof *bits);
    G->download(bits, dev, n * sizeof *bits);
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)bits[i] << 16;
        memcpy(&x[i], &u, sizeof u);
    }
    free(bits);
    return x;
}

static float *hround(const float *x, size_t n) {
    float *y = xmalloc(n * sizeof *y);
    for (size_t i = 0; i < n; i++) y[i] = bf16_round(x[i]);
    return y;
}

/* C = alpha op(A) op(B) + beta C with row strides wider than the rows. With
 * beta == 0, C starts as NaN (never read) with GAP between rows. bf16: the
 * GPU is in BF16 mode, and the CPU multiplies the operands rounded to bf16,
 * which must then give the GPU's result within TOL (fp32 sums both sides). */
static void gemm_case_prec(const char *name, int ta, int tb, int M, int N, int K, float alpha, float beta,
                           int offset, int bf16) {
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    int lda = ac + 3, ldb = bc + 5, ldc = N + 2;
    /* `offset` floats in front: pointers only 4-byte aligned, as a head's slice of a buffer. */
    size_t na = (size_t)ar * lda + offset, nb = (size_t)br * ldb + offset, nc = (size_t)(M > 0 ? M : 1) * ldc;
    float *a = hrand(na, -1, 1), *b = hrand(nb, -1, 1);
    float *c = beta == 0 ? hstrided(M, N, ldc, 1) : hstrided(M, N, ldc, 0);
    float *da = dputf(a, na), *db = dputf(b, nb), *dc = dputf(c, nc);
    G->gemm(ta, tb, M, N, K, alpha, da + offset, lda, db + offset, ldb, beta, dc, ldc);
    if (bf16) {
        float *ra = hround(a, na), *rb = hround(b, nb);
        free(a), free(b);
        a = ra, b = rb;
    }
    C->gemm(ta, tb, M, N, K, alpha, a + offset, lda, b + offset, ldb, beta, c, ldc);
    cmp(name, dc, c, nc);
    G->free(da), G->free(db), G->free(dc);
    free(a), free(b), free(c);
}

static void gemm_case(const char *name, int ta, int tb, int M, int N, int K, float alpha, float beta, int offset) {
    gemm_case_prec(name, ta, tb, M, N, K, alpha, beta, offset, 0);
}

static void test_gemm(void) {
    static const char *tn[2][2] = {{"gemm NN", "gemm NT"}, {"gemm TN", "gemm TT"}};
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            char name[64];
            snprintf(name, sizeof name, "%s beta=0.3", tn[ta][tb]);
            gemm_case(name, ta, tb, 37, 29, 43, 0.7f, 0.3f, 0);
            snprintf(name, sizeof name, "%s beta=0 (C poisoned)", tn[ta][tb]);
            gemm_case(name, ta, tb, 37, 29, 43, 1.3f, 0.0f, 0);
            snprintf(name, sizeof name, "%s 4-byte aligned operands", tn[ta][tb]);
            gemm_case(name, ta, tb, 21, 35, 17, 1.0f, 1.0f, 1);
        }
    gemm_case("gemm NT 301x257x509 beta=1", 0, 1, 301, 257, 509, 1.0f, 1.0f, 0);
    gemm_case("gemm TN 257x301x509 beta=0", 1, 0, 257, 301, 509, 1.0f, 0.0f, 0);
    gemm_case("gemm NN K=0 (C = beta C)", 0, 0, 13, 11, 0, 1.0f, 0.5f, 0);
    gemm_case("gemm NN K=0 beta=0 (C = 0)", 0, 0, 13, 11, 0, 1.0f, 0.0f, 0);
}

/* ---------------------------------------------------------------- linear */

/* The tensor-core modes: operands rounded to tf32 / bf16, fp32 sums. Bounds
 * (relative to the largest |C|, K = 509 products of values in [-1, 1]):
 * tf32 2e-3, bf16 1e-2; and the error must exceed 1e-6, which shows that the
 * mode took effect (fp32 gives about 5e-7 here). Back to fp32 after. These
 * products are too small for BF16 mode's bf16 copies to pay (gemm.cu,
 * bf16_pays): they take its fallback, FAST_16BF on the fp32 operands;
 * test_gemm_bf16 covers the copies. */
static void test_gemm_precision(void) {
    static const struct { tfm_matmul_precision p; const char *name; double tol; } modes[] = {
        {TFM_MATMUL_TF32, "gemm NT 301x257x509 tf32", 2e-3},
        {TFM_MATMUL_BF16, "gemm NT 301x257x509 bf16", 1e-2},
    };
    int M = 301, N = 257, K = 509;
    for (int i = 0; i < 2; i++) {
        CHECK(G->set_matmul_precision(modes[i].p), "%s: mode refused", modes[i].name);
        float *a = hrand((size_t)M * K, -1, 1), *b = hrand((size_t)N * K, -1, 1), *c = hfill((size_t)M * N, 0);
        float *da = dputf(a, (size_t)M * K), *db = dputf(b, (size_t)N * K), *dc = dputf(c, (size_t)M * N);
        G->gemm(0, 1, M, N, K, 1.0f, da, K, db, K, 0.0f, dc, N);
        C->gemm(0, 1, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        float *got = dget(dc, (size_t)M * N);
        double e = tfm_test_close(modes[i].name, got, c, (size_t)M * N, modes[i].tol);
        CHECK(e > 1e-6, "%s: error %g: the mode had no effect", modes[i].name, e);
        free(got);
        G->free(da), G->free(db), G->free(dc);
        free(a), free(b), free(c);

        /* linear with its bias in cuBLASLt's epilogue, in this mode (sizes
         * with 16-byte aligned rows, as the model's): a lost bias would be an
         * error of about 2 / 30 here. */
        int n = 300, in_f = 512, out_f = 256;
        char name[64];
        snprintf(name, sizeof name, "linear_forward bias %dx%d->%d %s", n, in_f, out_f, i ? "bf16" : "tf32");
        float *x = hrand((size_t)n * in_f, -1, 1), *w = hrand((size_t)out_f * in_f, -1, 1);
        float *bias = hrand(out_f, -2, 2), *y = hnan((size_t)n * out_f);
        float *dx = dputf(x, (size_t)n * in_f), *dw = dputf(w, (size_t)out_f * in_f), *dbias = dputf(bias, out_f);
        float *dy = dputf(y, (size_t)n * out_f);
        G->linear_forward(dy, dx, dw, dbias, n, in_f, out_f);
        C->linear_forward(y, x, w, bias, n, in_f, out_f);
        got = dget(dy, (size_t)n * out_f);
        (void)tfm_test_close(name, got, y, (size_t)n * out_f, modes[i].tol);
        free(got);
        G->free(dx), G->free(dw), G->free(dbias), G->free(dy);
        free(x), free(w), free(bias), free(y);
    }
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    CHECK(!C->set_matmul_precision(TFM_MATMUL_BF16), "the CPU accepted bf16");
}

/* BF16 mode's products on bf16 copies of the operands, at sizes where the
 * copies pay (at least 512 flops per element converted): against the CPU on
 * operands rounded to bf16 (ties to even), within TOL, which shows both that
 * the GPU rounded them so and that its sums are fp32. gemm: every transpose,
 * odd row strides and 4-byte aligned operands (the conversion's scalar
 * loads, rows padded to 8), beta 0.3; linear_forward with the bias in the
 * epilogue (16-byte aligned) and by the bias kernel (4-byte aligned);
 * linear_backward with din += (beta 1), dw += (beta 1) and db (fp32, so
 * against the CPU on the unrounded dout). Back to fp32 after. */
static void test_gemm_bf16(void) {
    CHECK(G->set_matmul_precision(TFM_MATMUL_BF16), "bf16 mode refused");
    static const char *tn[2][2] = {{"gemm NN", "gemm NT"}, {"gemm TN", "gemm TT"}};
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            char name[64];
            snprintf(name, sizeof name, "%s 601x523x300 bf16 copies", tn[ta][tb]);
            gemm_case_prec(name, ta, tb, 601, 523, 300, 0.7f, 0.3f, 1, 1);
        }

    int n = 1000, in_f = 512, out_f = 640;
    float *x = hrand((size_t)n * in_f, -1, 1), *w = hrand((size_t)out_f * in_f, -1, 1);
    float *bias = hrand(out_f + 1, -2, 2);
    float *rx = hround(x, (size_t)n * in_f), *rw = hround(w, (size_t)out_f * in_f);
    float *dx = dputf(x, (size_t)n * in_f), *dw = dputf(w, (size_t)out_f * in_f), *dbias = dputf(bias, out_f + 1);
    for (int b_off = 0; b_off < 2; b_off++) {
        char name[96];
        snprintf(name, sizeof name, "linear_forward %dx%d->%d b+%d bf16 copies", n, in_f, out_f, b_off);
        float *y = hnan((size_t)n * out_f), *dy = dputf(y, (size_t)n * out_f);
        G->linear_forward(dy, dx, dw, dbias + b_off, n, in_f, out_f);
        C->linear_forward(y, rx, rw, bias + b_off, n, in_f, out_f);
        cmp(name, dy, y, (size_t)n * out_f);
        G->free(dy), free(y);
    }
    G->free(dx), G->free(dw), G->free(dbias);
    free(x), free(w), free(bias), free(rx), free(rw);

    int N = 777, I = 520, O = 392;
    float *in = hrand((size_t)N * I, -1, 1), *wt = hrand((size_t)O * I, -0.5f, 0.5f), *dout = hrand((size_t)N * O, -1, 1);
    float *din = hrand((size_t)N * I, -1, 1), *dwt = hrand((size_t)O * I, -1, 1), *db = hrand(O, -1, 1);
    float *d_in = dputf(in, (size_t)N * I), *d_w = dputf(wt, (size_t)O * I), *d_dout = dputf(dout, (size_t)N * O);
    float *d_din = dputf(din, (size_t)N * I), *d_dw = dputf(dwt, (size_t)O * I), *d_db = dputf(db, O);
    G->linear_backward(d_din, d_dw, d_db, d_dout, d_in, d_w, N, I, O, 1);
    float *r_in = hround(in, (size_t)N * I), *r_w = hround(wt, (size_t)O * I), *r_dout = hround(dout, (size_t)N * O);
    C->linear_backward(din, dwt, NULL, r_dout, r_in, r_w, N, I, O, 1);
    C->linear_backward(NULL, NULL, db, dout, in, wt, N, I, O, 1);
    cmp("linear_backward 777x520->392 acc=1 bf16 copies din", d_din, din, (size_t)N * I);
    cmp("linear_backward 777x520->392 acc=1 bf16 copies dw", d_dw, dwt, (size_t)O * I);
    cmp("linear_backward 777x520->392 acc=1 bf16 copies db", d_db, db, O);
    G->free(d_in), G->free(d_w), G->free(d_dout), G->free(d_din), G->free(d_dw), G->free(d_db);
    free(in), free(wt), free(dout), free(din), free(dwt), free(db), free(r_in), free(r_w), free(r_dout);
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
}

/* in[N,I] w[O,I] b[O] at b_off floats into its buffer: the bias rides in
 * cuBLASLt's epilogue when 16-byte aligned (b_off % 4 == 0), otherwise a
 * separate kernel adds it. N > 128 takes the bias gradient's two passes. */
static void test_linear_case(int N, int I, int O, int b_off) {
    float *in = hrand((size_t)N * I, -1, 1), *w = hrand((size_t)O * I, -0.5f, 0.5f), *b = hrand(O + b_off, -1, 1);
    float *dout = hrand((size_t)N * O, -1, 1);
    float *d_in = dputf(in, (size_t)N * I), *d_w = dputf(w, (size_t)O * I), *d_bbuf = dputf(b, O + b_off);
    float *d_b = d_bbuf + b_off, *ddout = dputf(dout, (size_t)N * O);
    char size[64];
    snprintf(size, sizeof size, "%dx%d->%d b+%d", N, I, O, b_off);

    for (int bias = 0; bias < 2; bias++) {
        float *out = hnan((size_t)N * O), *d_out = dputf(out, (size_t)N * O);
        G->linear_forward(d_out, d_in, d_w, bias ? d_b : NULL, N, I, O);
        C->linear_forward(out, in, w, bias ? b + b_off : NULL, N, I, O);
        char name[160];
        snprintf(name, sizeof name, "linear_forward %s %s", size, bias ? "bias" : "no bias");
        cmp(name, d_out, out, (size_t)N * O);
        G->free(d_out), free(out);
    }
    /* accumulate 0/1 x bias or not x din or not */
    for (int acc = 0; acc < 2; acc++)
        for (int bias = 0; bias < 2; bias++)
            for (int with_din = 0; with_din < 2; with_din++) {
                if (!with_din && acc) continue;
                float *din = acc ? hrand((size_t)N * I, -1, 1) : hnan((size_t)N * I);
                float *dw = hrand((size_t)O * I, -1, 1), *db = hrand(O, -1, 1);
                float *d_din = dputf(din, (size_t)N * I), *d_dw = dputf(dw, (size_t)O * I), *d_db = dputf(db, O);
                G->linear_backward(with_din ? d_din : NULL, d_dw, bias ? d_db : NULL, ddout, d_in, d_w, N, I, O, acc);
                C->linear_backward(with_din ? din : NULL, dw, bias ? db : NULL, dout, in, w, N, I, O, acc);
                char tag[192], name[224];
                snprintf(tag, sizeof tag, "linear_backward %s acc=%d %s%s", size, acc, bias ? "db" : "no-db",
                         with_din ? "" : " no-din");
                if (with_din) snprintf(name, sizeof name, "%s din", tag), cmp(name, d_din, din, (size_t)N * I);
                snprintf(name, sizeof name, "%s dw", tag), cmp(name, d_dw, dw, (size_t)O * I);
                snprintf(name, sizeof name, "%s db", tag), cmp(name, d_db, db, O); /* unchanged without bias */
                G->free(d_din), G->free(d_dw), G->free(d_db);
                free(din), free(dw), free(db);
            }
    G->free(d_in), G->free(d_w), G->free(d_bbuf), G->free(ddout);
    free(in), free(w), free(b), free(dout);
}

static void test_linear(void) {
    test_linear_case(53, 45, 39, 0);    /* odd sizes, one chunk of rows */
    test_linear_case(1000, 67, 70, 1);  /* 4-byte aligned bias: bias kernel; 8 chunks, the last short */
    test_linear_case(777, 128, 96, 4);  /* 16-byte aligned bias at an offset: epilogue */
    test_linear_case(4100, 64, 512, 0); /* 33 chunks; tensor-core sizes */
}

/* ------------------------------------------------- embeddings, positions */

static int32_t *hids(int n, int hi) {
    int32_t *x = xmalloc((size_t)n * sizeof *x);
    for (int i = 0; i < n; i++) x[i] = (int32_t)(tfm_rng_next(&g_rng) % (uint64_t)hi);
    return x;
}

static void test_embedding(void) {
    int V = 47, D = 37, N = 61; /* N > V: ids repeat, so the backward adds rows into one */
    float scale = 2.3f;
    int32_t *ids = hids(N, V), *d_ids = dput(ids, (size_t)N * sizeof *ids);
    float *table = hrand((size_t)V * D, -1, 1), *d_table = dputf(table, (size_t)V * D);
    float *out = hnan((size_t)N * D), *d_out = dputf(out, (size_t)N * D);
    G->embedding_forward(d_out, d_ids, d_table, N, D, scale);
    C->embedding_forward(out, ids, table, N, D, scale);
    cmp("embedding_forward", d_out, out, (size_t)N * D);
    float *dout = hrand((size_t)N * D, -1, 1), *d_dout = dputf(dout, (size_t)N * D);
    float *dt = hrand((size_t)V * D, -1, 1), *d_dt = dputf(dt, (size_t)V * D);
    G->embedding_backward(d_dt, d_dout, d_ids, N, D, scale);
    C->embedding_backward(dt, dout, ids, N, D, scale);
    cmp("embedding_backward (+=)", d_dt, dt, (size_t)V * D);

    int P = 41;
    int32_t *pos = hids(N, P), *d_pos = dput(pos, (size_t)N * sizeof *pos);
    float *pt = hrand((size_t)P * D, -1, 1), *d_pt = dputf(pt, (size_t)P * D);
    float *x = hrand((size_t)N * D, -1, 1), *d_x = dputf(x, (size_t)N * D);
    G->positions_forward(d_x, d_pt, d_pos, N, D);
    C->positions_forward(x, pt, pos, N, D);
    cmp("positions_forward (+=)", d_x, x, (size_t)N * D);
    float *dpt = hrand((size_t)P * D, -1, 1), *d_dpt = dputf(dpt, (size_t)P * D);
    G->positions_backward(d_dpt, d_dout, d_pos, N, D);
    C->positions_backward(dpt, dout, pos, N, D);
    cmp("positions_backward (+=)", d_dpt, dpt, (size_t)P * D);

    /* Rope on the q and k heads of packed rows [q | k | v] plus a gap, as the model calls it. */
    int R = 23, H = 3, dk = 18;
    long row = 3L * H * dk + 5;
    int32_t *rpos = hids(R, 500), *d_rpos = dput(rpos, (size_t)R * sizeof *rpos);
    for (int inverse = 0; inverse < 2; inverse++) {
        float *buf = hrand((size_t)R * row, -1, 1), *d_buf = dputf(buf, (size_t)R * row);
        G->rope(d_buf, row, d_rpos, R, H, dk, 10000.0, inverse);
        G->rope(d_buf + H * dk, row, d_rpos, R, H, dk, 10000.0, inverse);
        C->rope(buf, row, rpos, R, H, dk, 10000.0, inverse);
        C->rope(buf + H * dk, row, rpos, R, H, dk, 10000.0, inverse);
        cmp(inverse ? "rope inverse (strided rows)" : "rope forward (strided rows)", d_buf, buf, (size_t)R * row);
        G->free(d_buf), free(buf);
    }
    G->free(d_ids), G->free(d_table), G->free(d_out), G->free(d_dout), G->free(d_dt), G->free(d_pos);
    G->free(d_pt), G->free(d_x), G->free(d_dpt), G->free(d_rpos);
    free(ids), free(table), free(out), free(dout), free(dt), free(pos), free(pt), free(x), free(dpt), free(rpos);
}

/* -------------------------------------------------------------- LayerNorm */

/* Called with N under and over 8 of the GPU's chunks of 128 rows (its partial
 * sums of the parameter gradients), not a multiple of 128; D odd. */
static void test_layernorm(int N, int D) {
    printf("layernorm N=%d D=%d:\n", N, D);
    size_t nd = (size_t)N * D;
    float *in = hrand(nd, -1, 1);
    for (size_t i = 0; i < nd; i++) in[i] += 3.0f; /* a large mean, as after a residual sum */
    float *w = hrand(D, 0.5f, 1.5f), *b = hrand(D, -0.5f, 0.5f);
    float *d_in = dputf(in, nd), *d_w = dputf(w, D), *d_b = dputf(b, D);
    float *out = hnan(nd), *mean = hnan(N), *rstd = hnan(N);
    float *d_out = dputf(out, nd), *d_mean = dputf(mean, N), *d_rstd = dputf(rstd, N);
    G->layernorm_forward(d_out, d_mean, d_rstd, d_in, d_w, d_b, N, D, 1e-5f);
    C->layernorm_forward(out, mean, rstd, in, w, b, N, D, 1e-5f);
    cmp("layernorm_forward out", d_out, out, nd);
    cmp("layernorm_forward mean", d_mean, mean, N);
    cmp("layernorm_forward rstd", d_rstd, rstd, N);
    float *dout = hrand(nd, -1, 1), *d_dout = dputf(dout, nd);
    for (int acc = 0; acc < 2; acc++) {
        float *din = acc ? hrand(nd, -1, 1) : hnan(nd), *dw = hrand(D, -1, 1), *db = hrand(D, -1, 1);
        float *d_din = dputf(din, nd), *d_dw = dputf(dw, D), *d_db = dputf(db, D);
        /* Both sides from the CPU's saved statistics, so only the backward is compared. */
        float *d_m = dputf(mean, N), *d_r = dputf(rstd, N);
        G->layernorm_backward(d_din, d_dw, d_db, d_dout, d_in, d_m, d_r, d_w, N, D, acc);
        C->layernorm_backward(din, dw, db, dout, in, mean, rstd, w, N, D, acc);
        char name[64];
        snprintf(name, sizeof name, "layernorm_backward acc=%d din", acc), cmp(name, d_din, din, nd);
        snprintf(name, sizeof name, "layernorm_backward acc=%d dw (+=)", acc), cmp(name, d_dw, dw, D);
        snprintf(name, sizeof name, "layernorm_backward acc=%d db (+=)", acc), cmp(name, d_db, db, D);
        G->free(d_din), G->free(d_dw), G->free(d_db), G->free(d_m), G->free(d_r);
        free(din), free(dw), free(db);
    }
    G->free(d_in), G->free(d_w), G->free(d_b), G->free(d_out), G->free(d_mean), G->free(d_rstd), G->free(d_dout);
    free(in), free(w), free(b), free(out), free(mean), free(rstd), free(dout);
}

/* ------------------------------------------------ activations and dropout */

static void test_activation(void) {
    size_t n = 10007;
    float *in = hrand(n, -4, 4), *dout = hrand(n, -1, 1);
    float *d_in = dputf(in, n), *d_dout = dputf(dout, n);
    static const char *names[2] = {"relu", "gelu"};
    for (int k = 0; k < 2; k++) {
        tfm_act_kind kind = (tfm_act_kind)k;
        char name[64];
        float *out = hnan(n), *d_out = dputf(out, n);
        G->activation_forward(d_out, d_in, n, kind);
        C->activation_forward(out, in, n, kind);
        snprintf(name, sizeof name, "%s forward", names[k]), cmp(name, d_out, out, n);
        float *din = hnan(n), *d_din = dputf(din, n);
        G->activation_backward(d_din, d_dout, d_in, n, kind);
        C->activation_backward(din, dout, in, n, kind);
        snprintf(name, sizeof name, "%s backward", names[k]), cmp(name, d_din, din, n);
        /* in place: din aliases dout (both kinds), out aliases in (ReLU) */
        float *d_g = dputf(dout, n);
        G->activation_backward(d_g, d_g, d_in, n, kind);
        snprintf(name, sizeof name, "%s backward in place", names[k]), cmp(name, d_g, din, n);
        /* Pointers 4 bytes past a 16-byte boundary: the one-at-a-time path. */
        float *poison = hnan(n), *d_u = dputf(poison, n);
        G->activation_forward(d_u + 1, d_in + 1, n - 1, kind);
        snprintf(name, sizeof name, "%s forward unaligned", names[k]), cmp(name, d_u + 1, out + 1, n - 1);
        G->upload(d_u, poison, n * sizeof(float));
        G->activation_backward(d_u + 1, d_dout + 1, d_in + 1, n - 1, kind);
        snprintf(name, sizeof name, "%s backward unaligned", names[k]), cmp(name, d_u + 1, din + 1, n - 1);
        G->free(d_u), free(poison);
        if (kind == TFM_OP_RELU) {
            float *d_io = dputf(in, n);
            G->activation_forward(d_io, d_io, n, kind);
            cmp("relu forward in place", d_io, out, n);
            G->free(d_io);
        }
        G->free(d_out), G->free(d_din), G->free(d_g);
        free(out), free(din);
    }
    G->free(d_in), G->free(d_dout);
    free(in), free(dout);
}

static void test_dropout(void) {
    size_t n = 100003;
    /* No zeros in the inputs, so a zero in the output means "dropped". */
    float *x = hrand(n, 0.5f, 1.5f), *y = hrand(n, 0.5f, 1.5f);
    float *d_x = dputf(x, n), *d_y = dputf(y, n);
    const uint64_t seeds[2] = {1234567u, 0xfedcba9876543210ull}, streams[2] = {42u, (1ull << 40) + 3};
    for (int s = 0; s < 2; s++) {
        char name[96];
        float *out = hnan(n), *d_out = dputf(out, n);
        G->dropout(d_out, d_x, n, 0.3f, seeds[s], streams[s]);
        C->dropout(out, x, n, 0.3f, seeds[s], streams[s]);
        snprintf(name, sizeof name, "dropout p=0.3 (seed set %d)", s), cmp_exact(name, d_out, out, n);
        float *d_io = dputf(x, n);
        G->dropout(d_io, d_io, n, 0.3f, seeds[s], streams[s]);
        snprintf(name, sizeof name, "dropout p=0.3 in place (seed set %d)", s), cmp_exact(name, d_io, out, n);
        float *res = hdup(x, n), *d_res = dputf(x, n);
        G->residual_dropout(d_res, d_res, d_y, n, 0.25f, seeds[s], streams[s]);
        C->residual_dropout(res, res, y, n, 0.25f, seeds[s], streams[s]);
        snprintf(name, sizeof name, "residual_dropout p=0.25 out=x (seed set %d)", s);
        cmp_exact(name, d_res, res, n);
        G->free(d_out), G->free(d_io), G->free(d_res);
        free(out), free(res);
    }
    /* Pointers 4 bytes past a 16-byte boundary (the one-at-a-time path): the
     * element indices, and so the masks, start again at 0. */
    float *u = hnan(n), *d_u = dputf(u, n);
    G->dropout(d_u + 1, d_x + 1, n - 1, 0.3f, seeds[1], streams[1]);
    C->dropout(u + 1, x + 1, n - 1, 0.3f, seeds[1], streams[1]);
    cmp_exact("dropout p=0.3 unaligned", d_u + 1, u + 1, n - 1);
    G->residual_dropout(d_u + 1, d_x + 1, d_y + 1, n - 1, 0.25f, seeds[1], streams[1]);
    C->residual_dropout(u + 1, x + 1, y + 1, n - 1, 0.25f, seeds[1], streams[1]);
    cmp_exact("residual_dropout p=0.25 unaligned", d_u + 1, u + 1, n - 1);
    G->free(d_u), free(u);
    float *out = hnan(n), *d_out = dputf(out, n);
    G->dropout(d_out, d_x, n, 0.0f, 1, 2);
    C->dropout(out, x, n, 0.0f, 1, 2);
    cmp_exact("dropout p=0 (copy)", d_out, out, n);
    G->residual_dropout(d_out, d_x, d_y, n, 0.0f, 1, 2);
    C->residual_dropout(out, x, y, n, 0.0f, 1, 2);
    cmp_exact("residual_dropout p=0 (add)", d_out, out, n);
    G->free(d_out), G->free(d_x), G->free(d_y);
    free(out), free(x), free(y);
}

/* ------------------------------------------------------------ fused ops */

/* The same zero pattern as the CPU (which elements dropout dropped), and the
 * values within the tolerance (GELU's erff is the device's). */
static void cmp_zeros(const char *name, const float *dev, const float *ref, size_t n) {
    float *got = dget(dev, n);
    size_t zero_diff = 0;
    for (size_t i = 0; i < n; i++) zero_diff += (got[i] == 0.0f) != (ref[i] == 0.0f);
    CHECK(zero_diff == 0, "%s: %zu of %zu elements differ in being zero (the dropout pattern)", name, zero_diff, n);
    tfm_test_close(name, got, ref, n, TOL);
    free(got);
}

/* residual_dropout_layernorm and layernorm_backward_dropout: the register
 * forward (D <= 1024; float4 when D % 4 == 0) and the looped one (D > 1024),
 * p = 0 and 0.1. res is the residual sum of residual_dropout: exact. */
static void test_fused_layernorm(int N, int D, float p) {
    printf("fused layernorm N=%d D=%d p=%g:\n", N, D, p);
    size_t nd = (size_t)N * D;
    const uint64_t seed = 0x5eed5eedull, stream = 4099;
    float *x = hrand(nd, -1, 1), *y = hrand(nd, -1, 1);
    for (size_t i = 0; i < nd; i++) x[i] += 3.0f;
    float *w = hrand(D, 0.5f, 1.5f), *b = hrand(D, -0.5f, 0.5f);
    float *d_x = dputf(x, nd), *d_y = dputf(y, nd), *d_w = dputf(w, D), *d_b = dputf(b, D);
    float *res = hnan(nd), *ln = hnan(nd), *mean = hnan(N), *rstd = hnan(N);
    float *d_res = dputf(res, nd), *d_ln = dputf(ln, nd), *d_mean = dputf(mean, N), *d_rstd = dputf(rstd, N);
    CHECK(G->residual_dropout_layernorm(d_res, d_ln, d_mean, d_rstd, d_x, d_y, d_w, d_b, N, D, 1e-5f, p, seed,
                                        stream, NULL) == 0, "residual_dropout_layernorm filled a NULL keep");
    C->residual_dropout_layernorm(res, ln, mean, rstd, x, y, w, b, N, D, 1e-5f, p, seed, stream, NULL);
    cmp_exact("residual_dropout_layernorm res", d_res, res, nd);
    cmp("residual_dropout_layernorm ln", d_ln, ln, nd);
    cmp("residual_dropout_layernorm mean", d_mean, mean, N);
    cmp("residual_dropout_layernorm rstd", d_rstd, rstd, N);
    float *d_io = dputf(x, nd), *poison = hnan(nd);
    G->upload(d_ln, poison, nd * sizeof(float));
    G->residual_dropout_layernorm(d_io, d_ln, d_mean, d_rstd, d_io, d_y, d_w, d_b, N, D, 1e-5f, p, seed, stream,
                                  NULL);
    cmp_exact("residual_dropout_layernorm res (res aliases x)", d_io, res, nd);
    cmp("residual_dropout_layernorm ln (res aliases x)", d_ln, ln, nd);

    /* With a keep in BF16 mode (backend.h): filled where the register kernels
     * take float4 rows of D % 8 == 0, with exactly the bf16 rounding of the
     * op's own ln (what linear_forward_keep would convert); then a linear
     * told keep_filled multiplies it: `ln` is NaN by then, so its output can
     * only be right from the keep (within TOL of the CPU on the rounded ln). */
    CHECK(G->set_matmul_precision(TFM_MATMUL_BF16), "bf16 mode refused");
    int O = 512;
    size_t kb = G->linear_keep_bytes(N, D, O);
    void *d_keep = G->alloc(kb);
    int filled = G->residual_dropout_layernorm(d_res, d_ln, d_mean, d_rstd, d_x, d_y, d_w, d_b, N, D, 1e-5f, p,
                                               seed, stream, d_keep);
    int expect = D % 8 == 0 && D <= 1024;
    CHECK(filled == expect, "residual_dropout_layernorm N=%d D=%d: keep %s", N, D, filled ? "filled" : "not filled");
    if (filled) {
        float *got_ln = dget(d_ln, nd), *want = hround(got_ln, nd), *keep = dget_bf16(d_keep, nd);
        tfm_test_close("residual_dropout_layernorm keep = bf16(ln)", keep, want, nd, 0.0);
        float *wl = hrand((size_t)O * D, -0.5f, 0.5f), *bl = hrand(O, -1, 1), *out = hnan((size_t)N * O);
        float *d_wl = dputf(wl, (size_t)O * D), *d_bl = dputf(bl, O), *d_out = dputf(out, (size_t)N * O);
        G->upload(d_ln, poison, nd * sizeof(float));
        G->linear_forward_keep(d_out, d_ln, d_wl, d_bl, N, D, O, d_keep, 1);
        float *rwl = hround(wl, (size_t)O * D);
        C->linear_forward(out, want, rwl, bl, N, D, O);
        /* gemm.cu's rule for when bf16 copies pay (few rows: the linear reads ln, NaN by now) */
        if (2.0 * N * D * O >= 512.0 * ((double)N * D + (double)O * D))
            cmp("linear_forward_keep on the filled keep", d_out, out, (size_t)N * O);
        free(rwl), free(wl), free(bl), free(out), free(got_ln), free(want), free(keep);
        G->free(d_wl), G->free(d_bl), G->free(d_out);
    }
    G->free(d_keep);
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");

    /* Backward from the CPU's saved statistics; dw, db start from random values. */
    float *dout = hrand(nd, -1, 1), *dw = hrand(D, -1, 1), *db = hrand(D, -1, 1);
    float *din = hnan(nd), *dd = hnan(nd);
    float *d_dout = dputf(dout, nd), *d_dw = dputf(dw, D), *d_db = dputf(db, D), *d_din = dputf(din, nd);
    float *d_dd = dputf(dd, nd), *d_r = dputf(res, nd), *d_m = dputf(mean, N), *d_s = dputf(rstd, N);
    G->layernorm_backward_dropout(d_din, d_dd, d_dw, d_db, d_dout, d_r, d_m, d_s, d_w, N, D, p, seed, stream);
    C->layernorm_backward_dropout(din, dd, dw, db, dout, res, mean, rstd, w, N, D, p, seed, stream);
    cmp("layernorm_backward_dropout din", d_din, din, nd);
    cmp_zeros("layernorm_backward_dropout ddrop", d_dd, dd, nd);
    cmp("layernorm_backward_dropout dw (+=)", d_dw, dw, D);
    cmp("layernorm_backward_dropout db (+=)", d_db, db, D);
    G->free(d_x), G->free(d_y), G->free(d_w), G->free(d_b), G->free(d_res), G->free(d_ln), G->free(d_mean);
    G->free(d_rstd), G->free(d_io), G->free(d_dout), G->free(d_dw), G->free(d_db), G->free(d_din), G->free(d_dd);
    G->free(d_r), G->free(d_m), G->free(d_s);
    free(x), free(y), free(w), free(b), free(res), free(ln), free(mean), free(rstd), free(dout), free(dw), free(db);
    free(din), free(dd), free(poison);
}

/* activation_dropout_forward and _backward, ReLU (exact: the same roundings)
 * and GELU (the dropout pattern exact), aligned (float4) and not, in place. */
static void test_fused_activation(float p) {
    size_t n = 37 * 1000 + 3;
    const uint64_t seed = 77, stream = (1ull << 40) + 5;
    float *in = hrand(n, -4, 4), *dout = hrand(n, -1, 1);
    float *d_in = dputf(in, n), *d_dout = dputf(dout, n);
    static const char *names[2] = {"relu", "gelu"};
    for (int k = 0; k < 2; k++) {
        tfm_act_kind kind = (tfm_act_kind)k;
        char name[96];
        float *out = hnan(n), *d_out = dputf(out, n);
        G->activation_dropout_forward(d_out, d_in, n, kind, p, seed, stream);
        C->activation_dropout_forward(out, in, n, kind, p, seed, stream);
        snprintf(name, sizeof name, "activation_dropout_forward %s p=%g", names[k], p);
        if (kind == TFM_OP_RELU) cmp_exact(name, d_out, out, n);
        else cmp_zeros(name, d_out, out, n);
        float *d_io = dputf(in, n);
        G->activation_dropout_forward(d_io, d_io, n, kind, p, seed, stream);
        snprintf(name, sizeof name, "activation_dropout_forward %s p=%g in place", names[k], p);
        cmp_zeros(name, d_io, out, n);
        float *din = hnan(n), *d_din = dputf(din, n);
        G->activation_dropout_backward(d_din, d_dout, d_in, n, kind, p, seed, stream);
        C->activation_dropout_backward(din, dout, in, n, kind, p, seed, stream);
        snprintf(name, sizeof name, "activation_dropout_backward %s p=%g", names[k], p);
        if (kind == TFM_OP_RELU) cmp_exact(name, d_din, din, n);
        else cmp_zeros(name, d_din, din, n);
        float *d_g = dputf(dout, n);
        G->activation_dropout_backward(d_g, d_g, d_in, n, kind, p, seed, stream);
        snprintf(name, sizeof name, "activation_dropout_backward %s p=%g in place", names[k], p);
        cmp_zeros(name, d_g, din, n);
        /* 4 bytes past a 16-byte boundary: the one-at-a-time path; indices from 0 again. */
        float *poison = hnan(n), *u = hnan(n), *d_u = dputf(poison, n);
        G->activation_dropout_forward(d_u + 1, d_in + 1, n - 1, kind, p, seed, stream);
        C->activation_dropout_forward(u + 1, in + 1, n - 1, kind, p, seed, stream);
        snprintf(name, sizeof name, "activation_dropout_forward %s p=%g unaligned", names[k], p);
        cmp_zeros(name, d_u + 1, u + 1, n - 1);
        G->upload(d_u, poison, n * sizeof(float));
        G->activation_dropout_backward(d_u + 1, d_dout + 1, d_in + 1, n - 1, kind, p, seed, stream);
        C->activation_dropout_backward(u + 1, dout + 1, in + 1, n - 1, kind, p, seed, stream);
        snprintf(name, sizeof name, "activation_dropout_backward %s p=%g unaligned", names[k], p);
        cmp_zeros(name, d_u + 1, u + 1, n - 1);
        G->free(d_out), G->free(d_io), G->free(d_din), G->free(d_g), G->free(d_u);
        free(out), free(din), free(poison), free(u);
    }
    G->free(d_in), G->free(d_dout);
    free(in), free(dout);
}

/* Two device tensors with the same bits (the same route run twice). */
static void cmp_runs(const char *name, const float *d_a, const float *d_b, size_t n) {
    float *a = dget(d_a, n), *b = dget(d_b, n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    printf("%-64s again: bits: %zu of %zu differ\n", name, diff, n);
    CHECK(diff == 0, "%s: two runs must give the same bits", name);
    free(a), free(b);
}

/* The LayerNorm backward's two routes (src/cuda/fused.cu): the one-pass
 * kernel (din, ddrop and the partial sums of dw, db from one read of dout and
 * the input; chunks of 64 rows) and, with TFM_LN_FUSED_DPARAMS=0, the din
 * kernel then the two-pass column sums. Both, for layernorm_backward (acc 0
 * and 1) and layernorm_backward_dropout (p 0.1), against the CPU; the
 * one-pass route twice, the same bits. Sizes: many chunks and a partial last
 * one, each row size of the register kernel (D <= 128, 256, 512, 1024; at
 * 1024 without the next row's prefetch), float4 with and without a full row,
 * scalar loads (odd D, or din 4 bytes past a 16-byte boundary: `off`). */
static void test_layernorm_routes(int N, int D, int off) {
    size_t nd = (size_t)N * D;
    const uint64_t seed = 0xabcdefull, stream = 7;
    const float p = 0.1f;
    float *in = hrand(nd, -1, 1), *dout = hrand(nd, -1, 1);
    for (size_t i = 0; i < nd; i++) in[i] += 3.0f;
    float *w = hrand(D, 0.5f, 1.5f), *b = hrand(D, -0.5f, 0.5f), *dw0 = hrand(D, -1, 1), *db0 = hrand(D, -1, 1);
    float *tmp = hnan(nd), *mean = hnan(N), *rstd = hnan(N);
    C->layernorm_forward(tmp, mean, rstd, in, w, b, N, D, 1e-5f);
    float *d_in = dputf(in, nd), *d_dout = dputf(dout, nd), *d_w = dputf(w, D), *d_m = dputf(mean, N);
    float *d_s = dputf(rstd, N);
    /* CPU references: acc 0, acc 1 (din from din0), dropout. */
    float *din0 = hrand(nd, -1, 1);
    float *r_din[3], *r_dw[3], *r_db[3], *r_dd = hnan(nd);
    for (int k = 0; k < 3; k++) r_din[k] = k == 1 ? hdup(din0, nd) : hnan(nd), r_dw[k] = hdup(dw0, D), r_db[k] = hdup(db0, D);
    C->layernorm_backward(r_din[0], r_dw[0], r_db[0], dout, in, mean, rstd, w, N, D, 0);
    C->layernorm_backward(r_din[1], r_dw[1], r_db[1], dout, in, mean, rstd, w, N, D, 1);
    C->layernorm_backward_dropout(r_din[2], r_dd, r_dw[2], r_db[2], dout, in, mean, rstd, w, N, D, p, seed, stream);

    const char *prev = getenv("TFM_LN_FUSED_DPARAMS");
    char *saved = prev ? strdup(prev) : NULL;
    static const char *routes[2] = {"one-pass", "two-pass"};
    float *g_din[2][3], *g_dw[2][3], *g_db[2][3], *g_dd[2];
    for (int run = 0; run < 3; run++) { /* one-pass, two-pass, one-pass again */
        int route = run == 1;
        setenv("TFM_LN_FUSED_DPARAMS", route ? "0" : "1", 1);
        float *dins[3], *dws[3], *dbs[3], *dd, *base[4];
        for (int k = 0; k < 3; k++) {
            float *h = k == 1 ? hdup(din0, nd) : hnan(nd), *big = hnan(nd + 1);
            memcpy(big + off, h, nd * sizeof(float));
            base[k] = dputf(big, nd + 1), dins[k] = base[k] + off;
            dws[k] = dputf(dw0, D), dbs[k] = dputf(db0, D);
            free(h), free(big);
        }
        float *pn = hnan(nd + 1);
        base[3] = dputf(pn, nd + 1), dd = base[3] + off;
        free(pn);
        G->layernorm_backward(dins[0], dws[0], dbs[0], d_dout, d_in, d_m, d_s, d_w, N, D, 0);
        G->layernorm_backward(dins[1], dws[1], dbs[1], d_dout, d_in, d_m, d_s, d_w, N, D, 1);
        G->layernorm_backward_dropout(dins[2], dd, dws[2], dbs[2], d_dout, d_in, d_m, d_s, d_w, N, D, p, seed, stream);
        static const char *ops[3] = {"layernorm_backward acc=0", "layernorm_backward acc=1", "layernorm_backward_dropout"};
        for (int k = 0; k < 3; k++) {
            char name[128];
            if (run < 2) {
                snprintf(name, sizeof name, "%s %s din", routes[route], ops[k]), cmp(name, dins[k], r_din[k], nd);
                snprintf(name, sizeof name, "%s %s dw (+=)", routes[route], ops[k]), cmp(name, dws[k], r_dw[k], D);
                snprintf(name, sizeof name, "%s %s db (+=)", routes[route], ops[k]), cmp(name, dbs[k], r_db[k], D);
                g_din[run][k] = dins[k], g_dw[run][k] = dws[k], g_db[run][k] = dbs[k];
            } else {
                snprintf(name, sizeof name, "one-pass %s din", ops[k]), cmp_runs(name, dins[k], g_din[0][k], nd);
                snprintf(name, sizeof name, "one-pass %s dw", ops[k]), cmp_runs(name, dws[k], g_dw[0][k], D);
                snprintf(name, sizeof name, "one-pass %s db", ops[k]), cmp_runs(name, dbs[k], g_db[0][k], D);
            }
        }
        if (run < 2) {
            char name[128];
            snprintf(name, sizeof name, "%s layernorm_backward_dropout ddrop", routes[route]);
            cmp_zeros(name, dd, r_dd, nd);
            g_dd[run] = dd;
        } else {
            cmp_runs("one-pass layernorm_backward_dropout ddrop", dd, g_dd[0], nd);
        }
        /* Keep the first two runs' buffers (compared above); free the third's. */
        if (run == 2) {
            for (int k = 0; k < 4; k++) G->free(base[k]);
            for (int k = 0; k < 3; k++) G->free(dws[k]), G->free(dbs[k]);
        }
    }
    for (int route = 0; route < 2; route++) {
        for (int k = 0; k < 3; k++) G->free(g_din[route][k] - off), G->free(g_dw[route][k]), G->free(g_db[route][k]);
        G->free(g_dd[route] - off);
    }
    if (saved) setenv("TFM_LN_FUSED_DPARAMS", saved, 1), free(saved);
    else unsetenv("TFM_LN_FUSED_DPARAMS");
    G->free(d_in), G->free(d_dout), G->free(d_w), G->free(d_m), G->free(d_s);
    for (int k = 0; k < 3; k++) free(r_din[k]), free(r_dw[k]), free(r_db[k]);
    free(in), free(dout), free(w), free(b), free(dw0), free(db0), free(tmp), free(mean), free(rstd), free(din0);
    free(r_dd);
}

static void test_fused(void) {
    static const int sizes[][2] = {{37, 24},  {37, 257},  {300, 512},  {7, 511},
                                   {5, 1024}, {3, 1025},  {37, 1337},  {2000, 512}};
    for (int k = 0; k < 2; k++) {
        float p = k ? 0.1f : 0.0f;
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) test_fused_layernorm(sizes[i][0], sizes[i][1], p);
        test_fused_activation(p);
    }
    static const int routes[][3] = {{2001, 512, 0}, {1300, 1024, 0}, {999, 300, 0}, {517, 97, 0},
                                    {65, 256, 0},   {130, 128, 0},   {517, 512, 1}, {70, 2000, 0}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        printf("layernorm backward routes N=%d D=%d%s:\n", routes[i][0], routes[i][1],
               routes[i][2] ? " din, ddrop 4 bytes off" : "");
        test_layernorm_routes(routes[i][0], routes[i][1], routes[i][2]);
    }
}

/* -------------------------------------------------------------- attention */

typedef struct attn_case {
    const char *name;
    int B, H, Tq, Tk, dk, dv, causal, q_offset;
    int pad;     /* 0 none; 1 random keys masked, and every key of the last batch row */
    float dropout;
    int dense;   /* 1: rows of exactly H*d, batches of exactly T rows (aligned float4 loads) */
} attn_case;

/* Strided q/k/v/out: each row wider than H*d, each batch longer than T rows
 * (unless dense). Returns the element count; *row and *batch the strides. */
static size_t attn_layout(int B, int T, int H, int d, int dense, long *row, long *batch) {
    *row = (long)H * d + (dense ? 0 : 3);
    *batch = (long)T * *row + (dense ? 0 : 5);
    return (size_t)B * *batch;
}

/* A strided tensor: `poison` NaN or random values inside the heads, GAP elsewhere. */
static float *attn_tensor(int B, int T, int H, int d, long row, long batch, size_t n, int poison) {
    float *x = hfill(n, GAP);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int e = 0; e < H * d; e++) x[b * batch + t * row + e] = poison ? NAN : urand(-1.5f, 1.5f);
    return x;
}

static void test_attention(const attn_case *ac) {
    tfm_attn_dims d;
    memset(&d, 0, sizeof d);
    d.B = ac->B, d.H = ac->H, d.Tq = ac->Tq, d.Tk = ac->Tk, d.dk = ac->dk, d.dv = ac->dv;
    d.causal = ac->causal, d.q_offset = ac->q_offset;
    d.scale = 1.0 / sqrt((double)ac->dk);
    d.dropout = ac->dropout, d.seed = 987654321u, d.stream = 17;
    size_t nq = attn_layout(d.B, d.Tq, d.H, d.dk, ac->dense, &d.q_row, &d.q_batch);
    size_t nk = attn_layout(d.B, d.Tk, d.H, d.dk, ac->dense, &d.k_row, &d.k_batch);
    size_t nv = attn_layout(d.B, d.Tk, d.H, d.dv, ac->dense, &d.v_row, &d.v_batch);
    size_t no = attn_layout(d.B, d.Tq, d.H, d.dv, ac->dense, &d.o_row, &d.o_batch);
    size_t np = (size_t)d.B * d.H * d.Tq * d.Tk;

    uint8_t *pad = NULL, *d_pad = NULL;
    if (ac->pad) {
        d.key_pad_stride = d.Tk + 2;
        size_t npad = (size_t)d.B * d.key_pad_stride;
        pad = xmalloc(npad);
        for (size_t i = 0; i < npad; i++) pad[i] = tfm_rng_next_uniform(&g_rng) < 0.3f;
        for (int j = 0; j < d.Tk; j++) pad[(size_t)(d.B - 1) * d.key_pad_stride + j] = 1; /* fully masked rows */
        d_pad = dput(pad, npad);
    }

    float *q = attn_tensor(d.B, d.Tq, d.H, d.dk, d.q_row, d.q_batch, nq, 0);
    float *k = attn_tensor(d.B, d.Tk, d.H, d.dk, d.k_row, d.k_batch, nk, 0);
    float *v = attn_tensor(d.B, d.Tk, d.H, d.dv, d.v_row, d.v_batch, nv, 0);
    float *dout = attn_tensor(d.B, d.Tq, d.H, d.dv, d.o_row, d.o_batch, no, 0);
    float *out = attn_tensor(d.B, d.Tq, d.H, d.dv, d.o_row, d.o_batch, no, 1);
    float *probs = hnan(np), *scratch = hnan(np);
    float *d_q = dputf(q, nq), *d_k = dputf(k, nk), *d_v = dputf(v, nv), *d_dout = dputf(dout, no);
    float *d_out = dputf(out, no), *d_probs = dputf(probs, np), *d_scratch = dputf(scratch, np);

    /* Forward. Without dropout, scratch may be NULL (the decoder passes NULL). */
    tfm_attn_dims dg = d;
    dg.key_pad = d_pad;
    d.key_pad = pad;
    float *fs_g = d.dropout > 0 ? d_scratch : NULL, *fs_c = d.dropout > 0 ? scratch : NULL;
    G->attention_forward(d_out, d_probs, fs_g, d_q, d_k, d_v, &dg);
    C->attention_forward(out, probs, fs_c, q, k, v, &d);
    char name[128];
    snprintf(name, sizeof name, "attention %s out", ac->name), cmp(name, d_out, out, no);
    snprintf(name, sizeof name, "attention %s probs", ac->name), cmp(name, d_probs, probs, np);
    if (d.dropout > 0) {
        /* The dropped-out probabilities: the same elements dropped as on the CPU. */
        float *gs = dget(d_scratch, np);
        size_t pattern = 0;
        for (size_t i = 0; i < np; i++) pattern += (gs[i] == 0.0f) != (scratch[i] == 0.0f);
        snprintf(name, sizeof name, "attention %s dropped probs", ac->name);
        tfm_test_close(name, gs, scratch, np, TOL);
        printf("%-48s zero pattern: %zu of %zu differ\n", name, pattern, np);
        CHECK(pattern == 0, "%s: dropout mask differs from the CPU", name);
        free(gs);
    }
    /* The GPU's own masking: masked keys exactly 0, fully masked rows give exact zeros. */
    float *gp = dget(d_probs, np), *go = dget(d_out, no);
    int exact = 1;
    long masked_rows = 0;
    for (int b = 0; b < d.B; b++)
        for (int h = 0; h < d.H; h++)
            for (int i = 0; i < d.Tq; i++) {
                int live = 0;
                for (int j = 0; j < d.Tk; j++) {
                    int m = (d.causal && j > i + d.q_offset) || (pad && pad[(size_t)b * d.key_pad_stride + j]);
                    if (m) exact &= gp[(((size_t)b * d.H + h) * d.Tq + i) * d.Tk + j] == 0.0f;
                    live |= !m;
                }
                if (!live) {
                    masked_rows++;
                    for (int e = 0; e < d.dv; e++)
                        exact &= go[b * d.o_batch + (long)i * d.o_row + h * d.dv + e] == 0.0f;
                }
            }
    snprintf(name, sizeof name, "attention %s masking", ac->name);
    printf("%-48s masked probs exactly 0, %ld fully masked rows all 0: %s\n", name, masked_rows,
           exact ? "yes" : "NO");
    CHECK(exact, "%s: masked probabilities or fully masked rows are not exactly 0", ac->name);
    free(gp), free(go);

    /* Backward from the CPU's probabilities on both sides. */
    float *dq = attn_tensor(d.B, d.Tq, d.H, d.dk, d.q_row, d.q_batch, nq, 1);
    float *dk = attn_tensor(d.B, d.Tk, d.H, d.dk, d.k_row, d.k_batch, nk, 1);
    float *dv = attn_tensor(d.B, d.Tk, d.H, d.dv, d.v_row, d.v_batch, nv, 1);
    float *bs = hnan(np);
    float *d_dq = dputf(dq, nq), *d_dk = dputf(dk, nk), *d_dv = dputf(dv, nv), *d_bs = dputf(bs, np);
    float *d_p = dputf(probs, np);
    G->attention_backward(d_dq, d_dk, d_dv, d_bs, d_dout, d_p, d_q, d_k, d_v, &dg);
    C->attention_backward(dq, dk, dv, bs, dout, probs, q, k, v, &d);
    snprintf(name, sizeof name, "attention %s dq", ac->name), cmp(name, d_dq, dq, nq);
    snprintf(name, sizeof name, "attention %s dk", ac->name), cmp(name, d_dk, dk, nk);
    snprintf(name, sizeof name, "attention %s dv", ac->name), cmp(name, d_dv, dv, nv);

    G->free(d_q), G->free(d_k), G->free(d_v), G->free(d_dout), G->free(d_out), G->free(d_probs);
    G->free(d_scratch), G->free(d_dq), G->free(d_dk), G->free(d_dv), G->free(d_bs), G->free(d_p), G->free(d_pad);
    free(q), free(k), free(v), free(dout), free(out), free(probs), free(scratch), free(dq), free(dk), free(dv);
    free(bs), free(pad);
}

/* The tiled ops (ops_decl.h: lse [B, H, Tq] instead of the probabilities)
 * on the shapes of test_attention, against the CPU's materialised ops:
 * out, dq, dk, dv from tfm_attention_forward / _backward, lse computed here in
 * double from the same scores. fp32 mode: CUDA cores, within TOL (dropout
 * must drop the CPU's elements for that). bf16: BF16 mode, tensor cores: the
 * CPU runs on q, k, v, dout rounded to bf16 (ties to even), which shows that
 * the GPU rounds its operands so; what remains is the GPU's rounding of P and
 * dS to bf16 for the second products, within TOL_ATTN_BF16 of the largest
 * element (measured on an H200: at most 4.7e-3, dk of Tq = Tk = 150; fp32
 * mode at most 9.8e-7). Exact everywhere: a fully masked
 * row has out 0, lse -inf and dq 0; a padded key has dk, dv 0; two runs give
 * the same bits (no atomics). Back to fp32 mode after. */
#define TOL_ATTN_BF16 1e-2

/* Tiled attention forwards that filled their output keep. */
static int g_attn_keeps_filled;

static void test_attention_tiled(const attn_case *ac, int bf16) {
    tfm_attn_dims d;
    memset(&d, 0, sizeof d);
    d.B = ac->B, d.H = ac->H, d.Tq = ac->Tq, d.Tk = ac->Tk, d.dk = ac->dk, d.dv = ac->dv;
    d.causal = ac->causal, d.q_offset = ac->q_offset;
    d.scale = 1.0 / sqrt((double)ac->dk);
    d.dropout = ac->dropout, d.seed = 123456789u, d.stream = 5;
    size_t nq = attn_layout(d.B, d.Tq, d.H, d.dk, ac->dense, &d.q_row, &d.q_batch);
    size_t nk = attn_layout(d.B, d.Tk, d.H, d.dk, ac->dense, &d.k_row, &d.k_batch);
    size_t nv = attn_layout(d.B, d.Tk, d.H, d.dv, ac->dense, &d.v_row, &d.v_batch);
    size_t no = attn_layout(d.B, d.Tq, d.H, d.dv, ac->dense, &d.o_row, &d.o_batch);
    size_t np = (size_t)d.B * d.H * d.Tq * d.Tk, nl = (size_t)d.B * d.H * d.Tq;

    uint8_t *pad = NULL, *d_pad = NULL;
    if (ac->pad) {
        d.key_pad_stride = d.Tk + 2;
        size_t npad = (size_t)d.B * d.key_pad_stride;
        pad = xmalloc(npad);
        for (size_t i = 0; i < npad; i++) pad[i] = tfm_rng_next_uniform(&g_rng) < 0.3f;
        for (int j = 0; j < d.Tk; j++) pad[(size_t)(d.B - 1) * d.key_pad_stride + j] = 1; /* fully masked rows */
        d_pad = dput(pad, npad);
    }
    float *q = attn_tensor(d.B, d.Tq, d.H, d.dk, d.q_row, d.q_batch, nq, 0);
    float *k = attn_tensor(d.B, d.Tk, d.H, d.dk, d.k_row, d.k_batch, nk, 0);
    float *v = attn_tensor(d.B, d.Tk, d.H, d.dv, d.v_row, d.v_batch, nv, 0);
    float *dout = attn_tensor(d.B, d.Tq, d.H, d.dv, d.o_row, d.o_batch, no, 0);
    float *out = attn_tensor(d.B, d.Tq, d.H, d.dv, d.o_row, d.o_batch, no, 1);
    float *dq = attn_tensor(d.B, d.Tq, d.H, d.dk, d.q_row, d.q_batch, nq, 1);
    float *dk = attn_tensor(d.B, d.Tk, d.H, d.dk, d.k_row, d.k_batch, nk, 1);
    float *dv = attn_tensor(d.B, d.Tk, d.H, d.dv, d.v_row, d.v_batch, nv, 1);
    float *lse = hnan(nl);
    float *d_q = dputf(q, nq), *d_k = dputf(k, nk), *d_v = dputf(v, nv), *d_dout = dputf(dout, no);
    float *d_out = dputf(out, no), *d_dq = dputf(dq, nq), *d_dk = dputf(dk, nk), *d_dv = dputf(dv, nv);
    float *d_lse = dputf(lse, nl);
    tfm_attn_dims dg = d;
    dg.key_pad = d_pad;
    d.key_pad = pad;
    size_t ns = G->attention_tiled_scratch(&dg);
    float *scr = hnan(ns ? ns : 1), *d_scr = dputf(scr, ns ? ns : 1);

    /* Twice: the second run's bits must equal the first's. */
    float *got[2][5];
    CHECK(G->set_matmul_precision(bf16 ? TFM_MATMUL_BF16 : TFM_MATMUL_FP32), "precision refused");
    /* The second run with an output keep (ops.h: out_keep): where the
     * forward says it filled it, it holds out rounded to bf16, bit for bit. */
    size_t nkeep = (size_t)d.B * d.Tq * d.H * d.dv;
    void *d_keep = G->alloc(nkeep * sizeof(uint16_t));
    int filled = 0;
    for (int run = 0; run < 2; run++) {
        dg.out_keep = run ? d_keep : NULL;
        filled = G->attention_tiled_forward(d_out, d_lse, d_scr, ns, d_q, d_k, d_v, &dg);
        dg.out_keep = NULL;
        CHECK(!(run == 0 && filled), "tiled: a forward without a keep said it filled one");
        G->attention_tiled_backward(d_dq, d_dk, d_dv, d_scr, ns, d_dout, d_out, d_lse, d_q, d_k, d_v, &dg);
        got[run][0] = dget(d_out, no), got[run][1] = dget(d_lse, nl), got[run][2] = dget(d_dq, nq);
        got[run][3] = dget(d_dk, nk), got[run][4] = dget(d_dv, nv);
    }
    if (filled) {
        float *keep = dget_bf16(d_keep, nkeep), *want = hround(got[0][0], no);
        char kname[160];
        snprintf(kname, sizeof kname, "tiled bf16 %s out keep = bf16(out)", ac->name);
        tfm_test_close(kname, keep, want, nkeep, 0.0);
        g_attn_keeps_filled++;
        free(keep), free(want);
    }
    G->free(d_keep);
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    const size_t sizes[5] = {no, nl, nq, nk, nv};
    int same = 1;
    for (int t = 0; t < 5; t++) same &= memcmp(got[0][t], got[1][t], sizes[t] * sizeof(float)) == 0;
    char name[160];
    const char *mode = bf16 ? "bf16" : "fp32";
    snprintf(name, sizeof name, "tiled %s %s", mode, ac->name);
    printf("%-48s two runs bit-identical: %s\n", name, same ? "yes" : "NO");
    CHECK(same, "%s: results differ between runs", name);

    /* The CPU reference (on rounded operands in bf16 mode). */
    float *rq = bf16 ? hround(q, nq) : hdup(q, nq), *rk = bf16 ? hround(k, nk) : hdup(k, nk);
    float *rv = bf16 ? hround(v, nv) : hdup(v, nv), *rdout = bf16 ? hround(dout, no) : hdup(dout, no);
    float *probs = hnan(np), *scratch = hnan(np), *bs = hnan(np);
    C->attention_forward(out, probs, scratch, rq, rk, rv, &d);
    C->attention_backward(dq, dk, dv, bs, rdout, probs, rq, rk, rv, &d);
    double tol = bf16 ? TOL_ATTN_BF16 : TOL;
    snprintf(name, sizeof name, "tiled %s %s out", mode, ac->name), tfm_test_close(name, got[0][0], out, no, tol);
    snprintf(name, sizeof name, "tiled %s %s dq", mode, ac->name), tfm_test_close(name, got[0][2], dq, nq, tol);
    snprintf(name, sizeof name, "tiled %s %s dk", mode, ac->name), tfm_test_close(name, got[0][3], dk, nk, tol);
    snprintf(name, sizeof name, "tiled %s %s dv", mode, ac->name), tfm_test_close(name, got[0][4], dv, nv, tol);

    /* lse in double; -inf (exactly where every key is masked) compared as a pattern. */
    float *ref = hnan(nl), *gl = got[0][1];
    size_t inf_diff = 0;
    int exact = 1;
    long masked_rows = 0;
    for (int b = 0; b < d.B; b++)
        for (int h = 0; h < d.H; h++)
            for (int i = 0; i < d.Tq; i++) {
                size_t r = ((size_t)b * d.H + h) * d.Tq + i;
                double mx = -INFINITY, sum = 0;
                double *s = xmalloc((size_t)(d.Tk > 0 ? d.Tk : 1) * sizeof *s);
                for (int j = 0; j < d.Tk; j++) {
                    int m = (d.causal && j > i + d.q_offset) || (pad && pad[(size_t)b * d.key_pad_stride + j]);
                    s[j] = -INFINITY;
                    if (m) continue;
                    double acc = 0;
                    for (int e = 0; e < d.dk; e++)
                        acc += (double)rq[b * d.q_batch + (long)i * d.q_row + h * d.dk + e] *
                               rk[b * d.k_batch + (long)j * d.k_row + h * d.dk + e];
                    s[j] = acc * d.scale;
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < d.Tk; j++)
                    if (s[j] != -INFINITY) sum += exp(s[j] - mx);
                free(s);
                ref[r] = mx == -INFINITY ? -INFINITY : (float)(mx + log(sum));
                inf_diff += isinf(ref[r]) != isinf(gl[r]);
                if (isinf(ref[r])) {
                    masked_rows++;
                    const float *o = got[0][0] + b * d.o_batch + (long)i * d.o_row + h * d.dv;
                    const float *g = got[0][2] + b * d.q_batch + (long)i * d.q_row + h * d.dk;
                    for (int e = 0; e < d.dv; e++) exact &= o[e] == 0.0f;
                    for (int e = 0; e < d.dk; e++) exact &= g[e] == 0.0f;
                }
                if (isinf(ref[r]) && isinf(gl[r])) ref[r] = gl[r] = 0.0f;
            }
    snprintf(name, sizeof name, "tiled %s %s lse", mode, ac->name);
    tfm_test_close(name, gl, ref, nl, tol);
    CHECK(inf_diff == 0, "%s: %zu rows -inf on one side only", name, inf_diff);
    long padded = 0;
    if (pad)
        for (int b = 0; b < d.B; b++)
            for (int j = 0; j < d.Tk; j++) {
                if (!pad[(size_t)b * d.key_pad_stride + j]) continue;
                padded++;
                for (int e = 0; e < d.H * d.dk; e++) exact &= got[0][3][b * d.k_batch + (long)j * d.k_row + e] == 0.0f;
                for (int e = 0; e < d.H * d.dv; e++) exact &= got[0][4][b * d.v_batch + (long)j * d.v_row + e] == 0.0f;
            }
    snprintf(name, sizeof name, "tiled %s %s masking", mode, ac->name);
    printf("%-48s %ld fully masked rows: out, dq 0; %ld padded keys: dk, dv 0: %s\n", name, masked_rows, padded,
           exact ? "yes" : "NO");
    CHECK(exact, "%s: masked rows or padded keys are not exactly 0", name);

    for (int run = 0; run < 2; run++)
        for (int t = 0; t < 5; t++) free(got[run][t]);
    G->free(d_q), G->free(d_k), G->free(d_v), G->free(d_dout), G->free(d_out), G->free(d_dq), G->free(d_dk);
    G->free(d_dv), G->free(d_lse), G->free(d_scr), G->free(d_pad);
    free(q), free(k), free(v), free(dout), free(out), free(dq), free(dk), free(dv), free(lse), free(scr);
    free(rq), free(rk), free(rv), free(rdout), free(probs), free(scratch), free(bs), free(ref), free(pad);
}

/* ------------------------------------------------- cross-entropy, softmax */

static void test_xent(float smoothing) {
    int N = 67, V = 1031, pad_id = 1;
    size_t nv = (size_t)N * V;
    float *logits = hrand(nv, -4, 4), *d_logits = dputf(logits, nv);
    int32_t *t = hids(N, V);
    for (int n = 0; n < N; n += 7) t[n] = pad_id; /* pad rows count nothing */
    t[3] = 0, t[4] = V - 1;                        /* the first and last classes */
    int32_t *d_t = dput(t, (size_t)N * sizeof *t);
    float *lse = hnan(N), *d_lse = dputf(lse, N);
    long cg = -1, cc = -1;
    double lg = G->xent_forward(d_lse, d_logits, d_t, N, V, pad_id, smoothing, &cg);
    double lc = C->xent_forward(lse, logits, t, N, V, pad_id, smoothing, &cc);
    char name[96];
    float lgf = (float)lg, lcf = (float)lc;
    snprintf(name, sizeof name, "xent_forward eps=%.1f loss", smoothing), tfm_test_close(name, &lgf, &lcf, 1, TOL);
    snprintf(name, sizeof name, "xent_forward eps=%.1f lse", smoothing), cmp(name, d_lse, lse, N);
    CHECK(cg == cc, "xent count: cuda %ld, cpu %ld (pad rows must not count)", cg, cc);
    printf("%-48s cuda %ld, cpu %ld\n", "xent_forward count", cg, cc);

    float scale = 1.0f / (float)cc;
    float *g = hnan(nv), *d_g = dputf(g, nv);
    G->xent_backward(d_g, d_logits, d_lse, d_t, N, V, pad_id, smoothing, scale);
    C->xent_backward(g, logits, lse, t, N, V, pad_id, smoothing, scale);
    snprintf(name, sizeof name, "xent_backward eps=%.1f dlogits", smoothing), cmp(name, d_g, g, nv);
    float *d_alias = dputf(logits, nv); /* dlogits may alias logits */
    G->xent_backward(d_alias, d_alias, d_lse, d_t, N, V, pad_id, smoothing, scale);
    snprintf(name, sizeof name, "xent_backward eps=%.1f in place", smoothing), cmp(name, d_alias, g, nv);
    /* dlogits 4 bytes off logits' alignment: the one-at-a-time path. */
    float *g_odd = hnan(nv + 1), *d_odd = dputf(g_odd, nv + 1);
    G->xent_backward(d_odd + 1, d_logits, d_lse, d_t, N, V, pad_id, smoothing, scale);
    snprintf(name, sizeof name, "xent_backward eps=%.1f misaligned", smoothing), cmp(name, d_odd + 1, g, nv);
    G->free(d_odd), free(g_odd);

    G->free(d_logits), G->free(d_t), G->free(d_lse), G->free(d_g), G->free(d_alias);
    free(logits), free(t), free(lse), free(g);
}

/* logits_backward (backend.h) against the CPU's composition (xent_backward,
 * then linear_backward), with dlogits aliasing logits as in the model, pad
 * rows (every 7th), the first and last classes as targets, and din = (NaN
 * before: never read) or +=; dw always +=. fp32: within TOL. bf16 (BF16 mode;
 * back to fp32 after): where the bf16 copy pays (`pays`: N large enough, the
 * gradient written to bf16 straight from the logits), against the CPU on
 * dlogits, in and w rounded to bf16 within TOL, as test_gemm_bf16; where it
 * does not (few rows: the composition, FAST_16BF on the fp32 operands),
 * against the unrounded CPU within 1e-2, as test_gemm_precision. V = 1001:
 * rows of logits not 16-byte aligned (scalar loads) and the copy's rows
 * padded to 1008; V = 37000: the model's float4 loads. */
static void test_logits_backward(int N, int D, int V, int bf16, int pays, int acc) {
    int pad_id = 1;
    float smoothing = 0.1f, scale = 0.5f;
    size_t nv = (size_t)N * V, nd = (size_t)N * D, vd = (size_t)V * D;
    float *logits = hrand(nv, -4, 4), *in = hrand(nd, -1, 1), *w = hrand(vd, -0.5f, 0.5f);
    float *din = acc ? hrand(nd, -0.5f, 0.5f) : hnan(nd), *dw = hrand(vd, -0.5f, 0.5f);
    int32_t *t = hids(N, V);
    for (int n = 0; n < N; n += 7) t[n] = pad_id;
    t[3] = 0, t[4] = V - 1;
    float *lse = hnan(N);
    long count = 0;
    (void)C->xent_forward(lse, logits, t, N, V, pad_id, smoothing, &count);
    float *d_logits = dputf(logits, nv), *d_in = dputf(in, nd), *d_w = dputf(w, vd), *d_lse = dputf(lse, N);
    float *d_din = dputf(din, nd), *d_dw = dputf(dw, vd);
    int32_t *d_t = dput(t, (size_t)N * sizeof *t);
    CHECK(G->set_matmul_precision(bf16 ? TFM_MATMUL_BF16 : TFM_MATMUL_FP32), "precision refused");
    G->logits_backward(d_din, d_dw, d_logits, d_logits, d_lse, d_t, d_in, d_w, N, D, V, pad_id, smoothing, scale,
                       acc, 0);
    double tol = bf16 && !pays ? 1e-2 : TOL;
    if (bf16 && pays) {
        float *g = hnan(nv);
        C->xent_backward(g, logits, lse, t, N, V, pad_id, smoothing, scale);
        float *rg = hround(g, nv), *rin = hround(in, nd), *rw = hround(w, vd);
        C->linear_backward(din, dw, NULL, rg, rin, rw, N, D, V, acc);
        free(g), free(rg), free(rin), free(rw);
    } else {
        C->logits_backward(din, dw, logits, logits, lse, t, in, w, N, D, V, pad_id, smoothing, scale, acc, 0);
    }
    char name[96];
    const char *mode = bf16 ? (pays ? "bf16 direct" : "bf16 few rows") : "fp32";
    snprintf(name, sizeof name, "logits_backward %dx%d V=%d acc=%d %s din", N, D, V, acc, mode);
    cmp_tol(name, d_din, din, nd, tol);
    snprintf(name, sizeof name, "logits_backward %dx%d V=%d acc=%d %s dw", N, D, V, acc, mode);
    cmp_tol(name, d_dw, dw, vd, tol);
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    G->free(d_logits), G->free(d_in), G->free(d_w), G->free(d_lse), G->free(d_din), G->free(d_dw), G->free(d_t);
    free(logits), free(in), free(w), free(din), free(dw), free(t), free(lse);
}

/* logits_loss_forward, then logits_backward on its (packed) logits, against
 * the CPU's compositions: the summed loss (added to a preset accumulator),
 * lse, din (= or +=) and dw (+=). fp32 mode: the fp32 logits, within TOL.
 * BF16 mode where the copies pay (`packed`: bf16 logits padded to 64
 * columns, the gradient written over them): against the CPU on in and w
 * rounded to bf16, the logits rounded to bf16 (the product's output) and the
 * gradient rounded to bf16 (the backward's): the loss within 1e-4, lse within
 * 1e-3 (the GPU's fp32 sums and the CPU's differ in the last bits, so now and
 * then a logit rounds to the neighbouring bf16 value: near 8 that is 2^-5
 * apart, and its row's lse moves by up to its probability times that), din
 * and dw within 1e-2 (one element of the gradient a bf16 ulp, 2^-8, off). BF16 with few rows: the composition on FAST_16BF, within 1e-2 of
 * the unrounded CPU. TFM_VOCAB_PAD=8 as well: the padding is only the
 * layout. V = 1001 (not a multiple of 8 or 64) and the model's 37000. */
static void test_logits_loss(int N, int D, int V, int bf16, int packed, int acc, const char *pad, int fused) {
    int pad_id = 1;
    float smoothing = 0.1f, scale = 0.5f;
    size_t nv = (size_t)N * V, nd = (size_t)N * D, vd = (size_t)V * D;
    float *in = hrand(nd, -1, 1), *w = hrand(vd, -0.5f, 0.5f);
    float *din = acc ? hrand(nd, -0.5f, 0.5f) : hnan(nd), *dw = hrand(vd, -0.5f, 0.5f);
    int32_t *t = hids(N, V);
    for (int n = 0; n < N; n += 7) t[n] = pad_id;
    t[3] = 0, t[4] = V - 1;
    float *nan_lse = hnan(N);
    float *d_logits = (float *)G->alloc(nv * sizeof(float)); /* zero-filled */
    float *d_in = dputf(in, nd), *d_w = dputf(w, vd), *d_lse = dputf(nan_lse, N);
    free(nan_lse);
    float *d_din = dputf(din, nd), *d_dw = dputf(dw, vd);
    int32_t *d_t = dput(t, (size_t)N * sizeof *t);
    double acc0 = 0.25, lg = acc0, *d_acc = (double *)dput(&acc0, sizeof acc0);
    if (pad) setenv("TFM_VOCAB_PAD", pad, 1);
    if (!fused) setenv("TFM_XENT_FUSED", "0", 1);
    CHECK(G->set_matmul_precision(bf16 ? TFM_MATMUL_BF16 : TFM_MATMUL_FP32), "precision refused");
    G->logits_loss_forward(d_logits, d_lse, d_acc, d_in, d_w, d_t, N, D, V, pad_id, smoothing);
    double lg_forward = acc0;
    G->download(&lg_forward, d_acc, sizeof lg_forward);
    G->logits_backward(d_din, d_dw, d_logits, d_logits, d_lse, d_t, d_in, d_w, N, D, V, pad_id, smoothing, scale,
                       acc, 1);
    /* The loss is in the accumulator once the backward has run; a packed
     * forward may leave it (and lse) to the backward (backend.h): with
     * TFM_XENT_FUSED=0 it never does, otherwise it does where it packs. */
    G->download(&lg, d_acc, sizeof lg);
    /* xent.cu's one-pass kernel takes rows of up to 112 KiB of bf16 */
    int pad_cols = pad ? atoi(pad) : 64, ldv = (V + pad_cols - 1) / pad_cols * pad_cols;
    int deferred = packed && fused && ldv * 2 <= 112 * 1024;
    CHECK((lg_forward == acc0) == deferred, "logits_loss %dx%d V=%d: the loss %s after the forward", N, D, V,
          deferred ? "already added" : "missing");
    if (pad) unsetenv("TFM_VOCAB_PAD");
    if (!fused) unsetenv("TFM_XENT_FUSED");
    /* The path taken: packed bf16 rows fill at most half the buffer, so its last float is still 0. */
    float last;
    G->download(&last, d_logits + nv - 1, sizeof last);
    CHECK((last == 0.0f) == (packed != 0), "logits_loss %dx%d V=%d: expected the %s path", N, D, V,
          packed ? "packed" : "fp32");
    /* The CPU: the same roundings where the GPU packs. */
    float *rin = packed ? hround(in, nd) : in, *rw = packed ? hround(w, vd) : w;
    float *logits = hnan(nv), *lse = hnan(N), *g = hnan(nv);
    double lc = acc0;
    C->logits_loss_forward(logits, lse, &lc, rin, rw, t, N, D, V, pad_id, smoothing);
    if (packed) {
        float *r = hround(logits, nv);
        long count;
        lc = acc0 + C->xent_forward(lse, r, t, N, V, pad_id, smoothing, &count);
        free(logits), logits = r;
    }
    C->xent_backward(g, logits, lse, t, N, V, pad_id, smoothing, scale);
    float *rg = packed ? hround(g, nv) : g;
    C->linear_backward(din, dw, NULL, rg, rin, rw, N, D, V, acc);
    char name[128];
    const char *mode = bf16 ? (packed ? "bf16 packed" : "bf16 few rows") : "fp32";
    double tol = bf16 ? 1e-2 : TOL, tol_loss = TOL, tol_lse = bf16 ? 1e-3 : TOL;
    float lgf = (float)lg, lcf = (float)lc;
    snprintf(name, sizeof name, "logits_loss %dx%d V=%d pad=%s %s loss", N, D, V, pad ? pad : "64", mode);
    (void)tfm_test_close(name, &lgf, &lcf, 1, tol_loss);
    if (!deferred) { /* a deferred forward leaves lse unwritten */
        snprintf(name, sizeof name, "logits_loss %dx%d V=%d pad=%s %s lse", N, D, V, pad ? pad : "64", mode);
        cmp_tol(name, d_lse, lse, N, tol_lse);
    }
    snprintf(name, sizeof name, "logits_loss %dx%d V=%d acc=%d %s din", N, D, V, acc, mode);
    cmp_tol(name, d_din, din, nd, tol);
    snprintf(name, sizeof name, "logits_loss %dx%d V=%d acc=%d %s dw", N, D, V, acc, mode);
    cmp_tol(name, d_dw, dw, vd, tol);
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    if (packed) free(rin), free(rw), free(rg);
    G->free(d_logits), G->free(d_in), G->free(d_w), G->free(d_lse), G->free(d_din), G->free(d_dw), G->free(d_t);
    G->free(d_acc);
    free(logits), free(in), free(w), free(din), free(dw), free(t), free(lse), free(g);
}

/* linear_forward_keep and linear_backward_kept against the CPU's plain
 * linears. BF16 mode where the copies pay (N 2000, 256 -> 512): against the
 * CPU on in, w and dout rounded to bf16, within TOL (as test_gemm_bf16; db
 * on the fp32 dout, which the column sums read); and
 * `in` is overwritten with NaN on the device between the forward and the
 * backward, so dw can only come out right from the kept copy. fp32 mode (and
 * BF16 with few rows): nothing is kept, within TOL and 1e-2 of the unrounded
 * CPU. acc: din += (else =, NaN before). */
static void test_linear_kept(int N, int I, int O, int bf16, int kept, int acc, int shared) {
    size_t ni = (size_t)N * I, oi = (size_t)O * I, no = (size_t)N * O;
    float *in = hrand(ni, -1, 1), *w = hrand(oi, -0.5f, 0.5f), *b = hrand(O, -1, 1), *dout = hrand(no, -1, 1);
    float *din = acc ? hrand(ni, -1, 1) : hnan(ni), *dw = hrand(oi, -1, 1), *db = hrand(O, -1, 1), *out = hnan(no);
    float *d_in = dputf(in, ni), *d_w = dputf(w, oi), *d_b = dputf(b, O), *d_dout = dputf(dout, no);
    float *d_din = dputf(din, ni), *d_dw = dputf(dw, oi), *d_db = dputf(db, O), *d_out = dputf(out, no);
    size_t kb = G->linear_keep_bytes(N, I, O);
    void *d_keep = kb ? G->alloc(kb) : NULL;
    CHECK(G->set_matmul_precision(bf16 ? TFM_MATMUL_BF16 : TFM_MATMUL_FP32), "precision refused");
    if (shared) {
        /* keep_filled (backend.h): a first linear of the same input fills
         * the keep; `in` is NaN before the second, which must read the keep */
        float *w2 = hrand(oi, -0.5f, 0.5f), *d_w2 = dputf(w2, oi), *d_out2 = (float *)G->alloc(no * sizeof(float));
        G->linear_forward_keep(d_out2, d_in, d_w2, d_b, N, I, O, d_keep, 0);
        float *nans = hnan(ni);
        G->upload(d_in, nans, ni * sizeof *nans);
        G->linear_forward_keep(d_out, d_in, d_w, d_b, N, I, O, d_keep, 1);
        free(nans), free(w2), G->free(d_w2), G->free(d_out2);
    } else {
        G->linear_forward_keep(d_out, d_in, d_w, d_b, N, I, O, d_keep, 0);
    }
    if (kept) {
        float *nans = hnan(ni);
        G->upload(d_in, nans, ni * sizeof *nans);
        free(nans);
    }
    G->linear_backward_kept(d_din, d_dw, d_db, d_dout, d_in, d_keep, d_w, N, I, O, acc);
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    float *rin = kept ? hround(in, ni) : in, *rw = kept ? hround(w, oi) : w, *rdout = kept ? hround(dout, no) : dout;
    C->linear_forward(out, rin, rw, b, N, I, O);
    C->linear_backward(din, dw, kept ? NULL : db, rdout, rin, rw, N, I, O, acc);
    if (kept) { /* the bias gradient sums the fp32 dout */
        float *scratch = hrand(oi, -1, 1);
        C->linear_backward(NULL, scratch, db, dout, in, w, N, I, O, acc);
        free(scratch);
    }
    double tol = bf16 && !kept ? 1e-2 : TOL;
    const char *mode = bf16 ? (kept ? "bf16 kept" : "bf16 few rows") : "fp32";
    const float *gots[4] = {d_out, d_din, d_dw, d_db}, *refs[4] = {out, din, dw, db};
    const size_t ns[4] = {no, ni, oi, (size_t)O};
    const char *what[4] = {"out", "din", "dw", "db"};
    for (int t = 0; t < 4; t++) {
        char name[128];
        snprintf(name, sizeof name, "linear kept %dx%d->%d acc=%d %s%s %s", N, I, O, acc, mode,
                 shared ? " shared" : "", what[t]);
        cmp_tol(name, gots[t], refs[t], ns[t], tol);
    }
    if (kept) free(rin), free(rw), free(rdout);
    G->free(d_in), G->free(d_w), G->free(d_b), G->free(d_dout), G->free(d_din), G->free(d_dw), G->free(d_db);
    G->free(d_out), G->free(d_keep);
    free(in), free(w), free(b), free(dout), free(din), free(dw), free(db), free(out);
}

/* params_lowp (backend.h): in BF16 mode the products read the parameters'
 * bf16 copy while it is current. A "parameter buffer" of two weights, one at
 * an offset of 16 floats (its copy is used) and one 4 floats off the copy's
 * 16-byte rows (converted as before); linear_forward against the CPU on the
 * bf16-rounded operands within TOL (as test_gemm_bf16) after: registering;
 * an upload into the buffer (the copy is no longer current: the new weights
 * must show); re-registering; an Adam update of the whole buffer (which
 * writes the copy: the updated weights must show without re-registering);
 * an add into it (drops the copy again). */
static void test_params_lowp(void) {
    int N = 1000, I = 512, O = 640;
    size_t wi = (size_t)O * I, np = 16 + wi + 4 + wi;
    float *params = hrand(np, -0.5f, 0.5f), *in = hrand((size_t)N * I, -1, 1), *out = hnan((size_t)N * O);
    float *d_params = dputf(params, np), *d_in = dputf(in, (size_t)N * I), *d_out = dputf(out, (size_t)N * O);
    float *rin = hround(in, (size_t)N * I);
    const size_t offs[2] = {16, 16 + wi + 4};
    CHECK(G->set_matmul_precision(TFM_MATMUL_BF16), "bf16 mode refused");
    G->params_lowp(d_params, np);
    for (int stage = 0; stage < 4; stage++) {
        static const char *what[4] = {"registered", "after an upload", "after Adam", "after an add"};
        if (stage == 1) { /* new values for the first weight, through upload */
            float *fresh = hrand(wi, -0.5f, 0.5f);
            memcpy(params + offs[0], fresh, wi * sizeof *fresh);
            G->upload(d_params + offs[0], fresh, wi * sizeof *fresh);
            free(fresh);
        } else if (stage == 2) { /* re-registered, then one Adam step of the whole buffer */
            G->params_lowp(d_params, np);
            float *g = hrand(np, -1, 1), *zero = calloc(np, sizeof *zero);
            float *d_g = dputf(g, np), *d_m = dputf(zero, np), *d_v = dputf(zero, np), norm = 1.0f;
            float *d_norm = dputf(&norm, 1);
            tfm_adam_coefs c = {.beta1 = 0.9f, .beta2 = 0.98f, .one_minus_beta1 = 0.1f, .one_minus_beta2 = 0.02f,
                                .eps = 1e-9f, .neg_step = -0.01f, .bc2_sqrt = 0.1414f, .decay = 1.0f};
            G->adam_update_clipped(&c, d_params, d_g, d_m, d_v, np, d_norm, 0.0f);
            G->download(params, d_params, np * sizeof *params);
            G->free(d_g), G->free(d_m), G->free(d_v), G->free(d_norm);
            free(g), free(zero);
        } else if (stage == 3) { /* y += x into the first weight */
            float *x = hrand(wi, -0.1f, 0.1f), *d_x = dputf(x, wi);
            G->add(d_params + offs[0], d_x, wi);
            G->download(params, d_params, np * sizeof *params);
            G->free(d_x), free(x);
        }
        for (int k = 0; k < 2; k++) {
            float *rw = hround(params + offs[k], wi);
            G->linear_forward(d_out, d_in, d_params + offs[k], NULL, N, I, O);
            C->linear_forward(out, rin, rw, NULL, N, I, O);
            char name[96];
            snprintf(name, sizeof name, "params_lowp weight %s, %s", k ? "off the rows" : "aligned", what[stage]);
            cmp(name, d_out, out, (size_t)N * O);
            free(rw);
        }
    }
    G->params_lowp(NULL, 0);
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    G->free(d_params), G->free(d_in), G->free(d_out);
    free(params), free(in), free(out), free(rin);
}

/* -------------------------------------------------------------------- FFN */

/* max|a - b| / max|b| over n floats (infinite where a is NaN), printing
 * nothing: for telling which layout the CUDA forward left in hidden. */
static double rel_err(const float *a, const float *b, size_t n) {
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!(a[i] == a[i])) return INFINITY;
        double d = fabs((double)a[i] - b[i]);
        if (d > worst) worst = d;
        if (fabs(b[i]) > scale) scale = fabs(b[i]);
    }
    return worst / (scale > 0.0 ? scale : 1.0);
}

/* ffn_forward then ffn_backward (backend.h) against the CPU's composition on
 * the same inputs: out, din (NaN before when acc = 0: never read; else +=),
 * dw1, db1, dw2, db2 (+=, from the same random values on both sides).
 * fp32 mode: within TOL. BF16 mode (back to fp32 after): against the CPU in
 * fp32 within TOL_FFN_BF16, the bound of test_gemm_precision's bf16 products
 * (the operands, the activation and its gradient rounded to bf16 on the GPU;
 * fp32 sums on both sides). `fused`: whether the CUDA forward must have taken
 * the fused path (src/cuda/ffn.cu), seen from outside: the composition
 * leaves the pre-activation in hidden (compared with the CPU's), the fused
 * path a ReLU bit mask (hidden then differs wholly; its NaN poison stays
 * where the mask does not reach). dact_off: floats in front of the dact
 * scratch (1: only 4-byte aligned, so the fused backward falls back to the
 * composition's routes on the fused forward's state). The fused backward
 * runs twice and must give the same bits (no atomics anywhere). The
 * environment (TFM_FFN_FUSED) is the caller's.
 * Inputs: the ReLU's gradient jumps where the pre-activation crosses 0, and
 * the GPU's bf16 pre-activation is off by ~1e-3, so random inputs flip some
 * elements of the mask against the CPU and fail any max-norm bound (seen:
 * 3e-2 to 8e-2 in din, dw1, db1 for BF16 mode's composition as well). So
 * the pre-activation keeps away from 0: in[n, 0] = +-1 and w1[f, 0] = +-(0.75
 * to 1) give it a sign pattern s_n t_f (varying along both n and f, which
 * exercises the mask's layout), and the rest stays far below 0.75 (the
 * other weights +-0.2/sqrt(D): a sum of standard deviation 0.07; b1 +-0.1). */
#define TOL_FFN_BF16 1e-2
static void test_ffn_case(const char *tag, int N, int D, int F, tfm_act_kind kind, float p, int bf16, int acc,
                          int fused, int dact_off) {
    const uint64_t seed = 99, stream = (2ull << 40) + 7;
    size_t nd = (size_t)N * D, nf = (size_t)N * F, fd = (size_t)F * D;
    float ws = 0.2f / sqrtf((float)D);
    float *in = hrand(nd, -1, 1), *w1 = hrand(fd, -ws, ws), *b1 = hrand(F, -0.1f, 0.1f);
    float *w2 = hrand(fd, -0.1f, 0.1f), *b2 = hrand(D, -0.2f, 0.2f), *dout = hrand(nd, -1, 1);
    for (int n = 0; n < N; n++) in[(size_t)n * D] = urand(-1, 1) < 0 ? -1.0f : 1.0f;
    for (int f = 0; f < F; f++) w1[(size_t)f * D] = (urand(-1, 1) < 0 ? -1.0f : 1.0f) * urand(0.75f, 1.0f);
    float *out = hnan(nd), *hidden = hnan(nf), *act = hnan(nf), *dact = hnan(nf + 4);
    float *din = acc ? hrand(nd, -0.5f, 0.5f) : hnan(nd);
    float *dw1 = hrand(fd, -0.5f, 0.5f), *db1 = hrand(F, -0.5f, 0.5f);
    float *dw2 = hrand(fd, -0.5f, 0.5f), *db2 = hrand(D, -0.5f, 0.5f);
    float *d_in = dputf(in, nd), *d_w1 = dputf(w1, fd), *d_b1 = dputf(b1, F), *d_w2 = dputf(w2, fd);
    float *d_b2 = dputf(b2, D), *d_dout = dputf(dout, nd), *d_out = dputf(out, nd), *d_hidden = dputf(hidden, nf);
    float *d_act = dputf(act, nf), *d_dact = dputf(dact, nf + 4), *d_din = dputf(din, nd);
    float *d_dw1 = dputf(dw1, fd), *d_db1 = dputf(db1, F), *d_dw2 = dputf(dw2, fd), *d_db2 = dputf(db2, D);
    CHECK(G->set_matmul_precision(bf16 ? TFM_MATMUL_BF16 : TFM_MATMUL_FP32), "precision refused");
    G->ffn_forward(d_out, d_hidden, d_act, d_in, d_w1, d_b1, d_w2, d_b2, N, D, F, kind, p, seed, stream, 0);
    G->ffn_backward(d_din, d_dw1, d_db1, d_dw2, d_db2, d_dact + dact_off, d_dout, d_in, d_hidden, d_act, d_w1, d_w2,
                    N, D, F, kind, p, seed, stream, acc);
    float *r_din = hdup(din, nd), *r_dw1 = hdup(dw1, fd), *r_db1 = hdup(db1, F), *r_dw2 = hdup(dw2, fd);
    float *r_db2 = hdup(db2, D);
    C->ffn_forward(out, hidden, act, in, w1, b1, w2, b2, N, D, F, kind, p, seed, stream, 0);
    C->ffn_backward(r_din, r_dw1, r_db1, r_dw2, r_db2, dact, dout, in, hidden, act, w1, w2, N, D, F, kind, p, seed,
                    stream, acc);

    char name[128];
    if (nd * F >= 10000000) {
        /* The CPU reference's dw2 against a plain double loop (a check of the
         * reference itself, at the sizes where the CPU takes its blocked GEMM). */
        double *sum = calloc(fd, sizeof *sum);
        float *want = xmalloc(fd * sizeof *want);
        CHECK(sum != NULL, "out of memory");
        for (int n = 0; n < N; n++)
            for (int d = 0; d < D; d++) {
                double g = dout[(size_t)n * D + d];
                const float *a = act + (size_t)n * F;
                for (int f = 0; f < F; f++) sum[(size_t)d * F + f] += g * a[f];
            }
        for (size_t i = 0; i < fd; i++) want[i] = (float)(dw2[i] + sum[i]);
        snprintf(name, sizeof name, "ffn %dx%dx%d cpu reference dw2 vs a double loop", N, D, F);
        (void)tfm_test_close(name, r_dw2, want, fd, TOL);
        free(sum), free(want);
    }
    double tol = bf16 ? TOL_FFN_BF16 : TOL;
    const char *mode = bf16 ? "bf16" : "fp32";
#define FFN_CMP(label, dev, ref, n)                                                                       \
    do {                                                                                                  \
        snprintf(name, sizeof name, "ffn %dx%dx%d %s %s acc=%d %s", N, D, F, mode, tag, acc, label);      \
        cmp_tol(name, dev, ref, n, tol);                                                                  \
    } while (0)
    float *got_hidden = dget(d_hidden, nf);
    int seen_fused = rel_err(got_hidden, hidden, nf) > 0.1;
    free(got_hidden);
    snprintf(name, sizeof name, "ffn %dx%dx%d %s %s", N, D, F, mode, tag);
    CHECK(seen_fused == fused, "%s: the forward %s the fused path", name, seen_fused ? "took" : "did not take");
    if (!fused) {
        FFN_CMP("hidden", d_hidden, hidden, nf);
        FFN_CMP("act", d_act, act, nf);
    }
    FFN_CMP("out", d_out, out, nd);
    FFN_CMP("din", d_din, r_din, nd);
    FFN_CMP("dw1", d_dw1, r_dw1, fd);
    FFN_CMP("db1", d_db1, r_db1, F);
    FFN_CMP("dw2", d_dw2, r_dw2, fd);
    FFN_CMP("db2", d_db2, r_db2, D);
#undef FFN_CMP
    if (fused && !dact_off) {
        /* Again from the same gradients: the same bits. */
        float *g_din = dget(d_din, nd), *g_dw1 = dget(d_dw1, fd), *g_db1 = dget(d_db1, F);
        float *g_dw2 = dget(d_dw2, fd), *g_db2 = dget(d_db2, D);
        G->upload(d_din, din, nd * sizeof(float)), G->upload(d_dw1, dw1, fd * sizeof(float));
        G->upload(d_db1, db1, F * sizeof(float)), G->upload(d_dw2, dw2, fd * sizeof(float));
        G->upload(d_db2, db2, D * sizeof(float));
        G->ffn_backward(d_din, d_dw1, d_db1, d_dw2, d_db2, d_dact, d_dout, d_in, d_hidden, d_act, d_w1, d_w2, N, D, F,
                        kind, p, seed, stream, acc);
        snprintf(name, sizeof name, "ffn %dx%dx%d %s %s acc=%d again: din", N, D, F, mode, tag, acc);
        cmp_exact(name, d_din, g_din, nd);
        snprintf(name, sizeof name, "ffn %dx%dx%d %s %s acc=%d again: dw1", N, D, F, mode, tag, acc);
        cmp_exact(name, d_dw1, g_dw1, fd);
        snprintf(name, sizeof name, "ffn %dx%dx%d %s %s acc=%d again: db1", N, D, F, mode, tag, acc);
        cmp_exact(name, d_db1, g_db1, F);
        snprintf(name, sizeof name, "ffn %dx%dx%d %s %s acc=%d again: dw2", N, D, F, mode, tag, acc);
        cmp_exact(name, d_dw2, g_dw2, fd);
        snprintf(name, sizeof name, "ffn %dx%dx%d %s %s acc=%d again: db2", N, D, F, mode, tag, acc);
        cmp_exact(name, d_db2, g_db2, D);
        free(g_din), free(g_dw1), free(g_db1), free(g_dw2), free(g_db2);
    }
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    G->free(d_in), G->free(d_w1), G->free(d_b1), G->free(d_w2), G->free(d_b2), G->free(d_dout), G->free(d_out);
    G->free(d_hidden), G->free(d_act), G->free(d_dact), G->free(d_din), G->free(d_dw1), G->free(d_db1);
    G->free(d_dw2), G->free(d_db2);
    free(in), free(w1), free(b1), free(w2), free(b2), free(dout), free(out), free(hidden), free(act), free(dact);
    free(din), free(dw1), free(db1), free(dw2), free(db2);
    free(r_din), free(r_dw1), free(r_db1), free(r_dw2), free(r_db2);
}

/* The fused path where it applies (BF16 mode, ReLU, p = 0, D and F multiples
 * of 8, D <= F, enough rows for bf16 copies to pay: N = 517 and 520, odd and
 * not), also from a misaligned dact (the fallback backward) and switched off
 * (TFM_FFN_FUSED=0: BF16 mode's composition, for comparison); the
 * composition everywhere else: fp32 mode, GELU, activation dropout, too few
 * rows, D or F not multiples of 8, D > F. */
/* ffn_in_keep and in_filled (backend.h): in BF16 mode on the fused path, the
 * keep inside act filled with `in` rounded to bf16 (as a producer writes it)
 * and `in` itself NaN: the forward and the backward must give the bits of the
 * run that converted `in` itself. Where the fused path cannot run (fp32
 * mode, GELU) there is no keep (NULL). */
static void test_ffn_filled(int N, int D, int F) {
    size_t nd = (size_t)N * D, nf = (size_t)N * F, fd = (size_t)F * D;
    float *in = hrand(nd, -1, 1), *w1 = hrand(fd, -0.05f, 0.05f), *b1 = hrand(F, -0.1f, 0.1f);
    float *w2 = hrand(fd, -0.1f, 0.1f), *b2 = hrand(D, -0.2f, 0.2f), *dout = hrand(nd, -1, 1);
    float *d_w1 = dputf(w1, fd), *d_b1 = dputf(b1, F), *d_w2 = dputf(w2, fd), *d_b2 = dputf(b2, D);
    float *d_dout = dputf(dout, nd), *d_hidden = (float *)G->alloc(nf * 4), *d_act = (float *)G->alloc(nf * 4);
    float *d_dact = (float *)G->alloc(nf * 4), *d_out[2], *d_din[2], *d_dw1[2], *d_db1[2], *d_dw2[2], *d_db2[2];
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    CHECK(G->ffn_in_keep(d_hidden, d_act, N, D, F, TFM_OP_RELU, 0.0f) == NULL, "ffn_in_keep in fp32 mode");
    CHECK(G->set_matmul_precision(TFM_MATMUL_BF16), "bf16 mode refused");
    CHECK(G->ffn_in_keep(d_hidden, d_act, N, D, F, TFM_OP_GELU, 0.0f) == NULL, "ffn_in_keep with GELU");
    void *keep = G->ffn_in_keep(d_hidden, d_act, N, D, F, TFM_OP_RELU, 0.0f);
    CHECK(keep != NULL, "ffn_in_keep %dx%dx%d: no keep in BF16 mode", N, D, F);
    for (int run = 0; run < 2 && keep; run++) {
        float *d_in = dputf(in, nd);
        d_out[run] = (float *)G->alloc(nd * 4), d_din[run] = (float *)G->alloc(nd * 4);
        d_dw1[run] = (float *)G->alloc(fd * 4), d_db1[run] = (float *)G->alloc(F * 4);
        d_dw2[run] = (float *)G->alloc(fd * 4), d_db2[run] = (float *)G->alloc(D * 4);
        if (run == 1) { /* the producer's copy, then `in` poisoned */
            uint16_t *bits = xmalloc(nd * sizeof *bits);
            for (size_t i = 0; i < nd; i++) {
                float r = bf16_round(in[i]);
                uint32_t u;
                memcpy(&u, &r, sizeof u);
                bits[i] = (uint16_t)(u >> 16);
            }
            G->upload(keep, bits, nd * sizeof *bits);
            float *nans = hnan(nd);
            G->upload(d_in, nans, nd * sizeof(float));
            free(nans), free(bits);
        }
        G->ffn_forward(d_out[run], d_hidden, d_act, d_in, d_w1, d_b1, d_w2, d_b2, N, D, F, TFM_OP_RELU, 0.0f, 1, 2,
                       run);
        G->ffn_backward(d_din[run], d_dw1[run], d_db1[run], d_dw2[run], d_db2[run], d_dact, d_dout, d_in, d_hidden,
                        d_act, d_w1, d_w2, N, D, F, TFM_OP_RELU, 0.0f, 1, 2, 0);
        G->free(d_in);
    }
    if (keep) {
        const float *a[6] = {d_out[0], d_din[0], d_dw1[0], d_db1[0], d_dw2[0], d_db2[0]};
        const float *b[6] = {d_out[1], d_din[1], d_dw1[1], d_db1[1], d_dw2[1], d_db2[1]};
        const size_t n[6] = {nd, nd, fd, (size_t)F, fd, (size_t)D};
        const char *what[6] = {"out", "din", "dw1", "db1", "dw2", "db2"};
        for (int t = 0; t < 6; t++) {
            char name[96];
            snprintf(name, sizeof name, "ffn %dx%dx%d in_filled %s", N, D, F, what[t]);
            float *want = dget(a[t], n[t]);
            cmp_exact(name, b[t], want, n[t]);
            free(want);
        }
        for (int run = 0; run < 2; run++) {
            G->free(d_out[run]), G->free(d_din[run]), G->free(d_dw1[run]), G->free(d_db1[run]);
            G->free(d_dw2[run]), G->free(d_db2[run]);
        }
    }
    CHECK(G->set_matmul_precision(TFM_MATMUL_FP32), "fp32 mode refused");
    G->free(d_w1), G->free(d_b1), G->free(d_w2), G->free(d_b2), G->free(d_dout), G->free(d_hidden), G->free(d_act);
    G->free(d_dact);
    free(in), free(w1), free(b1), free(w2), free(b2), free(dout);
}

static void test_ffn(void) {
    test_ffn_filled(520, 256, 1024);
    for (int acc = 0; acc < 2; acc++) {
        test_ffn_case("relu", 37, 24, 40, TFM_OP_RELU, 0.0f, 0, acc, 0, 0);
        test_ffn_case("fused", 517, 128, 512, TFM_OP_RELU, 0.0f, 1, acc, 1, 0);
        test_ffn_case("fused, dact misaligned", 517, 128, 512, TFM_OP_RELU, 0.0f, 1, acc, 1, 1);
        setenv("TFM_FFN_FUSED", "0", 1);
        test_ffn_case("TFM_FFN_FUSED=0", 517, 128, 512, TFM_OP_RELU, 0.0f, 1, acc, 0, 0);
        unsetenv("TFM_FFN_FUSED");
    }
    test_ffn_case("relu", 517, 128, 512, TFM_OP_RELU, 0.0f, 0, 1, 0, 0);
    test_ffn_case("fused", 520, 256, 1024, TFM_OP_RELU, 0.0f, 1, 1, 1, 0);
    test_ffn_case("gelu dropout", 37, 24, 40, TFM_OP_GELU, 0.1f, 0, 1, 0, 0);
    test_ffn_case("relu dropout", 37, 24, 40, TFM_OP_RELU, 0.1f, 0, 1, 0, 0);
    test_ffn_case("gelu", 517, 128, 512, TFM_OP_GELU, 0.0f, 1, 1, 0, 0);
    test_ffn_case("relu dropout", 517, 128, 512, TFM_OP_RELU, 0.1f, 1, 1, 0, 0);
    test_ffn_case("few rows", 64, 128, 512, TFM_OP_RELU, 0.0f, 1, 1, 0, 0);
    test_ffn_case("D % 8 != 0", 517, 130, 512, TFM_OP_RELU, 0.0f, 1, 1, 0, 0);
    test_ffn_case("F % 8 != 0", 517, 128, 516, TFM_OP_RELU, 0.0f, 1, 1, 0, 0);
    test_ffn_case("D > F", 601, 520, 256, TFM_OP_RELU, 0.0f, 1, 1, 0, 0);
}

static void test_log_softmax(void) {
    int N = 29, V = 2053;
    size_t nv = (size_t)N * V;
    float *x = hrand(nv, -6, 6), *d_x = dputf(x, nv), *out = hnan(nv), *d_out = dputf(out, nv);
    G->log_softmax(d_out, d_x, N, V);
    C->log_softmax(out, x, N, V);
    cmp("log_softmax", d_out, out, nv);
    G->log_softmax(d_x, d_x, N, V);
    cmp("log_softmax in place", d_x, out, nv);
    G->free(d_x), G->free(d_out);
    free(x), free(out);
}

/* ----------------------------------------------------------------- timing */

/* With TFM_CUDA_OPS_TIME=1: the median time of a few ops at the size of one
 * training step of the paper's base model (4096 tokens as 64 x 64, d_model
 * 512, 8 heads, d_ff 2048, vocabulary 8000, 44M parameters), host clock
 * around each call plus a sync, after warm-up: launch overheads included.
 * Informational only: nothing is checked. */

static struct {
    int N, D, F, B, H, T, V;
    size_t P;
    float *x, *w, *y, *ln_w, *ln_b, *mean, *rstd, *q, *k, *v, *o, *probs, *scratch, *logits, *lse, *dq, *dk, *dv;
    float *params, *grads, *m1, *m2;
    int32_t *ids;
    tfm_attn_dims d;
    tfm_adam_coefs c;
} T_;

static void t_linear_fwd(void) { G->linear_forward(T_.y, T_.x, T_.w, T_.ln_b, T_.N, T_.D, T_.F); }
static void t_linear_bwd(void) {
    G->linear_backward(T_.dq, T_.w + (size_t)T_.F * T_.D, T_.ln_w, T_.y, T_.x, T_.w, T_.N, T_.D, T_.F, 0);
}
static void t_ln_fwd(void) { G->layernorm_forward(T_.y, T_.mean, T_.rstd, T_.x, T_.ln_w, T_.ln_b, T_.N, T_.D, 1e-5f); }
static void t_attn_fwd(void) { G->attention_forward(T_.o, T_.probs, T_.scratch, T_.q, T_.k, T_.v, &T_.d); }
static void t_attn_bwd(void) {
    G->attention_backward(T_.dq, T_.dk, T_.dv, T_.scratch, T_.o, T_.probs, T_.q, T_.k, T_.v, &T_.d);
}
static void t_xent(void) {
    long count;
    (void)G->xent_forward(T_.lse, T_.logits, T_.ids, T_.N, T_.V, 0, 0.1f, &count);
    G->xent_backward(T_.logits, T_.logits, T_.lse, T_.ids, T_.N, T_.V, 0, 0.1f, 1e-4f);
}
static void t_emb_bwd(void) { G->embedding_backward(T_.y, T_.x, T_.ids, T_.N, T_.D, 1.0f); }
static void t_adam(void) { G->adam_update(&T_.c, T_.params, T_.grads, T_.m1, T_.m2, T_.P); }
static void t_norm(void) { (void)G->global_norm(T_.grads, T_.P); }

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Prints the median of 21 timed calls; `work` is FLOPs (flops = 1) or bytes. */
static void time_op(const char *name, void (*fn)(void), double work, int flops) {
    double t[21];
    for (int i = 0; i < 3; i++) fn();
    G->sync();
    for (int i = 0; i < 21; i++) {
        double t0 = now_ms();
        fn();
        G->sync();
        t[i] = now_ms() - t0;
    }
    qsort(t, 21, sizeof t[0], cmp_double);
    printf("time %-40s %8.3f ms  %8.1f %s\n", name, t[10], work / (t[10] * 1e-3) / (flops ? 1e12 : 1e9),
           flops ? "TFLOP/s" : "GB/s");
}

static float *dev_random(size_t n, float lo, float hi) {
    float *h = hrand(n, lo, hi), *d = dputf(h, n);
    free(h);
    return d;
}

static void time_ops(void) {
    T_.N = 4096, T_.D = 512, T_.F = 2048, T_.B = 64, T_.H = 8, T_.T = 64, T_.V = 8000, T_.P = 44000000;
    size_t N = T_.N, D = T_.D, F = T_.F, V = T_.V, np = (size_t)T_.B * T_.H * T_.T * T_.T;
    T_.x = dev_random(N * F, -1, 1), T_.y = dev_random(N * F, -1, 1), T_.w = dev_random(2 * F * D, -0.1f, 0.1f);
    T_.ln_w = dev_random(F, 0.5f, 1.5f), T_.ln_b = dev_random(F, -0.5f, 0.5f);
    T_.mean = dev_random(N, 0, 1), T_.rstd = dev_random(N, 0, 1);
    T_.q = dev_random(N * D, -1, 1), T_.k = dev_random(N * D, -1, 1), T_.v = dev_random(N * D, -1, 1);
    T_.o = dev_random(N * D, -1, 1), T_.dq = dev_random(N * D, -1, 1), T_.dk = dev_random(N * D, -1, 1);
    T_.dv = dev_random(N * D, -1, 1), T_.probs = dev_random(np, 0, 1), T_.scratch = dev_random(np, 0, 1);
    T_.logits = dev_random(N * V, -4, 4), T_.lse = dev_random(N, 0, 1);
    T_.params = dev_random(T_.P, -1, 1), T_.grads = dev_random(T_.P, -1e-3f, 1e-3f);
    T_.m1 = dev_random(T_.P, -1e-3f, 1e-3f), T_.m2 = dev_random(T_.P, 0, 1e-6f);
    int32_t *ids = hids(T_.N, T_.V);
    T_.ids = dput(ids, N * sizeof *ids);
    free(ids);
    tfm_attn_dims *d = &T_.d;
    memset(d, 0, sizeof *d);
    d->B = T_.B, d->H = T_.H, d->Tq = d->Tk = T_.T, d->dk = d->dv = (int)D / T_.H;
    d->q_row = d->k_row = d->v_row = d->o_row = (long)D;
    d->q_batch = d->k_batch = d->v_batch = d->o_batch = (long)T_.T * D;
    d->causal = 1, d->scale = 1.0 / sqrt((double)d->dk), d->dropout = 0.1f, d->seed = 1, d->stream = 2;
    T_.c.beta1 = 0.9f, T_.c.beta2 = 0.98f, T_.c.one_minus_beta1 = 0.1f, T_.c.one_minus_beta2 = 0.02f;
    T_.c.eps = 1e-9f, T_.c.neg_step = -1e-4f, T_.c.bc2_sqrt = 0.5f, T_.c.decay = 1, T_.c.adamw = 0;

    double attn_flops = 4.0 * T_.B * T_.H * T_.T * T_.T * d->dk; /* QK^T and PV */
    printf("timing (median of 21; one step of a base model: 4096 tokens, d 512, d_ff 2048, V 8000):\n");
    time_op("linear_forward 4096x512 -> 2048", t_linear_fwd, 2.0 * N * D * F, 1);
    time_op("linear_backward (din, dw, db)", t_linear_bwd, 4.0 * N * D * F, 1);
    time_op("layernorm_forward 4096x2048", t_ln_fwd, 2.0 * N * F * 4, 0);
    time_op("attention_forward 64x8x64x64 causal dropout", t_attn_fwd, attn_flops, 1);
    time_op("attention_backward", t_attn_bwd, 2 * attn_flops, 1);
    time_op("xent fwd+bwd 4096x8000", t_xent, 4.0 * N * V * 4, 0);
    time_op("embedding_backward 4096x512 (atomics)", t_emb_bwd, 3.0 * N * D * 4, 0);
    time_op("adam_update 44M", t_adam, 7.0 * T_.P * 4, 0);
    time_op("global_norm 44M", t_norm, 1.0 * T_.P * 4, 0);
    float *all[] = {T_.x, T_.y, T_.w, T_.ln_w, T_.ln_b, T_.mean, T_.rstd, T_.q, T_.k, T_.v, T_.o, T_.dq, T_.dk,
                    T_.dv, T_.probs, T_.scratch, T_.logits, T_.lse, T_.params, T_.grads, T_.m1, T_.m2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) G->free(all[i]);
    G->free(T_.ids);
}

int main(void) {
    const char *why = NULL;
    G = tfm_backend_cuda(&why);
    if (!G) {
        printf("cuda_ops: SKIP: %s\n", why ? why : "no CUDA backend");
        return 77;
    }
    C = tfm_backend_cpu();
    CHECK(G->host_memory == 0 && G->supports != NULL, "the CUDA table declares device memory");
    tfm_config cfg;
    tfm_config_default(&cfg);
    CHECK(G->supports(&cfg), "the CUDA backend supports the default configuration");
    tfm_rng_init(&g_rng, 20240917u, 3);
    printf("cuda_ops: backend \"%s\" against \"%s\"; tolerance %.0e (max|cuda - cpu| / max|cpu|), dropout exact\n",
           G->name, C->name, TOL);

    test_memory();
    test_flat();
    test_rows();
    test_gemm();
    test_gemm_precision();
    test_gemm_bf16();
    test_linear();
    test_embedding();
    test_layernorm(57, 83);
    test_layernorm(1201, 83);
    /* The forward's register kernel: decoding's few rows; float4 loads (D % 4
     * == 0) or scalar ones; each size of its row in registers (D <= 128, 256,
     * 512, 1024); D > 1024 takes the three-pass kernel. */
    static const int ln_sizes[][2] = {{1, 512}, {7, 512}, {256, 512}, {1, 511}, {7, 511}, {256, 511},
                                      {5, 100}, {5, 256}, {3, 1024}, {3, 1023}, {3, 1025}};
    for (size_t i = 0; i < sizeof ln_sizes / sizeof ln_sizes[0]; i++) test_layernorm(ln_sizes[i][0], ln_sizes[i][1]);
    test_activation();
    test_dropout();
    test_fused();
    static const attn_case cases[] = {
        {"plain", 2, 3, 19, 19, 22, 26, 0, 0, 0, 0.0f, 0},
        {"causal", 3, 2, 37, 37, 18, 14, 1, 0, 0, 0.0f, 0},
        {"causal q_offset (decode)", 2, 3, 5, 29, 22, 22, 1, 24, 0, 0.0f, 0},
        {"cross pad (Tq!=Tk)", 3, 2, 23, 31, 20, 18, 0, 0, 1, 0.0f, 0},
        {"causal q_offset<0 masked rows", 2, 2, 13, 11, 10, 6, 1, -3, 0, 0.0f, 0},
        {"dropout causal pad", 3, 3, 33, 33, 14, 22, 1, 0, 1, 0.2f, 0},
        {"dropout cross", 2, 2, 17, 41, 26, 10, 0, 0, 0, 0.15f, 0},
        {"large causal pad dropout", 4, 8, 97, 97, 64, 64, 1, 0, 1, 0.1f, 0},
        /* The base model's shapes (self 32x32, cross Tq 32 Tk 64), Tq 50, and
         * more (b, h) pairs than one grid dimension of 65535 holds. */
        {"base 32x32 dk 64 pad dropout", 40, 8, 32, 32, 64, 64, 0, 0, 1, 0.1f, 0},
        {"cross Tq 32 Tk 64 dk 64", 6, 8, 32, 64, 64, 64, 0, 0, 1, 0.0f, 0},
        {"Tq 50 Tk 20 dk 33 dv 31", 3, 5, 50, 20, 33, 31, 1, 10, 0, 0.0f, 0},
        {"B*H > 65535", 8200, 8, 3, 2, 5, 3, 0, 0, 0, 0.0f, 0},
        /* The dispatch of src/cuda/attention.cu from both sides: the forward's
         * row kernel for Tq <= 4 (float4 key loads when dense, dv > 64 in
         * several column chunks; Tk 3100 passes its shared memory and goes
         * unfused), the unfused path from Tq 5 and for every backward. The
         * shapes after Tq 5 sat at the thresholds of a tile forward and a
         * fused backward since removed; they stay as shapes for the unfused
         * path (Tq, Tk around 64 and 128, head sizes past 64). */
        {"Tq 4 rows causal pad dropout", 3, 5, 4, 29, 20, 24, 1, 25, 1, 0.2f, 0},
        {"Tq 4 rows dense pad dropout", 3, 5, 4, 37, 64, 64, 0, 0, 1, 0.1f, 1},
        {"Tq 2 rows dense dk 132 dv 100", 3, 2, 2, 50, 132, 100, 1, 48, 1, 0.0f, 1},
        {"Tq 1 rows Tk 300 pad", 4, 2, 1, 300, 16, 12, 0, 0, 1, 0.0f, 0},
        {"Tq 1 Tk 3100 pad (row smem)", 2, 2, 1, 3100, 8, 8, 0, 0, 1, 0.0f, 0},
        {"Tq 5 unfused cross pad", 3, 5, 5, 29, 20, 24, 0, 0, 1, 0.0f, 0},
        {"Tq 64 Tk 64 causal dropout", 2, 3, 64, 64, 64, 64, 1, 0, 1, 0.1f, 0},
        {"Tq 65 Tk 40 causal q_offset", 2, 2, 65, 40, 18, 18, 1, 30, 0, 0.0f, 0},
        {"Tq 64 Tk 65 pad dropout", 2, 3, 64, 65, 24, 20, 0, 0, 1, 0.1f, 0},
        {"Tq 40 Tk 128 pad dropout", 2, 3, 40, 128, 32, 48, 0, 0, 1, 0.1f, 0},
        {"Tq 40 Tk 129 pad", 2, 3, 40, 129, 32, 48, 0, 0, 1, 0.0f, 0},
        {"Tq 20 Tk 40 dk 130 dv 70 dropout", 2, 3, 20, 40, 130, 70, 1, 20, 1, 0.1f, 0},
        {"Tq 40 Tk 100 dk 160 dv 96", 2, 2, 40, 100, 160, 96, 0, 0, 1, 0.0f, 0},
        {"Tq 64 Tk 64 dk 96 dv 80", 2, 2, 64, 64, 96, 80, 1, 0, 0, 0.0f, 0},
        {"B*H > 65535 Tq 6", 8200, 8, 6, 5, 5, 3, 1, 0, 0, 0.0f, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_attention(&cases[i]);
    /* Decoding: one query over a cache of Tk = 1..33 keys (the row kernel),
     * causal at the cache's offset, padded keys; dense (float4) for odd Tk. */
    for (int tk = 1; tk <= 33; tk++) {
        char name[64];
        snprintf(name, sizeof name, "decode Tq 1 Tk %d pad%s", tk, tk % 2 ? " dense" : "");
        attn_case c = {name, 5, 4, 1, tk, 64, 64, 1, tk - 1, 1, 0.0f, tk % 2};
        test_attention(&c);
    }
    /* The tiled ops over the same shapes, in fp32 mode (CUDA cores) and BF16
     * mode (tensor cores for head sizes up to 128, fp32 past that), and
     * shapes of their own: dense layouts (16-byte loads; the training shapes:
     * self 32x32 causal, cross Tq 32 Tk 47), several tiles of 64 (Tq, Tk 150),
     * head sizes 128 / 100 and 16 (the bf16 tiles padded to 128 and 32). */
    static const attn_case tiled_cases[] = {
        {"dense self 32x32 dk 64 causal pad dropout", 12, 8, 32, 32, 64, 64, 1, 0, 1, 0.1f, 1},
        {"dense cross Tq 32 Tk 47 pad dropout", 7, 8, 32, 47, 64, 64, 0, 0, 1, 0.1f, 1},
        {"dense Tq 150 Tk 150 causal pad dropout", 3, 4, 150, 150, 64, 64, 1, 0, 1, 0.1f, 1},
        {"dense Tq 77 Tk 150 dk 128 dv 100 pad", 2, 3, 77, 150, 128, 100, 0, 0, 1, 0.0f, 1},
        {"Tq 70 Tk 33 dk 100 dv 128 causal dropout", 2, 3, 70, 33, 100, 128, 1, 5, 0, 0.1f, 0},
        {"dense Tq 20 Tk 9 dk 16 dv 16 pad", 5, 3, 20, 9, 16, 16, 0, 0, 1, 0.0f, 1},
    };
    for (int bf16 = 0; bf16 < 2; bf16++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_attention_tiled(&cases[i], bf16);
        for (size_t i = 0; i < sizeof tiled_cases / sizeof tiled_cases[0]; i++)
            test_attention_tiled(&tiled_cases[i], bf16);
    }
    printf("tiled attention: %d forwards filled their output keep\n", g_attn_keeps_filled);
    CHECK(g_attn_keeps_filled > 0, "no tiled forward filled its output keep (the dense bf16 cases should)");
    test_xent(0.0f);
    test_xent(0.1f);
    for (int acc = 0; acc < 2; acc++) {
        test_logits_backward(37, 72, 1001, 0, 0, acc);
        test_logits_backward(37, 72, 1001, 1, 0, acc);
        test_logits_backward(299, 520, 1001, 1, 1, acc); /* 2 x 2 x 299 x 520 x 1001 flops: the bf16 copy pays */
    }
    test_logits_backward(23, 40, 37000, 0, 0, 1);
    test_logits_backward(301, 256, 37000, 1, 1, 1);
    for (int acc = 0; acc < 2; acc++) {
        test_logits_loss(37, 72, 1001, 0, 0, acc, NULL, 1);
        test_logits_loss(37, 72, 1001, 1, 0, acc, NULL, 1);    /* few rows: the composition */
        test_logits_loss(600, 520, 1001, 1, 1, acc, NULL, 1);  /* packed (the copies pay), 1001 -> 1024 columns */
        test_logits_loss(600, 520, 1001, 1, 1, acc, NULL, 0);  /* packed, the loss in the forward */
    }
    test_logits_loss(600, 520, 1001, 1, 1, 1, "8", 1);      /* packed, 1008 columns */
    test_logits_loss(301, 256, 37000, 1, 1, 0, NULL, 1);    /* the model's vocabulary: 37056 columns */
    test_logits_loss(301, 256, 37000, 1, 1, 0, NULL, 0);
    test_logits_loss(301, 256, 140000, 1, 1, 0, NULL, 1);   /* rows too long for the one-pass kernel */
    test_params_lowp();
    for (int acc = 0; acc < 2; acc++) {
        test_linear_kept(2000, 256, 512, 1, 1, acc, 0); /* the copies pay: kept */
        test_linear_kept(2000, 256, 512, 1, 1, acc, 1); /* the keep filled by an earlier linear of the input */
        test_linear_kept(2000, 256, 388, 1, 1, acc, 0); /* dout's copy padded (388 % 8 == 4), summed in one read */
        test_linear_kept(37, 72, 40, 1, 0, acc, 0);     /* few rows: nothing kept */
        test_linear_kept(301, 72, 40, 0, 0, acc, 0);    /* fp32 */
    }
    test_log_softmax();
    test_ffn();
    if (atoi(tfm_test_env("TFM_CUDA_OPS_TIME", "0"))) time_ops();
    return tfm_test_finish();
}
