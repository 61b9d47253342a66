// Loading Hugging Face tokenizer.json (BPE models), GPT-2's encoder.json + vocab.bpe, and
// tokenizer_config.json. Anything the encoder would not reproduce exactly (an unknown
// pre-tokenizer, regex or normalizer) is refused with the file and the field named.
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/json.h"
#include "tokenizer_internal.h"
#include "unicode.h"

#define MAX_TOKENIZER_FILE ((size_t)1 << 30)

static void load_json(const char *path, char **text, JsonDoc *doc) {
    size_t len;
    char err[512];
    CHECK(read_file_all(path, MAX_TOKENIZER_FILE, text, &len, err, sizeof err), "%s", err);
    CHECK(json_parse(*text, len, doc, err, sizeof err), "%s: invalid JSON: %s", path, err);
}

static const char *jstr(const JsonValue *v) { return v && v->type == JSON_STRING ? v->str : NULL; }
static int jbool(const JsonValue *v, int dflt) { return v && v->type == JSON_BOOL ? v->boolean : dflt; }

// Byte-level token string -> raw bytes. A string with a character outside the byte map
// keeps its UTF-8 bytes, as HF's ByteLevel decoder does.
size_t bytelevel_to_raw(const char *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        int l;
        uint32_t cp = utf8_decode((const uint8_t *)s, n, i, &l);
        int b = cp == UTF8_INVALID ? -1 : bytelevel_byte(cp);
        if (b < 0) {
            memcpy(out, s, n);
            return n;
        }
        out[k++] = (char)b;
        i += (size_t)l;
    }
    return k;
}

// Fills the vocabulary from a {token: id} object; byte_level converts token strings.
static void fill_vocab(Tokenizer *t, const JsonValue *vocab, int byte_level, const char *path) {
    char *tmp = NULL;
    size_t tcap = 0;
    for (size_t i = 0; i < vocab->n; i++) {
        const JsonMember *m = &vocab->members[i];
        int64_t id;
        CHECK(json_as_i64(&m->value, &id) && id >= 0 && id < t->n_vocab, "%s: vocab entry \"%.60s\" has a bad id",
              path, m->key);
        if (m->key_len > tcap) {
            tcap = m->key_len * 2;
            tmp = ao_realloc(tmp, tcap);
        }
        if (byte_level) tok_set_bytes(t, (int32_t)id, tmp, bytelevel_to_raw(m->key, m->key_len, tmp));
        else tok_set_bytes(t, (int32_t)id, m->key, m->key_len);
    }
    free(tmp);
}

// Splits a merge "a b" (or ["a", "b"]) and registers it with priority = rank.
static void add_merge_strings(Tokenizer *t, const char *a, size_t an, const char *b, size_t bn, uint32_t rank,
                              int byte_level, char *buf, const char *path) {
    size_t ra, rb;
    if (byte_level) {
        ra = bytelevel_to_raw(a, an, buf);
        rb = bytelevel_to_raw(b, bn, buf + ra);
    } else {
        memcpy(buf, a, an);
        memcpy(buf + an, b, bn);
        ra = an, rb = bn;
    }
    int32_t ia = tok_vocab_find(t, buf, ra), ib = tok_vocab_find(t, buf + ra, rb), im = tok_vocab_find(t, buf, ra + rb);
    CHECK(ia >= 0 && ib >= 0 && im >= 0, "%s: merge %u \"%.*s %.*s\" uses a token missing from the vocabulary", path,
          rank, (int)(an > 40 ? 40 : an), a, (int)(bn > 40 ? 40 : bn), b);
    tok_add_merge(t, ia, ib, rank, im);
}

static void fill_merges(Tokenizer *t, const JsonValue *merges, int byte_level, const char *path) {
    tok_merges_reserve(t, merges->n);
    char *buf = NULL;
    size_t cap = 0;
    for (size_t r = 0; r < merges->n; r++) {
        const JsonValue *m = &merges->items[r];
        const char *a, *b;
        size_t an, bn;
        if (m->type == JSON_STRING) {
            const char *sp = memchr(m->str, ' ', m->str_len);
            CHECK(sp && sp != m->str && (size_t)(sp - m->str) + 1 < m->str_len,
                  "%s: merge %zu \"%.60s\" is not two tokens separated by a space", path, r, m->str);
            a = m->str, an = (size_t)(sp - m->str);
            b = sp + 1, bn = m->str_len - an - 1;
        } else {
            CHECK(m->type == JSON_ARRAY && m->n == 2 && m->items[0].type == JSON_STRING &&
                      m->items[1].type == JSON_STRING,
                  "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", path, r);
            a = m->items[0].str, an = m->items[0].str_len;
            b = m->items[1].str, bn = m->items[1].str_len;
        }
        if (an + bn > cap) {
            cap = (an + bn) * 2;
            buf = ao_realloc(buf, cap);
        }
        CHECK(r < UINT32_MAX - 1, "%s: too many merges", path);
        add_merge_strings(t, a, an, b, bn, (uint32_t)r, byte_level, buf, path);
    }
    free(buf);
}

