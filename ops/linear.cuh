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
// Each tensor is moved as few times as its scales allow (the bits are those of the casts above: an
// amax is the same whoever computes it, and g / g^T of tensorwise are one cast in two layouts):
//   - every cast reads its stored tensor in place: a part's gradient columns inside the packed
//     q/k/v or gate/up gradient [N, ldo] with its row stride, never copied to dense rows (every
//     recipe; quant/fp8_cast.cuh's _ld casts);
//   - one amax of x and of each W_p in the forward; with g->saved the backward reuses them for x^T
//     and W_p^T (torchao recomputes them from the saved bf16 tensors: the same values);
//   - g_p and g_p^T (tensorwise: one dtype and scale) from one amax and one read of g_p's columns;
//     other recipes cast g_p^T right after g_p (a part that fits L2 is then read from DRAM once);
//   - per-row scales (rowwise x, W, g): the row's amax and its cast in one kernel, one read;
//   - with g->wc and g->wversion (gradient accumulation) W_p and W_p^T are cast once per version of
//     the weights and reused by every later micro-batch (below); a wc entry with from_codes (ZeRO-3
//     --fp8-allgather) holds W_p's gathered codes, and W_p^T is their transpose (no cast at all).
// MX recipes take the same steps with MX casts (e8m0 per 32 along each GEMM's reduction dim: x, W along
// K; g, W^T along M; g^T, x^T along N) and the MX GEMMs of ops/matmul_mx.cuh: native on sm_100+,
// emulated (dequantize to bf16 + bf16 GEMM, no speed-up) below; lc->mx_native says which the scratch holds.
// Codes and scales are recomputed in backward from the bf16 x and W (torchao saves the high-precision
// tensors too), so recompute flags change nothing.
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
#define LINEAR_SAVED_FLOATS (1 + LINEAR_MAX_PARTS)
typedef struct {
    int K;       // in_features of every part
    int nparts;  // 1..LINEAR_MAX_PARTS
    int fused;   // parts contiguous in memory: the bf16 path may run them as one GEMM
    LinearPart part[LINEAR_MAX_PARTS];
    // What a forward leaves for its backward (torchao's autograd context), or NULL: device floats
    // [LINEAR_SAVED_FLOATS], the amax of x ([0]) and of each W_p ([1 + p]) when the recipe scales
    // them per tensor in both the forward and the backward. The backward of a group with saved
    // must see the same x and weights as the last forward with that saved (the model gives every
    // layer's group its own; recomputed activations are bit-identical); NULL recomputes them.
    float *saved;
    // Weight cast cache (ops/linear.h LinearWCache), one per part (entries of parts that stay bf16
    // unused), or NULL. wversion names the current bits of the weights; the caller changes it whenever
    // any weight of the group may have changed (the model: every optimizer step, llama_gpu_params_changed).
    // A part's W (forward) or W^T (grad_input) operand is taken from the cache when the cache holds
    // wversion, else cast into the cache and marked with it. Tensorwise casts W and W^T in one pass (one
    // amax, one read, both layouts) on a miss in the forward. 0: no caching (cast every time, the scratch).
    // The codes are those a cast at that time would make (the same W, the same cast), so results are
    // the same bits with and without the cache.
    LinearWCache *wc;
    unsigned long long wversion;
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
