// GPU RMSNorm (HF LlamaRMSNorm): y = (x * rstd) * w, rstd = 1/sqrt(mean(x^2) + eps),
// statistics in fp32. Backward is deterministic: dweight partials per block in a fixed
// row assignment, then summed over blocks in a fixed order; no atomics anywhere.
// Vectorized paths (VEC = 8: 128-bit loads) need D % 8 == 0 and 16-byte aligned tensors;
// otherwise the launchers pick the scalar instantiation (VEC = 1) of the same kernels.
#include "../common/cuda_utils.cuh"
#include "rmsnorm.cuh"

// Backward grid: at most this many blocks, each taking rows b, b + grid, ... . It only
// depends on N, so scratch size and summation order are fixed by the shape.
#define RMS_BWD_MAX_BLOCKS 512

static bool rms_vec_ok(int D, const void *a, const void *b, const void *c, const void *d, const void *e) {
    return D % 8 == 0 && is_aligned16(a) && is_aligned16(b) && is_aligned16(c) && (!d || is_aligned16(d)) &&
           (!e || is_aligned16(e));
}

// Forward, one warp per row, the row held in registers (P 128-bit packs per lane, so
// D <= 256 * P): a single read of the input, many rows in flight per SM. RESID: the input
// is bf16(a + b), stored to resid_out, and the statistics use the rounded values. All
// loads precede the first store, so resid_out may alias a or b.
template <int P, bool RESID>
__global__ void __launch_bounds__(256) rmsnorm_forward_kernel(bf16 *resid_out, bf16 *out, float *rstd, const bf16 *a,
                                                              const bf16 *b, const bf16 *weight, int N, int D,
                                                              float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    size_t off = (size_t)row * D;
    x128 v[P], u[P];
#pragma unroll
    for (int p = 0; p < P; p++) {
        int c = (p * 32 + lane) * 8;
        if (c >= D) continue;
        v[p] = load128(a + off + c);
        if (RESID) u[p] = load128(b + off + c);
    }
    float ss = 0.0f;
#pragma unroll
    for (int p = 0; p < P; p++) {
        int c = (p * 32 + lane) * 8;
        if (c >= D) continue;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (RESID) v[p][j] = __float2bfloat16(__bfloat162float(v[p][j]) + __bfloat162float(u[p][j]));
            float f = __bfloat162float(v[p][j]);
            ss += f * f;
        }
        if (RESID) store128(resid_out + off + c, v[p]);
    }
    ss = warp_reduce_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)D + eps);  // IEEE sqrt and divide, as the CPU rounds once
#pragma unroll
    for (int p = 0; p < P; p++) {
        int c = (p * 32 + lane) * 8;
        if (c >= D) continue;
        x128 w = load128(weight + c), o;
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = __float2bfloat16((__bfloat162float(v[p][j]) * r) * __bfloat162float(w[j]));
        store128(out + off + c, o);
    }
    if (lane == 0 && rstd) rstd[row] = r;
}

// Fallback for odd D, unaligned tensors or D > 4096: one warp per row, two passes (the
// second re-reads the row, or what this same thread stored to resid_out, from cache).
template <int VEC, bool RESID>
__global__ void rmsnorm_forward_2pass_kernel(bf16 *resid_out, bf16 *out, float *rstd, const bf16 *a, const bf16 *b,
                                             const bf16 *weight, int N, int D, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    size_t off = (size_t)row * D;
    float ss = 0.0f;
    for (int c = lane * VEC; c < D; c += 32 * VEC) {
        float x[VEC], y[VEC];
        load_vec<VEC>(x, a + off + c);
        if (RESID) load_vec<VEC>(y, b + off + c);
#pragma unroll
        for (int j = 0; j < VEC; j++) {
            if (RESID) x[j] = __bfloat162float(__float2bfloat16(x[j] + y[j]));
            ss += x[j] * x[j];
        }
        if (RESID) store_vec<VEC>(resid_out + off + c, x);
    }
    ss = warp_reduce_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)D + eps);
    const bf16 *src = RESID ? resid_out : a;
    for (int c = lane * VEC; c < D; c += 32 * VEC) {
        float x[VEC], w[VEC], o[VEC];
        load_vec<VEC>(x, src + off + c);
        load_vec<VEC>(w, weight + c);
#pragma unroll
        for (int j = 0; j < VEC; j++) o[j] = (x[j] * r) * w[j];
        store_vec<VEC>(out + off + c, o);
    }
    if (lane == 0 && rstd) rstd[row] = r;
}

