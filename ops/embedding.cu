// GPU token embedding. Forward is a row gather; backward sums each distinct token's rows
// in a fixed order inside one block (buckets from embedding_buckets_cpu), so dwte is
// bitwise reproducible and needs no atomics.
#include "../common/cuda_utils.cuh"
#include "embedding.cuh"

// One thread per VEC-wide column group of one output row. VEC = 8 uses 128-bit loads
// (needs D % 8 == 0 and 16-byte aligned tensors), VEC = 1 is the fallback.
template <int VEC>
__global__ void embedding_forward_kernel(bf16 *out, const int32_t *tokens, const bf16 *wte, int N, int D) {
    int groups = D / VEC;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * groups) return;
    int n = (int)(idx / groups), c = (int)(idx % groups) * VEC;
    const bf16 *src = wte + (size_t)tokens[n] * D + c;
    bf16 *dst = out + (size_t)n * D + c;
    if constexpr (VEC == 8) store128(dst, load128(src));
    else dst[0] = src[0];
}

// acc += dout rows pos[i] for i = i0, i0 + step, ... < i1, in that order, at columns
// [c, c + VEC); four rows' loads are issued before their adds.
template <int VEC>
__device__ __forceinline__ void emb_sum_rows(float *acc, const bf16 *dout, const int32_t *pos, int i0, int i1,
                                             int step, int D, int c) {
    int i = i0;
    for (; i + 3 * step < i1; i += 4 * step) {
        float x[4][VEC];
#pragma unroll
        for (int u = 0; u < 4; u++) load_vec<VEC>(x[u], dout + (size_t)pos[i + u * step] * D + c);
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int j = 0; j < VEC; j++) acc[j] += x[u][j];
    }
    for (; i < i1; i += step) {
        float x[VEC];
        load_vec<VEC>(x, dout + (size_t)pos[i] * D + c);
#pragma unroll
        for (int j = 0; j < VEC; j++) acc[j] += x[j];
    }
}

template <int VEC>
__device__ __forceinline__ void load_f32(float *dst, const float *p) {
    if constexpr (VEC == 8) {
        f128 lo = load128(p), hi = load128(p + 4);
#pragma unroll
        for (int j = 0; j < 4; j++) dst[j] = lo[j], dst[4 + j] = hi[j];
    } else {
        dst[0] = p[0];
    }
}
template <int VEC>
__device__ __forceinline__ void store_f32(float *p, const float *src) {
    if constexpr (VEC == 8) {
        f128 lo, hi;
#pragma unroll
        for (int j = 0; j < 4; j++) lo[j] = src[j], hi[j] = src[4 + j];
        store128(p, lo);
        store128(p + 4, hi);
    } else {
        p[0] = src[0];
    }
}

