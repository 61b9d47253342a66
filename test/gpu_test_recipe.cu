// train_llama --recipe on the GPU: the Linear dispatch (ops/linear.cuh) and the model with each recipe.
//
// 1. The dispatch alone, on random groups of Linears (one Linear; q/k/v-like groups with and without
//    bias, with parts that fall back to bf16; shapes with partial 128-blocks), for every recipe:
//    forward, grad_input, grad_weight and dbias against a float64 reference computed from the
//    dequantized fp8 operands. The reference casts are the CPU casts of quant/fp8.c (bit-exact with
//    the GPU casts and torchao, test_fp8 / gpu_test_fp8), chosen by fp8_recipe_cast for each operand,
//    so a wrong cast (dtype, scaling, transposition, pow2), a wrong scale pointer or layout, or a
//    wrong GEMM mapping fails. Per element the bound is how the GPU computes: u the output's unit
//    roundoff (bf16 2^-8, fp32 2^-24), A the accumulation error bound (below),
//        D = u |ref| + (1 + u) A
//        result added to an old value (bias after the bf16 rounding as torchao adds it; grad_input
//        accumulated over a group's parts; dW += in fp32):
//                |got - (old + ref)| <= D + (u + 2^-24 + u 2^-24) (|old + ref| + D)
//    A for bf16 GEMMs: (k + 2) 2^-23 sum_k |p_k q_k| (fp32 accumulation).
//    A for fp8 GEMMs: Hopper's fp8 tensor core (the sm_90 wgmma k = 32 step) adds 32 products and
//    the accumulator by aligning all 33 addends to the largest exponent E among them and truncating
//    each toward zero to a multiple of 2^(E - 13); the sum of the truncated addends is the new
//    accumulator. Found from the first H200 run: the two grad_weight outputs that failed the earlier
//    bound (r_acc 2^-11 sum |p q|, a random-walk estimate) are reproduced bit for bit by this rule
//    from the CPU casts' codes and scales (got - old = scale_g scale_x acc: 60720 for (104, 320)
//    rowwise and -275040 for (257, 275) blockwise, exact sums 60777.17 / -275239.88), and of 672
//    variants tried (1 to 64 products per step, 10 to 25 bits, truncation toward zero or -inf,
//    accumulator included or not) only this one gives both; applied to the whole 272x400 dW it
//    makes exactly those two elements the worst, at err/bound 1.196 and 1.032 as measured. The
//    random-walk bound fails when products differ much in size along k (here g and x rows, the
//    reduction dim of grad_weight, span 2^-3..2^3 each, so |p q| spans 2^12): 32 small products
//    each lose up to 2^-13 of the largest, while sum |p q| is about the largest alone. The bound
//    (a rigorous one under the rule; each addend t loses less than min(2^-13 M_c, |t|)): per
//    32-long step c (k from 0 in steps of 32), with M_c >= the largest addend,
//        e_c = min(2^-13 M_c, |acc|) + sum_{k in c} min(2^-13 M_c, |p_k q_k|)
//        M_c = max(max_{k in c} |p_k q_k|, |acc|),  |acc| <= |exact partial sum| + errors so far
//    plus 2^-13 (|sum| + errors) at each 128-long k block end and at the end (in case the
//    accumulator is renormalized to 13 bits when it is promoted to fp32; the two samples cannot tell),
//    plus (ceil(k/128) + 2) 2^-24 sum_k |p_k q_k| for the fp32 promotion adds and the scale products.
//    Block scaling starts a fresh accumulator every 128 k (its scales change per block). Other fp8
//    GEMMs (fast accumulation or not) may promote every 128 k or never: |acc| is bounded by the
//    larger of the block's and the whole partial sum, so the bound holds either way. Against the
//    emulated tensor core on the failing case the new bound is reached to 0.22 at most (it is ~3x the
//    old one: the worst case lines up every truncation).
//    MX recipes (mxfp8, mxfp8-gw-hp): the reference dequantizes the CPU MX casts (quant/mx.c, RCEIL,
//    e8m0 per 32 along each GEMM's reduction dim). On Hopper the MX GEMM is emulated: the dequantized
//    operands are exact in bf16 (quant/mx.h), so the only errors are the bf16 GEMM's fp32 accumulation
//    and the output rounding: A is the bf16 one, (k + 2) 2^-23 sum_k |p_k q_k|.
//    The bf16 recipe must make exactly the ops/matmul.cuh calls the trainer made before the
//    dispatch existed: its outputs are compared bit for bit with those calls.
// 2. The model (test/fixtures/llama3, test/fixtures/qwen2 with q/k/v biases, and a llama3 variant
//    whose every Linear has dims that are multiples of 32, random init), one training step per
//    recipe: (a) every Linear of every layer re-run through the model's own dispatch on the model's
//    activations and weights, forward and backward, against the dequantized reference above (tight);
//    the gate/up output equals the one the model's forward kept, bit for bit; (b) loss, logits and
//    every gradient against the bf16 recipe, within the tolerance derived below; (c) the same run
//    twice, and with every recompute flag, gives the same bits.
//    Tolerance against bf16. One fp8 GEMM of this model's operands has relative Frobenius error at
//    most E = 0.10 with e4m3 x e4m3 operands, 0.16 with an e5m2 gradient (gpu_test_fp8gemm's end-to-end
//    bounds, 2x the RMS estimate of two roundings of 3 (2) mantissa bits; the H200 measured
//    0.031-0.039 and 0.057-0.058). To first order the errors of independent GEMMs add in quadrature,
//    each weighted by the share of the signal that passes through it (<= 1), so an output that
//    depends on c fp8 GEMMs in sequence errs by at most E sqrt(c): logits c = c_f, the fp8 GEMMs on the
//    forward path (per layer: q/k/v if any part is fp8, o, gate/up if any, down); gradients c = 2 c_f + 1
//    (each forward fp8 GEMM has an fp8 grad_input GEMM, plus the tensor's own grad_weight GEMM), with E
//    = 0.16 for tensorwise (e5m2 gradients). Fixture llama3 (q_proj, o_proj in fp8): c_f = 4, logits
//    0.20, gradients 0.30 (tensorwise 0.48); all-fp8 variant: c_f = 8, 0.28 and 0.41 (0.66). The loss:
//    cross-entropy has gradient softmax - onehot, whose 1-norm is <= 2, so |loss_a - loss_b| <=
//    2 mean_t max_v |z_a - z_b| (+ 1e-4 for the fp32 sums), checked with the two runs' own logits.
//    bf16's own error (2^-8 per rounding) is far below these.
// 3. An fp8 recipe refuses a token count that is not a multiple of 16 before allocating anything.
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <functional>

#include "gpu_test.cuh"
#include "../model/llama_gpu.cuh"
#include "../ops/linear.cuh"
#include "../ops/matmul.cuh"
#include "../ops/matmul_mx.cuh"
#include "../quant/mx.h"
extern "C" {
#include "../common/fileio.h"
#include "../model/model.h"
#include "../model/safetensors.h"
#include "test.h"
}

static GpuCtx g_ctx;
static uint64_t g_rng = 0x11AEA5ull;

#define U_BF16 0x1p-8
#define U_F32 0x1p-24
#define U_MMA 0x1p-13  // the fp8 tensor core's alignment grid below the largest addend's exponent
#define MMA_K 32        // products per accumulation step (wgmma k for fp8)
#define E_GEMM_E4M3 0.10
#define E_GEMM_E5M2 0.16
static double r_acc_bf16(int k) { return (k + 2) * 0x1p-23; }


