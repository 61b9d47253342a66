// Low-bit AdamW states exactly as torchao.optim stores them (AdamW8bit, AdamW4bit, AdamWFp8),
// and the AdamW step of torchao's single_param_adam, for the CPU (optim/lowbit.c) and the GPU
// (optim/adamw_lowbit.cu) from the same inline element functions below.
//
// Formats (torchao 0.18 subclass_8bit.py / subclass_4bit.py / subclass_fp8.py, quant_utils.py):
//   8-bit  block 256: m -> signed dynamic-tree map, v -> unsigned one (create_dynamic_map, 256
//          entries each); scale = max(absmax(block), 1e-12); code = nearest map entry of x/scale
//          by torchao's branchless binary search, rounding up when x - lo >= (hi - lo) * 0.5.
//   4-bit  block 128: m -> create_dynamic_map(signed, 3 exponent bits, 4 bits), v -> linspace
//          (0, 1, 17)[1:] (linear, no zero); same search over 16 entries; two codes per byte,
//          the even element in the high nibble: byte = code[2k] << 4 | code[2k+1].
//   fp8    block 256: scale = max(absmax, 1e-12) / 448; code = float8_e4m3fn(x / scale) with
//          torch's cast (round to nearest even; |x| >= 480 or NaN -> NaN; x/scale never exceeds
//          448 here, so no saturation question arises).
// Dequantization is map[code] * scale (fp8: e4m3 value * scale), all in fp32. All-zero state
// bytes are torchao's zeros(): scales 0, so every state dequantizes to 0.
//
// torchao quantizes a state only when the tensor has >= 4096 elements and a whole number of
// blocks; other tensors keep plain m and v (torch.zeros_like(param): fp32 with fp32 params,
// bf16 with bf16 params — LOWBIT_F32 / LOWBIT_BF16) but go through the same single_param_adam
// arithmetic, the bf16 states rounded to nearest even when stored. lowbit_format_for()
// applies that rule.
//
// The step is the op order torchao's compiled single_param_adam runs (inductor C++ on the
// CPU: every op rounded to fp32, no FMA contraction, -ffp-contract=off):
//   g  = grad * grad_scale                       (our addition for clipping; 1 = torchao)
//   p1 = p - (lr*wd) * p                         lr*wd: fp32 product of fp32 lr and wd
//   m' = m + (g - m) * (1-b1)                    lerp, weight < 0.5 branch; weight >= 0.5:
//   v' = v + (g*g - v) * (1-b2)                     end + (end - start) * -(1 - weight)
//   p' = p1 - (lr * (m' / bc1)) / (sqrt(v') / sqrt(bc2) + eps)
//   bc1 = 1 - powf(b1, t), bc2 = 1 - powf(b2, t)   (fp32 on the host, as inductor's std::pow)
// then m', v' are requantized (fresh block scales) and p' is stored: fp32, or bf16 by round
// to nearest even (torchao with bf16 params), or bf16 by stochastic rounding (torchao's
// _fp32_to_bf16_sr; our random bits come from lowbit_sr_bits, see there).
//
// Pinned arithmetic: OPT_MUL/ADD/SUB/DIV/SQRT/FMA compile to __fmul_rn etc. on the GPU (never
// contracted) and to plain C operators on the host, where the including .c file must be built
// without FMA contraction (lowbit.c and adamw_cpu.c say #pragma GCC optimize("fp-contract=off")
// so that -march=native builds cannot fuse a*b+c either).
#ifndef LLAMA_AO_OPTIM_LOWBIT_H
#define LLAMA_AO_OPTIM_LOWBIT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/bits.h"
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- pinned fp32 arithmetic, host and device ---------------------------------------------
#if defined(__CUDACC__)
#define OPT_HD static __host__ __device__ __forceinline__
#else
#define OPT_HD static inline
#endif
#if defined(__CUDA_ARCH__)
#define OPT_MUL(a, b) __fmul_rn((a), (b))
#define OPT_ADD(a, b) __fadd_rn((a), (b))
#define OPT_SUB(a, b) __fsub_rn((a), (b))
#define OPT_DIV(a, b) __fdiv_rn((a), (b))
#define OPT_SQRT(a) __fsqrt_rn(a)
#define OPT_FMA(a, b, c) __fmaf_rn((a), (b), (c))
#else
#define OPT_MUL(a, b) ((a) * (b))
#define OPT_ADD(a, b) ((a) + (b))
#define OPT_SUB(a, b) ((a) - (b))
#define OPT_DIV(a, b) ((a) / (b))
#define OPT_SQRT(a) sqrtf(a)
#define OPT_FMA(a, b, c) fmaf((a), (b), (c))
#endif


