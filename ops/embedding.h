// Token embedding lookup (nn.Embedding without padding_idx). CPU reference.
#ifndef LLAMA_AO_OPS_EMBEDDING_H
#define LLAMA_AO_OPS_EMBEDDING_H

#include <stdint.h>

// out[N,D] = wte[tokens[n], :], wte is [V,D]. Fails (CHECK) on a token outside [0,V).
void embedding_forward_cpu(float *out, const int32_t *tokens, const float *wte, int N, int V, int D);
// dwte[V,D] += scatter-add of dout[N,D] by token. Deterministic: each dwte element is
// summed by one thread in token order, whatever the thread count.
void embedding_backward_cpu(float *dwte, const float *dout, const int32_t *tokens, int N, int V, int D);

#endif
