// GPU inference (see infer_gpu.h). Each op mirrors model/infer_cpu.c: RMSNorm (sum of
// squares in double), q/k/v (+ bias), rotate-half RoPE with cos/sin of the fp32 angle
// computed in double, causal GQA attention over the cache, o_proj + residual, RMSNorm,
// SwiGLU MLP + residual, final norm, lm_head. q/k/v and gate/up are fused into one GEMV
// each when their formats agree. A forward of more than gemm_tokens tokens (or a batched decode
// step past decode_gemm_rows) runs the linears as bf16 GEMMs (infer_gpu_prefill.cu); attention
// and everything else is the same code.
// KV cache formats: fp32, bf16, or e4m3 (kv_fp8) with one fp32 scale per (layer, sequence,
// position, KV head) = amax / 448 of that head vector, set when the vector is written: no
// calibration, and an outlier in one position or head costs no precision elsewhere (4 bytes
// per head_dim codes: 3% at head_dim 128).
#include "infer_gpu.h"

#include <cuda_fp8.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/gpu.h"
#include "../ops/rope.h"
#include "safetensors.h"
#include "../quant/qgemv.cuh"
#include "infer_gpu_prefill.cuh"

#define ATT_WARPS 4
#define ATT_GQ 8       // query heads of one KV head handled per block
#define MAX_GRAPHS 65  // decode graphs, one per sequence count

typedef struct {
    float *ln1, *ln2;
    QWeightGpu qkv[3];  // fused: qkv[0] only (n_qkv = 1)
    QWeightGpu gu[2];   // fused: gu[0] only
    QWeightGpu wo, wd;
    int n_qkv, n_gu;
} GpuLayer;

struct InferGpu {
    LlamaConfig cfg;
    InferGpuOpts o;
    cudaStream_t st;
    char name[256];
    int n_sm;
    GpuLayer *layers;
    QWeightGpu lm_head;
    void *wte;
    int wte_f32;
    float *norm_f;
    float2 *rope;  // [max_T, hd/2] (cos, sin) of position x inv_freq, as the CPU computes them
    void *kc, *vc;     // [L, n_seq, max_T, KVD]
    float *ksc, *vsc;  // fp8 KV: scales [L, n_seq, max_T, KV]
    size_t kv_bytes;
    int kvel;          // bytes per cached value: 4, 2 or 1
    PrefillGemm pf;    // the prefill GEMMs (when max_batch > gemm_tokens, or batched decode GEMMs)
    int has_pf, gemm_tokens;
    int gemm_min_rows;  // the fewest rows at which some linear of the model runs as a GEMM (0: none)
    int fuse, pdl_ok;  // RMSNorm / SwiGLU folded into the GEMVs' preps; PDL launches (opts.unfused)
    int pdl;           // the forward being enqueued launches as programmatic dependents
    // scratch, max_rows = n_seq * max_batch
    int max_rows, nsplit_cap;
    float *x, *ln, *qkv, *att, *gu, *act, *logits;
    float *part_o, *part_ml;
    QActScratch act_s;
    int32_t *d_tok, *h_tok;
    int *d_pos, *h_pos;
    float *h_logits;
    int pos;
    size_t weight_bytes, step_bytes, alloc_bytes, rounded;
    cudaGraphExec_t graph[MAX_GRAPHS];
};

// Rows (sequences x tokens) from which a linear of this weight format runs as a GEMM in a forward
// of at most gemm_tokens tokens per sequence (InferGpuOpts.decode_gemm_rows); 0: never.
static int decode_gemm_threshold(const InferGpu *g, QuantMode mode) {
    const int R = g->o.decode_gemm_rows;
    if (R <= 0 || mode == QUANT_INT4) return 0;
    return mode == QUANT_NONE ? R : 4 * R;
}

// f(w, acc, lm) for every linear of the model: acc where the forward adds its output into the
// residual (o_proj, down_proj), lm for the lm_head.
template <typename F> static void each_linear(const InferGpu *g, F f) {
    for (int l = 0; l < g->cfg.n_layers; l++) {
        const GpuLayer *gl = &g->layers[l];
        for (int i = 0; i < gl->n_qkv; i++) f(&gl->qkv[i], 0, 0);
        for (int i = 0; i < gl->n_gu; i++) f(&gl->gu[i], 0, 0);
        f(&gl->wo, 1, 0), f(&gl->wd, 1, 0);
    }
    f(&g->lm_head, 0, 1);
}

static void *galloc(InferGpu *g, size_t bytes) {
    void *p = qgemv_dev_alloc(bytes, g->alloc_bytes);
    g->alloc_bytes += bytes;
    return p;
}

static void *gupload(InferGpu *g, const void *h, size_t bytes) {
    void *d = qgemv_dev_upload(h, bytes, g->alloc_bytes);
    g->alloc_bytes += bytes;
    return d;
}

static QWeightGpu upload_linear(InferGpu *g, const QTensor *const *parts, const float *const *biases, int np) {
    QWeightGpu w = qweight_upload(parts, biases, np, &g->rounded);
    const size_t b = qweight_bytes(&w);
    g->weight_bytes += b, g->step_bytes += b, g->alloc_bytes += b;
    return w;
}

static float *upload_f32(InferGpu *g, const float *h, size_t n) {
    float *d = (float *)gupload(g, h, n * sizeof(float));
    g->weight_bytes += n * sizeof(float);
    g->step_bytes += n * sizeof(float);
    return d;
}

