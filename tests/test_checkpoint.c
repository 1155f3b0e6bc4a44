/* test_checkpoint.c: weights checkpoints round-trip bit-exactly for several
 * configs and the loaded model computes the same logits; the train state
 * gives a bit-exact resume; a checkpoint directory keeps the last K and
 * cleans stale temporary files; averaging is exact; `transformer average`
 * works (when the CLI has it); and, when /usr/bin/python3 has torch, our file
 * loads into torch.nn.Transformer modules by name with strict=True and the
 * torch model computes our logits. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/rng.h"
#include "core/status.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/safetensors.h"

static char dir[64];

/* DIR/name in a buffer that is never reused, so paths can be kept. */
static const char *tmp_path(const char *name) {
    static char buf[512][160];
    static int k = 0;
    TFM_ASSERT(k < 512);
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k++];
}

static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(s, 1, strlen(s), f) != strlen(s) || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A small config of each family. */
static tfm_config small_config(int kind) {
    tfm_config c;
    tfm_config_default(&c);
    c.d_model = 16;
    c.heads = 4;
    c.d_ff = 24;
    c.max_positions = 32;
    c.src_vocab = c.tgt_vocab = 23;
    c.pad_id = 0;
    c.bos_id = 1;
    c.eos_id = 2;
    c.dropout = c.attn_dropout = c.embed_dropout = c.act_dropout = 0.0f;
    switch (kind) {
    case 0: /* encoder-decoder, all three embeddings shared, post-LN, sinusoidal */
        c.enc_layers = 2;
        c.dec_layers = 2;
        c.share = TFM_SHARE_ALL;
        break;
    case 1: /* decoder-only, learned positions, pre-LN, nothing shared */
        c.enc_layers = 0;
        c.dec_layers = 2;
        c.positions = TFM_POS_LEARNED;
        c.norm = TFM_NORM_PRE;
        c.share = TFM_SHARE_NONE;
        c.tgt_vocab = 19;
        break;
    case 2: /* encoder-only, output tied to the source embedding, rope, gelu */
        c.enc_layers = 2;
        c.dec_layers = 0;
        c.positions = TFM_POS_ROPE;
        c.activation = TFM_ACT_GELU;
        c.share = TFM_SHARE_DECODER;
        break;
    default: /* encoder-decoder, pre-LN, odd head sizes, separate vocabularies */
        c.enc_layers = 1;
        c.dec_layers = 2;
        c.norm = TFM_NORM_PRE;
        c.d_k = 3;
        c.d_v = 5;
        c.share = TFM_SHARE_DECODER;
        c.src_vocab = 29;
        break;
    }
    return c;
}

/* A deterministic batch for model m (index k picks the tokens). */
typedef struct test_batch {
    int32_t src[2 * 6], tgt_in[2 * 5], targets[2 * 6];
    tfm_batch b;
} test_batch;

static void make_batch(test_batch *tb, const tfm_config *c, uint64_t k) {
    int B = 2, S = 6, T = 5;
    int has_enc = c->enc_layers > 0, has_dec = c->dec_layers > 0;
    for (int i = 0; i < B * S; i++)
        tb->src[i] = 3 + (int32_t)(tfm_rng_u64(k, 1, (uint64_t)i) % (uint64_t)(c->src_vocab - 3));
    for (int i = 0; i < B * T; i++)
        tb->tgt_in[i] = 3 + (int32_t)(tfm_rng_u64(k, 2, (uint64_t)i) % (uint64_t)(c->tgt_vocab - 3));
    int L = has_dec ? T : S;
    for (int i = 0; i < B * L; i++)
        tb->targets[i] = 3 + (int32_t)(tfm_rng_u64(k, 3, (uint64_t)i) % (uint64_t)(c->tgt_vocab - 3));
    if (has_dec) tb->tgt_in[0] = tb->tgt_in[T] = c->bos_id;
    /* some padding in the second row */
    if (has_enc) tb->src[2 * S - 1] = c->pad_id;
    tb->targets[2 * L - 1] = c->pad_id;
    if (has_dec) tb->tgt_in[2 * T - 1] = c->pad_id;
    tb->b = (tfm_batch){.B = B, .S = has_enc ? S : 0, .T = has_dec ? T : 0,
                        .src = has_enc ? tb->src : NULL, .tgt_in = has_dec ? tb->tgt_in : NULL,
                        .targets = tb->targets};
}

