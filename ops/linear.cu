// The Linear dispatch (what runs where: ops/linear.cuh; which Linears take fp8: ops/linear.h).
#include <string.h>

#include "../common/cuda_utils.cuh"
#include "../quant/fp8_cast.cuh"
#include "linear.cuh"
#include "matmul.cuh"
#include "matmul_fp8.cuh"
#include "matmul_mx.cuh"

static_assert(LINEAR_AMAX_FLOATS == FP8_AMAX_WS_FLOATS, "ops/linear.h LINEAR_AMAX_FLOATS must match fp8_cast.cuh");

int linear_group_ld(const LinearGroup *g) {
    int ld = 0;
    for (int p = 0; p < g->nparts; p++) ld += g->part[p].M;
    return ld;
}

int linear_group_col(const LinearGroup *g, int p) {
    int c = 0;
    for (int i = 0; i < p; i++) c += g->part[i].M;
    return c;
}

int linear_group_part_fp8(LinearRecipe r, const LinearGroup *g, int p, char *why, size_t n) {
    return linear_part_fp8(r, g->K, g->part[p].M, linear_group_col(g, p), linear_group_ld(g), g->part[p].hp, why, n);
}

void linear_group_scratch(LinearScratchSize *s, LinearRecipe r, long N, const LinearGroup *g) {
    for (int p = 0; p < g->nparts; p++)
        if (linear_group_part_fp8(r, g, p, NULL, 0)) linear_scratch_add(s, r, N, g->K, g->part[p].M);
}

static int group_fp8_parts(const LinearCtx *lc, const LinearGroup *g) {
    int n = 0;
    for (int p = 0; p < g->nparts; p++) n += linear_group_part_fp8(lc->recipe, g, p, NULL, 0);
    return n;
}

static void check_group(const LinearGroup *g, int N, const char *fn) {
    CHECK(g->nparts >= 1 && g->nparts <= LINEAR_MAX_PARTS && g->K > 0 && N >= 0, "%s: bad group (%d parts, K=%d, N=%d)",
          fn, g->nparts, g->K, N);
}

// ---- fp8 / MX pieces -------------------------------------------------------------------------------
// A GEMM operand: fp8 (ops/matmul_fp8.cuh) or MX (ops/matmul_mx.cuh; its e8m0 bytes in the float scratch).
struct LinOp {
    Fp8Mat f;
    MxMat mx;
    int is_mx;
};

// The operand a cast of op wrote into q / s from a stored tensor [rows, cols].
static LinOp make_op(const LinearCtx *lc, Fp8Operand op, const uint8_t *q, const float *s, int rows, int cols) {
    const Fp8CastSpec spec = fp8_recipe_cast(linear_fp8_recipe(lc->recipe), op);
    LinOp o;
    memset(&o, 0, sizeof o);
    o.is_mx = spec.scaling == FP8_SCALE_MX32;
    if (o.is_mx) o.mx.q = q, o.mx.e8m0 = (const uint8_t *)s, o.mx.dtype = spec.dtype;
    else o.f = fp8_mat(q, s, spec, rows, cols);
    return o;
}

