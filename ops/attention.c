#include "attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

static void check_heads(int n_heads, int n_kv_heads) {
    CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0,
          "attention: n_heads (%d) must be a positive multiple of n_kv_heads (%d)", n_heads, n_kv_heads);
}

void attention_forward_cpu(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                           int n_heads, int n_kv_heads, int head_dim) {
    check_heads(n_heads, n_kv_heads);
    int H = n_heads, KV = n_kv_heads, hd = head_dim, group = H / KV;
    double scale = 1.0 / sqrt((double)hd);
#pragma omp parallel
    {
        // Per-thread scratch: the score/probability row and the output row, in double.
        double *pr = ao_malloc((size_t)T * sizeof(double));
        double *acc = ao_malloc((size_t)hd * sizeof(double));
#pragma omp for collapse(3)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++) {
                    int kvh = h / group;
                    const float *qt = q + (((size_t)b * T + t) * H + h) * hd;
                    // Max-subtracted softmax over keys 0..t (causal).
                    double mx = -INFINITY, sum = 0.0;
                    for (int s = 0; s <= t; s++) {
                        const float *ks = k + (((size_t)b * T + s) * KV + kvh) * hd;
                        double dot = 0.0;
                        for (int d = 0; d < hd; d++) dot += (double)qt[d] * ks[d];
                        pr[s] = dot * scale;
                        if (pr[s] > mx) mx = pr[s];
                    }
                    for (int s = 0; s <= t; s++) sum += (pr[s] = exp(pr[s] - mx));
                    for (int s = 0; s <= t; s++) pr[s] /= sum;
                    if (att) {
                        float *p = att + (((size_t)b * H + h) * T + t) * T;
                        for (int s = 0; s < T; s++) p[s] = s <= t ? (float)pr[s] : 0.0f;
                    }

                    for (int d = 0; d < hd; d++) acc[d] = 0.0;
                    for (int s = 0; s <= t; s++) {
                        const float *vs = v + (((size_t)b * T + s) * KV + kvh) * hd;
                        for (int d = 0; d < hd; d++) acc[d] += pr[s] * vs[d];
                    }
                    float *ot = out + (((size_t)b * T + t) * H + h) * hd;
                    for (int d = 0; d < hd; d++) ot[d] = (float)acc[d];
                }
        free(pr);
        free(acc);
    }
}

// With P = softmax(S), S = scale * q k^T, O = P v:
//   dv_s += sum_t P_ts dO_t;  dP_ts = dO_t . v_s;  dS_ts = P_ts (dP_ts - sum_j P_tj dP_tj);
//   dq_t += scale sum_s dS_ts k_s;  dk_s += scale sum_t dS_ts q_t.
// dk/dv of one (b, kv head) collect terms from every query head of its group, so they are
// summed in double scratch and added once at the end.
void attention_backward_cpu(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *att, int B, int T, int n_heads, int n_kv_heads, int head_dim) {
    check_heads(n_heads, n_kv_heads);
    int H = n_heads, KV = n_kv_heads, hd = head_dim, group = H / KV;
    double scale = 1.0 / sqrt((double)hd);
#pragma omp parallel
    {
        double *dP = ao_malloc((size_t)T * sizeof(double));
        double *dqa = ao_malloc((size_t)hd * sizeof(double));
        double *dka = ao_malloc((size_t)T * hd * sizeof(double));
        double *dva = ao_malloc((size_t)T * hd * sizeof(double));
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int kvh = 0; kvh < KV; kvh++) {
                memset(dka, 0, (size_t)T * hd * sizeof(double));
                memset(dva, 0, (size_t)T * hd * sizeof(double));
                for (int h = kvh * group; h < (kvh + 1) * group; h++)
                    for (int t = 0; t < T; t++) {
                        const float *p = att + (((size_t)b * H + h) * T + t) * T;
                        const float *go = dout + (((size_t)b * T + t) * H + h) * hd;
                        const float *qt = q + (((size_t)b * T + t) * H + h) * hd;
                        double pdp = 0.0;
                        for (int s = 0; s <= t; s++) {
                            const float *vs = v + (((size_t)b * T + s) * KV + kvh) * hd;
                            double acc = 0.0;
                            for (int d = 0; d < hd; d++) {
                                acc += (double)go[d] * vs[d];
                                dva[(size_t)s * hd + d] += (double)p[s] * go[d];
                            }
                            dP[s] = acc;
                            pdp += p[s] * acc;
                        }
                        for (int d = 0; d < hd; d++) dqa[d] = 0.0;
                        for (int s = 0; s <= t; s++) {
                            double ds = p[s] * (dP[s] - pdp) * scale;
                            const float *ks = k + (((size_t)b * T + s) * KV + kvh) * hd;
                            for (int d = 0; d < hd; d++) {
                                dqa[d] += ds * ks[d];
                                dka[(size_t)s * hd + d] += ds * qt[d];
                            }
                        }
                        float *dqt = dq + (((size_t)b * T + t) * H + h) * hd;
                        for (int d = 0; d < hd; d++) dqt[d] += (float)dqa[d];
                    }
                for (int s = 0; s < T; s++) {
                    float *dks = dk + (((size_t)b * T + s) * KV + kvh) * hd;
                    float *dvs = dv + (((size_t)b * T + s) * KV + kvh) * hd;
                    for (int d = 0; d < hd; d++) {
                        dks[d] += (float)dka[(size_t)s * hd + d];
                        dvs[d] += (float)dva[(size_t)s * hd + d];
                    }
                }
            }
        free(dP);
        free(dqa);
        free(dka);
        free(dva);
    }
}
