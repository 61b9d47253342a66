// Deterministic mutation fuzzer for every parser of user files: JSON, config.json,
// safetensors, HF model directories (both loaders), GGUF (open, llama import, dequantize),
// tokenizers (tokenizer.json, tokenizer_config.json, tiktoken, sentencepiece, GPT-2
// encoder.json + vocab.bpe), token shards, loader state files and quantized model directories.
// Seeds come from test/fixtures (and ../shared/data when present); case i of a target is a
// pure function of (target, i, LLAMA_AO_FUZZ_SEED), so any failure replays alone.
//
// A case passes when the parser accepts (and the result passes a cheap sanity check: dims
// consistent, weights and logits finite, ids below the vocabulary) or rejects with a
// non-empty message. Each target runs in a forked child so that a crash, a sanitizer report
// or a hang (a case past LLAMA_AO_FUZZ_CASE_S seconds, default 2) fails that target alone;
// the mutant that did it is copied to /tmp/llama_ao_fuzz_<target>_<case> for a reproducer.
// The parent calls no library code: a child forked after OpenMP started could hang.
//
//   LLAMA_AO_FUZZ_ITERS=N   mutants per target (default 2000-6000 each, 39000 in all: ~20 s plain)
//   LLAMA_AO_FUZZ_ONLY=name run one target;  LLAMA_AO_FUZZ_CASE=i  run only case i: prints it and
//                           keeps its files in /tmp/llama_ao_fuzz_<target>_<i> (for a reproducer)
//   LLAMA_AO_FUZZ_SEED=s    another deterministic stream of mutants (campaigns)
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/json.h"
#include "../data/loader.h"
#include "../data/shard.h"
#include "../data/tokenizer.h"
#include "../model/config.h"
#include "../model/gguf.h"
#include "../model/infer_cpu.h"
#include "../model/model.h"
#include "../model/safetensors.h"
#include "../quant/qmodel.h"
#include "test.h"
#include "tokenizer_checks.h"

// ---- mutants ------------------------------------------------------------------------------
typedef struct {
    uint8_t *p;
    size_t n, cap;
} Buf;

static void buf_reserve(Buf *b, size_t n) {
    if (n <= b->cap) return;
    b->cap = n + n / 2 + 64;
    b->p = ao_realloc(b->p, b->cap);
}

static void buf_set(Buf *b, const void *p, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p, p, n);
    b->n = n;
}

// Replaces b[at, at + del) with ins[0, n_ins).
static void buf_splice(Buf *b, size_t at, size_t del, const void *ins, size_t n_ins) {
    if (at > b->n) at = b->n;
    if (del > b->n - at) del = b->n - at;
    buf_reserve(b, b->n - del + n_ins);
    memmove(b->p + at + n_ins, b->p + at + del, b->n - at - del);
    if (n_ins) memcpy(b->p + at, ins, n_ins);
    b->n = b->n - del + n_ins;
}

static uint64_t rnd(uint64_t *s, uint64_t n) { return n ? test_rand_u64(s) % n : 0; }

// An offset biased to the first `hot` bytes (headers, where the sizes live).
static size_t pick_off(uint64_t *s, size_t n, size_t hot) {
    if (n == 0) return 0;
    if (hot > n) hot = n;
    return rnd(s, 4) ? (size_t)rnd(s, hot ? hot : n) : (size_t)rnd(s, n);
}

static void mutate_binary(Buf *b, size_t hot, uint64_t *s, char *what, size_t wn) {
    static const uint8_t special[] = {0x00, 0xFF, 0x7F, 0x80};
    size_t n = b->n, at = pick_off(s, n, hot);
    switch (rnd(s, 7)) {
    case 0: {
        int k = 1 + (int)rnd(s, 3);
        for (int i = 0; i < k && n; i++) b->p[pick_off(s, n, hot)] ^= (uint8_t)(1u << rnd(s, 8));
        snprintf(what, wn, "%d bit flips", k);
        break;
    }
    case 1:
        if (n) b->p[at] = special[rnd(s, 4)];
        snprintf(what, wn, "byte %zu set to 0x%02x", at, n ? b->p[at] : 0);
        break;
    case 2: {  // truncation inside the header, one byte either side of it, or anywhere
        size_t cut = rnd(s, 3) == 0 ? (hot + rnd(s, 3) + n - 1) % (n + 1) : at;
        b->n = cut < n ? cut : n;
        snprintf(what, wn, "truncated to %zu bytes", b->n);
        break;
    }
    case 3: {  // a length / count field set to an edge value
        static const uint64_t vals[] = {0, 1, 0x7F, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000ull,
                                        0x7FFFFFFFFFFFFFFFull, 0x8000000000000000ull, UINT64_MAX, 1ull << 40};
        int w = rnd(s, 2) ? 8 : 4;
        at &= ~(size_t)(rnd(s, 2) ? 3 : 0);
        if (at + (size_t)w > n) break;
        uint64_t v = 0;
        memcpy(&v, b->p + at, (size_t)w);
        int r = (int)rnd(s, 16);
        v = r < 12 ? vals[r] : r == 12 ? v + 1 : r == 13 ? v - 1 : r == 14 ? (uint64_t)n : v * 2;
        if (w == 4) v = (uint32_t)v;
        memcpy(b->p + at, &v, (size_t)w);
        snprintf(what, wn, "u%d at %zu set to %llu", w * 8, at, (unsigned long long)v);
        break;
    }
    case 4: {  // a chunk duplicated in place
        size_t len = 1 + (size_t)rnd(s, 64);
        if (at + len > n) len = n - at;
        uint8_t tmp[64];
        memcpy(tmp, b->p + at, len);
        buf_splice(b, at, 0, tmp, len);
        snprintf(what, wn, "%zu bytes at %zu duplicated", len, at);
        break;
    }
    case 5: {
        size_t len = 1 + (size_t)rnd(s, 64);
        buf_splice(b, at, len, NULL, 0);
        snprintf(what, wn, "%zu bytes at %zu removed", len, at);
        break;
    }
    default: {
        int k = 1 + (int)rnd(s, 16);
        for (int i = 0; i < k && n; i++) b->p[pick_off(s, n, hot)] = (uint8_t)rnd(s, 256);
        snprintf(what, wn, "%d random bytes", k);
    }
    }
}

