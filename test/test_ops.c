// CPU reference ops against (a) naive double-precision forwards written here, (b) central
// finite differences of L = sum(out * R) through those double forwards, (c) accumulate
// semantics, determinism across thread counts, and the error paths.
// Shapes are small and odd on purpose (T=1, D=13, hd=6, GQA 6/2, MQA, MHA, K % 8 != 0).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../common/error.h"
#include "../ops/attention.h"
#include "../ops/cross_entropy.h"
#include "../ops/embedding.h"
#include "../ops/matmul.h"
#include "../ops/rmsnorm.h"
#include "../ops/rope.h"
#include "../ops/swiglu.h"
#include "test.h"

// The double forwards make finite differences exact to ~1e-10, so the gradient tolerance
// only has to absorb the fp32 arithmetic of the op under test.
#define FD_EPS 1e-5
#define TOL_GRAD TOL_F32_LOOSE

static uint64_t g_rng = 0x1234567ull;

static float *rand_f(size_t n, float scale) {
    float *x = ao_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = scale * test_rand_uniform(&g_rng);
    return x;
}
static float *zeros_f(size_t n) { return ao_calloc(n ? n : 1, sizeof(float)); }
static double *to_d(const float *x, size_t n) {
    double *d = ao_malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static float *to_f(const double *x, size_t n) {
    float *f = ao_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) f[i] = (float)x[i];
    return f;
}
static double dot_rd(const double *y, const float *r, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += y[i] * r[i];
    return s;
}
static void scale_f(float *x, size_t n, float s) {
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

// Central differences of loss(ctx) w.r.t. every entry of x (perturbed in place, restored).
typedef double (*loss_fn)(void *ctx);
static float *fd_grad(double *x, size_t n, loss_fn loss, void *ctx) {
    float *g = ao_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_EPS;
        double lp = loss(ctx);
        x[i] = x0 - FD_EPS;
        double lm = loss(ctx);
        x[i] = x0;
        g[i] = (float)((lp - lm) / (2 * FD_EPS));
    }
    return g;
}

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}
static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_num_procs() > 1 ? omp_get_num_procs() : 2;
#else
    return 1;
#endif
}

// ---------------------------------------------------------------------------- embedding

typedef struct { int N, V, D; const int32_t *tok; double *wte; const float *R; } EmbCtx;
static void emb_ref(double *out, const EmbCtx *c) {
    for (int n = 0; n < c->N; n++)
        for (int d = 0; d < c->D; d++) out[n * c->D + d] = c->wte[c->tok[n] * c->D + d];
}
static double emb_loss(void *p) {
    EmbCtx *c = p;
    double *out = ao_malloc(sizeof(double) * c->N * c->D);
    emb_ref(out, c);
    double l = dot_rd(out, c->R, (size_t)c->N * c->D);
    free(out);
    return l;
}

typedef struct { int32_t *tok; float *buf; const float *wte; int N, V, D; } EmbFailArg;
static void emb_fail_fn(void *p) {
    EmbFailArg *a = p;
    embedding_forward_cpu(a->buf, a->tok, a->wte, a->N, a->V, a->D);
}

static void test_embedding(void) {
    enum { N = 9, V = 11, D = 13 };
    int32_t tok[N] = {3, 0, 10, 3, 7, 3, 0, 5, 10};  // repeats exercise the scatter-add
    float *wte = rand_f(V * D, 1), *R = rand_f(N * D, 1), *out = zeros_f(N * D);
    EmbCtx c = {N, V, D, tok, to_d(wte, V * D), R};
    double *outd = ao_malloc(sizeof(double) * N * D);
    emb_ref(outd, &c);
    float *ref = to_f(outd, N * D);
    embedding_forward_cpu(out, tok, wte, N, V, D);
    TEST_CLOSE("embedding fwd", out, ref, N * D, 0.0);

    float *g = fd_grad(c.wte, V * D, emb_loss, &c), *dwte = zeros_f(V * D);
    embedding_backward_cpu(dwte, R, tok, N, V, D);
    TEST_CLOSE("embedding dwte", dwte, g, V * D, TOL_GRAD);
    embedding_backward_cpu(dwte, R, tok, N, V, D);
    scale_f(g, V * D, 2);
    TEST_CLOSE("embedding dwte accumulates", dwte, g, V * D, TOL_GRAD);

    // Wide D crosses the column blocks; results must not depend on the thread count.
    enum { N2 = 40, V2 = 5, D2 = 150 };
    int32_t tok2[N2];
    for (int n = 0; n < N2; n++) tok2[n] = (n * 7) % V2;
    float *dout2 = rand_f(N2 * D2, 1), *a = zeros_f(V2 * D2), *b = zeros_f(V2 * D2);
    set_threads(1);
    embedding_backward_cpu(a, dout2, tok2, N2, V2, D2);
    set_threads(max_threads());
    embedding_backward_cpu(b, dout2, tok2, N2, V2, D2);
    TEST_CHECK(memcmp(a, b, sizeof(float) * V2 * D2) == 0, "embedding backward differs between 1 and %d threads",
               max_threads());

    tok[4] = V;
    EmbFailArg fa = {tok, out, wte, N, V, D};
    TEST_EXPECT_FAIL("embedding token >= V", emb_fail_fn, &fa, "token id 11 at position 4");
    tok[4] = -2;
    TEST_EXPECT_FAIL("embedding token < 0", emb_fail_fn, &fa, "token id -2 at position 4");

    free(wte), free(R), free(out), free(c.wte), free(outd), free(ref), free(g), free(dwte);
    free(dout2), free(a), free(b);
}

