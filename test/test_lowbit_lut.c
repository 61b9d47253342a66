// The GPU kernels' table search for 8-bit / 4-bit AdamW codes (optim/lowbit_lut.h,
// lowbit_lut_code) against torchao's binary search (lowbit_code8 / lowbit_code4, lowbit.h):
// the same code for every float. Checks: the committed tables equal the ones built here
// from lowbit_code8/4 alone (bisection on the fp32 bit pattern, every bucket's code range
// and threshold); then lowbit_lut_code == lowbit_code8/4 for every pattern within 300 ulps
// of every threshold and every bucket edge, for a stride-251 sweep over all 2^32 patterns
// (17M per map) and for the specials (+-0, +-inf, NaNs, subnormals, +-1, huge).
//   build/test/test_lowbit_lut --all     every one of the 2^32 patterns for each map (~1-2 min
//                                        on 2 cores): the proof that the search is exact
//   build/test/test_lowbit_lut --print   the tables as optim/lowbit_lut.h's macros (regenerate
//                                        the header after a change of a map)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../optim/lowbit.h"
#include "../optim/lowbit_lut.h"
#include "test.h"

typedef struct {
    const char *name;
    const float *q;
    int nq;         // 256 or 16
    int is_signed;  // a table for both signs
    uint32_t lo;
    int shift;
    const uint32_t *committed;
    int n;  // table words
} LutMap;

static const uint32_t g_s8[] = {LOWBIT_LUT_S8}, g_u8[] = {LOWBIT_LUT_U8}, g_s4[] = {LOWBIT_LUT_S4},
                      g_u4[] = {LOWBIT_LUT_U4};

static LutMap g_maps[4];
static int g_printed;  // differences printed so far (at most 10)

static void maps_init(void) {
    const LutMap m[4] = {
        {"s8", lowbit_qmap_s8, 256, 1, LOWBIT_LUT_S8_LO, LOWBIT_LUT_S8_SHIFT, g_s8, LOWBIT_LUT_S8_N},
        {"u8", lowbit_qmap_u8, 256, 0, LOWBIT_LUT_U8_LO, LOWBIT_LUT_U8_SHIFT, g_u8, LOWBIT_LUT_U8_N},
        {"s4", lowbit_qmap_s4, 16, 1, LOWBIT_LUT_S4_LO, LOWBIT_LUT_S4_SHIFT, g_s4, LOWBIT_LUT_S4_N},
        {"u4", lowbit_qmap_u4, 16, 0, LOWBIT_LUT_U4_LO, LOWBIT_LUT_U4_SHIFT, g_u4, LOWBIT_LUT_U4_N},
    };
    memcpy(g_maps, m, sizeof m);
    TEST_CHECK(sizeof g_s8 / 4 == LOWBIT_LUT_S8_N && sizeof g_u8 / 4 == LOWBIT_LUT_U8_N &&
                   sizeof g_s4 / 4 == LOWBIT_LUT_S4_N && sizeof g_u4 / 4 == LOWBIT_LUT_U4_N,
               "lowbit_lut.h: table lengths match their parameters (%zu %zu %zu %zu)", sizeof g_s8 / 4,
               sizeof g_u8 / 4, sizeof g_s4 / 4, sizeof g_u4 / 4);
}

static int ref_code(const LutMap *m, float x) { return m->nq == 256 ? lowbit_code8(x, m->q) : lowbit_code4(x, m->q); }
static int lut_code(const LutMap *m, float x, const uint32_t *t) {
    return lowbit_lut_code(x, t, m->lo, m->shift, m->is_signed);
}

