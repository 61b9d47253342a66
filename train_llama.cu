// train_llama: pre-train a Llama-family model from scratch or fine-tune a Hugging Face
// checkpoint on one GPU or many, in bf16 (or with torchao's float8 recipes for the layers' Linears:
// --recipe) with fp32 master weights (or bf16 ones, stochastically rounded: --master bf16-sr) and
// AdamW (fp32 or torchao's low-bit states, on the GPU or offloaded).
//   ./train_llama                          the bundled default: a ~50M model on data/
//   ./train_llama -m HF_DIR --train 'a.bin,b.bin' --lr 2e-5 -n 1000
//   ./train_llama --resume out/            continue bit-exactly from the latest checkpoint
//   mpirun -np 8 ./train_llama --zero 1    data parallel, optimizer states sharded (dist/)
//   mpirun -np 8 ./train_llama --zero 3    ... and the bf16 weights too, gathered layer by layer
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist/dist.cuh"
#include "dist/zero_comm.cuh"
#include "model/checkpoint.cuh"
#include "model/llama_gpu.cuh"
#include "ops/matmul.cuh"
extern "C" {
#include "common/fileio.h"
#include "common/flags.h"
#include "common/json.h"
#include "common/plot.h"
#include "data/corpus.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "optim/schedule.h"
}

// ---- settings ----------------------------------------------------------------------------

static const char *DEFAULT_TRAIN = "data/shards/corpus_train.bin", *DEFAULT_VAL = "data/shards/corpus_val.bin";

struct Settings {
    const char *model = nullptr, *config = nullptr, *resume = nullptr, *out = "out";
    const char *train = DEFAULT_TRAIN, *val = DEFAULT_VAL;
    const char *tokenizer = "data/tokenizer/gpt2", *schedule = "cosine", *attn = "auto", *optim = "adamw";
    const char *master = "fp32", *recipe = "bf16";
    int B = 16, T = 512, total_batch = 0, steps = 1500, warmup = 100, seed = 1337;
    float lr = 1e-3f, min_lr_frac = 0.1f, wd = 0.1f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, clip = 1.0f;
    float decay_frac = 0.2f;
    int eval_every = 250, eval_batches = 20, sample_every = 500, sample_tokens = 48, save_every = 0;
    int save_final = 1;
    int deterministic = 1, offload = 0, offload_overlap = 1, optim_overlap = 0, overlap_priority = 1;
    int recompute_ffn = 0, recompute_attn = 0;
    int recompute_norm = 0, recompute_swiglu = 0, lm_chunk = 4096, shuffle = 1, max_seconds = 0;
    int zero = 0, weight_cache = 1, fp8_allgather = 0, phase_times = 0, zero_gather_overlap = 0;
    float dist_timeout = 600;
};

