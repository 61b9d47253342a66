// fp8 / MX cast kernels (interface and layouts in fp8_cast.cuh). Every element goes through the
// shared functions of fp8.h / mx.h (fp8_quantize, fp8_scale_from_amax, mx_scale_from_amax, ...),
// so results equal the CPU reference bit for bit; the kernels only choose who loads what. The one
// exception is the element rounding itself (quant2 below): on sm_89+ the hardware converter
// (cvt.rn.satfinite) gives fp8_quantize's bits for every non-NaN product (gpu_test_fp8 checks all
// 2^32 fp32 inputs), and a NaN product's code is fp8_nan_code, fp8_quantize's NaN rule.
//
// Memory-bound: a bf16 -> fp8 cast must read 2 bytes and write 1 per element; tensor scaling reads
// x once more in its amax pass (the scale must exist before the first code is written). The kernels
// are shaped so that DRAM sees no more than that:
//   - 16-byte loads of 8 bf16, coalesced along the rows of x (a warp load covers whole 32-byte
//     sectors: 64 to 512 contiguous bytes), with x's row stride (a part's columns of a packed
//     gradient are read in place); codes leave in 16-byte stores (tensor and per-row direct casts,
//     every transposed output) or 8-byte ones (blocks; the two-layout cast's direct half);
//   - grid-stride kernels (amax, the flat tensor cast) launch one full wave, the same number of CTAs
//     on every SM (residency()), so no partial last wave;
//   - tensor scaling: one amax launch (partials + the last CTA's reduction), then one cast that may
//     write both layouts of the operand (a gradient's g and g^T) from one read;
//   - amax and cast fused wherever a scaling group fits one CTA (a row, 1x128, 128x128, the columns
//     of a 512-row stripe): the values stay in registers between the reduction and the cast, so x
//     is read once; short rows share a CTA (a group of threads per row);
//   - transposed outputs (W^T, g^T, x^T) go through a shared-memory tile of 32-bit words (4 codes
//     of one column) with an XOR swizzle, so that each operand row is written 16 bytes per thread,
//     128 or 512 contiguous bytes per CTA, and the tile's stores are free of bank conflicts;
//   - the per-column amax of axis scaling (a column spans every row) is combined across a cluster
//     of up to 16 CTAs through distributed shared memory (sm_90 thread block clusters): no
//     workspace, no atomics, no second pass over x in DRAM;
//   - 2 to 8 loads in flight per thread, so that a few warps per SM cover the DRAM latency.
// Work per element: fp8_quantize is ~20 instructions (software RNE, the CPU reference's bits), about
// as long as the element's memory time on H100/H200; the hardware converter (2 elements per
// instruction, sm_89+) takes it down to ~3, so the casts are bound by memory. Scales are computed
// once per group (the float64 division included).
#include <stdlib.h>

#include <algorithm>
#include <cooperative_groups.h>
#include <cuda_fp8.h>

#include "../common/cuda_utils.cuh"
#include "fp8_cast.cuh"

static_assert(FP8_BLOCK == 128 && MX_BLOCK == 32, "the tile shapes below assume 128 / 32 element blocks");
static_assert(sizeof(bf16) == 2 && sizeof(x128) == 16, "8 bf16 per 16-byte load");

namespace cg = cooperative_groups;

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float bf(bf16 v) { return __bfloat162float(v); }

// NaN-free maxima (our amax ignores NaN), so fmaxf combines partials exactly.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Max over the CTA (blockDim.x a multiple of 32, at most 1024); every thread gets it. red: 32 floats.
__device__ __forceinline__ float block_max(float v, float *red) {
    v = warp_max(v);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float m = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) m = fmaxf(m, red[w]);
    __syncthreads();
    return m;
}
// fp8_amax_step over 8 values.
__device__ __forceinline__ float amax8(float m, const x128 &v) {
#pragma unroll
    for (int j = 0; j < 8; j++) m = fp8_amax_step(m, bf(v[j]));
    return m;
}

// fp8_quantize(a, s) | fp8_quantize(b, s) << 8. On sm_89+ through the hardware converter: RNE with
// subnormals, finite values past the fp8 maximum saturated to it (.satfinite), which is exactly
// fp8_quantize's clamp + software rounding for every product that is not NaN (gpu_test_fp8 compares
// the two on all 2^32 fp32 values); a NaN product's byte is replaced by fp8_nan_code, which is what
// fp8_quantize returns for it (our NaN sign rule). The patch is two selects, not a second copy of
// the software rounding inlined at every call: the transposed kernels hold 64 values per thread,
// and the fewer registers the more CTAs per SM.
template <Fp8Dtype DT>
__device__ __forceinline__ uint32_t quant2(float a, float b, float s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    const float va = a * s, vb = b * s;
    uint32_t r = __nv_cvt_float2_to_fp8x2(make_float2(va, vb), __NV_SATFINITE, DT == FP8_E4M3 ? __NV_E4M3 : __NV_E5M2);
    if (va != va) r = (r & 0xFF00u) | fp8_nan_code(a, s);
    if (vb != vb) r = (r & 0x00FFu) | (uint32_t)fp8_nan_code(b, s) << 8;
    return r;
#else
    return fp8_quantize(a, s, DT) | (uint32_t)fp8_quantize(b, s, DT) << 8;
#endif
}
// Four codes at one scale, a in the low byte.
template <Fp8Dtype DT>
__device__ __forceinline__ uint32_t quant4(float a, float b, float c, float d, float s) {
    return quant2<DT>(a, b, s) | quant2<DT>(c, d, s) << 16;
}
// 8 fp8 codes of 8 bf16 at one scale, packed for one 8-byte store.
template <Fp8Dtype DT>
__device__ __forceinline__ uint2 quant8(const x128 &v, float s) {
    return make_uint2(quant4<DT>(bf(v[0]), bf(v[1]), bf(v[2]), bf(v[3]), s),
                      quant4<DT>(bf(v[4]), bf(v[5]), bf(v[6]), bf(v[7]), s));
}
// The 4x4 byte transpose: byte j of out[i] = byte i of the j-th input.
__device__ __forceinline__ void transpose4x4(uint32_t (&out)[4], uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    const uint32_t ab0 = __byte_perm(a, b, 0x5140), ab1 = __byte_perm(a, b, 0x7362);  // a0 b0 a1 b1 | a2 b2 a3 b3
    const uint32_t cd0 = __byte_perm(c, d, 0x5140), cd1 = __byte_perm(c, d, 0x7362);
    out[0] = __byte_perm(ab0, cd0, 0x5410), out[1] = __byte_perm(ab0, cd0, 0x7632);
    out[2] = __byte_perm(ab1, cd1, 0x5410), out[3] = __byte_perm(ab1, cd1, 0x7632);
}

