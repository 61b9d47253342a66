// CPU reference of torchao's low-bit AdamW: maps, layout, quantizers and the step, built
// from the element functions in lowbit.h (the GPU kernels use the same ones).
#if defined(__GNUC__) && !defined(__clang__)
// torchao's compiled step rounds every op to fp32; a build with FMA (-march=native) must not
// fuse a*b+c here (see lowbit.h, "Pinned arithmetic").
#pragma GCC optimize("fp-contract=off")
#endif
#include "lowbit.h"
#include "lowbit_lut.h"

#include <float.h>

#include "../common/error.h"
#include "adamw_cpu.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include "bf16_x86.h"
#endif

const float lowbit_qmap_s8[256] = {LOWBIT_QMAP_S8};
const float lowbit_qmap_u8[256] = {LOWBIT_QMAP_U8};
const float lowbit_qmap_s4[16] = {LOWBIT_QMAP_S4};
const float lowbit_qmap_u4[16] = {LOWBIT_QMAP_U4};

int lowbit_block(LowbitFormat f) {
    switch (f) {
        case LOWBIT_8BIT: return LOWBIT_BLOCK_8BIT;
        case LOWBIT_4BIT: return LOWBIT_BLOCK_4BIT;
        case LOWBIT_FP8: return LOWBIT_BLOCK_FP8;
        default: return 0;
    }
}

const char *lowbit_format_name(LowbitFormat f) {
    switch (f) {
        case LOWBIT_F32: return "fp32";
        case LOWBIT_8BIT: return "8-bit";
        case LOWBIT_4BIT: return "4-bit";
        case LOWBIT_FP8: return "fp8";
        case LOWBIT_BF16: return "bf16";
        default: return "?";
    }
}

LowbitFormat lowbit_format_for(LowbitFormat want, size_t n, LowbitMaster master) {
    int b = lowbit_block(want);
    if (b == 0 || n < LOWBIT_MIN_NUMEL || n % (size_t)b != 0)
        return master == LOWBIT_MASTER_F32 ? LOWBIT_F32 : LOWBIT_BF16;
    return want;
}

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

LowbitLayout lowbit_layout_of(LowbitFormat fmt, size_t n) {
    LowbitLayout l;
    memset(&l, 0, sizeof l);
    l.fmt = fmt;
    l.block = lowbit_block(fmt);
    l.n = n;
    CHECK(n <= SIZE_MAX / 16, "lowbit_layout: %zu elements overflow", n);
    size_t state_bytes;  // one of m, v
    if (!lowbit_quantized(fmt)) {
        state_bytes = n * (fmt == LOWBIT_F32 ? sizeof(float) : sizeof(uint16_t));
    } else {
        CHECK(n % (size_t)l.block == 0, "optimizer states of %zu elements are not whole %d-element blocks", n, l.block);
        l.n_blocks = n / (size_t)l.block;
        state_bytes = fmt == LOWBIT_4BIT ? n / 2 : n;
    }
    size_t scale_bytes = l.n_blocks * sizeof(float);
    l.m_off = 0;
    l.v_off = align16(state_bytes);
    l.m_scale_off = l.v_off + align16(state_bytes);
    l.v_scale_off = l.m_scale_off + align16(scale_bytes);
    l.bytes = l.v_scale_off + align16(scale_bytes);
    return l;
}

LowbitLayout lowbit_layout(LowbitFormat want, size_t n, LowbitMaster master) {
    return lowbit_layout_of(lowbit_format_for(want, n, master), n);
}

LowbitState lowbit_state_at(const LowbitLayout *l, void *base) {
    LowbitState s;
    char *b = (char *)base;
    s.fmt = l->fmt;
    s.block = l->block;
    s.n = l->n;
    s.m = b + l->m_off;
    s.v = b + l->v_off;
    s.m_scale = lowbit_quantized(l->fmt) ? (float *)(b + l->m_scale_off) : NULL;
    s.v_scale = lowbit_quantized(l->fmt) ? (float *)(b + l->v_scale_off) : NULL;
    return s;
}

