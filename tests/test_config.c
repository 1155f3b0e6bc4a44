/*
 * test_config.c: the configuration module on good input: the paper's
 * defaults, d_k/d_v resolution, the JSON round trip (every field, every enum
 * value), partial JSON, every command-line flag in both spellings, and
 * save/load through a file. Bad input is tests/test_bad_config.c.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

/* Compares every field by name, so that a failure says which one. Floats are
 * compared exactly: the round trip must not lose a bit. */
static int config_equal(const tfm_config *a, const tfm_config *b, const char *what) {
    int bad = 0;
#define EQ(f)                                                                                \
    if (a->f != b->f) {                                                                      \
        bad++;                                                                               \
        fprintf(stderr, "  %s: field " #f " differs: %.9g vs %.9g\n", what, (double)a->f,    \
                (double)b->f);                                                               \
    }
    EQ(enc_layers) EQ(dec_layers) EQ(d_model) EQ(heads) EQ(d_k) EQ(d_v) EQ(d_ff)
    EQ(activation) EQ(norm) EQ(positions) EQ(max_positions) EQ(rope_theta) EQ(src_vocab)
    EQ(tgt_vocab) EQ(share) EQ(embed_scale) EQ(dropout) EQ(attn_dropout) EQ(embed_dropout)
    EQ(act_dropout) EQ(ln_eps) EQ(label_smoothing) EQ(pad_id) EQ(bos_id) EQ(eos_id)
#undef EQ
    /* The struct is 25 four-byte fields; a new field must be added to EQ above. */
    _Static_assert(sizeof(tfm_config) == 25 * 4, "tfm_config changed: update config_equal");
    return bad == 0;
}

/* A configuration with every field away from its default, floats chosen so
 * that a lossy printer would be caught. */
static void unusual_config(tfm_config *c) {
    tfm_config_default(c);
    c->enc_layers = 3;
    c->dec_layers = 5;
    c->d_model = 384;
    c->heads = 12;
    c->d_k = 48;
    c->d_v = 40;
    c->d_ff = 1536;
    c->activation = TFM_ACT_GELU;
    c->norm = TFM_NORM_PRE;
    c->positions = TFM_POS_ROPE;
    c->max_positions = 4096;
    c->rope_theta = 500000.0f;
    c->src_vocab = 8001;
    c->tgt_vocab = 12345;
    c->share = TFM_SHARE_DECODER;
    c->embed_scale = 0;
    c->dropout = 0.3f;
    c->attn_dropout = 0.123456789f;
    c->embed_dropout = 1.0f / 3.0f;
    c->act_dropout = 1e-7f;
    c->ln_eps = 1e-6f;
    c->label_smoothing = 0.05f;
    c->pad_id = 3;
    c->bos_id = 4;
    c->eos_id = 5;
}

static void round_trip(const tfm_config *c, const char *what) {
    char *json = tfm_config_to_json(c);
    CHECK(json != NULL, "%s: to_json returned NULL", what);
    if (!json) return;
    tfm_config back;
    memset(&back, 0x5a, sizeof back); /* every field must be overwritten */
    tfm_status s = tfm_config_from_json(&back, json, "<round trip>");
    CHECK(s == TFM_OK, "%s: from_json: %s\n%s", what, tfm_last_error(), json);
    CHECK(config_equal(&back, c, what), "%s: round trip lost a field:\n%s", what, json);
    free(json);
}

static const char *default_json =
    "{\n"
    "  \"enc_layers\": 6,\n"
    "  \"dec_layers\": 6,\n"
    "  \"d_model\": 512,\n"
    "  \"heads\": 8,\n"
    "  \"d_k\": 0,\n"
    "  \"d_v\": 0,\n"
    "  \"d_ff\": 2048,\n"
    "  \"activation\": \"relu\",\n"
    "  \"norm\": \"post\",\n"
    "  \"positions\": \"sinusoidal\",\n"
    "  \"max_positions\": 1024,\n"
    "  \"rope_theta\": 10000,\n"
    "  \"src_vocab\": 32000,\n"
    "  \"tgt_vocab\": 32000,\n"
    "  \"share\": \"all\",\n"
    "  \"embed_scale\": true,\n"
    "  \"dropout\": 0.1,\n"
    "  \"attn_dropout\": 0,\n"
    "  \"embed_dropout\": 0.1,\n"
    "  \"act_dropout\": 0,\n"
    "  \"ln_eps\": 1e-05,\n"
    "  \"label_smoothing\": 0.1,\n"
    "  \"pad_id\": 0,\n"
    "  \"bos_id\": 1,\n"
    "  \"eos_id\": 2\n"
    "}";

