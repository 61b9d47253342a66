// A Tokenizer from GGUF metadata (tokenizer.ggml.*), built with the same builder functions
// the tokenizer.json loaders use:
//   model "gpt2"  byte-level BPE: tokens in GPT-2's byte-to-unicode spelling, merges "a b"
//                 by rank; token_type 3 (control) and 4 (user-defined) are added tokens
//                 (control = special), as llama.cpp's converter writes HF's added tokens;
//   model "llama" sentencepiece BPE by scores; token_type as sentencepiece's piece types
//                 (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
// tokenizer.ggml.pre names the pre-tokenizer regex (llama.cpp's llama-vocab.cpp list).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../model/gguf.h"
#include "tokenizer_internal.h"
#include "unicode.h"

static const GgufKV *need_arr(const GgufFile *g, const char *key, GgufType et, uint64_t n) {
    const GgufKV *kv = gguf_find(g, key);
    CHECK(kv && kv->type == GGUF_T_ARRAY && kv->arr_type == et, "%s: %s is missing or has the wrong type", g->path, key);
    CHECK(n == 0 || kv->n == n, "%s: %s has %llu entries, expected %llu", g->path, key, (unsigned long long)kv->n,
          (unsigned long long)n);
    return kv;
}

static int32_t arr_i32(const GgufKV *kv, uint64_t i) {
    const uint8_t *p = kv->data + 4 * i;
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

static float arr_f32(const GgufKV *kv, uint64_t i) {
    uint32_t u = (uint32_t)arr_i32(kv, i);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int opt_bool(const GgufFile *g, const char *key, int dflt) {
    const GgufKV *kv = gguf_find(g, key);
    return kv && kv->type == GGUF_T_BOOL ? kv->data[0] != 0 : dflt;
}

static int32_t opt_id(const GgufFile *g, const char *key, int32_t n) {
    const GgufKV *kv = gguf_find(g, key);
    uint64_t v;
    return kv && gguf_kv_u64(kv, &v) && v < (uint64_t)n ? (int32_t)v : -1;
}

Tokenizer *tokenizer_from_gguf(const GgufFile *g) {
    unicode_init();
    const GgufKV *mk = gguf_find(g, "tokenizer.ggml.model");
    CHECK(mk && mk->type == GGUF_T_STRING, "%s: tokenizer.ggml.model is missing", g->path);
    GgufStr model = gguf_kv_str(mk, 0);
    int bpe = model.n == 4 && !memcmp(model.p, "gpt2", 4), spm = model.n == 5 && !memcmp(model.p, "llama", 5);
    CHECK(bpe || spm, "%s: tokenizer model \"%.*s\" is not supported (gpt2, llama)", g->path, (int)model.n, model.p);
    const GgufKV *toks = need_arr(g, "tokenizer.ggml.tokens", GGUF_T_STRING, 0);
    CHECK(toks->n > 0 && toks->n < (1u << 30), "%s: %llu tokens", g->path, (unsigned long long)toks->n);
    const int32_t n = (int32_t)toks->n;
    const GgufKV *types = gguf_find(g, "tokenizer.ggml.token_type");
    if (types) need_arr(g, "tokenizer.ggml.token_type", GGUF_T_I32, (uint64_t)n);
    Tokenizer *t = tok_new(g->path, bpe ? TOKM_BYTE_BPE : TOKM_SPM_BPE, n);
    GgufStr *ts = ao_malloc((size_t)n * sizeof *ts);
    gguf_kv_strs(toks, ts);
    char *buf = NULL;
    size_t cap = 0;
    if (bpe) {
        const GgufKV *pre = gguf_find(g, "tokenizer.ggml.pre");
        GgufStr ps = pre ? gguf_kv_str(pre, 0) : (GgufStr){"default", 7};
        char pname[64];
        snprintf(pname, sizeof pname, "%.*s", (int)(ps.n < 60 ? ps.n : 60), ps.p);
        if (!strcmp(pname, "llama-bpe") || !strcmp(pname, "llama3")) t->pretok = PRETOK_LLAMA3;
        else if (!strcmp(pname, "qwen2")) t->pretok = PRETOK_QWEN2;
        else if (!strcmp(pname, "gpt-2") || !strcmp(pname, "default") || !strcmp(pname, "gpt2")) t->pretok = PRETOK_GPT2;
        else if (!strcmp(pname, "smollm")) {
            // SmolLM's tokenizer.json: Digits(individual_digits) then the GPT-2 ByteLevel regex.
            t->pretok = PRETOK_GPT2_DIGITS;
        } else FAIL("%s: pre-tokenizer \"%s\" is not supported (llama-bpe, qwen2, gpt-2, smollm)", g->path, pname);
        t->add_prefix_space = opt_bool(g, "tokenizer.ggml.add_space_prefix", 0);
        for (int32_t i = 0; i < n; i++) {
            GgufStr s = ts[i];
            if (s.n > cap) cap = (size_t)s.n * 2, buf = ao_realloc(buf, cap);
            int ty = types ? arr_i32(types, (uint64_t)i) : 1;
            if (ty == 3 || ty == 4) tok_set_bytes(t, i, s.p, (size_t)s.n);
            else tok_set_bytes(t, i, buf, bytelevel_to_raw(s.p, (size_t)s.n, buf));
        }
        tok_build_vocab_hash(t);
        const GgufKV *merges = need_arr(g, "tokenizer.ggml.merges", GGUF_T_STRING, 0);
        tok_merges_reserve(t, (size_t)merges->n);
        GgufStr *ms = ao_malloc(((size_t)merges->n + 1) * sizeof *ms);
        gguf_kv_strs(merges, ms);
        for (uint64_t r = 0; r < merges->n; r++) {
            GgufStr s = ms[r];
            const char *sp = memchr(s.p, ' ', (size_t)s.n);
            CHECK(sp && sp != s.p && (size_t)(sp - s.p) + 1 < s.n && r < UINT32_MAX - 1,
                  "%s: merge %llu is not two tokens separated by a space", g->path, (unsigned long long)r);
            size_t an = (size_t)(sp - s.p), bn = (size_t)s.n - an - 1;
            if (s.n > cap) cap = (size_t)s.n * 2, buf = ao_realloc(buf, cap);
            size_t ra = bytelevel_to_raw(s.p, an, buf), rb = bytelevel_to_raw(sp + 1, bn, buf + ra);
            int32_t ia = tok_vocab_find(t, buf, ra), ib = tok_vocab_find(t, buf + ra, rb),
                    im = tok_vocab_find(t, buf, ra + rb);
            CHECK(ia >= 0 && ib >= 0 && im >= 0, "%s: merge %llu uses a token missing from the vocabulary", g->path,
                  (unsigned long long)r);
            tok_add_merge(t, ia, ib, (uint32_t)r, im);
        }
        free(ms);
        for (int b = 0; b < 256; b++) {
            char ch = (char)b;
            t->byte_id[b] = tok_vocab_find(t, &ch, 1);
        }
        for (int32_t i = 0; types && i < n; i++) {
            int ty = arr_i32(types, (uint64_t)i);
            if (ty != 3 && ty != 4) continue;
            GgufStr s = ts[i];
            if (s.n) tok_add_added(t, i, s.p, (size_t)s.n, ty == 3, 0, 0, 0);
        }
        t->wants_bos = opt_bool(g, "tokenizer.ggml.add_bos_token", 0);
    } else {
        const GgufKV *scores = need_arr(g, "tokenizer.ggml.scores", GGUF_T_F32, (uint64_t)n);
        CHECK(types, "%s: a sentencepiece tokenizer needs tokenizer.ggml.token_type", g->path);
        t->scores = ao_malloc((size_t)n * sizeof *t->scores);
        t->spm_prefix = opt_bool(g, "tokenizer.ggml.add_space_prefix", 1) ? SPM_PREFIX_FIRST : SPM_PREFIX_NONE;
        t->spm_escape_ws = 1;
        t->byte_fallback = 1;
        for (int32_t i = 0; i < n; i++) {
            GgufStr s = ts[i];
            tok_set_bytes(t, i, s.p, (size_t)s.n);
            t->scores[i] = arr_f32(scores, (uint64_t)i);
            // merges go by score: a NaN compares false both ways and the order becomes arbitrary
            CHECK(!isnan(t->scores[i]), "%s: tokenizer.ggml.scores[%d] is NaN; the file is corrupt (download or "
                  "convert it again)", g->path, (int)i);
            int ty = arr_i32(types, (uint64_t)i);
            if (ty != 1 && ty != 4 && ty != 5) t->tok_attr[i] &= (uint8_t)~TOKA_MODEL;  // merged pieces only
            if (ty == 5) t->tok_attr[i] |= TOKA_UNUSED;  // re-split like sentencepiece's unused pieces
        }
        tok_build_vocab_hash(t);
        for (int32_t i = 0; i < n; i++) {
            GgufStr s = ts[i];
            int ty = arr_i32(types, (uint64_t)i);
            if (ty == 6) {
                unsigned v = 0;
                char tmp[8] = {0}, tail = 0;
                if (s.n == 6) memcpy(tmp, s.p, 6);
                CHECK(s.n == 6 && sscanf(tmp, "<0x%2X%c", &v, &tail) == 2 && tail == '>' && v < 256,
                      "%s: byte token %d is not <0xNN>", g->path, (int)i);
                t->byte_id[v] = i;
                t->tok_attr[i] |= TOKA_BYTE;
                char ch = (char)v;
                tok_set_decode(t, i, &ch, 1);
            } else if (ty == 3) tok_set_decode(t, i, "", 0);
            else if (ty == 2) tok_set_decode(t, i, " \xE2\x81\x87 ", 5);
            else {
                size_t k = 0;
                if (s.n > cap) cap = (size_t)s.n * 2, buf = ao_realloc(buf, cap);
                for (size_t j = 0; j < s.n; j++) {
                    if (j + 3 <= s.n && memcmp(s.p + j, "\xE2\x96\x81", 3) == 0) buf[k++] = ' ', j += 2;
                    else buf[k++] = s.p[j];
                }
                tok_set_decode(t, i, buf, k);
            }
        }
        for (int v = 0; v < 256; v++) CHECK(t->byte_id[v] >= 0, "%s: no byte token <0x%02X>", g->path, v);
        for (int32_t i = 0; i < n; i++) {
            int ty = arr_i32(types, (uint64_t)i);
            GgufStr s = ts[i];
            if ((ty == 3 || ty == 4) && s.n) tok_add_added(t, i, s.p, (size_t)s.n, ty == 3, 0, 0, 0);
        }
        t->unk_id = opt_id(g, "tokenizer.ggml.unknown_token_id", n);
        t->wants_bos = opt_bool(g, "tokenizer.ggml.add_bos_token", 1);
    }
    free(buf);
    free(ts);
    t->bos_id = opt_id(g, "tokenizer.ggml.bos_token_id", n);
    t->eos_id = opt_id(g, "tokenizer.ggml.eos_token_id", n);
    tok_finish(t);
    return t;
}