// ---------------------------------------------------------------- host <-> device
static void ul_bf16(bf16 *d, const float *h, size_t n) {
    bf16 *t = (bf16 *)ao_malloc(n * sizeof(bf16) + 2);
    for (size_t i = 0; i < n; i++) t[i] = __float2bfloat16(h[i]);
    h2d(d, t, n * sizeof(bf16));
    free(t);
}
// bf16-exact values uniform in +-mag, rows spanning 2^-3..2^3 (per-row scales matter).
static float *rand_matrix(int rows, int cols, float mag) {
    float *h = (float *)ao_malloc(((size_t)rows * cols + 1) * sizeof(float));
    for (int r = 0; r < rows; r++) {
        const float rm = ldexpf(mag, r % 7 - 3);
        for (int c = 0; c < cols; c++) h[(size_t)r * cols + c] = bf16r(rm * test_rand_uniform(&g_rng));
    }
    return h;
}
static float *rand_vec(size_t n, float mag, int bf16_exact) {
    float *h = (float *)ao_malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        const float v = mag * test_rand_uniform(&g_rng);
        h[i] = bf16_exact ? bf16r(v) : v;
    }
    return h;
}

// ---------------------------------------------------------------- the reference
// Operand op of a Linear as the GEMM reads it, from the stored tensor x [rows, cols] (fp32 copies
// of bf16 values), dequantized exactly in float64. fp8: the recipe's cast (quant/fp8.c's CPU
// reference, the GPU's bits); a bf16 operand: x itself, transposed where the GEMM reads x^T.
static int op_transposed(Fp8Operand op) { return op == FP8_W_GI || op == FP8_G_GW || op == FP8_X_GW; }
static Fp8CastSpec operand_spec(LinearRecipe r, int fp8, Fp8Operand op) {
    Fp8CastSpec s;
    memset(&s, 0, sizeof s);
    if (fp8) s = fp8_recipe_cast(linear_fp8_recipe(r), op);
    if (s.scaling == FP8_SCALE_NONE) s.transposed = op_transposed(op);
    return s;
}
static double *dequant_operand(const float *x, int rows, int cols, Fp8CastSpec s) {
    const int orows = s.transposed ? cols : rows, ocols = s.transposed ? rows : cols;
    const size_t n = (size_t)rows * cols;
    double *out = (double *)ao_malloc((n + 1) * sizeof(double));
    if (s.scaling == FP8_SCALE_NONE) {
        for (int r = 0; r < orows; r++)
            for (int c = 0; c < ocols; c++)
                out[(size_t)r * ocols + c] = s.transposed ? x[(size_t)c * cols + r] : x[(size_t)r * cols + c];
        return out;
    }
    int ld = 0;
    const size_t ns = fp8_scale_count(s, rows, cols, &ld);
    uint8_t *q = (uint8_t *)ao_malloc(n + 1);
    float *si = (float *)ao_malloc((ns + 1) * sizeof(float));
    switch (s.scaling) {
        case FP8_SCALE_TENSOR:
        case FP8_SCALE_AXIS:
            fp8_cast_cpu(q, si, x, rows, cols, s.dtype, s.scaling == FP8_SCALE_AXIS, s.pow2, s.transposed);
            for (size_t i = 0; i < ns; i++) si[i] = fp8_scale_inv(si[i]);  // what the GPU cast writes
            break;
        case FP8_SCALE_1X128: fp8_block1x128_cpu(q, si, x, rows, cols, s.transposed); break;
        case FP8_SCALE_128X128: fp8_block128x128_cpu(q, si, ld, x, rows, cols, s.transposed); break;
        case FP8_SCALE_MX32: {  // e8m0 bytes; the exact fp32 dequantization (quant/mx.h)
            float *d = (float *)ao_malloc(n * sizeof(float) + 4);
            mx_quantize_cpu(q, (uint8_t *)si, x, rows, cols, s.dtype, s.mx_rceil ? MX_RCEIL : MX_FLOOR, s.transposed);
            mx_dequantize_cpu(d, q, (const uint8_t *)si, orows, ocols, s.dtype);
            for (size_t i = 0; i < n; i++) out[i] = d[i];
            free(d), free(q), free(si);
            return out;
        }
        default: FAIL("dequant_operand: scaling %d", (int)s.scaling);
    }
    for (int r = 0; r < orows; r++)
        for (int c = 0; c < ocols; c++) {
            double sc;
            switch (s.scaling) {
                case FP8_SCALE_TENSOR: sc = si[0]; break;
                case FP8_SCALE_AXIS: sc = si[r]; break;
                case FP8_SCALE_1X128: sc = si[(size_t)(c / FP8_BLOCK) * orows + r]; break;
                default: sc = si[(size_t)(r / FP8_BLOCK) * ld + c / FP8_BLOCK]; break;
            }
            out[(size_t)r * ocols + c] = (double)fp8_to_f32(q[(size_t)r * ocols + c], s.dtype) * sc;
        }
    free(q), free(si);
    return out;
}

// How a GEMM accumulates (the bound A at the top).
typedef enum { ACC_BF16, ACC_FP8, ACC_FP8_BLOCK } AccMode;

// The accumulation error bound A of one fp8 GEMM output sum_k p[k] q[k] (the top has the derivation).
static double fp8_acc_bound(const double *p, const double *q, int kd, AccMode mode) {
    double tot = 0, blk = 0;   // exact partial sums: all of k so far, the current 128-long block
    double etot = 0, eblk = 0; // error bounds: all of it, since the current block began
    double ab = 0;
    // |accumulator| <= this: a fresh one per 128-long block (block scaling; or a promoting kernel),
    // or (other fp8 GEMMs) one over all of k if the kernel never promotes.
#define ACC_MAG() (mode == ACC_FP8_BLOCK ? fabs(blk) + eblk : fmax(fabs(tot) + etot, fabs(blk) + eblk))
    for (int s = 0; s < kd; s += MMA_K) {
        if (s > 0 && s % 128 == 0) {  // a block ends: renormalization when promoted, a fresh accumulator
            etot += U_MMA * ACC_MAG();
            blk = 0, eblk = 0;
        }
        const int end = s + MMA_K < kd ? s + MMA_K : kd;
        double tmax = 0, csum = 0;
        for (int k = s; k < end; k++) {
            const double t = p[k] * q[k];
            tmax = fmax(tmax, fabs(t)), csum += t, ab += fabs(t);
        }
        const double acc = ACC_MAG(), grid = U_MMA * fmax(tmax, acc);
        double e = fmin(grid, acc);
        for (int k = s; k < end; k++) e += fmin(grid, fabs(p[k] * q[k]));
        etot += e, eblk += e, tot += csum, blk += csum;
    }
    etot += U_MMA * ACC_MAG();
#undef ACC_MAG
    return etot + (ceil_div(kd, 128) + 2) * U_F32 * ab;
}

// ref[i, j] = sum_k P[i, k] Q[j, k] and its accumulation bound acc[i, j] (P [rp, kd], Q [rq, kd]).
static void ref_gemm(double *ref, double *acc, const double *P, const double *Q, int rp, int rq, int kd, AccMode mode) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < rp; i++)
        for (int j = 0; j < rq; j++) {
            double s = 0, a = 0;
            const double *p = P + (size_t)i * kd, *q = Q + (size_t)j * kd;
            for (int k = 0; k < kd; k++) s += p[k] * q[k], a += fabs(p[k] * q[k]);
            ref[(size_t)i * rq + j] = s;
            acc[(size_t)i * rq + j] = mode == ACC_BF16 ? r_acc_bf16(kd) * a : fp8_acc_bound(p, q, kd, mode);
        }
}

