#!/usr/bin/env python3
"""Writes the corrupt-input corpus under test/fixtures/corrupt/ (standard library only).

Each case is a file (or a model directory) that must be rejected with a clear error;
MANIFEST.tsv lists: kind (st = one safetensors file, model = model directory,
config = config.json), the path relative to corrupt/, and a substring the error
message must contain. test/test_formats.c walks the manifest.
Run from the repository root: python3 test/ref/make_corrupt.py
"""
import json
import os
import shutil
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "corrupt")
rows = []


def st_bytes(header, data=b"", raw_header=None, length=None):
    h = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    n = len(h) if length is None else length
    return struct.pack("<Q", n) + h + data


def put(kind, name, content, expect):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    rows.append((kind, name, expect))


def t(dtype, shape, a, b):
    return {"dtype": dtype, "shape": shape, "data_offsets": [a, b]}


def st_cases():
    d16 = bytes(16)
    put("st", "empty.safetensors", b"", "too short")
    put("st", "truncated_length.safetensors", b"\x10\x00\x00", "too short")
    put("st", "huge_header_length.safetensors", struct.pack("<Q", 1 << 63) + b"{}", "exceeds")
    put("st", "header_past_eof.safetensors", st_bytes(None, raw_header=b'{"a":1}', length=1000), "runs past the end")
    put("st", "header_not_json.safetensors", st_bytes(None, raw_header=b'{"a": tru}'), "not valid JSON")
    put("st", "header_not_object.safetensors", st_bytes(None, raw_header=b"[1,2]"), "does not start with '{'")
    put("st", "header_trailing_garbage.safetensors", st_bytes(None, raw_header=b"{} x"), "trailing characters")
    put("st", "offset_out_of_file.safetensors", st_bytes({"w": t("F32", [250], 0, 1000)}, d16), "outside the")
    put("st", "begin_after_end.safetensors", st_bytes({"w": t("F32", [2], 8, 0)}, d16), "outside the")
    put("st", "overlapping.safetensors",
        st_bytes({"a": t("F32", [4], 0, 16), "b": t("F32", [4], 8, 24)}, bytes(24)), "overlap")
    put("st", "gap.safetensors", st_bytes({"a": t("F32", [2], 0, 8), "b": t("F32", [2], 16, 24)}, bytes(24)),
        "leaves a gap")
    put("st", "trailing_bytes.safetensors", st_bytes({"a": t("F32", [2], 0, 8)}, d16), "trailing bytes")
    put("st", "shape_dtype_mismatch.safetensors", st_bytes({"a": t("F32", [3], 0, 8)}, bytes(8)), "shape x dtype")
    put("st", "unknown_dtype.safetensors", st_bytes({"a": t("F128", [1], 0, 16)}, d16), "unknown dtype")
    put("st", "duplicate_names.safetensors",
        st_bytes(None, raw_header=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                  b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', data=d16),
        "duplicate key")
    put("st", "negative_dim.safetensors", st_bytes({"a": t("F32", [-4], 0, 16)}, d16), "not a non-negative integer")
    put("st", "fractional_dim.safetensors", st_bytes({"a": t("F32", [2.5], 0, 16)}, d16), "not a non-negative integer")
    put("st", "overflowing_dims.safetensors",
        st_bytes({"a": t("F32", [1 << 32, 1 << 32, 1 << 8], 0, 16)}, d16), "overflow")
    put("st", "dim_beyond_u64.safetensors",
        st_bytes(None, raw_header=b'{"a":{"dtype":"F32","shape":[99999999999999999999999],"data_offsets":[0,16]}}',
                 data=d16), "not a non-negative integer")
    put("st", "too_many_dims.safetensors", st_bytes({"a": t("F32", [1] * 9 + [4], 0, 16)}, d16), "dimensions")
    put("st", "missing_dtype.safetensors", st_bytes({"a": {"shape": [4], "data_offsets": [0, 16]}}, d16),
        'missing string "dtype"')
    put("st", "unknown_field.safetensors",
        st_bytes({"a": dict(t("F32", [4], 0, 16), extra=1)}, d16), "unknown field")
    put("st", "offsets_wrong_arity.safetensors",
        st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}, d16), "data_offsets")
    put("st", "metadata_not_strings.safetensors",
        st_bytes({"__metadata__": {"format": 3}, "a": t("F32", [4], 0, 16)}, d16), "__metadata__")
    put("st", "invalid_utf8_name.safetensors",
        st_bytes(None, raw_header=b'{"\xff\xfe":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', data=d16),
        "invalid UTF-8")
    put("st", "deep_nesting.safetensors", st_bytes(None, raw_header=b"{\"a\":" + b"[" * 200 + b"]" * 200 + b"}"),
        "nesting deeper")
    put("st", "control_char_in_name.safetensors",
        st_bytes(None, raw_header=b'{"a\x01":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', data=d16),
        "control character")


