#!/usr/bin/env bash
# fp8 training throughput in one GPU run: train_llama --recipe (bf16 and every fp8 recipe) against
# PyTorch + torchao float8 training (dev/bench/train_torch.py --float8), on random tokens.
# Usage: [DEADLINE_S=S] [TORCH_RECIPES="..."] [TORCH_COMPILE=blocks|model] \
#        bash dev/bench/bench_fp8.sh CONFIG_JSON BATCH SEQ STEPS
#
# Every run goes through dev/bench/bench_train.sh (one side at a time, its BENCH line), each under
# a timeout, in this order (cheap and most useful first):
#   ours   --recipe bf16, fp8-tensorwise, fp8-rowwise, fp8-rowwise-gw-hp, fp8-blockwise
#   (ours --recipe mxfp8 last, after the torch runs: emulated on Hopper, its cost, not a speed-up)
#   torch  --float8 R for R in TORCH_RECIPES (default "tensorwise rowwise none rowwise_with_gw_hp")
# STEPS steps are timed on both sides (ours runs STEPS + 1: its first step pays for warm-up; torch
# runs 3 warm-up steps first, the first of them compiling).
# DEADLINE_S (seconds from the start; default none): a run is started only if at least OURS_MIN_S
# (default 30) / TORCH_MIN_S (default 75) seconds are left, and is killed when the deadline passes;
# the rest are listed as skipped. RUN_TIMEOUT_S caps one run (default 120 ours, 240 torch).
# Logs: LOG_DIR (default $OUT/bench_fp8_<config>, or /tmp/... without $OUT), one file per run.
#
# Choices, for comparability with ours:
# - torch runs with --split-linears: q/k/v and gate/up separate nn.Linears as in Hugging Face's Llama,
#   so that each has its own float8 scales as in train_llama (ops/linear.cuh runs a fused group part
#   by part); the module filter is ours (lm_head and dims not multiples of 16 stay high precision).
#   Its bf16 row ("none") is split too, so it is a little slower than bench_train.sh's fused one.
# - TORCH_COMPILE=blocks (default): torch.compile per transformer block (--compile-blocks), as
#   torchtitan compiles float8 models; it halves compile time for deep models (the LM head and the
#   loss run eagerly). TORCH_COMPILE=model compiles the whole model as bench_train.sh does.
# - torch.compile costs ~40-60 s per torch run (float8 graphs more), ours ~10-20 s per run at 1B/3B,
#   so in ~6 GPU minutes: the 1B shape (b=4 t=2048) with every ours recipe and torch tensorwise,
#   rowwise (+ none, rowwise_with_gw_hp as the deadline allows), the 3B shape (b=2 t=2048; ~60 GiB
#   of weights, gradients and AdamW states before activations on both sides) with every ours recipe
#   and torch tensorwise and rowwise only:
#     DEADLINE_S=200 bash dev/bench/bench_fp8.sh test/fixtures/configs/llama32_1b_v5.json 4 2048 10
#     DEADLINE_S=160 TORCH_RECIPES="tensorwise rowwise" bash dev/bench/bench_fp8.sh dev/configs/llama32_3b.json 2 2048 10
# - torchao has no blockwise (DeepSeek-V3 1x128 / 128x128) recipe in Float8LinearConfig (its
#   blockwise_fp8_training is a prototype with its own Linear): fp8-blockwise is ours only.
#
# Prints the RESULT line of every run as it ends, then a table: tok/s, SOL % (model FLOPs over the
# dense bf16 peak, both sides the same formula), GPU memory in use (total - free: context and caching
# allocator included, both sides), tok/s relative to ours-bf16 and to torch-bf16, and ours over
# torchao at the same recipe.
set -uo pipefail
cfg=$1; b=$2; t=$3; steps=$4
name=$(basename "$cfg" .json)
DEADLINE_S=${DEADLINE_S:-1000000}
TORCH_RECIPES=${TORCH_RECIPES:-tensorwise rowwise none rowwise_with_gw_hp}
TORCH_COMPILE=${TORCH_COMPILE:-blocks}
OURS_MIN_S=${OURS_MIN_S:-30}; TORCH_MIN_S=${TORCH_MIN_S:-75}
LOG_DIR=${LOG_DIR:-${OUT:-/tmp}/bench_fp8_$name}
mkdir -p "$LOG_DIR"
results=$LOG_DIR/bench_lines.txt
: > "$results"
start=$SECONDS
torch_flags=(--torch-flag=--split-linears --torch-flag=--warmup=3)
case $TORCH_COMPILE in
  blocks) torch_flags+=(--torch-flag=--compile-blocks) ;;
  model) ;;
  *) echo "TORCH_COMPILE=$TORCH_COMPILE: expected blocks or model" >&2; exit 2 ;;
esac
echo "bench_fp8: $name b=$b t=$t, $steps timed steps; torch: TORCH_RECIPES=\"$TORCH_RECIPES\" TORCH_COMPILE=$TORCH_COMPILE;" \
     "deadline ${DEADLINE_S}s; logs in $LOG_DIR"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# run SIDE RECIPE MIN_S MAX_S bench_train.sh-args...: one run, or "skipped" when too little time is left
