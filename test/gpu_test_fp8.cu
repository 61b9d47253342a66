// fp8 / MX cast kernels (quant/fp8_cast.cu) against the CPU reference (quant/fp8.c, quant/mx.c),
// bit for bit: fp8 bytes, fp32 dequantization scales, e8m0 bytes. Odd shapes (tails of every
// tile and block), aligned shapes (the vector paths), a misaligned input (the scalar paths),
// inputs with zero rows / columns / blocks, tiny and huge values, and NaN / inf (our rule for
// NaN codes, which the GPU must follow explicitly since it makes +NaN where x86 makes -NaN).
// MX for training (quant/mx_gpu.cu): the dequantization to bf16 of every cast's codes, of every
// (code, exponent) pair, on aligned and odd shapes (both kernel paths), against
// mx_dequantize_bf16_cpu bit for bit, and RCEIL casts dequantizing exactly (the emulated MXFP8 GEMM's
// premise); the swizzle of e8m0 scales into cuBLASLt's layout against mx_swizzle_cpu.
// ZeRO-3 --fp8-allgather: a tensor cast in pieces with the maximum of their amax, then transposed,
// against one cast of the whole tensor.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test.cuh"
#include "../quant/fp8_cast.cuh"
#include "../quant/mx_gpu.cuh"
extern "C" {
#include "test.h"
#include "../model/safetensors.h"
}

static uint64_t g_rng = 0xF8F8ull;
static GpuCtx g_ctx;

// First differing index (n when equal).
static size_t first_diff(const void *a, const void *b, size_t n, size_t elem) {
    for (size_t i = 0; i < n; i++)
        if (memcmp((const char *)a + i * elem, (const char *)b + i * elem, elem)) return i;
    return n;
}
static void check_same(const char *what, const void *got, const void *ref, size_t n, size_t elem) {
    size_t i = first_diff(got, ref, n, elem);
    uint32_t a = 0, b = 0;
    if (i < n) memcpy(&a, (const char *)got + i * elem, elem), memcpy(&b, (const char *)ref + i * elem, elem);
    TEST_CHECK(i == n, "%s: element %zu of %zu differs: gpu %08x cpu %08x", what, i, n, a, b);
}

// bf16 test input [rows, cols] with the cases that matter: a zero row and column, a tiny row
// (amax below EPS), a huge row, a block of e4m3-subnormal values, and NaN / inf when asked.
static float *make_input(int rows, int cols, int specials) {
    size_t n = (size_t)rows * cols;
    float *x = (float *)ao_malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = bf16r(2.0f * test_rand_uniform(&g_rng));
    if (rows > 3) {
        memset(x + (size_t)1 * cols, 0, cols * sizeof(float));
        for (int c = 0; c < cols; c++) x[(size_t)2 * cols + c] = bf16r(1e-30f * test_rand_uniform(&g_rng));
        for (int c = 0; c < cols; c++)
            x[(size_t)3 * cols + c] *= 3.0e4f, x[(size_t)3 * cols + c] = bf16r(x[(size_t)3 * cols + c]);
    }
    if (cols > 2)
        for (int r = 0; r < rows; r++) x[(size_t)r * cols + 2] = 0.0f;
    if (rows > 4 && cols > 40)
        for (int c = 0; c < 40; c++) x[(size_t)4 * cols + c] = bf16r(x[(size_t)4 * cols + c] * (c ? 1e-3f : 1.0f));
    if (specials && n > 10) {
        x[n / 2] = NAN, x[n / 3] = -NAN, x[n - 1] = INFINITY, x[n / 5] = -INFINITY;
    }
    return x;
}
static bf16 *to_device(const float *x, size_t n, int offset) {
    bf16 *h = (bf16 *)ao_malloc((n + 1) * sizeof(bf16));
    // our converter keeps a NaN's sign (the host __float2bfloat16 makes every NaN positive),
    // so the device sees exactly the values the CPU reference is given
    for (size_t i = 0; i < n; i++) {
        __nv_bfloat16_raw r;
        r.x = f32_to_bf16(x[i]);
        h[i] = bf16(r);
    }
    bf16 *d = dalloc<bf16>(n + 8);
    h2d(d + offset, h, n * sizeof(bf16));
    free(h);
    return d;
}

