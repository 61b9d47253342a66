// float8 / MX training casts (quant/fp8.c, quant/mx.c): the scalar conversions against a
// nearest-even search and against quant.c's inference helper, scales and codes on hand cases
// (all-zero groups, inf, NaN, ties, subnormals, pow2 rounding), layouts (transposed = cast of
// the transpose, tails = zero padding), the recipe table, and — from test/ref/fp8_ref.py —
// torchao's own bytes and scales for every recipe operand, the blockwise quantizers and to_mx in
// both scale modes, compared bit for bit. MX for training: the bf16 dequantization (every code and
// exponent against safetensors' f32_to_bf16 of the fp32 value; RCEIL casts of bf16 tensors exact in
// bf16, FLOOR's e8m0 = 0 exception) and cuBLASLt's swizzled scale layout against torchao's to_blocked
// written as its tensor operations.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../model/safetensors.h"
#include "../quant/fp8.h"
#include "../quant/mx.h"
#include "../quant/quant.h"
#include "test.h"

static uint32_t f2u(float f) { return ao_f2u(f); }
static float u2f(uint32_t u) { return ao_u2f(u); }
static size_t count_diff(const void *a, const void *b, size_t n, size_t elem) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp((const char *)a + i * elem, (const char *)b + i * elem, elem) != 0;
    return bad;
}
static float *transpose(const float *x, int rows, int cols) {
    float *t = ao_malloc(((size_t)rows * cols + 1) * sizeof(float));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) t[(size_t)c * rows + r] = x[(size_t)r * cols + c];
    return t;
}
static float *rand_bf16(size_t n, float scale, uint64_t *rng) {
    float *x = ao_malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = quant_bf16_round(scale * test_rand_uniform(rng));
    return x;
}

// ---- scalar conversions ---------------------------------------------------------------------
// Nearest code by search over every finite code, ties to the even code (the independent model).
static uint8_t search_code(float f, Fp8Dtype dt) {
    int best = -1;
    double bd = INFINITY;
    for (int c = 0; c < 128; c++) {
        float v = fp8_to_f32((uint8_t)c, dt);
        if (!isfinite(v)) continue;
        double d = fabs((double)fabsf(f) - v);
        if (d < bd || (d == bd && (c & 1) == 0)) bd = d, best = c;
    }
    return (uint8_t)(best | (signbit(f) ? 0x80 : 0));
}

static void test_scalar(void) {
    // Every code decodes and re-encodes to itself; e4m3 decode agrees with quant.c.
    size_t bad = 0, bad_dec = 0;
    for (int c = 0; c < 256; c++) {
        for (int dt = 0; dt < 2; dt++) {
            float v = fp8_to_f32((uint8_t)c, (Fp8Dtype)dt);
            if (isnan(v)) continue;
            uint8_t back = dt == FP8_E4M3 ? fp8_e4m3_from_f32(v) : fp8_e5m2_from_f32(v);
            bad += back != (uint8_t)c;
        }
        float a = fp8_e4m3_to_f32((uint8_t)c), b = quant_e4m3_to_f32((uint8_t)c);
        bad_dec += !(isnan(a) && isnan(b)) && f2u(a) != f2u(b);
    }
    TEST_CHECK(bad == 0 && bad_dec == 0, "fp8 codes: %zu do not round-trip, %zu e4m3 decodes differ", bad, bad_dec);
    TEST_CHECK(fp8_e4m3_to_f32(0x7E) == 448.0f && fp8_e5m2_to_f32(0x7B) == 57344.0f &&
                   fp8_e5m2_to_f32(0x7C) == INFINITY && fp8_e4m3_to_f32(0x01) == 0x1p-9f &&
                   fp8_e5m2_to_f32(0x01) == 0x1p-16f,
               "fp8 max / min values");
    // The device twin fp8_e4m3_from_f32 = quant.c's quant_f32_to_e4m3 for every fp32 whose low
    // 8 bits are 0, 0x80 or 0xFF (all bf16 values, every tie and its neighbours), both signs.
    bad = 0;
    const uint32_t lows[3] = {0x00, 0x80, 0xFF};
    for (uint32_t hi = 0; hi < (1u << 24); hi++)
        for (int l = 0; l < 3; l++) {
            float f = u2f((hi << 8) | lows[l]);
            bad += fp8_e4m3_from_f32(f) != quant_f32_to_e4m3(f);
        }
    TEST_CHECK(bad == 0, "fp8_e4m3_from_f32 differs from quant_f32_to_e4m3 on %zu of 50M inputs", bad);
    // Both casts against the nearest-even search, inside the range the clamp leaves.
    uint64_t rng = 7;
    size_t bad4 = 0, bad5 = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)test_rand_u64(&rng);
        float f4 = u2f(u & 0xC3FFFFFFu), f5 = u2f(u & 0xC7FFFFFFu);  // |f| < 512 / 131072
        if (i < 1024)  // a sweep in half-ulp steps: every tie from the subnormals up
            f4 = u2f((uint32_t)(0x3A000000u + ((uint32_t)i << 19))),
            f5 = u2f((uint32_t)(0x36000000u + ((uint32_t)i << 20)));
        f4 = fminf(fmaxf(f4, -448.0f), 448.0f), f5 = fminf(fmaxf(f5, -57344.0f), 57344.0f);
        bad4 += fp8_e4m3_from_f32(f4) != search_code(f4, FP8_E4M3);
        bad5 += fp8_e5m2_from_f32(f5) != search_code(f5, FP8_E5M2);
    }
    TEST_CHECK(bad4 == 0 && bad5 == 0, "casts vs nearest-even search: %zu e4m3, %zu e5m2 differ", bad4, bad5);
    // NaN codes: a NaN input keeps its sign, a NaN made by inf * 0 is 0xFF (x86), clamp saturates.
    TEST_CHECK(fp8_quantize(NAN, 2.0f, FP8_E4M3) == 0x7F && fp8_quantize(-NAN, 2.0f, FP8_E4M3) == 0xFF &&
                   fp8_quantize(INFINITY, 0.0f, FP8_E4M3) == 0xFF && fp8_quantize(INFINITY, 0.0f, FP8_E5M2) == 0xFF &&
                   fp8_quantize(-1e30f, 1.0f, FP8_E4M3) == 0xFE && fp8_quantize(1e30f, 1.0f, FP8_E5M2) == 0x7B &&
                   fp8_quantize(-0.0f, 3.0f, FP8_E4M3) == 0x80,
               "NaN / saturation / signed zero codes");
}

