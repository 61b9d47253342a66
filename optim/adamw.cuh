// Fused AdamW with fp32 master weights and a bf16 working copy, and the global
// gradient norm. Semantics follow torch.optim.AdamW (decoupled weight decay applied
// first, bias-corrected moments):
//   p *= 1 - lr*wd;  g = grad * grad_scale;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps);   param = bf16(p)
#pragma once
#include "../common/gpu.h"

void adamw_update(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float b1,
                  float b2, float eps, float wd, int step, float grad_scale, cudaStream_t s);
// out[0] = sum of grad[i]^2 in fp32, deterministic (fixed-shape two-stage reduction).
size_t grad_norm_scratch_floats(size_t n);
void grad_norm_squared(float *out, float *scratch, const float *grad, size_t n, cudaStream_t s);
