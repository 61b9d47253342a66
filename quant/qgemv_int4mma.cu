// int4 decode GEMV on the tensor cores (mma.m16n8k16, bf16 in, fp32 accumulate) for weights
// uploaded in fragment order (qgemv_upload.cu): v1 and v2 (the default), their x preparation
// kernels and launchers. qgemv (qgemv.cu) dispatches here by QWeightGpu.tiled.
#include "qgemv_impl.cuh"

// ---- int4 on the tensor cores ----------------------------------------------------------------
// For int4 rows whose length is a multiple of 64 the codes are stored in mma fragment order and
// the GEMV runs on mma.m16n8k16 (bf16 in, fp32 accumulate): (q - 8) is exact in bf16, and x is
// split into x_hi = bf16(x) and x_lo = bf16(x - x_hi), two columns of the B operand per token,
// so every product is exact and x is represented to ~2^-17 (the CPU's fp32 result within
// ~1e-5 relative; the tests hold it to the same bound as the SIMT kernels). Per group of G
// columns the accumulator is scaled, the zero point added through the per-group sum of x
// (computed in the CPU's order), and restarted.
//   Codes: tile (16 rows, 64 columns) = 32 lanes x 16 bytes; lane (g = l / 4, t = l % 4), word j
//   (columns 16 j .. 16 j + 15 of the tile) holds the A fragment of that k-tile, nibbles
//   [a0 a2 a4 a6 a1 a3 a5 a7] from the low bits: a0/a1 = (row g, col 2t / 2t+1), a2/a3 = (row
//   g+8, ...), a4..a7 the same at col + 8.
//   x: per k-tile, lane l's B fragment (k = 2t, 2t+1, 2t+8, 2t+9 of column n = g; column n is
//   token n / 2, hi (n even) or lo (n odd)).
#define MMA_MAX_M 4

__device__ __forceinline__ void mma_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t nib_pair_bf16(uint32_t v) {  // (q0, q1) at bits 0 and 16 -> bf16x2 (q0-8, q1-8)
    const uint32_t m = (v & 0x000F000Fu) | 0x43004300u;           // 128 + q, exact
    __nv_bfloat162 r = __hsub2(*(const __nv_bfloat162 *)&m, __floats2bfloat162_rn(136.0f, 136.0f));
    return *(const uint32_t *)&r;
}

template <int U>
__global__ __launch_bounds__(QG_WARPS * 32) void qgemv_int4_mma_kernel(QWeightGpu w, const uint2 *__restrict__ xb,
                                                                        const float *__restrict__ xsum,
                                                                        float *__restrict__ y, int M, int accumulate,
                                                                        int cpp, float *__restrict__ part) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int rt = blockIdx.x * QG_WARPS + warp;  // row tile
    if (rt * 16 >= w.rows) return;
    const int K = w.cols, nchunk = K / 64, ng = K / w.group, gshift = __ffs(w.group) - 1;
    const int tpg_mask = (w.group >> 4) - 1;  // k-tiles per group - 1
    const int c_begin = blockIdx.y * cpp, c_end = min(nchunk, c_begin + cpp);
    const uint4 *wq = (const uint4 *)w.q + (size_t)rt * nchunk * 32 + lane;
    const int r0 = min(rt * 16 + g, w.rows - 1), r1 = min(rt * 16 + g + 8, w.rows - 1);
    const uint32_t *sz0 = (const uint32_t *)w.sz + (size_t)r0 * ng, *sz1 = (const uint32_t *)w.sz + (size_t)r1 * ng;
    const int tok = t < M ? t : 0;
    const float *xs_t = xsum + (size_t)tok * ng;
    float acc0 = 0.0f, acc1 = 0.0f, c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int c0 = c_begin; c0 < c_end; c0 += U) {
        uint4 wv[U];
#pragma unroll
        for (int u = 0; u < U; u++)
            if (c0 + u < c_end) wv[u] = __ldg(wq + (size_t)(c0 + u) * 32);
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (c0 + u >= c_end) break;
            const uint32_t wr[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int kt = (c0 + u) * 4 + j;
                const uint2 b = __ldg(xb + (size_t)kt * 32 + lane);
                const uint32_t v = wr[j];
                mma_bf16(c, nib_pair_bf16(v), nib_pair_bf16(v >> 4), nib_pair_bf16(v >> 8), nib_pair_bf16(v >> 12),
                         b.x, b.y);
                if ((kt & tpg_mask) == tpg_mask) {  // last k-tile of a group: scale, add the zero term
                    const int grp = (kt * 16) >> gshift;
                    const uint32_t p0 = __ldg(sz0 + grp), p1 = __ldg(sz1 + grp);
                    const float xg = __ldg(xs_t + grp);
                    acc0 = fmaf(__uint_as_float(p0 << 16), c[0] + c[1], fmaf(__uint_as_float(p0 & 0xFFFF0000u), xg, acc0));
                    acc1 = fmaf(__uint_as_float(p1 << 16), c[2] + c[3], fmaf(__uint_as_float(p1 & 0xFFFF0000u), xg, acc1));
                    c[0] = c[1] = c[2] = c[3] = 0.0f;
                }
            }
        }
    }
    if (t >= M) return;
    const int rows[2] = {rt * 16 + g, rt * 16 + g + 8};
    const float a[2] = {acc0, acc1};
    for (int i = 0; i < 2; i++) {
        if (rows[i] >= w.rows) continue;
        if (part) part[((size_t)blockIdx.y * M + t) * w.rows + rows[i]] = a[i];
        else store_out<QUANT_INT4>(w, NULL, y, rows[i], t, a[i], accumulate);
    }
}

