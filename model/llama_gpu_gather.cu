// ZeRO-1/2's parameter all-gather overlapped with the next forward (--zero-gather-overlap; the
// schedule is described in llama_gpu.cuh): one all-gather per gradient bucket on the gather
// stream, an event after each, and the compute stream's waits for them.
#include "llama_gpu_internal.cuh"

void lg_zg_init(LlamaGpu *m) {
    const ZeroPlan *z = m->plan;
    m->zg = m->opts.zero_gather_overlap && m->opts.zero && (z->level == 1 || z->level == 2);
    if (!m->zg) return;
    const int NB = z->n_layers + 1;
    m->zg_ready = (cudaEvent_t *)ao_calloc((size_t)NB, sizeof(cudaEvent_t));
    m->zg_pending = (int *)ao_calloc((size_t)NB, sizeof(int));
    for (int b = 0; b < NB; b++) CUDA_CHECK(cudaEventCreateWithFlags(&m->zg_ready[b], cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&m->zev_compute, cudaEventDisableTiming));
    CUDA_CHECK(cudaStreamCreateWithFlags(&m->zown_stream, cudaStreamNonBlocking));
    m->gather_stream = m->zown_stream;
}

void lg_zg_free(LlamaGpu *m) {
    if (!m->zg) return;
    // Queued gathers may still run on the gather stream (the communication stream: the owner's to
    // wait for); the own stream is drained before it goes.
    if (m->zown_stream) cudaStreamSynchronize(m->zown_stream), cudaStreamDestroy(m->zown_stream);
    for (int b = 0; m->zg_ready && b <= m->plan->n_layers; b++) cudaEventDestroy(m->zg_ready[b]);
    if (m->zev_compute) cudaEventDestroy(m->zev_compute);
    free(m->zg_ready), free(m->zg_pending);
}

void llama_gpu_params_gather(LlamaGpu *m, GpuCtx *ctx) {
    CHECK(m->zg, "llama_gpu_params_gather without --zero-gather-overlap on a ZeRO-1/2 plan");
    const ZeroPlan *z = m->plan;
    const int NL = z->n_layers;
    // The shard's weights are written (the optimizer step, on the compute stream or, offloaded, by
    // copies it waits for) and the previous step's readers of the other ranks' parts are queued
    // before this point: the gathers start after both, as zero_params_gather's dist_comm_after.
    CUDA_CHECK(cudaEventRecord(m->zev_compute, ctx->stream));
    CUDA_CHECK(cudaStreamWaitEvent(m->gather_stream, m->zev_compute, 0));
    for (int k = 0; k <= NL; k++) {
        const int b = k == 0 ? NL : k - 1;  // the forward's order: the global tensors, then layer 0, 1, ...
        lg_spin(m->zdelay_ns[0], m->gather_stream);
        if (m->gather_params) m->gather_params(m->gather_arg, z->bucket_lo[b], z->bucket_hi[b], m->gather_stream);
        else CHECK(z->world == 1, "--zero-gather-overlap over %d ranks needs the hook (LlamaGpu.gather_params)", z->world);
        CUDA_CHECK(cudaEventRecord(m->zg_ready[b], m->gather_stream));
        if (!m->zg_pending[b]) m->zg_pending[b] = 1, m->zg_n_pending++;
    }
}

void lg_zg_use(LlamaGpu *m, GpuCtx *ctx, int b) {
    if (!m->zg || !m->zg_pending[b]) return;
    CUDA_CHECK(cudaStreamWaitEvent(ctx->stream, m->zg_ready[b], 0));
    lg_spin(m->zdelay_ns[1], ctx->stream);
    m->zg_pending[b] = 0;
    m->zg_n_pending--;
}

void lg_zg_stream_wait(LlamaGpu *m, cudaStream_t s) {
    if (!m->zg || !m->zg_n_pending) return;
    for (int b = 0; b <= m->plan->n_layers; b++)
        if (m->zg_pending[b]) CUDA_CHECK(cudaStreamWaitEvent(s, m->zg_ready[b], 0));
}

void llama_gpu_params_wait_all(LlamaGpu *m, GpuCtx *ctx) {
    if (!m->zg || !m->zg_n_pending) return;
    for (int b = 0; b <= m->plan->n_layers; b++) lg_zg_use(m, ctx, b);
}

void llama_gpu_params_sync(LlamaGpu *m) {
    if (!m->zg || !m->zg_n_pending) return;
    // Every bucket's event is on the gather stream, in order: a wait for the stream covers them all.
    if (m->sync) m->sync(m->sync_arg, m->gather_stream, "the parameter all-gather (--zero-gather-overlap)");
    else CUDA_CHECK(cudaStreamSynchronize(m->gather_stream));
    for (int b = 0; b <= m->plan->n_layers; b++) m->zg_pending[b] = 0;
    m->zg_n_pending = 0;
}
