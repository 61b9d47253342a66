// The Llama model on one GPU in bf16: parameters, fp32 master weights (unless the bf16
// parameters are the masters, --master bf16-sr), fp32 gradients and AdamW moments in one
// allocation carved by the parameter table; activations in a second one. Forward and
// backward are assembled from the ops/*.cu kernels; every linear goes through the one
// Linear dispatch (ops/linear.cuh: bf16, or the fp8 GEMMs of --recipe), attention through
// ops/attention. With ZeRO (GpuRunOpts.zero, dist/zero.cuh) the master weights and moments
// are those of this rank's shard only; the gradients are always whole, and so are the bf16
// parameters except with ZeRO-3.
//
// ZeRO-3 (plan level 3): the bf16 parameters are this rank's shard only (pshard). Before a
// layer's forward, its weights are gathered (the gather hook: an all-gather over the ranks, or a
// copy with one) into one of two layer buffers, layer l into slot l % 2, on the gather stream,
// while the layer before computes (layer l + 1 is fetched when layer l starts); the compute
// stream waits for a layer's gather by event before its first kernel. The global tensors
// (embeddings, final norm, LM head) have a third buffer, gathered before the embedding and held
// through the LM head and the backward's final norm. Backward gathers again, from the last layer
// down (the last layers are still held from the forward and are not gathered twice), prefetching
// layer l - 1 while layer l runs. A buffer is gathered again only after the shard changes (the
// optimizer step) or another layer took its slot. A tensor keeps its flat-buffer address modulo
// 256 bytes in its slot (dist/zero.cuh), so every kernel and cuBLASLt algorithm is ZeRO-2's and
// the losses are ZeRO-2's bit for bit. With opts.fp8_allgather the layers' fp8 Linear weights are
// gathered as fp8 codes cast from the shards instead (LlamaGpu.qshard has the scheme).
//
// ZeRO-1/2 with opts.zero_gather_overlap (--zero-gather-overlap): every rank keeps the whole bf16
// vector, and after the optimizer step (which writes only the rank's shard of it) the other ranks'
// parts come back by all-gather. llama_gpu_params_gather queues one all-gather per gradient bucket
// (the gather_params hook) on the gather stream, in the order the forward reads them: the global
// tensors (the embedding is the first kernel), then layers 0, 1, ...; an event after each. The
// forward makes the compute stream wait for a bucket's event just before its first kernel reading
// it (the global tensors before the embedding, layer 0 before its first norm, layer l + 1 before
// the norm that ends layer l, which reads its ln1), once: the wait clears the bucket's pending flag,
// and the compute stream is in order, so the step's later micro-batches and backward need none.
// Everything else that reads or writes the bf16 weights (the backward, the optimizer step, sampling's
// logits, checkpoints) waits for all pending buckets first (llama_gpu_params_wait_all / _sync). The
// bytes moved are zero_params_gather's, so the bits are the same.
#pragma once

#include <stdio.h>

#include "../common/gpu.h"
#include "../dist/dist.cuh"
#include "../dist/zero.cuh"
#include "../ops/attention.cuh"
#include "../ops/linear.cuh"
#include "../optim/lowbit.h"
#include "model.h"

LLAMA_DEFINE_WEIGHTS(bf16, LlamaWeightsBf16)

