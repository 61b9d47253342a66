// Multi-GPU machinery (dist/) on one GPU and, started by mpirun, on several:
//   - the ZeRO plan: cuts only at tensor starts or whole 256-element units inside a tensor,
//     pieces that tile every tensor once, balanced ranks, gradient buckets tiling the vector;
//   - a piece's state layout equals lowbit_layout for whole tensors;
//   - the sharded AdamW step (every optimizer format, on the GPU and offloaded) equals the
//     unsharded step bit for bit on every rank's part: master, bf16 weights, states;
//   - optimizer checkpoints re-shard: 3 ranks -> 2, 3 -> 1, 1 -> 2 give the same states;
//   - with N ranks (mpirun -np N build/test/gpu_test_dist): every collective of dist.cuh on
//     uneven ranges, and a whole ZeRO-1 / ZeRO-2 step (per-layer reduction, norm, step,
//     all-gather) against one process stepping on the summed gradients (bitwise for 2 ranks,
//     where every sum is a single fp32 addition; within 1e-6 otherwise);
//   - ZeRO-3: the gather-buffer geometry (every tensor keeps its address modulo 256 bytes), the
//     all-gather into a separate buffer over uneven ranges and windows, and whole training steps
//     (forward, backward with per-layer reduction, norm, step; 2 micro-batches; 3 layers, tied
//     embeddings) of a ZeRO-3 model against a ZeRO-2 model on the same ranks and data: losses,
//     norms, gradients, master and bf16 weights bit-identical, for fp32 / 8-bit states, bf16-sr
//     masters and offload; the number of layer gathers per step (held layers are not gathered
//     twice); a ZeRO-3 plan of one rank without the hook against no ZeRO at all; and the same
//     with every gather, then the compute after every wait for one, held back 200 us (a missing
//     event then changes the bits instead of racing rarely). --fp8-allgather (fp8-tensorwise) the
//     same way against plain ZeRO-3 fp8-tensorwise: bit-identical, no weight cast from bf16.
//   - ZeRO-1/2 --zero-gather-overlap (the all-gather per bucket, waited for by the next forward)
//     against the whole all-gather after the step: bit-identical losses, norms, gradients and
//     weights, also with every bucket's gather, then the compute after every wait, held back 200 us,
//     and offloaded; the pending-bucket bookkeeping.
// With one process the collective parts run at world size 1 (collectives are no-ops, the ZeRO-3
// gathers copies).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dist/dist.cuh"
#include "../dist/zero_comm.cuh"
#include "../model/checkpoint.cuh"
#include "../model/llama_gpu.cuh"
#include "gpu_test.cuh"
extern "C" {
#include "../common/fileio.h"
#include "../model/model.h"
#include "test.h"
}

// The model the optimizer tests step: tensors above and below the 4096-element threshold,
// block counts that cuts can split (wte: 1000 blocks of 256), and 7 sub-threshold vectors.
static LlamaConfig opt_config(void) { return test_llama_config(1000, 256, 768, 2, 4, 2, 0); }

// ---- A: the plan ---------------------------------------------------------------------------

static void check_plan(const LlamaConfig *c, const char *name) {
    ParamTable tab;
    param_table_init(&tab, c);
    const int worlds[] = {1, 2, 3, 4, 7, 8};
    for (size_t wi = 0; wi < sizeof worlds / sizeof worlds[0]; wi++) {
        const int W = worlds[wi];
        size_t *covered = (size_t *)ao_calloc((size_t)tab.n, sizeof(size_t));
        int ok_cuts = 1, ok_order = 1, ok_balance = 1, ok_same = 1;
        size_t worst_dev = 0;
        for (int r = 0; r < W; r++) {
            ZeroPlan z;
            zero_plan_init(&z, &tab, c->n_layers, 1, r, W);
            ZeroPlan z0;
            zero_plan_init(&z0, &tab, c->n_layers, 1, 0, W);
            for (int k = 0; k <= W; k++) ok_same &= z.bounds[k] == z0.bounds[k];  // every rank computes the same cuts
            zero_plan_free(&z0);
            ok_order &= z.bounds[0] == 0 && z.bounds[W] == tab.total && z.begin <= z.end;
            for (int k = 0; k < W; k++) ok_order &= z.bounds[k] <= z.bounds[k + 1];
            for (int i = 0; i < z.n_pieces; i++) {
                const ZeroPiece *p = &z.pieces[i];
                const ParamInfo *t = &tab.p[p->tensor];
                ok_cuts &= p->begin % ZERO_ALIGN == 0 && p->offset == t->offset + p->begin && p->begin + p->n <= t->numel;
                ok_cuts &= (p->begin + p->n == t->numel) || ((p->begin + p->n) % ZERO_ALIGN == 0);
                ok_cuts &= p->offset >= z.begin && p->offset + p->n <= z.end;
                covered[p->tensor] += p->n;
            }
            const double ideal = (double)tab.total / W, size = (double)(z.end - z.begin);
            size_t dev = (size_t)fabs(size - ideal);
            if (dev > worst_dev) worst_dev = dev;
            if (ideal > 8 * ZERO_ALIGN) ok_balance &= dev <= 2 * ZERO_ALIGN + 32;  // a cut moves < 256 down or < 16 up
            if (r == 0) {  // buckets tile [0, total): globals, then layer by layer
                int ok_b = z.bucket_lo[c->n_layers] == 0;
                size_t at = z.bucket_hi[c->n_layers];
                for (int l = 0; l < c->n_layers; l++) {
                    ok_b &= z.bucket_lo[l] == at && z.bucket_hi[l] >= z.bucket_lo[l];
                    at = z.bucket_hi[l];
                }
                ok_b &= at == tab.total;
                TEST_CHECK(ok_b, "%s world %d: gradient buckets do not tile [0, %zu)", name, W, tab.total);
            }
            zero_plan_free(&z);
        }
        int ok_cover = 1;
        for (int i = 0; i < tab.n; i++) ok_cover &= covered[i] == tab.p[i].numel;
        TEST_CHECK(ok_order && ok_same, "%s world %d: bounds out of order or different on different ranks", name, W);
        TEST_CHECK(ok_cuts, "%s world %d: a piece starts or ends off a %d-element unit of its tensor", name, W, ZERO_ALIGN);
        TEST_CHECK(ok_cover, "%s world %d: the pieces do not cover every tensor exactly once", name, W);
        TEST_CHECK(ok_balance, "%s world %d: a rank's share is %zu elements off the even split", name, W, worst_dev);
        free(covered);
    }
    param_table_free(&tab);
}

