/*
 * test_decode.c: the KV-cached decoder equals the full decoder.
 *
 *  - greedy translation with the cache gives exactly the tokens of greedy
 *    decoding that reruns the whole decoder on the growing prefix, for
 *    post-LN/pre-LN, sinusoidal/learned/rotary positions, a batch of sources
 *    with different lengths (padding);
 *  - the logits of every cached step match the full forward's (rel 1e-4);
 *  - decoder-only generation from left-padded prompts of different lengths
 *    equals generating from each prompt alone, uncached;
 *  - reordering the cache rows (beam search) permutes the next logits;
 *    beam search's reorders (a sentence's rows side by side, sharing one
 *    cross-attention slot; sentences leaving) keep every row's logits equal
 *    to the full forward of its own history;
 *  - with every GEMM on the own AVX-512 kernel, the decoder's packed weights
 *    (tfm_gemm_packs) give bit-identical logits to a decoder without them
 *    (TFM_GEMM_PACKED=0), across runs and a reorder, and are hit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "infer/decode.h"
#include "ops/sgemm_avx512.h"
#include "test_util.h"

static tfm_config small_config(int enc, int dec, tfm_norm_placement norm, tfm_positions pos) {
    tfm_config c;
    tfm_config_default(&c);
    c.enc_layers = enc;
    c.dec_layers = dec;
    c.d_model = 32;
    c.heads = 4;
    c.d_ff = 48;
    c.norm = norm;
    c.positions = pos;
    c.max_positions = 40;
    c.src_vocab = c.tgt_vocab = 29;
    return c;
}

/* Spreads the weights so that an untrained model still has peaked,
 * input-dependent outputs (long, varied greedy sequences). */
static void spread_weights(tfm_model *m) {
    tfm_rng r;
    tfm_rng_init(&r, 5, 5);
    for (size_t i = 0; i < m->layout.n_params; i++) m->params[i] += 0.2f * tfm_rng_next_normal(&r);
}

static void random_src(int32_t *src, int B, int S, int V, tfm_rng *r) {
    for (int b = 0; b < B; b++) {
        int len = S - (b * 3) % S;
        if (len < 1) len = 1;
        for (int t = 0; t < S; t++) src[b * S + t] = t < len ? 3 + (int32_t)(tfm_rng_next(r) % (uint64_t)(V - 3)) : 0;
    }
}

/* max |full - cached| / max |full| over one row of V logits */
static double rel_diff(const float *full, const float *cached, int V) {
    double mx = 0, md = 0;
    for (int v = 0; v < V; v++) {
        md = fmax(md, fabs(full[v] - cached[v]));
        mx = fmax(mx, fabs(full[v]));
    }
    return md / mx;
}

static void check_translation(const char *name, tfm_config cfg) {
    tfm_model m;
    CHECK(tfm_model_init(&m, &cfg, 11) == TFM_OK, "%s: %s", name, tfm_last_error());
    spread_weights(&m);
    enum { B = 5, S = 9, MAXLEN = 16 };
    int32_t src[B * S], out_c[B * MAXLEN], out_u[B * MAXLEN];
    int len_c[B], len_u[B];
    tfm_rng r;
    tfm_rng_init(&r, 3, 0);
    random_src(src, B, S, cfg.src_vocab, &r);
    tfm_decoder dec;
    tfm_workspace ws;
    CHECK(tfm_decoder_init(&dec, &m, B, S, MAXLEN) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_workspace_init(&ws, &m, B, S, MAXLEN + 1) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_greedy_translate(&dec, src, B, S, MAXLEN, out_c, len_c) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_greedy_translate_uncached(&m, &ws, src, B, S, MAXLEN, out_u, len_u) == TFM_OK, "%s",
          tfm_last_error());
    int same = !memcmp(out_c, out_u, sizeof out_c) && !memcmp(len_c, len_u, sizeof len_c);
    int total = 0;
    for (int b = 0; b < B; b++) total += len_c[b];
    CHECK(same, "%s: cached and uncached greedy differ", name);
    printf("%-28s cached == uncached greedy: %s (%d tokens over %d sentences)\n", name, same ? "yes" : "NO", total, B);

    /* Step by step, feeding the uncached tokens: logits must agree. */
    CHECK(tfm_decoder_start(&dec, src, B, S) == TFM_OK, "%s", tfm_last_error());
    int32_t tok[B], prefix[B * (MAXLEN + 1)];
    double worst = 0;
    for (int t = 0; t < MAXLEN; t++) {
        for (int b = 0; b < B; b++) tok[b] = t == 0 ? cfg.bos_id : out_u[b * MAXLEN + t - 1];
        CHECK(tfm_decoder_step(&dec, tok) == TFM_OK, "%s", tfm_last_error());
        for (int b = 0; b < B; b++)
            for (int j = 0; j <= t; j++) prefix[b * (t + 1) + j] = j == 0 ? cfg.bos_id : out_u[b * MAXLEN + j - 1];
        tfm_batch batch = {.B = B, .S = S, .T = t + 1, .src = src, .tgt_in = prefix};
        CHECK(tfm_model_forward(&m, &ws, &batch, 0, 0) == TFM_OK, "%s", tfm_last_error());
        for (int b = 0; b < B; b++) {
            if (out_u[b * MAXLEN + (t > 0 ? t - 1 : 0)] == cfg.pad_id && t > 0) continue; /* finished row */
            worst = fmax(worst, rel_diff(ws.logits + ((size_t)b * (t + 1) + t) * cfg.tgt_vocab,
                                         dec.logits + (size_t)b * cfg.tgt_vocab, cfg.tgt_vocab));
        }
    }
    printf("%-28s worst rel err of cached step logits %.2e\n", name, worst);
    CHECK(worst < 1e-4, "%s: cached logits differ by %.2e", name, worst);
    tfm_workspace_free(&ws);
    tfm_decoder_free(&dec);
    tfm_model_free(&m);
}