// ---- kernels -------------------------------------------------------------------------------
// Every kernel of a forward starts with pdl_launch_dependents(); pdl_wait(): launched as a
// programmatic dependent (InferGpu.pdl) it may be resident before the previous kernel ends and
// lets the next one launch early too; it touches no memory before the previous kernel is done.
__global__ void embed_kernel(float *x, const int32_t *tok, const void *wte, int wte_f32, int D) {
    pdl_launch_dependents();
    pdl_wait();
    const size_t base = (size_t)tok[blockIdx.x] * D;
    float *xr = x + (size_t)blockIdx.x * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        xr[d] = wte_f32 ? ((const float *)wte)[base + d] : __bfloat162float(((const bf16 *)wte)[base + d]);
}

template <typename KT> __device__ __forceinline__ KT to_kv(float v);
template <> __device__ __forceinline__ float to_kv<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 to_kv<bf16>(float v) { return __float2bfloat16(v); }
__device__ __forceinline__ float kv_f(float v) { return v; }
__device__ __forceinline__ float kv_f(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float kv_f(uint8_t b) {  // e4m3fn code, exact (satfinite codes: no NaN)
    const float f = __uint_as_float(((uint32_t)b & 0x7Fu) << 20) * 0x1p120f;
    return (b & 0x80u) ? -f : f;
}

// The rotation of a pair as rope_forward_cpu computes it: two rounded products, then the sum
// (no contraction into an fma, so every RoPE kernel here gives the CPU's bits).
__device__ __forceinline__ float rot0(float x0, float x1, float2 cs) { return __fsub_rn(__fmul_rn(x0, cs.x), __fmul_rn(x1, cs.y)); }
__device__ __forceinline__ float rot1(float x0, float x1, float2 cs) { return __fadd_rn(__fmul_rn(x1, cs.x), __fmul_rn(x0, cs.y)); }

// RoPE on q and k of row r (sequence r / n, position pos + r % n), in place in the qkv
// buffer [rows, QD + 2 KVD], k and v then written to the cache. Grid (pairs / 256, rows): one
// thread per rotated pair (q and k heads) or per pair of v values.
template <typename KT>
__global__ void rope_kv_kernel(float *qkv, KT *kc, KT *vc, const float2 *rope, const int *d_pos, int n, int H,
                               int KV, int hd, int max_T) {
    pdl_launch_dependents();
    pdl_wait();
    const int r = blockIdx.y, b = r / n, pos = *d_pos + r % n, h2 = hd / 2;
    const int QD = H * hd, KVD = KV * hd;
    float *row = qkv + (size_t)r * (QD + 2 * KVD);
    const size_t cache = ((size_t)b * max_T + pos) * KVD;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x, nrot = (H + KV) * h2;
    if (idx < nrot) {
        const int head = idx / h2, i = idx % h2;
        const float2 cs = rope[(size_t)pos * h2 + i];
        float *p = row + (size_t)head * hd;  // k heads follow the q heads
        const float x0 = p[i], x1 = p[i + h2];
        const float y0 = rot0(x0, x1, cs), y1 = rot1(x0, x1, cs);
        if (head < H) {
            p[i] = y0, p[i + h2] = y1;
        } else {
            const size_t o = cache + (size_t)(head - H) * hd + i;
            kc[o] = to_kv<KT>(y0), kc[o + h2] = to_kv<KT>(y1);
        }
    } else if (idx < nrot + KVD / 2) {
        const int j = 2 * (idx - nrot);
        vc[cache + j] = to_kv<KT>(row[QD + KVD + j]);
        vc[cache + j + 1] = to_kv<KT>(row[QD + KVD + j + 1]);
    }
}

// As rope_kv_kernel with an e4m3 cache: block r = one row; q's pairs rotated in place, then
// one warp per k or v head vector: its amax gives the scale s = amax / 448 and the codes
// e4m3(x / s) (round to nearest even, saturating: x / s is within +-448 up to the division's
// rounding). Lane l holds the pairs (i, i + hd/2), i = l + 32 j (head_dim <= 256).
__global__ void rope_kv_fp8_kernel(float *qkv, uint8_t *kc, uint8_t *vc, float *ksc, float *vsc, const float2 *rope,
                                   const int *d_pos, int n, int H, int KV, int hd, int max_T) {
    pdl_launch_dependents();
    pdl_wait();
    const int r = blockIdx.x, b = r / n, pos = *d_pos + r % n, h2 = hd / 2;
    const int QD = H * hd, KVD = KV * hd;
    float *row = qkv + (size_t)r * (QD + 2 * KVD);
    const float2 *cs = rope + (size_t)pos * h2;
    for (int idx = threadIdx.x; idx < H * h2; idx += blockDim.x) {
        const int i = idx % h2;
        float *p = row + (size_t)(idx / h2) * hd;
        const float x0 = p[i], x1 = p[i + h2];
        p[i] = rot0(x0, x1, cs[i]), p[i + h2] = rot1(x0, x1, cs[i]);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const size_t slot = (size_t)b * max_T + pos;
    for (int task = warp; task < 2 * KV; task += nw) {
        const int isv = task >= KV, h = isv ? task - KV : task;
        const float *src = row + QD + (size_t)task * hd;  // k heads, then v heads
        float y0[4], y1[4], amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int i = lane + 32 * j;
            y0[j] = y1[j] = 0.0f;
            if (i < h2) {
                const float x0 = src[i], x1 = src[i + h2];
                if (isv) y0[j] = x0, y1[j] = x1;
                else y0[j] = rot0(x0, x1, cs[i]), y1[j] = rot1(x0, x1, cs[i]);
                amax = fmaxf(amax, fmaxf(fabsf(y0[j]), fabsf(y1[j])));
            }
        }
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float s = amax / 448.0f;
        uint8_t *dst = (isv ? vc : kc) + slot * KVD + (size_t)h * hd;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int i = lane + 32 * j;
            if (i < h2) {
                dst[i] = s > 0.0f ? (uint8_t)__nv_cvt_float_to_fp8(y0[j] / s, __NV_SATFINITE, __NV_E4M3) : 0;
                dst[i + h2] = s > 0.0f ? (uint8_t)__nv_cvt_float_to_fp8(y1[j] / s, __NV_SATFINITE, __NV_E4M3) : 0;
            }
        }
        if (lane == 0) (isv ? vsc : ksc)[slot * KV + h] = s;
    }
}

