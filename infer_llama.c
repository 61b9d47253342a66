// infer_llama: run a Llama-family model on the CPU, optionally quantized with torchao's
// numerics (-q int8 | int4 | 8da4w | fp8). Completion (-i), chat (-c), perplexity (-e),
// saving the quantized model (-o). See docs/INFERENCE.md.
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/error.h"
#include "common/fileio.h"
#include "common/flags.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "model/gguf.h"
#include "model/infer_cpu.h"
#include "model/infer_gpu.h"
#include "model/model.h"
#include "quant/qmodel.h"

typedef struct {
    const char *model, *quant, *prompt, *eval, *out, *device, *system, *kv;
    int group, n_new, top_k, seed, chat, ctx, batch, eval_tokens, quiet, hqq, gemm_tokens;
    float temp, top_p;
} Args;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double peak_rss_mib(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_maxrss / 1024.0;  // Linux reports KiB
}

// ---- model loading -------------------------------------------------------------------------
typedef enum { CHAT_NONE, CHAT_LLAMA3, CHAT_CHATML } ChatKind;

typedef struct {
    InferModel im;
    Tokenizer *tok;
    ChatKind chat;
    char *default_system;  // ChatML templates that insert a system turn when none is given
    char *tok_dir;         // where tokenizer files came from (copied by -o)
} Loaded;

// Chat format from the template text (tokenizer_config.json's chat_template or GGUF's
// tokenizer.chat_template): the Llama 3 header tokens or ChatML's <|im_start|>.
static void detect_chat(Loaded *L, const char *tmpl) {
    L->chat = CHAT_NONE;
    if (!tmpl) return;
    if (strstr(tmpl, "<|start_header_id|>")) L->chat = CHAT_LLAMA3;
    else if (strstr(tmpl, "<|im_start|>")) L->chat = CHAT_CHATML;
    // A literal default system turn ("<|im_start|>system\n...<|im_end|>" with no Jinja inside).
    for (const char *p = tmpl; L->chat == CHAT_CHATML && (p = strstr(p, "<|im_start|>system\n")); p++) {
        const char *b = p + strlen("<|im_start|>system\n"), *e = strstr(b, "<|im_end|>");
        if (!e || e == b) continue;
        size_t n = (size_t)(e - b);
        char *s = ao_malloc(n + 1);
        memcpy(s, b, n);
        s[n] = 0;
        if (!strchr(s, '{') && !strchr(s, '\'')) {
            L->default_system = s;
            break;
        }
        free(s);
    }
}

static char *read_chat_template_dir(const char *dir) {
    char *p = path_join(dir, "tokenizer_config.json"), *text = NULL, err[256], *out = NULL;
    size_t len;
    if (file_exists(p) && read_file_all(p, (size_t)64 << 20, &text, &len, err, sizeof err)) {
        // The template is a JSON string; the markers we look for contain no escapes.
        out = text;
    }
    free(p);
    return out;
}

