// Softmax cross-entropy over the vocabulary, fused with its backward, on a chunk of rows
// of bf16 logits (the LM head is run chunk by chunk so B x T x V logits never exist).
#pragma once
#include "../common/gpu.h"

// For each row n < N (logits row stride V): losses[n] = logsumexp(logits[n]) -
// logits[n][targets[n]] in fp32 (0 when targets[n] < 0). When dloss != 0, logits[n] is
// then overwritten with (softmax - onehot(target)) * dloss in bf16 (zeros for ignored
// rows). losses may be NULL.
void cross_entropy_forward_backward(float *losses, bf16 *logits, const int32_t *targets, int N, int V, float dloss,
                                    cudaStream_t s);