// Split-KV attention: block (KV head x head chunk, split, query row) covers one slice of the
// causal range of its query and leaves an unnormalised partial (max, sum, sum p v). An e4m3
// cache (KT uint8_t) applies the key's scale to the finished dot product and the value's to p.
template <typename KT, int E>
__global__ __launch_bounds__(ATT_WARPS * 32) void attn_split_kernel(float *part_o, float *part_ml, const float *qkv,
                                                                     const KT *kc, const KT *vc, const float *ksc,
                                                                     const float *vsc, const int *d_pos, int n, int H,
                                                                     int KV, int hd, int max_T, int nsplit, float scale) {
    constexpr bool F8 = sizeof(KT) == 1;
    extern __shared__ float sm[];  // [ATT_WARPS][ATT_GQ][2 + hd]
    pdl_launch_dependents();
    pdl_wait();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gq = H / KV, nhc = (gq + ATT_GQ - 1) / ATT_GQ;
    const int kvh = blockIdx.x / nhc, hc = blockIdx.x % nhc, split = blockIdx.y, r = blockIdx.z;
    const int h0 = kvh * gq + hc * ATT_GQ, nh = min(ATT_GQ, gq - hc * ATT_GQ);
    const int b = r / n, len = *d_pos + r % n + 1;
    const int chunk = (len + nsplit - 1) / nsplit, t0 = split * chunk, t1 = min(len, t0 + chunk);
    const int QD = H * hd, KVD = KV * hd;
    const float *qrow = qkv + (size_t)r * (QD + 2 * KVD);
    float q[ATT_GQ][E], o[ATT_GQ][E], m[ATT_GQ], l[ATT_GQ];
#pragma unroll
    for (int h = 0; h < ATT_GQ; h++) {
        m[h] = -INFINITY, l[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int d = lane * E + e;
            q[h][e] = (h < nh && d < hd) ? qrow[(size_t)(h0 + h) * hd + d] : 0.0f;
            o[h][e] = 0.0f;
        }
    }
    const KT *kb = kc + (size_t)b * max_T * KVD + (size_t)kvh * hd, *vb = vc + (size_t)b * max_T * KVD + (size_t)kvh * hd;
    for (int t = t0 + warp; t < t1; t += ATT_WARPS) {
        float kv[E], vv[E];
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int d = lane * E + e;
            kv[e] = d < hd ? kv_f(kb[(size_t)t * KVD + d]) : 0.0f;
            vv[e] = d < hd ? kv_f(vb[(size_t)t * KVD + d]) : 0.0f;
        }
        float sk = 1.0f, sv = 1.0f;
        if constexpr (F8) {
            const size_t si = ((size_t)b * max_T + t) * KV + kvh;
            sk = __ldg(ksc + si), sv = __ldg(vsc + si);
        }
#pragma unroll
        for (int h = 0; h < ATT_GQ; h++) {
            if (h >= nh) break;
            float s = 0.0f;
#pragma unroll
            for (int e = 0; e < E; e++) s = fmaf(q[h][e], kv[e], s);
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
            if constexpr (F8) s *= sk;
            s *= scale;
            const float mn = fmaxf(m[h], s), corr = expf(m[h] - mn), p = expf(s - mn);
            l[h] = l[h] * corr + p;
            const float pv = F8 ? p * sv : p;
#pragma unroll
            for (int e = 0; e < E; e++) o[h][e] = fmaf(pv, vv[e], o[h][e] * corr);
            m[h] = mn;
        }
    }
    // merge the warps
    const int stride = 2 + hd;
    for (int h = 0; h < nh; h++) {
        float *s = sm + ((size_t)warp * ATT_GQ + h) * stride;
        if (lane == 0) s[0] = m[h], s[1] = l[h];
#pragma unroll
        for (int e = 0; e < E; e++)
            if (lane * E + e < hd) s[2 + lane * E + e] = o[h][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nh * (hd + 1); idx += blockDim.x) {
        const int h = idx / (hd + 1), d = idx % (hd + 1) - 1;  // d = -1: the (max, sum) pair
        float M = -INFINITY;
        for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm[((size_t)w * ATT_GQ + h) * stride]);
        float acc = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) {
            const float *s = sm + ((size_t)w * ATT_GQ + h) * stride;
            const float f = s[0] == -INFINITY ? 0.0f : expf(s[0] - M);
            acc += f * (d < 0 ? s[1] : s[2 + d]);
        }
        const size_t pi = ((size_t)r * H + h0 + h) * nsplit + split;
        if (d < 0) part_ml[2 * pi] = M, part_ml[2 * pi + 1] = acc;
        else part_o[pi * hd + d] = acc;
    }
}

__global__ void attn_combine_kernel(float *out, const float *part_o, const float *part_ml, int H, int hd, int nsplit) {
    __shared__ float wgt[64];  // per split: exp(m_s - M) / L (0 for empty splits)
    pdl_launch_dependents();
    pdl_wait();
    const int rh = blockIdx.x;  // row * H + head
    const float *ml = part_ml + 2 * (size_t)rh * nsplit;
    if (threadIdx.x < 32) {
        float M = -INFINITY;
        for (int s = threadIdx.x; s < nsplit; s += 32) M = fmaxf(M, ml[2 * s]);
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        float L = 0.0f;
        for (int s = threadIdx.x; s < nsplit; s += 32) {
            const float f = ml[2 * s] == -INFINITY ? 0.0f : expf(ml[2 * s] - M);
            wgt[s] = f;
            L += f * ml[2 * s + 1];
        }
        for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
        const float inv = 1.0f / L;
        for (int s = threadIdx.x; s < nsplit; s += 32) wgt[s] *= inv;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
#pragma unroll 8
        for (int s = 0; s < nsplit; s++) acc += part_o[((size_t)rh * nsplit + s) * hd + d] * wgt[s];
        out[(size_t)rh * hd + d] = acc;
    }
}

