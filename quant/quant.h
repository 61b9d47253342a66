// Weight quantization for CPU inference, with torchao's numerics (torchao/quantization/
// quant_primitives.py, quant_api.py): the same formulas, the same dtype of every
// intermediate, the same rounding (torch.round = half to even), so the integers, scales and
// zero points we produce equal torchao's bit for bit (test/ref/quant_ref.py checks).
//
//   mode   torchao config                             weights (W is [M,K] = [out,in])
//   int8   Int8WeightOnlyConfig                       int8 per output row, symmetric:
//                                                     s = max|w| / 127.5 (fp32), clamp(s, eps32),
//                                                     q = clamp(round(w * (1/s)), -128, 127)
//   int4   Int4WeightOnlyConfig (tinygemm)            uint4 per group of G along K, asymmetric,
//                                                     zero point in the float domain, all in bf16:
//                                                     s = (max - min) / 15, clamp(s, bf16(1e-6)),
//                                                     z = min + s * 8,
//                                                     q = clamp(round((w - (z - s*8)) / s), 0, 15),
//                                                     w ~ (q - 8) * s + z
//   int4   Int4WeightOnlyConfig(int4_choose_       the same layout; scale and zero from HQQ's
//   +hqq   qparams_algorithm="hqq")               optimizer in fp32 (see quant_int4_hqq)
//   8da4w  Int8DynamicActivationInt4WeightConfig      int4 symmetric per group: s = max|w| / 7.5,
//                                                     q = clamp(round(w * (1/s)), -8, 7); activations
//                                                     int8 per token asymmetric (dynamic):
//                                                     s = (max(x,0) - min(x,0)) / 255,
//                                                     zp = clamp(-128 - round(min(x,0)/s), -128, 127)
//   fp8    Float8DynamicActivationFloat8WeightConfig  e4m3fn per output row: s = max|w| / 448 (in
//          (granularity=PerRow)                       bf16), q = e4m3(clamp(w / s, +-448)); the
//                                                     activations the same per token, dynamically
//
// Where torchao needs bf16 weights (int4 tinygemm asserts bf16; fp8 PerRow asserts bf16),
// the fp32 weights are rounded to bf16 first; int8 and 8da4w quantize the fp32 weights as
// torchao does for an fp32 model. Activations stay fp32 on the CPU.
//
// Deliberate differences from torchao, both for inputs where torchao gives NaN: an all-zero
// fp8 row (torchao: scale 0, 0/0) gets scale 0 and zero codes, so it dequantizes to 0.
// Non-finite weights are refused.
#ifndef LLAMA_AO_QUANT_QUANT_H
#define LLAMA_AO_QUANT_QUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { QUANT_NONE = 0, QUANT_INT8, QUANT_INT4, QUANT_8DA4W, QUANT_FP8, QUANT_NMODES } QuantMode;

const char *quant_mode_name(QuantMode m);
// -1 when the name is not a mode.
int quant_mode_from_name(const char *s);
// Whether the mode takes a group size (int4, 8da4w), and whether G is one we support.
int quant_mode_grouped(QuantMode m);
int quant_group_ok(int group);

// A quantized (or plain fp32) weight matrix W [rows=M, cols=K], the layout of nn.Linear.
//   NONE  w      fp32 [M*K] (may point into another buffer: owns_w says)
//   INT8  q      int8 [M*K];              scale fp32 [M]
//   INT4  q      uint8 [M*K/2], element k of a row in byte k/2, low nibble for even k;
//                scale, zero [M*K/G] (bf16 values held in fp32)
//   8DA4W q      uint8 [M*K/2] as INT4, each nibble holding q + 8 (offset binary, 0..15);
//                scale fp32 [M*K/G]; wsum int32 [M*K/G] = sum of q (signed) over the group,
//                derived at load for the zero-point correction of the activations
//   FP8   q      uint8 [M*K] e4m3fn bits; scale fp32 [M]
// A NONE tensor may instead keep its weights in 16 bits, as a bf16/f16 safetensors file holds
// them (infer_model_load_hf maps the file and points into it): wdtype QW_BF16 or QW_F16, w16
// the raw bits [M*K] (never owned), w NULL. The kernels expand each weight exactly to fp32 and
// follow the fp32 summation order, so the outputs equal those of the fp32 copy bit for bit.
// wdtype is QW_F32 (0) for every other tensor, so zero-initialised QTensors keep meaning fp32.
typedef enum { QW_F32 = 0, QW_BF16 = 1, QW_F16 = 2 } QWeightDtype;

typedef struct {
    QuantMode mode;
    int rows, cols, group;
    float *w;
    int owns_w;
    uint8_t *q;
    float *scale, *zero;
    int32_t *wsum;
    QWeightDtype wdtype;  // NONE only: QW_F32 uses w; QW_BF16 / QW_F16 use w16
    const uint16_t *w16;
} QTensor;

// Bytes of packed codes for a mode and shape (0 for NONE).
size_t quant_q_bytes(QuantMode m, int rows, int cols);
// Number of scale entries (rows, or rows * cols / group).
size_t quant_n_scales(QuantMode m, int rows, int cols, int group);

