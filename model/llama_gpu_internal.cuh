// What the files of the GPU model share (llama_gpu.cu: memory, forward, backward;
// llama_gpu_step.cu: the optimizer step). Not for use outside model/.
#pragma once
#include "llama_gpu.cuh"

// Waits for the compute stream: through the multi-GPU hook when one is set (it polls for failed
// peers), else plainly.
void lg_sync(LlamaGpu *m, GpuCtx *ctx, const char *what);

// Offload (llama_gpu_step.cu): plans the overlapped step's slices, streams and events (init);
// whether this backward streams each bucket's gradients down; queues bucket `layer`'s copies
// down (layer < 0: the global tensors) once what final_on holds so far is done.
void lg_offload_plan_slices(LlamaGpu *m);
int lg_streaming(const LlamaGpu *m);
void lg_offload_queue_down(LlamaGpu *m, cudaStream_t final_on, int layer);

// --optim-overlap (llama_gpu_step.cu): the optimizer stream and events (init: only when the
// overlap is in effect, which it decides: m->overlap), their release; the compute stream waits
// for stage s of a pending overlapped step (the forward, before the first kernel reading stage
// s's weights; the last stage, n_layers + 1, ends the pending step).
void lg_optim_init(LlamaGpu *m);
void lg_optim_free(LlamaGpu *m);
void lg_optim_use(LlamaGpu *m, GpuCtx *ctx, int stage);