// ---- host side -------------------------------------------------------------------------------
extern "C" int infer_gpu_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

static int att_e(int hd) { return hd <= 32 ? 1 : hd <= 64 ? 2 : hd <= 128 ? 4 : 8; }

static int nsplit_for(const InferGpu *g, int rows) {
    const LlamaConfig *c = &g->cfg;
    const int gq = c->n_heads / c->n_kv_heads, nhc = (gq + ATT_GQ - 1) / ATT_GQ;
    const int blocks = c->n_kv_heads * nhc * rows;
    int ns = (2 * g->n_sm + blocks - 1) / blocks;
    if (ns > 64) ns = 64;
    if (ns > g->o.max_T) ns = g->o.max_T;
    return ns < 1 ? 1 : ns;
}

extern "C" InferGpu *infer_gpu_create(const InferModel *im, const InferGpuOpts *opts) {
    const LlamaConfig *c = &im->cfg;
    CHECK(infer_gpu_count() > opts->device, "-d cuda: no CUDA GPU %d here (%d found); use -d cpu", opts->device,
          infer_gpu_count());
    CHECK(opts->max_T > 0 && opts->max_batch > 0 && opts->n_seq > 0 && opts->n_seq < MAX_GRAPHS,
          "GPU inference: context %d, batch %d, sequences %d out of range", opts->max_T, opts->max_batch, opts->n_seq);
    CHECK(c->head_dim <= 256 && c->head_dim % 2 == 0, "GPU inference: head_dim %d is not supported (even, <= 256)",
          c->head_dim);
    CHECK(!(opts->kv_f32 && opts->kv_fp8), "GPU inference: the KV cache is fp32 or fp8, not both");
    InferGpu *g = (InferGpu *)ao_calloc(1, sizeof *g);
    g->cfg = *c;
    g->o = *opts;
    const char *fenv = getenv("LLAMA_AO_INFER_FUSE");
    if (fenv && !strcmp(fenv, "0")) g->o.unfused = INFER_GPU_NO_FUSE | INFER_GPU_NO_PDL;
    g->fuse = !(g->o.unfused & INFER_GPU_NO_FUSE);
    g->pdl_ok = !(g->o.unfused & INFER_GPU_NO_PDL);
    if (g->o.max_batch > g->o.max_T) g->o.max_batch = g->o.max_T;
    CUDA_CHECK(cudaSetDevice(opts->device));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, opts->device));
    snprintf(g->name, sizeof g->name, "%s", prop.name);
    g->n_sm = prop.multiProcessorCount;
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking));
    const int D = c->hidden_size, F = c->intermediate_size, QD = c->n_heads * c->head_dim,
              KVD = c->n_kv_heads * c->head_dim, V = c->vocab_size, L = c->n_layers;

    // weights
    g->layers = (GpuLayer *)ao_calloc((size_t)L, sizeof *g->layers);
    for (int l = 0; l < L; l++) {
        const InferLayer *il = &im->layers[l];
        GpuLayer *gl = &g->layers[l];
        gl->ln1 = upload_f32(g, il->ln1, (size_t)D);
        gl->ln2 = upload_f32(g, il->ln2, (size_t)D);
        const QTensor *qkv[3] = {&il->wq, &il->wk, &il->wv};
        const float *bqkv[3] = {il->bq, il->bk, il->bv};
        if (qweight_same_format(qkv[0], qkv[1]) && qweight_same_format(qkv[0], qkv[2])) {
            gl->n_qkv = 1;
            gl->qkv[0] = upload_linear(g, qkv, bqkv, 3);
        } else {
            gl->n_qkv = 3;
            for (int i = 0; i < 3; i++) gl->qkv[i] = upload_linear(g, &qkv[i], &bqkv[i], 1);
        }
        const QTensor *gu[2] = {&il->wg, &il->wu};
        if (qweight_same_format(gu[0], gu[1])) {
            gl->n_gu = 1;
            gl->gu[0] = upload_linear(g, gu, NULL, 2);
        } else {
            gl->n_gu = 2;
            for (int i = 0; i < 2; i++) gl->gu[i] = upload_linear(g, &gu[i], NULL, 1);
        }
        const QTensor *wo = &il->wo, *wd = &il->wd;
        gl->wo = upload_linear(g, &wo, NULL, 1);
        gl->wd = upload_linear(g, &wd, NULL, 1);
    }
    const QTensor *lm = &im->lm_head;
    g->lm_head = upload_linear(g, &lm, NULL, 1);
    g->norm_f = upload_f32(g, im->norm_f, (size_t)D);
    // embedding: bf16 when every value is a bf16 value (bf16 checkpoints), else fp32
    const size_t nemb = (size_t)V * D;
    if (im->wte16 && im->wte_dtype == QW_BF16) {
        g->wte = gupload(g, im->wte16, nemb * 2);
    } else {
        float *e32 = (float *)ao_malloc(nemb * 4);
        for (size_t i = 0; i < nemb; i++) e32[i] = im->wte16 ? f16_to_f32(im->wte16[i]) : im->wte[i];
        size_t inexact = 0;
        uint16_t *e16 = (uint16_t *)ao_malloc(nemb * 2);
        for (size_t i = 0; i < nemb; i++) e16[i] = bf16_bits_rne(e32[i], &inexact);
        g->wte_f32 = inexact != 0;
        g->wte = g->wte_f32 ? gupload(g, e32, nemb * 4) : gupload(g, e16, nemb * 2);
        free(e16), free(e32);
    }
    g->weight_bytes += nemb * (g->wte_f32 ? 4 : 2);
    // RoPE table: cos/sin of the fp32 angle pos * inv_freq, in double as rope_forward_cpu does
    const int h2 = c->head_dim / 2;
    float *invf = (float *)ao_malloc((size_t)h2 * sizeof(float));
    rope_inv_freq_cpu(invf, c->head_dim, &c->rope);
    float2 *tab = (float2 *)ao_malloc((size_t)g->o.max_T * h2 * sizeof(float2));
    for (int p = 0; p < g->o.max_T; p++)
        for (int i = 0; i < h2; i++) {
            const float ang = (float)p * invf[i];
            tab[(size_t)p * h2 + i] = make_float2((float)cos((double)ang), (float)sin((double)ang));
        }
    g->rope = (float2 *)gupload(g, tab, (size_t)g->o.max_T * h2 * sizeof(float2));
    free(tab), free(invf);

    // cache and scratch
    g->kvel = g->o.kv_f32 ? 4 : g->o.kv_fp8 ? 1 : 2;
    size_t cache;
    CHECK(ao_mul_size((size_t)L * (size_t)g->o.n_seq * (size_t)g->o.max_T, (size_t)KVD * g->kvel, &cache),
          "KV cache for %d tokens is too large", g->o.max_T);
    g->kc = galloc(g, cache);
    g->vc = galloc(g, cache);
    CUDA_CHECK(cudaMemset(g->kc, 0, cache));
    CUDA_CHECK(cudaMemset(g->vc, 0, cache));
    g->kv_bytes = 2 * cache;
    if (g->o.kv_fp8) {
        const size_t ns = (size_t)L * g->o.n_seq * g->o.max_T * c->n_kv_heads * sizeof(float);
        g->ksc = (float *)galloc(g, ns);
        g->vsc = (float *)galloc(g, ns);
        CUDA_CHECK(cudaMemset(g->ksc, 0, ns));
        CUDA_CHECK(cudaMemset(g->vsc, 0, ns));
        g->kv_bytes += 2 * ns;
    }
    const size_t MR = (size_t)g->o.n_seq * g->o.max_batch;
    g->max_rows = (int)MR;
    const int W = D > QD ? D : QD;
    g->x = (float *)galloc(g, MR * D * 4);
    g->ln = (float *)galloc(g, MR * W * 4);
    g->qkv = (float *)galloc(g, MR * (QD + 2 * KVD) * 4);
    g->att = (float *)galloc(g, MR * QD * 4);
    g->gu = (float *)galloc(g, MR * 2 * F * 4);
    g->act = (float *)galloc(g, MR * F * 4);
    g->logits = (float *)galloc(g, MR * V * 4);
    size_t parts = 0;
    for (int rows = 1; rows <= g->max_rows; rows++) {
        size_t p = (size_t)rows * nsplit_for(g, rows);
        if (p > parts) parts = p;
    }
    g->part_o = (float *)galloc(g, parts * c->n_heads * c->head_dim * 4);
    g->part_ml = (float *)galloc(g, parts * c->n_heads * 2 * 4);
    const int maxK = F > W ? F : W;
    qact_scratch_init(&g->act_s, 8, maxK);
    g->alloc_bytes += (size_t)8 * maxK * 5 + ((size_t)4 << 20);
    // GEMM scratch, when a forward can have more than gemm_tokens tokens, or a batched decode step
    // enough rows for some linear's decode_gemm_threshold
    g->gemm_tokens = g->o.gemm_tokens == 0 ? 16 : g->o.gemm_tokens;
    CHECK(g->o.decode_gemm_rows >= 0, "GPU inference: decode_gemm_rows %d < 0", g->o.decode_gemm_rows);
    g->gemm_min_rows = 0;
    each_linear(g, [&](const QWeightGpu *w, int, int) {
        const int t = decode_gemm_threshold(g, w->mode);
        if (t > 0 && (g->gemm_min_rows == 0 || t < g->gemm_min_rows)) g->gemm_min_rows = t;
    });
    if ((g->gemm_tokens > 0 && g->o.max_batch > g->gemm_tokens) ||
        (g->gemm_min_rows > 0 && (int)MR >= g->gemm_min_rows)) {
        int max_ld = 8, dyn_cols = 0;
        size_t wbuf = 0, ybuf = 0;
        each_linear(g, [&](const QWeightGpu *w, int acc, int lm) {
            if (w->ld > max_ld) max_ld = w->ld;
            if (w->mode == QUANT_FP8 || w->mode == QUANT_8DA4W) dyn_cols = w->cols > dyn_cols ? w->cols : dyn_cols;
            if (w->mode != QUANT_NONE) {  // the lm_head in slices of at most 8192 rows
                const size_t e = (size_t)(lm && w->rows > 8192 ? 8192 : w->rows) * w->ld;
                wbuf = e > wbuf ? e : wbuf;
            }
            if (acc && (w->mode == QUANT_INT8 || w->mode == QUANT_FP8 || w->mode == QUANT_8DA4W || w->bias))
                ybuf = MR * w->rows > ybuf ? MR * w->rows : ybuf;
        });
        prefill_gemm_init(&g->pf, g->max_rows, max_ld, wbuf, ybuf, dyn_cols);
        g->alloc_bytes += g->pf.bytes;
        g->has_pf = 1;
    }
    g->d_tok = (int32_t *)galloc(g, MR * 4);
    g->d_pos = (int *)galloc(g, 4);
    CUDA_CHECK(cudaMallocHost(&g->h_tok, MR * 4));
    CUDA_CHECK(cudaMallocHost(&g->h_pos, 4));
    CUDA_CHECK(cudaMallocHost(&g->h_logits, MR * V * 4));
    CUDA_CHECK(cudaDeviceSynchronize());
    return g;
}

