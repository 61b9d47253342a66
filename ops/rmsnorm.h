// Llama RMSNorm as in HF LlamaRMSNorm: y = w * (x / sqrt(mean(x^2) + eps)). CPU reference.
#ifndef LLAMA_AO_OPS_RMSNORM_H
#define LLAMA_AO_OPS_RMSNORM_H

#ifdef __cplusplus
extern "C" {
#endif

// inp,out [N,D]; weight [D]; rstd [N] = 1/sqrt(mean(x^2)+eps) saved for backward (may be NULL).
void rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *weight, int N, int D, float eps);
// Accumulates dinp [N,D] and dweight [D] (dweight optional, NULL = skip). rstd from forward.
void rmsnorm_backward_cpu(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int D);

#ifdef __cplusplus
}
#endif

#endif