static void check_layouts(void) {
    const LowbitFormat fmts[] = {LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_FP8};
    const size_t sizes[] = {4096, 4096 * 3, 1000, 65536, 256000, 4095};
    int ok = 1;
    for (LowbitFormat f : fmts)
        for (size_t n : sizes) {
            LowbitLayout a = lowbit_layout(f, n, LOWBIT_MASTER_F32), b = zero_piece_layout(f, n, n);
            ok &= memcmp(&a, &b, sizeof a) == 0;
            if (n == 256000) {  // a piece keeps the tensor's format, whatever its own size
                LowbitLayout p = zero_piece_layout(f, n, 512);
                ok &= p.fmt == f && p.n == 512 && p.n_blocks == 512 / (size_t)lowbit_block(f);
            }
        }
    TEST_CHECK(ok, "zero_piece_layout differs from lowbit_layout for a whole tensor, or changes a piece's format");
}

// ---- helpers ---------------------------------------------------------------------------------

// Host copy of a state's elements [from, from + n) in a fixed form: m, v, then the scales.
static size_t fetch_state(const LowbitState &st, size_t from, size_t n, unsigned char *out) {
    const int q = lowbit_quantized(st.fmt);
    size_t at = 0;
    if (!q) {
        CUDA_CHECK(cudaMemcpy(out, (const float *)st.m + from, n * 4, cudaMemcpyDefault));
        CUDA_CHECK(cudaMemcpy(out + n * 4, (const float *)st.v + from, n * 4, cudaMemcpyDefault));
        return n * 8;
    }
    const size_t h = st.fmt == LOWBIT_4BIT, cf = h ? from / 2 : from, cn = h ? n / 2 : n, bl = (size_t)st.block;
    CUDA_CHECK(cudaMemcpy(out + at, (const unsigned char *)st.m + cf, cn, cudaMemcpyDefault));
    at += cn;
    CUDA_CHECK(cudaMemcpy(out + at, (const unsigned char *)st.v + cf, cn, cudaMemcpyDefault));
    at += cn;
    CUDA_CHECK(cudaMemcpy(out + at, st.m_scale + from / bl, n / bl * 4, cudaMemcpyDefault));
    at += n / bl * 4;
    CUDA_CHECK(cudaMemcpy(out + at, st.v_scale + from / bl, n / bl * 4, cudaMemcpyDefault));
    at += n / bl * 4;
    return at;
}

// Does every piece of `b` hold the same optimizer state as the matching part of the unsharded
// `a` (whose pieces are whole tensors, in table order)?
static int same_states(const LlamaGpu *a, const LlamaGpu *b) {
    int ok = 1;
    for (int i = 0; i < b->plan->n_pieces; i++) {
        const ZeroPiece *p = &b->plan->pieces[i];
        const size_t cap = p->n * 8 + 64;
        unsigned char *x = (unsigned char *)ao_malloc(cap), *y = (unsigned char *)ao_malloc(cap);
        size_t nx = fetch_state(llama_gpu_piece_state(a, p->tensor), p->begin, p->n, x);
        size_t ny = fetch_state(llama_gpu_piece_state(b, i), 0, p->n, y);
        ok &= nx == ny && memcmp(x, y, nx) == 0;
        free(x);
        free(y);
    }
    return ok;
}

// Master weights (none with bf16-sr masters: both must lack them) and bf16 weights of b's shard
// equal a's over the same range?
static int same_shard(const LlamaGpu *a, const LlamaGpu *b) {
    const size_t b0 = b->plan->begin, n = b->shard_n;
    if (!n) return 1;
    if (!a->master != !b->master) return 0;
    float *ma = (float *)ao_calloc(n, 4), *mb = (float *)ao_calloc(n, 4);
    uint16_t *pa = (uint16_t *)ao_malloc(n * 2), *pb = (uint16_t *)ao_malloc(n * 2);
    if (a->master) CUDA_CHECK(cudaMemcpy(ma, a->master + (b0 - a->plan->begin), n * 4, cudaMemcpyDefault));
    if (b->master) CUDA_CHECK(cudaMemcpy(mb, b->master, n * 4, cudaMemcpyDefault));
    CUDA_CHECK(cudaMemcpy(pa, a->pshard + (b0 - a->plan->begin), n * 2, cudaMemcpyDefault));
    CUDA_CHECK(cudaMemcpy(pb, b->pshard, n * 2, cudaMemcpyDefault));
    int ok = memcmp(ma, mb, n * 4) == 0 && memcmp(pa, pb, n * 2) == 0;
    free(ma), free(mb), free(pa), free(pb);
    return ok;
}

static void random_grads(float *g, const ParamTable *tab, uint64_t seed) {
    memset(g, 0, tab->total * sizeof(float));  // padding between tensors stays 0, as in training
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 7;
    for (int t = 0; t < tab->n; t++)
        for (size_t i = 0; i < tab->p[t].numel; i++) g[tab->p[t].offset + i] = 0.05f * test_rand_uniform(&st);
}

static GpuRunOpts opts_for(LowbitFormat optim, int offload, const ZeroPlan *z) {
    GpuRunOpts o;
    memset(&o, 0, sizeof o);
    o.attn = ATTN_KERNEL;
    o.attn_bwd = ATTN_KERNEL;
    o.optim = optim;
    o.offload = offload;
    o.seed = 5;
    o.zero = z;
    return o;
}

static void step(LlamaGpu *m, GpuCtx *ctx, const float *g, int t) {
    h2d(m->grads, g, m->tab.total * sizeof(float));  // on ctx->stream (g_s): the step's kernels follow it
    llama_gpu_adamw(m, ctx, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, 0.7f);
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
}

// ---- C + D: the sharded step and checkpoint re-sharding on one GPU ------------------------------

struct LoadArg {
    const char *dir;
    LlamaGpu *m;
};
static void load_fn(void *p) {
    LoadArg *x = (LoadArg *)p;
    ckpt_load_optimizer(x->dir, x->m);
}

