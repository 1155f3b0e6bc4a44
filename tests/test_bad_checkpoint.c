/* test_bad_checkpoint.c: every broken checkpoint or train-state file gives a
 * clear error naming the file and the tensor or field, never a crash, and
 * never a half-loaded model: truncation at many cut points, byte flips, a
 * missing / mis-shaped / wrongly typed / unexpected / tied-alias tensor, bad
 * metadata (format, version, step, config that is not JSON or not a valid
 * config), NaN/Inf weights, and train states for another model or with broken
 * moments. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)len + 1);
    *n = fread(p, 1, (size_t)len, f);
    fclose(f);
    return p;
}

/* s failed, and the message names the file and contains `needle`. */
static void expect_error(tfm_status s, const char *path, const char *needle, const char *what) {
    const char *msg = tfm_last_error();
    int ok = s != TFM_OK && strstr(msg, path) && (!needle || strstr(msg, needle));
    CHECK(ok, "%s: status %s, message \"%s\" (wanted the path and \"%s\")", what,
          tfm_status_name(s), msg, needle ? needle : "");
    if (ok) printf("  %-28s %s\n", what, msg);
}

static tfm_config small_config(void) {
    tfm_config c;
    tfm_config_default(&c);
    c.enc_layers = 1;
    c.dec_layers = 2;
    c.d_model = 16;
    c.heads = 4;
    c.d_ff = 24;
    c.max_positions = 32;
    c.src_vocab = c.tgt_vocab = 23;
    c.share = TFM_SHARE_ALL;
    return c;
}

/* ------------------------------------------------- hand-made weights files */

typedef struct custom {
    const char *skip;           /* leave this tensor out */
    const char *transpose;      /* store this 2-D tensor with its shape swapped */
    const char *as_f64;         /* store this tensor as F64 */
    const char *extra;          /* add a tensor with this name ([3] floats) */
    const char *nan_in;         /* put NaN (or Inf with inf = 1) into this tensor */
    int inf;
    const char *meta_key;       /* override (or, with meta_value NULL, drop) one metadata entry */
    const char *meta_value;
} custom;

static void write_custom(const tfm_model *m, const char *path, const custom *o) {
    tfm_st_writer *w;
    TFM_ASSERT(tfm_st_writer_init(&w) == TFM_OK);
    const tfm_layout *L = &m->layout;
    float *copy = malloc(L->n_params * sizeof *copy);
    memcpy(copy, m->params, L->n_params * sizeof *copy);
    double *f64 = NULL;
    static const float three[3] = {1, 2, 3};
    for (int i = 0; i < L->n_tensors; i++) {
        const tfm_tensor_info *t = &L->tensors[i];
        int is_alias_extra = o->extra && !strcmp(o->extra, t->name);
        if (t->tied_to >= 0 && !is_alias_extra) continue;
        if (o->skip && !strcmp(o->skip, t->name)) continue;
        int64_t shape[2] = {t->shape[0], t->shape[1]};
        if (o->transpose && !strcmp(o->transpose, t->name)) {
            shape[0] = t->shape[1];
            shape[1] = t->shape[0];
        }
        float *p = copy + t->offset;
        if (o->nan_in && !strcmp(o->nan_in, t->name)) p[t->numel / 2] = o->inf ? -INFINITY : NAN;
        if (o->as_f64 && !strcmp(o->as_f64, t->name)) {
            f64 = malloc(t->numel * sizeof *f64);
            for (size_t j = 0; j < t->numel; j++) f64[j] = p[j];
            TFM_ASSERT(tfm_st_writer_add(w, t->name, TFM_DT_F64, t->ndim, shape, f64) == TFM_OK);
        } else {
            TFM_ASSERT(tfm_st_writer_add(w, t->name, TFM_DT_F32, t->ndim, shape, p) == TFM_OK);
        }
    }
    if (o->extra && tfm_layout_find(L, o->extra) < 0) {
        int64_t s3[1] = {3};
        TFM_ASSERT(tfm_st_writer_add(w, o->extra, TFM_DT_F32, 1, s3, three) == TFM_OK);
    }
    char *config = tfm_config_to_json(&m->cfg);
    const char *keys[] = {"format", "format_version", "config", "step", "tied"};
    const char *vals[] = {"transformer.c", "1", config, "77", ""};
    for (int k = 0; k < 5; k++) {
        const char *v = vals[k];
        if (o->meta_key && !strcmp(o->meta_key, keys[k])) {
            if (!o->meta_value) continue;
            v = o->meta_value;
        }
        TFM_ASSERT(tfm_st_writer_meta(w, keys[k], v) == TFM_OK);
    }
    TFM_ASSERT(tfm_st_writer_save(w, path) == TFM_OK);
    tfm_st_writer_free(w);
    free(config);
    free(copy);
    free(f64);
}