// One GEMM of a Linear: the reference and its per-element accumulation bound A (see the top).
struct RefGemm {
    double *ref, *acc;
    int rp, rq, kd;
};
static RefGemm ref_linear_gemm(LinearRecipe r, int fp8, int gemm, const float *x, const float *w, const float *g, int N,
                               int K, int M) {
    // gemm 0: y = x . W^T; 1: dx = g . (W^T)^T; 2: dW = g^T . (x^T)^T
    static const Fp8Operand P_OP[3] = {FP8_X_FWD, FP8_G_GI, FP8_G_GW}, Q_OP[3] = {FP8_W_FWD, FP8_W_GI, FP8_X_GW};
    const float *psrc[3] = {x, g, g}, *qsrc[3] = {w, w, x};
    const int prow[3] = {N, N, N}, pcol[3] = {K, M, M}, qrow[3] = {M, M, N}, qcol[3] = {K, K, K};
    const Fp8CastSpec ps = operand_spec(r, fp8, P_OP[gemm]), qs = operand_spec(r, fp8, Q_OP[gemm]);
    double *P = dequant_operand(psrc[gemm], prow[gemm], pcol[gemm], ps);
    double *Q = dequant_operand(qsrc[gemm], qrow[gemm], qcol[gemm], qs);
    RefGemm o;
    o.rp = gemm == 2 ? M : N, o.rq = gemm == 0 ? M : K, o.kd = gemm == 0 ? K : gemm == 1 ? M : N;
    o.ref = (double *)ao_malloc((size_t)o.rp * o.rq * sizeof(double) + 8);
    o.acc = (double *)ao_malloc((size_t)o.rp * o.rq * sizeof(double) + 8);
    const int block = ps.scaling == FP8_SCALE_1X128 || ps.scaling == FP8_SCALE_128X128;
    // MX: emulated below sm_100 (a bf16 GEMM on exact operands); the native path is bounded like blocks
    // (fresh scales per 32-block; an estimate: its accumulator has not been measured)
    const int mx_native = ps.scaling == FP8_SCALE_MX32 && mx_gemm_path(&g_ctx) == MX_GEMM_NATIVE;
    const AccMode mode = ps.scaling == FP8_SCALE_NONE || (ps.scaling == FP8_SCALE_MX32 && !mx_native) ? ACC_BF16
                         : block || mx_native                                                       ? ACC_FP8_BLOCK
                                                                                                    : ACC_FP8;
    ref_gemm(o.ref, o.acc, P, Q, o.rp, o.rq, o.kd, mode);
    free(P), free(Q);
    return o;
}
static void free_ref(RefGemm &g) { free(g.ref), free(g.acc); }

// The bound of one output element: rounding to the output (u) of the GEMM result, then (has_old)
// adding old and rounding again.
static double elem_bound(double ref, double acc, double u, int has_old, double want) {
    const double D = u * fabs(ref) + (1.0 + u) * acc;
    return (has_old ? D + (u + U_F32 + u * U_F32) * (fabs(want) + D) : D) + 1e-30;
}

// Worst err/bound over got[i * ldg + j] vs want[i * n + j]; one failed check names the element.
struct Worst {
    double ratio;
    size_t i, j;
    double got, want, bound;
};
static void worst_update(Worst &w, size_t i, size_t j, double got, double want, double bound) {
    double e = fabs(got - want), r = got == got ? e / bound : INFINITY;
    if (r > w.ratio || (r != r)) w = {r, i, j, got, want, bound};
}
static double report(const char *what, const Worst &w) {
    TEST_CHECK(w.ratio <= 1.0, "%s: element (%zu, %zu) got %.9g want %.9g: |err| %.3g > bound %.3g (err/bound %.3g)%s",
               what, w.i, w.j, w.got, w.want, fabs(w.got - w.want), w.bound, w.ratio,
               w.got != w.got ? "  [NaN]" : "");
    return w.ratio;
}

// ---------------------------------------------------------------- one group through the dispatch
struct HostGroup {  // host copies of a group's tensors (fp32 values of bf16 / fp32 data)
    float *x;       // [N, K]
    float *w[LINEAR_MAX_PARTS], *b[LINEAR_MAX_PARTS];
};
static HostGroup download_group(const bf16 *x, const LinearGroup *G, int N) {
    HostGroup h;
    memset(&h, 0, sizeof h);
    h.x = d2h_bf16_f32(x, (size_t)N * G->K);
    for (int p = 0; p < G->nparts; p++) {
        h.w[p] = d2h_bf16_f32(G->part[p].w, (size_t)G->part[p].M * G->K);
        if (G->part[p].bias) h.b[p] = d2h_bf16_f32(G->part[p].bias, (size_t)G->part[p].M);
    }
    return h;
}
static void free_host_group(HostGroup &h, int nparts) {
    free(h.x);
    for (int p = 0; p < nparts; p++) free(h.w[p]), free(h.b[p]);
}

static void describe(char *buf, size_t n, const char *label, LinearRecipe r, const LinearGroup *G, int N) {
    size_t at = (size_t)snprintf(buf, n, "%s [%s] N=%d K=%d", label, linear_recipe_name(r), N, G->K);
    for (int p = 0; p < G->nparts && at < n; p++)
        at += (size_t)snprintf(buf + at, n - at, "%s%d(%s)", p ? "+" : " M=", G->part[p].M,
                               linear_group_part_fp8(r, G, p, NULL, 0) ? "fp8" : "bf16");
}

// Forward of group G on x (device) through lc, against the reference. out_keep (device, may be
// NULL): an output the model computed with the same call, which must have the same bits.
static void check_forward(LinearCtx *lc, const bf16 *x, const LinearGroup *G, int N, const char *label,
                          const bf16 *out_keep) {
    const LinearRecipe r = lc->recipe;
    const int K = G->K, ld = linear_group_ld(G);
    char what[320];
    describe(what, sizeof what, label, r, G, N);
    HostGroup h = download_group(x, G, N);
    bf16 *out = dalloc<bf16>((size_t)N * ld);
    CUDA_CHECK(cudaMemsetAsync(out, 0xFF, (size_t)N * ld * sizeof(bf16), g_s));  // NaN: unwritten columns show
    int ok = guarded([&] { linear_forward(lc, &g_ctx, out, x, G, N); });
    TEST_CHECK(ok, "%s forward: failed: %s", what, g_fail_msg);
    if (ok) {
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        float *got = d2h_bf16_f32(out, (size_t)N * ld);
        for (int p = 0; p < G->nparts; p++) {
            const int M = G->part[p].M, col = linear_group_col(G, p), fp8 = linear_group_part_fp8(r, G, p, NULL, 0);
            RefGemm rg = ref_linear_gemm(r, fp8, 0, h.x, h.w[p], NULL, N, K, M);
            Worst w = {0, 0, 0, 0, 0, 0};
            for (int i = 0; i < N; i++)
                for (int j = 0; j < M; j++) {
                    const double ref = rg.ref[(size_t)i * M + j], b = h.b[p] ? h.b[p][j] : 0.0, want = ref + b;
                    const double bound = elem_bound(ref, rg.acc[(size_t)i * M + j], U_BF16, h.b[p] != NULL, want);
                    worst_update(w, i, j, got[(size_t)i * ld + col + j], want, bound);
                }
            char pw[400];
            snprintf(pw, sizeof pw, "%s forward %s", what, G->part[p].name);
            const double ratio = report(pw, w);
            printf("  %-100s err/bound %.3f\n", pw, ratio);
            free_ref(rg);
        }
        if (out_keep) {
            float *kept = d2h_bf16_f32(out_keep, (size_t)N * ld);
            TEST_CHECK(memcmp(kept, got, (size_t)N * ld * sizeof(float)) == 0,
                       "%s forward: the dispatch re-run differs from the output the model's forward kept", what);
            free(kept);
        }
        free(got);
    }
    cudaFree(out);
    free_host_group(h, G->nparts);
}

