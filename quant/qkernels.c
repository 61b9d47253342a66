// Dot-product kernels of the quantized linears, in portable C, AVX2 (+FMA) and AVX-512
// (+VNNI), picked at run time. The C versions define the results; the SIMD versions
// reproduce them bit for bit:
//   - float kernels keep 16 lane accumulators, element k goes to lane k % 16 with one
//     fused multiply-add (fmaf), and the lanes are reduced by one fixed tree (reduce16);
//   - integer kernels (8da4w) sum exactly in int32, in any order.
// The SIMD functions are compiled with target attributes, so the library still runs on
// any x86-64 (and the C path everywhere else).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define QK_X86 1
#include <immintrin.h>
#endif

// ---- the canonical definitions (portable C) ------------------------------------------------
static inline float reduce16(float *a) {
    for (int j = 0; j < 8; j++) a[j] += a[j + 8];
    for (int j = 0; j < 4; j++) a[j] += a[j + 4];
    for (int j = 0; j < 2; j++) a[j] += a[j + 2];
    return a[0] + a[1];
}

static inline int nib(const uint8_t *q, int k) { return (q[k >> 1] >> ((k & 1) * 4)) & 15; }

// e4m3 decode as the SIMD code does it (no NaN special case: codes 0x7F/0xFF never come
// out of our quantizers, which clamp to +-448 first).
static inline float e4m3_bits(uint8_t v) {
    uint32_t u = (uint32_t)(v & 0x7F) << 20;
    float f;
    memcpy(&f, &u, 4);
    f *= 0x1p120f;
    return (v & 0x80) ? -f : f;
}

static float dot_f32_c(const float *x, const float *w, int K) {
    float a[16] = {0};
    for (int k = 0; k < K; k++) a[k & 15] = fmaf(x[k], w[k], a[k & 15]);
    return reduce16(a);
}

static float dot_i8_c(const float *x, const int8_t *q, int K) {
    float a[16] = {0};
    for (int k = 0; k < K; k++) a[k & 15] = fmaf(x[k], (float)q[k], a[k & 15]);
    return reduce16(a);
}

// sum_g s_g * sum_{k in g} x_k (q_k - 8), plus sum_g z_g * xsum_g (xsum: per-group sums of x)
static float dot_i4_c(const float *x, const uint8_t *q, const float *s, const float *z, const float *xsum, int K,
                      int G) {
    float a[16] = {0};
    for (int g = 0; g < K / G; g++) {
        float p[16] = {0};
        for (int k = g * G; k < (g + 1) * G; k++) p[k & 15] = fmaf(x[k], (float)(nib(q, k) - 8), p[k & 15]);
        for (int j = 0; j < 16; j++) a[j] = fmaf(s[g], p[j], a[j]);
    }
    float y = reduce16(a), zs = 0.0f;
    for (int g = 0; g < K / G; g++) zs = fmaf(z[g], xsum[g], zs);
    return y + zs;
}

// Exact integer sum over one group: sum (q+8) * xq.
static int32_t idot_u4s8_c(const uint8_t *q, const int8_t *xq, int k0, int G) {
    int32_t d = 0;
    for (int k = k0; k < k0 + G; k++) d += nib(q, k) * xq[k];
    return d;
}

static float dot_fp8_c(const uint8_t *xq, const uint8_t *wq, int K) {
    float a[16] = {0};
    for (int k = 0; k < K; k++) a[k & 15] = fmaf(e4m3_bits(xq[k]), e4m3_bits(wq[k]), a[k & 15]);
    return reduce16(a);
}

typedef struct {
    float (*f32)(const float *, const float *, int);
    float (*i8)(const float *, const int8_t *, int);
    float (*i4)(const float *, const uint8_t *, const float *, const float *, const float *, int, int);
    int32_t (*u4s8)(const uint8_t *, const int8_t *, int, int);
    float (*fp8)(const uint8_t *, const uint8_t *, int);
} Kernels;

static const Kernels K_C = {dot_f32_c, dot_i8_c, dot_i4_c, idot_u4s8_c, dot_fp8_c};

#ifdef QK_X86
// ---- AVX2 + FMA -----------------------------------------------------------------------------
#define T_AVX2 __attribute__((target("avx2,fma")))

T_AVX2 static inline float finish_avx2(__m256 lo, __m256 hi, int k, int K, const float *x, const float *w) {
    float a[16];
    _mm256_storeu_ps(a, lo);
    _mm256_storeu_ps(a + 8, hi);
    for (; k < K; k++) a[k & 15] = fmaf(x[k], w[k], a[k & 15]);
    return reduce16(a);
}

