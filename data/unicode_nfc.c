// Unicode NFC normalization (UAX #15): canonical decomposition, canonical ordering by combining
// class, canonical composition; Hangul syllables algorithmically. Tables: unicode_nfc_tables.h
// (dev/gen_unicode.py --nfc, Unicode 16.0).
//
// Text is scanned with the NFC quick check; only a region around a character that may change
// (NFC_QC No or Maybe, or a combining mark out of canonical order) is normalized, from the
// last "boundary" character before it (a starter with NFC_QC Yes: nothing composes into it
// from the left, and reordering stops there) to the next boundary after it. ASCII and text
// that is already NFC are never copied.
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "unicode.h"
#include "unicode_nfc_tables.h"

// Per code point info: combining class in bits 0-7, then these flags.
enum {
    NFI_MAYBE = 1 << 8,   // NFC_QC Maybe: may compose with a preceding character
    NFI_NO = 1 << 9,      // NFC_QC No: never in NFC output (excluded decomposable character)
    NFI_DECOMP = 1 << 10, // has an entry in nfc_decomp
    NFI_NEW = 1 << 11,    // assigned after Unicode 9.0 (inert for NFC_HF)
};

#define NFC_SHIFT 7
#define NFC_BLOCK (1u << NFC_SHIFT)
#define N_CP 0x110000u

static uint16_t *g_idx;   // block number per (cp >> NFC_SHIFT); block 0 is all zero
static uint16_t *g_data;  // blocks of NFC_BLOCK infos
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7, L_COUNT = 19, V_COUNT = 21,
       T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT };

static inline uint32_t dec_cp(uint64_t e) { return (uint32_t)(e >> 42); }
static inline uint32_t dec_first(uint64_t e) { return (uint32_t)(e >> 21) & 0x1FFFFF; }
static inline uint32_t dec_second(uint64_t e) { return (uint32_t)e & 0x1FFFFF; }

static void build(void) {
    uint16_t *full = ao_calloc(N_CP, sizeof *full);
    for (size_t r = 0; r < NFC_CCC_RUNS_N; r++) {
        uint32_t a = nfc_ccc_runs[r] >> 8, b = r + 1 < NFC_CCC_RUNS_N ? nfc_ccc_runs[r + 1] >> 8 : N_CP;
        for (uint32_t c = a; c < b; c++) full[c] = (uint16_t)(nfc_ccc_runs[r] & 0xFF);
    }
    for (size_t i = 0; i < NFC_DECOMP_N; i++) full[dec_cp(nfc_decomp[i])] |= NFI_DECOMP | NFI_NO;
    for (size_t i = 0; i < NFC_COMP_N; i++) {
        uint64_t e = nfc_decomp[nfc_comp[i]];
        full[dec_cp(e)] &= (uint16_t)~NFI_NO;  // a primary composite is NFC_QC Yes
        full[dec_second(e)] |= NFI_MAYBE;
    }
    for (uint32_t c = V_BASE; c < V_BASE + V_COUNT; c++) full[c] |= NFI_MAYBE;
    for (uint32_t c = T_BASE + 1; c < T_BASE + T_COUNT; c++) full[c] |= NFI_MAYBE;
    for (size_t r = 0; r < NFC_NEW_SINCE_9_0_N; r++)
        for (uint32_t c = nfc_new_since_9_0[r][0]; c <= nfc_new_since_9_0[r][1]; c++) full[c] |= NFI_NEW;
    size_t nb = N_CP >> NFC_SHIFT, used = 1;
    g_idx = ao_calloc(nb, sizeof *g_idx);
    for (size_t b = 0; b < nb; b++) {
        int zero = 1;
        for (uint32_t k = 0; k < NFC_BLOCK && zero; k++) zero = full[(b << NFC_SHIFT) | k] == 0;
        if (!zero) g_idx[b] = (uint16_t)used++;
    }
    g_data = ao_calloc(used << NFC_SHIFT, sizeof *g_data);
    for (size_t b = 0; b < nb; b++)
        if (g_idx[b]) memcpy(g_data + ((size_t)g_idx[b] << NFC_SHIFT), full + (b << NFC_SHIFT), NFC_BLOCK * 2);
    free(full);
}

