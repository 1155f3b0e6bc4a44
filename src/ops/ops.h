/*
 * ops.h: the reference CPU ops, each a forward/backward pair.
 *
 * Shape legend (used in every op file):
 *   N  rows (tokens: B*S or B*T)     D  d_model        F  d_ff
 *   B  batch     Tq/Tk query/key length     H heads    dk/dv sizes per head
 *   V  vocabulary     P  positions
 * Everything is row-major and contiguous unless a stride says otherwise.
 *
 * Each op exists as float (tfm_<op>) and as double (tfm_<op>_f64); the double
 * build is for finite-difference checks. Backward contracts say whether a
 * gradient is written (=) or accumulated (+=): parameter gradients always
 * accumulate, which gives gradient accumulation across micro-batches for free.
 */
#ifndef TFM_OPS_H
#define TFM_OPS_H

#include <stddef.h>
#include <stdint.h>

typedef enum tfm_act_kind { TFM_OP_RELU = 0, TFM_OP_GELU = 1 } tfm_act_kind;

/* Scaled dot-product attention over strided Q, K, V (see attention.c).
 * q[b, t, h*dk + i] lives at q + b*q_batch + t*q_row + h*dk + i; likewise k, v
 * and out (with dv). */
typedef struct tfm_attn_dims {
    int B, H, Tq, Tk, dk, dv;
    long q_row, q_batch, k_row, k_batch, v_row, v_batch, o_row, o_batch;
    int causal;               /* key j visible to query i only if j <= i + q_offset */
    int q_offset;
    const uint8_t *key_pad;   /* [B, key_pad_stride]: 1 = key masked; NULL = none */
    long key_pad_stride;
    double scale;             /* usually 1/sqrt(dk) */
    float dropout;            /* on the probabilities */
    uint64_t seed, stream;    /* dropout randomness (core/rng.h) */
} tfm_attn_dims;

#ifdef TFM_OPS_F64
#define TFM_OPS_H_WAS_F64
#undef TFM_OPS_F64
#endif
#include "ops/real.h"
#include "ops/ops_decl.h"
#define TFM_OPS_F64
#include "ops/real.h"
#include "ops/ops_decl.h"
#ifndef TFM_OPS_H_WAS_F64
#undef TFM_OPS_F64
#endif
#undef TFM_OPS_H_WAS_F64
#include "ops/real.h"

#endif
