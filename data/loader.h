// Training data loader over token shards.
//
// A shard of N tokens holds floor((N - 1) / T) samples; sample j is tokens [j*T, j*T + T],
// giving inputs [0, T) and targets [1, T]. One global stream of samples is consumed: per
// epoch the shard order and, within a shard, the sample order are permuted by RNGs derived
// from (seed, epoch, shard) only, so the stream is a pure function of the seed. Each step
// takes B * world samples; rank r gets samples [r*B, (r+1)*B) of them, so ranks are
// disjoint and together cover the stream. The state (epoch, shard cursor, sample cursor,
// seed) is three counters plus the seed: restoring it reproduces the following batches
// exactly. With shuffle off the order is file order, sequential.
#ifndef LLAMA_AO_DATA_LOADER_H
#define LLAMA_AO_DATA_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "shard.h"

typedef struct {
    uint64_t seed, epoch, shard_cursor, sample_cursor;
} LoaderState;

typedef struct {
    int B, T, rank, world, shuffle;
    Shard *shards;
    size_t n_shards;
    LoaderState st;
    // derived from st: the order of shards in this epoch and of samples in the current shard
    uint32_t *shard_order;
    uint32_t *sample_order;
    uint64_t n_samples;  // of the current shard
    uint64_t perm_epoch, perm_shard;  // what sample_order was built for (UINT64_MAX: none)
} DataLoader;

// paths: shard files (the loader keeps them open). model_vocab: every id must be below it.
void loader_init(DataLoader *dl, const char *const *paths, size_t n_paths, int32_t model_vocab, int B, int T,
                 int rank, int world, uint64_t seed, int shuffle);
void loader_free(DataLoader *dl);
// Fills inputs[B*T] and targets[B*T] for this rank and advances the global stream.
void loader_next(DataLoader *dl, int32_t *inputs, int32_t *targets);
LoaderState loader_get_state(const DataLoader *dl);
// Fails when the state does not fit this loader (other seed, cursor out of range).
void loader_set_state(DataLoader *dl, LoaderState st);
// State files: "AOLDRST1", u32 version, then seed, epoch, shard cursor, sample cursor as u64,
// and B, T, world, n_shards as u32 so a resume with another layout is caught. Written atomically.
void loader_save_state(const DataLoader *dl, const char *path);
void loader_load_state(DataLoader *dl, const char *path);

#endif
