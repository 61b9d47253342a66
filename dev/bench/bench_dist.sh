#!/usr/bin/env bash
# Multi-GPU throughput (issue 9): train_llama data parallel (1 GPU plain; N GPUs through dist/launch_local.sh
# with --zero Z) beside PyTorch FSDP2 + torch.compile (dev/bench/train_fsdp.py under torchrun), the same Llama
# shape on synthetic tokens, on the same machine in one call. Targets: >= 90% weak-scaling efficiency at
# 4 GPUs; >= 1.25x FSDP2's tokens/s per GPU.
# Usage: bash dev/bench/bench_dist.sh CONFIG_JSON BATCH SEQ STEPS "1 2 4" [train_llama flags...]
#   BATCH is per GPU (weak scaling: the global batch grows with N). A count above this machine's GPUs is
#   skipped. Ours times STEPS - 1 steps (its first pays for warm-up), FSDP2 STEPS after FSDP_WARMUP steps.
# Environment (defaults in brackets):
#   RECIPES       ["bf16"] train_llama --recipe values, each run on both sides; FSDP2 gets torchao's
#                 counterpart: bf16 -> none, fp8-tensorwise -> tensorwise (fp8 all-gather on),
#                 fp8-rowwise -> rowwise, fp8-rowwise-gw-hp -> rowwise_with_gw_hp; fp8-blockwise has none
#   ZERO_LEVELS   ["2 3"] ours' --zero levels for N > 1; a level this train_llama rejects is skipped, said so
#   ZERO_EXTRA    [""] more train_llama flags for ours' --zero runs only, e.g. "--fp8-allgather" (with --zero 3)
#   FSDP_RESHARD  ["1"] train_fsdp.py --reshard-after-forward values (1: ZeRO-3-like, 0: ZeRO-2-like)
#   FSDP_WARMUP   [3] FSDP2 untimed steps (torch.compile runs in the first)
#   FSDP_FLAGS    [""] more train_fsdp.py flags, e.g. "--split-linears"
#   IMPLS         ["ours fsdp2"] which sides run
#   RUN_TIMEOUT_S [300] cap on one run; DEADLINE_S [540] cap on the whole script, from its start: a run
#                 gets at most the time left less 5 s, and none (a "skipped (deadline)" row) under 30 s
#   LOG_DIR       [$OUT/bench_dist, or /tmp/bench_dist] every run's whole log, and records.jsonl
# Each run prints a RESULT line as it ends; the table at the end has, per recipe: N, impl, tok/s per GPU,
# weak-scaling efficiency (tok/s per GPU over the same impl's and variant's 1-GPU number; ours' ZeRO levels
# over plain 1-GPU train_llama; where there is no 1-GPU run, as for a model that only fits sharded, over the
# smallest N that ran, marked "vs N=k"), ours / FSDP2 (over the best FSDP2 variant at that N and recipe),
# memory per GPU (ours: device total - free on rank 0; FSDP2: the same, max over ranks, and its peak
# allocated), ms/step and SOL (per GPU, dense bf16 peak). torchao (for fp8) comes from .whl/ as in
# dev/gpu_session.sh's optim1b job when python3 cannot import it.
set -uo pipefail
if [ $# -lt 5 ]; then
  sed -n '6,8p' "$0" >&2
  exit 2
fi
cfg=$1; b=$2; t=$3; steps=$4; counts=$5; shift 5
extra=("$@")
t_start=$SECONDS
DEADLINE_S=${DEADLINE_S:-540}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-300}
RECIPES=${RECIPES:-bf16}
ZERO_LEVELS=${ZERO_LEVELS:-2 3}
ZERO_EXTRA=${ZERO_EXTRA:-}
FSDP_RESHARD=${FSDP_RESHARD:-1}
FSDP_WARMUP=${FSDP_WARMUP:-3}
FSDP_FLAGS=${FSDP_FLAGS:-}
IMPLS=${IMPLS:-ours fsdp2}
LOG_DIR=${LOG_DIR:-${OUT:-/tmp}/bench_dist}
# NVLink multicast stays off: on these shared machines it can take the host's GPUs out of service
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCHAO_FORCE_SKIP_LOADING_SO_FILES=1  # float8 training needs none of torchao's C++ extensions
export PYTHONUNBUFFERED=1
mkdir -p "$LOG_DIR"
rec=$LOG_DIR/records.jsonl
: > "$rec"
name=$(basename "$cfg" .json)
[ -f "$cfg" ] || { echo "bench_dist: no config $cfg" >&2; exit 2; }
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
echo "bench_dist: $name b=$b t=$t steps=$steps, counts \"$counts\", $ngpu GPUs, recipes \"$RECIPES\", zero \"$ZERO_LEVELS\"," \
     "fsdp2 reshard \"$FSDP_RESHARD\", deadline ${DEADLINE_S}s, logs in $LOG_DIR"
