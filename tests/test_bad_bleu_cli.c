/*
 * test_bad_bleu_cli.c: `transformer bleu` on bad input fails with a clear
 * message on stderr and a non-zero status, never a crash: missing or
 * unreadable reference files, line counts that differ, invalid UTF-8, NUL
 * bytes, a line whose references are all empty, bad flags.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

static char dir[256];
static const char *cli;

static void write_file(const char *name, const char *data, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

/* Runs `transformer bleu ARGS` in the scratch folder; checks the exit status
 * (want_rc, or any non-zero for -1) and that the output holds every one of
 * the NULL-terminated needles. */
static void expect(const char *args, int want_rc, ...) {
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' bleu %s 2>&1", dir, cli, args);
    int rc = tfm_test_run(cmd, out, sizeof out);
    int ok = want_rc < 0 ? (rc != 0 && rc < 128) : rc == want_rc;
    va_list ap;
    va_start(ap, want_rc);
    for (const char *needle; (needle = va_arg(ap, const char *));)
        if (!strstr(out, needle)) ok = 0;
    va_end(ap);
    CHECK(ok, "'bleu %s': rc %d, output:\n%s", args, rc, out);
}

int main(void) {
    cli = tfm_test_env("TFM_CLI", NULL);
    if (!cli) tfm_test_skip("TFM_CLI (the transformer binary) is not set");
    snprintf(dir, sizeof dir, "/tmp/tfm_bad_bleu_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    write_file("ref.txt", "the cat sat\non the mat\n", 23);
    write_file("hyp.txt", "the cat sat\non a mat\n", 21);
    write_file("hyp3.txt", "the cat sat\non a mat\nextra\n", 27);
    write_file("bad_utf8.txt", "the cat sat\non the \xe2\x28\xa1 mat\n", 26);
    write_file("nul.txt", "the cat sat\non the\0 mat\n", 24);
    write_file("empty_ref.txt", "the cat sat\n   \n", 16);
    write_file("empty.txt", "", 0);

    /* a good run first, so that failures below are the input's fault */
    expect("ref.txt -i hyp.txt", 0, "BLEU = ", "nrefs:1|case:mixed", NULL);
    expect("missing.txt -i hyp.txt", 1, "missing.txt", "No such file", NULL);
    expect("ref.txt -i missing_hyp.txt", 1, "missing_hyp.txt", NULL);
    expect(". -i hyp.txt", 1, "'.'", NULL); /* a folder is not a file */
    expect("ref.txt -i hyp3.txt", 1, "3 lines", "hyp3.txt", "2 lines", "ref.txt", NULL);
    expect("ref.txt < hyp3.txt", 1, "3 lines", "standard input", "2 lines", NULL);
    expect("ref.txt ref.txt -i hyp3.txt -m chrf", 1, "line counts differ", NULL);
    expect("bad_utf8.txt -i hyp.txt", 1, "bad_utf8.txt", "line 2", "invalid UTF-8", NULL);
    expect("ref.txt -i bad_utf8.txt", 1, "bad_utf8.txt", "line 2", "invalid UTF-8", NULL);
    expect("ref.txt -i nul.txt", 1, "nul.txt", "line 2", "NUL", NULL);
    expect("empty_ref.txt -i hyp.txt", 1, "line 2", "empty", NULL);
    expect("empty_ref.txt ref.txt -i hyp.txt", 0, "nrefs:var", NULL); /* one of two empty: fine */
    expect("ref.txt -i empty.txt", 1, "no lines", NULL);
    expect("-i hyp.txt", 2, "no reference file", NULL);
    expect("ref.txt -i hyp.txt -tok zh", 2, "zh", NULL);
    expect("ref.txt -i hyp.txt -s bogus", 2, "bogus", NULL);
    expect("ref.txt -i hyp.txt -sv x", 2, "-sv", NULL);
    expect("ref.txt -i hyp.txt -w -3", 2, "-w", NULL);
    expect("ref.txt -i hyp.txt -m ter", 2, "TER", NULL);
    expect("ref.txt -i hyp.txt -m", 2, "-m", NULL);
    expect("ref.txt -i hyp.txt -m bleu chrf -sl", 2, "-sl", NULL);
    expect("ref.txt -i hyp.txt -m chrf -cc 0 -cw 0", 2, "at least 1", NULL);
    expect("ref.txt -i hyp.txt --frobnicate", 2, "--frobnicate", NULL);
    expect("ref.txt -i", 2, "-i", NULL);

    const char *files[] = {"ref.txt", "hyp.txt", "hyp3.txt", "bad_utf8.txt", "nul.txt",
                           "empty_ref.txt", "empty.txt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
    return tfm_test_finish();
}
