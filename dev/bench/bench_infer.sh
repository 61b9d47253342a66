#!/usr/bin/env bash
# Decode speed, ours vs PyTorch, in one GPU run. Usage:
#   bash dev/bench/bench_infer.sh CONFIG "BATCHES" [STEPS]
# e.g. bash dev/bench/bench_infer.sh test/fixtures/configs/llama31_8b.json 1,4,16
# Prints RESULT lines of both (grep RESULT); the PyTorch side is dev/bench/infer_torch.py.
set -uo pipefail
config=${1:?config.json}
batches=${2:-1}
steps=${3:-128}
BUILD=${BUILD:-build}
echo "== ours: build/bench/bench_infer ($config, batches $batches)"
$BUILD/bench/bench_infer --config "$config" --modes bf16,int8,int4,8da4w,fp8 --group 64 --batch "$batches" \
  --prompt 128 --steps "$steps"
echo "== PyTorch: bf16 (static KV cache, torch.compile + CUDA graphs) and int4 tinygemm g64"
for mode in bf16 int4; do
  PYTHONUNBUFFERED=1 python3 dev/bench/infer_torch.py --config "$config" --mode $mode --group 64 \
    --batch-sizes "$batches" --prompt 128 --new "$steps" --device cuda
done
