// MXFP8 GEMMs: native on sm_100+, emulated elsewhere (paths and layouts: matmul_mx.cuh).
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/mx_gpu.cuh"
#include "matmul.cuh"
#include "matmul_mx.cuh"

MxGemmPath mx_gemm_path_for(int cc_major) {
    const char *e = getenv("LLAMA_AO_MX_EMULATE");
    const int forced = e && e[0] && strcmp(e, "0") != 0;
    return cc_major >= 10 && !forced ? MX_GEMM_NATIVE : MX_GEMM_EMULATED;
}

MxGemmPath mx_gemm_path(const GpuCtx *ctx) { return mx_gemm_path_for(ctx->prop.major); }

const char *mx_gemm_path_name(MxGemmPath p) {
    return p == MX_GEMM_NATIVE ? "native (cuBLASLt block-scaled fp8, VEC32_UE8M0, sm_100+)"
                               : "emulated (dequantize to bf16 + bf16 GEMM: no MX tensor cores below sm_100; slower "
                                 "than --recipe bf16)";
}


int mx_gemm_try(GpuCtx *ctx, void *out, Fp8OutType out_type, int ldo, float beta, MxMat p, MxMat q, int rows_p,
                int rows_q, int kd, const MxGemmScratch *ws, MxGemmPath path, Fp8GemmInfo *info_out) {
    Fp8GemmInfo local, *info = info_out ? info_out : &local;
    memset(info, 0, sizeof *info);
    info->status = CUBLAS_STATUS_SUCCESS;
    info->algo_id = info->tile_id = info->stages_id = info->splitk = -1;
    if (rows_p <= 0 || rows_q <= 0 || kd <= 0 || ldo < rows_q)
        return fp8_gemm_refuse(info, "MX GEMM: bad shape rows_p=%d rows_q=%d kd=%d ldo=%d", rows_p, rows_q, kd, ldo);
    if (!out || !ws || !p.q || !p.e8m0 || !q.q || !q.e8m0)
        return fp8_gemm_refuse(info, "MX GEMM: a NULL pointer (out %p, scratch %p, P %p / %p, Q %p / %p)", out,
                         (const void *)ws, (const void *)p.q, (const void *)p.e8m0, (const void *)q.q,
                         (const void *)q.e8m0);
    if (out_type != FP8_OUT_BF16 && out_type != FP8_OUT_F32)
        return fp8_gemm_refuse(info, "MX GEMM: output type %d is not bf16 or fp32", (int)out_type);
    const int nkb = ceil_div(kd, MX_BLOCK);
    if (path == MX_GEMM_NATIVE) {
        if (ctx->prop.major < 10)
            return fp8_gemm_refuse(info,
                                   "MX GEMM: the native path (cuBLASLt VEC32_UE8M0) needs sm_100+, this GPU is %d.%d "
                                   "(use the emulated path)",
                                   ctx->prop.major, ctx->prop.minor);
        const size_t np = mx_swizzled_bytes(rows_p, nkb), nq = mx_swizzled_bytes(rows_q, nkb);
        if (!ws->sp || !ws->sq || ws->sp_cap < np || ws->sq_cap < nq)
            return fp8_gemm_refuse(info,
                                   "MX GEMM: the swizzled-scale scratch holds %zu / %zu bytes, the operands need %zu / "
                                   "%zu",
                                   ws->sp ? ws->sp_cap : 0, ws->sq ? ws->sq_cap : 0, np, nq);
        Fp8Mat a, b;
        memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
        a.q = p.q, a.dtype = p.dtype, a.scaling = FP8_SCALE_MX32, a.e8m0 = ws->sp;
        b.q = q.q, b.dtype = q.dtype, b.scaling = FP8_SCALE_MX32, b.e8m0 = ws->sq;
        // The swizzles write scratch only: a refusal by fp8_gemm_try leaves the caller's data untouched.
        mx_swizzle_scales(ws->sp, p.e8m0, rows_p, nkb, ctx->stream);
        mx_swizzle_scales(ws->sq, q.e8m0, rows_q, nkb, ctx->stream);
        return fp8_gemm_try(ctx, out, out_type, ldo, beta, a, b, rows_p, rows_q, kd, 0, info);
    }
    const size_t np = (size_t)rows_p * kd, nq = (size_t)rows_q * kd;
    if (!ws->p || !ws->q || ws->p_cap < np || ws->q_cap < nq)
        return fp8_gemm_refuse(info,
                               "MX GEMM (emulated): the dequantization scratch holds %zu / %zu bf16, the operands need "
                               "%zu / %zu",
                               ws->p ? ws->p_cap : 0, ws->q ? ws->q_cap : 0, np, nq);
    mx_dequant_bf16(ws->p, p.q, p.e8m0, rows_p, kd, p.dtype, ctx->stream);
    mx_dequant_bf16(ws->q, q.q, q.e8m0, rows_q, kd, q.dtype, ctx->stream);
    matmul_bf16_nt(ctx, out, out_type == FP8_OUT_F32, ldo, beta, ws->p, ws->q, rows_p, rows_q, kd);
    info->ok = 1;
    return 1;
}

void mx_gemm(GpuCtx *ctx, void *out, Fp8OutType out_type, int ldo, float beta, MxMat p, MxMat q, int rows_p,
             int rows_q, int kd, const MxGemmScratch *ws) {
    Fp8GemmInfo info;
    if (!mx_gemm_try(ctx, out, out_type, ldo, beta, p, q, rows_p, rows_q, kd, ws, mx_gemm_path(ctx), &info))
        FAIL("%s", info.msg);
}
