/*
 * train_run.c: the training loop of `transformer train` over a model
 * directory: tokenizer, corpora, model, trainer, validation (loss,
 * perplexity, greedy BLEU), curves, checkpoints and exact resume.
 */
#include "train/train_run.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/status.h"
#include "infer/decode.h"
#include "text/bleu.h"
#include "text/bpe.h"
#include "train/checkpoint.h"
#include "train/curves.h"
#include "train/trainer.h"

void tfm_train_opts_default(tfm_train_opts *o) {
    memset(o, 0, sizeof *o);
    tfm_config_default(&o->cfg);
    o->vocab_size = 8000;
    tfm_corpus_default_params(&o->corpus);
    o->corpus.batch_tokens = 4096;
    o->corpus.max_len = 128;
    o->accum = 1;
    tfm_adam_default_params(&o->opt);
    tfm_lr_schedule_default(&o->sched);
    o->sched.kind = TFM_LR_NOAM;
    o->sched.factor = 1.0f;
    o->sched.warmup = 4000;
    o->valid_every = 1000;
    o->log_every = 100;
    o->keep_last = 5;
    o->bleu_sentences = 0;
    o->seed = 1;
    o->log = stderr;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void hms(double s, char *buf, size_t cap) {
    long t = (long)(s + 0.5);
    snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

/* ------------------------------------------------------------- validation */

tfm_status tfm_corpus_bleu(const tfm_model *m, const tfm_bpe *bpe, const tfm_corpus *c, long n, double *bleu) {
    const tfm_config *cfg = &m->cfg;
    long total = tfm_corpus_size(c);
    if (n <= 0 || n > total) n = total;
    enum { ROWS = 64 };
    int max_S = 1;
    for (long i = 0; i < n; i++) {
        int len;
        tfm_corpus_src(c, i, &len);
        if (len > max_S) max_S = len;
    }
    if (max_S > cfg->max_positions) max_S = cfg->max_positions;
    int max_T = max_S + 50 < cfg->max_positions ? max_S + 50 : cfg->max_positions;
    tfm_decoder dec;
    TFM_TRY(tfm_decoder_init(&dec, m, ROWS, max_S, max_T));
    char **hyps = calloc((size_t)n, sizeof *hyps);
    const char **refs = calloc((size_t)n, sizeof *refs);
    int32_t *src = malloc((size_t)ROWS * max_S * sizeof *src), *out = malloc((size_t)ROWS * max_T * sizeof *out);
    int *lens = malloc(ROWS * sizeof *lens);
    tfm_status st = hyps && refs && src && out && lens ? TFM_OK : tfm_error(TFM_ERR_NOMEM, "bleu: out of memory");
    for (long first = 0; st == TFM_OK && first < n; first += ROWS) {
        int B = n - first < ROWS ? (int)(n - first) : ROWS, S = 1;
        for (int b = 0; b < B; b++) {
            int len;
            tfm_corpus_src(c, first + b, &len);
            if (len > S) S = len;
        }
        if (S > max_S) S = max_S;
        for (int b = 0; b < B; b++) {
            int len;
            const int32_t *ids = tfm_corpus_src(c, first + b, &len);
            for (int t = 0; t < S; t++) src[b * S + t] = t < len ? ids[t] : cfg->pad_id;
        }
        int T = S + 50 < max_T ? S + 50 : max_T;
        st = tfm_greedy_translate(&dec, src, B, S, T, out, lens);
        for (int b = 0; st == TFM_OK && b < B; b++) {
            st = tfm_bpe_decode(bpe, out + (size_t)b * T, (size_t)lens[b], &hyps[first + b], NULL);
            refs[first + b] = tfm_corpus_tgt_text(c, first + b, NULL);
        }
    }
    if (st == TFM_OK) {
        tfm_bleu_params bp;
        tfm_bleu_default_params(&bp);
        tfm_bleu_result res;
        const char *const *streams[1] = {refs};
        st = tfm_bleu_corpus((const char *const *)hyps, streams, 1, (size_t)n, &bp, &res);
        if (st == TFM_OK) *bleu = res.score;
    }
    for (long i = 0; hyps && i < n; i++) free(hyps[i]);
    free(hyps);
    free(refs);
    free(src);
    free(out);
    free(lens);
    tfm_decoder_free(&dec);
    return st;
}

static tfm_status valid_loss(tfm_trainer *tr, const tfm_corpus *c, tfm_corpus_batch_buf *buf, double *loss) {
    double sum = 0;
    long tokens = 0;
    for (long i = 0; i < tfm_corpus_n_batches(c); i++) {
        tfm_corpus_batch(c, -1, i, buf);
        double s;
        long n;
        TFM_TRY(tfm_trainer_eval(tr, &buf->batch, &s, &n));
        sum += s;
        tokens += n;
    }
    *loss = tokens ? sum / tokens : 0;
    return TFM_OK;
}

/* ---------------------------------------------------------------- the run */

typedef struct run_state {
    const tfm_train_opts *o;
    tfm_bpe *bpe;
    tfm_corpus *train, *valid;
    tfm_corpus_batch_buf train_buf, valid_buf;
    tfm_model model;
    int have_model;
    tfm_trainer tr;
    int have_trainer;
    tfm_corpus_pos pos;
} run_state;

static void path_in(char *buf, size_t cap, const char *dir, const char *name) { snprintf(buf, cap, "%s/%s", dir, name); }

static tfm_status setup_tokenizer(run_state *rs) {
    const tfm_train_opts *o = rs->o;
    char path[4096];
    path_in(path, sizeof path, o->model_dir, "bpe.model");
    if (access(path, F_OK) == 0) {
        TFM_TRY(tfm_bpe_load(path, &rs->bpe));
        fprintf(o->log, "tokenizer: %s (%d pieces)\n", path, tfm_bpe_vocab_size(rs->bpe));
        return TFM_OK;
    }
    tfm_bpe_params bp;
    tfm_bpe_default_params(&bp);
    bp.vocab_size = o->vocab_size;
    const char *files[2] = {o->train_text ? o->train_text : o->train_src, o->train_tgt};
    double t0 = now_seconds();
    TFM_TRY(tfm_bpe_learn(&bp, files, o->train_text ? 1 : 2, &rs->bpe));
    TFM_TRY(tfm_bpe_save(rs->bpe, path));
    fprintf(o->log, "tokenizer: learned %d pieces in %.1f s -> %s\n", tfm_bpe_vocab_size(rs->bpe),
            now_seconds() - t0, path);
    return TFM_OK;
}

static tfm_status load_corpora(run_state *rs) {
    const tfm_train_opts *o = rs->o;
    tfm_corpus_params cp = o->corpus;
    cp.seed = o->seed;
    /* A pair must fit the positions: target ids + bos/eos <= max_positions. */
    if (cp.max_len > o->cfg.max_positions - 1) cp.max_len = o->cfg.max_positions - 1;
    cp.pad_id = o->cfg.pad_id;
    cp.bos_id = o->cfg.bos_id;
    cp.eos_id = o->cfg.eos_id;
    tfm_corpus_stats st;
    double t0 = now_seconds();
    if (o->train_text) TFM_TRY(tfm_corpus_load_lm(&cp, rs->bpe, o->train_text, &rs->train, &st));
    else TFM_TRY(tfm_corpus_load(&cp, rs->bpe, o->train_src, o->train_tgt, &rs->train, &st));
    fprintf(o->log,
            "train: %ld read, %ld kept, %ld skipped empty, %ld skipped longer than %d; %ld source + %ld target "
            "tokens; %ld batches of <= %ld tokens (%.1f s)\n",
            st.read, st.kept, st.skipped_empty, st.skipped_long, cp.max_len, st.src_tokens, st.tgt_tokens,
            st.batches, cp.batch_tokens, now_seconds() - t0);
    const char *vs = o->valid_text ? o->valid_text : o->valid_src;
    if (vs) {
        /* Validation keeps every pair the model can hold. */
        cp.max_len = o->cfg.max_positions - 1;
        if (o->valid_text) TFM_TRY(tfm_corpus_load_lm(&cp, rs->bpe, o->valid_text, &rs->valid, &st));
        else TFM_TRY(tfm_corpus_load(&cp, rs->bpe, o->valid_src, o->valid_tgt, &rs->valid, &st));
        fprintf(o->log, "valid: %ld read, %ld kept, %ld target tokens\n", st.read, st.kept, st.tgt_tokens);
    }
    TFM_TRY(tfm_corpus_batch_buf_init(&rs->train_buf, rs->train));
    if (rs->valid) TFM_TRY(tfm_corpus_batch_buf_init(&rs->valid_buf, rs->valid));
    return TFM_OK;
}

static tfm_status setup_model(run_state *rs, long *start_step) {
    const tfm_train_opts *o = rs->o;
    char cfg_path[4096], model_path[4096], state_path[4096];
    path_in(cfg_path, sizeof cfg_path, o->model_dir, "config.json");
    path_in(model_path, sizeof model_path, o->model_dir, "model.safetensors");
    path_in(state_path, sizeof state_path, o->model_dir, "train_state.safetensors");
    *start_step = 0;
    if (o->resume) {
        long step = 0;
        TFM_TRY(tfm_checkpoint_load(&rs->model, model_path, &step));
        rs->have_model = 1;
        *start_step = step;
    } else {
        tfm_config cfg = o->cfg;
        cfg.src_vocab = cfg.tgt_vocab = tfm_bpe_vocab_size(rs->bpe);
        TFM_TRY(tfm_config_validate(&cfg));
        TFM_TRY(tfm_config_save(&cfg, cfg_path));
        TFM_TRY(tfm_model_init(&rs->model, &cfg, o->seed));
        rs->have_model = 1;
    }
    const tfm_backend *be;
    TFM_TRY(tfm_backend_select(o->device, &be));
    if (o->precision) TFM_TRY(tfm_backend_set_precision(be, o->precision));
    TFM_TRY(tfm_model_to_backend(&rs->model, be));
    tfm_corpus_shape a = tfm_corpus_max_shape(rs->train);
    if (rs->valid) {
        tfm_corpus_shape b = tfm_corpus_max_shape(rs->valid);
        if (b.max_B > a.max_B) a.max_B = b.max_B;
        if (b.max_S > a.max_S) a.max_S = b.max_S;
        if (b.max_T > a.max_T) a.max_T = b.max_T;
        if (b.max_src_cells > a.max_src_cells) a.max_src_cells = b.max_src_cells;
        if (b.max_tgt_cells > a.max_tgt_cells) a.max_tgt_cells = b.max_tgt_cells;
    }
    tfm_lr_schedule sched = o->sched;
    sched.d_model = rs->model.cfg.d_model;
    if (sched.total_steps == 0) sched.total_steps = o->max_steps > 0 ? o->max_steps : 100000;
    TFM_TRY(tfm_trainer_init_cells(&rs->tr, &rs->model, &o->opt, &sched, a.max_B, a.max_S, a.max_T,
                                   a.max_src_cells, a.max_tgt_cells, o->seed));
    rs->have_trainer = 1;
    if (o->resume) {
        tfm_train_state_info info;
        memset(&info, 0, sizeof info);
        tfm_status st = tfm_train_state_load(&rs->tr, state_path, &info);
        const char *e = st == TFM_OK ? tfm_train_state_get(&info, "epoch") : NULL;
        const char *i = st == TFM_OK ? tfm_train_state_get(&info, "index") : NULL;
        if (st == TFM_OK && (!e || !i))
            st = tfm_error(TFM_ERR_FORMAT, "%s: no data position (epoch, index)", state_path);
        if (st == TFM_OK && rs->tr.step > *start_step) {
            /* A save publishes train_state.safetensors before model.safetensors
             * (checkpoint.c), both linked from checkpoint_STEP files written
             * whole beforehand: a kill between the two renames leaves the state
             * one save ahead. Its weights are in checkpoint_STEP.safetensors. */
            char ckpt[4200];
            long ckpt_step = -1;
            snprintf(ckpt, sizeof ckpt, "%s/checkpoint_%ld.safetensors", o->model_dir, rs->tr.step);
            tfm_config ccfg;
            if (tfm_checkpoint_read_config(ckpt, &ccfg, &ckpt_step) == TFM_OK && ckpt_step == rs->tr.step &&
                tfm_checkpoint_load_into(&rs->model, ckpt) == TFM_OK) {
                fprintf(o->log, "resume: %s is at step %ld, %s at step %ld (a save was interrupted): weights "
                        "from %s\n", model_path, *start_step, state_path, rs->tr.step, ckpt);
                *start_step = rs->tr.step;
            }
        }
        if (st == TFM_OK && rs->tr.step != *start_step)
            st = tfm_error(TFM_ERR_FORMAT, "%s is at step %ld but %s at step %ld", state_path, rs->tr.step,
                           model_path, *start_step);
        if (st == TFM_OK) {
            rs->pos.epoch = atol(e);
            rs->pos.index = atol(i);
            if (info.settings_diff[0]) fprintf(o->log, "resume: settings changed: %s\n", info.settings_diff);
        }
        tfm_train_state_info_free(&info);
        TFM_TRY(st);
        TFM_TRY(tfm_curves_truncate(o->model_dir, *start_step));
        fprintf(o->log, "resume: step %ld, epoch %ld, batch %ld\n", *start_step, rs->pos.epoch, rs->pos.index);
    }
    const tfm_config *c = &rs->model.cfg;
    fprintf(o->log, "model: %d+%d layers, d_model %d, %d heads, d_ff %d, vocabulary %d, %zu parameters\n",
            c->enc_layers, c->dec_layers, c->d_model, c->heads, c->d_ff, c->tgt_vocab, rs->model.layout.n_params);
    return TFM_OK;
}

static tfm_status checkpoint(run_state *rs) {
    char epoch[32], index[32], seed[32];
    snprintf(epoch, sizeof epoch, "%ld", rs->pos.epoch);
    snprintf(index, sizeof index, "%ld", rs->pos.index);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)rs->o->seed);
    const char *keys[3] = {"epoch", "index", "shuffle_seed"}, *vals[3] = {epoch, index, seed};
    return tfm_checkpoint_dir_save(&rs->model, &rs->tr, rs->tr.step, rs->o->keep_last, rs->o->model_dir, keys,
                                   vals, 3);
}

