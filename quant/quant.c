// Quantizers and dequantizers with torchao's numerics (see quant.h for the formulas).
// Every intermediate is computed in the dtype torchao computes it in: for the bf16
// formats (int4, fp8 weights) each torch op on bf16 tensors computes in fp32 and rounds
// the result to bf16, which bf() below reproduces op by op.
#include "quant.h"

// torch runs each op separately, rounding each result: no a*b+c may become an fma here.
#pragma GCC optimize("fp-contract=off")

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../model/safetensors.h"

static const char *const MODE_NAMES[QUANT_NMODES] = {"none", "int8", "int4", "8da4w", "fp8"};

const char *quant_mode_name(QuantMode m) { return (unsigned)m < QUANT_NMODES ? MODE_NAMES[m] : "?"; }

int quant_mode_from_name(const char *s) {
    for (int i = 0; i < QUANT_NMODES; i++)
        if (s && strcmp(s, MODE_NAMES[i]) == 0) return i;
    return -1;
}

int quant_mode_grouped(QuantMode m) { return m == QUANT_INT4 || m == QUANT_8DA4W; }
int quant_group_ok(int g) { return g == 32 || g == 64 || g == 128 || g == 256; }

float quant_bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }
#define bf quant_bf16_round

// ---- float8 e4m3fn ------------------------------------------------------------------------
static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint8_t quant_f32_to_e4m3(float f) {
    uint32_t b = f2u(f);
    uint32_t sign = b & 0x80000000u;
    b ^= sign;
    uint8_t r;
    if (b >= 0x43F00000u) {
        r = 0x7F;  // 480.0 and above (they round past 448) and NaN: e4m3fn has no infinity
    } else if (b < 0x3C800000u) {
        // Below 2^-6, the smallest normal: adding 2^14 (whose ulp is 2^-9, the subnormal
        // step) lets the FPU round to nearest even; the low bits are then the code (8 = 2^-6).
        r = (uint8_t)(f2u(u2f(b) + 16384.0f) - 0x46800000u);
    } else {
        // Normal: rebias the exponent (127 -> 7) and round the 20 dropped mantissa bits to
        // nearest even by adding 0x7FFFF plus the lowest kept bit.
        uint32_t odd = (b >> 20) & 1u;
        b -= (uint32_t)(127 - 7) << 23;  // exponent bias 127 -> 7
        b += 0x7FFFFu + odd;
        r = (uint8_t)(b >> 20);
    }
    return r | (uint8_t)(sign >> 24);
}

float quant_e4m3_to_f32(uint8_t v) {
    // Exponent and mantissa bits moved into an fp32 (an fp32 subnormal for e4m3 subnormals)
    // and multiplied by 2^(127-7): exact, and the same bit trick the SIMD kernels use.
    if ((v & 0x7F) == 0x7F) return (v & 0x80) ? -NAN : NAN;
    float f = u2f((uint32_t)(v & 0x7F) << 20) * 0x1p120f;
    return (v & 0x80) ? -f : f;
}

// ---- sizes and compatibility -------------------------------------------------------------------
size_t quant_q_bytes(QuantMode m, int rows, int cols) {
    size_t n = (size_t)rows * (size_t)cols;
    switch (m) {
        case QUANT_INT8: case QUANT_FP8: return n;
        case QUANT_INT4: case QUANT_8DA4W: return n / 2;
        default: return 0;
    }
}

size_t quant_n_scales(QuantMode m, int rows, int cols, int group) {
    if (m == QUANT_INT8 || m == QUANT_FP8) return (size_t)rows;
    if (quant_mode_grouped(m)) return (size_t)rows * (size_t)(cols / group);
    return 0;
}

int quant_compatible(QuantMode m, int rows, int cols, int group, char *why, size_t whylen) {
    if (quant_mode_grouped(m) && cols % group != 0) {
        snprintf(why, whylen, "in_features %d is not a multiple of the group size %d", cols, group);
        return 0;
    }
    if (m == QUANT_FP8 && (rows % 16 != 0 || cols % 16 != 0)) {
        snprintf(why, whylen, "shape %dx%d is not a multiple of 16 (torchao's _fp8_mm_compat)", rows, cols);
        return 0;
    }
    if (why && whylen) why[0] = 0;
    return 1;
}

