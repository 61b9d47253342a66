#include "corpus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../common/error.h"
#include "../common/fileio.h"
#include "shard.h"
#include "tokenizer_internal.h"

#define CHUNK_BYTES ((size_t)1 << 18)

static int is_alnum_ascii(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// Chunk ends: after CHUNK_BYTES, the next position p with s[p-2] a visible ASCII character,
// s[p-1] == '\n' and s[p] an ASCII letter or digit, where tok_newline_cut_safe() says the ids
// are the same either way (later chunks are encoded with TOK_INTERNAL_CONTINUE); one chunk
// when it does not. Why a lone '\n': GPT-2's \s+(?!\S) takes "  \n" or "\n\n" whole at the end
// of a chunk but leaves the '\n' to a piece of its own before a letter.
static size_t chunk_ends(const Tokenizer *tok, const char *s, size_t n, size_t **ends) {
    size_t cap = n / CHUNK_BYTES + 2, k = 0;
    *ends = ao_malloc(cap * sizeof **ends);
    if (!tok_newline_cut_safe(tok)) {
        if (n) (*ends)[k++] = n;
        return k;
    }
    size_t p = 0;
    while (p < n) {
        size_t e = p + CHUNK_BYTES;
        while (e < n && !(s[e - 1] == '\n' && is_alnum_ascii(s[e]) && (uint8_t)s[e - 2] > ' ' &&
                          (uint8_t)s[e - 2] < 0x7F))
            e++;
        if (e > n) e = n;
        if (k == cap) cap *= 2, *ends = ao_realloc(*ends, cap * sizeof **ends);
        (*ends)[k++] = e;
        p = e;
    }
    return k;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Encodes s[0..n) chunk-parallel and appends the ids as one document.
static size_t encode_doc(const Tokenizer *tok, const char *s, size_t n, ShardWriter *w, int threads,
                         size_t *done_bytes, size_t total_bytes, double t0, int progress) {
    size_t *ends;
    size_t nc = chunk_ends(tok, s, n, &ends);
    TokIds *out = ao_calloc(nc ? nc : 1, sizeof *out);
    (void)threads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (size_t c = 0; c < nc; c++) {
        size_t b = c ? ends[c - 1] : 0;
        tokenizer_encode(tok, s + b, ends[c] - b, TOK_ALLOW_SPECIAL | (c ? TOK_INTERNAL_CONTINUE : 0), &out[c]);
    }
    size_t total = 0;
    for (size_t c = 0; c < nc; c++) {
        if (c == 0) shard_writer_doc(w, out[c].ids, out[c].n);
        else shard_writer_append(w, out[c].ids, out[c].n);
        total += out[c].n;
        tok_ids_free(&out[c]);
    }
    if (nc == 0) shard_writer_doc(w, NULL, 0);
    *done_bytes += n;
    if (progress) {
        double dt = now_s() - t0;
        fprintf(stderr, "\rtokenize: %.1f / %.1f MB, %.1f MB/s", *done_bytes / 1e6, total_bytes / 1e6,
                dt > 0 ? *done_bytes / dt / 1e6 : 0.0);
        fflush(stderr);
    }
    free(out);
    free(ends);
    return total;
}

void tokenize_files_to_shards(const Tokenizer *tok, const char *const *files, size_t n_files, const char *out_prefix,
                              double val_fraction, int threads, int progress, size_t *n_train, size_t *n_val) {
    CHECK(val_fraction >= 0 && val_fraction < 1, "val fraction %g must be in [0, 1)", val_fraction);
#ifdef _OPENMP
    if (threads <= 0) threads = omp_get_max_threads();
#else
    threads = 1;
#endif
    int32_t sep = tokenizer_wants_bos(tok) ? tokenizer_bos_id(tok) : tokenizer_eos_id(tok);
    size_t plen = strlen(out_prefix) + 16;
    char *tp = ao_malloc(plen), *vp = ao_malloc(plen);
    snprintf(tp, plen, "%s_train.bin", out_prefix);
    snprintf(vp, plen, "%s_val.bin", out_prefix);
    ShardWriter wt, wv;
    shard_writer_open(&wt, tp, tokenizer_vocab_size(tok), sep);
    shard_writer_open(&wv, vp, tokenizer_vocab_size(tok), sep);
    size_t total_bytes = 0, done = 0;
    for (size_t i = 0; i < n_files; i++) {
        MappedFile mf;
        char err[512];
        CHECK(map_file(files[i], &mf, err, sizeof err), "%s", err);
        total_bytes += mf.size;
        unmap_file(&mf);
    }
    double t0 = now_s();
    size_t nt = 0, nv = 0;
    for (size_t i = 0; i < n_files; i++) {
        MappedFile mf;
        char err[512];
        CHECK(map_file(files[i], &mf, err, sizeof err), "%s", err);
        const char *s = (const char *)mf.data;
        size_t n = mf.size, cut = n - (size_t)((double)n * val_fraction);
        while (cut < n && cut > 0 && s[cut - 1] != '\n') cut++;  // val starts at a line
        nt += encode_doc(tok, s, cut, &wt, threads, &done, total_bytes, t0, progress);
        if (cut < n) nv += encode_doc(tok, s + cut, n - cut, &wv, threads, &done, total_bytes, t0, progress);
        unmap_file(&mf);
    }
    shard_writer_close(&wt);
    shard_writer_close(&wv);
    if (progress)
        fprintf(stderr, "\rtokenize: %.1f MB -> %zu train + %zu val tokens (%s, %s) in %.1f s\n", total_bytes / 1e6, nt,
                nv, tp, vp, now_s() - t0);
    free(tp);
    free(vp);
    if (n_train) *n_train = nt;
    if (n_val) *n_val = nv;
}
