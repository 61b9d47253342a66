// Training checkpoints: a directory written under a temporary name and renamed, with a
// DONE marker written last, holding
//   config.json + model.safetensors   fp32 master weights (bf16 masters widened, exactly), loadable by
//                                     transformers and infer_llama
//   optimizer.safetensors             one process: AdamW moments (adam_m, adam_v, flat fp32) or the
//                                     low-bit state regions as in memory, + step in metadata
//   optimizer.rank<r>.safetensors     ZeRO, one per rank: the pieces of the tensors rank r owns
//                                     (see below), so any world size can load them back
//   loader.state                      data-loader position (data/loader.h)
//   trainer.json                      step and the settings that shape the trajectory
//   tokenizer files                   copied from the training tokenizer, when known
//
// A shard file names each piece by its tensor: metadata "<hf name>" = "<first element> <count>",
// tensors "<hf name>.m" and ".v" (fp32 moments, or the low-bit codes as uint8: one per element,
// two for 4-bit) and, for quantized states, ".m_scale" and ".v_scale" (fp32, one per block).
// Metadata also gives format, step, optim (LowbitFormat number), world, rank, begin, end, total.
// Both kinds of optimizer file say "master": "bf16-sr" when the bf16 weights were the masters
// (--master bf16-sr); without the key they are fp32 (every file written before it existed), and a
// resume refuses the other mode: the states and the stochastic-rounding stream belong to one.
// Loading copies, for each piece this rank owns, the overlapping parts of every piece of the
// same tensor in the files; cuts fall on whole blocks (dist/zero.cuh), so any two shardings
// overlap in whole blocks and the copied states are exactly the saved ones.
#include "checkpoint.cuh"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern "C" {
#include "../common/fileio.h"
#include "../common/json.h"
#include "safetensors.h"
}

static void copy_file(const char *src, const char *dst) {
    char err[1024];
    char *buf;
    size_t n;
    if (!read_file_all(src, 256u << 20, &buf, &n, err, sizeof err)) FAIL("%s", err);
    AtomicFile af;
    if (!atomic_open(&af, dst, err, sizeof err)) FAIL("%s", err);
    fwrite(buf, 1, n, af.f);
    free(buf);
    if (!atomic_close(&af, err, sizeof err)) FAIL("%s", err);
}

static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = path_join(dir, e->d_name);
        unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

// Copies the tokenizer next to the model so the checkpoint is self-contained: a
// tokenizer.json (+ tokenizer_config.json) directory or file, or GPT-2 encoder.json/vocab.bpe.
static void copy_tokenizer(const char *tok, const char *dir) {
    if (!tok) return;
    const char *names[] = {"tokenizer.json", "tokenizer_config.json", "encoder.json", "vocab.bpe", "tokenizer.model"};
    if (dir_exists(tok)) {
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            char *s = path_join(tok, names[i]);
            if (file_exists(s)) {
                char *d = path_join(dir, names[i]);
                copy_file(s, d);
                free(d);
            }
            free(s);
        }
    } else if (file_exists(tok)) {
        const char *base = strrchr(tok, '/') ? strrchr(tok, '/') + 1 : tok;
        char *d = path_join(dir, base);
        copy_file(tok, d);
        free(d);
    }
}

#define SHARD_FORMAT "llama.ao-adamw-zero-v1"

static const char *master_name(LowbitMaster m) { return m == LOWBIT_MASTER_F32 ? "fp32" : "bf16-sr"; }

static void check_master(const SafeTensors *st, const LlamaGpu *m, const char *path) {
    const char *v = st_meta(st, "master"), *have = v ? v : "fp32", *want = master_name(m->opts.master);
    CHECK(!strcmp(have, want), "resume: %s was written with --master %s, this run has --master %s\n  HINT: resume with "
          "--master %s (to change it, start a new run from the checkpoint's weights with -m)", path, have, want, have);
}

