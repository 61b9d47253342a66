#!/usr/bin/env python3
"""PyTorch baseline for infer_llama's GPU decode (issue 6): the strongest plain-PyTorch decode we
know, gpt-fast style, at a Llama shape with random weights (speed only).

  * Llama: GQA, RoPE (llama3 scaling when the config has it), RMSNorm, SwiGLU, tied or untied
    lm_head; q/k/v biases when the config has attention_bias (Qwen2). Random weights N(0, 0.02)
    in bf16 from a fixed seed; norm weights 1.
  * static KV cache [B, KV, prompt+new, head_dim] in bf16; the prompt is prefilled once (eager),
    then one token per step for all B sequences with greedy argmax. Attention covers the whole
    cache under a causal mask (static shapes, as gpt-fast), with the query heads of a KV group
    folded into the query-length dimension (no repeat_interleave of the cache).
  * the decode step is torch.compile(mode="reduce-overhead", fullgraph=True): Inductor + CUDA
    graphs, with Inductor's coordinate-descent tuning on (gpt-fast / torchao's generate.py set it:
    it is what turns batch-1 bf16 mm into a tuned GEMV reduction).
  * bf16: plain bf16 linears. int4: every linear (q,k,v,o,gate,up,down, lm_head) quantized as
    torchao's Int4WeightOnlyConfig does on CUDA — uint4 per group of G along K, asymmetric, bf16
    scale and zero in the float domain (w ~ (q - 8) * s + z), computed op by op in bf16 as
    torchao does (quant/quant.h has the formulas) — packed by aten._convert_weight_to_int4pack
    (inner_k_tiles 8) and run by aten._weight_int4pack_mm (tinygemm). Like torchao, a linear
    whose K is not a multiple of G stays bf16, and weights are zero-padded to K % 1024 == 0 and
    N % 8 == 0 (--int4-pad torchao, the default; --int4-pad min pads K only to what the kernel
    needs, a multiple of lcm(G, 16 * inner_k_tiles)). The embedding table stays bf16; with tied
    embeddings the int4 lm_head is a quantized copy of it.
  * q/k/v and gate/up are fused into one linear each (gpt-fast fuses q/k/v; quantization is per
    output row, so fusing changes no number); --no-fuse keeps them separate.

One line per (mode, batch):
  RESULT torch mode=int4 g=64 batch=1 tok_s=.. ms_per_step=.. weight_bytes=.. eff_bw_TBs=..
         peak_mem_GiB=.. compile_s=.. [more key=value fields]
tok_s = batch x timed steps / seconds (decode steps only; prefill and warm-up excluded; the fastest
of --repeat runs, all of them in runs_ms_per_step);
weight_bytes = bytes of linear, bias and norm weights read per decode step (int4: packed codes +
bf16 scales/zeros, padding included; the embedding table only where it is the lm_head);
eff_bw_TBs = weight_bytes x steps/s / 1e12; peak_mem_GiB = torch.cuda.max_memory_allocated()
from just after the weights are built (KV cache, activations and CUDA-graph pools included);
compile_s = wall time of the warm-up steps (Dynamo + Inductor compile, CUDA-graph recording).
A (mode, batch) that cannot run prints "SKIP torch mode=.. batch=.. reason=.." instead; the exit
status is then 2.

Usage:
  python3 dev/bench/infer_torch.py --shape llama31_8b --mode bf16,int4 --group 64 \\
      --batch-sizes 1,4,16 --prompt 128 --new 128
  python3 dev/bench/infer_torch.py --config path/config.json --mode int4 --batch 1
  python3 dev/bench/infer_torch.py --shape tiny --device cpu --check      # logic check on CPU
Built-in shapes: llama31_8b, smollm2_135m, tiny. --layers N overrides the layer count.
"""
import argparse
import gc
import json
import math
import os
import sys
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {
    "llama31_8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=False,
                       rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=8192)),
    "smollm2_135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    # small enough for the CPU; K = 192 exercises the int4 padding, llama3 rope the scaling code
    "tiny": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=2, num_attention_heads=6,
                 num_key_value_heads=2, head_dim=32, vocab_size=1000, rope_theta=10000.0, rms_norm_eps=1e-5,
                 tie_word_embeddings=True,
                 rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                   original_max_position_embeddings=64)),
}

