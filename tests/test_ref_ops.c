/*
 * test_ref_ops.c: every reference op, forward and backward, against PyTorch
 * in float32 (tensors written by tests/ref/make_ops.py).
 *
 * Tolerances, as worst relative error = max|ours - torch| / max|torch|:
 *   forward outputs  <= 1e-5
 *   gradients        <= 1e-4   (more rounding steps, and sums in another order)
 * One line per tensor. Attention rows whose keys are all masked are NaN in
 * PyTorch's own masked softmax; the reference zeroes them and so do we.
 *
 * Format (see make_ops.py): $TFM_REF_DIR/ops_index.txt, first line
 * "tfm-ops-ref 1", then "<name> <f32|i32|u8> <d0,d1,...> <file>" per tensor,
 * each file raw little-endian data. Skips (exit 77) when the index is missing.
 *
 * It does not check gradients by finite differences: test_grad_ops.c does.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "test_util.h"

#define TOL_FWD 1e-5
#define TOL_GRAD 1e-4

/* ------------------------------------------------------------- the index */

typedef struct ref_entry {
    char name[96], dtype[8], file[160];
    int ndim;
    long shape[8];
    size_t n;
} ref_entry;

static ref_entry *g_refs;
static int g_nrefs;
static char g_dir[1024];

static void die(const char *msg, const char *what) {
    fprintf(stderr, "FAIL: %s: %s\n", msg, what);
    printf("FAIL: %s: %s\n", msg, what);
    exit(1);
}

/* Reads the index; returns 0 when it does not exist. A malformed index fails. */
static int load_index(const char *dir) {
    snprintf(g_dir, sizeof g_dir, "%s", dir);
    char path[1200];
    snprintf(path, sizeof path, "%s/ops_index.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512];
    if (!fgets(line, sizeof line, f) || strncmp(line, "tfm-ops-ref 1", 13) != 0)
        die("not a version-1 ops reference index (regenerate with tests/ref/generate.sh)", path);
    int cap = 64;
    g_refs = malloc(cap * sizeof *g_refs);
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '\n' || line[0] == '\0') continue;
        if (g_nrefs == cap) {
            cap *= 2;
            g_refs = realloc(g_refs, cap * sizeof *g_refs);
        }
        if (!g_refs) die("out of memory", path);
        ref_entry *e = &g_refs[g_nrefs];
        char shape[128];
        if (sscanf(line, "%95s %7s %127s %159s", e->name, e->dtype, shape, e->file) != 4)
            die("malformed index line", line);
        e->ndim = 0;
        e->n = 1;
        for (char *s = shape; *s;) {
            char *end;
            long d = strtol(s, &end, 10);
            if (end == s || d < 0 || e->ndim == 8) die("malformed shape in index", line);
            e->shape[e->ndim++] = d;
            e->n *= (size_t)d;
            s = *end == ',' ? end + 1 : end;
        }
        g_nrefs++;
    }
    fclose(f);
    return 1;
}

static const ref_entry *find(const char *name) {
    for (int i = 0; i < g_nrefs; i++)
        if (strcmp(g_refs[i].name, name) == 0) return &g_refs[i];
    return NULL;
}

static int has(const char *name) { return find(name) != NULL; }

/* Loads a tensor (malloc'd); a missing or short file fails the whole test. */
static void *load(const char *name, const char *dtype, size_t elem, const ref_entry **out_e) {
    const ref_entry *e = find(name);
    if (!e) die("tensor missing from ops_index.txt", name);
    if (strcmp(e->dtype, dtype) != 0) die("unexpected dtype", name);
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", g_dir, e->file);
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open", path);
    void *p = malloc(e->n * elem + 1);
    if (!p) die("out of memory", name);
    if (fread(p, elem, e->n, f) != e->n) die("short file", path);
    fclose(f);
    if (out_e) *out_e = e;
    return p;
}