/* Every way in: load, load_into (model unchanged afterwards), average. */
static void expect_bad(const tfm_model *ref, const char *path, const char *needle, const char *what) {
    tfm_model m;
    long step = -5;
    expect_error(tfm_checkpoint_load(&m, path, &step), path, needle, what);
    CHECK(m.params == NULL && step == -5, "%s: outputs touched on error", what);
    tfm_model_free(&m);

    size_t np = ref->layout.n_params;
    float *before = malloc(np * sizeof *before);
    memcpy(before, ref->params, np * sizeof *before);
    tfm_status s = tfm_checkpoint_load_into(ref, path);
    CHECK(s != TFM_OK && strstr(tfm_last_error(), path), "%s: load_into: %s", what,
          tfm_last_error());
    CHECK(memcmp(before, ref->params, np * sizeof *before) == 0,
          "%s: load_into changed the model on error", what);
    free(before);

    const char *out = tmp_path("avg_never.safetensors");
    const char *two[] = {tmp_path("good.safetensors"), path};
    s = tfm_checkpoint_average(two, 2, out);
    CHECK(s != TFM_OK && strstr(tfm_last_error(), path), "%s: average: %s", what, tfm_last_error());
    struct stat sb;
    CHECK(stat(out, &sb) != 0, "%s: average wrote a file on error", what);
}

static void test_tensors(const tfm_model *m) {
    printf("tensors:\n");
    const char *p = tmp_path("bad.safetensors");
    write_custom(m, p, &(custom){.skip = "decoder.layers.1.linear2.bias"});
    expect_bad(m, p, "tensor \"decoder.layers.1.linear2.bias\" is missing", "missing tensor");
    write_custom(m, p, &(custom){.transpose = "encoder.layers.0.linear1.weight"});
    expect_bad(m, p, "\"encoder.layers.0.linear1.weight\": shape [16, 24] in the file, expected [24, 16]",
               "wrong shape");
    write_custom(m, p, &(custom){.as_f64 = "decoder.layers.0.norm3.weight"});
    expect_bad(m, p, "\"decoder.layers.0.norm3.weight\": dtype F64, expected F32", "wrong dtype");
    write_custom(m, p, &(custom){.extra = "encoder.layers.7.linear1.weight"});
    expect_bad(m, p, "unexpected tensor \"encoder.layers.7.linear1.weight\"", "extra tensor");
    write_custom(m, p, &(custom){.extra = "generator.weight"});
    expect_bad(m, p, "\"generator.weight\": it is tied to \"src_embed.weight\"", "tied alias stored");
    write_custom(m, p, &(custom){.nan_in = "decoder.layers.1.self_attn.in_proj_weight"});
    expect_bad(m, p, "\"decoder.layers.1.self_attn.in_proj_weight\": element 384 is NaN", "NaN weight");
    write_custom(m, p, &(custom){.nan_in = "src_embed.weight", .inf = 1});
    expect_bad(m, p, "\"src_embed.weight\": element 184 is infinite", "Inf weight");
}

