// AdamW on the CPU (offload): the pinned element update of adamw_cpu.h in three variants
// that give identical bits: AVX-512 (16 lanes, masked tail), AVX2+FMA (8 lanes, scalar tail)
// and scalar C (fmaf). OpenMP splits the tensor into fixed chunks; elements are independent,
// so neither the chunking nor the thread count changes a bit.
#if defined(__GNUC__) && !defined(__clang__)
// Only the FMAs written out may fuse: a target("avx512f") function could otherwise contract
// _mm512_mul_ps + _mm512_add_ps (GCC implements them as vector * and +).
#pragma GCC optimize("fp-contract=off")
#endif
#include "adamw_cpu.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../common/error.h"

#define ADAMW_CHUNK ((size_t)1 << 16)  // elements per OpenMP work item (a multiple of 16)

AdamwScalars adamw_scalars(float lr, float b1, float b2, float eps, float wd, int step, float grad_scale) {
    CHECK(step >= 1, "adamw: step must be >= 1 (bias correction), got %d", step);
    AdamwScalars a;
    double bc1 = 1.0 - pow((double)b1, step), bc2 = 1.0 - pow((double)b2, step);
    a.decay = (float)(1.0 - (double)lr * wd);
    a.one_m_b1 = (float)(1.0 - (double)b1);
    a.b2 = b2;
    a.one_m_b2 = (float)(1.0 - (double)b2);
    a.step_size = (float)(lr / bc1);
    a.bc2_sqrt = (float)sqrt(bc2);
    a.eps = eps;
    a.grad_scale = grad_scale;
    return a;
}

static void chunk_scalar(float *master, uint16_t *param, const float *grad, float *m, float *v, size_t i0, size_t i1,
                         const AdamwScalars *a) {
    for (size_t i = i0; i < i1; i++) {
        master[i] = adamw_elem(master[i], grad[i], &m[i], &v[i], a);
        if (param) param[i] = lowbit_bf16_rne(master[i]);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86_VARIANTS 1

__attribute__((target("avx512f"))) static void chunk_avx512(float *master, uint16_t *param, const float *grad, float *m,
                                                            float *v, size_t i0, size_t i1, const AdamwScalars *a) {
    const __m512 gs = _mm512_set1_ps(a->grad_scale), decay = _mm512_set1_ps(a->decay), w1 = _mm512_set1_ps(a->one_m_b1),
                 b2 = _mm512_set1_ps(a->b2), w2 = _mm512_set1_ps(a->one_m_b2), nstep = _mm512_set1_ps(-a->step_size),
                 bc = _mm512_set1_ps(a->bc2_sqrt), eps = _mm512_set1_ps(a->eps);
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF), qnan = _mm512_set1_epi32(0x7FC0);
    for (size_t i = i0; i < i1; i += 16) {
        // The last vector of the tensor is masked: lanes past i1 neither load nor store.
        __mmask16 k = i1 - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (i1 - i)) - 1);
        __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, grad + i), gs);
        __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, master + i), decay);
        __m512 mm = _mm512_maskz_loadu_ps(k, m + i), vv = _mm512_maskz_loadu_ps(k, v + i);
        mm = _mm512_fmadd_ps(w1, _mm512_sub_ps(g, mm), mm);
        vv = _mm512_fmadd_ps(w2, _mm512_mul_ps(g, g), _mm512_mul_ps(vv, b2));
        __m512 den = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vv), bc), eps);
        p = _mm512_fmadd_ps(nstep, _mm512_div_ps(mm, den), p);
        _mm512_mask_storeu_ps(master + i, k, p);
        _mm512_mask_storeu_ps(m + i, k, mm);
        _mm512_mask_storeu_ps(v + i, k, vv);
        if (param) {  // lowbit_bf16_rne in 16 lanes
            __m512i u = _mm512_castps_si512(p);
            __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
            r = _mm512_mask_mov_epi32(_mm512_srli_epi32(r, 16), _mm512_cmp_ps_mask(p, p, _CMP_UNORD_Q), qnan);
            __m256i h = _mm512_cvtepi32_epi16(r);
            if (k == 0xFFFF) _mm256_storeu_si256((__m256i *)(param + i), h);
            else {  // a 16-bit masked store needs AVX512BW+VL: the tail goes through memory
                uint16_t t[16];
                _mm256_storeu_si256((__m256i *)t, h);
                memcpy(param + i, t, (i1 - i) * sizeof(uint16_t));
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void chunk_avx2(float *master, uint16_t *param, const float *grad, float *m,
                                                           float *v, size_t i0, size_t i1, const AdamwScalars *a) {
    const __m256 gs = _mm256_set1_ps(a->grad_scale), decay = _mm256_set1_ps(a->decay), w1 = _mm256_set1_ps(a->one_m_b1),
                 b2 = _mm256_set1_ps(a->b2), w2 = _mm256_set1_ps(a->one_m_b2), nstep = _mm256_set1_ps(-a->step_size),
                 bc = _mm256_set1_ps(a->bc2_sqrt), eps = _mm256_set1_ps(a->eps);
    const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7FFF), qnan = _mm256_set1_epi32(0x7FC0);
    size_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(grad + i), gs);
        __m256 p = _mm256_mul_ps(_mm256_loadu_ps(master + i), decay);
        __m256 mm = _mm256_loadu_ps(m + i), vv = _mm256_loadu_ps(v + i);
        mm = _mm256_fmadd_ps(w1, _mm256_sub_ps(g, mm), mm);
        vv = _mm256_fmadd_ps(w2, _mm256_mul_ps(g, g), _mm256_mul_ps(vv, b2));
        __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), bc), eps);
        p = _mm256_fmadd_ps(nstep, _mm256_div_ps(mm, den), p);
        _mm256_storeu_ps(master + i, p);
        _mm256_storeu_ps(m + i, mm);
        _mm256_storeu_ps(v + i, vv);
        if (param) {
            __m256i u = _mm256_castps_si256(p);
            __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
            r = _mm256_srli_epi32(r, 16);
            r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(p, p, _CMP_UNORD_Q)));
            // packus works per 128-bit lane: [r0..3 r0..3 | r4..7 r4..7]; qwords 0 and 2 hold r0..7
            __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
            _mm_storeu_si128((__m128i *)(param + i), _mm256_castsi256_si128(pk));
        }
    }
    chunk_scalar(master, param, grad, m, v, i, i1, a);
}
#endif

