// Tokenizer storage (token bytes, vocab and merge hash tables, added tokens), loading
// dispatch, decoding and the streaming decoder.
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "tokenizer_internal.h"
#include "unicode.h"

static inline uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

Tokenizer *tok_new(const char *path, TokModel model, int32_t n_vocab) {
    CHECK(n_vocab > 0 && n_vocab < (1 << 30), "%s: vocabulary size %d is out of range", path, (int)n_vocab);
    Tokenizer *t = ao_calloc(1, sizeof *t);
    t->model = model;
    t->path = ao_strdup(path);
    t->n_vocab = n_vocab;
    t->tok_off = ao_calloc((size_t)n_vocab, sizeof *t->tok_off);
    t->tok_len = ao_calloc((size_t)n_vocab, sizeof *t->tok_len);
    t->tok_attr = ao_calloc((size_t)n_vocab, 1);
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    t->unk_id = t->bos_id = t->eos_id = t->eot_id = -1;
    return t;
}

uint32_t tok_blob_add(Tokenizer *t, const char *bytes, size_t len) {
    // allocated for an empty first token too: t->blob + off must point into memory
    // (hashing or comparing 0 bytes at NULL is undefined)
    if (!t->blob || t->blob_len + len > t->blob_cap) {
        size_t cap = t->blob_cap ? t->blob_cap * 2 : 1 << 20;
        while (cap < t->blob_len + len) cap *= 2;
        CHECK(cap < UINT32_MAX, "%s: token strings exceed 4 GB", t->path);
        t->blob = ao_realloc(t->blob, cap);
        t->blob_cap = cap;
    }
    if (len) memcpy(t->blob + t->blob_len, bytes, len);
    uint32_t off = (uint32_t)t->blob_len;
    t->blob_len += len;
    return off;
}

void tok_set_bytes(Tokenizer *t, int32_t id, const char *bytes, size_t len) {
    CHECK(id >= 0 && id < t->n_vocab, "%s: token id %d is outside the vocabulary (size %d)", t->path, (int)id,
          (int)t->n_vocab);
    CHECK(len < (1u << 20), "%s: token %d is %zu bytes long", t->path, (int)id, len);
    CHECK(!(t->tok_attr[id] & TOKA_PRESENT), "%s: token id %d is defined twice", t->path, (int)id);
    t->tok_off[id] = tok_blob_add(t, bytes, len);
    t->tok_len[id] = (uint32_t)len;
    t->tok_attr[id] |= TOKA_PRESENT | TOKA_MODEL;
}

void tok_set_decode(Tokenizer *t, int32_t id, const char *bytes, size_t len) {
    if (!t->dec_off) {
        t->dec_off = ao_malloc((size_t)t->n_vocab * sizeof *t->dec_off);
        t->dec_len = ao_malloc((size_t)t->n_vocab * sizeof *t->dec_len);
        memcpy(t->dec_off, t->tok_off, (size_t)t->n_vocab * sizeof *t->dec_off);
        memcpy(t->dec_len, t->tok_len, (size_t)t->n_vocab * sizeof *t->dec_len);
    }
    t->dec_off[id] = tok_blob_add(t, bytes, len);
    t->dec_len[id] = (uint32_t)len;
}

void tok_build_vocab_hash(Tokenizer *t) {
    size_t cap = 1024;
    while (cap < (size_t)t->n_vocab * 2) cap *= 2;
    free(t->vhash);
    t->vhash = ao_malloc(cap * sizeof *t->vhash);
    for (size_t i = 0; i < cap; i++) t->vhash[i] = -1;
    t->vhash_mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!(t->tok_attr[id] & TOKA_MODEL)) continue;
        const char *s = t->blob + t->tok_off[id];
        size_t n = t->tok_len[id];
        size_t h = hash_bytes((const uint8_t *)s, n) & t->vhash_mask;
        while (t->vhash[h] >= 0) {
            int32_t o = t->vhash[h];
            CHECK(!(t->tok_len[o] == n && memcmp(t->blob + t->tok_off[o], s, n) == 0),
                  "%s: tokens %d and %d are the same string \"%.*s\"", t->path, (int)o, (int)id, (int)(n > 60 ? 60 : n),
                  s);
            h = (h + 1) & t->vhash_mask;
        }
        t->vhash[h] = id;
    }
}