// x [M, K] fp32 -> B fragments of (x_hi, x_lo) per k-tile, and the per-group sums of x in the
// CPU's order (a plain left-to-right fp32 sum per group, as quant/qkernels.c prep_acts).
__global__ void int4_mma_prep_kernel(uint2 *xb, float *xsum, const float *x, int M, int K, int G) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int ntile = K / 16, ng = K / G;
    if (i < ntile * 32) {
        const int kt = i / 32, lane = i % 32, n = lane >> 2, t = lane & 3, m = n >> 1, lo = n & 1;
        uint32_t r[2] = {0, 0};
        if (m < M) {
            const float *xr = x + (size_t)m * K + kt * 16;
            const int ks[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
            __nv_bfloat16 v[4];
            for (int e = 0; e < 4; e++) {
                const float f = xr[ks[e]];
                const __nv_bfloat16 hi = __float2bfloat16_rn(f);
                v[e] = lo ? __float2bfloat16_rn(f - __bfloat162float(hi)) : hi;
            }
            r[0] = (uint32_t)*(const uint16_t *)&v[0] | ((uint32_t)*(const uint16_t *)&v[1] << 16);
            r[1] = (uint32_t)*(const uint16_t *)&v[2] | ((uint32_t)*(const uint16_t *)&v[3] << 16);
        }
        xb[i] = make_uint2(r[0], r[1]);
    }
    if (i < M * ng) {
        const int m = i / ng, grp = i % ng;
        const float *xr = x + (size_t)m * K + (size_t)grp * G;
        float s = 0.0f;
        for (int k = 0; k < G; k++) s += xr[k];
        xsum[i] = s;
    }
}