LowbitState lowbit_state_range(const LowbitState *st, size_t first, size_t n) {
    CHECK(first <= st->n && n <= st->n - first, "lowbit_state_range: [%zu, +%zu) outside %zu elements", first, n, st->n);
    LowbitState r = *st;
    r.n = n;
    if (!lowbit_quantized(st->fmt)) {
        const size_t es = st->fmt == LOWBIT_F32 ? sizeof(float) : sizeof(uint16_t);
        r.m = (char *)st->m + first * es;
        r.v = (char *)st->v + first * es;
        return r;
    }
    const size_t bl = (size_t)st->block;
    CHECK(first % bl == 0 && n % bl == 0, "lowbit_state_range: [%zu, +%zu) is not whole %zu-element blocks", first, n, bl);
    const size_t cb = st->fmt == LOWBIT_4BIT ? first / 2 : first;  // code bytes before the range
    r.m = (uint8_t *)st->m + cb;
    r.v = (uint8_t *)st->v + cb;
    r.m_scale = st->m_scale + first / bl;
    r.v_scale = st->v_scale + first / bl;
    return r;
}

// ---- quantizers -------------------------------------------------------------------------------
static const float *qmap_of(LowbitFormat f, int is_signed) {
    if (f == LOWBIT_8BIT) return is_signed ? lowbit_qmap_s8 : lowbit_qmap_u8;
    if (f == LOWBIT_4BIT) return is_signed ? lowbit_qmap_s4 : lowbit_qmap_u4;
    return NULL;
}

// The code tables of lowbit_lut.h (the GPU kernels'): for every float the code lowbit_code8 / 4's
// binary search gives (test_lowbit_lut checks it, exhaustively with --all), one load instead of
// a chain of 8 (4) dependent ones. The offloaded step (optim/adamw_cpu.c) requantizes every
// element of m and v each step, and the search was most of its time.
static const uint32_t g_lut_s8[] = {LOWBIT_LUT_S8}, g_lut_u8[] = {LOWBIT_LUT_U8}, g_lut_s4[] = {LOWBIT_LUT_S4},
                      g_lut_u4[] = {LOWBIT_LUT_U4};

static inline uint8_t code_of(LowbitFormat f, int is_signed, float x) {
    if (f == LOWBIT_8BIT)
        return (uint8_t)(is_signed ? lowbit_lut_code(x, g_lut_s8, LOWBIT_LUT_S8_LO, LOWBIT_LUT_S8_SHIFT, 1)
                                   : lowbit_lut_code(x, g_lut_u8, LOWBIT_LUT_U8_LO, LOWBIT_LUT_U8_SHIFT, 0));
    return (uint8_t)(is_signed ? lowbit_lut_code(x, g_lut_s4, LOWBIT_LUT_S4_LO, LOWBIT_LUT_S4_SHIFT, 1)
                               : lowbit_lut_code(x, g_lut_u4, LOWBIT_LUT_U4_LO, LOWBIT_LUT_U4_SHIFT, 0));
}

// One block of `bs` fp32 values -> codes (4-bit: bs/2 packed bytes), returns the stored
// scale. scale_tensor: absmax clipped at 1e-12 (fp8: then / 448), then x / scale. The codes
// come from the binary search over q (search = 1: the torchao reference, lowbit_quantize) or
// from the tables (the step), which give the same codes.
static float quantize_block(LowbitFormat f, const float *q, int is_signed, int search, uint8_t *codes, const float *x,
                            int bs) {
    float amax = 0.0f;
    for (int i = 0; i < bs; i++) amax = lowbit_max_nan(amax, fabsf(x[i]));
    float s = lowbit_max_nan(amax, 1e-12f);
    if (f == LOWBIT_FP8) s = s / 448.0f;
    if (f == LOWBIT_4BIT) {
        for (int i = 0; i < bs; i += 2) {
            const float a = x[i] / s, b = x[i + 1] / s;
            codes[i / 2] = search ? (uint8_t)(lowbit_code4(a, q) << 4 | lowbit_code4(b, q))
                                  : (uint8_t)(code_of(f, is_signed, a) << 4 | code_of(f, is_signed, b));
        }
    } else if (f == LOWBIT_8BIT) {
        if (search)
            for (int i = 0; i < bs; i++) codes[i] = lowbit_code8(x[i] / s, q);
        else
            for (int i = 0; i < bs; i++) codes[i] = code_of(f, is_signed, x[i] / s);
    } else {
        for (int i = 0; i < bs; i++) codes[i] = lowbit_e4m3(x[i] / s);
    }
    return s;
}