static void test_scales(void) {
    // amax 0: 448 / 1e-12 in float64, one rounding; pow2: 2^48 (log2 = 48.67).
    float s0 = fp8_scale_from_amax(0.0f, FP8_E4M3, 0);
    TEST_CHECK(s0 == (float)(448.0 / 1e-12) && isfinite(fp8_scale_inv(s0)) &&
                   fp8_scale_from_amax(0.0f, FP8_E4M3, 1) == 0x1p48f,
               "zero amax: scale %g must be finite", s0);
    TEST_CHECK(fp8_scale_from_amax(INFINITY, FP8_E4M3, 0) == 0.0f && fp8_scale_from_amax(INFINITY, FP8_E4M3, 1) == 0.0f,
               "inf amax gives scale 0 (torchao)");
    // The division is in float64 with one rounding to fp32, as amax_to_scale does it.
    uint64_t rng = 3;
    size_t bad = 0, badp = 0;
    for (int i = 0; i < 100000; i++) {
        float a = u2f(0x2C000000u + (uint32_t)(test_rand_u64(&rng) % 0x24000000u));  // 1.8e-12 .. 3e10
        float s = fp8_scale_from_amax(a, FP8_E5M2, 0);
        bad += s != (float)(57344.0 / (double)a);
        // pow2: a power of two, 2^floor(log2 s) — or the 2^k just above s when s is within a
        // rounding of log2f below it.
        float p = fp8_scale_from_amax(a, FP8_E5M2, 1);
        int e;
        float m = frexpf(p, &e);
        badp += m != 0.5f || !(p <= s || p / s < 1.0f + 1e-6f) || !(p > s / 2);
    }
    TEST_CHECK(bad == 0 && badp == 0, "scales: %zu differ from float64 division, %zu bad pow2", bad, badp);
    // A scale just below 2^k: floor(log2f(s)) is k, since log2f rounds up to k (torch does too).
    float s = u2f(f2u(0x1p20f) - 1);  // 2^20 (1 - 2^-24): log2 = 20 - 8.6e-8 -> rounds to 20.0f
    TEST_CHECK(fp8_pow2_floor(s) == 0x1p20f && fp8_pow2_floor(0x1p20f) == 0x1p20f &&
                   fp8_pow2_floor(u2f(f2u(0x1p20f) - 64)) == 0x1p19f,
               "pow2 floor near 2^20: %g", fp8_pow2_floor(s));
}

