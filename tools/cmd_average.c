/*
 * cmd_average.c: `transformer average`, checkpoint averaging (paper 6.1: the
 * base model averages the last 5 checkpoints, written every 10 minutes).
 *
 *   transformer average --model-dir DIR [--last N] -o OUT
 *   transformer average -o OUT FILE [FILE...]
 *
 * Every file must be a transformer.c weights checkpoint with the same config;
 * the mean of every parameter is taken in double and rounded once, and OUT is
 * written atomically with the step of the last (newest) input. The work is
 * tfm_checkpoint_average; this file only parses flags and picks the files.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "train/checkpoint.h"

typedef struct average_opts {
    const char *model_dir; /* NULL: files given on the command line */
    int last;              /* how many of the newest checkpoints of model_dir */
    int last_given;
    const char *output;
    const char **files;    /* [n_files], pointers into argv */
    int n_files;
} average_opts;

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer average --model-dir DIR [--last N] -o OUT\n"
            "       transformer average -o OUT FILE [FILE...]\n"
            "\n"
            "Averages the weights of checkpoints with the same config (paper 6.1: the last 5)\n"
            "and writes the result as one checkpoint, with the step of the newest input.\n"
            "\n"
            "  --model-dir DIR     average DIR/checkpoint_<step>.safetensors (default: none)\n"
            "  --last N            how many of the newest checkpoints in DIR (default: 5)\n"
            "  -o, --output OUT    the averaged checkpoint to write (required; default: none)\n"
            "  -h, --help          print this help\n"
            "\n"
            "example: transformer average --model-dir runs/base --last 5 -o runs/base/average.safetensors\n");
}

/* Returns 0 to run, -1 after --help, 2 on a usage error (message printed). */
static int parse_args(int argc, char **argv, average_opts *o) {
    memset(o, 0, sizeof *o);
    o->last = 5;
    o->files = calloc((size_t)(argc > 0 ? argc : 1), sizeof *o->files);
    if (!o->files) {
        fprintf(stderr, "transformer average: out of memory\n");
        return 2;
    }
    int only_files = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (only_files || a[0] != '-' || a[1] == '\0') {
            o->files[o->n_files++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_files = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return -1;
        } else if (!strcmp(a, "--model-dir") || !strcmp(a, "-o") || !strcmp(a, "--output") ||
                   !strcmp(a, "--last")) {
            if (!v) {
                fprintf(stderr, "transformer average: %s needs a value\n", a);
                return 2;
            }
            i++;
            if (!strcmp(a, "--model-dir")) {
                o->model_dir = v;
            } else if (!strcmp(a, "--last")) {
                char *end;
                errno = 0;
                long n = strtol(v, &end, 10);
                if (!*v || *end || errno || n < 1 || n > INT_MAX) {
                    fprintf(stderr, "transformer average: --last: expected an integer >= 1, got '%s'\n", v);
                    return 2;
                }
                o->last = (int)n;
                o->last_given = 1;
            } else {
                o->output = v;
            }
        } else {
            fprintf(stderr, "transformer average: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!o->output) {
        fprintf(stderr, "transformer average: -o OUT is required\n");
        usage(stderr);
        return 2;
    }
    if (o->model_dir && o->n_files) {
        fprintf(stderr, "transformer average: give either --model-dir or files, not both\n");
        return 2;
    }
    if (!o->model_dir && !o->n_files) {
        fprintf(stderr, "transformer average: no checkpoints: give --model-dir DIR or files\n");
        usage(stderr);
        return 2;
    }
    if (o->last_given && !o->model_dir) {
        fprintf(stderr, "transformer average: --last needs --model-dir\n");
        return 2;
    }
    return 0;
}

int cmd_average(int argc, char **argv) {
    average_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) {
        free(o.files);
        return rc < 0 ? 0 : rc;
    }
    tfm_checkpoint_list list = {0};
    const char *const *paths = o.files;
    int n = o.n_files;
    if (o.model_dir) {
        if (tfm_checkpoint_dir_list(o.model_dir, &list) != TFM_OK) {
            fprintf(stderr, "transformer average: %s\n", tfm_last_error());
            free(o.files);
            return 1;
        }
        if (list.n < o.last) {
            fprintf(stderr,
                    "transformer average: %s holds %d checkpoint%s (checkpoint_<step>.safetensors), "
                    "--last asks for %d\n",
                    o.model_dir, list.n, list.n == 1 ? "" : "s", o.last);
            tfm_checkpoint_list_free(&list);
            free(o.files);
            return 1;
        }
        paths = (const char *const *)(list.paths + (list.n - o.last));
        n = o.last;
    }
    rc = 0;
    if (tfm_checkpoint_average(paths, n, o.output) != TFM_OK) {
        fprintf(stderr, "transformer average: %s\n", tfm_last_error());
        rc = 1;
    } else {
        long step = 0;
        tfm_config cfg;
        tfm_checkpoint_read_config(o.output, &cfg, &step);
        printf("averaged %d checkpoint%s into %s (step %ld)\n", n, n == 1 ? "" : "s", o.output, step);
        for (int i = 0; i < n; i++) printf("  %s\n", paths[i]);
    }
    tfm_checkpoint_list_free(&list);
    free(o.files);
    return rc;
}
