// GPU SwiGLU on the packed output of the fused gate/up projection:
// gu[N, 2F] holds gate in columns [0, F) and up in [F, 2F).
#pragma once
#include "../common/gpu.h"

// out[N,F] = silu(gate) * up, computed in fp32.
void swiglu_forward(bf16 *out, const bf16 *gu, int N, int F, cudaStream_t s);
// Writes dgu[N,2F] (d gate, d up) from dout[N,F].
void swiglu_backward(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F, cudaStream_t s);
