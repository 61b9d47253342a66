// AdamW on the CPU (offload): the pinned element update of adamw_cpu.h in three variants
// that give identical bits: AVX-512 (16 lanes, masked tail), AVX2+FMA (8 lanes, scalar tail)
// and scalar C (fmaf); with bf16 masters (stochastic rounding) AVX-512 (F + DQ, for the 64-bit
// multiplies of the random-bit hash) and scalar C. OpenMP splits the work into fixed chunks;
// elements are independent, so neither the chunking nor the thread count changes a bit.
#if defined(__GNUC__) && !defined(__clang__)
// Only the FMAs written out may fuse: a target("avx512f") function could otherwise contract
// _mm512_mul_ps + _mm512_add_ps (GCC implements them as vector * and +).
#pragma GCC optimize("fp-contract=off")
#endif
#include "adamw_cpu.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include "bf16_x86.h"
#endif

#include "../common/error.h"

// Elements per OpenMP work item (a multiple of 16): small enough that one layer of a small
// model (a few 64K-element matrices) still spreads over 16+ cores in adamw_cpu_run.
#define ADAMW_CHUNK ((size_t)1 << 15)

AdamwScalars adamw_scalars(float lr, float b1, float b2, float eps, float wd, int step, float grad_scale) {
    CHECK(step >= 1, "adamw: step must be >= 1 (bias correction), got %d", step);
    AdamwScalars a;
    double bc1 = 1.0 - pow((double)b1, step), bc2 = 1.0 - pow((double)b2, step);
    a.decay = (float)(1.0 - (double)lr * wd);
    a.one_m_b1 = (float)(1.0 - (double)b1);
    a.b2 = b2;
    a.one_m_b2 = (float)(1.0 - (double)b2);
    a.step_size = (float)(lr / bc1);
    a.bc2_sqrt = (float)sqrt(bc2);
    a.eps = eps;
    a.grad_scale = grad_scale;
    return a;
}

static void chunk_scalar(float *master, uint16_t *param, const float *grad, float *m, float *v, size_t i0, size_t i1,
                         const AdamwScalars *a) {
    for (size_t i = i0; i < i1; i++) {
        master[i] = adamw_elem(master[i], grad[i], &m[i], &v[i], a);
        if (param) param[i] = lowbit_bf16_rne(master[i]);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86_VARIANTS 1

// adamw_elem's op sequence in 16 lanes: the broadcast scalars, and one update of the master
// p and the moments *mm, *vv from the unscaled gradient g; returns the new p.
typedef struct { __m512 gs, decay, w1, b2, w2, nstep, bc, eps; } Adam512;

__attribute__((target("avx512f"))) static inline Adam512 adam512_consts(const AdamwScalars *a) {
    Adam512 c = {_mm512_set1_ps(a->grad_scale), _mm512_set1_ps(a->decay),    _mm512_set1_ps(a->one_m_b1),
                 _mm512_set1_ps(a->b2),         _mm512_set1_ps(a->one_m_b2), _mm512_set1_ps(-a->step_size),
                 _mm512_set1_ps(a->bc2_sqrt),   _mm512_set1_ps(a->eps)};
    return c;
}

__attribute__((target("avx512f"))) static inline __m512 adam512_step(const Adam512 *c, __m512 p, __m512 g, __m512 *mm,
                                                                     __m512 *vv) {
    g = _mm512_mul_ps(g, c->gs);
    p = _mm512_mul_ps(p, c->decay);
    *mm = _mm512_fmadd_ps(c->w1, _mm512_sub_ps(g, *mm), *mm);
    *vv = _mm512_fmadd_ps(c->w2, _mm512_mul_ps(g, g), _mm512_mul_ps(*vv, c->b2));
    const __m512 den = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(*vv), c->bc), c->eps);
    return _mm512_fmadd_ps(c->nstep, _mm512_div_ps(*mm, den), p);
}

