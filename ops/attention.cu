// Public entry of the GPU attention op (ops/attention.cuh): validates the call, picks cuDNN
// SDPA (ops/attention_cudnn.cu) or the hand-written kernels, and holds the scalar fp32 path
// that the hand-written implementation uses for head dims without a tensor-core kernel
// (ops/attention_kernel.cu does hd 64 and 128).
#include "attention.cuh"

#include <math.h>
#include <stdint.h>

#include "attention_impl.cuh"

// ---- scalar fp32 path: any even hd <= 128 ------------------------------------------------------
// One warp per row, lane holding elements d = lane + 32*i; dot products are warp reductions.
// O(T) dependent steps per row: correct and deterministic, slow; meant for odd shapes.
namespace {
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
constexpr int GEN_WARPS = 4;
__device__ __forceinline__ void load_row(float (&x)[4], const bf16 *p, int hd, int lane) {
#pragma unroll
    for (int i = 0; i < 4; i++) x[i] = lane + 32 * i < hd ? __bfloat162float(p[lane + 32 * i]) : 0.f;
}
__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
    for (int k = 16; k; k >>= 1) s += __shfl_xor_sync(0xffffffffu, s, k);
    return s;
}
__device__ __forceinline__ float dot4(const float (&a)[4], const float (&b)[4]) {
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
}
__device__ __forceinline__ void store_row(bf16 *p, const float (&x)[4], float mul, int hd, int lane) {
#pragma unroll
    for (int i = 0; i < 4; i++)
        if (lane + 32 * i < hd) p[lane + 32 * i] = __float2bfloat16(x[i] * mul);
}

// Row (b, h, t) = warp id; online softmax over keys 0..t.
__global__ void attention_forward_generic_kernel(bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H, int KV,
                                                 int hd, float scale_log2) {
    const int w = blockIdx.x * GEN_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (w >= B * H * T) return;
    const int t = w % T, h = (w / T) % H, b = w / (T * H), kvh = h / (H / KV), rs = (H + 2 * KV) * hd;
    const bf16 *base = qkv + (size_t)b * T * rs;
    float q[4], k[4], v[4], acc[4] = {0.f, 0.f, 0.f, 0.f}, m = -INFINITY, l = 0.f;
    load_row(q, base + (size_t)t * rs + h * hd, hd, lane);
    for (int s = 0; s <= t; s++) {
        load_row(k, base + (size_t)s * rs + (H + kvh) * hd, hd, lane);
        load_row(v, base + (size_t)s * rs + (H + KV + kvh) * hd, hd, lane);
        const float x = warp_sum(dot4(q, k)) * scale_log2, mn = fmaxf(m, x);
        const float al = exp2f(m - mn), p = exp2f(x - mn);  // m = -inf at s = 0: al = 0
        l = l * al + p;
#pragma unroll
        for (int i = 0; i < 4; i++) acc[i] = acc[i] * al + p * v[i];
        m = mn;
    }
    store_row(out + ((size_t)b * T + t) * H * hd + h * hd, acc, 1.f / l, hd, lane);
    if (lane == 0) lse[((size_t)b * H + h) * T + t] = (m + log2f(l)) * LN2;
}

// dQ of row (b, h, t): sum over keys s <= t.
__global__ void attention_backward_dq_generic_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse,
                                                     const float *D, int B, int T, int H, int KV, int hd,
                                                     float scale_log2, float scale) {
    const int w = blockIdx.x * GEN_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (w >= B * H * T) return;
    const int t = w % T, h = (w / T) % H, b = w / (T * H), kvh = h / (H / KV), rs = (H + 2 * KV) * hd;
    const bf16 *base = qkv + (size_t)b * T * rs;
    const size_t li = ((size_t)b * H + h) * T + t;
    const float L = lse[li] * LOG2E, Dt = D[li];
    float q[4], o[4], k[4], v[4], dq[4] = {0.f, 0.f, 0.f, 0.f};
    load_row(q, base + (size_t)t * rs + h * hd, hd, lane);
    load_row(o, dout + ((size_t)b * T + t) * H * hd + h * hd, hd, lane);
    for (int s = 0; s <= t; s++) {
        load_row(k, base + (size_t)s * rs + (H + kvh) * hd, hd, lane);
        load_row(v, base + (size_t)s * rs + (H + KV + kvh) * hd, hd, lane);
        const float p = exp2f(warp_sum(dot4(q, k)) * scale_log2 - L);
        const float ds = p * (warp_sum(dot4(o, v)) - Dt);
#pragma unroll
        for (int i = 0; i < 4; i++) dq[i] += ds * k[i];
    }
    store_row(dqkv + ((size_t)b * T + t) * rs + h * hd, dq, scale, hd, lane);
}

