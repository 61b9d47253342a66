// Hand-written causal GQA flash attention for bf16 on sm_80+ (tuned for H100).
// FlashAttention-2 (Dao 2023): forward tiles over queries with an online softmax; backward
// recomputes P from the saved lse. Tensor cores through mma.sync.m16n8k16 (bf16 in, fp32
// accumulate) fed by ldmatrix from padded shared memory. Layouts: ops/attention_impl.cuh.
//
// Backward is deterministic: no atomics anywhere.
//   1. D = rowsum(dO * O)                           one warp per (b, t, h) row
//   2. dK, dV: one CTA per (key tile, kv head, split) walks query tiles of the query heads of
//      its split in a fixed order and owns its dK/dV rows; with split > 1 each CTA writes fp32
//      partials that a last kernel sums in split order (only used when B*KV*T/BN CTAs would
//      not fill the GPU).
//   3. dQ: one CTA per query tile recomputes P and dP over the key tiles up to the diagonal and
//      owns its dQ rows.
// Only hd in {64, 128} (templates); ops/attention.cu holds the scalar fp32 path for any other
// even hd <= 128.
#include <math.h>
#include <stdint.h>

#include "attention_impl.cuh"

namespace {

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// ---- PTX wrappers ----------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16-byte async copy; pred = false zero-fills the destination (rows past T).
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
// c[16x8] += a[16x16] * b[16x8]. Fragments (g = lane/4, q = lane%4):
//   a: {(g, 2q..), (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..)}  b: {(k 2q.., n g), (k 2q+8.., n g)}
//   c: {(g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1)}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lower column) in the low half
    return *reinterpret_cast<uint32_t *>(&v);
}

// ---- warp-level tile products ------------------------------------------------------------
// A warp owns MT m-tiles of 16 rows: each B fragment read from shared memory feeds MT mmas,
// which halves shared-memory traffic per flop at MT = 2 (mma.sync is smem-bound at MT = 1).
// Shared tiles are row-major with a row stride of HD + 8 elements: the 16-byte pad moves
// consecutive rows 4 banks apart, so the 8 row addresses of one ldmatrix hit distinct banks.

