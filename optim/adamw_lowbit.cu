// Fused low-bit AdamW kernels (see adamw_lowbit.cuh). Every fp32 operation goes through
// lowbit.h's OPT_* macros (__fmul_rn, __fadd_rn, ...), which nvcc never contracts into FMAs,
// so each element takes the same roundings as the CPU reference and as torchao's compiled
// CPU graph. The block absmax is a max, exact in any order, so the reduction shape is free.
#include "../common/cuda_utils.cuh"
#include "adamw_lowbit.cuh"
#include "lowbit_lut.h"

// torchao's maps (lowbit.h), initialised statically on every device that loads this module.
// Global rather than __constant__ memory: each block copies them to shared memory with
// coalesced loads, where __constant__ would serialise 32 different addresses.
__device__ const float g_qmap_s8[256] = {LOWBIT_QMAP_S8};
__device__ const float g_qmap_u8[256] = {LOWBIT_QMAP_U8};
__device__ const float g_qmap_s4[16] = {LOWBIT_QMAP_S4};
__device__ const float g_qmap_u4[16] = {LOWBIT_QMAP_U4};

struct SrArgs {
    uint64_t seed, offset;
    int step;
};

__device__ __forceinline__ float load_param(const float *master, const bf16 *param, size_t i, int master_mode) {
    if (master_mode == LOWBIT_MASTER_F32) return master[i];
    return lowbit_bf16_to_f32(reinterpret_cast<const uint16_t *>(param)[i]);
}

template <int MASTER>
__device__ __forceinline__ void store_param(float *master, bf16 *param, size_t i, float p, const SrArgs &sr) {
    uint16_t *pb = reinterpret_cast<uint16_t *>(param);
    if (MASTER == LOWBIT_MASTER_F32) {
        master[i] = p;
        if (pb) pb[i] = lowbit_bf16_rne(p);
    } else if (MASTER == LOWBIT_MASTER_BF16) {
        pb[i] = lowbit_bf16_rne(p);
    } else {
        pb[i] = lowbit_bf16_sr(p, lowbit_sr_bits(sr.seed, sr.step, sr.offset + i));
    }
}

// Plain states (fp32, or bf16 with the bf16 masters): one thread per element.
template <int FMT, int MASTER>
__global__ void __launch_bounds__(256) adamw_plain_kernel(float *master, bf16 *param, void *m_, void *v_,
                                                          const float *grad, size_t n, LowbitScalars a, SrArgs sr) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float p = load_param(master, param, i, MASTER), m, v;
    if (FMT == LOWBIT_F32) m = ((const float *)m_)[i], v = ((const float *)v_)[i];
    else m = lowbit_bf16_to_f32(((const uint16_t *)m_)[i]), v = lowbit_bf16_to_f32(((const uint16_t *)v_)[i]);
    p = lowbit_adam_elem(p, grad[i], &m, &v, &a);
    if (FMT == LOWBIT_F32) ((float *)m_)[i] = m, ((float *)v_)[i] = v;
    else ((uint16_t *)m_)[i] = lowbit_bf16_rne(m), ((uint16_t *)v_)[i] = lowbit_bf16_rne(v);
    store_param<MASTER>(master, param, i, p, sr);
}

// Elements per block and map entries of each quantized format.
constexpr int q_block(int f) {
    return f == LOWBIT_4BIT ? LOWBIT_BLOCK_4BIT : f == LOWBIT_FP8 ? LOWBIT_BLOCK_FP8 : LOWBIT_BLOCK_8BIT;
}
constexpr int q_nmap(int f) { return f == LOWBIT_8BIT ? 256 : f == LOWBIT_4BIT ? 16 : 1; }
// Words of the code tables (lowbit_lut.h) of m and v; fp8 has none.
constexpr int q_lut_m(int f) { return f == LOWBIT_8BIT ? (int)LOWBIT_LUT_S8_N : f == LOWBIT_4BIT ? (int)LOWBIT_LUT_S4_N : 1; }
constexpr int q_lut_v(int f) { return f == LOWBIT_8BIT ? (int)LOWBIT_LUT_U8_N : f == LOWBIT_4BIT ? (int)LOWBIT_LUT_U4_N : 1; }