// ---- int4 on the tensor cores, v2 (the default) -----------------------------------------------
// The same fragments and numerics as v1 above (codes in mma fragment order, x as bf16 hi + lo
// columns so every product is exact, per group: scale times the group's fp32 partial plus zero
// times the group's sum of x), organized for bandwidth. v1 streamed 0.83 TB/s on H200: per group
// it read (scale, zero) with two dependent 4-byte loads from 16 different rows right where they
// were used (a full memory latency exposed every 64-256 columns), had 64 bytes per lane in
// flight, and read x's fragments from L1 at twice the weight bytes. Here:
//  - A warp owns QV2_RT = 2 row tiles (32 rows): each x fragment it loads feeds two mma, and the
//    shared work (x loads, group sums) is amortized over twice the weights.
//  - Every lane runs its own cp.async ring of QV2_STAGES stages in shared memory; a stage is one
//    64-column chunk: the lane's 16 code bytes of both tiles, the (scale, zero) pairs of the groups
//    ending in the chunk, its x fragments and the groups' sums of x. A lane copies exactly what it
//    reads itself (cp.async.wait_group is per thread), so the ring needs no barrier at all, and
//    QV2_STAGES - 1 chunks (5 KB of codes per warp, 40-60 KB per SM) are in flight while one is
//    multiplied: the weight stream never waits on the arithmetic.
//  - (scale, zero) are pre-shuffled at upload to [row-tile pair][group][g]: 16 bytes hold lane g's
//    four pairs (rows g and g + 8 of both tiles), one copy per group, issued stages ahead.
//  - Up to 8 tokens in one pass (NT = 2 n8 column tiles: lane (g, t) holds tokens t and t + 4), so
//    the weights are read once for a batch of 8 (v1: once per 4 tokens).
//  - K is split over blocks so that all blocks fit the GPU at once as equal-size tasks (decode
//    GEMVs are a few microseconds: a second partial wave or a reduce launch would cost as much as
//    the stream); whole groups per split, and the last block of each row block to finish (a
//    ticket counter) adds the partial sums in split order: deterministic, no second launch.
//  - The x preparation kernel lets the GEMV launch at once (programmatic dependent launch): its
//    weight prefetch overlaps the prep and the launch gap; it waits (griddepcontrol.wait) only
//    before it reads x, y or the split-K scratch.
// Conversion stays two instructions per pair of codes (v1's nib_pair_bf16, plus the shifts):
// exact and cheaper tricks need magic offsets whose products would not cancel exactly in fp32.
#define QV2_WARPS 4
#define QV2_RT 2                               // row tiles per warp
#define QV2_STAGES 6                           // ring depth per lane
#define QV2_ROWS (QV2_WARPS * QV2_RT * 16)     // rows per block

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async_cg16(void *s, const void *g) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(s)), "l"(g) : "memory");
}
template <int N> __device__ __forceinline__ void cp_async_ca(void *s, const void *g) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(smem_u32(s)), "l"(g), "n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Ring units (16 bytes per lane each) of one stage: 0, 1 codes of tile 0 / 1; 2 .. 1 + gpc the
// (scale, zero) pairs of the groups ending in the chunk; 2 + gpc the groups' x sums (gpc x NT
// floats); 3 + gpc .. 2 + gpc + 2 NT the x fragments (k-tile j, column tile nt at uint2 j NT + nt).
// gpc: groups ending per chunk (2 for G = 32, else 1).
template <int NT>
__global__ __launch_bounds__(QV2_WARPS * 32, 2) void qgemv_int4_mma2_kernel(QWeightGpu w, const uint4 *__restrict__ xb,
                                                                             const float *__restrict__ xsum,
                                                                             float *__restrict__ y, int M, int accumulate,
                                                                             int cpb, float *__restrict__ part,
                                                                             int *__restrict__ cnt) {
    extern __shared__ uint4 qv2_ring[];
    __shared__ int s_last;
    constexpr int S = QV2_STAGES;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int K = w.cols, N = w.rows, G = w.group, nch = K / 64, ng = K / G;
    const int gpc = G < 64 ? 64 / G : 1, cpg = G > 64 ? G / 64 : 1;  // groups per chunk, chunks per group
    const int U = 3 + gpc + 2 * NT;
    const int rtp = blockIdx.x * QV2_WARPS + warp;  // this warp's pair of row tiles
    const bool active = rtp * 32 < N;               // the code array is padded to whole pairs
    const int c_begin = blockIdx.y * cpb, nc = min(nch, c_begin + cpb) - c_begin;
    uint4 *ring = qv2_ring + (size_t)warp * S * U * 32 + lane;  // unit u of stage s: ring[(s U + u) 32]
    const uint4 *wq = (const uint4 *)w.q + ((size_t)2 * rtp * nch + c_begin) * 32 + lane;
    const size_t tile_step = (size_t)nch * 32;
    const uint4 *szp = (const uint4 *)w.sz + (size_t)rtp * ng * 8 + g;

    auto issue_w = [&](int i) {  // codes and (scale, zero) of chunk c_begin + i: independent of x
        uint4 *st = ring + (size_t)(i % S) * U * 32;
        cp_async_cg16(st, wq + (size_t)i * 32);
        cp_async_cg16(st + 32, wq + tile_step + (size_t)i * 32);
        const int c = c_begin + i;
        if (G <= 64) {
            for (int gi = 0; gi < gpc; gi++) cp_async_cg16(st + (2 + gi) * 32, szp + (size_t)(c * gpc + gi) * 8);
        } else if ((c + 1) % cpg == 0) {
            cp_async_cg16(st + 2 * 32, szp + (size_t)((c + 1) / cpg - 1) * 8);
        }
    };
    auto issue_x = [&](int i) {  // x fragments and group sums of chunk c_begin + i
        uint4 *st = ring + (size_t)(i % S) * U * 32;
        const int c = c_begin + i;
        const uint4 *xp = xb + ((size_t)c * 32 + lane) * (2 * NT);
#pragma unroll
        for (int u = 0; u < 2 * NT; u++) cp_async_ca<16>(st + (3 + gpc + u) * 32, xp + u);
        float *xs_dst = (float *)(st + (2 + gpc) * 32);
        if (G <= 64) {
            for (int gi = 0; gi < gpc; gi++)
                cp_async_ca<4 * NT>(xs_dst + gi * NT, xsum + ((size_t)(c * gpc + gi) * 4 + t) * NT);
        } else if ((c + 1) % cpg == 0) {
            cp_async_ca<4 * NT>(xs_dst, xsum + ((size_t)((c + 1) / cpg - 1) * 4 + t) * NT);
        }
    };

    float acc[QV2_RT][2][NT], c[QV2_RT][NT][4];
#pragma unroll
    for (int r = 0; r < QV2_RT; r++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            acc[r][0][n] = acc[r][1][n] = 0.0f;
            c[r][n][0] = c[r][n][1] = c[r][n][2] = c[r][n][3] = 0.0f;
        }
    // The next kernel may launch (it waits for this grid's completion before it reads anything).
    pdl_launch_dependents();
    // Prologue: the weights of the first S - 1 chunks before the wait for the prep kernel.
    if (active)
        for (int i = 0; i < S - 1; i++) {
            if (i < nc) issue_w(i);
            cp_async_commit();
        }
    pdl_wait();
    if (active) {
        for (int i = 0; i < S - 1 && i < nc; i++) issue_x(i);
        cp_async_commit();
        for (int i = 0; i < nc; i++) {
            // chunk i: with the prologue (all of it, i = 0), or the group committed S - 1 chunks ago
            if (i == 0) cp_async_wait<0>();
            else cp_async_wait<S - 2>();
            const uint4 *st = ring + (size_t)(i % S) * U * 32;
            const uint4 q0 = st[0], q1 = st[32];
            uint2 xf[4][NT];
#pragma unroll
            for (int u = 0; u < 2 * NT; u++) {
                const uint4 v = st[(3 + gpc + u) * 32];
                xf[(2 * u) / NT][(2 * u) % NT] = make_uint2(v.x, v.y);
                xf[(2 * u + 1) / NT][(2 * u + 1) % NT] = make_uint2(v.z, v.w);
            }
            const uint32_t wr[QV2_RT][4] = {{q0.x, q0.y, q0.z, q0.w}, {q1.x, q1.y, q1.z, q1.w}};
            const int ch = c_begin + i;
            const bool ends = G >= 64 && (ch + 1) % cpg == 0;  // the chunk closes a group of >= 64
#pragma unroll
            for (int j = 0; j < 4; j++) {
#pragma unroll
                for (int r = 0; r < QV2_RT; r++) {
                    const uint32_t v = wr[r][j];
                    const uint32_t a0 = nib_pair_bf16(v), a1 = nib_pair_bf16(v >> 4), a2 = nib_pair_bf16(v >> 8),
                                   a3 = nib_pair_bf16(v >> 12);
#pragma unroll
                    for (int n = 0; n < NT; n++) mma_bf16(c[r][n], a0, a1, a2, a3, xf[j][n].x, xf[j][n].y);
                }
                if ((G == 32 && (j & 1)) || (j == 3 && ends)) {  // close a group: scale, zero term, restart
                    const int gi = G == 32 ? j >> 1 : 0;
                    const uint4 szv = st[(2 + gi) * 32];
                    const float *xsv = (const float *)(st + (2 + gpc) * 32) + gi * NT;
                    const uint32_t p[QV2_RT][2] = {{szv.x, szv.y}, {szv.z, szv.w}};
#pragma unroll
                    for (int n = 0; n < NT; n++) {
                        const float xg = xsv[n];
#pragma unroll
                        for (int r = 0; r < QV2_RT; r++) {
#pragma unroll
                            for (int h = 0; h < 2; h++) {
                                const float sc = __uint_as_float(p[r][h] << 16), zp = __uint_as_float(p[r][h] & 0xFFFF0000u);
                                acc[r][h][n] = fmaf(sc, c[r][n][2 * h] + c[r][n][2 * h + 1], fmaf(zp, xg, acc[r][h][n]));
                                c[r][n][2 * h] = c[r][n][2 * h + 1] = 0.0f;
                            }
                        }
                    }
                }
            }
            // refill the slot read last iteration (this lane's own reads of it are complete)
            if (i + S - 1 < nc) issue_w(i + S - 1), issue_x(i + S - 1);
            cp_async_commit();
        }
    }
    // lane (g, t): rows 32 rtp + 16 r + g + 8 h, tokens t + 4 n
    const int ks = gridDim.y;
    if (ks == 1) {
        if (!active) return;
#pragma unroll
        for (int r = 0; r < QV2_RT; r++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    const int row = rtp * 32 + 16 * r + g + 8 * h, m = t + 4 * n;
                    if (row < N && m < M) store_out<QUANT_INT4>(w, NULL, y, row, m, acc[r][h][n], accumulate);
                }
        return;
    }
    if (active)
#pragma unroll
        for (int r = 0; r < QV2_RT; r++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    const int row = rtp * 32 + 16 * r + g + 8 * h, m = t + 4 * n;
                    if (row < N && m < M) part[((size_t)blockIdx.y * M + m) * N + row] = acc[r][h][n];
                }
    // The last block of this row block to arrive adds the splits in order 0..ks-1 (the result does
    // not depend on which block that is) and re-arms the counter for the next launch.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(cnt + blockIdx.x, 1) == ks - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const int row0 = blockIdx.x * QV2_ROWS;
    for (int e = threadIdx.x; e < M * QV2_ROWS; e += blockDim.x) {
        const int m = e / QV2_ROWS, row = row0 + e % QV2_ROWS;
        if (row >= N) continue;
        float v = 0.0f;
        for (int k = 0; k < ks; k++) v += __ldcg(part + ((size_t)k * M + m) * N + row);
        store_out<QUANT_INT4>(w, NULL, y, row, m, v, accumulate);
    }
    if (threadIdx.x == 0) cnt[blockIdx.x] = 0;
}

