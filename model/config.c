#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/json.h"

#define CONFIG_MAX_BYTES (4u << 20)

// Field readers: return 1 and set *out (or leave the default) when the key is absent
// or null; 0 with an error naming the key when the type or range is wrong.
static int get_int(const JsonValue *o, const char *key, int required, int *out, char *err, size_t n) {
    const JsonValue *v = json_get(o, key);
    if (!v || v->type == JSON_NULL) {
        if (required) { snprintf(err, n, "config.json: required field \"%s\" is missing", key); return 0; }
        return 1;
    }
    int64_t x;
    if (!json_as_i64(v, &x) || x < -2147483647LL || x > 2147483647LL) {
        if (v->type == JSON_NUMBER)
            snprintf(err, n, "config.json: \"%s\" must be an integer in int32 range, got %.*s", key,
                     (int)(v->num_len < 40 ? v->num_len : 40), v->num_text);
        else snprintf(err, n, "config.json: \"%s\" must be an integer, got %s", key, json_type_name(v->type));
        return 0;
    }
    *out = (int)x;
    return 1;
}

static int get_num(const JsonValue *o, const char *key, double *out, char *err, size_t n) {
    const JsonValue *v = json_get(o, key);
    if (!v || v->type == JSON_NULL) return 1;
    if (v->type != JSON_NUMBER) {
        snprintf(err, n, "config.json: \"%s\" must be a number, got %s", key, json_type_name(v->type));
        return 0;
    }
    *out = v->number;
    return 1;
}

static int get_bool(const JsonValue *o, const char *key, int *out, char *err, size_t n) {
    const JsonValue *v = json_get(o, key);
    if (!v || v->type == JSON_NULL) return 1;
    if (v->type != JSON_BOOL) {
        snprintf(err, n, "config.json: \"%s\" must be true or false, got %s", key, json_type_name(v->type));
        return 0;
    }
    *out = v->boolean;
    return 1;
}

// Returns the string or NULL when absent/null; sets *bad when present but not a string.
static const char *get_str(const JsonValue *o, const char *key, int *bad) {
    const JsonValue *v = json_get(o, key);
    if (!v || v->type == JSON_NULL) return NULL;
    if (v->type != JSON_STRING) { *bad = 1; return NULL; }
    return v->str;
}

// rope_scaling (4.x) and rope_parameters (5.x) share their keys; `where` names the object.
static int parse_rope_object(LlamaConfig *c, const JsonValue *r, const char *where, char *err, size_t n) {
    if (r->type != JSON_OBJECT) {
        snprintf(err, n, "config.json: \"%s\" must be an object or null, got %s", where, json_type_name(r->type));
        return 0;
    }
    int bad = 0;
    const char *type = get_str(r, "rope_type", &bad);
    if (!type && !bad) type = get_str(r, "type", &bad);
    if (bad) { snprintf(err, n, "config.json: %s.rope_type must be a string", where); return 0; }
    double theta = -1;
    if (!get_num(r, "rope_theta", &theta, err, n)) return 0;
    if (theta != -1) {
        if (c->rope.theta > 0 && fabs(c->rope.theta - theta) > 1e-6 * theta) {
            snprintf(err, n, "config.json: rope_theta = %g disagrees with %s.rope_theta = %g", c->rope.theta, where, theta);
            return 0;
        }
        c->rope.theta = (float)theta;
    }
    if (!type || strcmp(type, "default") == 0) return 1;
    if (strcmp(type, "llama3") != 0) {
        snprintf(err, n, "config.json: %s.rope_type = \"%s\" is not supported (supported: default, llama3)", where, type);
        return 0;
    }
    double factor = NAN, lo = NAN, hi = NAN;
    int orig = 0;
    if (!get_num(r, "factor", &factor, err, n) || !get_num(r, "low_freq_factor", &lo, err, n) ||
        !get_num(r, "high_freq_factor", &hi, err, n) ||
        !get_int(r, "original_max_position_embeddings", 1, &orig, err, n))
        return 0;
    if (!(factor >= 1.0 && factor < 1e6) || !(lo > 0 && lo < 1e6) || !(hi > lo && hi < 1e6) || orig <= 0) {
        snprintf(err, n,
                 "config.json: %s for llama3 needs factor >= 1, 0 < low_freq_factor < high_freq_factor and "
                 "original_max_position_embeddings > 0 (got factor=%g low=%g high=%g orig=%d)",
                 where, factor, lo, hi, orig);
        return 0;
    }
    c->rope.type = ROPE_LLAMA3;
    c->rope.factor = (float)factor;
    c->rope.low_freq_factor = (float)lo;
    c->rope.high_freq_factor = (float)hi;
    c->rope.original_max_position_embeddings = orig;
    return 1;
}

