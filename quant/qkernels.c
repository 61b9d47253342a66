// Dot-product kernels of the quantized linears, in portable C, AVX2 (+FMA) and AVX-512
// (+VNNI), picked at run time. The C versions define the results; the SIMD versions
// reproduce them bit for bit:
//   - float kernels keep 16 lane accumulators, element k goes to lane k % 16 with one
//     fused multiply-add (fmaf), and the lanes are reduced by one fixed tree (reduce16);
//   - integer kernels (8da4w) sum exactly in int32, in any order.
// 16-bit weights (bf16 / f16 of a mapped -q none model) are expanded exactly to fp32 in the
// register and then take the fp32 kernel's path, so they give the fp32 copy's bits. The fp8
// activations are decoded to fp32 once per token (exact), not once per weight row.
// The SIMD functions are compiled with target attributes, so the library still runs on
// any x86-64 (and the C path everywhere else).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../model/safetensors.h"
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

static inline float bf16_bits(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float dot_bf16_c(const float *x, const uint16_t *w, int K) {
    float a[16] = {0};
    for (int k = 0; k < K; k++) a[k & 15] = fmaf(x[k], bf16_bits(w[k]), a[k & 15]);
    return reduce16(a);
}

static float dot_f16_c(const float *x, const uint16_t *w, int K) {
    float a[16] = {0};
    for (int k = 0; k < K; k++) a[k & 15] = fmaf(x[k], f16_to_f32(w[k]), a[k & 15]);
    return reduce16(a);
}

// 16-bit weights expanded to fp32 (exact), for a row reused by several tokens.
static void widen_bf16_c(float *out, const uint16_t *w, int K) {
    for (int k = 0; k < K; k++) out[k] = bf16_bits(w[k]);
}

static void widen_f16_c(float *out, const uint16_t *w, int K) {
    for (int k = 0; k < K; k++) out[k] = f16_to_f32(w[k]);
}

// xf: the token's e4m3 activations decoded to fp32 (exact); xb: the same as bf16 pairs for the
// AVX512_BF16 kernel (NULL for the others, see pack_bf16_pairs).
static float dot_fp8_c(const float *xf, const uint16_t *xb, const uint8_t *wq, int K) {
    (void)xb;
    float a[16] = {0};
    for (int k = 0; k < K; k++) a[k & 15] = fmaf(xf[k], e4m3_bits(wq[k]), a[k & 15]);
    return reduce16(a);
}

typedef struct {
    float (*f32)(const float *, const float *, int);
    float (*bf16)(const float *, const uint16_t *, int);
    float (*f16)(const float *, const uint16_t *, int);
    void (*widen_bf16)(float *, const uint16_t *, int);
    void (*widen_f16)(float *, const uint16_t *, int);
    float (*i8)(const float *, const int8_t *, int);
    float (*i4)(const float *, const uint8_t *, const float *, const float *, const float *, int, int);
    int32_t (*u4s8)(const uint8_t *, const int8_t *, int, int);
    float (*fp8)(const float *, const uint16_t *, const uint8_t *, int);
    int fp8_pairs;  // fp8 wants the bf16-pair activations
} Kernels;

static const Kernels K_C = {dot_f32_c, dot_bf16_c, dot_f16_c, widen_bf16_c, widen_f16_c,
                            dot_i8_c, dot_i4_c, idot_u4s8_c, dot_fp8_c, 0};

// The word order of a 32-element block for vdpbf16ps (see below): word 2j+1 = element j,
// word 2j = element 16+j.
static inline int pair_pos(int i) { return i < 16 ? 2 * i + 1 : 2 * (i - 16); }

#ifdef QK_X86
// ---- AVX2 + FMA -----------------------------------------------------------------------------
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))

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

// 8 bf16 -> fp32: the bits moved to the top half (exact).
T_AVX2 static inline __m256 bf16x8_avx2(const uint16_t *w) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w)), 16));
}