// Info of a code point (UTF8_INVALID and code points past U+10FFFF: 0, an inert starter).
static inline unsigned nfc_info(uint32_t cp, int mode) {
    if (cp >= N_CP) return 0;
    unsigned v = g_data[((size_t)g_idx[cp >> NFC_SHIFT] << NFC_SHIFT) | (cp & (NFC_BLOCK - 1))];
    return (mode == NFC_HF && (v & NFI_NEW)) ? 0 : v;
}

static long decomp_find(uint32_t cp) {
    size_t lo = 0, hi = NFC_DECOMP_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint32_t c = dec_cp(nfc_decomp[mid]);
        if (c == cp) return (long)mid;
        if (c < cp) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

// The primary composite of (a, b), or 0.
static uint32_t compose(uint32_t a, uint32_t b, int mode) {
    if (a - L_BASE < L_COUNT && b - V_BASE < V_COUNT) return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a - S_BASE < S_COUNT && (a - S_BASE) % T_COUNT == 0 && b - T_BASE - 1 < T_COUNT - 1) return a + (b - T_BASE);
    size_t lo = 0, hi = NFC_COMP_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint64_t e = nfc_decomp[nfc_comp[mid]];
        uint32_t f = dec_first(e), s = dec_second(e);
        if (f == a && s == b) {
            uint32_t c = dec_cp(e);
            return (mode == NFC_HF && (nfc_info(c, NFC_UNICODE) & NFI_NEW)) ? 0 : c;
        }
        if (f < a || (f == a && s < b)) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

typedef struct {
    uint32_t *cp;
    uint8_t *cc;
    size_t n, cap;
} CpBuf;

static void cp_push(CpBuf *b, uint32_t cp, unsigned cc) {
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->cp = ao_realloc(b->cp, b->cap * sizeof *b->cp);
        b->cc = ao_realloc(b->cc, b->cap);
    }
    b->cp[b->n] = cp;
    b->cc[b->n++] = (uint8_t)cc;
}

// Appends the full canonical decomposition of cp, keeping each run of non-starters in
// canonical order (a stable insertion by combining class).
static void decompose(CpBuf *b, uint32_t cp, int mode) {
    if (cp - S_BASE < S_COUNT) {
        uint32_t s = cp - S_BASE;
        cp_push(b, L_BASE + s / N_COUNT, 0);
        cp_push(b, V_BASE + (s % N_COUNT) / T_COUNT, 0);
        if (s % T_COUNT) cp_push(b, T_BASE + s % T_COUNT, 0);
        return;
    }
    unsigned info = nfc_info(cp, mode);
    if (info & NFI_DECOMP) {
        uint64_t e = nfc_decomp[decomp_find(cp)];
        decompose(b, dec_first(e), mode);
        if (dec_second(e)) decompose(b, dec_second(e), mode);
        return;
    }
    unsigned cc = info & 0xFF;
    cp_push(b, cp, cc);
    if (cc == 0) return;
    for (size_t i = b->n - 1; i > 0 && b->cc[i - 1] > cc; i--) {  // canonical ordering
        uint32_t tc = b->cp[i];
        b->cp[i] = b->cp[i - 1], b->cp[i - 1] = tc;
        uint8_t tk = b->cc[i];
        b->cc[i] = b->cc[i - 1], b->cc[i - 1] = tk;
    }
}

typedef struct {
    uint8_t **buf;
    size_t *cap, n;
} Out;

