/*
 * main.c: the `transformer` command line; dispatches to one file per
 * subcommand (tools/cmd_*.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "transformer.h"

typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} subcommand;

static const subcommand subcommands[] = {
    {"demo", cmd_demo, "train a small model on the synthetic copy/reverse task and decode it"},
    {"train", cmd_train, "train a model on a parallel corpus (or a text, decoder-only)"},
    {"translate", cmd_translate, "translate lines with beam search (one output line per input line)"},
    {"generate", cmd_generate, "continue a prompt with a decoder-only model (greedy or sampled)"},
    {"attention", cmd_attention, "write an HTML page of attention heatmaps for a sentence"},
    {"average", cmd_average, "average the last N checkpoints of a model directory (the paper averages 5)"},
    {"bpe", cmd_bpe, "learn, apply and undo byte-pair encoding (bpe learn|encode|decode)"},
    {"bleu", cmd_bleu, "score a translation against references, as sacreBLEU 2.6 does"},
    {"bench", cmd_bench, "time training, decoding and GEMMs as JSON lines (bench/run.sh compares with PyTorch)"},
};

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer <command> [options]\n"
            "\n"
            "The Transformer of \"Attention Is All You Need\" in C.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(out, "  %-10s %s\n", subcommands[i].name, subcommands[i].summary);
    fprintf(out,
            "  %-10s %s\n"
            "\n"
            "Run 'transformer <command> --help' for a command's options.\n",
            "version", "print the version");
}

/* Debian's OpenBLAS 0.3.21 does not recognise Sapphire Rapids and falls back to
 * SSE3 kernels unless OPENBLAS_CORETYPE is set before the library loads. The
 * variable must be in the environment when the process starts, so when it is
 * missing on a CPU with AVX-512 we set it and re-execute ourselves once. */
static void ensure_openblas_coretype(char **argv) {
#ifdef TFM_HAVE_CBLAS
    if (getenv("OPENBLAS_CORETYPE") || getenv("TFM_NO_REEXEC")) return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return;
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
    setenv("TFM_NO_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* execv failed: carry on with whatever kernels OpenBLAS picked. */
#else
    (void)argv;
#endif
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("transformer %s\n", TFM_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++) {
        if (!strcmp(cmd, subcommands[i].name)) {
            ensure_openblas_coretype(argv);
            return subcommands[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "transformer: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
