// AdamW on the CPU for --offload: fp32 master weights (or, with --master bf16-sr, the bf16
// weights themselves) and fp32 moments in (pinned) host memory, OpenMP over chunks, AVX-512 /
// AVX2+FMA picked at run time with a portable scalar fallback. All variants give the same
// bits, and the same bits as the GPU's adamw_update / adamw_update_bf16_sr, which call
// adamw_elem below (see docs/OPTIMIZERS.md): the element update is written once, with every
// rounding explicit, for host and device. Also the low-bit (torchao) step on the CPU, the
// lowbit.c units under OpenMP, and adamw_cpu_run, which runs several tensors' steps of either
// kind as one parallel loop (the offloaded step runs one gradient bucket at a time).
#ifndef LLAMA_AO_OPTIM_ADAMW_CPU_H
#define LLAMA_AO_OPTIM_ADAMW_CPU_H

#include "lowbit.h"

#ifdef __cplusplus
extern "C" {
#endif

// fp32 scalars of one step, formed in double and rounded once, as optim/adamw.cu's launcher
// forms its AdamScalars (same fields, same order, same expressions).
typedef struct {
    float decay;     // 1 - lr * wd
    float one_m_b1;  // 1 - b1 (lerp weight)
    float b2, one_m_b2;
    float step_size;  // lr / (1 - b1^t)
    float bc2_sqrt;   // sqrt(1 - b2^t)
    float eps, grad_scale;
} AdamwScalars;
AdamwScalars adamw_scalars(float lr, float b1, float b2, float eps, float wd, int step, float grad_scale);

// One element in the order of torch.optim.AdamW's multi-tensor (foreach) path, each
// multiply-add that a CUDA kernel would fuse written as an explicit FMA, every other op
// rounded on its own, so that no compiler can choose differently per call site:
//   p *= decay (_foreach_mul_);  m = fma(1-b1, g - m, m) (lerp_);  v = fma(1-b2, g*g, v*b2)
//   (mul_ + addcmul_);  p = fma(-step_size, m / (sqrt(v)/bc2_sqrt + eps), p) (addcdiv_).
OPT_HD float adamw_elem(float p, float g, float *m, float *v, const AdamwScalars *a) {
    g = OPT_MUL(g, a->grad_scale);
    p = OPT_MUL(p, a->decay);
    float mm = OPT_FMA(a->one_m_b1, OPT_SUB(g, *m), *m);
    float vv = OPT_FMA(a->one_m_b2, OPT_MUL(g, g), OPT_MUL(*v, a->b2));
    float denom = OPT_ADD(OPT_DIV(OPT_SQRT(vv), a->bc2_sqrt), a->eps);
    *m = mm, *v = vv;
    return OPT_FMA(-a->step_size, OPT_DIV(mm, denom), p);
}

// master, m, v updated in place; param (NULL allowed) receives bf16(master), nearest even.
// Same arguments and meaning as adamw_update (optim/adamw.cuh), host pointers.
void adamw_update_cpu(float *master, uint16_t *param, const float *grad, float *m, float *v, size_t n, float lr,
                      float b1, float b2, float eps, float wd, int step, float grad_scale);
// --master bf16-sr: the bf16 weights are the masters. Element i: p = adamw_elem(bf16 -> fp32 of
// param[i], ...), stored back by stochastic rounding with the bits lowbit_sr_bits(seed, step,
// sr_offset + i) (sr_offset: the tensor's first element in the whole parameter vector). Same as
// adamw_update_bf16_sr (optim/adamw.cuh), host pointers.
void adamw_update_bf16_sr_cpu(uint16_t *param, const float *grad, float *m, float *v, size_t n, float lr, float b1,
                              float b2, float eps, float wd, int step, float grad_scale, uint64_t seed,
                              uint64_t sr_offset);

// The vector variant adamw_update_cpu uses: the best this CPU runs, unless a test forced one
// (values above what the CPU supports are lowered to the best).
typedef enum { ADAMW_ISA_SCALAR = 0, ADAMW_ISA_AVX2 = 1, ADAMW_ISA_AVX512 = 2 } AdamwIsa;
AdamwIsa adamw_cpu_isa_best(void);
void adamw_cpu_set_isa(AdamwIsa isa);
AdamwIsa adamw_cpu_get_isa(void);
const char *adamw_cpu_isa_name(AdamwIsa isa);

// torchao's low-bit step (lowbit.h) over one tensor on the CPU, OpenMP over its blocks; the
// same bits as lowbit_adamw_step_cpu and as adamw_lowbit_update on the GPU.
void adamw_lowbit_update_cpu(float *master, uint16_t *param, const LowbitState *st, const float *grad,
                             const LowbitStep *s);

// One tensor's step for adamw_cpu_run: either arithmetic, either kind of master.
typedef enum {
    ADAMW_CPU_TORCH = 0,   // torch.optim.AdamW (adamw_elem), fp32 states: adamw_update_cpu / _bf16_sr_cpu
    ADAMW_CPU_LOWBIT = 1,  // torchao's single_param_adam, any LowbitState: adamw_lowbit_update_cpu
} AdamwCpuKind;
typedef struct {
    AdamwCpuKind kind;
    float *master;       // fp32 [st.n] with s.master == LOWBIT_MASTER_F32, else NULL
    uint16_t *param;     // bf16 [st.n]: the bf16 copy of master (may be NULL then), or the master itself
    const float *grad;   // fp32 [st.n]
    LowbitState st;      // states (ADAMW_CPU_TORCH: fmt LOWBIT_F32, m and v float [st.n])
    LowbitStep s;        // lr, betas, eps, weight decay, step, grad_scale, master mode, SR seed and offset;
                         // ADAMW_CPU_TORCH rounds lr/b1/b2/eps/wd to float, as adamw_update's arguments are
} AdamwCpuJob;
// Runs the jobs as one OpenMP loop over chunks of all of them (dynamic schedule), so that a
// group of small tensors (one layer) still uses every core. The same bits as calling
// adamw_update_cpu / adamw_update_bf16_sr_cpu / adamw_lowbit_update_cpu job by job: elements
// (and quantization blocks) are independent, so the split never changes a bit.
void adamw_cpu_run(const AdamwCpuJob *jobs, int n_jobs);

#ifdef __cplusplus
}
#endif
#endif
