#include "llama_gpu_internal.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/cross_entropy.cuh"
#include "../ops/embedding.cuh"
#include "../ops/matmul.cuh"
#include "../ops/matmul_mx.cuh"
#include "../ops/rmsnorm.cuh"
#include "../ops/rope.cuh"
#include "../ops/swiglu.cuh"
#include "../optim/adamw.cuh"
#include "../optim/adamw_cpu.h"
#include "../optim/adamw_lowbit.cuh"
extern "C" {
#include "../ops/embedding.h"
#include "../ops/rope.h"
}

// Shape names shared by the planner and the carving code.
struct Dims {
    size_t N, D, F, V, H, KV, HD, QD, KVD, QKVD, B, T;
};
static Dims dims(const LlamaConfig *c, int B, int T) {
    Dims d;
    d.B = (size_t)B;
    d.T = (size_t)T;
    d.N = d.B * d.T;
    d.D = (size_t)c->hidden_size;
    d.F = (size_t)c->intermediate_size;
    d.V = (size_t)c->vocab_size;
    d.H = (size_t)c->n_heads;
    d.KV = (size_t)c->n_kv_heads;
    d.HD = (size_t)c->head_dim;
    d.QD = d.H * d.HD;
    d.KVD = d.KV * d.HD;
    d.QKVD = d.QD + 2 * d.KVD;
    return d;
}

// A bump allocator over one device allocation: pass 1 (base == NULL) only counts bytes.
// ---- the model's Linears ------------------------------------------------------------------
// Every Linear runs through ops/linear.cuh; these are the groups it is handed (Linears sharing
// an input, writing one packed output). Shapes come from the config; pointers from the weights
// once they exist (llama_gpu_plan has none). The same for every layer.
enum { LIN_QKV = 0, LIN_O, LIN_GU, LIN_DOWN, LIN_PER_LAYER };

static LinearPart lin_part(const char *name, int M, const bf16 *w, const bf16 *b, float *dw, float *db, int hp) {
    LinearPart p;
    p.name = name, p.w = w, p.bias = b, p.dw = dw, p.dbias = db, p.M = M, p.hp = hp;
    return p;
}

static int linear_groups(const LlamaGpu *m, int l, LinearGroup *out) {
    const LlamaConfig *c = &m->cfg;
    Dims d = dims(c, m->B, m->T);
    const int D = (int)d.D, F = (int)d.F, QD = (int)d.QD, KVD = (int)d.KVD;
    memset(out, 0, LIN_PER_LAYER * sizeof *out);
    if (l == c->n_layers) {  // the LM head: bf16 in every recipe (torchao's filter keeps the output projection)
        out[0].K = D, out[0].nparts = 1;
        out[0].part[0] = lin_part("lm_head", (int)d.V, m->wl ? m->w.lm_head : nullptr, nullptr,
                                  m->gl ? m->g.lm_head : nullptr, nullptr, 1);
        return 1;
    }
    static const LlamaWeightsBf16Layer W0 = {};
    static const LlamaWeightsLayer G0 = {};
    const LlamaWeightsBf16Layer *W = m->wl ? &m->wl[l] : &W0;
    const LlamaWeightsLayer *G = m->gl ? &m->gl[l] : &G0;
    for (int i = 0; i < LIN_PER_LAYER; i++) {  // each group's amax of x / W from its forward to its backward
        out[i].saved = m->lin_saved ? m->lin_saved + ((size_t)l * LIN_PER_LAYER + i) * LINEAR_SAVED_FLOATS : nullptr;
        // and its parts' weight codes while the weights stay the same (opts.cache_weight_casts)
        out[i].wc = m->lin_wcache ? &m->lin_wcache[((size_t)l * LIN_PER_LAYER + i) * LINEAR_MAX_PARTS] : nullptr;
        out[i].wversion = m->lin_wcache ? m->wversion : 0;
    }
    LinearGroup *g = &out[LIN_QKV];
    g->K = D, g->nparts = 3, g->fused = m->fused_qkv && (!W->bq || m->fused_qkv_bias);
    g->part[0] = lin_part("q_proj", QD, W->wq, W->bq, G->wq, G->bq, 0);
    g->part[1] = lin_part("k_proj", KVD, W->wk, W->bk, G->wk, G->bk, 0);
    g->part[2] = lin_part("v_proj", KVD, W->wv, W->bv, G->wv, G->bv, 0);
    g = &out[LIN_O];
    g->K = QD, g->nparts = 1;
    g->part[0] = lin_part("o_proj", D, W->wo, nullptr, G->wo, nullptr, 0);
    g = &out[LIN_GU];
    g->K = D, g->nparts = 2, g->fused = m->fused_gu;
    g->part[0] = lin_part("gate_proj", F, W->wg, nullptr, G->wg, nullptr, 0);
    g->part[1] = lin_part("up_proj", F, W->wu, nullptr, G->wu, nullptr, 0);
    g = &out[LIN_DOWN];
    g->K = F, g->nparts = 1;
    g->part[0] = lin_part("down_proj", D, W->wd, nullptr, G->wd, nullptr, 0);
    return LIN_PER_LAYER;
}

static LinearGroup linear_group(const LlamaGpu *m, int l, int which) {
    LinearGroup g[LIN_PER_LAYER];
    linear_groups(m, l, g);
    return g[which];
}

// The fp8 casts' scratch: the largest fp8 Linear of a layer (all layers alike); nothing for bf16.
static LinearScratchSize linear_scratch_need(const LlamaGpu *m) {
    LinearScratchSize s;
    memset(&s, 0, sizeof s);
    if (m->opts.recipe == LINEAR_BF16) return s;
    LinearGroup g[LIN_PER_LAYER];
    const long N = (long)m->B * m->T;
    for (int l : {0, m->cfg.n_layers}) {
        const int n = linear_groups(m, l, g);
        for (int i = 0; i < n; i++) linear_group_scratch(&s, m->opts.recipe, N, &g[i]);
    }
    return s;
}