extern "C" void infer_gpu_free(InferGpu *g) {
    if (!g) return;
    for (int i = 0; i < MAX_GRAPHS; i++)
        if (g->graph[i]) cudaGraphExecDestroy(g->graph[i]);
    for (int l = 0; l < g->cfg.n_layers; l++) {
        GpuLayer *gl = &g->layers[l];
        cudaFree(gl->ln1), cudaFree(gl->ln2);
        for (int i = 0; i < gl->n_qkv; i++) qweight_free(&gl->qkv[i]);
        for (int i = 0; i < gl->n_gu; i++) qweight_free(&gl->gu[i]);
        qweight_free(&gl->wo), qweight_free(&gl->wd);
    }
    free(g->layers);
    qweight_free(&g->lm_head);
    cudaFree(g->wte), cudaFree(g->norm_f), cudaFree(g->rope), cudaFree(g->kc), cudaFree(g->vc);
    cudaFree(g->x), cudaFree(g->ln), cudaFree(g->qkv), cudaFree(g->att), cudaFree(g->gu), cudaFree(g->act);
    cudaFree(g->logits), cudaFree(g->part_o), cudaFree(g->part_ml), cudaFree(g->d_tok), cudaFree(g->d_pos);
    qact_scratch_free(&g->act_s);
    if (g->has_pf) prefill_gemm_free(&g->pf);
    cudaFree(g->ksc), cudaFree(g->vsc);
    cudaFreeHost(g->h_tok), cudaFreeHost(g->h_pos), cudaFreeHost(g->h_logits);
    cudaStreamDestroy(g->st);
    free(g);
}

