/*
 * test_bad_bpe.c: bad input to the BPE tokenizer gives a clear error and a
 * non-zero status, never a crash.
 *
 *   - invalid UTF-8 through the CLI (stdin and files, encode and learn): the
 *     message names <stdin> or the file and the line;
 *   - bad tokens for decode; usage errors; --help;
 *   - malformed model files: every truncation of a valid file, a list of
 *     hand-made corruptions (each message must name the file and the line),
 *     versions other than v1 and v2, and random byte flips;
 *   - `bpe learn` writes a v2 model.
 * The CLI parts need TFM_CLI (set by CTest) and are skipped without it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/rng.h"
#include "core/status.h"
#include "test_util.h"
#include "text/bpe.h"

static const char TINY[] = "the cat sat on the mat\n"
                           "the dog sat on the log\n"
                           "Der Hund saß auf der Matte.\n"
                           "Die Katze saß auf dem Baum.\n"
                           "the cat and the dog sat together\n";

static char tmpdir[64];
static char model_path[128];
static char *model_text;
static size_t model_len;

static void write_file(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fwrite(data, 1, len, f);
    fclose(f);
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

/* Loads `text` from a file; expects TFM_ERR_FORMAT whose message holds `want`
 * (when not NULL) and the file's path. */
static void expect_bad_model(const char *name, const char *text, const char *want) {
    char path[160];
    snprintf(path, sizeof path, "%s/bad.model", tmpdir);
    write_file(path, text, strlen(text));
    tfm_bpe *b = NULL;
    tfm_status st = tfm_bpe_load(path, &b);
    const char *msg = tfm_last_error();
    CHECK(st == TFM_ERR_FORMAT && !b, "%s: status %d (want format) '%s'", name, st, msg);
    CHECK(strstr(msg, path) != NULL, "%s: message does not name the file: '%s'", name, msg);
    if (want) CHECK(strstr(msg, want) != NULL, "%s: message '%s' lacks '%s'", name, msg, want);
    tfm_bpe_free(b);
}

/* The tiny model's text with the first occurrence of `from` replaced. */
static char *model_with(const char *from, const char *to) {
    const char *at = strstr(model_text, from);
    TFM_ASSERT(at);
    size_t fl = strlen(from), tl = strlen(to), pre = (size_t)(at - model_text);
    char *s = malloc(model_len - fl + tl + 1);
    memcpy(s, model_text, pre);
    memcpy(s + pre, to, tl);
    memcpy(s + pre + tl, at + fl, model_len - pre - fl + 1);
    return s;
}

