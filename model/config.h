// The model description: a Hugging Face config.json for the Llama family (Llama 2,
// Llama 3/3.1/3.2, Qwen2/2.5) parsed into one struct. Both key styles are read:
// transformers 4.x (rope_theta, rope_scaling, torch_dtype) and 5.x (rope_parameters,
// dtype). Anything we do not implement is refused with the field and its value.
#ifndef LLAMA_AO_MODEL_CONFIG_H
#define LLAMA_AO_MODEL_CONFIG_H

#include <stddef.h>

#include "../ops/rope.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ARCH_LLAMA = 0, ARCH_QWEN2 = 1 } ModelArch;

#define CONFIG_MAX_EOS 8

typedef struct {
    ModelArch arch;
    int vocab_size;
    int hidden_size;        // D
    int intermediate_size;  // F
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_position_embeddings;
    float rms_norm_eps;
    RopeParams rope;
    int tie_word_embeddings;
    int qkv_bias;  // Qwen2: q/k/v projections carry a bias
    int bos_token_id;  // -1 when absent
    int n_eos;
    int eos_token_ids[CONFIG_MAX_EOS];
    char dtype[16];  // "float32" | "bfloat16" | "float16" | "" when absent
    float initializer_range;
} LlamaConfig;

// Parses config.json text. 1 on success; 0 with a message naming the field in err.
int config_parse(LlamaConfig *c, const char *json, size_t len, char *err, size_t errlen);
// Reads DIR/config.json (or the file itself when path is a file).
int config_load(LlamaConfig *c, const char *path, char *err, size_t errlen);
// Checks the numbers are usable (positive, divisible, bounded). Called by parse; also
// for configs built in code. 1 ok, 0 with message.
int config_validate(const LlamaConfig *c, char *err, size_t errlen);
// Writes config.json for transformers (atomic). 1 ok, 0 with message.
int config_save(const LlamaConfig *c, const char *path, char *err, size_t errlen);
// Parameter count (tied embeddings counted once).
size_t config_num_params(const LlamaConfig *c);
const char *config_arch_name(ModelArch a);
// One-line human summary into buf.
void config_describe(const LlamaConfig *c, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
