// Encoding: added-token matching, then per segment the pre-tokenizer and the BPE model.
// Mirrors HF tokenizers' pipeline order: AddedVocabulary split (leftmost-longest) ->
// normalizer -> pre-tokenizer -> model.
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "tokenizer_internal.h"
#include "unicode.h"

static inline int merge_lookup(const Tokenizer *t, int32_t a, int32_t b, uint32_t *prio, int32_t *merged) {
    if (!t->mkeys) return 0;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t h = hash_u64(key) & t->mmask;
    for (;;) {
        uint64_t k = t->mkeys[h];
        if (k == key) {
            uint64_t v = t->mvals[h];
            *prio = (uint32_t)(v >> 32);
            *merged = (int32_t)(uint32_t)v;
            return 1;
        }
        if (k == UINT64_MAX) return 0;
        h = (h + 1) & t->mmask;
    }
}

// Scratch space reused across the words of one encode call.
typedef struct {
    int32_t *sym, *mg, *prev, *next;
    uint32_t *pr;
    uint64_t *heap;  // (prio << 32 | pos)
    int32_t *heap_mg;
    size_t cap, hcap;
    uint8_t *text;  // normalized text for sentencepiece-style models
    size_t tcap;
    uint8_t *nfc;  // NFC of the segment, when it is not NFC already
    size_t ncap;
} Scratch;

static void scratch_reserve(Scratch *sc, size_t n) {
    if (n <= sc->cap) return;
    size_t c = sc->cap ? sc->cap : 64;
    while (c < n) c *= 2;
    sc->sym = ao_realloc(sc->sym, c * sizeof *sc->sym);
    sc->mg = ao_realloc(sc->mg, c * sizeof *sc->mg);
    sc->prev = ao_realloc(sc->prev, c * sizeof *sc->prev);
    sc->next = ao_realloc(sc->next, c * sizeof *sc->next);
    sc->pr = ao_realloc(sc->pr, c * sizeof *sc->pr);
    sc->cap = c;
}

static void scratch_free(Scratch *sc) {
    free(sc->sym);
    free(sc->mg);
    free(sc->prev);
    free(sc->next);
    free(sc->pr);
    free(sc->heap);
    free(sc->heap_mg);
    free(sc->text);
    free(sc->nfc);
}

static void heap_push(Scratch *sc, size_t *hn, uint64_t key, int32_t mg) {
    if (*hn == sc->hcap) {
        sc->hcap = sc->hcap ? sc->hcap * 2 : 256;
        sc->heap = ao_realloc(sc->heap, sc->hcap * sizeof *sc->heap);
        sc->heap_mg = ao_realloc(sc->heap_mg, sc->hcap * sizeof *sc->heap_mg);
    }
    size_t i = (*hn)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (sc->heap[p] <= key) break;
        sc->heap[i] = sc->heap[p];
        sc->heap_mg[i] = sc->heap_mg[p];
        i = p;
    }
    sc->heap[i] = key;
    sc->heap_mg[i] = mg;
}

static void heap_pop(Scratch *sc, size_t *hn, uint64_t *key, int32_t *mg) {
    *key = sc->heap[0];
    *mg = sc->heap_mg[0];
    size_t n = --(*hn);
    uint64_t k = sc->heap[n];
    int32_t m = sc->heap_mg[n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && sc->heap[c + 1] < sc->heap[c]) c++;
        if (sc->heap[c] >= k) break;
        sc->heap[i] = sc->heap[c];
        sc->heap_mg[i] = sc->heap_mg[c];
        i = c;
    }
    sc->heap[i] = k;
    sc->heap_mg[i] = m;
}