// One operand of the recipe cast from the stored bf16 tensor src [rows, cols] (row stride ld; 0: cols)
// into q / s. Tensor scaling: the amax goes to *amax (NULL: the scratch's), or is read from there when
// have_amax (the forward's amax of the same tensor, LinearGroup.saved).
static LinOp cast_operand(const LinearCtx *lc, Fp8Operand op, uint8_t *q, size_t qcap, float *s, size_t scap,
                          const bf16 *src, int rows, int cols, cudaStream_t st, float *amax = nullptr,
                          int have_amax = 0, size_t ld = 0) {
    const Fp8CastSpec spec = fp8_recipe_cast(linear_fp8_recipe(lc->recipe), op);
    const int mx = spec.scaling == FP8_SCALE_MX32;
    if (!ld) ld = (size_t)cols;
    int sld = 0;
    const size_t ns = fp8_scale_count(spec, rows, cols, &sld), nf = mx ? (ns + 3) / 4 : ns;
    CHECK(q && s && (size_t)rows * cols <= qcap && nf <= scap,
          "linear: the %s cast of a [%d x %d] tensor needs %zu codes and %zu scale floats, the scratch holds %zu and "
          "%zu\n  HINT: the scratch is sized from the model's Linears at start-up (linear_group_scratch); a Linear "
          "that was not planned for runs here", fp8_operand_name(op), rows, cols, (size_t)rows * cols, nf, qcap, scap);
    if (spec.scaling == FP8_SCALE_TENSOR) {
        float *am = amax ? amax : lc->amax + FP8_AMAX_PARTIALS;
        CHECK(lc->amax && (amax || !have_amax), "linear: no amax workspace for the %s cast", fp8_operand_name(op));
        if (!have_amax) fp8_amax_tensor(am, lc->amax, src, rows, cols, ld, st);
        fp8_cast_tensor(spec.transposed ? nullptr : q, spec.transposed ? q : nullptr, s, src, rows, cols, ld, am,
                        spec.dtype, spec.pow2, st);
    } else {
        fp8_cast_operand_ld(q, s, (uint8_t *)s, src, rows, cols, ld, spec, lc->amax, st);
    }
    return make_op(lc, op, q, s, rows, cols);
}

// Part p's W operand: op FP8_W_FWD (W [M, K]) or FP8_W_GI (W^T [K, M]). From the group's weight cache
// when it holds the current weights (LinearGroup.wversion), else cast: into the cache (then marked) or,
// without one, into the scratch. amax / have_amax as cast_operand (LinearGroup.saved). Tensorwise, in
// the forward: W and W^T are one cast in two layouts (one scale), so a miss fills both from one read.
static LinOp weight_operand(LinearCtx *lc, const LinearGroup *g, int p, Fp8Operand op, cudaStream_t st, float *amax,
                            int have_amax) {
    const LinearPart *P = &g->part[p];
    const int M = P->M, K = g->K, k = op == FP8_W_GI;
    LinearWCache *wc = g->wc && g->wversion ? &g->wc[p] : nullptr;
    const int pair = linear_same_cast(lc->recipe, FP8_W_FWD, FP8_W_GI);
    if (!wc) {
        lc->w_casts++;
        return cast_operand(lc, op, lc->qw, lc->cap.qw, lc->sw, lc->cap.sw, P->w, M, K, st, amax, have_amax);
    }
    if (wc->from_codes) {  // W as gathered, W^T its transpose (one tensor scale: the transposed cast's codes)
        CHECK(pair && wc->q[0] && wc->s[0] && wc->made[0] == g->wversion,
              "linear: %s's fp8 codes are not gathered for the current weights (--fp8-allgather: the model marks "
              "them when it gathers the layer)", P->name ? P->name : "?");
        lc->w_reused++;
        if (!k) return make_op(lc, op, wc->q[0], wc->s[0], M, K);
        CHECK(lc->qw && (size_t)M * K <= lc->cap.qw, "linear: no W^T scratch for %s [%d x %d]", P->name ? P->name : "?",
              K, M);
        fp8_transpose(lc->qw, wc->q[0], M, K, st);
        return make_op(lc, op, lc->qw, wc->s[0], M, K);
    }
    CHECK(wc->q[0] && wc->q[1] && wc->s[0] && wc->s[1], "linear: %s has no weight cache (not placed for this recipe)",
          P->name ? P->name : "?");
    // tensorwise keeps one scale for both layouts, in s[0]
    float *sk = pair ? wc->s[0] : wc->s[k];
    if (wc->made[k] == g->wversion) {
        lc->w_reused++;
        return make_op(lc, op, wc->q[k], sk, M, K);
    }
    lc->w_casts++;
    const size_t big = (size_t)-1;  // the cache was carved for this part (linear_wcache_place)
    if (pair && !k) {  // W and W^T from one amax and one read
        const Fp8CastSpec spec = fp8_recipe_cast(linear_fp8_recipe(lc->recipe), FP8_W_FWD);
        float *am = amax ? amax : lc->amax + FP8_AMAX_PARTIALS;
        CHECK(lc->amax && (amax || !have_amax), "linear: no amax workspace for the W cast");
        if (!have_amax) fp8_amax_tensor(am, lc->amax, P->w, M, K, (size_t)K, st);
        fp8_cast_tensor(wc->q[0], wc->q[1], wc->s[0], P->w, M, K, (size_t)K, am, spec.dtype, spec.pow2, st);
        wc->made[0] = wc->made[1] = g->wversion;
        return make_op(lc, op, wc->q[0], wc->s[0], M, K);
    }
    const LinOp o = cast_operand(lc, op, wc->q[k], big, sk, big, P->w, M, K, st, amax, have_amax);
    wc->made[k] = g->wversion;
    return o;
}