static void check_sharded_step(GpuCtx *ctx, LowbitFormat optim, int offload) {
    const LlamaConfig c = opt_config();
    LlamaModel cpu;
    model_init(&cpu, &c);
    model_init_random(&cpu, 11);
    const int W3 = 3, W2 = 2, steps = 3;
    ZeroPlan p3[W3], p2[W2];
    // ZeRO-3 for the quantized formats and offload (the step writes the bf16 shard only), ZeRO-1 else
    const int level3 = optim == LOWBIT_8BIT || optim == LOWBIT_4BIT || offload ? 3 : 1;
    for (int r = 0; r < W3; r++) zero_plan_init(&p3[r], &cpu.tab, c.n_layers, level3, r, W3);
    for (int r = 0; r < W2; r++) zero_plan_init(&p2[r], &cpu.tab, c.n_layers, 2, r, W2);
    GpuRunOpts oa = opts_for(optim, offload, nullptr);
    LlamaGpu a, b3[W3];
    llama_gpu_init(&a, ctx, &cpu, 1, 8, &oa);
    for (int r = 0; r < W3; r++) {
        GpuRunOpts o = opts_for(optim, offload, &p3[r]);
        llama_gpu_init(&b3[r], ctx, &cpu, 1, 8, &o);
    }
    float *g = (float *)ao_malloc(cpu.tab.total * sizeof(float));
    for (int t = 1; t <= steps; t++) {
        random_grads(g, &cpu.tab, (uint64_t)t);
        step(&a, ctx, g, t);
        for (int r = 0; r < W3; r++) step(&b3[r], ctx, g, t);
    }
    const char *fname = lowbit_format_name(optim);
    for (int r = 0; r < W3; r++) {
        TEST_CHECK(same_shard(&a, &b3[r]), "%s%s: rank %d/3's (ZeRO-%d) master or bf16 weights differ from the "
                   "unsharded step", fname, offload ? " offload" : "", r, level3);
        TEST_CHECK(same_states(&a, &b3[r]), "%s%s: rank %d/3's optimizer states differ from the unsharded step", fname,
                   offload ? " offload" : "", r);
    }
    if (!offload) {
        // checkpoints: unsharded (one file) and 3 shards, loaded into 2 ranks and into one process
        const char *tmp = test_tmpdir("dist_ckpt");
        char d1[1024], d3[1024];
        snprintf(d1, sizeof d1, "%s/one", tmp);
        snprintf(d3, sizeof d3, "%s/three", tmp);
        ckpt_save(d1, steps, &a, ctx, &cpu, nullptr, nullptr, "{}\n", nullptr);
        snprintf(d1, sizeof d1, "%s/one/ckpt_%06d", tmp, steps);
        CHECK(make_dirs(d3), "cannot create %s", d3);
        for (int r = 0; r < W3; r++) ckpt_save_optimizer_shard(d3, steps, &b3[r]);
        for (int src = 0; src < 2; src++) {
            const char *dir = src ? d1 : d3;
            for (int r = 0; r < W2; r++) {
                GpuRunOpts o = opts_for(optim, 0, &p2[r]);
                LlamaGpu b2;
                llama_gpu_init(&b2, ctx, &cpu, 1, 8, &o);
                int st = ckpt_load_optimizer(dir, &b2);
                TEST_CHECK(st == steps && same_states(&a, &b2), "%s: %s checkpoint loaded into rank %d/2: step %d, "
                           "states %s", fname, src ? "unsharded" : "3-rank", r, st, same_states(&a, &b2) ? "equal" : "DIFFER");
                llama_gpu_free(&b2);
            }
        }
        LlamaGpu one;
        llama_gpu_init(&one, ctx, &cpu, 1, 8, &oa);
        int st = ckpt_load_optimizer(d3, &one);
        TEST_CHECK(st == steps && same_states(&a, &one), "%s: 3-rank checkpoint loaded into one process differs", fname);
        llama_gpu_free(&one);
        // a shard file missing, or another optimizer's states: refused by name
        char gone[1100], away[1200];
        snprintf(gone, sizeof gone, "%s/optimizer.rank00001.safetensors", d3);
        snprintf(away, sizeof away, "%s.away", gone);
        CHECK(rename(gone, away) == 0, "rename %s", gone);
        LoadArg arg = {d3, &b3[0]};
        TEST_EXPECT_FAIL("load with a shard missing", load_fn, &arg, "is missing");
        CHECK(rename(away, gone) == 0, "rename back %s", gone);
        GpuRunOpts ow = opts_for(optim == LOWBIT_8BIT ? LOWBIT_4BIT : LOWBIT_8BIT, 0, &p2[0]);
        LlamaGpu other;
        llama_gpu_init(&other, ctx, &cpu, 1, 8, &ow);
        LoadArg arg2 = {d3, &other};
        TEST_EXPECT_FAIL("load another optimizer's states", load_fn, &arg2, "another optimizer");
        llama_gpu_free(&other);
    }
    free(g);
    llama_gpu_free(&a);
    for (int r = 0; r < W3; r++) llama_gpu_free(&b3[r]), zero_plan_free(&p3[r]);
    for (int r = 0; r < W2; r++) zero_plan_free(&p2[r]);
    model_free(&cpu);
}

// ---- E: collectives and a whole ZeRO step over the ranks of this job --------------------------

static void check_collectives(Dist *d, GpuCtx *ctx) {
    const int W = d->world, R = d->rank;
    const size_t n = 1000003;  // odd on purpose
    float *h = (float *)ao_malloc(n * sizeof(float)), *dv = dalloc<float>(n);
    for (size_t i = 0; i < n; i++) h[i] = (float)(R + 1) + (float)(i % 7);
    h2d(dv, h, n * 4);
    dist_comm_after(d, ctx->stream);
    dist_allreduce_f32(d, dv, n, "test all-reduce");
    dist_compute_after(d, ctx->stream);
    dist_wait(d, ctx->stream, "test all-reduce");
    d2h(h, dv, n * 4);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= h[i] == (float)(W * (W + 1) / 2) + (float)W * (float)(i % 7);
    TEST_CHECK(ok, "rank %d: all-reduce of %zu floats over %d ranks is wrong", R, n, W);

    // uneven ranges: rank r owns [n r^2 / W^2, n (r+1)^2 / W^2), rank 0 the smallest
    size_t *bounds = (size_t *)ao_malloc(((size_t)W + 1) * sizeof(size_t));
    for (int r = 0; r <= W; r++) bounds[r] = (size_t)((double)n * r * r / ((double)W * W));
    const size_t lo = 5, hi = n - 7;
    for (size_t i = 0; i < n; i++) h[i] = (float)((R + 1) * (int)(i % 13));
    h2d(dv, h, n * 4);
    dist_comm_after(d, ctx->stream);
    dist_reduce_ranges_f32(d, dv, bounds, lo, hi, "test reduce-scatter");
    dist_compute_after(d, ctx->stream);
    dist_wait(d, ctx->stream, "test reduce-scatter");
    d2h(h, dv, n * 4);
    ok = 1;
    for (size_t i = 0; i < n; i++) {
        const int mine = i >= bounds[R] && i < bounds[R + 1] && i >= lo && i < hi;
        ok &= h[i] == (float)((mine ? W * (W + 1) / 2 : R + 1) * (int)(i % 13));
    }
    TEST_CHECK(ok, "rank %d: reduce over uneven ranges is wrong (own range reduced, the rest untouched)", R);

    // all-gather of bf16 over the same ranges; gather of fp32 to rank 0
    bf16 *hb = (bf16 *)ao_malloc(n * 2), *db = dalloc<bf16>(n);
    auto owner = [&](size_t i) { int r = 0; while (i >= bounds[r + 1]) r++; return r; };
    for (size_t i = 0; i < n; i++) hb[i] = __float2bfloat16(owner(i) == R ? (float)(i % 251 + owner(i)) : -1.0f);
    h2d(db, hb, n * 2);
    for (size_t i = 0; i < n; i++) h[i] = owner(i) == R ? (float)i : -1.0f;
    h2d(dv, h, n * 4);
    dist_comm_after(d, ctx->stream);
    dist_allgather_ranges_bf16(d, db, bounds, "test all-gather");
    dist_gather_ranges_f32(d, dv, bounds, "test gather");
    dist_compute_after(d, ctx->stream);
    dist_wait(d, ctx->stream, "test all-gather and gather");
    d2h(hb, db, n * 2);
    d2h(h, dv, n * 4);
    int ok_ag = 1, ok_g = 1;
    for (size_t i = 0; i < n; i++) {
        ok_ag &= __bfloat162float(hb[i]) == bf16r((float)(i % 251 + owner(i)));
        ok_g &= R == 0 ? h[i] == (float)i : h[i] == (owner(i) == R ? (float)i : -1.0f);
    }
    TEST_CHECK(ok_ag, "rank %d: all-gather over uneven ranges is wrong", R);
    TEST_CHECK(ok_g, "rank %d: gather to rank 0 is wrong", R);

    double v[3] = {(double)R, 1.0, 0.5};
    dist_allreduce_host(d, v, 3, "test host all-reduce");
    TEST_CHECK(v[0] == W * (W - 1) / 2.0 && v[1] == W && v[2] == 0.5 * W, "rank %d: host all-reduce gave %g %g %g", R, v[0],
               v[1], v[2]);
    dist_barrier(d, "test barrier");
    free(h), free(hb), free(bounds);
    CUDA_CHECK(cudaFree(dv));
    CUDA_CHECK(cudaFree(db));
}