static void test_defaults(void) {
    tfm_config c;
    memset(&c, 0xff, sizeof c);
    tfm_config_default(&c);
    CHECK(tfm_config_validate(&c) == TFM_OK, "default invalid: %s", tfm_last_error());
    CHECK(c.enc_layers == 6 && c.dec_layers == 6, "layers %d %d", c.enc_layers, c.dec_layers);
    CHECK(c.d_model == 512 && c.heads == 8 && c.d_ff == 2048, "sizes %d %d %d", c.d_model,
          c.heads, c.d_ff);
    CHECK(c.d_k == 0 && c.d_v == 0, "d_k %d d_v %d", c.d_k, c.d_v);
    CHECK(c.activation == TFM_ACT_RELU && c.norm == TFM_NORM_POST &&
              c.positions == TFM_POS_SINUSOIDAL,
          "enums %d %d %d", c.activation, c.norm, c.positions);
    CHECK(c.max_positions == 1024 && c.rope_theta == 10000.0f, "positions %d theta %g",
          c.max_positions, (double)c.rope_theta);
    CHECK(c.src_vocab == 32000 && c.tgt_vocab == 32000 && c.share == TFM_SHARE_ALL,
          "vocab %d %d share %d", c.src_vocab, c.tgt_vocab, c.share);
    CHECK(c.embed_scale == 1, "embed_scale %d", c.embed_scale);
    CHECK(c.dropout == 0.1f && c.attn_dropout == 0.0f && c.embed_dropout == 0.1f &&
              c.act_dropout == 0.0f,
          "dropouts %g %g %g %g", (double)c.dropout, (double)c.attn_dropout,
          (double)c.embed_dropout, (double)c.act_dropout);
    CHECK(c.ln_eps == 1e-5f && c.label_smoothing == 0.1f, "ln_eps %g ls %g", (double)c.ln_eps,
          (double)c.label_smoothing);
    CHECK(c.pad_id == 0 && c.bos_id == 1 && c.eos_id == 2, "ids %d %d %d", c.pad_id, c.bos_id,
          c.eos_id);

    /* The JSON form is pinned: key order and number formatting are stable. */
    char *json = tfm_config_to_json(&c);
    CHECK(json && strcmp(json, default_json) == 0, "default JSON changed:\n%s", json);
    free(json);
}

static void test_dk_dv(void) {
    tfm_config c;
    tfm_config_default(&c);
    CHECK(tfm_config_dk(&c) == 64 && tfm_config_dv(&c) == 64, "default d_k %d d_v %d",
          tfm_config_dk(&c), tfm_config_dv(&c));
    c.d_k = 32;
    CHECK(tfm_config_dk(&c) == 32 && tfm_config_dv(&c) == 64, "d_k 32: %d %d", tfm_config_dk(&c),
          tfm_config_dv(&c));
    c.d_k = 0;
    c.d_v = 96;
    CHECK(tfm_config_dk(&c) == 64 && tfm_config_dv(&c) == 96, "d_v 96: %d %d", tfm_config_dk(&c),
          tfm_config_dv(&c));
    /* heads need not divide d_model when both sizes are explicit. */
    tfm_config_default(&c);
    c.heads = 7;
    c.d_k = 64;
    c.d_v = 64;
    CHECK(tfm_config_validate(&c) == TFM_OK, "explicit d_k/d_v with 7 heads: %s",
          tfm_last_error());
    /* The big model of the paper. */
    tfm_config_default(&c);
    c.d_model = 1024;
    c.heads = 16;
    c.d_ff = 4096;
    c.dropout = 0.3f;
    CHECK(tfm_config_validate(&c) == TFM_OK && tfm_config_dk(&c) == 64, "big model: %s",
          tfm_last_error());
}