/* Logits of a forward without dropout; malloc'd, *n set. */
static float *logits_of(const tfm_model *m, const tfm_batch *b, size_t *n) {
    tfm_workspace ws;
    if (tfm_workspace_init(&ws, m, b->B, b->S, b->T) != TFM_OK) return NULL;
    float *out = NULL;
    if (tfm_model_forward(m, &ws, b, 0, 0) == TFM_OK) {
        int L = m->cfg.dec_layers > 0 ? b->T : b->S;
        *n = (size_t)b->B * L * m->cfg.tgt_vocab;
        out = malloc(*n * sizeof *out);
        if (out) memcpy(out, ws.logits, *n * sizeof *out);
    }
    tfm_workspace_free(&ws);
    return out;
}

/* ------------------------------------------------------------ round trips */

static void test_round_trip(int kind) {
    tfm_config c = small_config(kind);
    tfm_model m, back;
    CHECK(tfm_model_init(&m, &c, 100 + kind) == TFM_OK, "init: %s", tfm_last_error());
    char name[64];
    snprintf(name, sizeof name, "rt%d.safetensors", kind);
    const char *path = tmp_path(name);
    CHECK(tfm_checkpoint_save(&m, 1234 + kind, path) == TFM_OK, "save: %s", tfm_last_error());
    long step = -1;
    CHECK(tfm_checkpoint_load(&back, path, &step) == TFM_OK, "load: %s", tfm_last_error());
    if (!back.params) {
        tfm_model_free(&m);
        return;
    }
    CHECK(step == 1234 + kind, "step %ld", step);
    char diff[256];
    CHECK(!tfm_checkpoint_config_diff(&m.cfg, &back.cfg, diff, sizeof diff), "config: %s", diff);
    CHECK(back.layout.n_params == m.layout.n_params, "n_params");
    CHECK(memcmp(back.params, m.params, m.layout.n_params * sizeof(float)) == 0,
          "kind %d: parameters differ after the round trip", kind);

    /* the loaded model computes the same logits, exactly */
    test_batch tb;
    make_batch(&tb, &c, 7);
    size_t n1 = 0, n2 = 0;
    float *l1 = logits_of(&m, &tb.b, &n1), *l2 = logits_of(&back, &tb.b, &n2);
    CHECK(l1 && l2 && n1 == n2 && memcmp(l1, l2, n1 * sizeof(float)) == 0,
          "kind %d: logits differ (%s)", kind, tfm_last_error());
    free(l1);
    free(l2);

    /* load_into an existing model of the same config */
    tfm_model other;
    CHECK(tfm_model_init(&other, &c, 999) == TFM_OK, "init");
    CHECK(memcmp(other.params, m.params, m.layout.n_params * sizeof(float)) != 0, "seeds differ");
    CHECK(tfm_checkpoint_load_into(&other, path) == TFM_OK, "load_into: %s", tfm_last_error());
    CHECK(memcmp(other.params, m.params, m.layout.n_params * sizeof(float)) == 0, "load_into");
    tfm_model_free(&other);

    /* the file: only canonical tensors, F32, the metadata */
    tfm_safetensors st;
    CHECK(tfm_st_open(&st, path) == TFM_OK, "open: %s", tfm_last_error());
    int canonical = 0;
    for (int i = 0; i < m.layout.n_tensors; i++) canonical += m.layout.tensors[i].tied_to < 0;
    CHECK(st.n_tensors == canonical, "kind %d: %d tensors, %d canonical", kind, st.n_tensors,
          canonical);
    CHECK(!strcmp(tfm_st_meta(&st, "format"), "transformer.c"), "format");
    CHECK(!strcmp(tfm_st_meta(&st, "format_version"), "1"), "format_version");
    const char *tied = tfm_st_meta(&st, "tied");
    CHECK(tied != NULL, "tied metadata");
    if (tied && kind == 0)
        CHECK(!strcmp(tied, "tgt_embed.weight=src_embed.weight,generator.weight=src_embed.weight"),
              "tied: %s", tied);
    if (tied && kind == 1) CHECK(!strcmp(tied, ""), "tied: %s", tied);
    if (tied && kind == 2) CHECK(!strcmp(tied, "generator.weight=src_embed.weight"), "tied: %s", tied);
    tfm_st_close(&st);
    printf("round trip kind %d: %zu params, %d tensors OK\n", kind, m.layout.n_params, canonical);

    /* load_into a model with another config names the field */
    tfm_config c2 = c;
    c2.d_ff = 32;
    CHECK(tfm_model_init(&other, &c2, 1) == TFM_OK, "init");
    CHECK(tfm_checkpoint_load_into(&other, path) == TFM_ERR_INVALID &&
              strstr(tfm_last_error(), "d_ff: 24 vs 32") && strstr(tfm_last_error(), path),
          "load_into another config: %s", tfm_last_error());
    tfm_model_free(&other);
    tfm_model_free(&back);
    tfm_model_free(&m);
}