// x [M <= 4 NT, K] -> v2's fragments: uint2 ((chunk 32 + lane) 4 + j) NT + n holds lane's B
// fragment of k-tile 4 chunk + j, column tile n (columns 8n + 2 token' + lo: token 4n + token',
// hi or lo part); and the group sums [group][t][n] (token t + 4n) in the CPU's order (a plain
// left-to-right fp32 sum per group, as quant/qkernels.c prep_acts). Tokens >= M are zeros.
// x is the source's rows (KIND: qact_src.cuh), computed here instead of in a kernel of its own.
// The prep is pure latency (a few KB in and out), so the work is laid out for short chains: a
// block of QP_THREADS owns the columns [k0, k0 + kb) of all tokens, kb = int4_mma2_prep_kb (whole
// 64-column chunks and whole groups: 128 NT, or one group of 256), and
//  1. loads the source's inputs there, coalesced, all of a thread's loads (at most VPT) issued
//     before anything waits on them; for an RMSNorm source the tokens' 1 / rms meanwhile
//     (qsrc_rms_inv: every block reads the tokens' whole rows, 16 KB per token at K = 4096, from
//     L2, instead of a kernel of its own);
//  2. computes every value once (qsrc_val) into shared memory: per token a row of kb floats with
//     4 pad floats after each group (float4-aligned groups, which the group-sum threads of
//     different groups and tokens read spread over the banks);
//  3. writes the chunks' fragments from there, one coalesced uint2 per entry; and
//  4. one thread per (group, token) adds the group's values left to right in fp32 from shared
//     memory (float4 reads, 32 values loaded ahead of their adds): the same adds of the same
//     floats in the same order as the CPU, so the same bits.
// (Before, a thread per (group, token) read its G values from global memory itself, recomputing
// each SwiGLU / RMSNorm value for the sum after the fragment threads of other blocks had already
// done so: a chain of G dependent global loads and expf / divisions, 12-14 us per call.)
#define QP_THREADS 256
#define QP_KB_MAX 256  // columns per prep block at most