// Start of a random number literal (after one of ":,[ "), or n when there is none.
static size_t find_number(const Buf *b, uint64_t *s) {
    size_t start = (size_t)rnd(s, b->n);
    for (size_t k = 0; k < b->n; k++) {
        size_t i = (start + k) % b->n;
        if (i > 0 && strchr(":,[ \n", b->p[i - 1]) && (b->p[i] == '-' || (b->p[i] >= '0' && b->p[i] <= '9')))
            return i;
    }
    return b->n;
}

static void mutate_text(Buf *b, uint64_t *s, char *what, size_t wn) {
    static const char *numbers[] = {"1e999", "-1", "0", "99999999999999999999999", "2147483648", "4294967296",
                                    "-2147483649", "1.5", "1e-400", "-0", "18446744073709551616", "NaN", "0.0",
                                    "-1e999", "65536", "1e308"};
    static const char *strings[] = {"\"\"", "\"\\u0000\"", "\"\\ud800\"", "\"\xff\"", "\"a b\"", "\" \"", "null",
                                    "true", "[]", "{}", "\"<|x|>\"", "\"\\u0120\\u0120\""};
    size_t n = b->n, at = n ? (size_t)rnd(s, n) : 0;
    switch (rnd(s, 8)) {
    case 0: {  // a structural character deleted
        for (size_t k = 0; k < n; k++) {
            size_t i = (at + k) % n;
            if (strchr("\"{}[]:,", b->p[i])) { at = i; break; }
        }
        if (n) buf_splice(b, at, 1, NULL, 0);
        snprintf(what, wn, "character at %zu deleted", at);
        break;
    }
    case 1: {
        char c = "\"{}[]:,\\"[rnd(s, 8)];
        buf_splice(b, at, 0, &c, 1);
        snprintf(what, wn, "'%c' inserted at %zu", c, at);
        break;
    }
    case 2: {  // a number replaced by an edge value
        size_t i = find_number(b, s), e = i;
        while (e < n && strchr("-+.eE0123456789", b->p[e])) e++;
        const char *v = numbers[rnd(s, sizeof numbers / sizeof *numbers)];
        buf_splice(b, i, e - i, v, strlen(v));
        snprintf(what, wn, "number at %zu set to %s", i, v);
        break;
    }
    case 3: {  // a value (number or string) replaced by another kind
        size_t i = n;
        for (size_t k = 0; k < n; k++) {
            size_t j = (at + k) % n;
            if (b->p[j] == ':' || (b->p[j] == ',' && j + 1 < n && b->p[j + 1] == '"')) { i = j + 1; break; }
        }
        while (i < n && b->p[i] == ' ') i++;
        size_t e = i;
        if (e < n && b->p[e] == '"') {
            e++;
            while (e < n && b->p[e] != '"') e += b->p[e] == '\\' ? 2 : 1;
            e = e < n ? e + 1 : n;
        } else
            while (e < n && !strchr(",}]", b->p[e])) e++;
        const char *v = strings[rnd(s, sizeof strings / sizeof *strings)];
        buf_splice(b, i, e - i, v, strlen(v));
        snprintf(what, wn, "value at %zu set to %s", i, v);
        break;
    }
    case 4: {  // deep nesting where a value starts
        size_t depth = rnd(s, 2) ? 127 + rnd(s, 3) : 5000;
        Buf t = {0};
        buf_reserve(&t, 2 * depth);
        memset(t.p, '[', depth);
        memset(t.p + depth, ']', depth);
        size_t i = at;
        for (size_t k = 0; k < n; k++)
            if (b->p[(at + k) % n] == ':') { i = (at + k) % n + 1; break; }
        buf_splice(b, i, 0, t.p, 2 * depth);
        free(t.p);
        snprintf(what, wn, "%zu-deep nesting at %zu", depth, i);
        break;
    }
    case 5: {  // a line (or segment) duplicated or removed
        size_t e = at;
        while (e < n && b->p[e] != '\n' && b->p[e] != ',') e++;
        if (e < n) e++;
        if (rnd(s, 2)) {
            Buf t = {0};
            buf_set(&t, b->p + at, e - at);
            buf_splice(b, e, 0, t.p, t.n);
            free(t.p);
            snprintf(what, wn, "segment [%zu, %zu) duplicated", at, e);
        } else {
            buf_splice(b, at, e - at, NULL, 0);
            snprintf(what, wn, "segment [%zu, %zu) removed", at, e);
        }
        break;
    }
    default:
        mutate_binary(b, n, s, what, wn);
    }
}

// ---- targets ------------------------------------------------------------------------------
typedef struct {
    char *path;       // the file a mutant replaces (inside the work directory)
    char *load;       // what the parser is handed (that file or its directory)
    Buf orig;
    size_t hot;       // header bytes (mutations prefer them)
    int text;
    int st;           // safetensors: half the mutants edit the JSON header as text, length kept right
} Seed;

typedef struct {
    const char *work;  // this target's private directory
    Seed seeds[16];
    int n;
    char aux[512];     // target-specific (a shard path for the loader)
} Seeds;

// Result of one call: 1 accepted, 0 rejected (err holds the message); an accepted result
// that fails its sanity check writes why into bad.
typedef int (*RunFn)(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen);

typedef struct {
    const char *name;
    void (*setup)(Seeds *ss);
    RunFn run;
    int iters;     // default mutants
    int longjmps;  // fails through CHECK: what it allocated before failing is leaked by design
} Target;

static uint8_t *slurp(const char *path, size_t *n) {
    char *p, err[512];
    if (!read_file_all(path, (size_t)1 << 30, &p, n, err, sizeof err)) return NULL;
    return (uint8_t *)p;
}

