/*
 * xent.c: log-softmax and label-smoothed cross-entropy over the vocabulary.
 *
 *   logits, dlogits [N, V]    targets [N]    lse [N]
 *
 * Matches torch.nn.functional.cross_entropy(label_smoothing=eps,
 * ignore_index=pad, reduction='sum'): the smoothing mass eps is spread
 * uniformly over all V classes (the target included), and pad rows count
 * nothing, neither in the loss nor in the number of tokens.
 */
#include "ops/ops.h"

/* Inlined into its callers, so it takes their AVX-512 / AVX2 clone. */
static inline __attribute__((always_inline)) real OPFN(row_logsumexp)(const real *x, int V) {
    real mx = x[0];
#pragma omp simd reduction(max : mx)
    for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    /* Summed in `real` across vector lanes (16 partial sums with AVX-512,
     * 8 with AVX2, 4 otherwise: the last bits differ between those builds;
     * each is fixed for a machine and any thread count). The terms are in
     * (0, 1] and one of them is 1, so the sum is accurate to about 1e-7. */
    real s = 0;
#pragma omp simd reduction(+ : s)
    for (int v = 0; v < V; v++) s += R_VEXP(x[v] - mx);
    return mx + (real)log((double)s);
}

TFM_CLONES double OPFN(tfm_xent_forward)(real *lse, const real *logits, const int32_t *targets, int N, int V,
                              int pad_id, real smoothing, long *count) {
    double total = 0;
    long counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : total, counted) if(N > 1)
    for (int n = 0; n < N; n++) {
        const real *x = logits + (size_t)n * V;
        real l = OPFN(row_logsumexp)(x, V);
        lse[n] = l;
        if (targets[n] == pad_id) continue;
        double nll = (double)l - x[targets[n]];
        double smooth = 0;
        if (smoothing > 0) {
            double sum_logp = 0;
#pragma omp simd reduction(+ : sum_logp)
            for (int v = 0; v < V; v++) sum_logp += (double)x[v] - l;
            smooth = -sum_logp / V;
        }
        total += (1.0 - smoothing) * nll + smoothing * smooth;
        counted++;
    }
    *count = counted;
    return total;
}

TFM_CLONES void OPFN(tfm_xent_backward)(real *dlogits, const real *logits, const real *lse,
                             const int32_t *targets, int N, int V, int pad_id, real smoothing,
                             real scale) {
#pragma omp parallel for schedule(static) if(N > 1)
    for (int n = 0; n < N; n++) {
        const real *x = logits + (size_t)n * V;
        real *g = dlogits + (size_t)n * V;
        if (targets[n] == pad_id) {
            for (int v = 0; v < V; v++) g[v] = 0;
            continue;
        }
        real uniform = smoothing / V;
        real l = lse[n];
#pragma omp simd
        for (int v = 0; v < V; v++) g[v] = scale * (R_VEXP(x[v] - l) - uniform);
        g[targets[n]] -= scale * (1 - smoothing);
    }
}

TFM_CLONES void OPFN(tfm_log_softmax)(real *out, const real *logits, int N, int V) {
#pragma omp parallel for schedule(static) if(N > 1)
    for (int n = 0; n < N; n++) {
        const real *x = logits + (size_t)n * V;
        real l = OPFN(row_logsumexp)(x, V);
        real *y = out + (size_t)n * V;
        for (int v = 0; v < V; v++) y[v] = x[v] - l;
    }
}

#ifndef TFM_OPS_F64
/* One step of the insertion scan below: x = row[v] enters the sorted top k
 * when fewer than k are kept or it beats the k-th. */
static inline __attribute__((always_inline)) void topk_offer(int32_t *id, float *val, int k, int *have, int v,
                                                             float x) {
    if (*have == k && !(x > val[k - 1])) return;
    int pos = *have < k ? (*have)++ : k - 1;
    while (pos > 0 && val[pos - 1] < x) {
        val[pos] = val[pos - 1];
        id[pos] = id[pos - 1];
        pos--;
    }
    val[pos] = x;
    id[pos] = v;
}

/* The insertion scan over ids in ascending order (ties keep the first), with
 * the k-th value as a bar: once k are kept, a block of TOPK_BLOCK values is
 * tried one by one only when its maximum beats the bar, which for a row of
 * 32000 logits and k = 8 is a few dozen blocks of the 500. The blocks skip
 * nothing the scan would take (a NaN never beats the bar, and neither does
 * anything when the bar is NaN), so the result is the plain scan's. */
#define TOPK_BLOCK 64
TFM_CLONES void tfm_topk_logprobs(int32_t *ids, float *vals, const float *x, int N, int V, int k, int skip_a,
                                  int skip_b, int skip_c) {
#pragma omp parallel for schedule(static) if(N > 1)
    for (int n = 0; n < N; n++) {
        const float *row = x + (size_t)n * V;
        int32_t *id = ids + (size_t)n * k;
        float *val = vals + (size_t)n * k;
        int have = 0, v = 0;
        if (k <= 0) continue;
        for (; v < V && have < k; v++)
            if (v != skip_a && v != skip_b && v != skip_c) topk_offer(id, val, k, &have, v, row[v]);
        for (; v + TOPK_BLOCK <= V; v += TOPK_BLOCK) {
            float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
            for (int j = 0; j < TOPK_BLOCK; j++) mx = row[v + j] > mx ? row[v + j] : mx;
            if (!(mx > val[k - 1])) continue;
            for (int j = v; j < v + TOPK_BLOCK; j++)
                if (j != skip_a && j != skip_b && j != skip_c) topk_offer(id, val, k, &have, j, row[j]);
        }
        for (; v < V; v++)
            if (v != skip_a && v != skip_b && v != skip_c) topk_offer(id, val, k, &have, v, row[v]);
        float l = row_logsumexp(row, V);
        for (int j = 0; j < have; j++) val[j] = val[j] - l;
    }
}
#endif
