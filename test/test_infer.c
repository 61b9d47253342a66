// The KV-cache inference forward against the whole-model reference (llama_forward_cpu) and
// the PyTorch logits of the fixtures (test/fixtures/{llama3,qwen2,mha}): one batch, one
// token at a time, and uneven chunks must all give the reference logits (-q none within
// TOL_F32), and for every quantized mode the chunked and incremental runs must give the
// same bits. Saving a quantized model and loading it back is bit-exact.
// The mapped loader (infer_model_load_hf: weights used in place, bf16 / f16 through the 16-bit
// kernels) must give the logits of the fp32-copy path (model_load_hf + infer_model_build) bit
// for bit, for F32, BF16 and F16 files, aligned or not, in every -q mode; int4 files record
// whether HQQ chose their qparams.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/error.h"
#include "../model/config.h"
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

// ---- the mapped loader -------------------------------------------------------------------------
// Writes m's weights as an HF directory in dtype dt. misalign puts a 3-byte tensor (a name the
// loader ignores) first, so that no float tensor of the file sits at an aligned address.
static void write_model(const LlamaModel *m, const char *dir, StDtype dt, int misalign) {
    char err[1024];
    TEST_CHECK(make_dirs(dir), "mkdir %s", dir);
    LlamaConfig c = m->cfg;
    snprintf(c.dtype, sizeof c.dtype, "%s", dt == ST_F32 ? "float32" : dt == ST_BF16 ? "bfloat16" : "float16");
    char *cp = path_join(dir, "config.json");
    TEST_CHECK(config_save(&c, cp, err, sizeof err), "%s", err);
    free(cp);
    const int n = m->tab.n + 1;
    StWriteTensor *t = ao_calloc((size_t)n, sizeof *t);
    uint16_t *h = ao_malloc(m->tab.total * sizeof *h);
    for (size_t i = 0; i < m->tab.total; i++) h[i] = dt == ST_BF16 ? f32_to_bf16(m->params[i]) : f32_to_f16(m->params[i]);
    static const uint8_t pad[3] = {1, 2, 3};
    int k = 0;
    if (misalign) t[k++] = (StWriteTensor){"model.rotary_emb.inv_freq", ST_U8, 1, {3}, pad};
    for (int i = 0; i < m->tab.n; i++, k++) {
        const ParamInfo *p = &m->tab.p[i];
        t[k] = (StWriteTensor){p->hf_name, dt, p->ndim, {p->shape[0], p->shape[1]},
                               dt == ST_F32 ? (const void *)(m->params + p->offset) : (const void *)(h + p->offset)};
    }
    char *sp = path_join(dir, "model.safetensors");
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    TEST_CHECK(st_write(sp, t, k, mk, mv, 1, err, sizeof err), "%s", err);
    free(sp), free(t), free(h);
}

static int in_mapping(const InferModel *im, const void *p) {
    const MappedFile *f = &im->mapped->files[0];
    return (const unsigned char *)p >= f->data && (const unsigned char *)p < f->data + f->size;
}

// The tensor an -q none model computes lm_head from, for the storage checks.
static const void *head_data(const InferModel *im) {
    return im->lm_head.wdtype == QW_F32 ? (const void *)im->lm_head.w : (const void *)im->lm_head.w16;
}

