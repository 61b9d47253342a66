// Fused softmax cross-entropy forward + backward over bf16 logits, one block per row.
// Pass 1 keeps an online (max, sum) pair per thread (Milakov & Gimelshein 2018, "Online
// normalizer calculation for softmax") in base-2 units, t = x * log2(e), so every
// exponential is one exp2f; pairs are merged by shuffles, then across warps in order.
// Pass 2 overwrites the row with (softmax - onehot) * dloss. Rows have any length V and
// any alignment: each row is split into a scalar head up to a 16-byte boundary, 128-bit
// packs of 8, and a scalar tail.
#include <math.h>

#include "../common/cuda_utils.cuh"
#include "cross_entropy.cuh"

#define CE_LOG2E 1.4426950408889634f
#define CE_LN2 0.6931471805599453f

struct MaxSum {
    float m, s;  // running max (base-2 units) and sum of exp2(t - m)
};

__device__ __forceinline__ MaxSum ms_merge(MaxSum a, MaxSum b) {
    float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return {m, 0.0f};  // both empty: avoid exp2(-inf - -inf) = NaN
    return {m, a.s * exp2f(a.m - m) + b.s * exp2f(b.m - m)};
}

// The row split into [0, head) scalar, packs of 8 from head, [tail, V) scalar.
struct RowSplit {
    int head, npack, tail;
};
__device__ __forceinline__ RowSplit row_split(const bf16 *row, int V) {
    RowSplit r;
    r.head = (int)(((16 - ((uintptr_t)row & 15)) & 15) / sizeof(bf16));
    if (r.head > V) r.head = V;
    r.npack = (V - r.head) / 8;
    r.tail = r.head + r.npack * 8;
    return r;
}

__global__ void __launch_bounds__(1024) cross_entropy_kernel(float *losses, bf16 *logits, const int32_t *targets,
                                                             int V, float dloss) {
    __shared__ MaxSum sh[32];
    __shared__ float sh_lse2;
    int row = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    bf16 *x = logits + (size_t)row * V;
    int target = targets[row];
    RowSplit sp = row_split(x, V);

    if (target < 0) {  // ignored row: zero loss, zero gradient
        if (tid == 0 && losses) losses[row] = 0.0f;
        if (dloss == 0.0f) return;
        for (int i = tid; i < sp.head; i += nt) x[i] = __float2bfloat16(0.0f);
        x128 z;
#pragma unroll
        for (int j = 0; j < 8; j++) z[j] = __float2bfloat16(0.0f);
        for (int p = tid; p < sp.npack; p += nt) store128(x + sp.head + 8 * p, z);
        for (int i = sp.tail + tid; i < V; i += nt) x[i] = __float2bfloat16(0.0f);
        return;
    }

    // Read the target logit now: pass 2 may overwrite it after the barrier below.
    float xt = tid == 0 ? __bfloat162float(x[target]) : 0.0f;
    MaxSum acc = {-INFINITY, 0.0f};
    for (int i = tid; i < sp.head; i += nt) acc = ms_merge(acc, {__bfloat162float(x[i]) * CE_LOG2E, 1.0f});
    for (int i = sp.tail + tid; i < V; i += nt) acc = ms_merge(acc, {__bfloat162float(x[i]) * CE_LOG2E, 1.0f});
    for (int p = tid; p < sp.npack; p += nt) {
        x128 v = load128(x + sp.head + 8 * p);
        float t[8], pm = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; j++) t[j] = __bfloat162float(v[j]) * CE_LOG2E, pm = fmaxf(pm, t[j]);
        float ps = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) ps += exp2f(t[j] - pm);
        acc = ms_merge(acc, {pm, ps});
    }
    // Butterfly within the warp, then warp results merged in warp order by warp 0.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other = {__shfl_xor_sync(0xffffffffu, acc.m, o), __shfl_xor_sync(0xffffffffu, acc.s, o)};
        acc = ms_merge(acc, other);
    }
    if (tid % 32 == 0) sh[tid / 32] = acc;
    __syncthreads();
    if (tid == 0) {
        MaxSum tot = sh[0];
        for (int w = 1; w < nt / 32; w++) tot = ms_merge(tot, sh[w]);
        float lse2 = tot.m + log2f(tot.s);
        sh_lse2 = lse2;
        if (losses) losses[row] = lse2 * CE_LN2 - xt;
    }
    __syncthreads();
    if (dloss == 0.0f) return;

    // p_i = exp2(t_i - lse2); grad = (p_i - [i == target]) * dloss.
    float lse2 = sh_lse2;
    for (int i = tid; i < sp.head; i += nt) {
        float p = exp2f(__bfloat162float(x[i]) * CE_LOG2E - lse2);
        x[i] = __float2bfloat16((p - (i == target ? 1.0f : 0.0f)) * dloss);
    }
    for (int i = sp.tail + tid; i < V; i += nt) {
        float p = exp2f(__bfloat162float(x[i]) * CE_LOG2E - lse2);
        x[i] = __float2bfloat16((p - (i == target ? 1.0f : 0.0f)) * dloss);
    }
    for (int p = tid; p < sp.npack; p += nt) {
        int i0 = sp.head + 8 * p;
        x128 v = load128(x + i0), o;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float pr = exp2f(__bfloat162float(v[j]) * CE_LOG2E - lse2);
            o[j] = __float2bfloat16((pr - (i0 + j == target ? 1.0f : 0.0f)) * dloss);
        }
        store128(x + i0, o);
    }
}

void cross_entropy_forward_backward(float *losses, bf16 *logits, const int32_t *targets, int N, int V, float dloss,
                                    cudaStream_t s) {
    CHECK(N >= 0 && V > 0, "cross_entropy_forward_backward: bad shape N=%d V=%d", N, V);
    if (N == 0) return;
    // About 8+ packs per thread for large vocabularies; small ones need fewer threads.
    int threads = V >= 65536 ? 1024 : V >= 8192 ? 512 : 128;
    cross_entropy_kernel<<<N, threads, 0, s>>>(losses, logits, targets, V, dloss);
    CUDA_CHECK_LAST();
}
