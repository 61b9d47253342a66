// The one Linear dispatch (../shared/DESIGN.md): every nn.Linear of the model runs through
// linear_forward / linear_backward with the run's recipe (ops/linear.h: bf16 or an fp8 recipe), so
// the model code never branches on precision. docs/FP8.md "--recipe in train_llama" has the picture.
//
// A LinearGroup is one or more Linears that read the same input x [N, K] and write one packed output
// [N, ldo], ldo = the sum of their out_features, part p in columns [col_p, col_p + M_p): q/k/v into
// qkv, gate/up into gu, or a single Linear (o_proj, down_proj, lm_head).
//
// bf16 recipe (and any Linear that stays bf16): exactly the ops/matmul.cuh calls the trainer always
// made, in the same order. A `fused` group (weights, biases and gradients back to back) runs as one
// GEMM over the concatenated weight when all its parts are bf16; otherwise each part runs alone,
// with grad_input accumulated (beta = 1) from the second part on.
//
// fp8 and MX recipes, per Linear (torchao Float8Linear / MXLinear: each module has its own scales), casts per
// fp8_recipe_cast (quant/fp8.h) into the shared scratch (LinearCtx), GEMMs per ops/matmul_fp8.cuh:
//   forward       x cast once per group (same bits as torchao's per-module casts of the same x), W_p
//                 cast; y_p = x . W_p^T with fast accumulation (torchao's gemm_config_output), bias
//                 added after the bf16 rounding (torchao: output + bias).
//   grad_input    g_p cast (direct), W_p^T cast (transposed); rowwise_with_gw_hp broadcasts W^T's one
//                 tensor scale into K entries (cuBLASLt pairs outer vectors only); dx = g . W
//                 (accumulated over the parts), no fast accumulation.
//   grad_weight   x^T cast once per group, g_p^T cast; dW_p += g^T . x in fp32 with beta = 1, as the
//                 bf16 path accumulates; rowwise_with_gw_hp: the bf16 GEMM of ops/matmul.cuh instead.
//   dbias         the bf16 path's deterministic fp32 kernel on the bf16 gradient.
// MX recipes take the same steps with MX casts (e8m0 per 32 along each GEMM's reduction dim: x, W along
// K; g, W^T along M; g^T, x^T along N) and the MX GEMMs of ops/matmul_mx.cuh: native on sm_100+,
// emulated (dequantize to bf16 + bf16 GEMM, no speed-up) below; lc->mx_native says which the scratch holds.
// A part's gradient columns inside a packed g [N, ldo] are copied to a dense [N, M_p] first (the casts
// read dense rows). Codes and scales are recomputed in backward from the bf16 x and W (torchao saves
// the high-precision tensors too), so recompute flags change nothing.
#pragma once
#include "../common/gpu.h"
#include "linear.h"

typedef struct {
    const char *name;  // for the start-up line and messages ("q_proj")
    const bf16 *w;     // [M, K] (out_features, in_features)
    const bf16 *bias;  // [M] or NULL
    float *dw;         // [M, K] fp32 gradient, accumulated
    float *dbias;      // [M] fp32 or NULL
    int M;
    int hp;            // stays bf16 whatever the recipe (lm_head)
} LinearPart;

#define LINEAR_MAX_PARTS 3
typedef struct {
    int K;       // in_features of every part
    int nparts;  // 1..LINEAR_MAX_PARTS
    int fused;   // parts contiguous in memory: the bf16 path may run them as one GEMM
    LinearPart part[LINEAR_MAX_PARTS];
} LinearGroup;

// Output row stride of the group (the sum of out_features) and part p's first column.
int linear_group_ld(const LinearGroup *g);
int linear_group_col(const LinearGroup *g, int p);
// Whether part p runs the recipe's fp8 GEMMs (linear_part_fp8 on its shape and place); why if not.
int linear_group_part_fp8(LinearRecipe r, const LinearGroup *g, int p, char *why, size_t n);
// Grows s by what the group's fp8 parts need over N tokens.
void linear_group_scratch(LinearScratchSize *s, LinearRecipe r, long N, const LinearGroup *g);

// out[N, ldo] = x[N, K] . W_p^T (+ bias_p) for every part, on ctx->stream.
void linear_forward(LinearCtx *lc, GpuCtx *ctx, bf16 *out, const bf16 *x, const LinearGroup *g, int N);
// dx[N, K] = sum_p g_p . W_p (overwritten; NULL: skipped), dW_p += g_p^T . x, dbias_p += column sums
// of g_p, where g_p are part p's columns of dout [N, ldo].
void linear_backward(LinearCtx *lc, GpuCtx *ctx, bf16 *dx, const bf16 *dout, const bf16 *x, const LinearGroup *g,
                     int N);
