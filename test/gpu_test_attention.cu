// GPU causal GQA attention (ops/attention.cuh) against the CPU reference (ops/attention.c):
// forward out and lse, backward dq/dk/dv, for the hand-written kernels and for cuDNN SDPA
// when present; every output buffer is poisoned with NaN first so an unwritten element
// fails. Also: bitwise determinism of the kernel backward, cuDNN vs kernel directly, the
// impl=cuDNN error path, and forward/backward timings (ms, TFLOP/s) on the largest shape.
// Shapes are odd on purpose: T = 1, 7, 33, 257 (tails), hd = 12 (scalar path), MHA/GQA/MQA.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/gpu.h"
#include "../ops/attention.cuh"
#include "../ops/attention.h"
#include "gpu_test.cuh"
extern "C" {
#include "test.h"
}

#define TOL_GRAD_BF16 3e-2
#define TOL_LSE 1e-3  // lse is fp32 arithmetic on the same bf16 inputs: only rounding differs

typedef struct {
    int B, T, H, KV, hd;
} Shape;

static uint64_t g_rng = 0xA77E17104ull;

static float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }
static float *rand_bf16(size_t n, float scale) {
    float *x = (float *)ao_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = bf16_round(scale * test_rand_uniform(&g_rng));
    return x;
}
static bf16 *to_bf16(const float *x, size_t n) {
    bf16 *y = (bf16 *)ao_malloc(n * sizeof(bf16));
    for (size_t i = 0; i < n; i++) y[i] = __float2bfloat16(x[i]);
    return y;
}
static float *dev_to_f32(const bf16 *d, size_t n) {
    bf16 *h = (bf16 *)ao_malloc(n * sizeof(bf16));
    CUDA_CHECK(cudaMemcpy(h, d, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    float *f = (float *)ao_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) f[i] = __bfloat162float(h[i]);
    free(h);
    return f;
}
static void *dev_alloc(size_t bytes) {
    void *p;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
}
// bf16/fp32 NaN; on the compute stream (g_s), ahead of the kernels that must overwrite it
static void poison(void *d, size_t bytes) { CUDA_CHECK(cudaMemsetAsync(d, 0xFF, bytes, g_s)); }

// Packed [B*T, (H+2KV)*hd] <-> separate q [B,T,H,hd], k/v [B,T,KV,hd].
static void pack(float *qkv, const float *q, const float *k, const float *v, Shape s) {
    const size_t rs = (size_t)(s.H + 2 * s.KV) * s.hd, qw = (size_t)s.H * s.hd, kw = (size_t)s.KV * s.hd;
    for (size_t r = 0; r < (size_t)s.B * s.T; r++) {
        memcpy(qkv + r * rs, q + r * qw, qw * sizeof(float));
        memcpy(qkv + r * rs + qw, k + r * kw, kw * sizeof(float));
        memcpy(qkv + r * rs + qw + kw, v + r * kw, kw * sizeof(float));
    }
}
static void unpack(float *q, float *k, float *v, const float *qkv, Shape s) {
    const size_t rs = (size_t)(s.H + 2 * s.KV) * s.hd, qw = (size_t)s.H * s.hd, kw = (size_t)s.KV * s.hd;
    for (size_t r = 0; r < (size_t)s.B * s.T; r++) {
        memcpy(q + r * qw, qkv + r * rs, qw * sizeof(float));
        memcpy(k + r * kw, qkv + r * rs + qw, kw * sizeof(float));
        memcpy(v + r * kw, qkv + r * rs + qw + kw, kw * sizeof(float));
    }
}

// Rows of lse checked: all of them for small T, every 17th (and the last) for long ones.
static int lse_stride(int T) { return T > 300 ? 17 : 1; }
// Reference lse[b,h,t] = log sum_{s<=t} exp(q_t.k_s / sqrt(hd)) in double, on the sampled rows.
static float *lse_reference(const float *q, const float *k, Shape s, size_t *n_out) {
    const int st = lse_stride(s.T), per = (s.T - 1) / st + 1 + ((s.T - 1) % st != 0);
    const size_t n = (size_t)s.B * s.H * per;
    float *ref = (float *)ao_malloc(n * sizeof(float));
    const double scale = 1.0 / sqrt((double)s.hd);
#pragma omp parallel for collapse(2)
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.H; h++)
            for (int i = 0; i < per; i++) {
                const int t = i * st < s.T ? i * st : s.T - 1, kvh = h / (s.H / s.KV);
                const float *qt = q + (((size_t)b * s.T + t) * s.H + h) * s.hd;
                double mx = -INFINITY, sum = 0, *sc = (double *)malloc((t + 1) * sizeof(double));
                for (int j = 0; j <= t; j++) {
                    const float *kj = k + (((size_t)b * s.T + j) * s.KV + kvh) * s.hd;
                    double d = 0;
                    for (int x = 0; x < s.hd; x++) d += (double)qt[x] * kj[x];
                    sc[j] = d * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j <= t; j++) sum += exp(sc[j] - mx);
                free(sc);
                ref[((size_t)b * s.H + h) * per + i] = (float)(mx + log(sum));
            }
    *n_out = n;
    return ref;
}
static float *lse_gather(const float *d_lse, Shape s, size_t n) {
    const int st = lse_stride(s.T), per = (int)(n / ((size_t)s.B * s.H));
    float *all = (float *)ao_malloc((size_t)s.B * s.H * s.T * sizeof(float));
    float *g = (float *)ao_malloc(n * sizeof(float));
    CUDA_CHECK(cudaMemcpy(all, d_lse, (size_t)s.B * s.H * s.T * sizeof(float), cudaMemcpyDeviceToHost));
    for (size_t bh = 0; bh < (size_t)s.B * s.H; bh++)
        for (int i = 0; i < per; i++) g[bh * per + i] = all[bh * s.T + (i * st < s.T ? i * st : s.T - 1)];
    free(all);
    return g;
}