// The compute capability major of the current device (0 when there is none): which MX GEMM path the
// scratch is carved for (the plan is made before a GpuCtx exists).
static int current_cc_major(void) {
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) !=
                                                  cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return major;
}

static void carve_acts(LlamaGpu *m, Carver &cv) {
    const LlamaConfig *c = &m->cfg;
    Dims d = dims(c, m->B, m->T);
    const GpuRunOpts *o = &m->opts;
    bf16 *shared_ln1 = o->recompute_norm ? cv.take<bf16>(d.N * d.D) : nullptr;
    bf16 *shared_ln2 = o->recompute_norm ? cv.take<bf16>(d.N * d.D) : nullptr;
    const int share_act = o->recompute_swiglu || o->recompute_ffn;
    bf16 *shared_act = share_act ? cv.take<bf16>(d.N * d.F) : nullptr;
    bf16 *shared_gu = o->recompute_ffn ? cv.take<bf16>(d.N * 2 * d.F) : nullptr;
    bf16 *shared_qkv = o->recompute_attn ? cv.take<bf16>(d.N * d.QKVD) : nullptr;
    bf16 *shared_attn = o->recompute_attn ? cv.take<bf16>(d.N * d.QD) : nullptr;
    float *shared_lse = o->recompute_attn ? cv.take<float>(d.B * d.H * d.T) : nullptr;
    for (int l = 0; l < c->n_layers; l++) {
        GpuLayerActs *L = m->layers ? &m->layers[l] : nullptr;
        GpuLayerActs tmp;
        if (!L) L = &tmp;
        L->resid = cv.take<bf16>(d.N * d.D);
        L->ln1 = o->recompute_norm ? shared_ln1 : cv.take<bf16>(d.N * d.D);
        L->ln1_rstd = cv.take<float>(d.N);
        L->qkv = o->recompute_attn ? shared_qkv : cv.take<bf16>(d.N * d.QKVD);
        L->attn = o->recompute_attn ? shared_attn : cv.take<bf16>(d.N * d.QD);
        L->lse = o->recompute_attn ? shared_lse : cv.take<float>(d.B * d.H * d.T);
        L->resid_mid = cv.take<bf16>(d.N * d.D);
        L->ln2 = o->recompute_norm ? shared_ln2 : cv.take<bf16>(d.N * d.D);
        L->ln2_rstd = cv.take<float>(d.N);
        L->gu = o->recompute_ffn ? shared_gu : cv.take<bf16>(d.N * 2 * d.F);
        L->act = share_act ? shared_act : cv.take<bf16>(d.N * d.F);
    }
    m->resid_final = cv.take<bf16>(d.N * d.D);
    m->lnf = cv.take<bf16>(d.N * d.D);
    m->lnf_rstd = cv.take<float>(d.N);
    m->scratch_d = cv.take<bf16>(d.N * d.D);
    m->losses = cv.take<float>(d.N);
    m->d_resid = cv.take<bf16>(d.N * d.D);
    m->d_ln = cv.take<bf16>(d.N * d.D);
    m->d_attn = cv.take<bf16>(d.N * d.QD);
    m->d_qkv = cv.take<bf16>(d.N * d.QKVD);
    m->d_gu = cv.take<bf16>(d.N * 2 * d.F);
    m->d_act = cv.take<bf16>(d.N * d.F);
    size_t ns = rmsnorm_backward_scratch_floats((int)d.N, (int)d.D);
    m->norm_scratch = cv.take<float>(ns);
    m->inv_freq = cv.take<float>(d.HD / 2);
    m->tokens = cv.take<int32_t>(d.N);
    m->targets = cv.take<int32_t>(d.N);
    m->emb_pos = cv.take<int32_t>(d.N);
    m->emb_start = cv.take<int32_t>(d.N + 1);
    m->emb_token = cv.take<int32_t>(d.N);
    m->logits_f32 = cv.take<float>(d.V);
    // Last, so that the bf16 recipe's layout is what it always was.
    m->lin.recipe = o->recipe;
    m->lin.mx_native = linear_recipe_is_mx(o->recipe) && mx_gemm_path_for(current_cc_major()) == MX_GEMM_NATIVE;
    m->lin.cap = linear_scratch_need(m);
    m->lin_bytes = linear_ctx_place(&m->lin, nullptr);
    m->lin_mem = m->lin_bytes ? cv.take<char>(m->lin_bytes) : nullptr;
    if (m->lin_mem) linear_ctx_place(&m->lin, m->lin_mem);
    m->lin_saved = o->recipe != LINEAR_BF16 ? cv.take<float>((size_t)c->n_layers * LIN_PER_LAYER * LINEAR_SAVED_FLOATS)
                                            : nullptr;
    // The weight cast cache: W and W^T codes of every fp8 part of every layer (lin_wcache, when the
    // model has it, gets the pointers).
    const size_t wc0 = cv.used;
    if (o->cache_weight_casts && !o->fp8_allgather && o->recipe != LINEAR_BF16) {  // (fp8-allgather: the slots)
        LinearGroup g[LIN_PER_LAYER];
        for (int l = 0; l < c->n_layers; l++) {
            const int n = linear_groups(m, l, g);
            for (int i = 0; i < n; i++)
                for (int p = 0; p < g[i].nparts; p++) {
                    if (!linear_group_part_fp8(o->recipe, &g[i], p, NULL, 0)) continue;
                    LinearWCache tmp, *wc = &tmp;
                    if (m->lin_wcache) wc = &m->lin_wcache[((size_t)l * LIN_PER_LAYER + i) * LINEAR_MAX_PARTS + p];
                    const int K = g[i].K, M = g[i].part[p].M;
                    char *mem = cv.take<char>(linear_wcache_place(wc, o->recipe, K, M, nullptr));
                    if (mem) linear_wcache_place(wc, o->recipe, K, M, mem);
                }
        }
    }
    m->wcache_off = wc0, m->wcache_bytes = cv.used - wc0;
}

