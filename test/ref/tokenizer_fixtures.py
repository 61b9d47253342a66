#!/usr/bin/env python3
"""Writes test/fixtures/tokenizer/*.json: reference token ids from Hugging Face tokenizers and
the sentencepiece library, for test/test_tokenizer.c.

    pip install tokenizers sentencepiece unicodedata2==16.0.0
    python3 test/ref/tokenizer_fixtures.py [SHARED_DATA_DIR]      # default ../shared/data

Outputs (all small):
  texts.json        the test strings: hard cases + a fuzz set + a sample of corpus lines
  llama3.json       ids of each text, Llama 3 tokenizer.json, encode(t, add_special_tokens=False)
  gpt2.json         GPT-2 (encoder.json + vocab.bpe as a HF BPE + ByteLevel tokenizer)
  qwen2pat.json     Llama 3 vocabulary with the Qwen2 pre-tokenizer regex
  llama2_spm.json   Llama 2 tokenizer.model through sentencepiece (no special-token matching)
  corpus_digest.json  for every line of each corpus: count and FNV-1a digest of all ids, per
                    tokenizer, so the C test checks the whole corpora without storing ids
  llama2_hf.json    the HF Llama 2 tokenizer.json forms converted from the Llama 2 tokenizer.model
                    by transformers 4.x (LlamaTokenizerFast(from_slow=True)): each form's file with
                    model.vocab / model.merges left out ("@VOCAB@", "@MERGES@"; the C test rebuilds
                    them from tokenizer.model as transformers' generate_merges does and checks the
                    merges against the FNV digest stored here), and its tokenizer_config.json
  llama2_hf_{legacy,metaspace,split}.json  HF ids of each text for those forms, plus HF's decode
                    of the ids where it differs from the text
  llama2_unused.json  Llama 2 tokenizer.model with some pieces marked UNUSED (the ids are listed; the
                    C test patches the model the same way): sentencepiece's ids of each text
  nfc.json          Unicode NFC test strings: [text, unicodedata2 16.0 NFC] pairs (every decomposable
                    character, every combining mark reordered, every composition blocked or not,
                    Hangul, fuzz), and "hf": {index: HF tokenizers' NFC} where that differs
  qwen2nfc.json     the Llama 3 vocabulary with the Qwen2 regex and the NFC normalizer (as Qwen2's
                    tokenizer.json has): texts that are not NFC, their HF ids and decode

HF Llama 2 forms need transformers 4.x (5.x converts differently); run with a Python that has it
in TRANSFORMERS4_PYTHON, e.g.
    python3 -m venv /tmp/tf4 && /tmp/tf4/bin/pip install 'transformers<5' sentencepiece protobuf
    TRANSFORMERS4_PYTHON=/tmp/tf4/bin/python python3 test/ref/tokenizer_fixtures.py
"""
import json
import os
import random
import subprocess
import sys
import tempfile

import sentencepiece as spm
import unicodedata2 as ud
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "test", "fixtures", "tokenizer")
QWEN2_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
            "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

