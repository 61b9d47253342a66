// Optimizer kernels on the GPU against the CPU, bit for bit: torchao's low-bit AdamW
// (adamw_lowbit_update vs lowbit_adamw_step_cpu, which test_optim checks against torchao)
// for 8-bit, 4-bit and fp8 states and the plain fp32/bf16 states of small or odd tensors,
// with fp32 masters, bf16 masters and bf16 stochastic rounding; the fp32 AdamW kernel
// (adamw_update) vs the offload step (adamw_update_cpu), and its bf16-master form with
// stochastic rounding (adamw_update_bf16_sr vs adamw_update_bf16_sr_cpu and a scalar loop).
// Sizes are odd on purpose: a single element, 1000, tensors that are whole 4-bit blocks but
// not 8-bit ones, many blocks; unaligned pointers (the scalar path). The quantized kernel also
// equals its first version (kept here) on NaN, inf and arbitrary states, and its code table
// equals torchao's search for all 2^32 floats on the device. Stochastic rounding on the device is unbiased (a statistical
// bound). And the trainer's optimizer on a small model (model/llama_gpu): the offloaded step,
// overlapped with backward or not, equals the on-GPU step bit for bit, sharded or not, for every
// --optim and --master; a bf16-sr run resumed from a checkpoint equals the straight run; the
// on-GPU step overlapped with the next forward (--optim-overlap) gives the serial step's losses,
// norms and weights bit for bit.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test.cuh"
#include "../model/checkpoint.cuh"
#include "../model/llama_gpu.cuh"
#include "../optim/adamw.cuh"
#include "../optim/adamw_lowbit.cuh"
#include "../optim/lowbit_lut.h"
extern "C" {
#include "../common/fileio.h"
#include "../model/model.h"
#include "../optim/adamw_cpu.h"
#include "test.h"
}

static uint64_t g_rng = 0x5EEDull;

static size_t diff_bytes(const void *a, const void *b, size_t n, size_t *first) {
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i] && bad++ == 0 && first) *first = i;
    return bad;
}

static const char *master_name(LowbitMaster m) {
    return m == LOWBIT_MASTER_F32 ? "fp32 master" : m == LOWBIT_MASTER_BF16 ? "bf16" : "bf16-sr";
}

// Three steps on the GPU and on the CPU from the same start; every byte compared after each.
// layout_mode: the master mode the state layout is chosen for (torchao's rule: plain states in
// the parameter's dtype); the trainer keeps fp32 plain states for every master (LOWBIT_MASTER_F32).
// off: master, gradient and bf16 parameters start `off` elements into their buffers (1: not
// aligned for the kernels' vector accesses, so they take their scalar path).
static void lowbit_case_in(LowbitFormat want, size_t n, LowbitMaster mode, double b1, LowbitMaster layout_mode,
                           size_t off = 0) {
    const LowbitLayout lay = lowbit_layout(want, n, layout_mode);
    const int f32m = mode == LOWBIT_MASTER_F32;
    void *reg_h = ao_calloc(1, lay.bytes), *reg_g = ao_malloc(lay.bytes);
    void *reg_d = dalloc<uint8_t>(lay.bytes);
    CUDA_CHECK(cudaMemsetAsync(reg_d, 0, lay.bytes, g_s));
    LowbitState st_h = lowbit_state_at(&lay, reg_h), st_d = lowbit_state_at(&lay, reg_d);
    float *w_h = (float *)ao_malloc(n * 4), *w_g = (float *)ao_malloc(n * 4), *g = (float *)ao_malloc(n * 4);
    uint16_t *p_h = (uint16_t *)ao_malloc(n * 2), *p_g = (uint16_t *)ao_malloc(n * 2);
    for (size_t i = 0; i < n; i++) {
        w_h[i] = 0.1f * test_rand_uniform(&g_rng);
        p_h[i] = lowbit_bf16_rne(w_h[i]);
    }
    const size_t zero = lowbit_quantized(lay.fmt) && n >= 2 * (size_t)lay.block ? (size_t)lay.block : 0;
    for (size_t i = 0; i < zero; i++) w_h[i] = 0.0f, p_h[i] = 0;  // an all-zero first block
    float *w_d0 = dalloc<float>(n + off), *g_d0 = dalloc<float>(n + off), *w_d = w_d0 + off, *g_d = g_d0 + off;
    bf16 *p_d0 = dalloc<bf16>(n + off), *p_d = p_d0 + off;
    h2d(w_d, w_h, n * 4);
    h2d(p_d, p_h, n * 2);
    LowbitStep s = {1e-2, b1, 0.999, 1e-8, 0.1, 0, 1.0f, mode, 1234, 977};
    size_t bad_state = 0, bad_w = 0, bad_p = 0, first = 0;
    for (int t = 1; t <= 3; t++) {
        for (size_t i = 0; i < n; i++) g[i] = i < zero ? 0.0f : 0.01f * (float)t * test_rand_uniform(&g_rng);
        h2d(g_d, g, n * 4);
        s.step = t * 10;
        s.grad_scale = t == 2 ? 0.5f : 1.0f;
        lowbit_adamw_step_cpu(f32m ? w_h : NULL, p_h, &st_h, g, &s, NULL);
        adamw_lowbit_update(f32m ? w_d : NULL, p_d, st_d, g_d, &s, g_s);
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        d2h(reg_g, reg_d, lay.bytes);
        d2h(w_g, w_d, n * 4);
        d2h(p_g, p_d, n * 2);
        size_t f = 0, b = diff_bytes(reg_g, reg_h, lay.bytes, &f);
        if (b && !bad_state) first = f;
        bad_state += b;
        if (f32m) bad_w += diff_bytes(w_g, w_h, n * 4, NULL);
        bad_p += diff_bytes(p_g, p_h, n * 2, NULL);
    }
    TEST_CHECK(bad_state == 0 && bad_w == 0 && bad_p == 0,
               "lowbit %s->%s states, n=%zu, %s, b1=%g%s: GPU == CPU bit for bit over 3 steps (differing bytes: "
               "state %zu (first at %zu of %zu), master %zu, bf16 %zu)",
               lowbit_format_name(want), lowbit_format_name(lay.fmt), n, master_name(mode), b1,
               off ? ", unaligned" : "", bad_state, first, lay.bytes, bad_w, bad_p);
    free(reg_h), free(reg_g), free(w_h), free(w_g), free(g), free(p_h), free(p_g);
    CUDA_CHECK(cudaFree(reg_d));
    CUDA_CHECK(cudaFree(w_d0));
    CUDA_CHECK(cudaFree(g_d0));
    CUDA_CHECK(cudaFree(p_d0));
}

static void lowbit_case(LowbitFormat want, size_t n, LowbitMaster mode, double b1) {
    lowbit_case_in(want, n, mode, b1, mode);
}

static void test_lowbit(void) {
    const LowbitMaster modes[3] = {LOWBIT_MASTER_F32, LOWBIT_MASTER_BF16, LOWBIT_MASTER_BF16_SR};
    for (int k = 0; k < 3; k++) {
        const LowbitMaster m = modes[k];
        lowbit_case(LOWBIT_8BIT, 256 * 23, m, 0.9);  // 23 blocks, block 0 all zero
        lowbit_case(LOWBIT_8BIT, 4224, m, 0.9);      // not whole 256-blocks: plain states
        lowbit_case(LOWBIT_4BIT, 4224, m, 0.9);      // whole 128-blocks: 4-bit
        lowbit_case(LOWBIT_4BIT, 128 * 301, m, 0.9);
        lowbit_case(LOWBIT_FP8, 256 * 41, m, 0.9);
        lowbit_case(LOWBIT_FP8, 1000, m, 0.9);   // small: plain states
        lowbit_case(LOWBIT_F32, 70001, m, 0.9);  // torchao's _AdamW (plain states), many CUDA blocks
        lowbit_case(LOWBIT_F32, 1, m, 0.9);
    }
    lowbit_case(LOWBIT_8BIT, 256 * 17, LOWBIT_MASTER_F32, 0.3);  // lerp weight >= 0.5: the other branch
    lowbit_case(LOWBIT_4BIT, 128 * 40, LOWBIT_MASTER_BF16_SR, 0.3);
    // --master bf16-sr in the trainer: fp32 plain states for the small tensors
    lowbit_case_in(LOWBIT_8BIT, 4224, LOWBIT_MASTER_BF16_SR, 0.9, LOWBIT_MASTER_F32);
    lowbit_case_in(LOWBIT_FP8, 1000, LOWBIT_MASTER_BF16_SR, 0.9, LOWBIT_MASTER_F32);
    lowbit_case_in(LOWBIT_F32, 70001, LOWBIT_MASTER_BF16_SR, 0.9, LOWBIT_MASTER_F32);
    // master, gradient and parameters one element off alignment: the kernels' scalar accesses
    for (int k = 0; k < 3; k++) {
        lowbit_case_in(LOWBIT_8BIT, 256 * 23, modes[k], 0.9, modes[k], 1);
        lowbit_case_in(LOWBIT_4BIT, 128 * 301, modes[k], 0.9, modes[k], 1);
        lowbit_case_in(LOWBIT_FP8, 256 * 41, modes[k], 0.9, modes[k], 1);
    }
    // more chunks than the grid has warps (264 blocks x 16 on an H200): each warp strides
    lowbit_case(LOWBIT_8BIT, 256 * 12001, LOWBIT_MASTER_F32, 0.9);
    lowbit_case(LOWBIT_4BIT, 128 * 24001, LOWBIT_MASTER_BF16_SR, 0.9);
    lowbit_case(LOWBIT_FP8, 256 * 12001, LOWBIT_MASTER_BF16, 0.9);
}