static int refuse_true(const JsonValue *root, const char *key, const char *why, char *err, size_t n) {
    int b = 0;
    if (!get_bool(root, key, &b, err, n)) return 0;
    if (b) { snprintf(err, n, "config.json: \"%s\" = true is not supported (%s)", key, why); return 0; }
    return 1;
}

static int parse_root(LlamaConfig *c, const JsonValue *root, char *err, size_t n) {
    memset(c, 0, sizeof *c);
    if (root->type != JSON_OBJECT) { snprintf(err, n, "config.json: top level must be an object"); return 0; }
    int bad = 0;
    const char *mt = get_str(root, "model_type", &bad);
    if (bad || !mt) { snprintf(err, n, "config.json: \"model_type\" (a string) is required"); return 0; }
    if (strcmp(mt, "llama") == 0) c->arch = ARCH_LLAMA;
    else if (strcmp(mt, "qwen2") == 0) c->arch = ARCH_QWEN2;
    else {
        snprintf(err, n, "config.json: model_type = \"%s\" is not supported (supported: llama, qwen2)", mt);
        return 0;
    }
    c->qkv_bias = c->arch == ARCH_QWEN2;
    c->max_position_embeddings = c->arch == ARCH_QWEN2 ? 32768 : 2048;
    c->rope.type = ROPE_DEFAULT;
    c->bos_token_id = -1;
    c->head_dim = 0;
    c->n_kv_heads = 0;
    if (!get_int(root, "vocab_size", 1, &c->vocab_size, err, n) ||
        !get_int(root, "hidden_size", 1, &c->hidden_size, err, n) ||
        !get_int(root, "intermediate_size", 1, &c->intermediate_size, err, n) ||
        !get_int(root, "num_hidden_layers", 1, &c->n_layers, err, n) ||
        !get_int(root, "num_attention_heads", 1, &c->n_heads, err, n) ||
        !get_int(root, "num_key_value_heads", 0, &c->n_kv_heads, err, n) ||
        !get_int(root, "head_dim", 0, &c->head_dim, err, n) ||
        !get_int(root, "max_position_embeddings", 0, &c->max_position_embeddings, err, n) ||
        !get_int(root, "bos_token_id", 0, &c->bos_token_id, err, n))
        return 0;
    if (c->n_kv_heads == 0) c->n_kv_heads = c->n_heads;
    if (c->head_dim == 0 && c->n_heads > 0) {
        if (c->hidden_size % c->n_heads != 0) {
            snprintf(err, n, "config.json: hidden_size %d is not divisible by num_attention_heads %d and no head_dim is given",
                     c->hidden_size, c->n_heads);
            return 0;
        }
        c->head_dim = c->hidden_size / c->n_heads;
    }
    double eps = 1e-6, theta = -1, init = 0.02, drop = 0;
    if (!get_num(root, "rms_norm_eps", &eps, err, n) || !get_num(root, "rope_theta", &theta, err, n) ||
        !get_num(root, "initializer_range", &init, err, n) || !get_num(root, "attention_dropout", &drop, err, n))
        return 0;
    c->rms_norm_eps = (float)eps;
    c->rope.theta = theta > 0 ? (float)theta : -1.0f;
    c->initializer_range = (float)init;
    if (drop != 0) { snprintf(err, n, "config.json: attention_dropout = %g is not supported (only 0)", drop); return 0; }
    if (!get_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, err, n)) return 0;

    const char *act = get_str(root, "hidden_act", &bad);
    if (bad || (act && strcmp(act, "silu") != 0)) {
        snprintf(err, n, "config.json: hidden_act = \"%s\" is not supported (only silu)", act ? act : "(not a string)");
        return 0;
    }
    if (!refuse_true(root, "mlp_bias", "Llama MLP without biases only", err, n)) return 0;
    if (c->arch == ARCH_LLAMA && !refuse_true(root, "attention_bias", "use model_type qwen2 for q/k/v biases", err, n))
        return 0;
    if (!refuse_true(root, "use_sliding_window", "sliding-window attention is not implemented", err, n)) return 0;
    // transformers' per-layer attention kinds (Qwen2 and newer configs): every layer must be full
    // attention; running a sliding-window layer as full attention would be a silently wrong model.
    const JsonValue *lt = json_get(root, "layer_types");
    if (lt && lt->type != JSON_NULL) {
        if (lt->type != JSON_ARRAY || lt->n != (size_t)c->n_layers) {
            snprintf(err, n, "config.json: \"layer_types\" must be a list of num_hidden_layers = %d strings", c->n_layers);
            return 0;
        }
        for (size_t i = 0; i < lt->n; i++) {
            const JsonValue *v = &lt->items[i];
            if (v->type != JSON_STRING || strcmp(v->str, "full_attention") != 0) {
                snprintf(err, n, "config.json: layer_types[%zu] = \"%.40s\" is not supported (only \"full_attention\"; "
                         "sliding-window attention is not implemented)", i, v->type == JSON_STRING ? v->str : "(not a string)");
                return 0;
            }
        }
    }

    const JsonValue *rs = json_get(root, "rope_scaling");
    if (rs && rs->type != JSON_NULL && !parse_rope_object(c, rs, "rope_scaling", err, n)) return 0;
    const JsonValue *rp = json_get(root, "rope_parameters");
    if (rp && rp->type != JSON_NULL && !parse_rope_object(c, rp, "rope_parameters", err, n)) return 0;
    if (c->rope.theta <= 0) c->rope.theta = 10000.0f;

    const JsonValue *eos = json_get(root, "eos_token_id");
    if (eos && eos->type == JSON_ARRAY) {
        if (eos->n > CONFIG_MAX_EOS) { snprintf(err, n, "config.json: eos_token_id lists %zu ids (at most %d)", eos->n, CONFIG_MAX_EOS); return 0; }
        for (size_t i = 0; i < eos->n; i++) {
            int64_t x;
            if (!json_as_i64(&eos->items[i], &x) || x < 0 || x > 2147483647LL) {
                snprintf(err, n, "config.json: eos_token_id[%zu] must be a non-negative integer", i);
                return 0;
            }
            c->eos_token_ids[c->n_eos++] = (int)x;
        }
    } else if (eos && eos->type != JSON_NULL) {
        int e;
        if (!get_int(root, "eos_token_id", 0, &e, err, n)) return 0;
        c->eos_token_ids[c->n_eos++] = e;
    }

    const char *dt = get_str(root, "dtype", &bad);
    if (!dt) dt = get_str(root, "torch_dtype", &bad);
    if (dt) {
        if (strcmp(dt, "float32") && strcmp(dt, "bfloat16") && strcmp(dt, "float16")) {
            snprintf(err, n, "config.json: dtype = \"%s\" is not supported (float32, bfloat16, float16)", dt);
            return 0;
        }
        snprintf(c->dtype, sizeof c->dtype, "%s", dt);
    }
    return config_validate(c, err, n);
}

