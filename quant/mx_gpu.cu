// MX dequantization to bf16 and the cuBLASLt scale swizzle (interface: mx_gpu.cuh). Memory-bound
// element maps; the arithmetic is quant/mx.h's, shared with the CPU reference.
#include "../common/cuda_utils.cuh"
#include "mx_gpu.cuh"

// Vector path: one thread per 8 consecutive codes of a row (ocols % 8 == 0, so 8 codes never straddle
// a row or a 32-block): one 8-byte load, one e8m0, one 16-byte store.
template <bool VEC>
__global__ void __launch_bounds__(256) mx_dequant_bf16_kernel(bf16 *out, const uint8_t *q, const uint8_t *e8m0,
                                                               int orows, int ocols, Fp8Dtype dt) {
    const int nb = (ocols + MX_BLOCK - 1) / MX_BLOCK;
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (VEC) {
        const size_t i = t * 8;
        if (i >= (size_t)orows * ocols) return;
        const size_t r = i / ocols, c = i % ocols;
        const uint8_t e = e8m0[r * nb + c / MX_BLOCK];
        const uint2 w = *reinterpret_cast<const uint2 *>(q + i);
        uint32_t o[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t word = j < 2 ? w.x : w.y, sh = 16 * (j % 2);
            const uint16_t lo = mx_dequant_bf16_bits((uint8_t)(word >> sh), e, dt);
            const uint16_t hi = mx_dequant_bf16_bits((uint8_t)(word >> (sh + 8)), e, dt);
            o[j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
        *reinterpret_cast<uint4 *>(out + i) = make_uint4(o[0], o[1], o[2], o[3]);
    } else {
        if (t >= (size_t)orows * ocols) return;
        const size_t r = t / ocols, c = t % ocols;
        const uint16_t b = mx_dequant_bf16_bits(q[t], e8m0[r * nb + c / MX_BLOCK], dt);
        out[t] = __ushort_as_bfloat16(b);
    }
}

void mx_dequant_bf16(bf16 *out, const uint8_t *q, const uint8_t *e8m0, int orows, int ocols, Fp8Dtype dt,
                     cudaStream_t stream) {
    CHECK(orows >= 0 && ocols >= 0, "mx_dequant_bf16: bad shape %dx%d", orows, ocols);
    const size_t n = (size_t)orows * ocols;
    if (!n) return;
    if (ocols % 8 == 0 && is_aligned16(out) && ((uintptr_t)q & 7) == 0)
        mx_dequant_bf16_kernel<true><<<(unsigned)ceil_div_sz(n / 8, 256), 256, 0, stream>>>(out, q, e8m0, orows, ocols, dt);
    else
        mx_dequant_bf16_kernel<false><<<(unsigned)ceil_div_sz(n, 256), 256, 0, stream>>>(out, q, e8m0, orows, ocols, dt);
    CUDA_CHECK_LAST();
}

// One thread per output byte (padding included): the inverse of mx_swizzled_index.
__global__ void mx_swizzle_scales_kernel(uint8_t *out, const uint8_t *e8m0, int rows, int nkb, size_t total) {
    const size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= total) return;
    const size_t tile = o / (MX_SWZ_ROWS * MX_SWZ_BLOCKS);
    const int in = (int)(o % (MX_SWZ_ROWS * MX_SWZ_BLOCKS));
    const size_t ncb = (size_t)((nkb + MX_SWZ_BLOCKS - 1) / MX_SWZ_BLOCKS);
    const int r = (int)(tile / ncb) * MX_SWZ_ROWS + in / 16 + 32 * ((in % 16) / 4);
    const int kb = (int)(tile % ncb) * MX_SWZ_BLOCKS + in % 4;
    out[o] = (r < rows && kb < nkb) ? e8m0[(size_t)r * nkb + kb] : (uint8_t)0;
}

void mx_swizzle_scales(uint8_t *out, const uint8_t *e8m0, int rows, int nkb, cudaStream_t stream) {
    CHECK(rows >= 0 && nkb >= 0, "mx_swizzle_scales: bad shape %dx%d", rows, nkb);
    const size_t total = mx_swizzled_bytes(rows, nkb);
    if (!total) return;
    mx_swizzle_scales_kernel<<<(unsigned)ceil_div_sz(total, 256), 256, 0, stream>>>(out, e8m0, rows, nkb, total);
    CUDA_CHECK_LAST();
}
