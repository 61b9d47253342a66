#!/usr/bin/env python3
"""Writes 10-step training trajectories of a tiny Llama under PyTorch + torchao float8 training
(convert_to_float8_training, Float8LinearConfig.from_recipe_name(R) for R in tensorwise, rowwise,
rowwise_with_gw_hp) and the same run without float8, for gpu_test_fp8traj (train_llama --recipe
against torchao, issue 7 item 5).

The model. The llama3 fixture has only q_proj and o_proj in fp8 (hidden 48, k/v 24, MLP 136: torchao's
module filter keeps a Linear whose in or out features is not a multiple of 16 in high precision), 4 of
its 14 Linears. So this uses the llama3 variant of gpu_test_recipe whose every Linear but lm_head takes
fp8: the llama3 fixture's config (GQA 4/2 heads, llama3 rope, vocab 300, 2 layers, untied) with hidden
64, intermediate 128, head_dim 16 (q 64, k/v 32): 14 of 15 Linears in fp8. Weights drawn as
make_fixtures.py draws them (norms 1 + 0.2 N(0,1), matrices 0.08 N(0,1)), rounded to bf16, saved as
bf16 (test/fixtures/llama3_fp8/model.safetensors), so both sides start from the same bits.

Precision as train_llama: bf16 parameters and activations (the model in bf16; cross-entropy in fp32
on the bf16 logits), fp32 master weights and AdamW on them (the bf16 gradients copied to fp32;
clipping on those), the bf16 weights re-rounded from the masters after each step. The same batches
(tokens/targets of test/fixtures/llama3/trajectory.safetensors), AdamW settings, constant lr and
clipping as make_trajectory.py: lr 3e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices
only, global norm clip 1.0.

torchao runs on the CPU here: Float8Linear calls torch._scaled_mm, which this torch build (2.15)
has on the CPU (fp32 accumulation of the dequantized products); all three recipes run (checked: each
Linear's three GEMMs go through torch._scaled_mm).

The noise envelope. Two correct implementations of the same recipe do not give the same trajectory:
they round at different points (ours: RoPE and attention in fp32 with one bf16 rounding, fp32 weight
gradients, the fp8 tensor core's accumulation), and AdamW's early steps (update ~ lr sign(g)) turn
last-bit differences into different weights. fp8 amplifies this: a tiny input difference flips an
fp8 rounding (an error of one e4m3 step, 2^-3 relative) where bf16 would differ by 2^-8. So each run
is repeated with one-point perturbations that a correct implementation may make, and the per-step
loss and norm distance to the unperturbed run is recorded:
  rope32   RoPE computed in fp32 and rounded to bf16 once (as ops/rope.cu)
  attn32   eager attention in fp32 (scores, softmax, P.V), output rounded once (as ops/attention)
  norm32   RMSNorm with the weight product in fp32, rounded once (as ops/rmsnorm)
  mlp32    SwiGLU silu(gate) * up in fp32, rounded once (as ops/swiglu)
  ours     all four: the rounding points of train_llama's kernels
  emulate  (fp8 recipes) Float8LinearConfig(emulate=True): dequantize, fp32 torch.mm, one rounding
envelope[R][s] = the running maximum over steps <= s of the largest such distance for recipe R.
gpu_test_fp8traj's tolerance is built from it (the derivation is there).
Output: test/fixtures/llama3_fp8/{config.json, model.safetensors, fp8_trajectory.json}; the
model files are written only when absent (delete them to redraw).
Run from the repository root: python3 test/ref/make_fp8_trajectory.py (torch, torchao 0.18,
transformers, safetensors).
"""
import dataclasses
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "..", "fixtures")
OUT = os.path.join(FX, "llama3_fp8")
LR, WD, BETAS, EPS, CLIP = 3e-3, 0.1, (0.9, 0.95), 1e-8, 1.0
RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
CONFIG = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-5,
              rope_theta=500000.0, tie_word_embeddings=False,
              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                original_max_position_embeddings=64))


def float8_filter(mod, fqn):
    """torchao's example filter, train_llama --recipe's rule (ops/linear.h): the output projection
    and Linears with a dimension that is not a multiple of 16 stay in high precision."""
    if fqn == "lm_head" or fqn.endswith(".lm_head"):
        return False
    return isinstance(mod, torch.nn.Linear) and mod.in_features % 16 == 0 and mod.out_features % 16 == 0


def build_model():
    from transformers import AutoConfig, AutoModelForCausalLM
    if not os.path.exists(os.path.join(OUT, "model.safetensors")):
        cfg = AutoConfig.for_model("llama", **CONFIG)
        torch.manual_seed(5)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()
        g = torch.Generator().manual_seed(5007)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.08 * torch.randn(p.shape, generator=g))
        os.makedirs(OUT, exist_ok=True)
        model.to(torch.bfloat16).save_pretrained(OUT, safe_serialization=True)
        gc = os.path.join(OUT, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
    return AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.bfloat16, attn_implementation="eager").train()


