/* test_rng.c: the counter-based generator is a pure function and roughly uniform. */
#include <math.h>

#include "core/rng.h"
#include "test_util.h"

int main(void) {
    CHECK(tfm_rng_u64(1, 2, 3) == tfm_rng_u64(1, 2, 3), "not a pure function");
    CHECK(tfm_rng_u64(1, 2, 3) != tfm_rng_u64(1, 2, 4), "index ignored");
    CHECK(tfm_rng_u64(1, 2, 3) != tfm_rng_u64(1, 3, 3), "stream ignored");
    CHECK(tfm_rng_u64(1, 2, 3) != tfm_rng_u64(2, 2, 3), "seed ignored");
    double sum = 0, sumsq = 0;
    int n = 1 << 20, below = 0;
    for (int i = 0; i < n; i++) {
        float u = tfm_rng_uniform(7, 0, (uint64_t)i);
        CHECK(u >= 0.0f && u < 1.0f, "uniform out of range: %g", u);
        sum += u;
        sumsq += u * u;
        below += u < 0.1f;
    }
    double mean = sum / n, var = sumsq / n - mean * mean;
    CHECK(fabs(mean - 0.5) < 2e-3, "mean %g", mean);
    CHECK(fabs(var - 1.0 / 12) < 2e-3, "variance %g", var);
    CHECK(fabs((double)below / n - 0.1) < 2e-3, "P(u<0.1) = %g", (double)below / n);
    tfm_rng r;
    tfm_rng_init(&r, 42, 0);
    double s = 0, s2 = 0;
    for (int i = 0; i < 100000; i++) {
        double z = tfm_rng_next_normal(&r);
        s += z;
        s2 += z * z;
    }
    CHECK(fabs(s / 1e5) < 0.02 && fabs(s2 / 1e5 - 1) < 0.02, "normal mean %g var %g", s / 1e5, s2 / 1e5);
    return tfm_test_finish();
}
