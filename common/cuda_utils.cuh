// Small device helpers shared by the kernels: 128-bit packed loads/stores and warp/block
// reductions. Every reduction here has a fixed shape (butterfly shuffles, then warps
// combined in index order), so results are bitwise reproducible for the same launch.
#pragma once
#include <stdint.h>

#include "gpu.h"

// 16 bytes of T moved as one int4: 8 bf16 or 4 float per load/store instruction.
template <class T>
struct alignas(16) Packed128 {
    static constexpr int size = 16 / sizeof(T);
    T v[size];
    __device__ T &operator[](int i) { return v[i]; }
    __device__ const T &operator[](int i) const { return v[i]; }
};
typedef Packed128<bf16> x128;  // 8 bf16
typedef Packed128<float> f128;  // 4 float

template <class T>
__device__ __forceinline__ Packed128<T> load128(const T *p) {
    Packed128<T> r;
    *reinterpret_cast<int4 *>(r.v) = *reinterpret_cast<const int4 *>(p);
    return r;
}
// Streaming (evict-first) load for data read exactly once.
template <class T>
__device__ __forceinline__ Packed128<T> load128cs(const T *p) {
    Packed128<T> r;
    *reinterpret_cast<int4 *>(r.v) = __ldcs(reinterpret_cast<const int4 *>(p));
    return r;
}
template <class T>
__device__ __forceinline__ void store128(T *p, const Packed128<T> &x) {
    *reinterpret_cast<int4 *>(p) = *reinterpret_cast<const int4 *>(x.v);
}
template <class T>
__device__ __forceinline__ void store128cs(T *p, const Packed128<T> &x) {
    __stcs(reinterpret_cast<int4 *>(p), *reinterpret_cast<const int4 *>(x.v));
}

// VEC elements of T at p as fp32: one 128-bit load when VEC * sizeof(T) == 16, scalar
// loads when VEC == 1 (the fallback path for unaligned or odd sizes).
template <int VEC>
__device__ __forceinline__ void load_vec(float *dst, const bf16 *p) {
    if constexpr (VEC == 8) {
        x128 x = load128(p);
#pragma unroll
        for (int j = 0; j < 8; j++) dst[j] = __bfloat162float(x[j]);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; j++) dst[j] = __bfloat162float(p[j]);
    }
}
template <int VEC>
__device__ __forceinline__ void store_vec(bf16 *p, const float *src) {
    if constexpr (VEC == 8) {
        x128 x;
#pragma unroll
        for (int j = 0; j < 8; j++) x[j] = __float2bfloat16(src[j]);
        store128(p, x);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; j++) p[j] = __float2bfloat16(src[j]);
    }
}

// VEC raw bf16 kept in registers (8 bf16 = 4 registers), converted to fp32 on use.
template <int VEC>
struct alignas(2 * VEC) BVec {
    bf16 v[VEC];
    __device__ __forceinline__ float f(int j) const { return __bfloat162float(v[j]); }
};
template <int VEC>
__device__ __forceinline__ BVec<VEC> load_bvec(const bf16 *p) {
    BVec<VEC> r;
    if constexpr (VEC == 8) *reinterpret_cast<int4 *>(r.v) = *reinterpret_cast<const int4 *>(p);
    else
#pragma unroll
        for (int j = 0; j < VEC; j++) r.v[j] = p[j];
    return r;
}

__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_reduce_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the
// result. `shared` holds 32 floats; the trailing barrier lets callers reuse it at once.
__device__ __forceinline__ float block_reduce_sum(float v, float *shared) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_reduce_sum(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared[lane] : 0.0f;
    v = warp_reduce_sum(v);
    __syncthreads();
    return v;
}

// 16-byte alignment test for choosing the vectorized path in launchers.
static inline bool is_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }
// The largest power of two <= 256 that divides the address: what cuBLASLt's algorithm choice
// depends on (its MIN_ALIGNMENT preferences), so the key of the GEMM algorithm caches.
static inline unsigned ptr_align256(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 1 && (a % al) != 0) al >>= 1;
    return al;
}
