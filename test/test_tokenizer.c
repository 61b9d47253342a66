// Tokenizer tests. Self-contained parts (Unicode tables, a tiny hand-written tokenizer.json,
// the streaming decoder, rejection of bad files) always run; exactness against HF tokenizers
// and sentencepiece (fixtures from test/ref/tokenizer_fixtures.py) needs ../shared/data.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/json.h"
#include "../data/corpus.h"
#include "../data/pretok.h"
#include "../data/shard.h"
#include "../data/tokenizer.h"
#include "../data/tokenizer_internal.h"
#include "../data/unicode.h"
#include "../data/unicode_nfc_tables.h"
#include "test.h"


static char g_tmp[256];
static char g_austen[512], *g_tricky;  // corpora for the chunked-shards checks

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *tmp_path(const char *name) { return path_join(g_tmp, name); }

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f, "cannot write %s", path);
    CHECK(fwrite(data, 1, n, f) == n, "short write %s", path);
    fclose(f);
}

static JsonDoc load_fixture(const char *name, char **text) {
    char path[512];
    snprintf(path, sizeof path, "%s/fixtures/tokenizer/%s", test_dir(), name);
    size_t len;
    char err[256];
    CHECK(read_file_all(path, 64u << 20, text, &len, err, sizeof err), "%s", err);
    JsonDoc doc;
    CHECK(json_parse(*text, len, &doc, err, sizeof err), "%s: %s", path, err);
    return doc;
}

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

// A tiny byte-level vocabulary: bytes a b c space (Ġ), merges a b -> ab, ab c -> abc.
static const char *TINY_JSON =
    "{\"version\":\"1.0\",\"added_tokens\":["
    "{\"id\":7,\"content\":\"<|end|>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,"
    "\"special\":true},"
    "{\"id\":8,\"content\":\"<pad>\",\"single_word\":false,\"lstrip\":true,\"rstrip\":true,\"normalized\":false,"
    "\"special\":true}],"
    "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
    "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"ab\":4,\"abc\":5,\"\\u00c3\":9,"
    "\"\\u00a9\":10,\"\\u00c3\\u00a9\":11},"
    "\"merges\":[\"a b\",\"ab c\",\"\\u00c3 \\u00a9\"]}}";

static Tokenizer *g_tiny;

