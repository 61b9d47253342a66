#include "gpu.h"

#include <stdio.h>
#include <string.h>

void gpu_ctx_init(GpuCtx *ctx, int device) {
    memset(ctx, 0, sizeof *ctx);
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    CHECK(e == cudaSuccess && n > 0, "no CUDA GPU is available (%s)\n  HINT: run on a machine with an NVIDIA GPU and its driver (infer_llama also runs with -d cpu)",
          e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
    CHECK(device >= 0 && device < n, "GPU %d does not exist (this machine has %d)", device, n);
    ctx->device = device;
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaGetDeviceProperties(&ctx->prop, device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasLtCreate(&ctx->lt));
    ctx->lt_workspace_size = 32u << 20;  // Hopper kernels want 32 MiB
    CUDA_CHECK(cudaMalloc(&ctx->lt_workspace, ctx->lt_workspace_size));
#ifdef LLAMA_AO_CUDNN
    CUDNN_CHECK(cudnnCreate(&ctx->cudnn));
    CUDNN_CHECK(cudnnSetStream(ctx->cudnn, ctx->stream));
    ctx->use_cudnn = 1;
#endif
}

void gpu_ctx_stream_priority(GpuCtx *ctx, int high) {
    int least = 0, greatest = 0;
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    CUDA_CHECK(cudaStreamDestroy(ctx->stream));
    CUDA_CHECK(cudaStreamCreateWithPriority(&ctx->stream, cudaStreamNonBlocking, high ? greatest : least));
#ifdef LLAMA_AO_CUDNN
    CUDNN_CHECK(cudnnSetStream(ctx->cudnn, ctx->stream));
#endif
}

void gpu_ctx_cudnn_workspace(GpuCtx *ctx, size_t n) {
    if (n <= ctx->cudnn_workspace_size) return;
    if (ctx->cudnn_workspace) CUDA_CHECK(cudaFree(ctx->cudnn_workspace));
    CUDA_CHECK(cudaMalloc(&ctx->cudnn_workspace, n));
    ctx->cudnn_workspace_size = n;
}

void gpu_ctx_free(GpuCtx *ctx) {
    if (ctx->cudnn_workspace) cudaFree(ctx->cudnn_workspace);
#ifdef LLAMA_AO_CUDNN
    if (ctx->cudnn) cudnnDestroy(ctx->cudnn);
#endif
    if (ctx->lt_workspace) cudaFree(ctx->lt_workspace);
    if (ctx->lt) cublasLtDestroy(ctx->lt);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    memset(ctx, 0, sizeof *ctx);
}

double gpu_peak_bf16_flops(const GpuCtx *ctx) {
    // Dense bf16 tensor-core peak. Hopper SXM parts: 989.4 TFLOP/s (H100 and H200 alike);
    // H100 PCIe: 756. Unknown parts fall back to the H100 SXM figure and say so in logs.
    if (ctx->prop.major == 9) return strstr(ctx->prop.name, "PCIe") ? 756e12 : 989.4e12;
    if (ctx->prop.major == 8) return ctx->prop.minor == 0 ? 312e12 : 165e12;
    return 989.4e12;
}
