// Tokenizer tests, byte-level BPE side. Self-contained parts (Unicode tables, NFC, the regex
// pre-tokenizers, a tiny hand-written tokenizer.json with added/special tokens, the streaming
// decoder, rejection of bad files) always run; exactness against HF tokenizers (Llama 3, its
// tiktoken and Qwen2 forms, GPT-2, the Llama 3 chat template; fixtures from
// test/ref/tokenizer_fixtures.py) needs ../shared/data. Sentencepiece: test_tokenizer_spm.c.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/json.h"
#include "../data/pretok.h"
#include "../data/tokenizer.h"
#include "../data/unicode.h"
#include "../data/unicode_nfc_tables.h"
#include "test.h"
#include "tokenizer_checks.h"

// ---- always-run tests ----------------------------------------------------------------------
static void test_unicode(void) {
    unicode_init();
    TEST_CHECK(ucat('a') & UCAT_L, "a is a letter");
    TEST_CHECK(ucat('7') & UCAT_N, "7 is a number");
    TEST_CHECK(ucat(' ') & UCAT_WS, "space is whitespace");
    TEST_CHECK((ucat(0x3000) & UCAT_WS) && (ucat(0x85) & UCAT_WS) && !(ucat(0x200B) & UCAT_WS), "White_Space set");
    TEST_CHECK(!(ucat(0x1C) & UCAT_WS), "U+001C is not White_Space (unlike str.isspace)");
    TEST_CHECK(ucat(0x11BC0) & UCAT_L, "Unicode 16.0 letter (Sunuwar) is L, as in Oniguruma");
    TEST_CHECK(ucat(0x2164) & UCAT_N, "Roman numeral is N (Nl)");
    TEST_CHECK(ucat(0x0301) & UCAT_M, "combining acute is M");
    TEST_CHECK(ucat(0x10FFFF) == 0 && ucat(UTF8_INVALID) == 0, "unassigned / invalid are other");
    int l;
    const uint8_t bad[] = {0xC0, 0xAF, 0xED, 0xA0, 0x80, 0xF4, 0x90, 0x80, 0x80, 0xE2, 0x82};
    TEST_CHECK(utf8_decode(bad, sizeof bad, 0, &l) == UTF8_INVALID && l == 1, "overlong rejected");
    TEST_CHECK(utf8_decode(bad, sizeof bad, 2, &l) == UTF8_INVALID, "surrogate rejected");
    TEST_CHECK(utf8_decode(bad, sizeof bad, 5, &l) == UTF8_INVALID, "> U+10FFFF rejected");
    TEST_CHECK(utf8_partial_len(bad + 9, 2) == 2, "truncated E2 82 is a partial character");
    TEST_CHECK(utf8_partial_len(bad + 2, 3) == 1, "ED A0 is invalid after the first byte");
}

// NFC against Python's unicodedata2 16.0 (and, in NFC_HF mode, HF tokenizers' NFC normalizer).
static void test_nfc(void) {
    char *buf;
    JsonDoc doc = load_fixture("nfc.json", &buf);
    const JsonValue *cases = json_get(doc.root, "cases"), *hf = json_get(doc.root, "hf");
    TEST_CHECK(cases && cases->type == JSON_ARRAY && cases->n > 5000 && hf, "nfc.json cases");
    size_t bad[2] = {0, 0}, changed = 0;
    uint8_t *out = NULL;
    size_t cap = 0;
    for (size_t i = 0; cases && i < cases->n; i++) {
        const JsonValue *in = &cases->items[i].items[0], *want = &cases->items[i].items[1];
        for (int mode = 0; mode < 2; mode++) {
            const JsonValue *w = want;
            if (mode == NFC_HF) {
                char key[24];
                snprintf(key, sizeof key, "%zu", i);
                if (json_get(hf, key)) w = json_get(hf, key);
            }
            size_t n = in->str_len;
            const uint8_t *got = (const uint8_t *)in->str;
            if (utf8_nfc(got, in->str_len, mode, &out, &cap, &n)) got = out, changed += mode == 0;
            if (!(n == w->str_len && memcmp(got, w->str, n) == 0) && bad[mode]++ < 5) {
                printf("  nfc case %zu (%s):", i, mode ? "HF" : "Unicode");
                for (size_t k = 0; k < in->str_len; k++) printf(" %02x", (uint8_t)in->str[k]);
                printf(" ->");
                for (size_t k = 0; k < n; k++) printf(" %02x", got[k]);
                printf(", want");
                for (size_t k = 0; k < w->str_len; k++) printf(" %02x", (uint8_t)w->str[k]);
                printf("\n");
            }
        }
    }
    TEST_CHECK(bad[0] == 0, "NFC (Unicode " NFC_TABLES_VERSION ") differs from unicodedata2 on %zu of %zu strings",
               bad[0], cases ? cases->n : 0);
    TEST_CHECK(bad[1] == 0, "NFC_HF differs from HF tokenizers on %zu strings", bad[1]);
    TEST_CHECK(changed > 4000, "the slow path ran (%zu strings)", changed);
    size_t n;
    const char *ok = "plain ASCII, caf\xC3\xA9, \xE6\x97\xA5\xE6\x9C\xAC, \xEA\xB0\x80 a\xCC\xB4 \xF0\x9F\x98\x80";
    TEST_CHECK(!utf8_nfc((const uint8_t *)ok, strlen(ok), NFC_UNICODE, &out, &cap, &n), "NFC text takes the fast path");
    const char *bad_in = "\xFF\xCC\x81" "e\xCC\x81\xC3" "e\xCC\x81";
    TEST_CHECK(utf8_nfc((const uint8_t *)bad_in, strlen(bad_in), NFC_UNICODE, &out, &cap, &n) && n == 8 &&
                   memcmp(out, "\xFF\xCC\x81\xC3\xA9\xC3\xC3\xA9", 8) == 0,
               "invalid UTF-8 bytes are kept and block composition");
    free(out);
    json_free(&doc);
    free(buf);
}

