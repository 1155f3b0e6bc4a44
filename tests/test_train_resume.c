/*
 * test_train_resume.c: `transformer train --resume` continues a run exactly.
 *
 * A small parallel corpus is written by the test. Run A trains 40 steps
 * without interruption. Run B trains the same settings but is killed with
 * SIGKILL at a random moment after step 12 (checkpoints every 8 steps), then
 * resumed to step 40. The loss, learning rate and gradient norm of every step
 * in B's train.csv must equal A's, bit for bit (printed with 9 digits), with
 * dropout on. Run C stops cleanly at step 16 and resumes: same check. Run D
 * stops at step 16 and then has model.safetensors put back to step 8, as a
 * kill between the save's two renames leaves it (train_state.safetensors is
 * published first): the resume takes the weights of checkpoint_16 and must
 * match A too. (Run B's random kill lands in that window only rarely.)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/rng.h"
#include "test_util.h"

static char dir[256];
static const char *cli;

static void write_corpus(void) {
    char path[512];
    const char *words[] = {"the", "a", "man", "woman", "dog", "runs", "sees", "big", "small", "red", "house", "ball"};
    const char *mots[] = {"le", "un", "homme", "femme", "chien", "court", "voit", "grand", "petit", "rouge", "maison", "balle"};
    snprintf(path, sizeof path, "%s/train.src", dir);
    FILE *src = fopen(path, "w");
    snprintf(path, sizeof path, "%s/train.tgt", dir);
    FILE *tgt = fopen(path, "w");
    tfm_rng r;
    tfm_rng_init(&r, 9, 0);
    for (int line = 0; line < 400; line++) {
        int n = 3 + (int)(tfm_rng_next(&r) % 6);
        for (int i = 0; i < n; i++) {
            int w = (int)(tfm_rng_next(&r) % 12);
            fprintf(src, "%s%s", i ? " " : "", mots[w]);
            fprintf(tgt, "%s%s", i ? " " : "", words[w]);
        }
        fputc('\n', src);
        fputc('\n', tgt);
    }
    fclose(src);
    fclose(tgt);
}

static void command(char *buf, size_t cap, const char *model, int max_steps, int resume) {
    snprintf(buf, cap,
             "%s train --train-src %s/train.src --train-tgt %s/train.tgt --model-dir %s/%s --vocab-size 300 "
             "--enc-layers 1 --dec-layers 1 --d-model 32 --heads 2 --d-ff 64 --warmup 10 --batch-tokens 256 "
             "--valid-every 8 --max-steps %d --no-progress --threads 1 %s",
             cli, dir, dir, dir, model, max_steps, resume ? "--resume" : "");
}

static int run(const char *model, int max_steps, int resume) {
    char cmd[2048], out[8192];
    command(cmd, sizeof cmd, model, max_steps, resume);
    strcat(cmd, " 2>&1");
    int rc = tfm_test_run(cmd, out, sizeof out);
    if (rc) printf("%s\n", out);
    return rc;
}

static long rows(const char *model) {
    char path[512], line[512];
    snprintf(path, sizeof path, "%s/%s/train.csv", dir, model);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long n = -1;
    while (fgets(line, sizeof line, f)) n++;
    fclose(f);
    return n;
}

/* The step, loss, lr and grad-norm columns of a train.csv. */
static char *columns(const char *model) {
    char cmd[1024], *out = malloc(1 << 16);
    snprintf(cmd, sizeof cmd, "cut -d, -f1,3,4,5 %s/%s/train.csv", dir, model);
    tfm_test_run(cmd, out, 1 << 16);
    return out;
}

int main(void) {
    cli = tfm_test_env("TFM_CLI", "./transformer");
    snprintf(dir, sizeof dir, "/tmp/tfm_resume_XXXXXX");
    if (!mkdtemp(dir)) tfm_test_skip("cannot make a temporary directory");
    write_corpus();

    CHECK(run("a", 40, 0) == 0, "uninterrupted run failed");
    char *a = columns("a");
    CHECK(rows("a") == 40, "run A has %ld rows", rows("a"));

    /* B: killed at a random moment after step 12. */
    char cmd[2048];
    command(cmd, sizeof cmd, "b", 40, 0);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    srand((unsigned)time(NULL));
    long target = 13 + rand() % 20;
    struct timespec nap = {0, 5000000};
    for (int i = 0; i < 6000 && rows("b") < target; i++) nanosleep(&nap, NULL);
    long at_kill = rows("b");
    kill(pid, SIGKILL);
    /* sh -c may have exec'd the CLI (same pid) or forked it: kill the group too. */
    waitpid(pid, NULL, 0);
    char pk[600];
    snprintf(pk, sizeof pk, "pkill -9 -f 'model-dir %s/b' 2>/dev/null", dir);
    system(pk);
    printf("run B killed with %ld steps logged\n", at_kill);
    CHECK(run("b", 40, 1) == 0, "resume after kill failed");
    char *b = columns("b");
    CHECK(strlen(a) > 100 && !strcmp(a, b), "killed-and-resumed run differs from the uninterrupted one");
    printf("killed at step ~%ld and resumed: every step's loss/lr/grad norm identical: %s\n", at_kill,
           strcmp(a, b) ? "NO" : "yes");

    CHECK(run("c", 16, 0) == 0 && run("c", 40, 1) == 0, "stop/resume failed");
    char *c = columns("c");
    CHECK(strlen(a) > 100 && !strcmp(a, c), "stopped-and-resumed run differs");
    printf("stopped at 16 and resumed: identical: %s\n", strcmp(a, c) ? "NO" : "yes");

    char cp[2400];
    /* A new file renamed into place, as a save does: model.safetensors is a
     * hard link of checkpoint_16.safetensors, which cp would overwrite. */
    snprintf(cp, sizeof cp, "cp %s/d/checkpoint_8.safetensors %s/d/old && mv %s/d/old %s/d/model.safetensors", dir,
             dir, dir, dir);
    CHECK(run("d", 16, 0) == 0 && system(cp) == 0 && run("d", 40, 1) == 0,
          "resume with model.safetensors one save behind train_state.safetensors failed");
    char *dcols = columns("d");
    CHECK(strlen(a) > 100 && !strcmp(a, dcols), "resumed run (interrupted save) differs");
    printf("model.safetensors one save behind the state, resumed: identical: %s\n", strcmp(a, dcols) ? "NO" : "yes");
    free(dcols);
    free(a);
    free(b);
    free(c);
    char rm[300];
    snprintf(rm, sizeof rm, "rm -rf %s", dir);
    system(rm);
    return tfm_test_finish();
}
