/*
 * test_device_model.c: whole models on a device backend (CUDA) against the CPU.
 *
 * For several configurations (the paper's post-LN encoder-decoder with shared
 * embeddings, pre-LN GELU with rotary positions, decoder-only, encoder-only,
 * d_k != d_v) the same parameters run on both backends:
 *  - one training forward + backward with dropout and label smoothing (the
 *    dropout masks are the same counter-based random numbers on both): loss,
 *    logits and every parameter gradient within relative 1e-4 (fp32; the GPU
 *    sums in another order, and its embedding gradients add atomically);
 *  - three Adam steps through the trainer: the loss within 1e-4, every
 *    parameter but the key biases (whose gradient is exactly 0: see below)
 *    within 1e-4;
 *  - greedy decoding (fp32) gives exactly the CPU's tokens, and beam search
 *    the CPU's hypotheses.
 * The same checks run first against a "staged" CPU backend (the CPU ops, but
 * flagged as device memory), which exercises every upload/download path of
 * the model, trainer and decoder on any machine; the CUDA half is skipped
 * (with a message) where the build has no CUDA backend or there is no GPU.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "infer/beam.h"
#include "infer/decode.h"
#include "train/trainer.h"
#include "test_util.h"

#define TOL 1e-4

static const tfm_backend *cuda; /* the backend under test (CUDA, or the staged CPU) */
/* The attention mode of the backend under test's workspaces (TFM_ATTENTION:
 * NULL = auto); the CPU reference always runs auto, which is full attention
 * at these lengths, so a "tiled" pass checks tiled against full. */
static const char *device_attention;

static tfm_status device_trainer_init(tfm_trainer *tr, tfm_model *m, const tfm_adam_params *opt,
                                      const tfm_lr_schedule *sched, int B, int S, int T, uint64_t seed) {
    if (device_attention) setenv("TFM_ATTENTION", device_attention, 1);
    tfm_status st = tfm_trainer_init(tr, m, opt, sched, B, S, T, seed);
    unsetenv("TFM_ATTENTION");
    if (st == TFM_OK && device_attention) CHECK(tr->ws.attn_tiled == !strcmp(device_attention, "tiled"), "mode");
    return st;
}

static tfm_status device_workspace_init(tfm_workspace *ws, tfm_model *m, int B, int S, int T) {
    if (device_attention) setenv("TFM_ATTENTION", device_attention, 1);
    tfm_status st = tfm_workspace_init(ws, m, B, S, T);
    unsetenv("TFM_ATTENTION");
    return st;
}

static tfm_config base_config(void) {
    tfm_config c;
    tfm_config_default(&c);
    c.enc_layers = 2;
    c.dec_layers = 2;
    c.d_model = 48;
    c.heads = 4;
    c.d_ff = 72;
    c.max_positions = 64;
    c.src_vocab = c.tgt_vocab = 53;
    c.dropout = c.attn_dropout = c.embed_dropout = c.act_dropout = 0.1f;
    c.label_smoothing = 0.1f;
    return c;
}

/* Spreads the weights so that an untrained model has peaked, input-dependent
 * outputs (long, varied greedy sequences). */
static void spread_weights(tfm_model *m) {
    tfm_rng r;
    tfm_rng_init(&r, 5, 5);
    for (size_t i = 0; i < m->layout.n_params; i++) m->params[i] += 0.2f * tfm_rng_next_normal(&r);
}

/* Random tokens in [3, V), each row padded (pad_id 0) after a length that varies by row. */
static void random_tokens(int32_t *x, int B, int L, int V, tfm_rng *r, int pad_rows) {
    for (int b = 0; b < B; b++) {
        int len = pad_rows ? L - (b * 3) % L : L;
        if (len < 1) len = 1;
        for (int t = 0; t < L; t++) x[b * L + t] = t < len ? 3 + (int32_t)(tfm_rng_next(r) % (uint64_t)(V - 3)) : 0;
    }
}