// ---- tensor / axis casts ---------------------------------------------------------------------------
static void test_cast_hand(void) {
    // Tensorwise with a NaN: torchao would give a NaN scale; ours ignores the NaN in the amax.
    float x[6] = {1.0f, -2.0f, NAN, 4.0f, -NAN, 0.5f};
    uint8_t q[6];
    float s;
    fp8_cast_cpu(q, &s, x, 2, 3, FP8_E4M3, 0, 0, 0);
    TEST_CHECK(s == 112.0f && q[2] == 0x7F && q[4] == 0xFF && q[3] == 0x7E && q[1] == fp8_e4m3_from_f32(-224.0f),
               "NaN input: scale %g (want 448/4), codes %02x %02x", s, q[2], q[4]);
    // inf: scale 0, finite elements +-0, the inf a NaN code (torchao's bits, see the fixture).
    float y[4] = {1.0f, -3.0f, INFINITY, 0.0f};
    fp8_cast_cpu(q, &s, y, 1, 4, FP8_E4M3, 0, 1, 0);
    TEST_CHECK(s == 0.0f && q[0] == 0x00 && q[1] == 0x80 && q[2] == 0xFF && q[3] == 0, "inf input");
    // Ties at scale 1 (amax 448): 1+1/16 -> 1, 1.1875 -> 1.25, 3*2^-10 -> 2^-8, 2^-10 -> 0.
    float t[6] = {448.0f, 1.0625f, 1.1875f, 3 * 0x1p-10f, 5 * 0x1p-10f, 0x1p-10f};
    fp8_cast_cpu(q, &s, t, 1, 6, FP8_E4M3, 1, 1, 0);
    TEST_CHECK(s == 1.0f && q[0] == 0x7E && q[1] == 0x38 && q[2] == 0x3A && q[3] == 0x02 && q[4] == 0x02 && q[5] == 0,
               "e4m3 ties: %02x %02x %02x %02x %02x %02x", q[0], q[1], q[2], q[3], q[4], q[5]);
    // Transposed axis cast = axis cast of the transpose; tensor transposed = transpose of bytes.
    uint64_t rng = 11;
    int R = 13, C = 29;
    float *a = rand_bf16((size_t)R * C, 3.0f, &rng), *at = transpose(a, R, C);
    uint8_t *q1 = ao_malloc((size_t)R * C), *q2 = ao_malloc((size_t)R * C);
    float s1[32], s2[32];
    for (int axis = 0; axis < 2; axis++) {
        fp8_cast_cpu(q1, s1, a, R, C, FP8_E5M2, axis, axis, 1);
        fp8_cast_cpu(q2, s2, at, C, R, FP8_E5M2, axis, axis, 0);
        TEST_CHECK(memcmp(q1, q2, (size_t)R * C) == 0 && memcmp(s1, s2, (axis ? C : 1) * sizeof(float)) == 0,
                   "transposed cast (axis %d) != cast of the transpose", axis);
    }
    // Dequantized values within half an e4m3 ulp: 2^-4 relative in the normal range, half the
    // subnormal step 2^-10 (in scaled units) below it.
    fp8_cast_cpu(q1, s1, a, R, C, FP8_E4M3, 1, 0, 0);
    float *d = ao_malloc((size_t)R * C * sizeof(float)), inv[16];
    for (int r = 0; r < R; r++) inv[r] = fp8_scale_inv(s1[r]);
    fp8_dequant_cpu(d, q1, inv, R, C, 1, FP8_E4M3);
    size_t bad = 0;
    for (int i = 0; i < R * C; i++)
        bad += fabsf(d[i] - a[i]) > fmaxf(fabsf(a[i]) * 0x1p-4f, 0x1p-10f * inv[i / C]) * 1.0001f;
    TEST_CHECK(bad == 0, "rowwise dequant error: %zu elements beyond half an ulp", bad);
    free(a), free(at), free(q1), free(q2), free(d);
}

