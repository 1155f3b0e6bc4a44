/*
 * test_attention_html.c: the attention page (src/infer/attention_html.c).
 *
 * With a tiny random model and a tiny BPE learned in memory, for an
 * encoder-decoder, a decoder-only and an encoder-only model:
 *  - the page starts with <!DOCTYPE html>, every element is closed in order
 *    (a small tag parser), every '&' starts an entity, the whole is UTF-8;
 *  - one heatmap per layer x head for each kind of attention the model has,
 *    none for the others, each with exactly Tq*Tk <rect> cells and the
 *    expected Tq and Tk;
 *  - the averaged view (cross-attention for encoder-decoder) is present;
 *  - text with <&"> and control characters is escaped, invalid UTF-8 in
 *    header text becomes U+FFFD;
 *  - the save is atomic: errors leave an existing file untouched and no
 *    temporary file behind;
 *  - too long, empty and out-of-vocabulary inputs are clear errors;
 *  - the CLI (`transformer attention`, when TFM_CLI names a binary that has
 *    it): a page from a model directory, the model's own translation, exit 1
 *    for missing files / invalid UTF-8 / too long input, exit 2 for usage
 *    errors, --help listing every flag.
 */
#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "core/utf8.h"
#include "infer/attention_html.h"
#include "test_util.h"
#include "train/checkpoint.h"

static const char *TEXT =
    "a man rides a bike <&\"> .\n"
    "ein mann faehrt fahrrad <&\"> .\n"
    "a woman reads a book & a man rides .\n"
    "eine frau liest ein buch \" ein mann < > .\n"
    "the bike is red and the book is blue .\n";

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return s;
}

static int count(const char *s, const char *needle) {
    int n = 0;
    size_t k = strlen(needle);
    for (const char *p = strstr(s, needle); p; p = strstr(p + k, needle)) n++;
    return n;
}

static int void_element(const char *name, size_t n) {
    return (n == 4 && !strncmp(name, "meta", 4)) || (n == 2 && !strncmp(name, "br", 2));
}

/* Checks that tags nest properly (XML-style, plus HTML's void <meta>), and
 * that every '&' outside tags starts an entity. Returns 1 if well-formed. */
static int well_formed(const char *s, char *why, size_t cap) {
    const char *stack[256];
    size_t lens[256];
    int depth = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '&') {
            const char *q = p + 1;
            if (*q == '#') q++;
            while ((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || (*q >= 'A' && *q <= 'F')) q++;
            if (*q != ';' || q == p + 1) {
                snprintf(why, cap, "bare '&' at offset %ld", (long)(p - s));
                return 0;
            }
            continue;
        }
        if (*p == '>') {
            snprintf(why, cap, "bare '>' at offset %ld", (long)(p - s));
            return 0;
        }
        if (*p != '<') continue;
        if (!strncmp(p, "<!DOCTYPE", 9)) {
            p = strchr(p, '>');
            if (!p) break;
            continue;
        }
        int closing = p[1] == '/';
        const char *name = p + 1 + closing;
        size_t n = 0;
        while ((name[n] >= 'a' && name[n] <= 'z') || (name[n] >= 'A' && name[n] <= 'Z') ||
               (name[n] >= '0' && name[n] <= '9'))
            n++;
        if (n == 0) {
            snprintf(why, cap, "'<' not starting a tag at offset %ld: %.20s", (long)(p - s), p);
            return 0;
        }
        /* Find the end of the tag, skipping quoted attribute values. */
        const char *q = name + n;
        char quote = 0;
        for (; *q; q++) {
            if (quote) {
                if (*q == quote) quote = 0;
                else if (*q == '<') {
                    snprintf(why, cap, "'<' inside an attribute at offset %ld", (long)(q - s));
                    return 0;
                }
            } else if (*q == '"' || *q == '\'') {
                quote = *q;
            } else if (*q == '>') {
                break;
            }
        }
        if (!*q) {
            snprintf(why, cap, "unterminated tag at offset %ld", (long)(p - s));
            return 0;
        }
        int self_closing = q[-1] == '/';
        if (closing) {
            if (depth == 0 || lens[depth - 1] != n || strncmp(stack[depth - 1], name, n)) {
                snprintf(why, cap, "</%.*s> at offset %ld closes <%.*s>", (int)n, name, (long)(p - s),
                         depth ? (int)lens[depth - 1] : 0, depth ? stack[depth - 1] : "");
                return 0;
            }
            depth--;
        } else if (!self_closing && !void_element(name, n)) {
            if (depth == 256) {
                snprintf(why, cap, "nesting too deep");
                return 0;
            }
            stack[depth] = name;
            lens[depth++] = n;
            /* <style>: skip the CSS (it holds no '<' but does hold '>'). */
            if (n == 5 && !strncmp(name, "style", 5)) {
                const char *e = strstr(q, "</style>");
                if (!e) {
                    snprintf(why, cap, "unterminated <style>");
                    return 0;
                }
                q = e - 1;
            }
        }
        p = q;
    }
    if (depth) {
        snprintf(why, cap, "<%.*s> never closed", (int)lens[depth - 1], stack[depth - 1]);
        return 0;
    }
    return 1;
}

