#!/usr/bin/env bash
# Trains the same Llama shape with ours and with PyTorch (dev/bench/train_torch.py) in one
# GPU run, on random tokens, and prints tokens/s, SOL, memory and the ratio.
# Usage: bash dev/bench/bench_train.sh CONFIG_JSON BATCH SEQ STEPS [options] [train_llama flags...]
#   --no-torch          ours only
#   --no-ours           PyTorch only
#   --torch-float8=R    PyTorch with torchao float8 training: R = none (default), tensorwise, rowwise,
#                       rowwise_with_gw_hp (train_torch.py --float8; torchao must be importable)
#   --torch-flag=F      one more train_torch.py flag (repeatable), e.g. --torch-flag=--compile-blocks
#   ours' recipe is a train_llama flag like any other: --recipe fp8-rowwise
# Environment: RUN_TIMEOUT_S=S kills either side after S seconds ("timeout" in the line; default none).
# Ours times STEPS - 1 steps (its first step pays for warm-up), PyTorch STEPS after its --warmup steps.
# Besides the RESULT line, each side that ran prints one machine-readable line for
# dev/bench/bench_fp8.sh: "BENCH ours {json}" / "BENCH torch {json}" with "status" ok / timeout /
# failed, and for ok: tok_s, sol (%), gpu_gib (GPU memory in use: total - free, context included,
# for both sides), ms; torch's line carries train_torch.py's whole JSON (peak_gib, float8, ...).
set -euo pipefail
cfg=$1; b=$2; t=$3; steps=$4; shift 4
ours_run=1; torch_run=1; float8=none; extra=(); torch_flags=()
for a in "$@"; do
  case $a in
    --no-torch) torch_run=0 ;;
    --no-ours) ours_run=0 ;;
    --torch-float8=*) float8=${a#--torch-float8=} ;;
    --torch-flag=*) torch_flags+=("${a#--torch-flag=}") ;;
    *) extra+=("$a") ;;
  esac
done
tmo=()
if [ -n "${RUN_TIMEOUT_S:-}" ]; then tmo=(timeout -k 10 "$RUN_TIMEOUT_S"); fi
recipe=bf16
for ((i = 0; i < ${#extra[@]}; i++)); do
  case ${extra[$i]} in
    --recipe=*) recipe=${extra[$i]#--recipe=} ;;
    --recipe) recipe=${extra[$((i + 1))]:-bf16} ;;
  esac
done
name=$(basename "$cfg" .json)
line="RESULT $name b=$b t=$t ${extra[*]}"
status=0
ours_tps=
if [ $ours_run = 1 ]; then
  olog=$(mktemp)
  set +e  # its exit status, not tee's: a timeout is 124
  "${tmo[@]}" ./train_llama --config "$cfg" --train synthetic --val '' --tokenizer '' -b "$b" -t "$t" -n "$steps" \
    --warmup 2 --eval-every 0 --sample-every 0 --save-final=off -o /tmp/bench_run "${extra[@]}" 2>&1 \
    | tee -a /dev/stderr > "$olog"
  rc=${PIPESTATUS[0]}
  set -e
  ours=$(grep '^done:' "$olog" || true)
  rm -f "$olog"
  if [ -n "$ours" ]; then
    ours_tps=$(echo "$ours" | sed -E 's/.* ([0-9.]+)k tok\/s.*/\1/')
    ours_sol=$(echo "$ours" | sed -E 's/.*SOL ([0-9.]+)%.*/\1/')
    ours_mem=$(echo "$ours" | sed -E 's/.*in use ([0-9.]+) GiB.*/\1/')
    ours_ms=$(echo "$ours" | sed -E 's/.*mean ([0-9.]+) ms\/step.*/\1/')
    line="$line | ours ${ours_tps}k tok/s SOL ${ours_sol}% (GPU ${ours_mem} GiB)"
    echo "BENCH ours {\"status\": \"ok\", \"recipe\": \"$recipe\", \"tok_s\": $(python3 -c "print($ours_tps * 1e3)"), \"ms\": $ours_ms, \"sol\": $ours_sol, \"gpu_gib\": $ours_mem}"
  else
    st=failed; [ $rc = 124 ] || [ $rc = 137 ] && st=timeout
    line="$line | ours $st (rc $rc)"
    echo "BENCH ours {\"status\": \"$st\", \"recipe\": \"$recipe\", \"rc\": $rc}"
    status=1
  fi
fi
if [ $torch_run = 1 ]; then
  rc=0
  terr=$(mktemp)
  torch=$("${tmo[@]}" python3 dev/bench/train_torch.py "$cfg" --batch "$b" --seq "$t" --steps "$steps" --float8 "$float8" \
           "${torch_flags[@]}" 2>"$terr" | tail -n 1) || rc=$?
  if [ -n "$torch" ] && echo "$torch" | python3 -c 'import json,sys; sys.exit("tok_s" not in json.load(sys.stdin))' 2>/dev/null; then
    read -r torch_label torch_tps torch_mem torch_sol < <(echo "$torch" | python3 -c '
import json, sys
r = json.load(sys.stdin)
label = r["impl"] + ("" if r.get("float8", "none") == "none" else "+float8-" + r["float8"])
print(label, round(r["tok_s"] / 1e3, 1), round(r["peak_gib"], 1), round(100 * r["sol"], 1) if r.get("sol") else "?")')
    if [ "$float8" = none ] && [ ${#torch_flags[@]} = 0 ]; then  # the line as it always was
      line="$line | pytorch+compile ${torch_tps}k tok/s (peak ${torch_mem} GiB)"
    else
      line="$line | $torch_label ${torch_tps}k tok/s SOL ${torch_sol}% (peak ${torch_mem} GiB)"
    fi
    [ -n "$ours_tps" ] && line="$line | ratio $(python3 -c "print(round($ours_tps / $torch_tps, 3))")x"
    echo "BENCH torch $(echo "$torch" | python3 -c '
import json, sys
r = json.load(sys.stdin)
r.update(status="ok", sol=100 * r["sol"] if r.get("sol") else None, gpu_gib=r.get("in_use_gib"))
print(json.dumps(r))')"
  else
    st=failed; [ $rc = 124 ] || [ $rc = 137 ] && st=timeout
    why=$( (echo "$torch" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("error", ""))' 2>/dev/null) || true)
    [ -z "$why" ] && why=$(grep -v '^\s*$' "$terr" | tail -n 1 || true)
    tail -n 20 "$terr" >&2
    line="$line | pytorch float8=$float8 $st (rc $rc${why:+: $why})"
    echo "BENCH torch $(python3 -c 'import json,sys; print(json.dumps({"status": sys.argv[1], "float8": sys.argv[2], "rc": int(sys.argv[3]), "error": sys.argv[4]}))' "$st" "$float8" "$rc" "$why")"
    status=1
  fi
  rm -f "$terr"
fi
echo "$line"
exit $status
