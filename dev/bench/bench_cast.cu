// The fp8 casts of one transformer layer, as the Linear dispatch (ops/linear.cu) issues them, timed one
// by one: per recipe, every amax / cast kernel of the four Linear groups (q/k/v, o, gate/up, down) of one
// micro-batch, forward and backward, at a Llama shape (default Llama-3.2-1B, b=4 t=2048: 8192 tokens).
// Same calls, same shapes, same row strides as training (a part's gradient columns read in place from the
// packed q/k/v and gate/up gradients), random bf16 inputs; GEMMs are not run. Per cast: median us, the
// bytes it must move (bf16 read 2 B per element, codes written 1 B; an amax pass reads 2 B; a cast to
// both layouts writes 2 B), TB/s over those bytes, and the share of a device-to-device copy's rate,
// measured first (cudaMemcpyAsync of 1 GiB: read + write). Totals per layer: bytes, launches, us, and
// the same without the W / W^T casts (what a micro-batch after a step's first costs with the weight
// cache, train_llama --weight-cache with --total-batch above b*t).
//   build/bench/bench_cast [--tokens 8192] [--hidden 2048] [--q 2048] [--kv 512] [--ffn 8192] [--iters 20]
//   build/bench/bench_cast --tokens 4096 --hidden 3072 --q 3072 --kv 1024 --ffn 8192   # Llama-3.2-3B, b=2 t=2048
// --tile 0 (default) runs everything twice: the transposed casts with 512-row tiles (2 CTAs per SM;
// LLAMA_AO_FP8_TSUB=512 in training) and with 256 (3 per SM, the default; the same bits): the A/B of
// quant/fp8_cast.cu's SUB. LLAMA_AO_FP8_CLUSTER=8 caps the transposed axis cast's clusters at 8 CTAs
// (the portable size; default 16 where the GPU allows): the other A/B, for rowwise's x^T, W^T, g^T.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "../../common/cuda_utils.cuh"
#include "bench_util.cuh"
#include "../../ops/linear.h"
#include "../../ops/matmul_fp8.cuh"
#include "../../quant/fp8_cast.cuh"
extern "C" {
#include "../../common/flags.h"
}

static int g_tokens = 8192, g_hidden = 2048, g_q = 2048, g_kv = 512, g_ffn = 8192, g_iters = 20, g_warmup = 3, g_tile = 0;
static const Flag FLAGS[] = {
    {"--tokens", "-n", FLAG_INT, &g_tokens, "tokens per micro-batch (b*t)", 16, 1 << 20},
    {"--hidden", nullptr, FLAG_INT, &g_hidden, "hidden size D", 16, 1 << 16},
    {"--q", nullptr, FLAG_INT, &g_q, "q_proj out_features (heads x head_dim)", 16, 1 << 16},
    {"--kv", nullptr, FLAG_INT, &g_kv, "k_proj / v_proj out_features", 16, 1 << 16},
    {"--ffn", nullptr, FLAG_INT, &g_ffn, "intermediate size F", 16, 1 << 17},
    {"--iters", "-i", FLAG_INT, &g_iters, "timed calls per cast (median reported)", 1, 10000},
    {"--warmup", "-w", FLAG_INT, &g_warmup, "untimed calls before timing", 0, 10000},
    {"--tile", nullptr, FLAG_INT, &g_tile, "transposed casts' tile rows: 512, 256, or 0 for both", 0, 512},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))

static bf16 *rand_bf16(size_t n, uint64_t seed, cudaStream_t s) { return bench_rand_bf16(n, seed, 1.0f, s); }
static double time_ms(cudaStream_t s, const std::function<void()> &f) { return bench_time_ms(s, g_warmup, g_iters, f); }

struct Item {
    std::string name;
    double bytes;
    int launches, weight;  // weight: a W / W^T cast (reused from the weight cache after a step's first micro-batch)
    std::function<void()> f;
};

struct Part {
    const char *name;
    int M;
    const bf16 *w;
};
struct Group {
    const char *name;
    const bf16 *x;  // [N, K]
    int K;
    const bf16 *g;  // [N, ld] packed gradient
    std::vector<Part> parts;
};

