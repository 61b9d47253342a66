// CPU inference: a Llama-family model whose linears are QTensors (fp32 or quantized per
// -q mode), a KV cache in fp32, and a forward that takes a batch of new tokens at a
// position (prompt processing in chunks, then one token at a time).
//
// What is quantized follows torchao's quantize_ defaults: every nn.Linear — q/k/v/o,
// gate/up/down and lm_head (also when it is tied to the embedding: quantize_ gives
// lm_head its own quantized weight and the embedding keeps the float one) — and nothing
// else (embedding, norms and biases stay float). A linear whose shape the mode cannot take
// is kept in float (fp32, or a mapped file's bf16 / f16) exactly as torchao's handlers skip
// it (int4/8da4w: in_features not a multiple of the group; fp8: dims not multiples of 16);
// such skips are counted and reported, never silent.
//
// Weights mapped in place: infer_model_load_hf keeps the safetensors file mapped and points the
// embedding and every linear that stays unquantized into it, F32 as fp32 and BF16 / F16 as 16-bit
// storage (QTensor.wdtype, InferModel.wte_dtype) that the kernels expand exactly, so the logits
// are bit-identical to those of an fp32 copy. Quantized linears are quantized one at a time from
// an fp32 expansion of their tensor, so no fp32 copy of the whole model is ever made.
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
    // Added for the mapped loaders (zero elsewhere): the embedding in 16 bits (wte_dtype QW_BF16 /
    // QW_F16, wte16 [V, D], wte NULL; QW_F32: wte as always), the open file the mapped tensors
    // point into (owned, closed with the model), and whether int4 scales/zeros came from HQQ.
    QWeightDtype wte_dtype;
    const uint16_t *wte16;
    SafeTensors *mapped;
    int hqq;
} InferModel;

// A fresh fp32 buffer owned by the model (for loaders).
float *infer_model_alloc(InferModel *im, size_t n);
// Where the parameter-table entry p lives in the model: an fp32 vector (*vec; the embedding is
// one, see wte_dtype) or a linear (*lin). Both NULL for an entry the model has no slot for.
void infer_model_slot(InferModel *im, const ParamInfo *p, float ***vec, QTensor **lin);
// Points an unquantized linear, or the embedding (lin NULL), at a float tensor of an open file
// the model keeps (im->mapped): in place when its address suits its dtype, else a copy in the
// same dtype. F32 becomes fp32 storage, BF16 / F16 16-bit storage. 0 for other dtypes.
int infer_model_map_tensor(InferModel *im, QTensor *lin, const StTensor *t, int rows, int cols);

// Builds an inference model from a loaded fp32 model, taking ownership of it. With a
// quantized mode the fp32 buffer is freed after quantization (only embeddings, norms,
// biases and skipped linears are kept in fp32).
void infer_model_build(InferModel *im, LlamaModel *m, QuantMode mode, int group);
// Loads a Hugging Face directory (config.json + model.safetensors or a sharded index) with the
// checks of model_load_hf, keeping the file mapped (see the top of this file): with mode NONE
// the linears and the embedding stay in the file in their dtype. 1 ok; 0 with the message in err.
int infer_model_load_hf(InferModel *im, const char *dir, QuantMode mode, int group, char *err, size_t errlen);
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

// The index of the largest of logits[0..V) (the first on ties); *bad gets the index of the first
// NaN or +inf (an overflowed forward: every later token would be garbage), -1 when there is none.
// -inf is a valid logit. One pass, so the sampler's greedy scan costs nothing more.
int infer_logits_argmax(const float *logits, int V, int *bad);

#ifdef __cplusplus
}
#endif
#endif