static void check_generation(const char *name, tfm_config cfg) {
    tfm_model m;
    CHECK(tfm_model_init(&m, &cfg, 12) == TFM_OK, "%s: %s", name, tfm_last_error());
    spread_weights(&m);
    enum { B = 3, P = 6, NEW = 10 };
    int32_t prompts[B * P] = {
        5, 6, 7, 8, 9, 10,   /* full length */
        0, 0, 11, 12, 13, 4, /* left-padded: 4 tokens */
        0, 0, 0, 0, 0, 20,   /* 1 token */
    };
    int32_t out[B * NEW];
    int lens[B];
    tfm_decoder dec;
    CHECK(tfm_decoder_init(&dec, &m, B, 0, P + NEW) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_generate(&dec, prompts, B, P, NEW, 0.0f, 0, 0, out, lens) == TFM_OK, "%s", tfm_last_error());
    /* Reference: each prompt alone, unpadded, full decoder on the prefix. */
    tfm_workspace ws;
    CHECK(tfm_workspace_init(&ws, &m, 1, 0, P + NEW) == TFM_OK, "%s", tfm_last_error());
    int all_same = 1;
    for (int b = 0; b < B; b++) {
        int32_t seq[P + NEW];
        int n = 0;
        for (int t = 0; t < P; t++)
            if (prompts[b * P + t] != cfg.pad_id) seq[n++] = prompts[b * P + t];
        int produced = 0;
        for (int k = 0; k < NEW; k++) {
            tfm_batch batch = {.B = 1, .T = n, .tgt_in = seq};
            CHECK(tfm_model_forward(&m, &ws, &batch, 0, 0) == TFM_OK, "%s", tfm_last_error());
            const float *lg = ws.logits + (size_t)(n - 1) * cfg.tgt_vocab;
            int32_t best = -1;
            for (int v = 0; v < cfg.tgt_vocab; v++)
                if (v != cfg.pad_id && v != cfg.bos_id && (best < 0 || lg[v] > lg[best])) best = v;
            if (best != out[b * NEW + k]) all_same = 0;
            produced++;
            if (best == cfg.eos_id) break;
            seq[n++] = best;
        }
        (void)produced;
    }
    CHECK(all_same, "%s: left-padded cached generation differs from per-prompt uncached", name);
    printf("%-28s left-padded cached generation == per-prompt uncached: %s\n", name, all_same ? "yes" : "NO");
    tfm_workspace_free(&ws);
    tfm_decoder_free(&dec);
    tfm_model_free(&m);
}

