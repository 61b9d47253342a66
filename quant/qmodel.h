// Quantized model directories (infer_llama -o DIR): config.json + model.safetensors holding
// packed codes and scales under the HF tensor names, described in __metadata__, plus the
// tokenizer files. Loading needs no re-quantization. The format is in docs/FORMATS.md.
#ifndef LLAMA_AO_QUANT_QMODEL_H
#define LLAMA_AO_QUANT_QMODEL_H

#include "../model/infer_cpu.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QMODEL_FORMAT "llama.ao.quant"
#define QMODEL_VERSION "1"
// __metadata__ key of int4 files: how scales and zeros were chosen, torchao's
// Int4WeightOnlyConfig names ("tinygemm", or "hqq" with --hqq). Absent in older int4 files
// (tinygemm) and in every other mode.
#define QMODEL_INT4_QPARAMS "int4_choose_qparams_algorithm"

// Writes DIR (created if needed). tokenizer_src: a directory whose tokenizer.json /
// tokenizer_config.json are copied along, or a GGUF file whose absolute path is recorded in
// __metadata__ "tokenizer_gguf" (NULL: none). Fails (CHECK) on IO errors.
void qmodel_save(const InferModel *im, const char *tokenizer_src, const char *dir);
// 1 when DIR/model.safetensors carries our quantized-format metadata.
int qmodel_is_quantized_dir(const char *dir);
// Loads a directory written by qmodel_save. Every tensor is checked (dtype, shape) and every
// tensor in the file must be consumed. The file stays mapped (im->mapped): the embedding and
// unquantized linears are used in place in their dtype. Fails (CHECK) with the file and tensor
// named.
void qmodel_load(InferModel *im, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
