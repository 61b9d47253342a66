// Decode GEMV kernels (layout and numerics: qgemv.cuh).
#include "qgemv.cuh"

#include "../model/safetensors.h"

#include <float.h>

#define QG_WARPS 4
#define QG_KSPLIT_MAX 16
#define QG_PART_FLOATS ((size_t)QG_KSPLIT_MAX * 8 * 8192)  // split-K partials scratch

// Rows per warp: the fp32 activations a lane reads are shared by the warp's rows, so the
// formats with few weight bytes per element take more rows to keep L1 traffic below the
// weight stream (int4: 32 bytes of x per 4 bytes of codes per row).
template <int MODE> struct RowsPerWarp { static constexpr int R = (MODE == QUANT_INT4) ? 4 : 2; };
#define QG_MAX_M 8

// ---- element decoding -----------------------------------------------------------------------
// 2^23 + n for a small unsigned integer n placed in the low mantissa bits: subtracting the
// magic constant gives n (minus an offset) exactly, without an int->float conversion.
#define MAGIC_F 8388608.0f
__device__ __forceinline__ float magic_f(uint32_t bits) { return __uint_as_float(bits | 0x4B000000u); }

// e4m3fn code (no NaN: our quantizers clamp to +-448) to fp32, exact: the exponent and
// mantissa bits moved into an fp32 (an fp32 subnormal for e4m3 subnormals) times 2^120.
__device__ __forceinline__ float e4m3_f(uint32_t b) {
    float f = __uint_as_float((b & 0x7Fu) << 20) * 0x1p120f;
    return (b & 0x80u) ? -f : f;
}

// fp32 -> e4m3fn code, round to nearest even, as quant_f32_to_e4m3 (inputs clamped to +-448).
__device__ __forceinline__ uint32_t f32_e4m3(float f) {
    uint32_t b = __float_as_uint(f), sign = b & 0x80000000u;
    b ^= sign;
    uint32_t r;
    if (b >= 0x43F00000u) r = 0x7F;
    else if (b < 0x3C800000u) r = __float_as_uint(__uint_as_float(b) + 16384.0f) - 0x46800000u;
    else r = (b - ((uint32_t)(127 - 7) << 23) + 0x7FFFFu + ((b >> 20) & 1u)) >> 20;
    return (r & 0xFF) | (sign >> 24);
}

template <int MODE> struct Piece;  // the weight bytes one lane reads per step
template <> struct Piece<QUANT_NONE> { typedef uint4 T; };
template <> struct Piece<QUANT_INT8> { typedef uint2 T; };
template <> struct Piece<QUANT_FP8> { typedef uint2 T; };
template <> struct Piece<QUANT_INT4> { typedef uint32_t T; };
template <> struct Piece<QUANT_8DA4W> { typedef uint32_t T; };

template <int MODE> __device__ __forceinline__ typename Piece<MODE>::T load_piece(const void *q, size_t elem) {
    typedef typename Piece<MODE>::T T;
    const int per = (MODE == QUANT_INT4 || MODE == QUANT_8DA4W) ? 8 : (int)sizeof(T) / (MODE == QUANT_NONE ? 2 : 1);
    return __ldg((const T *)q + elem / per);
}

// sum_i x[i] * w[i] over one piece of 8 for the float-weight modes.
__device__ __forceinline__ float dot_bf16(const float *x, uint4 p, float acc) {
    const uint32_t u[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        acc = fmaf(x[2 * j], __uint_as_float(u[j] << 16), acc);
        acc = fmaf(x[2 * j + 1], __uint_as_float(u[j] & 0xFFFF0000u), acc);
    }
    return acc;
}
__device__ __forceinline__ float dot_i8(const float *x, uint2 p, float acc) {
    const uint32_t u[2] = {p.x ^ 0x80808080u, p.y ^ 0x80808080u};  // offset binary: q + 128
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int i = 0; i < 4; i++)
            acc = fmaf(x[4 * j + i], __uint_as_float(__byte_perm(u[j], 0x4B000000u, 0x7540 + i)) - (MAGIC_F + 128.0f), acc);
    return acc;
}
__device__ __forceinline__ float dot_fp8(const float *x, uint2 p, float acc) {
    const uint32_t u[2] = {p.x, p.y};
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc = fmaf(x[4 * j + i], e4m3_f(u[j] >> (8 * i)), acc);
    return acc;
}
// int4: sum x (q - 8), with the odd nibbles kept at 16x (exact) and rescaled once.
__device__ __forceinline__ float dot_i4(const float *x, uint32_t u) {
    float pe = 0.0f, po = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const uint32_t v = u >> (8 * j);
        pe = fmaf(x[2 * j], magic_f(v & 0xFu) - (MAGIC_F + 8.0f), pe);
        po = fmaf(x[2 * j + 1], magic_f(v & 0xF0u) - (MAGIC_F + 128.0f), po);
    }
    return fmaf(po, 0.0625f, pe);
}

