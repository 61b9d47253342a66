// GPU embedding. Backward is deterministic without atomics: the host sorts the batch's
// positions by token (embedding_buckets_cpu, stable), and one block per distinct token
// sums its rows in position order.
#pragma once
#include "../common/gpu.h"

// out[N,D] = wte[tokens[n]]. Token ids are validated on the host before upload.
void embedding_forward(bf16 *out, const int32_t *tokens, const bf16 *wte, int N, int D, cudaStream_t s);
// dwte[bucket_token[b]] += sum_{i in [bucket_start[b], bucket_start[b+1])} dout[sorted_pos[i]]: the sum
// formed from zero (fixed order), then added to the row in one fp32 addition per element.
void embedding_backward(float *dwte, const bf16 *dout, const int32_t *sorted_pos, const int32_t *bucket_start,
                        const int32_t *bucket_token, int n_buckets, int D, cudaStream_t s);