// ---- the quantized kernel against its first version, on the GPU --------------------------------
// adamw_lowbit.cu's first quantized kernel (one CUDA block per quantization block, one element
// per thread, a block-wide absmax, torchao's binary search per code), kept here as the reference
// for inputs where the CPU cannot be one: NaN and infinity (the CPU's NaN bits differ from the
// GPU's canonical NaN), states of arbitrary bytes, scales of 0, inf, NaN, huge and tiny values.
// The current kernel must give the same bytes.
__device__ const float v1_qmap_s8[256] = {LOWBIT_QMAP_S8};
__device__ const float v1_qmap_u8[256] = {LOWBIT_QMAP_U8};
__device__ const float v1_qmap_s4[16] = {LOWBIT_QMAP_S4};
__device__ const float v1_qmap_u4[16] = {LOWBIT_QMAP_U4};
struct V1Sr {
    uint64_t seed, offset;
    int step;
};
constexpr int v1_block(int f) { return f == LOWBIT_4BIT ? LOWBIT_BLOCK_4BIT : f == LOWBIT_FP8 ? LOWBIT_BLOCK_FP8 : LOWBIT_BLOCK_8BIT; }
constexpr int v1_nmap(int f) { return f == LOWBIT_8BIT ? 256 : f == LOWBIT_4BIT ? 16 : 1; }
template <int BS>
__device__ __forceinline__ void v1_absmax2(float &x, float &y, float (*red)[BS / 32]) {
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
template <int FMT, int MASTER>
__global__ void __launch_bounds__(v1_block(FMT))
    adamw_quant_v1_kernel(float *master, bf16 *param, uint8_t *mc, uint8_t *vc, float *ms, float *vs, const float *grad,
                          LowbitScalars a, V1Sr sr) {
    constexpr int BS = v1_block(FMT), NQ = v1_nmap(FMT);
    __shared__ float qm[NQ], qv[NQ];
    __shared__ float red[2][BS / 32];
    const int t = threadIdx.x;
    if constexpr (FMT == LOWBIT_8BIT) qm[t] = v1_qmap_s8[t], qv[t] = v1_qmap_u8[t];
    if constexpr (FMT == LOWBIT_4BIT)
        if (t < 16) qm[t] = v1_qmap_s4[t], qv[t] = v1_qmap_u4[t];
    __syncthreads();
    const size_t b = blockIdx.x, i = b * BS + t;
    uint16_t *pb = reinterpret_cast<uint16_t *>(param);
    float m, v;
    if constexpr (FMT == LOWBIT_8BIT) {
        m = OPT_MUL(qm[mc[i]], ms[b]);
        v = OPT_MUL(qv[vc[i]], vs[b]);
    } else if constexpr (FMT == LOWBIT_4BIT) {
        int sh = (t & 1) ? 0 : 4;
        m = OPT_MUL(qm[(mc[i / 2] >> sh) & 15], ms[b]);
        v = OPT_MUL(qv[(vc[i / 2] >> sh) & 15], vs[b]);
    } else {
        m = OPT_MUL(lowbit_e4m3_to_f32(mc[i]), ms[b]);
        v = OPT_MUL(lowbit_e4m3_to_f32(vc[i]), vs[b]);
    }
    const float p0 = MASTER == LOWBIT_MASTER_F32 ? master[i] : lowbit_bf16_to_f32(pb[i]);
    const float p = lowbit_adam_elem(p0, grad[i], &m, &v, &a);
    if (MASTER == LOWBIT_MASTER_F32) {
        master[i] = p;
        if (pb) pb[i] = lowbit_bf16_rne(p);
    } else if (MASTER == LOWBIT_MASTER_BF16) {
        pb[i] = lowbit_bf16_rne(p);
    } else {
        pb[i] = lowbit_bf16_sr(p, lowbit_sr_bits(sr.seed, sr.step, sr.offset + i));
    }
    float sm = fabsf(m), sv = fabsf(v);
    v1_absmax2<BS>(sm, sv, red);
    sm = lowbit_max_nan(sm, 1e-12f), sv = lowbit_max_nan(sv, 1e-12f);
    if constexpr (FMT == LOWBIT_FP8) sm = OPT_DIV(sm, 448.0f), sv = OPT_DIV(sv, 448.0f);
    const float xm = OPT_DIV(m, sm), xv = OPT_DIV(v, sv);
    if constexpr (FMT == LOWBIT_8BIT) {
        mc[i] = lowbit_code8(xm, qm);
        vc[i] = lowbit_code8(xv, qv);
    } else if constexpr (FMT == LOWBIT_4BIT) {
        unsigned cm = lowbit_code4(xm, qm), cv = lowbit_code4(xv, qv);
        unsigned nm = __shfl_down_sync(0xffffffffu, cm, 1), nv = __shfl_down_sync(0xffffffffu, cv, 1);
        if (!(t & 1)) mc[i / 2] = (uint8_t)(cm << 4 | nm), vc[i / 2] = (uint8_t)(cv << 4 | nv);
    } else {
        mc[i] = lowbit_e4m3(xm);
        vc[i] = lowbit_e4m3(xv);
    }
    if (t == 0) ms[b] = sm, vs[b] = sv;
}
template <int FMT>
static void v1_update(float *master, bf16 *param, const LowbitState &st, const float *grad, const LowbitStep *s) {
    const LowbitScalars a = lowbit_scalars(s);
    const V1Sr sr = {s->seed, s->sr_offset, s->step};
    constexpr int BS = v1_block(FMT);
    const unsigned grid = (unsigned)(st.n / BS);
    uint8_t *mc = (uint8_t *)st.m, *vc = (uint8_t *)st.v;
    if (s->master == LOWBIT_MASTER_F32)
        adamw_quant_v1_kernel<FMT, LOWBIT_MASTER_F32><<<grid, BS, 0, g_s>>>(master, param, mc, vc, st.m_scale, st.v_scale, grad, a, sr);
    else if (s->master == LOWBIT_MASTER_BF16)
        adamw_quant_v1_kernel<FMT, LOWBIT_MASTER_BF16><<<grid, BS, 0, g_s>>>(master, param, mc, vc, st.m_scale, st.v_scale, grad, a, sr);
    else
        adamw_quant_v1_kernel<FMT, LOWBIT_MASTER_BF16_SR><<<grid, BS, 0, g_s>>>(master, param, mc, vc, st.m_scale, st.v_scale, grad, a, sr);
    CUDA_CHECK_LAST();
}

// An fp32 value for the adversarial inputs: mostly ordinary, sometimes 0, +-inf, NaN, huge,
// tiny or subnormal.
static float odd_value(float scale) {
    const uint64_t r = test_rand_u64(&g_rng) % 64;
    const float x = scale * test_rand_uniform(&g_rng);
    switch (r) {
        case 0: return 0.0f;
        case 1: return -0.0f;
        case 2: return INFINITY;
        case 3: return -INFINITY;
        case 4: return NAN;
        case 5: return 1e30f * x;
        case 6: return 1e-30f * x;
        case 7: return ao_u2f((uint32_t)test_rand_u64(&g_rng) & 0x807FFFFFu);  // subnormal
        case 8: return ao_u2f((uint32_t)test_rand_u64(&g_rng));  // any pattern
        default: return x;
    }
}

static void v1_case(LowbitFormat fmt, size_t n, LowbitMaster mode) {
    const LowbitLayout lay = lowbit_layout_of(fmt, n);
    const int f32m = mode == LOWBIT_MASTER_F32;
    const size_t nb = lay.n_blocks;
    uint8_t *reg = (uint8_t *)ao_malloc(lay.bytes), *ra = (uint8_t *)ao_malloc(lay.bytes), *rb = (uint8_t *)ao_malloc(lay.bytes);
    // states: arbitrary code bytes; scales ordinary, and some 0, inf, NaN, huge, tiny
    for (size_t i = 0; i < lay.bytes; i++) reg[i] = (uint8_t)test_rand_u64(&g_rng);
    LowbitState sh = lowbit_state_at(&lay, reg);
    for (size_t b = 0; b < nb; b++) sh.m_scale[b] = fabsf(odd_value(1e-3f)), sh.v_scale[b] = fabsf(odd_value(1e-6f));
    float *w = (float *)ao_malloc(n * 4), *g = (float *)ao_malloc(n * 4);
    uint16_t *p = (uint16_t *)ao_malloc(n * 2), *p2 = (uint16_t *)ao_malloc(n * 2);
    for (size_t i = 0; i < n; i++) {
        w[i] = i / (size_t)lay.block % 5 == 0 ? odd_value(0.1f) : 0.1f * test_rand_uniform(&g_rng);
        p[i] = lowbit_bf16_rne(w[i]);
    }
    void *ra_d = dalloc<uint8_t>(lay.bytes), *rb_d = dalloc<uint8_t>(lay.bytes);
    float *wa = dalloc<float>(n), *wb = dalloc<float>(n), *g_d = dalloc<float>(n);
    bf16 *pa = dalloc<bf16>(n), *pb = dalloc<bf16>(n);
    h2d(ra_d, reg, lay.bytes), h2d(rb_d, reg, lay.bytes);
    h2d(wa, w, n * 4), h2d(wb, w, n * 4), h2d(pa, p, n * 2), h2d(pb, p, n * 2);
    const LowbitState sa = lowbit_state_at(&lay, ra_d), sb = lowbit_state_at(&lay, rb_d);
    LowbitStep s = {1e-2, 0.9, 0.999, 1e-8, 0.1, 0, 1.0f, mode, 99, 4096};
    size_t bad = 0;
    for (int t = 1; t <= 3; t++) {
        // every third block ordinary, the others with odd values scattered in
        for (size_t i = 0; i < n; i++) g[i] = i / (size_t)lay.block % 3 == 0 ? 0.01f * test_rand_uniform(&g_rng) : odd_value(0.01f);
        h2d(g_d, g, n * 4);
        s.step = t;
        adamw_lowbit_update(f32m ? wa : NULL, pa, sa, g_d, &s, g_s);
        if (fmt == LOWBIT_8BIT) v1_update<LOWBIT_8BIT>(f32m ? wb : NULL, pb, sb, g_d, &s);
        else if (fmt == LOWBIT_4BIT) v1_update<LOWBIT_4BIT>(f32m ? wb : NULL, pb, sb, g_d, &s);
        else v1_update<LOWBIT_FP8>(f32m ? wb : NULL, pb, sb, g_d, &s);
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        d2h(ra, ra_d, lay.bytes), d2h(rb, rb_d, lay.bytes);
        bad += diff_bytes(ra, rb, lay.bytes, NULL);
        d2h(w, wa, n * 4), d2h(g, wb, n * 4);  // g: scratch until the next step's gradients
        bad += f32m ? diff_bytes(w, g, n * 4, NULL) : 0;
        d2h(p, pa, n * 2), d2h(p2, pb, n * 2);
        bad += diff_bytes(p, p2, n * 2, NULL);
    }
    TEST_CHECK(bad == 0, "lowbit %s, n=%zu, %s: the kernel == its first version on the GPU with NaN, inf, huge and "
               "odd states, 3 steps (%zu bytes differ)", lowbit_format_name(fmt), n, master_name(mode), bad);
    free(reg), free(ra), free(rb), free(w), free(g), free(p), free(p2);
    CUDA_CHECK(cudaFree(ra_d));
    CUDA_CHECK(cudaFree(rb_d));
    CUDA_CHECK(cudaFree(wa));
    CUDA_CHECK(cudaFree(wb));
    CUDA_CHECK(cudaFree(g_d));
    CUDA_CHECK(cudaFree(pa));
    CUDA_CHECK(cudaFree(pb));
}

static void test_lowbit_v1(void) {
    const LowbitMaster modes[3] = {LOWBIT_MASTER_F32, LOWBIT_MASTER_BF16, LOWBIT_MASTER_BF16_SR};
    for (int k = 0; k < 3; k++) {
        v1_case(LOWBIT_8BIT, 256 * 301, modes[k]);
        v1_case(LOWBIT_4BIT, 128 * 603, modes[k]);
        v1_case(LOWBIT_FP8, 256 * 301, modes[k]);
    }
}

// lowbit_lut_code against torchao's search, both compiled for the device, for all 2^32 floats
// (test_lowbit_lut proves the same on the CPU).
__device__ const uint32_t tlut_s8[] = {LOWBIT_LUT_S8};
__device__ const uint32_t tlut_u8[] = {LOWBIT_LUT_U8};
__device__ const uint32_t tlut_s4[] = {LOWBIT_LUT_S4};
__device__ const uint32_t tlut_u4[] = {LOWBIT_LUT_U4};
template <int MAP>
__global__ void lut_sweep_kernel(unsigned long long *bad, unsigned *first) {
    const float *q = MAP == 0 ? v1_qmap_s8 : MAP == 1 ? v1_qmap_u8 : MAP == 2 ? v1_qmap_s4 : v1_qmap_u4;
    unsigned long long nb = 0;
    for (uint64_t u = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; u < ((uint64_t)1 << 32);
         u += (uint64_t)gridDim.x * blockDim.x) {
        const float x = __uint_as_float((uint32_t)u);
        int l, r;
        if constexpr (MAP == 0) l = lowbit_lut_code(x, tlut_s8, LOWBIT_LUT_S8_LO, LOWBIT_LUT_S8_SHIFT, 1), r = lowbit_code8(x, q);
        if constexpr (MAP == 1) l = lowbit_lut_code(x, tlut_u8, LOWBIT_LUT_U8_LO, LOWBIT_LUT_U8_SHIFT, 0), r = lowbit_code8(x, q);
        if constexpr (MAP == 2) l = lowbit_lut_code(x, tlut_s4, LOWBIT_LUT_S4_LO, LOWBIT_LUT_S4_SHIFT, 1), r = lowbit_code4(x, q);
        if constexpr (MAP == 3) l = lowbit_lut_code(x, tlut_u4, LOWBIT_LUT_U4_LO, LOWBIT_LUT_U4_SHIFT, 0), r = lowbit_code4(x, q);
        if (l != r) nb++, atomicMin(first, (unsigned)u);
    }
    if (nb) atomicAdd(bad, nb);
}
static void test_lut_gpu(void) {
    unsigned long long *bad_d = dalloc<unsigned long long>(1);
    unsigned *first_d = dalloc<unsigned>(1);
    const char *names[4] = {"signed 8-bit", "unsigned 8-bit", "signed 4-bit", "unsigned 4-bit"};
    for (int k = 0; k < 4; k++) {
        CUDA_CHECK(cudaMemsetAsync(bad_d, 0, 8, g_s));
        CUDA_CHECK(cudaMemsetAsync(first_d, 0xFF, 4, g_s));
        if (k == 0) lut_sweep_kernel<0><<<4096, 256, 0, g_s>>>(bad_d, first_d);
        if (k == 1) lut_sweep_kernel<1><<<4096, 256, 0, g_s>>>(bad_d, first_d);
        if (k == 2) lut_sweep_kernel<2><<<4096, 256, 0, g_s>>>(bad_d, first_d);
        if (k == 3) lut_sweep_kernel<3><<<4096, 256, 0, g_s>>>(bad_d, first_d);
        CUDA_CHECK_LAST();
        unsigned long long bad = 0;
        unsigned first = 0;
        d2h(&bad, bad_d, 8), d2h(&first, first_d, 4);
        TEST_CHECK(bad == 0, "%s map: lowbit_lut_code == torchao's search on the GPU for all 2^32 floats (%llu differ, "
                   "first %08x)", names[k], bad, first);
    }
    CUDA_CHECK(cudaFree(bad_d));
    CUDA_CHECK(cudaFree(first_d));
}

// adamw_update (optim/adamw.cu) against the offload step. Bit-identical once adamw.cu's
// adamw_one calls adamw_elem (adamw_cpu.h): nvcc otherwise places FMAs per call site.
static void test_adamw_offload(void) {
    const size_t sizes[] = {1, 5, 4099, 100003};
    for (int misalign = 0; misalign <= 1; misalign++)  // +1 element: the scalar (VEC = 1) kernel
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            size_t n = sizes[k], o = (size_t)misalign, N = n + o;
            float *w = (float *)ao_malloc(N * 4), *m = (float *)ao_calloc(N, 4), *v = (float *)ao_calloc(N, 4);
            float *g = (float *)ao_malloc(N * 4), *r = (float *)ao_malloc(N * 4 * 3);
            uint16_t *pb = (uint16_t *)ao_malloc(N * 2), *pg = (uint16_t *)ao_malloc(N * 2);
            for (size_t i = 0; i < N; i++) w[i] = 0.1f * test_rand_uniform(&g_rng);
            float *w_d = dalloc<float>(N), *m_d = dalloc<float>(N), *v_d = dalloc<float>(N), *g_d = dalloc<float>(N);
            bf16 *p_d = dalloc<bf16>(N);
            h2d(w_d, w, N * 4), h2d(m_d, m, N * 4), h2d(v_d, v, N * 4);
            for (int t = 1; t <= 3; t++) {
                for (size_t i = 0; i < N; i++) g[i] = 0.01f * test_rand_uniform(&g_rng);
                h2d(g_d, g, N * 4);
                float gs = t == 2 ? 0.6f : 1.0f;
                adamw_update_cpu(w + o, pb + o, g + o, m + o, v + o, n, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, gs);
                adamw_update(w_d + o, p_d + o, g_d + o, m_d + o, v_d + o, n, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, gs,
                             g_s);
            }
            CUDA_CHECK(cudaStreamSynchronize(g_s));
            d2h(r, w_d, N * 4), d2h(r + N, m_d, N * 4), d2h(r + 2 * N, v_d, N * 4), d2h(pg, p_d, N * 2);
            size_t bad = diff_bytes(r + o, w + o, n * 4, NULL) + diff_bytes(r + N + o, m + o, n * 4, NULL) +
                         diff_bytes(r + 2 * N + o, v + o, n * 4, NULL) + diff_bytes(pg + o, pb + o, n * 2, NULL);
            TEST_CHECK(bad == 0, "adamw_update (GPU%s) == adamw_update_cpu, n=%zu: %zu bytes differ%s",
                       misalign ? ", unaligned" : "", n, bad,
                       bad ? " (HINT: optim/adamw.cu's adamw_one must call adamw_elem, docs/OPTIMIZERS.md)" : "");
            free(w), free(m), free(v), free(g), free(r), free(pb), free(pg);
            CUDA_CHECK(cudaFree(w_d));
            CUDA_CHECK(cudaFree(m_d));
            CUDA_CHECK(cudaFree(v_d));
            CUDA_CHECK(cudaFree(g_d));
            CUDA_CHECK(cudaFree(p_d));
        }
}

