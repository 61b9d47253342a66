// Fused low-bit AdamW kernels (see adamw_lowbit.cuh). Every fp32 operation goes through
// lowbit.h's OPT_* macros (__fmul_rn, __fadd_rn, ...), which nvcc never contracts into FMAs,
// so each element takes the same roundings as the CPU reference and as torchao's compiled
// CPU graph. The block absmax is a max, exact in any order, so the reduction shape is free.
#include "../common/cuda_utils.cuh"
#include "adamw_lowbit.cuh"

// torchao's maps (lowbit.h), initialised statically on every device that loads this module.
// Global rather than __constant__ memory: each block copies them to shared memory with one
// coalesced load per thread, where __constant__ would serialise 32 different addresses.
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
// One thread per element in whole warps (the 4-bit pairing shuffles within a warp), and the
// 8-bit map loaded one entry per thread.
static_assert(LOWBIT_BLOCK_8BIT == 256 && LOWBIT_BLOCK_FP8 % 32 == 0 && LOWBIT_BLOCK_4BIT % 32 == 0,
              "block sizes the kernels assume");

// Block max of two values across the CUDA block (NaN wins, as inductor's reduction).
template <int BS>
__device__ __forceinline__ void block_absmax2(float &x, float &y, float (*red)[BS / 32]) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        x = lowbit_max_nan(x, __shfl_xor_sync(0xffffffffu, x, o));
        y = lowbit_max_nan(y, __shfl_xor_sync(0xffffffffu, y, o));
    }
    if (threadIdx.x % 32 == 0) red[0][threadIdx.x / 32] = x, red[1][threadIdx.x / 32] = y;
    __syncthreads();
    x = 0.0f, y = 0.0f;
#pragma unroll
    for (int w = 0; w < BS / 32; w++) x = lowbit_max_nan(x, red[0][w]), y = lowbit_max_nan(y, red[1][w]);
}

// Quantized states: CUDA block b owns quantization block b, one element per thread. Every
// thread reads its codes and the old scales before the reduction's barrier; the new codes
// and scales are written after it, so no thread reads a value this block already replaced.
template <int FMT, int MASTER>
__global__ void __launch_bounds__(q_block(FMT))
    adamw_quant_kernel(float *master, bf16 *param, uint8_t *mc, uint8_t *vc, float *ms, float *vs, const float *grad,
                       LowbitScalars a, SrArgs sr) {
    constexpr int BS = q_block(FMT), NQ = q_nmap(FMT);
    __shared__ float qm[NQ], qv[NQ];  // the maps: per-lane lookups diverge, shared memory serves them
    __shared__ float red[2][BS / 32];
    const int t = threadIdx.x;
    if constexpr (FMT == LOWBIT_8BIT) qm[t] = g_qmap_s8[t], qv[t] = g_qmap_u8[t];  // BS == 256 == NQ
    if constexpr (FMT == LOWBIT_4BIT)
        if (t < 16) qm[t] = g_qmap_s4[t], qv[t] = g_qmap_u4[t];
    __syncthreads();
    const size_t b = blockIdx.x, i = b * BS + t;
    float m, v;
    if constexpr (FMT == LOWBIT_8BIT) {
        m = OPT_MUL(qm[mc[i]], ms[b]);
        v = OPT_MUL(qv[vc[i]], vs[b]);
    } else if constexpr (FMT == LOWBIT_4BIT) {  // even element in the high nibble
        int sh = (t & 1) ? 0 : 4;
        m = OPT_MUL(qm[(mc[i / 2] >> sh) & 15], ms[b]);
        v = OPT_MUL(qv[(vc[i / 2] >> sh) & 15], vs[b]);
    } else {
        m = OPT_MUL(lowbit_e4m3_to_f32(mc[i]), ms[b]);
        v = OPT_MUL(lowbit_e4m3_to_f32(vc[i]), vs[b]);
    }
    float p = lowbit_adam_elem(load_param(master, param, i, MASTER), grad[i], &m, &v, &a);
    store_param<MASTER>(master, param, i, p, sr);

    float sm = fabsf(m), sv = fabsf(v);
    block_absmax2<BS>(sm, sv, red);
    sm = lowbit_max_nan(sm, 1e-12f), sv = lowbit_max_nan(sv, 1e-12f);
    if constexpr (FMT == LOWBIT_FP8) sm = OPT_DIV(sm, 448.0f), sv = OPT_DIV(sv, 448.0f);
    const float xm = OPT_DIV(m, sm), xv = OPT_DIV(v, sv);
    if constexpr (FMT == LOWBIT_8BIT) {
        mc[i] = lowbit_code8(xm, qm);
        vc[i] = lowbit_code8(xv, qv);
    } else if constexpr (FMT == LOWBIT_4BIT) {  // BS = 128: four full warps, the odd neighbour is lane + 1
        unsigned cm = lowbit_code4(xm, qm), cv = lowbit_code4(xv, qv);
        unsigned nm = __shfl_down_sync(0xffffffffu, cm, 1), nv = __shfl_down_sync(0xffffffffu, cv, 1);
        if (!(t & 1)) mc[i / 2] = (uint8_t)(cm << 4 | nm), vc[i / 2] = (uint8_t)(cv << 4 | nv);
    } else {
        mc[i] = lowbit_e4m3(xm);
        vc[i] = lowbit_e4m3(xv);
    }
    if (t == 0) ms[b] = sm, vs[b] = sv;
}

template <int FMT, int MASTER>
static void launch(float *master, bf16 *param, const LowbitState &st, const float *grad, const LowbitScalars &a,
                   const SrArgs &sr, cudaStream_t stream) {
    if constexpr (FMT == LOWBIT_F32 || FMT == LOWBIT_BF16) {
        unsigned grid = (unsigned)ceil_div_sz(st.n, 256);
        adamw_plain_kernel<FMT, MASTER><<<grid, 256, 0, stream>>>(master, param, st.m, st.v, grad, st.n, a, sr);
    } else {
        constexpr int BS = q_block(FMT);
        unsigned grid = (unsigned)(st.n / BS);
        adamw_quant_kernel<FMT, MASTER><<<grid, BS, 0, stream>>>(master, param, (uint8_t *)st.m, (uint8_t *)st.v,
                                                                 st.m_scale, st.v_scale, grad, a, sr);
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