// Backward of group G on x (device) with a random gradient, against the reference. The parts' dw and
// dbias are accumulated into (their old values are read first).
static void check_backward(LinearCtx *lc, const bf16 *x, const LinearGroup *G, int N, const char *label) {
    const LinearRecipe r = lc->recipe;
    const int K = G->K, ld = linear_group_ld(G);
    char what[320];
    describe(what, sizeof what, label, r, G, N);
    HostGroup h = download_group(x, G, N);
    float *hg = rand_matrix(N, ld, 2e-3f);
    bf16 *g = dalloc<bf16>((size_t)N * ld), *dx = dalloc<bf16>((size_t)N * K);
    ul_bf16(g, hg, (size_t)N * ld);
    CUDA_CHECK(cudaMemsetAsync(dx, 0xFF, (size_t)N * K * sizeof(bf16), g_s));
    float *dw0[LINEAR_MAX_PARTS] = {}, *db0[LINEAR_MAX_PARTS] = {};
    for (int p = 0; p < G->nparts; p++) {
        dw0[p] = d2h_f32(G->part[p].dw, (size_t)G->part[p].M * K);
        if (G->part[p].dbias) db0[p] = d2h_f32(G->part[p].dbias, (size_t)G->part[p].M);
    }
    int ok = guarded([&] { linear_backward(lc, &g_ctx, dx, g, x, G, N); });
    TEST_CHECK(ok, "%s backward: failed: %s", what, g_fail_msg);
    if (ok) {
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        float *gdx = d2h_bf16_f32(dx, (size_t)N * K);
        double *S = (double *)ao_calloc((size_t)N * K + 1, sizeof(double)), *E = (double *)ao_calloc((size_t)N * K + 1, sizeof(double));
        for (int p = 0; p < G->nparts; p++) {
            const int M = G->part[p].M, col = linear_group_col(G, p), fp8 = linear_group_part_fp8(r, G, p, NULL, 0);
            float *gp = (float *)ao_malloc((size_t)N * M * sizeof(float) + 4);  // the part's columns, dense
            for (int i = 0; i < N; i++) memcpy(gp + (size_t)i * M, hg + (size_t)i * ld + col, (size_t)M * sizeof(float));
            // grad_input, accumulated over the parts: |got - S| <= E, propagated part by part.
            RefGemm gi = ref_linear_gemm(r, fp8, 1, h.x, h.w[p], gp, N, K, M);
            for (size_t e = 0; e < (size_t)N * K; e++) {
                const double D = U_BF16 * fabs(gi.ref[e]) + (1.0 + U_BF16) * gi.acc[e];
                const double s = S[e] + gi.ref[e];
                E[e] = p == 0 ? D : E[e] + D + (U_BF16 + U_F32 + U_BF16 * U_F32) * (fabs(s) + E[e] + D);
                S[e] = s;
            }
            free_ref(gi);
            // grad_weight into the old fp32 gradient.
            RefGemm gw = ref_linear_gemm(r, fp8, 2, h.x, h.w[p], gp, N, K, M);
            float *gotw = d2h_f32(G->part[p].dw, (size_t)M * K);
            Worst w = {0, 0, 0, 0, 0, 0};
            for (int i = 0; i < M; i++)
                for (int j = 0; j < K; j++) {
                    const size_t e = (size_t)i * K + j;
                    const double want = dw0[p][e] + gw.ref[e];
                    worst_update(w, i, j, gotw[e], want, elem_bound(gw.ref[e], gw.acc[e], U_F32, 1, want));
                }
            char pw[400];
            snprintf(pw, sizeof pw, "%s grad_weight %s", what, G->part[p].name);
            double ratio = report(pw, w);
            printf("  %-100s err/bound %.3f\n", pw, ratio);
            free_ref(gw), free(gotw);
            if (db0[p]) {  // dbias += column sums of g (fp32, the bf16 path's kernel)
                float *gotb = d2h_f32(G->part[p].dbias, (size_t)M);
                Worst wb = {0, 0, 0, 0, 0, 0};
                for (int j = 0; j < M; j++) {
                    double s = 0, a = 0;
                    for (int i = 0; i < N; i++) s += gp[(size_t)i * M + j], a += fabs(gp[(size_t)i * M + j]);
                    const double want = db0[p][j] + s;
                    worst_update(wb, 0, j, gotb[j], want, r_acc_bf16(N) * (a + fabs(db0[p][j])) + 0x1p-23 * fabs(want) + 1e-30);
                }
                snprintf(pw, sizeof pw, "%s dbias %s", what, G->part[p].name);
                report(pw, wb);
                free(gotb);
            }
            free(gp);
        }
        Worst w = {0, 0, 0, 0, 0, 0};
        for (int i = 0; i < N; i++)
            for (int j = 0; j < K; j++) {
                const size_t e = (size_t)i * K + j;
                worst_update(w, i, j, gdx[e], S[e], E[e] + 1e-30);
            }
        char pw[400];
        snprintf(pw, sizeof pw, "%s grad_input", what);
        const double ratio = report(pw, w);
        printf("  %-100s err/bound %.3f\n", pw, ratio);
        free(gdx), free(S), free(E);
    }
    for (int p = 0; p < G->nparts; p++) free(dw0[p]), free(db0[p]);
    free(hg);
    cudaFree(g), cudaFree(dx);
    free_host_group(h, G->nparts);
}

// ---------------------------------------------------------------- 1. the dispatch on random groups
struct GroupCase {
    const char *name;
    int N, K, nparts, M[LINEAR_MAX_PARTS], bias, fused;
};

// A scratch for the group under recipe r, zeroed (128x128 scale padding finite), as the model makes it.
static void *make_ctx(LinearCtx *lc, LinearRecipe r, const LinearGroup *G, int N) {
    memset(lc, 0, sizeof *lc);
    lc->recipe = r;
    lc->mx_native = linear_recipe_is_mx(r) && mx_gemm_path(&g_ctx) == MX_GEMM_NATIVE;
    linear_group_scratch(&lc->cap, r, N, G);
    const size_t bytes = linear_ctx_place(lc, nullptr);
    if (!bytes) return nullptr;
    void *mem = dalloc<char>(bytes);
    CUDA_CHECK(cudaMemsetAsync(mem, 0, bytes, g_s));
    linear_ctx_place(lc, mem);
    return mem;
}

