// fp8 GEMMs of a Linear on Hopper through cuBLASLt (docs/FP8.md "GEMMs"): e4m3 / e5m2 operands with
// fp32 dequantization scales, fp32 accumulation, bf16 (or fp32) output. The casts that make the
// operands are quant/fp8_cast.cuh; which operand gets which cast is fp8_recipe_cast (quant/fp8.h).
//
// ---- The one GEMM ------------------------------------------------------------------------------
//   out[rows_p, rows_q] (row stride ldo) = beta * out + P[rows_p, kd] . Q[rows_q, kd]^T
// P and Q are fp8 codes stored row-major with the reduction dimension kd contiguous ("K-major"):
// Hopper's fp8 tensor cores take only this form (cuBLASLt's "TN": A transposed, B not). In
// cuBLASLt's column-major terms: A = Q (op T, lda = kd), B = P (op N, ldb = kd), D = C = out seen
// as a column-major [rows_q, rows_p] matrix with ldd = ldo; m = rows_q, n = rows_p, k = kd.
//
// ---- The three GEMMs of y = x W^T (x [N,K], W [M,K], g = dL/dy [N,M]) --------------------------
//   GEMM          out         P (rows)      Q (rows)       kd   casts (quant/fp8_cast.cuh)
//   forward       y  [N,M]    x    (N)      W    (M)       K    x, W direct (transposed = 0)
//   grad_input    dx [N,K]    g    (N)      W^T  (K)       M    g direct; W^T transposed = 1
//   grad_weight   dW [M,K]    g^T  (M)      x^T  (K)       N    g^T, x^T transposed = 1
// i.e. matmul_fp8_forward / matmul_fp8_dinp / matmul_fp8_dweight below. A "transposed" cast reads
// the stored bf16 tensor and writes its transpose directly, so no separate transpose kernel runs.
//
// ---- Scalings (Fp8Mat.scaling) and the cuBLASLt scale modes they map to --------------------------
// scale_inv holds DEquantization scales (1/scale = amax/fp8_max), what the casts write.
//   FP8_SCALE_TENSOR   SCALAR_32F      scale_inv[0]                              sm_89+
//   FP8_SCALE_AXIS     OUTER_VEC_32F   scale_inv[r], one per operand row         sm_90 only
//   FP8_SCALE_1X128    VEC128_32F      scale_inv[b * rows + r]: operand row r,   sm_90 only
//                                      block b of 128 along kd; rows contiguous ("M-major",
//                                      shape rows x ceil(kd/128)); a tail block is partial
//   FP8_SCALE_128X128  BLK128x128_32F  scale_inv[rb * scale_ld + cb]: row block rb, kd block cb,  sm_90
//                                      scale_ld = ceil(kd/128) rounded up to 4 ("K-major",
//                                      column stride a multiple of 4); padding entries must hold
//                                      finite values (the casts leave them untouched: set them once)
// Both operands of one GEMM must use compatible modes (cuBLASLt 12.9+ rules):
//   TENSOR x TENSOR; AXIS x AXIS; 1X128 x 1X128; 1X128 x 128X128; 128X128 x 1X128.
//   MX32 x MX32 (VEC32_UE8M0, e8m0 per 32 along kd, Fp8Mat.e8m0 swizzled): sm_100+ only.
//   Refused: 128X128 x 128X128 (cuBLASLt has no kernel), any mix of TENSOR / AXIS / blocks (a
//   tensor scale next to a per-row one: broadcast it with fp8_scale_broadcast, as torchao does for
//   rowwise_with_gw_hp's grad_input), MX32 below sm_100 (Hopper has no MX tensor-core GEMM:
//   ops/matmul_mx.cuh emulates it) or next to anything but MX32.
// Recipes (docs/FP8.md): tensorwise = TENSOR everywhere, gradients e5m2; rowwise = AXIS everywhere;
// rowwise_with_gw_hp = AXIS fwd, AXIS g x broadcast TENSOR W^T for grad_input, bf16 grad_weight
// (ops/matmul.cuh); blockwise = x, g, g^T, x^T 1X128 and W, W^T 128X128.
//
// ---- Dtypes and outputs --------------------------------------------------------------------------
// e4m3 x e4m3, e4m3 x e5m2, e5m2 x e4m3 (either side); e5m2 x e5m2 is refused (cuBLASLt has none).
// Output bf16 (C = D = bf16) or fp32 (C = D = fp32, the grad_weight accumulation with beta = 1); fp8
// outputs are not offered (cuBLASLt forbids them with vector / block scales). Accumulation is fp32;
// fast_accum = 1 (CUBLASLT_MATMUL_DESC_FAST_ACCUM) lets the tensor core keep its partial sums
// without promotion to fp32 (faster, less accurate): torchao uses it for the forward GEMM only.
// Block scaling promotes per 128-long k-block by construction (each block has its own scales), so
// fast_accum is ignored there.
//
// ---- Constraints (checked; a refusal names the constraint) -----------------------------------------
//   kd % 16 == 0 and rows_q % 16 == 0 (fp8 rows of 16-byte multiples; the fp8 "mat2" rule of
//   torch._scaled_mm); rows_p any >= 1 for TENSOR / AXIS, a multiple of 4 for the block modes;
//   ldo >= rows_q with ldo * sizeof(out) a multiple of 16; q, out 16-byte aligned; block-mode
//   scale arrays 16-byte aligned; a GPU of compute capability 9.x (8.9 for TENSOR only; MX32: 10.0+
//   and kd % 32 == 0).
// Pad odd dimensions with zeros before the cast (torchao pad_inner_dim); the casts take any shape.
#pragma once
#include "../common/gpu.h"
#include "../quant/fp8.h"

