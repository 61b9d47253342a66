// The optimizer side of the GPU model: the AdamW step over this rank's shard, on the GPU or
// offloaded to the host (overlapped per gradient bucket), the gradient norm, and the master
// weights out (checkpoints). The model's memory and its forward/backward are in llama_gpu.cu.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llama_gpu_internal.cuh"
#include "../ops/matmul.cuh"
#include "../optim/adamw.cuh"
#include "../optim/adamw_cpu.h"
#include "../optim/adamw_lowbit.cuh"

// Bucket b's part of this rank's shard, [lo, hi) in the flat vector (empty: lo >= hi).
static void bucket_range(const LlamaGpu *m, int b, size_t *lo, size_t *hi) {
    const ZeroPlan *z = m->plan;
    *lo = z->bucket_lo[b] > z->begin ? z->bucket_lo[b] : z->begin;
    *hi = z->bucket_hi[b] < z->end ? z->bucket_hi[b] : z->end;
}

// The k-th bucket the host steps: the layers from the last (their gradients arrive first),
// then the global tensors.
static int bucket_in_order(const ZeroPlan *z, int k) { return k < z->n_layers ? z->n_layers - 1 - k : z->n_layers; }

// Offload: the streams and events of the overlapped step (timing off: they only order) and its
// slices. Whole pieces are gathered into a slice up to opts.offload_slice elements; a larger
// piece is cut every offload_slice elements, a multiple of ZERO_ALIGN, so every cut falls on
// whole quantization blocks; a slice's range includes the padding before the next piece.
void lg_offload_plan_slices(LlamaGpu *m) {
    const ZeroPlan *z = m->plan;
    const int NB = z->n_layers + 1;
    size_t slice = m->opts.offload_slice ? m->opts.offload_slice : (size_t)1 << 22;
    slice = (slice + ZERO_ALIGN - 1) / ZERO_ALIGN * ZERO_ALIGN;
    CUDA_CHECK(cudaStreamCreateWithFlags(&m->down_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&m->up_stream, cudaStreamNonBlocking));
    m->ev_final = (cudaEvent_t *)ao_calloc((size_t)NB, sizeof(cudaEvent_t));
    m->down_queued = (int *)ao_calloc((size_t)NB, sizeof(int));
    m->slice_first = (int *)ao_calloc((size_t)NB, sizeof(int));
    m->slice_count = (int *)ao_calloc((size_t)NB, sizeof(int));
    for (int b = 0; b < NB; b++) CUDA_CHECK(cudaEventCreateWithFlags(&m->ev_final[b], cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&m->ev_up, cudaEventDisableTiming));
    int cap = 0;
    for (int k = 0; k < NB; k++) {
        const int b = bucket_in_order(z, k);
        size_t lo, hi;
        bucket_range(m, b, &lo, &hi);
        m->slice_first[b] = m->n_slices;
        if (lo >= hi) continue;
        size_t at = lo, acc = 0;
        for (int i = 0; i <= z->n_pieces; i++) {
            const int end = i == z->n_pieces;
            const ZeroPiece *pc = end ? nullptr : &z->pieces[i];
            if (!end && (pc->offset < lo || pc->offset >= hi)) continue;
            for (size_t e = 0; end || e < pc->n;) {
                const size_t part = end ? 0 : (pc->n - e < slice ? pc->n - e : slice);
                if (end || (acc > 0 && acc + part > slice)) {  // close the slice [at, here)
                    const size_t here = end ? hi : pc->offset + e;
                    if (m->n_slices == cap) {
                        cap = cap ? 2 * cap : 16;
                        m->slice_lo = (size_t *)ao_realloc(m->slice_lo, (size_t)cap * sizeof(size_t));
                        m->slice_hi = (size_t *)ao_realloc(m->slice_hi, (size_t)cap * sizeof(size_t));
                    }
                    m->slice_lo[m->n_slices] = at, m->slice_hi[m->n_slices] = here;
                    m->n_slices++;
                    m->slice_count[b]++;
                    at = here, acc = 0;
                    if (end) break;
                }
                acc += part, e += part;
            }
        }
    }
    m->ev_down = (cudaEvent_t *)ao_calloc((size_t)(m->n_slices ? m->n_slices : 1), sizeof(cudaEvent_t));
    for (int k = 0; k < m->n_slices; k++) CUDA_CHECK(cudaEventCreateWithFlags(&m->ev_down[k], cudaEventDisableTiming));
}