static void test_metadata(const tfm_model *m) {
    printf("metadata:\n");
    const char *p = tmp_path("bad.safetensors");
    struct {
        const char *key, *value, *needle, *what;
    } cases[] = {
        {"format", NULL, "metadata \"format\" is missing", "no format"},
        {"format", "pt", "metadata \"format\" is \"pt\"", "other format"},
        {"format", "transformer.c-train-state", "expected \"transformer.c\"", "state as weights"},
        {"format_version", "2", "\"format_version\" is \"2\"", "newer version"},
        {"format_version", NULL, "\"format_version\" is missing", "no version"},
        {"step", NULL, "\"step\" is missing", "no step"},
        {"step", "-1", "\"step\": \"-1\" is not a non-negative integer", "negative step"},
        {"step", "12x", "\"step\": \"12x\"", "bad step"},
        {"step", "99999999999999999999999", "is not a non-negative integer", "huge step"},
        {"config", NULL, "metadata \"config\" is missing", "no config"},
        {"config", "{\"d_model\": 16,", "metadata \"config\"", "config not JSON"},
        {"config", "[1, 2]", "metadata \"config\"", "config not an object"},
        {"config", "{\"heads\": 7, \"d_model\": 16}", "heads", "invalid config"},
        {"config", "{\"d_modle\": 16}", "d_modle", "unknown config key"},
        {"config", "{\"d_model\": \"16\"}", "d_model", "config wrong type"},
        /* a valid config of another shape: the tensors then disagree */
        {"config",
         "{\"enc_layers\": 1, \"dec_layers\": 2, \"d_model\": 16, \"heads\": 4, \"d_ff\": 32, "
         "\"max_positions\": 32, \"src_vocab\": 23, \"tgt_vocab\": 23}",
         "shape [24, 16] in the file, expected [32, 16]", "config of another model"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_custom(m, p, &(custom){.meta_key = cases[i].key, .meta_value = cases[i].value});
        expect_bad(m, p, cases[i].needle, cases[i].what);
    }
    tfm_config cfg;
    write_custom(m, p, &(custom){.meta_key = "config", .meta_value = "{\"heads\": 0}"});
    expect_error(tfm_checkpoint_read_config(p, &cfg, NULL), p, "heads", "read_config");
}

/* --------------------------------------------------- truncation, flipping */

static void test_truncated(const tfm_model *m) {
    const char *good = tmp_path("good.safetensors");
    size_t n = 0;
    unsigned char *bytes = read_bytes(good, &n);
    TFM_ASSERT(bytes && n > 64);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)bytes[i] << (8 * i);
    const char *p = tmp_path("cut.safetensors");
    int cuts = 0, failed_ok = 0;
    /* every byte of the size prefix and the header, then ~100 cuts through the data */
    for (size_t cut = 0; cut < n;
         cut += cut < 64 ? 1 : cut < 8 + hlen + 16 ? 5 : (n - 8 - hlen) / 97 + 1) {
        write_bytes(p, bytes, cut);
        tfm_model out;
        tfm_status s = tfm_checkpoint_load(&out, p, NULL);
        cuts++;
        if (s != TFM_OK && strstr(tfm_last_error(), p)) failed_ok++;
        else CHECK(0, "cut at %zu of %zu: status %s: %s", cut, n, tfm_status_name(s), tfm_last_error());
        tfm_model_free(&out);
    }
    CHECK(failed_ok == cuts, "truncation");
    write_bytes(p, bytes, n / 2);
    expect_bad(m, p, NULL, "truncated in half");
    printf("truncated: %d cut points, each a clear error\n", cuts);

    /* flipped bytes: an error or a valid load, never a crash */
    int errors = 0, loads = 0;
    unsigned char *mut = malloc(n);
    for (int k = 0; k < 400; k++) {
        memcpy(mut, bytes, n);
        size_t at = k < 300 ? (size_t)(tfm_rng_u64(9, 1, (uint64_t)k) % (8 + hlen))
                            : (size_t)(tfm_rng_u64(9, 2, (uint64_t)k) % n);
        mut[at] ^= (unsigned char)(1u << (tfm_rng_u64(9, 3, (uint64_t)k) % 8));
        write_bytes(p, mut, n);
        tfm_model out;
        if (tfm_checkpoint_load(&out, p, NULL) == TFM_OK) loads++;
        else {
            errors++;
            CHECK(strstr(tfm_last_error(), p) != NULL, "flip at %zu: message without the path: %s",
                  at, tfm_last_error());
        }
        tfm_model_free(&out);
    }
    printf("flipped: %d errors, %d loads (data flips), no crash\n", errors, loads);
    free(mut);

    /* not a safetensors file at all, an empty file, a directory, a missing file */
    write_bytes(p, "{\"d_model\": 512}\n", 17);
    expect_bad(m, p, NULL, "a JSON file");
    write_bytes(p, "", 0);
    expect_bad(m, p, NULL, "empty file");
    expect_bad(m, dir, NULL, "a directory");
    expect_bad(m, tmp_path("missing.safetensors"), NULL, "missing file");
    free(bytes);
}

