/*
 * test_bad_config.c: every bad configuration gives the documented status and a
 * message that names the field, key, flag or file: invalid values (validate),
 * unknown keys, wrong JSON types, malformed JSON, bad flag values, files that
 * cannot be read or written. A failed parse or flag leaves the config as it was.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

static int verbose = 0; /* TFM_TEST_VERBOSE=1 prints every message, to read them */

static void show(const char *what) {
    if (verbose) printf("  %-40s -> %s\n", what, tfm_last_error());
}

/* Expects validate to fail with "config: <field>: " at the start of the message
 * and every string of `also` (NULL-terminated list) somewhere in it. */
static void expect_invalid(const tfm_config *c, const char *field, const char *what,
                           const char *const *also) {
    tfm_status s = tfm_config_validate(c);
    const char *msg = tfm_last_error();
    CHECK(s == TFM_ERR_INVALID, "%s: status %s, want invalid", what, tfm_status_name(s));
    char prefix[64];
    snprintf(prefix, sizeof prefix, "config: %s: ", field);
    CHECK(strncmp(msg, prefix, strlen(prefix)) == 0, "%s: message \"%s\" does not start with \"%s\"",
          what, msg, prefix);
    for (; also && *also; also++)
        CHECK(strstr(msg, *also) != NULL, "%s: message \"%s\" lacks \"%s\"", what, msg, *also);
    show(what);
}