// The weight cast cache (LinearGroup.wc, wversion) on one group: a forward and backward with the cache
// filling it, again taking every W / W^T from it, then with new weights under a new version; each time
// the same bits as the same calls without a cache (and a saved context in both), and the counters say
// the codes were reused. A forgotten invalidation would show as the old weights' results.
struct GroupOut {
    float *y, *dx, *dw, *db;
};
static void free_out(GroupOut &o) { free(o.y), free(o.dx), free(o.dw), free(o.db); }
static int same_out(const GroupOut &a, const GroupOut &b, int N, int K, int ld) {
    return !memcmp(a.y, b.y, (size_t)N * ld * 4) && !memcmp(a.dx, b.dx, (size_t)N * K * 4) &&
           !memcmp(a.dw, b.dw, (size_t)ld * K * 4) && !memcmp(a.db, b.db, (size_t)ld * 4);
}
static void test_group_wcache(LinearCtx *lc, LinearGroup G, const GroupCase &gc, const bf16 *x, bf16 *w) {
    const LinearRecipe r = lc->recipe;
    const int N = gc.N, K = gc.K, ld = linear_group_ld(&G);
    LinearWCache wc[LINEAR_MAX_PARTS];
    memset(wc, 0, sizeof wc);
    void *mem[LINEAR_MAX_PARTS] = {};
    int nfp8 = 0;
    for (int p = 0; p < G.nparts; p++) {
        if (!linear_group_part_fp8(r, &G, p, NULL, 0)) continue;
        nfp8++;
        const size_t bytes = linear_wcache_place(&wc[p], r, K, G.part[p].M, nullptr);
        mem[p] = dalloc<char>(bytes);
        CUDA_CHECK(cudaMemsetAsync(mem[p], 0, bytes, g_s));
        linear_wcache_place(&wc[p], r, K, G.part[p].M, mem[p]);
    }
    float *hg = rand_matrix(N, ld, 2e-3f);
    bf16 *g = dalloc<bf16>((size_t)N * ld), *y = dalloc<bf16>((size_t)N * ld), *dx = dalloc<bf16>((size_t)N * K);
    float *dw = dalloc<float>((size_t)ld * K), *db = dalloc<float>((size_t)ld);
    ul_bf16(g, hg, (size_t)N * ld);
    G.saved = dalloc<float>(LINEAR_SAVED_FLOATS);
    auto run = [&](LinearWCache *c, unsigned long long version) {
        LinearGroup Gv = G;
        Gv.wc = c, Gv.wversion = version;
        CUDA_CHECK(cudaMemsetAsync(dw, 0, (size_t)ld * K * sizeof(float), g_s));
        CUDA_CHECK(cudaMemsetAsync(db, 0, (size_t)ld * sizeof(float), g_s));
        for (int p = 0, col = 0; p < G.nparts; col += G.part[p].M, p++)
            Gv.part[p].dw = dw + (size_t)col * K, Gv.part[p].dbias = gc.bias ? db + col : nullptr;
        linear_forward(lc, &g_ctx, y, x, &Gv, N);
        linear_backward(lc, &g_ctx, dx, g, x, &Gv, N);
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        GroupOut o = {d2h_bf16_f32(y, (size_t)N * ld), d2h_bf16_f32(dx, (size_t)N * K), d2h_f32(dw, (size_t)ld * K),
                      d2h_f32(db, (size_t)ld)};
        return o;
    };
    char what[200];
    snprintf(what, sizeof what, "%s [%s], weight cache", gc.name, linear_recipe_name(r));
    GroupOut ref0 = run(nullptr, 0);
    unsigned long long reused0 = lc->w_reused;
    GroupOut c1 = run(wc, 1);  // fills the cache (tensorwise: W and W^T in the forward, W^T reused)
    const unsigned long long fill_reused = lc->w_reused - reused0;
    reused0 = lc->w_reused;
    GroupOut c2 = run(wc, 1);  // every W and W^T from the cache
    const unsigned long long hit_reused = lc->w_reused - reused0;
    TEST_CHECK(same_out(c1, ref0, N, K, ld) && same_out(c2, ref0, N, K, ld),
               "%s: differs from the casts without a cache (filling %d, reusing %d)", what,
               same_out(c1, ref0, N, K, ld), same_out(c2, ref0, N, K, ld));
    const int pair = linear_same_cast(r, FP8_W_FWD, FP8_W_GI);
    TEST_CHECK(hit_reused == (unsigned long long)(2 * nfp8) && fill_reused == (unsigned long long)(pair ? nfp8 : 0),
               "%s: %llu operands reused while filling (want %d), %llu when full (want %d)", what, fill_reused,
               pair ? nfp8 : 0, hit_reused, 2 * nfp8);
    // New weights, a new version: cast again, the new weights' results.
    float *hw2 = rand_matrix(ld, K, 0.05f);
    ul_bf16(w, hw2, (size_t)ld * K);
    GroupOut ref1 = run(nullptr, 0);
    GroupOut c3 = run(wc, 2);
    TEST_CHECK(!same_out(ref1, ref0, N, K, ld), "%s: new weights give the old results (the check cannot see a stale "
               "cache)", what);
    TEST_CHECK(same_out(c3, ref1, N, K, ld), "%s: after new weights and a new version the results are not the new "
               "weights' (a stale cache)", what);
    printf("  %-100s %s\n", what, same_out(c1, ref0, N, K, ld) && same_out(c2, ref0, N, K, ld) &&
                                         same_out(c3, ref1, N, K, ld) ? "the same bits as without it" : "DIFFERS");
    free_out(ref0), free_out(c1), free_out(c2), free_out(ref1), free_out(c3);
    free(hg), free(hw2);
    cudaFree(g), cudaFree(y), cudaFree(dx), cudaFree(dw), cudaFree(db), cudaFree(G.saved);
    for (int p = 0; p < G.nparts; p++)
        if (mem[p]) cudaFree(mem[p]);
}

