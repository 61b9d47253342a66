// The whole Llama forward and backward on the CPU in fp32, assembled from the ops/
// references. This is the oracle for the GPU model and the engine of CPU training
// checks; activations for backward live in one carved allocation (LlamaActs).
#ifndef LLAMA_AO_MODEL_LLAMA_CPU_H
#define LLAMA_AO_MODEL_LLAMA_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// Per-layer activations saved for backward: X(field, numel expression of c, B, T, N=B*T).
#define LLAMA_LAYER_ACTS(X)                                  \
    X(x_in, N * D)        /* residual stream entering */     \
    X(ln1, N * D)         /* input_layernorm output */       \
    X(ln1_rstd, N)                                           \
    X(q, N * QD)          /* after RoPE */                   \
    X(k, N * KVD)         /* after RoPE */                   \
    X(v, N * KVD)                                            \
    X(att, (size_t)B * H * T * T) /* softmax probabilities */ \
    X(attn_out, N * QD)   /* before o_proj */                \
    X(x_mid, N * D)       /* residual after attention */     \
    X(ln2, N * D)                                            \
    X(ln2_rstd, N)                                           \
    X(gate, N * F)                                           \
    X(up, N * F)                                             \
    X(act, N * F)         /* silu(gate) * up */

// Model-level activations and backward scratch.
#define LLAMA_TOP_ACTS(X)                      \
    X(x_final, N * D)                          \
    X(lnf, N * D)                              \
    X(lnf_rstd, N)                             \
    X(logits, N * V)                           \
    X(losses, N)                               \
    X(d_logits, N * V)                         \
    X(d_res, N * D)                            \
    X(d_ln, N * D)                             \
    X(d_attn, N * QD)                          \
    X(d_q, N * QD)                             \
    X(d_k, N * KVD)                            \
    X(d_v, N * KVD)                            \
    X(d_act, N * F)                            \
    X(d_gate, N * F)                           \
    X(d_up, N * F)                             \
    X(inv_freq, (size_t)HD / 2)

#define ACT_FIELD_(name, size) float *name;
typedef struct { LLAMA_LAYER_ACTS(ACT_FIELD_) } LlamaLayerActs;
typedef struct {
    int B, T;
    LLAMA_TOP_ACTS(ACT_FIELD_)
    LlamaLayerActs *layers;
    float *mem;
    size_t total;  // floats
    int n_valid;   // targets counted by the last forward
} LlamaActs;

void llama_acts_init(LlamaActs *a, const LlamaConfig *c, int B, int T);
void llama_acts_free(LlamaActs *a);

// tokens, targets: [B*T]; targets < 0 are ignored; targets may be NULL (logits only,
// returns 0). Returns the mean cross-entropy over the non-ignored targets.
float llama_forward_cpu(const LlamaModel *m, LlamaActs *a, const int32_t *tokens, const int32_t *targets);
// Accumulates d(loss)/d(params) into grads (tab.total floats laid out like m->params).
// Needs the activations of the forward just run with the same tokens and targets.
void llama_backward_cpu(const LlamaModel *m, LlamaActs *a, float *grads, const int32_t *tokens,
                        const int32_t *targets);

#ifdef __cplusplus
}
#endif
#endif