static void test_mapped(const char *name) {
    LlamaModel m;
    if (!load(&m, name)) return;
    const int T = 9, V = m.cfg.vocab_size;
    int32_t tok[9];
    for (int i = 0; i < T; i++) tok[i] = (int32_t)((i * 37 + 5) % V);
    float *ref = ao_malloc((size_t)T * V * sizeof(float)), *got = ao_malloc((size_t)T * V * sizeof(float)),
          *inc = ao_malloc((size_t)T * V * sizeof(float));
    const StDtype dts[3] = {ST_F32, ST_BF16, ST_F16};
    const QWeightDtype wdt[3] = {QW_F32, QW_BF16, QW_F16};
    char err[1024];
    for (int d = 0; d < 3; d++)
        for (int mis = 0; mis < 2; mis++) {
            char dir[600];
            snprintf(dir, sizeof dir, "%s/%s_%s_%d", test_tmpdir("infer"), name, st_dtype_name(dts[d]), mis);
            write_model(&m, dir, dts[d], mis);
            // -q none for every file; the aligned bf16 file also runs every quantized mode
            const int last = d == 1 && !mis ? QUANT_NMODES - 1 : QUANT_NONE;
            for (int mode = QUANT_NONE; mode <= last; mode++) {
                const char *mn = quant_mode_name((QuantMode)mode);
                LlamaModel c;
                int ok = model_load_hf(&c, dir, err, sizeof err);
                TEST_CHECK(ok, "%s", err);
                if (!ok) continue;
                InferModel a, b;
                infer_model_build(&a, &c, (QuantMode)mode, 32);
                run_chunks(&a, tok, T, T, ref);
                ok = infer_model_load_hf(&b, dir, (QuantMode)mode, 32, err, sizeof err);
                TEST_CHECK(ok, "%s", err);
                if (!ok) {
                    infer_model_free(&a);
                    continue;
                }
                run_chunks(&b, tok, T, T, got);
                run_chunks(&b, tok, T, 1, inc);
                TEST_CHECK(memcmp(ref, got, (size_t)T * V * sizeof(float)) == 0 &&
                               memcmp(ref, inc, (size_t)T * V * sizeof(float)) == 0,
                           "%s %s%s -q %s: mapped logits differ from the fp32-copy path", name, st_dtype_name(dts[d]),
                           mis ? " misaligned" : "", mn);
                TEST_CHECK(a.n_quantized == b.n_quantized && a.n_linear == b.n_linear && b.hqq == 0,
                           "%s -q %s: %d/%d linears quantized mapped, %d/%d copied", name, mn, b.n_quantized,
                           b.n_linear, a.n_quantized, a.n_linear);
                // where the weights live: in the file when aligned, copied (in their dtype) when not
                const QTensor *wq = &b.layers[0].wq;
                const void *emb = b.wte_dtype == QW_F32 ? (const void *)b.wte : (const void *)b.wte16;
                TEST_CHECK(b.wte_dtype == wdt[d] && in_mapping(&b, emb) == !mis, "%s %s: embedding storage", name,
                           st_dtype_name(dts[d]));
                if (mode == QUANT_NONE) {
                    const void *wd = wq->wdtype == QW_F32 ? (const void *)wq->w : (const void *)wq->w16;
                    TEST_CHECK(wq->wdtype == wdt[d] && in_mapping(&b, wd) == !mis && b.lm_head.wdtype == wdt[d] &&
                                   (!m.cfg.tie_word_embeddings || head_data(&b) == emb),
                               "%s %s%s: linears are not kept in the file's dtype / place", name, st_dtype_name(dts[d]),
                               mis ? " misaligned" : "");
                    TEST_CHECK(infer_model_bytes(&b) < infer_model_bytes(&a) || dts[d] == ST_F32,
                               "%s %s: 16-bit storage is not smaller (%zu vs %zu bytes)", name, st_dtype_name(dts[d]),
                               infer_model_bytes(&b), infer_model_bytes(&a));
                }
                // -o of a mapped model keeps 16-bit tensors 16-bit and loads back to the same bits
                if (mis == 0 && (mode == QUANT_NONE || mode == QUANT_INT4)) {
                    char qdir[700];
                    snprintf(qdir, sizeof qdir, "%s_q%s", dir, mn);
                    qmodel_save(&b, NULL, qdir);
                    InferModel r;
                    qmodel_load(&r, qdir);
                    run_chunks(&r, tok, T, T, inc);
                    TEST_CHECK(memcmp(ref, inc, (size_t)T * V * sizeof(float)) == 0 && r.wte_dtype == wdt[d] &&
                                   (mode != QUANT_NONE || r.layers[0].wq.wdtype == wdt[d]),
                               "%s %s -q %s: save -> load of the mapped model is not bit-exact in its dtype", name,
                               st_dtype_name(dts[d]), mn);
                    infer_model_free(&r);
                }
                infer_model_free(&a);
                infer_model_free(&b);
            }
        }
    free(ref), free(got), free(inc);
    model_free(&m);
}

// int4 directories say which qparams algorithm made them; loading reads it back.
static void rewrite_meta(const char *dir, const char *key, const char *val) {
    char err[1024], *sp = path_join(dir, "model.safetensors");
    SafeTensors st;
    TEST_CHECK(st_open(&st, sp, err, sizeof err), "%s", err);
    StWriteTensor *t = ao_calloc((size_t)st.n, sizeof *t);
    for (int i = 0; i < st.n; i++) {
        const StTensor *s = &st.tensors[i];
        t[i] = (StWriteTensor){s->name, s->dtype, s->ndim, {0}, s->data};
        memcpy(t[i].shape, s->shape, sizeof s->shape);
    }
    const char *mk[16], *mv[16];
    int n = 0, seen = 0;
    for (int i = 0; i < st.n_meta && n < 15; i++, n++) {
        mk[n] = st.meta_keys[i];
        mv[n] = strcmp(mk[n], key) ? st.meta_vals[i] : (seen = 1, val);
    }
    if (!seen) mk[n] = key, mv[n++] = val;
    // the data stays mapped from the old file while the new one is renamed over it
    TEST_CHECK(st_write(sp, t, st.n, mk, mv, n, err, sizeof err), "%s", err);
    st_close(&st);
    free(t), free(sp);
}

static void load_dir(void *arg) {
    InferModel im;
    qmodel_load(&im, (const char *)arg);
    infer_model_free(&im);
}