// The GPU backward's host-side sort: buckets in token order, positions stable, and a
// bucket-wise sum equals embedding_backward_cpu bitwise (same per-element add order).
static void emb_buckets_fail_fn(void *p) {
    EmbFailArg *a = p;
    int32_t sp[16], bs[17], bt[16];
    embedding_buckets_cpu(sp, bs, bt, a->tok, a->N, a->V);
}

static void test_embedding_buckets(void) {
    enum { N = 12, V = 9, D = 5 };
    int32_t tok[N] = {4, 8, 4, 0, 8, 8, 2, 4, 0, 7, 8, 4};
    int32_t sp[N], bs[N + 1], bt[N];
    int nb = embedding_buckets_cpu(sp, bs, bt, tok, N, V);
    TEST_CHECK(nb == 5, "embedding buckets: %d buckets, expected 5", nb);
    const int32_t want_tok[5] = {0, 2, 4, 7, 8}, want_start[6] = {0, 2, 3, 7, 8, 12};
    const int32_t want_pos[N] = {3, 8, 6, 0, 2, 7, 11, 9, 1, 4, 5, 10};
    TEST_CHECK(memcmp(bt, want_tok, sizeof want_tok) == 0, "embedding buckets: wrong bucket tokens");
    TEST_CHECK(memcmp(bs, want_start, sizeof want_start) == 0, "embedding buckets: wrong bucket starts");
    TEST_CHECK(memcmp(sp, want_pos, sizeof want_pos) == 0, "embedding buckets: positions not a stable sort");

    float *dout = rand_f(N * D, 1), *a = zeros_f(V * D), *b = zeros_f(V * D);
    embedding_backward_cpu(a, dout, tok, N, V, D);
    for (int k = 0; k < nb; k++)
        for (int i = bs[k]; i < bs[k + 1]; i++)
            for (int d = 0; d < D; d++) b[bt[k] * D + d] += dout[sp[i] * D + d];
    TEST_CHECK(memcmp(a, b, sizeof(float) * V * D) == 0, "embedding buckets: bucket sums differ from the CPU backward");

    int32_t one = 3;
    nb = embedding_buckets_cpu(sp, bs, bt, &one, 1, V);
    TEST_CHECK(nb == 1 && bs[0] == 0 && bs[1] == 1 && bt[0] == 3 && sp[0] == 0, "embedding buckets: N=1");
    nb = embedding_buckets_cpu(sp, bs, bt, tok, 0, V);
    TEST_CHECK(nb == 0 && bs[0] == 0, "embedding buckets: N=0 gives %d buckets", nb);

    tok[5] = V;
    EmbFailArg fa = {tok, NULL, NULL, N, V, D};
    TEST_EXPECT_FAIL("embedding buckets token >= V", emb_buckets_fail_fn, &fa, "token id 9 at position 5");
    free(dout), free(a), free(b);
}

// ---------------------------------------------------------------------------- rmsnorm

typedef struct { int N, D; double eps; double *x, *w; const float *R; } RmsCtx;
static void rms_ref(double *out, double *rstd, const RmsCtx *c) {
    for (int n = 0; n < c->N; n++) {
        double ss = 0;
        for (int d = 0; d < c->D; d++) ss += c->x[n * c->D + d] * c->x[n * c->D + d];
        double r = 1.0 / sqrt(ss / c->D + c->eps);
        if (rstd) rstd[n] = r;
        for (int d = 0; d < c->D; d++) out[n * c->D + d] = c->x[n * c->D + d] * r * c->w[d];
    }
}
static double rms_loss(void *p) {
    RmsCtx *c = p;
    double *out = ao_malloc(sizeof(double) * c->N * c->D);
    rms_ref(out, NULL, c);
    double l = dot_rd(out, c->R, (size_t)c->N * c->D);
    free(out);
    return l;
}

