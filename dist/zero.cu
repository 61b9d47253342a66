#include "zero.cuh"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

// The tensor whose [offset, offset + numel) holds x, or the first one starting after x (x in
// padding); tab->n when none.
static int tensor_at(const ParamTable *tab, size_t x) {
    for (int i = 0; i < tab->n; i++)
        if (x < tab->p[i].offset + tab->p[i].numel) return i;
    return tab->n;
}

// A legal cut at or below x: the start of the tensor holding x, plus whole ZERO_ALIGN units;
// a point in padding moves up to the next tensor's start (or the end).
static size_t legal_cut(const ParamTable *tab, size_t x) {
    int t = tensor_at(tab, x);
    if (t == tab->n) return tab->total;
    const ParamInfo *p = &tab->p[t];
    if (x <= p->offset) return p->offset;
    return p->offset + (x - p->offset) / ZERO_ALIGN * ZERO_ALIGN;
}

int zero_pieces(const ParamTable *tab, size_t begin, size_t end, ZeroPiece *out) {
    int n = 0;
    for (int i = 0; i < tab->n; i++) {
        const ParamInfo *p = &tab->p[i];
        size_t lo = begin > p->offset ? begin : p->offset, hi = end < p->offset + p->numel ? end : p->offset + p->numel;
        if (lo >= hi) continue;
        CHECK((lo - p->offset) % ZERO_ALIGN == 0 && (hi == p->offset + p->numel || (hi - p->offset) % ZERO_ALIGN == 0),
              "shard range [%zu, %zu) cuts %s at element %zu or %zu, not a multiple of %d", begin, end, p->hf_name,
              lo - p->offset, hi - p->offset, ZERO_ALIGN);
        if (out) out[n] = ZeroPiece{i, lo - p->offset, hi - lo, lo};
        n++;
    }
    return n;
}

void zero_plan_init(ZeroPlan *z, const ParamTable *tab, int n_layers, int level, int rank, int world) {
    memset(z, 0, sizeof *z);
    CHECK(level >= 0 && level <= 3, "ZeRO level %d: expected 0, 1, 2 or 3", level);
    CHECK(world >= 1 && rank >= 0 && rank < world, "ZeRO plan: rank %d of world %d", rank, world);
    CHECK(level > 0 || world == 1, "an unsharded plan (level 0) is for one process, not %d", world);
    z->level = level;
    z->rank = rank;
    z->world = world;
    z->total = tab->total;
    z->bounds = (size_t *)ao_calloc((size_t)world + 1, sizeof(size_t));
    z->bounds[world] = tab->total;
    for (int r = 1; r < world; r++) {
        // r/world of the way through, computed without overflow for any realistic size
        size_t ideal = (size_t)((unsigned __int128)tab->total * (unsigned)r / (unsigned)world);
        size_t cut = legal_cut(tab, ideal);
        z->bounds[r] = cut > z->bounds[r - 1] ? cut : z->bounds[r - 1];
    }
    z->begin = z->bounds[rank];
    z->end = z->bounds[rank + 1];
    z->n_pieces = zero_pieces(tab, z->begin, z->end, NULL);
    z->pieces = (ZeroPiece *)ao_calloc((size_t)(z->n_pieces ? z->n_pieces : 1), sizeof(ZeroPiece));
    zero_pieces(tab, z->begin, z->end, z->pieces);

    // buckets: each layer's tensors are adjacent in the table (globals first, then layer by layer)
    z->n_layers = n_layers;
    z->bucket_lo = (size_t *)ao_calloc((size_t)n_layers + 1, sizeof(size_t));
    z->bucket_hi = (size_t *)ao_calloc((size_t)n_layers + 1, sizeof(size_t));
    size_t *first = (size_t *)ao_malloc(((size_t)n_layers + 1) * sizeof(size_t));
    for (int l = 0; l <= n_layers; l++) first[l] = tab->total;
    for (int i = tab->n - 1; i >= 0; i--) {
        const ParamInfo *p = &tab->p[i];
        CHECK(p->layer < n_layers, "ZeRO plan: tensor %s of layer %d in a %d-layer model", p->hf_name, p->layer, n_layers);
        if (p->layer >= 0) first[p->layer] = p->offset;
        else CHECK(i == 0 || tab->p[i - 1].layer < 0, "ZeRO plan: global tensor %s after a layer's", p->hf_name);
    }
    for (int l = 0; l < n_layers; l++) {
        z->bucket_lo[l] = first[l];
        z->bucket_hi[l] = l + 1 < n_layers ? first[l + 1] : tab->total;
        CHECK(z->bucket_lo[l] <= z->bucket_hi[l], "ZeRO plan: layer %d's tensors are not in order", l);
    }
    z->bucket_lo[n_layers] = 0;
    z->bucket_hi[n_layers] = n_layers ? first[0] : tab->total;
    free(first);
}

void zero_plan_free(ZeroPlan *z) {
    free(z->bounds);
    free(z->pieces);
    free(z->bucket_lo);
    free(z->bucket_hi);
    memset(z, 0, sizeof *z);
}

LowbitLayout zero_piece_layout(LowbitFormat want, size_t tensor_numel, size_t n) {
    CHECK(n <= tensor_numel, "optimizer piece of %zu elements in a tensor of %zu", n, tensor_numel);
    // the whole tensor's format (m, v, m scales, v scales, each 16-byte aligned) over n elements
    return lowbit_layout_of(lowbit_format_for(want, tensor_numel, LOWBIT_MASTER_F32), n);
}

size_t zero3_layer_buf_elems(const ZeroPlan *z) {
    size_t n = 0;
    for (int l = 0; l < z->n_layers; l++) {
        const size_t e = zero3_buf_index(z, l, z->bucket_hi[l]);
        n = e > n ? e : n;
    }
    return n;
}

size_t zero3_global_buf_elems(const ZeroPlan *z) { return zero3_buf_index(z, z->n_layers, z->bucket_hi[z->n_layers]); }