// Quantized states. A warp owns a 256-element chunk — one 8-bit or fp8 block, two 4-bit
// blocks — and lane l its elements [4l, 4l + 4) and [128 + 4l, 128 + 4l + 4): 16-byte loads
// of master and gradient, 8 bytes of bf16, one 32-bit word of 8-bit / fp8 codes or 16 bits of
// 4-bit codes per 4 elements, each warp-wide access contiguous. The block absmax is the
// lanes' own maxima then a butterfly over the warp: a max is exact in any order, NaN
// included (lowbit_max_nan lets any NaN win, and every NaN here is the canonical one the
// GPU's arithmetic returns), so the scale is the one-element-per-thread reduction's. Codes
// come from lowbit_lut_code (one shared-memory table load, the same code as lowbit_code8/4
// for every float: test_lowbit_lut). The CUDA block loads the maps and tables into shared
// memory once and its warps then stride over the chunks. A warp reads its chunk's codes
// and old scales before it writes the new ones, and no other warp touches them.
// VEC = 0: the same element mapping with scalar accesses, for pointers not aligned for the
// vector ones.
constexpr int QK_THREADS = 512, QK_WARPS = QK_THREADS / 32, QK_CHUNK = 256;
static_assert(LOWBIT_BLOCK_8BIT == QK_CHUNK && LOWBIT_BLOCK_FP8 == QK_CHUNK && 2 * LOWBIT_BLOCK_4BIT == QK_CHUNK,
              "a warp's chunk is one 8-bit / fp8 block or two 4-bit blocks");

// torchao's code tables (lowbit_lut.h), static like the maps.
__device__ const uint32_t g_lut_s8[LOWBIT_LUT_S8_N] = {LOWBIT_LUT_S8};
__device__ const uint32_t g_lut_u8[LOWBIT_LUT_U8_N] = {LOWBIT_LUT_U8};
__device__ const uint32_t g_lut_s4[LOWBIT_LUT_S4_N] = {LOWBIT_LUT_S4};
__device__ const uint32_t g_lut_u4[LOWBIT_LUT_U4_N] = {LOWBIT_LUT_U4};

template <bool VEC>
__device__ __forceinline__ void load_f4(float (&d)[4], const float *p) {
    if constexpr (VEC) {
        const float4 t = *reinterpret_cast<const float4 *>(p);
        d[0] = t.x, d[1] = t.y, d[2] = t.z, d[3] = t.w;
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) d[j] = p[j];
    }
}
template <bool VEC>
__device__ __forceinline__ void load_f4_stream(float (&d)[4], const float *p) {  // read once: evict first
    if constexpr (VEC) {
        const float4 t = __ldcs(reinterpret_cast<const float4 *>(p));
        d[0] = t.x, d[1] = t.y, d[2] = t.z, d[3] = t.w;
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) d[j] = __ldcs(p + j);
    }
}
template <bool VEC>
__device__ __forceinline__ void store_f4(float *p, const float (&d)[4]) {
    if constexpr (VEC) *reinterpret_cast<float4 *>(p) = make_float4(d[0], d[1], d[2], d[3]);
    else
#pragma unroll
        for (int j = 0; j < 4; j++) p[j] = d[j];
}
template <bool VEC>
__device__ __forceinline__ void load_h4(uint16_t (&d)[4], const uint16_t *p) {
    if constexpr (VEC) {
        const uint2 t = *reinterpret_cast<const uint2 *>(p);
        d[0] = (uint16_t)t.x, d[1] = (uint16_t)(t.x >> 16), d[2] = (uint16_t)t.y, d[3] = (uint16_t)(t.y >> 16);
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) d[j] = p[j];
    }
}
template <bool VEC>
__device__ __forceinline__ void store_h4(uint16_t *p, const uint16_t (&d)[4]) {
    if constexpr (VEC)
        *reinterpret_cast<uint2 *>(p) = make_uint2((uint32_t)d[0] | (uint32_t)d[1] << 16, (uint32_t)d[2] | (uint32_t)d[3] << 16);
    else
#pragma unroll
        for (int j = 0; j < 4; j++) p[j] = d[j];
}