__host__ __device__ static inline int int4_mma2_prep_kb(int G, int NT) { return G > 128 * NT ? G : 128 * NT; }

template <int NT, int KIND>
__global__ __launch_bounds__(QP_THREADS) void int4_mma2_prep_kernel(uint2 *xb, float *xsum, QActSrc src, int M, int K,
                                                                    int G) {
    constexpr int MT = 4 * NT, VPT = MT * QP_KB_MAX / QP_THREADS;  // tokens; source values per thread at most
    __shared__ double sh[32 * MT];
    __shared__ float rinv[MT];
    __shared__ __align__(16) float sv[MT * (QP_KB_MAX + 4 * (QP_KB_MAX / 32))];
    pdl_launch_dependents();  // the GEMV may start its weight prefetch; it waits for this grid's writes
    pdl_wait();               // launched as a dependent of the previous kernel (QActScratch.pdl)
    const int tid = threadIdx.x, gs = __ffs(G) - 1, kb = int4_mma2_prep_kb(G, NT), kbs = __ffs(kb) - 1;
    const int k0 = blockIdx.x * kb, kn = min(kb, K - k0);  // this block's columns k0 + kk, kk < kn
    const int rs = kb + 4 * (kb >> gs);                    // sv's row stride (floats)
    auto sidx = [&](int m, int kk) { return m * rs + kk + 4 * (kk >> gs); };

    // 1. value v = m kb + kk of the block: thread v % QP_THREADS
    float a[VPT], b[VPT];
#pragma unroll
    for (int e = 0; e < VPT; e++) {
        const int v = tid + QP_THREADS * e, m = v >> kbs, kk = v & (kb - 1);
        a[e] = b[e] = 0.0f;
        if (m < M && kk < kn) {
            const size_t i = (size_t)m * src.ld + k0 + kk;
            a[e] = src.x[i];
            if (KIND == QSRC_RMSNORM) b[e] = src.w[k0 + kk];
            if (KIND == QSRC_SWIGLU) b[e] = src.up[i];
        }
    }
    if (KIND == QSRC_RMSNORM) qsrc_rms_inv<QP_THREADS>(rinv, src, M, K, sh);
    // 2. the values, once each
#pragma unroll
    for (int e = 0; e < VPT; e++) {
        const int v = tid + QP_THREADS * e, m = v >> kbs, kk = v & (kb - 1);
        if (m < M && kk < kn) sv[sidx(m, kk)] = qsrc_val<KIND>(a[e], b[e], KIND == QSRC_RMSNORM ? rinv[m] : 1.0f);
    }
    __syncthreads();

    // 3. the fragments of the block's chunks
    uint2 *xbb = xb + (size_t)(k0 >> 6) * 128 * NT;
    for (int o = tid; o < (kn >> 6) * 128 * NT; o += QP_THREADS) {
        const int n = o % NT, j = (o / NT) & 3, lane = (o / (4 * NT)) & 31, ch = o / (128 * NT);
        const int col = lane >> 2, t = lane & 3, m = 4 * n + (col >> 1), lo = col & 1;
        uint32_t r[2] = {0, 0};
        if (m < M) {
            // k = 2t, 2t + 1, 2t + 8, 2t + 9 of the k-tile (16 columns: within one group)
            const float *p = sv + sidx(m, ch * 64 + j * 16) + 2 * t;
            const float2 f01 = *(const float2 *)p, f89 = *(const float2 *)(p + 8);
            const float f[4] = {f01.x, f01.y, f89.x, f89.y};
            uint32_t v[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const __nv_bfloat16 hi = __float2bfloat16_rn(f[e]);
                const __nv_bfloat16 bv = lo ? __float2bfloat16_rn(f[e] - __bfloat162float(hi)) : hi;
                v[e] = *(const uint16_t *)&bv;
            }
            r[0] = v[0] | (v[1] << 16), r[1] = v[2] | (v[3] << 16);
        }
        xbb[o] = make_uint2(r[0], r[1]);
    }

    // 4. the sums of the block's groups (at most 8 groups x 8 tokens: one pass)
    float *xsb = xsum + (size_t)(k0 >> gs) * 4 * NT;
    for (int o = tid; o < (kn >> gs) * 4 * NT; o += QP_THREADS) {
        const int n = o % NT, t = (o / NT) & 3, grp = o / (4 * NT), m = 4 * n + t;
        float s = 0.0f;
        if (m < M) {
            const float4 *p = (const float4 *)(sv + sidx(m, grp * G));
#pragma unroll 2
            for (int i = 0; i < G / 4; i += 8) {
                float4 q[8];
#pragma unroll
                for (int u = 0; u < 8; u++) q[u] = p[i + u];
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    s += q[u].x;
                    s += q[u].y;
                    s += q[u].z;
                    s += q[u].w;
                }
            }
        }
        xsb[o] = s;
    }
}

