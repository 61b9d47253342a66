// Decode GEMV (layout and numerics: qgemv.cuh): the SIMT kernel for every weight format and its
// split-K reduce, dynamic activation quantization, split-K planning and the qgemv dispatch. The
// int4 tensor-core kernels live in qgemv_int4mma.cu, weight upload and scratch in qgemv_upload.cu.
#include "qgemv_impl.cuh"

#include <float.h>

// Rows per warp: the fp32 activations a lane reads are shared by the warp's rows, so the
// formats with few weight bytes per element take more rows to keep L1 traffic below the
// weight stream (int4: 32 bytes of x per 4 bytes of codes per row).
template <int MODE> struct RowsPerWarp { static constexpr int R = (MODE == QUANT_INT4) ? 4 : 2; };

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
    pdl_launch_dependents();
    pdl_wait();
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
    pdl_launch_dependents();
    pdl_wait();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= M * w.rows) return;
    const int m = i / w.rows, row = i % w.rows;
    float v = 0.0f;
    for (int k = 0; k < ksplit; k++) v += part[((size_t)k * M + m) * w.rows + row];
    store_out<MODE>(w, xs, y, row, m, v, accumulate);
}

// ---- dynamic activation quantization (one block per token) -----------------------------------
// QA_THREADS threads per token: the quantization needs the whole row's min / max, so a token is
// one block's; all 1024 threads of it keep few values each in flight (4 per thread at K = 4096,
// 14 at 14336: a SwiGLU source's expf and division each, once) where 256 threads had a chain of
// K / 256 values, computed twice.
#define QA_THREADS 1024
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

// The 1 / rms of this block's token (RMSNORM sources; the block has QA_THREADS threads).
template <int KIND> __device__ __forceinline__ float act_row_rms(const QActSrc &src, int K) {
    __shared__ double shd[32];
    __shared__ float r[1];
    if constexpr (KIND != QSRC_RMSNORM) return 1.0f;
    qsrc_rms_inv<QA_THREADS>(r, src, 1, K, shd);
    return r[0];
}

// The token's source values for both passes of the quantization below: thread t's values k = t +
// QA_THREADS i are computed once and kept in registers (rows of up to QA_THREADS QA_VPT
// features), or, for longer rows, computed again in the second pass. Either way every value is
// qsrc_at's, so the bits are those of the materialized source; the min / max reductions do not
// depend on the order (fminf / fmaxf of the same floats; a +-0 extreme gives the same scale and
// zero point either way), the quantization is per value.
#define QA_VPT 16
template <int KIND> struct ActRow {
    const QActSrc &xr;
    float rm, v[QA_VPT];
    int K, keep;
    __device__ __forceinline__ ActRow(const QActSrc &xr_, float rm_, int K_) : xr(xr_), rm(rm_), K(K_) {
        keep = K <= QA_THREADS * QA_VPT;
        if (keep)
#pragma unroll
            for (int i = 0; i < QA_VPT; i++) {
                const int k = threadIdx.x + QA_THREADS * i;
                v[i] = k < K ? qsrc_at<KIND>(xr, rm, 0, k) : 0.0f;
            }
    }
    // f(k, value) for this thread's features
    template <typename F> __device__ __forceinline__ void each(F f) const {
        if (keep) {
#pragma unroll
            for (int i = 0; i < QA_VPT; i++) {
                const int k = threadIdx.x + QA_THREADS * i;
                if (k < K) f(k, v[i]);
            }
        } else {
            for (int k = threadIdx.x; k < K; k += QA_THREADS) f(k, qsrc_at<KIND>(xr, rm, 0, k));
        }
    }
};