// The 8 bf16 of row r, columns c .. c + 7 of x [rows, cols] with row stride ld (zeros past the
// edges). vl: 16-byte loads allowed (x 16-byte aligned, cols and ld % 8 == 0, c % 8 == 0); stream:
// read once (evict-first).
__device__ __forceinline__ x128 load_row8(const bf16 *x, int rows, int cols, size_t ld, int r, int c, bool vl,
                                          bool stream) {
    x128 v;
    if (r < rows && vl && c < cols) {
        const bf16 *p = x + (size_t)r * ld + c;
        return stream ? load128cs(p) : load128(p);
    }
#pragma unroll
    for (int j = 0; j < 8; j++)
        v[j] = (r < rows && c + j < cols) ? x[(size_t)r * ld + c + j] : __ushort_as_bfloat16((unsigned short)0);
    return v;
}
// The first n (>= 1) of 8 codes to dst: one 8-byte store when allowed (vs: dst 8-byte aligned) and whole.
__device__ __forceinline__ void store8(uint8_t *dst, uint2 p, int n, bool vs) {
    if (vs && n >= 8) {
        *reinterpret_cast<uint2 *>(dst) = p;
        return;
    }
#pragma unroll
    for (int j = 0; j < 8; j++)
        if (j < n) dst[j] = (uint8_t)((j < 4 ? p.x : p.y) >> (8 * (j % 4)));
}
// The first n (>= 1) of 16 codes to dst: one 16-byte store when allowed (vs: dst 16-byte aligned) and whole.
__device__ __forceinline__ void store16(uint8_t *dst, uint4 p, int n, bool vs) {
    if (vs && n >= 16) {
        *reinterpret_cast<uint4 *>(dst) = p;
        return;
    }
    const uint32_t w[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int j = 0; j < 16; j++)
        if (j < n) dst[j] = (uint8_t)(w[j / 4] >> (8 * (j % 4)));
}
// Shared transpose tiles hold 32-bit words (4 codes of consecutive rows of one column of x) in rows
// of a multiple of 32 words, one row per operand row. Word i of operand row o is stored at
// i ^ (((o >> 3) & 3) << 3): the lanes of a warp that write the same word index for the four
// operand rows 8 apart (the 4 column groups of a warp) land in 4 different banks, and groups of 4
// words (16 bytes) stay together for the vector reads.
__device__ __forceinline__ int swz(int orow, int word) { return word ^ (((orow >> 3) & 3) << 3); }