static Flag *make_flags(Settings *s, int *n) {
    static Flag f[] = {
        {"--model", "-m", FLAG_STR, &s->model, "Hugging Face model directory to fine-tune (omit to train from scratch)", 1, 0},
        {"--config", nullptr, FLAG_STR, &s->config, "config.json for a model trained from scratch (default: built-in ~50M Llama)", 1, 0},
        {"--resume", nullptr, FLAG_STR, &s->resume, "continue from a checkpoint directory or a run directory's latest", 1, 0},
        {"--out", "-o", FLAG_STR, &s->out, "run directory: checkpoints, log.jsonl, loss.svg", 1, 0},
        {"--train", nullptr, FLAG_STR, &s->train, "training token shards, comma-separated ('synthetic': random tokens, for benchmarks)", 1, 0},
        {"--val", nullptr, FLAG_STR, &s->val, "validation token shards, comma-separated ('' to skip)", 1, 0},
        {"--tokenizer", nullptr, FLAG_STR, &s->tokenizer, "tokenizer for samples and checkpoints (dir or file)", 1, 0},
        {"--batch", "-b", FLAG_INT, &s->B, "micro-batch size (sequences)", 1, 4096},
        {"--seq", "-t", FLAG_INT, &s->T, "sequence length", 1, 1 << 20},
        {"--total-batch", nullptr, FLAG_INT, &s->total_batch,
         "tokens per optimizer step over all ranks (multiple of b*t*ranks; 0 = b*t*ranks)", 0, 1 << 30},
        {"--steps", "-n", FLAG_INT, &s->steps, "optimizer steps", 1, 1 << 30},
        {"--lr", nullptr, FLAG_FLOAT, &s->lr, "peak learning rate", 0, 10},
        {"--min-lr-frac", nullptr, FLAG_FLOAT, &s->min_lr_frac, "final learning rate as a fraction of --lr", 0, 1},
        {"--warmup", nullptr, FLAG_INT, &s->warmup, "linear warmup steps", 0, 1 << 30},
        {"--schedule", nullptr, FLAG_STR, &s->schedule, "cosine | linear | constant | wsd", 1, 0},
        {"--decay-frac", nullptr, FLAG_FLOAT, &s->decay_frac, "wsd: fraction of steps spent decaying", 0, 1},
        {"--optim", nullptr, FLAG_STR, &s->optim,
         "adamw (fp32 states) | adamw8bit | adamw4bit | adamwfp8 (torchao's block-quantized states)", 1, 0},
        {"--master", nullptr, FLAG_STR, &s->master,
         "master weights: fp32 (an fp32 copy beside the bf16 weights) | bf16-sr (the bf16 weights are the masters, "
         "updated with stochastic rounding: 4 bytes/parameter less)", 1, 0},
        {"--recipe", nullptr, FLAG_STR, &s->recipe,
         "precision of the layers' Linears: bf16 | fp8-tensorwise | fp8-rowwise | fp8-rowwise-gw-hp | fp8-blockwise "
         "| mxfp8 | mxfp8-gw-hp (torchao's float8 and MX recipes; lm_head and Linears whose dims are not multiples "
         "of 16 (MX: 32) stay bf16; MX GEMMs are emulated below sm_100: no speed-up on Hopper)", 1, 0},
        {"--weight-cache", nullptr, FLAG_BOOL, &s->weight_cache,
         "fp8 / MX recipes with gradient accumulation (--total-batch above b*t*ranks): cast each weight and its "
         "transpose once per optimizer step and reuse the codes in the step's other micro-batches (GPU memory: 2 "
         "bytes per fp8 weight; the same bits; off: cast in every micro-batch)", 1, 0},
        {"--offload", nullptr, FLAG_BOOL, &s->offload,
         "master weights and optimizer states in host memory, AdamW step on the CPU (same bits)", 1, 0},
        {"--offload-overlap", nullptr, FLAG_BOOL, &s->offload_overlap,
         "--offload: stream each layer's gradients down during backward and step it on the CPU as it arrives, "
         "weights up on a copy stream (off: one copy each way around the whole step; same bits)", 1, 0},
        {"--optim-overlap", nullptr, FLAG_BOOL, &s->optim_overlap,
         "the on-GPU AdamW step layer by layer on a second stream, overlapped with the next step's forward (same "
         "bits; one GPU without --offload, else the step stays serial). Off by default: +0.5% tok/s at the 1B shape "
         "on an H200 (docs/BENCHMARKS.md)", 1, 0},
        {"--phase-times", nullptr, FLAG_BOOL, &s->phase_times,
         "time the phases of each step on the compute stream (CUDA events) and print their means at the end: "
         "forward + backward, the wait for ZeRO's gradient reductions, the gradient norm, the optimizer step, the "
         "wait for ZeRO-1/2's parameter all-gather, and the rest (host work, data, launches)", 1, 0},
        {"--optim-overlap-priority", nullptr, FLAG_BOOL, &s->overlap_priority,
         "with --optim-overlap: the compute stream at the highest stream priority, so the forward's kernels get free "
         "SMs before the step's (off: both at the default priority; the bits are the same)", 1, 0},
        {"--wd", nullptr, FLAG_FLOAT, &s->wd, "AdamW weight decay (matrices only)", 0, 10},
        {"--beta1", nullptr, FLAG_FLOAT, &s->beta1, "AdamW beta1", 0, 1},
        {"--beta2", nullptr, FLAG_FLOAT, &s->beta2, "AdamW beta2", 0, 1},
        {"--eps", nullptr, FLAG_FLOAT, &s->eps, "AdamW epsilon", 0, 1},
        {"--clip", nullptr, FLAG_FLOAT, &s->clip, "global gradient-norm clip (0 = off)", 0, 1e6},
        {"--seed", nullptr, FLAG_INT, &s->seed, "seed for initialisation and data order", 0, 2147483647},
        {"--shuffle", nullptr, FLAG_BOOL, &s->shuffle, "shuffle training samples each epoch", 1, 0},
        {"--eval-every", nullptr, FLAG_INT, &s->eval_every, "validation loss every N steps (0 = off)", 0, 1 << 30},
        {"--eval-batches", nullptr, FLAG_INT, &s->eval_batches, "micro-batches per validation", 1, 1 << 20},
        {"--sample-every", nullptr, FLAG_INT, &s->sample_every, "greedy sample every N steps (0 = off)", 0, 1 << 30},
        {"--sample-tokens", nullptr, FLAG_INT, &s->sample_tokens, "tokens per sample", 1, 4096},
        {"--save-every", nullptr, FLAG_INT, &s->save_every, "checkpoint every N steps (0 = only at the end)", 0, 1 << 30},
        {"--save-final", nullptr, FLAG_BOOL, &s->save_final, "save a checkpoint when training ends", 1, 0},
        {"--max-seconds", nullptr, FLAG_INT, &s->max_seconds, "stop (and save) after this much wall time (0 = no limit)", 0, 1 << 30},
        {"--recompute-norm", nullptr, FLAG_BOOL, &s->recompute_norm, "recompute RMSNorm outputs in backward", 1, 0},
        {"--recompute-swiglu", nullptr, FLAG_BOOL, &s->recompute_swiglu, "recompute SwiGLU outputs in backward", 1, 0},
        {"--recompute-ffn", nullptr, FLAG_BOOL, &s->recompute_ffn, "recompute the gate/up projection and SwiGLU in backward", 1, 0},
        {"--recompute-attn", nullptr, FLAG_BOOL, &s->recompute_attn, "recompute q/k/v, RoPE and attention in backward", 1, 0},
        {"--attn", nullptr, FLAG_STR, &s->attn, "attention: auto | cudnn | kernel", 1, 0},
        {"--deterministic", nullptr, FLAG_BOOL, &s->deterministic,
         "bit-reproducible runs: attention backward by our kernel (cuDNN's accumulates dQ with atomics)", 1, 0},
        {"--lm-chunk", nullptr, FLAG_INT, &s->lm_chunk, "rows of logits materialised at once", 1, 1 << 20},
        {"--zero", nullptr, FLAG_INT, &s->zero,
         "data parallel over the ranks of mpirun (or LLAMA_AO_*): 1 = master weights and optimizer states sharded, "
         "gradients all-reduced; 2 = gradients reduce-scattered too; 3 = the bf16 weights sharded too, each layer's "
         "all-gathered around its forward and backward (same losses as 2); 0 = one GPU", 0, 3},
        {"--fp8-allgather", nullptr, FLAG_BOOL, &s->fp8_allgather,
         "--zero 3 with --recipe fp8-tensorwise (torchao's float8 all-gather): each rank casts its shard of the fp8 "
         "Linear weights once per optimizer step (scale from the amax over all ranks) and the layer all-gathers move "
         "those 1-byte codes instead of bf16: half the weight traffic, the same bits", 1, 0},
        {"--zero-gather-overlap", nullptr, FLAG_BOOL, &s->zero_gather_overlap,
         "--zero 1 / 2: all-gather the updated bf16 weights one layer (gradient bucket) at a time on the "
         "communication stream, overlapped with the next step's forward, which waits for each layer's just before "
         "using it (off: the whole vector after the step, waited for by the compute stream; the same bits either "
         "way, bit-identical on 2 and 4 GPUs; ignored with --zero 0 / 3). Off by default: on 4 H200s at the 1B shape "
         "it saved 0.5% of the step, within noise (docs/TRAINING.md)", 1, 0},
        {"--dist-timeout", nullptr, FLAG_FLOAT, &s->dist_timeout,
         "seconds a rank waits for the others (start-up, each communication) before it aborts and exits", 1, 1e6},
    };
    *n = (int)(sizeof f / sizeof f[0]);
    return f;
}

// ---- helpers -----------------------------------------------------------------------------

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// Splits a comma-separated list into a NULL-terminated array (one allocation).
static char **split_list(const char *s, size_t *n) {
    char *copy = ao_strdup(s);
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    char **out = (char **)ao_calloc(cap + 1, sizeof(char *));
    *n = 0;
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) out[(*n)++] = tok;
    if (*n == 0) free(copy);
    return out;
}
static void free_list(char **l, size_t n) {
    if (n) free(l[0]);
    free(l);
}

static void default_config(LlamaConfig *c, int vocab) {
    memset(c, 0, sizeof *c);
    c->arch = ARCH_LLAMA;
    c->vocab_size = (vocab + 63) / 64 * 64;  // padded for the GEMMs; ids >= the tokenizer's are never seen
    c->hidden_size = 512;
    c->intermediate_size = 1536;
    c->n_layers = 8;
    c->n_heads = 8;
    c->n_kv_heads = 4;
    c->head_dim = 64;
    c->max_position_embeddings = 1024;
    c->rms_norm_eps = 1e-5f;
    c->rope.type = ROPE_DEFAULT;
    c->rope.theta = 10000.0f;
    c->tie_word_embeddings = 1;
    c->bos_token_id = -1;
    c->initializer_range = 0.02f;
    snprintf(c->dtype, sizeof c->dtype, "bfloat16");
}