static void pieces(PretokKind k, const char *s, char *out, size_t cap) {
    size_t n = strlen(s), o = 0;
    for (size_t i = 0; i < n;) {
        size_t e = pretok_next(k, (const uint8_t *)s, n, i);
        o += (size_t)snprintf(out + o, cap - o, "%s%.*s", i ? "|" : "", (int)(e - i), s + i);
        i = e;
    }
}

static void test_pretok(void) {
    char buf[512];
    pieces(PRETOK_GPT2, "Hello world's  end\n\n x", buf, sizeof buf);
    TEST_CHECK(strcmp(buf, "Hello| world|'s| | end|\n\n| x") == 0, "gpt2 split: %s", buf);
    pieces(PRETOK_LLAMA3, "I'LL pay 12345 \"now\"!\n\n  ok", buf, sizeof buf);
    TEST_CHECK(strcmp(buf, "I|'LL| pay| |123|45| \"|now|\"!\n\n| | ok") == 0, "llama3 split: %s", buf);
    pieces(PRETOK_QWEN2, "ab 123", buf, sizeof buf);
    TEST_CHECK(strcmp(buf, "ab| |1|2|3") == 0, "qwen2 split: %s", buf);
}

static Tokenizer *g_tiny;

static void test_tiny(void) {
    char *p = tmp_path("tiny.json");
    write_file(p, TOKENIZER_TINY_BPE, strlen(TOKENIZER_TINY_BPE));
    Tokenizer *t = tokenizer_load(p);
    g_tiny = t;
    TEST_CHECK(tokenizer_vocab_size(t) == 12, "tiny vocab size %d", tokenizer_vocab_size(t));
    TokIds v = {0};
    tokenizer_encode(t, "abc ab<|end|>cab", 16, TOK_ALLOW_SPECIAL, &v);
    int32_t want[] = {5, 3, 4, 7, 2, 4};
    TEST_CHECK(v.n == 6 && memcmp(v.ids, want, sizeof want) == 0, "tiny encode (n=%zu)", v.n);
    v.n = 0;
    tokenizer_encode(t, "a<|end|>", 8, 0, &v);
    TEST_CHECK(v.n == 1 + 0 && v.n < 8, "special not matched without TOK_ALLOW_SPECIAL drops unknown bytes (n=%zu)",
               v.n);
    v.n = 0;
    tokenizer_encode(t, "a  <pad>  b", 11, TOK_ALLOW_SPECIAL, &v);
    int32_t want2[] = {0, 8, 1};
    TEST_CHECK(v.n == 3 && memcmp(v.ids, want2, sizeof want2) == 0, "lstrip/rstrip swallow spaces (n=%zu)", v.n);
    // é = C3 A9: token 11; decode of [9] alone is an incomplete character.
    v.n = 0;
    tokenizer_encode(t, "\xC3\xA9", 2, 0, &v);
    TEST_CHECK(v.n == 1 && v.ids[0] == 11, "two-byte merge");
    TokStream st;
    tok_stream_init(&st, t, 1);
    size_t n;
    const char *s = tok_stream_push(&st, 9, &n);
    TEST_CHECK(n == 0, "stream holds an incomplete character");
    s = tok_stream_push(&st, 10, &n);
    TEST_CHECK(n == 2 && memcmp(s, "\xC3\xA9", 2) == 0, "stream completes the character");
    s = tok_stream_push(&st, 9, &n);
    s = tok_stream_push(&st, 0, &n);
    TEST_CHECK(n == 4 && memcmp(s, "\xEF\xBF\xBD" "a", 4) == 0, "broken character -> U+FFFD then a");
    s = tok_stream_push(&st, 7, &n);
    TEST_CHECK(n == 0, "special skipped");
    s = tok_stream_push(&st, 9, &n);
    s = tok_stream_flush(&st, &n);
    TEST_CHECK(n == 3 && memcmp(s, "\xEF\xBF\xBD", 3) == 0, "flush of a pending byte -> U+FFFD");
    tok_stream_free(&st);
    tok_ids_free(&v);
    free(p);
}

