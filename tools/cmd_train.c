/*
 * cmd_train.c: `transformer train`: parse flags (and --config FILE.json)
 * into tfm_train_opts, then tfm_train_run (src/train/train_run.c).
 *
 * Every setting is a flag; the same names (without dashes, '-' or '_') are
 * the keys of --config FILE.json, so a run can be written down and repeated.
 * Model flags (--d-model, --heads, ...) are the configuration's fields
 * (docs/config.md).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli_util.h"
#include "commands.h"
#include "train/train_run.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer train --train-src F --train-tgt F [--valid-src F --valid-tgt F] --model-dir DIR [options]\n"
            "       transformer train --train-text F [--valid-text F] --model-dir DIR --dec-layers N --enc-layers 0 [options]\n"
            "\n"
            "data\n"
            "  --train-src/--train-tgt F  line-aligned parallel training text\n"
            "  --valid-src/--valid-tgt F  validation text (loss, perplexity, greedy BLEU)\n"
            "  --train-text/--valid-text F  plain text for a decoder-only language model\n"
            "  --model-dir DIR            where the tokenizer, config, checkpoints and curves go (required)\n"
            "  --config FILE.json         settings as JSON: keys are these flags' names or config fields\n"
            "  --vocab-size N             BPE vocabulary when DIR has no bpe.model yet (default 8000)\n"
            "  --batch-tokens N           padded tokens per batch, max(B*S, B*T) (default 4096)\n"
            "  --max-sentences N          pairs per batch, 0 = no limit (default 0)\n"
            "  --max-len N                skip pairs with a side longer than N tokens (default 128)\n"
            "  --accum N                  batches accumulated per update (default 1)\n"
            "optimisation\n"
            "  --optimizer adam|adamw     (default adam)\n"
            "  --beta1 F --beta2 F --eps F  Adam (default 0.9, 0.98, 1e-9, the paper's)\n"
            "  --weight-decay F           (default 0)\n"
            "  --clip-norm F              global gradient-norm clipping, 0 = off (default 0)\n"
            "  --schedule NAME            noam|cosine|inverse_sqrt|constant|step|exp (default noam, the paper's)\n"
            "  --lr-factor F              factor on the paper's schedule (default 1)\n"
            "  --lr F                     peak learning rate of the other schedules (default 1e-3)\n"
            "  --warmup N                 warmup steps (default 4000)\n"
            "  --min-lr F                 cosine floor (default 0)\n"
            "  --gamma F --step-size N    step and exp decay (default 0.5, 1000)\n"
            "stopping, logging, checkpoints\n"
            "  --max-steps N              (default 0 = no limit)\n"
            "  --max-epochs N             (default 0 = no limit)\n"
            "  --max-time T               seconds, or with a unit: 90s, 30m, 1h (default 0 = no limit)\n"
            "  --valid-every N            steps between validations and checkpoints (default 1000)\n"
            "  --log-every N              steps between log lines when not on a terminal (default 100)\n"
            "  --keep-last K              checkpoints kept (default 5)\n"
            "  --bleu-sentences N         validation sentences translated for BLEU, 0 = all, -1 = none (default 0)\n"
            "  --seed N                   initialisation, dropout and shuffling (default 1)\n"
            "  --threads N                (default: all cores, or TFM_NUM_THREADS)\n"
            "  --device cpu|cuda          where the model trains (default cpu; cuda needs a CUDA build)\n"
            "  --precision fp32|tf32|bf16 GEMM arithmetic; tf32 and bf16 use tensor cores (cuda only; default fp32)\n"
            "  --resume                   continue DIR's run exactly where it stopped\n"
            "  --no-progress              plain log lines even on a terminal\n"
            "model (the paper's base model unless set; see docs/config.md)\n"
            "  --enc-layers N --dec-layers N --d-model N --heads N --d-ff N --d-k N --d-v N\n"
            "  --activation relu|gelu --norm post|pre --positions sinusoidal|learned|rope|none\n"
            "  --max-positions N --share none|decoder|all --embed-scale true|false\n"
            "  --dropout F --attn-dropout F --embed-dropout F --act-dropout F --label-smoothing F --ln-eps F\n");
}

/* Applies one setting by name (dashes or underscores). Returns 0, or 2 with a
 * message on stderr. */