static void test_rmsnorm_shape(int N, int D) {
    size_t nd = (size_t)N * D;
    float eps = 1e-5f;
    float *x = rand_f(nd, 2), *w = rand_f(D, 1.5f), *R = rand_f(nd, 1);
    RmsCtx c = {N, D, eps, to_d(x, nd), to_d(w, D), R};
    double *outd = ao_malloc(sizeof(double) * nd), *rstdd = ao_malloc(sizeof(double) * N);
    rms_ref(outd, rstdd, &c);
    float *ref = to_f(outd, nd), *rref = to_f(rstdd, N);
    float *out = zeros_f(nd), *rstd = zeros_f(N), *out2 = zeros_f(nd);
    rmsnorm_forward_cpu(out, rstd, x, w, N, D, eps);
    char what[96];
    snprintf(what, sizeof what, "rmsnorm fwd N=%d D=%d", N, D);
    TEST_CLOSE(what, out, ref, nd, TOL_F32);
    TEST_CLOSE("rmsnorm rstd", rstd, rref, N, TOL_F32);
    rmsnorm_forward_cpu(out2, NULL, x, w, N, D, eps);
    TEST_CHECK(memcmp(out, out2, sizeof(float) * nd) == 0, "rmsnorm fwd with rstd=NULL differs");

    float *gx = fd_grad(c.x, nd, rms_loss, &c), *gw = fd_grad(c.w, D, rms_loss, &c);
    float *dx = zeros_f(nd), *dw = zeros_f(D);
    rmsnorm_backward_cpu(dx, dw, R, x, w, rstd, N, D);
    snprintf(what, sizeof what, "rmsnorm dinp N=%d D=%d", N, D);
    TEST_CLOSE(what, dx, gx, nd, TOL_GRAD);
    snprintf(what, sizeof what, "rmsnorm dweight N=%d D=%d", N, D);
    TEST_CLOSE(what, dw, gw, D, TOL_GRAD);
    rmsnorm_backward_cpu(dx, NULL, R, x, w, rstd, N, D);  // dweight optional
    scale_f(gx, nd, 2);
    TEST_CLOSE("rmsnorm dinp accumulates", dx, gx, nd, TOL_GRAD);

    free(x), free(w), free(R), free(c.x), free(c.w), free(outd), free(rstdd), free(ref), free(rref);
    free(out), free(rstd), free(out2), free(gx), free(gw), free(dx), free(dw);
}

static void test_rmsnorm(void) {
    // Not D=1: there y = w x/sqrt(x^2+eps) is flat up to eps and dinp is pure fp32
    // cancellation of two O(1) terms (PyTorch fp32 loses it the same way).
    test_rmsnorm_shape(1, 3);
    test_rmsnorm_shape(7, 13);
    test_rmsnorm_shape(3, 130);  // crosses the 64-column dweight blocks
}

// ---------------------------------------------------------------------------- rope

// Every entry of inv_freq relative to a double reference (entries span ~6 decades, so a
// scale-free norm would not see errors in the small ones).
static void check_rel(const char *what, const float *got, const double *ref, int n, double tol) {
    double worst = 0;
    int wi = 0;
    for (int i = 0; i < n; i++) {
        double e = fabs(got[i] / ref[i] - 1);
        if (!(e <= worst)) worst = e, wi = i;
    }
    TEST_CHECK(worst <= tol, "%s: relative error %.3e > %.1e at [%d]: got %.9g, ref %.9g", what, worst, tol, wi,
               got[wi], ref[wi]);
}

// transformers' _compute_llama3_parameters in double.
static void llama3_ref(double *inv, int hd, double theta, double factor, double low, double high, double orig) {
    for (int i = 0; i < hd / 2; i++) {
        double f = 1.0 / pow(theta, 2.0 * i / hd), wavelen = 2 * M_PI / f;
        if (wavelen > orig / low) inv[i] = f / factor;
        else if (wavelen < orig / high) inv[i] = f;
        else {
            double s = (orig / wavelen - low) / (high - low);
            inv[i] = (1 - s) * f / factor + s * f;
        }
    }
}

// HF convention: angle = float(pos) * inv_freq in fp32, cos/sin of that (here in double).
static void rope_ref(double *out, const double *x, const float *inv, int B, int T, int H, int hd, int off) {
    int h = hd / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int hh = 0; hh < H; hh++)
                for (int i = 0; i < h; i++) {
                    float angf = (float)(off + t) * inv[i];
                    double c = cos((double)angf), s = sin((double)angf);
                    size_t o = (((size_t)b * T + t) * H + hh) * hd + i;
                    out[o] = x[o] * c - x[o + h] * s;
                    out[o + h] = x[o + h] * c + x[o] * s;
                }
}

typedef struct { int B, T, H, hd, off; const float *inv; double *x; const float *R; } RopeCtx;
static double rope_loss(void *p) {
    RopeCtx *c = p;
    size_t n = (size_t)c->B * c->T * c->H * c->hd;
    double *out = ao_malloc(sizeof(double) * n);
    rope_ref(out, c->x, c->inv, c->B, c->T, c->H, c->hd, c->off);
    double l = dot_rd(out, c->R, n);
    free(out);
    return l;
}