// Applies merges to sc->sym[0..ns) (lowest priority first, leftmost among equals, as HF's
// BPE word merge does) and appends the resulting ids.
static void bpe_merge(const Tokenizer *t, Scratch *sc, size_t ns, TokIds *out) {
    int32_t *sym = sc->sym;
    if (ns <= 128) {
        // Short words: keep the priority of each adjacent pair and rescan; after a merge
        // only the two pairs touching it change.
        uint32_t *pr = sc->pr;
        int32_t *mg = sc->mg;
        for (size_t i = 0; i + 1 < ns; i++)
            if (!merge_lookup(t, sym[i], sym[i + 1], &pr[i], &mg[i])) pr[i] = UINT32_MAX;
        while (ns > 1) {
            uint32_t best = UINT32_MAX;
            size_t bi = 0;
            for (size_t i = 0; i + 1 < ns; i++)
                if (pr[i] < best) best = pr[i], bi = i;
            if (best == UINT32_MAX) break;
            sym[bi] = mg[bi];
            for (size_t k = bi + 1; k + 1 < ns; k++) sym[k] = sym[k + 1];
            for (size_t k = bi + 1; k + 2 < ns; k++) pr[k] = pr[k + 1], mg[k] = mg[k + 1];
            ns--;
            if (bi + 1 < ns && !merge_lookup(t, sym[bi], sym[bi + 1], &pr[bi], &mg[bi])) pr[bi] = UINT32_MAX;
            if (bi > 0 && !merge_lookup(t, sym[bi - 1], sym[bi], &pr[bi - 1], &mg[bi - 1])) pr[bi - 1] = UINT32_MAX;
        }
        for (size_t i = 0; i < ns; i++) tok_ids_push(out, sym[i]);
        return;
    }
    // Long words (whitespace runs, long unbroken strings): linked list + heap, O(n log n).
    int32_t *prev = sc->prev, *next = sc->next;
    size_t hn = 0;
    for (size_t i = 0; i < ns; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
        uint32_t p;
        int32_t m;
        if (i + 1 < ns && merge_lookup(t, sym[i], sym[i + 1], &p, &m)) heap_push(sc, &hn, (uint64_t)p << 32 | i, m);
    }
    while (hn) {
        uint64_t key;
        int32_t m;
        heap_pop(sc, &hn, &key, &m);
        size_t pos = (size_t)(uint32_t)key;
        if (sym[pos] < 0 || next[pos] < 0) continue;
        int32_t r = next[pos];
        uint32_t p;
        int32_t m2;
        // A stale entry: the pair at pos changed since it was queued.
        if (!merge_lookup(t, sym[pos], sym[r], &p, &m2) || m2 != m) continue;
        sym[pos] = m;
        sym[r] = -1;
        next[pos] = next[r];
        if (next[r] >= 0) prev[next[r]] = (int32_t)pos;
        if (prev[pos] >= 0 && merge_lookup(t, sym[prev[pos]], sym[pos], &p, &m2))
            heap_push(sc, &hn, (uint64_t)p << 32 | (uint32_t)prev[pos], m2);
        if (next[pos] >= 0 && merge_lookup(t, sym[pos], sym[next[pos]], &p, &m2))
            heap_push(sc, &hn, (uint64_t)p << 32 | pos, m2);
    }
    for (int32_t i = 0; i >= 0; i = next[i]) tok_ids_push(out, sym[i]);
}

static void byte_bpe_word(const Tokenizer *t, Scratch *sc, const uint8_t *w, size_t n, TokIds *out) {
    if (n == 0) return;
    if (t->ignore_merges || n == 1) {
        int32_t id = tok_vocab_find(t, (const char *)w, n);
        if (id >= 0) { tok_ids_push(out, id); return; }
    }
    scratch_reserve(sc, n);
    size_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[w[i]];
        if (id < 0) id = t->unk_id;  // HF drops a character it cannot map when there is no unk
        if (id >= 0) sc->sym[ns++] = id;
    }
    if (ns) bpe_merge(t, sc, ns, out);
}

// HF BPE over characters (sentencepiece-converted vocabularies): an unknown character
// becomes its <0xNN> byte tokens with byte_fallback, else unk (runs fused with fuse_unk).
static void char_bpe_word(const Tokenizer *t, Scratch *sc, const uint8_t *w, size_t n, TokIds *out) {
    if (n == 0) return;
    if (t->ignore_merges) {
        int32_t id = tok_vocab_find(t, (const char *)w, n);
        if (id >= 0) { tok_ids_push(out, id); return; }
    }
    scratch_reserve(sc, n);
    size_t ns = 0;
    int last_unk = 0;
    for (size_t i = 0; i < n;) {
        int l;
        utf8_decode(w, n, i, &l);
        int32_t id = tok_vocab_find(t, (const char *)w + i, (size_t)l);
        if (id >= 0) {
            sc->sym[ns++] = id;
            last_unk = 0;
        } else {
            int all = t->byte_fallback;
            for (int k = 0; k < l && all; k++) all = t->byte_id[w[i + (size_t)k]] >= 0;
            if (all) {
                for (int k = 0; k < l; k++) sc->sym[ns++] = t->byte_id[w[i + (size_t)k]];
                last_unk = 0;
            } else if (t->unk_id >= 0 && !(t->fuse_unk && last_unk)) {
                sc->sym[ns++] = t->unk_id;
                last_unk = 1;
            }
        }
        i += (size_t)l;
    }
    if (ns) bpe_merge(t, sc, ns, out);
}

static void text_reserve(Scratch *sc, size_t n) {
    if (n <= sc->tcap) return;
    sc->tcap = n * 2;
    sc->text = ao_realloc(sc->text, sc->tcap);
}

