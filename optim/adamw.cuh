// Fused AdamW with fp32 master weights and a bf16 working copy, and the global
// gradient norm. Semantics follow torch.optim.AdamW (decoupled weight decay applied
// first, bias-corrected moments):
//   p *= 1 - lr*wd;  g = grad * grad_scale;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps);   param = bf16(p)
// (nearest even from an fp32 master, or stochastically rounded when the bf16 param is the master)
#pragma once
#include "../common/gpu.h"

void adamw_update(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float b1,
                  float b2, float eps, float wd, int step, float grad_scale, cudaStream_t s);
// --master bf16-sr: no fp32 master, param is read and written; the same update, and the result
// stochastically rounded to bf16 (torchao's _fp32_to_bf16_sr, llm.c's stochastic_rounding) with
// the bits lowbit_sr_bits(seed, step, sr_offset + i), i.e. a function of the element's index in
// the whole parameter vector (sr_offset: the tensor's first element), so ZeRO shards, the CPU
// step (adamw_update_bf16_sr_cpu) and a resumed run draw the same bits.
void adamw_update_bf16_sr(bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float b1, float b2,
                          float eps, float wd, int step, float grad_scale, uint64_t seed, uint64_t sr_offset,
                          cudaStream_t s);
// out[0] = sum of grad[i]^2 in fp32, deterministic (fixed-shape two-stage reduction).
size_t grad_norm_scratch_floats(size_t n);
void grad_norm_squared(float *out, float *scratch, const float *grad, size_t n, cudaStream_t s);