static float *ldf(const char *name) { return load(name, "f32", 4, NULL); }
static int32_t *ldi(const char *name) { return load(name, "i32", 4, NULL); }
static long dim(const char *name, int i) {
    const ref_entry *e = find(name);
    if (!e || i >= e->ndim) die("tensor or dimension missing", name);
    return e->shape[i];
}
static size_t numel(const char *name) {
    const ref_entry *e = find(name);
    if (!e) die("tensor missing from ops_index.txt", name);
    return e->n;
}

/* Compares ours with the reference tensor `ref` (prefix + key). */
static void cmp(const char *prefix, const char *key, const float *ours, double tol) {
    char name[128];
    snprintf(name, sizeof name, "%s%s", prefix, key);
    float *want = ldf(name);
    tfm_test_close(name, ours, want, numel(name), tol);
    free(want);
}

/* -------------------------------------------------------------------- ops */

static void ref_linear(void) {
    int N = (int)dim("linear.in", 0), I = (int)dim("linear.in", 1), O = (int)dim("linear.w", 0);
    float *in = ldf("linear.in"), *w = ldf("linear.w"), *b = ldf("linear.b"), *dout = ldf("linear.dout");
    float *out = calloc((size_t)N * O, 4), *din = calloc((size_t)N * I, 4);
    float *dw = calloc((size_t)O * I, 4), *db = calloc(O, 4);
    tfm_linear_forward(out, in, w, b, N, I, O);
    tfm_linear_backward(din, dw, db, dout, in, w, N, I, O, 0);
    cmp("linear.", "out", out, TOL_FWD);
    cmp("linear.", "din", din, TOL_GRAD);
    cmp("linear.", "dw", dw, TOL_GRAD);
    cmp("linear.", "db", db, TOL_GRAD);
    free(in), free(w), free(b), free(dout), free(out), free(din), free(dw), free(db);
}

static void ref_embedding(void) {
    int V = (int)dim("emb.table", 0), D = (int)dim("emb.table", 1), N = (int)dim("emb.ids", 0);
    int32_t *ids = ldi("emb.ids");
    float *table = ldf("emb.table"), *dout = ldf("emb.dout"), *scale = ldf("emb.scale");
    float *out = calloc((size_t)N * D, 4), *dt = calloc((size_t)V * D, 4);
    tfm_embedding_forward(out, ids, table, N, D, scale[0]);
    tfm_embedding_backward(dt, dout, ids, N, D, scale[0]);
    cmp("emb.", "out", out, TOL_FWD);
    cmp("emb.", "dtable", dt, TOL_GRAD);
    free(ids), free(table), free(dout), free(scale), free(out), free(dt);

    int P = (int)dim("pos.table", 0);
    N = (int)dim("pos.x", 0), D = (int)dim("pos.x", 1);
    int32_t *pos = ldi("pos.pos");
    float *x = ldf("pos.x"), *pt = ldf("pos.table"), *pd = ldf("pos.dout"), *dpt = calloc((size_t)P * D, 4);
    tfm_positions_forward(x, pt, pos, N, D);
    tfm_positions_backward(dpt, pd, pos, N, D);
    cmp("pos.", "out", x, TOL_FWD);
    cmp("pos.", "dtable", dpt, TOL_GRAD);
    free(pos), free(x), free(pt), free(pd), free(dpt);

    P = (int)dim("sin.table", 0), D = (int)dim("sin.table", 1);
    float *st = calloc((size_t)P * D, 4);
    tfm_sinusoidal_table(st, P, D);
    cmp("sin.", "table", st, TOL_FWD);
    free(st);
}

