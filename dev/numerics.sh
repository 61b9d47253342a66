#!/usr/bin/env bash
# Convergence evidence for issue 7 (fp8 recipes) and issue 8 (low-bit optimizers): the ~114M Llama
# (dev/configs/llama_114m.json) trained on the bundled corpus for the same steps, seed and data
# (the realrun job's settings: b=16 t=512 = 8192 tokens/step, lr 6e-4 cosine, warmup 100, val
# loss every 100 steps) with
#   fp8:   --recipe bf16 | fp8-tensorwise | fp8-rowwise | fp8-rowwise-gw-hp | fp8-blockwise | mxfp8 | mxfp8-gw-hp
#   optim: --optim adamw | adamw8bit | adamw4bit | adamwfp8, --master bf16-sr, --offload
# The bf16 run is also the fp32-AdamW run (bf16 recipe + fp32 AdamW are both defaults), so it is
# trained once and is the reference of both comparisons. Each run is compared by build/plot_runs:
# final val loss vs the reference (the issues ask for <= 1%) and the curves, as SVGs.
#
#   bash dev/numerics.sh          from the repository root, after `make -j16 all`, on a GPU machine
#
# Environment: OUT (where results go; default /tmp/llama_ao_numerics_out), NUMERICS_END_S (global
# deadline, seconds after this script started; default 300), NUMERICS_STEPS (default 1000: ~3.7
# epochs of the 2.2M-token corpus; the 1500-step real run's val loss flattened at ~1100),
# NUMERICS_RUNS (default: all; else a space-separated list of run names, e.g. "bf16 mxfp8 mxfp8-gw-hp").
# Runs go in priority order, each under a timeout (its cap or the time left before the deadline)
# and --max-seconds a little below it, so a slow run still ends with an evaluation (its table row
# then says "other step"); a run that cannot get 20 s is skipped, and the summary says so.
# --offload is the slowest and runs last.
# Writes under $OUT (the device returns at most 8 files):
#   numerics_summary.txt                     tables (final val, vs reference, steps, ms/step), per-run lines
#   numerics_fp8.svg, numerics_optim.svg     val-loss curves (from step 100)
#   numerics_fp8_train.svg, numerics_optim_train.svg   training loss, trailing mean of 20 steps
#   numerics_logs.tar.gz                     every run's log.jsonl and train_llama output
set -uo pipefail
OUT=${OUT:-/tmp/llama_ao_numerics_out}
end=${NUMERICS_END_S:-300}
steps=${NUMERICS_STEPS:-1000}
work=/tmp/llama_ao_numerics_runs
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
rm -rf "$work"
mkdir -p "$work"
S="$OUT/numerics_summary.txt"
log() { echo "== $*" | tee -a "$S"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  git log -1 --format='commit %h %s' 2>/dev/null
  git status --short --untracked-files=no 2>/dev/null | sed 's/^/  modified: /'; } > "$S"

if [ ! -x ./train_llama ]; then
  log "./train_llama is missing: run \`make -j16 all\` first (from the repository root)"
  exit 1
fi
make -s build/plot_runs data > "$work/make.log" 2>&1 || { log "make build/plot_runs data FAILED"; tail -20 "$work/make.log" | tee -a "$S"; }

common=(--config dev/configs/llama_114m.json -b 16 -t 512 -n "$steps" --warmup 100 --lr 6e-4 --seed 1337
        --eval-every 100 --sample-every 0 --save-final=off)
log "numerics: ./train_llama ${common[*]} [-o DIR] [run flags]; deadline ${end}s after start"

# run NAME CAP [train_llama flags]: one run into $work/NAME (log.jsonl) and $work/NAME.log (output)
run() {
  local name=$1 cap=$2 left=$((end - SECONDS - 10)) t=$SECONDS rc; shift 2
  case " ${NUMERICS_RUNS:-$name} " in *" $name "*) ;; *) return ;; esac
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 20 ]; then
    echo "$name: skipped (deadline: ${left}s left) [$*]" | tee -a "$S"
    return
  fi
  timeout -k 5 "$cap" ./train_llama "${common[@]}" --max-seconds $((cap - 12)) -o "$work/$name" "$@" > "$work/$name.log" 2>&1
  rc=$?
  { echo "$name [$*]: rc=$rc, $((SECONDS - t)) s (cap ${cap}s)"
    grep -E '^\[V\] step' "$work/$name.log" | tail -1 | sed 's/^/  /'
    grep -E '^done:' "$work/$name.log" | sed 's/^/  /'
    grep -E '^ +(AdamW states|master weights|host memory|fp8 cast scratch|total) ' "$work/$name.log" | tr -s ' ' | sed 's/^/  /'
    grep -E '^error|HINT|out of memory' "$work/$name.log" | head -3 | sed 's/^/  /'
  } | tee -a "$S"
}

log "fp8 recipes (issue 7) and optimizers (issue 8), $steps steps each"
run bf16 60 --recipe bf16
for r in fp8-tensorwise fp8-rowwise fp8-rowwise-gw-hp fp8-blockwise mxfp8 mxfp8-gw-hp; do run "$r" 60 --recipe "$r"; done
for o in adamw8bit adamw4bit adamwfp8; do run "$o" 60 --optim "$o"; done
run bf16-sr 60 --master bf16-sr
run offload 150 --offload

# plot NAME TITLE RUN=LABEL...: val and train SVGs and the table, from the runs that have evaluations
plot() {
  local name=$1 title=$2 args=() a; shift 2
  for a in "$@"; do
    if grep -q val_loss "$work/${a%%=*}/log.jsonl" 2>/dev/null; then args+=("$work/${a%%=*}/log.jsonl=${a#*=}")
    else echo "  (no evaluations from ${a%%=*}: left out)" | tee -a "$S"; fi
  done
  [ ${#args[@]} -gt 0 ] || return
  build/plot_runs -o "$OUT/$name.svg" --title "$title: val loss" --from 100 "${args[@]}" 2>&1 | tee -a "$S"
  build/plot_runs -o "$OUT/${name}_train.svg" --title "$title: training loss" --metric train --smooth 20 --from 100 \
    "${args[@]}" > /dev/null 2>> "$S"
}
log "issue 7: fp8 recipes vs bf16 (114M, $steps steps x 8192 tokens, same seed and data)"
plot numerics_fp8 "114M Llama, fp8 recipes vs bf16" bf16=bf16 fp8-tensorwise=fp8-tensorwise fp8-rowwise=fp8-rowwise \
  fp8-rowwise-gw-hp=fp8-rowwise-gw-hp fp8-blockwise=fp8-blockwise mxfp8=mxfp8 mxfp8-gw-hp=mxfp8-gw-hp
log "issue 8: optimizers vs fp32 AdamW (114M, $steps steps x 8192 tokens, same seed and data)"
plot numerics_optim "114M Llama, optimizers vs fp32 AdamW" "bf16=adamw (fp32 states)" adamw8bit=adamw8bit \
  adamw4bit=adamw4bit adamwfp8=adamwfp8 "bf16-sr=adamw, --master bf16-sr" "offload=adamw, --offload"

(cd "$work" && tar -czf "$OUT/numerics_logs.tar.gz" -- */log.jsonl ./*.log)
log "logs: numerics_logs.tar.gz, $(du -k "$OUT/numerics_logs.tar.gz" | cut -f1) KiB; done at ${SECONDS}s"