static float dequant_one(LowbitFormat f, const float *q, const uint8_t *codes, size_t i, float s) {
    if (f == LOWBIT_8BIT) return q[codes[i]] * s;
    if (f == LOWBIT_4BIT) return q[(i & 1) ? codes[i / 2] & 15 : codes[i / 2] >> 4] * s;
    return lowbit_e4m3_to_f32(codes[i]) * s;
}

void lowbit_quantize(LowbitFormat f, int is_signed, uint8_t *codes, float *scale, const float *x, size_t n) {
    int bs = lowbit_block(f);
    CHECK(bs > 0 && n % (size_t)bs == 0, "lowbit_quantize: %zu values are not whole %s blocks", n,
          lowbit_format_name(f));
    const float *q = qmap_of(f, is_signed);
    size_t per = f == LOWBIT_4BIT ? (size_t)bs / 2 : (size_t)bs;
    for (size_t b = 0; b < n / (size_t)bs; b++) scale[b] = quantize_block(f, q, is_signed, 1, codes + b * per, x + b * bs, bs);
}

void lowbit_dequantize(LowbitFormat f, int is_signed, float *x, const uint8_t *codes, const float *scale, size_t n) {
    int bs = lowbit_block(f);
    CHECK(bs > 0 && n % (size_t)bs == 0, "lowbit_dequantize: %zu values are not whole %s blocks", n,
          lowbit_format_name(f));
    const float *q = qmap_of(f, is_signed);
    for (size_t i = 0; i < n; i++) x[i] = dequant_one(f, q, codes, i, scale[i / (size_t)bs]);
}

// ---- the step -------------------------------------------------------------------------------
LowbitScalars lowbit_scalars(const LowbitStep *s) {
    CHECK(s->step >= 1 && s->step <= (1 << 24), "lowbit step %d: must be in [1, 2^24] (an exact fp32 count)", s->step);
    LowbitScalars a;
    memset(&a, 0, sizeof a);
    // torchao: lr is an fp32 tensor, beta/eps/wd Python floats that the graph casts to fp32;
    // the lerp weight 1 - beta is formed in double first; step is an fp32 tensor.
    a.lr = (float)s->lr;
    a.lr_wd = a.lr * (float)s->weight_decay;
    double w1 = 1.0 - s->beta1, w2 = 1.0 - s->beta2;
    a.big1 = w1 >= 0.5 || w1 <= -0.5;
    a.big2 = w2 >= 0.5 || w2 <= -0.5;
    a.c1 = a.big1 ? (float)(-(1.0 - w1)) : (float)w1;
    a.c2 = a.big2 ? (float)(-(1.0 - w2)) : (float)w2;
    float t = (float)s->step;
    a.bc1 = 1.0f - powf((float)s->beta1, t);
    a.bc2_sqrt = sqrtf(1.0f - powf((float)s->beta2, t));
    a.eps = (float)s->eps;
    a.grad_scale = s->grad_scale;
    return a;
}

size_t lowbit_step_units(const LowbitState *st) {
    if (!lowbit_quantized(st->fmt)) return (st->n + LOWBIT_PLAIN_CHUNK - 1) / LOWBIT_PLAIN_CHUNK;
    return st->n / (size_t)st->block;
}

