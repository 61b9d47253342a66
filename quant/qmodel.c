// Quantized model save/load. A linear `X.weight` of mode m is stored as
//   X.weight        int8: I8 [M,K] | int4, 8da4w: U8 [M,K/2] (two codes a byte, low nibble
//                   first; int4 codes 0..15, 8da4w codes q+8) | fp8: F8_E4M3 [M,K]
//   X.weight_scale  int4: BF16 [M,K/G] | int8, fp8: F32 [M] | 8da4w: F32 [M,K/G]
//   X.weight_zero   int4 only: BF16 [M,K/G] (tinygemm float-domain zero point)
// A linear is quantized exactly when X.weight_scale exists. Norms and biases are F32; the
// embedding and unquantized linears are F32, or BF16 / F16 when the model held them so (a
// mapped bf16 source: written as stored, exact), and are mapped in place again on load.
// A quantized lm_head is stored even when tied to the embedding.
#include "qmodel.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../model/params.h"
#include "../model/safetensors.h"

// Builds the table including lm_head even for tied configs (it may be stored quantized).
static void full_table(ParamTable *t, const LlamaConfig *c, int *lm_idx) {
    LlamaConfig u = *c;
    u.tie_word_embeddings = 0;
    param_table_init(t, &u);
    *lm_idx = param_table_find(t, "lm_head.weight");
}

typedef struct {
    StWriteTensor *t;
    int n, cap;
    void **bufs;
    int nb;
} WList;

static StWriteTensor *wadd(WList *w, const char *name, StDtype dt, int64_t d0, int64_t d1, int ndim, const void *data) {
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->t = ao_realloc(w->t, (size_t)w->cap * sizeof *w->t);
        w->bufs = ao_realloc(w->bufs, (size_t)w->cap * 3 * sizeof *w->bufs);
    }
    StWriteTensor *e = &w->t[w->n++];
    memset(e, 0, sizeof *e);
    e->name = ao_strdup(name);
    w->bufs[w->nb++] = (void *)e->name;
    e->dtype = dt;
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->data = data;
    return e;
}

static uint16_t *to_bf16(WList *w, const float *x, size_t n) {
    uint16_t *h = ao_malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(x[i]);
    w->bufs[w->nb++] = h;
    return h;
}

static void copy_file(const char *src_dir, const char *dst_dir, const char *name) {
    char *s = path_join(src_dir, name), *d = path_join(dst_dir, name);
    if (file_exists(s)) {
        char *buf, err[512];
        size_t len;
        CHECK(read_file_all(s, (size_t)1 << 30, &buf, &len, err, sizeof err), "%s", err);
        AtomicFile af;
        CHECK(atomic_open(&af, d, err, sizeof err), "%s", err);
        CHECK(fwrite(buf, 1, len, af.f) == len, "writing %s failed", d);
        CHECK(atomic_close(&af, err, sizeof err), "%s", err);
        free(buf);
    }
    free(s);
    free(d);
}