// TEST_CLOSE, except where the reference is identically zero (dq and dk at T = 1: softmax
// over one key has zero gradient), where the scale-free error is undefined: then the result
// must be zero up to fp32 rounding noise.
static double check_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double mr = 0, mg = 0;
    for (size_t i = 0; i < n; i++) {
        mr = fmax(mr, fabs((double)ref[i]));
        if (!(fabs((double)got[i]) <= mg)) mg = fabs((double)got[i]);  // NaN sticks
    }
    if (mr > 0) return TEST_CLOSE(what, got, ref, n, tol);
    TEST_CHECK(mg <= 1e-5, "%s: reference is all zero but max |got| = %g", what, mg);
    return mg;
}

typedef struct {
    float *out, *dqkv;  // host copies of one impl's results, for the cross-check
} Result;

static const char *impl_name(AttnImpl impl) {
    return impl == ATTN_CUDNN ? "cudnn" : "kernel";
}

static void run_case(GpuCtx *ctx, Shape s, int use_cudnn) {
    const size_t nq = (size_t)s.B * s.T * s.H * s.hd, nkv = (size_t)s.B * s.T * s.KV * s.hd, nqkv = nq + 2 * nkv;
    const size_t natt = (size_t)s.B * s.H * s.T * s.T, nlse = (size_t)s.B * s.H * s.T;
    float *q = rand_bf16(nq, 2.f), *k = rand_bf16(nkv, 2.f), *v = rand_bf16(nkv, 1.f), *dout = rand_bf16(nq, 1.f);
    float *qkv = (float *)ao_malloc(nqkv * sizeof(float));
    pack(qkv, q, k, v, s);

    // CPU reference (double accumulation inside).
    float *out_ref = (float *)ao_calloc(nq, sizeof(float)), *att = (float *)ao_malloc(natt * sizeof(float));
    float *dq_ref = (float *)ao_calloc(nq, sizeof(float)), *dk_ref = (float *)ao_calloc(nkv, sizeof(float));
    float *dv_ref = (float *)ao_calloc(nkv, sizeof(float));
    attention_forward_cpu(out_ref, att, q, k, v, s.B, s.T, s.H, s.KV, s.hd);
    attention_backward_cpu(dq_ref, dk_ref, dv_ref, dout, q, k, v, att, s.B, s.T, s.H, s.KV, s.hd);
    size_t nls;
    float *lse_ref = lse_reference(q, k, s, &nls);

    bf16 *h_qkv = to_bf16(qkv, nqkv), *h_dout = to_bf16(dout, nq);
    bf16 *d_qkv = (bf16 *)dev_alloc(nqkv * 2), *d_dout = (bf16 *)dev_alloc(nq * 2), *d_out = (bf16 *)dev_alloc(nq * 2);
    bf16 *d_dqkv = (bf16 *)dev_alloc(nqkv * 2), *d_dqkv2 = (bf16 *)dev_alloc(nqkv * 2);
    float *d_lse = (float *)dev_alloc(nlse * 4);
    h2d(d_qkv, h_qkv, nqkv * 2);
    h2d(d_dout, h_dout, nq * 2);

    printf("B=%d T=%d H=%d KV=%d hd=%d\n", s.B, s.T, s.H, s.KV, s.hd);
    Result res[2] = {{NULL, NULL}, {NULL, NULL}};
    const AttnImpl impls[2] = {ATTN_KERNEL, ATTN_CUDNN};
    for (int ii = 0; ii < 1 + use_cudnn; ii++) {
        const AttnImpl impl = impls[ii];
        char what[160];
        poison(d_out, nq * 2), poison(d_lse, nlse * 4), poison(d_dqkv, nqkv * 2);
        attention_forward(ctx, d_out, d_lse, d_qkv, s.B, s.T, s.H, s.KV, s.hd, impl);
        CUDA_CHECK(cudaDeviceSynchronize());
        float *out = dev_to_f32(d_out, nq), *lse = lse_gather(d_lse, s, nls);
        snprintf(what, sizeof what, "%s out (B=%d T=%d H=%d KV=%d hd=%d)", impl_name(impl), s.B, s.T, s.H, s.KV, s.hd);
        const double e_out = TEST_CLOSE(what, out, out_ref, nq, TOL_BF16);
        snprintf(what, sizeof what, "%s lse (T=%d hd=%d)", impl_name(impl), s.T, s.hd);
        const double e_lse = TEST_CLOSE(what, lse, lse_ref, nls, TOL_LSE);

        attention_backward(ctx, d_dqkv, d_dout, d_qkv, d_out, d_lse, s.B, s.T, s.H, s.KV, s.hd, impl);
        CUDA_CHECK(cudaDeviceSynchronize());
        float *dqkv = dev_to_f32(d_dqkv, nqkv);
        float *dq = (float *)ao_malloc(nq * 4), *dk = (float *)ao_malloc(nkv * 4), *dv = (float *)ao_malloc(nkv * 4);
        unpack(dq, dk, dv, dqkv, s);
        double e[3];
        const float *got[3] = {dq, dk, dv}, *ref[3] = {dq_ref, dk_ref, dv_ref};
        const size_t n[3] = {nq, nkv, nkv};
        const char *names[3] = {"dq", "dk", "dv"};
        for (int j = 0; j < 3; j++) {
            snprintf(what, sizeof what, "%s %s (B=%d T=%d H=%d KV=%d hd=%d)", impl_name(impl), names[j], s.B, s.T, s.H,
                     s.KV, s.hd);
            e[j] = check_close(what, got[j], ref[j], n[j], TOL_GRAD_BF16);
        }
        printf("  %-6s out %.2e  lse %.2e  dq %.2e  dk %.2e  dv %.2e\n", impl_name(impl), e_out, e_lse, e[0], e[1],
               e[2]);

        // The kernel's second backward must be bit-identical (cuDNN's need not be: its backward
        // is not bitwise reproducible, whatever numerical notes its engine carries).
        if (impl == ATTN_KERNEL) {
            poison(d_dqkv2, nqkv * 2);
            attention_backward(ctx, d_dqkv2, d_dout, d_qkv, d_out, d_lse, s.B, s.T, s.H, s.KV, s.hd, impl);
            CUDA_CHECK(cudaDeviceSynchronize());
            bf16 *a = (bf16 *)ao_malloc(nqkv * 2), *b2 = (bf16 *)ao_malloc(nqkv * 2);
            CUDA_CHECK(cudaMemcpy(a, d_dqkv, nqkv * 2, cudaMemcpyDeviceToHost));
            CUDA_CHECK(cudaMemcpy(b2, d_dqkv2, nqkv * 2, cudaMemcpyDeviceToHost));
            TEST_CHECK(memcmp(a, b2, nqkv * 2) == 0, "%s backward is not bitwise deterministic (T=%d hd=%d)",
                       impl_name(impl), s.T, s.hd);
            free(a), free(b2);
        }
        res[ii].out = out, res[ii].dqkv = dqkv;
        free(lse), free(dq), free(dk), free(dv);
    }
    if (use_cudnn) {  // cuDNN and the kernel against each other, no CPU in between
        TEST_CLOSE("cudnn vs kernel out", res[1].out, res[0].out, nq, TOL_BF16);
        TEST_CLOSE("cudnn vs kernel dqkv", res[1].dqkv, res[0].dqkv, nqkv, TOL_GRAD_BF16);
    }
    for (int ii = 0; ii < 2; ii++) free(res[ii].out), free(res[ii].dqkv);
    CUDA_CHECK(cudaFree(d_qkv));
    CUDA_CHECK(cudaFree(d_dout));
    CUDA_CHECK(cudaFree(d_out));
    CUDA_CHECK(cudaFree(d_dqkv));
    CUDA_CHECK(cudaFree(d_dqkv2));
    CUDA_CHECK(cudaFree(d_lse));
    free(q), free(k), free(v), free(dout), free(qkv), free(out_ref), free(att), free(dq_ref), free(dk_ref);
    free(dv_ref), free(lse_ref), free(h_qkv), free(h_dout);
}

