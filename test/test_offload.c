// The offload AdamW on the CPU (optim/adamw_cpu.c, the step train_llama --offload runs): every
// SIMD variant against a plain scalar loop written out here, bit for bit (fp32 masters and bf16
// masters with stochastic rounding), the batched runner against one call per tensor, state
// ranges, the offloaded step over 3 ZeRO shards against the unsharded one; stochastic rounding
// with our counter-based bits: unbiased, by a stated bound. (Against torchao and torch:
// test_optim.c.)
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../model/params.h"
#include "../model/safetensors.h"
#include "../optim/adamw_cpu.h"
#include "../optim/lowbit.h"
#include "../quant/quant.h"
#include "test.h"

// ---- the offload AdamW ---------------------------------------------------------------------
// Written out here independently of adamw_cpu.h: the same scalars and the same five roundings.
static void adamw_plain(float *w, uint16_t *pb, const float *g, float *m, float *v, size_t n, float lr, float b1,
                        float b2, float eps, float wd, int step, float gs) {
    double bc1 = 1.0 - pow((double)b1, step), bc2 = 1.0 - pow((double)b2, step);
    float decay = (float)(1.0 - (double)lr * wd), w1 = (float)(1.0 - (double)b1), w2 = (float)(1.0 - (double)b2);
    float st = (float)(lr / bc1), bcs = (float)sqrt(bc2);
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs, p = w[i] * decay;
        m[i] = fmaf(w1, gi - m[i], m[i]);
        float vb = v[i] * b2, gg = gi * gi;
        v[i] = fmaf(w2, gg, vb);
        float den = sqrtf(v[i]) / bcs + eps;
        w[i] = fmaf(-st, m[i] / den, p);
        if (pb) pb[i] = f32_to_bf16(w[i]);
    }
}

static void test_offload_variants(void) {
    const size_t sizes[] = {1, 7, 16, 33, 1000, (1 << 16) + 37, 3 * (1 << 16) + 5};
    uint64_t rs = 11;
    AdamwIsa best = adamw_cpu_isa_best();
    printf("offload AdamW: best variant here %s\n", adamw_cpu_isa_name(best));
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        float *w0 = ao_malloc(n * 4), *m0 = ao_malloc(n * 4), *v0 = ao_malloc(n * 4), *g = ao_malloc(n * 4);
        for (size_t i = 0; i < n; i++) {
            w0[i] = test_rand_uniform(&rs) * 0.1f, g[i] = test_rand_uniform(&rs) * 0.01f;
            m0[i] = test_rand_uniform(&rs) * 1e-3f, v0[i] = fabsf(test_rand_uniform(&rs)) * 1e-5f;
        }
        g[0] = 0.0f, v0[0] = 0.0f, m0[0] = 0.0f;  // v = 0: denom is eps
        float *wr = ao_malloc(n * 4), *mr = ao_malloc(n * 4), *vr = ao_malloc(n * 4);
        uint16_t *pr = ao_malloc(n * 2), *pb = ao_malloc(n * 2);
        float *w = ao_malloc(n * 4), *m = ao_malloc(n * 4), *v = ao_malloc(n * 4);
        memcpy(wr, w0, n * 4), memcpy(mr, m0, n * 4), memcpy(vr, v0, n * 4);
        for (int step = 1; step <= 3; step++)
            adamw_plain(wr, pr, g, mr, vr, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step * 50, 0.75f);
        for (int isa = ADAMW_ISA_SCALAR; isa <= (int)best; isa++) {
            adamw_cpu_set_isa((AdamwIsa)isa);
            memcpy(w, w0, n * 4), memcpy(m, m0, n * 4), memcpy(v, v0, n * 4);
            for (int step = 1; step <= 3; step++)
                adamw_update_cpu(w, pb, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step * 50, 0.75f);
            size_t bad = test_diff_bits_f32("master", w, wr, n) + test_diff_bits_f32("m", m, mr, n) + test_diff_bits_f32("v", v, vr, n);
            bad += memcmp(pb, pr, n * 2) != 0;
            TEST_CHECK(bad == 0, "offload AdamW %s, n=%zu: bit-identical to the plain scalar loop (%zu differ)",
                       adamw_cpu_isa_name((AdamwIsa)isa), n, bad);
        }
        adamw_cpu_set_isa(best);
        free(w0), free(m0), free(v0), free(g), free(wr), free(mr), free(vr), free(pr), free(pb), free(w), free(m),
            free(v);
    }
}