static void test_tiny(void) {
    char *p = tmp_path("tiny.json");
    write_file(p, TINY_JSON, strlen(TINY_JSON));
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
typedef struct {
    JsonDoc texts_doc;
    char *texts_buf;
    const JsonValue *texts;
} Texts;

// Compares our ids with a fixture for every text; checks round trips when lossless. A fixture
// is either a list of id lists (one per text of texts.json) or an object {"ids": [...],
// "decode": {"i": what HF decodes text i's ids to, where that is not the text itself},
// "texts": [...] (instead of texts.json)}.
static void check_fixture(Tokenizer *t, const Texts *tx, const char *fixture, int flags, int lossless) {
    char *buf;
    JsonDoc doc = load_fixture(fixture, &buf);
    const JsonValue *ids = doc.root, *dec = NULL, *texts = tx->texts;
    if (doc.root->type == JSON_OBJECT) {
        ids = json_get(doc.root, "ids");
        dec = json_get(doc.root, "decode");
        if (json_get(doc.root, "texts")) texts = json_get(doc.root, "texts");
    }
    TEST_CHECK(ids && ids->type == JSON_ARRAY && ids->n == texts->n, "%s: one id list per text", fixture);
    if (!ids || ids->type != JSON_ARRAY) ids = texts = &(JsonValue){.type = JSON_ARRAY};
    size_t bad = 0, bad_rt = 0, bad_stream = 0;
    TokIds v = {0};
    for (size_t i = 0; i < ids->n && i < texts->n; i++) {
        const JsonValue *s = &texts->items[i], *ref = &ids->items[i];
        v.n = 0;
        tokenizer_encode(t, s->str, s->str_len, flags, &v);
        int ok = v.n == ref->n;
        for (size_t k = 0; ok && k < v.n; k++) {
            int64_t x;
            ok = json_as_i64(&ref->items[k], &x) && x == v.ids[k];
        }
        if (!ok && bad++ < 5) {
            printf("  %s: text %zu \"%.80s\": got %zu ids, want %zu\n", fixture, i, s->str, v.n, ref->n);
            for (size_t k = 0; k < v.n && k < 40; k++) {
                int64_t x = -1;
                if (k < ref->n) json_as_i64(&ref->items[k], &x);
                printf("    [%zu] %d %lld%s\n", k, v.ids[k], (long long)x, v.ids[k] == x ? "" : " <--");
            }
        }
        if (!lossless) continue;
        const char *want = s->str;
        size_t wn = s->str_len;
        if (dec) {
            char key[24];
            snprintf(key, sizeof key, "%zu", i);
            const JsonValue *d = json_get(dec, key);
            if (d && d->type == JSON_STRING) want = d->str, wn = d->str_len;
        }
        size_t n;
        char *d = tokenizer_decode(t, v.ids, v.n, 0, &n);
        if (!(n == wn && memcmp(d, want, n) == 0) && bad_rt++ < 3)
            printf("  %s: text %zu decodes to \"%.*s\", want \"%.*s\"\n", fixture, i, (int)(n > 80 ? 80 : n), d,
                   (int)(wn > 80 ? 80 : wn), want);
        free(d);
        TokStream st;
        tok_stream_init(&st, t, 0);
        char *acc = malloc(wn * 2 + 16);
        size_t an = 0, l;
        for (size_t k = 0; k < v.n; k++) {
            const char *p = tok_stream_push(&st, v.ids[k], &l);
            if (an + l <= wn * 2) memcpy(acc + an, p, l);
            an += l;
        }
        tok_stream_flush(&st, &l);
        if (!(an == wn && l == 0 && memcmp(acc, want, an) == 0) && bad_stream++ < 3)
            printf("  %s: text %zu: streaming decode differs\n", fixture, i);
        free(acc);
        tok_stream_free(&st);
    }
    TEST_CHECK(bad == 0, "%s: %zu of %zu texts differ from the reference", fixture, bad, ids->n);
    if (lossless) TEST_CHECK(bad_rt == 0 && bad_stream == 0, "%s: decode (%zu) / stream (%zu) failures", fixture,
                             bad_rt, bad_stream);
    tok_ids_free(&v);
    json_free(&doc);
    free(buf);
}

// Encodes every line of a corpus and compares count + FNV-1a digest with the fixture.
static void check_corpus(Tokenizer *t, const char *shared, const char *corpus, const char *key, int flags) {
    char *dbuf;
    JsonDoc dd = load_fixture("corpus_digest.json", &dbuf);
    const JsonValue *e = json_get(dd.root, key);
    char path[512];
    snprintf(path, sizeof path, "%s/corpora/%s.txt", shared, corpus);
    char *text;
    size_t len;
    char err[256];
    if (!e || !read_file_all(path, 64u << 20, &text, &len, err, sizeof err)) {
        test_skip(path);
        json_free(&dd);
        free(dbuf);
        return;
    }
    uint64_t h = 0xcbf29ce484222325ull;
    size_t count = 0, lines = 0;
    TokIds v = {0};
    double t0 = now_s();
    for (size_t p = 0; p < len;) {
        const char *nl = memchr(text + p, '\n', len - p);
        size_t end = nl ? (size_t)(nl - text) : len;
        v.n = 0;
        tokenizer_encode(t, text + p, end - p, flags, &v);
        for (size_t k = 0; k < v.n; k++)
            for (int b = 0; b < 4; b++) h = (h ^ (((uint32_t)v.ids[k] >> (8 * b)) & 0xFF)) * 0x100000001b3ull;
        count += v.n;
        lines++;
        p = end + 1;
    }
    double dt = now_s() - t0;
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    uint64_t want_lines = 0, want_tokens = 0;
    json_as_u64(json_get(e, "lines"), &want_lines);
    json_as_u64(json_get(e, "tokens"), &want_tokens);
    const char *want_fnv = json_get(e, "fnv") ? json_get(e, "fnv")->str : "";
    TEST_CHECK(lines == want_lines && count == want_tokens && strcmp(hex, want_fnv) == 0,
               "%s: %zu lines %zu tokens %s, reference %llu lines %llu tokens %s", key, lines, count, hex,
               (unsigned long long)want_lines, (unsigned long long)want_tokens, want_fnv);
    printf("  %s: %zu tokens, %.1f MB/s\n", key, count, len / dt / 1e6);
    tok_ids_free(&v);
    free(text);
    json_free(&dd);
    free(dbuf);
}

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

// corpus -> shards with 2 threads equals the text encoded whole (train part, BOS first).
static void check_shards_whole(Tokenizer *t, const char *corpus, const char *name, int want_safe) {
    TEST_CHECK(tok_newline_cut_safe(t) == want_safe, "%s: chunking %s", name, want_safe ? "safe" : "refused");
    char *prefix = tmp_path(name);
    const char *files[1] = {corpus};
    size_t nt, nv;
    double t0 = now_s();
    tokenize_files_to_shards(t, files, 1, prefix, 0.1, 2, 0, &nt, &nv);
    double dt = now_s() - t0;
    char *text, err[256];
    size_t len;
    CHECK(read_file_all(corpus, 1 << 26, &text, &len, err, sizeof err), "%s", err);
    size_t cut = len - (size_t)((double)len * 0.1);
    while (cut < len && text[cut - 1] != '\n') cut++;
    TokIds ref = {0};
    tok_ids_push(&ref, tokenizer_wants_bos(t) ? tokenizer_bos_id(t) : tokenizer_eos_id(t));  // the separator
    tokenizer_encode(t, text, cut, TOK_ALLOW_SPECIAL, &ref);
    size_t plen = strlen(prefix) + 16;
    char *tp = malloc(plen);
    snprintf(tp, plen, "%s_train.bin", prefix);
    Shard sh;
    shard_open(&sh, tp, tokenizer_vocab_size(t));
    uint64_t first_bad = sh.count;
    for (uint64_t i = 0; i < sh.count && i < ref.n; i++)
        if (shard_token(&sh, i) != (uint32_t)ref.ids[i]) { first_bad = i; break; }
    TEST_CHECK(sh.count == ref.n && sh.count == nt + 1 && first_bad == sh.count,
               "%s: 2-thread chunked shard equals the whole text encoded (%llu vs %zu tokens, first diff at %llu)",
               name, (unsigned long long)sh.count, ref.n, (unsigned long long)first_bad);
    printf("  %s: %s -> shards in %.2f s (2 threads)\n", name, strrchr(corpus, '/') + 1, dt);
    shard_close(&sh);
    tok_ids_free(&ref);
    free(text);
    free(tp);
    free(prefix);
}

// ~1.5 MB of lines whose breaks are mostly ones a chunk must not be cut at (whitespace before
// the '\n', blank lines) with a clean "x\nY" now and then, plus special tokens in the text.
static char *tricky_corpus(void) {
    static const char *ends[] = {"  \n", "\n\n", "\t\n", " \n\n", "\xE3\x80\x80\n", "\n \n", ".\n\n\n", "\xC2\xA0\n"};
    static const char *words[] = {"the", "Quick", "brown", "42", "fox's", "caf\xC3\xA9", "<|eot_id|>", "</s>",
                                  "\xE6\x97\xA5\xE6\x9C\xAC", "e\xCC\x81", "--", "x7"};
    char *path = tmp_path("tricky.txt");
    FILE *f = fopen(path, "wb");
    CHECK(f, "cannot write %s", path);
    uint64_t st = 12345;
    size_t total = 0;
    for (int line = 0; total < 1500000; line++) {
        int nw = 1 + (int)(test_rand_u64(&st) % 12);
        for (int w = 0; w < nw; w++) {
            const char *x = words[test_rand_u64(&st) % (sizeof words / sizeof words[0])];
            total += (size_t)fprintf(f, "%s%s", w ? " " : "", x);
        }
        const char *e = line % 40 == 39 ? "!\n" : ends[test_rand_u64(&st) % (sizeof ends / sizeof ends[0])];
        total += (size_t)fprintf(f, "%s", e);
    }
    fclose(f);
    return path;
}

// ---- HF Llama 2 tokenizer.json, rebuilt from tokenizer.model ------------------------------
// transformers 4.x converts a sentencepiece BPE model to tokenizer.json with vocab = the pieces
// by id and merges from generate_merges(): for every piece (in id order) every split into two
// pieces, each piece's splits ordered by (left id, right id), then everything stably sorted by
// (score of the merged piece, code points of left, code points of right), descending. Scores of
// ids 0..2 (<unk> <s> </s>) count as 0. The fixture holds the rest of each file and an FNV
// digest of the merges transformers wrote, so this rebuild is checked, not assumed.
typedef struct {
    int32_t l, r;
    float score;
    uint32_t lc, rc, ord;
} GenMerge;

static int cmp_genmerge(const void *pa, const void *pb) {
    const GenMerge *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->lc != b->lc) return a->lc > b->lc ? -1 : 1;
    if (a->rc != b->rc) return a->rc > b->rc ? -1 : 1;
    return a->ord < b->ord ? -1 : a->ord > b->ord;
}