static void test_shape(int rows, int cols, int specials, int offset) {
    char w[160];
    const size_t n = (size_t)rows * cols;
    float *x = make_input(rows, cols, specials);
    bf16 *dbase = to_device(x, n, offset), *dx = dbase + offset;
    uint8_t *dq = dalloc<uint8_t>(n + 16) + offset, *q = (uint8_t *)ao_malloc(n + 1), *rq = (uint8_t *)ao_malloc(n + 1);
    const size_t ns = n / 2 + rows + cols + 1024;  // bounds every scale count; holds the bf16 dequantization
    float *ds = dalloc<float>(ns), *s = (float *)ao_malloc(ns * 4), *rs = (float *)ao_malloc(ns * 4);
    float *ws = dalloc<float>(FP8_AMAX_WS_FLOATS);
    CUDA_CHECK(cudaMemsetAsync(ws, 0, FP8_AMAX_WS_FLOATS * sizeof(float), g_s));  // the ticket counter
    uint8_t *de = dalloc<uint8_t>(ns), *e = (uint8_t *)ao_malloc(ns), *re = (uint8_t *)ao_malloc(ns);

    // Tensor amax.
    fp8_amax_tensor(ws + FP8_AMAX_PARTIALS, ws, dx, rows, cols, (size_t)cols, g_s);
    float amax, ramax = fp8_amax_cpu(x, n);
    d2h(&amax, ws + FP8_AMAX_PARTIALS, 4);
    snprintf(w, sizeof w, "amax %dx%d specials=%d offset=%d", rows, cols, specials, offset);
    check_same(w, &amax, &ramax, 1, 4);

    // Tensor and axis scaling, both dtypes, pow2 on and off, direct and transposed.
    for (int axis = 0; axis < 2; axis++)
        for (int dt = 0; dt < 2; dt++)
            for (int pow2 = 0; pow2 < 2; pow2++)
                for (int tr = 0; tr < 2; tr++) {
                    fp8_cast(dq, ds, dx, rows, cols, axis ? NULL : ws + FP8_AMAX_PARTIALS, (Fp8Dtype)dt, pow2, tr, g_s);
                    fp8_cast_cpu(rq, rs, x, rows, cols, (Fp8Dtype)dt, axis, pow2, tr);
                    size_t nsc = axis ? (size_t)(tr ? cols : rows) : 1;
                    for (size_t i = 0; i < nsc; i++) rs[i] = fp8_scale_inv(rs[i]);
                    d2h(q, dq, n), d2h(s, ds, nsc * 4);
                    snprintf(w, sizeof w, "%s %s pow2=%d tr=%d %dx%d sp=%d off=%d: codes", axis ? "axis" : "tensor",
                             dt ? "e5m2" : "e4m3", pow2, tr, rows, cols, specials, offset);
                    check_same(w, q, rq, n, 1);
                    snprintf(w, sizeof w, "%s %s pow2=%d tr=%d %dx%d: scale_inv", axis ? "axis" : "tensor",
                             dt ? "e5m2" : "e4m3", pow2, tr, rows, cols);
                    check_same(w, s, rs, nsc, 4);
                }

    // DeepSeek-V3 blocks.
    for (int tr = 0; tr < 2; tr++) {
        int orows = tr ? cols : rows, ocols = tr ? rows : cols;
        size_t nsc = (size_t)orows * ((ocols + 127) / 128);
        fp8_cast_block1x128(dq, ds, dx, rows, cols, tr, g_s);
        fp8_block1x128_cpu(rq, rs, x, rows, cols, tr);
        d2h(q, dq, n), d2h(s, ds, nsc * 4);
        snprintf(w, sizeof w, "1x128 tr=%d %dx%d sp=%d off=%d: codes", tr, rows, cols, specials, offset);
        check_same(w, q, rq, n, 1);
        snprintf(w, sizeof w, "1x128 tr=%d %dx%d: scale_inv", tr, rows, cols);
        check_same(w, s, rs, nsc, 4);

        int ld = ((ocols + 127) / 128 + 3) / 4 * 4;
        size_t nsb = (size_t)ld * ((orows + 127) / 128);
        for (size_t i = 0; i < nsb; i++) rs[i] = 1.0f;  // padding entries: left as they were
        h2d(ds, rs, nsb * 4);
        fp8_cast_block128x128(dq, ds, ld, dx, rows, cols, tr, g_s);
        fp8_block128x128_cpu(rq, rs, ld, x, rows, cols, tr);
        d2h(q, dq, n), d2h(s, ds, nsb * 4);
        snprintf(w, sizeof w, "128x128 tr=%d %dx%d sp=%d off=%d: codes", tr, rows, cols, specials, offset);
        check_same(w, q, rq, n, 1);
        snprintf(w, sizeof w, "128x128 tr=%d %dx%d: scale_inv (ld %d)", tr, rows, cols, ld);
        check_same(w, s, rs, nsb, 4);
    }

    // MX, both modes and dtypes, dim0 and dim1.
    for (int tr = 0; tr < 2; tr++)
        for (int dt = 0; dt < 2; dt++)
            for (int mode = 0; mode < 2; mode++) {
                int orows = tr ? cols : rows, ocols = tr ? rows : cols;
                size_t nsc = (size_t)orows * ((ocols + 31) / 32);
                mx_cast(dq, de, dx, rows, cols, (Fp8Dtype)dt, (MxMode)mode, tr, g_s);
                mx_quantize_cpu(rq, re, x, rows, cols, (Fp8Dtype)dt, (MxMode)mode, tr);
                d2h(q, dq, n), d2h(e, de, nsc);
                snprintf(w, sizeof w, "mx %s %s tr=%d %dx%d sp=%d off=%d: codes", dt ? "e5m2" : "e4m3",
                         mode ? "rceil" : "floor", tr, rows, cols, specials, offset);
                check_same(w, q, rq, n, 1);
                snprintf(w, sizeof w, "mx %s %s tr=%d %dx%d: e8m0", dt ? "e5m2" : "e4m3", mode ? "rceil" : "floor", tr,
                         rows, cols);
                check_same(w, e, re, nsc, 1);
                // The bf16 dequantization of these codes (dq reused as bf16 [n], offset for misalignment).
                bf16 *db = (bf16 *)(ds + 16) + offset;
                uint16_t *b = (uint16_t *)ao_malloc(n * 2 + 2), *rb = (uint16_t *)ao_malloc(n * 2 + 2);
                float *rf = (float *)ao_malloc(n * 4 + 4);
                mx_dequant_bf16(db, dq, de, orows, ocols, (Fp8Dtype)dt, g_s);
                mx_dequantize_bf16_cpu(rb, rq, re, orows, ocols, (Fp8Dtype)dt);
                mx_dequantize_cpu(rf, rq, re, orows, ocols, (Fp8Dtype)dt);
                d2h(b, db, n * 2);
                snprintf(w, sizeof w, "mx %s %s tr=%d %dx%d off=%d: bf16 dequantization", dt ? "e5m2" : "e4m3",
                         mode ? "rceil" : "floor", tr, rows, cols, offset);
                check_same(w, b, rb, n, 2);
                size_t inexact = 0;  // RCEIL: every finite value exact in bf16 (quant/mx.h)
                for (size_t i = 0; i < n; i++) inexact += isfinite(rf[i]) && bf16_to_f32(rb[i]) != rf[i];
                TEST_CHECK(mode == MX_FLOOR || inexact == 0, "%s: %zu values not bf16-exact", w, inexact);
                free(b), free(rb), free(rf);
            }
    printf("  casts %5d x %-5d specials=%d offset=%d checked\n", rows, cols, specials, offset);
    free(x), free(q), free(rq), free(s), free(rs), free(e), free(re);
    cudaFree(dbase), cudaFree(dq - offset), cudaFree(ds), cudaFree(ws), cudaFree(de);
}

