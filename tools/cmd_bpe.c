/*
 * cmd_bpe.c: `transformer bpe learn|encode|decode`, the byte-pair encoding
 * tokenizer on the command line (the work is in src/text/bpe*.c).
 *
 *   learn   learns one shared vocabulary from all the files given
 *   encode  text to pieces (or ids), line by line
 *   decode  pieces (or ids) to text, line by line; exact inverse of encode
 *
 * encode and decode read stdin, or the files given, and write stdout: one line
 * in, one line out, tokens separated by single spaces. Input lines end at
 * '\n'; every other byte ('\r' included) is part of the line.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "text/bpe.h"

typedef struct bpe_options {
    tfm_bpe_params params;
    const char *output;     /* learn */
    const char *model;      /* encode, decode */
    int ids;                /* encode, decode: ids instead of pieces */
    int quiet;
    const char **files;
    int nfiles;
} bpe_options;

static void usage_learn(FILE *out) {
    fprintf(out,
            "usage: transformer bpe learn --vocab-size N -o FILE [options] TEXT...\n"
            "\n"
            "Learns one BPE vocabulary jointly from all the TEXT files (for translation,\n"
            "give both the source and the target side).\n"
            "\n"
            "  --vocab-size N       total vocabulary, 260 reserved ids included (default 8000)\n"
            "  -o, --output FILE    where to write the model (required)\n"
            "  --format N           model format: 2 never merges across letters, digits and punctuation;\n"
            "                       1 splits at whitespace only (the format of older models) (default 2)\n"
            "  --min-frequency N    never merge a pair seen fewer than N times (default 2)\n"
            "  --char-coverage F    share of the text's characters kept; rarer ones become bytes "
            "(default 0.9999)\n"
            "  -q, --quiet          no summary on stderr (default: summary shown)\n"
            "  -h, --help           this help\n");
}

static void usage_encode(FILE *out) {
    fprintf(out,
            "usage: transformer bpe encode -m FILE [--ids] [TEXT...] < text > tokens\n"
            "\n"
            "Encodes each line of stdin (or of the TEXT files) into one line of tokens\n"
            "separated by single spaces: pieces such as '▁Ein ▁Mann', or ids.\n"
            "\n"
            "  -m, --model FILE     the model from 'transformer bpe learn' (required)\n"
            "  --ids                print token ids instead of pieces (default: pieces)\n"
            "  -h, --help           this help\n");
}

static void usage_decode(FILE *out) {
    fprintf(out,
            "usage: transformer bpe decode -m FILE [--ids] [TOKENS...] < tokens > text\n"
            "\n"
            "Decodes each line of tokens (pieces, or ids with --ids) back into the exact\n"
            "text that was encoded. <pad>, <s>, </s> and <unk> are skipped.\n"
            "\n"
            "  -m, --model FILE     the model from 'transformer bpe learn' (required)\n"
            "  --ids                read token ids instead of pieces (default: pieces)\n"
            "  -h, --help           this help\n");
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer bpe <learn|encode|decode> [options]\n"
            "\n"
            "  learn    learn a vocabulary:  transformer bpe learn --vocab-size 8000 -o bpe.model "
            "train.en train.de\n"
            "  encode   text to tokens:      transformer bpe encode -m bpe.model < in > out\n"
            "  decode   tokens to text:      transformer bpe decode -m bpe.model < in > out\n"
            "\n"
            "Run 'transformer bpe <command> --help' for its options.\n");
}

/* Parses an int flag value; returns 0 on a malformed value. */
static int parse_int(const char *s, int *v) {
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || end == s || *end || x < -2147483647L || x > 2147483647L) return 0;
    *v = (int)x;
    return 1;
}

/* Splits "--flag=value"; returns the value of a flag that takes one, from the
 * same argument or the next, or NULL (after a message) when it is missing. */