// Blocks and MX: a tail block equals the zero-padded tensor's block (zeros change no amax).
static void test_tails(void) {
    uint64_t rng = 5;
    int R = 131, C = 200, Rp = 256, Cp = 256;
    float *x = rand_bf16((size_t)R * C, 2.0f, &rng), *xp = ao_calloc((size_t)Rp * Cp, sizeof(float));
    for (int r = 0; r < R; r++) memcpy(xp + (size_t)r * Cp, x + (size_t)r * C, C * sizeof(float));
    uint8_t *q = ao_malloc((size_t)Rp * Cp), *qp = ao_malloc((size_t)Rp * Cp), *e = ao_malloc(4096),
            *ep = ao_malloc(4096);
    float *s = ao_malloc(4096 * sizeof(float)), *sp = ao_malloc(4096 * sizeof(float));
    size_t bad = 0;
    for (int tr = 0; tr < 2; tr++) {
        int orows = tr ? C : R, ocols = tr ? R : C, porows = tr ? Cp : Rp, pocols = tr ? Rp : Cp;
        fp8_block1x128_cpu(q, s, x, R, C, tr);
        fp8_block1x128_cpu(qp, sp, xp, Rp, Cp, tr);
        for (int r = 0; r < orows; r++) {
            bad += memcmp(q + (size_t)r * ocols, qp + (size_t)r * pocols, ocols) != 0;
            for (int b = 0; b < 2; b++) bad += f2u(s[(size_t)b * orows + r]) != f2u(sp[(size_t)b * porows + r]);
        }
        fp8_block128x128_cpu(q, s, 2, x, R, C, tr);
        fp8_block128x128_cpu(qp, sp, 2, xp, Rp, Cp, tr);
        for (int r = 0; r < orows; r++) bad += memcmp(q + (size_t)r * ocols, qp + (size_t)r * pocols, ocols) != 0;
        bad += count_diff(s, sp, 4, 4);
        for (int mode = 0; mode < 2; mode++) {
            mx_quantize_cpu(q, e, x, R, C, FP8_E4M3, (MxMode)mode, tr);
            mx_quantize_cpu(qp, ep, xp, Rp, Cp, FP8_E4M3, (MxMode)mode, tr);
            int nb = (ocols + 31) / 32;
            for (int r = 0; r < orows; r++)
                bad += memcmp(q + (size_t)r * ocols, qp + (size_t)r * pocols, ocols) != 0 ||
                       memcmp(e + (size_t)r * nb, ep + (size_t)r * (pocols / 32), nb) != 0;
        }
    }
    TEST_CHECK(bad == 0, "tail blocks differ from zero padding in %zu rows/scales", bad);
    // Block dequantization within half an e4m3 ulp of the input (normal range: 2^-4 relative).
    float *d = ao_malloc((size_t)R * C * sizeof(float));
    for (int blk = 0; blk < 2; blk++) {
        if (blk) fp8_block128x128_cpu(q, s, 2, x, R, C, 0);
        else fp8_block1x128_cpu(q, s, x, R, C, 0);
        fp8_block_dequant_cpu(d, q, s, 2, R, C, blk);
        size_t nb = 0;
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                float si = blk ? s[(r / 128) * 2 + c / 128] : s[(c / 128) * R + r], a = x[(size_t)r * C + c];
                nb += fabsf(d[(size_t)r * C + c] - a) > fmaxf(fabsf(a) * 0x1p-4f, 0x1p-10f * si) * 1.0001f;
            }
        TEST_CHECK(nb == 0, "%s dequant: %zu elements beyond half an ulp", blk ? "128x128" : "1x128", nb);
    }
    free(d);
    // MX on hand blocks: zero -> e8m0 0 (both modes), NaN -> 255, inf -> 247 (FLOOR e4m3) / 254.
    float blk[32] = {0};
    MxScale f = mx_scale_from_amax(0.0f, FP8_E4M3, MX_FLOOR), c = mx_scale_from_amax(0.0f, FP8_E4M3, MX_RCEIL);
    TEST_CHECK(f.e8m0 == 0 && f.factor == 0x1p-126f && c.e8m0 == 0 && c.factor == 1.0f, "MX zero block");
    TEST_CHECK(mx_scale_from_amax(NAN, FP8_E4M3, MX_FLOOR).e8m0 == 255 &&
                   mx_scale_from_amax(NAN, FP8_E4M3, MX_RCEIL).e8m0 == 255 &&
                   mx_scale_from_amax(INFINITY, FP8_E4M3, MX_FLOOR).e8m0 == 247 &&
                   mx_scale_from_amax(INFINITY, FP8_E4M3, MX_RCEIL).e8m0 == 254,
               "MX NaN / inf blocks");
    // amax 448 * 2^3 = 3584: FLOOR 2^(11-8) -> e 130; RCEIL d = 8 -> e 130; amax 3585 -> RCEIL 131.
    TEST_CHECK(mx_scale_from_amax(3584.0f, FP8_E4M3, MX_FLOOR).e8m0 == 130 &&
                   mx_scale_from_amax(3584.0f, FP8_E4M3, MX_RCEIL).e8m0 == 130 &&
                   mx_scale_from_amax(3585.0f, FP8_E4M3, MX_RCEIL).e8m0 == 131 &&
                   mx_scale_from_amax(4095.0f, FP8_E4M3, MX_FLOOR).e8m0 == 130,
               "MX FLOOR / RCEIL exponents");
    blk[0] = 1.0f, blk[1] = NAN;
    mx_quantize_cpu(q, e, blk, 1, 32, FP8_E4M3, MX_RCEIL, 0);
    TEST_CHECK(e[0] == 255 && q[0] == 0x7F && q[1] == 0x7F && q[2] == 0x7F, "MX RCEIL NaN block codes");
    free(x), free(xp), free(q), free(qp), free(e), free(ep), free(s), free(sp);
}

static void test_recipe_table(void) {
    TEST_CHECK(
        fp8_recipe_from_name("rowwise_with_gw_hp") == FP8_RECIPE_ROWWISE_GW_HP && fp8_recipe_from_name("x") == -1,
        "recipe names");
    Fp8CastSpec a = fp8_recipe_cast(FP8_RECIPE_TENSORWISE, FP8_G_GW),
                b = fp8_recipe_cast(FP8_RECIPE_ROWWISE_GW_HP, FP8_W_GI);
    Fp8CastSpec c = fp8_recipe_cast(FP8_RECIPE_ROWWISE_GW_HP, FP8_X_GW),
                d = fp8_recipe_cast(FP8_RECIPE_BLOCKWISE, FP8_W_GI);
    TEST_CHECK(a.scaling == FP8_SCALE_TENSOR && a.dtype == FP8_E5M2 && a.transposed && !a.pow2, "tensorwise g_gw");
    TEST_CHECK(b.scaling == FP8_SCALE_TENSOR && b.dtype == FP8_E4M3 && b.transposed && b.pow2, "gw_hp w_gi");
    TEST_CHECK(c.scaling == FP8_SCALE_NONE && d.scaling == FP8_SCALE_128X128 && d.transposed,
               "gw_hp x_gw / blockwise w_gi");
    int ld;
    TEST_CHECK(fp8_scale_count(d, 300, 1000, &ld) == 4 * 8 && ld == 4, "128x128 scales of W^T [1000,300]: ld %d", ld);
    Fp8CastSpec m = fp8_recipe_cast(FP8_RECIPE_MXFP8, FP8_X_GW);
    TEST_CHECK(fp8_scale_count(m, 64, 40, &ld) == 40 * 2 && ld == 2 && m.mx_rceil, "MX scales of x^T");
}

