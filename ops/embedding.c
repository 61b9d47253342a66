#include "embedding.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

// Tokens come from data files; validate serially before any parallel region so that a
// CHECK failure (which may longjmp in tests) never happens inside an OpenMP thread.
static void check_tokens(const int32_t *tokens, int N, int V) {
    for (int n = 0; n < N; n++)
        CHECK(tokens[n] >= 0 && tokens[n] < V, "embedding: token id %d at position %d is outside the vocabulary [0, %d)",
              tokens[n], n, V);
}

void embedding_forward_cpu(float *out, const int32_t *tokens, const float *wte, int N, int V, int D) {
    check_tokens(tokens, N, V);
#pragma omp parallel for
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * D, wte + (size_t)tokens[n] * D, (size_t)D * sizeof(float));
}

// Column blocks keep rows contiguous in the inner loop while still giving every dwte
// element exactly one writer, so repeated tokens need no atomics and the sum order is
// always n = 0..N-1.
#define EMB_COL_BLOCK 64

void embedding_backward_cpu(float *dwte, const float *dout, const int32_t *tokens, int N, int V, int D) {
    check_tokens(tokens, N, V);
    int nblocks = (D + EMB_COL_BLOCK - 1) / EMB_COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int d0 = blk * EMB_COL_BLOCK, d1 = d0 + EMB_COL_BLOCK < D ? d0 + EMB_COL_BLOCK : D;
        for (int n = 0; n < N; n++) {
            float *dst = dwte + (size_t)tokens[n] * D;
            const float *src = dout + (size_t)n * D;
            for (int d = d0; d < d1; d++) dst[d] += src[d];
        }
    }
}

// Counting sort: O(N + V) and stable because positions are placed in increasing n.
int embedding_buckets_cpu(int32_t *sorted_pos, int32_t *bucket_start, int32_t *bucket_token, const int32_t *tokens,
                          int N, int V) {
    CHECK(N >= 0 && V > 0, "embedding_buckets: bad shape N=%d V=%d", N, V);
    check_tokens(tokens, N, V);
    int32_t *next = ao_calloc((size_t)V, sizeof(int32_t));  // count, then next free slot
    for (int n = 0; n < N; n++) next[tokens[n]]++;
    int nb = 0, off = 0;
    for (int v = 0; v < V; v++) {
        int c = next[v];
        if (c == 0) continue;
        bucket_token[nb] = v;
        bucket_start[nb++] = off;
        next[v] = off;
        off += c;
    }
    bucket_start[nb] = off;
    for (int n = 0; n < N; n++) sorted_pos[next[tokens[n]]++] = n;
    free(next);
    return nb;
}
