// Prefill linears as cuBLASLt GEMMs (layouts and numerics: infer_gpu_prefill.cuh).
//
// cuBLASLt is column-major: a row-major [R, C] matrix with row stride ld is the column-major
// [C, R] matrix with leading dimension ld. With W [N, ld] and x [M, ld] (bf16, zero past the
// features) and y [M, N] fp32:  y^T (N x M, ld N) = op_T(W) @ x^T,  m = N, n = M, k = ld.
#include "infer_gpu_prefill.cuh"
#include "../common/cuda_utils.cuh"

#include <string.h>

#define PREFILL_WS_BYTES ((size_t)32 << 20)

// e4m3fn code to fp32, exact (as qgemv.cu's e4m3_f: no NaN codes occur, the quantizers clamp).
__device__ __forceinline__ float pf_e4m3(uint32_t b) {
    const float f = __uint_as_float((b & 0x7Fu) << 20) * 0x1p120f;
    return (b & 0x80u) ? -f : f;
}

// One thread per 8 consecutive elements of a row (one 16-byte store). The int4 layouts are
// those of qweight_upload: tiled 0 (and 8da4w) rows of nibbles with every whole 1024-element
// block interleaved (word j * 32 + l stored at l * 4 + j); tiled 1 / 2 mma fragment order
// (tile (16 rows, 64 columns) = 32 lanes x 4 words, nibbles [a0 a2 a4 a6 a1 a3 a5 a7]), with
// (scale, zero) natural [row][group] (tiled 0, 1) or pre-shuffled [row-tile pair][group][g][4]
// (tiled 2).
__global__ void prefill_dequant_kernel(bf16 *out, QWeightGpu w, int r0, int nr) {
    const int per_row = w.ld / 8;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)nr * per_row) return;
    const int r = (int)(i / per_row), c = (int)(i % per_row), row = r0 + r, k0 = 8 * c;
    uint4 *dst = (uint4 *)(out + (size_t)r * w.ld + k0);
    if (w.mode == QUANT_NONE) {
        *dst = __ldg((const uint4 *)w.q + (size_t)row * per_row + c);
        return;
    }
    float v[8];
    if (w.mode == QUANT_INT8 || w.mode == QUANT_FP8) {
        const uint2 u = __ldg((const uint2 *)w.q + (size_t)row * per_row + c);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const uint32_t b = ((e < 4 ? u.x : u.y) >> (8 * (e & 3))) & 0xFFu;
            v[e] = w.mode == QUANT_INT8 ? (float)(int8_t)b : pf_e4m3(b);
        }
    } else {  // INT4, 8DA4W: the 8 elements lie in one group (group % 8 == 0)
        const int ng = w.cols / w.group, grp = k0 / w.group;
        int nib[8];
        if (!w.tiled) {
            const uint32_t *rw = (const uint32_t *)w.q + (size_t)row * (w.ld / 8);
            const int bb = k0 >> 10, ow = (k0 & 1023) >> 3;
            const int widx = (bb + 1) * 1024 <= w.cols ? bb * 128 + (ow & 31) * 4 + (ow >> 5) : k0 >> 3;
            const uint32_t word = __ldg(rw + widx);
#pragma unroll
            for (int e = 0; e < 8; e++) nib[e] = (word >> (4 * e)) & 15u;
        } else {
            const int nch = w.cols / 64, rr = row & 15, g = rr & 7, h8 = rr >> 3, kk = k0 & 63, j = kk >> 4,
                      up = (kk >> 3) & 1;
            const uint32_t *tb = (const uint32_t *)w.q + ((size_t)(row >> 4) * nch + (k0 >> 6)) * 128;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const int t = e >> 1, a = (e & 1) | (h8 << 1) | (up << 2), pos = (a >> 1) + 4 * (a & 1);
                nib[e] = (__ldg(tb + (g * 4 + t) * 4 + j) >> (4 * pos)) & 15u;
            }
        }
        if (w.mode == QUANT_INT4) {
            size_t si = (size_t)row * ng + grp;
            if (w.tiled == 2)
                si = (((size_t)(row >> 5) * ng + grp) * 8 + (row & 7)) * 4 + ((row >> 4) & 1) * 2 + ((row >> 3) & 1);
            const __nv_bfloat162 sz = w.sz[si];
            const float s = __low2float(sz), z = __high2float(sz);
#pragma unroll
            for (int e = 0; e < 8; e++) v[e] = __fadd_rn(__fmul_rn((float)(nib[e] - 8), s), z);  // s (q - 8) exact
        } else {
            const float s = __ldg(w.scale + (size_t)row * ng + grp);
#pragma unroll
            for (int e = 0; e < 8; e++) v[e] = __fmul_rn((float)(nib[e] - 8), s);
        }
    }
    uint32_t p[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const __nv_bfloat162 b = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
        p[e] = *(const uint32_t *)&b;
    }
    *dst = make_uint4(p[0], p[1], p[2], p[3]);
}