// One fp8 GEMM operand: codes [rows, kd] row-major (kd contiguous) and its dequantization scales.
typedef struct {
    const uint8_t *q;
    const float *scale_inv;  // device; layout per scaling (above)
    Fp8Dtype dtype;
    Fp8Scaling scaling;      // TENSOR, AXIS, 1X128 or 128X128
    int scale_ld;            // 128X128 only: row stride of the scale matrix (ceil(kd/128) rounded up to 4)
    const uint8_t *e8m0;     // MX32 only (sm_100+): e8m0 scales in cuBLASLt's swizzled layout (mx_swizzle_scales)
} Fp8Mat;

// The operand a cast of spec wrote from a stored tensor [rows, cols] (the arguments given to
// fp8_cast_operand); scale_ld from fp8_scale_count.
Fp8Mat fp8_mat(const uint8_t *q, const float *scale_inv, Fp8CastSpec spec, int rows, int cols);

typedef enum { FP8_OUT_BF16 = 0, FP8_OUT_F32 = 1 } Fp8OutType;

// What a GEMM call found, for logs and tests.
typedef struct {
    int ok;                   // 1: the GEMM was enqueued
    cublasStatus_t status;    // the failing cuBLASLt call's status (CUBLAS_STATUS_SUCCESS otherwise)
    int heuristic_results;    // algorithms cublasLtMatmulAlgoGetHeuristic offered (0: unsupported)
    int cached;               // the algorithm came from the cache
    int algo_id, tile_id, stages_id, splitk;  // the chosen algorithm's configuration
    size_t workspace;         // bytes it needs (<= ctx->lt_workspace_size)
    char msg[384];            // on failure: the constraint or the cuBLASLt call and status
} Fp8GemmInfo;

// Marks info (when not NULL) refused with a printf-style reason and returns 0: the refusal of
// fp8_gemm_try and of the MX GEMMs (ops/matmul_mx.cu).
int fp8_gemm_refuse(Fp8GemmInfo *info, const char *fmt, ...) AO_PRINTF(2, 3);
// out = beta * out + P . Q^T (see the top of this file). Returns 1 when enqueued on ctx->stream,
// 0 when refused (info->msg says why; nothing was launched). info may be NULL.
int fp8_gemm_try(GpuCtx *ctx, void *out, Fp8OutType out_type, int ldo, float beta, Fp8Mat p, Fp8Mat q, int rows_p,
                 int rows_q, int kd, int fast_accum, Fp8GemmInfo *info);
// The same; a refusal is an error (ao_fail with the message).
void fp8_gemm(GpuCtx *ctx, void *out, Fp8OutType out_type, int ldo, float beta, Fp8Mat p, Fp8Mat q, int rows_p,
              int rows_q, int kd, int fast_accum);

// The three GEMMs of a Linear, operands as in the table above.
// out[N, M] (row stride ldo >= M) = x[N, K] . W[M, K]^T.
void matmul_fp8_forward(GpuCtx *ctx, bf16 *out, int ldo, Fp8Mat x, Fp8Mat w, int N, int K, int M, int fast_accum);
// dinp[N, K] = (accumulate ? dinp : 0) + g[N, M] . (W^T)[K, M]^T, no fast accumulation (torchao).
// accumulate = 1 into bf16 rounds twice: cuBLASLt 13.1 rounds the product to bf16 before adding the
// old value (seen on H200: an output of exactly 0 where old + new = 2e-4), so the error is up to
// 2^-8 |new| + 2^-8 |old + new| (test/gpu_test_fp8gemm.cu check_out).
void matmul_fp8_dinp(GpuCtx *ctx, bf16 *dinp, Fp8Mat g, Fp8Mat wt, int N, int K, int M, int accumulate);
// dweight[M, K] = (accumulate ? dweight : 0) + (g^T)[M, N] . (x^T)[K, N]^T, fp32 or bf16, no fast
// accumulation. fp32 with accumulate = 1 is the fp32 gradient accumulation of ops/matmul.cuh.
void matmul_fp8_dweight(GpuCtx *ctx, void *dweight, Fp8OutType out_type, Fp8Mat gt, Fp8Mat xt, int N, int K, int M,
                        int accumulate);

// vec[0..n) = *scalar (device to device): a tensor scale as an OUTER_VEC_32F vector.
void fp8_scale_broadcast(float *vec, const float *scalar, int n, cudaStream_t stream);

// "e4m3" / "e5m2"; the scaling's name ("tensor", "axis", "1x128", "128x128", ...).
const char *fp8_dtype_name(Fp8Dtype dt);
const char *fp8_scaling_name(Fp8Scaling s);