static void test_group(LinearRecipe r, const GroupCase &gc) {
    const int N = gc.N, K = gc.K;
    int ld = 0;
    for (int p = 0; p < gc.nparts; p++) ld += gc.M[p];
    float *hx = rand_matrix(N, K, 2.0f), *hw = rand_matrix(ld, K, 0.05f), *hb = rand_vec((size_t)ld, 0.5f, 1);
    float *hdw = rand_vec((size_t)ld * K, 1e-2f, 0), *hdb = rand_vec((size_t)ld, 1e-2f, 0);
    bf16 *x = dalloc<bf16>((size_t)N * K), *w = dalloc<bf16>((size_t)ld * K), *b = dalloc<bf16>((size_t)ld);
    float *dw = dalloc<float>((size_t)ld * K), *db = dalloc<float>((size_t)ld);
    ul_bf16(x, hx, (size_t)N * K), ul_bf16(w, hw, (size_t)ld * K), ul_bf16(b, hb, (size_t)ld);
    h2d(dw, hdw, (size_t)ld * K * sizeof(float)), h2d(db, hdb, (size_t)ld * sizeof(float));
    LinearGroup G;
    memset(&G, 0, sizeof G);
    G.K = K, G.nparts = gc.nparts, G.fused = gc.fused;
    static const char *names[3] = {"part0", "part1", "part2"};
    for (int p = 0, col = 0; p < gc.nparts; col += gc.M[p], p++) {
        LinearPart *P = &G.part[p];
        P->name = names[p], P->M = gc.M[p], P->w = w + (size_t)col * K, P->dw = dw + (size_t)col * K;
        P->bias = gc.bias ? b + col : nullptr, P->dbias = gc.bias ? db + col : nullptr;
    }
    LinearCtx lc;
    void *mem = make_ctx(&lc, r, &G, N);
    check_forward(&lc, x, &G, N, gc.name, nullptr);
    check_backward(&lc, x, &G, N, gc.name);
    if (r != LINEAR_BF16) {
        // With a saved context (as the model runs it: the backward reuses the forward's amax of x and
        // W): the reference again, and the same bits as without it.
        char name[160];
        snprintf(name, sizeof name, "%s, saved amax", gc.name);
        G.saved = dalloc<float>(LINEAR_SAVED_FLOATS);
        check_forward(&lc, x, &G, N, name, nullptr);
        check_backward(&lc, x, &G, N, name);
        float *hg = rand_matrix(N, ld, 2e-3f);
        bf16 *g = dalloc<bf16>((size_t)N * ld), *y[2], *dx[2];
        float *dwv[2], *dbv[2];
        ul_bf16(g, hg, (size_t)N * ld);
        for (int v = 0; v < 2; v++) {
            y[v] = dalloc<bf16>((size_t)N * ld), dx[v] = dalloc<bf16>((size_t)N * K);
            dwv[v] = dalloc<float>((size_t)ld * K), dbv[v] = dalloc<float>((size_t)ld);
            CUDA_CHECK(cudaMemsetAsync(dwv[v], 0, (size_t)ld * K * sizeof(float), g_s));
            CUDA_CHECK(cudaMemsetAsync(dbv[v], 0, (size_t)ld * sizeof(float), g_s));
            LinearGroup Gv = G;
            if (!v) Gv.saved = nullptr;
            for (int p = 0, col = 0; p < gc.nparts; col += gc.M[p], p++)
                Gv.part[p].dw = dwv[v] + (size_t)col * K, Gv.part[p].dbias = gc.bias ? dbv[v] + col : nullptr;
            linear_forward(&lc, &g_ctx, y[v], x, &Gv, N);
            linear_backward(&lc, &g_ctx, dx[v], g, x, &Gv, N);
        }
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        float *a[2], *b[2], *c[2], *e[2];
        for (int v = 0; v < 2; v++)
            a[v] = d2h_bf16_f32(y[v], (size_t)N * ld), b[v] = d2h_bf16_f32(dx[v], (size_t)N * K),
            c[v] = d2h_f32(dwv[v], (size_t)ld * K), e[v] = d2h_f32(dbv[v], (size_t)ld);
        const int same = !memcmp(a[0], a[1], (size_t)N * ld * 4) && !memcmp(b[0], b[1], (size_t)N * K * 4) &&
                         !memcmp(c[0], c[1], (size_t)ld * K * 4) && !memcmp(e[0], e[1], (size_t)ld * 4);
        TEST_CHECK(same, "%s [%s]: the saved context changes the bits (y %d dx %d dW %d db %d)", gc.name,
                   linear_recipe_name(r), !memcmp(a[0], a[1], (size_t)N * ld * 4),
                   !memcmp(b[0], b[1], (size_t)N * K * 4), !memcmp(c[0], c[1], (size_t)ld * K * 4),
                   !memcmp(e[0], e[1], (size_t)ld * 4));
        printf("  %-100s %s\n", name, same ? "the same bits as without it" : "DIFFERS");
        for (int v = 0; v < 2; v++) {
            free(a[v]), free(b[v]), free(c[v]), free(e[v]);
            cudaFree(y[v]), cudaFree(dx[v]), cudaFree(dwv[v]), cudaFree(dbv[v]);
        }
        free(hg), cudaFree(g), cudaFree(G.saved);
        G.saved = nullptr;
        test_group_wcache(&lc, G, gc, x, w);  // last: it changes the weights
    }

    if (r == LINEAR_BF16) {  // the trainer's calls before the dispatch, bit for bit
        h2d(dw, hdw, (size_t)ld * K * sizeof(float)), h2d(db, hdb, (size_t)ld * sizeof(float));
        float *hg = rand_matrix(N, ld, 2e-3f);
        bf16 *g = dalloc<bf16>((size_t)N * ld), *y1 = dalloc<bf16>((size_t)N * ld), *y2 = dalloc<bf16>((size_t)N * ld);
        bf16 *dx1 = dalloc<bf16>((size_t)N * K), *dx2 = dalloc<bf16>((size_t)N * K);
        float *dw2 = dalloc<float>((size_t)ld * K), *db2 = dalloc<float>((size_t)ld);
        ul_bf16(g, hg, (size_t)N * ld);
        h2d(dw2, hdw, (size_t)ld * K * sizeof(float)), h2d(db2, hdb, (size_t)ld * sizeof(float));
        linear_forward(&lc, &g_ctx, y1, x, &G, N);
        linear_backward(&lc, &g_ctx, dx1, g, x, &G, N);
        if (gc.fused && gc.nparts > 1) {
            matmul_forward(&g_ctx, y2, x, w, gc.bias ? b : nullptr, N, K, ld, ld);
            matmul_backward(&g_ctx, dx2, dw2, gc.bias ? db2 : nullptr, g, ld, x, w, N, K, ld, 0);
        } else {
            for (int p = 0, col = 0; p < gc.nparts; col += gc.M[p], p++)
                matmul_forward(&g_ctx, y2 + col, x, w + (size_t)col * K, gc.bias ? b + col : nullptr, N, K, gc.M[p], ld);
            for (int p = 0, col = 0; p < gc.nparts; col += gc.M[p], p++)
                matmul_backward(&g_ctx, dx2, dw2 + (size_t)col * K, gc.bias ? db2 + col : nullptr, g + col, ld, x,
                                w + (size_t)col * K, N, K, gc.M[p], p > 0);
        }
        CUDA_CHECK(cudaStreamSynchronize(g_s));
        float *a1 = d2h_bf16_f32(y1, (size_t)N * ld), *a2 = d2h_bf16_f32(y2, (size_t)N * ld);
        float *b1 = d2h_bf16_f32(dx1, (size_t)N * K), *b2 = d2h_bf16_f32(dx2, (size_t)N * K);
        float *c1 = d2h_f32(dw, (size_t)ld * K), *c2 = d2h_f32(dw2, (size_t)ld * K);
        float *e1 = d2h_f32(db, (size_t)ld), *e2 = d2h_f32(db2, (size_t)ld);
        const int same = !memcmp(a1, a2, (size_t)N * ld * 4) && !memcmp(b1, b2, (size_t)N * K * 4) &&
                         !memcmp(c1, c2, (size_t)ld * K * 4) && (!gc.bias || !memcmp(e1, e2, (size_t)ld * 4));
        TEST_CHECK(same, "%s [bf16]: the dispatch differs from the trainer's matmul calls (y %d dx %d dW %d db %d)",
                   gc.name, !memcmp(a1, a2, (size_t)N * ld * 4), !memcmp(b1, b2, (size_t)N * K * 4),
                   !memcmp(c1, c2, (size_t)ld * K * 4), !memcmp(e1, e2, (size_t)ld * 4));
        printf("  %-100s %s\n", gc.name, same ? "bf16 dispatch = the trainer's matmul calls, bit for bit" : "DIFFERS");
        free(a1), free(a2), free(b1), free(b2), free(c1), free(c2), free(e1), free(e2), free(hg);
        cudaFree(g), cudaFree(y1), cudaFree(y2), cudaFree(dx1), cudaFree(dx2), cudaFree(dw2), cudaFree(db2);
    }
    cudaFree(mem);
    free(hx), free(hw), free(hb), free(hdw), free(hdb);
    cudaFree(x), cudaFree(w), cudaFree(b), cudaFree(dw), cudaFree(db);
}

// ---------------------------------------------------------------- 2. the model
struct Run {
    double loss;
    float *logits;  // [N, V]
    float *grads;   // tab.total
};
static void free_run(Run &r) { free(r.logits), free(r.grads); }

// One training step (logits of a dloss = 0 forward, then forward + backward); with check_linears the
// model's Linears are re-run through its dispatch on its activations and checked (then the model's
// gradients are no longer the step's: they were copied before).
static Run run_step(const LlamaModel *cpu, int B, int T, const int32_t *tok, const int32_t *tgt, GpuRunOpts o,
                    const char *label, int check_linears) {
    LlamaGpu m;
    o.lm_chunk = B * T;  // all logits in the buffer
    llama_gpu_init(&m, &g_ctx, cpu, B, T, &o);
    if (check_linears) llama_gpu_print_linears(&m, stdout);
    llama_gpu_set_batch(&m, &g_ctx, tok, tgt);
    const int N = B * T, V = cpu->cfg.vocab_size;
    int nv = 0;
    llama_gpu_forward(&m, &g_ctx, 0.0f, &nv);
    Run r;
    r.logits = d2h_bf16_f32(m.logits, (size_t)N * V);
    const double sum = llama_gpu_forward(&m, &g_ctx, 1.0f / (float)nv, &nv);
    r.loss = sum / nv;
    llama_gpu_backward(&m, &g_ctx);
    CUDA_CHECK(cudaStreamSynchronize(g_s));
    r.grads = d2h_f32(m.grads, m.tab.total);
    if (check_linears) {
        char what[200];
        for (int l = 0; l <= cpu->cfg.n_layers; l++) {
            LinearGroup G[4];
            const bf16 *in[4];
            const int n = llama_gpu_linears(&m, l, G, in);
            for (int i = 0; i < n; i++) {
                if (l == cpu->cfg.n_layers) snprintf(what, sizeof what, "%s lm_head", label);
                else snprintf(what, sizeof what, "%s layer %d %s", label, l, G[i].part[0].name);
                // the gate/up output is kept by the forward (the others are rotated or overwritten)
                const bf16 *keep = l < cpu->cfg.n_layers && !strcmp(G[i].part[0].name, "gate_proj") ? m.layers[l].gu : nullptr;
                check_forward(&m.lin, in[i], &G[i], N, what, keep);
                check_backward(&m.lin, in[i], &G[i], N, what);
            }
        }
    }
    llama_gpu_free(&m);
    return r;
}

