#!/usr/bin/env python3
"""torchao's low-bit AdamW (AdamW8bit, AdamW4bit, AdamWFp8), its quantizers and its bf16
stochastic rounding, and torch.optim.AdamW, on the CPU -> test/fixtures/optim/torchao.safetensors,
which test/test_optim.c compares bit-exactly (codes, scales, parameters). Run where torch and
torchao are installed (CPU is enough; torch.compile needs a C++ compiler):

    python3 test/ref/optim_ref.py

The optimizer cases use torchao's own classes, so they run what torchao runs: single_param_adam
under torch.compile (inductor's C++ on the CPU). Case "NAME" (metadata "cases", and "NAME" ->
"fmt=..;n=..;lr=..;..") stores:
  NAME.p0           fp32 [n] initial parameters (bf16 values for param=bf16)
  NAME.g{t}         fp32 [n] gradient of step t = 1..3 (bf16 values for param=bf16)
  NAME.p{t}         fp32 [n] parameters after step t
  NAME.{m,v}{t}.codes / .scale   uint8 codes (4-bit: packed, first element in the high
                    nibble; fp8: e4m3fn bits) and fp32 block scales, for quantized states
  NAME.{m,v}{t}     fp32 [n] states torchao keeps in fp32 (n < 4096 or n % block != 0)
Quantizer cases "qz.*" call torchao's scale_tensor / quantize_*_with_qmap / quantize_fp8 directly
on inputs that sit on map values and on midpoints between them (the tie rule). "sr.*" holds
_fp32_to_bf16_sr's inputs, the random bits torch drew for them (captured) and its bf16 output.
"qmap.{s8,u8,s4,u4}" are torchao's four maps. "torch_adamw.*" is torch.optim.AdamW (fp32).
"""
import os

import torch
from safetensors.torch import save_file

import torchao.optim.quant_utils as qu
from torchao.optim import AdamW4bit, AdamW8bit, AdamWFp8
from torchao.optim.subclass_4bit import OptimState4bit
from torchao.optim.subclass_4bit import get_qmap_signed as s4, get_qmap_unsigned as u4
from torchao.optim.subclass_8bit import OptimState8bit
from torchao.optim.subclass_8bit import get_qmap_signed as s8, get_qmap_unsigned as u8
from torchao.optim.subclass_fp8 import OptimStateFp8, quantize_fp8

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "optim")
torch.manual_seed(0)
tensors, cases, meta = {}, [], {}
CLASSES = {"8bit": AdamW8bit, "4bit": AdamW4bit, "fp8": AdamWFp8}


def state_tensors(prefix, st):
    if isinstance(st, (OptimState8bit, OptimState4bit)):
        tensors[prefix + ".codes"] = st.codes.reshape(-1).clone()
        tensors[prefix + ".scale"] = st.scale.clone()
    elif isinstance(st, OptimStateFp8):
        tensors[prefix + ".codes"] = st.codes.reshape(-1).view(torch.uint8).clone()
        tensors[prefix + ".scale"] = st.scale.clone()
    else:
        tensors[prefix] = st.reshape(-1).float().clone()


