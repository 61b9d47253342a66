// Linear recipes (ops/linear.c), the host side of train_llama --recipe: names and refusals (MXFP8
// names its issue), the token-count rule, which Linears take fp8 (torchao's module filter: lm_head
// and dims not multiples of 16 stay bf16) on the test fixture's and the default model's shapes, and
// the cast scratch sizes and layout. The GPU side is test/gpu_test_recipe.cu.
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
                                                             {LINEAR_FP8_BLOCKWISE, FP8_RECIPE_BLOCKWISE}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        TEST_CHECK(linear_fp8_recipe(map[i].r) == map[i].f, "%s maps to fp8 recipe %s", linear_recipe_name(map[i].r),
                   fp8_recipe_name(linear_fp8_recipe(map[i].r)));
    const char *mx[] = {"mxfp8", "mxfp8-gw-hp", "mxfp8_gw_hp"};
    for (int i = 0; i < 3; i++) {
        LinearRecipe r;
        err[0] = 0;
        int ok = linear_recipe_parse(mx[i], &r, err, sizeof err);
        TEST_CHECK(!ok && strstr(err, "issue 7") && strstr(err, "MXFP8"), "--recipe %s: accepted or unclear: %s", mx[i],
                   err);
    }
    printf("  refusal: %s\n", err);
    const char *bad[] = {"fp8", "FP8-ROWWISE", "rowwise", "", "fp8-rowwise "};
    for (int i = 0; i < 5; i++) {
        LinearRecipe r;
        err[0] = 0;
        int ok = linear_recipe_parse(bad[i], &r, err, sizeof err);
        TEST_CHECK(!ok && strstr(err, "expected bf16, fp8-tensorwise"), "--recipe '%s': accepted or unclear: %s", bad[i],
                   err);
    }
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
        TEST_CHECK(!linear_tokens_ok((LinearRecipe)r, 37, why, sizeof why) && strstr(why, "multiple of 16") &&
                       strstr(why, "37"),
                   "%s accepts 37 tokens or says it unclearly: %s", linear_recipe_name((LinearRecipe)r), why);
        TEST_CHECK(!linear_tokens_ok((LinearRecipe)r, 8200, NULL, 0), "%s accepts 8200 tokens",
                   linear_recipe_name((LinearRecipe)r));
    }
    printf("  refusal: %s\n", why);
}

// One Linear of a group: name, K, M, first column, row stride of the packed output, hp.
typedef struct {
    const char *name;
    int K, M, col, ldo, hp;
    int fp8;             // expected under every fp8 recipe
    const char *reason;  // expected in the reason when not fp8
} Case;

static void check_cases(const char *model, const Case *c, int n) {
    char why[256];
    for (int r = 0; r < LINEAR_NRECIPES; r++)
        for (int i = 0; i < n; i++) {
            why[0] = 0;
            int got = linear_part_fp8((LinearRecipe)r, c[i].K, c[i].M, c[i].col, c[i].ldo, c[i].hp, why, sizeof why);
            int want = r != LINEAR_BF16 && c[i].fp8;
            const char *reason = r == LINEAR_BF16 ? "bf16" : c[i].reason;
            TEST_CHECK(got == want && (want || strstr(why, reason)), "%s %s [%d -> %d] under %s: fp8 %d (want %d), "
                       "reason '%s' (want '%s')", model, c[i].name, c[i].K, c[i].M, linear_recipe_name((LinearRecipe)r),
                       got, want, why, want ? "" : reason);
        }
}

static void test_which_linears(void) {
    // test/fixtures/llama3: hidden 48, intermediate 136, 4 heads x 12, 2 KV heads, vocab 300.
    const Case fixture[] = {
        {"q_proj", 48, 48, 0, 96, 0, 1, ""},
        {"k_proj", 48, 24, 48, 96, 0, 0, "out_features 24 is not a multiple of 16"},
        {"v_proj", 48, 24, 72, 96, 0, 0, "out_features 24"},
        {"o_proj", 48, 48, 0, 48, 0, 1, ""},
        {"gate_proj", 48, 136, 0, 272, 0, 0, "out_features 136"},
        {"up_proj", 48, 136, 136, 272, 0, 0, "out_features 136"},
        {"down_proj", 136, 48, 0, 48, 0, 0, "in_features 136"},
        {"lm_head", 48, 300, 0, 300, 1, 0, "output projection"},
    };
    check_cases("fixture llama3", fixture, (int)(sizeof fixture / sizeof fixture[0]));
    // train_llama's default model: 512 wide, 1536 MLP, 8 x 64 heads, 4 KV heads, GPT-2 vocab padded.
    const Case def[] = {
        {"q_proj", 512, 512, 0, 1024, 0, 1, ""},       {"k_proj", 512, 256, 512, 1024, 0, 1, ""},
        {"v_proj", 512, 256, 768, 1024, 0, 1, ""},     {"o_proj", 512, 512, 0, 512, 0, 1, ""},
        {"gate_proj", 512, 1536, 0, 3072, 0, 1, ""},   {"up_proj", 512, 1536, 1536, 3072, 0, 1, ""},
        {"down_proj", 1536, 512, 0, 512, 0, 1, ""},    {"lm_head", 512, 50304, 0, 50304, 1, 0, "output projection"},
    };
    check_cases("default 51M", def, (int)(sizeof def / sizeof def[0]));
    // Output columns that cuBLASLt cannot write from an fp8 GEMM (rows or starts not 16-byte aligned).
    const Case odd[] = {
        {"row stride 100", 64, 64, 0, 100, 0, 0, "not 16-byte aligned"},
        {"column 36", 64, 64, 36, 128, 0, 0, "not 16-byte aligned"},
        {"in_features 40", 40, 64, 0, 64, 0, 0, "in_features 40"},
    };
    check_cases("odd layouts", odd, (int)(sizeof odd / sizeof odd[0]));
}