static void test_rope_shape(const RopeParams *rp, int B, int T, int H, int hd, int off) {
    size_t n = (size_t)B * T * H * hd;
    float *inv = zeros_f(hd / 2);
    rope_inv_freq_cpu(inv, hd, rp);
    float *x = rand_f(n, 1), *R = rand_f(n, 1), *out = zeros_f(n), *buf = zeros_f(n), *dx = zeros_f(n);
    RopeCtx c = {B, T, H, hd, off, inv, to_d(x, n), R};
    double *outd = ao_malloc(sizeof(double) * n);
    rope_ref(outd, c.x, inv, B, T, H, hd, off);
    float *ref = to_f(outd, n);
    char what[128];
    snprintf(what, sizeof what, "rope fwd type=%d B=%d T=%d H=%d hd=%d off=%d", rp->type, B, T, H, hd, off);
    rope_forward_cpu(out, x, inv, B, T, H, hd, off);
    TEST_CLOSE(what, out, ref, n, TOL_F32);
    memcpy(buf, x, sizeof(float) * n);
    rope_forward_cpu(buf, buf, inv, B, T, H, hd, off);
    TEST_CHECK(memcmp(buf, out, sizeof(float) * n) == 0, "%s: in-place differs", what);

    // Rotation is orthogonal: backward (rotation by -angle) undoes forward.
    rope_backward_cpu(buf, buf, inv, B, T, H, hd, off);
    TEST_CLOSE("rope fwd then bwd returns the input", buf, x, n, TOL_F32);

    float *g = fd_grad(c.x, n, rope_loss, &c);
    memset(dx, 0x7f, sizeof(float) * n);  // backward writes, so garbage must be overwritten
    rope_backward_cpu(dx, R, inv, B, T, H, hd, off);
    snprintf(what, sizeof what, "rope dinp type=%d B=%d T=%d H=%d hd=%d off=%d", rp->type, B, T, H, hd, off);
    TEST_CLOSE(what, dx, g, n, TOL_GRAD);
    memcpy(buf, R, sizeof(float) * n);
    rope_backward_cpu(buf, buf, inv, B, T, H, hd, off);
    TEST_CHECK(memcmp(buf, dx, sizeof(float) * n) == 0, "%s: in-place backward differs", what);

    free(inv), free(x), free(R), free(out), free(buf), free(dx), free(c.x), free(outd), free(ref), free(g);
}

typedef struct { float *x, *inv; } RopeFailArg;
static void rope_fail_fn(void *p) {
    RopeFailArg *a = p;
    rope_forward_cpu(a->x, a->x, a->inv, 1, 1, 1, 5, 0);
}

static void test_rope(void) {
    RopeParams def = {ROPE_DEFAULT, 10000.0f, 0, 0, 0, 0};
    float inv[64];
    double ref[64];
    rope_inv_freq_cpu(inv, 6, &def);
    for (int i = 0; i < 3; i++) ref[i] = 1.0 / pow(10000.0, 2.0 * i / 6);
    check_rel("rope inv_freq default hd=6", inv, ref, 3, 2e-6);
    rope_inv_freq_cpu(inv, 128, &(RopeParams){ROPE_DEFAULT, 500000.0f, 0, 0, 0, 0});
    for (int i = 0; i < 64; i++) ref[i] = 1.0 / pow(500000.0, 2.0 * i / 128);
    check_rel("rope inv_freq default hd=128 theta=5e5", inv, ref, 64, 2e-6);

    // Llama 3.2 scaling. With theta=5e5, hd=64: wavelen_i = 2 pi 5e5^(i/32) crosses
    // high_freq_wavelen = 8192/4 = 2048 between i=14 and 15 and low_freq_wavelen = 8192
    // between i=17 and 18, so i <= 14 is kept, i >= 18 is divided by 32, and i = 15..17
    // are blended with smooth = (8192/wavelen - 1)/3 (0.5928, 0.2813, 0.0745).
    RopeParams l3 = {ROPE_LLAMA3, 500000.0f, 32.0f, 1.0f, 4.0f, 8192};
    rope_inv_freq_cpu(inv, 64, &l3);
    llama3_ref(ref, 64, 500000.0, 32, 1, 4, 8192);
    check_rel("rope inv_freq llama3 vs double formula", inv, ref, 32, 2e-6);
    // The same formula evaluated by hand (python, double): anchors independent of llama3_ref.
    static const struct { int i; double v; } anchor[] = {
        {0, 1.0},
        {14, 3.2114459948e-03},  // high frequency: unchanged
        {15, 1.2905479282e-03},  // smooth 0.592849
        {16, 4.2955679656e-04},  // smooth 0.281283
        {17, 9.7082878026e-05},  // smooth 0.074527
        {18, 1.9461638185e-05},  // low frequency: 6.2277242191e-04 / 32
        {31, 9.4183067254e-08},  // 3.0138581521e-06 / 32
    };
    for (size_t j = 0; j < sizeof anchor / sizeof anchor[0]; j++) {
        double e = fabs(inv[anchor[j].i] / anchor[j].v - 1);
        TEST_CHECK(e < 2e-6, "rope llama3 inv_freq[%d] = %.9g, expected %.9g (rel err %.2e)", anchor[j].i,
                   inv[anchor[j].i], anchor[j].v, e);
    }

    test_rope_shape(&def, 1, 1, 1, 2, 0);
    test_rope_shape(&def, 2, 7, 3, 6, 0);
    test_rope_shape(&def, 1, 5, 2, 6, 1000);
    test_rope_shape(&l3, 2, 3, 2, 64, 8000);

    float x[5] = {0};
    RopeFailArg fa = {x, inv};
    TEST_EXPECT_FAIL("rope odd head_dim", rope_fail_fn, &fa, "even");
}