static size_t logits_rows(const GpuRunOpts *o, size_t N) {
    size_t r = o->lm_chunk > 0 ? (size_t)o->lm_chunk : 2048;
    return r < N ? r : N;
}

// Bytes of the low-bit states of a shard's pieces.
static size_t lowbit_state_bytes(const ParamTable *tab, const ZeroPlan *z, LowbitFormat optim) {
    size_t b = 0;
    for (int i = 0; i < z->n_pieces; i++)
        b += zero_piece_layout(optim, tab->p[z->pieces[i].tensor].numel, z->pieces[i].n).bytes;
    return b;
}

GpuMemPlan llama_gpu_plan(const LlamaConfig *c, int B, int T, const GpuRunOpts *opts) {
    GpuMemPlan p;
    ParamTable tab;
    param_table_init(&tab, c);
    ZeroPlan whole;
    const ZeroPlan *z = opts->zero;
    if (!z) zero_plan_init(&whole, &tab, c->n_layers, 0, 0, 1);
    const ZeroPlan *zp = z ? z : &whole;
    const size_t S = zp->end - zp->begin;
    const int zero3 = zp->level == 3;
    p.params = (zero3 ? S : tab.total) * sizeof(bf16);
    p.gather = zero3 ? (2 * zero3_layer_buf_elems(zp) + zero3_global_buf_elems(zp)) * sizeof(bf16) : 0;
    p.master = opts->offload || opts->master != LOWBIT_MASTER_F32 ? 0 : S * sizeof(float);
    p.grads = tab.total * sizeof(float);
    p.moments = 0;
    if (opts->offload) p.moments = 0;
    else if (opts->optim == LOWBIT_F32) p.moments = 2 * S * sizeof(float);
    else p.moments = lowbit_state_bytes(&tab, zp, opts->optim);
    if (!z) zero_plan_free(&whole);
    param_table_free(&tab);
    LlamaGpu m;
    memset(&m, 0, sizeof m);
    m.cfg = *c;
    m.opts = *opts;
    m.B = B;
    m.T = T;
    Carver cv = {nullptr, 0};
    carve_acts(&m, cv);
    p.cast_scratch = m.lin_bytes;
    p.weight_cache = m.wcache_bytes;
    p.activations = cv.used - m.lin_bytes - m.wcache_bytes;
    m.shard_n = S;
    p.fp8_gather = zero3 && opts->fp8_allgather ? lg_fp8ag_place(&m, nullptr) : 0;
    p.logits = logits_rows(opts, (size_t)B * T) * (size_t)c->vocab_size * sizeof(bf16);
    return p;
}

