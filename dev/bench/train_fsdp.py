#!/usr/bin/env python3
"""PyTorch FSDP2 baseline for train_llama --zero (issue 9): the Llama of dev/bench/train_torch.py (imported, not
copied), data parallel over the ranks of torchrun, torchtitan's recipe:
  - the model is built on the meta device, each transformer block and then the root wrapped with FSDP2
    (torch.distributed.fsdp.fully_shard, parameters sharded along dim 0 over all ranks; uneven shards are
    padded, so no size has to divide by the world size), materialised with to_empty and initialised there
    as train_torch.py initialises it (normal(0, 0.02) for matrices, ones for the norms);
  - MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): fp32 sharded masters, bf16 all-gathers and
    compute, fp32 gradient reduce-scatters; the forward also runs under bf16 autocast, as train_torch.py's
    (a no-op for the bf16 parameters, the same fp32 loss);
  - torch.compile per transformer block, applied before fully_shard (torchtitan's apply_compile then
    apply_fsdp: the FSDP hooks stay outside the compiled graphs);
  - fused AdamW on the DTensor shards (lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices,
    train_torch.py's make_optimizer), gradient-norm clip at 1.0 (torchtitan's: total norm of the DTensor
    gradients, one all-reduce, then clip_grads_with_norm_);
  - --float8 R: torchao's convert_to_float8_training (train_torch.py's module filter: the LM head and Linears
    with a dimension not a multiple of 16 stay bf16) on the meta model, before compile and sharding; with
    tensorwise scaling, enable_fsdp_float8_all_gather (weights all-gathered in fp8) and
    precompute_float8_dynamic_scale_for_fsdp after each optimizer step, as torchtitan does (--fp8-all-gather:
    auto = on for tensorwise; torchao supports it for tensorwise only).
--reshard-after-forward 1 (default) frees each block's gathered parameters after its forward and gathers
them again for backward (ZeRO-3); 0 keeps them until backward (ZeRO-2-like, more memory, fewer all-gathers).
The root module keeps its parameters after forward either way (FSDP2's rule for the root).

Synthetic tokens, a per-rank seed; --warmup steps (compilation among them) are not timed; the timed steps run
between a barrier + synchronize and CUDA events, and the slowest rank's mean step time gives the throughput.
Rank 0 prints one JSON line: "tok_s" (= "tok_s_per_gpu": batch*seq per step per GPU), "tok_s_total" (world
times that), "world", "ms" (mean step, slowest rank), "peak_gib" (torch.cuda.max_memory_allocated over the
timed steps, max over ranks), "in_use_gib" (device total minus free at the end, max over ranks: context, NCCL
and the caching allocator's pool included, as train_llama's "GPU memory in use"), "float8", "sol", ...
A run out of memory prints {"error": "OOM", ...} from the rank that ran out and exits 1 (torchrun then
stops the other ranks).

Usage (one machine, N GPUs):
  torchrun --standalone --nproc_per_node N dev/bench/train_fsdp.py CONFIG_JSON --batch 4 --seq 2048 --steps 15
  torchrun --standalone --nproc_per_node 4 dev/bench/train_fsdp.py test/fixtures/configs/llama31_8b.json \\
      --batch 1 --seq 2048 --steps 10 --float8 tensorwise
  torchrun --standalone --nproc_per_node 2 dev/bench/train_fsdp.py TINY_CONFIG --device cpu --no-compile \\
      --batch 1 --seq 64 --steps 2 --warmup 1          (a functional check on the CPU, gloo)
--batch is per GPU (train_llama's -b on each rank); the global batch is batch * world.
"""
import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_torch import FLOAT8, Llama, float8_filter, make_optimizer, peak_bf16_flops  # noqa: E402

G = 2.0 ** 30


