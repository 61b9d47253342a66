// The KV-cache inference forward against the whole-model reference (llama_forward_cpu) and
// the PyTorch logits of the fixtures (test/fixtures/{llama3,qwen2,mha}): one batch, one
// token at a time, and uneven chunks must all give the reference logits (-q none within
// TOL_F32), and for every quantized mode the chunked and incremental runs must give the
// same bits. Saving a quantized model and loading it back is bit-exact.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../model/infer_cpu.h"
#include "../model/llama_cpu.h"
#include "../model/model.h"
#include "../model/safetensors.h"
#include "../quant/qmodel.h"
#include "test.h"

static int load(LlamaModel *m, const char *name) {
    char dir[512], err[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", test_dir(), name);
    int ok = model_load_hf(m, dir, err, sizeof err);
    TEST_CHECK(ok, "%s: %s", name, err);
    return ok;
}

// Runs the whole sequence through the inference forward in chunks of `chunk` tokens and
// collects all logits [T, V].
static void run_chunks(const InferModel *im, const int32_t *tok, int T, int chunk, float *out) {
    InferState s;
    infer_state_init(&s, im, T, chunk);
    const int V = im->cfg.vocab_size;
    for (int t = 0; t < T; t += chunk) {
        int n = T - t < chunk ? T - t : chunk;
        const float *lg = infer_forward(im, &s, tok + t, n, 1);
        memcpy(out + (size_t)t * V, lg, (size_t)n * V * sizeof(float));
    }
    infer_state_free(&s);
}

static void test_fixture(const char *name) {
    LlamaModel m;
    if (!load(&m, name)) return;
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/fixtures/%s/io.safetensors", test_dir(), name);
    SafeTensors io;
    if (!st_open(&io, path, err, sizeof err)) {
        TEST_CHECK(0, "%s", err);
        model_free(&m);
        return;
    }
    const StTensor *ids = st_find(&io, "input_ids"), *lt = st_find(&io, "logits");
    const int T = (int)ids->shape[1], V = m.cfg.vocab_size;
    const int32_t *tok = (const int32_t *)ids->data;  // batch row 0
    float *pt = ao_malloc((size_t)T * V * sizeof(float));
    float *tmp = ao_malloc(lt->numel * sizeof(float));
    st_to_f32(lt, tmp);
    memcpy(pt, tmp, (size_t)T * V * sizeof(float));
    free(tmp);

    LlamaActs a;
    llama_acts_init(&a, &m.cfg, 1, T);
    llama_forward_cpu(&m, &a, tok, NULL);
    float *ref = ao_malloc((size_t)T * V * sizeof(float));
    memcpy(ref, a.logits, (size_t)T * V * sizeof(float));
    llama_acts_free(&a);

    // a copy of the fp32 model for the quantized builds (build takes ownership)
    LlamaModel keep;
    model_init(&keep, &m.cfg);
    memcpy(keep.params, m.params, m.tab.total * sizeof(float));

    InferModel im;
    infer_model_build(&im, &m, QUANT_NONE, 0);
    float *full = ao_malloc((size_t)T * V * sizeof(float)), *inc = ao_malloc((size_t)T * V * sizeof(float)),
          *chunk = ao_malloc((size_t)T * V * sizeof(float));
    run_chunks(&im, tok, T, T, full);
    run_chunks(&im, tok, T, 1, inc);
    run_chunks(&im, tok, T, 5, chunk);
    char what[160];
    snprintf(what, sizeof what, "%s: -q none full-sequence logits vs llama_forward_cpu", name);
    TEST_CLOSE(what, full, ref, (size_t)T * V, TOL_F32);
    snprintf(what, sizeof what, "%s: -q none one token at a time vs llama_forward_cpu", name);
    TEST_CLOSE(what, inc, ref, (size_t)T * V, TOL_F32);
    snprintf(what, sizeof what, "%s: -q none chunks of 5 vs llama_forward_cpu", name);
    TEST_CLOSE(what, chunk, ref, (size_t)T * V, TOL_F32);
    snprintf(what, sizeof what, "%s: -q none logits vs PyTorch", name);
    TEST_CLOSE(what, full, pt, (size_t)T * V, TOL_F32);
    TEST_CHECK(memcmp(full, inc, (size_t)T * V * sizeof(float)) == 0,
               "%s: incremental decode is not bit-identical to the full-sequence forward", name);
    infer_model_free(&im);

    for (int mode = QUANT_INT8; mode < QUANT_NMODES; mode++) {
        LlamaModel c;
        model_init(&c, &keep.cfg);
        memcpy(c.params, keep.params, keep.tab.total * sizeof(float));
        infer_model_build(&im, &c, (QuantMode)mode, 32);
        run_chunks(&im, tok, T, T, full);
        run_chunks(&im, tok, T, 1, inc);
        run_chunks(&im, tok, T, 3, chunk);
        TEST_CHECK(memcmp(full, inc, (size_t)T * V * sizeof(float)) == 0 &&
                       memcmp(full, chunk, (size_t)T * V * sizeof(float)) == 0,
                   "%s -q %s: chunked / incremental logits are not bit-identical", name, quant_mode_name((QuantMode)mode));
        size_t worst;
        double e = rel_err_f32(full, ref, (size_t)T * V, &worst);
        // random tiny models are far from trained ones; this only catches gross breakage
        TEST_CHECK(e < 0.5 && isfinite(e), "%s -q %s: logits scaled error %.3g vs fp32", name,
                   quant_mode_name((QuantMode)mode), e);
        printf("  %s -q %-5s g32: %d/%d linears quantized, logits scaled error vs fp32 %.2e\n", name,
               quant_mode_name((QuantMode)mode), im.n_quantized, im.n_linear, e);

        // save -> load gives the same tensors and the same logits, bit for bit
        char dir[256];
        snprintf(dir, sizeof dir, "/tmp/llama_ao_test_q_%d_%s_%d", (int)getpid(), name, mode);
        qmodel_save(&im, NULL, dir);
        InferModel im2;
        qmodel_load(&im2, dir);
        float *again = ao_malloc((size_t)T * V * sizeof(float));
        run_chunks(&im2, tok, T, T, again);
        TEST_CHECK(memcmp(full, again, (size_t)T * V * sizeof(float)) == 0 && im2.mode == im.mode &&
                       im2.n_quantized == im.n_quantized,
                   "%s -q %s: save -> load is not bit-exact", name, quant_mode_name((QuantMode)mode));
        free(again);
        infer_model_free(&im2);
        infer_model_free(&im);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) printf("  (could not remove %s)\n", dir);
    }
    model_free(&keep);
    free(full), free(inc), free(chunk), free(ref), free(pt);
    st_close(&io);
}

int main(void) {
    const char *names[] = {"llama3", "qwen2", "mha"};
    for (int i = 0; i < 3; i++) test_fixture(names[i]);
    LlamaModel m;
    if (load(&m, "mha")) {
        InferModel im;
        infer_model_build(&im, &m, QUANT_NONE, 0);
        InferState s;
        infer_state_init(&s, &im, 4, 4);
        int32_t t[4] = {1, 2, 3, 4};
        infer_forward(&im, &s, t, 4, 0);
        TEST_CHECK(s.pos == 4, "position advances");
        infer_state_free(&s);
        infer_model_free(&im);
    }
    return test_summary();
}