static double rel_frob(const float *a, const float *b, size_t n) {
    double se = 0, sb = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = (double)a[i] - b[i];
        se += e * e, sb += (double)b[i] * b[i];
        if (a[i] != a[i]) return INFINITY;
    }
    return sb > 0 ? sqrt(se / sb) : sqrt(se);
}

// fp8 GEMMs in sequence on the forward path of one layer (q/k/v if any part is fp8, o, gate/up if
// any, down), for the tolerance at the top.
static int fp8_depth(const LlamaModel *cpu, LinearRecipe r, int B, int T) {
    GpuRunOpts o;
    memset(&o, 0, sizeof o);
    o.recipe = r;
    o.attn = o.attn_bwd = ATTN_KERNEL;
    LlamaGpu m;
    llama_gpu_init(&m, &g_ctx, cpu, B, T, &o);
    LinearGroup G[4];
    const int n = llama_gpu_linears(&m, 0, G, nullptr);
    int depth = 0;
    for (int i = 0; i < n; i++) {
        int any = 0;
        for (int p = 0; p < G[i].nparts; p++) any |= linear_group_part_fp8(r, &G[i], p, NULL, 0);
        depth += any;
    }
    llama_gpu_free(&m);
    return depth;
}

static void check_model(const char *label, const LlamaModel *cpu, int B, int T, const int32_t *tok, const int32_t *tgt) {
    GpuRunOpts o;
    memset(&o, 0, sizeof o);
    o.attn = ATTN_AUTO;
    o.attn_bwd = ATTN_KERNEL;  // deterministic
    const int N = B * T, V = cpu->cfg.vocab_size, L = cpu->cfg.n_layers;
    const size_t P = cpu->tab.total;
    char what[256];
    snprintf(what, sizeof what, "%s bf16", label);
    Run base = run_step(cpu, B, T, tok, tgt, o, what, 1);
    for (int ri = 1; ri < LINEAR_NRECIPES; ri++) {
        const LinearRecipe r = (LinearRecipe)ri;
        GpuRunOpts f = o;
        f.recipe = r;
        snprintf(what, sizeof what, "%s %s", label, linear_recipe_name(r));
        Run a = run_step(cpu, B, T, tok, tgt, f, what, 1);
        const int cf = L * fp8_depth(cpu, r, B, T);
        const double e_fwd = E_GEMM_E4M3, e_bwd = r == LINEAR_FP8_TENSORWISE ? E_GEMM_E5M2 : E_GEMM_E4M3;
        const double tol_logits = e_fwd * sqrt((double)(cf ? cf : 1)), tol_grad = e_bwd * sqrt(2.0 * cf + 1);
        // loss within what its logits allow (cross-entropy is 2-Lipschitz in the max norm)
        double dz = 0;
        int nv = 0;
        for (int t = 0; t < N; t++) {
            if (tgt[t] < 0) continue;  // the loss is the mean over valid targets
            double mx = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, fabs((double)a.logits[(size_t)t * V + v] - base.logits[(size_t)t * V + v]));
            dz += mx, nv++;
        }
        dz /= nv ? nv : 1;
        TEST_CHECK(fabs(a.loss - base.loss) <= 2 * dz + 1e-4, "%s: loss %.6f vs bf16 %.6f, more than 2 x mean max "
                   "|logit difference| %.3g allows", what, a.loss, base.loss, dz);
        const double le = rel_frob(a.logits, base.logits, (size_t)N * V);
        TEST_CHECK(le <= tol_logits, "%s: logits differ from bf16 by %.4f (relative Frobenius) > %.3f", what, le,
                   tol_logits);
        double worst = 0;
        const char *wname = "";
        for (int i = 0; i < cpu->tab.n; i++) {
            const ParamInfo *p = &cpu->tab.p[i];
            const double e = rel_frob(a.grads + p->offset, base.grads + p->offset, p->numel);
            TEST_CHECK(e <= tol_grad, "%s: gradient of %s differs from bf16 by %.4f (relative Frobenius) > %.3f", what,
                       p->hf_name, e, tol_grad);
            if (e > worst || e != e) worst = e, wname = p->hf_name;
        }
        printf("  %s: %d fp8 GEMMs on the forward path; loss %.6f (bf16 %.6f, |diff| %.2e <= %.2e), logits %.4f (<= "
               "%.3f), worst gradient %.4f (<= %.3f, %s)\n", what, cf, a.loss, base.loss, fabs(a.loss - base.loss),
               2 * dz + 1e-4, le, tol_logits, worst, tol_grad, wname);
        if (cf) TEST_CHECK(memcmp(a.grads, base.grads, P * sizeof(float)) != 0, "%s: gradients equal bf16's bit for "
                           "bit: the fp8 GEMMs did not run", what);
        // The same run again, and with every recompute flag: the same bits.
        Run b = run_step(cpu, B, T, tok, tgt, f, what, 0);
        TEST_CHECK(b.loss == a.loss && !memcmp(a.grads, b.grads, P * sizeof(float)), "%s: two identical runs differ", what);
        free_run(b);
        GpuRunOpts rc = f;
        rc.recompute_norm = rc.recompute_swiglu = rc.recompute_ffn = rc.recompute_attn = 1;
        b = run_step(cpu, B, T, tok, tgt, rc, what, 0);
        TEST_CHECK(b.loss == a.loss && !memcmp(a.grads, b.grads, P * sizeof(float)), "%s: recompute changes the bits",
                   what);
        free_run(b);
        free_run(a);
    }
    free_run(base);
}

