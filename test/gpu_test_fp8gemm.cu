// fp8 GEMMs (ops/matmul_fp8.cu) on the GPU.
//
// 1. Synthetic operands against a dequantized reference: random fp8 codes with random scales
//    spread over 2^-6..2^7 (so that a scale read from the wrong row / block / layout is a gross
//    error), padding entries of 128x128 scale matrices set to NaN (so that reading one shows), for
//    every scaling mode x each GEMM of a Linear (forward, grad_input, grad_weight) x output variants
//    (fast accumulation, strided output, beta = 1 accumulation in bf16 and fp32). The reference
//    decodes the codes, multiplies by the scales and sums in float64 on the GPU.
//    Tolerance per element: the bound of how cuBLASLt computes (tensor-core partial sums promoted
//    to fp32, then the epilogue's roundings), derived next to check_out below:
//        beta = 0:  |got - ref| <= u |ref| + (1 + u) A
//        beta = 1:  |got - (old + ref)| <= D + (u + 2^-24 + u 2^-24) (|old + ref| + D),
//                   D = u |ref| + (1 + u) A     (the product is rounded before old is added)
//    u = the output's unit roundoff (bf16 2^-8, fp32 2^-24), A = r_acc * sum_k |p_k q_k| + the
//    fp32 promotion; r_acc = 2^-11 (tensor-core accumulation, promoted every 128-long k block) or
//    2^-9 with fast accumulation. A wrong scale, layout or transposition errs by O(|ref|) or by
//    whole blocks and fails.
// 2. Refusals: unsupported shapes, layouts, dtypes and mode mixes fail with the constraint named.
// 3. End to end: bf16 x, W, g -> the fp8_cast kernels with each recipe's specs (fp8_recipe_cast)
//    -> the three fp8 GEMMs, against the bf16 GEMMs of ops/matmul.cu on the same bf16 inputs.
//    Bound on the relative Frobenius error ||fp8 - bf16|| / ||bf16||: one e4m3 rounding has a
//    relative error of at most 2^-4 (RMS ~2^-4/sqrt(3) = 0.036 for uniformly spread mantissas),
//    e5m2 2^-3 (RMS 0.072); a product of two rounded operands ~ sqrt(sum of squares); errors of
//    the K products are independent, so the relative error of the sum is about that RMS:
//    e4m3 x e4m3 ~0.05, e5m2 x e4m3 ~0.08. Bounds 2x that: 0.10 and 0.16 (loose; a wrong scale
//    gives O(1)). The measured values are printed.
// 4. Casts at training row counts, bit for bit against the CPU reference (codes and scale_inv):
//    gpu_test_fp8 checks every cast kernel up to 1024 rows; the transposed axis cast splits a
//    column over a cluster of up to 8 CTAs of 512 rows and walks longer shares twice, which only
//    row counts past 4096 reach (8192 tokens: the x^T and g^T of every grad_weight GEMM).
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <functional>

#include "gpu_test.cuh"
#include "../ops/matmul.cuh"
#include "../ops/matmul_fp8.cuh"
#include "../quant/fp8_cast.cuh"
extern "C" {
#include "test.h"
}

static uint64_t g_rng = 0xF8E4A5ull;
static GpuCtx g_ctx;

// Unit roundoffs (round to nearest): |rnd(v) - v| <= u |v|. bf16 has 8 significant bits, so
// u = 2^-8 (half an ulp is 2^-8 of a value at the bottom of its binade, 2^-9 at the top).
#define U_BF16 0x1p-8
#define U_F32 0x1p-24
// Accumulation error per unit of sum_k |p_k q_k| (derivation at check_out).
#define R_ACC 0x1p-11
#define R_ACC_FAST 0x1p-9
#define E2E_TOL_E4M3 0.10
#define E2E_TOL_E5M2 0.16

enum { G_FWD = 0, G_DINP = 1, G_DW = 2 };
static const char *gemm_name(int g) { return g == G_FWD ? "forward" : g == G_DINP ? "grad_input" : "grad_weight"; }


// ---------------------------------------------------------------- synthetic operands
typedef struct {
    int rows, kd, ld;  // ld: 128x128 scale row stride
    Fp8Dtype dt;
    Fp8Scaling sc;
    uint8_t *q;  // device
    float *s;    // device
    size_t ns;
} TMat;

static int blk_ld(int kd) { return (ceil_div(kd, 128) + 3) / 4 * 4; }

static size_t scale_count(Fp8Scaling sc, int rows, int kd) {
    switch (sc) {
        case FP8_SCALE_TENSOR: return 1;
        case FP8_SCALE_AXIS: return (size_t)rows;
        case FP8_SCALE_1X128: return (size_t)rows * ceil_div(kd, 128);
        case FP8_SCALE_128X128: return (size_t)blk_ld(kd) * ceil_div(rows, 128);
        default: return 0;
    }
}

// Random finite codes (values uniform in +-4 before rounding: subnormals and both signs included)
// and positive scales (1 .. 1.5) * 2^(-6 .. 7); 128x128 padding entries NaN.
static TMat make_tmat(int rows, int kd, Fp8Dtype dt, Fp8Scaling sc) {
    TMat m;
    m.rows = rows, m.kd = kd, m.dt = dt, m.sc = sc, m.ld = sc == FP8_SCALE_128X128 ? blk_ld(kd) : 0;
    size_t n = (size_t)rows * kd;
    uint8_t *hq = (uint8_t *)ao_malloc(n);
    for (size_t i = 0; i < n; i++) hq[i] = fp8_saturate_cast(4.0f * test_rand_uniform(&g_rng), dt);
    m.ns = scale_count(sc, rows, kd);
    float *hs = (float *)ao_malloc(m.ns * sizeof(float) + 4);
    for (size_t i = 0; i < m.ns; i++) {
        int e = (int)((test_rand_uniform(&g_rng) + 1.0f) * 7.0f) - 6;  // -6 .. 7
        hs[i] = ldexpf(1.0f + 0.25f * (test_rand_uniform(&g_rng) + 1.0f), e);
    }
    if (sc == FP8_SCALE_128X128)
        for (int rb = 0; rb < ceil_div(rows, 128); rb++)
            for (int cb = ceil_div(kd, 128); cb < m.ld; cb++) hs[(size_t)rb * m.ld + cb] = NAN;
    m.q = dalloc<uint8_t>(n), m.s = dalloc<float>(m.ns);
    h2d(m.q, hq, n), h2d(m.s, hs, m.ns * sizeof(float));
    free(hq), free(hs);
    return m;
}
static Fp8Mat as_mat(const TMat &t) {
    Fp8Mat m;
    m.q = t.q, m.scale_inv = t.s, m.dtype = t.dt, m.scaling = t.sc, m.scale_ld = t.ld;
    return m;
}
static void free_tmat(TMat &t) { cudaFree(t.q), cudaFree(t.s); }

