// Quantization formats against an independent double-precision model of torchao's
// formulas (every torch op emulated as "compute exactly, round to the tensor's dtype"),
// hand-computed cases, error bounds, refused tails, all-zero groups, the float8 cast over
// every code, bit-identical results from every SIMD variant, and — when test/ref/
// quant_ref.py has written test/fixtures/quant/torchao.safetensors on a machine with
// torchao — torchao's own integers, scales, zero points (bit-exact) and layer outputs.
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../model/safetensors.h"
#include "../quant/quant.h"
#include "test.h"

// ---- independent reference arithmetic --------------------------------------------------------
// fp32 and bf16 rounding of a double by hand (round half to even on the kept bits).
static double round_bits(double x, int mant_bits) {
    if (x == 0 || !isfinite(x)) return x;
    int e;
    double m = frexp(fabs(x), &e);  // |x| = m * 2^e, m in [0.5, 1)
    if (e - 1 < -126) mant_bits -= (-126 - (e - 1));  // subnormal: fewer bits
    double scaled = ldexp(m, mant_bits + 1);
    double r = nearbyint(scaled);  // default rounding mode: half to even
    return copysign(ldexp(r, e - mant_bits - 1), x);
}
static float rf(double x) { return (float)round_bits(x, 23); }
static float rb(double x) { return (float)round_bits(x, 7); }

// nearest e4m3fn value by search over every finite code (ties to the even code)
static uint8_t ref_e4m3(float f) {
    int best = -1;
    double bd = INFINITY;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7F) == 0x7F) continue;
        double v = quant_e4m3_to_f32((uint8_t)c);
        if (v == 0 && (c & 0x80) != (signbit(f) ? 0x80 : 0)) continue;
        if (fabs(f) > 464.0) return (uint8_t)(0x7F | (signbit(f) ? 0x80 : 0));  // rounds past 448: NaN in torch
        double d = fabs(v - (double)f);
        if (d < bd || (d == bd && !(c & 1) && (best & 1))) bd = d, best = c;
    }
    return (uint8_t)best;
}

static void test_e4m3(void) {
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7F) == 0x7F) continue;
        float v = quant_e4m3_to_f32((uint8_t)c);
        if (quant_f32_to_e4m3(v) != c) bad++;
    }
    TEST_CHECK(bad == 0, "e4m3: %d codes do not survive decode -> encode", bad);
    TEST_CHECK(quant_e4m3_to_f32(0x7E) == 448.0f && quant_e4m3_to_f32(0x01) == 0x1p-9f, "e4m3: max / min subnormal");
    TEST_CHECK(quant_f32_to_e4m3(464.0f) == 0x7E, "e4m3: 464 ties to even (448)");
    TEST_CHECK(quant_f32_to_e4m3(480.0f) == 0x7F && quant_f32_to_e4m3(-1e9f) == 0xFF, "e4m3: overflow is NaN as in torch");
    TEST_CHECK(quant_f32_to_e4m3(0x1p-10f) == 0x00 && quant_f32_to_e4m3(0x1.8p-10f) == 0x01, "e4m3: subnormal ties");
    uint64_t st = 7;
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        float f = ldexpf(test_rand_uniform(&st), (int)(test_rand_u64(&st) % 24) - 14);
        if (quant_f32_to_e4m3(f) != ref_e4m3(f)) {
            if (bad++ < 3) printf("  e4m3(%a): got %02x ref %02x\n", f, quant_f32_to_e4m3(f), ref_e4m3(f));
        }
    }
    TEST_CHECK(bad == 0, "e4m3: %d of 200000 random values round differently from the nearest-even search", bad);
    bad = 0;
    for (int i = 0; i < 100000; i++) {
        float f = ldexpf(test_rand_uniform(&st), (int)(test_rand_u64(&st) % 40) - 20);
        if (quant_bf16_round(f) != rb(f)) bad++;
    }
    TEST_CHECK(bad == 0, "bf16 rounding: %d mismatches", bad);
}

