// GPU SwiGLU on the packed gate/up projection: gu[N, 2F] = [gate | up] per row.
//   out = silu(g) * u,  silu(g) = g / (1 + exp(-g))  (torch's form; g << 0 gives -0, no NaN)
//   dgate = dout * u * s * (1 + g * (1 - s)),  dup = dout * g * s,  s = sigmoid(g)
// Elementwise, fp32 math, one thread per VEC columns of one row; VEC = 8 (128-bit) needs
// F % 8 == 0 and 16-byte aligned tensors, else the scalar instantiation runs.
#include "../common/cuda_utils.cuh"
#include "swiglu.cuh"

template <int VEC>
__global__ void swiglu_forward_kernel(bf16 *out, const bf16 *gu, int N, int F) {
    int groups = F / VEC;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * groups) return;
    int n = (int)(idx / groups), c = (int)(idx % groups) * VEC;
    const bf16 *g = gu + (size_t)n * 2 * F + c;
    float gv[VEC], uv[VEC], o[VEC];
    load_vec<VEC>(gv, g);
    load_vec<VEC>(uv, g + F);
#pragma unroll
    for (int j = 0; j < VEC; j++) o[j] = gv[j] / (1.0f + expf(-gv[j])) * uv[j];
    store_vec<VEC>(out + (size_t)n * F + c, o);
}

template <int VEC>
__global__ void swiglu_backward_kernel(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F) {
    int groups = F / VEC;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * groups) return;
    int n = (int)(idx / groups), c = (int)(idx % groups) * VEC;
    size_t off = (size_t)n * 2 * F + c;
    float gv[VEC], uv[VEC], dy[VEC], dg[VEC], du[VEC];
    load_vec<VEC>(gv, gu + off);
    load_vec<VEC>(uv, gu + off + F);
    load_vec<VEC>(dy, dout + (size_t)n * F + c);
#pragma unroll
    for (int j = 0; j < VEC; j++) {
        float sg = 1.0f / (1.0f + expf(-gv[j]));
        dg[j] = dy[j] * uv[j] * (sg * (1.0f + gv[j] * (1.0f - sg)));
        du[j] = dy[j] * (gv[j] * sg);
    }
    store_vec<VEC>(dgu + off, dg);
    store_vec<VEC>(dgu + off + F, du);
}

void swiglu_forward(bf16 *out, const bf16 *gu, int N, int F, cudaStream_t s) {
    CHECK(N >= 0 && F > 0, "swiglu_forward: bad shape N=%d F=%d", N, F);
    if (N == 0) return;
    const int threads = 256;
    if (F % 8 == 0 && is_aligned16(out) && is_aligned16(gu))
        swiglu_forward_kernel<8><<<(unsigned)ceil_div_sz((size_t)N * (F / 8), threads), threads, 0, s>>>(out, gu, N, F);
    else
        swiglu_forward_kernel<1><<<(unsigned)ceil_div_sz((size_t)N * F, threads), threads, 0, s>>>(out, gu, N, F);
    CUDA_CHECK_LAST();
}

void swiglu_backward(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F, cudaStream_t s) {
    CHECK(N >= 0 && F > 0, "swiglu_backward: bad shape N=%d F=%d", N, F);
    if (N == 0) return;
    const int threads = 256;
    if (F % 8 == 0 && is_aligned16(dgu) && is_aligned16(dout) && is_aligned16(gu))
        swiglu_backward_kernel<8>
            <<<(unsigned)ceil_div_sz((size_t)N * (F / 8), threads), threads, 0, s>>>(dgu, dout, gu, N, F);
    else
        swiglu_backward_kernel<1><<<(unsigned)ceil_div_sz((size_t)N * F, threads), threads, 0, s>>>(dgu, dout, gu, N, F);
    CUDA_CHECK_LAST();
}
