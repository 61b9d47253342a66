#!/usr/bin/env bash
# One GPU-machine session: build, GPU tests, and whichever jobs are named, with every log
# under $OUT (what comes back from the device tool). Usage:
#   bash dev/gpu_session.sh [tests] [train] [hfload] [bench] [bench1b] [realrun]
set -uo pipefail
OUT=${OUT:-/tmp/llama_ao_out}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/summary.txt" 2>&1
git log -1 --format='commit %h %s' >> "$OUT/summary.txt" 2>/dev/null
log "build"
make -j16 all > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; log "BUILD FAILED"; }
grep -E "warning|error" "$OUT/build.log" | head -20 >> "$OUT/summary.txt"
for job in "$@"; do
  case $job in
    tests)
      log "make test-gpu"
      timeout 300 make test-gpu > "$OUT/test_gpu.log" 2>&1
      grep -E "passed|FAIL|CRASH|error" "$OUT/test_gpu.log" | tail -40 >> "$OUT/summary.txt" ;;
    train)
      log "train_llama default (short)"
      make data > /dev/null 2>&1
      timeout 240 ./train_llama -n 300 --eval-every 100 --sample-every 300 --max-seconds 150 -o /tmp/run1 > "$OUT/train.log" 2>&1
      echo "rc=$?" >> "$OUT/summary.txt"
      grep -E "^\[T\] step +(1|2|10|100|200|300)/|^\[V\]|^done|error|HINT" "$OUT/train.log" >> "$OUT/summary.txt"
      cp /tmp/run1/loss.svg "$OUT/" 2>/dev/null ;;
    hfload)
      log "transformers loads our checkpoints"
      python3 test/ref/check_hf_load.py 2>&1 | grep -E "ok|FAIL|passed|Error" >> "$OUT/summary.txt" ;;
    bench)
      log "bench: Qwen2.5-0.5B shape, Llama-3.2-1B shape"
      for args in "test/fixtures/configs/qwen25_05b.json 8 2048" "test/fixtures/configs/llama32_1b_v5.json 4 2048"; do
        timeout 400 bash dev/bench/bench_train.sh $args 20 >> "$OUT/bench.log" 2>&1
      done
      grep RESULT "$OUT/bench.log" >> "$OUT/summary.txt" ;;
  esac
done
log "end"
