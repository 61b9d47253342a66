#!/usr/bin/env python3
"""GGUF fixtures for test/test_gguf.c (needs numpy and the `gguf` wheel: pip install gguf).

quants.gguf       one tensor per block type we read (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
                  Q6_K) filled with random blocks (valid fp16 scales), and for each an F32
                  tensor "expect.<name>" holding gguf-py's own dequantization of it.
llama3_f32.gguf   test/fixtures/llama3 converted as llama.cpp's convert_hf_to_gguf.py does for
                  Llama (q_proj / k_proj rows permuted for interleaved RoPE), so the loader's
                  un-permutation is checked against the HF weights.
"""
import json
import os
import struct
import sys

import numpy as np
from gguf import GGUFWriter, GGMLQuantizationType as T
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "gguf")
rng = np.random.default_rng(1234)

# (type, bytes per block, elements per block, byte offsets of fp16 fields)
BLOCKS = {
    T.Q8_0: (34, 32, [0]),
    T.Q4_0: (18, 32, [0]),
    T.Q4_1: (20, 32, [0, 2]),
    T.Q4_K: (144, 256, [0, 2]),
    T.Q6_K: (210, 256, [208]),
}


def random_blocks(t, n_blocks):
    size, _, halves = BLOCKS[t]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in halves:  # finite, moderate fp16 scales
        h = (rng.uniform(0.001, 0.1, size=n_blocks) * rng.choice([-1, 1], n_blocks)).astype(np.float16)
        raw[:, off:off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return raw


def quants():
    w = GGUFWriter(os.path.join(OUT, "quants.gguf"), "llama")
    rows = 3
    for t, (size, blk, _) in BLOCKS.items():
        cols = blk * 2
        raw = random_blocks(t, rows * cols // blk).reshape(rows, cols // blk * size)
        name = t.name.lower()
        w.add_tensor(name, raw, raw_dtype=t)
        ref = dequantize(raw, t).astype(np.float32).reshape(rows, cols)
        w.add_tensor("expect." + name, ref)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    w.add_tensor("f32", x)
    w.add_tensor("expect.f32", x)
    h = x.astype(np.float16)
    w.add_tensor("f16", h)
    w.add_tensor("expect.f16", h.astype(np.float32))
    b = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bf16 bits will do
    w.add_tensor("bf16", b.view(np.uint8).reshape(3, 80), raw_dtype=T.BF16)
    w.add_tensor("expect.bf16", (b.astype(np.uint32) << 16).view(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32"
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=np.float32).reshape(v["shape"])
    return out


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3():
    src = os.path.join(HERE, "..", "fixtures", "llama3")
    cfg = json.load(open(os.path.join(src, "config.json")))
    st = read_safetensors(os.path.join(src, "model.safetensors"))
    w = GGUFWriter(os.path.join(OUT, "llama3_f32.gguf"), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    # llama3 rope scaling travels as rope_freqs.weight: per-frequency divisors, computed as
    # llama.cpp's converter does (float64, stored as float32)
    rp, hd = cfg["rope_parameters"], cfg["head_dim"]
    base, factor, lo, hi, orig = (rp["rope_theta"], rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"],
                                  rp["original_max_position_embeddings"])
    freqs = 1.0 / (base ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    lo_wl, hi_wl, factors = orig / lo, orig / hi, []
    for f in freqs:
        wl = 2 * np.pi / f
        if wl < hi_wl:
            factors.append(1.0)
        elif wl > lo_wl:
            factors.append(factor)
        else:
            sm = (orig / wl - lo) / (hi - lo)
            factors.append(1 / ((1 - sm) / factor + sm))
    w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    names = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    for k, v in st.items():
        if k == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif k == "model.norm.weight":
            g = "output_norm.weight"
        elif k == "lm_head.weight":
            g = "output.weight"
        else:
            parts = k.split(".")
            g = f"blk.{parts[2]}." + names[".".join(parts[3:])]
            if parts[4] == "q_proj":
                v = permute(v, cfg["num_attention_heads"])
            if parts[4] == "k_proj":
                v = permute(v, cfg["num_key_value_heads"])
        w.add_tensor(g, np.ascontiguousarray(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    quants()
    llama3()
    print("wrote", OUT, file=sys.stderr)