// A fragments of the k-step k of a (16*MT) x (16*KS) block whose first row is at X.
template <int MT>
__device__ __forceinline__ void load_a_k(uint32_t (&a)[MT][4], const bf16 *X, int ld, int k, int lane) {
#pragma unroll
    for (int m = 0; m < MT; m++) ldsm_x4(a[m], X + (m * 16 + (lane & 15)) * ld + k * 16 + (lane >> 4) * 8);
}
template <int MT, int KS>
__device__ __forceinline__ void load_a(uint32_t (&a)[KS][MT][4], const bf16 *X, int ld, int lane) {
#pragma unroll
    for (int k = 0; k < KS; k++) load_a_k<MT>(a[k], X, ld, k, lane);
}
// B fragments of n-tiles n, n+1 at k-step k. Y row-major [n rows][k cols] (abt) or
// [k rows][n cols] (ab, transposed by ldmatrix.trans).
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const bf16 *Y, int ld, int n, int k, int lane) {
    ldsm_x4(b, Y + (n * 8 + (lane & 7) + ((lane >> 4) << 3)) * ld + k * 16 + ((lane >> 3) & 1) * 8);
}
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const bf16 *Y, int ld, int n, int k, int lane) {
    ldsm_x4_t(b, Y + (k * 16 + (lane & 15)) * ld + n * 8 + (lane >> 4) * 8);
}
template <int MT, int NT>
__device__ __forceinline__ void mma_k(float (&acc)[MT][NT][4], const uint32_t (&a)[MT][4], const uint32_t (&b)[4],
                                      int n) {
#pragma unroll
    for (int m = 0; m < MT; m++) {
        mma_bf16(acc[m][n], a[m], b[0], b[1]);
        mma_bf16(acc[m][n + 1], a[m], b[2], b[3]);
    }
}
// acc[16MT x 8NT] += A[16MT x 16KS] * Y^T, Y row-major [8NT][16KS] (S = Q K^T); A in registers.
template <int MT, int KS, int NT>
__device__ __forceinline__ void mma_abt(float (&acc)[MT][NT][4], const uint32_t (&a)[KS][MT][4], const bf16 *Y, int ld,
                                        int lane) {
#pragma unroll
    for (int k = 0; k < KS; k++)
#pragma unroll
        for (int n = 0; n < NT; n += 2) {
            uint32_t b[4];
            load_b_nk(b, Y, ld, n, k, lane);
            mma_k<MT, NT>(acc, a[k], b, n);
        }
}
// Same with A read from shared memory one k-step at a time (keeps registers for accumulators).
template <int MT, int KS, int NT>
__device__ __forceinline__ void mma_abt_s(float (&acc)[MT][NT][4], const bf16 *X, const bf16 *Y, int ld, int lane) {
#pragma unroll
    for (int k = 0; k < KS; k++) {
        uint32_t a[MT][4];
        load_a_k<MT>(a, X, ld, k, lane);
#pragma unroll
        for (int n = 0; n < NT; n += 2) {
            uint32_t b[4];
            load_b_nk(b, Y, ld, n, k, lane);
            mma_k<MT, NT>(acc, a, b, n);
        }
    }
}
// acc[16MT x 8NT] += A[16MT x 16KS] * Y, Y row-major [16KS][8NT] (O += P V); A in registers.
template <int MT, int KS, int NT>
__device__ __forceinline__ void mma_ab(float (&acc)[MT][NT][4], const uint32_t (&a)[KS][MT][4], const bf16 *Y, int ld,
                                       int lane) {
#pragma unroll
    for (int k = 0; k < KS; k++)
#pragma unroll
        for (int n = 0; n < NT; n += 2) {
            uint32_t b[4];
            load_b_kn(b, Y, ld, n, k, lane);
            mma_k<MT, NT>(acc, a[k], b, n);
        }
}
// An fp32 accumulator [16MT x 8NT] re-read as bf16 A fragments [16MT x 16(NT/2)]: the C layout
// of two adjacent n-tiles is exactly the A layout of one k-step.
template <int MT, int NT>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[NT / 2][MT][4], const float (&c)[MT][NT][4]) {
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int j = 0; j < NT / 2; j++) {
            a[j][m][0] = pack_bf16(c[m][2 * j][0], c[m][2 * j][1]);
            a[j][m][1] = pack_bf16(c[m][2 * j][2], c[m][2 * j][3]);
            a[j][m][2] = pack_bf16(c[m][2 * j + 1][0], c[m][2 * j + 1][1]);
            a[j][m][3] = pack_bf16(c[m][2 * j + 1][2], c[m][2 * j + 1][3]);
        }
}
template <int MT, int NT> __device__ __forceinline__ void zero(float (&c)[MT][NT][4]) {
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) c[m][n][0] = c[m][n][1] = c[m][n][2] = c[m][n][3] = 0.f;
}
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ROWS x HD tile of rows [r0, r0 + ROWS) of a [T, ld] bf16 matrix into shared (stride HD + 8).
template <int ROWS, int HD, int NTHR>
__device__ __forceinline__ void load_tile(bf16 *dst, const bf16 *src, int ld, int r0, int T, int tid) {
    constexpr int CPR = HD / 8;  // 16-byte chunks per row
#pragma unroll
    for (int i = tid; i < ROWS * CPR; i += NTHR) {
        int r = i / CPR, c = (i % CPR) * 8;
        bool ok = r0 + r < T;
        cp_async16(dst + r * (HD + 8) + c, ok ? src + (size_t)(r0 + r) * ld + c : src, ok);
    }
}

// Accumulator element (m, n, e) of a warp sits at row m*16 + g + 8*(e >= 2), column n*8 + 2*q4 + (e & 1).