// ---- formats and layout -------------------------------------------------------------------
typedef enum { LOWBIT_F32 = 0, LOWBIT_8BIT = 1, LOWBIT_4BIT = 2, LOWBIT_FP8 = 3, LOWBIT_BF16 = 4 } LowbitFormat;
// How the parameter itself is kept: fp32 master (+ optional bf16 working copy, round to
// nearest even), or bf16 only, rounded to nearest even or stochastically (--master bf16-sr).
typedef enum { LOWBIT_MASTER_F32 = 0, LOWBIT_MASTER_BF16 = 1, LOWBIT_MASTER_BF16_SR = 2 } LowbitMaster;

#define LOWBIT_MIN_NUMEL 4096  // torchao (after bitsandbytes) quantizes tensors this large or larger
#define LOWBIT_BLOCK_8BIT 256
#define LOWBIT_BLOCK_4BIT 128
#define LOWBIT_BLOCK_FP8 256
#define LOWBIT_PLAIN_CHUNK 4096  // work unit of the CPU step for fp32/bf16 states (not a format property)

// Elements per scale: 256, 128, 256; 0 for LOWBIT_F32 / LOWBIT_BF16.
int lowbit_block(LowbitFormat f);
const char *lowbit_format_name(LowbitFormat f);
// The format torchao uses for a tensor of n elements when `want` is asked for: `want` when
// n >= 4096 and n % block == 0, else the parameter's own dtype: LOWBIT_F32 for an fp32 master,
// LOWBIT_BF16 for the bf16 masters (torchao's _new_buffer rule). want = LOWBIT_F32 is
// torchao's _AdamW: plain states in the parameter's dtype.
LowbitFormat lowbit_format_for(LowbitFormat want, size_t n, LowbitMaster master);
OPT_HD int lowbit_quantized(LowbitFormat f) { return f == LOWBIT_8BIT || f == LOWBIT_4BIT || f == LOWBIT_FP8; }

// One tensor's m and v states in one region: four 16-byte aligned parts.
//   F32:  m, v  float [n]                    8 bytes per element
//   BF16: m, v  bf16 [n]                     4 bytes per element
//   8BIT: m, v  uint8 [n], scales float [n/256] each   2 + 8/256 bytes per element
//   4BIT: m, v  uint8 [n/2], scales float [n/128] each 1 + 8/128 bytes per element
//   FP8:  m, v  uint8 [n] (e4m3fn bits), scales float [n/256] each   2 + 8/256
typedef struct {
    LowbitFormat fmt;  // as lowbit_format_for decided
    int block;         // 0 for F32, BF16
    size_t n, n_blocks;
    size_t m_off, v_off, m_scale_off, v_scale_off;  // byte offsets in the region
    size_t bytes;                                   // region size, a multiple of 16
} LowbitLayout;
LowbitLayout lowbit_layout(LowbitFormat want, size_t n, LowbitMaster master);
// The layout of n elements' states in an already resolved format (a shard's piece of a tensor
// keeps the whole tensor's format; quantized formats need n to be whole blocks).
LowbitLayout lowbit_layout_of(LowbitFormat fmt, size_t n);