static void test_valid_variants(void) {
    tfm_config c;
    /* Decoder-only: src_vocab is ignored, whatever it holds. */
    tfm_config_default(&c);
    c.enc_layers = 0;
    c.src_vocab = 0;
    c.tgt_vocab = 50257;
    CHECK(tfm_config_validate(&c) == TFM_OK, "decoder-only: %s", tfm_last_error());
    /* Encoder-only with separate vocabularies and no tying. */
    tfm_config_default(&c);
    c.dec_layers = 0;
    c.src_vocab = 30000;
    c.tgt_vocab = 5;
    c.share = TFM_SHARE_NONE;
    CHECK(tfm_config_validate(&c) == TFM_OK, "encoder-only: %s", tfm_last_error());
    /* Encoder-decoder with separate vocabularies, target side tied. */
    tfm_config_default(&c);
    c.src_vocab = 37000;
    c.tgt_vocab = 32000;
    c.share = TFM_SHARE_DECODER;
    CHECK(tfm_config_validate(&c) == TFM_OK, "separate vocabularies: %s", tfm_last_error());
    /* RoPE with an even head size, odd head size without RoPE. */
    tfm_config_default(&c);
    c.positions = TFM_POS_ROPE;
    CHECK(tfm_config_validate(&c) == TFM_OK, "rope: %s", tfm_last_error());
    c.positions = TFM_POS_LEARNED;
    c.d_k = 33;
    CHECK(tfm_config_validate(&c) == TFM_OK, "odd d_k, learned: %s", tfm_last_error());
    unusual_config(&c);
    CHECK(tfm_config_validate(&c) == TFM_OK, "unusual config: %s", tfm_last_error());
}

static void test_round_trip(void) {
    tfm_config c;
    tfm_config_default(&c);
    round_trip(&c, "default");
    unusual_config(&c);
    round_trip(&c, "unusual");
    /* Every value of every enum, and both booleans. */
    for (int act = 0; act < 2; act++)
        for (int norm = 0; norm < 2; norm++)
            for (int pos = 0; pos < 4; pos++)
                for (int share = 0; share < 3; share++) {
                    tfm_config_default(&c);
                    c.activation = (tfm_activation)act;
                    c.norm = (tfm_norm_placement)norm;
                    c.positions = (tfm_positions)pos;
                    c.share = (tfm_sharing)share;
                    c.embed_scale = (act + pos + share) % 2;
                    char what[64];
                    snprintf(what, sizeof what, "enums %d %d %d %d", act, norm, pos, share);
                    round_trip(&c, what);
                }
    /* Floats at awkward values, including extremes of the float range. */
    const float awkward[] = {0.0f, -0.0f, 1e-45f, 1.17549435e-38f, 3.40282347e38f, 0.1f,
                             0.2f, 0.7f, 0.99999994f, 123456.789f, 16777217.0f, 1e-5f};
    for (size_t i = 0; i < sizeof awkward / sizeof awkward[0]; i++) {
        tfm_config_default(&c);
        c.dropout = c.attn_dropout = c.rope_theta = c.ln_eps = awkward[i];
        c.label_smoothing = -awkward[i];
        char what[64];
        snprintf(what, sizeof what, "float %.9g", (double)awkward[i]);
        round_trip(&c, what);
    }
    /* Integers at the ends of the int range. */
    tfm_config_default(&c);
    c.enc_layers = 2147483647;
    c.dec_layers = -2147483647 - 1;
    round_trip(&c, "int extremes");
}