def parse_args():
    ap = argparse.ArgumentParser(description="PyTorch FSDP2 (+torch.compile) training baseline; start with torchrun")
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=4, help="sequences per GPU per step")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=15, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens in the first)")
    ap.add_argument("--float8", default="none", choices=FLOAT8,
                    help="torchao float8 training recipe for the Linears (Float8LinearConfig.from_recipe_name)")
    ap.add_argument("--fp8-all-gather", default="auto", choices=("auto", "0", "1"),
                    help="FSDP2 all-gathers the fp8 weights (enable_fsdp_float8_all_gather; tensorwise only). "
                         "auto: on for tensorwise")
    ap.add_argument("--reshard-after-forward", type=int, default=1, choices=(0, 1),
                    help="1: free each block's gathered parameters after forward (ZeRO-3); 0: keep them (ZeRO-2-like)")
    ap.add_argument("--compile-blocks", action="store_true",
                    help="compile each transformer block (the default here; accepted for train_torch.py's flag set)")
    ap.add_argument("--no-compile", action="store_true", help="eager blocks")
    ap.add_argument("--split-linears", action="store_true",
                    help="separate q/k/v and gate/up Linears (Hugging Face's modules) instead of fused ones")
    ap.add_argument("--adamw", default="fused", choices=("fused", "foreach"), help="torch.optim.AdamW implementation")
    ap.add_argument("--device", default="cuda", help="cuda (default, NCCL) or cpu (gloo: a functional check)")
    ap.add_argument("--dist-timeout", type=float, default=600, help="seconds a collective may wait before the job aborts")
    return ap.parse_args()


