// Decode speed of the GPU inference path (model/infer_gpu.cu) per -q mode and batch, on a
// model of any shape with random bf16-exact weights (speed does not depend on the values):
//   build/bench/bench_infer --config test/fixtures/configs/llama31_8b.json --modes bf16,int4,int4-v1
//       --group 64 --batch 1,4,16 --prompt 128 --steps 128
// One line per (mode, batch), for dev/bench scripts to grep:
//   RESULT ours mode=int4 g=64 batch=1 tok_s=... ms_per_step=... weight_bytes=... eff_bw_TBs=...
//          roofline=... peak_mem_GiB=... prefill_tok_s=... kv=bf16 kv_MiB=... fuse=1
// --fuse 1,0 runs each (mode, batch) fused (RMSNorm / SwiGLU inside the GEMVs' activation preps,
// programmatic dependent launches) and unfused, for an A/B in one process (nopdl / nofuse: one
// of the two off).
// prefill_tok_s: the batch's prompts in one forward, timed on a second run (the first loads
// modules and picks the cuBLASLt algorithms); more than --gemm-tokens tokens run as GEMMs.
// weight_bytes is what one decode step reads (every linear's codes and scales, the norms; the
// embedding row is negligible); roofline = eff_bw / the device-to-device copy bandwidth
// measured here (read + write bytes per second), the practical ceiling of a weight stream.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/error.h"
#include "../../common/flags.h"
#include "../../model/config.h"
#include "../../model/infer_gpu.h"
#include "../../model/model.h"
#include "../../quant/qgemv.cuh"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double copy_bandwidth(void) {
    const size_t n = (size_t)2 << 30;
    void *a, *b;
    if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) return 0.0;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
    float best = 1e30f;
    for (int i = 0; i < 5; i++) {
        cudaEventRecord(e0);
        cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (ms < best) best = ms;
    }
    cudaFree(a), cudaFree(b);
    return 2.0 * n / (best * 1e-3);
}