void llama_gpu_init(LlamaGpu *m, GpuCtx *ctx, const LlamaModel *cpu, int B, int T, const GpuRunOpts *opts) {
    CHECK((unsigned)opts->recipe < LINEAR_NRECIPES, "llama_gpu_init: recipe %d out of range", (int)opts->recipe);
    {
        char why[512];
        CHECK(linear_tokens_ok(opts->recipe, (long)B * T, why, sizeof why), "%s", why);
    }
    CHECK(!opts->fp8_allgather || (opts->zero && opts->zero->level == 3 && opts->recipe == LINEAR_FP8_TENSORWISE),
          "llama_gpu_init: fp8_allgather needs ZeRO-3 and the fp8-tensorwise recipe (ZeRO level %d, recipe %s)",
          opts->zero ? opts->zero->level : 0, linear_recipe_name(opts->recipe));
    memset(m, 0, sizeof *m);
    m->cfg = cpu->cfg;
    m->opts = *opts;
    m->B = B;
    m->T = T;
    const LlamaConfig *c = &m->cfg;
    param_table_init(&m->tab, c);
    const size_t P = m->tab.total;
    const int lowbit = opts->optim != LOWBIT_F32, off = opts->offload;
    CHECK(opts->master == LOWBIT_MASTER_F32 || opts->master == LOWBIT_MASTER_BF16_SR,
          "llama_gpu_init: master mode %d: the trainer keeps fp32 masters or bf16 with stochastic rounding",
          (int)opts->master);
    const int f32m = opts->master == LOWBIT_MASTER_F32;  // else the bf16 params are the masters
    // The optimizer's shard: the plan given (ZeRO), or the whole model, one piece per tensor.
    if (opts->zero) {
        CHECK(opts->zero->total == P, "ZeRO plan for %zu parameters, model has %zu", opts->zero->total, P);
        m->plan = opts->zero;
    } else {
        zero_plan_init(&m->own_plan, &m->tab, c->n_layers, 0, 0, 1);
        m->plan = &m->own_plan;
    }
    const ZeroPlan *z = m->plan;
    const size_t S = z->end - z->begin;
    m->shard_n = S;
    // On the GPU: bf16 params (all of them, or the shard with ZeRO-3) and fp32 grads (all);
    // fp32 master (with fp32 masters) and moments of the shard unless offloaded; ZeRO-3's gather
    // buffers last. Every part starts 256-byte aligned, so a tensor's gradient has the same
    // address modulo 256 at every ZeRO level.
    m->zero3 = z->level == 3;
    const size_t PW = m->zero3 ? S : P, ZL = m->zero3 ? zero3_layer_buf_elems(z) : 0,
                 ZG = m->zero3 ? zero3_global_buf_elems(z) : 0;
    Carver pc = {nullptr, 0};
    for (int pass = 0; pass < 2; pass++) {
        bf16 *pw = pc.take<bf16>(PW);
        float *master = !off && f32m ? pc.take<float>(S) : nullptr;
        float *grads = pc.take<float>(P);
        float *am = !off && !lowbit ? pc.take<float>(S) : nullptr, *av = !off && !lowbit ? pc.take<float>(S) : nullptr;
        bf16 *zb[3] = {nullptr, nullptr, nullptr};
        if (m->zero3) zb[0] = pc.take<bf16>(ZL), zb[1] = pc.take<bf16>(ZL), zb[2] = pc.take<bf16>(ZG);
        if (pass == 0) {
            m->param_bytes = pc.used;
            CUDA_CHECK(cudaMalloc(&m->param_mem, m->param_bytes));
            pc = {(char *)m->param_mem, 0};
            continue;
        }
        m->params = m->zero3 ? nullptr : pw;
        m->pshard = m->zero3 ? pw : pw + z->begin;
        m->master = master;
        m->grads = grads;
        m->adam_m = am, m->adam_v = av;
        for (int k = 0; k < 3; k++) m->zbuf[k] = zb[k];
    }
    // --offload: master weights and optimizer states live in pinned host memory, where the
    // AdamW step runs (optim/adamw_cpu.h, the same bits as the GPU kernels); the pointers
    // below are host pointers then, and copies use cudaMemcpyDefault (unified addressing).
    if (off) {
        if (f32m) CUDA_CHECK(cudaMallocHost(&m->master, (S ? S : 1) * sizeof(float)));
        CUDA_CHECK(cudaMallocHost(&m->h_grads, (S ? S : 1) * sizeof(float)));
        CUDA_CHECK(cudaMallocHost(&m->h_params, (S ? S : 1) * sizeof(uint16_t)));
        lg_offload_plan_slices(m);
    }
    lg_optim_init(m);  // --optim-overlap: the optimizer stream, when the overlap applies
    lg_zg_init(m);     // --zero-gather-overlap: its events and own stream, when it applies
    if (!lowbit) {
        if (off) {
            CUDA_CHECK(cudaMallocHost(&m->adam_m, (S ? S : 1) * sizeof(float)));
            CUDA_CHECK(cudaMallocHost(&m->adam_v, (S ? S : 1) * sizeof(float)));
        }
    } else {
        // One region per piece (per tensor without ZeRO), laid out by torchao's rule
        // (lowbit_layout): quantized blocks for tensors of >= 4096 elements in whole blocks,
        // fp32 states otherwise; a piece keeps its whole tensor's format.
        const int np = z->n_pieces;
        LowbitLayout *lay = (LowbitLayout *)ao_malloc((size_t)(np ? np : 1) * sizeof *lay);
        for (int i = 0; i < np; i++) {
            lay[i] = zero_piece_layout(opts->optim, m->tab.p[z->pieces[i].tensor].numel, z->pieces[i].n);
            m->state_bytes += lay[i].bytes;
        }
        if (off) {
            CUDA_CHECK(cudaMallocHost(&m->state_mem, m->state_bytes ? m->state_bytes : 16));
            memset(m->state_mem, 0, m->state_bytes);  // zeros = fresh states
        } else {
            CUDA_CHECK(cudaMalloc(&m->state_mem, m->state_bytes ? m->state_bytes : 16));
            CUDA_CHECK(cudaMemsetAsync(m->state_mem, 0, m->state_bytes, ctx->stream));
        }
        m->states = (LowbitState *)ao_malloc((size_t)(np ? np : 1) * sizeof *m->states);
        size_t so = 0;
        for (int i = 0; i < np; i++) {
            m->states[i] = lowbit_state_at(&lay[i], (char *)m->state_mem + so);
            so += lay[i].bytes;
        }
        free(lay);
    }
    m->wl = (LlamaWeightsBf16Layer *)ao_calloc((size_t)c->n_layers, sizeof *m->wl);
    m->gl = (LlamaWeightsLayer *)ao_calloc((size_t)c->n_layers, sizeof *m->gl);
    if (m->zero3) lg_zero3_init(m);  // the weights point into the gather buffers
    else LlamaWeightsBf16_point(&m->w, m->params, &m->tab, c, m->wl);
    LlamaWeights_point(&m->g, m->grads, &m->tab, c, m->gl);
    // Fused projections need the group's tensors back to back (see model/params.h).
    int iq = param_table_find(&m->tab, "model.layers.0.self_attn.q_proj.weight");
    int ig = param_table_find(&m->tab, "model.layers.0.mlp.gate_proj.weight");
    int ib = param_table_find(&m->tab, "model.layers.0.self_attn.q_proj.bias");
    m->fused_qkv = param_table_contiguous(&m->tab, iq, 3);
    m->fused_gu = param_table_contiguous(&m->tab, ig, 2);
    m->fused_qkv_bias = ib >= 0 && param_table_contiguous(&m->tab, ib, 3);

    // The working bf16 copy is cast on the GPU from the fp32 weights (staged in the gradient
    // buffer when the master lives on the host, holds only a shard or is the bf16 copy itself),
    // so it equals what the optimizer writes. Every rank holds the same CPU model, so the shards
    // agree. bf16 masters start as the nearest-even bf16 of the weights (exact for weights a
    // bf16-master checkpoint saved).
    float *stage = off || S != P || !f32m ? m->grads : m->master;
    // On the compute stream: a plain cudaMemcpy from pageable memory runs on the legacy stream,
    // which does not order with this non-blocking stream, and may return before the data lands.
    CUDA_CHECK(cudaMemcpyAsync(stage, cpu->params, P * sizeof(float), cudaMemcpyHostToDevice, ctx->stream));
    if (off && f32m) memcpy(m->master, cpu->params + z->begin, S * sizeof(float));
    else if (f32m && stage != m->master)  // on the compute stream, before the memset below reuses the stage
        CUDA_CHECK(cudaMemcpyAsync(m->master, stage + z->begin, S * sizeof(float), cudaMemcpyDeviceToDevice, ctx->stream));
    if (m->zero3) cast_f32_to_bf16(m->pshard, stage + z->begin, S, ctx->stream);  // the same bits, the shard only
    else cast_f32_to_bf16(m->params, stage, P, ctx->stream);
    // The host step's bf16 weights start as the GPU's (the masters with bf16-sr; with fp32 masters
    // this defines the padding between tensors, which the step never writes but uploads).
    if (off && S)
        CUDA_CHECK(cudaMemcpyAsync(m->h_params, m->pshard, S * sizeof(uint16_t), cudaMemcpyDeviceToHost,
                                   ctx->stream));
    CUDA_CHECK(cudaMemsetAsync(m->grads, 0, P * sizeof(float), ctx->stream));
    if (!lowbit) {
        if (off) {
            memset(m->adam_m, 0, S * sizeof(float));
            memset(m->adam_v, 0, S * sizeof(float));
        } else {
            CUDA_CHECK(cudaMemsetAsync(m->adam_m, 0, S * sizeof(float), ctx->stream));
            CUDA_CHECK(cudaMemsetAsync(m->adam_v, 0, S * sizeof(float), ctx->stream));
        }
    }

    m->layers = (GpuLayerActs *)ao_calloc((size_t)c->n_layers, sizeof *m->layers);
    if ((opts->cache_weight_casts || opts->fp8_allgather) && opts->recipe != LINEAR_BF16) {
        m->lin_wcache = (LinearWCache *)ao_calloc((size_t)c->n_layers * LIN_PER_LAYER * LINEAR_MAX_PARTS,
                                                  sizeof *m->lin_wcache);
        m->wversion = 1;
    }
    if (opts->fp8_allgather) lg_fp8ag_init(m, ctx);  // the fp8 parts' lin_wcache entries point into its slots
    Carver cv = {nullptr, 0};
    carve_acts(m, cv);
    Dims d = dims(c, B, T);
    size_t lrows = logits_rows(opts, d.N);
    size_t gn = grad_norm_scratch_floats(P) + 1;
    m->act_bytes = cv.used + lrows * d.V * sizeof(bf16) + gn * sizeof(float) + 1024;
    CUDA_CHECK(cudaMalloc(&m->act_mem, m->act_bytes));
    cv = {(char *)m->act_mem, 0};
    carve_acts(m, cv);
    m->logits = cv.take<bf16>(lrows * d.V);
    m->gn_scratch = cv.take<float>(gn);
    // The casts leave 128x128 scale padding untouched and cuBLASLt wants it finite: zero it once (the
    // scratch and the weight cache, which follows lin_saved).
    if (m->lin_bytes) CUDA_CHECK(cudaMemsetAsync(m->lin_mem, 0, m->lin_bytes, ctx->stream));
    if (m->wcache_bytes)
        CUDA_CHECK(cudaMemsetAsync((char *)m->act_mem + m->wcache_off, 0, m->wcache_bytes, ctx->stream));

    float *h_inv = (float *)ao_malloc(d.HD / 2 * sizeof(float));
    rope_inv_freq_cpu(h_inv, c->head_dim, &c->rope);
    CUDA_CHECK(cudaMemcpyAsync(m->inv_freq, h_inv, d.HD / 2 * sizeof(float), cudaMemcpyHostToDevice, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));  // h_inv is freed next
    free(h_inv);
    CUDA_CHECK(cudaMallocHost(&m->h_pos, (3 * d.N + 1) * sizeof(int32_t)));
    m->h_start = m->h_pos + d.N;
    m->h_token = m->h_start + d.N + 1;
    CUDA_CHECK(cudaMallocHost(&m->h_losses, d.N * sizeof(float)));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
}

