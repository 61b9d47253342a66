// Checkers shared by the tokenizer test programs (test_tokenizer.c: byte-level BPE, tiktoken,
// regex pre-tokenizers, chat template; test_tokenizer_spm.c: sentencepiece and its HF forms):
// exactness against fixtures from test/ref/tokenizer_fixtures.py, corpus digests, chunked shards.
#ifndef LLAMA_AO_TOKENIZER_CHECKS_H
#define LLAMA_AO_TOKENIZER_CHECKS_H

#include <stddef.h>

#include "../common/json.h"
#include "../data/tokenizer.h"

// A tiny byte-level BPE tokenizer.json: bytes a b c space (\u0120), merges a b -> ab, ab c -> abc, and
// c3 a9 -> e-acute; added tokens <|end|> (7) and <pad> (8).
extern const char *TOKENIZER_TINY_BPE;

double now_s(void);
// NAME inside the test's temporary directory (test_tmpdir("tok")), malloc'd.
char *tmp_path(const char *name);
void write_file(const char *path, const void *data, size_t n);
// Parses test/fixtures/tokenizer/NAME; *text holds the bytes the document points into.
JsonDoc load_fixture(const char *name, char **text);

// What the exactness checks read from ../shared/data: the directory, the fixture texts
// (texts.json) and the corpora for the chunked-shards checks.
typedef struct {
    const char *shared;
    JsonDoc texts_doc;
    char *texts_buf;
    const JsonValue *texts;
    char austen[512];
    char *tricky;  // tricky_corpus()
} TokData;

// 0 when ../shared/data is absent (the caller skips); else loads texts.json and writes the
// tricky corpus. tok_data_close frees it all.
int tok_data_open(TokData *td);
void tok_data_close(TokData *td);

// Compares our ids with a fixture for every text; checks round trips when lossless. A fixture
// is either a list of id lists (one per text of texts.json) or an object {"ids": [...],
// "decode": {"i": what HF decodes text i's ids to, where that is not the text itself},
// "texts": [...] (instead of texts.json)}.
void check_fixture(Tokenizer *t, const TokData *td, const char *fixture, int flags, int lossless);
// Encodes every line of corpora/CORPUS.txt and compares count + FNV-1a digest with
// corpus_digest.json's KEY.
void check_corpus(Tokenizer *t, const TokData *td, const char *corpus, const char *key, int flags);
// corpus -> shards with 2 threads equals the text encoded whole (train part, BOS first).
void check_shards_whole(Tokenizer *t, const char *corpus, const char *name, int want_safe);
// Writes ~1.5 MB of lines whose breaks are mostly ones a chunk must not be cut at; the path.
char *tricky_corpus(void);

#endif
