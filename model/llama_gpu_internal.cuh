// What the files of the GPU model share (llama_gpu.cu: memory, forward, backward;
// llama_gpu_step.cu: the optimizer step; llama_gpu_zero3.cu: ZeRO-3's weight gathers). Not for
// use outside model/.
#pragma once
#include "llama_gpu.cuh"

// Carves one allocation: a first pass with base NULL counts the bytes, a second hands out pointers.
struct Carver {
    char *base;
    size_t used;
    template <typename T> T *take(size_t count) {
        size_t off = (used + 255) & ~(size_t)255;  // 256-byte alignment for vector loads and cuBLASLt
        used = off + count * sizeof(T);
        return base ? (T *)(base + off) : nullptr;
    }
};

// Waits for the compute stream: through the multi-GPU hook when one is set (it polls for failed
// peers), else plainly.
void lg_sync(LlamaGpu *m, GpuCtx *ctx, const char *what);

// Offload (llama_gpu_step.cu): plans the overlapped step's slices, streams and events (init);
// whether this backward streams each bucket's gradients down; queues bucket `layer`'s copies
// down (layer < 0: the global tensors) once what final_on holds so far is done.
void lg_offload_plan_slices(LlamaGpu *m);
int lg_streaming(const LlamaGpu *m);
void lg_offload_queue_down(LlamaGpu *m, cudaStream_t final_on, int layer);

// ZeRO-3 (llama_gpu_zero3.cu). Buffers: k = 0, 1 the two layer slots (layer l uses slot l % 2),
// k = 2 the global tensors (bucket n_layers).
// (Their sizes: zero3_layer_buf_elems / zero3_global_buf_elems, dist/zero.cuh.)
// Points m->w / m->wl into the buffers (every pointer is static: a layer always uses the same
// slot) and creates the events and the own gather stream. The buffers are carved already.
void lg_zero3_init(LlamaGpu *m);
void lg_zero3_free(LlamaGpu *m);
// Queues the gather of bucket b (layer b, or n_layers: the global tensors) into its buffer unless
// the buffer holds it already (gathered since the shard last changed). The gather starts once
// the compute stream has done what is queued on it now: the step that wrote the shard and the
// last reader of the buffer. Every rank makes the same calls in the same order (collectives).
void lg_zero3_fetch(LlamaGpu *m, GpuCtx *ctx, int b);
// The compute stream waits until bucket b's gather is in its buffer (fetched before).
void lg_zero3_use(LlamaGpu *m, GpuCtx *ctx, int b);

// Tests (LlamaGpu.zdelay_ns): a kernel that spins ns nanoseconds on s (nothing when ns <= 0).
void lg_spin(long long ns, cudaStream_t s);

// ZeRO-1/2 --zero-gather-overlap (llama_gpu_gather.cu): the events, pending flags and own gather
// stream (init: only when the schedule is in effect, which it decides: m->zg); the compute stream
// waits for bucket b's all-gather if it is pending (the forward, before the bucket's first use).
void lg_zg_init(LlamaGpu *m);
void lg_zg_free(LlamaGpu *m);
void lg_zg_use(LlamaGpu *m, GpuCtx *ctx, int b);
// Stream s waits for every pending bucket (nothing is cleared: s is not the compute stream).
void lg_zg_stream_wait(LlamaGpu *m, cudaStream_t s);

// ZeRO-3 --fp8-allgather (llama_gpu_zero3.cu; LlamaGpu.qshard ... has the scheme). _place: the bytes of
// its buffers for m->cfg, opts, B, T and shard_n (sets ag_slot and n_ag); with base, their pointers.
// _init (after lg_zero3_init and lin_wcache): allocates and zeroes them, numbers the fp8 tensors and
// points their parts' lin_wcache entries at the code slots.
size_t lg_fp8ag_place(LlamaGpu *m, void *base);
void lg_fp8ag_init(LlamaGpu *m, GpuCtx *ctx);

// --optim-overlap (llama_gpu_step.cu): the optimizer stream and events (init: only when the
// overlap is in effect, which it decides: m->overlap), their release; the compute stream waits
// for stage s of a pending overlapped step (the forward, before the first kernel reading stage
// s's weights; the last stage, n_layers + 1, ends the pending step).
void lg_optim_init(LlamaGpu *m);
void lg_optim_free(LlamaGpu *m);
void lg_optim_use(LlamaGpu *m, GpuCtx *ctx, int stage);