// --master bf16-sr: the same step from the bf16 weights, then stochastic rounding with the
// counter-based bits, written out here again (splitmix64's finaliser, torchao's rounding rule).
static uint16_t sr_plain(float p, uint64_t seed, int step, uint64_t idx) {
    uint64_t z = seed ^ (idx * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)(uint32_t)step * 0xC2B2AE3D27D4EB4Full);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const uint32_t r = (uint32_t)(z >> 48), u = ao_f2u(p);
    const uint32_t t = (u & 0xFFFF0000u) + (r < (u & 0xFFFFu) ? 0x10000u : 0u);
    return (t & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0 : (uint16_t)(t >> 16);
}

static void adamw_plain_sr(uint16_t *pb, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                           float eps, float wd, int step, float gs, uint64_t seed, uint64_t off) {
    double bc1 = 1.0 - pow((double)b1, step), bc2 = 1.0 - pow((double)b2, step);
    float decay = (float)(1.0 - (double)lr * wd), w1 = (float)(1.0 - (double)b1), w2 = (float)(1.0 - (double)b2);
    float st = (float)(lr / bc1), bcs = (float)sqrt(bc2);
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs, p = ao_u2f((uint32_t)pb[i] << 16) * decay;
        m[i] = fmaf(w1, gi - m[i], m[i]);
        float vb = v[i] * b2, gg = gi * gi;
        v[i] = fmaf(w2, gg, vb);
        float den = sqrtf(v[i]) / bcs + eps;
        pb[i] = sr_plain(fmaf(-st, m[i] / den, p), seed, step, off + i);
    }
}

static void test_offload_sr_variants(void) {
    const size_t sizes[] = {1, 7, 16, 33, 1000, (1 << 15) + 37, 3 * (1 << 15) + 5};
    const uint64_t seed = 1337, off = 4100;  // off: the tensor's place in the whole parameter vector
    uint64_t rs = 12;
    AdamwIsa best = adamw_cpu_isa_best();
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        uint16_t *p0 = ao_malloc(n * 2), *pr = ao_malloc(n * 2), *p = ao_malloc(n * 2);
        float *m0 = ao_malloc(n * 4), *v0 = ao_malloc(n * 4), *g = ao_malloc(n * 4);
        float *mr = ao_malloc(n * 4), *vr = ao_malloc(n * 4), *m = ao_malloc(n * 4), *v = ao_malloc(n * 4);
        for (size_t i = 0; i < n; i++) {
            p0[i] = f32_to_bf16(test_rand_uniform(&rs) * 0.1f), g[i] = test_rand_uniform(&rs) * 0.01f;
            m0[i] = test_rand_uniform(&rs) * 1e-3f, v0[i] = fabsf(test_rand_uniform(&rs)) * 1e-5f;
        }
        g[0] = 0.0f, v0[0] = 0.0f, m0[0] = 0.0f;
        if (n > 8) p0[3] = 0x7F80, p0[4] = 0xFF80, p0[5] = 0x8000;  // +inf, -inf, -0
        memcpy(pr, p0, n * 2), memcpy(mr, m0, n * 4), memcpy(vr, v0, n * 4);
        for (int step = 1; step <= 3; step++)
            adamw_plain_sr(pr, g, mr, vr, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step * 50, 0.75f, seed, off);
        for (int isa = ADAMW_ISA_SCALAR; isa <= (int)best; isa++) {
            adamw_cpu_set_isa((AdamwIsa)isa);
            memcpy(p, p0, n * 2), memcpy(m, m0, n * 4), memcpy(v, v0, n * 4);
            for (int step = 1; step <= 3; step++)
                adamw_update_bf16_sr_cpu(p, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step * 50, 0.75f, seed, off);
            size_t bad = test_diff_bits_f32("m", m, mr, n) + test_diff_bits_f32("v", v, vr, n), bp = 0;
            for (size_t i = 0; i < n; i++) bp += p[i] != pr[i];
            TEST_CHECK(bad == 0 && bp == 0,
                       "offload AdamW bf16-sr %s, n=%zu: bit-identical to the plain scalar loop (%zu states, %zu "
                       "weights differ)", adamw_cpu_isa_name((AdamwIsa)isa), n, bad, bp);
        }
        adamw_cpu_set_isa(best);
        free(p0), free(pr), free(p), free(m0), free(v0), free(g), free(mr), free(vr), free(m), free(v);
    }
}

