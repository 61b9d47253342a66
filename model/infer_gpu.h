// GPU inference (infer_llama -d cuda): the CPU inference model (model/infer_cpu.h, already
// quantized on the host by the same code, so the integers are the CPU's) uploaded to one
// GPU and run with the decode kernels of quant/qgemv.cu, a split-KV ("flash-decoding")
// attention over a bf16 (fp32, or e4m3 with a scale per head vector) KV cache, and the
// single-token decode step replayed as a CUDA graph. Activations are fp32 as on the CPU;
// unquantized linears (-q none, and the linears a mode skips) hold bf16 weights. A forward of
// more than gemm_tokens tokens per sequence (a prompt) runs its linears as cuBLASLt bf16 GEMMs
// instead (model/infer_gpu_prefill.cuh: bf16 activations, fp32 accumulation); decode steps keep
// the GEMVs, unless decode_gemm_rows asks batched steps to run as GEMMs. Several sequences may
// decode together (the benchmark's batch): they share one position.
#ifndef LLAMA_AO_MODEL_INFER_GPU_H
#define LLAMA_AO_MODEL_INFER_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "infer_cpu.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct InferGpu InferGpu;

typedef struct {
    int max_T;      // context (KV cache length)
    int max_batch;  // tokens fed at once per sequence (prompt chunk)
    int n_seq;      // sequences decoded together (1 for infer_llama)
    int kv_f32;     // KV cache in fp32 instead of bf16
    int graphs;     // replay single-token steps as CUDA graphs (default on)
    int device;
    // Added fields (zero: the defaults), after the old ones so positional initializers keep working.
    int kv_fp8;     // KV cache in e4m3 with one fp32 scale per (layer, sequence, position, KV head)
    int gemm_tokens;  // forwards of more tokens per sequence use the prefill GEMMs; 0: 16, < 0: never
    // Decode without the launch savings, for A/B runs (same bits either way): bit 0
    // (INFER_GPU_NO_FUSE) runs RMSNorm and SwiGLU as kernels of their own instead of inside the
    // next GEMV's activation prep, bit 1 (INFER_GPU_NO_PDL) launches the kernels of a GEMV
    // forward without programmatic dependent launch. The environment variable
    // LLAMA_AO_INFER_FUSE=0 sets both.
    int unfused;
    // Batched decode through GEMMs: a forward of at most gemm_tokens tokens per sequence with at
    // least this many rows (sequences x tokens) runs its bf16 linears as cuBLASLt GEMMs (bf16
    // activations, the prefill's numerics), and its int8 / fp8 / 8da4w linears too from 4x as
    // many rows (their weights dequantized to bf16 first: 2.5-4.5 bytes read and written per
    // weight instead of 1, which pays only where the GEMV's per-token work dominates); int4
    // keeps its tensor-core GEMV. 0: never (every decode row through the GEMVs, the CPU's numerics).
    int decode_gemm_rows;
} InferGpuOpts;

#define INFER_GPU_NO_FUSE 1
#define INFER_GPU_NO_PDL 2

// GPUs the CUDA runtime sees (0 when there is none or the driver is missing).
int infer_gpu_count(void);
// Uploads the model. Fails (CHECK) with a clear message on an unusable GPU or too little memory.
InferGpu *infer_gpu_create(const InferModel *im, const InferGpuOpts *o);
void infer_gpu_free(InferGpu *g);
// Feeds tokens [n_seq, n] (n <= max_batch) at the current position of every sequence and
// advances it by n. Returns host logits: all rows [n_seq * n, V] when all_logits, else the
// last token's of each sequence [n_seq, V]. Valid until the next call.
const float *infer_gpu_forward(InferGpu *g, const int32_t *tokens, int n, int all_logits);
int infer_gpu_pos(const InferGpu *g);
// Rewinds (or resets, pos = 0) the cache position; later tokens overwrite the cache.
void infer_gpu_set_pos(InferGpu *g, int pos);
// Bytes of weights held on the GPU, bytes of weights one decode step reads, total bytes allocated.
size_t infer_gpu_weight_bytes(const InferGpu *g);
size_t infer_gpu_step_bytes(const InferGpu *g);
size_t infer_gpu_alloc_bytes(const InferGpu *g);
// Bytes of the KV cache (codes and, for fp8, scales).
size_t infer_gpu_kv_bytes(const InferGpu *g);
// Tests: the cached k and v of one layer, sequence and position, dequantized to fp32 [KV heads x head_dim].
void infer_gpu_read_kv(const InferGpu *g, int layer, int seq, int pos, float *k, float *v);
// The device's name (for the run summary).
const char *infer_gpu_name(const InferGpu *g);
// How many unquantized weights were not exactly bf16 (rounded at upload); 0 for bf16 checkpoints.
size_t infer_gpu_rounded(const InferGpu *g);

#ifdef __cplusplus
}
#endif
#endif
