/*
 * cmd_attention.c: `transformer attention`, the attention weights of one
 * sentence as a self-contained HTML page of heatmaps.
 *
 *   transformer attention --model DIR --source "Ein Mann fährt Fahrrad." \
 *       [--target "A man rides a bike."] [-o attention.html]
 *
 * Loads DIR/model.safetensors and DIR/bpe.model, encodes the source (no <s>
 * or </s> on the source side), takes the target as given or, without one,
 * the model's own greedy translation, runs one forward pass without dropout
 * and writes the page atomically. The drawing is src/infer/attention_html.c;
 * this file parses flags, reads the input and loads the model.
 *
 * Decoder-only models: the source is the text, --target an optional
 * continuation appended to it; nothing is generated. Encoder-only models:
 * the source only.
 *
 * Exit status: 0 written, 1 runtime error (missing files, bad input, input
 * too long), 2 usage error.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "core/utf8.h"
#include "infer/attention_html.h"
#include "infer/decode.h"
#include "text/bpe.h"
#include "train/checkpoint.h"

enum { EXTRA_LEN = 50 }; /* a greedy translation may be this much longer than its source */

typedef struct attention_opts {
    const char *model_dir;
    const char *source;       /* NULL: from source_file or stdin */
    const char *source_file;  /* "-" = stdin */
    const char *target;       /* NULL: greedy translation */
    const char *output;
    int max_len;              /* 0: source + 50, capped */
} attention_opts;

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer attention --model DIR --source TEXT [--target TEXT] [-o FILE]\n"
            "\n"
            "Draws the attention weights of every layer and head for one sentence as a\n"
            "self-contained HTML page (inline SVG heatmaps, no script, no external files):\n"
            "encoder self-attention, decoder self-attention, cross-attention, and the\n"
            "cross-attention averaged over heads (the soft word alignment).\n"
            "\n"
            "  -m, --model DIR        model directory with model.safetensors and bpe.model (required)\n"
            "  -s, --source TEXT      the source sentence; for a decoder-only model, the text\n"
            "                         (default: the first line of --source-file or stdin)\n"
            "  --source-file FILE     read the source from the first line of FILE, '-' for stdin\n"
            "                         (default: none)\n"
            "  -t, --target TEXT      the target sentence; for a decoder-only model, a continuation\n"
            "                         appended to the text as is (give its leading space) (default:\n"
            "                         the model's greedy translation; none for decoder-only and\n"
            "                         encoder-only models)\n"
            "  --max-len N            longest greedy translation, in pieces (default: source length\n"
            "                         + %d, at most max_positions - 1)\n"
            "  -o, --output FILE      the page to write, replaced atomically (default: attention.html)\n"
            "  -h, --help             print this help\n"
            "\n"
            "example: transformer attention --model runs/base --source \"Ein Mann fährt Fahrrad.\"\n",
            EXTRA_LEN);
}

/* Returns 0 to run, -1 after --help, 2 on a usage error (message printed). */
static int parse_args(int argc, char **argv, attention_opts *o) {
    memset(o, 0, sizeof *o);
    o->output = "attention.html";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return -1;
        }
        /* "--flag=value" or "--flag value". */
        const char *eq = !strncmp(a, "--", 2) ? strchr(a, '=') : NULL;
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
#define IS(name) (nl == strlen(name) && !strncmp(a, name, nl))
        const char **dst = NULL;
        const char *maxlen = NULL;
        if (IS("-m") || IS("--model")) dst = &o->model_dir;
        else if (IS("-s") || IS("--source")) dst = &o->source;
        else if (IS("--source-file")) dst = &o->source_file;
        else if (IS("-t") || IS("--target")) dst = &o->target;
        else if (IS("-o") || IS("--output")) dst = &o->output;
        else if (IS("--max-len")) dst = &maxlen;
#undef IS
        if (!dst) {
            fprintf(stderr, "transformer attention: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (!eq && i + 1 >= argc) {
            fprintf(stderr, "transformer attention: %s needs a value\n", a);
            return 2;
        }
        *dst = eq ? eq + 1 : argv[++i];
        if (maxlen) {
            char *end;
            errno = 0;
            long n = strtol(maxlen, &end, 10);
            if (!*maxlen || *end || errno || n < 1 || n > INT_MAX) {
                fprintf(stderr, "transformer attention: --max-len: expected an integer >= 1, got '%s'\n",
                        maxlen);
                return 2;
            }
            o->max_len = (int)n;
        }
    }
    if (!o->model_dir) {
        fprintf(stderr, "transformer attention: --model DIR is required\n");
        usage(stderr);
        return 2;
    }
    if (o->source && o->source_file) {
        fprintf(stderr, "transformer attention: give --source or --source-file, not both\n");
        return 2;
    }
    if (!o->source && !o->source_file) {
        if (isatty(fileno(stdin))) {
            fprintf(stderr, "transformer attention: no source: give --source TEXT, --source-file FILE, "
                            "or a line on stdin\n");
            usage(stderr);
            return 2;
        }
        o->source_file = "-";
    }
    if (!*o->output) {
        fprintf(stderr, "transformer attention: -o: empty file name\n");
        return 2;
    }
    return 0;
}