// ---- torchao fixtures --------------------------------------------------------------------------
static const StTensor *need(const SafeTensors *st, const char *name) {
    const StTensor *t = st_find(st, name);
    TEST_CHECK(t != NULL, "fp8 fixture lacks %s", name);
    return t;
}
// Element i of an F32 fixture tensor (safetensors data need not be 4-byte aligned).
static float fix_f32(const StTensor *t, size_t i) {
    float v;
    memcpy(&v, (const char *)t->data + 4 * i, 4);
    return v;
}
static float *f32_of(const StTensor *t) {
    float *v = ao_malloc((t->numel + 1) * sizeof(float));
    CHECK(st_to_f32(t, v), "%s is not a float tensor", t->name);
    return v;
}
// Compares n bytes (or fp32 bit patterns when elem = 4) with the fixture tensor `name`.
static void cmp_fix(const SafeTensors *st, const char *name, const void *got, size_t n, size_t elem) {
    const StTensor *t = need(st, name);
    if (!t) return;
    size_t bad = t->numel != n ? n : count_diff(got, t->data, n, elem), first = n;
    for (size_t i = 0; i < n && t->numel == n; i++)
        if (memcmp((const char *)got + i * elem, (const char *)t->data + i * elem, elem)) {
            first = i;
            break;
        }
    TEST_CHECK(bad == 0, "%s: %zu of %zu differ from torchao (numel %zu, first at %zu)", name, bad, n, t->numel, first);
    for (size_t i = first, shown = 0; bad && t->numel == n && i < n && shown < 4; i++) {
        uint32_t a = 0, b = 0;
        memcpy(&a, (const char *)got + i * elem, elem), memcpy(&b, (const char *)t->data + i * elem, elem);
        if (a != b) printf("    [%zu] ours %08x torchao %08x\n", i, a, b), shown++;
    }
}

static void fixture_casts(const SafeTensors *st) {
    const uint32_t lows[4] = {0, 1, 0x8000, 0xFFFF};
    for (int dt = 0; dt < 2; dt++) {
        uint32_t himax = dt == FP8_E4M3 ? 0x4400 : 0x4780;
        size_t n = (size_t)(himax + 1) * 4;
        float *x = ao_malloc(n * sizeof(float));
        uint8_t *q = ao_malloc(n);
        for (uint32_t h = 0; h <= himax; h++)
            for (int l = 0; l < 4; l++) x[h * 4 + l] = u2f((h << 16) | lows[l]);
        fp8_quantize_cpu(q, x, n, 1.0f, (Fp8Dtype)dt);  // x * 1 is exact: to_fp8_saturated(x)
        cmp_fix(st, dt == FP8_E4M3 ? "cast.e4m3" : "cast.e5m2", q, n, 1);
        free(x), free(q);
    }
}

static void fixture_recipes(const SafeTensors *st) {
    const StTensor *tx = need(st, "lin.x"), *tw = need(st, "lin.w"), *tg = need(st, "lin.g");
    if (!tx || !tw || !tg) return;
    int N = (int)tx->shape[0], K = (int)tx->shape[1], M = (int)tw->shape[0];
    float *x = f32_of(tx), *w = f32_of(tw), *g = f32_of(tg);
    uint8_t *q = ao_malloc((size_t)(N > M ? N : M) * (K > M ? K : M));
    float *s = ao_malloc(1024 * sizeof(float));
    for (int r = FP8_RECIPE_TENSORWISE; r <= FP8_RECIPE_ROWWISE_GW_HP; r++)
        for (int op = 0; op < FP8_NOPERANDS; op++) {
            Fp8CastSpec sp = fp8_recipe_cast((Fp8Recipe)r, (Fp8Operand)op);
            char name[128];
            snprintf(name, sizeof name, "%s.%s.data", fp8_recipe_name((Fp8Recipe)r), fp8_operand_name((Fp8Operand)op));
            if (sp.scaling == FP8_SCALE_NONE) {
                TEST_CHECK(st_find(st, name) == NULL, "%s: torchao casts an operand our table keeps in bf16", name);
                continue;
            }
            const float *src = (op == FP8_X_FWD || op == FP8_X_GW) ? x : (op == FP8_W_FWD || op == FP8_W_GI) ? w : g;
            int rows = src == x ? N : src == w ? M : N, cols = src == x ? K : src == w ? K : M;
            fp8_cast_cpu(q, s, src, rows, cols, sp.dtype, sp.scaling == FP8_SCALE_AXIS, sp.pow2, sp.transposed);
            cmp_fix(st, name, q, (size_t)rows * cols, 1);
            snprintf(name, sizeof name, "%s.%s.scale", fp8_recipe_name((Fp8Recipe)r), fp8_operand_name((Fp8Operand)op));
            cmp_fix(st, name, s, sp.scaling == FP8_SCALE_AXIS ? (size_t)(sp.transposed ? cols : rows) : 1, 4);
        }
    // An inf input (tensorwise) and fp32 rows whose scale sits just below 2^k (rowwise pow2).
    const char *extra[2] = {"tw_inf", "pow2"};
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s.x", extra[i]);
        const StTensor *te = need(st, name);
        if (!te) continue;
        float *e = f32_of(te);
        int R = (int)te->shape[0], C = (int)te->shape[1];
        fp8_cast_cpu(q, s, e, R, C, FP8_E4M3, i == 1, i == 1, 0);
        snprintf(name, sizeof name, "%s.data", extra[i]);
        cmp_fix(st, name, q, (size_t)R * C, 1);
        snprintf(name, sizeof name, "%s.scale", extra[i]);
        cmp_fix(st, name, s, i == 1 ? (size_t)R : 1, 4);
        free(e);
    }
    free(x), free(w), free(g), free(q), free(s);
}