has() { [[ " $IMPLS " == *" $1 "* ]]; }

if has ours && [ ! -x ./train_llama ]; then
  echo "bench_dist: ./train_llama is not built (make train_llama): ours skipped"
  IMPLS=${IMPLS//ours/}
fi
zlevels=()
if has ours; then
  for z in $ZERO_LEVELS; do
    if ./train_llama --zero "$z" --help > /dev/null 2>&1; then zlevels+=("$z")
    else echo "bench_dist: this train_llama has no --zero $z ($(./train_llama --zero "$z" --help 2>&1 | grep -m1 error)): skipped"; fi
  done
fi
if has fsdp2 && [[ " $RECIPES " == *" fp8"* ]] && ! python3 -c 'import torchao' > /dev/null 2>&1; then
  if ls .whl/torchao*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/torchao*.whl \
      > "$LOG_DIR/pip.log" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  python3 -c 'import torchao' > /dev/null 2>&1 || echo "bench_dist: torchao not importable (no .whl/torchao*.whl?): FSDP2 fp8 runs will fail"
fi
python3 -c 'import torch; print("bench_dist: torch", torch.__version__, "sees", torch.cuda.device_count(), "GPUs")' 2>&1 | tail -1

# trun CAP CMD...: CMD under a timeout of CAP seconds or the time left before the deadline (less 5 s);
# rc 125 without running when less than 30 s would be left
trun() {
  local cap=$1 l=$((DEADLINE_S - (SECONDS - t_start) - 5)); shift
  [ $l -gt $cap ] && l=$cap
  [ $l -lt 30 ] && return 125
  timeout -k 15 $l "$@"
}
torch_float8() {
  case $1 in
    bf16) echo none ;; fp8-tensorwise) echo tensorwise ;; fp8-rowwise) echo rowwise ;;
    fp8-rowwise-gw-hp) echo rowwise_with_gw_hp ;; *) echo "" ;;
  esac
}
# record RECIPE N IMPL VARIANT LOG RC SECS: one line of records.jsonl from a run's log, and its RESULT line
record() {
  python3 - "$name" "$@" >> "$rec" <<'PY'
import json, re, sys
name, recipe, n, impl, variant, path, rc, secs = sys.argv[1:9]
t = open(path, errors="replace").read()
r = {"config": name, "recipe": recipe, "n": int(n), "impl": impl, "variant": variant, "rc": int(rc), "secs": int(secs)}
if impl == "ours":
    m1 = re.search(r"^done: .*?mean ([0-9.]+) ms/step, ([0-9.]+)k tok/s, SOL ([0-9.]+)%, GPU memory in use ([0-9.]+) GiB", t, re.M)
    mn = re.search(r"^done: .*?mean ([0-9.]+) ms/step, (\d+) GPUs, SOL ([0-9.]+)%, GPU memory in use ([0-9.]+) GiB"
                   r" \(rank 0\), ([0-9.]+)k tok/s in all, ([0-9.]+)k tok/s per GPU", t, re.M)
    if mn:
        r.update(ms=float(mn[1]), sol=float(mn[3]), mem_gib=float(mn[4]), tok_s_total=float(mn[5]) * 1e3,
                 tok_s=float(mn[6]) * 1e3)
    elif m1:
        r.update(ms=float(m1[1]), tok_s=float(m1[2]) * 1e3, tok_s_total=float(m1[2]) * 1e3, sol=float(m1[3]),
                 mem_gib=float(m1[4]))
    bad = [l.strip() for l in t.splitlines() if l.startswith("error:") or re.search(r"out of memory|Aborted|Segmentation", l, re.I)]
else:
    js = []
    for l in t.splitlines():
        if l.startswith("{"):
            try:
                js.append(json.loads(l))
            except ValueError:
                pass
    ok = [j for j in js if "tok_s" in j]
    if ok:
        j = ok[-1]
        r.update(ms=j["ms"], tok_s=j["tok_s"], tok_s_total=j["tok_s_total"], sol=100 * j["sol"] if j.get("sol") else None,
                 mem_gib=j.get("in_use_gib"), peak_gib=j.get("peak_gib"), loss=j.get("loss"))
    bad = ["%s (rank %s)" % (j["error"], j.get("rank")) for j in js if "error" in j]
    bad += [l.strip() for l in t.splitlines() if re.search(r"OutOfMemoryError|^\w*Error:|error:", l)]
if not bad:  # the last words of the log, e.g. "no torchao counterpart of --recipe fp8-blockwise"
    bad = [l.strip() for l in t.splitlines() if l.strip() and not l.startswith("####")][-1:]
if "tok_s" not in r:
    r["error"] = {"125": "skipped (deadline)", "124": "timed out", "137": "timed out"}.get(rc, (bad[0][:160] if bad else "rc=" + rc))
print(json.dumps(r))
if "tok_s" in r:
    print("RESULT dist %s %s N=%s %s %s: %.1fk tok/s per GPU (%.1fk in all), %.1f ms/step, SOL %s%%, GPU %s GiB%s" % (
        name, recipe, n, impl, variant, r["tok_s"] / 1e3, r["tok_s_total"] / 1e3, r["ms"],
        "%.1f" % r["sol"] if r.get("sol") is not None else "?", "%.1f" % r["mem_gib"] if r.get("mem_gib") else "?",
        " (peak allocated %.1f)" % r["peak_gib"] if r.get("peak_gib") else ""), file=sys.stderr)
else:
    print("RESULT dist %s %s N=%s %s %s: %s" % (name, recipe, n, impl, variant, r["error"]), file=sys.stderr)
PY
}
run_ours() {  # RECIPE N ZERO (0: plain 1-GPU run)
  local recipe=$1 n=$2 z=$3 v log t0=$SECONDS rc
  local args=(--config "$cfg" --train synthetic --val '' --tokenizer '' -b "$b" -t "$t" -n "$steps" --warmup 2
              --eval-every 0 --sample-every 0 --save-final=off -o "/tmp/bench_dist_run" --recipe "$recipe" "${extra[@]}")
  if [ "$z" = 0 ]; then v=1gpu; log=$LOG_DIR/${name}_${recipe}_n1_ours.log
    echo "#### ./train_llama ${args[*]}" > "$log"
    trun "$RUN_TIMEOUT_S" ./train_llama "${args[@]}" >> "$log" 2>&1; rc=$?
  else v=zero$z${ZERO_EXTRA:+ $ZERO_EXTRA}; log=$LOG_DIR/${name}_${recipe}_n${n}_ours_zero$z.log
    echo "#### bash dist/launch_local.sh $n ./train_llama ${args[*]} --zero $z $ZERO_EXTRA" > "$log"
    trun "$RUN_TIMEOUT_S" bash dist/launch_local.sh "$n" ./train_llama "${args[@]}" --zero "$z" $ZERO_EXTRA >> "$log" 2>&1; rc=$?
  fi
  record "$recipe" "$n" ours "$v" "$log" "$rc" $((SECONDS - t0)) 2>&1
}
run_fsdp2() {  # RECIPE N RESHARD
  local recipe=$1 n=$2 raf=$3 f8 log t0=$SECONDS rc
  f8=$(torch_float8 "$recipe")
  log=$LOG_DIR/${name}_${recipe}_n${n}_fsdp2_raf$raf.log
  if [ -z "$f8" ]; then
    echo "no torchao counterpart of --recipe $recipe" > "$log"
    record "$recipe" "$n" fsdp2 "raf$raf" "$log" 2 0 2>&1
    return
  fi
  # shellcheck disable=SC2086
  local cmd=(python3 -m torch.distributed.run --standalone --nproc_per_node "$n" dev/bench/train_fsdp.py "$cfg"
             --batch "$b" --seq "$t" --steps "$steps" --warmup "$FSDP_WARMUP" --float8 "$f8" --reshard-after-forward "$raf"
             $FSDP_FLAGS)
  echo "#### ${cmd[*]}" > "$log"
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True trun "$RUN_TIMEOUT_S" "${cmd[@]}" >> "$log" 2>&1; rc=$?
  record "$recipe" "$n" fsdp2 "raf$raf" "$log" "$rc" $((SECONDS - t0)) 2>&1
}

