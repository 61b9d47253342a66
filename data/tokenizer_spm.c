// sentencepiece tokenizer.model (Llama 2): the ModelProto protobuf read directly, and the
// BPE encoder of sentencepiece's bpe_model.cc (merge the adjacent pair whose concatenation
// is the highest-scoring piece, leftmost first; unused pieces are split again into the pair
// they were last proposed from; unknown pieces fall back to <0xNN> bytes).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "tokenizer_internal.h"
#include "unicode.h"

typedef struct {
    const uint8_t *p, *end;
    const char *path;
} Pb;

static uint64_t pb_varint(Pb *b) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        CHECK(b->p < b->end, "%s: truncated protobuf varint", b->path);
        uint8_t c = *b->p++;
        v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) return v;
    }
    FAIL("%s: protobuf varint longer than 10 bytes", b->path);
}

// Reads one field header; returns 0 at the end of the message.
static int pb_field(Pb *b, uint32_t *field, uint32_t *wire) {
    if (b->p >= b->end) return 0;
    uint64_t k = pb_varint(b);
    *field = (uint32_t)(k >> 3);
    *wire = (uint32_t)(k & 7);
    CHECK(*field > 0, "%s: protobuf field number 0", b->path);
    return 1;
}

static Pb pb_sub(Pb *b) {
    uint64_t n = pb_varint(b);
    CHECK(n <= (uint64_t)(b->end - b->p), "%s: protobuf field runs past the end of the file", b->path);
    Pb s = {b->p, b->p + n, b->path};
    b->p += n;
    return s;
}

static void pb_skip(Pb *b, uint32_t wire) {
    switch (wire) {
        case 0: pb_varint(b); return;
        case 1: CHECK(b->end - b->p >= 8, "%s: truncated protobuf", b->path); b->p += 8; return;
        case 2: pb_sub(b); return;
        case 5: CHECK(b->end - b->p >= 4, "%s: truncated protobuf", b->path); b->p += 4; return;
    }
    FAIL("%s: unsupported protobuf wire type %u", b->path, wire);
}

enum { SP_NORMAL = 1, SP_UNKNOWN = 2, SP_CONTROL = 3, SP_USER_DEFINED = 4, SP_UNUSED = 5, SP_BYTE = 6 };

typedef struct {
    const uint8_t *s;
    size_t n;
    float score;
    int type;
} SpPiece;

