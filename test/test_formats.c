// File formats: the strict JSON reader, config.json parsing (both transformers key
// styles, real model configs), safetensors write/read (single and sharded), number
// conversions, and the bad-input corpora in test/fixtures/corrupt and test/fixtures/fuzz_repro
// (MANIFEST.tsv each): every case must be rejected with a message naming the problem (kinds: st,
// model, config, gguf, gguf_llama, qmodel, tokenizer, gguf_tokenizer).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/json.h"
#include "../data/tokenizer.h"
#include "../model/config.h"
#include "../model/gguf.h"
#include "../model/infer_cpu.h"
#include "../model/model.h"
#include "../model/safetensors.h"
#include "../quant/qmodel.h"
#include "test.h"

static void test_json(void) {
    struct { const char *text; int ok; const char *needle; } cases[] = {
        {"{\"a\": [1, 2.5, -3e2, true, false, null, \"x\"]}", 1, NULL},
        {"\"\\ud83d\\ude00 \\u00e9\\n\"", 1, NULL},
        {"  [ ]  ", 1, NULL},
        {"[1,]", 0, "unexpected character"},
        {"{\"a\":1,}", 0, "string key"},
        {"01", 0, "leading zero"},
        {"[1.]", 0, "digit expected"},
        {"// c\n{}", 0, "unexpected character"},
        {"\"\\ud800\"", 0, "surrogate"},
        {"\"\\udc00\"", 0, "lone low surrogate"},
        {"\"a\tb\"", 0, "control character"},
        {"\"\\x\"", 0, "invalid escape"},
        {"NaN", 0, "unexpected character"},
        {"{\"a\" 1}", 0, "expected ':'"},
        {"{\"a\":1,\"a\":2}", 0, "duplicate key"},
        {"\"abc", 0, "unterminated"},
        {"[1] [2]", 0, "trailing characters"},
        {"\"\xc0\xaf\"", 0, "invalid UTF-8"},  // overlong '/'
        {"", 0, "unexpected end"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        JsonDoc d;
        char err[256] = "";
        int ok = json_parse(cases[i].text, strlen(cases[i].text), &d, err, sizeof err);
        TEST_CHECK(ok == cases[i].ok, "json case %zu (%s): expected %s, got %s %s", i, cases[i].text,
                   cases[i].ok ? "accept" : "reject", ok ? "accept" : "reject", err);
        if (!ok && cases[i].needle)
            TEST_CHECK(strstr(err, cases[i].needle) != NULL, "json case %zu: error \"%s\" lacks \"%s\"", i, err,
                       cases[i].needle);
        if (ok) json_free(&d);
    }
    JsonDoc d;
    char err[256];
    const char *s = "{\"big\": 18446744073709551615, \"over\": 18446744073709551616, \"neg\": -9223372036854775808, "
                    "\"frac\": 1.0, \"s\": \"\\ud83d\\ude00\"}";
    TEST_CHECK(json_parse(s, strlen(s), &d, err, sizeof err), "json ints: %s", err);
    uint64_t u = 0;
    int64_t i64 = 0;
    TEST_CHECK(json_as_u64(json_get(d.root, "big"), &u) && u == UINT64_MAX, "u64 max");
    TEST_CHECK(!json_as_u64(json_get(d.root, "over"), &u), "u64 overflow refused");
    TEST_CHECK(json_as_i64(json_get(d.root, "neg"), &i64) && i64 == INT64_MIN, "i64 min");
    TEST_CHECK(!json_as_i64(json_get(d.root, "frac"), &i64), "1.0 is not an integer literal");
    const JsonValue *sv = json_get(d.root, "s");
    TEST_CHECK(sv && sv->str_len == 4 && memcmp(sv->str, "\xf0\x9f\x98\x80", 4) == 0, "surrogate pair decodes to U+1F600");
    json_free(&d);
}

static void load_cfg(const char *name, LlamaConfig *c) {
    char path[512], err[1024];
    snprintf(path, sizeof path, "%s/fixtures/configs/%s", test_dir(), name);
    TEST_CHECK(config_load(c, path, err, sizeof err), "%s: %s", name, err);
}

static void test_configs(void) {
    LlamaConfig c;
    // Parameter counts are the published totals for these models.
    load_cfg("llama2_7b.json", &c);
    TEST_CHECK(c.n_kv_heads == 32 && c.head_dim == 128 && c.rope.type == ROPE_DEFAULT && c.rope.theta == 10000.0f &&
                   !strcmp(c.dtype, "float16"), "llama2 fields");
    TEST_CHECK(config_num_params(&c) == 6738415616ull, "llama2-7b params %zu", config_num_params(&c));
    load_cfg("llama31_8b.json", &c);
    TEST_CHECK(c.n_kv_heads == 8 && c.rope.type == ROPE_LLAMA3 && c.rope.factor == 8.0f &&
                   c.rope.original_max_position_embeddings == 8192 && c.rope.theta == 500000.0f && c.n_eos == 3 &&
                   c.eos_token_ids[2] == 128009 && c.bos_token_id == 128000, "llama3.1 fields (4.x keys)");
    TEST_CHECK(config_num_params(&c) == 8030261248ull, "llama3.1-8b params %zu", config_num_params(&c));
    load_cfg("llama32_1b_v5.json", &c);
    TEST_CHECK(c.tie_word_embeddings && c.rope.type == ROPE_LLAMA3 && c.rope.factor == 32.0f &&
                   c.rope.theta == 500000.0f && !strcmp(c.dtype, "bfloat16") && c.head_dim == 64, "llama3.2 fields (5.x keys)");
    TEST_CHECK(config_num_params(&c) == 1235814400ull, "llama3.2-1b params %zu", config_num_params(&c));
    load_cfg("qwen25_05b.json", &c);
    TEST_CHECK(c.arch == ARCH_QWEN2 && c.qkv_bias && c.tie_word_embeddings && c.head_dim == 64 && c.n_kv_heads == 2 &&
                   c.rope.theta == 1000000.0f, "qwen2.5 fields");
    TEST_CHECK(config_num_params(&c) == 494032768ull, "qwen2.5-0.5b params %zu", config_num_params(&c));
    ParamTable t;
    param_table_init(&t, &c);
    TEST_CHECK(t.n == 2 + 24 * 12 && param_table_find(&t, "lm_head.weight") < 0 &&
                   param_table_find(&t, "model.layers.23.self_attn.v_proj.bias") >= 0, "qwen2.5 table: %d tensors", t.n);
    int aligned = 1;
    for (int i = 0; i < t.n; i++) aligned &= t.p[i].offset % 16 == 0;
    TEST_CHECK(aligned, "every tensor offset is 16-element aligned");
    param_table_free(&t);
    // save -> load keeps every field we use
    load_cfg("llama31_8b.json", &c);
    char path[128], err[1024];
    snprintf(path, sizeof path, "/tmp/llama_ao_cfg_%d.json", (int)getpid());
    TEST_CHECK(config_save(&c, path, err, sizeof err), "config_save: %s", err);
    LlamaConfig c2;
    TEST_CHECK(config_load(&c2, path, err, sizeof err), "reload: %s", err);
    TEST_CHECK(memcmp(&c, &c2, sizeof c) == 0, "config save -> load is exact");
    unlink(path);
}

static void test_conversions(void) {
    size_t bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = bf16_to_f32((uint16_t)h);
        if (!isnan(f) && f32_to_bf16(f) != h) bad++;
    }
    TEST_CHECK(bad == 0, "bf16 -> f32 -> bf16 identity fails for %zu values", bad);
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        if (!isnan(f) && f32_to_f16(f) != h) bad++;
    }
    TEST_CHECK(bad == 0, "f16 -> f32 -> f16 identity fails for %zu values", bad);
    TEST_CHECK(f16_to_f32(0x3c00) == 1.0f && f16_to_f32(0x0001) == ldexpf(1, -24) && f16_to_f32(0xfbff) == -65504.0f,
               "f16 decode of 1, smallest subnormal, -max");
    TEST_CHECK(f32_to_bf16(1.00390625f) == 0x3f80 && f32_to_bf16(1.01171875f) == 0x3f82, "bf16 ties round to even");
    TEST_CHECK(f32_to_f16(65520.0f) == 0x7c00 && f32_to_f16(1e-8f) == 0, "f16 overflow to inf, underflow to 0");
}

