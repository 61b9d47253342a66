// GPU weight upload for the decode GEMV (layouts: qgemv.cuh; the int4 tensor-core fragment
// order: qgemv_int4mma.cu), device allocation helpers, and the activation scratch.
#include "qgemv_impl.cuh"

#include "../model/safetensors.h"

// The int4 kernel the next uploads are laid out for (qgemv_set_int4_kernel): 0 SIMT, 1, 2 mma.
static int g_int4_kernel = 2;
void qgemv_set_int4_kernel(int version) {
    CHECK(version >= 0 && version <= 2, "qgemv_set_int4_kernel: version %d is not 0 (SIMT), 1 or 2", version);
    g_int4_kernel = version;
}
void qgemv_set_int4_mma(int on) { g_int4_kernel = on ? 2 : 0; }

void *qgemv_dev_alloc(size_t bytes, size_t held) {
    void *d;
    const cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        FAIL("out of GPU memory allocating %.1f MiB (%.1f MiB already held by the model, %.1f MiB free of %.1f)\n"
             "  HINT: use a smaller -q mode (int4 holds about a quarter of bf16), a shorter context (--ctx), or -d cpu",
             bytes / 1048576.0, held / 1048576.0, fr / 1048576.0, tot / 1048576.0);
    }
    CUDA_CHECK(e);
    return d;
}

void *qgemv_dev_upload(const void *h, size_t bytes, size_t held) {
    void *d = qgemv_dev_alloc(bytes, held);
    CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    // From pageable memory cudaMemcpy may return before the data lands, and kernels on other
    // (non-blocking) streams do not wait for the legacy stream it ran on.
    CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
    return d;
}

static void *dupload(const void *h, size_t bytes) { return qgemv_dev_upload(h, bytes, 0); }

uint16_t bf16_bits_rne(float f, size_t *inexact) {
    const uint16_t b = f32_to_bf16(f);
    uint32_t u;
    memcpy(&u, &f, 4);
    if (((uint32_t)b << 16) != u) (*inexact)++;
    return b;
}

// ---- weight upload: one or several QTensors of the same format stacked along rows -----------
int qweight_same_format(const QTensor *a, const QTensor *b) {
    return a->mode == b->mode && a->group == b->group && a->cols == b->cols;
}