HARD = [
    "", " ", "  ", "\n", "\n\n", "\r\n", " \n", "\t", "a", "Hello", " Hello world!\n\n  123456 ünïcödé 日本語",
    "Hello, my dog is cute", "I'm you'll they're it's we've he'd I'LL IT'S It'S 'ſ x'ſt don't",
    "'s's 'S 'Re 'rE 've 'VE 'm 'M 'll 'Ll 'd 'D ' s ''s '''", "can't won't shan't y'all o'clock 'twas",
    "    four spaces\ttab\t\ttwo tabs", "trailing spaces   ", "   leading", "a  b   c    d     e",
    "\n\n\n\nnewlines\n\n\n", "\r\n\r\nwindows\r\nlines\r\n", "mixed \t \n \r\n  \u00a0\u3000 spaces",
    "x\u00a0\u00a0y \u2028 z\u2029w \u205f\u3000\u1680 \u180e \u200b \ufeff", " " * 300, "\t" * 50 + "x", "\n" * 70,
    "a" * 3000, "ab" * 700, "😀" * 50, " " * 17 + "x" + " " * 33,
    "12345678901234567890", "3.14159 2.71828 1,000,000 -42 +7 1e-10 0x1F 0b1011", "٣٤٥ ١٢ ۱۲۳ १२३४ ௧௨ 〇一二",
    "①②③ ²³ ½ ¾ Ⅻ ⅷ 𝟘𝟙𝟚 １２３４５", "2024-01-15T10:30:00Z v1.2.3 192.168.0.1 $1,234.56 50% #1",
    "日本語のテキストです。東京は大きい都市です。", "中文文本测试，包括标点符号。", "한국어 텍스트 테스트입니다.",
    "Ελληνικά κείμενο", "Русский текст, съешь же ещё этих мягких французских булок.", "עברית טקסט", "النص العربي هنا",
    "हिन्दी पाठ यहाँ है", "ภาษาไทยง่ายนิดเดียว", "ქართული ენა", "Tiếng Việt có dấu", "Ñandú çà et là, Œuvre ß ẞ",
    "mixed English 日本語 and 中文 with Ελληνικά and עברית", "e\u0301 a\u0308 n\u0303 combining: Z\u0351\u036b\u0343",
    "emoji: 👋🏽 👨‍👩‍👧‍👦 🇺🇸🇯🇵 ❤️ 🏳️‍🌈 1️⃣ ©️ ™", "😀😃😄😁 😆😅🤣😂 🙂🙃", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝓜𝓪𝓽𝓱 𐍈𐌰𐌹",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "const x = {a: 1, b: [2, 3]}; // comment\nif (x.a !== 1) { throw new Error('bad'); }",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>", "SELECT * FROM t WHERE a >= 10 AND b <> 'x';",
    "https://example.com/path?q=1&r=two#frag user@example.org", "!!!??? ... --- ___ *** ### @@@ $$$",
    "(parenthesis) [brackets] {braces} <angles> «guillemets» „quotes“ “curly” ‘single’",
    "<|begin_of_text|>Hello<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "text <|endoftext|> more<|endoftext|>", "<|eot_id", "<|reserved_special_token_250|>x", "<s> </s> <unk>",
    "\x00\x01\x02 control \x1b[31m red \x7f", "a\x1cb\x1dc\x1ed\x1fe", "tab\tseparated\tvalues\n1\t2\t3",
    "ALL CAPS SENTENCE. MiXeD CaSe. camelCaseWord snake_case_word kebab-case-word",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "\U00031350\U000105c0\U00011bc0 \U00016ea0 \U0002ebf0 new-Unicode letters",
]

FUZZ_POOL = list(" \t\n\r\u00a0\u3000\u2028aZéß1٣²Ⅻ½'sSſlLrReEvVdDmMtT!.,-_<|>()中語😀\u0301\u200d\u0e33\u0903#@$%&*")


def fuzz_strings(n, seed=1234):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(FUZZ_POOL) for _ in range(k)))
    return out


def corpus_sample(path, n, seed):
    lines = open(path, encoding="utf-8").read().split("\n")
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(len(lines)), n))
    return [lines[i] for i in picks]


def fnv_ids(ids_per_line):
    h = 0xcbf29ce484222325
    count = 0
    for ids in ids_per_line:
        for x in ids:
            for b in (x & 0xFF, (x >> 8) & 0xFF, (x >> 16) & 0xFF, (x >> 24) & 0xFF):
                h ^= b
                h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
            count += 1
    return count, "%016x" % h


FNV_OFFSET, FNV_PRIME = 0xcbf29ce484222325, 0x100000001b3


def fnv_bytes(data, h=FNV_OFFSET):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


# Run by TRANSFORMERS4_PYTHON: the slow -> fast conversion transformers 4.x does when a Llama 2
# repository has only tokenizer.model (what wrote the tokenizer.json files on the Hub).
TF4_CODE = r"""
import sys, transformers
if transformers.__version__.split(".")[0] != "4":
    sys.exit("the HF Llama 2 forms need transformers 4.x, this is " + transformers.__version__)
model, out = sys.argv[1], sys.argv[2]
for name, legacy in (("legacy", True), ("metaspace", False)):
    t = transformers.LlamaTokenizerFast(vocab_file=model, from_slow=True, legacy=legacy, add_prefix_space=True)
    t.save_pretrained(out + "/" + name)
print(transformers.__version__)
"""