static float load_p(const float *master, const uint16_t *param, size_t i) {
    return master ? master[i] : lowbit_bf16_to_f32(param[i]);
}

static void store_p(float *master, uint16_t *param, const LowbitStep *s, const uint16_t *rand16, size_t i, float p) {
    if (master) {
        master[i] = p;
        if (param) param[i] = lowbit_bf16_rne(p);
    } else if (s->master == LOWBIT_MASTER_BF16_SR) {
        param[i] = lowbit_bf16_sr(p, rand16 ? rand16[i] : lowbit_sr_bits(s->seed, s->step, s->sr_offset + i));
    } else {
        param[i] = lowbit_bf16_rne(p);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_LOWBIT_AVX512 1
// ---- the quantized unit in 16 lanes (AVX-512 F + DQ) ------------------------------------------
// The scalar unit's op sequence lane by lane: the same IEEE ops in the same order (no FMA:
// fp-contract=off above), so every result is the same value. Only NaN payloads and signs could
// differ: x86 returns the first operand's NaN when both are NaN, and GCC may swap the operands
// of a commutative scalar * or +. Two different NaNs can meet in such an op only when a
// gradient or a block scale is NaN, an fp8 code is NaN, or a hyperparameter is NaN: such units
// go through the scalar code (unit_vec_ok). An absmax that meets a NaN is redone in scalar
// order (the first NaN wins there).
#define T512 __attribute__((target("avx512f,avx512dq")))
#define T512_INLINE __attribute__((target("avx512f,avx512dq"), always_inline)) static inline

// dequant_one for the 16 elements from j (j a multiple of 16).
T512_INLINE __m512 deq16(LowbitFormat f, const float *q, const uint8_t *codes, int j, __m512 s) {
    __m512 x;
    if (f == LOWBIT_8BIT) {
        x = _mm512_i32gather_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + j))), q, 4);
    } else if (f == LOWBIT_4BIT) {  // byte k: element 2k in the high nibble, 2k+1 in the low one
        const __m128i b = _mm_loadl_epi64((const __m128i *)(codes + j / 2));
        __m512i c = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
        c = _mm512_and_si512(_mm512_srlv_epi32(c, _mm512_set1_epi64(4)), _mm512_set1_epi32(15));
        x = _mm512_permutexvar_ps(c, _mm512_loadu_ps(q));
    } else {  // lowbit_e4m3_to_f32; NaN codes never get here (unit_vec_ok)
        const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + j)));
        const __m512 mag = _mm512_mul_ps(
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_and_si512(c, _mm512_set1_epi32(0x7F)), 20)),
            _mm512_set1_ps(0x1p120f));
        // -f: the sign bit flipped
        x = _mm512_castsi512_ps(
            _mm512_xor_si512(_mm512_castps_si512(mag), _mm512_slli_epi32(_mm512_and_si512(c, _mm512_set1_epi32(0x80)), 24)));
    }
    return _mm512_mul_ps(x, s);
}

// The 4-bit tables padded to whole 32-word pieces for lut16's permutes.
static const uint32_t g_lut_s4_pad[96] = {LOWBIT_LUT_S4}, g_lut_u4_pad[64] = {LOWBIT_LUT_U4};

_Static_assert(LOWBIT_LUT_S4_N <= 96 && LOWBIT_LUT_U4_N <= 64, "4-bit tables outgrew their padded copies");

