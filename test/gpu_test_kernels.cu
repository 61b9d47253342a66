// Every GPU kernel against its CPU reference (ops/*.c, fp32) on bf16-rounded random
// inputs, so both sides see exactly the same values; bitwise determinism where the op
// promises it. Shapes are odd on purpose (N=1, D=13, hd=6, V=32003, K=13) and cover both
// the 128-bit and the scalar paths. Errors are scale-free (max |got-ref| / max |ref|).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test.cuh"
#include "../ops/cross_entropy.cuh"
#include "../ops/embedding.cuh"
#include "../ops/matmul.cuh"
#include "../ops/rmsnorm.cuh"
#include "../ops/rope.cuh"
#include "../ops/swiglu.cuh"
#include "../optim/adamw.cuh"
extern "C" {
#include "../ops/cross_entropy.h"
#include "../ops/embedding.h"
#include "../ops/matmul.h"
#include "../ops/rmsnorm.h"
#include "../ops/rope.h"
#include "../ops/swiglu.h"
#include "test.h"
}

static uint64_t g_rng = 0xC0FFEEull;
static GpuCtx g_ctx;

// ---------------------------------------------------------------- host/device helpers
static float *hrand(size_t n, float scale) {  // bf16-representable values
    float *x = (float *)ao_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = bf16r(scale * test_rand_uniform(&g_rng));
    return x;
}
static float *hzeros(size_t n) { return (float *)ao_calloc(n ? n : 1, sizeof(float)); }
static float *hcopy(const float *x, size_t n) {
    float *y = (float *)ao_malloc((n ? n : 1) * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}
static void up_bf16(bf16 *d, const float *h, size_t n) {
    bf16 *t = (bf16 *)ao_malloc((n ? n : 1) * sizeof(bf16));
    for (size_t i = 0; i < n; i++) t[i] = __float2bfloat16(h[i]);
    h2d(d, t, n * sizeof(bf16));
    free(t);
}
static bf16 *dev_bf16(const float *h, size_t n) {
    bf16 *d = dalloc<bf16>(n);
    up_bf16(d, h, n);
    return d;
}
static float *dev_f32(const float *h, size_t n) {
    float *d = dalloc<float>(n);
    h2d(d, h, n * sizeof(float));
    return d;
}
static float *get_bf16(const bf16 *d, size_t n) {
    bf16 *t = (bf16 *)ao_malloc((n ? n : 1) * sizeof(bf16));
    d2h(t, d, n * sizeof(bf16));
    float *h = (float *)ao_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = __bfloat162float(t[i]);
    free(t);
    return h;
}
static float *get_f32(const float *d, size_t n) {
    float *h = (float *)ao_malloc((n ? n : 1) * sizeof(float));
    d2h(h, d, n * sizeof(float));
    return h;
}
static int same_bits(const void *a, const void *b, size_t bytes) { return memcmp(a, b, bytes) == 0; }
static void report(const char *what, double err) { printf("  %-58s err %.2e\n", what, err); }

// ---------------------------------------------------------------- embedding
static void test_embedding(int N, int V, int D) {
    char w[128];
    int32_t *tok = (int32_t *)ao_malloc(N * sizeof(int32_t));
    for (int n = 0; n < N; n++) {  // half the positions from 5 tokens: long buckets
        uint64_t u = test_rand_u64(&g_rng);
        tok[n] = (int32_t)((u >> 1) % (uint64_t)((u & 1) && V > 5 ? 5 : V));
    }
    float *wte = hrand((size_t)V * D, 1), *ref = hzeros((size_t)N * D);
    int32_t *dtok = dalloc<int32_t>(N);
    h2d(dtok, tok, N * sizeof(int32_t));
    bf16 *dwte = dev_bf16(wte, (size_t)V * D), *dout = dalloc<bf16>((size_t)N * D);
    embedding_forward(dout, dtok, dwte, N, D, g_s);
    float *got = get_bf16(dout, (size_t)N * D);
    embedding_forward_cpu(ref, tok, wte, N, V, D);
    snprintf(w, sizeof w, "embedding fwd N=%d V=%d D=%d", N, V, D);
    report(w, TEST_CLOSE(w, got, ref, (size_t)N * D, 0.0));

    float *dy = hrand((size_t)N * D, 1), *g0 = hrand((size_t)V * D, 1), *gref = hcopy(g0, (size_t)V * D);
    int32_t *sp = (int32_t *)ao_malloc(N * 4), *bs = (int32_t *)ao_malloc((N + 1) * 4), *bt = (int32_t *)ao_malloc(N * 4);
    int nb = embedding_buckets_cpu(sp, bs, bt, tok, N, V);
    int32_t *dsp = dalloc<int32_t>(N), *dbs = dalloc<int32_t>(N + 1), *dbt = dalloc<int32_t>(N);
    h2d(dsp, sp, N * 4), h2d(dbs, bs, (N + 1) * 4), h2d(dbt, bt, N * 4);
    bf16 *ddy = dev_bf16(dy, (size_t)N * D);
    float *dg = dev_f32(g0, (size_t)V * D);
    embedding_backward(dg, ddy, dsp, dbs, dbt, nb, D, g_s);
    float *g1 = get_f32(dg, (size_t)V * D);
    embedding_backward_cpu(gref, dy, tok, N, V, D);
    snprintf(w, sizeof w, "embedding bwd N=%d V=%d D=%d (%d buckets)", N, V, D, nb);
    report(w, TEST_CLOSE(w, g1, gref, (size_t)V * D, TOL_F32));
    h2d(dg, g0, (size_t)V * D * 4);
    embedding_backward(dg, ddy, dsp, dbs, dbt, nb, D, g_s);
    float *g2 = get_f32(dg, (size_t)V * D);
    TEST_CHECK(same_bits(g1, g2, (size_t)V * D * 4), "embedding bwd N=%d D=%d not bitwise reproducible", N, D);
    // Accumulating onto an earlier micro-batch's gradient adds this batch's sum in one fp32
    // addition per element: fl(acc + sum), the value two ranks' all-reduce of their own
    // micro-batches forms (ZeRO-1 on 2 GPUs == 1 GPU accumulating 2 micro-batches, bit for bit;
    // test/dist_test.sh). acc with full fp32 significands, as an accumulated gradient has, so
    // that adding the rows to it one by one would round differently.
    const size_t VD = (size_t)V * D;
    float *acc = hcopy(g0, VD);
    for (size_t i = 0; i < VD; i++) acc[i] *= 4.0f / 3.0f;
    CUDA_CHECK(cudaMemsetAsync(dg, 0, VD * 4, g_s));
    embedding_backward(dg, ddy, dsp, dbs, dbt, nb, D, g_s);
    float *sum = get_f32(dg, VD), *want = hcopy(acc, VD);  // rows of tokens not in the batch are not written
    for (int k = 0; k < nb; k++)
        for (size_t i = (size_t)bt[k] * D; i < (size_t)(bt[k] + 1) * D; i++) want[i] = acc[i] + sum[i];
    h2d(dg, acc, VD * 4);
    embedding_backward(dg, ddy, dsp, dbs, dbt, nb, D, g_s);
    float *onto = get_f32(dg, VD);
    size_t ndiff = 0;
    for (size_t i = 0; i < VD; i++) ndiff += memcmp(&onto[i], &want[i], 4) != 0;
    TEST_CHECK(ndiff == 0, "embedding bwd N=%d V=%d D=%d onto an accumulated gradient: %zu of %zu elements differ from "
               "accumulated + (bwd from zero)", N, V, D, ndiff, VD);
    free(tok), free(wte), free(ref), free(got), free(dy), free(g0), free(gref), free(sp), free(bs), free(bt);
    free(g1), free(g2), free(acc), free(want), free(sum), free(onto);
    cudaFree(dtok), cudaFree(dwte), cudaFree(dout), cudaFree(dsp), cudaFree(dbs), cudaFree(dbt), cudaFree(ddy);
    cudaFree(dg);
}

// ---------------------------------------------------------------- rmsnorm
static void test_rmsnorm(int N, int D) {
    char w[128];
    size_t nd = (size_t)N * D;
    const float eps = 1e-5f;
    float *a = hrand(nd, 2), *b = hrand(nd, 1), *wt = hrand(D, 1), *x = hzeros(nd);
    for (size_t i = 0; i < nd; i++) x[i] = bf16r(a[i] + b[i]);  // the fused op's rounded residual
    bf16 *da = dev_bf16(a, nd), *db = dev_bf16(b, nd), *dw = dev_bf16(wt, D), *dx = dalloc<bf16>(nd);
    bf16 *dy = dalloc<bf16>(nd);
    float *drstd = dalloc<float>(N);
    float *ref = hzeros(nd), *rref = hzeros(N);
    rmsnorm_forward_cpu(ref, rref, x, wt, N, D, eps);

    residual_rmsnorm_forward(dx, dy, drstd, da, db, dw, N, D, eps, g_s);
    float *gx = get_bf16(dx, nd), *gy = get_bf16(dy, nd), *gr = get_f32(drstd, N);
    snprintf(w, sizeof w, "residual_rmsnorm fwd N=%d D=%d: resid", N, D);
    report(w, TEST_CLOSE(w, gx, x, nd, 0.0));
    snprintf(w, sizeof w, "residual_rmsnorm fwd N=%d D=%d: out", N, D);
    report(w, TEST_CLOSE(w, gy, ref, nd, TOL_BF16));
    snprintf(w, sizeof w, "residual_rmsnorm fwd N=%d D=%d: rstd", N, D);
    report(w, TEST_CLOSE(w, gr, rref, N, TOL_F32));
    free(gy), free(gr);
    rmsnorm_forward(dy, drstd, dx, dw, N, D, eps, g_s);
    gy = get_bf16(dy, nd), gr = get_f32(drstd, N);
    snprintf(w, sizeof w, "rmsnorm fwd N=%d D=%d: out", N, D);
    report(w, TEST_CLOSE(w, gy, ref, nd, TOL_BF16));
    snprintf(w, sizeof w, "rmsnorm fwd N=%d D=%d: rstd", N, D);
    report(w, TEST_CLOSE(w, gr, rref, N, TOL_F32));

    // Backward with the GPU's rstd on both sides; dinp aliases dresid as in the model.
    float *dout = hrand(nd, 1), *dres = hrand(nd, 1), *dw0 = hrand(D, 1);
    float *dxref = hcopy(dres, nd), *dwref = hcopy(dw0, D);
    rmsnorm_backward_cpu(dxref, dwref, dout, x, wt, gr, N, D);
    bf16 *ddout = dev_bf16(dout, nd), *dres_d = dalloc<bf16>(nd);
    float *ddw = dalloc<float>(D), *scratch = dalloc<float>(rmsnorm_backward_scratch_floats(N, D));
    float *gdx[2], *gdw[2];
    for (int rep = 0; rep < 2; rep++) {
        up_bf16(dres_d, dres, nd);
        h2d(ddw, dw0, D * 4);
        rmsnorm_backward(dres_d, ddw, scratch, ddout, dres_d, dx, dw, drstd, N, D, g_s);
        gdx[rep] = get_bf16(dres_d, nd), gdw[rep] = get_f32(ddw, D);
    }
    snprintf(w, sizeof w, "rmsnorm bwd N=%d D=%d: dinp", N, D);
    report(w, TEST_CLOSE(w, gdx[0], dxref, nd, TOL_BF16));
    snprintf(w, sizeof w, "rmsnorm bwd N=%d D=%d: dweight", N, D);
    report(w, TEST_CLOSE(w, gdw[0], dwref, D, TOL_F32_LOOSE));
    TEST_CHECK(same_bits(gdx[0], gdx[1], nd * 4) && same_bits(gdw[0], gdw[1], D * 4),
               "rmsnorm bwd N=%d D=%d not bitwise reproducible", N, D);
    // No dresid, no dweight: dinp is written, not accumulated.
    float *dx2 = hzeros(nd);
    rmsnorm_backward_cpu(dx2, NULL, dout, x, wt, gr, N, D);
    bf16 *dinp2 = dalloc<bf16>(nd);
    rmsnorm_backward(dinp2, NULL, NULL, ddout, NULL, dx, dw, drstd, N, D, g_s);
    float *g3 = get_bf16(dinp2, nd);
    snprintf(w, sizeof w, "rmsnorm bwd N=%d D=%d: dinp, no dresid", N, D);
    report(w, TEST_CLOSE(w, g3, dx2, nd, TOL_BF16));
    free(a), free(b), free(wt), free(x), free(ref), free(rref), free(gx), free(gy), free(gr), free(dout), free(dres);
    free(dw0), free(dxref), free(dwref), free(gdx[0]), free(gdx[1]), free(gdw[0]), free(gdw[1]), free(dx2), free(g3);
    cudaFree(da), cudaFree(db), cudaFree(dw), cudaFree(dx), cudaFree(dy), cudaFree(drstd), cudaFree(ddout);
    cudaFree(dres_d), cudaFree(ddw), cudaFree(scratch), cudaFree(dinp2);
}

// ---------------------------------------------------------------- rope
// Splits packed qkv rows into contiguous [N, nh, hd] blocks for the CPU reference.
static void rope_split(float *dst, const float *qkv, int N, int row, int col0, int nh, int hd) {
    for (int n = 0; n < N; n++) memcpy(dst + (size_t)n * nh * hd, qkv + (size_t)n * row + col0, (size_t)nh * hd * 4);
}
static void test_rope(int B, int T, int H, int KV, int hd, int off, int llama3) {
    char w[128];
    RopeParams rp = {llama3 ? ROPE_LLAMA3 : ROPE_DEFAULT, 500000.0f, 8.0f, 1.0f, 4.0f, 8192};
    float *inv = (float *)ao_malloc(hd / 2 * sizeof(float));
    rope_inv_freq_cpu(inv, hd, &rp);
    float *dinv = dev_f32(inv, hd / 2);
    int N = B * T, row = (H + 2 * KV) * hd;
    size_t n = (size_t)N * row;
    float *qkv = hrand(n, 1), *q = hzeros((size_t)N * H * hd), *k = hzeros((size_t)N * KV * hd);
    float *gq = hzeros((size_t)N * H * hd), *gk = hzeros((size_t)N * KV * hd);
    bf16 *d = dalloc<bf16>(n);
    for (int dir = 0; dir < 2; dir++) {
        up_bf16(d, qkv, n);
        rope_split(q, qkv, N, row, 0, H, hd), rope_split(k, qkv, N, row, H * hd, KV, hd);
        if (dir == 0) {
            rope_forward(d, dinv, B, T, H, KV, hd, off, g_s);
            rope_forward_cpu(q, q, inv, B, T, H, hd, off), rope_forward_cpu(k, k, inv, B, T, KV, hd, off);
        } else {
            rope_backward(d, dinv, B, T, H, KV, hd, off, g_s);
            rope_backward_cpu(q, q, inv, B, T, H, hd, off), rope_backward_cpu(k, k, inv, B, T, KV, hd, off);
        }
        float *g = get_bf16(d, n);
        rope_split(gq, g, N, row, 0, H, hd), rope_split(gk, g, N, row, H * hd, KV, hd);
        int v_same = 1;
        for (int r = 0; r < N; r++)
            v_same &= same_bits(g + (size_t)r * row + (H + KV) * hd, qkv + (size_t)r * row + (H + KV) * hd, KV * hd * 4);
        snprintf(w, sizeof w, "rope %s B=%d T=%d H=%d KV=%d hd=%d off=%d%s: q", dir ? "bwd" : "fwd", B, T, H, KV, hd,
                 off, llama3 ? " llama3" : "");
        report(w, TEST_CLOSE(w, gq, q, (size_t)N * H * hd, TOL_BF16));
        w[strlen(w) - 1] = 'k';
        report(w, TEST_CLOSE(w, gk, k, (size_t)N * KV * hd, TOL_BF16));
        TEST_CHECK(v_same, "%s: v heads changed", w);
        free(g);
    }
    free(inv), free(qkv), free(q), free(k), free(gq), free(gk);
    cudaFree(dinv), cudaFree(d);
}

// ---------------------------------------------------------------- swiglu
static void test_swiglu(int N, int F) {
    char w[128];
    size_t nf = (size_t)N * F;
    float *gu = hrand(2 * nf, 4), *dy = hrand(nf, 1), *g = hzeros(nf), *u = hzeros(nf);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < F; j++) g[(size_t)n * F + j] = gu[(size_t)n * 2 * F + j], u[(size_t)n * F + j] = gu[(size_t)n * 2 * F + F + j];
    float *ref = hzeros(nf), *dg = hzeros(nf), *du = hzeros(nf), *dgu_ref = hzeros(2 * nf);
    swiglu_forward_cpu(ref, g, u, nf);
    swiglu_backward_cpu(dg, du, dy, g, u, nf);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < F; j++)
            dgu_ref[(size_t)n * 2 * F + j] = dg[(size_t)n * F + j], dgu_ref[(size_t)n * 2 * F + F + j] = du[(size_t)n * F + j];
    bf16 *dgu = dev_bf16(gu, 2 * nf), *ddy = dev_bf16(dy, nf), *dout = dalloc<bf16>(nf), *ddgu = dalloc<bf16>(2 * nf);
    swiglu_forward(dout, dgu, N, F, g_s);
    swiglu_backward(ddgu, ddy, dgu, N, F, g_s);
    float *go = get_bf16(dout, nf), *gd = get_bf16(ddgu, 2 * nf);
    snprintf(w, sizeof w, "swiglu fwd N=%d F=%d", N, F);
    report(w, TEST_CLOSE(w, go, ref, nf, TOL_BF16));
    snprintf(w, sizeof w, "swiglu bwd N=%d F=%d", N, F);
    report(w, TEST_CLOSE(w, gd, dgu_ref, 2 * nf, TOL_BF16));
    free(gu), free(dy), free(g), free(u), free(ref), free(dg), free(du), free(dgu_ref), free(go), free(gd);
    cudaFree(dgu), cudaFree(ddy), cudaFree(dout), cudaFree(ddgu);
}