def llama2_hf_forms(model_path):
    """tokenizer.json + tokenizer_config.json as transformers 4.x converts Llama 2's tokenizer.model:
    legacy=True: normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer (meta-llama/Llama-2-*-hf,
    TinyLlama); legacy=False: Metaspace(prepend_scheme="first", split=false). A third form, Metaspace
    as tokenizers < 0.19 serialised it (add_prefix_space=true: prefix every segment, split at each ▁),
    is derived from the second."""
    py = os.environ.get("TRANSFORMERS4_PYTHON", sys.executable)
    forms = {}
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([py, "-c", TF4_CODE, model_path, d], check=True, capture_output=True, text=True)
        for name in ("legacy", "metaspace"):
            tj = json.load(open(os.path.join(d, name, "tokenizer.json"), encoding="utf-8"))
            cfg = json.load(open(os.path.join(d, name, "tokenizer_config.json"), encoding="utf-8"))
            forms[name] = (tj, cfg)
    tj = json.loads(json.dumps(forms["metaspace"][0]))
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}
    forms["split"] = (tj, forms["metaspace"][1])
    return forms, r.stdout.strip().splitlines()[-1]


def llama2_hf_fixtures(sp, model_path, texts, corpora, digest, dump):
    forms, tf_version = llama2_hf_forms(model_path)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    meta = {"transformers": tf_version, "forms": {}}
    merges0 = None
    for name, (tj, cfg) in forms.items():
        assert tj["model"]["vocab"] == {p: i for i, p in enumerate(pieces)}, name
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in tj["model"]["merges"]]
        assert merges0 is None or merges == merges0, name
        merges0 = merges
        tok = Tokenizer.from_str(json.dumps(tj))
        ids = [tok.encode(x, add_special_tokens=False).ids for x in texts]
        dec = {}
        for i, v in enumerate(ids):
            d = tok.decode(v, skip_special_tokens=False)
            if d != texts[i]:
                dec[str(i)] = d
        dump("llama2_hf_%s.json" % name, {"ids": ids, "decode": dec})
        skel = json.loads(json.dumps(tj))
        skel["model"]["vocab"] = "@VOCAB@"
        skel["model"]["merges"] = "@MERGES@"
        meta["forms"][name] = {"tokenizer": json.dumps(skel, ensure_ascii=False, separators=(",", ":")),
                               "config": json.dumps(cfg, ensure_ascii=False, separators=(",", ":"))}
        if name == "legacy":
            for cname, cpath in corpora.items():
                lines = corpus_lines(cpath)
                n, h = fnv_ids([tok.encode(x, add_special_tokens=False).ids for x in lines])
                digest["llama2hf/%s" % cname] = {"lines": len(lines), "tokens": n, "fnv": h}
    h = FNV_OFFSET
    for a, b in merges0:
        h = fnv_bytes((a + " " + b + "\n").encode("utf-8"), h)
    meta["merges"] = len(merges0)
    meta["merges_fnv"] = "%016x" % h
    dump("llama2_hf.json", meta)


NFC_HAND = [
    "e\u0301", "E\u0301\u0323", "e\u0323\u0301", "a\u0301\u0323\u0308", "A\u030a", "\u212b", "\u2126 \u212a",
    "\u0344", "a\u0344", "\u0f73", "\u0f75\u0f71", "\u0958\u0959", "\u0915\u093c", "\ufb1d", "\u2adc", "\uf900\u2f800",
    "\U0002f800\U0002fa1d", "\u1100\u1161", "\u1100\u1161\u11a8", "\uac00\u11a8", "\uac01\u11a8", "\uac00\u11a7",
    "\u1100\u1176", "\u1113\u1161", "\uac00\u1161", "\u1100\u1100\u1161\u1161", "\u304b\u3099\u306f\u309a",
    "\u0b47\u0b3e\u0b47\u0b57", "\u0cc6\u0cc2\u0cd5", "\u0d46\u0d3e", "\u1025\u102e", "\u03b1\u0313\u0301\u0345",
    "\u03c9\u0345\u0342\u0314", "\u1fb7", "\u0385", "\u00a8\u0301", "u\u0308\u0304", "\u01d6\u0323",
    "a\u0334\u0301", "a\u0301\u0334", "a\u05b0\u0301\u0316", "\u0591\u05b0", "x\u0300\u0315\u0300", "\u0301abc",
    " \u0301", "\u0301\u0301\u0301", "\u1e0b\u0323", "\u1e0d\u0307", "q\u0307\u0323", "\u0073\u0323\u0307",
    "\u1e9b\u0323", "\u00c7\u0301", "\u0106\u0327", "\U00011935\U00011930", "\U00011938", "\U000105d2\u0307",
    "\U000105c9", "\U00011382\u1000", "\U000113c2\U000113b8", "\U000113c2\U000113c9", "\u1abf\u0301",
    "a\u1abf\u0316", "a\u0897\u0323", "a\u0cb3\u0c3c\u0301", "NFC \u00e9 already", "Tie\u0302\u0301ng Vie\u0323\u0302t",
]