// The low-bit step (lowbit_step_unit's quantized branch, 16 lanes under ADAMW_ISA_AVX512)
// against its scalar C, bit for bit: every format and master mode, both lerp branches, states
// from zero and from random codes and scales (zero, inf and NaN scales, fp8 NaN codes), and
// blocks of zeros, denormals, huge values, -0, inf and NaN in gradients and weights.
static void lowbit_edge_fill(float *w, float *g, size_t n, int bs, uint64_t *rs) {
    for (size_t i = 0; i < n; i++) {  // blocks of gradients from 1e-9 to 1e3 in magnitude
        w[i] = 0.1f * test_rand_uniform(rs);
        g[i] = powf(10.0f, (float)((i / (size_t)bs) % 13) - 9.0f) * test_rand_uniform(rs);
    }
    for (int j = 0; j < bs; j++) {
        w[j] = 0.0f, g[j] = 0.0f;                                         // block 0: all zero
        g[bs + j] = 1e-40f * (float)(j % 5) * (j & 1 ? -1.0f : 1.0f);     // block 1: denormal grads
        w[bs + j] = j % 3 ? 1e-39f : -0.0f;                               //          and weights
        g[2 * bs + j] = (j & 1 ? -3e38f : 1e30f) * test_rand_uniform(rs); // block 2: g*g overflows
        g[3 * bs + j] = j % 4 ? -0.0f : 0.0f;                             // block 3: signed zeros
    }
    g[4 * (size_t)bs + 5] = NAN, g[5 * (size_t)bs + 7] = INFINITY, g[6 * (size_t)bs + 1] = -INFINITY;
    w[7 * (size_t)bs + 3] = NAN, w[7 * (size_t)bs + 4] = INFINITY, w[8 * (size_t)bs + 9] = -INFINITY;
    g[9 * (size_t)bs + 11] = -NAN;
}

static void test_lowbit_variants(void) {
    const LowbitFormat fmts[] = {LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_FP8};
    const AdamwIsa best = adamw_cpu_isa_best();
    for (size_t f = 0; f < sizeof fmts / sizeof *fmts; f++) {
        const int bs = lowbit_block(fmts[f]);
        const size_t n = (size_t)bs * 40;
        const LowbitLayout l = lowbit_layout_of(fmts[f], n);
        for (int mode = 0; mode < 5; mode++) {  // fp32, fp32 + bf16 copy, bf16, bf16-sr, bf16-sr given bits
            for (int init = 0; init < 2; init++) {
                uint64_t rs = 1000 + 10 * f + (uint64_t)mode + 100 * (uint64_t)init;
                float *w0 = ao_malloc(n * 4), *g = ao_malloc(n * 4), *w[2];
                uint16_t *p0 = ao_malloc(n * 2), *r16 = ao_malloc(n * 2), *p[2];
                lowbit_edge_fill(w0, g, n, bs, &rs);
                for (size_t i = 0; i < n; i++) p0[i] = f32_to_bf16(w0[i]), r16[i] = (uint16_t)test_rand_u64(&rs);
                uint8_t *reg0 = ao_calloc(1, l.bytes), *reg[2];
                LowbitState st0 = lowbit_state_at(&l, reg0);
                if (init) {  // random codes (fp8: NaN codes too) and scales, some 0, inf, NaN
                    for (size_t b = 0; b < l.m_scale_off; b++) reg0[b] = (uint8_t)test_rand_u64(&rs);
                    for (size_t b = 0; b < l.n_blocks; b++)
                        st0.m_scale[b] = 1e-3f * fabsf(test_rand_uniform(&rs)), st0.v_scale[b] = 1e-6f * fabsf(test_rand_uniform(&rs));
                    st0.m_scale[10] = 0.0f, st0.v_scale[11] = INFINITY, st0.m_scale[12] = NAN, st0.v_scale[13] = NAN;
                    st0.m_scale[14] = 3e38f, st0.v_scale[14] = 3e38f;
                }
                const LowbitMaster lm = mode < 2 ? LOWBIT_MASTER_F32 : mode == 2 ? LOWBIT_MASTER_BF16 : LOWBIT_MASTER_BF16_SR;
                for (int isa = ADAMW_ISA_SCALAR; isa <= (int)best; isa++) {
                    const int c = isa == ADAMW_ISA_SCALAR ? 0 : 1;
                    w[c] = ao_malloc(n * 4), p[c] = ao_malloc(n * 2), reg[c] = ao_malloc(l.bytes);
                    memcpy(w[c], w0, n * 4), memcpy(p[c], p0, n * 2), memcpy(reg[c], reg0, l.bytes);
                    const LowbitState stc = lowbit_state_at(&l, reg[c]);
                    adamw_cpu_set_isa((AdamwIsa)isa);
                    for (int step = 1; step <= 3; step++) {
                        // both lerp branches: weights 1 - beta below and above 0.5
                        LowbitStep s = {2e-3, step == 2 ? 0.3 : 0.9, step == 3 ? 0.4 : 0.999, 1e-8, 0.1, step * 7, 0.75f,
                                        lm, 42, 4096};
                        lowbit_adamw_step_cpu(mode < 2 ? w[c] : NULL, mode == 0 ? NULL : p[c], &stc, g, &s,
                                              mode == 4 ? r16 : NULL);
                    }
                    if (c == 0) continue;
                    size_t bad = memcmp(reg[0], reg[1], l.bytes) != 0;
                    bad += memcmp(p[0], p[1], n * 2) != 0;
                    if (mode < 2) bad += test_diff_bits_f32("master", w[1], w[0], n);
                    TEST_CHECK(bad == 0, "low-bit step %s, %s states, master mode %d, %s states: bit-identical to scalar",
                               adamw_cpu_isa_name((AdamwIsa)isa), lowbit_format_name(fmts[f]), mode,
                               init ? "random" : "zero");
                    free(w[1]), free(p[1]), free(reg[1]);
                }
                adamw_cpu_set_isa(best);
                free(w[0]), free(p[0]), free(reg[0]), free(w0), free(g), free(p0), free(r16), free(reg0);
            }
        }
    }
}