typedef struct {
    int byte_level, regex_stages, has_metaspace, digits;
    PretokKind kind;
    int add_prefix_space;
    int meta_prefix, meta_split;
} PretokCfg;

static PretokKind regex_kind(const char *re, const char *path) {
    if (strcmp(re, PRETOK_PATTERN_GPT2) == 0) return PRETOK_GPT2;
    if (strcmp(re, PRETOK_PATTERN_LLAMA3) == 0) return PRETOK_LLAMA3;
    if (strcmp(re, PRETOK_PATTERN_QWEN2) == 0) return PRETOK_QWEN2;
    FAIL("%s: pre-tokenizer regex \"%.200s\" is not one we implement (GPT-2, Llama 3, Qwen2)", path, re);
}

static void parse_pretok(const JsonValue *p, PretokCfg *c, const char *path) {
    if (!p || p->type == JSON_NULL) return;
    const char *type = jstr(json_get(p, "type"));
    CHECK(type, "%s: pre_tokenizer without a type", path);
    if (strcmp(type, "Sequence") == 0) {
        const JsonValue *list = json_get(p, "pretokenizers");
        CHECK(list && list->type == JSON_ARRAY, "%s: Sequence pre_tokenizer without a pretokenizers list", path);
        for (size_t i = 0; i < list->n; i++) parse_pretok(&list->items[i], c, path);
    } else if (strcmp(type, "ByteLevel") == 0) {
        c->byte_level = 1;
        c->add_prefix_space = jbool(json_get(p, "add_prefix_space"), 1);
        if (jbool(json_get(p, "use_regex"), 1)) {
            c->kind = PRETOK_GPT2;
            c->regex_stages++;
        }
    } else if (strcmp(type, "Split") == 0) {
        const JsonValue *pat = json_get(p, "pattern");
        const char *re = jstr(json_get(pat, "Regex"));
        CHECK(re, "%s: Split pre_tokenizer needs a Regex pattern", path);
        const char *beh = jstr(json_get(p, "behavior"));
        CHECK(beh && strcmp(beh, "Isolated") == 0 && !jbool(json_get(p, "invert"), 0),
              "%s: Split pre_tokenizer: only behavior Isolated without invert is supported", path);
        c->kind = regex_kind(re, path);
        c->regex_stages++;
    } else if (strcmp(type, "Digits") == 0) {
        // SmolLM: Digits(individual_digits) ahead of the GPT-2 regex = PRETOK_GPT2_DIGITS
        CHECK(jbool(json_get(p, "individual_digits"), 0) && c->regex_stages == 0,
              "%s: a Digits pre-tokenizer is supported only with individual_digits, before the regex stage", path);
        c->digits = 1;
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *rep = jstr(json_get(p, "replacement"));
        CHECK(rep && strcmp(rep, "\xE2\x96\x81") == 0, "%s: Metaspace replacement must be \xE2\x96\x81", path);
        const char *scheme = jstr(json_get(p, "prepend_scheme"));
        c->has_metaspace = 1;
        if (scheme) {
            if (strcmp(scheme, "always") == 0) c->meta_prefix = SPM_PREFIX_ALWAYS;
            else if (strcmp(scheme, "first") == 0) c->meta_prefix = SPM_PREFIX_FIRST;
            else if (strcmp(scheme, "never") == 0) c->meta_prefix = SPM_PREFIX_NONE;
            else FAIL("%s: Metaspace prepend_scheme \"%s\" is unknown", path, scheme);
        } else c->meta_prefix = jbool(json_get(p, "add_prefix_space"), 1) ? SPM_PREFIX_ALWAYS : SPM_PREFIX_NONE;
        c->meta_split = jbool(json_get(p, "split"), 1);
    } else FAIL("%s: pre_tokenizer type \"%s\" is not supported", path, type);
    CHECK(c->regex_stages <= 1, "%s: more than one regex pre-tokenizer stage is not supported", path);
    if (c->digits && c->regex_stages) {
        CHECK(c->kind == PRETOK_GPT2 || c->kind == PRETOK_GPT2_DIGITS,
              "%s: Digits is supported only ahead of the GPT-2 pattern", path);
        c->kind = PRETOK_GPT2_DIGITS;
    }
}