# A tiny valid model: V=8, D=4, F=8, 1 layer, 2 heads over 1 kv head (head_dim 2).
CFG = dict(model_type="llama", vocab_size=8, hidden_size=4, intermediate_size=8, num_hidden_layers=1,
           num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-5, rope_theta=10000.0,
           tie_word_embeddings=False, hidden_act="silu")
SHAPES = {
    "model.embed_tokens.weight": [8, 4], "model.norm.weight": [4], "lm_head.weight": [8, 4],
    "model.layers.0.input_layernorm.weight": [4], "model.layers.0.self_attn.q_proj.weight": [4, 4],
    "model.layers.0.self_attn.k_proj.weight": [2, 4], "model.layers.0.self_attn.v_proj.weight": [2, 4],
    "model.layers.0.self_attn.o_proj.weight": [4, 4], "model.layers.0.post_attention_layernorm.weight": [4],
    "model.layers.0.mlp.gate_proj.weight": [8, 4], "model.layers.0.mlp.up_proj.weight": [8, 4],
    "model.layers.0.mlp.down_proj.weight": [4, 8],
}


def model_st(shapes, dtypes=None, fill=None):
    header, data = {}, b""
    for name, shape in shapes.items():
        dt = (dtypes or {}).get(name, "F32")
        n = 1
        for s in shape:
            n *= s
        if dt == "F32":
            vals = [0.01 * ((i % 7) - 3) for i in range(n)]
            if fill and name in fill:
                vals[0] = fill[name]
            blob = struct.pack("<%df" % n, *vals)
        else:
            blob = struct.pack("<%di" % n, *range(n))
        header[name] = t(dt, shape, len(data), len(data) + len(blob))
        data += blob
    return st_bytes(header, data)


def model_case(name, expect, shapes=None, cfg=None, **kw):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg or CFG, f)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(model_st(shapes or SHAPES, **kw))
    rows.append(("model", name, expect))


def model_cases():
    s = dict(SHAPES)
    del s["model.layers.0.mlp.up_proj.weight"]
    model_case("model_missing_tensor", "missing 1 expected tensor", s)
    s = dict(SHAPES, **{"model.layers.0.self_attn.rotary.weight": [2]})
    model_case("model_extra_tensor", "unexpected tensor", s)
    s = dict(SHAPES, **{"model.layers.0.self_attn.k_proj.weight": [4, 4]})
    model_case("model_wrong_shape", "has shape [4, 4]", s)
    model_case("model_int_weights", "dtype I32", dtypes={"model.norm.weight": "I32"})
    model_case("model_nan_weight", "non-finite", fill={"model.layers.0.mlp.down_proj.weight": float("nan")})
    model_case("model_config_mismatch", "has shape", cfg=dict(CFG, hidden_size=8, num_attention_heads=4))
    # sharded: index naming a path outside the directory / a tensor not in its shard /
    # a shard holding a tensor the index does not list
    for name, wm, expect in [
        ("sharded_path_escape", {"model.norm.weight": "../model.safetensors"}, "plain file name"),
        ("sharded_wrong_file", {k: "model-00001-of-00001.safetensors" for k in SHAPES} |
         {"model.norm.weight": "model-00002-of-00002.safetensors"}, "cannot open"),
        ("sharded_unlisted", {k: "model-00001-of-00001.safetensors" for k in list(SHAPES)[1:]},
         "not listed in the index"),
    ]:
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(CFG, f)
        with open(os.path.join(d, "model-00001-of-00001.safetensors"), "wb") as f:
            f.write(model_st(SHAPES))
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": wm}, f)
        rows.append(("model", name, expect))


