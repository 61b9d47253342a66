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
// MX recipes (mxfp8, mxfp8-gw-hp: torchao MXLinear, e4m3 elements, e8m0 per 32 along each GEMM's
//   reduction dim, RCEIL). torchtitan's MX filter is its float8 one (skip the output projection, dims
//   multiples of 16), but torchao's to_mx asserts that the blocked dimension is a multiple of 32, so a
//   Linear with in_features (forward's reduction) or out_features (grad_input's) not a multiple of 32
//   would fail there: we keep it in bf16 instead and say so. mxfp8 casts x and g along the tokens for
//   grad_weight, so it needs N % 32 == 0; mxfp8-gw-hp keeps grad_weight in bf16 (the fp8 rule, 16).
//   On GPUs below sm_100 the MX GEMMs are emulated (ops/matmul_mx.cuh): no speed-up over bf16.
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
    LINEAR_MXFP8,              // torchao MXLinear MXFP8 (RCEIL), all three GEMMs in MX
    LINEAR_MXFP8_GW_HP,        // the same with grad_weight as a bf16 GEMM (wgrad_with_hp)
    LINEAR_NRECIPES
} LinearRecipe;

// The --recipe spelling ("bf16", "fp8-tensorwise", ...) and the quant/fp8.h recipe of the casts.
const char *linear_recipe_name(LinearRecipe r);
Fp8Recipe linear_fp8_recipe(LinearRecipe r);  // only for r != LINEAR_BF16
int linear_recipe_is_mx(LinearRecipe r);      // mxfp8 / mxfp8-gw-hp
// Parses a --recipe value. 0 with a message in err (names the accepted values).
int linear_recipe_parse(const char *s, LinearRecipe *r, char *err, size_t n);

// Whether a run of N tokens per micro-batch can use the recipe (always for bf16); why otherwise.
int linear_tokens_ok(LinearRecipe r, long N, char *why, size_t n);

// Whether operands a and b of the recipe get the same cast up to layout: both tensor-scaled with one
// dtype and pow2 rule, so that one amax and one read of the stored tensor make both (tensorwise: g for
// grad_input and g^T for grad_weight). 0 for bf16.
int linear_same_cast(LinearRecipe r, Fp8Operand a, Fp8Operand b);

// Whether one Linear (W [M, K]) runs the recipe's fp8 GEMMs. Its output are columns [col, col + M)
// of rows of ldo elements (a group of Linears writes one packed output, see ops/linear.cuh); hp: the
// model keeps it in bf16 whatever the recipe (lm_head). 0 with the reason in why (may be NULL).
int linear_part_fp8(LinearRecipe r, int K, int M, int col, int ldo, int hp, char *why, size_t n);

// ---- cast scratch --------------------------------------------------------------------------------
// One Linear runs at a time on the compute stream, so every fp8 Linear shares one scratch, sized for
// the largest. Codes in bytes, scales in floats. Every cast reads its stored tensor in place, with the
// tensor's row stride: a part's gradient columns inside a packed q/k/v or gate/up gradient are never
// copied to dense rows.
#define LINEAR_AMAX_FLOATS 1026  // FP8_AMAX_WS_FLOATS (quant/fp8_cast.cuh; ops/linear.cu asserts it)
typedef struct {
    size_t qx;     // x [N, K] (forward) or x^T [K, N] (grad_weight)
    size_t qw;     // W [M, K] (forward) or W^T [K, M] (grad_input)
    size_t qg;     // g [N, M] (grad_input)
    size_t qgt;    // g^T [M, N] (grad_weight), cast right after g (the same read of g where one pass casts
                   // both, linear_same_cast of G_GI, G_GW; else while g may still be in L2)
    size_t sx, sw, sg;  // their scale_inv entries (fp8_scale_count); sg also g^T's when one pass casts both
    size_t sgt;    // g^T's scale_inv entries when g^T has a cast of its own
    size_t svec;   // rowwise_with_gw_hp: W^T's tensor scale broadcast into K entries (OUTER_VEC_32F)
    size_t amax;   // tensor scaling: fp8_amax_tensor's workspace (partials, the amax, its ticket counter)
    // MX recipes (ops/matmul_mx.cuh): the emulated GEMM's dequantized P and Q (bf16 elements) and the
    // native GEMM's swizzled e8m0 scales of P and Q (bytes). Both are sized; linear_ctx_place carves only
    // the pair of the path in use (LinearCtx.mx_native). The naive e8m0 scales live in sx / sw / sg / sgt.
    size_t mxp, mxq, mxsp, mxsq;
} LinearScratchSize;