void qmodel_save(const InferModel *im, const char *tokenizer_src, const char *dir) {
    CHECK(make_dirs(dir), "cannot create directory %s", dir);
    char err[1024];
    char *cpath = path_join(dir, "config.json");
    LlamaConfig c = im->cfg;
    snprintf(c.dtype, sizeof c.dtype, "float32");
    CHECK(config_save(&c, cpath, err, sizeof err), "%s", err);
    free(cpath);
    ParamTable tab;
    int lm_idx;
    full_table(&tab, &im->cfg, &lm_idx);
    WList w = {0};
    w.cap = tab.n * 3 + 8;
    w.t = ao_malloc((size_t)w.cap * sizeof *w.t);
    w.bufs = ao_malloc((size_t)w.cap * 3 * sizeof *w.bufs);
    for (int i = 0; i < tab.n; i++) {
        const ParamInfo *p = &tab.p[i];
        float **vec;
        QTensor *lin;
        infer_model_slot((InferModel *)im, p, &vec, &lin);
        if (vec == &((InferModel *)im)->wte && im->wte_dtype != QW_F32) {
            wadd(&w, p->hf_name, im->wte_dtype == QW_BF16 ? ST_BF16 : ST_F16, p->shape[0], p->shape[1], 2, im->wte16);
            continue;
        }
        if (vec) {
            if (*vec) wadd(&w, p->hf_name, ST_F32, p->shape[0], p->shape[1], p->ndim, *vec);
            continue;
        }
        CHECK(lin, "qmodel_save: no slot for %s", p->hf_name);
        if (i == lm_idx && im->cfg.tie_word_embeddings && lin->mode == QUANT_NONE) continue;  // tied: the embedding
        const int M = lin->rows, K = lin->cols;
        char nm[160];
        switch (lin->mode) {
            case QUANT_NONE:
                if (lin->wdtype == QW_F32) wadd(&w, p->hf_name, ST_F32, M, K, 2, lin->w);
                else wadd(&w, p->hf_name, lin->wdtype == QW_BF16 ? ST_BF16 : ST_F16, M, K, 2, lin->w16);
                break;
            case QUANT_INT8: wadd(&w, p->hf_name, ST_I8, M, K, 2, lin->q); break;
            case QUANT_FP8: wadd(&w, p->hf_name, ST_F8_E4M3, M, K, 2, lin->q); break;
            default: wadd(&w, p->hf_name, ST_U8, M, K / 2, 2, lin->q); break;
        }
        if (lin->mode == QUANT_NONE) continue;
        size_t ns = quant_n_scales(lin->mode, M, K, lin->group);
        int64_t s1 = lin->group ? K / lin->group : 1;
        int sdim = lin->group ? 2 : 1;
        snprintf(nm, sizeof nm, "%s_scale", p->hf_name);
        if (lin->mode == QUANT_INT4) {
            wadd(&w, nm, ST_BF16, M, s1, 2, to_bf16(&w, lin->scale, ns));
            snprintf(nm, sizeof nm, "%s_zero", p->hf_name);
            wadd(&w, nm, ST_BF16, M, s1, 2, to_bf16(&w, lin->zero, ns));
        } else wadd(&w, nm, ST_F32, M, s1, sdim, lin->scale);
    }
    char group[16];
    snprintf(group, sizeof group, "%d", im->group);
    // A GGUF source has no tokenizer files to copy: its path is recorded instead.
    char *gguf = tokenizer_src && !dir_exists(tokenizer_src) ? realpath(tokenizer_src, NULL) : NULL;
    const char *mk[8] = {"format", "quant_format", "quant_version", "quant_mode", "group_size", "producer"};
    const char *mv[8] = {"pt", QMODEL_FORMAT, QMODEL_VERSION, quant_mode_name(im->mode), group, "llama.ao infer_llama"};
    int nm = 6;
    if (im->mode == QUANT_INT4) mk[nm] = QMODEL_INT4_QPARAMS, mv[nm++] = im->hqq ? "hqq" : "tinygemm";
    if (gguf) mk[nm] = "tokenizer_gguf", mv[nm++] = gguf;
    char *spath = path_join(dir, "model.safetensors");
    CHECK(st_write(spath, w.t, w.n, mk, mv, nm, err, sizeof err), "%s", err);
    free(gguf);
    free(spath);
    for (int i = 0; i < w.nb; i++) free(w.bufs[i]);
    free(w.bufs);
    free(w.t);
    param_table_free(&tab);
    if (tokenizer_src && dir_exists(tokenizer_src)) {
        copy_file(tokenizer_src, dir, "tokenizer.json");
        copy_file(tokenizer_src, dir, "tokenizer_config.json");
        copy_file(tokenizer_src, dir, "tokenizer.model");
    }
}

int qmodel_is_quantized_dir(const char *dir) {
    char *spath = path_join(dir, "model.safetensors");
    int yes = 0;
    if (file_exists(spath)) {
        SafeTensors st;
        char err[512];
        if (st_open(&st, spath, err, sizeof err)) {
            const char *f = st_meta(&st, "quant_format");
            yes = f && strcmp(f, QMODEL_FORMAT) == 0;
            st_close(&st);
        }
    }
    free(spath);
    return yes;
}

static const StTensor *want(const SafeTensors *st, const char *path, const char *name, StDtype dt, int ndim,
                            int64_t d0, int64_t d1, int *used) {
    const StTensor *t = st_find(st, name);
    CHECK(t, "%s: tensor %s is missing", path, name);
    CHECK(t->dtype == dt, "%s: %s has dtype %s, expected %s", path, name, st_dtype_name(t->dtype), st_dtype_name(dt));
    CHECK(t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1),
          "%s: %s has the wrong shape (expected [%lld%s%lld])", path, name, (long long)d0, ndim == 2 ? ", " : "",
          ndim == 2 ? (long long)d1 : 0LL);
    (*used)++;
    return t;
}