// lowbit_lut_code in 16 lanes (same arguments; pad: t padded to `pieces` 32-word pieces, read
// by permutes instead of a gather — the 4-bit tables).
T512_INLINE __m512i lut16(__m512 x, const uint32_t *t, const uint32_t *pad, int pieces, uint32_t lo, int shift,
                          int is_signed) {
    const __m512i u = _mm512_castps_si512(x), mask = _mm512_set1_epi32((int)((1u << shift) - 1u));
    __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
    a = _mm512_min_epu32(_mm512_max_epu32(a, _mm512_set1_epi32((int)lo)), _mm512_set1_epi32((int)LOWBIT_LUT_HI));
    __m512i idx = _mm512_srli_epi32(_mm512_sub_epi32(a, _mm512_set1_epi32((int)lo)), (unsigned)shift);
    __m512i low = _mm512_and_si512(a, mask);
    if (is_signed) {
        const __mmask16 neg = _mm512_movepi32_mask(u);
        idx = _mm512_mask_add_epi32(idx, neg, idx, _mm512_set1_epi32((int)LOWBIT_LUT_NB(lo, shift)));
        low = _mm512_mask_xor_epi32(low, neg, low, mask);
    }
    __m512i w;
    if (pad) {  // a small table in `pieces` 32-word pieces: one two-register permute each
        w = _mm512_permutex2var_epi32(_mm512_loadu_si512(pad), idx, _mm512_loadu_si512(pad + 16));
        for (int k = 1; k < pieces; k++)
            w = _mm512_mask_mov_epi32(w, _mm512_cmpeq_epi32_mask(_mm512_srli_epi32(idx, 5), _mm512_set1_epi32(k)),
                                      _mm512_permutex2var_epi32(_mm512_loadu_si512(pad + 32 * k), idx,
                                                                _mm512_loadu_si512(pad + 32 * k + 16)));
    } else {
        w = _mm512_i32gather_epi32(idx, (const void *)t, 4);
    }
    __m512i c = _mm512_srli_epi32(w, 24);
    c = _mm512_mask_add_epi32(c, _mm512_cmpge_epu32_mask(low, _mm512_and_si512(w, _mm512_set1_epi32(0xFFFFFF))), c,
                              _mm512_set1_epi32(1));
    const __mmask16 keep = is_signed ? _mm512_cmp_ps_mask(x, x, _CMP_ORD_Q)
                                     : _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    return _mm512_maskz_mov_epi32(keep, c);
}

// lowbit_e4m3 in 16 lanes.
T512_INLINE __m512i e4m3_16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x), sign = _mm512_and_si512(u, _mm512_set1_epi32((int)0x80000000u));
    const __m512i b = _mm512_xor_si512(u, sign);
    const __m512i sub = _mm512_sub_epi32(
        _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(b), _mm512_set1_ps(16384.0f))), _mm512_set1_epi32(0x46800000));
    __m512i r = _mm512_add_epi32(_mm512_sub_epi32(b, _mm512_set1_epi32((127 - 7) << 23)), _mm512_set1_epi32(0x7FFFF));
    r = _mm512_srli_epi32(_mm512_add_epi32(r, _mm512_and_si512(_mm512_srli_epi32(b, 20), _mm512_set1_epi32(1))), 20);
    r = _mm512_mask_mov_epi32(r, _mm512_cmplt_epu32_mask(b, _mm512_set1_epi32(0x3C800000)), sub);
    r = _mm512_mask_mov_epi32(r, _mm512_cmpge_epu32_mask(b, _mm512_set1_epi32(0x43F00000)), _mm512_set1_epi32(0x7F));
    return _mm512_or_si512(_mm512_and_si512(r, _mm512_set1_epi32(0xFF)), _mm512_srli_epi32(sign, 24));
}

