// The inference forward with a KV cache. Each op follows the training reference
// (model/llama_cpu.c, the HF Llama forward): RMSNorm, q/k/v projections (+ Qwen2 bias),
// rotate-half RoPE at absolute positions, causal GQA attention over the cache, o_proj,
// residual, RMSNorm, SwiGLU MLP, residual; final norm and lm_head. Only the linears go
// through quant_linear_forward, so -q none reproduces llama_forward_cpu (within fp32
// summation order) and the quantized modes differ only where torchao's do.
#include "infer_cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../ops/embedding.h"
#include "../ops/rmsnorm.h"
#include "../ops/rope.h"
#include "../ops/swiglu.h"

float *infer_model_alloc(InferModel *im, size_t n) {
    im->allocs = ao_realloc(im->allocs, (size_t)(im->n_allocs + 1) * sizeof *im->allocs);
    float *p = ao_malloc((n ? n : 1) * sizeof(float));
    im->allocs[im->n_allocs++] = p;
    return p;
}

static float *keep(InferModel *im, const float *src, size_t n, int copy) {
    if (!src) return NULL;
    if (!copy) return (float *)src;
    float *p = infer_model_alloc(im, n);
    memcpy(p, src, n * sizeof(float));
    return p;
}

// Quantizes one linear (or keeps it fp32 when the mode cannot take its shape, as torchao does).
static void make_linear(InferModel *im, QTensor *t, const float *w, int rows, int cols, int copy, const char *name) {
    im->n_linear++;
    char why[160];
    if (im->mode != QUANT_NONE && quant_compatible(im->mode, rows, cols, im->group, why, sizeof why)) {
        quant_quantize(t, im->mode, w, rows, cols, im->group);
        im->n_quantized++;
        return;
    }
    if (im->mode != QUANT_NONE) {
        size_t l = strlen(im->skipped);
        if (l + 1 < sizeof im->skipped)
            snprintf(im->skipped + l, sizeof im->skipped - l, "%s%s (%s)", l ? "; " : "", name, why);
    }
    quant_wrap_f32(t, keep(im, w, (size_t)rows * (size_t)cols, copy), rows, cols);
}

void infer_model_build(InferModel *im, LlamaModel *m, QuantMode mode, int group) {
    memset(im, 0, sizeof *im);
    const LlamaConfig *c = &m->cfg;
    im->cfg = *c;
    im->mode = mode;
    im->group = quant_mode_grouped(mode) ? group : 0;
    CHECK(!quant_mode_grouped(mode) || quant_group_ok(group), "group size %d is not one of 32, 64, 128, 256", group);
    const int copy = mode != QUANT_NONE;  // quantized: copy what stays fp32, then drop the fp32 buffer
    const int D = c->hidden_size, F = c->intermediate_size, QD = c->n_heads * c->head_dim,
              KVD = c->n_kv_heads * c->head_dim, V = c->vocab_size;
    const LlamaWeights *w = &m->w;
    im->wte = keep(im, w->wte, (size_t)V * D, copy);
    im->norm_f = keep(im, w->norm_f, (size_t)D, copy);
    make_linear(im, &im->lm_head, w->lm_head, V, D, copy, "lm_head");
    im->layers = ao_calloc((size_t)c->n_layers, sizeof *im->layers);
    for (int l = 0; l < c->n_layers; l++) {
        const LlamaWeightsLayer *W = &w->layers[l];
        InferLayer *L = &im->layers[l];
        L->ln1 = keep(im, W->ln1, (size_t)D, copy);
        L->ln2 = keep(im, W->ln2, (size_t)D, copy);
        L->bq = keep(im, W->bq, (size_t)QD, copy);
        L->bk = keep(im, W->bk, (size_t)KVD, copy);
        L->bv = keep(im, W->bv, (size_t)KVD, copy);
        char nm[64];
#define MK(f, r, k) snprintf(nm, sizeof nm, "layers.%d.%s", l, #f), make_linear(im, &L->f, W->f, r, k, copy, nm)
        MK(wq, QD, D);
        MK(wk, KVD, D);
        MK(wv, KVD, D);
        MK(wo, D, QD);
        MK(wg, F, D);
        MK(wu, F, D);
        MK(wd, D, F);
#undef MK
    }
    if (copy) model_free(m);
    else {
        im->base = *m;
        im->has_base = 1;
        // the weight structs point into base.params, which moved with the struct copy only
        // by value: params itself is the same allocation, so the pointers stay valid
    }
    memset(m, 0, sizeof *m);
}