Tokenizer *tok_load_spm_model(const char *path, const unsigned char *data, size_t size) {
    Pb b = {data, data + size, path};
    SpPiece *pieces = NULL;
    size_t np = 0, cap = 0;
    int model_type = 1, byte_fallback = 0;
    int64_t unk = 0, bos = 1, eos = 2;
    int add_dummy = 1, remove_ws = 1, escape_ws = 1, treat_suffix = 0;
    const char *norm_name = NULL;
    size_t norm_name_len = 0, charsmap_len = 0;
    uint32_t f, w;
    while (pb_field(&b, &f, &w)) {
        if (f == 1 && w == 2) {  // SentencePiece
            Pb m = pb_sub(&b);
            SpPiece p = {NULL, 0, 0.0f, SP_NORMAL};
            int have = 0;
            while (pb_field(&m, &f, &w)) {
                if (f == 1 && w == 2) {
                    Pb s = pb_sub(&m);
                    p.s = s.p, p.n = (size_t)(s.end - s.p), have = 1;
                } else if (f == 2 && w == 5) {
                    CHECK(m.end - m.p >= 4, "%s: truncated piece score", path);
                    memcpy(&p.score, m.p, 4);
                    m.p += 4;
                    // merges go by score: a NaN compares false both ways and the order becomes arbitrary
                    CHECK(!isnan(p.score), "%s: piece %zu has a NaN score; the file is corrupt (download it again)",
                          path, np);
                } else if (f == 3 && w == 0) p.type = (int)pb_varint(&m);
                else pb_skip(&m, w);
            }
            CHECK(have, "%s: piece %zu has no text", path, np);
            CHECK(p.type >= SP_NORMAL && p.type <= SP_BYTE, "%s: piece %zu has unknown type %d", path, np, p.type);
            if (np == cap) cap = cap ? cap * 2 : 1024, pieces = ao_realloc(pieces, cap * sizeof *pieces);
            pieces[np++] = p;
        } else if (f == 2 && w == 2) {  // TrainerSpec
            Pb m = pb_sub(&b);
            while (pb_field(&m, &f, &w)) {
                if (w != 0) { pb_skip(&m, w); continue; }
                uint64_t v = pb_varint(&m);
                if (f == 3) model_type = (int)v;
                else if (f == 35) byte_fallback = (int)v;
                else if (f == 24) treat_suffix = (int)v;
                else if (f == 40) unk = (int32_t)v;
                else if (f == 41) bos = (int32_t)v;
                else if (f == 42) eos = (int32_t)v;
            }
        } else if (f == 3 && w == 2) {  // NormalizerSpec
            Pb m = pb_sub(&b);
            while (pb_field(&m, &f, &w)) {
                if (f == 1 && w == 2) {
                    Pb s = pb_sub(&m);
                    norm_name = (const char *)s.p, norm_name_len = (size_t)(s.end - s.p);
                } else if (f == 2 && w == 2) {
                    Pb s = pb_sub(&m);
                    charsmap_len = (size_t)(s.end - s.p);
                } else if (w == 0 && f >= 3 && f <= 5) {
                    int v = (int)pb_varint(&m);
                    if (f == 3) add_dummy = v;
                    else if (f == 4) remove_ws = v;
                    else escape_ws = v;
                } else pb_skip(&m, w);
            }
        } else pb_skip(&b, w);
    }
    CHECK(np > 0, "%s: no pieces; not a sentencepiece model", path);
    CHECK(model_type == 2, "%s: sentencepiece model type %d is not supported (only BPE, type 2)", path, model_type);
    CHECK(!treat_suffix, "%s: treat_whitespace_as_suffix is not supported", path);
    CHECK(charsmap_len == 0 || (norm_name && norm_name_len == 8 && memcmp(norm_name, "identity", 8) == 0),
          "%s: normalizer \"%.*s\" with a precompiled charsmap is not supported (only identity)", path,
          (int)norm_name_len, norm_name ? norm_name : "");

    Tokenizer *t = tok_new(path, TOKM_SPM_BPE, (int32_t)np);
    t->scores = ao_malloc(np * sizeof *t->scores);
    t->spm_prefix = add_dummy ? SPM_PREFIX_FIRST : SPM_PREFIX_NONE;
    t->spm_escape_ws = escape_ws;
    t->spm_collapse_ws = remove_ws;
    t->byte_fallback = byte_fallback;
    for (size_t i = 0; i < np; i++) {
        tok_set_bytes(t, (int32_t)i, (const char *)pieces[i].s, pieces[i].n);
        t->scores[i] = pieces[i].score;
        int ty = pieces[i].type;
        // Only normal, user-defined and unused pieces take part in merges (pieces_ in
        // sentencepiece); the others are looked up by id only.
        if (ty != SP_NORMAL && ty != SP_USER_DEFINED && ty != SP_UNUSED) t->tok_attr[i] &= (uint8_t)~TOKA_MODEL;
        if (ty == SP_UNUSED) t->tok_attr[i] |= TOKA_UNUSED;
    }
    tok_build_vocab_hash(t);
    char *buf = NULL;
    size_t bcap = 0;
    for (size_t i = 0; i < np; i++) {
        int ty = pieces[i].type;
        const char *s = (const char *)pieces[i].s;
        size_t n = pieces[i].n, k = 0;
        if (ty == SP_BYTE) {
            unsigned v = 0;
            char tmp[8] = {0}, tail = 0;
            if (n == 6) memcpy(tmp, s, 6);
            CHECK(n == 6 && sscanf(tmp, "<0x%2X%c", &v, &tail) == 2 && tail == '>' && v < 256,
                  "%s: byte piece %zu is not <0xNN>", path, i);
            t->byte_id[v] = (int32_t)i;
            t->tok_attr[i] |= TOKA_BYTE;
            char c = (char)v;
            tok_set_decode(t, (int32_t)i, &c, 1);
            continue;
        }
        if (ty == SP_CONTROL) { tok_set_decode(t, (int32_t)i, "", 0); continue; }
        if (ty == SP_UNKNOWN) { tok_set_decode(t, (int32_t)i, " \xE2\x81\x87 ", 5); continue; }
        if (n > bcap) bcap = n * 2, buf = ao_realloc(buf, bcap);
        for (size_t j = 0; j < n; j++) {
            if (j + 3 <= n && memcmp(s + j, "\xE2\x96\x81", 3) == 0) buf[k++] = ' ', j += 2;
            else buf[k++] = s[j];
        }
        tok_set_decode(t, (int32_t)i, buf, k);
    }
    free(buf);
    CHECK(unk >= 0 && unk < (int64_t)np && pieces[unk].type == SP_UNKNOWN, "%s: unk_id %lld is not an unknown piece",
          path, (long long)unk);
    t->unk_id = (int32_t)unk;
    t->bos_id = bos >= 0 && bos < (int64_t)np ? (int32_t)bos : -1;
    t->eos_id = eos >= 0 && eos < (int64_t)np ? (int32_t)eos : -1;
    t->wants_bos = t->bos_id >= 0;
    if (byte_fallback)
        for (int v = 0; v < 256; v++) CHECK(t->byte_id[v] >= 0, "%s: byte_fallback without piece <0x%02X>", path, v);
    // Control and user-defined pieces can be written in text (HF matches <s>, </s> as
    // special tokens); sentencepiece itself never matches control pieces.
    for (size_t i = 0; i < np; i++) {
        int ty = pieces[i].type;
        if (ty == SP_CONTROL || ty == SP_UNKNOWN || ty == SP_USER_DEFINED)
            tok_add_added(t, (int32_t)i, (const char *)pieces[i].s, pieces[i].n, ty != SP_USER_DEFINED, 0, 0, 0);
    }
    free(pieces);
    return t;
}