// ---------------------------------------------------------------- reference (float64)
struct RefMat {
    const uint8_t *q;
    const float *s;
    int rows, kd, ld, dt, sc;
};
__device__ float ref_scale(const RefMat &m, int r, int k) {
    switch (m.sc) {
        case FP8_SCALE_TENSOR: return m.s[0];
        case FP8_SCALE_AXIS: return m.s[r];
        case FP8_SCALE_1X128: return m.s[(size_t)(k / 128) * m.rows + r];
        default: return m.s[(size_t)(r / 128) * m.ld + k / 128];
    }
}
__global__ void ref_dequant_kernel(double *out, RefMat m) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)m.rows * m.kd) return;
    int r = (int)(i / m.kd), k = (int)(i % m.kd);
    out[i] = (double)fp8_to_f32(m.q[i], (Fp8Dtype)m.dt) * (double)ref_scale(m, r, k);
}
#define RT 16
// ref[i, j] = sum_k P[i, k] Q[j, k], absum[i, j] = sum_k |P[i, k] Q[j, k]|.
__global__ void ref_gemm_kernel(double *ref, double *absum, const double *P, const double *Q, int rp, int rq, int kd) {
    __shared__ double sp[RT][RT + 1], sq[RT][RT + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i = blockIdx.y * RT + ty, j = blockIdx.x * RT + tx;
    double acc = 0.0, ab = 0.0;
    for (int k0 = 0; k0 < kd; k0 += RT) {
        int pr = blockIdx.y * RT + ty, qr = blockIdx.x * RT + ty, c = k0 + tx;
        sp[ty][tx] = (pr < rp && c < kd) ? P[(size_t)pr * kd + c] : 0.0;
        sq[ty][tx] = (qr < rq && c < kd) ? Q[(size_t)qr * kd + c] : 0.0;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < RT; kk++) {
            double v = sp[ty][kk] * sq[tx][kk];
            acc += v, ab += fabs(v);
        }
        __syncthreads();
    }
    if (i < rp && j < rq) ref[(size_t)i * rq + j] = acc, absum[(size_t)i * rq + j] = ab;
}

static double *dequant(const TMat &t) {
    RefMat m = {t.q, t.s, t.rows, t.kd, t.ld, (int)t.dt, (int)t.sc};
    size_t n = (size_t)t.rows * t.kd;
    double *d = dalloc<double>(n);
    ref_dequant_kernel<<<(unsigned)ceil_div_sz(n, 256), 256, 0, g_s>>>(d, m);
    CUDA_CHECK_LAST();
    return d;
}
// Host arrays ref and absum [rp, rq].
static void reference(double *ref, double *absum, const TMat &p, const TMat &q) {
    int rp = p.rows, rq = q.rows, kd = p.kd;
    double *dp = dequant(p), *dq = dequant(q), *dr = dalloc<double>((size_t)rp * rq), *da = dalloc<double>((size_t)rp * rq);
    ref_gemm_kernel<<<dim3(ceil_div(rq, RT), ceil_div(rp, RT)), dim3(RT, RT), 0, g_s>>>(dr, da, dp, dq, rp, rq, kd);
    CUDA_CHECK_LAST();
    d2h(ref, dr, (size_t)rp * rq * sizeof(double)), d2h(absum, da, (size_t)rp * rq * sizeof(double));
    cudaFree(dp), cudaFree(dq), cudaFree(dr), cudaFree(da);
}

