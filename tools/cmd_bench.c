/*
 * cmd_bench.c: `transformer bench KIND`: one measurement per invocation, for
 * bench/run.sh to compare with bench/torch_bench.py (the same measurements in
 * PyTorch, the same JSON).
 *
 * Each timed repetition prints one JSON object on its own line of stdout; a
 * last object with "summary": true gives the medians, the threads, the BLAS
 * and the peak resident memory of the process (getrusage ru_maxrss). Progress
 * and errors go to stderr, so stdout stays machine-readable.
 *
 *   train      whole tfm_trainer_step calls (forward, label-smoothed loss,
 *              backward, Adam) on one random batch, after warm-up steps
 *   greedy     KV-cached greedy decoding of random sources with a fixed output
 *              length: encoder, then out_len decoder steps, argmax each step
 *   sgemm      tfm_gemm at every GEMM shape of a training step, and the
 *              aggregate GFLOP/s of all of them weighted as in one step:
 *              OpenBLAS's sgemm ("gflops") and, with AVX-512, the library's
 *              own kernel ("own_gflops")
 *   long       forward + backward of one long sequence, encoder-only model
 *   translate  beam search over a file with a trained model directory
 *
 * The analytic FLOP count of a step is documented in bench/README.md and
 * computed by step_flop() below. Not here: PyTorch (bench/torch_bench.py),
 * alternating runs and the table (bench/run.sh, bench/report.py).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli_util.h"
#include "core/status.h"
#include "commands.h"
#include "infer/beam.h"
#include "infer/decode.h"
#include "infer/translate.h"
#include "model/model.h"
#include "ops/ops.h"
#include "ops/sgemm_avx512.h"
#include "train/trainer.h"

#ifdef TFM_HAVE_CBLAS
/* OpenBLAS's own queries (exported by every OpenBLAS build; declared here so
 * that the CLI needs no cblas.h include path). */
char *openblas_get_config(void);
char *openblas_get_corename(void);
#endif

/* ------------------------------------------------------------------ sizes */

/* The benchmark configurations: model size and batch shape. */
typedef struct bench_size {
    const char *name;
    int d_model, heads, d_ff, enc_layers, dec_layers, vocab;
    int batch, src_len, tgt_len;
} bench_size;

static const bench_size sizes[] = {
    {"tiny", 32, 2, 64, 1, 1, 100, 4, 8, 8},             /* smoke tests */
    {"small", 256, 4, 1024, 3, 3, 8000, 64, 24, 24},     /* the Multi30k model */
    {"base", 512, 8, 2048, 6, 6, 32000, 32, 32, 32},     /* the paper's base model */
    /* GPU sizes (bench/gpu): the paper's batches of about 25,000 target tokens, vocabulary 37,000 */
    {"gpu-base", 512, 8, 2048, 6, 6, 37000, 800, 32, 32},
    {"gpu-big", 1024, 16, 4096, 6, 6, 37000, 800, 32, 32},
};

enum { K_TRAIN = 1, K_GREEDY = 2, K_SGEMM = 4, K_LONG = 8, K_TRANSLATE = 16 };

static const struct {
    const char *name;
    int bit;
} kinds[] = {
    {"train", K_TRAIN}, {"greedy", K_GREEDY}, {"sgemm", K_SGEMM}, {"long", K_LONG}, {"translate", K_TRANSLATE},
};

typedef struct bench_opts {
    int kind;
    const char *kind_name;
    const bench_size *size;
    int threads, reps, warmup;       /* warmup < 0: the kind's default */
    int batch, src_len, tgt_len;     /* 0: the size's */
    unsigned long long seed;
    /* long */
    int len, layers, d_model, heads, d_ff, vocab;
    /* translate */
    const char *model_dir, *checkpoint, *input;
    int limit, beam, batch_sentences; /* beam 0: the kind's default (translate 4, greedy 1) */
    /* sgemm */
    double min_time;
    const char *device;              /* train, greedy: "cpu" or "cuda" (NULL: cpu) */
    const char *precision;           /* train, greedy: GEMM arithmetic (NULL: fp32) */
} bench_opts;

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer bench KIND [options]\n"
            "Runs one measurement; prints one JSON object per timed repetition on stdout, then a\n"
            "summary object (medians, threads, BLAS, peak resident memory). bench/run.sh compares\n"
            "these with PyTorch; bench/README.md says what each figure counts.\n"
            "\n"
            "kinds:\n"
            "  train      whole training steps (forward, label-smoothed loss, backward, Adam), random batch\n"
            "  greedy     KV-cached greedy decoding of random sources, fixed output length (no eos stop)\n"
            "  sgemm      tfm_gemm GFLOP/s at every GEMM shape of a training step of --config:\n"
            "             OpenBLAS (gflops) and, with AVX-512, the own kernel (own_gflops)\n"
            "  long       forward + backward of one --len token sequence, encoder-only model\n"
            "  translate  beam search translation of --input with the model in --model\n"
            "\n"
            "options:\n"
            "  --config tiny|small|base   model and batch (default small): train, greedy, sgemm\n"
            "                             tiny:  d_model 32, 2 heads, d_ff 64, 1+1 layers, vocab 100, 4 x 8+8\n"
            "                             small: d_model 256, 4 heads, d_ff 1024, 3+3 layers, vocab 8000, 64 x 24+24\n"
            "                             base:  d_model 512, 8 heads, d_ff 2048, 6+6 layers, vocab 32000, 32 x 32+32\n"
            "                             gpu-base, gpu-big: the paper's base and big models, vocab 37000, 800 x 32+32\n"
            "  --batch N                  rows (default: the config's; greedy: sentences decoded together)\n"
            "  --src-len N                source tokens per row (default: the config's)\n"
            "  --tgt-len N                target tokens per row, train and sgemm (default: the config's)\n"
            "  --out-len N                greedy: output tokens per sentence (default: the config's target length)\n"
            "  --reps N                   timed repetitions (default 5)\n"
            "  --warmup N                 untimed runs first (default 2 for train, 1 for the others)\n"
            "  --threads N                threads (default: OMP_NUM_THREADS or TFM_NUM_THREADS, else all cores)\n"
            "  --seed N                   seed of the weights, tokens and dropout (default 1)\n"
            "  --device cpu|cuda          train, greedy: where the model runs (default cpu)\n"
            "  --precision fp32|tf32|bf16 train, greedy: GEMM arithmetic (cuda only; default fp32)\n"
            "  --min-time SECONDS         sgemm: time each shape for at least this long (default 0.2)\n"
            "  --len N                    long: sequence length (default 4096)\n"
            "  --layers N                 long: encoder layers (default 6)\n"
            "  --d-model N                long: model width (default 512)\n"
            "  --heads N                  long: attention heads (default 8)\n"
            "  --d-ff N                   long: feed-forward width (default 2048)\n"
            "  --vocab N                  long: vocabulary, shared with the output projection (default 1000)\n"
            "  --model DIR                translate: model directory (required)\n"
            "  --checkpoint FILE          translate: weights instead of DIR/model.safetensors (default none)\n"
            "  --input FILE               translate: source lines (required)\n"
            "  --limit N                  translate: only the first N lines (default 0 = all)\n"
            "  --beam N                   translate: beam width (default 4); greedy: > 1 runs beam search\n"
            "                             of that width instead, eos forbidden so every sentence runs\n"
            "                             --out-len tokens (default 1)\n"
            "  --batch-sentences N        translate: sentences decoded together (default 64)\n");
}