// Grows s to hold one fp8 / MX Linear [M, K] over N tokens. Call only for Linears linear_part_fp8 accepts.
void linear_scratch_add(LinearScratchSize *s, LinearRecipe r, long N, int K, int M);

// The recipe and its scratch, carved from the model's activation allocation.
typedef struct {
    LinearRecipe recipe;
    int mx_native;  // MX GEMMs on cuBLASLt's VEC32_UE8M0 (sm_100+) rather than emulated (set before placing)
    LinearScratchSize cap;
    uint8_t *qx, *qw, *qg, *qgt;
    float *sx, *sw, *sg, *sgt, *svec, *amax;  // MX: the e8m0 bytes of x / W / g / g^T in sx / sw / sg / sgt
    void *mxp, *mxq;                          // bf16, emulated MX GEMM (NULL when mx_native)
    uint8_t *mxsp, *mxsq;                     // swizzled e8m0, native MX GEMM (NULL otherwise)
    // Weight casts (LinearGroup.wc): how many W / W^T operands were cast, and how many were taken from
    // a weight cache instead (host counters, for tests and the start-up line).
    unsigned long long w_casts, w_reused;
} LinearCtx;

// ---- weight cast cache ----------------------------------------------------------------------------
// The codes of one fp8 part's W (the forward's operand) and W^T (grad_input's), kept from one cast to
// the next while the weights do not change: with gradient accumulation the micro-batches of an
// optimizer step share them (ops/linear.cuh, LinearGroup.wc, says when they are used).
typedef struct {
    uint8_t *q[2];               // [0] W [M, K], [1] W^T [K, M]; device
    float *s[2];                 // their scales as the casts write them (MX: e8m0 bytes); device
    unsigned long long made[2];  // host: the weights version (LinearGroup.wversion) each holds; 0 none
    // ZeRO-3 --fp8-allgather (tensorwise only): q[0] and s[0] are the gathered codes and the scale,
    // filled by their owner (the model marks made[0]); the bf16 W is not gathered, so nothing is cast
    // here: W^T is q[0] transposed into the scratch (LinearCtx.qw) at each use, q[1] and s[1] unused.
    int from_codes;
} LinearWCache;

// Bytes one part's cache takes (pieces 256-byte aligned, as the scratch); with base != NULL the pointers
// of *wc are set into [base, base + bytes), made[] and from_codes cleared. The memory must be zeroed once (128x128
// scale padding). Only for parts linear_part_fp8 accepts; 0 for bf16.
size_t linear_wcache_place(LinearWCache *wc, LinearRecipe r, int K, int M, void *base);

// Bytes the scratch of lc->cap takes (each piece 256-byte aligned: cuBLASLt wants 16-byte aligned
// codes and block scales); 0 when cap is all zero (the bf16 recipe carves nothing). The scratch must
// be zeroed once before use (the amax workspace's counter; 128x128 scale padding). With base != NULL
// the pointers are set into [base, base + bytes). MX: the dequantization pair when !lc->mx_native,
// the swizzled-scale pair when lc->mx_native.
size_t linear_ctx_place(LinearCtx *lc, void *base);

#ifdef __cplusplus
}
#endif
#endif
