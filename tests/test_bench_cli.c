/*
 * test_bench_cli.c: `transformer bench` runs its tiny configuration (train,
 * greedy, sgemm, long) and prints one JSON object per repetition with positive
 * times, then a summary with the peak resident memory; bad input (unknown
 * kind, configuration or flag, a flag of another kind, bad numbers, missing
 * required flags) gives a clear message and exit status 2.
 *
 * Not here: timings against PyTorch (bench/run.sh), the translate kind (it
 * needs a trained model; only its flag checks are tested).
 */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static const char *cli;

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* Runs `transformer bench ARGS` (stdout only) and checks its JSON lines: reps
 * objects with "rep" 0..reps-1 and each `positive` field > 0, then one summary
 * with peak_rss_kb > 0. */
static void expect_json(const char *args, int reps, const char *const *positive) {
    char cmd[1024];
    static char out[1 << 16];
    snprintf(cmd, sizeof cmd, "'%s' bench %s --threads 1 2>/dev/null", cli, args);
    int rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "'bench %s': exit status %d, output:\n%s", args, rc, out);
    int n_reps = 0, n_summary = 0;
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        CHECK(o != NULL, "'bench %s': not JSON: %s", args, line);
        if (!o) continue;
        const cJSON *impl = cJSON_GetObjectItemCaseSensitive(o, "impl");
        CHECK(cJSON_IsString(impl) && !strcmp(impl->valuestring, "transformer.c"), "'bench %s': impl: %s", args, line);
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "summary"))) {
            n_summary++;
            CHECK(num(o, "peak_rss_kb") > 0, "'bench %s': summary without peak_rss_kb: %s", args, line);
            CHECK(num(o, "median_ms") > 0, "'bench %s': summary median_ms: %s", args, line);
        } else {
            CHECK(num(o, "rep") == n_reps, "'bench %s': rep %d expected: %s", args, n_reps, line);
            n_reps++;
            for (int i = 0; positive[i]; i++)
                CHECK(num(o, positive[i]) > 0, "'bench %s': %s not positive: %s", args, positive[i], line);
        }
        cJSON_Delete(o);
    }
    CHECK(n_reps == reps && n_summary == 1, "'bench %s': %d reps (want %d), %d summaries (want 1)", args, n_reps,
          reps, n_summary);
}

/* Runs `transformer bench ARGS` and checks that its first line's `key` is `want`. */
static void expect_number(const char *args, const char *key, double want) {
    char cmd[1024];
    static char out[1 << 16];
    snprintf(cmd, sizeof cmd, "'%s' bench %s --threads 1 2>/dev/null", cli, args);
    int rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "'bench %s': exit status %d", args, rc);
    char *nl = strchr(out, '\n');
    if (nl) *nl = 0;
    cJSON *o = cJSON_Parse(out);
    CHECK(o && num(o, key) == want, "'bench %s': %s is %g, want %g: %s", args, key, o ? num(o, key) : -1, want, out);
    cJSON_Delete(o);
}

/* Runs `transformer bench ARGS` and checks the exit status and that stderr
 * holds `needle`. */
static void expect_error(const char *args, int want_rc, const char *needle) {
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd, "'%s' bench %s 2>&1 >/dev/null", cli, args);
    int rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == want_rc && strstr(out, needle), "'bench %s': rc %d (want %d), stderr lacks '%s':\n%s", args, rc,
          want_rc, needle, out);
}

int main(void) {
    cli = tfm_test_env("TFM_CLI", NULL);
    if (!cli) tfm_test_skip("TFM_CLI (the transformer binary) is not set");

    const char *train[] = {"ms", "tokens_per_s", "flop", "gflops", "loss", NULL};
    const char *greedy[] = {"ms", "tokens_per_s", "sentences_per_s", NULL};
    const char *sgemm[] = {"ms", "flop", "gflops", NULL};
    const char *lng[] = {"ms", "tokens_per_s", "flop", "peak_rss_kb", NULL};
    expect_json("train --config tiny --reps 1", 1, train);
    expect_json("train --config tiny --reps 2 --warmup 0 --batch 3 --src-len 5 --tgt-len 7", 2, train);
    expect_json("greedy --config tiny --reps 1", 1, greedy);
    expect_json("greedy --config tiny --reps 1 --batch 1 --out-len 5", 1, greedy);
    expect_json("greedy --config tiny --reps 1 --batch 2 --out-len 5 --beam 3", 1, greedy);
    /* greedy is beam 1 unless --beam says otherwise (translate's default beam 4 must not leak in) */
    expect_number("greedy --config tiny --reps 1 --batch 2 --out-len 4", "beam", 1);
    expect_number("greedy --config tiny --reps 1 --batch 2 --out-len 4 --beam 3", "beam", 3);
    expect_json("sgemm --config tiny --reps 1 --min-time 0", 1, sgemm);
    expect_json("long --len 64 --layers 1 --d-model 32 --heads 2 --d-ff 64 --vocab 100 --reps 1", 1, lng);

    expect_error("train --config huge", 2, "unknown configuration 'huge'");
    expect_error("frobnicate", 2, "unknown kind 'frobnicate'");
    expect_error("train --frobnicate 1", 2, "unknown option --frobnicate");
    expect_error("train --reps 0", 2, "--reps");
    expect_error("train --reps x", 2, "bad value 'x'");
    expect_error("train --config", 2, "needs a value");
    expect_error("sgemm --out-len 4", 2, "does not apply to 'sgemm'");
    expect_error("long --config tiny", 2, "does not apply to 'long'");
    expect_error("long --d-model 30 --heads 4", 2, "not divisible");
    expect_error("translate --input x.txt", 2, "--model DIR and --input FILE");
    expect_error("translate --model /nonexistent --input /nonexistent/x.txt", 1, "/nonexistent/x.txt");
    expect_error("", 2, "usage: transformer bench");
    return tfm_test_finish();
}