def config_cases():
    def cfg(name, expect, raw=None, **over):
        c = dict(CFG)
        for k, v in over.items():
            if v is None and k.startswith("del_"):
                c.pop(k[4:], None)
            else:
                c[k] = v
        put("config", name, raw if raw is not None else json.dumps(c).encode(), expect)

    cfg("config_bad_json.json", "not valid JSON", raw=b'{"model_type": "llama",}')
    cfg("config_not_object.json", "top level must be an object", raw=b"[1]")
    cfg("config_model_type.json", 'model_type = "mistral"', model_type="mistral")
    cfg("config_no_model_type.json", '"model_type"', del_model_type=None)
    cfg("config_missing_hidden.json", '"hidden_size" is missing', del_hidden_size=None)
    cfg("config_heads_not_divisible.json", "not divisible", hidden_size=6, num_attention_heads=4)
    cfg("config_kv_not_multiple.json", "not a multiple", num_attention_heads=4, num_key_value_heads=3, head_dim=2)
    cfg("config_negative_size.json", "out of range", hidden_size=-4)
    cfg("config_vocab_string.json", '"vocab_size" must be an integer', vocab_size="8")
    cfg("config_sliding_layer.json", 'layer_types[0] = "sliding_attention"', layer_types=["sliding_attention"])
    cfg("config_layer_types_count.json", '"layer_types" must be a list', layer_types=["full_attention"] * 2)
    cfg("config_vocab_float.json", '"vocab_size" must be an integer', vocab_size=8.5)
    cfg("config_layers_huge.json", '"num_hidden_layers" must be an integer', num_hidden_layers=1 << 40)
    cfg("config_rope_yarn.json", 'rope_type = "yarn"', rope_scaling={"rope_type": "yarn", "factor": 4.0})
    cfg("config_rope_llama3_incomplete.json", "original_max_position_embeddings",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0})
    cfg("config_rope_llama3_bad_factors.json", "llama3 needs",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192})
    cfg("config_rope_theta_conflict.json", "disagrees", rope_parameters={"rope_type": "default", "rope_theta": 5.0e5})
    cfg("config_hidden_act.json", 'hidden_act = "gelu"', hidden_act="gelu")
    cfg("config_attention_bias.json", '"attention_bias" = true', attention_bias=True)
    cfg("config_sliding_window.json", '"use_sliding_window" = true', model_type="qwen2", use_sliding_window=True)
    cfg("config_eos_out_of_vocab.json", "eos_token_id 9 is not below", eos_token_id=[1, 9])
    cfg("config_odd_head_dim.json", "must be even", head_dim=3)
    cfg("config_eps_zero.json", "rms_norm_eps", rms_norm_eps=0.0)
    cfg("config_dtype.json", 'dtype = "int8"', torch_dtype="int8")
    cfg("config_dropout.json", "attention_dropout", attention_dropout=0.1)
    cfg("config_duplicate_key.json", "duplicate key", raw=b'{"model_type":"llama","model_type":"qwen2"}')
    cfg("config_lone_surrogate.json", "surrogate", raw=b'{"model_type":"\\ud800"}')


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    st_cases()
    model_cases()
    config_cases()
    with open(os.path.join(OUT, "MANIFEST.tsv"), "w") as f:
        f.write("# kind\tpath\texpected substring of the error\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    print(f"{len(rows)} corrupt cases -> {OUT}")


if __name__ == "__main__":
    main()