def perturb(kind):
    """Installs the one-point rounding changes of the noise envelope (module docstring)."""
    import transformers.models.llama.modeling_llama as LM
    global _ORIG
    if _ORIG is None:
        _ORIG = (LM.apply_rotary_pos_emb, LM.eager_attention_forward, LM.LlamaRMSNorm.forward, LM.LlamaMLP.forward)
    rope, attn, norm, mlp = _ORIG
    bf = torch.bfloat16

    def rope32(q, k, cos, sin, unsqueeze_dim=1):
        qo, ko = rope(q.float(), k.float(), cos.float(), sin.float(), unsqueeze_dim)
        return qo.to(q.dtype), ko.to(k.dtype)

    def attn32(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        if attention_mask is not None:
            attention_mask = attention_mask.float()
        out, w = attn(module, query.float(), key.float(), value.float(), attention_mask, scaling, dropout, **kw)
        return out.to(query.dtype), w

    def norm32(self, x):
        xf = x.float()
        return (self.weight.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)).to(bf)

    def mlp32(self, x):
        return self.down_proj((self.act_fn(self.gate_proj(x).float()) * self.up_proj(x).float()).to(bf))

    on = {"rope32", "attn32", "norm32", "mlp32"} if kind == "ours" else {kind}
    LM.apply_rotary_pos_emb = rope32 if "rope32" in on else rope
    LM.eager_attention_forward = attn32 if "attn32" in on else attn
    LM.LlamaRMSNorm.forward = norm32 if "norm32" in on else norm
    LM.LlamaMLP.forward = mlp32 if "mlp32" in on else mlp


_ORIG = None


def train(recipe, tokens, targets, emulate=False, pert="none"):
    perturb(pert)
    model = build_model()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    fp8 = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and float8_filter(m, n)]
    if recipe != "bf16":
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
        from torchao.float8.float8_linear import Float8Linear
        config = Float8LinearConfig.from_recipe_name(recipe)
        if emulate:
            config = dataclasses.replace(config, emulate=True)
        convert_to_float8_training(model, config=config, module_filter_fn=float8_filter)
        got = [n for n, m in model.named_modules() if isinstance(m, Float8Linear)]
        assert got == fp8, (got, fp8)
    params = list(model.named_parameters())
    master = [p.detach().float().clone().requires_grad_(True) for _, p in params]
    decay = [m for (n, p), m in zip(params, master) if p.dim() == 2]
    no_decay = [m for (n, p), m in zip(params, master) if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS, foreach=False)
    V = model.config.vocab_size
    losses, norms = [], []
    for s in range(tokens.shape[0]):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=tokens[s]).logits
        loss = F.cross_entropy(logits.float().view(-1, V), targets[s].view(-1))
        loss.backward()
        for (n, p), m in zip(params, master):
            m.grad = p.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(master, CLIP)
        opt.step()
        with torch.no_grad():
            for (n, p), m in zip(params, master):
                p.copy_(m.to(torch.bfloat16))
        losses.append(loss.item())
        norms.append(norm.item())
    perturb("none")
    return losses, norms, len(names), len(fp8) if recipe != "bf16" else 0


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tj = load_file(os.path.join(FX, "llama3", "trajectory.safetensors"))
    tokens, targets = tj["tokens"].long(), tj["targets"].long()
    runs, noise = {}, {}
    for r in ("bf16",) + RECIPES:
        variants = [("none", False)] + [(k, False) for k in ("rope32", "attn32", "norm32", "mlp32", "ours")]
        if r != "bf16":
            variants.append(("none", True))
        for pert, emulate in variants:
            key = r + ("" if pert == "none" else "+" + pert) + ("+emulate" if emulate else "")
            try:
                l, n, nlin, nfp8 = train(r, tokens, targets, emulate, pert)
            except Exception as e:  # a recipe whose CPU path does not run: said, and left out of the fixture
                print(f"{key}: does not run on the CPU: {type(e).__name__}: {e}")
                continue
            runs[key] = {"losses": l, "norms": n}
            print(f"{key:30s} ({nfp8:2d}/{nlin} Linears fp8) loss " + " ".join(f"{x:.5f}" for x in l))
            print(f"{'':30s} {'':22s} norm " + " ".join(f"{x:.5f}" for x in n))
        if r not in runs:
            continue
        env = {"loss": [], "norm": []}
        for q, k in (("loss", "losses"), ("norm", "norms")):
            run_max = 0.0
            for s in range(tokens.shape[0]):
                d = max(abs(v[k][s] - runs[r][k][s]) for key, v in runs.items() if key.startswith(r + "+"))
                run_max = max(run_max, d)
                env[q].append(run_max)
        noise[r] = env
    print("per step                     " + " ".join(f"{s + 1:7d}" for s in range(tokens.shape[0])))
    for r in ("bf16",) + RECIPES:
        if r not in runs:
            continue
        if r != "bf16":
            a, h = runs[r]["losses"], runs["bf16"]["losses"]
            print(f"{r:20s} |fp8-bf16| " + " ".join(f"{abs(x - y):.5f}" for x, y in zip(a, h)))
        print(f"{r:20s} envelope  " + " ".join(f"{x:.5f}" for x in noise[r]["loss"]))
    out = {"steps": int(tokens.shape[0]), "batches": "test/fixtures/llama3/trajectory.safetensors",
           "lr": LR, "wd": WD, "beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS, "clip": CLIP,
           "torch": torch.__version__, "torchao": __import__("torchao").__version__,
           "fp8_linears": nfp8, "linears": nlin, "runs": runs, "envelope": noise}
    with open(os.path.join(OUT, "fp8_trajectory.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

if __name__ == "__main__":
    main()
