// Quantizers and dequantizers with torchao's numerics (see quant.h for the formulas).
// Every intermediate is computed in the dtype torchao computes it in: for the bf16
// formats (int4, fp8 weights) each torch op on bf16 tensors computes in fp32 and rounds
// the result to bf16, which bf() below reproduces op by op.
#include "quant.h"

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

void quant_quantize(QTensor *t, QuantMode m, const float *w, int rows, int cols, int group) {
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