// ---- reference quantizers, op by op ---------------------------------------------------------------
static void ref_int8(const float *w, int M, int K, int8_t *q, float *s) {
    for (int r = 0; r < M; r++) {
        double mn = 0, mx = 0;
        for (int k = 0; k < K; k++) mn = fmin(mn, w[r * K + k]), mx = fmax(mx, w[r * K + k]);
        float sc = rf(fmax(-mn, mx) / 127.5);
        if (sc < FLT_EPSILON) sc = FLT_EPSILON;
        float inv = rf(1.0 / sc);
        for (int k = 0; k < K; k++) {
            double v = nearbyint(rf((double)w[r * K + k] * inv));
            q[r * K + k] = (int8_t)fmax(-128, fmin(127, v));
        }
        s[r] = sc;
    }
}

static void ref_int4(const float *w, int M, int K, int G, uint8_t *q, float *s, float *z) {
    for (int r = 0; r < M; r++)
        for (int g = 0; g < K / G; g++) {
            const float *x = w + r * K + g * G;
            double mn = rb(x[0]), mx = rb(x[0]);
            for (int i = 0; i < G; i++) mn = fmin(mn, rb(x[i])), mx = fmax(mx, rb(x[i]));
            float sc = rb(rb(mx - mn) / 15.0);
            if (sc < 0x1p-126) sc = 0x1p-126f;  // torchao: the bf16 smallest normal
            float zp = rb(mn + rb(sc * 8.0));
            float lo = rb(zp - rb(sc * 8.0));
            for (int i = 0; i < G; i++) {
                double v = nearbyint(rb(rb(rb(x[i]) - (double)lo) / sc));
                q[r * K + g * G + i] = (uint8_t)fmax(0, fmin(15, v));
            }
            s[r * (K / G) + g] = sc;
            z[r * (K / G) + g] = zp;
        }
}

static void ref_8da4w(const float *w, int M, int K, int G, int8_t *q, float *s) {
    for (int r = 0; r < M; r++)
        for (int g = 0; g < K / G; g++) {
            const float *x = w + r * K + g * G;
            double mn = 0, mx = 0;
            for (int i = 0; i < G; i++) mn = fmin(mn, x[i]), mx = fmax(mx, x[i]);
            float sc = rf(fmax(-mn, mx) / 7.5);
            if (sc < FLT_EPSILON) sc = FLT_EPSILON;
            float inv = rf(1.0 / sc);
            for (int i = 0; i < G; i++) q[r * K + g * G + i] = (int8_t)fmax(-8, fmin(7, nearbyint(rf(x[i] * (double)inv))));
            s[r * (K / G) + g] = sc;
        }
}

static void ref_fp8(const float *w, int M, int K, int bf, uint8_t *q, float *s) {
    for (int r = 0; r < M; r++) {
        double amax = 0;
        for (int k = 0; k < K; k++) amax = fmax(amax, fabs(bf ? rb(w[r * K + k]) : w[r * K + k]));
        float sc = bf ? rb(amax / 448.0) : rf(amax / 448.0);
        for (int k = 0; k < K; k++) {
            float v = sc == 0 ? 0 : rf((bf ? rb(w[r * K + k]) : w[r * K + k]) / (double)sc);
            q[r * K + k] = ref_e4m3(fmaxf(-448.0f, fminf(448.0f, v)));
        }
        s[r] = sc;
    }
}

static int nib_at(const QTensor *t, size_t i) { return (t->q[i / 2] >> ((i & 1) * 4)) & 15; }

static float *rand_matrix(int M, int K, uint64_t seed, float scale) {
    float *w = ao_malloc((size_t)M * K * sizeof(float));
    uint64_t st = seed;
    for (int i = 0; i < M * K; i++) w[i] = test_rand_uniform(&st) * scale * (1.0f + (float)(i % 7));
    return w;
}