T_AVX2 static float dot_f32_avx2(const float *x, const float *w, int K) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(w + k), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), _mm256_loadu_ps(w + k + 8), hi);
    }
    return finish_avx2(lo, hi, k, K, x, w);
}

T_AVX2 static inline __m256 i8x8_ps(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

T_AVX2 static float dot_i8_avx2(const float *x, const int8_t *q, int K) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), i8x8_ps(q + k), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), i8x8_ps(q + k + 8), hi);
    }
    float a[16];
    _mm256_storeu_ps(a, lo);
    _mm256_storeu_ps(a + 8, hi);
    for (; k < K; k++) a[k & 15] = fmaf(x[k], (float)q[k], a[k & 15]);
    return reduce16(a);
}

// 8 packed bytes -> 16 nibbles in k order (low nibble first), as 16 bytes.
T_AVX2 static inline __m128i unpack16_avx2(const uint8_t *q) {
    __m128i t = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)q));
    return _mm_or_si128(_mm_and_si128(t, _mm_set1_epi16(0x0F)), _mm_slli_epi16(_mm_and_si128(t, _mm_set1_epi16(0xF0)), 4));
}

T_AVX2 static float dot_i4_avx2(const float *x, const uint8_t *q, const float *s, const float *z, const float *xsum,
                                int K, int G) {
    __m256 alo = _mm256_setzero_ps(), ahi = _mm256_setzero_ps(), eight = _mm256_set1_ps(8.0f);
    for (int g = 0; g < K / G; g++) {
        __m256 plo = _mm256_setzero_ps(), phi = _mm256_setzero_ps();
        for (int k = g * G; k < (g + 1) * G; k += 16) {
            __m128i b = unpack16_avx2(q + k / 2);
            __m256 wlo = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), eight);
            __m256 whi = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8))), eight);
            plo = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), wlo, plo);
            phi = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), whi, phi);
        }
        __m256 sg = _mm256_set1_ps(s[g]);
        alo = _mm256_fmadd_ps(sg, plo, alo);
        ahi = _mm256_fmadd_ps(sg, phi, ahi);
    }
    float a[16];
    _mm256_storeu_ps(a, alo);
    _mm256_storeu_ps(a + 8, ahi);
    float y = reduce16(a), zs = 0.0f;
    for (int g = 0; g < K / G; g++) zs = fmaf(z[g], xsum[g], zs);
    return y + zs;
}

// 16 packed bytes -> 32 unsigned nibbles in k order.
T_AVX2 static inline __m256i unpack32_avx2(const uint8_t *q) {
    __m128i b = _mm_loadu_si128((const __m128i *)q), m = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
}

T_AVX2 static inline int32_t hsum_epi32_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

T_AVX2 static int32_t idot_u4s8_avx2(const uint8_t *q, const int8_t *xq, int k0, int G) {
    __m256i acc = _mm256_setzero_si256(), ones = _mm256_set1_epi16(1);
    for (int k = k0; k < k0 + G; k += 32) {
        // (q+8) <= 15 and |xq| <= 128: pair sums <= 3840 never saturate maddubs' int16
        __m256i p = _mm256_maddubs_epi16(unpack32_avx2(q + k / 2), _mm256_loadu_si256((const __m256i *)(xq + k)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    return hsum_epi32_avx2(acc);
}

T_AVX2 static inline __m256 e4m3x8_avx2(const uint8_t *p) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    __m256i mag = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7F)), 20);
    __m256i sgn = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24);
    __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(mag), _mm256_set1_ps(0x1p120f));
    return _mm256_or_ps(f, _mm256_castsi256_ps(sgn));
}

T_AVX2 static float dot_fp8_avx2(const uint8_t *xq, const uint8_t *wq, int K) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        lo = _mm256_fmadd_ps(e4m3x8_avx2(xq + k), e4m3x8_avx2(wq + k), lo);
        hi = _mm256_fmadd_ps(e4m3x8_avx2(xq + k + 8), e4m3x8_avx2(wq + k + 8), hi);
    }
    float a[16];
    _mm256_storeu_ps(a, lo);
    _mm256_storeu_ps(a + 8, hi);
    for (; k < K; k++) a[k & 15] = fmaf(e4m3_bits(xq[k]), e4m3_bits(wq[k]), a[k & 15]);
    return reduce16(a);
}

static const Kernels K_AVX2 = {dot_f32_avx2, dot_i8_avx2, dot_i4_avx2, idot_u4s8_avx2, dot_fp8_avx2};

// ---- AVX-512 (F, BW, VL, VNNI) --------------------------------------------------------------
#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))