// ---- tensor amax ---------------------------------------------------------------------------------
// Grid-stride over 16-byte vectors (vec: x 16-byte aligned, cols and ld multiples of 8), four loads in
// flight per thread; one partial per CTA into ws, and the last CTA to take a ticket reduces them (the
// threadFenceReduction pattern: each partial is fenced before its CTA's ticket). Vector i of a strided
// x is row i / (cols / 8): 32-bit indices (the launcher checks the count). keep: plain loads, so that
// the cast that follows finds a tensor that fits L2 still there; else evict-first.
__device__ __forceinline__ const bf16 *amax_vec_at(const bf16 *x, unsigned i, unsigned cv, size_t ld, bool contig) {
    if (contig) return x + 8 * (size_t)i;
    const unsigned r = i / cv;
    return x + (size_t)r * ld + 8 * (size_t)(i - r * cv);
}
__global__ void __launch_bounds__(kThreads)
    fp8_amax_kernel(float *amax, float *ws, const bf16 *x, unsigned rows, unsigned cols, size_t ld, int vec, int keep) {
    __shared__ float red[32];
    __shared__ bool last;
    float m = 0.0f;
    const unsigned tid = blockIdx.x * kThreads + threadIdx.x, stride = gridDim.x * kThreads;
    const bool contig = ld == cols;
    if (vec) {
        const unsigned cv = cols / 8, nv = rows * cv;
        auto ld8 = [&](unsigned i) {
            const bf16 *p = amax_vec_at(x, i, cv, ld, contig);
            return keep ? load128(p) : load128cs(p);
        };
        unsigned i = tid;
        for (; i + 3 * stride < nv; i += 4 * stride) {
            const x128 a = ld8(i), b = ld8(i + stride), c = ld8(i + 2 * stride), d = ld8(i + 3 * stride);
            m = amax8(amax8(amax8(amax8(m, a), b), c), d);
        }
        for (; i < nv; i += stride) m = amax8(m, ld8(i));
    } else {
        const size_t n = (size_t)rows * cols;
        for (size_t i = tid; i < n; i += stride) m = fp8_amax_step(m, bf(x[(i / cols) * ld + i % cols]));
    }
    m = block_max(m, red);
    unsigned *ticket = reinterpret_cast<unsigned *>(ws + FP8_AMAX_PARTIALS + 1);
    if (threadIdx.x == 0) {
        ws[blockIdx.x] = m;
        __threadfence();
        last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    float a = 0.0f;
    for (unsigned i = threadIdx.x; i < gridDim.x; i += kThreads) a = fmaxf(a, __ldcg(ws + i));
    a = block_max(a, red);
    if (threadIdx.x == 0) *amax = a, *ticket = 0;
}

// ---- tensor scaling, direct layout ----------------------------------------------------------------
// Rows are contiguous, so the tensor is one flat array whatever its shape. Vector path (vec: x and q
// 16-byte aligned): 16-element pieces (two 16-byte loads, one 16-byte store of 16 codes), grid-stride
// over a grid that fills the GPU once with the same number of CTAs on every SM (the launcher's
// choice), two pieces (four loads) in flight per thread; the last CTA also takes the n % 16 tail.
template <Fp8Dtype DT>
__device__ __forceinline__ uint4 quant16(const x128 &a, const x128 &b, float s) {
    const uint2 lo = quant8<DT>(a, s), hi = quant8<DT>(b, s);
    return make_uint4(lo.x, lo.y, hi.x, hi.y);
}
template <Fp8Dtype DT>
__global__ void __launch_bounds__(kThreads)
    fp8_cast_tensor_kernel(uint8_t *q, float *scale_inv, const bf16 *x, size_t n, const float *tensor_amax, int pow2,
                           int vec) {
    const float s = fp8_scale_from_amax(*tensor_amax, DT, pow2);
    if (blockIdx.x == 0 && threadIdx.x == 0) scale_inv[0] = fp8_scale_inv(s);
    const size_t tid = (size_t)blockIdx.x * kThreads + threadIdx.x, stride = (size_t)gridDim.x * kThreads;
    if (!vec) {
        for (size_t i = tid; i < n; i += stride) q[i] = fp8_quantize(bf(x[i]), s, DT);
        return;
    }
    const size_t np = n / 16;
    size_t i = tid;
    for (; i + stride < np; i += 2 * stride) {
        const x128 a0 = load128cs(x + 16 * i), b0 = load128cs(x + 16 * i + 8);
        const x128 a1 = load128cs(x + 16 * (i + stride)), b1 = load128cs(x + 16 * (i + stride) + 8);
        *reinterpret_cast<uint4 *>(q + 16 * i) = quant16<DT>(a0, b0, s);
        *reinterpret_cast<uint4 *>(q + 16 * (i + stride)) = quant16<DT>(a1, b1, s);
    }
    if (i < np) *reinterpret_cast<uint4 *>(q + 16 * i) = quant16<DT>(load128cs(x + 16 * i), load128cs(x + 16 * i + 8), s);
    if (blockIdx.x == gridDim.x - 1 && threadIdx.x < n - np * 16)
        q[np * 16 + threadIdx.x] = fp8_quantize(bf(x[np * 16 + threadIdx.x]), s, DT);
}

// ---- axis scaling, direct layout: a group of G threads per row -------------------------------------
// x [rows, cols] with row stride ld (a Linear's columns of a packed gradient, or dense rows). Vector path
// (cols % 16 == 0, ld % 8 == 0, x and q 16-byte aligned): thread j of a row's group holds the 16-element
// pieces j, j + G, ... of the row (two 16-byte loads, one 16-byte store of 16 codes each); up to
// kRowPieces stay in registers between the row's amax and its cast (rows up to 32768 with G = 1024), the
// rest of a longer row is read again (from L1 / L2, it was just read). The launcher picks G (a multiple
// of 32) for about kRowPieces pieces per thread and puts blockDim / G rows in a CTA of 256 threads or
// more, so that short rows (a k/v part's 512 columns: one warp each) still make full CTAs. The group's
// maximum: warp shuffles, then (G > 32) shared memory across its warps. So x is read once and its
// amax never leaves the chip. keep: plain loads (a tensor that fits L2 stays there for the transposed
// cast of the same gradient that follows), else evict-first.
constexpr int kRowPieces = 2;
template <Fp8Dtype DT>
__global__ void __launch_bounds__(1024) fp8_cast_rows_kernel(uint8_t *q, float *scale_inv, const bf16 *x, int rows,
                                                             int cols, size_t ld, int G, int pow2, int keep) {
    __shared__ float red[32];
    const int grp = threadIdx.x / G, j = threadIdx.x % G, np = cols / 16;
    const int row = blockIdx.x * (blockDim.x / G) + grp;
    const bool active = row < rows;
    const bf16 *xr = x + (size_t)(active ? row : 0) * ld;
    uint8_t *qr = q + (size_t)row * cols;
    auto ld8 = [&](int c, int h) { return keep ? load128(xr + 16 * c + 8 * h) : load128cs(xr + 16 * c + 8 * h); };
    x128 v[kRowPieces][2];
    float m = 0.0f;
    if (active) {
#pragma unroll
        for (int i = 0; i < kRowPieces; i++) {
            const int c = j + i * G;
            if (c < np) v[i][0] = ld8(c, 0), v[i][1] = ld8(c, 1), m = amax8(amax8(m, v[i][0]), v[i][1]);
        }
        for (int c = j + kRowPieces * G; c < np; c += G) m = amax8(amax8(m, load128(xr + 16 * c)), load128(xr + 16 * c + 8));
    }
    m = warp_max(m);
    if (G > 32) {  // the same for the whole CTA
        if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
        __syncthreads();
        for (int w = 0; w < G / 32; w++) m = fmaxf(m, red[grp * (G / 32) + w]);
    }
    if (!active) return;
    const float s = fp8_scale_from_amax(m, DT, pow2);
    if (j == 0) scale_inv[row] = fp8_scale_inv(s);
#pragma unroll
    for (int i = 0; i < kRowPieces; i++) {
        const int c = j + i * G;
        if (c < np) *reinterpret_cast<uint4 *>(qr + 16 * c) = quant16<DT>(v[i][0], v[i][1], s);
    }
    for (int c = j + kRowPieces * G; c < np; c += G)
        *reinterpret_cast<uint4 *>(qr + 16 * c) = quant16<DT>(load128(xr + 16 * c), load128(xr + 16 * c + 8), s);
}
// Any shape or alignment: one CTA per row, element by element.
template <Fp8Dtype DT>
__global__ void __launch_bounds__(kThreads)
    fp8_cast_rows_scalar_kernel(uint8_t *q, float *scale_inv, const bf16 *x, int cols, size_t ld, int pow2) {
    __shared__ float red[32];
    const size_t row = blockIdx.x;
    const bf16 *xr = x + row * ld;
    uint8_t *qr = q + row * cols;
    float m = 0.0f;
    for (int c = threadIdx.x; c < cols; c += kThreads) m = fp8_amax_step(m, bf(xr[c]));
    const float s = fp8_scale_from_amax(block_max(m, red), DT, pow2);
    if (threadIdx.x == 0) scale_inv[row] = fp8_scale_inv(s);
    for (int c = threadIdx.x; c < cols; c += kThreads) qr[c] = fp8_quantize(bf(xr[c]), s, DT);
}

// ---- transposed casts: tensor, axis (per column of x), 1x128 (128-row blocks down each column) -------
// A CTA owns a stripe of kTW = 32 columns of x (= 32 operand rows) and walks its rows kSub = 512 at a
// time (SUB below). Thread t: columns 8k .. 8k + 7 of the stripe (k = t % 4) in rows 4 rl + l + 256 j of
// the sub-chunk (rl = t / 4, l < 4, j < 2): eight 16-byte loads in flight, 64 values in registers; one
// warp load reads 8 rows x 64 contiguous bytes (whole sectors). The codes of rows 4 rl .. 4 rl + 3
// of one column form word 64 j + rl of that operand row in the tile [32][512 bytes]; the tile leaves
// as 16-byte stores, 32 threads per 512-byte piece of an operand row.
// Scales:
//   TM_TENSOR  from *tensor_amax; grid.y = ceil(rows / 512), one sub-chunk per CTA.
//   TM_B1X128  the 4 blocks of 128 rows x 1 column in the CTA's 512 rows (grid.y as above); block
//              2j + h of a sub-chunk is held by warps 4h .. 4h + 3.
//   TM_AXIS    the whole column: grid.y = the cluster size cs (the launcher's choice, <= 16 where the
//              GPU allows it, else 8), CTA y takes rows [y rpc, (y + 1) rpc); each CTA reduces its 32
//              columns, the cluster combines the maxima of its CTAs through distributed shared memory.
//              With rpc <= 512 (rows <= 8192 with clusters of 16) the values stay in registers from the
//              amax to the cast; a longer share is walked twice, the second time from L1 / L2 (2 CTAs
//              per SM x 64 KiB: the whole grid's shares in flight are ~17 MB, well inside L2), so DRAM
//              still sees x once. Before sm_90 (no clusters) cs = 1.
// x has row stride ld (a Linear's columns of a packed gradient). q (the transposed codes) may be NULL;
// TM_TENSOR may also write the direct layout qd [rows, cols] from the same registers: the codes of the
// 8 columns of one row a thread holds are its transposed words' bytes l, one 8-byte store per row
// (vd: qd 8-byte aligned and cols % 8 == 0).
enum { TM_TENSOR = 0, TM_AXIS = 1, TM_B1X128 = 2 };
// SUB (the rows a CTA holds at once) is 256 by default: four loads per thread, ~80 registers, 3 CTAs per
// SM. SUB = 512 doubles the values per thread (eight loads, ~128 registers, 2 CTAs per SM): the same bits
// (each code and each scale is computed the same way, only the tiling differs). dev/bench/bench_cast on an
// H200 (1B layer shapes, 2026-11-28): 256 is 6-8% faster per layer for every recipe (tensorwise 1203 vs
// 1300 us, rowwise 1714 vs 1854, blockwise 1303 vs 1422); LLAMA_AO_FP8_TSUB=512 keeps the old tiles.
constexpr int kTW = 32;

template <int J>
__device__ __forceinline__ void load_sub(x128 (&v)[J][4], const bf16 *x, int re, int cols, size_t ld, int rs, int rl,
                                         int c, bool vl, bool stream) {
#pragma unroll
    for (int j = 0; j < J; j++)
#pragma unroll
        for (int l = 0; l < 4; l++) v[j][l] = load_row8(x, re, cols, ld, rs + 256 * j + 4 * rl + l, c, vl, stream);
}

template <int MODE, Fp8Dtype DT, int SUB>
__global__ void __launch_bounds__(kThreads, SUB == 512 ? 2 : 3)
    fp8_cast_t_kernel(uint8_t *q, uint8_t *qd, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld,
                      const float *tensor_amax, int pow2, int rpc, int vl, int vs, int vd) {
    constexpr int kSub = SUB, kJ = SUB / 256;
    __shared__ __align__(16) uint32_t tile[kTW][kSub / 4];
    __shared__ float red[kThreads / 32][kJ][kTW];  // per-warp maxima [warp][j][column]
    __shared__ float scl[2 * kJ][kTW];             // scales [128-row block][column] (B1X128), [0][column] (AXIS)
    __shared__ float cmax[kTW];                    // AXIS: this CTA's column maxima, read by the whole cluster
    const int t = threadIdx.x, lane = t % 32, w = t / 32, k = t % 4, rl = t / 4;
    const int c0 = blockIdx.x * kTW, c = c0 + 8 * k;
    const int rbeg = blockIdx.y * rpc, rend = min(rows, rbeg + rpc);
    const int nsub = rend > rbeg ? (rend - rbeg + kSub - 1) / kSub : 0;
    const bool stream = nsub <= 1;  // values read once: evict-first
    x128 v[kJ][4];
    float s8[8];

    if (MODE == TM_TENSOR) {
        const float s = fp8_scale_from_amax(*tensor_amax, DT, pow2);
#pragma unroll
        for (int e = 0; e < 8; e++) s8[e] = s;
        if (blockIdx.x == 0 && blockIdx.y == 0 && t == 0) scale_inv[0] = fp8_scale_inv(s);
        if (nsub == 1) load_sub(v, x, rend, cols, ld, rbeg, rl, c, vl, stream);
    } else if (MODE == TM_AXIS) {
        float cm[8];
#pragma unroll
        for (int e = 0; e < 8; e++) cm[e] = 0.0f;
        for (int sub = 0; sub < nsub; sub++) {
            const int rs = rbeg + sub * kSub;
            load_sub(v, x, min(rend, rs + kSub), cols, ld, rs, rl, c, vl, stream);
#pragma unroll
            for (int j = 0; j < kJ; j++)
#pragma unroll
                for (int l = 0; l < 4; l++)
#pragma unroll
                    for (int e = 0; e < 8; e++) cm[e] = fp8_amax_step(cm[e], bf(v[j][l][e]));
        }
#pragma unroll
        for (int e = 0; e < 8; e++)
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) cm[e] = fmaxf(cm[e], __shfl_xor_sync(0xffffffffu, cm[e], o));
        if (lane < 4)
#pragma unroll
            for (int e = 0; e < 8; e++) red[w][0][8 * lane + e] = cm[e];
        __syncthreads();
        if (t < kTW) {
            float a = 0.0f;
            for (int ww = 0; ww < kThreads / 32; ww++) a = fmaxf(a, red[ww][0][t]);
            cmax[t] = a;
        }
        float a = 0.0f;
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
        if (gridDim.y > 1) {
            cg::cluster_group cl = cg::this_cluster();
            cl.sync();  // every CTA's cmax is written
            if (t < kTW)
                for (unsigned b = 0; b < cl.num_blocks(); b++) a = fmaxf(a, cl.map_shared_rank(&cmax[0], b)[t]);
            cl.sync();  // and read: no CTA leaves while another still reads its shared memory
        } else
#else
        if (gridDim.y > 1) __trap();  // the launcher uses clusters only on sm_90 builds
#endif
        {
            __syncthreads();
            if (t < kTW) a = cmax[t];
        }
        if (t < kTW) {
            const float s = fp8_scale_from_amax(a, DT, pow2);
            scl[0][t] = s;
            if (blockIdx.y == 0 && c0 + t < cols) scale_inv[c0 + t] = fp8_scale_inv(s);
        }
        __syncthreads();
#pragma unroll
        for (int e = 0; e < 8; e++) s8[e] = scl[0][8 * k + e];
    } else {  // TM_B1X128: e4m3, no pow2 (DeepSeek-V3 / torchao blockwise)
        if (nsub == 1) load_sub(v, x, rend, cols, ld, rbeg, rl, c, vl, stream);
#pragma unroll
        for (int j = 0; j < kJ; j++) {
            float bm[8];
#pragma unroll
            for (int e = 0; e < 8; e++) {
                bm[e] = 0.0f;
#pragma unroll
                for (int l = 0; l < 4; l++) bm[e] = fp8_amax_step(bm[e], bf(v[j][l][e]));
#pragma unroll
                for (int o = 4; o < 32; o <<= 1) bm[e] = fmaxf(bm[e], __shfl_xor_sync(0xffffffffu, bm[e], o));
            }
            if (lane < 4)
#pragma unroll
                for (int e = 0; e < 8; e++) red[w][j][8 * lane + e] = bm[e];
        }
        __syncthreads();
        if (t < 2 * kJ * kTW) {  // one (128-row block, column) per thread
            const int bl = t / kTW, col = t % kTW, j = bl / 2, h = bl % 2;
            float a = 0.0f;
#pragma unroll
            for (int ww = 4 * h; ww < 4 * h + 4; ww++) a = fmaxf(a, red[ww][j][col]);
            const float s = fp8_scale_from_amax(a, FP8_E4M3, 0);
            scl[bl][col] = s;
            const int b = blockIdx.y * (kSub / FP8_BLOCK) + bl;  // block index down the column
            if (b * FP8_BLOCK < rows && c0 + col < cols) scale_inv[(size_t)b * cols + c0 + col] = fp8_scale_inv(s);
        }
        __syncthreads();
    }

    for (int sub = 0; sub < nsub; sub++) {
        const int rs = rbeg + sub * kSub, re = min(rend, rs + kSub);
        if (nsub > 1) load_sub(v, x, re, cols, ld, rs, rl, c, vl, false);  // AXIS past 512 rows: read again
#pragma unroll
        for (int j = 0; j < kJ; j++) {
            if (MODE == TM_B1X128)
#pragma unroll
                for (int e = 0; e < 8; e++) s8[e] = scl[2 * j + w / 4][8 * k + e];
            uint32_t wd[8];  // column c + e, rows 4 rl .. 4 rl + 3 of the j-th 256
#pragma unroll
            for (int e = 0; e < 8; e++)
                wd[e] = quant4<DT>(bf(v[j][0][e]), bf(v[j][1][e]), bf(v[j][2][e]), bf(v[j][3][e]), s8[e]);
            if (MODE == TM_TENSOR && qd) {  // the direct layout: row 4 rl + l, columns c .. c + 7
                uint32_t lo[4], hi[4];
                transpose4x4(lo, wd[0], wd[1], wd[2], wd[3]);
                transpose4x4(hi, wd[4], wd[5], wd[6], wd[7]);
#pragma unroll
                for (int l = 0; l < 4; l++) {
                    const int r = rs + 256 * j + 4 * rl + l;
                    if (r < re && c < cols) store8(qd + (size_t)r * cols + c, make_uint2(lo[l], hi[l]), cols - c, vd);
                }
            }
            if (q)
#pragma unroll
                for (int e = 0; e < 8; e++) tile[8 * k + e][swz(8 * k + e, 64 * j + rl)] = wd[e];
        }
        if (!q) continue;  // the same for the whole CTA
        __syncthreads();
#pragma unroll
        for (int it = 0; it < kTW * (kSub / 16) / kThreads; it++) {
            const int ch = it * kThreads + t, orow = ch / (kSub / 16), m = ch % (kSub / 16);
            const int oc = c0 + orow, r = rs + 16 * m;
            if (oc < cols && r < re)
                store16(q + (size_t)oc * rows + r, *reinterpret_cast<const uint4 *>(&tile[orow][swz(orow, 4 * m)]),
                        re - r, vs);
        }
        __syncthreads();
    }
}