// ---------------------------------------------------------------------------- attention

typedef struct { int B, T, H, KV, hd; double *q, *k, *v; const float *R; } AttCtx;
static void att_ref(double *out, double *att, const AttCtx *c) {
    int B = c->B, T = c->T, H = c->H, KV = c->KV, hd = c->hd, g = H / KV;
    double *sc = ao_malloc(sizeof(double) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const double *qt = c->q + (((size_t)b * T + t) * H + h) * hd;
                double mx = -INFINITY, sum = 0;
                for (int s = 0; s <= t; s++) {
                    const double *ks = c->k + (((size_t)b * T + s) * KV + h / g) * hd;
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += qt[i] * ks[i];
                    sc[s] = d / sqrt((double)hd);
                    mx = fmax(mx, sc[s]);
                }
                for (int s = 0; s <= t; s++) sum += sc[s] = exp(sc[s] - mx);
                for (int s = 0; s < T; s++) {
                    double p = s <= t ? sc[s] / sum : 0;
                    if (att) att[(((size_t)b * H + h) * T + t) * T + s] = p;
                    sc[s] = p;
                }
                double *ot = out + (((size_t)b * T + t) * H + h) * hd;
                for (int i = 0; i < hd; i++) {
                    ot[i] = 0;
                    for (int s = 0; s <= t; s++) ot[i] += sc[s] * c->v[(((size_t)b * T + s) * KV + h / g) * hd + i];
                }
            }
    free(sc);
}
static double att_loss(void *p) {
    AttCtx *c = p;
    size_t n = (size_t)c->B * c->T * c->H * c->hd;
    double *out = ao_malloc(sizeof(double) * n);
    att_ref(out, NULL, c);
    double l = dot_rd(out, c->R, n);
    free(out);
    return l;
}

static void test_attention_shape(int B, int T, int H, int KV, int hd) {
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * KV * hd, na = (size_t)B * H * T * T;
    float *q = rand_f(nq, 2), *k = rand_f(nk, 2), *v = rand_f(nk, 1), *R = rand_f(nq, 1);
    AttCtx c = {B, T, H, KV, hd, to_d(q, nq), to_d(k, nk), to_d(v, nk), R};
    double *outd = ao_malloc(sizeof(double) * nq), *attd = ao_malloc(sizeof(double) * na);
    att_ref(outd, attd, &c);
    float *oref = to_f(outd, nq), *aref = to_f(attd, na);
    float *out = zeros_f(nq), *att = zeros_f(na), *out2 = zeros_f(nq);
    memset(att, 0x7f, sizeof(float) * na);  // masked entries must be written as 0
    attention_forward_cpu(out, att, q, k, v, B, T, H, KV, hd);
    char what[128];
    snprintf(what, sizeof what, "attention fwd B=%d T=%d H=%d KV=%d hd=%d", B, T, H, KV, hd);
    TEST_CLOSE(what, out, oref, nq, TOL_F32);
    TEST_CLOSE("attention probabilities", att, aref, na, TOL_F32);
    attention_forward_cpu(out2, NULL, q, k, v, B, T, H, KV, hd);
    TEST_CHECK(memcmp(out, out2, sizeof(float) * nq) == 0, "%s: att=NULL changes the output", what);

    float *gq = fd_grad(c.q, nq, att_loss, &c), *gk = fd_grad(c.k, nk, att_loss, &c);
    float *gv = fd_grad(c.v, nk, att_loss, &c);
    float *dq = zeros_f(nq), *dk = zeros_f(nk), *dv = zeros_f(nk);
    attention_backward_cpu(dq, dk, dv, R, q, k, v, att, B, T, H, KV, hd);
    snprintf(what, sizeof what, "attention dq/dk/dv B=%d T=%d H=%d KV=%d hd=%d", B, T, H, KV, hd);
    TEST_CLOSE(what, dq, gq, nq, TOL_GRAD);
    TEST_CLOSE(what, dk, gk, nk, TOL_GRAD);
    TEST_CLOSE(what, dv, gv, nk, TOL_GRAD);

    // Accumulates, and bitwise independent of the thread count.
    float *dq1 = zeros_f(nq), *dk1 = zeros_f(nk), *dv1 = zeros_f(nk);
    set_threads(1);
    attention_backward_cpu(dq1, dk1, dv1, R, q, k, v, att, B, T, H, KV, hd);
    set_threads(max_threads());
    TEST_CHECK(memcmp(dq, dq1, sizeof(float) * nq) == 0 && memcmp(dk, dk1, sizeof(float) * nk) == 0 &&
                   memcmp(dv, dv1, sizeof(float) * nk) == 0,
               "%s: backward differs between 1 and %d threads", what, max_threads());
    attention_backward_cpu(dq, dk, dv, R, q, k, v, att, B, T, H, KV, hd);
    scale_f(gq, nq, 2), scale_f(gk, nk, 2), scale_f(gv, nk, 2);
    TEST_CLOSE("attention dq accumulates", dq, gq, nq, TOL_GRAD);
    TEST_CLOSE("attention dk accumulates", dk, gk, nk, TOL_GRAD);
    TEST_CLOSE("attention dv accumulates", dv, gv, nk, TOL_GRAD);

    free(q), free(k), free(v), free(R), free(c.q), free(c.k), free(c.v), free(outd), free(attd), free(oref);
    free(aref), free(out), free(att), free(out2), free(gq), free(gk), free(gv), free(dq), free(dk), free(dv);
    free(dq1), free(dk1), free(dv1);
}