// ---- host side -------------------------------------------------------------------------------
static int g_int4_pdl = 1;
void qgemv_set_int4_pdl(int on) { g_int4_pdl = !!on; }

// Blocks of qgemv_int4_mma2_kernel<NT> one SM holds at `smem` bytes of ring (cached per shape of
// the ring: the units per stage differ by group size and NT).
template <int NT> static int int4_mma2_blocks_per_sm(size_t smem) {
    static int set = 0, cache[8];
    const int units = (int)(smem / ((size_t)QV2_WARPS * QV2_STAGES * 32 * sizeof(uint4)));
    if (!set) {
        const int max_units = 3 + 2 + 2 * NT;  // G = 32
        CUDA_CHECK(cudaFuncSetAttribute(qgemv_int4_mma2_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)((size_t)QV2_WARPS * QV2_STAGES * 32 * sizeof(uint4) * max_units)));
        CUDA_CHECK(cudaFuncSetAttribute(qgemv_int4_mma2_kernel<NT>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        (int)cudaSharedmemCarveoutMaxShared));  // 3 blocks of 72 KB per SM
        memset(cache, 0, sizeof cache);
        set = 1;
    }
    const int slot = units & 7;
    if (!cache[slot]) {
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&cache[slot], qgemv_int4_mma2_kernel<NT>,
                                                                 QV2_WARPS * 32, smem));
        if (cache[slot] < 1) cache[slot] = 1;
    }
    return cache[slot];
}

