/*
 * fast_exp.h: exp for float that compilers can vectorize.
 *
 * libm's expf is a call per element, so a loop over a vocabulary row cannot
 * use vector registers; this one is straight-line arithmetic (Cephes' expf:
 * Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial, and
 * 2^n built in the exponent bits), within 2 ulp of the exact result for
 * x in [-87, 88]. Below -87 it returns exp(-87) ~ 1.6e-38 instead of
 * underflowing towards 0, which is what softmax and the loss need (such terms
 * vanish next to the row's maximum, exp(0) = 1). NaN is not preserved:
 * callers pass finite values (max-subtracted logits).
 */
#ifndef TFM_OPS_FAST_EXP_H
#define TFM_OPS_FAST_EXP_H

#include <stdint.h>
#include <string.h>

static inline float tfm_fast_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* n = round(x / ln2): adding 1.5 * 2^23 rounds to an integer in the
     * default rounding mode, without a libm call. */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

#endif
