#!/usr/bin/env python3
"""Writes data/unicode_tables.h: the Unicode character classes the pre-tokenizer regexes use,
and (with --nfc) data/unicode_nfc_tables.h: the data of Unicode NFC normalization.

    pip install unicodedata2==16.0.0     # same Unicode version as HF tokenizers' Oniguruma
    python3 dev/gen_unicode.py > data/unicode_tables.h
    UNICODE9_PYTHON=python3.6 python3 dev/gen_unicode.py --nfc > data/unicode_nfc_tables.h

Why Unicode 16.0: Hugging Face tokenizers runs its Split regexes through Oniguruma 6.9.10,
whose tables are Unicode 16.0 (probed: U+11BC0 Sunuwar, new in 16.0, is \\p{L} there; U+16EA0,
new in 17.0, is not). Python's own unicodedata lags (3.11 has 14.0), so the script prefers the
unicodedata2 backport and refuses a version other than 16.0 unless --any-version is given.

Format: one sorted array of uint32 (start << 8 | flags); a range runs to the next entry's start.
Flags: general category L subcategories, N, M, and the White_Space property (which is what
Oniguruma's \\s means for Unicode text; unicodedata does not expose it, so it is listed here from
PropList.txt, unchanged since Unicode 6.3).

NFC tables (--nfc), from the same Unicode 16.0 data: canonical combining classes as runs; every
canonical decomposition (one level, as UnicodeData.txt lists it; Hangul syllables are algorithmic
and not listed); which of them are primary composites (not excluded from composition: a
decomposable character is excluded exactly when NFC does not give it back). HF tokenizers'
NFC normalizer is unicode-normalization-alignments 0.1.12, whose tables are Unicode 9.0 (probed:
tokenizers 0.23.3 agrees with Python 3.6's unicodedata 9.0.0 on all of test/fixtures/tokenizer/
nfc.json and with no later version), so the tables also list the code points that have an NFC role
(non-zero class, a decomposition, or a part in one) in 16.0 but were unassigned in 9.0: for the HF
mode they are inert, which is exactly 9.0's behaviour (Unicode's stability policy never changes
the class or decomposition of an assigned character and excludes new composites of old
sequences). The 9.0 assignments come from a Python whose own unicodedata is 9.0.0 (Python 3.6),
named by $UNICODE9_PYTHON.
"""
import json
import os
import shutil
import subprocess
import sys

try:
    import unicodedata2 as ud
except ImportError:  # fall back to the interpreter's tables
    import unicodedata as ud

WANT = "16.0.0"
if ud.unidata_version != WANT and "--any-version" not in sys.argv:
    sys.exit(f"unicode data is {ud.unidata_version}, want {WANT}: pip install unicodedata2=={WANT}")

WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
               (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]
BITS = {"Lu": 0x01, "Ll": 0x02, "Lt": 0x04, "Lm": 0x08, "Lo": 0x10,
        "Nd": 0x20, "Nl": 0x20, "No": 0x20, "Mn": 0x40, "Mc": 0x40, "Me": 0x40}
WS_BIT = 0x80



def emit_array(out, decl, values, per_row, fmt):
    out.append(decl + " = {")
    for i in range(0, len(values), per_row):
        out.append("    " + ",".join(fmt % v for v in values[i:i + per_row]) + ",")
    out.append("};")


def unicode9_assigned():
    py = os.environ.get("UNICODE9_PYTHON") or shutil.which("python3.6")
    if not py:
        sys.exit("--nfc needs a Python whose unicodedata is 9.0.0 (Python 3.6): set UNICODE9_PYTHON")
    code = ("import unicodedata, json; print(json.dumps([unicodedata.unidata_version, "
            "[c for c in range(0x110000) if unicodedata.category(chr(c)) != 'Cn']]))")
    version, assigned = json.loads(subprocess.run([py, "-c", code], check=True, capture_output=True,
                                                  text=True).stdout)
    if version != "9.0.0":
        sys.exit("%s has unicodedata %s, want 9.0.0" % (py, version))
    return set(assigned)