/* Rope on rows of a wider strided buffer (as inside the packed q/k/v rows). */
static void ref_rope(void) {
    int N = (int)dim("rope.pos", 0), HD = (int)dim("rope.x", 1), H = 3, dk = HD / H;
    if (H * dk != HD) die("rope.x width is not 3 heads", "rope.x");
    long row = HD + 5;
    int32_t *pos = ldi("rope.pos");
    float *x = ldf("rope.x"), *dout = ldf("rope.dout"), *theta = ldf("rope.theta");
    float *buf = calloc((size_t)N * row, 4), *gbuf = calloc((size_t)N * row, 4);
    float *out = calloc((size_t)N * HD, 4), *dx = calloc((size_t)N * HD, 4);
    for (int n = 0; n < N; n++) {
        memcpy(buf + n * row, x + (size_t)n * HD, HD * 4);
        memcpy(gbuf + n * row, dout + (size_t)n * HD, HD * 4);
    }
    tfm_rope(buf, row, pos, N, H, dk, theta[0], 0);
    tfm_rope(gbuf, row, pos, N, H, dk, theta[0], 1); /* the backward: the inverse rotation */
    for (int n = 0; n < N; n++) {
        memcpy(out + (size_t)n * HD, buf + n * row, HD * 4);
        memcpy(dx + (size_t)n * HD, gbuf + n * row, HD * 4);
    }
    cmp("rope.", "out", out, TOL_FWD);
    cmp("rope.", "dx", dx, TOL_GRAD);
    free(pos), free(x), free(dout), free(theta), free(buf), free(gbuf), free(out), free(dx);
}

static void ref_layernorm(void) {
    int N = (int)dim("ln.in", 0), D = (int)dim("ln.in", 1);
    float *in = ldf("ln.in"), *w = ldf("ln.w"), *b = ldf("ln.b"), *dout = ldf("ln.dout"), *eps = ldf("ln.eps");
    float *out = calloc((size_t)N * D, 4), *mean = calloc(N, 4), *rstd = calloc(N, 4);
    float *din = calloc((size_t)N * D, 4), *dw = calloc(D, 4), *db = calloc(D, 4);
    tfm_layernorm_forward(out, mean, rstd, in, w, b, N, D, eps[0]);
    tfm_layernorm_backward(din, dw, db, dout, in, mean, rstd, w, N, D, 0);
    cmp("ln.", "out", out, TOL_FWD);
    cmp("ln.", "mean", mean, TOL_FWD);
    cmp("ln.", "rstd", rstd, TOL_FWD);
    cmp("ln.", "din", din, TOL_GRAD);
    cmp("ln.", "dw", dw, TOL_GRAD);
    cmp("ln.", "db", db, TOL_GRAD);
    free(in), free(w), free(b), free(dout), free(eps), free(out), free(mean), free(rstd);
    free(din), free(dw), free(db);
}

static void ref_activation(const char *name, tfm_act_kind kind) {
    char pre[32], key[64];
    snprintf(pre, sizeof pre, "%s.", name);
    snprintf(key, sizeof key, "%sin", pre);
    size_t n = numel(key);
    float *in = ldf(key);
    snprintf(key, sizeof key, "%sdout", pre);
    float *dout = ldf(key), *out = calloc(n, 4), *din = calloc(n, 4);
    tfm_activation_forward(out, in, n, kind);
    tfm_activation_backward(din, dout, in, n, kind);
    cmp(pre, "out", out, TOL_FWD);
    cmp(pre, "din", din, TOL_GRAD);
    free(in), free(dout), free(out), free(din);
}

static void ref_dropout(void) {
    size_t n = numel("drop.x");
    int32_t *cfg = ldi("drop.cfg");
    float *p = ldf("drop.p"), *x = ldf("drop.x"), *y = ldf("drop.y"), *dout = ldf("drop.dout");
    float *out = calloc(n, 4), *dy = calloc(n, 4), *dropy = calloc(n, 4);
    tfm_dropout(dropy, y, n, p[0], (uint64_t)cfg[0], (uint64_t)cfg[1]);
    tfm_residual_dropout(out, x, y, n, p[0], (uint64_t)cfg[0], (uint64_t)cfg[1]);
    tfm_dropout(dy, dout, n, p[0], (uint64_t)cfg[0], (uint64_t)cfg[1]); /* backward: dy = dropout(dout) */
    cmp("drop.", "dropout_y", dropy, TOL_FWD);
    cmp("drop.", "out", out, TOL_FWD);
    cmp("drop.", "dx", dout, TOL_GRAD); /* dx = dout */
    cmp("drop.", "dy", dy, TOL_GRAD);
    free(cfg), free(p), free(x), free(y), free(dout), free(out), free(dy), free(dropy);
}