void llama_gpu_free(LlamaGpu *m) {
    llama_gpu_params_sync(m);  // --zero-gather-overlap: no all-gather may still write the weights
    lg_optim_free(m);  // waits for a step still running there
    if (m->zero3) lg_zero3_free(m);
    lg_zg_free(m);
    if (m->param_mem) cudaFree(m->param_mem);
    if (m->act_mem) cudaFree(m->act_mem);
    if (m->opts.offload) {
        if (m->master) cudaFreeHost(m->master);
        if (m->h_grads) cudaFreeHost(m->h_grads);
        if (m->h_params) cudaFreeHost(m->h_params);
        if (m->adam_m) cudaFreeHost(m->adam_m);
        if (m->adam_v) cudaFreeHost(m->adam_v);
        if (m->state_mem) cudaFreeHost(m->state_mem);
        cudaStream_t st[2] = {m->down_stream, m->up_stream};
        for (int k = 0; k < 2; k++)
            if (st[k]) cudaStreamSynchronize(st[k]), cudaStreamDestroy(st[k]);
        for (int b = 0; m->ev_final && b <= m->plan->n_layers; b++) cudaEventDestroy(m->ev_final[b]);
        for (int k = 0; m->ev_down && k < m->n_slices; k++) cudaEventDestroy(m->ev_down[k]);
        if (m->ev_up) cudaEventDestroy(m->ev_up);
        free(m->ev_final), free(m->ev_down), free(m->down_queued);
        free(m->slice_lo), free(m->slice_hi), free(m->slice_first), free(m->slice_count);
    } else if (m->state_mem) cudaFree(m->state_mem);
    free(m->states);
    if (m->h_pos) cudaFreeHost(m->h_pos);
    if (m->h_losses) cudaFreeHost(m->h_losses);
    free(m->wl);
    free(m->gl);
    free(m->layers);
    free(m->lin_wcache);
    if (m->plan == &m->own_plan) zero_plan_free(&m->own_plan);
    param_table_free(&m->tab);
    memset(m, 0, sizeof *m);
}