static void fixture_blocks(const SafeTensors *st) {
    const char *cases[3] = {"blk.lhs", "blk.rhs", "blk.w"};
    for (int i = 0; i < 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s.x", cases[i]);
        const StTensor *t = need(st, name);
        if (!t) continue;
        int R = (int)t->shape[0], C = (int)t->shape[1];
        float *x = f32_of(t), *si = ao_malloc(((size_t)R * C / 128 + 4) * sizeof(float));
        uint8_t *q = ao_malloc((size_t)R * C);
        size_t ns;
        if (i == 2) {
            fp8_block128x128_cpu(q, si, C / 128, x, R, C, 0);
            ns = (size_t)(R / 128) * (C / 128);
        } else {
            fp8_block1x128_cpu(q, si, x, R, C, i == 1);
            ns = (size_t)R * C / 128;
        }
        snprintf(name, sizeof name, "%s.data", cases[i]);
        cmp_fix(st, name, q, (size_t)R * C, 1);
        snprintf(name, sizeof name, "%s.sinv", cases[i]);
        if (i == 0) {  // torchao's [rows, blocks] vs our [blocks][rows]
            float *tr = ao_malloc(ns * sizeof(float));
            for (int r = 0; r < R; r++)
                for (int b = 0; b < C / 128; b++) tr[(size_t)r * (C / 128) + b] = si[(size_t)b * R + r];
            cmp_fix(st, name, tr, ns, 4);
            free(tr);
        } else if (i == 1) {
            // torch_blockwise_scale_act_quant_rhs clamps amax to EPS in bf16 (lhs and amax_to_scale
            // do it in float64): for blocks with amax < 1e-12 its scale is 448 / bf16(1e-12).
            // Ours follows the float64 rule everywhere; that one value is expected to differ.
            const StTensor *ts = need(st, name);
            if (!ts) continue;
            float bf_eps_sinv = fp8_scale_inv((float)(448.0 / (double)quant_bf16_round(1e-12f)));
            size_t bad = 0, eps_blocks = 0;
            for (size_t k = 0; k < ns; k++) {
                float ref = fix_f32(ts, k);
                if (si[k] == fp8_scale_inv(fp8_scale_from_amax(0.0f, FP8_E4M3, 0)) && ref == bf_eps_sinv)
                    eps_blocks++;
                else
                    bad += f2u(si[k]) != f2u(ref);
            }
            TEST_CHECK(bad == 0 && eps_blocks == 1, "blk.rhs.sinv: %zu differ, %zu EPS blocks (want 1)", bad,
                       eps_blocks);
        } else {
            cmp_fix(st, name, si, ns, 4);
        }
        free(x), free(si), free(q);
    }
}