// out[rp, rq] (row stride ldo) = beta * out + P . Q^T for MX operands, through the path the scratch was
// carved for (lc->mx_native; mx_gemm_try refuses the native path below sm_100).
static void mx_lin_gemm(const LinearCtx *lc, GpuCtx *ctx, void *out, Fp8OutType ot, int ldo, float beta, const MxMat &p,
                        const MxMat &q, int rp, int rq, int kd) {
    MxGemmScratch ws;
    ws.p = (bf16 *)lc->mxp, ws.q = (bf16 *)lc->mxq, ws.p_cap = lc->mxp ? lc->cap.mxp : 0, ws.q_cap = lc->mxq ? lc->cap.mxq : 0;
    ws.sp = lc->mxsp, ws.sq = lc->mxsq, ws.sp_cap = lc->mxsp ? lc->cap.mxsp : 0, ws.sq_cap = lc->mxsq ? lc->cap.mxsq : 0;
    Fp8GemmInfo info;
    if (!mx_gemm_try(ctx, out, ot, ldo, beta, p, q, rp, rq, kd, &ws, lc->mx_native ? MX_GEMM_NATIVE : MX_GEMM_EMULATED,
                     &info))
        FAIL("linear (--recipe %s): %s", linear_recipe_name(lc->recipe), info.msg);
}

// The three GEMMs of a Linear (operand table: ops/matmul_fp8.cuh), fp8 or MX.
static void gemm_forward(const LinearCtx *lc, GpuCtx *ctx, bf16 *out, int ldo, const LinOp &x, const LinOp &w, int N,
                         int K, int M) {
    if (x.is_mx) mx_lin_gemm(lc, ctx, out, FP8_OUT_BF16, ldo, 0.0f, x.mx, w.mx, N, M, K);
    else matmul_fp8_forward(ctx, out, ldo, x.f, w.f, N, K, M, 1);
}
static void gemm_dinp(const LinearCtx *lc, GpuCtx *ctx, bf16 *dx, const LinOp &g, const LinOp &wt, int N, int K, int M,
                      int acc) {
    if (g.is_mx) mx_lin_gemm(lc, ctx, dx, FP8_OUT_BF16, K, acc ? 1.0f : 0.0f, g.mx, wt.mx, N, K, M);
    else matmul_fp8_dinp(ctx, dx, g.f, wt.f, N, K, M, acc);
}
static void gemm_dweight(const LinearCtx *lc, GpuCtx *ctx, float *dw, const LinOp &gt, const LinOp &xt, int N, int K,
                         int M) {
    if (gt.is_mx) mx_lin_gemm(lc, ctx, dw, FP8_OUT_F32, K, 1.0f, gt.mx, xt.mx, M, K, N);
    else matmul_fp8_dweight(ctx, dw, FP8_OUT_F32, gt.f, xt.f, N, K, M, 1);
}

// out[n, c] = bf16(out[n, c] + bias[c]): torchao adds the bias to the bf16 GEMM output.
__global__ void linear_bias_forward_kernel(bf16 *out, const bf16 *bias, int N, int M, int ldo) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * M) return;
    const size_t n = i / M, c = i % M;
    bf16 *o = out + n * ldo + c;
    *o = __float2bfloat16(__bfloat162float(*o) + __bfloat162float(bias[c]));
}

static void linear_bias_forward(bf16 *out, const bf16 *bias, int N, int M, int ldo, cudaStream_t st) {
    const size_t n = (size_t)N * M;
    if (!n) return;
    linear_bias_forward_kernel<<<(unsigned)ceil_div_sz(n, 256), 256, 0, st>>>(out, bias, N, M, ldo);
    CUDA_CHECK_LAST();
}

