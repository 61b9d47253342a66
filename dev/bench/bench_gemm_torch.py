#!/usr/bin/env python3
"""The PyTorch side of dev/bench/bench_gemm.cu: the same Llama-3-8B linear shapes (M = 8192 tokens)
and GEMMs (forward, grad_input, grad_weight) with torch.matmul (bf16) and torch._scaled_mm
(fp8 tensorwise: e4m3 forward, e5m2 gradients; rowwise: e4m3, per-row / per-column fp32 scales;
blockwise 1x128 x 128x128 where this torch offers it). Operands are random and cast once; the GEMM
alone is timed (CUDA events, warm-up, median). Differences from bench_gemm: grad_weight writes
bf16 (torch has no fp32 beta=1 accumulate through _scaled_mm). Prints a markdown table.
    python3 dev/bench/bench_gemm_torch.py [--tokens 8192] [--iters 20] [--warmup 5]
"""
import argparse
import statistics

import torch

SHAPES = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096)]
E4, E5 = torch.float8_e4m3fn, torch.float8_e5m2


def time_ms(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def cast(t, dtype, axis=None):
    """fp8 codes and dequantization scale(s) (amax / fp8_max) of t: tensorwise, or per row (axis=-1)."""
    fmax = torch.finfo(dtype).max
    amax = t.abs().amax() if axis is None else t.abs().amax(dim=axis, keepdim=True)
    scale = fmax / amax.float().clamp(min=1e-12)
    q = (t.float() * scale).clamp(-fmax, fmax).to(dtype)
    return q, scale.reciprocal()


def block_cast(t, block_rows):
    """e4m3 codes of t [R, C] with one scale per 1x128 (block_rows=1) or 128x128 block: scales [R/br, C/128]."""
    R, C = t.shape
    v = t.float().reshape(R // block_rows, block_rows, C // 128, 128)
    amax = v.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12)
    q = (v * (448.0 / amax)).clamp(-448, 448).to(E4).reshape(R, C)
    return q, (amax / 448.0).reshape(R // block_rows, C // 128)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak16 = 989.4e12  # dense bf16, H100 / H200 SXM (as gpu_peak_bf16_flops); fp8 twice that
    peak8 = 2 * peak16
    print(f"bench_gemm_torch: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"blas {torch.backends.cuda.preferred_blas_library()}; tokens {a.tokens}, median of {a.iters}")
    print("| shape | GEMM | out x red. | torch bf16 TFLOP/s (SOL) | _scaled_mm tensorwise | _scaled_mm rowwise "
          "| _scaled_mm blockwise |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    notes = []
    N = a.tokens
    for sname, K, M in SHAPES:
        torch.manual_seed(0)
        x = torch.empty(N, K, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
        w = torch.empty(M, K, device=dev, dtype=torch.bfloat16).uniform_(-0.02, 0.02)
        g = torch.empty(N, M, device=dev, dtype=torch.bfloat16).uniform_(-1e-4, 1e-4)
        wt, gt, xt = w.t().contiguous(), g.t().contiguous(), x.t().contiguous()
        # (P [rows, red] row-major, Q [cols, red] row-major): out = P @ Q^T, as bench_gemm's GEMMs
        gemms = [("fwd", x, w, True), ("dinp", g, wt, False), ("dW", gt, xt, False)]
        for gname, P, Q, fast in gemms:
            flops = 2.0 * N * K * M
            t16 = time_ms(lambda: torch.matmul(P, Q.t()), a.iters, a.warmup)
            row = f"| {sname} {K}->{M} | {gname} | {P.shape[0]}x{Q.shape[0]} x {P.shape[1]} | " \
                  f"{flops / t16 / 1e9:.0f} ({100 * flops / t16 / 1e9 / peak16 * 1e12:.0f}%) |"
            cells = []
            # tensorwise: gradients (P of dinp / dW) in e5m2
            try:
                pq, ps = cast(P, E4 if gname == "fwd" else E5)
                qq, qs = cast(Q, E4)
                f = lambda: torch._scaled_mm(pq, qq.t(), scale_a=ps, scale_b=qs, out_dtype=torch.bfloat16,
                                             use_fast_accum=fast)
                cells.append(time_ms(f, a.iters, a.warmup))
            except Exception as e:  # noqa: BLE001 - report and go on
                cells.append(None)
                notes.append(f"{sname} {gname} tensorwise: {type(e).__name__}: {str(e).splitlines()[0]}")
            # rowwise: e4m3, scale_a [rows, 1], scale_b [1, cols]
            try:
                pq, ps = cast(P, E4, axis=-1)
                qq, qs = cast(Q, E4, axis=-1)
                qs = qs.reshape(1, -1)
                f = lambda: torch._scaled_mm(pq, qq.t(), scale_a=ps, scale_b=qs, out_dtype=torch.bfloat16,
                                             use_fast_accum=fast)
                cells.append(time_ms(f, a.iters, a.warmup))
            except Exception as e:  # noqa: BLE001
                cells.append(None)
                notes.append(f"{sname} {gname} rowwise: {type(e).__name__}: {str(e).splitlines()[0]}")
            # blockwise: P 1x128, Q 128x128 (dW: both 1x128), through torch.nn.functional.scaled_mm
            # (torch >= 2.10, ScalingType recipes): 1x128 scales outer-dim-major, 128x128 scales
            # [cols/128, L4] (L4 = red/128 rounded up to 4) passed transposed — cuBLASLt's layouts.
            try:
                F = torch.nn.functional
                if not hasattr(F, "scaled_mm"):
                    raise RuntimeError("this torch has no torch.nn.functional.scaled_mm (blockwise needs torch >= 2.10)")
                ST = F.ScalingType
                pq, ps = block_cast(P, 1)
                ps = ps.t().contiguous().t()
                if gname == "dW":
                    qq, qs = block_cast(Q, 1)
                    qs, qrec = qs.t().contiguous().t(), ST.BlockWise1x128
                else:
                    qq, qs = block_cast(Q, 128)
                    qs, qrec = F.pad(qs, (0, -qs.shape[1] % 4)).t(), ST.BlockWise128x128
                f = lambda: F.scaled_mm(pq, qq.t(), ps, ST.BlockWise1x128, qs, qrec, output_dtype=torch.bfloat16)
                cells.append(time_ms(f, a.iters, a.warmup))
            except Exception as e:  # noqa: BLE001
                cells.append(None)
                notes.append(f"{sname} {gname} blockwise: {type(e).__name__}: {str(e).splitlines()[0]}")
            for t in cells:
                if t is None:
                    row += " n/a |"
                else:
                    tf = flops / t / 1e9
                    row += f" {tf:.0f} ({100 * tf / peak8 * 1e12:.0f}%) {t16 / t:.2f}x |"
            print(row, flush=True)
        del x, w, g, wt, gt, xt
        torch.cuda.empty_cache()
    if notes:
        print("\nnot run:")
        for n in notes:
            print("  " + n)


if __name__ == "__main__":
    main()