static void put_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(p, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

// Copies src into the work directory as name (under sub, created) and returns its seed.
static Seed *add_seed(Seeds *ss, const char *src, const char *sub, const char *name, int text, int load_dir) {
    size_t n;
    uint8_t *p = slurp(src, &n);
    if (!p) return NULL;
    char *dir = path_join(ss->work, sub);
    make_dirs(dir);
    CHECK(ss->n < (int)(sizeof ss->seeds / sizeof *ss->seeds), "too many fuzz seeds");
    Seed *sd = &ss->seeds[ss->n++];
    memset(sd, 0, sizeof *sd);
    sd->path = path_join(dir, name);
    sd->load = load_dir ? dir : ao_strdup(sd->path);
    if (!load_dir) free(dir);
    buf_set(&sd->orig, p, n);
    free(p);
    put_file(sd->path, sd->orig.p, sd->orig.n);
    sd->text = text;
    sd->hot = n;
    return sd;
}

static Seed *add_seed_mem(Seeds *ss, const char *text, const char *sub, const char *name, int load_dir) {
    char *tmp = path_join(ss->work, ".seed");
    put_file(tmp, text, strlen(text));
    Seed *sd = add_seed(ss, tmp, sub, name, 1, load_dir);
    unlink(tmp);
    free(tmp);
    return sd;
}

static char *fixture(const char *rel) {
    char *p = ao_malloc(strlen(test_dir()) + strlen(rel) + 16);
    sprintf(p, "%s/fixtures/%s", test_dir(), rel);
    return p;
}

static void add_fixture(Seeds *ss, const char *rel, const char *sub, const char *name, int text, int load_dir) {
    char *p = fixture(rel);
    Seed *sd = add_seed(ss, p, sub, name, text, load_dir);
    CHECK(sd, "fuzz seed %s is missing", p);
    free(p);
}

// safetensors: the header is 8 bytes of length + JSON.
static void st_hot(Seed *sd) {
    uint64_t h = 0;
    if (sd->orig.n >= 8) memcpy(&h, sd->orig.p, 8);
    sd->hot = h + 8 < sd->orig.n ? (size_t)h + 8 : sd->orig.n;
    sd->st = sd->hot > 8;
}

// Header text mutation of a safetensors file: the length prefix follows the new header.
static void mutate_st_header(Buf *b, size_t hot, uint64_t *s, char *what, size_t wn) {
    Buf h = {0};
    buf_set(&h, b->p + 8, hot - 8);
    mutate_text(&h, s, what, wn);
    uint64_t n = h.n;
    buf_splice(b, 8, hot - 8, h.p, h.n);
    memcpy(b->p, &n, 8);
    free(h.p);
    size_t k = strlen(what);
    snprintf(what + k, wn - k, " (header)");
}

// Checks every parameter is finite and the config still validates (loaders promise both).
static int model_sane(const LlamaModel *m, char *bad, size_t badlen) {
    char e[512];
    if (!config_validate(&m->cfg, e, sizeof e)) return snprintf(bad, badlen, "accepted an invalid config: %s", e), 0;
    for (size_t i = 0; i < m->tab.total; i++)
        if (!isfinite(m->params[i])) return snprintf(bad, badlen, "parameter %zu is %g", i, m->params[i]), 0;
    return 1;
}

// Largest magnitude in the float tensors of a file: finite but huge weights or scales (a
// flipped exponent bit) may overflow to NaN logits; such a file is valid, its numbers are not.
static float st_max_abs(const SafeTensors *st) {
    float m = 0;
    for (int i = 0; i < st->n; i++) {
        const StTensor *t = &st->tensors[i];
        if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) continue;
        float *x = ao_malloc(t->numel * sizeof(float) + 1);
        st_to_f32(t, x);
        for (size_t j = 0; j < t->numel; j++) m = fmaxf(m, fabsf(x[j]));
        free(x);
    }
    return m;
}

// One token through an inference model: logits must be finite.
static int infer_sane(const InferModel *im, char *bad, size_t badlen) {
    InferState st;
    infer_state_init(&st, im, 2, 1);
    int32_t tok = im->cfg.vocab_size > 1 ? 1 : 0;
    const float *lg = infer_forward(im, &st, &tok, 1, 0);
    int ok = 1;
    for (int i = 0; i < im->cfg.vocab_size && ok; i++)
        if (!isfinite(lg[i])) ok = 0, snprintf(bad, badlen, "logit %d is %g", i, lg[i]);
    infer_state_free(&st);
    return ok;
}

// Encoding and decoding a text with every kind of piece must give ids in the vocabulary.
static void tok_sane(const Tokenizer *t, char *bad, size_t badlen) {
    static const char text[] = "abc ab<|end|>cab <s>\xc3\xa9 A \xe2\x96\x81 x\n\n  9 \xff";
    TokIds v = {0};
    tokenizer_encode(t, text, sizeof text - 1, TOK_ALLOW_SPECIAL, &v);
    int32_t V = tokenizer_vocab_size(t);
    for (size_t i = 0; i < v.n; i++)
        if (v.ids[i] < 0 || v.ids[i] >= V) { snprintf(bad, badlen, "encode gave id %d, vocab %d", v.ids[i], V); break; }
    if (!bad[0]) {
        size_t len;
        free(tokenizer_decode(t, v.ids, v.n, 0, &len));
    }
    tok_ids_free(&v);
}

// CHECK-based parsers fail through ao_fail: the handler jumps back here with the message.
static jmp_buf g_jmp;
static char g_msg[1024];
static void fuzz_fail_handler(const char *msg) {
    snprintf(g_msg, sizeof g_msg, "%s", msg);
    longjmp(g_jmp, 1);
}
// Arms the handler in a target: a CHECK failure in the calls that follow lands here, and the target
// returns 0 with the message in err. A macro, because setjmp must run in the target's own frame.
#define FUZZ_CATCH(err, errlen)                 \
    do {                                        \
        ao_set_fail_handler(fuzz_fail_handler); \
        if (setjmp(g_jmp)) {                    \
            ao_set_fail_handler(NULL);          \
            snprintf(err, errlen, "%s", g_msg); \
            return 0;                           \
        }                                       \
    } while (0)

// json: in memory
static void setup_json(Seeds *ss) {
    add_fixture(ss, "configs/llama31_8b.json", "j", "a.json", 1, 0);
    add_fixture(ss, "configs/qwen25_05b.json", "j", "b.json", 1, 0);
    add_fixture(ss, "tokenizer/texts.json", "j", "c.json", 1, 0);
    add_fixture(ss, "infer/smollm2_greedy.json", "j", "d.json", 1, 0);
}
static int run_json(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    (void)ss, (void)bad, (void)badlen;
    size_t n;
    uint8_t *p = slurp(sd->path, &n);
    JsonDoc d;
    int ok = json_parse((const char *)p, n, &d, err, errlen);
    if (ok) json_free(&d);
    free(p);
    return ok;
}