// ---- the offloaded step, overlapped ---------------------------------------------------------
// The gradients come down and the weights go up per bucket of the ZeRO plan (dist/zero.cuh:
// layer l's tensors, and the global ones as bucket n_layers), cut into slices:
//   backward of the step's last micro-batch   after each layer (after its reduction with ZeRO), the
//                                             bucket's part of this rank's shard -> h_grads (D2H on
//                                             down_stream, slice by slice)
//   llama_gpu_adamw                           the host takes the slices in the order they arrive
//                                             (layers from the last, then the global tensors), waits
//                                             for each one's copy, steps its tensors (adamw_cpu_run,
//                                             every core) and queues its bf16 weights' copy up (H2D on
//                                             up_stream, so uploads overlap the downloads still going)
//                                             while it steps the next; the compute stream waits for
//                                             the last upload, so the next forward sees every weight.
// The step needs the gradient-norm clip scale, so with clipping the host starts after the norm
// (the copies down still overlap the backward, the copies up the host step); train_llama calls
// llama_gpu_adamw before the norm when clipping is off, and the host step then overlaps the
// backward too (a layer's weights are not read by the backward of the layers below it, so its
// upload may land while they run). Each element is stepped by the same function with the same
// arguments as without overlap, so the bits are the same.

int lg_streaming(const LlamaGpu *m) { return m->opts.offload && !m->opts.offload_sync && m->stream_grads; }

// Queues bucket b's copies down, slice by slice, once what `final_on` holds so far is done
// (the bucket's gradients are final).
void lg_offload_queue_down(LlamaGpu *m, cudaStream_t final_on, int layer) {
    const int b = layer < 0 ? m->plan->n_layers : layer;
    m->down_queued[b] = 1;
    if (!m->slice_count[b]) return;
    CUDA_CHECK(cudaEventRecord(m->ev_final[b], final_on));
    CUDA_CHECK(cudaStreamWaitEvent(m->down_stream, m->ev_final[b], 0));
    for (int k = m->slice_first[b]; k < m->slice_first[b] + m->slice_count[b]; k++) {
        const size_t lo = m->slice_lo[k], hi = m->slice_hi[k];
        CUDA_CHECK(cudaMemcpyAsync(m->h_grads + (lo - m->plan->begin), m->grads + lo, (hi - lo) * sizeof(float),
                                   cudaMemcpyDeviceToHost, m->down_stream));
        CUDA_CHECK(cudaEventRecord(m->ev_down[k], m->down_stream));
    }
}

void llama_gpu_grad_norm_queue(LlamaGpu *m, GpuCtx *ctx) {
    llama_gpu_optim_wait(m, ctx);  // (nothing pending after a backward)
    grad_norm_squared(m->gn_scratch, m->gn_scratch + 1, m->grads, m->tab.total, ctx->stream);
}

float llama_gpu_grad_norm_result(LlamaGpu *m, GpuCtx *ctx) {
    float h;
    CUDA_CHECK(cudaMemcpyAsync(&h, m->gn_scratch, sizeof(float), cudaMemcpyDeviceToHost, ctx->stream));
    lg_sync(m, ctx, "the gradient norm (compute stream)");
    return sqrtf(h);
}

float llama_gpu_grad_norm(LlamaGpu *m, GpuCtx *ctx) {
    llama_gpu_grad_norm_queue(m, ctx);
    return llama_gpu_grad_norm_result(m, ctx);
}

