#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ao_fail_handler g_fail_handler = NULL;

ao_fail_handler ao_set_fail_handler(ao_fail_handler h) {
    ao_fail_handler old = g_fail_handler;
    g_fail_handler = h;
    return old;
}

void ao_fail(const char *file, int line, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_fail_handler) g_fail_handler(msg);  // may longjmp (tests)
    fflush(stdout);
    fprintf(stderr, "error: %s\n  at %s:%d\n", msg, file, line);
    exit(1);
}

void ao_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void *ao_malloc_(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) ao_fail(file, line, "out of memory allocating %zu bytes", n);
    return p;
}

void *ao_calloc_(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) ao_fail(file, line, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *ao_realloc_(void *p, size_t n, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) ao_fail(file, line, "out of memory reallocating to %zu bytes", n);
    return q;
}

char *ao_strdup_(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *d = ao_malloc_(n, file, line);
    memcpy(d, s, n);
    return d;
}
