// GGUF reader (spec: ggml/docs/gguf.md). Layout, little-endian:
//   "GGUF" | u32 version (2, 3) | u64 n_tensors | u64 n_kv
//   n_kv x  { string key | u32 type | value }        string = u64 length + bytes
//            array value = u32 element type + u64 count + elements (no nested arrays here)
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (default 32) | data section (tensor offsets relative to it)
// Every read goes through Rd, which refuses to pass the end of the mapping.
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "gguf_quants.h"

typedef struct {
    const uint8_t *p, *end;
    int bad;
    char *err;
    size_t errlen;
    const char *path;
} Rd;

#define RFAIL(r, ...)                                                       \
    do {                                                                    \
        if (!(r)->bad) {                                                    \
            int k_ = snprintf((r)->err, (r)->errlen, "%s: ", (r)->path);    \
            if (k_ > 0 && (size_t)k_ < (r)->errlen)                         \
                snprintf((r)->err + k_, (r)->errlen - (size_t)k_, __VA_ARGS__); \
        }                                                                   \
        (r)->bad = 1;                                                       \
    } while (0)

static int take(Rd *r, size_t n, const uint8_t **out) {
    if (r->bad) return 0;
    if ((size_t)(r->end - r->p) < n) {
        RFAIL(r, "truncated: %zu bytes needed at offset with %zu left", n, (size_t)(r->end - r->p));
        return 0;
    }
    *out = r->p;
    r->p += n;
    return 1;
}
static uint32_t rd_u32(Rd *r) {
    const uint8_t *p;
    if (!take(r, 4, &p)) return 0;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd_u64(Rd *r) {
    uint64_t lo = rd_u32(r), hi = rd_u32(r);
    return lo | hi << 32;
}
static GgufStr rd_str(Rd *r, const char *what) {
    GgufStr s = {NULL, 0};
    uint64_t n = rd_u64(r);
    if (r->bad) return s;
    if (n > (uint64_t)(r->end - r->p)) {
        RFAIL(r, "%s: string length %llu runs past the end of the file", what, (unsigned long long)n);
        return s;
    }
    const uint8_t *p;
    take(r, (size_t)n, &p);
    s.p = (const char *)p;
    s.n = n;
    return s;
}

static const size_t SCALAR_SIZE[GGUF_T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static uint64_t ld64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

// Skips over one value of type t (strings walked one by one), checking bounds.
static void skip_value(Rd *r, GgufType t, uint64_t count, const char *key) {
    if (t == GGUF_T_STRING) {
        if (count > (uint64_t)(r->end - r->p) / 8) {  // each string needs at least its 8-byte length
            RFAIL(r, "%s: array of %llu strings runs past the end", key, (unsigned long long)count);
            return;
        }
        for (uint64_t i = 0; i < count && !r->bad; i++) rd_str(r, key);
        return;
    }
    size_t sz = SCALAR_SIZE[t], total;
    if (!ao_mul_size(sz, (size_t)count, &total) || count > SIZE_MAX) {
        RFAIL(r, "%s: array of %llu elements overflows", key, (unsigned long long)count);
        return;
    }
    const uint8_t *p;
    if (!take(r, total, &p)) RFAIL(r, "%s: array of %llu elements runs past the end", key, (unsigned long long)count);
}

static int cmp_str(const GgufStr *a, const GgufStr *b) {
    size_t n = a->n < b->n ? (size_t)a->n : (size_t)b->n;
    int c = memcmp(a->p, b->p, n);
    return c ? c : (a->n < b->n ? -1 : a->n > b->n);
}
static int cmp_kv(const void *a, const void *b) { return cmp_str(&((const GgufKV *)a)->key, &((const GgufKV *)b)->key); }
static int cmp_tname(const void *a, const void *b) {
    return cmp_str(&(*(const GgufTensor *const *)a)->name, &(*(const GgufTensor *const *)b)->name);
}
static int cmp_toff(const void *a, const void *b) {
    uint64_t x = (*(const GgufTensor *const *)a)->offset, y = (*(const GgufTensor *const *)b)->offset;
    return x < y ? -1 : x > y;
}

int gguf_is_gguf(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char m[4] = {0};
    size_t n = fread(m, 1, 4, f);
    fclose(f);
    return n == 4 && memcmp(m, "GGUF", 4) == 0;
}

static int open_fail(GgufFile *g, Rd *r) {
    (void)r;
    gguf_close(g);
    return 0;
}

int gguf_open(GgufFile *g, const char *path, char *err, size_t errlen) {
    memset(g, 0, sizeof *g);
    if (!map_file(path, &g->mf, err, errlen)) return 0;
    g->path = ao_strdup(path);
    Rd r = {g->mf.data, g->mf.data + g->mf.size, 0, err, errlen, path};
    const uint8_t *magic;
    if (!take(&r, 4, &magic) || memcmp(magic, "GGUF", 4) != 0) {
        r.bad = 0;
        RFAIL(&r, "not a GGUF file (bad magic)");
        return open_fail(g, &r);
    }
    g->version = rd_u32(&r);
    if (!r.bad && g->version != 2 && g->version != 3) RFAIL(&r, "GGUF version %u is not supported (2 or 3)", g->version);
    g->n_tensors = rd_u64(&r);
    g->n_kv = rd_u64(&r);
    if (r.bad) return open_fail(g, &r);
    // Each kv needs >= 12 bytes (key length + type), each tensor info >= 24: counts beyond
    // what the file could hold are refused before anything is allocated.
    size_t left = (size_t)(r.end - r.p);
    if (g->n_kv > left / 12) RFAIL(&r, "%llu metadata entries cannot fit in the file", (unsigned long long)g->n_kv);
    if (g->n_tensors > left / 24) RFAIL(&r, "%llu tensors cannot fit in the file", (unsigned long long)g->n_tensors);
    if (r.bad) return open_fail(g, &r);
    g->kv = ao_calloc((size_t)g->n_kv + 1, sizeof *g->kv);
    g->alignment = 32;
    for (uint64_t i = 0; i < g->n_kv && !r.bad; i++) {
        GgufKV *kv = &g->kv[i];
        kv->key = rd_str(&r, "metadata key");
        if (r.bad) break;
        if (kv->key.n == 0 || kv->key.n > 65535) {
            RFAIL(&r, "metadata key %llu has length %llu", (unsigned long long)i, (unsigned long long)kv->key.n);
            break;
        }
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.n < 100 ? kv->key.n : 100), kv->key.p);
        uint32_t t = rd_u32(&r);
        if (r.bad) break;
        if (t >= GGUF_T_COUNT) {
            RFAIL(&r, "%s: value type %u is unknown", key, t);
            break;
        }
        kv->type = (GgufType)t;
        kv->n = 1;
        if (t == GGUF_T_ARRAY) {
            uint32_t at = rd_u32(&r);
            kv->n = rd_u64(&r);
            if (r.bad) break;
            if (at >= GGUF_T_COUNT || at == GGUF_T_ARRAY) {
                RFAIL(&r, "%s: array element type %u is not supported", key, at);
                break;
            }
            kv->arr_type = (GgufType)at;
            kv->data = r.p;
            skip_value(&r, kv->arr_type, kv->n, key);
        } else {
            kv->data = r.p;
            skip_value(&r, kv->type, 1, key);
        }
        if (!r.bad && kv->key.n == 17 && memcmp(kv->key.p, "general.alignment", 17) == 0) {
            uint64_t a;
            if (!gguf_kv_u64(kv, &a) || a == 0 || (a & (a - 1)) || a > 65536)
                RFAIL(&r, "general.alignment must be a power of two <= 65536");
            else g->alignment = a;
        }
    }
    if (r.bad) return open_fail(g, &r);
    // duplicate keys
    GgufKV *sorted = ao_malloc(((size_t)g->n_kv + 1) * sizeof *sorted);
    memcpy(sorted, g->kv, (size_t)g->n_kv * sizeof *sorted);
    qsort(sorted, (size_t)g->n_kv, sizeof *sorted, cmp_kv);
    for (uint64_t i = 1; i < g->n_kv && !r.bad; i++)
        if (cmp_kv(&sorted[i - 1], &sorted[i]) == 0)
            RFAIL(&r, "metadata key \"%.*s\" appears twice", (int)(sorted[i].key.n < 100 ? sorted[i].key.n : 100),
                  sorted[i].key.p);
    free(sorted);
    if (r.bad) return open_fail(g, &r);

    g->tensors = ao_calloc((size_t)g->n_tensors + 1, sizeof *g->tensors);
    for (uint64_t i = 0; i < g->n_tensors && !r.bad; i++) {
        GgufTensor *t = &g->tensors[i];
        t->name = rd_str(&r, "tensor name");
        if (r.bad) break;
        char nm[80];
        snprintf(nm, sizeof nm, "%.*s", (int)(t->name.n < 64 ? t->name.n : 64), t->name.p);
        if (t->name.n == 0 || t->name.n > 256) {
            RFAIL(&r, "tensor %llu has a name of length %llu", (unsigned long long)i, (unsigned long long)t->name.n);
            break;
        }
        t->ndim = rd_u32(&r);
        if (!r.bad && (t->ndim < 1 || t->ndim > 4)) {
            RFAIL(&r, "tensor %s has %u dimensions (1..4)", nm, t->ndim);
            break;
        }
        size_t numel = 1;
        for (uint32_t d = 0; d < t->ndim && !r.bad; d++) {
            t->ne[d] = rd_u64(&r);
            if (!r.bad && (t->ne[d] == 0 || t->ne[d] > ((uint64_t)1 << 40) || !ao_mul_size(numel, (size_t)t->ne[d], &numel)))
                RFAIL(&r, "tensor %s: dimension %u = %llu is out of range", nm, d, (unsigned long long)t->ne[d]);
        }
        for (uint32_t d = t->ndim; d < 4; d++) t->ne[d] = 1;
        t->type = rd_u32(&r);
        t->offset = rd_u64(&r);
        if (r.bad) break;
        size_t blk, bsz;
        if (!ggml_type_block(t->type, &blk, &bsz)) {
            RFAIL(&r, "tensor %s: ggml type %u (%s) is not supported", nm, t->type, gguf_type_name(t->type));
            break;
        }
        size_t nb;
        if (t->ne[0] % blk != 0 || !ao_mul_size(numel / blk, bsz, &nb)) {
            RFAIL(&r, "tensor %s: row length %llu is not a multiple of the %s block (%zu)", nm,
                  (unsigned long long)t->ne[0], gguf_type_name(t->type), blk);
            break;
        }
        t->nbytes = nb;
        if (t->offset % g->alignment != 0) RFAIL(&r, "tensor %s: offset %llu is not aligned to %llu", nm,
                                                 (unsigned long long)t->offset, (unsigned long long)g->alignment);
    }
    if (r.bad) return open_fail(g, &r);
    size_t hdr = (size_t)(r.p - g->mf.data), data_off;
    if (!ao_add_size(hdr, (size_t)g->alignment - 1, &data_off)) data_off = SIZE_MAX;
    data_off = data_off / (size_t)g->alignment * (size_t)g->alignment;
    if (g->n_tensors > 0 && data_off > g->mf.size) {
        RFAIL(&r, "the data section starts at %zu, past the end of the file (%zu bytes)", data_off, g->mf.size);
        return open_fail(g, &r);
    }
    g->data = g->mf.data + (data_off <= g->mf.size ? data_off : g->mf.size);
    size_t data_size = data_off <= g->mf.size ? g->mf.size - data_off : 0;
    GgufTensor **by = ao_malloc(((size_t)g->n_tensors + 1) * sizeof *by);
    for (uint64_t i = 0; i < g->n_tensors; i++) by[i] = &g->tensors[i];
    qsort(by, (size_t)g->n_tensors, sizeof *by, cmp_tname);
    for (uint64_t i = 1; i < g->n_tensors && !r.bad; i++)
        if (cmp_str(&by[i - 1]->name, &by[i]->name) == 0)
            RFAIL(&r, "tensor name \"%.*s\" appears twice", (int)(by[i]->name.n < 64 ? by[i]->name.n : 64), by[i]->name.p);
    qsort(by, (size_t)g->n_tensors, sizeof *by, cmp_toff);
    for (uint64_t i = 0; i < g->n_tensors && !r.bad; i++) {
        GgufTensor *t = by[i];
        size_t endo;
        if (t->offset > data_size || !ao_add_size((size_t)t->offset, (size_t)t->nbytes, &endo) || endo > data_size)
            RFAIL(&r, "tensor %.*s: bytes [%llu, +%llu) lie outside the data section (%zu bytes)",
                  (int)(t->name.n < 64 ? t->name.n : 64), t->name.p, (unsigned long long)t->offset,
                  (unsigned long long)t->nbytes, data_size);
        else if (i > 0 && by[i - 1]->offset + by[i - 1]->nbytes > t->offset)
            RFAIL(&r, "tensors %.*s and %.*s overlap", (int)(by[i - 1]->name.n < 64 ? by[i - 1]->name.n : 64),
                  by[i - 1]->name.p, (int)(t->name.n < 64 ? t->name.n : 64), t->name.p);
        else t->data = g->data + t->offset;  // only once the range is known to be inside the data
    }
    free(by);
    if (r.bad) return open_fail(g, &r);
    return 1;
}