static tfm_status validate(run_state *rs, double elapsed) {
    const tfm_train_opts *o = rs->o;
    double loss = NAN, bleu = NAN;
    if (rs->valid) {
        TFM_TRY(valid_loss(&rs->tr, rs->valid, &rs->valid_buf, &loss));
        if (!tfm_corpus_is_lm(rs->valid) && o->bleu_sentences >= 0)
            TFM_TRY(tfm_corpus_bleu(&rs->model, rs->bpe, rs->valid, o->bleu_sentences, &bleu));
        if (o->progress) fprintf(o->log, "\n");
        fprintf(o->log, "valid step %ld: loss %.4f, perplexity %.2f", rs->tr.step, loss, exp(loss));
        if (!isnan(bleu)) fprintf(o->log, ", BLEU %.2f (greedy)", bleu);
        fprintf(o->log, "\n");
        TFM_TRY(tfm_curves_append_valid(o->model_dir, rs->tr.step, rs->pos.epoch, loss, bleu, elapsed));
    }
    TFM_TRY(tfm_curves_plot(o->model_dir));
    return checkpoint(rs);
}

static void free_run(run_state *rs) {
    if (rs->have_trainer) tfm_trainer_free(&rs->tr);
    if (rs->have_model) tfm_model_free(&rs->model);
    if (rs->train_buf.mem) tfm_corpus_batch_buf_free(&rs->train_buf);
    if (rs->valid_buf.mem) tfm_corpus_batch_buf_free(&rs->valid_buf);
    tfm_corpus_free(rs->train);
    tfm_corpus_free(rs->valid);
    if (rs->bpe) tfm_bpe_free(rs->bpe);
}