static void att_fail_fn(void *p) {
    float *x = p;
    attention_forward_cpu(x, NULL, x, x, x, 1, 1, 6, 4, 2);
}

static void test_attention(void) {
    test_attention_shape(1, 1, 1, 1, 4);  // T=1: softmax over a single key
    test_attention_shape(2, 7, 6, 2, 6);  // GQA, groups of 3
    test_attention_shape(1, 7, 3, 1, 5);  // MQA, odd head_dim
    test_attention_shape(2, 5, 4, 4, 8);  // MHA
    float x[64] = {0};
    TEST_EXPECT_FAIL("attention n_heads % n_kv_heads", att_fail_fn, x, "multiple of n_kv_heads");
}

// ---------------------------------------------------------------------------- swiglu

typedef struct { size_t n; double *g, *u; const float *R; } SwiCtx;
static void swi_ref(double *out, const SwiCtx *c) {
    for (size_t i = 0; i < c->n; i++) out[i] = c->g[i] / (1 + exp(-c->g[i])) * c->u[i];
}
static double swi_loss(void *p) {
    SwiCtx *c = p;
    double *out = ao_malloc(sizeof(double) * c->n);
    swi_ref(out, c);
    double l = dot_rd(out, c->R, c->n);
    free(out);
    return l;
}

static void test_swiglu(void) {
    enum { n = 37 };
    float *g = rand_f(n, 6), *u = rand_f(n, 2), *R = rand_f(n, 1);
    g[3] = -100.0f, g[10] = 100.0f, g[20] = -1e4f;  // expf overflows to inf; must stay finite
    SwiCtx c = {n, to_d(g, n), to_d(u, n), R};
    double outd[n];
    swi_ref(outd, &c);
    float *ref = to_f(outd, n), *out = zeros_f(n);
    swiglu_forward_cpu(out, g, u, n);
    TEST_CLOSE("swiglu fwd", out, ref, n, TOL_F32);
    float *gg = fd_grad(c.g, n, swi_loss, &c), *gu = fd_grad(c.u, n, swi_loss, &c);
    float *dg = zeros_f(n), *du = zeros_f(n);
    swiglu_backward_cpu(dg, du, R, g, u, n);
    TEST_CLOSE("swiglu dgate", dg, gg, n, TOL_GRAD);
    TEST_CLOSE("swiglu dup", du, gu, n, TOL_GRAD);
    swiglu_backward_cpu(dg, du, R, g, u, n);
    scale_f(gg, n, 2), scale_f(gu, n, 2);
    TEST_CLOSE("swiglu dgate accumulates", dg, gg, n, TOL_GRAD);
    TEST_CLOSE("swiglu dup accumulates", du, gu, n, TOL_GRAD);
    free(g), free(u), free(R), free(c.g), free(c.u), free(ref), free(out), free(gg), free(gu), free(dg), free(du);
}

// ---------------------------------------------------------------------------- matmul

typedef struct { int N, K, M; double *x, *w, *b; const float *R; } MmCtx;
static void mm_ref(double *out, const MmCtx *c) {
    for (int n = 0; n < c->N; n++)
        for (int m = 0; m < c->M; m++) {
            double s = c->b ? c->b[m] : 0;
            for (int k = 0; k < c->K; k++) s += c->x[n * c->K + k] * c->w[m * c->K + k];
            out[n * c->M + m] = s;
        }
}
static double mm_loss(void *p) {
    MmCtx *c = p;
    double *out = ao_malloc(sizeof(double) * c->N * c->M);
    mm_ref(out, c);
    double l = dot_rd(out, c->R, (size_t)c->N * c->M);
    free(out);
    return l;
}

