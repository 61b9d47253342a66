// ZeRO-3's weight gathers for the GPU model (the schedule is described in llama_gpu.cuh): the
// three gather buffers' pointers, the gather stream and its events, and the fetch/use pair the
// forward and backward call around each layer.
#include <string.h>

#include "llama_gpu_internal.cuh"

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

static void spin(long long ns, cudaStream_t s) {
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
    for (int i = 0; i < 3; i++)
        if (m->zready[i]) cudaEventDestroy(m->zready[i]);
    if (m->zev_compute) cudaEventDestroy(m->zev_compute);
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
    spin(m->zdelay_ns[0], m->gather_stream);
    if (m->gather) {
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
    spin(m->zdelay_ns[1], ctx->stream);
}

void llama_gpu_params_changed(LlamaGpu *m) {
    for (int i = 0; i < 3; i++) m->zheld[i] = -1;
    m->wversion++;  // the fp8 weight codes of opts.cache_weight_casts are cast again
}