QWeightGpu qweight_upload(const QTensor *const *parts, const float *const *biases, int np, size_t *rounded) {
    QWeightGpu w;
    memset(&w, 0, sizeof w);
    const QTensor *t0 = parts[0];
    w.mode = t0->mode, w.cols = t0->cols, w.group = t0->group;
    w.ld = (w.cols + 7) / 8 * 8;
    for (int i = 0; i < np; i++) w.rows += parts[i]->rows;
    const size_t R = (size_t)w.rows, K = (size_t)w.cols, LD = (size_t)w.ld, ng = w.group ? K / (size_t)w.group : 0;
    size_t code_row = 0;  // bytes per stored row
    switch (w.mode) {
        case QUANT_NONE: code_row = 2 * LD; break;
        case QUANT_INT8: case QUANT_FP8: code_row = LD; break;
        case QUANT_INT4: case QUANT_8DA4W: code_row = LD / 2; break;
        default: FAIL("GPU upload: unknown weight mode %d", (int)w.mode);
    }
    uint8_t *codes = (uint8_t *)ao_calloc(R, code_row);
    float *row_f32 = w.mode == QUANT_NONE ? (float *)ao_malloc(K * sizeof(float)) : NULL;  // one row in fp32
    size_t r0 = 0;
    for (int i = 0; i < np; i++) {
        const QTensor *t = parts[i];
        for (size_t r = 0; r < (size_t)t->rows; r++) {
            uint8_t *dst = codes + (r0 + r) * code_row;
            if (w.mode == QUANT_NONE && t->wdtype == QW_BF16) {
                memcpy(dst, t->w16 + r * K, K * 2);  // mapped bf16 weights: the bits as they are
            } else if (w.mode == QUANT_NONE) {
                uint16_t *d16 = (uint16_t *)dst;
                quant_none_row(t, (int)r, row_f32);
                for (size_t k = 0; k < K; k++) d16[k] = bf16_bits_rne(row_f32[k], rounded);
            } else {
                memcpy(dst, t->q + r * quant_q_bytes(w.mode, 1, w.cols), quant_q_bytes(w.mode, 1, w.cols));
            }
        }
        r0 += (size_t)t->rows;
    }
    free(row_f32);
    if (w.mode == QUANT_INT4 && g_int4_kernel && K % 64 == 0) {
        // mma fragment order (see qgemv_int4_mma_kernel), rows padded to 16 with code 8 (= 0);
        // v2 pads to whole pairs of row tiles (a warp's two tiles)
        w.tiled = g_int4_kernel;
        const size_t nrt = w.tiled == 2 ? (R + 31) / 32 * 2 : (R + 15) / 16, nch = K / 64;
        uint32_t *tiles = (uint32_t *)ao_malloc(nrt * nch * 128 * sizeof(uint32_t));
        const int pos[8] = {0, 4, 1, 5, 2, 6, 3, 7};  // a_i -> nibble position in the word
        for (size_t rt = 0; rt < nrt; rt++)
            for (size_t ch = 0; ch < nch; ch++)
                for (int l = 0; l < 32; l++)
                    for (int j = 0; j < 4; j++) {
                        const int g = l >> 2, t = l & 3;
                        uint32_t word = 0;
                        for (int a = 0; a < 8; a++) {
                            const size_t row = rt * 16 + (size_t)g + ((a & 2) ? 8 : 0);
                            const size_t k = ch * 64 + (size_t)j * 16 + 2 * (size_t)t + (a & 1) + ((a & 4) ? 8 : 0);
                            uint32_t q = 8;
                            if (row < R) q = (codes[row * code_row + k / 2] >> ((k & 1) * 4)) & 15u;
                            word |= q << (4 * pos[a]);
                        }
                        tiles[((rt * nch + ch) * 32 + (size_t)l) * 4 + (size_t)j] = word;
                    }
        free(codes);
        codes = (uint8_t *)tiles;
        code_row = 0;
        w.q = dupload(codes, nrt * nch * 128 * sizeof(uint32_t));
    } else if (w.mode == QUANT_INT4 || w.mode == QUANT_8DA4W) {
        // Interleave each whole 1024-element block of a row: word (step j, lane l) moves from
        // j * 32 + l to l * 4 + j, so a lane's 4 steps are one 16-byte load. Tails stay natural.
        uint32_t tmp[128];
        for (size_t r = 0; r < R; r++)
            for (size_t b = 0; b + 1024 <= K; b += 1024) {
                uint32_t *blk = (uint32_t *)(codes + r * code_row + b / 2);
                for (int j = 0; j < 4; j++)
                    for (int l = 0; l < 32; l++) tmp[l * 4 + j] = blk[j * 32 + l];
                memcpy(blk, tmp, sizeof tmp);
            }
    }
    if (!w.tiled) w.q = dupload(codes, R * code_row);
    free(codes);
    if (w.mode == QUANT_INT8 || w.mode == QUANT_FP8 || w.mode == QUANT_8DA4W) {
        const size_t per = w.mode == QUANT_8DA4W ? ng : 1;
        float *sc = (float *)ao_malloc(R * per * sizeof(float));
        r0 = 0;
        for (int i = 0; i < np; i++) {
            memcpy(sc + r0 * per, parts[i]->scale, (size_t)parts[i]->rows * per * sizeof(float));
            r0 += (size_t)parts[i]->rows;
        }
        w.scale = (const float *)dupload(sc, R * per * sizeof(float));
        free(sc);
    }
    if (w.mode == QUANT_INT4) {
        __nv_bfloat162 *sz = (__nv_bfloat162 *)ao_malloc(R * ng * sizeof *sz);
        size_t inexact = 0;
        r0 = 0;
        for (int i = 0; i < np; i++) {
            for (size_t j = 0; j < (size_t)parts[i]->rows * ng; j++) {
                uint16_t s = bf16_bits_rne(parts[i]->scale[j], &inexact), z = bf16_bits_rne(parts[i]->zero[j], &inexact);
                __nv_bfloat162_raw raw;
                raw.x = s, raw.y = z;
                sz[r0 * ng + j] = __nv_bfloat162(raw);
            }
            r0 += (size_t)parts[i]->rows;
        }
        CHECK(inexact == 0, "GPU upload: %zu int4 scales/zeros are not bf16 values (corrupt quantized model?)", inexact);
        size_t nsz = R * ng;
        if (w.tiled == 2) {
            // v2: [row-tile pair][group][g], 16 bytes = the pairs of rows g, g + 8 of both tiles
            // (qgemv_int4_mma2_kernel); rows past the end (0, 0)
            const size_t npair = (R + 31) / 32;
            __nv_bfloat162 *tl = (__nv_bfloat162 *)ao_calloc(npair * ng * 32, sizeof *tl);
            for (size_t p = 0; p < npair; p++)
                for (size_t gr = 0; gr < ng; gr++)
                    for (size_t g = 0; g < 8; g++)
                        for (size_t e = 0; e < 4; e++) {
                            const size_t row = p * 32 + (e >> 1) * 16 + g + (e & 1) * 8;
                            if (row < R) tl[((p * ng + gr) * 8 + g) * 4 + e] = sz[row * ng + gr];
                        }
            free(sz);
            sz = tl, nsz = npair * ng * 32;
        }
        w.sz = (const __nv_bfloat162 *)dupload(sz, nsz * sizeof *sz);
        free(sz);
    }
    int any_bias = 0;
    for (int i = 0; i < np; i++) any_bias |= biases && biases[i];
    if (any_bias) {
        float *b = (float *)ao_calloc(R, sizeof(float));
        r0 = 0;
        for (int i = 0; i < np; i++) {
            if (biases[i]) memcpy(b + r0, biases[i], (size_t)parts[i]->rows * sizeof(float));
            r0 += (size_t)parts[i]->rows;
        }
        w.bias = (const float *)dupload(b, R * sizeof(float));
        free(b);
    }
    return w;
}