static void setup_config(Seeds *ss) {
    const char *c[] = {"configs/llama2_7b.json", "configs/llama31_8b.json", "configs/llama32_1b_v5.json",
                       "configs/qwen25_05b.json", "configs/smollm2_135m.json", "llama3/config.json"};
    for (int i = 0; i < 6; i++) add_fixture(ss, c[i], "c", c[i] + strcspn(c[i], "/") + 1, 1, 0);
}
static int run_config(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    (void)ss;
    LlamaConfig c;
    if (!config_load(&c, sd->load, err, errlen)) return 0;
    char e[512];
    if (!config_validate(&c, e, sizeof e)) snprintf(bad, badlen, "config_load accepted what config_validate refuses: %s", e);
    else if (c.head_dim * c.n_heads <= 0 || c.n_heads % c.n_kv_heads || config_num_params(&c) == 0)
        snprintf(bad, badlen, "inconsistent dims: heads %d kv %d head_dim %d", c.n_heads, c.n_kv_heads, c.head_dim);
    return 1;
}

static void setup_st(Seeds *ss) {
    const char *f[] = {"llama3/trajectory.safetensors", "llama3/model.safetensors", "fp8/torchao.safetensors"};
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "s%d.safetensors", i);
        add_fixture(ss, f[i], "s", name, 0, 0);
        st_hot(&ss->seeds[ss->n - 1]);
    }
    // a sharded directory: its index is the mutant (both shards stay valid)
    char *dir = path_join(ss->work, "sharded"), err[512];
    make_dirs(dir);
    float a[6] = {1, 2, 3, 4, 5, 6};
    StWriteTensor t[2] = {{"x.a", ST_F32, 2, {2, 3}, a}, {"y", ST_F32, 1, {6}, a}};
    const char *names[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    for (int i = 0; i < 2; i++) {
        char *p = path_join(dir, names[i]);
        CHECK(st_write(p, t + i, 1, NULL, NULL, 0, err, sizeof err), "fuzz seed: %s", err);
        free(p);
    }
    free(dir);
    add_seed_mem(ss, "{\"metadata\": {\"total_size\": 48}, \"weight_map\": {\"x.a\": "
                 "\"model-00001-of-00002.safetensors\", \"y\": \"model-00002-of-00002.safetensors\"}}",
                 "sharded", "model.safetensors.index.json", 1);
}
static int run_st(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    (void)ss;
    SafeTensors st;
    if (!(sd->text ? st_open_model : st_open)(&st, sd->load, err, errlen)) return 0;
    for (int i = 0; i < st.n; i++) {
        const StTensor *t = &st.tensors[i];
        const MappedFile *mf = t->file >= 0 && t->file < st.n_files ? &st.files[t->file] : NULL;
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        const uint8_t *p = t->data;
        if (t->ndim < 0 || t->ndim > ST_MAX_DIMS || numel != t->numel || t->nbytes != numel * st_dtype_size(t->dtype) ||
            !mf || p < mf->data || p + t->nbytes > mf->data + mf->size) {
            snprintf(bad, badlen, "tensor %s: ndim %d numel %zu nbytes %zu outside or inconsistent", t->name, t->ndim,
                     t->numel, t->nbytes);
            break;
        }
    }
    st_close(&st);
    return 1;
}

// HF model directories: config.json or model.safetensors mutated; both loaders must agree.
static void setup_model(Seeds *ss) {
    add_fixture(ss, "llama3/config.json", "llama3", "config.json", 1, 1);
    add_fixture(ss, "llama3/model.safetensors", "llama3", "model.safetensors", 0, 1);
    st_hot(&ss->seeds[1]);
    add_fixture(ss, "qwen2/config.json", "qwen2", "config.json", 1, 1);
    add_fixture(ss, "qwen2/model.safetensors", "qwen2", "model.safetensors", 0, 1);
    st_hot(&ss->seeds[3]);
}
static int run_model(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    (void)ss;
    LlamaModel m;
    int ok = model_load_hf(&m, sd->load, err, errlen);
    float wmax = 0;  // finite but huge weights (a flipped exponent bit) may overflow: a valid file, bad numbers
    if (ok) {
        model_sane(&m, bad, badlen);
        for (size_t i = 0; i < m.tab.total; i++) wmax = fmaxf(wmax, fabsf(m.params[i]));
        model_free(&m);
    }
    InferModel im;
    char err2[1024] = "";
    int ok2 = infer_model_load_hf(&im, sd->load, QUANT_NONE, 0, err2, sizeof err2);
    if (ok2) {
        if (!bad[0] && wmax < 1e4f) infer_sane(&im, bad, badlen);
        infer_model_free(&im);
    }
    if (!bad[0] && (ok2 != ok || (!ok && strcmp(err, err2))))
        snprintf(bad, badlen, "model_load_hf %s \"%s\", infer_model_load_hf %s \"%s\"", ok ? "accepts" : "says", err,
                 ok2 ? "accepts" : "says", err2);
    return ok;
}

static void gguf_hot(Seed *sd) {
    GgufFile g;
    char err[512];
    CHECK(gguf_open(&g, sd->path, err, sizeof err), "fuzz seed: %s", err);
    sd->hot = (size_t)(g.data - g.mf.data);
    gguf_close(&g);
}
static void gguf_seed(Seeds *ss, const char *rel, const char *name) {
    add_fixture(ss, rel, "g", name, 0, 0);
    gguf_hot(&ss->seeds[ss->n - 1]);
}
static void gguf_seed_file(Seeds *ss, const char *path, const char *name) {
    gguf_hot(add_seed(ss, path, "g", name, 0, 0));
}
// GGUF encoding pieces (little-endian; strings are a u64 length and the bytes).
static void put_u32(Buf *b, uint32_t v) { buf_splice(b, b->n, 0, &v, 4); }
static void put_u64(Buf *b, uint64_t v) { buf_splice(b, b->n, 0, &v, 8); }
static void put_str(Buf *b, const char *s, size_t n) { put_u64(b, n), buf_splice(b, b->n, 0, s, n); }
static void put_key(Buf *b, const char *key, GgufType type) { put_str(b, key, strlen(key)), put_u32(b, (uint32_t)type); }
static void put_arr(Buf *b, const char *key, GgufType et, uint64_t n) {
    put_key(b, key, GGUF_T_ARRAY), put_u32(b, (uint32_t)et), put_u64(b, n);
}

// GPT-2's byte-to-unicode spelling of byte c, UTF-8 encoded into out; returns the length.
static int bytelevel(int c, char *out) {
    int cp = c, k = 0;
    if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) {
        for (int x = 0; x < c; x++) k += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
        cp = 256 + k;
    }
    if (cp < 0x80) return out[0] = (char)cp, 1;
    out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

