/*
 * test_schedule_bad.c: the optimizer's and the LR schedules' contracts without
 * PyTorch: bad hyperparameters give TFM_ERR_INVALID with a message naming the
 * field, names parse both ways, the schedules' shapes (peak, continuity,
 * floor), clipping's edge cases (no-op, NaN, Inf), the norm's bit-for-bit
 * determinism across thread counts, and the parallel Adam loop against the
 * serial one.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/rng.h"
#include "test_util.h"
#include "train/optim.h"
#include "train/schedule.h"

/* Expects TFM_ERR_INVALID and a message containing `field`. */
static void expect_invalid(tfm_status st, const char *field, const char *what) {
    CHECK(st == TFM_ERR_INVALID, "%s: status %s, want invalid", what, tfm_status_name(st));
    CHECK(strstr(tfm_last_error(), field) != NULL, "%s: message '%s' does not name '%s'", what,
          tfm_last_error(), field);
}

static tfm_lr_schedule sched(tfm_lr_kind kind) {
    tfm_lr_schedule s;
    tfm_lr_schedule_default(&s);
    s.kind = kind;
    return s;
}

static void test_lr_validate(void) {
    tfm_lr_schedule s = sched(TFM_LR_NOAM);
    CHECK(tfm_lr_validate(&s) == TFM_OK, "default: %s", tfm_last_error());
    for (int k = 0; k <= TFM_LR_INVSQRT; k++) {
        s = sched((tfm_lr_kind)k);
        CHECK(tfm_lr_validate(&s) == TFM_OK, "default %s: %s", tfm_lr_kind_name(s.kind),
              tfm_last_error());
        s.warmup = -1;
        expect_invalid(tfm_lr_validate(&s), "warmup", "warmup -1");
    }
    s = sched((tfm_lr_kind)99);
    expect_invalid(tfm_lr_validate(&s), "kind", "kind 99");

    s = sched(TFM_LR_NOAM);
    s.lr = 0; /* unused by noam: not validated */
    s.gamma = -1;
    CHECK(tfm_lr_validate(&s) == TFM_OK, "noam ignores lr and gamma: %s", tfm_last_error());
    s.factor = 0;
    expect_invalid(tfm_lr_validate(&s), "factor", "noam factor 0");
    s = sched(TFM_LR_NOAM);
    s.d_model = 0;
    expect_invalid(tfm_lr_validate(&s), "d_model", "noam d_model 0");
    s = sched(TFM_LR_NOAM);
    s.warmup = 0;
    expect_invalid(tfm_lr_validate(&s), "warmup", "noam warmup 0");
    s = sched(TFM_LR_INVSQRT);
    s.warmup = 0;
    expect_invalid(tfm_lr_validate(&s), "warmup", "inverse_sqrt warmup 0");

    s = sched(TFM_LR_CONSTANT);
    s.lr = 0;
    expect_invalid(tfm_lr_validate(&s), "lr:", "constant lr 0");
    s.lr = INFINITY;
    expect_invalid(tfm_lr_validate(&s), "lr:", "constant lr inf");
    s.lr = NAN;
    expect_invalid(tfm_lr_validate(&s), "lr:", "constant lr nan");

    s = sched(TFM_LR_COSINE);
    s.warmup = 200;
    s.total_steps = 100;
    expect_invalid(tfm_lr_validate(&s), "total_steps", "cosine total < warmup");
    s.total_steps = 200;
    expect_invalid(tfm_lr_validate(&s), "total_steps", "cosine total == warmup");
    s.total_steps = 201;
    CHECK(tfm_lr_validate(&s) == TFM_OK, "cosine total = warmup + 1: %s", tfm_last_error());
    s.min_lr = 2 * s.lr;
    expect_invalid(tfm_lr_validate(&s), "min_lr", "cosine min_lr > lr");
    s.min_lr = -1e-5f;
    expect_invalid(tfm_lr_validate(&s), "min_lr", "cosine min_lr < 0");

    s = sched(TFM_LR_STEP);
    s.gamma = 0;
    expect_invalid(tfm_lr_validate(&s), "gamma", "step gamma 0");
    s.gamma = NAN;
    expect_invalid(tfm_lr_validate(&s), "gamma", "step gamma nan");
    s.gamma = 0.5f;
    s.step_size = 0;
    expect_invalid(tfm_lr_validate(&s), "step_size", "step step_size 0");
    s = sched(TFM_LR_EXP);
    s.gamma = -0.9f;
    expect_invalid(tfm_lr_validate(&s), "gamma", "exp gamma < 0");
    s.step_size = 0; /* unused by exp */
    s.gamma = 0.9f;
    CHECK(tfm_lr_validate(&s) == TFM_OK, "exp ignores step_size: %s", tfm_last_error());
}

