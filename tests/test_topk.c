/*
 * test_topk.c: tfm_topk_logprobs (beam search's candidates) equals a plain
 * reference exactly.
 *
 * The reference sorts the allowed ids by value (descending), then id
 * (ascending), and takes the first k: the ids must be the same, in the
 * same order, and each value must equal tfm_log_softmax's log-probability
 * of that id bit for bit. Rows: random, quantised to a few
 * levels (many ties), constant, ascending (every value beats the bar),
 * descending, a spike in the tail; V around the block sizes (15..65, 1001,
 * 32000); k from 1 to V minus the skipped ids; skipped ids at and around the
 * block edges, at 0 and V-1, repeated, and none.
 *
 * The CPU backend's argmax_rows (greedy decoding) on the same rows equals
 * the scan `if (x[v] > x[best]) best = v` over the allowed ids.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "test_util.h"

static int skipped(int v, int a, int b, int c) { return v == a || v == b || v == c; }

/* The reference: every allowed id sorted by value (descending), then id
 * (ascending); the first k. (No NaN in these rows.) */
static const float *sort_row;
static int by_value_then_id(const void *pa, const void *pb) {
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    if (sort_row[a] != sort_row[b]) return sort_row[a] > sort_row[b] ? -1 : 1;
    return a < b ? -1 : a > b;
}

static void reference(int32_t *ids, const float *row, int V, int k, int a, int b, int c, int32_t *order) {
    int n = 0;
    for (int v = 0; v < V; v++)
        if (!skipped(v, a, b, c)) order[n++] = v;
    sort_row = row;
    qsort(order, (size_t)n, sizeof *order, by_value_then_id);
    memcpy(ids, order, (size_t)k * sizeof *ids);
}

enum { ROW_RANDOM, ROW_LEVELS, ROW_CONSTANT, ROW_ASCENDING, ROW_DESCENDING, ROW_TAIL_SPIKE, ROW_KINDS };
static const char *kind_name[ROW_KINDS] = {"random", "levels", "constant", "ascending", "descending", "tail spike"};

static void fill(float *x, int N, int V, int kind, tfm_rng *r) {
    for (int n = 0; n < N; n++) {
        float *row = x + (size_t)n * V;
        for (int v = 0; v < V; v++) {
            float g = tfm_rng_next_normal(r) * 3.0f;
            switch (kind) {
            case ROW_RANDOM: row[v] = g; break;
            case ROW_LEVELS: row[v] = floorf(g); break;
            case ROW_CONSTANT: row[v] = 0.5f * n; break;
            case ROW_ASCENDING: row[v] = 0.001f * v; break;
            case ROW_DESCENDING: row[v] = -0.001f * v; break;
            default: row[v] = v >= V - 5 ? 20.0f + v % 3 : g; break;
            }
        }
    }
}

static long cases, mismatches;

static void check(int N, int V, int k, int a, int b, int c, int kind, tfm_rng *r) {
    float *x = malloc((size_t)N * V * sizeof *x), *lp = malloc((size_t)N * V * sizeof *lp);
    float *vals = malloc((size_t)N * k * sizeof *vals);
    int32_t *ids = malloc((size_t)N * k * sizeof *ids), *ref = malloc((size_t)k * sizeof *ref);
    int32_t *order = malloc((size_t)V * sizeof *order);
    fill(x, N, V, kind, r);
    tfm_topk_logprobs(ids, vals, x, N, V, k, a, b, c);
    tfm_log_softmax(lp, x, N, V);
    int bad = 0;
    for (int n = 0; n < N && !bad; n++) {
        reference(ref, x + (size_t)n * V, V, k, a, b, c, order);
        for (int j = 0; j < k && !bad; j++) {
            int32_t id = ids[(size_t)n * k + j];
            if (id != ref[j]) {
                bad = 1;
                fprintf(stderr, "  %s row %d of %d x %d, k %d, skip %d %d %d: place %d has id %d, reference %d\n",
                        kind_name[kind], n, N, V, k, a, b, c, j, id, ref[j]);
            } else if (memcmp(&vals[(size_t)n * k + j], &lp[(size_t)n * V + id], sizeof(float))) {
                bad = 1;
                fprintf(stderr, "  %s row %d of %d x %d, k %d: place %d log-probability %.9g, log_softmax %.9g\n",
                        kind_name[kind], n, N, V, k, j, vals[(size_t)n * k + j], lp[(size_t)n * V + id]);
            }
        }
    }
    int32_t *best = malloc((size_t)N * sizeof *best);
    tfm_backend_cpu()->argmax_rows(best, x, N, V, a, b, c);
    for (int n = 0; n < N && !bad; n++) {
        const float *row = x + (size_t)n * V;
        int32_t want = -1;
        for (int v = 0; v < V; v++)
            if (!skipped(v, a, b, c) && (want < 0 || row[v] > row[want])) want = v;
        if (best[n] != want) {
            bad = 1;
            fprintf(stderr, "  %s row %d of %d x %d, skip %d %d %d: argmax %d, scan %d\n", kind_name[kind], n, N, V,
                    a, b, c, best[n], want);
        }
    }
    free(best);
    cases++;
    mismatches += bad;
    CHECK(!bad, "topk %s %d x %d, k %d, skip %d %d %d", kind_name[kind], N, V, k, a, b, c);
    free(x);
    free(lp);
    free(vals);
    free(ids);
    free(ref);
    free(order);
}

int main(void) {
    tfm_rng r;
    tfm_rng_init(&r, 42, 1);
    const int Vs[] = {1, 4, 15, 16, 17, 63, 64, 65, 100, 129, 1001};
    for (size_t i = 0; i < sizeof Vs / sizeof *Vs; i++) {
        int V = Vs[i];
        /* skip triples: none; the reserved ids; at the block edges after a
         * fill of k (blocks start at k plus the skipped ids before it). */
        int skips[][3] = {{-1, -1, -1}, {0, 1, 2}, {1, 2, -1}, {V - 1, -1, -1}, {0, 0, V - 1},
                          {V / 2, V / 2 + 1, V - 2}, {64, 65, 63}, {8, 72, 136}, {10, 74, 73}};
        for (size_t s = 0; s < sizeof skips / sizeof *skips; s++) {
            int a = skips[s][0] < V ? skips[s][0] : -1, b = skips[s][1] < V ? skips[s][1] : -1;
            int c = skips[s][2] < V ? skips[s][2] : -1;
            int n_skip = 0;
            for (int v = 0; v < V; v++) n_skip += skipped(v, a, b, c);
            int kmax = V - n_skip;
            if (kmax < 1) continue;
            int ks[] = {1, 2, 8, 16, kmax / 2, kmax - 1, kmax};
            for (size_t j = 0; j < sizeof ks / sizeof *ks; j++) {
                if (ks[j] < 1 || ks[j] > kmax) continue;
                for (int kind = 0; kind < ROW_KINDS; kind++) check(5, V, ks[j], a, b, c, kind, &r);
            }
        }
    }
    /* The beam search shape: 32000 logits, k = 8, pad 0 and bos 1 (eos 2 when forbidden). */
    for (int kind = 0; kind < ROW_KINDS; kind++) {
        check(9, 32000, 8, 0, 1, -1, kind, &r);
        check(9, 32000, 8, 0, 1, 2, kind, &r);
        check(3, 32000, 200, 0, 1, 31999, kind, &r);
    }
    printf("tfm_topk_logprobs and argmax_rows: %ld cases against the references, %ld differ\n", cases, mismatches);
    return tfm_test_finish();
}