// Every rank steps its ZeRO shard on its own gradients, reduced over the ranks; one process
// (here: each rank, locally) steps the whole model on the summed gradients.
static void check_zero_step(Dist *d, GpuCtx *ctx, int level, LowbitFormat optim) {
    const int W = d->world, R = d->rank;
    const LlamaConfig c = opt_config();
    LlamaModel cpu;
    model_init(&cpu, &c);
    model_init_random(&cpu, 21);
    const size_t P = cpu.tab.total;
    ZeroPlan z;
    zero_plan_init(&z, &cpu.tab, c.n_layers, level, R, W);
    GpuRunOpts oa = opts_for(optim, 0, nullptr), ob = opts_for(optim, 0, &z);
    LlamaGpu a, b;
    llama_gpu_init(&a, ctx, &cpu, 1, 8, &oa);
    llama_gpu_init(&b, ctx, &cpu, 1, 8, &ob);
    ZeroComm zc;
    zero_comm_init(&zc, d, &z, b.grads, b.params, ctx->stream);
    b.sync = dist_sync_hook;
    b.sync_arg = d;
    float *g = (float *)ao_malloc(P * 4), *sum = (float *)ao_malloc(P * 4);
    int ok_norm = 1, ok_w = 1, ok_m = 1;
    double worst_norm = 0;
    for (int t = 1; t <= 3; t++) {
        // ranks' gradients in rank order, summed as fp32 (for 2 ranks: the one addition NCCL does)
        memset(sum, 0, P * 4);
        for (int r = 0; r < W; r++) {
            random_grads(g, &cpu.tab, 1000 * (uint64_t)t + (uint64_t)r);
            for (size_t i = 0; i < P; i++) sum[i] += g[i];
        }
        h2d(a.grads, sum, P * 4);  // on ctx->stream (g_s), which the norm runs on
        const float norm_a = llama_gpu_grad_norm(&a, ctx);
        random_grads(g, &cpu.tab, 1000 * (uint64_t)t + (uint64_t)R);
        h2d(b.grads, g, P * 4);  // on ctx->stream, which the reductions wait for
        for (int l = c.n_layers - 1; l >= -1; l--) zero_grads_ready(&zc, l);  // what backward's hook does
        zero_grads_wait(&zc);
        const float norm_b = zero_grad_norm(&zc);
        const double rel = fabs((double)norm_b - norm_a) / norm_a;
        if (rel > worst_norm) worst_norm = rel;
        ok_norm &= (W <= 2 && level == 1) ? norm_a == norm_b : rel <= 1e-6;
        const float scale = 0.5f / norm_a;  // the reference's clip scale on both sides
        llama_gpu_adamw(&a, ctx, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, scale);
        llama_gpu_adamw(&b, ctx, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, scale);
        zero_params_gather(&zc);
        dist_wait(d, ctx->stream, "the test's ZeRO step");
        CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
        uint16_t *pa = (uint16_t *)ao_malloc(P * 2), *pb = (uint16_t *)ao_malloc(P * 2);
        CUDA_CHECK(cudaMemcpy(pa, a.params, P * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(pb, b.params, P * 2, cudaMemcpyDeviceToHost));
        size_t diff = 0;
        for (int ti = 0; ti < cpu.tab.n; ti++)
            for (size_t i = 0; i < cpu.tab.p[ti].numel; i++) diff += pa[cpu.tab.p[ti].offset + i] != pb[cpu.tab.p[ti].offset + i];
        if (W <= 2) ok_w &= diff == 0;
        else ok_w &= diff <= P / 1000;  // other sum orders move a few bf16 roundings
        if (W <= 2) ok_m &= same_shard(&a, &b);
        free(pa), free(pb);
    }
    TEST_CHECK(ok_norm, "rank %d, ZeRO-%d %s: global gradient norm differs from one process's (worst rel %.3g; "
               "bitwise expected for ZeRO-1 on <= 2 ranks)", R, level, lowbit_format_name(optim), worst_norm);
    TEST_CHECK(ok_w, "rank %d, ZeRO-%d %s: all-gathered bf16 weights differ from one process's step", R, level,
               lowbit_format_name(optim));
    TEST_CHECK(ok_m, "rank %d, ZeRO-%d %s: master weights of the shard differ from one process's step", R, level,
               lowbit_format_name(optim));
    free(g), free(sum);
    zero_comm_free(&zc);
    llama_gpu_free(&a);
    llama_gpu_free(&b);
    zero_plan_free(&z);
    model_free(&cpu);
}

// ---- F: ZeRO-3 ----------------------------------------------------------------------------------

// Host only: every tensor's place in its gather buffer keeps its flat address modulo 256 bytes and
// lies inside the buffer; buffers are as large as their largest bucket.
static void check_zero3_geometry(const LlamaConfig *c, const char *name) {
    ParamTable tab;
    param_table_init(&tab, c);
    const int worlds[] = {1, 2, 3, 8};
    for (int W : worlds) {
        ZeroPlan z;
        zero_plan_init(&z, &tab, c->n_layers, 3, W - 1, W);
        const size_t nl = zero3_layer_buf_elems(&z), ng = zero3_global_buf_elems(&z);
        int ok = 1;
        for (int i = 0; i < tab.n; i++) {
            const ParamInfo *p = &tab.p[i];
            const int b = p->layer < 0 ? c->n_layers : p->layer;
            const size_t at = zero3_buf_index(&z, b, p->offset), cap = b < c->n_layers ? nl : ng;
            ok &= at % ZERO3_PAD == p->offset % ZERO3_PAD && at + p->numel <= cap;
        }
        size_t most = 0;
        for (int l = 0; l < c->n_layers; l++)
            most = z.bucket_hi[l] - z.bucket_lo[l] > most ? z.bucket_hi[l] - z.bucket_lo[l] : most;
        ok &= nl >= most && nl < most + ZERO3_PAD && ng == z.bucket_hi[c->n_layers];
        TEST_CHECK(ok, "%s world %d: a tensor's gather-buffer place changes its alignment or leaves the buffer "
                   "(layer buffer %zu, largest layer %zu, global %zu)", name, W, nl, most, ng);
        zero_plan_free(&z);
    }
    param_table_free(&tab);
}

// dist_allgather_into_bf16 over uneven shards, for windows inside one rank, across all, empty for
// some ranks, and the whole vector; the elements of dst past the window stay as they were.
static void check_gather_into(Dist *d, GpuCtx *ctx) {
    const int W = d->world, R = d->rank;
    const size_t n = 300007;
    size_t *bounds = (size_t *)ao_malloc(((size_t)W + 1) * sizeof(size_t));
    for (int r = 0; r <= W; r++) bounds[r] = (size_t)((double)n * r * r / ((double)W * W));  // rank 0 the smallest
    auto val = [](size_t i) { return bf16r((float)(i % 509) - 254.0f); };
    const size_t S = bounds[R + 1] - bounds[R];
    bf16 *hs = (bf16 *)ao_malloc((S ? S : 1) * 2), *ds = dalloc<bf16>(S ? S : 1);
    for (size_t i = 0; i < S; i++) hs[i] = __float2bfloat16(val(bounds[R] + i));
    h2d(ds, hs, S * 2);
    const size_t win[][2] = {{0, n}, {3, 17}, {bounds[W - 1] + 1, n - 1}, {n / 3, n / 3 + 4096}, {n - 5, n}, {7, 7}};
    bf16 *hd = (bf16 *)ao_malloc((n + 64) * 2), *dd = dalloc<bf16>(n + 64);
    for (const auto &w : win) {
        const size_t lo = w[0], hi = w[1];
        CUDA_CHECK(cudaMemsetAsync(dd, 0xff, (n + 64) * 2, ctx->stream));  // NaN canaries
        dist_comm_after(d, ctx->stream);
        cudaStream_t s = d->stream ? d->stream : ctx->stream;
        dist_allgather_into_bf16(d, dd, ds, bounds, lo, hi, s, "test all-gather into a buffer");
        dist_compute_after(d, ctx->stream);
        dist_wait(d, ctx->stream, "test all-gather into a buffer");
        d2h(hd, dd, (n + 64) * 2);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < n + 64; i++) {
            const float got = __bfloat162float(hd[i]);
            const int ok = i < hi - lo ? got == val(lo + i) : isnan(got);
            if (!ok && !bad++) first = i;
        }
        TEST_CHECK(bad == 0, "rank %d/%d: all-gather of [%zu, %zu) into a buffer: %zu wrong elements, the first at %zu",
                   R, W, lo, hi, bad, first);
    }
    free(bounds), free(hs), free(hd);
    CUDA_CHECK(cudaFree(ds));
    CUDA_CHECK(cudaFree(dd));
}

