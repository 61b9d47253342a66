// MX formats (OCP Microscaling v1.0) with torchao's numerics: blocks of MX_BLOCK = 32 consecutive
// elements along the reduction dimension share one e8m0 exponent (a biased power of two, 255 =
// NaN); elements are e4m3fn (MXFP8, what training uses) or e5m2. Formulas follow torchao
// prototype/mx_formats/mx_tensor.py to_mx (emulated path) and to_dtype; the element arithmetic
// is shared with the CUDA kernels (quant/fp8_cast.cu) so both give the same bits.
//
// amax = max |x| over the block, NaN propagating (torch.amax), in fp32. emax = 8 (e4m3) / 15
// (e5m2), max_pos = 448 / 57344.
//   FLOOR  e = clamp(exponent_bits(amax) - 127 - emax, -127, 128) + 127; NaN amax -> 255
//          (an inf amax gives 128 - emax + 127: 247 for e4m3). q = fp8(clamp(x / S)) with
//          S = 2^(e-127) as fp32 bits, raised to 2^-126 when e = 0 (torchao's min-normal clamp;
//          e = 255 makes S = inf).
//   RCEIL  d = amax / max_pos (fp32); NaN -> e 255, factor NaN; inf -> e 254, factor 2^-127;
//          else e = clamp(ceil(log2f(d)), -127, 127) + 127 and factor = 1.0 when e = 0 (!),
//          else 2^(127 - e). q = fp8(clamp(x * factor)). (NVIDIA's cvt.rp.satfinite.ue8m0 rule,
//          which torchao's eager fallback reproduces with log2 + ceil.)
// Dequantization (to_dtype): fp8 value * 2^(e-127), NaN for e = 255. Note e = 0 decodes as
// 2^-127 while FLOOR quantized with 2^-126 and RCEIL with 1.0: torchao's own asymmetry, kept.
#ifndef LLAMA_AO_QUANT_MX_H
#define LLAMA_AO_QUANT_MX_H

#include "fp8.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MX_BLOCK 32
#define MX_E8M0_NAN 255

typedef enum { MX_FLOOR = 0, MX_RCEIL = 1 } MxMode;

// The shared exponent of a block and how its elements are scaled.
typedef struct {
    uint8_t e8m0;
    int divide;  // FLOOR divides by factor, RCEIL multiplies (torchao's two code paths)
    float factor;
} MxScale;

// max(m, |x|) with NaN winning, as torch.amax.
FP8_HD float mx_amax_step(float m, float x) {
    float a = fabsf(x);
    return (a != a || m != m) ? ao_u2f(0x7FC00000u) : (a > m ? a : m);
}

FP8_HD MxScale mx_scale_from_amax(float amax, Fp8Dtype dt, MxMode mode) {
    MxScale s;
    if (mode == MX_FLOOR) {
        // The exponent field of amax (biased 0 for zero and fp32 subnormals, 255 for inf/NaN)
        // minus the largest power of two of the element type: X = 2^(floor(log2 amax) - emax).
        int e = (int)((ao_f2u(amax) >> 23) & 0xFF) - 127 - (dt == FP8_E4M3 ? 8 : 15);
        e = e < -127 ? -127 : e > 128 ? 128 : e;
        int biased = amax != amax ? MX_E8M0_NAN : e + 127;
        float f = ao_u2f((uint32_t)biased << 23);
        s.e8m0 = (uint8_t)biased;
        s.divide = 1;
        s.factor = f < 0x1p-126f ? 0x1p-126f : f;  // torchao clamps the fp32 scale to min normal
    } else {
        float d = amax / fp8_max(dt);
        s.divide = 0;
        if (d != d) {
            s.e8m0 = MX_E8M0_NAN;
            s.factor = d;
        } else if (d > 3.4028235e38f) {
            s.e8m0 = 254;
            s.factor = 0x1p-127f;
        } else {
            // ceil of the correctly rounded fp32 log2 (torch.log2 on fp32), in float64 first,
            // exact for powers of two; d = 0 gives -inf, clamped to -127.
            int pe;
            float l = !(d > 0.0f) ? -127.0f : frexpf(d, &pe) == 0.5f ? (float)(pe - 1) : ceilf((float)log2((double)d));
            l = l < -127.0f ? -127.0f : l > 127.0f ? 127.0f : l;
            int e = (int)l + 127;
            s.e8m0 = (uint8_t)e;
            s.factor = e == 0 ? 1.0f : ldexpf(1.0f, 127 - e);
        }
    }
    return s;
}

// One element of a block.
FP8_HD uint8_t mx_quantize(float x, MxScale s, Fp8Dtype dt) {
    float v = s.divide ? x / s.factor : x * s.factor;
    if (v != v) return fp8_nan_code(x, s.factor);
    return fp8_saturate_cast(v, dt);
}

// get_fp_scale: 2^(e-127) (2^-127 is an fp32 subnormal, exact), NaN for 255.
FP8_HD float mx_e8m0_to_f32(uint8_t e) { return e == MX_E8M0_NAN ? ao_u2f(0x7FC00000u) : ldexpf(1.0f, (int)e - 127); }