void quant_alloc(QTensor *t, QuantMode m, int rows, int cols, int group) {
    CHECK(rows > 0 && cols > 0, "quantized tensor shape %dx%d is not positive", rows, cols);
    CHECK(m > QUANT_NONE && m < QUANT_NMODES, "quant_alloc: bad mode %d", (int)m);
    if (quant_mode_grouped(m)) {
        CHECK(quant_group_ok(group), "group size %d is not one of 32, 64, 128, 256", group);
        CHECK(cols % group == 0,
              "%s: in_features %d is not a multiple of the group size %d (refusing rather than dropping the tail)",
              quant_mode_name(m), cols, group);
    } else group = 0;
    memset(t, 0, sizeof *t);
    t->mode = m;
    t->rows = rows;
    t->cols = cols;
    t->group = group;
    size_t ns = quant_n_scales(m, rows, cols, group);
    t->q = ao_malloc(quant_q_bytes(m, rows, cols));
    t->scale = ao_malloc(ns * sizeof(float));
    if (m == QUANT_INT4) t->zero = ao_malloc(ns * sizeof(float));
    if (m == QUANT_8DA4W) t->wsum = ao_malloc(ns * sizeof(int32_t));
}

void quant_wrap_f32(QTensor *t, float *w, int rows, int cols) {
    memset(t, 0, sizeof *t);
    t->mode = QUANT_NONE;
    t->rows = rows;
    t->cols = cols;
    t->w = w;
}

void quant_wrap_w16(QTensor *t, QWeightDtype dt, const uint16_t *w16, int rows, int cols) {
    CHECK(dt == QW_BF16 || dt == QW_F16, "quant_wrap_w16: weight dtype %d is not bf16 or f16", (int)dt);
    CHECK(((uintptr_t)w16 & 1) == 0, "quant_wrap_w16: 16-bit weights at an odd address");
    memset(t, 0, sizeof *t);
    t->mode = QUANT_NONE;
    t->rows = rows;
    t->cols = cols;
    t->wdtype = dt;
    t->w16 = w16;
}

size_t quant_none_bytes(const QTensor *t) {
    return (size_t)t->rows * (size_t)t->cols * (t->wdtype == QW_F32 ? sizeof(float) : sizeof(uint16_t));
}

void quant_none_row(const QTensor *t, int r, float *out) {
    const size_t K = (size_t)t->cols, o = (size_t)r * K;
    switch (t->wdtype) {
        case QW_BF16: for (size_t k = 0; k < K; k++) out[k] = bf16_to_f32(t->w16[o + k]); break;
        case QW_F16: for (size_t k = 0; k < K; k++) out[k] = f16_to_f32(t->w16[o + k]); break;
        default: memcpy(out, t->w + o, K * sizeof(float)); break;
    }
}

void quant_free(QTensor *t) {
    if (t->owns_w) free(t->w);
    free(t->q);
    free(t->scale);
    free(t->zero);
    free(t->wsum);
    memset(t, 0, sizeof *t);
}

void quant_finish_load(QTensor *t) {
    if (t->mode != QUANT_8DA4W) return;
    size_t ng = (size_t)t->cols / (size_t)t->group;
    for (size_t r = 0; r < (size_t)t->rows; r++)
        for (size_t g = 0; g < ng; g++) {
            const uint8_t *p = t->q + (r * (size_t)t->cols + g * (size_t)t->group) / 2;
            int32_t s = 0;
            for (int i = 0; i < t->group / 2; i++) s += (p[i] & 15) + (p[i] >> 4) - 16;
            t->wsum[r * ng + g] = s;
        }
}

// ---- quantizers ---------------------------------------------------------------------------------
static inline void put_nibble(uint8_t *row, int k, int v) {
    if (k & 1) row[k / 2] = (uint8_t)((row[k / 2] & 0x0F) | (v << 4));
    else row[k / 2] = (uint8_t)((row[k / 2] & 0xF0) | v);
}

static void quant_int8_row(int8_t *q, float *scale, const float *w, int K) {
    float mn = 0.0f, mx = 0.0f;  // min(min, 0), max(max, 0): preserve_zero
    for (int k = 0; k < K; k++) mn = fminf(mn, w[k]), mx = fmaxf(mx, w[k]);
    float s = fmaxf(-mn, mx) / 127.5f;  // (quant_max - quant_min) / 2
    if (s < FLT_EPSILON) s = FLT_EPSILON;
    float inv = 1.0f / s;  // torchao multiplies by (1.0 / scale)
    for (int k = 0; k < K; k++) {
        float r = rintf(w[k] * inv);
        q[k] = (int8_t)(r < -128.0f ? -128 : r > 127.0f ? 127 : r);
    }
    *scale = s;
}