// quantize_block (search = 0) with the codes in 16 lanes; x holds bs values.
T512_INLINE float quantize_block16(LowbitFormat f, int is_signed, uint8_t *codes, const float *x, int bs, __m512 amax,
                                   int any_nan) {
    float am;
    if (any_nan) {  // the scalar order: the first NaN (made positive) wins
        am = 0.0f;
        for (int i = 0; i < bs; i++) am = lowbit_max_nan(am, fabsf(x[i]));
    } else {
        am = _mm512_reduce_max_ps(amax);  // max of non-NaN non-negative values: order-free
    }
    float s = lowbit_max_nan(am, 1e-12f);
    if (f == LOWBIT_FP8) s = s / 448.0f;
    const __m512 sv = _mm512_set1_ps(s);
    for (int j = 0; j < bs; j += 16) {
        const __m512 y = _mm512_div_ps(_mm512_loadu_ps(x + j), sv);
        if (f == LOWBIT_4BIT) {
            const __m512i c = is_signed ? lut16(y, g_lut_s4, g_lut_s4_pad, 3, LOWBIT_LUT_S4_LO, LOWBIT_LUT_S4_SHIFT, 1)
                                        : lut16(y, g_lut_u4, g_lut_u4_pad, 2, LOWBIT_LUT_U4_LO, LOWBIT_LUT_U4_SHIFT, 0);
            // even lanes << 4, then each 64-bit pair folded into its low byte
            const __m512i e = _mm512_sllv_epi32(c, _mm512_set1_epi64(4));
            _mm_storel_epi64((__m128i *)(codes + j / 2), _mm512_cvtepi64_epi8(_mm512_or_si512(e, _mm512_srli_epi64(e, 32))));
        } else {
            const __m512i c = f == LOWBIT_FP8 ? e4m3_16(y)
                              : is_signed     ? lut16(y, g_lut_s8, NULL, 0, LOWBIT_LUT_S8_LO, LOWBIT_LUT_S8_SHIFT, 1)
                                              : lut16(y, g_lut_u8, NULL, 0, LOWBIT_LUT_U8_LO, LOWBIT_LUT_U8_SHIFT, 0);
            _mm_storeu_si128((__m128i *)(codes + j), _mm512_cvtepi32_epi8(c));
        }
    }
    return s;
}

// Whether the unit may take the 16-lane path (see above): no NaN among the gradients, the two
// scales, the hyperparameters, and (fp8) the codes.
T512 static int unit_vec_ok(LowbitFormat f, const float *g, const uint8_t *mc, const uint8_t *vc, float ms, float vs,
                            const LowbitScalars *a, int bs) {
    const float h[] = {ms, vs, a->lr, a->lr_wd, a->c1, a->c2, a->bc1, a->bc2_sqrt, a->eps, a->grad_scale};
    for (size_t k = 0; k < sizeof h / sizeof *h; k++)
        if (h[k] != h[k]) return 0;
    __mmask16 bad = 0;
    for (int j = 0; j < bs; j += 16) {
        const __m512 x = _mm512_loadu_ps(g + j);
        bad |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    }
    if (f == LOWBIT_FP8)
        for (int j = 0; j < bs; j += 16) {
            const __m512i n = _mm512_set1_epi32(0x7F);
            bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(mc + j))), n), n);
            bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(vc + j))), n), n);
        }
    return bad == 0;
}

T512_INLINE __m512 lerp16(__m512 start, __m512 end, __m512 c, int big) {
    return _mm512_add_ps(big ? end : start, _mm512_mul_ps(_mm512_sub_ps(end, start), c));
}

