// A llama / qwen2 architecture GGUF as an fp32 LlamaModel with Hugging Face tensor names.
// llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) reorders the rows of
// q_proj and k_proj for Llama so that RoPE pairs are interleaved:
//   gguf row h*hd + 2*i + j  =  HF row h*hd + j*(hd/2) + i     (i < hd/2, j in {0, 1})
// with h running over n_heads for q and n_kv_heads for k. We undo it on load. Qwen2 is not
// permuted by the converter.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "gguf.h"
#include "../ops/rope.h"

static const GgufKV *kv_arch(const GgufFile *g, const char *arch, const char *suffix) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return gguf_find(g, key);
}

static int get_int(const GgufFile *g, const char *arch, const char *suffix, int required, int dflt) {
    const GgufKV *kv = kv_arch(g, arch, suffix);
    uint64_t v;
    if (!kv) {
        CHECK(!required, "%s: metadata %s.%s is missing", g->path, arch, suffix);
        return dflt;
    }
    CHECK(gguf_kv_u64(kv, &v) && v < (1u << 30), "%s: %s.%s is not a usable integer", g->path, arch, suffix);
    return (int)v;
}

static double get_f(const GgufFile *g, const char *arch, const char *suffix, double dflt) {
    const GgufKV *kv = kv_arch(g, arch, suffix);
    double v;
    if (!kv) return dflt;
    CHECK(gguf_kv_f64(kv, &v), "%s: %s.%s is not a number", g->path, arch, suffix);
    return v;
}