static void test_partial_json(void) {
    tfm_config c, want;
    tfm_config_default(&c);
    tfm_config_default(&want);
    tfm_status s = tfm_config_from_json(&c, "{}", "<empty>");
    CHECK(s == TFM_OK && config_equal(&c, &want, "{}"), "{} changed the config: %s",
          tfm_last_error());

    s = tfm_config_from_json(&c,
                             " {\"d_model\": 256, \"heads\": 4,\n\t\"activation\": \"gelu\", "
                             "\"dropout\": 0.25, \"embed_scale\": false} \n",
                             "<partial>");
    want.d_model = 256;
    want.heads = 4;
    want.activation = TFM_ACT_GELU;
    want.dropout = 0.25f;
    want.embed_scale = 0;
    CHECK(s == TFM_OK, "partial: %s", tfm_last_error());
    CHECK(config_equal(&c, &want, "partial"), "partial JSON touched other fields");

    /* Applied on top of a non-default config, untouched fields stay as they were. */
    unusual_config(&c);
    unusual_config(&want);
    s = tfm_config_from_json(&c, "{\"eos_id\": 7}", NULL);
    want.eos_id = 7;
    CHECK(s == TFM_OK && config_equal(&c, &want, "one key"), "one key: %s", tfm_last_error());

    /* embed_scale also accepts 0 and 1; integers may be written 64.0 or 6.4e1
     * (JSON has one number type); floats may be written as integers. */
    tfm_config_default(&c);
    s = tfm_config_from_json(&c, "{\"embed_scale\": 0, \"d_k\": 64.0, \"d_v\": 6.4e1, "
                                 "\"rope_theta\": 500000, \"ln_eps\": 1E-6}", NULL);
    CHECK(s == TFM_OK, "numbers: %s", tfm_last_error());
    CHECK(c.embed_scale == 0 && c.d_k == 64 && c.d_v == 64 && c.rope_theta == 500000.0f &&
              c.ln_eps == 1e-6f,
          "numbers parsed as %d %d %d %g %g", c.embed_scale, c.d_k, c.d_v, (double)c.rope_theta,
          (double)c.ln_eps);
    s = tfm_config_from_json(&c, "{\"embed_scale\": 1}", NULL);
    CHECK(s == TFM_OK && c.embed_scale == 1, "embed_scale 1: %s", tfm_last_error());
}

/* Sets `flag` (dashed spelling) and its underscore spelling to `value` on a
 * default config and expects exactly `want`. */
static void check_flag(const char *flag, const char *value, const tfm_config *want) {
    char spelled[2][64];
    snprintf(spelled[0], sizeof spelled[0], "%s", flag);
    snprintf(spelled[1], sizeof spelled[1], "%s", flag);
    for (char *p = spelled[1]; *p; p++)
        if (*p == '-') *p = '_';
    for (int i = 0; i < 2; i++) {
        tfm_config c;
        tfm_config_default(&c);
        tfm_status s = tfm_config_set(&c, spelled[i], value);
        CHECK(s == TFM_OK, "--%s %s: %s", spelled[i], value, tfm_last_error());
        char what[160];
        snprintf(what, sizeof what, "--%s %s", spelled[i], value);
        CHECK(config_equal(&c, want, what), "%s set the wrong thing", what);
    }
}

#define FLAG(flag, value, field, expect)                                                     \
    do {                                                                                     \
        tfm_config w_;                                                                       \
        tfm_config_default(&w_);                                                             \
        w_.field = expect;                                                                   \
        check_flag(flag, value, &w_);                                                        \
    } while (0)