// ---- 1x128 blocks, direct ----------------------------------------------------------------------------
// Vector path (cols % 128 == 0, x 16-byte and q 8-byte aligned): the tensor is a flat run of 128-element
// groups; 16 lanes hold one group (8 values each, one 16-byte load), so a warp load reads 512
// contiguous bytes and a store writes 256; kB1U loads in flight per thread.
constexpr int kB1U = 2;
__global__ void __launch_bounds__(kThreads)
    fp8_block1x128_vec_kernel(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld) {
    const size_t nv = (size_t)rows * cols / 8, cv = (size_t)cols / 8;
    const int lane = threadIdx.x % 32, nb = cols / FP8_BLOCK;
    const size_t base = ((size_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32) * (32 * kB1U);
    x128 v[kB1U];
    float m[kB1U];
#pragma unroll
    for (int u = 0; u < kB1U; u++) {
        const size_t i = base + u * 32 + lane;
        m[u] = 0.0f;
        if (i < nv) v[u] = load128cs(ld == (size_t)cols ? x + 8 * i : x + (i / cv) * ld + 8 * (i % cv)), m[u] = amax8(0.0f, v[u]);
    }
#pragma unroll
    for (int u = 0; u < kB1U; u++) {
        float a = m[u];
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));  // the 16 lanes of a group
        const size_t i = base + u * 32 + lane;
        if (i >= nv) continue;  // whole groups: nv is a multiple of 16
        const float s = fp8_scale_from_amax(a, FP8_E4M3, 0);
        if (lane % 16 == 0) {
            const size_t g = i / 16;  // group (row g / nb, block g % nb)
            scale_inv[(g % nb) * (size_t)rows + g / nb] = fp8_scale_inv(s);
        }
        *reinterpret_cast<uint2 *>(q + 8 * i) = quant8<FP8_E4M3>(v[u], s);
    }
}
// Any shape or alignment: one warp per (row, block), 4 elements per lane.
__global__ void __launch_bounds__(kThreads)
    fp8_block1x128_scalar_kernel(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld,
                                 size_t ngroups) {
    const size_t g = (size_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32;
    if (g >= ngroups) return;  // whole warps leave together
    const int lane = threadIdx.x % 32, nb = (cols + FP8_BLOCK - 1) / FP8_BLOCK;
    const int r = (int)(g / nb), b = (int)(g % nb), c = b * FP8_BLOCK + lane * 4;
    const bf16 *xr = x + (size_t)r * ld;
    float v[4], m = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) v[j] = c + j < cols ? bf(xr[c + j]) : 0.0f, m = fp8_amax_step(m, v[j]);
    const float s = fp8_scale_from_amax(warp_max(m), FP8_E4M3, 0);
    if (lane == 0) scale_inv[(size_t)b * rows + r] = fp8_scale_inv(s);
    uint8_t *qr = q + (size_t)r * cols;
#pragma unroll
    for (int j = 0; j < 4; j++)
        if (c + j < cols) qr[c + j] = fp8_quantize(v[j], s, FP8_E4M3);
}