static void load_model(Loaded *L, const Args *a, QuantMode mode) {
    memset(L, 0, sizeof *L);
    char err[1024];
    char *tmpl = NULL;
    if (dir_exists(a->model)) {
        L->tok_dir = ao_strdup(a->model);
        if (qmodel_is_quantized_dir(a->model)) {
            qmodel_load(&L->im, a->model);
            CHECK(mode == QUANT_NONE || mode == L->im.mode,
                  "%s is already quantized as %s; -q %s cannot re-quantize it (omit -q)", a->model,
                  quant_mode_name(L->im.mode), quant_mode_name(mode));
            CHECK(!a->hqq || L->im.hqq, "%s holds int4 with tinygemm qparams; --hqq cannot re-quantize it (omit --hqq)",
                  a->model);
        } else {
            // The file stays mapped: unquantized weights are used in place, in their dtype.
            CHECK(infer_model_load_hf(&L->im, a->model, mode, a->group, err, sizeof err), "%s", err);
        }
        char *tj = path_join(a->model, "tokenizer.json"), *tm = path_join(a->model, "tokenizer.model");
        char *gg = NULL;
        if (!file_exists(tj) && !file_exists(tm)) {  // a model saved from a GGUF: its tokenizer is there
            char *sp = path_join(a->model, "model.safetensors");
            SafeTensors st;
            if (st_open(&st, sp, err, sizeof err)) {
                const char *g = st_meta(&st, "tokenizer_gguf");
                if (g) gg = ao_strdup(g);
                st_close(&st);
            }
            free(sp);
        }
        free(tj), free(tm);
        if (gg) {
            GgufFile g;
            CHECK(gguf_open(&g, gg, err, sizeof err), "%s (the tokenizer of %s)", err, a->model);
            L->tok = tokenizer_from_gguf(&g);
            const GgufKV *ct = gguf_find(&g, "tokenizer.chat_template");
            if (ct && ct->type == GGUF_T_STRING) {
                GgufStr s = gguf_kv_str(ct, 0);
                tmpl = ao_malloc((size_t)s.n + 1);
                memcpy(tmpl, s.p, (size_t)s.n);
                tmpl[s.n] = 0;
            }
            gguf_close(&g);
            free(gg);
        } else {
            L->tok = tokenizer_load(a->model);
            tmpl = read_chat_template_dir(a->model);
        }
    } else {
        CHECK(file_exists(a->model), "model %s does not exist (a Hugging Face directory, a .gguf file, or a directory "
              "written by -o)", a->model);
        CHECK(gguf_is_gguf(a->model), "%s is neither a directory nor a GGUF file", a->model);
        LlamaModel m;
        gguf_load_llama(a->model, &m, &L->tok, &tmpl);
        infer_model_build(&L->im, &m, mode, a->group);
        L->tok_dir = ao_strdup(a->model);  // -o records the GGUF path for the tokenizer
    }
    detect_chat(L, tmpl);
    free(tmpl);
    CHECK(tokenizer_vocab_size(L->tok) <= L->im.cfg.vocab_size,
          "the tokenizer has %d tokens but the model's vocabulary is %d", (int)tokenizer_vocab_size(L->tok),
          L->im.cfg.vocab_size);
}

// ---- sampling -------------------------------------------------------------------------------
typedef struct {
    float p;
    int32_t id;
} Cand;

static int cmp_cand(const void *a, const void *b) {
    float x = ((const Cand *)a)->p, y = ((const Cand *)b)->p;
    if (x != y) return x > y ? -1 : 1;
    return ((const Cand *)a)->id - ((const Cand *)b)->id;
}

static uint64_t g_rng;
static double rng_uniform(void) {  // xorshift64*, [0, 1)
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return (double)((g_rng * 0x2545F4914F6CDD1Dull) >> 11) * 0x1p-53;
}

// Greedy at temperature 0; otherwise softmax(logits / T), keep the top-k (k > 0), then the
// smallest prefix whose mass reaches top-p, renormalise and draw.
// A forward whose logits hold NaN or +inf has overflowed: nothing sampled from it means anything.
static void refuse_bad_logits(const float *logits, int bad, long pos) {
    FAIL("the logits at position %ld are not finite (token id %d: %g): the forward pass overflowed, so the output "
         "would be garbage\n  HINT: the model's weights may be corrupt or huge (a finite value near 3e38 passes every "
         "loader); compare -d cpu and -q none, or evaluate a known text with -e",
         pos, bad, (double)logits[bad]);
}

static int32_t sample(const float *logits, int V, const Args *a, Cand *c, long pos) {
    int bad;
    const int32_t best = infer_logits_argmax(logits, V, &bad);
    if (bad >= 0) refuse_bad_logits(logits, bad, pos);
    if (a->temp <= 0.0f) return best;
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        c[i].id = i;
        c[i].p = (float)exp((double)(logits[i] - logits[best]) / a->temp);
        sum += c[i].p;
    }
    for (int i = 0; i < V; i++) c[i].p = (float)(c[i].p / sum);
    int n = V;
    if (a->top_k > 0 || a->top_p < 1.0f) {
        qsort(c, (size_t)V, sizeof *c, cmp_cand);
        if (a->top_k > 0 && a->top_k < n) n = a->top_k;
        if (a->top_p < 1.0f) {
            double cum = 0.0;
            for (int i = 0; i < n; i++) {
                cum += c[i].p;
                if (cum >= a->top_p) { n = i + 1; break; }
            }
        }
    }
    double mass = 0.0;
    for (int i = 0; i < n; i++) mass += c[i].p;
    double r = rng_uniform() * mass;
    for (int i = 0; i < n; i++) {
        r -= c[i].p;
        if (r < 0) return c[i].id;
    }
    return c[n - 1].id;
}

// ---- the runner: CPU KV-cache state, or the GPU model (-d cuda) --------------------------------
typedef struct {
    InferState cpu;
    InferGpu *gpu;
    int max_T, max_batch;
} Engine;