// --master bf16-sr with fp32 moments (train_llama --optim adamw): the GPU kernel against the
// offload step in each of its variants and against a scalar loop written here, bit for bit
// after 3 steps, for a given seed and the tensor's place in the parameter vector (sr_offset).
static uint16_t sr_ref(float p, uint64_t seed, int step, uint64_t idx) {
    return lowbit_bf16_sr(p, lowbit_sr_bits(seed, step, idx));
}
static void test_adamw_bf16_sr(void) {
    const size_t sizes[] = {1, 5, 4099, 100003};
    const uint64_t seed = 1234;
    for (int misalign = 0; misalign <= 1; misalign++)
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            const size_t n = sizes[k], o = (size_t)misalign, N = n + o, off = 977 + 4096 * k;
            uint16_t *p0 = (uint16_t *)ao_malloc(N * 2), *pr = (uint16_t *)ao_malloc(N * 2), *pc = (uint16_t *)ao_malloc(N * 2),
                     *pg = (uint16_t *)ao_malloc(N * 2);
            float *g = (float *)ao_malloc(N * 4 * 3), *mr = (float *)ao_calloc(N, 4), *vr = (float *)ao_calloc(N, 4);
            float *mc = (float *)ao_calloc(N, 4), *vc = (float *)ao_calloc(N, 4), *r = (float *)ao_malloc(N * 4 * 2);
            for (size_t i = 0; i < N; i++) p0[i] = lowbit_bf16_rne(0.1f * test_rand_uniform(&g_rng));
            for (size_t i = 0; i < 3 * N; i++) g[i] = 0.01f * test_rand_uniform(&g_rng);
            memcpy(pr, p0, N * 2);
            const float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
            for (int t = 1; t <= 3; t++) {  // the reference: adamw_elem and the rounding, element by element
                const float gs = t == 2 ? 0.6f : 1.0f;
                const AdamwScalars a = adamw_scalars(lr, b1, b2, eps, wd, t, gs);
                for (size_t i = 0; i < n; i++) {
                    const float p = adamw_elem(lowbit_bf16_to_f32(pr[o + i]), g[(t - 1) * N + o + i], &mr[o + i], &vr[o + i], &a);
                    pr[o + i] = sr_ref(p, seed, t, off + i);
                }
            }
            uint16_t *p_d = dalloc<uint16_t>(N);
            float *g_d = dalloc<float>(N), *m_d = dalloc<float>(N), *v_d = dalloc<float>(N);
            h2d(p_d, p0, N * 2);
            CUDA_CHECK(cudaMemsetAsync(m_d, 0, N * 4, g_s));
            CUDA_CHECK(cudaMemsetAsync(v_d, 0, N * 4, g_s));
            for (int t = 1; t <= 3; t++) {
                h2d(g_d, g + (t - 1) * N, N * 4);
                adamw_update_bf16_sr((bf16 *)p_d + o, g_d + o, m_d + o, v_d + o, n, lr, b1, b2, eps, wd, t,
                                     t == 2 ? 0.6f : 1.0f, seed, off, g_s);
            }
            CUDA_CHECK(cudaStreamSynchronize(g_s));
            d2h(pg, p_d, N * 2), d2h(r, m_d, N * 4), d2h(r + N, v_d, N * 4);
            size_t bad = diff_bytes(pg + o, pr + o, n * 2, NULL) + diff_bytes(r + o, mr + o, n * 4, NULL) +
                         diff_bytes(r + N + o, vr + o, n * 4, NULL);
            TEST_CHECK(bad == 0, "adamw_update_bf16_sr (GPU%s), n=%zu: == the scalar loop, bit for bit (%zu bytes differ)",
                       misalign ? ", unaligned" : "", n, bad);
            const AdamwIsa best = adamw_cpu_isa_best();
            for (int isa = ADAMW_ISA_SCALAR; isa <= (int)best; isa++) {
                adamw_cpu_set_isa((AdamwIsa)isa);
                memcpy(pc, p0, N * 2), memset(mc, 0, N * 4), memset(vc, 0, N * 4);
                for (int t = 1; t <= 3; t++)
                    adamw_update_bf16_sr_cpu(pc + o, g + (t - 1) * N + o, mc + o, vc + o, n, lr, b1, b2, eps, wd, t,
                                             t == 2 ? 0.6f : 1.0f, seed, off);
                size_t bc = diff_bytes(pc + o, pg + o, n * 2, NULL) + diff_bytes(mc + o, r + o, n * 4, NULL) +
                            diff_bytes(vc + o, r + N + o, n * 4, NULL);
                TEST_CHECK(bc == 0, "adamw_update_bf16_sr_cpu (%s) == the GPU, n=%zu%s: %zu bytes differ",
                           adamw_cpu_isa_name((AdamwIsa)isa), n, misalign ? ", unaligned" : "", bc);
            }
            adamw_cpu_set_isa(best);
            if (n >= 4099) {  // another seed draws other bits: about half the roundings change
                h2d(p_d, p0, N * 2);
                CUDA_CHECK(cudaMemsetAsync(m_d, 0, N * 4, g_s));
                CUDA_CHECK(cudaMemsetAsync(v_d, 0, N * 4, g_s));
                h2d(g_d, g, N * 4);
                adamw_update_bf16_sr((bf16 *)p_d + o, g_d + o, m_d + o, v_d + o, n, lr, b1, b2, eps, wd, 1, 1.0f, seed + 1,
                                     off, g_s);
                d2h(pc, p_d, N * 2);
                size_t differ = 0;
                for (size_t i = 0; i < n; i++) {
                    float mm = 0, vv = 0;
                    const AdamwScalars a = adamw_scalars(lr, b1, b2, eps, wd, 1, 1.0f);
                    const float p = adamw_elem(lowbit_bf16_to_f32(p0[o + i]), g[o + i], &mm, &vv, &a);
                    differ += pc[o + i] != sr_ref(p, seed, 1, off + i);
                }
                TEST_CHECK(differ > n / 5 && differ < n * 4 / 5, "adamw_update_bf16_sr: seed %llu vs %llu change %zu of %zu "
                           "roundings (expected about half)", (unsigned long long)seed + 1, (unsigned long long)seed, differ, n);
            }
            free(p0), free(pr), free(pc), free(pg), free(g), free(mr), free(vr), free(mc), free(vc), free(r);
            CUDA_CHECK(cudaFree(p_d));
            CUDA_CHECK(cudaFree(g_d));
            CUDA_CHECK(cudaFree(m_d));
            CUDA_CHECK(cudaFree(v_d));
        }
}

