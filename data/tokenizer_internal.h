// Shared between the tokenizer's .c files (core, loaders); not a public API.
#ifndef LLAMA_AO_DATA_TOKENIZER_INTERNAL_H
#define LLAMA_AO_DATA_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "pretok.h"
#include "tokenizer.h"

typedef enum {
    TOKM_BYTE_BPE = 1,  // byte-level BPE with ranked merges (GPT-2, Llama 3, Qwen2; tiktoken)
    TOKM_CHAR_BPE,      // HF BPE over characters with ranked merges and byte_fallback (HF Llama 2)
    TOKM_SPM_BPE,       // sentencepiece BPE by piece scores (tokenizer.model)
} TokModel;

enum { SPM_PREFIX_NONE = 0, SPM_PREFIX_ALWAYS = 1, SPM_PREFIX_FIRST = 2 };
// TOKA_MODEL: in the model's vocabulary (looked up by BPE); TOKA_ADDED: an added token.
enum { TOKA_SPECIAL = 1, TOKA_ADDED = 2, TOKA_BYTE = 4, TOKA_UNUSED = 8, TOKA_PRESENT = 16, TOKA_MODEL = 32 };

typedef struct {
    int32_t id;
    uint32_t off, len;  // content in the blob
    uint8_t special, lstrip, rstrip, single_word;
} AddedTok;

struct Tokenizer {
    TokModel model;
    char *path;
    int32_t n_vocab;
    // id -> bytes of the token (raw bytes, byte-level mapping undone)
    uint32_t *tok_off, *tok_len;
    uint8_t *tok_attr;
    // What decoding prints when it differs from the token string (sentencepiece-style
    // vocabularies: ▁ -> space, <0xNN> -> the byte); NULL when the same.
    uint32_t *dec_off, *dec_len;
    char *blob;
    size_t blob_len, blob_cap;
    // model vocabulary: bytes -> id, open addressing over ids (-1 empty)
    int32_t *vhash;
    size_t vhash_mask;
    // merges: key (left << 32 | right) -> (priority << 32 | merged id); UINT64_MAX empty
    uint64_t *mkeys, *mvals;
    size_t mmask, n_merges;
    int32_t byte_id[256];  // byte-level: id of each single byte; byte_fallback: <0xNN> ids
    int ignore_merges;
    PretokKind pretok;
    int add_prefix_space;  // ByteLevel(add_prefix_space)
    // sentencepiece-style text handling
    int spm_prefix;        // prepend ▁: SPM_PREFIX_* (add_dummy_prefix, Prepend, Metaspace)
    int spm_prefix_check;  // Metaspace: only when the text does not already start with ▁
    int spm_escape_ws;     // ' ' -> ▁
    int spm_split;         // Metaspace split=true: a piece starts at every ▁
    int spm_collapse_ws;   // sentencepiece remove_extra_whitespaces
    int byte_fallback;
    int fuse_unk;
    int32_t unk_id;
    float *scores;  // TOKM_SPM_BPE
    // added tokens, longest first within a first byte
    AddedTok *added;
    size_t n_added;
    uint32_t added_bucket[257];  // added[added_bucket[b] .. added_bucket[b+1]) start with byte b
    int32_t bos_id, eos_id, eot_id;
    int wants_bos;
    int nfc;  // normalizer NFC (HF's: unicode_nfc NFC_HF) on each segment between added tokens
};

static inline size_t hash_u64(uint64_t k) { return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20); }

// --- building (tokenizer_core.c) ---
Tokenizer *tok_new(const char *path, TokModel model, int32_t n_vocab);
// Sets the bytes of id (stored in the blob) and marks it present and in the model vocab.
void tok_set_bytes(Tokenizer *t, int32_t id, const char *bytes, size_t len);
// Appends bytes to the blob; returns their offset.
uint32_t tok_blob_add(Tokenizer *t, const char *bytes, size_t len);
// Sets what decoding prints for id (allocates the dec arrays on first use).
void tok_set_decode(Tokenizer *t, int32_t id, const char *bytes, size_t len);
// Builds the vocab hash over the model-vocabulary ids. Fails (naming the file) on a
// duplicate token string.
void tok_build_vocab_hash(Tokenizer *t);
int32_t tok_vocab_find(const Tokenizer *t, const char *s, size_t len);
// Reserves the merge table for about n merges; tok_add_merge keeps the first entry for a
// repeated pair (later duplicates in merges.txt never fire in HF either).
void tok_merges_reserve(Tokenizer *t, size_t n);
void tok_add_merge(Tokenizer *t, int32_t left, int32_t right, uint32_t prio, int32_t merged);
void tok_add_added(Tokenizer *t, int32_t id, const char *content, size_t len, int special, int lstrip, int rstrip,
                   int single_word);
// Sorts added tokens into first-byte buckets and resolves bos/eos/eot defaults.
void tok_finish(Tokenizer *t);

// GPT-2's bytes_to_unicode: the printable character each byte is shown as in byte-level
// vocabularies, and the inverse (-1 for code points that are not byte stand-ins).
uint32_t bytelevel_char(uint8_t b);
// Byte-level token spelling -> raw bytes into out (room for n); a spelling with a character
// outside the byte map keeps its UTF-8 bytes, as HF's ByteLevel decoder does. Returns the length.
size_t bytelevel_to_raw(const char *s, size_t n, char *out);
int bytelevel_byte(uint32_t cp);

// --- loaders ---
Tokenizer *tok_load_hf_json(const char *path);
Tokenizer *tok_load_gpt2_files(const char *encoder_json, const char *vocab_bpe);
Tokenizer *tok_load_spm_model(const char *path, const unsigned char *data, size_t size);
Tokenizer *tok_load_tiktoken(const char *path, const char *data, size_t size);
// Applies tokenizer_config.json from dir (if present): bos/eos tokens, add_bos_token.
void tok_apply_config(Tokenizer *t, const char *dir);

// --- encoding pieces ---
// tokenizer_encode flag: the text continues a document right after a '\n' (corpus.c's chunks):
// no dummy prefix / Prepend / Metaspace / ByteLevel prefix space at its start.
#define TOK_INTERNAL_CONTINUE 0x100
// Whether cutting a text right after a '\n' that follows a visible ASCII character and is
// followed by an ASCII letter or digit, and encoding the second part with
// TOK_INTERNAL_CONTINUE, always gives the ids of the whole text (encoded with
// TOK_ALLOW_SPECIAL). See tokenizer_core.c for the argument.
int tok_newline_cut_safe(const Tokenizer *t);
// sentencepiece BPE by scores over one segment (tokenizer_spm.c); at_start: the segment
// begins the text (the dummy prefix goes there only).
void spm_encode_segment(const Tokenizer *t, const uint8_t *s, size_t n, int at_start, TokIds *out);

#endif
