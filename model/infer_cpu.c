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
#include <sys/mman.h>
#include <unistd.h>

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

// Counts one linear and says whether the mode quantizes it; a shape the mode cannot take is
// kept in float exactly as torchao skips it, and the reason is recorded for the user.
static int will_quantize(InferModel *im, int rows, int cols, const char *name) {
    im->n_linear++;
    char why[160];
    if (im->mode == QUANT_NONE) return 0;
    if (quant_compatible(im->mode, rows, cols, im->group, why, sizeof why)) return 1;
    size_t l = strlen(im->skipped);
    if (l + 1 < sizeof im->skipped) snprintf(im->skipped + l, sizeof im->skipped - l, "%s%s (%s)", l ? "; " : "", name, why);
    return 0;
}

// Quantizes one linear (or keeps it fp32 when the mode cannot take its shape, as torchao does).
static void make_linear(InferModel *im, QTensor *t, const float *w, int rows, int cols, int copy, const char *name) {
    if (will_quantize(im, rows, cols, name)) {
        quant_quantize(t, im->mode, w, rows, cols, im->group);
        im->n_quantized++;
        return;
    }
    quant_wrap_f32(t, keep(im, w, (size_t)rows * (size_t)cols, copy), rows, cols);
}

void infer_model_build(InferModel *im, LlamaModel *m, QuantMode mode, int group) {
    memset(im, 0, sizeof *im);
    const LlamaConfig *c = &m->cfg;
    im->cfg = *c;
    im->mode = mode;
    im->group = quant_mode_grouped(mode) ? group : 0;
    im->hqq = mode == QUANT_INT4 && quant_get_int4_hqq();
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

// ---- mapped loading ------------------------------------------------------------------------
void infer_model_slot(InferModel *im, const ParamInfo *p, float ***vec, QTensor **lin) {
    *vec = NULL;
    *lin = NULL;
    const char *f = p->field;
    if (p->layer < 0) {
        if (!strcmp(f, "wte")) *vec = &im->wte;
        else if (!strcmp(f, "norm_f")) *vec = &im->norm_f;
        else if (!strcmp(f, "lm_head")) *lin = &im->lm_head;
        return;
    }
    InferLayer *L = &im->layers[p->layer];
    if (!strcmp(f, "ln1")) *vec = &L->ln1;
    else if (!strcmp(f, "ln2")) *vec = &L->ln2;
    else if (!strcmp(f, "bq")) *vec = &L->bq;
    else if (!strcmp(f, "bk")) *vec = &L->bk;
    else if (!strcmp(f, "bv")) *vec = &L->bv;
#define QS_(n) else if (!strcmp(f, #n)) *lin = &L->n;
    INFER_LAYER_LINEARS(QS_)
#undef QS_
}

int infer_model_map_tensor(InferModel *im, QTensor *lin, const StTensor *t, int rows, int cols) {
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) return 0;
    const void *p = t->data;
    if ((uintptr_t)p % st_dtype_size(t->dtype) != 0) {  // safetensors does not promise alignment
        void *c = infer_model_alloc(im, (t->nbytes + sizeof(float) - 1) / sizeof(float));
        memcpy(c, p, t->nbytes);
        p = c;
    }
    const QWeightDtype dt = t->dtype == ST_F32 ? QW_F32 : t->dtype == ST_BF16 ? QW_BF16 : QW_F16;
    if (!lin) {
        im->wte_dtype = dt;
        im->wte = dt == QW_F32 ? (float *)p : NULL;
        im->wte16 = dt == QW_F32 ? NULL : p;
    } else if (dt == QW_F32) {
        quant_wrap_f32(lin, (float *)p, rows, cols);  // read only: the kernels never write weights
    } else {
        quant_wrap_w16(lin, dt, p, rows, cols);
    }
    return 1;
}

// The embedding as a NONE QTensor (for the tied lm_head and for row lookups).
static void embedding_view(const InferModel *im, QTensor *t) {
    const int V = im->cfg.vocab_size, D = im->cfg.hidden_size;
    if (im->wte_dtype == QW_F32) quant_wrap_f32(t, im->wte, V, D);
    else quant_wrap_w16(t, im->wte_dtype, im->wte16, V, D);
}

// Drops the mapped pages lying wholly inside [p, p+n) from this process: a quantized tensor's
// source is never read again, and its clean file pages would otherwise stay in the RSS. The
// mapping is private and read-only, so a later access would only read the file again.
static void release_pages(const void *p, size_t n) {
    const long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1), e = ((uintptr_t)p + n) & ~((uintptr_t)pg - 1);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);  // advisory: a failure only keeps the pages
}

// One linear of the mapped loader: quantized from an fp32 expansion of its own tensor (freed at
// once), or left in the file. src is the table's tensor, or the embedding for a tied lm_head.
static void load_linear(InferModel *im, QTensor *lin, const StTensor *src, int rows, int cols, const char *name) {
    if (will_quantize(im, rows, cols, name)) {
        float *w = ao_malloc((size_t)rows * (size_t)cols * sizeof(float));
        if (src) st_to_f32(src, w);
        else {
            QTensor e;
            embedding_view(im, &e);
            quant_dequantize(&e, w);
        }
        quant_quantize(lin, im->mode, w, rows, cols, im->group);
        free(w);
        if (src) release_pages(src->data, src->nbytes);
        im->n_quantized++;
    } else if (src) {
        CHECK(infer_model_map_tensor(im, lin, src, rows, cols), "%s: not a float tensor", name);
    } else {
        embedding_view(im, lin);  // tied and unquantized: the embedding's own storage
    }
}

