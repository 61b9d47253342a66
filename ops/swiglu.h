// SwiGLU gating of the Llama MLP: out = silu(gate) * up (Shazeer 2020). CPU reference.
#ifndef LLAMA_AO_OPS_SWIGLU_H
#define LLAMA_AO_OPS_SWIGLU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Elementwise over n values; silu(x) = x / (1 + exp(-x)) as torch computes it.
void swiglu_forward_cpu(float *out, const float *gate, const float *up, size_t n);
// Accumulates dgate and dup (both required).
void swiglu_backward_cpu(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);

#ifdef __cplusplus
}
#endif

#endif