// x [M, K] fp32 -> xb [M, ld] bf16, zeros past K. fp8: the e4m3 codes' values of qact_prepare
// (exact); 8da4w: its int8 codes minus the token's zero point (exact); otherwise x rounded.
__global__ void prefill_act_kernel(bf16 *xb, const float *x, int M, int K, int ld, int mode, const float *xf,
                                   const uint8_t *xq, const int *xzp) {
    const size_t n = (size_t)M * ld;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int m = (int)(i / ld), k = (int)(i % ld);
        float v = 0.0f;
        if (k < K) {
            const size_t e = (size_t)m * K + k;
            if (mode == QUANT_FP8) {
                v = xf[e];
            } else if (mode == QUANT_8DA4W) {  // per 8 features: the even ones' bytes, then the odd ones'
                const int byte = (k & ~7) + (k & 1) * 4 + ((k & 7) >> 1);
                v = (float)((int)(int8_t)xq[(size_t)m * K + byte] - xzp[m]);
            } else {
                v = x[e];
            }
        }
        xb[i] = __float2bfloat16_rn(v);
    }
}

// y [M, N] (=, or +=) t [M, N] (row stride ldt) times the scales, plus the bias, in
// qgemv's store_out order (int8: v ws; 8da4w: v xs; fp8: v xs ws; then + bias).
__global__ void prefill_epilogue_kernel(float *y, const float *t, int M, int N, int ldt, int mode, const float *ws,
                                        const float *xs, const float *bias, int accumulate) {
    const size_t n = (size_t)M * N;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int m = (int)(i / N), c = (int)(i % N);
        float v = t[(size_t)m * ldt + c];
        if (mode == QUANT_INT8) v *= ws[c];
        if (mode == QUANT_8DA4W) v *= xs[m];
        if (mode == QUANT_FP8) v = v * xs[m] * ws[c];
        if (bias) v += bias[c];
        y[i] = accumulate ? y[i] + v : v;
    }
}

static int grid_for(size_t n) {
    const size_t b = (n + 255) / 256;
    return (int)(b < 8192 ? (b ? b : 1) : 8192);
}

// D (m x n fp32, ld ldd) = op_T(A) @ B (+ beta D): A stored k x m (ld lda), B k x n (ld ldb),
// bf16, fp32 accumulation. The heuristic's choice is cached per shape and alignment.
static void lt_gemm(PrefillGemm *p, float *D, int ldd, const bf16 *A, int lda, const bf16 *B, int ldb, int m, int n,
                    int k, float beta, cudaStream_t st) {
    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t la, lb, ld;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, m, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, ldd));
    PrefillAlgoKey key;
    memset(&key, 0, sizeof key);
    key.m = m, key.n = n, key.k = k, key.lda = lda, key.ldb = ldb, key.ldd = ldd, key.beta = beta != 0.0f;
    key.align[0] = ptr_align256(A), key.align[1] = ptr_align256(B), key.align[2] = ptr_align256(D);
    cublasLtMatmulAlgo_t algo;
    int found = 0;
    for (int i = 0; i < p->n_algo && !found; i++)
        if (!memcmp(&p->keys[i], &key, sizeof key)) algo = p->algos[i], found = 1;
    if (!found) {
        cublasLtMatmulPreference_t pref;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t wsb = p->ws_bytes;
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
        const cublasLtMatmulPreferenceAttributes_t at[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++) {
            const uint32_t a = key.align[i < 3 ? i : 2];
            CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, at[i], &a, sizeof a));
        }
        cublasLtMatmulHeuristicResult_t res;
        int nres = 0;
        const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(p->lt, desc, la, lb, ld, ld, pref, 1, &res, &nres);
        CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
        CHECK(s == CUBLAS_STATUS_SUCCESS && nres > 0,
              "prefill GEMM: cuBLASLt has no algorithm for m=%d n=%d k=%d lda=%d ldb=%d ldd=%d (alignments %u %u %u, "
              "status %d)\n  HINT: set InferGpuOpts.gemm_tokens = -1 (decode GEMVs only) to run without it",
              m, n, k, lda, ldb, ldd, key.align[0], key.align[1], key.align[2], (int)s);
        algo = res.algo;
        if (p->n_algo < PREFILL_ALGO_CACHE) p->keys[p->n_algo] = key, p->algos[p->n_algo++] = algo;
    }
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(p->lt, desc, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &algo, p->ws, p->ws_bytes, st));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(ld));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
}

static void *pf_alloc(PrefillGemm *p, size_t bytes) {
    void *d = qgemv_dev_alloc(bytes ? bytes : 16, p->bytes);
    p->bytes += bytes;
    return d;
}