// The llama fixture with tokenizer.ggml.* added (it has none): spm = 0 a byte-level BPE
// ("gpt2": 256 byte tokens, merges, one control token), 1 a sentencepiece one ("llama":
// <unk> <s> </s>, 256 <0xNN> byte pieces and scored pieces). New keys go after the old
// ones; tensor infos follow, padded again to the alignment, then the data unchanged.
static void gguf_add_tokenizer(const GgufFile *g, int spm, Buf *out) {
    const uint8_t *base = g->mf.data;
    const GgufTensor *last = &g->tensors[g->n_tensors - 1];
    size_t kv_end = (size_t)((const uint8_t *)g->tensors[0].name.p - 8 - base);
    size_t hdr_end = (size_t)((const uint8_t *)last->name.p + last->name.n + 4 + 8 * last->ndim + 4 + 8 - base);
    Buf kv = {0};
    static const char *pieces[] = {"\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab"};
    static const char *merges[] = {"a b", "ab c", "\xC4\xA0 a"};  // Ġ is byte-level space
    uint64_t nt = spm ? 3 + 256 + 5 : 256 + 4;
    put_key(&kv, "tokenizer.ggml.model", GGUF_T_STRING);
    put_str(&kv, spm ? "llama" : "gpt2", spm ? 5 : 4);
    put_arr(&kv, "tokenizer.ggml.tokens", GGUF_T_STRING, nt);
    char tmp[16];
    if (spm) {
        put_str(&kv, "<unk>", 5), put_str(&kv, "<s>", 3), put_str(&kv, "</s>", 4);
        for (int c = 0; c < 256; c++) snprintf(tmp, sizeof tmp, "<0x%02X>", c), put_str(&kv, tmp, 6);
        for (int i = 0; i < 5; i++) put_str(&kv, pieces[i], strlen(pieces[i]));
    } else {
        for (int c = 0; c < 256; c++) put_str(&kv, tmp, (size_t)bytelevel(c, tmp));
        put_str(&kv, "ab", 2), put_str(&kv, "abc", 3), put_str(&kv, "\xC4\xA0" "a", 3), put_str(&kv, "<|end|>", 7);
    }
    put_arr(&kv, "tokenizer.ggml.token_type", GGUF_T_I32, nt);
    for (uint64_t i = 0; i < nt; i++)
        put_u32(&kv, spm ? (i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1) : i == nt - 1 ? 3 : 1);
    if (spm) {
        put_arr(&kv, "tokenizer.ggml.scores", GGUF_T_F32, nt);
        for (uint64_t i = 0; i < nt; i++) {
            float f = i < 259 ? 0.0f : -(float)(i - 258);
            uint32_t u;
            memcpy(&u, &f, 4);
            put_u32(&kv, u);
        }
    } else {
        put_key(&kv, "tokenizer.ggml.pre", GGUF_T_STRING), put_str(&kv, "llama-bpe", 9);
        put_arr(&kv, "tokenizer.ggml.merges", GGUF_T_STRING, 3);
        for (int i = 0; i < 3; i++) put_str(&kv, merges[i], strlen(merges[i]));
    }
    put_key(&kv, "tokenizer.ggml.bos_token_id", GGUF_T_U32), put_u32(&kv, spm ? 1 : 259);
    put_key(&kv, "tokenizer.ggml.add_bos_token", GGUF_T_BOOL), buf_splice(&kv, kv.n, 0, "\1", 1);
    put_key(&kv, "tokenizer.chat_template", GGUF_T_STRING), put_str(&kv, "{{ x }}", 7);
    int n_new = spm ? 7 : 8;
    out->n = 0;
    buf_splice(out, 0, 0, base, kv_end);
    uint64_t n_kv = g->n_kv + (uint64_t)n_new;
    memcpy(out->p + 16, &n_kv, 8);
    buf_splice(out, out->n, 0, kv.p, kv.n);
    buf_splice(out, out->n, 0, base + kv_end, hdr_end - kv_end);
    while (out->n % g->alignment) buf_splice(out, out->n, 0, "", 1);
    buf_splice(out, out->n, 0, g->data, g->mf.size - (size_t)(g->data - base));
    free(kv.p);
}

