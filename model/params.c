#include "params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

#define PARAM_ALIGN 16

static void add_param(ParamTable *t, int *cap, const char *field, const char *hf, int layer, int ndim, int64_t d0,
                      int64_t d1) {
    if (t->n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        t->p = ao_realloc(t->p, (size_t)*cap * sizeof *t->p);
    }
    ParamInfo *p = &t->p[t->n++];
    memset(p, 0, sizeof *p);
    if (layer < 0) snprintf(p->hf_name, sizeof p->hf_name, "%s", hf);
    else snprintf(p->hf_name, sizeof p->hf_name, "model.layers.%d.%s", layer, hf);
    p->field = field;
    p->layer = layer;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim == 2 ? d1 : 1;
    p->numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    p->kind = ndim == 2 ? PARAM_MATRIX : PARAM_VECTOR;
    t->total = (t->total + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
    p->offset = t->total;
    t->total += p->numel;
}

#define PARAM_ADD_(L, field, hf, ndim, d0, d1, present) \
    if (present) add_param(t, &cap, #field, hf, L, ndim, d0, d1);

void param_table_init(ParamTable *t, const LlamaConfig *c) {
    memset(t, 0, sizeof *t);
    int cap = 0;
    LLAMA_GLOBAL_PARAMS(PARAM_ADD_, -1)
    for (int l = 0; l < c->n_layers; l++) { LLAMA_LAYER_PARAMS(PARAM_ADD_, l) }
    t->total = (t->total + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
}

void param_table_free(ParamTable *t) {
    free(t->p);
    memset(t, 0, sizeof *t);
}

int param_table_find(const ParamTable *t, const char *hf_name) {
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->p[i].hf_name, hf_name) == 0) return i;
    return -1;
}

int param_table_contiguous(const ParamTable *t, int i, int k) {
    for (int j = i + 1; j < i + k; j++)
        if (j >= t->n || t->p[j].offset != t->p[j - 1].offset + t->p[j - 1].numel) return 0;
    return 1;
}
