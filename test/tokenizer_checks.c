// Checkers shared by the tokenizer test programs; see tokenizer_checks.h.
#define _GNU_SOURCE
#include "tokenizer_checks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../data/corpus.h"
#include "../data/shard.h"
#include "../data/tokenizer_internal.h"
#include "test.h"

const char *TOKENIZER_TINY_BPE =
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

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

char *tmp_path(const char *name) { return path_join(test_tmpdir("tok"), name); }

void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f, "cannot write %s", path);
    CHECK(fwrite(data, 1, n, f) == n, "short write %s", path);
    fclose(f);
}

JsonDoc load_fixture(const char *name, char **text) {
    char path[512];
    snprintf(path, sizeof path, "%s/fixtures/tokenizer/%s", test_dir(), name);
    size_t len;
    char err[256];
    CHECK(read_file_all(path, 64u << 20, text, &len, err, sizeof err), "%s", err);
    JsonDoc doc;
    CHECK(json_parse(*text, len, &doc, err, sizeof err), "%s: %s", path, err);
    return doc;
}

int tok_data_open(TokData *td) {
    memset(td, 0, sizeof *td);
    td->shared = shared_data_dir();
    if (!td->shared) return 0;
    snprintf(td->austen, sizeof td->austen, "%s/corpora/austen.txt", td->shared);
    td->tricky = tricky_corpus();
    td->texts_doc = load_fixture("texts.json", &td->texts_buf);
    td->texts = td->texts_doc.root;
    return 1;
}

void tok_data_close(TokData *td) {
    json_free(&td->texts_doc);
    free(td->texts_buf);
    free(td->tricky);
}

void check_fixture(Tokenizer *t, const TokData *td, const char *fixture, int flags, int lossless) {
    char *buf;
    JsonDoc doc = load_fixture(fixture, &buf);
    const JsonValue *ids = doc.root, *dec = NULL, *texts = td->texts;
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

void check_corpus(Tokenizer *t, const TokData *td, const char *corpus, const char *key, int flags) {
    char *dbuf;
    JsonDoc dd = load_fixture("corpus_digest.json", &dbuf);
    const JsonValue *e = json_get(dd.root, key);
    char path[512];
    snprintf(path, sizeof path, "%s/corpora/%s.txt", td->shared, corpus);
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

void check_shards_whole(Tokenizer *t, const char *corpus, const char *name, int want_safe) {
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
char *tricky_corpus(void) {
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
