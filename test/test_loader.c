// Token shards and the training data loader: format round trip, rejection of corrupt shards,
// batches, deterministic shuffle, disjoint ranks, exact resume; corpus -> shards (chunked,
// multi-threaded) equals encoding each part whole.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../data/corpus.h"
#include "../data/loader.h"
#include "../data/shard.h"
#include "../data/tokenizer.h"
#include "test.h"


static char g_tmp[256];
static char *tmp(const char *name) { return path_join(g_tmp, name); }

// Shard k holds ids (k*1000 + i) % vocab for i < n, as one document.
static char *make_shard(const char *name, int k, size_t n, int32_t vocab) {
    char *p = tmp(name);
    ShardWriter w;
    shard_writer_open(&w, p, vocab, -1);
    int32_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) ids[i] = (int32_t)(((size_t)k * 1000 + i) % (size_t)vocab);
    shard_writer_doc(&w, ids, n);
    shard_writer_close(&w);
    free(ids);
    return p;
}

static void test_shard_format(void) {
    char *p = tmp("fmt.bin");
    ShardWriter w;
    shard_writer_open(&w, p, 70000, 5);
    int32_t a[] = {1, 69999, 3};
    shard_writer_doc(&w, a, 3);
    shard_writer_doc(&w, a, 1);
    shard_writer_close(&w);
    Shard s;
    shard_open(&s, p, 70000);
    TEST_CHECK(s.width == 4 && s.vocab == 70000 && s.sep == 5 && s.count == 6 && s.docs == 2, "header fields");
    uint32_t want[] = {5, 1, 69999, 3, 5, 1};
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= shard_token(&s, (uint64_t)i) == want[i];
    TEST_CHECK(ok, "u32 tokens with separators");
    shard_close(&s);
    free(p);
    p = make_shard("u16.bin", 0, 10, 50257);
    shard_open(&s, p, 50257);
    TEST_CHECK(s.width == 2 && s.count == 10 && s.sep == SHARD_NO_SEP, "u16 shard");
    TEST_CHECK(s.mf.size == SHARD_HEADER_BYTES + 20, "file size = header + 2 bytes per token");
    shard_close(&s);
    free(p);
}

typedef struct {
    const char *path;
    int32_t vocab;
} OpenArg;
static void open_shard(void *arg) {
    const OpenArg *a = arg;
    Shard s;
    shard_open(&s, a->path, a->vocab);
    shard_close(&s);
}