// ---------------------------------------------------------------- matmul
// out/dout live in [N, ld] buffers (ld > M tests the row strides); columns >= M of the
// forward output must stay untouched.
static void test_matmul(int N, int K, int M, int ld, int with_bias) {
    char w[160];
    float *x = hrand((size_t)N * K, 1), *W = hrand((size_t)M * K, 1), *bias = with_bias ? hrand(M, 1) : NULL;
    float *dyw = hrand((size_t)N * ld, 1), *dy = hzeros((size_t)N * M), *dx0 = hrand((size_t)N * K, 1);
    float *dW0 = hrand((size_t)M * K, 1), *db0 = hrand(M, 1), *sent = hrand((size_t)N * ld, 1);
    for (int n = 0; n < N; n++) memcpy(dy + (size_t)n * M, dyw + (size_t)n * ld, (size_t)M * 4);
    float *ref = hzeros((size_t)N * M), *dxr = hcopy(dx0, (size_t)N * K), *dWr = hcopy(dW0, (size_t)M * K);
    float *dbr = hcopy(db0, M), *dx_noacc = hzeros((size_t)N * K);
    matmul_forward_cpu(ref, x, W, bias, N, K, M);
    matmul_backward_cpu(dxr, dWr, dbr, dy, x, W, N, K, M);
    matmul_backward_cpu(dx_noacc, NULL, NULL, dy, x, W, N, K, M);

    bf16 *dx = dev_bf16(x, (size_t)N * K), *dW = dev_bf16(W, (size_t)M * K), *db = with_bias ? dev_bf16(bias, M) : NULL;
    bf16 *dout = dev_bf16(sent, (size_t)N * ld), *ddy = dev_bf16(dyw, (size_t)N * ld), *ddx = dalloc<bf16>((size_t)N * K);
    float *ddW = dev_f32(dW0, (size_t)M * K), *ddb = dev_f32(db0, M);
    matmul_forward(&g_ctx, dout, dx, dW, db, N, K, M, ld);
    float *go = get_bf16(dout, (size_t)N * ld), *o = hzeros((size_t)N * M);
    int kept = 1;
    for (int n = 0; n < N; n++) {
        memcpy(o + (size_t)n * M, go + (size_t)n * ld, (size_t)M * 4);
        kept &= same_bits(go + (size_t)n * ld + M, sent + (size_t)n * ld + M, (size_t)(ld - M) * 4);
    }
    snprintf(w, sizeof w, "matmul fwd N=%d K=%d M=%d ld=%d%s", N, K, M, ld, with_bias ? " +bias" : "");
    report(w, TEST_CLOSE(w, o, ref, (size_t)N * M, TOL_BF16));
    TEST_CHECK(kept, "%s: wrote past column M", w);

    up_bf16(ddx, dx0, (size_t)N * K);
    matmul_backward(&g_ctx, ddx, ddW, with_bias ? ddb : NULL, ddy, ld, dx, dW, N, K, M, 1);
    float *gdx = get_bf16(ddx, (size_t)N * K), *gdW = get_f32(ddW, (size_t)M * K), *gdb = get_f32(ddb, M);
    snprintf(w, sizeof w, "matmul bwd N=%d K=%d M=%d ld=%d: dinp (accumulate)", N, K, M, ld);
    report(w, TEST_CLOSE(w, gdx, dxr, (size_t)N * K, TOL_BF16));
    snprintf(w, sizeof w, "matmul bwd N=%d K=%d M=%d ld=%d: dweight", N, K, M, ld);
    report(w, TEST_CLOSE(w, gdW, dWr, (size_t)M * K, TOL_F32_LOOSE));
    if (with_bias) {
        snprintf(w, sizeof w, "matmul bwd N=%d K=%d M=%d ld=%d: dbias", N, K, M, ld);
        report(w, TEST_CLOSE(w, gdb, dbr, M, TOL_F32));
        h2d(ddb, db0, M * 4);
        matmul_backward(&g_ctx, NULL, NULL, ddb, ddy, ld, dx, dW, N, K, M, 0);
        float *gdb2 = get_f32(ddb, M);
        TEST_CHECK(same_bits(gdb, gdb2, M * 4), "matmul dbias N=%d M=%d not bitwise reproducible", N, M);
        free(gdb2);
    }
    up_bf16(ddx, sent, (size_t)N * K);  // garbage that beta = 0 must ignore
    matmul_backward(&g_ctx, ddx, NULL, NULL, ddy, ld, dx, dW, N, K, M, 0);
    float *gdx2 = get_bf16(ddx, (size_t)N * K);
    snprintf(w, sizeof w, "matmul bwd N=%d K=%d M=%d ld=%d: dinp (overwrite)", N, K, M, ld);
    report(w, TEST_CLOSE(w, gdx2, dx_noacc, (size_t)N * K, TOL_BF16));
    free(x), free(W), free(bias), free(dyw), free(dy), free(dx0), free(dW0), free(db0), free(sent), free(ref);
    free(dxr), free(dWr), free(dbr), free(dx_noacc), free(go), free(o), free(gdx), free(gdW), free(gdb), free(gdx2);
    cudaFree(dx), cudaFree(dW), cudaFree(db), cudaFree(dout), cudaFree(ddy), cudaFree(ddx), cudaFree(ddW);
    cudaFree(ddb);
}