static void parse_normalizer(Tokenizer *t, const JsonValue *n, const char *path) {
    if (!n || n->type == JSON_NULL) return;
    const char *type = jstr(json_get(n, "type"));
    CHECK(type, "%s: normalizer without a type", path);
    if (strcmp(type, "Sequence") == 0) {
        const JsonValue *list = json_get(n, "normalizers");
        CHECK(list && list->type == JSON_ARRAY, "%s: Sequence normalizer without a normalizers list", path);
        for (size_t i = 0; i < list->n; i++) parse_normalizer(t, &list->items[i], path);
    } else if (strcmp(type, "Prepend") == 0) {
        const char *p = jstr(json_get(n, "prepend"));
        CHECK(p && strcmp(p, "\xE2\x96\x81") == 0, "%s: only Prepend(\"\xE2\x96\x81\") is supported", path);
        t->spm_prefix = SPM_PREFIX_ALWAYS;
    } else if (strcmp(type, "Replace") == 0) {
        const char *from = jstr(json_get(json_get(n, "pattern"), "String"));
        const char *to = jstr(json_get(n, "content"));
        CHECK(from && to && strcmp(from, " ") == 0 && strcmp(to, "\xE2\x96\x81") == 0,
              "%s: only the Replace(\" \" -> \"\xE2\x96\x81\") normalizer is supported", path);
        t->spm_escape_ws = 1;
    } else if (strcmp(type, "NFC") == 0) {
        t->nfc = 1;  // Qwen2; HF's NFC has Unicode 9.0 data (utf8_nfc NFC_HF)
    } else FAIL("%s: normalizer type \"%s\" is not supported", path, type);
}