static const char *flag_value(const char *cmd, int argc, char **argv, int *i, const char *eq) {
    if (eq) return eq + 1;
    if (*i + 1 >= argc) {
        fprintf(stderr, "transformer bpe %s: %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

/* Parses the options of one subcommand into *o. Returns -1 to go on, or the
 * exit status (0 after --help, 2 for a usage error). */
static int parse(const char *cmd, int argc, char **argv, bpe_options *o, void (*help)(FILE *)) {
    o->files = calloc((size_t)argc, sizeof *o->files);
    if (!o->files) {
        fprintf(stderr, "transformer bpe %s: out of memory\n", cmd);
        return 1;
    }
    int learn = !strcmp(cmd, "learn");
    int only_files = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_files || a[0] != '-' || !a[1]) {
            o->files[o->nfiles++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_files = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help(stdout);
            return 0;
        }
        const char *eq = !strncmp(a, "--", 2) ? strchr(a, '=') : NULL;
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
#define IS(name) (nl == strlen(name) && !strncmp(a, name, nl))
        const char *v;
        if (learn && IS("--vocab-size")) {
            if (!(v = flag_value(cmd, argc, argv, &i, eq))) return 2;
            if (!parse_int(v, &o->params.vocab_size)) goto bad_value;
        } else if (learn && IS("--format")) {
            if (!(v = flag_value(cmd, argc, argv, &i, eq))) return 2;
            if (!parse_int(v, &o->params.version)) goto bad_value;
        } else if (learn && IS("--min-frequency")) {
            if (!(v = flag_value(cmd, argc, argv, &i, eq))) return 2;
            if (!parse_int(v, &o->params.min_frequency)) goto bad_value;
        } else if (learn && IS("--char-coverage")) {
            if (!(v = flag_value(cmd, argc, argv, &i, eq))) return 2;
            char *end;
            o->params.char_coverage = strtod(v, &end);
            if (end == v || *end) goto bad_value;
        } else if (learn && (IS("-o") || IS("--output"))) {
            if (!(o->output = flag_value(cmd, argc, argv, &i, eq))) return 2;
        } else if (learn && (IS("-q") || IS("--quiet")) && !eq) {
            o->quiet = 1;
        } else if (!learn && (IS("-m") || IS("--model"))) {
            if (!(o->model = flag_value(cmd, argc, argv, &i, eq))) return 2;
        } else if (!learn && IS("--ids") && !eq) {
            o->ids = 1;
        } else {
            fprintf(stderr, "transformer bpe %s: unknown option '%s'\n", cmd, a);
            help(stderr);
            return 2;
        }
#undef IS
        continue;
    bad_value:
        fprintf(stderr, "transformer bpe %s: %.*s: malformed value '%s'\n", cmd, (int)nl, a, v);
        return 2;
    }
    return -1;
}

static int run_learn(bpe_options *o) {
    if (!o->output) {
        fprintf(stderr, "transformer bpe learn: -o FILE is required\n");
        usage_learn(stderr);
        return 2;
    }
    if (!o->nfiles) {
        fprintf(stderr, "transformer bpe learn: no text files given\n");
        usage_learn(stderr);
        return 2;
    }
    o->params.verbose = !o->quiet;
    tfm_bpe *bpe;
    tfm_status st = tfm_bpe_learn(&o->params, o->files, (size_t)o->nfiles, &bpe);
    if (st != TFM_OK) {
        fprintf(stderr, "transformer bpe learn: %s\n", tfm_last_error());
        return st == TFM_ERR_INVALID ? 2 : 1;
    }
    st = tfm_bpe_save(bpe, o->output);
    if (st != TFM_OK) {
        fprintf(stderr, "transformer bpe learn: %s\n", tfm_last_error());
        tfm_bpe_free(bpe);
        return 1;
    }
    if (!o->quiet) {
        fprintf(stderr, "transformer bpe learn: wrote %s: vocabulary %d (%d characters, %d merges)\n",
                o->output, tfm_bpe_vocab_size(bpe), tfm_bpe_num_chars(bpe),
                tfm_bpe_num_merges(bpe));
        if (tfm_bpe_vocab_size(bpe) < o->params.vocab_size)
            fprintf(stderr,
                    "transformer bpe learn: note: the text has too few pairs seen %d times or "
                    "more to reach %d\n",
                    o->params.min_frequency, o->params.vocab_size);
    }
    tfm_bpe_free(bpe);
    return 0;
}

/* Reads one line at a time from stdin or the files, calls fn on each, and
 * stops at the first error (fn prints it). */
typedef int (*line_fn)(const tfm_bpe *bpe, const bpe_options *o, char *line, size_t len,
                       const char *origin, size_t lineno, FILE *out);

static int each_line(const tfm_bpe *bpe, const bpe_options *o, line_fn fn) {
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    int nin = o->nfiles ? o->nfiles : 1;
    for (int k = 0; k < nin && !rc; k++) {
        const char *origin = o->nfiles ? o->files[k] : "<stdin>";
        FILE *in = o->nfiles ? fopen(origin, "rb") : stdin;
        if (!in) {
            fprintf(stderr, "transformer bpe: %s: cannot open: %s\n", origin, strerror(errno));
            rc = 1;
            break;
        }
        size_t lineno = 0;
        ssize_t n;
        while (!rc && (n = getline(&line, &cap, in)) >= 0) {
            lineno++;
            size_t len = (size_t)n;
            if (len && line[len - 1] == '\n') len--;
            line[len] = '\0';
            rc = fn(bpe, o, line, len, origin, lineno, stdout);
        }
        if (!rc && ferror(in)) {
            fprintf(stderr, "transformer bpe: %s: read error: %s\n", origin, strerror(errno));
            rc = 1;
        }
        if (in != stdin) fclose(in);
    }
    free(line);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "transformer bpe: error writing the output: %s\n", strerror(errno));
        rc = 1;
    }
    return rc;
}