// ---- forward -----------------------------------------------------------------------------
// CTA = WARPS warps x 16*MT query rows of one (b, h); loops over BN-key tiles up to the
// diagonal, K/V double-buffered with cp.async. Scores are kept in the log2 domain
// (x = s*scale*log2 e) so the softmax uses exp2; lse goes back to natural log on the way out.
// QREG: Q fragments stay in registers (hd 64) or are re-read from shared memory (hd 128).
template <int HD, int WARPS, int MT, int BN, bool QREG>
__global__ void __launch_bounds__(WARPS * 32)
    attention_forward_kernel(bf16 *out, float *lse, const bf16 *qkv, int T, int H, int KV, float scale_log2) {
    constexpr int WM = 16 * MT, BM = WM * WARPS, LD = HD + 8, KS = HD / 16, NTD = HD / 8, NTN = BN / 8;
    constexpr int NTHR = WARPS * 32;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sQ = (bf16 *)smem, *sK = sQ + BM * LD, *sV = sK + 2 * BN * LD;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q4 = lane % 4;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BM;  // heaviest (last) query tiles first
    const int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV), rs = (H + 2 * KV) * HD;
    const bf16 *gq = qkv + (size_t)b * T * rs + h * HD;
    const bf16 *gk = qkv + (size_t)b * T * rs + (H + kvh) * HD;
    const bf16 *gv = qkv + (size_t)b * T * rs + (H + KV + kvh) * HD;
    const int n_kt = (min(q0 + BM, T) + BN - 1) / BN;  // keys 0 .. min(last row, T-1)
    const int w0 = q0 + warp * WM;                     // first row of this warp

    load_tile<BM, HD, NTHR>(sQ, gq, rs, q0, T, tid);
    load_tile<BN, HD, NTHR>(sK, gk, rs, 0, T, tid);
    load_tile<BN, HD, NTHR>(sV, gv, rs, 0, T, tid);
    cp_async_commit();

    uint32_t qf[QREG ? KS : 1][MT][4];
    float o[MT][NTD][4];
    zero(o);
    float mrow[MT][2], lrow[MT][2];  // running max (log2 domain) and this thread's partial row sum
#pragma unroll
    for (int m = 0; m < MT; m++) mrow[m][0] = mrow[m][1] = -INFINITY, lrow[m][0] = lrow[m][1] = 0.f;

    for (int kt = 0; kt < n_kt; kt++) {
        const int st = kt & 1, k0 = kt * BN;
        if (kt + 1 < n_kt) {  // prefetch the next K/V tile into the other stage
            load_tile<BN, HD, NTHR>(sK + (st ^ 1) * BN * LD, gk, rs, k0 + BN, T, tid);
            load_tile<BN, HD, NTHR>(sV + (st ^ 1) * BN * LD, gv, rs, k0 + BN, T, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if constexpr (QREG)
            if (kt == 0) load_a<MT, KS>(qf, sQ + warp * WM * LD, LD, lane);
        if (k0 <= w0 + WM - 1) {  // else every key of the tile is after every row of the warp
            float s[MT][NTN][4];
            zero(s);
            if constexpr (QREG) mma_abt<MT, KS, NTN>(s, qf, sK + st * BN * LD, LD, lane);
            else mma_abt_s<MT, KS, NTN>(s, sQ + warp * WM * LD, sK + st * BN * LD, LD, lane);

            const bool diag = k0 + BN - 1 > w0;  // some key of the tile is after some row of the warp
            float al[MT][2], base[MT][2];
#pragma unroll
            for (int m = 0; m < MT; m++) {
                float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int n = 0; n < NTN; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float x = s[m][n][e] * scale_log2;
                        if (diag && k0 + n * 8 + 2 * q4 + (e & 1) > w0 + m * 16 + g + (e >> 1) * 8) x = -INFINITY;
                        s[m][n][e] = x;
                        mx[e >> 1] = fmaxf(mx[e >> 1], x);
                    }
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const float mn = fmaxf(mrow[m][hf], quad_max(mx[hf]));  // a quad shares a row
                    // A row with nothing visible yet keeps m = -inf: exponent base 0 keeps
                    // exp2(-inf - base) = 0 instead of NaN.
                    base[m][hf] = mn == -INFINITY ? 0.f : mn;
                    al[m][hf] = mrow[m][hf] == -INFINITY ? 0.f : exp2f(mrow[m][hf] - mn);
                    mrow[m][hf] = mn;
                }
                float ps[2] = {0.f, 0.f};
#pragma unroll
                for (int n = 0; n < NTN; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        s[m][n][e] = exp2f(s[m][n][e] - base[m][e >> 1]);
                        ps[e >> 1] += s[m][n][e];
                    }
#pragma unroll
                for (int hf = 0; hf < 2; hf++) lrow[m][hf] = lrow[m][hf] * al[m][hf] + ps[hf];
#pragma unroll
                for (int n = 0; n < NTD; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) o[m][n][e] *= al[m][e >> 1];
            }
            uint32_t pa[NTN / 2][MT][4];
            acc_to_a<MT, NTN>(pa, s);
            mma_ab<MT, NTN / 2, NTD>(o, pa, sV + st * BN * LD, LD, lane);
        }
        __syncthreads();  // the next iteration's prefetch overwrites this stage
    }

    const int ldo = H * HD;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const float l = quad_sum(lrow[m][hf]), inv = 1.f / l;  // l >= 1: key 0 is always visible
            const int row = w0 + m * 16 + g + hf * 8;
            if (row >= T) continue;
            bf16 *dst = out + ((size_t)b * T + row) * ldo + h * HD + 2 * q4;
