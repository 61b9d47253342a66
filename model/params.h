// The one parameter table. Every tensor of a Llama-family model is listed exactly once
// below; the X-macros generate the weight structs, the sizes and offsets in the single
// carved allocation, the Hugging Face names, and the loader/saver order.
//
// X(A, field, hf_name, ndim, dim0, dim1, present)
//   A        pass-through argument (the element type for struct generation)
//   hf_name  global: full name; layer: suffix after "model.layers.<i>."
//   dim0/1   shape as expressions of `c` (a const LlamaConfig *); dim1 ignored if ndim 1
//   present  whether the tensor exists for this config
// Order matters: wq/wk/wv, bq/bk/bv and wg/wu are adjacent so that, when their sizes
// keep the 16-element alignment, each group is one contiguous matrix and the GPU runs
// one fused GEMM for it (param_table_contiguous tells).
#ifndef LLAMA_AO_MODEL_PARAMS_H
#define LLAMA_AO_MODEL_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#ifdef __cplusplus
extern "C" {
#endif

#define P_QD(c) ((c)->n_heads * (c)->head_dim)
#define P_KVD(c) ((c)->n_kv_heads * (c)->head_dim)

#define LLAMA_GLOBAL_PARAMS(X, A)                                                                  \
    X(A, wte, "model.embed_tokens.weight", 2, c->vocab_size, c->hidden_size, 1)                     \
    X(A, norm_f, "model.norm.weight", 1, c->hidden_size, 1, 1)                                      \
    X(A, lm_head, "lm_head.weight", 2, c->vocab_size, c->hidden_size, !c->tie_word_embeddings)

#define LLAMA_LAYER_PARAMS(X, A)                                                                   \
    X(A, ln1, "input_layernorm.weight", 1, c->hidden_size, 1, 1)                                     \
    X(A, wq, "self_attn.q_proj.weight", 2, P_QD(c), c->hidden_size, 1)                              \
    X(A, wk, "self_attn.k_proj.weight", 2, P_KVD(c), c->hidden_size, 1)                             \
    X(A, wv, "self_attn.v_proj.weight", 2, P_KVD(c), c->hidden_size, 1)                             \
    X(A, bq, "self_attn.q_proj.bias", 1, P_QD(c), 1, c->qkv_bias)                                   \
    X(A, bk, "self_attn.k_proj.bias", 1, P_KVD(c), 1, c->qkv_bias)                                  \
    X(A, bv, "self_attn.v_proj.bias", 1, P_KVD(c), 1, c->qkv_bias)                                  \
    X(A, wo, "self_attn.o_proj.weight", 2, c->hidden_size, P_QD(c), 1)                              \
    X(A, ln2, "post_attention_layernorm.weight", 1, c->hidden_size, 1, 1)                           \
    X(A, wg, "mlp.gate_proj.weight", 2, c->intermediate_size, c->hidden_size, 1)                    \
    X(A, wu, "mlp.up_proj.weight", 2, c->intermediate_size, c->hidden_size, 1)                      \
    X(A, wd, "mlp.down_proj.weight", 2, c->hidden_size, c->intermediate_size, 1)

typedef enum { PARAM_MATRIX = 0, PARAM_VECTOR = 1 } ParamKind;

typedef struct {
    char hf_name[96];
    const char *field;  // struct field name ("wq")
    int layer;          // -1 for globals
    int ndim;
    int64_t shape[2];
    size_t numel;
    size_t offset;  // in elements, into the carved buffer
    ParamKind kind;  // matrices get weight decay, vectors (norms, biases) do not
} ParamInfo;

typedef struct {
    ParamInfo *p;
    int n;
    size_t total;  // elements
} ParamTable;

// Builds the table for a config (present tensors only, globals first, then layers in
// order). Offsets are aligned to 16 elements so every tensor starts 64-byte aligned
// in fp32 and 32-byte aligned in bf16.
void param_table_init(ParamTable *t, const LlamaConfig *c);
void param_table_free(ParamTable *t);
// Index of the tensor with this HF name, or -1.
int param_table_find(const ParamTable *t, const char *hf_name);
// 1 when tensors i..i+k-1 follow each other with no padding between them.
int param_table_contiguous(const ParamTable *t, int i, int k);

// Weight structs for any element type T: LLAMA_DEFINE_WEIGHTS(float, LlamaWeights)
// declares LlamaWeightsLayer and LlamaWeights, and LlamaWeights_point(w, base, tab, c)
// points every field into `base` following the table (absent tensors are NULL; a tied
// lm_head points at wte).
#define PARAM_FIELD_(T, field, hf, ndim, d0, d1, present) T *field;
#define PARAM_POINT_(T, field, hf, ndim, d0, d1, present) dst->field = (present) ? base + tab->p[k++].offset : NULL;
#define LLAMA_DEFINE_WEIGHTS(T, Name)                                                                  \
    typedef struct { LLAMA_LAYER_PARAMS(PARAM_FIELD_, T) } Name##Layer;                               \
    typedef struct {                                                                                 \
        LLAMA_GLOBAL_PARAMS(PARAM_FIELD_, T)                                                          \
        Name##Layer *layers;                                                                         \
        int n_layers;                                                                                \
    } Name;                                                                                          \
    static inline void Name##_point(Name *w, T *base, const ParamTable *tab, const LlamaConfig *c,   \
                                    Name##Layer *layers) {                                           \
        int k = 0;                                                                                   \
        Name *dst = w;                                                                               \
        LLAMA_GLOBAL_PARAMS(PARAM_POINT_, T)                                                          \
        if (!dst->lm_head) dst->lm_head = dst->wte;                                                  \
        w->layers = layers;                                                                          \
        w->n_layers = c->n_layers;                                                                   \
        for (int l = 0; l < c->n_layers; l++) {                                                      \
            Name##Layer *dst = &layers[l];                                                           \
            LLAMA_LAYER_PARAMS(PARAM_POINT_, T)                                                       \
        }                                                                                            \
        (void)k;                                                                                     \
    }

LLAMA_DEFINE_WEIGHTS(float, LlamaWeights)

#ifdef __cplusplus
}
#endif
#endif
