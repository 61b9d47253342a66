// ZeRO-3's weight gathers for the GPU model (the schedule is described in llama_gpu.cuh): the
// three gather buffers' pointers, the gather stream and its events, and the fetch/use pair the
// forward and backward call around each layer.
#include <limits.h>
#include <string.h>

#include "llama_gpu_internal.cuh"
#include "../quant/fp8_cast.cuh"

// Floats between two fp8 tensors' amax / scale: cuBLASLt refuses (CUBLAS_STATUS_NOT_SUPPORTED at the
// matmul) a scale pointer that is only 4-byte aligned; 64 floats keep each at 256 bytes, as the casts'
// scratch does (the padding's amax is 0 and all-reduced with the rest: a few KiB).
#define AG_STRIDE 64

static int buffer_of(const LlamaGpu *m, int b) { return b < m->plan->n_layers ? b % 2 : 2; }

// LlamaGpu.zdelay_ns (tests): waits ns nanoseconds of the GPU's global timer.
__global__ static void zero3_spin_kernel(long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while ((long long)(t - t0) < ns);
}

void lg_spin(long long ns, cudaStream_t s) {
    if (ns <= 0) return;
    zero3_spin_kernel<<<1, 1, 0, s>>>(ns);
    CUDA_CHECK(cudaGetLastError());
}

// Points one struct's fields (the X-macro's order, as LlamaWeightsBf16_point does) at where
// bucket b's gather puts them; k walks the parameter table.
#define Z3_POINT_(A, field, hf, ndim, d0, d1, present) \
    dst->field = (present) ? m->zbuf[buffer_of(m, b)] + zero3_buf_index(z, b, tab->p[k++].offset) : NULL;

void lg_zero3_init(LlamaGpu *m) {
    const ZeroPlan *z = m->plan;
    const ParamTable *tab = &m->tab;
    const LlamaConfig *c = &m->cfg;
    const int L = c->n_layers;
    for (int i = 0; i < tab->n; i++) {  // every tensor inside its bucket (the plan's buckets tile the table)
        const int b = tab->p[i].layer < 0 ? L : tab->p[i].layer;
        CHECK(z->bucket_lo[b] <= tab->p[i].offset && tab->p[i].offset + tab->p[i].numel <= z->bucket_hi[b],
              "ZeRO-3: %s lies outside its gather bucket", tab->p[i].hf_name);
    }
    int k = 0;
    {
        const int b = L;
        LlamaWeightsBf16 *dst = &m->w;
        LLAMA_GLOBAL_PARAMS(Z3_POINT_, 0)
        if (!dst->lm_head) dst->lm_head = dst->wte;
        dst->layers = m->wl;
        dst->n_layers = L;
    }
    for (int b = 0; b < L; b++) {
        LlamaWeightsBf16Layer *dst = &m->wl[b];
        LLAMA_LAYER_PARAMS(Z3_POINT_, 0)
    }
    CHECK(k == tab->n, "ZeRO-3: pointed %d of %d tensors", k, tab->n);
    for (int i = 0; i < 3; i++) {
        m->zheld[i] = -1;
        CUDA_CHECK(cudaEventCreateWithFlags(&m->zready[i], cudaEventDisableTiming));
    }
    CUDA_CHECK(cudaEventCreateWithFlags(&m->zev_compute, cudaEventDisableTiming));
    CUDA_CHECK(cudaStreamCreateWithFlags(&m->zown_stream, cudaStreamNonBlocking));
    m->gather_stream = m->zown_stream;
}

void lg_zero3_free(LlamaGpu *m) {
    if (m->zown_stream) cudaStreamSynchronize(m->zown_stream), cudaStreamDestroy(m->zown_stream);
    if (m->ag_mem) cudaFree(m->ag_mem);
    free(m->ag_of), free(m->ag_pos);
    for (int i = 0; i < 3; i++)
        if (m->zready[i]) cudaEventDestroy(m->zready[i]);
    if (m->zev_compute) cudaEventDestroy(m->zev_compute);
}