// Tails of the 16-bit kernels: the remaining elements into their lanes, then the reduction.
static inline float finish_w16(float *a, int k, int K, const float *x, const uint16_t *w, int bf) {
    for (; k < K; k++) a[k & 15] = fmaf(x[k], bf ? bf16_bits(w[k]) : f16_to_f32(w[k]), a[k & 15]);
    return reduce16(a);
}

T_AVX2 static float dot_bf16_avx2(const float *x, const uint16_t *w, int K) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), bf16x8_avx2(w + k), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), bf16x8_avx2(w + k + 8), hi);
    }
    float a[16];
    _mm256_storeu_ps(a, lo);
    _mm256_storeu_ps(a + 8, hi);
    return finish_w16(a, k, K, x, w, 1);
}

// vcvtph2ps converts every half exactly, subnormals included (test_quant runs every code).
T_AVX2 static float dot_f16_avx2(const float *x, const uint16_t *w, int K) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k))), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k + 8))),
                             hi);
    }
    float a[16];
    _mm256_storeu_ps(a, lo);
    _mm256_storeu_ps(a + 8, hi);
    return finish_w16(a, k, K, x, w, 0);
}

T_AVX2 static void widen_bf16_avx2(float *out, const uint16_t *w, int K) {
    int k = 0;
    for (; k + 8 <= K; k += 8) _mm256_storeu_ps(out + k, bf16x8_avx2(w + k));
    for (; k < K; k++) out[k] = bf16_bits(w[k]);
}

T_AVX2 static void widen_f16_avx2(float *out, const uint16_t *w, int K) {
    int k = 0;
    for (; k + 8 <= K; k += 8) _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k))));
    for (; k < K; k++) out[k] = f16_to_f32(w[k]);
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

T_AVX2 static float dot_fp8_avx2(const float *xf, const uint16_t *xb, const uint8_t *wq, int K) {
    (void)xb;
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(xf + k), e4m3x8_avx2(wq + k), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(xf + k + 8), e4m3x8_avx2(wq + k + 8), hi);
    }
    float a[16];
    _mm256_storeu_ps(a, lo);
    _mm256_storeu_ps(a + 8, hi);
    for (; k < K; k++) a[k & 15] = fmaf(xf[k], e4m3_bits(wq[k]), a[k & 15]);
    return reduce16(a);
}

static const Kernels K_AVX2 = {dot_f32_avx2, dot_bf16_avx2, dot_f16_avx2, widen_bf16_avx2, widen_f16_avx2,
                               dot_i8_avx2, dot_i4_avx2, idot_u4s8_avx2, dot_fp8_avx2, 0};

// ---- AVX-512 (F, BW, VL, VNNI) --------------------------------------------------------------
#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

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

T_512 static float dot_bf16_512(const float *x, const uint16_t *w, int K) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512i b = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + k))), 16);
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_castsi512_ps(b), acc);
    }
    float a[16];
    _mm512_storeu_ps(a, acc);
    return finish_w16(a, k, K, x, w, 1);
}

T_512 static void widen_bf16_512(float *out, const uint16_t *w, int K) {
    int k = 0;
    for (; k + 16 <= K; k += 16)
        _mm512_storeu_si512(out + k, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + k))), 16));
    for (; k < K; k++) out[k] = bf16_bits(w[k]);
}

T_512 static void widen_f16_512(float *out, const uint16_t *w, int K) {
    int k = 0;
    for (; k + 16 <= K; k += 16) _mm512_storeu_ps(out + k, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + k))));
    for (; k < K; k++) out[k] = f16_to_f32(w[k]);
}

T_512 static float dot_f16_512(const float *x, const uint16_t *w, int K) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + k))), acc);
    float a[16];
    _mm512_storeu_ps(a, acc);
    return finish_w16(a, k, K, x, w, 0);
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

// Elements k0..k0+15 into the 16 lanes (fp32 fma), then the scalar tail: the shared end of
// both AVX-512 fp8 kernels.
T_512 static inline float fp8_tail_512(__m512 acc, int k, int K, const float *xf, const uint8_t *wq) {
    for (; k + 16 <= K; k += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(xf + k), e4m3x16_512(wq + k), acc);
    float a[16];
    _mm512_storeu_ps(a, acc);
    for (; k < K; k++) a[k & 15] = fmaf(xf[k], e4m3_bits(wq[k]), a[k & 15]);
    return reduce16(a);
}

