// Linear layers on the GPU through cuBLASLt: bf16 operands, fp32 accumulation.
// Weights are [M, K] (nn.Linear: out_features x in_features), activations row-major.
#pragma once
#include "../common/gpu.h"

// out[N, M] (row stride ldo >= M) = inp[N, K] @ W^T (+ bias[M], fused as a cuBLASLt epilogue).
void matmul_forward(GpuCtx *ctx, bf16 *out, const bf16 *inp, const bf16 *weight, const bf16 *bias, int N, int K,
                    int M, int ldo);
// dout[N, M] has row stride lddout >= M. Each output may be NULL (skipped):
//   dinp[N, K]    = (accumulate_dinp ? dinp : 0) + dout @ W        (bf16)
//   dweight[M, K] += dout^T @ inp                                   (fp32, beta = 1 in cuBLASLt)
//   dbias[M]      += sum_n dout[n, :]                               (fp32, deterministic kernel)
void matmul_backward(GpuCtx *ctx, bf16 *dinp, float *dweight, float *dbias, const bf16 *dout, int lddout,
                     const bf16 *inp, const bf16 *weight, int N, int K, int M, int accumulate_dinp);
// out[rows_p, rows_q] (row stride ldo >= rows_q) = beta * out + P[rows_p, kd] . Q[rows_q, kd]^T, both bf16 with
// the reduction dimension contiguous, fp32 accumulation, bf16 (out_f32 = 0) or fp32 output. The emulated MXFP8
// GEMM runs here on its dequantized operands (ops/matmul_mx.cuh).
void matmul_bf16_nt(GpuCtx *ctx, void *out, int out_f32, int ldo, float beta, const bf16 *P, const bf16 *Q, int rows_p,
                    int rows_q, int kd);
// Elementwise casts used around the matmuls and the optimizer.
void cast_f32_to_bf16(bf16 *dst, const float *src, size_t n, cudaStream_t s);
void cast_bf16_to_f32(float *dst, const bf16 *src, size_t n, cudaStream_t s);