/* Two models with the same parameters: one on the CPU, one on CUDA. */
static int make_pair(const char *name, const tfm_config *cfg, tfm_model *cpu, tfm_model *gpu) {
    if (tfm_model_init(cpu, cfg, 7) != TFM_OK || tfm_model_init(gpu, cfg, 7) != TFM_OK) {
        CHECK(0, "%s: init: %s", name, tfm_last_error());
        return 0;
    }
    spread_weights(cpu);
    spread_weights(gpu);
    tfm_status st = tfm_model_to_backend(gpu, cuda);
    CHECK(st == TFM_OK, "%s: to cuda: %s", name, tfm_last_error());
    return st == TFM_OK;
}

/* Worst |a - b| / max|b| of n floats of backend memory `dev` against host `ref`;
 * NaN when anything is NaN. */
static double rel_error(const float *ref, const float *dev, size_t n) {
    float *host = malloc(n * sizeof *host);
    cuda->download(host, dev, n * sizeof *host);
    double worst = 0, scale = 1e-30;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)host[i] - ref[i]) / scale;
        if (isnan(e) || isnan(host[i])) worst = NAN;
        else if (!isnan(worst) && e > worst) worst = e;
    }
    free(host);
    return worst;
}

static void compare_floats(const char *what, const char *name, const float *cpu_mem, const float *gpu_mem, size_t n) {
    double e = rel_error(cpu_mem, gpu_mem, n);
    printf("%s: %s: worst rel err %.2e (tol %.0e)\n", name, what, e, TOL);
    CHECK(e <= TOL, "%s: %s: %g", name, what, e);
}

/* Adam's defaults and a constant learning rate of 1e-3 (no warm-up). */
static void test_optimizer(tfm_adam_params *opt, tfm_lr_schedule *sched) {
    tfm_adam_default_params(opt);
    tfm_lr_schedule_default(sched);
    sched->warmup = 0;
    sched->kind = TFM_LR_CONSTANT;
    sched->lr = 1e-3f;
}

