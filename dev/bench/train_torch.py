#!/usr/bin/env python3
"""PyTorch baseline for train_llama: the same Llama shape, trained on random tokens with
the strongest single-GPU PyTorch setup we know — bf16 autocast over fp32 parameters (the
same precision policy as ours), fused AdamW, SDPA (flash) attention, torch.compile.

Prints a JSON line: {"impl": "pytorch", "tok_s": ..., "peak_gib": ..., "ms": ...}.
Usage: python3 dev/bench/train_torch.py CONFIG_JSON --batch 4 --seq 2048 --steps 30
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        D, H, KV, hd, Fd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], \
            c["intermediate_size"]
        bias = c["model_type"] == "qwen2"
        self.H, self.KV, self.hd = H, KV, hd
        self.ln1 = nn.RMSNorm(D, eps=c["rms_norm_eps"])
        self.ln2 = nn.RMSNorm(D, eps=c["rms_norm_eps"])
        self.qkv = nn.Linear(D, (H + 2 * KV) * hd, bias=bias)
        self.o = nn.Linear(H * hd, D, bias=False)
        self.gu = nn.Linear(D, 2 * Fd, bias=False)
        self.down = nn.Linear(Fd, D, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
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
        g, u = self.gu(self.ln2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        D, V = c["hidden_size"], c["vocab_size"]
        self.emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    c = json.load(open(a.config))
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    torch.manual_seed(0)
    model = Llama(c).cuda()
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), fused=True)
    fwd = model if a.no_compile else torch.compile(model)
    V = c["vocab_size"]

    def step():
        idx = torch.randint(0, V, (a.batch, a.seq), device="cuda")
        tgt = torch.randint(0, V, (a.batch, a.seq), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    print(json.dumps({"impl": "pytorch" + ("" if a.no_compile else "+compile"), "batch": a.batch, "seq": a.seq,
                      "tok_s": a.batch * a.seq / dt, "ms": dt * 1e3,
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": loss.item()}))


if __name__ == "__main__":
    main()
