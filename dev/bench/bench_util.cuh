// What the GPU microbenchmarks (bench_gemm, bench_cast) share: deterministic random bf16 inputs
// and the median time of a call on a stream.
#pragma once
#include <algorithm>
#include <functional>
#include <vector>

#include "../../common/cuda_utils.cuh"

__global__ static void bench_uniform_kernel(bf16 *p, size_t n, uint64_t seed, float mag) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    p[i] = __float2bfloat16(mag * ((float)(z >> 40) * 0x1p-23f - 1.0f));  // uniform in [-mag, mag)
}

// n bf16 values uniform in [-mag, mag), a function of (seed, index) only; cudaMalloc'd, filled on s.
static inline bf16 *bench_rand_bf16(size_t n, uint64_t seed, float mag, cudaStream_t s) {
    bf16 *p;
    CUDA_CHECK(cudaMalloc(&p, n * sizeof(bf16)));
    bench_uniform_kernel<<<(unsigned)ceil_div_sz(n, 256), 256, 0, s>>>(p, n, seed, mag);
    CUDA_CHECK_LAST();
    return p;
}

// Median milliseconds of f() on stream s over iters calls, after warmup untimed ones.
static inline double bench_time_ms(cudaStream_t s, int warmup, int iters, const std::function<void()> &f) {
    for (int i = 0; i < warmup; i++) f();
    std::vector<cudaEvent_t> ev(2 * iters);
    for (auto &e : ev) CUDA_CHECK(cudaEventCreate(&e));
    for (int i = 0; i < iters; i++) {
        CUDA_CHECK(cudaEventRecord(ev[2 * i], s));
        f();
        CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], s));
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    std::vector<float> ms(iters);
    for (int i = 0; i < iters; i++) CUDA_CHECK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    for (auto &e : ev) CUDA_CHECK(cudaEventDestroy(e));
    std::sort(ms.begin(), ms.end());
    return iters % 2 ? ms[iters / 2] : 0.5 * (ms[iters / 2 - 1] + ms[iters / 2]);
}