// A model with its plan and communication, stepped as train_llama steps it.
struct DpModel {
    ZeroPlan z;
    LlamaGpu m;
    ZeroComm zc;
    long gathers;  // layer gathers (ZeRO-3)
};

static void count_fetch(void *arg, bf16 *dst, size_t lo, size_t hi, cudaStream_t s) {
    DpModel *x = (DpModel *)arg;
    x->gathers++;
    zero_params_fetch(&x->zc, dst, lo, hi, s);
}

static void count_fetch_runs(void *arg, const DistGatherRun *runs, int n, cudaStream_t s) {  // --fp8-allgather
    DpModel *x = (DpModel *)arg;
    x->gathers++;
    zero_params_fetch_runs(&x->zc, runs, n, s);
}

static void dp_amax_reduce(void *arg, float *v, int n, cudaStream_t s) { zero_amax_reduce(&((DpModel *)arg)->zc, v, n, s); }

static void dp_init(DpModel *x, Dist *d, GpuCtx *ctx, const LlamaModel *cpu, int level, GpuRunOpts o, int B, int T,
                    int hook) {
    memset(x, 0, sizeof *x);
    zero_plan_init(&x->z, &cpu->tab, cpu->cfg.n_layers, level, d->rank, d->world);
    o.zero = &x->z;
    llama_gpu_init(&x->m, ctx, cpu, B, T, &o);
    zero_comm_init(&x->zc, d, &x->z, x->m.grads, level == 3 ? x->m.pshard : x->m.params, ctx->stream);
    if (d->world > 1) x->m.grads_stream = d->stream, x->m.sync = dist_sync_hook, x->m.sync_arg = d;
    if (x->m.zg) {  // ZeRO-1/2 --zero-gather-overlap: as train_llama sets it up
        x->m.gather_params = zero_params_gather_range;
        x->m.gather_arg = &x->zc;
        if (d->world > 1) x->m.gather_stream = d->stream;
    }
    if (level == 3 && hook) {
        x->m.gather = count_fetch;
        x->m.gather_runs = count_fetch_runs;
        x->m.reduce_max = dp_amax_reduce;
        x->m.gather_arg = x;
        if (d->world > 1) x->m.gather_stream = d->stream;
    }
}

static void dp_free(DpModel *x) {
    zero_comm_free(&x->zc);
    llama_gpu_free(&x->m);
    zero_plan_free(&x->z);
}