static size_t qt_bytes(const QTensor *t) {
    if (t->mode == QUANT_NONE) return (size_t)t->rows * (size_t)t->cols * sizeof(float);
    size_t ns = quant_n_scales(t->mode, t->rows, t->cols, t->group);
    return quant_q_bytes(t->mode, t->rows, t->cols) + ns * sizeof(float) * (t->zero ? 2 : 1) +
           (t->wsum ? ns * sizeof(int32_t) : 0);
}

size_t infer_model_bytes(const InferModel *im) {
    const LlamaConfig *c = &im->cfg;
    size_t b = ((size_t)c->vocab_size + 1) * (size_t)c->hidden_size * sizeof(float);
    if (im->lm_head.w != im->wte) b += qt_bytes(&im->lm_head);  // a tied fp32 head is the embedding
    for (int l = 0; l < c->n_layers; l++) {
        const InferLayer *L = &im->layers[l];
#define QB_(n) b += qt_bytes(&L->n);
        INFER_LAYER_LINEARS(QB_)
#undef QB_
        b += 2 * (size_t)c->hidden_size * sizeof(float);
    }
    return b;
}

void infer_model_free(InferModel *im) {
    if (!im->layers && !im->allocs && !im->has_base) return;
    for (int l = 0; im->layers && l < im->cfg.n_layers; l++) {
        InferLayer *L = &im->layers[l];
#define QF_(n) quant_free(&L->n);
        INFER_LAYER_LINEARS(QF_)
#undef QF_
    }
    quant_free(&im->lm_head);
    free(im->layers);
    for (int i = 0; i < im->n_allocs; i++) free(im->allocs[i]);
    free(im->allocs);
    if (im->has_base) model_free(&im->base);
    memset(im, 0, sizeof *im);
}

// ---- state ---------------------------------------------------------------------------------
void infer_state_init(InferState *s, const InferModel *im, int max_T, int max_batch) {
    const LlamaConfig *c = &im->cfg;
    CHECK(max_T > 0 && max_batch > 0, "inference context %d / batch %d must be positive", max_T, max_batch);
    if (max_batch > max_T) max_batch = max_T;
    memset(s, 0, sizeof *s);
    s->max_T = max_T;
    s->max_batch = max_batch;
    const size_t KVD = (size_t)c->n_kv_heads * c->head_dim, QD = (size_t)c->n_heads * c->head_dim,
                 D = (size_t)c->hidden_size, F = (size_t)c->intermediate_size, B = (size_t)max_batch;
    size_t cache;
    CHECK(ao_mul_size((size_t)c->n_layers * (size_t)max_T, KVD, &cache) && cache < ((size_t)1 << 40),
          "KV cache for %d tokens is too large", max_T);
    s->k = ao_calloc(cache, sizeof(float));
    s->v = ao_calloc(cache, sizeof(float));
    s->x = ao_malloc(B * D * sizeof(float));
    s->ln = ao_malloc(B * (D > QD ? D : QD) * sizeof(float));
    s->q = ao_malloc(B * QD * sizeof(float));
    s->kn = ao_malloc(B * KVD * sizeof(float));
    s->vn = ao_malloc(B * KVD * sizeof(float));
    s->att = ao_malloc(B * QD * sizeof(float));
    s->tmp = ao_malloc(B * D * sizeof(float));
    s->gate = ao_malloc(B * F * sizeof(float));
    s->up = ao_malloc(B * F * sizeof(float));
    s->logits = ao_malloc(B * (size_t)c->vocab_size * sizeof(float));
    s->inv_freq = ao_malloc((size_t)c->head_dim / 2 * sizeof(float));
    rope_inv_freq_cpu(s->inv_freq, c->head_dim, &c->rope);
}

void infer_state_free(InferState *s) {
    free(s->k), free(s->v), free(s->x), free(s->ln), free(s->q), free(s->kn), free(s->vn);
    free(s->att), free(s->tmp), free(s->gate), free(s->up), free(s->logits), free(s->inv_freq);
    memset(s, 0, sizeof *s);
}