__attribute__((target("avx512f"))) static void chunk_avx512(float *master, uint16_t *param, const float *grad, float *m,
                                                            float *v, size_t i0, size_t i1, const AdamwScalars *a) {
    const Adam512 c = adam512_consts(a);
    for (size_t i = i0; i < i1; i += 16) {
        // The last vector of the tensor is masked: lanes past i1 neither load nor store.
        __mmask16 k = i1 - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (i1 - i)) - 1);
        __m512 mm = _mm512_maskz_loadu_ps(k, m + i), vv = _mm512_maskz_loadu_ps(k, v + i);
        const __m512 p = adam512_step(&c, _mm512_maskz_loadu_ps(k, master + i), _mm512_maskz_loadu_ps(k, grad + i), &mm, &vv);
        _mm512_mask_storeu_ps(master + i, k, p);
        _mm512_mask_storeu_ps(m + i, k, mm);
        _mm512_mask_storeu_ps(v + i, k, vv);
        if (param) {  // lowbit_bf16_rne in 16 lanes
            const __m256i h = bf16_rne16(p);
            if (k == 0xFFFF) _mm256_storeu_si256((__m256i *)(param + i), h);
            else {  // a 16-bit masked store needs AVX512BW+VL: the tail goes through memory
                uint16_t t[16];
                _mm256_storeu_si256((__m256i *)t, h);
                memcpy(param + i, t, (i1 - i) * sizeof(uint16_t));
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void chunk_avx2(float *master, uint16_t *param, const float *grad, float *m,
                                                           float *v, size_t i0, size_t i1, const AdamwScalars *a) {
    const __m256 gs = _mm256_set1_ps(a->grad_scale), decay = _mm256_set1_ps(a->decay), w1 = _mm256_set1_ps(a->one_m_b1),
                 b2 = _mm256_set1_ps(a->b2), w2 = _mm256_set1_ps(a->one_m_b2), nstep = _mm256_set1_ps(-a->step_size),
                 bc = _mm256_set1_ps(a->bc2_sqrt), eps = _mm256_set1_ps(a->eps);
    const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7FFF), qnan = _mm256_set1_epi32(0x7FC0);
    size_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(grad + i), gs);
        __m256 p = _mm256_mul_ps(_mm256_loadu_ps(master + i), decay);
        __m256 mm = _mm256_loadu_ps(m + i), vv = _mm256_loadu_ps(v + i);
        mm = _mm256_fmadd_ps(w1, _mm256_sub_ps(g, mm), mm);
        vv = _mm256_fmadd_ps(w2, _mm256_mul_ps(g, g), _mm256_mul_ps(vv, b2));
        __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), bc), eps);
        p = _mm256_fmadd_ps(nstep, _mm256_div_ps(mm, den), p);
        _mm256_storeu_ps(master + i, p);
        _mm256_storeu_ps(m + i, mm);
        _mm256_storeu_ps(v + i, vv);
        if (param) {
            __m256i u = _mm256_castps_si256(p);
            __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
            r = _mm256_srli_epi32(r, 16);
            r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(p, p, _CMP_UNORD_Q)));
            // packus works per 128-bit lane: [r0..3 r0..3 | r4..7 r4..7]; qwords 0 and 2 hold r0..7
            __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
            _mm_storeu_si128((__m128i *)(param + i), _mm256_castsi256_si128(pk));
        }
    }
    chunk_scalar(master, param, grad, m, v, i, i1, a);
}

// chunk_sr_scalar in 16 lanes: bf16 -> fp32 (exact), the same FMA/op sequence as chunk_avx512,
// then lowbit_bf16_sr with the lanes' lowbit_sr_bits. The tail (< 16) goes through memory.
__attribute__((target("avx512f,avx512dq"))) static void chunk_sr_avx512(uint16_t *param, const float *grad, float *m,
                                                                       float *v, size_t i0, size_t i1,
                                                                       const AdamwScalars *a, uint64_t seed, int step,
                                                                       uint64_t off) {
    const Adam512 c = adam512_consts(a);
    for (size_t i = i0; i < i1; i += 16) {
        const size_t cnt = i1 - i >= 16 ? 16 : i1 - i;
        const __mmask16 k = cnt == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cnt) - 1);
        uint16_t tmp[16] = {0};
        const uint16_t *src = param + i;
        if (cnt < 16) memcpy(tmp, param + i, cnt * sizeof(uint16_t)), src = tmp;
        const __m512 p0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src)), 16));
        __m512 mm = _mm512_maskz_loadu_ps(k, m + i), vv = _mm512_maskz_loadu_ps(k, v + i);
        const __m512 p = adam512_step(&c, p0, _mm512_maskz_loadu_ps(k, grad + i), &mm, &vv);
        _mm512_mask_storeu_ps(m + i, k, mm);
        _mm512_mask_storeu_ps(v + i, k, vv);
        const __m256i h = bf16_sr16(p, sr_bits16(seed, step, off + i));
        if (cnt == 16) _mm256_storeu_si256((__m256i *)(param + i), h);
        else {
            _mm256_storeu_si256((__m256i *)tmp, h);
            memcpy(param + i, tmp, cnt * sizeof(uint16_t));
        }
    }
}
#endif