static void fixture_mx(const SafeTensors *st) {
    const StTensor *t = need(st, "mx.x");
    if (!t) return;
    int R = (int)t->shape[0], C = (int)t->shape[1];
    float *x = f32_of(t), *dq = ao_malloc((size_t)R * C * sizeof(float));
    uint8_t *q = ao_malloc((size_t)R * C), *e = ao_malloc((size_t)R * C / 32);
    for (int dt = 0; dt < 2; dt++)
        for (int mode = 0; mode < 2; mode++) {
            char name[64], base[32];
            snprintf(base, sizeof base, "mx.%s.%s", dt ? "e5m2" : "e4m3", mode ? "rceil" : "floor");
            mx_quantize_cpu(q, e, x, R, C, (Fp8Dtype)dt, (MxMode)mode, 0);
            snprintf(name, sizeof name, "%s.e8m0", base);
            cmp_fix(st, name, e, (size_t)R * C / 32, 1);
            snprintf(name, sizeof name, "%s.data", base);
            cmp_fix(st, name, q, (size_t)R * C, 1);
            mx_dequantize_cpu(dq, q, e, R, C, (Fp8Dtype)dt);
            snprintf(name, sizeof name, "%s.dq", base);
            const StTensor *td = need(st, name);
            if (!td) continue;
            size_t bad = 0;  // NaN payloads are not compared: any NaN matches any NaN
            for (size_t i = 0; i < (size_t)R * C; i++) {
                float ref = fix_f32(td, i);
                bad += !(isnan(ref) && isnan(dq[i])) && f2u(ref) != f2u(dq[i]);
            }
            TEST_CHECK(bad == 0, "%s: %zu dequantized values differ from torchao's to_dtype", name, bad);
        }
    free(x), free(dq), free(q), free(e);
    // fp32 blocks with amax / 448 a few ulps above 2^k (RCEIL's log2 rounding).
    if (!(t = need(st, "mx.f32.x"))) return;
    R = (int)t->shape[0], C = (int)t->shape[1];
    x = f32_of(t), q = ao_malloc((size_t)R * C), e = ao_malloc((size_t)R * C / 32);
    mx_quantize_cpu(q, e, x, R, C, FP8_E4M3, MX_RCEIL, 0);
    cmp_fix(st, "mx.f32.e8m0", e, (size_t)R * C / 32, 1);
    cmp_fix(st, "mx.f32.data", q, (size_t)R * C, 1);
    free(x), free(q), free(e);
}

// ---- MX for training: bf16 dequantization, cuBLASLt's scale layout ----------------------------
static void test_mx_dequant_bf16(void) {
    // Every code x every exponent x both dtypes: the shared element function = RNE of the exact fp32.
    size_t bad = 0, inexact_small = 0;
    for (int dt = 0; dt < 2; dt++)
        for (int e = 0; e < 256; e++)
            for (int c = 0; c < 256; c++) {
                const float f = fp8_to_f32((uint8_t)c, (Fp8Dtype)dt) * mx_e8m0_to_f32((uint8_t)e);
                const uint16_t got = mx_dequant_bf16_bits((uint8_t)c, (uint8_t)e, (Fp8Dtype)dt);
                bad += isnan(f) ? got != (0x7FC0 | ((c & 0x80) << 8)) : got != f32_to_bf16(f);
                // exact unless below bf16's subnormal grid (e <= 2 for e4m3 subnormal codes) or NaN / inf
                if (isfinite(f) && bf16_to_f32(got) != f) inexact_small += e <= 9;
            }
    TEST_CHECK(bad == 0, "mx_dequant_bf16_bits differs from f32_to_bf16 of the fp32 dequantization in %zu cases", bad);
    TEST_CHECK(inexact_small > 0, "no inexact bf16 dequantization at tiny exponents: the rounding case is not exercised");
    // RCEIL casts of bf16 tensors dequantize exactly to bf16 (mx.h); FLOOR too except e8m0 = 0 blocks.
    // Random bf16 in 32x32 tiles of one magnitude each (so that blocks along rows and along columns
    // both see every magnitude), from bf16's subnormals (2^-133) to its largest binade.
    static const int EX[16] = {-133, -132, -130, -128, -126, -122, -119, -118, -100, -60, -20, 0, 20, 60, 100, 127};
    uint64_t rng = 0x3C01ull;
    const int R = 64, C = 256;
    float *x = ao_malloc((size_t)R * C * sizeof(float)), *dq = ao_malloc((size_t)R * C * sizeof(float));
    uint8_t *q = ao_malloc((size_t)R * C), *e = ao_malloc((size_t)R * C / 32);
    uint16_t *b = ao_malloc((size_t)R * C * sizeof(uint16_t));
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            x[(size_t)r * C + c] = quant_bf16_round(ldexpf(test_rand_uniform(&rng), EX[(r / 32) * 8 + c / 32]));
    x[5] = 0.0f, x[7] = -0.0f, x[(size_t)(R - 1) * C] = u2f(0x7F7F0000u);  // bf16's largest finite value
    for (int mode = 0; mode < 2; mode++)
        for (int tr = 0; tr < 2; tr++) {
            const int orows = tr ? C : R, ocols = tr ? R : C;
            mx_quantize_cpu(q, e, x, R, C, FP8_E4M3, (MxMode)mode, tr);
            mx_dequantize_cpu(dq, q, e, orows, ocols, FP8_E4M3);
            mx_dequantize_bf16_cpu(b, q, e, orows, ocols, FP8_E4M3);
            size_t inexact = 0, inexact_e0 = 0, nonfinite = 0;
            for (size_t i = 0; i < (size_t)R * C; i++) {
                if (!isfinite(dq[i])) {
                    nonfinite++;
                    continue;
                }
                const int miss = bf16_to_f32(b[i]) != dq[i];
                inexact += miss;
                inexact_e0 += miss && e[(i / ocols) * ((ocols + 31) / 32) + (i % ocols) / 32] == 0;
            }
            if (mode == MX_RCEIL)
                TEST_CHECK(inexact == 0, "RCEIL tr=%d: %zu dequantized values are not bf16-exact", tr, inexact);
            else
                TEST_CHECK(inexact == inexact_e0 && inexact_e0 > 0, "FLOOR tr=%d: %zu inexact, %zu of them in e8m0 = 0 "
                           "blocks (want all of them there, and some)", tr, inexact, inexact_e0);
            printf("  mx %s tr=%d: bf16 dequantization inexact in %zu of %d values (%zu non-finite: inf past 2^128 "
                   "in fp32 too)\n", mode ? "rceil" : "floor", tr, inexact, R * C, nonfinite);
        }
    free(x), free(dq), free(q), free(e), free(b);
}