void prefill_gemm_init(PrefillGemm *p, int max_rows, int max_ld, size_t wbuf_elems, size_t ybuf_elems, int dyn_cols) {
    memset(p, 0, sizeof *p);
    CHECK(max_rows > 0 && max_ld > 0 && max_ld % 8 == 0, "prefill_gemm_init: %d rows of %d features", max_rows, max_ld);
    p->max_rows = max_rows, p->max_ld = max_ld;
    CUBLAS_CHECK(cublasLtCreate(&p->lt));
    p->ws_bytes = PREFILL_WS_BYTES;
    p->ws = pf_alloc(p, p->ws_bytes);
    p->wbuf_elems = wbuf_elems;
    if (wbuf_elems) p->wbuf = (bf16 *)pf_alloc(p, wbuf_elems * sizeof(bf16));
    p->xbuf = (bf16 *)pf_alloc(p, (size_t)max_rows * max_ld * sizeof(bf16));
    p->ybuf_elems = ybuf_elems;
    if (ybuf_elems) p->ybuf = (float *)pf_alloc(p, ybuf_elems * sizeof(float));
    if (dyn_cols > 0) {
        qact_scratch_init(&p->act, max_rows, dyn_cols);
        p->has_act = 1;
        p->bytes += (size_t)max_rows * dyn_cols * 5 + ((size_t)4 << 20);  // codes, values, split-K partials
    }
}

void prefill_gemm_free(PrefillGemm *p) {
    if (p->lt) cublasLtDestroy(p->lt);
    cudaFree(p->ws), cudaFree(p->wbuf), cudaFree(p->xbuf), cudaFree(p->ybuf);
    if (p->has_act) qact_scratch_free(&p->act);
    memset(p, 0, sizeof *p);
}

void prefill_dequant(bf16 *out, const QWeightGpu *w, int r0, int nr, cudaStream_t st) {
    CHECK(r0 >= 0 && nr > 0 && r0 + nr <= w->rows && w->ld % 8 == 0, "prefill_dequant: rows [%d, %d) of %d", r0,
          r0 + nr, w->rows);
    if (w->mode == QUANT_INT4 || w->mode == QUANT_8DA4W)
        CHECK(w->group >= 8 && w->group % 8 == 0 && w->cols % w->group == 0 && w->ld == w->cols,
              "prefill_dequant: group %d of %d features", w->group, w->cols);
    const size_t n = (size_t)nr * (w->ld / 8);
    prefill_dequant_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(out, *w, r0, nr);
    CUDA_CHECK_LAST();
}

void prefill_linear(PrefillGemm *p, float *y, const float *x, int M, const QWeightGpu *w, int accumulate,
                    cudaStream_t st) {
    const int K = w->cols, ld = w->ld, N = w->rows;
    CHECK(M > 0 && M <= p->max_rows && ld <= p->max_ld, "prefill_linear: %d tokens x %d features exceed the scratch "
          "(%d x %d)", M, ld, p->max_rows, p->max_ld);
    const int dyn = w->mode == QUANT_FP8 || w->mode == QUANT_8DA4W;
    if (dyn) {
        CHECK(p->has_act && K <= p->act.max_cols, "prefill_linear: no activation scratch for %s [%d features]",
              quant_mode_name(w->mode), K);
        qact_prepare(w->mode, x, M, K, &p->act, st);
    }
    prefill_act_kernel<<<grid_for((size_t)M * ld), 256, 0, st>>>(p->xbuf, x, M, K, ld, (int)w->mode,
                                                                 dyn ? p->act.xf : NULL,
                                                                 dyn ? (const uint8_t *)p->act.xq : NULL,
                                                                 dyn ? p->act.xzp : NULL);
    CUDA_CHECK_LAST();
    // Scales and bias in an epilogue; without them the GEMM writes (or adds into) y itself.
    const int epi = w->mode == QUANT_INT8 || dyn || w->bias;
    float *D = y, beta = accumulate && !epi ? 1.0f : 0.0f;
    if (epi && accumulate) {
        CHECK((size_t)M * N <= p->ybuf_elems, "prefill_linear: no product scratch for %d x %d", M, N);
        D = p->ybuf;
    }
    if (w->mode == QUANT_NONE) {
        lt_gemm(p, D, N, (const bf16 *)w->q, ld, p->xbuf, ld, N, M, ld, beta, st);
    } else {
        int chunk = (int)(p->wbuf_elems / (size_t)ld < (size_t)N ? p->wbuf_elems / (size_t)ld / 8 * 8 : (size_t)N);
        CHECK(chunk > 0, "prefill_linear: the weight scratch (%zu elements) holds no 8 rows of %d", p->wbuf_elems, ld);
        for (int r0 = 0; r0 < N; r0 += chunk) {
            const int nr = N - r0 < chunk ? N - r0 : chunk;
            prefill_dequant(p->wbuf, w, r0, nr, st);
            lt_gemm(p, D + r0, N, p->wbuf, ld, p->xbuf, ld, nr, M, ld, beta, st);
        }
    }
    if (epi) {
        prefill_epilogue_kernel<<<grid_for((size_t)M * N), 256, 0, st>>>(y, D, M, N, N, (int)w->mode, w->scale,
                                                                         dyn ? p->act.xs : NULL, w->bias, accumulate);
        CUDA_CHECK_LAST();
    }
}