static void shard_path(char *buf, size_t n, const char *dir, int rank) {
    snprintf(buf, n, "%s/optimizer.rank%05d.safetensors", dir, rank);
}

void ckpt_save_optimizer_shard(const char *dir, int step, const LlamaGpu *m) {
    const ZeroPlan *z = m->plan;
    const int np = z->n_pieces;
    StWriteTensor *t = (StWriteTensor *)ao_calloc((size_t)np * 4 + 1, sizeof *t);
    char (*names)[128] = (char (*)[128])ao_calloc((size_t)np * 4 + 1, 128);
    void **bufs = (void **)ao_calloc((size_t)np * 4 + 1, sizeof(void *));
    const int nmeta_fixed = 8;  // + "master" with bf16 masters
    const char **mk = (const char **)ao_calloc((size_t)np + nmeta_fixed + 1, sizeof(char *));
    const char **mv = (const char **)ao_calloc((size_t)np + nmeta_fixed + 1, sizeof(char *));
    char (*vals)[64] = (char (*)[64])ao_calloc((size_t)np + nmeta_fixed + 1, 64);
    int nt = 0, nm = 0;
    const char *fixed_k[nmeta_fixed] = {"format", "step", "optim", "world", "rank", "begin", "end", "total"};
    const unsigned long long fixed_v[nmeta_fixed] = {0, (unsigned long long)step, (unsigned long long)m->opts.optim,
                                                     (unsigned long long)z->world, (unsigned long long)z->rank, z->begin,
                                                     z->end, z->total};
    for (int k = 0; k < nmeta_fixed; k++, nm++) {
        mk[nm] = fixed_k[k];
        if (k == 0) snprintf(vals[nm], 64, SHARD_FORMAT);
        else snprintf(vals[nm], 64, "%llu", fixed_v[k]);
        mv[nm] = vals[nm];
    }
    if (m->opts.master != LOWBIT_MASTER_F32) {
        mk[nm] = "master";
        mv[nm++] = master_name(m->opts.master);
    }
    for (int i = 0; i < np; i++) {
        const ZeroPiece *pc = &z->pieces[i];
        const char *hf = m->tab.p[pc->tensor].hf_name;
        LowbitState st = llama_gpu_piece_state(m, i);
        mk[nm] = hf;
        snprintf(vals[nm], 64, "%zu %zu", pc->begin, pc->n);
        mv[nm] = vals[nm];
        nm++;
        const int q = lowbit_quantized(st.fmt);
        const size_t sb = q ? (st.fmt == LOWBIT_4BIT ? pc->n / 2 : pc->n) : pc->n * sizeof(float);
        const char *suffix[4] = {".m", ".v", ".m_scale", ".v_scale"};
        const void *src[4] = {st.m, st.v, st.m_scale, st.v_scale};
        for (int k = 0; k < (q ? 4 : 2); k++) {
            const size_t bytes = k < 2 ? sb : (pc->n / (size_t)st.block) * sizeof(float);
            snprintf(names[nt], 128, "%s%s", hf, suffix[k]);
            bufs[nt] = ao_malloc(bytes ? bytes : 1);
            CUDA_CHECK(cudaMemcpy(bufs[nt], src[k], bytes, cudaMemcpyDefault));
            const int f32 = k >= 2 || !q;
            t[nt] = StWriteTensor{names[nt], f32 ? ST_F32 : ST_U8, 1, {(int64_t)(f32 ? bytes / sizeof(float) : bytes)},
                                  bufs[nt]};
            nt++;
        }
    }
    char path[4096], err[1024];
    shard_path(path, sizeof path, dir, z->rank);
    if (!st_write(path, t, nt, mk, mv, nm, err, sizeof err)) FAIL("checkpoint: %s", err);
    for (int i = 0; i < nt; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(t);
    free(mk);
    free(mv);
    free(vals);
}

// One process: fp32 m and v, or the low-bit state regions as they are in memory.
static void save_optimizer_single(const char *dir, int step, const LlamaGpu *m) {
    const size_t P = m->tab.total;
    char step_s[32], fmt_s[8];
    snprintf(step_s, sizeof step_s, "%d", step);
    snprintf(fmt_s, sizeof fmt_s, "%d", (int)m->opts.optim);
    char *op = path_join(dir, "optimizer.safetensors"), err[1024];
    const int bf16m = m->opts.master != LOWBIT_MASTER_F32;  // the "master" key only then: fp32 files stay as they were
    const char *mname = master_name(m->opts.master);
    if (m->opts.optim == LOWBIT_F32) {
        float *hm = (float *)ao_malloc(P * sizeof(float)), *hv = (float *)ao_malloc(P * sizeof(float));
        CUDA_CHECK(cudaMemcpy(hm, m->adam_m, P * sizeof(float), cudaMemcpyDefault));
        CUDA_CHECK(cudaMemcpy(hv, m->adam_v, P * sizeof(float), cudaMemcpyDefault));
        StWriteTensor t[2] = {{"adam_m", ST_F32, 1, {(int64_t)P}, hm}, {"adam_v", ST_F32, 1, {(int64_t)P}, hv}};
        const char *mk[] = {"format", "step", "master"}, *mv[] = {"llama.ao-adamw-v1", step_s, mname};
        if (!st_write(op, t, 2, mk, mv, bf16m ? 3 : 2, err, sizeof err)) FAIL("checkpoint: %s", err);
        free(hm);
        free(hv);
    } else {
        unsigned char *hs = (unsigned char *)ao_malloc(m->state_bytes);
        CUDA_CHECK(cudaMemcpy(hs, m->state_mem, m->state_bytes, cudaMemcpyDefault));
        StWriteTensor t[1] = {{"lowbit_state", ST_U8, 1, {(int64_t)m->state_bytes}, hs}};
        const char *mk[] = {"format", "step", "lowbit_format", "master"},
                   *mv[] = {"llama.ao-adamw-lowbit-v1", step_s, fmt_s, mname};
        if (!st_write(op, t, 1, mk, mv, bf16m ? 4 : 3, err, sizeof err)) FAIL("checkpoint: %s", err);
        free(hs);
    }
    free(op);
}

void ckpt_save(const char *out_dir, int step, LlamaGpu *m, GpuCtx *ctx, LlamaModel *cpu, const DataLoader *dl,
               const char *tokenizer, const char *trainer_json, Dist *dist) {
    char name[64], err[1024];
    llama_gpu_optim_sync(m);  // an overlapped step (--optim-overlap) is done before anything is read
    llama_gpu_params_sync(m);  // and so is a parameter all-gather (--zero-gather-overlap)
    const int sharded = m->opts.zero != NULL, rank = dist ? dist->rank : 0;
    CHECK(!sharded || dist || m->plan->world == 1, "checkpoint: a ZeRO shard of %d ranks needs the communicator",
          m->plan->world);
    snprintf(name, sizeof name, "ckpt_%06d", step);
    char *final_dir = path_join(out_dir, name);
    size_t L = strlen(final_dir) + 8;
    char *tmp = (char *)ao_malloc(L);
    snprintf(tmp, L, "%s.tmp", final_dir);
    if (rank == 0) {
        remove_tree(tmp);
        CHECK(make_dirs(tmp), "cannot create %s", tmp);
    }
    if (!sharded) {
        llama_gpu_download(m, cpu);
        if (!model_save_hf(cpu, tmp, 0, err, sizeof err)) FAIL("checkpoint: %s", err);
        save_optimizer_single(tmp, step, m);
    } else {
        // every rank's master shard into rank 0's gradient buffer, then the model from there
        llama_gpu_master_to_device(m, ctx, m->grads);
        if (dist) {
            dist_comm_after(dist, ctx->stream);
            dist_gather_ranges_f32(dist, m->grads, m->plan->bounds, "the master weights to gather on rank 0");
            dist_compute_after(dist, ctx->stream);
        }
        dist_wait(dist, ctx->stream, "the master weights to gather on rank 0");
        if (rank == 0) {
            CUDA_CHECK(cudaMemcpy(cpu->params, m->grads, m->tab.total * sizeof(float), cudaMemcpyDeviceToHost));
            if (!model_save_hf(cpu, tmp, 0, err, sizeof err)) FAIL("checkpoint: %s", err);
        }
        ckpt_save_optimizer_shard(tmp, step, m);  // rank 0 made the directory before the gather
    }
    AtomicFile af;
    if (rank == 0) {
        if (dl) {
            char *lp = path_join(tmp, "loader.state");
            loader_save_state(dl, lp);
            free(lp);
        }
        char *tp = path_join(tmp, "trainer.json");
        if (!atomic_open(&af, tp, err, sizeof err)) FAIL("%s", err);
        fputs(trainer_json, af.f);
        if (!atomic_close(&af, err, sizeof err)) FAIL("%s", err);
        free(tp);
        copy_tokenizer(tokenizer, tmp);
    }
    if (dist) dist_barrier(dist, "every rank to write its optimizer shard");
    if (rank != 0) {  // rank 0 completes the directory; the barrier below returns once it has
        if (dist) dist_barrier(dist, "rank 0 to complete the checkpoint");
        free(tmp);
        free(final_dir);
        return;
    }
    char *done = path_join(tmp, "DONE");
    if (!atomic_open(&af, done, err, sizeof err)) FAIL("%s", err);
    fprintf(af.f, "step %d\n", step);
    if (!atomic_close(&af, err, sizeof err)) FAIL("%s", err);
    free(done);
    remove_tree(final_dir);  // an older checkpoint of the same step is replaced whole
    CHECK(rename(tmp, final_dir) == 0, "cannot rename %s to %s", tmp, final_dir);
    // "latest" names the newest complete checkpoint
    char *latest = path_join(out_dir, "latest");
    if (!atomic_open(&af, latest, err, sizeof err)) FAIL("%s", err);
    fprintf(af.f, "%s\n", name);
    if (!atomic_close(&af, err, sizeof err)) FAIL("%s", err);
    free(latest);
    free(tmp);
    free(final_dir);
    if (dist) dist_barrier(dist, "rank 0 to complete the checkpoint");
}

char *ckpt_resolve(const char *path) {
    char *done = path_join(path, "DONE");
    if (file_exists(done)) {
        free(done);
        return ao_strdup(path);
    }
    free(done);
    // a run directory: follow its "latest" file
    char *latest = path_join(path, "latest"), *text, err[512];
    size_t n;
    if (!read_file_all(latest, 4096, &text, &n, err, sizeof err))
        FAIL("%s is neither a complete checkpoint (no DONE marker) nor a run directory with a 'latest' file", path);
    free(latest);
    text[strcspn(text, "\r\n")] = 0;
    CHECK(text[0] && !strchr(text, '/'), "%s/latest does not name a checkpoint directory", path);
    char *dir = path_join(path, text);
    free(text);
    done = path_join(dir, "DONE");
    CHECK(file_exists(done), "checkpoint %s is incomplete (no DONE marker): it was interrupted while being written", dir);
    free(done);
    return dir;
}

// ---- loading, any world size into any world size ------------------------------------------

// A piece of one tensor's saved state, in host memory (a mapped file).
struct SrcPiece {
    size_t begin, n;                     // element range within the tensor
    LowbitFormat fmt;
    int block;
    const unsigned char *m, *v;          // fp32 moments, or codes (4-bit: two per byte)
    const unsigned char *ms, *vs;        // fp32 block scales (quantized formats)
    const char *file;
};

struct Sources {
    SrcPiece **by_tensor;  // [tab.n] arrays
    int *count, *cap;
    SafeTensors *files;
    int n_files;
    int step;
};

static void add_src(Sources *S, int t, SrcPiece p) {
    if (S->count[t] == S->cap[t]) {
        S->cap[t] = S->cap[t] ? 2 * S->cap[t] : 2;
        S->by_tensor[t] = (SrcPiece *)ao_realloc(S->by_tensor[t], (size_t)S->cap[t] * sizeof(SrcPiece));
    }
    S->by_tensor[t][S->count[t]++] = p;
}

static int parse_step(const SafeTensors *st, const char *path) {
    const char *s = st_meta(st, "step");
    CHECK(s, "resume: %s lacks its step", path);
    char *end;
    long step = strtol(s, &end, 10);
    CHECK(*end == 0 && step >= 0 && step < 2147483647L, "resume: bad step \"%s\" in %s", s, path);
    return (int)step;
}

static unsigned long long meta_u64(const SafeTensors *st, const char *key, const char *path) {
    const char *s = st_meta(st, key);
    CHECK(s && *s, "resume: %s lacks \"%s\" in its metadata", path, key);
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    CHECK(*end == 0, "resume: %s: \"%s\" = \"%s\" is not a number", path, key, s);
    return v;
}

// The one-process optimizer.safetensors as pieces: one whole-tensor piece per tensor.
static void sources_from_single(Sources *S, const SafeTensors *st, const LlamaGpu *m, const char *path) {
    const ParamTable *tab = &m->tab;
    const char *fmt = st_meta(st, "format");
    check_master(st, m, path);
    if (m->opts.optim == LOWBIT_F32) {
        CHECK(fmt && !strcmp(fmt, "llama.ao-adamw-v1"),
              "resume: %s is not an fp32 AdamW state (resume with the --optim it was trained with)", path);
        const StTensor *tm = st_find(st, "adam_m"), *tv = st_find(st, "adam_v");
        CHECK(tm && tv && tm->dtype == ST_F32 && tv->dtype == ST_F32 && tm->numel == tab->total && tv->numel == tab->total,
              "resume: optimizer state in %s does not match the model (%zu parameters expected)", path, tab->total);
        for (int t = 0; t < tab->n; t++) {
            const size_t o = tab->p[t].offset * sizeof(float);
            add_src(S, t, SrcPiece{0, tab->p[t].numel, LOWBIT_F32, 0, (const unsigned char *)tm->data + o,
                                   (const unsigned char *)tv->data + o, nullptr, nullptr, path});
        }
        return;
    }
    const char *lf = st_meta(st, "lowbit_format");
    char want[8];
    snprintf(want, sizeof want, "%d", (int)m->opts.optim);
    CHECK(fmt && !strcmp(fmt, "llama.ao-adamw-lowbit-v1") && lf && !strcmp(lf, want),
          "resume: %s holds another optimizer's state (resume with the --optim it was trained with)", path);
    const StTensor *ts = st_find(st, "lowbit_state");
    size_t total = 0;
    for (int t = 0; t < tab->n; t++) total += lowbit_layout(m->opts.optim, tab->p[t].numel, LOWBIT_MASTER_F32).bytes;
    CHECK(ts && ts->dtype == ST_U8 && ts->nbytes == total,
          "resume: low-bit optimizer state in %s is not the %zu bytes this model needs", path, total);
    size_t so = 0;
    for (int t = 0; t < tab->n; t++) {
        LowbitLayout l = lowbit_layout(m->opts.optim, tab->p[t].numel, LOWBIT_MASTER_F32);
        const unsigned char *b = (const unsigned char *)ts->data + so;
        const int q = lowbit_quantized(l.fmt);
        add_src(S, t, SrcPiece{0, l.n, l.fmt, l.block, b + l.m_off, b + l.v_off, q ? b + l.m_scale_off : nullptr,
                               q ? b + l.v_scale_off : nullptr, path});
        so += l.bytes;
    }
}

// One rank's optimizer.rank<r>.safetensors as pieces.
static void sources_from_shard(Sources *S, const SafeTensors *st, const LlamaGpu *m, const char *path, int rank,
                               int world) {
    const ParamTable *tab = &m->tab;
    const char *fmt = st_meta(st, "format");
    CHECK(fmt && !strcmp(fmt, SHARD_FORMAT), "resume: %s is not a llama.ao optimizer shard", path);
    check_master(st, m, path);
    CHECK(meta_u64(st, "optim", path) == (unsigned long long)m->opts.optim,
          "resume: %s holds another optimizer's state (resume with the --optim it was trained with)", path);
    CHECK(meta_u64(st, "world", path) == (unsigned long long)world && meta_u64(st, "rank", path) == (unsigned long long)rank,
          "resume: %s does not say it is rank %d of %d", path, rank, world);
    CHECK(meta_u64(st, "total", path) == tab->total, "resume: %s is for a model of %llu parameters, this one has %zu",
          path, meta_u64(st, "total", path), tab->total);
    for (int t = 0; t < tab->n; t++) {
        const char *r = st_meta(st, tab->p[t].hf_name);
        if (!r) continue;
        unsigned long long b = 0, n = 0;
        int used = 0;
        CHECK(sscanf(r, "%llu %llu%n", &b, &n, &used) == 2 && r[used] == 0 && n > 0 && b + n <= tab->p[t].numel,
              "resume: %s: piece \"%s\" = \"%s\" is not a range inside the tensor's %zu elements", path,
              tab->p[t].hf_name, r, tab->p[t].numel);
        LowbitLayout l = zero_piece_layout(m->opts.optim, tab->p[t].numel, (size_t)n);
        const int q = lowbit_quantized(l.fmt);
        CHECK(!q || (b % (unsigned long long)l.block == 0 && n % (unsigned long long)l.block == 0),
              "resume: %s: piece of %s at %llu (+%llu) is not whole %d-element blocks", path, tab->p[t].hf_name, b, n,
              l.block);
        const size_t sb = q ? (l.fmt == LOWBIT_4BIT ? n / 2 : n) : n * sizeof(float);
        const size_t nb = q ? n / l.block : 0;
        const unsigned char *ptr[4] = {nullptr, nullptr, nullptr, nullptr};
        const char *suffix[4] = {".m", ".v", ".m_scale", ".v_scale"};
        for (int k = 0; k < (q ? 4 : 2); k++) {
            char nm[160];
            snprintf(nm, sizeof nm, "%s%s", tab->p[t].hf_name, suffix[k]);
            const StTensor *x = st_find(st, nm);
            const int f32 = k >= 2 || !q;
            const size_t bytes = k < 2 ? sb : nb * sizeof(float);
            CHECK(x && x->dtype == (f32 ? ST_F32 : ST_U8) && x->nbytes == bytes,
                  "resume: %s: tensor %s is missing or not %zu bytes of %s", path, nm, bytes, f32 ? "F32" : "U8");
            ptr[k] = (const unsigned char *)x->data;
        }
        add_src(S, t, SrcPiece{(size_t)b, (size_t)n, l.fmt, l.block, ptr[0], ptr[1], ptr[2], ptr[3], path});
    }
}

// Copies, into piece i of m, every overlapping part of the saved pieces of its tensor.
static void load_piece(const Sources *S, LlamaGpu *m, int i, const char *dir) {
    const ZeroPiece *pc = &m->plan->pieces[i];
    const ParamInfo *p = &m->tab.p[pc->tensor];
    LowbitState dst = llama_gpu_piece_state(m, i);
    const int q = lowbit_quantized(dst.fmt);
    size_t covered = 0;
    for (int k = 0; k < S->count[pc->tensor]; k++) {
        const SrcPiece *sp = &S->by_tensor[pc->tensor][k];
        const size_t x0 = pc->begin > sp->begin ? pc->begin : sp->begin;
        const size_t x1 = pc->begin + pc->n < sp->begin + sp->n ? pc->begin + pc->n : sp->begin + sp->n;
        if (x0 >= x1) continue;
        CHECK(sp->fmt == dst.fmt, "resume: %s keeps %s states in %s, this run %s", sp->file, p->hf_name,
              lowbit_format_name(sp->fmt), lowbit_format_name(dst.fmt));
        const size_t ds = x0 - pc->begin, ss = x0 - sp->begin, n = x1 - x0;
        if (!q) {
            CUDA_CHECK(cudaMemcpy((float *)dst.m + ds, sp->m + ss * sizeof(float), n * sizeof(float), cudaMemcpyDefault));
            CUDA_CHECK(cudaMemcpy((float *)dst.v + ds, sp->v + ss * sizeof(float), n * sizeof(float), cudaMemcpyDefault));
        } else {
            const size_t bl = (size_t)dst.block;
            CHECK(ds % bl == 0 && ss % bl == 0 && n % bl == 0, "resume: %s: pieces of %s overlap in part of a block",
                  sp->file, p->hf_name);
            const int half = dst.fmt == LOWBIT_4BIT;
            const size_t cd = half ? ds / 2 : ds, cs = half ? ss / 2 : ss, cn = half ? n / 2 : n;
            CUDA_CHECK(cudaMemcpy((unsigned char *)dst.m + cd, sp->m + cs, cn, cudaMemcpyDefault));
            CUDA_CHECK(cudaMemcpy((unsigned char *)dst.v + cd, sp->v + cs, cn, cudaMemcpyDefault));
            CUDA_CHECK(cudaMemcpy(dst.m_scale + ds / bl, sp->ms + ss / bl * sizeof(float), n / bl * sizeof(float),
                                  cudaMemcpyDefault));
            CUDA_CHECK(cudaMemcpy(dst.v_scale + ds / bl, sp->vs + ss / bl * sizeof(float), n / bl * sizeof(float),
                                  cudaMemcpyDefault));
        }
        covered += n;
    }
    CHECK(covered == pc->n, "resume: the optimizer state in %s covers %zu of the %zu elements [%zu, %zu) of %s this "
          "rank needs", dir, covered, pc->n, pc->begin, pc->begin + pc->n, p->hf_name);
}

static int load_pieces(const char *dir, LlamaGpu *m) {
    Sources S;
    memset(&S, 0, sizeof S);
    const int nt = m->tab.n;
    S.by_tensor = (SrcPiece **)ao_calloc((size_t)nt, sizeof(SrcPiece *));
    S.count = (int *)ao_calloc((size_t)nt, sizeof(int));
    S.cap = (int *)ao_calloc((size_t)nt, sizeof(int));
    char err[1024], path[4096];
    char *single = path_join(dir, "optimizer.safetensors");
    if (file_exists(single)) {
        S.files = (SafeTensors *)ao_calloc(1, sizeof(SafeTensors));
        if (!st_open(&S.files[0], single, err, sizeof err)) FAIL("resume: %s", err);
        S.n_files = 1;
        S.step = parse_step(&S.files[0], single);
        sources_from_single(&S, &S.files[0], m, single);
    } else {
        shard_path(path, sizeof path, dir, 0);
        CHECK(file_exists(path), "resume: %s holds neither optimizer.safetensors nor optimizer.rank00000.safetensors", dir);
        SafeTensors first;
        if (!st_open(&first, path, err, sizeof err)) FAIL("resume: %s", err);
        const unsigned long long world = meta_u64(&first, "world", path);
        st_close(&first);
        CHECK(world >= 1 && world <= (1u << 20), "resume: %s: world %llu", path, world);
        S.files = (SafeTensors *)ao_calloc((size_t)world, sizeof(SafeTensors));
        for (int r = 0; r < (int)world; r++) {
            shard_path(path, sizeof path, dir, r);
            CHECK(file_exists(path), "resume: %s is missing (the checkpoint was written by %llu ranks)", path, world);
            if (!st_open(&S.files[r], path, err, sizeof err)) FAIL("resume: %s", err);
            S.n_files = r + 1;
            const int step = parse_step(&S.files[r], path);
            CHECK(r == 0 || step == S.step, "resume: %s is from step %d, rank 0's shard from step %d", path, step, S.step);
            S.step = step;
            sources_from_shard(&S, &S.files[r], m, path, r, (int)world);
        }
    }
    free(single);
    for (int i = 0; i < m->plan->n_pieces; i++) load_piece(&S, m, i, dir);
    for (int f = 0; f < S.n_files; f++) st_close(&S.files[f]);
    for (int t = 0; t < nt; t++) free(S.by_tensor[t]);
    free(S.by_tensor);
    free(S.count);
    free(S.cap);
    free(S.files);
    return S.step;
}

int ckpt_load_optimizer(const char *dir, LlamaGpu *m) {
    char err[1024];
    llama_gpu_optim_sync(m);  // no overlapped step (--optim-overlap) may still write the states
    llama_gpu_params_sync(m);  // nor an all-gather (--zero-gather-overlap) read or write the weights
    char *op = path_join(dir, "optimizer.safetensors");
    // A one-process checkpoint into a one-process run: the saved arrays are this run's memory
    // image, copied whole. Everything else goes piece by piece.
    if (m->opts.zero || !file_exists(op)) {
        free(op);
        const int step = load_pieces(dir, m);
        // The copies ran on the legacy stream and, from pageable memory, may return before the data
        // lands; the next step's kernels read the states on non-blocking streams that do not wait for it.
        CUDA_CHECK(cudaDeviceSynchronize());
        return step;
    }
    SafeTensors st;
    if (!st_open(&st, op, err, sizeof err)) FAIL("resume: %s", err);
    check_master(&st, m, op);
    free(op);
    const char *fmt = st_meta(&st, "format"), *step_s = st_meta(&st, "step");
    CHECK(step_s, "resume: optimizer state lacks its step");
    char *end;
    long step = strtol(step_s, &end, 10);
    CHECK(*end == 0 && step >= 0 && step < 2147483647L, "resume: bad step \"%s\" in optimizer state", step_s);
    if (m->opts.optim == LOWBIT_F32) {
        CHECK(fmt && !strcmp(fmt, "llama.ao-adamw-v1"),
              "resume: %s/optimizer.safetensors is not an fp32 AdamW state (resume with the --optim it was trained with)", dir);
        const StTensor *tm = st_find(&st, "adam_m"), *tv = st_find(&st, "adam_v");
        CHECK(tm && tv && tm->dtype == ST_F32 && tv->dtype == ST_F32 && tm->numel == m->tab.total &&
                  tv->numel == m->tab.total,
              "resume: optimizer state in %s does not match the model (%zu parameters expected)", dir, m->tab.total);
        CUDA_CHECK(cudaMemcpy(m->adam_m, tm->data, tm->nbytes, cudaMemcpyDefault));
        CUDA_CHECK(cudaMemcpy(m->adam_v, tv->data, tv->nbytes, cudaMemcpyDefault));
    } else {
        const char *lf = st_meta(&st, "lowbit_format");
        char want[8];
        snprintf(want, sizeof want, "%d", (int)m->opts.optim);
        CHECK(fmt && !strcmp(fmt, "llama.ao-adamw-lowbit-v1") && lf && !strcmp(lf, want),
              "resume: %s/optimizer.safetensors holds another optimizer's state (resume with the --optim it was "
              "trained with)", dir);
        const StTensor *ts = st_find(&st, "lowbit_state");
        CHECK(ts && ts->dtype == ST_U8 && ts->nbytes == m->state_bytes,
              "resume: low-bit optimizer state in %s is not the %zu bytes this model needs", dir, m->state_bytes);
        CUDA_CHECK(cudaMemcpy(m->state_mem, ts->data, ts->nbytes, cudaMemcpyDefault));
    }
    CUDA_CHECK(cudaDeviceSynchronize());  // the copies have landed, as above
    st_close(&st);
    return (int)step;
}