// fp8_amax_tensor and fp8_cast_tensor on columns [c0, c0 + cols) of rows of ld elements (a Linear's part
// of a packed gradient), both layouts from one call or either alone, against the CPU casts of those
// columns made dense: codes and scale bit for bit.
static void test_strided(int rows, int cols, int ld, int c0, int specials) {
    char w[200];
    const size_t n = (size_t)rows * cols;
    float *full = make_input(rows, ld, specials), *x = (float *)ao_malloc((n + 1) * sizeof(float));
    for (int r = 0; r < rows; r++) memcpy(x + (size_t)r * cols, full + (size_t)r * ld + c0, cols * sizeof(float));
    bf16 *dfull = to_device(full, (size_t)rows * ld, 0), *dx = dfull + c0;
    uint8_t *dq = dalloc<uint8_t>(n), *dqt = dalloc<uint8_t>(n), *q = (uint8_t *)ao_malloc(n + 1);
    uint8_t *rq = (uint8_t *)ao_malloc(n + 1), *rqt = (uint8_t *)ao_malloc(n + 1);
    float *ws = dalloc<float>(FP8_AMAX_WS_FLOATS), *ds = dalloc<float>(1), *am = dalloc<float>(1);
    CUDA_CHECK(cudaMemsetAsync(ws, 0, FP8_AMAX_WS_FLOATS * sizeof(float), g_s));
    fp8_amax_tensor(am, ws, dx, rows, cols, (size_t)ld, g_s);
    float amax, ramax = fp8_amax_cpu(x, n);
    d2h(&amax, am, 4);
    snprintf(w, sizeof w, "strided amax %dx%d of rows of %d from column %d sp=%d", rows, cols, ld, c0, specials);
    check_same(w, &amax, &ramax, 1, 4);
    for (int dt = 0; dt < 2; dt++)
        for (int pow2 = 0; pow2 < 2; pow2++) {
            float rs, rst, s;
            fp8_cast_cpu(rq, &rs, x, rows, cols, (Fp8Dtype)dt, 0, pow2, 0);
            fp8_cast_cpu(rqt, &rst, x, rows, cols, (Fp8Dtype)dt, 0, pow2, 1);
            rs = fp8_scale_inv(rs);
            for (int mode = 1; mode < 4; mode++) {  // 1 direct, 2 transposed, 3 both
                CUDA_CHECK(cudaMemsetAsync(dq, 0xAB, n, g_s));
                CUDA_CHECK(cudaMemsetAsync(dqt, 0xAB, n, g_s));
                fp8_cast_tensor(mode & 1 ? dq : NULL, mode & 2 ? dqt : NULL, ds, dx, rows, cols, (size_t)ld, am,
                                (Fp8Dtype)dt, pow2, g_s);
                snprintf(w, sizeof w, "fp8_cast_tensor %s pow2=%d %s %dx%d ld=%d c0=%d sp=%d", dt ? "e5m2" : "e4m3", pow2,
                         mode == 1 ? "direct" : mode == 2 ? "transposed" : "both", rows, cols, ld, c0, specials);
                d2h(&s, ds, 4);
                check_same(w, &s, &rs, 1, 4);
                if (mode & 1) d2h(q, dq, n), check_same(w, q, rq, n, 1);
                if (mode & 2) d2h(q, dqt, n), check_same(w, q, rqt, n, 1);
            }
        }
    printf("  strided tensor casts %5d x %-5d of rows of %-5d from column %-4d specials=%d checked\n", rows, cols, ld,
           c0, specials);
    free(full), free(x), free(q), free(rq), free(rqt);
    cudaFree(dfull), cudaFree(dq), cudaFree(dqt), cudaFree(ws), cudaFree(ds), cudaFree(am);
}