// Whether torchao quantizes a Linear of this shape in this mode: int4 and 8da4w need
// cols % group == 0 (torchao's handlers skip the module otherwise), fp8 needs both dims
// multiples of 16 (_fp8_mm_compat). 1 yes; 0 with the reason in why.
int quant_compatible(QuantMode m, int rows, int cols, int group, char *why, size_t whylen);

// Quantizes fp32 W [rows, cols] into t (allocates). Fails (CHECK) on a shape the mode
// cannot take (cols % group != 0 is refused, never truncated) or a non-finite weight.
void quant_quantize(QTensor *t, QuantMode m, const float *w, int rows, int cols, int group);
// The same with int4's qparams algorithm chosen: hqq = 1 is torchao's
// Int4WeightOnlyConfig(int4_choose_qparams_algorithm="hqq") (half-quadratic optimizer, the
// same tinygemm codes/scale/zero layout; quant.c documents each step). hqq needs m = INT4.
void quant_quantize_int4(QTensor *t, QuantMode m, const float *w, int rows, int cols, int group, int hqq);
// Process-wide default for quant_quantize's int4 (infer_llama --hqq); off at start.
void quant_set_int4_hqq(int on);
int quant_get_int4_hqq(void);
// Wraps fp32 weights without copying (mode NONE).
void quant_wrap_f32(QTensor *t, float *w, int rows, int cols);
// Wraps bf16 or f16 bits without copying (mode NONE, wdtype QW_BF16 / QW_F16). w16 must be
// 2-byte aligned; the caller keeps it alive (typically a mapped file) as long as t is used.
void quant_wrap_w16(QTensor *t, QWeightDtype dt, const uint16_t *w16, int rows, int cols);
// Bytes of weight storage of a NONE tensor in its dtype (4 or 2 per element).
size_t quant_none_bytes(const QTensor *t);
// Row r of a NONE tensor expanded exactly to fp32 (any wdtype).
void quant_none_row(const QTensor *t, int r, float *out);
// Allocates an empty tensor of the mode and shape (for loading).
void quant_alloc(QTensor *t, QuantMode m, int rows, int cols, int group);
// Recomputes derived arrays (8da4w wsum) after q was filled by a loader.
void quant_finish_load(QTensor *t);
void quant_free(QTensor *t);
// Dequantized weights [rows*cols] as torchao's dequantize_affine computes them in fp32.
void quant_dequantize(const QTensor *t, float *out);

// out [N, M] = x [N, K] @ W^T (+ bias [M] or NULL), with the mode's activation handling
// (8da4w: int8 per-token dynamic; fp8: e4m3 per-token dynamic). OpenMP over output rows.
void quant_linear_forward(float *out, const float *x, const QTensor *w, const float *bias, int N);

// ---- SIMD selection: the kernels exist in portable C, AVX2 (+FMA, F16C) and AVX-512
// (+VNNI) variants. All give the same bits: the float kernels follow one fixed summation
// order (16 lanes, lane j takes k = j mod 16, one fused multiply-add per element, the
// same reduction tree), the integer parts are exact.
// QISA_AVX512_BF16 is AVX-512 plus AVX512_BF16's vdpbf16ps for the fp8 dot product, where
// both operands are e4m3 values (exact in bf16), every product is exact in fp32, and the
// instruction's two fused multiply-adds per lane (odd element first, round to nearest even)
// are fed the elements in the canonical order: the same bits. It is chosen only when the CPU
// has avx512_bf16 and a known-answer check of the instruction's rounding passes (qkernels.c).
typedef enum { QISA_C = 0, QISA_AVX2 = 1, QISA_AVX512 = 2, QISA_AVX512_BF16 = 3, QISA_NISA } QuantIsa;
// The best variant this CPU runs (chosen once with __builtin_cpu_supports).
QuantIsa quant_isa_best(void);
// Forces a variant (tests); values above what the CPU supports are lowered to the best.
void quant_set_isa(QuantIsa isa);
QuantIsa quant_get_isa(void);
const char *quant_isa_name(QuantIsa isa);

// ---- scalar formats --------------------------------------------------------------------
// fp32 -> float8_e4m3fn exactly as torch's cast (c10 fp8e4m3fn_from_fp32_value):
// round to nearest even, subnormals kept, |x| >= 480 and NaN -> 0x7F/0xFF (NaN). Callers
// clamp to +-448 first, as torchao's _quantize_affine_float8 does, so no NaN arises.
uint8_t quant_f32_to_e4m3(float f);
float quant_e4m3_to_f32(uint8_t v);
// Round fp32 to the nearest bf16 value (RNE), returned as fp32.
float quant_bf16_round(float f);

// ---- row-level helpers shared by the quantizers and the tests --------------------------
// int8 per-token asymmetric activation quantization (torchao _int8_asymm_per_token_quant):
// q [K], returns scale; *zp gets the zero point.
float quant_act_int8_asym(int8_t *q, int32_t *zp, const float *x, int K);
// fp8 per-row dynamic quantization of fp32 values: q [K], returns scale (0 for all-zero).
float quant_act_fp8_row(uint8_t *q, const float *x, int K);

#ifdef __cplusplus
}
#endif
#endif
