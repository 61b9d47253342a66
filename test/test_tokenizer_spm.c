// Tokenizer tests, sentencepiece side (needs ../shared/data): the Llama 2 tokenizer.model, the
// three tokenizer.json forms transformers converts it to (rebuilt here from the model), and a
// copy with pieces marked unused. Fixtures from test/ref/tokenizer_fixtures.py.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/json.h"
#include "../data/tokenizer.h"
#include "../data/tokenizer_internal.h"
#include "test.h"
#include "tokenizer_checks.h"

// The model itself: ids, corpora, chunked shards, and a decode that drops the dummy prefix.
static void test_llama2_spm(const TokData *td) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tokenizers/llama2/tokenizer.model", td->shared);
    Tokenizer *l2 = tokenizer_load(dir);
    TEST_CHECK(tokenizer_vocab_size(l2) == 32000 && tokenizer_bos_id(l2) == 1 && tokenizer_eos_id(l2) == 2,
               "llama2 vocab/bos/eos");
    check_fixture(l2, td, "llama2_spm.json", 0, 0);
    check_corpus(l2, td, "austen", "llama2/austen", 0);
    check_corpus(l2, td, "brown", "llama2/brown", 0);
    check_shards_whole(l2, td->austen, "llama2_shard", 1);
    check_shards_whole(l2, td->tricky, "llama2_tricky", 1);
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

static void test_llama2_hf(const TokData *td) {
    char model[512];
    snprintf(model, sizeof model, "%s/tokenizers/llama2/tokenizer.model", td->shared);
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
        check_fixture(t, td, fix, TOK_ALLOW_SPECIAL, 1);
        if (strcmp(name, "legacy") == 0) {
            check_corpus(t, td, "austen", "llama2hf/austen", TOK_ALLOW_SPECIAL);
            check_corpus(t, td, "brown", "llama2hf/brown", TOK_ALLOW_SPECIAL);
        }
        check_shards_whole(t, td->austen, sub, 1);
        if (strcmp(name, "legacy") == 0) check_shards_whole(t, td->tricky, "llama2_hf_tricky", 1);
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

static void test_llama2_unused(const TokData *td) {
    char model[512], *buf;
    snprintf(model, sizeof model, "%s/tokenizers/llama2/tokenizer.model", td->shared);
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
    check_fixture(t, td, "llama2_unused.json", 0, 0);
    check_corpus(t, td, "austen", "llama2unused/austen", 0);
    check_corpus(t, td, "brown", "llama2unused/brown", 0);
    check_shards_whole(t, td->austen, "llama2_unused_shard", 0);
    tokenizer_free(t);
    free(path);
    json_free(&doc);
    free(buf);
}

int main(void) {
    TokData td;
    if (!tok_data_open(&td)) {
        test_skip("../shared/data absent: sentencepiece exactness tests");
        return test_summary();
    }
    test_llama2_spm(&td);
    test_llama2_hf(&td);
    test_llama2_unused(&td);
    tok_data_close(&td);
    return test_summary();
}