// adamw_cpu_run over a mixed group (what the offloaded step hands it per layer) against one
// call per tensor: fp32 and bf16-sr masters, fp32 states and each low-bit format.
static void test_cpu_run_batch(void) {
    enum { NJ = 6 };
    const size_t ns[NJ] = {70001, 513, 256 * 40, 128 * 33, 4224, 256 * 9};
    const LowbitFormat fm[NJ] = {LOWBIT_F32, LOWBIT_F32, LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_8BIT, LOWBIT_FP8};
    for (int sr = 0; sr <= 1; sr++) {
        const LowbitMaster mode = sr ? LOWBIT_MASTER_BF16_SR : LOWBIT_MASTER_F32;
        AdamwCpuJob jobs[NJ];
        float *w[2][NJ], *g[NJ];
        uint16_t *p[2][NJ];
        void *reg[2][NJ];
        LowbitLayout lay[NJ];
        uint64_t rs = 99, off = 0;
        for (int j = 0; j < NJ; j++) {
            const size_t n = ns[j];
            lay[j] = lowbit_layout(fm[j], n, LOWBIT_MASTER_F32);  // the trainer's layout: fp32 plain states for any master
            g[j] = ao_malloc(n * 4);
            for (int c = 0; c < 2; c++) {
                w[c][j] = ao_malloc(n * 4), p[c][j] = ao_malloc(n * 2), reg[c][j] = ao_calloc(1, lay[j].bytes);
                uint64_t r2 = rs;
                for (size_t i = 0; i < n; i++) {
                    w[c][j][i] = 0.1f * test_rand_uniform(&r2);
                    p[c][j][i] = f32_to_bf16(w[c][j][i]);
                }
            }
            for (size_t i = 0; i < n; i++) g[j][i] = 0.01f * test_rand_uniform(&rs);
            rs += 7;
            memset(&jobs[j], 0, sizeof jobs[j]);
            jobs[j].kind = j < 2 ? ADAMW_CPU_TORCH : ADAMW_CPU_LOWBIT;
            jobs[j].master = sr ? NULL : w[0][j];
            jobs[j].param = p[0][j];
            jobs[j].grad = g[j];
            jobs[j].st = lowbit_state_at(&lay[j], reg[0][j]);
            LowbitStep s = {2e-3, 0.9, 0.95, 1e-8, j % 2 ? 0.0 : 0.1, 7, 0.5f, mode, 77, off};
            jobs[j].s = s;
            off += n + 64;
        }
        adamw_cpu_run(jobs, NJ);
        for (int j = 0; j < NJ; j++) {  // one at a time, on the second copy
            AdamwCpuJob one = jobs[j];
            one.master = sr ? NULL : w[1][j];
            one.param = p[1][j];
            one.st = lowbit_state_at(&lay[j], reg[1][j]);
            if (one.kind == ADAMW_CPU_LOWBIT)
                adamw_lowbit_update_cpu(one.master, one.param, &one.st, one.grad, &one.s);
            else if (sr)
                adamw_update_bf16_sr_cpu(one.param, one.grad, (float *)one.st.m, (float *)one.st.v, one.st.n,
                                         (float)one.s.lr, (float)one.s.beta1, (float)one.s.beta2, (float)one.s.eps,
                                         (float)one.s.weight_decay, one.s.step, one.s.grad_scale, one.s.seed,
                                         one.s.sr_offset);
            else
                adamw_update_cpu(one.master, one.param, one.grad, (float *)one.st.m, (float *)one.st.v, one.st.n,
                                 (float)one.s.lr, (float)one.s.beta1, (float)one.s.beta2, (float)one.s.eps,
                                 (float)one.s.weight_decay, one.s.step, one.s.grad_scale);
            const size_t n = ns[j];
            size_t bad = memcmp(p[0][j], p[1][j], n * 2) != 0;
            bad += memcmp(reg[0][j], reg[1][j], lay[j].bytes) != 0;
            if (!sr) bad += memcmp(w[0][j], w[1][j], n * 4) != 0;
            TEST_CHECK(bad == 0, "adamw_cpu_run, %s master, job %d (%s states, n=%zu): equals the one-tensor call",
                       sr ? "bf16-sr" : "fp32", j, lowbit_format_name(lay[j].fmt), n);
            free(w[0][j]), free(w[1][j]), free(p[0][j]), free(p[1][j]), free(reg[0][j]), free(reg[1][j]), free(g[j]);
        }
    }
}

