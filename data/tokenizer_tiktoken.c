// Meta's tiktoken-format tokenizer.model for Llama 3: one "base64(token bytes) rank" per
// line; the special tokens are not in the file and follow Meta's tokenizer.py. tiktoken's
// BPE merges the adjacent pair whose concatenation has the lowest rank, which is HF's
// ranked-merge BPE with a merge (a, b) -> ab of priority rank(ab) for every split of every
// token into two tokens.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "tokenizer_internal.h"

static int b64_val(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

// Decodes standard padded base64; returns the length or -1 when malformed.
static long b64_decode(const char *s, size_t n, uint8_t *out) {
    if (n % 4) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            if (s[i + j] == '=' && i + 4 == n && j >= 2) { v[j] = 0; pad++; continue; }
            if (pad) return -1;
            v[j] = b64_val(s[i + j]);
            if (v[j] < 0) return -1;
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[k++] = (uint8_t)(x >> 16);
        if (pad < 2) out[k++] = (uint8_t)(x >> 8);
        if (pad < 1) out[k++] = (uint8_t)x;
    }
    return (long)k;
}

Tokenizer *tok_load_tiktoken(const char *path, const char *data, size_t size) {
    size_t lines = 0;
    for (size_t i = 0; i < size; i++) lines += data[i] == '\n';
    if (size && data[size - 1] != '\n') lines++;
    CHECK(lines > 0 && lines < (1u << 24), "%s: not a tiktoken file (%zu lines)", path, lines);
    const int n_special = 256;  // Meta's num_reserved_special_tokens
    Tokenizer *t = tok_new(path, TOKM_BYTE_BPE, (int32_t)(lines + (size_t)n_special));
    t->pretok = PRETOK_LLAMA3;
    t->ignore_merges = 1;  // tiktoken looks a whole piece up before merging
    uint8_t *buf = ao_malloc(size + 4);
    size_t pos = 0, lineno = 0;
    int32_t n_base = 0;
    while (pos < size) {
        const char *line = data + pos;
        const char *nl = memchr(line, '\n', size - pos);
        size_t ln = nl ? (size_t)(nl - line) : size - pos;
        pos += ln + 1;
        lineno++;
        if (ln == 0) continue;
        const char *sp = memchr(line, ' ', ln);
        CHECK(sp, "%s: line %zu is not \"base64 rank\"", path, lineno);
        long bl = b64_decode(line, (size_t)(sp - line), buf);
        CHECK(bl > 0, "%s: line %zu has malformed base64", path, lineno);
        char num[16];
        size_t nn = ln - (size_t)(sp - line) - 1;
        CHECK(nn > 0 && nn < sizeof num, "%s: line %zu has a bad rank", path, lineno);
        memcpy(num, sp + 1, nn);
        num[nn] = 0;
        char *endp;
        long rank = strtol(num, &endp, 10);
        CHECK(*endp == 0 && rank >= 0 && rank < (long)lines, "%s: line %zu has a bad rank \"%s\"", path, lineno, num);
        tok_set_bytes(t, (int32_t)rank, (const char *)buf, (size_t)bl);
        if ((int32_t)rank + 1 > n_base) n_base = (int32_t)rank + 1;
    }
    free(buf);
    for (int32_t id = 0; id < n_base; id++)
        CHECK(t->tok_attr[id] & TOKA_PRESENT, "%s: rank %d is missing", path, (int)id);
    tok_build_vocab_hash(t);
    tok_merges_reserve(t, (size_t)n_base * 8);
    for (int32_t id = 0; id < n_base; id++) {
        const char *s = t->blob + t->tok_off[id];
        size_t n = t->tok_len[id];
        for (size_t k = 1; k < n; k++) {
            int32_t a = tok_vocab_find(t, s, k), b = tok_vocab_find(t, s + k, n - k);
            if (a >= 0 && b >= 0) {
                if (t->n_merges * 2 + 2 >= t->mmask) FAIL("%s: too many merges", path);
                tok_add_merge(t, a, b, (uint32_t)id, id);
            }
        }
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = tok_vocab_find(t, &c, 1);
        CHECK(t->byte_id[b] >= 0, "%s: no token for byte 0x%02X", path, b);
    }
    static const char *first[10] = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                    "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
                                    "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
                                    "<|reserved_special_token_4|>", "<|eot_id|>"};
    t->n_vocab = n_base + n_special;
    for (int i = 0; i < n_special; i++) {
        char name[64];
        if (i < 10) snprintf(name, sizeof name, "%s", first[i]);
        else snprintf(name, sizeof name, "<|reserved_special_token_%d|>", i - 5);
        tok_add_added(t, n_base + i, name, strlen(name), 1, 0, 0, 0);
    }
    t->bos_id = n_base;
    t->eos_id = n_base + 1;
    t->wants_bos = 1;
    return t;
}