// The bf16 masters in plain C: the same element as the GPU's adamw_update_bf16_sr.
static void chunk_sr_scalar(uint16_t *param, const float *grad, float *m, float *v, size_t i0, size_t i1,
                            const AdamwScalars *a, uint64_t seed, int step, uint64_t off) {
    for (size_t i = i0; i < i1; i++) {
        const float p = adamw_elem(lowbit_bf16_to_f32(param[i]), grad[i], &m[i], &v[i], a);
        param[i] = lowbit_bf16_sr(p, lowbit_sr_bits(seed, step, off + i));
    }
}

static int g_isa = -1;  // -1: not chosen yet

AdamwIsa adamw_cpu_isa_best(void) {
#ifdef HAVE_X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return ADAMW_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ADAMW_ISA_AVX2;
#endif
    return ADAMW_ISA_SCALAR;
}

void adamw_cpu_set_isa(AdamwIsa isa) {
    AdamwIsa best = adamw_cpu_isa_best();
    g_isa = (int)(isa > best ? best : isa);
}

AdamwIsa adamw_cpu_get_isa(void) {
    if (g_isa < 0) g_isa = (int)adamw_cpu_isa_best();
    return (AdamwIsa)g_isa;
}

const char *adamw_cpu_isa_name(AdamwIsa isa) {
    return isa == ADAMW_ISA_AVX512 ? "avx512" : isa == ADAMW_ISA_AVX2 ? "avx2" : "scalar";
}

// ---- the runner -----------------------------------------------------------------------------
// A job's work is cut into items of about ADAMW_CHUNK elements: torch jobs into element
// ranges, low-bit jobs into runs of whole units (quantization blocks, or LOWBIT_PLAIN_CHUNK
// elements of plain states).
typedef struct {
    AdamwScalars a;   // ADAMW_CPU_TORCH
    LowbitScalars la; // ADAMW_CPU_LOWBIT
    size_t units, per_item, first_item, n_items;
} JobPlan;

static void plan_job(const AdamwCpuJob *j, JobPlan *p) {
    memset(p, 0, sizeof *p);
    const size_t n = j->st.n;
    if (j->kind == ADAMW_CPU_TORCH) {
        CHECK(j->st.fmt == LOWBIT_F32 && (n == 0 || (j->st.m && j->st.v)),
              "adamw_cpu_run: torch.optim.AdamW's arithmetic keeps fp32 moments, not %s states",
              lowbit_format_name(j->st.fmt));
        CHECK(j->s.master == LOWBIT_MASTER_F32 || j->s.master == LOWBIT_MASTER_BF16_SR,
              "adamw_cpu_run: master mode %d is not fp32 or bf16 with stochastic rounding", (int)j->s.master);
        CHECK(j->s.master == LOWBIT_MASTER_F32 ? j->master != NULL : (j->master == NULL && j->param != NULL),
              "adamw_cpu_run: master mode %d needs %s", (int)j->s.master,
              j->s.master == LOWBIT_MASTER_F32 ? "fp32 master weights" : "bf16 parameters only (master == NULL)");
        p->a = adamw_scalars((float)j->s.lr, (float)j->s.beta1, (float)j->s.beta2, (float)j->s.eps,
                             (float)j->s.weight_decay, j->s.step, j->s.grad_scale);  // CHECKs step >= 1
        p->units = n;
        p->per_item = ADAMW_CHUNK;
    } else {
        CHECK(j->kind == ADAMW_CPU_LOWBIT, "adamw_cpu_run: unknown job kind %d", (int)j->kind);
        lowbit_check_step(j->master, j->param, &j->st, &j->s);
        p->la = lowbit_scalars(&j->s);
        p->units = lowbit_step_units(&j->st);
        const size_t per_unit = lowbit_quantized(j->st.fmt) ? (size_t)j->st.block : LOWBIT_PLAIN_CHUNK;
        p->per_item = ADAMW_CHUNK / per_unit > 0 ? ADAMW_CHUNK / per_unit : 1;
    }
    p->n_items = (p->units + p->per_item - 1) / p->per_item;
}