Tokenizer *tok_load_hf_json(const char *path) {
    char *text;
    JsonDoc doc;
    load_json(path, &text, &doc);
    const JsonValue *root = doc.root;
    const JsonValue *model = json_get(root, "model");
    CHECK(model && model->type == JSON_OBJECT, "%s: no \"model\" object", path);
    const char *mtype = jstr(json_get(model, "type"));
    CHECK(mtype && strcmp(mtype, "BPE") == 0, "%s: model type \"%s\" is not supported (only BPE)", path,
          mtype ? mtype : "(missing)");
    const JsonValue *vocab = json_get(model, "vocab"), *merges = json_get(model, "merges");
    CHECK(vocab && vocab->type == JSON_OBJECT, "%s: model.vocab is not an object", path);
    CHECK(merges && merges->type == JSON_ARRAY, "%s: model.merges is not an array", path);
    const char *csp = jstr(json_get(model, "continuing_subword_prefix")), *ews = jstr(json_get(model, "end_of_word_suffix"));
    CHECK((!csp || !*csp) && (!ews || !*ews), "%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported",
          path);
    const JsonValue *added = json_get(root, "added_tokens");
    CHECK(!added || added->type == JSON_ARRAY || added->type == JSON_NULL, "%s: added_tokens is not an array", path);

    int64_t max_id = -1;
    for (size_t i = 0; i < vocab->n; i++) {
        int64_t id;
        CHECK(json_as_i64(&vocab->members[i].value, &id) && id >= 0 && id < (1 << 30),
              "%s: vocab entry \"%.60s\" has a bad id", path, vocab->members[i].key);
        if (id > max_id) max_id = id;
    }
    size_t n_added = added && added->type == JSON_ARRAY ? added->n : 0;
    for (size_t i = 0; i < n_added; i++) {
        int64_t id;
        CHECK(json_as_i64(json_get(&added->items[i], "id"), &id) && id >= 0 && id < (1 << 30),
              "%s: added_tokens[%zu] has a bad id", path, i);
        if (id > max_id) max_id = id;
    }
    CHECK(max_id >= 0, "%s: empty vocabulary", path);

    PretokCfg pc = {0};
    parse_pretok(json_get(root, "pre_tokenizer"), &pc, path);
    const char *dtype = jstr(json_get(json_get(root, "decoder"), "type"));
    int byte_level = pc.byte_level || (dtype && strcmp(dtype, "ByteLevel") == 0);
    Tokenizer *t = tok_new(path, byte_level ? TOKM_BYTE_BPE : TOKM_CHAR_BPE, (int32_t)max_id + 1);
    t->pretok = pc.kind;
    t->add_prefix_space = byte_level && pc.add_prefix_space;
    t->ignore_merges = jbool(json_get(model, "ignore_merges"), 0);
    t->byte_fallback = jbool(json_get(model, "byte_fallback"), 0);
    t->fuse_unk = jbool(json_get(model, "fuse_unk"), 0);
    parse_normalizer(t, json_get(root, "normalizer"), path);
    if (pc.has_metaspace) {
        CHECK(!byte_level, "%s: Metaspace with a byte-level model is not supported", path);
        t->spm_prefix = pc.meta_prefix;
        t->spm_prefix_check = 1;
        t->spm_escape_ws = 1;
        t->spm_split = pc.meta_split;
    }
    CHECK(byte_level || pc.regex_stages == 0, "%s: regex pre-tokenizer without ByteLevel is not supported", path);

    fill_vocab(t, vocab, byte_level, path);
    tok_build_vocab_hash(t);
    fill_merges(t, merges, byte_level, path);
    if (byte_level) {
        for (int b = 0; b < 256; b++) {
            char c = (char)b;
            t->byte_id[b] = tok_vocab_find(t, &c, 1);
        }
    } else {
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            t->byte_id[b] = tok_vocab_find(t, name, 6);
        }
        // Decoding: ▁ prints as a space and <0xNN> as its byte (Replace + ByteFallback decoders).
        char *buf = NULL;
        size_t cap = 0;
        for (int32_t id = 0; id < t->n_vocab; id++) {
            if (!(t->tok_attr[id] & TOKA_PRESENT)) continue;
            const char *s = t->blob + t->tok_off[id];
            size_t n = t->tok_len[id], k = 0;
            if (n > cap) cap = n * 2, buf = ao_realloc(buf, cap);
            for (size_t i = 0; i < n; i++) {
                if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) buf[k++] = ' ', i += 2;
                else buf[k++] = s[i];
            }
            tok_set_decode(t, id, buf, k);
        }
        for (int b = 0; b < 256; b++) {
            if (t->byte_id[b] < 0) continue;
            char c = (char)b;
            tok_set_decode(t, t->byte_id[b], &c, 1);
            t->tok_attr[t->byte_id[b]] |= TOKA_BYTE;
        }
        free(buf);
    }
    const char *unk = jstr(json_get(model, "unk_token"));
    if (unk) {
        t->unk_id = tok_vocab_find(t, unk, strlen(unk));
        CHECK(t->unk_id >= 0, "%s: unk_token \"%.60s\" is not in the vocabulary", path, unk);
    }

    for (size_t i = 0; i < n_added; i++) {
        const JsonValue *a = &added->items[i];
        const JsonValue *c = json_get(a, "content");
        CHECK(c && c->type == JSON_STRING, "%s: added_tokens[%zu] has no content", path, i);
        int64_t id;
        json_as_i64(json_get(a, "id"), &id);
        tok_add_added(t, (int32_t)id, c->str, c->str_len, jbool(json_get(a, "special"), 0),
                      jbool(json_get(a, "lstrip"), 0), jbool(json_get(a, "rstrip"), 0),
                      jbool(json_get(a, "single_word"), 0));
    }

    // A TemplateProcessing post-processor that starts with a special token adds BOS.
    const JsonValue *pp = json_get(root, "post_processor");
    const char *pptype = jstr(json_get(pp, "type"));
    if (pptype && strcmp(pptype, "TemplateProcessing") == 0) {
        const JsonValue *single = json_get(pp, "single");
        if (single && single->type == JSON_ARRAY && single->n > 0) {
            const char *sid = jstr(json_get(json_get(&single->items[0], "SpecialToken"), "id"));
            if (sid) {
                t->bos_id = tokenizer_token_id(t, sid);
                t->wants_bos = t->bos_id >= 0;
            }
        }
    }
    json_free(&doc);
    free(text);
    return t;
}