// One tinygemm group in bf16: wb holds the weights rounded to bf16.
static void quant_int4_group(uint8_t *row, int k0, float *scale, float *zero, const float *wb, int G) {
    float mn = wb[0], mx = wb[0];
    for (int i = 1; i < G; i++) mn = fminf(mn, wb[i]), mx = fmaxf(mx, wb[i]);
    float s = bf(bf(mx - mn) / 15.0f);
    // torchao's tinygemm qparams (_choose_qparams_affine_tinygemm, as Int4WeightOnlyConfig's
    // tile_packed_to_4d path calls it) clamp with the input dtype's smallest normal: 2^-126.
    const float eps = 0x1p-126f;
    if (s < eps) s = eps;
    float s8 = bf(s * 8.0f);  // mid_point = (15 + 0 + 1) / 2
    float z = bf(mn + s8);
    float lo = bf(z - s8);  // quantize_affine recomputes min_val = zero_point - scale * mid_point
    for (int i = 0; i < G; i++) {
        float r = rintf(bf(bf(wb[i] - lo) / s));
        put_nibble(row, k0 + i, (int)(r < 0.0f ? 0 : r > 15.0f ? 15 : r));
    }
    *scale = s;
    *zero = z;
}

// ---- int4 with HQQ qparams ---------------------------------------------------------------------
// torchao 0.18 Int4WeightOnlyConfig(int4_choose_qparams_algorithm="hqq"), tile_packed_to_4d:
// _choose_qparams_and_quantize_affine_hqq(W_bf16, nbits=4, group_size=G, axis=1,
// compute_dtype=bf16, optimize=True) with its default optimizer optimize_weights_proximal_legacy
// (lp_norm 0.7, beta 10, kappa 1.01, 20 iterations, early stopping), then
// _convert_to_affinequantized_format to the tinygemm convention. On the CPU every intermediate
// is fp32 (W = bf16 weights .to(fp32); the optimizer's dtype is fp32 off CUDA) and each torch op
// is one IEEE fp32 operation, rounded once; eager torch fuses nothing, so neither do we
// (fp-contract off at the top). Step by step, per group of G (w = bf16 weights as fp32):
//   scale = min(fp32(1/(max - min)) * 15, 2e4)  (15 / t is t.reciprocal() * 15 in torch; an
//           all-zero or constant group has 1/0 = inf and clamps to 2e4)
//   zero  = rint(-min * scale)
//   for it in 0..19 (beta = 10 * 1.01^it in double, as the Python float evolves):
//     Wq = clamp(rint(w * scale + zero), 0, 15); Wr = (Wq - zero) / scale; x = w - Wr
//     We = sign(x) * relu(|x| - fp32(1/beta) * pow(|x|, fp32(0.7 - 1)))
//     zero = sum_G(Wq - (w - We) * scale) / G, the fp32 sum in torch's CPU order (hqq_sum)
//     err = mean |w - Wr| over the WHOLE matrix (all groups advance together): stop after
//           this iteration's zero update unless err < the best error so far
//   codes = clamp(rint(w * scale + zero), 0, 15); s = 1 / scale; z = (8 - zero) * s
//   stored: codes, bf16(s), bf16(z)  (dequantized w ~ (q - 8) * s + z, as plain int4)
// Two steps are not bit-for-bit torch's: pow, where torch's vectorized kernel (Sleef, within
// 1 ulp) differs from the correctly rounded value in ~2% of inputs and we use
// (float)pow((double)a, (double)e); and err, which torch sums in fp32 (in an order that
// depends on its thread count) and we sum in double. pow enters only through We inside the
// group mean, where a 1-ulp change of one term rarely moves the fp32 mean (it would matter:
// z = (8 - zero) * s cancels, so a 1-ulp change of zero can change bf16(z)); err only decides
// when to stop, and flips only if two iterations' errors agree to ~1e-7. test_quant compares
// with torchao's own output on 6 matrices (57k weights): all equal; replacing torch's pow by
// the correctly rounded one in torchao itself also left its outputs unchanged.
#define HQQ_ITERS 20
// Lanes of torch's Vectorized<float> in its CPU sum kernel: 8 (the AVX2 kernel, which torch
// 2.x also runs on AVX-512 CPUs for sums: checked against torch.sum on random rows).
#define HQQ_V 8