// ---- --fp8-allgather ---------------------------------------------------------------------------
// Every layer has the same Linears, so one layout of the fp8 parts (layer 0's) serves every layer:
// pos[i][p] is group i's part p's place in a code slot, -1 for a part that stays bf16.
static size_t ag_slot_layout(const LlamaGpu *m, long pos[4][LINEAR_MAX_PARTS], int *per_layer) {
    LinearGroup g[4];
    const int ng = llama_gpu_linears(m, 0, g, nullptr);
    CHECK(ng <= 4, "fp8-allgather: %d Linear groups per layer (at most 4)", ng);
    size_t bytes = 0;
    *per_layer = 0;
    for (int i = 0; i < ng; i++)
        for (int p = 0; p < g[i].nparts; p++) {
            pos[i][p] = -1;
            if (!linear_group_part_fp8(m->opts.recipe, &g[i], p, NULL, 0)) continue;
            pos[i][p] = (long)bytes;
            bytes += ((size_t)g[i].K * g[i].part[p].M + 255) / 256 * 256;  // 256-byte aligned, as the cast scratch
            (*per_layer)++;
        }
    return bytes;
}

size_t lg_fp8ag_place(LlamaGpu *m, void *base) {
    long pos[4][LINEAR_MAX_PARTS];
    int per_layer;
    m->ag_slot = ag_slot_layout(m, pos, &per_layer);
    m->n_ag = per_layer * m->cfg.n_layers;
    Carver cv = {(char *)base, 0};
    m->qshard = cv.take<uint8_t>(m->shard_n);
    m->zq[0] = cv.take<uint8_t>(m->ag_slot), m->zq[1] = cv.take<uint8_t>(m->ag_slot);
    m->ag_amax = cv.take<float>((size_t)m->n_ag * AG_STRIDE), m->ag_scale = cv.take<float>((size_t)m->n_ag * AG_STRIDE);
    m->ag_ws = cv.take<float>(FP8_AMAX_WS_FLOATS);
    return cv.used;
}

void lg_fp8ag_init(LlamaGpu *m, GpuCtx *ctx) {
    const ZeroPlan *z = m->plan;
    const ParamTable *tab = &m->tab;
    const size_t bytes = lg_fp8ag_place(m, nullptr);
    CUDA_CHECK(cudaMalloc(&m->ag_mem, bytes));
    CUDA_CHECK(cudaMemsetAsync(m->ag_mem, 0, bytes, ctx->stream));  // the amax workspace's counter
    lg_fp8ag_place(m, m->ag_mem);
    m->ag_of = (int *)ao_malloc((size_t)tab->n * sizeof(int));
    m->ag_pos = (size_t *)ao_calloc((size_t)tab->n, sizeof(size_t));
    for (int t = 0; t < tab->n; t++) m->ag_of[t] = -1;
    long pos[4][LINEAR_MAX_PARTS];
    int per_layer, j = 0;
    ag_slot_layout(m, pos, &per_layer);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        LinearGroup g[4];
        const int ng = llama_gpu_linears(m, l, g, nullptr);
        for (int i = 0; i < ng; i++)
            for (int p = 0; p < g[i].nparts; p++) {
                if (pos[i][p] < 0) continue;
                int t = 0;  // the tensor the part's weight pointer (into the layer's slot) belongs to
                while (t < tab->n && !(tab->p[t].layer == l &&
                                       m->zbuf[l % 2] + zero3_buf_index(z, l, tab->p[t].offset) == g[i].part[p].w))
                    t++;
                CHECK(t < tab->n && g[i].wc, "fp8-allgather: layer %d's %s is no tensor of the table", l, g[i].part[p].name);
                m->ag_of[t] = j, m->ag_pos[t] = (size_t)pos[i][p];
                LinearWCache *wc = &g[i].wc[p];
                memset(wc, 0, sizeof *wc);
                wc->q[0] = m->zq[l % 2] + pos[i][p], wc->s[0] = m->ag_scale + (size_t)j * AG_STRIDE, wc->from_codes = 1;
                j++;
            }
    }
    CHECK(j == m->n_ag, "fp8-allgather: numbered %d of %d fp8 tensors", j, m->n_ag);
}