/* ------------------------------------------------------------- train state */

static void test_state(void) {
    printf("train state:\n");
    tfm_config c = small_config(), c2 = c;
    c2.d_ff = 32;
    tfm_model m, m2;
    TFM_ASSERT(tfm_model_init(&m, &c, 1) == TFM_OK && tfm_model_init(&m2, &c2, 1) == TFM_OK);
    tfm_adam_params opt;
    tfm_adam_default_params(&opt);
    tfm_lr_schedule sched;
    tfm_lr_schedule_default(&sched);
    tfm_trainer tr, tr2;
    TFM_ASSERT(tfm_trainer_init(&tr, &m, &opt, &sched, 1, 4, 4, 5) == TFM_OK);
    TFM_ASSERT(tfm_trainer_init(&tr2, &m2, &opt, &sched, 1, 4, 4, 5) == TFM_OK);
    size_t np = m.layout.n_params;
    for (size_t j = 0; j < np; j++) {
        tr.adam_m[j] = (float)j * 1e-3f;
        tr.adam_v[j] = (float)j * 1e-6f;
    }
    tr.step = 9;
    const char *good = tmp_path("state.safetensors");
    const char *k[] = {"epoch"}, *v[] = {"3"};
    CHECK(tfm_train_state_save(&tr, k, v, 1, good) == TFM_OK, "save: %s", tfm_last_error());

    /* another model: n_params differs */
    tfm_train_state_info info;
    tr2.step = 1;
    expect_error(tfm_train_state_load(&tr2, good, &info), good, "n_params: the state is for a model of",
                 "n_params mismatch");
    CHECK(tr2.step == 1 && info.n == 0, "trainer untouched, info empty");

    /* weights file given as a state, state given as weights */
    expect_error(tfm_train_state_load(&tr, tmp_path("good.safetensors"), &info),
                 tmp_path("good.safetensors"), "metadata \"format\" is \"transformer.c\"",
                 "weights as state");
    tfm_model x;
    expect_error(tfm_checkpoint_load(&x, good, NULL), good, "transformer.c-train-state",
                 "state as weights");

    /* hand-made states */
    const char *p = tmp_path("bad_state.safetensors");
    float *mm = malloc(np * sizeof *mm), *vv = malloc(np * sizeof *vv);
    char *config = tfm_config_to_json(&c), npbuf[32];
    snprintf(npbuf, sizeof npbuf, "%zu", np);
    for (int which = 0; which < 9; which++) {
        memcpy(mm, tr.adam_m, np * sizeof *mm);
        memcpy(vv, tr.adam_v, np * sizeof *vv);
        tfm_st_writer *w;
        TFM_ASSERT(tfm_st_writer_init(&w) == TFM_OK);
        int64_t shape[1] = {(int64_t)np}, short_shape[1] = {(int64_t)np - 1};
        const char *needle = NULL, *what = NULL;
        int skip_v = 0;
        const char *np_meta = npbuf, *step_meta = "9", *seed_meta = "5", *opt_meta = NULL;
        switch (which) {
        case 0: skip_v = 1; needle = "tensor \"adam.v\" is missing"; what = "state: no adam.v"; break;
        case 1: needle = "\"adam.m\": shape ["; what = "state: short adam.m"; break;
        case 2: mm[17] = NAN; needle = "\"adam.m\": element 17 is NaN"; what = "state: NaN"; break;
        case 3: vv[3] = -1.0f; needle = "\"adam.v\": element 3 is negative"; what = "state: v < 0"; break;
        case 4: np_meta = "12"; needle = "n_params"; what = "state: n_params meta"; break;
        case 5: step_meta = "nine"; needle = "\"step\""; what = "state: bad step"; break;
        case 6: seed_meta = "-5"; needle = "\"seed\""; what = "state: bad seed"; break;
        case 7: opt_meta = "{\"kind\": \"sgd\"}"; needle = "sgd"; what = "state: bad optimizer"; break;
        case 8: opt_meta = "not json"; needle = "metadata \"optimizer\""; what = "state: optimizer not JSON"; break;
        }
        TFM_ASSERT(tfm_st_writer_add(w, "adam.m", TFM_DT_F32, 1, which == 1 ? short_shape : shape, mm) == TFM_OK);
        if (!skip_v) TFM_ASSERT(tfm_st_writer_add(w, "adam.v", TFM_DT_F32, 1, shape, vv) == TFM_OK);
        tfm_st_writer_meta(w, "format", "transformer.c-train-state");
        tfm_st_writer_meta(w, "format_version", "1");
        tfm_st_writer_meta(w, "step", step_meta);
        tfm_st_writer_meta(w, "seed", seed_meta);
        tfm_st_writer_meta(w, "n_params", np_meta);
        tfm_st_writer_meta(w, "config", config);
        tfm_st_writer_meta(w, "optimizer",
                           opt_meta ? opt_meta
                                    : "{\"kind\": \"adam\", \"beta1\": 0.9, \"beta2\": 0.98, \"eps\": "
                                      "1e-9, \"weight_decay\": 0, \"clip_norm\": 0}");
        tfm_st_writer_meta(w, "schedule",
                           "{\"kind\": \"noam\", \"lr\": 0.001, \"factor\": 1, \"d_model\": 512, "
                           "\"warmup\": 4000, \"total_steps\": 100000, \"min_lr\": 0, \"gamma\": "
                           "0.5, \"step_size\": 10000}");
        TFM_ASSERT(tfm_st_writer_save(w, p) == TFM_OK);
        tfm_st_writer_free(w);
        float m0 = tr.adam_m[17];
        long s0 = tr.step;
        expect_error(tfm_train_state_load(&tr, p, &info), p, needle, what);
        CHECK(tr.adam_m[17] == m0 && tr.step == s0, "%s: trainer changed on error", what);
    }
    /* the hand-made template itself is valid */
    CHECK(tfm_train_state_load(&tr, good, &info) == TFM_OK, "good state: %s", tfm_last_error());
    tfm_train_state_info_free(&info);

    /* truncated states */
    size_t n = 0;
    unsigned char *bytes = read_bytes(good, &n);
    int bad = 0;
    for (size_t cut = 0; cut < n; cut += n / 150 + 1) {
        write_bytes(p, bytes, cut);
        tfm_status s = tfm_train_state_load(&tr, p, &info);
        if (s == TFM_OK || !strstr(tfm_last_error(), p)) bad++;
    }
    CHECK(bad == 0, "%d truncated states loaded or gave no path", bad);
    free(bytes);
    free(mm);
    free(vv);
    free(config);
    tfm_trainer_free(&tr);
    tfm_trainer_free(&tr2);
    tfm_model_free(&m);
    tfm_model_free(&m2);
}

