// Linear layers through cuBLASLt (bf16 A/B, fp32 accumulate), a deterministic dbias
// kernel and the elementwise casts.
//
// Layouts. cuBLASLt is column-major, and a row-major [R, C] matrix with row stride ld is
// the column-major [C, R] matrix with leading dimension ld. So, with everything viewed
// column-major (W: K x M ld K, inp: K x N ld K, dout: M x N ld lddout):
//   forward  out^T  (M x N, ld ldo) = op_T(W)   @ inp               m=M n=N k=K
//   dinp     dinp^T (K x N, ld K)   = W         @ dout^T-as-(M x N) m=K n=N k=M
//   dweight  dw^T   (K x M, ld K)  += inp       @ op_T(dout)        m=K n=M k=N
// The bias epilogue adds a vector of length m = M (rows of D) to every column: bias[M].
#include <string.h>

#include <mutex>

#include "../common/cuda_utils.cuh"
#include "matmul.cuh"

// ------------------------------------------------------------------- algorithm cache
// cublasLtMatmulAlgoGetHeuristic costs tens of microseconds, and a training step runs
// the same few shapes every time, so the chosen algorithm is cached per (device, op,
// shape, leading dims, epilogue, pointer alignments). Alignments are part of the key
// because the heuristic assumes 256-byte aligned buffers unless told otherwise.
typedef struct {
    int device, op, m, n, k, lda, ldb, ldd, epilogue;
    unsigned align[5];  // A, B, C(=D), bias, unused
} AlgoKey;
typedef struct {
    AlgoKey key;
    cublasLtMatmulAlgo_t algo;
} AlgoEntry;
#define ALGO_CACHE_SIZE 256
static AlgoEntry g_algo_cache[ALGO_CACHE_SIZE];
static int g_algo_count;
static std::mutex g_algo_mutex;

// OP_NT_BF16 / OP_NT_F32: matmul_bf16_nt (the output type is not part of the cache key, the op is).
enum { OP_FWD = 0, OP_DINP = 1, OP_DWEIGHT = 2, OP_NT_BF16 = 3, OP_NT_F32 = 4 };
static const char *op_name(int op) {
    return op == OP_FWD ? "forward" : op == OP_DINP ? "dinp" : op == OP_DWEIGHT ? "dweight" : "bf16 NT";
}

// D (m x n, ld ldd, type dtype) = op(A) @ op(B) (+ beta * D) (+ bias), A/B bf16.
static void lt_matmul(GpuCtx *ctx, int op, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                      const bf16 *A, int lda, const bf16 *B, int ldb, void *D, cudaDataType_t dtype, int ldd,
                      float beta, const bf16 *bias) {
    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    int32_t tav = ta, tbv = tb;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &tav, sizeof tav));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tbv, sizeof tbv));
    uint32_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (bias) {
        int32_t bt = CUDA_R_16BF;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    // Stored shapes (before op): op T on A means A is stored k x m.
    cublasLtMatrixLayout_t la, lb, ld;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, dtype, m, n, ldd));

    AlgoKey key;
    memset(&key, 0, sizeof key);  // padding-free, but keep memcmp well defined
    key.device = ctx->device, key.op = op, key.m = m, key.n = n, key.k = k;
    key.lda = lda, key.ldb = ldb, key.ldd = ldd, key.epilogue = (int)epi;
    key.align[0] = ptr_align256(A), key.align[1] = ptr_align256(B), key.align[2] = ptr_align256(D);
    key.align[3] = bias ? ptr_align256(bias) : 0;

    cublasLtMatmulAlgo_t algo;
    int found = 0;
    {
        std::lock_guard<std::mutex> lock(g_algo_mutex);
        for (int i = 0; i < g_algo_count && !found; i++)
            if (memcmp(&g_algo_cache[i].key, &key, sizeof key) == 0) algo = g_algo_cache[i].algo, found = 1;
    }
    if (!found) {
        cublasLtMatmulPreference_t pref;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t ws = ctx->lt_workspace_size;
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        const cublasLtMatmulPreferenceAttributes_t al_attr[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++) {
            uint32_t a = key.align[i < 3 ? i : 2];  // C and D are the same buffer
            CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, al_attr[i], &a, sizeof a));
        }
        cublasLtMatmulHeuristicResult_t res;
        int nres = 0;
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx->lt, desc, la, lb, ld, ld, pref, 1, &res, &nres);
        CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
        CHECK(st == CUBLAS_STATUS_SUCCESS && nres > 0,
              "cuBLASLt has no algorithm for matmul %s m=%d n=%d k=%d lda=%d ldb=%d ldd=%d (alignments A %u B %u D %u "
              "bias %u, status %d)\n  HINT: keep dimensions and row strides multiples of 8 and tensors 16-byte aligned",
              op_name(op), m, n, k, lda, ldb, ldd, key.align[0], key.align[1], key.align[2], key.align[3], (int)st);
        algo = res.algo;
        std::lock_guard<std::mutex> lock(g_algo_mutex);
        if (g_algo_count < ALGO_CACHE_SIZE) g_algo_cache[g_algo_count].key = key, g_algo_cache[g_algo_count++].algo = algo;
    }
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(ctx->lt, desc, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &algo, ctx->lt_workspace,
                                ctx->lt_workspace_size, ctx->stream));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(ld));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
}

void matmul_forward(GpuCtx *ctx, bf16 *out, const bf16 *inp, const bf16 *weight, const bf16 *bias, int N, int K,
                    int M, int ldo) {
    CHECK(N >= 0 && K > 0 && M > 0 && ldo >= M, "matmul_forward: bad shape N=%d K=%d M=%d ldo=%d", N, K, M, ldo);
    if (N == 0) return;
    lt_matmul(ctx, OP_FWD, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, weight, K, inp, K, out, CUDA_R_16BF, ldo, 0.0f, bias);
}

// Same mapping as the forward: A = Q (op T, k x m stored, lda = kd), B = P (k x n, ldb = kd).
void matmul_bf16_nt(GpuCtx *ctx, void *out, int out_f32, int ldo, float beta, const bf16 *P, const bf16 *Q, int rows_p,
                    int rows_q, int kd) {
    CHECK(rows_p >= 0 && rows_q > 0 && kd > 0 && ldo >= rows_q, "matmul_bf16_nt: bad shape rows_p=%d rows_q=%d kd=%d "
          "ldo=%d", rows_p, rows_q, kd, ldo);
    if (rows_p == 0) return;
    lt_matmul(ctx, out_f32 ? OP_NT_F32 : OP_NT_BF16, CUBLAS_OP_T, CUBLAS_OP_N, rows_q, rows_p, kd, Q, kd, P, kd, out,
              out_f32 ? CUDA_R_32F : CUDA_R_16BF, ldo, beta, NULL);
}

// ------------------------------------------------------------------- dbias
// dbias[m] += sum_n dout[n, m], deterministic. Stage 1: block (x, r) sums rows of chunk r
// for a tile of TX*VEC columns; thread (tx, ty) takes rows ty, ty + BY, ... in order, then
// the BY stripes are added in order through shared memory. With one chunk the block adds
// into dbias directly; otherwise it writes partial[r][m] and stage 2 adds the chunks in
// order. The chunk count depends only on N, M and the workspace size.
template <int VEC>
__global__ void __launch_bounds__(256) matmul_dbias_kernel(float *dbias, float *partial, const bf16 *dout, int ldd,
                                                           int N, int M, int rows_per_chunk) {
    constexpr int TX = VEC == 8 ? 8 : 32, BY = 256 / TX, TILE = TX * VEC;
    __shared__ float sh[BY][TILE + 1];
    int c0 = blockIdx.x * TILE, c = c0 + threadIdx.x * VEC;
    int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
    float acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; j++) acc[j] = 0.0f;
    if (c < M)
        for (int r = r0 + threadIdx.y; r < r1; r += BY) {
            float x[VEC];
            load_vec<VEC>(x, dout + (size_t)r * ldd + c);
#pragma unroll
            for (int j = 0; j < VEC; j++) acc[j] += x[j];
        }
#pragma unroll
    for (int j = 0; j < VEC; j++) sh[threadIdx.y][threadIdx.x * VEC + j] = acc[j];
    __syncthreads();
    for (int t = threadIdx.y * TX + threadIdx.x; t < TILE; t += 256) {
        if (c0 + t >= M) continue;
        float s = 0.0f;
        for (int y = 0; y < BY; y++) s += sh[y][t];
        if (gridDim.y == 1) dbias[c0 + t] += s;
        else partial[(size_t)blockIdx.y * M + c0 + t] = s;
    }
}

__global__ void matmul_dbias_sum_kernel(float *dbias, const float *partial, int R, int M) {
    int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= M) return;
    float s = 0.0f;
    for (int r = 0; r < R; r++) s += partial[(size_t)r * M + m];
    dbias[m] += s;
}

// The partials live in the cuBLASLt workspace: it is idle between matmuls on this stream.
static void matmul_dbias(GpuCtx *ctx, float *dbias, const bf16 *dout, int ldd, int N, int M) {
    size_t ws_floats = ctx->lt_workspace_size / sizeof(float);
    int R = ceil_div(N, 1024);
    if (R > 64) R = 64;
    if ((size_t)R * M > ws_floats) R = (int)(ws_floats / M);
    if (R < 1) R = 1;
    int rows_per_chunk = ceil_div(N, R);
    R = ceil_div(N, rows_per_chunk);
    float *partial = (float *)ctx->lt_workspace;
    cudaStream_t s = ctx->stream;
    if (M % 8 == 0 && ldd % 8 == 0 && is_aligned16(dout))
        matmul_dbias_kernel<8><<<dim3(ceil_div(M, 64), R), dim3(8, 32), 0, s>>>(dbias, partial, dout, ldd, N, M,
                                                                                rows_per_chunk);
    else
        matmul_dbias_kernel<1><<<dim3(ceil_div(M, 32), R), dim3(32, 8), 0, s>>>(dbias, partial, dout, ldd, N, M,
                                                                                rows_per_chunk);
    CUDA_CHECK_LAST();
    if (R == 1) return;
    matmul_dbias_sum_kernel<<<ceil_div(M, 256), 256, 0, s>>>(dbias, partial, R, M);
    CUDA_CHECK_LAST();
}

void matmul_backward(GpuCtx *ctx, bf16 *dinp, float *dweight, float *dbias, const bf16 *dout, int lddout,
                     const bf16 *inp, const bf16 *weight, int N, int K, int M, int accumulate_dinp) {
    CHECK(N >= 0 && K > 0 && M > 0 && lddout >= M, "matmul_backward: bad shape N=%d K=%d M=%d lddout=%d", N, K, M,
          lddout);
    if (N == 0) return;
    if (dinp)
        lt_matmul(ctx, OP_DINP, CUBLAS_OP_N, CUBLAS_OP_N, K, N, M, weight, K, dout, lddout, dinp, CUDA_R_16BF, K,
                  accumulate_dinp ? 1.0f : 0.0f, NULL);
    if (dweight)
        lt_matmul(ctx, OP_DWEIGHT, CUBLAS_OP_N, CUBLAS_OP_T, K, M, N, inp, K, dout, lddout, dweight, CUDA_R_32F, K, 1.0f,
                  NULL);
    if (dbias) matmul_dbias(ctx, dbias, dout, lddout, N, M);
}

// ------------------------------------------------------------------- casts
// One thread per 8 elements; the last partial group (n % 8) goes element by element.
// VEC = 8 needs both pointers 16-byte aligned.
template <int VEC>
__global__ void cast_f32_to_bf16_kernel(bf16 *dst, const float *src, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (VEC == 8 && i + 8 <= n) {
        f128 a = load128cs(src + i), b = load128cs(src + i + 4);
        x128 o;
#pragma unroll
        for (int j = 0; j < 4; j++) o[j] = __float2bfloat16(a[j]), o[4 + j] = __float2bfloat16(b[j]);
        store128(dst + i, o);
    } else {
        for (size_t j = i; j < n && j < i + 8; j++) dst[j] = __float2bfloat16(src[j]);
    }
}

template <int VEC>
__global__ void cast_bf16_to_f32_kernel(float *dst, const bf16 *src, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (VEC == 8 && i + 8 <= n) {
        x128 x = load128cs(src + i);
        f128 a, b;
#pragma unroll
        for (int j = 0; j < 4; j++) a[j] = __bfloat162float(x[j]), b[j] = __bfloat162float(x[4 + j]);
        store128(dst + i, a);
        store128(dst + i + 4, b);
    } else {
        for (size_t j = i; j < n && j < i + 8; j++) dst[j] = __bfloat162float(src[j]);
    }
}

void cast_f32_to_bf16(bf16 *dst, const float *src, size_t n, cudaStream_t s) {
    if (n == 0) return;
    unsigned grid = (unsigned)ceil_div_sz(ceil_div_sz(n, 8), 256);
    if (is_aligned16(dst) && is_aligned16(src)) cast_f32_to_bf16_kernel<8><<<grid, 256, 0, s>>>(dst, src, n);
    else cast_f32_to_bf16_kernel<1><<<grid, 256, 0, s>>>(dst, src, n);
    CUDA_CHECK_LAST();
}

void cast_bf16_to_f32(float *dst, const bf16 *src, size_t n, cudaStream_t s) {
    if (n == 0) return;
    unsigned grid = (unsigned)ceil_div_sz(ceil_div_sz(n, 8), 256);
    if (is_aligned16(dst) && is_aligned16(src)) cast_bf16_to_f32_kernel<8><<<grid, 256, 0, s>>>(dst, src, n);
    else cast_bf16_to_f32_kernel<1><<<grid, 256, 0, s>>>(dst, src, n);
    CUDA_CHECK_LAST();
}