// The quantized branch of lowbit_step_unit for format f; returns 0 (nothing written) when
// the unit must go through the scalar code.
T512_INLINE int unit_avx512(LowbitFormat f, float *master, uint16_t *param, const LowbitState *st, const float *grad,
                            const LowbitStep *s, const LowbitScalars *a, const uint16_t *rand16, size_t unit) {
    const int bs = st->block;
    const float *qm = qmap_of(f, 1), *qv = qmap_of(f, 0);
    const size_t i0 = unit * (size_t)bs, per = f == LOWBIT_4BIT ? (size_t)bs / 2 : (size_t)bs;
    uint8_t *mc = (uint8_t *)st->m + unit * per, *vc = (uint8_t *)st->v + unit * per;
    if (!unit_vec_ok(f, grad + i0, mc, vc, st->m_scale[unit], st->v_scale[unit], a, bs)) return 0;
    const __m512 msc = _mm512_set1_ps(st->m_scale[unit]), vsc = _mm512_set1_ps(st->v_scale[unit]);
    const __m512 gs = _mm512_set1_ps(a->grad_scale), lrwd = _mm512_set1_ps(a->lr_wd), lr = _mm512_set1_ps(a->lr),
                 c1 = _mm512_set1_ps(a->c1), c2 = _mm512_set1_ps(a->c2), bc1 = _mm512_set1_ps(a->bc1),
                 bc2 = _mm512_set1_ps(a->bc2_sqrt), eps = _mm512_set1_ps(a->eps);
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
    float mn[LOWBIT_BLOCK_8BIT], vn[LOWBIT_BLOCK_8BIT];
    __m512 mmax = _mm512_setzero_ps(), vmax = _mm512_setzero_ps();
    __mmask16 mnan = 0, vnan = 0;
    for (int j = 0; j < bs; j += 16) {
        const size_t i = i0 + (size_t)j;
        const __m512 p = master ? _mm512_loadu_ps(master + i)
                                : _mm512_castsi512_ps(_mm512_slli_epi32(
                                      _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(param + i))), 16));
        const __m512 g = _mm512_mul_ps(_mm512_loadu_ps(grad + i), gs);  // lowbit_adam_elem
        const __m512 p1 = _mm512_sub_ps(p, _mm512_mul_ps(lrwd, p));
        const __m512 m1 = lerp16(deq16(f, qm, mc, j, msc), g, c1, a->big1);
        const __m512 v1 = lerp16(deq16(f, qv, vc, j, vsc), _mm512_mul_ps(g, g), c2, a->big2);
        const __m512 upd = _mm512_mul_ps(lr, _mm512_div_ps(m1, bc1));
        const __m512 den = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(v1), bc2), eps);
        const __m512 pn = _mm512_sub_ps(p1, _mm512_div_ps(upd, den));
        _mm512_storeu_ps(mn + j, m1);
        _mm512_storeu_ps(vn + j, v1);
        mmax = _mm512_max_ps(mmax, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(m1), absm)));
        vmax = _mm512_max_ps(vmax, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v1), absm)));
        mnan |= _mm512_cmp_ps_mask(m1, m1, _CMP_UNORD_Q);
        vnan |= _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q);
        __m256i h;  // store_p
        if (master) {
            _mm512_storeu_ps(master + i, pn);
            if (!param) continue;
            h = bf16_rne16(pn);
        } else if (s->master == LOWBIT_MASTER_BF16_SR) {
            h = bf16_sr16(pn, rand16 ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(rand16 + i)))
                                     : sr_bits16(s->seed, s->step, s->sr_offset + i));
        } else {
            h = bf16_rne16(pn);
        }
        _mm256_storeu_si256((__m256i *)(param + i), h);
    }
    st->m_scale[unit] = quantize_block16(f, 1, mc, mn, bs, mmax, mnan != 0);
    st->v_scale[unit] = quantize_block16(f, 0, vc, vn, bs, vmax, vnan != 0);
    return 1;
}

T512 static int step_unit_avx512(float *master, uint16_t *param, const LowbitState *st, const float *grad,
                                 const LowbitStep *s, const LowbitScalars *a, const uint16_t *rand16, size_t unit) {
    switch (st->fmt) {
        case LOWBIT_8BIT: return unit_avx512(LOWBIT_8BIT, master, param, st, grad, s, a, rand16, unit);
        case LOWBIT_4BIT: return unit_avx512(LOWBIT_4BIT, master, param, st, grad, s, a, rand16, unit);
        case LOWBIT_FP8: return unit_avx512(LOWBIT_FP8, master, param, st, grad, s, a, rand16, unit);
        default: return 0;
    }
}
#endif

// The low-bit step follows adamw_cpu's variant choice (adamw_cpu_set_isa): its AVX-512 choice
// takes the 16-lane quantized unit when the CPU also has AVX512DQ; AVX2 and scalar run the C.
static int use_avx512(void) {
#ifdef HAVE_LOWBIT_AVX512
    return adamw_cpu_get_isa() == ADAMW_ISA_AVX512 && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}