// The codes of elements [i, i + 4): 8-bit / fp8 one byte each, element j in bits 8j..8j+7
// (little-endian word); 4-bit two per byte, the even element in the high nibble (lowbit.h).
template <int FMT, bool VEC>
__device__ __forceinline__ uint32_t load_codes(const uint8_t *c, size_t i) {
    if constexpr (FMT == LOWBIT_4BIT) {
        const uint8_t *q = c + i / 2;
        if constexpr (VEC) return *reinterpret_cast<const uint16_t *>(q);
        else return (uint32_t)q[0] | (uint32_t)q[1] << 8;
    } else {
        const uint8_t *q = c + i;
        if constexpr (VEC) return *reinterpret_cast<const uint32_t *>(q);
        else return (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
    }
}
template <int FMT, bool VEC>
__device__ __forceinline__ void store_codes(uint8_t *c, size_t i, uint32_t w) {
    if constexpr (FMT == LOWBIT_4BIT) {
        uint8_t *q = c + i / 2;
        if constexpr (VEC) *reinterpret_cast<uint16_t *>(q) = (uint16_t)w;
        else q[0] = (uint8_t)w, q[1] = (uint8_t)(w >> 8);
    } else {
        uint8_t *q = c + i;
        if constexpr (VEC) *reinterpret_cast<uint32_t *>(q) = w;
        else q[0] = (uint8_t)w, q[1] = (uint8_t)(w >> 8), q[2] = (uint8_t)(w >> 16), q[3] = (uint8_t)(w >> 24);
    }
}
template <int FMT>
__device__ __forceinline__ unsigned code_at(uint32_t w, int j) {
    if constexpr (FMT == LOWBIT_4BIT) return (w >> (8 * (j >> 1) + ((j & 1) ? 0 : 4))) & 15u;
    else return (w >> (8 * j)) & 255u;
}
template <int FMT>
__device__ __forceinline__ uint32_t code_put(unsigned code, int j) {
    if constexpr (FMT == LOWBIT_4BIT) return (uint32_t)code << (8 * (j >> 1) + ((j & 1) ? 0 : 4));
    else return (uint32_t)code << (8 * j);
}

// Dequantized state: map[code] * scale (fp8: the e4m3 value * scale), as the CPU's dequant_one.
template <int FMT>
__device__ __forceinline__ float dequant(unsigned code, const float *q, float scale) {
    if constexpr (FMT == LOWBIT_FP8) return OPT_MUL(lowbit_e4m3_to_f32((uint8_t)code), scale);
    else return OPT_MUL(q[code], scale);
}
// New code of x (already divided by its scale): torchao's search, from the table.
template <int FMT, int SIGNED>
__device__ __forceinline__ unsigned quant(float x, const uint32_t *t) {
    if constexpr (FMT == LOWBIT_FP8) return lowbit_e4m3(x);
    else if constexpr (FMT == LOWBIT_8BIT)
        return SIGNED ? lowbit_lut_code(x, t, LOWBIT_LUT_S8_LO, LOWBIT_LUT_S8_SHIFT, 1)
                      : lowbit_lut_code(x, t, LOWBIT_LUT_U8_LO, LOWBIT_LUT_U8_SHIFT, 0);
    else
        return SIGNED ? lowbit_lut_code(x, t, LOWBIT_LUT_S4_LO, LOWBIT_LUT_S4_SHIFT, 1)
                      : lowbit_lut_code(x, t, LOWBIT_LUT_U4_LO, LOWBIT_LUT_U4_SHIFT, 0);
}

template <int MASTER, bool VEC>
__device__ __forceinline__ void load_p4(float (&p)[4], const float *master, const uint16_t *param, size_t i) {
    if constexpr (MASTER == LOWBIT_MASTER_F32) {
        load_f4<VEC>(p, master + i);
    } else {
        uint16_t h[4];
        load_h4<VEC>(h, param + i);
#pragma unroll
        for (int j = 0; j < 4; j++) p[j] = lowbit_bf16_to_f32(h[j]);
    }
}
// store_param for elements [i, i + 4).
template <int MASTER, bool VEC>
__device__ __forceinline__ void store_p4(float *master, uint16_t *param, size_t i, const float (&p)[4], const SrArgs &sr) {
    uint16_t h[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
        h[j] = MASTER == LOWBIT_MASTER_BF16_SR ? lowbit_bf16_sr(p[j], lowbit_sr_bits(sr.seed, sr.step, sr.offset + i + j))
                                               : lowbit_bf16_rne(p[j]);
    if constexpr (MASTER == LOWBIT_MASTER_F32) {
        store_f4<VEC>(master + i, p);
        if (param) store_h4<VEC>(param + i, h);
    } else {
        store_h4<VEC>(param + i, h);
    }
}

template <int FMT, int MASTER, bool VEC>
__global__ void __launch_bounds__(QK_THREADS)
    adamw_quant_kernel(float *master, bf16 *param_, uint8_t *mc, uint8_t *vc, float *ms, float *vs, const float *grad,
                       size_t n_blocks, LowbitScalars a, SrArgs sr) {
    constexpr int NQ = q_nmap(FMT), NTM = q_lut_m(FMT), NTV = q_lut_v(FMT);
    constexpr int HB = FMT == LOWBIT_4BIT ? 2 : 1;  // quantization blocks per chunk
    __shared__ float qm[NQ], qv[NQ];                // maps: dequantization
    __shared__ uint32_t tm[NTM], tv[NTV];           // code tables: quantization
    if constexpr (FMT == LOWBIT_8BIT) {
        for (int k = threadIdx.x; k < NQ; k += QK_THREADS) qm[k] = g_qmap_s8[k], qv[k] = g_qmap_u8[k];
        for (int k = threadIdx.x; k < NTM; k += QK_THREADS) tm[k] = g_lut_s8[k];
        for (int k = threadIdx.x; k < NTV; k += QK_THREADS) tv[k] = g_lut_u8[k];
    } else if constexpr (FMT == LOWBIT_4BIT) {
        for (int k = threadIdx.x; k < NQ; k += QK_THREADS) qm[k] = g_qmap_s4[k], qv[k] = g_qmap_u4[k];
        for (int k = threadIdx.x; k < NTM; k += QK_THREADS) tm[k] = g_lut_s4[k];
        for (int k = threadIdx.x; k < NTV; k += QK_THREADS) tv[k] = g_lut_u4[k];
    }
    __syncthreads();
    uint16_t *param = reinterpret_cast<uint16_t *>(param_);
    const int lane = threadIdx.x % 32;
    const size_t n_chunks = (n_blocks + HB - 1) / HB;
#pragma unroll 1  // one copy of the body: it is long, and the loads inside already overlap
    for (size_t c = (size_t)blockIdx.x * QK_WARPS + threadIdx.x / 32; c < n_chunks; c += (size_t)gridDim.x * QK_WARPS) {
        // 4-bit: a tensor of an odd number of blocks ends in a chunk of one (warp-uniform)
        const int halves = HB == 2 && 2 * c + 1 >= n_blocks ? 1 : 2;
        float p[2][4], g[2][4], m[2][4], v[2][4], sm[HB], sv[HB];
        uint32_t wm[2], wv[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {  // every load first: they are all in flight together
            if (h >= halves) break;
            const size_t i = c * QK_CHUNK + h * (QK_CHUNK / 2) + lane * 4;
            load_p4<MASTER, VEC>(p[h], master, param, i);
            load_f4_stream<VEC>(g[h], grad + i);
            wm[h] = load_codes<FMT, VEC>(mc, i);
            wv[h] = load_codes<FMT, VEC>(vc, i);
            if (h < HB) sm[h] = ms[c * HB + h], sv[h] = vs[c * HB + h];
        }
        float am[HB], av[HB];
#pragma unroll
        for (int r = 0; r < HB; r++) am[r] = 0.0f, av[r] = 0.0f;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            if (h >= halves) break;
            const int r = HB == 2 ? h : 0;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                m[h][j] = dequant<FMT>(code_at<FMT>(wm[h], j), qm, sm[r]);
                v[h][j] = dequant<FMT>(code_at<FMT>(wv[h], j), qv, sv[r]);
                p[h][j] = lowbit_adam_elem(p[h][j], g[h][j], &m[h][j], &v[h][j], &a);
                am[r] = lowbit_max_nan(am[r], fabsf(m[h][j]));
                av[r] = lowbit_max_nan(av[r], fabsf(v[h][j]));
            }
            store_p4<MASTER, VEC>(master, param, c * QK_CHUNK + h * (QK_CHUNK / 2) + lane * 4, p[h], sr);
        }
#pragma unroll
        for (int r = 0; r < HB; r++) {
            if (r >= halves) break;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                am[r] = lowbit_max_nan(am[r], __shfl_xor_sync(0xffffffffu, am[r], o));
                av[r] = lowbit_max_nan(av[r], __shfl_xor_sync(0xffffffffu, av[r], o));
            }
            am[r] = lowbit_max_nan(am[r], 1e-12f), av[r] = lowbit_max_nan(av[r], 1e-12f);
            if constexpr (FMT == LOWBIT_FP8) am[r] = OPT_DIV(am[r], 448.0f), av[r] = OPT_DIV(av[r], 448.0f);
            if (lane == 0) ms[c * HB + r] = am[r], vs[c * HB + r] = av[r];
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            if (h >= halves) break;
            const int r = HB == 2 ? h : 0;
            uint32_t om = 0, ov = 0;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                om |= code_put<FMT>(quant<FMT, 1>(OPT_DIV(m[h][j], am[r]), tm), j);
                ov |= code_put<FMT>(quant<FMT, 0>(OPT_DIV(v[h][j], av[r]), tv), j);
            }
            const size_t i = c * QK_CHUNK + h * (QK_CHUNK / 2) + lane * 4;
            store_codes<FMT, VEC>(mc, i, om);
            store_codes<FMT, VEC>(vc, i, ov);
        }
    }
}

