// Optimizers on the CPU: torchao's low-bit AdamW (optim/lowbit.c) against torchao's own
// results (test/fixtures/optim/torchao.safetensors, written by test/ref/optim_ref.py): maps,
// quantizer codes and scales, stochastic rounding, three optimizer steps per case — all
// compared bit for bit. The offload AdamW (optim/adamw_cpu.c): every SIMD variant against a
// plain scalar loop, bit for bit (fp32 masters and bf16 masters with stochastic rounding), the
// batched runner against one call per tensor, the offloaded step over 3 ZeRO shards against the
// unsharded one, and against torch.optim.AdamW within fp32 rounding. Stochastic rounding with
// our counter-based bits: unbiased, by a stated bound.
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

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

// Counts elements whose bits differ; prints the first one.
static size_t diff_f32(const char *what, const float *got, const float *ref, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!same_bits(got[i], ref[i]) && bad++ == 0)
            printf("  %s: first difference at [%zu]: got %.9g (%08x) ref %.9g (%08x)\n", what, i, got[i],
                   ao_f2u(got[i]), ref[i], ao_f2u(ref[i]));
    return bad;
}
static size_t diff_u8(const char *what, const uint8_t *got, const uint8_t *ref, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (got[i] != ref[i] && bad++ == 0)
            printf("  %s: first difference at [%zu]: got %u ref %u\n", what, i, got[i], ref[i]);
    return bad;
}

// ---- fixture access ------------------------------------------------------------------------
static SafeTensors g_st;
static int g_have_fixture;

static const StTensor *need(const char *name) {
    const StTensor *t = st_find(&g_st, name);
    TEST_CHECK(t != NULL, "optim fixture lacks %s", name);
    return t;
}
static float *fx_f32(const char *name, size_t n) {  // NULL (and a failed check) when absent or mis-sized
    const StTensor *t = need(name);
    if (!t) return NULL;
    TEST_CHECK(t->numel == n && t->dtype == ST_F32, "%s: %zu elements of dtype %s, expected %zu F32", name, t->numel,
               st_dtype_name(t->dtype), n);
    if (t->numel != n || t->dtype != ST_F32) return NULL;
    float *v = ao_malloc(n * sizeof(float) + 1);
    memcpy(v, t->data, n * sizeof(float));
    return v;
}
static uint8_t *fx_u8(const char *name, size_t n) {
    const StTensor *t = need(name);
    if (!t) return NULL;
    TEST_CHECK(t->numel == n && t->dtype == ST_U8, "%s: %zu elements, expected %zu U8", name, t->numel, n);
    if (t->numel != n || t->dtype != ST_U8) return NULL;
    uint8_t *v = ao_malloc(n + 1);
    memcpy(v, t->data, n);
    return v;
}
static int32_t *fx_i32(const char *name, size_t n) {
    const StTensor *t = need(name);
    if (!t) return NULL;
    TEST_CHECK(t->numel == n && t->dtype == ST_I32, "%s: %zu elements, expected %zu I32", name, t->numel, n);
    if (t->numel != n || t->dtype != ST_I32) return NULL;
    int32_t *v = ao_malloc(n * 4 + 1);
    memcpy(v, t->data, n * 4);
    return v;
}

// "k1=v1;k2=v2" -> the value of key (a static buffer), NULL when absent.
static const char *kv(const char *s, const char *key) {
    static char out[128];
    size_t kl = strlen(key);
    for (const char *p = s; p && *p;) {
        const char *e = strchr(p, ';');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            snprintf(out, sizeof out, "%.*s", (int)(len - kl - 1), p + kl + 1);
            return out;
        }
        p = e ? e + 1 : NULL;
    }
    return NULL;
}
static double kvd(const char *s, const char *key) {
    const char *v = kv(s, key);
    CHECK(v, "fixture metadata '%s' lacks %s", s, key);
    return strtod(v, NULL);
}

