/* test_kill_checkpoint.c: checkpoints survive kill -9 at any moment.
 *
 * A child process saves a ~13 MB checkpoint over the same path in a loop,
 * reporting each finished save (its step) through a pipe; the parent kills it
 * with SIGKILL at a random moment, a few dozen times. After every kill the
 * file at the path must load and hold exactly the last reported version or
 * the one being written (never a mix, never a torn file), and at most one
 * temporary file (the killed writer's) may exist: the next save removes it.
 * The second phase does the same with tfm_checkpoint_dir_save (weights, train
 * state, the model.safetensors / train_state.safetensors links, keep-last-2).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/rng.h"
#include "core/status.h"
#include "test_util.h"
#include "train/checkpoint.h"

static char dir[64];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* The contents of version v: every parameter a function of (v, index). */
static void fill(float *p, size_t n, long v) {
    for (size_t j = 0; j < n; j++) p[j] = (float)v + (float)(j % 97);
}

/* Index of the first parameter that is not version v's, or n. */
static size_t first_mismatch(const float *p, size_t n, long v) {
    for (size_t j = 0; j < n; j++)
        if (p[j] != (float)v + (float)(j % 97)) return j;
    return n;
}

/* Temporary files (*.tmp.*) in d. */
static int count_tmp(const char *d) {
    DIR *dd = opendir(d);
    if (!dd) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dd)) != NULL) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(dd);
    return n;
}

/* The child: save versions first, first+1, ... forever, reporting each. */
static _Noreturn void child_loop(tfm_model *m, tfm_trainer *tr, const char *target, long first,
                                 int fd) {
    for (long v = first;; v++) {
        fill(m->params, m->layout.n_params, v);
        tfm_status s;
        if (tr) {
            tr->step = v;
            fill(tr->adam_m, m->layout.n_params, v);
            char pos[32];
            snprintf(pos, sizeof pos, "%ld", v);
            const char *k[] = {"batch"}, *val[] = {pos};
            s = tfm_checkpoint_dir_save(m, tr, v, 2, target, k, val, 1);
        } else {
            s = tfm_checkpoint_save(m, v, target);
        }
        if (s != TFM_OK) {
            fprintf(stderr, "child: save failed: %s\n", tfm_last_error());
            _exit(3);
        }
        if (write(fd, &v, sizeof v) != (ssize_t)sizeof v) _exit(4);
    }
}

/* Runs KILLS kill cycles; `dir_mode` selects the directory save. */
/* Loads path into `into` (same config) and reads its step. Loading into an
 * existing model skips tfm_model_init's random initialisation, which would
 * dominate the run time at this size. */
static tfm_status load(const tfm_model *into, const char *path, long *step) {
    tfm_config cfg;
    TFM_TRY(tfm_checkpoint_read_config(path, &cfg, step));
    return tfm_checkpoint_load_into(into, path);
}