/* Forward + backward with dropout, then three trainer steps. */
static void check_training(const char *name, tfm_config cfg) {
    tfm_model cpu, gpu;
    if (!make_pair(name, &cfg, &cpu, &gpu)) return;
    size_t np = cpu.layout.n_params;
    float *initial = malloc(np * sizeof *initial);
    memcpy(initial, cpu.params, np * sizeof *initial);
    enum { B = 4, S = 11, T = 9 };
    int has_enc = cfg.enc_layers > 0, has_dec = cfg.dec_layers > 0;
    int32_t src[B * S], tgt[B * T], targets[B * (S > T ? S : T)];
    tfm_rng r;
    tfm_rng_init(&r, 21, 0);
    random_tokens(src, B, S, cfg.src_vocab, &r, 1);
    random_tokens(tgt, B, T, cfg.tgt_vocab, &r, 1);
    int L = has_dec ? T : S;
    random_tokens(targets, B, L, cfg.tgt_vocab, &r, 1);
    tfm_batch b = {.B = B, .S = has_enc ? S : 0, .T = has_dec ? T : 0, .src = has_enc ? src : NULL,
                   .tgt_in = has_dec ? tgt : NULL, .targets = targets};

    tfm_adam_params opt;
    tfm_lr_schedule sched;
    test_optimizer(&opt, &sched);
    opt.clip_norm = 1.0f;
    tfm_trainer tc, tg;
    int ok = tfm_trainer_init(&tc, &cpu, &opt, &sched, B, S, T, 99) == TFM_OK &&
             device_trainer_init(&tg, &gpu, &opt, &sched, B, S, T, 99) == TFM_OK;
    CHECK(ok, "%s: trainer: %s", name, tfm_last_error());
    if (ok) {
        /* One micro-batch: logits, loss and every gradient. */
        CHECK(tfm_trainer_accumulate(&tc, &b, 1.0f / 20) == TFM_OK, "%s: cpu: %s", name, tfm_last_error());
        CHECK(tfm_trainer_accumulate(&tg, &b, 1.0f / 20) == TFM_OK, "%s: cuda: %s", name, tfm_last_error());
        double loss_c = tfm_trainer_pending_loss(&tc), loss_g = tfm_trainer_pending_loss(&tg);
        double rel = fabs(loss_g - loss_c) / fabs(loss_c);
        printf("%s: loss cpu %.7f %s %.7f rel %.2e\n", name, loss_c, cuda->name, loss_g, rel);
        CHECK(rel < 1e-5 && tg.n_tokens == tc.n_tokens, "%s: loss %.9g vs %.9g", name, loss_g, loss_c);
        /* The forward's logits were overwritten by the backward: run a forward without dropout. */
        double worst = -1;
        const char *worst_name = "";
        int n_grads = 0;
        for (int i = 0; i < cpu.layout.n_tensors; i++) {
            const tfm_tensor_info *t = &cpu.layout.tensors[i];
            if (t->tied_to >= 0) continue;
            double e = rel_error(tc.grad + t->offset, tg.grad + t->offset, t->numel);
            CHECK(e <= TOL, "%s: gradient of %s: rel err %g", name, t->name, e);
            if (isnan(e) || e > worst) {
                worst = e;
                worst_name = t->name;
            }
            n_grads++;
        }
        printf("%s: %d parameter gradients, worst rel err %.2e (%s) (tol %.0e)\n", name, n_grads, worst, worst_name,
               TOL);
        /* Three whole steps (the first finishes the micro-batch above). */
        float lc, lg;
        tfm_trainer_update(&tc);
        tfm_trainer_update(&tg);
        for (int s = 0; s < 2; s++) {
            CHECK(tfm_trainer_step(&tc, &b, &lc) == TFM_OK, "%s: %s", name, tfm_last_error());
            CHECK(tfm_trainer_step(&tg, &b, &lg) == TFM_OK, "%s: %s", name, tfm_last_error());
        }
        printf("%s: loss after 3 steps cpu %.6f %s %.6f; grad norm cpu %.6f %s %.6f\n", name, lc, cuda->name, lg,
               tc.last_grad_norm, cuda->name, tg.last_grad_norm);
        CHECK(fabsf(lc - lg) <= 1e-4f * fabsf(lc), "%s: loss after 3 steps", name);
        /* Adam moves every parameter by about lr whatever its gradient's size,
         * so an element whose gradient is rounding noise takes a step of
         * +-lr decided by that noise, differently on each backend. One kind
         * of element is always such: the key bias (rows H*dk..2*H*dk of each
         * in_proj_bias), whose true gradient is exactly 0 (softmax does not
         * change when every score of a row shifts by the same q.b_k). Those
         * are left out; every other parameter must agree: the difference of
         * the two runs over the distance the parameters moved, |p_dev -
         * p_cpu| / |p_cpu - p_initial| (L2), within 1e-3, and element-wise
         * within 1e-4 of the largest parameter. */
        float *dev = malloc(np * sizeof *dev);
        uint8_t *skip = calloc(np, 1);
        cuda->download(dev, gpu.params, np * sizeof *dev);
        int hk = cfg.heads * tfm_config_dk(&cfg);
        for (int i = 0; i < cpu.layout.n_tensors; i++) {
            const tfm_tensor_info *t = &cpu.layout.tensors[i];
            const char *suffix = "in_proj_bias";
            size_t ln = strlen(t->name), ls = strlen(suffix);
            if (t->tied_to < 0 && ln >= ls && !strcmp(t->name + ln - ls, suffix))
                memset(skip + t->offset + hk, 1, (size_t)hk);
        }
        double diff = 0, moved = 0, pworst = 0, largest = 0;
        for (size_t i = 0; i < np; i++) largest = fmax(largest, fabs(cpu.params[i]));
        for (size_t i = 0; i < np; i++) {
            if (skip[i]) continue;
            double d = (double)dev[i] - cpu.params[i];
            diff += d * d;
            moved += ((double)cpu.params[i] - initial[i]) * ((double)cpu.params[i] - initial[i]);
            pworst = isnan(d) ? NAN : fmax(pworst, fabs(d) / largest);
        }
        double ratio = sqrt(diff) / sqrt(moved);
        printf("%s: parameters after 3 Adam steps (key biases left out): |dev - cpu| / |cpu - initial| = %.2e "
               "(tol 1e-03); element-wise worst rel err %.2e (tol 1e-04)\n", name, ratio, pworst);
        CHECK(ratio <= 1e-3, "%s: parameters after 3 Adam steps: %g", name, ratio);
        CHECK(pworst <= 1e-4, "%s: parameters after 3 Adam steps: element-wise %g", name, pworst);
        free(skip);
        free(dev);

        /* Inference forward (no dropout): logits. */
        b.targets = NULL;
        tfm_workspace wc, wg;
        if (tfm_workspace_init(&wc, &cpu, B, S, T) == TFM_OK && device_workspace_init(&wg, &gpu, B, S, T) == TFM_OK) {
            CHECK(tfm_model_forward(&cpu, &wc, &b, 0, 0) == TFM_OK, "%s", tfm_last_error());
            CHECK(tfm_model_forward(&gpu, &wg, &b, 0, 0) == TFM_OK, "%s", tfm_last_error());
            compare_floats("logits (eval forward)", name, wc.logits, wg.logits, (size_t)B * L * cfg.tgt_vocab);
            tfm_workspace_free(&wc);
            tfm_workspace_free(&wg);
        }
    }
    tfm_trainer_free(&tc);
    tfm_trainer_free(&tg);
    tfm_model_free(&cpu);
    tfm_model_free(&gpu);
    free(initial);
}