static uint32_t cp_count(const char *s, size_t n) {
    uint32_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((uint8_t)s[i] & 0xC0) != 0x80;
    return c;
}

// All pieces (control, byte and unknown ones included), string -> id.
typedef struct {
    const Tokenizer *t;
    int32_t *slot;
    size_t mask;
} PieceMap;

static uint64_t fnv1a(const void *p, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) h = (h ^ ((const uint8_t *)p)[i]) * 0x100000001b3ull;
    return h;
}

static int32_t piece_find(const PieceMap *m, const char *s, size_t n) {
    for (size_t h = fnv1a(s, n, 0xcbf29ce484222325ull) & m->mask;; h = (h + 1) & m->mask) {
        int32_t id = m->slot[h];
        if (id < 0) return -1;
        if (m->t->tok_len[id] == n && memcmp(m->t->blob + m->t->tok_off[id], s, n) == 0) return id;
    }
}

static void json_put_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

// Writes DIR/tokenizer.json (+ tokenizer_config.json) for one form; returns the merges digest.
static uint64_t write_llama2_hf(const Tokenizer *spm, const char *skeleton, const char *config, const char *dir,
                                size_t *n_merges) {
    const int32_t n = spm->n_vocab;
    // The sentencepiece loader keeps raw pieces in tok_off/tok_len (decode strings separately).
    PieceMap m = {spm, NULL, 0};
    size_t cap = 1;
    while (cap < (size_t)n * 2) cap *= 2;
    m.slot = malloc(cap * sizeof *m.slot);
    m.mask = cap - 1;
    for (size_t i = 0; i < cap; i++) m.slot[i] = -1;
    for (int32_t id = 0; id < n; id++) {
        size_t h = fnv1a(spm->blob + spm->tok_off[id], spm->tok_len[id], 0xcbf29ce484222325ull) & m.mask;
        while (m.slot[h] >= 0) h = (h + 1) & m.mask;
        m.slot[h] = id;
    }
    GenMerge *g = NULL;
    size_t ng = 0, gcap = 0;
    for (int32_t id = 0; id < n; id++) {
        const char *p = spm->blob + spm->tok_off[id];
        size_t len = spm->tok_len[id], first = ng;
        for (size_t k = 1; k < len; k++) {
            if (((uint8_t)p[k] & 0xC0) == 0x80) continue;
            int32_t l = piece_find(&m, p, k), r = piece_find(&m, p + k, len - k);
            if (l < 0 || r < 0) continue;
            if (ng == gcap) gcap = gcap ? gcap * 2 : 1 << 16, g = realloc(g, gcap * sizeof *g);
            g[ng++] = (GenMerge){l, r, id < 3 ? 0.0f : spm->scores[id], cp_count(p, k), cp_count(p + k, len - k), 0};
        }
        for (size_t a = first + 1; a < ng; a++)  // insertion sort by (left id, right id): few splits
            for (size_t b = a; b > first && (g[b - 1].l > g[b].l || (g[b - 1].l == g[b].l && g[b - 1].r > g[b].r));
                 b--) {
                GenMerge x = g[b];
                g[b] = g[b - 1];
                g[b - 1] = x;
            }
    }
    for (size_t i = 0; i < ng; i++) g[i].ord = (uint32_t)i;
    qsort(g, ng, sizeof *g, cmp_genmerge);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < ng; i++) {
        h = fnv1a(spm->blob + spm->tok_off[g[i].l], spm->tok_len[g[i].l], h);
        h = fnv1a(" ", 1, h);
        h = fnv1a(spm->blob + spm->tok_off[g[i].r], spm->tok_len[g[i].r], h);
        h = fnv1a("\n", 1, h);
    }
    *n_merges = ng;
    char *path = path_join(dir, "tokenizer.json");
    FILE *f = fopen(path, "wb");
    CHECK(f, "cannot write %s", path);
    const char *v = strstr(skeleton, "\"@VOCAB@\""), *mg = strstr(skeleton, "\"@MERGES@\"");
    CHECK(v && mg && v < mg, "llama2_hf.json: skeleton without \"@VOCAB@\" / \"@MERGES@\"");
    fwrite(skeleton, 1, (size_t)(v - skeleton), f);
    fputc('{', f);
    for (int32_t id = 0; id < n; id++) {
        if (id) fputc(',', f);
        json_put_str(f, spm->blob + spm->tok_off[id], spm->tok_len[id]);
        fprintf(f, ":%d", (int)id);
    }
    fputc('}', f);
    const char *after_v = v + strlen("\"@VOCAB@\"");
    fwrite(after_v, 1, (size_t)(mg - after_v), f);
    fputc('[', f);
    for (size_t i = 0; i < ng; i++) {
        fputs(i ? ",[" : "[", f);
        json_put_str(f, spm->blob + spm->tok_off[g[i].l], spm->tok_len[g[i].l]);
        fputc(',', f);
        json_put_str(f, spm->blob + spm->tok_off[g[i].r], spm->tok_len[g[i].r]);
        fputc(']', f);
    }
    fputc(']', f);
    fputs(mg + strlen("\"@MERGES@\""), f);
    fclose(f);
    free(path);
    path = path_join(dir, "tokenizer_config.json");
    write_file(path, config, strlen(config));
    free(path);
    free(g);
    free(m.slot);
    return h;
}