static void setup_gguf(Seeds *ss) {
    gguf_seed(ss, "gguf/llama3_f32.gguf", "a.gguf");
    gguf_seed(ss, "gguf/quants.gguf", "b.gguf");
    for (int spm = 0; spm < 2; spm++) {
        GgufFile g;
        char err[512];
        CHECK(gguf_open(&g, ss->seeds[0].path, err, sizeof err), "fuzz seed: %s", err);
        Buf b = {0};
        gguf_add_tokenizer(&g, spm, &b);
        gguf_close(&g);
        char *tmp = path_join(ss->work, ".gguf");
        put_file(tmp, b.p, b.n);
        free(b.p);
        gguf_seed_file(ss, tmp, spm ? "d.gguf" : "c.gguf");
        unlink(tmp);
        free(tmp);
    }
}
static int run_gguf(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    (void)ss;
    GgufFile g;
    if (!gguf_open(&g, sd->load, err, errlen)) return 0;
    int is_llama = gguf_find_tensor(&g, "token_embd.weight") != NULL, has_tok = gguf_find(&g, "tokenizer.ggml.model") != NULL;
    for (uint64_t i = 0; i < g.n_tensors && !is_llama; i++) {  // the quants seed: dequantize each
        const GgufTensor *t = &g.tensors[i];
        size_t numel = (size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        float *out = ao_malloc(numel * sizeof(float) + 1);
        char e[256];
        gguf_dequantize(t, out, e, sizeof e);
        free(out);
    }
    gguf_close(&g);
    if (!is_llama) return 1;
    LlamaModel m;
    FUZZ_CATCH(err, errlen);
    Tokenizer *tok = NULL;
    char *tmpl = NULL;
    gguf_load_llama(sd->load, &m, has_tok ? &tok : NULL, &tmpl);
    ao_set_fail_handler(NULL);
    model_sane(&m, bad, badlen);
    model_free(&m);
    if (tok && !bad[0]) tok_sane(tok, bad, badlen);
    tokenizer_free(tok);
    free(tmpl);
    return 1;
}

// Tokenizers: tiny hand-written forms of every format, plus the real Llama 2 sentencepiece
// model cut to its first pieces when ../shared/data is there.
static const char *TINY_CONFIG =
    "{\"bos_token\":\"<pad>\",\"eos_token\":{\"content\":\"<|end|>\"},\"add_bos_token\":true,\"add_eos_token\":false,"
    "\"chat_template\":\"x\"}";
// sentencepiece-style BPE in tokenizer.json (Metaspace, byte fallback)
static const char *TINY_SPM_JSON =
    "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":1,\"content\":\"<s>\",\"special\":true,\"single_word\":false,"
    "\"lstrip\":false,\"rstrip\":false,\"normalized\":false}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},\"pre_tokenizer\":null,"
    "\"post_processor\":null,\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
    "{\"String\":\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\","
    "\"content\":\" \",\"start\":1,\"stop\":0}]},\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{"
    "\"<unk>\":0,\"<s>\":1,\"<0x41>\":2,\"\\u2581\":3,\"a\":4,\"b\":5,\"\\u2581a\":6,\"ab\":7},"
    "\"merges\":[\"\\u2581 a\",\"a b\"]}}";
// A sentencepiece BPE tokenizer.model written by hand (protobuf): <unk> <s> </s>, scored
// pieces, trainer_spec model_type 2 (BPE), identity normalizer.
static const char TINY_SPM[] =
    "\x0a\x0e\x0a\x05<unk>\x15\x00\x00\x00\x00\x18\x02\x0a\x0c\x0a\x03<s>\x15\x00\x00\x00\x00\x18\x03"
    "\x0a\x0d\x0a\x04</s>\x15\x00\x00\x00\x00\x18\x03\x0a\x0c\x0a\x03\xe2\x96\x81\x15\x00\x00\x80\xbf\x18\x01"
    "\x0a\x0a\x0a\x01" "a\x15\x00\x00\x00\xc0\x18\x01\x0a\x0a\x0a\x01" "b\x15\x00\x00\x40\xc0\x18\x01"
    "\x0a\x0b\x0a\x02" "ab\x15\x00\x00\x80\xc0\x18\x01\x0a\x0d\x0a\x04\xe2\x96\x81" "a\x15\x00\x00\xa0\xc0\x18\x01"
    "\x0a\x0e\x0a\x05\xe2\x96\x81" "ab\x15\x00\x00\xc0\xc0\x18\x01\x12\x02\x18\x02\x1a\x0a\x0a\x08identity";
static const char *TINY_ENCODER = "{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"ab\":4,\"abc\":5}";
static const char *TINY_VOCAB_BPE = "#version: 0.2\na b\nab c\n";

// The Llama 2 tokenizer.model with only its first 300 pieces (bytes and a few merges): a
// small real protobuf. Returns 0 when ../shared/data is absent.
static int spm_seed(Seeds *ss) {
    const char *sh = shared_data_dir();
    if (!sh) return 0;
    char src[1024];
    snprintf(src, sizeof src, "%s/tokenizers/llama2/tokenizer.model", sh);
    size_t n;
    uint8_t *p = slurp(src, &n);
    if (!p) return 0;
    Buf out = {0};
    buf_reserve(&out, n);
    size_t i = 0;
    int pieces = 0;
    while (i < n) {  // top-level fields: 1 = piece (kept while < 300), the specs kept
        size_t f0 = i;
        uint64_t key = 0, len = 0;
        for (int sh7 = 0; i < n; sh7 += 7) { key |= (uint64_t)(p[i] & 0x7F) << sh7; if (!(p[i++] & 0x80)) break; }
        if ((key & 7) != 2) break;
        for (int sh7 = 0; i < n; sh7 += 7) { len |= (uint64_t)(p[i] & 0x7F) << sh7; if (!(p[i++] & 0x80)) break; }
        if (len > n - i) break;
        i += len;
        if ((key >> 3) != 1 || pieces++ < 300) memcpy(out.p + out.n, p + f0, i - f0), out.n += i - f0;
    }
    free(p);
    char *tmp = path_join(ss->work, ".spm");
    put_file(tmp, out.p, out.n);
    free(out.p);
    Seed *sd = add_seed(ss, tmp, "spm", "tokenizer.model", 0, 0);
    sd->hot = 4096;
    unlink(tmp);
    free(tmp);
    return 1;
}

static void setup_tok(Seeds *ss) {
    add_seed_mem(ss, TOKENIZER_TINY_BPE, "bpe", "tokenizer.json", 1);
    add_seed_mem(ss, TINY_CONFIG, "bpe", "tokenizer_config.json", 1);
    add_seed_mem(ss, TINY_SPM_JSON, "spmjson", "tokenizer.json", 0);
    // tiktoken: the 256 single bytes (base64 "xy==") ranked by value, then "ab" and "abc"
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char tik[256 * 12 + 32];
    size_t k = 0;
    for (int c = 0; c < 256; c++) k += (size_t)sprintf(tik + k, "%c%c== %d\n", b64[c >> 2], b64[(c & 3) << 4], c);
    sprintf(tik + k, "YWI= 256\nYWJj 257\n");
    add_seed_mem(ss, tik, "tiktoken", "tokenizer.model", 0);
    add_seed_mem(ss, TINY_ENCODER, "gpt2", "encoder.json", 1);
    add_seed_mem(ss, TINY_VOCAB_BPE, "gpt2", "vocab.bpe", 1);
    char *tmp = path_join(ss->work, ".spm");
    put_file(tmp, TINY_SPM, sizeof TINY_SPM - 1);
    add_seed(ss, tmp, "spmtiny", "tokenizer.model", 0, 0);
    unlink(tmp);
    free(tmp);
    spm_seed(ss);
}
static int run_tok(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    (void)ss;
    FUZZ_CATCH(err, errlen);
    Tokenizer *t = tokenizer_load(sd->load);
    ao_set_fail_handler(NULL);
    tok_sane(t, bad, badlen);
    tokenizer_free(t);
    return 1;
}

// Token shards and loader state files.
static const int32_t SHARD_VOCAB = 300;
static void setup_shard(Seeds *ss) {
    char *path = path_join(ss->work, ".shard");
    ShardWriter w;
    shard_writer_open(&w, path, SHARD_VOCAB, 299);
    int32_t ids[50];
    for (int d = 0; d < 3; d++) {
        for (int i = 0; i < 50; i++) ids[i] = (i * 37 + d * 11) % 299;
        shard_writer_doc(&w, ids, 50);
    }
    shard_writer_close(&w);
    Seed *sd = add_seed(ss, path, "shard", "a.bin", 0, 0);
    sd->hot = SHARD_HEADER_BYTES;
    // a 4-byte-wide shard too
    shard_writer_open(&w, path, 70000, -1);
    for (int i = 0; i < 50; i++) ids[i] = i * 1399;
    shard_writer_doc(&w, ids, 50);
    shard_writer_close(&w);
    sd = add_seed(ss, path, "shard", "b.bin", 0, 0);
    sd->hot = SHARD_HEADER_BYTES;
    unlink(path);
    free(path);
}
static int run_shard(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    (void)ss;
    int32_t vocab = sd == &ss->seeds[0] ? SHARD_VOCAB : 70000;
    Shard s;
    FUZZ_CATCH(err, errlen);
    shard_open(&s, sd->load, vocab);
    ao_set_fail_handler(NULL);
    if (s.count * s.width + SHARD_HEADER_BYTES != s.mf.size)
        snprintf(bad, badlen, "count %llu x width %u does not fill the file", (unsigned long long)s.count, s.width);
    for (uint64_t i = 0; i < s.count && !bad[0]; i++)
        if (shard_token(&s, i) >= s.vocab || s.vocab > (uint32_t)vocab)
            snprintf(bad, badlen, "token %llu = %u, vocab %u", (unsigned long long)i, shard_token(&s, i), s.vocab);
    shard_close(&s);
    return 1;
}

static void setup_loader(Seeds *ss) {
    setup_shard(ss);
    ss->n = 0;  // the 2-byte shard feeds the loader unchanged; its state file is what gets mutated
    snprintf(ss->aux, sizeof ss->aux, "%s", ss->seeds[0].path);
    DataLoader dl;
    const char *paths[] = {ss->aux};
    loader_init(&dl, paths, 1, SHARD_VOCAB, 2, 8, 0, 1, 7, 1);
    int32_t in[16], tg[16];
    for (int i = 0; i < 5; i++) loader_next(&dl, in, tg);
    char *st = path_join(ss->work, ".state");
    loader_save_state(&dl, st);
    loader_free(&dl);
    Seed *sd = add_seed(ss, st, "state", "loader.state", 0, 0);
    sd->hot = 64;
    unlink(st);
    free(st);
}
static int run_loader(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    DataLoader dl;
    const char *paths[] = {ss->aux};
    loader_init(&dl, paths, 1, SHARD_VOCAB, 2, 8, 0, 1, 7, 1);
    FUZZ_CATCH(err, errlen);
    loader_load_state(&dl, sd->load);
    int32_t in[16], tg[16];
    for (int i = 0; i < 20 && !bad[0]; i++) {
        loader_next(&dl, in, tg);
        for (int k = 0; k < 16; k++)
            if (in[k] < 0 || in[k] >= SHARD_VOCAB || tg[k] < 0 || tg[k] >= SHARD_VOCAB)
                snprintf(bad, badlen, "batch %d: token %d / %d", i, in[k], tg[k]);
    }
    ao_set_fail_handler(NULL);
    loader_free(&dl);
    return 1;
}

// Quantized model directories (infer_llama -o): written from the llama3 fixture, int8 and int4.
static void setup_qmodel(Seeds *ss) {
    char *src = fixture("llama3");
    for (int m = 0; m < 2; m++) {
        InferModel im;
        char err[1024];
        CHECK(infer_model_load_hf(&im, src, m ? QUANT_INT4 : QUANT_INT8, 32, err, sizeof err), "fuzz seed: %s", err);
        char sub[32], *dir, *cfg, *st;
        snprintf(sub, sizeof sub, "q%d", m);
        dir = path_join(ss->work, sub);
        qmodel_save(&im, NULL, dir);
        infer_model_free(&im);
        cfg = path_join(dir, "config.json");
        st = path_join(dir, "model.safetensors");
        snprintf(sub, sizeof sub, "q%d_in", m);
        add_seed(ss, cfg, sub, "config.json", 1, 1);
        Seed *sd = add_seed(ss, st, sub, "model.safetensors", 0, 1);
        st_hot(sd);
        free(dir), free(cfg), free(st);
    }
    free(src);
}
static int run_qmodel(const Seeds *ss, const Seed *sd, char *err, size_t errlen, char *bad, size_t badlen) {
    (void)ss;
    InferModel im;
    FUZZ_CATCH(err, errlen);
    qmodel_load(&im, sd->load);
    ao_set_fail_handler(NULL);
    if (st_max_abs(im.mapped) < 1e4f) infer_sane(&im, bad, badlen);
    infer_model_free(&im);
    return 1;
}

static const Target TARGETS[] = {
    {"json", setup_json, run_json, 6000, 0},
    {"config", setup_config, run_config, 6000, 0},
    {"safetensors", setup_st, run_st, 6000, 0},
    {"model_hf", setup_model, run_model, 3000, 0},
    {"gguf", setup_gguf, run_gguf, 4000, 1},
    {"tokenizer", setup_tok, run_tok, 6000, 1},
    {"shard", setup_shard, run_shard, 4000, 1},
    {"loader_state", setup_loader, run_loader, 2000, 1},
    {"qmodel", setup_qmodel, run_qmodel, 2000, 1},
};

// ---- the driver ---------------------------------------------------------------------------
// Shared with the child: counts survive its crash, cur names the case that did it.
typedef struct {
    long tried, accepted, rejected, failed, cur, cur_seed;
    double max_ms;
    int done;
    char first[1024];
    char cur_what[160];
} Shared;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static uint64_t case_seed(const char *name, long i) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a of the name, then the case and the stream
    for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ull;
    const char *env = getenv("LLAMA_AO_FUZZ_SEED");
    h ^= (uint64_t)(env ? strtoull(env, NULL, 10) : 0) * 0x9E3779B97F4A7C15ull;
    h += (uint64_t)i * 0x9E3779B97F4A7C15ull;  // splitmix64's finalizer: xorshift's first outputs need mixed bits
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    return (h ^ (h >> 31)) | 1;
}