def nfc_tables():
    decomp = {}
    for cp in range(0x110000):
        d = ud.decomposition(chr(cp))
        if d and not d.startswith("<"):
            parts = [int(x, 16) for x in d.split()]
            assert 1 <= len(parts) <= 2, hex(cp)
            decomp[cp] = parts
    comp = [cp for cp, p in decomp.items() if len(p) == 2 and ud.normalize("NFC", chr(cp)) == chr(cp)]
    keys = sorted(decomp)
    index = {cp: i for i, cp in enumerate(keys)}
    comp.sort(key=lambda cp: (decomp[cp][0], decomp[cp][1]))
    assert len(keys) < 65536
    ccc_runs = []
    prev = None
    for cp in range(0x110000):
        c = ud.combining(chr(cp))
        if c != prev:
            ccc_runs.append((cp, c))
            prev = c
    parts = set(p for ps in decomp.values() for p in ps)
    old = unicode9_assigned()
    new = [cp for cp in range(0x110000)
           if (ud.combining(chr(cp)) or cp in decomp or cp in parts) and cp not in old]
    ranges = []
    for cp in new:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])

    out = []
    out.append("// Generated by dev/gen_unicode.py --nfc from Unicode %s. Do not edit." % ud.unidata_version)
    out.append("#ifndef LLAMA_AO_DATA_UNICODE_NFC_TABLES_H")
    out.append("#define LLAMA_AO_DATA_UNICODE_NFC_TABLES_H")
    out.append("#include <stdint.h>")
    out.append('#define NFC_TABLES_VERSION "%s"' % ud.unidata_version)
    out.append("// Canonical combining class: (start << 8 | class); a run lasts to the next entry's start.")
    out.append("#define NFC_CCC_RUNS_N %d" % len(ccc_runs))
    emit_array(out, "static const uint32_t nfc_ccc_runs[NFC_CCC_RUNS_N]", [a << 8 | c for a, c in ccc_runs], 10,
               "0x%x")
    out.append("// Canonical decompositions, one level: (cp << 42 | first << 21 | second), second 0 for a")
    out.append("// singleton; sorted by cp.")
    out.append("#define NFC_DECOMP_N %d" % len(keys))
    emit_array(out, "static const uint64_t nfc_decomp[NFC_DECOMP_N]",
               [cp << 42 | decomp[cp][0] << 21 | (decomp[cp][1] if len(decomp[cp]) == 2 else 0) for cp in keys],
               6, "0x%xull")
    out.append("// Primary composites (decompositions NFC recomposes): indices into nfc_decomp, sorted by")
    out.append("// (first, second).")
    out.append("#define NFC_COMP_N %d" % len(comp))
    emit_array(out, "static const uint16_t nfc_comp[NFC_COMP_N]", [index[cp] for cp in comp], 14, "%d")
    out.append("// Code points with an NFC role in %s that Unicode 9.0 (HF tokenizers' NFC) did not" %
               ud.unidata_version)
    out.append("// assign: inclusive ranges.")
    out.append("#define NFC_NEW_SINCE_9_0_N %d" % len(ranges))
    emit_array(out, "static const uint32_t nfc_new_since_9_0[NFC_NEW_SINCE_9_0_N][2]",
               ["{0x%x,0x%x}" % (a, b) for a, b in ranges], 6, "%s")
    out.append("#endif")
    print("\n".join(out))


if "--nfc" in sys.argv:
    nfc_tables()
    sys.exit(0)

ws = set()
for a, b in WHITE_SPACE:
    ws.update(range(a, b + 1))

entries = []
prev = None
for cp in range(0x110000):
    f = BITS.get(ud.category(chr(cp)), 0) | (WS_BIT if cp in ws else 0)
    if f != prev:
        entries.append((cp, f))
        prev = f

out = []
out.append("// Generated by dev/gen_unicode.py from Unicode %s. Do not edit." % ud.unidata_version)
out.append("// Sorted (start << 8 | flags); each range runs to the next entry's start.")
out.append("#ifndef LLAMA_AO_DATA_UNICODE_TABLES_H")
out.append("#define LLAMA_AO_DATA_UNICODE_TABLES_H")
out.append("#include <stdint.h>")
out.append('#define UNICODE_TABLES_VERSION "%s"' % ud.unidata_version)
out.append("#define UCAT_LU 0x01u")
out.append("#define UCAT_LL 0x02u")
out.append("#define UCAT_LT 0x04u")
out.append("#define UCAT_LM 0x08u")
out.append("#define UCAT_LO 0x10u")
out.append("#define UCAT_L 0x1Fu")
out.append("#define UCAT_N 0x20u")
out.append("#define UCAT_M 0x40u")
out.append("#define UCAT_WS 0x80u")
out.append("#define UNICODE_RANGES_N %d" % len(entries))
out.append("static const uint32_t unicode_ranges[UNICODE_RANGES_N] = {")
row = []
for cp, f in entries:
    row.append("0x%x" % (cp << 8 | f))
    if len(row) == 10:
        out.append("    " + ",".join(row) + ",")
        row = []
if row:
    out.append("    " + ",".join(row) + ",")
out.append("};")
out.append("#endif")
print("\n".join(out))
