#include "loader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [0, n) without modulo bias (Lemire's method with rejection).
static uint64_t rand_below(uint64_t *s, uint64_t n) {
    for (;;) {
        uint64_t x = splitmix64(s);
        __uint128_t m = (__uint128_t)x * n;
        uint64_t l = (uint64_t)m;
        if (l >= n || l >= (-n) % n) return (uint64_t)(m >> 64);
    }
}

static void permute(uint32_t *a, uint64_t n, uint64_t seed, uint64_t a1, uint64_t a2, int shuffle) {
    for (uint64_t i = 0; i < n; i++) a[i] = (uint32_t)i;
    if (!shuffle) return;
    uint64_t s = seed ^ (a1 * 0xD1B54A32D192ED03ull) ^ (a2 * 0x8CB92BA72F3D8DD7ull);
    splitmix64(&s);
    for (uint64_t i = n; i > 1; i--) {  // Fisher-Yates
        uint64_t j = rand_below(&s, i);
        uint32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

static uint64_t shard_samples(const DataLoader *dl, size_t s) {
    uint64_t c = dl->shards[s].count;
    return c > 0 ? (c - 1) / (uint64_t)dl->T : 0;
}

static void build_epoch(DataLoader *dl) {
    permute(dl->shard_order, dl->n_shards, dl->st.seed, dl->st.epoch, UINT64_MAX, dl->shuffle);
    dl->perm_shard = UINT64_MAX;
}

// Makes sample_order match the current (epoch, shard cursor).
static void build_shard(DataLoader *dl) {
    if (dl->perm_epoch == dl->st.epoch && dl->perm_shard == dl->st.shard_cursor) return;
    if (dl->perm_epoch != dl->st.epoch) {
        build_epoch(dl);
        dl->perm_epoch = dl->st.epoch;
    }
    size_t s = dl->shard_order[dl->st.shard_cursor];
    dl->n_samples = shard_samples(dl, s);
    free(dl->sample_order);
    dl->sample_order = ao_malloc((dl->n_samples ? dl->n_samples : 1) * sizeof *dl->sample_order);
    permute(dl->sample_order, dl->n_samples, dl->st.seed, dl->st.epoch, s, dl->shuffle);
    dl->perm_shard = dl->st.shard_cursor;
}

void loader_init(DataLoader *dl, const char *const *paths, size_t n_paths, int32_t model_vocab, int B, int T,
                 int rank, int world, uint64_t seed, int shuffle) {
    memset(dl, 0, sizeof *dl);
    CHECK(n_paths > 0, "data loader: no shard files given");
    CHECK(B > 0 && T > 0, "data loader: B=%d T=%d must be positive", B, T);
    CHECK(world > 0 && rank >= 0 && rank < world, "data loader: rank %d of world %d", rank, world);
    dl->B = B, dl->T = T, dl->rank = rank, dl->world = world, dl->shuffle = shuffle;
    dl->shards = ao_calloc(n_paths, sizeof *dl->shards);
    dl->n_shards = n_paths;
    uint64_t total = 0;
    for (size_t i = 0; i < n_paths; i++) {
        shard_open(&dl->shards[i], paths[i], model_vocab);
        CHECK(shard_samples(dl, i) < UINT32_MAX, "%s: too many samples for one shard", paths[i]);
        total += shard_samples(dl, i);
    }
    CHECK(total > 0, "data loader: no shard holds more than T=%d tokens", T);
    dl->shard_order = ao_malloc(n_paths * sizeof *dl->shard_order);
    dl->st.seed = seed;
    dl->perm_epoch = dl->perm_shard = UINT64_MAX;
    build_shard(dl);
}

void loader_free(DataLoader *dl) {
    for (size_t i = 0; i < dl->n_shards; i++) shard_close(&dl->shards[i]);
    free(dl->shards);
    free(dl->shard_order);
    free(dl->sample_order);
    memset(dl, 0, sizeof *dl);
}

// The next sample of the global stream: (shard index, sample index); advances the cursor.
static void next_sample(DataLoader *dl, size_t *shard, uint64_t *sample) {
    for (;;) {
        build_shard(dl);
        if (dl->st.sample_cursor < dl->n_samples) break;
        dl->st.sample_cursor = 0;
        if (++dl->st.shard_cursor == dl->n_shards) {
            dl->st.shard_cursor = 0;
            dl->st.epoch++;
        }
    }
    *shard = dl->shard_order[dl->st.shard_cursor];
    *sample = dl->sample_order[dl->st.sample_cursor++];
}

void loader_next(DataLoader *dl, int32_t *inputs, int32_t *targets) {
    const size_t T = (size_t)dl->T;
    for (int r = 0; r < dl->world; r++) {
        for (int b = 0; b < dl->B; b++) {
            size_t s;
            uint64_t j;
            next_sample(dl, &s, &j);
            if (r != dl->rank) continue;
            const Shard *sh = &dl->shards[s];
            uint64_t base = j * T;
            int32_t *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
            for (size_t k = 0; k < T; k++) {
                in[k] = (int32_t)shard_token(sh, base + k);
                tg[k] = (int32_t)shard_token(sh, base + k + 1);
            }
        }
    }
}

LoaderState loader_get_state(const DataLoader *dl) { return dl->st; }

void loader_set_state(DataLoader *dl, LoaderState st) {
    CHECK(st.seed == dl->st.seed, "loader state: seed %llu, this run uses %llu", (unsigned long long)st.seed,
          (unsigned long long)dl->st.seed);
    CHECK(st.shard_cursor < dl->n_shards, "loader state: shard cursor %llu of %zu shards",
          (unsigned long long)st.shard_cursor, dl->n_shards);
    dl->st = st;
    build_shard(dl);
    CHECK(st.sample_cursor <= dl->n_samples, "loader state: sample cursor %llu past the shard's %llu samples",
          (unsigned long long)st.sample_cursor, (unsigned long long)dl->n_samples);
}

#define STATE_MAGIC "AOLDRST1"
#define STATE_VERSION 1u
#define STATE_BYTES (8 + 4 + 4 * 8 + 4 * 4)

static void put(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void loader_save_state(const DataLoader *dl, const char *path) {
    uint8_t b[STATE_BYTES];
    memcpy(b, STATE_MAGIC, 8);
    put(b + 8, STATE_VERSION, 4);
    put(b + 12, dl->st.seed, 8);
    put(b + 20, dl->st.epoch, 8);
    put(b + 28, dl->st.shard_cursor, 8);
    put(b + 36, dl->st.sample_cursor, 8);
    put(b + 44, (uint64_t)dl->B, 4);
    put(b + 48, (uint64_t)dl->T, 4);
    put(b + 52, (uint64_t)dl->world, 4);
    put(b + 56, dl->n_shards, 4);
    AtomicFile af;
    char err[512];
    CHECK(atomic_open(&af, path, err, sizeof err), "%s", err);
    CHECK(fwrite(b, 1, sizeof b, af.f) == sizeof b, "%s: write failed", path);
    CHECK(atomic_close(&af, err, sizeof err), "%s", err);
}

void loader_load_state(DataLoader *dl, const char *path) {
    char *buf, err[512];
    size_t n;
    CHECK(read_file_all(path, 4096, &buf, &n, err, sizeof err), "%s", err);
    const uint8_t *b = (const uint8_t *)buf;
    int ok_magic = n >= 12 && memcmp(b, STATE_MAGIC, 8) == 0;
    uint32_t ver = ok_magic ? (uint32_t)get(b + 8, 4) : 0;
    if (!ok_magic || ver != STATE_VERSION || n != STATE_BYTES) {
        free(buf);
        FAIL("%s: not a loader state file (magic, version %u or size %zu wrong)", path, ver, n);
    }
    LoaderState st = {get(b + 12, 8), get(b + 20, 8), get(b + 28, 8), get(b + 36, 8)};
    uint64_t B = get(b + 44, 4), T = get(b + 48, 4), world = get(b + 52, 4), ns = get(b + 56, 4);
    free(buf);
    CHECK(B == (uint64_t)dl->B && T == (uint64_t)dl->T && world == (uint64_t)dl->world && ns == dl->n_shards,
          "%s: saved with B=%llu T=%llu world=%llu shards=%llu; this run has B=%d T=%d world=%d shards=%zu", path,
          (unsigned long long)B, (unsigned long long)T, (unsigned long long)world, (unsigned long long)ns, dl->B, dl->T,
          dl->world, dl->n_shards);
    loader_set_state(dl, st);
}