Tokenizer *tok_load_gpt2_files(const char *encoder_json, const char *vocab_bpe) {
    char *text;
    JsonDoc doc;
    load_json(encoder_json, &text, &doc);
    const JsonValue *vocab = doc.root;
    CHECK(vocab->type == JSON_OBJECT, "%s: not a {token: id} object", encoder_json);
    int64_t max_id = -1;
    for (size_t i = 0; i < vocab->n; i++) {
        int64_t id;
        CHECK(json_as_i64(&vocab->members[i].value, &id) && id >= 0 && id < (1 << 30),
              "%s: entry \"%.60s\" has a bad id", encoder_json, vocab->members[i].key);
        if (id > max_id) max_id = id;
    }
    CHECK(max_id >= 0, "%s: empty vocabulary", encoder_json);
    Tokenizer *t = tok_new(encoder_json, TOKM_BYTE_BPE, (int32_t)max_id + 1);
    t->pretok = PRETOK_GPT2;
    fill_vocab(t, vocab, 1, encoder_json);
    tok_build_vocab_hash(t);
    json_free(&doc);
    free(text);

    char *bpe;
    size_t len;
    char err[512];
    CHECK(read_file_all(vocab_bpe, MAX_TOKENIZER_FILE, &bpe, &len, err, sizeof err), "%s", err);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += bpe[i] == '\n';
    tok_merges_reserve(t, lines + 1);
    char *buf = ao_malloc(len + 1);
    size_t pos = 0, lineno = 0;
    uint32_t rank = 0;
    while (pos < len) {
        char *nl = memchr(bpe + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - bpe) : len;
        lineno++;
        const char *line = bpe + pos;
        size_t ln = end - pos;
        if (ln && line[ln - 1] == '\r') ln--;
        pos = end + 1;
        if (lineno == 1 && ln >= 8 && memcmp(line, "#version", 8) == 0) continue;
        if (ln == 0) continue;
        const char *sp = memchr(line, ' ', ln);
        CHECK(sp && sp != line && (size_t)(sp - line) + 1 < ln && !memchr(sp + 1, ' ', ln - (size_t)(sp - line) - 1),
              "%s: line %zu is not two tokens separated by one space", vocab_bpe, lineno);
        size_t an = (size_t)(sp - line);
        add_merge_strings(t, line, an, sp + 1, ln - an - 1, rank++, 1, buf, vocab_bpe);
    }
    free(buf);
    free(bpe);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = tok_vocab_find(t, &c, 1);
    }
    // GPT-2's only special token, as HF's GPT-2 tokenizer declares it.
    int32_t eot = tok_vocab_find(t, "<|endoftext|>", 13);
    if (eot >= 0) {
        tok_add_added(t, eot, "<|endoftext|>", 13, 1, 0, 0, 0);
        t->bos_id = t->eos_id = eot;
    }
    return t;
}

static int32_t config_token(Tokenizer *t, const JsonValue *v, const char *path, const char *field) {
    if (!v || v->type == JSON_NULL) return -1;
    const char *s = jstr(v);
    if (!s) s = jstr(json_get(v, "content"));
    CHECK(s, "%s: %s is neither a string nor {\"content\": ...}", path, field);
    int32_t id = tokenizer_token_id(t, s);
    CHECK(id >= 0, "%s: %s \"%.60s\" is not a token of the tokenizer", path, field, s);
    return id;
}

void tok_apply_config(Tokenizer *t, const char *dir) {
    char *path = path_join(dir, "tokenizer_config.json");
    if (!file_exists(path)) {
        free(path);
        if (t->bos_id < 0) t->bos_id = tokenizer_token_id(t, "<|begin_of_text|>");
        if (t->eos_id < 0) t->eos_id = tokenizer_token_id(t, "<|end_of_text|>");
        if (t->model != TOKM_BYTE_BPE || tokenizer_token_id(t, "<|begin_of_text|>") >= 0) t->wants_bos = 1;
        return;
    }
    char *text;
    JsonDoc doc;
    load_json(path, &text, &doc);
    CHECK(doc.root->type == JSON_OBJECT, "%s: not a JSON object", path);
    int32_t bos = config_token(t, json_get(doc.root, "bos_token"), path, "bos_token");
    int32_t eos = config_token(t, json_get(doc.root, "eos_token"), path, "eos_token");
    if (bos >= 0) t->bos_id = bos;
    if (eos >= 0) t->eos_id = eos;
    const JsonValue *ab = json_get(doc.root, "add_bos_token");
    if (ab && ab->type == JSON_BOOL) t->wants_bos = ab->boolean;
    else if (!t->wants_bos) t->wants_bos = bos >= 0;
    json_free(&doc);
    free(text);
    free(path);
}
