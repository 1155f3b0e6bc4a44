/*
 * real.h: the scalar type of the reference ops.
 *
 * Every op in src/ops/ is written once over `real` and compiled twice: as
 * float (the library: tfm_<op>) and as double (tfm_<op>_f64, compiled by
 * ops_f64.c) so that finite-difference gradient checks can run in double
 * precision against exactly the code the library runs.
 */
#ifndef TFM_OPS_REAL_H
#define TFM_OPS_REAL_H
#include <math.h>

#include "ops/fast_exp.h"

/* TFM_CLONES on a float op: GCC compiles it (and its OpenMP bodies) three
 * times, for AVX-512, AVX2 and the baseline, and picks one at load time for
 * the CPU it runs on (ifunc). The arithmetic is the same in all three: C11
 * mode does not contract a*b+c into FMA. Off when the build already targets
 * the machine (TFM_NATIVE) or the compiler cannot. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__AVX512F__) && \
    !defined(TFM_NO_CLONES)
#define TFM_CLONES_F32 __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TFM_CLONES_F32
#endif
#endif

#undef real
#undef OPFN
#undef R_EXP
#undef R_VEXP
#undef TFM_CLONES
#undef R_LOG
#undef R_SQRT
#undef R_ERF
#undef R_SIN
#undef R_COS
#undef R_POW
#undef R_FABS
#undef R_MAX_NEG

#ifdef TFM_OPS_F64
#define real double
#define OPFN(name) name##_f64
#define R_EXP exp
#define R_VEXP exp
#define TFM_CLONES
#define R_LOG log
#define R_SQRT sqrt
#define R_ERF erf
#define R_SIN sin
#define R_COS cos
#define R_POW pow
#define R_FABS fabs
#else
#define real float
#define OPFN(name) name
#define R_EXP expf
#define R_VEXP tfm_fast_expf   /* vectorizable, within 2 ulp (fast_exp.h) */
#define TFM_CLONES TFM_CLONES_F32
#define R_LOG logf
#define R_SQRT sqrtf
#define R_ERF erff
#define R_SIN sinf
#define R_COS cosf
#define R_POW powf
#define R_FABS fabsf
#endif
