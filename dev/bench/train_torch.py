#!/usr/bin/env python3
"""PyTorch baseline for train_llama: the same Llama shape, trained on random tokens with
the strongest single-GPU PyTorch setup we know — bf16 autocast over fp32 parameters (the
same precision policy as ours), fused AdamW, SDPA (flash) attention, torch.compile.

Prints a JSON line: {"impl": "pytorch+compile", "optim": "torch-adamw", "tok_s": ..., "peak_gib": ..., "ms": ...,
"state_gib": ..., ...}. peak_gib is torch.cuda.max_memory_allocated over the timed steps (after
warm-up, so the optimizer states are in it); in_use_gib is the device's total minus free memory at
the end (context and the caching allocator's pool included, as train_llama's "GPU memory in use");
state_gib / state_host_gib are the optimizer's moment buffers (the quantized subclasses' codes,
scales and maps; "step" counters left out) on the device / in host memory.

--optim takes one optimizer or a comma-separated list; a list runs each in turn in the same
process over the same compiled model (one compilation), one JSON line each, the token stream
reseeded for each. A run that runs out of memory prints {"optim": ..., "error": "OOM", ...} and
the next one starts. ao-offload runs last wherever it is listed (its hooks stay on the parameters).
  torch-adamw    torch.optim.AdamW(fused=True)                       (the default)
  ao-adamw8bit   torchao.optim.AdamW8bit     (block 256)
  ao-adamw4bit   torchao.optim.AdamW4bit     (block 128)
  ao-adamwfp8    torchao.optim.AdamWFp8      (block 256)
  ao-offload     torchao.optim.CPUOffloadOptimizer(params, torch.optim.AdamW, fused=True,
                 offload_gradients=False): states and the step on the CPU (tensors under 4096
                 elements stay on the GPU); the gradients are copied to the host as each one is
                 final, so clip_grad_norm_ runs but does not reach the host copies.
All use lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices and 0 elsewhere.

--float8 R (none by default) trains the Linears with torchao's float8 training (torchao 0.18,
torchao.float8.convert_to_float8_training with Float8LinearConfig.from_recipe_name(R), R one of
tensorwise, rowwise, rowwise_with_gw_hp), applied before torch.compile, with the module filter of
train_llama --recipe (ops/linear.h; torchao's own example filter): the output projection (head) and
every Linear whose in_features or out_features is not a multiple of 16 stay in high precision.
torchao has no blockwise (DeepSeek-V3 128x128) recipe in Float8LinearConfig, so train_llama's
--recipe fp8-blockwise has no counterpart here. torchao must be importable (the GPU machine gets it
with pip install --target and PYTHONPATH); without it the run stops with a message saying so.
--split-linears makes q/k/v and gate/up separate nn.Linears, as in Hugging Face's Llama and as
train_llama runs them in fp8 (each Linear its own scales); by default they are fused (one GEMM
each), the faster bf16 baseline. The JSON line gains "float8", "split_linears",
"flops_per_token" and "sol" (train_llama's model FLOPs over the dense bf16 peak, its SOL).

Usage: python3 dev/bench/train_torch.py CONFIG_JSON --batch 4 --seq 2048 --steps 30
       python3 dev/bench/train_torch.py CONFIG_JSON --optim torch-adamw,ao-adamw8bit,ao-offload --warmup 3
       python3 dev/bench/train_torch.py TINY_CONFIG --device cpu --batch 1 --seq 64 --steps 2 --warmup 1
       python3 dev/bench/train_torch.py CONFIG_JSON --float8 rowwise --split-linears --compile-blocks --warmup 3
"""
import argparse
import gc
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, split=False):
        super().__init__()
        D, H, KV, hd, Fd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], \
            c["intermediate_size"]
        bias = c["model_type"] == "qwen2"
        self.H, self.KV, self.hd = H, KV, hd
        self.ln1 = nn.RMSNorm(D, eps=c["rms_norm_eps"])
        self.ln2 = nn.RMSNorm(D, eps=c["rms_norm_eps"])
        self.split = split
        # registration order = init order (the seeded weights of the default, fused model stay as they were)
        if split:  # Hugging Face's modules: each its own Linear (and, under float8, its own scales)
            self.q = nn.Linear(D, H * hd, bias=bias)
            self.k = nn.Linear(D, KV * hd, bias=bias)
            self.v = nn.Linear(D, KV * hd, bias=bias)
        else:
            self.qkv = nn.Linear(D, (H + 2 * KV) * hd, bias=bias)
        self.o = nn.Linear(H * hd, D, bias=False)
        if split:
            self.gate = nn.Linear(D, Fd, bias=False)
            self.up = nn.Linear(D, Fd, bias=False)
        else:
            self.gu = nn.Linear(D, 2 * Fd, bias=False)
        self.down = nn.Linear(Fd, D, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        if self.split:
            h = self.ln1(x)
            q, k, v = self.q(h), self.k(h), self.v(h)
        else:
            q, k, v = self.qkv(self.ln1(x)).split([self.H * self.hd, self.KV * self.hd, self.KV * self.hd], dim=-1)
        q = q.view(B, T, self.H, self.hd).transpose(1, 2)
        k = k.view(B, T, self.KV, self.hd).transpose(1, 2)
        v = v.view(B, T, self.KV, self.hd).transpose(1, 2)

        def rope(t):
            t1, t2 = t.chunk(2, dim=-1)
            return t * cos + torch.cat([-t2, t1], dim=-1) * sin

        q, k = rope(q), rope(k)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.KV != self.H)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, -1))
        if self.split:
            h = self.ln2(x)
            g, u = self.gate(h), self.up(h)
        else:
            g, u = self.gu(self.ln2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class Llama(nn.Module):
    def __init__(self, c, split=False):
        super().__init__()
        self.c = c
        D, V = c["hidden_size"], c["vocab_size"]
        self.emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block(c, split) for _ in range(c["num_hidden_layers"]))
        self.norm = nn.RMSNorm(D, eps=c["rms_norm_eps"])
        self.head = nn.Linear(D, V, bias=False)
        if c.get("tie_word_embeddings"):
            self.head.weight = self.emb.weight
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        T = idx.shape[1]
        hd = self.c["head_dim"]
        theta = self.c.get("rope_theta") or self.c.get("rope_parameters", {}).get("rope_theta", 10000.0)
        inv = 1.0 / (theta ** (torch.arange(0, hd, 2, device=idx.device, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(T, device=idx.device, dtype=torch.float32), inv)
        cos = torch.cat([ang.cos(), ang.cos()], -1).to(torch.bfloat16)
        sin = torch.cat([ang.sin(), ang.sin()], -1).to(torch.bfloat16)
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


FLOAT8 = ("none", "tensorwise", "rowwise", "rowwise_with_gw_hp")


def float8_filter(mod, fqn):
    """train_llama --recipe's rule (ops/linear.h), torchao's example filter: the output projection and
    Linears with a dimension that is not a multiple of 16 stay in high precision."""
    if fqn == "head" or fqn.endswith(".head"):
        return False
    return isinstance(mod, nn.Linear) and mod.in_features % 16 == 0 and mod.out_features % 16 == 0


def convert_float8(model, recipe, cuda):
    """Swaps the filtered nn.Linears for torchao Float8Linear (recipe by name); returns (fp8, kept) FQN lists."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:
        raise SystemExit("train_torch.py --float8 %s: torchao is not importable (%s). Install torchao 0.18 (e.g. "
                         "pip install --target /tmp/site torchao-*.whl; export PYTHONPATH=/tmp/site)" % (recipe, e))
    config = Float8LinearConfig.from_recipe_name(recipe)
    if not cuda:  # a functional check on the CPU: torchao's emulation (no fp8 GEMMs there)
        import dataclasses
        config = dataclasses.replace(config, emulate=True)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    fp8 = [n for n, m in linears if float8_filter(m, n)]
    kept = [n for n, m in linears if not float8_filter(m, n)]
    convert_to_float8_training(model, config=config, module_filter_fn=float8_filter)
    return fp8, kept


def peak_bf16_flops(dev):
    """Dense bf16 tensor-core peak, as train_llama's gpu_peak_bf16_flops (common/gpu.cu)."""
    p = torch.cuda.get_device_properties(dev)
    if p.major == 9:
        return 756e12 if "PCIe" in p.name else 989.4e12
    if p.major == 8:
        return 312e12 if p.minor == 0 else 165e12
    return 989.4e12


OPTIMS = ("torch-adamw", "ao-adamw8bit", "ao-adamw4bit", "ao-adamwfp8", "ao-offload")


def make_optimizer(name, model):
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
    hp = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    if name == "torch-adamw":
        return torch.optim.AdamW(groups, fused=True, **hp)
    import torchao.optim as ao
    if name == "ao-offload":
        return ao.CPUOffloadOptimizer(groups, torch.optim.AdamW, fused=True, offload_gradients=False, **hp)
    cls = {"ao-adamw8bit": ao.AdamW8bit, "ao-adamw4bit": ao.AdamW4bit, "ao-adamwfp8": ao.AdamWFp8}[name]
    return cls(groups, **hp)


def tensor_bytes(t):
    """Bytes a tensor holds; a wrapper subclass (torchao's quantized states) counts its inner tensors."""
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def state_bytes(opt):
    """(device bytes, host bytes) of the optimizer's states, the step counters left out."""
    opts = [opt]
    if hasattr(opt, "optim_dict"):  # CPUOffloadOptimizer: one host optimizer per parameter, small ones on the device
        opts = list(opt.optim_dict.values()) + ([opt.d_opt] if opt.d_opt is not None else [])
    dev = host = 0
    for o in opts:
        for st in o.state.values():
            for k, t in st.items():
                if k == "step" or not isinstance(t, torch.Tensor):
                    continue
                if t.device.type == "cpu":
                    host += tensor_bytes(t)
                else:
                    dev += tensor_bytes(t)
    return dev, host


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-blocks", action="store_true",
                    help="compile each transformer block (one graph for all) instead of the whole model: "
                         "much shorter compilation for deep models")
    ap.add_argument("--optim", default="torch-adamw", help="one of %s, or a comma-separated list" % ", ".join(OPTIMS))
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a functional check on a tiny config)")
    ap.add_argument("--float8", default="none", choices=FLOAT8,
                    help="torchao float8 training recipe for the Linears (Float8LinearConfig.from_recipe_name); "
                         "none: bf16 autocast only")
    ap.add_argument("--split-linears", action="store_true",
                    help="separate q/k/v and gate/up Linears (Hugging Face's modules) instead of fused ones")
    a = ap.parse_args()
    names = [s for s in a.optim.split(",") if s]
    for n in names:
        if n not in OPTIMS:
            ap.error("--optim %s: expected one of %s" % (n, ", ".join(OPTIMS)))
    # CPUOffloadOptimizer hooks every parameter (gradient copies to the host) for good: it runs last
    names.sort(key=lambda n: n == "ao-offload")
    c = json.load(open(a.config))
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    with dev:  # parameters created on the device: no host copy of a large model
        model = Llama(c, a.split_linears)
    if a.float8 != "none":  # before torch.compile, as torchao's README does
        fp8, kept = convert_float8(model, a.float8, cuda)
        print("float8 %s: %d Linears in fp8, %d in high precision (%s)" % (
            a.float8, len(fp8), len(kept), ", ".join(kept[:4]) + (", ..." if len(kept) > 4 else "")), file=sys.stderr)
    impl = "pytorch"
    fwd = model
    if a.compile_blocks and not a.no_compile:
        for b in model.blocks:
            b.compile()
        impl = "pytorch+compile-blocks"
    elif not a.no_compile:
        fwd = torch.compile(model)
        impl = "pytorch+compile"
    V = c["vocab_size"]
    G = 2.0 ** 30
    n_params = sum(p.numel() for p in model.parameters())
    # train_llama's flops_per_token: 6 per matmul parameter (the embedding gather excluded unless tied to
    # the LM head) plus causal attention 6 * layers * heads * head_dim * T
    mm_params = n_params - (0 if c.get("tie_word_embeddings") else V * c["hidden_size"])
    fpt = 6.0 * mm_params + 6.0 * c["num_hidden_layers"] * c["num_attention_heads"] * c["head_dim"] * a.seq
    peak = peak_bf16_flops(dev) if cuda else None

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run(name):
        opt = make_optimizer(name, model)
        torch.manual_seed(1)  # the same tokens for every optimizer

        def step():
            idx = torch.randint(0, V, (a.batch, a.seq), device=dev)
            tgt = torch.randint(0, V, (a.batch, a.seq), device=dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = fwd(idx, tgt)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        for _ in range(a.warmup):
            step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        sync()
        dt = (time.perf_counter() - t0) / a.steps
        sdev, shost = state_bytes(opt)
        r = {"impl": impl, "optim": name, "batch": a.batch, "seq": a.seq, "tok_s": a.batch * a.seq / dt,
             "ms": dt * 1e3, "peak_gib": torch.cuda.max_memory_allocated() / G if cuda else None,
             "reserved_gib": torch.cuda.max_memory_reserved() / G if cuda else None,
             "in_use_gib": (lambda fr: (fr[1] - fr[0]) / G)(torch.cuda.mem_get_info()) if cuda else None,
             "state_gib": sdev / G, "state_host_gib": shost / G, "params": n_params, "loss": loss.item(),
             "float8": a.float8, "split_linears": a.split_linears, "flops_per_token": fpt,
             "sol": a.batch * a.seq / dt * fpt / peak if cuda else None}
        del opt
        return r

    failed = 0
    for name in names:
        r = None
        try:
            r = run(name)
        except torch.OutOfMemoryError:
            r = {"impl": impl, "optim": name, "batch": a.batch, "seq": a.seq, "error": "OOM", "float8": a.float8,
                 "peak_gib": torch.cuda.max_memory_allocated() / G if cuda else None, "params": n_params}
        except Exception as e:  # one optimizer failing (an import, an unsupported device) leaves the others
            r = {"impl": impl, "optim": name, "float8": a.float8, "error": "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")}
        if "error" in r:
            failed += 1
        print(json.dumps(r), flush=True)
        # what the run left (its optimizer, gradients, cached blocks) goes before the next one
        model.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
