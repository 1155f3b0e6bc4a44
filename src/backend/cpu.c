/* cpu.c: the CPU backend: the table filled with the reference ops. */
#include "backend/backend.h"

static int cpu_supports(const tfm_config *cfg) {
    (void)cfg;
    return 1;
}

static const tfm_backend cpu_backend = {
    .name = "cpu",
    .supports = cpu_supports,
    .gemm = tfm_gemm,
    .linear_forward = tfm_linear_forward,
    .linear_backward = tfm_linear_backward,
    .embedding_forward = tfm_embedding_forward,
    .embedding_backward = tfm_embedding_backward,
    .positions_forward = tfm_positions_forward,
    .positions_backward = tfm_positions_backward,
    .rope = tfm_rope,
    .layernorm_forward = tfm_layernorm_forward,
    .layernorm_backward = tfm_layernorm_backward,
    .activation_forward = tfm_activation_forward,
    .activation_backward = tfm_activation_backward,
    .dropout = tfm_dropout,
    .residual_dropout = tfm_residual_dropout,
    .attention_forward = tfm_attention_forward,
    .attention_backward = tfm_attention_backward,
    .xent_forward = tfm_xent_forward,
    .xent_backward = tfm_xent_backward,
    .log_softmax = tfm_log_softmax,
};

const tfm_backend *tfm_backend_cpu(void) { return &cpu_backend; }
