// Private to ops/attention*.cu: the two implementations behind attention_forward/backward
// (ops/attention.cuh). Layouts are the public ones:
//   qkv  [B*T, (H + 2*KV)*hd]  row = q heads | k heads | v heads; row stride rs = (H + 2*KV)*hd
//   out  [B*T, H*hd];  lse [B, H, T] fp32 = logsumexp_s(scale * q.k_s) in natural log
// Both implementations write the same lse, so a backward of one can consume the forward of
// the other (the public API still asks for the same impl on both sides).
#pragma once
#include "../common/gpu.h"

// ---- hand-written tensor-core kernels (ops/attention_kernel.cu) ----
// hd 64 or 128 with 16-byte aligned qkv/dout/dqkv; return 0 (nothing enqueued) otherwise,
// and ops/attention.cu runs its scalar fp32 path. Any T >= 1. The backward is deterministic:
// every output element has exactly one writer (no atomics). Scratch: ctx->cudnn_workspace.
int attention_forward_mma(GpuCtx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H, int KV, int hd);
int attention_backward_mma(GpuCtx *ctx, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                           const float *lse, int B, int T, int H, int KV, int hd);
// D[(b*H + h)*T + t] = sum_d dO * O (fp32), the softmax-backward row term of both paths.
void attention_backward_d(GpuCtx *ctx, float *D, const bf16 *dout, const bf16 *out, int B, int T, int H, int hd);

// ---- cuDNN SDPA through the backend graph API (ops/attention_cudnn.cu) ----
// Whether this build and this GPU can run cuDNN SDPA at head dim hd (and any T >= 1).
int attention_cudnn_available(const GpuCtx *ctx, int hd);
// Return 1 on success; 0 when cuDNN could not build/finalize a plan for this shape, with
// the reason in *why (static storage). Nothing has been enqueued when they return 0.
int attention_forward_cudnn(GpuCtx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H, int KV, int hd,
                            const char **why);
// Whether cuDNN builds a plan for this shape and direction (cached; builds it if new).
int attention_cudnn_plan_ok(GpuCtx *ctx, int B, int T, int H, int KV, int hd, int bwd);
int attention_backward_cudnn(GpuCtx *ctx, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                             const float *lse, int B, int T, int H, int KV, int hd, const char **why);