// Pointers into a region (host or device memory; only address arithmetic is done). An
// all-zero region is a freshly initialised state, as torchao's zeros().
typedef struct {
    LowbitFormat fmt;
    int block;
    size_t n;
    void *m, *v;               // F32: float *, BF16: uint16_t *, else uint8_t * codes
    float *m_scale, *v_scale;  // [n / block]; NULL for F32, BF16
} LowbitState;
LowbitState lowbit_state_at(const LowbitLayout *l, void *base);
// The state of elements [first, first + n) of st (pointers moved, nothing copied): quantized
// states need first and n in whole blocks. A step over the range equals the whole step's
// there, given the range's grad/param pointers and sr_offset + first.
LowbitState lowbit_state_range(const LowbitState *st, size_t first, size_t n);

// ---- maps ---------------------------------------------------------------------------------
// torchao's maps as fp32 values (create_dynamic_map(True) / (False); 4-bit: create_dynamic_map
// (True, 3, 4) and linspace(0, 1, 17)[1:]), copied from torchao 0.18 and checked against the
// fixture's qmap.* tensors by test_optim. Macros so the GPU initialises __constant__ copies.
#define LOWBIT_QMAP_S8 \
    -0x1.fc6666p-1f, -0x1.f53334p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f, -0x1.df999ap-1f, -0x1.d86666p-1f, \
    -0x1.d13334p-1f, -0x1.cap-1f, -0x1.c2ccccp-1f, -0x1.bb999ap-1f, -0x1.b46666p-1f, -0x1.ad3334p-1f, \
    -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.97999ap-1f, -0x1.906666p-1f, -0x1.893334p-1f, -0x1.82p-1f, \
    -0x1.7accccp-1f, -0x1.73999ap-1f, -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56ccccp-1f, \
    -0x1.4f999ap-1f, -0x1.486668p-1f, -0x1.413334p-1f, -0x1.3ap-1f, -0x1.32ccccp-1f, -0x1.2b999ap-1f, \
    -0x1.246668p-1f, -0x1.1d3334p-1f, -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.079998p-1f, -0x1.006666p-1f, \
    -0x1.f26664p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f, -0x1.b8ccccp-2f, -0x1.aa6666p-2f, \
    -0x1.9cp-2f, -0x1.8d9998p-2f, -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626666p-2f, -0x1.54p-2f, \
    -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f, -0x1.0cp-2f, -0x1.fb3332p-3f, \
    -0x1.de6666p-3f, -0x1.c1999ap-3f, -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3334p-3f, -0x1.4e6666p-3f, \
    -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f, -0x1.93d70ap-4f, -0x1.8851eep-4f, \
    -0x1.7ccccep-4f, -0x1.7147aep-4f, -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb854p-4f, -0x1.433334p-4f, \
    -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f, -0x1.09999ap-4f, -0x1.fc28f6p-5f, \
    -0x1.e51ebap-5f, -0x1.ce147ap-5f, -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f, \
    -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c29p-5f, -0x1.fd70a4p-6f, -0x1.cf5c2ap-6f, \
    -0x1.a147aep-6f, -0x1.733334p-6f, -0x1.451ebap-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f, \
    -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f, -0x1.e978d4p-8f, -0x1.c49ba6p-8f, \
    -0x1.9fbe76p-8f, -0x1.7ae148p-8f, -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f, \
    -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f, -0x1.eecbfep-11f, -0x1.b3d07cp-11f, \
    -0x1.78d5p-11f, -0x1.3dd982p-11f, -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f, \
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f, -0x1.040bfep-17f, -0x1.b43528p-19f, \
    -0x1.27476ep-21f, 0.0f, 0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f, \
    0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f, 0x1.19ce0ap-12f, 0x1.8fc506p-12f, \
    0x1.02de02p-11f, 0x1.3dd982p-11f, 0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f, \
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f, 0x1.0c49bap-8f, 0x1.3126e8p-8f, \
    0x1.56041ap-8f, 0x1.7ae148p-8f, 0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f, \
    0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f, 0x1.d1eb86p-7f, 0x1.170a3ep-6f, \
    0x1.451ebap-6f, 0x1.733334p-6f, 0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c29p-5f, \
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f, 0x1.88f5c2p-5f, 0x1.ap-5f, \
    0x1.b70a3ep-5f, 0x1.ce147ap-5f, 0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f, \
    0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f, 0x1.4eb854p-4f, 0x1.5a3d7p-4f, \
    0x1.65c29p-4f, 0x1.7147aep-4f, 0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f, \
    0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f, 0x1.6b3334p-3f, 0x1.88p-3f, \
    0x1.a4ccccp-3f, 0x1.c1999ap-3f, 0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f, \
    0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f, 0x1.626666p-2f, 0x1.70ccccp-2f, \
    0x1.7f3334p-2f, 0x1.8d9998p-2f, 0x1.9cp-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f, \
    0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26664p-2f, 0x1.006666p-1f, 0x1.079998p-1f, 0x1.0eccccp-1f, \
    0x1.16p-1f, 0x1.1d3334p-1f, 0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f, \
    0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f, 0x1.5ep-1f, 0x1.653334p-1f, \
    0x1.6c6668p-1f, 0x1.73999ap-1f, 0x1.7accccp-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f, \
    0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3334p-1f, 0x1.b46666p-1f, 0x1.bb999ap-1f, \
    0x1.c2ccccp-1f, 0x1.cap-1f, 0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f, \
    0x1.eep-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f, 0x1p+0f