int config_validate(const LlamaConfig *c, char *err, size_t n) {
    struct { const char *name; int v; int lo, hi; } f[] = {
        {"vocab_size", c->vocab_size, 1, 1 << 24},
        {"hidden_size", c->hidden_size, 1, 1 << 16},
        {"intermediate_size", c->intermediate_size, 1, 1 << 18},
        {"num_hidden_layers", c->n_layers, 1, 1024},
        {"num_attention_heads", c->n_heads, 1, 1024},
        {"num_key_value_heads", c->n_kv_heads, 1, 1024},
        {"head_dim", c->head_dim, 2, 1024},
        {"max_position_embeddings", c->max_position_embeddings, 1, 1 << 24},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (f[i].v < f[i].lo || f[i].v > f[i].hi) {
            snprintf(err, n, "config.json: %s = %d is out of range [%d, %d]", f[i].name, f[i].v, f[i].lo, f[i].hi);
            return 0;
        }
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        snprintf(err, n, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d", c->n_heads,
                 c->n_kv_heads);
        return 0;
    }
    if (c->head_dim % 2 != 0) { snprintf(err, n, "config.json: head_dim = %d must be even for RoPE", c->head_dim); return 0; }
    if (!(c->rms_norm_eps > 0 && c->rms_norm_eps < 1)) {
        snprintf(err, n, "config.json: rms_norm_eps = %g must be in (0, 1)", c->rms_norm_eps);
        return 0;
    }
    if (!(c->rope.theta > 1 && c->rope.theta < 1e12)) {
        snprintf(err, n, "config.json: rope_theta = %g must be in (1, 1e12)", c->rope.theta);
        return 0;
    }
    if (c->bos_token_id >= c->vocab_size) {
        snprintf(err, n, "config.json: bos_token_id = %d is not below vocab_size %d", c->bos_token_id, c->vocab_size);
        return 0;
    }
    for (int i = 0; i < c->n_eos; i++) {
        if (c->eos_token_ids[i] >= c->vocab_size) {
            snprintf(err, n, "config.json: eos_token_id %d is not below vocab_size %d", c->eos_token_ids[i], c->vocab_size);
            return 0;
        }
    }
    return 1;
}