/* Greedy and beam search on both backends give the same tokens. */
static void check_decoding(const char *name, tfm_config cfg) {
    cfg.dropout = cfg.attn_dropout = cfg.embed_dropout = cfg.act_dropout = 0;
    tfm_model cpu, gpu;
    if (!make_pair(name, &cfg, &cpu, &gpu)) return;
    enum { B = 5, S = 9, MAXLEN = 16 };
    int32_t src[B * S], out_c[B * MAXLEN], out_g[B * MAXLEN];
    int len_c[B], len_g[B];
    tfm_rng r;
    tfm_rng_init(&r, 3, 0);
    random_tokens(src, B, S, cfg.src_vocab, &r, 1);
    tfm_decoder dc, dg;
    int ok = tfm_decoder_init(&dc, &cpu, B * 4, S, MAXLEN + 1) == TFM_OK &&
             tfm_decoder_init(&dg, &gpu, B * 4, S, MAXLEN + 1) == TFM_OK;
    CHECK(ok, "%s: decoder: %s", name, tfm_last_error());
    if (ok) {
        CHECK(tfm_greedy_translate(&dc, src, B, S, MAXLEN, out_c, len_c) == TFM_OK, "%s", tfm_last_error());
        CHECK(tfm_greedy_translate(&dg, src, B, S, MAXLEN, out_g, len_g) == TFM_OK, "%s", tfm_last_error());
        int same = !memcmp(out_c, out_g, sizeof out_c) && !memcmp(len_c, len_g, sizeof len_c);
        int total = 0;
        for (int b = 0; b < B; b++) total += len_c[b];
        printf("%s: greedy %d tokens, %s %s the cpu\n", name, total, cuda->name, same ? "equals" : "DIFFERS from");
        CHECK(same, "%s: greedy tokens differ", name);

        tfm_beam_params bp;
        tfm_beam_default_params(&bp);
        bp.beam = 4;
        bp.max_len_a_plus = MAXLEN - S;
        tfm_hypothesis hc[B], hg[B];
        memset(hc, 0, sizeof hc);
        memset(hg, 0, sizeof hg);
        int okc = tfm_beam_search(&dc, src, B, S, &bp, hc) == TFM_OK;
        int okg = tfm_beam_search(&dg, src, B, S, &bp, hg) == TFM_OK;
        CHECK(okc && okg, "%s: beam: %s", name, tfm_last_error());
        if (okc && okg) {
            int beam_same = 1;
            for (int b = 0; b < B; b++) {
                beam_same &= hc[b].length == hg[b].length &&
                             !memcmp(hc[b].tokens, hg[b].tokens, (size_t)hc[b].length * sizeof(int32_t));
                beam_same &= fabsf(hc[b].score - hg[b].score) <= 1e-4f * fabsf(hc[b].score) + 1e-5f;
            }
            printf("%s: beam 4, %s %s the cpu\n", name, cuda->name, beam_same ? "equals" : "DIFFERS from");
            CHECK(beam_same, "%s: beam hypotheses differ", name);
        }
        tfm_hypotheses_free(hc, B);
        tfm_hypotheses_free(hg, B);
    }
    tfm_decoder_free(&dc);
    tfm_decoder_free(&dg);
    tfm_model_free(&cpu);
    tfm_model_free(&gpu);
}