// Median-free but warmed-up event timing of `iters` back-to-back calls.
static void bench(GpuCtx *ctx, Shape s, AttnImpl impl) {
    const size_t nq = (size_t)s.B * s.T * s.H * s.hd, nqkv = nq + 2 * (size_t)s.B * s.T * s.KV * s.hd;
    float *x = rand_bf16(nqkv, 2.f), *g = rand_bf16(nq, 1.f);
    bf16 *hx = to_bf16(x, nqkv), *hg = to_bf16(g, nq);
    bf16 *d_qkv = (bf16 *)dev_alloc(nqkv * 2), *d_dout = (bf16 *)dev_alloc(nq * 2), *d_out = (bf16 *)dev_alloc(nq * 2);
    bf16 *d_dqkv = (bf16 *)dev_alloc(nqkv * 2);
    float *d_lse = (float *)dev_alloc((size_t)s.B * s.H * s.T * 4);
    h2d(d_qkv, hx, nqkv * 2);
    h2d(d_dout, hg, nq * 2);
    cudaEvent_t e0, e1, e2;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaEventCreate(&e2));
    const int warm = 3, iters = 20;
    for (int i = 0; i < warm; i++) {
        attention_forward(ctx, d_out, d_lse, d_qkv, s.B, s.T, s.H, s.KV, s.hd, impl);
        attention_backward(ctx, d_dqkv, d_dout, d_qkv, d_out, d_lse, s.B, s.T, s.H, s.KV, s.hd, impl);
    }
    CUDA_CHECK(cudaEventRecord(e0, ctx->stream));
    for (int i = 0; i < iters; i++) attention_forward(ctx, d_out, d_lse, d_qkv, s.B, s.T, s.H, s.KV, s.hd, impl);
    CUDA_CHECK(cudaEventRecord(e1, ctx->stream));
    for (int i = 0; i < iters; i++)
        attention_backward(ctx, d_dqkv, d_dout, d_qkv, d_out, d_lse, s.B, s.T, s.H, s.KV, s.hd, impl);
    CUDA_CHECK(cudaEventRecord(e2, ctx->stream));
    CUDA_CHECK(cudaEventSynchronize(e2));
    float ms_f, ms_b;
    CUDA_CHECK(cudaEventElapsedTime(&ms_f, e0, e1));
    CUDA_CHECK(cudaEventElapsedTime(&ms_b, e1, e2));
    ms_f /= iters, ms_b /= iters;
    // Causal: half of the T x T scores; 2 matmuls of 2*T*T*hd flops each, backward 2.5x.
    const double fl = 2.0 * 2.0 * s.B * s.H * (double)s.T * s.T * s.hd / 2.0;
    printf("  time %-6s B=%d T=%d H=%d KV=%d hd=%d: fwd %.3f ms (%.0f TFLOP/s)  bwd %.3f ms (%.0f TFLOP/s)\n",
           impl_name(impl), s.B, s.T, s.H, s.KV, s.hd, ms_f, fl / ms_f * 1e-9, ms_b, 2.5 * fl / ms_b * 1e-9);
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    CUDA_CHECK(cudaEventDestroy(e2));
    CUDA_CHECK(cudaFree(d_qkv));
    CUDA_CHECK(cudaFree(d_dout));
    CUDA_CHECK(cudaFree(d_out));
    CUDA_CHECK(cudaFree(d_dqkv));
    CUDA_CHECK(cudaFree(d_lse));
    free(x), free(g), free(hx), free(hg);
}

