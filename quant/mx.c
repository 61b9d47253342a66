// CPU reference of MX quantization (formulas in mx.h): one block of 32 at a time, with the
// element functions the CUDA kernels share.
#include "mx.h"

#include <string.h>

#include "../common/error.h"

void mx_quantize_cpu(uint8_t *q, uint8_t *e8m0, const float *x, int rows, int cols, Fp8Dtype dt, MxMode mode,
                     int transposed) {
    CHECK(rows >= 0 && cols >= 0, "mx_quantize_cpu: bad shape %dx%d", rows, cols);
    int orows = transposed ? cols : rows, ocols = transposed ? rows : cols;
    int nb = (ocols + MX_BLOCK - 1) / MX_BLOCK;
    for (int r = 0; r < orows; r++)
        for (int b = 0; b < nb; b++) {
            int c0 = b * MX_BLOCK, c1 = c0 + MX_BLOCK < ocols ? c0 + MX_BLOCK : ocols;
            float v[MX_BLOCK], m = 0.0f;
            for (int c = c0; c < c1; c++) {
                v[c - c0] = transposed ? x[(size_t)c * cols + r] : x[(size_t)r * cols + c];
                m = mx_amax_step(m, v[c - c0]);
            }
            MxScale s = mx_scale_from_amax(m, dt, mode);
            e8m0[(size_t)r * nb + b] = s.e8m0;
            for (int c = c0; c < c1; c++) q[(size_t)r * ocols + c] = mx_quantize(v[c - c0], s, dt);
        }
}

void mx_dequantize_cpu(float *out, const uint8_t *q, const uint8_t *e8m0, int orows, int ocols, Fp8Dtype dt) {
    int nb = (ocols + MX_BLOCK - 1) / MX_BLOCK;
    for (int r = 0; r < orows; r++)
        for (int c = 0; c < ocols; c++) {
            size_t i = (size_t)r * ocols + c;
            out[i] = fp8_to_f32(q[i], dt) * mx_e8m0_to_f32(e8m0[(size_t)r * nb + c / MX_BLOCK]);
        }
}

void mx_dequantize_bf16_cpu(uint16_t *out, const uint8_t *q, const uint8_t *e8m0, int orows, int ocols, Fp8Dtype dt) {
    int nb = (ocols + MX_BLOCK - 1) / MX_BLOCK;
    for (int r = 0; r < orows; r++)
        for (int c = 0; c < ocols; c++) {
            size_t i = (size_t)r * ocols + c;
            out[i] = mx_dequant_bf16_bits(q[i], e8m0[(size_t)r * nb + c / MX_BLOCK], dt);
        }
}

void mx_swizzle_cpu(uint8_t *out, const uint8_t *e8m0, int rows, int nkb) {
    CHECK(rows >= 0 && nkb >= 0, "mx_swizzle_cpu: bad shape %dx%d", rows, nkb);
    memset(out, 0, mx_swizzled_bytes(rows, nkb));
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < nkb; b++) out[mx_swizzled_index(r, b, nkb)] = e8m0[(size_t)r * nkb + b];
}