def main():
    a = parse_args()
    need = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [v for v in need if v not in os.environ]
    if missing:
        sys.exit("train_fsdp.py: %s not set: start it with torchrun, e.g.\n  torchrun --standalone --nproc_per_node 2 "
                 "dev/bench/train_fsdp.py %s --batch %d --seq %d\n(a single-process PyTorch baseline is "
                 "dev/bench/train_torch.py)" % (", ".join(missing), a.config, a.batch, a.seq))
    if a.steps < 1 or a.warmup < 0 or a.batch < 1 or a.seq < 1:
        sys.exit("train_fsdp.py: --steps, --batch and --seq must be >= 1, --warmup >= 0")
    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = a.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            sys.exit("train_fsdp.py: --device cuda but torch sees no GPU")
        ngpu = torch.cuda.device_count()
        if local_world > ngpu:
            sys.exit("train_fsdp.py: %d ranks on this machine but %d GPUs visible: one GPU per rank "
                     "(--nproc_per_node <= %d)" % (local_world, ngpu, ngpu))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    fp8_ag = a.float8 == "tensorwise" if a.fp8_all_gather == "auto" else a.fp8_all_gather == "1"
    if fp8_ag and a.float8 != "tensorwise":
        sys.exit("train_fsdp.py: --fp8-all-gather 1 needs --float8 tensorwise (torchao's float8 all-gather supports "
                 "tensorwise scaling only), got --float8 %s" % a.float8)

    c = json.load(open(a.config))
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    L = c["num_hidden_layers"]

    # NVLink multicast stays off (shared machines: it can take the host's GPUs out of service), as dist/launch_local.sh
    for v in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
        os.environ.setdefault(v, "0" if v == "NCCL_NVLS_ENABLE" else "1")
    pg_kw = dict(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=a.dist_timeout))
    if cuda:
        pg_kw["device_id"] = dev  # eager NCCL communicator set-up, bound to this rank's GPU
    dist.init_process_group(**pg_kw)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("dp",))

    # the same parameters on every rank; DTensor's random ops give each shard its part of one stream
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Llama(c, a.split_linears)
    V, D = c["vocab_size"], c["hidden_size"]
    n_params = sum(p.numel() for p in model.parameters())
    # train_llama's flops_per_token (as train_torch.py): 6 per matmul parameter, the embedding gather excluded
    # unless tied to the LM head, plus causal attention 6 * layers * heads * head_dim * T
    mm_params = n_params - (0 if c.get("tie_word_embeddings") else V * D)
    fpt = 6.0 * mm_params + 6.0 * L * c["num_attention_heads"] * c["head_dim"] * a.seq

    if a.float8 != "none":
        try:
            from torchao.float8 import Float8LinearConfig, convert_to_float8_training
        except ImportError as e:
            sys.exit("train_fsdp.py --float8 %s: torchao is not importable (%s). Install torchao 0.18 (e.g. pip "
                     "install --target /tmp/site torchao-*.whl; export PYTHONPATH=/tmp/site)" % (a.float8, e))
        config = Float8LinearConfig.from_recipe_name(a.float8)
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=fp8_ag, emulate=not cuda)
        convert_to_float8_training(model, config=config, module_filter_fn=float8_filter)
        if rank == 0:
            n8 = sum(1 for n, m in model.named_modules() if type(m).__name__ == "Float8Linear")
            print("float8 %s: %d Linears in fp8, fp8 all-gather %s" % (a.float8, n8, "on" if fp8_ag else "off"),
                  file=sys.stderr)

    if not a.no_compile:
        if hasattr(torch._dynamo.config, "recompile_limit"):  # one graph serves every block; room should guards differ
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * L)
        for i in range(L):
            model.blocks[i] = torch.compile(model.blocks[i])
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for b in model.blocks:
        fully_shard(b, mesh=mesh, mp_policy=mp, reshard_after_forward=bool(a.reshard_after_forward))
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=bool(a.reshard_after_forward))
    model.to_empty(device=dev)
    with torch.no_grad():  # train_torch.py's initialisation (Llama.__init__ did nothing on the meta device)
        for m in model.modules():
            if isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for p in model.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    if a.adamw == "fused":
        opt = make_optimizer("torch-adamw", model)
    else:
        decay = [p for p in model.parameters() if p.dim() == 2]
        other = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    precompute = None
    if fp8_ag:
        from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp as precompute
    params = [p for p in model.parameters()]

    def clip(max_norm):
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, 2.0, False, None)
        if hasattr(norm, "full_tensor"):  # a DTensor (partial sums of the shards): one all-reduce
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, None)
        return norm

    gen = torch.Generator(device=dev)
    gen.manual_seed(1000 + rank)  # each rank its own tokens, as data parallelism sees them

    def step():
        idx = torch.randint(0, V, (a.batch, a.seq), device=dev, generator=gen)
        tgt = torch.randint(0, V, (a.batch, a.seq), device=dev, generator=gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(idx, tgt)
        loss.backward()
        clip(1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if precompute is not None:
            precompute(model)
        return loss

    impl = "pytorch-fsdp2" + ("" if a.no_compile else "+compile-blocks")
    base = {"impl": impl, "optim": "torch-adamw-" + a.adamw, "world": world, "batch": a.batch, "seq": a.seq,
            "float8": a.float8, "fp8_all_gather": fp8_ag, "reshard_after_forward": a.reshard_after_forward,
            "split_linears": a.split_linears, "params": n_params}
    try:
        for _ in range(a.warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        dist.barrier()
        if cuda:
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
        else:
            w0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        if cuda:
            t1.record()
            torch.cuda.synchronize()
            ms = t0.elapsed_time(t1) / a.steps
        else:
            ms = (time.perf_counter() - w0) * 1e3 / a.steps
    except torch.OutOfMemoryError:
        base.update(error="OOM", rank=rank, peak_gib=torch.cuda.max_memory_allocated() / G if cuda else None)
        print(json.dumps(base), flush=True)
        sys.exit(1)

    # the slowest rank sets the pace; memory: the largest rank's
    peak = torch.cuda.max_memory_allocated() / G if cuda else 0.0
    in_use = (lambda fr: (fr[1] - fr[0]) / G)(torch.cuda.mem_get_info()) if cuda else 0.0
    stats = torch.tensor([ms, peak, in_use, loss.item()], dtype=torch.float64, device=dev)
    mx = stats.clone()
    dist.all_reduce(mx, op=dist.ReduceOp.MAX)
    dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    ms_max, peak_max, in_use_max = mx[0].item(), mx[1].item(), mx[2].item()
    tps = a.batch * a.seq / (ms_max / 1e3)
    if rank == 0:
        base.update(tok_s=tps, tok_s_per_gpu=tps, tok_s_total=tps * world, ms=ms_max, ms_mean_ranks=stats[0].item() / world,
                    peak_gib=peak_max if cuda else None, in_use_gib=in_use_max if cuda else None,
                    peak_gib_rank0=peak if cuda else None, loss=stats[3].item() / world, flops_per_token=fpt,
                    sol=tps * fpt / peak_bf16_flops(dev) if cuda else None)
        print(json.dumps(base), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