// torchao _int8_asymm_per_token_quant, as quant_act_int8_asym, of the source's row blockIdx.x.
template <int KIND>
__global__ __launch_bounds__(QA_THREADS) void act_int8_kernel(uint32_t *xq, float *xs, int *xzp, QActSrc src, int K) {
    __shared__ float sh[32];
    pdl_launch_dependents();
    pdl_wait();
    const QActSrc xr = qsrc_rows(src, blockIdx.x);
    const ActRow<KIND> row(xr, act_row_rms<KIND>(xr, K), K);
    float mn = 0.0f, mx = 0.0f;
    row.each([&](int, float v) { mn = fminf(mn, v), mx = fmaxf(mx, v); });
    mn = block_reduce(mn, 0, sh);
    mx = block_reduce(mx, 1, sh);
    float s = (mx - mn) / 255.0f;
    if (s < FLT_EPSILON) s = FLT_EPSILON;
    float z = -128.0f - rintf(mn / s);
    z = z < -128.0f ? -128.0f : z > 127.0f ? 127.0f : z;
    const float inv = 1.0f / s;
    // per 8 features two words: the even features' bytes, then the odd ones'
    uint8_t *out = (uint8_t *)(xq + (size_t)blockIdx.x * K / 4);
    row.each([&](int k, float v) {
        const float r = rintf(v * inv) + z;
        const int c = r < -128.0f ? -128 : r > 127.0f ? 127 : (int)r;
        out[(k & ~7) + (k & 1) * 4 + ((k & 7) >> 1)] = (uint8_t)(c & 0xFF);
    });
    if (threadIdx.x == 0) xs[blockIdx.x] = s, xzp[blockIdx.x] = (int)z;
}

// fp8 per-row dynamic quantization, as quant_act_fp8_row; writes the codes' values.
template <int KIND>
__global__ __launch_bounds__(QA_THREADS) void act_fp8_kernel(float *xf, float *xs, QActSrc src, int K) {
    __shared__ float sh[32];
    pdl_launch_dependents();
    pdl_wait();
    const QActSrc xr = qsrc_rows(src, blockIdx.x);
    const ActRow<KIND> row(xr, act_row_rms<KIND>(xr, K), K);
    float amax = 0.0f;
    row.each([&](int, float v) { amax = fmaxf(amax, fabsf(v)); });
    amax = block_reduce(amax, 1, sh);
    const float s = amax / 448.0f;
    float *out = xf + (size_t)blockIdx.x * K;
    row.each([&](int k, float v) {
        if (s == 0.0f) {
            out[k] = 0.0f;
            return;
        }
        v = v / s;
        v = v > 448.0f ? 448.0f : v < -448.0f ? -448.0f : v;
        out[k] = e4m3_f(f32_e4m3(v));
    });
    if (threadIdx.x == 0) xs[blockIdx.x] = s;
}

// ---- host side: split-K planning, launchers, dispatch ----------------------------------------
int qgemv_sm_count(void) {
    static int n = 0;
    if (!n) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    }
    return n;
}

int qgemv_ksplit_plan(const QActScratch *s, int units, int steps, int U, int align, int M, int rows, int *per) {
    int ks = 1;
    const int want = 24 * qgemv_sm_count();
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
    const int ksplit = qgemv_ksplit_plan(s, ceil_div(w->rows, R), ceil_div(w->cols, 256), U, U, M, w->rows, &spp);
    float *part = ksplit > 1 ? s->part : NULL;
    const dim3 grid(ceil_div(w->rows, QG_WARPS * R), ksplit);
    const int pdl = s ? s->pdl : 0;
    qlaunch(pdl, qgemv_kernel<MODE, MT, U>, grid, dim3(QG_WARPS * 32), 0, st, *w,
            (const float *)(MODE == QUANT_FP8 ? s->xf : x), (const uint32_t *)(s ? s->xq : NULL),
            (const float *)(s ? s->xs : NULL), (const int *)(s ? s->xzp : NULL), y, M, acc, spp, part);
    if (part)
        qlaunch(pdl, qgemv_reduce_kernel<MODE>, dim3(ceil_div(M * w->rows, 256)), dim3(256), 0, st, *w,
                (const float *)part, (const float *)s->xs, y, M, ksplit, acc);
}