static tfm_status train_loop(run_state *rs, long start_step) {
    const tfm_train_opts *o = rs->o;
    tfm_trainer *tr = &rs->tr;
    double t0 = now_seconds(), last_log = t0;
    long tokens_since = 0, steps_done = 0;
    int accum = o->accum > 0 ? o->accum : 1;
    while (!stop_requested) {
        if (o->max_steps > 0 && tr->step >= o->max_steps) break;
        if (o->max_epochs > 0 && rs->pos.epoch >= o->max_epochs) break;
        if (o->max_seconds > 0 && now_seconds() - t0 >= o->max_seconds) break;
        /* The loss is the mean over every target token of the update. */
        long tokens = 0;
        tfm_corpus_pos p = rs->pos;
        for (int k = 0; k < accum; k++) {
            tfm_corpus_batch(rs->train, p.epoch, p.index, &rs->train_buf);
            tokens += rs->train_buf.n_tgt_tokens;
            p = tfm_corpus_next(rs->train, p);
        }
        for (int k = 0; k < accum; k++) {
            tfm_corpus_batch(rs->train, rs->pos.epoch, rs->pos.index, &rs->train_buf);
            TFM_TRY(tfm_trainer_accumulate(tr, &rs->train_buf.batch, 1.0f / (float)tokens));
            rs->pos = tfm_corpus_next(rs->train, rs->pos);
        }
        float loss = tfm_trainer_update(tr);
        if (!isfinite(loss))
            return tfm_error(TFM_ERR_INVALID, "train: the loss is %f at step %ld (lower the learning rate?)", loss,
                             tr->step);
        steps_done++;
        tokens_since += tokens;
        double now = now_seconds(), elapsed = now - t0;
        double tps = tokens_since / fmax(now - last_log, 1e-9);
        TFM_TRY(tfm_curves_append_train(o->model_dir, tr->step, rs->pos.epoch, loss, tr->last_lr, tr->last_grad_norm,
                                        tps, elapsed));
        int log_now = o->progress ? (now - last_log > 0.5) : (tr->step % o->log_every == 0 || tr->step == 1);
        if (log_now) {
            double eta = -1;
            if (o->max_steps > 0) eta = elapsed / steps_done * (o->max_steps - tr->step);
            if (o->max_seconds > 0 && (eta < 0 || o->max_seconds - elapsed < eta)) eta = o->max_seconds - elapsed;
            char el[32], et[32] = "?";
            hms(elapsed, el, sizeof el);
            if (eta >= 0) hms(eta, et, sizeof et);
            fprintf(o->log, "%sstep %ld | epoch %ld | loss %.4f | ppl %.2f | lr %.3g | %.0f tok/s | %s | ETA %s%s",
                    o->progress ? "\r" : "", tr->step, rs->pos.epoch + 1, loss, exp(loss), tr->last_lr, tps, el, et,
                    o->progress ? "   " : "\n");
            fflush(o->log);
            last_log = now;
            tokens_since = 0;
        }
        if (tr->step % o->valid_every == 0) TFM_TRY(validate(rs, elapsed));
    }
    if (o->progress) fprintf(o->log, "\n");
    if (tr->step > start_step && tr->step % o->valid_every != 0) TFM_TRY(validate(rs, now_seconds() - t0));
    fprintf(o->log, "stopped at step %ld (epoch %ld)%s after %.1f s\n", tr->step, rs->pos.epoch + 1,
            stop_requested ? " on a signal" : "", now_seconds() - t0);
    return TFM_OK;
}