T_512 static inline float finish512(__m512 acc, float *a) {
    _mm512_storeu_ps(a, acc);
    return reduce16(a);
}

T_512 static float dot_f32_512(const float *x, const float *w, int K) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_loadu_ps(w + k), acc);
    float a[16];
    _mm512_storeu_ps(a, acc);
    for (; k < K; k++) a[k & 15] = fmaf(x[k], w[k], a[k & 15]);
    return reduce16(a);
}

T_512 static float dot_i8_512(const float *x, const int8_t *q, int K) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + k))));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), w, acc);
    }
    float a[16];
    _mm512_storeu_ps(a, acc);
    for (; k < K; k++) a[k & 15] = fmaf(x[k], (float)q[k], a[k & 15]);
    return reduce16(a);
}

T_512 static float dot_i4_512(const float *x, const uint8_t *q, const float *s, const float *z, const float *xsum,
                              int K, int G) {
    __m512 acc = _mm512_setzero_ps(), eight = _mm512_set1_ps(8.0f);
    for (int g = 0; g < K / G; g++) {
        __m512 p = _mm512_setzero_ps();
        for (int k = g * G; k < (g + 1) * G; k += 16) {
            __m512 w = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(unpack16_avx2(q + k / 2))), eight);
            p = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), w, p);
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(s[g]), p, acc);
    }
    float a[16];
    float y = finish512(acc, a), zs = 0.0f;
    for (int g = 0; g < K / G; g++) zs = fmaf(z[g], xsum[g], zs);
    return y + zs;
}

T_512 static int32_t idot_u4s8_512(const uint8_t *q, const int8_t *xq, int k0, int G) {
    __m256i acc = _mm256_setzero_si256();
    for (int k = k0; k < k0 + G; k += 32)
        acc = _mm256_dpbusd_epi32(acc, unpack32_avx2(q + k / 2), _mm256_loadu_si256((const __m256i *)(xq + k)));
    return hsum_epi32_avx2(acc);
}

T_512 static inline __m512 e4m3x16_512(const uint8_t *p) {
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512i mag = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x7F)), 20);
    __m512i sgn = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
    __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(mag), _mm512_set1_ps(0x1p120f));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sgn));
}

T_512 static float dot_fp8_512(const uint8_t *xq, const uint8_t *wq, int K) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) acc = _mm512_fmadd_ps(e4m3x16_512(xq + k), e4m3x16_512(wq + k), acc);
    float a[16];
    _mm512_storeu_ps(a, acc);
    for (; k < K; k++) a[k & 15] = fmaf(e4m3_bits(xq[k]), e4m3_bits(wq[k]), a[k & 15]);
    return reduce16(a);
}

static const Kernels K_512 = {dot_f32_512, dot_i8_512, dot_i4_512, idot_u4s8_512, dot_fp8_512};
#endif

// ---- selection -----------------------------------------------------------------------------
static int g_best = -1, g_isa = -1;