// A tensor stepped in ranges (lowbit_state_range, the offloaded step's slices) equals the
// tensor stepped whole: every format, cuts on whole blocks, bf16-sr (the SR index moves too).
static void test_state_range(void) {
    const LowbitFormat fm[4] = {LOWBIT_F32, LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_FP8};
    const size_t n = 256 * 37;
    for (int f = 0; f < 4; f++)
        for (int sr = 0; sr <= 1; sr++) {
            const LowbitMaster mode = sr ? LOWBIT_MASTER_BF16_SR : LOWBIT_MASTER_F32;
            const LowbitLayout lay = lowbit_layout(fm[f], n, LOWBIT_MASTER_F32);
            void *reg[2] = {ao_calloc(1, lay.bytes), ao_calloc(1, lay.bytes)};
            float *w[2] = {ao_malloc(n * 4), ao_malloc(n * 4)}, *g = ao_malloc(n * 4);
            uint16_t *p[2] = {ao_malloc(n * 2), ao_malloc(n * 2)};
            uint64_t rs = 5;
            for (size_t i = 0; i < n; i++) {
                w[0][i] = w[1][i] = 0.1f * test_rand_uniform(&rs);
                p[0][i] = p[1][i] = f32_to_bf16(w[0][i]);
                g[i] = 0.01f * test_rand_uniform(&rs);
            }
            const size_t cuts[4] = {0, 256 * 5, 256 * 29, n};
            for (int t = 1; t <= 2; t++) {
                AdamwCpuJob whole, parts[3];
                memset(&whole, 0, sizeof whole);
                whole.kind = fm[f] == LOWBIT_F32 ? ADAMW_CPU_TORCH : ADAMW_CPU_LOWBIT;
                whole.master = sr ? NULL : w[0];
                whole.param = p[0];
                whole.grad = g;
                whole.st = lowbit_state_at(&lay, reg[0]);
                LowbitStep s = {1e-3, 0.9, 0.95, 1e-8, 0.1, t, 1.0f, mode, 9, 1000};
                whole.s = s;
                adamw_cpu_run(&whole, 1);
                const LowbitState st1 = lowbit_state_at(&lay, reg[1]);
                for (int k = 0; k < 3; k++) {
                    const size_t e0 = cuts[k], len = cuts[k + 1] - cuts[k];
                    parts[k] = whole;
                    parts[k].master = sr ? NULL : w[1] + e0;
                    parts[k].param = p[1] + e0;
                    parts[k].grad = g + e0;
                    parts[k].st = lowbit_state_range(&st1, e0, len);
                    parts[k].s.sr_offset = 1000 + e0;
                }
                adamw_cpu_run(parts, 3);
            }
            const int same = memcmp(reg[0], reg[1], lay.bytes) == 0 && memcmp(p[0], p[1], n * 2) == 0 &&
                             (sr || memcmp(w[0], w[1], n * 4) == 0);
            TEST_CHECK(same, "%s states, %s master: stepped in 3 ranges == stepped whole (2 steps)",
                       lowbit_format_name(lay.fmt), sr ? "bf16-sr" : "fp32");
            free(reg[0]), free(reg[1]), free(w[0]), free(w[1]), free(g), free(p[0]), free(p[1]);
        }
}

// The offloaded step under ZeRO on the host, as gpu_test_optim's "ZeRO-1 over 3 ranks (one
// process)" runs it (model/llama_gpu.cu: offload_plan_slices, piece_job, offload_adamw): the
// parameter vector of that test's model split into 3 shards at the real ZeRO cuts; per rank,
// host buffers of the shard indexed by (flat index - shard begin), each piece cut into slices of
// 19 x 256 elements, each slice a job with sr_offset = its flat index; after every step each
// rank's bf16 weights are gathered into the whole vector. Every format, both --master modes,
// 6 steps: bit for bit the unsharded host step. A second model (odd-sized embedding and norms,
// so padding between tensors, and 3 layers) moves every cut. And the check sees the bugs it is
// for: a shard-local stochastic-rounding index, or a shard left out of the gather, changes the
// weights.
#define TZ_ALIGN 256         // dist/zero.cuh ZERO_ALIGN
#define TZ_SLICE (19 * 256)  // gpu_test_optim's offload_slice