LowbitState llama_gpu_piece_state(const LlamaGpu *m, int i) {
    const ZeroPlan *z = m->plan;
    CHECK(i >= 0 && i < z->n_pieces, "piece %d of %d", i, z->n_pieces);
    if (m->opts.optim != LOWBIT_F32) return m->states[i];
    const size_t so = z->pieces[i].offset - z->begin;
    LowbitState st;
    memset(&st, 0, sizeof st);
    st.fmt = LOWBIT_F32;
    st.n = z->pieces[i].n;
    st.m = m->adam_m + so;
    st.v = m->adam_v + so;
    return st;
}

// The host step of elements [e0, e0 + n) of piece i (offload): the same call, and so the same
// bits, as the GPU's (e0, n: whole quantization blocks, see offload_plan_slices).
static AdamwCpuJob piece_job(const LlamaGpu *m, int i, size_t e0, size_t n, float lr, float b1, float b2, float eps,
                             float wd, int step, float grad_scale) {
    const ZeroPlan *z = m->plan;
    const ZeroPiece *pc = &z->pieces[i];
    const size_t o = pc->offset + e0, so = o - z->begin;
    const float wd_i = m->tab.p[pc->tensor].kind == PARAM_MATRIX ? wd : 0.0f;
    AdamwCpuJob j;
    memset(&j, 0, sizeof j);
    j.kind = m->opts.optim == LOWBIT_F32 ? ADAMW_CPU_TORCH : ADAMW_CPU_LOWBIT;
    j.master = m->master ? m->master + so : NULL;
    j.param = m->h_params + so;
    j.grad = m->h_grads + so;
    const LowbitState whole = llama_gpu_piece_state(m, i);
    j.st = lowbit_state_range(&whole, e0, n);
    j.s = LowbitStep{lr, b1, b2, eps, wd_i, step, grad_scale, m->opts.master, m->opts.seed, o};
    return j;
}

static void offload_adamw(LlamaGpu *m, GpuCtx *ctx, float lr, float b1, float b2, float eps, float wd, int step,
                          float grad_scale) {
    const ZeroPlan *z = m->plan;
    const size_t S = m->shard_n, b0 = z->begin;
    const int NB = z->n_layers + 1;
    AdamwCpuJob *jobs = (AdamwCpuJob *)ao_malloc((size_t)(z->n_pieces ? z->n_pieces : 1) * sizeof *jobs);
    if (m->opts.offload_sync) {  // one copy down, the whole step, one copy up, each after the other
        CUDA_CHECK(cudaMemcpyAsync(m->h_grads, m->grads + b0, S * sizeof(float), cudaMemcpyDeviceToHost, ctx->stream));
        lg_sync(m, ctx, "the gradients for the host optimizer step (compute stream)");
        for (int i = 0; i < z->n_pieces; i++)
            jobs[i] = piece_job(m, i, 0, z->pieces[i].n, lr, b1, b2, eps, wd, step, grad_scale);
        adamw_cpu_run(jobs, z->n_pieces);
        CUDA_CHECK(cudaMemcpyAsync(m->pshard, m->h_params, S * sizeof(uint16_t), cudaMemcpyHostToDevice, ctx->stream));
        free(jobs);
        return;
    }
    // Buckets the backward did not stream (no stream_grads: e.g. gradients set by a test) go
    // down now, in the same order.
    for (int k = 0; k < NB; k++) {
        const int b = bucket_in_order(z, k);
        if (!m->down_queued[b]) lg_offload_queue_down(m, ctx->stream, b);
    }
    // Slices are in the order the host steps them; pieces in table order.
    for (int k = 0; k < m->n_slices; k++) {
        const size_t lo = m->slice_lo[k], hi = m->slice_hi[k];
        // Local copies only: with ZeRO every reduction was waited for before the norm.
        CUDA_CHECK(cudaEventSynchronize(m->ev_down[k]));
        int nj = 0;
        for (int i = 0; i < z->n_pieces; i++) {
            const ZeroPiece *pc = &z->pieces[i];
            const size_t x0 = pc->offset > lo ? pc->offset : lo, x1 = pc->offset + pc->n < hi ? pc->offset + pc->n : hi;
            if (x0 < x1) jobs[nj++] = piece_job(m, i, x0 - pc->offset, x1 - x0, lr, b1, b2, eps, wd, step, grad_scale);
        }
        adamw_cpu_run(jobs, nj);
        CUDA_CHECK(cudaMemcpyAsync(m->pshard + (lo - b0), m->h_params + (lo - b0), (hi - lo) * sizeof(uint16_t),
                                   cudaMemcpyHostToDevice, m->up_stream));
    }
    CUDA_CHECK(cudaEventRecord(m->ev_up, m->up_stream));
    CUDA_CHECK(cudaStreamWaitEvent(ctx->stream, m->ev_up, 0));
    memset(m->down_queued, 0, (size_t)NB * sizeof(int));
    free(jobs);
}