template <bool RESID>
static void rmsnorm_forward_launch(bf16 *resid_out, bf16 *out, float *rstd, const bf16 *a, const bf16 *b,
                                   const bf16 *weight, int N, int D, float eps, cudaStream_t s) {
    const int threads = 256;
    int grid = ceil_div(N, threads / 32);
    bool vec = rms_vec_ok(D, out, a, weight, RESID ? b : NULL, RESID ? resid_out : NULL);
    int P = 1;  // register path up to D = 4096; past that the row no longer fits registers
    while (P < 16 && D > 256 * P) P *= 2;
    if (!vec || D > 256 * P) {
        if (vec) rmsnorm_forward_2pass_kernel<8, RESID><<<grid, threads, 0, s>>>(resid_out, out, rstd, a, b, weight, N, D, eps);
        else rmsnorm_forward_2pass_kernel<1, RESID><<<grid, threads, 0, s>>>(resid_out, out, rstd, a, b, weight, N, D, eps);
        CUDA_CHECK_LAST();
        return;
    }
#define RMS_FWD_CASE(PP)                                                                                  \
    case PP:                                                                                              \
        rmsnorm_forward_kernel<PP, RESID><<<grid, threads, 0, s>>>(resid_out, out, rstd, a, b, weight, N, D, eps); \
        break;
    switch (P) {
        RMS_FWD_CASE(1)
        RMS_FWD_CASE(2)
        RMS_FWD_CASE(4)
        RMS_FWD_CASE(8)
        RMS_FWD_CASE(16)
        default: FAIL("rmsnorm_forward: internal error, P=%d", P);
    }
#undef RMS_FWD_CASE
    CUDA_CHECK_LAST();
}

// A block owns whole rows (rows blockIdx.x, + gridDim.x, ...); thread t owns the VEC-wide
// column groups t, t + blockDim.x, ... (P of them), so its dweight accumulators stay in
// registers across rows. Per row:
//   dot = sum_j dy_j w_j x_j (block reduction), c = rstd^3 * dot / D,
//   dx_i = rstd * w_i * dy_i - c * x_i  (+ dresid_i),   dw_i += dy_i * x_i * rstd.
// This is dx = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)), from y_i = w_i x_i rstd and
// d rstd / d x_j = -rstd^3 x_j / D. Pass 2 re-reads x and dy (L1 hits): holding them
// would push the kernel past 64 registers and halve the resident rows.
template <int VEC, int P>
__global__ void __launch_bounds__(1024, 1) rmsnorm_backward_kernel(bf16 *dinp, float *partial, const bf16 *dout,
                                                                const bf16 *dresid, const bf16 *inp,
                                                                const bf16 *weight, const float *rstd, int N, int D) {
    __shared__ float red[32];
    BVec<VEC> w[P];
    float dw[P][VEC];
#pragma unroll
    for (int p = 0; p < P; p++) {
        int c = (p * blockDim.x + threadIdx.x) * VEC;
#pragma unroll
        for (int j = 0; j < VEC; j++) dw[p][j] = 0.0f;
        if (c < D) w[p] = load_bvec<VEC>(weight + c);
    }
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        size_t off = (size_t)row * D;
        float r = rstd[row], dot = 0.0f;
        // All loads of the row, dresid included, are issued before the barrier so each row
        // costs one memory round trip.
        BVec<VEC> x[P], dy[P], dr[P];
#pragma unroll
        for (int p = 0; p < P; p++) {
            int c = (p * blockDim.x + threadIdx.x) * VEC;
            if (c >= D) continue;
            x[p] = load_bvec<VEC>(inp + off + c);
            dy[p] = load_bvec<VEC>(dout + off + c);
            if (dresid) dr[p] = load_bvec<VEC>(dresid + off + c);
#pragma unroll
            for (int j = 0; j < VEC; j++) dot += dy[p].f(j) * w[p].f(j) * x[p].f(j);
        }
        dot = block_reduce_sum(dot, red);
        float cc = r * r * r * dot / (float)D;
#pragma unroll
        for (int p = 0; p < P; p++) {
            int c = (p * blockDim.x + threadIdx.x) * VEC;
            if (c >= D) continue;
            x[p] = load_bvec<VEC>(inp + off + c);  // L1 hits; cheaper than holding them
            dy[p] = load_bvec<VEC>(dout + off + c);
            float dx[VEC];
#pragma unroll
            for (int j = 0; j < VEC; j++) {
                float xj = x[p].f(j), dyj = dy[p].f(j);
                dx[j] = r * w[p].f(j) * dyj - cc * xj;
                if (dresid) dx[j] += dr[p].f(j);
                dw[p][j] += dyj * xj * r;
            }
            store_vec<VEC>(dinp + off + c, dx);  // dinp may alias dresid: same element, read first
        }
    }
    if (!partial) return;
#pragma unroll
    for (int p = 0; p < P; p++) {
        int c = (p * blockDim.x + threadIdx.x) * VEC;
        if (c >= D) continue;
#pragma unroll
        for (int j = 0; j < VEC; j++) partial[(size_t)blockIdx.x * D + c + j] = dw[p][j];
    }
}