// dist/zero.cu's legal cut at or below x (restated: that file is CUDA-side): the start of the
// tensor holding x plus whole TZ_ALIGN units; a point in padding moves up to the next tensor.
static size_t tz_cut(const ParamTable *t, size_t x) {
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->p[i];
        if (x < p->offset + p->numel) return x <= p->offset ? p->offset : p->offset + (x - p->offset) / TZ_ALIGN * TZ_ALIGN;
    }
    return t->total;
}
static void tz_bounds(const ParamTable *t, int world, size_t *b) {
    b[0] = 0, b[world] = t->total;
    for (int r = 1; r < world; r++) {
        const size_t cut = tz_cut(t, (size_t)((unsigned __int128)t->total * (unsigned)r / (unsigned)world));
        b[r] = cut > b[r - 1] ? cut : b[r - 1];
    }
}

typedef enum { TZ_RIGHT = 0, TZ_LOCAL_SR = 1, TZ_NO_GATHER = 2 } TzMode;

// Runs `steps` host steps of the whole vector split over `world` ranks; p (bf16 [total]) holds the
// gathered weights at the end. States: one region per tensor laid out as the trainer lays them
// out (fp32 plain states for either master), a rank's piece a lowbit_state_range of it.
static void tz_run(const ParamTable *t, LowbitFormat want, LowbitMaster mode, int world, TzMode bug, int steps,
                   const uint16_t *p0, uint16_t *p) {
    const size_t P = t->total;
    const int f32m = mode == LOWBIT_MASTER_F32;
    size_t bounds[4];
    tz_bounds(t, world, bounds);
    void **reg = ao_malloc((size_t)t->n * sizeof *reg);
    LowbitState *st = ao_malloc((size_t)t->n * sizeof *st);
    for (int i = 0; i < t->n; i++) {
        const LowbitLayout lay = lowbit_layout(want, t->p[i].numel, LOWBIT_MASTER_F32);
        reg[i] = ao_calloc(1, lay.bytes);
        st[i] = lowbit_state_at(&lay, reg[i]);
    }
    memcpy(p, p0, P * 2);
    uint16_t *hp[4];
    float *hw[4], *hg[4];
    for (int r = 0; r < world; r++) {  // the rank's host copies of its shard, as llama_gpu_init makes them
        const size_t b0 = bounds[r], S = bounds[r + 1] - b0;
        hp[r] = ao_malloc(S * 2 + 2), hg[r] = ao_malloc(S * 4 + 4), hw[r] = f32m ? ao_malloc(S * 4 + 4) : NULL;
        memcpy(hp[r], p0 + b0, S * 2);
        for (size_t i = 0; f32m && i < S; i++) hw[r][i] = lowbit_bf16_to_f32(p0[b0 + i]);
    }
    float *g = ao_calloc(P, 4);
    AdamwCpuJob *jobs = ao_malloc((P / TZ_SLICE + 2 * (size_t)t->n + 1) * sizeof *jobs);
    for (int step = 1; step <= steps; step++) {
        uint64_t rs = 0xC0FFEEull + (uint64_t)step;  // the step's gradient, the same for every run
        for (int i = 0; i < t->n; i++)
            for (size_t e = 0; e < t->p[i].numel; e++) g[t->p[i].offset + e] = 0.02f * test_rand_uniform(&rs);
        const double lr = 1e-3 * (1 + step % 3);
        const float gs = step % 2 ? 0.75f : 1.0f;  // a clip scale
        for (int r = 0; r < world; r++) {
            const size_t b0 = bounds[r], b1 = bounds[r + 1];
            memcpy(hg[r], g + b0, (b1 - b0) * 4);
            int nj = 0;
            for (int i = 0; i < t->n; i++) {  // the rank's pieces, each cut into slices
                const ParamInfo *pi = &t->p[i];
                const size_t lo = b0 > pi->offset ? b0 : pi->offset;
                const size_t hi = b1 < pi->offset + pi->numel ? b1 : pi->offset + pi->numel;
                for (size_t x = lo; x < hi; x += TZ_SLICE) {
                    const size_t n = hi - x < TZ_SLICE ? hi - x : TZ_SLICE, so = x - b0;
                    AdamwCpuJob *j = &jobs[nj++];
                    memset(j, 0, sizeof *j);
                    j->kind = want == LOWBIT_F32 ? ADAMW_CPU_TORCH : ADAMW_CPU_LOWBIT;
                    j->master = f32m ? hw[r] + so : NULL;
                    j->param = hp[r] + so;
                    j->grad = hg[r] + so;
                    j->st = lowbit_state_range(&st[i], x - pi->offset, n);
                    const LowbitStep s = {lr, 0.9, 0.95, 1e-8, pi->kind == PARAM_MATRIX ? 0.1 : 0.0, step, gs, mode,
                                          5, bug == TZ_LOCAL_SR ? so : x};
                    j->s = s;
                }
            }
            adamw_cpu_run(jobs, nj);
        }
        for (int r = 0; r < world; r++)  // the all-gather of the bf16 weights
            if (!(bug == TZ_NO_GATHER && r == world - 1)) memcpy(p + bounds[r], hp[r], (bounds[r + 1] - bounds[r]) * 2);
    }
    for (int r = 0; r < world; r++) free(hp[r]), free(hg[r]), free(hw[r]);
    for (int i = 0; i < t->n; i++) free(reg[i]);
    free(reg), free(st), free(g), free(jobs);
}

