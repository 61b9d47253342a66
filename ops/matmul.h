// nn.Linear: out = inp @ W^T + bias, W stored [M,K] = [out_features, in_features] as in HF
// checkpoints. CPU reference.
#ifndef LLAMA_AO_OPS_MATMUL_H
#define LLAMA_AO_OPS_MATMUL_H

#ifdef __cplusplus
extern "C" {
#endif

// inp [N,K], weight [M,K], bias [M] or NULL, out [N,M].
void matmul_forward_cpu(float *out, const float *inp, const float *weight, const float *bias, int N, int K, int M);
// Accumulates dinp [N,K] += dout @ W, dweight [M,K] += dout^T @ inp, dbias [M] += sum_n dout.
// Each gradient is optional (NULL = skip). Deterministic for any thread count.
void matmul_backward_cpu(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                         const float *weight, int N, int K, int M);

#ifdef __cplusplus
}
#endif

#endif
