// torchao's low-bit AdamW on the GPU (AdamW8bit, AdamW4bit, AdamWFp8, and its plain-state
// path): one fused pass per tensor — dequantize m and v, AdamW update, requantize with fresh
// block scales — with one warp per 256 elements (one 8-bit / fp8 block, two 4-bit blocks;
// vector accesses, a warp-shuffle absmax, codes from a table: lowbit_lut.h), and the
// parameter kept as an fp32 master (+ bf16 copy) or as bf16 only,
// rounded to nearest even or stochastically (--master bf16-sr). Formats, layout, scalars and
// the element arithmetic are in lowbit.h; the results are bit-identical to the CPU reference
// lowbit_adamw_step_cpu (test/gpu_test_optim.cu), which matches torchao bit for bit.
//
// Use (per tensor of n elements, see docs/OPTIMIZERS.md):
//   LowbitLayout l = lowbit_layout(LOWBIT_8BIT, n, master_mode);   // l.bytes of state
//   LowbitState st = lowbit_state_at(&l, dev_region);               // region zeroed once
//   LowbitStep s = {lr, b1, b2, eps, wd, step, grad_scale, master_mode, seed, tensor_offset};
//   adamw_lowbit_update(master_or_NULL, param_bf16, st, grad, &s, stream);
#pragma once
#include "../common/gpu.h"
#include "lowbit.h"

// master: fp32 [n] when s->master == LOWBIT_MASTER_F32 (param, when not NULL, receives the
// bf16 copy, nearest even); NULL for the bf16 masters, where param [n] is read and written.
// st points into device memory. grad fp32 [n].
void adamw_lowbit_update(float *master, bf16 *param, LowbitState st, const float *grad, const LowbitStep *s,
                         cudaStream_t stream);