// ---------------------------------------------------------------- checking one output
// The bound, from how the GEMM computes one output element.
//
// Accumulation, |a - ref| <= A. Hopper's fp8 tensor cores add products into an accumulator that
// keeps 13 fraction bits and truncates (e8m13: Khattak & Mikaitis, "Accurate models of NVIDIA
// tensor cores", arXiv 2512.07004; DeepSeek-V3 section 3.3.2, "around 14 bits"). Without fast
// accumulation cuBLASLt promotes the partial sum to fp32 every 128-long k block (block scaling:
// by construction, each block has its own scales; tensor / axis scaling: at least as often, their
// measured errors are no larger). Within a block every added product is cut at
// the 13th fraction bit of the running sum, an error below one unit there, of the sign opposite
// to the product's: a sum of ~128 independent errors, uniform in (-ulp, ulp), std ulp sqrt(n / 3).
// For this test's operands (codes uniform in +-4: |p q| averages 4, rms 16/3) a 128-block has
// sum |p q| ~ 512 while its running sum stays ~ 16/3 sqrt(128) ~ 60, so ulp = 2^(5 - 13) and the
// error's std is 2^-8 sqrt(128 / 3) = 0.026, i.e. 2^-14.3 of the block's sum |p q| (a ratio that
// does not depend on the block length: the running sum grows as sqrt(n), the error as ulp sqrt(n)). The
// ratio is largest where one block carries an output's whole sum |p q|: blockwise with per-block
// random scales (2^-6..2^7 on each side) does that. The largest of N Gaussian samples is about
// sqrt(2 ln 2N) std: 5.65 std = 2^-11.8 for the 4.2M outputs of the 256x4096x1024 cases. The first
// H200 run measured exactly that: blockwise grad_weight 256x4096x1024 (1x128 x 1x128, a 256-long
// reduction = 2 k blocks) reached |err| = 2.55e-4 sum|p q| = 2^-11.94 (element (546, 3721), the
// same in the beta = 0 and beta = 1 calls, whose outputs differ by exactly the bf16 old value),
// with a scale-free difference 5.85e-9 like rowwise at that shape (5.80e-9): accumulation noise,
// not a wrong scale (that errs by ~|ref| = 54, 1000x more). The same shape in tensorwise / rowwise,
// whose two k blocks weigh the same (their errors average), stayed at 0.43-0.53 x 2^-12. So the
// first r_acc = 2^-12 ("~2^-13 per block, x2") was the expected maximum, not a bound; r_acc = 2^-11
// is 9.8 std of the model (a per-element chance below 1e-21), 2x the measured maximum, and still
// ~1/100 of |ref| for a typical output (|ref| ~ sum |p q| / sqrt(k)): a wrong scale errs by O(|ref|).
// Fast accumulation keeps the whole k range in the tensor core: r_acc = 2^-9 (measured maxima are
// printed). Promotion adds, per block, the fp32 product of the two scales, the scaling of the
// block sum and its addition into the fp32 accumulator: (ceil(kd / 128) + 2) 2^-24 sum |p q| more.
//
// Epilogue, u the output's unit roundoff:
//   beta = 0:  got = rnd(a):  |got - ref| <= u |a| + A <= u |ref| + (1 + u) A.
//   beta = 1:  got = rnd(fl32(rnd(a) + old)): the GEMM result is rounded to the output type before
//              old is added. The first H200 run shows it: blockwise grad_input 44x256x160 accumulate
//              returned exactly 0 for old + ref = 2.0e-4 (sum|p q| 0.249, so A < 1.3e-4): one
//              rounding of a + old cannot give 0, rnd(a) = -old can. So, with old as stored (exact:
//              its own rounding happened when it was written) and want = old + ref:
//                t = rnd(a)           |t - ref| <= u |ref| + (1 + u) A = D
//                s = fl32(t + old)    |s - (t + old)| <= 2^-24 |t + old| <= 2^-24 (|want| + D)
//                got = rnd(s)         |got - s| <= u |s| <= u (1 + 2^-24) (|want| + D)
//              |got - want| <= D + (u + 2^-24 + u 2^-24) (|want| + D)
//              i.e. ~ 2^-8 |ref| + 2^-8 |old + ref| + A for bf16: the first bound's single
//              2^-8 |old + ref| missed the rounding of the product (failures at 1.2-3.3x, largest
//              where old and ref cancel). For fp32 outputs rnd(a) = a and the bound is ~ A.
// got / c0 host floats [rp, ldo] (c0: the output's contents before a beta = 1 call, or NULL).
// Returns the worst err/bound ratio; prints the DeepGEMM-style scale-free difference too.
static double check_out(const char *what, const float *got, const float *c0, const double *ref, const double *absum,
                        int rp, int rq, int ldo, int kd, Fp8OutType ot, double r_acc, double *diff_out) {
    const double u = ot == FP8_OUT_F32 ? U_F32 : U_BF16, ra = r_acc + (ceil_div(kd, 128) + 2) * U_F32;
    double worst = 0.0, sxy = 0.0, sxx = 0.0;
    size_t wi = 0;
    double wg = 0, wr = 0, wb = 0, wa = 0, wo = 0, wn = 0;
    for (int i = 0; i < rp; i++)
        for (int j = 0; j < rq; j++) {
            size_t o = (size_t)i * ldo + j, r = (size_t)i * rq + j;
            const double old = c0 ? (double)c0[o] : 0.0, want = ref[r] + old, g = got[o];
            const double A = ra * absum[r], D = u * fabs(ref[r]) + (1.0 + u) * A;
            const double bound = (c0 ? D + (u + U_F32 + u * U_F32) * (fabs(want) + D) : D) + 1e-30;
            double e = fabs(g - want), ratio = e == e ? e / bound : INFINITY;
            if (!(g == g)) ratio = INFINITY;
            if (ratio > worst) worst = ratio, wi = r, wg = g, wr = want, wb = bound, wa = absum[r], wo = old, wn = ref[r];
            sxy += g * want, sxx += g * g + want * want;
        }
    double diff = sxx > 0 ? 1.0 - 2.0 * sxy / sxx : 0.0;
    if (diff_out) *diff_out = diff;
    char acc[96] = "";
    if (c0) snprintf(acc, sizeof acc, ", old %.9g + new %.9g", wo, wn);
    TEST_CHECK(worst <= 1.0,
               "%s: element (%zu, %zu) got %.9g want %.9g%s: |err| %.3g > bound %.3g (sum|p q| %.3g, err/bound "
               "%.3g)%s",
               what, wi / rq, wi % rq, wg, wr, acc, fabs(wg - wr), wb, wa, worst,
               wg != wg ? "  [NaN: a NaN scale (128x128 padding?) or code reached the output]" : "");
    return worst;
}

static float *download(const void *d, Fp8OutType ot, size_t n) {
    return ot == FP8_OUT_F32 ? d2h_f32(d, n) : d2h_bf16_f32(d, n);
}
// Random output contents for beta = 1 (bf16-exact when the output is bf16).
static float *fill_random_out(void *d, Fp8OutType ot, size_t n, float mag) {
    float *h = (float *)ao_malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) h[i] = bf16r(mag * test_rand_uniform(&g_rng));
    if (ot == FP8_OUT_F32) {
        h2d(d, h, n * sizeof(float));
    } else {
        bf16 *t = (bf16 *)ao_malloc(n * sizeof(bf16) + 2);
        for (size_t i = 0; i < n; i++) t[i] = __float2bfloat16(h[i]);
        h2d(d, t, n * sizeof(bf16));
        free(t);
    }
    return h;
}

// ---------------------------------------------------------------- one GEMM of a Linear, all variants
typedef struct {
    const char *name;
    Fp8Scaling sp[3], sq[3];  // per GEMM: P and Q scalings
    Fp8Dtype dp[3], dq[3];
} Mode;

