#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "safetensors.h"

void model_init(LlamaModel *m, const LlamaConfig *c) {
    memset(m, 0, sizeof *m);
    m->cfg = *c;
    param_table_init(&m->tab, c);
    m->params = ao_calloc(m->tab.total, sizeof(float));
    m->layers = ao_calloc((size_t)c->n_layers, sizeof *m->layers);
    LlamaWeights_point(&m->w, m->params, &m->tab, &m->cfg, m->layers);
}

void model_free(LlamaModel *m) {
    free(m->params);
    free(m->layers);
    param_table_free(&m->tab);
    memset(m, 0, sizeof *m);
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void model_init_random(LlamaModel *m, uint64_t seed) {
    const float std = m->cfg.initializer_range > 0 ? m->cfg.initializer_range : 0.02f;
    // Each block of 64k elements has its own stream seeded by (seed, tensor, block), so
    // the result does not depend on the thread count.
    const size_t BLK = 65536;
    for (int i = 0; i < m->tab.n; i++) {
        const ParamInfo *p = &m->tab.p[i];
        float *x = m->params + p->offset;
        const int is_norm = strstr(p->hf_name, "norm") != NULL;
        const size_t nblk = (p->numel + BLK - 1) / BLK;
#pragma omp parallel for schedule(static)
        for (size_t b = 0; b < nblk; b++) {
            uint64_t s = seed ^ (0xA5A5A5A5ull * (uint64_t)(i + 1)) ^ (0x9E3779B97F4A7C15ull * (uint64_t)(b + 1));
            const size_t end = (b + 1) * BLK < p->numel ? (b + 1) * BLK : p->numel;
            for (size_t j = b * BLK; j < end; j++) {
                if (p->kind == PARAM_VECTOR) { x[j] = is_norm ? 1.0f : 0.0f; continue; }
                // Box-Muller from two 53-bit uniforms
                double u1 = ((splitmix(&s) >> 11) + 1) * (1.0 / 9007199254740993.0);
                double u2 = (splitmix(&s) >> 11) * (1.0 / 9007199254740992.0);
                x[j] = (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
            }
        }
    }
}

// Tensors a checkpoint may carry that are not parameters.
static int ignorable(const LlamaConfig *c, const char *name) {
    if (c->tie_word_embeddings && strcmp(name, "lm_head.weight") == 0) return 1;
    const char *suffix = "rotary_emb.inv_freq";
    size_t L = strlen(name), S = strlen(suffix);
    return L >= S && strcmp(name + L - S, suffix) == 0;
}

int model_check_weights(const LlamaConfig *c, const ParamTable *tab, const SafeTensors *st, char *err, size_t n) {
    // Missing tensors first: the message lists up to a few names.
    char missing[512] = "";
    int n_missing = 0;
    for (int i = 0; i < tab->n; i++) {
        if (!st_find(st, tab->p[i].hf_name)) {
            if (n_missing < 4) {
                size_t L = strlen(missing);
                snprintf(missing + L, sizeof missing - L, "%s%s", n_missing ? ", " : "", tab->p[i].hf_name);
            }
            n_missing++;
        }
    }
    if (n_missing) {
        snprintf(err, n, "checkpoint is missing %d expected tensor%s: %s%s", n_missing, n_missing > 1 ? "s" : "", missing,
                 n_missing > 4 ? ", ..." : "");
        return 0;
    }
    for (int i = 0; i < st->n; i++) {
        const char *name = st->tensors[i].name;
        if (param_table_find(tab, name) < 0 && !ignorable(c, name)) {
            snprintf(err, n, "checkpoint has an unexpected tensor \"%s\" (not part of a %s model with this config.json)",
                     name, config_arch_name(c->arch));
            return 0;
        }
    }
    for (int i = 0; i < tab->n; i++) {
        const ParamInfo *p = &tab->p[i];
        const StTensor *t = st_find(st, p->hf_name);
        int shape_ok = t->ndim == p->ndim && t->shape[0] == p->shape[0] && (p->ndim == 1 || t->shape[1] == p->shape[1]);
        if (!shape_ok) {
            char got[128] = "";
            for (int d = 0; d < t->ndim; d++) {
                size_t L = strlen(got);
                snprintf(got + L, sizeof got - L, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            }
            if (p->ndim == 1) snprintf(err, n, "tensor \"%s\" has shape [%s], config.json implies [%lld]", p->hf_name, got, (long long)p->shape[0]);
            else snprintf(err, n, "tensor \"%s\" has shape [%s], config.json implies [%lld, %lld]", p->hf_name, got,
                          (long long)p->shape[0], (long long)p->shape[1]);
            return 0;
        }
        if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) {
            snprintf(err, n, "tensor \"%s\" has dtype %s; weights must be F32, BF16 or F16", p->hf_name, st_dtype_name(t->dtype));
            return 0;
        }
        size_t j = st_first_nonfinite(t);
        if (j < t->numel) {
            snprintf(err, n, "tensor \"%s\" holds a non-finite value at element %zu", p->hf_name, j);
            return 0;
        }
    }
    return 1;
}

// Converts weights that model_check_weights accepted.
static void load_checked(LlamaModel *m, const SafeTensors *st) {
    for (int i = 0; i < m->tab.n; i++) {
        const ParamInfo *p = &m->tab.p[i];
        st_to_f32(st_find(st, p->hf_name), m->params + p->offset);  // float dtypes: checked
    }
}

int model_load_weights(LlamaModel *m, const SafeTensors *st, char *err, size_t n) {
    if (!model_check_weights(&m->cfg, &m->tab, st, err, n)) return 0;
    load_checked(m, st);
    return 1;
}

int model_load_hf(LlamaModel *m, const char *dir, char *err, size_t n) {
    memset(m, 0, sizeof *m);
    LlamaConfig c;
    if (!config_load(&c, dir, err, n)) return 0;
    SafeTensors st;
    if (!st_open_model(&st, dir, err, n)) return 0;
    // The weights are checked before the config's sizes are allocated: a config.json claiming
    // a far bigger model than the checkpoint gets the tensors named, not "out of memory".
    ParamTable tab;
    param_table_init(&tab, &c);
    int ok = model_check_weights(&c, &tab, &st, err, n);
    param_table_free(&tab);
    if (ok) {
        model_init(m, &c);
        load_checked(m, &st);
    }
    st_close(&st);
    return ok;
}

int model_save_hf(const LlamaModel *m, const char *dir, int bf16, char *err, size_t n) {
    if (!make_dirs(dir)) { snprintf(err, n, "cannot create directory %s", dir); return 0; }
    LlamaConfig c = m->cfg;
    snprintf(c.dtype, sizeof c.dtype, "%s", bf16 ? "bfloat16" : "float32");
    char *cpath = path_join(dir, "config.json");
    int ok = config_save(&c, cpath, err, n);
    free(cpath);
    if (!ok) return 0;
    StWriteTensor *t = ao_calloc((size_t)m->tab.n, sizeof *t);
    uint16_t *half = bf16 ? ao_malloc(m->tab.total * sizeof(uint16_t)) : NULL;
    if (half)
        for (size_t i = 0; i < m->tab.total; i++) half[i] = f32_to_bf16(m->params[i]);
    for (int i = 0; i < m->tab.n; i++) {
        const ParamInfo *p = &m->tab.p[i];
        t[i].name = p->hf_name;
        t[i].dtype = bf16 ? ST_BF16 : ST_F32;
        t[i].ndim = p->ndim;
        t[i].shape[0] = p->shape[0];
        t[i].shape[1] = p->shape[1];
        t[i].data = bf16 ? (const void *)(half + p->offset) : (const void *)(m->params + p->offset);
    }
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    char *spath = path_join(dir, "model.safetensors");
    ok = st_write(spath, t, m->tab.n, mk, mv, 1, err, n);
    free(spath);
    free(half);
    free(t);
    return ok;
}
