// The whole bf16 GPU model against the PyTorch fixtures (logits, loss, every gradient,
// within bf16 tolerances) and against itself (two runs give identical bits; the
// cuDNN and hand-written attention paths agree; recompute flags change nothing).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/llama_gpu.cuh"
#include "../ops/matmul.cuh"
extern "C" {
#include "../common/fileio.h"
#include "../model/model.h"
#include "../model/safetensors.h"
#include "test.h"
}

#define TOL_GRAD_BF16 6e-2  // bf16 activations through 2-3 layers, fp32 accumulation

static float *tensor_f32(const SafeTensors *st, const char *name, size_t *n) {
    const StTensor *t = st_find(st, name);
    if (!t) return NULL;
    float *x = (float *)ao_malloc(t->numel * sizeof(float));
    st_to_f32(t, x);
    if (n) *n = t->numel;
    return x;
}

struct Run {
    double loss;
    float *logits;  // [N, V]
    float *grads;   // tab.total
};

static Run run_gpu(GpuCtx *ctx, const LlamaModel *cpu, int B, int T, const int32_t *tok, const int32_t *tgt,
                   GpuRunOpts o) {
    LlamaGpu m;
    o.lm_chunk = B * T;  // keep every row's logits in the buffer for the comparison
    llama_gpu_init(&m, ctx, cpu, B, T, &o);
    llama_gpu_set_batch(&m, ctx, tok, tgt);
    const size_t NV = (size_t)B * T * cpu->cfg.vocab_size;
    Run r;
    r.logits = (float *)ao_malloc(NV * sizeof(float));
    int n_valid = 0;
    // Logits first (dloss = 0 leaves them in place), then the training pass.
    llama_gpu_forward(&m, ctx, 0.0f, &n_valid);
    float *dev;
    CUDA_CHECK(cudaMalloc(&dev, NV * sizeof(float)));
    cast_bf16_to_f32(dev, m.logits, NV, ctx->stream);
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));  // the stream is non-blocking: order the copy after the cast
    CUDA_CHECK(cudaMemcpy(r.logits, dev, NV * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFree(dev));
    double sum = llama_gpu_forward(&m, ctx, 1.0f / (float)n_valid, &n_valid);
    r.loss = sum / n_valid;
    llama_gpu_backward(&m, ctx);
    r.grads = (float *)ao_malloc(m.tab.total * sizeof(float));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    CUDA_CHECK(cudaMemcpy(r.grads, m.grads, m.tab.total * sizeof(float), cudaMemcpyDeviceToHost));
    llama_gpu_free(&m);
    return r;
}

static void free_run(Run *r) {
    free(r->logits);
    free(r->grads);
}

