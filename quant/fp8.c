// CPU reference of the float8 training casts (formulas and edge cases in fp8.h). Written for
// reading, not speed: one scaling group at a time, the same element function the GPU uses.
#include "fp8.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "quant.h"

// ---- recipes ------------------------------------------------------------------------------
static const char *const RECIPE_NAMES[FP8_NRECIPES] = {"tensorwise", "rowwise", "rowwise_with_gw_hp",
                                                       "blockwise",  "mxfp8",   "mxfp8_gw_hp"};
static const char *const OPERAND_NAMES[FP8_NOPERANDS] = {"x_fwd", "w_fwd", "g_gi", "w_gi", "g_gw", "x_gw"};

const char *fp8_recipe_name(Fp8Recipe r) { return (unsigned)r < FP8_NRECIPES ? RECIPE_NAMES[r] : "?"; }
const char *fp8_operand_name(Fp8Operand op) { return (unsigned)op < FP8_NOPERANDS ? OPERAND_NAMES[op] : "?"; }

int fp8_recipe_from_name(const char *s) {
    for (int i = 0; i < FP8_NRECIPES; i++)
        if (s && strcmp(s, RECIPE_NAMES[i]) == 0) return i;
    return -1;
}

// Whether the operand is the transpose of the stored tensor (see the GEMM table in fp8.h).
static int operand_transposed(Fp8Operand op) { return op == FP8_W_GI || op == FP8_G_GW || op == FP8_X_GW; }

// The table of docs/FP8.md. Sources: torchao float8/config.py from_recipe_name (dtypes and
// granularities; grad_output defaults to e5m2 only in tensorwise), float8_linear.py (which
// axiswise_dim each cast uses), blockwise_fp8_training/linear.py, moe_training/mxfp8_linear.py.
Fp8CastSpec fp8_recipe_cast(Fp8Recipe r, Fp8Operand op) {
    CHECK((unsigned)r < FP8_NRECIPES && (unsigned)op < FP8_NOPERANDS, "fp8 recipe %d / operand %d out of range", (int)r,
          (int)op);
    Fp8CastSpec s = {FP8_SCALE_NONE, FP8_E4M3, operand_transposed(op), 0, 0};
    int grad = op == FP8_G_GI || op == FP8_G_GW, gw = op == FP8_G_GW || op == FP8_X_GW;
    switch (r) {
        case FP8_RECIPE_TENSORWISE:
            s.scaling = FP8_SCALE_TENSOR;
            s.dtype = grad ? FP8_E5M2 : FP8_E4M3;
            break;
        case FP8_RECIPE_ROWWISE:
            s.scaling = FP8_SCALE_AXIS;
            s.pow2 = 1;
            break;
        case FP8_RECIPE_ROWWISE_GW_HP:
            // grad_input pairs rowwise g with a tensorwise W; grad_weight stays in bf16.
            s.scaling = gw ? FP8_SCALE_NONE : op == FP8_W_GI ? FP8_SCALE_TENSOR : FP8_SCALE_AXIS;
            s.pow2 = 1;
            break;
        case FP8_RECIPE_BLOCKWISE:
            s.scaling = (op == FP8_W_FWD || op == FP8_W_GI) ? FP8_SCALE_128X128 : FP8_SCALE_1X128;
            break;
        case FP8_RECIPE_MXFP8:
        case FP8_RECIPE_MXFP8_GW_HP:
            s.scaling = (r == FP8_RECIPE_MXFP8_GW_HP && gw) ? FP8_SCALE_NONE : FP8_SCALE_MX32;
            s.mx_rceil = 1;
            break;
        default: break;
    }
    if (s.scaling == FP8_SCALE_NONE) s.transposed = 0;  // the bf16 GEMM reads the tensor as stored
    return s;
}

size_t fp8_scale_count(Fp8CastSpec s, int rows, int cols, int *ld) {
    int orows = s.transposed ? cols : rows, ocols = s.transposed ? rows : cols;
    size_t n = 0;
    int l = 0;
    switch (s.scaling) {
        case FP8_SCALE_NONE: break;
        case FP8_SCALE_TENSOR: n = 1, l = 1; break;
        case FP8_SCALE_AXIS: n = (size_t)orows, l = 1; break;
        case FP8_SCALE_1X128: l = orows, n = (size_t)orows * ((ocols + FP8_BLOCK - 1) / FP8_BLOCK); break;
        case FP8_SCALE_128X128:
            l = ((ocols + FP8_BLOCK - 1) / FP8_BLOCK + 3) / 4 * 4;
            n = (size_t)l * ((orows + FP8_BLOCK - 1) / FP8_BLOCK);
            break;
        case FP8_SCALE_MX32: l = (ocols + 31) / 32, n = (size_t)orows * l; break;
    }
    if (ld) *ld = l;
    return n;
}

// ---- tensor and axis scaling ----------------------------------------------------------------
float fp8_amax_cpu(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fp8_amax_step(m, x[i]);
    return m;
}

void fp8_quantize_cpu(uint8_t *q, const float *x, size_t n, float scale, Fp8Dtype dt) {
    for (size_t i = 0; i < n; i++) {
        if (dt == FP8_E5M2) {
            q[i] = fp8_quantize(x[i], scale, dt);
            continue;
        }
        // e4m3 through the inference helper (quant.c); the GPU uses its twin fp8_e4m3_from_f32.
        float v = x[i] * scale;
        if (v != v)
            q[i] = fp8_nan_code(x[i], scale);
        else
            q[i] = quant_f32_to_e4m3(v > FP8_E4M3_MAX ? FP8_E4M3_MAX : v < -FP8_E4M3_MAX ? -FP8_E4M3_MAX : v);
    }
}

