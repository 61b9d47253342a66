// bf16 rounding of 16 fp32 lanes for the AVX-512 optimizer steps (optim/adamw_cpu.c,
// optim/lowbit.c): lowbit_bf16_rne, lowbit_bf16_sr and lowbit_sr_bits of lowbit.h, lane by
// lane, the same bits. Included only where __x86_64__ and GCC-style target attributes exist.
#ifndef LLAMA_AO_OPTIM_BF16_X86_H
#define LLAMA_AO_OPTIM_BF16_X86_H

#include <immintrin.h>
#include <stdint.h>

// lowbit_bf16_rne in 16 lanes (NaN -> 0x7FC0), narrowed to 16 bits.
__attribute__((target("avx512f"))) static inline __m256i bf16_rne16(__m512 p) {
    const __m512i u = _mm512_castps_si512(p);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    r = _mm512_mask_mov_epi32(_mm512_srli_epi32(r, 16), _mm512_cmp_ps_mask(p, p, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    return _mm512_cvtepi32_epi16(r);
}

// lowbit_bf16_sr in 16 lanes given the lanes' random bits r (low 16 bits used): away from
// zero when r < the 16 dropped bits; NaN -> 0x7FC0.
__attribute__((target("avx512f"))) static inline __m256i bf16_sr16(__m512 p, __m512i r) {
    const __m512i u = _mm512_castps_si512(p);
    __m512i t = _mm512_and_si512(u, _mm512_set1_epi32((int)0xFFFF0000u));
    t = _mm512_mask_add_epi32(t, _mm512_cmplt_epu32_mask(_mm512_and_si512(r, _mm512_set1_epi32(0xFFFF)),
                                                         _mm512_and_si512(u, _mm512_set1_epi32(0xFFFF))),
                              t, _mm512_set1_epi32(0x10000));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(t, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(_mm512_srli_epi32(t, 16), nan, _mm512_set1_epi32(0x7FC0)));
}

// lowbit_sr_bits for 8 consecutive indices: base = seed ^ step * C2 (the step's part of the
// first mix), idx the 64-bit element indices.
__attribute__((target("avx512f,avx512dq"))) static inline __m512i sr_bits8(__m512i idx, __m512i base) {
    __m512i z = _mm512_xor_si512(base, _mm512_mullo_epi64(idx, _mm512_set1_epi64((long long)0x9E3779B97F4A7C15ull)));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ull));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64((long long)0x94D049BB133111EBull));
    z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
    return _mm512_srli_epi64(z, 48);
}

// lowbit_sr_bits(seed, step, first + k) for k = 0..15, one per 32-bit lane.
__attribute__((target("avx512f,avx512dq"))) static inline __m512i sr_bits16(uint64_t seed, int step, uint64_t first) {
    const __m512i base = _mm512_set1_epi64((long long)(seed ^ ((uint64_t)(uint32_t)step * 0xC2B2AE3D27D4EB4Full)));
    const __m512i idx = _mm512_add_epi64(_mm512_set1_epi64((long long)first), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(sr_bits8(idx, base))),
                              _mm512_cvtepi64_epi32(sr_bits8(_mm512_add_epi64(idx, _mm512_set1_epi64(8)), base)), 1);
}

#endif