static void test_llama2_hf(const Texts *tx, const char *shared) {
    char model[512];
    snprintf(model, sizeof model, "%s/tokenizers/llama2/tokenizer.model", shared);
    Tokenizer *spm = tokenizer_load(model);
    char *mbuf;
    JsonDoc meta = load_fixture("llama2_hf.json", &mbuf);
    const JsonValue *forms = json_get(meta.root, "forms");
    uint64_t want_merges = 0;
    json_as_u64(json_get(meta.root, "merges"), &want_merges);
    const char *want_fnv = json_get(meta.root, "merges_fnv") ? json_get(meta.root, "merges_fnv")->str : "";
    TEST_CHECK(forms && forms->type == JSON_OBJECT && forms->n == 3, "llama2_hf.json: three forms");
    for (size_t i = 0; forms && i < forms->n; i++) {
        const char *name = forms->members[i].key;
        const JsonValue *f = &forms->members[i].value;
        char sub[64], fix[96];
        snprintf(sub, sizeof sub, "llama2_hf_%s", name);
        char *dir = tmp_path(sub);
        CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
        size_t nm;
        uint64_t h = write_llama2_hf(spm, json_get(f, "tokenizer")->str, json_get(f, "config")->str, dir, &nm);
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
        TEST_CHECK(nm == want_merges && strcmp(hex, want_fnv) == 0,
                   "%s: rebuilt merges %zu %s, transformers wrote %llu %s", name, nm, hex,
                   (unsigned long long)want_merges, want_fnv);
        Tokenizer *t = tokenizer_load(dir);
        TEST_CHECK(tokenizer_vocab_size(t) == 32000 && tokenizer_bos_id(t) == 1 && tokenizer_eos_id(t) == 2 &&
                       tokenizer_wants_bos(t) && tokenizer_is_special(t, 1),
                   "%s: vocab / bos / eos / add_bos_token", name);
        snprintf(fix, sizeof fix, "%s.json", sub);
        check_fixture(t, tx, fix, TOK_ALLOW_SPECIAL, 1);
        if (strcmp(name, "legacy") == 0) {
            check_corpus(t, shared, "austen", "llama2hf/austen", TOK_ALLOW_SPECIAL);
            check_corpus(t, shared, "brown", "llama2hf/brown", TOK_ALLOW_SPECIAL);
        }
        check_shards_whole(t, g_austen, sub, 1);
        if (strcmp(name, "legacy") == 0) check_shards_whole(t, g_tricky, "llama2_hf_tricky", 1);
        tokenizer_free(t);
        free(dir);
    }
    json_free(&meta);
    free(mbuf);
    tokenizer_free(spm);
}

