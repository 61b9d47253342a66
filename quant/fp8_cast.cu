// fp8 / MX cast kernels (interface and layouts in fp8_cast.cuh). Every element goes through the
// shared functions of fp8.h / mx.h (fp8_quantize, fp8_scale_from_amax, mx_scale_from_amax, ...),
// so results equal the CPU reference bit for bit; the kernels only choose who loads what.
// Memory-bound: each kernel reads x once for the amax and once for the cast (the second read
// mostly from L1/L2 or registers), writes one byte per element.
#include "../common/cuda_utils.cuh"
#include "fp8_cast.cuh"

static_assert(FP8_BLOCK == 128 && MX_BLOCK == 32, "the tile shapes below assume 128 / 32 element blocks");
static_assert(sizeof(bf16) == 2 && sizeof(x128) == 16, "8 bf16 per 16-byte load");

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float bf(bf16 v) { return __bfloat162float(v); }

// NaN-free maxima (our amax ignores NaN), so fmaxf combines partials exactly.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Max over a block of kThreads threads; every thread gets it. red holds kThreads / 32 floats.
__device__ __forceinline__ float block_max(float v, float *red) {
    v = warp_max(v);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float m = 0.0f;
#pragma unroll
    for (int w = 0; w < kThreads / 32; w++) m = fmaxf(m, red[w]);
    __syncthreads();
    return m;
}

// 8 fp8 codes of 8 bf16 at one scale, packed for one 8-byte store.
__device__ __forceinline__ uint2 quant8(const x128 &v, float s, Fp8Dtype dt) {
    uint32_t w[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < 8; j++) w[j / 4] |= (uint32_t)fp8_quantize(bf(v[j]), s, dt) << (8 * (j % 4));
    return make_uint2(w[0], w[1]);
}

// ---- tensor amax ---------------------------------------------------------------------------------
__global__ void __launch_bounds__(kThreads) fp8_amax_partial_kernel(float *partials, const bf16 *x, size_t n, int vec) {
    __shared__ float red[kThreads / 32];
    float m = 0.0f;
    size_t tid = (size_t)blockIdx.x * kThreads + threadIdx.x, stride = (size_t)gridDim.x * kThreads, done = 0;
    if (vec) {
        done = n / 8 * 8;
        for (size_t i = tid; i < n / 8; i += stride) {
            x128 v = load128cs(x + i * 8);
#pragma unroll
            for (int j = 0; j < 8; j++) m = fp8_amax_step(m, bf(v[j]));
        }
    }
    for (size_t i = done + tid; i < n; i += stride) m = fp8_amax_step(m, bf(x[i]));
    m = block_max(m, red);
    if (threadIdx.x == 0) partials[blockIdx.x] = m;
}

__global__ void __launch_bounds__(kThreads) fp8_amax_final_kernel(float *amax, const float *partials, int np) {
    __shared__ float red[kThreads / 32];
    float m = 0.0f;
    for (int i = threadIdx.x; i < np; i += kThreads) m = fmaxf(m, partials[i]);
    m = block_max(m, red);
    if (threadIdx.x == 0) *amax = m;
}

// ---- tensor / axis scaling, direct layout: one CUDA block per row ----------------------------------
template <int VEC>
__global__ void __launch_bounds__(kThreads) fp8_cast_rows_kernel(uint8_t *q, float *scale_inv, const bf16 *x, int cols,
                                                                 const float *tensor_amax, Fp8Dtype dt, int pow2) {
    __shared__ float red[kThreads / 32];
    const size_t row = blockIdx.x;
    const bf16 *xr = x + row * cols;
    uint8_t *qr = q + row * cols;
    float amax;
    if (tensor_amax) {
        amax = *tensor_amax;
    } else {
        float m = 0.0f;
        if (VEC == 8) {
            for (int c = threadIdx.x * 8; c < cols; c += kThreads * 8) {
                x128 v = load128(xr + c);
#pragma unroll
                for (int j = 0; j < 8; j++) m = fp8_amax_step(m, bf(v[j]));
            }
        } else {
            for (int c = threadIdx.x; c < cols; c += kThreads) m = fp8_amax_step(m, bf(xr[c]));
        }
        amax = block_max(m, red);
    }
    const float s = fp8_scale_from_amax(amax, dt, pow2);
    if (threadIdx.x == 0 && (!tensor_amax || row == 0)) scale_inv[tensor_amax ? 0 : row] = fp8_scale_inv(s);
    if (VEC == 8) {
        for (int c = threadIdx.x * 8; c < cols; c += kThreads * 8)
            *reinterpret_cast<uint2 *>(qr + c) = quant8(load128(xr + c), s, dt);
    } else {
        for (int c = threadIdx.x; c < cols; c += kThreads) qr[c] = fp8_quantize(bf(xr[c]), s, dt);
    }
}