static void test_safetensors_roundtrip(void) {
    char dir[128], err[1024];
    snprintf(dir, sizeof dir, "/tmp/llama_ao_st_%d", (int)getpid());
    TEST_CHECK(make_dirs(dir), "mkdir");
    float a[6] = {1, -2, 3.5f, 1e-30f, -0.0f, 7};
    uint16_t b[3] = {0x3f80, 0xc000, 0x7f80};
    int32_t c[2] = {-5, 1 << 30};
    uint8_t u = 9;
    StWriteTensor t[4] = {
        {"x.a", ST_F32, 2, {2, 3}, a},
        {"x.b", ST_BF16, 1, {3}, b},
        {"y", ST_I32, 1, {2}, c},
        {"scalar", ST_U8, 0, {0}, &u},
    };
    const char *mk[] = {"format", "quote\"d"}, *mv[] = {"pt", "line\nbreak"};
    char *p1 = path_join(dir, "one.safetensors");
    TEST_CHECK(st_write(p1, t, 4, mk, mv, 2, err, sizeof err), "st_write: %s", err);
    SafeTensors st;
    int ok = st_open(&st, p1, err, sizeof err);
    TEST_CHECK(ok, "st_open: %s", err);
    if (ok) {
        const StTensor *x = st_find(&st, "x.a");
        TEST_CHECK(x && x->dtype == ST_F32 && x->ndim == 2 && x->shape[1] == 3 && memcmp(x->data, a, sizeof a) == 0,
                   "F32 tensor bit-exact");
        x = st_find(&st, "x.b");
        TEST_CHECK(x && x->dtype == ST_BF16 && memcmp(x->data, b, sizeof b) == 0, "BF16 tensor bit-exact");
        x = st_find(&st, "scalar");
        TEST_CHECK(x && x->ndim == 0 && x->numel == 1 && *(const uint8_t *)x->data == 9, "0-d tensor");
        TEST_CHECK(st_meta(&st, "quote\"d") && !strcmp(st_meta(&st, "quote\"d"), "line\nbreak"), "metadata escapes");
        TEST_CHECK(!st_find(&st, "nope"), "absent name");
        st_close(&st);
    }
    // two shards + index
    char *s1 = path_join(dir, "model-00001-of-00002.safetensors"), *s2 = path_join(dir, "model-00002-of-00002.safetensors");
    TEST_CHECK(st_write(s1, t, 2, NULL, NULL, 0, err, sizeof err), "%s", err);
    TEST_CHECK(st_write(s2, t + 2, 2, NULL, NULL, 0, err, sizeof err), "%s", err);
    char *idx = path_join(dir, "model.safetensors.index.json");
    FILE *f = fopen(idx, "w");
    fprintf(f, "{\"metadata\": {\"total_size\": 40}, \"weight_map\": {\"x.a\": \"model-00001-of-00002.safetensors\", "
               "\"x.b\": \"model-00001-of-00002.safetensors\", \"y\": \"model-00002-of-00002.safetensors\", "
               "\"scalar\": \"model-00002-of-00002.safetensors\"}}");
    fclose(f);
    ok = st_open_model(&st, dir, err, sizeof err);
    TEST_CHECK(ok, "sharded open: %s", err);
    if (ok) {
        TEST_CHECK(st.n == 4 && st.n_files == 2 && st_find(&st, "y") && st_find(&st, "y")->file == 1, "sharded layout");
        st_close(&st);
    }
    unlink(p1); unlink(s1); unlink(s2); unlink(idx);
    rmdir(dir);
    free(p1); free(s1); free(s2); free(idx);
}