static int attr_int(const char *tag, const char *name) {
    char key[64];
    snprintf(key, sizeof key, " %s=\"", name);
    const char *p = strstr(tag, key);
    const char *end = strchr(tag, '>');
    if (!p || p > end) return -999;
    return atoi(p + strlen(key));
}

/* Checks every <svg class="CLS" data-kind="KIND"...>: the number of them, the
 * rows/cols they declare, and their <rect> count. */
static void check_maps(const char *html, const char *cls, const char *kind, int expect_n, int rows,
                       int cols, const char *name) {
    char open[96];
    snprintf(open, sizeof open, "<svg class=\"%s\" data-kind=\"%s\"", cls, kind);
    int n = 0, bad_shape = 0, bad_rects = 0;
    for (const char *p = strstr(html, open); p; p = strstr(p + 1, open)) {
        n++;
        int r = attr_int(p, "data-rows"), c = attr_int(p, "data-cols");
        if (r != rows || c != cols) bad_shape++;
        const char *end = strstr(p, "</svg>");
        if (!end) {
            bad_rects++;
            break;
        }
        int rects = 0;
        for (const char *q = strstr(p, "<rect"); q && q < end; q = strstr(q + 1, "<rect")) rects++;
        if (rects != rows * cols) {
            bad_rects++;
            fprintf(stderr, "%s: %s %s map has %d rects, expected %d\n", name, cls, kind, rects, rows * cols);
        }
    }
    CHECK(n == expect_n, "%s: %d %s maps of %s, expected %d", name, n, cls, kind, expect_n);
    CHECK(bad_shape == 0, "%s: %d %s maps of %s are not %d x %d", name, bad_shape, cls, kind, rows, cols);
    CHECK(bad_rects == 0, "%s: %d %s maps of %s have the wrong number of cells", name, bad_rects, cls, kind);
}

/* Files in dir whose name starts with prefix. */
static int files_with_prefix(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) n++;
    closedir(d);
    return n;
}

static tfm_config tiny_config(int enc, int dec, int V) {
    tfm_config c;
    tfm_config_default(&c);
    c.enc_layers = enc;
    c.dec_layers = dec;
    c.d_model = 16;
    c.heads = 2;
    c.d_ff = 24;
    c.max_positions = 24;
    c.src_vocab = c.tgt_vocab = V;
    c.share = enc && dec ? TFM_SHARE_ALL : TFM_SHARE_DECODER;
    return c;
}

static int32_t *encode(const tfm_bpe *bpe, const char *text, int *n) {
    int32_t *ids = NULL;
    size_t k = 0;
    CHECK(tfm_bpe_encode(bpe, text, strlen(text), &ids, &k) == TFM_OK, "encode: %s", tfm_last_error());
    *n = (int)k;
    return ids;
}

/* Writes the page of (src, tgt) for a model with enc/dec layers to path and
 * checks its structure; returns the page (free()) or NULL. */
