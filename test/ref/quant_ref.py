#!/usr/bin/env python3
"""torchao's own quantization of random weights -> test/fixtures/quant/torchao.safetensors, which
test/test_quant.c compares bit-exactly (integers, scales, zero points) and within fp32 rounding
(layer outputs). Run where torch + torchao are installed (the GPU machine, torchao wheel carried):

    python3 test/ref/quant_ref.py

Each case "MODE_gG_MxK" stores:
  .w      fp32 [M,K] weights (bf16-representable, so fp32 and bf16 models quantize the same)
  .x      fp32 [N,K] activations (bf16-representable)
  .qdata  int32 [M,K] torchao's integers (int4: 0..15 tinygemm codes; 8da4w: -8..7; int8; fp8: e4m3 bits)
  .scale  fp32 (bf16 values for int4), .zero (int4) as torchao computes them
Cases "int4hqq_gG_MxK" are int4 with int4_choose_qparams_algorithm="hqq" (the same tinygemm
convention for codes, scale and zero), run on CPU torch: quant.c follows the order of torch's
CPU fp32 sum kernel (8-lane vectors, the AVX2 kernel torch uses on AVX2 and AVX-512 CPUs).
  .y      fp32 [N,M] = torchao's dequantized linear in fp32 (F.linear of dequantize_affine outputs)
Formulas come from torchao.quantization.quant_primitives, called directly with the arguments
the configs use (quant_api.py), so the fixture follows whatever torchao version is installed.
"""
import os

import torch
from safetensors.torch import save_file
import torch.nn.functional as F
from torchao.quantization.quant_primitives import (
    MappingType, choose_qparams_affine, quantize_affine, dequantize_affine, _choose_qparams_affine_tinygemm,
    _quantize_affine_tinygemm, _dequantize_affine_tinygemm, _choose_qparams_and_quantize_affine_hqq)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "quant")
torch.manual_seed(0)
tensors, cases = {}, []


def bf16_exact(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).to(torch.bfloat16).to(torch.float32)


def add(name, w, x, q, scale, zero, y):
    cases.append(name)
    tensors[name + ".w"] = w
    tensors[name + ".x"] = x
    tensors[name + ".qdata"] = q.to(torch.int32)
    tensors[name + ".scale"] = scale.to(torch.float32).reshape(w.shape[0], -1).squeeze(-1) if scale.numel() == w.shape[0] \
        else scale.to(torch.float32).reshape(w.shape[0], -1)
    if zero is not None:
        tensors[name + ".zero"] = zero.to(torch.float32).reshape(w.shape[0], -1)
    tensors[name + ".y"] = y.to(torch.float32)


def int8_case(M, K, N):
    w, x = bf16_exact(M, K, scale=0.05), bf16_exact(N, K)
    w[0].zero_()  # all-zero row: eps clamp
    bs = (1, K)
    s, z = choose_qparams_affine(w, MappingType.SYMMETRIC, bs, torch.int8, eps=torch.finfo(torch.float32).eps,
                                 zero_point_dtype=torch.int64)
    q = quantize_affine(w, bs, s, z, torch.int8)
    y = F.linear(x, dequantize_affine(q, bs, s, z, torch.int8))
    add(f"int8_g0_{M}x{K}", w, x, q, s, None, y)


def int4_case(M, K, N, G):
    w, x = bf16_exact(M, K, scale=0.05), bf16_exact(N, K)
    w[0, :G].zero_()
    wb = w.to(torch.bfloat16)  # tinygemm needs bf16 weights
    bs = (1, G)
    # As Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d") calls them (torchao
    # int4_tile_packed_to_4d_tensor.py): tinygemm qparams in the weight's dtype, default eps.
    s, z = _choose_qparams_affine_tinygemm(wb, MappingType.ASYMMETRIC, bs, torch.int32, quant_min=0, quant_max=15,
                                           scale_dtype=torch.bfloat16, zero_point_dtype=torch.bfloat16)
    q = _quantize_affine_tinygemm(wb, bs, s, z, torch.int32, 0, 15)
    dq = _dequantize_affine_tinygemm(q, bs, s, z, torch.int32, 0, 15, output_dtype=torch.float32)
    add(f"int4_g{G}_{M}x{K}", w, x, q, s, z, F.linear(x, dq))