/* d_k = 0 and d_k = d_model/heads are the same model. */
static void test_config_diff(void) {
    tfm_config a = small_config(0), b = a;
    b.d_k = b.d_model / b.heads;
    char diff[128];
    CHECK(!tfm_checkpoint_config_diff(&a, &b, diff, sizeof diff), "resolved d_k: %s", diff);
    b.label_smoothing = 0.2f;
    CHECK(tfm_checkpoint_config_diff(&a, &b, diff, sizeof diff) &&
              !strcmp(diff, "label_smoothing: 0.1 vs 0.2"),
          "diff: %s", diff);
}

/* ----------------------------------------------------------- exact resume */

static tfm_status train_steps(tfm_trainer *tr, long from, long to) {
    for (long k = from; k < to; k++) {
        test_batch tb;
        make_batch(&tb, &tr->m->cfg, 1000 + (uint64_t)k);
        float loss;
        TFM_TRY(tfm_trainer_step(tr, &tb.b, &loss));
    }
    return TFM_OK;
}

static void test_resume(void) {
    tfm_config c = small_config(0);
    c.dropout = c.attn_dropout = c.act_dropout = 0.1f; /* the seed matters */
    tfm_adam_params opt;
    tfm_adam_default_params(&opt);
    opt.clip_norm = 1.0f;
    tfm_lr_schedule sched;
    tfm_lr_schedule_default(&sched);
    sched.d_model = c.d_model;
    sched.warmup = 3;
    const long total = 7, cut = 3;

    /* run A: straight through */
    tfm_model ma;
    tfm_trainer ta;
    CHECK(tfm_model_init(&ma, &c, 5) == TFM_OK, "init");
    CHECK(tfm_trainer_init(&ta, &ma, &opt, &sched, 2, 6, 5, 77) == TFM_OK, "trainer: %s",
          tfm_last_error());
    CHECK(train_steps(&ta, 0, total) == TFM_OK, "train A: %s", tfm_last_error());

    /* run B: cut, save into a directory, forget everything, resume */
    const char *rdir = tmp_path("resume");
    tfm_model mb;
    tfm_trainer tb;
    CHECK(tfm_model_init(&mb, &c, 5) == TFM_OK, "init");
    CHECK(tfm_trainer_init(&tb, &mb, &opt, &sched, 2, 6, 5, 77) == TFM_OK, "trainer");
    CHECK(train_steps(&tb, 0, cut) == TFM_OK, "train B: %s", tfm_last_error());
    char batch[32];
    snprintf(batch, sizeof batch, "%ld", cut);
    const char *keys[] = {"epoch", "batch", "shuffle_seed"};
    const char *values[] = {"0", batch, "12345678901234567890"};
    CHECK(tfm_checkpoint_dir_save(&mb, &tb, tb.step, 0, rdir, keys, values, 3) == TFM_OK,
          "dir save: %s", tfm_last_error());
    tfm_trainer_free(&tb);
    tfm_model_free(&mb);

    tfm_model mc;
    long wstep = -1;
    CHECK(tfm_checkpoint_load(&mc, tmp_path("resume/model.safetensors"), &wstep) == TFM_OK,
          "load: %s", tfm_last_error());
    if (!mc.params) return;
    CHECK(wstep == cut, "weights step %ld", wstep);
    tfm_trainer tc;
    CHECK(tfm_trainer_init(&tc, &mc, &opt, &sched, 2, 6, 5, 4242 /* restored from the file */) ==
              TFM_OK,
          "trainer");
    tfm_train_state_info info;
    CHECK(tfm_train_state_load(&tc, tmp_path("resume/train_state.safetensors"), &info) == TFM_OK,
          "state load: %s", tfm_last_error());
    CHECK(tc.step == cut && info.step == cut && tc.seed == 77 && info.seed == 77,
          "step %ld seed %llu", tc.step, (unsigned long long)tc.seed);
    CHECK(info.settings_diff[0] == '\0', "settings diff: %s", info.settings_diff);
    CHECK(info.n == 3, "n %d", info.n);
    const char *bv = tfm_train_state_get(&info, "batch");
    const char *sv = tfm_train_state_get(&info, "shuffle_seed");
    CHECK(bv && !strcmp(bv, batch), "batch %s", bv ? bv : "(null)");
    CHECK(sv && !strcmp(sv, "12345678901234567890"), "shuffle_seed");
    CHECK(tfm_train_state_get(&info, "nope") == NULL, "absent key");
    CHECK(info.opt.beta2 == opt.beta2 && info.opt.eps == opt.eps && info.opt.clip_norm == 1.0f &&
              info.sched.kind == sched.kind && info.sched.warmup == 3 &&
              info.sched.d_model == c.d_model,
          "settings read back");
    long resume_at = bv ? atol(bv) : 0;
    tfm_train_state_info_free(&info);
    CHECK(train_steps(&tc, resume_at, total) == TFM_OK, "train C: %s", tfm_last_error());
    size_t np = ma.layout.n_params;
    CHECK(tc.step == ta.step, "steps %ld vs %ld", tc.step, ta.step);
    CHECK(memcmp(mc.params, ma.params, np * sizeof(float)) == 0,
          "resumed parameters differ from the uninterrupted run");
    CHECK(memcmp(tc.adam_m, ta.adam_m, np * sizeof(float)) == 0, "adam.m differs");
    CHECK(memcmp(tc.adam_v, ta.adam_v, np * sizeof(float)) == 0, "adam.v differs");
    printf("resume: %ld + %ld steps equal %ld straight steps bit for bit\n", cut, total - cut, total);

    /* changed settings are reported, not applied */
    tfm_lr_schedule s2 = sched;
    s2.warmup = 8;
    tfm_trainer td;
    CHECK(tfm_trainer_init(&td, &mc, &opt, &s2, 2, 6, 5, 1) == TFM_OK, "trainer");
    CHECK(tfm_train_state_load(&td, tmp_path("resume/train_state.safetensors"), &info) == TFM_OK,
          "state load: %s", tfm_last_error());
    CHECK(!strcmp(info.settings_diff, "schedule.warmup: 3 in the file, 8 now"), "diff: %s",
          info.settings_diff);
    CHECK(td.sched.warmup == 8, "settings kept");
    tfm_train_state_info_free(&info);
    /* NULL info is fine */
    CHECK(tfm_train_state_load(&td, tmp_path("resume/train_state.safetensors"), NULL) == TFM_OK,
          "state load without info: %s", tfm_last_error());

    /* saving between micro-batches is refused */
    test_batch b;
    make_batch(&b, &c, 1);
    CHECK(tfm_trainer_accumulate(&td, &b.b, 0.1f) == TFM_OK, "accumulate");
    CHECK(tfm_train_state_save(&td, NULL, NULL, 0, tmp_path("micro.safetensors")) ==
                  TFM_ERR_INVALID &&
              strstr(tfm_last_error(), "micro-batches"),
          "mid-accumulation save: %s", tfm_last_error());
    const char *dup[] = {"a", "a"};
    tfm_trainer_update(&td);
    CHECK(tfm_train_state_save(&td, dup, dup, 2, tmp_path("dup.safetensors")) == TFM_ERR_INVALID,
          "duplicate keys");
    tfm_trainer_free(&td);
    tfm_trainer_free(&tc);
    tfm_model_free(&mc);
    tfm_trainer_free(&ta);
    tfm_model_free(&ma);
}