/* Which kinds each flag applies to, so that a flag given to the wrong kind is
 * an error instead of silently ignored. */
static const struct {
    const char *flag;
    int kinds;
} applies[] = {
    {"--config", K_TRAIN | K_GREEDY | K_SGEMM},
    {"--batch", K_TRAIN | K_GREEDY | K_SGEMM},
    {"--src-len", K_TRAIN | K_GREEDY | K_SGEMM},
    {"--tgt-len", K_TRAIN | K_SGEMM},
    {"--out-len", K_GREEDY},
    {"--reps", K_TRAIN | K_GREEDY | K_SGEMM | K_LONG | K_TRANSLATE},
    {"--warmup", K_TRAIN | K_GREEDY | K_SGEMM | K_LONG | K_TRANSLATE},
    {"--threads", K_TRAIN | K_GREEDY | K_SGEMM | K_LONG | K_TRANSLATE},
    {"--seed", K_TRAIN | K_GREEDY | K_SGEMM | K_LONG},
    {"--device", K_TRAIN | K_GREEDY},
    {"--precision", K_TRAIN | K_GREEDY},
    {"--min-time", K_SGEMM},
    {"--len", K_LONG},
    {"--layers", K_LONG},
    {"--d-model", K_LONG},
    {"--heads", K_LONG},
    {"--d-ff", K_LONG},
    {"--vocab", K_LONG},
    {"--model", K_TRANSLATE},
    {"--checkpoint", K_TRANSLATE},
    {"--input", K_TRANSLATE},
    {"--limit", K_TRANSLATE},
    {"--beam", K_TRANSLATE | K_GREEDY},
    {"--batch-sentences", K_TRANSLATE},
};

/* ---------------------------------------------------------------- helpers */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static long peak_rss_kb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return ru.ru_maxrss; /* kilobytes on Linux */
}