static char *check_page(const char *name, const tfm_bpe *bpe, int enc, int dec, const char *src_text,
                        const char *tgt_text, const char *path) {
    tfm_config cfg = tiny_config(enc, dec, tfm_bpe_vocab_size(bpe));
    tfm_model m;
    CHECK(tfm_model_init(&m, &cfg, 7) == TFM_OK, "%s: init: %s", name, tfm_last_error());
    int S = 0, T = 0;
    int32_t *src = encode(bpe, src_text, &S);
    int32_t *tgt = tgt_text ? encode(bpe, tgt_text, &T) : NULL;
    tfm_attention_html_params p;
    tfm_attention_html_default_params(&p);
    p.model_name = "tiny <model> & co";
    p.source_text = src_text;
    p.target_text = tgt_text;
    p.target_note = "given";
    p.step = 42;
    tfm_status st = tfm_attention_html_save(&m, bpe, src, S, tgt, T, &p, path);
    CHECK(st == TFM_OK, "%s: save: %s", name, tfm_last_error());
    char *html = NULL;
    size_t len = 0;
    if (st == TFM_OK) {
        html = read_all(path, &len);
        CHECK(html != NULL, "%s: %s was not written", name, path);
    }
    if (html) {
        printf("%s: %zu bytes, S %d, T %d\n", name, len, S, T);
        CHECK(!strncmp(html, "<!DOCTYPE html>\n", 16), "%s: does not start with <!DOCTYPE html>", name);
        char why[160] = "";
        CHECK(well_formed(html, why, sizeof why), "%s: not well-formed: %s", name, why);
        CHECK(tfm_utf8_valid(html, len, NULL), "%s: not valid UTF-8", name);
        CHECK(count(html, "<svg") == count(html, "</svg>"), "%s: <svg> %d vs </svg> %d", name,
              count(html, "<svg"), count(html, "</svg>"));
        CHECK(strstr(html, "<script") == NULL && strstr(html, "http://") == strstr(html, "http://www.w3.org"),
              "%s: scripts or external references", name);
        int H = cfg.heads;
        int Td = dec ? (enc ? 1 + T : 1 + S + T) : 0;
        check_maps(html, "heatmap", "encoder", enc * H, S, S, name);
        check_maps(html, "heatmap", "decoder", dec * H, Td, Td, name);
        check_maps(html, "heatmap", "cross", enc && dec ? dec * H : 0, Td, S, name);
        const char *avg_kind = enc && dec ? "cross" : dec ? "decoder" : "encoder";
        int avg_layers = dec ? dec : enc;
        int avg_rows = enc && dec ? Td : dec ? Td : S, avg_cols = enc && dec ? S : dec ? Td : S;
        check_maps(html, "average", avg_kind, avg_layers > 1 ? 2 : 1, avg_rows, avg_cols, name);
        CHECK(strstr(html, "tiny &lt;model&gt; &amp; co (step 42)") != NULL, "%s: model name not escaped",
              name);
        if (dec) CHECK(strstr(html, "<title>&lt;s&gt; \xE2\x86\x92 &lt;s&gt;: ") != NULL, "%s: no <s> label", name);
    }
    free(src);
    free(tgt);
    tfm_model_free(&m);
    return html;
}

/* Runs `CLI attention ARGS` with stdout+stderr into out; returns the status. */
static int run_cli(const char *cli, const char *args, char *out, size_t cap) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' attention %s </dev/null 2>&1", cli, args);
    return tfm_test_run(cmd, out, cap);
}

/* The command line, on a model directory written here. Skipped when the
 * binary has no `attention` command (yet). */
