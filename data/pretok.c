#include "pretok.h"

#include "unicode.h"

const char *const PRETOK_PATTERN_GPT2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char *const PRETOK_PATTERN_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char *const PRETOK_PATTERN_QWEN2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// Class of the unit at s[i]: UCAT_* flags; an invalid byte is 0 ("other"), like U+FFFD.
static inline unsigned cls_at(const uint8_t *s, size_t n, size_t i, int *len, uint32_t *cp) {
    uint32_t c = s[i];
    if (c < 0x80) {
        *len = 1;
        *cp = c;
        return ucat_bmp[c];
    }
    c = utf8_decode(s, n, i, len);
    *cp = c;
    return c == UTF8_INVALID ? 0 : ucat(c);
}

#define IS_L(f) ((f)&UCAT_L)
#define IS_N(f) ((f)&UCAT_N)
#define IS_WS(f) ((f)&UCAT_WS)
#define IS_OTHER(f) (!((f) & (UCAT_L | UCAT_N | UCAT_WS)))

// End of the run of units from i whose flags satisfy `mask` test; `other` selects the
// [^\s\p{L}\p{N}] class instead.
static size_t run_end(const uint8_t *s, size_t n, size_t i, unsigned mask, int other) {
    while (i < n) {
        int l;
        uint32_t cp;
        unsigned f = cls_at(s, n, i, &l, &cp);
        if (other ? !IS_OTHER(f) : !(f & mask)) break;
        i += (size_t)l;
    }
    return i;
}

// \s+(?!\S) then \s+, for a whitespace run starting at i (the shared tail of all patterns):
// the greedy run backs off one character when a non-space follows, unless that would leave
// it empty. `nl` asks for the Llama 3 alternative \s*[\r\n]+ first: up to the last \r or \n.
static size_t ws_tail(const uint8_t *s, size_t n, size_t i, int nl) {
    size_t j = i, last_start = i, nl_end = 0;
    int count = 0;
    while (j < n) {
        int l;
        uint32_t cp;
        unsigned f = cls_at(s, n, j, &l, &cp);
        if (!IS_WS(f)) break;
        last_start = j;
        count++;
        j += (size_t)l;
        if (cp == '\r' || cp == '\n') nl_end = j;
    }
    if (nl && nl_end) return nl_end;
    if (j == n) return j;
    if (count >= 2) return last_start;
    return j;
}

static size_t next_gpt2(const uint8_t *s, size_t n, size_t i) {
    uint8_t c = s[i];
    if (c == '\'' && i + 1 < n) {
        uint8_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    int l;
    uint32_t cp;
    unsigned f = cls_at(s, n, i, &l, &cp);
    size_t j = i;
    unsigned g = f;
    if (c == ' ' && i + 1 < n) {  // " ?" takes the space when the class follows it
        int l2;
        uint32_t cp2;
        g = cls_at(s, n, i + 1, &l2, &cp2);
        j = i + 1;
        if (IS_WS(g)) j = i, g = f;
    }
    if (IS_L(g)) return run_end(s, n, j, UCAT_L, 0);
    if (IS_N(g)) return run_end(s, n, j, UCAT_N, 0);
    if (IS_OTHER(g)) return run_end(s, n, j, 0, 1);
    return ws_tail(s, n, i, 0);
}

static inline int fold_eq(uint32_t cp, char lower) {
    return cp == (uint32_t)lower || cp == (uint32_t)(lower - 32);
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d): Oniguruma folds case by Unicode rules, so U+017F (long s,
// folds to s) matches 's too; no other character folds to one of these letters.
static size_t contraction_ci(const uint8_t *s, size_t n, size_t i) {
    size_t p = i + 1;
    if (p >= n) return 0;
    int l1, l2;
    uint32_t a = utf8_decode(s, n, p, &l1);
    if (fold_eq(a, 's') || a == 0x17F || fold_eq(a, 't') || fold_eq(a, 'm') || fold_eq(a, 'd')) return p + (size_t)l1;
    size_t q = p + (size_t)l1;
    if (q >= n) return 0;
    uint32_t b = utf8_decode(s, n, q, &l2);
    if ((fold_eq(a, 'r') && fold_eq(b, 'e')) || (fold_eq(a, 'v') && fold_eq(b, 'e')) ||
        (fold_eq(a, 'l') && fold_eq(b, 'l')))
        return q + (size_t)l2;
    return 0;
}

static size_t next_llama3(const uint8_t *s, size_t n, size_t i, int max_digits) {
    if (s[i] == '\'') {
        size_t e = contraction_ci(s, n, i);
        if (e) return e;
    }
    int l;
    uint32_t cp;
    unsigned f = cls_at(s, n, i, &l, &cp);
    size_t nx = i + (size_t)l;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (IS_L(f)) return run_end(s, n, i, UCAT_L, 0);
    unsigned g = 0;
    int l2 = 0;
    uint32_t cp2 = 0;
    if (nx < n) g = cls_at(s, n, nx, &l2, &cp2);
    if (!IS_N(f) && cp != '\r' && cp != '\n' && nx < n && IS_L(g)) return run_end(s, n, nx, UCAT_L, 0);
    // \p{N}{1,3}
    if (IS_N(f)) {
        size_t j = nx;
        for (int k = 1; k < max_digits && j < n; k++) {
            int l3;
            uint32_t cp3;
            if (!IS_N(cls_at(s, n, j, &l3, &cp3))) break;
            j += (size_t)l3;
        }
        return j;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    size_t start = 0;
    int ok = 0;
    if (IS_OTHER(f)) start = i, ok = 1;
    else if (cp == ' ' && nx < n && IS_OTHER(g)) start = nx, ok = 1;
    if (ok) {
        size_t j = run_end(s, n, start, 0, 1);
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    // \s*[\r\n]+|\s+(?!\S)|\s+
    return ws_tail(s, n, i, 1);
}

// Digits(individual_digits=true) splits first (Rust char::is_numeric = \p{N}); the GPT-2
// regex then runs on each run between digits as on a string of its own, so its lookahead
// (\s+(?!\S)) sees the run's end as the end of the text.
static size_t next_gpt2_digits(const uint8_t *s, size_t n, size_t i) {
    int l;
    uint32_t cp;
    if (IS_N(cls_at(s, n, i, &l, &cp))) return i + (size_t)l;
    size_t seg = i;
    while (seg < n && !IS_N(cls_at(s, n, seg, &l, &cp))) seg += (size_t)l;
    return next_gpt2(s, seg, i);
}

size_t pretok_next(PretokKind kind, const uint8_t *s, size_t n, size_t i) {
    switch (kind) {
        case PRETOK_GPT2: return next_gpt2(s, n, i);
        case PRETOK_GPT2_DIGITS: return next_gpt2_digits(s, n, i);
        case PRETOK_LLAMA3: return next_llama3(s, n, i, 3);
        case PRETOK_QWEN2: return next_llama3(s, n, i, 1);
        case PRETOK_NONE: break;
    }
    return n;
}