static int threads_in_use(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* A JSON string literal of s (escapes quotes, backslashes, control bytes). */
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* A splitmix64 stream for the random tokens and GEMM inputs. */
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A token id uniform in [3, V): never pad (0), bos (1) or eos (2). */
static int32_t random_token(uint64_t *s, int V) {
    return 3 + (int32_t)(next_u64(s) % (uint64_t)(V - 3));
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double *t = malloc((size_t)n * sizeof *t);
    if (!t || n == 0) {
        free(t);
        return 0;
    }
    memcpy(t, v, (size_t)n * sizeof *t);
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    double m = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return m;
}

/* The common fields of every object: the kind, the implementation, threads. */
static void json_head(const bench_opts *o) {
    printf("{\"bench\":");
    json_str(stdout, o->kind_name);
    printf(",\"impl\":\"transformer.c\",\"device\":\"%s\",\"precision\":\"%s\",\"threads\":%d",
           o->device ? o->device : "cpu", o->precision ? o->precision : "fp32", threads_in_use());
}

/* The closing summary object: medians of the per-rep milliseconds, BLAS, RSS. */
static void print_summary(const bench_opts *o, const double *ms, int n, const char *extra) {
    json_head(o);
    printf(",\"summary\":true,\"reps\":%d,\"median_ms\":%.4f", n, median(ms, n));
#ifdef TFM_HAVE_CBLAS
    printf(",\"blas\":");
    json_str(stdout, openblas_get_config());
    printf(",\"blas_core\":");
    json_str(stdout, openblas_get_corename());
#else
    printf(",\"blas\":\"none (portable fallback GEMM)\",\"blas_core\":\"\"");
#endif
    printf(",\"peak_rss_kb\":%ld%s}\n", peak_rss_kb(), extra ? extra : "");
    fflush(stdout);
}

/* The model configuration of a benchmark size: the paper's defaults (post-LN,
 * sinusoidal positions, all embeddings shared, dropout 0.1 on residuals and
 * embeddings, label smoothing 0.1) with the size's dimensions. */
static void size_config(tfm_config *cfg, const bench_size *z) {
    tfm_config_default(cfg);
    cfg->d_model = z->d_model;
    cfg->heads = z->heads;
    cfg->d_ff = z->d_ff;
    cfg->enc_layers = z->enc_layers;
    cfg->dec_layers = z->dec_layers;
    cfg->src_vocab = cfg->tgt_vocab = z->vocab;
}

/* Floating-point operations of one training step (forward + backward) of the
 * GEMMs and attention products; see bench/README.md. B rows, S source and T
 * target tokens per row (T = 0 for an encoder-only model, whose output
 * projection then runs on the source rows). Forward: 2 flop per weight per
 * token for every linear layer, 2*Lq*Lk*H*(dk+dv) per attention per row.
 * Backward: twice the forward (input and weight gradients; dP, dV, dQ, dK). */
static double step_flop(const tfm_config *c, int B, int S, int T) {
    double D = c->d_model, H = c->heads, F = c->d_ff, V = c->tgt_vocab;
    double dk = tfm_config_dk(c), dv = tfm_config_dv(c);
    double Le = c->enc_layers, Ld = c->dec_layers;
    double Ns = (double)B * S, Nt = (double)B * T;
    double qkv = H * (2 * dk + dv), hv = H * dv;
    double enc_w = D * qkv + hv * D + 2 * D * F;                    /* per source token per layer */
    double dec_w = D * qkv + hv * D + D * H * dk + hv * D + 2 * D * F; /* per target token per layer */
    double mem_w = D * H * (dk + dv);                              /* cross k, v per source token */
    double weights_tokens = Le * enc_w * Ns + Ld * (dec_w * Nt + mem_w * Ns) + D * V * (Ld > 0 ? Nt : Ns);
    double lqlk = Le * (double)S * S + Ld * ((double)T * T + (double)T * S);
    double attn_fwd = 2 * H * (dk + dv) * lqlk * B;
    return 6 * weights_tokens + 3 * attn_fwd;
}

/* A random encoder-decoder batch: src [B,S], tgt_in [B,T] = bos + seq,
 * targets [B,T] = seq shifted; no padding. Arrays are malloc'd into *b. */
static int make_batch(tfm_batch *b, int B, int S, int T, int V, int bos, uint64_t seed) {
    int32_t *src = malloc((size_t)B * S * sizeof *src);
    int32_t *tin = malloc((size_t)B * T * sizeof *tin);
    int32_t *tgt = malloc((size_t)B * T * sizeof *tgt);
    if (!src || !tin || !tgt) {
        free(src);
        free(tin);
        free(tgt);
        return 0;
    }
    uint64_t s = seed;
    for (long i = 0; i < (long)B * S; i++) src[i] = random_token(&s, V);
    for (int r = 0; r < B; r++) {
        tin[(size_t)r * T] = bos;
        for (int t = 0; t < T; t++) {
            tgt[(size_t)r * T + t] = random_token(&s, V);
            if (t + 1 < T) tin[(size_t)r * T + t + 1] = tgt[(size_t)r * T + t];
        }
    }
    *b = (tfm_batch){.B = B, .S = S, .T = T, .src = src, .tgt_in = tin, .targets = tgt};
    return 1;
}

static void free_batch(tfm_batch *b) {
    free((void *)b->src);
    free((void *)b->tgt_in);
    free((void *)b->targets);
}

static int fail(const char *what) {
    fprintf(stderr, "transformer bench: %s: %s\n", what, tfm_last_error());
    return 1;
}

/* Moves a new model to --device; on failure frees it and returns 1. */
static int to_device(tfm_model *m, const bench_opts *o) {
    const tfm_backend *be;
    if (tfm_backend_select(o->device, &be) == TFM_OK &&
        (!o->precision || tfm_backend_set_precision(be, o->precision) == TFM_OK) &&
        tfm_model_to_backend(m, be) == TFM_OK)
        return 0;
    tfm_model_free(m);
    return fail("device");
}

/* ------------------------------------------------------------------ train */

/* A trainer for up to B pairs of S + T tokens with the paper's recipe:
 * Adam 0.9/0.98/1e-9, the noam schedule for the model's d_model, no clipping. */
static tfm_status paper_trainer(tfm_trainer *tr, tfm_model *m, int B, int S, int T, uint64_t seed) {
    tfm_adam_params opt;
    tfm_adam_default_params(&opt);
    tfm_lr_schedule sched;
    tfm_lr_schedule_default(&sched);
    sched.d_model = m->cfg.d_model;
    return tfm_trainer_init(tr, m, &opt, &sched, B, S, T, seed);
}

/* Trainer steps on one batch: the model of the size with the paper's
 * recipe (Adam 0.9/0.98/1e-9, the noam schedule, no clipping). */
static int run_train(const bench_opts *o) {
    int B = o->batch, S = o->src_len, T = o->tgt_len;
    tfm_config cfg;
    size_config(&cfg, o->size);
    tfm_model m;
    if (tfm_model_init(&m, &cfg, o->seed) != TFM_OK) return fail("model");
    if (to_device(&m, o) != 0) return 1;
    tfm_trainer tr;
    if (paper_trainer(&tr, &m, B, S, T, o->seed) != TFM_OK) {
        tfm_model_free(&m);
        return fail("trainer");
    }
    tfm_batch b;
    if (!make_batch(&b, B, S, T, cfg.tgt_vocab, cfg.bos_id, o->seed)) {
        tfm_trainer_free(&tr);
        tfm_model_free(&m);
        fprintf(stderr, "transformer bench: out of memory\n");
        return 1;
    }
    double flop = step_flop(&cfg, B, S, T);
    double *ms = calloc((size_t)o->reps, sizeof *ms);
    int rc = ms ? 0 : 1;
    float loss = 0;
    for (int i = 0; !rc && i < o->warmup; i++)
        if (tfm_trainer_step(&tr, &b, &loss) != TFM_OK) rc = fail("training step");
    for (int r = 0; !rc && r < o->reps; r++) {
        double t0 = now_s();
        if (tfm_trainer_step(&tr, &b, &loss) != TFM_OK) {
            rc = fail("training step");
            break;
        }
        double s = now_s() - t0;
        ms[r] = 1e3 * s;
        json_head(o);
        printf(",\"config\":\"%s\",\"rep\":%d,\"B\":%d,\"S\":%d,\"T\":%d,\"params\":%zu,\"ms\":%.4f,"
               "\"tgt_tokens\":%d,\"src_tokens\":%d,\"tokens_per_s\":%.3f,\"flop\":%.6e,\"gflops\":%.4f,"
               "\"loss\":%.6f}\n",
               o->size->name, r, B, S, T, m.layout.n_params, ms[r], B * T, B * S, B * T / s, flop,
               flop / s * 1e-9, loss);
        fflush(stdout);
    }
    if (!rc) {
        char extra[128];
        snprintf(extra, sizeof extra, ",\"config\":\"%s\",\"flop\":%.6e", o->size->name, flop);
        print_summary(o, ms, o->reps, extra);
    }
    free(ms);
    free_batch(&b);
    tfm_trainer_free(&tr);
    tfm_model_free(&m);
    return rc;
}

/* ----------------------------------------------------------------- greedy */

/* One greedy decode of src [B, S]. Each step takes the most likely token
 * other than pad, bos and eos: masking eos keeps every sentence running to
 * out_len, so both sides decode the same number of tokens whatever the
 * (random) weights say. tfm_decoder_start (encoder, cross K/V), then out_len
 * tfm_decoder_step calls, each followed by the argmax of every row. */
static tfm_status greedy_once(tfm_decoder *d, const int32_t *src, int B, int S, int out_len, int32_t *tok,
                              int32_t *out) {
    const tfm_config *c = &d->m->cfg;
    tfm_status st = tfm_decoder_start(d, src, B, S);
    if (st != TFM_OK) return st;
    for (int r = 0; r < B; r++) tok[r] = c->bos_id;
    for (int t = 0; t < out_len; t++) {
        if ((st = tfm_decoder_step(d, tok)) != TFM_OK) return st;
        tfm_decoder_argmax(d, c->pad_id, c->bos_id, c->eos_id, tok);
        for (int r = 0; r < B; r++) out[(size_t)r * out_len + t] = tok[r];
    }
    return TFM_OK;
}

/* Beam search with eos forbidden, so that every hypothesis runs to out_len
 * tokens: the fixed work of a decoding benchmark. */
static tfm_status beam_once(tfm_decoder *d, const int32_t *src, int B, int S, int out_len, int beam) {
    tfm_beam_params p;
    tfm_beam_default_params(&p);
    p.beam = beam;
    p.max_len_override = out_len;
    p.stop = TFM_BEAM_STOP_NEVER;
    p.forbid_eos = 1;
    tfm_hypothesis *h = calloc((size_t)B, sizeof *h);
    if (!h) return tfm_error(TFM_ERR_NOMEM, "out of memory");
    tfm_status st = tfm_beam_search(d, src, B, S, &p, h);
    if (st == TFM_OK) tfm_hypotheses_free(h, B);
    free(h);
    return st;
}

static int run_greedy(const bench_opts *o) {
    int B = o->batch, S = o->src_len, T = o->tgt_len, beam = o->beam > 1 ? o->beam : 1;
    tfm_config cfg;
    size_config(&cfg, o->size);
    tfm_model m;
    if (tfm_model_init(&m, &cfg, o->seed) != TFM_OK) return fail("model");
    if (to_device(&m, o) != 0) return 1;
    tfm_decoder d;
    if (tfm_decoder_init(&d, &m, B * beam, S, T + 1) != TFM_OK) {
        tfm_model_free(&m);
        return fail("decoder");
    }
    int32_t *src = malloc((size_t)B * S * sizeof *src);
    int32_t *tok = malloc((size_t)B * sizeof *tok);
    int32_t *out = malloc((size_t)B * T * sizeof *out);
    double *ms = calloc((size_t)o->reps, sizeof *ms);
    int rc = src && tok && out && ms ? 0 : 1;
    if (rc) fprintf(stderr, "transformer bench: out of memory\n");
    uint64_t s = o->seed;
    for (long i = 0; !rc && i < (long)B * S; i++) src[i] = random_token(&s, cfg.src_vocab);
    for (int i = 0; !rc && i < o->warmup; i++)
        if ((beam > 1 ? beam_once(&d, src, B, S, T, beam) : greedy_once(&d, src, B, S, T, tok, out)) != TFM_OK)
            rc = fail("decoding");
    for (int r = 0; !rc && r < o->reps; r++) {
        double t0 = now_s();
        if ((beam > 1 ? beam_once(&d, src, B, S, T, beam) : greedy_once(&d, src, B, S, T, tok, out)) != TFM_OK) {
            rc = fail("decoding");
            break;
        }
        double sec = now_s() - t0;
        ms[r] = 1e3 * sec;
        json_head(o);
        printf(",\"config\":\"%s\",\"method\":\"kv-cache\",\"beam\":%d,\"rep\":%d,\"B\":%d,\"src_len\":%d,"
               "\"out_len\":%d,\"ms\":%.4f,\"sentences_per_s\":%.3f,\"tokens_per_s\":%.3f}\n",
               o->size->name, beam, r, B, S, T, ms[r], B / sec, (double)B * T / sec);
        fflush(stdout);
    }
    if (!rc) {
        char extra[96];
        snprintf(extra, sizeof extra, ",\"config\":\"%s\",\"method\":\"kv-cache\",\"B\":%d", o->size->name, B);
        print_summary(o, ms, o->reps, extra);
    }
    free(src);
    free(tok);
    free(out);
    free(ms);
    tfm_decoder_free(&d);
    tfm_model_free(&m);
    return rc;
}

/* ------------------------------------------------------------------ sgemm */

/* One GEMM shape of the training step and how many times a step runs it. */
typedef struct gemm_shape {
    char name[96];
    int ta, tb, M, N, K;
    float beta;
    int count;      /* calls per training step */
    int batch;      /* > 1: attention products, `batch` independent GEMMs in parallel (as attention.c) */
    int lda, ldb, ldc;
} gemm_shape;

#define MAX_SHAPES 64

static int add_shape(gemm_shape *v, int n, const char *name, int ta, int tb, int M, int N, int K, float beta,
                     int count, int batch) {
    if (count <= 0 || M <= 0 || N <= 0 || K <= 0) return n;
    for (int i = 0; i < n; i++) {
        gemm_shape *g = &v[i];
        if (g->ta == ta && g->tb == tb && g->M == M && g->N == N && g->K == K && g->beta == beta &&
            g->batch == batch) {
            g->count += count;
            size_t len = strlen(g->name);
            if (len + strlen(name) + 2 < sizeof g->name) snprintf(g->name + len, sizeof g->name - len, "+%s", name);
            return n;
        }
    }
    if (n >= MAX_SHAPES) return n;
    gemm_shape *g = &v[n];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    g->ta = ta, g->tb = tb, g->M = M, g->N = N, g->K = K, g->beta = beta, g->count = count, g->batch = batch;
    g->lda = ta ? M : K;
    g->ldb = tb ? K : N;
    g->ldc = N;
    return n + 1;
}

/* A linear layer out[rows, n_out] = in[rows, n_in] W^T as src/ops/linear.c
 * runs it: forward, input gradient, weight gradient (accumulated, beta 1). */
static int add_linear(gemm_shape *v, int n, const char *name, int rows, int n_in, int n_out, int count) {
    char buf[96];
    snprintf(buf, sizeof buf, "%s.fwd", name);
    n = add_shape(v, n, buf, 0, 1, rows, n_out, n_in, 0, count, 1);
    snprintf(buf, sizeof buf, "%s.dx", name);
    n = add_shape(v, n, buf, 0, 0, rows, n_in, n_out, 0, count, 1);
    snprintf(buf, sizeof buf, "%s.dw", name);
    return add_shape(v, n, buf, 1, 0, n_out, n_in, rows, 1, count, 1);
}

/* The six products of one attention (src/ops/attention.c) per (row, head). */
static int add_attention(gemm_shape *v, int n, const char *name, int Tq, int Tk, int dk, int dv, int count,
                         int pairs) {
    char buf[96];
    const char *part[6] = {"qk", "pv", "dv", "dp", "dq", "dk"};
    int spec[6][5] = {{0, 1, Tq, Tk, dk}, {0, 0, Tq, dv, Tk}, {1, 0, Tk, dv, Tq},
                      {0, 1, Tq, Tk, dv}, {0, 0, Tq, dk, Tk}, {1, 0, Tk, dk, Tq}};
    for (int i = 0; i < 6; i++) {
        snprintf(buf, sizeof buf, "%s.%s", name, part[i]);
        n = add_shape(v, n, buf, spec[i][0], spec[i][1], spec[i][2], spec[i][3], spec[i][4], 0, count, pairs);
    }
    return n;
}

/* Every GEMM of one training step of cfg on B x (S + T), as model.c runs them. */
static int step_shapes(gemm_shape *v, const tfm_config *c, int B, int S, int T) {
    int D = c->d_model, H = c->heads, F = c->d_ff, V = c->tgt_vocab;
    int dk = tfm_config_dk(c), dv = tfm_config_dv(c);
    int qkv = H * (2 * dk + dv), Le = c->enc_layers, Ld = c->dec_layers;
    int Ns = B * S, Nt = B * T, n = 0;
    n = add_linear(v, n, "enc.in_proj", Ns, D, qkv, Le);
    n = add_linear(v, n, "enc.out_proj", Ns, H * dv, D, Le);
    n = add_linear(v, n, "enc.linear1", Ns, D, F, Le);
    n = add_linear(v, n, "enc.linear2", Ns, F, D, Le);
    n = add_linear(v, n, "dec.in_proj", Nt, D, qkv, Ld);
    n = add_linear(v, n, "dec.out_proj", Nt, H * dv, D, Ld);
    n = add_linear(v, n, "dec.cross_q", Nt, D, H * dk, Ld);
    n = add_linear(v, n, "dec.cross_kv", Ns, D, H * (dk + dv), Ld);
    n = add_linear(v, n, "dec.cross_out", Nt, H * dv, D, Ld);
    n = add_linear(v, n, "dec.linear1", Nt, D, F, Ld);
    n = add_linear(v, n, "dec.linear2", Nt, F, D, Ld);
    n = add_linear(v, n, "generator", Ld > 0 ? Nt : Ns, D, V, 1);
    n = add_attention(v, n, "enc.attn", S, S, dk, dv, Le, B * H);
    n = add_attention(v, n, "dec.attn", T, T, dk, dv, Ld, B * H);
    n = add_attention(v, n, "dec.cross_attn", T, S, dk, dv, Ld, B * H);
    return n;
}

/* Runs one shape once: a plain GEMM, or `batch` small ones in parallel on
 * disjoint slices, each a single-threaded tfm_gemm inside the parallel loop
 * as in the attention op. */
static void gemm_call(const gemm_shape *g, const float *A, const float *Bm, float *C) {
    if (g->batch <= 1) {
        tfm_gemm(g->ta, g->tb, g->M, g->N, g->K, 1.0f, A, g->lda, Bm, g->ldb, g->beta, C, g->ldc);
        return;
    }
    size_t sa = (size_t)g->M * g->K, sb = (size_t)g->K * g->N, sc = (size_t)g->M * g->N;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < g->batch; i++)
        tfm_gemm(g->ta, g->tb, g->M, g->N, g->K, 1.0f, A + i * sa, g->lda, Bm + i * sb, g->ldb, g->beta,
                 C + i * sc, g->ldc);
}