static void child(const Target *t, Shared *sh, const char *work, long iters, long only, double case_s) {
    Seeds ss;
    memset(&ss, 0, sizeof ss);
    ss.work = work;
    t->setup(&ss);
    // every seed must load as it is, or its mutants only test the first check
    for (int k = 0; k < ss.n && only < 0; k++) {
        char err[1024] = "", bad[1024] = "";
        if (t->longjmps) LSAN_OFF();
        int ok = t->run(&ss, &ss.seeds[k], err, sizeof err, bad, sizeof bad);
        if (t->longjmps) LSAN_ON();
        if ((!ok || bad[0]) && !sh->failed++)
            snprintf(sh->first, sizeof sh->first, "seed %s: %s", ss.seeds[k].path, ok ? bad : err);
    }
    Buf m = {0};
    for (long i = only >= 0 ? only : 0; i < (only >= 0 ? only + 1 : iters); i++) {
        uint64_t s = case_seed(t->name, i);
        const Seed *sd = &ss.seeds[rnd(&s, (uint64_t)ss.n)];
        buf_set(&m, sd->orig.p, sd->orig.n);
        char what[160] = "";
        if (sd->text && rnd(&s, 4)) mutate_text(&m, &s, what, sizeof what);
        else if (sd->st && rnd(&s, 2)) mutate_st_header(&m, sd->hot, &s, what, sizeof what);
        else mutate_binary(&m, sd->hot, &s, what, sizeof what);
        sh->cur = i;
        sh->cur_seed = sd - ss.seeds;
        snprintf(sh->cur_what, sizeof sh->cur_what, "%s", what);
        put_file(sd->path, m.p, m.n);
        char err[1024] = "", bad[1024] = "";
        int fd0 = dup(0);  // the lowest free descriptor: what a failed CHECK leaves open is closed below
        close(fd0);
        struct itimerval it = {{0, 0}, {(long)case_s, (long)((case_s - (long)case_s) * 1e6)}};
        setitimer(ITIMER_REAL, &it, NULL);
        double t0 = now_ms();
        if (t->longjmps) LSAN_OFF();
        int ok = t->run(&ss, sd, err, sizeof err, bad, sizeof bad);
        if (t->longjmps) LSAN_ON();
        double ms = now_ms() - t0;
        memset(&it, 0, sizeof it);
        setitimer(ITIMER_REAL, &it, NULL);
        for (int fd = fd0; fd < fd0 + 32; fd++) close(fd);
        if (ms > sh->max_ms) sh->max_ms = ms;
        sh->tried++;
        ok ? sh->accepted++ : sh->rejected++;
        const char *why = bad[0] ? bad : (!ok && !err[0]) ? "rejected with an empty message" : NULL;
        if (why) {
            if (!sh->failed++)
                snprintf(sh->first, sizeof sh->first, "case %ld (seed %ld, %s): %s", i, (long)sh->cur_seed, what, why);
        }
        if (only >= 0) printf("  %s case %ld (seed %s, %s): %s%s%s\n", t->name, i, sd->path, what,
                              ok ? "accepted" : "rejected: ", err, bad[0] ? bad : "");
        if (only < 0) put_file(sd->path, sd->orig.p, sd->orig.n);  // a replay keeps its mutant
    }
#if defined(__SANITIZE_ADDRESS__)
    // parsers that return their errors must free what they allocated on every path
    if (!t->longjmps && __lsan_do_recoverable_leak_check() && !sh->failed++)
        snprintf(sh->first, sizeof sh->first, "memory leaked (LeakSanitizer's report is above)");
#endif
    sh->done = 1;
}