static void test_hqq_meta(void) {
    LlamaModel m, c;
    if (!load(&m, "llama3")) return;
    const int T = 6, V = m.cfg.vocab_size;
    int32_t tok[6] = {3, 1, 4, 1, 5, 9};
    float *a = ao_malloc((size_t)T * V * sizeof(float)), *b = ao_malloc((size_t)T * V * sizeof(float));
    const char *base = test_tmpdir("infer");
    for (int hqq = 0; hqq < 2; hqq++) {
        model_init(&c, &m.cfg);
        memcpy(c.params, m.params, m.tab.total * sizeof(float));
        quant_set_int4_hqq(hqq);
        InferModel im, back;
        infer_model_build(&im, &c, QUANT_INT4, 32);
        quant_set_int4_hqq(0);
        char dir[600];
        snprintf(dir, sizeof dir, "%s/int4_%d", base, hqq);
        qmodel_save(&im, NULL, dir);
        char err[512], *sp = path_join(dir, "model.safetensors");
        SafeTensors st;
        TEST_CHECK(st_open(&st, sp, err, sizeof err), "%s", err);
        const char *v = st_meta(&st, QMODEL_INT4_QPARAMS);
        TEST_CHECK(im.hqq == hqq && v && !strcmp(v, hqq ? "hqq" : "tinygemm"), "int4 %s: metadata %s = %s",
                   hqq ? "hqq" : "tinygemm", QMODEL_INT4_QPARAMS, v ? v : "(absent)");
        st_close(&st);
        free(sp);
        qmodel_load(&back, dir);
        run_chunks(&im, tok, T, T, a);
        run_chunks(&back, tok, T, T, b);
        TEST_CHECK(back.hqq == hqq && memcmp(a, b, (size_t)T * V * sizeof(float)) == 0,
                   "int4 %s: the loaded model reads back hqq=%d (and the same logits)", hqq ? "hqq" : "tinygemm", back.hqq);
        infer_model_free(&back);
        infer_model_free(&im);
        if (hqq) {  // a value we do not know is refused by name
            rewrite_meta(dir, QMODEL_INT4_QPARAMS, "awq");
            TEST_EXPECT_FAIL("unknown int4 qparams algorithm", load_dir, dir, "\"awq\" does not fit mode int4");
        }
    }
    // the key on a mode it does not apply to is refused; older int4 files without it load as tinygemm
    model_init(&c, &m.cfg);
    memcpy(c.params, m.params, m.tab.total * sizeof(float));
    InferModel im;
    infer_model_build(&im, &c, QUANT_INT8, 0);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/int8", base);
    qmodel_save(&im, NULL, dir);
    infer_model_free(&im);
    rewrite_meta(dir, QMODEL_INT4_QPARAMS, "hqq");
    TEST_EXPECT_FAIL("int4 qparams on an int8 file", load_dir, dir, "does not fit mode int8");
    free(a), free(b);
    model_free(&m);
}

// infer_logits_argmax flags what infer_llama refuses to sample from: NaN and +inf (not -inf), and
// a model with one huge but finite weight (what every loader accepts) produces them.
static void test_bad_logits(void) {
    const float ninf = -INFINITY;
    float r[6] = {0.5f, 2.0f, ninf, 2.0f, -1.0f, 0.0f};
    int bad;
    TEST_CHECK(infer_logits_argmax(r, 6, &bad) == 1 && bad == -1, "argmax of finite logits (and -inf): first max, no bad");
    r[4] = NAN;
    TEST_CHECK(infer_logits_argmax(r, 6, &bad) == 1 && bad == 4, "a NaN logit: bad %d", bad);
    r[4] = -1.0f, r[5] = INFINITY;
    TEST_CHECK(infer_logits_argmax(r, 6, &bad) == 5 && bad == 5, "+inf logit: bad %d", bad);
    LlamaModel m;
    if (!load(&m, "mha")) return;
    const int k = param_table_find(&m.tab, "model.layers.0.mlp.down_proj.weight");
    TEST_CHECK(k >= 0, "mha has layer 0's down_proj");
    if (k < 0) { model_free(&m); return; }
    const ParamInfo *p = &m.tab.p[k];
    for (size_t i = 0; i < p->numel; i++) m.params[p->offset + i] = 3e38f;
    InferModel im;
    infer_model_build(&im, &m, QUANT_NONE, 0);
    InferState s;
    infer_state_init(&s, &im, 4, 4);
    int32_t t[2] = {1, 2};
    const float *lg = infer_forward(&im, &s, t, 2, 0);
    infer_logits_argmax(lg, im.cfg.vocab_size, &bad);
    TEST_CHECK(bad >= 0, "a 3e38 weight: the logits overflow and are flagged");
    infer_state_free(&s);
    infer_model_free(&im);
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
    for (int i = 0; i < 3; i++) test_mapped(names[i]);
    test_hqq_meta();
    test_bad_logits();
    return test_summary();
}