static size_t tz_diff(const ParamTable *t, const uint16_t *a, const uint16_t *b) {
    size_t d = 0;
    for (int i = 0; i < t->n; i++)
        for (size_t e = 0; e < t->p[i].numel; e++) d += a[t->p[i].offset + e] != b[t->p[i].offset + e];
    return d;
}

static LlamaConfig tz_config(int padded) {
    LlamaConfig c;
    memset(&c, 0, sizeof c);
    c.arch = ARCH_LLAMA;
    // padded: the embedding and the norms are odd sizes (padding after them, plain states), the
    // matrices whole 256-blocks (quantized), so the cuts and slices move
    c.vocab_size = padded ? 509 : 512;
    c.hidden_size = padded ? 136 : 128;
    c.intermediate_size = padded ? 320 : 384;
    c.n_layers = padded ? 3 : 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 64;
    c.tie_word_embeddings = 1;
    return c;
}

static void test_zero_shards_offload(void) {
    const LowbitFormat fm[4] = {LOWBIT_F32, LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_FP8};
    const int steps = 6;
    for (int padded = 0; padded <= 1; padded++) {
        const LlamaConfig c = tz_config(padded);
        ParamTable t;
        param_table_init(&t, &c);
        size_t b[4];
        tz_bounds(&t, 3, b);
        printf("  ZeRO shards on the host, %s model (%zu parameters): [0, %zu) [%zu, %zu) [%zu, %zu)\n",
               padded ? "padded" : "gpu_test_optim's", t.total, b[1], b[1], b[2], b[2], b[3]);
        uint16_t *p0 = ao_calloc(t.total, 2), *ref = ao_malloc(t.total * 2), *got = ao_malloc(t.total * 2);
        uint64_t rs = 77 + (uint64_t)padded;
        for (int i = 0; i < t.n; i++)
            for (size_t e = 0; e < t.p[i].numel; e++) p0[t.p[i].offset + e] = lowbit_bf16_rne(0.02f * test_rand_uniform(&rs));
        for (int mi = 0; mi < 2; mi++)
            for (int f = 0; f < 4; f++) {
                const LowbitMaster mode = mi ? LOWBIT_MASTER_BF16_SR : LOWBIT_MASTER_F32;
                tz_run(&t, fm[f], mode, 1, TZ_RIGHT, steps, p0, ref);
                tz_run(&t, fm[f], mode, 3, TZ_RIGHT, steps, p0, got);
                const size_t d = tz_diff(&t, got, ref), moved = tz_diff(&t, ref, p0);
                TEST_CHECK(d == 0 && moved > t.total / 2,
                           "host step, --optim %s --master %s, %s model: 3 ZeRO shards (slices of %d) == unsharded, %d "
                           "steps (%zu weights differ; %zu of %zu moved)",
                           fm[f] == LOWBIT_F32 ? "adamw" : lowbit_format_name(fm[f]), mi ? "bf16-sr" : "fp32",
                           padded ? "padded" : "gpu_test_optim's", TZ_SLICE, steps, d, moved, t.total);
            }
        // the check sees the bugs it guards against (bf16-sr, 8-bit states)
        tz_run(&t, LOWBIT_8BIT, LOWBIT_MASTER_BF16_SR, 1, TZ_RIGHT, steps, p0, ref);
        tz_run(&t, LOWBIT_8BIT, LOWBIT_MASTER_BF16_SR, 3, TZ_LOCAL_SR, steps, p0, got);
        const size_t d_sr = tz_diff(&t, got, ref);
        tz_run(&t, LOWBIT_8BIT, LOWBIT_MASTER_BF16_SR, 3, TZ_NO_GATHER, steps, p0, got);
        const size_t d_ga = tz_diff(&t, got, ref);
        TEST_CHECK(d_sr > 0 && d_ga > 0, "host ZeRO check, %s model: a shard-local SR index (%zu weights differ) and a "
                   "shard missing from the gather (%zu differ) are both caught", padded ? "padded" : "gpu_test_optim's",
                   d_sr, d_ga);
        free(p0), free(ref), free(got);
        param_table_free(&t);
    }
}