static void check_reorder(void) {
    tfm_config cfg = small_config(2, 2, TFM_NORM_POST, TFM_POS_SINUSOIDAL);
    tfm_model m;
    CHECK(tfm_model_init(&m, &cfg, 13) == TFM_OK, "%s", tfm_last_error());
    spread_weights(&m);
    enum { B = 4, S = 7 };
    int32_t src[B * S], tok[B] = {1, 1, 1, 1};
    tfm_rng r;
    tfm_rng_init(&r, 4, 0);
    random_src(src, B, S, cfg.src_vocab, &r);
    tfm_decoder a, b;
    CHECK(tfm_decoder_init(&a, &m, B, S, 8) == TFM_OK && tfm_decoder_init(&b, &m, B, S, 8) == TFM_OK, "init");
    int perm[B] = {2, 0, 3, 0};
    int32_t src_p[B * S];
    for (int i = 0; i < B; i++) memcpy(src_p + i * S, src + perm[i] * S, S * sizeof *src);
    CHECK(tfm_decoder_start(&a, src, B, S) == TFM_OK && tfm_decoder_start(&b, src_p, B, S) == TFM_OK, "start");
    int32_t steps[3][B] = {{1, 1, 1, 1}, {5, 6, 7, 8}, {9, 10, 11, 12}};
    for (int s = 0; s < 2; s++) {
        int32_t tp[B];
        for (int i = 0; i < B; i++) tp[i] = steps[s][perm[i]];
        CHECK(tfm_decoder_step(&a, steps[s]) == TFM_OK && tfm_decoder_step(&b, tp) == TFM_OK, "step");
    }
    CHECK(tfm_decoder_reorder(&a, perm, B) == TFM_OK, "%s", tfm_last_error());
    memcpy(tok, steps[2], sizeof tok);
    CHECK(tfm_decoder_step(&a, tok) == TFM_OK && tfm_decoder_step(&b, tok) == TFM_OK, "step");
    tfm_test_close("reorder: permuted cache == permuted inputs", a.logits, b.logits, (size_t)B * cfg.tgt_vocab, 1e-5);
    tfm_decoder_free(&a);
    tfm_decoder_free(&b);
    tfm_model_free(&m);
}

/* Beam search's reorders: after the first, a sentence's rows sit side by
 * side and share one cross-attention slot (kv_group); hypotheses move within
 * their sentence, sentences leave, the group shrinks. After every step each
 * row's logits must equal the full forward of its sentence and its own token
 * history (rel 1e-4), and the grouping must be the expected one. */
static void check_reorder_groups(void) {
    tfm_config cfg = small_config(2, 2, TFM_NORM_POST, TFM_POS_SINUSOIDAL);
    tfm_model m;
    CHECK(tfm_model_init(&m, &cfg, 15) == TFM_OK, "%s", tfm_last_error());
    spread_weights(&m);
    enum { B = 3, S = 6, G = 3, T = 6, N = B * G };
    int32_t src[B * S];
    tfm_rng r;
    tfm_rng_init(&r, 8, 0);
    random_src(src, B, S, cfg.src_vocab, &r); /* sentences of 6, 3 and 6 tokens */
    tfm_decoder dec;
    tfm_workspace ws;
    CHECK(tfm_decoder_init(&dec, &m, N, S, T) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_workspace_init(&ws, &m, N, S, T) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_decoder_start(&dec, src, B, S) == TFM_OK, "%s", tfm_last_error());
    /* The reorder after each step (n rows: new row r takes old row from[r]) and the grouping it must give. */
    static const int from[T - 1][N] = {
        {0, 0, 0, 1, 1, 1, 2, 2, 2}, /* step 1: each sentence's row to 3 beams */
        {2, 0, 0, 4, 3, 5, 8, 8, 6}, /* beams reordered within their sentences */
        {0, 1, 2, 6, 7, 8},          /* sentence 1 leaves: its slot goes */
        {3, 5, 4},                   /* sentence 0 leaves */
        {0, 2},                      /* two beams of sentence 2 */
    };
    static const int n_after[T - 1] = {9, 9, 6, 3, 2}, group_after[T - 1] = {3, 3, 3, 3, 2};
    int n = B, sent[N], hist[N][T], hist2[N][T];
    for (int i = 0; i < B; i++) sent[i] = i;
    double worst = 0;
    for (int t = 0; t < T; t++) {
        int32_t tok[N], prefix[N * T], srcx[N * S];
        for (int i = 0; i < n; i++) {
            tok[i] = t == 0 ? cfg.bos_id : 3 + (i * 5 + t * 3) % (cfg.tgt_vocab - 3);
            hist[i][t] = tok[i];
        }
        CHECK(tfm_decoder_step(&dec, tok) == TFM_OK, "%s", tfm_last_error());
        for (int i = 0; i < n; i++) {
            memcpy(srcx + i * S, src + sent[i] * S, S * sizeof *src);
            for (int j = 0; j <= t; j++) prefix[i * (t + 1) + j] = hist[i][j];
        }
        tfm_batch batch = {.B = n, .S = S, .T = t + 1, .src = srcx, .tgt_in = prefix};
        CHECK(tfm_model_forward(&m, &ws, &batch, 0, 0) == TFM_OK, "%s", tfm_last_error());
        for (int i = 0; i < n; i++) {
            worst = fmax(worst, rel_diff(ws.logits + ((size_t)i * (t + 1) + t) * cfg.tgt_vocab,
                                         dec.logits + (size_t)i * cfg.tgt_vocab, cfg.tgt_vocab));
        }
        if (t == T - 1) break;
        int sent2[N];
        for (int i = 0; i < n_after[t]; i++) {
            sent2[i] = sent[from[t][i]];
            memcpy(hist2[i], hist[from[t][i]], sizeof hist2[i]);
        }
        CHECK(tfm_decoder_reorder(&dec, from[t], n_after[t]) == TFM_OK, "%s", tfm_last_error());
        CHECK(dec.kv_group == group_after[t], "reorder %d: kv_group %d, expected %d", t, dec.kv_group,
              group_after[t]);
        n = n_after[t];
        memcpy(sent, sent2, sizeof sent);
        memcpy(hist, hist2, sizeof hist);
    }
    CHECK(worst < 1e-4, "grouped reorder: cached logits differ from the full forward by %.3g (rel)", worst);
    printf("grouped reorder: beams share cross slots, logits == full forward (worst rel %.2e)\n", worst);
    tfm_workspace_free(&ws);
    tfm_decoder_free(&dec);
    tfm_model_free(&m);
}