// ---- tensor / axis scaling, transposed layout -----------------------------------------------------
// CUDA block (32, 8) owns 32 columns of x (= 32 operand rows) over all rows: pass 1 takes each
// column's amax, pass 2 casts 32x32 tiles and writes them transposed through shared memory, so
// each warp stores 32 consecutive bytes of an operand row.
__global__ void __launch_bounds__(kThreads)
    fp8_cast_cols_t_kernel(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, const float *tensor_amax,
                           Fp8Dtype dt, int pow2) {
    __shared__ float red[8][32];
    __shared__ float scale[32];
    __shared__ uint8_t tile[32][33];  // [x row within tile][column], +1 against bank conflicts
    const int tx = threadIdx.x, ty = threadIdx.y, c0 = blockIdx.x * 32, c = c0 + tx;
    if (tensor_amax) {
        if (ty == 0) scale[tx] = fp8_scale_from_amax(*tensor_amax, dt, pow2);
        if (blockIdx.x == 0 && tx == 0 && ty == 0)
            scale_inv[0] = fp8_scale_inv(fp8_scale_from_amax(*tensor_amax, dt, pow2));
    } else {
        float m = 0.0f;
        if (c < cols)
            for (int r = ty; r < rows; r += 8) m = fp8_amax_step(m, bf(x[(size_t)r * cols + c]));
        red[ty][tx] = m;
        __syncthreads();
        if (ty == 0) {
            for (int k = 1; k < 8; k++) m = fmaxf(m, red[k][tx]);
            scale[tx] = fp8_scale_from_amax(m, dt, pow2);
            if (c < cols) scale_inv[c] = fp8_scale_inv(scale[tx]);
        }
    }
    __syncthreads();
    for (int r0 = 0; r0 < rows; r0 += 32) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = r0 + ty + 8 * i;
            float v = (r < rows && c < cols) ? bf(x[(size_t)r * cols + c]) : 0.0f;
            tile[ty + 8 * i][tx] = fp8_quantize(v, scale[tx], dt);
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int oc = c0 + ty + 8 * i, r = r0 + tx;  // operand row oc (= column of x), column r
            if (oc < cols && r < rows) q[(size_t)oc * rows + r] = tile[tx][ty + 8 * i];
        }
        __syncthreads();
    }
}

// ---- 1x128 blocks, direct: one warp per (row, block), 4 elements per lane -------------------------
template <bool VEC>
__global__ void __launch_bounds__(kThreads)
    fp8_block1x128_kernel(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, size_t ngroups) {
    const size_t g = (size_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32;
    if (g >= ngroups) return;  // whole warps leave together
    const int lane = threadIdx.x % 32, nb = (cols + FP8_BLOCK - 1) / FP8_BLOCK;
    const int r = (int)(g / nb), b = (int)(g % nb), c = b * FP8_BLOCK + lane * 4;
    const bf16 *xr = x + (size_t)r * cols;
    float v[4];
    if (VEC) {
        uint2 raw = *reinterpret_cast<const uint2 *>(xr + c);  // cols % 128 == 0: never past the row
        const bf16 *h = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
        for (int j = 0; j < 4; j++) v[j] = bf(h[j]);
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) v[j] = c + j < cols ? bf(xr[c + j]) : 0.0f;
    }
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) m = fp8_amax_step(m, v[j]);
    const float s = fp8_scale_from_amax(warp_max(m), FP8_E4M3, 0);
    if (lane == 0) scale_inv[(size_t)b * rows + r] = fp8_scale_inv(s);
    uint8_t *qr = q + (size_t)r * cols;
    if (VEC) {
        uint32_t w = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) w |= (uint32_t)fp8_quantize(v[j], s, FP8_E4M3) << (8 * j);
        *reinterpret_cast<uint32_t *>(qr + c) = w;
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (c + j < cols) qr[c + j] = fp8_quantize(v[j], s, FP8_E4M3);
    }
}