// sentencepiece's identity normalizer: malformed bytes become U+FFFD; optional removal of
// leading, trailing and repeated spaces; the dummy prefix; ' ' -> ▁.
static size_t spm_normalize(const Tokenizer *t, const uint8_t *s, size_t n, int at_start, uint8_t *out) {
    size_t i = 0, k = 0;
    if (t->spm_collapse_ws)
        while (i < n && s[i] == ' ') i++;
    if (i == n) return 0;
    if (at_start && t->spm_prefix) memcpy(out, "\xE2\x96\x81", 3), k = 3;
    int prev_space = t->spm_collapse_ws;
    while (i < n) {
        int l;
        uint32_t cp = utf8_decode(s, n, i, &l);
        if (cp == UTF8_INVALID) {
            memcpy(out + k, "\xEF\xBF\xBD", 3), k += 3;
            prev_space = 0;
        } else if (cp == ' ') {
            if (!prev_space) {
                if (t->spm_escape_ws) memcpy(out + k, "\xE2\x96\x81", 3), k += 3;
                else out[k++] = ' ';
            }
            prev_space = t->spm_collapse_ws;
        } else {
            memcpy(out + k, s + i, (size_t)l), k += (size_t)l;
            prev_space = 0;
        }
        i += (size_t)l;
    }
    if (t->spm_collapse_ws) {
        if (t->spm_escape_ws)
            while (k >= 3 && memcmp(out + k - 3, "\xE2\x96\x81", 3) == 0) k -= 3;
        else
            while (k && out[k - 1] == ' ') k--;
    }
    return k;
}

// Max-heap order on (score, -left) as one min-heap key: an order-preserving map of the
// float to uint32, inverted, above the position.
static inline uint64_t pair_key(float score, uint32_t left) {
    uint32_t u;
    memcpy(&u, &score, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (uint64_t)(~u) << 32 | left;
}

typedef struct {
    uint64_t *key;
    uint32_t *size;
    size_t n, cap;
} SpHeap;

static void sph_push(SpHeap *h, uint64_t key, uint32_t size) {
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 256;
        h->key = ao_realloc(h->key, h->cap * sizeof *h->key);
        h->size = ao_realloc(h->size, h->cap * sizeof *h->size);
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->key[p] <= key) break;
        h->key[i] = h->key[p], h->size[i] = h->size[p];
        i = p;
    }
    h->key[i] = key, h->size[i] = size;
}

static void sph_pop(SpHeap *h, uint64_t *key, uint32_t *size) {
    *key = h->key[0], *size = h->size[0];
    size_t n = --h->n, i = 0;
    uint64_t k = h->key[n];
    uint32_t s = h->size[n];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h->key[c + 1] < h->key[c]) c++;
        if (h->key[c] >= k) break;
        h->key[i] = h->key[c], h->size[i] = h->size[c];
        i = c;
    }
    h->key[i] = k, h->size[i] = s;
}

typedef struct {
    uint32_t start, len;
    int32_t prev, next;
} SpSym;

// sentencepiece's reverse merges for unused pieces: piece id -> the pair (left piece at start,
// then right piece) that was last proposed to form it. Few entries; a list is enough.
typedef struct {
    int32_t id;
    uint32_t start, llen, rlen;
} SpRev;

typedef struct {
    SpRev *r;
    size_t n, cap;
} SpRevs;