void qweight_free(QWeightGpu *w) {
    cudaFree((void *)w->q), cudaFree((void *)w->scale), cudaFree((void *)w->sz), cudaFree((void *)w->bias);
    memset(w, 0, sizeof *w);
}

void qact_scratch_init(QActScratch *s, int max_rows, int max_cols) {
    memset(s, 0, sizeof *s);
    s->max_rows = max_rows, s->max_cols = max_cols;
    const size_t n = (size_t)max_rows * (size_t)max_cols;
    CUDA_CHECK(cudaMalloc(&s->xq, n + 16));
    CUDA_CHECK(cudaMalloc(&s->xf, n * sizeof(float) + 16));
    CUDA_CHECK(cudaMalloc(&s->xs, (size_t)max_rows * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&s->xzp, (size_t)max_rows * sizeof(int)));
    CUDA_CHECK(cudaMalloc(&s->part, QG_PART_FLOATS * sizeof(float)));
    // int4 tensor-core fragments: v2 holds 2 column tiles (8 tokens), v1 one
    CUDA_CHECK(cudaMalloc(&s->xb, (size_t)max_cols / 16 * 32 * 2 * sizeof(uint2) + 16));
    CUDA_CHECK(cudaMalloc(&s->xsum, (size_t)QG_MAX_M * (max_cols / 32 + 1) * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&s->cnt, QV2_MAX_CNT * sizeof(int)));
    CUDA_CHECK(cudaMemset(s->cnt, 0, QV2_MAX_CNT * sizeof(int)));  // re-armed by every split launch
    // The memset runs on the legacy stream, which the (non-blocking) streams that launch the
    // kernels reading the counters do not wait for.
    CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
}

void qact_scratch_free(QActScratch *s) {
    cudaFree(s->xq), cudaFree(s->xf), cudaFree(s->xs), cudaFree(s->xzp), cudaFree(s->part), cudaFree(s->xb), cudaFree(s->xsum);
    cudaFree(s->cnt);
    memset(s, 0, sizeof *s);
}

size_t qweight_bytes(const QWeightGpu *w) {
    const size_t n = (size_t)w->rows * (size_t)w->ld, ng = w->group ? n / (size_t)w->group : 0;
    size_t b = w->bias ? (size_t)w->rows * 4 : 0;
    switch (w->mode) {
        case QUANT_NONE: return b + 2 * n;
        case QUANT_INT8: case QUANT_FP8: return b + n + 4 * (size_t)w->rows;
        case QUANT_INT4: case QUANT_8DA4W: return b + n / 2 + 4 * ng;
        default: return b;
    }
}