// v2's x prep of M <= 4 NT tokens of src into s->xb, s->xsum.
template <int NT>
static void int4_mma2_prep_launch(const QActSrc &src, int M, int K, int G, QActScratch *s, cudaStream_t st) {
    const dim3 grid(ceil_div(K, int4_mma2_prep_kb(G, NT))), block(QP_THREADS);
    if (src.kind == QSRC_RMSNORM)
        qlaunch(s->pdl, int4_mma2_prep_kernel<NT, QSRC_RMSNORM>, grid, block, 0, st, s->xb, s->xsum, src, M, K, G);
    else if (src.kind == QSRC_SWIGLU)
        qlaunch(s->pdl, int4_mma2_prep_kernel<NT, QSRC_SWIGLU>, grid, block, 0, st, s->xb, s->xsum, src, M, K, G);
    else
        qlaunch(s->pdl, int4_mma2_prep_kernel<NT, QSRC_X>, grid, block, 0, st, s->xb, s->xsum, src, M, K, G);
}

// One launch of the v2 int4 GEMV for M <= 4 NT tokens: the x prep, then the GEMV with a K split
// chosen so that every block is resident at once (one wave of equal tasks): as many splits as the
// SMs have room for beside the row blocks, whole groups per split, within the partials scratch.
template <int NT>
static void int4_mma2_launch(float *y, const QActSrc &src, int M, const QWeightGpu *w, int acc, QActScratch *s,
                             cudaStream_t st) {
    const int K = w->cols, G = w->group, nch = K / 64;
    const int gpc = G < 64 ? 64 / G : 1, cpg = G > 64 ? G / 64 : 1;
    const size_t smem = (size_t)QV2_WARPS * QV2_STAGES * 32 * sizeof(uint4) * (3 + gpc + 2 * NT);
    const int rowblocks = ceil_div(w->rows, QV2_ROWS);
    const int cap = int4_mma2_blocks_per_sm<NT>(smem) * qgemv_sm_count();
    const int ks_max = cap / rowblocks > 1 ? cap / rowblocks : 1;
    int cpb = ceil_div(ceil_div(nch, ks_max), cpg) * cpg;
    while (cpb < nch && ((size_t)ceil_div(nch, cpb) * M * w->rows > QG_PART_FLOATS || rowblocks > QV2_MAX_CNT))
        cpb += cpg;
    const int ks = ceil_div(nch, cpb);
    int4_mma2_prep_launch<NT>(src, M, K, G, s, st);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(rowblocks, ks);
    cfg.blockDim = dim3(QV2_WARPS * 32);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = g_int4_pdl;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, qgemv_int4_mma2_kernel<NT>, *w, (const uint4 *)s->xb, (const float *)s->xsum,
                                  y, M, acc, cpb, ks > 1 ? s->part : (float *)NULL, s->cnt));
}

