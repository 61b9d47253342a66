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

// Vector kernel: each thread updates ADAMW_ILP chunks of 4 elements, a block's chunks contiguous
// (chunk c of thread t at (block * ADAMW_ILP + c) * blockDim + t), and issues all of its 16-byte
// loads before the first update so that 4 * ADAMW_ILP loads per thread are in flight (the
// update is memory-bound: 30 bytes per parameter). Scalar kernel (unaligned arrays): one
// element per thread. The vector kernel's last n % 4 elements go element by element.
#define ADAMW_ILP 2
__global__ void adamw_kernel_scalar(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n,
                                    AdamwScalars a) {
    const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float p = master[j], mm = m[j], vv = v[j];
    adamw_one(p, grad[j], mm, vv, a);
    master[j] = p, m[j] = mm, v[j] = vv;
    param[j] = __float2bfloat16(p);
}

__global__ void adamw_kernel_vec(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n,
                                 AdamwScalars a) {
    size_t idx[ADAMW_ILP];
    f128 p[ADAMW_ILP], g[ADAMW_ILP], mm[ADAMW_ILP], vv[ADAMW_ILP];
#pragma unroll
    for (int c = 0; c < ADAMW_ILP; c++) {
        idx[c] = (((size_t)blockIdx.x * ADAMW_ILP + c) * blockDim.x + threadIdx.x) * 4;
        if (idx[c] + 4 <= n) {
            p[c] = load128(master + idx[c]), g[c] = load128cs(grad + idx[c]);
            mm[c] = load128(m + idx[c]), vv[c] = load128(v + idx[c]);
        }
    }
#pragma unroll
    for (int c = 0; c < ADAMW_ILP; c++) {
        const size_t i = idx[c];
        if (i + 4 <= n) {
            __nv_bfloat162 b[2];
#pragma unroll
            for (int j = 0; j < 4; j++) adamw_one(p[c][j], g[c][j], mm[c][j], vv[c][j], a);
            b[0] = __floats2bfloat162_rn(p[c][0], p[c][1]);
            b[1] = __floats2bfloat162_rn(p[c][2], p[c][3]);
            store128(master + i, p[c]);
            store128(m + i, mm[c]);
            store128(v + i, vv[c]);
            *reinterpret_cast<uint2 *>(param + i) = *reinterpret_cast<const uint2 *>(b);
        } else {
            for (size_t j = i; j < n; j++) {  // the tail (< 4 elements): only its one chunk gets here
                float q = master[j], m1 = m[j], v1 = v[j];
                adamw_one(q, grad[j], m1, v1, a);
                master[j] = q, m[j] = m1, v[j] = v1;
                param[j] = __float2bfloat16(q);
            }
        }
    }
}

void adamw_update(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float b1,
                  float b2, float eps, float wd, int step, float grad_scale, cudaStream_t s) {
    const AdamwScalars a = adamw_scalars(lr, b1, b2, eps, wd, step, grad_scale);  // CHECKs step >= 1
    if (n == 0) return;
    bool vec = is_aligned16(master) && is_aligned16(grad) && is_aligned16(m) && is_aligned16(v) &&
               ((uintptr_t)param & 7) == 0;
    if (vec) {
        const unsigned grid = (unsigned)ceil_div_sz(ceil_div_sz(n, 4), (size_t)256 * ADAMW_ILP);
        adamw_kernel_vec<<<grid, 256, 0, s>>>(master, param, grad, m, v, n, a);
    } else {
        adamw_kernel_scalar<<<(unsigned)ceil_div_sz(n, 256), 256, 0, s>>>(master, param, grad, m, v, n, a);
    }
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