static void test_scratch(void) {
    // rowwise, one Linear of the fixture (q_proj: N = 32 tokens, K = 48, M = 48) in a packed group.
    LinearScratchSize s;
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_FP8_ROWWISE, 32, 48, 48, 1);
    TEST_CHECK(s.qx == 32 * 48 && s.qw == 48 * 48 && s.qg == 32 * 48 && s.gcopy == 32 * 48,
               "rowwise codes: qx %zu qw %zu qg %zu gcopy %zu", s.qx, s.qw, s.qg, s.gcopy);
    // per operand row: x N | x^T K; W M | W^T K; g N | g^T M
    TEST_CHECK(s.sx == 48 && s.sw == 48 && s.sg == 48 && s.svec == 0 && s.amax == 0,
               "rowwise scales: sx %zu sw %zu sg %zu svec %zu amax %zu", s.sx, s.sw, s.sg, s.svec, s.amax);
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_FP8_TENSORWISE, 32, 48, 48, 0);
    TEST_CHECK(s.sx == 1 && s.sw == 1 && s.sg == 1 && s.gcopy == 0 && s.amax == LINEAR_AMAX_FLOATS,
               "tensorwise: sx %zu sw %zu sg %zu gcopy %zu amax %zu", s.sx, s.sw, s.sg, s.gcopy, s.amax);
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_FP8_ROWWISE_GW_HP, 32, 48, 64, 0);
    // fwd axis (x N, W M); grad_input g axis (N) x W^T tensor (1, broadcast into K); no grad_weight casts
    TEST_CHECK(s.sx == 32 && s.sw == 64 && s.sg == 32 && s.svec == 48 && s.amax == LINEAR_AMAX_FLOATS,
               "rowwise-gw-hp: sx %zu sw %zu sg %zu svec %zu amax %zu", s.sx, s.sw, s.sg, s.svec, s.amax);
    memset(&s, 0, sizeof s);
    linear_scratch_add(&s, LINEAR_FP8_BLOCKWISE, 32, 256, 384, 0);
    // x 1x128: 32 x 2 | x^T: 256 x 1; W 128x128: 3 row blocks x ld 4 | W^T: 2 x ld 4; g: 32 x 3 | g^T: 384 x 1
    TEST_CHECK(s.sx == 256 && s.sw == 12 && s.sg == 384 && s.amax == 0,
               "blockwise: sx %zu sw %zu sg %zu amax %zu", s.sx, s.sw, s.sg, s.amax);
    // Growing keeps the maximum of each piece.
    linear_scratch_add(&s, LINEAR_FP8_BLOCKWISE, 32, 64, 64, 1);
    TEST_CHECK(s.qx == 32 * 256 && s.qw == 256 * 384 && s.gcopy == 32 * 64, "blockwise grown: qx %zu qw %zu gcopy %zu",
               s.qx, s.qw, s.gcopy);

    LinearCtx lc;
    memset(&lc, 0, sizeof lc);
    TEST_CHECK(linear_ctx_place(&lc, NULL) == 0, "an empty scratch takes bytes (the bf16 layout must not change)");
    lc.recipe = LINEAR_FP8_ROWWISE_GW_HP;
    linear_scratch_add(&lc.cap, lc.recipe, 40, 48, 64, 1);
    size_t bytes = linear_ctx_place(&lc, NULL);
    char *base = (char *)aligned_alloc(256, (bytes + 255) / 256 * 256);
    TEST_CHECK(linear_ctx_place(&lc, base) == bytes, "placing changes the size");
    struct { const void *p; size_t n; const char *name; } pc[] = {
        {lc.qx, lc.cap.qx, "qx"}, {lc.qw, lc.cap.qw, "qw"}, {lc.qg, lc.cap.qg, "qg"}, {lc.gcopy, lc.cap.gcopy * 2, "gcopy"},
        {lc.sx, lc.cap.sx * 4, "sx"}, {lc.sw, lc.cap.sw * 4, "sw"}, {lc.sg, lc.cap.sg * 4, "sg"},
        {lc.svec, lc.cap.svec * 4, "svec"}, {lc.amax, lc.cap.amax * 4, "amax"}};
    const int np = (int)(sizeof pc / sizeof pc[0]);
    for (int i = 0; i < np; i++) {
        const char *p = (const char *)pc[i].p;
        TEST_CHECK(p && ((uintptr_t)p & 255) == 0 && p >= base && p + pc[i].n <= base + bytes,
                   "scratch piece %s at offset %td (%zu bytes) not 256-aligned inside [0, %zu)", pc[i].name,
                   p ? p - base : -1, pc[i].n, bytes);
        for (int j = 0; j < i; j++) {
            const char *q = (const char *)pc[j].p;
            TEST_CHECK(p >= q + pc[j].n || q >= p + pc[i].n, "scratch pieces %s and %s overlap", pc[i].name, pc[j].name);
        }
    }
    printf("  rowwise-gw-hp scratch for N=40 K=48 M=64: %zu bytes\n", bytes);
    free(base);
}

int main(void) {
    test_names();
    test_tokens();
    test_which_linears();
    test_scratch();
    return test_summary();
}