static void test_lr_names(void) {
    const char *names[] = {"noam", "cosine", "step", "exp", "constant", "inverse_sqrt"};
    for (int k = 0; k < 6; k++) {
        tfm_lr_kind kind = (tfm_lr_kind)99;
        CHECK(tfm_lr_kind_parse(names[k], &kind) == TFM_OK && (int)kind == k, "parse %s",
              names[k]);
        CHECK(strcmp(tfm_lr_kind_name((tfm_lr_kind)k), names[k]) == 0, "name of %d", k);
    }
    const char *bad[] = {"Noam", "", "cosine ", "invsqrt", "linear"};
    for (int k = 0; k < 5; k++) {
        tfm_lr_kind kind = TFM_LR_COSINE;
        expect_invalid(tfm_lr_kind_parse(bad[k], &kind), "inverse_sqrt", bad[k]);
        CHECK(kind == TFM_LR_COSINE, "a failed parse wrote the output");
    }
    CHECK(strcmp(tfm_lr_kind_name((tfm_lr_kind)-1), "?") == 0, "name of -1");
}

static void test_lr_shapes(void) {
    /* noam: rises linearly to its peak at step = warmup, then falls as step^-0.5. */
    tfm_lr_schedule s = sched(TFM_LR_NOAM);
    double peak = 1.0 / sqrt(512.0) / sqrt(4000.0);
    CHECK(fabs(tfm_lr_at(&s, 4000) / peak - 1) < 1e-6, "noam peak %g, want %g",
          tfm_lr_at(&s, 4000), peak);
    CHECK(fabs(tfm_lr_at(&s, 1) / (peak / 4000) - 1) < 1e-6, "noam step 1");
    CHECK(fabs(tfm_lr_at(&s, 16000) / (peak / 2) - 1) < 1e-6, "noam step 4 * warmup");
    int mono = 1;
    for (long k = 1; k < 8000; k++)
        mono &= k < 4000 ? tfm_lr_at(&s, k) < tfm_lr_at(&s, k + 1)
                         : tfm_lr_at(&s, k) > tfm_lr_at(&s, k + 1);
    CHECK(mono, "noam is not rise-then-fall");

    /* cosine: lr at the end of warmup and at the first cosine step; min_lr after. */
    s = sched(TFM_LR_COSINE);
    s.lr = 1e-3f;
    s.warmup = 10;
    s.total_steps = 110;
    s.min_lr = 1e-5f;
    CHECK(tfm_lr_at(&s, 10) == s.lr && tfm_lr_at(&s, 11) == s.lr, "cosine peak %g %g",
          tfm_lr_at(&s, 10), tfm_lr_at(&s, 11));
    CHECK(tfm_lr_at(&s, 110) > s.min_lr, "cosine step total_steps %g", tfm_lr_at(&s, 110));
    CHECK(tfm_lr_at(&s, 111) == s.min_lr && tfm_lr_at(&s, 1000000) == s.min_lr,
          "cosine after total_steps %g", tfm_lr_at(&s, 111));
    CHECK(fabs(tfm_lr_at(&s, 61) / (0.5f * (s.lr + s.min_lr)) - 1) < 1e-6, "cosine midpoint %g",
          tfm_lr_at(&s, 61));

    /* step: the first step_size steps after warmup run at lr. */
    s = sched(TFM_LR_STEP);
    s.lr = 1.0f;
    s.warmup = 0;
    s.gamma = 0.5f;
    s.step_size = 3;
    CHECK(tfm_lr_at(&s, 3) == 1.0f && tfm_lr_at(&s, 4) == 0.5f && tfm_lr_at(&s, 7) == 0.25f,
          "step %g %g %g", tfm_lr_at(&s, 3), tfm_lr_at(&s, 4), tfm_lr_at(&s, 7));
    s = sched(TFM_LR_EXP);
    s.lr = 1.0f;
    s.warmup = 0;
    s.gamma = 0.5f;
    CHECK(tfm_lr_at(&s, 1) == 1.0f && tfm_lr_at(&s, 3) == 0.25f, "exp");
    s = sched(TFM_LR_CONSTANT);
    s.warmup = 4;
    CHECK(tfm_lr_at(&s, 2) == 0.5f * s.lr && tfm_lr_at(&s, 4) == s.lr &&
              tfm_lr_at(&s, 1000) == s.lr,
          "constant warmup");
    s = sched(TFM_LR_INVSQRT);
    s.warmup = 100;
    CHECK(tfm_lr_at(&s, 100) == s.lr, "inverse_sqrt peak");
    CHECK(fabs(tfm_lr_at(&s, 400) / (0.5 * s.lr) - 1) < 1e-6, "inverse_sqrt 4 * warmup");
}

