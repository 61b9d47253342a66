// Optimizer kernels on the GPU against the CPU, bit for bit: torchao's low-bit AdamW
// (adamw_lowbit_update vs lowbit_adamw_step_cpu, which test_optim checks against torchao)
// for 8-bit, 4-bit and fp8 states and the plain fp32/bf16 states of small or odd tensors,
// with fp32 masters, bf16 masters and bf16 stochastic rounding; and the fp32 AdamW kernel
// (adamw_update) vs the offload step (adamw_update_cpu). Sizes are odd on purpose: a single
// element, 1000, tensors that are whole 4-bit blocks but not 8-bit ones, many blocks.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test.cuh"
#include "../optim/adamw.cuh"
#include "../optim/adamw_lowbit.cuh"
extern "C" {
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
static void lowbit_case(LowbitFormat want, size_t n, LowbitMaster mode, double b1) {
    const LowbitLayout lay = lowbit_layout(want, n, mode);
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
    float *w_d = dalloc<float>(n), *g_d = dalloc<float>(n);
    bf16 *p_d = dalloc<bf16>(n);
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
               "lowbit %s->%s states, n=%zu, %s, b1=%g: GPU == CPU bit for bit over 3 steps (differing bytes: state "
               "%zu (first at %zu of %zu), master %zu, bf16 %zu)",
               lowbit_format_name(want), lowbit_format_name(lay.fmt), n, master_name(mode), b1, bad_state, first,
               lay.bytes, bad_w, bad_p);
    free(reg_h), free(reg_g), free(w_h), free(w_g), free(g), free(p_h), free(p_g);
    CUDA_CHECK(cudaFree(reg_d));
    CUDA_CHECK(cudaFree(w_d));
    CUDA_CHECK(cudaFree(g_d));
    CUDA_CHECK(cudaFree(p_d));
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
    CUDA_CHECK(cudaSetDevice(0));
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_s, cudaStreamNonBlocking));
    test_lowbit();
    test_adamw_offload();
    bench();
    CUDA_CHECK(cudaStreamDestroy(g_s));
    return test_summary();
}
