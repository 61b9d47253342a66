#include "json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

// ---- arena: big blocks, bump allocation, freed at once ---------------------------------

struct JsonArena {
    JsonArena *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

static void *arena_alloc(JsonArena **head, size_t n) {
    n = (n + 15) & ~(size_t)15;
    JsonArena *a = *head;
    if (!a || a->cap - a->used < n) {
        size_t cap = n > (1u << 20) ? n : (1u << 20);
        JsonArena *b = ao_malloc(sizeof(JsonArena) + cap);
        b->next = a;
        b->used = 0;
        b->cap = cap;
        *head = b;
        a = b;
    }
    void *p = a->data + a->used;
    a->used += n;
    return p;
}

// ---- parser ---------------------------------------------------------------------------

typedef struct {
    const char *s, *end, *p;
    JsonArena *arena;
    char *err;
    size_t errlen;
    int failed;
    // scratch buffer for string decoding
    char *buf;
    size_t buf_cap;
} Parser;

static void perr(Parser *ps, const char *fmt, ...) AO_PRINTF(2, 3);
static void perr(Parser *ps, const char *fmt, ...) {
    if (ps->failed) return;
    ps->failed = 1;
    size_t line = 1, col = 1;
    for (const char *q = ps->s; q < ps->p && q < ps->end; q++) {
        if (*q == '\n') { line++; col = 1; } else col++;
    }
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ps->err && ps->errlen) snprintf(ps->err, ps->errlen, "line %zu, column %zu: %s", line, col, msg);
}

