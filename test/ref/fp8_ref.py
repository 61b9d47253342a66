#!/usr/bin/env python3
"""torchao's own fp8 / MX casts on CPU -> test/fixtures/fp8/torchao.safetensors, which
test/test_fp8.c compares bit for bit (fp8 bytes, fp32 scales, e8m0 bytes) with quant/fp8.c and
quant/mx.c. Run where torch + torchao are installed (no GPU needed):

    python3 test/ref/fp8_ref.py

Everything goes through the lowest-level torchao function each recipe calls, with the arguments
the recipe passes (torchao/float8/float8_linear.py, prototype/blockwise_fp8_training/linear.py,
prototype/moe_training/mxfp8_linear.py), so the fixture follows the installed torchao.

Tensors (inputs are bf16 values stored as F32, except the *.f32 cases which are true fp32):
  cast.e4m3 / cast.e5m2   U8   to_fp8_saturated of the probe grid (see probe_grid(); C builds
                               the same grid)
  lin.x [N,K]  lin.w [M,K]  lin.g [N,M]   inputs of every recipe R (tensorwise, rowwise,
                                          rowwise_with_gw_hp)
  R.OP.data  U8   in OUR layout: direct operands (x_fwd, w_fwd, g_gi) are rows of x / W / g;
                  transposed operands (w_gi, g_gw, x_gw) are W^T [K,M], g^T [M,N], x^T [K,N].
  R.OP.scale F32  torchao's _scale (the multiplier: fp8 = x * scale), flattened: 1 value for a
                  tensor scale, else one per row of OUR layout.
  tw_inf.*, pow2.*        extra cases (an inf input; fp32 rows whose scale sits just below 2^k)
  blk.lhs.x [37,384] -> .data U8, .sinv F32 [37,3]   torch_blockwise_scale_act_quant_lhs (1x128)
  blk.rhs.x [256,128] -> .data U8 (x^T layout [128,256]), .sinv F32 [2,128]   ..._act_quant_rhs
  blk.w.x [256,256] -> .data U8, .sinv F32 [2,2]   torch_blockwise_scale_weight_quant (128x128)
  mx.x [37,96] -> mx.DT.MODE.e8m0 U8 [37,3], .data U8, .dq F32   to_mx / to_dtype(fp32), DT in
                  (e4m3, e5m2), MODE in (floor, rceil); mx.f32.x (fp32 rows, amax/448 just above
                  2^k) -> mx.f32.e8m0, mx.f32.data (RCEIL, e4m3)
"""
import os

import numpy as np
import torch
from safetensors.torch import save_file
from torchao.float8.config import Float8LinearConfig, ScalingGranularity, ScalingType
from torchao.float8.float8_scaling_utils import get_maybe_axiswise_dim, hp_tensor_to_float8_dynamic
from torchao.float8.float8_training_tensor import GemmInputRole, LinearMMConfig
from torchao.float8.float8_utils import to_fp8_saturated
from torchao.prototype.blockwise_fp8_training.kernels import (
    torch_blockwise_scale_act_quant_lhs, torch_blockwise_scale_act_quant_rhs, torch_blockwise_scale_weight_quant)
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "fp8")
torch.manual_seed(0)
T = {}
E4, E5 = torch.float8_e4m3fn, torch.float8_e5m2


def bf16(t):
    return t.to(torch.bfloat16).to(torch.float32)


def u8(t):
    return t.contiguous().view(torch.uint8)


def probe_grid(hi_max):
    """fp32 bit patterns (hi << 16) | lo for hi in [0, hi_max], lo in (0, 1, 0x8000, 0xFFFF):
    every bf16 value up to hi_max, exact fp8 ties (low bits 0) and their neighbours."""
    hi = np.arange(hi_max + 1, dtype=np.uint32)[:, None] << 16
    lo = np.array([0, 1, 0x8000, 0xFFFF], dtype=np.uint32)[None, :]
    return torch.from_numpy((hi | lo).reshape(-1).view(np.float32).copy())


def cast_tables():
    # Past the max (448 = 0x43E0...., 57344 = 0x4760....) by a margin, so the clamp is covered.
    T["cast.e4m3"] = u8(to_fp8_saturated(probe_grid(0x4400), E4))
    T["cast.e5m2"] = u8(to_fp8_saturated(probe_grid(0x4780), E5))