static void kill_cycles(tfm_model *m, const tfm_model *back, tfm_trainer *tr, const char *target,
                        const char *scan_dir, double save_time, int dir_mode, int kills) {
    long last = 0; /* the last version reported complete */
    int saw_new = 0, saw_old = 0;
    tfm_rng rng;
    tfm_rng_init(&rng, 2024, (uint64_t)dir_mode);
    size_t np = m->layout.n_params;
    for (int k = 0; k < kills; k++) {
        int fds[2];
        if (pipe(fds) != 0) {
            perror("pipe");
            exit(1);
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            exit(1);
        }
        if (pid == 0) {
            close(fds[0]);
            child_loop(m, dir_mode ? tr : NULL, target, last + 1, fds[1]);
        }
        close(fds[1]);
        /* Wait for its first finished save (so the stale temporary of the
         * previous victim is gone), then kill it at a random moment. */
        long v;
        ssize_t got = read(fds[0], &v, sizeof v);
        CHECK(got == (ssize_t)sizeof v, "cycle %d: the child never finished a save", k);
        if (got == (ssize_t)sizeof v) last = v;
        sleep_s(tfm_rng_next_uniform(&rng) * 2.0 * save_time);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "cycle %d: child exited early (%d)",
              k, status);
        while (read(fds[0], &v, sizeof v) == (ssize_t)sizeof v) last = v;
        close(fds[0]);

        /* the file at the path: the last reported version or the next */
        const char *weights = target;
        char buf[512];
        if (dir_mode) {
            snprintf(buf, sizeof buf, "%s/model.safetensors", target);
            weights = buf;
        }
        long step = -1;
        tfm_status s = load(back, weights, &step);
        CHECK(s == TFM_OK, "cycle %d: %s does not load after a kill: %s", k, weights,
              tfm_last_error());
        if (s == TFM_OK) {
            CHECK(step == last || step == last + 1, "cycle %d: step %ld, last reported %ld", k, step,
                  last);
            size_t bad = first_mismatch(back->params, np, step);
            CHECK(bad == np, "cycle %d: parameter %zu is not version %ld's", k, bad, step);
            saw_new += step == last + 1;
            saw_old += step == last;
        }
        if (dir_mode) {
            snprintf(buf, sizeof buf, "%s/train_state.safetensors", target);
            tfm_train_state_info info;
            s = tfm_train_state_load(tr, buf, &info);
            CHECK(s == TFM_OK, "cycle %d: train state does not load: %s", k, tfm_last_error());
            if (s == TFM_OK) {
                CHECK(info.step >= step && info.step <= last + 1,
                      "cycle %d: state step %ld, weights %ld, last %ld", k, info.step, step, last);
                const char *b = tfm_train_state_get(&info, "batch");
                CHECK(b && atol(b) == info.step, "cycle %d: data position %s", k, b ? b : "-");
                CHECK(first_mismatch(tr->adam_m, np, info.step) == np, "cycle %d: adam.m torn", k);
            }
            tfm_train_state_info_free(&info);
            tfm_checkpoint_list l;
            CHECK(tfm_checkpoint_dir_list(target, &l) == TFM_OK, "list: %s", tfm_last_error());
            CHECK(l.n >= 1 && l.n <= 3, "cycle %d: %d checkpoints kept (keep 2)", k, l.n);
            for (int i = 0; i < l.n; i++) {
                long cs = -1;
                CHECK(load(back, l.paths[i], &cs) == TFM_OK && cs == l.steps[i],
                      "cycle %d: listed %s does not load: %s", k, l.paths[i], tfm_last_error());
            }
            tfm_checkpoint_list_free(&l);
        }
        int ntmp = count_tmp(scan_dir);
        CHECK(ntmp >= 0 && ntmp <= 1, "cycle %d: %d temporary files in %s", k, ntmp, scan_dir);
    }
    printf("%s: %d kills; the file held the new version %d times, the previous one %d times\n",
           dir_mode ? "dir_save" : "save", kills, saw_new, saw_old);
    CHECK(saw_old + saw_new == kills, "every kill left a loadable file");

    /* one more save cleans the last victim's temporary file */
    fill(m->params, np, last + 2);
    if (dir_mode) {
        tr->step = last + 2;
        CHECK(tfm_checkpoint_dir_save(m, tr, last + 2, 2, target, NULL, NULL, 0) == TFM_OK, "save");
    } else {
        CHECK(tfm_checkpoint_save(m, last + 2, target) == TFM_OK, "save");
    }
    CHECK(count_tmp(scan_dir) == 0, "temporary files left after a clean save: %d", count_tmp(scan_dir));
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tfm_killckpt_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    /* ~3.3M parameters, 13 MB */
    tfm_config c;
    tfm_config_default(&c);
    c.enc_layers = 0;
    c.dec_layers = 1;
    c.d_model = 512;
    c.heads = 8;
    c.d_ff = 1024;
    c.max_positions = 64;
    c.src_vocab = c.tgt_vocab = 1200;
    c.share = TFM_SHARE_NONE;
    tfm_model m;
    CHECK(tfm_model_init(&m, &c, 0) == TFM_OK, "init: %s", tfm_last_error());
    if (!m.params) return tfm_test_finish();
    size_t np = m.layout.n_params;

    char path[256], ddir[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fill(m.params, np, 0);
    double t0 = now_s();
    CHECK(tfm_checkpoint_save(&m, 0, path) == TFM_OK, "save: %s", tfm_last_error());
    double save_time = now_s() - t0;
    printf("%zu parameters (%.1f MB): one save takes %.0f ms\n", np, np * 4.0 / 1e6, save_time * 1e3);
    tfm_model back;
    CHECK(tfm_model_init(&back, &c, 0) == TFM_OK, "init: %s", tfm_last_error());
    kill_cycles(&m, &back, NULL, path, dir, save_time, 0, 24);

    tfm_adam_params opt;
    tfm_adam_default_params(&opt);
    tfm_lr_schedule sched;
    tfm_lr_schedule_default(&sched);
    tfm_trainer tr;
    CHECK(tfm_trainer_init(&tr, &m, &opt, &sched, 1, 0, 2, 9) == TFM_OK, "trainer: %s",
          tfm_last_error());
    snprintf(ddir, sizeof ddir, "%s/run", dir);
    fill(m.params, np, 0);
    fill(tr.adam_m, np, 0);
    t0 = now_s();
    CHECK(tfm_checkpoint_dir_save(&m, &tr, 0, 2, ddir, NULL, NULL, 0) == TFM_OK, "dir save: %s",
          tfm_last_error());
    save_time = now_s() - t0;
    printf("one directory save (weights + state + links) takes %.0f ms\n", save_time * 1e3);
    kill_cycles(&m, &back, &tr, ddir, ddir, save_time, 1, 16);

    tfm_trainer_free(&tr);
    tfm_model_free(&back);
    tfm_model_free(&m);
    if (!tfm_test_failed) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    } else {
        printf("files kept in %s\n", dir);
    }
    return tfm_test_finish();
}