int infer_model_load_hf(InferModel *im, const char *dir, QuantMode mode, int group, char *err, size_t n) {
    memset(im, 0, sizeof *im);
    CHECK(!quant_mode_grouped(mode) || quant_group_ok(group), "group size %d is not one of 32, 64, 128, 256", group);
    LlamaConfig c;
    if (!config_load(&c, dir, err, n)) return 0;
    SafeTensors *st = ao_calloc(1, sizeof *st);
    if (!st_open_model(st, dir, err, n)) {
        free(st);
        return 0;
    }
    ParamTable tab;
    param_table_init(&tab, &c);
    if (!model_check_weights(&c, &tab, st, err, n)) {
        param_table_free(&tab);
        st_close(st);
        free(st);
        return 0;
    }
    im->cfg = c;
    im->mode = mode;
    im->group = quant_mode_grouped(mode) ? group : 0;
    im->hqq = mode == QUANT_INT4 && quant_get_int4_hqq();
    im->mapped = st;
    im->layers = ao_calloc((size_t)c.n_layers, sizeof *im->layers);
    for (int i = 0; i < tab.n; i++) {
        const ParamInfo *p = &tab.p[i];
        const StTensor *t = st_find(st, p->hf_name);
        float **vec;
        QTensor *lin;
        infer_model_slot(im, p, &vec, &lin);
        CHECK(vec || lin, "infer_model_load_hf: no slot for %s", p->hf_name);
        if (vec == &im->wte) {
            CHECK(infer_model_map_tensor(im, NULL, t, 0, 0), "%s: not a float tensor", p->hf_name);
        } else if (vec) {
            *vec = infer_model_alloc(im, p->numel);
            st_to_f32(t, *vec);
        } else {
            char nm[64];
            if (p->layer >= 0) snprintf(nm, sizeof nm, "layers.%d.%s", p->layer, p->field);
            else snprintf(nm, sizeof nm, "%s", p->field);
            load_linear(im, lin, t, (int)p->shape[0], (int)p->shape[1], nm);
        }
    }
    // A tied lm_head is not in the table: it comes from the embedding, now in place.
    if (c.tie_word_embeddings) load_linear(im, &im->lm_head, NULL, c.vocab_size, c.hidden_size, "lm_head");
    param_table_free(&tab);
    return 1;
}

static size_t qt_bytes(const QTensor *t) {
    if (t->mode == QUANT_NONE) return quant_none_bytes(t);
    size_t ns = quant_n_scales(t->mode, t->rows, t->cols, t->group);
    return quant_q_bytes(t->mode, t->rows, t->cols) + ns * sizeof(float) * (t->zero ? 2 : 1) +
           (t->wsum ? ns * sizeof(int32_t) : 0);
}

size_t infer_model_bytes(const InferModel *im) {
    const LlamaConfig *c = &im->cfg;
    QTensor e;
    embedding_view(im, &e);
    size_t b = quant_none_bytes(&e) + (size_t)c->hidden_size * sizeof(float);
    const QTensor *h = &im->lm_head;
    int tied_f = h->mode == QUANT_NONE && h->wdtype == e.wdtype && (h->wdtype == QW_F32 ? h->w == e.w : h->w16 == e.w16);
    if (!tied_f) b += qt_bytes(h);  // a tied float head is the embedding
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
    if (!im->layers && !im->allocs && !im->has_base && !im->mapped) return;
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
    if (im->mapped) st_close(im->mapped);
    free(im->mapped);
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

int infer_logits_argmax(const float *logits, int V, int *bad) {
    int best = 0;
    *bad = -1;
    for (int i = 0; i < V; i++) {
        const float x = logits[i];
        if ((x != x || x == INFINITY) && *bad < 0) *bad = i;
        if (x > logits[best]) best = i;
    }
    return best;
}

const float *infer_forward(const InferModel *im, InferState *s, const int32_t *tokens, int n, int all_logits) {
    const LlamaConfig *c = &im->cfg;
    CHECK(n > 0 && n <= s->max_batch, "infer_forward: %d tokens at once (batch limit %d)", n, s->max_batch);
    CHECK(s->pos + n <= s->max_T, "context full: %d tokens in the cache + %d new > context %d", s->pos, n, s->max_T);
    const int D = c->hidden_size, F = c->intermediate_size, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
    const size_t KVD = (size_t)KV * hd, QD = (size_t)H * hd;
    if (im->wte_dtype == QW_F32) embedding_forward_cpu(s->x, tokens, im->wte, n, c->vocab_size, D);
    else {  // 16-bit rows expanded exactly: the values the fp32 copy would hold
        for (int i = 0; i < n; i++)
            CHECK(tokens[i] >= 0 && tokens[i] < c->vocab_size,
                  "embedding: token id %d at position %d is outside the vocabulary [0, %d)", tokens[i], i, c->vocab_size);
        QTensor e;
        embedding_view(im, &e);
        for (int i = 0; i < n; i++) quant_none_row(&e, tokens[i], s->x + (size_t)i * D);
    }
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