void gguf_close(GgufFile *g) {
    unmap_file(&g->mf);
    free(g->kv);
    free(g->tensors);
    free(g->path);
    memset(g, 0, sizeof *g);
}

const GgufKV *gguf_find(const GgufFile *g, const char *key) {
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key.n == n && memcmp(g->kv[i].key.p, key, n) == 0) return &g->kv[i];
    return NULL;
}

const GgufTensor *gguf_find_tensor(const GgufFile *g, const char *name) {
    size_t n = strlen(name);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name.n == n && memcmp(g->tensors[i].name.p, name, n) == 0) return &g->tensors[i];
    return NULL;
}

GgufStr gguf_kv_str(const GgufKV *kv, uint64_t i) {
    GgufStr s = {"", 0};
    int is_arr = kv->type == GGUF_T_ARRAY;
    if ((is_arr ? kv->arr_type : kv->type) != GGUF_T_STRING || i >= kv->n) return s;
    const uint8_t *p = kv->data;
    for (uint64_t k = 0;; k++) {  // bounds were verified when the file was opened
        uint64_t n = ld64(p);
        if (k == i) {
            s.p = (const char *)p + 8;
            s.n = n;
            return s;
        }
        p += 8 + n;
    }
}

void gguf_kv_strs(const GgufKV *kv, GgufStr *out) {
    const uint8_t *p = kv->data;
    for (uint64_t k = 0; k < kv->n; k++) {
        out[k].n = ld64(p);
        out[k].p = (const char *)p + 8;
        p += 8 + out[k].n;
    }
}