// Loaders that fail through CHECK, run under TEST_EXPECT_FAIL.
static void load_gguf_llama(void *path) {
    LlamaModel m;
    gguf_load_llama(path, &m, NULL, NULL);
    model_free(&m);
}
static void load_qmodel(void *path) {
    InferModel im;
    qmodel_load(&im, path);
    infer_model_free(&im);
}
static void load_tokenizer(void *path) { tokenizer_free(tokenizer_load(path)); }
static void load_gguf_tokenizer(void *path) {
    GgufFile g;
    char err[1024];
    CHECK(gguf_open(&g, path, err, sizeof err), "%s", err);
    tokenizer_free(tokenizer_from_gguf(&g));
    gguf_close(&g);
}

// Runs a corpus of bad inputs, test/fixtures/DIR/MANIFEST.tsv: each case must fail with its
// expected substring. corrupt/ is written by test/ref/make_corrupt.py, fuzz_repro/ holds the
// reproducers of what test/test_fuzz.c found.
static void test_corrupt_corpus(const char *dir, int min_cases) {
    char path[512];
    snprintf(path, sizeof path, "%s/fixtures/%s/MANIFEST.tsv", test_dir(), dir);
    FILE *f = fopen(path, "r");
    TEST_CHECK(f != NULL, "cannot open %s", path);
    if (!f) return;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        line[strcspn(line, "\n")] = 0;
        char *kind = strtok(line, "\t"), *rel = strtok(NULL, "\t"), *expect = strtok(NULL, "\t");
        if (!kind || !rel || !expect) continue;
        char full[600], err[1024] = "";
        snprintf(full, sizeof full, "%s/fixtures/%s/%s", test_dir(), dir, rel);
        int ok;
        void (*checked)(void *) = !strcmp(kind, "gguf_llama") ? load_gguf_llama : !strcmp(kind, "qmodel") ? load_qmodel
                                  : !strcmp(kind, "tokenizer") ? load_tokenizer
                                  : !strcmp(kind, "gguf_tokenizer") ? load_gguf_tokenizer : NULL;
        if (checked) {
            TEST_EXPECT_FAIL(rel, checked, full, expect);
            if (getenv("VERBOSE")) printf("  %-40s -> %s\n", rel, test_last_fail_message());
            n++;
            continue;
        }
        if (!strcmp(kind, "st")) {
            SafeTensors st;
            ok = st_open(&st, full, err, sizeof err);
            if (ok) st_close(&st);
        } else if (!strcmp(kind, "model")) {
            LlamaModel m;
            ok = model_load_hf(&m, full, err, sizeof err);
            if (ok) model_free(&m);
            // the mapped inference loader runs the same checks and says the same
            InferModel im;
            char err2[1024] = "";
            int ok2 = infer_model_load_hf(&im, full, QUANT_NONE, 0, err2, sizeof err2);
            if (ok2) infer_model_free(&im);
            TEST_CHECK(ok2 == ok && strcmp(err, err2) == 0, "corrupt %s: infer_model_load_hf says \"%s\", model_load_hf \"%s\"",
                       rel, err2, err);
        } else if (!strcmp(kind, "gguf")) {
            GgufFile g;
            ok = gguf_open(&g, full, err, sizeof err);
            if (ok) gguf_close(&g);
        } else {
            LlamaConfig c;
            ok = config_load(&c, full, err, sizeof err);
        }
        n++;
        TEST_CHECK(!ok, "corrupt %s was accepted", rel);
        TEST_CHECK(ok || strstr(err, expect) != NULL, "corrupt %s: error \"%s\" lacks \"%s\"", rel, err, expect);
        if (getenv("VERBOSE")) printf("  %-40s -> %s\n", rel, err);
    }
    fclose(f);
    printf("  %s corpus: %d cases\n", dir, n);
    TEST_CHECK(n >= min_cases, "%s corpus has %d cases", dir, n);
}

int main(void) {
    test_json();
    test_configs();
    test_conversions();
    test_safetensors_roundtrip();
    test_corrupt_corpus("corrupt", 20);
    test_corrupt_corpus("fuzz_repro", 8);
    return test_summary();
}