// dweight[d] += sum_b partial[b][d], b in a fixed order: thread (x, y) sums the b = y mod
// 16 stripe of column blockIdx.x*32 + x, then row y = 0 adds the 16 stripes in order.
__global__ void rmsnorm_dweight_reduce_kernel(float *dweight, const float *partial, int nblk, int D) {
    __shared__ float s[16][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (col < D)
        for (int b = threadIdx.y; b < nblk; b += 16) acc += partial[(size_t)b * D + col];
    s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y != 0 || col >= D) return;
    float t = 0.0f;
#pragma unroll
    for (int y = 0; y < 16; y++) t += s[y][threadIdx.x];
    dweight[col] += t;
}

void rmsnorm_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *weight, int N, int D, float eps,
                     cudaStream_t s) {
    CHECK(N >= 0 && D > 0, "rmsnorm_forward: bad shape N=%d D=%d", N, D);
    if (N > 0) rmsnorm_forward_launch<false>(NULL, out, rstd, inp, NULL, weight, N, D, eps, s);
}

void residual_rmsnorm_forward(bf16 *resid_out, bf16 *out, float *rstd, const bf16 *resid_in, const bf16 *x,
                              const bf16 *weight, int N, int D, float eps, cudaStream_t s) {
    CHECK(N >= 0 && D > 0, "residual_rmsnorm_forward: bad shape N=%d D=%d", N, D);
    if (N > 0) rmsnorm_forward_launch<true>(resid_out, out, rstd, resid_in, x, weight, N, D, eps, s);
}

size_t rmsnorm_backward_scratch_floats(int N, int D) {
    int nblk = N < RMS_BWD_MAX_BLOCKS ? N : RMS_BWD_MAX_BLOCKS;
    return (size_t)(nblk > 0 ? nblk : 0) * (size_t)(D > 0 ? D : 0);
}

// Instantiates P = 1, 2, 4, ... up to MAXP only.
template <int VEC, int MAXP>
static void rmsnorm_backward_launch(int P, int grid, int threads, bf16 *dinp, float *partial, const bf16 *dout,
                                    const bf16 *dresid, const bf16 *inp, const bf16 *weight, const float *rstd, int N,
                                    int D, cudaStream_t s) {
#define RMS_BWD_CASE(PP)                                                                                            \
    case PP:                                                                                                        \
        if constexpr (PP <= MAXP)                                                                                   \
            rmsnorm_backward_kernel<VEC, PP><<<grid, threads, 0, s>>>(dinp, partial, dout, dresid, inp, weight, rstd, N, \
                                                                  D);                                               \
        break;
    switch (P) {
        RMS_BWD_CASE(1)
        RMS_BWD_CASE(2)
        RMS_BWD_CASE(4)
        RMS_BWD_CASE(8)
        RMS_BWD_CASE(16)
        default: FAIL("rmsnorm_backward: internal error, P=%d", P);
    }
#undef RMS_BWD_CASE
}

void rmsnorm_backward(bf16 *dinp, float *dweight, float *scratch, const bf16 *dout, const bf16 *dresid,
                      const bf16 *inp, const bf16 *weight, const float *rstd, int N, int D, cudaStream_t s) {
    CHECK(N >= 0 && D > 0, "rmsnorm_backward: bad shape N=%d D=%d", N, D);
    if (N == 0) return;
    CHECK(!dweight || scratch, "rmsnorm_backward: dweight needs scratch (rmsnorm_backward_scratch_floats floats)");
    int vec = rms_vec_ok(D, dinp, dout, inp, weight, dresid) ? 8 : 1;
    int units = D / vec;  // column groups per row
    // P groups per thread (a template constant, so the weights and dweight accumulators
    // stay in registers) and up to 1024 threads, a multiple of 32: P = 1 up to D = 8192 on
    // the vector path. The vector path caps P at 2 (D <= 16384), the scalar one at 16.
    int maxP = vec == 8 ? 2 : 16, P = 1;
    while (P < maxP && units > 1024 * P) P *= 2;
    CHECK(units <= 1024 * P, "rmsnorm_backward: D=%d is too large (max %d%s)", D, 1024 * maxP * vec,
          vec == 1 ? " on the scalar path" : "");
    int threads = ceil_div(ceil_div(units, P), 32) * 32;
    int grid = N < RMS_BWD_MAX_BLOCKS ? N : RMS_BWD_MAX_BLOCKS;
    float *partial = dweight ? scratch : NULL;
    if (vec == 8) rmsnorm_backward_launch<8, 2>(P, grid, threads, dinp, partial, dout, dresid, inp, weight, rstd, N, D, s);
    else rmsnorm_backward_launch<1, 16>(P, grid, threads, dinp, partial, dout, dresid, inp, weight, rstd, N, D, s);
    CUDA_CHECK_LAST();
    if (!dweight) return;
    rmsnorm_dweight_reduce_kernel<<<ceil_div(D, 32), dim3(32, 16), 0, s>>>(dweight, partial, grid, D);
    CUDA_CHECK_LAST();
}
