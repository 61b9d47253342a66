// tokenize: text -> token ids or token shards, with any tokenizer data/tokenizer.h loads.
//
//   tokenize --ids -t TOK                 stdin lines -> ids per line, space-separated, as
//                                         HF Tokenizer.encode(line, add_special_tokens=False)
//   tokenize -t TOK -o PREFIX [--val-fraction 0.05] [--threads N] FILE...
//                                         -> PREFIX_train.bin, PREFIX_val.bin (data/shard.h)
//   tokenize --bench FILE -t TOK          single-thread encode speed over FILE's lines
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/flags.h"
#include "../data/corpus.h"
#include "../data/tokenizer.h"

static const char *g_tok, *g_out, *g_bench;
static int g_ids, g_threads;
static float g_val = 0.05f;

static const Flag FLAGS[] = {
    {"-t", "--tokenizer", FLAG_STR, &g_tok, "tokenizer: tokenizer.json, tokenizer.model, encoder.json or a directory", 1, 0},
    {"--ids", NULL, FLAG_BOOL, &g_ids, "read lines on stdin, print each line's ids", 1, 0},
    {"-o", "--out", FLAG_STR, &g_out, "output prefix for PREFIX_train.bin / PREFIX_val.bin", 1, 0},
    {"--val-fraction", NULL, FLAG_FLOAT, &g_val, "fraction of each file (its end) that goes to the val shard", 0, 1},
    {"--threads", NULL, FLAG_INT, &g_threads, "encoding threads for shards (0 = all cores)", 0, 4096},
    {"--bench", NULL, FLAG_STR, &g_bench, "measure single-thread encoding MB/s over the lines of this file", 1, 0},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))
static const char *SYNOPSIS = "-t TOKENIZER (--ids | --bench FILE | -o PREFIX FILE...)";

static void print_ids(const Tokenizer *tok) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    TokIds v = {0};
    char buf[1 << 16];
    setvbuf(stdout, buf, _IOFBF, sizeof buf);
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') n--;
        v.n = 0;
        tokenizer_encode(tok, line, (size_t)n, TOK_ALLOW_SPECIAL, &v);
        for (size_t i = 0; i < v.n; i++) printf(i ? " %d" : "%d", v.ids[i]);
        putchar('\n');
    }
    fflush(stdout);
    free(line);
    tok_ids_free(&v);
}

static void bench(const Tokenizer *tok, const char *path) {
    char *text, err[512];
    size_t len;
    CHECK(read_file_all(path, (size_t)1 << 31, &text, &len, err, sizeof err), "%s", err);
    TokIds v = {0};
    size_t count = 0;
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        count = 0;
        for (size_t p = 0; p < len;) {
            const char *nl = memchr(text + p, '\n', len - p);
            size_t e = nl ? (size_t)(nl - text) : len;
            v.n = 0;
            tokenizer_encode(tok, text + p, e - p, TOK_ALLOW_SPECIAL, &v);
            count += v.n;
            p = e + 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double dt = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
        if (dt < best) best = dt;
    }
    printf("%s: %.2f MB, %zu tokens, best of 3: %.3f s, %.1f MB/s (1 thread)\n", path, len / 1e6, count, best,
           len / best / 1e6);
    tok_ids_free(&v);
    free(text);
}

int main(int argc, char **argv) {
    char **pos = ao_calloc((size_t)argc + 1, sizeof *pos);
    int np = 0;
    if (!flags_parse_pos(FLAGS, N_FLAGS, argc, argv, "tokenize", SYNOPSIS, pos, &np)) { free(pos); return 0; }
    if (!g_tok) { flags_usage(stderr, FLAGS, N_FLAGS, "tokenize", SYNOPSIS); FAIL("-t TOKENIZER is required"); }
    Tokenizer *tok = tokenizer_load(g_tok);
    if (g_ids) print_ids(tok);
    else if (g_bench) bench(tok, g_bench);
    else {
        if (!g_out || np == 0) {
            flags_usage(stderr, FLAGS, N_FLAGS, "tokenize", SYNOPSIS);
            FAIL("give --ids, --bench FILE, or -o PREFIX and input files");
        }
        tokenize_files_to_shards(tok, (const char *const *)pos, (size_t)np, g_out, g_val, g_threads, 1, NULL, NULL);
    }
    tokenizer_free(tok);
    free(pos);
    return 0;
}