static void test_flags(void) {
    FLAG("enc-layers", "3", enc_layers, 3);
    FLAG("enc-layers", "0", enc_layers, 0);
    FLAG("dec-layers", "12", dec_layers, 12);
    FLAG("d-model", "1024", d_model, 1024);
    FLAG("heads", "16", heads, 16);
    FLAG("d-k", "32", d_k, 32);
    FLAG("d-v", "48", d_v, 48);
    FLAG("d-ff", "4096", d_ff, 4096);
    FLAG("activation", "gelu", activation, TFM_ACT_GELU);
    FLAG("activation", "relu", activation, TFM_ACT_RELU);
    FLAG("norm", "pre", norm, TFM_NORM_PRE);
    FLAG("norm", "post", norm, TFM_NORM_POST);
    FLAG("positions", "learned", positions, TFM_POS_LEARNED);
    FLAG("positions", "rope", positions, TFM_POS_ROPE);
    FLAG("positions", "none", positions, TFM_POS_NONE);
    FLAG("positions", "sinusoidal", positions, TFM_POS_SINUSOIDAL);
    FLAG("max-positions", "2048", max_positions, 2048);
    FLAG("rope-theta", "500000", rope_theta, 500000.0f);
    FLAG("src-vocab", "37000", src_vocab, 37000);
    FLAG("tgt-vocab", "8000", tgt_vocab, 8000);
    FLAG("share", "none", share, TFM_SHARE_NONE);
    FLAG("share", "decoder", share, TFM_SHARE_DECODER);
    FLAG("share", "all", share, TFM_SHARE_ALL);
    FLAG("embed-scale", "false", embed_scale, 0);
    FLAG("embed-scale", "0", embed_scale, 0);
    FLAG("embed-scale", "true", embed_scale, 1);
    FLAG("embed-scale", "1", embed_scale, 1);
    FLAG("dropout", "0.3", dropout, 0.3f);
    FLAG("attn-dropout", "0.1", attn_dropout, 0.1f);
    FLAG("embed-dropout", "0", embed_dropout, 0.0f);
    FLAG("act-dropout", "0.2", act_dropout, 0.2f);
    FLAG("ln-eps", "1e-6", ln_eps, 1e-6f);
    FLAG("label-smoothing", "0", label_smoothing, 0.0f);
    FLAG("pad-id", "3", pad_id, 3);
    FLAG("bos-id", "-1", bos_id, -1); /* parsed; validation is a separate step */
    FLAG("eos-id", "+7", eos_id, 7);

    /* --vocab sets both sides. */
    tfm_config w;
    tfm_config_default(&w);
    w.src_vocab = w.tgt_vocab = 16000;
    check_flag("vocab", "16000", &w);

    /* Every JSON key is also a flag name (underscore spelling), with the value
     * written as the JSON writes it: flags and keys cannot drift apart. */
    tfm_config c, want;
    unusual_config(&want);
    tfm_config_default(&c);
    char *json = tfm_config_to_json(&want);
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    CHECK(root != NULL, "to_json output does not parse");
    int n = 0;
    for (const cJSON *it = root ? root->child : NULL; it; it = it->next, n++) {
        char value[64];
        if (cJSON_IsString(it)) snprintf(value, sizeof value, "%s", it->valuestring);
        else if (cJSON_IsBool(it)) snprintf(value, sizeof value, cJSON_IsTrue(it) ? "true" : "false");
        else snprintf(value, sizeof value, "%.9g", it->valuedouble);
        tfm_status s = tfm_config_set(&c, it->string, value);
        CHECK(s == TFM_OK, "key %s is not a flag: %s", it->string, tfm_last_error());
    }
    CHECK(n == 25, "to_json wrote %d keys, want 25", n);
    CHECK(config_equal(&c, &want, "flags from JSON keys"), "setting every key as a flag");
    cJSON_Delete(root);
    free(json);
}

static void test_files(void) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/tfm_test_config_XXXXXX", tfm_test_env("TMPDIR", "/tmp"));
    if (mkdtemp(dir) == NULL) {
        CHECK(0, "mkdtemp %s failed", dir);
        return;
    }
    char path[320], tmp[330];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    tfm_config c, back;
    unusual_config(&c);
    tfm_status s = tfm_config_save(&c, path);
    CHECK(s == TFM_OK, "save: %s", tfm_last_error());
    CHECK(access(tmp, F_OK) != 0, "save left %s behind", tmp);
    tfm_config_default(&back);
    s = tfm_config_load(&back, path);
    CHECK(s == TFM_OK, "load: %s", tfm_last_error());
    CHECK(config_equal(&back, &c, "save/load"), "save/load lost a field");

    /* The file is the JSON text plus a newline. */
    FILE *f = fopen(path, "rb");
    char text[4096] = {0};
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    char *json = tfm_config_to_json(&c);
    CHECK(json && n == strlen(json) + 1 && strncmp(text, json, n - 1) == 0 && text[n - 1] == '\n',
          "file content differs from to_json");
    free(json);

    /* Saving again replaces the file. */
    tfm_config_default(&c);
    CHECK(tfm_config_save(&c, path) == TFM_OK, "second save: %s", tfm_last_error());
    unusual_config(&back);
    CHECK(tfm_config_load(&back, path) == TFM_OK && config_equal(&back, &c, "overwrite"),
          "overwrite: %s", tfm_last_error());

    /* A hand-written file with a byte order mark and only a few keys. */
    f = fopen(path, "wb");
    if (f) {
        fputs("\xEF\xBB\xBF{\n  \"dec_layers\": 0,\n  \"share\": \"decoder\"\n}\n", f);
        fclose(f);
    }
    tfm_config_default(&back);
    s = tfm_config_load(&back, path);
    CHECK(s == TFM_OK && back.dec_layers == 0 && back.share == TFM_SHARE_DECODER &&
              back.d_model == 512,
          "hand-written file: %s", tfm_last_error());

    remove(path);
    rmdir(dir);
}

int main(void) {
    test_defaults();
    test_dk_dv();
    test_valid_variants();
    test_round_trip();
    test_partial_json();
    test_flags();
    test_files();
    return tfm_test_finish();
}