#pragma unroll
            for (int n = 0; n < NTD; n++)
                *(__nv_bfloat162 *)(dst + n * 8) =
                    __floats2bfloat162_rn(o[m][n][2 * hf] * inv, o[m][n][2 * hf + 1] * inv);
            if (q4 == 0) lse[((size_t)b * H + h) * T + row] = (mrow[m][hf] + log2f(l)) * LN2;
        }
}

// ---- backward: D = rowsum(dO * O) ------------------------------------------------------------
// One warp per (b, t, h) row; D[(b*H + h)*T + t].
__global__ void attention_backward_d_kernel(float *D, const bf16 *dout, const bf16 *out, int B, int T, int H, int hd) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= B * T * H) return;
    const bf16 *a = dout + (size_t)row * hd, *o = out + (size_t)row * hd;
    float s = 0.f;
    for (int d = 2 * lane; d < hd; d += 64) {
        float2 x = __bfloat1622float2(*(const __nv_bfloat162 *)(a + d));
        float2 y = __bfloat1622float2(*(const __nv_bfloat162 *)(o + d));
        s += x.x * y.x + x.y * y.y;
    }
#pragma unroll
    for (int k = 16; k; k >>= 1) s += __shfl_xor_sync(0xffffffffu, s, k);
    if (lane == 0) {
        const int h = row % H, t = (row / H) % T, b = row / (H * T);
        D[((size_t)b * H + h) * T + t] = s;
    }
}