// ---- maps, casts, quantizers ------------------------------------------------------------------
static void test_maps(void) {
    const float *maps[4] = {lowbit_qmap_s8, lowbit_qmap_u8, lowbit_qmap_s4, lowbit_qmap_u4};
    const int sizes[4] = {256, 256, 16, 16};
    const char *names[4] = {"qmap.s8", "qmap.u8", "qmap.s4", "qmap.u4"};
    for (int k = 0; k < 4; k++) {
        int sorted = 1;
        for (int i = 1; i < sizes[k]; i++) sorted &= maps[k][i - 1] < maps[k][i];
        TEST_CHECK(sorted && maps[k][sizes[k] - 1] == 1.0f, "%s: strictly increasing, ending at 1", names[k]);
        if (!g_have_fixture) continue;
        float *ref = fx_f32(names[k], (size_t)sizes[k]);
        if (ref) TEST_CHECK(diff_f32(names[k], maps[k], ref, (size_t)sizes[k]) == 0, "%s equals torchao's", names[k]);
        free(ref);
    }
    TEST_CHECK(lowbit_qmap_s8[127] == 0.0f && lowbit_qmap_u8[0] == 0.0f && lowbit_qmap_s4[7] == 0.0f &&
                   lowbit_qmap_u4[0] == 0.0625f,
               "maps: zero where torchao has it (u4 has none)");
}

static void test_casts(void) {
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        float a = lowbit_e4m3_to_f32((uint8_t)c), b = quant_e4m3_to_f32((uint8_t)c);
        if (!(same_bits(a, b) || (isnan(a) && isnan(b)))) bad++;
        if ((c & 0x7F) != 0x7F && lowbit_e4m3(a) != c) bad++;
    }
    uint64_t rs = 3;
    for (int i = 0; i < 300000; i++) {
        float f = ldexpf(test_rand_uniform(&rs), (int)(test_rand_u64(&rs) % 40) - 24);
        if (i % 7 == 0)
            f = ldexpf(1.0f + (float)(test_rand_u64(&rs) % 16) / 16.0f, (int)(test_rand_u64(&rs) % 26) - 16);
        if (lowbit_e4m3(f) != quant_f32_to_e4m3(f)) bad++;
    }
    TEST_CHECK(bad == 0, "e4m3: lowbit.h's cast differs from quant.c's (tested against torch) in %d cases", bad);
    bad = 0;
    for (int i = 0; i < 100000; i++) {
        float f = ldexpf(test_rand_uniform(&rs), (int)(test_rand_u64(&rs) % 60) - 30);
        if (lowbit_bf16_rne(f) != f32_to_bf16(f)) bad++;
    }
    TEST_CHECK(bad == 0, "bf16 round to nearest even: %d mismatches", bad);
    // SR: exact bf16 values never move; 1 + 2^-9 (a quarter ulp) rounds up with probability 1/4.
    size_t up = 0, N = 200000;
    for (size_t i = 0; i < N; i++) up += lowbit_bf16_sr(1.0f + 0x1p-9f, lowbit_sr_bits(42, 7, i)) == 0x3F81;
    TEST_CHECK(fabs((double)up / N - 0.25) < 0.005, "SR bits: 1+2^-9 rounds up %.4f of the time, expected 0.25",
               (double)up / N);
    TEST_CHECK(lowbit_bf16_sr(1.5f, 0) == 0x3FC0 && lowbit_bf16_sr(-1.5f, 0xFFFF) == 0xBFC0, "SR keeps bf16 values");
    TEST_CHECK(lowbit_sr_bits(1, 1, 5) != lowbit_sr_bits(1, 2, 5) && lowbit_sr_bits(1, 1, 5) != lowbit_sr_bits(2, 1, 5),
               "SR bits depend on step and seed");
}

static void test_quantizer_fixture(void) {
    const char *nm[5] = {"s8", "u8", "s4", "u4", "fp8"};
    const LowbitFormat fm[5] = {LOWBIT_8BIT, LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_4BIT, LOWBIT_FP8};
    for (int k = 0; k < 5; k++) {
        char key[64];
        snprintf(key, sizeof key, "qz.%s.x", nm[k]);
        const StTensor *tx = need(key);
        if (!tx) continue;
        size_t n = tx->numel, bs = (size_t)lowbit_block(fm[k]), nb = n / bs;
        int sgn = nm[k][0] == 's';
        float *x = fx_f32(key, n);
        snprintf(key, sizeof key, "qz.%s.codes", nm[k]);
        uint8_t *rc = fx_u8(key, n);
        snprintf(key, sizeof key, "qz.%s.scale", nm[k]);
        float *rs = fx_f32(key, nb);
        snprintf(key, sizeof key, "qz.%s.deq", nm[k]);
        float *rd = fx_f32(key, n);
        if (x && rc && rs && rd) {
            uint8_t *codes = ao_malloc(n), *flat = ao_malloc(n);
            float *s = ao_malloc(nb * sizeof(float)), *d = ao_malloc(n * sizeof(float));
            lowbit_quantize(fm[k], sgn, codes, s, x, n);
            for (size_t i = 0; i < n; i++)  // unpack 4-bit: even element in the high nibble
                flat[i] = fm[k] == LOWBIT_4BIT ? ((i & 1) ? codes[i / 2] & 15 : codes[i / 2] >> 4) : codes[i];
            lowbit_dequantize(fm[k], sgn, d, codes, s, n);
            TEST_CHECK(diff_u8(nm[k], flat, rc, n) == 0, "quantizer %s: codes equal torchao's (%zu values, ties incl.)",
                       nm[k], n);
            TEST_CHECK(diff_f32(nm[k], s, rs, nb) == 0, "quantizer %s: scales equal torchao's", nm[k]);
            TEST_CHECK(diff_f32(nm[k], d, rd, n) == 0, "quantizer %s: dequantized values equal torchao's", nm[k]);
            free(codes), free(flat), free(s), free(d);
        }
        free(x), free(rc), free(rs), free(rd);
    }
}

