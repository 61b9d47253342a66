// Token embedding lookup (nn.Embedding without padding_idx). CPU reference.
#ifndef LLAMA_AO_OPS_EMBEDDING_H
#define LLAMA_AO_OPS_EMBEDDING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// out[N,D] = wte[tokens[n], :], wte is [V,D]. Fails (CHECK) on a token outside [0,V).
void embedding_forward_cpu(float *out, const int32_t *tokens, const float *wte, int N, int V, int D);
// dwte[V,D] += scatter-add of dout[N,D] by token. Deterministic: each dwte element is
// summed by one thread in token order, whatever the thread count.
void embedding_backward_cpu(float *dwte, const float *dout, const int32_t *tokens, int N, int V, int D);
// Host preparation for the GPU embedding backward: a stable counting sort of positions
// 0..N-1 by token. Bucket b (buckets in increasing token order) is token bucket_token[b]
// at positions sorted_pos[bucket_start[b] .. bucket_start[b+1]), in increasing position
// order. Arrays hold N, N+1 and N entries; returns n_buckets (distinct tokens). Fails
// (CHECK) on a token outside [0,V).
int embedding_buckets_cpu(int32_t *sorted_pos, int32_t *bucket_start, int32_t *bucket_token, const int32_t *tokens,
                          int N, int V);

#ifdef __cplusplus
}
#endif

#endif