// ---- backward: dK, dV ------------------------------------------------------------------------
// CTA = WARPS warps x 16*MT key rows of one (b, kv head), for the query heads
// [kvh*group + split*hps, + hps). Works on transposed scores (rows = keys):
//   S^T = K Q^T, P^T = exp2(S^T*scale*log2e - lse2), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T (dP^T - D), dK += dS^T Q  (scale applied at the end).
// Q/dO/lse/D tiles of BM queries are double-buffered; K and V fragments are re-read from
// shared memory at each use to keep the dK/dV accumulators resident.
// Padded query rows (>= T) get lse = +inf and D = 0, hence P = dS = 0.
template <int HD, int WARPS, int MT, int BM>
__global__ void __launch_bounds__(WARPS * 32)
    attention_backward_dkdv_kernel(bf16 *dqkv, float *part, const bf16 *dout, const bf16 *qkv, const float *lse,
                                   const float *D, int T, int H, int KV, int hps, float scale_log2, float scale) {
    constexpr int WN = 16 * MT, BN = WN * WARPS, LD = HD + 8, KS = HD / 16, NTD = HD / 8, NTQ = BM / 8;
    constexpr int NTHR = WARPS * 32;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sK = (bf16 *)smem, *sV = sK + BN * LD, *sQ = sV + BN * LD, *sO = sQ + 2 * BM * LD;
    float *sL = (float *)(sO + 2 * BM * LD), *sD = sL + 2 * BM;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q4 = lane % 4;
    const int k0 = blockIdx.x * BN, group = H / KV, splits = group / hps;
    const int kvh = blockIdx.y / splits, split = blockIdx.y % splits, b = blockIdx.z;
    const int rs = (H + 2 * KV) * HD, h0 = kvh * group + split * hps;
    const bf16 *base = qkv + (size_t)b * T * rs;
    const int qt0 = k0 / BM, n_qt = (T + BM - 1) / BM - qt0, n_it = hps * n_qt;
    const int w0 = k0 + warp * WN;  // first key of this warp

    // Stage the inputs of iteration `it` (head h0 + it / n_qt, query tile qt0 + it % n_qt).
    auto load_it = [&](int it, int st) {
        const int h = h0 + it / n_qt, r0 = (qt0 + it % n_qt) * BM;
        load_tile<BM, HD, NTHR>(sQ + st * BM * LD, base + h * HD, rs, r0, T, tid);
        load_tile<BM, HD, NTHR>(sO + st * BM * LD, dout + (size_t)b * T * H * HD + h * HD, H * HD, r0, T, tid);
        for (int i = tid; i < BM; i += NTHR) {
            const size_t at = ((size_t)b * H + h) * T + r0 + i;
            const bool ok = r0 + i < T;
            sL[st * BM + i] = ok ? lse[at] * LOG2E : INFINITY;
            sD[st * BM + i] = ok ? D[at] : 0.f;
        }
    };
    load_tile<BN, HD, NTHR>(sK, base + (H + kvh) * HD, rs, k0, T, tid);
    load_tile<BN, HD, NTHR>(sV, base + (H + KV + kvh) * HD, rs, k0, T, tid);
    load_it(0, 0);
    cp_async_commit();

    float dk[MT][NTD][4], dv[MT][NTD][4];
    zero(dk);
    zero(dv);
    for (int it = 0; it < n_it; it++) {
        const int st = it & 1, r0 = (qt0 + it % n_qt) * BM;
        if (it + 1 < n_it) {
            load_it(it + 1, st ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (r0 + BM - 1 >= w0) {  // else every query of the tile precedes every key of the warp
            const bf16 *Q = sQ + st * BM * LD, *dO = sO + st * BM * LD;
            const float *L = sL + st * BM, *Dd = sD + st * BM;
            float s[MT][NTQ][4];
            zero(s);
            mma_abt_s<MT, KS, NTQ>(s, sK + warp * WN * LD, Q, LD, lane);
            const bool diag = r0 < w0 + WN - 1;  // some query of the tile precedes some key of the warp
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int n = 0; n < NTQ; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int qc = n * 8 + 2 * q4 + (e & 1);
                        float p = exp2f(s[m][n][e] * scale_log2 - L[qc]);
                        if (diag && r0 + qc < w0 + m * 16 + g + (e >> 1) * 8) p = 0.f;
                        s[m][n][e] = p;
                    }
            uint32_t pa[NTQ / 2][MT][4];
            acc_to_a<MT, NTQ>(pa, s);
            mma_ab<MT, NTQ / 2, NTD>(dv, pa, dO, LD, lane);

            float dp[MT][NTQ][4];
            zero(dp);
            mma_abt_s<MT, KS, NTQ>(dp, sV + warp * WN * LD, dO, LD, lane);
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int n = 0; n < NTQ; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        dp[m][n][e] = s[m][n][e] * (dp[m][n][e] - Dd[n * 8 + 2 * q4 + (e & 1)]);
            acc_to_a<MT, NTQ>(pa, dp);
            mma_ab<MT, NTQ / 2, NTD>(dk, pa, Q, LD, lane);
        }
        __syncthreads();  // the next prefetch overwrites this stage
    }

    const int kvw = KV * HD;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int key = w0 + m * 16 + g + hf * 8;
            if (key >= T) continue;
#pragma unroll
            for (int n = 0; n < NTD; n++) {
                const int c = kvh * HD + n * 8 + 2 * q4;
                const float k0v = dk[m][n][2 * hf] * scale, k1v = dk[m][n][2 * hf + 1] * scale;
                const float v0v = dv[m][n][2 * hf], v1v = dv[m][n][2 * hf + 1];
                if (splits == 1) {
                    bf16 *row = dqkv + ((size_t)b * T + key) * rs;
                    *(__nv_bfloat162 *)(row + H * HD + c) = __floats2bfloat162_rn(k0v, k1v);
                    *(__nv_bfloat162 *)(row + (H + KV) * HD + c) = __floats2bfloat162_rn(v0v, v1v);
                } else {  // part [splits][2][B*T][KV*HD]
                    const size_t plane = (size_t)gridDim.z * T * kvw;
                    float *pk = part + (size_t)split * 2 * plane + ((size_t)b * T + key) * kvw + c;
                    *(float2 *)pk = make_float2(k0v, k1v);
                    *(float2 *)(pk + plane) = make_float2(v0v, v1v);
                }
            }
        }
}

