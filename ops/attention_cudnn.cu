// cuDNN fused SDPA (flash attention) through the cuDNN 9 backend graph API, in plain calls
// (no cudnn-frontend). cuDNN has no single "attention" op for Hopper in 9.x before the unified
// SDPA descriptors (whose causal mask needs 9.21+); instead its runtime-fusion engines
// recognise an operation graph of matmul / pointwise / reduction / reshape nodes with the
// exact shape that cudnn-frontend's composite SDPA node emits, and run it as one fused
// flash-attention kernel. The graphs below follow that pattern node for node:
//
// forward   S = Q KT; S *= scale; causal: S = (row >= col) ? S : -inf          [B,H,T,T]
//           M = max_col S; E = exp(S - M); L = sum_col E; Stats = M + log L     [B,H,T,1]
//           P = E / L (bf16); O = P V
// backward  Dsum = 1 * sum_d(dO * O)                       (fp32, in our workspace)
//           P = exp(mask(scale * Q KT - Stats)); dV = P^T dO   (reshape = transposed view)
//           dS = P (dO VT - Dsum) scale; dK = dS^T Q; dQacc = dS K (fp32 workspace); dQ = dQacc
//           GQA: dV, dK are computed per query head ([B,H,T,hd], virtual) and reduced (sum)
//           to the KV heads by a reduction node.
// Q/K/V/dQ/dK/dV are strided views into the packed [B*T, (H+2KV)*hd] rows; KT/VT are the
// same memory with the last two dims and strides swapped.
// A graph + execution plan is built once per (handle, B, T, H, KV, hd, direction) and
// cached, failures included (so a shape cuDNN rejects is not retried every step).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_impl.cuh"

#ifndef LLAMA_AO_CUDNN

int attention_cudnn_available(const GpuCtx *ctx, int hd) {
    (void)ctx, (void)hd;
    return 0;
}
int attention_forward_cudnn(GpuCtx *, bf16 *, float *, const bf16 *, int, int, int, int, int, const char **why) {
    *why = "built without cuDNN";
    return 0;
}
int attention_backward_cudnn(GpuCtx *, bf16 *, const bf16 *, const bf16 *, const bf16 *, const float *, int, int, int,
                             int, int, const char **why) {
    *why = "built without cuDNN";
    return 0;
}
int attention_cudnn_plan_ok(GpuCtx *, int, int, int, int, int, int) { return 0; }

#else