static void test_formats_vs_ref(int M, int K, int G, uint64_t seed) {
    float *w = rand_matrix(M, K, seed, 0.05f);
    // an all-zero row/group and a constant group exercise the eps clamps
    for (int k = 0; k < K; k++) w[k] = 0.0f;
    if (M > 1)
        for (int k = 0; k < G && k < K; k++) w[K + k] = 0.25f;
    size_t n = (size_t)M * K;
    int8_t *q8 = ao_malloc(n);
    uint8_t *qu = ao_malloc(n);
    float *s = ao_malloc(n * sizeof(float)), *z = ao_malloc(n * sizeof(float)), *dq = ao_malloc(n * sizeof(float));
    QTensor t;
    int bad;

    quant_quantize(&t, QUANT_INT8, w, M, K, 0);
    ref_int8(w, M, K, q8, s);
    bad = memcmp(t.q, q8, n) != 0 || memcmp(t.scale, s, (size_t)M * sizeof(float)) != 0;
    TEST_CHECK(!bad, "int8 %dx%d: ints/scales differ from the reference", M, K);
    quant_dequantize(&t, dq);
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(dq[i] - w[i]) / t.scale[i / K]);
    TEST_CHECK(worst <= 0.5 + 1e-4, "int8: |w - dq| = %.3f scales > 0.5", worst);
    for (int k = 0; k < K; k++) bad |= dq[k] != 0.0f;
    TEST_CHECK(!bad, "int8: an all-zero row does not dequantize to zero");
    quant_free(&t);

    if (K % G == 0) {
        quant_quantize(&t, QUANT_INT4, w, M, K, G);
        ref_int4(w, M, K, G, qu, s, z);
        bad = 0;
        for (size_t i = 0; i < n; i++) bad += nib_at(&t, i) != qu[i];
        size_t ns = n / G;
        bad += memcmp(t.scale, s, ns * sizeof(float)) != 0;
        bad += memcmp(t.zero, z, ns * sizeof(float)) != 0;
        TEST_CHECK(bad == 0, "int4 g%d %dx%d: %d mismatches with the reference", G, M, K, bad);
        quant_dequantize(&t, dq);
        worst = 0;
        for (size_t i = 0; i < n; i++) {
            // a constant group gets the smallest-normal scale: exact up to that scale, as in torchao
            size_t g = i / G;
            double e = fabs(dq[i] - rb(w[i])) / t.scale[g];
            if (t.scale[g] == 0x1p-126f) e = fabs(dq[i] - rb(w[i])) < 1e-4 ? 0 : 99;
            worst = fmax(worst, e);
        }
        TEST_CHECK(worst <= 0.6, "int4 g%d: |w - dq| = %.3f scales", G, worst);
        bad = 0;
        for (int k = 0; k < K; k++) bad |= dq[k] != 0.0f || isnan(dq[k]);
        TEST_CHECK(!bad, "int4: an all-zero group does not dequantize to exactly zero");
        quant_free(&t);

        quant_quantize(&t, QUANT_8DA4W, w, M, K, G);
        ref_8da4w(w, M, K, G, q8, s);
        bad = 0;
        for (size_t i = 0; i < n; i++) bad += nib_at(&t, i) - 8 != q8[i];
        bad += memcmp(t.scale, s, ns * sizeof(float)) != 0;
        TEST_CHECK(bad == 0, "8da4w g%d %dx%d: %d mismatches with the reference", G, M, K, bad);
        quant_dequantize(&t, dq);
        bad = 0;
        for (int k = 0; k < K; k++) bad |= dq[k] != 0.0f;
        TEST_CHECK(!bad, "8da4w: an all-zero group does not dequantize to zero");
        quant_free(&t);
    }

    quant_quantize(&t, QUANT_FP8, w, M, K, 0);
    ref_fp8(w, M, K, 1, qu, s);
    bad = memcmp(t.q, qu, n) != 0 || memcmp(t.scale, s, (size_t)M * sizeof(float)) != 0;
    TEST_CHECK(!bad, "fp8 %dx%d: codes/scales differ from the reference", M, K);
    quant_dequantize(&t, dq);
    bad = 0;
    for (int k = 0; k < K; k++) bad |= dq[k] != 0.0f || isnan(dq[k]);
    TEST_CHECK(!bad, "fp8: an all-zero row does not dequantize to zero");
    worst = 0;
    // e4m3 keeps 3 mantissa bits: relative error <= 2^-4, or half a subnormal step (2^-10 scales)
    for (size_t i = K; i < n; i++) {
        double e = fabs(dq[i] - rb(w[i])), lim = fmax(fabs(rb(w[i])) / 16, t.scale[i / K] * 0x1p-10);
        worst = fmax(worst, e / lim);
    }
    TEST_CHECK(worst <= 1.0 + 1e-6, "fp8: error %.3f of the bound", worst);
    quant_free(&t);
    free(w), free(q8), free(qu), free(s), free(z), free(dq);
}