// Model FLOPs per token (forward + backward): 6 per matmul parameter (embedding gather
// excluded, LM head included) plus causal attention, 6 * layers * (H * hd) * T.
static double flops_per_token(const LlamaConfig *c, int T) {
    double P = (double)config_num_params(c);
    if (!c->tie_word_embeddings) P -= (double)c->vocab_size * c->hidden_size;
    return 6.0 * P + 6.0 * c->n_layers * (double)c->n_heads * c->head_dim * T;
}

static void print_memory_table(const LlamaConfig *c, const Settings *s, const GpuRunOpts *o, const GpuCtx *ctx) {
    size_t free_b, total_b;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    GpuMemPlan p = llama_gpu_plan(c, s->B, s->T, o);
    const double G = 1024.0 * 1024 * 1024;
    printf("GPU memory plan (%s, %.1f GiB total, %.1f GiB free):\n", ctx->prop.name, total_b / G, free_b / G);
    const int bf16m = o->master != LOWBIT_MASTER_F32;
    const int zero3 = o->zero && o->zero->level == 3;
    printf("  %-28s %8.2f GiB%s%s\n", zero3 ? "parameters (bf16, shard)" : "parameters (bf16)", p.params / G,
           bf16m ? "  (the master weights: --master bf16-sr)" : "", zero3 ? "  (ZeRO-3: this rank's part only)" : "");
    if (zero3) {
        GpuRunOpts z2 = *o;
        z2.zero = nullptr;  // every parameter: what ZeRO-1/2 keep
        printf("  %-28s %8.2f GiB  (2 layers + embeddings/final norm/LM head, all-gathered; whole bf16 weights "
               "would take %.2f GiB)\n", "ZeRO-3 gather buffers", p.gather / G, llama_gpu_plan(c, s->B, s->T, &z2).params / G);
    }
    if (bf16m) {
        GpuRunOpts f = *o;
        f.master = LOWBIT_MASTER_F32;
        printf("  %-28s %8.2f GiB  (none; fp32 masters would take %.2f GiB%s)\n", "master weights (fp32)", p.master / G,
               llama_gpu_plan(c, s->B, s->T, &f).master / G, o->offload ? " of host memory" : "");
    } else {
        printf("  %-28s %8.2f GiB\n", "master weights (fp32)", p.master / G);
    }
    printf("  %-28s %8.2f GiB\n  %-28s %8.2f GiB\n", "gradients (fp32)", p.grads / G, "AdamW states", p.moments / G);
    printf("  %-28s %8.2f GiB  (micro-batch %d x %d)\n  %-28s %8.2f GiB\n", "activations", p.activations / G, s->B, s->T,
           "logits chunk (bf16)", p.logits / G);
    if (p.cast_scratch)
        printf("  %-28s %8.2f GiB  (--recipe %s: fp8 codes and scales of one Linear at a time%s)\n", "fp8 cast scratch",
               p.cast_scratch / G, linear_recipe_name(o->recipe),
               linear_recipe_is_mx(o->recipe) ? "; MX emulated: + its operands dequantized to bf16" : "");
    if (p.fp8_gather)
        printf("  %-28s %8.2f GiB  (--fp8-allgather: fp8 codes of the shard's Linear weights + 2 layers' gathered "
               "codes)\n", "fp8 all-gather codes", p.fp8_gather / G);
    if (p.weight_cache)
        printf("  %-28s %8.2f GiB  (--weight-cache: W and W^T codes of every fp8 Linear, cast once per optimizer "
               "step)\n", "fp8 weight cache", p.weight_cache / G);
    if (o->offload) {
        GpuRunOpts on = *o;
        on.offload = 0;
        GpuMemPlan q = llama_gpu_plan(c, s->B, s->T, &on);
        printf("  %-28s %8.2f GiB  (master weights + optimizer states, pinned)\n", "host memory (--offload)",
               (q.master + q.moments + q.grads + q.params) / G);
    }
    if (o->zero)
        printf("  ZeRO-%d over %d ranks: this rank keeps master weights%s and optimizer states of %zu of %zu parameters "
               "(%.1f%%)\n", o->zero->level, o->zero->world, zero3 ? ", bf16 weights" : "", o->zero->end - o->zero->begin,
               o->zero->total, 100.0 * (o->zero->end - o->zero->begin) / (o->zero->total ? o->zero->total : 1));
    size_t fixed = p.params + p.master + p.grads + p.moments + p.gather + p.weight_cache + p.fp8_gather, best = 0;
    for (int b = 1; b <= 1024; b *= 2) {
        GpuMemPlan q = llama_gpu_plan(c, b, s->T, o);
        if (fixed + q.activations + q.logits + q.cast_scratch + (256u << 20) <= free_b) best = (size_t)b;
    }
    size_t need = fixed + p.activations + p.logits + p.cast_scratch;
    printf("  %-28s %8.2f GiB; largest power-of-two micro-batch that fits at t=%d: %zu\n", "total", need / G, s->T, best);
    CHECK(need + (128u << 20) <= free_b,
          "the run needs %.2f GiB but only %.2f GiB is free\n  HINT: lower -b (largest that fits: %zu), or use "
          "--recompute-norm / --recompute-swiglu / --recompute-ffn / --recompute-attn",
          need / G, free_b / G, best);
}

// Mean validation loss over eval_batches micro-batches from the start of the val set; with
// several ranks, rank r evaluates micro-batches r, r + world, ... and the sums are added. With
// ZeRO-3 a forward is a sequence of collectives, so every rank runs as many: a rank without a
// micro-batch in the last round runs one whose targets are all ignored (it adds exactly 0).
static double evaluate(LlamaGpu *m, GpuCtx *ctx, const Settings *s, char **paths, size_t n_paths, int32_t *tok,
                       int32_t *tgt, Dist *dist) {
    DataLoader vl;
    loader_init(&vl, (const char *const *)paths, n_paths, m->cfg.vocab_size, s->B, s->T, 0, 1, 0, 0);
    double sum = 0;
    long count = 0;
    const int W = dist->world, lockstep = m->zero3 && W > 1;
    const int n = lockstep ? (s->eval_batches + W - 1) / W * W : s->eval_batches;
    for (int i = 0; i < n; i++) {
        if (i < s->eval_batches) loader_next(&vl, tok, tgt);
        if (i % W != dist->rank) continue;
        if (i >= s->eval_batches) for (size_t j = 0; j < (size_t)s->B * s->T; j++) tgt[j] = -1;
        llama_gpu_set_batch(m, ctx, tok, tgt);
        int nv = 0;
        sum += llama_gpu_forward(m, ctx, 0.0f, &nv);
        count += nv;
    }
    loader_free(&vl);
    double v[2] = {sum, (double)count};
    dist_allreduce_host(dist, v, 2, "the validation loss sums");
    return v[1] > 0 ? v[0] / v[1] : NAN;
}