// Causal GQA attention of n new queries (positions pos..pos+n-1) over the cache 0..pos+n-1.
// Softmax with the max subtracted, in fp32 with the sums in double.
static void attention_cached(float *out, const float *q, const float *kc, const float *vc, int n, int pos, int H,
                             int KV, int hd, int max_T) {
    const int group = H / KV;
    const float scale = (float)(1.0 / sqrt((double)hd));
    const size_t KVD = (size_t)KV * hd;
    (void)max_T;
#pragma omp parallel
    {
        float *p = ao_malloc((size_t)(pos + n) * sizeof(float));
        double *acc = ao_malloc((size_t)hd * sizeof(double));
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int i = 0; i < n; i++)
            for (int h = 0; h < H; h++) {
                const int T = pos + i + 1, kvh = h / group;
                const float *qi = q + ((size_t)i * H + h) * hd;
                float mx = -INFINITY;
                for (int t = 0; t < T; t++) {
                    const float *kt = kc + (size_t)t * KVD + (size_t)kvh * hd;
                    float d = 0.0f;
                    for (int j = 0; j < hd; j++) d += qi[j] * kt[j];
                    p[t] = d * scale;
                    if (p[t] > mx) mx = p[t];
                }
                double sum = 0.0;
                for (int t = 0; t < T; t++) sum += (p[t] = expf(p[t] - mx));
                const float inv = (float)(1.0 / sum);
                for (int j = 0; j < hd; j++) acc[j] = 0.0;
                for (int t = 0; t < T; t++) {
                    const float *vt = vc + (size_t)t * KVD + (size_t)kvh * hd;
                    const float pt = p[t] * inv;
                    for (int j = 0; j < hd; j++) acc[j] += pt * vt[j];
                }
                float *o = out + ((size_t)i * H + h) * hd;
                for (int j = 0; j < hd; j++) o[j] = (float)acc[j];
            }
        free(p);
        free(acc);
    }
}

static void add_inplace(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

const float *infer_forward(const InferModel *im, InferState *s, const int32_t *tokens, int n, int all_logits) {
    const LlamaConfig *c = &im->cfg;
    CHECK(n > 0 && n <= s->max_batch, "infer_forward: %d tokens at once (batch limit %d)", n, s->max_batch);
    CHECK(s->pos + n <= s->max_T, "context full: %d tokens in the cache + %d new > context %d", s->pos, n, s->max_T);
    const int D = c->hidden_size, F = c->intermediate_size, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
    const size_t KVD = (size_t)KV * hd, QD = (size_t)H * hd;
    embedding_forward_cpu(s->x, tokens, im->wte, n, c->vocab_size, D);
    for (int l = 0; l < c->n_layers; l++) {
        const InferLayer *L = &im->layers[l];
        float *kc = s->k + (size_t)l * s->max_T * KVD, *vc = s->v + (size_t)l * s->max_T * KVD;
        rmsnorm_forward_cpu(s->ln, NULL, s->x, L->ln1, n, D, c->rms_norm_eps);
        quant_linear_forward(s->q, s->ln, &L->wq, L->bq, n);
        quant_linear_forward(s->kn, s->ln, &L->wk, L->bk, n);
        quant_linear_forward(s->vn, s->ln, &L->wv, L->bv, n);
        rope_forward_cpu(s->q, s->q, s->inv_freq, 1, n, H, hd, s->pos);
        rope_forward_cpu(s->kn, s->kn, s->inv_freq, 1, n, KV, hd, s->pos);
        memcpy(kc + (size_t)s->pos * KVD, s->kn, (size_t)n * KVD * sizeof(float));
        memcpy(vc + (size_t)s->pos * KVD, s->vn, (size_t)n * KVD * sizeof(float));
        attention_cached(s->att, s->q, kc, vc, n, s->pos, H, KV, hd, s->max_T);
        quant_linear_forward(s->tmp, s->att, &L->wo, NULL, n);
        add_inplace(s->x, s->tmp, (size_t)n * D);
        rmsnorm_forward_cpu(s->ln, NULL, s->x, L->ln2, n, D, c->rms_norm_eps);
        quant_linear_forward(s->gate, s->ln, &L->wg, NULL, n);
        quant_linear_forward(s->up, s->ln, &L->wu, NULL, n);
        swiglu_forward_cpu(s->gate, s->gate, s->up, (size_t)n * F);
        quant_linear_forward(s->tmp, s->gate, &L->wd, NULL, n);
        add_inplace(s->x, s->tmp, (size_t)n * D);
    }
    s->pos += n;
    // Only the rows whose logits are wanted go through the final norm and the lm_head.
    const int first = all_logits ? 0 : n - 1, rows = n - first;
    rmsnorm_forward_cpu(s->ln, NULL, s->x + (size_t)first * D, im->norm_f, rows, D, c->rms_norm_eps);
    quant_linear_forward(s->logits, s->ln, &im->lm_head, NULL, rows);
    (void)QD;
    return s->logits;
}