// Whether a linear of this format runs as a cuBLASLt GEMM in a forward of n tokens per sequence
// (rows in all): a prompt of more than gemm_tokens tokens, or a batched decode step
// (decode_gemm_threshold).
static int prompt_gemm(const InferGpu *g, int n) { return g->has_pf && g->gemm_tokens > 0 && n > g->gemm_tokens; }
static int linear_gemm(const InferGpu *g, int rows, int n, QuantMode mode) {
    if (!g->has_pf) return 0;
    if (prompt_gemm(g, n)) return 1;
    const int t = decode_gemm_threshold(g, mode);
    return t > 0 && rows >= t;
}

// One linear of a forward of n tokens per sequence (rows = n_seq n): the decode GEMV, or with
// more than gemm_tokens tokens (or enough rows: linear_gemm) the GEMM. A single-sequence decode
// step never runs a GEMM: its numerics stay the CPU's.
// src: the input (qact_src.cuh). Fused, the GEMV computes an RMSNorm or SwiGLU source in its
// activation prep where it has one (qgemv_src); otherwise the source is first materialized into
// xbuf by its own kernel. Both give the same bits.
static void linear(InferGpu *g, float *y, const QActSrc *src, float *xbuf, int rows, int n, const QWeightGpu *w,
                   int acc) {
    const int gemm = linear_gemm(g, rows, n, w->mode);
    const float *x = src->x;
    if (src->kind != QSRC_X && (gemm || !g->fuse)) {
        qact_src_forward(xbuf, src, rows, w->cols, g->pdl, g->st);
        x = xbuf;
        if (!gemm) {
            const QActSrc xs = qsrc_x(xbuf, w->cols);
            qgemv_src(y, &xs, NULL, rows, w, acc, &g->act_s, g->st);
            return;
        }
    }
    if (gemm) prefill_linear(&g->pf, y, x, rows, w, acc, g->st);
    else qgemv_src(y, src, xbuf, rows, w, acc, &g->act_s, g->st);
}