static void test_adam_validate(void) {
    tfm_adam_params p;
    tfm_adam_default_params(&p);
    CHECK(p.kind == TFM_OPT_ADAM && p.beta1 == 0.9f && p.beta2 == 0.98f && p.eps == 1e-9f &&
              p.weight_decay == 0 && p.clip_norm == 0,
          "defaults are not the paper's");
    CHECK(tfm_adam_validate(&p) == TFM_OK, "default: %s", tfm_last_error());
    struct { const char *field; float *f; float value; } bad[] = {
        {"beta1", &p.beta1, 1.0f},         {"beta1", &p.beta1, -0.1f},
        {"beta2", &p.beta2, NAN},          {"beta2", &p.beta2, 1.5f},
        {"eps", &p.eps, -1e-8f},           {"eps", &p.eps, INFINITY},
        {"weight_decay", &p.weight_decay, -0.01f}, {"clip_norm", &p.clip_norm, -1.0f},
        {"clip_norm", &p.clip_norm, NAN},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        tfm_adam_default_params(&p);
        *bad[k].f = bad[k].value;
        expect_invalid(tfm_adam_validate(&p), bad[k].field, bad[k].field);
    }
    tfm_adam_default_params(&p);
    p.kind = (tfm_opt_kind)7;
    expect_invalid(tfm_adam_validate(&p), "kind", "kind 7");
    tfm_opt_kind kind;
    CHECK(tfm_opt_kind_parse("adamw", &kind) == TFM_OK && kind == TFM_OPT_ADAMW, "adamw");
    CHECK(tfm_opt_kind_parse("adam", &kind) == TFM_OK && kind == TFM_OPT_ADAM, "adam");
    expect_invalid(tfm_opt_kind_parse("sgd", &kind), "adamw", "sgd");
    CHECK(strcmp(tfm_opt_kind_name(TFM_OPT_ADAMW), "adamw") == 0, "name adamw");
    CHECK(strcmp(tfm_opt_kind_name((tfm_opt_kind)5), "?") == 0, "name 5");
}

static void test_decimal(void) {
    CHECK(tfm_float_as_decimal(0.98f) == 0.98, "0.98f -> %.17g", tfm_float_as_decimal(0.98f));
    CHECK(tfm_float_as_decimal(0.9f) == 0.9, "0.9f");
    CHECK(tfm_float_as_decimal(1e-3f) == 1e-3, "1e-3f");
    CHECK(tfm_float_as_decimal(1e-9f) == 1e-9, "1e-9f");
    CHECK(tfm_float_as_decimal(3.0f) == 3.0 && tfm_float_as_decimal(0.0f) == 0.0, "3, 0");
    CHECK(tfm_float_as_decimal(INFINITY) == INFINITY, "inf");
    CHECK(isnan(tfm_float_as_decimal(NAN)), "nan");
    int ok = 1;
    for (uint64_t i = 0; i < 20000; i++) {
        uint32_t bits = (uint32_t)tfm_rng_u64(3, 0, i);
        float x;
        memcpy(&x, &bits, sizeof x);
        if (!isfinite(x)) continue;
        ok &= (float)tfm_float_as_decimal(x) == x;
    }
    CHECK(ok, "some float does not round-trip through its decimal");
}