#define LOWBIT_QMAP_U8 \
    0.0f, 0x1.5cf754p-22f, 0x1.a0133p-21f, 0x1.1d367p-19f, 0x1.2599ecp-18f, 0x1.bc98a2p-18f, \
    0x1.29cbaap-17f, 0x1.0624dcp-16f, 0x1.c2e34p-16f, 0x1.3fd0dp-15f, 0x1.9e3p-15f, 0x1.fc8f34p-15f, \
    0x1.2d7732p-14f, 0x1.5ca6c8p-14f, 0x1.8bd662p-14f, 0x1.0cb296p-13f, 0x1.82a994p-13f, 0x1.f8a092p-13f, \
    0x1.374bc8p-12f, 0x1.724744p-12f, 0x1.ad42c6p-12f, 0x1.e83e44p-12f, 0x1.119ce2p-11f, 0x1.2f1aap-11f, \
    0x1.4c986p-11f, 0x1.6a162p-11f, 0x1.8793dep-11f, 0x1.a511ap-11f, 0x1.c28f5ep-11f, 0x1.e00d1cp-11f, \
    0x1.fd8adcp-11f, 0x1.2b020cp-10f, 0x1.74bc6ap-10f, 0x1.be76c8p-10f, 0x1.041894p-9f, 0x1.28f5c2p-9f, \
    0x1.4dd2fp-9f, 0x1.72b02p-9f, 0x1.978d4ep-9f, 0x1.bc6a8p-9f, 0x1.e147aep-9f, 0x1.03126ep-8f, \
    0x1.158104p-8f, 0x1.27ef9ep-8f, 0x1.3a5e34p-8f, 0x1.4cccccp-8f, 0x1.5f3b64p-8f, 0x1.71a9fap-8f, \
    0x1.841894p-8f, 0x1.96872ap-8f, 0x1.a8f5c2p-8f, 0x1.bb645cp-8f, 0x1.cdd2fp-8f, 0x1.e0418ap-8f, \
    0x1.f2b01ep-8f, 0x1.028f5cp-7f, 0x1.0bc6a8p-7f, 0x1.14fdf2p-7f, 0x1.1e354p-7f, 0x1.276c8ap-7f, \
    0x1.30a3d6p-7f, 0x1.39db24p-7f, 0x1.43126ep-7f, 0x1.5eb854p-7f, 0x1.8ccccep-7f, 0x1.bae146p-7f, \
    0x1.e8f5c4p-7f, 0x1.0b851ep-6f, 0x1.228f5ep-6f, 0x1.39999ap-6f, 0x1.50a3d6p-6f, 0x1.67ae16p-6f, \
    0x1.7eb852p-6f, 0x1.95c28ep-6f, 0x1.accccep-6f, 0x1.c3d70ep-6f, 0x1.dae146p-6f, 0x1.f1eb86p-6f, \
    0x1.047aep-5f, 0x1.1p-5f, 0x1.1b851ep-5f, 0x1.270a3ep-5f, 0x1.328f5ep-5f, 0x1.3e147ap-5f, \
    0x1.49999ap-5f, 0x1.551eb8p-5f, 0x1.60a3d6p-5f, 0x1.6c28f6p-5f, 0x1.77ae14p-5f, 0x1.833334p-5f, \
    0x1.8eb85p-5f, 0x1.9a3d7p-5f, 0x1.a5c28ep-5f, 0x1.b147aep-5f, 0x1.bccccep-5f, 0x1.c851eep-5f, \
    0x1.d3d70ep-5f, 0x1.df5c2ap-5f, 0x1.eae146p-5f, 0x1.f66666p-5f, 0x1.00f5c4p-4f, 0x1.06b854p-4f, \
    0x1.0c7ae2p-4f, 0x1.123d7p-4f, 0x1.18p-4f, 0x1.1dc29p-4f, 0x1.23852p-4f, 0x1.2947aep-4f, \
    0x1.2f0a3ep-4f, 0x1.34cccep-4f, 0x1.3a8f5ep-4f, 0x1.4051ecp-4f, 0x1.46147cp-4f, 0x1.4bd70ap-4f, \
    0x1.51999ap-4f, 0x1.575c2ap-4f, 0x1.5d1eb8p-4f, 0x1.62e148p-4f, 0x1.68a3d6p-4f, 0x1.6e6666p-4f, \
    0x1.7428f6p-4f, 0x1.79eb86p-4f, 0x1.7fae16p-4f, 0x1.8570a4p-4f, 0x1.8b3334p-4f, 0x1.90f5c4p-4f, \
    0x1.96b852p-4f, 0x1.a8p-4f, 0x1.c4ccccp-4f, 0x1.e1999ap-4f, 0x1.fe6666p-4f, 0x1.0d9998p-3f, \
    0x1.1cp-3f, 0x1.2a6668p-3f, 0x1.38ccccp-3f, 0x1.473334p-3f, 0x1.559998p-3f, 0x1.64p-3f, \
    0x1.726668p-3f, 0x1.80ccccp-3f, 0x1.8f3334p-3f, 0x1.9d9998p-3f, 0x1.acp-3f, 0x1.ba6668p-3f, \
    0x1.c8ccccp-3f, 0x1.d73334p-3f, 0x1.e59998p-3f, 0x1.f4p-3f, 0x1.013332p-2f, 0x1.086666p-2f, \
    0x1.0f999ap-2f, 0x1.16ccccp-2f, 0x1.1ep-2f, 0x1.253334p-2f, 0x1.2c6666p-2f, 0x1.339998p-2f, \
    0x1.3accccp-2f, 0x1.42p-2f, 0x1.493334p-2f, 0x1.506666p-2f, 0x1.579998p-2f, 0x1.5eccccp-2f, \
    0x1.66p-2f, 0x1.6d3334p-2f, 0x1.746666p-2f, 0x1.7b9998p-2f, 0x1.82ccccp-2f, 0x1.8ap-2f, \
    0x1.913334p-2f, 0x1.986666p-2f, 0x1.9f9998p-2f, 0x1.a6ccccp-2f, 0x1.aep-2f, 0x1.b53334p-2f, \
    0x1.bc6666p-2f, 0x1.c39998p-2f, 0x1.caccccp-2f, 0x1.d2p-2f, 0x1.d93334p-2f, 0x1.e06666p-2f, \
    0x1.e79998p-2f, 0x1.eeccccp-2f, 0x1.f6p-2f, 0x1.fd3332p-2f, 0x1.023334p-1f, 0x1.05ccccp-1f, \
    0x1.096666p-1f, 0x1.0dp-1f, 0x1.109998p-1f, 0x1.143334p-1f, 0x1.17ccccp-1f, 0x1.1b6668p-1f, \
    0x1.1fp-1f, 0x1.22999ap-1f, 0x1.263334p-1f, 0x1.29ccccp-1f, 0x1.2d6668p-1f, 0x1.31p-1f, \
    0x1.34999ap-1f, 0x1.383334p-1f, 0x1.3bccccp-1f, 0x1.3f6668p-1f, 0x1.43p-1f, 0x1.46999ap-1f, \
    0x1.4a3334p-1f, 0x1.4dccccp-1f, 0x1.516668p-1f, 0x1.55p-1f, 0x1.58999ap-1f, 0x1.5c3334p-1f, \
    0x1.5fccccp-1f, 0x1.636668p-1f, 0x1.67p-1f, 0x1.6a999ap-1f, 0x1.6e3334p-1f, 0x1.71ccccp-1f, \
    0x1.756668p-1f, 0x1.79p-1f, 0x1.7c999ap-1f, 0x1.803334p-1f, 0x1.83ccccp-1f, 0x1.876668p-1f, \
    0x1.8bp-1f, 0x1.8e9998p-1f, 0x1.923334p-1f, 0x1.95ccccp-1f, 0x1.996668p-1f, 0x1.9dp-1f, \
    0x1.a09998p-1f, 0x1.a43334p-1f, 0x1.a7ccccp-1f, 0x1.ab6668p-1f, 0x1.afp-1f, 0x1.b29998p-1f, \
    0x1.b63334p-1f, 0x1.b9ccccp-1f, 0x1.bd6668p-1f, 0x1.c1p-1f, 0x1.c49998p-1f, 0x1.c83334p-1f, \
    0x1.cbccccp-1f, 0x1.cf6668p-1f, 0x1.d3p-1f, 0x1.d69998p-1f, 0x1.da3334p-1f, 0x1.ddccccp-1f, \
    0x1.e16668p-1f, 0x1.e5p-1f, 0x1.e89998p-1f, 0x1.ec3334p-1f, 0x1.efccccp-1f, 0x1.f36668p-1f, \
    0x1.f7p-1f, 0x1.fa9998p-1f, 0x1.fe3334p-1f, 0x1p+0f