// Sums the per-split dK/dV partials in split order (deterministic) into dqkv.
__global__ void attention_backward_reduce_kernel(bf16 *dqkv, const float *part, int splits, int B, int T, int H, int KV,
                                                 int hd) {
    const size_t kvw = (size_t)KV * hd, plane = (size_t)B * T * kvw;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    float sk = 0.f, sv = 0.f;
    for (int s = 0; s < splits; s++) {
        sk += part[(size_t)s * 2 * plane + i];
        sv += part[(size_t)s * 2 * plane + plane + i];
    }
    bf16 *row = dqkv + (i / kvw) * (size_t)(H + 2 * KV) * hd;
    row[H * hd + i % kvw] = __float2bfloat16(sk);
    row[(H + KV) * hd + i % kvw] = __float2bfloat16(sv);
}

// ---- backward: dQ ----------------------------------------------------------------------------
// CTA = WARPS warps x 16*MT query rows of one (b, h), loops over key tiles up to the diagonal:
//   S = Q K^T, P = exp2(S*scale*log2e - lse2), dP = dO V^T, dS = P (dP - D), dQ += dS K.
// Q and dO fragments are re-read from shared memory at each use (registers go to dQ).
template <int HD, int WARPS, int MT, int BN>
__global__ void __launch_bounds__(WARPS * 32)
    attention_backward_dq_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse, const float *D,
                                 int T, int H, int KV, float scale_log2, float scale) {
    constexpr int WM = 16 * MT, BM = WM * WARPS, LD = HD + 8, KS = HD / 16, NTD = HD / 8, NTN = BN / 8;
    constexpr int NTHR = WARPS * 32;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sQ = (bf16 *)smem, *sO = sQ + BM * LD, *sK = sO + BM * LD, *sV = sK + 2 * BN * LD;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q4 = lane % 4;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV), rs = (H + 2 * KV) * HD;
    const bf16 *base = qkv + (size_t)b * T * rs;
    const bf16 *gk = base + (H + kvh) * HD, *gv = base + (H + KV + kvh) * HD;
    const int n_kt = (min(q0 + BM, T) + BN - 1) / BN;
    const int w0 = q0 + warp * WM;

    load_tile<BM, HD, NTHR>(sQ, base + h * HD, rs, q0, T, tid);
    load_tile<BM, HD, NTHR>(sO, dout + (size_t)b * T * H * HD + h * HD, H * HD, q0, T, tid);
    load_tile<BN, HD, NTHR>(sK, gk, rs, 0, T, tid);
    load_tile<BN, HD, NTHR>(sV, gv, rs, 0, T, tid);
    cp_async_commit();

    float lr[MT][2], dr[MT][2];  // lse (log2 domain) and D of this thread's rows; padded rows: P = 0
    const float *Lr = lse + ((size_t)b * H + h) * T, *Dr = D + ((size_t)b * H + h) * T;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int row = w0 + m * 16 + g + hf * 8;
            lr[m][hf] = row < T ? Lr[row] * LOG2E : INFINITY;
            dr[m][hf] = row < T ? Dr[row] : 0.f;
        }
    float dq[MT][NTD][4];
    zero(dq);

    for (int kt = 0; kt < n_kt; kt++) {
        const int st = kt & 1, k0 = kt * BN;
        if (kt + 1 < n_kt) {
            load_tile<BN, HD, NTHR>(sK + (st ^ 1) * BN * LD, gk, rs, k0 + BN, T, tid);
            load_tile<BN, HD, NTHR>(sV + (st ^ 1) * BN * LD, gv, rs, k0 + BN, T, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (k0 <= w0 + WM - 1) {
            const bf16 *K = sK + st * BN * LD, *V = sV + st * BN * LD;
            float s[MT][NTN][4];
            zero(s);
            mma_abt_s<MT, KS, NTN>(s, sQ + warp * WM * LD, K, LD, lane);
            const bool diag = k0 + BN - 1 > w0;
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int n = 0; n < NTN; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float p = exp2f(s[m][n][e] * scale_log2 - lr[m][e >> 1]);
                        if (diag && k0 + n * 8 + 2 * q4 + (e & 1) > w0 + m * 16 + g + (e >> 1) * 8) p = 0.f;
                        s[m][n][e] = p;
                    }
            float dp[MT][NTN][4];
            zero(dp);
            mma_abt_s<MT, KS, NTN>(dp, sO + warp * WM * LD, V, LD, lane);
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int n = 0; n < NTN; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) dp[m][n][e] = s[m][n][e] * (dp[m][n][e] - dr[m][e >> 1]);
            uint32_t da[NTN / 2][MT][4];
            acc_to_a<MT, NTN>(da, dp);
            mma_ab<MT, NTN / 2, NTD>(dq, da, K, LD, lane);
        }
        __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int row = w0 + m * 16 + g + hf * 8;
            if (row >= T) continue;
            bf16 *dst = dqkv + ((size_t)b * T + row) * rs + h * HD + 2 * q4;
#pragma unroll
            for (int n = 0; n < NTD; n++)
                *(__nv_bfloat162 *)(dst + n * 8) =
                    __floats2bfloat162_rn(dq[m][n][2 * hf] * scale, dq[m][n][2 * hf + 1] * scale);
        }
}