// dK, dV of key row (b, kvh, s): sum over the group's query heads (in order) and rows t >= s.
__global__ void attention_backward_dkdv_generic_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv,
                                                       const float *lse, const float *D, int B, int T, int H, int KV,
                                                       int hd, float scale_log2, float scale) {
    const int w = blockIdx.x * GEN_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (w >= B * KV * T) return;
    const int s = w % T, kvh = (w / T) % KV, b = w / (T * KV), group = H / KV, rs = (H + 2 * KV) * hd;
    const bf16 *base = qkv + (size_t)b * T * rs;
    float k[4], v[4], q[4], o[4], dk[4] = {0.f, 0.f, 0.f, 0.f}, dv[4] = {0.f, 0.f, 0.f, 0.f};
    load_row(k, base + (size_t)s * rs + (H + kvh) * hd, hd, lane);
    load_row(v, base + (size_t)s * rs + (H + KV + kvh) * hd, hd, lane);
    for (int h = kvh * group; h < (kvh + 1) * group; h++)
        for (int t = s; t < T; t++) {
            const size_t li = ((size_t)b * H + h) * T + t;
            load_row(q, base + (size_t)t * rs + h * hd, hd, lane);
            load_row(o, dout + ((size_t)b * T + t) * H * hd + h * hd, hd, lane);
            const float p = exp2f(warp_sum(dot4(q, k)) * scale_log2 - lse[li] * LOG2E);
            const float ds = p * (warp_sum(dot4(o, v)) - D[li]);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                dv[i] += p * o[i];
                dk[i] += ds * q[i];
            }
        }
    bf16 *row = dqkv + ((size_t)b * T + s) * rs;
    store_row(row + (H + kvh) * hd, dk, scale, hd, lane);
    store_row(row + (H + KV + kvh) * hd, dv, 1.f, hd, lane);
}

}  // namespace

static void forward_kernel_impl(GpuCtx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H, int KV,
                                int hd) {
    if (attention_forward_mma(ctx, out, lse, qkv, B, T, H, KV, hd)) return;
    const float scale_log2 = (float)(1.0 / sqrt((double)hd)) * LOG2E;
    attention_forward_generic_kernel<<<ceil_div(B * H * T, GEN_WARPS), GEN_WARPS * 32, 0, ctx->stream>>>(
        out, lse, qkv, B, T, H, KV, hd, scale_log2);
    CUDA_CHECK_LAST();
}

static void backward_kernel_impl(GpuCtx *ctx, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                                 const float *lse, int B, int T, int H, int KV, int hd) {
    if (attention_backward_mma(ctx, dqkv, dout, qkv, out, lse, B, T, H, KV, hd)) return;
    const float scale = (float)(1.0 / sqrt((double)hd)), scale_log2 = scale * LOG2E;
    gpu_ctx_cudnn_workspace(ctx, (size_t)B * H * T * sizeof(float));
    float *D = (float *)ctx->cudnn_workspace;
    attention_backward_d(ctx, D, dout, out, B, T, H, hd);
    attention_backward_dq_generic_kernel<<<ceil_div(B * H * T, GEN_WARPS), GEN_WARPS * 32, 0, ctx->stream>>>(
        dqkv, dout, qkv, lse, D, B, T, H, KV, hd, scale_log2, scale);
    CUDA_CHECK_LAST();
    attention_backward_dkdv_generic_kernel<<<ceil_div(B * KV * T, GEN_WARPS), GEN_WARPS * 32, 0, ctx->stream>>>(
        dqkv, dout, qkv, lse, D, B, T, H, KV, hd, scale_log2, scale);
    CUDA_CHECK_LAST();
}