void qmodel_load(InferModel *im, const char *dir) {
    memset(im, 0, sizeof *im);
    char err[1024];
    CHECK(config_load(&im->cfg, dir, err, sizeof err), "%s", err);
    char *spath = path_join(dir, "model.safetensors");
    // Kept open with the model: the embedding and unquantized linears stay mapped.
    SafeTensors *st = im->mapped = ao_calloc(1, sizeof *im->mapped);
    CHECK(st_open(st, spath, err, sizeof err), "%s", err);
    const char *fmt = st_meta(st, "quant_format"), *ver = st_meta(st, "quant_version");
    const char *mode = st_meta(st, "quant_mode"), *grp = st_meta(st, "group_size");
    const char *qp = st_meta(st, QMODEL_INT4_QPARAMS);
    CHECK(fmt && strcmp(fmt, QMODEL_FORMAT) == 0, "%s: not a llama.ao quantized model (no quant_format metadata)", spath);
    CHECK(ver && strcmp(ver, QMODEL_VERSION) == 0, "%s: quant_version %s is not %s", spath, ver ? ver : "(none)",
          QMODEL_VERSION);
    int m = mode ? quant_mode_from_name(mode) : -1;
    CHECK(m >= 0, "%s: unknown quant_mode \"%s\"", spath, mode ? mode : "(none)");
    char *end = NULL;
    long g = grp ? strtol(grp, &end, 10) : -1;
    CHECK(grp && *end == 0 && (quant_mode_grouped((QuantMode)m) ? quant_group_ok((int)g) : g == 0),
          "%s: group_size \"%s\" does not fit mode %s", spath, grp ? grp : "(none)", mode);
    im->mode = (QuantMode)m;
    im->group = (int)g;
    // Files written before the key existed are int4 with tinygemm's qparams.
    CHECK(!qp || (m == QUANT_INT4 && (!strcmp(qp, "tinygemm") || !strcmp(qp, "hqq"))),
          "%s: %s \"%s\" does not fit mode %s (int4 only: tinygemm or hqq)", spath, QMODEL_INT4_QPARAMS, qp ? qp : "",
          mode);
    im->hqq = qp && !strcmp(qp, "hqq");
    // Weights, scales and zeros are used as stored: one inf or NaN would make every logit NaN.
    for (int i = 0; i < st->n; i++) {
        size_t j = st_first_nonfinite(&st->tensors[i]);
        CHECK(j == st->tensors[i].numel, "%s: tensor %s holds a non-finite value at element %zu; the file is corrupt, "
              "write it again with infer_llama -o", spath, st->tensors[i].name, j);
    }
    im->layers = ao_calloc((size_t)im->cfg.n_layers, sizeof *im->layers);
    ParamTable tab;
    int lm_idx, used = 0;
    full_table(&tab, &im->cfg, &lm_idx);
    for (int i = 0; i < tab.n; i++) {
        const ParamInfo *p = &tab.p[i];
        float **vec;
        QTensor *lin;
        infer_model_slot(im, p, &vec, &lin);
        if (vec) {
            const StTensor *t = st_find(st, p->hf_name);
            CHECK(t, "%s: tensor %s is missing", spath, p->hf_name);
            CHECK(t->ndim == p->ndim && t->numel == p->numel && t->shape[0] == p->shape[0],
                  "%s: %s has the wrong shape", spath, p->hf_name);
            if (vec == &im->wte) {
                CHECK(infer_model_map_tensor(im, NULL, t, 0, 0), "%s: %s is not a float tensor", spath, p->hf_name);
            } else {
                *vec = infer_model_alloc(im, p->numel);
                CHECK(st_to_f32(t, *vec), "%s: %s is not a float tensor", spath, p->hf_name);
            }
            used++;
            continue;
        }
        const int M = (int)p->shape[0], K = (int)p->shape[1];
        char nm[160];
        snprintf(nm, sizeof nm, "%s_scale", p->hf_name);
        const StTensor *ts = st_find(st, nm);
        im->n_linear++;
        if (i == lm_idx && im->cfg.tie_word_embeddings && !st_find(st, p->hf_name)) {
            // tied and kept in float: the embedding itself
            if (im->wte_dtype == QW_F32) quant_wrap_f32(lin, im->wte, M, K);
            else quant_wrap_w16(lin, im->wte_dtype, im->wte16, M, K);
            continue;
        }
        if (!ts) {
            const StTensor *t = st_find(st, p->hf_name);
            StDtype dt = t && (t->dtype == ST_BF16 || t->dtype == ST_F16) ? t->dtype : ST_F32;
            t = want(st, spath, p->hf_name, dt, 2, M, K, &used);
            infer_model_map_tensor(im, lin, t, M, K);
            continue;
        }
        CHECK(im->mode != QUANT_NONE, "%s: %s is quantized but the model's quant_mode is none", spath, nm);
        // The codes' shape is checked against the file before anything of the config's size is
        // allocated: a config.json that claims a larger model gets this error, not an allocation failure.
        const StTensor *tq;
        switch (im->mode) {
            case QUANT_INT8: tq = want(st, spath, p->hf_name, ST_I8, 2, M, K, &used); break;
            case QUANT_FP8: tq = want(st, spath, p->hf_name, ST_F8_E4M3, 2, M, K, &used); break;
            default: tq = want(st, spath, p->hf_name, ST_U8, 2, M, K / 2, &used); break;
        }
        quant_alloc(lin, im->mode, M, K, im->group);
        const int G = lin->group;
        memcpy(lin->q, tq->data, tq->nbytes);
        if (im->mode == QUANT_INT4) {
            want(st, spath, nm, ST_BF16, 2, M, K / G, &used);
            st_to_f32(ts, lin->scale);
            snprintf(nm, sizeof nm, "%s_zero", p->hf_name);
            const StTensor *tz = want(st, spath, nm, ST_BF16, 2, M, K / G, &used);
            st_to_f32(tz, lin->zero);
        } else {
            if (G) want(st, spath, nm, ST_F32, 2, M, K / G, &used);
            else want(st, spath, nm, ST_F32, 1, M, 1, &used);
            memcpy(lin->scale, ts->data, ts->nbytes);
        }
        quant_finish_load(lin);
        im->n_quantized++;
    }
    CHECK(used == st->n, "%s: %d tensors in the file are not part of a %s model", spath, st->n - used,
          config_arch_name(im->cfg.arch));
    param_table_free(&tab);
    free(spath);
}