// torch's CPU sum over a contiguous row of G fp32 values (SumKernel.cpp vectorized_inner_sum
// + row_sum): HQQ_V-lane vectors, 4 interleaved vector accumulators (vector i goes to i % 4
// while 4 whole vectors remain, the rest to accumulator 0), accumulators folded 0+1+2+3, then
// the lanes added in order. G <= 256 keeps row_sum's cascade levels (16 steps) unused.
static float hqq_sum(const float *x, int G) {
    float acc[4][HQQ_V];
    memset(acc, 0, sizeof acc);
    int nvec = G / HQQ_V, nilp = nvec / 4, v = 0;
    for (int i = 0; i < nilp; i++)
        for (int a = 0; a < 4; a++, v++)
            for (int l = 0; l < HQQ_V; l++) acc[a][l] += x[v * HQQ_V + l];
    for (; v < nvec; v++)
        for (int l = 0; l < HQQ_V; l++) acc[0][l] += x[v * HQQ_V + l];
    for (int a = 1; a < 4; a++)
        for (int l = 0; l < HQQ_V; l++) acc[0][l] += acc[a][l];
    float s = 0.0f;
    for (int k = nvec * HQQ_V; k < G; k++) s += x[k];  // tail (none for G % 16 == 0)
    for (int l = 0; l < HQQ_V; l++) s += acc[0][l];
    return s;
}

static inline float hqq_code(float w, float scale, float zero) {
    float t = w * scale;
    float r = rintf(t + zero);
    return r < 0.0f ? 0.0f : r > 15.0f ? 15.0f : r;
}

// One optimizer iteration on a group: updates *zero, returns sum |w - Wr| (double).
static double hqq_step(const float *w, float *tmp, int G, float scale, float *zero, float cb, float e) {
    double err = 0.0;
    float z = *zero;
    for (int i = 0; i < G; i++) {
        float wq = hqq_code(w[i], scale, z);
        float wr = (wq - z) / scale;
        float x = w[i] - wr;
        float a = fabsf(x);
        float p = (float)pow((double)a, (double)e);  // pow(0, e < 0) = inf -> relu gives 0
        float m = cb * p;
        float d = a - m;
        float relu = d > 0.0f ? d : 0.0f;
        float sg = x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : 0.0f;
        float we = sg * relu;
        float t = (w[i] - we) * scale;
        tmp[i] = wq - t;
        err += (double)a;
    }
    *zero = hqq_sum(tmp, G) / (float)G;
    return err;
}