static void test_sr_fixture(void) {
    const StTensor *t = need("sr.x");
    if (!t) return;
    size_t n = t->numel, bad = 0;
    float *x = fx_f32("sr.x", n);
    int32_t *r = fx_i32("sr.rand", n), *out = fx_i32("sr.out", n);
    if (x && r && out)
        for (size_t i = 0; i < n; i++) {
            uint16_t got = lowbit_bf16_sr(x[i], (uint32_t)r[i]), ref = (uint16_t)out[i];
            // NaN: torch's vectorized float->bf16 gives 0xFFFF, its scalar one 0x7FC0 (ours): any NaN passes
            if ((got & 0x7FFF) > 0x7F80 && (ref & 0x7FFF) > 0x7F80) continue;
            if (got != ref && bad++ == 0)
                printf("  sr: [%zu] x=%08x r=%d got %04x torchao %04x\n", i, ao_f2u(x[i]), r[i], got, out[i]);
        }
    TEST_CHECK(x && r && out && bad == 0,
               "bf16 stochastic rounding equals torchao's _fp32_to_bf16_sr given its bits "
               "(%zu values, %zu differ)",
               n, bad);
    free(x), free(r), free(out);
}

// ---- optimizer cases ------------------------------------------------------------------------
static LowbitFormat fmt_from(const char *s) {
    return !strcmp(s, "8bit") ? LOWBIT_8BIT : !strcmp(s, "4bit") ? LOWBIT_4BIT : LOWBIT_FP8;
}

// Compares one state (m or v) after step t with the fixture; returns differing items.
static size_t cmp_state(const char *c, const char *which, int t, const LowbitState *st, int is_m) {
    char key[96];
    size_t bad = 0, n = st->n;
    if (!lowbit_quantized(st->fmt)) {
        snprintf(key, sizeof key, "%s.%s%d", c, which, t);
        float *r = fx_f32(key, n), *got = ao_malloc(n * sizeof(float));
        const void *src = is_m ? st->m : st->v;
        for (size_t i = 0; i < n; i++)
            got[i] = st->fmt == LOWBIT_F32 ? ((const float *)src)[i] : lowbit_bf16_to_f32(((const uint16_t *)src)[i]);
        bad = r ? diff_f32(key, got, r, n) : n;
        free(r), free(got);
        return bad;
    }
    size_t nc = st->fmt == LOWBIT_4BIT ? n / 2 : n, nb = n / (size_t)st->block;
    snprintf(key, sizeof key, "%s.%s%d.codes", c, which, t);
    uint8_t *rc = fx_u8(key, nc);
    bad += rc ? diff_u8(key, (const uint8_t *)(is_m ? st->m : st->v), rc, nc) : nc;
    snprintf(key, sizeof key, "%s.%s%d.scale", c, which, t);
    float *rs = fx_f32(key, nb);
    bad += rs ? diff_f32(key, is_m ? st->m_scale : st->v_scale, rs, nb) : nb;
    free(rc), free(rs);
    return bad;
}

