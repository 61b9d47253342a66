// Linear recipes: names, which Linears take the fp8 GEMMs, and the scratch of their casts
// (ops/linear.h; the rules and their sources are at the top of that file).
#include "linear.h"

#include <stdio.h>
#include <string.h>

#include "../common/error.h"
#include "../quant/mx.h"

static const char *const NAMES[LINEAR_NRECIPES] = {"bf16",          "fp8-tensorwise", "fp8-rowwise", "fp8-rowwise-gw-hp",
                                                   "fp8-blockwise", "mxfp8",          "mxfp8-gw-hp"};

const char *linear_recipe_name(LinearRecipe r) { return (unsigned)r < LINEAR_NRECIPES ? NAMES[r] : "?"; }

Fp8Recipe linear_fp8_recipe(LinearRecipe r) {
    switch (r) {
        case LINEAR_FP8_TENSORWISE: return FP8_RECIPE_TENSORWISE;
        case LINEAR_FP8_ROWWISE: return FP8_RECIPE_ROWWISE;
        case LINEAR_FP8_ROWWISE_GW_HP: return FP8_RECIPE_ROWWISE_GW_HP;
        case LINEAR_FP8_BLOCKWISE: return FP8_RECIPE_BLOCKWISE;
        case LINEAR_MXFP8: return FP8_RECIPE_MXFP8;
        case LINEAR_MXFP8_GW_HP: return FP8_RECIPE_MXFP8_GW_HP;
        default: FAIL("linear_fp8_recipe: recipe %d (%s) has no fp8 casts", (int)r, linear_recipe_name(r));
    }
}

int linear_recipe_is_mx(LinearRecipe r) { return r == LINEAR_MXFP8 || r == LINEAR_MXFP8_GW_HP; }

int linear_recipe_parse(const char *s, LinearRecipe *r, char *err, size_t n) {
    for (int i = 0; i < LINEAR_NRECIPES; i++)
        if (s && strcmp(s, NAMES[i]) == 0) {
            *r = (LinearRecipe)i;
            return 1;
        }
    snprintf(err, n,
             "--recipe %s: expected bf16, fp8-tensorwise, fp8-rowwise, fp8-rowwise-gw-hp, fp8-blockwise, mxfp8 or "
             "mxfp8-gw-hp", s ? s : "(null)");
    return 0;
}

int linear_tokens_ok(LinearRecipe r, long N, char *why, size_t n) {
    if (r == LINEAR_BF16) return 1;
    if (r == LINEAR_MXFP8) {
        if (N > 0 && N % MX_BLOCK == 0) return 1;
        if (why)
            snprintf(why, n,
                     "--recipe %s needs b*t (the tokens of a micro-batch, here %ld) to be a multiple of 32: the "
                     "grad_weight GEMM reduces over the tokens, and its MX operands (g^T, x^T) are cast in blocks of 32 "
                     "along them (torchao's to_mx refuses a partial block)\n  HINT: pick -b and -t with b*t a multiple "
                     "of 32, or --recipe mxfp8-gw-hp (grad_weight in bf16)", linear_recipe_name(r), N);
        return 0;
    }
    if (N > 0 && N % 16 == 0) return 1;
    if (why)
        snprintf(why, n,
                 "--recipe %s needs b*t (the tokens of a micro-batch, here %ld) to be a multiple of 16: the "
                 "grad_weight GEMM reduces over the tokens, and fp8 GEMM operands are rows of whole 16-byte units "
                 "(torch._scaled_mm refuses it too; torchao pads only with pad_inner_dim)\n  HINT: pick -b and -t "
                 "with b*t a multiple of 16, or --recipe bf16", linear_recipe_name(r), N);
    return 0;
}

int linear_same_cast(LinearRecipe r, Fp8Operand a, Fp8Operand b) {
    if (r == LINEAR_BF16) return 0;
    const Fp8CastSpec sa = fp8_recipe_cast(linear_fp8_recipe(r), a), sb = fp8_recipe_cast(linear_fp8_recipe(r), b);
    return sa.scaling == FP8_SCALE_TENSOR && sb.scaling == FP8_SCALE_TENSOR && sa.dtype == sb.dtype && sa.pow2 == sb.pow2;
}