/* ------------------------------------------------------------- directory */

static pid_t dead_pid(void) {
    pid_t p = fork();
    if (p == 0) _exit(0);
    waitpid(p, NULL, 0);
    return p;
}

static void test_keep_last(void) {
    tfm_config c = small_config(1);
    tfm_model m;
    CHECK(tfm_model_init(&m, &c, 3) == TFM_OK, "init");
    tfm_adam_params opt;
    tfm_adam_default_params(&opt);
    tfm_lr_schedule sched;
    tfm_lr_schedule_default(&sched);
    sched.d_model = c.d_model;
    tfm_trainer tr;
    CHECK(tfm_trainer_init(&tr, &m, &opt, &sched, 2, 0, 5, 1) == TFM_OK, "trainer: %s",
          tfm_last_error());
    const char *d = tmp_path("keep");
    /* stale temporaries: one of a dead writer (removed), one of pid 1 (alive: kept) */
    mkdir(d, 0777);
    char stale[512], alive[512], other[512];
    snprintf(stale, sizeof stale, "%s/checkpoint_5.safetensors.tmp.%ld.0", d, (long)dead_pid());
    snprintf(alive, sizeof alive, "%s/model.safetensors.tmp.1.3", d);
    snprintf(other, sizeof other, "%s/notes.txt.tmp.%ld.0", d, (long)dead_pid());
    write_text(stale, "x");
    write_text(alive, "x");
    write_text(other, "x");
    for (long s = 10; s <= 60; s += 10) {
        m.params[0] = (float)s; /* tell the checkpoints apart */
        tr.step = s;
        CHECK(tfm_checkpoint_dir_save(&m, &tr, s, 3, d, NULL, NULL, 0) == TFM_OK, "dir save %ld: %s",
              s, tfm_last_error());
    }
    CHECK(!file_exists(stale), "stale temporary file of a dead writer not removed");
    CHECK(file_exists(alive), "temporary file of a live process removed");
    CHECK(file_exists(other), "a file that is not a checkpoint temporary was removed");
    unlink(alive);
    unlink(other);
    tfm_checkpoint_list l;
    CHECK(tfm_checkpoint_dir_list(d, &l) == TFM_OK, "list: %s", tfm_last_error());
    CHECK(l.n == 3 && l.steps[0] == 40 && l.steps[1] == 50 && l.steps[2] == 60, "kept %d: %ld..",
          l.n, l.n ? l.steps[0] : -1L);
    for (long s = 10; s <= 60; s += 10) {
        char p[512];
        snprintf(p, sizeof p, "%s/checkpoint_%ld.state.safetensors", d, s);
        CHECK(file_exists(p) == (s >= 40), "state file of step %ld", s);
    }
    if (l.n == 3) CHECK(strstr(l.paths[2], "/checkpoint_60.safetensors") != NULL, "%s", l.paths[2]);
    tfm_checkpoint_list_free(&l);
    tfm_config rc;
    long step = -1;
    CHECK(tfm_checkpoint_read_config(tmp_path("keep/model.safetensors"), &rc, &step) == TFM_OK &&
              step == 60,
          "model.safetensors step %ld", step);
    struct stat a, b;
    CHECK(stat(tmp_path("keep/model.safetensors"), &a) == 0 &&
              stat(tmp_path("keep/checkpoint_60.safetensors"), &b) == 0 && a.st_ino == b.st_ino,
          "model.safetensors is a hard link to the latest");
    tfm_model back;
    CHECK(tfm_checkpoint_load(&back, tmp_path("keep/model.safetensors"), NULL) == TFM_OK &&
              back.params[0] == 60.0f,
          "latest weights: %s", tfm_last_error());
    tfm_model_free(&back);

    /* an older step saved later is kept: the one just written always counts
     * as one of the K */
    CHECK(tfm_checkpoint_dir_save(&m, NULL, 15, 2, d, NULL, NULL, 0) == TFM_OK, "dir save: %s",
          tfm_last_error());
    CHECK(tfm_checkpoint_dir_list(d, &l) == TFM_OK && l.n == 2 && l.steps[0] == 15 &&
              l.steps[1] == 60,
          "keep 2 after an older step: %d", l.n);
    tfm_checkpoint_list_free(&l);

    /* keep_last 0 keeps all; files that only look like checkpoints are ignored */
    const char *d2 = tmp_path("keepall");
    for (long s = 1; s <= 4; s++)
        CHECK(tfm_checkpoint_dir_save(&m, NULL, s * 100, 0, d2, NULL, NULL, 0) == TFM_OK,
              "dir save: %s", tfm_last_error());
    write_text(tmp_path("keepall/checkpoint_x.safetensors"), "x");
    write_text(tmp_path("keepall/checkpoint_7.safetensors.tmp.1.0"), "x");
    write_text(tmp_path("keepall/checkpoint_-3.safetensors"), "x");
    CHECK(tfm_checkpoint_dir_list(d2, &l) == TFM_OK && l.n == 4 && l.steps[0] == 100 &&
              l.steps[3] == 400,
          "keep all: %d", l.n);
    CHECK(!file_exists(tmp_path("keepall/train_state.safetensors")), "no state without a trainer");
    tfm_checkpoint_list_free(&l);
    CHECK(tfm_checkpoint_dir_list(tmp_path("nonexistent"), &l) == TFM_ERR_IO &&
              strstr(tfm_last_error(), "nonexistent"),
          "list of a missing dir: %s", tfm_last_error());
    tfm_checkpoint_list_free(&l);
    tfm_trainer_free(&tr);
    tfm_model_free(&m);
}