def optim_case(name, fmt, shape, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.1, dtype=torch.float32,
               zero_block=0):
    n = 1
    for s in shape:
        n *= s
    p0 = (torch.randn(shape) * 0.1).to(dtype)
    grads = [(torch.randn(shape) * 0.01 * (t + 1)).to(dtype) for t in range(3)]
    if zero_block:  # the first `zero_block` elements stay zero in p, m and v: an all-zero block
        p0.view(-1)[:zero_block] = 0
        for g in grads:
            g.view(-1)[:zero_block] = 0
    p = torch.nn.Parameter(p0.clone())
    opt = CLASSES[fmt]([p], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    cases.append(name)
    meta[name] = "fmt=%s;n=%d;lr=%r;b1=%r;b2=%r;eps=%r;wd=%r;param=%s" % (
        fmt, n, lr, betas[0], betas[1], eps, wd, "bf16" if dtype == torch.bfloat16 else "f32")
    tensors[name + ".p0"] = p0.reshape(-1).float()
    for t, g in enumerate(grads, 1):
        p.grad = g.clone()
        opt.step()
        st = opt.state[p]
        tensors[f"{name}.g{t}"] = g.reshape(-1).float()
        tensors[f"{name}.p{t}"] = p.detach().reshape(-1).float().clone()
        state_tensors(f"{name}.m{t}", st["exp_avg"])
        state_tensors(f"{name}.v{t}", st["exp_avg_sq"])


def tie_inputs(qmap, block, signed, seed):
    """Blocks whose absmax is exactly 1 (scale 1): map values, fp32 midpoints between
    neighbours and their fp32 neighbours, then random values (scale != 1)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor(qmap, dtype=torch.float32)
    mids = (q[:-1] + q[1:]) / 2  # fp32 midpoints, as torchao's (val_up - val_down) * 0.5 sees them
    special = torch.cat([q, mids, torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-2.0))])
    if not signed:
        special = special[special >= 0]
    nb = (special.numel() + block - 2) // (block - 1)
    x = torch.zeros(nb, block)
    flat = torch.cat([special, torch.zeros(nb * (block - 1) - special.numel())]).view(nb, block - 1)
    x[:, 1:] = flat
    x[:, 0] = 1.0  # absmax 1 -> scale 1, the special values are quantized as they are
    rnd = torch.randn(4, block, generator=g) * 0.3
    if not signed:
        rnd = rnd.abs()
    rnd[1] = 0  # an all-zero block: scale clipped to 1e-12
    rnd[2] *= 1e-30  # tiny values: scale near the clip
    return torch.cat([x, rnd]).reshape(-1)


def quantizer_cases():
    for nm, qmap, block, signed, fn in (("s8", s8(), 256, True, qu.quantize_8bit_with_qmap),
                                        ("u8", u8(), 256, False, qu.quantize_8bit_with_qmap),
                                        ("s4", s4(), 128, True, qu.quantize_4bit_with_qmap),
                                        ("u4", u4(), 128, False, qu.quantize_4bit_with_qmap)):
        x = tie_inputs(qmap, block, signed, 100 + len(tensors))
        q = torch.tensor(qmap, dtype=torch.float32)
        scaled, scale = qu.scale_tensor(x, block)
        codes = fn(scaled, q)
        tensors[f"qz.{nm}.x"] = x
        tensors[f"qz.{nm}.codes"] = codes  # one code per element (unpacked)
        tensors[f"qz.{nm}.scale"] = scale
        tensors[f"qz.{nm}.deq"] = qu.dequant_with_qmap(codes, q, scale)
        tensors[f"qmap.{nm}"] = q
    # fp8: values whose scaled image sits on e4m3 midpoints, a zero block and tiny blocks
    x = torch.randn(6, 256) * 0.05
    x[0, 0] = 448.0  # scale 1: the other elements are cast as they are
    e = torch.arange(0, 256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    e = e[torch.isfinite(e)].sort().values.unique()
    mids = (e[:-1] + e[1:]) / 2  # exact in fp32: ties for the round-to-nearest-even cast
    x[0, 1:1 + mids.numel()] = mids
    x[1] = 0
    x[2] *= 1e-35
    x = x.reshape(-1)
    codes, scale = quantize_fp8(x, 256)
    tensors["qz.fp8.x"] = x
    tensors["qz.fp8.codes"] = codes.view(torch.uint8)
    tensors["qz.fp8.scale"] = scale
    tensors["qz.fp8.deq"] = (codes.float().view(-1, 256) * scale.view(-1, 1)).reshape(-1)


def sr_case():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4096, generator=g) * torch.exp2(torch.randint(-30, 30, (4096,), generator=g).float())
    bits = x.view(torch.int32)
    bits[:16] = torch.tensor([0, -2**31, 0x7F800000, -8388608, 0x7F7FFFFF, 0x00000001, 0x0000FFFF, 0x3F80FFFF,
                              0x3F808000, 0x3F800001, -1082130432, -1082097665, 0x7FC00000, 0x3F7FFFFF, 0x00800000,
                              0x7F7F8000], dtype=torch.int32)
    captured = []
    orig = torch.randint

    def spy(*a, **k):
        r = orig(*a, **k)
        captured.append(r.clone())
        return r

    torch.randint = spy
    try:
        out = qu._fp32_to_bf16_sr(x)
    finally:
        torch.randint = orig
    assert len(captured) == 1
    tensors["sr.x"] = x
    tensors["sr.rand"] = captured[0].to(torch.int32)
    tensors["sr.out"] = out.view(torch.int16).to(torch.int32) & 0xFFFF


def torch_adamw_case(n, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.1):
    name = f"torch_adamw.n{n}"
    p0 = torch.randn(n) * 0.1
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    meta[name] = "n=%d;lr=%r;b1=%r;b2=%r;eps=%r;wd=%r" % (n, lr, betas[0], betas[1], eps, wd)
    tensors[name + ".p0"] = p0
    for t in range(1, 4):
        g = torch.randn(n) * 0.01 * t
        p.grad = g.clone()
        opt.step()
        tensors[f"{name}.g{t}"] = g
        tensors[f"{name}.p{t}"] = p.detach().clone()
        tensors[f"{name}.m{t}"] = opt.state[p]["exp_avg"].clone()
        tensors[f"{name}.v{t}"] = opt.state[p]["exp_avg_sq"].clone()
    return name


def save(path, ts, md):
    save_file({k: v.contiguous() for k, v in ts.items()}, path, metadata=md)


if __name__ == "__main__":
    for fmt in ("8bit", "4bit", "fp8"):
        optim_case(f"{fmt}_q", fmt, (36, 128), zero_block=256)  # quantized, block 0 all zero
        optim_case(f"{fmt}_odd", fmt, (33, 128))  # 4224: 4-bit quantizes it, 8-bit/fp8 keep fp32
        optim_case(f"{fmt}_small", fmt, (40, 25))  # 1000 < 4096: fp32 states
    optim_case("8bit_h2", "8bit", (18, 256), lr=3e-3, betas=(0.3, 0.95), eps=1e-6, wd=0.0)  # lerp weight >= 0.5
    optim_case("4bit_h2", "4bit", (18, 256), lr=3e-3, betas=(0.3, 0.95), eps=1e-6, wd=0.0)
    optim_case("8bit_bf16", "8bit", (18, 256), dtype=torch.bfloat16)  # bf16 params, round to nearest
    optim_case("fp8_bf16", "fp8", (40, 25), dtype=torch.bfloat16)
    quantizer_cases()
    sr_case()
    # hyperparameters exact in fp32 (the offload step takes fp32 ones, torch Python floats)
    ta = [torch_adamw_case(1000, lr=2**-7, betas=(0.875, 1 - 2**-10), eps=2**-27, wd=0.0625),
          torch_adamw_case(4099, lr=2**-9, betas=(0.75, 0.9375), eps=2**-20, wd=2**-7)]
    os.makedirs(OUT, exist_ok=True)
    md = {"cases": ",".join(cases), "torch_adamw": ",".join(ta), "torch": torch.__version__}
    md.update(meta)
    import torchao
    md["torchao"] = torchao.__version__
    save(os.path.join(OUT, "torchao.safetensors"), tensors, md)
    print("wrote", len(cases), "optimizer cases,", len(tensors), "tensors to", OUT)