/* Recorded steps (CUDA graphs; trainer.h). BF16 mode at sizes where every
 * bf16 path runs (packed logits with the loss left to the backward, the
 * fused FFN), dropout 0.1 on the residuals and embeddings and none in
 * attention (whose key is an argument there: it refuses recording). Two
 * trainers of one model, the first with recording off (TFM_CUDA_GRAPHS=0),
 * run the shapes A A A C C A A (C larger: its first run grows the backend's
 * buffers, so A's recording goes stale and is made again): each step's loss
 * within LOSS_TOL and gradient norm within NORM_TOL (relative). Not bit for
 * bit: the embedding backward adds rows with atomics, so two direct runs
 * drift apart in the last bits too (H200: equal bits for the first five
 * steps, then up to 2e-5 in the loss and 6e-5 in the norm, the same between
 * two direct runs). The dropout seed (each step's masks) and the loss scale
 * (1 / the batch's tokens, which sets the gradient norm) change every step,
 * so a replay that reused the recorded ones would be far off: the test
 * measures how far, the loss of one batch under two seeds, and requires
 * that to be at least 10 LOSS_TOL. And the second trainer must hold a
 * recording of A at the end, with A's five runs counted: else both ran
 * directly and the comparison proves nothing. */
#define LOSS_TOL 1e-4f
#define NORM_TOL 1e-3f
static void check_graphs(void) {
    tfm_config cfg;
    tfm_config_default(&cfg);
    cfg.enc_layers = cfg.dec_layers = 2;
    cfg.d_model = 256;
    cfg.heads = 4;
    cfg.d_ff = 1024;
    cfg.src_vocab = cfg.tgt_vocab = 1000;
    cfg.max_positions = 64;
    cfg.dropout = cfg.embed_dropout = 0.1f;
    cfg.attn_dropout = cfg.act_dropout = 0.0f;
    cfg.label_smoothing = 0.1f;
    enum { BA = 32, LA = 32, BC = 40, LC = 40 };
    tfm_model m1, m2;
    int ok = tfm_model_init(&m1, &cfg, 3) == TFM_OK && tfm_model_init(&m2, &cfg, 3) == TFM_OK &&
             tfm_model_to_backend(&m1, cuda) == TFM_OK && tfm_model_to_backend(&m2, cuda) == TFM_OK;
    CHECK(ok, "graphs: models: %s", tfm_last_error());
    if (!ok) return;
    CHECK(cuda->set_matmul_precision(TFM_MATMUL_BF16), "graphs: bf16 mode refused");
    tfm_adam_params opt;
    tfm_lr_schedule sched;
    test_optimizer(&opt, &sched);
    tfm_trainer t1, t2;
    setenv("TFM_CUDA_GRAPHS", "0", 1);
    ok = tfm_trainer_init(&t1, &m1, &opt, &sched, BC, LC, LC, 11) == TFM_OK;
    unsetenv("TFM_CUDA_GRAPHS");
    ok = ok && tfm_trainer_init(&t2, &m2, &opt, &sched, BC, LC, LC, 11) == TFM_OK;
    CHECK(ok && !t1.graphs_on && t2.graphs_on, "graphs: trainers: %s", tfm_last_error());
    static int32_t src[BC * LC], tgt[BC * LC], targets[BC * LC];
    tfm_rng r;
    tfm_rng_init(&r, 8, 1);
    const char *shapes = "AAACCAA";
    int same_losses = 1;
    for (int i = 0; ok && shapes[i]; i++) {
        int B = shapes[i] == 'A' ? BA : BC, L = shapes[i] == 'A' ? LA : LC;
        random_tokens(src, B, L, cfg.src_vocab, &r, 1);
        random_tokens(tgt, B, L, cfg.tgt_vocab, &r, 1);
        random_tokens(targets, B, L, cfg.tgt_vocab, &r, 1);
        tfm_batch b = {.B = B, .S = L, .T = L, .src = src, .tgt_in = tgt, .targets = targets};
        float l1 = 0, l2 = 0;
        CHECK(tfm_trainer_step(&t1, &b, &l1) == TFM_OK, "graphs: step %d: %s", i, tfm_last_error());
        CHECK(tfm_trainer_step(&t2, &b, &l2) == TFM_OK, "graphs: step %d: %s", i, tfm_last_error());
        float n1 = t1.last_grad_norm, n2 = t2.last_grad_norm;
        printf("graphs: step %d (%c): loss %.7f direct, %.7f recorded; gradient norm %.6f, %.6f\n", i, shapes[i],
               l1, l2, n1, n2);
        same_losses &= fabsf(l1 - l2) <= LOSS_TOL * fabsf(l1) && fabsf(n1 - n2) <= NORM_TOL * fabsf(n1);
        if (!shapes[i + 1]) { /* what another step's masks make of the last batch's loss */
            double loss[2];
            for (int k = 0; k < 2 && ok; k++) {
                CHECK(tfm_model_forward(&m1, &t1.ws, &b, 1, 1000 + k) == TFM_OK, "graphs: %s", tfm_last_error());
                loss[k] = t1.ws.loss_sum / t1.ws.n_tokens;
            }
            double seed_effect = fabs(loss[0] - loss[1]) / fabs(loss[0]);
            printf("graphs: the loss of one batch under two dropout seeds: %.7f, %.7f (rel %.1e; tolerance %.0e)\n",
                   loss[0], loss[1], seed_effect, (double)LOSS_TOL);
            CHECK(seed_effect >= 10 * LOSS_TOL, "graphs: the tolerance would not see a replayed seed");
        }
    }
    CHECK(same_losses, "graphs: the losses or gradient norms differ");
    const tfm_step_graph *ga = NULL;
    for (int i = 0; i < TFM_TRAINER_GRAPHS; i++)
        if (t2.graphs[i].B == BA && t2.graphs[i].S == LA && t2.graphs[i].T == LA) ga = &t2.graphs[i];
    CHECK(ga && ga->graph && ga->runs == 5, "graphs: shape A %s", !ga ? "not seen" : !ga->graph ? "not recorded" : "miscounted");
    if (ok) tfm_trainer_free(&t1), tfm_trainer_free(&t2);
    CHECK(cuda->set_matmul_precision(TFM_MATMUL_FP32), "graphs: fp32 mode refused");
    tfm_model_free(&m1);
    tfm_model_free(&m2);
}

