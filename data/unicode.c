#include "unicode.h"

#include <pthread.h>
#include <stdlib.h>

#include "../common/error.h"

const uint8_t *ucat_bmp;
static uint8_t g_bmp[0x10000];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

unsigned ucat_slow(uint32_t cp) {
    if (cp > 0x10FFFF) return 0;
    // last entry whose start <= cp
    size_t lo = 0, hi = UNICODE_RANGES_N;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if ((unicode_ranges[mid] >> 8) <= cp) lo = mid;
        else hi = mid;
    }
    return unicode_ranges[lo] & 0xFF;
}

static void build_bmp(void) {
    // Why a flat BMP table: the encoder classifies every character; one load beats a
    // binary search over 3000 ranges, and 64 KB is a fair price.
    for (size_t r = 0; r < UNICODE_RANGES_N; r++) {
        uint32_t start = unicode_ranges[r] >> 8;
        uint32_t end = r + 1 < UNICODE_RANGES_N ? unicode_ranges[r + 1] >> 8 : 0x110000;
        if (start >= 0x10000) break;
        if (end > 0x10000) end = 0x10000;
        for (uint32_t c = start; c < end; c++) g_bmp[c] = (uint8_t)(unicode_ranges[r] & 0xFF);
    }
    ucat_bmp = g_bmp;
}

void unicode_init(void) { pthread_once(&g_once, build_bmp); }

int utf8_encode(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int utf8_partial_len(const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    uint8_t c = s[0];
    int need;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte (Unicode Table 3-7)
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    int k = 1;
    for (; k < need && (size_t)k < n; k++) {
        uint8_t b = s[k];
        if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) break;
    }
    return k;
}