typedef struct {
    int recompute_norm;    // re-run RMSNorm in backward instead of keeping ln1/ln2 per layer
    int recompute_swiglu;  // re-run SwiGLU in backward instead of keeping its output per layer
    int recompute_ffn;     // re-run the gate/up projection and SwiGLU in backward
    int recompute_attn;    // re-run the q/k/v projection, RoPE and attention forward in backward
    AttnImpl attn;      // forward attention
    AttnImpl attn_bwd;  // backward attention: ATTN_KERNEL is deterministic, cuDNN's is not
    int lm_chunk;          // rows of logits materialised at once (bf16 [lm_chunk, V])
    LowbitFormat optim;    // AdamW state format: LOWBIT_F32 (fp32 m, v), _8BIT, _4BIT, _FP8 (torchao's)
    LowbitMaster master;   // LOWBIT_MASTER_F32 (0): fp32 master weights + the bf16 working copy;
                           // LOWBIT_MASTER_BF16_SR: the bf16 parameters are the masters, each update
                           // stochastically rounded (--master bf16-sr); no fp32 copy anywhere
    uint64_t seed;         // stochastic-rounding seed (bits = lowbit_sr_bits(seed, step, flat index))
    int offload;           // master weights + optimizer states in pinned host memory, AdamW on the CPU
    int offload_sync;      // offload without overlap: all gradients down after backward, the whole
                           // step, all weights up (the first version; for comparisons)
    size_t offload_slice;  // overlapped offload: elements per slice (copy down, host step, copy up);
                           // rounded up to whole ZERO_ALIGN units; 0: 1 << 22
    const ZeroPlan *zero;  // ZeRO shard this process steps (dist/zero.cuh); NULL: all of it (one GPU).
                           // Must outlive the model.
    LinearRecipe recipe;   // --recipe: how the layers' Linears run (ops/linear.h); LINEAR_BF16 (0) is the
                           // bf16 trainer, bit for bit. lm_head stays bf16 in every recipe.
    int optim_overlap;     // --optim-overlap: the on-GPU AdamW step on its own stream, stage by stage in
                           // forward order, overlapped with the next forward (the same bits). Only on one
                           // GPU without offload: with zero or offload the step stays serial (LlamaGpu.overlap)
    int cache_weight_casts;  // fp8 / MX recipes: keep every fp8 Linear's W and W^T codes from one cast to the
                             // next while the weights do not change (ops/linear.cuh LinearGroup.wc), so the
                             // micro-batches of an optimizer step cast each weight once: train_llama sets it
                             // when a step accumulates several micro-batches. 2 bytes per fp8 weight (+ scales);
                             // the same bits as without it. Whatever writes the bf16 weights calls
                             // llama_gpu_params_changed (the optimizer step does).
    int fp8_allgather;     // --fp8-allgather (ZeRO-3 with fp8-tensorwise only; torchao's float8 all-gather for
                           // FSDP2): each rank casts its shard's fp8 Linear weights once per weights version,
                           // with the tensor-wide scale from the amax all-reduced (max) over the ranks, and the
                           // layer gathers move those 1-byte codes instead of the bf16 weights; the fp8 GEMMs
                           // take the gathered codes. The same bits as without it (a tensorwise cast is
                           // elementwise with one scale). Replaces cache_weight_casts for those Linears.
    int zero_gather_overlap;  // --zero-gather-overlap (ZeRO-1/2): the parameter all-gather per bucket, overlapped
                              // with the next forward (the top comment; llama_gpu_params_gather). Ignored otherwise.
} GpuRunOpts;

// Per-layer activations kept for backward (bf16 unless marked), N = B*T rows.
typedef struct {
    bf16 *resid;     // [N, D] residual stream entering the layer
    bf16 *ln1;       // [N, D] (shared scratch when recompute_norm)
    float *ln1_rstd; // [N]
    bf16 *qkv;       // [N, QD + 2 KVD] after RoPE
    bf16 *attn;      // [N, QD] attention output (before o_proj)
    float *lse;      // [B*H*T]
    bf16 *resid_mid; // [N, D] residual after attention
    bf16 *ln2;       // [N, D] (shared scratch when recompute_norm)
    float *ln2_rstd; // [N]
    bf16 *gu;        // [N, 2F] gate | up
    bf16 *act;       // [N, F] (shared scratch when recompute_swiglu)
} GpuLayerActs;