// ---- the GEMV -------------------------------------------------------------------------------
// MT: tokens the accumulators are sized for (M <= MT valid). U: steps unrolled per load batch.
// Output epilogue: the per-row / per-token scales, the bias, the residual accumulate.
template <int MODE>
__device__ __forceinline__ void store_out(const QWeightGpu &w, const float *xs, float *y, int row, int m, float v,
                                          int accumulate) {
    if (MODE == QUANT_INT8) v *= __ldg(w.scale + row);
    if (MODE == QUANT_8DA4W) v *= __ldg(xs + m);
    if (MODE == QUANT_FP8) v = v * __ldg(xs + m) * __ldg(w.scale + row);
    if (w.bias) v += __ldg(w.bias + row);
    float *o = y + (size_t)m * w.rows + row;
    *o = accumulate ? *o + v : v;
}

// Split-K: block y takes steps [y * spp, (y + 1) * spp) and, with ksplit > 1, leaves raw
// sums in part [ksplit, M, rows] for qgemv_reduce (a fixed order: results do not depend on
// scheduling).
template <int MODE, int MT, int U>
__global__ __launch_bounds__(QG_WARPS * 32) void qgemv_kernel(QWeightGpu w, const float *__restrict__ x,
                                                               const uint32_t *__restrict__ xq,
                                                               const float *__restrict__ xs,
                                                               const int *__restrict__ xzp, float *__restrict__ y,
                                                               int M, int accumulate, int spp,
                                                               float *__restrict__ part) {
    typedef typename Piece<MODE>::T T;
    constexpr int R = RowsPerWarp<MODE>::R;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = (blockIdx.x * QG_WARPS + warp) * R;
    if (row0 >= w.rows) return;
    const int K = w.cols, G = w.group, ng = G ? K / G : 0;
    const int gshift = G ? __ffs(G) - 1 : 0;  // groups are powers of two (32..256)
    const int s_begin = blockIdx.y * spp, s_end = min((K + 255) / 256, s_begin + spp);
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;
    int rows_ok[R];
    // Row pointers, clamped to the last row so loads need no row guard (the results of rows
    // past the end are never stored).
    const char *qrow[R];
    const uint32_t *grow[R];
    constexpr int EB2 = MODE == QUANT_NONE ? 4 : (MODE == QUANT_INT4 || MODE == QUANT_8DA4W) ? 1 : 2;  // 2 x bytes/elem
#pragma unroll
    for (int r = 0; r < R; r++) {
        rows_ok[r] = row0 + r < w.rows;
        const size_t row = (size_t)min(row0 + r, w.rows - 1);
        qrow[r] = (const char *)w.q + row * (size_t)w.ld * EB2 / 2;
        grow[r] = MODE == QUANT_INT4 ? (const uint32_t *)w.sz + row * ng
                                     : (const uint32_t *)w.scale + row * ng;  // fp32 bits for 8da4w
    }

    for (int s0 = s_begin; s0 < s_end; s0 += U) {
        T p[U][R];
        uint32_t gs[U][R];  // the group's (scale, zero) bf16 pair (int4) or fp32 scale bits (8da4w)
        constexpr bool NIB = MODE == QUANT_INT4 || MODE == QUANT_8DA4W;
        const bool full = (s0 + U) * 256 <= K;  // no element guard needed in this group of steps
        if constexpr (NIB) {
            // whole 1024-element blocks are stored interleaved (qweight_upload): the 4 words
            // lane l reads in 4 consecutive steps lie together, one 16-byte load
#pragma unroll
            for (int u = 0; u < U; u += 4)
                if (full || (s0 + u + 4) * 256 <= K)
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        const uint4 v = __ldg((const uint4 *)(qrow[r] + (size_t)(s0 + u) * 128) + lane);
                        p[u][r] = v.x, p[u + 1][r] = v.y, p[u + 2][r] = v.z, p[u + 3][r] = v.w;
                    }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int k = (s0 + u) * 256 + lane * 8;
            const bool blocked = NIB && (full || (s0 + (u & ~3) + 4) * 256 <= K);
#pragma unroll
            for (int r = 0; r < R; r++)
                if (full || k < K) {
                    if (!blocked) p[u][r] = __ldg((const T *)(qrow[r] + (size_t)k * EB2 / 2));
                    if constexpr (NIB) gs[u][r] = __ldg(grow[r] + (k >> gshift));
                }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int k = (s0 + u) * 256 + lane * 8;
            if (!full && k >= K) break;
            if constexpr (MODE == QUANT_8DA4W) {
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    if (m >= M) break;
                    const uint2 xw = __ldg((const uint2 *)(xq + ((size_t)m * K + k) / 4));
                    const int sx = __dp4a(0x01010101, (int)xw.x, __dp4a(0x01010101, (int)xw.y, 0));
                    const int zp = __ldg(xzp + m);
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        if (!rows_ok[r]) continue;
                        const uint32_t pw = *(const uint32_t *)&p[u][r];
                        const int lo = (int)(pw & 0x0F0F0F0Fu), hi = (int)((pw >> 4) & 0x0F0F0F0Fu);
                        const int d = __dp4a(lo, (int)xw.x, __dp4a(hi, (int)xw.y, 0));        // sum (q+8) xq
                        const int sw = __dp4a(lo, 0x01010101, __dp4a(hi, 0x01010101, 0)) - 64;  // sum q
                        const int ig = d - 8 * sx - zp * sw;
                        const float sc = __uint_as_float(gs[u][r]);
                        acc[r][m] = fmaf(sc, (float)ig, acc[r][m]);
                    }
                }
            } else {
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    if (m >= M) break;
                    float xv[8];
                    const float *xr = x + (size_t)m * K + k;
                    if ((K & 3) == 0 && k + 8 <= K) {
                        const float4 a = __ldg((const float4 *)xr), b = __ldg((const float4 *)xr + 1);
                        xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w, xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
                    } else {  // row tail, or rows not 16-byte aligned: the stored weights are zero past cols
#pragma unroll
                        for (int i = 0; i < 8; i++) xv[i] = k + i < K ? __ldg(xr + i) : 0.0f;
                    }
                    float xsum = 0.0f;
                    if (MODE == QUANT_INT4)
#pragma unroll
                        for (int i = 0; i < 8; i++) xsum += xv[i];
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        if (!rows_ok[r]) continue;
                        if constexpr (MODE == QUANT_NONE) acc[r][m] = dot_bf16(xv, *(const uint4 *)&p[u][r], acc[r][m]);
                        if constexpr (MODE == QUANT_INT8) acc[r][m] = dot_i8(xv, *(const uint2 *)&p[u][r], acc[r][m]);
                        if constexpr (MODE == QUANT_FP8) acc[r][m] = dot_fp8(xv, *(const uint2 *)&p[u][r], acc[r][m]);
                        if constexpr (MODE == QUANT_INT4) {
                            const float2 sz = make_float2(__uint_as_float(gs[u][r] << 16), __uint_as_float(gs[u][r] & 0xFFFF0000u));
                            const float pd = dot_i4(xv, *(const uint32_t *)&p[u][r]);
                            acc[r][m] = fmaf(sz.x, pd, fmaf(sz.y, xsum, acc[r][m]));
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) {
            float v = acc[r][m];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            acc[r][m] = v;
        }
    // lane (r * MT + m) % 32 writes output (r, m)
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) {
            if (lane != (r * MT + m) % 32 || m >= M || !rows_ok[r]) continue;
            if (part) part[((size_t)blockIdx.y * M + m) * w.rows + row0 + r] = acc[r][m];
            else store_out<MODE>(w, xs, y, row0 + r, m, acc[r][m], accumulate);
        }
}

