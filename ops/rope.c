#include "rope.h"

#include <math.h>
#include <stddef.h>

#include "../common/error.h"

void rope_inv_freq_cpu(float *inv_freq, int head_dim, const RopeParams *p) {
    CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be positive and even, got %d", head_dim);
    CHECK(p->type == ROPE_DEFAULT || p->type == ROPE_LLAMA3, "rope: unknown rope type %d", (int)p->type);
    int h = head_dim / 2;
    // HF: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), every step an fp32 op.
    for (int i = 0; i < h; i++) inv_freq[i] = 1.0f / powf(p->theta, (float)(2 * i) / (float)head_dim);
    if (p->type != ROPE_LLAMA3) return;

    CHECK(p->factor > 0 && p->low_freq_factor > 0 && p->high_freq_factor > p->low_freq_factor &&
              p->original_max_position_embeddings > 0,
          "rope: bad llama3 scaling (factor %g, low_freq_factor %g, high_freq_factor %g, original_max_position %d)",
          p->factor, p->low_freq_factor, p->high_freq_factor, p->original_max_position_embeddings);
    // transformers' _compute_llama3_parameters. Python-float constants are double there,
    // then rounded to fp32 when they meet the fp32 tensor; `scalar / tensor` is computed by
    // torch as tensor.reciprocal() * scalar, which we mirror.
    double orig = p->original_max_position_embeddings;
    float low_wavelen = (float)(orig / p->low_freq_factor);
    float high_wavelen = (float)(orig / p->high_freq_factor);
    float two_pi = (float)(2.0 * M_PI);
    float orig_f = (float)orig;
    float low = p->low_freq_factor;
    float span = (float)((double)p->high_freq_factor - (double)p->low_freq_factor);
    for (int i = 0; i < h; i++) {
        float f = inv_freq[i];
        float wavelen = (1.0f / f) * two_pi;
        if (wavelen > low_wavelen) {
            inv_freq[i] = f / p->factor;  // long wavelengths: fully interpolated
        } else if (!(wavelen < high_wavelen)) {
            float smooth = ((1.0f / wavelen) * orig_f - low) / span;
            inv_freq[i] = (1.0f - smooth) * f / p->factor + smooth * f;
        }  // short wavelengths: unchanged
    }
}

// Rotates every head of every token by angle = float(pos) * inv_freq[i] (fp32 product as
// in HF's inv_freq @ position_ids), pairs (i, i+h). sign = +1 forward, -1 backward.
// Both elements of a pair are read before either is written, so dst may == src.
static void rope_apply(float *dst, const float *src, const float *inv_freq, int B, int T, int n_heads, int head_dim,
                       int pos_offset, float sign) {
    CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be positive and even, got %d", head_dim);
    int h = head_dim / 2;
#pragma omp parallel for
    for (int bt = 0; bt < B * T; bt++) {
        float pos = (float)(pos_offset + bt % T);
        size_t base = (size_t)bt * n_heads * head_dim;
        for (int i = 0; i < h; i++) {
            float ang = pos * inv_freq[i];
            // cos/sin of the fp32 angle, correctly rounded (torch's fp32 cos/sin are within 1 ulp).
            float c = (float)cos((double)ang), s = sign * (float)sin((double)ang);
            for (int hh = 0; hh < n_heads; hh++) {
                size_t o = base + (size_t)hh * head_dim + i;
                float x0 = src[o], x1 = src[o + h];
                dst[o] = x0 * c - x1 * s;
                dst[o + h] = x1 * c + x0 * s;
            }
        }
    }
}

void rope_forward_cpu(float *out, const float *inp, const float *inv_freq, int B, int T, int n_heads, int head_dim,
                      int pos_offset) {
    rope_apply(out, inp, inv_freq, B, T, n_heads, head_dim, pos_offset, 1.0f);
}

void rope_backward_cpu(float *dinp, const float *dout, const float *inv_freq, int B, int T, int n_heads, int head_dim,
                       int pos_offset) {
    rope_apply(dinp, dout, inv_freq, B, T, n_heads, head_dim, pos_offset, -1.0f);
}
