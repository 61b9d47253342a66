// Whole-model CPU forward and backward against the PyTorch fixtures (test/ref/
// make_fixtures.py): logits, loss, every parameter gradient; a finite-difference check
// of sampled gradients; safetensors save -> load is bit-exact.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../model/llama_cpu.h"
#include "../model/model.h"
#include "../model/safetensors.h"
#include "test.h"

typedef struct {
    LlamaModel m;
    SafeTensors io;
    int B, T;
    int32_t *tokens, *targets;
} Fixture;

static int load_fixture(Fixture *f, const char *name) {
    char dir[512], err[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", test_dir(), name);
    if (!model_load_hf(&f->m, dir, err, sizeof err)) {
        TEST_CHECK(0, "%s: load failed: %s", name, err);
        return 0;
    }
    char *io = path_join(dir, "io.safetensors");
    int ok = st_open(&f->io, io, err, sizeof err);
    free(io);
    TEST_CHECK(ok, "%s: io.safetensors: %s", name, err);
    if (!ok) { model_free(&f->m); return 0; }
    const StTensor *ids = st_find(&f->io, "input_ids"), *tg = st_find(&f->io, "targets");
    TEST_CHECK(ids && tg && ids->dtype == ST_I32 && ids->ndim == 2, "%s: fixture lacks input_ids/targets", name);
    f->B = (int)ids->shape[0];
    f->T = (int)ids->shape[1];
    f->tokens = ao_malloc(ids->nbytes);
    f->targets = ao_malloc(tg->nbytes);
    memcpy(f->tokens, ids->data, ids->nbytes);
    memcpy(f->targets, tg->data, tg->nbytes);
    return 1;
}

static void free_fixture(Fixture *f) {
    model_free(&f->m);
    st_close(&f->io);
    free(f->tokens);
    free(f->targets);
}

static float *tensor_f32(const SafeTensors *st, const char *name, size_t *numel) {
    const StTensor *t = st_find(st, name);
    if (!t) return NULL;
    float *x = ao_malloc(t->numel * sizeof(float));
    st_to_f32(t, x);
    if (numel) *numel = t->numel;
    return x;
}

// Central differences on the parameters with the largest gradients of each tensor kind.
static void finite_difference(const char *name, Fixture *f, LlamaActs *a, const float *grads) {
    const int per_tensor = 2;
    double worst = 0;
    int checked = 0;
    for (int i = 0; i < f->m.tab.n; i++) {
        const ParamInfo *p = &f->m.tab.p[i];
        if (p->layer > 0) continue;  // globals and layer 0 cover every kind
        for (int s = 0; s < per_tensor; s++) {
            // s = 0: the largest |grad|; s = 1: a fixed pseudo-random element
            size_t j = 0;
            if (s == 0) {
                for (size_t q = 1; q < p->numel; q++)
                    if (fabsf(grads[p->offset + q]) > fabsf(grads[p->offset + j])) j = q;
            } else j = (p->numel * 7919 / 10007 + 3) % p->numel;
            float *x = &f->m.params[p->offset + j];
            const float orig = *x, eps = 1e-2f * fmaxf(1.0f, fabsf(orig));
            *x = orig + eps;
            double lp = llama_forward_cpu(&f->m, a, f->tokens, f->targets);
            *x = orig - eps;
            double lm = llama_forward_cpu(&f->m, a, f->tokens, f->targets);
            *x = orig;
            double fd = (lp - lm) / (2.0 * eps), g = grads[p->offset + j];
            // fp32 loss noise is ~1e-7 * loss / eps; the curvature term is O(eps^2).
            double err = fabs(fd - g) / (fabs(g) + 2e-4);
            if (err > worst) worst = err;
            checked++;
            TEST_CHECK(fabs(fd - g) <= 2e-2 * fabs(g) + 2e-4, "%s: finite difference of %s[%zu]: fd %.6g vs grad %.6g",
                       name, p->hf_name, j, fd, g);
        }
    }
    printf("  %s: finite differences on %d parameters, worst relative gap %.2e\n", name, checked, worst);
}

static void save_load_roundtrip(const char *name, Fixture *f) {
    char dir[256], err[1024];
    snprintf(dir, sizeof dir, "/tmp/llama_ao_test_%d_%s", (int)getpid(), name);
    TEST_CHECK(model_save_hf(&f->m, dir, 0, err, sizeof err), "%s: save: %s", name, err);
    LlamaModel m2;
    int ok = model_load_hf(&m2, dir, err, sizeof err);
    TEST_CHECK(ok, "%s: reload: %s", name, err);
    if (ok) {
        TEST_CHECK(m2.tab.total == f->m.tab.total && memcmp(&m2.cfg, &f->m.cfg, sizeof m2.cfg) != 2, "%s: table size", name);
        TEST_CHECK(memcmp(m2.params, f->m.params, f->m.tab.total * sizeof(float)) == 0,
                   "%s: fp32 save -> load is not bit-exact", name);
        TEST_CHECK(m2.cfg.rope.type == f->m.cfg.rope.type && m2.cfg.rope.theta == f->m.cfg.rope.theta &&
                       m2.cfg.tie_word_embeddings == f->m.cfg.tie_word_embeddings && m2.cfg.qkv_bias == f->m.cfg.qkv_bias &&
                       m2.cfg.head_dim == f->m.cfg.head_dim && m2.cfg.rms_norm_eps == f->m.cfg.rms_norm_eps,
                   "%s: config does not survive save -> load", name);
        model_free(&m2);
    }
    // bf16: what comes back is exactly the round-to-nearest-even of what went in
    TEST_CHECK(model_save_hf(&f->m, dir, 1, err, sizeof err), "%s: bf16 save: %s", name, err);
    ok = model_load_hf(&m2, dir, err, sizeof err);
    TEST_CHECK(ok, "%s: bf16 reload: %s", name, err);
    if (ok) {
        size_t bad = 0;
        for (size_t i = 0; i < f->m.tab.total; i++)
            if (m2.params[i] != bf16_to_f32(f32_to_bf16(f->m.params[i]))) bad++;
        TEST_CHECK(bad == 0, "%s: bf16 save -> load differs from rounding in %zu elements", name, bad);
        model_free(&m2);
    }
    char *p = path_join(dir, "model.safetensors");
    unlink(p);
    free(p);
    p = path_join(dir, "config.json");
    unlink(p);
    free(p);
    rmdir(dir);
}

static void run_fixture(const char *name) {
    Fixture f;
    if (!load_fixture(&f, name)) return;
    char desc[256];
    config_describe(&f.m.cfg, desc, sizeof desc);
    printf("  %s: %s, B=%d T=%d\n", name, desc, f.B, f.T);
    LlamaActs a;
    llama_acts_init(&a, &f.m.cfg, f.B, f.T);
    float loss = llama_forward_cpu(&f.m, &a, f.tokens, f.targets);
    size_t n = 0;
    float *ref_logits = tensor_f32(&f.io, "logits", &n);
    float *ref_loss = tensor_f32(&f.io, "loss", NULL);
    TEST_CHECK(ref_logits && n == (size_t)f.B * f.T * f.m.cfg.vocab_size, "%s: logits shape", name);
    double le = TEST_CLOSE("logits", a.logits, ref_logits, n, TOL_F32);
    TEST_CHECK(fabs(loss - ref_loss[0]) <= 1e-5 * fabs(ref_loss[0]), "%s: loss %.8f vs PyTorch %.8f", name, loss,
               ref_loss[0]);
    printf("  %s: loss %.7f (PyTorch %.7f), logits scaled error %.2e\n", name, loss, ref_loss[0], le);

    float *grads = ao_calloc(f.m.tab.total, sizeof(float));
    llama_backward_cpu(&f.m, &a, grads, f.tokens, f.targets);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < f.m.tab.n; i++) {
        const ParamInfo *p = &f.m.tab.p[i];
        char key[128];
        snprintf(key, sizeof key, "grad.%s", p->hf_name);
        size_t gn = 0;
        float *ref = tensor_f32(&f.io, key, &gn);
        TEST_CHECK(ref && gn == p->numel, "%s: fixture lacks %s", name, key);
        if (!ref) continue;
        char what[160];
        snprintf(what, sizeof what, "%s %s", name, key);
        double e = TEST_CLOSE(what, grads + p->offset, ref, gn, TOL_F32);
        if (e > worst) { worst = e; worst_name = p->hf_name; }
        free(ref);
    }
    printf("  %s: %d parameter gradients, worst scaled error %.2e (%s)\n", name, f.m.tab.n, worst, worst_name);
    // Running backward twice accumulates: the result is exactly twice the first.
    float *g2 = ao_malloc(f.m.tab.total * sizeof(float));
    memcpy(g2, grads, f.m.tab.total * sizeof(float));
    llama_backward_cpu(&f.m, &a, g2, f.tokens, f.targets);
    for (size_t i = 0; i < f.m.tab.total; i++) grads[i] *= 2;
    TEST_CLOSE("second backward accumulates", g2, grads, f.m.tab.total, 1e-6);
    for (size_t i = 0; i < f.m.tab.total; i++) grads[i] *= 0.5f;
    finite_difference(name, &f, &a, grads);
    save_load_roundtrip(name, &f);
    free(g2);
    free(grads);
    free(ref_logits);
    free(ref_loss);
    llama_acts_free(&a);
    free_fixture(&f);
}

int main(void) {
    const char *names[] = {"llama3", "qwen2", "mha"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) run_fixture(names[i]);
    return test_summary();
}