static void run_case(const char *c, const char *meta) {
    LowbitFormat want = fmt_from(kv(meta, "fmt"));
    size_t n = (size_t)kvd(meta, "n");
    int bf16 = !strcmp(kv(meta, "param"), "bf16");
    LowbitLayout lay = lowbit_layout(want, n, bf16 ? LOWBIT_MASTER_BF16 : LOWBIT_MASTER_F32);
    char key[96];
    snprintf(key, sizeof key, "%s.p0", c);
    float *p0 = fx_f32(key, n);
    if (!p0) return;
    // The reference (serial) and the offload variant (OpenMP) side by side from the same start.
    void *reg[2] = {ao_calloc(1, lay.bytes), ao_calloc(1, lay.bytes)};
    LowbitState st[2] = {lowbit_state_at(&lay, reg[0]), lowbit_state_at(&lay, reg[1])};
    float *master[2] = {NULL, NULL};
    uint16_t *param[2] = {ao_malloc(n * 2), ao_malloc(n * 2)};
    for (int k = 0; k < 2; k++) {
        if (!bf16) master[k] = ao_malloc(n * sizeof(float)), memcpy(master[k], p0, n * sizeof(float));
        for (size_t i = 0; i < n; i++) param[k][i] = lowbit_bf16_rne(p0[i]);  // bf16 cases: p0 is bf16-exact
    }
    LowbitStep s = {kvd(meta, "lr"),
                    kvd(meta, "b1"),
                    kvd(meta, "b2"),
                    kvd(meta, "eps"),
                    kvd(meta, "wd"),
                    0,
                    1.0f,
                    bf16 ? LOWBIT_MASTER_BF16 : LOWBIT_MASTER_F32,
                    0,
                    0};
    float *pg = ao_malloc(n * sizeof(float));
    size_t bad_p = 0, bad_m = 0, bad_v = 0, bad_omp = 0;
    for (int t = 1; t <= 3; t++) {
        snprintf(key, sizeof key, "%s.g%d", c, t);
        float *g = fx_f32(key, n);
        snprintf(key, sizeof key, "%s.p%d", c, t);
        float *pr = fx_f32(key, n);
        if (!g || !pr) {
            free(g), free(pr);
            break;
        }
        s.step = t;
        lowbit_adamw_step_cpu(master[0], param[0], &st[0], g, &s, NULL);
        adamw_lowbit_update_cpu(master[1], bf16 ? param[1] : NULL, &st[1], g, &s);
        for (size_t i = 0; i < n; i++) pg[i] = bf16 ? lowbit_bf16_to_f32(param[0][i]) : master[0][i];
        snprintf(key, sizeof key, "%s.p%d", c, t);
        bad_p += diff_f32(key, pg, pr, n);
        bad_m += cmp_state(c, "m", t, &st[0], 1);
        bad_v += cmp_state(c, "v", t, &st[0], 0);
        bad_omp += memcmp(reg[0], reg[1], lay.bytes) != 0;
        bad_omp += bf16 ? memcmp(param[0], param[1], n * 2) != 0 : memcmp(master[0], master[1], n * 4) != 0;
        if (!bf16) {  // the bf16 working copy written beside the fp32 master
            size_t bw = 0;
            for (size_t i = 0; i < n; i++) bw += param[0][i] != f32_to_bf16(master[0][i]);
            bad_omp += bw != 0;
        }
        free(g), free(pr);
    }
    TEST_CHECK(bad_p == 0 && bad_m == 0 && bad_v == 0,
               "%s (%s states, n=%zu, %s params): 3 steps equal torchao bit for bit (differing: %zu params, %zu m, "
               "%zu v)",
               c, lowbit_format_name(lay.fmt), n, bf16 ? "bf16" : "fp32", bad_p, bad_m, bad_v);
    TEST_CHECK(bad_omp == 0, "%s: OpenMP offload step == serial reference (%zu mismatching steps)", c, bad_omp);
    if (!strcmp(c, "8bit_q") || !strcmp(c, "4bit_q") || !strcmp(c, "fp8_q")) {  // block 0 is all zero
        float z = want == LOWBIT_FP8 ? 1e-12f / 448.0f : 1e-12f;
        TEST_CHECK(same_bits(st[0].m_scale[0], z) && same_bits(st[0].v_scale[0], z),
                   "%s: the all-zero block keeps scale clip(0, 1e-12)%s", c, want == LOWBIT_FP8 ? " / 448" : "");
    }
    for (int k = 0; k < 2; k++) free(reg[k]), free(master[k]), free(param[k]);
    free(p0), free(pg);
}