static int g_isa = -1;  // -1: not chosen yet

AdamwIsa adamw_cpu_isa_best(void) {
#ifdef HAVE_X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return ADAMW_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ADAMW_ISA_AVX2;
#endif
    return ADAMW_ISA_SCALAR;
}

void adamw_cpu_set_isa(AdamwIsa isa) {
    AdamwIsa best = adamw_cpu_isa_best();
    g_isa = (int)(isa > best ? best : isa);
}

AdamwIsa adamw_cpu_get_isa(void) {
    if (g_isa < 0) g_isa = (int)adamw_cpu_isa_best();
    return (AdamwIsa)g_isa;
}

const char *adamw_cpu_isa_name(AdamwIsa isa) {
    return isa == ADAMW_ISA_AVX512 ? "avx512" : isa == ADAMW_ISA_AVX2 ? "avx2" : "scalar";
}

void adamw_update_cpu(float *master, uint16_t *param, const float *grad, float *m, float *v, size_t n, float lr,
                      float b1, float b2, float eps, float wd, int step, float grad_scale) {
    const AdamwScalars a = adamw_scalars(lr, b1, b2, eps, wd, step, grad_scale);
    const AdamwIsa isa = adamw_cpu_get_isa();
    const long nchunks = (long)((n + ADAMW_CHUNK - 1) / ADAMW_CHUNK);
#pragma omp parallel for schedule(static)
    for (long c = 0; c < nchunks; c++) {
        size_t i0 = (size_t)c * ADAMW_CHUNK, i1 = i0 + ADAMW_CHUNK < n ? i0 + ADAMW_CHUNK : n;
#ifdef HAVE_X86_VARIANTS
        if (isa == ADAMW_ISA_AVX512) chunk_avx512(master, param, grad, m, v, i0, i1, &a);
        else if (isa == ADAMW_ISA_AVX2) chunk_avx2(master, param, grad, m, v, i0, i1, &a);
        else
#endif
            chunk_scalar(master, param, grad, m, v, i0, i1, &a);
    }
    (void)isa;
}

void adamw_lowbit_update_cpu(float *master, uint16_t *param, const LowbitState *st, const float *grad,
                             const LowbitStep *s) {
    lowbit_check_step(master, param, st, s);
    const LowbitScalars a = lowbit_scalars(s);
    const long nu = (long)lowbit_step_units(st);
#pragma omp parallel for schedule(static)
    for (long u = 0; u < nu; u++) lowbit_step_unit(master, param, st, grad, s, &a, NULL, (size_t)u);
}