int32_t tok_vocab_find(const Tokenizer *t, const char *s, size_t n) {
    size_t h = hash_bytes((const uint8_t *)s, n) & t->vhash_mask;
    for (;;) {
        int32_t id = t->vhash[h];
        if (id < 0) return -1;
        if (t->tok_len[id] == n && memcmp(t->blob + t->tok_off[id], s, n) == 0) return id;
        h = (h + 1) & t->vhash_mask;
    }
}

void tok_merges_reserve(Tokenizer *t, size_t n) {
    size_t cap = 1024;
    while (cap < n * 2) cap *= 2;
    t->mkeys = ao_malloc(cap * sizeof *t->mkeys);
    t->mvals = ao_malloc(cap * sizeof *t->mvals);
    memset(t->mkeys, 0xFF, cap * sizeof *t->mkeys);
    t->mmask = cap - 1;
    t->n_merges = 0;
}

void tok_add_merge(Tokenizer *t, int32_t left, int32_t right, uint32_t prio, int32_t merged) {
    CHECK(t->n_merges * 2 < t->mmask, "%s: more merges than reserved", t->path);
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t h = hash_u64(key) & t->mmask;
    while (t->mkeys[h] != UINT64_MAX) {
        if (t->mkeys[h] == key) return;
        h = (h + 1) & t->mmask;
    }
    t->mkeys[h] = key;
    t->mvals[h] = (uint64_t)prio << 32 | (uint32_t)merged;
    t->n_merges++;
}

void tok_add_added(Tokenizer *t, int32_t id, const char *content, size_t len, int special, int lstrip, int rstrip,
                   int single_word) {
    CHECK(len > 0, "%s: added token %d has empty content", t->path, (int)id);
    CHECK(id >= 0 && id < t->n_vocab, "%s: added token id %d is outside the vocabulary (size %d)", t->path, (int)id,
          (int)t->n_vocab);
    CHECK(!(t->tok_attr[id] & TOKA_ADDED), "%s: added token id %d appears twice", t->path, (int)id);
    if (t->tok_attr[id] & TOKA_PRESENT) {
        // Already in the model vocabulary (GPT-2's <|endoftext|>): HF uses the model's id.
        // Byte-level strings compare as raw bytes, which for such tokens are plain ASCII.
        CHECK(t->tok_len[id] == len && memcmp(t->blob + t->tok_off[id], content, len) == 0,
              "%s: added token %d \"%.*s\" differs from vocabulary entry %d", t->path, (int)id,
              (int)(len > 60 ? 60 : len), content, (int)id);
    } else {
        t->tok_off[id] = tok_blob_add(t, content, len);
        t->tok_len[id] = (uint32_t)len;
        if (t->dec_off) {
            t->dec_off[id] = t->tok_off[id];
            t->dec_len[id] = (uint32_t)len;
        }
    }
    t->tok_attr[id] |= TOKA_PRESENT | TOKA_ADDED | (special ? TOKA_SPECIAL : 0);
    t->added = ao_realloc(t->added, (t->n_added + 1) * sizeof *t->added);
    AddedTok *a = &t->added[t->n_added++];
    a->id = id;
    a->off = t->tok_off[id];
    a->len = (uint32_t)len;
    a->special = (uint8_t)!!special;
    a->lstrip = (uint8_t)!!lstrip;
    a->rstrip = (uint8_t)!!rstrip;
    a->single_word = (uint8_t)!!single_word;
}

static const char *g_sort_blob;
static int cmp_added(const void *pa, const void *pb) {
    const AddedTok *a = pa, *b = pb;
    uint8_t fa = (uint8_t)g_sort_blob[a->off], fb = (uint8_t)g_sort_blob[b->off];
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;  // longest first: leftmost-longest
    return a->id < b->id ? -1 : a->id > b->id;
}