// The CPU cast of x by spec sp into codes rq and scales as the GPU stores them: rs (inverse scales for
// tensor / axis scaling; 128x128 blocks at row stride sld, the padding entries left as they are) or
// re (MX's e8m0 exponents); nsc scales.
static void cast_reference(const Fp8CastSpec &sp, uint8_t *rq, float *rs, uint8_t *re, const float *x, int rows,
                           int cols, int sld, size_t nsc) {
    switch (sp.scaling) {
        case FP8_SCALE_TENSOR:
        case FP8_SCALE_AXIS:
            fp8_cast_cpu(rq, rs, x, rows, cols, sp.dtype, sp.scaling == FP8_SCALE_AXIS, sp.pow2, sp.transposed);
            for (size_t i = 0; i < nsc; i++) rs[i] = fp8_scale_inv(rs[i]);
            break;
        case FP8_SCALE_1X128: fp8_block1x128_cpu(rq, rs, x, rows, cols, sp.transposed); break;
        case FP8_SCALE_128X128: fp8_block128x128_cpu(rq, rs, sld, x, rows, cols, sp.transposed); break;
        case FP8_SCALE_MX32:
            mx_quantize_cpu(rq, re, x, rows, cols, sp.dtype, sp.mx_rceil ? MX_RCEIL : MX_FLOOR, sp.transposed);
            break;
        default: break;
    }
}

// The GPU cast's n codes (dq) and nsc scales (ds, or de for MX) bit for bit against cast_reference's;
// q, s, e: host scratch.
static void check_cast(const char *what_codes, const char *what_scales, const Fp8CastSpec &sp, const uint8_t *dq,
                       const float *ds, const uint8_t *de, uint8_t *q, float *s, uint8_t *e, const uint8_t *rq,
                       const float *rs, const uint8_t *re, size_t n, size_t nsc) {
    d2h(q, dq, n);
    check_same(what_codes, q, rq, n, 1);
    if (sp.scaling == FP8_SCALE_MX32) {
        d2h(e, de, nsc);
        check_same(what_scales, e, re, nsc, 1);
    } else {
        d2h(s, ds, nsc * 4);
        check_same(what_scales, s, rs, nsc, 4);
    }
}

