#include "cross_entropy.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "../common/error.h"

// Serial validation before any parallel region (a CHECK may longjmp in tests).
static int check_targets(const int32_t *targets, int N, int V) {
    int valid = 0;
    for (int n = 0; n < N; n++) {
        CHECK(targets[n] < V, "cross_entropy: target %d at row %d is outside the vocabulary [0, %d)", targets[n], n,
              V);
        valid += targets[n] >= 0;
    }
    return valid;
}

// log(sum exp(x)) in double with the max subtracted, so logits of any size stay finite.
static double logsumexp_row(const float *x, int V) {
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)x[i] - mx);
    return mx + log(sum);
}

float cross_entropy_forward_cpu(float *losses, const float *logits, const int32_t *targets, int N, int V,
                                int *n_valid) {
    int valid = check_targets(targets, N, V);
    if (n_valid) *n_valid = valid;
    // Row losses in double, then summed serially so the mean does not depend on threads.
    double *row = ao_malloc((size_t)(N > 0 ? N : 1) * sizeof(double));
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        row[n] = targets[n] < 0 ? 0.0 : logsumexp_row(x, V) - x[targets[n]];
        if (losses) losses[n] = (float)row[n];
    }
    double total = 0.0;
    for (int n = 0; n < N; n++) total += row[n];
    free(row);
    return valid ? (float)(total / valid) : 0.0f;
}

void cross_entropy_backward_cpu(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                float dloss) {
    check_targets(targets, N, V);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        const float *x = logits + (size_t)n * V;
        float *dx = dlogits + (size_t)n * V;
        double lse = logsumexp_row(x, V);
        for (int i = 0; i < V; i++) {
            double p = exp((double)x[i] - lse);
            dx[i] += (float)((p - (i == targets[n])) * dloss);
        }
    }
}