template <int FMT, int MASTER>
static void launch(float *master, bf16 *param, const LowbitState &st, const float *grad, const LowbitScalars &a,
                   const SrArgs &sr, cudaStream_t stream) {
    if constexpr (FMT == LOWBIT_F32 || FMT == LOWBIT_BF16) {
        unsigned grid = (unsigned)ceil_div_sz(st.n, 256);
        adamw_plain_kernel<FMT, MASTER><<<grid, 256, 0, stream>>>(master, param, st.m, st.v, grad, st.n, a, sr);
    } else {
        // vector accesses: 16 bytes of fp32 and 8 of bf16 at every 4th element, codes of 4 elements
        const size_t code_align = FMT == LOWBIT_4BIT ? 2 : 4;
        const bool vec = (MASTER != LOWBIT_MASTER_F32 || is_aligned16(master)) && is_aligned16(grad) &&
                         ((uintptr_t)param & 7) == 0 && (uintptr_t)st.m % code_align == 0 &&
                         (uintptr_t)st.v % code_align == 0;
        auto kernel = vec ? adamw_quant_kernel<FMT, MASTER, true> : adamw_quant_kernel<FMT, MASTER, false>;
        // As many CUDA blocks as the GPU holds at once, at most one chunk per warp; each then
        // strides over the chunks, so the maps and tables are loaded once per block.
        int dev = 0, sms = 0, per_sm = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, QK_THREADS, 0));
        const size_t n_blocks = st.n / q_block(FMT), n_chunks = (st.n + QK_CHUNK - 1) / QK_CHUNK;
        const size_t want = ceil_div_sz(n_chunks, QK_WARPS), cap = (size_t)(sms > 0 ? sms : 1) * (per_sm > 0 ? per_sm : 1);
        const unsigned grid = (unsigned)(want < cap ? want : cap);
        kernel<<<grid, QK_THREADS, 0, stream>>>(master, param, (uint8_t *)st.m, (uint8_t *)st.v, st.m_scale, st.v_scale,
                                                grad, n_blocks, a, sr);
    }
    CUDA_CHECK_LAST();
}