/* BAD("field", statements on c, "substring", ...): starts from the default. */
#define BAD(field, stmt, ...)                                                                \
    do {                                                                                     \
        tfm_config c;                                                                        \
        tfm_config_default(&c);                                                              \
        stmt;                                                                                \
        const char *const also_[] = {__VA_ARGS__, NULL};                                     \
        expect_invalid(&c, field, #stmt, also_);                                             \
    } while (0)

static void test_validate(void) {
    BAD("enc_layers", c.enc_layers = -1, "-1");
    BAD("enc_layers", c.enc_layers = 1025, "1025", "1024");
    BAD("dec_layers", c.dec_layers = -3, "-3");
    BAD("dec_layers", c.dec_layers = 100000, "100000");
    BAD("enc_layers", (c.enc_layers = 0, c.dec_layers = 0), "dec_layers", "both 0");
    BAD("d_model", c.d_model = 0, "0");
    BAD("d_model", c.d_model = -512, "-512");
    BAD("d_model", c.d_model = 65536 * 2, "131072", "65536");
    BAD("heads", c.heads = 0, "0");
    BAD("heads", c.heads = -8, "-8");
    BAD("heads", (c.heads = 8192, c.d_k = c.d_v = 8), "8192");
    BAD("d_ff", c.d_ff = 0, "0");
    BAD("d_ff", c.d_ff = -2048, "-2048");
    BAD("d_ff", c.d_ff = 1 << 21, "2097152");
    BAD("d_k", c.d_k = -1, "-1");
    BAD("d_v", c.d_v = -64, "-64");
    BAD("d_k", c.d_k = 65537, "65537");
    BAD("d_v", c.d_v = 1 << 20, "1048576");
    /* The header's own example. */
    BAD("heads", c.heads = 7, "d_model 512 is not divisible by 7", "d_k");
    BAD("heads", (c.heads = 7, c.d_k = 64), "d_model 512 is not divisible by 7", "d_v");
    BAD("heads", (c.heads = 7, c.d_v = 64), "d_model 512 is not divisible by 7", "d_k");
    BAD("heads", (c.d_model = 100, c.heads = 3), "d_model 100", "3");
    BAD("d_k", (c.heads = 4096, c.d_k = 512, c.d_v = 64), "4096", "512");
    BAD("d_v", (c.heads = 4096, c.d_k = 64, c.d_v = 512), "4096", "512");
    /* RoPE rotates pairs: an odd head size, default or explicit. */
    BAD("d_k", (c.positions = TFM_POS_ROPE, c.d_model = 504), "rope", "63");
    BAD("d_k", (c.positions = TFM_POS_ROPE, c.d_k = 33), "rope", "33");
    BAD("max_positions", c.max_positions = 0, "0");
    BAD("max_positions", c.max_positions = -1, "-1");
    BAD("max_positions", c.max_positions = 1 << 21, "2097152");
    BAD("rope_theta", c.rope_theta = 0.0f, "0");
    BAD("rope_theta", c.rope_theta = -10000.0f, "-10000");
    BAD("rope_theta", c.rope_theta = NAN, "nan");
    BAD("rope_theta", c.rope_theta = INFINITY, "inf");
    BAD("src_vocab", c.src_vocab = 0, "0");
    BAD("src_vocab", (c.src_vocab = -5, c.share = TFM_SHARE_NONE), "-5");
    BAD("src_vocab", (c.src_vocab = c.tgt_vocab = 1 << 25), "33554432");
    BAD("src_vocab", (c.dec_layers = 0, c.src_vocab = 0), "0");
    BAD("tgt_vocab", c.tgt_vocab = 0, "0");
    BAD("tgt_vocab", (c.enc_layers = 0, c.tgt_vocab = -1), "-1");
    BAD("tgt_vocab", (c.enc_layers = 0, c.tgt_vocab = 1 << 25), "33554432");
    /* Tying needs one vocabulary. */
    BAD("share", c.src_vocab = 37000, "src_vocab (37000)", "tgt_vocab (32000)", "all");
    BAD("share", (c.dec_layers = 0, c.share = TFM_SHARE_DECODER, c.tgt_vocab = 2),
        "src_vocab (32000)", "tgt_vocab (2)", "encoder-only");
    BAD("share", (c.dec_layers = 0, c.tgt_vocab = 2), "src_vocab (32000)", "encoder-only");
    /* Enumerations out of range, negative ones included. */
    BAD("activation", c.activation = (tfm_activation)2, "2");
    BAD("activation", c.activation = (tfm_activation)-1, "-1");
    BAD("norm", c.norm = (tfm_norm_placement)2, "2");
    BAD("positions", c.positions = (tfm_positions)4, "4");
    BAD("positions", c.positions = (tfm_positions)-7, "-7");
    BAD("share", c.share = (tfm_sharing)3, "3");
    BAD("embed_scale", c.embed_scale = 2, "2");
    BAD("embed_scale", c.embed_scale = -1, "-1");
    /* Probabilities in [0, 1), NaN rejected everywhere. */
    BAD("dropout", c.dropout = 1.0f, "1", "[0, 1)");
    BAD("dropout", c.dropout = -0.1f, "-0.1");
    BAD("dropout", c.dropout = NAN, "nan");
    BAD("attn_dropout", c.attn_dropout = 1.5f, "1.5");
    BAD("attn_dropout", c.attn_dropout = NAN, "nan");
    BAD("embed_dropout", c.embed_dropout = 1.0f, "1");
    BAD("embed_dropout", c.embed_dropout = -INFINITY, "inf");
    BAD("act_dropout", c.act_dropout = -0.5f, "-0.5");
    BAD("act_dropout", c.act_dropout = NAN, "nan");
    BAD("label_smoothing", c.label_smoothing = 1.0f, "1");
    BAD("label_smoothing", c.label_smoothing = -0.1f, "-0.1");
    BAD("label_smoothing", c.label_smoothing = NAN, "nan");
    BAD("ln_eps", c.ln_eps = 0.0f, "0");
    BAD("ln_eps", c.ln_eps = -1e-5f, "-1e-05");
    BAD("ln_eps", c.ln_eps = NAN, "nan");
    BAD("ln_eps", c.ln_eps = INFINITY, "inf");
    /* Special tokens inside the vocabularies. */
    BAD("pad_id", c.pad_id = -1, "-1", "tgt_vocab 32000");
    BAD("pad_id", c.pad_id = 32000, "32000");
    BAD("pad_id", (c.share = TFM_SHARE_DECODER, c.src_vocab = 100, c.pad_id = 150), "150",
        "src_vocab 100");
    BAD("bos_id", c.bos_id = -1, "-1");
    BAD("bos_id", c.bos_id = 32000, "32000");
    BAD("bos_id", (c.enc_layers = 0, c.tgt_vocab = 1, c.eos_id = 0), "1", "tgt_vocab 1");
    BAD("eos_id", c.eos_id = -2, "-2");
    BAD("eos_id", c.eos_id = 40000, "40000");

    /* Decoder-only: src_vocab is ignored, so a small one cannot fail pad_id. */
    tfm_config c;
    tfm_config_default(&c);
    c.enc_layers = 0;
    c.src_vocab = 0;
    c.pad_id = 5;
    CHECK(tfm_config_validate(&c) == TFM_OK, "decoder-only with src_vocab 0: %s",
          tfm_last_error());
}

/* Expects from_json to fail with `want` and leave the config untouched; the
 * message must contain every string of the NULL-terminated list. */
static void expect_json(const char *json, tfm_status want, const char *const *needles) {
    tfm_config c, before;
    tfm_config_default(&c);
    before = c;
    tfm_status s = tfm_config_from_json(&c, json, "config.json");
    const char *msg = tfm_last_error();
    CHECK(s == want, "%s: status %s, want %s (%s)", json, tfm_status_name(s),
          tfm_status_name(want), msg);
    CHECK(memcmp(&c, &before, sizeof c) == 0, "%s: a failed parse changed the config", json);
    CHECK(strncmp(msg, "config.json: ", 13) == 0, "%s: message \"%s\" does not name the origin",
          json, msg);
    for (; needles && *needles; needles++)
        CHECK(strstr(msg, *needles) != NULL, "%s: message \"%s\" lacks \"%s\"", json, msg,
              *needles);
    show(json);
}

#define BAD_JSON(json, status, ...)                                                          \
    do {                                                                                     \
        const char *const n_[] = {__VA_ARGS__, NULL};                                        \
        expect_json(json, status, n_);                                                       \
    } while (0)

static void test_json(void) {
    /* Unknown keys, with a suggestion when one is close. */
    BAD_JSON("{\"d_modle\": 512}", TFM_ERR_INVALID, "unknown key \"d_modle\"",
             "did you mean \"d_model\"");
    BAD_JSON("{\"d-model\": 512}", TFM_ERR_INVALID, "unknown key \"d-model\"", "\"d_model\"");
    BAD_JSON("{\"D_MODEL\": 512}", TFM_ERR_INVALID, "unknown key \"D_MODEL\"");
    BAD_JSON("{\"heads\": 8, \"version\": 1}", TFM_ERR_INVALID, "unknown key \"version\"");
    BAD_JSON("{\"\": 1}", TFM_ERR_INVALID, "unknown key \"\"");
    BAD_JSON("{\"a\\nb\\u0001\": 1}", TFM_ERR_INVALID, "unknown key \"a\\x0ab\\x01\"");
    BAD_JSON("{\"heads\": 8, \"heads\": 4}", TFM_ERR_INVALID, "\"heads\"", "more than once");
    /* Wrong types, named by key. */
    BAD_JSON("{\"heads\": \"8\"}", TFM_ERR_INVALID, "key \"heads\": expected an integer, got string");
    BAD_JSON("{\"heads\": 3.5}", TFM_ERR_INVALID, "key \"heads\": expected an integer, got 3.5");
    BAD_JSON("{\"heads\": true}", TFM_ERR_INVALID, "key \"heads\"", "got boolean");
    BAD_JSON("{\"heads\": null}", TFM_ERR_INVALID, "key \"heads\"", "got null");
    BAD_JSON("{\"heads\": [8]}", TFM_ERR_INVALID, "key \"heads\"", "got array");
    BAD_JSON("{\"heads\": {\"n\": 8}}", TFM_ERR_INVALID, "key \"heads\"", "got object");
    BAD_JSON("{\"d_model\": 1e20}", TFM_ERR_INVALID, "key \"d_model\"", "out of range");
    BAD_JSON("{\"d_model\": 2147483648}", TFM_ERR_INVALID, "key \"d_model\"", "out of range");
    BAD_JSON("{\"d_model\": -2147483649}", TFM_ERR_INVALID, "key \"d_model\"", "out of range");
    BAD_JSON("{\"d_model\": 1e400}", TFM_ERR_INVALID, "key \"d_model\"", "out of range");
    BAD_JSON("{\"dropout\": \"0.1\"}", TFM_ERR_INVALID, "key \"dropout\": expected a number, got string");
    BAD_JSON("{\"dropout\": false}", TFM_ERR_INVALID, "key \"dropout\"", "got boolean");
    BAD_JSON("{\"ln_eps\": 1e39}", TFM_ERR_INVALID, "key \"ln_eps\"", "out of range for a float");
    BAD_JSON("{\"ln_eps\": -1e300}", TFM_ERR_INVALID, "key \"ln_eps\"", "out of range");
    BAD_JSON("{\"activation\": 1}", TFM_ERR_INVALID, "key \"activation\": expected a string",
             "got number");
    BAD_JSON("{\"activation\": \"swish\"}", TFM_ERR_INVALID, "key \"activation\"", "\"swish\"",
             "\"relu\", \"gelu\"");
    BAD_JSON("{\"activation\": \"RELU\"}", TFM_ERR_INVALID, "key \"activation\"", "\"RELU\"");
    BAD_JSON("{\"norm\": \"middle\"}", TFM_ERR_INVALID, "key \"norm\"", "\"post\", \"pre\"");
    BAD_JSON("{\"positions\": \"alibi\"}", TFM_ERR_INVALID, "key \"positions\"", "\"rope\"");
    BAD_JSON("{\"share\": \"encoder\"}", TFM_ERR_INVALID, "key \"share\"", "\"decoder\"");
    BAD_JSON("{\"share\": null}", TFM_ERR_INVALID, "key \"share\"", "got null");
    BAD_JSON("{\"embed_scale\": 2}", TFM_ERR_INVALID, "key \"embed_scale\"", "got 2");
    BAD_JSON("{\"embed_scale\": \"true\"}", TFM_ERR_INVALID, "key \"embed_scale\"", "got string");
    /* The first bad key stops the parse and nothing is applied. */
    BAD_JSON("{\"heads\": 4, \"d_ff\": \"x\"}", TFM_ERR_INVALID, "key \"d_ff\"");
    /* Malformed JSON names the origin and the position. */
    BAD_JSON("", TFM_ERR_FORMAT, "malformed JSON", "empty");
    BAD_JSON("   \n ", TFM_ERR_FORMAT, "malformed JSON", "empty");
    BAD_JSON("{", TFM_ERR_FORMAT, "malformed JSON", "line 1", "end of input");
    BAD_JSON("{\"heads\": 8,}", TFM_ERR_FORMAT, "malformed JSON", "line 1", "8,}");
    BAD_JSON("{\"heads\": 8} x", TFM_ERR_FORMAT, "malformed JSON", "line 1, column 14", "} x");
    BAD_JSON("{\n  \"heads\": 8\n  \"d_ff\": 1\n}", TFM_ERR_FORMAT, "line 3, column 3",
             "\"d_ff\": 1");
    BAD_JSON("{\"heads\": 8,\n\"dropout\": .1}", TFM_ERR_FORMAT, "line 2", ".1}");
    BAD_JSON("{'heads': 8}", TFM_ERR_FORMAT, "malformed JSON", "line 1");
    BAD_JSON("{\"heads\": NaN}", TFM_ERR_FORMAT, "malformed JSON");
    BAD_JSON("{\"heads\": 8} {}", TFM_ERR_FORMAT, "malformed JSON");
    /* Valid JSON that is not an object. */
    BAD_JSON("[1, 2]", TFM_ERR_FORMAT, "expected a JSON object", "array");
    BAD_JSON("42", TFM_ERR_FORMAT, "expected a JSON object", "number");
    BAD_JSON("null", TFM_ERR_FORMAT, "expected a JSON object", "null");

    /* A NULL origin is reported as "<string>". */
    tfm_config c;
    tfm_config_default(&c);
    CHECK(tfm_config_from_json(&c, "{\"x\": 1}", NULL) == TFM_ERR_INVALID &&
              strstr(tfm_last_error(), "<string>") != NULL,
          "NULL origin: \"%s\"", tfm_last_error());
}

/* Expects tfm_config_set(name, value) to fail with TFM_ERR_INVALID, leave the
 * config as it was, and mention every needle. */
static void expect_flag(const char *name, const char *value, const char *const *needles) {
    tfm_config c, before;
    tfm_config_default(&c);
    before = c;
    tfm_status s = tfm_config_set(&c, name, value);
    const char *msg = tfm_last_error();
    CHECK(s == TFM_ERR_INVALID, "--%s %s: status %s, want invalid", name, value ? value : "(null)",
          tfm_status_name(s));
    CHECK(memcmp(&c, &before, sizeof c) == 0, "--%s %s: a failed set changed the config", name,
          value ? value : "(null)");
    for (; needles && *needles; needles++)
        CHECK(strstr(msg, *needles) != NULL, "--%s %s: message \"%s\" lacks \"%s\"", name,
              value ? value : "(null)", msg, *needles);
    char what[96];
    snprintf(what, sizeof what, "--%s %s", name, value ? value : "(null)");
    show(what);
}

#define BAD_FLAG(name, value, ...)                                                           \
    do {                                                                                     \
        const char *const n_[] = {__VA_ARGS__, NULL};                                        \
        expect_flag(name, value, n_);                                                        \
    } while (0)

static void test_flags(void) {
    BAD_FLAG("d-modle", "512", "--d-modle", "did you mean --d-model");
    BAD_FLAG("layers", "6", "unknown", "--layers");
    BAD_FLAG("", "6", "unknown");
    BAD_FLAG("--d-model", "512", "unknown");
    BAD_FLAG("a-very-long-flag-name-that-is-not-anything-at-all-really", "1", "unknown");
    BAD_FLAG("heads", NULL, "--heads", "missing");
    /* Integers: the whole string, decimal, in range. */
    BAD_FLAG("heads", "12x", "--heads", "\"12x\"", "not an integer");
    BAD_FLAG("heads", "", "--heads", "not an integer");
    BAD_FLAG("heads", " 12", "--heads", "not an integer");
    BAD_FLAG("heads", "12 ", "--heads", "not an integer");
    BAD_FLAG("d_model", "3.5", "--d_model", "not an integer");
    BAD_FLAG("d-model", "1e3", "--d-model", "not an integer");
    BAD_FLAG("d-model", "0x200", "--d-model", "not an integer");
    BAD_FLAG("d-model", "five", "--d-model", "\"five\"");
    BAD_FLAG("d-ff", "99999999999", "--d-ff", "out of range");
    BAD_FLAG("d-ff", "-99999999999", "--d-ff", "out of range");
    BAD_FLAG("d-ff", "2147483648", "--d-ff", "out of range");
    BAD_FLAG("vocab", "32k", "--vocab", "\"32k\"");
    /* Floats: the whole string, finite, in float range. */
    BAD_FLAG("dropout", "0.1x", "--dropout", "\"0.1x\"", "not a number");
    BAD_FLAG("dropout", "", "--dropout", "not a number");
    BAD_FLAG("dropout", "abc", "--dropout", "not a number");
    BAD_FLAG("dropout", " 0.1", "--dropout", "not a number");
    BAD_FLAG("dropout", "nan", "--dropout", "not a finite");
    BAD_FLAG("ln-eps", "inf", "--ln-eps", "not a finite");
    BAD_FLAG("ln-eps", "-infinity", "--ln-eps", "not a finite");
    BAD_FLAG("rope-theta", "1e999", "--rope-theta", "not a finite");
    BAD_FLAG("rope-theta", "1e39", "--rope-theta", "not a finite");
    /* Booleans and enumerations: exact names. */
    BAD_FLAG("embed-scale", "yes", "--embed-scale", "\"yes\"");
    BAD_FLAG("embed-scale", "2", "--embed-scale", "\"2\"");
    BAD_FLAG("embed-scale", "TRUE", "--embed-scale");
    BAD_FLAG("activation", "swish", "--activation", "\"swish\"", "\"gelu\"");
    BAD_FLAG("activation", "RELU", "--activation");
    BAD_FLAG("norm", "", "--norm", "\"pre\"");
    BAD_FLAG("positions", "alibi", "--positions", "\"sinusoidal\"", "\"learned\"", "\"rope\"",
             "\"none\"");
    BAD_FLAG("share", "2", "--share", "\"all\"");
}

static int write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static void expect_load(const char *path, tfm_status want, const char *needle) {
    tfm_config c, before;
    tfm_config_default(&c);
    before = c;
    tfm_status s = tfm_config_load(&c, path);
    const char *msg = tfm_last_error();
    CHECK(s == want, "load %s: status %s, want %s (%s)", path, tfm_status_name(s),
          tfm_status_name(want), msg);
    CHECK(strstr(msg, path) != NULL, "load %s: message \"%s\" does not name the path", path, msg);
    CHECK(!needle || strstr(msg, needle), "load %s: message \"%s\" lacks \"%s\"", path, msg,
          needle);
    CHECK(memcmp(&c, &before, sizeof c) == 0, "load %s: a failed load changed the config", path);
    show("load");
}

static void test_files(void) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/tfm_test_bad_config_XXXXXX", tfm_test_env("TMPDIR", "/tmp"));
    if (mkdtemp(dir) == NULL) {
        CHECK(0, "mkdtemp %s failed", dir);
        return;
    }
    char missing[320], bad[320], unknown[320], big[320], nul[320], locked[320], saved[320],
        tmp[330], nodir[320];
    snprintf(missing, sizeof missing, "%s/missing.json", dir);
    snprintf(bad, sizeof bad, "%s/bad.json", dir);
    snprintf(unknown, sizeof unknown, "%s/unknown.json", dir);
    snprintf(big, sizeof big, "%s/big.json", dir);
    snprintf(nul, sizeof nul, "%s/nul.json", dir);
    snprintf(locked, sizeof locked, "%s/locked.json", dir);
    snprintf(saved, sizeof saved, "%s/subdir", dir);
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/config.json", dir);

    expect_load(missing, TFM_ERR_IO, "cannot open");
    expect_load(dir, TFM_ERR_IO, NULL); /* a directory */

    const char *text = "{\n  \"heads\": 8,\n  \"d_ff\" 2048\n}\n";
    CHECK(write_file(bad, text, strlen(text)), "write %s", bad);
    expect_load(bad, TFM_ERR_FORMAT, "line 3, column 10");

    text = "{\"d_modle\": 512}";
    CHECK(write_file(unknown, text, strlen(text)), "write %s", unknown);
    expect_load(unknown, TFM_ERR_INVALID, "unknown key \"d_modle\"");

    /* Larger than any configuration: refused before parsing. */
    size_t n = (1 << 20) + 10;
    char *blob = malloc(n);
    CHECK(blob != NULL, "malloc");
    if (blob) {
        memset(blob, ' ', n);
        blob[0] = '{';
        blob[n - 1] = '}';
        CHECK(write_file(big, blob, n), "write %s", big);
        expect_load(big, TFM_ERR_FORMAT, "larger than");
        free(blob);
    }

    CHECK(write_file(nul, "{}\0{}", 5), "write %s", nul);
    expect_load(nul, TFM_ERR_FORMAT, "NUL");

    /* Unreadable file: meaningless as root, who reads anything. */
    CHECK(write_file(locked, "{}", 2), "write %s", locked);
    chmod(locked, 0);
    if (access(locked, R_OK) != 0) expect_load(locked, TFM_ERR_IO, "cannot open");
    else printf("  (running as root: unreadable-file check skipped)\n");

    /* Saving into a missing directory, and onto a directory. */
    tfm_config c;
    tfm_config_default(&c);
    tfm_status s = tfm_config_save(&c, nodir);
    CHECK(s == TFM_ERR_IO && strstr(tfm_last_error(), nodir), "save %s: %s (%s)", nodir,
          tfm_status_name(s), tfm_last_error());
    show("save into a missing directory");
    CHECK(mkdir(saved, 0700) == 0, "mkdir %s", saved);
    s = tfm_config_save(&c, saved);
    CHECK(s == TFM_ERR_IO && strstr(tfm_last_error(), saved), "save onto a directory: %s (%s)",
          tfm_status_name(s), tfm_last_error());
    snprintf(tmp, sizeof tmp, "%s.tmp", saved);
    CHECK(access(tmp, F_OK) != 0, "failed save left %s behind", tmp);
    show("save onto a directory");

    remove(bad);
    remove(unknown);
    remove(big);
    remove(nul);
    remove(locked);
    remove(tmp);
    rmdir(saved);
    rmdir(dir);
}

int main(void) {
    verbose = tfm_test_env("TFM_TEST_VERBOSE", NULL) != NULL;
    test_validate();
    test_json();
    test_flags();
    test_files();
    return tfm_test_finish();
}