static void info_line(const char *what, const Fp8GemmInfo &in, double worst, double diff) {
    printf("  %-78s heur %d algo %d tile %d stages %d splitk %d ws %zu | err/bound %.3f diff %.2e\n", what,
           in.heuristic_results, in.algo_id, in.tile_id, in.stages_id, in.splitk, in.workspace, worst, diff);
}

static void run_gemm(const Mode &md, int gemm, int N, int K, int M) {
    // fwd: y[N,M] = x[N,K] W[M,K]^T; dinp: dx[N,K] = g[N,M] (W^T)[K,M]^T; dW[M,K] = g^T[M,N] (x^T)[K,N]^T
    const int rp = gemm == G_DW ? M : N, rq = gemm == G_FWD ? M : K, kd = gemm == G_FWD ? K : gemm == G_DINP ? M : N;
    char what[200], tag[160];
    snprintf(tag, sizeof tag, "%s %s N=%d K=%d M=%d [P %s %s x Q %s %s]", md.name, gemm_name(gemm), N, K, M,
             fp8_scaling_name(md.sp[gemm]), fp8_dtype_name(md.dp[gemm]), fp8_scaling_name(md.sq[gemm]),
             fp8_dtype_name(md.dq[gemm]));
    TMat P = make_tmat(rp, kd, md.dp[gemm], md.sp[gemm]), Q = make_tmat(rq, kd, md.dq[gemm], md.sq[gemm]);
    Fp8Mat p = as_mat(P), q = as_mat(Q);
    double *ref = (double *)ao_malloc((size_t)rp * rq * sizeof(double)), *ab = (double *)ao_malloc((size_t)rp * rq * sizeof(double));
    reference(ref, ab, P, Q);
    const int blockp = md.sp[gemm] == FP8_SCALE_1X128 || md.sp[gemm] == FP8_SCALE_128X128;  // fast_accum ignored
    const int ldpad = rq + 16;
    const size_t cap = (size_t)rp * ldpad;
    void *dout = dalloc<float>(cap);
    double diff = 0.0;

    // (a) fp8_gemm_try with the mapping the wrapper uses, beta 0, no fast accumulation.
    Fp8OutType ot_a = gemm == G_DW ? FP8_OUT_F32 : FP8_OUT_BF16;
    Fp8GemmInfo in;
    CUDA_CHECK(cudaMemsetAsync(dout, 0xFF, cap * 4, g_s));  // NaN everywhere: unwritten elements show
    int ok = fp8_gemm_try(&g_ctx, dout, ot_a, rq, 0.0f, p, q, rp, rq, kd, 0, &in);
    snprintf(what, sizeof what, "%s: %s beta=0", tag, ot_a == FP8_OUT_F32 ? "fp32" : "bf16");
    TEST_CHECK(ok, "%s: refused: %s (status %s, heuristic results %d)", what, in.msg, cublasGetStatusName(in.status),
               in.heuristic_results);
    if (ok) {
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        float *got = download(dout, ot_a, (size_t)rp * rq);
        double w = check_out(what, got, NULL, ref, ab, rp, rq, rq, kd, ot_a, R_ACC, &diff);
        info_line(what, in, w, diff);
        free(got);
    }

    // (b), (c): the wrappers.
    for (int v = 0; v < 2; v++) {
        float *c0 = NULL;
        int ldo = rq, fast = 0, okw;
        Fp8OutType ot = FP8_OUT_BF16;
        CUDA_CHECK(cudaMemsetAsync(dout, 0xFF, cap * 4, g_s));
        if (gemm == G_FWD) {
            fast = v == 0;        // (b) fast accumulation, (c) a strided output without
            ldo = v == 0 ? rq : ldpad;
            if (v == 1) {         // sentinel in the padding columns
                bf16 *t = (bf16 *)ao_malloc(cap * sizeof(bf16));
                for (size_t i = 0; i < cap; i++) t[i] = __float2bfloat16(-77.0f);
                h2d(dout, t, cap * sizeof(bf16));
                free(t);
            }
            okw = guarded([&] { matmul_fp8_forward(&g_ctx, (bf16 *)dout, ldo, p, q, N, K, M, fast); });
            snprintf(what, sizeof what, "%s: wrapper fast_accum=%d ldo=%d", tag, fast, ldo);
        } else if (gemm == G_DINP) {
            int acc = v == 0;  // (b) beta = 1 onto random contents, (c) beta = 0
            if (acc) c0 = fill_random_out(dout, ot, (size_t)rp * rq, 4.0f);
            okw = guarded([&] { matmul_fp8_dinp(&g_ctx, (bf16 *)dout, p, q, N, K, M, acc); });
            snprintf(what, sizeof what, "%s: wrapper accumulate=%d", tag, acc);
        } else {
            ot = v == 0 ? FP8_OUT_F32 : FP8_OUT_BF16;  // (b) fp32 +=, (c) bf16 =
            int acc = v == 0;
            if (acc) c0 = fill_random_out(dout, ot, (size_t)rp * rq, 4.0f);
            okw = guarded([&] { matmul_fp8_dweight(&g_ctx, dout, ot, p, q, N, K, M, acc); });
            snprintf(what, sizeof what, "%s: wrapper %s accumulate=%d", tag, ot == FP8_OUT_F32 ? "fp32" : "bf16", acc);
        }
        TEST_CHECK(okw, "%s: failed: %s", what, g_fail_msg);
        if (okw) {
            CUDA_CHECK(cudaStreamSynchronize(g_s));
            float *got = download(dout, ot, (size_t)rp * ldo);
            double w = check_out(what, got, c0, ref, ab, rp, rq, ldo, kd, ot, fast && !blockp ? R_ACC_FAST : R_ACC, &diff);
            printf("  %-78s err/bound %.3f diff %.2e\n", what, w, diff);
            if (ldo > rq) {
                size_t bad = 0;
                for (int i = 0; i < rp; i++)
                    for (int j = rq; j < ldo; j++) bad += got[(size_t)i * ldo + j] != -77.0f;
                TEST_CHECK(bad == 0, "%s: %zu elements of the row padding (columns %d..%d) were overwritten", what, bad,
                           rq, ldo - 1);
            }
            free(got);
        }
        free(c0);
    }
    free(ref), free(ab);
    cudaFree(dout);
    free_tmat(P), free_tmat(Q);
}