static void run_all(int decoding) {
    tfm_config paper = base_config();
    check_training("post_relu_shared", paper);

    tfm_config pre = base_config();
    pre.norm = TFM_NORM_PRE;
    pre.activation = TFM_ACT_GELU;
    pre.positions = TFM_POS_ROPE;
    pre.share = TFM_SHARE_NONE;
    check_training("pre_gelu_rope", pre);

    tfm_config dec_only = base_config();
    dec_only.enc_layers = 0;
    dec_only.positions = TFM_POS_LEARNED;
    dec_only.share = TFM_SHARE_DECODER;
    check_training("decoder_only_learned", dec_only);

    tfm_config enc_only = base_config();
    enc_only.dec_layers = 0;
    enc_only.share = TFM_SHARE_NONE;
    check_training("encoder_only", enc_only);

    tfm_config dkdv = base_config();
    dkdv.d_k = 5;
    dkdv.d_v = 7;
    check_training("dk5_dv7", dkdv);

    if (!decoding) return;
    check_decoding("decode_post", paper);
    check_decoding("decode_pre_rope", pre);
}

int main(void) {
    static tfm_backend staged;
    staged = *tfm_backend_cpu();
    staged.name = "cpu-staged";
    staged.host_memory = 0;
    printf("== backend cpu-staged (CPU ops behind the device code paths)\n");
    cuda = &staged;
    run_all(1);
    /* Tiled attention (lse saved, probabilities recomputed in the backward)
     * against the CPU's full attention: loss, gradients, Adam steps, logits. */
    printf("== backend cpu-staged, tiled attention\n");
    device_attention = "tiled";
    run_all(0);
    device_attention = NULL;

    const char *why = NULL;
    const tfm_backend *dev = tfm_backend_cuda(&why);
    if (dev) {
        cuda = dev;
        printf("== backend %s\n", cuda->name);
        run_all(1);
        printf("== backend %s, tiled attention\n", cuda->name);
        device_attention = "tiled";
        run_all(0);
        device_attention = NULL;
        if (cuda->graph_begin) {
            printf("== backend %s, recorded steps\n", cuda->name);
            check_graphs();
        }
    } else {
        printf("== backend cuda: SKIP: %s\n", why);
    }
    return tfm_test_finish();
}
