#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/json.h"

static const struct { const char *name; size_t size; } DTYPES[ST_NDTYPES] = {
    [ST_F32] = {"F32", 4},  [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2}, [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8},  [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2},   [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(StDtype d) { return (unsigned)d < ST_NDTYPES ? DTYPES[d].name : "?"; }
size_t st_dtype_size(StDtype d) { return (unsigned)d < ST_NDTYPES ? DTYPES[d].size : 0; }
int st_dtype_from_name(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(s, DTYPES[i].name) == 0) return i;
    return -1;
}

// ---- number conversions ---------------------------------------------------------------

float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1);  // round to nearest even
    return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else {  // subnormal: normalize
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;  // may carry into the exponent: correct
    return (uint16_t)h;
}

int st_to_f32(const StTensor *t, float *dst) {
    const unsigned char *s = t->data;
    switch (t->dtype) {
        case ST_F32: if (t->nbytes) memcpy(dst, s, t->nbytes); return 1;
        case ST_BF16:
            for (size_t i = 0; i < t->numel; i++) { uint16_t h; memcpy(&h, s + 2 * i, 2); dst[i] = bf16_to_f32(h); }
            return 1;
        case ST_F16:
            for (size_t i = 0; i < t->numel; i++) { uint16_t h; memcpy(&h, s + 2 * i, 2); dst[i] = f16_to_f32(h); }
            return 1;
        default: return 0;
    }
}

size_t st_first_nonfinite(const StTensor *t) {
    const unsigned char *s = t->data;
    for (size_t j = 0; j < t->numel; j++) {
        uint32_t u;
        uint16_t h;
        switch (t->dtype) {
            case ST_F32: memcpy(&u, s + 4 * j, 4); if ((u & 0x7F800000u) == 0x7F800000u) return j; break;
            case ST_BF16: memcpy(&h, s + 2 * j, 2); if ((h & 0x7F80u) == 0x7F80u) return j; break;
            case ST_F16: memcpy(&h, s + 2 * j, 2); if ((h & 0x7C00u) == 0x7C00u) return j; break;
            case ST_F8_E4M3: if ((s[j] & 0x7F) == 0x7F) return j; break;  // e4m3fn: no inf, S.1111.111 is NaN
            case ST_F8_E5M2: if ((s[j] & 0x7C) == 0x7C) return j; break;
            default: return t->numel;
        }
    }
    return t->numel;
}

// ---- reading --------------------------------------------------------------------------

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}
static int cmp_tensor_ptr_offset(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    if (x->data != y->data) return (const char *)x->data < (const char *)y->data ? -1 : 1;
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

void st_close(SafeTensors *st) {
    for (int i = 0; i < st->n; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->n_files; i++) {
        unmap_file(&st->files[i]);
        free(st->file_names[i]);
    }
    free(st->files);
    free(st->file_names);
    for (int i = 0; i < st->n_meta; i++) { free(st->meta_keys[i]); free(st->meta_vals[i]); }
    free(st->meta_keys);
    free(st->meta_vals);
    memset(st, 0, sizeof *st);
}

// Parses one tensor entry of file `fi`; data section is [base, base + data_size).
static int parse_entry(SafeTensors *st, const JsonMember *m, int fi, const unsigned char *base, size_t data_size,
                       const char *path, char *err, size_t n) {
    const JsonValue *e = &m->value;
    if (m->key_len == 0 || strlen(m->key) != m->key_len) {
        snprintf(err, n, "%s: tensor with an empty name or a NUL byte in its name", path);
        return 0;
    }
    if (e->type != JSON_OBJECT) { snprintf(err, n, "%s: tensor \"%s\": entry must be an object", path, m->key); return 0; }
    for (size_t i = 0; i < e->n; i++) {
        const char *k = e->members[i].key;
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets")) {
            snprintf(err, n, "%s: tensor \"%s\": unknown field \"%s\"", path, m->key, k);
            return 0;
        }
    }
    const JsonValue *dt = json_get(e, "dtype"), *sh = json_get(e, "shape"), *off = json_get(e, "data_offsets");
    if (!dt || dt->type != JSON_STRING) { snprintf(err, n, "%s: tensor \"%s\": missing string \"dtype\"", path, m->key); return 0; }
    int d = st_dtype_from_name(dt->str);
    if (d < 0) { snprintf(err, n, "%s: tensor \"%s\": unknown dtype \"%.32s\"", path, m->key, dt->str); return 0; }
    if (!sh || sh->type != JSON_ARRAY) { snprintf(err, n, "%s: tensor \"%s\": missing array \"shape\"", path, m->key); return 0; }
    if (sh->n > ST_MAX_DIMS) { snprintf(err, n, "%s: tensor \"%s\": %zu dimensions (at most %d)", path, m->key, sh->n, ST_MAX_DIMS); return 0; }
    if (!off || off->type != JSON_ARRAY || off->n != 2) {
        snprintf(err, n, "%s: tensor \"%s\": \"data_offsets\" must be [begin, end]", path, m->key);
        return 0;
    }
    StTensor *t = &st->tensors[st->n];
    memset(t, 0, sizeof *t);
    size_t numel = 1;
    for (size_t i = 0; i < sh->n; i++) {
        uint64_t x;
        if (!json_as_u64(&sh->items[i], &x) || x > (uint64_t)INT64_MAX) {
            snprintf(err, n, "%s: tensor \"%s\": shape[%zu] is not a non-negative integer", path, m->key, i);
            return 0;
        }
        if (!ao_mul_size(numel, (size_t)x, &numel)) {
            snprintf(err, n, "%s: tensor \"%s\": shape overflows the element count", path, m->key);
            return 0;
        }
        t->shape[i] = (int64_t)x;
    }
    size_t nbytes;
    if (!ao_mul_size(numel, DTYPES[d].size, &nbytes)) {
        snprintf(err, n, "%s: tensor \"%s\": byte size overflows", path, m->key);
        return 0;
    }
    uint64_t b, en;
    if (!json_as_u64(&off->items[0], &b) || !json_as_u64(&off->items[1], &en)) {
        snprintf(err, n, "%s: tensor \"%s\": data_offsets must be non-negative integers", path, m->key);
        return 0;
    }
    if (b > en || en > data_size) {
        snprintf(err, n, "%s: tensor \"%s\": data_offsets [%llu, %llu] outside the %zu-byte data section", path, m->key,
                 (unsigned long long)b, (unsigned long long)en, data_size);
        return 0;
    }
    if (en - b != nbytes) {
        snprintf(err, n, "%s: tensor \"%s\": shape x dtype is %zu bytes but data_offsets span %llu", path, m->key, nbytes,
                 (unsigned long long)(en - b));
        return 0;
    }
    t->name = ao_strdup(m->key);
    t->dtype = (StDtype)d;
    t->ndim = (int)sh->n;
    t->numel = numel;
    t->nbytes = nbytes;
    t->data = base + b;
    t->file = fi;
    st->n++;
    return 1;
}

