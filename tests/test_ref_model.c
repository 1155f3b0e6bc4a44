/*
 * test_ref_model.c: whole models against PyTorch (tests/ref/make_model.py).
 *
 * For every refs/model_*.safetensors: load the configuration and PyTorch's
 * weights, run our forward and backward on the same batch, and compare the
 * loss, the logits and the gradient of EVERY parameter. Errors are the worst
 * relative error max|ours - torch| / max|torch| per tensor, fp32 on both
 * sides; tolerance 1e-4 (TOL below).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "test_util.h"
#include "train/safetensors.h"

#define TOL 1e-4

static int load_shape(const tfm_safetensors *st, const char *name, int *rows, int *cols) {
    const tfm_st_tensor *t = tfm_st_find(st, name);
    if (!t) return 0;
    *rows = t->ndim > 0 ? (int)t->shape[0] : 1;
    *cols = t->ndim > 1 ? (int)t->shape[1] : 1;
    return 1;
}

static int32_t *load_ids(const tfm_safetensors *st, const char *name, int *rows, int *cols) {
    if (!load_shape(st, name, rows, cols)) return NULL;
    int32_t *ids = malloc((size_t)*rows * *cols * sizeof *ids);
    if (tfm_st_read_i32(st, name, ids, (size_t)*rows * *cols) != TFM_OK) {
        fprintf(stderr, "%s\n", tfm_last_error());
        exit(1);
    }
    return ids;
}

static void run_case(const char *path, const char *label) {
    tfm_safetensors st;
    if (tfm_st_open(&st, path) != TFM_OK) {
        CHECK(0, "cannot open %s: %s", path, tfm_last_error());
        return;
    }
    tfm_config cfg;
    tfm_config_default(&cfg);
    const char *json = tfm_st_meta(&st, "config");
    CHECK(json && tfm_config_from_json(&cfg, json, path) == TFM_OK, "%s: config: %s", path, tfm_last_error());
    tfm_model m;
    if (tfm_model_init(&m, &cfg, 1) != TFM_OK) {
        CHECK(0, "%s: model init: %s", path, tfm_last_error());
        tfm_st_close(&st);
        return;
    }
    printf("== %s (%s, %zu parameters)\n", label, tfm_st_meta(&st, "implementation"), m.layout.n_params);

    /* PyTorch's weights into our buffer, by name; every canonical tensor must be there. */
    int n_canonical = 0;
    for (int i = 0; i < m.layout.n_tensors; i++) {
        const tfm_tensor_info *t = &m.layout.tensors[i];
        if (t->tied_to >= 0) continue;
        n_canonical++;
        char name[128];
        snprintf(name, sizeof name, "param.%s", t->name);
        tfm_status s = tfm_st_read_f32(&st, name, m.params + t->offset, t->numel);
        CHECK(s == TFM_OK, "%s", tfm_last_error());
    }
    int n_ref_params = 0;
    for (int i = 0; i < st.n_tensors; i++) n_ref_params += !strncmp(st.tensors[i].name, "param.", 6);
    CHECK(n_ref_params == n_canonical, "%s: PyTorch has %d parameter tensors, we have %d", label,
          n_ref_params, n_canonical);

    int B = 0, S = 0, T = 0, rows, cols;
    int32_t *src = load_ids(&st, "input.src", &B, &S);
    int32_t *tgt_in = load_ids(&st, "input.tgt_in", &rows, &T);
    if (tgt_in) B = rows;
    int32_t *targets = load_ids(&st, "input.targets", &rows, &cols);
    tfm_batch batch = {.B = B, .S = src ? S : 0, .T = tgt_in ? T : 0, .src = src, .tgt_in = tgt_in,
                       .targets = targets};

    tfm_workspace ws;
    CHECK(tfm_workspace_init(&ws, &m, B, S, T) == TFM_OK, "workspace: %s", tfm_last_error());
    CHECK(tfm_model_forward(&m, &ws, &batch, 0, 0) == TFM_OK, "forward: %s", tfm_last_error());

    int N = B * (tgt_in ? T : S), V = cfg.tgt_vocab;
    float *ref_logits = malloc((size_t)N * V * sizeof *ref_logits);
    float ref_loss;
    CHECK(tfm_st_read_f32(&st, "out.logits", ref_logits, (size_t)N * V) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_read_f32(&st, "out.loss", &ref_loss, 1) == TFM_OK, "%s", tfm_last_error());
    char what[160];
    snprintf(what, sizeof what, "%s logits", label);
    tfm_test_close(what, ws.logits, ref_logits, (size_t)N * V, TOL);
    float loss = (float)(ws.loss_sum / ws.n_tokens);
    snprintf(what, sizeof what, "%s loss (%.6f vs %.6f)", label, loss, ref_loss);
    tfm_test_close(what, &loss, &ref_loss, 1, TOL);

    float *grad = calloc(m.layout.n_params, sizeof *grad), *ref = malloc(m.layout.n_params * sizeof *ref);
    tfm_weights gw;
    CHECK(tfm_weights_bind(&gw, &cfg, grad) == TFM_OK, "bind");
    CHECK(tfm_model_backward(&m, &ws, &batch, &gw, 1.0f / (float)ws.n_tokens) == TFM_OK, "backward: %s",
          tfm_last_error());
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < m.layout.n_tensors; i++) {
        const tfm_tensor_info *t = &m.layout.tensors[i];
        if (t->tied_to >= 0) continue;
        char name[128];
        snprintf(name, sizeof name, "grad.%s", t->name);
        if (tfm_st_read_f32(&st, name, ref, t->numel) != TFM_OK) {
            CHECK(0, "%s", tfm_last_error());
            continue;
        }
        snprintf(what, sizeof what, "  d %s", t->name);
        double e = tfm_test_close(what, grad + t->offset, ref, t->numel, TOL);
        if (e > worst) { worst = e; worst_name = t->name; }
    }
    printf("%s: worst gradient error %.3e (%s)\n", label, worst, worst_name);

    tfm_weights_free(&gw);
    free(grad);
    free(ref);
    free(ref_logits);
    free(src);
    free(tgt_in);
    free(targets);
    tfm_workspace_free(&ws);
    tfm_model_free(&m);
    tfm_st_close(&st);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(void) {
    const char *dir = tfm_test_env("TFM_REF_DIR", "refs");
    DIR *d = opendir(dir);
    if (!d) tfm_test_skip("no reference directory (run tests/ref/generate.sh through ctest)");
    char *names[64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64) {
        size_t len = strlen(e->d_name);
        if (!strncmp(e->d_name, "model_", 6) && len > 12 && !strcmp(e->d_name + len - 12, ".safetensors"))
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n == 0) tfm_test_skip("no model_*.safetensors references (PyTorch missing?)");
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n; i++) {
        char path[4096], label[128];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        snprintf(label, sizeof label, "%.*s", (int)(strlen(names[i]) - 12 - 6), names[i] + 6);
        run_case(path, label);
        free(names[i]);
    }
    CHECK(n >= 7, "expected at least 7 reference models, found %d", n);
    return tfm_test_finish();
}