static void test_cast(size_t n, int offset) {
    char w[128];
    float *x = (float *)ao_malloc((n + 1) * 4), *r = hzeros(n);
    for (size_t i = 0; i < n; i++) x[i] = 3.0f * test_rand_uniform(&g_rng), r[i] = bf16r(x[i]);
    float *df = dalloc<float>(n + 1);
    bf16 *db = dalloc<bf16>(n + 1);
    h2d(df + offset, x, n * 4);
    cast_f32_to_bf16(db + offset, df + offset, n, g_s);
    float *g = get_bf16(db + offset, n);
    snprintf(w, sizeof w, "cast f32->bf16 n=%zu offset=%d", n, offset);
    report(w, TEST_CLOSE(w, g, r, n, 0.0));
    cast_bf16_to_f32(df + offset, db + offset, n, g_s);
    float *g2 = get_f32(df + offset, n);
    snprintf(w, sizeof w, "cast bf16->f32 n=%zu offset=%d", n, offset);
    report(w, TEST_CLOSE(w, g2, r, n, 0.0));
    free(x), free(r), free(g), free(g2);
    cudaFree(df), cudaFree(db);
}

// ---------------------------------------------------------------- cross entropy
static void test_cross_entropy(int N, int V, float scale) {
    char w[128];
    size_t nv = (size_t)N * V;
    float *x = hrand(nv, scale);
    int32_t *t = (int32_t *)ao_malloc(N * 4);
    for (int n = 0; n < N; n++) t[n] = (n % 4 == 3) ? -100 : (int32_t)(test_rand_u64(&g_rng) % (uint64_t)V);
    float *lref = hzeros(N), *dref = hzeros(nv);
    int valid;
    cross_entropy_forward_cpu(lref, x, t, N, V, &valid);
    float dloss = valid ? 1.0f / valid : 0.0f;
    cross_entropy_backward_cpu(dref, x, t, N, V, dloss);
    bf16 *dx = dev_bf16(x, nv);
    int32_t *dt = dalloc<int32_t>(N);
    h2d(dt, t, N * 4);
    float *dl = dalloc<float>(N);
    cross_entropy_forward_backward(dl, dx, dt, N, V, 0.0f, g_s);  // dloss = 0: logits untouched
    float *l0 = get_f32(dl, N), *x0 = get_bf16(dx, nv);
    TEST_CHECK(same_bits(x0, x, nv * 4), "cross_entropy N=%d V=%d: dloss=0 changed the logits", N, V);
    cross_entropy_forward_backward(dl, dx, dt, N, V, dloss, g_s);
    float *l1 = get_f32(dl, N), *g = get_bf16(dx, nv);
    snprintf(w, sizeof w, "cross_entropy N=%d V=%d scale=%g: losses", N, V, scale);
    report(w, TEST_CLOSE(w, l1, lref, N, TOL_F32));
    TEST_CHECK(same_bits(l0, l1, N * 4), "%s differ between dloss=0 and dloss!=0", w);
    snprintf(w, sizeof w, "cross_entropy N=%d V=%d scale=%g: dlogits", N, V, scale);
    report(w, TEST_CLOSE(w, g, dref, nv, TOL_BF16));
    free(x), free(t), free(lref), free(dref), free(l0), free(x0), free(l1), free(g);
    cudaFree(dx), cudaFree(dt), cudaFree(dl);
}