static void run_target(const Target *t, long iters, long only, double case_s) {
    Shared *sh = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(sh != MAP_FAILED, "mmap");
    memset(sh, 0, sizeof *sh);
    sh->cur = -1;
    char work[512];
    snprintf(work, sizeof work, "%s/%s", test_tmpdir("fuzz"), t->name);
    CHECK(mkdir(work, 0700) == 0, "cannot create %s", work);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork failed");
    if (pid == 0) {
        child(t, sh, work, iters, only, case_s);
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    int died = !WIFEXITED(status) || WEXITSTATUS(status) != 0 || !sh->done;
    if (died || only >= 0) {
        // keep the mutant: the child left it in the seed's place
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "rm -rf /tmp/llama_ao_fuzz_%s_%ld && cp -r %s /tmp/llama_ao_fuzz_%s_%ld", t->name, sh->cur,
                 work, t->name, sh->cur);
        if (system(cmd) != 0) printf("  (could not keep the mutant)\n");
    }
    TEST_CHECK(!died, "%s: case %ld (seed %ld, %s) %s; its files are in /tmp/llama_ao_fuzz_%s_%ld, replay with "
               "LLAMA_AO_FUZZ_ONLY=%s LLAMA_AO_FUZZ_CASE=%ld",
               t->name, sh->cur, sh->cur_seed, sh->cur_what,
               WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM ? "hung (past the per-case limit)"
               : WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "crashed or exited",
               t->name, sh->cur, t->name, sh->cur);
    TEST_CHECK(sh->failed == 0, "%s: %ld bad results, first: %s", t->name, sh->failed, sh->first);
    printf("  fuzz %-12s %6ld mutants: %6ld accepted, %6ld rejected, slowest %.0f ms\n", t->name, sh->tried,
           sh->accepted, sh->rejected, sh->max_ms);
    munmap(sh, sizeof *sh);
}

int main(void) {
    const char *e_iters = getenv("LLAMA_AO_FUZZ_ITERS"), *e_only = getenv("LLAMA_AO_FUZZ_ONLY"),
               *e_case = getenv("LLAMA_AO_FUZZ_CASE"), *e_lim = getenv("LLAMA_AO_FUZZ_CASE_S");
    long only = e_case ? atol(e_case) : -1;
    double case_s = e_lim ? atof(e_lim) : 2.0;
    double t0 = now_ms();
    int ran = 0;
    for (size_t i = 0; i < sizeof TARGETS / sizeof *TARGETS; i++) {
        if (e_only && strcmp(e_only, TARGETS[i].name)) continue;
        run_target(&TARGETS[i], e_iters ? atol(e_iters) : TARGETS[i].iters, only, case_s);
        ran++;
    }
    TEST_CHECK(ran > 0, "LLAMA_AO_FUZZ_ONLY=%s names no target", e_only ? e_only : "");
    printf("  fuzz: %d targets in %.1f s\n", ran, (now_ms() - t0) / 1e3);
    return test_summary();
}