// fd: also check gradients by finite differences (skipped for the larger shapes, where
// only the forward and the thread-count determinism are checked).
static void test_matmul_shape(int N, int K, int M, int with_bias, int fd) {
    size_t nx = (size_t)N * K, nw = (size_t)M * K, no = (size_t)N * M;
    float *x = rand_f(nx, 1), *w = rand_f(nw, 1), *b = with_bias ? rand_f(M, 1) : NULL, *R = rand_f(no, 1);
    MmCtx c = {N, K, M, to_d(x, nx), to_d(w, nw), b ? to_d(b, M) : NULL, R};
    double *outd = ao_malloc(sizeof(double) * no);
    mm_ref(outd, &c);
    float *ref = to_f(outd, no), *out = zeros_f(no), *out1 = zeros_f(no);
    char what[96];
    snprintf(what, sizeof what, "matmul fwd N=%d K=%d M=%d bias=%d", N, K, M, with_bias);
    matmul_forward_cpu(out, x, w, b, N, K, M);
    TEST_CLOSE(what, out, ref, no, TOL_F32);
    set_threads(1);
    matmul_forward_cpu(out1, x, w, b, N, K, M);
    float *dx1 = zeros_f(nx), *dw1 = zeros_f(nw), *db1 = zeros_f(M);
    matmul_backward_cpu(dx1, dw1, db1, R, x, w, N, K, M);
    set_threads(max_threads());
    float *dx = zeros_f(nx), *dw = zeros_f(nw), *db = zeros_f(M);
    matmul_backward_cpu(dx, dw, db, R, x, w, N, K, M);
    TEST_CHECK(memcmp(out, out1, sizeof(float) * no) == 0, "%s: differs between 1 and %d threads", what,
               max_threads());
    TEST_CHECK(memcmp(dx, dx1, sizeof(float) * nx) == 0 && memcmp(dw, dw1, sizeof(float) * nw) == 0 &&
                   memcmp(db, db1, sizeof(float) * M) == 0,
               "%s: backward differs between 1 and %d threads", what, max_threads());

    if (fd) {
        float *gx = fd_grad(c.x, nx, mm_loss, &c), *gw = fd_grad(c.w, nw, mm_loss, &c);
        float *gb = zeros_f(M);
        for (int n = 0; n < N; n++)  // d/db of sum(out*R) is column sums of R (exact)
            for (int m = 0; m < M; m++) gb[m] += R[n * M + m];
        snprintf(what, sizeof what, "matmul dinp/dweight/dbias N=%d K=%d M=%d", N, K, M);
        TEST_CLOSE(what, dx, gx, nx, TOL_GRAD);
        TEST_CLOSE(what, dw, gw, nw, TOL_GRAD);
        TEST_CLOSE(what, db, gb, M, TOL_GRAD);

        // Accumulation onto non-zero gradients: G0 + 2 * grad after two calls.
        float *g0x = rand_f(nx, 1), *g0w = rand_f(nw, 1), *g0b = rand_f(M, 1);
        memcpy(dx, g0x, sizeof(float) * nx), memcpy(dw, g0w, sizeof(float) * nw), memcpy(db, g0b, sizeof(float) * M);
        matmul_backward_cpu(dx, dw, db, R, x, w, N, K, M);
        matmul_backward_cpu(dx, dw, db, R, x, w, N, K, M);
        for (size_t i = 0; i < nx; i++) gx[i] = g0x[i] + 2 * gx[i];
        for (size_t i = 0; i < nw; i++) gw[i] = g0w[i] + 2 * gw[i];
        for (int i = 0; i < M; i++) gb[i] = g0b[i] + 2 * gb[i];
        TEST_CLOSE("matmul dinp accumulates", dx, gx, nx, TOL_GRAD);
        TEST_CLOSE("matmul dweight accumulates", dw, gw, nw, TOL_GRAD);
        TEST_CLOSE("matmul dbias accumulates", db, gb, M, TOL_GRAD);

        // Optional gradients: each alone equals its part of the full call.
        float *only = zeros_f(nx > nw ? nx : nw);
        matmul_backward_cpu(NULL, only, NULL, R, x, w, N, K, M);
        TEST_CHECK(memcmp(only, dw1, sizeof(float) * nw) == 0, "matmul dweight alone differs from the full call");
        memset(only, 0, sizeof(float) * nw);
        matmul_backward_cpu(only, NULL, NULL, R, x, w, N, K, M);
        TEST_CHECK(memcmp(only, dx1, sizeof(float) * nx) == 0, "matmul dinp alone differs from the full call");
        free(gx), free(gw), free(gb), free(g0x), free(g0w), free(g0b), free(only);
    }
    free(x), free(w), free(b), free(R), free(c.x), free(c.w), free(c.b), free(outd), free(ref), free(out);
    free(out1), free(dx1), free(dw1), free(db1), free(dx), free(dw), free(db);
}

static void test_matmul(void) {
    test_matmul_shape(1, 1, 1, 1, 1);
    test_matmul_shape(7, 13, 5, 1, 1);
    test_matmul_shape(9, 37, 11, 0, 1);
    test_matmul_shape(8, 16, 8, 1, 1);       // exact tiles, no tails
    test_matmul_shape(33, 70, 19, 1, 0);     // tile tails in N, M and K
    test_matmul_shape(64, 256, 130, 1, 0);   // longer dot products
}

// ---------------------------------------------------------------------------- cross-entropy

typedef struct { int N, V; double *logits; const int32_t *tg; int nvalid; } CeCtx;
static double ce_row_ref(const double *x, int V, int t) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < V; i++) mx = fmax(mx, x[i]);
    for (int i = 0; i < V; i++) s += exp(x[i] - mx);
    return mx + log(s) - x[t];
}
static double ce_loss(void *p) {  // mean over valid rows, the forward's return value
    CeCtx *c = p;
    double s = 0;
    for (int n = 0; n < c->N; n++)
        if (c->tg[n] >= 0) s += ce_row_ref(c->logits + (size_t)n * c->V, c->V, c->tg[n]);
    return s / c->nvalid;
}