NFC_POOL = list("aeouAEOincs 1\u00e9\u00c5\u00fc\u212b\u2126\u0958\u0344\u0f73\u0f75\u0f81\uf900\u0300\u0301\u0302"
                "\u0308\u0323\u0327\u0328\u031b\u0334\u0345\u05b0\u093c\u094d\u3099\u309a\u304b\u306f\u1100\u1101"
                "\u1161\u1162\u11a8\u11a9\uac00\uac01\u0cc6\u0cc2\u0cd5\u0b47\u0b3e\u0b57\u03b1\u03c9\u03b9\u0313"
                "\u0314\u0342\u1abf\u0897\u0307") + ["\U0002f800", "\U00011935", "\U00011930", "\U000105d2"]


def nfc_inputs():
    out = list(NFC_HAND)
    decomp = {}
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        d = ud.decomposition(chr(cp))
        if d and not d.startswith("<"):
            decomp[cp] = [int(x, 16) for x in d.split()]
            out.append(ud.normalize("NFD", chr(cp)))
            if ud.normalize("NFC", chr(cp)) != chr(cp):
                out.append(chr(cp))
    rng = random.Random(99)
    marks = [0x0316, 0x0334, 0x0345, 0x05B0, 0x0301, 0x0323]
    for cp in range(0x110000):  # every combining mark, between marks of classes 230 and 220
        if ud.combining(chr(cp)):
            out.append("e\u0301" + chr(cp) + "\u0323")
    for cp, p in sorted(decomp.items()):  # every composition, with a mark between (blocked or not)
        if len(p) == 2 and ud.normalize("NFC", chr(cp)) == chr(cp):
            out.append(chr(p[0]) + chr(rng.choice(marks)) + chr(p[1]))
    for s in range(0, 11172, 97):  # Hangul
        out.append(ud.normalize("NFD", chr(0xAC00 + s)) + chr(0x11A8 + s % 27))
    for _ in range(600):
        out.append("".join(rng.choice(NFC_POOL) for _ in range(rng.randint(1, 10))))
    return out


def nfc_fixtures(texts, qwen_nfc, dump):
    from tokenizers import normalizers
    hf = normalizers.NFC()
    inputs = nfc_inputs()
    cases = [[x, ud.normalize("NFC", x)] for x in inputs]
    hf_diff = {str(i): hf.normalize_str(x) for i, x in enumerate(inputs) if hf.normalize_str(x) != cases[i][1]}
    dump("nfc.json", {"unicode": ud.unidata_version, "cases": cases, "hf": hf_diff})
    # Qwen2-style tokenizer: texts that are not NFC (and a few that are)
    nd = [ud.normalize("NFD", x) for x in ("Tiếng Việt có dấu", "Ñandú çà et là, Œuvre", "한국어 텍스트 테스트입니다.",
                                           "Ελληνικά κείμενο ώρα", "がぎぐげご パピプペポ", "Åström's café naïve 123")]
    qt = [x for x in texts if ud.normalize("NFC", x) != x] + NFC_HAND + nd + inputs[-300:] + texts[:40]
    ids = [qwen_nfc.encode(x, add_special_tokens=False).ids for x in qt]
    dec = {}
    for i, v in enumerate(ids):
        d = qwen_nfc.decode(v)
        if d != qt[i]:
            dec[str(i)] = d
    dump("qwen2nfc.json", {"texts": qt, "ids": ids, "decode": dec})