def special_inputs(N, K, M):
    x = bf16(torch.randn(N, K))
    w = bf16(torch.randn(M, K) * 0.05)
    g = bf16(torch.randn(N, M) * 1e-3)
    x[3].zero_()  # all-zero row: amax clamped to EPS
    x[:, 5] = 0.0  # all-zero column (the per-column scales of x_gw)
    x[1, 7] = 30000.0  # beyond the fp8 max before scaling
    x[2] *= 1000.0
    x[4] = bf16(torch.randn(K) * 1e-30)  # amax below EPS
    x[4, 0] = 1e-39  # a bf16 subnormal
    # A row with amax exactly 448 (scale 1, power of two) holding e4m3 ties: 1 + 1/16 (-> 1),
    # 1.1875 (-> 1.25), 3*2^-10 and 5*2^-10 (subnormal ties -> 2^-8), 2^-10 (-> 0).
    x[6].zero_()
    x[6, :6] = torch.tensor([448.0, 1.0625, 1.1875, 3 * 2.0 ** -10, 5 * 2.0 ** -10, 2.0 ** -10])
    x[6, 6:12] = -x[6, :6]
    x[7, :] = bf16(torch.randn(K) * 100) * torch.tensor(2.0) ** -20  # tiny values: e4m3 subnormals
    w[0].zero_()
    w[:, 3] = 0.0
    w[2, 1] = 500.0
    g[0].zero_()
    g[:, 2] = 0.0
    g[5, 4] = 1e5  # e5m2 range
    return bf16(x), bf16(w), bf16(g)  # the edits above must stay bf16 values


# The six casts of a Float8Linear, with the tensor, axiswise_dim and cast config that
# matmul_with_hp_or_float8_args uses for each, and how OUR layout relates to torchao's data.
def recipe_casts(c):
    return [  # (operand, which tensor, cast config, axiswise dim, role, ours = torchao data transposed?)
        ("x_fwd", "x", c.cast_config_input, -1, GemmInputRole.INPUT, False),
        ("w_fwd", "wt", c.cast_config_weight, 0, GemmInputRole.WEIGHT, True),
        ("g_gi", "g", c.cast_config_grad_output, -1, GemmInputRole.GRAD_OUTPUT, False),
        ("w_gi", "wt", c.cast_config_weight_for_grad_input, -1, GemmInputRole.WEIGHT, False),
        ("g_gw", "g", c.cast_config_grad_output_for_grad_weight, 0, GemmInputRole.GRAD_OUTPUT, True),
        ("x_gw", "x", c.cast_config_input_for_grad_weight, 0, GemmInputRole.INPUT, True),
    ]


def recipe_case(name, recipe, x, w, g):
    c = Float8LinearConfig.from_recipe_name(recipe)
    src = {"x": x.to(torch.bfloat16), "wt": w.to(torch.bfloat16).t(), "g": g.to(torch.bfloat16)}
    for op, which, cc, dim, role, transposed in recipe_casts(c):
        if cc.scaling_type is ScalingType.DISABLED:
            continue  # bf16 GEMM operand: nothing to cast
        f8 = hp_tensor_to_float8_dynamic(
            src[which], cc.target_dtype, LinearMMConfig(), gemm_input_role=role,
            scaling_granularity=cc.scaling_granularity,
            axiswise_dim=get_maybe_axiswise_dim(dim, cc.scaling_granularity),
            round_scales_to_power_of_2=c.round_scales_to_power_of_2)
        data = f8._data.t() if transposed else f8._data
        T[f"{name}.{op}.data"] = u8(data)
        T[f"{name}.{op}.scale"] = f8._scale.to(torch.float32).reshape(-1).contiguous()


def extra_cases():
    # An inf in the tensor: torchao's scale becomes 448 / inf = 0, finite elements 0, the inf NaN.
    x = bf16(torch.randn(5, 16))
    x[2, 3] = float("inf")
    x[1, 1] = -3.0
    f8 = hp_tensor_to_float8_dynamic(x.to(torch.bfloat16), E4, LinearMMConfig())
    T["tw_inf.x"], T["tw_inf.data"], T["tw_inf.scale"] = x, u8(f8._data), f8._scale.reshape(-1)
    # fp32 rows whose fp32 scale 448/amax lies a few ulps below 2^k: torch.log2 rounds up to
    # k for some of them, so round_scales_to_power_of_2 gives 2^k, not 2^(k-1).
    rows = []
    for k in range(-6, 24, 3):
        for m in range(0, 5):
            s = np.float32(2.0 ** k) - np.float32(m) * np.spacing(np.float32(2.0 ** k) / 2)
            amax = np.float32(448.0 / float(s))
            rows.append([amax, -amax * 0.5, amax * 0.3, 1.0e-3])
    x = torch.tensor(np.array(rows, dtype=np.float32))
    f8 = hp_tensor_to_float8_dynamic(x, E4, LinearMMConfig(), scaling_granularity=ScalingGranularity.AXISWISE,
                                     axiswise_dim=-1, round_scales_to_power_of_2=True)
    T["pow2.x"], T["pow2.data"], T["pow2.scale"] = x, u8(f8._data), f8._scale.reshape(-1)