// Gradient accumulation with the weight cast cache (GpuRunOpts.cache_weight_casts): 2 optimizer steps
// of 2 micro-batches each, with and without the cache, per fp8 recipe: the same losses, gradients and
// weights bit for bit, and the cache was used (every micro-batch after a step's first takes its W and W^T
// codes from it). A control run that keeps the cache across a step (the version restored after the
// optimizer step, as if nothing had called llama_gpu_params_changed) must end with other weights:
// otherwise the comparison could not see a stale cache. One more run with every recompute flag.
static void check_accumulation(const char *label, const LlamaModel *cpu, int B, int T, const int32_t *tok,
                               const int32_t *tgt) {
    const int N = B * T;
    int32_t *tok2 = (int32_t *)ao_malloc((size_t)N * sizeof(int32_t)), *tgt2 = (int32_t *)ao_malloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) tok2[i] = tok[N - 1 - i], tgt2[i] = tgt[N - 1 - i];  // the second micro-batch
    const size_t P = cpu->tab.total;
    for (int ri = 1; ri < LINEAR_NRECIPES; ri++) {
        const LinearRecipe r = (LinearRecipe)ri;
        struct Res {
            double loss[2];
            uint16_t *params;
            float *grads;
            unsigned long long reused, casts;
        } res[4];
        // 0: no cache; 1: cache; 2: cache, never invalidated (control); 3: cache + every recompute flag
        for (int v = 0; v < 4; v++) {
            GpuRunOpts o;
            memset(&o, 0, sizeof o);
            o.attn = ATTN_AUTO, o.attn_bwd = ATTN_KERNEL, o.recipe = r, o.lm_chunk = N;
            o.cache_weight_casts = v > 0;
            if (v == 3) o.recompute_norm = o.recompute_swiglu = o.recompute_ffn = o.recompute_attn = 1;
            LlamaGpu m;
            llama_gpu_init(&m, &g_ctx, cpu, B, T, &o);
            for (int step = 0; step < 2; step++) {
                llama_gpu_zero_grads(&m, &g_ctx);
                double sum = 0;
                for (int a = 0; a < 2; a++) {
                    llama_gpu_set_batch(&m, &g_ctx, a ? tok2 : tok, a ? tgt2 : tgt);
                    int nv = 0;
                    sum += llama_gpu_forward(&m, &g_ctx, 1.0f / (2.0f * (float)N), &nv);
                    llama_gpu_backward(&m, &g_ctx);
                }
                res[v].loss[step] = sum;
                const unsigned long long ver = m.wversion;
                llama_gpu_adamw(&m, &g_ctx, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step + 1, 1.0f);
                if (v == 2) m.wversion = ver;  // the control: a weights change the cache does not hear of
            }
            CUDA_CHECK(cudaStreamSynchronize(g_s));
            res[v].params = (uint16_t *)ao_malloc(P * 2);
            d2h(res[v].params, m.params, P * 2);
            res[v].grads = d2h_f32(m.grads, P);
            res[v].reused = m.lin.w_reused, res[v].casts = m.lin.w_casts;
            llama_gpu_free(&m);
        }
        char what[200];
        snprintf(what, sizeof what, "%s %s, 2 steps x 2 micro-batches", label, linear_recipe_name(r));
        for (int v = 1; v < 4; v += 2) {
            const int same = res[v].loss[0] == res[0].loss[0] && res[v].loss[1] == res[0].loss[1] &&
                             !memcmp(res[v].params, res[0].params, P * 2) &&
                             !memcmp(res[v].grads, res[0].grads, P * sizeof(float));
            TEST_CHECK(same, "%s%s: the weight cache changes the bits (loss %.9g %.9g vs %.9g %.9g, weights %s, "
                       "gradients %s)", what, v == 3 ? " (recompute)" : "", res[v].loss[0], res[v].loss[1],
                       res[0].loss[0], res[0].loss[1], memcmp(res[v].params, res[0].params, P * 2) ? "differ" : "equal",
                       memcmp(res[v].grads, res[0].grads, P * sizeof(float)) ? "differ" : "equal");
            TEST_CHECK(res[v].reused > 0 && res[0].reused == 0, "%s: W / W^T codes reused %llu times with the cache, "
                       "%llu without", what, res[v].reused, res[0].reused);
            printf("  %s%s: weight cache %s; W / W^T casts %llu, reused %llu (without it: %llu casts)\n", what,
                   v == 3 ? " (recompute)" : "", same ? "the same bits" : "DIFFERS", res[v].casts, res[v].reused,
                   res[0].casts);
        }
        TEST_CHECK(memcmp(res[2].params, res[0].params, P * 2) != 0, "%s: a cache kept across the optimizer step ends "
                   "with the same weights: the comparison cannot see a stale cache", what);
        for (int v = 0; v < 4; v++) free(res[v].params), free(res[v].grads);
    }
    free(tok2), free(tgt2);
}

static int load_fixture(const char *name, LlamaModel *cpu, SafeTensors *io) {
    char dir[512], err[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", test_dir(), name);
    if (!model_load_hf(cpu, dir, err, sizeof err)) {
        TEST_CHECK(0, "%s: %s", name, err);
        return 0;
    }
    char *iop = path_join(dir, "io.safetensors");
    const int ok = st_open(io, iop, err, sizeof err);
    free(iop);
    TEST_CHECK(ok, "%s: %s", name, err);
    if (!ok) model_free(cpu);
    return ok;
}

static void test_models(void) {
    const char *names[] = {"llama3", "qwen2"};
    for (int i = 0; i < 2; i++) {
        LlamaModel cpu;
        SafeTensors io;
        if (!load_fixture(names[i], &cpu, &io)) continue;
        const StTensor *ids = st_find(&io, "input_ids"), *tg = st_find(&io, "targets");
        const int B = (int)ids->shape[0], T = (int)ids->shape[1];
        check_model(names[i], &cpu, B, T, (const int32_t *)ids->data, (const int32_t *)tg->data);
        if (i == 0) {
            // A variant of the llama3 fixture whose every Linear but lm_head takes fp8: hidden 64,
            // intermediate 128, 4 heads x 16, 2 KV heads (q 64, k/v 32), random weights.
            LlamaConfig c = cpu.cfg;
            c.hidden_size = 64, c.intermediate_size = 128, c.head_dim = 16;
            LlamaModel v;
            model_init(&v, &c);
            model_init_random(&v, 7);
            check_model("llama3-all-fp8", &v, B, T, (const int32_t *)ids->data, (const int32_t *)tg->data);
            check_accumulation("llama3-all-fp8", &v, B, T, (const int32_t *)ids->data, (const int32_t *)tg->data);
            // 3. tokens not a multiple of 16: refused before anything is allocated
            for (int r = 1; r < LINEAR_NRECIPES; r++) {
                GpuRunOpts o;
                memset(&o, 0, sizeof o);
                o.recipe = (LinearRecipe)r;
                LlamaGpu m;
                const int ok = guarded([&] { llama_gpu_init(&m, &g_ctx, &v, 1, 37, &o); });
                TEST_CHECK(!ok && strstr(g_fail_msg, r == LINEAR_MXFP8 ? "multiple of 32" : "multiple of 16"),
                           "%s with 37 tokens: %s",
                           linear_recipe_name((LinearRecipe)r), ok ? "accepted" : g_fail_msg);
                if (ok) llama_gpu_free(&m);
            }
            printf("  refusal: %s\n", g_fail_msg);
            model_free(&v);
        }
        st_close(&io);
        model_free(&cpu);
    }
}

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        test_skip("gpu_test_recipe: no CUDA GPU");
        return test_summary();
    }
    gpu_ctx_init(&g_ctx, 0);
    g_s = g_ctx.stream;
    printf("device: %s (sm_%d%d), cuBLASLt %zu\n", g_ctx.prop.name, g_ctx.prop.major, g_ctx.prop.minor,
           cublasLtGetVersion());
    if (g_ctx.prop.major != 9) {
        test_skip("gpu_test_recipe: the rowwise and blockwise fp8 GEMMs need compute capability 9.x");
        gpu_ctx_free(&g_ctx);
        return test_summary();
    }
    const GroupCase cases[] = {
        {"one Linear", 64, 256, 1, {384}, 0, 0},
        {"one Linear, partial 128-blocks", 48, 400, 1, {272}, 0, 0},
        {"q/k/v with bias", 32, 64, 3, {64, 32, 32}, 1, 1},
        {"q/k/v, k and v bf16 (24 out)", 32, 48, 3, {48, 24, 24}, 0, 1},
        {"gate/up", 48, 64, 2, {128, 128}, 0, 1},
        {"gate/up unfused", 16, 80, 2, {96, 96}, 0, 0},
        {"in_features 136 (bf16)", 32, 136, 1, {48}, 1, 0},
        {"MX blocks, not 128-blocks", 96, 96, 1, {160}, 1, 0},  // MX along K 96, M 160, N 96: 3 / 5 / 3 blocks
    };
    printf("the Linear dispatch vs the dequantized reference\n");
    for (int r = 0; r < LINEAR_NRECIPES; r++)
        for (const GroupCase &gc : cases) test_group((LinearRecipe)r, gc);
    printf("the model: one step per recipe vs bf16; every Linear vs the dequantized reference\n");
    test_models();
    gpu_ctx_free(&g_ctx);
    return test_summary();
}
