/*
 * test_ref_optim.c: Adam/AdamW, gradient clipping and the LR schedules against
 * PyTorch (references from tests/ref/make_optim.py).
 *
 * For each optimizer case, from the same initial parameters and gradients:
 *   - the gradient norm against torch's clip_grad_norm_ (float32) and against
 *     the exact float64 norm;
 *   - the clipped gradients, and the parameters after EVERY step, against
 *     torch.optim.Adam / AdamW (foreach=False);
 *   - exp_avg / exp_avg_sq after the last step;
 *   - tfm_optim_step (clip + step in one call) gives the same bits;
 *   - the unclipped cases again on the buffer tiled 64 times (19264 floats),
 *     which takes the OpenMP path, every copy against the same reference.
 * Errors are max|ours - torch| / max|torch| over a tensor (tfm_test_close's
 * measure), the worst over all steps printed.
 * For each schedule: tfm_lr_at(step) for every step against PyTorch's scheduler
 * (or an independent formula), relative error per element.
 *
 * Tolerances: 1e-6 for parameters, moments, clipped gradients, the norm
 * against torch and every LR value; 1e-7 for the norm against float64 (ours
 * is accumulated in double and rounded once, so it is off by half a float ulp
 * at most, 6e-8).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "train/optim.h"
#include "train/schedule.h"

#define TOL_PARAM 1e-6
#define TOL_LR 1e-6
#define TOL_NORM_TORCH 1e-6
#define TOL_NORM_EXACT 1e-7
#define MAX_STEPS 16
#define TILES 64

static const char *ref_dir;

static FILE *open_ref(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", ref_dir, name);
    return fopen(path, "rb");
}

/* Reads exactly count float32 from ref_dir/name; NULL (and a failure) otherwise. */
static float *read_f32(const char *name, size_t count) {
    FILE *f = open_ref(name);
    float *buf = malloc(count * sizeof *buf);
    size_t got = f && buf ? fread(buf, sizeof *buf, count, f) : 0;
    int extra = f ? fgetc(f) != EOF : 0;
    if (f) fclose(f);
    CHECK(got == count && !extra, "%s/%s: want exactly %zu float32, got %zu%s", ref_dir, name,
          count, got, extra ? " and more" : "");
    if (got != count || extra) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* tfm_test_close's measure, without printing. */
static double rel_err(const float *a, const float *b, size_t n) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i])) return INFINITY;
        double d = fabs((double)a[i] - b[i]);
        if (d > max_diff) max_diff = d;
        if (fabs(b[i]) > max_ref) max_ref = fabs(b[i]);
    }
    return max_diff / (max_ref > 1e-6 ? max_ref : 1e-6);
}

static size_t count_equal(const float *a, const float *b, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += a[i] == b[i];
    return k;
}

static void report(const char *c, const char *what, double err, double tol, const char *extra) {
    int ok = err <= tol;
    char name[128];
    snprintf(name, sizeof name, "%s: %s", c, what);
    printf("%-36s worst rel err %.3e (tol %.0e)%s%s\n", name, err, tol, extra, ok ? "" : "  FAIL");
    CHECK(ok, "%s %s: %.3e > %.0e", c, what, err, tol);
}

typedef struct optim_case {
    char name[64], kind[16];
    float beta1, beta2, eps, wd, clip;
    float lr[MAX_STEPS];
} optim_case;

static void run_case(const optim_case *oc, const float *param0, size_t n, int steps,
                     double *worst_all) {
    char file[128];
    size_t sn = (size_t)steps * n;
#define LOAD(var, suffix, count)                                                   \
    snprintf(file, sizeof file, "optim_%s_%s.bin", oc->name, suffix);              \
    float *var = read_f32(file, count)
    LOAD(grads, "grads", sn);
    LOAD(gclip, "gclip", sn);
    LOAD(after, "params", sn);
    LOAD(m_ref, "m", n);
    LOAD(v_ref, "v", n);
#undef LOAD
    double norm_torch[MAX_STEPS], norm_exact[MAX_STEPS];
    snprintf(file, sizeof file, "optim_%s_norms.txt", oc->name);
    FILE *nf = open_ref(file);
    int nread = 0;
    while (nf && nread < steps &&
           fscanf(nf, "%lf %lf", &norm_torch[nread], &norm_exact[nread]) == 2)
        nread++;
    if (nf) fclose(nf);
    CHECK(nread == steps, "%s: %d norms, want %d", file, nread, steps);

    tfm_adam_params p;
    tfm_adam_default_params(&p);
    CHECK(tfm_opt_kind_parse(oc->kind, &p.kind) == TFM_OK, "%s", tfm_last_error());
    p.beta1 = oc->beta1;
    p.beta2 = oc->beta2;
    p.eps = oc->eps;
    p.weight_decay = oc->wd;
    p.clip_norm = 0; /* the first run clips by hand, to compare the clipped gradients */
    CHECK(tfm_adam_validate(&p) == TFM_OK, "%s", tfm_last_error());

    float *param = malloc(n * sizeof *param), *g = malloc(n * sizeof *g);
    float *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
    float *param2 = malloc(n * sizeof *param2), *g2 = malloc(n * sizeof *g2);
    float *m2 = calloc(n, sizeof *m2), *v2 = calloc(n, sizeof *v2);
    if (!grads || !gclip || !after || !m_ref || !v_ref || nread != steps || !param || !g || !m ||
        !v || !param2 || !g2 || !m2 || !v2)
        goto done;
    memcpy(param, param0, n * sizeof *param);
    memcpy(param2, param0, n * sizeof *param2);

    double e_param = 0, e_gclip = 0, e_nt = 0, e_ne = 0;
    size_t eq_param = 0, bits_differ = 0;
    int clipped = 0;
    for (int t = 0; t < steps; t++) {
        memcpy(g, grads + (size_t)t * n, n * sizeof *g);
        float norm = tfm_grad_global_norm(g, n);
        if (oc->clip > 0) {
            float norm_c = tfm_grad_clip(g, n, oc->clip);
            CHECK(norm_c == norm, "tfm_grad_clip returns %g, the norm is %g", norm_c, norm);
            clipped += memcmp(g, grads + (size_t)t * n, n * sizeof *g) != 0;
        }
        e_nt = fmax(e_nt, fabs(norm - norm_torch[t]) / norm_torch[t]);
        e_ne = fmax(e_ne, fabs(norm - norm_exact[t]) / norm_exact[t]);
        e_gclip = fmax(e_gclip, rel_err(g, gclip + (size_t)t * n, n));
        tfm_adam_step(&p, param, g, m, v, n, t + 1, oc->lr[t]);
        e_param = fmax(e_param, rel_err(param, after + (size_t)t * n, n));
        eq_param += count_equal(param, after + (size_t)t * n, n);

        /* The same step through tfm_optim_step, which clips by itself. */
        tfm_adam_params p2 = p;
        p2.clip_norm = oc->clip;
        memcpy(g2, grads + (size_t)t * n, n * sizeof *g2);
        float norm2 = tfm_optim_step(&p2, param2, g2, m2, v2, n, t + 1, oc->lr[t]);
        CHECK(norm2 == norm, "tfm_optim_step norm %g, want %g", norm2, norm);
        bits_differ += n - count_equal(param2, param, n);
    }
    double e_m = rel_err(m, m_ref, n), e_v = rel_err(v, v_ref, n);
    char extra[96];
    snprintf(extra, sizeof extra, "  [%zu/%zu bitwise equal]", eq_param, (size_t)steps * n);
    report(oc->name, "params, every step", e_param, TOL_PARAM, extra);
    snprintf(extra, sizeof extra, "  [%zu/%zu bitwise]", count_equal(m, m_ref, n), n);
    report(oc->name, "exp_avg", e_m, TOL_PARAM, extra);
    snprintf(extra, sizeof extra, "  [%zu/%zu bitwise]", count_equal(v, v_ref, n), n);
    report(oc->name, "exp_avg_sq", e_v, TOL_PARAM, extra);
    snprintf(extra, sizeof extra, "  [clipped at %d of %d steps]", clipped, steps);
    report(oc->name, "clipped grads", e_gclip, TOL_PARAM, oc->clip > 0 ? extra : "");
    report(oc->name, "norm vs torch float32", e_nt, TOL_NORM_TORCH, "");
    report(oc->name, "norm vs exact float64", e_ne, TOL_NORM_EXACT, "");
    CHECK(bits_differ == 0, "%s: tfm_optim_step differs from clip + tfm_adam_step in %zu floats",
          oc->name, bits_differ);
    CHECK(oc->clip == 0 || strstr(oc->name, "noop") || clipped > 0,
          "%s: the reference never clipped", oc->name);
    CHECK(!strstr(oc->name, "noop") || clipped == 0, "%s: clipped when it should not", oc->name);
    *worst_all = fmax(*worst_all, fmax(e_param, fmax(e_m, e_v)));

    /* Unclipped cases: the same run on TILES copies of the buffer, which is
     * long enough for the parallel loop; each copy must match the reference. */
    if (oc->clip == 0) {
        size_t big = n * TILES;
        float *bp = malloc(big * sizeof *bp), *bg = malloc(big * sizeof *bg);
        float *bm = calloc(big, sizeof *bm), *bv = calloc(big, sizeof *bv);
        CHECK(bp && bg && bm && bv, "out of memory");
        if (bp && bg && bm && bv) {
            for (int k = 0; k < TILES; k++) memcpy(bp + k * n, param0, n * sizeof *bp);
            double e_big = 0;
            for (int t = 0; t < steps; t++) {
                for (int k = 0; k < TILES; k++)
                    memcpy(bg + k * n, grads + (size_t)t * n, n * sizeof *bg);
                tfm_adam_step(&p, bp, bg, bm, bv, big, t + 1, oc->lr[t]);
                for (int k = 0; k < TILES; k++)
                    e_big = fmax(e_big, rel_err(bp + k * n, after + (size_t)t * n, n));
            }
            report(oc->name, "params x64 tiles (OpenMP)", e_big, TOL_PARAM, "");
        }
        free(bp);
        free(bg);
        free(bm);
        free(bv);
    }
done:
    free(grads);
    free(gclip);
    free(after);
    free(m_ref);
    free(v_ref);
    free(param);
    free(g);
    free(m);
    free(v);
    free(param2);
    free(g2);
    free(m2);
    free(v2);
}