// ---- forward -----------------------------------------------------------------------------------------
void linear_forward(LinearCtx *lc, GpuCtx *ctx, bf16 *out, const bf16 *x, const LinearGroup *g, int N) {
    check_group(g, N, "linear_forward");
    const int K = g->K, ld = linear_group_ld(g), nfp8 = group_fp8_parts(lc, g);
    if (!nfp8 && g->fused && g->nparts > 1) {  // the bf16 trainer's fused GEMM
        matmul_forward(ctx, out, x, g->part[0].w, g->part[0].bias, N, K, ld, ld);
        return;
    }
    if (nfp8 && N == 0) return;
    LinOp xm;
    memset(&xm, 0, sizeof xm);
    float *sx = nullptr, *sw = nullptr;  // where this forward leaves the amax of x / W_p (LinearGroup.saved)
    if (nfp8 && g->saved) {
        const Fp8Recipe fr = linear_fp8_recipe(lc->recipe);
        sx = fp8_recipe_cast(fr, FP8_X_FWD).scaling == FP8_SCALE_TENSOR ? g->saved : nullptr;
        sw = fp8_recipe_cast(fr, FP8_W_FWD).scaling == FP8_SCALE_TENSOR ? g->saved + 1 : nullptr;
    }
    if (nfp8) xm = cast_operand(lc, FP8_X_FWD, lc->qx, lc->cap.qx, lc->sx, lc->cap.sx, x, N, K, ctx->stream, sx);
    for (int p = 0; p < g->nparts; p++) {
        const LinearPart *P = &g->part[p];
        const int col = linear_group_col(g, p);
        if (!linear_group_part_fp8(lc->recipe, g, p, NULL, 0)) {
            matmul_forward(ctx, out + col, x, P->w, P->bias, N, K, P->M, ld);
            continue;
        }
        const LinOp wm = weight_operand(lc, g, p, FP8_W_FWD, ctx->stream, sw ? sw + p : nullptr, 0);
        gemm_forward(lc, ctx, out + col, ld, xm, wm, N, K, P->M);
        if (P->bias) linear_bias_forward(out + col, P->bias, N, P->M, ld, ctx->stream);
    }
}

