// Prefill linears through cuBLASLt (infer_gpu.cu runs a forward of more than
// InferGpuOpts.gemm_tokens tokens per sequence through these instead of the decode GEMVs).
//
// Numerics: bf16 operands, fp32 accumulation (a bf16-activation GEMM, where decode keeps the
// CPU path's fp32 activations). Per format, what is rounded to bf16 and what stays exact:
//   none   bf16 weights as stored (exact); x rounded to bf16.
//   int8   the int8 codes (exact in bf16), the per-row scale after the GEMM; x rounded.
//   fp8    the e4m3 weight codes and the e4m3 activation codes of qact_prepare (both exact in
//          bf16: every product is exact in fp32), per-token and per-row scales after the GEMM:
//          only the fp32 summation order differs from the CPU.
//   int4   s (q - 8) + z computed in fp32 as quant_dequantize does, rounded once to bf16; x
//          rounded.
//   8da4w  s (q - 8) rounded once to bf16; the activation as its exact integer codes minus
//          the zero point (|.| <= 255, exact in bf16) from qact_prepare, the per-token scale
//          after the GEMM.
// So an output is within (u_x + u_w) sum_k |w_k| |x_k| of the CPU's (u = 2^-9 for each
// operand rounded to bf16, 0 for an exact one) plus fp32 summation error.
// Quantized weights are dequantized into a bf16 scratch of one matrix (the largest of a layer;
// larger ones, the lm_head, go in slices of rows) right before their GEMM.
#pragma once

#include "../common/gpu.h"
#include "../quant/qgemv.cuh"

#define PREFILL_ALGO_CACHE 64

typedef struct {
    int m, n, k, lda, ldb, ldd, beta;
    unsigned align[3];
} PrefillAlgoKey;

typedef struct {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    bf16 *wbuf;         // dequantized weights [wbuf_elems]
    size_t wbuf_elems;
    bf16 *xbuf;         // activations in bf16 [max_rows, max_ld]
    float *ybuf;        // fp32 products of an accumulating linear with a scale epilogue [ybuf_elems]
    size_t ybuf_elems;
    QActScratch act;    // per-token activation quantization (fp8, 8da4w) of max_rows tokens
    int has_act;
    int max_rows, max_ld;
    size_t bytes;       // device bytes held
    PrefillAlgoKey keys[PREFILL_ALGO_CACHE];
    cublasLtMatmulAlgo_t algos[PREFILL_ALGO_CACHE];
    int n_algo;
} PrefillGemm;

// Scratch for linears of up to max_ld stored features and max_rows tokens; wbuf_elems: the
// largest quantized matrix to dequantize at once (rows x ld); ybuf_elems: rows x outputs of
// the largest accumulating linear with a scale (0 if none); dyn_cols > 0: activation
// quantization scratch for that many features (models with fp8 / 8da4w linears).
void prefill_gemm_init(PrefillGemm *p, int max_rows, int max_ld, size_t wbuf_elems, size_t ybuf_elems, int dyn_cols);
void prefill_gemm_free(PrefillGemm *p);
// y [M, w->rows] (=, or += when accumulate) W x [M, w->cols] + bias, as a bf16 GEMM.
void prefill_linear(PrefillGemm *p, float *y, const float *x, int M, const QWeightGpu *w, int accumulate,
                    cudaStream_t st);
// Rows [r0, r0 + nr) of w as bf16 [nr, w->ld] (zeros past cols): bf16 weights as stored, the
// int8 / e4m3 codes' values (their scales are applied after the GEMM), int4 s (q - 8) + z and
// 8da4w s (q - 8) in fp32 rounded once to bf16. Reads every int4 layout (qweight_upload's
// tiled 0, 1, 2).
void prefill_dequant(bf16 *out, const QWeightGpu *w, int r0, int nr, cudaStream_t st);