T_512 static float dot_fp8_512(const float *xf, const uint16_t *xb, const uint8_t *wq, int K) {
    (void)xb;
    return fp8_tail_512(_mm512_setzero_ps(), 0, K, xf, wq);
}

static const Kernels K_512 = {dot_f32_512, dot_bf16_512, dot_f16_512, widen_bf16_512, widen_f16_512,
                              dot_i8_512, dot_i4_512, idot_u4s8_512, dot_fp8_512, 0};

// ---- AVX-512 + AVX512_BF16: fp8 x fp8 through vdpbf16ps --------------------------------------
// vdpbf16ps acc, a, b computes per fp32 lane j: acc = fma(a[2j+1], b[2j+1], acc), then
// acc = fma(a[2j], b[2j], acc), each rounded to nearest even (MXCSR ignored; denormal inputs
// and outputs flushed). Every e4m3 value is a bf16 value, the product of two is exact in fp32
// and at least 2^-18 in magnitude, and sums of such products are never fp32 subnormals, so the
// flushing never applies. Feeding lane j the pair (odd: k0+j, even: k0+16+j) for each block of
// 32 is therefore exactly the canonical "lane j takes k = j mod 16, one fma each, in k order".
// The weights are decoded straight to bf16 bits; the activations are packed once per token.
#define T_512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")))

// e4m3 magnitude m (0..127) as bf16 bits: normals (m >= 8) are (m << 4) + (120 << 7), a shift of
// the exponent bias 7 -> 127; the subnormals m * 2^-9 (m < 8) come from this table (vpermw
// looks up 32 entries; only the first 8 are used).
static const uint16_t E4M3_SUB_BF16[32] = {0x0000, 0x3B00, 0x3B80, 0x3BC0, 0x3C00, 0x3C20, 0x3C40, 0x3C60};
// Source element of each word of a block in pair order (word 2j+1 = element j, word 2j = 16+j).
static const uint16_t PAIR_SRC[32] = {16, 0, 17, 1, 18, 2, 19, 3, 20, 4, 21, 5, 22, 6, 23, 7,
                                      24, 8, 25, 9, 26, 10, 27, 11, 28, 12, 29, 13, 30, 14, 31, 15};

T_512BF static inline __m512i e4m3x32_bf16_pairs(const uint8_t *p, __m512i perm, __m512i subtab) {
    __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
    __m512i mag = _mm512_and_si512(v, _mm512_set1_epi16(0x7F));
    __m512i r = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(0x3C00));
    r = _mm512_mask_permutexvar_epi16(r, _mm512_cmplt_epu16_mask(mag, _mm512_set1_epi16(8)), mag, subtab);
    r = _mm512_or_si512(r, _mm512_slli_epi16(_mm512_and_si512(v, _mm512_set1_epi16(0x80)), 8));
    return _mm512_permutexvar_epi16(perm, r);
}

T_512BF static float dot_fp8_512bf(const float *xf, const uint16_t *xb, const uint8_t *wq, int K) {
    const __m512i perm = _mm512_loadu_si512(PAIR_SRC), subtab = _mm512_loadu_si512(E4M3_SUB_BF16);
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(xb + k), (__m512bh)e4m3x32_bf16_pairs(wq + k, perm, subtab));
    return fp8_tail_512(acc, k, K, xf, wq);
}

static const Kernels K_512BF = {dot_f32_512, dot_bf16_512, dot_f16_512, widen_bf16_512, widen_f16_512,
                                dot_i8_512, dot_i4_512, idot_u4s8_512, dot_fp8_512bf, 1};
#endif

