// CPU inference: a Llama-family model whose linears are QTensors (fp32 or quantized per
// -q mode), a KV cache in fp32, and a forward that takes a batch of new tokens at a
// position (prompt processing in chunks, then one token at a time).
//
// What is quantized follows torchao's quantize_ defaults: every nn.Linear — q/k/v/o,
// gate/up/down and lm_head (also when it is tied to the embedding: quantize_ gives
// lm_head its own quantized weight and the embedding keeps the float one) — and nothing
// else (embedding, norms and biases stay fp32). A linear whose shape the mode cannot take
// is kept in fp32 exactly as torchao's handlers skip it (int4/8da4w: in_features not a
// multiple of the group; fp8: dims not multiples of 16); such skips are counted and
// reported, never silent.
#ifndef LLAMA_AO_MODEL_INFER_CPU_H
#define LLAMA_AO_MODEL_INFER_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "../quant/quant.h"
#include "config.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// Linear weights of one layer, in the order of the parameter table.
#define INFER_LAYER_LINEARS(X) X(wq) X(wk) X(wv) X(wo) X(wg) X(wu) X(wd)

typedef struct {
    float *ln1, *ln2;      // [D]
    float *bq, *bk, *bv;   // Qwen2 qkv biases or NULL
#define INFER_QT_FIELD_(n) QTensor n;
    INFER_LAYER_LINEARS(INFER_QT_FIELD_)
} InferLayer;

typedef struct {
    LlamaConfig cfg;
    QuantMode mode;
    int group;
    float *wte;     // [V, D]
    float *norm_f;  // [D]
    QTensor lm_head;
    InferLayer *layers;
    int n_linear, n_quantized;  // linears in the model / quantized ones (the rest are skips)
    char skipped[512];          // first few skip reasons, for the user
    // Storage: fp32 tensors point into `base` (kept for -q none) or into allocations of
    // their own (listed in allocs, freed with the model).
    LlamaModel base;
    int has_base;
    void **allocs;
    int n_allocs;
} InferModel;

// A fresh fp32 buffer owned by the model (for loaders).
float *infer_model_alloc(InferModel *im, size_t n);

// Builds an inference model from a loaded fp32 model, taking ownership of it. With a
// quantized mode the fp32 buffer is freed after quantization (only embeddings, norms,
// biases and skipped linears are kept in fp32).
void infer_model_build(InferModel *im, LlamaModel *m, QuantMode mode, int group);
void infer_model_free(InferModel *im);
// Weight bytes held in memory (packed codes + scales + fp32 tensors).
size_t infer_model_bytes(const InferModel *im);

// KV cache and scratch for sequences up to max_T tokens, fed up to max_batch tokens at a time.
typedef struct {
    int max_T, max_batch, pos;  // pos: tokens already in the cache
    float *k, *v;               // [n_layers, max_T, n_kv_heads * head_dim]
    float *x, *ln, *q, *kn, *vn, *att, *tmp, *gate, *up;  // scratch [max_batch, ...]
    float *logits;              // [max_batch, V]
    float *inv_freq;
} InferState;

void infer_state_init(InferState *s, const InferModel *im, int max_T, int max_batch);
void infer_state_free(InferState *s);
static inline void infer_state_reset(InferState *s) { s->pos = 0; }

// Feeds tokens[0..n) at positions s->pos.. (n <= max_batch, s->pos + n <= max_T) and
// advances s->pos. Returns the logits: of every fed token [n, V] when all_logits, else of
// the last one only [V]. The pointer is valid until the next call.
const float *infer_forward(const InferModel *im, InferState *s, const int32_t *tokens, int n, int all_logits);

#ifdef __cplusplus
}
#endif
#endif