// Forward + backward over the micro-batches (the last one reduced per layer), the loss sum over
// the ranks and the global norm; the step itself is dp_step.
static float dp_grads(DpModel *x, Dist *d, GpuCtx *ctx, int32_t **tok, int32_t **tgt, int accum, int n_valid,
                      double *loss) {
    LlamaGpu *m = &x->m;
    llama_gpu_zero_grads(m, ctx);
    double sum = 0;
    for (int a = 0; a < accum; a++) {
        llama_gpu_set_batch(m, ctx, tok[a], tgt[a]);
        int nv;
        sum += llama_gpu_forward(m, ctx, 1.0f / n_valid, &nv);
        if (a == accum - 1) m->grads_ready = zero_grads_ready, m->grads_ready_arg = &x->zc;
        m->stream_grads = a == accum - 1;
        llama_gpu_backward(m, ctx);
        m->grads_ready = nullptr, m->stream_grads = 0;
    }
    zero_grads_wait(&x->zc);
    dist_allreduce_host(d, &sum, 1, "the test's loss sums");
    *loss = sum;
    return zero_grad_norm(&x->zc);
}

static void dp_step(DpModel *x, Dist *d, GpuCtx *ctx, int t, float norm) {
    llama_gpu_adamw(&x->m, ctx, 2e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, norm > 1.0f ? 1.0f / norm : 1.0f);
    zero_params_gather(&x->zc);
    dist_wait(d, ctx->stream, "the test's optimizer step");
}

static int same_dev(const void *a, const void *b, size_t bytes) {
    unsigned char *x = (unsigned char *)ao_malloc(bytes ? bytes : 1), *y = (unsigned char *)ao_malloc(bytes ? bytes : 1);
    CUDA_CHECK(cudaMemcpy(x, a, bytes, cudaMemcpyDefault));
    CUDA_CHECK(cudaMemcpy(y, b, bytes, cudaMemcpyDefault));
    const int ok = memcmp(x, y, bytes) == 0;
    free(x), free(y);
    return ok;
}

// ZeRO-3 against ZeRO-2 on this job's ranks (both models in this process, the same data): every
// number must be the same bits. hook = 0 (one rank only): the model's own copy instead of the hook.
// delay 1 / 2: every gather starts 200 us late / the compute stream idles 200 us after each wait for
// a gather (LlamaGpu.zdelay_ns), so a missing event shows as different bits, not as a rare race.
// fp8ag: both run --recipe fp8-tensorwise with the weight cache (as train_llama with accumulation),
// and the ZeRO-3 model --fp8-allgather (its layers gather fp8 codes) against ZeRO-3 without it.
static void check_zero3_steps(Dist *d, GpuCtx *ctx, LowbitFormat optim, LowbitMaster master, int offload, int hook,
                              int delay = 0, int fp8ag = 0) {
    const int W = d->world, R = d->rank, B = 2, T = 16, steps = 3, N = B * T;
    enum { ACCUM = 2 };
    const LlamaConfig c = test_llama_config(1000, 256, 768, 3, 4, 2, 1);  // 3 layers (both slots, odd), tied embeddings
    LlamaModel cpu;
    model_init(&cpu, &c);
    model_init_random(&cpu, 31);
    GpuRunOpts o = opts_for(optim, offload, nullptr);
    o.master = master;
    char what[128];
    if (fp8ag) o.recipe = LINEAR_FP8_TENSORWISE, o.cache_weight_casts = 1;
    snprintf(what, sizeof what, "rank %d/%d, ZeRO-3 vs ZeRO-%s, %s%s%s%s%s", R, W,
             fp8ag ? "3 fp8-tensorwise, --fp8-allgather" : "2", lowbit_format_name(optim),
             master == LOWBIT_MASTER_BF16_SR ? " bf16-sr" : "", offload ? " offload" : "", hook ? "" : " (no hook)",
             delay == 1 ? " (gathers delayed)" : delay == 2 ? " (compute delayed after each gather wait)" : "");
    DpModel *a = (DpModel *)ao_calloc(1, sizeof(DpModel)), *b = (DpModel *)ao_calloc(1, sizeof(DpModel));
    dp_init(a, d, ctx, &cpu, fp8ag ? 3 : 2, o, B, T, 1);
    GpuRunOpts ob = o;
    ob.fp8_allgather = fp8ag;
    dp_init(b, d, ctx, &cpu, 3, ob, B, T, hook);
    if (delay) b->m.zdelay_ns[delay - 1] = 200000;
    {  // the memory plan: the shard of the bf16 weights and the three gather buffers
        GpuRunOpts o3 = ob;
        o3.zero = &b->z;
        const GpuMemPlan p = llama_gpu_plan(&c, B, T, &o3);
        const size_t S = b->z.end - b->z.begin;
        const size_t g = (2 * zero3_layer_buf_elems(&b->z) + zero3_global_buf_elems(&b->z)) * 2;
        TEST_CHECK(p.params == S * 2 && p.gather == g && b->m.params == nullptr,
                   "%s: memory plan params %zu (want %zu), gather %zu (want %zu)", what, p.params, S * 2, p.gather, g);
        // --fp8-allgather: the shard's codes (1 byte per element) and 2 layer slots (7 fp8 Linears of
        // 256/768 dims), no weight cache
        const size_t slot = (size_t)256 * (256 + 128 + 128 + 256) + (size_t)3 * 256 * 768;
        TEST_CHECK(!fp8ag || (p.fp8_gather >= S + 2 * slot && p.weight_cache == 0 && b->m.ag_slot == slot &&
                              b->m.n_ag == 7 * c.n_layers && b->m.wcache_bytes == 0),
                   "%s: memory plan fp8 gather %zu (want >= %zu), weight cache %zu (want 0), slot %zu (want %zu)",
                   what, p.fp8_gather, S + 2 * slot, p.weight_cache, b->m.ag_slot, slot);
    }
    int32_t *tok[ACCUM], *tgt[ACCUM];
    for (int k = 0; k < ACCUM; k++) tok[k] = (int32_t *)ao_malloc(N * 4), tgt[k] = (int32_t *)ao_malloc(N * 4);
    int ok_loss = 1, ok_norm = 1, ok_grad = 1, ok_w = 1, ok_gathers = 1;
    long per_step[steps];
    for (int t = 1; t <= steps; t++) {
        uint64_t st = 1000 * (uint64_t)t + (uint64_t)R;
        for (int k = 0; k < ACCUM; k++)
            for (int i = 0; i < N; i++) {
                tok[k][i] = (int32_t)(test_rand_u64(&st) % 1000);
                tgt[k][i] = i % 7 == 3 ? -1 : (int32_t)(test_rand_u64(&st) % 1000);  // some ignored targets
            }
        double nv = 0;
        for (int k = 0; k < ACCUM; k++)
            for (int i = 0; i < N; i++) nv += tgt[k][i] >= 0;
        dist_allreduce_host(d, &nv, 1, "the test's target count");
        double la, lb;
        const long g0 = b->gathers;
        const float na = dp_grads(a, d, ctx, tok, tgt, ACCUM, (int)nv, &la);
        const float nb = dp_grads(b, d, ctx, tok, tgt, ACCUM, (int)nv, &lb);
        ok_loss &= la == lb;
        ok_norm &= na == nb;
        ok_grad &= same_dev(a->m.grads, b->m.grads, cpu.tab.total * 4);  // own range reduced, the rest local
        dp_step(a, d, ctx, t, na);
        dp_step(b, d, ctx, t, nb);
        per_step[t - 1] = b->gathers - g0;
        ok_gathers &= !hook || per_step[t - 1] == 7;
        ok_w &= same_shard(&a->m, &b->m);
    }
    // an evaluation forward after the last step gathers the new weights (1 + layers gathers)
    const long g0 = b->gathers;
    int nva, nvb;
    llama_gpu_set_batch(&a->m, ctx, tok[0], tgt[0]);
    const double ea = llama_gpu_forward(&a->m, ctx, 0.0f, &nva);
    llama_gpu_set_batch(&b->m, ctx, tok[0], tgt[0]);
    const double eb = llama_gpu_forward(&b->m, ctx, 0.0f, &nvb);
    TEST_CHECK(ok_loss && ea == eb, "%s: losses differ (eval after the steps: %.9g vs %.9g)", what, ea, eb);
    TEST_CHECK(ok_norm, "%s: gradient norms differ", what);
    TEST_CHECK(ok_grad, "%s: gradients differ", what);
    TEST_CHECK(ok_w, "%s: master or bf16 weights of the shard differ after a step", what);
    TEST_CHECK(!fp8ag || (a->m.lin.w_casts > 0 && b->m.lin.w_casts == 0 && b->m.lin.w_reused > 0),
               "%s: weight casts %llu / reused %llu with --fp8-allgather (want 0 / > 0: every W comes gathered), "
               "%llu without", what, b->m.lin.w_casts, b->m.lin.w_reused, a->m.lin.w_casts);
    TEST_CHECK(ok_gathers && (!hook || b->gathers - g0 == 1 + c.n_layers),
               "%s: layer gathers per step %ld %ld %ld (want 7: 4 + 1 + 1 + 1 over 2 micro-batches), eval %ld (want %d)",
               what, per_step[0], per_step[1], per_step[2], b->gathers - g0, 1 + c.n_layers);
    for (int k = 0; k < ACCUM; k++) free(tok[k]), free(tgt[k]);
    dp_free(a), dp_free(b);
    free(a), free(b);
    model_free(&cpu);
}