static int encode_line(const tfm_bpe *bpe, const bpe_options *o, char *line, size_t len,
                       const char *origin, size_t lineno, FILE *out) {
    tfm_status st;
    if (o->ids) {
        int32_t *ids;
        size_t n;
        st = tfm_bpe_encode(bpe, line, len, &ids, &n);
        if (st == TFM_OK) {
            /* By hand: fprintf per id is a third of the encoder's time. */
            char buf[16];
            for (size_t i = 0; i < n; i++) {
                char *p = buf + sizeof buf;
                uint32_t v = (uint32_t)ids[i];
                do *--p = (char)('0' + v % 10);
                while (v /= 10);
                if (i) *--p = ' ';
                fwrite(p, 1, (size_t)(buf + sizeof buf - p), out);
            }
            fputc('\n', out);
            free(ids);
        }
    } else {
        char *pieces;
        size_t plen;
        st = tfm_bpe_encode_pieces(bpe, line, len, &pieces, &plen);
        if (st == TFM_OK) {
            fwrite(pieces, 1, plen, out);
            fputc('\n', out);
            free(pieces);
        }
    }
    if (st != TFM_OK) {
        fprintf(stderr, "transformer bpe encode: %s:%zu: %s\n", origin, lineno, tfm_last_error());
        return 1;
    }
    return 0;
}

static int decode_line(const tfm_bpe *bpe, const bpe_options *o, char *line, size_t len,
                       const char *origin, size_t lineno, FILE *out) {
    /* A line of n bytes holds at most n / 2 + 1 tokens. */
    int32_t *ids = malloc((len / 2 + 1) * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "transformer bpe decode: out of memory\n");
        return 1;
    }
    size_t n = 0;
    int rc = 0;
    for (char *p = line, *end = line + len; p < end && !rc;) {
        char *sp = memchr(p, ' ', (size_t)(end - p));
        char *e = sp ? sp : end;
        if (e > p) {
            if (o->ids) {
                int v = 0;
                char save = *e;
                *e = '\0';
                if (!parse_int(p, &v) || v < 0 || v >= tfm_bpe_vocab_size(bpe)) {
                    fprintf(stderr,
                            "transformer bpe decode: %s:%zu: '%s' is not an id in [0, %d)\n",
                            origin, lineno, p, tfm_bpe_vocab_size(bpe));
                    rc = 1;
                }
                *e = save;
                ids[n++] = v;
            } else {
                int32_t id = tfm_bpe_piece_id(bpe, p, (size_t)(e - p));
                if (id < 0) {
                    fprintf(stderr, "transformer bpe decode: %s:%zu: unknown piece '%.*s'\n",
                            origin, lineno, (int)(e - p), p);
                    rc = 1;
                }
                ids[n++] = id;
            }
        }
        p = e + 1;
    }
    if (!rc) {
        char *text;
        size_t tlen;
        if (tfm_bpe_decode(bpe, ids, n, &text, &tlen) != TFM_OK) {
            fprintf(stderr, "transformer bpe decode: %s:%zu: %s\n", origin, lineno,
                    tfm_last_error());
            rc = 1;
        } else {
            fwrite(text, 1, tlen, out);
            fputc('\n', out);
            free(text);
        }
    }
    free(ids);
    return rc;
}

int cmd_bpe(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    void (*help)(FILE *) = !strcmp(cmd, "learn")    ? usage_learn
                           : !strcmp(cmd, "encode") ? usage_encode
                           : !strcmp(cmd, "decode") ? usage_decode
                                                    : NULL;
    if (!help) {
        fprintf(stderr, "transformer bpe: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    bpe_options o = {0};
    tfm_bpe_default_params(&o.params);
    int rc = parse(cmd, argc - 1, argv + 1, &o, help);
    if (rc >= 0) {
        free(o.files);
        return rc;
    }
    if (help == usage_learn) {
        rc = run_learn(&o);
    } else if (!o.model) {
        fprintf(stderr, "transformer bpe %s: -m FILE is required\n", cmd);
        help(stderr);
        rc = 2;
    } else {
        tfm_bpe *bpe;
        if (tfm_bpe_load(o.model, &bpe) != TFM_OK) {
            fprintf(stderr, "transformer bpe %s: %s\n", cmd, tfm_last_error());
            rc = 1;
        } else {
            rc = each_line(bpe, &o, help == usage_encode ? encode_line : decode_line);
            tfm_bpe_free(bpe);
        }
    }
    free(o.files);
    return rc;
}