static void unpermute(float *w, int n_head, int hd, int cols) {
    float *tmp = ao_malloc((size_t)hd * (size_t)cols * sizeof(float));
    for (int h = 0; h < n_head; h++) {
        float *blk = w + (size_t)h * hd * cols;
        for (int i = 0; i < hd / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(tmp + ((size_t)j * (hd / 2) + i) * cols, blk + ((size_t)2 * i + j) * cols, (size_t)cols * sizeof(float));
        memcpy(blk, tmp, (size_t)hd * cols * sizeof(float));
    }
    free(tmp);
}

// llama.cpp stores Llama 3.1/3.2 rope scaling as rope_freqs: per-frequency divisors f_i of the
// default inverse frequencies, made by HF's llama3 rule from (factor, low_freq_factor,
// high_freq_factor, original_max_position_embeddings). The factors fix those four only up to
// a common scale of (orig, low, high), so with low = 1: factor = max f_i, and the blended band
// gives s_i = (1/f_i - 1/factor) / (1 - 1/factor) = (orig/wavelen_i - 1) / (high - 1), linear
// in 1/wavelen_i; two blended entries give high and orig. The recovered rule must reproduce
// every f_i, or the file is refused.
static void rope_from_factors(LlamaConfig *c, const GgufTensor *rf, const char *path) {
    const int half = c->head_dim / 2;
    char err[256];
    CHECK(rf->ndim == 1 && rf->ne[0] == (uint64_t)half, "%s: rope_freqs.weight has %llu entries, expected head_dim/2 = %d",
          path, (unsigned long long)rf->ne[0], half);
    float *f = ao_malloc((size_t)half * sizeof(float)), *inv_d = ao_malloc((size_t)half * sizeof(float)),
          *inv = ao_malloc((size_t)half * sizeof(float));
    CHECK(gguf_dequantize(rf, f, err, sizeof err), "%s: rope_freqs.weight: %s", path, err);
    RopeParams d = {ROPE_DEFAULT, c->rope.theta, 0, 0, 0, 0};
    rope_inv_freq_cpu(inv_d, c->head_dim, &d);
    double factor = 1;
    for (int i = 0; i < half; i++) {
        CHECK(f[i] >= 1.0f && f[i] < 1e6f, "%s: rope_freqs.weight[%d] = %g is not a llama3 divisor (>= 1)", path, i, f[i]);
        if (f[i] > factor) factor = f[i];
    }
    // Band edges the rule must respect (low = 1: orig is the low-band edge wavelength).
    double max_nonlo = 0, min_lo = INFINITY, max_hi = 0, min_nonhi = INFINITY, s_b = -1, w_b = 0;
    for (int i = 0; i < half; i++) {
        const double w = 2 * M_PI / inv_d[i];
        const int hi = f[i] <= 1.0f + 1e-6f, lo = f[i] >= factor * (1 - 1e-6);
        if (lo) min_lo = fmin(min_lo, w);
        else max_nonlo = fmax(max_nonlo, w);
        if (hi) max_hi = fmax(max_hi, w);
        else min_nonhi = fmin(min_nonhi, w);
        if (!hi && !lo && s_b < 0) {  // first blended entry: s = (orig/w - 1) / (high - 1)
            s_b = (1 / (double)f[i] - 1 / factor) / (1 - 1 / factor);
            w_b = w;
        }
    }
    const double lo_end = fmin(min_lo, 1e7);
    int found = 0;
    // Meta's Llama 3.x use high_freq_factor 4: try the original length that implies first
    // (the same frequencies result either way; this only picks the conventional numbers).
    const double orig4 = s_b > 0 ? floor(w_b * (3 * s_b + 1) + 0.5) : 8192;
    for (double k = -1, orig = orig4; !found && orig <= lo_end; orig = fmax(1, ceil(max_nonlo)) + ++k) {
        double high = s_b > 0 ? 1 + (orig / w_b - 1) / s_b : orig / (0.5 * (max_hi + fmin(min_nonhi, orig)));
        if (k < 0 && s_b <= 0) high = 4;
        if (!(high > 1 && high < 1e6)) continue;
        c->rope.type = ROPE_LLAMA3;
        c->rope.factor = (float)factor;
        c->rope.low_freq_factor = 1.0f;
        c->rope.high_freq_factor = (float)high;
        c->rope.original_max_position_embeddings = (int)orig;
        rope_inv_freq_cpu(inv, c->head_dim, &c->rope);
        found = 1;
        for (int i = 0; i < half && found; i++) {
            double want = (double)inv_d[i] / f[i];
            found = fabs(inv[i] - want) <= 1e-5 * want;
        }
    }
    CHECK(found, "%s: rope_freqs.weight (factor %g) is not reproduced by llama3 rope scaling with any "
          "original_max_position_embeddings; this scaling is not supported", path, factor);
    free(f);
    free(inv_d);
    free(inv);
}

void gguf_load_llama(const char *path, LlamaModel *m, Tokenizer **tok, char **chat_template) {
    GgufFile g;
    char err[1024];
    CHECK(gguf_open(&g, path, err, sizeof err), "%s", err);
    const GgufKV *akv = gguf_find(&g, "general.architecture");
    CHECK(akv && akv->type == GGUF_T_STRING, "%s: general.architecture is missing", path);
    GgufStr as = gguf_kv_str(akv, 0);
    char arch[32];
    snprintf(arch, sizeof arch, "%.*s", (int)(as.n < 31 ? as.n : 31), as.p);
    CHECK(!strcmp(arch, "llama") || !strcmp(arch, "qwen2"), "%s: architecture \"%s\" is not supported (llama, qwen2)",
          path, arch);
    const GgufKV *rs = kv_arch(&g, arch, "rope.scaling.type");
    if (rs) {
        GgufStr s = gguf_kv_str(rs, 0);
        CHECK(s.n == 4 && !memcmp(s.p, "none", 4), "%s: rope scaling \"%.*s\" is not supported", path, (int)s.n, s.p);
    }

    LlamaConfig c;
    memset(&c, 0, sizeof c);
    c.arch = strcmp(arch, "qwen2") == 0 ? ARCH_QWEN2 : ARCH_LLAMA;
    c.hidden_size = get_int(&g, arch, "embedding_length", 1, 0);
    c.intermediate_size = get_int(&g, arch, "feed_forward_length", 1, 0);
    c.n_layers = get_int(&g, arch, "block_count", 1, 0);
    c.n_heads = get_int(&g, arch, "attention.head_count", 1, 0);
    c.n_kv_heads = get_int(&g, arch, "attention.head_count_kv", 0, c.n_heads);
    CHECK(c.n_heads > 0, "%s: head_count is 0", path);
    c.head_dim = get_int(&g, arch, "attention.key_length", 0, get_int(&g, arch, "rope.dimension_count", 0,
                                                                     c.hidden_size / c.n_heads));
    c.max_position_embeddings = get_int(&g, arch, "context_length", 0, 2048);
    c.rms_norm_eps = (float)get_f(&g, arch, "attention.layer_norm_rms_epsilon", 1e-5);
    c.rope.type = ROPE_DEFAULT;
    c.rope.theta = (float)get_f(&g, arch, "rope.freq_base", 10000.0);
    const GgufTensor *rf = gguf_find_tensor(&g, "rope_freqs.weight");
    if (rf) rope_from_factors(&c, rf, path);
    const GgufTensor *emb = gguf_find_tensor(&g, "token_embd.weight");
    CHECK(emb && emb->ndim == 2, "%s: token_embd.weight is missing or not 2-D", path);
    c.vocab_size = (int)emb->ne[1];
    c.tie_word_embeddings = gguf_find_tensor(&g, "output.weight") == NULL;
    c.qkv_bias = gguf_find_tensor(&g, "blk.0.attn_q.bias") != NULL;
    c.bos_token_id = -1;
    uint64_t v;
    const GgufKV *bos = gguf_find(&g, "tokenizer.ggml.bos_token_id"), *eos = gguf_find(&g, "tokenizer.ggml.eos_token_id");
    if (bos && gguf_kv_u64(bos, &v) && v < (uint64_t)c.vocab_size) c.bos_token_id = (int)v;
    if (eos && gguf_kv_u64(eos, &v) && v < (uint64_t)c.vocab_size) c.eos_token_ids[c.n_eos++] = (int)v;
    snprintf(c.dtype, sizeof c.dtype, "float32");
    c.initializer_range = 0.02f;
    CHECK(config_validate(&c, err, sizeof err), "%s: %s", path, err);
    CHECK(c.arch == ARCH_QWEN2 || !c.qkv_bias, "%s: a llama GGUF with q/k/v biases is not supported", path);
    // Every type we read takes at least 4.5 bits a weight: metadata describing a bigger model
    // than the file can hold is refused before its sizes are allocated.
    CHECK(config_num_params(&c) / 2 <= g.mf.size, "%s: the metadata describes a model of %zu parameters, more than "
          "a %zu-byte file holds (corrupt metadata)", path, config_num_params(&c), g.mf.size);

    model_init(m, &c);
    // HF name -> GGUF name for every tensor of the parameter table.
    static const char *const map[][2] = {
        {"input_layernorm.weight", "attn_norm.weight"}, {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},   {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.q_proj.bias", "attn_q.bias"},       {"self_attn.k_proj.bias", "attn_k.bias"},
        {"self_attn.v_proj.bias", "attn_v.bias"},       {"self_attn.o_proj.weight", "attn_output.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},        {"mlp.down_proj.weight", "ffn_down.weight"},
    };
    int used = 0;
    for (int i = 0; i < m->tab.n; i++) {
        const ParamInfo *p = &m->tab.p[i];
        char gname[128] = "";
        if (p->layer < 0) {
            if (!strcmp(p->hf_name, "model.embed_tokens.weight")) snprintf(gname, sizeof gname, "token_embd.weight");
            else if (!strcmp(p->hf_name, "model.norm.weight")) snprintf(gname, sizeof gname, "output_norm.weight");
            else if (!strcmp(p->hf_name, "lm_head.weight")) snprintf(gname, sizeof gname, "output.weight");
        } else {
            const char *suffix = p->hf_name + strlen("model.layers.");
            suffix = strchr(suffix, '.') + 1;
            for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
                if (!strcmp(suffix, map[k][0])) snprintf(gname, sizeof gname, "blk.%d.%s", p->layer, map[k][1]);
        }
        CHECK(gname[0], "%s: no GGUF name for %s", path, p->hf_name);
        const GgufTensor *t = gguf_find_tensor(&g, gname);
        CHECK(t, "%s: tensor %s (HF %s) is missing", path, gname, p->hf_name);
        uint64_t d0 = p->ndim == 2 ? t->ne[1] : t->ne[0], d1 = p->ndim == 2 ? t->ne[0] : 1;
        CHECK(t->ndim == (uint32_t)p->ndim && d0 == (uint64_t)p->shape[0] && d1 == (uint64_t)p->shape[1],
              "%s: %s has shape [%llu, %llu], expected [%lld, %lld]", path, gname, (unsigned long long)d0,
              (unsigned long long)d1, (long long)p->shape[0], (long long)p->shape[1]);
        float *dst = m->params + p->offset;
        CHECK(gguf_dequantize(t, dst, err, sizeof err), "%s: %s: %s", path, gname, err);
        // as model_load_hf: an inf or NaN weight (or fp16 block scale) would make every logit NaN
        for (size_t j = 0; j < p->numel; j++)
            CHECK(isfinite(dst[j]), "%s: tensor %s holds a non-finite value at element %zu; the file is corrupt "
                  "(download or convert it again)", path, gname, j);
        if (c.arch == ARCH_LLAMA && !strcmp(p->field, "wq")) unpermute(dst, c.n_heads, c.head_dim, c.hidden_size);
        if (c.arch == ARCH_LLAMA && !strcmp(p->field, "wk")) unpermute(dst, c.n_kv_heads, c.head_dim, c.hidden_size);
        used++;
    }
    // Every tensor in the file must have been taken (an unknown one means an unknown model).
    used += rf != NULL;  // rope_freqs was read into the config
    CHECK((uint64_t)used == g.n_tensors, "%s: %llu tensors in the file are not part of a %s model", path, (unsigned long long)(g.n_tensors - (uint64_t)used), arch);
    LlamaWeights_point(&m->w, m->params, &m->tab, &m->cfg, m->layers);
    if (tok) *tok = tokenizer_from_gguf(&g);
    if (chat_template) {
        *chat_template = NULL;
        const GgufKV *ct = gguf_find(&g, "tokenizer.chat_template");
        if (ct && ct->type == GGUF_T_STRING) {
            GgufStr s = gguf_kv_str(ct, 0);
            *chat_template = ao_malloc((size_t)s.n + 1);
            memcpy(*chat_template, s.p, (size_t)s.n);
            (*chat_template)[s.n] = 0;
        }
    }
    gguf_close(&g);
}