static void test_optim_fixture(void) {
    const char *cases = st_meta(&g_st, "cases");
    TEST_CHECK(cases != NULL, "optim fixture has no 'cases' metadata");
    if (!cases) return;
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", cases);
    int seen[5] = {0, 0, 0, 0, 0};
    for (char *save = NULL, *c = strtok_r(buf, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        const char *meta = st_meta(&g_st, c);
        TEST_CHECK(meta != NULL, "case %s has no metadata", c);
        if (!meta) continue;
        LowbitMaster ms = !strcmp(kv(meta, "param"), "bf16") ? LOWBIT_MASTER_BF16 : LOWBIT_MASTER_F32;
        seen[lowbit_layout(fmt_from(kv(meta, "fmt")), (size_t)kvd(meta, "n"), ms).fmt]++;
        run_case(c, meta);
    }
    TEST_CHECK(seen[0] && seen[1] && seen[2] && seen[3] && seen[4],
               "fixture covers fp32, 8-bit, 4-bit, fp8, bf16 states");
}

// ---- layout and validation -------------------------------------------------------------------
static void test_layout(void) {
    const LowbitMaster F = LOWBIT_MASTER_F32, B = LOWBIT_MASTER_BF16_SR;
    TEST_CHECK(lowbit_format_for(LOWBIT_8BIT, 8192, F) == LOWBIT_8BIT &&
                   lowbit_format_for(LOWBIT_8BIT, 4224, F) == LOWBIT_F32 &&
                   lowbit_format_for(LOWBIT_4BIT, 4224, F) == LOWBIT_4BIT &&
                   lowbit_format_for(LOWBIT_FP8, 3840, F) == LOWBIT_F32 &&
                   lowbit_format_for(LOWBIT_F32, 8192, F) == LOWBIT_F32 &&
                   lowbit_format_for(LOWBIT_FP8, 3840, B) == LOWBIT_BF16 &&
                   lowbit_format_for(LOWBIT_F32, 8192, B) == LOWBIT_BF16,
               "torchao's rule: >= 4096 elements and whole blocks, else states in the parameter's dtype");
    const size_t n = 1 << 20;
    LowbitLayout a = lowbit_layout(LOWBIT_F32, n, F), b = lowbit_layout(LOWBIT_8BIT, n, F),
                 c = lowbit_layout(LOWBIT_4BIT, n, F), d = lowbit_layout(LOWBIT_FP8, n, F),
                 e = lowbit_layout(LOWBIT_F32, n, B);
    TEST_CHECK(a.bytes == 8 * n && b.bytes == 2 * n + 8 * n / 256 && c.bytes == n + 8 * n / 128 &&
                   d.bytes == 2 * n + 8 * n / 256 && e.bytes == 4 * n,
               "state bytes per element: fp32 8, bf16 4, 8-bit 2+8/256, 4-bit 1+8/128, fp8 2+8/256");
    LowbitLayout o = lowbit_layout(LOWBIT_8BIT, 4096 + 256 * 3, F);
    TEST_CHECK(o.bytes % 16 == 0 && o.v_off % 16 == 0 && o.m_scale_off % 16 == 0 && o.v_scale_off % 16 == 0 &&
                   o.v_scale_off + o.n_blocks * 4 <= o.bytes && o.n_blocks == 19,
               "layout parts are 16-byte aligned and inside the region");
}

static void quantize_tail(void *arg) {
    (void)arg;
    float x[300] = {0};
    uint8_t q[300];
    float s[2];
    lowbit_quantize(LOWBIT_8BIT, 1, q, s, x, 300);
}
static void step_wrong_master(void *arg) {
    (void)arg;
    float m[8] = {0}, v[8] = {0}, g[8] = {0};
    uint16_t p[8] = {0};
    LowbitState st = {LOWBIT_F32, 0, 8, m, v, NULL, NULL};
    LowbitStep s = {1e-3, 0.9, 0.999, 1e-8, 0, 1, 1.0f, LOWBIT_MASTER_F32, 0, 0};
    lowbit_adamw_step_cpu(NULL, p, &st, g, &s, NULL);
}
static void step_zero(void *arg) {
    (void)arg;
    float w[8] = {0}, m[8] = {0}, v[8] = {0}, g[8] = {0};
    adamw_update_cpu(w, NULL, g, m, v, 8, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0, 1.0f);
}
static void test_errors(void) {
    TEST_EXPECT_FAIL("quantize 300 values in 256-blocks", quantize_tail, NULL, "not whole");
    TEST_EXPECT_FAIL("fp32-master step without a master", step_wrong_master, NULL, "needs fp32 master");
    TEST_EXPECT_FAIL("AdamW step 0", step_zero, NULL, "step must be >= 1");
}

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
            size_t bad = diff_f32("master", w, wr, n) + diff_f32("m", m, mr, n) + diff_f32("v", v, vr, n);
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
            size_t bad = diff_f32("m", m, mr, n) + diff_f32("v", v, vr, n), bp = 0;
            for (size_t i = 0; i < n; i++) bp += p[i] != pr[i];
            TEST_CHECK(bad == 0 && bp == 0,
                       "offload AdamW bf16-sr %s, n=%zu: bit-identical to the plain scalar loop (%zu states, %zu "
                       "weights differ)", adamw_cpu_isa_name((AdamwIsa)isa), n, bad, bp);
        }
        adamw_cpu_set_isa(best);
        free(p0), free(pr), free(p), free(m0), free(v0), free(g), free(mr), free(vr), free(m), free(v);
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