int32_t tokenizer_token_id(const Tokenizer *t, const char *text) {
    size_t n = strlen(text);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->blob + t->added[i].off, text, n) == 0) return t->added[i].id;
    return n ? tok_vocab_find(t, text, n) : -1;
}

void tok_finish(Tokenizer *t) {
    g_sort_blob = t->blob;  // loading is single-threaded per tokenizer; qsort has no context arg
    if (t->n_added) qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    size_t k = 0;
    for (int b = 0; b < 256; b++) {
        t->added_bucket[b] = (uint32_t)k;
        while (k < t->n_added && (uint8_t)t->blob[t->added[k].off] == b) k++;
    }
    t->added_bucket[256] = (uint32_t)k;
    if (t->eot_id < 0) t->eot_id = tokenizer_token_id(t, "<|eot_id|>");
    if (t->eot_id < 0) t->eot_id = t->eos_id;
}

// ---- GPT-2 byte <-> printable character map ------------------------------------------------
uint32_t bytelevel_char(uint8_t b) {
    // bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
    // are mapped in order to U+0100 upwards.
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) return b;
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE))) n++;
    return 0x100 + n;
}

int bytelevel_byte(uint32_t cp) {
    static int inv[0x144];
    static int ready;
    if (!ready) {  // benign race: every thread writes the same values
        for (int i = 0; i < 0x144; i++) inv[i] = -1;
        for (int b = 0; b < 256; b++) inv[bytelevel_char((uint8_t)b)] = b;
        ready = 1;
    }
    return cp < 0x144 ? inv[cp] : -1;
}

// ---- loading dispatch ----------------------------------------------------------------------
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return ao_strdup(".");
    size_t n = (size_t)(slash - path);
    char *d = ao_malloc(n + 2);
    memcpy(d, path, n ? n : 1);
    d[n ? n : 1] = 0;
    if (!n) d[0] = '/';
    return d;
}

static Tokenizer *load_model_file(const char *path) {
    // tokenizer.model is either a sentencepiece protobuf or a tiktoken text file: tiktoken
    // lines are base64, a space and a decimal rank, while a protobuf starts with field 1's tag.
    MappedFile mf;
    char err[512];
    CHECK(map_file(path, &mf, err, sizeof err), "%s", err);
    CHECK(mf.size > 0, "%s: empty tokenizer model", path);
    Tokenizer *t;
    if (mf.data[0] == 0x0A) t = tok_load_spm_model(path, mf.data, mf.size);
    else t = tok_load_tiktoken(path, (const char *)mf.data, mf.size);
    unmap_file(&mf);
    return t;
}

Tokenizer *tokenizer_load(const char *path) {
    unicode_init();
    CHECK(path && *path, "no tokenizer path given");
    Tokenizer *t = NULL;
    char *dir = NULL;
    if (dir_exists(path)) {
        dir = ao_strdup(path);
        char *j = path_join(path, "tokenizer.json"), *m = path_join(path, "tokenizer.model");
        char *e = path_join(path, "encoder.json"), *v = path_join(path, "vocab.bpe");
        if (file_exists(j)) t = tok_load_hf_json(j);
        else if (file_exists(m)) t = load_model_file(m);
        else if (file_exists(e) && file_exists(v)) t = tok_load_gpt2_files(e, v);
        else FAIL("%s holds no tokenizer.json, tokenizer.model or encoder.json + vocab.bpe", path);
        free(j);
        free(m);
        free(e);
        free(v);
    } else {
        CHECK(file_exists(path), "tokenizer %s does not exist", path);
        dir = dir_of(path);
        size_t n = strlen(path);
        if (n >= 5 && strcmp(path + n - 5, ".json") == 0 && n >= 12 && strcmp(path + n - 12, "encoder.json") == 0) {
            char *v = path_join(dir, "vocab.bpe");
            t = tok_load_gpt2_files(path, v);
            free(v);
        } else if (n >= 5 && strcmp(path + n - 5, ".json") == 0) t = tok_load_hf_json(path);
        else t = load_model_file(path);
    }
    tok_apply_config(t, dir);
    free(dir);
    tok_finish(t);
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    free(t->path);
    free(t->tok_off);
    free(t->tok_len);
    free(t->tok_attr);
    free(t->dec_off);
    free(t->dec_len);
    free(t->blob);
    free(t->vhash);
    free(t->mkeys);
    free(t->mvals);
    free(t->scores);
    free(t->added);
    free(t);
}

