// MXFP8 GEMMs (torchao MXLinear; docs/FP8.md "MXFP8 training"):
//   out[rows_p, rows_q] (row stride ldo) = beta * out + P[rows_p, kd] . Q[rows_q, kd]^T
// where P and Q are MX operands as quant/fp8_cast.cuh mx_cast writes them: e4m3 codes row-major with the
// reduction dimension kd contiguous, one e8m0 exponent per 32 codes along kd, naive layout
// [rows][ceil(kd / 32)]. The three GEMMs of a Linear map to P / Q as for the fp8 GEMMs
// (ops/matmul_fp8.cuh): forward x . W^T, grad_input g . (W^T)^T, grad_weight g^T . (x^T)^T, each
// operand cast along that GEMM's reduction dimension (transposed casts for W^T, g^T, x^T).
//
// Two paths, chosen at run time (mx_gemm_path):
//   native    sm_100+ (cudaDeviceProp.major >= 10): cuBLASLt's block-scaled fp8 GEMM, scale mode
//             VEC32_UE8M0 on A and B, the scales swizzled into cuBLASLt's 128x4 tile layout
//             (quant/mx_gpu.cuh mx_swizzle_scales), fp32 accumulation (fp8_gemm_try, Fp8Mat.e8m0).
//   emulated  every other GPU, Hopper included (Hopper has no MX tensor-core instruction): P and Q
//             dequantized to bf16 (mx_dequant_bf16; exact for RCEIL casts of bf16 tensors, quant/mx.h),
//             then the bf16 cuBLASLt GEMM with fp32 accumulation (ops/matmul.cuh matmul_bf16_nt). The
//             result is the exact product of the dequantized operands up to fp32 accumulation and the
//             output rounding: torchao's emulated MX numerics. NO SPEED-UP: a bf16 GEMM plus two
//             dequantization passes (and the casts), so it is slower than --recipe bf16.
// LLAMA_AO_MX_EMULATE=1 in the environment forces the emulated path on sm_100+ as well.
#pragma once
#include "../common/gpu.h"
#include "matmul_fp8.cuh"

// One MX operand as mx_cast wrote it.
typedef struct {
    const uint8_t *q;     // codes [rows, kd]
    const uint8_t *e8m0;  // [rows][ceil(kd / 32)]
    Fp8Dtype dtype;
} MxMat;

// Scratch of one MX GEMM (the caller's; one GEMM at a time). Emulated: the dequantized operands (bf16
// elements, >= rows_p * kd and rows_q * kd). Native: the swizzled scales (bytes, >= mx_swizzled_bytes).
typedef struct {
    bf16 *p, *q;
    size_t p_cap, q_cap;
    uint8_t *sp, *sq;
    size_t sp_cap, sq_cap;
} MxGemmScratch;

typedef enum { MX_GEMM_EMULATED = 0, MX_GEMM_NATIVE = 1 } MxGemmPath;
// native on compute capability major >= 10 unless LLAMA_AO_MX_EMULATE=1; emulated otherwise.
MxGemmPath mx_gemm_path_for(int cc_major);
MxGemmPath mx_gemm_path(const GpuCtx *ctx);
const char *mx_gemm_path_name(MxGemmPath p);  // "native (...)" / "emulated (...)", for start-up lines

// out = beta * out + P . Q^T on ctx->stream through the given path. 1 when enqueued; 0 when refused
// (info->msg says why; nothing launched): NULL pointers, scratch too small, the native path below sm_100,
// and every fp8_gemm_try refusal of the native GEMM (kd % 32, alignment, ...). info may be NULL.
int mx_gemm_try(GpuCtx *ctx, void *out, Fp8OutType out_type, int ldo, float beta, MxMat p, MxMat q, int rows_p,
                int rows_q, int kd, const MxGemmScratch *ws, MxGemmPath path, Fp8GemmInfo *info);
// The same through mx_gemm_path(ctx); a refusal is an error.
void mx_gemm(GpuCtx *ctx, void *out, Fp8OutType out_type, int ldo, float beta, MxMat p, MxMat q, int rows_p,
             int rows_q, int kd, const MxGemmScratch *ws);
