// Linear recipes (ops/linear.c), the host side of train_llama --recipe: names and refusals, the
// token-count rule (MX: 32), which Linears take fp8 / MX (torchao's module filter: lm_head and dims
// not multiples of 16 stay bf16; MX also dims not multiples of 32, which torchao's to_mx refuses) on
// the test fixture's and the default model's shapes, and the cast scratch sizes and layout (MX: the
// dequantized operands of the emulated GEMM or the swizzled scales of the native one). The GPU side
// is test/gpu_test_recipe.cu.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/linear.h"
#include "test.h"

static void test_names(void) {
    char err[1024];
    for (int i = 0; i < LINEAR_NRECIPES; i++) {
        LinearRecipe r = (LinearRecipe)-1;
        int ok = linear_recipe_parse(linear_recipe_name((LinearRecipe)i), &r, err, sizeof err);
        TEST_CHECK(ok && r == (LinearRecipe)i, "recipe %d (%s) does not parse back", i, linear_recipe_name((LinearRecipe)i));
    }
    TEST_CHECK(strcmp(linear_recipe_name(LINEAR_BF16), "bf16") == 0, "recipe 0 is %s, not bf16 (zeroed options must "
               "mean the bf16 trainer)", linear_recipe_name(LINEAR_BF16));
    const struct { LinearRecipe r; Fp8Recipe f; } map[] = {{LINEAR_FP8_TENSORWISE, FP8_RECIPE_TENSORWISE},
                                                             {LINEAR_FP8_ROWWISE, FP8_RECIPE_ROWWISE},
                                                             {LINEAR_FP8_ROWWISE_GW_HP, FP8_RECIPE_ROWWISE_GW_HP},
                                                             {LINEAR_FP8_BLOCKWISE, FP8_RECIPE_BLOCKWISE},
                                                             {LINEAR_MXFP8, FP8_RECIPE_MXFP8},
                                                             {LINEAR_MXFP8_GW_HP, FP8_RECIPE_MXFP8_GW_HP}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        TEST_CHECK(linear_fp8_recipe(map[i].r) == map[i].f, "%s maps to fp8 recipe %s", linear_recipe_name(map[i].r),
                   fp8_recipe_name(linear_fp8_recipe(map[i].r)));
    for (int i = 0; i < LINEAR_NRECIPES; i++)
        TEST_CHECK(linear_recipe_is_mx((LinearRecipe)i) == (i == LINEAR_MXFP8 || i == LINEAR_MXFP8_GW_HP),
                   "linear_recipe_is_mx(%s)", linear_recipe_name((LinearRecipe)i));
    TEST_CHECK(!strcmp(linear_recipe_name(LINEAR_MXFP8), "mxfp8") && !strcmp(linear_recipe_name(LINEAR_MXFP8_GW_HP),
               "mxfp8-gw-hp"), "MX recipe names: %s, %s", linear_recipe_name(LINEAR_MXFP8),
               linear_recipe_name(LINEAR_MXFP8_GW_HP));
    const char *bad[] = {"fp8", "FP8-ROWWISE", "rowwise", "", "fp8-rowwise ", "mxfp8_gw_hp", "mx", "MXFP8"};
    for (int i = 0; i < 8; i++) {
        LinearRecipe r;
        err[0] = 0;
        int ok = linear_recipe_parse(bad[i], &r, err, sizeof err);
        TEST_CHECK(!ok && strstr(err, "expected bf16, fp8-tensorwise") && strstr(err, "mxfp8-gw-hp"),
                   "--recipe '%s': accepted or unclear: %s", bad[i], err);
    }
    printf("  refusal: %s\n", err);
}

static void test_tokens(void) {
    char why[1024];
    TEST_CHECK(linear_tokens_ok(LINEAR_BF16, 37, why, sizeof why), "bf16 refuses 37 tokens");
    for (int r = 1; r < LINEAR_NRECIPES; r++) {
        TEST_CHECK(linear_tokens_ok((LinearRecipe)r, 8192, why, sizeof why), "%s refuses 8192 tokens",
                   linear_recipe_name((LinearRecipe)r));
        TEST_CHECK(linear_tokens_ok((LinearRecipe)r, 32, why, sizeof why), "%s refuses 32 tokens",
                   linear_recipe_name((LinearRecipe)r));
        why[0] = 0;
        TEST_CHECK(!linear_tokens_ok((LinearRecipe)r, 37, why, sizeof why) &&
                       strstr(why, r == LINEAR_MXFP8 ? "multiple of 32" : "multiple of 16") && strstr(why, "37"),
                   "%s accepts 37 tokens or says it unclearly: %s", linear_recipe_name((LinearRecipe)r), why);
        TEST_CHECK(!linear_tokens_ok((LinearRecipe)r, 8200, NULL, 0), "%s accepts 8200 tokens",
                   linear_recipe_name((LinearRecipe)r));
        // 48 tokens: a multiple of 16, not of 32; only mxfp8 casts along the tokens (grad_weight in MX)
        why[0] = 0;
        const int ok48 = linear_tokens_ok((LinearRecipe)r, 48, why, sizeof why);
        TEST_CHECK(r == LINEAR_MXFP8 ? !ok48 && strstr(why, "multiple of 32") && strstr(why, "48") : ok48,
                   "%s with 48 tokens: %s", linear_recipe_name((LinearRecipe)r), ok48 ? "accepted" : why);
        if (r == LINEAR_MXFP8) printf("  refusal: %s\n", why);
    }
    TEST_CHECK(!linear_tokens_ok(LINEAR_FP8_ROWWISE, 37, why, sizeof why), "fp8-rowwise accepts 37 tokens");
    printf("  refusal: %s\n", why);
}

// One Linear of a group: name, K, M, first column, row stride of the packed output, hp.
typedef struct {
    const char *name;
    int K, M, col, ldo, hp;
    int fp8;             // expected under every fp8 recipe
    const char *reason;  // expected in the reason when not fp8
    int mx;              // expected under the MX recipes
    const char *mx_reason;
} Case;

static void check_cases(const char *model, const Case *c, int n) {
    char why[256];
    for (int r = 0; r < LINEAR_NRECIPES; r++)
        for (int i = 0; i < n; i++) {
            why[0] = 0;
            const int mx = linear_recipe_is_mx((LinearRecipe)r);
            int got = linear_part_fp8((LinearRecipe)r, c[i].K, c[i].M, c[i].col, c[i].ldo, c[i].hp, why, sizeof why);
            int want = r != LINEAR_BF16 && (mx ? c[i].mx : c[i].fp8);
            const char *reason = r == LINEAR_BF16 ? "bf16" : mx ? c[i].mx_reason : c[i].reason;
            TEST_CHECK(got == want && (want || strstr(why, reason)), "%s %s [%d -> %d] under %s: fp8 %d (want %d), "
                       "reason '%s' (want '%s')", model, c[i].name, c[i].K, c[i].M, linear_recipe_name((LinearRecipe)r),
                       got, want, why, want ? "" : reason);
        }
}

static void test_which_linears(void) {
    // test/fixtures/llama3: hidden 48, intermediate 136, 4 heads x 12, 2 KV heads, vocab 300.
    // Under MX nothing of it: 48 is not a multiple of 32.
    const Case fixture[] = {
        {"q_proj", 48, 48, 0, 96, 0, 1, "", 0, "in_features 48 is not a multiple of 32"},
        {"k_proj", 48, 24, 48, 96, 0, 0, "out_features 24 is not a multiple of 16", 0, "out_features 24 is not a "
         "multiple of 16"},
        {"v_proj", 48, 24, 72, 96, 0, 0, "out_features 24", 0, "out_features 24"},
        {"o_proj", 48, 48, 0, 48, 0, 1, "", 0, "in_features 48 is not a multiple of 32"},
        {"gate_proj", 48, 136, 0, 272, 0, 0, "out_features 136", 0, "out_features 136"},
        {"up_proj", 48, 136, 136, 272, 0, 0, "out_features 136", 0, "out_features 136"},
        {"down_proj", 136, 48, 0, 48, 0, 0, "in_features 136", 0, "in_features 136"},
        {"lm_head", 48, 300, 0, 300, 1, 0, "output projection", 0, "output projection"},
    };
    check_cases("fixture llama3", fixture, (int)(sizeof fixture / sizeof fixture[0]));
    // train_llama's default model: 512 wide, 1536 MLP, 8 x 64 heads, 4 KV heads, GPT-2 vocab padded.
    const Case def[] = {
        {"q_proj", 512, 512, 0, 1024, 0, 1, "", 1, ""},     {"k_proj", 512, 256, 512, 1024, 0, 1, "", 1, ""},
        {"v_proj", 512, 256, 768, 1024, 0, 1, "", 1, ""},   {"o_proj", 512, 512, 0, 512, 0, 1, "", 1, ""},
        {"gate_proj", 512, 1536, 0, 3072, 0, 1, "", 1, ""}, {"up_proj", 512, 1536, 1536, 3072, 0, 1, "", 1, ""},
        {"down_proj", 1536, 512, 0, 512, 0, 1, "", 1, ""},
        {"lm_head", 512, 50304, 0, 50304, 1, 0, "output projection", 0, "output projection"},
    };
    check_cases("default 51M", def, (int)(sizeof def / sizeof def[0]));
    // Output columns that cuBLASLt cannot write from an fp8 GEMM (rows or starts not 16-byte aligned).
    const Case odd[] = {
        {"row stride 100", 64, 64, 0, 100, 0, 0, "not 16-byte aligned", 0, "not 16-byte aligned"},
        {"column 36", 64, 64, 36, 128, 0, 0, "not 16-byte aligned", 0, "not 16-byte aligned"},
        {"in_features 40", 40, 64, 0, 64, 0, 0, "in_features 40", 0, "in_features 40"},
        // multiples of 16, not of 32: fp8 yes, MX no (torchao's to_mx needs whole 32-blocks along K and M)
        {"in_features 80", 80, 96, 0, 96, 0, 1, "", 0, "in_features 80 is not a multiple of 32"},
        {"out_features 48", 64, 48, 0, 48, 0, 1, "", 0, "out_features 48 is not a multiple of 32"},
        {"MX shapes 96 -> 160", 96, 160, 32, 192, 0, 1, "", 1, ""},
    };
    check_cases("odd layouts", odd, (int)(sizeof odd / sizeof odd[0]));
}

static void test_scratch(void) {
    // rowwise, one Linear of the fixture (q_proj: N = 32 tokens, K = 48, M = 48). No recipe copies a
    // part's gradient columns any more (every cast reads them in place); g^T has its own codes and scales.
    LinearScratchSize s;
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_FP8_ROWWISE, 32, 48, 48);
    TEST_CHECK(s.qx == 32 * 48 && s.qw == 48 * 48 && s.qg == 32 * 48 && s.qgt == 32 * 48,
               "rowwise codes: qx %zu qw %zu qg %zu qgt %zu", s.qx, s.qw, s.qg, s.qgt);
    // per operand row: x N | x^T K; W M | W^T K; g N; g^T M
    TEST_CHECK(s.sx == 48 && s.sw == 48 && s.sg == 32 && s.sgt == 48 && s.svec == 0 && s.amax == 0,
               "rowwise scales: sx %zu sw %zu sg %zu sgt %zu svec %zu amax %zu", s.sx, s.sw, s.sg, s.sgt, s.svec,
               s.amax);
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_FP8_TENSORWISE, 32, 48, 48);
    TEST_CHECK(s.sx == 1 && s.sw == 1 && s.sg == 1 && s.sgt == 0 && s.amax == LINEAR_AMAX_FLOATS,
               "tensorwise: sx %zu sw %zu sg %zu sgt %zu amax %zu", s.sx, s.sw, s.sg, s.sgt, s.amax);
    // tensorwise casts g and g^T (one dtype, one scale in sg) in one pass over the part's columns
    TEST_CHECK(s.qg == 32 * 48 && s.qgt == 32 * 48, "tensorwise g / g^T codes: qg %zu qgt %zu", s.qg, s.qgt);
    linear_scratch_add(&s, LINEAR_FP8_TENSORWISE, 64, 48, 96);
    TEST_CHECK(s.qgt == 64 * 96 && s.sgt == 0, "tensorwise grown: qgt %zu sgt %zu", s.qgt, s.sgt);
    for (int r = 0; r < LINEAR_NRECIPES; r++) {
        const int want = r == LINEAR_FP8_TENSORWISE;  // e5m2 g and g^T, tensor scales, no pow2
        TEST_CHECK(linear_same_cast((LinearRecipe)r, FP8_G_GI, FP8_G_GW) == want, "linear_same_cast(%s, g_gi, g_gw)",
                   linear_recipe_name((LinearRecipe)r));
    }
    TEST_CHECK(linear_same_cast(LINEAR_FP8_TENSORWISE, FP8_X_FWD, FP8_X_GW) &&
                   linear_same_cast(LINEAR_FP8_TENSORWISE, FP8_W_FWD, FP8_W_GI) &&
                   !linear_same_cast(LINEAR_FP8_TENSORWISE, FP8_X_FWD, FP8_G_GI) &&
                   !linear_same_cast(LINEAR_FP8_ROWWISE_GW_HP, FP8_W_FWD, FP8_W_GI),
               "linear_same_cast: x / W casts of tensorwise are one, e4m3 x vs e5m2 g are not, rowwise-gw-hp's W is not");
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_FP8_ROWWISE_GW_HP, 32, 48, 64);
    // fwd axis (x N, W M); grad_input g axis (N) x W^T tensor (1, broadcast into K); no grad_weight casts
    TEST_CHECK(s.sx == 32 && s.sw == 64 && s.sg == 32 && s.sgt == 0 && s.qgt == 0 && s.svec == 48 &&
                   s.amax == LINEAR_AMAX_FLOATS,
               "rowwise-gw-hp: sx %zu sw %zu sg %zu sgt %zu qgt %zu svec %zu amax %zu", s.sx, s.sw, s.sg, s.sgt, s.qgt,
               s.svec, s.amax);
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_MXFP8, 64, 96, 160);
    // e8m0 bytes, 4 per float: x [64][3] | x^T [96][2]; W [160][3] | W^T [96][5]; g [64][5]; g^T [160][2]
    TEST_CHECK(s.qx == 64 * 96 && s.qw == 160 * 96 && s.qg == 64 * 160 && s.qgt == 64 * 160 && s.sx == 48 &&
                   s.sw == 120 && s.sg == 80 && s.sgt == 80 && s.svec == 0 && s.amax == 0,
               "mxfp8 codes / scales: qx %zu qw %zu qg %zu qgt %zu sx %zu sw %zu sg %zu sgt %zu svec %zu amax %zu", s.qx,
               s.qw, s.qg, s.qgt, s.sx, s.sw, s.sg, s.sgt, s.svec, s.amax);
    // P: x [64, 96], g [64, 160], g^T [160, 64]; Q: W [160, 96], W^T [96, 160], x^T [96, 64]. Swizzled: rows
    // padded to 128, blocks to 4: x 128 x 4, g 128 x 8, g^T 256 x 4 | W 256 x 4, W^T 128 x 8, x^T 128 x 4.
    TEST_CHECK(s.mxp == 64 * 160 && s.mxq == 160 * 96 && s.mxsp == 1024 && s.mxsq == 1024,
               "mxfp8 MX GEMM scratch: mxp %zu mxq %zu mxsp %zu mxsq %zu", s.mxp, s.mxq, s.mxsp, s.mxsq);
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_MXFP8_GW_HP, 48, 64, 64);  // no x^T / g^T casts: x [48][2] only
    TEST_CHECK(s.sx == 24 && s.sg == 24 && s.sgt == 0 && s.qgt == 0 && s.mxp == 48 * 64 && s.mxq == 64 * 64 &&
                   s.mxsp == 128 * 4 && s.mxsq == 128 * 4,
               "mxfp8-gw-hp: sx %zu sg %zu sgt %zu qgt %zu mxp %zu mxq %zu mxsp %zu mxsq %zu", s.sx, s.sg, s.sgt, s.qgt,
               s.mxp, s.mxq, s.mxsp, s.mxsq);
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_FP8_BLOCKWISE, 32, 256, 384);
    // x 1x128: 32 x 2 | x^T: 256 x 1; W 128x128: 3 row blocks x ld 4 | W^T: 2 x ld 4; g: 32 x 3; g^T: 384 x 1
    TEST_CHECK(s.sx == 256 && s.sw == 12 && s.sg == 96 && s.sgt == 384 && s.amax == 0,
               "blockwise: sx %zu sw %zu sg %zu sgt %zu amax %zu", s.sx, s.sw, s.sg, s.sgt, s.amax);
    // Growing keeps the maximum of each piece.
    linear_scratch_add(&s, LINEAR_FP8_BLOCKWISE, 32, 64, 64);
    TEST_CHECK(s.qx == 32 * 256 && s.qw == 256 * 384 && s.qgt == 32 * 384 && s.sgt == 384,
               "blockwise grown: qx %zu qw %zu qgt %zu sgt %zu", s.qx, s.qw, s.qgt, s.sgt);

    LinearCtx lc;
    memset(&lc, 0, sizeof lc);
    TEST_CHECK(linear_ctx_place(&lc, NULL) == 0, "an empty scratch takes bytes (the bf16 layout must not change)");
    // rowwise-gw-hp (svec, no g^T), then mxfp8 carved for the emulated and for the native MX GEMM (g^T
    // with scales of its own), then tensorwise (g^T next to g, one scale).
    for (int v = 0; v < 4; v++) {
        memset(&lc, 0, sizeof lc);
        lc.recipe = v == 0 ? LINEAR_FP8_ROWWISE_GW_HP : v == 3 ? LINEAR_FP8_TENSORWISE : LINEAR_MXFP8;
        lc.mx_native = v == 2;
        linear_scratch_add(&lc.cap, lc.recipe, v ? 64 : 40, v ? 96 : 48, v ? 160 : 64);
        size_t bytes = linear_ctx_place(&lc, NULL);
        char *base = (char *)aligned_alloc(256, (bytes + 255) / 256 * 256);
        TEST_CHECK(linear_ctx_place(&lc, base) == bytes, "placing changes the size");
        struct { const void *p; size_t n; const char *name; int want; } pc[] = {
            {lc.qx, lc.cap.qx, "qx", 1}, {lc.qw, lc.cap.qw, "qw", 1}, {lc.qg, lc.cap.qg, "qg", 1},
            {lc.qgt, lc.cap.qgt, "qgt", v != 0}, {lc.sx, lc.cap.sx * 4, "sx", 1}, {lc.sw, lc.cap.sw * 4, "sw", 1},
            {lc.sg, lc.cap.sg * 4, "sg", 1}, {lc.sgt, lc.cap.sgt * 4, "sgt", v == 1 || v == 2},
            {lc.svec, lc.cap.svec * 4, "svec", v == 0},
            {lc.amax, lc.cap.amax * 4, "amax", v == 0 || v == 3}, {lc.mxp, lc.cap.mxp * 2, "mxp", v == 1},
            {lc.mxq, lc.cap.mxq * 2, "mxq", v == 1}, {lc.mxsp, lc.cap.mxsp, "mxsp", v == 2},
            {lc.mxsq, lc.cap.mxsq, "mxsq", v == 2}};
        const int np = (int)(sizeof pc / sizeof pc[0]);
        for (int i = 0; i < np; i++) {
            const char *p = (const char *)pc[i].p;
            TEST_CHECK(!p == !pc[i].want, "[%d] scratch piece %s %s", v, pc[i].name, p ? "carved" : "missing");
            if (!p) continue;
            TEST_CHECK(((uintptr_t)p & 255) == 0 && p >= base && p + pc[i].n <= base + bytes,
                       "[%d] scratch piece %s at offset %td (%zu bytes) not 256-aligned inside [0, %zu)", v, pc[i].name,
                       p - base, pc[i].n, bytes);
            for (int j = 0; j < i; j++) {
                const char *q = (const char *)pc[j].p;
                TEST_CHECK(!q || p >= q + pc[j].n || q >= p + pc[i].n, "[%d] scratch pieces %s and %s overlap", v,
                           pc[i].name, pc[j].name);
            }
        }
        printf("  %s%s scratch: %zu bytes\n", linear_recipe_name(lc.recipe),
               v == 1 ? " (emulated MX GEMM)" : v == 2 ? " (native MX GEMM)" : "", bytes);
        free(base);
    }
}