static void check_fixture(GpuCtx *ctx, const char *name) {
    char dir[512], err[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", test_dir(), name);
    LlamaModel cpu;
    if (!model_load_hf(&cpu, dir, err, sizeof err)) { TEST_CHECK(0, "%s: %s", name, err); return; }
    SafeTensors io;
    char *iop = path_join(dir, "io.safetensors");
    int ok = st_open(&io, iop, err, sizeof err);
    free(iop);
    TEST_CHECK(ok, "%s: %s", name, err);
    if (!ok) { model_free(&cpu); return; }
    const StTensor *ids = st_find(&io, "input_ids"), *tg = st_find(&io, "targets");
    const int B = (int)ids->shape[0], T = (int)ids->shape[1];
    const int32_t *tok = (const int32_t *)ids->data, *tgt = (const int32_t *)tg->data;
    GpuRunOpts o;
    memset(&o, 0, sizeof o);
    o.attn = ATTN_AUTO;
    o.attn_bwd = ATTN_KERNEL;  // deterministic
    Run a = run_gpu(ctx, &cpu, B, T, tok, tgt, o);
    size_t n = 0;
    float *ref_logits = tensor_f32(&io, "logits", &n), *ref_loss = tensor_f32(&io, "loss", NULL);
    char what[256];
    snprintf(what, sizeof what, "%s logits (GPU bf16 vs PyTorch fp32)", name);
    double le = TEST_CLOSE(what, a.logits, ref_logits, n, TOL_BF16);
    TEST_CHECK(fabs(a.loss - ref_loss[0]) <= 1e-2 * fabs(ref_loss[0]), "%s: GPU loss %.6f vs PyTorch %.6f", name, a.loss,
               ref_loss[0]);
    double worst = 0;
    for (int i = 0; i < cpu.tab.n; i++) {
        const ParamInfo *p = &cpu.tab.p[i];
        char key[160];
        snprintf(key, sizeof key, "grad.%s", p->hf_name);
        size_t gn = 0;
        float *ref = tensor_f32(&io, key, &gn);
        if (!ref) { TEST_CHECK(0, "%s: fixture lacks %s", name, key); continue; }
        snprintf(what, sizeof what, "%s GPU %s", name, key);
        double e = TEST_CLOSE(what, a.grads + p->offset, ref, gn, TOL_GRAD_BF16);
        if (e > worst) worst = e;
        free(ref);
    }
    printf("  %s: loss %.6f (PyTorch %.6f), logits err %.2e, worst grad err %.2e over %d tensors\n", name, a.loss,
           ref_loss[0], le, worst, cpu.tab.n);
    // Determinism: the same inputs give the same bits.
    Run b = run_gpu(ctx, &cpu, B, T, tok, tgt, o);
    TEST_CHECK(b.loss == a.loss && memcmp(a.grads, b.grads, cpu.tab.total * sizeof(float)) == 0,
               "%s: two identical GPU runs differ", name);
    free_run(&b);
    // Recompute flags must not change a single bit.
    GpuRunOpts r = o;
    r.recompute_norm = r.recompute_swiglu = r.recompute_ffn = r.recompute_attn = 1;
    b = run_gpu(ctx, &cpu, B, T, tok, tgt, r);
    TEST_CHECK(b.loss == a.loss && memcmp(a.grads, b.grads, cpu.tab.total * sizeof(float)) == 0,
               "%s: recompute changes the gradients", name);
    free_run(&b);
    // The hand-written attention kernel against the default path.
    r = o;
    r.attn = r.attn_bwd = ATTN_AUTO;  // cuDNN backward where the shape allows
    b = run_gpu(ctx, &cpu, B, T, tok, tgt, r);
    snprintf(what, sizeof what, "%s grads, cuDNN attention backward vs kernel", name);
    TEST_CLOSE(what, b.grads, a.grads, cpu.tab.total, TOL_GRAD_BF16);
    free_run(&b);
    free_run(&a);
    free(ref_logits);
    free(ref_loss);
    st_close(&io);
    model_free(&cpu);
}

// 10 AdamW steps on the llama3 fixture against PyTorch fp32 (test/ref/make_trajectory.py).
static void check_trajectory(GpuCtx *ctx) {
    char dir[512], err[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/llama3", test_dir());
    LlamaModel cpu;
    if (!model_load_hf(&cpu, dir, err, sizeof err)) { TEST_CHECK(0, "%s", err); return; }
    SafeTensors tj;
    char *p = path_join(dir, "trajectory.safetensors");
    int ok = st_open(&tj, p, err, sizeof err);
    free(p);
    TEST_CHECK(ok, "%s", err);
    if (!ok) { model_free(&cpu); return; }
    const StTensor *tt = st_find(&tj, "tokens"), *tg = st_find(&tj, "targets");
    const int steps = (int)tt->shape[0], B = (int)tt->shape[1], T = (int)tt->shape[2];
    float *ref_loss = tensor_f32(&tj, "losses", NULL), *ref_norm = tensor_f32(&tj, "norms", NULL);
    const float lr = (float)atof(st_meta(&tj, "lr")), wd = (float)atof(st_meta(&tj, "wd")),
                b1 = (float)atof(st_meta(&tj, "beta1")), b2 = (float)atof(st_meta(&tj, "beta2")),
                eps = (float)atof(st_meta(&tj, "eps")), clip = (float)atof(st_meta(&tj, "clip"));
    GpuRunOpts o;
    memset(&o, 0, sizeof o);
    LlamaGpu m;
    llama_gpu_init(&m, ctx, &cpu, B, T, &o);
    double worst = 0;
    for (int s = 0; s < steps; s++) {
        const int32_t *tok = (const int32_t *)tt->data + (size_t)s * B * T, *tgt = (const int32_t *)tg->data + (size_t)s * B * T;
        llama_gpu_zero_grads(&m, ctx);
        llama_gpu_set_batch(&m, ctx, tok, tgt);
        int nv = 0;
        double sum = llama_gpu_forward(&m, ctx, 1.0f / (B * T), &nv);
        llama_gpu_backward(&m, ctx);
        float norm = llama_gpu_grad_norm(&m, ctx);
        llama_gpu_adamw(&m, ctx, lr, b1, b2, eps, wd, s + 1, norm > clip ? clip / norm : 1.0f);
        double loss = sum / nv, rel = fabs(loss - ref_loss[s]) / ref_loss[s];
        if (rel > worst) worst = rel;
        printf("  trajectory step %2d: loss %.5f (PyTorch %.5f), norm %.4f (PyTorch %.4f)\n", s + 1, loss, ref_loss[s],
               norm, ref_norm[s]);
        TEST_CHECK(rel <= 3e-2, "trajectory step %d: loss %.5f vs PyTorch %.5f", s + 1, loss, ref_loss[s]);
        TEST_CHECK(fabs(norm - ref_norm[s]) <= 8e-2 * ref_norm[s], "trajectory step %d: norm %.4f vs PyTorch %.4f", s + 1,
                   norm, ref_norm[s]);
    }
    printf("  trajectory: worst relative loss gap %.2e over %d steps\n", worst, steps);
    llama_gpu_free(&m);
    free(ref_loss);
    free(ref_norm);
    st_close(&tj);
    model_free(&cpu);
}

int main(void) {
    GpuCtx ctx;
    gpu_ctx_init(&ctx, 0);
    printf("  GPU: %s (sm_%d%d)\n", ctx.prop.name, ctx.prop.major, ctx.prop.minor);
    const char *names[] = {"llama3", "qwen2", "mha"};
    for (int i = 0; i < 3; i++) check_fixture(&ctx, names[i]);
    check_trajectory(&ctx);
    gpu_ctx_free(&ctx);
    return test_summary();
}