// Waits for the compute stream: through the multi-GPU hook when one is set (it polls for
// failed peers), else plainly.
void lg_sync(LlamaGpu *m, GpuCtx *ctx, const char *what) {
    if (m->sync) m->sync(m->sync_arg, ctx->stream, what);
    else CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
}

void llama_gpu_set_batch(LlamaGpu *m, GpuCtx *ctx, const int32_t *tokens, const int32_t *targets) {
    const int N = m->B * m->T, V = m->cfg.vocab_size;
    m->n_valid = 0;
    for (int i = 0; i < N; i++) {
        m->n_valid += targets && targets[i] >= 0;
        CHECK(tokens[i] >= 0 && tokens[i] < V, "token id %d at position %d is outside the vocabulary [0, %d)", tokens[i],
              i, V);
        CHECK(!targets || targets[i] < V, "target id %d at position %d is outside the vocabulary [0, %d)", targets[i], i, V);
    }
    // The stream is in order, so the pinned staging buffers may be reused only once the
    // previous batch's copies are done.
    lg_sync(m, ctx, "the previous batch's copies (compute stream)");
    m->n_buckets = embedding_buckets_cpu(m->h_pos, m->h_start, m->h_token, tokens, N, V);
    CUDA_CHECK(cudaMemcpyAsync(m->tokens, tokens, N * sizeof(int32_t), cudaMemcpyHostToDevice, ctx->stream));
    if (targets) CUDA_CHECK(cudaMemcpyAsync(m->targets, targets, N * sizeof(int32_t), cudaMemcpyHostToDevice, ctx->stream));
    else CUDA_CHECK(cudaMemsetAsync(m->targets, 0xff, N * sizeof(int32_t), ctx->stream));  // -1: ignored
    CUDA_CHECK(cudaMemcpyAsync(m->emb_pos, m->h_pos, N * sizeof(int32_t), cudaMemcpyHostToDevice, ctx->stream));
    CUDA_CHECK(cudaMemcpyAsync(m->emb_start, m->h_start, (m->n_buckets + 1) * sizeof(int32_t), cudaMemcpyHostToDevice,
                               ctx->stream));
    CUDA_CHECK(cudaMemcpyAsync(m->emb_token, m->h_token, m->n_buckets * sizeof(int32_t), cudaMemcpyHostToDevice,
                               ctx->stream));
}

// q/k/v and gate/up: one Linear group each (ops/linear.cuh), one GEMM over the concatenated
// weights in bf16 when they are contiguous.
static void qkv_forward(LlamaGpu *m, GpuCtx *ctx, int l, const bf16 *ln1, bf16 *qkv) {
    const LinearGroup g = linear_group(m, l, LIN_QKV);
    linear_forward(&m->lin, ctx, qkv, ln1, &g, m->B * m->T);
}

static void qkv_backward(LlamaGpu *m, GpuCtx *ctx, int l, const bf16 *ln1) {
    const LinearGroup g = linear_group(m, l, LIN_QKV);
    linear_backward(&m->lin, ctx, m->d_ln, m->d_qkv, ln1, &g, m->B * m->T);
}

static void gu_forward(LlamaGpu *m, GpuCtx *ctx, int l, const bf16 *ln2, bf16 *gu) {
    const LinearGroup g = linear_group(m, l, LIN_GU);
    linear_forward(&m->lin, ctx, gu, ln2, &g, m->B * m->T);
}

static void gu_backward(LlamaGpu *m, GpuCtx *ctx, int l, const bf16 *ln2) {
    const LinearGroup g = linear_group(m, l, LIN_GU);
    linear_backward(&m->lin, ctx, m->d_ln, m->d_gu, ln2, &g, m->B * m->T);
}