typedef struct { const float *logits; int32_t *tg; int N, V; } CeFailArg;
static void ce_fail_fn(void *p) {
    CeFailArg *a = p;
    cross_entropy_forward_cpu(NULL, a->logits, a->tg, a->N, a->V, NULL);
}

static void test_cross_entropy(void) {
    enum { N = 7, V = 13 };
    int32_t tg[N] = {4, -100, 0, 12, 4, -100, 9};
    float *logits = rand_f(N * V, 3), losses[N], lref[N];
    CeCtx c = {N, V, to_d(logits, N * V), tg, 5};
    for (int n = 0; n < N; n++) lref[n] = tg[n] < 0 ? 0.0f : (float)ce_row_ref(c.logits + n * V, V, tg[n]);
    int nv = -1;
    float mean = cross_entropy_forward_cpu(losses, logits, tg, N, V, &nv);
    float mref = (float)ce_loss(&c);
    TEST_CHECK(nv == 5, "cross_entropy n_valid = %d, expected 5", nv);
    TEST_CLOSE("cross_entropy row losses", losses, lref, N, TOL_F32);
    TEST_CLOSE("cross_entropy mean", &mean, &mref, 1, TOL_F32);
    TEST_CHECK(losses[1] == 0.0f && losses[5] == 0.0f, "cross_entropy ignored rows must have loss 0");
    float mean2 = cross_entropy_forward_cpu(NULL, logits, tg, N, V, NULL);
    TEST_CHECK(mean2 == mean, "cross_entropy mean with losses=NULL differs: %.9g vs %.9g", mean2, mean);

    float *g = fd_grad(c.logits, N * V, ce_loss, &c), *dl = zeros_f(N * V);
    cross_entropy_backward_cpu(dl, logits, tg, N, V, 1.0f / nv);
    TEST_CLOSE("cross_entropy dlogits", dl, g, N * V, TOL_GRAD);
    int untouched = 1;
    for (int i = 0; i < V; i++) untouched &= dl[1 * V + i] == 0.0f && dl[5 * V + i] == 0.0f;
    TEST_CHECK(untouched, "cross_entropy ignored rows must get no gradient");
    cross_entropy_backward_cpu(dl, logits, tg, N, V, 1.0f / nv);
    scale_f(g, N * V, 2);
    TEST_CLOSE("cross_entropy dlogits accumulates", dl, g, N * V, TOL_GRAD);

    // Logits ~1e4: without max subtraction exp overflows. Loss and gradient must be finite
    // and match the double reference.
    float *big = zeros_f(N * V), *dbig = zeros_f(N * V), *pref = zeros_f(N * V);
    for (int i = 0; i < N * V; i++) big[i] = 1e4f * logits[i] / 3;
    double *bigd = to_d(big, N * V);
    for (int n = 0; n < N; n++) lref[n] = tg[n] < 0 ? 0.0f : (float)ce_row_ref(bigd + n * V, V, tg[n]);
    cross_entropy_forward_cpu(losses, big, tg, N, V, NULL);
    TEST_CLOSE("cross_entropy losses at logits ~1e4", losses, lref, N, TOL_F32);
    cross_entropy_backward_cpu(dbig, big, tg, N, V, 1.0f);
    int finite = 1;
    for (int i = 0; i < N * V; i++) finite &= isfinite(dbig[i]);
    for (int n = 0; n < N; n++) {
        if (tg[n] < 0) continue;
        const double *x = bigd + n * V;
        double mx = -INFINITY, s = 0;
        for (int i = 0; i < V; i++) mx = fmax(mx, x[i]);
        for (int i = 0; i < V; i++) s += exp(x[i] - mx);
        for (int i = 0; i < V; i++) pref[n * V + i] = (float)(exp(x[i] - mx) / s - (i == tg[n]));
    }
    TEST_CHECK(finite, "cross_entropy gradient at logits ~1e4 is not finite");
    TEST_CLOSE("cross_entropy dlogits at logits ~1e4", dbig, pref, N * V, TOL_F32);

    int32_t none[N];
    for (int n = 0; n < N; n++) none[n] = -100;
    mean = cross_entropy_forward_cpu(NULL, logits, none, N, V, &nv);
    TEST_CHECK(mean == 0.0f && nv == 0, "cross_entropy with all rows ignored: mean %g, n_valid %d", mean, nv);

    tg[3] = V;
    CeFailArg fa = {logits, tg, N, V};
    TEST_EXPECT_FAIL("cross_entropy target >= V", ce_fail_fn, &fa, "target 13 at row 3");

    free(logits), free(c.logits), free(g), free(dl), free(big), free(dbig), free(pref), free(bigd);
}

int main(void) {
    set_threads(max_threads());
    test_embedding();
    test_embedding_buckets();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_swiglu();
    test_matmul();
    test_cross_entropy();
    return test_summary();
}
