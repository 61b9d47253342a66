#include "shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const uint8_t *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

static void write_header(ShardWriter *w) {
    uint8_t h[SHARD_HEADER_BYTES] = {0};
    memcpy(h, SHARD_MAGIC, 8);
    put_u32(h + 8, SHARD_VERSION);
    put_u32(h + 12, w->width);
    put_u32(h + 16, w->vocab);
    put_u32(h + 20, w->sep);
    put_u64(h + 24, w->count);
    put_u64(h + 32, w->docs);
    CHECK(fwrite(h, 1, sizeof h, w->af.f) == sizeof h, "%s: write failed", w->af.path);
}

void shard_writer_open(ShardWriter *w, const char *path, int32_t vocab_size, int32_t sep_id) {
    memset(w, 0, sizeof *w);
    CHECK(vocab_size > 0, "%s: vocab size %d", path, (int)vocab_size);
    CHECK(sep_id < vocab_size, "%s: separator id %d >= vocab size %d", path, (int)sep_id, (int)vocab_size);
    char err[512];
    CHECK(atomic_open(&w->af, path, err, sizeof err), "%s", err);
    w->vocab = (uint32_t)vocab_size;
    w->width = vocab_size <= 65536 ? 2 : 4;
    w->sep = sep_id < 0 ? SHARD_NO_SEP : (uint32_t)sep_id;
    write_header(w);  // placeholder; rewritten with the counts at close
}

void shard_writer_append(ShardWriter *w, const int32_t *ids, size_t n) {
    uint8_t buf[4096];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(ids[i] >= 0 && (uint32_t)ids[i] < w->vocab, "%s: token id %d outside vocab size %u", w->af.path,
              (int)ids[i], w->vocab);
        uint32_t v = (uint32_t)ids[i];
        for (uint32_t b = 0; b < w->width; b++) buf[k++] = (uint8_t)(v >> (8 * b));
        if (k + 4 > sizeof buf) {
            CHECK(fwrite(buf, 1, k, w->af.f) == k, "%s: write failed", w->af.path);
            k = 0;
        }
    }
    if (k) CHECK(fwrite(buf, 1, k, w->af.f) == k, "%s: write failed", w->af.path);
    w->count += n;
}

void shard_writer_doc(ShardWriter *w, const int32_t *ids, size_t n) {
    if (w->sep != SHARD_NO_SEP) {
        int32_t s = (int32_t)w->sep;
        shard_writer_append(w, &s, 1);
    }
    shard_writer_append(w, ids, n);
    w->docs++;
}

void shard_writer_close(ShardWriter *w) {
    CHECK(fseek(w->af.f, 0, SEEK_SET) == 0, "%s: seek failed", w->af.path);
    write_header(w);
    char err[512];
    CHECK(atomic_close(&w->af, err, sizeof err), "%s", err);
}

void shard_open(Shard *s, const char *path, int32_t model_vocab) {
    memset(s, 0, sizeof *s);
    char err[512];
    CHECK(map_file(path, &s->mf, err, sizeof err), "%s", err);
    s->path = ao_strdup(path);
    const uint8_t *h = s->mf.data;
    CHECK(s->mf.size >= SHARD_HEADER_BYTES, "%s: truncated shard (%zu bytes, header needs %u)", path, s->mf.size,
          SHARD_HEADER_BYTES);
    CHECK(memcmp(h, SHARD_MAGIC, 8) == 0, "%s: wrong magic (not a token shard)", path);
    uint32_t version = get_u32(h + 8);
    CHECK(version == SHARD_VERSION, "%s: shard version %u, this build reads version %u", path, version, SHARD_VERSION);
    s->width = get_u32(h + 12);
    s->vocab = get_u32(h + 16);
    s->sep = get_u32(h + 20);
    s->count = get_u64(h + 24);
    s->docs = get_u64(h + 32);
    CHECK(s->width == 2 || s->width == 4, "%s: token width %u (must be 2 or 4)", path, s->width);
    CHECK(s->vocab > 0 && (s->width == 4 || s->vocab <= 65536), "%s: vocab size %u does not fit width %u", path,
          s->vocab, s->width);
    CHECK(model_vocab <= 0 || s->vocab <= (uint32_t)model_vocab,
          "%s: made for a vocabulary of %u tokens, the model has %d", path, s->vocab, (int)model_vocab);
    CHECK(s->sep == SHARD_NO_SEP || s->sep < s->vocab, "%s: separator id %u >= vocab size %u", path, s->sep, s->vocab);
    size_t body;
    CHECK(s->count < ((uint64_t)1 << 48) && ao_mul_size((size_t)s->count, s->width, &body) &&
              s->mf.size - SHARD_HEADER_BYTES == body,
          "%s: header says %llu tokens (%llu bytes) but the file holds %zu bytes of tokens: truncated or corrupt", path,
          (unsigned long long)s->count, (unsigned long long)s->count * s->width, s->mf.size - SHARD_HEADER_BYTES);
    s->tokens = h + SHARD_HEADER_BYTES;
    for (uint64_t i = 0; i < s->count; i++) {
        uint32_t v = shard_token(s, i);
        CHECK(v < s->vocab, "%s: token %llu has id %u >= vocab size %u", path, (unsigned long long)i, v, s->vocab);
    }
}

void shard_close(Shard *s) {
    unmap_file(&s->mf);
    free(s->path);
    s->path = NULL;
}
