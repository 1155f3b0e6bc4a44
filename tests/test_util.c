/* test_util.c: see test_util.h. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

int tfm_test_passed = 0;
int tfm_test_failed = 0;

static double close_impl(const char *name, size_t n, double tol, const float *af,
                         const float *bf, const double *ad, const double *bd) {
    double max_diff = 0, max_ref = 0;
    int nan = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double a = af ? af[i] : ad[i], b = bf ? bf[i] : bd[i];
        if (isnan(a) || isnan(b)) nan = 1;
        double d = fabs(a - b);
        if (d > max_diff) { max_diff = d; worst = i; }
        if (fabs(b) > max_ref) max_ref = fabs(b);
    }
    /* Relative to the tensor's scale; a floor keeps all-zero tensors meaningful. */
    double err = max_diff / (max_ref > 1e-6 ? max_ref : 1e-6);
    int ok = !nan && err <= tol;
    printf("%-48s worst rel err %.3e (tol %.0e, n=%zu)%s\n", name, err, tol, n,
           ok ? "" : (nan ? "  NaN FAIL" : "  FAIL"));
    if (!ok && n > 0)
        printf("    worst at %zu: got %.9g want %.9g\n", worst, af ? af[worst] : ad[worst],
               bf ? bf[worst] : bd[worst]);
    if (ok) tfm_test_passed++;
    else tfm_test_failed++;
    return nan ? INFINITY : err;
}

double tfm_test_close(const char *name, const float *actual, const float *expected, size_t n,
                      double tol) {
    return close_impl(name, n, tol, actual, expected, NULL, NULL);
}

double tfm_test_close_f64(const char *name, const double *actual, const double *expected,
                          size_t n, double tol) {
    return close_impl(name, n, tol, NULL, NULL, actual, expected);
}

int tfm_test_finish(void) {
    printf("%d passed, %d failed\n", tfm_test_passed, tfm_test_failed);
    return tfm_test_failed ? 1 : 0;
}

void tfm_test_skip(const char *why) {
    printf("SKIP: %s\n", why);
    exit(77);
}

const char *tfm_test_env(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

int tfm_test_run(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t len = 0;
    if (out && cap) {
        len = fread(out, 1, cap - 1, p);
        out[len] = '\0';
    }
    char sink[4096];
    while (fread(sink, 1, sizeof sink, p) > 0) {}
    int st = pclose(p);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
