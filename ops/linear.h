// Linear recipes (train_llama --recipe): which precision each nn.Linear of the model runs in, and
// the scratch its fp8 casts need. Host code only (no CUDA), so the CPU tests check the rules; the
// dispatch itself is ops/linear.cuh. docs/FP8.md "--recipe in train_llama" has the whole picture.
//
// Which Linears take fp8 (written down in docs/FP8.md "--recipe in train_llama"):
//   convert_to_float8_training swaps every nn.Linear its module_filter_fn lets through. The filter of
//   torchao's own example (API reference of convert_to_float8_training) does not convert the last
//   module (the output projection, our lm_head) nor a Linear whose in_features or out_features is not
//   a multiple of 16 (fp8 GEMM operands are rows of whole 16-byte units; torch._scaled_mm refuses
//   them); torchtitan's float8 filter is the same. torchao has no first/last-layer filter (Hugging
//   Face accelerate adds one; we do not): q/k/v/o and gate/up/down of every layer are converted. A
//   Linear the fp8 GEMMs cannot take runs exactly as in the bf16 recipe, and the start-up line lists
//   it with the reason.
//   The token count N = b*t is a runtime dimension, not a module property: the grad_weight GEMM
//   reduces over it, and torch._scaled_mm fails when it is not a multiple of 16 (torchao pads only
//   with pad_inner_dim). An fp8 recipe refuses such a run at start-up.
#ifndef LLAMA_AO_OPS_LINEAR_H
#define LLAMA_AO_OPS_LINEAR_H

#include <stddef.h>
#include <stdint.h>

#include "../quant/fp8.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LINEAR_BF16 = 0,           // bf16 operands, fp32 accumulation (ops/matmul.cuh): the default
    LINEAR_FP8_TENSORWISE,     // torchao Float8LinearConfig.from_recipe_name("tensorwise")
    LINEAR_FP8_ROWWISE,        // "rowwise"
    LINEAR_FP8_ROWWISE_GW_HP,  // "rowwise_with_gw_hp": grad_weight stays a bf16 GEMM
    LINEAR_FP8_BLOCKWISE,      // torchao blockwise_fp8_training (DeepSeek-V3 1x128 / 128x128)
    LINEAR_NRECIPES
} LinearRecipe;

// The --recipe spelling ("bf16", "fp8-tensorwise", ...) and the quant/fp8.h recipe of the casts.
const char *linear_recipe_name(LinearRecipe r);
Fp8Recipe linear_fp8_recipe(LinearRecipe r);  // only for r != LINEAR_BF16
// Parses a --recipe value. 0 with a message in err (names the accepted values; MXFP8 names issue 7).
int linear_recipe_parse(const char *s, LinearRecipe *r, char *err, size_t n);

// Whether a run of N tokens per micro-batch can use the recipe (always for bf16); why otherwise.
int linear_tokens_ok(LinearRecipe r, long N, char *why, size_t n);

// Whether one Linear (W [M, K]) runs the recipe's fp8 GEMMs. Its output are columns [col, col + M)
// of rows of ldo elements (a group of Linears writes one packed output, see ops/linear.cuh); hp: the
// model keeps it in bf16 whatever the recipe (lm_head). 0 with the reason in why (may be NULL).
int linear_part_fp8(LinearRecipe r, int K, int M, int col, int ldo, int hp, char *why, size_t n);

// ---- cast scratch --------------------------------------------------------------------------------
// One Linear runs at a time on the compute stream, so every fp8 Linear shares one scratch, sized for
// the largest. Codes in bytes, scales in floats, gcopy in bf16 elements.
#define LINEAR_AMAX_FLOATS 1025  // FP8_AMAX_PARTIALS + 1 (quant/fp8_cast.cuh; ops/linear.cu asserts it)
typedef struct {
    size_t qx;     // x [N, K] (forward) or x^T [K, N] (grad_weight)
    size_t qw;     // W [M, K] (forward) or W^T [K, M] (grad_input)
    size_t qg;     // g [N, M] (grad_input) or g^T [M, N] (grad_weight)
    size_t gcopy;  // a Linear's columns of a packed gradient made contiguous (the casts read dense rows)
    size_t sx, sw, sg;  // their scale_inv entries (fp8_scale_count)
    size_t svec;   // rowwise_with_gw_hp: W^T's tensor scale broadcast into K entries (OUTER_VEC_32F)
    size_t amax;   // tensor scaling: fp8_amax_tensor's partials + the amax
} LinearScratchSize;

// Grows s to hold one fp8 Linear [M, K] over N tokens; split: its output shares rows with other
// Linears (a packed gradient, so gcopy is needed). Call only for Linears linear_part_fp8 accepts.
void linear_scratch_add(LinearScratchSize *s, LinearRecipe r, long N, int K, int M, int split);

// The recipe and its scratch, carved from the model's activation allocation.
typedef struct {
    LinearRecipe recipe;
    LinearScratchSize cap;
    uint8_t *qx, *qw, *qg;
    void *gcopy;  // bf16
    float *sx, *sw, *sg, *svec, *amax;
} LinearCtx;

// Bytes the scratch of lc->cap takes (each piece 256-byte aligned: cuBLASLt wants 16-byte aligned
// codes and block scales); 0 when cap is all zero (the bf16 recipe carves nothing). With base != NULL
// the pointers are set into [base, base + bytes).
size_t linear_ctx_place(LinearCtx *lc, void *base);

#ifdef __cplusplus
}
#endif
#endif