INT4_OPS_CUDA = ("_convert_weight_to_int4pack", "_weight_int4pack_mm")
INT4_OPS_CPU = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")


class Skip(Exception):
    """A (mode, batch) that cannot run here, with a one-line reason."""


# ---- config ----------------------------------------------------------------------------------
def read_config(args):
    if args.config:
        with open(args.config) as f:
            c = json.load(f)
        name = args.config
    else:
        if args.shape not in SHAPES:
            sys.exit(f"infer_torch: unknown --shape {args.shape} (have: {', '.join(SHAPES)})")
        c, name = dict(SHAPES[args.shape]), args.shape
    D, H = c["hidden_size"], c["num_attention_heads"]
    rp = c.get("rope_parameters") or {}  # transformers 5.x
    scaling = c.get("rope_scaling") or (rp if rp.get("rope_type") not in (None, "default") else None)
    cfg = dict(
        name=name, D=D, F=c["intermediate_size"], L=c["num_hidden_layers"], H=H,
        KV=c.get("num_key_value_heads") or H, hd=c.get("head_dim") or D // H, V=c["vocab_size"],
        theta=float(c.get("rope_theta") or rp.get("rope_theta") or 10000.0),
        eps=float(c.get("rms_norm_eps", 1e-5)), tied=bool(c.get("tie_word_embeddings", False)),
        bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")), scaling=scaling)
    if args.layers:
        cfg["L"] = args.layers
    if cfg["H"] % cfg["KV"]:
        sys.exit("infer_torch: num_attention_heads must be a multiple of num_key_value_heads")
    return cfg


def rope_tables(cfg, S, device):
    hd = cfg["hd"]
    inv = 1.0 / (cfg["theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    sc = cfg["scaling"]
    kind = (sc or {}).get("rope_type", (sc or {}).get("type"))
    if kind == "llama3":
        # Llama 3.1: long wavelengths divided by factor, short ones kept, a linear blend between.
        factor, lo, hi = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        orig = float(sc["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        blend = ((orig / wavelen - lo) / (hi - lo)).clamp(0.0, 1.0)  # 0: long wavelength, 1: short
        inv = torch.where(wavelen > orig / lo, inv / factor,
                          torch.where(wavelen < orig / hi, inv, (1 - blend) * inv / factor + blend * inv))
    elif kind not in (None, "default"):
        print(f"# note: rope scaling {kind!r} not modelled (no effect on speed)", file=sys.stderr)
    ang = torch.outer(torch.arange(S, dtype=torch.float32), inv)
    return ang.cos().to(device), ang.sin().to(device)


# ---- int4 (tinygemm) -------------------------------------------------------------------------
def int4_ops(device):
    """The two aten ops int4 needs on this device, or Skip with the reason."""
    names = INT4_OPS_CUDA if device.type == "cuda" else INT4_OPS_CPU
    ops = []
    for n in names:
        try:
            ops.append(getattr(torch.ops.aten, n))
        except (AttributeError, RuntimeError):
            raise Skip(f"torch {torch.__version__} has no aten::{n} (int4 tinygemm needs it)")
    return ops


def quantize_int4(w, G):
    """torchao's tinygemm int4 of bf16 w [N, K] (K % G == 0), every step rounded to bf16 as torchao
    does it: s = (max - min) / 15 clamped to 2^-126, z = min + 8 s, q = round((w - (z - 8 s)) / s)
    in [0, 15]. Returns q int32 [N, K], s and z bf16 [N, K / G]."""
    N, K = w.shape
    wg = w.to(torch.bfloat16).reshape(N, K // G, G)
    mn, mx = wg.amin(-1), wg.amax(-1)
    s = ((mx - mn) / 15).clamp_min(2.0 ** -126)
    s8 = s * 8
    z = mn + s8
    lo = z - s8
    q = torch.round((wg - lo[..., None]) / s[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(N, K), s, z


def dequantize_int4(q, s, z, G):
    N, K = q.shape
    return ((q.reshape(N, K // G, G).to(torch.bfloat16) - 8) * s[..., None] + z[..., None]).reshape(N, K)


def round_up(x, m):
    return (x + m - 1) // m * m


class Bf16Linear(nn.Module):
    def __init__(self, w, b=None):
        super().__init__()
        self.weight = nn.Parameter(w, requires_grad=False)
        self.bias = None if b is None else nn.Parameter(b, requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def weight_bytes(self):
        return self.weight.nbytes + (self.bias.nbytes if self.bias is not None else 0)


class Int4Linear(nn.Module):
    def __init__(self, w, b, G, ikt, pad):
        super().__init__()
        N, K = w.shape
        self.N, self.K, self.G = N, K, G
        self.Kp = round_up(K, 1024) if pad == "torchao" else round_up(K, math.lcm(G, 16 * ikt))
        self.on_cpu = w.device.type == "cpu"
        self.Np = round_up(N, 16 if self.on_cpu else 8)  # torch's CPU packing wants N % 16 == 0
        pack, _ = int4_ops(w.device)
        wp = F.pad(w, (0, self.Kp - K, 0, self.Np - N)) if (self.Kp, self.Np) != (K, N) else w
        q, s, z = quantize_int4(wp, G)
        if self.on_cpu:  # CPU: int32 [N, K] in, uint8 [N, K/2] out
            packed = pack(q.contiguous(), ikt)
        else:  # CUDA (torch >= 2.5): uint8 [N, K/2], even k in the high nibble -> int32 4-D tiles
            packed = pack(((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous(), ikt)
        self.register_buffer("packed", packed)
        # [K/G, N, 2]: [..., 0] scale, [..., 1] zero
        self.register_buffer("sz", torch.stack([s, z], -1).transpose(0, 1).contiguous())
        self.bias = None if b is None else nn.Parameter(b, requires_grad=False)

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.K)
        if self.Kp != self.K:
            x2 = F.pad(x2, (0, self.Kp - self.K))
        x2 = x2.contiguous()
        if self.on_cpu:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.G, self.sz)
        else:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.G, self.sz)
        if self.Np != self.N:
            y = y[:, :self.N]
        y = y.reshape(*lead, self.N)
        return y if self.bias is None else y + self.bias

    def weight_bytes(self):
        return self.packed.nbytes + self.sz.nbytes + (self.bias.nbytes if self.bias is not None else 0)


# ---- model -----------------------------------------------------------------------------------
def rmsnorm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):  # x [B, T, n, hd] (rotate-half convention, as HF); cos/sin [T, hd/2] fp32
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg, lin, fuse):
        super().__init__()
        D, H, KV, hd = cfg["D"], cfg["H"], cfg["KV"], cfg["hd"]
        self.H, self.KV, self.hd, self.eps, self.fuse = H, KV, hd, cfg["eps"], fuse
        self.ln1 = nn.Parameter(torch.ones(D, dtype=torch.bfloat16, device=lin.device), requires_grad=False)
        self.ln2 = nn.Parameter(torch.ones(D, dtype=torch.bfloat16, device=lin.device), requires_grad=False)
        qkv = [H * hd, KV * hd, KV * hd]
        if fuse:
            self.wqkv = lin((sum(qkv), D), bias=cfg["bias"])
            self.w13 = lin((2 * cfg["F"], D))
        else:
            self.wq, self.wk, self.wv = (lin((n, D), bias=cfg["bias"]) for n in qkv)
            self.w1, self.w3 = lin((cfg["F"], D)), lin((cfg["F"], D))
        self.wo = lin((D, H * hd))
        self.w2 = lin((D, cfg["F"]))
        self.k_cache = self.v_cache = None

    def forward(self, x, pos, cos, sin, mask):
        B, T, _ = x.shape
        H, KV, hd = self.H, self.KV, self.hd
        h = rmsnorm(x, self.ln1, self.eps)
        if self.fuse:
            q, k, v = self.wqkv(h).split([H * hd, KV * hd, KV * hd], dim=-1)
        else:
            q, k, v = self.wq(h), self.wk(h), self.wv(h)
        q = rope(q.view(B, T, H, hd), cos, sin)
        k = rope(k.view(B, T, KV, hd), cos, sin)
        v = v.view(B, T, KV, hd)
        self.k_cache.index_copy_(2, pos, k.transpose(1, 2))
        self.v_cache.index_copy_(2, pos, v.transpose(1, 2))
        # GQA without copying the cache: the G = H/KV query heads sharing a KV head (head
        # h = kv * G + g, as HF) become G*T query rows of that KV head.
        G, S = H // KV, mask.shape[-1]
        qg = q.view(B, T, KV, G, hd).permute(0, 2, 3, 1, 4).reshape(B, KV, G * T, hd)
        m = mask.unsqueeze(0).expand(G, T, S).reshape(G * T, S)
        o = F.scaled_dot_product_attention(qg, self.k_cache, self.v_cache, attn_mask=m)
        o = o.view(B, KV, G, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, H * hd)
        x = x + self.wo(o)
        h = rmsnorm(x, self.ln2, self.eps)
        if self.fuse:
            g, u = self.w13(h).chunk(2, dim=-1)
        else:
            g, u = self.w1(h), self.w3(h)
        return x + self.w2(F.silu(g) * u)


class Llama(nn.Module):
    def __init__(self, cfg, mode, G, device, seed, pad, ikt, fuse):
        super().__init__()
        self.cfg = cfg
        counter = [0]
        self.n_int4 = self.n_lin = 0

        def randn(shape):
            counter[0] += 1
            g = torch.Generator(device=device)
            g.manual_seed(seed * 1_000_003 + counter[0])
            return (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 0.02).to(torch.bfloat16)

        def lin(shape, bias=False, w=None):
            w = randn(shape) if w is None else w
            b = randn(shape[:1]) if bias else None
            self.n_lin += 1
            if mode == "bf16" or shape[1] % G:  # torchao leaves K % G != 0 in bf16
                return Bf16Linear(w, b)
            if mode == "deq":  # the int4 numbers as a bf16 linear (--check's reference)
                Kp = round_up(shape[1], 1024) if pad == "torchao" else round_up(shape[1], math.lcm(G, 16 * ikt))
                q, s, z = quantize_int4(F.pad(w, (0, Kp - shape[1])), G)
                return Bf16Linear(dequantize_int4(q, s, z, G)[:, :shape[1]].contiguous(), b)
            self.n_int4 += 1
            return Int4Linear(w, b, G, ikt, pad)

        lin.device = device
        D, V = cfg["D"], cfg["V"]
        self.emb = nn.Parameter(randn((V, D)), requires_grad=False)
        self.layers = nn.ModuleList(Block(cfg, lin, fuse) for _ in range(cfg["L"]))
        self.norm = nn.Parameter(torch.ones(D, dtype=torch.bfloat16, device=device), requires_grad=False)
        if cfg["tied"] and mode == "bf16":
            self.lm_head = None  # F.linear with the embedding table
        else:
            self.lm_head = lin((V, D), w=self.emb.detach() if cfg["tied"] else None)
        self.S = 0

    def setup_cache(self, B, S):
        c, dev = self.cfg, self.emb.device
        for blk in self.layers:
            blk.k_cache = blk.v_cache = None
        gc.collect()
        for blk in self.layers:
            blk.k_cache = torch.zeros(B, c["KV"], S, c["hd"], dtype=torch.bfloat16, device=dev)
            blk.v_cache = torch.zeros(B, c["KV"], S, c["hd"], dtype=torch.bfloat16, device=dev)
        self.cos, self.sin = rope_tables(c, S, dev)
        self.causal = torch.ones(S, S, dtype=torch.bool, device=dev).tril()
        self.S = S
        if dev.type == "cuda":  # fixed addresses for the CUDA graphs (the caches are written in place)
            for t in [self.cos, self.sin, self.causal] + [b.k_cache for b in self.layers] + \
                     [b.v_cache for b in self.layers] + list(self.parameters()) + list(self.buffers()):
                try:  # no guard on the address: hundreds of id guards would cost time every step
                    torch._dynamo.mark_static_address(t, guard=False)
                except TypeError:
                    torch._dynamo.mark_static_address(t)

    def forward(self, idx, pos):
        """idx [B, T] token ids at positions pos [T]; logits [B, 1, V] of the last position."""
        x = F.embedding(idx, self.emb)
        cos, sin, mask = self.cos[pos], self.sin[pos], self.causal[pos]
        for blk in self.layers:
            x = blk(x, pos, cos, sin, mask)
        x = rmsnorm(x[:, -1:], self.norm, self.cfg["eps"])
        return F.linear(x, self.emb) if self.lm_head is None else self.lm_head(x)

    def weight_bytes(self):
        """Bytes read per decode step: every linear, bias and norm weight; the embedding only as lm_head."""
        n = self.norm.nbytes + (self.emb.nbytes if self.lm_head is None else self.lm_head.weight_bytes())
        for blk in self.layers:
            n += blk.ln1.nbytes + blk.ln2.nbytes
            n += sum(m.weight_bytes() for m in blk.children() if hasattr(m, "weight_bytes"))
        return n


def decode_step(model, tok, pos):
    return model(tok, pos)[:, -1].argmax(dim=-1, keepdim=True)


# ---- benchmark -------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def fresh_compile_state():
    torch._dynamo.reset()
    try:
        from torch._inductor import cudagraph_trees
        cudagraph_trees.reset_cudagraph_trees()
    except Exception:
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cudagraph_skips():
    try:
        from torch._dynamo.utils import counters
        return int(counters["inductor"]["cudagraph_skips"])
    except Exception:
        return -1


def run_one(model, args, B, device):
    """Prefill, warm up (compile), then time args.new decode steps; returns the result fields."""
    P, N, W = args.prompt, args.new, args.warmup
    if W > N:
        W = N
    fresh_compile_state()
    model.setup_cache(B, P + N)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator(device="cpu").manual_seed(args.seed + B)
    prompt = torch.randint(0, model.cfg["V"], (B, P), generator=g).to(device)
    step = decode_step
    if args.compile:
        step = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True)
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None) if args.compile else None
    skips0 = cudagraph_skips()

    tok0 = decode_step(model, prompt, torch.arange(P, device=device))  # prefill, eager
    sync(device)
    pos = torch.tensor([P], dtype=torch.long, device=device)
    tok = tok0
    t0 = time.perf_counter()
    for _ in range(W):  # compile + CUDA-graph recording happen here
        if mark:
            mark()
        tok = step(model, tok, pos).clone()
        pos += 1
    sync(device)
    compile_s = time.perf_counter() - t0

    runs = []
    for _ in range(max(1, args.repeat)):  # each run rewrites the same cache slots from the same token
        pos.fill_(P)
        tok, toks = tok0, []
        sync(device)
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
        t0 = time.perf_counter()
        for _ in range(N):
            if mark:
                mark()
            tok = step(model, tok, pos).clone()
            toks.append(tok)
            pos += 1
        if device.type == "cuda":
            e1.record()
            torch.cuda.synchronize()
            runs.append(e0.elapsed_time(e1) / 1e3)
        else:
            runs.append(time.perf_counter() - t0)
    secs = min(runs)
    wb = model.weight_bytes()
    skips = cudagraph_skips() - skips0 if skips0 >= 0 else -1
    out = dict(tok_s=B * N / secs, ms_per_step=secs * 1e3 / N, weight_bytes=wb, eff_bw_TBs=wb * N / secs / 1e12,
               peak_mem_GiB=torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan"),
               compile_s=compile_s, steps=N, cudagraph_skips=skips,
               runs_ms="/".join(f"{r * 1e3 / N:.3f}" for r in runs))
    ids = torch.cat(toks, dim=1)
    out["tokens_head"] = ",".join(str(t) for t in ids[0, :8].tolist())
    return out


def fmt(mode, G, B, r, args):
    g = G if mode == "int4" else 0
    extra = (f" shape={args.shape_name} prompt={args.prompt} steps={r['steps']} runs_ms_per_step={r['runs_ms']}"
             f" compiled={int(args.compile)}")
    if mode == "int4":
        extra += f" pad={args.int4_pad} int4_linears={r['n_int4']}/{r['n_lin']}"
    if args.compile and r["cudagraph_skips"]:
        extra += f" cudagraph_skips={r['cudagraph_skips']}"
    return (f"RESULT torch mode={mode} g={g} batch={B} tok_s={r['tok_s']:.1f} ms_per_step={r['ms_per_step']:.3f} "
            f"weight_bytes={r['weight_bytes']} eff_bw_TBs={r['eff_bw_TBs']:.3f} "
            f"peak_mem_GiB={r['peak_mem_GiB']:.2f} compile_s={r['compile_s']:.1f}{extra} "
            f"tokens={r['tokens_head']}")


def build(cfg, mode, args, device):
    t0 = time.perf_counter()
    with torch.no_grad():
        m = Llama(cfg, mode, args.group, device, args.seed, args.int4_pad, args.inner_k_tiles, args.fuse)
    sync(device)
    print(f"# built {mode} model in {time.perf_counter() - t0:.1f} s: weight_bytes={m.weight_bytes()}"
          + (f" int4 linears {m.n_int4}/{m.n_lin}" if mode != "bf16" else ""), flush=True)
    return m


# ---- --check ---------------------------------------------------------------------------------
def check(cfg, args, device):
    """Quantization formula, the int4 op against the dequantized weights, and the int4 model
    against a bf16 model holding the dequantized weights (teacher-forced, eager; compiled too
    with --compile). Returns the number of failures."""
    fails = 0

    def report(ok, what):
        nonlocal fails
        fails += not ok
        print(f"CHECK {'ok  ' if ok else 'FAIL'} {what}", flush=True)

    G = args.group
    torch.manual_seed(args.seed)
    # 1. formula: codes in range; each weight within s/2 of its dequantized value (plus bf16 rounding)
    w = (torch.randn(96, 4 * G, device=device) * 0.02).to(torch.bfloat16)
    w[0, :G] = 0.125  # a constant group: s clamps to 2^-126, dequantizes exactly
    q, s, z = quantize_int4(w, G)
    d = dequantize_int4(q, s, z, G)
    err = (w.float() - d.float()).abs().reshape(96, -1, G).amax(-1)
    # s/2 from rounding to a code, plus bf16 rounding (relative 2^-8) of w - lo and of its quotient
    # by s (torchao rounds both, so a code can be off by more than half a step), of (q - 8) * s,
    # of + z and of z - 8 s
    bound = s.float() * 0.5 + (38 * s.float() + z.float().abs() + w.float().abs().reshape(96, -1, G).amax(-1)) * 2 ** -8
    report(int(q.min()) >= 0 and int(q.max()) <= 15 and bool((err <= bound).all()) and bool(d[0, :G].eq(0.125).all()),
           f"int4 formula: codes in [0,15], |w - deq| <= s/2 + bf16 rounding (worst {float((err / bound).max()):.3f} of bound)")
    # 2. the op against x @ deq(W)^T
    try:
        int4_ops(device)
        have_op = True
    except Skip as e:
        print(f"CHECK skip int4 op: {e}")
        have_op = False
    if have_op:
        for K, N in [(3 * G, 96), (1024 + G, 36)]:  # K and N that need padding
            w = (torch.randn(N, K, device=device) * 0.02).to(torch.bfloat16)
            for pad in ("torchao", "min"):
                lin = Int4Linear(w, None, G, args.inner_k_tiles, pad)
                x = torch.randn(5, K, device=device).to(torch.bfloat16)
                q, s, z = quantize_int4(F.pad(w, (0, lin.Kp - K)), G)
                ref = x.float() @ dequantize_int4(q, s, z, G)[:, :K].float().T
                y = lin(x).float()
                rel = float((y - ref).abs().max() / ref.abs().max())
                report(rel < 1e-2, f"int4 op ({device.type}) N={N} K={K} pad={pad} (Kp={lin.Kp}): "
                                   f"max|y-ref|/max|ref| = {rel:.2e}")
    # 3. whole model: int4 vs dequantized bf16, teacher-forced decode
    if have_op:
        with torch.no_grad():
            mi = Llama(cfg, "int4", G, device, args.seed, args.int4_pad, args.inner_k_tiles, args.fuse)
            md = Llama(cfg, "deq", G, device, args.seed, args.int4_pad, args.inner_k_tiles, args.fuse)
            B, P, N = 2, 8, 6
            for m in (mi, md):
                m.setup_cache(B, P + N)
            prompt = torch.randint(0, cfg["V"], (B, P), device=device)
            toks = [prompt]
            worst = 0.0
            li, ld = mi(prompt, torch.arange(P, device=device)), md(prompt, torch.arange(P, device=device))
            for i in range(N):
                worst = max(worst, float((li.float() - ld.float()).abs().max() / ld.float().std()))
                nxt = li[:, -1].argmax(-1, keepdim=True)
                toks.append(nxt)
                pos = torch.tensor([P + i], device=device)
                li, ld = mi(nxt, pos), md(nxt, pos)
            worst = max(worst, float((li.float() - ld.float()).abs().max() / ld.float().std()))
            report(worst < 0.1, f"model int4 vs dequantized bf16 ({cfg['L']} layers, {mi.n_int4}/{mi.n_lin} "
                                f"linears int4): max|dlogit| / std = {worst:.3f} over {N} steps")
            if args.compile:
                # compiled decode (the benchmark's path) against eager, same model, same tokens
                fresh_compile_state()
                mi.setup_cache(B, P + N)
                eager = [decode_step(mi, prompt, torch.arange(P, device=device))]
                for i in range(N - 1):
                    eager.append(decode_step(mi, eager[-1], torch.tensor([P + i], device=device)))
                fresh_compile_state()
                mi.setup_cache(B, P + N)
                step = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True)
                skips0 = cudagraph_skips()
                comp = [decode_step(mi, prompt, torch.arange(P, device=device))]
                pos = torch.tensor([P], device=device)
                for i in range(N - 1):
                    torch.compiler.cudagraph_mark_step_begin()
                    comp.append(step(mi, comp[-1], pos).clone())
                    pos += 1
                same = bool(torch.equal(torch.cat(eager, 1), torch.cat(comp, 1)))
                report(same, f"compiled decode tokens == eager tokens ({N} steps, batch {B})"
                       + ("" if same else " (may be a logit tie under different rounding; inspect)"))
                if device.type == "cuda":
                    n = cudagraph_skips() - skips0
                    report(n == 0, f"compiled decode ran as a CUDA graph (cudagraph skips: {n})")
    return fails


# ---- main ------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="HF config.json")
    ap.add_argument("--shape", default="llama31_8b", help=f"built-in shape: {', '.join(SHAPES)}")
    ap.add_argument("--layers", type=int, default=0, help="override num_hidden_layers")
    ap.add_argument("--mode", default="bf16", help="bf16, int4 or a comma list (bf16,int4)")
    ap.add_argument("--group", type=int, default=64, choices=[32, 64, 128, 256])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--batch-sizes", default="", help="comma list; overrides --batch")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128, help="timed decode steps (KV cache = prompt + new)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed decode steps first (compile, graph capture)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of --new steps; the fastest is reported")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--cdt", action=argparse.BooleanOptionalAction, default=True,
                    help="Inductor coordinate-descent tuning (gpt-fast sets it; costs compile time)")
    ap.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True, help="fuse q/k/v and gate/up")
    ap.add_argument("--int4-pad", choices=["torchao", "min"], default="torchao")
    ap.add_argument("--inner-k-tiles", type=int, default=8, choices=[2, 4, 8])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="correctness checks (use a small shape), then exit")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("infer_torch: --device cuda but torch.cuda.is_available() is False")
    cfg = read_config(args)
    args.shape_name = os.path.splitext(os.path.basename(cfg["name"]))[0].replace(" ", "_")
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for m in modes:
        if m not in ("bf16", "int4"):
            sys.exit(f"infer_torch: unknown mode {m}")
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [args.batch]

    ind = torch._inductor.config
    if args.cdt and hasattr(ind, "coordinate_descent_tuning"):
        ind.coordinate_descent_tuning = True
    if hasattr(ind, "fx_graph_cache"):
        ind.fx_graph_cache = True
    if hasattr(ind.triton, "unique_kernel_names"):
        ind.triton.unique_kernel_names = True
    for k in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, k):
            setattr(torch._dynamo.config, k, 64)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# torch {torch.__version__} on {dev_name}; shape {cfg['name']}: D={cfg['D']} F={cfg['F']} L={cfg['L']} "
          f"H={cfg['H']} KV={cfg['KV']} hd={cfg['hd']} V={cfg['V']} tied={int(cfg['tied'])} "
          f"rope={'llama3' if (cfg['scaling'] or {}).get('rope_type') == 'llama3' else 'plain'}", flush=True)
    if "int4" in modes or args.check:
        try:
            for op in int4_ops(device):
                print(f"# {op.default._schema}")
        except Skip as e:
            print(f"# {e}")
    if args.check:
        with torch.no_grad():
            n = check(cfg, args, device)
        print(f"CHECK {'passed' if n == 0 else f'{n} FAILED'}")
        sys.exit(1 if n else 0)

    bad = 0
    for mode in modes:
        model = None
        try:
            if mode == "int4":
                int4_ops(device)
            model = build(cfg, mode, args, device)
        except Exception as e:  # Skip: an op missing; else e.g. the packing op refusing this GPU
            if not isinstance(e, Skip):
                traceback.print_exc(file=sys.stderr)
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            for B in batches:
                print(f"SKIP torch mode={mode} g={args.group if mode == 'int4' else 0} batch={B} reason={msg}",
                      flush=True)
            bad += 1
            model = None
            gc.collect()
            continue
        for B in batches:
            try:
                with torch.no_grad():
                    r = run_one(model, args, B, device)
                r["n_int4"], r["n_lin"] = model.n_int4, model.n_lin
                print(fmt(mode, args.group, B, r, args), flush=True)
            except Exception as e:  # OOM, a kernel refusing the shape, a compile failure: report, go on
                bad += 1
                traceback.print_exc(file=sys.stderr)
                msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                print(f"SKIP torch mode={mode} g={args.group if mode == 'int4' else 0} batch={B} "
                      f"reason={type(e).__name__}: {msg}", flush=True)
        for blk in model.layers:
            blk.k_cache = blk.v_cache = None
        del model
        fresh_compile_state()
    sys.exit(2 if bad else 0)


if __name__ == "__main__":
    main()