// ---- 1x128 blocks, transposed: blocks of 128 down each column of x ---------------------------------
// CUDA block (32, 8) owns a 128-row x 32-column tile of x: 32 operand rows, one block each. Each
// thread keeps its 16 values in registers; the codes go through shared memory so that operand
// rows are written in 16-byte pieces.
__global__ void __launch_bounds__(kThreads)
    fp8_block1x128_t_kernel(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols) {
    __shared__ float red[8][32];
    __shared__ float scale[32];
    __shared__ __align__(16) uint8_t tile[32][FP8_BLOCK + 16];  // [operand row][column], rows 16-byte aligned
    const int tx = threadIdx.x, ty = threadIdx.y, c0 = blockIdx.x * 32, c = c0 + tx, r0 = blockIdx.y * FP8_BLOCK;
    float v[16], m = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        int r = r0 + ty + 8 * i;
        v[i] = (r < rows && c < cols) ? bf(x[(size_t)r * cols + c]) : 0.0f;
        m = fp8_amax_step(m, v[i]);
    }
    red[ty][tx] = m;
    __syncthreads();
    if (ty == 0) {
        for (int k = 1; k < 8; k++) m = fmaxf(m, red[k][tx]);
        scale[tx] = fp8_scale_from_amax(m, FP8_E4M3, 0);
        if (c < cols) scale_inv[(size_t)blockIdx.y * cols + c] = fp8_scale_inv(scale[tx]);
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 16; i++) tile[tx][ty + 8 * i] = fp8_quantize(v[i], scale[tx], FP8_E4M3);
    __syncthreads();
    const int t = ty * 32 + tx, j = t / 8, seg = (t % 8) * 16, oc = c0 + j;  // 32 rows x 8 pieces of 16
    if (oc >= cols) return;
    uint8_t *dst = q + (size_t)oc * rows + r0 + seg;
    if (r0 + seg + 16 <= rows && ((uintptr_t)dst & 15) == 0) {
        *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(&tile[j][seg]);
    } else {
        for (int k = 0; k < 16 && r0 + seg + k < rows; k++) dst[k] = tile[j][seg + k];
    }
}