// Marks the fp8 parts of layer l as holding the weights version v in their slot (0: not held).
static void ag_mark(LlamaGpu *m, int l, unsigned long long v) {
    LinearGroup g[4];
    const int ng = llama_gpu_linears(m, l, g, nullptr);
    for (int i = 0; i < ng; i++)
        for (int p = 0; p < g[i].nparts; p++)
            if (g[i].wc && g[i].wc[p].from_codes) g[i].wc[p].made[0] = v;
}

// The codes of the shard's fp8 tensors for the current weights, queued on the gather stream: the
// casts of torchao's float8 all-gather, with the amax of each whole tensor (the maximum of its
// pieces' over the ranks: the same number as one cast of the whole tensor), so every code and scale
// is the bits the Linear's own cast of the gathered bf16 weight makes. Every rank runs it at the
// same fetch (the collective).
static void ag_cast_shard(LlamaGpu *m) {
    const ZeroPlan *z = m->plan;
    cudaStream_t s = m->gather_stream;
    const Fp8CastSpec spec = fp8_recipe_cast(linear_fp8_recipe(m->opts.recipe), FP8_W_FWD);
    CUDA_CHECK(cudaMemsetAsync(m->ag_amax, 0, (size_t)m->n_ag * AG_STRIDE * sizeof(float), s));  // 0 for tensors without a piece here
    for (int i = 0; i < z->n_pieces; i++) {
        const ZeroPiece *pc = &z->pieces[i];
        const int j = m->ag_of[pc->tensor];
        if (j < 0) continue;
        CHECK(pc->n <= INT_MAX, "fp8-allgather: a piece of %zu elements (the casts take at most %d)", pc->n, INT_MAX);
        fp8_amax_tensor(m->ag_amax + (size_t)j * AG_STRIDE, m->ag_ws, m->pshard + (pc->offset - z->begin), 1, (int)pc->n, pc->n, s);
    }
    if (m->reduce_max) m->reduce_max(m->gather_arg, m->ag_amax, m->n_ag * AG_STRIDE, s);
    else CHECK(z->world == 1, "fp8-allgather over %d ranks needs the reduce_max hook (LlamaGpu.reduce_max)", z->world);
    fp8_scales_from_amax(m->ag_scale, m->ag_amax, m->n_ag * AG_STRIDE, spec.dtype, spec.pow2, s);  // every rank, piece or not
    for (int i = 0; i < z->n_pieces; i++) {
        const ZeroPiece *pc = &z->pieces[i];
        const int j = m->ag_of[pc->tensor];
        if (j < 0) continue;
        // (writes the scale again: the same value)
        fp8_cast_tensor(m->qshard + (pc->offset - z->begin), nullptr, m->ag_scale + (size_t)j * AG_STRIDE,
                        m->pshard + (pc->offset - z->begin), 1, (int)pc->n, pc->n, m->ag_amax + (size_t)j * AG_STRIDE, spec.dtype, spec.pow2, s);
    }
}