// The table from the reference search alone. Bucket k of a sign holds the magnitudes (bits
// without the sign) [lo + k << shift, lo + (k + 1) << shift), the first down to 0 and the last
// up to infinity (lowbit_lut_code clamps). Its word: the code at the bucket's most negative
// value in the top 8 bits, and where the code steps up by one inside the bucket (the fp32
// search is monotone in x) the threshold's low `shift` bits — for negative values mirrored
// (mask - bits), so that one compare serves both signs; mask + 1 when it does not step.
// Fails on a bucket whose codes differ by more than one, or a step the clamping would hide.
static int build(const LutMap *m, uint32_t *t) {
    const uint32_t nb = LOWBIT_LUT_NB(m->lo, m->shift), mask = (1u << m->shift) - 1u;
    for (int s = 0; s <= m->is_signed; s++)
        for (uint32_t k = 0; k < nb; k++) {
            const uint32_t a0 = k == 0 ? 0u : m->lo + (k << m->shift);
            const uint32_t a1 = k == nb - 1 ? 0x7F800000u : m->lo + ((k + 1) << m->shift) - 1u;
            const uint32_t sb = s ? 0x80000000u : 0u;
            // code at the most negative and the most positive value of the bucket
            const int cneg = ref_code(m, ao_u2f(sb | (s ? a1 : a0))), cpos = ref_code(m, ao_u2f(sb | (s ? a0 : a1)));
            uint32_t w = (uint32_t)cneg << 24 | (mask + 1u);
            if (cpos != cneg) {
                if (cpos != cneg + 1 || k == nb - 1) {
                    printf("  %s: bucket %u of sign %d steps from %d to %d: more table bits needed\n", m->name, k, s, cneg,
                           cpos);
                    return 0;
                }
                // the magnitude r where the code changes: positive, the least with code cpos;
                // negative, the largest with code cpos (codes fall as the magnitude grows)
                uint32_t lo = a0, hi = a1;  // invariant: the answer is in [lo, hi]
                while (lo < hi) {
                    if (!s) {
                        const uint32_t mid = lo + (hi - lo) / 2;
                        if (ref_code(m, ao_u2f(mid)) == cpos) hi = mid;
                        else lo = mid + 1;
                    } else {
                        const uint32_t mid = lo + (hi - lo + 1) / 2;
                        if (ref_code(m, ao_u2f(sb | mid)) == cpos) lo = mid;
                        else hi = mid - 1;
                    }
                }
                // values below lo are clamped to lo: a step there would be lost
                if (k == 0 && (s ? lo < m->lo : lo <= m->lo)) {
                    printf("  %s: sign %d steps at %08x, below the table's %08x\n", m->name, s, lo, m->lo);
                    return 0;
                }
                w = (uint32_t)cneg << 24 | (s ? mask - (lo & mask) : (lo & mask));
            }
            t[s * nb + k] = w;
        }
    return 1;
}

// lut == ref for the bit patterns [u0, u1] with stride `step`; the first differences printed.
// OpenMP only for the long sweeps: thousands of short parallel regions cost more than they save.
static size_t sweep(const LutMap *m, const uint32_t *t, uint64_t u0, uint64_t u1, uint64_t step, size_t *n_checked) {
    size_t bad = 0, n = 0;
    const int64_t last = (int64_t)((u1 - u0) / step);
#pragma omp parallel for reduction(+ : bad, n) schedule(static) if (last > (1 << 20))
    for (int64_t i = 0; i <= last; i++) {
        const uint32_t u = (uint32_t)(u0 + (uint64_t)i * step);
        const float x = ao_u2f(u);
        const int r = ref_code(m, x), l = lut_code(m, x, t);
        n++;
        if (r != l) {
            bad++;
#pragma omp critical
            if (g_printed < 10) {
                g_printed++;
                printf("  %s: %08x (%a): table %d, search %d\n", m->name, u, x, l, r);
            }
        }
    }
    if (n_checked) *n_checked += n;
    return bad;
}

// Every pattern within `w` of u (not wrapping).
static size_t around(const LutMap *m, const uint32_t *t, uint32_t u, uint32_t w, size_t *n) {
    const uint64_t a = u >= w ? u - w : 0, b = (uint64_t)u + w <= 0xFFFFFFFFu ? (uint64_t)u + w : 0xFFFFFFFFu;
    return sweep(m, t, a, b, 1, n);
}

