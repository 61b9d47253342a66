// MXFP8 GEMMs (ops/matmul_mx.cu) on the GPU.
//
// 1. Synthetic MX operands (random e4m3 codes, subnormals and both signs included; random e8m0 per
//    32-block over 2^-12..2^12, so that a scale read from the wrong block is a gross error) for the three
//    GEMMs of a Linear and their output variants (bf16 beta 0, bf16 beta 1 onto random contents, fp32
//    beta 1, a strided output whose padding must stay untouched), against a float64 reference of the
//    dequantized operands. Emulated path (every GPU below sm_100, and on sm_100 with
//    LLAMA_AO_MX_EMULATE=1): the dequantized operands are exact in bf16 (exponents >= 3, quant/mx.h), so
//    the result differs from the reference only by the bf16 GEMM's fp32 accumulation and the output
//    rounding; per element, with u the output's unit roundoff (bf16 2^-8, fp32 2^-24):
//        A = (kd + 2) 2^-23 sum_k |p_k q_k|     (fp32 accumulation, truncating adds: 1 ulp each)
//        beta = 0:  |got - ref| <= u |ref| + (1 + u) A
//        beta = 1:  |got - (old + ref)| <= D + (u + 2^-24 + u 2^-24) (|old + ref| + D),  D = u |ref| + (1 + u) A
//    (the second rounds the product before old is added, as cuBLASLt does: gpu_test_fp8gemm.cu check_out).
//    Native path (sm_100+ only, never on Hopper): the same cases with A = 2^-11 sum |p q| + the fp32
//    promotion per 32-block, an estimate carried over from Hopper's fp8 accumulator (not yet measured).
// 2. Refusals: the native path below sm_100, too small a scratch, NULL operands, fp8_gemm_try with MX
//    operands below sm_100 or mixed with another scaling, kd % 32 on the native path.
// 3. End to end: bf16 x, W, g -> the MX casts of the mxfp8 recipe (fp8_recipe_cast: x, W along K; g, W^T
//    along M; g^T, x^T along N) -> the three MX GEMMs, against the bf16 GEMMs of ops/matmul.cu on the same
//    inputs: relative Frobenius error <= 0.10 (e4m3 x e4m3, gpu_test_fp8gemm's bound); the same call twice
//    gives the same bits.
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <functional>

#include "gpu_test.cuh"
#include "../ops/matmul.cuh"
#include "../ops/matmul_mx.cuh"
#include "../quant/fp8_cast.cuh"
extern "C" {
#include "test.h"
}

static uint64_t g_rng = 0x3F8A7ull;
static GpuCtx g_ctx;

#define U_BF16 0x1p-8
#define U_F32 0x1p-24
#define E2E_TOL 0.10


// ---------------------------------------------------------------- synthetic MX operands
struct TMx {
    int rows, kd, nkb;
    uint8_t *hq, *he;  // host
    uint8_t *q, *e;    // device
};
static TMx make_mx(int rows, int kd) {
    TMx m;
    m.rows = rows, m.kd = kd, m.nkb = ceil_div(kd, MX_BLOCK);
    const size_t n = (size_t)rows * kd, ne = (size_t)rows * m.nkb;
    m.hq = (uint8_t *)ao_malloc(n + 1), m.he = (uint8_t *)ao_malloc(ne + 1);
    for (size_t i = 0; i < n; i++) m.hq[i] = fp8_saturate_cast(4.0f * test_rand_uniform(&g_rng), FP8_E4M3);
    for (size_t i = 0; i < ne; i++) m.he[i] = (uint8_t)(127 + (int)(test_rand_u64(&g_rng) % 25) - 12);
    m.q = dalloc<uint8_t>(n), m.e = dalloc<uint8_t>(ne);
    h2d(m.q, m.hq, n), h2d(m.e, m.he, ne);
    return m;
}
static MxMat as_mx(const TMx &t) {
    MxMat m;
    m.q = t.q, m.e8m0 = t.e, m.dtype = FP8_E4M3;
    return m;
}
static void free_mx(TMx &t) { free(t.hq), free(t.he), cudaFree(t.q), cudaFree(t.e); }
static double *dequant(const TMx &t) {
    const size_t n = (size_t)t.rows * t.kd;
    float *f = (float *)ao_malloc(n * sizeof(float) + 4);
    double *d = (double *)ao_malloc(n * sizeof(double) + 8);
    mx_dequantize_cpu(f, t.hq, t.he, t.rows, t.kd, FP8_E4M3);
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    free(f);
    return d;
}