// ---- launch configuration ----------------------------------------------------------------------
// Per head dim: warps per CTA, m-tiles per warp (MT), the streamed tile length, and whether
// forward keeps Q in registers. Chosen so that no kernel spills (check `-Xptxas -v`).
template <int HD> struct Cfg;
#ifdef ATTENTION_KERNEL_CFG_FILE  // tile-choice experiments (dev/) substitute their own table
#include ATTENTION_KERNEL_CFG_FILE
#else
template <> struct Cfg<64> {
    static constexpr int FWD_W = 4, FWD_MT = 2, FWD_BN = 64, KV_W = 4, KV_MT = 2, KV_BM = 32, DQ_W = 4, DQ_MT = 2,
                         DQ_BN = 32;
    static constexpr bool FWD_QREG = true;
};
template <> struct Cfg<128> {
    static constexpr int FWD_W = 4, FWD_MT = 2, FWD_BN = 32, KV_W = 4, KV_MT = 1, KV_BM = 32, DQ_W = 4, DQ_MT = 1,
                         DQ_BN = 32;
    static constexpr bool FWD_QREG = false;
};
#endif

// Raises a kernel's dynamic shared-memory limit (needed above 48 KiB). Set at every launch:
// the attribute is per device, and a host call of a microsecond is noise next to the kernel.
template <typename K> static void set_smem(K kernel, size_t bytes) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int HD> static void forward_mma(GpuCtx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H,
                                          int KV, float scale_log2) {
    typedef Cfg<HD> C;
    constexpr int BM = 16 * C::FWD_MT * C::FWD_W, BN = C::FWD_BN;
    constexpr size_t smem = (size_t)(BM + 4 * BN) * (HD + 8) * sizeof(bf16);
    auto kernel = attention_forward_kernel<HD, C::FWD_W, C::FWD_MT, BN, C::FWD_QREG>;
    set_smem(kernel, smem);
    dim3 grid(ceil_div(T, BM), H, B);
    kernel<<<grid, C::FWD_W * 32, smem, ctx->stream>>>(out, lse, qkv, T, H, KV, scale_log2);
    CUDA_CHECK_LAST();
}

// Splits of the query heads of a group for the dK/dV pass: the smallest divisor of group
// that gives >= 2 CTAs per SM, or the whole group, when B*KV*T/BN CTAs would not fill the GPU.
static int pick_splits(const GpuCtx *ctx, int ctas, int group) {
    const int want = 2 * ctx->prop.multiProcessorCount;
    if (ctas >= want) return 1;
    for (int s = 2; s <= group; s++)
        if (group % s == 0 && (ctas * s >= want || s == group)) return s;
    return 1;
}