#define LOWBIT_QMAP_S4 \
    -0x1.c66666p-1f, -0x1.533334p-1f, -0x1.cp-2f, -0x1.b33332p-3f, -0x1.3d70a4p-4f, -0x1.0a3d72p-5f, \
    -0x1.6872bp-8f, 0.0f, 0x1.6872bp-8f, 0x1.0a3d72p-5f, 0x1.3d70a4p-4f, 0x1.b33332p-3f, \
    0x1.cp-2f, 0x1.533334p-1f, 0x1.c66666p-1f, 0x1p+0f

#define LOWBIT_QMAP_U4 \
    0x1p-4f, 0x1p-3f, 0x1.8p-3f, 0x1p-2f, 0x1.4p-2f, 0x1.8p-2f, \
    0x1.cp-2f, 0x1p-1f, 0x1.2p-1f, 0x1.4p-1f, 0x1.6p-1f, 0x1.8p-1f, \
    0x1.ap-1f, 0x1.cp-1f, 0x1.ep-1f, 0x1p+0f

extern const float lowbit_qmap_s8[256], lowbit_qmap_u8[256], lowbit_qmap_s4[16], lowbit_qmap_u4[16];

// ---- element functions (host and device) -----------------------------------------------------
// inductor's max_propagate_nan: NaN in either argument wins.
OPT_HD float lowbit_max_nan(float a, float b) { return a != a ? a : (a > b ? a : b); }