void qgemv_int4_mma(float *y, const float *x, int M, const QWeightGpu *w, int accumulate, QActScratch *s,
                    cudaStream_t st) {
    const int K = w->cols;
    const int nchunk = K / 64, rtiles = ceil_div(w->rows, 16);
    constexpr int U = 4;
    for (int m0 = 0; m0 < M; m0 += MMA_MAX_M) {
        const int mc = M - m0 < MMA_MAX_M ? M - m0 : MMA_MAX_M;
        int cpp;
        const int ks = qgemv_ksplit_plan(s, rtiles, nchunk, U, 1, mc, w->rows, &cpp);
        const int nprep = (K / 16) * 32 > mc * (K / w->group) ? (K / 16) * 32 : mc * (K / w->group);
        int4_mma_prep_kernel<<<ceil_div(nprep, 256), 256, 0, st>>>(s->xb, s->xsum, x + (size_t)m0 * K, mc, K, w->group);
        CUDA_CHECK_LAST();
        float *part = ks > 1 ? s->part : NULL, *yc = y + (size_t)m0 * w->rows;
        qgemv_int4_mma_kernel<U><<<dim3(ceil_div(rtiles, QG_WARPS), ks), QG_WARPS * 32, 0, st>>>(
            *w, s->xb, s->xsum, yc, mc, accumulate, cpp, part);
        CUDA_CHECK_LAST();
        if (part) qgemv_reduce_int4(yc, part, mc, ks, w, accumulate, st);
        CUDA_CHECK_LAST();
    }
}

void qgemv_int4_mma2(float *y, const QActSrc &src, int M, const QWeightGpu *w, int accumulate, QActScratch *s,
                     cudaStream_t st) {
    for (int m0 = 0; m0 < M; m0 += QG_MAX_M) {
        const int mc = M - m0 < QG_MAX_M ? M - m0 : QG_MAX_M;
        const QActSrc sc = qsrc_rows(src, m0);
        if (mc <= 4) int4_mma2_launch<1>(y + (size_t)m0 * w->rows, sc, mc, w, accumulate, s, st);
        else int4_mma2_launch<2>(y + (size_t)m0 * w->rows, sc, mc, w, accumulate, s, st);
    }
}

void qgemv_int4_mma2_prep(const QActSrc *src, int M, int K, int G, QActScratch *s, cudaStream_t st) {
    CHECK(M >= 1 && M <= QG_MAX_M && (G == 32 || G == 64 || G == 128 || G == 256) && K % 64 == 0 && K % G == 0 &&
              s && K <= s->max_cols && M <= s->max_rows,
          "qgemv_int4_mma2_prep: %d tokens x %d features, group %d", M, K, G);
    if (M <= 4) int4_mma2_prep_launch<1>(*src, M, K, G, s, st);
    else int4_mma2_prep_launch<2>(*src, M, K, G, s, st);
    CUDA_CHECK_LAST();
}