// ---- dispatch ----------------------------------------------------------------------------------
static void check_args(const char *what, int B, int T, int H, int KV, int hd) {
    CHECK(B >= 1 && T >= 1, "%s: B (%d) and T (%d) must be >= 1", what, B, T);
    CHECK(H >= 1 && KV >= 1 && H % KV == 0, "%s: n_heads (%d) must be a positive multiple of n_kv_heads (%d)", what,
          H, KV);
    CHECK(hd >= 2 && hd <= 128 && hd % 2 == 0, "%s: head_dim %d unsupported (even, 2..128)", what, hd);
}

int attention_cudnn_supported(const GpuCtx *ctx, int hd) { return attention_cudnn_available(ctx, hd); }

// ATTN_AUTO: cuDNN when the context allows it and the shape is supported; if cuDNN cannot
// build a plan for a shape it claims to support, warn once and use the kernel (the two
// write the same lse, so a mixed forward/backward pair is still consistent).
static int use_cudnn(const GpuCtx *ctx, int hd, AttnImpl impl, const char *what) {
    if (impl == ATTN_KERNEL) return 0;
    int ok = attention_cudnn_supported(ctx, hd);
    if (impl == ATTN_CUDNN) {
#ifdef LLAMA_AO_CUDNN
        const char *build = "";
#else
        const char *build = "; this binary was built without cuDNN (no cudnn.h at build time)";
#endif
        CHECK(ok, "%s: impl=cuDNN requested but cuDNN SDPA does not support this setup (head_dim %d: needs %% 8 == 0 "
                  "and <= 128, an sm_80+ GPU, cuDNN >= 9)%s",
              what, hd, build);
        return 1;
    }
    CHECK(impl == ATTN_AUTO, "%s: unknown impl %d", what, (int)impl);
    return ok && ctx->use_cudnn;
}

const char *attention_backward_path(GpuCtx *ctx, int B, int T, int H, int KV, int hd, AttnImpl impl) {
    if (impl == ATTN_KERNEL || !ctx->use_cudnn || !attention_cudnn_supported(ctx, hd)) return "kernel";
    return attention_cudnn_plan_ok(ctx, B, T, H, KV, hd, 1) ? "cuDNN" : "kernel";
}

void attention_forward(GpuCtx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H, int KV, int hd,
                       AttnImpl impl) {
    check_args("attention_forward", B, T, H, KV, hd);
    if (use_cudnn(ctx, hd, impl, "attention_forward")) {
        const char *why = "";
        if (attention_forward_cudnn(ctx, out, lse, qkv, B, T, H, KV, hd, &why)) return;
        CHECK(impl != ATTN_CUDNN, "attention_forward: cuDNN SDPA failed for B=%d T=%d H=%d KV=%d hd=%d: %s", B, T, H,
              KV, hd, why);
        static int warned = 0;
        if (!warned++) ao_warn("attention_forward: cuDNN SDPA unavailable (%s); using the flash-attention kernel", why);
    }
    forward_kernel_impl(ctx, out, lse, qkv, B, T, H, KV, hd);
}

void attention_backward(GpuCtx *ctx, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                        const float *lse, int B, int T, int H, int KV, int hd, AttnImpl impl) {
    check_args("attention_backward", B, T, H, KV, hd);
    if (use_cudnn(ctx, hd, impl, "attention_backward")) {
        const char *why = "";
        if (attention_backward_cudnn(ctx, dqkv, dout, qkv, out, lse, B, T, H, KV, hd, &why)) return;
        CHECK(impl != ATTN_CUDNN, "attention_backward: cuDNN SDPA failed for B=%d T=%d H=%d KV=%d hd=%d: %s", B, T, H,
              KV, hd, why);
        static int warned = 0;
        if (!warned++)
            ao_warn("attention_backward: cuDNN SDPA unavailable (%s); using the flash-attention kernel", why);
    }
    backward_kernel_impl(ctx, dqkv, dout, qkv, out, lse, B, T, H, KV, hd);
}