// torchao mx_formats/utils.py to_blocked, as its tensor operations: pad to [nrb * 128][ncb * 4],
// view (nrb, 128, ncb, 4).permute(0, 2, 1, 3) -> [blk = rb * ncb + cb][128][4], reshape (-1, 4, 32, 4)
// -> [blk][j][i][c] with row j * 32 + i, transpose(1, 2) -> [blk][i][j][c], flatten.
static void to_blocked_ref(uint8_t *out, const uint8_t *e8m0, int rows, int nkb) {
    const int nrb = (rows + 127) / 128, ncb = (nkb + 3) / 4;
    size_t f = 0;
    for (int blk = 0; blk < nrb * ncb; blk++)
        for (int i = 0; i < 32; i++)
            for (int j = 0; j < 4; j++)
                for (int c = 0; c < 4; c++, f++) {
                    const int r = (blk / ncb) * 128 + j * 32 + i, k = (blk % ncb) * 4 + c;
                    out[f] = r < rows && k < nkb ? e8m0[(size_t)r * nkb + k] : 0;
                }
}

static void test_mx_swizzle(void) {
    const int shapes[][2] = {{1, 1}, {37, 3}, {128, 4}, {130, 6}, {256, 8}, {300, 13}, {8192, 16}, {96, 2}};
    uint64_t rng = 0x5A1Eull;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], nkb = shapes[s][1];
        const size_t n = mx_swizzled_bytes(rows, nkb);
        TEST_CHECK(n == (size_t)((rows + 127) / 128 * 128) * (size_t)((nkb + 3) / 4 * 4), "mx_swizzled_bytes(%d, %d) = %zu",
                   rows, nkb, n);
        uint8_t *e = ao_malloc((size_t)rows * nkb), *got = ao_malloc(n), *want = ao_malloc(n);
        for (size_t i = 0; i < (size_t)rows * nkb; i++) e[i] = (uint8_t)(1 + test_rand_u64(&rng) % 254);  // never 0
        mx_swizzle_cpu(got, e, rows, nkb);
        to_blocked_ref(want, e, rows, nkb);
        TEST_CHECK(memcmp(got, want, n) == 0, "mx_swizzle_cpu %dx%d differs from to_blocked in %zu of %zu bytes", rows,
                   nkb, count_diff(got, want, n, 1), n);
        free(e), free(got), free(want);
    }
    // Hand cases: (row 33, block 1) of a 4-block operand sits in tile 0 at 1 * 16 + 1 * 4 + 1; (row 130,
    // block 5) of a 6-block one in tile (1, 1) = 3: 3 * 512 + 2 * 16 + 0 * 4 + 1.
    TEST_CHECK(mx_swizzled_index(33, 1, 4) == 21 && mx_swizzled_index(130, 5, 6) == 1569 &&
                   mx_swizzled_index(0, 0, 1) == 0 && mx_swizzled_index(127, 3, 4) == 31 * 16 + 3 * 4 + 3,
               "mx_swizzled_index hand cases: %zu %zu %zu %zu", mx_swizzled_index(33, 1, 4),
               mx_swizzled_index(130, 5, 6), mx_swizzled_index(0, 0, 1), mx_swizzled_index(127, 3, 4));
}

static void test_torchao_fixture(void) {
    char *path = path_join(test_dir(), "fixtures/fp8/torchao.safetensors");
    if (!file_exists(path)) {
        test_skip("test/fixtures/fp8/torchao.safetensors absent: run test/ref/fp8_ref.py where torchao is installed");
        free(path);
        return;
    }
    SafeTensors st;
    char err[512];
    CHECK(st_open(&st, path, err, sizeof err), "%s", err);
    printf("fixture: torch %s, torchao %s\n", st_meta(&st, "torch") ? st_meta(&st, "torch") : "?",
           st_meta(&st, "torchao") ? st_meta(&st, "torchao") : "?");
    fixture_casts(&st);
    fixture_recipes(&st);
    fixture_blocks(&st);
    fixture_mx(&st);
    st_close(&st);
    free(path);
}

int main(void) {
    test_scalar();
    test_scales();
    test_cast_hand();
    test_tails();
    test_recipe_table();
    test_mx_dequant_bf16();
    test_mx_swizzle();
    test_torchao_fixture();
    return test_summary();
}