static void maybe_pair(const Tokenizer *t, const uint8_t *d, const SpSym *sym, int32_t l, int32_t r, SpHeap *h,
                       SpRevs *rev) {
    if (l < 0 || r < 0) return;
    uint32_t size = sym[l].len + sym[r].len;
    int32_t id = tok_vocab_find(t, (const char *)d + sym[l].start, size);
    if (id < 0) return;
    sph_push(h, pair_key(t->scores[id], (uint32_t)l), size);
    if (t->tok_attr[id] & TOKA_UNUSED) {  // remember it, overwriting an earlier proposal
        size_t k = 0;
        while (k < rev->n && rev->r[k].id != id) k++;
        if (k == rev->n) {
            if (rev->n == rev->cap) {
                rev->cap = rev->cap ? rev->cap * 2 : 16;
                rev->r = ao_realloc(rev->r, rev->cap * sizeof *rev->r);
            }
            rev->n++;
        }
        rev->r[k] = (SpRev){id, sym[l].start, sym[l].len, sym[r].len};
    }
}

// Emits the piece d[start..start+len): its id; an unused piece as the pair it was last
// proposed from (recursively), or, never proposed (a single character), as unknown; an unknown
// piece as its bytes (byte_fallback) or unk, a run of unknown pieces as one unk.
static void spm_emit(const Tokenizer *t, const uint8_t *d, uint32_t start, uint32_t len, const SpRevs *rev,
                     int *prev_unk, TokIds *out) {
    const char *p = (const char *)d + start;
    int32_t id = tok_vocab_find(t, p, len);
    if (id >= 0 && (t->tok_attr[id] & TOKA_UNUSED)) {
        size_t k = 0;
        while (k < rev->n && rev->r[k].id != id) k++;
        if (k < rev->n) {  // the stored pair spells the same string, maybe elsewhere in the text
            spm_emit(t, d, rev->r[k].start, rev->r[k].llen, rev, prev_unk, out);
            spm_emit(t, d, rev->r[k].start + rev->r[k].llen, rev->r[k].rlen, rev, prev_unk, out);
            return;
        }
        id = -1;
    }
    if (id >= 0) {
        tok_ids_push(out, id);
        *prev_unk = 0;
    } else if (t->byte_fallback) {
        for (uint32_t k = 0; k < len; k++) tok_ids_push(out, t->byte_id[(uint8_t)p[k]]);
    } else {
        if (!*prev_unk) tok_ids_push(out, t->unk_id);
        *prev_unk = 1;
    }
}

void spm_encode_segment(const Tokenizer *t, const uint8_t *s, size_t n, int at_start, TokIds *out) {
    size_t cap;
    CHECK(ao_mul_size(n, 3, &cap) && ao_add_size(cap, 3, &cap), "text too long");
    uint8_t *d = ao_malloc(cap);
    size_t dn = spm_normalize(t, s, n, at_start, d);
    SpSym *sym = ao_malloc((dn + 1) * sizeof *sym);
    int32_t ns = 0;
    for (size_t i = 0; i < dn;) {
        int l;
        utf8_decode(d, dn, i, &l);
        sym[ns] = (SpSym){(uint32_t)i, (uint32_t)l, ns - 1, -1};
        if (ns > 0) sym[ns - 1].next = ns;
        ns++;
        i += (size_t)l;
    }
    SpHeap h = {0};
    SpRevs rev = {0};
    for (int32_t i = 1; i < ns; i++) maybe_pair(t, d, sym, i - 1, i, &h, &rev);
    while (h.n) {
        uint64_t key;
        uint32_t size;
        sph_pop(&h, &key, &size);
        int32_t l = (int32_t)(uint32_t)key, r = sym[l].next;
        if (sym[l].len == 0 || r < 0 || sym[l].len + sym[r].len != size) continue;  // stale
        sym[l].len = size;
        sym[l].next = sym[r].next;
        if (sym[r].next >= 0) sym[sym[r].next].prev = l;
        sym[r].len = 0;
        maybe_pair(t, d, sym, sym[l].prev, l, &h, &rev);
        maybe_pair(t, d, sym, l, sym[l].next, &h, &rev);
    }
    int prev_unk = 0;
    for (int32_t i = ns ? 0 : -1; i >= 0; i = sym[i].next)
        spm_emit(t, d, sym[i].start, sym[i].len, &rev, &prev_unk, out);
    free(rev.r);
    free(h.key);
    free(h.size);
    free(sym);
    free(d);
}