template <int MODE>
static void launch_mode(float *y, const float *x, const QActScratch *s, int M, const QWeightGpu *w, int acc,
                        cudaStream_t st) {
    if (M == 1) launch_mt<MODE, 1>(y, x, s, M, w, acc, st);
    else if (M == 2) launch_mt<MODE, 2>(y, x, s, M, w, acc, st);
    else if (M <= 4) launch_mt<MODE, 4>(y, x, s, M, w, acc, st);
    else launch_mt<MODE, 8>(y, x, s, M, w, acc, st);
}

void qgemv_reduce_int4(float *y, const float *part, int M, int ksplit, const QWeightGpu *w, int accumulate,
                       cudaStream_t st) {
    qgemv_reduce_kernel<QUANT_INT4><<<ceil_div(M * w->rows, 256), 256, 0, st>>>(*w, part, NULL, y, M, ksplit,
                                                                              accumulate);
}

// qact_prepare of rows 0..M-1 of a source.
static void qact_prepare_src(QuantMode mode, const QActSrc &src, int M, int K, QActScratch *s, cudaStream_t st) {
    CHECK(M > 0 && M <= s->max_rows && K <= s->max_cols, "qact_prepare: %d x %d exceeds the scratch (%d x %d)", M, K,
          s->max_rows, s->max_cols);
    if (mode == QUANT_8DA4W) {
        CHECK(K % 8 == 0, "qact_prepare: 8da4w needs features %% 8 == 0, got %d", K);
        if (src.kind == QSRC_RMSNORM) qlaunch(s->pdl, act_int8_kernel<QSRC_RMSNORM>, dim3(M), dim3(QA_THREADS), 0, st, s->xq, s->xs, s->xzp, src, K);
        else if (src.kind == QSRC_SWIGLU) qlaunch(s->pdl, act_int8_kernel<QSRC_SWIGLU>, dim3(M), dim3(QA_THREADS), 0, st, s->xq, s->xs, s->xzp, src, K);
        else qlaunch(s->pdl, act_int8_kernel<QSRC_X>, dim3(M), dim3(QA_THREADS), 0, st, s->xq, s->xs, s->xzp, src, K);
    } else if (mode == QUANT_FP8) {
        if (src.kind == QSRC_RMSNORM) qlaunch(s->pdl, act_fp8_kernel<QSRC_RMSNORM>, dim3(M), dim3(QA_THREADS), 0, st, s->xf, s->xs, src, K);
        else if (src.kind == QSRC_SWIGLU) qlaunch(s->pdl, act_fp8_kernel<QSRC_SWIGLU>, dim3(M), dim3(QA_THREADS), 0, st, s->xf, s->xs, src, K);
        else qlaunch(s->pdl, act_fp8_kernel<QSRC_X>, dim3(M), dim3(QA_THREADS), 0, st, s->xf, s->xs, src, K);
    }
    CUDA_CHECK_LAST();
}

void qact_prepare(QuantMode mode, const float *x, int M, int K, QActScratch *s, cudaStream_t st) {
    qact_prepare_src(mode, qsrc_x(x, K), M, K, s, st);
}

int qgemv_src_direct(const QWeightGpu *w) {
    return w->tiled == 2 || w->mode == QUANT_8DA4W || w->mode == QUANT_FP8;
}