void lowbit_step_unit(float *master, uint16_t *param, const LowbitState *st, const float *grad, const LowbitStep *s,
                      const LowbitScalars *a, const uint16_t *rand16, size_t unit) {
#ifdef HAVE_LOWBIT_AVX512
    if (lowbit_quantized(st->fmt) && use_avx512() && step_unit_avx512(master, param, st, grad, s, a, rand16, unit))
        return;
#endif
    if (!lowbit_quantized(st->fmt)) {
        size_t i0 = unit * LOWBIT_PLAIN_CHUNK, i1 = i0 + LOWBIT_PLAIN_CHUNK < st->n ? i0 + LOWBIT_PLAIN_CHUNK : st->n;
        for (size_t i = i0; i < i1; i++) {
            float p = load_p(master, param, i);
            if (st->fmt == LOWBIT_F32) {
                p = lowbit_adam_elem(p, grad[i], (float *)st->m + i, (float *)st->v + i, a);
            } else {  // bf16 states: read exactly, stored rounded to nearest even (exp_avg.copy_)
                uint16_t *m = (uint16_t *)st->m, *v = (uint16_t *)st->v;
                float mf = lowbit_bf16_to_f32(m[i]), vf = lowbit_bf16_to_f32(v[i]);
                p = lowbit_adam_elem(p, grad[i], &mf, &vf, a);
                m[i] = lowbit_bf16_rne(mf), v[i] = lowbit_bf16_rne(vf);
            }
            store_p(master, param, s, rand16, i, p);
        }
        return;
    }
    // Quantized: dequantize the block, step, then requantize m' and v' with fresh scales
    // (torchao's exp_avg.copy_(exp_avg_f32)); p' uses the unquantized m', v'.
    const int bs = st->block;
    const float *qm = qmap_of(st->fmt, 1), *qv = qmap_of(st->fmt, 0);
    const size_t i0 = unit * (size_t)bs, per = st->fmt == LOWBIT_4BIT ? (size_t)bs / 2 : (size_t)bs;
    uint8_t *mc = (uint8_t *)st->m + unit * per, *vc = (uint8_t *)st->v + unit * per;
    float mn[LOWBIT_BLOCK_8BIT], vn[LOWBIT_BLOCK_8BIT];
    for (int j = 0; j < bs; j++) {
        mn[j] = dequant_one(st->fmt, qm, mc, (size_t)j, st->m_scale[unit]);
        vn[j] = dequant_one(st->fmt, qv, vc, (size_t)j, st->v_scale[unit]);
        float p = lowbit_adam_elem(load_p(master, param, i0 + j), grad[i0 + j], &mn[j], &vn[j], a);
        store_p(master, param, s, rand16, i0 + j, p);
    }
    st->m_scale[unit] = quantize_block(st->fmt, qm, 1, 0, mc, mn, bs);
    st->v_scale[unit] = quantize_block(st->fmt, qv, 0, 0, vc, vn, bs);
}

void lowbit_check_step(const float *master, const uint16_t *param, const LowbitState *st, const LowbitStep *s) {
    CHECK(master != NULL || param != NULL, "lowbit step: neither fp32 master nor bf16 parameters given");
    CHECK((master != NULL) == (s->master == LOWBIT_MASTER_F32), "lowbit step: master mode %d needs %s", (int)s->master,
          s->master == LOWBIT_MASTER_F32 ? "fp32 master weights" : "bf16 parameters only (master == NULL)");
    CHECK(!lowbit_quantized(st->fmt) || (st->block > 0 && st->n % (size_t)st->block == 0),
          "lowbit step: %zu elements are not whole %s blocks", st->n, lowbit_format_name(st->fmt));
}

void lowbit_adamw_step_cpu(float *master, uint16_t *param, const LowbitState *st, const float *grad,
                           const LowbitStep *s, const uint16_t *rand16) {
    lowbit_check_step(master, param, st, s);
    LowbitScalars a = lowbit_scalars(s);
    size_t nu = lowbit_step_units(st);
    for (size_t u = 0; u < nu; u++) lowbit_step_unit(master, param, st, grad, s, &a, rand16, u);
}