static int parse_metadata(SafeTensors *st, const JsonValue *meta, const char *path, char *err, size_t n) {
    if (meta->type != JSON_OBJECT) { snprintf(err, n, "%s: __metadata__ must be an object of strings", path); return 0; }
    for (size_t i = 0; i < meta->n; i++)
        if (meta->members[i].value.type != JSON_STRING) {
            snprintf(err, n, "%s: __metadata__[\"%s\"] must be a string", path, meta->members[i].key);
            return 0;
        }
    if (st->n_meta) return 1;  // keep the first file's metadata
    st->meta_keys = ao_calloc(meta->n, sizeof(char *));
    st->meta_vals = ao_calloc(meta->n, sizeof(char *));
    for (size_t i = 0; i < meta->n; i++) {
        st->meta_keys[i] = ao_strdup(meta->members[i].key);
        st->meta_vals[i] = ao_strdup(meta->members[i].value.str);
        st->n_meta++;
    }
    return 1;
}

// Appends the tensors of one file to st.
static int open_one(SafeTensors *st, const char *path, char *err, size_t n) {
    int fi = st->n_files;
    st->files = ao_realloc(st->files, (size_t)(fi + 1) * sizeof *st->files);
    st->file_names = ao_realloc(st->file_names, (size_t)(fi + 1) * sizeof *st->file_names);
    MappedFile *mf = &st->files[fi];
    if (!map_file(path, mf, err, n)) return 0;
    st->file_names[fi] = ao_strdup(path);
    st->n_files++;
    if (mf->size < 8) { snprintf(err, n, "%s: %zu bytes is too short for a safetensors file (truncated?)", path, mf->size); return 0; }
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)mf->data[i] << (8 * i);
    if (hlen > ST_MAX_HEADER) {
        snprintf(err, n, "%s: header length %llu exceeds the %u-byte limit (corrupt or not a safetensors file)", path,
                 (unsigned long long)hlen, ST_MAX_HEADER);
        return 0;
    }
    if (hlen > mf->size - 8) {
        snprintf(err, n, "%s: header length %llu runs past the end of the %zu-byte file (truncated?)", path,
                 (unsigned long long)hlen, mf->size);
        return 0;
    }
    if (hlen == 0 || mf->data[8] != '{') { snprintf(err, n, "%s: header does not start with '{' (not a safetensors file?)", path); return 0; }
    JsonDoc doc;
    char jerr[256];
    if (!json_parse((const char *)mf->data + 8, (size_t)hlen, &doc, jerr, sizeof jerr)) {
        snprintf(err, n, "%s: header is not valid JSON: %s", path, jerr);
        return 0;
    }
    const JsonValue *root = doc.root;
    int ok = 1;
    if (root->type != JSON_OBJECT) { snprintf(err, n, "%s: header must be a JSON object", path); ok = 0; }
    const unsigned char *base = mf->data + 8 + hlen;
    size_t data_size = mf->size - 8 - (size_t)hlen;
    int first = st->n;
    if (ok) st->tensors = ao_realloc(st->tensors, ((size_t)st->n + root->n) * sizeof *st->tensors);
    for (size_t i = 0; ok && i < root->n; i++) {
        const JsonMember *m = &root->members[i];
        if (strcmp(m->key, "__metadata__") == 0) ok = parse_metadata(st, &m->value, path, err, n);
        else ok = parse_entry(st, m, fi, base, data_size, path, err, n);
    }
    json_free(&doc);
    if (!ok) return 0;
    // The data section must be covered exactly: sorted by start, each tensor begins where
    // the previous one ended, the first at 0 and the last at the end.
    int cnt = st->n - first;
    const StTensor **byoff = ao_malloc((size_t)(cnt ? cnt : 1) * sizeof *byoff);
    for (int i = 0; i < cnt; i++) byoff[i] = &st->tensors[first + i];
    qsort(byoff, (size_t)cnt, sizeof *byoff, cmp_tensor_ptr_offset);
    const unsigned char *expect = base;
    for (int i = 0; ok && i < cnt; i++) {
        const unsigned char *p = byoff[i]->data;
        if (p != expect) {
            snprintf(err, n, "%s: tensor \"%s\" %s at byte %zu of the data section, expected %zu (%s)", path,
                     byoff[i]->name, p < expect ? "overlaps the previous tensor" : "leaves a gap", (size_t)(p - base),
                     (size_t)(expect - base), p < expect ? "overlapping ranges" : "non-contiguous data");
            ok = 0;
        }
        expect = p + byoff[i]->nbytes;
    }
    if (ok && expect != base + data_size) {
        snprintf(err, n, "%s: %zu trailing bytes after the last tensor (data section is %zu bytes)", path,
                 (size_t)(base + data_size - expect), data_size);
        ok = 0;
    }
    free(byoff);
    return ok;
}

