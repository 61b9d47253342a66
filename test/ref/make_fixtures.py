#!/usr/bin/env python3
"""Writes the whole-model PyTorch fixtures that the C tests compare against.

For each tiny config below, builds the Hugging Face model (transformers, fp32, CPU,
eager attention), gives it deterministic random weights (norm weights and biases too,
so their gradients are exercised), runs one forward/backward on fixed tokens, and
writes into test/fixtures/<name>/:
  config.json, model.safetensors   the model as transformers saves it
  io.safetensors                   input_ids, targets (I32 [B,T], -100 = ignored),
                                   logits (F32 [B,T,V]), loss (F32 [1]),
                                   grad.<hf name> (F32) for every parameter
Run from the repository root:  python3 test/ref/make_fixtures.py
Needs torch, transformers, safetensors. Output is deterministic (fixed seeds, CPU, one
thread): rerunning gives identical files.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")

CONFIGS = {
    # Llama 3 style: GQA, llama3 rope scaling (orig 64 so all three frequency bands occur
    # at head_dim 12), untied embeddings, vocab not a multiple of 64.
    "llama3": dict(
        model_type="llama", vocab_size=300, hidden_size=48, intermediate_size=136, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64),
        B=2, T=16, seed=1),
    # Qwen2 style: q/k/v biases, tied embeddings, 6 query heads over 2 kv heads.
    "qwen2": dict(
        model_type="qwen2", vocab_size=300, hidden_size=48, intermediate_size=100, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
        B=2, T=16, seed=2),
    # MHA (n_kv_heads = n_heads) with head_dim * heads != hidden_size, default rope.
    "mha": dict(
        model_type="llama", vocab_size=257, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=False,
        B=3, T=11, seed=3),
}


def build(name, spec):
    from transformers import AutoConfig, AutoModelForCausalLM
    spec = dict(spec)
    B, T, seed = spec.pop("B"), spec.pop("T"), spec.pop("seed")
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **spec)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    g = torch.Generator().manual_seed(seed * 1000 + 7)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    V = cfg.vocab_size
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 3] = -100  # ignored positions, as a fine-tuning mask would make
    targets[B - 1, T - 1] = -100
    model.zero_grad()
    logits = model(input_ids=ids).logits.float()
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
    loss.backward()

    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    io = {
        "input_ids": ids.to(torch.int32).contiguous(),
        "targets": targets.to(torch.int32).contiguous(),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1).contiguous(),
    }
    for pname, p in model.named_parameters():
        io["grad." + pname] = p.grad.detach().contiguous()
    save_file(io, os.path.join(d, "io.safetensors"), metadata={"B": str(B), "T": str(T)})
    # generation_config.json is not needed by our tests
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    print(f"{name}: loss {loss.item():.6f}, {sum(p.numel() for p in model.parameters())} params -> {d}")


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    names = sys.argv[1:] or list(CONFIGS)
    for n in names:
        build(n, CONFIGS[n])


if __name__ == "__main__":
    main()
