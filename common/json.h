// A strict JSON (RFC 8259) reader. Everything we parse comes from files a user handed
// us (config.json, safetensors headers, tokenizer.json, index files), so the parser
// rejects what the RFC rejects (trailing commas, comments, leading zeros, raw control
// characters, lone surrogates, invalid UTF-8), duplicate object keys, and nesting
// deeper than JSON_MAX_DEPTH. Values live in one arena freed with json_free.
#ifndef LLAMA_AO_COMMON_JSON_H
#define LLAMA_AO_COMMON_JSON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define JSON_MAX_DEPTH 128

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue JsonValue;
typedef struct JsonMember JsonMember;

struct JsonValue {
    JsonType type;
    int boolean;           // JSON_BOOL
    double number;         // JSON_NUMBER (nearest double)
    const char *num_text;  // JSON_NUMBER: the literal as written (not NUL-terminated)
    size_t num_len;
    char *str;             // JSON_STRING: decoded UTF-8, NUL-terminated (may hold NULs)
    size_t str_len;
    JsonValue *items;      // JSON_ARRAY
    JsonMember *members;   // JSON_OBJECT, in file order
    size_t n;              // item / member count
};

struct JsonMember {
    char *key;  // decoded, NUL-terminated
    size_t key_len;
    JsonValue value;
};

typedef struct JsonArena JsonArena;
typedef struct {
    JsonValue *root;
    JsonArena *arena;
} JsonDoc;

// Parses text[0..len). On success returns 1 and fills doc. On failure returns 0 and
// writes "line L, column C: what" into err.
int json_parse(const char *text, size_t len, JsonDoc *doc, char *err, size_t errlen);
void json_free(JsonDoc *doc);

// Lookups return NULL when obj is not an object or the key is absent.
const JsonValue *json_get(const JsonValue *obj, const char *key);
const char *json_type_name(JsonType t);

// Exact integer views of a number literal: 1 on success, 0 when the value is not a
// number, has a fraction/exponent, or is out of range.
int json_as_u64(const JsonValue *v, uint64_t *out);
int json_as_i64(const JsonValue *v, int64_t *out);

#ifdef __cplusplus
}
#endif
#endif