static void out_put(Out *o, const void *p, size_t n) {
    if (n == 0) return;
    if (o->n + n > *o->cap) {
        size_t c = *o->cap ? *o->cap : 256;
        while (c < o->n + n) c *= 2;
        *o->buf = ao_realloc(*o->buf, c);
        *o->cap = c;
    }
    memcpy(*o->buf + o->n, p, n);
    o->n += n;
}

// Normalizes s[a..e) (a and e at boundaries) and appends it.
static void normalize_region(const uint8_t *s, size_t a, size_t e, int mode, CpBuf *b, Out *o) {
    b->n = 0;
    for (size_t i = a; i < e;) {
        int l;
        uint32_t cp = utf8_decode(s, e, i, &l);
        if (cp == UTF8_INVALID) cp = N_CP + s[i];  // kept byte-exact, an inert starter
        decompose(b, cp, mode);
        i += (size_t)l;
    }
    // Canonical composition: each character joins the last starter unless blocked (a character
    // between them has class 0 or a class >= its own).
    size_t k = 0;
    long starter = -1;
    int last = -1;  // class of the last character kept after the starter; -1: none yet
    for (size_t i = 0; i < b->n; i++) {
        uint32_t cp = b->cp[i];
        int cc = b->cc[i];
        if (starter >= 0 && (last < 0 || (last < cc && cc != 0)) && cp < N_CP &&
            (nfc_info(cp, mode) & NFI_MAYBE)) {
            uint32_t c = compose(b->cp[starter], cp, mode);
            if (c) {
                b->cp[starter] = c;
                continue;
            }
        }
        if (cc == 0) starter = (long)k, last = -1;
        else last = cc;
        b->cp[k] = cp;
        b->cc[k++] = (uint8_t)cc;
    }
    for (size_t i = 0; i < k; i++) {
        char u[4];
        if (b->cp[i] >= N_CP) {
            u[0] = (char)(b->cp[i] - N_CP);
            out_put(o, u, 1);
        } else out_put(o, u, (size_t)utf8_encode(b->cp[i], u));
    }
}

int utf8_nfc(const uint8_t *s, size_t n, int mode, uint8_t **buf, size_t *cap, size_t *out_len) {
    pthread_once(&g_once, build);
    size_t i = 0, boundary = 0, copied = 0;  // copied: s[0..copied) is already in the output
    unsigned last_cc = 0;
    Out o = {buf, cap, 0};
    CpBuf b = {0};
    int changed = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            // ASCII: every byte is a boundary; skip 8 at a time.
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ull) break;
                i += 8;
            }
            while (i < n && s[i] < 0x80) i++;
            boundary = i - 1;
            last_cc = 0;
            continue;
        }
        int l;
        uint32_t cp = utf8_decode(s, n, i, &l);
        unsigned info = cp == UTF8_INVALID ? 0 : nfc_info(cp, mode), cc = info & 0xFF;
        if (!(info & (NFI_MAYBE | NFI_NO)) && (cc == 0 || cc >= last_cc)) {
            if (cc == 0) boundary = i;
            last_cc = cc;
            i += (size_t)l;
            continue;
        }
        // Not quick-check Yes: normalize from the last boundary to the next one.
        size_t e = i + (size_t)l;
        while (e < n) {
            int l2 = 1;
            uint32_t c2 = s[e] < 0x80 ? s[e] : utf8_decode(s, n, e, &l2);
            unsigned i2 = c2 == UTF8_INVALID ? 0 : nfc_info(c2, mode);
            if ((i2 & 0xFF) == 0 && !(i2 & (NFI_MAYBE | NFI_NO))) break;
            e += (size_t)l2;
        }
        changed = 1;
        out_put(&o, s + copied, boundary - copied);
        normalize_region(s, boundary, e, mode, &b, &o);
        copied = e;
        i = boundary = e;
        last_cc = 0;
    }
    free(b.cp);
    free(b.cc);
    if (!changed) return 0;
    out_put(&o, s + copied, n - copied);
    *out_len = o.n;
    return 1;
}