template <int MODE>
__global__ void qgemv_reduce_kernel(QWeightGpu w, const float *__restrict__ part, const float *__restrict__ xs,
                                    float *__restrict__ y, int M, int ksplit, int accumulate) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= M * w.rows) return;
    const int m = i / w.rows, row = i % w.rows;
    float v = 0.0f;
    for (int k = 0; k < ksplit; k++) v += part[((size_t)k * M + m) * w.rows + row];
    store_out<MODE>(w, xs, y, row, m, v, accumulate);
}


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
#define QV2_MAX_CNT 8192                       // ticket counters: row blocks of a split launch

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
// Programmatic dependent launch (sm_90): no-ops when the launch did not ask for it.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

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
template <int NT>
__global__ void int4_mma2_prep_kernel(uint2 *xb, float *xsum, const float *x, int M, int K, int G) {
    pdl_launch_dependents();  // the GEMV may start its weight prefetch; it waits for this grid's writes
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < K / 16 * 32 * NT) {
        const int n = i % NT, j = (i / NT) & 3, lane = (i / (4 * NT)) & 31, ch = i / (128 * NT);
        const int col = lane >> 2, t = lane & 3, m = 4 * n + (col >> 1), lo = col & 1;
        uint32_t r[2] = {0, 0};
        if (m < M) {
            const float *xr = x + (size_t)m * K + (size_t)(4 * ch + j) * 16;
            const int ks[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
            uint32_t v[4];
            for (int e = 0; e < 4; e++) {
                const float f = xr[ks[e]];
                const __nv_bfloat16 hi = __float2bfloat16_rn(f);
                const __nv_bfloat16 b = lo ? __float2bfloat16_rn(f - __bfloat162float(hi)) : hi;
                v[e] = *(const uint16_t *)&b;
            }
            r[0] = v[0] | (v[1] << 16), r[1] = v[2] | (v[3] << 16);
        }
        xb[i] = make_uint2(r[0], r[1]);
    }
    if (i < K / G * 4 * NT) {
        const int n = i % NT, t = (i / NT) & 3, grp = i / (4 * NT), m = 4 * n + t;
        float s = 0.0f;
        if (m < M) {
            const float *xr = x + (size_t)m * K + (size_t)grp * G;
            for (int k = 0; k < G; k++) s += xr[k];
        }
        xsum[i] = s;
    }
}

