// Text files -> train/val token shards (what `make data` and tools/tokenize run).
#ifndef LLAMA_AO_DATA_CORPUS_H
#define LLAMA_AO_DATA_CORPUS_H

#include <stddef.h>

#include "tokenizer.h"

// Each file is one document, split at a line boundary so that its last val_fraction of
// bytes goes to OUT_PREFIX_val.bin and the rest to OUT_PREFIX_train.bin; each part is
// written as a document (separator first: BOS when the tokenizer wants one, else EOS).
// Text is encoded with special tokens matched, in chunks cut only after a '\n' that follows a
// visible ASCII character and is followed by an ASCII letter or digit, and only for tokenizers where such a cut provably never changes
// the ids (tok_newline_cut_safe: the byte-level regexes have a piece boundary there; for
// sentencepiece-style models the '\n' symbol can never merge, and later chunks get no dummy
// prefix); other tokenizers encode each part whole. Chunks run on `threads` threads (<= 0: all
// cores).
// Prints a progress line to stderr when progress is set. Returns the token counts.
void tokenize_files_to_shards(const Tokenizer *tok, const char *const *files, size_t n_files, const char *out_prefix,
                              double val_fraction, int threads, int progress, size_t *n_train, size_t *n_val);

#endif