int main(int argc, char **argv) {
    if (!flags_parse(FLAGS, N_FLAGS, argc, argv, "bench_cast", "[options]")) return 0;
    GpuCtx ctx;
    gpu_ctx_init(&ctx, 0);
    cudaStream_t s = ctx.stream;
    const int N = g_tokens, D = g_hidden, QD = g_q, KVD = g_kv, F = g_ffn;
    const char *cl = getenv("LLAMA_AO_FP8_CLUSTER");
    printf("bench_cast: %s (%d SMs); N=%d D=%d q=%d kv=%d F=%d; median of %d after %d warm-up; axis clusters %s\n",
           ctx.prop.name, ctx.prop.multiProcessorCount, N, D, QD, KVD, F, g_iters, g_warmup,
           cl && atoi(cl) == 8 ? "<= 8 (LLAMA_AO_FP8_CLUSTER=8)" : "<= 16 where the GPU allows");
    // A device-to-device copy: the rate a memory-bound kernel can hope for (read + write).
    double copy_bw;
    {
        const size_t bytes = (size_t)1 << 30;
        void *a, *b;
        CUDA_CHECK(cudaMalloc(&a, bytes));
        CUDA_CHECK(cudaMalloc(&b, bytes));
        CUDA_CHECK(cudaMemsetAsync(a, 1, bytes, s));
        const double ms = time_ms(s, [&] { CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s)); });
        copy_bw = 2.0 * bytes / (ms * 1e-3);
        printf("copy (cudaMemcpyAsync D2D, 1 GiB): %.0f us, %.2f TB/s (read + write)\n\n", ms * 1e3, copy_bw / 1e12);
        cudaFree(a), cudaFree(b);
    }
    // The layer's tensors (random bf16): inputs of the four groups, weights, packed gradients.
    const int QKV = QD + 2 * KVD;
    bf16 *ln = rand_bf16((size_t)N * D, 1, s), *attn = rand_bf16((size_t)N * QD, 2, s), *act = rand_bf16((size_t)N * F, 3, s);
    bf16 *wqkv = rand_bf16((size_t)QKV * D, 4, s), *wo = rand_bf16((size_t)D * QD, 5, s);
    bf16 *wgu = rand_bf16((size_t)2 * F * D, 6, s), *wd = rand_bf16((size_t)D * F, 7, s);
    bf16 *dqkv = rand_bf16((size_t)N * QKV, 8, s), *dres = rand_bf16((size_t)N * D, 9, s), *dgu = rand_bf16((size_t)N * 2 * F, 10, s);
    std::vector<Group> groups = {
        {"qkv", ln, D, dqkv, {{"q", QD, wqkv}, {"k", KVD, wqkv + (size_t)QD * D}, {"v", KVD, wqkv + (size_t)(QD + KVD) * D}}},
        {"o", attn, QD, dres, {{"o", D, wo}}},
        {"gate_up", ln, D, dgu, {{"gate", F, wgu}, {"up", F, wgu + (size_t)F * D}}},
        {"down", act, F, dres, {{"down", D, wd}}},
    };
    size_t maxn = 0;
    for (auto &gr : groups) {
        maxn = std::max(maxn, (size_t)N * gr.K);
        for (auto &p : gr.parts) maxn = std::max({maxn, (size_t)N * p.M, (size_t)p.M * gr.K});
    }
    uint8_t *q1, *q2;
    float *s1, *s2, *ws, *svec;
    CUDA_CHECK(cudaMalloc(&q1, maxn));
    CUDA_CHECK(cudaMalloc(&q2, maxn));
    const size_t ns = maxn / 16 + 4 * (size_t)std::max({N, F, D, QKV}) + 4096;
    CUDA_CHECK(cudaMalloc(&s1, ns * 4));
    CUDA_CHECK(cudaMalloc(&s2, ns * 4));
    CUDA_CHECK(cudaMalloc(&ws, FP8_AMAX_WS_FLOATS * 4));
    CUDA_CHECK(cudaMalloc(&svec, (size_t)std::max(D, F) * 4));
    CUDA_CHECK(cudaMemsetAsync(ws, 0, FP8_AMAX_WS_FLOATS * 4, s));
    CUDA_CHECK(cudaMemsetAsync(s1, 0, ns * 4, s));
    CUDA_CHECK(cudaMemsetAsync(s2, 0, ns * 4, s));
    float *am = ws + FP8_AMAX_PARTIALS;

    const LinearRecipe recipes[] = {LINEAR_FP8_TENSORWISE, LINEAR_FP8_ROWWISE, LINEAR_FP8_ROWWISE_GW_HP, LINEAR_FP8_BLOCKWISE};
    auto bench_recipe = [&](LinearRecipe lr, int tile) {
        const Fp8Recipe fr = linear_fp8_recipe(lr);
        auto spec = [&](Fp8Operand op) { return fp8_recipe_cast(fr, op); };
        auto tensor2 = [&](Fp8Operand a, Fp8Operand b) {
            return spec(a).scaling == FP8_SCALE_TENSOR && spec(b).scaling == FP8_SCALE_TENSOR;
        };
        std::vector<Item> items;
        // One operand as cast_operand makes it: tensor scaling = amax (unless saved) + fp8_cast_tensor.
        auto add_cast = [&](std::string name, Fp8Operand op, const bf16 *src, int rows, int cols, size_t ld, int saved,
                            int weight) {
            const Fp8CastSpec sp = spec(op);
            const double n = (double)rows * cols;
            if (sp.scaling == FP8_SCALE_TENSOR) {
                if (!saved)
                    items.push_back({name + " amax", 2 * n, 1, weight, [=] { fp8_amax_tensor(am, ws, src, rows, cols, ld, s); }});
                items.push_back({name + (sp.transposed ? " tensor^T" : " tensor"), 3 * n, 1, weight, [=] {
                                     fp8_cast_tensor(sp.transposed ? nullptr : q1, sp.transposed ? q1 : nullptr, s1, src,
                                                     rows, cols, ld, am, sp.dtype, sp.pow2, s);
                                 }});
            } else {
                items.push_back({name + " " + fp8_scaling_name(sp.scaling) + (sp.transposed ? "^T" : ""), 3 * n, 1, weight,
                                 [=] { fp8_cast_operand_ld(q1, s1, (uint8_t *)s1, src, rows, cols, ld, sp, ws, s); }});
            }
        };
        for (auto &gr : groups) {
            const int K = gr.K;
            int ldg = 0;
            for (auto &p : gr.parts) ldg += p.M;
            // forward
            add_cast(std::string(gr.name) + " x", FP8_X_FWD, gr.x, N, K, K, 0, 0);
            for (auto &p : gr.parts) add_cast(std::string(p.name) + " W", FP8_W_FWD, p.w, p.M, K, K, 0, 1);
            // backward
            if (spec(FP8_X_GW).scaling != FP8_SCALE_NONE)
                add_cast(std::string(gr.name) + " x^T", FP8_X_GW, gr.x, N, K, K, tensor2(FP8_X_FWD, FP8_X_GW), 0);
            int col = 0;
            for (auto &p : gr.parts) {
                const bf16 *gp = gr.g + col;
                const int M = p.M;
                col += M;
                const double n = (double)N * M;
                if (linear_same_cast(lr, FP8_G_GI, FP8_G_GW)) {  // one amax, one read, both layouts
                    const Fp8CastSpec sp = spec(FP8_G_GI);
                    items.push_back({std::string(p.name) + " g amax", 2 * n, 1, 0,
                                     [=] { fp8_amax_tensor(am, ws, gp, N, M, (size_t)ldg, s); }});
                    items.push_back({std::string(p.name) + " g + g^T tensor", 4 * n, 1, 0, [=] {
                                         fp8_cast_tensor(q1, q2, s1, gp, N, M, (size_t)ldg, am, sp.dtype, sp.pow2, s);
                                     }});
                } else {
                    add_cast(std::string(p.name) + " g", FP8_G_GI, gp, N, M, ldg, 0, 0);
                    if (spec(FP8_G_GW).scaling != FP8_SCALE_NONE)
                        add_cast(std::string(p.name) + " g^T", FP8_G_GW, gp, N, M, ldg, 0, 0);
                }
                add_cast(std::string(p.name) + " W^T", FP8_W_GI, p.w, M, K, K, tensor2(FP8_W_FWD, FP8_W_GI), 1);
                if (spec(FP8_G_GI).scaling == FP8_SCALE_AXIS && spec(FP8_W_GI).scaling == FP8_SCALE_TENSOR)
                    items.push_back({std::string(p.name) + " W^T scale broadcast", 4.0 * K, 1, 1,
                                     [=] { fp8_scale_broadcast(svec, s1, K, s); }});
            }
        }
        // the saved amax the backward's casts read: any finite value
        fp8_amax_tensor(am, ws, ln, N, D, D, s);
        printf("--recipe %s, transposed tiles of %d rows: the casts of one layer, one micro-batch\n\n",
               linear_recipe_name(lr), tile);
        printf("| cast | MB | us | TB/s | of copy |\n| --- | ---: | ---: | ---: | ---: |\n");
        double tot_us = 0, tot_b = 0, w_us = 0, w_b = 0;
        int tot_l = 0, w_l = 0;
        for (auto &it : items) {
            const double ms = time_ms(s, it.f), bw = it.bytes / (ms * 1e-3);
            printf("| %s | %.1f | %.1f | %.2f | %.0f%% |\n", it.name.c_str(), it.bytes / 1e6, ms * 1e3, bw / 1e12,
                   100.0 * bw / copy_bw);
            tot_us += ms * 1e3, tot_b += it.bytes, tot_l += it.launches;
            if (it.weight) w_us += ms * 1e3, w_b += it.bytes, w_l += it.launches;
        }
        printf("\n%s (tiles %d) per layer: %.3f GB, %d launches, %.0f us (%.2f TB/s, %.0f%% of copy); without the W "
               "/ W^T casts (weight cache, micro-batches after a step's first): %.3f GB, %d launches, %.0f us\n\n",
               linear_recipe_name(lr), tile, tot_b / 1e9, tot_l, tot_us, tot_b / (tot_us * 1e-6) / 1e12,
               100.0 * tot_b / (tot_us * 1e-6) / copy_bw, (tot_b - w_b) / 1e9, tot_l - w_l, tot_us - w_us);
        fflush(stdout);
    };
    for (int tile : {512, 256}) {
        if (g_tile && tile != g_tile) continue;
        fp8_cast_transposed_tile(tile);
        for (LinearRecipe lr : recipes) bench_recipe(lr, tile);
    }
    cudaFree(ln), cudaFree(attn), cudaFree(act), cudaFree(wqkv), cudaFree(wo), cudaFree(wgu), cudaFree(wd);
    cudaFree(dqkv), cudaFree(dres), cudaFree(dgu), cudaFree(q1), cudaFree(q2), cudaFree(s1), cudaFree(s2), cudaFree(ws);
    cudaFree(svec);
    gpu_ctx_free(&ctx);
    return 0;
}