// Every operand cast of every recipe (fp8_cast_operand_ld) on columns [c0, c0 + cols) of rows of ld
// elements, against the CPU cast of those columns made dense: codes and scales bit for bit. The shapes
// reach each kernel path with a row stride: the per-row axis cast with groups of 32 .. 1024 threads per
// row (several rows per CTA, one row per CTA, rows longer than its registers hold) and its scalar
// fallback; the transposed axis cast in clusters of up to 16 CTAs (values kept in registers or walked
// twice); 1x128 / 128x128 blocks and MX, vector and scalar paths.
static void test_strided_operands(int rows, int cols, int ld, int c0, int specials) {
    char w[220], w2[220];
    const size_t n = (size_t)rows * cols;
    float *full = make_input(rows, ld, specials), *x = (float *)ao_malloc((n + 1) * sizeof(float));
    for (int r = 0; r < rows; r++) memcpy(x + (size_t)r * cols, full + (size_t)r * ld + c0, cols * sizeof(float));
    bf16 *dfull = to_device(full, (size_t)rows * ld, 0), *dx = dfull + c0;
    uint8_t *dq = dalloc<uint8_t>(n + 16), *q = (uint8_t *)ao_malloc(n + 1), *rq = (uint8_t *)ao_malloc(n + 1);
    const size_t ns = n / 16 + rows + cols + 4096;  // bounds every scale count
    float *ds = dalloc<float>(ns), *s = (float *)ao_malloc(ns * 4), *rs = (float *)ao_malloc(ns * 4);
    uint8_t *de = dalloc<uint8_t>(ns), *e = (uint8_t *)ao_malloc(ns), *re = (uint8_t *)ao_malloc(ns);
    float *ws = dalloc<float>(FP8_AMAX_WS_FLOATS);
    CUDA_CHECK(cudaMemsetAsync(ws, 0, FP8_AMAX_WS_FLOATS * sizeof(float), g_s));
    int checked = 0;
    for (int r = 0; r < FP8_NRECIPES; r++)
        for (int op = 0; op < FP8_NOPERANDS; op++) {
            const Fp8CastSpec sp = fp8_recipe_cast((Fp8Recipe)r, (Fp8Operand)op);
            if (sp.scaling == FP8_SCALE_NONE) continue;
            int sld = 0;
            const size_t nsc = fp8_scale_count(sp, rows, cols, &sld);
            if (sp.scaling == FP8_SCALE_128X128) {  // padding entries are left as they were
                for (size_t i = 0; i < nsc; i++) rs[i] = 1.0f;
                h2d(ds, rs, nsc * 4);
            }
            CUDA_CHECK(cudaMemsetAsync(dq, 0xAB, n, g_s));
            fp8_cast_operand_ld(dq, ds, de, dx, rows, cols, (size_t)ld, sp, ws, g_s);
            cast_reference(sp, rq, rs, re, x, rows, cols, sld, nsc);
            snprintf(w, sizeof w, "strided %s %s %dx%d of rows of %d from column %d sp=%d: codes",
                     fp8_recipe_name((Fp8Recipe)r), fp8_operand_name((Fp8Operand)op), rows, cols, ld, c0, specials);
            snprintf(w2, sizeof w2, "strided %s %s %dx%d of rows of %d from column %d: scales",
                     fp8_recipe_name((Fp8Recipe)r), fp8_operand_name((Fp8Operand)op), rows, cols, ld, c0);
            check_cast(w, w2, sp, dq, ds, de, q, s, e, rq, rs, re, n, nsc);
            checked++;
        }
    printf("  strided operand casts %5d x %-5d of rows of %-5d from column %-4d specials=%d: %d casts checked\n", rows,
           cols, ld, c0, specials, checked);
    free(full), free(x), free(q), free(rq), free(s), free(rs), free(e), free(re);
    cudaFree(dfull), cudaFree(dq), cudaFree(ds), cudaFree(de), cudaFree(ws);
}

// The hardware rounding of the cast kernels against fp8_quantize, every fp32 value, both dtypes.
static void test_rounding_all(void) {
    for (int dt = 0; dt < 2; dt++) {
        uint32_t first = 0;
        const unsigned long long bad = fp8_quantize_check_all((Fp8Dtype)dt, &first, g_s);
        TEST_CHECK(bad == 0, "cast rounding %s: %llu of 2^32 fp32 values round differently from fp8_quantize (first "
                   "0x%08x = %g)", dt ? "e5m2" : "e4m3", bad, first, (double)ao_u2f(first));
        printf("  cast rounding %s: all 2^32 fp32 values as fp8_quantize: %s\n", dt ? "e5m2" : "e4m3",
               bad ? "NO" : "yes");
    }
}

