// GPU RoPE (HF rotate_half layout) applied in place to the q and k heads of a packed
// qkv buffer: each row n = b*T + t is [q heads (H*hd) | k heads (KV*hd) | v heads (KV*hd)].
// Angles are float(pos) * inv_freq[i] in fp32, as the CPU reference computes them.
#pragma once
#include "../common/gpu.h"

void rope_forward(bf16 *qkv, const float *inv_freq, int B, int T, int H, int KV, int hd, int pos_offset,
                  cudaStream_t s);
// The transpose rotation, in place on the dq and dk parts of dqkv (dv untouched).
void rope_backward(bf16 *dqkv, const float *inv_freq, int B, int T, int H, int KV, int hd, int pos_offset,
                   cudaStream_t s);