// The on-GPU step of piece i, queued on `stream`: the one call the serial and the overlapped
// schedules both make. A piece is a whole tensor without ZeRO; o is its flat offset (grads, and
// the stochastic-rounding index), so = o - b0 its index into the shard's arrays (pshard, master,
// moments).
static void gpu_piece_step(LlamaGpu *m, int i, float lr, float b1, float b2, float eps, float wd, int step,
                           float grad_scale, cudaStream_t stream) {
    const ZeroPlan *z = m->plan;
    const ZeroPiece *pc = &z->pieces[i];
    const ParamInfo *p = &m->tab.p[pc->tensor];
    const LowbitMaster mode = m->opts.master;
    const size_t o = pc->offset, so = o - z->begin, n = pc->n;
    const float wd_i = p->kind == PARAM_MATRIX ? wd : 0.0f;
    LowbitStep ls = {lr, b1, b2, eps, wd_i, step, grad_scale, mode, m->opts.seed, o};
    if (m->opts.optim != LOWBIT_F32)
        adamw_lowbit_update(m->master ? m->master + so : NULL, m->pshard + so, m->states[i], m->grads + o, &ls, stream);
    else if (mode == LOWBIT_MASTER_F32)
        adamw_update(m->master + so, m->pshard + so, m->grads + o, m->adam_m + so, m->adam_v + so, n, lr, b1, b2, eps,
                     wd_i, step, grad_scale, stream);
    else
        adamw_update_bf16_sr(m->pshard + so, m->grads + o, m->adam_m + so, m->adam_v + so, n, lr, b1, b2, eps, wd_i, step,
                             grad_scale, m->opts.seed, o, stream);
}

static void overlap_adamw(LlamaGpu *m, GpuCtx *ctx, float lr, float b1, float b2, float eps, float wd, int step,
                          float grad_scale);

void llama_gpu_adamw(LlamaGpu *m, GpuCtx *ctx, float lr, float b1, float b2, float eps, float wd, int step,
                     float grad_scale) {
    llama_gpu_params_changed(m);  // ZeRO-3: the next forward gathers the new weights
    // --zero-gather-overlap: the last all-gather reads this rank's shard (its broadcasts' source) and
    // writes the rest; the step writes the shard only after it (normally the forward has waited for
    // every bucket already). Offloaded, the weights come up on up_stream, which waits too.
    if (m->opts.offload && m->up_stream) lg_zg_stream_wait(m, m->up_stream);
    llama_gpu_params_wait_all(m, ctx);
    if (m->opts.offload) {  // the shard's gradients to the host; the step runs there; its bf16 weights come back
        offload_adamw(m, ctx, lr, b1, b2, eps, wd, step, grad_scale);
        return;
    }
    if (m->overlap) {  // stage by stage on the optimizer stream, beside the next forward
        overlap_adamw(m, ctx, lr, b1, b2, eps, wd, step, grad_scale);
        return;
    }
    for (int i = 0; i < m->plan->n_pieces; i++) gpu_piece_step(m, i, lr, b1, b2, eps, wd, step, grad_scale, ctx->stream);
}

