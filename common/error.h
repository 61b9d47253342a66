// Errors fail closed: one [[noreturn]] function prints file:line, the message and an
// optional hint, then exits non-zero. Validation of anything that came from a file or
// the command line goes through CHECK, never assert.
#ifndef LLAMA_AO_COMMON_ERROR_H
#define LLAMA_AO_COMMON_ERROR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define AO_NORETURN __attribute__((noreturn))
#define AO_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define AO_NORETURN
#define AO_PRINTF(a, b)
#endif

// Prints "error: <msg>\n  at file:line" and exits(1). A test harness can install a
// handler that longjmps instead, so that rejection paths can be tested in-process.
AO_NORETURN void ao_fail(const char *file, int line, const char *fmt, ...) AO_PRINTF(3, 4);
// Prints "warning: <msg>" to stderr and returns.
void ao_warn(const char *fmt, ...) AO_PRINTF(1, 2);

typedef void (*ao_fail_handler)(const char *msg);
// Installs a handler called with the formatted message before exit; it may longjmp.
// Returns the previous handler. NULL restores the default (print + exit).
ao_fail_handler ao_set_fail_handler(ao_fail_handler h);

#define CHECK(cond, ...)                                         \
    do {                                                         \
        if (!(cond)) ao_fail(__FILE__, __LINE__, __VA_ARGS__);   \
    } while (0)
#define FAIL(...) ao_fail(__FILE__, __LINE__, __VA_ARGS__)

// Allocation that never returns NULL: out of memory is a clear error, not a crash.
void *ao_malloc_(size_t n, const char *file, int line);
void *ao_calloc_(size_t count, size_t size, const char *file, int line);
void *ao_realloc_(void *p, size_t n, const char *file, int line);
char *ao_strdup_(const char *s, const char *file, int line);
#define ao_malloc(n) ao_malloc_((n), __FILE__, __LINE__)
#define ao_calloc(c, s) ao_calloc_((c), (s), __FILE__, __LINE__)
#define ao_realloc(p, n) ao_realloc_((p), (n), __FILE__, __LINE__)
#define ao_strdup(s) ao_strdup_((s), __FILE__, __LINE__)

// Overflow-checked size arithmetic for sizes that come from files: returns 0 on
// overflow (and leaves *out untouched), 1 on success.
static inline int ao_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}
static inline int ao_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}

#ifdef __cplusplus
}
#endif
#endif