static void test_norm_and_clip(void) {
    /* The norm is the same bits at any thread count, and close to a long double sum. */
    size_t n = 3000017;
    float *g = malloc(n * sizeof *g);
    CHECK(g != NULL, "out of memory");
    if (!g) return;
    long double ref = 0;
    for (size_t i = 0; i < n; i++) {
        g[i] = 2.0f * tfm_rng_uniform(5, 0, i) - 1.0f;
        ref += (long double)g[i] * g[i];
    }
    float norm1 = tfm_grad_global_norm(g, n);
    CHECK(fabsl(norm1 / sqrtl(ref) - 1) < 1e-7L, "norm %.9g, long double %.9Lg", norm1,
          sqrtl(ref));
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    for (int t = 1; t <= 5; t++) {
        omp_set_num_threads(t);
        float nt = tfm_grad_global_norm(g, n);
        CHECK(memcmp(&nt, &norm1, sizeof nt) == 0, "%d threads: norm %.9g vs %.9g", t, nt, norm1);
    }
    omp_set_num_threads(saved);
#endif
    CHECK(tfm_grad_global_norm(g, 0) == 0.0f, "empty norm");
    free(g);

    float small[4] = {0.3f, -0.4f, 0, 0}, keep[4];
    memcpy(keep, small, sizeof keep);
    float nn = tfm_grad_clip(small, 4, 1.0f);
    CHECK(fabsf(nn - 0.5f) < 1e-7f && memcmp(small, keep, sizeof keep) == 0,
          "norm 0.5 under max 1 must not touch the gradient");
    float big[2] = {3.0f, 4.0f};
    nn = tfm_grad_clip(big, 2, 1.0f);
    float after = tfm_grad_global_norm(big, 2);
    CHECK(nn == 5.0f && fabsf(after - 1.0f) < 1e-6f, "clip 5 -> %g, returned %g", after, nn);
    float withnan[3] = {1.0f, NAN, 2.0f};
    nn = tfm_grad_clip(withnan, 3, 1.0f);
    CHECK(isnan(nn) && withnan[0] == 1.0f && withnan[2] == 2.0f, "NaN norm leaves grad as is");
    float withinf[2] = {1.0f, INFINITY};
    nn = tfm_grad_clip(withinf, 2, 1.0f);
    CHECK(isinf(nn) && withinf[0] == 0.0f, "Inf norm: coefficient 0, as PyTorch");

    /* tfm_optim_step skips a step whose norm is not finite. */
    tfm_adam_params p;
    tfm_adam_default_params(&p);
    p.clip_norm = 1.0f;
    float param[2] = {1, 2}, grad[2] = {NAN, 1}, m[2] = {0, 0}, v[2] = {0, 0};
    nn = tfm_optim_step(&p, param, grad, m, v, 2, 1, 1e-3f);
    CHECK(isnan(nn) && param[0] == 1 && param[1] == 2 && m[1] == 0 && v[1] == 0,
          "non-finite norm must skip the update");
}

static void test_adam_parallel(void) {
    /* One call on a long buffer (the parallel path) against the same buffer
     * updated 1000 floats at a time (serial path): identical bits. */
    size_t n = 200003;
    float *buf = malloc(8 * n * sizeof *buf);
    CHECK(buf != NULL, "out of memory");
    if (!buf) return;
    float *p1 = buf, *m1 = buf + n, *v1 = buf + 2 * n, *p2 = buf + 3 * n, *m2 = buf + 4 * n,
          *v2 = buf + 5 * n, *g = buf + 6 * n;
    for (size_t i = 0; i < n; i++) {
        p1[i] = p2[i] = 2.0f * tfm_rng_uniform(9, 0, i) - 1.0f;
        m1[i] = m2[i] = v1[i] = v2[i] = 0;
    }
    for (int kind = 0; kind < 2; kind++) {
        tfm_adam_params p;
        tfm_adam_default_params(&p);
        p.kind = (tfm_opt_kind)kind;
        p.weight_decay = 0.01f;
        for (long step = 1; step <= 3; step++) {
            for (size_t i = 0; i < n; i++)
                g[i] = 0.1f * (tfm_rng_uniform(9, (uint64_t)step, i) - 0.5f);
            tfm_adam_step(&p, p1, g, m1, v1, n, step, 1e-3f);
            for (size_t lo = 0; lo < n; lo += 1000) {
                size_t len = n - lo < 1000 ? n - lo : 1000;
                tfm_adam_step(&p, p2 + lo, g + lo, m2 + lo, v2 + lo, len, step, 1e-3f);
            }
        }
    }
    CHECK(memcmp(p1, p2, n * sizeof *p1) == 0 && memcmp(m1, m2, n * sizeof *m1) == 0 &&
              memcmp(v1, v2, n * sizeof *v1) == 0,
          "the parallel Adam loop differs from the serial one");
    tfm_adam_params p;
    tfm_adam_default_params(&p);
    tfm_adam_step(&p, NULL, NULL, NULL, NULL, 0, 1, 1e-3f); /* n = 0 is fine */
    free(buf);
}

int main(void) {
    test_lr_validate();
    test_lr_names();
    test_lr_shapes();
    test_adam_validate();
    test_decimal();
    test_norm_and_clip();
    test_adam_parallel();
    return tfm_test_finish();
}
