// Private to the qgemv*.cu files: what the SIMT GEMV and dispatch (qgemv.cu), the int4
// tensor-core kernels (qgemv_int4mma.cu) and the weight upload and scratch (qgemv_upload.cu)
// share. Not for users of the GEMV: they include qgemv.cuh.
#pragma once

#include "qgemv.cuh"

#define QG_WARPS 4
#define QG_KSPLIT_MAX 16
#define QG_PART_FLOATS ((size_t)QG_KSPLIT_MAX * 8 * 8192)  // split-K partials scratch
#define QG_MAX_M 8
// int4 tensor-core v2: ticket counters (QActScratch.cnt), one per row block of a split launch
#define QV2_MAX_CNT 8192

// Output epilogue: the per-row / per-token scales, the bias, the residual accumulate.
template <int MODE>
__device__ __forceinline__ void store_out(const QWeightGpu &w, const float *xs, float *y, int row, int m, float v,
                                          int accumulate) {
    if (MODE == QUANT_INT8) v *= __ldg(w.scale + row);
    if (MODE == QUANT_8DA4W) v *= __ldg(xs + m);
    if (MODE == QUANT_FP8) v = v * __ldg(xs + m) * __ldg(w.scale + row);
    if (w.bias) v += __ldg(w.bias + row);
    float *o = y + (size_t)m * w.rows + row;
    *o = accumulate ? *o + v : v;
}

// Split-K planning (qgemv.cu). The SMs of the current device (cached on first use).
int qgemv_sm_count(void);
// Split-K plan for `units` warps of work over `steps` units of K (unrolled U at a time): enough
// splits for ~24 warps per SM, within QG_KSPLIT_MAX, steps / U and the partials scratch for M
// tokens. *per: units of K per split, a multiple of `align`. Returns the number of splits.
int qgemv_ksplit_plan(const QActScratch *s, int units, int steps, int U, int align, int M, int rows, int *per);
// y[m, :] (=, or += when accumulate) the store_out epilogue of the sum over ksplit of the int4
// partials part [ksplit, M, rows] (qgemv.cu's qgemv_reduce_kernel<QUANT_INT4>).
void qgemv_reduce_int4(float *y, const float *part, int M, int ksplit, const QWeightGpu *w, int accumulate,
                       cudaStream_t st);

// The int4 tensor-core GEMVs (qgemv_int4mma.cu) for weights uploaded with tiled == 1 (v1) or
// 2 (v2; its x prep reads any QActSrc); shapes already checked by qgemv (K % 64 == 0, scratch for K features). Tokens are
// looped in launches of at most MMA_MAX_M (v1) or QG_MAX_M (v2).
void qgemv_int4_mma(float *y, const float *x, int M, const QWeightGpu *w, int accumulate, QActScratch *s,
                    cudaStream_t st);
void qgemv_int4_mma2(float *y, const QActSrc &src, int M, const QWeightGpu *w, int accumulate, QActScratch *s,
                     cudaStream_t st);
