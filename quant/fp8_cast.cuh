// CUDA casts bf16 -> fp8 for the float8 training recipes (docs/FP8.md): fused amax + scale + cast
// for tensor, per-row, per-column (transposed output), DeepSeek-V3 1x128 / 128x128 blocks and
// MX (32-element blocks, e8m0). The element arithmetic is quant/fp8.h and quant/mx.h, shared with
// the CPU reference, so every kernel gives the CPU reference's bits (test/gpu_test_fp8.cu).
// Deterministic: maxima are exact in any order; the one atomic (the tensor amax's ticket counter)
// only picks which CTA combines the partial maxima.
//
// Layouts. A cast reads a stored row-major bf16 tensor x [rows, cols] and writes the GEMM
// operand: transposed = 0 -> q [rows, cols]; transposed = 1 -> q [cols, rows] = x^T (the W^T, g^T,
// x^T operands of the backward GEMMs, written directly so that no separate transpose runs).
// "Operand rows" are the rows of q. Scales are dequantization scales scale_inv = 1 / scale
// (fp32), what cuBLASLt's A/B_SCALE_POINTER and torch._scaled_mm take:
//   tensor    scale_inv[0]
//   axis      scale_inv[orows]                       one per operand row (OUTER_VEC_32F)
//   1x128     scale_inv[b * orows + r]               operand row r, block b (VEC128_32F layout)
//   128x128   scale_inv[rb * ld + cb]                ld >= ceil(ocols / 128) (BLK128x128_32F:
//                                                    ld rounded up to 4, see fp8_scale_count)
//   MX        e8m0[r * ceil(ocols / 32) + b]         naive layout as torchao's to_mx (cuBLASLt
//                                                    VEC32_UE8M0 wants the swizzled 128x4 one)
// Any rows / cols (tails are partial groups); 16-byte vector paths when sizes and pointers allow.
// Speed (fp8_cast.cu has the why): every cast moves 2 bytes read + 1 written per element, tensor
// scaling 2 more (its amax pass; fp8_cast_tensor writes both layouts from one read, 2 + 2);
// transposed outputs are written through shared-memory tiles in 16-byte pieces; the transposed
// axis cast (per-column amax over all rows) runs as a thread block cluster on sm_90 (up to 16 CTAs
// where the GPU allows) and needs no workspace. Codes come from the sm_89+ hardware converter (the
// software rounding's bits, checked exhaustively by gpu_test_fp8). dev/bench/bench_gemm prints each
// cast's time and GB/s at the Llama-3-8B shapes, dev/bench/bench_cast the casts of one layer as the
// Linear dispatch runs them.
#pragma once
#include "../common/gpu.h"
#include "fp8.h"
#include "mx.h"

// Floats of workspace fp8_amax_tensor needs: per-block partial maxima, then (at
// FP8_AMAX_PARTIALS) the amax of fp8_cast_operand, then a ticket counter (an unsigned int).
#define FP8_AMAX_PARTIALS 1024
#define FP8_AMAX_WS_FLOATS (FP8_AMAX_PARTIALS + 2)

// *amax (device) = max |x| over x [rows, cols] with row stride ld >= cols, NaN ignored. One launch:
// every CTA writes its partial maximum into ws, the last one to finish (ws's ticket counter) reduces
// them. ws holds FP8_AMAX_WS_FLOATS floats and must be zeroed once before the first call (each call
// leaves the counter at 0 again); calls on one ws must not run concurrently. Deterministic (a maximum
// is exact in any order). Separate from the cast so that a distributed run can all-reduce it (torchao
// reduce_amax) and so that a backward can reuse the forward's amax of the same x / W.
void fp8_amax_tensor(float *amax, float *ws, const bf16 *x, int rows, int cols, size_t ld, cudaStream_t stream);

// Tensor scaling (tensor_amax = device pointer from fp8_amax_tensor) or axis scaling
// (tensor_amax = NULL: one scale per operand row, from that row's amax). The _ld forms read x with row
// stride ld >= cols (a Linear's columns of a packed gradient: no copy to dense rows); the codes are
// always dense (q [rows, cols] or [cols, rows]). Axis scaling, direct: the row's amax and its cast from
// one read (a group of threads per row, the amax in registers / shared memory).
void fp8_cast(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, const float *tensor_amax, Fp8Dtype dt,
              int pow2, int transposed, cudaStream_t stream);
