// MX on the GPU besides the cast (quant/fp8_cast.cuh mx_cast): the dequantization to bf16 that the
// emulated MXFP8 GEMM multiplies (ops/matmul_mx.cuh, every GPU below sm_100), and the swizzle of e8m0
// scales into the layout cuBLASLt's VEC32_UE8M0 mode reads (the native GEMM, sm_100+). Both are
// element functions of quant/mx.h, so they equal the CPU reference (mx_dequantize_bf16_cpu,
// mx_swizzle_cpu) bit for bit (test/gpu_test_fp8.cu).
#pragma once
#include "../common/gpu.h"
#include "mx.h"

// out [orows, ocols] bf16 = fp8 code * 2^(e8m0 - 127), e8m0 [orows][ceil(ocols / 32)] as mx_cast writes
// it (blocks of 32 along operand rows). Exact for RCEIL casts of bf16 tensors (mx.h). Any shape; 8 codes
// per thread (16-byte stores) when ocols % 8 == 0 and the pointers allow.
void mx_dequant_bf16(bf16 *out, const uint8_t *q, const uint8_t *e8m0, int orows, int ocols, Fp8Dtype dt,
                     cudaStream_t stream);
// out [mx_swizzled_bytes(rows, nkb)] = e8m0 [rows][nkb] in cuBLASLt's 128x4 tiled layout, padding 0
// (every byte written).
void mx_swizzle_scales(uint8_t *out, const uint8_t *e8m0, int rows, int nkb, cudaStream_t stream);