static void run_mode(const Mode &md, int N, int K, int M, int gemms_mask) {
    for (int g = 0; g < 3; g++)
        if (gemms_mask & (1 << g)) run_gemm(md, g, N, K, M);
}

// ---------------------------------------------------------------- refusals
typedef struct {
    int rp, rq, kd, ldo;
    Fp8Mat p, q;
    Fp8OutType ot;
    void *out;
} RefuseArgs;
static void call_gemm(void *a) {
    RefuseArgs *r = (RefuseArgs *)a;
    fp8_gemm(&g_ctx, r->out, r->ot, r->ldo, 0.0f, r->p, r->q, r->rp, r->rq, r->kd, 0);
}

static void test_refusals(void) {
    TMat t4 = make_tmat(64, 256, FP8_E4M3, FP8_SCALE_TENSOR), t5 = make_tmat(64, 256, FP8_E5M2, FP8_SCALE_TENSOR);
    TMat ax = make_tmat(64, 256, FP8_E4M3, FP8_SCALE_AXIS);
    TMat b1 = make_tmat(64, 256, FP8_E4M3, FP8_SCALE_1X128), b2 = make_tmat(64, 256, FP8_E4M3, FP8_SCALE_128X128);
    void *out = dalloc<float>(64 * 64 + 64);
    RefuseArgs a;
    memset(&a, 0, sizeof a);
    a.rp = 64, a.rq = 64, a.kd = 256, a.ldo = 64, a.ot = FP8_OUT_BF16, a.out = out;
    a.p = as_mat(t4), a.q = as_mat(t4);
    // The valid call first, so that each refusal below is due to the one thing changed.
    TEST_CHECK(guarded([&] { call_gemm(&a); }), "refusals: the valid base call failed: %s", g_fail_msg);
    CUDA_CHECK(cudaStreamSynchronize(g_s));

    RefuseArgs b = a;
    b.kd = 72, b.p.q = t4.q, b.q.q = t4.q;
    TEST_EXPECT_FAIL("kd = 72", call_gemm, &b, "not a multiple of 16");
    b = a, b.rq = 40, b.ldo = 40;
    TEST_EXPECT_FAIL("rows_q = 40", call_gemm, &b, "not a multiple of 16");
    b = a, b.ldo = 60;
    TEST_EXPECT_FAIL("ldo = 60 < rows_q", call_gemm, &b, "ldo >= 64");
    b = a, b.ldo = 68;
    TEST_EXPECT_FAIL("bf16 ldo = 68 (136 bytes)", call_gemm, &b, "multiple of 16");
    b = a, b.p = as_mat(t5), b.q = as_mat(t5);
    TEST_EXPECT_FAIL("e5m2 x e5m2", call_gemm, &b, "e5m2 x e5m2");
    b = a, b.p = as_mat(ax);
    TEST_EXPECT_FAIL("axis x tensor", call_gemm, &b, "fp8_scale_broadcast");
    b = a, b.p = as_mat(b1);
    TEST_EXPECT_FAIL("1x128 x tensor", call_gemm, &b, "cannot be mixed");
    b = a, b.p = as_mat(b2), b.q = as_mat(b2);
    TEST_EXPECT_FAIL("128x128 x 128x128", call_gemm, &b, "128x128 x 128x128");
    b = a, b.p = as_mat(b1), b.q = as_mat(b2), b.q.scale_ld = 2;
    TEST_EXPECT_FAIL("128x128 scale_ld 2", call_gemm, &b, "scale_ld");
    b = a, b.p = as_mat(b1), b.q = as_mat(b2), b.rp = 37;
    TEST_EXPECT_FAIL("block scaling with 37 rows", call_gemm, &b, "multiples of 4");
    b = a, b.p = as_mat(b1), b.q = as_mat(b2), b.p.scale_inv = t4.s + 1;
    TEST_EXPECT_FAIL("misaligned 1x128 scales", call_gemm, &b, "16-byte");
    b = a, b.p.q = t4.q + 8;
    TEST_EXPECT_FAIL("misaligned codes", call_gemm, &b, "16-byte");
    b = a, b.out = (char *)out + 4;
    TEST_EXPECT_FAIL("misaligned output", call_gemm, &b, "16-byte");
    b = a, b.p.scaling = FP8_SCALE_MX32, b.q.scaling = FP8_SCALE_MX32;
    TEST_EXPECT_FAIL("MX32", call_gemm, &b, "sm_100");
    b = a, b.p.scaling = FP8_SCALE_NONE;
    TEST_EXPECT_FAIL("bf16 operand", call_gemm, &b, "ops/matmul.cuh");
    printf("  refusal: %s\n", test_last_fail_message());
    {  // A Linear with an odd token count: grad_weight reduces over N.
        TMat g = make_tmat(64, 37, FP8_E4M3, FP8_SCALE_TENSOR);
        struct DwArgs {
            Fp8Mat p, q;
            void *out;
        } d = {as_mat(g), as_mat(g), out};
        TEST_EXPECT_FAIL(
            "grad_weight with N = 37", [](void *v) {
                DwArgs *d = (DwArgs *)v;
                matmul_fp8_dweight(&g_ctx, d->out, FP8_OUT_F32, d->p, d->q, 37, 64, 64, 1);
            },
            &d, "not a multiple of 16");
        free_tmat(g);
    }
    cudaFree(out);
    free_tmat(t4), free_tmat(t5), free_tmat(ax), free_tmat(b1), free_tmat(b2);
}