// ZeRO-1/2 --zero-gather-overlap against the whole all-gather after the step (zero_params_gather), on
// this job's ranks, both models in this process, the same data: losses, norms, gradients, the shard's
// weights after each step and the whole bf16 vector at the end must be the same bits. As train_llama
// does, the overlapped model's all-gather is queued after the step's host all-reduce of the target
// count (which would otherwise wait for it) and right before its forward; that forward runs first, so
// nothing but its waits orders it after the gathers. delay 1 / 2: every bucket's gather starts 200 us
// late / the compute stream idles 200 us after each wait for one (LlamaGpu.zdelay_ns): with several
// ranks a missing wait (a layer read before its gather landed, or a step writing the shard its last
// gather still sends) then gives other bits instead of racing rarely. With one rank the gathers move
// nothing; the schedule's events and bookkeeping still run.
static void check_zero_gather_overlap(Dist *d, GpuCtx *ctx, int level, LowbitFormat optim, int offload, int delay) {
    const int W = d->world, R = d->rank, B = 2, T = 16, steps = 3, N = B * T;
    enum { ACCUM = 2 };
    const LlamaConfig c = test_llama_config(1000, 256, 768, 3, 4, 2, 0);  // 3 layers, untied
    LlamaModel cpu;
    model_init(&cpu, &c);
    model_init_random(&cpu, 37);
    GpuRunOpts o = opts_for(optim, offload, nullptr);
    char what[160];
    snprintf(what, sizeof what, "rank %d/%d, ZeRO-%d --zero-gather-overlap vs without, %s%s%s", R, W, level,
             lowbit_format_name(optim), offload ? " offload" : "",
             delay == 1 ? " (gathers delayed)" : delay == 2 ? " (compute delayed after each gather wait)" : "");
    DpModel *a = (DpModel *)ao_calloc(1, sizeof(DpModel)), *b = (DpModel *)ao_calloc(1, sizeof(DpModel));
    dp_init(a, d, ctx, &cpu, level, o, B, T, 0);
    GpuRunOpts ob = o;
    ob.zero_gather_overlap = 1;
    dp_init(b, d, ctx, &cpu, level, ob, B, T, 0);
    if (delay) b->m.zdelay_ns[delay - 1] = 200000;
    TEST_CHECK(b->m.zg && !a->m.zg && b->m.gather_params, "%s: the schedule is not in effect (zg %d / %d)", what, b->m.zg,
               a->m.zg);
    int32_t *tok[ACCUM], *tgt[ACCUM];
    for (int k = 0; k < ACCUM; k++) tok[k] = (int32_t *)ao_malloc(N * 4), tgt[k] = (int32_t *)ao_malloc(N * 4);
    int ok_loss = 1, ok_norm = 1, ok_grad = 1, ok_w = 1, ok_pending = 1, owed = 0;
    const int NB = c.n_layers + 1;
    for (int t = 1; t <= steps; t++) {
        uint64_t st = 2000 * (uint64_t)t + (uint64_t)R;
        for (int k = 0; k < ACCUM; k++)
            for (int i = 0; i < N; i++) {
                tok[k][i] = (int32_t)(test_rand_u64(&st) % 1000);
                tgt[k][i] = i % 5 == 2 ? -1 : (int32_t)(test_rand_u64(&st) % 1000);
            }
        double nv = 0;
        for (int k = 0; k < ACCUM; k++)
            for (int i = 0; i < N; i++) nv += tgt[k][i] >= 0;
        dist_allreduce_host(d, &nv, 1, "the test's target count");
        if (owed) {
            llama_gpu_params_gather(&b->m, ctx);
            ok_pending &= b->m.zg_n_pending == NB;
            owed = 0;
        }
        double la, lb;
        const float nb = dp_grads(b, d, ctx, tok, tgt, ACCUM, (int)nv, &lb);  // first: see above
        ok_pending &= b->m.zg_n_pending == 0;
        const float na = dp_grads(a, d, ctx, tok, tgt, ACCUM, (int)nv, &la);
        ok_loss &= la == lb;
        ok_norm &= na == nb;
        ok_grad &= same_dev(a->m.grads, b->m.grads, cpu.tab.total * 4);
        dp_step(a, d, ctx, t, na);
        llama_gpu_adamw(&b->m, ctx, 2e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, nb > 1.0f ? 1.0f / nb : 1.0f);  // dp_step's
        owed = 1;
        dist_wait(d, ctx->stream, "the test's optimizer step");
        ok_w &= same_shard(&a->m, &b->m);
    }
    // an evaluation forward after the last step, and the whole bf16 vector
    llama_gpu_params_gather(&b->m, ctx);
    int nva, nvb;
    llama_gpu_set_batch(&b->m, ctx, tok[0], tgt[0]);
    const double eb = llama_gpu_forward(&b->m, ctx, 0.0f, &nvb);
    llama_gpu_set_batch(&a->m, ctx, tok[0], tgt[0]);
    const double ea = llama_gpu_forward(&a->m, ctx, 0.0f, &nva);
    llama_gpu_params_gather(&b->m, ctx);  // again (the same bytes), now waited for by the host only
    llama_gpu_params_sync(&b->m);
    ok_pending &= b->m.zg_n_pending == 0;
    const int ok_all = same_dev(a->m.params, b->m.params, cpu.tab.total * 2);
    TEST_CHECK(ok_loss && ea == eb, "%s: losses differ (eval after the steps: %.9g vs %.9g)", what, ea, eb);
    TEST_CHECK(ok_norm, "%s: gradient norms differ", what);
    TEST_CHECK(ok_grad, "%s: gradients differ", what);
    TEST_CHECK(ok_w, "%s: master or bf16 weights of the shard differ after a step", what);
    TEST_CHECK(ok_all, "%s: the all-gathered bf16 weights differ at the end", what);
    TEST_CHECK(ok_pending, "%s: pending buckets not %d after a gather, or not 0 after a forward / sync", what, NB);
    for (int k = 0; k < ACCUM; k++) free(tok[k]), free(tgt[k]);
    dp_free(a), dp_free(b);
    free(a), free(b);
    model_free(&cpu);
}