/* Seconds per call of one shape: calls until min_time has passed (at least
 * 3). C is cleared afterwards when the shape accumulates (beta = 1), so that
 * the next run stays finite. */
static double time_shape(const gemm_shape *g, const float *A, const float *Bm, float *C, double min_time) {
    int iters = 0;
    double t0 = now_s(), el;
    do {
        gemm_call(g, A, Bm, C);
        iters++;
        el = now_s() - t0;
    } while (el < min_time || iters < 3);
    if (g->beta != 0) memset(C, 0, (size_t)g->batch * g->M * g->N * sizeof *C);
    return el / iters;
}

/* Every shape is timed with OpenBLAS's sgemm (tfm_gemm on its BLAS path:
 * "gflops", "ms", the harness's ceiling) and, on a CPU with AVX-512, right
 * after with the library's own kernel (tfm_gemm on its own path:
 * "own_gflops", "own_ms"), whatever TFM_GEMM says. "default_gflops" and
 * "default_ms" are the step's figures with each shape on the path tfm_gemm
 * takes by default in this process (TFM_GEMM; the summary's "gemm"), from
 * the same timings. */
static int run_sgemm(const bench_opts *o) {
    tfm_config cfg;
    size_config(&cfg, o->size);
    if (tfm_config_validate(&cfg) != TFM_OK) return fail("config");
    gemm_shape shapes[MAX_SHAPES];
    int n = step_shapes(shapes, &cfg, o->batch, o->src_len, o->tgt_len);
    size_t max_a = 0, max_b = 0, max_c = 0;
    for (int i = 0; i < n; i++) {
        size_t nb = (size_t)shapes[i].batch;
        size_t a = nb * shapes[i].M * shapes[i].K, b = nb * shapes[i].K * shapes[i].N,
               c = nb * shapes[i].M * shapes[i].N;
        if (a > max_a) max_a = a;
        if (b > max_b) max_b = b;
        if (c > max_c) max_c = c;
    }
    float *A = malloc(max_a * sizeof *A), *Bm = malloc(max_b * sizeof *Bm), *C = malloc(max_c * sizeof *C);
    double *ms = calloc((size_t)o->reps, sizeof *ms);
    if (!A || !Bm || !C || !ms) {
        free(A), free(Bm), free(C), free(ms);
        fprintf(stderr, "transformer bench: out of memory\n");
        return 1;
    }
    uint64_t s = o->seed;
    /* Values in [-1, 1): no denormals, no overflow; C is rescaled after each
     * accumulation run so that beta = 1 stays finite. */
    for (size_t i = 0; i < max_a; i++) A[i] = (float)((double)(next_u64(&s) >> 11) * 0x1p-52 - 1.0);
    for (size_t i = 0; i < max_b; i++) Bm[i] = (float)((double)(next_u64(&s) >> 11) * 0x1p-52 - 1.0);
    memset(C, 0, max_c * sizeof *C);
    int default_impl = tfm_gemm_impl_get(), own = tfm_sgemm_avx512_available();
    for (int w = 0; w < o->warmup; w++)
        for (int i = 0; i < n; i++)
            for (int impl = 0; impl <= own; impl++) {
                tfm_gemm_impl_set(impl ? TFM_GEMM_IMPL_OWN : TFM_GEMM_IMPL_BLAS);
                gemm_call(&shapes[i], A, Bm, C);
            }
    memset(C, 0, max_c * sizeof *C);
    for (int r = 0; r < o->reps; r++) {
        double total_flop = 0, total_s = 0, own_s = 0, auto_s = 0;
        json_head(o);
        printf(",\"config\":\"%s\",\"rep\":%d,\"shapes\":[", o->size->name, r);
        for (int i = 0; i < n; i++) {
            const gemm_shape *g = &shapes[i];
            double flop = 2.0 * g->M * g->N * g->K * g->batch;
            tfm_gemm_impl_set(TFM_GEMM_IMPL_BLAS);
            double per = time_shape(g, A, Bm, C, o->min_time);
            total_flop += flop * g->count;
            total_s += per * g->count;
            printf("%s{\"name\":", i ? "," : "");
            json_str(stdout, g->name);
            printf(",\"ta\":%d,\"tb\":%d,\"M\":%d,\"N\":%d,\"K\":%d,\"batch\":%d,\"count\":%d,\"ms\":%.5f,"
                   "\"gflops\":%.3f",
                   g->ta, g->tb, g->M, g->N, g->K, g->batch, g->count, 1e3 * per, flop / per * 1e-9);
            if (own) {
                tfm_gemm_impl_set(TFM_GEMM_IMPL_OWN);
                double per_own = time_shape(g, A, Bm, C, o->min_time);
                own_s += per_own * g->count;
                tfm_gemm_impl_set(default_impl);
                auto_s += (tfm_gemm_impl_for(g->M, g->N, g->K) == TFM_GEMM_IMPL_OWN ? per_own : per) * g->count;
                printf(",\"own_ms\":%.5f,\"own_gflops\":%.3f", 1e3 * per_own, flop / per_own * 1e-9);
            }
            printf("}");
        }
        ms[r] = 1e3 * total_s;
        printf("],\"flop\":%.6e,\"ms\":%.4f,\"gflops\":%.4f", total_flop, ms[r], total_flop / total_s * 1e-9);
        if (own)
            printf(",\"own_ms\":%.4f,\"own_gflops\":%.4f,\"default_ms\":%.4f,\"default_gflops\":%.4f", 1e3 * own_s,
                   total_flop / own_s * 1e-9, 1e3 * auto_s, total_flop / auto_s * 1e-9);
        printf("}\n");
        fflush(stdout);
    }
    tfm_gemm_impl_set(default_impl);
    char extra[96];
    snprintf(extra, sizeof extra, ",\"config\":\"%s\",\"gemm\":\"%s\"", o->size->name,
             default_impl == TFM_GEMM_IMPL_OWN ? "own" : default_impl == TFM_GEMM_IMPL_AUTO ? "auto" : "blas");
    print_summary(o, ms, o->reps, extra);
    free(A), free(Bm), free(C), free(ms);
    return 0;
}