tfm_status tfm_train_run(const tfm_train_opts *o) {
    if (!o->model_dir) return tfm_error(TFM_ERR_INVALID, "train: --model-dir is required");
    if (!o->train_text && (!o->train_src || !o->train_tgt))
        return tfm_error(TFM_ERR_INVALID, "train: --train-src and --train-tgt (or --train-text) are required");
    if ((o->valid_src != NULL) != (o->valid_tgt != NULL))
        return tfm_error(TFM_ERR_INVALID, "train: --valid-src and --valid-tgt go together");
    if (o->valid_every <= 0 || o->log_every <= 0)
        return tfm_error(TFM_ERR_INVALID, "train: --valid-every and --log-every must be positive");
    if (mkdir(o->model_dir, 0777) != 0 && errno != EEXIST)
        return tfm_error(TFM_ERR_IO, "%s: cannot create the model directory: %s", o->model_dir, strerror(errno));
    run_state rs;
    memset(&rs, 0, sizeof rs);
    rs.o = o;
    stop_requested = 0;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    long start_step = 0;
    tfm_status st = setup_tokenizer(&rs);
    if (st == TFM_OK) st = load_corpora(&rs);
    if (st == TFM_OK) st = setup_model(&rs, &start_step);
    if (st == TFM_OK) st = train_loop(&rs, start_step);
    free_run(&rs);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return st;
}