// ---- dynamic activation quantization (one block per token) -----------------------------------
__device__ __forceinline__ float block_reduce(float v, int op_max, float *sh) {
    for (int o = 16; o > 0; o >>= 1) {
        float t = __shfl_xor_sync(0xffffffffu, v, o);
        v = op_max ? fmaxf(v, t) : fminf(v, t);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = sh[0];
    for (int i = 1; i < nw; i++) v = op_max ? fmaxf(v, sh[i]) : fminf(v, sh[i]);
    return v;
}

// torchao _int8_asymm_per_token_quant, as quant_act_int8_asym.
__global__ void act_int8_kernel(uint32_t *xq, float *xs, int *xzp, const float *x, int K) {
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * K;
    float mn = 0.0f, mx = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) mn = fminf(mn, xr[k]), mx = fmaxf(mx, xr[k]);
    mn = block_reduce(mn, 0, sh);
    mx = block_reduce(mx, 1, sh);
    float s = (mx - mn) / 255.0f;
    if (s < FLT_EPSILON) s = FLT_EPSILON;
    float z = -128.0f - rintf(mn / s);
    z = z < -128.0f ? -128.0f : z > 127.0f ? 127.0f : z;
    const float inv = 1.0f / s;
    uint32_t *out = xq + (size_t)blockIdx.x * K / 4;
    for (int p = threadIdx.x; p < K / 8; p += blockDim.x) {
        uint32_t e = 0, o = 0;
        for (int i = 0; i < 8; i++) {
            float r = rintf(xr[8 * p + i] * inv) + z;
            const int c = r < -128.0f ? -128 : r > 127.0f ? 127 : (int)r;
            const uint32_t b = (uint32_t)(c & 0xFF) << (8 * (i >> 1));
            if (i & 1) o |= b;
            else e |= b;
        }
        out[2 * p] = e, out[2 * p + 1] = o;
    }
    if (threadIdx.x == 0) xs[blockIdx.x] = s, xzp[blockIdx.x] = (int)z;
}

// fp8 per-row dynamic quantization, as quant_act_fp8_row; writes the codes' values.
__global__ void act_fp8_kernel(float *xf, float *xs, const float *x, int K) {
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * K;
    float amax = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(xr[k]));
    amax = block_reduce(amax, 1, sh);
    const float s = amax / 448.0f;
    float *out = xf + (size_t)blockIdx.x * K;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        if (s == 0.0f) {
            out[k] = 0.0f;
            continue;
        }
        float v = xr[k] / s;
        v = v > 448.0f ? 448.0f : v < -448.0f ? -448.0f : v;
        out[k] = e4m3_f(f32_e4m3(v));
    }
    if (threadIdx.x == 0) xs[blockIdx.x] = s;
}

// ---- host side -------------------------------------------------------------------------------
static int g_int4_kernel = 2, g_int4_pdl = 1;
void qgemv_set_int4_kernel(int version) {
    CHECK(version >= 0 && version <= 2, "qgemv_set_int4_kernel: version %d is not 0 (SIMT), 1 or 2", version);
    g_int4_kernel = version;
}
void qgemv_set_int4_mma(int on) { g_int4_kernel = on ? 2 : 0; }
void qgemv_set_int4_pdl(int on) { g_int4_pdl = !!on; }

void *qgemv_dev_alloc(size_t bytes, size_t held) {
    void *d;
    const cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        FAIL("out of GPU memory allocating %.1f MiB (%.1f MiB already held by the model, %.1f MiB free of %.1f)\n"
             "  HINT: use a smaller -q mode (int4 holds about a quarter of bf16), a shorter context (--ctx), or -d cpu",
             bytes / 1048576.0, held / 1048576.0, fr / 1048576.0, tot / 1048576.0);
    }
    CUDA_CHECK(e);
    return d;
}

void *qgemv_dev_upload(const void *h, size_t bytes, size_t held) {
    void *d = qgemv_dev_alloc(bytes, held);
    CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    // From pageable memory cudaMemcpy may return before the data lands, and kernels on other
    // (non-blocking) streams do not wait for the legacy stream it ran on.
    CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
    return d;
}

static void *dupload(const void *h, size_t bytes) { return qgemv_dev_upload(h, bytes, 0); }

uint16_t bf16_bits_rne(float f, size_t *inexact) {
    const uint16_t b = f32_to_bf16(f);
    uint32_t u;
    memcpy(&u, &f, 4);
    if (((uint32_t)b << 16) != u) (*inexact)++;
    return b;
}

// ---- weight upload: one or several QTensors of the same format stacked along rows -----------
int qweight_same_format(const QTensor *a, const QTensor *b) {
    return a->mode == b->mode && a->group == b->group && a->cols == b->cols;
}