// Not copyable by value: plan may point at own_plan inside it.
typedef struct {
    LlamaConfig cfg;
    ParamTable tab;
    GpuRunOpts opts;
    int B, T;
    // parameter memory (one cudaMalloc)
    void *param_mem;
    size_t param_bytes;
    bf16 *params;   // working copy used by the matmuls (all parameters, on every rank); NULL with ZeRO-3
    bf16 *pshard;   // the bf16 weights of the shard [plan->begin, plan->end), indexed by (flat - begin):
                    // what the optimizer writes; params + plan->begin unless ZeRO-3
    float *grads;   // fp32 gradients, accumulated over micro-batches (all parameters)
    // Optimizer side: only the shard [plan->begin, plan->end) of the flat parameter vector,
    // indexed by (flat offset - plan->begin); the whole vector without ZeRO.
    const ZeroPlan *plan;      // opts.zero, or own_plan
    ZeroPlan own_plan;         // the whole model, one piece per tensor (no ZeRO)
    size_t shard_n;            // plan->end - plan->begin
    float *master;  // fp32 master weights of the shard (pinned host memory with opts.offload);
                    // NULL with the bf16 masters (opts.master), where params are the masters
    float *adam_m, *adam_v;    // fp32 moments (opts.optim == LOWBIT_F32)
    void *state_mem;           // low-bit moments, one region per piece (other formats)
    size_t state_bytes;
    LowbitState *states;       // [plan->n_pieces] pointers into state_mem (host memory with offload)
    float *h_grads;            // offload: pinned host copy of the shard's gradients
    uint16_t *h_params;        // offload: bf16 weights of the shard written by the host step (the
                               // masters with opts.master bf16-sr; always equal to params' shard
                               // between steps)
    // Offload overlap. Per gradient bucket b of the plan (layer b, or the global tensors for
    // b = n_layers; plan->bucket_lo/hi) the gradients are final at ev_final[b]; the bucket's part
    // of the shard is cut into slices (slice_first[b] .. + slice_count[b], in the order the host
    // steps them) of about opts.offload_slice elements, cut at piece starts or whole ZERO_ALIGN
    // units inside a piece. Slice k is in h_grads at ev_down[k] (down_stream); its weights go
    // back on up_stream; ev_up: the step's last weights are back.
    cudaStream_t down_stream, up_stream;
    cudaEvent_t *ev_final, *ev_down, ev_up;
    size_t *slice_lo, *slice_hi;   // [n_slices] flat ranges
    int n_slices, *slice_first, *slice_count;
    int *down_queued;          // [n_layers + 1]: the bucket's copies are queued for this step
    // Set by the caller (offload) for the backward of a step's last micro-batch, when the
    // gradients become final: each bucket's shard part is then copied to the host as soon as its
    // backward is queued (and, with ZeRO, its reduction: grads_stream). Without it the step copies
    // them itself.
    int stream_grads;
    cudaStream_t grads_stream;  // where a bucket's gradients are final once grads_ready returns (ZeRO:
                                // the communication stream); NULL: the compute stream
    // Hooks (NULL: one GPU). sync replaces cudaStreamSynchronize on the compute stream, so a
    // multi-GPU run can poll for failed peers while it waits (dist_sync_hook); grads_ready is
    // called from llama_gpu_backward once layer l's gradients are queued (l = n_layers-1 .. 0)
    // and with l = -1 once the global tensors' are, so their reduction can overlap the rest.
    void (*sync)(void *arg, cudaStream_t s, const char *what);
    void *sync_arg;
    void (*grads_ready)(void *arg, int layer);
    void *grads_ready_arg;
    // ZeRO-3 (see the top). gather: the hook that fills dst[0, hi - lo) with the flat weights
    // [lo, hi) from every rank's shard, queued on s (train_llama: zero_params_fetch); NULL: a copy
    // from pshard, for a plan of one rank. gather_stream: where gathers run (set it to the
    // communication stream with several ranks, so gathers and gradient reductions keep one order);
    // the model's own stream until then.
    int zero3;
    bf16 *zbuf[3];               // layer slots 0 and 1, the global tensors
    int zheld[3];                // bucket each buffer holds (-1: none, or the shard changed since)
    cudaEvent_t zready[3], zev_compute;
    cudaStream_t gather_stream, zown_stream;
    void (*gather)(void *arg, bf16 *dst, size_t lo, size_t hi, cudaStream_t s);
    void *gather_arg;
    // --fp8-allgather (opts.fp8_allgather; the global tensors stay bf16 and use `gather`). The first
    // layer fetch after the weights change (ag_version != wversion) casts, on the gather stream: the
    // amax of each fp8 tensor's piece of the shard (0 without one), reduce_max over the ranks, the
    // scales, the pieces' codes into qshard. A layer's fetch then gathers through gather_runs (NULL: a
    // plan of one rank, copies): the fp8 tensors' codes into the layer's code slot zq[l % 2] at
    // ag_pos (256-byte aligned, like the cast scratch, so the fp8 GEMMs pick the algorithms they pick
    // without it), the other tensors (norms, biases) into zbuf as before; the bf16 copy of an fp8
    // tensor is not gathered. lin_wcache points the fp8 parts at the slots (LinearWCache.from_codes).
    uint8_t *qshard;          // [shard_n] codes of the shard's fp8 tensors (other bytes unused)
    uint8_t *zq[2];           // layer code slots, ag_slot bytes each
    size_t ag_slot;
    float *ag_amax, *ag_scale;  // [n_ag * AG_STRIDE]: per fp8 tensor, 256 bytes apart: the global amax, the dequantization scale
    float *ag_ws;             // fp8_amax_tensor's workspace (gather stream only)
    void *ag_mem;             // the allocation of all of the above
    int *ag_of;               // [tab.n] host: index among the fp8 tensors, -1 for those gathered in bf16
    size_t *ag_pos;           // [tab.n] host: place in a layer code slot
    int n_ag;
    unsigned long long ag_version;
    void (*gather_runs)(void *arg, const DistGatherRun *runs, int n, cudaStream_t s);  // arg: gather_arg
    void (*reduce_max)(void *arg, float *v, int n, cudaStream_t s);  // NULL: one rank
    // Tests only (0: off): a spin of this many ns on the gather stream before each gather [0], or
    // on the compute stream after each wait for a gather [1]. Results must not change; a missing
    // event (compute reading a slot before its gather landed, or a gather overwriting a slot the
    // compute stream has yet to read) then shows as a different loss instead of a rare race.
    long long zdelay_ns[2];
    // ZeRO-1/2 --zero-gather-overlap (see the top; llama_gpu_gather.cu). gather_params: the hook that
    // all-gathers the flat bf16 parameters [lo, hi) in place from every rank's shard, queued on s
    // (train_llama: zero_params_gather_range; arg: gather_arg); NULL: a plan of one rank (nothing to
    // move: only the events). The gathers run on gather_stream (the communication stream with several
    // ranks; an own stream until set). zdelay_ns applies as for ZeRO-3: [0] before each bucket's
    // gather, [1] on the compute stream after each wait for one.
    int zg;                      // the schedule in effect: opts.zero_gather_overlap with a level 1 or 2 plan
    cudaEvent_t *zg_ready;       // [n_layers + 1]: bucket b's all-gather is done (recorded on gather_stream)
    int *zg_pending;             // [n_layers + 1]: queued and not yet waited for by the compute stream
    int zg_n_pending;
    void (*gather_params)(void *arg, size_t lo, size_t hi, cudaStream_t s);
    // --optim-overlap (llama_gpu_step.cu). The on-GPU step runs on optim_stream in stages, in the
    // order the forward needs the weights: stage 0 the embedding, 1 + l layer l, n_layers + 1 the
    // final norm and an untied LM head. After ev_grads (the compute stream's work so far: backward
    // and norm), each stage's tensors are stepped, then their gradients zeroed (for the next step,
    // whose llama_gpu_zero_grads then has nothing to do: grads_zero_queued), then ev_stage[s] is
    // recorded. While optim_pending, the forward makes the compute stream wait for stage s before
    // its first kernel reading stage s's weights; anything else that touches what the step writes
    // waits for all of it first (llama_gpu_optim_wait / llama_gpu_optim_sync).
    int overlap;                 // the schedule in effect: opts.optim_overlap without zero and offload
    cudaStream_t optim_stream;
    cudaEvent_t ev_grads, *ev_stage;  // [n_layers + 2]
    int optim_pending, grads_zero_queued;
    // Tests only (NULL otherwise): called before each stage's kernels are queued on optim_stream,
    // e.g. to queue a delay there that a missing wait would turn into different bits.
    void (*optim_stage_hook)(void *arg, int stage, cudaStream_t s);
    void *optim_stage_hook_arg;
    LlamaWeightsBf16 w;
    LlamaWeightsBf16Layer *wl;
    LlamaWeights g;  // gradient pointers (fp32)
    LlamaWeightsLayer *gl;
    int fused_qkv, fused_qkv_bias, fused_gu;
    // activation memory (one cudaMalloc)
    void *act_mem;
    size_t act_bytes;
    GpuLayerActs *layers;
    bf16 *resid_final, *lnf;
    float *lnf_rstd;
    bf16 *scratch_d;   // [N, D] o_proj / down_proj outputs
    LinearCtx lin;     // the recipe and the fp8 casts' scratch (carved here; none with bf16)
    void *lin_mem;
    size_t lin_bytes;
    float *lin_saved;  // per layer and Linear group, LINEAR_SAVED_FLOATS (LinearGroup.saved); NULL with bf16
    // Weight cast cache (opts.cache_weight_casts): per layer, Linear group and part (LinearGroup.wc;
    // parts that stay bf16 unused), its codes in the activation allocation (wcache_bytes); NULL without.
    // wversion names the current bf16 weights: llama_gpu_params_changed bumps it (the optimizer step
    // calls it), so a cast made before is never taken for new weights.
    LinearWCache *lin_wcache;
    size_t wcache_off, wcache_bytes;  // its codes and scales: [wcache_off, + wcache_bytes) of act_mem
    unsigned long long wversion;
    bf16 *logits;      // [lm_chunk, V]
    float *losses;     // [N]
    bf16 *d_resid, *d_ln, *d_attn, *d_qkv, *d_gu, *d_act;
    float *norm_scratch;  // rmsnorm dweight partials
    float *gn_scratch;    // grad-norm partials + result
    float *inv_freq;      // [hd/2]
    int32_t *tokens, *targets;                       // [N] device
    int32_t *emb_pos, *emb_start, *emb_token;        // embedding buckets (device)
    int32_t *h_pos, *h_start, *h_token;              // host staging (pinned)
    int n_buckets;
    int n_valid;      // targets >= 0 in the batch set last
    float *h_losses;  // [N] pinned
    float *logits_f32;  // [V] one row of logits for sampling
} LlamaGpu;