// ---------------------------------------------------------------- end to end: casts + GEMMs vs bf16
static bf16 *upload_bf16(const float *h, size_t n) {
    bf16 *t = (bf16 *)ao_malloc(n * sizeof(bf16) + 2), *d = dalloc<bf16>(n);
    for (size_t i = 0; i < n; i++) t[i] = __float2bfloat16(h[i]);
    h2d(d, t, n * sizeof(bf16));
    free(t);
    return d;
}
// bf16-exact values uniform in +-mag, with rows spanning 2^-3..2^3 (so per-row scales matter).
static float *rand_matrix(int rows, int cols, float mag) {
    float *h = (float *)ao_malloc((size_t)rows * cols * sizeof(float));
    for (int r = 0; r < rows; r++) {
        float rm = ldexpf(mag, r % 7 - 3);
        for (int c = 0; c < cols; c++) h[(size_t)r * cols + c] = bf16r(rm * test_rand_uniform(&g_rng));
    }
    return h;
}
static double rel_frob(const float *got, const float *ref, size_t n) {
    double se = 0, sr = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - ref[i];
        se += e * e, sr += (double)ref[i] * ref[i];
        if (got[i] != got[i]) return INFINITY;
    }
    return sr > 0 ? sqrt(se / sr) : sqrt(se);
}

typedef struct {
    uint8_t *q;
    float *s;
    Fp8Mat m;
    Fp8CastSpec spec;
} CastOp;

// Casts the stored tensor src [rows, cols] for operand op of recipe r.
static CastOp cast_op(Fp8Recipe r, Fp8Operand op, const bf16 *src, int rows, int cols, float *amax_ws) {
    CastOp c;
    memset(&c, 0, sizeof c);
    c.spec = fp8_recipe_cast(r, op);
    if (c.spec.scaling == FP8_SCALE_NONE) return c;
    int ld = 0;
    size_t ns = fp8_scale_count(c.spec, rows, cols, &ld);
    c.q = dalloc<uint8_t>((size_t)rows * cols), c.s = dalloc<float>(ns);
    CUDA_CHECK(cudaMemsetAsync(c.s, 0, ns * sizeof(float), g_s));  // 128x128 padding entries: finite
    fp8_cast_operand(c.q, c.s, NULL, src, rows, cols, c.spec, amax_ws, g_s);
    c.m = fp8_mat(c.q, c.s, c.spec, rows, cols);
    return c;
}
static void free_cast(CastOp &c) { cudaFree(c.q), cudaFree(c.s); }

static void test_end_to_end(Fp8Recipe r, int N, int K, int M) {
    const char *rn = fp8_recipe_name(r);
    float *hx = rand_matrix(N, K, 2.0f), *hw = rand_matrix(M, K, 0.05f), *hg = rand_matrix(N, M, 1e-3f);
    bf16 *x = upload_bf16(hx, (size_t)N * K), *w = upload_bf16(hw, (size_t)M * K), *g = upload_bf16(hg, (size_t)N * M);
    float *amax_ws = dalloc<float>(FP8_AMAX_WS_FLOATS);
    CUDA_CHECK(cudaMemsetAsync(amax_ws, 0, FP8_AMAX_WS_FLOATS * sizeof(float), g_s));  // the ticket counter
    bf16 *y_ref = dalloc<bf16>((size_t)N * M), *dx_ref = dalloc<bf16>((size_t)N * K);
    float *dw_ref = dalloc<float>((size_t)M * K);
    bf16 *y = dalloc<bf16>((size_t)N * M), *dx = dalloc<bf16>((size_t)N * K);
    float *dw = dalloc<float>((size_t)M * K);
    CUDA_CHECK(cudaMemsetAsync(dw_ref, 0, (size_t)M * K * 4, g_s));
    CUDA_CHECK(cudaMemsetAsync(dw, 0, (size_t)M * K * 4, g_s));
    matmul_forward(&g_ctx, y_ref, x, w, NULL, N, K, M, M);
    matmul_backward(&g_ctx, dx_ref, dw_ref, NULL, g, M, x, w, N, K, M, 0);

    CastOp ops[FP8_NOPERANDS];
    const bf16 *src[FP8_NOPERANDS] = {x, w, g, w, g, x};
    const int rows[FP8_NOPERANDS] = {N, M, N, M, N, N}, cols[FP8_NOPERANDS] = {K, K, M, K, M, K};
    for (int op = 0; op < FP8_NOPERANDS; op++) ops[op] = cast_op(r, (Fp8Operand)op, src[op], rows[op], cols[op], amax_ws);
    float *wt_vec = NULL;
    if (ops[FP8_G_GI].spec.scaling == FP8_SCALE_AXIS && ops[FP8_W_GI].spec.scaling == FP8_SCALE_TENSOR) {
        // rowwise_with_gw_hp: the tensor scale of W^T as an outer vector (one entry per row of W^T = K)
        wt_vec = dalloc<float>(K);
        fp8_scale_broadcast(wt_vec, ops[FP8_W_GI].s, K, g_s);
        ops[FP8_W_GI].m.scaling = FP8_SCALE_AXIS, ops[FP8_W_GI].m.scale_inv = wt_vec;
    }
    char what[160];
    const int gemm_ops[3][2] = {{FP8_X_FWD, FP8_W_FWD}, {FP8_G_GI, FP8_W_GI}, {FP8_G_GW, FP8_X_GW}};
    for (int gm = 0; gm < 3; gm++) {
        const CastOp &P = ops[gemm_ops[gm][0]], &Q = ops[gemm_ops[gm][1]];
        if (P.spec.scaling == FP8_SCALE_NONE) {
            printf("  e2e %-18s %-11s N=%d K=%d M=%d: bf16 GEMM in this recipe (not fp8)\n", rn, gemm_name(gm), N, K, M);
            continue;
        }
        snprintf(what, sizeof what, "e2e %s %s N=%d K=%d M=%d (%s %s x %s %s)", rn, gemm_name(gm), N, K, M,
                 fp8_scaling_name(P.m.scaling), fp8_dtype_name(P.m.dtype), fp8_scaling_name(Q.m.scaling),
                 fp8_dtype_name(Q.m.dtype));
        int ok = guarded([&] {
            if (gm == G_FWD) matmul_fp8_forward(&g_ctx, y, M, P.m, Q.m, N, K, M, 1);
            else if (gm == G_DINP) matmul_fp8_dinp(&g_ctx, dx, P.m, Q.m, N, K, M, 0);
            else matmul_fp8_dweight(&g_ctx, dw, FP8_OUT_F32, P.m, Q.m, N, K, M, 1);
        });
        TEST_CHECK(ok, "%s: failed: %s", what, g_fail_msg);
        if (!ok) continue;
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        size_t n = gm == G_FWD ? (size_t)N * M : gm == G_DINP ? (size_t)N * K : (size_t)M * K;
        Fp8OutType ot = gm == G_DW ? FP8_OUT_F32 : FP8_OUT_BF16;
        float *got = download(gm == G_FWD ? (void *)y : gm == G_DINP ? (void *)dx : (void *)dw, ot, n);
        float *want = download(gm == G_FWD ? (void *)y_ref : gm == G_DINP ? (void *)dx_ref : (void *)dw_ref, ot, n);
        double tol = (P.m.dtype == FP8_E5M2 || Q.m.dtype == FP8_E5M2) ? E2E_TOL_E5M2 : E2E_TOL_E4M3;
        double e = rel_frob(got, want, n);
        TEST_CHECK(e <= tol, "%s: relative Frobenius error vs the bf16 GEMM %.4f > %.2f", what, e, tol);
        printf("  %-78s |fp8 - bf16| / |bf16| = %.4f (bound %.2f)\n", what, e, tol);
        free(got), free(want);
    }
    for (int op = 0; op < FP8_NOPERANDS; op++) free_cast(ops[op]);
    free(hx), free(hw), free(hg);
    cudaFree(x), cudaFree(w), cudaFree(g), cudaFree(amax_ws), cudaFree(y_ref), cudaFree(dx_ref), cudaFree(dw_ref);
    cudaFree(y), cudaFree(dx), cudaFree(dw), cudaFree(wt_vec);
}

