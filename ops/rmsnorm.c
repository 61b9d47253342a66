#include "rmsnorm.h"

#include <math.h>
#include <stddef.h>

// HF computes variance = x.pow(2).mean(-1) and x * rsqrt(variance + eps) in fp32, then
// weight * that. We take the mean square in double and round rstd to fp32 once, then keep
// HF's multiplication order: (x * rstd) * w.
void rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *weight, int N, int D, float eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * D;
        float *y = out + (size_t)n * D;
        double ss = 0.0;
        for (int d = 0; d < D; d++) ss += (double)x[d] * x[d];
        float r = (float)(1.0 / sqrt(ss / D + (double)eps));
        for (int d = 0; d < D; d++) y[d] = (x[d] * r) * weight[d];
        if (rstd) rstd[n] = r;
    }
}

// With y_i = w_i x_i r and r = (mean(x^2)+eps)^(-1/2):
//   dx_i = r w_i dy_i - (r^3 / D) x_i sum_j dy_j w_j x_j,   dw_i = sum_n dy_i x_i r.
void rmsnorm_backward_cpu(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int D) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * D, *dy = dout + (size_t)n * D;
        float *dx = dinp + (size_t)n * D;
        double r = rstd[n], dot = 0.0;
        for (int d = 0; d < D; d++) dot += (double)dy[d] * weight[d] * x[d];
        double c = r * r * r * dot / D;
        for (int d = 0; d < D; d++) dx[d] += (float)(r * weight[d] * dy[d] - c * x[d]);
    }
    if (!dweight) return;
    // One writer per column block, rows summed in order: deterministic for any thread
    // count, and the inner loop still walks rows contiguously.
    enum { BLK = 64 };
    int nblocks = (D + BLK - 1) / BLK;
#pragma omp parallel for
    for (int blk = 0; blk < nblocks; blk++) {
        int d0 = blk * BLK, nd = D - d0 < BLK ? D - d0 : BLK;
        double acc[BLK] = {0};
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * D + d0, *dy = dout + (size_t)n * D + d0;
            double r = rstd[n];
            for (int j = 0; j < nd; j++) acc[j] += (double)dy[j] * x[j] * r;
        }
        for (int j = 0; j < nd; j++) dweight[d0 + j] += (float)acc[j];
    }
}
