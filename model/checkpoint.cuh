// Training checkpoints (see checkpoint.cu for the directory layout).
#pragma once
#include "llama_gpu.cuh"
extern "C" {
#include "../data/loader.h"
}

// Writes OUT_DIR/ckpt_<step>/ atomically (temp dir, DONE last, rename) and OUT_DIR/latest.
// cpu is scratch of the model's shape for the download.
void ckpt_save(const char *out_dir, int step, LlamaGpu *m, LlamaModel *cpu, const DataLoader *dl, const char *tokenizer,
               const char *trainer_json);
// A checkpoint directory, or a run directory whose "latest" names one; fails when it is
// incomplete. Returns a fresh string.
char *ckpt_resolve(const char *path);
// Loads the AdamW moments into m; returns the step stored with them.
int ckpt_load_optimizer(const char *dir, LlamaGpu *m);