// Block (x, y) covers buckets x*32 .. x*32+31 and the 32*VEC columns from y*32*VEC; lane
// l owns VEC of them. Short buckets (most tokens occur once): warp w sums bucket x*32+w
// alone, rows in position order (the host sort is stable). Long buckets (frequent
// tokens): the L long ones share the 32 warps, S = 32/L (a power of two) per bucket; warp
// s of a group sums rows s, s+S, ... and the group's first warp adds the S stripes in
// order. Either way a bucket's sum starts from zero and is added to dwte's row in one fp32
// addition, so accumulating micro-batches gives fl(dwte + sum), the sum two ranks' gradient
// all-reduce forms. Every order depends only on the bucket sizes, so dwte is bitwise
// reproducible, and a token that fills the whole batch still spreads over 32 warps.
#define EMB_WARPS 32
#define EMB_LONG 32
template <int VEC>
__global__ void __launch_bounds__(32 * EMB_WARPS) embedding_backward_kernel(
    float *dwte, const bf16 *dout, const int32_t *sorted_pos, const int32_t *bucket_start,
    const int32_t *bucket_token, int n_buckets, int D) {
    __shared__ float sh[EMB_WARPS][32 * VEC];
    int lane = threadIdx.x, w = threadIdx.y, b0 = blockIdx.x * EMB_WARPS;
    int c = (blockIdx.y * 32 + lane) * VEC;
    int nb = min(EMB_WARPS, n_buckets - b0);
    if (w < nb && c < D) {
        int i0 = bucket_start[b0 + w], i1 = bucket_start[b0 + w + 1];
        if (i1 - i0 <= EMB_LONG) {
            // The dwte row is read before the sum so both reads are in flight together; the sum
            // starts from zero and is added to the row once (not row by row onto it: see above).
            float *dst = dwte + (size_t)bucket_token[b0 + w] * D + c;
            float old[VEC], acc[VEC] = {};
            load_f32<VEC>(old, dst);
            emb_sum_rows<VEC>(acc, dout, sorted_pos, i0, i1, 1, D, c);
#pragma unroll
            for (int j = 0; j < VEC; j++) old[j] += acc[j];
            store_f32<VEC>(dst, old);
        }
    }
    // Lane k looks at bucket b0 + k; the ballot gives every warp the same mask, so the
    // control flow below is block-uniform.
    bool is_long = lane < nb && bucket_start[b0 + lane + 1] - bucket_start[b0 + lane] > EMB_LONG;
    unsigned long_mask = __ballot_sync(0xffffffffu, is_long);
    int L = __popc(long_mask);
    if (L == 0) return;
    int S = EMB_WARPS;
    while (S * L > EMB_WARPS) S >>= 1;
    int G = EMB_WARPS / S, g = w / S, st = w % S;
    for (int base = 0; base < L; base += G) {  // S * L <= 32: a single round, in fact
        int idx = base + g, k = -1;
        for (int j = 0, seen = 0; j < nb && k < 0; j++)  // k = the idx-th long bucket
            if ((long_mask >> j) & 1u) k = seen++ == idx ? j : -1;
        float acc[VEC] = {};
        if (k >= 0 && c < D)
            emb_sum_rows<VEC>(acc, dout, sorted_pos, bucket_start[b0 + k] + st, bucket_start[b0 + k + 1], S, D, c);
#pragma unroll
        for (int j = 0; j < VEC; j++) sh[w][lane * VEC + j] = acc[j];
        __syncthreads();
        if (k >= 0 && st == 0 && c < D) {
            float *dst = dwte + (size_t)bucket_token[b0 + k] * D + c;
            float old[VEC];
            load_f32<VEC>(old, dst);
#pragma unroll
            for (int j = 0; j < VEC; j++) {
                for (int y = 1; y < S; y++) acc[j] += sh[w + y][lane * VEC + j];
                old[j] += acc[j];
            }
            store_f32<VEC>(dst, old);
        }
        __syncthreads();  // sh is reused by the next round
    }
}

void embedding_forward(bf16 *out, const int32_t *tokens, const bf16 *wte, int N, int D, cudaStream_t s) {
    CHECK(N >= 0 && D > 0, "embedding_forward: bad shape N=%d D=%d", N, D);
    if (N == 0) return;
    const int threads = 256;
    if (D % 8 == 0 && is_aligned16(out) && is_aligned16(wte)) {
        size_t total = (size_t)N * (D / 8);
        embedding_forward_kernel<8><<<(unsigned)ceil_div_sz(total, threads), threads, 0, s>>>(out, tokens, wte, N, D);
    } else {
        size_t total = (size_t)N * D;
        embedding_forward_kernel<1><<<(unsigned)ceil_div_sz(total, threads), threads, 0, s>>>(out, tokens, wte, N, D);
    }
    CUDA_CHECK_LAST();
}

void embedding_backward(float *dwte, const bf16 *dout, const int32_t *sorted_pos, const int32_t *bucket_start,
                        const int32_t *bucket_token, int n_buckets, int D, cudaStream_t s) {
    CHECK(n_buckets >= 0 && D > 0, "embedding_backward: bad shape n_buckets=%d D=%d", n_buckets, D);
    if (n_buckets == 0) return;
    dim3 block(32, EMB_WARPS);
    int gx = ceil_div(n_buckets, EMB_WARPS);
    if (D % 8 == 0 && is_aligned16(dwte) && is_aligned16(dout))
        embedding_backward_kernel<8><<<dim3(gx, ceil_div(D, 256)), block, 0, s>>>(dwte, dout, sorted_pos, bucket_start,
                                                                              bucket_token, n_buckets, D);
    else
        embedding_backward_kernel<1><<<dim3(gx, ceil_div(D, 32)), block, 0, s>>>(dwte, dout, sorted_pos, bucket_start,
                                                                             bucket_token, n_buckets, D);
    CUDA_CHECK_LAST();
}
