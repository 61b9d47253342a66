#!/usr/bin/env bash
# One GPU-machine session: build, GPU tests, and whichever jobs are named, with every log
# under $OUT (what comes back from the device tool). Usage:
#   bash dev/gpu_session.sh [tests] [train] [hfload] [bench] [bench1b] [realrun] [dist]
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
    resume)
      log "resume bit-exactness: 40 steps straight vs 20 + resume 20"
      make data > /dev/null 2>&1
      common="-n 40 --warmup 5 --eval-every 0 --sample-every 0 -b 8 -t 256"
      ./train_llama $common --save-every 20 -o /tmp/straight > "$OUT/resume_a.log" 2>&1
      ./train_llama $common --resume /tmp/straight/ckpt_000020 -o /tmp/resumed > "$OUT/resume_b.log" 2>&1
      a=$(grep -E '^\[T\] step +(2[1-9]|3[0-9]|40)/' "$OUT/resume_a.log" | sed -E 's/\| +[0-9.]+ ms.*//')
      b=$(grep -E '^\[T\] step +(2[1-9]|3[0-9]|40)/' "$OUT/resume_b.log" | sed -E 's/\| +[0-9.]+ ms.*//')
      if [ -n "$a" ] && [ "$a" = "$b" ]; then echo "resume: steps 21-40 identical (loss, norm, lr)" >> "$OUT/summary.txt"
      else echo "resume: MISMATCH" >> "$OUT/summary.txt"; diff <(echo "$a") <(echo "$b") | head >> "$OUT/summary.txt"; fi
      cmp /tmp/straight/ckpt_000040/model.safetensors /tmp/resumed/ckpt_000040/model.safetensors \
        && echo "resume: final weights bit-identical" >> "$OUT/summary.txt" || echo "resume: final weights DIFFER" >> "$OUT/summary.txt" ;;
    realrun)
      log "real run: ~114M Llama on the bundled corpus"
      make data > /dev/null 2>&1
      timeout 400 ./train_llama --config dev/configs/llama_114m.json -b 16 -t 512 -n 1500 --warmup 100 --lr 6e-4 \
        --eval-every 100 --sample-every 500 -o /tmp/real > "$OUT/realrun.log" 2>&1
      grep -E "^\[V\]|^done|sample" "$OUT/realrun.log" >> "$OUT/summary.txt"
      cp /tmp/real/loss.svg "$OUT/realrun_loss.svg"; cp /tmp/real/log.jsonl "$OUT/realrun_log.jsonl" ;;
    bench1b)
      log "bench: Llama-3.2-1B shape"
      timeout 240 bash dev/bench/bench_train.sh test/fixtures/configs/llama32_1b_v5.json 4 2048 15 >> "$OUT/bench.log" 2>&1
      timeout 60 bash dev/bench/bench_train.sh test/fixtures/configs/llama32_1b_v5.json 4 2048 15 --no-torch --deterministic=off >> "$OUT/bench.log" 2>&1
      grep RESULT "$OUT/bench.log" >> "$OUT/summary.txt" ;;
    profile)
      log "per-kernel profile: one training step, Llama-3.2-1B shape, b=4 t=2048 (ncu)"
      timeout 300 ncu --metrics gpu__time_duration.sum --csv --launch-skip 900 --launch-count 900 \
        ./train_llama --config test/fixtures/configs/llama32_1b_v5.json --train synthetic --val '' --tokenizer '' \
        -b 4 -t 2048 -n 3 --warmup 1 --eval-every 0 --sample-every 0 --save-final=off -o /tmp/prof > /tmp/ncu.csv 2>/dev/null
      python3 dev/bench/profile_kernels.py /tmp/ncu.csv > "$OUT/profile.txt" 2>&1
      head -30 "$OUT/profile.txt" >> "$OUT/summary.txt" ;;
    optims)
      log "optimizers: the default ~51M model, 1000 steps each (val loss at the end)"
      for o in adamw adamw8bit adamw4bit adamwfp8; do
        timeout 100 ./train_llama --optim $o -n 1000 --eval-every 1000 --sample-every 0 --save-final=off -o /tmp/opt_$o \
          > "$OUT/optim_$o.log" 2>&1
        echo "$o rc=$? $(grep -E '^\[V\] step 1000' "$OUT/optim_$o.log") $(grep -E 'AdamW states' "$OUT/optim_$o.log" | tr -s ' ') $(grep -E '^done' "$OUT/optim_$o.log")" >> "$OUT/summary.txt"
      done
      common="-n 30 --warmup 5 --eval-every 0 --sample-every 0 -b 8 -t 256 --optim adamw8bit"
      ./train_llama $common --save-every 15 -o /tmp/s8 > /tmp/s8a.log 2>&1
      ./train_llama $common --resume /tmp/s8/ckpt_000015 -o /tmp/r8 > /tmp/s8b.log 2>&1
      cmp /tmp/s8/ckpt_000030/model.safetensors /tmp/r8/ckpt_000030/model.safetensors \
        && echo "resume adamw8bit: final weights bit-identical" >> "$OUT/summary.txt" || echo "resume adamw8bit: DIFFER" >> "$OUT/summary.txt" ;;
    offload)
      log "offload: AdamW on the CPU vs on the GPU (same seed, data, 200 steps), bits and cost"
      make data > /dev/null 2>&1
      for o in "" "--optim adamw8bit"; do
        common="-n 200 --warmup 20 --eval-every 0 --sample-every 0 $o"
        ./train_llama $common -o /tmp/gpu_opt > /tmp/og.log 2>&1
        ./train_llama $common --offload -o /tmp/cpu_opt > /tmp/oc.log 2>&1
        cmp /tmp/gpu_opt/ckpt_000200/model.safetensors /tmp/cpu_opt/ckpt_000200/model.safetensors \
          && echo "offload ${o:-adamw}: final weights bit-identical to the on-GPU optimizer" >> "$OUT/summary.txt" \
          || echo "offload ${o:-adamw}: weights DIFFER" >> "$OUT/summary.txt"
        echo "  on GPU:  $(grep -E '^done' /tmp/og.log)" >> "$OUT/summary.txt"
        echo "  offload: $(grep -E '^done' /tmp/oc.log) | $(grep 'host memory' /tmp/oc.log | tr -s ' ')" >> "$OUT/summary.txt"
      done ;;
    mainjob)
      log "README main job: ./train_llama (defaults), then ./infer_llama on its checkpoint"
      rm -rf data/shards out
      timeout 200 ./train_llama > "$OUT/mainjob.log" 2>&1; echo "train rc=$?" >> "$OUT/summary.txt"
      grep -E "^tokenizing|^\[V\]|^done|^\[C\]|error" "$OUT/mainjob.log" | tail -8 >> "$OUT/summary.txt"
      timeout 60 ./infer_llama -m out/ckpt_001500 -i "It is a truth universally acknowledged" -n 40 >> "$OUT/summary.txt" 2>&1
      timeout 60 ./infer_llama -m out/ckpt_001500 -q int4 -g 64 -i "It is a truth universally acknowledged" -n 40 --quiet >> "$OUT/summary.txt" 2>&1
      log "fine-tune from the HF-format checkpoint (-m)"
      timeout 120 ./train_llama -m out/ckpt_001500 -n 30 --lr 1e-4 --warmup 5 --eval-every 15 --sample-every 0 -o /tmp/ft > "$OUT/finetune.log" 2>&1
      echo "finetune rc=$?" >> "$OUT/summary.txt"; grep -E "^\[V\]|^done|error" "$OUT/finetune.log" >> "$OUT/summary.txt"
      python3 -c "
