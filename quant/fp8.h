// float8 training casts with torchao's numerics (torchao/float8: float8_utils.py amax_to_scale /
// to_fp8_saturated, float8_training_tensor.py, config.py recipes; prototype/blockwise_fp8_training
// for the DeepSeek-V3 1x128 / 128x128 blocks). The element arithmetic below is shared by the CPU
// reference (fp8.c) and the CUDA kernels (fp8_cast.cu), so both give the same bits; test/test_fp8.c
// checks the CPU side against torchao's own outputs bit for bit (test/ref/fp8_ref.py).
//
// One cast, as torchao does it for a bf16 (or fp32) tensor x:
//   amax  = max |x| over the scaling group (tensor, row, column, block) — exact in any order
//   scale = fp32( fp8_max / max(double(amax), 1e-12) )        division in float64, one rounding
//   (pow2) scale = exp2(floor(log2f(scale)))                   torchao round_scales_to_power_of_2
//   q     = fp8( clamp(fp32(x) * scale, -fp8_max, fp8_max) )   RNE, subnormals kept
// and the GEMM (cuBLASLt, torch._scaled_mm) is given scale_inv = fp32(1 / scale).
//
// Edge cases (docs/FP8.md has the table):
//   amax 0          scale = fp8_max * 1e12 (finite; 4.48e14 for e4m3), codes 0, as torchao.
//   inf in x        amax inf -> scale 0, finite elements -> 0, the inf -> NaN: torchao's bits too.
//   NaN in x        torchao: amax NaN -> NaN scale -> the whole group NaN. Ours: amax ignores NaN
//                   (a finite scale for the others), the NaN element itself becomes a NaN code.
//   NaN codes       0x7F | sign. The sign follows torch on x86 (fp8_nan_code): a NaN input keeps
//                   its sign, a NaN made by the multiply (inf * 0) is negative (0xFF).
//   pow2 rounding   log2 is rounded to fp32 before the floor, so a scale a few ulps below 2^k
//                   becomes 2^k, not 2^(k-1): torch.log2 does that, and so do we (log2 in float64,
//                   rounded once to fp32 = the correctly rounded log2f torch computes).
#ifndef LLAMA_AO_QUANT_FP8_H
#define LLAMA_AO_QUANT_FP8_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/bits.h"
#include <string.h>

// The element functions below are compiled for the host and, under nvcc, for the device.
#ifdef __CUDACC__
#define FP8_HD static __host__ __device__ __forceinline__
#else
#define FP8_HD static inline
#endif
#if defined(__USE_FAST_MATH__)
#error "quant/fp8.h needs IEEE division and no flush-to-zero: build without --use_fast_math"
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FP8_E4M3 = 0, FP8_E5M2 = 1 } Fp8Dtype;

#define FP8_E4M3_MAX 448.0f
#define FP8_E5M2_MAX 57344.0f
#define FP8_EPS 1e-12  // torchao float8_utils.EPS, compared in float64
#define FP8_BLOCK 128  // DeepSeek-V3 block edge (torchao blockwise_fp8_training)

FP8_HD float fp8_max(Fp8Dtype dt) { return dt == FP8_E4M3 ? FP8_E4M3_MAX : FP8_E5M2_MAX; }


// fp32 -> float8_e4m3fn as c10's fp8e4m3fn_from_fp32_value: round to nearest even, subnormals
// kept, |x| >= 480 and NaN -> 0x7F | sign. The CPU reference uses quant/quant.h's
// quant_f32_to_e4m3 (the same function, written for inference); this twin runs on the device,
// and test_fp8.c checks that the two agree on every bf16 value and every tie.
FP8_HD uint8_t fp8_e4m3_from_f32(float f) {
    uint32_t b = ao_f2u(f), sign = b & 0x80000000u, a = b ^ sign;
    uint8_t r;
    if (a >= 0x43F00000u) {  // 480 and above round past 448; NaN too (no infinity in e4m3fn)
        r = 0x7F;
    } else if (a < 0x3C800000u) {
        // Below 2^-6 (the smallest normal): adding 2^14, whose ulp is 2^-9 = the subnormal
        // step, lets the FPU round to nearest even; the low bits are then the code.
        r = (uint8_t)(ao_f2u(ao_u2f(a) + 16384.0f) - 0x46800000u);
    } else {  // normal: rebias 127 -> 7, round the 20 dropped bits to nearest even
        a += ((uint32_t)(7 - 127) << 23) + 0x7FFFFu + ((a >> 20) & 1u);
        r = (uint8_t)(a >> 20);
    }
    return r | (uint8_t)(sign >> 24);
}