// ---- 128x128 blocks: one CTA per tile -----------------------------------------------------------------
// Thread (warp w, lane): columns 8k .. 8k + 7 of the tile (k = 4 (w % 4) + lane % 4) in rows
// 4 rg + l + 64 h (rg = 8 (w / 4) + lane / 4, l < 4, h < 2): eight 16-byte loads, 64 values in
// registers across the tile's amax; a warp load covers 8 rows x 64 contiguous bytes. Direct: 8-byte
// stores (8 rows x 32 bytes per warp). Transposed: the codes of rows 4 rg + 64 h .. + 3 of a column
// are word rg + 16 h of that operand row in a [128][32-word] tile, which leaves as 16-byte stores
// (8 threads per 128-byte piece of an operand row). vl: 16-byte loads allowed; vs: 8-byte (direct)
// or 16-byte (transposed) stores allowed.
template <bool TR>
__global__ void __launch_bounds__(kThreads)
    fp8_block128_kernel(uint8_t *q, float *scale_inv, int sld, const bf16 *x, int rows, int cols, size_t ld, int vl,
                        int vs) {
    __shared__ float red[32];
    __shared__ __align__(16) uint32_t tile[TR ? FP8_BLOCK : 1][FP8_BLOCK / 4];
    const int rb = blockIdx.y, cb = blockIdx.x, r0 = rb * FP8_BLOCK, c0 = cb * FP8_BLOCK;
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    const int k = 4 * (w % 4) + lane % 4, rg = 8 * (w / 4) + lane / 4, c = c0 + 8 * k;
    x128 v[2][4];
    float m = 0.0f;
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int l = 0; l < 4; l++) {
            v[h][l] = load_row8(x, rows, cols, ld, r0 + 4 * rg + l + 64 * h, c, vl, true);
            m = amax8(m, v[h][l]);
        }
    const float s = fp8_scale_from_amax(block_max(m, red), FP8_E4M3, 0);
    if (threadIdx.x == 0) scale_inv[TR ? (size_t)cb * sld + rb : (size_t)rb * sld + cb] = fp8_scale_inv(s);
    if constexpr (!TR) {
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int l = 0; l < 4; l++) {
                const int r = r0 + 4 * rg + l + 64 * h;
                if (r < rows && c < cols) store8(q + (size_t)r * cols + c, quant8<FP8_E4M3>(v[h][l], s), cols - c, vs);
            }
    } else {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        uint32_t wd[8];
#pragma unroll
        for (int e = 0; e < 8; e++)
            wd[e] = quant4<FP8_E4M3>(bf(v[h][0][e]), bf(v[h][1][e]), bf(v[h][2][e]), bf(v[h][3][e]), s);
#pragma unroll
        for (int e = 0; e < 8; e++) tile[8 * k + e][swz(8 * k + e, rg + 16 * h)] = wd[e];
    }
    __syncthreads();
#pragma unroll
    for (int it = 0; it < FP8_BLOCK * 8 / kThreads; it++) {
        const int ch = it * kThreads + threadIdx.x, orow = ch / 8, m8 = ch % 8;
        const int oc = c0 + orow, r = r0 + 16 * m8;
        if (oc < cols && r < rows)
            store16(q + (size_t)oc * rows + r, *reinterpret_cast<const uint4 *>(&tile[orow][swz(orow, 4 * m8)]),
                    rows - r, vs);
    }
    }
}

// The codes of one 32-element MX block: two 16-byte stores when the block is whole and dst is
// 16-byte aligned (vec), else byte by byte for the n elements there are.
__device__ __forceinline__ void mx_store_block(uint8_t *dst, const float *v, int n, bool vec, const MxScale &s,
                                               Fp8Dtype dt) {
    if (vec) {
        uint32_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
        for (int j = 0; j < MX_BLOCK; j++) w[j / 4] |= (uint32_t)mx_quantize(v[j], s, dt) << (8 * (j % 4));
        reinterpret_cast<uint4 *>(dst)[0] = make_uint4(w[0], w[1], w[2], w[3]);
        reinterpret_cast<uint4 *>(dst)[1] = make_uint4(w[4], w[5], w[6], w[7]);
    } else {
        for (int j = 0; j < n; j++) dst[j] = mx_quantize(v[j], s, dt);
    }
}