void llama_gpu_download(const LlamaGpu *m, LlamaModel *cpu) {
    CHECK(m->plan->begin == 0 && m->shard_n == m->tab.total,
          "llama_gpu_download: this process holds only a shard of the master weights (gather them first)");
    CUDA_CHECK(cudaDeviceSynchronize());
    const size_t P = m->tab.total;
    if (m->master) {
        CUDA_CHECK(cudaMemcpy(cpu->params, m->master, P * sizeof(float), cudaMemcpyDefault));
        return;
    }
    // bf16 masters: the GPU's weights (the offloaded step's copy is on the GPU after every step)
    uint16_t *h = (uint16_t *)ao_malloc((P ? P : 1) * sizeof(uint16_t));
    CUDA_CHECK(cudaMemcpy(h, m->pshard, P * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < P; i++) cpu->params[i] = lowbit_bf16_to_f32(h[i]);
    free(h);
}

void llama_gpu_master_to_device(const LlamaGpu *m, GpuCtx *ctx, float *dst) {
    if (!m->shard_n) return;
    if (m->optim_pending) CUDA_CHECK(cudaStreamWaitEvent(ctx->stream, m->ev_stage[m->cfg.n_layers + 1], 0));
    if (m->master)
        CUDA_CHECK(cudaMemcpyAsync(dst + m->plan->begin, m->master, m->shard_n * sizeof(float), cudaMemcpyDefault,
                                   ctx->stream));
    else
        cast_bf16_to_f32(dst + m->plan->begin, m->pshard, m->shard_n, ctx->stream);
}

// ---- the on-GPU step, overlapped with the next forward (--optim-overlap) --------------------
// AdamW is memory-bound (fp32 states: 30 bytes per parameter, ~12 ms a step at the 1B shape) and
// the forward's GEMMs are compute-bound, so the step runs beside the next forward, not before it:
//   llama_gpu_adamw    optim_stream waits for ev_grads (the compute stream's work so far: the
//                      backward, and the norm's reduction, which reads the gradients); then per
//                      stage, in the order the forward reads the weights (the embedding; layer 0,
//                      1, ...; the final norm and an untied LM head): its pieces' update kernels
//                      (gpu_piece_step, the serial step's calls on another stream), a memset of its
//                      gradients (the next step's zeroing, which must follow the update that reads
//                      them), and ev_stage[s]
//   llama_gpu_forward  waits for stage 0 before the embedding, stage 1 before layer 0's first norm,
//                      stage l + 2 before the norm that ends layer l (it reads layer l + 1's ln1, or
//                      the final norm); the last wait ends the pending step (the stream is in order:
//                      ev_stage[s] follows every stage before it)
// The pieces are disjoint and every kernel deterministic, so the order and the concurrency change
// no bit. The backward comes after a forward, which has waited for every stage; anything else
// that touches the weights, masters, states or gradients waits for the whole step first.

static int stage_of(const LlamaGpu *m, int tensor) {
    const ParamInfo *p = &m->tab.p[tensor];
    if (p->layer >= 0) return 1 + p->layer;
    return strcmp(p->field, "wte") == 0 ? 0 : m->cfg.n_layers + 1;
}

void lg_optim_init(LlamaGpu *m) {
    m->overlap = m->opts.optim_overlap && !m->opts.offload && !m->opts.zero;
    if (!m->overlap) return;
    const int NS = m->cfg.n_layers + 2;
    CUDA_CHECK(cudaStreamCreateWithFlags(&m->optim_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&m->ev_grads, cudaEventDisableTiming));
    m->ev_stage = (cudaEvent_t *)ao_calloc((size_t)NS, sizeof(cudaEvent_t));
    for (int k = 0; k < NS; k++) CUDA_CHECK(cudaEventCreateWithFlags(&m->ev_stage[k], cudaEventDisableTiming));
}

void lg_optim_free(LlamaGpu *m) {
    if (!m->optim_stream) return;
    cudaStreamSynchronize(m->optim_stream);
    for (int k = 0; m->ev_stage && k < m->cfg.n_layers + 2; k++) cudaEventDestroy(m->ev_stage[k]);
    free(m->ev_stage);
    cudaEventDestroy(m->ev_grads);
    cudaStreamDestroy(m->optim_stream);
}

void lg_optim_use(LlamaGpu *m, GpuCtx *ctx, int stage) {
    if (!m->optim_pending) return;
    CUDA_CHECK(cudaStreamWaitEvent(ctx->stream, m->ev_stage[stage], 0));
    if (stage == m->cfg.n_layers + 1) m->optim_pending = 0;
}

void llama_gpu_optim_wait(LlamaGpu *m, GpuCtx *ctx) { lg_optim_use(m, ctx, m->cfg.n_layers + 1); }

void llama_gpu_optim_sync(LlamaGpu *m) {
    // Not keyed on optim_pending: llama_gpu_optim_wait (or the forward's last wait) clears it once the
    // compute stream waits, which the host does not; a host reader after it (ckpt_save,
    // ckpt_load_optimizer's cudaMemcpy on the legacy stream, which does not order against
    // non-blocking streams) must still find the step done. An idle stream returns at once.
    if (!m->optim_stream) return;
    CUDA_CHECK(cudaStreamSynchronize(m->optim_stream));
    m->optim_pending = 0;
}

static void overlap_adamw(LlamaGpu *m, GpuCtx *ctx, float lr, float b1, float b2, float eps, float wd, int step,
                          float grad_scale) {
    const ZeroPlan *z = m->plan;
    const int NS = m->cfg.n_layers + 2;
    cudaStream_t os = m->optim_stream;
    CUDA_CHECK(cudaEventRecord(m->ev_grads, ctx->stream));
    CUDA_CHECK(cudaStreamWaitEvent(os, m->ev_grads, 0));
    for (int st = 0; st < NS; st++) {
        if (m->optim_stage_hook) m->optim_stage_hook(m->optim_stage_hook_arg, st, os);
        for (int i = 0; i < z->n_pieces; i++)
            if (stage_of(m, z->pieces[i].tensor) == st) gpu_piece_step(m, i, lr, b1, b2, eps, wd, step, grad_scale, os);
        // The stage's gradients, with the padding after each tensor (piece i's range runs to the next
        // piece; the first from 0, the last to the end): the stages tile the whole buffer, as the
        // serial schedule's one memset does. Adjacent ranges go in one memset.
        size_t lo = 0, hi = 0;  // the range gathered so far (empty: hi == lo)
        for (int i = 0; i < z->n_pieces; i++) {
            if (stage_of(m, z->pieces[i].tensor) != st) continue;
            const size_t a = i == 0 ? 0 : z->pieces[i].offset,
                         b = i + 1 < z->n_pieces ? z->pieces[i + 1].offset : m->tab.total;
            if (hi > lo && a == hi) {
                hi = b;
                continue;
            }
            if (hi > lo) CUDA_CHECK(cudaMemsetAsync(m->grads + lo, 0, (hi - lo) * sizeof(float), os));
            lo = a, hi = b;
        }
        if (hi > lo) CUDA_CHECK(cudaMemsetAsync(m->grads + lo, 0, (hi - lo) * sizeof(float), os));
        CUDA_CHECK(cudaEventRecord(m->ev_stage[st], os));
    }
    m->optim_pending = 1;
    m->grads_zero_queued = 1;
}