int linear_part_fp8(LinearRecipe r, int K, int M, int col, int ldo, int hp, char *why, size_t n) {
    char tmp[8];
    if (!why) why = tmp, n = sizeof tmp;
    if (r == LINEAR_BF16) {
        snprintf(why, n, "--recipe bf16");
        return 0;
    }
    if (hp) {
        snprintf(why, n, "the output projection: torchao's filter keeps it in high precision");
        return 0;
    }
    if (K % 16 || M % 16) {
        snprintf(why, n, "%s %d is not a multiple of 16: torchao's filter keeps it in high precision",
                 K % 16 ? "in_features" : "out_features", K % 16 ? K : M);
        return 0;
    }
    if (linear_recipe_is_mx(r) && (K % MX_BLOCK || M % MX_BLOCK)) {
        snprintf(why, n, "%s %d is not a multiple of 32: torchao's to_mx needs whole blocks of 32 along %s, so it "
                 "stays in high precision", K % MX_BLOCK ? "in_features" : "out_features", K % MX_BLOCK ? K : M,
                 K % MX_BLOCK ? "in_features (the forward's reduction)" : "out_features (grad_input's reduction)");
        return 0;
    }
    // The fp8 GEMM writes bf16 rows through cuBLASLt, which wants 16-byte aligned rows and starts.
    if (col % 8 || ldo % 8) {
        snprintf(why, n, "its output columns [%d, %d) in rows of %d bf16 are not 16-byte aligned", col, col + M, ldo);
        return 0;
    }
    return 1;
}

static void grow(size_t *a, size_t b) {
    if (b > *a) *a = b;
}

// Scale entries of one cast in floats (MX: e8m0 bytes, 4 to a float).
static size_t scale_floats(Fp8Recipe f, Fp8Operand op, int rows, int cols) {
    const Fp8CastSpec sp = fp8_recipe_cast(f, op);
    const size_t c = fp8_scale_count(sp, rows, cols, NULL);
    return sp.scaling == FP8_SCALE_MX32 ? (c + 3) / 4 : c;
}

// MX: per GEMM, its P and Q operands (rows x reduction dim): dequantized bf16 and swizzled scales.
static void mx_scratch_add(LinearScratchSize *s, Fp8Recipe f, int N, int K, int M) {
    const int gw = fp8_recipe_cast(f, FP8_X_GW).scaling == FP8_SCALE_MX32;
    const int rp[3] = {N, N, M}, rq[3] = {M, K, K}, kd[3] = {K, M, N};  // forward, grad_input, grad_weight
    for (int g = 0; g < (gw ? 3 : 2); g++) {
        grow(&s->mxp, (size_t)rp[g] * kd[g]);
        grow(&s->mxq, (size_t)rq[g] * kd[g]);
        grow(&s->mxsp, mx_swizzled_bytes(rp[g], (kd[g] + MX_BLOCK - 1) / MX_BLOCK));
        grow(&s->mxsq, mx_swizzled_bytes(rq[g], (kd[g] + MX_BLOCK - 1) / MX_BLOCK));
    }
}