typedef struct {
    const char *name;
    const char *json;
} BadCase;

static void load_bad(void *arg) {
    const BadCase *b = arg;
    char *p = tmp_path(b->name);
    write_file(p, b->json, strlen(b->json));
    Tokenizer *t = tokenizer_load(p);  // expected to fail
    tokenizer_free(t);
    free(p);
}

static void test_bad_files(void) {
    static const BadCase cases[] = {
        {"bad1.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [}"},
        {"bad2.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}"},
        {"bad3.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}"},
        {"bad4.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}"},
        {"bad5.json", "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"}, \"behavior\": "
                      "\"Isolated\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}"},
        {"bad6.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}"},
        {"bad7.model", "\x0a\x05\x0a\x09zz"},
        {"bad8.model", "!!notbase64 1\n"},
    };
    static const char *needles[] = {"invalid JSON", "not supported", "missing from the vocabulary", "bad id",
                                    "not one we implement", "defined twice", "past the end", "malformed base64"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TEST_EXPECT_FAIL(cases[i].name, load_bad, (void *)&cases[i], needles[i]);
        TEST_CHECK(strstr(test_last_fail_message(), cases[i].name) != NULL, "%s: error names the file: %s",
                   cases[i].name, test_last_fail_message());
    }
}

// ---- exactness against the reference libraries -------------------------------------------
// GPT-2's tokenizer.json equivalent of encoder.json + vocab.bpe, built here so the fixture
// budget stays small: vocab = encoder.json verbatim, merges = the lines of vocab.bpe.
static char *gpt2_as_json(const char *dir) {
    char *enc, *bpe, err[256];
    size_t el, bl;
    char *pe = path_join(dir, "encoder.json"), *pb = path_join(dir, "vocab.bpe");
    CHECK(read_file_all(pe, 16u << 20, &enc, &el, err, sizeof err), "%s", err);
    CHECK(read_file_all(pb, 16u << 20, &bpe, &bl, err, sizeof err), "%s", err);
    size_t cap = el + bl * 3 + 4096, k = 0;
    char *out = malloc(cap);
    k += (size_t)sprintf(out + k,
                         "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":50256,\"content\":\"<|endoftext|>\","
                         "\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":true,\"special\":true}],"
                         "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                         "\"trim_offsets\":true,\"use_regex\":true},\"post_processor\":null,"
                         "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":");
    memcpy(out + k, enc, el);
    k += el;
    k += (size_t)sprintf(out + k, ",\"merges\":[");
    int first = 1;
    for (size_t p = 0; p < bl;) {
        char *nl = memchr(bpe + p, '\n', bl - p);
        size_t end = nl ? (size_t)(nl - bpe) : bl;
        if (end > p && !(p == 0 && strncmp(bpe, "#version", 8) == 0)) {
            if (!first) out[k++] = ',';
            first = 0;
            out[k++] = '"';
            for (size_t i = p; i < end; i++) {
                if (bpe[i] == '"' || bpe[i] == '\\') out[k++] = '\\';
                out[k++] = bpe[i];
            }
            out[k++] = '"';
        }
        p = end + 1;
    }
    k += (size_t)sprintf(out + k, "]}}");
    char *path = tmp_path("gpt2.tokenizer.json");
    write_file(path, out, k);
    free(out);
    free(enc);
    free(bpe);
    free(pe);
    free(pb);
    return path;
}

// The Llama 3 tokenizer.json with the Qwen2 regex in its Split pre-tokenizer (and with nfc,
// Qwen2's NFC normalizer too).
static char *qwen2_variant(const char *llama3_json, int nfc) {
    char *text, err[256];
    size_t len;
    CHECK(read_file_all(llama3_json, 64u << 20, &text, &len, err, sizeof err), "%s", err);
    const char *from = "\\\\p{N}{1,3}", *norm = "\"normalizer\": null";
    char *at = strstr(text, from), *nat = strstr(text, norm);
    CHECK(at && nat && nat < at, "Llama 3 regex / normalizer not found in %s", llama3_json);
    char *path = tmp_path(nfc ? "qwen2nfc.tokenizer.json" : "qwen2.tokenizer.json");
    FILE *f = fopen(path, "wb");
    fwrite(text, 1, (size_t)(nat - text), f);
    fputs(nfc ? "\"normalizer\": {\"type\": \"NFC\"}" : norm, f);
    fwrite(nat + strlen(norm), 1, (size_t)(at - nat - (ptrdiff_t)strlen(norm)), f);
    fputs("\\\\p{N}", f);
    fputs(at + strlen(from), f);
    fclose(f);
    free(text);
    return path;
}

// Writes the Llama 3 vocabulary as a tiktoken file (base64 bytes + rank = id).
static char *llama3_as_tiktoken(const Tokenizer *t) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *path = tmp_path("llama3.tiktoken.model");
    FILE *f = fopen(path, "wb");
    for (int32_t id = 0; id < 128000; id++) {
        size_t n;
        const uint8_t *s = (const uint8_t *)tokenizer_token_bytes(t, id, &n);
        for (size_t i = 0; i < n; i += 3) {
            uint32_t x = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) | (i + 2 < n ? s[i + 2] : 0);
            fputc(b64[x >> 18], f);
            fputc(b64[(x >> 12) & 63], f);
            fputc(i + 1 < n ? b64[(x >> 6) & 63] : '=', f);
            fputc(i + 2 < n ? b64[x & 63] : '=', f);
        }
        fprintf(f, " %d\n", (int)id);
    }
    fclose(f);
    return path;
}

