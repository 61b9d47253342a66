#!/usr/bin/env python3
"""Writes test/fixtures/tokenizer/*.json: reference token ids from Hugging Face tokenizers and
the sentencepiece library, for test/test_tokenizer.c.

    pip install tokenizers sentencepiece
    python3 test/ref/tokenizer_fixtures.py [SHARED_DATA_DIR]      # default ../shared/data

Outputs (all small):
  texts.json        the test strings: hard cases + a fuzz set + a sample of corpus lines
  llama3.json       ids of each text, Llama 3 tokenizer.json, encode(t, add_special_tokens=False)
  gpt2.json         GPT-2 (encoder.json + vocab.bpe as a HF BPE + ByteLevel tokenizer)
  qwen2pat.json     Llama 3 vocabulary with the Qwen2 pre-tokenizer regex
  llama2_spm.json   Llama 2 tokenizer.model through sentencepiece (no special-token matching)
  corpus_digest.json  for every line of each corpus: count and FNV-1a digest of all ids, per
                    tokenizer, so the C test checks the whole corpora without storing ids
"""
import json
import os
import random
import sys

import sentencepiece as spm
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


def main():
    os.makedirs(OUT, exist_ok=True)
    tok_dir = os.path.join(DATA, "tokenizers")
    llama3 = Tokenizer.from_file(os.path.join(tok_dir, "llama3", "tokenizer.json"))
    j = json.load(open(os.path.join(tok_dir, "llama3", "tokenizer.json"), encoding="utf-8"))
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2_RE
    qwen = Tokenizer.from_str(json.dumps(j))
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
        lines = open(cpath, encoding="utf-8").read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for tname, enc in (("llama3", lambda x: llama3.encode(x, add_special_tokens=False).ids),
                           ("gpt2", lambda x: gpt2.encode(x, add_special_tokens=False).ids),
                           ("llama2", sp.encode)):
            ids = [enc(x) for x in lines]
            n, h = fnv_ids(ids)
            digest["%s/%s" % (tname, cname)] = {"lines": len(lines), "tokens": n, "fnv": h}
    dump("corpus_digest.json", digest)
    print("wrote", OUT, len(texts), "texts")


if __name__ == "__main__":
    main()