def blockwise_cases():
    x = bf16(torch.randn(37, 384))
    x[0, 128:256] = 0.0  # zero block
    x[1, :128] = bf16(torch.randn(128) * 1e-30)  # amax below EPS
    x[2, 256:] *= 1e4
    x[3, :6] = torch.tensor([448.0, 1.0625, 1.1875, 3 * 2.0 ** -10, 5 * 2.0 ** -10, 2.0 ** -10])
    x[3, 6:128] = 0.0
    x = bf16(x)
    q, sinv = torch_blockwise_scale_act_quant_lhs(x.to(torch.bfloat16).contiguous(), 128)
    T["blk.lhs.x"], T["blk.lhs.data"], T["blk.lhs.sinv"] = x, u8(q), sinv.contiguous()
    # The grad_weight RHS: blocks of 128 down each column of x, written column-major (= x^T).
    x = bf16(torch.randn(256, 128))
    x[128:, 5] = 0.0
    x[:128, 9] *= 1e-3
    x = bf16(x)
    q, sinv = torch_blockwise_scale_act_quant_rhs(x.to(torch.bfloat16).contiguous(), 128)
    T["blk.rhs.x"], T["blk.rhs.data"], T["blk.rhs.sinv"] = x, u8(q.t()), sinv.contiguous()
    x = bf16(torch.randn(256, 256) * 0.02)
    x[128:, 128:] = 0.0
    x[5, 200] = 7.0
    q, sinv = torch_blockwise_scale_weight_quant(x.to(torch.bfloat16).contiguous(), 128)
    T["blk.w.x"], T["blk.w.data"], T["blk.w.sinv"] = x, u8(q), sinv.contiguous()


def mx_inputs():
    x = bf16(torch.randn(37, 96))
    x[0, 32:64] = 0.0  # zero block
    x[1, :32] = bf16(torch.randn(32) * 1e-37)  # tiny: e8m0 clamps at 0 / rcp 1.0 in RCEIL
    x[2, 64:] *= 1e30
    x[3, 5] = float("nan")  # NaN block -> e8m0 255
    x[4, 40] = float("inf")  # inf block: FLOOR 247, RCEIL 254
    x[5, :32] = torch.tensor([2.0 ** k for k in range(-20, 12)])  # powers of two: exact scales
    x[6, :8] = torch.tensor([256.0, 1.0625, 1.1875, 3 * 2.0 ** -10, 5 * 2.0 ** -10, 2.0 ** -10, 1.75, 0.0])
    x[6, 8:32] = 0.0
    x[7, :32] = torch.linspace(-1.0, 1.0, 32) * 3.0e38  # near the bf16 max
    x[8, :32] = bf16(torch.randn(32) * 1e-39)  # bf16 subnormals
    return bf16(x)


def mx_cases():
    x = mx_inputs()
    for dt, dname in ((E4, "e4m3"), (E5, "e5m2")):
        for mode in (ScaleCalculationMode.FLOOR, ScaleCalculationMode.RCEIL):
            n = f"mx.{dname}.{mode.value}"
            e, q = to_mx(x.to(torch.bfloat16), dt, 32, mode)
            dq = to_dtype(q, e, dt, 32, torch.float32)
            T[n + ".e8m0"], T[n + ".data"], T[n + ".dq"] = u8(e), u8(q), dq.contiguous()
    T["mx.x"] = x
    # fp32 blocks whose amax / 448 lies a few ulps above 2^k: torch.log2 rounds to k for some,
    # so RCEIL's ceil gives k where cvt.rp.ue8m0 would give k + 1 (the eager fallback's rule).
    rows = []
    for k in range(-20, 30, 5):
        for m in range(1, 5):
            f32 = np.float32
            amax = f32(f32(448.0) * f32(2.0 ** k) * (f32(1) + f32(m) * f32(2.0 ** -23)))
            rows.append([amax] + [amax * np.float32(j / 40.0) for j in range(31)])
    xf = torch.tensor(np.array(rows, dtype=np.float32))
    e, q = to_mx(xf, E4, 32, ScaleCalculationMode.RCEIL)
    T["mx.f32.x"], T["mx.f32.e8m0"], T["mx.f32.data"] = xf, u8(e), u8(q)


def save(path, ts, meta):
    save_file({k: v.contiguous() for k, v in ts.items()}, path, metadata=meta)


if __name__ == "__main__":
    import torchao
    cast_tables()
    x, w, g = special_inputs(37, 200, 72)
    recipes = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
    T["lin.x"], T["lin.w"], T["lin.g"] = x, w, g
    for r in recipes:
        recipe_case(r, r, x, w, g)
    extra_cases()
    blockwise_cases()
    mx_cases()
    os.makedirs(OUT, exist_ok=True)
    meta = {"recipes": ",".join(recipes), "torch": torch.__version__, "torchao": torchao.__version__}
    save(os.path.join(OUT, "torchao.safetensors"), T, meta)
    print("wrote", len(T), "tensors to", OUT)