QuantIsa quant_isa_best(void) {
    if (g_best < 0) {
        int b = QISA_C;
#ifdef QK_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) b = QISA_AVX2;
        if (b == QISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            b = QISA_AVX512;
#endif
        g_best = b;  // benign race: every thread computes the same value
    }
    return (QuantIsa)g_best;
}

void quant_set_isa(QuantIsa isa) {
    QuantIsa b = quant_isa_best();
    g_isa = (int)(isa > b ? b : isa);
}

QuantIsa quant_get_isa(void) {
    if (g_isa < 0) g_isa = (int)quant_isa_best();
    return (QuantIsa)g_isa;
}

const char *quant_isa_name(QuantIsa isa) {
    return isa == QISA_AVX512 ? "avx512+vnni" : isa == QISA_AVX2 ? "avx2+fma" : "c";
}

static const Kernels *kernels(void) {
#ifdef QK_X86
    switch (quant_get_isa()) {
        case QISA_AVX512: return &K_512;
        case QISA_AVX2: return &K_AVX2;
        default: break;
    }
#endif
    return &K_C;
}

// ---- the linear -----------------------------------------------------------------------------
// Per-token activation data, prepared once and shared by every output row.
typedef struct {
    float *xsum;     // int4: [N, K/G] sums of x per group
    int8_t *xq;      // 8da4w: [N, K]
    uint8_t *x8;     // fp8: [N, K]
    float *xs;       // 8da4w / fp8: [N] per-token scale
    int32_t *xzp;    // 8da4w: [N] zero point
    int32_t *xqsum;  // 8da4w: [N, K/G] sums of xq per group
} ActPrep;

static void prep_acts(ActPrep *a, const float *x, const QTensor *w, int N) {
    memset(a, 0, sizeof *a);
    const int K = w->cols, G = w->group, ng = G ? K / G : 0;
    if (w->mode == QUANT_INT4) a->xsum = ao_malloc((size_t)N * (size_t)ng * sizeof(float));
    if (w->mode == QUANT_8DA4W) {
        a->xq = ao_malloc((size_t)N * (size_t)K);
        a->xs = ao_malloc((size_t)N * sizeof(float));
        a->xzp = ao_malloc((size_t)N * sizeof(int32_t));
        a->xqsum = ao_malloc((size_t)N * (size_t)ng * sizeof(int32_t));
    }
    if (w->mode == QUANT_FP8) {
        a->x8 = ao_malloc((size_t)N * (size_t)K);
        a->xs = ao_malloc((size_t)N * sizeof(float));
    }
#pragma omp parallel for schedule(static) if (N > 1)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * (size_t)K;
        if (w->mode == QUANT_INT4) {
            for (int g = 0; g < ng; g++) {
                float s = 0.0f;
                for (int k = g * G; k < (g + 1) * G; k++) s += xn[k];
                a->xsum[(size_t)n * (size_t)ng + (size_t)g] = s;
            }
        } else if (w->mode == QUANT_8DA4W) {
            int8_t *q = a->xq + (size_t)n * (size_t)K;
            a->xs[n] = quant_act_int8_asym(q, &a->xzp[n], xn, K);
            for (int g = 0; g < ng; g++) {
                int32_t s = 0;
                for (int k = g * G; k < (g + 1) * G; k++) s += q[k];
                a->xqsum[(size_t)n * (size_t)ng + (size_t)g] = s;
            }
        } else if (w->mode == QUANT_FP8) {
            a->xs[n] = quant_act_fp8_row(a->x8 + (size_t)n * (size_t)K, xn, K);
        }
    }
}

static void free_acts(ActPrep *a) {
    free(a->xsum);
    free(a->xq);
    free(a->x8);
    free(a->xs);
    free(a->xzp);
    free(a->xqsum);
}

static inline float row_dot(const Kernels *kr, const QTensor *w, const ActPrep *a, const float *x, int n, int m) {
    const int K = w->cols, G = w->group;
    const size_t mk = (size_t)m * (size_t)K, nk = (size_t)n * (size_t)K;
    switch (w->mode) {
        case QUANT_NONE: return kr->f32(x + nk, w->w + mk, K);
        case QUANT_INT8: return kr->i8(x + nk, (const int8_t *)w->q + mk, K) * w->scale[m];
        case QUANT_INT4: {
            size_t so = (size_t)m * (size_t)(K / G);
            return kr->i4(x + nk, w->q + mk / 2, w->scale + so, w->zero + so, a->xsum + (size_t)n * (size_t)(K / G), K,
                          G);
        }
        case QUANT_8DA4W: {
            // sum_k (xq - zp) * wq = sum (q+8) xq - 8 sum xq - zp sum wq, exact per group
            const int ng = K / G;
            const size_t so = (size_t)m * (size_t)ng, xo = (size_t)n * (size_t)ng;
            const int8_t *xq = a->xq + nk;
            const uint8_t *q = w->q + mk / 2;
            float acc = 0.0f;
            for (int g = 0; g < ng; g++) {
                int32_t d = kr->u4s8(q, xq, g * G, G);
                int32_t ig = d - 8 * a->xqsum[xo + (size_t)g] - a->xzp[n] * w->wsum[so + (size_t)g];
                acc = fmaf(w->scale[so + (size_t)g], (float)ig, acc);
            }
            return acc * a->xs[n];
        }
        case QUANT_FP8: return kr->fp8(a->x8 + nk, w->q + mk, K) * a->xs[n] * w->scale[m];
        default: return 0.0f;
    }
}

void quant_linear_forward(float *out, const float *x, const QTensor *w, const float *bias, int N) {
    CHECK(N > 0, "quant_linear_forward: N = %d", N);
    const Kernels *kr = kernels();
    ActPrep a;
    prep_acts(&a, x, w, N);
    const int M = w->rows;
    // Token blocks keep a few activation rows hot while every weight row streams past once.
    const int NB = 8;
#pragma omp parallel
    for (int n0 = 0; n0 < N; n0 += NB) {
        int n1 = n0 + NB < N ? n0 + NB : N;
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) {
            float b = bias ? bias[m] : 0.0f;
            for (int n = n0; n < n1; n++) out[(size_t)n * (size_t)M + (size_t)m] = row_dot(kr, w, &a, x, n, m) + b;
        }
    }
    free_acts(&a);
}