/* --------------------------------------------------------------- average */

static void test_average(void) {
    tfm_config c = small_config(3);
    tfm_model a, b;
    CHECK(tfm_model_init(&a, &c, 11) == TFM_OK && tfm_model_init(&b, &c, 12) == TFM_OK, "init");
    size_t np = a.layout.n_params;
    /* values whose mean in float would round differently from the mean in double */
    for (size_t j = 0; j < np; j++) {
        a.params[j] = a.params[j] * 3.0f + 1.0f;
        b.params[j] = b.params[j] * 7.0f - 0.5f;
    }
    const char *pa = tmp_path("avg_a.safetensors"), *pb = tmp_path("avg_b.safetensors");
    CHECK(tfm_checkpoint_save(&a, 100, pa) == TFM_OK && tfm_checkpoint_save(&b, 200, pb) == TFM_OK,
          "save");

    const char *same[] = {pa, pa, pa};
    const char *out = tmp_path("avg_out.safetensors");
    CHECK(tfm_checkpoint_average(same, 3, out) == TFM_OK, "average: %s", tfm_last_error());
    tfm_model r;
    long step = -1;
    CHECK(tfm_checkpoint_load(&r, out, &step) == TFM_OK, "load: %s", tfm_last_error());
    if (r.params) {
        CHECK(memcmp(r.params, a.params, np * sizeof(float)) == 0,
              "the average of identical checkpoints is not the checkpoint");
        CHECK(step == 100, "step %ld", step);
        tfm_model_free(&r);
    }

    const char *two[] = {pa, pb};
    CHECK(tfm_checkpoint_average(two, 2, out) == TFM_OK, "average: %s", tfm_last_error());
    CHECK(tfm_checkpoint_load(&r, out, &step) == TFM_OK, "load: %s", tfm_last_error());
    if (r.params) {
        size_t bad = 0;
        for (size_t j = 0; j < np; j++)
            bad += r.params[j] != (float)(((double)a.params[j] + (double)b.params[j]) / 2.0);
        CHECK(bad == 0, "%zu of %zu elements are not the correctly rounded mean", bad, np);
        CHECK(step == 200, "step of the last: %ld", step);
        tfm_model_free(&r);
    }
    tfm_safetensors st;
    CHECK(tfm_st_open(&st, out) == TFM_OK && tfm_st_meta(&st, "averaged_from") &&
              !strcmp(tfm_st_meta(&st, "averaged_from"), "100,200"),
          "averaged_from");
    tfm_st_close(&st);

    /* the output may be one of the inputs */
    const char *pc = tmp_path("avg_c.safetensors");
    CHECK(tfm_checkpoint_save(&a, 300, pc) == TFM_OK, "save");
    const char *inplace[] = {pb, pc};
    CHECK(tfm_checkpoint_average(inplace, 2, pc) == TFM_OK, "in place: %s", tfm_last_error());

    /* a different config is an error naming the field and the file */
    tfm_config c2 = c;
    c2.dropout = 0.3f;
    tfm_model d;
    CHECK(tfm_model_init(&d, &c2, 11) == TFM_OK, "init");
    const char *pd = tmp_path("avg_d.safetensors");
    CHECK(tfm_checkpoint_save(&d, 300, pd) == TFM_OK, "save");
    const char *mixed[] = {pa, pd};
    CHECK(tfm_checkpoint_average(mixed, 2, tmp_path("avg_bad.safetensors")) == TFM_ERR_INVALID &&
              strstr(tfm_last_error(), "dropout: 0.3 vs 0") && strstr(tfm_last_error(), pd),
          "config mismatch: %s", tfm_last_error());
    CHECK(!file_exists(tmp_path("avg_bad.safetensors")), "nothing written on error");
    CHECK(tfm_checkpoint_average(mixed, 0, out) == TFM_ERR_INVALID, "n = 0");
    printf("average: OK (%zu params)\n", np);
    tfm_model_free(&d);
    tfm_model_free(&a);
    tfm_model_free(&b);
}

