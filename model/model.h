// A Llama-family model on the CPU in fp32: config + parameter table + one carved
// parameter buffer. Loading from / saving to Hugging Face safetensors directories.
#ifndef LLAMA_AO_MODEL_MODEL_H
#define LLAMA_AO_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "params.h"
#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    LlamaConfig cfg;
    ParamTable tab;
    float *params;  // tab.total floats, one allocation
    LlamaWeights w;
    LlamaWeightsLayer *layers;
} LlamaModel;

// Allocates zeroed parameters for a config.
void model_init(LlamaModel *m, const LlamaConfig *c);
void model_free(LlamaModel *m);
// Llama-style random init (normal(0, initializer_range) matrices, ones for norms, zero
// biases), deterministic from seed.
void model_init_random(LlamaModel *m, uint64_t seed);

// Loads DIR (config.json + model.safetensors[.index.json]). Every expected tensor must
// be present with the expected shape and a float dtype; any other tensor is an error,
// except a tied checkpoint's lm_head.weight (ignored) and rotary inv_freq buffers.
// 1 ok; 0 with the message in err.
int model_load_hf(LlamaModel *m, const char *dir, char *err, size_t errlen);
// Loads weights from an open safetensors set into an initialised model (same rules).
int model_load_weights(LlamaModel *m, const SafeTensors *st, char *err, size_t errlen);
// The checks of model_load_weights without converting anything (for loaders that keep the
// file mapped): every tensor of tab present with its shape, F32/BF16/F16, finite; no tensor
// the config does not expect. 1 ok; 0 with the same messages in err.
int model_check_weights(const LlamaConfig *c, const ParamTable *tab, const SafeTensors *st, char *err, size_t errlen);
// Writes DIR/config.json and DIR/model.safetensors (fp32 or bf16) atomically.
int model_save_hf(const LlamaModel *m, const char *dir, int bf16, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
