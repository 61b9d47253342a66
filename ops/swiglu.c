#include "swiglu.h"

#include <math.h>

// For x << 0, expf(-x) overflows to inf and x / inf = -0, the right limit; no NaN.
void swiglu_forward_cpu(float *out, const float *gate, const float *up, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// d silu(x)/dx = s (1 + x (1 - s)) with s = sigmoid(x).
void swiglu_backward_cpu(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float s = 1.0f / (1.0f + expf(-g));
        dgate[i] += dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
        dup[i] += dout[i] * (g * s);
    }
}