static int finish(SafeTensors *st, char *err, size_t n) {
    qsort(st->tensors, (size_t)st->n, sizeof *st->tensors, cmp_tensor_name);
    for (int i = 1; i < st->n; i++)
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
            snprintf(err, n, "tensor \"%s\" appears twice (in %s and %s)", st->tensors[i].name,
                     st->file_names[st->tensors[i - 1].file], st->file_names[st->tensors[i].file]);
            return 0;
        }
    return 1;
}

int st_open(SafeTensors *st, const char *path, char *err, size_t n) {
    memset(st, 0, sizeof *st);
    if (!open_one(st, path, err, n) || !finish(st, err, n)) { st_close(st); return 0; }
    return 1;
}

// Sharded: the index names a file for every tensor; we open each distinct file once and
// require that the files hold exactly the tensors the index assigns to them.
static int open_index(SafeTensors *st, const char *index_path, char *err, size_t n) {
    char *text;
    size_t len;
    if (!read_file_all(index_path, 64u << 20, &text, &len, err, n)) return 0;
    JsonDoc doc;
    char jerr[256];
    if (!json_parse(text, len, &doc, jerr, sizeof jerr)) {
        snprintf(err, n, "%s: not valid JSON: %s", index_path, jerr);
        free(text);
        return 0;
    }
    free(text);
    int ok = 1;
    const JsonValue *wm = json_get(doc.root, "weight_map");
    if (!wm || wm->type != JSON_OBJECT || wm->n == 0) {
        snprintf(err, n, "%s: \"weight_map\" must be a non-empty object", index_path);
        ok = 0;
    }
    char *dir = ao_strdup(index_path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = 0;
    else dir[0] = 0;
    const char **names = NULL;  // distinct shard file names
    int n_names = 0;
    for (size_t i = 0; ok && i < wm->n; i++) {
        const JsonValue *v = &wm->members[i].value;
        if (v->type != JSON_STRING || v->str_len == 0 || strchr(v->str, '/') || strcmp(v->str, "..") == 0 ||
            strlen(v->str) != v->str_len) {
            snprintf(err, n, "%s: weight_map[\"%s\"] must be a plain file name in the same directory", index_path,
                     wm->members[i].key);
            ok = 0;
            break;
        }
        int seen = 0;
        for (int j = 0; j < n_names && !seen; j++) seen = strcmp(names[j], v->str) == 0;
        if (!seen) {
            names = ao_realloc(names, (size_t)(n_names + 1) * sizeof *names);
            names[n_names++] = v->str;
        }
    }
    for (int j = 0; ok && j < n_names; j++) {
        char *p = path_join(dir[0] ? dir : ".", names[j]);
        ok = open_one(st, p, err, n);
        free(p);
    }
    if (ok) ok = finish(st, err, n);
    for (size_t i = 0; ok && i < wm->n; i++) {
        const StTensor *t = st_find(st, wm->members[i].key);
        if (!t || strcmp(strrchr(st->file_names[t->file], '/') ? strrchr(st->file_names[t->file], '/') + 1
                                                               : st->file_names[t->file],
                         wm->members[i].value.str) != 0) {
            snprintf(err, n, "%s: tensor \"%s\" is not in %s as the index says", index_path, wm->members[i].key,
                     wm->members[i].value.str);
            ok = 0;
        }
    }
    if (ok && (size_t)st->n != wm->n) {
        for (int i = 0; i < st->n; i++)
            if (!json_get(wm, st->tensors[i].name)) {
                snprintf(err, n, "%s: tensor \"%s\" in %s is not listed in the index", index_path, st->tensors[i].name,
                         st->file_names[st->tensors[i].file]);
                break;
            }
        ok = 0;
    }
    free(names);
    free(dir);
    json_free(&doc);
    return ok;
}

int st_open_model(SafeTensors *st, const char *path, char *err, size_t n) {
    memset(st, 0, sizeof *st);
    int ok;
    if (dir_exists(path)) {
        char *idx = path_join(path, "model.safetensors.index.json");
        char *single = path_join(path, "model.safetensors");
        if (file_exists(idx)) ok = open_index(st, idx, err, n);
        else if (file_exists(single)) ok = open_one(st, single, err, n) && finish(st, err, n);
        else {
            snprintf(err, n, "%s has neither model.safetensors nor model.safetensors.index.json", path);
            ok = 0;
        }
        free(idx);
        free(single);
    } else {
        size_t L = strlen(path);
        if (L > 5 && strcmp(path + L - 5, ".json") == 0) ok = open_index(st, path, err, n);
        else ok = open_one(st, path, err, n) && finish(st, err, n);
    }
    if (!ok) st_close(st);
    return ok;
}

const StTensor *st_find(const SafeTensors *st, const char *name) {
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0) return &st->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

const char *st_meta(const SafeTensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_vals[i];
    return NULL;
}

// ---- writing --------------------------------------------------------------------------

static void put_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

int st_write(const char *path, const StWriteTensor *t, int nt, const char *const *mk, const char *const *mv, int n_meta,
             char *err, size_t n) {
    // The header is built in a memory stream first so its length is known.
    char *hdr = NULL;
    size_t hlen = 0;
    FILE *h = open_memstream(&hdr, &hlen);
    CHECK(h, "open_memstream failed");
    fputc('{', h);
    int first = 1;
    if (n_meta > 0) {
        fputs("\"__metadata__\":{", h);
        for (int i = 0; i < n_meta; i++) {
            if (i) fputc(',', h);
            put_json_string(h, mk[i]);
            fputc(':', h);
            put_json_string(h, mv[i]);
        }
        fputc('}', h);
        first = 0;
    }
    size_t off = 0;
    for (int i = 0; i < nt; i++) {
        size_t numel = 1, nbytes;
        for (int d = 0; d < t[i].ndim; d++) CHECK(ao_mul_size(numel, (size_t)t[i].shape[d], &numel), "shape overflow");
        CHECK(ao_mul_size(numel, st_dtype_size(t[i].dtype), &nbytes), "size overflow");
        if (!first) fputc(',', h);
        first = 0;
        put_json_string(h, t[i].name);
        fprintf(h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t[i].dtype));
        for (int d = 0; d < t[i].ndim; d++) fprintf(h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        fprintf(h, "],\"data_offsets\":[%zu,%zu]}", off, off + nbytes);
        off += nbytes;
    }
    fputc('}', h);
    fclose(h);
    size_t padded = (hlen + 7) / 8 * 8;  // keeps the data section 8-byte aligned
    AtomicFile af;
    if (!atomic_open(&af, path, err, n)) { free(hdr); return 0; }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    fwrite(len8, 1, 8, af.f);
    fwrite(hdr, 1, hlen, af.f);
    for (size_t i = hlen; i < padded; i++) fputc(' ', af.f);
    free(hdr);
    for (int i = 0; i < nt; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (size_t)t[i].shape[d];
        size_t nbytes = numel * st_dtype_size(t[i].dtype);
        if (nbytes && fwrite(t[i].data, 1, nbytes, af.f) != nbytes) {
            snprintf(err, n, "short write to %s", path);
            atomic_abort(&af);
            return 0;
        }
    }
    return atomic_close(&af, err, n);
}
