/*
 * cmd_demo.c: `transformer demo`, the job that needs no download: train small
 * models on the synthetic copy and reverse tasks, then decode held-out
 * sequences greedily (KV cache) and report exact-match accuracy.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "infer/decode.h"
#include "train/synthetic.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer demo [options]\n"
            "  --task copy|reverse|both   task(s) to learn (default both)\n"
            "  --steps N                  training steps per task (default 1200)\n"
            "  --max-time SECONDS         stop training a task after this long (default 0 = no limit)\n"
            "  --batch N                  pairs per step (default 64)\n"
            "  --eval N                   held-out sequences to decode (default 500)\n"
            "  --seed N                   random seed (default 1)\n"
            "  --warmup N                 warmup steps (default 100)\n"
            "  --lr-factor F              factor on the paper's (noam) schedule (default 1)\n"
            "  --schedule NAME            noam|cosine|inverse_sqrt|constant|step|exp (default cosine)\n"
            "  --lr F                     peak learning rate of the non-noam schedules (default 2e-3)\n"
            "  --quiet                    no progress lines\n"
            "  any model flag of 'transformer train' (--d-model, --heads, --enc-layers, ...)\n"
            "  overrides the demo model (2+2 layers, d_model 64, 4 heads, d_ff 256)\n");
}

static void show_samples(const tfm_task_run *run, tfm_model *m) {
    tfm_decoder dec;
    int S = run->task.max_len, T = S + 1, n = 3;
    if (tfm_decoder_init(&dec, m, n, S, T) != TFM_OK) return;
    int32_t src[3 * 16], tin[3 * 17], tgt[3 * 17], out[3 * 17];
    int lens[3];
    tfm_rng rng;
    tfm_rng_init(&rng, 12345, 5);
    tfm_task_batch(&run->task, &rng, 1, n, src, tin, tgt);
    if (tfm_greedy_translate(&dec, src, n, S, T, out, lens) == TFM_OK) {
        for (int b = 0; b < n; b++) {
            printf("  source:");
            for (int i = 0; i < S && src[b * S + i] != run->task.pad_id; i++) printf(" %d", src[b * S + i]);
            printf("\n  output:");
            for (int i = 0; i < lens[b]; i++) printf(" %d", out[b * T + i]);
            printf("   %s\n", tfm_task_correct(&run->task, src + b * S, out + b * T, lens[b]) ? "(correct)" : "(wrong)");
        }
    }
    tfm_decoder_free(&dec);
}

int cmd_demo(int argc, char **argv) {
    const char *task = "both";
    long steps = -1;
    double max_time = 0;
    int batch = 0, eval = 0, quiet = 0;
    long warmup = 0;
    double lr_factor = 0, lr = 0;
    const char *schedule = NULL;
    char *overrides[64][2];
    int n_overrides = 0;
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!v) { fprintf(stderr, "transformer demo: %s needs a value\n", a); return 2; }
        else if (!strcmp(a, "--task")) { task = v; i++; }
        else if (!strcmp(a, "--steps")) { steps = atol(v); i++; }
        else if (!strcmp(a, "--max-time")) { max_time = atof(v); i++; }
        else if (!strcmp(a, "--batch")) { batch = atoi(v); i++; }
        else if (!strcmp(a, "--eval")) { eval = atoi(v); i++; }
        else if (!strcmp(a, "--seed")) { seed = strtoull(v, NULL, 10); i++; }
        else if (!strcmp(a, "--warmup")) { warmup = atol(v); i++; }
        else if (!strcmp(a, "--lr-factor")) { lr_factor = atof(v); i++; }
        else if (!strcmp(a, "--lr")) { lr = atof(v); i++; }
        else if (!strcmp(a, "--schedule")) { schedule = v; i++; }
        else if (!strncmp(a, "--", 2) && n_overrides < 64) {
            overrides[n_overrides][0] = argv[i] + 2;
            overrides[n_overrides++][1] = argv[i + 1];
            i++;
        } else { fprintf(stderr, "transformer demo: unknown option %s\n", a); usage(stderr); return 2; }
    }
    int do_copy = !strcmp(task, "copy") || !strcmp(task, "both");
    int do_rev = !strcmp(task, "reverse") || !strcmp(task, "both");
    if (!do_copy && !do_rev) { fprintf(stderr, "transformer demo: --task must be copy, reverse or both\n"); return 2; }
    if (steps == 0 || batch < 0 || eval < 0) { fprintf(stderr, "transformer demo: sizes must be positive\n"); return 2; }
    int failed = 0;
    for (int k = 0; k < 2; k++) {
        if ((k == 0 && !do_copy) || (k == 1 && !do_rev)) continue;
        tfm_task_run run;
        tfm_task_run_default(&run, k == 0 ? TFM_TASK_COPY : TFM_TASK_REVERSE);
        if (steps > 0) run.max_steps = steps;
        if (batch > 0) run.batch = batch;
        if (eval > 0) run.eval_size = eval;
        run.max_seconds = max_time;
        if (schedule && tfm_lr_kind_parse(schedule, &run.sched.kind) != TFM_OK) {
            fprintf(stderr, "transformer demo: %s\n", tfm_last_error());
            return 2;
        }
        if (lr > 0) run.sched.lr = (float)lr;
        if (warmup > 0) run.sched.warmup = warmup;
        if (lr_factor > 0) run.sched.factor = (float)lr_factor;
        for (int o = 0; o < n_overrides; o++) {
            if (tfm_config_set(&run.cfg, overrides[o][0], overrides[o][1]) != TFM_OK) {
                fprintf(stderr, "transformer demo: %s\n", tfm_last_error());
                return 2;
            }
        }
        run.sched.d_model = run.cfg.d_model;
        run.sched.total_steps = run.max_steps;
        run.seed = seed;
        run.log = quiet ? NULL : stdout;
        printf("== %s task: %d+%d layers, d_model %d, %d symbols, lengths %d-%d\n", k == 0 ? "copy" : "reverse",
               run.cfg.enc_layers, run.cfg.dec_layers, run.cfg.d_model, run.task.symbols, run.task.min_len,
               run.task.max_len);
        fflush(stdout);
        tfm_task_result res;
        tfm_model m;
        if (tfm_task_train(&run, &res, &m) != TFM_OK) {
            fprintf(stderr, "transformer demo: %s\n", tfm_last_error());
            return 1;
        }
        printf("%s: %ld steps in %.1f s, final loss %.4f; held-out exact match %d/%d = %.2f%%\n",
               k == 0 ? "copy" : "reverse", res.steps, res.train_seconds, res.final_loss, res.correct, res.total,
               100.0 * res.accuracy);
        show_samples(&run, &m);
        tfm_model_free(&m);
        failed |= res.accuracy < 0.99;
    }
    return failed ? 1 : 0;
}