// quantize_8bit_with_qmap / quantize_4bit_with_qmap for one value already divided by its
// scale: branchless binary search for the last entry <= x (0 when none), then round up when
// the residual reaches half the gap, in fp32 as torch computes it (ties go up).
OPT_HD uint8_t lowbit_code8(float x, const float *q) {
    int c = x >= q[128] ? 128 : 0;
    c += x >= q[c + 64] ? 64 : 0;
    c += x >= q[c + 32] ? 32 : 0;
    c += x >= q[c + 16] ? 16 : 0;
    c += x >= q[c + 8] ? 8 : 0;
    c += x >= q[c + 4] ? 4 : 0;
    c += x >= q[c + 2] ? 2 : 0;
    c += x >= q[c + 1] ? 1 : 0;
    int up = c + 1 > 255 ? 255 : c + 1;
    float lo = q[c], hi = q[up];
    return (uint8_t)(OPT_SUB(x, lo) >= OPT_MUL(OPT_SUB(hi, lo), 0.5f) ? up : c);
}
OPT_HD uint8_t lowbit_code4(float x, const float *q) {
    int c = x >= q[8] ? 8 : 0;
    c += x >= q[c + 4] ? 4 : 0;
    c += x >= q[c + 2] ? 2 : 0;
    c += x >= q[c + 1] ? 1 : 0;
    int up = c + 1 > 15 ? 15 : c + 1;
    float lo = q[c], hi = q[up];
    return (uint8_t)(OPT_SUB(x, lo) >= OPT_MUL(OPT_SUB(hi, lo), 0.5f) ? up : c);
}