from transformers import AutoModelForCausalLM; import torch
m = AutoModelForCausalLM.from_pretrained('out/ckpt_001500', dtype=torch.float32)
print('transformers loads out/ckpt_001500:', type(m).__name__, sum(p.numel() for p in m.parameters()), 'params')" >> "$OUT/summary.txt" 2>&1 ;;
    hfload)
      log "transformers loads our checkpoints"
      python3 test/ref/check_hf_load.py 2>&1 | grep -E "ok|FAIL|passed|Error" >> "$OUT/summary.txt" ;;
    dist)
      # needs 2+ GPUs; NVLink multicast stays off (shared machines)
      export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
      log "dist: multi-GPU tests, $(nvidia-smi -L | grep -c '^GPU') GPUs (test/dist_test.sh; logs in dist_test.log)"
      make -j16 build/test/gpu_test_dist > "$OUT/dist_build.log" 2>&1 || tail -20 "$OUT/dist_build.log" >> "$OUT/summary.txt"
      make data > /dev/null 2>&1
      timeout 900 bash test/dist_test.sh build > "$OUT/dist_test.log" 2>&1
      echo "dist_test rc=$?" >> "$OUT/summary.txt"
      grep -E "^(PASS|FAIL)|passed, [0-9]+ failed|mpirun" "$OUT/dist_test.log" >> "$OUT/summary.txt"
      log "dist: throughput, 1 GPU vs 2 GPUs, Llama-3.2-1B shape, b=4 t=2048 per GPU, synthetic tokens, 15 steps"
      bargs=(--config test/fixtures/configs/llama32_1b_v5.json --train synthetic --val "" --tokenizer "" -b 4 -t 2048
             -n 15 --warmup 2 --eval-every 0 --sample-every 0 --save-final=off)
      one=$(timeout 300 ./train_llama "${bargs[@]}" -o /tmp/dbench1 2>&1 | tee "$OUT/dist_bench_1gpu.log" | grep '^done:')
      echo "  1 GPU:            $one" >> "$OUT/summary.txt"
      t1=$(echo "$one" | sed -n -E 's/.* ([0-9.]+)k tok\/s.*/\1/p')
      for z in 1 2; do
        two=$(timeout 300 bash dist/launch_local.sh 2 ./train_llama "${bargs[@]}" --zero $z -o /tmp/dbench2 2>&1 \
              | tee "$OUT/dist_bench_2gpu_zero$z.log" | grep '^done:')
        t2=$(echo "$two" | sed -n -E 's/.* ([0-9.]+)k tok\/s per GPU.*/\1/p')
        echo "  2 GPUs --zero $z: $two" >> "$OUT/summary.txt"
        echo "  RESULT dist 1B b=4 t=2048: 1 GPU ${t1:-?}k tok/s | 2 GPUs --zero $z ${t2:-?}k tok/s per GPU | weak-scaling" \
             "efficiency $(awk -v a="${t1:-0}" -v b="${t2:-0}" 'BEGIN { if (a > 0) printf "%.1f%%", 100 * b / a; else print "?" }')" \
             >> "$OUT/summary.txt"
      done ;;
    bench)
      log "bench: Qwen2.5-0.5B shape, Llama-3.2-1B shape"
      timeout 240 bash dev/bench/bench_train.sh test/fixtures/configs/llama32_1b_v5.json 4 2048 15 >> "$OUT/bench.log" 2>&1
      timeout 60 bash dev/bench/bench_train.sh test/fixtures/configs/llama32_1b_v5.json 4 2048 15 --no-torch --deterministic=off >> "$OUT/bench.log" 2>&1
      timeout 200 bash dev/bench/bench_train.sh test/fixtures/configs/qwen25_05b.json 8 2048 15 >> "$OUT/bench.log" 2>&1
      grep RESULT "$OUT/bench.log" >> "$OUT/summary.txt" ;;
  esac
done
log "end"