for recipe in $RECIPES; do
  for n in $counts; do
    if [ "$n" -gt "$ngpu" ]; then echo "bench_dist: N=$n > $ngpu GPUs: skipped"; continue; fi
    if has ours; then
      if [ "$n" = 1 ]; then run_ours "$recipe" 1 0
      else for z in "${zlevels[@]}"; do run_ours "$recipe" "$n" "$z"; done; fi
    fi
    if has fsdp2; then
      for raf in $FSDP_RESHARD; do run_fsdp2 "$recipe" "$n" "$raf"; done
    fi
  done
done

python3 - "$rec" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = lambda r: r.get("tok_s")
for recipe in dict.fromkeys(r["recipe"] for r in rs):
    R = [r for r in rs if r["recipe"] == recipe]
    print("\n%s, recipe %s (FSDP2: torchao float8 counterpart), tokens/s per GPU, weak scaling (batch per GPU fixed)" % (
        R[0]["config"], recipe))
    print("%3s  %-6s %-7s %12s %13s %16s %14s %9s %6s" % ("N", "impl", "variant", "tok/s/GPU", "efficiency",
                                                            "ours/FSDP2", "GPU GiB", "ms/step", "SOL%"))
    for r in R:
        if not ok(r):
            print("%3d  %-6s %-7s %s" % (r["n"], r["impl"], r["variant"], r["error"]))
            continue
        same = [x for x in R if ok(x) and x["impl"] == r["impl"]]
        # the 1-GPU base: ours' plain run for every ZeRO level; FSDP2's same variant (else any FSDP2 run) at N=1
        base = [x for x in same if x["n"] == 1 and (r["impl"] == "ours" or x["variant"] == r["variant"])] or \
               [x for x in same if x["n"] == 1]
        note = ""
        if not base:  # nothing fit on one GPU: the smallest N of this variant
            v = sorted((x for x in same if x["variant"] == r["variant"]), key=lambda x: x["n"])
            base = v[:1]
            note = " vs N=%d" % base[0]["n"] if base and base[0] is not r else ""
        eff = "%.1f%%%s" % (100 * r["tok_s"] / base[0]["tok_s"], note) if base and (base[0] is not r or r["n"] == 1) else "-"
        ratio = "-"
        if r["impl"] == "ours":
            f = sorted((x for x in R if ok(x) and x["impl"] == "fsdp2" and x["n"] == r["n"]), key=lambda x: -x["tok_s"])
            if f:
                ratio = "%.3fx %s" % (r["tok_s"] / f[0]["tok_s"], f[0]["variant"])
        mem = "%.1f" % r["mem_gib"] if r.get("mem_gib") else "?"
        if r.get("peak_gib"):
            mem += " (pk %.1f)" % r["peak_gib"]
        print("%3d  %-6s %-7s %11.1fk %13s %16s %14s %9.1f %6s" % (
            r["n"], r["impl"], r["variant"], r["tok_s"] / 1e3, eff, ratio, mem, r["ms"],
            "%.1f" % r["sol"] if r.get("sol") is not None else "?"))
PY
echo "bench_dist: done in $((SECONDS - t_start)) s; logs and records.jsonl in $LOG_DIR"