// ---- MX, direct: one thread per 32-element block -------------------------------------------------
template <bool VEC>
__global__ void __launch_bounds__(kThreads)
    mx_cast_kernel(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, size_t ld, Fp8Dtype dt, MxMode mode) {
    const int nb = (cols + MX_BLOCK - 1) / MX_BLOCK;
    const size_t g = (size_t)blockIdx.x * kThreads + threadIdx.x;
    if (g >= (size_t)rows * nb) return;
    const int r = (int)(g / nb), c0 = (int)(g % nb) * MX_BLOCK, n = min(MX_BLOCK, cols - c0);
    const bf16 *src = x + (size_t)r * ld + c0;
    float v[MX_BLOCK], m = 0.0f;
    if (VEC) {  // cols % 32 == 0, 16-byte aligned rows
#pragma unroll
        for (int k = 0; k < 4; k++) {
            x128 p = load128cs(src + 8 * k);
#pragma unroll
            for (int j = 0; j < 8; j++) v[8 * k + j] = bf(p[j]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < MX_BLOCK; j++) v[j] = j < n ? bf(src[j]) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < MX_BLOCK; j++)
        if (VEC || j < n) m = mx_amax_step(m, v[j]);
    const MxScale s = mx_scale_from_amax(m, dt, mode);
    e8m0[g] = s.e8m0;  // g = r * nb + block
    mx_store_block(q + (size_t)r * cols + c0, v, n, VEC, s, dt);
}

// ---- MX, transposed: one thread per (column of x, 32 rows); loads coalesce across threads ---------
__global__ void __launch_bounds__(128)
    mx_cast_t_kernel(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, size_t ld, Fp8Dtype dt, MxMode mode) {
    const int c = blockIdx.x * 128 + threadIdx.x, r0 = blockIdx.y * MX_BLOCK;
    if (c >= cols) return;
    const int n = min(MX_BLOCK, rows - r0), nb = (rows + MX_BLOCK - 1) / MX_BLOCK;
    float v[MX_BLOCK], m = 0.0f;
#pragma unroll
    for (int j = 0; j < MX_BLOCK; j++) {
        v[j] = j < n ? bf(x[(size_t)(r0 + j) * ld + c]) : 0.0f;
        if (j < n) m = mx_amax_step(m, v[j]);
    }
    const MxScale s = mx_scale_from_amax(m, dt, mode);
    e8m0[(size_t)c * nb + blockIdx.y] = s.e8m0;
    uint8_t *dst = q + (size_t)c * rows + r0;
    mx_store_block(dst, v, n, n == MX_BLOCK && ((uintptr_t)dst & 15) == 0, s, dt);
}

// ---- the element rounding against fp8_quantize, every fp32 value (fp8_quantize_check_all) ----------
template <Fp8Dtype DT>
__global__ void fp8_quantize_check_kernel(unsigned long long *bad, unsigned *first) {
    unsigned long long nbad = 0;
    unsigned f = 0xFFFFFFFFu;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < ((uint64_t)1 << 32); i += stride) {
        const float v = __uint_as_float((unsigned)i);
        const uint32_t want = fp8_quantize(v, 1.0f, DT);
        const uint32_t lo = quant2<DT>(v, 1.0f, 1.0f) & 0xFFu, hi = quant2<DT>(1.0f, v, 1.0f) >> 8;
        if (lo != want || hi != want) nbad++, f = min(f, (unsigned)i);
    }
    if (nbad) atomicAdd(bad, nbad), atomicMin(first, f);
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------------
// Tensors up to this size are read by the amax pass with plain loads (kept in L2 for the cast that
// reads them next; the H100/H200 L2 is 50 MB), larger ones evict-first.
constexpr size_t kAmaxKeepBytes = (size_t)32 << 20;

// A grid-stride kernel's grid: as many CTAs as are resident on the GPU at once, the same number on
// every SM (no partial last wave), at most `cap` (rounded down to whole SMs). Per kernel, computed once
// (one GPU model per process).
struct Residency {
    int sms, per_sm;
};
template <typename Kern>
static Residency residency(Kern kernel, int threads, Residency *cache) {
    if (!cache->sms) {
        int dev = 0, sms = 0, per = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, kernel, threads, 0));
        cache->per_sm = std::max(1, per), cache->sms = std::max(1, sms);
    }
    return *cache;
}
static size_t stream_grid(Residency r, size_t want, size_t cap) {
    const size_t per = std::min<size_t>((size_t)r.per_sm, cap / r.sms);
    const size_t full = per ? (size_t)r.sms * per : cap;  // (more SMs than cap: cap CTAs)
    return std::max<size_t>(1, std::min(want, full));
}

void fp8_amax_tensor(float *amax, float *ws, const bf16 *x, int rows, int cols, size_t ld, cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0 && ld >= (size_t)cols, "fp8_amax_tensor: bad shape %dx%d (row stride %zu)", rows, cols,
          ld);
    const size_t n = (size_t)rows * cols;
    CHECK(n / 8 < ((size_t)1 << 31), "fp8_amax_tensor: %zu elements exceed the kernel's 32-bit vector indices", n);
    const int vec = is_aligned16(x) && cols % 8 == 0 && ld % 8 == 0;
    static Residency res;
    const size_t want = (n + kThreads * 32 - 1) / (kThreads * 32);  // 4 vectors per thread at least
    const int np = (int)stream_grid(residency(fp8_amax_kernel, kThreads, &res), want, FP8_AMAX_PARTIALS);
    fp8_amax_kernel<<<np, kThreads, 0, stream>>>(amax, ws, x, (unsigned)rows, (unsigned)cols, ld, vec,
                                                 n * sizeof(bf16) <= kAmaxKeepBytes);
    CUDA_CHECK_LAST();
}

