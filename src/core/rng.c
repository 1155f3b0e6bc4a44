/* rng.c: the non-inline parts of the counter-based generator. */
#include "core/rng.h"

#include <math.h>

float tfm_rng_next_normal(tfm_rng *r) {
    /* u1 in (0, 1] so that log(u1) is finite. */
    double u1 = ((double)(tfm_rng_next(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(tfm_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
