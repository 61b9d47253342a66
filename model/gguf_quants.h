// ggml block formats read by the GGUF importer (layouts from ggml-common.h). Each block
// struct's byte size is static_assert'ed: a block that is not packed exactly would read
// every tensor wrong.
#ifndef LLAMA_AO_MODEL_GGUF_QUANTS_H
#define LLAMA_AO_MODEL_GGUF_QUANTS_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

enum {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q8_0 = 8, GGML_Q4_K = 12, GGML_Q6_K = 14,
    GGML_BF16 = 30
};

#define QK4_0 32
#define QK4_1 32
#define QK8_0 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct { uint16_t d; uint8_t qs[QK4_0 / 2]; } BlockQ4_0;             // x = (q - 8) * d
typedef struct { uint16_t d, m; uint8_t qs[QK4_1 / 2]; } BlockQ4_1;          // x = q * d + m
typedef struct { uint16_t d; int8_t qs[QK8_0]; } BlockQ8_0;                  // x = q * d
typedef struct { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } BlockQ4_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } BlockQ6_K;

static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 20 bytes");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block is 144 bytes");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block is 210 bytes");

// Elements per block and bytes per block of a ggml type; 0 when we do not read it.
int ggml_type_block(uint32_t type, size_t *blk, size_t *bytes);

#endif