/* ------------------------------------------------------------------- long */

/* Forward + backward (no optimizer update) of one sequence of o->len tokens
 * through an encoder-only model with the paper's dropout and smoothing. */
static int run_long(const bench_opts *o) {
    int L = o->len;
    tfm_config cfg;
    tfm_config_default(&cfg);
    cfg.enc_layers = o->layers;
    cfg.dec_layers = 0;
    cfg.d_model = o->d_model;
    cfg.heads = o->heads;
    cfg.d_ff = o->d_ff;
    cfg.src_vocab = cfg.tgt_vocab = o->vocab;
    cfg.share = TFM_SHARE_DECODER; /* encoder-only: the source embedding is the output projection */
    cfg.max_positions = L;
    long rss_start = peak_rss_kb();
    tfm_model m;
    if (tfm_model_init(&m, &cfg, o->seed) != TFM_OK) return fail("model");
    if (to_device(&m, o) != 0) return 1;
    tfm_trainer tr;
    if (paper_trainer(&tr, &m, 1, L, 0, o->seed) != TFM_OK) {
        tfm_model_free(&m);
        return fail("trainer");
    }
    long rss_model = peak_rss_kb();
    int32_t *src = malloc((size_t)L * sizeof *src), *tgt = malloc((size_t)L * sizeof *tgt);
    double *ms = calloc((size_t)o->reps, sizeof *ms);
    int rc = src && tgt && ms ? 0 : 1;
    if (rc) fprintf(stderr, "transformer bench: out of memory\n");
    uint64_t s = o->seed;
    for (int i = 0; !rc && i < L; i++) src[i] = random_token(&s, cfg.src_vocab), tgt[i] = random_token(&s, cfg.tgt_vocab);
    tfm_batch b = {.B = 1, .S = L, .T = 0, .src = src, .tgt_in = NULL, .targets = tgt};
    double flop = step_flop(&cfg, 1, L, 0);
    for (int i = 0; !rc && i < o->warmup; i++)
        if (tfm_trainer_accumulate(&tr, &b, 1.0f / L) != TFM_OK) rc = fail("forward/backward");
    for (int r = 0; !rc && r < o->reps; r++) {
        double t0 = now_s();
        if (tfm_trainer_accumulate(&tr, &b, 1.0f / L) != TFM_OK) {
            rc = fail("forward/backward");
            break;
        }
        double sec = now_s() - t0;
        ms[r] = 1e3 * sec;
        json_head(o);
        printf(",\"len\":%d,\"rep\":%d,\"layers\":%d,\"d_model\":%d,\"params\":%zu,\"attention\":\"%s\","
               "\"ms\":%.4f,\"tokens_per_s\":%.3f,\"flop\":%.6e,\"gflops\":%.4f,\"loss\":%.6f,\"peak_rss_kb\":%ld}\n",
               L, r, cfg.enc_layers, cfg.d_model, m.layout.n_params, tr.ws.attn_tiled ? "tiled" : "full", ms[r],
               L / sec, flop, flop / sec * 1e-9, tfm_trainer_pending_loss(&tr), peak_rss_kb());
        fflush(stdout);
    }
    if (!rc) {
        char extra[160];
        snprintf(extra, sizeof extra,
                 ",\"len\":%d,\"attention\":\"%s\",\"flop\":%.6e,\"rss_start_kb\":%ld,\"rss_after_init_kb\":%ld", L,
                 tr.ws.attn_tiled ? "tiled" : "full", flop, rss_start, rss_model);
        print_summary(o, ms, o->reps, extra);
    }
    free(src);
    free(tgt);
    free(ms);
    tfm_trainer_free(&tr);
    tfm_model_free(&m);
    return rc;
}