void qgemv_src(float *y, const QActSrc *src, float *xbuf, int M, const QWeightGpu *w, int accumulate, QActScratch *s,
               cudaStream_t st) {
    const int K = w->cols;
    CHECK(M > 0 && w->rows > 0 && K > 0, "qgemv: empty shape (%d tokens, [%d, %d])", M, w->rows, K);
    CHECK(w->ld >= K && w->ld % 8 == 0, "qgemv: row stride %d for %d features is not a multiple of 8", w->ld, K);
    const int pdl = s ? s->pdl : 0;
    if (src->kind != QSRC_X && !qgemv_src_direct(w)) {  // no prep kernel to fold the source into
        qact_src_forward(xbuf, src, M, K, pdl, st);
        const QActSrc xs = qsrc_x(xbuf, K);
        qgemv_src(y, &xs, NULL, M, w, accumulate, s, st);
        return;
    }
    const int dyn = w->mode == QUANT_8DA4W || w->mode == QUANT_FP8;
    if (dyn)
        CHECK(s && K <= s->max_cols, "qgemv: %s needs activation scratch for %d features", quant_mode_name(w->mode), K);
    if (w->mode == QUANT_INT4 || w->mode == QUANT_8DA4W)
        CHECK(w->group >= 8 && w->group % 8 == 0 && K % w->group == 0, "qgemv: group %d does not divide %d", w->group,
              K);
    if (w->tiled == 2) {
        CHECK(s && K <= s->max_cols && K % 64 == 0, "qgemv: int4 tensor-core path needs scratch for %d features", K);
        qgemv_int4_mma2(y, *src, M, w, accumulate, s, st);
        return;
    }
    const float *x = src->x;
    CHECK(dyn || src->ld == K, "qgemv: input rows at stride %d for %d features", src->ld, K);
    if (w->tiled) {
        CHECK(s && K <= s->max_cols && K % 64 == 0, "qgemv: int4 tensor-core path needs scratch for %d features", K);
        qgemv_int4_mma(y, x, M, w, accumulate, s, st);
        return;
    }
    for (int m0 = 0; m0 < M; m0 += QG_MAX_M) {
        const int mc = M - m0 < QG_MAX_M ? M - m0 : QG_MAX_M;
        const float *xc = x + (size_t)m0 * K;
        float *yc = y + (size_t)m0 * w->rows;
        if (dyn) qact_prepare_src(w->mode, qsrc_rows(*src, m0), mc, K, s, st);
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

void qgemv(float *y, const float *x, int M, const QWeightGpu *w, int accumulate, QActScratch *s, cudaStream_t st) {
    const QActSrc src = qsrc_x(x, w->cols);
    qgemv_src(y, &src, NULL, M, w, accumulate, s, st);
}

// ---- materialized sources (the unfused path, and the GEMVs without an activation prep) -------
// out row r = RMSNorm of the source's row r; 1024 threads, the order qsrc_rms_inv reproduces.
__global__ void rmsnorm_forward_kernel(float *out, QActSrc src, int D) {
    __shared__ double sh[32];
    __shared__ float r[1];
    pdl_launch_dependents();
    pdl_wait();
    const QActSrc xr = qsrc_rows(src, blockIdx.x);
    qsrc_rms_inv<1024>(r, xr, 1, D, sh);
    float *yr = out + (size_t)blockIdx.x * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) yr[d] = qsrc_at<QSRC_RMSNORM>(xr, r[0], 0, d);
}

// out[r, f] = silu(gate[r, f]) * up[r, f].
__global__ void swiglu_forward_kernel(float *out, QActSrc src, int F) {
    pdl_launch_dependents();
    pdl_wait();
    const int r = blockIdx.y;
    for (int f = blockIdx.x * blockDim.x + threadIdx.x; f < F; f += gridDim.x * blockDim.x)
        out[(size_t)r * F + f] = qsrc_at<QSRC_SWIGLU>(src, 0.0f, r, f);
}

void qact_src_forward(float *out, const QActSrc *src, int M, int K, int pdl, cudaStream_t st) {
    if (src->kind == QSRC_RMSNORM) {
        qlaunch(pdl, rmsnorm_forward_kernel, dim3(M), dim3(1024), 0, st, out, *src, K);
    } else if (src->kind == QSRC_SWIGLU) {
        const int bx = ceil_div(K, 256) < 64 ? ceil_div(K, 256) : 64;
        qlaunch(pdl, swiglu_forward_kernel, dim3(bx, M), dim3(256), 0, st, out, *src, K);
    } else {
        CUDA_CHECK(cudaMemcpy2DAsync(out, (size_t)K * 4, src->x, (size_t)src->ld * 4, (size_t)K * 4, M,
                                     cudaMemcpyDeviceToDevice, st));
    }
    CUDA_CHECK_LAST();
}