// ---------------------------------------------------------------- adamw, grad norm
// The CPU loop follows torch's _single_tensor_adamw op by op in fp32, scalars from double.
static void adamw_cpu(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps,
                      float wd, int step, float gs) {
    float decay = (float)(1.0 - (double)lr * wd), w1 = (float)(1.0 - (double)b1), w2 = (float)(1.0 - (double)b2);
    float ss = (float)(lr / (1.0 - pow(b1, step))), bc2s = (float)sqrt(1.0 - pow(b2, step));
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs;
        p[i] *= decay;
        m[i] = m[i] + w1 * (gi - m[i]);
        v[i] = v[i] * b2 + w2 * gi * gi;
        p[i] = p[i] - ss * (m[i] / (sqrtf(v[i]) / bc2s + eps));
    }
}

static void test_adamw(size_t n, int offset) {
    char w[128];
    float *p = hrand(n, 1), *m = hzeros(n), *v = hzeros(n);
    float *dp = dalloc<float>(n + 1) + offset, *dm = dalloc<float>(n + 1) + offset, *dv = dalloc<float>(n + 1) + offset;
    float *dg = dalloc<float>(n + 1) + offset;
    bf16 *dpar = dalloc<bf16>(n + 1) + offset;
    h2d(dp, p, n * 4), h2d(dm, m, n * 4), h2d(dv, v, n * 4);
    for (int step = 1; step <= 3; step++) {
        float *g = hrand(n, 0.01f * step);
        h2d(dg, g, n * 4);
        adamw_update(dp, dpar, dg, dm, dv, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step, 0.5f, g_s);
        adamw_cpu(p, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step, 0.5f);
        free(g);
    }
    float *gp = get_f32(dp, n), *gm = get_f32(dm, n), *gv = get_f32(dv, n), *gpar = get_bf16(dpar, n);
    snprintf(w, sizeof w, "adamw n=%zu offset=%d: master", n, offset);
    report(w, TEST_CLOSE(w, gp, p, n, TOL_F32));
    snprintf(w, sizeof w, "adamw n=%zu offset=%d: m", n, offset);
    report(w, TEST_CLOSE(w, gm, m, n, TOL_F32));
    snprintf(w, sizeof w, "adamw n=%zu offset=%d: v", n, offset);
    report(w, TEST_CLOSE(w, gv, v, n, TOL_F32));
    for (size_t i = 0; i < n; i++) gp[i] = bf16r(gp[i]);  // the bf16 copy must be exactly bf16(master)
    TEST_CHECK(same_bits(gp, gpar, n * 4), "adamw n=%zu: bf16 params are not bf16(master)", n);
    free(p), free(m), free(v), free(gp), free(gm), free(gv), free(gpar);
    cudaFree(dp - offset), cudaFree(dm - offset), cudaFree(dv - offset), cudaFree(dg - offset), cudaFree(dpar - offset);
}