// A scratch for both paths, sized for operands [rp, kd] and [rq, kd].
struct Scratch {
    MxGemmScratch ws;
    void free_all() { cudaFree(ws.p), cudaFree(ws.q), cudaFree(ws.sp), cudaFree(ws.sq); }
};
static Scratch alloc_scratch(size_t p_cap, size_t q_cap, size_t sp_cap, size_t sq_cap) {
    Scratch s;
    s.ws.p_cap = p_cap, s.ws.q_cap = q_cap, s.ws.sp_cap = sp_cap, s.ws.sq_cap = sq_cap;
    s.ws.p = dalloc<bf16>(p_cap), s.ws.q = dalloc<bf16>(q_cap);
    s.ws.sp = dalloc<uint8_t>(sp_cap), s.ws.sq = dalloc<uint8_t>(sq_cap);
    return s;
}
static Scratch make_scratch(int rp, int rq, int kd) {
    const int nkb = ceil_div(kd, MX_BLOCK);
    return alloc_scratch((size_t)rp * kd, (size_t)rq * kd, mx_swizzled_bytes(rp, nkb), mx_swizzled_bytes(rq, nkb));
}

static float *download(const void *d, Fp8OutType ot, size_t n) {
    return ot == FP8_OUT_F32 ? d2h_f32(d, n) : d2h_bf16_f32(d, n);
}
// Contents for beta = 1: random bf16-exact values in +-mag (random = 1), or mag everywhere (a sentinel for
// beta = 0); the host copy.
static float *fill_out(void *d, Fp8OutType ot, size_t n, float mag, int random) {
    float *h = (float *)ao_malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) h[i] = random ? bf16r(mag * test_rand_uniform(&g_rng)) : mag;
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