// Every (code, exponent) pair dequantized to bf16, both dtypes; the scale swizzle at odd shapes.
static void test_mx_tables(void) {
    // Each row holds the codes 0..255; block b of row r has exponent (r + 37 b) % 256, so over the 512
    // rows every code meets every exponent. NE bytes of exponents cover the odd view's 2 blocks per row too.
    const int R = 512, C = 256, NE = 8192;
    uint8_t *q = (uint8_t *)ao_malloc((size_t)R * C), *e = (uint8_t *)ao_malloc(NE);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) q[(size_t)r * C + c] = (uint8_t)c;
    for (int i = 0; i < NE; i++) e[i] = (uint8_t)(i < R * C / 32 ? (i / 8 + 37 * (i % 8)) % 256 : i % 256);
    uint8_t *dq = dalloc<uint8_t>((size_t)R * C), *de = dalloc<uint8_t>(NE);
    bf16 *db = dalloc<bf16>((size_t)R * C);
    uint16_t *b = (uint16_t *)ao_malloc((size_t)R * C * 2), *rb = (uint16_t *)ao_malloc((size_t)R * C * 2);
    h2d(dq, q, (size_t)R * C), h2d(de, e, NE);
    for (int dt = 0; dt < 2; dt++)
        for (int odd = 0; odd < 2; odd++) {  // odd: the same bytes seen as [R * C / 36][36] minus a tail: scalar path
            const int rows = odd ? R * C / 36 : R, cols = odd ? 36 : C;
            mx_dequant_bf16(db, dq, de, rows, cols, (Fp8Dtype)dt, g_s);
            mx_dequantize_bf16_cpu(rb, q, e, rows, cols, (Fp8Dtype)dt);
            d2h(b, db, (size_t)rows * cols * 2);
            char w[96];
            snprintf(w, sizeof w, "mx bf16 dequantization, every code x exponent, %s, %dx%d", dt ? "e5m2" : "e4m3", rows,
                     cols);
            check_same(w, b, rb, (size_t)rows * cols, 2);
        }
    free(b), free(rb), cudaFree(db);
    const int shapes[][2] = {{1, 1}, {37, 3}, {128, 4}, {130, 6}, {300, 13}, {8192, 128}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], nkb = shapes[s][1];
        const size_t n = mx_swizzled_bytes(rows, nkb);
        uint8_t *he = (uint8_t *)ao_malloc((size_t)rows * nkb), *got = (uint8_t *)ao_malloc(n), *want = (uint8_t *)ao_malloc(n);
        for (size_t i = 0; i < (size_t)rows * nkb; i++) he[i] = (uint8_t)(1 + test_rand_u64(&g_rng) % 254);
        uint8_t *din = dalloc<uint8_t>((size_t)rows * nkb), *dout = dalloc<uint8_t>(n);
        h2d(din, he, (size_t)rows * nkb);
        CUDA_CHECK(cudaMemsetAsync(dout, 0xAB, n, g_s));  // every byte must be written (padding 0)
        mx_swizzle_scales(dout, din, rows, nkb, g_s);
        mx_swizzle_cpu(want, he, rows, nkb);
        d2h(got, dout, n);
        char w[96];
        snprintf(w, sizeof w, "mx scale swizzle %dx%d (%zu bytes)", rows, nkb, n);
        check_same(w, got, want, n, 1);
        free(he), free(got), free(want), cudaFree(din), cudaFree(dout);
    }
    printf("  mx bf16 dequantization (every code x exponent) and scale swizzle checked\n");
    free(q), free(e), cudaFree(dq), cudaFree(de);
}

