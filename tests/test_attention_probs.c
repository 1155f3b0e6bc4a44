/*
 * test_attention_probs.c: the caller can read the attention probabilities of
 * every layer and head (encoder, decoder, cross) after a forward: each row is
 * a distribution over the visible keys, padding keys get exactly 0, the
 * decoder's future gets exactly 0.
 */
#include <math.h>

#include "model/model.h"
#include "test_util.h"

int main(void) {
    tfm_config c;
    tfm_config_default(&c);
    c.enc_layers = 2;
    c.dec_layers = 3;
    c.d_model = 16;
    c.heads = 4;
    c.d_ff = 16;
    c.max_positions = 16;
    c.src_vocab = c.tgt_vocab = 10;
    tfm_model m;
    CHECK(tfm_model_init(&m, &c, 3) == TFM_OK, "%s", tfm_last_error());
    enum { B = 2, S = 5, T = 4 };
    int32_t src[B * S] = {3, 4, 5, 6, 7, 8, 9, 0, 0, 0};
    int32_t tin[B * T] = {1, 4, 5, 6, 1, 7, 0, 0};
    tfm_workspace ws;
    CHECK(tfm_workspace_init(&ws, &m, B, S, T) == TFM_OK, "%s", tfm_last_error());
    tfm_batch batch = {.B = B, .S = S, .T = T, .src = src, .tgt_in = tin};
    CHECK(tfm_model_forward(&m, &ws, &batch, 0, 0) == TFM_OK, "%s", tfm_last_error());
    const char *names[3] = {"encoder", "decoder", "cross"};
    int layers[3] = {c.enc_layers, c.dec_layers, c.dec_layers};
    for (int kind = 0; kind < 3; kind++) {
        double worst_sum = 0, masked_mass = 0;
        for (int l = 0; l < layers[kind]; l++) {
            int Tq, Tk;
            const float *p = tfm_workspace_attention(&m, &ws, (tfm_attn_kind)kind, l, &Tq, &Tk);
            CHECK(p != NULL, "%s layer %d: no probabilities", names[kind], l);
            if (!p) continue;
            const int32_t *keys = kind == 1 ? tin : src;
            for (int b = 0; b < B; b++)
                for (int h = 0; h < c.heads; h++)
                    for (int i = 0; i < Tq; i++) {
                        const float *row = p + (((size_t)b * c.heads + h) * Tq + i) * Tk;
                        double s = 0;
                        for (int j = 0; j < Tk; j++) {
                            int masked = keys[b * Tk + j] == c.pad_id || (kind == 1 && j > i);
                            if (masked) masked_mass += fabs(row[j]);
                            s += row[j];
                        }
                        worst_sum = fmax(worst_sum, fabs(s - 1));
                    }
        }
        printf("%-8s attention: rows sum to 1 within %.1e, mass on masked keys %.1e\n", names[kind], worst_sum,
               masked_mass);
        CHECK(worst_sum < 1e-5, "%s rows do not sum to 1", names[kind]);
        CHECK(masked_mass == 0, "%s: masked keys have probability", names[kind]);
    }
    int Tq, Tk;
    CHECK(tfm_workspace_attention(&m, &ws, TFM_ATTN_ENCODER, 2, &Tq, &Tk) == NULL, "layer out of range");
    tfm_workspace_free(&ws);
    tfm_model_free(&m);
    return tfm_test_finish();
}