double llama_gpu_forward(LlamaGpu *m, GpuCtx *ctx, float dloss, int *n_valid) {
    const LlamaConfig *c = &m->cfg;
    Dims d = dims(c, m->B, m->T);
    cudaStream_t s = ctx->stream;
    const int N = (int)d.N, D = (int)d.D, B = m->B, T = m->T, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
    const float eps = c->rms_norm_eps;
    const int NL = c->n_layers;
    if (m->zero3) {  // the global tensors, and layer 0 (used by the embedding's fused norm)
        lg_zero3_fetch(m, ctx, NL);
        lg_zero3_fetch(m, ctx, 0);
        lg_zero3_use(m, ctx, NL);
        lg_zero3_use(m, ctx, 0);
    }
    // After an overlapped step, each stage's weights are waited for just before their first use
    // (lg_optim_use: stage 0 the embedding, 1 + l layer l, n_layers + 1 the final norm and LM head).
    // Never with ZeRO-3 (lg_optim_init: no overlap with ZeRO): its gathers read the shard with no
    // wait for the optimizer stream.
    // ZeRO-1/2 --zero-gather-overlap: each bucket's all-gather is waited for just before its first use
    // (lg_zg_use: nothing once waited): the global tensors here, layer l's before the norm that reads
    // its ln1.
    lg_optim_use(m, ctx, 0);
    lg_zg_use(m, ctx, NL);
    embedding_forward(m->layers[0].resid, m->tokens, m->w.wte, N, D, s);
    lg_optim_use(m, ctx, 1);
    lg_zg_use(m, ctx, 0);
    rmsnorm_forward(m->layers[0].ln1, m->layers[0].ln1_rstd, m->layers[0].resid, m->wl[0].ln1, N, D, eps, s);
    for (int l = 0; l < NL; l++) {
        GpuLayerActs *L = &m->layers[l];
        const LlamaWeightsBf16Layer *W = &m->wl[l];
        const LinearGroup go = linear_group(m, l, LIN_O), gd = linear_group(m, l, LIN_DOWN);
        // ZeRO-3: layer l + 1's gather runs while this layer computes; its first weight (ln1) is
        // read by this layer's last kernel
        if (m->zero3 && l + 1 < NL) lg_zero3_fetch(m, ctx, l + 1);
        qkv_forward(m, ctx, l, L->ln1, L->qkv);
        rope_forward(L->qkv, m->inv_freq, B, T, H, KV, hd, 0, s);
        attention_forward(ctx, L->attn, L->lse, L->qkv, B, T, H, KV, hd, m->opts.attn);
        linear_forward(&m->lin, ctx, m->scratch_d, L->attn, &go, N);
        residual_rmsnorm_forward(L->resid_mid, L->ln2, L->ln2_rstd, L->resid, m->scratch_d, W->ln2, N, D, eps, s);
        gu_forward(m, ctx, l, L->ln2, L->gu);
        swiglu_forward(L->act, L->gu, N, (int)d.F, s);
        linear_forward(&m->lin, ctx, m->scratch_d, L->act, &gd, N);
        lg_optim_use(m, ctx, l + 2);  // layer l + 1's ln1, or the final norm (and an untied LM head)
        if (l + 1 < NL) {
            GpuLayerActs *Ln = &m->layers[l + 1];
            if (m->zero3) lg_zero3_use(m, ctx, l + 1);
            lg_zg_use(m, ctx, l + 1);
            residual_rmsnorm_forward(Ln->resid, Ln->ln1, Ln->ln1_rstd, L->resid_mid, m->scratch_d, m->wl[l + 1].ln1, N,
                                     D, eps, s);
        } else {
            residual_rmsnorm_forward(m->resid_final, m->lnf, m->lnf_rstd, L->resid_mid, m->scratch_d, m->w.norm_f, N, D,
                                     eps, s);
        }
    }
    // LM head + cross-entropy, chunk by chunk over rows; with dloss the chunk's logits
    // become dlogits in place and the head's backward runs right away.
    const int V = (int)d.V, rows = (int)logits_rows(&m->opts, d.N);
    const LinearGroup head = linear_group(m, c->n_layers, 0);
    for (int r0 = 0; r0 < N; r0 += rows) {
        const int nr = N - r0 < rows ? N - r0 : rows;
        const bf16 *x = m->lnf + (size_t)r0 * D;
        linear_forward(&m->lin, ctx, m->logits, x, &head, nr);
        cross_entropy_forward_backward(m->losses + r0, m->logits, m->targets + r0, nr, V, dloss, s);
        if (dloss != 0.0f) linear_backward(&m->lin, ctx, m->d_ln + (size_t)r0 * D, m->logits, x, &head, nr);
    }
    CUDA_CHECK(cudaMemcpyAsync(m->h_losses, m->losses, N * sizeof(float), cudaMemcpyDeviceToHost, s));
    lg_sync(m, ctx, "the forward pass's losses (compute stream)");
    // Ignored rows have loss 0, so a fixed-order sum over all rows is the sum over valid ones.
    double sum = 0;
    for (int i = 0; i < N; i++) sum += m->h_losses[i];
    if (n_valid) *n_valid = m->n_valid;
    return sum;
}

void llama_gpu_backward(LlamaGpu *m, GpuCtx *ctx) {
    const LlamaConfig *c = &m->cfg;
    Dims d = dims(c, m->B, m->T);
    cudaStream_t s = ctx->stream;
    const int N = (int)d.N, D = (int)d.D, F = (int)d.F, B = m->B, T = m->T, H = c->n_heads, KV = c->n_kv_heads,
              hd = c->head_dim;
    const float eps = c->rms_norm_eps;
    llama_gpu_optim_wait(m, ctx);  // (nothing pending: the forward before waited for every stage)
    llama_gpu_params_wait_all(m, ctx);  // (likewise for every bucket's all-gather)
    const int NL = c->n_layers;
    if (m->zero3) {  // the global tensors and the last layer are normally still held from the forward
        lg_zero3_fetch(m, ctx, NL);
        lg_zero3_fetch(m, ctx, NL - 1);
        lg_zero3_use(m, ctx, NL);
    }
    // d_ln holds d loss / d lnf from the LM head.
    rmsnorm_backward(m->d_resid, m->g.norm_f, m->norm_scratch, m->d_ln, nullptr, m->resid_final, m->w.norm_f,
                     m->lnf_rstd, N, D, s);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        GpuLayerActs *L = &m->layers[l];
        const LlamaWeightsBf16Layer *W = &m->wl[l];
        LlamaWeightsLayer *G = &m->gl[l];
        const LinearGroup go = linear_group(m, l, LIN_O), gd = linear_group(m, l, LIN_DOWN);
        if (m->zero3) {  // this layer's weights; layer l - 1's gather overlaps this layer's backward
            lg_zero3_use(m, ctx, l);
            if (l > 0) lg_zero3_fetch(m, ctx, l - 1);
        }
        if (m->opts.recompute_norm) {
            rmsnorm_forward(L->ln2, L->ln2_rstd, L->resid_mid, W->ln2, N, D, eps, s);
            rmsnorm_forward(L->ln1, L->ln1_rstd, L->resid, W->ln1, N, D, eps, s);
        }
        // Recompute what forward did not keep, exactly as forward computed it (every
        // kernel involved is deterministic, so gradients do not change by a bit).
        if (m->opts.recompute_ffn) gu_forward(m, ctx, l, L->ln2, L->gu);
        if (m->opts.recompute_swiglu || m->opts.recompute_ffn) swiglu_forward(L->act, L->gu, N, F, s);
        if (m->opts.recompute_attn) {
            qkv_forward(m, ctx, l, L->ln1, L->qkv);
            rope_forward(L->qkv, m->inv_freq, B, T, H, KV, hd, 0, s);
            attention_forward(ctx, L->attn, L->lse, L->qkv, B, T, H, KV, hd, m->opts.attn);
        }
        // MLP: out = resid_mid + down(silu(gate) * up)
        linear_backward(&m->lin, ctx, m->d_act, m->d_resid, L->act, &gd, N);
        swiglu_backward(m->d_gu, m->d_act, L->gu, N, F, s);
        gu_backward(m, ctx, l, L->ln2);
        rmsnorm_backward(m->d_resid, G->ln2, m->norm_scratch, m->d_ln, m->d_resid, L->resid_mid, W->ln2, L->ln2_rstd, N,
                         D, s);
        // attention: resid_mid = resid + o_proj(attn(rope(qkv(ln1))))
        linear_backward(&m->lin, ctx, m->d_attn, m->d_resid, L->attn, &go, N);
        attention_backward(ctx, m->d_qkv, m->d_attn, L->qkv, L->attn, L->lse, B, T, H, KV, hd, m->opts.attn_bwd);
        rope_backward(m->d_qkv, m->inv_freq, B, T, H, KV, hd, 0, s);
        qkv_backward(m, ctx, l, L->ln1);
        rmsnorm_backward(m->d_resid, G->ln1, m->norm_scratch, m->d_ln, m->d_resid, L->resid, W->ln1, L->ln1_rstd, N, D,
                         s);
        if (m->grads_ready) m->grads_ready(m->grads_ready_arg, l);
        if (lg_streaming(m)) lg_offload_queue_down(m, m->grads_stream ? m->grads_stream : s, l);
    }
    embedding_backward(m->g.wte, m->d_resid, m->emb_pos, m->emb_start, m->emb_token, m->n_buckets, D, s);
    if (m->grads_ready) m->grads_ready(m->grads_ready_arg, -1);
    if (lg_streaming(m)) lg_offload_queue_down(m, m->grads_stream ? m->grads_stream : s, c->n_layers);
}