// Hand-computed int4 group: w = 0..31 (exact in bf16). scale = bf16(31/15) = 2.0625,
// zero = 0 + 2.0625*8 = 16.5, q_i = round(bf16(i / 2.0625)): 3 -> bf16(1.4545) = 1.453125 -> 1,
// 4 -> bf16(1.9394) = 1.9375 -> 2, 31 -> 15.03 -> 15.
static void test_hand_int4(void) {
    float w[32];
    for (int i = 0; i < 32; i++) w[i] = (float)i;
    QTensor t;
    quant_quantize(&t, QUANT_INT4, w, 1, 32, 32);
    TEST_CHECK(t.scale[0] == 2.0625f && t.zero[0] == 16.5f, "int4 hand case: scale %g zero %g (want 2.0625, 16.5)",
               t.scale[0], t.zero[0]);
    TEST_CHECK(nib_at(&t, 0) == 0 && nib_at(&t, 3) == 1 && nib_at(&t, 4) == 2 && nib_at(&t, 31) == 15,
               "int4 hand case: q = %d %d %d %d", nib_at(&t, 0), nib_at(&t, 3), nib_at(&t, 4), nib_at(&t, 31));
    quant_free(&t);
    // int8 hand case: row [1, -2, 0.5]: scale = fp32(2/127.5) = 0.015686275, and torchao multiplies
    // by fp32(1/scale) = 63.749996 (not 63.75), so -2 -> -127.49999 -> -127 (not -128); 1 -> 64; 0.5 -> 32
    float w8[3] = {1.0f, -2.0f, 0.5f};
    quant_quantize(&t, QUANT_INT8, w8, 1, 3, 0);
    const int8_t *q = (const int8_t *)t.q;
    TEST_CHECK(q[0] == 64 && q[1] == -127 && q[2] == 32, "int8 hand case: q = %d %d %d (want 64 -127 32)", q[0], q[1],
               q[2]);
    quant_free(&t);
    // 8da4w activation hand case: x = [-1, 0, 3]: scale = 4/255, zp = -128 - round(-63.75) = -64,
    // q = round(x * 63.75) + zp = -64-64, -64, 191-64 -> clamp: -128, -64, 127
    float x[3] = {-1.0f, 0.0f, 3.0f};
    int8_t xq[3];
    int32_t zp;
    float s = quant_act_int8_asym(xq, &zp, x, 3);
    TEST_CHECK(s == 4.0f / 255.0f && zp == -64 && xq[0] == -128 && xq[1] == -64 && xq[2] == 127,
               "int8 activation hand case: s %g zp %d q %d %d %d", s, zp, xq[0], xq[1], xq[2]);
}

typedef struct {
    QuantMode m;
    int K, G;
} TailArg;
static void quantize_tail(void *p) {
    TailArg *a = p;
    static float w[4 * 512];  // static: the expected failure longjmps past any free
    QTensor t;
    quant_quantize(&t, a->m, w, 4, a->K, a->G);
    quant_free(&t);
}

static void test_tails(void) {
    TailArg a = {QUANT_INT4, 96, 64};
    TEST_EXPECT_FAIL("int4 K=96 g64", quantize_tail, &a, "not a multiple of the group size 64");
    a.m = QUANT_8DA4W;
    a.K = 48;
    a.G = 32;
    TEST_EXPECT_FAIL("8da4w K=48 g32", quantize_tail, &a, "not a multiple of the group size 32");
    a.G = 48;
    TEST_EXPECT_FAIL("group 48", quantize_tail, &a, "not one of 32, 64, 128, 256");
    char why[128];
    TEST_CHECK(!quant_compatible(QUANT_FP8, 24, 32, 0, why, sizeof why) && strstr(why, "16"), "fp8 needs x16 shapes");
    TEST_CHECK(quant_compatible(QUANT_INT8, 3, 5, 0, why, sizeof why), "int8 takes any shape");
}

