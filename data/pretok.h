// Pre-tokenizer regexes, implemented by hand with the exact semantics Oniguruma gives them
// in Hugging Face tokenizers (leftmost alternative wins, greedy quantifiers with
// backtracking, `\s` = White_Space). Each function returns the end of the match that starts
// at byte i; for these patterns every position starts a match, so the pieces tile the text.
#ifndef LLAMA_AO_DATA_PRETOK_H
#define LLAMA_AO_DATA_PRETOK_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    PRETOK_NONE = 0,  // the whole segment is one piece
    PRETOK_GPT2,      // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    PRETOK_LLAMA3,    // cl100k: (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|...
    PRETOK_QWEN2,     // the Llama 3 pattern with \p{N} (single digits)
    PRETOK_GPT2_DIGITS,  // HF Sequence[Digits(individual_digits), ByteLevel(use_regex)]: every
                         // \p{N} character alone, the GPT-2 pattern within the runs between (SmolLM)
} PretokKind;

// The regex sources as they appear in tokenizer.json, to recognise a Split pre-tokenizer.
extern const char *const PRETOK_PATTERN_GPT2;
extern const char *const PRETOK_PATTERN_LLAMA3;
extern const char *const PRETOK_PATTERN_QWEN2;

// End (exclusive) of the piece starting at s[i], i < n.
size_t pretok_next(PretokKind kind, const uint8_t *s, size_t n, size_t i);

#endif