static int apply(tfm_train_opts *o, int *threads, const char *raw_name, const char *v) {
    char name[64];
    tfm_cli_normalize(name, sizeof name, raw_name);
    const char *bad = NULL;
    if (!strcmp(name, "train_src")) o->train_src = v;
    else if (!strcmp(name, "train_tgt")) o->train_tgt = v;
    else if (!strcmp(name, "valid_src")) o->valid_src = v;
    else if (!strcmp(name, "valid_tgt")) o->valid_tgt = v;
    else if (!strcmp(name, "train_text")) o->train_text = v;
    else if (!strcmp(name, "valid_text")) o->valid_text = v;
    else if (!strcmp(name, "model_dir")) o->model_dir = v;
    else if (!strcmp(name, "vocab_size")) { if (!tfm_cli_int(v, 261, 1 << 24, &o->vocab_size)) bad = "an integer >= 261"; }
    else if (!strcmp(name, "batch_tokens")) { if (!tfm_cli_long(v, 1, 1L << 40, &o->corpus.batch_tokens)) bad = "a positive integer"; }
    else if (!strcmp(name, "max_sentences")) { if (!tfm_cli_int(v, 0, 1 << 30, &o->corpus.max_sentences)) bad = "an integer >= 0"; }
    else if (!strcmp(name, "max_len")) { if (!tfm_cli_int(v, 1, 1 << 20, &o->corpus.max_len)) bad = "a positive integer"; }
    else if (!strcmp(name, "accum")) { if (!tfm_cli_int(v, 1, 1 << 20, &o->accum)) bad = "a positive integer"; }
    else if (!strcmp(name, "optimizer")) { if (tfm_opt_kind_parse(v, &o->opt.kind) != TFM_OK) bad = "adam or adamw"; }
    else if (!strcmp(name, "beta1")) { if (!tfm_cli_float(v, &o->opt.beta1)) bad = "a number"; }
    else if (!strcmp(name, "beta2")) { if (!tfm_cli_float(v, &o->opt.beta2)) bad = "a number"; }
    else if (!strcmp(name, "eps")) { if (!tfm_cli_float(v, &o->opt.eps)) bad = "a number"; }
    else if (!strcmp(name, "weight_decay")) { if (!tfm_cli_float(v, &o->opt.weight_decay)) bad = "a number"; }
    else if (!strcmp(name, "clip_norm")) { if (!tfm_cli_float(v, &o->opt.clip_norm)) bad = "a number"; }
    else if (!strcmp(name, "schedule")) { if (tfm_lr_kind_parse(v, &o->sched.kind) != TFM_OK) bad = "noam, cosine, inverse_sqrt, constant, step or exp"; }
    else if (!strcmp(name, "lr_factor")) { if (!tfm_cli_float(v, &o->sched.factor)) bad = "a number"; }
    else if (!strcmp(name, "lr")) { if (!tfm_cli_float(v, &o->sched.lr)) bad = "a number"; }
    else if (!strcmp(name, "warmup")) { if (!tfm_cli_long(v, 0, 1L << 40, &o->sched.warmup)) bad = "an integer >= 0"; }
    else if (!strcmp(name, "min_lr")) { if (!tfm_cli_float(v, &o->sched.min_lr)) bad = "a number"; }
    else if (!strcmp(name, "gamma")) { if (!tfm_cli_float(v, &o->sched.gamma)) bad = "a number"; }
    else if (!strcmp(name, "step_size")) { if (!tfm_cli_long(v, 1, 1L << 40, &o->sched.step_size)) bad = "a positive integer"; }
    else if (!strcmp(name, "max_steps")) { if (!tfm_cli_long(v, 0, 1L << 40, &o->max_steps)) bad = "an integer >= 0"; }
    else if (!strcmp(name, "max_epochs")) { if (!tfm_cli_long(v, 0, 1L << 40, &o->max_epochs)) bad = "an integer >= 0"; }
    else if (!strcmp(name, "max_time")) { if (!tfm_cli_duration(v, &o->max_seconds)) bad = "seconds, or a number with s, m or h"; }
    else if (!strcmp(name, "valid_every")) { if (!tfm_cli_long(v, 1, 1L << 40, &o->valid_every)) bad = "a positive integer"; }
    else if (!strcmp(name, "log_every")) { if (!tfm_cli_long(v, 1, 1L << 40, &o->log_every)) bad = "a positive integer"; }
    else if (!strcmp(name, "keep_last")) { if (!tfm_cli_int(v, 0, 1 << 20, &o->keep_last)) bad = "an integer >= 0"; }
    else if (!strcmp(name, "bleu_sentences")) { if (!tfm_cli_int(v, -1, 1 << 30, &o->bleu_sentences)) bad = "an integer >= -1"; }
    else if (!strcmp(name, "seed")) { long s; if (!tfm_cli_long(v, 0, (1L << 62), &s)) bad = "an integer >= 0"; else o->seed = (uint64_t)s; }
    else if (!strcmp(name, "precision")) { if (strcmp(v, "fp32") && strcmp(v, "tf32") && strcmp(v, "bf16")) bad = "fp32, tf32 or bf16"; else o->precision = v; }
    else if (!strcmp(name, "device")) { if (strcmp(v, "cpu") && strcmp(v, "cuda")) bad = "cpu or cuda"; else o->device = v; }
    else if (!strcmp(name, "threads")) { if (!tfm_cli_int(v, 1, 4096, threads)) bad = "a positive integer"; }
    else if (tfm_config_set(&o->cfg, raw_name, v) != TFM_OK) {
        fprintf(stderr, "transformer train: %s\n", tfm_last_error());
        return 2;
    }
    if (bad) {
        fprintf(stderr, "transformer train: --%s: '%s' is not %s\n", raw_name, v, bad);
        return 2;
    }
    return 0;
}