// Layer outputs: every ISA gives the same bits, and the result is close to a double-precision
// linear over the dequantized weights (and dequantized activations for 8da4w / fp8).
static void test_linear(QuantMode m, int N, int M, int K, int G, uint64_t seed) {
    float *w = rand_matrix(M, K, seed, 0.1f), *x = rand_matrix(N, K, seed + 1, 1.0f);
    float *bias = rand_matrix(1, M, seed + 2, 0.5f);
    QTensor t;
    quant_quantize(&t, m, w, M, K, G);
    float *dq = ao_malloc((size_t)M * K * sizeof(float));
    quant_dequantize(&t, dq);
    float *ref = ao_malloc((size_t)N * M * sizeof(float)), *xd = ao_malloc((size_t)K * sizeof(float));
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * K;
        if (m == QUANT_8DA4W) {
            int8_t *q = ao_malloc((size_t)K);
            int32_t zp;
            float s = quant_act_int8_asym(q, &zp, xn, K);
            for (int k = 0; k < K; k++) xd[k] = (float)(q[k] - zp) * s;
            free(q);
        } else if (m == QUANT_FP8) {
            uint8_t *q = ao_malloc((size_t)K);
            float s = quant_act_fp8_row(q, xn, K);
            for (int k = 0; k < K; k++) xd[k] = quant_e4m3_to_f32(q[k]) * s;
            free(q);
        } else memcpy(xd, xn, (size_t)K * sizeof(float));
        for (int j = 0; j < M; j++) {
            double acc = bias[j];
            for (int k = 0; k < K; k++) acc += (double)xd[k] * dq[(size_t)j * K + k];
            ref[(size_t)n * M + j] = (float)acc;
        }
    }
    float *out[QISA_NISA];
    QuantIsa best = quant_isa_best();
    for (int isa = 0; isa <= (int)best; isa++) {
        quant_set_isa((QuantIsa)isa);
        out[isa] = ao_malloc((size_t)N * M * sizeof(float));
        quant_linear_forward(out[isa], x, &t, bias, N);
        char what[128];
        snprintf(what, sizeof what, "%s g%d N%d M%d K%d [%s] vs double reference", quant_mode_name(m), G, N, M, K,
                 quant_isa_name((QuantIsa)isa));
        TEST_CLOSE(what, out[isa], ref, (size_t)N * M, 2e-5);
        if (isa > 0) {
            size_t diff = 0;
            for (size_t i = 0; i < (size_t)N * M; i++) diff += memcmp(&out[isa][i], &out[0][i], 4) != 0;
            TEST_CHECK(diff == 0, "%s: %s differs from the C kernel in %zu of %d outputs", what,
                       quant_isa_name((QuantIsa)isa), diff, N * M);
        }
    }
    quant_set_isa(best);
    for (int isa = 0; isa <= (int)best; isa++) free(out[isa]);
    quant_free(&t);
    free(w), free(x), free(bias), free(dq), free(ref), free(xd);
}

// 16-bit weight storage (-q none on a bf16 / f16 file): wrapping the bits must give the fp32
// copy's outputs bit for bit, on every ISA. The rows hold every finite bf16 or f16 code once
// (subnormals, both zeros, the extremes), in a shuffled order, then random codes with tails.
static void test_linear_w16(QWeightDtype dt, int N, int M, int K, uint64_t seed) {
    const size_t n = (size_t)M * K;
    uint16_t *h = ao_malloc(n * sizeof *h);
    float *w = ao_malloc(n * sizeof *w);
    uint64_t st = seed;
    uint32_t code = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t c;
        do {  // all codes in order first (stride coprime to 2^16 spreads them), then random ones
            c = code < 65536 ? (uint16_t)(code++ * 40503u) : (uint16_t)test_rand_u64(&st);
        } while (dt == QW_BF16 ? (c & 0x7F80) == 0x7F80 : (c & 0x7C00) == 0x7C00);  // skip inf / NaN
        h[i] = c;
        w[i] = dt == QW_BF16 ? bf16_to_f32(c) : f16_to_f32(c);
    }
    // the codes vary over 2^±127 (bf16); scale x so that no sum overflows
    float *x = ao_malloc((size_t)N * K * sizeof(float));
    for (size_t i = 0; i < (size_t)N * K; i++) x[i] = test_rand_uniform(&st) * (dt == QW_BF16 ? 0x1p-10f : 1.0f);
    QTensor t32, t16;
    quant_wrap_f32(&t32, w, M, K);
    quant_wrap_w16(&t16, dt, h, M, K);
    float *ref = ao_malloc((size_t)N * M * sizeof(float)), *got = ao_malloc((size_t)N * M * sizeof(float));
    float *row = ao_malloc((size_t)K * sizeof(float));
    quant_none_row(&t16, M - 1, row);
    TEST_CHECK(memcmp(row, w + (size_t)(M - 1) * K, (size_t)K * sizeof(float)) == 0 &&
                   quant_none_bytes(&t16) == n * 2 && quant_none_bytes(&t32) == n * 4,
               "%s: quant_none_row / quant_none_bytes", dt == QW_BF16 ? "bf16" : "f16");
    QuantIsa best = quant_isa_best();
    quant_set_isa(QISA_C);
    quant_linear_forward(ref, x, &t32, NULL, N);
    for (int isa = 0; isa <= (int)best; isa++) {
        quant_set_isa((QuantIsa)isa);
        quant_linear_forward(got, x, &t16, NULL, N);
        size_t diff = 0, first = 0;
        for (size_t i = 0; i < (size_t)N * M; i++)
            if (memcmp(&got[i], &ref[i], 4) != 0 && !diff++) first = i;
        TEST_CHECK(diff == 0, "%s weights N%d M%d K%d [%s]: %zu of %d outputs differ from the fp32 copy (first %zu: %a vs %a)",
                   dt == QW_BF16 ? "bf16" : "f16", N, M, K, quant_isa_name((QuantIsa)isa), diff, N * M, first,
                   (double)got[first], (double)ref[first]);
    }
    quant_set_isa(best);
    free(h), free(w), free(x), free(ref), free(got), free(row);
}