// Unbiased stochastic rounding on the device (the bound is test_optim's, explained there): for
// K values x, N draws each at one element over steps 1..N, count the rounds up; with q =
// low16(bits(x)) / 65536 the count is Binomial(N, q) when the bits are uniform and independent,
// so z = (U - Nq) / sqrt(Nq(1 - q)) ~ N(0, 1): every |z| <= 6, the z of all values together within
// 6, the mean z^2 in 1 +- 0.2. The counts must also equal the CPU's (same bits on both sides).
__global__ void sr_count_kernel(unsigned *ups, unsigned *bad, const float *x, int K, int N, uint64_t seed) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    const uint32_t u = __float_as_uint(x[k]);
    const uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    unsigned up = 0, nb = 0;
    for (int d = 0; d < N; d++) {
        const uint16_t b = lowbit_bf16_sr(x[k], lowbit_sr_bits(seed, d + 1, (uint64_t)k));
        up += b == hi;
        nb += b != hi && b != lo;
    }
    ups[k] = up, bad[k] = nb;
}
static void test_sr_unbiased_gpu(void) {
    enum { K = 4096, N = 8192 };
    const uint64_t seed = 31337;
    float *x = (float *)ao_malloc(K * 4);
    for (int k = 0; k < K; k++) {  // both signs, 2^-40 .. 2^10, low 16 bits not zero
        uint32_t u = (uint32_t)test_rand_u64(&g_rng);
        u = (u & 0x807FFFFFu) | ((uint32_t)(87 + k % 51) << 23);
        if ((u & 0xFFFFu) == 0) u |= 1;
        x[k] = ao_u2f(u);
    }
    float *x_d = dalloc<float>(K);
    unsigned *ups_d = dalloc<unsigned>(K), *bad_d = dalloc<unsigned>(K);
    h2d(x_d, x, K * 4);
    sr_count_kernel<<<K / 256, 256, 0, g_s>>>(ups_d, bad_d, x_d, K, N, seed);
    CUDA_CHECK_LAST();
    unsigned *ups = (unsigned *)ao_malloc(K * 4), *bad = (unsigned *)ao_malloc(K * 4);
    d2h(ups, ups_d, K * 4), d2h(bad, bad_d, K * 4);
    double zmax = 0, num = 0, den = 0, z2 = 0;
    size_t nb = 0, cpu_differ = 0;
    for (int k = 0; k < K; k++) {
        const double q = (double)(ao_f2u(x[k]) & 0xFFFFu) / 65536.0, var = N * q * (1 - q);
        const double z = ((double)ups[k] - N * q) / sqrt(var);
        zmax = fabs(z) > zmax ? fabs(z) : zmax;
        num += (double)ups[k] - N * q, den += var, z2 += z * z;
        nb += bad[k];
        if (k < 64) {  // the CPU draws the same bits
            unsigned up = 0;
            for (int d = 0; d < N; d++)
                up += lowbit_bf16_sr(x[k], lowbit_sr_bits(seed, d + 1, (uint64_t)k)) != (uint16_t)(ao_f2u(x[k]) >> 16);
            cpu_differ += up != ups[k];
        }
    }
    const double zall = num / sqrt(den), mz2 = z2 / K;
    printf("  GPU SR unbiasedness: %d values x %d draws: max |z| %.2f, all-values z %.2f, mean z^2 %.3f\n", K, N, zmax,
           zall, mz2);
    TEST_CHECK(nb == 0 && cpu_differ == 0 && zmax <= 6.0 && fabs(zall) <= 6.0 && fabs(mz2 - 1.0) <= 0.2,
               "GPU stochastic rounding unbiased within the bounds (max |z| %.2f <= 6, all-values z %.2f within 6, mean "
               "z^2 %.3f within 1 +- 0.2), only neighbours (%zu not), counts equal the CPU's (%zu of 64 differ)", zmax,
               zall, mz2, nb, cpu_differ);
    free(x), free(ups), free(bad);
    CUDA_CHECK(cudaFree(x_d));
    CUDA_CHECK(cudaFree(ups_d));
    CUDA_CHECK(cudaFree(bad_d));
}

