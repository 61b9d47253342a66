// Dequantization of the ggml block formats to fp32, following ggml's reference
// dequantize_row_* (ggml-quants.c). Blocks are copied out with memcpy (tensor data in
// a GGUF is only 32-byte aligned as a whole, and we never trust alignment of a mapping).
#include <stdio.h>
#include <string.h>

#include "../model/safetensors.h"
#include "gguf.h"
#include "gguf_quants.h"

int ggml_type_block(uint32_t type, size_t *blk, size_t *bytes) {
    switch (type) {
        case GGML_F32: *blk = 1, *bytes = 4; return 1;
        case GGML_F16: case GGML_BF16: *blk = 1, *bytes = 2; return 1;
        case GGML_Q4_0: *blk = QK4_0, *bytes = sizeof(BlockQ4_0); return 1;
        case GGML_Q4_1: *blk = QK4_1, *bytes = sizeof(BlockQ4_1); return 1;
        case GGML_Q8_0: *blk = QK8_0, *bytes = sizeof(BlockQ8_0); return 1;
        case GGML_Q4_K: *blk = QK_K, *bytes = sizeof(BlockQ4_K); return 1;
        case GGML_Q6_K: *blk = QK_K, *bytes = sizeof(BlockQ6_K); return 1;
        default: return 0;
    }
}

const char *gguf_type_name(uint32_t t) {
    static const char *const names[] = {"F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
                                        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
                                        "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64",
                                        "IQ1_M", "BF16"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

// Q4_K packs 8 six-bit scales and 8 six-bit mins of its sub-blocks into 12 bytes.
static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

int gguf_dequantize(const GgufTensor *t, float *y, char *err, size_t errlen) {
    size_t blk, bsz;
    if (!ggml_type_block(t->type, &blk, &bsz)) {
        snprintf(err, errlen, "tensor type %s is not supported", gguf_type_name(t->type));
        return 0;
    }
    const uint8_t *p = t->data;
    const size_t nb = (size_t)(t->nbytes / bsz);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *src = p + i * bsz;
        float *o = y + i * blk;
        switch (t->type) {
            case GGML_F32: memcpy(o, src, 4); break;
            case GGML_F16: { uint16_t h; memcpy(&h, src, 2); o[0] = f16_to_f32(h); break; }
            case GGML_BF16: { uint16_t h; memcpy(&h, src, 2); o[0] = bf16_to_f32(h); break; }
            case GGML_Q4_0: {
                BlockQ4_0 b;
                memcpy(&b, src, sizeof b);
                const float d = f16_to_f32(b.d);
                for (int j = 0; j < QK4_0 / 2; j++) {  // low nibbles are elements 0..15, high 16..31
                    o[j] = (float)((b.qs[j] & 0x0F) - 8) * d;
                    o[j + QK4_0 / 2] = (float)((b.qs[j] >> 4) - 8) * d;
                }
                break;
            }
            case GGML_Q4_1: {
                BlockQ4_1 b;
                memcpy(&b, src, sizeof b);
                const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
                for (int j = 0; j < QK4_1 / 2; j++) {
                    o[j] = (float)(b.qs[j] & 0x0F) * d + m;
                    o[j + QK4_1 / 2] = (float)(b.qs[j] >> 4) * d + m;
                }
                break;
            }
            case GGML_Q8_0: {
                BlockQ8_0 b;
                memcpy(&b, src, sizeof b);
                const float d = f16_to_f32(b.d);
                for (int j = 0; j < QK8_0; j++) o[j] = (float)b.qs[j] * d;
                break;
            }
            case GGML_Q4_K: {
                BlockQ4_K b;
                memcpy(&b, src, sizeof b);
                const float d = f16_to_f32(b.d), mn = f16_to_f32(b.dmin);
                const uint8_t *q = b.qs;
                for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32) {
                    uint8_t sc, m;
                    scale_min_k4(is, b.scales, &sc, &m);
                    const float d1 = d * sc, m1 = mn * m;
                    scale_min_k4(is + 1, b.scales, &sc, &m);
                    const float d2 = d * sc, m2 = mn * m;
                    for (int l = 0; l < 32; l++) o[j + l] = d1 * (float)(q[l] & 0xF) - m1;
                    for (int l = 0; l < 32; l++) o[j + 32 + l] = d2 * (float)(q[l] >> 4) - m2;
                }
                break;
            }
            case GGML_Q6_K: {
                BlockQ6_K b;
                memcpy(&b, src, sizeof b);
                const float d = f16_to_f32(b.d);
                const uint8_t *ql = b.ql, *qh = b.qh;
                const int8_t *sc = b.scales;
                for (int n = 0; n < QK_K; n += 128, ql += 64, qh += 32, sc += 8) {
                    for (int l = 0; l < 32; l++) {
                        const int is = l / 16;
                        const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                        const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                        const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                        const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                        o[n + l] = d * (float)sc[is] * (float)q1;
                        o[n + l + 32] = d * (float)sc[is + 2] * (float)q2;
                        o[n + l + 64] = d * (float)sc[is + 4] * (float)q3;
                        o[n + l + 96] = d * (float)sc[is + 6] * (float)q4;
                    }
                }
                break;
            }
        }
    }
    return 1;
}