// ---- torchao fixtures (written by test/ref/quant_ref.py where torchao is installed) --------
static const StTensor *need(const SafeTensors *st, const char *name) {
    const StTensor *t = st_find(st, name);
    TEST_CHECK(t != NULL, "torchao fixture lacks %s", name);
    return t;
}

static float *as_f32(const StTensor *t) {
    float *v = ao_malloc(t->numel * sizeof(float));
    CHECK(st_to_f32(t, v), "%s is not a float tensor", t->name);
    return v;
}

static void test_torchao_fixture(void) {
    char *path = path_join(test_dir(), "fixtures/quant/torchao.safetensors");
    if (!file_exists(path)) {
        test_skip("test/fixtures/quant/torchao.safetensors absent: run test/ref/quant_ref.py where torchao is installed");
        free(path);
        return;
    }
    SafeTensors st;
    char err[512];
    CHECK(st_open(&st, path, err, sizeof err), "%s", err);
    const char *cases = st_meta(&st, "cases");
    TEST_CHECK(cases != NULL, "torchao fixture has no 'cases' metadata");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", cases ? cases : "");
    for (char *c = strtok(buf, ","); c; c = strtok(NULL, ",")) {
        // case name: MODE_gG_MxK (e.g. int4_g64_48x128); int4hqq = int4 with HQQ qparams
        char mname[16], key[256];
        int G, M, K;
        if (sscanf(c, "%15[^_]_g%d_%dx%d", mname, &G, &M, &K) != 4) { TEST_CHECK(0, "bad case name %s", c); continue; }
        int hqq = strcmp(mname, "int4hqq") == 0;
        QuantMode m = hqq ? QUANT_INT4 : (QuantMode)quant_mode_from_name(mname);
        snprintf(key, sizeof key, "%s.w", c);
        const StTensor *tw = need(&st, key);
        snprintf(key, sizeof key, "%s.x", c);
        const StTensor *tx = need(&st, key);
        if (!tw || !tx) continue;
        float *w = as_f32(tw), *x = as_f32(tx);
        int N = (int)tx->shape[0];
        QTensor t;
        if (hqq) {
            // both entry points: the explicit flag and the process-wide default (--hqq)
            quant_set_int4_hqq(1);
            quant_quantize(&t, m, w, M, K, G);
            quant_set_int4_hqq(0);
            QTensor t2;
            quant_quantize_int4(&t2, m, w, M, K, G, 1);
            size_t ns = quant_n_scales(m, M, K, G);
            TEST_CHECK(!memcmp(t.q, t2.q, quant_q_bytes(m, M, K)) && !memcmp(t.scale, t2.scale, ns * 4) &&
                           !memcmp(t.zero, t2.zero, ns * 4), "%s: quant_quantize_int4(hqq=1) differs from --hqq", c);
            quant_free(&t2);
        } else quant_quantize(&t, m, w, M, K, G);
        snprintf(key, sizeof key, "%s.qdata", c);  // int32 [M,K] torchao's integers (fp8: uint8 bits)
        const StTensor *tq = need(&st, key);
        if (tq) {
            size_t bad = 0;
            for (size_t i = 0; i < (size_t)M * K; i++) {
                int32_t ref = ((const int32_t *)tq->data)[i], got;
                if (m == QUANT_INT8) got = ((const int8_t *)t.q)[i];
                else if (m == QUANT_FP8) got = t.q[i];
                else got = nib_at(&t, i) - (m == QUANT_8DA4W ? 8 : 0);
                bad += got != ref;
            }
            TEST_CHECK(bad == 0, "%s: %zu integers differ from torchao", c, bad);
        }
        const char *parts[2] = {"scale", "zero"};
        for (int p = 0; p < (m == QUANT_INT4 ? 2 : 1); p++) {
            snprintf(key, sizeof key, "%s.%s", c, parts[p]);
            const StTensor *ts = need(&st, key);
            if (!ts) continue;
            float *r = as_f32(ts);
            const float *got = p ? t.zero : t.scale;
            size_t bad = 0;
            for (size_t i = 0; i < ts->numel; i++) bad += memcmp(&got[i], &r[i], 4) != 0;
            TEST_CHECK(ts->numel == quant_n_scales(m, M, K, t.group) && bad == 0, "%s: %zu %ss differ from torchao", c,
                       bad, parts[p]);
            free(r);
        }
        snprintf(key, sizeof key, "%s.y", c);
        const StTensor *ty = need(&st, key);
        if (ty) {
            float *yref = as_f32(ty), *y = ao_malloc((size_t)N * M * sizeof(float));
            quant_linear_forward(y, x, &t, NULL, N);
            char what[300];
            snprintf(what, sizeof what, "%s: layer output vs torchao", c);
            TEST_CLOSE(what, y, yref, (size_t)N * M, 1e-5);
            free(yref), free(y);
        }
        quant_free(&t);
        free(w), free(x);
    }
    st_close(&st);
    free(path);
}

