#!/usr/bin/env bash
# One GPU-machine session: build, GPU tests, and whichever jobs are named, with every log
# under $OUT (what comes back from the device tool). Usage:
#   bash dev/gpu_session.sh [tests] [train] [hfload] [bench] [bench1b] [realrun] [dist] [optim1b]
#                           [determinism] [offload_accum] [profile_infer] [ncu_int4] [optims] [profile] ...
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
    optim1b)
      # Issue 8, performance: tokens/s, GPU memory and optimizer-state memory of every optimizer setting of
      # train_llama and of PyTorch / torchao (dev/bench/train_torch.py) at two shapes, synthetic tokens:
      #  1b:  Llama-3.2-1B (1.24B), b=4 t=2048, 15 steps: adamw, adamw8bit, adamw4bit, adamwfp8, --master
      #       bf16-sr, --offload; torch fused AdamW, torchao AdamW8bit / AdamW4bit / AdamWFp8, CPUOffloadOptimizer.
      #  10b: dev/configs/llama3_10b.json (Llama-3.1-8B's width, 44 layers: 10.65B), b=1 t=2048, 10 steps.
      #       The largest Llama-3-8B-width model that fits one H200 (139.2 GiB free) only with low-bit
      #       states, by train_llama's start-up plan (llama_gpu_plan), with >= 5% of the card left over:
      #       adamw8bit / adamwfp8 131.8 GiB, adamw4bit 122.2; fp32 states do not fit with fp32 masters
      #       (191.0 GiB; 180.9 with every --recompute flag) nor with --master bf16-sr (151.3; 141.2
      #       with every --recompute flag); 46 layers would leave 2.0 GiB. (Llama-3.1-8B itself fits with
      #       fp32 states once every --recompute flag is on: 136.6 GiB, 143.9 without.) --offload fits the
      #       GPU (72.0 GiB) but needs ~178 GiB of host memory (+ the 40 GiB fp32 model at start-up) on a
      #       128 GiB host, as CPUOffloadOptimizer's ~159 GiB does, so neither offload runs at this shape;
      #       torch fused AdamW (16 bytes/parameter, 159 GiB) should run out of memory there: tried last.
      # Runs in priority order under one deadline (OPTIM_END_S seconds after this script started,
      # default 450, and at most 400 s for this job): what does not fit in the time left is skipped, and
      # said so. Needs torchao's wheel in .whl/ (carry it); installed to /tmp/site as the device README says.
      # RESULT lines: tok/s, GPU memory (ours: in use, from cudaMemGetInfo; torch: peak allocated, and in use),
      # optimizer states (GiB on the GPU; offload: on the host), and ratios to the plain AdamW run of the same
      # implementation at that shape (at 10b, where it does not fit, to the 8-bit run), then ours vs torch.
      job_t0=$SECONDS
      end=${OPTIM_END_S:-450}
      [ $end -gt $((job_t0 + 400)) ] && end=$((job_t0 + 400))
      log "optim1b: optimizers at the 1B and 10B shapes, ours and torch/torchao (deadline ${end}s after start, now ${job_t0}s)"
      rec=/tmp/optim_rec.jsonl
      : > "$rec"
      : > "$OUT/optim_ours.log"
      : > "$OUT/optim_torch.log"
      if ls .whl/*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
          >> "$OUT/optim_torch.log" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      fi
      # torchao's optimizers are pure PyTorch (torch.compile): its C++ extensions are not needed, so they are
      # not loaded (one built for another torch or CUDA could only fail, or crash the import)
      export TORCHAO_FORCE_SKIP_LOADING_SO_FILES=1
      python3 -c 'import torch, torchao; print("torch", torch.__version__, "torchao", torchao.__version__, torchao.__file__)' \
        2>&1 | tail -1 | tee -a "$OUT/summary.txt"
      # trun CAP CMD...: CMD under a timeout of CAP seconds or the time left before the deadline (less 5 s);
      # rc 125 without running when less than 20 s would be left
      trun() {
        local cap=$1 l=$((end - SECONDS - 5)); shift
        [ $l -gt $cap ] && l=$cap
        [ $l -lt 20 ] && return 125
        timeout -k 10 $l "$@"
      }
      # ours SHAPE LABEL CAP CONFIG B STEPS [train_llama flags]
      ours() {
        local shape=$1 label=$2 cap=$3 cfg=$4 b=$5 n=$6; shift 6
        local t=$SECONDS rc
        : > /tmp/optim_one.log
        trun $cap ./train_llama --config "$cfg" --train synthetic --val '' --tokenizer '' -b $b -t 2048 -n $n --warmup 2 \
          --eval-every 0 --sample-every 0 --save-final=off -o /tmp/optim_run "$@" > /tmp/optim_one.log 2>&1
        rc=$?
        { echo "#### $shape ours $label: ./train_llama --config $cfg -b $b -t 2048 -n $n $* (rc=$rc, $((SECONDS - t)) s)"
          cat /tmp/optim_one.log; } >> "$OUT/optim_ours.log"
        python3 - "$shape" "$label" /tmp/optim_one.log $rc $((SECONDS - t)) >> "$rec" <<'PY' && results $shape ours $label
import json, re, sys
shape, label, path, rc, secs = sys.argv[1:6]
t = open(path, errors="replace").read()
r = {"shape": shape, "impl": "ours", "optim": label, "rc": int(rc), "secs": int(secs)}
def num(pat):
    m = re.search(pat, t, re.M)
    return float(m[1]) if m else None
m = re.search(r"^done: .*?mean ([0-9.]+) ms/step, ([0-9.]+)k tok/s, SOL ([0-9.]+)%, GPU memory in use ([0-9.]+) GiB", t, re.M)
if m:
    r.update(ms=float(m[1]), tok_s=float(m[2]) * 1e3, sol=float(m[3]), gpu_gib=float(m[4]))
r["state_gib"] = num(r"^\s+AdamW states\s+([0-9.]+) GiB")
r["host_gib"] = num(r"^\s+host memory \(--offload\)\s+([0-9.]+) GiB")
r["plan_gib"] = num(r"^\s+total\s+([0-9.]+) GiB")
r["params_gib"] = num(r"^\s+parameters \(bf16\)\s+([0-9.]+) GiB")
r["free_gib"] = num(r"^GPU memory plan \(.*, ([0-9.]+) GiB free\)")
if not m:
    bad = [l.strip() for l in t.splitlines() if l.startswith("error:")]
    bad += [l.strip() for l in t.splitlines() if re.search(r"out of memory|failed|Aborted|Segmentation", l, re.I)]
    r["error"] = {"125": "skipped (deadline)", "124": "timed out", "137": "timed out"}.get(rc, bad[0][:160] if bad else "rc=" + rc)
print(json.dumps(r))
PY
      }
      # torchrun SHAPE CAP CONFIG B STEPS OPTIMS: train_torch.py, every optimizer in one process (one compilation)
      torchrun() {
        local shape=$1 cap=$2 cfg=$3 b=$4 n=$5 opts=$6 t=$SECONDS rc
        echo "#### $shape torch: $cfg b=$b t=2048 steps=$n ${OPTIM_TORCH_COMPILE---compile-blocks} --optim $opts" >> "$OUT/optim_torch.log"
        : > /tmp/optim_torch.jsonl
        trun $cap env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 dev/bench/train_torch.py "$cfg" --batch $b --seq 2048 \
          --steps $n --warmup 2 ${OPTIM_TORCH_COMPILE---compile-blocks} --optim $opts > /tmp/optim_torch.jsonl 2>> "$OUT/optim_torch.log"
        rc=$?
        cat /tmp/optim_torch.jsonl >> "$OUT/optim_torch.log"
        echo "#### rc=$rc, $((SECONDS - t)) s" >> "$OUT/optim_torch.log"
        python3 - "$shape" "$opts" /tmp/optim_torch.jsonl $rc >> "$rec" <<'PY' && results $shape torch
import json, sys
shape, opts, path, rc = sys.argv[1:5]
seen = set()
for line in open(path):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    r.update(shape=shape, impl="torch")
    seen.add(r["optim"])
    print(json.dumps(r))
for o in opts.split(","):  # the ones the process did not reach
    if o not in seen:
        print(json.dumps({"shape": shape, "impl": "torch", "optim": o,
                          "error": {"125": "skipped (deadline)", "124": "timed out", "137": "timed out"}.get(rc, "not reached, rc=" + rc)}))
PY
      }
      # results SHAPE ours LABEL | SHAPE torch | SHAPE pairs: RESULT lines, as soon as there is something to say:
      # one run of ours, the runs of one train_torch.py process, or ours vs torch at that shape
      results() {
        python3 - "$1" "$rec" "$2" "${3:-}" >> "$OUT/summary.txt" <<'PY'
import json, sys
shape, path, what, label = sys.argv[1:5]
rs = [json.loads(l) for l in open(path) if l.strip()]
rs = [r for r in rs if r["shape"] == shape]
by = {(r["impl"], r["optim"]): r for r in rs}
rs = [r for r in rs if r["impl"] == what and (what == "torch" or r["optim"] == label)]
def ok(r): return r is not None and "error" not in r and r.get("tok_s")
def mem(r): return r.get("gpu_gib") if r["impl"] == "ours" else r.get("peak_gib")
def ratio(a, b): return "%.2fx" % (a / b) if a is not None and b else "-"
for r in rs:
    impl, o = r["impl"], r["optim"]
    head = "RESULT optim %s %s %-16s" % (shape, impl, o)
    if not ok(r):
        extra = ""
        if impl == "ours" and r.get("plan_gib"):
            extra = " (start-up plan %.2f GiB)" % r["plan_gib"]
        if impl == "torch" and r.get("peak_gib"):
            extra = " (%.2f GiB allocated at the peak before it)" % r["peak_gib"]
        print("%s | %s%s" % (head, r.get("error", "no result"), extra))
        continue
    if impl == "ours":
        s = "%6.1fk tok/s %7.1f ms/step | GPU %6.2f GiB | states %6.2f GiB" % (r["tok_s"] / 1e3, r["ms"], r["gpu_gib"], r["state_gib"] or 0)
        if r.get("host_gib"):
            s += " (host: %.2f GiB master + states + copies)" % r["host_gib"]
        base = [("ours", "adamw"), ("ours", "adamw8bit")]
    else:
        s = "%6.1fk tok/s %7.1f ms/step | peak %6.2f GiB (in use %.2f) | states %6.2f GiB" % (
            r["tok_s"] / 1e3, r["ms"], r["peak_gib"], r["in_use_gib"], r["state_gib"])
        if r.get("state_host_gib"):
            s += " (+ %.2f GiB on the host)" % r["state_host_gib"]
        base = [("torch", "torch-adamw"), ("torch", "ao-adamw8bit")]
    b = next((by[k] for k in base if ok(by.get(k))), None)
    if b is not None and b is not r:
        s += " | vs %s: tok/s %s, memory %s, states %s" % (b["optim"], ratio(r["tok_s"], b["tok_s"]), ratio(mem(r), mem(b)),
                                                         ratio(r["state_gib"] or 0, b["state_gib"]))
    print("%s | %s" % (head, s))
e = by.get(("ours", "adamw8bit"))
if what == "pairs" and ("ours", "adamw") not in by and e and e.get("plan_gib") and e.get("params_gib"):
    # not run (the start-up CHECK would refuse it): its plan from the 8-bit run's table, fp32 m and v
    # taking 8 bytes per parameter = 4x the bf16 parameters
    need = e["plan_gib"] - e["state_gib"] + 4 * e["params_gib"]
    print("RESULT optim %s ours %-16s | not run: its start-up plan needs %.2f GiB (fp32 states %.2f GiB), %s GiB free" % (
        shape, "adamw", need, 4 * e["params_gib"], e.get("free_gib") or "?"))
pairs = [("adamw", "torch-adamw"), ("adamw8bit", "ao-adamw8bit"), ("adamw4bit", "ao-adamw4bit"),
         ("adamwfp8", "ao-adamwfp8"), ("offload", "ao-offload")]
for a, t in pairs if what == "pairs" else []:
    x, y = by.get(("ours", a)), by.get(("torch", t))
    if ok(x) and ok(y):
        print("RESULT optim %s ours %s vs torch %s: tok/s %s | GPU in use %.2f vs %.2f GiB (%s)" % (
            shape, a, t, ratio(x["tok_s"], y["tok_s"]), x["gpu_gib"], y["in_use_gib"], ratio(x["gpu_gib"], y["in_use_gib"])))
PY
      }
      c1=test/fixtures/configs/llama32_1b_v5.json
      c10=dev/configs/llama3_10b.json
      ours 1b adamw 60 $c1 4 15
      ours 1b adamw8bit 60 $c1 4 15 --optim adamw8bit
      ours 1b adamw4bit 60 $c1 4 15 --optim adamw4bit
      ours 1b adamwfp8 60 $c1 4 15 --optim adamwfp8
      ours 1b bf16-sr 60 $c1 4 15 --master bf16-sr
      ours 1b offload 90 $c1 4 15 --offload
      torchrun 1b 200 $c1 4 15 torch-adamw,ao-adamw8bit,ao-adamw4bit,ao-adamwfp8,ao-offload
      results 1b pairs
      ours 10b adamw8bit 150 $c10 1 10 --optim adamw8bit
      torchrun 10b 180 $c10 1 10 ao-adamw8bit,ao-adamw4bit,ao-adamwfp8,torch-adamw
      ours 10b adamw4bit 150 $c10 1 10 --optim adamw4bit
      ours 10b adamwfp8 150 $c10 1 10 --optim adamwfp8
      ours 10b 8bit-bf16-sr 150 $c10 1 10 --optim adamw8bit --master bf16-sr
      results 10b pairs
      # extra, if time is left: offload with 8-bit states (scalar host step: a few s/step at 1B)
      ours 1b offload-8bit 60 $c1 4 3 --offload --optim adamw8bit
      log "optim1b: done at ${SECONDS}s (job $((SECONDS - job_t0)) s)" ;;
    determinism)
      # Are separate runs bit-identical? The 114M model, 3 steps, same seed and data: twice with each
      # attention backward (our kernel: must match; cuDNN's with --deterministic=off: may not), and once
      # with 8-bit AdamW states (another memory plan; step 1's gradient is computed before any optimizer
      # step, so its loss and norm must not change).
      log "determinism across runs (114M, 3 steps): step-1..3 loss and grad norm per run"
      make data > /dev/null 2>&1
      common="--config dev/configs/llama_114m.json -b 16 -t 512 -n 3 --warmup 1 --eval-every 0 --sample-every 0 --save-final=off"
      for run in "kernel-a --attn auto" "kernel-b --attn auto" "kernel-8bit --attn auto --optim adamw8bit" \
                 "cudnn-a --attn cudnn --deterministic=off" "cudnn-b --attn cudnn --deterministic=off"; do
        set -- $run; name=$1; shift
        timeout 90 ./train_llama $common "$@" -o /tmp/det_$name > /tmp/det_$name.log 2>&1
        echo "$name: $(python3 -c 'import json,sys; print(" | ".join("%d %r %r" % (r["step"], r["loss"], r["norm"]) for r in map(json.loads, open(sys.argv[1])) if "norm" in r))' /tmp/det_$name/log.jsonl 2>&1) | $(grep 'attention backward' /tmp/det_$name.log)" >> "$OUT/summary.txt"
      done ;;
    offload_accum)
      # Issue 8 (<= 20% step-time cost for --offload at 1B): with gradient accumulation the host step is paid
      # once per 4 micro-batches. Llama-3.2-1B shape, -b 4 -t 2048, --total-batch 32768 (4 x 4 x 2048: 4
      # micro-batches per step), 8 steps each (the first is not timed): AdamW on the GPU, then --offload
      # (default --clip 1: the host step follows the norm, only the gradient copies overlap backward), then
      # --offload --clip 0 (each layer's host step overlaps the rest of the last micro-batch's backward).
      # Then --offload --optim adamw8bit (compare its GPU memory and time with the gpu run's).
      # Then the same trio at b=1 with every recompute flag, LM-head chunks of 1024 rows and 64 micro-batches per
      # step (131072 tokens, 3 steps): activations small enough that the states and masters are most of the memory
      # (estimate: ~22 GiB on the GPU without offload, ~9 with: the >= 60% VRAM target), and the host step (~300 ms)
      # spread over ~3 s of micro-batches (the <= 20% time target).
      # Deadline ~270 s: a run that would start after 250 s is skipped, and said so.
      log "offload_accum: 1B, b=4 t=2048, total batch 32768 (4 micro-batches), 8 steps: on-GPU AdamW vs --offload"
      oa_t0=$SECONDS
      oa_cfg=test/fixtures/configs/llama32_1b_v5.json
      oa() {  # oa LABEL [train_llama flags]: RESULT line with ms/step, GPU and host memory, and the ratio to "gpu"
        local label=$1 rc; shift
        if [ $((SECONDS - oa_t0)) -gt 250 ]; then echo "RESULT offload_accum $label | skipped (deadline)" >> "$OUT/summary.txt"; return; fi
        timeout -k 10 90 ./train_llama --config $oa_cfg --train synthetic --val '' --tokenizer '' -b $oa_b -t 2048 \
          --total-batch $oa_tb -n $oa_n --warmup 2 --eval-every 0 --sample-every 0 --save-final=off -o /tmp/oa_run \
          $oa_extra "$@" > "$OUT/offload_accum_$label.log" 2>&1
        rc=$?
        local d ms gib host loss
        d=$(grep -E '^done:' "$OUT/offload_accum_$label.log")
        ms=$(echo "$d" | sed -n -E 's/.*mean ([0-9.]+) ms\/step.*/\1/p')
        gib=$(echo "$d" | sed -n -E 's/.*GPU memory in use ([0-9.]+) GiB.*/\1/p')
        host=$(grep -E 'host memory \(--offload\)' "$OUT/offload_accum_$label.log" | awk '{print $4}')
        loss=$(grep -E "^\[T\] step +$oa_n/" "$OUT/offload_accum_$label.log" | sed -n -E 's/.*loss ([0-9.]+).*/\1/p')
        case $label in gpu*) oa_ms=$ms; oa_gib=$gib; oa_loss=$loss ;; esac
        echo "RESULT offload_accum $label: rc=$rc | ${ms:-?} ms/step | GPU ${gib:-?} GiB${host:+ | host $host GiB} | step-$oa_n loss" \
             "${loss:-?} | vs ${oa_base}: time $(awk -v a="${ms:-0}" -v b="${oa_ms:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3fx", a / b; else print "-" }')," \
             "GPU memory $(awk -v a="${gib:-0}" -v b="${oa_gib:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3fx", a / b; else print "-" }')," \
             "loss $(case $label in *noclip) echo "not compared (no clipping)" ;; *8bit) echo "not compared (8-bit states)" ;; *) [ -n "$loss" ] && [ "$loss" = "${oa_loss:-}" ] && echo same || echo differs ;; esac)" \
             "($((SECONDS - oa_t0)) s)" >> "$OUT/summary.txt"
      }
      oa_b=4 oa_tb=32768 oa_n=8 oa_extra="" oa_base=gpu
      oa gpu
      oa offload --offload
      oa offload-noclip --offload --clip 0
      # 8-bit states: the host step moves ~16 bytes per parameter instead of ~30
      oa offload-8bit --offload --optim adamw8bit
      oa_b=1 oa_tb=131072 oa_n=3 oa_extra="--recompute-ffn --recompute-attn --recompute-norm --lm-chunk 1024" oa_base=gpu-k64
      oa gpu-k64
      oa offload-k64 --offload
      oa offload-k64-noclip --offload --clip 0
      log "offload_accum: done in $((SECONDS - oa_t0)) s" ;;
    profile_infer)
      # Issue 6: where an int4 decode step's time goes (8B shape, batch 1): per-kernel GPU time of
      # two graph-replayed decode steps (bench_infer --profile brackets them), shares by kernel.
      log "per-kernel profile: int4 g64 decode step, Llama-3.1-8B shape, batch 1 (ncu)"
      make -j16 build/bench/bench_infer > /dev/null 2>&1
      timeout 300 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
        build/bench/bench_infer --config test/fixtures/configs/llama31_8b.json --modes int4 --group 64 --batch 1 \
        --steps 4 --profile > /tmp/ncu_infer.csv 2> "$OUT/profile_infer.err"
      python3 dev/bench/profile_kernels.py /tmp/ncu_infer.csv > "$OUT/profile_infer.txt" 2>&1
      head -25 "$OUT/profile_infer.txt" >> "$OUT/summary.txt" ;;
    ncu_int4)
      # Issue 6: why the int4 v2 GEMV streams weights at ~1/3 of the copy bandwidth: full ncu sections
      # (throughput, memory workload, warp stalls, occupancy) on its launches in two decode steps, 8B shape.
      log "ncu sections: qgemv_int4_mma2_kernel, Llama-3.1-8B shape, int4 g64, batch 1"
      make -j16 build/bench/bench_infer > /dev/null 2>&1
      timeout 300 ncu --profile-from-start off --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section SchedulerStats --section LaunchStats --section Occupancy \
        -k regex:qgemv_int4_mma2 -c 8 build/bench/bench_infer --config test/fixtures/configs/llama31_8b.json \
        --modes int4 --group 64 --batch 1 --steps 4 --profile > "$OUT/ncu_int4.txt" 2>&1
      grep -E "Memory Throughput|DRAM Throughput|Duration|Achieved Occupancy|Stall|Registers|Grid Size" \
        "$OUT/ncu_int4.txt" | head -40 >> "$OUT/summary.txt" ;;
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
