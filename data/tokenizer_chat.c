// The Llama 3 instruct chat template. Its Jinja source (tokenizer_config.json):
//   bos_token + for each message: '<|start_header_id|>' + role + '<|end_header_id|>\n\n'
//   + content | trim + '<|eot_id|>'; then '<|start_header_id|>assistant<|end_header_id|>\n\n'.
// Rendering that string and encoding it with special tokens allowed gives the same ids as
// encoding the pieces one by one, because every special token ends a pre-tokenizer piece;
// encoding piece by piece keeps special-token text inside a message from becoming special.
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "tokenizer_internal.h"
#include "unicode.h"

static int is_trim_space(const uint8_t *s, size_t n, size_t i, int *l) {
    // Jinja's trim is Python str.strip(): Unicode whitespace per str.isspace().
    uint32_t cp = utf8_decode(s, n, i, l);
    if (cp == UTF8_INVALID) return 0;
    if (cp >= 0x1C && cp <= 0x1F) return 1;  // isspace() but not White_Space
    return (ucat(cp) & UCAT_WS) != 0;
}

void tokenizer_chat_llama3(const Tokenizer *t, const ChatMessage *msgs, size_t n, int add_generation_prompt,
                           TokIds *out) {
    int32_t sh = tokenizer_token_id(t, "<|start_header_id|>"), eh = tokenizer_token_id(t, "<|end_header_id|>");
    int32_t eot = tokenizer_token_id(t, "<|eot_id|>");
    CHECK(sh >= 0 && eh >= 0 && eot >= 0, "%s: not a Llama 3 chat tokenizer (no header / eot tokens)", t->path);
    if (t->bos_id >= 0) tok_ids_push(out, t->bos_id);
    for (size_t m = 0; m <= n; m++) {
        if (m == n && !add_generation_prompt) break;
        const char *role = m < n ? msgs[m].role : "assistant";
        tok_ids_push(out, sh);
        tokenizer_encode(t, role, strlen(role), 0, out);
        tok_ids_push(out, eh);
        if (m == n) {
            tokenizer_encode(t, "\n\n", 2, 0, out);
            break;
        }
        // "\n\n" + trimmed content is one text run: the newlines may merge with what follows.
        const uint8_t *c = (const uint8_t *)msgs[m].content;
        size_t cn = strlen(msgs[m].content), b = 0, e = cn;
        int l;
        while (b < e && is_trim_space(c, cn, b, &l)) b += (size_t)l;
        while (e > b) {
            size_t p = e - 1;
            while (p > b && (c[p] & 0xC0) == 0x80 && e - p < 4) p--;
            if (!is_trim_space(c, cn, p, &l) || p + (size_t)l != e) break;
            e = p;
        }
        size_t len = 2 + (e - b);
        char *buf = ao_malloc(len + 1);
        memcpy(buf, "\n\n", 2);
        memcpy(buf + 2, c + b, e - b);
        tokenizer_encode(t, buf, len, 0, out);
        free(buf);
        tok_ids_push(out, eot);
    }
}