// Uploads a CPU model (fp32) to the GPU: master = params, working bf16 copy, zeroed
// gradients and moments. B x T is the micro-batch the activations are sized for.
void llama_gpu_init(LlamaGpu *m, GpuCtx *ctx, const LlamaModel *cpu, int B, int T, const GpuRunOpts *opts);
void llama_gpu_free(LlamaGpu *m);
// Bytes each part holds, for the start-up memory table.
// cast_scratch: the fp8 operands of one Linear at a time (ops/linear.h), part of the activation allocation.
// params: the bf16 weights this rank keeps (the shard with ZeRO-3); gather: ZeRO-3's buffers (two
// layers + the global tensors).
// weight_cache: the fp8 weights' codes kept between micro-batches (opts.cache_weight_casts).
// fp8_gather: --fp8-allgather's codes of the shard, two layer code slots, amax and scales.
typedef struct {
    size_t params, master, grads, moments, activations, logits, cast_scratch, gather, weight_cache, fp8_gather;
} GpuMemPlan;
GpuMemPlan llama_gpu_plan(const LlamaConfig *c, int B, int T, const GpuRunOpts *opts);

// Copies tokens/targets ([B*T], host) to the device; targets < 0 are ignored.
void llama_gpu_set_batch(LlamaGpu *m, GpuCtx *ctx, const int32_t *tokens, const int32_t *targets);
// Forward over the batch set last. With dloss != 0 the LM-head/cross-entropy backward
// runs too (dlogits scaled by dloss) and the gradient of the final norm output is left
// for llama_gpu_backward. Returns the SUM of per-token losses (host), valid count in *n_valid.
double llama_gpu_forward(LlamaGpu *m, GpuCtx *ctx, float dloss, int *n_valid);
// Accumulates gradients into m->grads (call after forward with dloss != 0).
void llama_gpu_backward(LlamaGpu *m, GpuCtx *ctx);
// Zeroes the gradients; nothing to do after an overlapped step, which zeroed them stage by stage
// on the optimizer stream (the next forward waits for that before any backward; a caller that
// writes the gradients itself calls llama_gpu_optim_wait first).
void llama_gpu_zero_grads(LlamaGpu *m, GpuCtx *ctx);
// Global L2 norm of the gradients (synchronises). In two halves: _queue queues the reduction on
// the compute stream, _result waits for it (so that a step which needs no norm, clipping off,
// can be queued in between).
float llama_gpu_grad_norm(LlamaGpu *m, GpuCtx *ctx);
void llama_gpu_grad_norm_queue(LlamaGpu *m, GpuCtx *ctx);
float llama_gpu_grad_norm_result(LlamaGpu *m, GpuCtx *ctx);
// One AdamW step over the shard's pieces (all tensors without ZeRO; weight decay on matrices
// only). With ZeRO the other ranks' parameters are left as they were: all-gather them after.
// Offloaded, the host steps one gradient bucket at a time as its gradients arrive and copies its
// bf16 weights back on the copy stream; it returns when the host step is done, with the compute
// stream waiting for the last copy (so the next forward sees the new weights). The bits are the
// on-GPU step's in every case.
// With m->overlap (--optim-overlap) the step is queued on the optimizer stream stage by stage and
// this returns at once; see LlamaGpu.overlap for the order and the waits.
void llama_gpu_adamw(LlamaGpu *m, GpuCtx *ctx, float lr, float b1, float b2, float eps, float wd, int step,
                     float grad_scale);
