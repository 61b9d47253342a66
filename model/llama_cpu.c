#include "llama_cpu.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../ops/attention.h"
#include "../ops/cross_entropy.h"
#include "../ops/embedding.h"
#include "../ops/matmul.h"
#include "../ops/rmsnorm.h"
#include "../ops/rope.h"
#include "../ops/swiglu.h"

// Shape names used by the activation X-macros.
#define ACT_DIMS(c, B_, T_)                                                                                 \
    const size_t B = (size_t)(B_), T = (size_t)(T_), N = B * T, D = (size_t)(c)->hidden_size,            \
                 F = (size_t)(c)->intermediate_size, V = (size_t)(c)->vocab_size, H = (size_t)(c)->n_heads, \
                 HD = (size_t)(c)->head_dim, QD = H * HD, KVD = (size_t)(c)->n_kv_heads * HD;           \
    (void)B; (void)T; (void)N; (void)D; (void)F; (void)V; (void)H; (void)HD; (void)QD; (void)KVD

#define ACT_COUNT_(name, size) total += ((size) + 15) / 16 * 16;
#define ACT_CARVE_(name, size) dst->name = p; p += ((size) + 15) / 16 * 16;

void llama_acts_init(LlamaActs *a, const LlamaConfig *c, int B_, int T_) {
    CHECK(B_ > 0 && T_ > 0, "batch size and sequence length must be positive (got B=%d, T=%d)", B_, T_);
    memset(a, 0, sizeof *a);
    ACT_DIMS(c, B_, T_);
    size_t total = 0;
    LLAMA_TOP_ACTS(ACT_COUNT_)
    for (int l = 0; l < c->n_layers; l++) { LLAMA_LAYER_ACTS(ACT_COUNT_) }
    a->B = B_;
    a->T = T_;
    a->total = total;
    a->mem = ao_calloc(total, sizeof(float));
    a->layers = ao_calloc((size_t)c->n_layers, sizeof *a->layers);
    float *p = a->mem;
    LlamaActs *dst = a;
    LLAMA_TOP_ACTS(ACT_CARVE_)
    for (int l = 0; l < c->n_layers; l++) {
        LlamaLayerActs *dst = &a->layers[l];
        LLAMA_LAYER_ACTS(ACT_CARVE_)
    }
    rope_inv_freq_cpu(a->inv_freq, c->head_dim, &c->rope);
}

void llama_acts_free(LlamaActs *a) {
    free(a->mem);
    free(a->layers);
    memset(a, 0, sizeof *a);
}