static void test_optimizer(void) {
    FILE *f = open_ref("optim_index.txt");
    if (!f) {
        char why[4200];
        snprintf(why, sizeof why, "%s/optim_index.txt not found (run tests/ref/make_optim.py)",
                 ref_dir);
        tfm_test_skip(why);
    }
    char line[4096];
    size_t n = 0;
    int steps = 0, cases = 0;
    float *param0 = NULL;
    double worst = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        if (sscanf(line, "n %zu", &n) == 1) continue;
        if (sscanf(line, "steps %d", &steps) == 1) continue;
        optim_case oc;
        int used = 0;
        if (sscanf(line, "case %63s %15s %f %f %f %f %f%n", oc.name, oc.kind, &oc.beta1, &oc.beta2,
                   &oc.eps, &oc.wd, &oc.clip, &used) != 7) {
            CHECK(0, "optim_index.txt: cannot parse '%s'", line);
            continue;
        }
        CHECK(n > 0 && steps > 0 && steps <= MAX_STEPS, "optim_index.txt: n %zu steps %d", n,
              steps);
        if (!(n > 0 && steps > 0 && steps <= MAX_STEPS)) break;
        const char *rest = line + used;
        int ok = 1;
        for (int t = 0; t < steps && ok; t++) {
            char *end;
            oc.lr[t] = (float)strtod(rest, &end);
            ok = end != rest;
            rest = end;
        }
        CHECK(ok, "optim_index.txt: %s: want %d learning rates", oc.name, steps);
        if (!ok) continue;
        if (!param0) param0 = read_f32("optim_param0.bin", n);
        if (!param0) break;
        run_case(&oc, param0, n, steps, &worst);
        cases++;
    }
    fclose(f);
    free(param0);
    CHECK(cases >= 7, "only %d optimizer cases in optim_index.txt", cases);
    printf("optimizer: %d cases, worst rel err over params/moments %.3e (tol %.0e)\n", cases,
           worst, TOL_PARAM);
}

static void test_schedules(void) {
    FILE *f = open_ref("optim_lr.txt");
    CHECK(f != NULL, "%s/optim_lr.txt missing", ref_dir);
    if (!f) return;
    char line[1024];
    int count = 0;
    double worst_all = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char name[64], kind[32];
        double lr, factor, min_lr, gamma;
        long warmup, total, step_size, nsteps;
        int d_model;
        if (sscanf(line, "sched %63s %31s %lf %lf %d %ld %ld %lf %lf %ld %ld", name, kind, &lr,
                   &factor, &d_model, &warmup, &total, &min_lr, &gamma, &step_size,
                   &nsteps) != 11) {
            CHECK(0, "optim_lr.txt: cannot parse '%s'", line);
            break;
        }
        tfm_lr_schedule s;
        tfm_lr_schedule_default(&s);
        CHECK(tfm_lr_kind_parse(kind, &s.kind) == TFM_OK, "%s", tfm_last_error());
        CHECK(strcmp(tfm_lr_kind_name(s.kind), kind) == 0, "name of %s", kind);
        s.lr = (float)lr;
        s.factor = (float)factor;
        s.d_model = d_model;
        s.warmup = warmup;
        s.total_steps = total;
        s.min_lr = (float)min_lr;
        s.gamma = (float)gamma;
        s.step_size = step_size;
        tfm_status st = tfm_lr_validate(&s);
        CHECK(st == TFM_OK, "%s: %s", name, tfm_last_error());
        double worst = 0;
        long worst_step = 0, read = 0;
        double worst_got = 0, worst_want = 0;
        for (long k = 1; k <= nsteps; k++) {
            double want;
            if (!fgets(line, sizeof line, f) || sscanf(line, "%lf", &want) != 1) break;
            read++;
            if (st != TFM_OK) continue;
            double got = tfm_lr_at(&s, k);
            double err = fabs(got - want) / fmax(fabs(want), 1e-30);
            if (!(err <= worst)) {
                worst = err;
                worst_step = k;
                worst_got = got;
                worst_want = want;
            }
        }
        CHECK(read == nsteps, "optim_lr.txt: %s: %ld values, want %ld", name, read, nsteps);
        char what[96];
        snprintf(what, sizeof what, "lr %ld steps", nsteps);
        report(name, what, worst, TOL_LR, "");
        if (worst > TOL_LR)
            printf("    worst at step %ld: got %.9g want %.9g\n", worst_step, worst_got,
                   worst_want);
        worst_all = fmax(worst_all, worst);
        count++;
    }
    fclose(f);
    CHECK(count >= 10, "only %d schedules in optim_lr.txt", count);
    printf("schedules: %d, worst rel err per step %.3e (tol %.0e)\n", count, worst_all, TOL_LR);
}

int main(void) {
    ref_dir = tfm_test_env("TFM_REF_DIR", "refs");
    test_optimizer();
    test_schedules();
    return tfm_test_finish();
}
