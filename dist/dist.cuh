// Multi-process start-up and communication: one process per GPU, an NCCL communicator
// between them, and waits that never hang.
//
// Start-up (dist_init), in this order of precedence:
//   mpirun -np N ./train_llama ...    OpenMPI (or any MPI: PMI_SIZE / PMIX_RANK are recognised):
//                                     rank, world and the node-local rank come from MPI; the
//                                     NCCL id is broadcast over MPI_COMM_WORLD.
//   LLAMA_AO_WORLD_SIZE=N LLAMA_AO_RANK=r LLAMA_AO_LOCAL_RANK=g LLAMA_AO_INIT_FILE=/shared/path
//                                     launcher-free: rank 0 writes the NCCL id to the init file
//                                     (atomically; the file must not exist yet) and removes it once
//                                     every rank has joined; the others poll for it.
//   neither                           world size 1: no MPI, no NCCL, nothing initialised.
// Every rank uses the GPU numbered by its node-local rank (or the only visible one), so a job
// spans nodes when the launcher places ranks there; nothing assumes one host.
//
// Faults: the communicator is non-blocking. Every wait (dist_wait) polls the stream and
// ncclCommGetAsyncError against a timeout; on an NCCL error or when the timeout passes, the
// communicator is aborted and the process exits non-zero with a message naming this rank and
// what it was waiting for. LLAMA_AO_FAULT=RANK:STEP:exit|hang makes one rank die (exit 3) or
// stop responding at a training step, to test exactly that.
#pragma once
#include "../common/gpu.h"

typedef enum { DIST_LAUNCH_SINGLE = 0, DIST_LAUNCH_MPI = 1, DIST_LAUNCH_ENV = 2 } DistLaunch;
typedef enum { DIST_FAULT_NONE = 0, DIST_FAULT_EXIT = 1, DIST_FAULT_HANG = 2 } DistFault;

typedef struct DistImpl DistImpl;  // NCCL communicator, events, scratch (dist.cu)

typedef struct {
    int rank, world, local_rank;
    DistLaunch launch;
    double timeout_s;    // longest wait for the other ranks before giving up
    char host[64];
    int device;          // CUDA device of this rank (dist_device)
    cudaStream_t stream; // communication stream (NULL when world == 1)
    DistImpl *impl;      // NULL until dist_comm_init, and always with world == 1
    int fault_rank, fault_step;
    DistFault fault;
} Dist;

// Finds rank and world (see above) and the fault to inject; touches no GPU. With more than one
// rank it also makes every fatal error (CHECK, CUDA_CHECK...) name the rank.
void dist_init(Dist *d, double timeout_s);
// The CUDA device this rank should use; fails when the node has too few.
int dist_device(Dist *d);
// The NCCL communicator (world > 1; no-op otherwise). Call after cudaSetDevice(dist_device).
void dist_comm_init(Dist *d);
void dist_free(Dist *d);
// "rank 1/2 (host node7, GPU 1)", for messages.
const char *dist_who(const Dist *d);

// Waits until the work queued on s is done. With a communicator: polls, and on an NCCL error or
// after timeout_s aborts the communicator and exits non-zero naming this rank and `what`.
void dist_wait(Dist *d, cudaStream_t s, const char *what);
// LlamaGpu's sync hook signature: arg is the Dist.
void dist_sync_hook(void *arg, cudaStream_t s, const char *what);
// Injects the LLAMA_AO_FAULT fault when this is its rank and step.
void dist_fault_point(Dist *d, int step);

// Stream ordering: the communication stream waits for what is queued on `compute` so far, or
// the other way round. No-ops with world == 1.
void dist_comm_after(Dist *d, cudaStream_t compute);
void dist_compute_after(Dist *d, cudaStream_t compute);

// Collectives, queued on the communication stream, in place. All ranks must call them in the
// same order with the same sizes. No-ops with world == 1.
void dist_allreduce_f32(Dist *d, float *buf, size_t n, const char *what);
// Reduce-scatter over uneven ranges: for every rank r, the sum over ranks of buf over
// [bounds[r], bounds[r+1]) clipped to [lo, hi) lands on rank r (grouped ncclReduce; the
// other ranks' copies of that range are left as they were).
void dist_reduce_ranges_f32(Dist *d, float *buf, const size_t *bounds, size_t lo, size_t hi, const char *what);
// All-gather over uneven ranges: every rank receives rank r's buf[bounds[r], bounds[r+1]).
void dist_allgather_ranges_bf16(Dist *d, bf16 *buf, const size_t *bounds, const char *what);
// The same, clipped to the flat range [lo, hi), queued on s (ZeRO-1/2 --zero-gather-overlap: one
// gradient bucket at a time; s is the communication stream with several ranks). Exact: only copies.
void dist_allgather_range_bf16(Dist *d, bf16 *buf, const size_t *bounds, size_t lo, size_t hi, cudaStream_t s,
                               const char *what);
// All-gather of a sharded vector into a separate buffer (ZeRO-3): dst[0, hi - lo) receives the
// flat elements [lo, hi), of which rank r holds [bounds[r], bounds[r+1]) in its `shard` (this
// rank's shard starts at flat element bounds[rank]). Exact: only copies. Queued on s (the
// communication stream with several ranks: one stream keeps every rank's collectives in one
// order); without a communicator (world size 1) it is a device copy of the own range on s.
void dist_allgather_into_bf16(Dist *d, bf16 *dst, const bf16 *shard, const size_t *bounds, size_t lo, size_t hi,
                              cudaStream_t s, const char *what);
// Several all-gathers into separate buffers as one NCCL group (ZeRO-3 --fp8-allgather: a layer's
// fp8 weights move as 1-byte codes, the rest as bf16). Run i: dst receives the flat elements
// [lo, hi) (dst[0] is element lo), of which rank r holds [bounds[r], bounds[r+1]) in its `shard`
// (elements of `bytes` bytes, starting at flat element bounds[rank]). Exact; queued on s; without
// a communicator, device copies of the own ranges.
typedef struct {
    void *dst;
    const void *shard;
    size_t lo, hi;
    int bytes;  // 1 (fp8 codes) or 2 (bf16)
} DistGatherRun;
void dist_allgather_runs(Dist *d, const DistGatherRun *runs, int n, const size_t *bounds, cudaStream_t s,
                         const char *what);
// buf[0, n) = its elementwise maximum over the ranks, queued on s (the tensor-wide amax of a sharded
// tensor from each rank's amax of its piece, torchao's reduce_amax). No-op without a communicator.
void dist_allreduce_max_f32(Dist *d, float *buf, size_t n, cudaStream_t s, const char *what);
// Gather to rank 0: rank 0 receives rank r's buf[bounds[r], bounds[r+1]) (ncclSend/ncclRecv).
void dist_gather_ranges_f32(Dist *d, float *buf, const size_t *bounds, const char *what);
// Host values summed over the ranks (n <= 16), blocking with the timeout.
void dist_allreduce_host(Dist *d, double *v, int n, const char *what);
// Blocks until every rank got here (within the timeout).
void dist_barrier(Dist *d, const char *what);