// fp32 -> float8_e5m2 as c10's fp8e5m2_from_fp32_value: RNE, >= 65536 (and ties past 57344)
// -> inf 0x7C, NaN -> 0x7F | sign. Callers clamp first, as torchao does, so inf never appears.
FP8_HD uint8_t fp8_e5m2_from_f32(float f) {
    uint32_t b = ao_f2u(f), sign = b & 0x80000000u, a = b ^ sign;
    uint8_t r;
    if (a >= 0x47800000u) {
        r = a > 0x7F800000u ? 0x7F : 0x7C;
    } else if (a < 0x38800000u) {  // below 2^-14: 128.0 has ulp 2^-16, the subnormal step
        r = (uint8_t)(ao_f2u(ao_u2f(a) + 128.0f) - 0x43000000u);
    } else {  // rebias 127 -> 15, round the 21 dropped bits to nearest even
        a += ((uint32_t)(15 - 127) << 23) + 0xFFFFFu + ((a >> 21) & 1u);
        r = (uint8_t)(a >> 21);
    }
    return r | (uint8_t)(sign >> 24);
}

FP8_HD float fp8_e4m3_to_f32(uint8_t v) {
    // Exponent and mantissa moved into an fp32 (an fp32 subnormal for e4m3 subnormals) and
    // multiplied by 2^(127-7): exact.
    if ((v & 0x7F) == 0x7F) return ao_u2f(0x7FC00000u | ((uint32_t)(v & 0x80) << 24));
    float f = ao_u2f((uint32_t)(v & 0x7F) << 20) * 0x1p120f;
    return (v & 0x80) ? -f : f;
}
FP8_HD float fp8_e5m2_to_f32(uint8_t v) {
    uint32_t sign = (uint32_t)(v & 0x80) << 24;
    if ((v & 0x7C) == 0x7C) return ao_u2f(sign | ((v & 3) ? 0x7FC00000u : 0x7F800000u));
    return ao_u2f(ao_f2u(ao_u2f((uint32_t)(v & 0x7F) << 21) * 0x1p112f) | sign);
}
FP8_HD float fp8_to_f32(uint8_t v, Fp8Dtype dt) { return dt == FP8_E4M3 ? fp8_e4m3_to_f32(v) : fp8_e5m2_to_f32(v); }

// The code of a NaN result of x op y (x the element, y its scale factor, op = * or /) as torch
// makes it on x86: a NaN operand propagates with its sign — the factor's when both are NaN
// (what torch's vectorized multiply returns, seen in to_mx RCEIL) — and a NaN made by the
// operation (inf * 0, inf / inf) is the negative default NaN. A GPU would make +NaN, hence the
// explicit rule.
FP8_HD uint8_t fp8_nan_code(float x, float y) {
    uint32_t s = y != y ? ao_f2u(y) : x != x ? ao_f2u(x) : 0x80000000u;  // v != v: isnan
    return (uint8_t)(0x7F | ((s >> 24) & 0x80));
}

// fp8 code of v already scaled: torchao's to_fp8_saturated (clamp to +-max, NaN kept, cast).
FP8_HD uint8_t fp8_saturate_cast(float v, Fp8Dtype dt) {
    float m = fp8_max(dt);
    v = v > m ? m : v < -m ? -m : v;
    return dt == FP8_E4M3 ? fp8_e4m3_from_f32(v) : fp8_e5m2_from_f32(v);
}