// Layer b's gather into slot k: its fp8 tensors' codes, the rest (norms, biases; runs of
// neighbours merged) in bf16.
static void ag_gather(LlamaGpu *m, int b, int k) {
    const ZeroPlan *z = m->plan;
    const ParamTable *tab = &m->tab;
    enum { MAX_RUNS = 32 };
    DistGatherRun runs[MAX_RUNS];
    int n = 0;
    for (int t = 0; t < tab->n; t++) {
        const ParamInfo *P = &tab->p[t];
        if (P->layer != b) continue;
        const size_t lo = P->offset, hi = P->offset + P->numel;
        const int j = m->ag_of[t];
        if (j < 0 && n > 0 && runs[n - 1].bytes == 2) {
            runs[n - 1].hi = hi;  // the previous tensor is bf16 too: one run (with the padding between)
            continue;
        }
        CHECK(n < MAX_RUNS, "fp8-allgather: layer %d needs more than %d gather runs", b, MAX_RUNS);
        if (j >= 0) runs[n++] = {m->zq[k] + m->ag_pos[t], m->qshard, lo, hi, 1};
        else runs[n++] = {m->zbuf[k] + zero3_buf_index(z, b, lo), m->pshard, lo, hi, 2};
    }
    if (m->gather_runs) {
        m->gather_runs(m->gather_arg, runs, n, m->gather_stream);
        return;
    }
    CHECK(z->world == 1, "ZeRO-3 --fp8-allgather over %d ranks needs the gather_runs hook (LlamaGpu.gather_runs)", z->world);
    for (int i = 0; i < n; i++) {
        const size_t e = runs[i].bytes;
        CUDA_CHECK(cudaMemcpyAsync(runs[i].dst, (const char *)runs[i].shard + (runs[i].lo - z->begin) * e,
                                   (runs[i].hi - runs[i].lo) * e, cudaMemcpyDeviceToDevice, m->gather_stream));
    }
}

void lg_zero3_fetch(LlamaGpu *m, GpuCtx *ctx, int b) {
    const ZeroPlan *z = m->plan;
    const int k = buffer_of(m, b);
    if (m->zheld[k] == b) return;
    const size_t lo = z->bucket_lo[b], hi = z->bucket_hi[b];
    bf16 *dst = m->zbuf[k] + zero3_buf_index(z, b, lo);
    // What the compute stream holds now ends with the last reader of this buffer (the layer two
    // before, or the previous backward) and, after a step, with the writes to the shard.
    CUDA_CHECK(cudaEventRecord(m->zev_compute, ctx->stream));
    CUDA_CHECK(cudaStreamWaitEvent(m->gather_stream, m->zev_compute, 0));
    lg_spin(m->zdelay_ns[0], m->gather_stream);
    if (m->opts.fp8_allgather && b < m->plan->n_layers) {
        if (m->ag_version != m->wversion) ag_cast_shard(m), m->ag_version = m->wversion;
        if (m->zheld[k] >= 0) ag_mark(m, m->zheld[k], 0);  // its codes are overwritten
        ag_gather(m, b, k);
        ag_mark(m, b, m->wversion);  // (the compute stream waits for the gather: lg_zero3_use)
    } else if (m->gather) {
        m->gather(m->gather_arg, dst, lo, hi, m->gather_stream);
    } else {
        CHECK(z->world == 1, "ZeRO-3 over %d ranks needs the gather hook (LlamaGpu.gather)", z->world);
        CUDA_CHECK(cudaMemcpyAsync(dst, m->pshard + (lo - z->begin), (hi - lo) * sizeof(bf16), cudaMemcpyDeviceToDevice,
                                   m->gather_stream));
    }
    CUDA_CHECK(cudaEventRecord(m->zready[k], m->gather_stream));
    m->zheld[k] = b;
}

void lg_zero3_use(LlamaGpu *m, GpuCtx *ctx, int b) {
    const int k = buffer_of(m, b);
    CHECK(m->zheld[k] == b, "ZeRO-3: bucket %d used while its buffer holds %d (not fetched)", b, m->zheld[k]);
    CUDA_CHECK(cudaStreamWaitEvent(ctx->stream, m->zready[k], 0));
    lg_spin(m->zdelay_ns[1], ctx->stream);
}

void llama_gpu_params_changed(LlamaGpu *m) {
    for (int i = 0; i < 3; i++) m->zheld[i] = -1;
    m->wversion++;  // the fp8 weight codes of opts.cache_weight_casts are cast again
}