// ---- the trainer's optimizer on a small model --------------------------------------------------
// 2 layers, d 128, vocabulary 512: matrices of 8K-64K elements (quantized states, 256-blocks),
// norms of 128 (plain states), tied embeddings. Each step accumulates 2 micro-batches of 2 x 16
// random tokens (a function of the step), the gradients of the last one streamed to the host as
// train_llama does (stream_grads), clipped at CLIP when asked.
#define TM_B 2
#define TM_T 16
#define TM_ACCUM 2
#define TM_CLIP 0.05f  // below the norms seen: clipping acts on every step

static LlamaConfig tm_config(void) { return test_llama_config(512, 128, 384, 2, 2, 1, 1); }

struct TmRun {
    LowbitFormat optim;
    LowbitMaster master;
    int offload, sync;  // sync: offload without overlap
    int clip;           // clip at TM_CLIP, the step after the norm; 0: no clipping and, offloaded with
                        // overlap, the step before the norm (train_llama's order then)
    int overlap;        // --optim-overlap (the on-GPU step beside the next forward; ignored offloaded)
};

static GpuRunOpts tm_opts(const TmRun &r, const ZeroPlan *z) {
    GpuRunOpts o;
    memset(&o, 0, sizeof o);
    o.attn = ATTN_KERNEL;
    o.attn_bwd = ATTN_KERNEL;
    o.optim = r.optim;
    o.master = r.master;
    o.offload = r.offload;
    o.offload_sync = r.sync;
    o.offload_slice = 19 * 256;  // cuts inside the 16K-65K-element matrices and between the small tensors
    o.seed = 5;
    o.zero = z;
    o.optim_overlap = r.overlap;
    return o;
}

// Forward and backward of step t's micro-batches (the last one streamed); the sum of their losses.
static double tm_grads(LlamaGpu *m, GpuCtx *ctx, int t) {
    const int N = TM_B * TM_T, V = m->cfg.vocab_size;
    int32_t tok[N], tgt[N];
    double sum = 0;
    llama_gpu_zero_grads(m, ctx);
    for (int a = 0; a < TM_ACCUM; a++) {
        uint64_t st = 0x51EDull + 1000 * (uint64_t)t + (uint64_t)a;
        for (int i = 0; i < N; i++) tok[i] = (int32_t)(test_rand_u64(&st) % (uint64_t)V);
        for (int i = 0; i < N; i++) tgt[i] = i % TM_T == TM_T - 1 ? -1 : tok[i + 1];
        llama_gpu_set_batch(m, ctx, tok, tgt);
        int nv = 0;
        sum += llama_gpu_forward(m, ctx, 1.0f / (float)(TM_ACCUM * (N - TM_B)), &nv);
        m->stream_grads = a == TM_ACCUM - 1;
        llama_gpu_backward(m, ctx);
        m->stream_grads = 0;
    }
    return sum;
}

// Steps t0 .. t1-1 (optimizer steps t0+1 .. t1), as train_llama orders them; each step's loss sum
// and norm into loss[t - t0], norm[t - t0] when given.
static void tm_steps(LlamaGpu *m, GpuCtx *ctx, const TmRun &r, int t0, int t1, double *loss = nullptr,
                     float *norms = nullptr) {
    for (int t = t0; t < t1; t++) {
        const double sum = tm_grads(m, ctx, t);
        const float lr = 1e-3f * (float)(1 + t % 3);  // a function of the step only: runs split anywhere agree
        const int first = r.offload && !r.sync && !r.clip, norm_first = m->overlap && !r.clip;
        if (first) llama_gpu_adamw(m, ctx, lr, 0.9f, 0.95f, 1e-8f, 0.1f, t + 1, 1.0f);
        float norm;
        if (norm_first) {  // --optim-overlap without clipping: the step queued between the norm and its read
            llama_gpu_grad_norm_queue(m, ctx);
            llama_gpu_adamw(m, ctx, lr, 0.9f, 0.95f, 1e-8f, 0.1f, t + 1, 1.0f);
            norm = llama_gpu_grad_norm_result(m, ctx);
        } else {
            norm = llama_gpu_grad_norm(m, ctx);
        }
        const float scale = r.clip && norm > TM_CLIP ? TM_CLIP / norm : 1.0f;
        if (!first && !norm_first) llama_gpu_adamw(m, ctx, lr, 0.9f, 0.95f, 1e-8f, 0.1f, t + 1, scale);
        CUDA_CHECK(cudaStreamSynchronize(ctx->stream));  // the compute stream only, as train_llama waits
        if (loss) loss[t - t0] = sum;
        if (norms) norms[t - t0] = norm;
    }
}