static void quant_int4_hqq(QTensor *t, const float *w) {
    const int M = t->rows, K = t->cols, G = t->group, ng = K / G;
    const size_t nsc = (size_t)M * (size_t)ng;
    float *sc = ao_malloc(nsc * sizeof(float)), *zr = ao_malloc(nsc * sizeof(float));
    double *rowerr = ao_malloc((size_t)M * sizeof(double));
    const float e = (float)(0.7 - 1.0);  // lp_norm - 1 as a Python float, cast to fp32 by pow
    int done = 0;
    double best = 1e4 * (double)M * (double)K;  // best_error = 1e4, compared as sums
    double beta = 1e1;
#pragma omp parallel
    {
        float *wb = ao_malloc((size_t)K * sizeof(float)), *tmp = ao_malloc((size_t)G * sizeof(float));
#pragma omp for schedule(static)
        for (int r = 0; r < M; r++) {
            for (int k = 0; k < K; k++) wb[k] = bf(w[(size_t)r * K + k]);
            for (int g = 0; g < ng; g++) {
                const float *x = wb + g * G;
                float mn = x[0], mx = x[0];
                for (int i = 1; i < G; i++) mn = fminf(mn, x[i]), mx = fmaxf(mx, x[i]);
                float inv = 1.0f / (mx - mn);
                float s = inv * 15.0f;
                if (s > 2e4f) s = 2e4f;
                float mnn = -mn;
                sc[(size_t)r * ng + g] = s;
                zr[(size_t)r * ng + g] = rintf(mnn * s);
            }
        }
        for (int it = 0; it < HQQ_ITERS && !done; it++) {
            const float cb = (float)(1.0 / beta);
#pragma omp for schedule(static)
            for (int r = 0; r < M; r++) {
                for (int k = 0; k < K; k++) wb[k] = bf(w[(size_t)r * K + k]);
                double er = 0.0;
                for (int g = 0; g < ng; g++) {
                    size_t si = (size_t)r * ng + g;
                    er += hqq_step(wb + g * G, tmp, G, sc[si], &zr[si], cb, e);
                }
                rowerr[r] = er;
            }
#pragma omp single
            {
                beta *= 1.01;
                double err = 0.0;
                for (int r = 0; r < M; r++) err += rowerr[r];  // fixed order: thread-count free
                if (err < best) best = err;
                else done = 1;
            }
        }
#pragma omp for schedule(static)
        for (int r = 0; r < M; r++) {
            uint8_t *row = t->q + (size_t)r * (size_t)(K / 2);
            for (int k = 0; k < K; k++) wb[k] = bf(w[(size_t)r * K + k]);
            for (int g = 0; g < ng; g++) {
                size_t si = (size_t)r * ng + g;
                for (int i = 0; i < G; i++) put_nibble(row, g * G + i, (int)hqq_code(wb[g * G + i], sc[si], zr[si]));
                float s = 1.0f / sc[si];
                float d = 8.0f - zr[si];  // mid_point (15 + 0 + 1) / 2
                t->scale[si] = bf(s);
                t->zero[si] = bf(d * s);
            }
        }
        free(wb);
        free(tmp);
    }
    free(sc);
    free(zr);
    free(rowerr);
}

static void quant_8da4w_group(uint8_t *row, int k0, float *scale, const float *w, int G) {
    float mn = 0.0f, mx = 0.0f;
    for (int i = 0; i < G; i++) mn = fminf(mn, w[i]), mx = fmaxf(mx, w[i]);
    float s = fmaxf(-mn, mx) / 7.5f;  // (7 - (-8)) / 2
    if (s < FLT_EPSILON) s = FLT_EPSILON;
    float inv = 1.0f / s;
    for (int i = 0; i < G; i++) {
        float r = rintf(w[i] * inv);
        int q = (int)(r < -8.0f ? -8 : r > 7.0f ? 7 : r);
        put_nibble(row, k0 + i, q + 8);
    }
    *scale = s;
}

// Scale of a float8 row: max|x| / 448 computed in the input's dtype (bf16 weights: the
// quotient is rounded to bf16, as torch does for a bf16 tensor divided by a Python float).
static float fp8_row(uint8_t *q, const float *x, int K, int in_bf16) {
    float amax = 0.0f;
    for (int k = 0; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    float s = amax / 448.0f;
    if (in_bf16) s = bf(s);
    for (int k = 0; k < K; k++) {
        if (s == 0.0f) {  // all-zero row: torchao divides 0 by 0; we keep zeros
            q[k] = 0;
            continue;
        }
        float v = x[k] / s;
        v = v > 448.0f ? 448.0f : v < -448.0f ? -448.0f : v;
        q[k] = quant_f32_to_e4m3(v);
    }
    return s;
}

float quant_act_fp8_row(uint8_t *q, const float *x, int K) { return fp8_row(q, x, K, 0); }

float quant_act_int8_asym(int8_t *q, int32_t *zp, const float *x, int K) {
    float mn = 0.0f, mx = 0.0f;
    for (int k = 0; k < K; k++) mn = fminf(mn, x[k]), mx = fmaxf(mx, x[k]);
    float s = (mx - mn) / 255.0f;
    if (s < FLT_EPSILON) s = FLT_EPSILON;
    float z = -128.0f - rintf(mn / s);
    z = z < -128.0f ? -128.0f : z > 127.0f ? 127.0f : z;
    float inv = 1.0f / s;
    for (int k = 0; k < K; k++) {
        float r = rintf(x[k] * inv) + z;
        q[k] = (int8_t)(r < -128.0f ? -128 : r > 127.0f ? 127 : r);
    }
    *zp = (int32_t)z;
    return s;
}

static int g_int4_hqq;
void quant_set_int4_hqq(int on) { g_int4_hqq = !!on; }
int quant_get_int4_hqq(void) { return g_int4_hqq; }

void quant_quantize(QTensor *t, QuantMode m, const float *w, int rows, int cols, int group) {
    quant_quantize_int4(t, m, w, rows, cols, group, m == QUANT_INT4 && g_int4_hqq);
}

void quant_quantize_int4(QTensor *t, QuantMode m, const float *w, int rows, int cols, int group, int hqq) {
    CHECK(!hqq || m == QUANT_INT4, "HQQ applies to int4 only, not %s", quant_mode_name(m));
    if (m == QUANT_NONE) {
        quant_wrap_f32(t, ao_malloc((size_t)rows * (size_t)cols * sizeof(float)), rows, cols);
        memcpy(t->w, w, (size_t)rows * (size_t)cols * sizeof(float));
        t->owns_w = 1;
        return;
    }
    size_t n = (size_t)rows * (size_t)cols;
    size_t bad = n;
#pragma omp parallel for reduction(min : bad)
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i]) && i < bad) bad = i;
    CHECK(bad == n, "weight [%zu, %zu] is not finite (%g): refusing to quantize", bad / (size_t)cols,
          bad % (size_t)cols, (double)w[bad < n ? bad : 0]);
    quant_alloc(t, m, rows, cols, group);
    if (hqq) {
        quant_int4_hqq(t, w);
        return;
    }
    int G = t->group;