void fp8_cast_ld(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld, const float *tensor_amax,
                 Fp8Dtype dt, int pow2, int transposed, cudaStream_t stream);

// Tensor scaling, both layouts from one read of x [rows, cols] (row stride ld >= cols, e.g. a
// Linear's columns of a packed gradient): q [rows, cols] (direct) and qt [cols, rows] = x^T
// (transposed); either may be NULL (not written). One scale for both: scale_inv[0]. The codes
// equal fp8_cast's (direct and transposed) with the same amax, dtype and pow2.
void fp8_cast_tensor(uint8_t *q, uint8_t *qt, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld,
                     const float *tensor_amax, Fp8Dtype dt, int pow2, cudaStream_t stream);

// Tensor scaling of a tensor cast in pieces (ZeRO-3 --fp8-allgather: each rank casts its piece
// with the amax all-reduced over the ranks): scale_inv[i] from amax[i] for i < n, by the cast
// kernels' formula (fp8_scale_from_amax, fp8_scale_inv), so a rank that owns no piece of tensor i
// still has its scale, the bits fp8_cast_tensor writes.
void fp8_scales_from_amax(float *scale_inv, const float *amax, int n, Fp8Dtype dt, int pow2, cudaStream_t stream);

// qt [cols, rows] = q [rows, cols]^T, bytes (fp8 codes). With one tensor scale, the transposed
// codes of a tensor are the transposed cast's (W^T from the gathered W of --fp8-allgather).
void fp8_transpose(uint8_t *qt, const uint8_t *q, int rows, int cols, cudaStream_t stream);

// The transposed casts' tile: 256 rows of x per CTA (default; 3 CTAs per SM) or 512 (2 per SM). The
// same codes and scales either way; LLAMA_AO_FP8_TSUB=512 picks 512 at start-up. Sets rows (256 or 512;
// 0 leaves it) and returns the previous value: for tests and benchmarks.
int fp8_cast_transposed_tile(int rows);

// For gpu_test_fp8: the casts' element rounding (the sm_89+ hardware converter, fp8_cast.cu quant2)
// against fp8_quantize for every fp32 bit pattern as the scaled value, in both byte positions of a
// converted pair. Returns the number of differences; *first (may be NULL) gets the first differing bit
// pattern (0 when none). Waits for the stream.
unsigned long long fp8_quantize_check_all(Fp8Dtype dt, uint32_t *first, cudaStream_t stream);

// DeepSeek-V3 blocks (e4m3, no pow2, torchao blockwise_fp8_training numerics).
void fp8_cast_block1x128(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, int transposed,
                         cudaStream_t stream);
void fp8_cast_block1x128_ld(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld, int transposed,
                            cudaStream_t stream);
void fp8_cast_block128x128(uint8_t *q, float *scale_inv, int ld, const bf16 *x, int rows, int cols, int transposed,
                           cudaStream_t stream);

// MX: blocks of 32 along operand rows (transposed = 0 is torchao "dim0", 1 is "dim1").
void mx_cast(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, Fp8Dtype dt, MxMode mode, int transposed,
             cudaStream_t stream);
void mx_cast_ld(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, size_t ld, Fp8Dtype dt, MxMode mode,
                int transposed, cudaStream_t stream);

// One operand of a recipe (spec = fp8_recipe_cast(recipe, operand)), dispatched to the casts
// above. scale_inv (fp32 scalings) or e8m0 (MX) receives the scales, sized by fp8_scale_count;
// amax_ws holds FP8_AMAX_WS_FLOATS floats, zeroed once (tensor scaling only; the amax lands at
// amax_ws + FP8_AMAX_PARTIALS).
// FP8_SCALE_NONE operands are not cast (the GEMM reads the bf16 tensor): refused here.
// _ld: x with row stride ld >= cols (every scaling; e.g. a part's columns of a packed gradient).
void fp8_cast_operand(uint8_t *q, float *scale_inv, uint8_t *e8m0, const bf16 *x, int rows, int cols, Fp8CastSpec spec,
                      float *amax_ws, cudaStream_t stream);
void fp8_cast_operand_ld(uint8_t *q, float *scale_inv, uint8_t *e8m0, const bf16 *x, int rows, int cols, size_t ld,
                         Fp8CastSpec spec, float *amax_ws, cudaStream_t stream);