static void test_grad_norm(size_t n, int offset) {
    char w[128];
    float *g = hrand(n, 1);
    double ref = 0;
    for (size_t i = 0; i < n; i++) ref += (double)g[i] * g[i];
    float *dg = dalloc<float>(n + 1), *out = dalloc<float>(2), *scratch = dalloc<float>(grad_norm_scratch_floats(n));
    h2d(dg + offset, g, n * 4);
    float got[2], reff = (float)ref;
    for (int rep = 0; rep < 2; rep++) {
        grad_norm_squared(out, scratch, dg + offset, n, g_s);
        d2h(&got[rep], out, 4);
    }
    snprintf(w, sizeof w, "grad_norm_squared n=%zu offset=%d", n, offset);
    report(w, TEST_CLOSE(w, got, &reff, 1, TOL_F32));
    TEST_CHECK(same_bits(&got[0], &got[1], 4), "%s not bitwise reproducible", w);
    free(g);
    cudaFree(dg), cudaFree(out), cudaFree(scratch);
}

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        test_skip("gpu_test_kernels: no CUDA GPU");
        return test_summary();
    }
    gpu_ctx_init(&g_ctx, 0);
    g_s = g_ctx.stream;
    printf("device: %s\n", g_ctx.prop.name);

    test_embedding(1, 5, 8), test_embedding(7, 11, 13), test_embedding(64, 50, 40), test_embedding(1000, 300, 2048);
    test_embedding(600, 7, 13);  // buckets past EMB_LONG on the scalar path
    test_rmsnorm(1, 8), test_rmsnorm(7, 13), test_rmsnorm(5, 24), test_rmsnorm(3, 40), test_rmsnorm(600, 64);
    test_rmsnorm(33, 2048), test_rmsnorm(17, 4096), test_rmsnorm(3, 10000), test_rmsnorm(2, 5001);
    test_rope(1, 1, 1, 1, 2, 0, 0), test_rope(2, 7, 3, 1, 6, 0, 0), test_rope(1, 5, 4, 2, 12, 100, 0);
    test_rope(2, 16, 8, 2, 64, 0, 1), test_rope(1, 9, 4, 4, 128, 5000, 0), test_rope(1, 3, 2, 1, 64, 120000, 1);
    test_swiglu(1, 8), test_swiglu(7, 13), test_swiglu(33, 40), test_swiglu(64, 2048);
    test_matmul(1, 8, 8, 8, 1), test_matmul(7, 24, 40, 40, 0), test_matmul(7, 24, 40, 48, 1);
    test_matmul(33, 136, 48, 48, 1), test_matmul(5, 13, 7, 7, 1), test_matmul(9, 64, 301, 301, 0);
    test_matmul(2048, 1000, 1030, 1030, 1), test_matmul(1500, 512, 192, 256, 1);
    test_cast(1, 0), test_cast(7, 1), test_cast(1000003, 0), test_cast(1000003, 1);
    test_cross_entropy(1, 300, 4), test_cross_entropy(7, 300, 8), test_cross_entropy(5, 32003, 4);
    test_cross_entropy(6, 152064, 16), test_cross_entropy(4, 8, 1);
    test_adamw(1, 0), test_adamw(7, 0), test_adamw(1003, 1), test_adamw(1 << 20, 0);
    test_grad_norm(1, 0), test_grad_norm(7, 0), test_grad_norm(1001, 1), test_grad_norm(5000000, 0);
    gpu_ctx_free(&g_ctx);
    return test_summary();
}