// ---- backward ----------------------------------------------------------------------------------------
void linear_backward(LinearCtx *lc, GpuCtx *ctx, bf16 *dx, const bf16 *dout, const bf16 *x, const LinearGroup *g,
                     int N) {
    check_group(g, N, "linear_backward");
    const int K = g->K, ld = linear_group_ld(g), nfp8 = group_fp8_parts(lc, g);
    cudaStream_t st = ctx->stream;
    if (!nfp8 && g->fused && g->nparts > 1) {  // the bf16 trainer's fused GEMMs
        matmul_backward(ctx, dx, g->part[0].dw, g->part[0].dbias, dout, ld, x, g->part[0].w, N, K, ld, 0);
        return;
    }
    if (nfp8 && N == 0) return;
    const Fp8Recipe fr = nfp8 ? linear_fp8_recipe(lc->recipe) : FP8_RECIPE_TENSORWISE;
    const int gw_fp8 = nfp8 && fp8_recipe_cast(fr, FP8_X_GW).scaling != FP8_SCALE_NONE;
    // The forward's amax of x / W_p, where both casts of the tensor are tensor-scaled (LinearGroup.saved).
    auto tensor2 = [&](Fp8Operand a, Fp8Operand b) {
        return fp8_recipe_cast(fr, a).scaling == FP8_SCALE_TENSOR && fp8_recipe_cast(fr, b).scaling == FP8_SCALE_TENSOR;
    };
    float *sx = nfp8 && g->saved && tensor2(FP8_X_FWD, FP8_X_GW) ? g->saved : nullptr;
    float *sw = nfp8 && g->saved && tensor2(FP8_W_FWD, FP8_W_GI) ? g->saved + 1 : nullptr;
    const int g_pair = nfp8 && linear_same_cast(lc->recipe, FP8_G_GI, FP8_G_GW);  // g and g^T in one pass
    LinOp xt;
    memset(&xt, 0, sizeof xt);
    if (gw_fp8) xt = cast_operand(lc, FP8_X_GW, lc->qx, lc->cap.qx, lc->sx, lc->cap.sx, x, N, K, st, sx, sx != nullptr);
    for (int p = 0; p < g->nparts; p++) {
        const LinearPart *P = &g->part[p];
        const int M = P->M, acc = p > 0;
        const bf16 *gp = dout + linear_group_col(g, p);
        if (!linear_group_part_fp8(lc->recipe, g, p, NULL, 0)) {
            matmul_backward(ctx, dx, P->dw, P->dbias, gp, ld, x, P->w, N, K, M, acc);
            continue;
        }
        LinOp gm, gt;  // g_p [N, M] for grad_input, g_p^T [M, N] for grad_weight, cast from g_p's columns in place
        memset(&gm, 0, sizeof gm), memset(&gt, 0, sizeof gt);
        const int want_gt = gw_fp8 && P->dw;
        if (g_pair && (dx || want_gt)) {  // one amax and one read of the part's columns, both layouts
            const Fp8CastSpec sgi = fp8_recipe_cast(fr, FP8_G_GI), sgw = fp8_recipe_cast(fr, FP8_G_GW);
            CHECK(lc->amax && lc->qg && lc->qgt && (size_t)N * M <= lc->cap.qg && (size_t)N * M <= lc->cap.qgt &&
                      lc->cap.sg >= 1, "linear: no g / g^T scratch for %s [%d x %d]", P->name ? P->name : "?", N, M);
            float *am = lc->amax + FP8_AMAX_PARTIALS;
            fp8_amax_tensor(am, lc->amax, gp, N, M, (size_t)ld, st);
            fp8_cast_tensor(dx ? lc->qg : nullptr, want_gt ? lc->qgt : nullptr, lc->sg, gp, N, M, (size_t)ld, am,
                            sgi.dtype, sgi.pow2, st);
            gm.f = fp8_mat(lc->qg, lc->sg, sgi, N, M);
            gt.f = fp8_mat(lc->qgt, lc->sg, sgw, N, M);
        } else {  // g_p^T right after g_p: a part that fits L2 is read from DRAM once
            if (dx) gm = cast_operand(lc, FP8_G_GI, lc->qg, lc->cap.qg, lc->sg, lc->cap.sg, gp, N, M, st, nullptr, 0, ld);
            if (want_gt)
                gt = cast_operand(lc, FP8_G_GW, lc->qgt, lc->cap.qgt, lc->sgt, lc->cap.sgt, gp, N, M, st, nullptr, 0, ld);
        }
        if (dx) {
            LinOp wt = weight_operand(lc, g, p, FP8_W_GI, st, sw ? sw + p : nullptr, sw != nullptr);  // W^T [K, M]
            if (!gm.is_mx && gm.f.scaling == FP8_SCALE_AXIS && wt.f.scaling == FP8_SCALE_TENSOR) {
                // rowwise_with_gw_hp: a per-row g with a tensorwise W^T; cuBLASLt's OUTER_VEC_32F needs
                // vectors on both sides, so W^T's scale is repeated once per row of W^T (torchao does too).
                CHECK(lc->svec && (size_t)K <= lc->cap.svec, "linear: no scale-vector scratch for K = %d", K);
                fp8_scale_broadcast(lc->svec, wt.f.scale_inv, K, st);
                wt.f.scaling = FP8_SCALE_AXIS, wt.f.scale_inv = lc->svec;
            }
            gemm_dinp(lc, ctx, dx, gm, wt, N, K, M, acc);
        }
        if (want_gt) {
            gemm_dweight(lc, ctx, P->dw, gt, xt, N, K, M);
            if (P->dbias) matmul_backward(ctx, nullptr, nullptr, P->dbias, gp, ld, x, P->w, N, K, M, 0);
        } else if (P->dw || P->dbias) {  // rowwise_with_gw_hp (or dbias alone): as in the bf16 path
            matmul_backward(ctx, nullptr, gw_fp8 ? nullptr : P->dw, P->dbias, gp, ld, x, P->w, N, K, M, 0);
        }
    }
}