// The largest thread block cluster (along y) the transposed kernel may use: 1 without clusters (before
// sm_90, or the kernel not compiled for sm_90+: its cluster code is compiled only there); 16 where the
// GPU can co-schedule 16 of its CTAs (a non-portable size, allowed per kernel; H100 / H200 can), so that
// the axis cast of 8192 rows keeps its share of a column in registers (512 rows per CTA) instead of
// walking 1024 rows twice; else 8, the portable maximum (or with LLAMA_AO_FP8_CLUSTER=8, for the A/B:
// the same bits either way).
template <int MODE, Fp8Dtype DT, int SUB>
static int max_cluster(void) {
    static int cs = 0;
    if (!cs) {
        int dev = 0, major = 0;
        cudaFuncAttributes a;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        CUDA_CHECK(cudaFuncGetAttributes(&a, fp8_cast_t_kernel<MODE, DT, SUB>));
        cs = major >= 9 && a.ptxVersion >= 90 ? 8 : 1;
        const char *lim = getenv("LLAMA_AO_FP8_CLUSTER");
        if (cs == 8 && !(lim && atoi(lim) == 8) && cudaFuncSetAttribute(fp8_cast_t_kernel<MODE, DT, SUB>,
                                            cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess) {
            cudaLaunchAttribute attr[1];
            attr[0].id = cudaLaunchAttributeClusterDimension;
            attr[0].val.clusterDim.x = 1, attr[0].val.clusterDim.y = 16, attr[0].val.clusterDim.z = 1;
            cudaLaunchConfig_t cfg = {};
            cfg.gridDim = dim3(1, 16), cfg.blockDim = dim3(kThreads), cfg.dynamicSmemBytes = 0;
            cfg.attrs = attr, cfg.numAttrs = 1;
            int n = 0;
            if (cudaOccupancyMaxActiveClusters(&n, fp8_cast_t_kernel<MODE, DT, SUB>, &cfg) == cudaSuccess && n > 0)
                cs = 16;
        }
        cudaGetLastError();  // a refused query above only means no clusters of 16
    }
    return cs;
}

// q: the transposed codes (NULL: none); qd: the direct ones too (TM_TENSOR only; NULL: none).
template <int MODE, Fp8Dtype DT, int SUB>
static void launch_transposed_sub(uint8_t *q, uint8_t *qd, float *scale_inv, const bf16 *x, int rows, int cols,
                                  size_t ld, const float *tensor_amax, int pow2, cudaStream_t stream) {
    const int vl = is_aligned16(x) && cols % 8 == 0 && ld % 8 == 0, vs = is_aligned16(q) && rows % 16 == 0;
    const int vd = ((uintptr_t)qd & 7) == 0 && cols % 8 == 0;
    dim3 grid(ceil_div(cols, kTW), ceil_div(rows, SUB));
    int rpc = SUB, cs = 1;
    if (MODE == TM_AXIS) {
        // The whole column in one cluster: SUB rows per CTA up to max_cluster CTAs, then that many of more.
        cs = std::min(max_cluster<MODE, DT, SUB>(), ceil_div(rows, SUB));
        rpc = ceil_div(ceil_div(rows, cs), 64) * 64;
        grid.y = cs;
    }
    CHECK(grid.y <= 65535, "fp8 transposed cast: %d rows exceed the grid (65535 x %d)", rows, SUB);
    if (cs > 1) {
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = 1, attr[0].val.clusterDim.y = (unsigned)cs, attr[0].val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid, cfg.blockDim = dim3(kThreads), cfg.dynamicSmemBytes = 0, cfg.stream = stream;
        cfg.attrs = attr, cfg.numAttrs = 1;
        CUDA_CHECK(cudaLaunchKernelEx(&cfg, fp8_cast_t_kernel<MODE, DT, SUB>, q, qd, scale_inv, x, rows, cols, ld,
                                      tensor_amax, pow2, rpc, vl, vs, vd));
    } else {
        fp8_cast_t_kernel<MODE, DT, SUB>
            <<<grid, kThreads, 0, stream>>>(q, qd, scale_inv, x, rows, cols, ld, tensor_amax, pow2, rpc, vl, vs, vd);
    }
    CUDA_CHECK_LAST();
}

// The transposed kernel's tile rows: 256, or 512 with LLAMA_AO_FP8_TSUB=512 (read once), or what
// fp8_cast_transposed_tile set.
static int g_tsub = 0;
static int transposed_sub(void) {
    if (!g_tsub) {
        const char *e = getenv("LLAMA_AO_FP8_TSUB");
        g_tsub = e && atoi(e) == 512 ? 512 : 256;
    }
    return g_tsub;
}
int fp8_cast_transposed_tile(int rows) {
    const int old = transposed_sub();
    if (rows) g_tsub = rows == 256 ? 256 : 512;
    return old;
}

template <int MODE, Fp8Dtype DT>
static void launch_transposed(uint8_t *q, uint8_t *qd, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld,
                              const float *tensor_amax, int pow2, cudaStream_t stream) {
    if (transposed_sub() == 256)
        launch_transposed_sub<MODE, DT, 256>(q, qd, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
    else
        launch_transposed_sub<MODE, DT, 512>(q, qd, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
}

template <Fp8Dtype DT>
static void launch_direct(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld,
                          const float *tensor_amax, int pow2, cudaStream_t stream) {
    if (tensor_amax && ld != (size_t)cols) {  // strided rows: the two-layout kernel, direct layout only
        launch_transposed<TM_TENSOR, DT>(NULL, q, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
        return;
    }
    if (tensor_amax) {
        const size_t n = (size_t)rows * cols;
        const int vec = is_aligned16(x) && is_aligned16(q);
        static Residency res;
        const size_t want = vec ? ceil_div_sz(n / 16, kThreads) : ceil_div_sz(n, kThreads);
        const size_t grid = stream_grid(residency(fp8_cast_tensor_kernel<DT>, kThreads, &res), want, (size_t)1 << 20);
        fp8_cast_tensor_kernel<DT><<<(unsigned)grid, kThreads, 0, stream>>>(q, scale_inv, x, n, tensor_amax, pow2, vec);
    } else if (cols % 16 == 0 && ld % 8 == 0 && is_aligned16(x) && is_aligned16(q)) {
        // a group of G threads per row with about kRowPieces 16-element pieces each; CTAs of 256 threads
        // or more (several short rows each)
        const int np = cols / 16, G = std::min(1024, std::max(32, ceil_div(ceil_div(np, kRowPieces), 32) * 32));
        const int rpb = std::max(1, kThreads / G);
        const int keep = (size_t)rows * cols * sizeof(bf16) <= kAmaxKeepBytes;
        fp8_cast_rows_kernel<DT><<<(unsigned)ceil_div(rows, rpb), G * rpb, 0, stream>>>(q, scale_inv, x, rows, cols, ld,
                                                                                      G, pow2, keep);
    } else {
        fp8_cast_rows_scalar_kernel<DT><<<rows, kThreads, 0, stream>>>(q, scale_inv, x, cols, ld, pow2);
    }
    CUDA_CHECK_LAST();
}

void fp8_cast_ld(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld, const float *tensor_amax,
                 Fp8Dtype dt, int pow2, int transposed, cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0 && ld >= (size_t)cols, "fp8_cast: bad shape %dx%d (row stride %zu)", rows, cols, ld);
    if (rows == 0 || cols == 0) return;
    // dt as a template argument, so that each kernel's inner loop has one conversion
    const bool e4 = dt == FP8_E4M3;
    if (transposed && tensor_amax) {
        fp8_cast_tensor(NULL, q, scale_inv, x, rows, cols, ld, tensor_amax, dt, pow2, stream);
    } else if (transposed) {
        if (e4) launch_transposed<TM_AXIS, FP8_E4M3>(q, NULL, scale_inv, x, rows, cols, ld, NULL, pow2, stream);
        else launch_transposed<TM_AXIS, FP8_E5M2>(q, NULL, scale_inv, x, rows, cols, ld, NULL, pow2, stream);
    } else {
        if (e4) launch_direct<FP8_E4M3>(q, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
        else launch_direct<FP8_E5M2>(q, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
    }
}

void fp8_cast(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, const float *tensor_amax, Fp8Dtype dt,
              int pow2, int transposed, cudaStream_t stream) {
    fp8_cast_ld(q, scale_inv, x, rows, cols, (size_t)cols, tensor_amax, dt, pow2, transposed, stream);
}

void fp8_cast_tensor(uint8_t *q, uint8_t *qt, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld,
                     const float *tensor_amax, Fp8Dtype dt, int pow2, cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0 && ld >= (size_t)cols && tensor_amax, "fp8_cast_tensor: bad shape %dx%d (row stride "
          "%zu) or no amax", rows, cols, ld);
    if (rows == 0 || cols == 0 || (!q && !qt)) return;
    const bool e4 = dt == FP8_E4M3;
    if (!qt) {  // direct only: the flat kernel (dense x) or the two-layout kernel's direct half
        if (e4) launch_direct<FP8_E4M3>(q, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
        else launch_direct<FP8_E5M2>(q, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
    } else {
        if (e4) launch_transposed<TM_TENSOR, FP8_E4M3>(qt, q, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
        else launch_transposed<TM_TENSOR, FP8_E5M2>(qt, q, scale_inv, x, rows, cols, ld, tensor_amax, pow2, stream);
    }
}

__global__ void fp8_scales_from_amax_kernel(float *scale_inv, const float *amax, int n, Fp8Dtype dt, int pow2) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) scale_inv[i] = fp8_scale_inv(fp8_scale_from_amax(amax[i], dt, pow2));
}

void fp8_scales_from_amax(float *scale_inv, const float *amax, int n, Fp8Dtype dt, int pow2, cudaStream_t stream) {
    CHECK(n >= 0, "fp8_scales_from_amax: %d scales", n);
    if (n == 0) return;
    fp8_scales_from_amax_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(scale_inv, amax, n, dt, pow2);
    CUDA_CHECK_LAST();
}

// 64 x 64 byte tiles through shared memory, so that reads and writes are both along rows; the
// extra column keeps a tile column's bytes in different banks. Not on a hot path: one W^T per fp8
// Linear and micro-batch backward, against a GEMM over the same bytes times the token count.
__global__ void fp8_transpose_kernel(uint8_t *qt, const uint8_t *q, int rows, int cols) {
    __shared__ uint8_t tile[64][65];
    const int r0 = blockIdx.y * 64, c0 = blockIdx.x * 64;
    for (int i = threadIdx.y; i < 64; i += blockDim.y) {
        const int r = r0 + i, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[i][threadIdx.x] = q[(size_t)r * cols + c];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < 64; i += blockDim.y) {
        const int c = c0 + i, r = r0 + threadIdx.x;
        if (c < cols && r < rows) qt[(size_t)c * rows + r] = tile[threadIdx.x][i];
    }
}

void fp8_transpose(uint8_t *qt, const uint8_t *q, int rows, int cols, cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0, "fp8_transpose: bad shape %dx%d", rows, cols);
    if (rows == 0 || cols == 0) return;
    CHECK(ceil_div(rows, 64) <= 65535, "fp8_transpose: %d rows exceed the grid (65535 tiles of 64)", rows);
    fp8_transpose_kernel<<<dim3(ceil_div(cols, 64), ceil_div(rows, 64)), dim3(64, 4), 0, stream>>>(qt, q, rows, cols);
    CUDA_CHECK_LAST();
}

unsigned long long fp8_quantize_check_all(Fp8Dtype dt, uint32_t *first, cudaStream_t stream) {
    unsigned long long *d_bad = NULL, bad = 0;
    unsigned *d_first = NULL, f = 0;
    CUDA_CHECK(cudaMalloc(&d_bad, sizeof *d_bad));
    CUDA_CHECK(cudaMalloc(&d_first, sizeof *d_first));
    CUDA_CHECK(cudaMemsetAsync(d_bad, 0, sizeof *d_bad, stream));
    CUDA_CHECK(cudaMemsetAsync(d_first, 0xFF, sizeof *d_first, stream));
    if (dt == FP8_E4M3) fp8_quantize_check_kernel<FP8_E4M3><<<4096, kThreads, 0, stream>>>(d_bad, d_first);
    else fp8_quantize_check_kernel<FP8_E5M2><<<4096, kThreads, 0, stream>>>(d_bad, d_first);
    CUDA_CHECK_LAST();
    CUDA_CHECK(cudaMemcpyAsync(&bad, d_bad, sizeof bad, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaMemcpyAsync(&f, d_first, sizeof f, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaFree(d_bad), cudaFree(d_first);
    if (first) *first = bad ? f : 0;
    return bad;
}

void fp8_cast_block1x128_ld(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, size_t ld, int transposed,
                            cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0 && ld >= (size_t)cols, "fp8_cast_block1x128: bad shape %dx%d (row stride %zu)", rows,
          cols, ld);
    if (rows == 0 || cols == 0) return;
    if (transposed) {
        launch_transposed<TM_B1X128, FP8_E4M3>(q, NULL, scale_inv, x, rows, cols, ld, NULL, 0, stream);
        return;
    }
    if (cols % FP8_BLOCK == 0 && ld % 8 == 0 && is_aligned16(x) && ((uintptr_t)q & 7) == 0) {
        const size_t nv = (size_t)rows * cols / 8;
        fp8_block1x128_vec_kernel<<<(unsigned)ceil_div_sz(nv, kThreads * kB1U), kThreads, 0, stream>>>(q, scale_inv, x,
                                                                                                     rows, cols, ld);
    } else {
        const size_t ngroups = (size_t)rows * ceil_div(cols, FP8_BLOCK);
        fp8_block1x128_scalar_kernel<<<(unsigned)ceil_div_sz(ngroups, kThreads / 32), kThreads, 0, stream>>>(
            q, scale_inv, x, rows, cols, ld, ngroups);
    }
    CUDA_CHECK_LAST();
}

void fp8_cast_block1x128(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, int transposed,
                         cudaStream_t stream) {
    fp8_cast_block1x128_ld(q, scale_inv, x, rows, cols, (size_t)cols, transposed, stream);
}

static void block128x128(uint8_t *q, float *scale_inv, int sld, const bf16 *x, int rows, int cols, size_t ld,
                         int transposed, cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0 && ld >= (size_t)cols, "fp8_cast_block128x128: bad shape %dx%d (row stride %zu)", rows,
          cols, ld);
    CHECK(sld >= ceil_div(transposed ? rows : cols, FP8_BLOCK), "fp8_cast_block128x128: scale ld %d too small", sld);
    if (rows == 0 || cols == 0) return;
    dim3 grid(ceil_div(cols, FP8_BLOCK), ceil_div(rows, FP8_BLOCK));
    CHECK(grid.y <= 65535, "fp8_cast_block128x128: %d rows exceed the grid (65535 x 128)", rows);
    const int vl = is_aligned16(x) && cols % 8 == 0 && ld % 8 == 0;
    if (transposed)
        fp8_block128_kernel<true><<<grid, kThreads, 0, stream>>>(q, scale_inv, sld, x, rows, cols, ld, vl,
                                                                  is_aligned16(q) && rows % 16 == 0);
    else
        fp8_block128_kernel<false><<<grid, kThreads, 0, stream>>>(q, scale_inv, sld, x, rows, cols, ld, vl,
                                                                   ((uintptr_t)q & 7) == 0 && cols % 8 == 0);
    CUDA_CHECK_LAST();
}

void fp8_cast_block128x128(uint8_t *q, float *scale_inv, int ld, const bf16 *x, int rows, int cols, int transposed,
                           cudaStream_t stream) {
    block128x128(q, scale_inv, ld, x, rows, cols, (size_t)cols, transposed, stream);
}

void mx_cast_ld(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, size_t ld, Fp8Dtype dt, MxMode mode,
                int transposed, cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0 && ld >= (size_t)cols, "mx_cast: bad shape %dx%d (row stride %zu)", rows, cols, ld);
    if (rows == 0 || cols == 0) return;
    if (transposed) {
        dim3 grid(ceil_div(cols, 128), ceil_div(rows, MX_BLOCK));
        CHECK(grid.y <= 65535, "mx_cast: %d rows exceed the transposed grid (65535 x 32)", rows);
        mx_cast_t_kernel<<<grid, 128, 0, stream>>>(q, e8m0, x, rows, cols, ld, dt, mode);
    } else {
        size_t groups = (size_t)rows * ceil_div(cols, MX_BLOCK);
        unsigned grid = (unsigned)ceil_div_sz(groups, kThreads);
        if (cols % MX_BLOCK == 0 && ld % 8 == 0 && is_aligned16(x) && is_aligned16(q))
            mx_cast_kernel<true><<<grid, kThreads, 0, stream>>>(q, e8m0, x, rows, cols, ld, dt, mode);
        else
            mx_cast_kernel<false><<<grid, kThreads, 0, stream>>>(q, e8m0, x, rows, cols, ld, dt, mode);
    }
    CUDA_CHECK_LAST();
}

void mx_cast(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, Fp8Dtype dt, MxMode mode, int transposed,
             cudaStream_t stream) {
    mx_cast_ld(q, e8m0, x, rows, cols, (size_t)cols, dt, mode, transposed, stream);
}

void fp8_cast_operand_ld(uint8_t *q, float *scale_inv, uint8_t *e8m0, const bf16 *x, int rows, int cols, size_t ld,
                         Fp8CastSpec spec, float *amax_ws, cudaStream_t stream) {
    int sld = 0;
    fp8_scale_count(spec, rows, cols, &sld);
    switch (spec.scaling) {
        case FP8_SCALE_TENSOR:
            CHECK(amax_ws != NULL, "fp8_cast_operand: tensor scaling needs amax_ws");
            fp8_amax_tensor(amax_ws + FP8_AMAX_PARTIALS, amax_ws, x, rows, cols, ld, stream);
            fp8_cast_ld(q, scale_inv, x, rows, cols, ld, amax_ws + FP8_AMAX_PARTIALS, spec.dtype, spec.pow2,
                        spec.transposed, stream);
            break;
        case FP8_SCALE_AXIS:
            fp8_cast_ld(q, scale_inv, x, rows, cols, ld, NULL, spec.dtype, spec.pow2, spec.transposed, stream);
            break;
        case FP8_SCALE_1X128: fp8_cast_block1x128_ld(q, scale_inv, x, rows, cols, ld, spec.transposed, stream); break;
        case FP8_SCALE_128X128: block128x128(q, scale_inv, sld, x, rows, cols, ld, spec.transposed, stream); break;
        case FP8_SCALE_MX32:
            mx_cast_ld(q, e8m0, x, rows, cols, ld, spec.dtype, spec.mx_rceil ? MX_RCEIL : MX_FLOOR, spec.transposed,
                       stream);
            break;
        default: FAIL("fp8_cast_operand: scaling %d is not a cast (a bf16 operand)", (int)spec.scaling);
    }
}

void fp8_cast_operand(uint8_t *q, float *scale_inv, uint8_t *e8m0, const bf16 *x, int rows, int cols, Fp8CastSpec spec,
                      float *amax_ws, cudaStream_t stream) {
    fp8_cast_operand_ld(q, scale_inv, e8m0, x, rows, cols, (size_t)cols, spec, amax_ws, stream);
}