// Reads the loader position of a checkpoint written by any micro-batch size and number of
// ranks. The state counts samples of the one global stream (data/loader.h); B and world only
// say how the following samples are dealt out, so the file's own B and world are given to
// loader_load_state's layout check and this run's restored after.
static void resume_loader(DataLoader *dl, const char *dir) {
    char *tp = path_join(dir, "trainer.json"), *text, err[512];
    size_t n;
    int B = dl->B, world = 1;
    if (read_file_all(tp, 1 << 16, &text, &n, err, sizeof err)) {
        JsonDoc doc;
        if (json_parse(text, n, &doc, err, sizeof err)) {
            uint64_t v;
            if (json_as_u64(json_get(doc.root, "batch"), &v) && v > 0 && v < 1u << 20) B = (int)v;
            if (json_as_u64(json_get(doc.root, "world"), &v) && v > 0 && v < 1u << 20) world = (int)v;
            json_free(&doc);
        }
        free(text);
    }
    free(tp);
    const int my_B = dl->B, my_world = dl->world;
    dl->B = B, dl->world = world;
    char *lp = path_join(dir, "loader.state");
    loader_load_state(dl, lp);
    free(lp);
    dl->B = my_B, dl->world = my_world;
    if (B != my_B || world != my_world)
        printf("data: resumed a stream dealt as %d ranks x %d sequences, now %d x %d\n", world, B, my_world, my_B);
}

// Greedy continuation of the first tokens of `prompt_src`, decoded with the tokenizer.
static void sample(LlamaGpu *m, GpuCtx *ctx, const Settings *s, const Tokenizer *tk, const int32_t *prompt_src,
                   int32_t *tok) {
    const int T = m->T, n_prompt = T < 8 ? 1 : 8, n_new = s->sample_tokens < T - n_prompt ? s->sample_tokens : T - n_prompt;
    memset(tok, 0, (size_t)m->B * T * sizeof(int32_t));
    memcpy(tok, prompt_src, n_prompt * sizeof(int32_t));
    float *logits = (float *)ao_malloc((size_t)m->B * m->cfg.vocab_size * sizeof(float));
    int n = n_prompt;
    for (int i = 0; i < n_new; i++, n++) {
        llama_gpu_set_batch(m, ctx, tok, nullptr);
        int nv;
        llama_gpu_forward(m, ctx, 0.0f, &nv);
        llama_gpu_logits_at(m, ctx, 0, n - 1, logits);
        int best = 0;
        const int V = tk ? tokenizer_vocab_size(tk) : m->cfg.vocab_size;
        for (int v = 1; v < V && v < m->cfg.vocab_size; v++)
            if (logits[v] > logits[best]) best = v;
        tok[n] = best;
    }
    free(logits);
    if (!tk) return;
    size_t len;
    char *text = tokenizer_decode(tk, tok, (size_t)n, 0, &len);
    printf("---- sample (greedy) ----\n%.*s\n-------------------------\n", (int)len, text);
    free(text);
}

// ---- main --------------------------------------------------------------------------------