// Stochastic rounding is unbiased: for x between the bf16 neighbours lo < hi, rounding up must
// happen with probability q = (x - lo) / (hi - lo) = low16(bits(x)) / 65536 exactly, so that
// E[round(x)] = x. For K values and N draws each (over steps at a fixed element, and over
// elements at a fixed step, as a run draws them) the count of ups U is Binomial(N, q) if the bits
// are uniform and independent: z = (U - Nq) / sqrt(Nq(1 - q)) is then ~N(0, 1). Bounds: every
// |z| <= 6 (a false alarm has probability ~2e-9 per value), the z summed over all values within
// 6 (a bias shared by all values), and the mean of z^2 in 1 +- 0.2 (~9 sigma for K = 2048:
// catches over- or under-dispersed, i.e. correlated, bits). The bits are a fixed function of the
// seed, so the result is deterministic; nearest-even rounding fails these bounds by far.
static void sr_unbiased_check(const char *what, int over_steps) {
    enum { K = 2048, N = 4096 };
    uint64_t rs = 2024;
    double zmax = 0, zsum_num = 0, zsum_den = 0, z2 = 0;
    size_t not_neighbour = 0;
    for (int k = 0; k < K; k++) {
        // sign, exponent 2^-30 .. 2^8, random mantissa; the low 16 bits not zero (q > 0)
        uint32_t u = (uint32_t)test_rand_u64(&rs);
        u = (u & 0x807FFFFFu) | ((uint32_t)(97 + (k % 39)) << 23);
        if ((u & 0xFFFFu) == 0) u |= 1;
        const float x = ao_u2f(u);
        const double q = (double)(u & 0xFFFFu) / 65536.0;
        const uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
        long up = 0;
        for (int d = 0; d < N; d++) {
            const uint32_t r = over_steps ? lowbit_sr_bits(1337, d + 1, (uint64_t)k) : lowbit_sr_bits(1337, 5, (uint64_t)k * N + d);
            const uint16_t b = lowbit_bf16_sr(x, r);
            up += b == hi;
            not_neighbour += b != hi && b != lo;
        }
        const double var = N * q * (1 - q), z = (up - N * q) / sqrt(var);
        if (fabs(z) > zmax) zmax = fabs(z);
        zsum_num += up - N * q;
        zsum_den += var;
        z2 += z * z;
    }
    const double zall = zsum_num / sqrt(zsum_den), mz2 = z2 / K;
    printf("  SR unbiasedness (%s): %d values x %d draws: max |z| %.2f, all-values z %.2f, mean z^2 %.3f\n", what, K, N,
           zmax, zall, mz2);
    TEST_CHECK(not_neighbour == 0 && zmax <= 6.0 && fabs(zall) <= 6.0 && fabs(mz2 - 1.0) <= 0.2,
               "stochastic rounding %s: unbiased within the bounds (max |z| %.2f <= 6, all-values z %.2f within 6, mean "
               "z^2 %.3f within 1 +- 0.2, %zu results not a neighbour)", what, zmax, zall, mz2, not_neighbour);
}

static void test_sr_unbiased(void) {
    sr_unbiased_check("over steps, one element", 1);
    sr_unbiased_check("over elements, one step", 0);
    // the stream is a function of (seed, step, element): equal inputs, equal bits; others differ
    int same = lowbit_sr_bits(7, 3, 12345) == lowbit_sr_bits(7, 3, 12345), differ = 0;
    for (uint64_t i = 0; i < 64; i++)
        differ += lowbit_sr_bits(7, 3, i) != lowbit_sr_bits(8, 3, i) && lowbit_sr_bits(7, 3, i) != lowbit_sr_bits(7, 4, i);
    TEST_CHECK(same && differ >= 62, "SR bits: a function of (seed, step, element) (%d of 64 differ across seed and step)",
               differ);
}

int main(void) {
    test_offload_variants();
    test_offload_sr_variants();
    test_lowbit_variants();
    test_cpu_run_batch();
    test_state_range();
    test_zero_shards_offload();
    test_sr_unbiased();
    return test_summary();
}