static void corrupt(const char *src, const char *dst, long off, const void *bytes, size_t n, long truncate_to) {
    char *buf, err[256];
    size_t len;
    CHECK(read_file_all(src, 1 << 24, &buf, &len, err, sizeof err), "%s", err);
    if (off >= 0) memcpy(buf + off, bytes, n);
    if (truncate_to >= 0) len = (size_t)truncate_to;
    FILE *f = fopen(dst, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    free(buf);
}

static void test_corrupt_shards(void) {
    char *good = make_shard("good.bin", 1, 100, 1000);
    struct {
        const char *name;
        long off;
        const char *bytes;
        size_t n;
        long trunc;
        int32_t vocab;
        const char *needle;
    } cases[] = {
        {"magic.bin", 0, "XXXX", 4, -1, 1000, "wrong magic"},
        {"version.bin", 8, "\x09", 1, -1, 1000, "version 9"},
        {"trunc.bin", -1, NULL, 0, SHARD_HEADER_BYTES + 150, 1000, "truncated or corrupt"},
        {"header.bin", -1, NULL, 0, 100, 1000, "truncated shard"},
        {"count.bin", 24, "\x65", 1, -1, 1000, "header says 101 tokens"},
        {"width.bin", 12, "\x03", 1, -1, 1000, "token width 3"},
        {"badid.bin", SHARD_HEADER_BYTES + 20, "\xff\xff", 2, -1, 1000, "token 10 has id 65535"},
        {"vocab.bin", -1, NULL, 0, -1, 500, "the model has 500"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *p = tmp(cases[i].name);
        corrupt(good, p, cases[i].off, cases[i].bytes, cases[i].n, cases[i].trunc);
        OpenArg a = {p, cases[i].vocab};
        TEST_EXPECT_FAIL(cases[i].name, open_shard, &a, cases[i].needle);
        TEST_CHECK(strstr(test_last_fail_message(), cases[i].name) != NULL, "error names the file: %s",
                   test_last_fail_message());
        free(p);
    }
    free(good);
}

#define B 3
#define T 16

static void take(DataLoader *dl, int steps, int32_t *out_in) {
    int32_t in[B * T], tg[B * T];
    for (int s = 0; s < steps; s++) {
        loader_next(dl, in, tg);
        if (out_in) memcpy(out_in + (size_t)s * B * T, in, sizeof in);
    }
}

static void test_loader(void) {
    const int32_t V = 5000;
    char *paths[3] = {make_shard("s0.bin", 0, 16 * 20 + 1, V), make_shard("s1.bin", 1, 16 * 7 + 5, V),
                      make_shard("s2.bin", 2, 16 * 13 + 1, V)};
    const char *const *pp = (const char *const *)paths;
    const int per_epoch = 20 + 7 + 13;  // samples
    DataLoader dl;
    loader_init(&dl, pp, 3, V, B, T, 0, 1, 42, 1);
    // one epoch of samples covers every sample exactly once; targets are inputs shifted
    int32_t in[B * T], tg[B * T];
    int seen[3][20] = {{0}};
    int steps = per_epoch / B, shift_ok = 1, starts_ok = 1;
    for (int s = 0; s < steps; s++) {
        loader_next(&dl, in, tg);
        for (int b = 0; b < B; b++) {
            int32_t first = in[b * T];
            int shard = first / 1000, off = (int)(first % 1000);
            starts_ok &= shard < 3 && off % T == 0;
            if (shard < 3 && off / T < 20) seen[shard][off / T]++;
            for (int k = 0; k + 1 < T; k++) shift_ok &= tg[b * T + k] == in[b * T + k + 1];
            shift_ok &= tg[b * T + T - 1] == in[b * T + T - 1] + 1;
        }
    }
    int dup = 0;
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < 20; j++) dup += seen[s][j] > 1;
    TEST_CHECK(shift_ok, "targets are inputs shifted by one");
    TEST_CHECK(starts_ok && dup == 0, "samples start at multiples of T, none repeated within an epoch");
    loader_free(&dl);

    // determinism and seed dependence
    int32_t *a = malloc(sizeof(int32_t) * 30 * B * T), *b = malloc(sizeof(int32_t) * 30 * B * T);
    loader_init(&dl, pp, 3, V, B, T, 0, 1, 42, 1);
    take(&dl, 30, a);
    loader_free(&dl);
    loader_init(&dl, pp, 3, V, B, T, 0, 1, 42, 1);
    take(&dl, 30, b);
    loader_free(&dl);
    TEST_CHECK(memcmp(a, b, sizeof(int32_t) * 30 * B * T) == 0, "same seed, same batches (across epochs)");
    loader_init(&dl, pp, 3, V, B, T, 0, 1, 43, 1);
    take(&dl, 30, b);
    loader_free(&dl);
    TEST_CHECK(memcmp(a, b, sizeof(int32_t) * 30 * B * T) != 0, "another seed, other batches");

    // resume: save after 11 steps, continue 20; a fresh loader restored from the file agrees
    char *sp = tmp("loader.state");
    loader_init(&dl, pp, 3, V, B, T, 0, 1, 7, 1);
    take(&dl, 11, NULL);
    loader_save_state(&dl, sp);
    take(&dl, 20, a);
    loader_free(&dl);
    loader_init(&dl, pp, 3, V, B, T, 0, 1, 7, 1);
    loader_load_state(&dl, sp);
    take(&dl, 20, b);
    TEST_CHECK(memcmp(a, b, sizeof(int32_t) * 20 * B * T) == 0, "resume from a saved state is exact");
    loader_free(&dl);

    // ranks: world=2 with B each = the world=1 stream with 2B, split in halves
    {
        DataLoader one, r0, r1;
        int32_t big_in[2 * B * T], big_tg[2 * B * T], i0[B * T], t0[B * T], i1[B * T], t1[B * T];
        // world=1 with batch 2B: build by pulling two B-batches from a B loader
        loader_init(&one, pp, 3, V, B, T, 0, 1, 9, 1);
        loader_init(&r0, pp, 3, V, B, T, 0, 2, 9, 1);
        loader_init(&r1, pp, 3, V, B, T, 1, 2, 9, 1);
        int ok = 1, disjoint = 1;
        for (int s = 0; s < 25; s++) {
            loader_next(&one, big_in, big_tg);
            loader_next(&one, big_in + B * T, big_tg + B * T);
            loader_next(&r0, i0, t0);
            loader_next(&r1, i1, t1);
            ok &= memcmp(i0, big_in, sizeof i0) == 0 && memcmp(i1, big_in + B * T, sizeof i1) == 0;
            for (int x = 0; x < B; x++)
                for (int y = 0; y < B; y++) disjoint &= i0[x * T] != i1[y * T] || s * 2 * B >= per_epoch;
        }
        TEST_CHECK(ok, "rank r of world w gets the r-th B-slice of the global stream");
        TEST_CHECK(disjoint, "ranks see disjoint samples");
        loader_free(&one);
        loader_free(&r0);
        loader_free(&r1);
    }
    // no shuffle: file order, sequential
    loader_init(&dl, pp, 3, V, B, T, 0, 1, 1, 0);
    take(&dl, 1, a);
    TEST_CHECK(a[0] == 0 && a[T] == T && a[2 * T] == 2 * T, "shuffle off reads sequentially");
    loader_free(&dl);
    free(a);
    free(b);
    free(sp);
    for (int i = 0; i < 3; i++) free(paths[i]);
}

typedef struct {
    DataLoader *dl;
    const char *path;
} StateArg;
static void load_state(void *arg) {
    const StateArg *s = arg;
    loader_load_state(s->dl, s->path);
}

static void test_bad_state(void) {
    const int32_t V = 5000;
    char *p = make_shard("st0.bin", 0, 200, V);
    const char *pp[1] = {p};
    DataLoader dl, other;
    loader_init(&dl, pp, 1, V, B, T, 0, 1, 5, 1);
    char *sp = tmp("st.state");
    loader_save_state(&dl, sp);
    loader_init(&other, pp, 1, V, B, T + 1, 0, 1, 5, 1);
    StateArg a = {&other, sp};
    TEST_EXPECT_FAIL("state layout mismatch", load_state, &a, "saved with B=3 T=16");
    loader_free(&other);
    loader_init(&other, pp, 1, V, B, T, 0, 1, 6, 1);
    TEST_EXPECT_FAIL("state seed mismatch", load_state, &a, "seed 5");
    loader_free(&other);
    char *bad = tmp("bad.state");
    corrupt(sp, bad, 0, "ZZ", 2, -1);
    StateArg c = {&dl, bad};
    TEST_EXPECT_FAIL("corrupt state file", load_state, &c, "not a loader state file");
    loader_free(&dl);
    free(bad);
    free(sp);
    free(p);
}

static void test_corpus_shards(void) {
    const char *shared = shared_data_dir();
    if (!shared) { test_skip("../shared/data absent: corpus -> shards test"); return; }
    char tokdir[512], corpus[512];
    snprintf(tokdir, sizeof tokdir, "%s/tokenizers/llama3", shared);
    snprintf(corpus, sizeof corpus, "%s/corpora/austen.txt", shared);
    Tokenizer *tok = tokenizer_load(tokdir);
    char *prefix = tmp("austen");
    const char *files[1] = {corpus};
    size_t nt, nv;
    tokenize_files_to_shards(tok, files, 1, prefix, 0.1, 2, 0, &nt, &nv);
    // reference: each part encoded whole, single-threaded
    char *text, err[256];
    size_t len;
    CHECK(read_file_all(corpus, 1 << 26, &text, &len, err, sizeof err), "%s", err);
    size_t cut = len - (size_t)((double)len * 0.1);
    while (cut < len && text[cut - 1] != '\n') cut++;
    TokIds ref = {0};
    tokenizer_encode(tok, text, cut, TOK_ALLOW_SPECIAL | TOK_ADD_BOS, &ref);
    char *tp = tmp("austen_train.bin");
    Shard s;
    shard_open(&s, tp, tokenizer_vocab_size(tok));
    int same = s.count == ref.n && s.count == nt + 1 && s.docs == 1 && s.sep == 128000;
    for (uint64_t i = 0; same && i < s.count; i++) same = shard_token(&s, i) == (uint32_t)ref.ids[i];
    TEST_CHECK(same, "chunked multi-threaded shard equals whole-text encoding (%llu vs %zu tokens)",
               (unsigned long long)s.count, ref.n);
    shard_close(&s);
    char *vp = tmp("austen_val.bin");
    shard_open(&s, vp, tokenizer_vocab_size(tok));
    TEST_CHECK(s.count == nv + 1 && nv > 0, "val shard");
    shard_close(&s);
    tok_ids_free(&ref);
    free(text);
    free(tp);
    free(vp);
    free(prefix);
    tokenizer_free(tok);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "%s", test_tmpdir("loader"));
    test_shard_format();
    test_corrupt_shards();
    test_loader();
    test_bad_state();
    test_corpus_shards();
    return test_summary();
}