/* A save that cannot happen leaves the old file in place. */
static void test_save_errors(const tfm_model *m) {
    printf("saving:\n");
    const char *p = tmp_path("nodir/x.safetensors");
    expect_error(tfm_checkpoint_save(m, 1, p), p, NULL, "save into a missing dir");
    const char *good = tmp_path("good.safetensors");
    expect_error(tfm_checkpoint_save(m, -3, good), good, "negative", "negative step");
    float keep = m->params[5];
    m->params[5] = NAN;
    expect_error(tfm_checkpoint_save(m, 1, good), good, "element 5 is NaN", "save NaN weights");
    m->params[5] = keep;
    tfm_model back;
    CHECK(tfm_checkpoint_load(&back, good, NULL) == TFM_OK, "old file intact: %s", tfm_last_error());
    tfm_model_free(&back);
    write_bytes(tmp_path("plainfile"), "x", 1);
    const char *d = tmp_path("plainfile");
    expect_error(tfm_checkpoint_dir_save(m, NULL, 1, 0, d, NULL, NULL, 0), d, NULL,
                 "dir_save onto a file");
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tfm_badckpt_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    tfm_config c = small_config();
    tfm_model m;
    TFM_ASSERT(tfm_model_init(&m, &c, 3) == TFM_OK);
    TFM_ASSERT(tfm_checkpoint_save(&m, 1, tmp_path("good.safetensors")) == TFM_OK);
    test_tensors(&m);
    test_metadata(&m);
    test_truncated(&m);
    test_state();
    test_save_errors(&m);
    tfm_model_free(&m);
    if (!tfm_test_failed) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    } else {
        printf("files kept in %s\n", dir);
    }
    return tfm_test_finish();
}