void linear_scratch_add(LinearScratchSize *s, LinearRecipe r, long N, int K, int M) {
    const Fp8Recipe f = linear_fp8_recipe(r);
    const size_t n = (size_t)N, k = (size_t)K, m = (size_t)M;
    const int gw = fp8_recipe_cast(f, FP8_G_GW).scaling != FP8_SCALE_NONE;  // grad_weight in fp8
    const int pair = linear_same_cast(r, FP8_G_GI, FP8_G_GW);                // g and g^T: one cast, one scale
    grow(&s->qx, n * k);
    grow(&s->qw, m * k);
    grow(&s->qg, n * m);
    if (gw) grow(&s->qgt, n * m);
    // Stored tensors: x [N, K], W [M, K], g [N, M]; the specs say which are cast transposed.
    grow(&s->sx, scale_floats(f, FP8_X_FWD, (int)N, K));
    grow(&s->sx, scale_floats(f, FP8_X_GW, (int)N, K));
    grow(&s->sw, scale_floats(f, FP8_W_FWD, M, K));
    grow(&s->sw, scale_floats(f, FP8_W_GI, M, K));
    grow(&s->sg, scale_floats(f, FP8_G_GI, (int)N, M));
    if (gw) grow(pair ? &s->sg : &s->sgt, scale_floats(f, FP8_G_GW, (int)N, M));
    if (linear_recipe_is_mx(r)) mx_scratch_add(s, f, (int)N, K, M);
    const Fp8CastSpec gi = fp8_recipe_cast(f, FP8_G_GI), wi = fp8_recipe_cast(f, FP8_W_GI);
    if (gi.scaling == FP8_SCALE_AXIS && wi.scaling == FP8_SCALE_TENSOR) grow(&s->svec, k);
    int tensor = 0;
    for (int op = 0; op < FP8_NOPERANDS; op++) tensor |= fp8_recipe_cast(f, (Fp8Operand)op).scaling == FP8_SCALE_TENSOR;
    if (tensor) grow(&s->amax, LINEAR_AMAX_FLOATS);
}

// One piece of the scratch: 256-byte aligned, like the model's Carver.
static void *piece(char *base, size_t *used, size_t bytes) {
    if (!bytes) return NULL;
    size_t off = (*used + 255) & ~(size_t)255;
    *used = off + bytes;
    return base ? base + off : NULL;
}

size_t linear_ctx_place(LinearCtx *lc, void *base) {
    char *b = (char *)base;
    size_t used = 0;
    const LinearScratchSize *c = &lc->cap;
    uint8_t *qx = (uint8_t *)piece(b, &used, c->qx), *qw = (uint8_t *)piece(b, &used, c->qw),
            *qg = (uint8_t *)piece(b, &used, c->qg), *qgt = (uint8_t *)piece(b, &used, c->qgt);
    float *sx = (float *)piece(b, &used, c->sx * sizeof(float)), *sw = (float *)piece(b, &used, c->sw * sizeof(float)),
          *sg = (float *)piece(b, &used, c->sg * sizeof(float)), *sgt = (float *)piece(b, &used, c->sgt * sizeof(float)),
          *sv = (float *)piece(b, &used, c->svec * sizeof(float)), *am = (float *)piece(b, &used, c->amax * sizeof(float));
    void *mxp = piece(b, &used, lc->mx_native ? 0 : c->mxp * 2), *mxq = piece(b, &used, lc->mx_native ? 0 : c->mxq * 2);
    uint8_t *mxsp = (uint8_t *)piece(b, &used, lc->mx_native ? c->mxsp : 0),
            *mxsq = (uint8_t *)piece(b, &used, lc->mx_native ? c->mxsq : 0);
    if (b) {
        lc->qx = qx, lc->qw = qw, lc->qg = qg, lc->qgt = qgt;
        lc->sx = sx, lc->sw = sw, lc->sg = sg, lc->sgt = sgt, lc->svec = sv, lc->amax = am;
        lc->mxp = mxp, lc->mxq = mxq, lc->mxsp = mxsp, lc->mxsq = mxsq;
    }
    return used;
}

size_t linear_wcache_place(LinearWCache *wc, LinearRecipe r, int K, int M, void *base) {
    if (r == LINEAR_BF16) return 0;
    const Fp8Recipe f = linear_fp8_recipe(r);
    char *b = (char *)base;
    size_t used = 0;
    const size_t codes = (size_t)M * K;
    uint8_t *q0 = (uint8_t *)piece(b, &used, codes), *q1 = (uint8_t *)piece(b, &used, codes);
    float *s0 = (float *)piece(b, &used, scale_floats(f, FP8_W_FWD, M, K) * sizeof(float));
    float *s1 = (float *)piece(b, &used, scale_floats(f, FP8_W_GI, M, K) * sizeof(float));
    if (b) {
        wc->q[0] = q0, wc->q[1] = q1, wc->s[0] = s0, wc->s[1] = s1;
        wc->made[0] = wc->made[1] = 0;
        wc->from_codes = 0;
    }
    return used;
}
