// GEMM microbenchmark: bf16 (ops/matmul.cu) vs fp8 tensorwise / rowwise / blockwise
// (ops/matmul_fp8.cu) at the Llama-3-8B linear shapes, M = 8192 tokens, for the three GEMMs of a
// Linear (forward, grad_input, grad_weight). Operands are cast once from random bf16 with each
// recipe's casts (fp8_recipe_cast); the GEMM alone is timed, and the cast of its two operands
// separately ("w/ cast" = the speedup if both operands were cast just for this GEMM; in training
// x and W casts are shared between GEMMs, so the truth lies between the two columns).
// Timing: CUDA events around each call on the context's stream, `--warmup` untimed calls, median of
// `--iters`. The working set of the large shapes exceeds L2 (50-60 MB); the small ones partly fit,
// for every variant alike. Output: one markdown table row per (shape, GEMM) for docs/BENCHMARKS.md,
// a table of every cast (time, GB/s, share of the DRAM peak), then a detail section (cuBLASLt
// algorithm, heuristic results, cast times per GEMM).
// A cast's GB/s counts the bytes it cannot avoid moving: bf16 read once (2 B per element), fp8
// written (1 B), its scales, and for tensor scaling the amax pass (x read once more, 2 B): the
// scale must be known before the first code.
//   build/bench/bench_gemm [--tokens 8192] [--iters 20] [--warmup 5]
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <functional>

#include "../../ops/matmul.cuh"
#include "../../ops/matmul_fp8.cuh"
#include "../../quant/fp8_cast.cuh"
#include "bench_util.cuh"
extern "C" {
#include "../../common/flags.h"
}

static int g_tokens = 8192, g_iters = 20, g_warmup = 5;
static const Flag FLAGS[] = {
    {"--tokens", "-n", FLAG_INT, &g_tokens, "tokens per GEMM (the M of the Llama shapes)", 16, 1 << 20},
    {"--iters", "-i", FLAG_INT, &g_iters, "timed calls per GEMM (median reported)", 1, 10000},
    {"--warmup", "-w", FLAG_INT, &g_warmup, "untimed calls before timing", 0, 10000},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))

static double time_ms(GpuCtx *ctx, const std::function<void()> &f) {
    return bench_time_ms(ctx->stream, g_warmup, g_iters, f);
}

typedef struct {
    const char *name;
    int K, M;  // in_features, out_features
} Shape;
static const Shape SHAPES[] = {
    {"qkv", 4096, 6144},        // fused q|k|v: 4096 -> 4096 + 2 * 1024 (GQA, 8 KV heads)
    {"o", 4096, 4096},          // attention output
    {"gate_up", 4096, 28672},   // fused gate|up: 4096 -> 2 * 14336
    {"down", 14336, 4096},      // MLP down
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))
enum { G_FWD = 0, G_DINP = 1, G_DW = 2 };
static const char *GEMM_NAMES[3] = {"fwd", "dinp", "dW"};
static const Fp8Recipe RECIPES[] = {FP8_RECIPE_TENSORWISE, FP8_RECIPE_ROWWISE, FP8_RECIPE_BLOCKWISE};
#define N_RECIPES 3
// The two operands (P, Q) of each GEMM (quant/fp8.h Fp8Operand).
static const Fp8Operand GEMM_OPS[3][2] = {{FP8_X_FWD, FP8_W_FWD}, {FP8_G_GI, FP8_W_GI}, {FP8_G_GW, FP8_X_GW}};

typedef struct {
    uint8_t *q;
    float *s;
    Fp8Mat m;
} Operand;