// ---------------------------------------------------------------- casts at training row counts
static void same_bits(const char *what, const void *got, const void *ref, size_t n, size_t elem) {
    size_t i = 0;
    while (i < n && memcmp((const char *)got + i * elem, (const char *)ref + i * elem, elem) == 0) i++;
    uint32_t a = 0, b = 0;
    if (i < n) memcpy(&a, (const char *)got + i * elem, elem), memcpy(&b, (const char *)ref + i * elem, elem);
    TEST_CHECK(i == n, "%s: element %zu of %zu differs: gpu %08x cpu %08x", what, i, n, a, b);
}

static void test_casts_tall(int rows, int cols) {
    const size_t n = (size_t)rows * cols;
    float *hx = rand_matrix(rows, cols, 2.0f);  // rows spanning 2^-3..2^3; columns too:
    for (size_t i = 0; i < n; i++) hx[i] = bf16r(ldexpf(hx[i], (int)(i % cols) % 5 - 2));
    bf16 *dx = upload_bf16(hx, n);
    uint8_t *dq = dalloc<uint8_t>(n), *q = (uint8_t *)ao_malloc(n), *rq = (uint8_t *)ao_malloc(n);
    const size_t ns = n / 128 + (size_t)rows + cols + 1024;  // bounds every scale count
    float *ds = dalloc<float>(ns), *sc = (float *)ao_malloc(ns * 4), *rs = (float *)ao_malloc(ns * 4);
    float *ws = dalloc<float>(FP8_AMAX_WS_FLOATS);
    CUDA_CHECK(cudaMemsetAsync(ws, 0, FP8_AMAX_WS_FLOATS * sizeof(float), g_s));  // the ticket counter
    char w[160];
    fp8_amax_tensor(ws + FP8_AMAX_PARTIALS, ws, dx, rows, cols, (size_t)cols, g_s);
    float amax, ramax = fp8_amax_cpu(hx, n);
    d2h(&amax, ws + FP8_AMAX_PARTIALS, 4);
    snprintf(w, sizeof w, "cast amax %dx%d", rows, cols);
    same_bits(w, &amax, &ramax, 1, 4);
    for (int axis = 0; axis < 2; axis++)
        for (int dt = 0; dt < 2; dt++)
            for (int tr = 0; tr < 2; tr++) {
                const int pow2 = axis;  // the rowwise recipes round scales to powers of two
                fp8_cast(dq, ds, dx, rows, cols, axis ? NULL : ws + FP8_AMAX_PARTIALS, (Fp8Dtype)dt, pow2, tr, g_s);
                fp8_cast_cpu(rq, rs, hx, rows, cols, (Fp8Dtype)dt, axis, pow2, tr);
                const size_t nsc = axis ? (size_t)(tr ? cols : rows) : 1;
                for (size_t i = 0; i < nsc; i++) rs[i] = fp8_scale_inv(rs[i]);
                d2h(q, dq, n), d2h(sc, ds, nsc * 4);
                snprintf(w, sizeof w, "cast %s %s pow2=%d tr=%d %dx%d: codes", axis ? "axis" : "tensor",
                         fp8_dtype_name((Fp8Dtype)dt), pow2, tr, rows, cols);
                same_bits(w, q, rq, n, 1);
                snprintf(w, sizeof w, "cast %s %s pow2=%d tr=%d %dx%d: scale_inv", axis ? "axis" : "tensor",
                         fp8_dtype_name((Fp8Dtype)dt), pow2, tr, rows, cols);
                same_bits(w, sc, rs, nsc, 4);
            }
    for (int tr = 0; tr < 2; tr++) {
        const int orows = tr ? cols : rows, ocols = tr ? rows : cols;
        const size_t nsc = (size_t)orows * ceil_div(ocols, 128);
        fp8_cast_block1x128(dq, ds, dx, rows, cols, tr, g_s);
        fp8_block1x128_cpu(rq, rs, hx, rows, cols, tr);
        d2h(q, dq, n), d2h(sc, ds, nsc * 4);
        snprintf(w, sizeof w, "cast 1x128 tr=%d %dx%d: codes", tr, rows, cols);
        same_bits(w, q, rq, n, 1);
        snprintf(w, sizeof w, "cast 1x128 tr=%d %dx%d: scale_inv", tr, rows, cols);
        same_bits(w, sc, rs, nsc, 4);
        const int ld = blk_ld(ocols);
        const size_t nsb = (size_t)ld * ceil_div(orows, 128);
        for (size_t i = 0; i < nsb; i++) rs[i] = 1.0f;  // padding entries: left as they were
        h2d(ds, rs, nsb * 4);
        fp8_cast_block128x128(dq, ds, ld, dx, rows, cols, tr, g_s);
        fp8_block128x128_cpu(rq, rs, ld, hx, rows, cols, tr);
        d2h(q, dq, n), d2h(sc, ds, nsb * 4);
        snprintf(w, sizeof w, "cast 128x128 tr=%d %dx%d: codes", tr, rows, cols);
        same_bits(w, q, rq, n, 1);
        snprintf(w, sizeof w, "cast 128x128 tr=%d %dx%d: scale_inv", tr, rows, cols);
        same_bits(w, sc, rs, nsb, 4);
    }
    printf("  casts %5d x %-5d bit-exact against the CPU reference\n", rows, cols);
    free(hx), free(q), free(rq), free(sc), free(rs);
    cudaFree(dx), cudaFree(dq), cudaFree(ds), cudaFree(ws);
}