int main(int argc, char **argv) {
    Settings s;
    int nflags;
    Flag *flags = make_flags(&s, &nflags);
    if (!flags_parse(flags, nflags, argc, argv, "train_llama", "[options]")) return 0;
    // Ranks from mpirun or LLAMA_AO_* (dist/dist.cuh); one process otherwise. Only rank 0 prints
    // the run's progress; every rank's errors go to stderr and name the rank.
    Dist dist;
    dist_init(&dist, s.dist_timeout);
    const int W = dist.world, rank = dist.rank;
    CHECK(W == 1 || s.zero > 0, "%d ranks but --zero 0\n  HINT: multi-GPU training is data parallel with sharded "
          "optimizer states: pass --zero 1 or --zero 2 (--zero 3 shards the bf16 weights too)", W);
    if (rank != 0) CHECK(freopen("/dev/null", "w", stdout), "cannot silence stdout of rank %d", rank);
    int lr_kind = lr_kind_from_name(s.schedule);
    CHECK(lr_kind >= 0, "--schedule %s: expected cosine, linear, constant or wsd", s.schedule);
    AttnImpl attn = !strcmp(s.attn, "auto") ? ATTN_AUTO : !strcmp(s.attn, "cudnn") ? ATTN_CUDNN
                    : !strcmp(s.attn, "kernel") ? ATTN_KERNEL : (AttnImpl)-1;
    CHECK((int)attn >= 0, "--attn %s: expected auto, cudnn or kernel", s.attn);
    const LowbitFormat optim = !strcmp(s.optim, "adamw") ? LOWBIT_F32 : !strcmp(s.optim, "adamw8bit") ? LOWBIT_8BIT
                               : !strcmp(s.optim, "adamw4bit") ? LOWBIT_4BIT : !strcmp(s.optim, "adamwfp8") ? LOWBIT_FP8
                               : (LowbitFormat)-1;
    CHECK((int)optim >= 0, "--optim %s: expected adamw, adamw8bit, adamw4bit or adamwfp8", s.optim);
    const LowbitMaster master = !strcmp(s.master, "fp32") ? LOWBIT_MASTER_F32
                                : !strcmp(s.master, "bf16-sr") ? LOWBIT_MASTER_BF16_SR : (LowbitMaster)-1;
    CHECK((int)master >= 0, "--master %s: expected fp32 or bf16-sr", s.master);
    LinearRecipe recipe;
    {
        char why[512];
        CHECK(linear_recipe_parse(s.recipe, &recipe, why, sizeof why), "%s", why);
        CHECK(linear_tokens_ok(recipe, (long)s.B * s.T, why, sizeof why), "%s", why);
    }
    CHECK(!s.fp8_allgather || s.zero == 3, "--fp8-allgather without --zero 3\n  HINT: it changes what ZeRO-3 all-gathers "
          "(each layer's weights); add --zero 3, or drop --fp8-allgather");
    CHECK(!s.fp8_allgather || recipe == LINEAR_FP8_TENSORWISE, "--fp8-allgather with --recipe %s\n  HINT: it needs "
          "--recipe fp8-tensorwise (as torchao's float8 all-gather): only one scale per tensor lets each rank cast "
          "its shard into the codes of the whole tensor", s.recipe);
    CHECK(s.offload || s.offload_overlap, "--offload-overlap=off without --offload\n  HINT: it selects how the "
          "offloaded optimizer step is scheduled; add --offload or drop it");
    if (s.total_batch == 0) s.total_batch = s.B * s.T * W;
    CHECK(s.total_batch % (s.B * s.T * W) == 0, "--total-batch %d is not a multiple of b*t*ranks = %d*%d*%d", s.total_batch,
          s.B, s.T, W);
    const int accum = s.total_batch / (s.B * s.T * W);

    // tokenizer (optional: samples are skipped without one)
    Tokenizer *tk = nullptr;
    if (s.tokenizer && s.tokenizer[0] && (file_exists(s.tokenizer) || dir_exists(s.tokenizer))) tk = tokenizer_load(s.tokenizer);
    else if (s.tokenizer && s.tokenizer[0]) ao_warn("tokenizer %s not found: samples will be skipped", s.tokenizer);

    // model: resume > fine-tune > scratch
    char err[2048];
    LlamaModel cpu;
    char *resume_dir = s.resume ? ckpt_resolve(s.resume) : nullptr;
    const char *from = resume_dir ? resume_dir : s.model;
    if (from) {
        if (!model_load_hf(&cpu, from, err, sizeof err)) FAIL("%s", err);
    } else {
        LlamaConfig c;
        if (s.config) {
            if (!config_load(&c, s.config, err, sizeof err)) FAIL("%s", err);
        } else {
            CHECK(tk, "training from scratch with the built-in config needs a tokenizer for its vocabulary size\n"
                      "  HINT: pass --tokenizer DIR or --config CONFIG_JSON");
            default_config(&c, tokenizer_vocab_size(tk));
        }
        model_init(&cpu, &c);
        model_init_random(&cpu, (uint64_t)s.seed);
    }
    const LlamaConfig *c = &cpu.cfg;
    CHECK(s.T <= c->max_position_embeddings, "-t %d exceeds the model's max_position_embeddings %d", s.T,
          c->max_position_embeddings);
    CHECK(!tk || tokenizer_vocab_size(tk) <= c->vocab_size, "the tokenizer has %d tokens but the model only %d",
          tokenizer_vocab_size(tk), c->vocab_size);
    char desc[512];
    config_describe(c, desc, sizeof desc);
    printf("llama.ao train_llama\nmodel: %s%s%s\n", desc, from ? " from " : " (random init)", from ? from : "");
    printf("settings:\n");
    flags_print(stdout, flags, nflags);

    const int synthetic = !strcmp(s.train, "synthetic");
    // The first default run tokenizes the bundled corpus itself (what `make data` does).
    if (!strcmp(s.train, DEFAULT_TRAIN) && !strcmp(s.val, DEFAULT_VAL) && (!file_exists(DEFAULT_TRAIN) || !file_exists(DEFAULT_VAL))) {
        CHECK(W == 1, "the default shards %s and %s are missing\n  HINT: run `make data` once before a multi-GPU run "
              "(ranks do not tokenize the corpus concurrently)", DEFAULT_TRAIN, DEFAULT_VAL);
        const char *corpus[] = {"data/corpus/austen.txt", "data/corpus/brown.txt"};
        CHECK(tk && file_exists(corpus[0]) && file_exists(corpus[1]),
              "the default shards are missing and the bundled corpus or tokenizer is not here\n"
              "  HINT: run from the repository root, or pass --train/--val shards made by build/tokenize");
        CHECK(make_dirs("data/shards"), "cannot create data/shards");
        printf("tokenizing the bundled corpus (Austen + Brown) into data/shards/ ...\n");
        size_t ntr = 0, nva = 0;
        tokenize_files_to_shards(tk, corpus, 2, "data/shards/corpus", 0.05, 0, 1, &ntr, &nva);
        printf("  %zu train + %zu val tokens\n", ntr, nva);
    }
    size_t n_train = 0, n_val = 0;
    char **train_paths = split_list(synthetic ? "" : s.train, &n_train);
    char **val_paths = split_list(synthetic ? "" : s.val, &n_val);
    CHECK(synthetic || n_train > 0, "--train names no shard files");
    for (size_t i = 0; i < n_train; i++)
        CHECK(file_exists(train_paths[i]), "training shard %s does not exist\n  HINT: run `make data` to tokenize the bundled "
                                           "corpus, or pass --train FILES made by build/tokenize", train_paths[i]);
    GpuCtx ctx;
    gpu_ctx_init(&ctx, dist_device(&dist));
    // --optim-overlap (one GPU, no offload; llama_gpu_init decides the same): the forward is the
    // critical path, the step on the optimizer stream fills what it leaves free.
    if (s.optim_overlap && s.overlap_priority && !s.offload && !s.zero) gpu_ctx_stream_priority(&ctx, 1);
    dist_comm_init(&dist);
    if (W > 1) printf("%d ranks (%s), NCCL communicator ready, timeout %g s\n", W,
                      dist.launch == DIST_LAUNCH_MPI ? "MPI" : "LLAMA_AO_* variables", s.dist_timeout);
    ZeroPlan zplan;
    memset(&zplan, 0, sizeof zplan);
    if (s.zero) zero_plan_init(&zplan, &cpu.tab, c->n_layers, s.zero, rank, W);
    GpuRunOpts o;
    memset(&o, 0, sizeof o);
    o.recompute_norm = s.recompute_norm;
    o.recompute_swiglu = s.recompute_swiglu;
    o.recompute_ffn = s.recompute_ffn;
    o.recompute_attn = s.recompute_attn;
    o.attn = attn;
    // --deterministic: our kernel's backward (one writer per output). cuDNN's backward is not bitwise
    // reproducible, even on an engine cuDNN does not note as non-deterministic (docs/TRAINING.md).
    o.attn_bwd = s.deterministic ? ATTN_KERNEL : attn;
    o.lm_chunk = s.lm_chunk;
    o.optim = optim;
    o.master = master;
    o.offload = s.offload;
    o.offload_sync = !s.offload_overlap;
    o.seed = (uint64_t)s.seed;
    o.zero = s.zero ? &zplan : nullptr;
    o.recipe = recipe;
    o.optim_overlap = s.optim_overlap;
    // The weights change only in the optimizer step (llama_gpu_adamw bumps the model's weights version),
    // so the micro-batches of a step can share each fp8 weight's codes.
    o.cache_weight_casts = s.weight_cache && accum > 1 && recipe != LINEAR_BF16 && !s.fp8_allgather;
    o.fp8_allgather = s.fp8_allgather;  // (its gathered codes serve every micro-batch of a step: no cache)
    o.zero_gather_overlap = s.zero_gather_overlap;
    print_memory_table(c, &s, &o, &ctx);
    LlamaGpu m;
    llama_gpu_init(&m, &ctx, &cpu, s.B, s.T, &o);
    llama_gpu_print_linears(&m, stdout);
    // Which schedule the optimizer step runs (--optim-overlap applies to one GPU without --offload).
    printf("optimizer step: %s%s\n",
           m.overlap ? (s.overlap_priority ? "on the GPU, layer by layer on a second stream beside the next step's forward "
                                             "(--optim-overlap; the forward's stream at the highest priority)"
                                           : "on the GPU, layer by layer on a second stream beside the next step's forward "
                                             "(--optim-overlap; both streams at the default priority)")
           : s.offload ? (s.offload_overlap ? "on the host (--offload), layer by layer as the gradients arrive"
                                            : "on the host (--offload), after the backward")
                       : "on the GPU, after the backward and the gradient norm (serial)",
           s.optim_overlap && !m.overlap ? (s.offload ? "; --optim-overlap is not used with --offload"
                                                      : "; --optim-overlap is not used with ZeRO") : "");
    if (rank == 0)
        printf("attention backward: %s%s\n",
               attention_backward_path(&ctx, s.B, s.T, c->n_heads, c->n_kv_heads, c->head_dim, o.attn_bwd),
               o.attn_bwd == ATTN_KERNEL && s.deterministic ? " (--deterministic: bit-reproducible)" : "");
    ZeroComm zc;
    memset(&zc, 0, sizeof zc);
    if (s.zero) zero_comm_init(&zc, &dist, &zplan, m.grads, s.zero == 3 ? m.pshard : m.params, ctx.stream);
    if (s.zero == 3) {  // each layer's weights gathered from the shards, on the communication stream with several ranks
        m.gather = zero_params_fetch;
        m.gather_runs = zero_params_fetch_runs;  // --fp8-allgather
        m.reduce_max = zero_amax_reduce;
        m.gather_arg = &zc;
        if (W > 1) m.gather_stream = dist.stream;
    }
    if (m.zg) {  // --zero-gather-overlap: each bucket's parameters all-gathered in place, on the communication stream
        m.gather_params = zero_params_gather_range;
        m.gather_arg = &zc;
        if (W > 1) m.gather_stream = dist.stream;
    }
    if (s.zero == 1 || s.zero == 2)
        printf("parameter all-gather: %s\n", m.zg ? "layer by layer beside the next step's forward (--zero-gather-overlap)"
                                                  : "the whole vector after the optimizer step");
    // --offload: a layer's gradients go to the host once final: after its backward, or with
    // several ranks after its reduction on the communication stream
    if (s.zero && W > 1) m.grads_stream = dist.stream;
    if (W > 1) {  // every wait of the model polls for failed peers
        m.sync = dist_sync_hook;
        m.sync_arg = &dist;
    }

    DataLoader dl;
    memset(&dl, 0, sizeof dl);
    if (!synthetic)
        loader_init(&dl, (const char *const *)train_paths, n_train, c->vocab_size, s.B, s.T, rank, W, (uint64_t)s.seed,
                    s.shuffle);
    uint64_t synth_state = (uint64_t)s.seed * 0x9E3779B97F4A7C15ull + 1;
    int step0 = 0;
    if (resume_dir) {
        CHECK(!synthetic, "--resume needs real training shards, not --train synthetic");
        step0 = ckpt_load_optimizer(resume_dir, &m);
        resume_loader(&dl, resume_dir);
        printf("resumed from %s at step %d\n", resume_dir, step0);
    }
    CHECK(step0 < s.steps || step0 == s.steps, "checkpoint step %d is past --steps %d", step0, s.steps);

    LrSchedule sched = {(LrKind)lr_kind, s.lr, s.lr * s.min_lr_frac, s.warmup, s.steps, s.decay_frac};
    const size_t NT = (size_t)s.B * s.T;
    int32_t *tok = (int32_t *)ao_malloc(NT * sizeof(int32_t)), *tgt = (int32_t *)ao_malloc(NT * sizeof(int32_t));
    int32_t **mb_tok = (int32_t **)ao_calloc((size_t)accum, sizeof(int32_t *)), **mb_tgt = (int32_t **)ao_calloc((size_t)accum, sizeof(int32_t *));
    for (int a = 0; a < accum; a++) {
        mb_tok[a] = (int32_t *)ao_calloc(NT, sizeof(int32_t));  // zeros: a valid prompt before the first batch
        mb_tgt[a] = (int32_t *)ao_malloc(NT * sizeof(int32_t));
    }
    CHECK(make_dirs(s.out), "cannot create run directory %s", s.out);
    char *log_path = path_join(s.out, "log.jsonl"), *svg_path = path_join(s.out, "loss.svg");
    FILE *logf = rank == 0 ? fopen(log_path, resume_dir ? "a" : "w") : fopen("/dev/null", "w");  // rank 0 keeps the log
    CHECK(logf, "cannot open %s for writing", log_path);
    // SOL is against the peak of all the run's GPUs
    const double fpt = flops_per_token(c, s.T), peak = gpu_peak_bf16_flops(&ctx) * W;
    printf("%d micro-batch%s of %d x %d per step%s (%d tokens), %.3g GFLOP/token, SOL against %.0f TFLOP/s bf16\n", accum,
           accum > 1 ? "es" : "", s.B, s.T, W > 1 ? " on each rank" : "", s.total_batch, fpt / 1e9, peak / 1e12);

    double *tr_x = (double *)ao_calloc((size_t)s.steps + 1, sizeof(double)), *tr_y = (double *)ao_calloc((size_t)s.steps + 1, sizeof(double));
    double *va_x = (double *)ao_calloc((size_t)s.steps + 2, sizeof(double)), *va_y = (double *)ao_calloc((size_t)s.steps + 2, sizeof(double));
    size_t n_tr = 0, n_va = 0;
    double t_start = now_s(), t_steps = 0;
    int steps_timed = 0, step = step0;
    // --phase-times: events on the compute stream at the phase boundaries of a step; ph_ms sums the
    // timed steps' phases (an overlapped variant, --optim-overlap or --offload without clipping, moves
    // the step's work between phases: the sums are still the compute stream's time between the marks).
    enum { PH_START, PH_BACKWARD, PH_REDUCED, PH_NORM, PH_OPTIM, PH_GATHERED, PH_N };
    cudaEvent_t ph_ev[PH_N] = {};
    double ph_ms[PH_N] = {}, ph_rest = 0;
    if (s.phase_times)
        for (int i = 0; i < PH_N; i++) CUDA_CHECK(cudaEventCreate(&ph_ev[i]));
    auto mark = [&](int i) {
        if (s.phase_times) CUDA_CHECK(cudaEventRecord(ph_ev[i], ctx.stream));
    };
    // --zero-gather-overlap: the step's all-gather is queued (llama_gpu_params_gather) only where every
    // rank is next to read the weights: before the next step's first forward, after the step's host
    // all-reduce of the target count -- that one goes on the communication stream too and the host waits
    // for it, so queued behind the all-gather it would hold the forward back until every layer landed --
    // or before an evaluation, a sample or a checkpoint (gather_owed: the step is done, its gather not
    // queued yet).
    int gather_owed = 0;
    char trainer_json[1024], dp_json[96] = "";
    if (s.zero) snprintf(dp_json, sizeof dp_json, ", \"world\": %d, \"zero\": %d", W, s.zero);
    for (; step <= s.steps; step++) {
        const int last = step == s.steps;
        int stop_time = s.max_seconds > 0 && now_s() - t_start > s.max_seconds;
        if (W > 1 && s.max_seconds > 0) {  // every rank stops at the same step
            double st = stop_time;
            dist_allreduce_host(&dist, &st, 1, "the ranks' stop decision (--max-seconds)");
            stop_time = st > 0;
        }
        // sample_due: the same on every rank (a ZeRO-1/2 all-gather before it is a collective)
        const int sample_due = tk && s.sample_every > 0 && step > 0 && (step % s.sample_every == 0 || last),
                  do_eval = n_val && s.eval_every > 0 && (step % s.eval_every == 0 || last || stop_time),
                  // ZeRO-3: every rank runs the sample's forwards (collectives); only rank 0's stdout is open
                  do_sample = (rank == 0 || s.zero == 3) && sample_due,
                  do_save = (s.save_every > 0 && step > step0 && step % s.save_every == 0) ||
                            ((last || stop_time) && s.save_final);
        if (gather_owed && (do_eval || sample_due || do_save)) llama_gpu_params_gather(&m, &ctx), gather_owed = 0;
        // They read what the last step wrote: an overlapped one is waited for whole (the next
        // training forward instead waits layer by layer). The end of training waits too.
        if (do_eval || do_sample) llama_gpu_optim_wait(&m, &ctx);
        if (do_save || last || stop_time) llama_gpu_optim_sync(&m);
        if (do_eval) {
            double vl = evaluate(&m, &ctx, &s, val_paths, n_val, tok, tgt, &dist);
            printf("[V] step %d | val loss %.4f\n", step, vl);
            fprintf(logf, "{\"step\": %d, \"val_loss\": %.6f}\n", step, vl);
            fflush(logf);
            va_x[n_va] = step;
            va_y[n_va++] = vl;
            PlotSeries ps[2] = {{"train loss", "#1f77b4", tr_x, tr_y, n_tr}, {"val loss", "#d62728", va_x, va_y, n_va}};
            if (rank == 0 && !plot_svg(svg_path, "llama.ao training", "step", "loss", ps, 2, err, sizeof err))
                ao_warn("%s", err);
        }
        if (do_sample) sample(&m, &ctx, &s, tk, mb_tok[0], tok);
        if (do_save) {
            snprintf(trainer_json, sizeof trainer_json,
                     "{\"step\": %d, \"seed\": %d, \"batch\": %d, \"seq\": %d, \"total_batch\": %d, \"steps\": %d, "
                     "\"lr\": %g, \"schedule\": \"%s\", \"warmup\": %d, \"wd\": %g, \"clip\": %g, \"optim\": \"%s\", "
                     "\"master\": \"%s\", \"recipe\": \"%s\"%s}\n",
                     step, s.seed, s.B, s.T, s.total_batch, s.steps, s.lr, s.schedule, s.warmup, s.wd, s.clip, s.optim,
                     s.master, s.recipe, dp_json);
            ckpt_save(s.out, step, &m, &ctx, &cpu, synthetic ? nullptr : &dl, s.tokenizer, trainer_json, &dist);
            printf("[C] saved %s/ckpt_%06d\n", s.out, step);
        }
        if (last || stop_time) break;

        if (s.zero != 3) dist_fault_point(&dist, step);
        double t0 = now_s();
        int n_valid = 0;
        // The step's global batch is accum x W micro-batches; micro-batch a of rank r is number
        // a * W + r of the stream (the loader deals samples that way), so one GPU accumulating
        // accum * W micro-batches sees the same data.
        for (int a = 0; a < accum; a++) {
            if (synthetic) {  // uniform random ids below the tokenizer's (or model's) vocabulary
                const uint32_t V = (uint32_t)(tk ? tokenizer_vocab_size(tk) : c->vocab_size);
                for (int r = 0; r < W; r++)
                    for (size_t i = 0; i < NT; i++) {
                        synth_state ^= synth_state << 13; synth_state ^= synth_state >> 7; synth_state ^= synth_state << 17;
                        if (r != rank) continue;
                        mb_tok[a][i] = (int32_t)(synth_state % V);
                        mb_tgt[a][i] = (int32_t)((synth_state >> 32) % V);
                    }
            } else {
                loader_next(&dl, mb_tok[a], mb_tgt[a]);
            }
            for (size_t i = 0; i < NT; i++) n_valid += mb_tgt[a][i] >= 0;
        }
        if (W > 1) {  // the loss is the mean over the global batch's target tokens
            double nv = n_valid;
            dist_allreduce_host(&dist, &nv, 1, "the target-token count of the step");
            n_valid = (int)nv;
        }
        // ZeRO-3: the injected fault comes after the step's host collective, so the other ranks are
        // left waiting inside the forward, on weight gathers that cannot complete (test/dist_test.sh)
        if (s.zero == 3) dist_fault_point(&dist, step);
        if (gather_owed) llama_gpu_params_gather(&m, &ctx), gather_owed = 0;  // the forward waits layer by layer
        mark(PH_START);
        llama_gpu_zero_grads(&m, &ctx);
        double loss_sum = 0;
        for (int a = 0; a < accum; a++) {
            llama_gpu_set_batch(&m, &ctx, mb_tok[a], mb_tgt[a]);
            int nv;
            loss_sum += llama_gpu_forward(&m, &ctx, n_valid ? 1.0f / n_valid : 0.0f, &nv);
            if (s.zero && a == accum - 1) {  // reduce each layer's gradients as soon as they are final
                m.grads_ready = zero_grads_ready;
                m.grads_ready_arg = &zc;
            }
            m.stream_grads = a == accum - 1;  // --offload: each layer's gradients to the host as soon as final
            llama_gpu_backward(&m, &ctx);
            m.grads_ready = nullptr;
            m.stream_grads = 0;
        }
        mark(PH_BACKWARD);
        const float lr = lr_at(&sched, step);
        // Offloaded without clipping, the step needs no norm: the host steps each layer as its
        // gradients arrive, while the GPU runs the layers below (the norm, of the same gradients,
        // follows). With clipping, or ZeRO's reductions to wait for, the step follows the norm.
        // With --optim-overlap and no clipping, the step is queued right behind the norm's reduction
        // (it zeroes the gradients stage by stage, so it follows the norm), before the host waits for it.
        const int step_first = s.offload && s.offload_overlap && s.clip == 0 && !s.zero;
        const int norm_first = m.overlap && s.clip == 0;
        if (step_first) llama_gpu_adamw(&m, &ctx, lr, s.beta1, s.beta2, s.eps, s.wd, step + 1, 1.0f);
        float norm;
        if (s.zero) {
            zero_grads_wait(&zc);
            mark(PH_REDUCED);
            dist_allreduce_host(&dist, &loss_sum, 1, "the loss sums of the step");
            norm = zero_grad_norm(&zc);
        } else if (norm_first) {
            llama_gpu_grad_norm_queue(&m, &ctx);
            llama_gpu_adamw(&m, &ctx, lr, s.beta1, s.beta2, s.eps, s.wd, step + 1, 1.0f);
            norm = llama_gpu_grad_norm_result(&m, &ctx);
        } else {
            norm = llama_gpu_grad_norm(&m, &ctx);
        }
        if (!s.zero) mark(PH_REDUCED);  // (nothing to wait for: the norm phase starts at the backward's end)
        mark(PH_NORM);
        const float loss = n_valid ? (float)(loss_sum / n_valid) : NAN;
        CHECK(isfinite(loss) && isfinite(norm), "step %d: loss %g, gradient norm %g: training diverged\n"
              "  HINT: lower --lr, raise --warmup, or check the data", step, loss, norm);
        const float scale = s.clip > 0 && norm > s.clip ? s.clip / norm : 1.0f;
        if (!step_first && !norm_first) llama_gpu_adamw(&m, &ctx, lr, s.beta1, s.beta2, s.eps, s.wd, step + 1, scale);
        mark(PH_OPTIM);
        if (s.zero && m.zg) gather_owed = 1;  // queued before the next reader (see gather_owed)
        else if (s.zero) zero_params_gather(&zc);
        mark(PH_GATHERED);
        // The compute stream only: an overlapped step (--optim-overlap) runs on beside the next
        // step's forward, which waits for it layer by layer, so its time counts in the next step's.
        dist_wait(&dist, ctx.stream, "the optimizer step and the parameter all-gather");
        const double dt = now_s() - t0;
        if (step > step0) { t_steps += dt; steps_timed++; }  // the first step pays for warm-up
        if (s.phase_times && step > step0) {
            CUDA_CHECK(cudaEventSynchronize(ph_ev[PH_GATHERED]));
            for (int i = 1; i < PH_N; i++) {
                float ms;
                CUDA_CHECK(cudaEventElapsedTime(&ms, ph_ev[i - 1], ph_ev[i]));
                ph_ms[i] += ms;
            }
            float all;
            CUDA_CHECK(cudaEventElapsedTime(&all, ph_ev[PH_START], ph_ev[PH_GATHERED]));
            ph_rest += dt * 1e3 - all;
        }
        const double tps = s.total_batch / dt, sol = tps * fpt / peak;
        const double avg = steps_timed ? t_steps / steps_timed : dt, eta = avg * (s.steps - step - 1);
        printf("[T] step %5d/%d | loss %.4f | norm %7.4f | lr %.2e | %7.1f ms | %7.1fk tok/s | SOL %4.1f%% | ETA %dm%02ds\n",
               step + 1, s.steps, loss, norm, lr, dt * 1e3, tps / 1e3, 100 * sol, (int)(eta / 60), (int)eta % 60);
        fflush(stdout);
        fprintf(logf, "{\"step\": %d, \"loss\": %.6f, \"norm\": %.6f, \"lr\": %.6e, \"ms\": %.3f, \"tok_s\": %.1f, \"sol\": %.4f}\n",
                step + 1, loss, norm, lr, dt * 1e3, tps, sol);
        tr_x[n_tr] = step + 1;
        tr_y[n_tr++] = loss;
    }
    fclose(logf);
    size_t free_b, total_b;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (steps_timed && W == 1)
        printf("done: %d steps, mean %.1f ms/step, %.1fk tok/s, SOL %.1f%%, GPU memory in use %.1f GiB\n", steps_timed,
               1e3 * t_steps / steps_timed, (double)s.total_batch * steps_timed / t_steps / 1e3,
               100.0 * s.total_batch * steps_timed / t_steps * fpt / peak, (total_b - free_b) / 1073741824.0);
    else if (steps_timed)  // the last number is per GPU, as bench_train.sh reads it
        printf("done: %d steps, mean %.1f ms/step, %d GPUs, SOL %.1f%%, GPU memory in use %.1f GiB (rank 0), "
               "%.1fk tok/s in all, %.1fk tok/s per GPU\n", steps_timed, 1e3 * t_steps / steps_timed, W,
               100.0 * s.total_batch * steps_timed / t_steps * fpt / peak, (total_b - free_b) / 1073741824.0,
               (double)s.total_batch * steps_timed / t_steps / 1e3, (double)s.total_batch * steps_timed / t_steps / 1e3 / W);
    if (s.phase_times && steps_timed) {
        const double n = steps_timed;
        printf("phases (rank %d, mean of %d steps, compute stream): forward + backward %.1f ms | wait for gradient "
               "reductions %.1f ms | gradient norm %.1f ms | optimizer step %.1f ms | wait for parameter all-gather %.1f "
               "ms | host, data and launches %.1f ms\n", rank, steps_timed, ph_ms[PH_BACKWARD] / n, ph_ms[PH_REDUCED] / n,
               ph_ms[PH_NORM] / n, ph_ms[PH_OPTIM] / n, ph_ms[PH_GATHERED] / n, ph_rest / n);
    }
    for (int i = 0; i < PH_N; i++)
        if (ph_ev[i]) cudaEventDestroy(ph_ev[i]);
    for (int a = 0; a < accum; a++) { free(mb_tok[a]); free(mb_tgt[a]); }
    free(mb_tok); free(mb_tgt); free(tok); free(tgt);
    free(tr_x); free(tr_y); free(va_x); free(va_y);
    free(log_path); free(svg_path); free(resume_dir);
    free_list(train_paths, n_train);
    free_list(val_paths, n_val);
    if (!synthetic) loader_free(&dl);
    if (s.zero) zero_comm_free(&zc);
    llama_gpu_free(&m);
    if (s.zero) zero_plan_free(&zplan);
    dist_free(&dist);
    gpu_ctx_free(&ctx);
    model_free(&cpu);
    if (tk) tokenizer_free(tk);
    return 0;
}