/* ------------------------------------------------------------------- CLI */

static void test_cli(void) {
    const char *cli = tfm_test_env("TFM_CLI", "./transformer");
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof cmd, "'%s' average --help 2>&1", cli);
    if (access(cli, X_OK) != 0 || tfm_test_run(cmd, out, sizeof out) != 0) {
        printf("skipping the CLI checks: %s has no `average` subcommand yet\n", cli);
        return;
    }
    CHECK(strstr(out, "--last N") && strstr(out, "default: 5"), "help:\n%s", out);
    tfm_config c = small_config(0);
    tfm_model m;
    CHECK(tfm_model_init(&m, &c, 1) == TFM_OK, "init");
    const char *d = tmp_path("cli");
    for (long s = 1; s <= 6; s++) {
        for (size_t j = 0; j < m.layout.n_params; j++) m.params[j] = (float)s;
        CHECK(tfm_checkpoint_dir_save(&m, NULL, s * 10, 0, d, NULL, NULL, 0) == TFM_OK, "save");
    }
    const char *o = tmp_path("cli_avg.safetensors");
    snprintf(cmd, sizeof cmd, "'%s' average --model-dir '%s' --last 4 -o '%s' 2>&1", cli, d, o);
    int rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "average --model-dir (rc %d):\n%s", rc, out);
    tfm_model r;
    long step = -1;
    if (rc == 0 && tfm_checkpoint_load(&r, o, &step) == TFM_OK) {
        CHECK(r.params[0] == 4.5f && r.params[r.layout.n_params - 1] == 4.5f && step == 60,
              "mean of 3..6 = %g, step %ld", r.params[0], step);
        tfm_model_free(&r);
    }
    snprintf(cmd, sizeof cmd, "'%s' average -o '%s' '%s/checkpoint_10.safetensors' '%s/checkpoint_20.safetensors' 2>&1",
             cli, o, d, d);
    rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "average FILES (rc %d):\n%s", rc, out);
    if (rc == 0 && tfm_checkpoint_load(&r, o, &step) == TFM_OK) {
        CHECK(r.params[0] == 1.5f && step == 20, "mean of 1, 2 = %g", r.params[0]);
        tfm_model_free(&r);
    }
    snprintf(cmd, sizeof cmd, "'%s' average --model-dir '%s' --last 9 -o '%s' 2>&1", cli, d, o);
    rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "holds 6 checkpoints"), "too few (rc %d):\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' average --model-dir '%s' 2>&1", cli, d);
    rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "-o OUT is required"), "no -o (rc %d):\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' average --frobnicate -o x 2>&1", cli);
    rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "unknown option"), "bad flag (rc %d):\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' average --last 0 --model-dir '%s' -o x 2>&1", cli, d);
    rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 2, "--last 0 (rc %d):\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' average -o '%s' '%s' 2>&1", cli, o, tmp_path("missing.safetensors"));
    rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "missing.safetensors"), "missing file (rc %d):\n%s", rc, out);
    printf("cli: OK\n");
    tfm_model_free(&m);
}