static const float *eng_forward(Engine *e, const InferModel *im, const int32_t *tok, int n, int all_logits) {
#ifdef LLAMA_AO_CUDA
    if (e->gpu) return infer_gpu_forward(e->gpu, tok, n, all_logits);
#endif
    return infer_forward(im, &e->cpu, tok, n, all_logits);
}
static int eng_pos(const Engine *e) {
#ifdef LLAMA_AO_CUDA
    if (e->gpu) return infer_gpu_pos(e->gpu);
#endif
    return e->cpu.pos;
}
static void eng_set_pos(Engine *e, int pos) {
#ifdef LLAMA_AO_CUDA
    if (e->gpu) {
        infer_gpu_set_pos(e->gpu, pos);
        return;
    }
#endif
    e->cpu.pos = pos;
}

// ---- generation ------------------------------------------------------------------------------
typedef struct {
    double prompt_s, gen_s;
    long prompt_tok, gen_tok;
} Stats;

static int is_stop(const Tokenizer *t, int32_t id) {
    return id == tokenizer_eos_id(t) || id == tokenizer_eot_id(t);
}

// Feeds ids[s->pos..n) (the cache already holds ids[0..s->pos)) and generates up to n_new
// tokens, streaming them to stdout. Appends the generated ids to out (may be NULL).
static void generate(const Loaded *L, Engine *s, const int32_t *ids, int n, const Args *a, Stats *st, TokIds *out) {
    const int V = L->im.cfg.vocab_size;
    CHECK(n < s->max_T, "the prompt is %d tokens; the context holds %d (it must leave room for at least one new token)",
          n, s->max_T);
    double t0 = now_s();
    const float *lg = NULL;
    for (int p = eng_pos(s); p < n; p += s->max_batch) {
        int k = n - p < s->max_batch ? n - p : s->max_batch;
        lg = eng_forward(s, &L->im, ids + p, k, 0);
    }
    st->prompt_s += now_s() - t0;
    st->prompt_tok += n;
    Cand *c = ao_malloc((size_t)V * sizeof *c);
    TokStream ts;
    tok_stream_init(&ts, L->tok, 1);
    t0 = now_s();
    for (int i = 0; i < a->n_new && lg; i++) {
        int32_t id = sample(lg, V, a, c, eng_pos(s) - 1);
        if (out) tok_ids_push(out, id);
        st->gen_tok++;
        if (is_stop(L->tok, id)) break;
        size_t len;
        const char *txt = tok_stream_push(&ts, id, &len);
        fwrite(txt, 1, len, stdout);
        fflush(stdout);
        if (eng_pos(s) >= s->max_T) {
            fprintf(stderr, "\n[context of %d tokens is full]\n", s->max_T);
            break;
        }
        lg = eng_forward(s, &L->im, &id, 1, 0);
    }
    size_t len;
    const char *txt = tok_stream_flush(&ts, &len);
    fwrite(txt, 1, len, stdout);
    fflush(stdout);
    st->gen_s += now_s() - t0;
    tok_stream_free(&ts);
    free(c);
}

// ChatML turns as HF renders them: "<|im_start|>" role "\n" content "<|im_end|>" "\n".
// Text between special tokens is encoded as one run, as HF's tokenizer splits it.
static void render_chatml(const Loaded *L, const ChatMessage *msg, size_t n, TokIds *out) {
    int32_t st = tokenizer_token_id(L->tok, "<|im_start|>"), en = tokenizer_token_id(L->tok, "<|im_end|>");
    CHECK(st >= 0 && en >= 0, "the tokenizer has no <|im_start|> / <|im_end|> tokens for ChatML");
    for (size_t i = 0; i <= n; i++) {
        if (i > 0) tokenizer_encode(L->tok, "\n", 1, 0, out);
        tok_ids_push(out, st);
        const char *role = i < n ? msg[i].role : "assistant";
        const char *content = i < n ? msg[i].content : "";
        size_t len = strlen(role) + 1 + strlen(content);
        char *buf = ao_malloc(len + 1);
        snprintf(buf, len + 1, "%s\n%s", role, content);
        tokenizer_encode(L->tok, buf, len, 0, out);
        free(buf);
        if (i < n) tok_ids_push(out, en);
    }
}