// One element: fp8(clamp(x * scale)). -0 stays -0 (code 0x80), as in torch.
FP8_HD uint8_t fp8_quantize(float x, float scale, Fp8Dtype dt) {
    float v = x * scale;
    if (v != v) return fp8_nan_code(x, scale);
    return fp8_saturate_cast(v, dt);
}

// torchao _round_scale_down_to_power_of_2: exp2(floor(log2(s))) in fp32. log2 in float64 then
// rounded to fp32 is the correctly rounded log2f torch computes (checked on the fixture's
// near-2^k scales), so a scale just below 2^k rounds UP to 2^k, as in torchao. 0 -> 0, inf -> inf.
FP8_HD float fp8_pow2_floor(float s) {
    if (!(s > 0.0f) || s > 3.4028235e38f) return s;  // 0, inf (and NaN, which never reaches here)
    int e;
    if (frexpf(s, &e) == 0.5f) return s;  // a power of two: log2 exact whatever the libm
    float l = floorf((float)log2((double)s));
    return l < -149.0f ? 0.0f : ldexpf(1.0f, (int)l);
}

// torchao amax_to_scale: fp8_max / clamp(amax, EPS) in float64, rounded to fp32 once.
FP8_HD float fp8_scale_from_amax(float amax, Fp8Dtype dt, int pow2) {
    double a = (double)amax;
    if (a < FP8_EPS) a = FP8_EPS;
    float s = (float)((double)fp8_max(dt) / a);
    return pow2 ? fp8_pow2_floor(s) : s;
}
// The dequantization scale cuBLASLt / torch._scaled_mm take: torch's scale.reciprocal(), IEEE.
FP8_HD float fp8_scale_inv(float scale) { return 1.0f / scale; }

// max(m, |x|) ignoring NaN (m starts at 0): our amax, so that scales are never NaN.
FP8_HD float fp8_amax_step(float m, float x) {
    float a = fabsf(x);
    return a > m ? a : m;
}

// ---- recipes: which operand of which GEMM gets which cast --------------------------------
// A Linear y = x W^T with x [N,K], W [M,K], g = dL/dy [N,M] runs three GEMMs, each with both
// operands contiguous along the reduction dimension (cuBLASLt fp8 takes only the "TN" layout):
//   fwd          y  [N,M] = x   [N,K] . W   [M,K]^T     reduce K   operands x, W   (direct)
//   grad_input   dx [N,K] = g   [N,M] . W^T [K,M]^T     reduce M   operands g (direct), W^T
//   grad_weight  dW [M,K] = g^T [M,N] . x^T [K,N]^T     reduce N   operands g^T, x^T
// so W^T, g^T and x^T are written transposed by the cast itself. Scaling FP8_SCALE_AXIS means
// one scale per row of the operand as the GEMM reads it (per row of x / W / g when direct, per
// column of W / g / x when transposed) — torchao's axiswise_dim -1 / 0.
typedef enum {
    FP8_RECIPE_TENSORWISE = 0,  // torchao "tensorwise" (Float8LinearConfig())
    FP8_RECIPE_ROWWISE,         // torchao "rowwise"
    FP8_RECIPE_ROWWISE_GW_HP,   // torchao "rowwise_with_gw_hp"
    FP8_RECIPE_BLOCKWISE,       // torchao blockwise_fp8_training (DeepSeek-V3)
    FP8_RECIPE_MXFP8,           // torchao MXFP8Linear, RCEIL (moe_training mxfp8_linear.py)
    FP8_RECIPE_MXFP8_GW_HP,     // the same with wgrad_with_hp=True
    FP8_NRECIPES
} Fp8Recipe;

typedef enum { FP8_X_FWD = 0, FP8_W_FWD, FP8_G_GI, FP8_W_GI, FP8_G_GW, FP8_X_GW, FP8_NOPERANDS } Fp8Operand;