static void check_cli(const tfm_bpe *bpe, const char *dir) {
    const char *cli = tfm_test_env("TFM_CLI", NULL);
    char out[8192], args[768];
    if (!cli || run_cli(cli, "--help", out, sizeof out) != 0) {
        printf("SKIP CLI part: TFM_CLI is not set or has no 'attention' command\n");
        return;
    }
    static const char *flags[] = {"--model", "--source", "--source-file", "--target", "--max-len", "--output",
                                  "--help"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        CHECK(strstr(out, flags[i]) != NULL, "--help does not list %s", flags[i]);
    CHECK(count(out, "(default") >= 5 && strstr(out, "(required)"), "--help does not give the defaults");

    char mdir[160], path[256], page[256];
    snprintf(mdir, sizeof mdir, "%s/model", dir);
    snprintf(page, sizeof page, "%s/cli.html", dir);
    CHECK(mkdir(mdir, 0700) == 0, "mkdir %s", mdir);
    tfm_config cfg = tiny_config(2, 2, tfm_bpe_vocab_size(bpe));
    tfm_model m;
    CHECK(tfm_model_init(&m, &cfg, 5) == TFM_OK, "init: %s", tfm_last_error());
    snprintf(path, sizeof path, "%s/model.safetensors", mdir);
    CHECK(tfm_checkpoint_save(&m, 7, path) == TFM_OK, "save weights: %s", tfm_last_error());
    tfm_model_free(&m);

    /* bpe.model missing: exit 1 naming it */
    snprintf(args, sizeof args, "--model '%s' --source 'ein mann' -o '%s'", mdir, page);
    int rc = run_cli(cli, args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "bpe.model") != NULL, "missing bpe.model: exit %d: %s", rc, out);

    snprintf(path, sizeof path, "%s/bpe.model", mdir);
    CHECK(tfm_bpe_save(bpe, path) == TFM_OK, "save bpe: %s", tfm_last_error());
    /* the model's own (greedy) translation */
    rc = run_cli(cli, args, out, sizeof out);
    CHECK(rc == 0, "translate + page: exit %d: %s", rc, out);
    char *html = read_all(page, NULL);
    CHECK(html && !strncmp(html, "<!DOCTYPE html>", 15), "CLI page missing");
    if (html) {
        CHECK(strstr(html, "greedy translation by the model") != NULL, "no translation note");
        CHECK(count(html, "<svg class=\"heatmap\" data-kind=\"cross\"") == 2 * cfg.heads, "CLI cross maps");
        CHECK(strstr(html, "(step 7)") != NULL, "no step in the header");
        free(html);
    }
    /* a given target */
    snprintf(args, sizeof args, "--model '%s' --source 'ein mann' --target 'a man' -o '%s'", mdir, page);
    rc = run_cli(cli, args, out, sizeof out);
    CHECK(rc == 0, "given target: exit %d: %s", rc, out);
    /* invalid UTF-8 */
    snprintf(args, sizeof args, "--model '%s' --source \"$(printf 'ab\\377cd')\" -o '%s'", mdir, page);
    rc = run_cli(cli, args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "UTF-8") != NULL, "invalid UTF-8: exit %d: %s", rc, out);
    /* too long: 30 words > max_positions 24 */
    snprintf(args, sizeof args, "--model '%s' --source \"$(printf 'ein %%.0s' $(seq 30))\" -o '%s'", mdir,
             page);
    rc = run_cli(cli, args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "max_positions") != NULL, "too long: exit %d: %s", rc, out);
    /* usage errors */
    snprintf(args, sizeof args, "--model '%s' --source x --bogus", mdir);
    rc = run_cli(cli, args, out, sizeof out);
    CHECK(rc == 2, "unknown flag: exit %d: %s", rc, out);
    rc = run_cli(cli, "--source x", out, sizeof out);
    CHECK(rc == 2, "no --model: exit %d: %s", rc, out);
    snprintf(args, sizeof args, "--model '%s/nope' --source x -o '%s'", dir, page);
    rc = run_cli(cli, args, out, sizeof out);
    CHECK(rc == 1, "missing directory: exit %d: %s", rc, out);

    remove(page);
    snprintf(path, sizeof path, "%s/model.safetensors", mdir);
    remove(path);
    snprintf(path, sizeof path, "%s/bpe.model", mdir);
    remove(path);
    rmdir(mdir);
}