// ---- 128x128 blocks: one CUDA block per tile, 64 values per thread in registers -------------------
__global__ void __launch_bounds__(kThreads)
    fp8_block128_kernel(uint8_t *q, float *scale_inv, int ld, const bf16 *x, int rows, int cols, int transposed) {
    __shared__ float red[kThreads / 32];
    __shared__ __align__(16) uint8_t tile[FP8_BLOCK][FP8_BLOCK + 16];  // transposed codes [column][row]
    const int rb = blockIdx.y, cb = blockIdx.x, r0 = rb * FP8_BLOCK, c0 = cb * FP8_BLOCK;
    const int cg = (threadIdx.x % 32) * 4, rg = threadIdx.x / 32;  // 4 columns, rows rg + 8i
    const bool vec = (cols % 4 == 0) && c0 + cg + 4 <= cols && (((uintptr_t)x & 7) == 0);
    float v[16][4], m = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const int r = r0 + rg + 8 * i;
        const bf16 *src = x + (size_t)r * cols + c0 + cg;
        if (r < rows && vec) {
            uint2 raw = *reinterpret_cast<const uint2 *>(src);
            const bf16 *h = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
            for (int j = 0; j < 4; j++) v[i][j] = bf(h[j]);
        } else {
#pragma unroll
            for (int j = 0; j < 4; j++) v[i][j] = (r < rows && c0 + cg + j < cols) ? bf(src[j]) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 4; j++) m = fp8_amax_step(m, v[i][j]);
    }
    const float s = fp8_scale_from_amax(block_max(m, red), FP8_E4M3, 0);
    if (threadIdx.x == 0) scale_inv[transposed ? (size_t)cb * ld + rb : (size_t)rb * ld + cb] = fp8_scale_inv(s);
    if (!transposed) {
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int r = r0 + rg + 8 * i;
            if (r >= rows) continue;
            uint8_t *dst = q + (size_t)r * cols + c0 + cg;
            if (vec && ((uintptr_t)q & 3) == 0) {
                uint32_t w = 0;
#pragma unroll
                for (int j = 0; j < 4; j++) w |= (uint32_t)fp8_quantize(v[i][j], s, FP8_E4M3) << (8 * j);
                *reinterpret_cast<uint32_t *>(dst) = w;
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (c0 + cg + j < cols) dst[j] = fp8_quantize(v[i][j], s, FP8_E4M3);
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < 16; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) tile[cg + j][rg + 8 * i] = fp8_quantize(v[i][j], s, FP8_E4M3);
    __syncthreads();
    // Operand row = column c0 + jr of x, its bytes r0 .. r0 + 127 in 8 pieces of 16.
    for (int k = threadIdx.x; k < FP8_BLOCK * 8; k += kThreads) {
        const int jr = k / 8, seg = (k % 8) * 16, oc = c0 + jr;
        if (oc >= cols) continue;
        uint8_t *dst = q + (size_t)oc * rows + r0 + seg;
        if (r0 + seg + 16 <= rows && ((uintptr_t)dst & 15) == 0) {
            *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(&tile[jr][seg]);
        } else {
            for (int e = 0; e < 16 && r0 + seg + e < rows; e++) dst[e] = tile[jr][seg + e];
        }
    }
}

// ---- MX, direct: one thread per 32-element block -------------------------------------------------
template <bool VEC>
__global__ void __launch_bounds__(kThreads)
    mx_cast_kernel(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, Fp8Dtype dt, MxMode mode) {
    const int nb = (cols + MX_BLOCK - 1) / MX_BLOCK;
    const size_t g = (size_t)blockIdx.x * kThreads + threadIdx.x;
    if (g >= (size_t)rows * nb) return;
    const int r = (int)(g / nb), c0 = (int)(g % nb) * MX_BLOCK, n = min(MX_BLOCK, cols - c0);
    const bf16 *src = x + (size_t)r * cols + c0;
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
    uint8_t *dst = q + (size_t)r * cols + c0;
    if (VEC) {
        uint32_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
        for (int j = 0; j < MX_BLOCK; j++) w[j / 4] |= (uint32_t)mx_quantize(v[j], s, dt) << (8 * (j % 4));
        reinterpret_cast<uint4 *>(dst)[0] = make_uint4(w[0], w[1], w[2], w[3]);
        reinterpret_cast<uint4 *>(dst)[1] = make_uint4(w[4], w[5], w[6], w[7]);
    } else {
        for (int j = 0; j < n; j++) dst[j] = mx_quantize(v[j], s, dt);
    }
}