/* --config FILE.json: every key is a setting, applied as its flag would be. */
static int apply_json(tfm_train_opts *o, int *threads, const char *path) {
    char *text = tfm_cli_read_file(path);
    if (!text) {
        fprintf(stderr, "transformer train: %s: cannot read: %s\n", path, strerror(errno));
        return 1;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "transformer train: %s: not a JSON object\n", path);
        cJSON_Delete(root);
        return 2;
    }
    int rc = 0;
    for (cJSON *it = root->child; it && !rc; it = it->next) {
        char value[4096];
        if (cJSON_IsString(it)) snprintf(value, sizeof value, "%s", it->valuestring);
        else if (cJSON_IsBool(it)) snprintf(value, sizeof value, "%s", cJSON_IsTrue(it) ? "true" : "false");
        else if (cJSON_IsNumber(it)) snprintf(value, sizeof value, "%.17g", it->valuedouble);
        else {
            fprintf(stderr, "transformer train: %s: key \"%s\": expected a string, number or boolean\n", path, it->string);
            rc = 2;
            break;
        }
        /* Values (paths among them) must outlive the JSON tree: they live
         * until the process ends. */
        char *v = strdup(value);
        rc = apply(o, threads, it->string, v);
        if (rc == 2) fprintf(stderr, "  (in %s)\n", path);
    }
    cJSON_Delete(root);
    return rc;
}

int cmd_train(int argc, char **argv) {
    tfm_train_opts o;
    tfm_train_opts_default(&o);
    o.progress = isatty(fileno(stderr));
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) { fprintf(stderr, "transformer train: --config needs a file\n"); return 2; }
            int rc = apply_json(&o, &threads, argv[i + 1]);
            if (rc) return rc;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--resume")) { o.resume = 1; continue; }
        if (!strcmp(a, "--no-progress")) { o.progress = 0; continue; }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "transformer train: unexpected argument '%s'\n", a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "transformer train: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--config")) { i++; continue; }
        int rc = apply(&o, &threads, a + 2, argv[++i]);
        if (rc) return rc;
    }
    tfm_cli_set_threads(threads);
    tfm_status st = tfm_train_run(&o);
    if (st != TFM_OK) {
        fprintf(stderr, "transformer train: %s\n", tfm_last_error());
        return st == TFM_ERR_INVALID ? 2 : 1;
    }
    return 0;
}
