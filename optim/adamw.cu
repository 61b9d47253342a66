// Fused AdamW over flat fp32 master weights / moments / grads with a bf16 working copy, the
// same over bf16 weights that are their own masters (stochastic rounding), and a
// deterministic global squared gradient norm.
#include <math.h>

#include "../common/cuda_utils.cuh"
#include "adamw.cuh"
#include "adamw_cpu.h"

// The element update and its host scalars come from adamw_cpu.h (adamw_elem, adamw_scalars):
// every rounding is explicit (__fmul_rn, __fmaf_rn, ...), so nvcc cannot place FMAs
// differently per call site, and the CPU offload step (adamw_update_cpu) gives the same bits.
__device__ __forceinline__ void adamw_one(float &p, float g, float &m, float &v, const AdamwScalars &a) {
    p = adamw_elem(p, g, &m, &v, &a);
}

// One thread per 4 elements; VEC = 4 moves them as float4 (all fp32 arrays 16-byte and
// param 8-byte aligned), VEC = 1 element by element. The last n % 4 go element by element.
template <int VEC>
__global__ void adamw_kernel(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n,
                             AdamwScalars a) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    if (VEC == 4 && i + 4 <= n) {
        f128 p = load128(master + i), g = load128cs(grad + i), mm = load128(m + i), vv = load128(v + i);
        __nv_bfloat162 b[2];
#pragma unroll
        for (int j = 0; j < 4; j++) adamw_one(p[j], g[j], mm[j], vv[j], a);
        b[0] = __floats2bfloat162_rn(p[0], p[1]);
        b[1] = __floats2bfloat162_rn(p[2], p[3]);
        store128(master + i, p);
        store128(m + i, mm);
        store128(v + i, vv);
        *reinterpret_cast<uint2 *>(param + i) = *reinterpret_cast<const uint2 *>(b);
    } else {
        for (size_t j = i; j < n && j < i + 4; j++) {
            float p = master[j], mm = m[j], vv = v[j];
            adamw_one(p, grad[j], mm, vv, a);
            master[j] = p, m[j] = mm, v[j] = vv;
            param[j] = __float2bfloat16(p);
        }
    }
}

void adamw_update(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float b1,
                  float b2, float eps, float wd, int step, float grad_scale, cudaStream_t s) {
    const AdamwScalars a = adamw_scalars(lr, b1, b2, eps, wd, step, grad_scale);  // CHECKs step >= 1
    if (n == 0) return;
    unsigned grid = (unsigned)ceil_div_sz(ceil_div_sz(n, 4), 256);
    bool vec = is_aligned16(master) && is_aligned16(grad) && is_aligned16(m) && is_aligned16(v) &&
               ((uintptr_t)param & 7) == 0;
    if (vec) adamw_kernel<4><<<grid, 256, 0, s>>>(master, param, grad, m, v, n, a);
    else adamw_kernel<1><<<grid, 256, 0, s>>>(master, param, grad, m, v, n, a);
    CUDA_CHECK_LAST();
}

// The bf16 weights as masters: one thread per element (bf16 loads are 2 bytes; the fp32
// streams of grad, m and v stay coalesced). The element is adamw_elem's, as above, and the
// rounding lowbit_bf16_sr with the element's counter-based bits (optim/lowbit.h).
__global__ void adamw_bf16_sr_kernel(uint16_t *param, const float *grad, float *m, float *v, size_t n, AdamwScalars a,
                                     uint64_t seed, uint64_t sr_offset, int step) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float mm = m[i], vv = v[i];
    const float p = adamw_elem(lowbit_bf16_to_f32(param[i]), grad[i], &mm, &vv, &a);
    m[i] = mm, v[i] = vv;
    param[i] = lowbit_bf16_sr(p, lowbit_sr_bits(seed, step, sr_offset + i));
}

void adamw_update_bf16_sr(bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float b1, float b2,
                          float eps, float wd, int step, float grad_scale, uint64_t seed, uint64_t sr_offset,
                          cudaStream_t s) {
    const AdamwScalars a = adamw_scalars(lr, b1, b2, eps, wd, step, grad_scale);  // CHECKs step >= 1
    if (n == 0) return;
    adamw_bf16_sr_kernel<<<(unsigned)ceil_div_sz(n, 256), 256, 0, s>>>(reinterpret_cast<uint16_t *>(param), grad, m, v,
                                                                      n, a, seed, sr_offset, step);
    CUDA_CHECK_LAST();
}

// ------------------------------------------------------------------- gradient norm
// Stage 1: a grid fixed by n (at most GN_MAX_BLOCKS) grid-strides over float4s; each block
// writes one partial. Stage 2: one block adds the partials. Every reduction has a fixed
// shape, so the result is bitwise reproducible for a given n and pointer alignment.
#define GN_THREADS 512
#define GN_MAX_BLOCKS 1024

static int gn_blocks(size_t n) {
    size_t g = ceil_div_sz(n, (size_t)GN_THREADS * 4);
    return g < 1 ? 1 : g > GN_MAX_BLOCKS ? GN_MAX_BLOCKS : (int)g;
}

size_t grad_norm_scratch_floats(size_t n) { return (size_t)gn_blocks(n); }

template <int VEC>
__global__ void __launch_bounds__(GN_THREADS) grad_norm_partial_kernel(float *partial, const float *grad, size_t n) {
    __shared__ float red[32];
    size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    size_t nv = n / 4;
    for (size_t i = tid; i < nv; i += stride) {
        if constexpr (VEC == 4) {
            f128 g = load128cs(grad + 4 * i);
#pragma unroll
            for (int j = 0; j < 4; j++) acc[j] += g[j] * g[j];
        } else {
#pragma unroll
            for (int j = 0; j < 4; j++) acc[j] += grad[4 * i + j] * grad[4 * i + j];
        }
    }
    if (tid == 0)
        for (size_t i = nv * 4; i < n; i++) acc[0] += grad[i] * grad[i];
    float sum = block_reduce_sum((acc[0] + acc[1]) + (acc[2] + acc[3]), red);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void __launch_bounds__(1024) grad_norm_final_kernel(float *out, const float *partial, int nblk) {
    __shared__ float red[32];
    float v = (int)threadIdx.x < nblk ? partial[threadIdx.x] : 0.0f;
    v = block_reduce_sum(v, red);
    if (threadIdx.x == 0) out[0] = v;
}

void grad_norm_squared(float *out, float *scratch, const float *grad, size_t n, cudaStream_t s) {
    int nblk = gn_blocks(n);
    if (is_aligned16(grad)) grad_norm_partial_kernel<4><<<nblk, GN_THREADS, 0, s>>>(scratch, grad, n);
    else grad_norm_partial_kernel<1><<<nblk, GN_THREADS, 0, s>>>(scratch, grad, n);
    CUDA_CHECK_LAST();
    grad_norm_final_kernel<<<1, 1024, 0, s>>>(out, scratch, nblk);
    CUDA_CHECK_LAST();
}