// The weight cast cache of one part (ops/linear.h LinearWCache): W and W^T codes and their scales, in
// 256-byte aligned pieces that do not overlap; nothing for bf16.
static void test_wcache(void) {
    LinearWCache wc;
    TEST_CHECK(linear_wcache_place(&wc, LINEAR_BF16, 64, 96, NULL) == 0, "bf16: a weight cache takes bytes");
    const int K = 96, M = 160;
    for (int r = 1; r < LINEAR_NRECIPES; r++) {
        const LinearRecipe rec = (LinearRecipe)r;
        const Fp8Recipe f = linear_fp8_recipe(rec);
        const size_t bytes = linear_wcache_place(&wc, rec, K, M, NULL);
        char *base = (char *)aligned_alloc(256, (bytes + 255) / 256 * 256);
        memset(&wc, 0xAB, sizeof wc);
        TEST_CHECK(linear_wcache_place(&wc, rec, K, M, base) == bytes, "%s: placing changes the size",
                   linear_recipe_name(rec));
        size_t ns[2];
        for (int k = 0; k < 2; k++) {
            const Fp8CastSpec sp = fp8_recipe_cast(f, k ? FP8_W_GI : FP8_W_FWD);
            ns[k] = fp8_scale_count(sp, M, K, NULL);
            if (sp.scaling == FP8_SCALE_MX32) ns[k] = (ns[k] + 3) / 4;
        }
        struct { const void *p; size_t n; } pc[4] = {{wc.q[0], (size_t)M * K}, {wc.q[1], (size_t)M * K},
                                                     {wc.s[0], ns[0] * 4}, {wc.s[1], ns[1] * 4}};
        for (int i = 0; i < 4; i++) {
            const char *p = (const char *)pc[i].p;
            TEST_CHECK(p && ((uintptr_t)p & 255) == 0 && p >= base && p + pc[i].n <= base + bytes,
                       "%s: weight cache piece %d at offset %td (%zu bytes) not 256-aligned inside [0, %zu)",
                       linear_recipe_name(rec), i, p ? p - base : -1, pc[i].n, bytes);
            for (int j = 0; j < i; j++) {
                const char *q = (const char *)pc[j].p;
                TEST_CHECK(!p || !q || p >= q + pc[j].n || q >= p + pc[i].n, "%s: weight cache pieces %d and %d overlap",
                           linear_recipe_name(rec), i, j);
            }
        }
        TEST_CHECK(wc.made[0] == 0 && wc.made[1] == 0, "%s: a placed weight cache says it holds codes",
                   linear_recipe_name(rec));
        printf("  %s weight cache of a %d x %d Linear: %zu bytes\n", linear_recipe_name(rec), M, K, bytes);
        free(base);
    }
}

int main(void) {
    test_names();
    test_tokens();
    test_which_linears();
    test_scratch();
    test_wcache();
    return test_summary();
}