// Activations of one token as bf16 pairs for dot_fp8_512bf: each full block of 32 in pair order
// (the fp32 values are e4m3 values, so the top 16 bits are the exact bf16).
static void pack_bf16_pairs(uint16_t *xb, const float *xf, int K) {
    for (int k0 = 0; k0 + 32 <= K; k0 += 32)
        for (int i = 0; i < 32; i++) {
            uint32_t u;
            memcpy(&u, &xf[k0 + i], 4);
            xb[k0 + pair_pos(i)] = (uint16_t)(u >> 16);
        }
}

// ---- selection -----------------------------------------------------------------------------
static int g_best = -1, g_isa = -1;

#ifdef QK_X86
// Known-answer check of vdpbf16ps on this CPU before it is trusted with the canonical order:
// the dot products of random e4m3 rows (both signs, subnormals, the largest values) and of a
// row built so that a single rounding of each pair, or the even element first, would give
// other bits (64 + 2^-18 + 2^-18 rounds back to 64 twice) must equal the C kernel's.
static int bf16_dot_selftest(void) {
    enum { K = 96, ROWS = 64 };
    uint8_t x[K], w[K];
    float xf[K];
    uint16_t xb[K];
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int r = 0; r <= ROWS; r++) {
        for (int k = 0; k < K; k++) {
            if (r < ROWS) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                x[k] = (uint8_t)(s >> 24), w[k] = (uint8_t)(s >> 40);
                if ((x[k] & 0x7F) == 0x7F) x[k] ^= 1;  // no NaN codes
                if ((w[k] & 0x7F) == 0x7F) w[k] ^= 1;
            } else {
                x[k] = w[k] = k < 16 ? 0x50 : 0x01;  // 8 * 8 = 64 in each lane, then 2^-9 * 2^-9 = 2^-18
            }
            xf[k] = e4m3_bits(x[k]);
        }
        pack_bf16_pairs(xb, xf, K);
        float a = dot_fp8_c(xf, NULL, w, K), b = dot_fp8_512bf(xf, xb, w, K);
        if (memcmp(&a, &b, 4) != 0) return 0;
    }
    return 1;
}
#endif

QuantIsa quant_isa_best(void) {
    if (g_best < 0) {
        int b = QISA_C;
#ifdef QK_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
            b = QISA_AVX2;
        if (b == QISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            b = QISA_AVX512;
        if (b == QISA_AVX512 && __builtin_cpu_supports("avx512bf16") && bf16_dot_selftest()) b = QISA_AVX512_BF16;
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
    return isa == QISA_AVX512_BF16 ? "avx512+vnni+bf16"
           : isa == QISA_AVX512    ? "avx512+vnni"
           : isa == QISA_AVX2      ? "avx2+fma"
                                   : "c";
}

static const Kernels *kernels(void) {
#ifdef QK_X86
    switch (quant_get_isa()) {
        case QISA_AVX512_BF16: return &K_512BF;
        case QISA_AVX512: return &K_512;
        case QISA_AVX2: return &K_AVX2;
        default: break;
    }
#endif
    return &K_C;
}

// ---- the linear -----------------------------------------------------------------------------
#ifdef _OPENMP
#include <omp.h>
static int omp_threads(void) { return omp_get_max_threads(); }
static int omp_thread(void) { return omp_get_thread_num(); }
#else
static int omp_threads(void) { return 1; }
static int omp_thread(void) { return 0; }
#endif

// Per-token activation data, prepared once and shared by every output row.
typedef struct {
    float *xsum;     // int4: [N, K/G] sums of x per group
    int8_t *xq;      // 8da4w: [N, K]
    float *x8;       // fp8: [N, K] the e4m3 activations decoded to fp32
    uint16_t *xb;    // fp8 with the AVX512_BF16 kernel: [N, K] the same as bf16 pairs
    float *xs;       // 8da4w / fp8: [N] per-token scale
    int32_t *xzp;    // 8da4w: [N] zero point
    int32_t *xqsum;  // 8da4w: [N, K/G] sums of xq per group
} ActPrep;

static void prep_acts(ActPrep *a, const float *x, const QTensor *w, int N, const Kernels *kr) {
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
        a->x8 = ao_malloc((size_t)N * (size_t)K * sizeof(float));
        if (kr->fp8_pairs) a->xb = ao_malloc((size_t)N * (size_t)K * sizeof(uint16_t));
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
            uint8_t *q = ao_malloc((size_t)K);
            float *xf = a->x8 + (size_t)n * (size_t)K;
            a->xs[n] = quant_act_fp8_row(q, xn, K);
            for (int k = 0; k < K; k++) xf[k] = e4m3_bits(q[k]);
            if (a->xb) pack_bf16_pairs(a->xb + (size_t)n * (size_t)K, xf, K);
            free(q);
        }
    }
}