QWeightGpu qweight_upload(const QTensor *const *parts, const float *const *biases, int np, size_t *rounded) {
    QWeightGpu w;
    memset(&w, 0, sizeof w);
    const QTensor *t0 = parts[0];
    w.mode = t0->mode, w.cols = t0->cols, w.group = t0->group;
    w.ld = (w.cols + 7) / 8 * 8;
    for (int i = 0; i < np; i++) w.rows += parts[i]->rows;
    const size_t R = (size_t)w.rows, K = (size_t)w.cols, LD = (size_t)w.ld, ng = w.group ? K / (size_t)w.group : 0;
    size_t code_row = 0;  // bytes per stored row
    switch (w.mode) {
        case QUANT_NONE: code_row = 2 * LD; break;
        case QUANT_INT8: case QUANT_FP8: code_row = LD; break;
        case QUANT_INT4: case QUANT_8DA4W: code_row = LD / 2; break;
        default: FAIL("GPU upload: unknown weight mode %d", (int)w.mode);
    }
    uint8_t *codes = (uint8_t *)ao_calloc(R, code_row);
    float *row_f32 = w.mode == QUANT_NONE ? (float *)ao_malloc(K * sizeof(float)) : NULL;  // one row in fp32
    size_t r0 = 0;
    for (int i = 0; i < np; i++) {
        const QTensor *t = parts[i];
        for (size_t r = 0; r < (size_t)t->rows; r++) {
            uint8_t *dst = codes + (r0 + r) * code_row;
            if (w.mode == QUANT_NONE && t->wdtype == QW_BF16) {
                memcpy(dst, t->w16 + r * K, K * 2);  // mapped bf16 weights: the bits as they are
            } else if (w.mode == QUANT_NONE) {
                uint16_t *d16 = (uint16_t *)dst;
                quant_none_row(t, (int)r, row_f32);
                for (size_t k = 0; k < K; k++) d16[k] = bf16_bits_rne(row_f32[k], rounded);
            } else {
                memcpy(dst, t->q + r * quant_q_bytes(w.mode, 1, w.cols), quant_q_bytes(w.mode, 1, w.cols));
            }
        }
        r0 += (size_t)t->rows;
    }
    free(row_f32);
    if (w.mode == QUANT_INT4 && g_int4_kernel && K % 64 == 0) {
        // mma fragment order (see qgemv_int4_mma_kernel), rows padded to 16 with code 8 (= 0);
        // v2 pads to whole pairs of row tiles (a warp's two tiles)
        w.tiled = g_int4_kernel;
        const size_t nrt = w.tiled == 2 ? (R + 31) / 32 * 2 : (R + 15) / 16, nch = K / 64;
        uint32_t *tiles = (uint32_t *)ao_malloc(nrt * nch * 128 * sizeof(uint32_t));
        const int pos[8] = {0, 4, 1, 5, 2, 6, 3, 7};  // a_i -> nibble position in the word
        for (size_t rt = 0; rt < nrt; rt++)
            for (size_t ch = 0; ch < nch; ch++)
                for (int l = 0; l < 32; l++)
                    for (int j = 0; j < 4; j++) {
                        const int g = l >> 2, t = l & 3;
                        uint32_t word = 0;
                        for (int a = 0; a < 8; a++) {
                            const size_t row = rt * 16 + (size_t)g + ((a & 2) ? 8 : 0);
                            const size_t k = ch * 64 + (size_t)j * 16 + 2 * (size_t)t + (a & 1) + ((a & 4) ? 8 : 0);
                            uint32_t q = 8;
                            if (row < R) q = (codes[row * code_row + k / 2] >> ((k & 1) * 4)) & 15u;
                            word |= q << (4 * pos[a]);
                        }
                        tiles[((rt * nch + ch) * 32 + (size_t)l) * 4 + (size_t)j] = word;
                    }
        free(codes);
        codes = (uint8_t *)tiles;
        code_row = 0;
        w.q = dupload(codes, nrt * nch * 128 * sizeof(uint32_t));
    } else if (w.mode == QUANT_INT4 || w.mode == QUANT_8DA4W) {
        // Interleave each whole 1024-element block of a row: word (step j, lane l) moves from
        // j * 32 + l to l * 4 + j, so a lane's 4 steps are one 16-byte load. Tails stay natural.
        uint32_t tmp[128];
        for (size_t r = 0; r < R; r++)
            for (size_t b = 0; b + 1024 <= K; b += 1024) {
                uint32_t *blk = (uint32_t *)(codes + r * code_row + b / 2);
                for (int j = 0; j < 4; j++)
                    for (int l = 0; l < 32; l++) tmp[l * 4 + j] = blk[j * 32 + l];
                memcpy(blk, tmp, sizeof tmp);
            }
    }
    if (!w.tiled) w.q = dupload(codes, R * code_row);
    free(codes);
    if (w.mode == QUANT_INT8 || w.mode == QUANT_FP8 || w.mode == QUANT_8DA4W) {
        const size_t per = w.mode == QUANT_8DA4W ? ng : 1;
        float *sc = (float *)ao_malloc(R * per * sizeof(float));
        r0 = 0;
        for (int i = 0; i < np; i++) {
            memcpy(sc + r0 * per, parts[i]->scale, (size_t)parts[i]->rows * per * sizeof(float));
            r0 += (size_t)parts[i]->rows;
        }
        w.scale = (const float *)dupload(sc, R * per * sizeof(float));
        free(sc);
    }
    if (w.mode == QUANT_INT4) {
        __nv_bfloat162 *sz = (__nv_bfloat162 *)ao_malloc(R * ng * sizeof *sz);
        size_t inexact = 0;
        r0 = 0;
        for (int i = 0; i < np; i++) {
            for (size_t j = 0; j < (size_t)parts[i]->rows * ng; j++) {
                uint16_t s = bf16_bits_rne(parts[i]->scale[j], &inexact), z = bf16_bits_rne(parts[i]->zero[j], &inexact);
                __nv_bfloat162_raw raw;
                raw.x = s, raw.y = z;
                sz[r0 * ng + j] = __nv_bfloat162(raw);
            }
            r0 += (size_t)parts[i]->rows;
        }
        CHECK(inexact == 0, "GPU upload: %zu int4 scales/zeros are not bf16 values (corrupt quantized model?)", inexact);
        size_t nsz = R * ng;
        if (w.tiled == 2) {
            // v2: [row-tile pair][group][g], 16 bytes = the pairs of rows g, g + 8 of both tiles
            // (qgemv_int4_mma2_kernel); rows past the end (0, 0)
            const size_t npair = (R + 31) / 32;
            __nv_bfloat162 *tl = (__nv_bfloat162 *)ao_calloc(npair * ng * 32, sizeof *tl);
            for (size_t p = 0; p < npair; p++)
                for (size_t gr = 0; gr < ng; gr++)
                    for (size_t g = 0; g < 8; g++)
                        for (size_t e = 0; e < 4; e++) {
                            const size_t row = p * 32 + (e >> 1) * 16 + g + (e & 1) * 8;
                            if (row < R) tl[((p * ng + gr) * 8 + g) * 4 + e] = sz[row * ng + gr];
                        }
            free(sz);
            sz = tl, nsz = npair * ng * 32;
        }
        w.sz = (const __nv_bfloat162 *)dupload(sz, nsz * sizeof *sz);
        free(sz);
    }
    int any_bias = 0;
    for (int i = 0; i < np; i++) any_bias |= biases && biases[i];
    if (any_bias) {
        float *b = (float *)ao_calloc(R, sizeof(float));
        r0 = 0;
        for (int i = 0; i < np; i++) {
            if (biases[i]) memcpy(b + r0, biases[i], (size_t)parts[i]->rows * sizeof(float));
            r0 += (size_t)parts[i]->rows;
        }
        w.bias = (const float *)dupload(b, R * sizeof(float));
        free(b);
    }
    return w;
}

