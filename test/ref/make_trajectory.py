#!/usr/bin/env python3
"""Writes a 10-step training trajectory of the `llama3` fixture model (PyTorch, fp32,
CPU) for the GPU training test: same batches, same AdamW settings, losses and gradient
norms per step.

AdamW as train_llama runs it: torch.optim.AdamW(lr=3e-3, betas=(0.9, 0.95), eps=1e-8),
weight decay 0.1 on matrices only (norms and biases in a no-decay group), global
gradient-norm clipping at 1.0, constant learning rate, mean cross-entropy.
Output: test/fixtures/llama3/trajectory.safetensors with
  tokens, targets  I32 [steps, B, T]      losses, norms  F32 [steps]
Run from the repository root: python3 test/ref/make_trajectory.py (needs the llama3
fixture from make_fixtures.py).
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

FX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "llama3")
STEPS, B, T = 10, 4, 16
LR, WD, BETAS, EPS, CLIP = 3e-3, 0.1, (0.9, 0.95), 1e-8, 1.0


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = AutoModelForCausalLM.from_pretrained(FX, dtype=torch.float32, attn_implementation="eager").train()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1234)
    # Learnable data, so the loss moves: each sequence walks a fixed random cycle of 37
    # token ids from a random start; the target is the next id of the walk.
    cycle = torch.randperm(V, generator=g)[:37]
    start = torch.randint(0, 37, (STEPS, B, 1), generator=g)
    idx = (start + torch.arange(T + 1).view(1, 1, -1)) % 37
    walk = cycle[idx]
    tokens, targets = walk[..., :T].contiguous(), walk[..., 1:].contiguous()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS, foreach=False)
    losses, norms = [], []
    for s in range(STEPS):
        opt.zero_grad()
        logits = model(input_ids=tokens[s]).logits
        loss = F.cross_entropy(logits.view(-1, V), targets[s].view(-1))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
        print(f"step {s + 1}: loss {loss.item():.6f} norm {norm.item():.6f}")
    save_file({"tokens": tokens.to(torch.int32).contiguous(), "targets": targets.to(torch.int32).contiguous(),
               "losses": torch.tensor(losses, dtype=torch.float32), "norms": torch.tensor(norms, dtype=torch.float32)},
              os.path.join(FX, "trajectory.safetensors"),
              metadata={"lr": str(LR), "wd": str(WD), "beta1": str(BETAS[0]), "beta2": str(BETAS[1]),
                        "eps": str(EPS), "clip": str(CLIP)})


if __name__ == "__main__":
    main()
