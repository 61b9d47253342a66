// Optimizers on the CPU: torchao's low-bit AdamW (optim/lowbit.c) against torchao's own
// results (test/fixtures/optim/torchao.safetensors, written by test/ref/optim_ref.py): maps,
// quantizer codes and scales, stochastic rounding, three optimizer steps per case — all
// compared bit for bit; layouts and refusals; the offload AdamW (optim/adamw_cpu.c) against
// torch.optim.AdamW within fp32 rounding. The offload step's own variants are in test_offload.c.
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
        if (ref) TEST_CHECK(test_diff_bits_f32(names[k], maps[k], ref, (size_t)sizes[k]) == 0, "%s equals torchao's", names[k]);
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
            TEST_CHECK(test_diff_bits_f32(nm[k], s, rs, nb) == 0, "quantizer %s: scales equal torchao's", nm[k]);
            TEST_CHECK(test_diff_bits_f32(nm[k], d, rd, n) == 0, "quantizer %s: dequantized values equal torchao's", nm[k]);
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
        bad = r ? test_diff_bits_f32(key, got, r, n) : n;
        free(r), free(got);
        return bad;
    }
    size_t nc = st->fmt == LOWBIT_4BIT ? n / 2 : n, nb = n / (size_t)st->block;
    snprintf(key, sizeof key, "%s.%s%d.codes", c, which, t);
    uint8_t *rc = fx_u8(key, nc);
    bad += rc ? diff_u8(key, (const uint8_t *)(is_m ? st->m : st->v), rc, nc) : nc;
    snprintf(key, sizeof key, "%s.%s%d.scale", c, which, t);
    float *rs = fx_f32(key, nb);
    bad += rs ? test_diff_bits_f32(key, is_m ? st->m_scale : st->v_scale, rs, nb) : nb;
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
        bad_p += test_diff_bits_f32(key, pg, pr, n);
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