static void check_packed_weights(void) {
    if (!tfm_sgemm_avx512_available()) {
        printf("packed weights: no AVX-512 kernel, skipped\n");
        return;
    }
    tfm_config cfg = small_config(2, 2, TFM_NORM_PRE, TFM_POS_SINUSOIDAL);
    cfg.d_model = 64;
    cfg.d_ff = 96;
    tfm_model m;
    CHECK(tfm_model_init(&m, &cfg, 14) == TFM_OK, "%s", tfm_last_error());
    spread_weights(&m);
    int saved = tfm_gemm_impl_set(TFM_GEMM_IMPL_OWN);
    enum { B = 5, S = 9, T = 6 };
    int32_t src[B * S];
    tfm_rng r;
    tfm_rng_init(&r, 6, 0);
    tfm_decoder a, b;
    CHECK(tfm_decoder_init(&a, &m, B, S, T) == TFM_OK, "%s", tfm_last_error());
    setenv("TFM_GEMM_PACKED", "0", 1);
    CHECK(tfm_decoder_init(&b, &m, B, S, T) == TFM_OK, "%s", tfm_last_error());
    unsetenv("TFM_GEMM_PACKED");
    CHECK(a.packs != NULL && b.packs == NULL, "packed weights: expected a cache in a only");
    int identical = 1;
    for (int run = 0; run < 2; run++) { /* the second run reuses the copies */
        random_src(src, B, S, cfg.src_vocab, &r);
        CHECK(tfm_decoder_start(&a, src, B, S) == TFM_OK && tfm_decoder_start(&b, src, B, S) == TFM_OK, "start");
        int32_t tok[B];
        for (int i = 0; i < B; i++) tok[i] = cfg.bos_id;
        for (int t = 0; t < T; t++) {
            CHECK(tfm_decoder_step(&a, tok) == TFM_OK && tfm_decoder_step(&b, tok) == TFM_OK, "step");
            identical &= !memcmp(a.logits, b.logits, sizeof(float) * B * cfg.tgt_vocab);
            for (int i = 0; i < B; i++) tok[i] = 3 + (t * 7 + i * 5 + run) % (cfg.tgt_vocab - 3);
            if (t == 2) {
                int perm[B] = {4, 0, 0, 2, 1};
                CHECK(tfm_decoder_reorder(&a, perm, B) == TFM_OK && tfm_decoder_reorder(&b, perm, B) == TFM_OK,
                      "reorder");
            }
        }
    }
    CHECK(identical, "packed weights: logits differ from the unpacked decoder's");
    long hits, misses;
    tfm_gemm_packs_stats(a.packs, &hits, &misses, NULL, NULL);
    CHECK(misses > 0 && hits > 5 * misses, "packed weights: %ld hits, %ld misses", hits, misses);
    printf("packed weights: %ld hits, %ld misses, logits identical\n", hits, misses);
    tfm_gemm_impl_set(saved);
    tfm_decoder_free(&a);
    tfm_decoder_free(&b);
    tfm_model_free(&m);
}

int main(void) {
    check_translation("post-LN sinusoidal", small_config(2, 2, TFM_NORM_POST, TFM_POS_SINUSOIDAL));
    check_translation("pre-LN learned", small_config(2, 3, TFM_NORM_PRE, TFM_POS_LEARNED));
    tfm_config c = small_config(1, 2, TFM_NORM_PRE, TFM_POS_ROPE);
    c.activation = TFM_ACT_GELU;
    check_translation("pre-LN rope gelu", c);
    check_generation("decoder-only rope", small_config(0, 3, TFM_NORM_PRE, TFM_POS_ROPE));
    check_generation("decoder-only learned", small_config(0, 2, TFM_NORM_POST, TFM_POS_LEARNED));
    check_reorder();
    check_reorder_groups();
    check_packed_weights();
    return tfm_test_finish();
}