/* q [B,Tq,H*dk], k [B,Tk,H*dk], v [B,Tk,H*dv] contiguous, as saved. */
static void ref_attention(const char *name) {
    char pre[64], key[128];
    snprintf(pre, sizeof pre, "attn.%s.", name);
#define KEY(k) (snprintf(key, sizeof key, "%s%s", pre, k), key)
    int32_t *cfg = ldi(KEY("cfg"));
    float *p = ldf(KEY("p"));
    tfm_attn_dims d;
    memset(&d, 0, sizeof d);
    d.B = cfg[0], d.H = cfg[1], d.Tq = cfg[2], d.Tk = cfg[3], d.dk = cfg[4], d.dv = cfg[5];
    d.causal = cfg[6], d.q_offset = cfg[7];
    d.seed = (uint64_t)cfg[9], d.stream = (uint64_t)cfg[10];
    d.dropout = p[0];
    d.scale = 1.0 / sqrt((double)d.dk);
    d.q_row = (long)d.H * d.dk, d.q_batch = d.Tq * d.q_row;
    d.k_row = (long)d.H * d.dk, d.k_batch = d.Tk * d.k_row;
    d.v_row = (long)d.H * d.dv, d.v_batch = d.Tk * d.v_row;
    d.o_row = (long)d.H * d.dv, d.o_batch = d.Tq * d.o_row;
    uint8_t *pad = NULL;
    if (cfg[8]) {
        pad = load(KEY("key_pad"), "u8", 1, NULL);
        d.key_pad = pad, d.key_pad_stride = d.Tk;
    }
    float *q = ldf(KEY("q")), *k = ldf(KEY("k")), *v = ldf(KEY("v")), *dout = ldf(KEY("dout"));
    size_t nq = numel(KEY("q")), nk = numel(KEY("k")), nv = numel(KEY("v")), no = numel(KEY("dout"));
    size_t np = (size_t)d.B * d.H * d.Tq * d.Tk;
    float *out = calloc(no, 4), *probs = calloc(np, 4), *scratch = calloc(np, 4);
    float *dq = calloc(nq, 4), *dk = calloc(nk, 4), *dv = calloc(nv, 4);
    tfm_attention_forward(out, probs, scratch, q, k, v, &d);
    tfm_attention_backward(dq, dk, dv, scratch, dout, probs, q, k, v, &d);
    cmp(pre, "out", out, TOL_FWD);
    cmp(pre, "probs", probs, TOL_FWD);
    cmp(pre, "dq", dq, TOL_GRAD);
    cmp(pre, "dk", dk, TOL_GRAD);
    cmp(pre, "dv", dv, TOL_GRAD);
    /* The same case through PyTorch's own attention implementations, when saved. */
    static const char *alt[] = {"mha_", "sdpa_"};
    for (int a = 0; a < 2; a++) {
        const char *ks[] = {"out", "probs", "dq", "dk", "dv"};
        const float *ours[] = {out, probs, dq, dk, dv};
        for (int i = 0; i < 5; i++) {
            char sub[32];
            snprintf(sub, sizeof sub, "%s%s", alt[a], ks[i]);
            if (has(KEY(sub))) cmp(pre, sub, ours[i], i < 2 ? TOL_FWD : TOL_GRAD);
        }
    }
    /* Masked probabilities exactly 0, rows with every key masked give exact zeros. */
    int zeros = 1, no_nan = 1;
    for (size_t i = 0; i < no; i++) no_nan &= !isnan(out[i]);
    for (int b = 0; b < d.B; b++)
        for (int h = 0; h < d.H; h++)
            for (int i = 0; i < d.Tq; i++) {
                int live = 0;
                for (int j = 0; j < d.Tk; j++) {
                    int masked = (d.causal && j > i + d.q_offset) || (pad && pad[(size_t)b * d.Tk + j]);
                    if (masked) zeros &= probs[(((size_t)b * d.H + h) * d.Tq + i) * d.Tk + j] == 0.0f;
                    live |= !masked;
                }
                if (!live)
                    for (int e = 0; e < d.dv; e++)
                        zeros &= out[(size_t)b * d.o_batch + (size_t)i * d.o_row + h * d.dv + e] == 0.0f;
            }
    CHECK(zeros, "%s: masked probabilities or all-masked outputs are not exactly 0", name);
    CHECK(no_nan, "%s: NaN in the attention output", name);
#undef KEY
    free(cfg), free(p), free(pad), free(q), free(k), free(v), free(dout), free(out), free(probs);
    free(scratch), free(dq), free(dk), free(dv);
}