void fp8_cast_cpu(uint8_t *q, float *scale, const float *x, int rows, int cols, Fp8Dtype dt, int axis, int pow2,
                  int transposed) {
    CHECK(rows >= 0 && cols >= 0, "fp8_cast_cpu: bad shape %dx%d", rows, cols);
    int orows = transposed ? cols : rows, ocols = transposed ? rows : cols;
    // Gather each operand row (a row of x, or a column of x when transposed) and cast it.
    float *row = ao_malloc(((size_t)ocols + 1) * sizeof(float));
    float tscale = 0.0f;
    if (!axis) {
        tscale = fp8_scale_from_amax(fp8_amax_cpu(x, (size_t)rows * cols), dt, pow2);
        scale[0] = tscale;
    }
    for (int r = 0; r < orows; r++) {
        for (int c = 0; c < ocols; c++) row[c] = transposed ? x[(size_t)c * cols + r] : x[(size_t)r * cols + c];
        float s = axis ? fp8_scale_from_amax(fp8_amax_cpu(row, (size_t)ocols), dt, pow2) : tscale;
        if (axis) scale[r] = s;
        fp8_quantize_cpu(q + (size_t)r * ocols, row, (size_t)ocols, s, dt);
    }
    free(row);
}

void fp8_dequant_cpu(float *out, const uint8_t *q, const float *scale_inv, int orows, int ocols, int per_row,
                     Fp8Dtype dt) {
    for (int r = 0; r < orows; r++) {
        float si = scale_inv[per_row ? r : 0];
        for (int c = 0; c < ocols; c++) {
            size_t i = (size_t)r * ocols + c;
            out[i] = fp8_to_f32(q[i], dt) * si;
        }
    }
}

// ---- DeepSeek-V3 blocks ----------------------------------------------------------------------
// Element (r, c) of the operand (x, or x^T when transposed).
static inline float op_at(const float *x, int cols, int r, int c, int transposed) {
    return transposed ? x[(size_t)c * cols + r] : x[(size_t)r * cols + c];
}

// Casts the operand tile [r0, r1) x [c0, c1) with one scale (torch_blockwise_scale_*: amax in
// the input dtype, EPS clamp in float64, scale to fp32, x * scale, clamp, e4m3) and returns
// scale_inv = 1 / scale as torchao returns it.
static float block_cast(uint8_t *q, int ocols, const float *x, int cols, int r0, int r1, int c0, int c1,
                        int transposed) {
    float m = 0.0f;
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) m = fp8_amax_step(m, op_at(x, cols, r, c, transposed));
    float s = fp8_scale_from_amax(m, FP8_E4M3, 0);
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) {
            float v = op_at(x, cols, r, c, transposed);
            fp8_quantize_cpu(q + (size_t)r * ocols + c, &v, 1, s, FP8_E4M3);
        }
    return fp8_scale_inv(s);
}

void fp8_block1x128_cpu(uint8_t *q, float *scale_inv, const float *x, int rows, int cols, int transposed) {
    int orows = transposed ? cols : rows, ocols = transposed ? rows : cols;
    int nb = (ocols + FP8_BLOCK - 1) / FP8_BLOCK;
    for (int r = 0; r < orows; r++)
        for (int b = 0; b < nb; b++) {
            int c0 = b * FP8_BLOCK, c1 = c0 + FP8_BLOCK < ocols ? c0 + FP8_BLOCK : ocols;
            scale_inv[(size_t)b * orows + r] = block_cast(q, ocols, x, cols, r, r + 1, c0, c1, transposed);
        }
}

void fp8_block128x128_cpu(uint8_t *q, float *scale_inv, int ld, const float *x, int rows, int cols, int transposed) {
    int orows = transposed ? cols : rows, ocols = transposed ? rows : cols;
    int nrb = (orows + FP8_BLOCK - 1) / FP8_BLOCK, ncb = (ocols + FP8_BLOCK - 1) / FP8_BLOCK;
    CHECK(ld >= ncb, "fp8_block128x128_cpu: scale ld %d < %d blocks", ld, ncb);
    for (int rb = 0; rb < nrb; rb++)
        for (int cb = 0; cb < ncb; cb++) {
            int r0 = rb * FP8_BLOCK, c0 = cb * FP8_BLOCK;
            int r1 = r0 + FP8_BLOCK < orows ? r0 + FP8_BLOCK : orows,
                c1 = c0 + FP8_BLOCK < ocols ? c0 + FP8_BLOCK : ocols;
            scale_inv[(size_t)rb * ld + cb] = block_cast(q, ocols, x, cols, r0, r1, c0, c1, transposed);
        }
}

void fp8_block_dequant_cpu(float *out, const uint8_t *q, const float *scale_inv, int ld, int orows, int ocols,
                           int block128x128) {
    for (int r = 0; r < orows; r++)
        for (int c = 0; c < ocols; c++) {
            int b = c / FP8_BLOCK;
            float si = block128x128 ? scale_inv[(size_t)(r / FP8_BLOCK) * ld + b] : scale_inv[(size_t)b * orows + r];
            size_t i = (size_t)r * ocols + c;
            out[i] = fp8_e4m3_to_f32(q[i]) * si;
        }
}