run() {
  local side=$1 recipe=$2 min_s=$3 max_s=$4; shift 4
  local left=$((DEADLINE_S - (SECONDS - start)))
  if [ $left -lt "$min_s" ]; then
    echo "SKIP $side $recipe deadline (${left}s left, a run needs ~${min_s}s)" | tee -a "$results"
    return
  fi
  local tmo=$((left < max_s ? left : max_s)) t0=$SECONDS
  RUN_TIMEOUT_S=$tmo bash dev/bench/bench_train.sh "$@" > "$LOG_DIR/$side-$recipe.out" 2> "$LOG_DIR/$side-$recipe.log"
  grep '^RESULT' "$LOG_DIR/$side-$recipe.out"
  echo "   ($side $recipe: $((SECONDS - t0))s, timeout ${tmo}s)"
  local line
  line=$(grep "^BENCH $side " "$LOG_DIR/$side-$recipe.out" | head -n 1)
  if [ -n "$line" ]; then echo "$side $recipe ${line#BENCH $side }" >> "$results"
  else echo "FAIL $side $recipe no BENCH line (see $LOG_DIR/$side-$recipe.log)" | tee -a "$results"; fi
}

for r in bf16 fp8-tensorwise fp8-rowwise fp8-rowwise-gw-hp fp8-blockwise; do
  run ours "$r" "$OURS_MIN_S" "${RUN_TIMEOUT_S:-120}" "$cfg" "$b" "$t" $((steps + 1)) --no-torch --recipe "$r"
done
for r in $TORCH_RECIPES; do
  case $r in none|tensorwise|rowwise|rowwise_with_gw_hp) ;; *) echo "TORCH_RECIPES: unknown $r" >&2; continue ;; esac
  run torch "$r" "$TORCH_MIN_S" "${RUN_TIMEOUT_S:-240}" "$cfg" "$b" "$t" "$steps" --no-ours --torch-float8="$r" "${torch_flags[@]}"
done
# MXFP8 last: emulated on Hopper (dequantized to bf16 tiles, bf16 GEMMs), so it shows the cost, not a speed-up
run ours mxfp8 "$OURS_MIN_S" "${RUN_TIMEOUT_S:-120}" "$cfg" "$b" "$t" $((steps + 1)) --no-torch --recipe mxfp8
echo "bench_fp8: $((SECONDS - start))s in all"

python3 - "$results" "$name" "$b" "$t" "$TORCH_COMPILE" <<'EOF'
import json, sys
path, name, b, t, compile_mode = sys.argv[1:6]
runs, notes = {}, []
for line in open(path):
    parts = line.split(" ", 2)
    if parts[0] in ("ours", "torch"):
        runs[(parts[0], parts[1])] = json.loads(parts[2])
    else:
        notes.append(line.strip())
TORCH_OF = {"bf16": "none", "fp8-tensorwise": "tensorwise", "fp8-rowwise": "rowwise",
            "fp8-rowwise-gw-hp": "rowwise_with_gw_hp", "fp8-blockwise": None, "mxfp8": None}
def ok(k):
    r = runs.get(k)
    return r if r and r.get("status") == "ok" else None
def tps(k):
    r = ok(k)
    return r["tok_s"] if r else None
def ratio(a, c):
    return "%.2fx" % (a / c) if a and c else "-"
base_ours, base_torch = tps(("ours", "bf16")), tps(("torch", "none"))
print("\n### fp8 training, %s b=%s t=%s (torch: torchao float8, split Linears, compile=%s)\n" % (name, b, t, compile_mode))
print("| run | tok/s | SOL % | GPU GiB in use | vs ours-bf16 | vs torch-bf16 | ours / torchao same recipe |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
rows = [("ours", r) for r in TORCH_OF] + [("torch", r) for r in ("none", "tensorwise", "rowwise", "rowwise_with_gw_hp")]
for side, rec in rows:
    label = "ours %s" % rec if side == "ours" else "torch+torchao %s" % ("bf16" if rec == "none" else rec)
    r = runs.get((side, rec))
    if r is None:
        skip = [n for n in notes if n.split(" ")[1:3] == [side, rec]]
        print("| %s | %s | | | | | |" % (label, "not run" + (": " + skip[0].split(" ", 3)[3] if skip else "")))
        continue
    if r.get("status") != "ok":
        print("| %s | %s%s | | | | | |" % (label, r.get("status"), (": " + r["error"]) if r.get("error") else ""))
        continue
    same = "-"
    if side == "ours":
        tr = TORCH_OF[rec]
        same = ratio(r["tok_s"], tps(("torch", tr))) if tr else \
            "torchao's MX training needs sm_100" if rec == "mxfp8" else "torchao has no blockwise recipe"
    sol = "%.1f" % r["sol"] if r.get("sol") is not None else "?"
    mem = "%.1f" % r["gpu_gib"] if r.get("gpu_gib") is not None else "?"
    print("| %s | %.1fk | %s | %s | %s | %s | %s |" % (label, r["tok_s"] / 1e3, sol, mem, ratio(r["tok_s"], base_ours),
                                                    ratio(r["tok_s"], base_torch), same))
for n in notes:
    print("note: " + n)
EOF
