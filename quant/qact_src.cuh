// Where a decode linear's input comes from. The GEMV paths that prepare their activations in a
// kernel of their own (int4 tensor-core v2: bf16 hi/lo fragments and group sums; 8da4w and fp8:
// the per-token quantization) compute the input there from the previous op's output instead of
// reading a materialized copy, which saves the launch of that op (model/infer_gpu.cu: the
// RMSNorm before q/k/v, gate/up and the lm_head, the SwiGLU before down_proj). qact_src_forward
// materializes a source with the same device functions, so a fused and an unfused forward give
// the same bits.
#pragma once

#include "../common/gpu.h"

enum { QSRC_X = 0, QSRC_RMSNORM = 1, QSRC_SWIGLU = 2 };

typedef struct {
    int kind;         // QSRC_*
    const float *x;   // X: the input rows; RMSNORM: the rows to normalize; SWIGLU: the gate rows
    const float *up;  // SWIGLU: the up rows
    const float *w;   // RMSNORM: the norm weight [K]
    int ld;           // row stride of x (and up), floats
    float eps;        // RMSNORM
} QActSrc;

static inline QActSrc qsrc_x(const float *x, int ld) {
    QActSrc s = {QSRC_X, x, NULL, NULL, ld, 0.0f};
    return s;
}
// Rows m0.. of a source.
static inline __host__ __device__ QActSrc qsrc_rows(QActSrc s, int m0) {
    s.x += (size_t)m0 * s.ld;
    if (s.up) s.up += (size_t)m0 * s.ld;
    return s;
}

#ifdef __CUDACC__
// Programmatic dependent launch (sm_90): no-ops when the launch did not ask for it. A kernel
// launched as a programmatic dependent must call pdl_wait() before it touches memory that the
// kernels before it write (or read: the wait is the only ordering it gets).
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

// 1 / rms of rows 0..M-1 of s (K features) into r[m] (shared memory, read after the call), as
// model/infer_cpu.c: the sum of squares in double, in the order of a 1024-thread block: thread t
// sums d = t, t + 1024, ...; each warp's 32 sums by an xor-shuffle tree; thread 0 adds the 32
// warps' in order. The block must have NTH threads (a multiple of 32 dividing 1024); every NTH
// gives the same bits: thread t plays the J = 1024 / NTH threads t + j NTH (same lane, warp +
// j NTH / 32), and a "chain" (row m, played thread j) is summed left to right by one thread in
// any case. For latency the thread's loads are issued in batches of CH chains x S steps (two rows
// of J chains: 32 loads at NTH = 256) ahead of their adds, instead of one dependent round trip per
// chain; loads past K are skipped, not added as zeros. Thread m finishes row m. sh: [32 M] shared
// doubles. Every thread of the block must call it. The products of two floats are exact in
// double, so an fma contraction of the sum changes nothing.
template <int NTH> __device__ __forceinline__ void qsrc_rms_inv(float *r, const QActSrc &s, int M, int K, double *sh) {
    static_assert(NTH % 32 == 0 && 1024 % NTH == 0, "qsrc_rms_inv: NTH must be a multiple of 32 dividing 1024");
    constexpr int J = 1024 / NTH, NW = NTH / 32, CH = 2 * J, S = 4;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int m0 = 0; m0 < M; m0 += 2) {  // chain c: row m0 + c / J, played thread threadIdx.x + (c % J) NTH
        double ss[CH];
#pragma unroll
        for (int c = 0; c < CH; c++) ss[c] = 0.0;
        for (int s0 = 0; s0 < K; s0 += 1024 * S) {  // S steps of every chain: d = s0 + 1024 t + its thread
            float v[CH][S];
#pragma unroll
            for (int c = 0; c < CH; c++)
#pragma unroll
                for (int t = 0; t < S; t++) {
                    const int m = m0 + c / J, d = s0 + 1024 * t + c % J * NTH + threadIdx.x;
                    v[c][t] = m < M && d < K ? s.x[(size_t)m * s.ld + d] : 0.0f;
                }
#pragma unroll
            for (int c = 0; c < CH; c++)
#pragma unroll
                for (int t = 0; t < S; t++)
                    if (s0 + 1024 * t + c % J * NTH + threadIdx.x < K) ss[c] += (double)v[c][t] * v[c][t];
        }
#pragma unroll
        for (int c = 0; c < CH; c++) {
            const int m = m0 + c / J;
            if (m >= M) break;  // uniform over the block
            double w = ss[c];
            for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
            if (lane == 0) sh[32 * m + warp + c % J * NW] = w;
        }
    }
    __syncthreads();
    if (threadIdx.x < M) {
        double t = 0.0;
        for (int i = 0; i < 32; i++) t += sh[32 * threadIdx.x + i];
        r[threadIdx.x] = (float)(1.0 / sqrt(t / K + (double)s.eps));
    }
    __syncthreads();
}

// The source's value from its loaded inputs: a = x (X, RMSNORM) or the gate (SWIGLU), b = the
// norm weight w[k] (RMSNORM) or the up value (SWIGLU); rm: the row's 1 / rms (RMSNORM only).
// RMSNORM: (x r) w rounded after each product as rmsnorm_forward_cpu; SWIGLU: silu(g) u =
// g / (1 + e^-g) u with every operation rounded on its own (no contraction into expf's last
// multiply), so every kernel that calls this gives the same bits.
template <int KIND> __device__ __forceinline__ float qsrc_val(float a, float b, float rm) {
    if constexpr (KIND == QSRC_RMSNORM) return __fmul_rn(__fmul_rn(a, rm), b);
    if constexpr (KIND == QSRC_SWIGLU) return __fmul_rn(__fdiv_rn(a, __fadd_rn(1.0f, expf(-a))), b);
    return a;
}

// The source's value at (row m, feature k); rm: row m's 1 / rms (RMSNORM only).
template <int KIND> __device__ __forceinline__ float qsrc_at(const QActSrc &s, float rm, int m, int k) {
    const size_t i = (size_t)m * s.ld + k;
    if constexpr (KIND == QSRC_RMSNORM) return qsrc_val<KIND>(s.x[i], s.w[k], rm);
    if constexpr (KIND == QSRC_SWIGLU) return qsrc_val<KIND>(s.x[i], s.up[i], rm);
    return s.x[i];
}

// Launches k on st, as a programmatic dependent of the kernel before it in the stream when pdl
// (k then must pdl_wait() first).
template <typename... KArgs, typename... Args>
static inline void qlaunch(int pdl, void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                           Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, k, args...));
}
#endif
