// Decode GEMV / small-batch GEMM for every inference weight format, with the CPU path's
// numerics (quant/qkernels.c): fp32 activations, the same dequantization (integer-exact),
// the same per-token dynamic activation quantization (bit-exact codes and scales), fp32
// accumulation in another order. Weights stay in the CPU QTensor layouts, so upload is a
// copy: row-major, element k of a row at byte k (int8 / e4m3), nibble k (int4: low nibble
// for even k), bf16 k (bf16).
//
// Work split: a warp owns QG_ROWS_PER_WARP output rows and walks K in steps of 256; lane l
// reads elements [256 s + 8 l, 256 s + 8 l + 8) of each row — 4 bytes of int4, 8 of int8
// or e4m3, 16 of bf16 — so every warp load is one contiguous, fully used span, with
// several steps unrolled to keep enough bytes in flight. Activations (at most 8 tokens per
// launch; more are looped) come through L1 and are shared by the rows of a warp.
// Rows are stored with a stride ld (a multiple of 8, zero-padded past cols) so that every
// piece load is aligned; int4 / 8da4w / fp8 shapes never need the padding (cols is a
// multiple of the group or of 16), bf16 and int8 rows of odd length do.
#pragma once

#include "../common/gpu.h"
#include "quant.h"
#include "qact_src.cuh"

typedef struct {
    QuantMode mode;  // QUANT_NONE holds bf16 weights
    int rows, cols, group;
    int ld;                    // elements per stored row: cols rounded up to a multiple of 8
    int tiled;                 // INT4 codes in mma fragment order (qgemv_int4mma.cu), not rows: 1 v1, 2 v2 kernel
    const void *q;             // NONE: bf16 [rows*cols]; INT8: int8; FP8: e4m3; INT4/8DA4W: nibbles [rows*cols/2]
    const float *scale;        // INT8, FP8: [rows]; 8DA4W: [rows * cols/group]
    const __nv_bfloat162 *sz;  // INT4: (scale, zero) per group [rows * cols/group] (tiled 2: shuffled, qgemv_upload.cu)
    const float *bias;         // [rows] or NULL
} QWeightGpu;

// Activation scratch for the dynamically quantized modes, sized for max_rows tokens of up
// to max_cols features.
typedef struct {
    uint32_t *xq;  // 8da4w: int8 codes, per 8 features two words (even features, odd features)
    float *xf;     // fp8: the e4m3 codes' values (exact)
    float *xs;     // per-token scale
    int *xzp;      // 8da4w: per-token zero point
    float *part;   // split-K partial sums
    uint2 *xb;     // int4 tensor-core path: x as (hi, lo) bf16 B fragments
    float *xsum;   // int4 tensor-core path: per-group sums of x
    int *cnt;      // int4 tensor-core v2: split-K ticket counters (zero between launches)
    int max_rows, max_cols;
    int pdl;       // launch the GEMV's kernels as programmatic dependents of the kernel before
                   // (qact_src.cuh; 0 after qact_scratch_init: model/infer_gpu.cu sets it)
} QActScratch;

void qact_scratch_init(QActScratch *s, int max_rows, int max_cols);
void qact_scratch_free(QActScratch *s);

// y[m, :] (=, or += when accumulate) W x[m, :] + bias for m < M. x: fp32 [M, cols],
// y: fp32 [M, rows]. Fails (CHECK) on a shape the kernels do not take.
void qgemv(float *y, const float *x, int M, const QWeightGpu *w, int accumulate, QActScratch *s, cudaStream_t stream);

// y = W src + bias, src a QActSrc (qact_src.cuh): the paths with an activation prep kernel
// (qgemv_src_direct) compute the source there; the others materialize it into xbuf [M, cols]
// (qact_src_forward), then run qgemv. Same bits either way.
void qgemv_src(float *y, const QActSrc *src, float *xbuf, int M, const QWeightGpu *w, int accumulate, QActScratch *s,
               cudaStream_t stream);
int qgemv_src_direct(const QWeightGpu *w);
// out [M, K] = the source's rows (RMSNORM: the 1024-thread RMSNorm kernel; SWIGLU: silu(g) u).
void qact_src_forward(float *out, const QActSrc *src, int M, int K, int pdl, cudaStream_t stream);

// Dynamic per-token quantization of x [M, K] into s (8da4w: int8 codes, scale, zero point;
// fp8: the e4m3 codes' values and scale), bit-exact with quant_act_int8_asym /
// quant_act_fp8_row. qgemv calls it; tests read s back.
void qact_prepare(QuantMode mode, const float *x, int M, int K, QActScratch *s, cudaStream_t stream);

// Uploads np QTensors of one format stacked along rows (fused projections) with their
// biases (NULL entries: none). Unquantized fp32 weights become bf16 (round to nearest even;
// *rounded counts the values that were not bf16 already).
QWeightGpu qweight_upload(const QTensor *const *parts, const float *const *biases, int np, size_t *rounded);
void qweight_free(QWeightGpu *w);
// The int4 kernel for weights uploaded after this call (tests and benchmarks compare them):
// 2 (default) the tensor-core GEMV v2 where cols % 64 == 0, 1 the first tensor-core kernel
// (v1) there, 0 the SIMT kernel for every shape. qgemv_set_int4_mma(on): 2 or 0.
void qgemv_set_int4_kernel(int version);
void qgemv_set_int4_mma(int on);
// Tests: v2's x prep alone (int4 tensor-core path) of M <= 8 tokens of src with K features, group
// G: the B fragments into s->xb, the group sums into s->xsum (layouts: qgemv_int4mma.cu).
void qgemv_int4_mma2_prep(const QActSrc *src, int M, int K, int G, QActScratch *s, cudaStream_t stream);
// v2 launches the GEMV as a programmatic dependent of its x-prep kernel (default on; off for
// an A/B of that overlap). Takes effect at the next qgemv call (and graph capture).
void qgemv_set_int4_pdl(int on);
int qweight_same_format(const QTensor *a, const QTensor *b);
// f32_to_bf16 (round to nearest even), counting in *inexact the values that were not bf16.
uint16_t bf16_bits_rne(float f, size_t *inexact);
// cudaMalloc that fails with the sizes and an inference hint when the GPU is out of memory
// (held: bytes the caller already holds, for the message).
void *qgemv_dev_alloc(size_t bytes, size_t held);
// qgemv_dev_alloc + a copy of h that has landed when it returns (usable from any stream).
void *qgemv_dev_upload(const void *h, size_t bytes, size_t held);

// Bytes of weight data one call streams (codes + scales + bias).
size_t qweight_bytes(const QWeightGpu *w);