static void skip_ws(Parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static void buf_put(Parser *ps, size_t *n, const char *src, size_t k) {
    if (*n + k + 1 > ps->buf_cap) {
        size_t cap = ps->buf_cap ? ps->buf_cap : 256;
        while (cap < *n + k + 1) cap *= 2;
        ps->buf = ao_realloc(ps->buf, cap);
        ps->buf_cap = cap;
    }
    memcpy(ps->buf + *n, src, k);
    *n += k;
}

static int hex4(const char *q, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = q[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t utf8_encode(unsigned cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// Length of the valid UTF-8 sequence at q (1..4), or 0 when it is invalid
// (overlong, surrogate, beyond U+10FFFF, truncated).
static size_t utf8_valid_len(const unsigned char *q, const unsigned char *end) {
    unsigned c = q[0];
    size_t n;
    unsigned cp;
    if (c < 0x80) return 1;
    else if (c >= 0xC2 && c <= 0xDF) { n = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; cp = c & 0x07; }
    else return 0;
    if ((size_t)(end - q) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((q[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (q[i] & 0x3F);
    }
    if (n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
    if (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
    return n;
}

// Parses a string starting at the opening quote; result is copied into the arena.
static int parse_string(Parser *ps, char **out, size_t *out_len) {
    ps->p++;  // opening quote
    size_t n = 0;
    for (;;) {
        if (ps->p >= ps->end) { perr(ps, "unterminated string"); return 0; }
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') { ps->p++; break; }
        if (c < 0x20) { perr(ps, "raw control character 0x%02x in string", c); return 0; }
        if (c == '\\') {
            if (ps->end - ps->p < 2) { perr(ps, "unterminated escape"); return 0; }
            char e = ps->p[1];
            char ch;
            switch (e) {
                case '"': ch = '"'; break;
                case '\\': ch = '\\'; break;
                case '/': ch = '/'; break;
                case 'b': ch = '\b'; break;
                case 'f': ch = '\f'; break;
                case 'n': ch = '\n'; break;
                case 'r': ch = '\r'; break;
                case 't': ch = '\t'; break;
                case 'u': {
                    unsigned cp;
                    if (ps->end - ps->p < 6 || !hex4(ps->p + 2, &cp)) { perr(ps, "bad \\u escape"); return 0; }
                    ps->p += 6;
                    if (cp >= 0xDC00 && cp <= 0xDFFF) { perr(ps, "lone low surrogate \\u%04x", cp); return 0; }
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        unsigned lo;
                        if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || !hex4(ps->p + 2, &lo) ||
                            lo < 0xDC00 || lo > 0xDFFF) {
                            perr(ps, "high surrogate \\u%04x not followed by a low surrogate", cp);
                            return 0;
                        }
                        ps->p += 6;
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    char tmp[4];
                    buf_put(ps, &n, tmp, utf8_encode(cp, tmp));
                    continue;
                }
                default: perr(ps, "invalid escape \\%c", e); return 0;
            }
            buf_put(ps, &n, &ch, 1);
            ps->p += 2;
            continue;
        }
        // copy a run of plain bytes, validating UTF-8
        const char *run = ps->p;
        while (ps->p < ps->end) {
            unsigned char d = (unsigned char)*ps->p;
            if (d == '"' || d == '\\' || d < 0x20) break;
            size_t k = utf8_valid_len((const unsigned char *)ps->p, (const unsigned char *)ps->end);
            if (!k) { perr(ps, "invalid UTF-8 byte 0x%02x in string", d); return 0; }
            ps->p += k;
        }
        buf_put(ps, &n, run, (size_t)(ps->p - run));
    }
    char *s = arena_alloc(&ps->arena, n + 1);
    if (n) memcpy(s, ps->buf, n);
    s[n] = 0;
    *out = s;
    *out_len = n;
    return 1;
}

static int parse_number(Parser *ps, JsonValue *v) {
    const char *q = ps->p;
    if (q < ps->end && *q == '-') q++;
    if (q >= ps->end) { perr(ps, "bad number"); return 0; }
    if (*q == '0') {
        q++;
        if (q < ps->end && *q >= '0' && *q <= '9') { perr(ps, "leading zero in number"); return 0; }
    } else if (*q >= '1' && *q <= '9') {
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    } else { perr(ps, "bad number"); return 0; }
    if (q < ps->end && *q == '.') {
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') { perr(ps, "digit expected after '.'"); return 0; }
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (q >= ps->end || *q < '0' || *q > '9') { perr(ps, "digit expected in exponent"); return 0; }
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    size_t len = (size_t)(q - ps->p);
    char tmp[64];
    if (len >= sizeof tmp) {
        // very long literals: strtod needs a NUL-terminated copy
        char *big = ao_malloc(len + 1);
        memcpy(big, ps->p, len);
        big[len] = 0;
        v->number = strtod(big, NULL);
        free(big);
    } else {
        memcpy(tmp, ps->p, len);
        tmp[len] = 0;
        v->number = strtod(tmp, NULL);
    }
    v->type = JSON_NUMBER;
    v->num_text = ps->p;
    v->num_len = len;
    ps->p = q;
    return 1;
}

static int match_lit(Parser *ps, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0) return 0;
    ps->p += n;
    return 1;
}

static int cmp_member_key(const void *a, const void *b) {
    const JsonMember *x = *(const JsonMember *const *)a, *y = *(const JsonMember *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

static int parse_value(Parser *ps, JsonValue *v, int depth);

static int parse_array(Parser *ps, JsonValue *v, int depth) {
    ps->p++;
    size_t n = 0, cap = 0;
    JsonValue *tmp = NULL;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') { ps->p++; goto done; }
    for (;;) {
        if (n == cap) { cap = cap ? cap * 2 : 8; tmp = ao_realloc(tmp, cap * sizeof *tmp); }
        if (!parse_value(ps, &tmp[n], depth + 1)) { free(tmp); return 0; }
        n++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == ']') { ps->p++; break; }
        perr(ps, "expected ',' or ']' in array");
        free(tmp);
        return 0;
    }
done:
    v->type = JSON_ARRAY;
    v->n = n;
    v->items = n ? arena_alloc(&ps->arena, n * sizeof *tmp) : NULL;
    if (n) memcpy(v->items, tmp, n * sizeof *tmp);
    free(tmp);
    return 1;
}

static int parse_object(Parser *ps, JsonValue *v, int depth) {
    ps->p++;
    size_t n = 0, cap = 0;
    JsonMember *tmp = NULL;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') { ps->p++; goto done; }
    for (;;) {
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') { perr(ps, "expected a string key in object"); free(tmp); return 0; }
        if (n == cap) { cap = cap ? cap * 2 : 8; tmp = ao_realloc(tmp, cap * sizeof *tmp); }
        if (!parse_string(ps, &tmp[n].key, &tmp[n].key_len)) { free(tmp); return 0; }
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') { perr(ps, "expected ':' after key"); free(tmp); return 0; }
        ps->p++;
        if (!parse_value(ps, &tmp[n].value, depth + 1)) { free(tmp); return 0; }
        n++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == '}') { ps->p++; break; }
        perr(ps, "expected ',' or '}' in object");
        free(tmp);
        return 0;
    }
done:
    v->type = JSON_OBJECT;
    v->n = n;
    v->members = n ? arena_alloc(&ps->arena, n * sizeof *tmp) : NULL;
    if (n) memcpy(v->members, tmp, n * sizeof *tmp);
    free(tmp);
    if (n > 1) {  // duplicate keys: sort pointers, compare neighbours
        const JsonMember **idx = ao_malloc(n * sizeof *idx);
        for (size_t i = 0; i < n; i++) idx[i] = &v->members[i];
        qsort(idx, n, sizeof *idx, cmp_member_key);
        for (size_t i = 1; i < n; i++) {
            if (cmp_member_key(&idx[i - 1], &idx[i]) == 0) {
                perr(ps, "duplicate key \"%.100s\" in object", idx[i]->key);
                free(idx);
                return 0;
            }
        }
        free(idx);
    }
    return 1;
}

static int parse_value(Parser *ps, JsonValue *v, int depth) {
    memset(v, 0, sizeof *v);
    if (depth > JSON_MAX_DEPTH) { perr(ps, "nesting deeper than %d", JSON_MAX_DEPTH); return 0; }
    skip_ws(ps);
    if (ps->p >= ps->end) { perr(ps, "unexpected end of input"); return 0; }
    switch (*ps->p) {
        case '{': return parse_object(ps, v, depth);
        case '[': return parse_array(ps, v, depth);
        case '"': v->type = JSON_STRING; return parse_string(ps, &v->str, &v->str_len);
        case 't': if (match_lit(ps, "true")) { v->type = JSON_BOOL; v->boolean = 1; return 1; } break;
        case 'f': if (match_lit(ps, "false")) { v->type = JSON_BOOL; v->boolean = 0; return 1; } break;
        case 'n': if (match_lit(ps, "null")) { v->type = JSON_NULL; return 1; } break;
        default:
            if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps, v);
    }
    perr(ps, "unexpected character '%c'", *ps->p >= 0x20 && *ps->p < 0x7f ? *ps->p : '?');
    return 0;
}

static void arena_free(JsonArena *a) {
    while (a) {
        JsonArena *n = a->next;
        free(a);
        a = n;
    }
}

int json_parse(const char *text, size_t len, JsonDoc *doc, char *err, size_t errlen) {
    Parser ps = {.s = text, .end = text + len, .p = text, .err = err, .errlen = errlen};
    doc->root = NULL;
    doc->arena = NULL;
    JsonValue *root = arena_alloc(&ps.arena, sizeof *root);
    int ok = parse_value(&ps, root, 0);
    if (ok) {
        skip_ws(&ps);
        if (ps.p != ps.end) { perr(&ps, "trailing characters after the JSON value"); ok = 0; }
    }
    free(ps.buf);
    if (!ok) { arena_free(ps.arena); return 0; }
    doc->root = root;
    doc->arena = ps.arena;
    return 1;
}

void json_free(JsonDoc *doc) {
    arena_free(doc->arena);
    doc->arena = NULL;
    doc->root = NULL;
}

const JsonValue *json_get(const JsonValue *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->n; i++)
        if (obj->members[i].key_len == kl && memcmp(obj->members[i].key, key, kl) == 0) return &obj->members[i].value;
    return NULL;
}

const char *json_type_name(JsonType t) {
    switch (t) {
        case JSON_NULL: return "null";
        case JSON_BOOL: return "boolean";
        case JSON_NUMBER: return "number";
        case JSON_STRING: return "string";
        case JSON_ARRAY: return "array";
        case JSON_OBJECT: return "object";
    }
    return "?";
}

int json_as_u64(const JsonValue *v, uint64_t *out) {
    if (!v || v->type != JSON_NUMBER || v->num_len == 0 || v->num_text[0] == '-') return 0;
    uint64_t x = 0;
    for (size_t i = 0; i < v->num_len; i++) {
        char c = v->num_text[i];
        if (c < '0' || c > '9') return 0;  // fraction or exponent
        unsigned d = (unsigned)(c - '0');
        if (x > (UINT64_MAX - d) / 10) return 0;
        x = x * 10 + d;
    }
    *out = x;
    return 1;
}

int json_as_i64(const JsonValue *v, int64_t *out) {
    if (!v || v->type != JSON_NUMBER || v->num_len == 0) return 0;
    int neg = v->num_text[0] == '-';
    JsonValue t = *v;
    if (neg) { t.num_text++; t.num_len--; }
    uint64_t u;
    if (!json_as_u64(&t, &u)) return 0;
    if (!neg && u > (uint64_t)INT64_MAX) return 0;
    if (neg && u > (uint64_t)INT64_MAX + 1) return 0;
    *out = neg ? (int64_t)(0 - u) : (int64_t)u;
    return 1;
}
