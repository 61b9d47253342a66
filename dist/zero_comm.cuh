// The communication of one ZeRO-1/2/3 data-parallel step, on the model's flat buffers (bf16
// parameters and fp32 gradients in parameter-table order; ZeRO-1/2: all parameters on every
// rank; ZeRO-3: only the rank's shard of the bf16 parameters, the gradients whole as ZeRO-2):
//
//   forward and backward (ZeRO-3)      before each layer (and the global tensors) is used, its
//                                      weights are all-gathered from the shards into a per-layer
//                                      buffer (LlamaGpu's gather hook: zero_params_fetch), on the
//                                      communication stream, one layer ahead of the compute
//
//   backward of the last micro-batch   as each layer's gradients are queued (LlamaGpu's
//                                      grads_ready hook), they are reduced on the communication
//                                      stream while the layers below run their backward:
//                                      ZeRO-1 all-reduces the layer's range, ZeRO-2 reduces it
//                                      onto the ranks that own each part (reduce-scatter with
//                                      uneven ranges); the global tensors go last
//   zero_grads_wait                    the compute stream waits for those reductions
//   zero_grad_norm                     global L2 norm: ZeRO-1 over the whole all-reduced
//                                      gradient (the same kernel and the same number as one GPU);
//                                      ZeRO-2 from each rank's shard, the squares summed over ranks
//   (optimizer step on the own shard)
//   zero_params_gather                 every rank's updated bf16 parameters to every rank
//                                      (ZeRO-1/2; nothing for ZeRO-3, whose next forward gathers);
//                                      the compute stream waits for all of it
//   or, --zero-gather-overlap          one all-gather per gradient bucket (LlamaGpu's gather_params
//   (llama_gpu_params_gather)          hook: zero_params_gather_range), global tensors first, then
//                                      layers 0, 1, ...; the next forward waits for each bucket's
//                                      by event just before its first use (model/llama_gpu.cuh)
//
// The loss is scaled by the global number of target tokens, so the reduction is a sum.
#pragma once
#include "dist.cuh"
#include "zero.cuh"

typedef struct {
    Dist *dist;
    const ZeroPlan *plan;
    float *grads;  // [plan->total] device
    bf16 *params;  // device: [plan->total] for ZeRO-1/2; ZeRO-3: this rank's shard [plan->end - plan->begin]
    cudaStream_t compute;
    float *norm_scratch;  // device: result + grad_norm_squared's partials
    float *h_norm;        // pinned
} ZeroComm;

void zero_comm_init(ZeroComm *zc, Dist *d, const ZeroPlan *z, float *grads, bf16 *params, cudaStream_t compute);
void zero_comm_free(ZeroComm *zc);
// LlamaGpu.grads_ready hook, arg = ZeroComm *: reduces layer l's gradients, or the global
// tensors' for l = -1.
void zero_grads_ready(void *arg, int layer);
void zero_grads_wait(ZeroComm *zc);
// Synchronises (through dist_wait) and returns the global gradient norm.
float zero_grad_norm(ZeroComm *zc);
void zero_params_gather(ZeroComm *zc);
// LlamaGpu.gather_params hook (ZeRO-1/2 --zero-gather-overlap), arg = ZeroComm *: every rank's part of
// the flat bf16 parameters [lo, hi) to every rank, in place, queued on s (exact: copies only). Does
// not order s after the compute stream: llama_gpu_params_gather does.
void zero_params_gather_range(void *arg, size_t lo, size_t hi, cudaStream_t s);
// LlamaGpu.gather hook (ZeRO-3), arg = ZeroComm *: the flat weights [lo, hi) from every rank's
// shard into dst[0, hi - lo), queued on s (exact: copies only).
void zero_params_fetch(void *arg, bf16 *dst, size_t lo, size_t hi, cudaStream_t s);
// ZeRO-3 --fp8-allgather (LlamaGpu.gather_runs and .reduce_max hooks, arg = ZeroComm *): the runs
// of a layer (its fp8 weights as codes from the rank's code shard, the rest as bf16) in one group;
// v[0, n) = the maximum over the ranks (each tensor's amax from the amax of every rank's piece).
void zero_params_fetch_runs(void *arg, const DistGatherRun *runs, int n, cudaStream_t s);
void zero_amax_reduce(void *arg, float *v, int n, cudaStream_t s);