def int4_hqq_case(M, K, N, G):
    # Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d", int4_choose_qparams_algorithm="hqq"):
    # int4_tile_packed_to_4d_tensor.py pads the bf16 weight to in_features % 1024 == 0 and
    # out_features % 8 == 0 with zeros, then calls the HQQ quantizer with these arguments. The
    # padding matters only through the optimizer's global early-stopping error (a mean over the
    # padded tensor); the rows/columns we keep are sliced back out.
    w, x = bf16_exact(M, K, scale=0.05), bf16_exact(N, K)
    w[0, :G].zero_()  # all-zero group: scale clamps to 2e4
    w[1, G:2 * G] = 0.01  # constant group (max == min)
    wb = w.to(torch.bfloat16)
    Kp, Mp = (K + 1023) // 1024 * 1024, (M + 7) // 8 * 8
    wp = F.pad(wb, (0, Kp - K, 0, Mp - M))
    q, s, z, _ = _choose_qparams_and_quantize_affine_hqq(wp, nbits=4, group_size=G, axis=1,
                                                         compute_dtype=wp.dtype, device=wp.device,
                                                         verbose=False, raw_output=False)
    q = q.to(torch.int32)[:M, :K]
    s = s.reshape(Mp, Kp // G)[:M, :K // G]
    z = z.reshape(Mp, Kp // G)[:M, :K // G]
    bs = (1, G)
    dq = _dequantize_affine_tinygemm(q, bs, s, z, torch.int32, 0, 15, output_dtype=torch.float32)
    add(f"int4hqq_g{G}_{M}x{K}", w, x, q, s, z, F.linear(x, dq))


def a8w4_case(M, K, N, G):
    w, x = bf16_exact(M, K, scale=0.05), bf16_exact(N, K)
    w[0, :G].zero_()
    bs = (1, G)
    eps = torch.finfo(torch.float32).eps
    s, z = choose_qparams_affine(w, MappingType.SYMMETRIC, bs, torch.int8, -8, 7, eps=eps, zero_point_dtype=torch.int64)
    q = quantize_affine(w, bs, s, z, torch.int8, -8, 7)
    dw = dequantize_affine(q, bs, s, z, torch.int8, -8, 7)
    # activations: torchao _int8_asymm_per_token_quant
    xb = (1, K)
    xs, xz = choose_qparams_affine(x, MappingType.ASYMMETRIC, xb, torch.int8, eps=eps, scale_dtype=torch.float32,
                                   zero_point_dtype=torch.int8)
    xq = quantize_affine(x, xb, xs, xz, torch.int8)
    dx = dequantize_affine(xq, xb, xs, xz, torch.int8)
    add(f"8da4w_g{G}_{M}x{K}", w, x, q, s, None, F.linear(dx, dw))


def fp8_case(M, K, N):
    from torchao.quantization.quant_primitives import _choose_scale_float8, _quantize_affine_float8
    w, x = bf16_exact(M, K, scale=0.05), bf16_exact(N, K)
    wb = w.to(torch.bfloat16)
    s = _choose_scale_float8(wb, block_size=[1, K], float8_dtype=torch.float8_e4m3fn)
    q = _quantize_affine_float8(wb, s, torch.float8_e4m3fn)
    xs = _choose_scale_float8(x, block_size=[1, K], float8_dtype=torch.float8_e4m3fn)
    xq = _quantize_affine_float8(x, xs, torch.float8_e4m3fn)
    y = F.linear(xq.float() * xs.reshape(N, 1), q.float() * s.reshape(M, 1))
    add(f"fp8_g0_{M}x{K}", w, x, q.view(torch.uint8), s, None, y)


def save(path, ts, meta):
    save_file({k: v.contiguous() for k, v in ts.items()}, path, metadata=meta)


if __name__ == "__main__":
    int8_case(48, 128, 5)
    int8_case(33, 61, 3)
    for G in (32, 64, 128, 256):
        int4_case(24, 512, 4, G)
        a8w4_case(24, 512, 4, G)
    fp8_case(32, 256, 4)
    for G in (32, 64, 128):
        int4_hqq_case(24, 512, 4, G)
        int4_hqq_case(20, 1024, 3, G)
    os.makedirs(OUT, exist_ok=True)
    save(os.path.join(OUT, "torchao.safetensors"), tensors, {"cases": ",".join(cases)})
    print("wrote", len(cases), "cases to", OUT)