int32_t tokenizer_vocab_size(const Tokenizer *t) { return t->n_vocab; }
int32_t tokenizer_bos_id(const Tokenizer *t) { return t->bos_id; }
int32_t tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }
int32_t tokenizer_eot_id(const Tokenizer *t) { return t->eot_id; }
int tokenizer_wants_bos(const Tokenizer *t) { return t->wants_bos && t->bos_id >= 0; }
int tokenizer_is_special(const Tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->tok_attr[id] & TOKA_SPECIAL);
}

void tok_ids_push(TokIds *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->ids = ao_realloc(v->ids, v->cap * sizeof *v->ids);
    }
    v->ids[v->n++] = id;
}

void tok_ids_free(TokIds *v) {
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

// ---- chunking -------------------------------------------------------------------------------
static int is_alnum_ascii(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

int tok_newline_cut_safe(const Tokenizer *t) {
    // Added tokens: a match across the cut would contain the '\n'; an lstrip token starting
    // with the letter/digit would swallow the '\n' in the whole text only. (single_word sees
    // '\n' before it in the whole text and the start of text in the chunk: both non-word;
    // rstrip stops at the letter either way.)
    for (size_t i = 0; i < t->n_added; i++) {
        const AddedTok *a = &t->added[i];
        if (memchr(t->blob + a->off, '\n', a->len)) return 0;
        if (a->lstrip && is_alnum_ascii((uint8_t)t->blob[a->off])) return 0;
    }
    switch (t->model) {
        case TOKM_BYTE_BPE:
            // The GPT-2 (with or without the digit split), Llama 3 and Qwen2 regexes all make a
            // lone '\n' between a visible character and a letter or digit a piece of its own,
            // whether the text ends after it or goes on; NFC regions end at ASCII too.
            return t->pretok == PRETOK_GPT2 || t->pretok == PRETOK_GPT2_DIGITS || t->pretok == PRETOK_LLAMA3 ||
                   t->pretok == PRETOK_QWEN2;
        case TOKM_CHAR_BPE:
        case TOKM_SPM_BPE: {
            // One BPE word runs across the cut. Its '\n' symbol never merges when no vocabulary
            // string contains '\n' and no merge takes the '\n' fallback token; merges on either
            // side then happen as they would alone (priority order within a side is unchanged).
            // Not safe: ignore_merges (a chunk's word could be looked up whole), '\n' as unk
            // (fuse_unk), unused sentencepiece pieces (their re-split uses proposals from the
            // whole text).
            for (int32_t id = 0; id < t->n_vocab; id++) {
                if (!(t->tok_attr[id] & TOKA_MODEL)) continue;
                if (memchr(t->blob + t->tok_off[id], '\n', t->tok_len[id])) return 0;
                if (t->tok_attr[id] & TOKA_UNUSED) return 0;
            }
            if (t->ignore_merges) return 0;
            int32_t nl = t->byte_fallback ? t->byte_id['\n'] : -1;
            if (nl < 0) return 0;
            for (size_t h = 0; t->mkeys && h <= t->mmask; h++) {
                uint64_t k = t->mkeys[h];
                if (k != UINT64_MAX && ((int32_t)(k >> 32) == nl || (int32_t)(uint32_t)k == nl)) return 0;
            }
            return 1;
        }
    }
    return 0;
}

// ---- decoding ----------------------------------------------------------------------------
static int strips_leading_space(const Tokenizer *t) { return t->model != TOKM_BYTE_BPE && t->spm_prefix; }

const char *tokenizer_token_bytes(const Tokenizer *t, int32_t id, size_t *len) {
    CHECK(id >= 0 && id < t->n_vocab, "token id %d is outside the vocabulary (size %d)", (int)id, (int)t->n_vocab);
    *len = t->dec_off ? t->dec_len[id] : t->tok_len[id];
    return t->blob ? t->blob + (t->dec_off ? t->dec_off[id] : t->tok_off[id]) : "";
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(ids[i] >= 0 && ids[i] < t->n_vocab, "token id %d is outside the vocabulary (size %d)", (int)ids[i],
              (int)t->n_vocab);
        size_t l;
        tokenizer_token_bytes(t, ids[i], &l);
        total += l;
    }
    char *out = ao_malloc(total + 1);
    size_t k = 0;
    int at_start = strips_leading_space(t);
    for (size_t i = 0; i < n; i++) {
        if (skip_special && (t->tok_attr[ids[i]] & TOKA_SPECIAL)) continue;
        size_t l;
        const char *b = tokenizer_token_bytes(t, ids[i], &l);
        if (at_start && l) {
            if (b[0] == ' ') b++, l--;
            at_start = 0;
        }
        memcpy(out + k, b, l);
        k += l;
    }
    out[k] = 0;
    *len = k;
    return out;
}

void tok_stream_init(TokStream *st, const Tokenizer *t, int skip_special) {
    memset(st, 0, sizeof *st);
    st->tok = t;
    st->skip_special = skip_special;
    st->at_start = strips_leading_space(t);
}

static void st_put(TokStream *st, size_t *k, const void *p, size_t n) {
    if (*k + n + 1 > st->cap) {
        st->cap = (*k + n + 1) * 2;
        st->buf = ao_realloc(st->buf, st->cap);
    }
    memcpy(st->buf + *k, p, n);
    *k += n;
}

const char *tok_stream_push(TokStream *st, int32_t id, size_t *len) {
    const Tokenizer *t = st->tok;
    size_t k = 0;
    st_put(st, &k, "", 0);
    *len = 0;
    st->buf[0] = 0;
    if (id < 0 || id >= t->n_vocab || (st->skip_special && (t->tok_attr[id] & TOKA_SPECIAL))) return st->buf;
    size_t l;
    const uint8_t *b = (const uint8_t *)tokenizer_token_bytes(t, id, &l);
    if (st->at_start && l) {
        if (b[0] == ' ') b++, l--;
        st->at_start = 0;
    }
    // Work on pending bytes + this token's bytes; small tokens, so a stack copy is fine.
    uint8_t stackbuf[256];
    size_t wn = (size_t)st->npend + l;
    uint8_t *w = wn <= sizeof stackbuf ? stackbuf : ao_malloc(wn);
    memcpy(w, st->pend, (size_t)st->npend);
    if (l) memcpy(w + st->npend, b, l);
    st->npend = 0;
    size_t i = 0;
    while (i < wn) {
        if (w[i] < 0x80) {
            size_t j = i;
            while (j < wn && w[j] < 0x80) j++;
            st_put(st, &k, w + i, j - i);
            i = j;
            continue;
        }
        int cl;
        if (utf8_decode(w, wn, i, &cl) != UTF8_INVALID) {
            st_put(st, &k, w + i, (size_t)cl);
            i += (size_t)cl;
            continue;
        }
        int part = utf8_partial_len(w + i, wn - i);
        if (part > 0 && i + (size_t)part == wn) {  // may still complete with the next token
            memcpy(st->pend, w + i, (size_t)part);
            st->npend = part;
            break;
        }
        st_put(st, &k, "\xEF\xBF\xBD", 3);
        i += part > 0 ? (size_t)part : 1;
    }
    if (w != stackbuf) free(w);
    st->buf[k] = 0;
    *len = k;
    return st->buf;
}

const char *tok_stream_flush(TokStream *st, size_t *len) {
    size_t k = 0;
    st_put(st, &k, "", 0);
    if (st->npend) st_put(st, &k, "\xEF\xBF\xBD", 3);
    st->npend = 0;
    st->buf[k] = 0;
    *len = k;
    return st->buf;
}

void tok_stream_free(TokStream *st) {
    free(st->buf);
    st->buf = NULL;
    st->cap = 0;
}