// What a step leaves behind: all bf16 weights, the shard's fp32 masters, the states.
struct TmSnap {
    uint16_t *params;
    float *master;
    unsigned char *states;
    size_t P, S, state_bytes;
};
static TmSnap tm_snap(const LlamaGpu *m) {
    TmSnap s;
    memset(&s, 0, sizeof s);
    s.P = m->tab.total, s.S = m->shard_n;
    CUDA_CHECK(cudaDeviceSynchronize());
    s.params = (uint16_t *)ao_malloc(s.P * 2);
    CUDA_CHECK(cudaMemcpy(s.params, m->params, s.P * 2, cudaMemcpyDeviceToHost));
    if (m->master) {
        s.master = (float *)ao_malloc(s.S * 4 + 4);
        CUDA_CHECK(cudaMemcpy(s.master, m->master, s.S * 4, cudaMemcpyDefault));
    }
    s.state_bytes = m->opts.optim == LOWBIT_F32 ? 8 * s.S : m->state_bytes;
    s.states = (unsigned char *)ao_malloc(s.state_bytes + 1);
    if (m->opts.optim == LOWBIT_F32) {
        CUDA_CHECK(cudaMemcpy(s.states, m->adam_m, s.S * 4, cudaMemcpyDefault));
        CUDA_CHECK(cudaMemcpy(s.states + 4 * s.S, m->adam_v, s.S * 4, cudaMemcpyDefault));
    } else {
        CUDA_CHECK(cudaMemcpy(s.states, m->state_mem, s.state_bytes, cudaMemcpyDefault));
    }
    return s;
}
static void tm_free(TmSnap *s) { free(s->params), free(s->master), free(s->states); }
// Differing bytes of the tensors' weights (padding excluded), masters and states.
static size_t tm_diff(const TmSnap &a, const TmSnap &b, const ParamTable *tab) {
    size_t d = 0;
    for (int i = 0; i < tab->n; i++)
        d += diff_bytes(a.params + tab->p[i].offset, b.params + tab->p[i].offset, tab->p[i].numel * 2, NULL);
    if (a.master && b.master && a.S == b.S) d += diff_bytes(a.master, b.master, a.S * 4, NULL);
    if ((a.master != NULL) != (b.master != NULL)) d++;
    d += a.state_bytes == b.state_bytes ? diff_bytes(a.states, b.states, a.state_bytes, NULL) : 1;
    return d;
}

static const char *tm_name(const TmRun &r, char *buf, size_t n) {
    snprintf(buf, n, "--optim %s --master %s%s%s%s, %s", r.optim == LOWBIT_F32 ? "adamw" : lowbit_format_name(r.optim),
             r.master == LOWBIT_MASTER_F32 ? "fp32" : "bf16-sr", r.offload ? " --offload" : "",
             r.offload ? (r.sync ? " (no overlap)" : " (overlapped)") : "", r.overlap ? " --optim-overlap" : "",
             r.clip ? "clipped" : "no clipping");
    return buf;
}

static TmSnap tm_run(GpuCtx *ctx, const LlamaModel *cpu, const TmRun &r, int steps) {
    GpuRunOpts o = tm_opts(r, nullptr);
    LlamaGpu m;
    llama_gpu_init(&m, ctx, cpu, TM_B, TM_T, &o);
    tm_steps(&m, ctx, r, 0, steps);
    TmSnap s = tm_snap(&m);
    llama_gpu_free(&m);
    return s;
}

// Appends to a diagnosis line (tm_zero3).
__attribute__((format(printf, 3, 4))) static void diag_add(char *buf, size_t cap, const char *fmt, ...) {
    const size_t at = strlen(buf);
    if (at + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + at, cap - at, fmt, ap);
    va_end(ap);
}

// Elements of [0, n) where a and b differ (uint16 or bit patterns of fp32), the first in *first.
template <class T> static size_t diff_elems(const T *a, const T *b, size_t n, size_t *first) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(T)) && bad++ == 0 && first) *first = i;
    return bad;
}