// After an overlapped step: the compute stream waits for all of it (queued, no host wait), or the
// host does. Every reader or writer of the weights, masters, states or gradients other than the
// forward (evaluation, sampling, checkpoints, the end of training, a test's own copies) calls
// one first. _wait does nothing without a pending step; _sync always waits for the optimizer
// stream (when there is one), since a pending step that was only waited for on the compute stream
// is not yet done for the host.
void llama_gpu_optim_wait(LlamaGpu *m, GpuCtx *ctx);
void llama_gpu_optim_sync(LlamaGpu *m);
// ZeRO-1/2 --zero-gather-overlap (see the top). _gather: queues the per-bucket all-gathers of the bf16
// parameters after what the compute stream holds now (the optimizer step); every rank must call it at
// the same point (collectives), and before anything reads the weights. _wait_all: the compute stream
// waits for every pending bucket (queued, no host wait). _sync: the host waits for them (through the
// sync hook when set, so failed peers are noticed). Without the schedule (m->zg == 0) _gather fails and
// the others do nothing.
void llama_gpu_params_gather(LlamaGpu *m, GpuCtx *ctx);
void llama_gpu_params_wait_all(LlamaGpu *m, GpuCtx *ctx);
void llama_gpu_params_sync(LlamaGpu *m);
// The optimizer state of piece i of the shard (fp32 moments are viewed as a LOWBIT_F32 state).
LowbitState llama_gpu_piece_state(const LlamaGpu *m, int i);
// The shard's bf16 weights changed outside the optimizer step (ZeRO-3: the gathered buffers are
// stale; fp8 weight codes kept by opts.cache_weight_casts are stale; a test that writes params or
// pshard calls it). llama_gpu_adamw calls it itself.
void llama_gpu_params_changed(LlamaGpu *m);
// Copies master weights back into a CPU model (for saving; without ZeRO). bf16 masters are
// widened to fp32 (exactly).
void llama_gpu_download(const LlamaGpu *m, LlamaModel *cpu);
// Copies the shard's master weights (fp32, or bf16 widened) to dst[plan->begin, plan->end)
// (device memory of the flat size), queued on the compute stream.
void llama_gpu_master_to_device(const LlamaGpu *m, GpuCtx *ctx, float *dst);
// The Linear groups of layer l as the model hands them to ops/linear.cuh (q/k/v, o_proj, gate/up,
// down_proj), or of the LM head for l = n_layers; inputs[i] (may be NULL) gets the activation group i
// reads, valid after a forward without recompute flags. Returns the number of groups (<= 4). With
// ZeRO-3 the weight pointers are gather slots (layer l in slot l % 2): they hold layer l's weights
// only while it is gathered, so read them only without ZeRO-3.
int llama_gpu_linears(const LlamaGpu *m, int l, LinearGroup *out, const bf16 **inputs);
// One line per precision: which Linears run fp8 under the recipe and which stay bf16, and why.
void llama_gpu_print_linears(const LlamaGpu *m, FILE *f);
// Logits at row b, position pos of the last forward, into host out[V] fp32 (sampling).
void llama_gpu_logits_at(LlamaGpu *m, GpuCtx *ctx, int b, int pos, float *out);