/* -------------------------------------------------------------- translate */

/* Every line of `path` without its '\n' (and '\r'), at most `limit` (0 = all). */
static char **read_lines(const char *path, int limit, size_t *n_out) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "transformer bench: %s: cannot open: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t n = 0, cap = 1024;
    char **lines = malloc(cap * sizeof *lines), *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while (lines && (limit <= 0 || n < (size_t)limit) && (len = getline(&line, &lcap, f)) >= 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (n == cap) {
            char **nl = realloc(lines, 2 * cap * sizeof *lines);
            if (!nl) break;
            lines = nl, cap *= 2;
        }
        lines[n++] = strdup(line);
    }
    free(line);
    fclose(f);
    *n_out = n;
    return lines;
}

static void free_lines(char **lines, size_t n) {
    for (size_t i = 0; lines && i < n; i++) free(lines[i]);
    free(lines);
}

/* BPE tokens of n texts (no bos/eos). */
static long count_tokens(const tfm_bpe *bpe, char *const *texts, size_t n) {
    long total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t *ids = NULL;
        size_t k = 0;
        if (texts[i] && tfm_bpe_encode(bpe, texts[i], strlen(texts[i]), &ids, &k) == TFM_OK) total += (long)k;
        free(ids);
    }
    return total;
}

static int run_translate(const bench_opts *o) {
    size_t n = 0;
    char **lines = read_lines(o->input, o->limit, &n);
    if (!lines) return 1;
    if (n == 0) {
        fprintf(stderr, "transformer bench: %s: no lines\n", o->input);
        free_lines(lines, n);
        return 1;
    }
    tfm_translator t;
    if (tfm_translator_load(&t, o->model_dir, o->checkpoint) != TFM_OK) {
        free_lines(lines, n);
        return fail("model");
    }
    tfm_translate_params p;
    tfm_translate_default_params(&p);
    p.beam.beam = o->beam > 0 ? o->beam : 4; /* translate's default: the paper's beam 4 */
    p.batch_sentences = o->batch_sentences;
    long src_tokens = count_tokens(t.bpe, lines, n), out_tokens = -1;
    char **res = calloc(n, sizeof *res);
    double *ms = calloc((size_t)o->reps, sizeof *ms);
    int rc = res && ms ? 0 : 1;
    if (rc) fprintf(stderr, "transformer bench: out of memory\n");
    /* Warm-up: the first batch of lines. */
    size_t nw = n < (size_t)p.batch_sentences ? n : (size_t)p.batch_sentences;
    for (int w = 0; !rc && w < o->warmup; w++) {
        if (tfm_translate_lines(&t, (const char *const *)lines, nw, &p, res, NULL, NULL) != TFM_OK) rc = fail("translate");
        for (size_t i = 0; i < nw; i++) free(res[i]), res[i] = NULL;
    }
    for (int r = 0; !rc && r < o->reps; r++) {
        double t0 = now_s();
        if (tfm_translate_lines(&t, (const char *const *)lines, n, &p, res, NULL, NULL) != TFM_OK) {
            rc = fail("translate");
            break;
        }
        double sec = now_s() - t0;
        ms[r] = 1e3 * sec;
        if (out_tokens < 0) out_tokens = count_tokens(t.bpe, res, n); /* outside the timing */
        for (size_t i = 0; i < n; i++) free(res[i]), res[i] = NULL;
        json_head(o);
        printf(",\"rep\":%d,\"beam\":%d,\"sentences\":%zu,\"src_tokens\":%ld,\"out_tokens\":%ld,\"ms\":%.4f,"
               "\"sentences_per_s\":%.3f,\"tokens_per_s\":%.3f,\"src_tokens_per_s\":%.3f}\n",
               r, p.beam.beam, n, src_tokens, out_tokens, ms[r], n / sec, out_tokens / sec, src_tokens / sec);
        fflush(stdout);
    }
    if (!rc) print_summary(o, ms, o->reps, NULL);
    free(ms);
    free(res);
    free_lines(lines, n);
    tfm_translator_free(&t);
    return rc;
}

