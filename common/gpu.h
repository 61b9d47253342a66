// GPU context and error wrappers, for .cu files only. No globals hold GPU state: a
// GpuCtx (device properties, the compute stream, cuBLASLt handle + workspace, cuDNN
// handle + workspace) is passed explicitly.
#ifndef LLAMA_AO_COMMON_GPU_H
#define LLAMA_AO_COMMON_GPU_H

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#ifdef LLAMA_AO_CUDNN
#include <cudnn.h>
#endif

#include "error.h"

typedef __nv_bfloat16 bf16;

#define CUDA_CHECK(call)                                                                                    \
    do {                                                                                                    \
        cudaError_t e_ = (call);                                                                            \
        if (e_ != cudaSuccess)                                                                              \
            ao_fail(__FILE__, __LINE__, "CUDA: %s (%s)\n  HINT: %s", cudaGetErrorString(e_), #call,        \
                    e_ == cudaErrorMemoryAllocation ? "out of GPU memory: lower the micro-batch (-b) or enable recompute" \
                                                    : "run with CUDA_LAUNCH_BLOCKING=1 to locate the failing kernel"); \
    } while (0)
#define CUDA_CHECK_LAST() CUDA_CHECK(cudaGetLastError())
#define CUBLAS_CHECK(call)                                                                                  \
    do {                                                                                                    \
        cublasStatus_t s_ = (call);                                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS) ao_fail(__FILE__, __LINE__, "cuBLAS: status %d (%s)", (int)s_, #call); \
    } while (0)
#ifdef LLAMA_AO_CUDNN
#define CUDNN_CHECK(call)                                                                                   \
    do {                                                                                                    \
        cudnnStatus_t s_ = (call);                                                                          \
        if (s_ != CUDNN_STATUS_SUCCESS)                                                                     \
            ao_fail(__FILE__, __LINE__, "cuDNN: %s (%s)", cudnnGetErrorString(s_), #call);                  \
    } while (0)
#endif

typedef struct {
    int device;
    cudaDeviceProp prop;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_size;
#ifdef LLAMA_AO_CUDNN
    cudnnHandle_t cudnn;
#endif
    void *cudnn_workspace;  // grown on demand by the attention op
    size_t cudnn_workspace_size;
    int use_cudnn;  // 0: the hand-written attention kernels
} GpuCtx;

void gpu_ctx_init(GpuCtx *ctx, int device);
void gpu_ctx_free(GpuCtx *ctx);
// Recreates the compute stream at the device's greatest stream priority (high != 0) or the
// default one, before anything is queued on it: where another stream runs beside it (the
// optimizer stream of --optim-overlap), pending blocks of the compute stream's kernels are
// dispatched first. Priorities change the schedule, never the results.
void gpu_ctx_stream_priority(GpuCtx *ctx, int high);
// Grows ctx->cudnn_workspace to at least n bytes.
void gpu_ctx_cudnn_workspace(GpuCtx *ctx, size_t n);

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
static inline size_t ceil_div_sz(size_t a, size_t b) { return (a + b - 1) / b; }

// Dense bf16 tensor-core peak in FLOP/s for speed-of-light ratios (H100/H200 SXM: 989e12).
double gpu_peak_bf16_flops(const GpuCtx *ctx);

#endif