static void chat_loop(const Loaded *L, Engine *s, const Args *a, Stats *st) {
    CHECK(L->chat != CHAT_NONE, "-c: the model ships no chat template we know (Llama 3 headers or ChatML)");
    ChatMessage *msg = NULL;
    size_t n = 0;
    const char *sys = a->system ? a->system : (L->chat == CHAT_CHATML ? L->default_system : NULL);
    TokIds cached = {0};  // what the KV cache holds
    char line[8192];
    fprintf(stderr, "chat (%s template). Empty line or EOF ends; /reset clears the history.\n",
            L->chat == CHAT_LLAMA3 ? "Llama 3" : "ChatML");
    for (;;) {
        fprintf(stderr, "\n> ");
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) break;
        if (!strcmp(line, "/reset")) {
            for (size_t i = 0; i < n; i++) free((char *)msg[i].content);
            n = 0;
            continue;
        }
        msg = ao_realloc(msg, (n + 3) * sizeof *msg);
        if (n == 0 && sys) msg[n++] = (ChatMessage){"system", ao_strdup(sys)};
        msg[n++] = (ChatMessage){"user", ao_strdup(line)};
        TokIds ids = {0};
        if (L->chat == CHAT_LLAMA3) tokenizer_chat_llama3(L->tok, msg, n, 1, &ids);
        else render_chatml(L, msg, n, &ids);
        if ((int)ids.n + 1 >= s->max_T) {
            fprintf(stderr, "error: the conversation is %zu tokens; the context holds %d. History cleared.\n", ids.n,
                    s->max_T);
            for (size_t i = 0; i < n; i++) free((char *)msg[i].content);
            n = 0;
            tok_ids_free(&ids);
            continue;
        }
        // Reuse the cache for the common prefix of what it holds and the new rendering.
        size_t common = 0;
        while (common < cached.n && common < ids.n && cached.ids[common] == ids.ids[common]) common++;
        if (common == ids.n) common--;  // at least one token must be fed to get logits
        eng_set_pos(s, (int)common);
        TokIds reply = {0};
        generate(L, s, ids.ids, (int)ids.n, a, st, &reply);
        fputc('\n', stdout);
        cached.n = 0;
        for (size_t i = 0; i < ids.n; i++) tok_ids_push(&cached, ids.ids[i]);
        for (size_t i = 0; i + 1 < reply.n; i++) tok_ids_push(&cached, reply.ids[i]);  // the last was not fed
        size_t len;
        char *text = tokenizer_decode(L->tok, reply.ids, reply.n, 1, &len);
        msg[n++] = (ChatMessage){"assistant", text};
        tok_ids_free(&reply);
        tok_ids_free(&ids);
    }
    for (size_t i = 0; i < n; i++) free((char *)msg[i].content);
    free(msg);
    tok_ids_free(&cached);
}