// 3 ZeRO-1 ranks in one process, offloaded and overlapped: every rank computes the whole
// gradient (the same batches) and steps its shard; the "all-gather" copies each rank's shard
// of the weights to the others. The weights must equal the unsharded on-GPU run's.
// A failure also says where the runs part (no further checks: diagnosis for the next GPU run):
// an unsharded on-GPU run steps in lockstep, and after each step the report has the first time
// that a rank's host bf16 copy (h_params) differs from its GPU shard (init / upload), a rank's
// gradients differ from the lockstep run's (the weights the forward read differed), a rank's host
// step differs from the lockstep run's weights on its shard, and the gathered weights differ
// (count, first element, its tensor and the rank owning it).
static void tm_zero3(GpuCtx *ctx, const LlamaModel *cpu, const TmRun &r, int steps, const TmSnap &ref) {
    enum { W = 3 };
    ZeroPlan z[W];
    LlamaGpu m[W];
    for (int k = 0; k < W; k++) {
        zero_plan_init(&z[k], &cpu->tab, cpu->cfg.n_layers, 1, k, W);
        GpuRunOpts o = tm_opts(r, &z[k]);
        llama_gpu_init(&m[k], ctx, cpu, TM_B, TM_T, &o);
    }
    const size_t P = cpu->tab.total;
    const TmRun ur = {r.optim, r.master, 0, 0, r.clip, 0};
    GpuRunOpts uo = tm_opts(ur, nullptr);
    LlamaGpu u;
    llama_gpu_init(&u, ctx, cpu, TM_B, TM_T, &uo);
    uint16_t *hu = (uint16_t *)ao_malloc(P * 2), *hk = (uint16_t *)ao_malloc(P * 2);
    float *gu = (float *)ao_malloc(P * 4), *gk = (float *)ao_malloc(P * 4);
    char diag[1024] = "";
    int seen_up = 0, seen_g = 0, seen_host = 0, seen_all = 0;
    for (size_t i = 0; i < P; i++) hu[i] = lowbit_bf16_rne(cpu->params[i]);  // what init must leave on every GPU
    for (int k = 0; k <= W; k++) {
        const LlamaGpu *mk = k < W ? &m[k] : &u;
        size_t f = 0, n, nz = 0;
        CUDA_CHECK(cudaMemcpy(hk, mk->params, P * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(gk, mk->grads, P * 4, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < P; i++) nz += gk[i] != 0.0f;
        char who[32];
        if (k < W) snprintf(who, sizeof who, "rank %d", k);
        else snprintf(who, sizeof who, "the lockstep run");
        if ((n = diff_elems(hk, hu, P, &f)) || nz)
            diag_add(diag, sizeof diag, "; after init %s's GPU weights != bf16(CPU weights) at %zu (first %zu), %zu "
                     "gradients not 0", who, n, f, nz);
        if (k == W) break;
        const size_t b0 = z[k].begin, S = z[k].end - b0;
        if ((n = diff_elems(m[k].h_params, hk + b0, S, &f)) && !seen_up++)
            diag_add(diag, sizeof diag, "; after init rank %d's host bf16 copy != its GPU shard (%zu, first at %zu)", k, n,
                     b0 + f);
    }
    bf16 *all = dalloc<bf16>(P);
    for (int t = 0; t < steps; t++) {
        for (int k = 0; k < W; k++) tm_steps(&m[k], ctx, r, t, t + 1);
        tm_steps(&u, ctx, ur, t, t + 1);
        CUDA_CHECK(cudaMemcpy(hu, u.params, P * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(gu, u.grads, P * 4, cudaMemcpyDeviceToHost));
        for (int k = 0; k < W; k++) {
            const size_t b0 = z[k].begin, S = z[k].end - b0;
            size_t f = 0, n;
            CUDA_CHECK(cudaMemcpy(gk, m[k].grads, P * 4, cudaMemcpyDeviceToHost));
            if ((n = diff_elems(gk, gu, P, &f)) && !seen_g++)
                diag_add(diag, sizeof diag, "; step %d: rank %d's gradients differ (%zu, first at %zu)", t + 1, k, n, f);
            CUDA_CHECK(cudaMemcpy(hk, m[k].params + b0, S * 2, cudaMemcpyDeviceToHost));
            if ((n = diff_elems(m[k].h_params, hk, S, &f)) && !seen_up++)
                diag_add(diag, sizeof diag, "; step %d: rank %d's host bf16 copy != its GPU shard after the upload (%zu, first "
                         "at %zu)", t + 1, k, n, b0 + f);
            if ((n = diff_elems(m[k].h_params, hu + b0, S, &f)) && !seen_host++)
                diag_add(diag, sizeof diag, "; step %d: rank %d's host step != the lockstep run on its shard (%zu, first at "
                         "%zu)", t + 1, k, n, b0 + f);
        }
        for (int k = 0; k < W; k++)
            CUDA_CHECK(cudaMemcpyAsync(all + z[k].begin, m[k].params + z[k].begin, (z[k].end - z[k].begin) * 2,
                                       cudaMemcpyDeviceToDevice, ctx->stream));
        for (int k = 0; k < W; k++)
            CUDA_CHECK(cudaMemcpyAsync(m[k].params, all, P * 2, cudaMemcpyDeviceToDevice, ctx->stream));
        CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
        CUDA_CHECK(cudaMemcpy(hk, all, P * 2, cudaMemcpyDeviceToHost));
        size_t n = 0, f = P;
        for (int i = 0; i < cpu->tab.n; i++) {
            size_t fi = 0;
            const size_t o = cpu->tab.p[i].offset, ni = diff_elems(hk + o, hu + o, cpu->tab.p[i].numel, &fi);
            if (ni && f == P) f = o + fi;
            n += ni;
        }
        if (n && !seen_all++) {
            int ti = 0, rk = 0;
            while (ti + 1 < cpu->tab.n && cpu->tab.p[ti + 1].offset <= f) ti++;
            while (rk + 1 < W && z[rk + 1].begin <= f) rk++;
            diag_add(diag, sizeof diag, "; step %d: gathered weights differ from the lockstep run (%zu, first at %zu: %s[%zu], "
                     "rank %d's)", t + 1, n, f, cpu->tab.p[ti].hf_name, f - cpu->tab.p[ti].offset, rk);
        }
    }
    TmSnap s = tm_snap(&m[0]);
    size_t d = 0, du = 0;
    for (int i = 0; i < cpu->tab.n; i++) {
        const size_t o = cpu->tab.p[i].offset, n2 = cpu->tab.p[i].numel * 2;
        d += diff_bytes(s.params + o, ref.params + o, n2, NULL);
        du += diff_bytes(hu + o, ref.params + o, n2, NULL);
    }
    if (du) diag_add(diag, sizeof diag, "; the lockstep on-GPU run itself differs from the reference run (%zu bytes)", du);
    char nm[160];
    TEST_CHECK(d == 0, "%s, ZeRO-1 over 3 ranks (one process), %d steps: weights == the unsharded on-GPU step (%zu "
               "bytes differ)%s", tm_name(r, nm, sizeof nm), steps, d, diag);
    tm_free(&s);
    CUDA_CHECK(cudaFree(all));
    free(hu), free(hk), free(gu), free(gk);
    llama_gpu_free(&u);
    for (int k = 0; k < W; k++) llama_gpu_free(&m[k]), zero_plan_free(&z[k]);
}

// steps/2 steps, checkpoint, a fresh model from the checkpoint's weights and optimizer file, the
// rest: the same bits as the straight run (weights, masters, states).
static void tm_resume(GpuCtx *ctx, const LlamaModel *cpu, const TmRun &r, int steps, const TmSnap &ref) {
    const int half = steps / 2;
    GpuRunOpts o = tm_opts(r, nullptr);
    LlamaGpu m;
    llama_gpu_init(&m, ctx, cpu, TM_B, TM_T, &o);
    tm_steps(&m, ctx, r, 0, half);
    char out[512], dir[1024], err[1024];
    snprintf(out, sizeof out, "%s/resume_%d_%d_%d", test_tmpdir("optim"), (int)r.optim, (int)r.master, r.offload);
    LlamaModel scratch;
    model_init(&scratch, &cpu->cfg);
    ckpt_save(out, half, &m, ctx, &scratch, nullptr, nullptr, "{}\n", nullptr);
    model_free(&scratch);
    llama_gpu_free(&m);
    snprintf(dir, sizeof dir, "%s/ckpt_%06d", out, half);
    LlamaModel back;
    int ok = model_load_hf(&back, dir, err, sizeof err);
    TEST_CHECK(ok, "resume: %s", err);
    if (!ok) return;
    llama_gpu_init(&m, ctx, &back, TM_B, TM_T, &o);
    const int st = ckpt_load_optimizer(dir, &m);
    tm_steps(&m, ctx, r, half, steps);
    TmSnap s = tm_snap(&m);
    char nm[160];
    const size_t d = tm_diff(s, ref, &cpu->tab);
    TEST_CHECK(st == half && d == 0, "%s: %d steps + checkpoint + resume %d steps == %d steps straight (step %d read "
               "back, %zu bytes differ)", tm_name(r, nm, sizeof nm), half, steps - half, steps, st, d);
    tm_free(&s);
    llama_gpu_free(&m);
    model_free(&back);
}

struct MasterArg {
    const char *dir;
    LlamaGpu *m;
};
static void load_master_fn(void *p) {
    MasterArg *a = (MasterArg *)p;
    ckpt_load_optimizer(a->dir, a->m);
}

static void test_trainer_steps(GpuCtx *ctx) {
    const LlamaConfig c = tm_config();
    LlamaModel cpu;
    model_init(&cpu, &c);
    model_init_random(&cpu, 3);
    const int steps = 6;
    const LowbitFormat fm[4] = {LOWBIT_F32, LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_FP8};
    const LowbitMaster ms[2] = {LOWBIT_MASTER_F32, LOWBIT_MASTER_BF16_SR};
    char nm[160];
    for (int mi = 0; mi < 2; mi++)
        for (int fi = 0; fi < 4; fi++) {
            for (int clip = 1; clip >= 0; clip--) {
                const TmRun gpu = {fm[fi], ms[mi], 0, 0, clip, 0};
                TmSnap ref = tm_run(ctx, &cpu, gpu, steps);
                for (int sync = 0; sync <= 1; sync++) {
                    const TmRun off = {fm[fi], ms[mi], 1, sync, clip, 0};
                    TmSnap s = tm_run(ctx, &cpu, off, steps);
                    const size_t d = tm_diff(s, ref, &cpu.tab);
                    TEST_CHECK(d == 0, "%s, %d steps: == the on-GPU optimizer bit for bit (%zu bytes differ)",
                               tm_name(off, nm, sizeof nm), steps, d);
                    tm_free(&s);
                }
                if (clip) {
                    tm_zero3(ctx, &cpu, TmRun{fm[fi], ms[mi], 1, 0, 1, 0}, steps, ref);
                    if (ms[mi] == LOWBIT_MASTER_BF16_SR || fi == 0) {
                        tm_resume(ctx, &cpu, gpu, steps, ref);
                        tm_resume(ctx, &cpu, TmRun{fm[fi], ms[mi], 1, 0, 1, 0}, steps, ref);
                    }
                }
                tm_free(&ref);
            }
        }
    // bf16-sr keeps no fp32 master; its optimizer file says so, and an fp32-master run refuses it
    TmRun r = {LOWBIT_8BIT, LOWBIT_MASTER_BF16_SR, 0, 0, 1, 0};
    GpuRunOpts o = tm_opts(r, nullptr);
    LlamaGpu m;
    llama_gpu_init(&m, ctx, &cpu, TM_B, TM_T, &o);
    TEST_CHECK(m.master == NULL, "--master bf16-sr allocates no fp32 master weights");
    tm_steps(&m, ctx, r, 0, 1);
    char out[512], dir[1024];
    snprintf(out, sizeof out, "%s/master_check", test_tmpdir("optim"));
    LlamaModel scratch;
    model_init(&scratch, &c);
    ckpt_save(out, 1, &m, ctx, &scratch, nullptr, nullptr, "{}\n", nullptr);
    model_free(&scratch);
    llama_gpu_free(&m);
    snprintf(dir, sizeof dir, "%s/ckpt_%06d", out, 1);
    o.master = LOWBIT_MASTER_F32;
    llama_gpu_init(&m, ctx, &cpu, TM_B, TM_T, &o);
    MasterArg arg = {dir, &m};
    TEST_EXPECT_FAIL("resume a bf16-sr checkpoint with fp32 masters", load_master_fn, &arg, "--master bf16-sr");
    llama_gpu_free(&m);
    model_free(&cpu);
}

// ---- --optim-overlap --------------------------------------------------------------------------
// The on-GPU step on its own stream, stage by stage beside the next forward, against the serial
// step: the loss sums (both micro-batches) and norms of every step, an evaluation forward after
// every other step (without llama_gpu_optim_wait: the forward's own waits), and the final weights,
// masters and states, bit for bit. Once as it runs, once with a delay queued on the optimizer
// stream before each stage (optim_stage_hook): the update then lands late, so a missing or
// misplaced wait reads old weights or races the gradients' zeroing, and the bits show it.
#define TM_OV_STEPS 6
__global__ void tm_spin_kernel(unsigned long long ns) {  // one thread waits ns nanoseconds of the global timer
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    while (t - t0 < ns);
}
static void tm_delay_hook(void *arg, int, cudaStream_t s) {
    tm_spin_kernel<<<1, 1, 0, s>>>(*(const unsigned long long *)arg);
    CUDA_CHECK_LAST();
}

struct TmTrace {
    double loss[TM_OV_STEPS], eval[TM_OV_STEPS];
    float norm[TM_OV_STEPS];
};

static TmSnap tm_overlap_run(GpuCtx *ctx, const LlamaModel *cpu, const TmRun &r, unsigned long long delay,
                             TmTrace *tr) {
    GpuRunOpts o = tm_opts(r, nullptr);
    LlamaGpu m;
    llama_gpu_init(&m, ctx, cpu, TM_B, TM_T, &o);
    TEST_CHECK(m.overlap == r.overlap, "--optim-overlap %d on one GPU: overlap %d", r.overlap, m.overlap);
    if (delay) m.optim_stage_hook = tm_delay_hook, m.optim_stage_hook_arg = &delay;
    const int N = TM_B * TM_T;
    int32_t tok[N], tgt[N];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)((37 * i + 11) % m.cfg.vocab_size);
    for (int i = 0; i < N; i++) tgt[i] = i % TM_T == TM_T - 1 ? -1 : tok[i + 1];
    memset(tr, 0, sizeof *tr);
    for (int t = 0; t < TM_OV_STEPS; t++) {
        tm_steps(&m, ctx, r, t, t + 1, &tr->loss[t], &tr->norm[t]);
        if (t % 2) continue;
        llama_gpu_set_batch(&m, ctx, tok, tgt);
        int nv = 0;
        tr->eval[t] = llama_gpu_forward(&m, ctx, 0.0f, &nv);
    }
    TmSnap s = tm_snap(&m);
    llama_gpu_free(&m);
    return s;
}

static void test_optim_overlap(GpuCtx *ctx) {
    const LlamaConfig c = tm_config();
    LlamaModel cpu;
    model_init(&cpu, &c);
    model_init_random(&cpu, 4);
    const LowbitFormat fm[2] = {LOWBIT_F32, LOWBIT_8BIT};
    const LowbitMaster ms[2] = {LOWBIT_MASTER_F32, LOWBIT_MASTER_BF16_SR};
    const unsigned long long delay = 300000;  // ns per stage: longer than the tiny model's forward
    char nm[160];
    for (int mi = 0; mi < 2; mi++)
        for (int fi = 0; fi < 2; fi++)
            for (int clip = 1; clip >= 0; clip--) {
                TmTrace ref, tr;
                TmSnap sref = tm_overlap_run(ctx, &cpu, TmRun{fm[fi], ms[mi], 0, 0, clip, 0}, 0, &ref);
                for (int late = 0; late <= 1; late++) {
                    const TmRun r = {fm[fi], ms[mi], 0, 0, clip, 1};
                    TmSnap s = tm_overlap_run(ctx, &cpu, r, late ? delay : 0, &tr);
                    int t = 0;  // the first step whose loss, norm or evaluation differs, for the message
                    while (t + 1 < TM_OV_STEPS && !memcmp(&tr.loss[t], &ref.loss[t], 8) &&
                           !memcmp(&tr.norm[t], &ref.norm[t], 4) && !memcmp(&tr.eval[t], &ref.eval[t], 8))
                        t++;
                    const size_t d = tm_diff(s, sref, &cpu.tab);
                    TEST_CHECK(!memcmp(&tr, &ref, sizeof tr) && d == 0, "%s%s, %d steps: == the serial step bit for bit "
                               "(step %d: loss %.17g vs %.17g, norm %.9g vs %.9g; %zu bytes of weights, masters, states "
                               "differ)", tm_name(r, nm, sizeof nm), late ? ", optimizer stream delayed" : "", TM_OV_STEPS,
                               t + 1, tr.loss[t], ref.loss[t], tr.norm[t], ref.norm[t], d);
                    tm_free(&s);
                }
                // A checkpoint taken while an overlapped step may still run, resumed with the overlap.
                if (clip && (fi == 1 || mi == 1)) tm_resume(ctx, &cpu, TmRun{fm[fi], ms[mi], 0, 0, 1, 1}, TM_OV_STEPS, sref);
                tm_free(&sref);
            }
    // With --offload or ZeRO the step stays serial (train_llama says so at start-up).
    GpuRunOpts o = tm_opts(TmRun{LOWBIT_F32, LOWBIT_MASTER_F32, 1, 0, 1, 1}, nullptr);
    LlamaGpu m;
    llama_gpu_init(&m, ctx, &cpu, TM_B, TM_T, &o);
    TEST_CHECK(!m.overlap && !m.optim_stream, "--optim-overlap with --offload: the serial schedule");
    llama_gpu_free(&m);
    ZeroPlan z;
    zero_plan_init(&z, &cpu.tab, c.n_layers, 1, 0, 1);
    o = tm_opts(TmRun{LOWBIT_F32, LOWBIT_MASTER_F32, 0, 0, 1, 1}, &z);
    llama_gpu_init(&m, ctx, &cpu, TM_B, TM_T, &o);
    TEST_CHECK(!m.overlap && !m.optim_stream, "--optim-overlap with ZeRO: the serial schedule");
    llama_gpu_free(&m);
    zero_plan_free(&z);
    model_free(&cpu);
}

// Not a check: time per step over 64M parameters, beside the fp32 kernel, for docs/OPTIMIZERS.md.
static void bench(void) {
    const size_t n = (size_t)1 << 26;
    float *w = dalloc<float>(n), *g = dalloc<float>(n), *m = dalloc<float>(n), *v = dalloc<float>(n);
    bf16 *p = dalloc<bf16>(n);
    CUDA_CHECK(cudaMemsetAsync(w, 0, n * 4, g_s));
    CUDA_CHECK(cudaMemsetAsync(g, 0, n * 4, g_s));
    CUDA_CHECK(cudaMemsetAsync(m, 0, n * 4, g_s));
    CUDA_CHECK(cudaMemsetAsync(v, 0, n * 4, g_s));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    const LowbitFormat fm[4] = {LOWBIT_F32, LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_FP8};
    for (int k = -1; k < 4; k++) {
        LowbitLayout lay = lowbit_layout(k < 0 ? LOWBIT_F32 : fm[k], n, LOWBIT_MASTER_F32);
        void *reg = k < 0 ? NULL : dalloc<uint8_t>(lay.bytes);
        if (reg) CUDA_CHECK(cudaMemsetAsync(reg, 0, lay.bytes, g_s));
        LowbitState st = reg ? lowbit_state_at(&lay, reg) : LowbitState{};
        LowbitStep s = {1e-3, 0.9, 0.95, 1e-8, 0.1, 1, 1.0f, LOWBIT_MASTER_F32, 0, 0};
        float ms = 0;
        for (int it = 0; it < 6; it++) {
            if (it == 1) CUDA_CHECK(cudaEventRecord(e0, g_s));
            s.step = it + 1;
            if (k < 0) adamw_update(w, p, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, it + 1, 1.0f, g_s);
            else adamw_lowbit_update(w, p, st, g, &s, g_s);
        }
        CUDA_CHECK(cudaEventRecord(e1, g_s));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        printf("  64M params: %-22s %.3f ms/step, state %.2f bytes/param\n",
               k < 0 ? "adamw_update (fp32)" : lowbit_format_name(fm[k]), ms / 5, k < 0 ? 8.0 : (double)lay.bytes / n);
        if (reg) CUDA_CHECK(cudaFree(reg));
    }
    CUDA_CHECK(cudaFree(w));
    CUDA_CHECK(cudaFree(g));
    CUDA_CHECK(cudaFree(m));
    CUDA_CHECK(cudaFree(v));
    CUDA_CHECK(cudaFree(p));
}

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        test_skip("no CUDA GPU");
        return test_summary();
    }
    GpuCtx ctx;
    gpu_ctx_init(&ctx, 0);
    g_s = ctx.stream;
    test_lut_gpu();
    test_lowbit();
    test_lowbit_v1();
    test_adamw_offload();
    test_adamw_bf16_sr();
    test_sr_unbiased_gpu();
    test_trainer_steps(&ctx);
    test_optim_overlap(&ctx);
    bench();
    gpu_ctx_free(&ctx);
    return test_summary();
}
