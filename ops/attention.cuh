// Causal grouped-query attention on the GPU, scale 1/sqrt(hd). Two implementations
// behind one call: cuDNN's fused SDPA (backend graph API; when ctx->use_cudnn and the
// shape is supported) and a hand-written flash-attention kernel (always available, also
// the check on cuDNN).
//   qkv [B*T, (H + 2*KV)*hd]: per row, q heads | k heads | v heads (after RoPE)
//   out [B*T, H*hd]; lse [B*H*T] softmax statistics (fp32) saved for backward.
// Query head h reads kv head h / (H / KV).
#pragma once
#include "../common/gpu.h"

// The kernel's backward is bit-reproducible (one writer per output); cuDNN's is not (see
// docs/TRAINING.md), whatever numerical notes cuDNN attaches to its engine.
typedef enum { ATTN_AUTO = 0, ATTN_CUDNN = 1, ATTN_KERNEL = 2 } AttnImpl;

void attention_forward(GpuCtx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H, int KV, int hd,
                       AttnImpl impl);
// Writes dqkv (same packed layout). Needs out and lse of the forward with the same impl.
void attention_backward(GpuCtx *ctx, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                        const float *lse, int B, int T, int H, int KV, int hd, AttnImpl impl);
// Which implementation attention_backward will run for this shape: "cuDNN" or "kernel"
// (builds and caches the cuDNN plan to find out).
const char *attention_backward_path(GpuCtx *ctx, int B, int T, int H, int KV, int hd, AttnImpl impl);
// Whether cuDNN SDPA handles this shape on this GPU (head_dim multiple of 8, <= 128, ...).
int attention_cudnn_supported(const GpuCtx *ctx, int hd);