namespace {

typedef cudnnBackendDescriptor_t Desc;

// Still-required attributes whose enumerators are marked deprecated in cudnn_graph.h (using
// the names would warn): the operation graph's and the execution plan's handle.
const cudnnBackendAttributeName_t ATTR_OPGRAPH_HANDLE = (cudnnBackendAttributeName_t)800;
const cudnnBackendAttributeName_t ATTR_PLAN_HANDLE = (cudnnBackendAttributeName_t)400;

// Tensor ids of the variant pack; virtual tensors are numbered from UID_VIRTUAL up.
enum {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEGINF, UID_ONE,
    UID_DO, UID_DQ, UID_DK, UID_DV, UID_DSUM, UID_DQACC, UID_VIRTUAL = 100
};

// Collects every descriptor of one graph (to destroy them together) and the first error.
struct Builder {
    Desc all[128];
    int n_all;
    Desc ops[48];
    int n_ops;
    int64_t next_uid;
    cudnnStatus_t err;
    char where[160];
};

static bool ok(Builder *b, cudnnStatus_t s, const char *what) {
    if (b->err != CUDNN_STATUS_SUCCESS) return false;
    if (s == CUDNN_STATUS_SUCCESS) return true;
    b->err = s;
    snprintf(b->where, sizeof b->where, "%s", what);
    return false;
}
#define BE(b, call) ok((b), (call), #call)

static Desc create(Builder *b, cudnnBackendDescriptorType_t t) {
    Desc d = NULL;
    if (b->n_all >= (int)(sizeof b->all / sizeof b->all[0])) {
        ok(b, CUDNN_STATUS_INTERNAL_ERROR, "too many descriptors (raise Builder::all)");
        return NULL;
    }
    if (BE(b, cudnnBackendCreateDescriptor(t, &d))) b->all[b->n_all++] = d;
    return d;
}
static void set(Builder *b, Desc d, cudnnBackendAttributeName_t n, cudnnBackendAttributeType_t t, int64_t count,
                const void *v) {
    if (d) BE(b, cudnnBackendSetAttribute(d, n, t, count, v));
}
static void set_desc(Builder *b, Desc d, cudnnBackendAttributeName_t n, Desc v) {
    set(b, d, n, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
}
static void finalize(Builder *b, Desc d) {
    if (d) BE(b, cudnnBackendFinalize(d));
}

// 4-d tensor. Virtual tensors live only inside the fused kernel; by-value tensors are
// scalars passed by host pointer in the variant pack.
static Desc tensor(Builder *b, int64_t uid, cudnnDataType_t dt, const int64_t dim[4], const int64_t stride[4],
                   bool is_virtual, bool by_value = false) {
    Desc d = create(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16;
    set(b, d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    set(b, d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dim);
    set(b, d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, stride);
    set(b, d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(b, d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    set(b, d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) set(b, d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    finalize(b, d);
    return d;
}
static Desc vtensor(Builder *b, cudnnDataType_t dt, const int64_t dim[4], const int64_t stride[4]) {
    return tensor(b, b->next_uid++, dt, dim, stride, true);
}
static void add_op(Builder *b, Desc op) {
    finalize(b, op);
    if (op && b->err == CUDNN_STATUS_SUCCESS) b->ops[b->n_ops++] = op;
}

// y = mode(x [, b2 [, t]]) computed in `prec`; axis >= 0 only for GEN_INDEX.
static void pointwise(Builder *b, cudnnPointwiseMode_t mode, cudnnDataType_t prec, Desc x, Desc b2, Desc t, Desc y,
                      int64_t axis = -1) {
    Desc pw = create(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(b, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(b, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (axis >= 0) set(b, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    finalize(b, pw);
    Desc op = create(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
    set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b2) set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b2);
    if (t) set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
    set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    add_op(b, op);
}
static void matmul(Builder *b, Desc a, Desc bm, Desc c) {
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    Desc mm = create(b, CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    set(b, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    finalize(b, mm);
    Desc op = create(b, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set_desc(b, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
    set_desc(b, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, bm);
    set_desc(b, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
    set_desc(b, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
    add_op(b, op);
}
// Reduces x over the dims where y is smaller (y dim 1, or KV < H for the GQA head sum).
static void reduction(Builder *b, cudnnReduceTensorOp_t red, Desc x, Desc y) {
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    Desc rd = create(b, CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    set(b, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &red);
    set(b, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    finalize(b, rd);
    Desc op = create(b, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set_desc(b, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
    set_desc(b, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
    set_desc(b, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd);
    add_op(b, op);
}
// y is x re-described (same elements, other dims/strides: here a transposed view).
static void reshape(Builder *b, Desc x, Desc y) {
    Desc op = create(b, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set_desc(b, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
    set_desc(b, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    add_op(b, op);
}

// Masked scores: causal (row >= col keeps the score, else -inf), as cuDNN's causal pattern.
static Desc causal_mask(Builder *b, Desc s, Desc neginf, const int64_t dim[4], const int64_t stride[4]) {
    Desc row = vtensor(b, CUDNN_DATA_INT32, dim, stride), col = vtensor(b, CUDNN_DATA_INT32, dim, stride);
    Desc keep = vtensor(b, CUDNN_DATA_BOOLEAN, dim, stride), out = vtensor(b, CUDNN_DATA_FLOAT, dim, stride);
    pointwise(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, NULL, NULL, row, 2);
    pointwise(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, NULL, NULL, col, 3);
    pointwise(b, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, NULL, keep);
    pointwise(b, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, neginf, keep, out);
    return out;
}

struct Shape {
    int64_t B, T, H, KV, hd;
};
// The layouts shared by both graphs.
struct Views {
    int64_t q[4], q_s[4], kt[4], kt_s[4], kv[4], kv_s[4], o[4], o_s[4], s[4], s_s[4], st[4], st_s[4], one[4];
    Views(const Shape &p) {
        const int64_t B = p.B, T = p.T, H = p.H, KV = p.KV, d = p.hd, rs = (H + 2 * KV) * d;
        set4(q, B, H, T, d), set4(q_s, T * rs, d, rs, 1);     // q / dq heads of packed rows
        set4(kt, B, KV, d, T), set4(kt_s, T * rs, d, 1, rs);  // K^T (V^T): swapped last dims
        set4(kv, B, KV, T, d), set4(kv_s, T * rs, d, rs, 1);  // k, v / dk, dv heads
        set4(o, B, H, T, d), set4(o_s, T * H * d, d, H * d, 1);
        set4(s, B, H, T, T), set4(s_s, H * T * T, T * T, T, 1);
        set4(st, B, H, T, 1), set4(st_s, H * T, T, 1, 1);
        set4(one, 1, 1, 1, 1);
    }
    static void set4(int64_t *a, int64_t x, int64_t y, int64_t z, int64_t w) { a[0] = x, a[1] = y, a[2] = z, a[3] = w; }
};

static float neg_inf_value() {
    // cuDNN before 9.10 wants the lowest finite float as the masked score.
    return cudnnGetVersion() < 91000 ? -3.4028234663852886e38f : -INFINITY;
}

static void build_forward(Builder *b, const Shape &p) {
    Views v(p);
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT, bf = CUDNN_DATA_BFLOAT16;
    Desc Q = tensor(b, UID_Q, bf, v.q, v.q_s, false), KT = tensor(b, UID_K, bf, v.kt, v.kt_s, false);
    Desc V = tensor(b, UID_V, bf, v.kv, v.kv_s, false), O = tensor(b, UID_O, bf, v.o, v.o_s, false);
    Desc Stats = tensor(b, UID_STATS, f32, v.st, v.st_s, false);
    Desc scale = tensor(b, UID_SCALE, f32, v.one, v.one, false, true);
    Desc neginf = tensor(b, UID_NEGINF, f32, v.one, v.one, false, true);

    Desc S = vtensor(b, f32, v.s, v.s_s), S1 = vtensor(b, f32, v.s, v.s_s);
    matmul(b, Q, KT, S);
    pointwise(b, CUDNN_POINTWISE_MUL, f32, S, scale, NULL, S1);
    Desc S2 = causal_mask(b, S1, neginf, v.s, v.s_s);
    Desc M = vtensor(b, f32, v.st, v.st_s), Z = vtensor(b, f32, v.s, v.s_s), E = vtensor(b, f32, v.s, v.s_s);
    Desc L = vtensor(b, f32, v.st, v.st_s), logL = vtensor(b, f32, v.st, v.st_s), P = vtensor(b, bf, v.s, v.s_s);
    reduction(b, CUDNN_REDUCE_TENSOR_MAX, S2, M);
    pointwise(b, CUDNN_POINTWISE_SUB, f32, S2, M, NULL, Z);
    pointwise(b, CUDNN_POINTWISE_EXP, f32, Z, NULL, NULL, E);
    reduction(b, CUDNN_REDUCE_TENSOR_ADD, E, L);
    pointwise(b, CUDNN_POINTWISE_LOG, f32, L, NULL, NULL, logL);
    pointwise(b, CUDNN_POINTWISE_ADD, f32, M, logL, NULL, Stats);
    pointwise(b, CUDNN_POINTWISE_DIV, f32, E, L, NULL, P);  // P in bf16: the second matmul's A type
    matmul(b, P, V, O);
}

static void build_backward(Builder *b, const Shape &p) {
    Views v(p);
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT, bf = CUDNN_DATA_BFLOAT16;
    const bool gqa = p.H != p.KV;
    Desc Q = tensor(b, UID_Q, bf, v.q, v.q_s, false), KT = tensor(b, UID_K, bf, v.kt, v.kt_s, false);
    Desc VT = tensor(b, UID_V, bf, v.kt, v.kt_s, false), O = tensor(b, UID_O, bf, v.o, v.o_s, false);
    Desc dO = tensor(b, UID_DO, bf, v.o, v.o_s, false), Stats = tensor(b, UID_STATS, f32, v.st, v.st_s, false);
    Desc dQ = tensor(b, UID_DQ, bf, v.q, v.q_s, false), dK = tensor(b, UID_DK, bf, v.kv, v.kv_s, false);
    Desc dV = tensor(b, UID_DV, bf, v.kv, v.kv_s, false);
    Desc scale = tensor(b, UID_SCALE, f32, v.one, v.one, false, true);
    Desc neginf = tensor(b, UID_NEGINF, f32, v.one, v.one, false, true);
    Desc one = tensor(b, UID_ONE, f32, v.one, v.one, false, true);
    int64_t hs[4] = {p.B, p.H, p.T, p.hd}, hs_s[4] = {p.H * p.T * p.hd, p.T * p.hd, p.hd, 1};  // per-q-head [B,H,T,hd]
    int64_t ost[4] = {p.H * p.T * p.hd, p.T * p.hd, p.H * p.hd, 1};
    int64_t tr_s[4] = {p.H * p.T * p.T, p.T * p.T, 1, p.T};  // [B,H,Tk,Tq] view of [B,H,Tq,Tk]
    int64_t kvd[4] = {p.B, p.KV, p.T, p.hd};

    // Dsum = sum_d dO*O, materialised (non-virtual) in the workspace.
    Desc dOO = vtensor(b, f32, v.o, ost), rsum = vtensor(b, f32, v.st, v.st_s);
    Desc Dsum = tensor(b, UID_DSUM, f32, v.st, v.st_s, false);
    pointwise(b, CUDNN_POINTWISE_MUL, f32, dO, O, NULL, dOO);
    reduction(b, CUDNN_REDUCE_TENSOR_ADD, dOO, rsum);
    pointwise(b, CUDNN_POINTWISE_MUL, f32, rsum, one, NULL, Dsum);

    // P = exp(mask(scale * Q K^T - Stats)); dV = P^T dO.
    Desc S = vtensor(b, f32, v.s, v.s_s), S1 = vtensor(b, f32, v.s, v.s_s), S2 = vtensor(b, f32, v.s, v.s_s);
    matmul(b, Q, KT, S);
    pointwise(b, CUDNN_POINTWISE_MUL, f32, S, scale, NULL, S1);
    pointwise(b, CUDNN_POINTWISE_SUB, f32, S1, Stats, NULL, S2);
    Desc S3 = causal_mask(b, S2, neginf, v.s, v.s_s);
    Desc P = vtensor(b, f32, v.s, v.s_s), PT = vtensor(b, bf, v.s, tr_s);
    pointwise(b, CUDNN_POINTWISE_EXP, f32, S3, NULL, NULL, P);
    reshape(b, P, PT);
    if (gqa) {
        Desc dVh = vtensor(b, bf, hs, hs_s);
        matmul(b, PT, dO, dVh);
        reduction(b, CUDNN_REDUCE_TENSOR_ADD, dVh, dV);
    } else {
        matmul(b, PT, dO, dV);
    }

    // dS = P (dO V^T - Dsum) * scale; dK = dS^T Q; dQ = dS K via an fp32 accumulator.
    Desc dP = vtensor(b, f32, v.s, v.s_s), dP1 = vtensor(b, f32, v.s, v.s_s), dP2 = vtensor(b, f32, v.s, v.s_s);
    Desc dS = vtensor(b, f32, v.s, v.s_s), dST = vtensor(b, bf, v.s, tr_s);
    matmul(b, dO, VT, dP);
    pointwise(b, CUDNN_POINTWISE_SUB, f32, dP, Dsum, NULL, dP1);
    pointwise(b, CUDNN_POINTWISE_MUL, f32, dP1, P, NULL, dP2);
    pointwise(b, CUDNN_POINTWISE_MUL, f32, dP2, scale, NULL, dS);
    reshape(b, dS, dST);
    if (gqa) {
        Desc dKh = vtensor(b, bf, hs, hs_s);
        matmul(b, dST, Q, dKh);
        reduction(b, CUDNN_REDUCE_TENSOR_ADD, dKh, dK);
    } else {
        matmul(b, dST, Q, dK);
    }
    Desc K = vtensor(b, bf, kvd, v.kv_s), dQacc = tensor(b, UID_DQACC, f32, hs, hs_s, false);
    reshape(b, KT, K);
    matmul(b, dS, K, dQacc);
    pointwise(b, CUDNN_POINTWISE_IDENTITY, f32, dQacc, NULL, NULL, dQ);
}

// LLAMA_AO_CUDNN_DEBUG=1: the engine behind an engine config, as one line: its index, numerical
// notes (cudnnBackendNumericalNote_t values) and knob choices. Diagnostics only: a config is not
// chosen or skipped by its notes (the flash backward's engine carries no NONDETERMINISTIC note
// on cuDNN 9.14, yet its dQ is not bitwise reproducible: docs/TRAINING.md).
static void describe_engine(Desc cfg, char *line, size_t cap) {
    Desc eng = NULL;
    int64_t got = 0;
    snprintf(line, cap, "engine ?");
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng) != CUDNN_STATUS_SUCCESS) return;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &got, &eng) ==
        CUDNN_STATUS_SUCCESS) {
        int64_t idx = -1, nn = 0;
        cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
        cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &got, &idx);
        if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                     CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &nn, notes) != CUDNN_STATUS_SUCCESS)
            nn = 0;
        bool nondet = false;
        int n = snprintf(line, cap, "engine %lld notes [", (long long)idx);
        for (int64_t i = 0; i < nn && n > 0 && (size_t)n < cap; i++) {
            nondet |= notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
            n += snprintf(line + n, cap - n, "%s%d", i ? " " : "", (int)notes[i]);
        }
        // knob choices of this config (type=value)
        Desc kc[24];
        int64_t nk = 0, k = 0;
        for (; k < 24; k++)
            if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, &kc[k]) != CUDNN_STATUS_SUCCESS)
                break;
        if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR, k, &nk,
                                     kc) != CUDNN_STATUS_SUCCESS)
            nk = 0;
        if (n > 0 && (size_t)n < cap) n += snprintf(line + n, cap - n, "] knobs");
        for (int64_t i = 0; i < nk && i < k && n > 0 && (size_t)n < cap; i++) {
            cudnnBackendKnobType_t t = CUDNN_KNOB_TYPE_COUNTS;
            int64_t v = 0;
            cudnnBackendGetAttribute(kc[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &got, &t);
            cudnnBackendGetAttribute(kc[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &got, &v);
            n += snprintf(line + n, cap - n, " %d=%lld", (int)t, (long long)v);
        }
        if (nondet && n > 0 && (size_t)n < cap) snprintf(line + n, cap - n, " (NONDETERMINISTIC note)");
        for (int64_t i = 0; i < k; i++) cudnnBackendDestroyDescriptor(kc[i]);
    }
    cudnnBackendDestroyDescriptor(eng);
}

// Operation graph -> heuristics (mode A, then fallback) -> first config that finalizes.
static Desc make_plan(Builder *b, cudnnHandle_t handle, int64_t *ws) {
    Desc graph = create(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, b->n_ops, b->ops);
    set(b, graph, ATTR_OPGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    finalize(b, graph);
    if (b->err != CUDNN_STATUS_SUCCESS) return NULL;
    const char *dbg = getenv("LLAMA_AO_CUDNN_DEBUG");
    const bool debug = dbg && dbg[0] == '1';
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    for (int m = 0; m < 2; m++) {
        Desc heur = create(b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
        set_desc(b, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
        set(b, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[m]);
        finalize(b, heur);
        int64_t n = 0;
        if (b->err != CUDNN_STATUS_SUCCESS ||
            cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n,
                                     NULL) != CUDNN_STATUS_SUCCESS)
            n = 0;
        if (n > 16) n = 16;
        Desc cfg[16];
        int64_t got = 0;
        for (int64_t i = 0; i < n; i++) cfg[i] = create(b, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
        if (n > 0 && b->err == CUDNN_STATUS_SUCCESS)
            BE(b, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got,
                                           cfg));
        for (int64_t i = 0; i < got && b->err == CUDNN_STATUS_SUCCESS; i++) {
            if (debug) {
                char line[512];
                describe_engine(cfg[i], line, sizeof line);
                fprintf(stderr, "[cuDNN] heuristics %s config %lld: %s\n", m ? "fallback" : "A", (long long)i, line);
            }
            // Engines that cannot run this graph fail here; that is expected, try the next.
            Desc plan = create(b, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
            set(b, plan, ATTR_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
            set_desc(b, plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg[i]);
            if (b->err != CUDNN_STATUS_SUCCESS) return NULL;
            last = cudnnBackendFinalize(plan);
            if (last != CUDNN_STATUS_SUCCESS) continue;
            int64_t count = 0;
            if (debug) fprintf(stderr, "[cuDNN] using that config\n");
            if (BE(b, cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                               &count, ws)))
                return plan;
            return NULL;
        }
    }
    if (b->err == CUDNN_STATUS_SUCCESS) ok(b, last, "no engine config finalized (heuristics mode A and fallback)");
    return NULL;
}

struct Entry {
    bool used, good;
    cudnnHandle_t handle;
    Shape shape;
    bool bwd;
    Desc plan;
    int64_t ws;
    Builder *b;  // owns every descriptor of the graph and plan
    char why[400];
};
Entry g_cache[32];
int g_next_evict;

static Entry *get_plan(GpuCtx *ctx, const Shape &p, bool bwd) {
    for (Entry &e : g_cache)
        if (e.used && e.handle == ctx->cudnn && e.bwd == bwd && !memcmp(&e.shape, &p, sizeof p)) return &e;
    Entry *e = NULL;
    for (Entry &f : g_cache)
        if (!f.used) {
            e = &f;
            break;
        }
    if (!e) {  // full: recycle round-robin (plans are per shape; a run uses a handful)
        e = &g_cache[g_next_evict++ % 32];
        for (int i = e->b->n_all - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(e->b->all[i]);
        free(e->b);
    }
    memset(e, 0, sizeof *e);
    e->used = true, e->handle = ctx->cudnn, e->shape = p, e->bwd = bwd;
    e->b = (Builder *)calloc(1, sizeof(Builder));
    CHECK(e->b, "cuDNN attention: out of host memory");
    Builder *b = e->b;
    b->next_uid = UID_VIRTUAL;
    if (bwd) build_backward(b, p);
    else build_forward(b, p);
    e->plan = make_plan(b, ctx->cudnn, &e->ws);
    e->good = e->plan != NULL && b->err == CUDNN_STATUS_SUCCESS;
    if (!e->good) {
        char detail[256] = "";
        cudnnGetLastErrorString(detail, sizeof detail);
        snprintf(e->why, sizeof e->why, "%s: %s%s%s", b->where, cudnnGetErrorString(b->err), detail[0] ? " | " : "",
                 detail);
        for (int i = b->n_all - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(b->all[i]);
        b->n_all = 0;
    }
    return e;
}

static void execute(GpuCtx *ctx, Entry *e, int n, const int64_t *uids, void *const *ptrs, void *ws) {
    Desc vp = NULL;
    CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp));
    CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids));
    CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs));
    CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws));
    CUDNN_CHECK(cudnnBackendFinalize(vp));
    CUDNN_CHECK(cudnnBackendExecute(ctx->cudnn, e->plan, vp));
    CUDNN_CHECK(cudnnBackendDestroyDescriptor(vp));
}

static size_t align256(size_t n) { return (n + 255) / 256 * 256; }
// Every tensor is declared 16-byte aligned (head offsets are multiples of 16 bytes for hd % 8 == 0).
static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

}  // namespace

int attention_cudnn_available(const GpuCtx *ctx, int hd) {
    // Fused SDPA: head dim a multiple of 8 up to 128, Ampere or newer, cuDNN 9 at run time.
    return hd >= 8 && hd <= 128 && hd % 8 == 0 && ctx->prop.major >= 8 && ctx->cudnn != NULL &&
           cudnnGetVersion() >= 90000;
}

int attention_cudnn_plan_ok(GpuCtx *ctx, int B, int T, int H, int KV, int hd, int bwd) {
    if (!attention_cudnn_available(ctx, hd)) return 0;
    const Shape p = {B, T, H, KV, hd};
    return get_plan(ctx, p, bwd != 0)->good;
}

int attention_forward_cudnn(GpuCtx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int H, int KV, int hd,
                            const char **why) {
    if (!aligned16(out) || !aligned16(lse) || !aligned16(qkv)) return *why = "buffers not 16-byte aligned", 0;
    const Shape p = {B, T, H, KV, hd};
    Entry *e = get_plan(ctx, p, false);
    if (!e->good) return *why = e->why, 0;
    gpu_ctx_cudnn_workspace(ctx, (size_t)e->ws);
    float scale = (float)(1.0 / sqrt((double)hd)), neginf = neg_inf_value();
    const int64_t uids[7] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEGINF};
    void *ptrs[7] = {(void *)qkv, (void *)(qkv + (size_t)H * hd), (void *)(qkv + (size_t)(H + KV) * hd), out, lse,
                     &scale, &neginf};
    execute(ctx, e, 7, uids, ptrs, ctx->cudnn_workspace);
    return 1;
}

int attention_backward_cudnn(GpuCtx *ctx, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                             const float *lse, int B, int T, int H, int KV, int hd, const char **why) {
    if (!aligned16(dqkv) || !aligned16(dout) || !aligned16(qkv) || !aligned16(out) || !aligned16(lse))
        return *why = "buffers not 16-byte aligned", 0;
    const Shape p = {B, T, H, KV, hd};
    Entry *e = get_plan(ctx, p, true);
    if (!e->good) return *why = e->why, 0;
    // Workspace: cuDNN's own | Dsum [B,H,T] fp32 | dQ accumulator [B,H,T,hd] fp32.
    const size_t w0 = align256((size_t)e->ws), w1 = align256((size_t)B * H * T * sizeof(float));
    const size_t w2 = (size_t)B * H * T * hd * sizeof(float);
    gpu_ctx_cudnn_workspace(ctx, w0 + w1 + w2);
    char *ws = (char *)ctx->cudnn_workspace;
    // Before 9.6 the engine expected a zeroed dQ accumulator (cudnn-frontend memsets it).
    if (cudnnGetVersion() < 90600) CUDA_CHECK(cudaMemsetAsync(ws + w0 + w1, 0, w2, ctx->stream));
    float scale = (float)(1.0 / sqrt((double)hd)), neginf = neg_inf_value(), one = 1.0f;
    const int64_t uids[14] = {UID_Q,  UID_K,  UID_V,  UID_O,     UID_DO,    UID_STATS, UID_DQ,
                              UID_DK, UID_DV, UID_DSUM, UID_DQACC, UID_SCALE, UID_NEGINF, UID_ONE};
    void *ptrs[14] = {(void *)qkv,
                      (void *)(qkv + (size_t)H * hd),
                      (void *)(qkv + (size_t)(H + KV) * hd),
                      (void *)out,
                      (void *)dout,
                      (void *)lse,
                      dqkv,
                      dqkv + (size_t)H * hd,
                      dqkv + (size_t)(H + KV) * hd,
                      ws + w0,
                      ws + w0 + w1,
                      &scale,
                      &neginf,
                      &one};
    execute(ctx, e, 14, uids, ptrs, ws);
    return 1;
}

#endif  // LLAMA_AO_CUDNN
