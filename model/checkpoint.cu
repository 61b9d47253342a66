// Training checkpoints: a directory written under a temporary name and renamed, with a
// DONE marker written last, holding
//   config.json + model.safetensors   fp32 master weights, loadable by transformers and infer_llama
//   optimizer.safetensors             AdamW moments (adam_m, adam_v, flat fp32) + step in metadata
//   loader.state                      data-loader position (data/loader.h)
//   trainer.json                      step and the settings that shape the trajectory
//   tokenizer files                   copied from the training tokenizer, when known
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

void ckpt_save(const char *out_dir, int step, LlamaGpu *m, LlamaModel *cpu, const DataLoader *dl, const char *tokenizer,
               const char *trainer_json) {
    char name[64], err[1024];
    snprintf(name, sizeof name, "ckpt_%06d", step);
    char *final_dir = path_join(out_dir, name);
    size_t L = strlen(final_dir) + 8;
    char *tmp = (char *)ao_malloc(L);
    snprintf(tmp, L, "%s.tmp", final_dir);
    remove_tree(tmp);
    CHECK(make_dirs(tmp), "cannot create %s", tmp);
    llama_gpu_download(m, cpu);
    if (!model_save_hf(cpu, tmp, 0, err, sizeof err)) FAIL("checkpoint: %s", err);
    // optimizer moments: fp32 m and v, or the low-bit state regions as they are in memory
    const size_t P = m->tab.total;
    char step_s[32], fmt_s[8];
    snprintf(step_s, sizeof step_s, "%d", step);
    snprintf(fmt_s, sizeof fmt_s, "%d", (int)m->opts.optim);
    char *op = path_join(tmp, "optimizer.safetensors");
    if (m->opts.optim == LOWBIT_F32) {
        float *hm = (float *)ao_malloc(P * sizeof(float)), *hv = (float *)ao_malloc(P * sizeof(float));
        CUDA_CHECK(cudaMemcpy(hm, m->adam_m, P * sizeof(float), cudaMemcpyDefault));
        CUDA_CHECK(cudaMemcpy(hv, m->adam_v, P * sizeof(float), cudaMemcpyDefault));
        StWriteTensor t[2] = {{"adam_m", ST_F32, 1, {(int64_t)P}, hm}, {"adam_v", ST_F32, 1, {(int64_t)P}, hv}};
        const char *mk[] = {"format", "step"}, *mv[] = {"llama.ao-adamw-v1", step_s};
        if (!st_write(op, t, 2, mk, mv, 2, err, sizeof err)) FAIL("checkpoint: %s", err);
        free(hm);
        free(hv);
    } else {
        unsigned char *hs = (unsigned char *)ao_malloc(m->state_bytes);
        CUDA_CHECK(cudaMemcpy(hs, m->state_mem, m->state_bytes, cudaMemcpyDefault));
        StWriteTensor t[1] = {{"lowbit_state", ST_U8, 1, {(int64_t)m->state_bytes}, hs}};
        const char *mk[] = {"format", "step", "lowbit_format"}, *mv[] = {"llama.ao-adamw-lowbit-v1", step_s, fmt_s};
        if (!st_write(op, t, 1, mk, mv, 3, err, sizeof err)) FAIL("checkpoint: %s", err);
        free(hs);
    }
    free(op);
    if (dl) {
        char *lp = path_join(tmp, "loader.state");
        loader_save_state(dl, lp);
        free(lp);
    }
    char *tp = path_join(tmp, "trainer.json");
    AtomicFile af;
    if (!atomic_open(&af, tp, err, sizeof err)) FAIL("%s", err);
    fputs(trainer_json, af.f);
    if (!atomic_close(&af, err, sizeof err)) FAIL("%s", err);
    free(tp);
    copy_tokenizer(tokenizer, tmp);
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

int ckpt_load_optimizer(const char *dir, LlamaGpu *m) {
    char err[1024];
    char *op = path_join(dir, "optimizer.safetensors");
    SafeTensors st;
    if (!st_open(&st, op, err, sizeof err)) FAIL("resume: %s", err);
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
    st_close(&st);
    return (int)step;
}
