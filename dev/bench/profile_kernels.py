#!/usr/bin/env python3
"""Aggregates an ncu CSV (gpu__time_duration.sum per kernel launch) into a per-kernel
table: total time, share, launches. Usage: python3 dev/bench/profile_kernels.py ncu.csv"""
import csv
import sys
from collections import defaultdict


def main():
    rows = list(csv.reader(open(sys.argv[1])))
    hdr_i = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    hdr = rows[hdr_i]
    kn, mn, mv, unit = (hdr.index("Kernel Name"), hdr.index("Metric Name"), hdr.index("Metric Value"),
                        hdr.index("Metric Unit"))
    tot = defaultdict(float)
    cnt = defaultdict(int)
    for r in rows[hdr_i + 1:]:
        if len(r) <= mv or r[mn] != "gpu__time_duration.sum":
            continue
        v = float(r[mv].replace(",", ""))
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r[unit]]
        name = r[kn].split("(")[0][:70]
        tot[name] += v * scale
        cnt[name] += 1
    total = sum(tot.values())
    print(f"{'kernel':72s} {'us':>10s} {'share':>7s} {'calls':>6s}")
    for k, v in sorted(tot.items(), key=lambda x: -x[1])[:25]:
        print(f"{k:72s} {v:10.1f} {100 * v / total:6.1f}% {cnt[k]:6d}")
    print(f"{'total':72s} {total:10.1f}")


if __name__ == "__main__":
    main()