static void test_invalid_utf8_roundtrip(Tokenizer *t, const char *name) {
    const char s[] = "ok \xff\xfe bad \xC3 half \xE2\x82 \xF0\x9F\x98 trunc \xED\xA0\x80 sur \xC0\xAF end\x80";
    TokIds v = {0};
    tokenizer_encode(t, s, sizeof s - 1, 0, &v);
    size_t n;
    char *d = tokenizer_decode(t, v.ids, v.n, 0, &n);
    TEST_CHECK(n == sizeof s - 1 && memcmp(d, s, n) == 0, "%s: invalid UTF-8 round-trips byte-exactly", name);
    free(d);
    tok_ids_free(&v);
}

static void test_shared(void) {
    TokData td;
    if (!tok_data_open(&td)) { test_skip("../shared/data absent: HF/tiktoken exactness tests"); return; }
    char dir[512];

    snprintf(dir, sizeof dir, "%s/tokenizers/llama3", td.shared);
    double t0 = now_s();
    Tokenizer *l3 = tokenizer_load(dir);
    double load_s = now_s() - t0;
    printf("  llama3 tokenizer.json loaded in %.3f s\n", load_s);
    TEST_CHECK(load_s < 1.5, "Llama 3 load took %.3f s", load_s);
    TEST_CHECK(tokenizer_vocab_size(l3) == 128256, "llama3 vocab %d", tokenizer_vocab_size(l3));
    TEST_CHECK(tokenizer_bos_id(l3) == 128000 && tokenizer_eos_id(l3) == 128001 && tokenizer_eot_id(l3) == 128009,
               "llama3 bos/eos/eot");
    TEST_CHECK(tokenizer_wants_bos(l3), "llama3 wants BOS");
    check_fixture(l3, &td, "llama3.json", TOK_ALLOW_SPECIAL, 1);
    check_corpus(l3, &td, "austen", "llama3/austen", TOK_ALLOW_SPECIAL);
    check_corpus(l3, &td, "brown", "llama3/brown", TOK_ALLOW_SPECIAL);
    test_invalid_utf8_roundtrip(l3, "llama3");
    check_shards_whole(l3, td.tricky, "llama3_tricky", 1);
    {  // chat template: the rendered Jinja string encoded with specials
        ChatMessage m[2] = {{"system", "  You are helpful.\n"}, {"user", "Hi there!"}};
        TokIds a = {0}, b = {0};
        tokenizer_chat_llama3(l3, m, 2, 1, &a);
        const char *r = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n";
        tokenizer_encode(l3, r, strlen(r), TOK_ALLOW_SPECIAL, &b);
        TEST_CHECK(a.n == b.n && memcmp(a.ids, b.ids, a.n * sizeof *a.ids) == 0 && a.ids[0] == 128000 &&
                       a.ids[a.n - 1] == 271,
                   "chat template ids (n=%zu vs %zu)", a.n, b.n);
        tok_ids_free(&a);
        tok_ids_free(&b);
    }
    char *tk = llama3_as_tiktoken(l3);
    t0 = now_s();
    Tokenizer *tt = tokenizer_load(tk);
    printf("  llama3 tiktoken loaded in %.3f s\n", now_s() - t0);
    TEST_CHECK(tokenizer_token_id(tt, "<|eot_id|>") == 128009 && tokenizer_token_id(tt, "<|reserved_special_token_250|>") ==
                                                                    128255,
               "tiktoken special ids follow Meta's list");
    check_fixture(tt, &td, "llama3.json", TOK_ALLOW_SPECIAL, 1);
    tokenizer_free(tt);
    free(tk);
    snprintf(dir, sizeof dir, "%s/tokenizers/llama3/tokenizer.json", td.shared);
    char *qp = qwen2_variant(dir, 0);
    tokenizer_free(l3);
    Tokenizer *qw = tokenizer_load(qp);
    check_fixture(qw, &td, "qwen2pat.json", TOK_ALLOW_SPECIAL, 1);
    tokenizer_free(qw);
    free(qp);
    qp = qwen2_variant(dir, 1);
    qw = tokenizer_load(qp);
    check_fixture(qw, &td, "qwen2nfc.json", TOK_ALLOW_SPECIAL, 1);
    {  // NFC applies between special tokens, and HF keeps characters newer than Unicode 9.0
        TokIds a = {0}, b = {0};
        const char *x = "e\xCC\x81<|eot_id|>\xCC\x81 \xF0\x91\xA4\xB5\xF0\x91\xA4\xB0";  // e + U+0301, U+11935 U+11930
        const char *y = "\xC3\xA9<|eot_id|>\xCC\x81 \xF0\x91\xA4\xB5\xF0\x91\xA4\xB0";
        tokenizer_encode(qw, x, strlen(x), TOK_ALLOW_SPECIAL, &a);
        tokenizer_encode(qw, y, strlen(y), TOK_ALLOW_SPECIAL, &b);
        TEST_CHECK(a.n == b.n && memcmp(a.ids, b.ids, a.n * sizeof *a.ids) == 0, "qwen2 NFC around a special token");
        tok_ids_free(&a);
        tok_ids_free(&b);
    }
    tokenizer_free(qw);
    free(qp);

    snprintf(dir, sizeof dir, "%s/tokenizers/gpt2", td.shared);
    Tokenizer *g2 = tokenizer_load(dir);
    TEST_CHECK(tokenizer_vocab_size(g2) == 50257 && tokenizer_eos_id(g2) == 50256 && !tokenizer_wants_bos(g2),
               "gpt2 vocab/eos/bos");
    check_fixture(g2, &td, "gpt2.json", TOK_ALLOW_SPECIAL, 1);
    check_corpus(g2, &td, "austen", "gpt2/austen", TOK_ALLOW_SPECIAL);
    check_corpus(g2, &td, "brown", "gpt2/brown", TOK_ALLOW_SPECIAL);
    test_invalid_utf8_roundtrip(g2, "gpt2");
    check_shards_whole(g2, td.tricky, "gpt2_tricky", 1);
    check_shards_whole(g2, td.austen, "gpt2_austen", 1);
    tokenizer_free(g2);
    char *gj = gpt2_as_json(dir);
    Tokenizer *g2j = tokenizer_load(gj);
    check_fixture(g2j, &td, "gpt2.json", TOK_ALLOW_SPECIAL, 1);
    tokenizer_free(g2j);
    free(gj);
    tok_data_close(&td);
}

int main(void) {
    test_unicode();
    test_pretok();
    test_nfc();
    test_tiny();
    test_bad_files();
    test_shared();
    tokenizer_free(g_tiny);
    return test_summary();
}
