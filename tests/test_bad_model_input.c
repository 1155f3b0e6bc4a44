/*
 * test_bad_model_input.c: bad input to the model gives TFM_ERR_INVALID with a
 * message naming the tensor, position and value, never a crash: token ids
 * negative or >= the vocabulary, sequences longer than max_positions (learned
 * positions), empty batches, batches larger than the workspace, decoding past
 * the cache.
 */
#include <string.h>

#include "infer/decode.h"
#include "test_util.h"

static void expect(const char *what, tfm_status st, const char *needle) {
    const char *msg = tfm_last_error();
    CHECK(st == TFM_ERR_INVALID, "%s: status %s (%s)", what, tfm_status_name(st), msg);
    CHECK(strstr(msg, needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what, msg, needle);
    printf("%-40s -> %s\n", what, msg);
}

int main(void) {
    tfm_config c;
    tfm_config_default(&c);
    c.enc_layers = c.dec_layers = 1;
    c.d_model = 16;
    c.heads = 2;
    c.d_ff = 16;
    c.positions = TFM_POS_LEARNED;
    c.max_positions = 8;
    c.src_vocab = c.tgt_vocab = 12;
    tfm_model m;
    CHECK(tfm_model_init(&m, &c, 1) == TFM_OK, "%s", tfm_last_error());
    tfm_workspace ws;
    CHECK(tfm_workspace_init(&ws, &m, 2, 8, 8) == TFM_OK, "%s", tfm_last_error());

    int32_t src[2 * 4] = {3, 4, 5, 6, 7, 8, 0, 0};
    int32_t tin[2 * 3] = {1, 4, 5, 1, 6, 0};
    int32_t tgt[2 * 3] = {4, 5, 2, 6, 2, 0};
    tfm_batch ok = {.B = 2, .S = 4, .T = 3, .src = src, .tgt_in = tin, .targets = tgt};
    CHECK(tfm_model_forward(&m, &ws, &ok, 1, 7) == TFM_OK, "valid batch rejected: %s", tfm_last_error());

    tfm_batch b = ok;
    src[5] = -1;
    expect("negative source id", tfm_model_forward(&m, &ws, &b, 0, 0), "src[1][1] = -1");
    src[5] = 12;
    expect("source id == vocabulary", tfm_model_forward(&m, &ws, &b, 0, 0), "src[1][1] = 12");
    src[5] = 8;
    tin[4] = 99;
    expect("target input id too large", tfm_model_forward(&m, &ws, &b, 0, 0), "tgt_in[1][1] = 99");
    tin[4] = 6;
    tgt[2] = -5;
    expect("negative target id", tfm_model_forward(&m, &ws, &b, 0, 0), "targets[0][2] = -5");
    tgt[2] = 2;

    b = ok;
    b.B = 0;
    expect("empty batch", tfm_model_forward(&m, &ws, &b, 0, 0), "empty batch");
    b = ok;
    b.S = 0;
    expect("empty source", tfm_model_forward(&m, &ws, &b, 0, 0), "empty source");
    b = ok;
    b.B = 3;
    expect("batch larger than the workspace", tfm_model_forward(&m, &ws, &b, 0, 0), "exceeds the workspace");

    int32_t long_src[10] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 3};
    b = (tfm_batch){.B = 1, .S = 10, .T = 3, .src = long_src, .tgt_in = tin, .targets = tgt};
    expect("source longer than max_positions", tfm_model_forward(&m, &ws, &b, 0, 0), "exceeds max_positions 8");
    tfm_workspace big;
    expect("workspace longer than max_positions", tfm_workspace_init(&big, &m, 1, 10, 4), "max_positions");

    b = ok;
    b.src = NULL;
    expect("missing source", tfm_model_forward(&m, &ws, &b, 0, 0), "src is NULL");
    b = ok;
    b.targets = NULL;
    CHECK(tfm_model_forward(&m, &ws, &b, 0, 0) == TFM_OK, "forward without targets");
    expect("backward without targets", tfm_model_backward(&m, &ws, &b, &m.w, 1.0f), "no targets");

    tfm_decoder dec;
    CHECK(tfm_decoder_init(&dec, &m, 2, 4, 3) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_decoder_start(&dec, src, 2, 4) == TFM_OK, "%s", tfm_last_error());
    int32_t bad_tok[2] = {1, 40};
    expect("decoder token outside the vocabulary", tfm_decoder_step(&dec, bad_tok), "token 40 of row 1");
    int32_t tok[2] = {1, 1};
    for (int i = 0; i < 3; i++) CHECK(tfm_decoder_step(&dec, tok) == TFM_OK, "%s", tfm_last_error());
    expect("decoding past the cache", tfm_decoder_step(&dec, tok), "exceeds the cache length");
    expect("decoder rows over capacity", tfm_decoder_start(&dec, src, 3, 4), "do not fit");
    int from[2] = {0, 5};
    expect("reorder from a missing row", tfm_decoder_reorder(&dec, from, 2), "outside");
    tfm_decoder_free(&dec);

    tfm_workspace_free(&ws);
    tfm_model_free(&m);
    return tfm_test_finish();
}