int gguf_kv_u64(const GgufKV *kv, uint64_t *out) {
    const uint8_t *p = kv->data;
    switch (kv->type) {
        case GGUF_T_U8: *out = p[0]; return 1;
        case GGUF_T_U16: *out = (uint64_t)p[0] | (uint64_t)p[1] << 8; return 1;
        case GGUF_T_U32: *out = ld64((const uint8_t[8]){p[0], p[1], p[2], p[3], 0, 0, 0, 0}); return 1;
        case GGUF_T_I32: {
            int32_t v = (int32_t)(uint32_t)ld64((const uint8_t[8]){p[0], p[1], p[2], p[3], 0, 0, 0, 0});
            if (v < 0) return 0;
            *out = (uint64_t)v;
            return 1;
        }
        case GGUF_T_U64: *out = ld64(p); return 1;
        case GGUF_T_I64: {
            int64_t v = (int64_t)ld64(p);
            if (v < 0) return 0;
            *out = (uint64_t)v;
            return 1;
        }
        default: return 0;
    }
}

int gguf_kv_f64(const GgufKV *kv, double *out) {
    uint64_t u;
    if (kv->type == GGUF_T_F32) {
        uint32_t b = (uint32_t)ld64((const uint8_t[8]){kv->data[0], kv->data[1], kv->data[2], kv->data[3], 0, 0, 0, 0});
        float f;
        memcpy(&f, &b, 4);
        *out = f;
        return 1;
    }
    if (kv->type == GGUF_T_F64) {
        u = ld64(kv->data);
        memcpy(out, &u, 8);
        return 1;
    }
    if (gguf_kv_u64(kv, &u)) {
        *out = (double)u;
        return 1;
    }
    return 0;
}