static void test_map(const LutMap *m, int print, int all) {
    uint32_t *t = (uint32_t *)calloc((size_t)m->n, 4);
    const int ok = build(m, t);
    TEST_CHECK(ok, "%s: a table of %d words (shift %d, from %08x) separates every step of the search", m->name, m->n,
               m->shift, m->lo);
    if (!ok) {
        free(t);
        return;
    }
    size_t diff = 0, first = 0;
    for (int i = 0; i < m->n; i++)
        if (t[i] != m->committed[i] && diff++ == 0) first = (size_t)i;
    TEST_CHECK(diff == 0, "%s: optim/lowbit_lut.h's table == the one built from the search (%zu words differ, first "
               "[%zu]: %08x vs %08x; regenerate with --print)", m->name, diff, first, diff ? m->committed[first] : 0,
               diff ? t[first] : 0);
    if (print) {
        printf("#define LOWBIT_LUT_%c%c \\\n", m->name[0] == 's' ? 'S' : 'U', m->name[1]);
        for (int i = 0; i < m->n; i++)
            printf("%s0x%08xu%s", i % 8 == 0 ? "    " : "", t[i], i + 1 == m->n ? "\n\n" : i % 8 == 7 ? ", \\\n" : ", ");
    }
    const uint32_t *c = m->committed;  // what the kernels use
    size_t n = 0, bad = 0;
    // every threshold: each word's step (and the edges of every bucket), both signs
    const uint32_t nb = LOWBIT_LUT_NB(m->lo, m->shift);
    for (uint32_t k = 0; k <= nb; k++) {
        const uint32_t edge = m->lo + (k << m->shift);
        bad += around(m, c, edge, 300, &n) + around(m, c, edge | 0x80000000u, 300, &n);
    }
    for (int s = 0; s <= m->is_signed; s++)
        for (uint32_t k = 0; k < nb; k++) {
            const uint32_t w = c[s * nb + k], low = w & 0xFFFFFFu, mask = (1u << m->shift) - 1u;
            if (low > mask) continue;
            const uint32_t base = k == 0 ? m->lo : m->lo + (k << m->shift);
            const uint32_t r = base + (s ? mask - low : low);
            bad += around(m, c, r | (s ? 0x80000000u : 0u), 300, &n);
        }
    // the search's own decision points: the map entries and the midpoints
    for (int i = 0; i < m->nq; i++) bad += around(m, c, ao_f2u(m->q[i]), 300, &n);
    // specials: +-0, subnormals, +-1, +-inf, NaNs of both signs and several payloads
    const uint32_t sp[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x807FFFFFu, 0x3F800000u, 0xBF800000u,
                           0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u, 0x7FFFFFFFu, 0xFFFFFFFFu,
                           0x7F800001u, 0xFF800001u, 0x7F7FFFFFu, 0xFF7FFFFFu};
    for (size_t i = 0; i < sizeof sp / sizeof *sp; i++) bad += around(m, c, sp[i], 300, &n);
    // a stride-251 sweep over every pattern: 17M values, every bucket hit many times
    bad += sweep(m, c, 0, 0xFFFFFFFFu, 251, &n);
    TEST_CHECK(bad == 0, "%s: lowbit_lut_code == lowbit_code%d for %zu floats (%zu differ)", m->name,
               m->nq == 256 ? 8 : 4, n, bad);
    if (all) {
        size_t na = 0, ba = sweep(m, c, 0, 0xFFFFFFFFu, 1, &na);
        TEST_CHECK(ba == 0 && na == ((size_t)1 << 32), "%s: lowbit_lut_code == lowbit_code%d for all 2^32 floats "
                   "(%zu checked, %zu differ)", m->name, m->nq == 256 ? 8 : 4, na, ba);
        printf("%s: all %zu float bit patterns checked, %zu differ\n", m->name, na, ba);
    }
    free(t);
}

int main(int argc, char **argv) {
    int print = 0, all = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--print")) print = 1;
        else if (!strcmp(argv[i], "--all")) all = 1;
        else FAIL("usage: %s [--print] [--all]", argv[0]);
    }
    maps_init();
    for (int i = 0; i < 4; i++) test_map(&g_maps[i], print, all);
    return test_summary();
}