static void ref_xent(const char *name) {
    char pre[64], key[128];
    snprintf(pre, sizeof pre, "xent.%s.", name);
#define KEY(k) (snprintf(key, sizeof key, "%s%s", pre, k), key)
    int N = (int)dim(KEY("logits"), 0), V = (int)dim(KEY("logits"), 1);
    int32_t *cfg = ldi(KEY("cfg")), *targets = ldi(KEY("targets"));
    float *logits = ldf(KEY("logits")), *eps = ldf(KEY("smoothing")), *loss_ref = ldf(KEY("loss"));
    float *lse = calloc(N, 4), *g = calloc((size_t)N * V, 4), *gm = calloc((size_t)N * V, 4);
    long count = 0;
    double loss = tfm_xent_forward(lse, logits, targets, N, V, cfg[0], eps[0], &count);
    tfm_xent_backward(g, logits, lse, targets, N, V, cfg[0], eps[0], 1.0f);
    tfm_xent_backward(gm, logits, lse, targets, N, V, cfg[0], eps[0], 1.0f / (float)count);
    float lossf = (float)loss;
    cmp(pre, "loss", &lossf, TOL_FWD);
    cmp(pre, "lse", lse, TOL_FWD);
    cmp(pre, "dlogits", g, TOL_GRAD);
    cmp(pre, "dlogits_mean", gm, TOL_GRAD);
    CHECK(count == cfg[1], "%s: counted %ld rows, PyTorch %d (pad rows must not count)", name, count, cfg[1]);
#undef KEY
    free(cfg), free(targets), free(logits), free(eps), free(loss_ref), free(lse), free(g), free(gm);
}

static void ref_log_softmax(void) {
    int N = (int)dim("logsm.logits", 0), V = (int)dim("logsm.logits", 1);
    float *x = ldf("logsm.logits"), *y = calloc((size_t)N * V, 4);
    tfm_log_softmax(y, x, N, V);
    cmp("logsm.", "out", y, TOL_FWD);
    free(x), free(y);
}

int main(void) {
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) tfm_test_skip("reference files are little-endian; this host is not");
    const char *dir = tfm_test_env("TFM_REF_DIR", "refs");
    if (!load_index(dir)) {
        char why[1400];
        snprintf(why, sizeof why,
                 "%s/ops_index.txt not found: generate it with "
                 "`/usr/bin/python3 tests/ref/make_ops.py %s` (or run ctest, whose ref_generate fixture does)",
                 dir, dir);
        tfm_test_skip(why);
    }
    printf("reference: %s (%d tensors); tolerance: forward %.0e, gradients %.0e (max|diff| / max|torch|)\n",
           dir, g_nrefs, TOL_FWD, TOL_GRAD);
    ref_linear();
    ref_embedding();
    ref_rope();
    ref_layernorm();
    ref_activation("relu", TFM_OP_RELU);
    ref_activation("gelu", TFM_OP_GELU);
    ref_dropout();
    ref_attention("plain");
    ref_attention("causal");
    ref_attention("causal_offset");
    ref_attention("cross_pad");
    ref_attention("one_query");
    ref_attention("one_query_causal");
    ref_attention("many_queries");
    ref_attention("dropout");
    ref_xent("ls0");
    ref_xent("ls01");
    ref_log_softmax();
    free(g_refs);
    return tfm_test_finish();
}