// fp32 -> float8_e4m3fn as torch's cast (c10 fp8e4m3fn_from_fp32_value); the same algorithm
// as quant/quant.c's quant_f32_to_e4m3 (test_optim checks them equal), here for the GPU too.
OPT_HD uint8_t lowbit_e4m3(float f) {
    uint32_t b = ao_f2u(f), sign = b & 0x80000000u;
    b ^= sign;
    uint8_t r;
    if (b >= 0x43F00000u) r = 0x7F;  // >= 480 (rounds past 448) and NaN: no infinity in e4m3fn
    else if (b < 0x3C800000u)        // below 2^-6: adding 2^14 makes the FPU round on the 2^-9 grid
        r = (uint8_t)(ao_f2u(OPT_ADD(ao_u2f(b), 16384.0f)) - 0x46800000u);
    else {  // normal: rebias 127 -> 7, round the 20 dropped bits to nearest even
        b = b - ((uint32_t)(127 - 7) << 23) + 0x7FFFFu + ((b >> 20) & 1u);
        r = (uint8_t)(b >> 20);
    }
    return (uint8_t)(r | (sign >> 24));
}
OPT_HD float lowbit_e4m3_to_f32(uint8_t v) {
    if ((v & 0x7F) == 0x7F) return ao_u2f((v & 0x80) ? 0xFFC00000u : 0x7FC00000u);
    float f = OPT_MUL(ao_u2f((uint32_t)(v & 0x7F) << 20), 0x1p120f);  // exact
    return (v & 0x80) ? -f : f;
}

