#include "matmul.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

// Forward tiles: RN rows of inp x RM rows of W share every load, and each of the RN*RM
// dot products keeps VL independent partial sums so the k loop vectorizes without
// reassociating anything the compiler can't. Every output is computed by one thread in a
// fixed order, so results do not depend on the thread count.
enum { RN = 4, RM = 4, VL = 8 };

// out[n0..n0+rn, m0..m0+rm] for rn <= RN, rm <= RM (edge tiles reuse the same code).
static void tile(float *out, const float *inp, const float *weight, const float *bias, int n0, int rn, int m0, int rm,
                 int K, int M) {
    float acc[RN][RM][VL];
    memset(acc, 0, sizeof acc);
    const float *a[RN], *w[RM];
    for (int i = 0; i < RN; i++) a[i] = inp + (size_t)(n0 + (i < rn ? i : 0)) * K;
    for (int j = 0; j < RM; j++) w[j] = weight + (size_t)(m0 + (j < rm ? j : 0)) * K;
    int kv = K - K % VL;
    for (int k = 0; k < kv; k += VL)
        for (int i = 0; i < RN; i++)
            for (int j = 0; j < RM; j++)
                for (int l = 0; l < VL; l++) acc[i][j][l] += a[i][k + l] * w[j][k + l];
    for (int i = 0; i < rn; i++)
        for (int j = 0; j < rm; j++) {
            float s = 0.0f;
            for (int l = 0; l < VL; l++) s += acc[i][j][l];
            for (int k = kv; k < K; k++) s += a[i][k] * w[j][k];
            out[(size_t)(n0 + i) * M + m0 + j] = s + (bias ? bias[m0 + j] : 0.0f);
        }
}

void matmul_forward_cpu(float *out, const float *inp, const float *weight, const float *bias, int N, int K, int M) {
    int tn = (N + RN - 1) / RN, tm = (M + RM - 1) / RM;
#pragma omp parallel for collapse(2) schedule(static)
    for (int bn = 0; bn < tn; bn++)
        for (int bm = 0; bm < tm; bm++) {
            int n0 = bn * RN, m0 = bm * RM;
            tile(out, inp, weight, bias, n0, N - n0 < RN ? N - n0 : RN, m0, M - m0 < RM ? M - m0 : RM, K, M);
        }
}

// dst[r, :] += sum_{s<S} coef[r*cr + s*cs] * src[s, :] for r < R <= RN rows of length K.
// Both backward products have this shape; summing R rows against one streamed src row
// reuses each src load R times, the k loop is contiguous and vectorizes, and the s order
// is fixed so the result is deterministic.
static void accum_rows(float *dst, const float *coef, size_t cr, size_t cs, const float *src, int R, int S, int K,
                       float *restrict acc) {
    memset(acc, 0, (size_t)R * K * sizeof(float));
    for (int s = 0; s < S; s++) {
        const float *restrict x = src + (size_t)s * K;
        for (int r = 0; r < R; r++) {
            float c = coef[r * cr + s * cs];
            float *restrict ar = acc + (size_t)r * K;
            // gcc -O2 only vectorizes loops without a scalar tail unless asked.
#pragma omp simd
            for (int k = 0; k < K; k++) ar[k] += c * x[k];
        }
    }
    for (int r = 0; r < R; r++)
#pragma omp simd
        for (int k = 0; k < K; k++) dst[(size_t)r * K + k] += acc[(size_t)r * K + k];
}

void matmul_backward_cpu(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                         const float *weight, int N, int K, int M) {
#pragma omp parallel
    {
        float *acc = ao_malloc((size_t)RN * K * sizeof(float));
        if (dinp) {
            // dinp[n, :] += sum_m dout[n, m] W[m, :]
#pragma omp for schedule(static)
            for (int n0 = 0; n0 < N; n0 += RN)
                accum_rows(dinp + (size_t)n0 * K, dout + (size_t)n0 * M, M, 1, weight, N - n0 < RN ? N - n0 : RN, M,
                           K, acc);
        }
        if (dweight) {
            // dweight[m, :] += sum_n dout[n, m] inp[n, :]
#pragma omp for schedule(static)
            for (int m0 = 0; m0 < M; m0 += RN)
                accum_rows(dweight + (size_t)m0 * K, dout + m0, 1, M, inp, M - m0 < RN ? M - m0 : RN, N, K, acc);
        }
        free(acc);
        if (dbias) {
            // Column blocks: one writer per dbias element, rows summed in order, in double.
            enum { BLK = 64 };
#pragma omp for schedule(static)
            for (int m0 = 0; m0 < M; m0 += BLK) {
                int nm = M - m0 < BLK ? M - m0 : BLK;
                double s[BLK] = {0};
                for (int n = 0; n < N; n++)
                    for (int j = 0; j < nm; j++) s[j] += dout[(size_t)n * M + m0 + j];
                for (int j = 0; j < nm; j++) dbias[m0 + j] += (float)s[j];
            }
        }
    }
}