// Workspace: D [B*H*T] fp32, then (splits > 1) the dK/dV partials [splits][2][B*T][KV*HD] fp32.
template <int HD>
static void backward_mma(GpuCtx *ctx, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                         const float *lse, int B, int T, int H, int KV, float scale_log2, float scale) {
    typedef Cfg<HD> C;
    constexpr int KBN = 16 * C::KV_MT * C::KV_W, KBM = C::KV_BM;
    const int splits = pick_splits(ctx, ceil_div(T, KBN) * KV * B, H / KV);
    const size_t d_bytes = ((size_t)B * H * T * sizeof(float) + 255) / 256 * 256;
    const size_t part_bytes = splits > 1 ? (size_t)splits * 2 * B * T * KV * HD * sizeof(float) : 0;
    gpu_ctx_cudnn_workspace(ctx, d_bytes + part_bytes);
    float *D = (float *)ctx->cudnn_workspace, *part = (float *)((char *)ctx->cudnn_workspace + d_bytes);

    attention_backward_d(ctx, D, dout, out, B, T, H, HD);
    {
        constexpr size_t smem = (size_t)(2 * KBN + 4 * KBM) * (HD + 8) * sizeof(bf16) + 4 * KBM * sizeof(float);
        auto kernel = attention_backward_dkdv_kernel<HD, C::KV_W, C::KV_MT, KBM>;
        set_smem(kernel, smem);
        dim3 grid(ceil_div(T, KBN), KV * splits, B);
        kernel<<<grid, C::KV_W * 32, smem, ctx->stream>>>(dqkv, part, dout, qkv, lse, D, T, H, KV, (H / KV) / splits,
                                                          scale_log2, scale);
        CUDA_CHECK_LAST();
    }
    {
        constexpr int BM = 16 * C::DQ_MT * C::DQ_W, BN = C::DQ_BN;
        constexpr size_t smem = (size_t)(2 * BM + 4 * BN) * (HD + 8) * sizeof(bf16);
        auto kernel = attention_backward_dq_kernel<HD, C::DQ_W, C::DQ_MT, BN>;
        set_smem(kernel, smem);
        dim3 grid(ceil_div(T, BM), H, B);
        kernel<<<grid, C::DQ_W * 32, smem, ctx->stream>>>(dqkv, dout, qkv, lse, D, T, H, KV, scale_log2, scale);
        CUDA_CHECK_LAST();
    }
    if (splits > 1) {
        const size_t n = (size_t)B * T * KV * HD;
        attention_backward_reduce_kernel<<<(unsigned)ceil_div_sz(n, 256), 256, 0, ctx->stream>>>(dqkv, part, splits, B,
                                                                                                 T, H, KV, HD);
        CUDA_CHECK_LAST();
    }
}

}  // namespace

void attention_backward_d(GpuCtx *ctx, float *D, const bf16 *dout, const bf16 *out, int B, int T, int H, int hd) {
    attention_backward_d_kernel<<<ceil_div(B * T * H, 8), 256, 0, ctx->stream>>>(D, dout, out, B, T, H, hd);
    CUDA_CHECK_LAST();
}

// The mma kernels read 16-byte chunks of q/k/v/dO rows (row and head offsets are multiples
// of 16 bytes since hd % 8 == 0): the bases must be 16-byte aligned, out 4-byte aligned.
static bool aligned(const void *p, uintptr_t a) { return ((uintptr_t)p % a) == 0; }

int attention_forward_mma(GpuCtx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H, int KV, int hd) {
    const float scale_log2 = (float)(1.0 / sqrt((double)hd)) * LOG2E;
    if (!aligned(qkv, 16) || !aligned(out, 4)) return 0;
    if (hd == 64) return forward_mma<64>(ctx, out, lse, qkv, B, T, H, KV, scale_log2), 1;
    if (hd == 128) return forward_mma<128>(ctx, out, lse, qkv, B, T, H, KV, scale_log2), 1;
    return 0;
}

int attention_backward_mma(GpuCtx *ctx, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                           const float *lse, int B, int T, int H, int KV, int hd) {
    const float scale = (float)(1.0 / sqrt((double)hd)), scale_log2 = scale * LOG2E;
    if (!aligned(qkv, 16) || !aligned(dout, 16) || !aligned(dqkv, 16) || !aligned(out, 4)) return 0;
    if (hd == 64) return backward_mma<64>(ctx, dqkv, dout, qkv, out, lse, B, T, H, KV, scale_log2, scale), 1;
    if (hd == 128) return backward_mma<128>(ctx, dqkv, dout, qkv, out, lse, B, T, H, KV, scale_log2, scale), 1;
    return 0;
}
