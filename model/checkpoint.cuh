// Training checkpoints (see checkpoint.cu for the directory layout).
#pragma once
#include "../dist/dist.cuh"
#include "llama_gpu.cuh"
extern "C" {
#include "../data/loader.h"
}

// Writes OUT_DIR/ckpt_<step>/ atomically (temp dir, DONE last, rename) and OUT_DIR/latest.
// cpu is scratch of the model's shape for the download. Without ZeRO (m->opts.zero NULL) one
// process writes everything, as it always did. With ZeRO every rank calls it: the master
// weights are gathered to rank 0 through m->grads (free between steps: they are zeroed before
// the next one), rank 0 writes the model once, each rank writes its optimizer shard, and rank 0
// completes the directory after all shards are written. dist may be NULL for one process.
void ckpt_save(const char *out_dir, int step, LlamaGpu *m, GpuCtx *ctx, LlamaModel *cpu, const DataLoader *dl,
               const char *tokenizer, const char *trainer_json, Dist *dist);
// This process's optimizer shard, DIR/optimizer.rank<r>.safetensors (part of ckpt_save).
void ckpt_save_optimizer_shard(const char *dir, int step, const LlamaGpu *m);
// A checkpoint directory, or a run directory whose "latest" names one; fails when it is
// incomplete. Returns a fresh string.
char *ckpt_resolve(const char *path);
// Loads the optimizer state of m's shard (the whole model without ZeRO) from a checkpoint
// written by any number of ranks: optimizer.safetensors (one process) or the
// optimizer.rank*.safetensors shards, re-sharding as needed. Returns the step stored with it.
int ckpt_load_optimizer(const char *dir, LlamaGpu *m);
