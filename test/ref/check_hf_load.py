#!/usr/bin/env python3
"""Shows that checkpoints written by llama.ao load in Hugging Face transformers.

For each whole-model fixture, `build/model_tool convert` re-writes it (float32 and
bfloat16) with our safetensors writer and config.json writer; transformers then loads
the result with from_pretrained and its logits on the fixture tokens are compared with
the fixture's logits. Prints one line per check and "N passed, N failed".
Run from the repository root after `make`: python3 test/ref/check_hf_load.py
"""
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TOOL = os.path.join(ROOT, "build", "model_tool")


def main():
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["llama3", "qwen2", "mha"]:
            fx = os.path.join(ROOT, "test", "fixtures", name)
            io = load_file(os.path.join(fx, "io.safetensors"))
            for dtype, tol in [("float32", 1e-5), ("bfloat16", 5e-2)]:
                out = os.path.join(tmp, f"{name}-{dtype}")
                subprocess.run([TOOL, "convert", fx, out, "--dtype", dtype], check=True, stdout=subprocess.DEVNULL)
                model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
                with torch.no_grad():
                    logits = model(input_ids=io["input_ids"].long()).logits.float()
                ref = io["logits"]
                err = ((logits - ref).abs().max() / ref.abs().max()).item()
                ok = err <= tol
                passed += ok
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name} written as {dtype} by llama.ao, loaded by transformers "
                      f"{__import__('transformers').__version__}: logits scaled error {err:.2e} (tol {tol:g})")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