// ---------------------------------------------------------------- 1. one GEMM against the reference
static void run_case(const char *tag, int rp, int rq, int kd, MxGemmPath path) {
    TMx P = make_mx(rp, kd), Q = make_mx(rq, kd);
    double *dp = dequant(P), *dq = dequant(Q);
    double *ref = (double *)ao_malloc((size_t)rp * rq * sizeof(double)), *ab = (double *)ao_malloc((size_t)rp * rq * sizeof(double));
#pragma omp parallel for schedule(static)
    for (int i = 0; i < rp; i++)
        for (int j = 0; j < rq; j++) {
            double s = 0, a = 0;
            for (int k = 0; k < kd; k++) {
                const double v = dp[(size_t)i * kd + k] * dq[(size_t)j * kd + k];
                s += v, a += fabs(v);
            }
            ref[(size_t)i * rq + j] = s, ab[(size_t)i * rq + j] = a;
        }
    const double r_acc = path == MX_GEMM_EMULATED ? (kd + 2) * 0x1p-23 : 0x1p-11 + (ceil_div(kd, 32) + 2) * U_F32;
    Scratch sc = make_scratch(rp, rq, kd);
    const int ldpad = rq + 16;
    void *out = dalloc<float>((size_t)rp * ldpad);
    // variants: 0 bf16 beta 0; 1 bf16 beta 1; 2 fp32 beta 1; 3 bf16 beta 0 into a strided output
    for (int v = 0; v < 4; v++) {
        const Fp8OutType ot = v == 2 ? FP8_OUT_F32 : FP8_OUT_BF16;
        const int ldo = v == 3 ? ldpad : rq, beta1 = v == 1 || v == 2;
        const size_t n = (size_t)rp * ldo;
        float *c0 = fill_out(out, ot, n, beta1 ? 4.0f : -77.0f, beta1);  // beta 0: a sentinel
        Fp8GemmInfo info;
        const int ok = mx_gemm_try(&g_ctx, out, ot, ldo, beta1 ? 1.0f : 0.0f, as_mx(P), as_mx(Q), rp, rq, kd, &sc.ws, path,
                                   &info);
        char what[200];
        snprintf(what, sizeof what, "%s rp=%d rq=%d kd=%d [%s] %s beta=%d ldo=%d", tag, rp, rq, kd,
                 path == MX_GEMM_NATIVE ? "native" : "emulated", ot == FP8_OUT_F32 ? "fp32" : "bf16", beta1, ldo);
        TEST_CHECK(ok, "%s: refused: %s", what, info.msg);
        if (ok) {
            CUDA_CHECK(cudaStreamSynchronize(g_s));
            float *got = download(out, ot, n);
            const double u = ot == FP8_OUT_F32 ? U_F32 : U_BF16;
            double worst = 0;
            size_t wi = 0, pad_bad = 0;
            for (int i = 0; i < rp; i++) {
                for (int j = 0; j < rq; j++) {
                    const size_t r = (size_t)i * rq + j, o = (size_t)i * ldo + j;
                    const double old = beta1 ? c0[o] : 0.0, want = old + ref[r];
                    const double D = u * fabs(ref[r]) + (1.0 + u) * r_acc * ab[r];
                    const double bound = (beta1 ? D + (u + U_F32 + u * U_F32) * (fabs(want) + D) : D) + 1e-30;
                    const double e = fabs(got[o] - want), ratio = got[o] == got[o] ? e / bound : INFINITY;
                    if (ratio > worst) worst = ratio, wi = r;
                }
                for (int j = rq; j < ldo; j++) pad_bad += got[(size_t)i * ldo + j] != -77.0f;
            }
            TEST_CHECK(worst <= 1.0, "%s: element (%zu, %zu) got %.9g want %.9g (sum|p q| %.3g): err/bound %.3g", what,
                       wi / rq, wi % rq, got[(wi / rq) * ldo + wi % rq],
                       ref[wi] + (beta1 ? c0[(wi / rq) * ldo + wi % rq] : 0.0), ab[wi], worst);
            TEST_CHECK(pad_bad == 0, "%s: %zu elements of the row padding were overwritten", what, pad_bad);
            printf("  %-86s err/bound %.3f\n", what, worst);
            free(got);
        }
        free(c0);
    }
    cudaFree(out);
    sc.free_all();
    free(dp), free(dq), free(ref), free(ab);
    free_mx(P), free_mx(Q);
}

