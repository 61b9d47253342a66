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

void lowbit_step_unit(float *master, uint16_t *param, const LowbitState *st, const float *grad, const LowbitStep *s,
                      const LowbitScalars *a, const uint16_t *rand16, size_t unit) {
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