static int parse_list(const char *s, char items[][32], int max) {
    int n = 0;
    while (s && *s && n < max) {
        const char *e = strchr(s, ',');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        if (l >= 32) l = 31;
        memcpy(items[n], s, l);
        items[n++][l] = 0;
        s = e ? e + 1 : NULL;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *config = "test/fixtures/configs/llama31_8b.json", *modes = "bf16,int8,int4,8da4w,fp8", *batches = "1";
    const char *kv = "bf16", *fuses = "1";
    int group = 64, prompt = 128, steps = 128, kv_f32 = 0, profile = 0, gemm_tokens = 0, decode_gemm_rows = 4;
    Flag flags[] = {
        {"--config", "-c", FLAG_STR, &config, "model config.json (shape only; weights are random)", 1, 0},
        {"--modes", "-q", FLAG_STR, &modes, "comma list of bf16|int8|int4|int4-v1|int4-nopdl|int4-simt|8da4w|fp8", 1, 0},
        {"--group", "-g", FLAG_INT, &group, "group size of int4 / 8da4w", 32, 256},
        {"--batch", "-b", FLAG_STR, &batches, "comma list of sequences decoded together", 1, 0},
        {"--prompt", "-p", FLAG_INT, &prompt, "prompt tokens before decoding", 1, 0},
        {"--steps", "-n", FLAG_INT, &steps, "timed decode steps", 1, 0},
        {"--kv-f32", NULL, FLAG_BOOL, &kv_f32, "KV cache in fp32 (same as --kv fp32)", 1, 0},
        {"--kv", NULL, FLAG_STR, &kv, "KV cache: bf16 | fp32 | fp8 (e4m3, a scale per head vector)", 1, 0},
        {"--gemm-tokens", NULL, FLAG_INT, &gemm_tokens, "prompts longer than this run as GEMMs (0: 16, -1: never)", -1, 1 << 20},
        {"--decode-gemm-rows", NULL, FLAG_INT, &decode_gemm_rows, "batched decode steps of at least this many sequences run "
         "their bf16 linears as GEMMs (int8 / fp8 / 8da4w from 4x as many; int4 never); 0: always the GEMVs", 0, 1 << 20},
        {"--fuse", NULL, FLAG_STR, &fuses, "comma list of 1 (RMSNorm/SwiGLU in the GEMV preps, PDL) | 0 (unfused) | nopdl | nofuse", 1, 0},
        {"--profile", NULL, FLAG_BOOL, &profile, "bracket 2 decode steps with cudaProfilerStart/Stop (ncu --profile-from-start off)", 1, 0},
    };
    if (!flags_parse(flags, sizeof flags / sizeof flags[0], argc, argv, "bench_infer", "decode speed of infer_llama -d cuda"))
        return 0;
    CHECK(prompt > 0 && steps > 0, "--prompt and --steps must be positive");
    CHECK(!strcmp(kv, "bf16") || !strcmp(kv, "fp32") || !strcmp(kv, "fp8"), "--kv %s: bf16, fp32 or fp8", kv);
    if (kv_f32) kv = "fp32";
    LlamaConfig c;
    char err[512];
    CHECK(config_load(&c, config, err, sizeof err), "%s", err);
    CHECK(infer_gpu_count() > 0, "bench_infer needs a CUDA GPU");
    const double bw = copy_bandwidth();
    printf("device-to-device copy bandwidth: %.2f TB/s\n", bw / 1e12);
    char cdesc[256];
    config_describe(&c, cdesc, sizeof cdesc);
    printf("model: %s (random bf16 weights)\n", cdesc);

    LlamaModel master;
    model_init(&master, &c);
    double t0 = now_s();
    // Speed does not depend on the values: a cheap parallel fill (uniform, |w| < 0.035, the std of
    // Llama's 0.02 init; norm weights 1, biases 0) instead of model_init_random's Box-Muller, which took
    // ~47 s for 8B parameters on the 16-core GPU host. bf16-exact, as a bf16 checkpoint is.
    for (int t = 0; t < master.tab.n; t++) {
        const ParamInfo *p = &master.tab.p[t];
        float *x = master.params + p->offset;
        const int vec = p->kind == PARAM_VECTOR, norm = vec && strstr(p->hf_name, "norm") != NULL;
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < p->numel; j++) {
            uint64_t z = (p->offset + j + 1) * 0x9E3779B97F4A7C15ull;
            z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
            z ^= z >> 29;
            const float u = (float)(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;  // [-1, 1)
            x[j] = norm ? 1.0f : vec ? 0.0f : quant_bf16_round(0.0346f * u);
        }
    }
    printf("random init: %.1f s\n", now_s() - t0);

    char mlist[8][32], blist[8][32], flist[4][32];
    const int nm = parse_list(modes, mlist, 8), nb = parse_list(batches, blist, 8), nf = parse_list(fuses, flist, 4);
    int unf[4];
    for (int fi = 0; fi < nf; fi++) {
        const char *f = flist[fi];
        unf[fi] = !strcmp(f, "1") ? 0 : !strcmp(f, "0") ? INFER_GPU_NO_FUSE | INFER_GPU_NO_PDL
                : !strcmp(f, "nopdl") ? INFER_GPU_NO_PDL : !strcmp(f, "nofuse") ? INFER_GPU_NO_FUSE : -1;
        CHECK(unf[fi] >= 0, "--fuse: '%s' is not 1, 0, nopdl or nofuse", f);
    }
    const char *fenv = getenv("LLAMA_AO_INFER_FUSE");
    if (fenv && !strcmp(fenv, "0")) printf("note: LLAMA_AO_INFER_FUSE=0 in the environment: every run is unfused\n");
    for (int mi = 0; mi < nm; mi++) {
        // int4 kernel variants for an A/B in one run: "int4" the tensor-core v2 kernel (default),
        // "int4-v1" the first tensor-core kernel, "int4-nopdl" v2 launched without the overlap
        // with its x prep, "int4-simt" the SIMT kernel
        const int v1 = !strcmp(mlist[mi], "int4-v1"), simt = !strcmp(mlist[mi], "int4-simt"),
                  nopdl = !strcmp(mlist[mi], "int4-nopdl");
        qgemv_set_int4_kernel(simt ? 0 : v1 ? 1 : 2);
        qgemv_set_int4_pdl(!nopdl);
        const char *mname = (v1 || simt || nopdl) ? "int4" : strcmp(mlist[mi], "bf16") ? mlist[mi] : "none";
        const int mode = quant_mode_from_name(mname);
        CHECK(mode >= 0, "--modes: unknown mode '%s'", mlist[mi]);
        LlamaModel m;
        model_init(&m, &c);
        memcpy(m.params, master.params, master.tab.total * sizeof(float));
        t0 = now_s();
        InferModel im;
        infer_model_build(&im, &m, (QuantMode)mode, quant_mode_grouped((QuantMode)mode) ? group : 0);
        printf("%s: quantized on the host in %.1f s (%d of %d linears)\n", mlist[mi], now_s() - t0, im.n_quantized,
               im.n_linear);
        for (int bf = 0; bf < nb * nf; bf++) {
            const int bi = bf / nf, fi = bf % nf;
            const int B = atoi(blist[bi]);
            CHECK(B > 0 && B <= 64, "--batch: %s is not in 1..64", blist[bi]);
            size_t free0, total;
            cudaMemGetInfo(&free0, &total);
            InferGpuOpts o = {prompt + steps + 8, prompt, B, !strcmp(kv, "fp32"), 1, 0, !strcmp(kv, "fp8"), gemm_tokens,
                              unf[fi], decode_gemm_rows};
            InferGpu *g = infer_gpu_create(&im, &o);
            int32_t *toks = (int32_t *)ao_malloc((size_t)B * prompt * sizeof(int32_t));
            for (int i = 0; i < B * prompt; i++) toks[i] = (int32_t)((i * 7919u + 11u) % (unsigned)c.vocab_size);
            infer_gpu_forward(g, toks, prompt, 0);  // cold: module loading, cuBLASLt heuristics
            infer_gpu_set_pos(g, 0);
            t0 = now_s();
            infer_gpu_forward(g, toks, prompt, 0);
            const double t_prefill = now_s() - t0;
            int32_t next[64];
            for (int i = 0; i < B; i++) next[i] = (int32_t)(i + 1);
            for (int i = 0; i < 4; i++) infer_gpu_forward(g, next, 1, 0);  // graph capture + warm-up
            t0 = now_s();
            for (int i = 0; i < steps - 4; i++) infer_gpu_forward(g, next, 1, 0);
            const double dt = (now_s() - t0) / (steps - 4);
            if (profile) {
                cudaProfilerStart();
                for (int i = 0; i < 2; i++) infer_gpu_forward(g, next, 1, 0);
                cudaProfilerStop();
            }
            size_t free1;
            cudaMemGetInfo(&free1, &total);
            const double sb = (double)infer_gpu_step_bytes(g), eff = sb / dt;
            printf("RESULT ours mode=%s g=%d batch=%d tok_s=%.1f ms_per_step=%.3f weight_bytes=%.0f eff_bw_TBs=%.3f "
                   "roofline=%.3f peak_mem_GiB=%.2f prefill_tok_s=%.0f kv=%s kv_MiB=%.1f fuse=%s decode_gemm_rows=%d\n",
                   mlist[mi], quant_mode_grouped((QuantMode)mode) ? group : 0, B, B / dt, dt * 1e3, sb, eff / 1e12,
                   bw > 0 ? eff / bw : 0.0, (double)(free0 - free1) / (1u << 30), B * prompt / t_prefill, kv,
                   infer_gpu_kv_bytes(g) / 1048576.0, flist[fi], decode_gemm_rows);
            fflush(stdout);
            infer_gpu_free(g);
            free(toks);
        }
        infer_model_free(&im);
    }
    model_free(&master);
    return 0;
}