static void test_model_files(void) {
    /* Every proper prefix of a valid file is an error. */
    char path[160];
    snprintf(path, sizeof path, "%s/prefix.model", tmpdir);
    size_t bad_prefixes = 0;
    for (size_t len = 0; len < model_len; len++) {
        write_file(path, model_text, len);
        tfm_bpe *b = NULL;
        tfm_status st = tfm_bpe_load(path, &b);
        if (st != TFM_ERR_FORMAT || b || !strstr(tfm_last_error(), path)) {
            if (bad_prefixes++ < 3)
                printf("  prefix of %zu bytes: status %d '%s'\n", len, st, tfm_last_error());
        }
        tfm_bpe_free(b);
    }
    CHECK(bad_prefixes == 0, "%zu of %zu truncations were not clean format errors", bad_prefixes,
          model_len);
    remove(path);

    expect_bad_model("empty", "", "empty file");
    expect_bad_model("magic", "hello\n", ":1: not a transformer.c BPE model");
    expect_bad_model("version", "transformer.c bpe v3\nvocab_size 300\n",
                     ":1: unsupported BPE model version 'transformer.c bpe v3' (this build reads "
                     "v1 to v2)");
    expect_bad_model("version 0", "transformer.c bpe v0\nvocab_size 300\n", ":1: unsupported");
    expect_bad_model("version 12", "transformer.c bpe v12\nvocab_size 300\n", ":1: unsupported");
    expect_bad_model("no version", "transformer.c bpe v\nvocab_size 300\n", ":1: unsupported");
    expect_bad_model("other header", "transformer.c bpf v2\n", ":1: not a transformer.c BPE model");

    /* The same model under a v1 header is a valid v1 model. */
    CHECK(!strncmp(model_text, "transformer.c bpe v2\n", 21), "learned model is not v2");
    char *s;
    s = model_with("transformer.c bpe v2\n", "transformer.c bpe v1\n");
    write_file(path, s, strlen(s));
    tfm_bpe *v1 = NULL;
    CHECK(tfm_bpe_load(path, &v1) == TFM_OK && v1 && tfm_bpe_version(v1) == 1,
          "v1 header: %s", tfm_last_error());
    tfm_bpe_free(v1);
    remove(path);
    free(s);
    s = model_with("transformer.c bpe v2\n", "transformer.c bpe v1 \n");
    expect_bad_model("version trailing space", s, ":1: unsupported");
    free(s);
    expect_bad_model("binary", "\x7f" "ELF\x02\x01\x01\0\0\0\n\0\0", ":1:");
    s = model_with("vocab_size 306", "vocab_size abc");
    expect_bad_model("vocab number", s, ":2: vocab_size: 'abc' is not a number");
    free(s);
    s = model_with("vocab_size 306", "vocab_size 99999999999999999999");
    expect_bad_model("vocab overflow", s, ":2:");
    free(s);
    s = model_with("vocab_size 306", "vocab_size 307");
    expect_bad_model("vocab mismatch", s, ":2: vocab_size 307, but");
    free(s);
    s = model_with("chars 25", "chars 999999999");
    expect_bad_model("chars count", s, ":3:");
    free(s);
    s = model_with("U+0074 t", "X+0074 t");
    expect_bad_model("char syntax", s, ":5: expected a character 'U+XXXX'");
    free(s);
    s = model_with("U+0074 t", "U+0074 x");
    expect_bad_model("char rendering", s, ":5: 'x' is not U+0074");
    free(s);
    s = model_with("U+0074 t", "U+0061 a");
    expect_bad_model("duplicate char", s, ":6: character U+0061 listed twice");
    free(s);
    s = model_with("U+0074 t", "U+D800");
    expect_bad_model("surrogate", s, ":5:");
    free(s);
    s = model_with("U+0074 t", "U+110000");
    expect_bad_model("beyond Unicode", s, ":5:");
    free(s);
    s = model_with("U+2581 ▁", "U+0077 w");
    expect_bad_model("no meta", s, "lack U+2581");
    free(s);
    s = model_with("merges 21", "merges x");
    expect_bad_model("merges count", s, ":29: merges: 'x' is not a number");
    free(s);
    s = model_with("merges 21", "merges 22");
    expect_bad_model("merges too many", s, ":51: expected a merge");
    free(s);
    s = model_with("merges 21", "merges 20");
    expect_bad_model("merges too few", s, ":50: expected 'end'");
    free(s);
    s = model_with("\na t\n", "\nq t\n");
    expect_bad_model("unknown piece", s, ":30: merge 'q t': 'q' is not a character");
    free(s);
    s = model_with("\na t\n", "\na ▁the\n");
    expect_bad_model("later piece", s, ":30:");
    free(s);
    s = model_with("\na t\n", "\na t x\n");
    expect_bad_model("three pieces", s, ":30: expected a merge 'LEFT RIGHT'");
    free(s);
    s = model_with("\na t\n", "\nat\n");
    expect_bad_model("one piece", s, ":30: expected a merge");
    free(s);
    s = model_with("\n▁ t\n", "\na t\n");
    expect_bad_model("duplicate merge", s, ":31: merge 'a t' listed twice");
    free(s);
    s = model_with("\nend\n", "\nend\nmore\n");
    expect_bad_model("after end", s, ":52: unexpected text after 'end'");
    free(s);
    s = model_with("\nend\n", "\nEND\n");
    expect_bad_model("no end", s, ":51: expected 'end'");
    free(s);
    s = model_with("\nend\n", "\nend");
    expect_bad_model("no final newline", s, ":51: truncated");
    free(s);
    expect_bad_model("reserved piece",
                     "transformer.c bpe v1\nvocab_size 266\nchars 4\nU+2581 ▁\nU+003C <\n"
                     "U+0073 s\nU+003E >\nmerges 2\n< s\n<s >\nend\n",
                     ":10: merge '<s >' makes a reserved piece");
    expect_bad_model("space char", "transformer.c bpe v1\nvocab_size 262\nchars 2\nU+2581 ▁\nU+0020\n",
                     ":5:");

    tfm_bpe *b = NULL;
    tfm_status st = tfm_bpe_load("/nonexistent/dir/bpe.model", &b);
    CHECK(st == TFM_ERR_IO && !b && strstr(tfm_last_error(), "/nonexistent/dir/bpe.model"),
          "missing file: status %d '%s'", st, tfm_last_error());
    st = tfm_bpe_load(tmpdir, &b);
    CHECK(st != TFM_OK && !b, "loading a directory succeeded");

    /* Random byte flips: an error or a model, never a crash or a leak. */
    snprintf(path, sizeof path, "%s/flip.model", tmpdir);
    char *buf = malloc(model_len + 1);
    tfm_rng r;
    tfm_rng_init(&r, 1234, 0);
    int loaded = 0, rejected = 0, unnamed = 0;
    for (int i = 0; i < 300; i++) {
        memcpy(buf, model_text, model_len);
        int flips = 1 + (int)(tfm_rng_next(&r) % 3);
        for (int k = 0; k < flips; k++)
            buf[tfm_rng_next(&r) % model_len] = (char)(tfm_rng_next(&r) & 0xFF);
        write_file(path, buf, model_len);
        b = NULL;
        st = tfm_bpe_load(path, &b);
        if (st == TFM_OK) {
            loaded++;
            int32_t *ids = NULL;
            size_t n = 0;
            const char *t = "the cat saß on the mat";
            char *back = NULL;
            CHECK(tfm_bpe_encode(b, t, strlen(t), &ids, &n) == TFM_OK &&
                      tfm_bpe_decode(b, ids, n, &back, NULL) == TFM_OK && !strcmp(back, t),
                  "a corrupted model that loads must still round-trip");
            free(ids);
            free(back);
            tfm_bpe_free(b);
        } else {
            rejected++;
            unnamed += !strstr(tfm_last_error(), path);
        }
    }
    CHECK(unnamed == 0, "%d errors did not name the file", unnamed);
    printf("random flips: %d rejected, %d still valid\n", rejected, loaded);
    free(buf);
    remove(path);
    snprintf(path, sizeof path, "%s/bad.model", tmpdir);
    remove(path);
}