static void run_item(const AdamwCpuJob *j, const JobPlan *p, size_t item, AdamwIsa isa, int sr_vec) {
    const size_t u0 = item * p->per_item, u1 = u0 + p->per_item < p->units ? u0 + p->per_item : p->units;
    if (j->kind == ADAMW_CPU_LOWBIT) {
        for (size_t u = u0; u < u1; u++) lowbit_step_unit(j->master, j->param, &j->st, j->grad, &j->s, &p->la, NULL, u);
        return;
    }
    float *m = (float *)j->st.m, *v = (float *)j->st.v;
    if (j->s.master == LOWBIT_MASTER_BF16_SR) {
#ifdef HAVE_X86_VARIANTS
        if (isa == ADAMW_ISA_AVX512 && sr_vec)
            chunk_sr_avx512(j->param, j->grad, m, v, u0, u1, &p->a, j->s.seed, j->s.step, j->s.sr_offset);
        else
#endif
            chunk_sr_scalar(j->param, j->grad, m, v, u0, u1, &p->a, j->s.seed, j->s.step, j->s.sr_offset);
        return;
    }
#ifdef HAVE_X86_VARIANTS
    if (isa == ADAMW_ISA_AVX512) chunk_avx512(j->master, j->param, j->grad, m, v, u0, u1, &p->a);
    else if (isa == ADAMW_ISA_AVX2) chunk_avx2(j->master, j->param, j->grad, m, v, u0, u1, &p->a);
    else
#endif
        chunk_scalar(j->master, j->param, j->grad, m, v, u0, u1, &p->a);
}

void adamw_cpu_run(const AdamwCpuJob *jobs, int n_jobs) {
    if (n_jobs <= 0) return;
    JobPlan *plan = (JobPlan *)ao_malloc((size_t)n_jobs * sizeof *plan);
    size_t total = 0;
    for (int k = 0; k < n_jobs; k++) {
        plan_job(&jobs[k], &plan[k]);
        plan[k].first_item = total;
        total += plan[k].n_items;
    }
    // Chosen before the parallel region: the lazy choice is not thread-safe.
    const AdamwIsa isa = adamw_cpu_get_isa();
    int sr_vec = 0;
#ifdef HAVE_X86_VARIANTS
    __builtin_cpu_init();
    sr_vec = __builtin_cpu_supports("avx512dq");
#endif
#pragma omp parallel for schedule(dynamic, 1)
    for (long it = 0; it < (long)total; it++) {
        int lo = 0, hi = n_jobs - 1;  // the last job whose first item is <= it
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (plan[mid].first_item <= (size_t)it) lo = mid;
            else hi = mid - 1;
        }
        run_item(&jobs[lo], &plan[lo], (size_t)it - plan[lo].first_item, isa, sr_vec);
    }
    free(plan);
}

static AdamwCpuJob torch_job(float *master, uint16_t *param, const float *grad, float *m, float *v, size_t n,
                             float lr, float b1, float b2, float eps, float wd, int step, float grad_scale,
                             LowbitMaster mode, uint64_t seed, uint64_t sr_offset) {
    AdamwCpuJob j;
    memset(&j, 0, sizeof j);
    j.kind = ADAMW_CPU_TORCH;
    j.master = master;
    j.param = param;
    j.grad = grad;
    j.st.fmt = LOWBIT_F32;
    j.st.n = n;
    j.st.m = m;
    j.st.v = v;
    LowbitStep s = {lr, b1, b2, eps, wd, step, grad_scale, mode, seed, sr_offset};
    j.s = s;
    return j;
}

void adamw_update_cpu(float *master, uint16_t *param, const float *grad, float *m, float *v, size_t n, float lr,
                      float b1, float b2, float eps, float wd, int step, float grad_scale) {
    const AdamwCpuJob j = torch_job(master, param, grad, m, v, n, lr, b1, b2, eps, wd, step, grad_scale,
                                    LOWBIT_MASTER_F32, 0, 0);
    adamw_cpu_run(&j, 1);
}

void adamw_update_bf16_sr_cpu(uint16_t *param, const float *grad, float *m, float *v, size_t n, float lr, float b1,
                              float b2, float eps, float wd, int step, float grad_scale, uint64_t seed,
                              uint64_t sr_offset) {
    const AdamwCpuJob j = torch_job(NULL, param, grad, m, v, n, lr, b1, b2, eps, wd, step, grad_scale,
                                    LOWBIT_MASTER_BF16_SR, seed, sr_offset);
    adamw_cpu_run(&j, 1);
}

void adamw_lowbit_update_cpu(float *master, uint16_t *param, const LowbitState *st, const float *grad,
                             const LowbitStep *s) {
    AdamwCpuJob j;
    memset(&j, 0, sizeof j);
    j.kind = ADAMW_CPU_LOWBIT;
    j.master = master;
    j.param = param;
    j.grad = grad;
    j.st = *st;
    j.s = *s;
    adamw_cpu_run(&j, 1);
}