// bf16 round to nearest even as c10::BFloat16 (NaN -> 0x7FC0).
OPT_HD uint16_t lowbit_bf16_rne(float f) {
    uint32_t u = ao_f2u(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
OPT_HD float lowbit_bf16_to_f32(uint16_t h) { return ao_u2f((uint32_t)h << 16); }

// torchao _fp32_to_bf16_sr given its 16 random bits r (torch.randint(0, 1 << 16)): away from
// zero when r < the 16 dropped bits, else toward zero; the int32 add wraps as torch's does
// (unsigned here, same bits); the result converts to bf16 exactly, NaN -> 0x7FC0.
OPT_HD uint16_t lowbit_bf16_sr(float f, uint32_t r) {
    uint32_t u = ao_f2u(f), t = (u & 0xFFFF0000u) + ((r & 0xFFFFu) < (u & 0xFFFFu) ? 0x10000u : 0u);
    if ((t & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (uint16_t)(t >> 16);
}
// Our stochastic-rounding bits: a counter-based hash (splitmix64's finaliser) of (seed, step,
// element index), so the GPU kernel, the CPU step and a resumed run draw the same bits for the
// same element without any generator state. torch instead draws torch.randint from its global
// generator (mt19937 on the CPU, Philox on CUDA, inductor's own under torch.compile), which is
// why only the rounding given the bits can match torchao, not the bits themselves.
OPT_HD uint32_t lowbit_sr_bits(uint64_t seed, int step, uint64_t idx) {
    uint64_t z = seed ^ (idx * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)(uint32_t)step * 0xC2B2AE3D27D4EB4Full);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(z >> 48);
}

// ---- the step --------------------------------------------------------------------------------
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;  // as the Python floats torchao is given
    int step;                                    // 1-based number of this update
    float grad_scale;                            // g = grad * grad_scale (1: torchao's g)
    LowbitMaster master;
    uint64_t seed;       // stochastic rounding: bits = lowbit_sr_bits(seed, step, sr_offset + i)
    uint64_t sr_offset;  // the tensor's first element in the whole parameter vector
} LowbitStep;

// fp32 scalars formed on the host exactly as the compiled graph forms them.
typedef struct {
    float lr, lr_wd;       // fp32 lr (torchao keeps lr in an fp32 tensor), lr * wd in fp32
    float c1, c2;          // lerp coefficients of m and v (fp32 of 1 - beta, or -(beta) form)
    int big1, big2;        // 1: lerp weight >= 0.5, so lerp from the end: end + (end - start) * c
    float bc1, bc2_sqrt;   // 1 - powf(b1, t), sqrtf(1 - powf(b2, t))
    float eps, grad_scale;
} LowbitScalars;
LowbitScalars lowbit_scalars(const LowbitStep *s);

OPT_HD float lowbit_lerp(float start, float end, float c, int big) {
    float d = OPT_SUB(end, start);
    return OPT_ADD(big ? end : start, OPT_MUL(d, c));
}
// One element: p, g in; *m, *v dequantized states in, new fp32 states out; returns new p.
OPT_HD float lowbit_adam_elem(float p, float g, float *m, float *v, const LowbitScalars *a) {
    g = OPT_MUL(g, a->grad_scale);
    float p1 = OPT_SUB(p, OPT_MUL(a->lr_wd, p));
    float mn = lowbit_lerp(*m, g, a->c1, a->big1);
    float vn = lowbit_lerp(*v, OPT_MUL(g, g), a->c2, a->big2);
    float upd = OPT_MUL(a->lr, OPT_DIV(mn, a->bc1));
    float denom = OPT_ADD(OPT_DIV(OPT_SQRT(vn), a->bc2_sqrt), a->eps);
    *m = mn, *v = vn;
    return OPT_SUB(p1, OPT_DIV(upd, denom));
}

// ---- CPU reference --------------------------------------------------------------------------
// Quantize / dequantize n values (n a multiple of the format's block) with the signed (m) or
// unsigned (v) map; fp8 ignores is_signed. 4-bit codes are packed (n/2 bytes).
void lowbit_quantize(LowbitFormat f, int is_signed, uint8_t *codes, float *scale, const float *x, size_t n);
void lowbit_dequantize(LowbitFormat f, int is_signed, float *x, const uint8_t *codes, const float *scale, size_t n);

// One AdamW step over one tensor (st->n elements). master: fp32 [n] for LOWBIT_MASTER_F32
// (param, when not NULL, receives the bf16 copy); NULL for the bf16 masters, where param
// bf16 [n] is read and written. rand16: NULL, or 16-bit random numbers [n] to use instead of
// lowbit_sr_bits (tests feed torch's). Serial; adamw_lowbit_update_cpu runs the same units
// (lowbit_step_unit) under OpenMP. Quantized units run in 16 lanes when adamw_cpu's variant is
// AVX-512 (adamw_cpu_set_isa; the same bits as the scalar C, test_offload checks it).
void lowbit_adamw_step_cpu(float *master, uint16_t *param, const LowbitState *st, const float *grad,
                           const LowbitStep *s, const uint16_t *rand16);
// Fails (CHECK) on a master/param combination that does not fit s->master, or a quantized
// state whose n is not whole blocks. The GPU launcher checks the same.
void lowbit_check_step(const float *master, const uint16_t *param, const LowbitState *st, const LowbitStep *s);
// Work units of a step: quantization blocks, or LOWBIT_PLAIN_CHUNK elements for plain states.
size_t lowbit_step_units(const LowbitState *st);
void lowbit_step_unit(float *master, uint16_t *param, const LowbitState *st, const float *grad,
                      const LowbitStep *s, const LowbitScalars *a, const uint16_t *rand16, size_t unit);

#ifdef __cplusplus
}
#endif
#endif