void llama_gpu_zero_grads(LlamaGpu *m, GpuCtx *ctx) {
    if (m->grads_zero_queued) {  // the overlapped step zeroed them after each stage's update
        m->grads_zero_queued = 0;
        return;
    }
    CUDA_CHECK(cudaMemsetAsync(m->grads, 0, m->tab.total * sizeof(float), ctx->stream));
}

void llama_gpu_logits_at(LlamaGpu *m, GpuCtx *ctx, int b, int pos, float *out) {
    Dims d = dims(&m->cfg, m->B, m->T);
    CHECK(b >= 0 && b < m->B && pos >= 0 && pos < m->T, "logits_at(%d, %d) outside the %d x %d batch", b, pos, m->B, m->T);
    const int V = (int)d.V, D = (int)d.D;
    const bf16 *x = m->lnf + ((size_t)b * m->T + pos) * D;
    const LinearGroup head = linear_group(m, m->cfg.n_layers, 0);
    llama_gpu_optim_wait(m, ctx);
    llama_gpu_params_wait_all(m, ctx);  // (the forward before waited; a caller without one did not)
    if (m->zero3) lg_zero3_use(m, ctx, m->cfg.n_layers);  // held since the forward (no gather here: one rank calls this)
    linear_forward(&m->lin, ctx, m->logits, x, &head, 1);
    cast_bf16_to_f32(m->logits_f32, m->logits, (size_t)V, ctx->stream);
    CUDA_CHECK(cudaMemcpyAsync(out, m->logits_f32, V * sizeof(float), cudaMemcpyDeviceToHost, ctx->stream));
    lg_sync(m, ctx, "the sampled logits (compute stream)");
}

int llama_gpu_linears(const LlamaGpu *m, int l, LinearGroup *out, const bf16 **inputs) {
    CHECK(l >= 0 && l <= m->cfg.n_layers, "llama_gpu_linears: layer %d of %d", l, m->cfg.n_layers);
    const int n = linear_groups(m, l, out);
    if (inputs) {
        const GpuLayerActs *L = l < m->cfg.n_layers && m->layers ? &m->layers[l] : nullptr;
        if (l == m->cfg.n_layers) inputs[0] = m->lnf;
        else {
            inputs[LIN_QKV] = L ? L->ln1 : nullptr, inputs[LIN_O] = L ? L->attn : nullptr;
            inputs[LIN_GU] = L ? L->ln2 : nullptr, inputs[LIN_DOWN] = L ? L->act : nullptr;
        }
    }
    return n;
}

void llama_gpu_print_linears(const LlamaGpu *m, FILE *f) {
    const LinearRecipe r = m->opts.recipe;
    if (r == LINEAR_BF16) {
        fprintf(f, "linears: bf16 (--recipe bf16)\n");
        return;
    }
    LinearGroup g[LIN_PER_LAYER];
    char why[256];
    fprintf(f, "linears (--recipe %s, torchao's module filter; the same in all %d layers):\n", linear_recipe_name(r),
            m->cfg.n_layers);
    for (int fp8 = 1; fp8 >= 0; fp8--) {
        int count = 0;
        for (int l : {0, m->cfg.n_layers}) {  // every layer has layer 0's shapes
            const int n = linear_groups(m, l, g);
            for (int i = 0; i < n; i++)
                for (int p = 0; p < g[i].nparts; p++) {
                    const LinearPart *P = &g[i].part[p];
                    if (linear_group_part_fp8(r, &g[i], p, why, sizeof why) != fp8) continue;
                    if (fp8) fprintf(f, "%s%s %d->%d", count ? ", " : "  fp8:  ", P->name, g[i].K, P->M);
                    else fprintf(f, "  bf16: %s %d->%d (%s)\n", P->name, g[i].K, P->M, why);
                    count++;
                }
        }
        if (fp8) fprintf(f, count ? "\n" : "  fp8:  none (no Linear has fp8-compatible dimensions)\n");
    }
    if (linear_recipe_is_mx(r))
        fprintf(f, "  MX GEMMs: %s\n", mx_gemm_path_name(m->lin.mx_native ? MX_GEMM_NATIVE : MX_GEMM_EMULATED));
}