int main(int argc, char **argv) {
    if (!flags_parse(FLAGS, N_FLAGS, argc, argv, "bench_gemm", "[options]")) return 0;
    GpuCtx ctx;
    gpu_ctx_init(&ctx, 0);
    cudaStream_t s = ctx.stream;
    const double peak16 = gpu_peak_bf16_flops(&ctx), peak8 = 2.0 * peak16;
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt), cudaDriverGetVersion(&drv);
    printf("bench_gemm: %s (sm_%d%d, %d SMs), CUDA runtime %d, driver %d, cuBLASLt %zu; tokens %d, median of %d "
           "after %d warm-up\n",
           ctx.prop.name, ctx.prop.major, ctx.prop.minor, ctx.prop.multiProcessorCount, rt, drv, cublasLtGetVersion(),
           g_tokens, g_iters, g_warmup);
    // DRAM peak from the memory clock (kHz, double data rate) and bus width (bits).
    int mem_khz = 0, bus_bits = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, ctx.device));
    CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, ctx.device));
    const double peak_bw = 2.0 * mem_khz * 1e3 * bus_bits / 8.0;
    printf("peaks used for SOL: bf16 %.0f TFLOP/s, fp8 %.0f TFLOP/s (dense), DRAM %.2f TB/s\n", peak16 / 1e12,
           peak8 / 1e12, peak_bw / 1e12);
    printf("fp8 forward with fast accumulation (torchao), grad GEMMs without; dW accumulates in fp32 (beta 1) as the "
           "bf16 path does\n\n");
    printf("| shape | GEMM | out x red. | bf16 TFLOP/s (SOL) |");
    for (int r = 0; r < N_RECIPES; r++) printf(" fp8 %s TFLOP/s (SOL) speedup [w/ cast] |", fp8_recipe_name(RECIPES[r]));
    printf("\n| --- | --- | --- | ---: |");
    for (int r = 0; r < N_RECIPES; r++) printf(" ---: |");
    printf("\n");
    fflush(stdout);

    static char details[64][768];
    int nd = 0;
    // Each cast: median ms and the bytes it must move (see the top of the file).
    static double cast_ms[N_SHAPES][N_RECIPES][FP8_NOPERANDS], cast_bytes[N_SHAPES][N_RECIPES][FP8_NOPERANDS];
    static Fp8CastSpec cast_spec[N_SHAPES][N_RECIPES][FP8_NOPERANDS];
    const int N = g_tokens;
    for (int si = 0; si < N_SHAPES; si++) {
        const Shape &sh = SHAPES[si];
        const int K = sh.K, M = sh.M;
        bf16 *x = bench_rand_bf16((size_t)N * K, 1, 1.0f, s), *w = bench_rand_bf16((size_t)M * K, 2, 0.02f, s);
        bf16 *g = bench_rand_bf16((size_t)N * M, 3, 1e-4f, s);
        bf16 *y, *dx;
        float *dw;
        CUDA_CHECK(cudaMalloc(&y, (size_t)N * M * sizeof(bf16)));
        CUDA_CHECK(cudaMalloc(&dx, (size_t)N * K * sizeof(bf16)));
        CUDA_CHECK(cudaMalloc(&dw, (size_t)M * K * sizeof(float)));
        CUDA_CHECK(cudaMemsetAsync(dw, 0, (size_t)M * K * sizeof(float), s));
        float *amax_ws;
        CUDA_CHECK(cudaMalloc(&amax_ws, FP8_AMAX_WS_FLOATS * sizeof(float)));
        CUDA_CHECK(cudaMemsetAsync(amax_ws, 0, FP8_AMAX_WS_FLOATS * sizeof(float), s));  // the ticket counter

        // bf16 baselines.
        double t16[3];
        t16[G_FWD] = time_ms(&ctx, [&] { matmul_forward(&ctx, y, x, w, NULL, N, K, M, M); });
        t16[G_DINP] = time_ms(&ctx, [&] { matmul_backward(&ctx, dx, NULL, NULL, g, M, x, w, N, K, M, 0); });
        t16[G_DW] = time_ms(&ctx, [&] { matmul_backward(&ctx, NULL, dw, NULL, g, M, x, w, N, K, M, 0); });

        // fp8: cast every operand of each recipe, time each GEMM and each cast.
        double t8[N_RECIPES][3], tcast[N_RECIPES][3];
        int ok[N_RECIPES][3];
        const bf16 *src[FP8_NOPERANDS] = {x, w, g, w, g, x};
        const int rows[FP8_NOPERANDS] = {N, M, N, M, N, N}, cols[FP8_NOPERANDS] = {K, K, M, K, M, K};
        for (int ri = 0; ri < N_RECIPES; ri++) {
            const Fp8Recipe r = RECIPES[ri];
            Operand ops[FP8_NOPERANDS];
            double tc[FP8_NOPERANDS];
            for (int op = 0; op < FP8_NOPERANDS; op++) {
                Fp8CastSpec sp = fp8_recipe_cast(r, (Fp8Operand)op);
                int ld = 0;
                size_t ns = fp8_scale_count(sp, rows[op], cols[op], &ld);
                CUDA_CHECK(cudaMalloc(&ops[op].q, (size_t)rows[op] * cols[op]));
                CUDA_CHECK(cudaMalloc(&ops[op].s, ns * sizeof(float)));
                CUDA_CHECK(cudaMemsetAsync(ops[op].s, 0, ns * sizeof(float), s));  // 128x128 padding: finite
                auto cast = [&] { fp8_cast_operand(ops[op].q, ops[op].s, NULL, src[op], rows[op], cols[op], sp, amax_ws, s); };
                tc[op] = time_ms(&ctx, cast);
                ops[op].m = fp8_mat(ops[op].q, ops[op].s, sp, rows[op], cols[op]);
                const double n = (double)rows[op] * cols[op];
                cast_ms[si][ri][op] = tc[op], cast_spec[si][ri][op] = sp;
                cast_bytes[si][ri][op] = 3.0 * n + 4.0 * ns + (sp.scaling == FP8_SCALE_TENSOR ? 2.0 * n : 0.0);
            }
            for (int gm = 0; gm < 3; gm++) {
                const Fp8Mat &P = ops[GEMM_OPS[gm][0]].m, &Q = ops[GEMM_OPS[gm][1]].m;
                tcast[ri][gm] = tc[GEMM_OPS[gm][0]] + tc[GEMM_OPS[gm][1]];
                // One checked call first: a refusal is reported in the table, not fatal.
                Fp8GemmInfo in;
                if (gm == G_FWD) ok[ri][gm] = fp8_gemm_try(&ctx, y, FP8_OUT_BF16, M, 0.0f, P, Q, N, M, K, 1, &in);
                else if (gm == G_DINP) ok[ri][gm] = fp8_gemm_try(&ctx, dx, FP8_OUT_BF16, K, 0.0f, P, Q, N, K, M, 0, &in);
                else ok[ri][gm] = fp8_gemm_try(&ctx, dw, FP8_OUT_F32, K, 1.0f, P, Q, M, K, N, 0, &in);
                if (nd < 64)
                    snprintf(details[nd++], sizeof details[0],
                             "%-8s %-4s %-10s %s: heuristic results %d, algo %d tile %d stages %d splitk %d, workspace "
                             "%zu B; casts %.3f ms (P %s %s, Q %s %s)%s%s",
                             sh.name, GEMM_NAMES[gm], fp8_recipe_name(r), ok[ri][gm] ? "ok" : "REFUSED",
                             in.heuristic_results, in.algo_id, in.tile_id, in.stages_id, in.splitk, in.workspace,
                             tcast[ri][gm], fp8_scaling_name(P.scaling), fp8_dtype_name(P.dtype),
                             fp8_scaling_name(Q.scaling), fp8_dtype_name(Q.dtype), in.msg[0] ? ": " : "", in.msg);
                if (!ok[ri][gm]) continue;
                if (gm == G_FWD) t8[ri][gm] = time_ms(&ctx, [&] { matmul_fp8_forward(&ctx, y, M, P, Q, N, K, M, 1); });
                else if (gm == G_DINP) t8[ri][gm] = time_ms(&ctx, [&] { matmul_fp8_dinp(&ctx, dx, P, Q, N, K, M, 0); });
                else t8[ri][gm] = time_ms(&ctx, [&] { matmul_fp8_dweight(&ctx, dw, FP8_OUT_F32, P, Q, N, K, M, 1); });
            }
            for (int op = 0; op < FP8_NOPERANDS; op++) cudaFree(ops[op].q), cudaFree(ops[op].s);
        }

        for (int gm = 0; gm < 3; gm++) {
            const double flops = 2.0 * N * K * M;
            const int om = gm == G_DW ? M : N, on = gm == G_FWD ? M : K, red = gm == G_FWD ? K : gm == G_DINP ? M : N;
            double tf16 = flops / (t16[gm] * 1e-3);
            printf("| %s %d->%d | %s | %dx%d x %d | %.0f (%.0f%%) |", sh.name, K, M, GEMM_NAMES[gm], om, on, red,
                   tf16 / 1e12, 100.0 * tf16 / peak16);
            for (int ri = 0; ri < N_RECIPES; ri++) {
                if (!ok[ri][gm]) {
                    printf(" refused |");
                    continue;
                }
                double tf8 = flops / (t8[ri][gm] * 1e-3);
                printf(" %.0f (%.0f%%) %.2fx [%.2fx] |", tf8 / 1e12, 100.0 * tf8 / peak8, t16[gm] / t8[ri][gm],
                       t16[gm] / (t8[ri][gm] + tcast[ri][gm]));
            }
            printf("\n");
        }
        fflush(stdout);
        cudaFree(x), cudaFree(w), cudaFree(g), cudaFree(y), cudaFree(dx), cudaFree(dw), cudaFree(amax_ws);
    }
    // Every cast: time, GB/s over the bytes it must move, share of the DRAM peak.
    printf("\ncasts (fp8_cast_operand of the stored bf16 tensor: x [%d,K], W [M,K], g [%d,M]; us, TB/s over "
           "2 B read + 1 B written per element + scales, tensor scaling + 2 B for its amax pass, %% of the "
           "DRAM peak %.2f TB/s)\n\n",
           N, N, peak_bw / 1e12);
    printf("| shape | recipe |");
    for (int op = 0; op < FP8_NOPERANDS; op++) printf(" %s |", fp8_operand_name((Fp8Operand)op));
    printf("\n| --- | --- |");
    for (int op = 0; op < FP8_NOPERANDS; op++) printf(" ---: |");
    printf("\n");
    for (int si = 0; si < N_SHAPES; si++)
        for (int ri = 0; ri < N_RECIPES; ri++) {
            printf("| %s %d->%d | %s |", SHAPES[si].name, SHAPES[si].K, SHAPES[si].M, fp8_recipe_name(RECIPES[ri]));
            for (int op = 0; op < FP8_NOPERANDS; op++) {
                const Fp8CastSpec &sp = cast_spec[si][ri][op];
                const double bw = cast_bytes[si][ri][op] / (cast_ms[si][ri][op] * 1e-3);
                printf(" %s%s %.0f us %.2f TB/s (%.0f%%) |", fp8_scaling_name(sp.scaling), sp.transposed ? "^T" : "",
                       cast_ms[si][ri][op] * 1e3, bw / 1e12, 100.0 * bw / peak_bw);
            }
            printf("\n");
        }
    printf("\ndetails (cast times: median of the two operands' fp8_cast_operand calls, summed)\n");
    for (int i = 0; i < nd; i++) printf("  %s\n", details[i]);
    gpu_ctx_free(&ctx);
    return 0;
}