/* ---------------------------------------------------------------- python */

/* Parses our file by hand, loads it into torch.nn.TransformerEncoderLayer /
 * DecoderLayer (post-LN config) and torch.nn.Transformer (pre-LN config) with
 * strict=True, and recomputes the post-LN model's logits with torch. */
static const char *py_check =
    "import sys, struct, json, math\n"
    "import numpy as np, torch\n"
    "def load(path):\n"
    "    raw = open(path, 'rb').read()\n"
    "    n = struct.unpack('<Q', raw[:8])[0]\n"
    "    hdr = json.loads(raw[8:8 + n]); buf = raw[8 + n:]\n"
    "    meta = hdr.pop('__metadata__', {})\n"
    "    dt = {'F32': np.float32, 'I32': np.int32}\n"
    "    out = {}\n"
    "    for k, e in hdr.items():\n"
    "        b, en = e['data_offsets']\n"
    "        out[k] = torch.from_numpy(np.frombuffer(buf[b:en], dtype=dt[e['dtype']]).reshape(e['shape']).copy())\n"
    "    return out, meta\n"
    "sd, meta = load(sys.argv[1])\n"
    "io, _ = load(sys.argv[2])\n"
    "assert meta['format'] == 'transformer.c' and meta['format_version'] == '1', meta\n"
    "cfg = json.loads(meta['config'])\n"
    "D, H, F = cfg['d_model'], cfg['heads'], cfg['d_ff']\n"
    "assert cfg['norm'] == 'post' and cfg['share'] == 'none', cfg\n"
    "enc, dec = [], []\n"
    "for i in range(cfg['enc_layers']):\n"
    "    l = torch.nn.TransformerEncoderLayer(D, H, F, dropout=0.0, batch_first=True)\n"
    "    p = 'encoder.layers.%d.' % i\n"
    "    l.load_state_dict({k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, strict=True)\n"
    "    enc.append(l.eval())\n"
    "for i in range(cfg['dec_layers']):\n"
    "    l = torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.0, batch_first=True)\n"
    "    p = 'decoder.layers.%d.' % i\n"
    "    l.load_state_dict({k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, strict=True)\n"
    "    dec.append(l.eval())\n"
    "P = cfg['max_positions']\n"
    "pe = torch.zeros(P, D, dtype=torch.float64)\n"
    "pos = torch.arange(P, dtype=torch.float64)[:, None]\n"
    "i2 = torch.arange(0, D, 2, dtype=torch.float64)\n"
    "ang = pos / torch.pow(10000.0, i2 / D)\n"
    "pe[:, 0::2] = torch.sin(ang); pe[:, 1::2] = torch.cos(ang)\n"
    "pe = pe.float()\n"
    "src, tgt = io['src'].long(), io['tgt'].long()\n"
    "scale = math.sqrt(D) if cfg['embed_scale'] else 1.0\n"
    "with torch.no_grad():\n"
    "    x = sd['src_embed.weight'][src] * scale + pe[:src.shape[1]]\n"
    "    for l in enc: x = l(x)\n"
    "    y = sd['tgt_embed.weight'][tgt] * scale + pe[:tgt.shape[1]]\n"
    "    T = tgt.shape[1]\n"
    "    mask = torch.triu(torch.full((T, T), float('-inf')), diagonal=1)\n"
    "    for l in dec: y = l(y, x, tgt_mask=mask)\n"
    "    logits = y @ sd['generator.weight'].t()\n"
    "ours = io['logits'].reshape(logits.shape)\n"
    "err = ((logits - ours).abs().max() / logits.abs().max()).item()\n"
    "print('python: torch layers loaded with strict=True; logits rel err %.2e' % err)\n"
    "assert err < 1e-5, err\n"
    "sd2, meta2 = load(sys.argv[3])\n"
    "cfg2 = json.loads(meta2['config'])\n"
    "assert cfg2['norm'] == 'pre'\n"
    "t = torch.nn.Transformer(cfg2['d_model'], cfg2['heads'], cfg2['enc_layers'], cfg2['dec_layers'],\n"
    "                         cfg2['d_ff'], dropout=0.0, batch_first=True, norm_first=True)\n"
    "ours_only = ('src_embed.', 'tgt_embed.', 'src_pos.', 'tgt_pos.', 'generator.')\n"
    "t.load_state_dict({k: v for k, v in sd2.items() if not k.startswith(ours_only)}, strict=True)\n"
    "print('python: pre-LN checkpoint loaded into torch.nn.Transformer(norm_first=True), strict=True')\n";