/* Runs cmd (stderr folded into stdout); returns the exit status. */
static int run(const char *cmd, char *out, size_t cap) {
    char full[2048];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    return tfm_test_run(full, out, cap);
}

static void test_cli(void) {
    const char *cli = tfm_test_env("TFM_CLI", NULL);
    if (!cli || access(cli, X_OK)) {
        printf("SKIP CLI part: TFM_CLI is not set to the transformer binary\n");
        return;
    }
    char cmd[2048], out[8192], path[160], path2[160];
    int rc;

    /* Invalid UTF-8 on stdin: line 3. */
    snprintf(cmd, sizeof cmd, "printf 'good\\nalso good\\nbad \\377 byte\\nnot reached\\n' | %s bpe encode -m %s",
             cli, model_path);
    rc = run(cmd, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "<stdin>:3:") && strstr(out, "invalid UTF-8"),
          "encode stdin: rc %d '%s'", rc, out);
    CHECK(!strstr(out, "not reached"), "encode went on after the error");

    /* Invalid UTF-8 in a file argument: line 2, a truncated sequence. */
    snprintf(path, sizeof path, "%s/bad.txt", tmpdir);
    write_file(path, "fine\ncaf\xC3\n", 10);
    snprintf(cmd, sizeof cmd, "%s bpe encode -m %s %s", cli, model_path, path);
    rc = run(cmd, out, sizeof out);
    char want[256];
    snprintf(want, sizeof want, "%s:2:", path);
    CHECK(rc != 0 && strstr(out, want) && strstr(out, "invalid UTF-8"), "encode file: rc %d '%s'",
          rc, out);

    /* Invalid UTF-8 in learning text: line 4 of the second file; no model. */
    snprintf(path2, sizeof path2, "%s/bad2.txt", tmpdir);
    write_file(path2, "one\ntwo\nthree\nfour \xED\xA0\x80 surrogate\n", 33);
    snprintf(want, sizeof want, "%s/never.model", tmpdir);
    snprintf(path, sizeof path, "%s/tiny.txt", tmpdir);
    write_file(path, TINY, strlen(TINY));
    snprintf(cmd, sizeof cmd, "%s bpe learn -q --vocab-size 300 -o %s %s %s", cli, want, path,
             path2);
    rc = run(cmd, out, sizeof out);
    char want2[256];
    snprintf(want2, sizeof want2, "%s:4:", path2);
    CHECK(rc != 0 && strstr(out, want2) && strstr(out, "invalid UTF-8"), "learn: rc %d '%s'", rc,
          out);
    CHECK(access(want, F_OK) != 0, "learn wrote a model despite the error");

    /* Decode: an unknown piece on line 2; an id out of range; a bad id. */
    snprintf(cmd, sizeof cmd, "printf '▁the ▁cat\\n▁the ▁zebra\\n' | %s bpe decode -m %s", cli,
             model_path);
    rc = run(cmd, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "<stdin>:2:") && strstr(out, "unknown piece '▁zebra'"),
          "decode unknown piece: rc %d '%s'", rc, out);
    snprintf(cmd, sizeof cmd, "printf '288 305\\n288 306\\n' | %s bpe decode --ids -m %s", cli,
             model_path);
    rc = run(cmd, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "<stdin>:2:") && strstr(out, "'306' is not an id"),
          "decode id out of range: rc %d '%s'", rc, out);
    snprintf(cmd, sizeof cmd, "printf '288 x5\\n' | %s bpe decode --ids -m %s", cli, model_path);
    rc = run(cmd, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "<stdin>:1:") && strstr(out, "'x5'"), "decode bad id: rc %d '%s'",
          rc, out);

    /* A malformed or missing model. */
    snprintf(path, sizeof path, "%s/trunc.model", tmpdir);
    write_file(path, model_text, model_len / 2);
    snprintf(cmd, sizeof cmd, "echo hi | %s bpe encode -m %s", cli, path);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, path) && strstr(out, "truncated"), "truncated model: rc %d '%s'",
          rc, out);
    snprintf(cmd, sizeof cmd, "echo hi | %s bpe decode -m %s/missing.model", cli, tmpdir);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "missing.model") && strstr(out, "cannot open"),
          "missing model: rc %d '%s'", rc, out);

    /* Usage errors exit 2; --help exits 0 and lists every flag with its default. */
    snprintf(cmd, sizeof cmd, "%s bpe learn --vocab-size 300 %s/tiny.txt", cli, tmpdir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "-o FILE is required"), "learn without -o: '%s'",
          out);
    snprintf(cmd, sizeof cmd, "%s bpe learn --vocab-size 12x -o %s/x.model %s/tiny.txt", cli,
             tmpdir, tmpdir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "malformed value '12x'"),
          "bad vocab size: '%s'", out);
    snprintf(cmd, sizeof cmd, "%s bpe learn --vocab-size 100 -o %s/x.model %s/tiny.txt", cli,
             tmpdir, tmpdir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "vocab_size 100"), "vocab size 100: '%s'",
          out);
    snprintf(cmd, sizeof cmd, "echo hi | %s bpe encode", cli);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "-m FILE is required"),
          "encode without -m: '%s'", out);
    snprintf(cmd, sizeof cmd, "%s bpe encode -m %s --frobnicate", cli, model_path);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "unknown option '--frobnicate'"),
          "unknown option: '%s'", out);
    snprintf(cmd, sizeof cmd, "%s bpe transmogrify", cli);
    CHECK(run(cmd, out, sizeof out) == 2, "unknown subcommand accepted");
    const char *helps[][6] = {
        {"learn", "--vocab-size N", "-o, --output FILE", "--min-frequency N", "--char-coverage F",
         "-q, --quiet"},
        {"encode", "-m, --model FILE", "--ids", "-h, --help", NULL, NULL},
        {"decode", "-m, --model FILE", "--ids", "-h, --help", NULL, NULL},
    };
    for (int h = 0; h < 3; h++) {
        snprintf(cmd, sizeof cmd, "%s bpe %s --help", cli, helps[h][0]);
        rc = run(cmd, out, sizeof out);
        CHECK(rc == 0 && strstr(out, "usage: transformer bpe"), "%s --help: rc %d", helps[h][0],
              rc);
        for (int f = 1; f < 6 && helps[h][f]; f++) {
            char flag[64];
            snprintf(flag, sizeof flag, "\n  %s ", helps[h][f]);
            const char *line = strstr(out, flag);
            const char *eol = line ? strchr(line + 1, '\n') : NULL;
            /* One line per flag, with its default (or "required"). */
            int has_default = line && !strncmp(helps[h][f], "-h", 2);
            for (const char *p = line; p && eol && p < eol; p++)
                if (!strncmp(p, "default", 7) || !strncmp(p, "required", 8)) has_default = 1;
            CHECK(line && has_default, "%s --help: flag '%s' missing or without its default",
                  helps[h][0], helps[h][f]);
        }
    }

    /* A good round trip through the CLI, for contrast: exit 0, exact. */
    snprintf(path, sizeof path, "%s/good.txt", tmpdir);
    const char good[] = "  the cat\tsaß ▁ 中文 😀  \n\nDer Hund.\n";
    write_file(path, good, strlen(good));
    snprintf(cmd, sizeof cmd,
             "%s bpe encode -m %s < %s | %s bpe decode -m %s | cmp - %s && "
             "%s bpe encode --ids -m %s < %s | %s bpe decode --ids -m %s | cmp - %s && echo SAME",
             cli, model_path, path, cli, model_path, path, cli, model_path, path, cli, model_path,
             path);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "SAME"), "CLI round trip: rc %d '%s'", rc, out);

    /* `bpe learn` writes v2: the same file as the library's default. */
    snprintf(path, sizeof path, "%s/tiny.txt", tmpdir);
    write_file(path, TINY, strlen(TINY));
    snprintf(path2, sizeof path2, "%s/cli.model", tmpdir);
    snprintf(cmd, sizeof cmd, "%s bpe learn -q --vocab-size 400 -o %s %s", cli, path2, path);
    rc = run(cmd, out, sizeof out);
    size_t clen = 0;
    char *cli_model = rc == 0 ? read_all(path2, &clen) : NULL;
    CHECK(cli_model && clen == model_len && !memcmp(cli_model, model_text, clen),
          "bpe learn: rc %d, the model differs from tfm_bpe_learn's: '%s'", rc, out);
    free(cli_model);
    remove(path2);

    snprintf(path2, sizeof path2, "%s/bad2.txt", tmpdir);
    snprintf(path, sizeof path, "%s/bad.txt", tmpdir);
    remove(path);
    remove(path2);
    snprintf(path, sizeof path, "%s/tiny.txt", tmpdir);
    remove(path);
    snprintf(path, sizeof path, "%s/trunc.model", tmpdir);
    remove(path);
    snprintf(path, sizeof path, "%s/good.txt", tmpdir);
    remove(path);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tfm_test_bad_bpe_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    tfm_bpe_params p;
    tfm_bpe_default_params(&p);
    p.vocab_size = 400;
    tfm_bpe *b = NULL;
    if (tfm_bpe_learn_text(&p, TINY, strlen(TINY), &b) != TFM_OK) {
        fprintf(stderr, "learn: %s\n", tfm_last_error());
        return 1;
    }
    snprintf(model_path, sizeof model_path, "%s/tiny.model", tmpdir);
    if (tfm_bpe_save(b, model_path) != TFM_OK) {
        fprintf(stderr, "save: %s\n", tfm_last_error());
        return 1;
    }
    tfm_bpe_free(b);
    model_text = read_all(model_path, &model_len);
    CHECK(model_text && model_len > 100, "read back %s", model_path);
    if (model_text) {
        test_model_files();
        test_cli();
    }
    free(model_text);
    remove(model_path);
    rmdir(tmpdir);
    return tfm_test_finish();
}
