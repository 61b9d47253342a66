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
#include "../data/corpus.h"
#include "../data/tokenizer.h"

typedef enum { F_STR, F_INT, F_DBL, F_BOOL } FlagType;
typedef struct {
    const char *name;
    FlagType type;
    void *dst;
    const char *help;
} Flag;

static const char *g_tok, *g_out, *g_bench;
static int g_ids, g_threads, g_help;
static double g_val = 0.05;

static const Flag FLAGS[] = {
    {"-t", F_STR, &g_tok, "tokenizer: tokenizer.json, tokenizer.model, encoder.json or a directory"},
    {"--ids", F_BOOL, &g_ids, "read lines on stdin, print each line's ids"},
    {"-o", F_STR, &g_out, "output prefix for PREFIX_train.bin / PREFIX_val.bin"},
    {"--val-fraction", F_DBL, &g_val, "fraction of each file (its end) that goes to the val shard"},
    {"--threads", F_INT, &g_threads, "encoding threads for shards (0 = all cores)"},
    {"--bench", F_STR, &g_bench, "measure single-thread encoding MB/s over the lines of this file"},
    {"-h", F_BOOL, &g_help, "this help"},
};
#define N_FLAGS (sizeof FLAGS / sizeof FLAGS[0])

static void usage(FILE *f) {
    fprintf(f, "usage: tokenize -t TOKENIZER (--ids | --bench FILE | -o PREFIX FILE...)\n");
    for (size_t i = 0; i < N_FLAGS; i++) fprintf(f, "  %-16s %s\n", FLAGS[i].name, FLAGS[i].help);
}

static size_t parse_flags(int argc, char **argv, char **pos) {
    size_t np = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] != '-' || strcmp(argv[i], "-") == 0) { pos[np++] = argv[i]; continue; }
        const Flag *f = NULL;
        for (size_t k = 0; k < N_FLAGS; k++)
            if (strcmp(argv[i], FLAGS[k].name) == 0) f = &FLAGS[k];
        if (!f) { usage(stderr); FAIL("unknown flag %s", argv[i]); }
        if (f->type == F_BOOL) { *(int *)f->dst = 1; continue; }
        CHECK(i + 1 < argc, "flag %s needs a value", argv[i]);
        const char *v = argv[++i];
        char *end;
        if (f->type == F_STR) *(const char **)f->dst = v;
        else if (f->type == F_INT) {
            long x = strtol(v, &end, 10);
            CHECK(*v && !*end && x >= 0 && x < 100000, "flag %s: \"%s\" is not a count", f->name, v);
            *(int *)f->dst = (int)x;
        } else {
            double x = strtod(v, &end);
            CHECK(*v && !*end, "flag %s: \"%s\" is not a number", f->name, v);
            *(double *)f->dst = x;
        }
    }
    return np;
}

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
    char **pos = calloc((size_t)argc + 1, sizeof *pos);
    size_t np = parse_flags(argc, argv, pos);
    if (g_help) { usage(stdout); free(pos); return 0; }
    if (!g_tok) { usage(stderr); FAIL("-t TOKENIZER is required"); }
    Tokenizer *tok = tokenizer_load(g_tok);
    if (g_ids) print_ids(tok);
    else if (g_bench) bench(tok, g_bench);
    else {
        if (!g_out || np == 0) { usage(stderr); FAIL("give --ids, --bench FILE, or -o PREFIX and input files"); }
        tokenize_files_to_shards(tok, (const char *const *)pos, np, g_out, g_val, g_threads, 1, NULL, NULL);
    }
    tokenizer_free(tok);
    free(pos);
    return 0;
}
