// Token shards: a 256-byte versioned header, then the tokens as little-endian u16 or u32.
//
//   offset size field
//        0    8 magic "AOTOKSHD"
//        8    4 version (1)
//       12    4 token width in bytes (2 or 4; 2 when every id fits)
//       16    4 vocab size the ids were made for (every id < vocab size)
//       20    4 document separator id (written before each document), or 0xFFFFFFFF
//       24    8 token count
//       32    8 document count
//       40  216 zero
//
// Fields are read one by one (never fread into a struct). A shard that is truncated, has a
// wrong magic or version, a token count that does not match the file size, or an id >= the
// vocab size is refused with the file named.
#ifndef LLAMA_AO_DATA_SHARD_H
#define LLAMA_AO_DATA_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "../common/fileio.h"

#define SHARD_MAGIC "AOTOKSHD"
#define SHARD_VERSION 1u
#define SHARD_HEADER_BYTES 256u
#define SHARD_NO_SEP 0xFFFFFFFFu

typedef struct {
    AtomicFile af;
    uint32_t width, vocab, sep;
    uint64_t count, docs;
} ShardWriter;

// Opens path for writing (atomically: it appears under its name only at close).
// sep_id < 0: no separator.
void shard_writer_open(ShardWriter *w, const char *path, int32_t vocab_size, int32_t sep_id);
// Appends one document: the separator (if any), then the ids. Fails on an id out of range.
void shard_writer_doc(ShardWriter *w, const int32_t *ids, size_t n);
// Appends ids to the current document.
void shard_writer_append(ShardWriter *w, const int32_t *ids, size_t n);
void shard_writer_close(ShardWriter *w);

typedef struct {
    MappedFile mf;
    char *path;
    const uint8_t *tokens;
    uint32_t width, vocab, sep;
    uint64_t count, docs;
} Shard;

// Maps and validates a shard; model_vocab > 0 also requires header vocab <= model_vocab.
// Every id is checked (one pass, memory speed).
void shard_open(Shard *s, const char *path, int32_t model_vocab);
void shard_close(Shard *s);
static inline uint32_t shard_token(const Shard *s, uint64_t i) {
    const uint8_t *p = s->tokens + i * s->width;
    return s->width == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8
                         : (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif
