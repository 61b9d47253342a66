// fp8 GEMMs through cuBLASLt (layouts, scale modes and constraints: matmul_fp8.cuh).
// Validation runs before any cuBLASLt call, so a refusal launches nothing and leaks nothing.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <mutex>

#include "../common/cuda_utils.cuh"
#include "matmul_fp8.cuh"
#include "../quant/mx.h"

const char *fp8_dtype_name(Fp8Dtype dt) { return dt == FP8_E4M3 ? "e4m3" : dt == FP8_E5M2 ? "e5m2" : "?"; }

const char *fp8_scaling_name(Fp8Scaling s) {
    switch (s) {
        case FP8_SCALE_NONE: return "none";
        case FP8_SCALE_TENSOR: return "tensor";
        case FP8_SCALE_AXIS: return "axis";
        case FP8_SCALE_1X128: return "1x128";
        case FP8_SCALE_128X128: return "128x128";
        case FP8_SCALE_MX32: return "mx32";
    }
    return "?";
}

Fp8Mat fp8_mat(const uint8_t *q, const float *scale_inv, Fp8CastSpec spec, int rows, int cols) {
    int ld = 0;
    fp8_scale_count(spec, rows, cols, &ld);
    Fp8Mat m;
    m.q = q, m.scale_inv = scale_inv, m.dtype = spec.dtype, m.scaling = spec.scaling;
    m.scale_ld = spec.scaling == FP8_SCALE_128X128 ? ld : 0;
    m.e8m0 = NULL;  // MX32: the swizzled scales are the caller's (ops/matmul_mx.cu)
    return m;
}

// ------------------------------------------------------------------- validation
static int is_block(Fp8Scaling s) { return s == FP8_SCALE_1X128 || s == FP8_SCALE_128X128; }
static int blk_ld(int kd) { return (ceil_div(kd, FP8_BLOCK) + 3) / 4 * 4; }
static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

static cublasLtMatmulMatrixScale_t scale_mode(Fp8Scaling s) {
    switch (s) {
        case FP8_SCALE_AXIS: return CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        case FP8_SCALE_1X128: return CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
        case FP8_SCALE_128X128: return CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
        case FP8_SCALE_MX32: return CUBLASLT_MATMUL_MATRIX_SCALE_VEC32_UE8M0;
        default: return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
    }
}

int fp8_gemm_refuse(Fp8GemmInfo *info, const char *fmt, ...) {
    if (!info) return 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(info->msg, sizeof info->msg, fmt, ap);
    va_end(ap);
    info->ok = 0;
    return 0;
}

// One operand: its pointers, its scale layout and its scaling. Fills info->msg on failure.
static int check_operand(Fp8GemmInfo *info, const char *name, Fp8Mat m, int rows, int kd) {
    const int mx = m.scaling == FP8_SCALE_MX32;
    if (!m.q || (mx ? !m.e8m0 : !m.scale_inv))
        return fp8_gemm_refuse(info, "fp8 GEMM: operand %s has a NULL %s", name,
                               m.q ? (mx ? "e8m0" : "scale_inv") : "q");
    if (!aligned16(m.q))
        return fp8_gemm_refuse(info,
                               "fp8 GEMM: operand %s codes at %p are not 16-byte aligned (cuBLASLt fp8 needs 16-byte "
                               "aligned operands)",
                               name, (const void *)m.q);
    if (m.dtype != FP8_E4M3 && m.dtype != FP8_E5M2)
        return fp8_gemm_refuse(info, "fp8 GEMM: operand %s has dtype %d", name, (int)m.dtype);
    switch (m.scaling) {
        case FP8_SCALE_TENSOR:
        case FP8_SCALE_AXIS: break;
        case FP8_SCALE_1X128:
        case FP8_SCALE_128X128:
            if (!aligned16(m.scale_inv))
                return fp8_gemm_refuse(info,
                                       "fp8 GEMM: operand %s %s scales at %p are not 16-byte aligned (cuBLASLt block "
                                       "scales need 16-byte aligned starts)",
                                       name, fp8_scaling_name(m.scaling), (const void *)m.scale_inv);
            if (rows % 4)
                return fp8_gemm_refuse(
                    info,
                    "fp8 GEMM: operand %s has %d rows; cuBLASLt's 1x128 / 128x128 block scaling needs "
                    "M and N multiples of 4",
                    name, rows);
            if (m.scaling == FP8_SCALE_128X128 && m.scale_ld != blk_ld(kd))
                return fp8_gemm_refuse(
                    info,
                    "fp8 GEMM: operand %s 128x128 scale_ld = %d, but cuBLASLt's BLK128x128_32F layout "
                    "for kd = %d has column stride ceil(kd/128) rounded up to 4 = %d (see fp8_mat)",
                    name, m.scale_ld, kd, blk_ld(kd));
            break;
        case FP8_SCALE_MX32:  // the GPU (sm_100+) and the pairing are checked in check_gemm
            if (kd % MX_BLOCK)
                return fp8_gemm_refuse(info,
                                       "fp8 GEMM: operand %s is MX with kd = %d, not a multiple of 32 (VEC32_UE8M0 "
                                       "scales whole blocks of 32; torchao's to_mx refuses it too)",
                                       name, kd);
            if (!aligned16(m.e8m0))
                return fp8_gemm_refuse(info, "fp8 GEMM: operand %s MX scales at %p are not 16-byte aligned", name,
                                       (const void *)m.e8m0);
            break;
        default:
            return fp8_gemm_refuse(info,
                                   "fp8 GEMM: operand %s has scaling '%s', which no fp8 GEMM takes (bf16 operands go "
                                   "through ops/matmul.cuh)",
                                   name, fp8_scaling_name(m.scaling));
    }
    return 1;
}

static int check_gemm(GpuCtx *ctx, Fp8GemmInfo *info, const void *out, Fp8OutType ot, int ldo, Fp8Mat p, Fp8Mat q,
                      int rows_p, int rows_q, int kd) {
    const int cc = ctx->prop.major * 10 + ctx->prop.minor;
    if (rows_p <= 0 || rows_q <= 0 || kd <= 0)
        return fp8_gemm_refuse(info, "fp8 GEMM: bad shape rows_p=%d rows_q=%d kd=%d", rows_p, rows_q, kd);
    if (kd % 16)
        return fp8_gemm_refuse(info,
                               "fp8 GEMM: the reduction dimension %d is not a multiple of 16 (fp8 operand rows must be "
                               "16-byte multiples)\n  HINT: zero-pad it (torchao pad_inner_dim) before the cast",
                               kd);
    if (rows_q % 16)
        return fp8_gemm_refuse(info,
                               "fp8 GEMM: Q has %d rows (output columns), not a multiple of 16 (cuBLASLt fp8 m and "
                               "torch._scaled_mm's mat2 rule)\n  HINT: zero-pad the weight / transposed operand",
                               rows_q);
    if (ot != FP8_OUT_BF16 && ot != FP8_OUT_F32)
        return fp8_gemm_refuse(info, "fp8 GEMM: output type %d is not bf16 or fp32", (int)ot);
    // MX first, so that the reason on Hopper is the GPU whatever else the operands hold.
    const int mxp = p.scaling == FP8_SCALE_MX32, mxq = q.scaling == FP8_SCALE_MX32;
    if ((mxp || mxq) && ctx->prop.major < 10)
        return fp8_gemm_refuse(
            info,
            "fp8 GEMM: MX operands (e8m0 per 32): cuBLASLt's VEC32_UE8M0 runs on sm_100+ (Blackwell) "
            "only, this GPU is %d.%d\n  HINT: on Hopper MXFP8 is emulated (ops/matmul_mx.cuh: dequantize "
            "to bf16 + the bf16 GEMM)",
            cc / 10, cc % 10);
    if (mxp != mxq)
        return fp8_gemm_refuse(info,
                               "fp8 GEMM: scalings %s (P) x %s (Q): an MX operand pairs only with another MX operand",
                               fp8_scaling_name(p.scaling), fp8_scaling_name(q.scaling));
    const int esz = ot == FP8_OUT_BF16 ? 2 : 4;
    if (!out || !aligned16(out) || ldo < rows_q || ((size_t)ldo * esz) % 16)
        return fp8_gemm_refuse(
            info,
            "fp8 GEMM: output %p with row stride %d (%s): needs a 16-byte aligned pointer, ldo >= %d "
            "and ldo * %d bytes a multiple of 16",
            out, ldo, ot == FP8_OUT_BF16 ? "bf16" : "fp32", rows_q, esz);
    if (!check_operand(info, "P", p, rows_p, kd) || !check_operand(info, "Q", q, rows_q, kd)) return 0;
    if (p.dtype == FP8_E5M2 && q.dtype == FP8_E5M2)
        return fp8_gemm_refuse(info,
                               "fp8 GEMM: e5m2 x e5m2 is not a cuBLASLt combination (e4m3 x e4m3, e4m3 x e5m2 and "
                               "e5m2 x e4m3 are)");
    const Fp8Scaling sp = p.scaling, sq = q.scaling;
    if (sp == FP8_SCALE_128X128 && sq == FP8_SCALE_128X128)
        return fp8_gemm_refuse(info,
                               "fp8 GEMM: 128x128 x 128x128 block scaling is not supported by cuBLASLt (one operand "
                               "must be 1x128)");
    if (sp != sq && !(is_block(sp) && is_block(sq))) {
        if ((sp == FP8_SCALE_AXIS && sq == FP8_SCALE_TENSOR) || (sp == FP8_SCALE_TENSOR && sq == FP8_SCALE_AXIS))
            return fp8_gemm_refuse(
                info,
                "fp8 GEMM: axis x tensor scaling: cuBLASLt's OUTER_VEC_32F needs vectors on both "
                "operands\n  HINT: broadcast the tensor scale into a vector with fp8_scale_broadcast");
        return fp8_gemm_refuse(info,
                               "fp8 GEMM: scalings %s (P) x %s (Q) cannot be mixed (tensor x tensor, axis x axis, or "
                               "1x128 / 128x128 blocks)",
                               fp8_scaling_name(sp), fp8_scaling_name(sq));
    }
    if (sp == FP8_SCALE_MX32) {
        // checked above: both MX, sm_100+
    } else if (sp == FP8_SCALE_TENSOR) {
        if (cc < 89)
            return fp8_gemm_refuse(info, "fp8 GEMM: fp8 needs compute capability 8.9+ (this GPU is %d.%d)", cc / 10,
                                   cc % 10);
    } else if (ctx->prop.major != 9) {
        return fp8_gemm_refuse(info,
                               "fp8 GEMM: %s scaling (cuBLASLt %s) runs on compute capability 9.x only (this GPU is "
                               "%d.%d)",
                               fp8_scaling_name(sp), sp == FP8_SCALE_AXIS ? "OUTER_VEC_32F" : "VEC128 / BLK128x128",
                               cc / 10, cc % 10);
    }
    return 1;
}

// ------------------------------------------------------------------- algorithm cache
// The heuristic query costs tens of microseconds and a training step repeats a few shapes, so the
// choice is cached per (device, shape, ldo, dtypes, scale modes, output, beta != 0, fast accum,
// pointer alignments), as ops/matmul.cu does for bf16.
typedef struct {
    int device, m, n, k, ldo, out_type, adt, bdt, amode, bmode, accumulate, fast_accum;
    unsigned align[3];  // A, B, D
} Fp8AlgoKey;
typedef struct {
    Fp8AlgoKey key;
    cublasLtMatmulAlgo_t algo;
    int nres;
    size_t workspace;
} Fp8AlgoEntry;
#define FP8_ALGO_CACHE_SIZE 256
static Fp8AlgoEntry g_fp8_algos[FP8_ALGO_CACHE_SIZE];
static int g_fp8_algo_count;
static std::mutex g_fp8_algo_mutex;

static void describe_algo(Fp8GemmInfo *info, const cublasLtMatmulAlgo_t *algo) {
    int32_t id = -1, splitk = -1;
    uint32_t tile = 0, stages = 0;
    size_t w = 0;
    cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
    cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
    cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
    cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
    info->algo_id = id, info->tile_id = (int)tile, info->stages_id = (int)stages, info->splitk = splitk;
}

// A cuBLASLt call that failed: record it and bail out (descriptors are released by the caller).
#define LT_TRY(call)                                                                                               \
    do {                                                                                                           \
        cublasStatus_t s_ = (call);                                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                         \
            info->status = s_;                                                                                     \
            snprintf(info->msg, sizeof info->msg, "fp8 GEMM %s: %s failed: %s (%s)", shape, #call,                 \
                     cublasGetStatusName(s_), cublasGetStatusString(s_));                                          \
            goto done;                                                                                             \
        }                                                                                                          \
    } while (0)

int fp8_gemm_try(GpuCtx *ctx, void *out, Fp8OutType out_type, int ldo, float beta, Fp8Mat p, Fp8Mat q, int rows_p,
                 int rows_q, int kd, int fast_accum, Fp8GemmInfo *info_out) {
    Fp8GemmInfo local, *info = info_out ? info_out : &local;
    memset(info, 0, sizeof *info);
    info->status = CUBLAS_STATUS_SUCCESS;
    info->algo_id = info->tile_id = info->stages_id = info->splitk = -1;
    if (!check_gemm(ctx, info, out, out_type, ldo, p, q, rows_p, rows_q, kd)) return 0;

    const int m = rows_q, n = rows_p, k = kd;
    // Block scaling multiplies each 128-long partial sum by its scales, i.e. it promotes to fp32 per
    // k-block by construction: fast accumulation has no meaning there and is not requested.
    fast_accum = fast_accum && !is_block(p.scaling) && p.scaling != FP8_SCALE_MX32;
    char shape[160];
    snprintf(shape, sizeof shape, "m=%d n=%d k=%d ldo=%d A=%s/%s B=%s/%s out=%s beta=%g fast_accum=%d", m, n, k, ldo,
             fp8_dtype_name(q.dtype), fp8_scaling_name(q.scaling), fp8_dtype_name(p.dtype), fp8_scaling_name(p.scaling),
             out_type == FP8_OUT_BF16 ? "bf16" : "fp32", beta, fast_accum);
    const cudaDataType_t adt = q.dtype == FP8_E4M3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2;
    const cudaDataType_t bdt = p.dtype == FP8_E4M3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2;
    const cudaDataType_t ddt = out_type == FP8_OUT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    const int32_t amode = scale_mode(q.scaling), bmode = scale_mode(p.scaling);

    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulAlgo_t algo;
    Fp8AlgoKey key;
    int found = 0;

    LT_TRY(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    {
        const int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        const int8_t fa = fast_accum ? 1 : 0;
        const void *as = q.scaling == FP8_SCALE_MX32 ? (const void *)q.e8m0 : (const void *)q.scale_inv;
        const void *bs = p.scaling == FP8_SCALE_MX32 ? (const void *)p.e8m0 : (const void *)p.scale_inv;
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa, sizeof fa));
        // Scale modes are set only when not the default, so that plain tensorwise calls look exactly
        // like the pre-12.9 API (which has no mode attributes).
        if (amode != CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F)
            LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &amode, sizeof amode));
        if (bmode != CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F)
            LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bmode, sizeof bmode));
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &as, sizeof as));
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &bs, sizeof bs));
    }
    // Stored shapes: A (op T) is k x m column-major = Q [rows_q, kd] row-major; B is k x n = P.
    LT_TRY(cublasLtMatrixLayoutCreate(&la, adt, k, m, k));
    LT_TRY(cublasLtMatrixLayoutCreate(&lb, bdt, k, n, k));
    LT_TRY(cublasLtMatrixLayoutCreate(&ld, ddt, m, n, ldo));

    memset(&key, 0, sizeof key);
    key.device = ctx->device, key.m = m, key.n = n, key.k = k, key.ldo = ldo, key.out_type = (int)out_type;
    key.adt = (int)adt, key.bdt = (int)bdt, key.amode = amode, key.bmode = bmode;
    key.accumulate = beta != 0.0f, key.fast_accum = fast_accum ? 1 : 0;
    key.align[0] = ptr_align256(q.q), key.align[1] = ptr_align256(p.q), key.align[2] = ptr_align256(out);
    {
        std::lock_guard<std::mutex> lock(g_fp8_algo_mutex);
        for (int i = 0; i < g_fp8_algo_count && !found; i++)
            if (memcmp(&g_fp8_algos[i].key, &key, sizeof key) == 0) {
                algo = g_fp8_algos[i].algo, found = 1;
                info->heuristic_results = g_fp8_algos[i].nres, info->workspace = g_fp8_algos[i].workspace;
            }
    }
    info->cached = found;
    if (!found) {
        LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
        const uint64_t ws = ctx->lt_workspace_size;
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        const cublasLtMatmulPreferenceAttributes_t al_attr[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++) {
            const uint32_t a = key.align[i < 3 ? i : 2];  // C and D are the same buffer
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, al_attr[i], &a, sizeof a));
        }
        cublasLtMatmulHeuristicResult_t res[8];
        int nres = 0;
        LT_TRY(cublasLtMatmulAlgoGetHeuristic(ctx->lt, desc, la, lb, ld, ld, pref, 8, res, &nres));
        info->heuristic_results = nres;
        int pick = -1;
        for (int i = 0; i < nres && pick < 0; i++)
            if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= ctx->lt_workspace_size) pick = i;
        if (pick < 0) {
            info->status = CUBLAS_STATUS_NOT_SUPPORTED;
            snprintf(info->msg, sizeof info->msg,
                     "fp8 GEMM %s: cuBLASLt's heuristic offered %d algorithms, none usable (alignments A %u B %u D %u) "
                     "— this combination is not supported by this cuBLASLt (version %zu) on sm_%d%d",
                     shape, nres, key.align[0], key.align[1], key.align[2], cublasLtGetVersion(), ctx->prop.major,
                     ctx->prop.minor);
            goto done;
        }
        algo = res[pick].algo;
        info->workspace = res[pick].workspaceSize;
        std::lock_guard<std::mutex> lock(g_fp8_algo_mutex);
        if (g_fp8_algo_count < FP8_ALGO_CACHE_SIZE) {
            Fp8AlgoEntry *e = &g_fp8_algos[g_fp8_algo_count++];
            e->key = key, e->algo = algo, e->nres = nres, e->workspace = info->workspace;
        }
    }
    describe_algo(info, &algo);
    {
        const float alpha = 1.0f;
        LT_TRY(cublasLtMatmul(ctx->lt, desc, &alpha, q.q, la, p.q, lb, &beta, out, ld, out, ld, &algo,
                              ctx->lt_workspace, ctx->lt_workspace_size, ctx->stream));
    }
    info->ok = 1;
done:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return info->ok;
}
#undef LT_TRY

void fp8_gemm(GpuCtx *ctx, void *out, Fp8OutType out_type, int ldo, float beta, Fp8Mat p, Fp8Mat q, int rows_p,
              int rows_q, int kd, int fast_accum) {
    Fp8GemmInfo info;
    if (!fp8_gemm_try(ctx, out, out_type, ldo, beta, p, q, rows_p, rows_q, kd, fast_accum, &info))
        FAIL("%s", info.msg);
}

// ------------------------------------------------------------------- the three GEMMs of a Linear
void matmul_fp8_forward(GpuCtx *ctx, bf16 *out, int ldo, Fp8Mat x, Fp8Mat w, int N, int K, int M, int fast_accum) {
    CHECK(N >= 0 && K > 0 && M > 0 && ldo >= M, "matmul_fp8_forward: bad shape N=%d K=%d M=%d ldo=%d", N, K, M, ldo);
    if (N == 0) return;
    fp8_gemm(ctx, out, FP8_OUT_BF16, ldo, 0.0f, x, w, N, M, K, fast_accum);
}

void matmul_fp8_dinp(GpuCtx *ctx, bf16 *dinp, Fp8Mat g, Fp8Mat wt, int N, int K, int M, int accumulate) {
    CHECK(N >= 0 && K > 0 && M > 0, "matmul_fp8_dinp: bad shape N=%d K=%d M=%d", N, K, M);
    if (N == 0) return;
    fp8_gemm(ctx, dinp, FP8_OUT_BF16, K, accumulate ? 1.0f : 0.0f, g, wt, N, K, M, 0);
}

void matmul_fp8_dweight(GpuCtx *ctx, void *dweight, Fp8OutType out_type, Fp8Mat gt, Fp8Mat xt, int N, int K, int M,
                        int accumulate) {
    CHECK(N >= 0 && K > 0 && M > 0, "matmul_fp8_dweight: bad shape N=%d K=%d M=%d", N, K, M);
    if (N == 0) return;  // an empty reduction: dweight keeps its value (accumulate) — callers zero it otherwise
    fp8_gemm(ctx, dweight, out_type, K, accumulate ? 1.0f : 0.0f, gt, xt, M, K, N, 0);
}

// ------------------------------------------------------------------- scale broadcast
__global__ void fp8_scale_broadcast_kernel(float *vec, const float *scalar, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) vec[i] = *scalar;
}

void fp8_scale_broadcast(float *vec, const float *scalar, int n, cudaStream_t stream) {
    if (n <= 0) return;
    fp8_scale_broadcast_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(vec, scalar, n);
    CUDA_CHECK_LAST();
}