// ---- perplexity --------------------------------------------------------------------------------
static void perplexity(const Loaded *L, Engine *s, const Args *a) {
    TokIds ids = {0};
    const int V = L->im.cfg.vocab_size;
    MappedFile mf;
    char err[512];
    CHECK(map_file(a->eval, &mf, err, sizeof err), "%s", err);
    int is_shard = mf.size >= 8 && memcmp(mf.data, SHARD_MAGIC, 8) == 0;
    if (is_shard) {
        unmap_file(&mf);
        Shard sh;
        shard_open(&sh, a->eval, V);
        for (uint64_t i = 0; i < sh.count; i++) tok_ids_push(&ids, (int32_t)shard_token(&sh, i));
        shard_close(&sh);
    } else {
        // As HF: the tokenizer's post-processor decides about BOS, once at the start.
        if (tokenizer_wants_bos(L->tok)) tok_ids_push(&ids, tokenizer_bos_id(L->tok));
        // With --eval-tokens only a prefix is needed: 32 bytes a token is ample; cut at a newline.
        size_t len = mf.size;
        if (a->eval_tokens > 0 && (size_t)a->eval_tokens < SIZE_MAX / 32 && len > (size_t)a->eval_tokens * 32) {
            len = (size_t)a->eval_tokens * 32;
            while (len > 0 && mf.data[len - 1] != '\n') len--;
            if (len == 0) len = (size_t)a->eval_tokens * 32;
        }
        tokenizer_encode(L->tok, (const char *)mf.data, len, 0, &ids);
        unmap_file(&mf);
    }
    if (a->eval_tokens > 0 && ids.n > (size_t)a->eval_tokens) ids.n = (size_t)a->eval_tokens;
    CHECK(ids.n >= 2, "%s: %zu tokens, need at least 2 for perplexity", a->eval, ids.n);
    // Non-overlapping windows of the context length; each predicts its tokens 1..len-1.
    double nll = 0.0, t0 = now_s();
    long count = 0;
    for (size_t w = 0; w < ids.n; w += (size_t)s->max_T) {
        int len = (int)(ids.n - w < (size_t)s->max_T ? ids.n - w : (size_t)s->max_T);
        if (len < 2) break;
        eng_set_pos(s, 0);
        for (int p = 0; p < len - 1; p += s->max_batch) {
            int k = len - 1 - p < s->max_batch ? len - 1 - p : s->max_batch;
            const float *lg = eng_forward(s, &L->im, ids.ids + w + (size_t)p, k, 1);
            for (int i = 0; i < k; i++) {
                const float *r = lg + (size_t)i * V;
                float mx = r[0];
                for (int j = 1; j < V; j++) mx = r[j] > mx ? r[j] : mx;
                double se = 0.0;
                for (int j = 0; j < V; j++) se += exp((double)(r[j] - mx));
                int32_t tgt = ids.ids[w + (size_t)p + (size_t)i + 1];
                if (!isfinite(se) || !isfinite(mx)) {  // a NaN or +inf logit (exp(-inf) = 0 is fine)
                    int bad;
                    infer_logits_argmax(r, V, &bad);
                    refuse_bad_logits(r, bad >= 0 ? bad : 0, (long)(w + (size_t)p + (size_t)i));
                }
                nll += log(se) + (double)mx - (double)r[tgt];
                count++;
            }
        }
        if (!a->quiet) fprintf(stderr, "\r[%ld/%zu tokens] running perplexity %.4f", count, ids.n, exp(nll / count));
    }
    double dt = now_s() - t0;
    if (!a->quiet) fputc('\n', stderr);
    printf("perplexity: %.4f (%ld tokens)\n", exp(nll / (double)count), count);
    printf("eval: %.1f tokens/s (%.2f s, context %d)\n", (double)count / dt, dt, s->max_T);
    tok_ids_free(&ids);
}