/* The first line of `path` ("-" = stdin) without its line end, as a new
 * string; NULL after a message. */
static char *read_first_line(const char *path) {
    int is_stdin = !strcmp(path, "-");
    const char *name = is_stdin ? "<stdin>" : path;
    FILE *in = is_stdin ? stdin : fopen(path, "rb");
    if (!in) {
        fprintf(stderr, "transformer attention: %s: cannot open: %s\n", path, strerror(errno));
        return NULL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, in);
    int err = ferror(in);
    if (!is_stdin) fclose(in);
    if (n < 0) {
        if (err)
            fprintf(stderr, "transformer attention: %s: read error\n", name);
        else
            fprintf(stderr, "transformer attention: %s: empty, no source line\n", name);
        free(line);
        return NULL;
    }
    size_t len = (size_t)n;
    if (len && line[len - 1] == '\n') len--;
    if (len && line[len - 1] == '\r') len--;
    line[len] = '\0';
    if (strlen(line) != len) {
        fprintf(stderr, "transformer attention: %s: the first line holds a NUL byte\n", name);
        free(line);
        return NULL;
    }
    return line;
}

/* Checks UTF-8; prints a message naming `what` and the byte offset. */
static int valid_text(const char *what, const char *s) {
    size_t bad;
    if (tfm_utf8_valid(s, strlen(s), &bad)) return 1;
    fprintf(stderr, "transformer attention: %s: invalid UTF-8 at byte %zu\n", what, bad);
    return 0;
}

static int is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Encodes text; prints a message on error. */
static int encode(const tfm_bpe *bpe, const char *what, const char *text, int32_t **ids, int *n) {
    size_t k;
    if (tfm_bpe_encode(bpe, text, strlen(text), ids, &k) != TFM_OK) {
        fprintf(stderr, "transformer attention: %s: %s\n", what, tfm_last_error());
        return 0;
    }
    if (k > INT_MAX / 2) {
        fprintf(stderr, "transformer attention: %s: too long (%zu pieces)\n", what, k);
        return 0;
    }
    *n = (int)k;
    return 1;
}