static void add_inplace(float *y, const float *x, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

float llama_forward_cpu(const LlamaModel *m, LlamaActs *a, const int32_t *tokens, const int32_t *targets) {
    const LlamaConfig *c = &m->cfg;
    ACT_DIMS(c, a->B, a->T);
    const LlamaWeights *w = &m->w;
    const int Bi = a->B, Ti = a->T, Ni = (int)N;
    embedding_forward_cpu(a->layers[0].x_in, tokens, w->wte, Ni, (int)V, (int)D);
    for (int l = 0; l < c->n_layers; l++) {
        LlamaLayerActs *L = &a->layers[l];
        const LlamaWeightsLayer *W = &w->layers[l];
        float *x_out = l + 1 < c->n_layers ? a->layers[l + 1].x_in : a->x_final;
        rmsnorm_forward_cpu(L->ln1, L->ln1_rstd, L->x_in, W->ln1, Ni, (int)D, c->rms_norm_eps);
        matmul_forward_cpu(L->q, L->ln1, W->wq, W->bq, Ni, (int)D, (int)QD);
        matmul_forward_cpu(L->k, L->ln1, W->wk, W->bk, Ni, (int)D, (int)KVD);
        matmul_forward_cpu(L->v, L->ln1, W->wv, W->bv, Ni, (int)D, (int)KVD);
        rope_forward_cpu(L->q, L->q, a->inv_freq, Bi, Ti, c->n_heads, c->head_dim, 0);
        rope_forward_cpu(L->k, L->k, a->inv_freq, Bi, Ti, c->n_kv_heads, c->head_dim, 0);
        attention_forward_cpu(L->attn_out, L->att, L->q, L->k, L->v, Bi, Ti, c->n_heads, c->n_kv_heads, c->head_dim);
        matmul_forward_cpu(L->x_mid, L->attn_out, W->wo, NULL, Ni, (int)QD, (int)D);
        add_inplace(L->x_mid, L->x_in, N * D);
        rmsnorm_forward_cpu(L->ln2, L->ln2_rstd, L->x_mid, W->ln2, Ni, (int)D, c->rms_norm_eps);
        matmul_forward_cpu(L->gate, L->ln2, W->wg, NULL, Ni, (int)D, (int)F);
        matmul_forward_cpu(L->up, L->ln2, W->wu, NULL, Ni, (int)D, (int)F);
        swiglu_forward_cpu(L->act, L->gate, L->up, N * F);
        matmul_forward_cpu(x_out, L->act, W->wd, NULL, Ni, (int)F, (int)D);
        add_inplace(x_out, L->x_mid, N * D);
    }
    rmsnorm_forward_cpu(a->lnf, a->lnf_rstd, a->x_final, w->norm_f, Ni, (int)D, c->rms_norm_eps);
    matmul_forward_cpu(a->logits, a->lnf, w->lm_head, NULL, Ni, (int)D, (int)V);
    a->n_valid = 0;
    if (!targets) return 0.0f;
    return cross_entropy_forward_cpu(a->losses, a->logits, targets, Ni, (int)V, &a->n_valid);
}

void llama_backward_cpu(const LlamaModel *m, LlamaActs *a, float *grads, const int32_t *tokens,
                        const int32_t *targets) {
    const LlamaConfig *c = &m->cfg;
    ACT_DIMS(c, a->B, a->T);
    CHECK(targets, "llama_backward_cpu needs targets");
    if (a->n_valid == 0) return;  // every target ignored: the loss does not depend on the weights
    const LlamaWeights *w = &m->w;
    LlamaWeights g;
    LlamaWeightsLayer *gl = ao_calloc((size_t)c->n_layers, sizeof *gl);
    LlamaWeights_point(&g, grads, &m->tab, c, gl);
    const int Bi = a->B, Ti = a->T, Ni = (int)N;

    memset(a->d_logits, 0, N * V * sizeof(float));
    cross_entropy_backward_cpu(a->d_logits, a->logits, targets, Ni, (int)V, 1.0f / (float)a->n_valid);
    memset(a->d_ln, 0, N * D * sizeof(float));
    matmul_backward_cpu(a->d_ln, g.lm_head, NULL, a->d_logits, a->lnf, w->lm_head, Ni, (int)D, (int)V);
    memset(a->d_res, 0, N * D * sizeof(float));
    rmsnorm_backward_cpu(a->d_res, g.norm_f, a->d_ln, a->x_final, w->norm_f, a->lnf_rstd, Ni, (int)D);

    // d_res holds d(loss)/d(residual) at the current layer's output and walks down.
    for (int l = c->n_layers - 1; l >= 0; l--) {
        const LlamaLayerActs *L = &a->layers[l];
        const LlamaWeightsLayer *W = &w->layers[l];
        LlamaWeightsLayer *G = &gl[l];
        // MLP branch: out = x_mid + down(silu(gate(ln2)) * up(ln2))
        memset(a->d_act, 0, N * F * sizeof(float));
        matmul_backward_cpu(a->d_act, G->wd, NULL, a->d_res, L->act, W->wd, Ni, (int)F, (int)D);
        memset(a->d_gate, 0, N * F * sizeof(float));
        memset(a->d_up, 0, N * F * sizeof(float));
        swiglu_backward_cpu(a->d_gate, a->d_up, a->d_act, L->gate, L->up, N * F);
        memset(a->d_ln, 0, N * D * sizeof(float));
        matmul_backward_cpu(a->d_ln, G->wg, NULL, a->d_gate, L->ln2, W->wg, Ni, (int)D, (int)F);
        matmul_backward_cpu(a->d_ln, G->wu, NULL, a->d_up, L->ln2, W->wu, Ni, (int)D, (int)F);
        rmsnorm_backward_cpu(a->d_res, G->ln2, a->d_ln, L->x_mid, W->ln2, L->ln2_rstd, Ni, (int)D);
        // attention branch: x_mid = x_in + o_proj(attn(rope(q(ln1)), rope(k(ln1)), v(ln1)))
        memset(a->d_attn, 0, N * QD * sizeof(float));
        matmul_backward_cpu(a->d_attn, G->wo, NULL, a->d_res, L->attn_out, W->wo, Ni, (int)QD, (int)D);
        memset(a->d_q, 0, N * QD * sizeof(float));
        memset(a->d_k, 0, N * KVD * sizeof(float));
        memset(a->d_v, 0, N * KVD * sizeof(float));
        attention_backward_cpu(a->d_q, a->d_k, a->d_v, a->d_attn, L->q, L->k, L->v, L->att, Bi, Ti, c->n_heads,
                               c->n_kv_heads, c->head_dim);
        rope_backward_cpu(a->d_q, a->d_q, a->inv_freq, Bi, Ti, c->n_heads, c->head_dim, 0);
        rope_backward_cpu(a->d_k, a->d_k, a->inv_freq, Bi, Ti, c->n_kv_heads, c->head_dim, 0);
        memset(a->d_ln, 0, N * D * sizeof(float));
        matmul_backward_cpu(a->d_ln, G->wq, G->bq, a->d_q, L->ln1, W->wq, Ni, (int)D, (int)QD);
        matmul_backward_cpu(a->d_ln, G->wk, G->bk, a->d_k, L->ln1, W->wk, Ni, (int)D, (int)KVD);
        matmul_backward_cpu(a->d_ln, G->wv, G->bv, a->d_v, L->ln1, W->wv, Ni, (int)D, (int)KVD);
        rmsnorm_backward_cpu(a->d_res, G->ln1, a->d_ln, L->x_in, W->ln1, L->ln1_rstd, Ni, (int)D);
    }
    embedding_backward_cpu(g.wte, a->d_res, tokens, Ni, (int)V, (int)D);
    free(gl);
}