typedef struct {
    GpuCtx *ctx;
} FailArg;
static void cudnn_on_odd_hd(void *p) {  // hd = 12 is not a multiple of 8: impl=cuDNN must refuse
    GpuCtx *ctx = ((FailArg *)p)->ctx;
    attention_forward(ctx, NULL, NULL, NULL, 1, 4, 2, 1, 12, ATTN_CUDNN);
}

int main(void) {
    GpuCtx ctx;
    gpu_ctx_init(&ctx, 0);
    g_s = ctx.stream;
    printf("GPU %s (sm_%d%d), cuDNN %s\n", ctx.prop.name, ctx.prop.major, ctx.prop.minor,
           attention_cudnn_supported(&ctx, 64) ? "available" : "not available");
    const Shape shapes[] = {{1, 1, 1, 1, 64},    {2, 7, 4, 2, 12},    {1, 33, 6, 2, 64},
                            {2, 128, 4, 1, 128}, {1, 257, 8, 8, 64},  {1, 2048, 16, 4, 128}};
    const int n = (int)(sizeof shapes / sizeof shapes[0]);
    for (int i = 0; i < n; i++) run_case(&ctx, shapes[i], attention_cudnn_supported(&ctx, shapes[i].hd));

    FailArg fa = {&ctx};
    TEST_EXPECT_FAIL("impl=cuDNN with hd=12", cudnn_on_odd_hd, &fa, "cuDNN");

    const Shape big = shapes[n - 1], train = {4, 2048, 32, 8, 128};
    bench(&ctx, big, ATTN_KERNEL);
    if (attention_cudnn_supported(&ctx, big.hd)) bench(&ctx, big, ATTN_CUDNN);
    bench(&ctx, train, ATTN_KERNEL);
    if (attention_cudnn_supported(&ctx, train.hd)) bench(&ctx, train, ATTN_CUDNN);
    gpu_ctx_free(&ctx);
    return test_summary();
}
