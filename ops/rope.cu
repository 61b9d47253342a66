// GPU RoPE, HF rotate_half layout, in place on packed qkv rows
// [q heads (H*hd) | k heads (KV*hd) | v heads (KV*hd)]. Forward rotates pair (i, i+hd/2)
// by +angle, backward by -angle (the transpose), angle = float(pos) * inv_freq[i] in fp32
// exactly as rope_forward_cpu; inv_freq is the device copy of rope_inv_freq_cpu's table.
#include "../common/cuda_utils.cuh"
#include "rope.cuh"

// One thread per (row, VEC consecutive i < hd/2): cos/sin are computed once and applied
// to all H + KV rotated heads of that row. VEC = 8 moves 128-bit packs (hd % 16 == 0 and a
// 16-byte aligned buffer), VEC = 1 single elements. Heads go in groups of 2 (all loads
// before any store) for memory-level parallelism; pairs of different heads never overlap,
// so in place is safe. Accurate sincosf (not __sincosf): the angle reaches pos * 1 rad,
// far outside the range where the fast intrinsic is accurate.
template <int VEC>
__global__ void rope_kernel(bf16 *qkv, const float *inv_freq, int N, int T, int H, int KV, int hd, int pos_offset,
                            float sign) {
    int half = hd / 2, groups = half / VEC;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * groups) return;
    int row = (int)(idx / groups), i0 = (int)(idx % groups) * VEC;
    float pos = (float)(pos_offset + row % T);
    float cs[VEC], sn[VEC];
#pragma unroll
    for (int j = 0; j < VEC; j++) {
        sincosf(pos * inv_freq[i0 + j], &sn[j], &cs[j]);
        sn[j] *= sign;
    }
    bf16 *base = qkv + (size_t)row * (H + 2 * KV) * hd + i0;
    int nh = H + KV;  // q heads then k heads are contiguous
    for (int h0 = 0; h0 < nh; h0 += 2) {
        float x0[2][VEC], x1[2][VEC];
#pragma unroll
        for (int u = 0; u < 2; u++)
            if (h0 + u < nh) {
                load_vec<VEC>(x0[u], base + (size_t)(h0 + u) * hd);
                load_vec<VEC>(x1[u], base + (size_t)(h0 + u) * hd + half);
            }
#pragma unroll
        for (int u = 0; u < 2; u++)
            if (h0 + u < nh) {
                float y0[VEC], y1[VEC];
#pragma unroll
                for (int j = 0; j < VEC; j++) {
                    y0[j] = x0[u][j] * cs[j] - x1[u][j] * sn[j];
                    y1[j] = x1[u][j] * cs[j] + x0[u][j] * sn[j];
                }
                store_vec<VEC>(base + (size_t)(h0 + u) * hd, y0);
                store_vec<VEC>(base + (size_t)(h0 + u) * hd + half, y1);
            }
    }
}

static void rope_launch(const char *what, bf16 *qkv, const float *inv_freq, int B, int T, int H, int KV, int hd,
                        int pos_offset, float sign, cudaStream_t s) {
    CHECK(B >= 0 && T > 0 && H > 0 && KV > 0 && hd > 0 && hd % 2 == 0 && pos_offset >= 0,
          "%s: bad shape B=%d T=%d H=%d KV=%d hd=%d pos_offset=%d (hd must be even)", what, B, T, H, KV, hd,
          pos_offset);
    if (B == 0) return;
    const int threads = 256;
    int N = B * T;
    if (hd % 16 == 0 && is_aligned16(qkv)) {
        size_t total = (size_t)N * (hd / 16);
        rope_kernel<8><<<(unsigned)ceil_div_sz(total, threads), threads, 0, s>>>(qkv, inv_freq, N, T, H, KV, hd,
                                                                                 pos_offset, sign);
    } else {
        size_t total = (size_t)N * (hd / 2);
        rope_kernel<1><<<(unsigned)ceil_div_sz(total, threads), threads, 0, s>>>(qkv, inv_freq, N, T, H, KV, hd,
                                                                                 pos_offset, sign);
    }
    CUDA_CHECK_LAST();
}

void rope_forward(bf16 *qkv, const float *inv_freq, int B, int T, int H, int KV, int hd, int pos_offset,
                  cudaStream_t s) {
    rope_launch("rope_forward", qkv, inv_freq, B, T, H, KV, hd, pos_offset, 1.0f, s);
}

void rope_backward(bf16 *dqkv, const float *inv_freq, int B, int T, int H, int KV, int hd, int pos_offset,
                   cudaStream_t s) {
    rope_launch("rope_backward", dqkv, inv_freq, B, T, H, KV, hd, pos_offset, -1.0f, s);
}
