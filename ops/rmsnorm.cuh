// GPU RMSNorm, optionally fused with the residual add that precedes it in a Llama block.
// Statistics and the residual add are computed in fp32; stored tensors are bf16.
#pragma once
#include "../common/gpu.h"

// out[N,D] = rmsnorm(inp) * weight; rstd[N] saved for backward.
void rmsnorm_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *weight, int N, int D, float eps,
                     cudaStream_t s);
// resid_out = bf16(resid_in + x); out = rmsnorm(resid_out) * weight (statistics of the
// rounded resid_out, so backward sees exactly what forward normalised).
void residual_rmsnorm_forward(bf16 *resid_out, bf16 *out, float *rstd, const bf16 *resid_in, const bf16 *x,
                              const bf16 *weight, int N, int D, float eps, cudaStream_t s);
// dinp = (dresid ? dresid : 0) + (d out / d inp)^T dout; dinp may alias dresid.
// dweight[D] += sum_n dout * inp * rstd, deterministic (per-block partials in scratch,
// then a fixed-order reduction); scratch holds rmsnorm_backward_scratch_floats(N, D).
size_t rmsnorm_backward_scratch_floats(int N, int D);
void rmsnorm_backward(bf16 *dinp, float *dweight, float *scratch, const bf16 *dout, const bf16 *dresid,
                      const bf16 *inp, const bf16 *weight, const float *rstd, int N, int D, cudaStream_t s);