int main(int argc, char **argv) {
    Args a = {.quant = "none", .device = "auto", .group = 128, .n_new = 256, .top_k = 0, .seed = 1234, .top_p = 1.0f,
              .temp = 0.0f, .batch = 64, .kv = "bf16", .gemm_tokens = 0};
    const Flag flags[] = {
        {"--model", "-m", FLAG_STR, &a.model, "HF model directory, GGUF file, or a directory written by -o", 1, 0},
        {"--quant", "-q", FLAG_STR, &a.quant, "quantization: none | int8 | int4 | 8da4w | fp8 (torchao numerics)", 1, 0},
        {"--group", "-g", FLAG_INT, &a.group, "group size for int4 / 8da4w: 32, 64, 128 or 256", 32, 256},
        {"--hqq", NULL, FLAG_BOOL, &a.hqq, "int4: HQQ scale/zero (torchao int4_choose_qparams_algorithm=\"hqq\")", 1, 0},
        {"--prompt", "-i", FLAG_STR, &a.prompt, "prompt to complete", 1, 0},
        {"--n-new", "-n", FLAG_INT, &a.n_new, "maximum number of new tokens", 0, 1 << 30},
        {"--temp", NULL, FLAG_FLOAT, &a.temp, "sampling temperature (0 = greedy)", 0, 100},
        {"--top-k", NULL, FLAG_INT, &a.top_k, "keep the k most likely tokens (0 = all)", 0, 1 << 30},
        {"--top-p", NULL, FLAG_FLOAT, &a.top_p, "nucleus sampling mass", 0.0001, 1},
        {"--seed", NULL, FLAG_INT, &a.seed, "random seed for sampling", 0, 2147483647},
        {"--chat", "-c", FLAG_BOOL, &a.chat, "interactive multi-turn chat with the model's template", 1, 0},
        {"--system", NULL, FLAG_STR, &a.system, "system message for chat mode", 1, 0},
        {"--eval", "-e", FLAG_STR, &a.eval, "perplexity over a text file or token shard", 1, 0},
        {"--eval-tokens", NULL, FLAG_INT, &a.eval_tokens, "evaluate only the first N tokens (0 = all)", 0, 1 << 30},
        {"--ctx", NULL, FLAG_INT, &a.ctx, "context length (0 = the model's max_position_embeddings)", 0, 1 << 24},
        {"--batch", NULL, FLAG_INT, &a.batch, "tokens per forward when processing a prompt", 1, 1 << 16},
        {"--out", "-o", FLAG_STR, &a.out, "save the (quantized) model to this directory", 1, 0},
        {"--device", "-d", FLAG_STR, &a.device, "cpu | cuda | auto (cuda when built with it and a GPU is present)", 1, 0},
        {"--kv", NULL, FLAG_STR, &a.kv, "GPU KV cache: bf16 | fp32 | fp8 (e4m3, a scale per head vector); the CPU's is fp32", 1, 0},
        {"--gemm-tokens", NULL, FLAG_INT, &a.gemm_tokens, "GPU: prompt chunks longer than this run as bf16 GEMMs (0: 16, -1: never: the decode GEMVs, the CPU path's numerics)", -1, 1 << 20},
        {"--quiet", NULL, FLAG_BOOL, &a.quiet, "no settings table or progress", 1, 0},
    };
    const int nf = (int)(sizeof flags / sizeof flags[0]);
    const char *syn = "-m MODEL [-q MODE] [-i PROMPT | -c | -e FILE | -o DIR] [options]";
    if (!flags_parse(flags, nf, argc, argv, "infer_llama", syn)) return 0;
    if (!a.model) {
        flags_usage(stderr, flags, nf, "infer_llama", syn);
        FAIL("-m MODEL is required");
    }
    CHECK(!strcmp(a.device, "cpu") || !strcmp(a.device, "cuda") || !strcmp(a.device, "auto"),
          "-d %s: unknown device (cpu, cuda, or auto: cuda when a GPU is present)", a.device);
#ifdef LLAMA_AO_CUDA
    const int use_gpu = !strcmp(a.device, "cuda") || (!strcmp(a.device, "auto") && infer_gpu_count() > 0);
    if (!strcmp(a.device, "cuda"))
        CHECK(infer_gpu_count() > 0, "-d cuda: no CUDA GPU is visible (driver missing or no device); use -d cpu");
#else
    const int use_gpu = 0;
    CHECK(strcmp(a.device, "cuda") != 0, "-d cuda: this infer_llama was built without CUDA (no nvcc at build time); "
          "rebuild on a machine with the CUDA Toolkit, or use -d cpu");
#endif
    CHECK(!strcmp(a.kv, "bf16") || !strcmp(a.kv, "fp32") || !strcmp(a.kv, "fp8"), "--kv %s: unknown (bf16, fp32, fp8)",
          a.kv);
    int mode = quant_mode_from_name(a.quant);
    CHECK(mode >= 0, "-q %s: unknown mode (none, int8, int4, 8da4w, fp8)", a.quant);
    CHECK(!quant_mode_grouped((QuantMode)mode) || quant_group_ok(a.group), "-g %d: the group size must be 32, 64, 128 "
          "or 256", a.group);
    CHECK(!a.hqq || mode == QUANT_INT4, "--hqq applies to -q int4 only (got -q %s)", a.quant);
    quant_set_int4_hqq(a.hqq);
    int jobs = !!a.prompt + !!a.chat + !!a.eval;
    CHECK(jobs <= 1, "-i, -c and -e are exclusive: give one");
    CHECK(jobs == 1 || a.out, "nothing to do: give -i PROMPT, -c, -e FILE or -o DIR");
    if (!a.quiet) {
        fprintf(stderr, "infer_llama settings:\n");
        flags_print(stderr, flags, nf);
    }
    g_rng = (uint64_t)a.seed * 0x9E3779B97F4A7C15ull + 1;

    double t0 = now_s();
    Loaded L;
    load_model(&L, &a, (QuantMode)mode);
    const LlamaConfig *c = &L.im.cfg;
    char desc[512];
    config_describe(c, desc, sizeof desc);
    if (!a.quiet) {
        fprintf(stderr, "model: %s\n", desc);
        fprintf(stderr, "quant: %s (group %d%s), %d/%d linears quantized, CPU kernels %s, weights %.1f MiB%s, loaded in %.2f s\n",
                quant_mode_name(L.im.mode), L.im.group,
                L.im.mode != QUANT_INT4 ? "" : L.im.hqq ? ", qparams hqq" : ", qparams tinygemm", L.im.n_quantized,
                L.im.n_linear, quant_isa_name(quant_get_isa()), (double)infer_model_bytes(&L.im) / 1048576.0,
                L.im.mapped ? " (unquantized ones mapped from the file)" : "", now_s() - t0);
        if (L.im.skipped[0]) fprintf(stderr, "       kept unquantized as torchao does: %s\n", L.im.skipped);
    }
    if (a.out) {
        qmodel_save(&L.im, L.tok_dir, a.out);
        if (!dir_exists(L.tok_dir)) fprintf(stderr, "note: %s refers to %s for its tokenizer\n", a.out, L.tok_dir);
        fprintf(stderr, "saved %s model to %s\n", quant_mode_name(L.im.mode), a.out);
    }
    int ctx = a.ctx > 0 ? a.ctx : c->max_position_embeddings;
    Stats st = {0};
    if (jobs) {
        Engine s;
        memset(&s, 0, sizeof s);
        s.max_T = ctx, s.max_batch = a.batch < ctx ? a.batch : ctx;
        if (use_gpu) {
#ifdef LLAMA_AO_CUDA
            InferGpuOpts go = {ctx, s.max_batch, 1, !strcmp(a.kv, "fp32"), 1, 0, !strcmp(a.kv, "fp8"), a.gemm_tokens, 0, 0};
            double tg = now_s();
            s.gpu = infer_gpu_create(&L.im, &go);
            if (!a.quiet)
                fprintf(stderr, "device: %s, %.1f MiB of GPU memory (weights %.1f MiB, %.1f MiB read per token, %s KV "
                        "cache %.1f MiB), uploaded in %.2f s%s\n", infer_gpu_name(s.gpu),
                        infer_gpu_alloc_bytes(s.gpu) / 1048576.0, infer_gpu_weight_bytes(s.gpu) / 1048576.0,
                        infer_gpu_step_bytes(s.gpu) / 1048576.0, a.kv, infer_gpu_kv_bytes(s.gpu) / 1048576.0, now_s() - tg,
                        infer_gpu_rounded(s.gpu) ? " (unquantized weights rounded to bf16)" : "");
#endif
        } else {
            CHECK(!strcmp(a.kv, "bf16") || !strcmp(a.kv, "fp32"), "--kv %s: the CPU path keeps its KV cache in fp32; "
                  "fp8 is a -d cuda option", a.kv);
            infer_state_init(&s.cpu, &L.im, ctx, a.batch);
            if (!a.quiet) fprintf(stderr, "device: cpu (%s kernels)\n", quant_isa_name(quant_get_isa()));
        }
        if (a.eval) perplexity(&L, &s, &a);
        else if (a.chat) chat_loop(&L, &s, &a, &st);
        else {
            TokIds ids = {0};
            if (tokenizer_wants_bos(L.tok)) tok_ids_push(&ids, tokenizer_bos_id(L.tok));
            tokenizer_encode(L.tok, a.prompt, strlen(a.prompt), TOK_ALLOW_SPECIAL, &ids);
            CHECK(ids.n > 0, "the prompt encodes to no tokens");
            CHECK((int)ids.n < ctx, "the prompt is %zu tokens; the context holds %d (it must leave room for at least one "
                  "new token)", ids.n, ctx);
            if (!a.quiet) fputs(a.prompt, stdout);
            generate(&L, &s, ids.ids, (int)ids.n, &a, &st, NULL);
            fputc('\n', stdout);
            tok_ids_free(&ids);
        }
#ifdef LLAMA_AO_CUDA
        if (s.gpu) infer_gpu_free(s.gpu);
        else
#endif
            infer_state_free(&s.cpu);
    }
    fflush(stdout);  // the stats go to stderr after the text, also when stdout is a pipe
    if (!a.quiet && (a.prompt || a.chat))
        fprintf(stderr, "prompt: %ld tokens, %.1f tok/s | generation: %ld tokens, %.1f tok/s | peak RSS %.0f MiB\n",
                st.prompt_tok, st.prompt_s > 0 ? st.prompt_tok / st.prompt_s : 0.0, st.gen_tok,
                st.gen_s > 0 ? st.gen_tok / st.gen_s : 0.0, peak_rss_mib());
    else if (!a.quiet) fprintf(stderr, "peak RSS %.0f MiB\n", peak_rss_mib());
    tokenizer_free(L.tok);
    free(L.default_system);
    free(L.tok_dir);
    infer_model_free(&L.im);
    return 0;
}