// ---- MX, transposed: one thread per (column of x, 32 rows); loads coalesce across threads ---------
__global__ void __launch_bounds__(128)
    mx_cast_t_kernel(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, Fp8Dtype dt, MxMode mode) {
    const int c = blockIdx.x * 128 + threadIdx.x, r0 = blockIdx.y * MX_BLOCK;
    if (c >= cols) return;
    const int n = min(MX_BLOCK, rows - r0), nb = (rows + MX_BLOCK - 1) / MX_BLOCK;
    float v[MX_BLOCK], m = 0.0f;
#pragma unroll
    for (int j = 0; j < MX_BLOCK; j++) {
        v[j] = j < n ? bf(x[(size_t)(r0 + j) * cols + c]) : 0.0f;
        if (j < n) m = mx_amax_step(m, v[j]);
    }
    const MxScale s = mx_scale_from_amax(m, dt, mode);
    e8m0[(size_t)c * nb + blockIdx.y] = s.e8m0;
    uint8_t *dst = q + (size_t)c * rows + r0;
    if (n == MX_BLOCK && ((uintptr_t)dst & 15) == 0) {
        uint32_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
        for (int j = 0; j < MX_BLOCK; j++) w[j / 4] |= (uint32_t)mx_quantize(v[j], s, dt) << (8 * (j % 4));
        reinterpret_cast<uint4 *>(dst)[0] = make_uint4(w[0], w[1], w[2], w[3]);
        reinterpret_cast<uint4 *>(dst)[1] = make_uint4(w[4], w[5], w[6], w[7]);
    } else {
        for (int j = 0; j < n; j++) dst[j] = mx_quantize(v[j], s, dt);
    }
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------------
void fp8_amax_tensor(float *amax, float *partials, const bf16 *x, size_t n, cudaStream_t stream) {
    int vec = is_aligned16(x);
    size_t want = (n + kThreads * 8 - 1) / (kThreads * 8);
    int np = (int)(want < 1 ? 1 : want > FP8_AMAX_PARTIALS ? FP8_AMAX_PARTIALS : want);
    fp8_amax_partial_kernel<<<np, kThreads, 0, stream>>>(partials, x, n, vec);
    CUDA_CHECK_LAST();
    fp8_amax_final_kernel<<<1, kThreads, 0, stream>>>(amax, partials, np);
    CUDA_CHECK_LAST();
}

void fp8_cast(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, const float *tensor_amax, Fp8Dtype dt,
              int pow2, int transposed, cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0, "fp8_cast: bad shape %dx%d", rows, cols);
    if (rows == 0 || cols == 0) return;
    if (transposed) {
        fp8_cast_cols_t_kernel<<<ceil_div(cols, 32), dim3(32, 8), 0, stream>>>(q, scale_inv, x, rows, cols, tensor_amax,
                                                                               dt, pow2);
    } else if (cols % 8 == 0 && is_aligned16(x) && ((uintptr_t)q & 7) == 0) {
        fp8_cast_rows_kernel<8><<<rows, kThreads, 0, stream>>>(q, scale_inv, x, cols, tensor_amax, dt, pow2);
    } else {
        fp8_cast_rows_kernel<1><<<rows, kThreads, 0, stream>>>(q, scale_inv, x, cols, tensor_amax, dt, pow2);
    }
    CUDA_CHECK_LAST();
}

void fp8_cast_block1x128(uint8_t *q, float *scale_inv, const bf16 *x, int rows, int cols, int transposed,
                         cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0, "fp8_cast_block1x128: bad shape %dx%d", rows, cols);
    if (rows == 0 || cols == 0) return;
    if (transposed) {
        dim3 grid(ceil_div(cols, 32), ceil_div(rows, FP8_BLOCK));
        CHECK(grid.y <= 65535, "fp8_cast_block1x128: %d rows exceed the grid (65535 x 128)", rows);
        fp8_block1x128_t_kernel<<<grid, dim3(32, 8), 0, stream>>>(q, scale_inv, x, rows, cols);
    } else {
        size_t ngroups = (size_t)rows * ceil_div(cols, FP8_BLOCK);
        unsigned grid = (unsigned)ceil_div_sz(ngroups, kThreads / 32);
        if (cols % FP8_BLOCK == 0 && ((uintptr_t)x & 7) == 0 && ((uintptr_t)q & 3) == 0)
            fp8_block1x128_kernel<true><<<grid, kThreads, 0, stream>>>(q, scale_inv, x, rows, cols, ngroups);
        else
            fp8_block1x128_kernel<false><<<grid, kThreads, 0, stream>>>(q, scale_inv, x, rows, cols, ngroups);
    }
    CUDA_CHECK_LAST();
}