// ---- sentencepiece unused pieces -----------------------------------------------------------
static uint64_t pb_get(const uint8_t **p, const uint8_t *end) {
    uint64_t v = 0;
    for (int sh = 0; *p < end && sh < 64; sh += 7) {
        uint8_t c = *(*p)++;
        v |= (uint64_t)(c & 0x7F) << sh;
        if (!(c & 0x80)) break;
    }
    return v;
}

static size_t pb_put(uint8_t *o, uint64_t v) {
    size_t k = 0;
    do {
        o[k++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return k;
}

// Skips one field's value; returns 0 for a wire type it does not know.
static int pb_skip_value(const uint8_t **p, const uint8_t *end, uint32_t wire) {
    if (wire == 0) pb_get(p, end);
    else if (wire == 1) *p += 8;
    else if (wire == 2) {
        uint64_t n = pb_get(p, end);
        *p += n;
    } else if (wire == 5) *p += 4;
    else return 0;
    return *p <= end;
}

// Writes a copy of the model whose pieces listed in `unused` have type UNUSED (5).
static char *spm_mark_unused(const char *model, const JsonValue *unused) {
    char *data, err[256];
    size_t len;
    CHECK(read_file_all(model, 64u << 20, &data, &len, err, sizeof err), "%s", err);
    uint8_t *mark = calloc(1 << 20, 1), *out = malloc(len * 2 + 1024);
    for (size_t i = 0; i < unused->n; i++) {
        int64_t id;
        CHECK(json_as_i64(&unused->items[i], &id) && id >= 0 && id < (1 << 20), "llama2_unused.json: bad id");
        mark[id] = 1;
    }
    const uint8_t *p = (const uint8_t *)data, *end = p + len;
    size_t k = 0, piece = 0;
    while (p < end) {
        const uint8_t *f0 = p;
        uint64_t key = pb_get(&p, end);
        uint32_t field = (uint32_t)(key >> 3), wire = (uint32_t)(key & 7);
        if (field == 1 && wire == 2 && mark[piece++]) {
            uint64_t n = pb_get(&p, end);
            const uint8_t *sub = p, *send = p + n;
            uint8_t tmp[4096];
            size_t tn = 0;
            while (sub < send) {  // copy the piece's fields except its type, then type = 5
                const uint8_t *s0 = sub;
                uint64_t sk = pb_get(&sub, send);
                CHECK(pb_skip_value(&sub, send, (uint32_t)(sk & 7)) && tn + (size_t)(sub - s0) < sizeof tmp,
                      "bad piece");
                if ((sk >> 3) != 3) memcpy(tmp + tn, s0, (size_t)(sub - s0)), tn += (size_t)(sub - s0);
            }
            tmp[tn++] = 0x18;
            tmp[tn++] = 5;
            k += pb_put(out + k, key);
            k += pb_put(out + k, tn);
            memcpy(out + k, tmp, tn);
            k += tn;
            p = send;
            continue;
        }
        CHECK(pb_skip_value(&p, end, wire), "%s: unexpected protobuf", model);
        memcpy(out + k, f0, (size_t)(p - f0));
        k += (size_t)(p - f0);
    }
    char *path = tmp_path("llama2_unused.model");
    write_file(path, out, k);
    free(out);
    free(mark);
    free(data);
    return path;
}

static void test_llama2_unused(const Texts *tx, const char *shared) {
    char model[512], *buf;
    snprintf(model, sizeof model, "%s/tokenizers/llama2/tokenizer.model", shared);
    JsonDoc doc = load_fixture("llama2_unused.json", &buf);
    const JsonValue *unused = json_get(doc.root, "unused");
    char *path = spm_mark_unused(model, unused);
    Tokenizer *t = tokenizer_load(path);
    int marked = 1;
    for (size_t i = 0; i < unused->n; i++) {
        int64_t id;
        json_as_i64(&unused->items[i], &id);
        marked &= (t->tok_attr[id] & TOKA_UNUSED) != 0;
    }
    TEST_CHECK(marked && unused->n > 500, "%zu pieces marked unused", unused->n);
    check_fixture(t, tx, "llama2_unused.json", 0, 0);
    check_corpus(t, shared, "austen", "llama2unused/austen", 0);
    check_corpus(t, shared, "brown", "llama2unused/brown", 0);
    check_shards_whole(t, g_austen, "llama2_unused_shard", 0);
    tokenizer_free(t);
    free(path);
    json_free(&doc);
    free(buf);
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
    const char *shared = shared_data_dir();
    if (!shared) { test_skip("../shared/data absent: HF/sentencepiece exactness tests"); return; }
    Texts tx;
    snprintf(g_austen, sizeof g_austen, "%s/corpora/austen.txt", shared);
    g_tricky = tricky_corpus();
    tx.texts_doc = load_fixture("texts.json", &tx.texts_buf);
    tx.texts = tx.texts_doc.root;
    char dir[512];

    snprintf(dir, sizeof dir, "%s/tokenizers/llama3", shared);
    double t0 = now_s();
    Tokenizer *l3 = tokenizer_load(dir);
    double load_s = now_s() - t0;
    printf("  llama3 tokenizer.json loaded in %.3f s\n", load_s);
    TEST_CHECK(load_s < 1.5, "Llama 3 load took %.3f s", load_s);
    TEST_CHECK(tokenizer_vocab_size(l3) == 128256, "llama3 vocab %d", tokenizer_vocab_size(l3));
    TEST_CHECK(tokenizer_bos_id(l3) == 128000 && tokenizer_eos_id(l3) == 128001 && tokenizer_eot_id(l3) == 128009,
               "llama3 bos/eos/eot");
    TEST_CHECK(tokenizer_wants_bos(l3), "llama3 wants BOS");
    check_fixture(l3, &tx, "llama3.json", TOK_ALLOW_SPECIAL, 1);
    check_corpus(l3, shared, "austen", "llama3/austen", TOK_ALLOW_SPECIAL);
    check_corpus(l3, shared, "brown", "llama3/brown", TOK_ALLOW_SPECIAL);
    test_invalid_utf8_roundtrip(l3, "llama3");
    check_shards_whole(l3, g_tricky, "llama3_tricky", 1);
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
    check_fixture(tt, &tx, "llama3.json", TOK_ALLOW_SPECIAL, 1);
    tokenizer_free(tt);
    free(tk);
    snprintf(dir, sizeof dir, "%s/tokenizers/llama3/tokenizer.json", shared);
    char *qp = qwen2_variant(dir, 0);
    tokenizer_free(l3);
    Tokenizer *qw = tokenizer_load(qp);
    check_fixture(qw, &tx, "qwen2pat.json", TOK_ALLOW_SPECIAL, 1);
    tokenizer_free(qw);
    free(qp);
    qp = qwen2_variant(dir, 1);
    qw = tokenizer_load(qp);
    check_fixture(qw, &tx, "qwen2nfc.json", TOK_ALLOW_SPECIAL, 1);
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

    snprintf(dir, sizeof dir, "%s/tokenizers/gpt2", shared);
    Tokenizer *g2 = tokenizer_load(dir);
    TEST_CHECK(tokenizer_vocab_size(g2) == 50257 && tokenizer_eos_id(g2) == 50256 && !tokenizer_wants_bos(g2),
               "gpt2 vocab/eos/bos");
    check_fixture(g2, &tx, "gpt2.json", TOK_ALLOW_SPECIAL, 1);
    check_corpus(g2, shared, "austen", "gpt2/austen", TOK_ALLOW_SPECIAL);
    check_corpus(g2, shared, "brown", "gpt2/brown", TOK_ALLOW_SPECIAL);
    test_invalid_utf8_roundtrip(g2, "gpt2");
    check_shards_whole(g2, g_tricky, "gpt2_tricky", 1);
    check_shards_whole(g2, g_austen, "gpt2_austen", 1);
    tokenizer_free(g2);
    char *gj = gpt2_as_json(dir);
    Tokenizer *g2j = tokenizer_load(gj);
    check_fixture(g2j, &tx, "gpt2.json", TOK_ALLOW_SPECIAL, 1);
    tokenizer_free(g2j);
    free(gj);

    snprintf(dir, sizeof dir, "%s/tokenizers/llama2/tokenizer.model", shared);
    Tokenizer *l2 = tokenizer_load(dir);
    TEST_CHECK(tokenizer_vocab_size(l2) == 32000 && tokenizer_bos_id(l2) == 1 && tokenizer_eos_id(l2) == 2,
               "llama2 vocab/bos/eos");
    check_fixture(l2, &tx, "llama2_spm.json", 0, 0);
    check_corpus(l2, shared, "austen", "llama2/austen", 0);
    check_corpus(l2, shared, "brown", "llama2/brown", 0);
    check_shards_whole(l2, g_austen, "llama2_shard", 1);
    check_shards_whole(l2, g_tricky, "llama2_tricky", 1);
    {  // sentencepiece drops the dummy-prefix space when decoding
        TokIds v = {0};
        tokenizer_encode(l2, "Hello  world \xE6\x97\xA5\xF0\x9F\x98\x80", 20, 0, &v);
        size_t n;
        char *d = tokenizer_decode(l2, v.ids, v.n, 0, &n);
        TEST_CHECK(n == 20 && memcmp(d, "Hello  world \xE6\x97\xA5\xF0\x9F\x98\x80", 20) == 0, "llama2 round trip");
        free(d);
        tok_ids_free(&v);
    }
    tokenizer_free(l2);
    test_llama2_hf(&tx, shared);
    test_llama2_unused(&tx, shared);
    json_free(&tx.texts_doc);
    free(tx.texts_buf);
    free(g_tricky);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "%s", test_tmpdir("tok"));
    test_unicode();
    test_pretok();
    test_nfc();
    test_tiny();
    test_bad_files();
    test_shared();
    tokenizer_free(g_tiny);
    return test_summary();
}