static void test_python(void) {
    const char *py = tfm_test_env("TFM_REF_PYTHON", "/usr/bin/python3");
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof cmd, "'%s' -c 'import numpy, torch' 2>&1", py);
    if (access(py, X_OK) != 0 || tfm_test_run(cmd, out, sizeof out) != 0) {
        printf("skipping the PyTorch check: %s cannot import numpy and torch\n", py);
        return;
    }
    /* post-LN encoder-decoder, d_k = d_v = d_model / heads, nothing tied */
    tfm_config c = small_config(0);
    c.share = TFM_SHARE_NONE;
    c.tgt_vocab = 17;
    tfm_model m;
    CHECK(tfm_model_init(&m, &c, 21) == TFM_OK, "init");
    /* non-zero biases and LayerNorm parameters, so that a swapped name shows */
    for (int i = 0; i < m.layout.n_tensors; i++) {
        const tfm_tensor_info *t = &m.layout.tensors[i];
        if (t->ndim == 1)
            for (size_t j = 0; j < t->numel; j++)
                m.params[t->offset + j] += 0.1f * (float)((int)((j * 7 + (size_t)i) % 11) - 5);
    }
    const char *ckpt = tmp_path("torch.safetensors"), *io = tmp_path("torch_io.safetensors");
    CHECK(tfm_checkpoint_save(&m, 5, ckpt) == TFM_OK, "save");
    int32_t src[2 * 7], tgt[2 * 6];
    for (int i = 0; i < 14; i++) src[i] = 3 + (i * 5) % 20;
    for (int i = 0; i < 12; i++) tgt[i] = 3 + (i * 3) % 14;
    tfm_batch b = {.B = 2, .S = 7, .T = 6, .src = src, .tgt_in = tgt};
    size_t n = 0;
    float *logits = logits_of(&m, &b, &n);
    CHECK(logits != NULL, "forward: %s", tfm_last_error());
    tfm_st_writer *w;
    int64_t ss[2] = {2, 7}, ts[2] = {2, 6}, ls[1] = {(int64_t)n};
    tfm_st_writer_init(&w);
    tfm_st_writer_add(w, "src", TFM_DT_I32, 2, ss, src);
    tfm_st_writer_add(w, "tgt", TFM_DT_I32, 2, ts, tgt);
    tfm_st_writer_add(w, "logits", TFM_DT_F32, 1, ls, logits);
    CHECK(tfm_st_writer_save(w, io) == TFM_OK, "io save");
    tfm_st_writer_free(w);
    free(logits);

    /* pre-LN encoder-decoder for the whole nn.Transformer */
    tfm_config c2 = small_config(0);
    c2.norm = TFM_NORM_PRE;
    tfm_model m2;
    CHECK(tfm_model_init(&m2, &c2, 22) == TFM_OK, "init");
    const char *ckpt2 = tmp_path("torch_pre.safetensors");
    CHECK(tfm_checkpoint_save(&m2, 6, ckpt2) == TFM_OK, "save");

    const char *script = tmp_path("check.py");
    write_text(script, py_check);
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' '%s' '%s' 2>&1", py, script, ckpt, io, ckpt2);
    int rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "python (rc %d):\n%s", rc, out);
    printf("%s", out);
    tfm_model_free(&m);
    tfm_model_free(&m2);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tfm_ckpt_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    for (int kind = 0; kind < 4; kind++) test_round_trip(kind);
    test_config_diff();
    test_resume();
    test_keep_last();
    test_average();
    test_cli();
    test_python();
    if (!tfm_test_failed) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    } else {
        printf("files kept in %s\n", dir);
    }
    return tfm_test_finish();
}