// torch.optim.AdamW (CPU, foreach=False) rounds differently (its own lerp/addcmul/addcdiv
// kernels, double hyperparameters): within fp32 rounding, and we report the exact share.
static void test_torch_adamw_fixture(void) {
    const char *list = st_meta(&g_st, "torch_adamw");
    TEST_CHECK(list != NULL, "optim fixture has no torch_adamw metadata");
    if (!list) return;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *c = strtok_r(buf, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        const char *meta = st_meta(&g_st, c);
        if (!meta) {
            TEST_CHECK(0, "%s has no metadata", c);
            continue;
        }
        size_t n = (size_t)kvd(meta, "n");
        char key[96];
        snprintf(key, sizeof key, "%s.p0", c);
        float *w = fx_f32(key, n), *m = ao_calloc(n, 4), *v = ao_calloc(n, 4);
        if (!w) {
            free(m), free(v);
            continue;
        }
        for (int t = 1; t <= 3; t++) {
            snprintf(key, sizeof key, "%s.g%d", c, t);
            float *g = fx_f32(key, n);
            if (!g) break;
            adamw_update_cpu(w, NULL, g, m, v, n, (float)kvd(meta, "lr"), (float)kvd(meta, "b1"),
                             (float)kvd(meta, "b2"), (float)kvd(meta, "eps"), (float)kvd(meta, "wd"), t, 1.0f);
            const char *parts[3] = {"p", "m", "v"};
            float *got[3] = {w, m, v};
            for (int k = 0; k < 3; k++) {
                snprintf(key, sizeof key, "%s.%s%d", c, parts[k], t);
                float *r = fx_f32(key, n);
                if (!r) continue;
                size_t same = 0, maxulp = 0;
                for (size_t i = 0; i < n; i++) {
                    same += same_bits(got[k][i], r[i]);
                    size_t d = (size_t)labs((long)ao_f2u(got[k][i]) - (long)ao_f2u(r[i]));
                    if (d > maxulp) maxulp = d;
                }
                char what[128];
                snprintf(what, sizeof what, "%s step %d %s vs torch.optim.AdamW", c, t, parts[k]);
                TEST_CLOSE(what, got[k], r, n, 1e-5);
                if (t == 3) printf("  %s: %.1f%% bit-identical, worst %zu ulp\n", what, 100.0 * same / n, maxulp);
                free(r);
            }
            free(g);
        }
        free(w), free(m), free(v);
    }
}

int main(void) {
    char *path = path_join(test_dir(), "fixtures/optim/torchao.safetensors");
    char err[512];
    g_have_fixture = file_exists(path) && st_open(&g_st, path, err, sizeof err);
    test_maps();
    test_casts();
    test_layout();
    test_errors();
    test_offload_variants();
    test_offload_sr_variants();
    test_cpu_run_batch();
    test_state_range();
    test_zero_shards_offload();
    test_sr_unbiased();
    if (g_have_fixture) {
        printf("torchao fixture: torch %s, torchao %s\n", st_meta(&g_st, "torch") ? st_meta(&g_st, "torch") : "?",
               st_meta(&g_st, "torchao") ? st_meta(&g_st, "torchao") : "?");
        test_quantizer_fixture();
        test_sr_fixture();
        test_optim_fixture();
        test_torch_adamw_fixture();
        st_close(&g_st);
    } else {
        test_skip(
            "test/fixtures/optim/torchao.safetensors absent: run test/ref/optim_ref.py where torchao is installed");
    }
    free(path);
    return test_summary();
}
