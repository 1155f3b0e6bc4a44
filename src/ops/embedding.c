/*
 * embedding.c: token embeddings and positions (sinusoidal, learned, rotary).
 *
 *   ids [N]   table [V, D]   out [N, D]   pos [N] (position of each row)
 *   positions table [P, D]
 *   rope: x rows of stride `row`, H heads of size dk at the start of each row
 *
 * Callers check ids and positions against V and P before calling (bad input is
 * an environment error there, so here it is an assertion).
 */
#include "ops/ops.h"

#include "core/status.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below about this much work (elements) a parallel region costs more than it
 * saves: a region costs microseconds, and decoding one sentence runs dozens
 * of ops over a single [1, D] row per token. Each element's arithmetic is
 * the same whether a loop runs in parallel or not, so results do not change. */
#ifndef PAR_MIN
#define PAR_MIN 16384
#endif

void OPFN(tfm_embedding_forward)(real *out, const int32_t *ids, const real *table, int N, int D,
                                 real scale) {
#pragma omp parallel for schedule(static) if((size_t)N * D >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const real *src = table + (size_t)ids[n] * D;
        real *dst = out + (size_t)n * D;
        for (int i = 0; i < D; i++) dst[i] = src[i] * scale;
    }
}

void OPFN(tfm_embedding_backward)(real *dtable, const real *dout, const int32_t *ids, int N,
                                  int D, real scale) {
    /* Several rows may share an id, so threads split the columns, not the rows:
     * no two threads touch the same element, and the sum order is fixed. */
#pragma omp parallel if((size_t)N * D >= PAR_MIN)
    {
#ifdef _OPENMP
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
        int nt = 1, t = 0;
#endif
        int lo = (int)((long)D * t / nt), hi = (int)((long)D * (t + 1) / nt);
        for (int n = 0; n < N; n++) {
            real *dst = dtable + (size_t)ids[n] * D;
            const real *src = dout + (size_t)n * D;
            for (int i = lo; i < hi; i++) dst[i] += src[i] * scale;
        }
    }
}

void OPFN(tfm_sinusoidal_table)(real *table, int P, int D) {
    for (int p = 0; p < P; p++) {
        for (int i = 0; i < D; i += 2) {
            /* Computed in double whatever `real` is, so both builds share one table. */
            double angle = p / pow(10000.0, (double)i / D);
            table[(size_t)p * D + i] = (real)sin(angle);
            if (i + 1 < D) table[(size_t)p * D + i + 1] = (real)cos(angle);
        }
    }
}

void OPFN(tfm_positions_forward)(real *x, const real *table, const int32_t *pos, int N, int D) {
#pragma omp parallel for schedule(static) if((size_t)N * D >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const real *src = table + (size_t)pos[n] * D;
        real *dst = x + (size_t)n * D;
        for (int i = 0; i < D; i++) dst[i] += src[i];
    }
}

void OPFN(tfm_positions_backward)(real *dtable, const real *dx, const int32_t *pos, int N, int D) {
    OPFN(tfm_embedding_backward)(dtable, dx, pos, N, D, 1);
}

void OPFN(tfm_rope)(real *x, long row, const int32_t *pos, int N, int H, int dk, double theta,
                    int inverse) {
    TFM_ASSERT(dk % 2 == 0);
    int half = dk / 2;
#pragma omp parallel for schedule(static) if((size_t)N * half >= PAR_MIN / 16) /* pow, cos, sin per pair */
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < half; i++) {
            double freq = pow(theta, -2.0 * i / dk);
            double angle = pos[n] * freq;
            real c = (real)cos(angle), s = (real)(inverse ? -sin(angle) : sin(angle));
            for (int h = 0; h < H; h++) {
                real *head = x + (size_t)n * row + (size_t)h * dk;
                real a = head[i], b = head[i + half];
                head[i] = a * c - b * s;
                head[i + half] = b * c + a * s;
            }
        }
    }
}