static void free_acts(ActPrep *a) {
    free(a->xsum);
    free(a->xq);
    free(a->x8);
    free(a->xb);
    free(a->xs);
    free(a->xzp);
    free(a->xqsum);
}

static inline float row_dot(const Kernels *kr, const QTensor *w, const ActPrep *a, const float *x, int n, int m) {
    const int K = w->cols, G = w->group;
    const size_t mk = (size_t)m * (size_t)K, nk = (size_t)n * (size_t)K;
    switch (w->mode) {
        case QUANT_NONE:
            return w->wdtype == QW_BF16  ? kr->bf16(x + nk, w->w16 + mk, K)
                   : w->wdtype == QW_F16 ? kr->f16(x + nk, w->w16 + mk, K)
                                         : kr->f32(x + nk, w->w + mk, K);
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
        case QUANT_FP8: return kr->fp8(a->x8 + nk, a->xb ? a->xb + nk : NULL, w->q + mk, K) * a->xs[n] * w->scale[m];
        default: return 0.0f;
    }
}

void quant_linear_forward(float *out, const float *x, const QTensor *w, const float *bias, int N) {
    CHECK(N > 0, "quant_linear_forward: N = %d", N);
    const Kernels *kr = kernels();
    CHECK(w->mode != QUANT_NONE || (w->wdtype == QW_F32 ? w->w != NULL : w->w16 != NULL),
          "quant_linear_forward: a %dx%d tensor without weights", w->rows, w->cols);
    ActPrep a;
    prep_acts(&a, x, w, N, kr);
    const int M = w->rows, K = w->cols;
    // Token blocks keep a few activation rows hot while every weight row streams past once.
    const int NB = 8;
    // 16-bit weights used by several tokens are widened once per row and block (exactly, so the
    // fp32 kernel on the widened row gives the bits of the 16-bit kernel); one token streams them.
    // Each thread's row starts on its own cache lines: rows sharing a line slow 2 threads by a third.
    const int widen = w->mode == QUANT_NONE && w->wdtype != QW_F32 && N > 1;
    const size_t stride = ((size_t)K + 15) / 16 * 16;  // floats, a multiple of 64 bytes
    float *wide = widen ? aligned_alloc(64, (size_t)omp_threads() * stride * sizeof(float)) : NULL;
    CHECK(!widen || wide, "out of memory (%zu bytes for weight rows)", (size_t)omp_threads() * stride * sizeof(float));
#pragma omp parallel
    {
        float *row = widen ? wide + (size_t)omp_thread() * stride : NULL;
        for (int n0 = 0; n0 < N; n0 += NB) {
            int n1 = n0 + NB < N ? n0 + NB : N;
#pragma omp for schedule(static)
            for (int m = 0; m < M; m++) {
                float b = bias ? bias[m] : 0.0f;
                if (row && n1 - n0 > 1) {
                    const uint16_t *wm = w->w16 + (size_t)m * (size_t)K;
                    if (w->wdtype == QW_BF16) kr->widen_bf16(row, wm, K);
                    else kr->widen_f16(row, wm, K);
                    for (int n = n0; n < n1; n++)
                        out[(size_t)n * (size_t)M + (size_t)m] = kr->f32(x + (size_t)n * (size_t)K, row, K) + b;
                    continue;
                }
                for (int n = n0; n < n1; n++) out[(size_t)n * (size_t)M + (size_t)m] = row_dot(kr, w, &a, x, n, m) + b;
            }
        }
    }
    free(wide);
    free_acts(&a);
}
