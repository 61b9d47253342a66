// GGUF (llama.cpp's model file, versions 2 and 3) read for import. The parser trusts
// nothing in the file: every count, string length, array length, tensor rank, dimension,
// type, offset and the alignment are checked against the file size with overflow-checked
// arithmetic; tensor data must lie inside the data section, aligned, without overlaps.
// Tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K are dequantized to fp32 at load
// (block layouts from ggml-common.h, each block struct's byte size static_assert'ed).
#ifndef LLAMA_AO_MODEL_GGUF_H
#define LLAMA_AO_MODEL_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "../common/fileio.h"
#include "../data/tokenizer.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    GGUF_T_U8 = 0, GGUF_T_I8, GGUF_T_U16, GGUF_T_I16, GGUF_T_U32, GGUF_T_I32, GGUF_T_F32, GGUF_T_BOOL,
    GGUF_T_STRING, GGUF_T_ARRAY, GGUF_T_U64, GGUF_T_I64, GGUF_T_F64, GGUF_T_COUNT
} GgufType;

typedef struct {
    const char *p;  // points into the mapping (not NUL-terminated)
    uint64_t n;
} GgufStr;

typedef struct {
    GgufStr key;
    GgufType type;
    GgufType arr_type;  // for arrays
    uint64_t n;         // array length (1 for scalars)
    const uint8_t *data;  // scalar value or first array element (strings: length-prefixed)
} GgufKV;

typedef struct {
    GgufStr name;
    uint32_t ndim;
    uint64_t ne[4];  // ne[0] is the fastest-varying dimension (row length)
    uint32_t type;   // ggml_type
    uint64_t offset;  // relative to the data section
    uint64_t nbytes;
    const uint8_t *data;
} GgufTensor;

typedef struct {
    MappedFile mf;
    char *path;
    uint32_t version;
    uint64_t n_kv, n_tensors, alignment;
    GgufKV *kv;
    GgufTensor *tensors;
    const uint8_t *data;  // start of the data section
} GgufFile;

// 1 ok; 0 with a message naming the file and what is wrong in err.
int gguf_open(GgufFile *g, const char *path, char *err, size_t errlen);
void gguf_close(GgufFile *g);
// 1 when the file starts with the GGUF magic.
int gguf_is_gguf(const char *path);
const GgufKV *gguf_find(const GgufFile *g, const char *key);
const GgufTensor *gguf_find_tensor(const GgufFile *g, const char *name);
// Element i of a string array (or the string value when kv is a string): walks the
// length-prefixed strings (bounds were checked at open).
GgufStr gguf_kv_str(const GgufKV *kv, uint64_t i);
// Scalar integer / float views (any integer type / f32 / f64); 0 when the type does not fit.
// All elements of a string array at once (one walk): out[kv->n] (caller allocates).
void gguf_kv_strs(const GgufKV *kv, GgufStr *out);
int gguf_kv_u64(const GgufKV *kv, uint64_t *out);
int gguf_kv_f64(const GgufKV *kv, double *out);

// Dequantizes a tensor's data to fp32 (numel = product of ne). 0 with err for a type we
// do not read.
int gguf_dequantize(const GgufTensor *t, float *out, char *err, size_t errlen);
const char *gguf_type_name(uint32_t ggml_type);

// Loads a llama-architecture GGUF: config from llama.* metadata, tensors renamed to HF
// names (the q/k row permutation llama.cpp's converter applies is undone), and — when
// tok is not NULL — the tokenizer from tokenizer.ggml.*; *chat_template (may be NULL)
// gets a copy of tokenizer.chat_template or NULL. Fails (CHECK) with the file named.
void gguf_load_llama(const char *path, LlamaModel *m, Tokenizer **tok, char **chat_template);

// data/tokenizer_gguf.c: a Tokenizer from tokenizer.ggml.* (model "gpt2" = byte-level BPE,
// "llama" = sentencepiece BPE with scores).
Tokenizer *tokenizer_from_gguf(const GgufFile *g);

#ifdef __cplusplus
}
#endif
#endif