int main(void) {
    tfm_bpe_params bp;
    tfm_bpe_default_params(&bp);
    bp.vocab_size = 300;
    tfm_bpe *bpe = NULL;
    CHECK(tfm_bpe_learn_text(&bp, TEXT, strlen(TEXT), &bpe) == TFM_OK, "learn: %s", tfm_last_error());
    if (!bpe) return tfm_test_finish();

    char dir[] = "/tmp/tfm_attn_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[128];
    snprintf(path, sizeof path, "%s/attention.html", dir);

    /* ---- encoder-decoder, with <&"> in the source */
    const char *src_text = "ein mann <&\"> faehrt fahrrad \xC3\xA9 .";
    char *html = check_page("enc-dec", bpe, 2, 3, src_text, "a man rides a bike .", path);
    if (html) {
        CHECK(strstr(html, "ein mann &lt;&amp;&quot;&gt; faehrt") != NULL, "source text not escaped");
        CHECK(strstr(html, "<&\">") == NULL, "raw <&\"> in the page");
        /* the pieces: '<' is a character of the vocabulary (label "<" or a
         * merge) or a byte token "<0x3C>"; either way it must be escaped. */
        CHECK(strstr(html, "&lt;") != NULL && strstr(html, "&quot;") != NULL, "pieces not escaped");
        CHECK(strstr(html, "id=\"alignment\"") != NULL, "no alignment section");
        CHECK(strstr(html, "cross-attention averaged over heads") != NULL, "no averaged cross-attention");
        CHECK(strstr(html, "<tspan class=\"sp\">\xE2\x96\x81</tspan>") != NULL, "no space marker in labels");
        CHECK(strstr(html, "class=\"max\"") != NULL, "no argmax outline");
        CHECK(strstr(html, ": masked (future position)") != NULL, "no masked cells");
        free(html);
    }
    CHECK(files_with_prefix(dir, "attention.html.tmp") == 0, "temporary file left behind");

    /* ---- decoder-only: only decoder self-attention; a continuation */
    html = check_page("decoder-only", bpe, 0, 2, "a man rides", " a bike", path);
    if (html) {
        CHECK(strstr(html, "data-kind=\"encoder\"") == NULL && strstr(html, "data-kind=\"cross\"") == NULL,
              "decoder-only page shows encoder or cross attention");
        free(html);
    }
    /* ---- encoder-only */
    html = check_page("encoder-only", bpe, 1, 0, "the book is blue", NULL, path);
    if (html) {
        CHECK(strstr(html, "data-kind=\"decoder\"") == NULL && strstr(html, "data-kind=\"cross\"") == NULL,
              "encoder-only page shows decoder or cross attention");
        free(html);
    }

    /* ---- header text: control characters and invalid UTF-8 */
    {
        tfm_config cfg = tiny_config(1, 1, tfm_bpe_vocab_size(bpe));
        tfm_model m;
        CHECK(tfm_model_init(&m, &cfg, 1) == TFM_OK, "init: %s", tfm_last_error());
        int32_t src[3] = {TFM_BPE_FIRST_PIECE, TFM_BPE_BYTE0 + '<', TFM_BPE_FIRST_PIECE + 1};
        tfm_attention_html_params p;
        tfm_attention_html_default_params(&p);
        p.source_text = "tab\there \xFF end";
        p.target_text = "";
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        CHECK(tfm_attention_html_write(&m, bpe, src, 3, NULL, 0, &p, f) == TFM_OK, "write: %s",
              tfm_last_error());
        fclose(f);
        if (buf) {
            CHECK(strstr(buf, "tab\xE2\x90\x89here \xEF\xBF\xBD end") != NULL, "control/invalid bytes not replaced");
            CHECK(strstr(buf, "&lt;0x3C&gt;") != NULL, "byte token label not escaped");
            char why[160] = "";
            CHECK(well_formed(buf, why, sizeof why), "control page not well-formed: %s", why);
            check_maps(buf, "heatmap", "cross", 1 * cfg.heads, 1, 3, "empty target");
            free(buf);
        }

        /* ---- errors: nothing written, an existing page untouched */
        FILE *g = fopen(path, "wb");
        fputs("old", g);
        fclose(g);
        int32_t longsrc[40];
        for (int i = 0; i < 40; i++) longsrc[i] = TFM_BPE_FIRST_PIECE;
        CHECK(tfm_attention_html_save(&m, bpe, longsrc, 25, NULL, 0, &p, path) == TFM_ERR_INVALID,
              "too long source accepted");
        printf("too long: %s\n", tfm_last_error());
        CHECK(strstr(tfm_last_error(), "25") && strstr(tfm_last_error(), "24"), "message lacks the lengths");
        CHECK(tfm_attention_html_save(&m, bpe, longsrc, 2, longsrc, 24, &p, path) == TFM_ERR_INVALID,
              "too long target accepted");
        CHECK(tfm_attention_html_save(&m, bpe, NULL, 0, NULL, 0, &p, path) == TFM_ERR_INVALID,
              "empty source accepted");
        int32_t oov[1] = {cfg.src_vocab};
        CHECK(tfm_attention_html_save(&m, bpe, oov, 1, NULL, 0, &p, path) == TFM_ERR_INVALID,
              "out-of-vocabulary id accepted");
        printf("oov: %s\n", tfm_last_error());
        char *old = read_all(path, NULL);
        CHECK(old && !strcmp(old, "old"), "an error replaced the existing file");
        free(old);
        CHECK(files_with_prefix(dir, "attention.html.tmp") == 0, "temporary file left after an error");
        char nodir[160];
        snprintf(nodir, sizeof nodir, "%s/no/such/dir/a.html", dir);
        CHECK(tfm_attention_html_save(&m, bpe, src, 3, NULL, 0, &p, nodir) == TFM_ERR_IO,
              "unwritable path accepted");
        printf("unwritable: %s\n", tfm_last_error());
        tfm_model_free(&m);

        tfm_config eo = tiny_config(1, 0, tfm_bpe_vocab_size(bpe));
        CHECK(tfm_model_init(&m, &eo, 1) == TFM_OK, "init: %s", tfm_last_error());
        CHECK(tfm_attention_html_save(&m, bpe, src, 3, src, 1, &p, path) == TFM_ERR_INVALID,
              "target accepted by an encoder-only model");
        tfm_model_free(&m);
    }

    check_cli(bpe, dir);

    const char *keep = getenv("TFM_ATTENTION_KEEP");
    if (!keep) {
        remove(path);
        rmdir(dir);
    } else {
        printf("kept %s\n", path);
    }
    tfm_bpe_free(bpe);
    return tfm_test_finish();
}