// ---------------------------------------------------------------- main
static constexpr Fp8Scaling sT = FP8_SCALE_TENSOR, sA = FP8_SCALE_AXIS, sB1 = FP8_SCALE_1X128, sB2 = FP8_SCALE_128X128;
static constexpr Fp8Dtype e4 = FP8_E4M3, e5 = FP8_E5M2;
static const Mode MODES[] = {
    // name                  P scalings      Q scalings      P dtypes      Q dtypes       (per GEMM: fwd, dinp, dW)
    {"tensorwise", {sT, sT, sT}, {sT, sT, sT}, {e4, e5, e5}, {e4, e4, e4}},  // torchao: gradients e5m2
    {"tensorwise-e4m3", {sT, sT, sT}, {sT, sT, sT}, {e4, e4, e4}, {e4, e4, e4}},
    {"tensorwise-A-e5m2", {sT, sT, sT}, {sT, sT, sT}, {e4, e4, e4}, {e5, e5, e5}},  // e5m2 as cuBLASLt's A
    {"rowwise", {sA, sA, sA}, {sA, sA, sA}, {e4, e4, e4}, {e4, e4, e4}},
    {"rowwise-e5m2-grads", {sA, sA, sA}, {sA, sA, sA}, {e4, e5, e5}, {e4, e4, e4}},
    {"blockwise", {sB1, sB1, sB1}, {sB2, sB2, sB1}, {e4, e4, e4}, {e4, e4, e4}},  // DeepSeek-V3 / torchao
    {"blockwise-e5m2-grads", {sB1, sB1, sB1}, {sB2, sB2, sB1}, {e4, e5, e5}, {e4, e4, e4}},
    {"blockwise-P128x128", {sB2, sB2, sB2}, {sB1, sB1, sB1}, {e4, e4, e4}, {e4, e4, e4}},  // BLK as cuBLASLt's B
};
#define NMODES (int)(sizeof MODES / sizeof MODES[0])

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        test_skip("gpu_test_fp8gemm: no CUDA GPU");
        return test_summary();
    }
    gpu_ctx_init(&g_ctx, 0);
    g_s = g_ctx.stream;
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt), cudaDriverGetVersion(&drv);
    printf("device: %s (sm_%d%d, %d SMs), CUDA runtime %d, driver %d, cuBLASLt %zu (built against %d)\n",
           g_ctx.prop.name, g_ctx.prop.major, g_ctx.prop.minor, g_ctx.prop.multiProcessorCount, rt, drv,
           cublasLtGetVersion(), CUBLAS_VERSION);
    if (g_ctx.prop.major != 9) {
        test_skip("gpu_test_fp8gemm: the outer-vector and block-scaled fp8 GEMMs need compute capability 9.x");
        gpu_ctx_free(&g_ctx);
        return test_summary();
    }
    const int all = 7, fwd_dinp = 3;
    printf("synthetic operands vs the float64 dequantized reference\n");
    for (int i = 0; i < NMODES; i++) {
        run_mode(MODES[i], 48, 80, 112, all);    // small: K, M < 128 (one partial block)
        run_mode(MODES[i], 64, 400, 272, all);   // K, M past 128 with partial tail blocks
        if (MODES[i].sp[0] == sT || MODES[i].sp[0] == sA)
            run_mode(MODES[i], 37, 256, 160, fwd_dinp);  // an odd token count (grad_weight refuses it)
        else
            run_mode(MODES[i], 44, 256, 160, fwd_dinp);  // block scaling: rows a multiple of 4
    }
    for (int i : {0, 3, 5}) run_mode(MODES[i], 256, 4096, 1024, all);  // Llama-ish, the three recipes
    printf("refusals\n");
    test_refusals();
    printf("end to end: bf16 -> fp8_cast -> fp8 GEMM vs the bf16 GEMM\n");
    const Fp8Recipe recipes[] = {FP8_RECIPE_TENSORWISE, FP8_RECIPE_ROWWISE, FP8_RECIPE_ROWWISE_GW_HP,
                                 FP8_RECIPE_BLOCKWISE};
    for (Fp8Recipe r : recipes) {
        test_end_to_end(r, 256, 512, 384);
        test_end_to_end(r, 64, 400, 272);
    }
    printf("casts at training row counts vs the CPU reference\n");
    test_casts_tall(8192, 256);  // 8 CTAs of 1024 rows per column: each share walked twice
    test_casts_tall(8200, 136);  // 8 of 1088 (three passes, a partial one), rows % 16 != 0: byte stores
    test_casts_tall(4100, 72);   // 8 of 576
    gpu_ctx_free(&g_ctx);
    return test_summary();
}