// Every operand of every recipe through fp8_cast_operand, against the CPU cast of the same spec.
static void test_recipes(int N, int K, int M) {
    char w[160], w2[160];
    float *x = make_input(N, K, 0), *wt = make_input(M, K, 0), *g = make_input(N, M, 0);
    int mx = N > M ? N : M, kx = K > M ? K : M;
    size_t cap = (size_t)mx * kx;
    bf16 *dxs[3] = {to_device(x, (size_t)N * K, 0), to_device(wt, (size_t)M * K, 0), to_device(g, (size_t)N * M, 0)};
    uint8_t *dq = dalloc<uint8_t>(cap), *q = (uint8_t *)ao_malloc(cap), *rq = (uint8_t *)ao_malloc(cap);
    const size_t ns = cap / 16 + 4096;  // bounds every scale count
    uint8_t *de = dalloc<uint8_t>(ns), *e = (uint8_t *)ao_malloc(ns), *re = (uint8_t *)ao_malloc(ns);
    float *ds = dalloc<float>(ns), *s = (float *)ao_malloc(ns * 4), *rs = (float *)ao_malloc(ns * 4);
    float *ws = dalloc<float>(FP8_AMAX_WS_FLOATS);
    CUDA_CHECK(cudaMemsetAsync(ws, 0, FP8_AMAX_WS_FLOATS * sizeof(float), g_s));
    for (int r = 0; r < FP8_NRECIPES; r++)
        for (int op = 0; op < FP8_NOPERANDS; op++) {
            Fp8CastSpec sp = fp8_recipe_cast((Fp8Recipe)r, (Fp8Operand)op);
            if (sp.scaling == FP8_SCALE_NONE) continue;
            int which = (op == FP8_X_FWD || op == FP8_X_GW) ? 0 : (op == FP8_W_FWD || op == FP8_W_GI) ? 1 : 2;
            const float *h = which == 0 ? x : which == 1 ? wt : g;
            int rows = which == 1 ? M : N, cols = which == 2 ? M : K, ld = 0;
            size_t n = (size_t)rows * cols, nsc = fp8_scale_count(sp, rows, cols, &ld);
            if (sp.scaling == FP8_SCALE_128X128) {  // padding entries are left as they were
                for (size_t i = 0; i < nsc; i++) rs[i] = 1.0f;
                h2d(ds, rs, nsc * 4);
            }
            fp8_cast_operand(dq, ds, de, dxs[which], rows, cols, sp, ws, g_s);
            cast_reference(sp, rq, rs, re, h, rows, cols, ld, nsc);
            snprintf(w, sizeof w, "recipe %s %s (N=%d K=%d M=%d): codes", fp8_recipe_name((Fp8Recipe)r),
                     fp8_operand_name((Fp8Operand)op), N, K, M);
            snprintf(w2, sizeof w2, "recipe %s %s: scales", fp8_recipe_name((Fp8Recipe)r),
                     fp8_operand_name((Fp8Operand)op));
            check_cast(w, w2, sp, dq, ds, de, q, s, e, rq, rs, re, n, nsc);
        }
    printf("  recipes N=%d K=%d M=%d checked\n", N, K, M);
    free(x), free(wt), free(g), free(q), free(rq), free(e), free(re), free(s), free(rs);
    for (int i = 0; i < 3; i++) cudaFree(dxs[i]);
    cudaFree(dq), cudaFree(de), cudaFree(ds), cudaFree(ws);
}