int main(void) {
    printf("quant kernels: best ISA here %s\n", quant_isa_name(quant_isa_best()));
#if defined(__x86_64__) && defined(__GNUC__)
    // The AVX512_BF16 fp8 kernel is used only after its known-answer check passes; on a CPU
    // with the instruction a refusal means the kernel (or the CPU) breaks the canonical order.
    __builtin_cpu_init();
    if (quant_isa_best() >= QISA_AVX512 && __builtin_cpu_supports("avx512bf16"))
        TEST_CHECK(quant_isa_best() == QISA_AVX512_BF16, "the CPU has avx512_bf16 but the vdpbf16ps fp8 kernel failed "
                   "its known-answer check against the C kernel");
#endif
    test_e4m3();
    test_hand_int4();
    test_tails();
    const int Gs[4] = {32, 64, 128, 256};
    for (int i = 0; i < 4; i++) test_formats_vs_ref(8, 512, Gs[i], 11 + (uint64_t)i);
    test_formats_vs_ref(5, 96, 32, 99);  // K not a multiple of 64: int4/8da4w g32 only
    for (int m = QUANT_NONE; m < QUANT_NMODES; m++) {
        if (quant_mode_grouped((QuantMode)m)) {
            for (int i = 0; i < 4; i++) test_linear((QuantMode)m, 3, 17, 512, Gs[i], 5 + (uint64_t)i);
            test_linear((QuantMode)m, 9, 33, 96, 32, 77);
        } else {
            test_linear((QuantMode)m, 3, 17, 512, 0, 5);
            test_linear((QuantMode)m, 9, 33, 61, 0, 77);  // K not a multiple of 16: the scalar tail
            test_linear((QuantMode)m, 1, 48, 48, 0, 78);
        }
    }
    for (int dt = QW_BF16; dt <= QW_F16; dt++) {
        // one token: the 16-bit kernels; several: the row widened once per block, then fp32
        for (int N = 1; N <= 3; N += 2) {
            test_linear_w16((QWeightDtype)dt, N, 4096, 16, 31);  // every finite code, no tail
            test_linear_w16((QWeightDtype)dt, N, 1100, 61, 32);  // every code again, with a tail of 13
        }
        test_linear_w16((QWeightDtype)dt, 9, 7, 5, 33);  // shorter than one vector, a partial token block
        test_linear_w16((QWeightDtype)dt, 1, 7, 5, 34);
    }
    test_torchao_fixture();
    return test_summary();
}