// ---------------------------------------------------------------- 2. refusals
static void test_refusals(void) {
    TMx A = make_mx(64, 64), B = make_mx(64, 48);
    Scratch sc = make_scratch(64, 64, 64);
    void *out = dalloc<float>(64 * 64);
    Fp8GemmInfo info;
    const MxGemmPath other = mx_gemm_path(&g_ctx) == MX_GEMM_NATIVE ? MX_GEMM_EMULATED : MX_GEMM_NATIVE;
    TEST_CHECK(mx_gemm_try(&g_ctx, out, FP8_OUT_BF16, 64, 0.0f, as_mx(A), as_mx(A), 64, 64, 64, &sc.ws,
                           MX_GEMM_EMULATED, &info), "emulated base call refused: %s", info.msg);
    if (g_ctx.prop.major < 10) {
        TEST_CHECK(!mx_gemm_try(&g_ctx, out, FP8_OUT_BF16, 64, 0.0f, as_mx(A), as_mx(A), 64, 64, 64, &sc.ws,
                                MX_GEMM_NATIVE, &info) && strstr(info.msg, "sm_100"),
                   "the native MX GEMM on sm_%d%d: %s", g_ctx.prop.major, g_ctx.prop.minor, info.msg);
        printf("  refusal: %s\n", info.msg);
        Fp8Mat a;  // the cuBLASLt call itself, as the native path would make it
        memset(&a, 0, sizeof a);
        a.q = A.q, a.dtype = FP8_E4M3, a.scaling = FP8_SCALE_MX32, a.e8m0 = sc.ws.sp;
        TEST_CHECK(!fp8_gemm_try(&g_ctx, out, FP8_OUT_BF16, 64, 0.0f, a, a, 64, 64, 64, 0, &info) &&
                       strstr(info.msg, "sm_100"), "fp8_gemm_try with MX operands below sm_100: %s", info.msg);
    } else {
        TEST_CHECK(!mx_gemm_try(&g_ctx, out, FP8_OUT_BF16, 64, 0.0f, as_mx(B), as_mx(B), 64, 64, 48, &sc.ws,
                                MX_GEMM_NATIVE, &info) && strstr(info.msg, "multiple of 32"),
                   "the native MX GEMM with kd = 48: %s", info.msg);
    }
    MxGemmScratch small = sc.ws;
    small.p_cap = 64 * 32, small.sq_cap = 16;
    for (MxGemmPath p : {MX_GEMM_EMULATED, other})
        if (p == MX_GEMM_EMULATED || g_ctx.prop.major >= 10)
            TEST_CHECK(!mx_gemm_try(&g_ctx, out, FP8_OUT_BF16, 64, 0.0f, as_mx(A), as_mx(A), 64, 64, 64, &small, p,
                                    &info) && strstr(info.msg, "scratch"), "too small a scratch (%s): %s",
                       p == MX_GEMM_NATIVE ? "native" : "emulated", info.msg);
    MxMat nul = as_mx(A);
    nul.e8m0 = NULL;
    TEST_CHECK(!mx_gemm_try(&g_ctx, out, FP8_OUT_BF16, 64, 0.0f, nul, as_mx(A), 64, 64, 64, &sc.ws, MX_GEMM_EMULATED,
                            &info) && strstr(info.msg, "NULL"), "a NULL e8m0: %s", info.msg);
    TEST_CHECK(!mx_gemm_try(&g_ctx, out, FP8_OUT_BF16, 32, 0.0f, as_mx(A), as_mx(A), 64, 64, 64, &sc.ws,
                            MX_GEMM_EMULATED, &info) && strstr(info.msg, "ldo"), "ldo 32 < rows_q 64: %s", info.msg);
    {  // MX next to a tensor scale
        float *s1 = dalloc<float>(1);
        Fp8Mat a, t;
        memset(&a, 0, sizeof a), memset(&t, 0, sizeof t);
        a.q = A.q, a.dtype = FP8_E4M3, a.scaling = FP8_SCALE_MX32, a.e8m0 = sc.ws.sp;
        t.q = A.q, t.dtype = FP8_E4M3, t.scaling = FP8_SCALE_TENSOR, t.scale_inv = s1;
        TEST_CHECK(!fp8_gemm_try(&g_ctx, out, FP8_OUT_BF16, 64, 0.0f, a, t, 64, 64, 64, 0, &info) &&
                       (strstr(info.msg, "sm_100") || strstr(info.msg, "pairs only")), "MX x tensor: %s", info.msg);
        cudaFree(s1);
    }
    CUDA_CHECK(cudaStreamSynchronize(g_s));
    cudaFree(out);
    sc.free_all();
    free_mx(A), free_mx(B);
}

// ---------------------------------------------------------------- 3. end to end
static bf16 *upload_bf16(const float *h, size_t n) {
    bf16 *t = (bf16 *)ao_malloc(n * sizeof(bf16) + 2), *d = dalloc<bf16>(n);
    for (size_t i = 0; i < n; i++) t[i] = __float2bfloat16(h[i]);
    h2d(d, t, n * sizeof(bf16));
    free(t);
    return d;
}
static float *rand_matrix(int rows, int cols, float mag) {  // rows spanning 2^-3..2^3
    float *h = (float *)ao_malloc((size_t)rows * cols * sizeof(float) + 4);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) h[(size_t)r * cols + c] = bf16r(ldexpf(mag, r % 7 - 3) * test_rand_uniform(&g_rng));
    return h;
}
static double rel_frob(const float *got, const float *ref, size_t n) {
    double se = 0, sr = 0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] != got[i]) return INFINITY;
        se += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]), sr += (double)ref[i] * ref[i];
    }
    return sr > 0 ? sqrt(se / sr) : sqrt(se);
}

