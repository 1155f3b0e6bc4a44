/*
 * cmd_generate.c: `transformer generate`: continue a prompt with a
 * decoder-only model (greedy, or sampled with temperature and top-k), using
 * the KV cache (src/infer/decode.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "infer/decode.h"
#include "text/bpe.h"
#include "train/checkpoint.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: transformer generate --model DIR --prompt TEXT [options]\n"
            "  --model DIR          model directory of a decoder-only model (required)\n"
            "  --prompt TEXT        the text to continue (required)\n"
            "  --max-new N          tokens to generate (default 100)\n"
            "  --temperature F      0 = greedy; > 0 samples from softmax(logits / F) (default 0)\n"
            "  --top-k N            sample among the N most likely tokens, 0 = all (default 0)\n"
            "  --seed N             sampling seed (default 1)\n"
            "  --threads N          (default: all cores, or TFM_NUM_THREADS)\n"
            "  --device cpu|cuda    where the model runs (default cpu; cuda needs a CUDA build)\n");
}

int cmd_generate(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *device = "cpu";
    int max_new = 100, top_k = 0, threads = 0;
    float temperature = 0;
    long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (!v) { fprintf(stderr, "transformer generate: %s needs a value\n", a); return 2; }
        int ok = 1;
        if (!strcmp(a, "--model")) dir = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--max-new")) ok = tfm_cli_int(v, 1, 1 << 20, &max_new);
        else if (!strcmp(a, "--temperature")) ok = tfm_cli_float(v, &temperature) && temperature >= 0;
        else if (!strcmp(a, "--top-k")) ok = tfm_cli_int(v, 0, 1 << 24, &top_k);
        else if (!strcmp(a, "--seed")) ok = tfm_cli_long(v, 0, 1L << 62, &seed);
        else if (!strcmp(a, "--threads")) ok = tfm_cli_int(v, 1, 4096, &threads);
        else if (!strcmp(a, "--device")) device = v;
        else { fprintf(stderr, "transformer generate: unknown option %s\n", a); usage(stderr); return 2; }
        if (!ok) { fprintf(stderr, "transformer generate: %s: bad value '%s'\n", a, v); return 2; }
        i++;
    }
    if (!dir || !prompt) { fprintf(stderr, "transformer generate: --model and --prompt are required\n"); return 2; }
    tfm_cli_set_threads(threads);
    char path[4096];
    tfm_bpe *bpe = NULL;
    tfm_model m;
    long step;
    snprintf(path, sizeof path, "%s/bpe.model", dir);
    if (tfm_bpe_load(path, &bpe) != TFM_OK) {
        fprintf(stderr, "transformer generate: %s\n", tfm_last_error());
        return 1;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const tfm_backend *be;
    if (tfm_backend_select(device, &be) != TFM_OK || tfm_checkpoint_load(&m, path, &step) != TFM_OK) {
        fprintf(stderr, "transformer generate: %s\n", tfm_last_error());
        tfm_bpe_free(bpe);
        return 1;
    }
    if (tfm_model_to_backend(&m, be) != TFM_OK) {
        fprintf(stderr, "transformer generate: %s\n", tfm_last_error());
        tfm_model_free(&m);
        tfm_bpe_free(bpe);
        return 1;
    }
    int rc = 1;
    int32_t *ids = NULL, *out = NULL;
    size_t n = 0;
    tfm_decoder dec;
    int have_dec = 0;
    char *text = NULL;
    if (m.cfg.enc_layers != 0) {
        fprintf(stderr, "transformer generate: %s is an encoder-decoder model (use `transformer translate`)\n", path);
    } else if (tfm_bpe_encode(bpe, prompt, strlen(prompt), &ids, &n) != TFM_OK) {
        fprintf(stderr, "transformer generate: prompt: %s\n", tfm_last_error());
    } else if (n == 0) {
        fprintf(stderr, "transformer generate: the prompt is empty\n");
    } else {
        int P = (int)n, cap = m.cfg.max_positions;
        if (P >= cap) {
            fprintf(stderr, "transformer generate: the prompt has %d tokens; the model holds %d\n", P, cap);
        } else {
            if (P + max_new > cap) max_new = cap - P;
            int len = 0;
            out = malloc((size_t)max_new * sizeof *out);
            if (out && tfm_decoder_init(&dec, &m, 1, 0, P + max_new) == TFM_OK) {
                have_dec = 1;
                if (tfm_generate(&dec, ids, 1, P, max_new, temperature, top_k, (uint64_t)seed, out, &len) == TFM_OK &&
                    tfm_bpe_decode(bpe, out, (size_t)len, &text, NULL) == TFM_OK) {
                    printf("%s%s\n", prompt, text);
                    rc = 0;
                }
            }
            if (rc) fprintf(stderr, "transformer generate: %s\n", tfm_last_error());
        }
    }
    free(text);
    free(ids);
    free(out);
    if (have_dec) tfm_decoder_free(&dec);
    tfm_model_free(&m);
    tfm_bpe_free(bpe);
    return rc;
}