def llama2_unused_fixture(sp, model_path, texts, corpora, digest, dump):
    """Marks pieces UNUSED: sentencepiece still merges through them but splits an unused result
    back into the pair it came from. Early merges (many words pass through them), a spread of
    later ones, and single characters."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(open(model_path, "rb").read())
    unused = list(range(259, 420)) + list(range(420, 29000, 61))
    unused += [sp.piece_to_id(c) for c in ("é", "ö", "日", "本", "z", "q")]
    unused = sorted(set(unused))
    for i in unused:
        assert m.pieces[i].type == m.pieces[i].NORMAL, i
        m.pieces[i].type = m.pieces[i].UNUSED
    spu = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    ids = [spu.encode(x) for x in texts]
    print("unused pieces change", sum(a != sp.encode(x) for a, x in zip(ids, texts)), "of", len(texts), "texts")
    dump("llama2_unused.json", {"unused": unused, "ids": ids})
    for cname, cpath in corpora.items():
        lines = corpus_lines(cpath)
        n, h = fnv_ids([spu.encode(x) for x in lines])
        digest["llama2unused/%s" % cname] = {"lines": len(lines), "tokens": n, "fnv": h}


def corpus_lines(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def main():
    os.makedirs(OUT, exist_ok=True)
    tok_dir = os.path.join(DATA, "tokenizers")
    llama3 = Tokenizer.from_file(os.path.join(tok_dir, "llama3", "tokenizer.json"))
    j = json.load(open(os.path.join(tok_dir, "llama3", "tokenizer.json"), encoding="utf-8"))
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2_RE
    qwen = Tokenizer.from_str(json.dumps(j))
    j["normalizer"] = {"type": "NFC"}
    qwen_nfc = Tokenizer.from_str(json.dumps(j))
    gpt2 = Tokenizer(models.BPE.from_file(os.path.join(tok_dir, "gpt2", "encoder.json"),
                                          os.path.join(tok_dir, "gpt2", "vocab.bpe")))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.add_special_tokens(["<|endoftext|>"])
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "llama2", "tokenizer.model"))

    corpora = {name: os.path.join(DATA, "corpora", name + ".txt") for name in ("austen", "brown")}
    texts = HARD + fuzz_strings(400) + corpus_sample(corpora["austen"], 150, 1) + corpus_sample(corpora["brown"], 150, 2)
    # Multi-line chunks: newline handling across lines matters for document-level encoding.
    a = open(corpora["austen"], encoding="utf-8").read()
    texts += [a[i:i + 600] for i in (1000, 200000, 3000000)]

    def enc_hf(t):
        return [t.encode(x, add_special_tokens=False).ids for x in texts]

    dump = lambda name, obj: json.dump(obj, open(os.path.join(OUT, name), "w", encoding="utf-8"),
                                       ensure_ascii=False, separators=(",", ":"))
    dump("texts.json", texts)
    dump("llama3.json", enc_hf(llama3))
    dump("gpt2.json", enc_hf(gpt2))
    dump("qwen2pat.json", enc_hf(qwen))
    dump("llama2_spm.json", [sp.encode(x) for x in texts])

    digest = {}
    for cname, cpath in corpora.items():
        lines = corpus_lines(cpath)
        for tname, enc in (("llama3", lambda x: llama3.encode(x, add_special_tokens=False).ids),
                           ("gpt2", lambda x: gpt2.encode(x, add_special_tokens=False).ids),
                           ("llama2", sp.encode)):
            ids = [enc(x) for x in lines]
            n, h = fnv_ids(ids)
            digest["%s/%s" % (tname, cname)] = {"lines": len(lines), "tokens": n, "fnv": h}
    nfc_fixtures(texts, qwen_nfc, dump)
    llama2_unused_fixture(sp, os.path.join(tok_dir, "llama2", "tokenizer.model"), texts, corpora, digest, dump)
    llama2_hf_fixtures(sp, os.path.join(tok_dir, "llama2", "tokenizer.model"), texts, corpora, digest, dump)
    dump("corpus_digest.json", digest)
    print("wrote", OUT, len(texts), "texts")


if __name__ == "__main__":
    main()