void qweight_free(QWeightGpu *w) {
    cudaFree((void *)w->q), cudaFree((void *)w->scale), cudaFree((void *)w->sz), cudaFree((void *)w->bias);
    memset(w, 0, sizeof *w);
}

void qact_scratch_init(QActScratch *s, int max_rows, int max_cols) {
    memset(s, 0, sizeof *s);
    s->max_rows = max_rows, s->max_cols = max_cols;
    const size_t n = (size_t)max_rows * (size_t)max_cols;
    CUDA_CHECK(cudaMalloc(&s->xq, n + 16));
    CUDA_CHECK(cudaMalloc(&s->xf, n * sizeof(float) + 16));
    CUDA_CHECK(cudaMalloc(&s->xs, (size_t)max_rows * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&s->xzp, (size_t)max_rows * sizeof(int)));
    CUDA_CHECK(cudaMalloc(&s->part, QG_PART_FLOATS * sizeof(float)));
    // int4 tensor-core fragments: v2 holds 2 column tiles (8 tokens), v1 one
    CUDA_CHECK(cudaMalloc(&s->xb, (size_t)max_cols / 16 * 32 * 2 * sizeof(uint2) + 16));
    CUDA_CHECK(cudaMalloc(&s->xsum, (size_t)QG_MAX_M * (max_cols / 32 + 1) * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&s->cnt, QV2_MAX_CNT * sizeof(int)));
    CUDA_CHECK(cudaMemset(s->cnt, 0, QV2_MAX_CNT * sizeof(int)));  // re-armed by every split launch
}

void qact_scratch_free(QActScratch *s) {
    cudaFree(s->xq), cudaFree(s->xf), cudaFree(s->xs), cudaFree(s->xzp), cudaFree(s->part), cudaFree(s->xb), cudaFree(s->xsum);
    cudaFree(s->cnt);
    memset(s, 0, sizeof *s);
}

size_t qweight_bytes(const QWeightGpu *w) {
    const size_t n = (size_t)w->rows * (size_t)w->ld, ng = w->group ? n / (size_t)w->group : 0;
    size_t b = w->bias ? (size_t)w->rows * 4 : 0;
    switch (w->mode) {
        case QUANT_NONE: return b + 2 * n;
        case QUANT_INT8: case QUANT_FP8: return b + n + 4 * (size_t)w->rows;
        case QUANT_INT4: case QUANT_8DA4W: return b + n / 2 + 4 * ng;
        default: return b;
    }
}