#pragma omp parallel
    {
        float *tmp = ao_malloc((size_t)cols * sizeof(float));
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            const float *wr = w + (size_t)r * (size_t)cols;
            size_t qoff = quant_q_bytes(m, 1, cols) * (size_t)r;
            switch (m) {
                case QUANT_INT8: quant_int8_row((int8_t *)t->q + qoff, &t->scale[r], wr, cols); break;
                case QUANT_FP8: {
                    for (int k = 0; k < cols; k++) tmp[k] = bf(wr[k]);
                    t->scale[r] = fp8_row(t->q + qoff, tmp, cols, 1);
                    break;
                }
                case QUANT_INT4: {
                    for (int k = 0; k < cols; k++) tmp[k] = bf(wr[k]);
                    for (int g = 0; g < cols / G; g++) {
                        size_t si = (size_t)r * (size_t)(cols / G) + (size_t)g;
                        quant_int4_group(t->q + qoff, g * G, &t->scale[si], &t->zero[si], tmp + g * G, G);
                    }
                    break;
                }
                case QUANT_8DA4W:
                    for (int g = 0; g < cols / G; g++)
                        quant_8da4w_group(t->q + qoff, g * G, &t->scale[(size_t)r * (size_t)(cols / G) + (size_t)g],
                                          wr + g * G, G);
                    break;
                default: break;
            }
        }
        free(tmp);
    }
    quant_finish_load(t);
}

void quant_dequantize(const QTensor *t, float *out) {
    size_t M = (size_t)t->rows, K = (size_t)t->cols;
    if (t->mode == QUANT_NONE) {
        for (size_t r = 0; r < M; r++) quant_none_row(t, (int)r, out + r * K);
        return;
    }
    for (size_t r = 0; r < M; r++) {
        float *o = out + r * K;
        for (size_t k = 0; k < K; k++) {
            size_t i = r * K + k;
            int nib = (t->q && (t->mode == QUANT_INT4 || t->mode == QUANT_8DA4W))
                          ? ((t->q[i / 2] >> ((i & 1) * 4)) & 15) : 0;
            switch (t->mode) {
                case QUANT_NONE: o[k] = t->w[i]; break;
                case QUANT_INT8: o[k] = (float)((const int8_t *)t->q)[i] * t->scale[r]; break;
                case QUANT_FP8: o[k] = quant_e4m3_to_f32(t->q[i]) * t->scale[r]; break;
                case QUANT_INT4: {
                    // FLOAT domain: (q - mid_point) * scale + zero, in fp32
                    size_t g = r * (K / (size_t)t->group) + k / (size_t)t->group;
                    o[k] = (float)(nib - 8) * t->scale[g] + t->zero[g];
                    break;
                }
                case QUANT_8DA4W: {
                    size_t g = r * (K / (size_t)t->group) + k / (size_t)t->group;
                    o[k] = (float)(nib - 8) * t->scale[g];
                    break;
                }
                default: break;
            }
        }
    }
}