typedef enum {
    FP8_SCALE_NONE = 0,  // stays bf16 (the high-precision grad_weight GEMM)
    FP8_SCALE_TENSOR,    // one fp32 scale
    FP8_SCALE_AXIS,      // one fp32 scale per operand row
    FP8_SCALE_1X128,     // one fp32 scale per 128 consecutive elements of an operand row
    FP8_SCALE_128X128,   // one fp32 scale per 128x128 tile
    FP8_SCALE_MX32       // one e8m0 exponent per 32 consecutive elements of an operand row
} Fp8Scaling;

typedef struct {
    Fp8Scaling scaling;
    Fp8Dtype dtype;
    int transposed;  // the operand is the transpose of the stored tensor (W^T, g^T, x^T)
    int pow2;        // scales rounded to powers of two (tensor / axis scaling)
    int mx_rceil;    // MX: 1 RCEIL, 0 FLOOR
} Fp8CastSpec;

const char *fp8_recipe_name(Fp8Recipe r);
int fp8_recipe_from_name(const char *s);  // -1 when unknown
const char *fp8_operand_name(Fp8Operand op);
Fp8CastSpec fp8_recipe_cast(Fp8Recipe r, Fp8Operand op);
// Scale entries a cast of a stored [rows, cols] tensor writes (fp32, or e8m0 bytes for MX);
// *ld gets the row stride of the scale matrix (128x128: ceil(cols'/128) rounded up to 4, the
// cuBLASLt BLK128x128 padding; others: the number of scale columns). cols' is the operand's.
size_t fp8_scale_count(Fp8CastSpec s, int rows, int cols, int *ld);

// ---- CPU reference (fp32 in: bf16 values, or any fp32) ----------------------------------
float fp8_amax_cpu(const float *x, size_t n);  // NaN ignored
// q[i] = fp8_quantize(x[i], scale); e4m3 goes through quant_f32_to_e4m3.
void fp8_quantize_cpu(uint8_t *q, const float *x, size_t n, float scale, Fp8Dtype dt);
// Tensor (axis = 0) or axis (axis = 1) scaling of x [rows, cols] into the operand layout:
// transposed = 0: q [rows, cols], scale[rows] (axis) / scale[0];
// transposed = 1: q [cols, rows] = x^T, scale[cols] (axis: per column of x) / scale[0].
// scale gets torchao's _scale (the multiplier); the GEMM takes fp8_scale_inv of it.
void fp8_cast_cpu(uint8_t *q, float *scale, const float *x, int rows, int cols, Fp8Dtype dt, int axis, int pow2,
                  int transposed);
// DeepSeek-V3 blocks, e4m3, scale = fp8_scale_from_amax(block amax, e4m3, 0) and scale_inv =
// 1/scale as torchao returns it. 1x128: blocks of 128 along each operand row (transposed: along
// the columns of x); scale_inv[b * orows + r] (operand row r, block b: row index contiguous, the
// cuBLASLt VEC128_32F layout), orows = rows (cols when transposed). 128x128: scale_inv[rb * ld +
// cb] in operand blocks, ld >= ceil(ocols / 128). A tail block (dims not multiples of 128,
// which torchao refuses) takes the amax of the elements it has.
void fp8_block1x128_cpu(uint8_t *q, float *scale_inv, const float *x, int rows, int cols, int transposed);
void fp8_block128x128_cpu(uint8_t *q, float *scale_inv, int ld, const float *x, int rows, int cols, int transposed);
// out [orows, ocols] = fp8 value * scale_inv of its group (the GEMM's view); for tensor / axis
// scales pass per_row = 0 / 1; for blocks use fp8_block_dequant_cpu (e4m3; ld only for 128x128).
void fp8_dequant_cpu(float *out, const uint8_t *q, const float *scale_inv, int orows, int ocols, int per_row,
                     Fp8Dtype dt);
void fp8_block_dequant_cpu(float *out, const uint8_t *q, const float *scale_inv, int ld, int orows, int ocols,
                           int block128x128);

#ifdef __cplusplus
}
#endif
#endif