template <int FMT>
static void launch_fmt(float *master, bf16 *param, const LowbitState &st, const float *grad, const LowbitScalars &a,
                       const SrArgs &sr, LowbitMaster mode, cudaStream_t stream) {
    switch (mode) {
        case LOWBIT_MASTER_F32: launch<FMT, LOWBIT_MASTER_F32>(master, param, st, grad, a, sr, stream); break;
        case LOWBIT_MASTER_BF16: launch<FMT, LOWBIT_MASTER_BF16>(master, param, st, grad, a, sr, stream); break;
        default: launch<FMT, LOWBIT_MASTER_BF16_SR>(master, param, st, grad, a, sr, stream); break;
    }
}

void adamw_lowbit_update(float *master, bf16 *param, LowbitState st, const float *grad, const LowbitStep *s,
                         cudaStream_t stream) {
    lowbit_check_step(master, reinterpret_cast<const uint16_t *>(param), &st, s);
    CHECK(st.n / 128 < (size_t)INT32_MAX, "adamw_lowbit_update: %zu elements exceed the grid", st.n);
    if (st.n == 0) return;
    const LowbitScalars a = lowbit_scalars(s);
    const SrArgs sr = {s->seed, s->sr_offset, s->step};
    switch (st.fmt) {
        case LOWBIT_F32: launch_fmt<LOWBIT_F32>(master, param, st, grad, a, sr, s->master, stream); break;
        case LOWBIT_BF16: launch_fmt<LOWBIT_BF16>(master, param, st, grad, a, sr, s->master, stream); break;
        case LOWBIT_8BIT: launch_fmt<LOWBIT_8BIT>(master, param, st, grad, a, sr, s->master, stream); break;
        case LOWBIT_4BIT: launch_fmt<LOWBIT_4BIT>(master, param, st, grad, a, sr, s->master, stream); break;
        case LOWBIT_FP8: launch_fmt<LOWBIT_FP8>(master, param, st, grad, a, sr, s->master, stream); break;
        default: FAIL("adamw_lowbit_update: unknown state format %d", (int)st.fmt);
    }
}