// Everything of one forward after the tokens and the position are on the device. Per layer of a
// decode step, fused, with int4 v2 / 8da4w / fp8 linears: x-prep with RMSNorm + q/k/v GEMV, RoPE +
// KV write, split attention, combine, x-prep + o_proj, x-prep with RMSNorm + gate/up, x-prep with
// SwiGLU + down: 11 kernels (14 unfused: two RMSNorms and a SwiGLU of their own). bf16 / int8
// linears have no prep to fold into: they keep those kernels (and their split-K reduces). With
// PDL every kernel is launched as a programmatic dependent of the one before (InferGpu.pdl).
static void enqueue_forward(InferGpu *g, int n, int all_logits) {
    const LlamaConfig *c = &g->cfg;
    const int D = c->hidden_size, F = c->intermediate_size, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
    const int QD = H * hd, KVD = KV * hd, rows = g->o.n_seq * n;
    const size_t layer_cache = (size_t)g->o.n_seq * g->o.max_T * KVD * g->kvel;
    const size_t layer_sc = (size_t)g->o.n_seq * g->o.max_T * KV;
    cudaStream_t st = g->st;
    // PDL only where every kernel of the forward is ours (a prefill, or a batched decode step past
    // gemm_min_rows, runs cuBLASLt GEMMs)
    const int any_gemm = prompt_gemm(g, n) || (g->has_pf && g->gemm_min_rows > 0 && rows >= g->gemm_min_rows);
    g->pdl = g->pdl_ok && !any_gemm;
    g->act_s.pdl = g->pdl;
    const int pdl = g->pdl;
    qlaunch(0, embed_kernel, dim3(rows), dim3(256), 0, st, g->x, (const int32_t *)g->d_tok, (const void *)g->wte,
            g->wte_f32, D);
    const int nsplit = nsplit_for(g, rows), gq = H / KV, nhc = (gq + ATT_GQ - 1) / ATT_GQ;
    const size_t att_smem = (size_t)ATT_WARPS * ATT_GQ * (2 + hd) * sizeof(float);
    const float scale = (float)(1.0 / sqrt((double)hd));
    const dim3 rope_grid(ceil_div((H + KV) * (hd / 2) + KVD / 2, 256), rows);
    for (int l = 0; l < c->n_layers; l++) {
        GpuLayer *gl = &g->layers[l];
        void *kc = (char *)g->kc + (size_t)l * layer_cache, *vc = (char *)g->vc + (size_t)l * layer_cache;
        QActSrc norm = {QSRC_RMSNORM, g->x, NULL, gl->ln1, D, c->rms_norm_eps};
        int pdl_rope = pdl;
        if (gl->n_qkv == 1) {
            linear(g, g->qkv, &norm, g->ln, rows, n, &gl->qkv[0], 0);
        } else {
            // separate projections into the packed row layout: run each into scratch, then copy
            qact_src_forward(g->ln, &norm, rows, D, pdl, st);
            const QActSrc xs = qsrc_x(g->ln, D);
            float *tmp = g->att;  // free until attention
            const int off[3] = {0, QD, QD + KVD}, w[3] = {QD, KVD, KVD};
            for (int i = 0; i < 3; i++) {
                // Projections 1 and 2 follow the copy of the one before (which reads tmp, which they
                // write): their GEMVs launch without PDL, as the RoPE after the last copy does.
                g->act_s.pdl = i == 0 ? pdl : 0;
                linear(g, tmp, &xs, NULL, rows, n, &gl->qkv[i], 0);
                CUDA_CHECK(cudaMemcpy2DAsync(g->qkv + off[i], (size_t)(QD + 2 * KVD) * 4, tmp, (size_t)w[i] * 4,
                                             (size_t)w[i] * 4, rows, cudaMemcpyDeviceToDevice, st));
            }
            g->act_s.pdl = pdl;
            pdl_rope = 0;  // after a copy, not a kernel
        }
        float *ksc = g->ksc ? g->ksc + l * layer_sc : NULL, *vsc = g->vsc ? g->vsc + l * layer_sc : NULL;
        const int *dpos = g->d_pos;
        const float2 *rope = g->rope;
        if (g->o.kv_fp8) {
            qlaunch(pdl_rope, rope_kv_fp8_kernel, dim3(rows), dim3(256), 0, st, g->qkv, (uint8_t *)kc, (uint8_t *)vc,
                    ksc, vsc, rope, dpos, n, H, KV, hd, g->o.max_T);
        } else if (g->o.kv_f32) {
            qlaunch(pdl_rope, rope_kv_kernel<float>, rope_grid, dim3(256), 0, st, g->qkv, (float *)kc, (float *)vc, rope,
                    dpos, n, H, KV, hd, g->o.max_T);
        } else {
            qlaunch(pdl_rope, rope_kv_kernel<bf16>, rope_grid, dim3(256), 0, st, g->qkv, (bf16 *)kc, (bf16 *)vc, rope,
                    dpos, n, H, KV, hd, g->o.max_T);
        }
        const dim3 agrid(KV * nhc, nsplit, rows);
#define ATT_LAUNCH(KT, E)                                                                                            \
    qlaunch(pdl, attn_split_kernel<KT, E>, agrid, dim3(ATT_WARPS * 32), att_smem, st, g->part_o, g->part_ml,          \
            (const float *)g->qkv, (const KT *)kc, (const KT *)vc, (const float *)ksc, (const float *)vsc, dpos, n, H, \
            KV, hd, g->o.max_T, nsplit, scale)
        const int E = att_e(hd);
        if (g->o.kv_fp8) {
            if (E == 1) ATT_LAUNCH(uint8_t, 1);
            else if (E == 2) ATT_LAUNCH(uint8_t, 2);
            else if (E == 4) ATT_LAUNCH(uint8_t, 4);
            else ATT_LAUNCH(uint8_t, 8);
        } else if (g->o.kv_f32) {
            if (E == 1) ATT_LAUNCH(float, 1);
            else if (E == 2) ATT_LAUNCH(float, 2);
            else if (E == 4) ATT_LAUNCH(float, 4);
            else ATT_LAUNCH(float, 8);
        } else {
            if (E == 1) ATT_LAUNCH(bf16, 1);
            else if (E == 2) ATT_LAUNCH(bf16, 2);
            else if (E == 4) ATT_LAUNCH(bf16, 4);
            else ATT_LAUNCH(bf16, 8);
        }
#undef ATT_LAUNCH
        qlaunch(pdl, attn_combine_kernel, dim3(rows * H), dim3(128), 0, st, g->att, (const float *)g->part_o,
                (const float *)g->part_ml, H, hd, nsplit);
        const QActSrc att = qsrc_x(g->att, QD);
        linear(g, g->x, &att, NULL, rows, n, &gl->wo, 1);
        norm.w = gl->ln2;
        QActSrc act = {QSRC_SWIGLU, g->gu, g->gu + F, NULL, 2 * F, 0.0f};
        if (gl->n_gu == 1) {
            linear(g, g->gu, &norm, g->ln, rows, n, &gl->gu[0], 0);
        } else {
            qact_src_forward(g->ln, &norm, rows, D, pdl, st);
            const QActSrc xs = qsrc_x(g->ln, D);
            linear(g, g->gu, &xs, NULL, rows, n, &gl->gu[0], 0);
            linear(g, g->gu + (size_t)rows * F, &xs, NULL, rows, n, &gl->gu[1], 0);
            act.up = g->gu + (size_t)rows * F, act.ld = F;
        }
        linear(g, g->x, &act, g->act, rows, n, &gl->wd, 1);
    }
    const int out_rows = all_logits ? rows : g->o.n_seq;
    const QActSrc fin = {QSRC_RMSNORM, g->x + (size_t)(all_logits ? 0 : n - 1) * D, NULL, g->norm_f,
                         (all_logits ? 1 : n) * D, c->rms_norm_eps};
    linear(g, g->logits, &fin, g->ln, out_rows, all_logits ? n : 1, &g->lm_head, 0);
    CUDA_CHECK(cudaMemcpyAsync(g->h_logits, g->logits, (size_t)out_rows * c->vocab_size * 4, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK_LAST();
}

extern "C" const float *infer_gpu_forward(InferGpu *g, const int32_t *tokens, int n, int all_logits) {
    const LlamaConfig *c = &g->cfg;
    CHECK(n > 0 && n <= g->o.max_batch, "infer_gpu_forward: %d tokens at once (batch limit %d)", n, g->o.max_batch);
    CHECK(g->pos + n <= g->o.max_T, "context full: %d tokens in the cache + %d new > context %d", g->pos, n,
          g->o.max_T);
    const int rows = g->o.n_seq * n;
    for (int i = 0; i < rows; i++) {
        CHECK(tokens[i] >= 0 && tokens[i] < c->vocab_size, "token id %d out of range [0, %d)", tokens[i],
              c->vocab_size);
        g->h_tok[i] = tokens[i];
    }
    *g->h_pos = g->pos;
    CUDA_CHECK(cudaMemcpyAsync(g->d_tok, g->h_tok, (size_t)rows * 4, cudaMemcpyHostToDevice, g->st));
    CUDA_CHECK(cudaMemcpyAsync(g->d_pos, g->h_pos, 4, cudaMemcpyHostToDevice, g->st));
    if (n == 1 && g->o.graphs) {
        cudaGraphExec_t *ge = &g->graph[g->o.n_seq];
        if (!*ge) {
            enqueue_forward(g, 1, all_logits);  // first run eagerly (module loading, checks)
            CUDA_CHECK(cudaStreamSynchronize(g->st));
            cudaGraph_t graph;
            CUDA_CHECK(cudaStreamBeginCapture(g->st, cudaStreamCaptureModeThreadLocal));
            enqueue_forward(g, 1, all_logits);
            CUDA_CHECK(cudaStreamEndCapture(g->st, &graph));
            CUDA_CHECK(cudaGraphInstantiate(ge, graph, 0));
            CUDA_CHECK(cudaGraphDestroy(graph));
        } else {
            CUDA_CHECK(cudaGraphLaunch(*ge, g->st));
        }
    } else {
        enqueue_forward(g, n, all_logits);
    }
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    g->pos += n;
    return g->h_logits;
}

extern "C" int infer_gpu_pos(const InferGpu *g) { return g->pos; }
extern "C" void infer_gpu_set_pos(InferGpu *g, int pos) {
    CHECK(pos >= 0 && pos <= g->o.max_T, "infer_gpu_set_pos: %d outside [0, %d]", pos, g->o.max_T);
    g->pos = pos;
}
extern "C" size_t infer_gpu_weight_bytes(const InferGpu *g) { return g->weight_bytes; }
extern "C" size_t infer_gpu_step_bytes(const InferGpu *g) { return g->step_bytes; }
extern "C" size_t infer_gpu_alloc_bytes(const InferGpu *g) { return g->alloc_bytes; }
extern "C" size_t infer_gpu_kv_bytes(const InferGpu *g) { return g->kv_bytes; }

extern "C" void infer_gpu_read_kv(const InferGpu *g, int layer, int seq, int pos, float *k, float *v) {
    const LlamaConfig *c = &g->cfg;
    CHECK(layer >= 0 && layer < c->n_layers && seq >= 0 && seq < g->o.n_seq && pos >= 0 && pos < g->o.max_T,
          "infer_gpu_read_kv: layer %d, sequence %d, position %d out of range", layer, seq, pos);
    const int KV = c->n_kv_heads, hd = c->head_dim, KVD = KV * hd;
    const size_t slot = ((size_t)layer * g->o.n_seq + seq) * g->o.max_T + pos;
    uint8_t *raw = (uint8_t *)ao_malloc((size_t)KVD * g->kvel);
    float *sc = (float *)ao_malloc((size_t)KV * sizeof(float));
    for (int which = 0; which < 2; which++) {
        const void *cache = which ? g->vc : g->kc;
        float *out = which ? v : k;
        CUDA_CHECK(cudaMemcpy(raw, (const char *)cache + slot * KVD * g->kvel, (size_t)KVD * g->kvel, cudaMemcpyDeviceToHost));
        if (g->o.kv_fp8)
            CUDA_CHECK(cudaMemcpy(sc, (which ? g->vsc : g->ksc) + slot * KV, (size_t)KV * sizeof(float), cudaMemcpyDeviceToHost));
        for (int i = 0; i < KVD; i++) {
            if (g->kvel == 4) {
                memcpy(&out[i], raw + 4 * (size_t)i, 4);
            } else if (g->kvel == 2) {
                const uint32_t u = (uint32_t)(raw[2 * i] | (raw[2 * i + 1] << 8)) << 16;
                memcpy(&out[i], &u, 4);
            } else {
                out[i] = quant_e4m3_to_f32(raw[i]) * sc[i / hd];
            }
        }
    }
    free(raw), free(sc);
}
extern "C" const char *infer_gpu_name(const InferGpu *g) { return g->name; }
extern "C" size_t infer_gpu_rounded(const InferGpu *g) { return g->rounded; }