void fp8_cast_block128x128(uint8_t *q, float *scale_inv, int ld, const bf16 *x, int rows, int cols, int transposed,
                           cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0, "fp8_cast_block128x128: bad shape %dx%d", rows, cols);
    CHECK(ld >= ceil_div(transposed ? rows : cols, FP8_BLOCK), "fp8_cast_block128x128: scale ld %d too small", ld);
    if (rows == 0 || cols == 0) return;
    dim3 grid(ceil_div(cols, FP8_BLOCK), ceil_div(rows, FP8_BLOCK));
    CHECK(grid.y <= 65535, "fp8_cast_block128x128: %d rows exceed the grid (65535 x 128)", rows);
    fp8_block128_kernel<<<grid, kThreads, 0, stream>>>(q, scale_inv, ld, x, rows, cols, transposed);
    CUDA_CHECK_LAST();
}

void mx_cast(uint8_t *q, uint8_t *e8m0, const bf16 *x, int rows, int cols, Fp8Dtype dt, MxMode mode, int transposed,
             cudaStream_t stream) {
    CHECK(rows >= 0 && cols >= 0, "mx_cast: bad shape %dx%d", rows, cols);
    if (rows == 0 || cols == 0) return;
    if (transposed) {
        dim3 grid(ceil_div(cols, 128), ceil_div(rows, MX_BLOCK));
        CHECK(grid.y <= 65535, "mx_cast: %d rows exceed the transposed grid (65535 x 32)", rows);
        mx_cast_t_kernel<<<grid, 128, 0, stream>>>(q, e8m0, x, rows, cols, dt, mode);
    } else {
        size_t groups = (size_t)rows * ceil_div(cols, MX_BLOCK);
        unsigned grid = (unsigned)ceil_div_sz(groups, kThreads);
        if (cols % MX_BLOCK == 0 && is_aligned16(x) && is_aligned16(q))
            mx_cast_kernel<true><<<grid, kThreads, 0, stream>>>(q, e8m0, x, rows, cols, dt, mode);
        else
            mx_cast_kernel<false><<<grid, kThreads, 0, stream>>>(q, e8m0, x, rows, cols, dt, mode);
    }
    CUDA_CHECK_LAST();
}

void fp8_cast_operand(uint8_t *q, float *scale_inv, uint8_t *e8m0, const bf16 *x, int rows, int cols, Fp8CastSpec spec,
                      float *amax_ws, cudaStream_t stream) {
    int ld = 0;
    fp8_scale_count(spec, rows, cols, &ld);
    switch (spec.scaling) {
        case FP8_SCALE_TENSOR:
            CHECK(amax_ws != NULL, "fp8_cast_operand: tensor scaling needs amax_ws");
            fp8_amax_tensor(amax_ws + FP8_AMAX_PARTIALS, amax_ws, x, (size_t)rows * cols, stream);
            fp8_cast(q, scale_inv, x, rows, cols, amax_ws + FP8_AMAX_PARTIALS, spec.dtype, spec.pow2, spec.transposed,
                     stream);
            break;
        case FP8_SCALE_AXIS:
            fp8_cast(q, scale_inv, x, rows, cols, NULL, spec.dtype, spec.pow2, spec.transposed, stream);
            break;
        case FP8_SCALE_1X128: fp8_cast_block1x128(q, scale_inv, x, rows, cols, spec.transposed, stream); break;
        case FP8_SCALE_128X128: fp8_cast_block128x128(q, scale_inv, ld, x, rows, cols, spec.transposed, stream); break;
        case FP8_SCALE_MX32:
            mx_cast(q, e8m0, x, rows, cols, spec.dtype, spec.mx_rceil ? MX_RCEIL : MX_FLOOR, spec.transposed, stream);
            break;
        default: FAIL("fp8_cast_operand: scaling %d is not a cast (a bf16 operand)", (int)spec.scaling);
    }
}