// ZeRO-3 --fp8-allgather's casts on a tensor cut into pieces (cuts at multiples of 256 elements
// from its start, as the ZeRO plan cuts): each piece's amax, their maximum (the all-reduce), the
// scale from it alone (a rank without a piece), each piece cast flat, then the fp8 transpose of the
// joined codes, against one tensorwise cast of the whole tensor in both layouts: the same bytes.
static void test_pieces(int rows, int cols, int specials) {
    char w[160];
    const size_t n = (size_t)rows * cols;
    float *x = make_input(rows, cols, specials);
    bf16 *dx = to_device(x, n, 0);
    const size_t cuts[] = {0, (n / 3) / 256 * 256, (2 * n / 3) / 256 * 256, n};
    uint8_t *dq = dalloc<uint8_t>(n), *dqt = dalloc<uint8_t>(n), *dp = dalloc<uint8_t>(n), *dpt = dalloc<uint8_t>(n);
    float *ws = dalloc<float>(FP8_AMAX_WS_FLOATS), *damax = dalloc<float>(4), *ds = dalloc<float>(4);
    CUDA_CHECK(cudaMemsetAsync(ws, 0, FP8_AMAX_WS_FLOATS * sizeof(float), g_s));
    uint8_t *q = (uint8_t *)ao_malloc(n), *p = (uint8_t *)ao_malloc(n);
    for (int pow2 = 0; pow2 < 2; pow2++) {
        fp8_amax_tensor(damax, ws, dx, rows, cols, (size_t)cols, g_s);
        fp8_cast_tensor(dq, dqt, ds, dx, rows, cols, (size_t)cols, damax, FP8_E4M3, pow2, g_s);
        float pa[3], m = 0.0f;
        for (int i = 0; i < 3; i++) {
            const size_t a = cuts[i], k = cuts[i + 1] - a;
            fp8_amax_tensor(damax + 1, ws, dx + a, 1, (int)k, k, g_s);
            d2h(&pa[i], damax + 1, 4);
            m = fmaxf(m, pa[i]);
        }
        h2d(damax + 1, &m, 4);
        fp8_scales_from_amax(ds + 1, damax + 1, 1, FP8_E4M3, pow2, g_s);
        for (int i = 0; i < 3; i++) {
            const size_t a = cuts[i], k = cuts[i + 1] - a;
            fp8_cast_tensor(dp + a, nullptr, ds + 2, dx + a, 1, (int)k, k, damax + 1, FP8_E4M3, pow2, g_s);
        }
        fp8_transpose(dpt, dp, rows, cols, g_s);
        float sc[3];
        d2h(sc, ds, 12);
        snprintf(w, sizeof w, "pieces %dx%d specials=%d pow2=%d: scale from the pieces' amax", rows, cols, specials, pow2);
        check_same(w, &sc[1], &sc[0], 1, 4);
        snprintf(w, sizeof w, "pieces %dx%d specials=%d pow2=%d: scale written by a piece's cast", rows, cols, specials, pow2);
        check_same(w, &sc[2], &sc[0], 1, 4);
        d2h(q, dq, n), d2h(p, dp, n);
        snprintf(w, sizeof w, "pieces %dx%d specials=%d pow2=%d: codes", rows, cols, specials, pow2);
        check_same(w, p, q, n, 1);
        d2h(q, dqt, n), d2h(p, dpt, n);
        snprintf(w, sizeof w, "pieces %dx%d specials=%d pow2=%d: transposed codes", rows, cols, specials, pow2);
        check_same(w, p, q, n, 1);
    }
    free(x), free(q), free(p);
    cudaFree(dx), cudaFree(dq), cudaFree(dqt), cudaFree(dp), cudaFree(dpt), cudaFree(ws), cudaFree(damax), cudaFree(ds);
}

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        test_skip("gpu_test_fp8: no CUDA GPU");
        return test_summary();
    }
    gpu_ctx_init(&g_ctx, 0);
    g_s = g_ctx.stream;
    printf("device: %s\n", g_ctx.prop.name);
    const int shapes[][2] = {{1, 1}, {7, 13}, {37, 200}, {129, 257}, {64, 256}, {256, 384}, {300, 1000}, {1024, 4096}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) test_shape(shapes[i][0], shapes[i][1], 0, 0);
    test_shape(37, 200, 1, 0), test_shape(256, 384, 1, 0);  // NaN / inf
    test_shape(64, 256, 0, 1), test_shape(129, 257, 1, 3);  // misaligned: the scalar paths
    test_recipes(37, 200, 72), test_recipes(256, 512, 384);
    test_rounding_all();
    test_strided(37, 200, 200, 0, 0), test_strided(64, 256, 768, 256, 0), test_strided(129, 96, 300, 8, 1);
    test_strided(1000, 512, 3072, 2560, 0), test_strided(2048, 1024, 2048, 1024, 1), test_strided(5, 24, 60, 36, 0);
    // every recipe's operand casts with a row stride (no dense copy of a part's gradient columns):
    // k/v-like parts (512 of 3072: 8 rows of one warp per CTA), a q-like part (2048: G = 64), a gate/up
    // part (8192 of 16384: one row per CTA of 256), rows longer than the registers hold (40960), odd
    // widths (the scalar fallbacks), and the transposed axis cast over 5000 / 8192 / 8200 rows (clusters
    // of 10 / 16 / 16 CTAs where the GPU allows 16, else 8; 8200 rows walk their share twice)
    test_strided_operands(257, 512, 3072, 2560, 0), test_strided_operands(96, 2048, 3072, 0, 1);
    test_strided_operands(40, 8192, 16384, 8192, 0), test_strided_operands(3, 40960, 40960, 0, 0);
    test_strided_operands(37, 200, 300, 8, 1), test_strided_operands(129, 200, 304, 16, 0);
    test_strided_operands(5000, 64, 192, 64, 0), test_strided_operands(8192, 32, 96, 32, 1);
    test_strided_operands(8200, 48, 144, 96, 0);
    // The transposed casts with the other tile height (fp8_cast_transposed_tile: 512 rows, the
    // default being 256): the same bits.
    const int tile = fp8_cast_transposed_tile(512);
    printf("  transposed casts with 512-row tiles:\n");
    test_shape(1024, 4096, 0, 0), test_shape(129, 257, 1, 3), test_shape(256, 384, 1, 0);
    test_strided(2048, 1024, 2048, 1024, 1), test_strided(129, 96, 300, 8, 1);
    test_strided_operands(257, 512, 3072, 2560, 0), test_strided_operands(129, 200, 304, 16, 0);
    test_strided_operands(5000, 64, 192, 64, 0), test_strided_operands(8200, 48, 144, 96, 1);
    fp8_cast_transposed_tile(tile);
    test_mx_tables();
    test_pieces(256, 768, 0), test_pieces(129, 257, 1), test_pieces(768, 256, 0);  // --fp8-allgather
    gpu_ctx_free(&g_ctx);
    return test_summary();
}