static void test_end_to_end(int N, int K, int M) {
    float *hx = rand_matrix(N, K, 2.0f), *hw = rand_matrix(M, K, 0.05f), *hg = rand_matrix(N, M, 1e-3f);
    bf16 *x = upload_bf16(hx, (size_t)N * K), *w = upload_bf16(hw, (size_t)M * K), *g = upload_bf16(hg, (size_t)N * M);
    bf16 *y_ref = dalloc<bf16>((size_t)N * M), *dx_ref = dalloc<bf16>((size_t)N * K);
    float *dw_ref = dalloc<float>((size_t)M * K);
    CUDA_CHECK(cudaMemsetAsync(dw_ref, 0, (size_t)M * K * 4, g_s));
    matmul_forward(&g_ctx, y_ref, x, w, NULL, N, K, M, M);
    matmul_backward(&g_ctx, dx_ref, dw_ref, NULL, g, M, x, w, N, K, M, 0);
    const bf16 *src[FP8_NOPERANDS] = {x, w, g, w, g, x};
    const int rows[FP8_NOPERANDS] = {N, M, N, M, N, N}, cols[FP8_NOPERANDS] = {K, K, M, K, M, K};
    uint8_t *q[FP8_NOPERANDS], *e[FP8_NOPERANDS];
    MxMat m[FP8_NOPERANDS];
    for (int op = 0; op < FP8_NOPERANDS; op++) {
        const Fp8CastSpec sp = fp8_recipe_cast(FP8_RECIPE_MXFP8, (Fp8Operand)op);
        const size_t n = (size_t)rows[op] * cols[op];
        q[op] = dalloc<uint8_t>(n), e[op] = dalloc<uint8_t>(fp8_scale_count(sp, rows[op], cols[op], NULL));
        fp8_cast_operand(q[op], NULL, e[op], src[op], rows[op], cols[op], sp, NULL, g_s);
        m[op].q = q[op], m[op].e8m0 = e[op], m[op].dtype = sp.dtype;
    }
    // every GEMM's operands: P x [N, K], g [N, M], g^T [M, N]; Q W [M, K], W^T [K, M], x^T [K, N]
    const size_t big = std::max((size_t)N * K, std::max((size_t)N * M, (size_t)M * K));
    size_t swz = 0;
    const int sr[6] = {N, N, M, M, K, K}, sk[6] = {K, M, N, K, M, N};
    for (int i = 0; i < 6; i++) swz = std::max(swz, mx_swizzled_bytes(sr[i], ceil_div(sk[i], MX_BLOCK)));
    Scratch sc = alloc_scratch(big, big, swz, swz);
    bf16 *y = dalloc<bf16>((size_t)N * M), *dx = dalloc<bf16>((size_t)N * K);
    float *dw = dalloc<float>((size_t)M * K), *dw2 = dalloc<float>((size_t)M * K);
    CUDA_CHECK(cudaMemsetAsync(dw, 0, (size_t)M * K * 4, g_s));
    CUDA_CHECK(cudaMemsetAsync(dw2, 0, (size_t)M * K * 4, g_s));
    const char *names[3] = {"forward", "grad_input", "grad_weight"};
    const int ok = guarded([&] {
        mx_gemm(&g_ctx, y, FP8_OUT_BF16, M, 0.0f, m[FP8_X_FWD], m[FP8_W_FWD], N, M, K, &sc.ws);
        mx_gemm(&g_ctx, dx, FP8_OUT_BF16, K, 0.0f, m[FP8_G_GI], m[FP8_W_GI], N, K, M, &sc.ws);
        mx_gemm(&g_ctx, dw, FP8_OUT_F32, K, 1.0f, m[FP8_G_GW], m[FP8_X_GW], M, K, N, &sc.ws);
        mx_gemm(&g_ctx, dw2, FP8_OUT_F32, K, 1.0f, m[FP8_G_GW], m[FP8_X_GW], M, K, N, &sc.ws);
    });
    TEST_CHECK(ok, "e2e mxfp8 N=%d K=%d M=%d: failed: %s", N, K, M, g_fail_msg);
    if (ok) {
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        const size_t n[3] = {(size_t)N * M, (size_t)N * K, (size_t)M * K};
        const void *got[3] = {y, dx, dw}, *want[3] = {y_ref, dx_ref, dw_ref};
        for (int gm = 0; gm < 3; gm++) {
            const Fp8OutType ot = gm == 2 ? FP8_OUT_F32 : FP8_OUT_BF16;
            float *a = download(got[gm], ot, n[gm]), *b = download(want[gm], ot, n[gm]);
            const double err = rel_frob(a, b, n[gm]);
            TEST_CHECK(err <= E2E_TOL, "e2e mxfp8 %s N=%d K=%d M=%d: relative Frobenius error vs bf16 %.4f > %.2f",
                       names[gm], N, K, M, err, E2E_TOL);
            printf("  e2e mxfp8 %-11s N=%d K=%d M=%d [%s]: |mx - bf16| / |bf16| = %.4f (bound %.2f)\n", names[gm], N, K,
                   M, mx_gemm_path(&g_ctx) == MX_GEMM_NATIVE ? "native" : "emulated", err, E2E_TOL);
            free(a), free(b);
        }
        float *a = download(dw, FP8_OUT_F32, n[2]), *b = download(dw2, FP8_OUT_F32, n[2]);
        TEST_CHECK(!memcmp(a, b, n[2] * 4), "e2e mxfp8 N=%d K=%d M=%d: the same grad_weight twice differs", N, K, M);
        free(a), free(b);
    }
    for (int op = 0; op < FP8_NOPERANDS; op++) cudaFree(q[op]), cudaFree(e[op]);
    sc.free_all();
    free(hx), free(hw), free(hg);
    cudaFree(x), cudaFree(w), cudaFree(g), cudaFree(y_ref), cudaFree(dx_ref), cudaFree(dw_ref);
    cudaFree(y), cudaFree(dx), cudaFree(dw), cudaFree(dw2);
}

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        test_skip("gpu_test_mxgemm: no CUDA GPU");
        return test_summary();
    }
    gpu_ctx_init(&g_ctx, 0);
    g_s = g_ctx.stream;
    printf("device: %s (sm_%d%d), cuBLASLt %zu; MX GEMM path: %s\n", g_ctx.prop.name, g_ctx.prop.major,
           g_ctx.prop.minor, cublasLtGetVersion(), mx_gemm_path_name(mx_gemm_path(&g_ctx)));
    printf("synthetic MX operands vs the float64 dequantized reference\n");
    // (rows_p, rows_q, kd) of forward / grad_input / grad_weight at N=64 K=96 M=160, N=256 K=512 M=384,
    // and a kd with a partial 32-block (48 tokens: the emulated path takes it, torchao would not)
    const int cases[][3] = {{64, 160, 96}, {64, 96, 160}, {160, 96, 64}, {256, 384, 512},
                            {256, 512, 384}, {384, 512, 256}, {96, 64, 48}};
    const MxGemmPath paths[2] = {MX_GEMM_EMULATED, MX_GEMM_NATIVE};
    for (int pi = 0; pi < (g_ctx.prop.major >= 10 ? 2 : 1); pi++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            if (paths[pi] == MX_GEMM_EMULATED || cases[i][2] % 32 == 0)
                run_case("mx gemm", cases[i][0], cases[i][1], cases[i][2], paths[pi]);
    printf("refusals\n");
    test_refusals();
    printf("end to end: bf16 -> mx_cast (mxfp8 recipe) -> MX GEMM vs the bf16 GEMM\n");
    test_end_to_end(256, 512, 384);
    test_end_to_end(64, 96, 160);
    gpu_ctx_free(&g_ctx);
    return test_summary();
}