// at_start: the segment begins the text; cont: it continues a text (TOK_INTERNAL_CONTINUE), so
// no prefix of any kind goes before it.
static void encode_segment(const Tokenizer *t, Scratch *sc, const uint8_t *s, size_t n, int at_start, int cont,
                           TokIds *out) {
    if (n == 0) return;
    if (t->model == TOKM_SPM_BPE) { spm_encode_segment(t, s, n, at_start && !cont, out); return; }
    size_t nn;
    if (t->nfc && utf8_nfc(s, n, NFC_HF, &sc->nfc, &sc->ncap, &nn)) s = sc->nfc, n = nn;
    if (t->model == TOKM_BYTE_BPE) {
        if (t->add_prefix_space && s[0] != ' ' && !cont) {
            text_reserve(sc, n + 1);
            sc->text[0] = ' ';
            memcpy(sc->text + 1, s, n);
            s = sc->text;
            n++;
        }
        for (size_t i = 0; i < n;) {
            size_t e = pretok_next(t->pretok, s, n, i);
            byte_bpe_word(t, sc, s + i, e - i, out);
            i = e;
        }
        return;
    }
    // TOKM_CHAR_BPE: ' ' -> ▁ and the prefix, then one word or Metaspace pieces.
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
    text_reserve(sc, n + 2 * spaces + 3);
    uint8_t *d = sc->text;
    size_t k = 0;
    int starts_meta = n >= 3 && memcmp(s, "\xE2\x96\x81", 3) == 0;
    int prefix = !cont && (t->spm_prefix == SPM_PREFIX_ALWAYS || (t->spm_prefix == SPM_PREFIX_FIRST && at_start));
    if (prefix && !(t->spm_prefix_check && (starts_meta || (t->spm_escape_ws && s[0] == ' ')))) {
        memcpy(d, "\xE2\x96\x81", 3);
        k = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ' && t->spm_escape_ws) {
            memcpy(d + k, "\xE2\x96\x81", 3);
            k += 3;
        } else d[k++] = s[i];
    }
    if (!t->spm_split) { char_bpe_word(t, sc, d, k, out); return; }
    size_t st = 0;
    for (size_t i = 1; i + 3 <= k; i++) {
        if (memcmp(d + i, "\xE2\x96\x81", 3) == 0) {
            char_bpe_word(t, sc, d + st, i - st, out);
            st = i;
            i += 2;
        }
    }
    char_bpe_word(t, sc, d + st, k - st, out);
}

static inline int is_word_char(uint32_t cp) {
    return cp == '_' || (cp != UTF8_INVALID && (ucat(cp) & (UCAT_L | UCAT_N)));
}

// Whitespace as Rust's char::is_whitespace sees it (White_Space), for lstrip/rstrip.
static inline int ws_at(const uint8_t *s, size_t n, size_t i, int *l) {
    uint32_t cp = utf8_decode(s, n, i, l);
    return cp != UTF8_INVALID && (ucat(cp) & UCAT_WS);
}

// Finds the added token matching at s[i] (longest first); returns its index or -1.
static long match_added(const Tokenizer *t, const uint8_t *s, size_t n, size_t i, int allow_special) {
    uint32_t b0 = t->added_bucket[s[i]], b1 = t->added_bucket[s[i] + 1];
    for (uint32_t k = b0; k < b1; k++) {
        const AddedTok *a = &t->added[k];
        if (a->special && !allow_special) continue;
        if (a->len > n - i || memcmp(t->blob + a->off, s + i, a->len) != 0) continue;
        if (a->single_word) {
            if (i > 0) {  // step back to the previous character's start
                size_t p = i - 1;
                while (p > 0 && (s[p] & 0xC0) == 0x80 && i - p < 4) p--;
                int l;
                if (is_word_char(utf8_decode(s, n, p, &l))) continue;
            }
            int l;
            if (i + a->len < n && is_word_char(utf8_decode(s, n, i + a->len, &l))) continue;
        }
        return (long)k;
    }
    return -1;
}

void tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int flags, TokIds *out) {
    const uint8_t *s = (const uint8_t *)text;
    Scratch sc = {0};
    if ((flags & TOK_ADD_BOS) && t->bos_id >= 0) tok_ids_push(out, t->bos_id);
    size_t seg = 0;
    int allow = !!(flags & TOK_ALLOW_SPECIAL), cont = !!(flags & TOK_INTERNAL_CONTINUE);
    if (t->n_added) {
        for (size_t i = 0; i < len; i++) {
            if (t->added_bucket[s[i]] == t->added_bucket[s[i] + 1]) continue;
            long k = match_added(t, s, len, i, allow);
            if (k < 0) continue;
            const AddedTok *a = &t->added[k];
            size_t b = i, e = i + a->len;
            if (a->lstrip) {
                while (b > seg) {  // whitespace ends right before b; walk back one character
                    size_t p = b - 1;
                    while (p > seg && (s[p] & 0xC0) == 0x80 && b - p < 4) p--;
                    int l;
                    if (!ws_at(s, len, p, &l) || p + (size_t)l != b) break;
                    b = p;
                }
            }
            if (a->rstrip) {
                int l;
                while (e < len && ws_at(s, len, e, &l)) e += (size_t)l;
            }
            encode_segment(t, &sc, s + seg, b - seg, seg == 0, seg == 0 && cont, out);
            tok_ids_push(out, a->id);
            seg = e;
            i = e - 1;
        }
    }
    encode_segment(t, &sc, s + seg, len - seg, seg == 0, seg == 0 && cont, out);
    if ((flags & TOK_ADD_EOS) && t->eos_id >= 0) tok_ids_push(out, t->eos_id);
    scratch_free(&sc);
}
