// Softmax cross-entropy over a vocabulary, with ignored rows (target < 0, e.g. -100 as in
// PyTorch's ignore_index). CPU reference.
#ifndef LLAMA_AO_OPS_CROSS_ENTROPY_H
#define LLAMA_AO_OPS_CROSS_ENTROPY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// logits [N,V], targets [N]. losses [N] (may be NULL) = -log softmax(logits)[target], 0 for
// ignored rows. Returns the mean over rows with target >= 0 (0 if none); *n_valid (may be
// NULL) gets their count. Fails (CHECK) on target >= V.
float cross_entropy_forward_cpu(float *losses, const float *logits, const int32_t *targets, int N, int V,
                                int *n_valid);
// dlogits [N,V] += (softmax(logits) - onehot(target)) * dloss for rows with target >= 0.
// dloss is d(total loss)/d(row loss): 1/n_valid for the mean returned by forward.
void cross_entropy_backward_cpu(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                float dloss);

#ifdef __cplusplus
}
#endif

#endif