// ---- dequantization to bf16: the operands of the emulated MXFP8 GEMM ----------------------
// fp32 RNE -> bf16 bits, NaN kept (quiet, with its sign): model/safetensors.c f32_to_bf16, here
// also for the device so that the GPU kernel and the CPU reference give the same bits.
FP8_HD uint16_t mx_bf16_bits(float f) {
    uint32_t u = ao_f2u(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
// One element: bf16(fp8 value * 2^(e-127)). The fp32 product is exact (an e4m3 / e5m2 value has
// at most 4 / 3 significant bits and its exponent stays >= -143 > -149) unless it reaches 2^128,
// where it is inf, as in torchao's fp32 to_dtype. The bf16 rounding is exact whenever the value
// is a multiple of 2^-133 (bf16's smallest subnormal): for every code an RCEIL cast made from
// bf16 inputs (each code is a multiple of 2^-133 / 2^(e-127), see docs/FP8.md "MXFP8 training"),
// and for FLOOR except blocks with e8m0 = 0 (amax < 2^-118), where torchao's 2^-126 / 2^-127
// asymmetry leaves multiples of 2^-134. A NaN (a NaN code, or e8m0 = 255) is the quiet NaN 0x7FC0 with
// the code's sign: explicit, since x86 and GPUs propagate different NaN payloads from NaN * NaN.
FP8_HD uint16_t mx_dequant_bf16_bits(uint8_t q, uint8_t e8m0, Fp8Dtype dt) {
    const float v = fp8_to_f32(q, dt), s = mx_e8m0_to_f32(e8m0);
    if (v != v || s != s) return (uint16_t)(0x7FC0u | ((uint32_t)(q & 0x80u) << 8));
    return mx_bf16_bits(v * s);
}

// ---- cuBLASLt's block-scale layout (VEC32_UE8M0, sm_100+) -----------------------------------
// cuBLAS docs "1D Block Scaling Factors Layout" (torchao mx_formats/utils.py to_blocked): the
// [rows][nkb] e8m0 matrix of an operand (nkb = ceil(kd / 32) blocks per operand row) is padded to
// tiles of 128 rows x 4 blocks; tiles are stored row-tile major (ceil(nkb / 4) tiles per row
// tile), 512 bytes each, and inside a tile entry (r, c) sits at (r % 32) * 16 + (r / 32) * 4 + c.
// Padding entries are 0 (torchao pads with zeros; cuBLASLt does not read them for data).
#define MX_SWZ_ROWS 128
#define MX_SWZ_BLOCKS 4
FP8_HD size_t mx_swizzled_bytes(int rows, int nkb) {
    return (size_t)((rows + MX_SWZ_ROWS - 1) / MX_SWZ_ROWS) * MX_SWZ_ROWS *
           (size_t)((nkb + MX_SWZ_BLOCKS - 1) / MX_SWZ_BLOCKS * MX_SWZ_BLOCKS);
}
FP8_HD size_t mx_swizzled_index(int r, int kb, int nkb) {
    const size_t tile = (size_t)(r / MX_SWZ_ROWS) * (size_t)((nkb + MX_SWZ_BLOCKS - 1) / MX_SWZ_BLOCKS) +
                        (size_t)(kb / MX_SWZ_BLOCKS);
    const int rr = r % MX_SWZ_ROWS;
    return tile * (MX_SWZ_ROWS * MX_SWZ_BLOCKS) + (size_t)((rr % 32) * 16 + (rr / 32) * 4 + kb % MX_SWZ_BLOCKS);
}

// ---- CPU reference ----------------------------------------------------------------------
// x [rows, cols] (fp32: bf16 values or any fp32). transposed = 0: blocks of 32 along each row
// (torchao "dim0"), q [rows, cols], e8m0 [rows, ceil(cols/32)]. transposed = 1: blocks of 32
// down each column ("dim1", the operand x^T), q [cols, rows] = x^T, e8m0 [cols, ceil(rows/32)].
// A tail block (torchao refuses dims that are not multiples of 32) takes the amax of the
// elements it has, as zero padding would.
void mx_quantize_cpu(uint8_t *q, uint8_t *e8m0, const float *x, int rows, int cols, Fp8Dtype dt, MxMode mode,
                     int transposed);
// out [orows, ocols] = fp8 value * mx_e8m0_to_f32(e), blocks of 32 along operand rows.
void mx_dequantize_cpu(float *out, const uint8_t *q, const uint8_t *e8m0, int orows, int ocols, Fp8Dtype dt);
// The same as bf16 bits (mx_dequant_bf16_bits): what the emulated GEMM multiplies.
void mx_dequantize_bf16_cpu(uint16_t *out, const uint8_t *q, const uint8_t *e8m0, int orows, int ocols, Fp8Dtype dt);
// e8m0 [rows][nkb] (naive, as mx_quantize_cpu writes it) -> out [mx_swizzled_bytes(rows, nkb)].
void mx_swizzle_cpu(uint8_t *out, const uint8_t *e8m0, int rows, int nkb);

#ifdef __cplusplus
}
#endif
#endif
