// ZeRO sharding plan: which rank owns which parameters for the optimizer step.
//
// The parameters are one flat vector in the parameter table's order (model/params.h). Rank r
// owns the contiguous range [bounds[r], bounds[r+1]) of it: its fp32 master weights and its
// optimizer states live only there (ZeRO-1), with ZeRO-2 only that range of the gradient
// is reduced onto it, and with ZeRO-3 only that range of the bf16 working weights is kept
// (each layer's are all-gathered into one of two per-layer buffers around its use). A range is cut either at a tensor's start or inside a tensor at a
// multiple of ZERO_ALIGN elements from the tensor's start. That keeps every quantization
// block of the low-bit optimizers (128 or 256 elements, counted from the tensor's start,
// optim/lowbit.h) on one rank, so a sharded step computes what the unsharded one does, bit for
// bit; per-tensor properties (weight decay, state format) are looked up per whole tensor.
// The part of a tensor that a rank owns is a "piece"; a rank's pieces are in table order.
//
// The plan is pure host data; it does not know about NCCL (dist/dist.cuh moves the data).
#pragma once
#include <stddef.h>

#include "../model/params.h"
#include "../optim/lowbit.h"

#define ZERO_ALIGN 256  // a multiple of every low-bit block size (LOWBIT_BLOCK_*)
static_assert(ZERO_ALIGN % LOWBIT_BLOCK_8BIT == 0 && ZERO_ALIGN % LOWBIT_BLOCK_4BIT == 0 &&
                  ZERO_ALIGN % LOWBIT_BLOCK_FP8 == 0,
              "shard cuts must fall on quantization-block boundaries");

typedef struct {
    int tensor;     // index into the ParamTable
    size_t begin;   // first element within the tensor (0 or a multiple of ZERO_ALIGN)
    size_t n;       // elements
    size_t offset;  // in the flat vector: tab->p[tensor].offset + begin
} ZeroPiece;

typedef struct {
    int level;          // 0: unsharded (one process owns everything), 1, 2 or 3
    int rank, world;
    size_t total;       // the table's flat size
    size_t *bounds;     // [world + 1]: rank r owns [bounds[r], bounds[r + 1])
    size_t begin, end;  // this rank's range
    ZeroPiece *pieces;  // this rank's pieces, table order
    int n_pieces;
    // gradient buckets for the per-layer reduction: bucket l < n_layers is layer l's tensors,
    // bucket n_layers the global ones (embeddings, final norm, LM head); together they tile [0, total)
    int n_layers;
    size_t *bucket_lo, *bucket_hi;  // [n_layers + 1]
} ZeroPlan;

// Splits tab over `world` ranks as evenly as the cut rule allows and keeps rank `rank`'s part.
// level 0 requires world == 1 (the whole model, one piece per tensor: what one GPU does).
void zero_plan_init(ZeroPlan *z, const ParamTable *tab, int n_layers, int level, int rank, int world);
void zero_plan_free(ZeroPlan *z);
// The pieces of the flat range [begin, end) (any rank's, or a checkpoint's): fills out (may be
// NULL) and returns the count. Fails when a cut inside a tensor is not ZERO_ALIGN-aligned.
int zero_pieces(const ParamTable *tab, size_t begin, size_t end, ZeroPiece *out);

// The optimizer-state layout of a piece of n elements of a tensor of tensor_numel elements,
// for optimizer format `want` (LOWBIT_F32 = plain AdamW). The format is decided on the whole
// tensor (torchao's rule, lowbit_format_for), never on the piece; for a whole tensor the
// result is exactly lowbit_layout's, so an unsharded run keeps its memory layout.
LowbitLayout zero_piece_layout(LowbitFormat want, size_t tensor_numel, size_t n);

// ZeRO-3 gather buffers. Bucket b's gathered weights (b < n_layers: layer b; b == n_layers: the
// global tensors) sit in a buffer at zero3_buf_index(z, b, o) for flat element o: shifted by
// bucket_lo % ZERO3_PAD, so every tensor keeps its address modulo 256 bytes (bf16) from the flat
// buffer of ZeRO-1/2 -- cuBLASLt picks its algorithm by pointer alignment (up to 256 bytes,
// ops/matmul.cu), and the same algorithm is what makes ZeRO-3 give ZeRO-2's bits.
#define ZERO3_PAD 128
static inline size_t zero3_buf_index(const ZeroPlan *z, int b, size_t o) {
    return o - z->bucket_lo[b] + z->bucket_lo[b] % ZERO3_PAD;
}
// Elements of one layer buffer (the largest layer bucket, shifted) and of the global tensors' buffer.
size_t zero3_layer_buf_elems(const ZeroPlan *z);
size_t zero3_global_buf_elems(const ZeroPlan *z);