/* ------------------------------------------------------------------- main */

static int bad_value(const char *flag, const char *v, const char *want) {
    fprintf(stderr, "transformer bench: %s: bad value '%s' (%s)\n", flag, v, want);
    return 2;
}

int cmd_bench(int argc, char **argv) {
    bench_opts o = {.size = &sizes[1], .reps = 5, .warmup = -1, .seed = 1, .len = 4096, .layers = 6,
                    .d_model = 512, .heads = 8, .d_ff = 2048, .vocab = 1000, .beam = 0,
                    .batch_sentences = 64, .min_time = 0.2};
    int out_len = 0;
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        if (!strcmp(argv[1], kinds[k].name)) o.kind = kinds[k].bit, o.kind_name = kinds[k].name;
    if (!o.kind) {
        fprintf(stderr, "transformer bench: unknown kind '%s' (train, greedy, sgemm, long or translate)\n", argv[1]);
        usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        int known = 0, allowed = 0;
        for (size_t k = 0; k < sizeof applies / sizeof applies[0]; k++)
            if (!strcmp(a, applies[k].flag)) known = 1, allowed = applies[k].kinds & o.kind;
        if (!known) {
            fprintf(stderr, "transformer bench: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!allowed) {
            fprintf(stderr, "transformer bench: %s does not apply to '%s'\n", a, o.kind_name);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "transformer bench: %s needs a value\n", a);
            return 2;
        }
        i++;
        const int big = 1 << 24;
        if (!strcmp(a, "--config")) {
            o.size = NULL;
            for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
                if (!strcmp(v, sizes[k].name)) o.size = &sizes[k];
            if (!o.size) {
                fprintf(stderr, "transformer bench: --config: unknown configuration '%s' (tiny, small or base)\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--batch")) { if (!tfm_cli_int(v, 1, big, &o.batch)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--src-len")) { if (!tfm_cli_int(v, 1, big, &o.src_len)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--tgt-len")) { if (!tfm_cli_int(v, 1, big, &o.tgt_len)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--out-len")) { if (!tfm_cli_int(v, 1, big, &out_len)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--reps")) { if (!tfm_cli_int(v, 1, 1000000, &o.reps)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--warmup")) { if (!tfm_cli_int(v, 0, 1000000, &o.warmup)) return bad_value(a, v, "an integer >= 0"); }
        else if (!strcmp(a, "--threads")) { if (!tfm_cli_int(v, 1, 4096, &o.threads)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--precision")) { if (strcmp(v, "fp32") && strcmp(v, "tf32") && strcmp(v, "bf16")) return bad_value(a, v, "fp32, tf32 or bf16"); o.precision = v; }
        else if (!strcmp(a, "--device")) { if (strcmp(v, "cpu") && strcmp(v, "cuda")) return bad_value(a, v, "cpu or cuda"); o.device = v; }
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o.seed = strtoull(v, &end, 10);
            if (errno || *end || !*v || *v == '-') return bad_value(a, v, "an integer >= 0");
        } else if (!strcmp(a, "--min-time")) {
            float t;
            if (!tfm_cli_float(v, &t) || t < 0 || t > 3600) return bad_value(a, v, "seconds in [0, 3600]");
            o.min_time = t;
        }
        else if (!strcmp(a, "--len")) { if (!tfm_cli_int(v, 1, 1 << 20, &o.len)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--layers")) { if (!tfm_cli_int(v, 1, 1024, &o.layers)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--d-model")) { if (!tfm_cli_int(v, 1, 65536, &o.d_model)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--heads")) { if (!tfm_cli_int(v, 1, 4096, &o.heads)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--d-ff")) { if (!tfm_cli_int(v, 1, 1 << 20, &o.d_ff)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--vocab")) { if (!tfm_cli_int(v, 4, big, &o.vocab)) return bad_value(a, v, "an integer >= 4"); }
        else if (!strcmp(a, "--model")) o.model_dir = v;
        else if (!strcmp(a, "--checkpoint")) o.checkpoint = v;
        else if (!strcmp(a, "--input")) o.input = v;
        else if (!strcmp(a, "--limit")) { if (!tfm_cli_int(v, 0, 1 << 30, &o.limit)) return bad_value(a, v, "an integer >= 0"); }
        else if (!strcmp(a, "--beam")) { if (!tfm_cli_int(v, 1, 1024, &o.beam)) return bad_value(a, v, "a positive integer"); }
        else if (!strcmp(a, "--batch-sentences")) { if (!tfm_cli_int(v, 1, 1 << 16, &o.batch_sentences)) return bad_value(a, v, "a positive integer"); }
    }
    if (!o.batch) o.batch = o.size->batch;
    if (!o.src_len) o.src_len = o.size->src_len;
    if (!o.tgt_len) o.tgt_len = o.size->tgt_len;
    if (o.kind == K_GREEDY) o.tgt_len = out_len ? out_len : o.size->tgt_len;
    if (o.warmup < 0) o.warmup = o.kind == K_TRAIN ? 2 : 1;
    if (o.kind == K_TRANSLATE && (!o.model_dir || !o.input)) {
        fprintf(stderr, "transformer bench: translate needs --model DIR and --input FILE\n");
        return 2;
    }
    if (o.kind == K_LONG && o.d_model % o.heads) {
        fprintf(stderr, "transformer bench: --d-model %d is not divisible by --heads %d\n", o.d_model, o.heads);
        return 2;
    }
    tfm_cli_set_threads(o.threads);
    switch (o.kind) {
    case K_TRAIN: return run_train(&o);
    case K_GREEDY: return run_greedy(&o);
    case K_SGEMM: return run_sgemm(&o);
    case K_LONG: return run_long(&o);
    default: return run_translate(&o);
    }
}