int main(void) {
    Dist d;
    dist_init(&d, 120);
    if (d.rank == 0) {  // A, B: host only
        char err[1024];
        const char *fixtures[] = {"llama3", "qwen2", "mha"};
        for (const char *f : fixtures) {
            char dir[512];
            snprintf(dir, sizeof dir, "%s/fixtures/%s", test_dir(), f);
            LlamaConfig c;
            if (!config_load(&c, dir, err, sizeof err)) { TEST_CHECK(0, "%s", err); continue; }
            check_plan(&c, f);
        }
        LlamaConfig big;
        char p1b[512];
        snprintf(p1b, sizeof p1b, "%s/fixtures/configs/llama32_1b_v5.json", test_dir());
        if (config_load(&big, p1b, err, sizeof err)) check_plan(&big, "llama32_1b");
        else TEST_CHECK(0, "%s", err);
        LlamaConfig oc = opt_config();
        check_plan(&oc, "opt");
        check_layouts();
        for (const char *f : fixtures) {
            char dir[512];
            snprintf(dir, sizeof dir, "%s/fixtures/%s", test_dir(), f);
            LlamaConfig c;
            if (config_load(&c, dir, err, sizeof err)) check_zero3_geometry(&c, f);
        }
        check_zero3_geometry(&big, "llama32_1b");
        check_zero3_geometry(&oc, "opt");
        printf("plan and layout checks: %d passed, %d failed so far\n", test_passed, test_failed);
    }
    GpuCtx ctx;
    gpu_ctx_init(&ctx, dist_device(&d));
    g_s = ctx.stream;
    dist_comm_init(&d);
    if (d.world > 1) printf("%s: %d ranks\n", dist_who(&d), d.world);
    // E: every rank takes part in the collectives together
    check_collectives(&d, &ctx);
    for (int level = 1; level <= 2; level++) {
        check_zero_step(&d, &ctx, level, LOWBIT_F32);
        check_zero_step(&d, &ctx, level, LOWBIT_8BIT);
    }
    // ZeRO-1/2 --zero-gather-overlap against the whole all-gather
    check_zero_gather_overlap(&d, &ctx, 2, LOWBIT_F32, 0, 0);
    check_zero_gather_overlap(&d, &ctx, 1, LOWBIT_F32, 0, 1);  // races widened: gathers late
    check_zero_gather_overlap(&d, &ctx, 2, LOWBIT_F32, 0, 1);
    check_zero_gather_overlap(&d, &ctx, 2, LOWBIT_F32, 0, 2);  // ... compute late
    check_zero_gather_overlap(&d, &ctx, 2, LOWBIT_8BIT, 1, 1);  // offload: the weights come up by copies
    // F: ZeRO-3 over the job's ranks
    check_gather_into(&d, &ctx);
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 0, 1);
    check_zero3_steps(&d, &ctx, LOWBIT_8BIT, LOWBIT_MASTER_F32, 0, 1);
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_BF16_SR, 0, 1);
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 1, 1);
    if (d.world == 1) check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 0, 0);
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 0, 1, 1);  // races widened: gathers late
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 0, 1, 2);  // ... compute late
    // --fp8-allgather (fp8-tensorwise) against plain ZeRO-3 fp8-tensorwise
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 0, 1, 0, 1);
    check_zero3_steps(&d, &ctx, LOWBIT_8BIT, LOWBIT_MASTER_F32, 0, 1, 0, 1);
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 1, 1, 0, 1);  // offload writes the shard
    if (d.world == 1) check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 0, 0, 0, 1);
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 0, 1, 1, 1);
    check_zero3_steps(&d, &ctx, LOWBIT_F32, LOWBIT_MASTER_F32, 0, 1, 2, 1);
    dist_barrier(&d, "every rank to finish the collective tests");
    const int rank = d.rank;
    dist_free(&d);  // finalizing waits for every rank: before rank 0 goes on alone
    if (rank == 0) {  // C, D: one process
        const LowbitFormat fmts[] = {LOWBIT_F32, LOWBIT_8BIT, LOWBIT_4BIT, LOWBIT_FP8};
        for (LowbitFormat f : fmts) check_sharded_step(&ctx, f, 0);
        check_sharded_step(&ctx, LOWBIT_F32, 1);
        check_sharded_step(&ctx, LOWBIT_8BIT, 1);
    }
    gpu_ctx_free(&ctx);
    return test_summary();
}
