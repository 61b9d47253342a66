// Tokenizers for Llama-family models, exact with the reference implementations:
//   - Hugging Face tokenizer.json: byte-level BPE (GPT-2, Llama 3.x, Qwen2 pre-tokenizer
//     regexes) and sentencepiece-style BPE (Metaspace / Prepend+Replace normalizer,
//     byte_fallback; HF Llama 2 / TinyLlama), with added/special tokens;
//   - GPT-2's original encoder.json + vocab.bpe;
//   - sentencepiece tokenizer.model (Llama 2; the protobuf read directly);
//   - Meta's tiktoken-format tokenizer.model of Llama 3 (base64 token + rank per line).
// A loaded Tokenizer is read-only: encode/decode may run on many threads at once.
// Every problem with an input file fails through CHECK with the file named.
#ifndef LLAMA_AO_DATA_TOKENIZER_H
#define LLAMA_AO_DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Tokenizer Tokenizer;

// path: a tokenizer.json; a directory holding tokenizer.json, tokenizer.model, or
// encoder.json + vocab.bpe; a sentencepiece or tiktoken tokenizer.model file; or an
// encoder.json (vocab.bpe beside it). A tokenizer_config.json next to the file supplies
// bos/eos tokens and add_bos_token/add_eos_token.
Tokenizer *tokenizer_load(const char *path);
void tokenizer_free(Tokenizer *tok);

// One more than the largest id (ids may have holes; holes decode to nothing).
int32_t tokenizer_vocab_size(const Tokenizer *tok);
// -1 when the tokenizer has no such token. eot is <|eot_id|> (Llama 3 chat turns end
// with it) and falls back to eos.
int32_t tokenizer_bos_id(const Tokenizer *tok);
int32_t tokenizer_eos_id(const Tokenizer *tok);
int32_t tokenizer_eot_id(const Tokenizer *tok);
// Whether sequences should start with BOS: tokenizer_config.json's add_bos_token, else a
// TemplateProcessing post-processor that adds one, else 1 when a bos token is configured
// (Llama models are trained with it even where the HF post-processor omits it).
int tokenizer_wants_bos(const Tokenizer *tok);
// Id of an exact token string (added tokens first, then the vocabulary); -1 if absent.
int32_t tokenizer_token_id(const Tokenizer *tok, const char *text);
// Whether an id is a special/control token (skipped by the streaming decoder on request).
int tokenizer_is_special(const Tokenizer *tok, int32_t id);

// A growable id list. Zero-initialise, free with tok_ids_free.
typedef struct {
    int32_t *ids;
    size_t n, cap;
} TokIds;
void tok_ids_push(TokIds *v, int32_t id);
void tok_ids_free(TokIds *v);

enum {
    TOK_ALLOW_SPECIAL = 1,  // special tokens written in the text become their ids (as HF does)
    TOK_ADD_BOS = 2,        // prepend BOS (if the tokenizer has one)
    TOK_ADD_EOS = 4,        // append EOS
};

// Encodes text[0..len) (any bytes; invalid UTF-8 is kept byte-exact by byte-level and
// byte-fallback models) and appends the ids to out. With flags = TOK_ALLOW_SPECIAL the
// result equals HF Tokenizer.encode(text, add_special_tokens=False).
void tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int flags, TokIds *out);

// The raw bytes a token stands for (byte-level BPE: the bytes; sentencepiece: ▁ as a space,
// <0xNN> as that byte; added tokens: their text). Never NULL; *len may be 0.
const char *tokenizer_token_bytes(const Tokenizer *tok, int32_t id, size_t *len);
// Decodes ids into a fresh NUL-terminated byte string (caller frees), *len without the NUL.
// skip_special drops special/control tokens. Bytes are concatenated raw (not made valid
// UTF-8), so decode(encode(x)) == x for lossless tokenizers; sentencepiece drops the one
// leading space the encoder added.
char *tokenizer_decode(const Tokenizer *tok, const int32_t *ids, size_t n, int skip_special, size_t *len);

// Streaming decode for printing while generating: push one id at a time and get the text
// that is now complete. A token that ends inside a multi-byte UTF-8 character yields
// nothing until the character completes; bytes that can never form a character come out
// as U+FFFD (one per maximal invalid subpart, as Rust's from_utf8_lossy and HF decode do).
typedef struct {
    const Tokenizer *tok;
    int skip_special;
    int at_start;  // sentencepiece: the first piece's leading space is dropped
    uint8_t pend[4];
    int npend;
    char *buf;
    size_t cap;
} TokStream;
void tok_stream_init(TokStream *st, const Tokenizer *tok, int skip_special);
// Returns NUL-terminated text (valid until the next call on st); *len gets its length.
const char *tok_stream_push(TokStream *st, int32_t id, size_t *len);
// Whatever is pending at the end of generation (an incomplete character becomes U+FFFD).
const char *tok_stream_flush(TokStream *st, size_t *len);
void tok_stream_free(TokStream *st);

// Llama 3 instruct chat template, exactly as its tokenizer_config.json's Jinja template
// renders it: BOS, then per message "<|start_header_id|>ROLE<|end_header_id|>\n\n" +
// content with surrounding whitespace trimmed + "<|eot_id|>", then (if add_generation_prompt)
// the assistant header. Appends ids to out. Fails if the tokenizer lacks the header tokens.
typedef struct {
    const char *role;
    const char *content;
} ChatMessage;
void tokenizer_chat_llama3(const Tokenizer *tok, const ChatMessage *msgs, size_t n, int add_generation_prompt,
                           TokIds *out);

#ifdef __cplusplus
}
#endif
#endif