int cmd_attention(int argc, char **argv) {
    attention_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;

    char *source_line = NULL, *translation = NULL, *weights = NULL, *bpe_path = NULL, *joined = NULL;
    int32_t *src = NULL, *tgt = NULL;
    int S = 0, T = 0;
    tfm_bpe *bpe = NULL;
    tfm_model m;
    memset(&m, 0, sizeof m);
    tfm_decoder dec;
    memset(&dec, 0, sizeof dec);
    int have_dec = 0;
    rc = 1;

    /* ---- input text */
    const char *source = o.source;
    if (!source) {
        if (!(source_line = read_first_line(o.source_file))) goto done;
        source = source_line;
    }
    if (!valid_text("--source", source)) goto done;
    if (o.target && !valid_text("--target", o.target)) goto done;
    if (!*source) {
        fprintf(stderr, "transformer attention: the source is empty\n");
        goto done;
    }

    /* ---- model directory */
    struct stat sb;
    if (stat(o.model_dir, &sb) != 0) {
        fprintf(stderr, "transformer attention: %s: cannot open the model directory: %s\n", o.model_dir,
                strerror(errno));
        goto done;
    }
    if (!S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "transformer attention: %s: not a directory (--model takes the model directory)\n",
                o.model_dir);
        goto done;
    }
    size_t dl = strlen(o.model_dir) + 32;
    weights = malloc(dl);
    bpe_path = malloc(dl);
    if (!weights || !bpe_path) {
        fprintf(stderr, "transformer attention: out of memory\n");
        goto done;
    }
    snprintf(weights, dl, "%s/model.safetensors", o.model_dir);
    snprintf(bpe_path, dl, "%s/bpe.model", o.model_dir);
    int missing = 0;
    if (!is_file(weights)) {
        fprintf(stderr, "transformer attention: %s: missing (the weights, written by 'transformer train')\n",
                weights);
        missing = 1;
    }
    if (!is_file(bpe_path)) {
        fprintf(stderr, "transformer attention: %s: missing (the tokenizer, from 'transformer bpe learn')\n",
                bpe_path);
        missing = 1;
    }
    if (missing) goto done;
    long step = -1;
    if (tfm_checkpoint_load(&m, weights, &step) != TFM_OK) {
        fprintf(stderr, "transformer attention: %s\n", tfm_last_error());
        goto done;
    }
    if (tfm_bpe_load(bpe_path, &bpe) != TFM_OK) {
        fprintf(stderr, "transformer attention: %s\n", tfm_last_error());
        goto done;
    }
    const tfm_config *c = &m.cfg;
    int has_enc = c->enc_layers > 0, has_dec = c->dec_layers > 0, P = c->max_positions;

    /* ---- tokens */
    if (!has_dec && o.target) {
        fprintf(stderr, "transformer attention: the model is encoder-only and has no target side; "
                        "drop --target\n");
        goto done;
    }
    if (!has_enc && o.target) {
        /* Decoder-only: the continuation is encoded together with the text,
         * as the model would read them; encoded apart, it would get a dummy
         * prefix '▁' of its own. The whole is passed as one text (T = 0). */
        size_t a = strlen(source), b = strlen(o.target);
        if (!(joined = malloc(a + b + 1))) {
            fprintf(stderr, "transformer attention: out of memory\n");
            goto done;
        }
        memcpy(joined, source, a);
        memcpy(joined + a, o.target, b + 1);
        if (!encode(bpe, "--source + --target", joined, &src, &S)) goto done;
    } else {
        if (!encode(bpe, "--source", source, &src, &S)) goto done;
        if (o.target && !encode(bpe, "--target", o.target, &tgt, &T)) goto done;
    }
    int limit = has_enc ? P : P - 1; /* a decoder-only text is read after <s> */
    if (S > limit) {
        fprintf(stderr,
                "transformer attention: the %s is %d pieces long; this model takes at most %d "
                "(max_positions %d%s)\n",
                has_enc ? "source" : o.target ? "text with its continuation" : "text", S, limit, P,
                has_enc ? "" : ", less 1 for <s>");
        goto done;
    }
    if (has_enc && has_dec && o.target && T > P - 1) {
        fprintf(stderr,
                "transformer attention: the target is %d pieces long; this model takes at most %d after "
                "<s> (max_positions %d)\n",
                T, P - 1, P);
        goto done;
    }

    /* ---- the model's own translation */
    const char *target_text = o.target, *note = o.target ? "given" : NULL;
    if (has_enc && has_dec && !o.target) {
        int max_len = o.max_len ? o.max_len : S + EXTRA_LEN;
        if (max_len > P - 1) max_len = P - 1;
        if (max_len < 1) {
            fprintf(stderr, "transformer attention: max_positions %d leaves no room for a translation\n", P);
            goto done;
        }
        if (tfm_decoder_init(&dec, &m, 1, S, max_len) != TFM_OK) {
            fprintf(stderr, "transformer attention: %s\n", tfm_last_error());
            goto done;
        }
        have_dec = 1;
        int len = 0;
        tgt = malloc((size_t)max_len * sizeof *tgt);
        if (!tgt) {
            fprintf(stderr, "transformer attention: out of memory\n");
            goto done;
        }
        if (tfm_greedy_translate(&dec, src, 1, S, max_len, tgt, &len) != TFM_OK) {
            fprintf(stderr, "transformer attention: translating: %s\n", tfm_last_error());
            goto done;
        }
        T = len;
        /* The decoded text is only for the header; pieces are shown anyway. */
        if (tfm_bpe_decode(bpe, tgt, (size_t)T, &translation, NULL) == TFM_OK) target_text = translation;
        note = len == max_len ? "greedy translation by the model, cut at --max-len"
                              : "greedy translation by the model";
        fprintf(stderr, "transformer attention: translation: %s\n", translation ? translation : "?");
    }

    /* ---- the page */
    tfm_attention_html_params hp;
    tfm_attention_html_default_params(&hp);
    hp.model_name = o.model_dir;
    hp.source_text = source;
    hp.target_text = target_text;
    hp.target_note = note;
    hp.step = step;
    if (tfm_attention_html_save(&m, bpe, src, S, tgt, T, &hp, o.output) != TFM_OK) {
        fprintf(stderr, "transformer attention: %s\n", tfm_last_error());
        goto done;
    }
    fprintf(stderr, "transformer attention: wrote %s (", o.output);
    if (has_enc) fprintf(stderr, "encoder %d layers x %d heads over %d source pieces%s", c->enc_layers,
                         c->heads, S, has_dec ? ", " : "");
    if (has_dec) fprintf(stderr, "decoder %d layers x %d heads over %d inputs", c->dec_layers, c->heads,
                         1 + (has_enc ? T : S + T));
    fprintf(stderr, ")\n");
    rc = 0;

done:
    if (have_dec) tfm_decoder_free(&dec);
    tfm_bpe_free(bpe);
    tfm_model_free(&m);
    free(src);
    free(tgt);
    free(translation);
    free(weights);
    free(bpe_path);
    free(source_line);
    free(joined);
    return rc;
}