static int sm_count(void) {
    static int n = 0;
    if (!n) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    }
    return n;
}

// Split-K plan for `units` warps of work over `steps` units of K (unrolled U at a time): enough
// splits for ~24 warps per SM, within QG_KSPLIT_MAX, steps / U and the partials scratch for M
// tokens. *per: units of K per split, a multiple of `align`. Returns the number of splits.
static int ksplit_plan(const QActScratch *s, int units, int steps, int U, int align, int M, int rows, int *per) {
    int ks = 1;
    const int want = 24 * sm_count();
    if (s && s->part && units < want) {
        ks = ceil_div(want, units);
        if (ks > QG_KSPLIT_MAX) ks = QG_KSPLIT_MAX;
        if (ks > steps / U) ks = steps / U;
        while (ks > 1 && (size_t)ks * M * rows > QG_PART_FLOATS) ks--;
        if (ks < 1) ks = 1;
    }
    *per = ceil_div(ceil_div(steps, ks), align) * align;
    return ceil_div(steps, *per);
}

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

// One launch of the v2 int4 GEMV for M <= 4 NT tokens: the x prep, then the GEMV with a K split
// chosen so that every block is resident at once (one wave of equal tasks): as many splits as the
// SMs have room for beside the row blocks, whole groups per split, within the partials scratch.
template <int NT>
static void int4_mma2_launch(float *y, const float *x, int M, const QWeightGpu *w, int acc, QActScratch *s,
                             cudaStream_t st) {
    const int K = w->cols, G = w->group, nch = K / 64, ng = K / G;
    const int gpc = G < 64 ? 64 / G : 1, cpg = G > 64 ? G / 64 : 1;
    const size_t smem = (size_t)QV2_WARPS * QV2_STAGES * 32 * sizeof(uint4) * (3 + gpc + 2 * NT);
    const int rowblocks = ceil_div(w->rows, QV2_ROWS);
    const int cap = int4_mma2_blocks_per_sm<NT>(smem) * sm_count();
    const int ks_max = cap / rowblocks > 1 ? cap / rowblocks : 1;
    int cpb = ceil_div(ceil_div(nch, ks_max), cpg) * cpg;
    while (cpb < nch && ((size_t)ceil_div(nch, cpb) * M * w->rows > QG_PART_FLOATS || rowblocks > QV2_MAX_CNT))
        cpb += cpg;
    const int ks = ceil_div(nch, cpb);
    const int nprep = (K / 16) * 32 * NT > ng * 4 * NT ? (K / 16) * 32 * NT : ng * 4 * NT;
    int4_mma2_prep_kernel<NT><<<ceil_div(nprep, 256), 256, 0, st>>>(s->xb, s->xsum, x, M, K, G);
    CUDA_CHECK_LAST();
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

template <int MODE, int MT>
static void launch_mt(float *y, const float *x, const QActScratch *s, int M, const QWeightGpu *w, int acc,
                      cudaStream_t st) {
    constexpr int R = RowsPerWarp<MODE>::R;
    // More steps in flight where each is small (4 bytes per lane for int4: 16-byte loads of
    // 4 steps, U = 4 or 8).
    constexpr int U = (MODE == QUANT_INT4) ? 4 : (MODE == QUANT_8DA4W) ? 8 : MODE == QUANT_NONE ? 2 : 4;
    // Split K when the rows alone give too few warps to keep the memory system busy; whole
    // unrolled groups of steps per split.
    int spp;
    const int ksplit = ksplit_plan(s, ceil_div(w->rows, R), ceil_div(w->cols, 256), U, U, M, w->rows, &spp);
    float *part = ksplit > 1 ? s->part : NULL;
    const dim3 grid(ceil_div(w->rows, QG_WARPS * R), ksplit);
    qgemv_kernel<MODE, MT, U><<<grid, QG_WARPS * 32, 0, st>>>(*w, MODE == QUANT_FP8 ? s->xf : x, s ? s->xq : NULL,
                                                            s ? s->xs : NULL, s ? s->xzp : NULL, y, M, acc, spp, part);
    if (part) {
        CUDA_CHECK_LAST();
        qgemv_reduce_kernel<MODE><<<ceil_div(M * w->rows, 256), 256, 0, st>>>(*w, part, s->xs, y, M, ksplit, acc);
    }
}

template <int MODE>
static void launch_mode(float *y, const float *x, const QActScratch *s, int M, const QWeightGpu *w, int acc,
                        cudaStream_t st) {
    if (M == 1) launch_mt<MODE, 1>(y, x, s, M, w, acc, st);
    else if (M == 2) launch_mt<MODE, 2>(y, x, s, M, w, acc, st);
    else if (M <= 4) launch_mt<MODE, 4>(y, x, s, M, w, acc, st);
    else launch_mt<MODE, 8>(y, x, s, M, w, acc, st);
}

void qact_prepare(QuantMode mode, const float *x, int M, int K, QActScratch *s, cudaStream_t st) {
    CHECK(M > 0 && M <= s->max_rows && K <= s->max_cols, "qact_prepare: %d x %d exceeds the scratch (%d x %d)", M, K,
          s->max_rows, s->max_cols);
    if (mode == QUANT_8DA4W) {
        CHECK(K % 8 == 0, "qact_prepare: 8da4w needs features %% 8 == 0, got %d", K);
        act_int8_kernel<<<M, 256, 0, st>>>(s->xq, s->xs, s->xzp, x, K);
    } else if (mode == QUANT_FP8) {
        act_fp8_kernel<<<M, 256, 0, st>>>(s->xf, s->xs, x, K);
    }
    CUDA_CHECK_LAST();
}

void qgemv(float *y, const float *x, int M, const QWeightGpu *w, int accumulate, QActScratch *s, cudaStream_t st) {
    const int K = w->cols;
    CHECK(M > 0 && w->rows > 0 && K > 0, "qgemv: empty shape (%d tokens, [%d, %d])", M, w->rows, K);
    CHECK(w->ld >= K && w->ld % 8 == 0, "qgemv: row stride %d for %d features is not a multiple of 8", w->ld, K);
    const int dyn = w->mode == QUANT_8DA4W || w->mode == QUANT_FP8;
    if (dyn)
        CHECK(s && K <= s->max_cols, "qgemv: %s needs activation scratch for %d features", quant_mode_name(w->mode), K);
    if (w->mode == QUANT_INT4 || w->mode == QUANT_8DA4W)
        CHECK(w->group >= 8 && w->group % 8 == 0 && K % w->group == 0, "qgemv: group %d does not divide %d", w->group,
              K);
    if (w->tiled == 2) {
        CHECK(s && K <= s->max_cols && K % 64 == 0, "qgemv: int4 tensor-core path needs scratch for %d features", K);
        for (int m0 = 0; m0 < M; m0 += QG_MAX_M) {
            const int mc = M - m0 < QG_MAX_M ? M - m0 : QG_MAX_M;
            if (mc <= 4) int4_mma2_launch<1>(y + (size_t)m0 * w->rows, x + (size_t)m0 * K, mc, w, accumulate, s, st);
            else int4_mma2_launch<2>(y + (size_t)m0 * w->rows, x + (size_t)m0 * K, mc, w, accumulate, s, st);
        }
        return;
    }
    if (w->tiled) {
        CHECK(s && K <= s->max_cols && K % 64 == 0, "qgemv: int4 tensor-core path needs scratch for %d features", K);
        const int nchunk = K / 64, rtiles = ceil_div(w->rows, 16);
        constexpr int U = 4;
        for (int m0 = 0; m0 < M; m0 += MMA_MAX_M) {
            const int mc = M - m0 < MMA_MAX_M ? M - m0 : MMA_MAX_M;
            int cpp;
            const int ks = ksplit_plan(s, rtiles, nchunk, U, 1, mc, w->rows, &cpp);
            const int nprep = (K / 16) * 32 > mc * (K / w->group) ? (K / 16) * 32 : mc * (K / w->group);
            int4_mma_prep_kernel<<<ceil_div(nprep, 256), 256, 0, st>>>(s->xb, s->xsum, x + (size_t)m0 * K, mc, K, w->group);
            CUDA_CHECK_LAST();
            float *part = ks > 1 ? s->part : NULL, *yc = y + (size_t)m0 * w->rows;
            qgemv_int4_mma_kernel<U><<<dim3(ceil_div(rtiles, QG_WARPS), ks), QG_WARPS * 32, 0, st>>>(
                *w, s->xb, s->xsum, yc, mc, accumulate, cpp, part);
            CUDA_CHECK_LAST();
            if (part)
                qgemv_reduce_kernel<QUANT_INT4><<<ceil_div(mc * w->rows, 256), 256, 0, st>>>(*w, part, NULL, yc, mc, ks,
                                                                                           accumulate);
            CUDA_CHECK_LAST();
        }
        return;
    }
    for (int m0 = 0; m0 < M; m0 += QG_MAX_M) {
        const int mc = M - m0 < QG_MAX_M ? M - m0 : QG_MAX_M;
        const float *xc = x + (size_t)m0 * K;
        float *yc = y + (size_t)m0 * w->rows;
        if (dyn) qact_prepare(w->mode, xc, mc, K, s, st);
        switch (w->mode) {
            case QUANT_NONE: launch_mode<QUANT_NONE>(yc, xc, s, mc, w, accumulate, st); break;
            case QUANT_INT8: launch_mode<QUANT_INT8>(yc, xc, s, mc, w, accumulate, st); break;
            case QUANT_INT4: launch_mode<QUANT_INT4>(yc, xc, s, mc, w, accumulate, st); break;
            case QUANT_8DA4W: launch_mode<QUANT_8DA4W>(yc, xc, s, mc, w, accumulate, st); break;
            case QUANT_FP8: launch_mode<QUANT_FP8>(yc, xc, s, mc, w, accumulate, st); break;
            default: FAIL("qgemv: unknown weight mode %d", (int)w->mode);
        }
        CUDA_CHECK_LAST();
    }
}
