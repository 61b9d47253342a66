#!/usr/bin/env bash
# Trains the same Llama shape with ours and with PyTorch (dev/bench/train_torch.py) in one
# GPU run, on random tokens, and prints tokens/s, SOL, memory and the ratio.
# Usage: bash dev/bench/bench_train.sh CONFIG_JSON BATCH SEQ STEPS [--no-torch] [train_llama flags...]
set -euo pipefail
cfg=$1; b=$2; t=$3; steps=$4; shift 4
torch_run=1; extra=()
for a in "$@"; do if [ "$a" = "--no-torch" ]; then torch_run=0; else extra+=("$a"); fi; done
name=$(basename "$cfg" .json)
ours=$(./train_llama --config "$cfg" --train synthetic --val '' --tokenizer '' -b "$b" -t "$t" -n "$steps" \
        --warmup 2 --eval-every 0 --sample-every 0 --save-final=off -o /tmp/bench_run "${extra[@]}" 2>&1 | tee -a /dev/stderr | grep '^done:')
ours_tps=$(echo "$ours" | sed -E 's/.* ([0-9.]+)k tok\/s.*/\1/')
ours_sol=$(echo "$ours" | sed -E 's/.*SOL ([0-9.]+)%.*/\1/')
ours_mem=$(echo "$ours" | sed -E 's/.*in use ([0-9.]+) GiB.*/\1/')
line="RESULT $name b=$b t=$t ${extra[*]} | ours ${ours_tps}k tok/s SOL ${ours_sol}% (GPU ${ours_mem} GiB)"
if [ $torch_run = 1 ]; then
  torch=$(python3 dev/bench/train_torch.py "$cfg" --batch "$b" --seq "$t" --steps "$steps" 2>/dev/null | tail -n 1)
  torch_tps=$(echo "$torch" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["tok_s"]/1e3, 1))')
  torch_mem=$(echo "$torch" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["peak_gib"], 1))')
  ratio=$(python3 -c "print(round($ours_tps / $torch_tps, 3))")
  line="$line | pytorch+compile ${torch_tps}k tok/s (peak ${torch_mem} GiB) | ratio ${ratio}x"
fi
echo "$line"