int config_parse(LlamaConfig *c, const char *text, size_t len, char *err, size_t n) {
    JsonDoc doc;
    char jerr[256];
    if (!json_parse(text, len, &doc, jerr, sizeof jerr)) {
        snprintf(err, n, "config.json is not valid JSON: %s", jerr);
        return 0;
    }
    int ok = parse_root(c, doc.root, err, n);
    json_free(&doc);
    return ok;
}

int config_load(LlamaConfig *c, const char *path, char *err, size_t n) {
    char *file = dir_exists(path) ? path_join(path, "config.json") : ao_strdup(path);
    char *text;
    size_t len;
    int ok = read_file_all(file, CONFIG_MAX_BYTES, &text, &len, err, n);
    if (ok) {
        ok = config_parse(c, text, len, err, n);
        if (!ok) {  // prefix the path so the user knows which file
            char tmp[1024];
            snprintf(tmp, sizeof tmp, "%s (%s)", err, file);
            snprintf(err, n, "%s", tmp);
        }
        free(text);
    }
    free(file);
    return ok;
}

size_t config_num_params(const LlamaConfig *c) {
    size_t D = (size_t)c->hidden_size, F = (size_t)c->intermediate_size, V = (size_t)c->vocab_size;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t layer = D + qd * D + 2 * kvd * D + D * qd + D + 3 * D * F + (c->qkv_bias ? qd + 2 * kvd : 0);
    return V * D + (c->tie_word_embeddings ? 0 : V * D) + D + layer * (size_t)c->n_layers;
}

const char *config_arch_name(ModelArch a) { return a == ARCH_QWEN2 ? "qwen2" : "llama"; }

void config_describe(const LlamaConfig *c, char *buf, size_t n) {
    snprintf(buf, n, "%s: %d layers, d_model %d, ffn %d, heads %d/%d (head_dim %d), vocab %d, rope %s theta %g%s, %.1fM params",
             config_arch_name(c->arch), c->n_layers, c->hidden_size, c->intermediate_size, c->n_heads, c->n_kv_heads,
             c->head_dim, c->vocab_size, c->rope.type == ROPE_LLAMA3 ? "llama3" : "default", c->rope.theta,
             c->tie_word_embeddings ? ", tied embeddings" : "", config_num_params(c) / 1e6);
}

int config_save(const LlamaConfig *c, const char *path, char *err, size_t n) {
    AtomicFile af;
    if (!atomic_open(&af, path, err, n)) return 0;
    FILE *f = af.f;
    int llama = c->arch == ARCH_LLAMA;
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n", llama ? "LlamaForCausalLM" : "Qwen2ForCausalLM",
            config_arch_name(c->arch));
    fprintf(f, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n", c->vocab_size,
            c->hidden_size, c->intermediate_size);
    fprintf(f, "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n",
            c->n_layers, c->n_heads, c->n_kv_heads);
    fprintf(f, "  \"head_dim\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": %.9g,\n", c->head_dim,
            c->max_position_embeddings, c->rms_norm_eps);
    fprintf(f, "  \"rope_theta\": %.9g,\n", c->rope.theta);
    if (c->rope.type == ROPE_LLAMA3)
        fprintf(f,
                "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %.9g, \"low_freq_factor\": %.9g, "
                "\"high_freq_factor\": %.9g, \"original_max_position_embeddings\": %d},\n",
                c->rope.factor, c->rope.low_freq_factor, c->rope.high_freq_factor, c->rope.original_max_position_embeddings);
    else
        fprintf(f, "  \"rope_scaling\": null,\n");
    fprintf(f, "  \"tie_word_embeddings\": %s,\n  \"hidden_act\": \"silu\",\n", c->tie_word_embeddings ? "true" : "false");
    if (llama) fprintf(f, "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n");
    else fprintf(f, "  \"use_sliding_window\": false,\n");
    fprintf(f, "  \"attention_dropout\": 0.0,\n  \"initializer_range\": %.9g,\n", c->initializer_range);
    if (c->bos_token_id >= 0) fprintf(f, "  \"bos_token_id\": %d,\n", c->bos_token_id);
    if (c->n_eos == 1) fprintf(f, "  \"eos_token_id\": %d,\n", c->eos_token_ids[0]);
    else if (c->n_eos > 1) {
        fprintf(f, "  \"eos_token_id\": [");
        for (int i = 0; i < c->n_eos; i++) fprintf(f, "%s%d", i ? ", " : "", c->eos_token_ids[i]);
        fprintf(f, "],\n");
    }
    fprintf(f, "  \"torch_dtype\": \"%s\"\n}\n", c->dtype[0] ? c->dtype : "float32");
    return atomic_close(&af, err, n);
}
