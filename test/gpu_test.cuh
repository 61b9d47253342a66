// Helpers shared by the GPU test programs: one compute stream, device allocation, and
// copies that go through that stream (created non-blocking, so it does not order with the
// legacy default stream) and are complete when they return.
#pragma once
#include <setjmp.h>
#include <stdio.h>

#include <functional>

#include "../common/error.h"
#include "../common/gpu.h"

static cudaStream_t g_s;  // set by each program's main to its context's stream

// n elements plus 64 bytes of slack, so tests can offset pointers to misalign them.
template <class T> static T *dalloc(size_t n) {
    T *p;
    CUDA_CHECK(cudaMalloc(&p, (n ? n : 1) * sizeof(T) + 64));
    return p;
}
static inline void h2d(void *d, const void *h, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, g_s));
    CUDA_CHECK(cudaStreamSynchronize(g_s));
}
static inline void d2h(void *h, const void *d, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, g_s));
    CUDA_CHECK(cudaStreamSynchronize(g_s));
}
// n fp32 / bf16 values on the device as newly allocated host floats (the caller frees them).
static inline float *d2h_f32(const void *d, size_t n) {
    float *h = (float *)ao_malloc((n ? n : 1) * sizeof(float));
    d2h(h, d, n * sizeof(float));
    return h;
}
static inline float *d2h_bf16_f32(const void *d, size_t n) {
    __nv_bfloat16 *t = (__nv_bfloat16 *)ao_malloc((n ? n : 1) * sizeof(__nv_bfloat16));
    d2h(t, d, n * sizeof(__nv_bfloat16));
    float *h = (float *)ao_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = __bfloat162float(t[i]);
    free(t);
    return h;
}
// The bf16 rounding of x, as a float (inputs are made bf16-exact so both sides see them).
static inline float bf16r(float x) { return __bfloat162float(__float2bfloat16(x)); }

// Guarded calls: the library fails through ao_fail; inside guarded() a failure becomes a return
// of 0 with the message in g_fail_msg (for a failed check or an expected refusal) instead of
// ending the program, so one run reports every case. Not reentrant.
inline jmp_buf g_fail_jb;
inline char g_fail_msg[2048];
inline void guarded_on_fail(const char *msg) {
    snprintf(g_fail_msg, sizeof g_fail_msg, "%s", msg);
    longjmp(g_fail_jb, 1);
}
inline int guarded(const std::function<void()> &f) {
    g_fail_msg[0] = 0;
    ao_fail_handler old = ao_set_fail_handler(guarded_on_fail);
    if (setjmp(g_fail_jb) == 0) {
        f();
        ao_set_fail_handler(old);
        return 1;
    }
    ao_set_fail_handler(old);
    return 0;
}
