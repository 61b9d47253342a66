#!/usr/bin/env bash
# Multi-GPU tests of train_llama (issue 9), on one machine with 2 or more GPUs:
#   bash test/dist_test.sh [BUILD_DIR] [NP] (default: build, 2; needs ./train_llama and BUILD_DIR/test/gpu_test_dist)
# NP=2 runs sections 1-5 on 2 GPUs (the first two visible); NP=4 runs section 6 on 4 GPUs.
# SKIP="1 4" (environment) leaves out sections 1 (gpu_test_dist) and 4 (faults), which nothing later needs;
# SKIP="1 2 3 4 5" runs only 5b (--fp8-allgather, self-contained).
# Ranks are started by dist/launch_local.sh (the LLAMA_AO_* variables) and, where OpenMPI's
# mpirun is installed, by mpirun too. Every check prints one PASS or FAIL line with its numbers;
# the last line is "N passed, N failed" (exit status non-zero when any failed).
#
#   1. collectives and sharded steps: gpu_test_dist on 2 ranks
#   2. 1 GPU accumulating 2 micro-batches vs 2 GPUs with one each (same global batch, same data):
#      ZeRO-1 must give the same bits (losses, norms, final model.safetensors: the fp32 masters,
#      which keep a last-bit gradient difference that the %.6f log lines do not show): with 2
#      ranks every gradient sum is one fp32 addition, fl(g1 + g2), and on 1 GPU every gradient
#      kernel adds micro-batch 2's part, formed from zero, to micro-batch 1's in one addition too
#      (cuBLASLt's beta = 1 epilogue, the RMSNorm dweight reduction, the embedding's per-token
#      sums: ops/embedding.cu). The model here is untied and has one LM-head chunk per
#      micro-batch, so each gradient is accumulated exactly as on 1 GPU. ZeRO-2 computes the
#      global norm from shard partials (another fp32 summation order), so the clip scale may
#      differ in its last bit: losses within LOSS_TOL. Same for adamw4bit (block-aligned shards).
#      --zero-gather-overlap (the parameter all-gather per layer, beside the next forward) moves the
#      same bytes: --zero 2 with it vs without, and --zero 1 --offload with it vs --zero 1, bitwise
#   3. resume on 2 GPUs (bit-exact), re-shard 2 -> 1 and 1 -> 2 (ZeRO and not): within LOSS_TOL,
#      and the line says whether the logs and final weights came out identical
#   4. faults: one rank exits or hangs at step 5; every rank must exit non-zero within the
#      timeout (20 s) plus start-up; the surviving rank names itself and what it waited for
#      (--zero 1, and --zero 3, whose fault comes after the step's target-count all-reduce, so the
#      surviving rank is left waiting on the forward's weight gathers)
#   5. ZeRO-3 (issue 9): the all-gather of bf16 weights is exact and every kernel sees the same
#      addresses modulo 256 bytes, so --zero 3 must be bit-identical to --zero 2 on 2 GPUs (logs and
#      final model.safetensors): adamw, adamw8bit, bf16-sr masters, offload, recompute + samples + an
#      odd number of eval batches (ranks stay in step); --zero 3 on 1 GPU (gathers are copies) vs no
#      ZeRO, bitwise; the memory table shows the shard and the gather buffers; resume on 2 GPUs
#      bit-exact; resume of a ZeRO-3 checkpoint with --zero 2 bit-exact; re-shard 2 -> 1 and 1 -> 2
#      --fp8-allgather (fp8-tensorwise; fp8 codes gathered): bit-identical to --zero 3 fp8-tensorwise
#      on 2 GPUs (also with 2 micro-batches and adamw8bit) and to 1 GPU; refused without --zero 3 or
#      with another recipe; --zero 2 --zero-gather-overlap with recompute, samples and 3 eval batches
#      vs without: bitwise, the same sample text
#   6. (NP=4) 4 GPUs: gpu_test_dist, ZeRO-1/2/3 vs 1 GPU, --zero 3 vs --zero 2 bitwise (also 8-bit,
#      offload, fp8 all-gather), --zero 2 --zero-gather-overlap vs without bitwise (and resumed with it
#      from a checkpoint written without it), resume and re-shard, faults
set -u
build=${1:-build}
NP=${2:-2}
[ "$NP" = 2 ] || [ "$NP" = 4 ] || { echo "dist_test.sh: NP must be 2 or 4, not $NP" >&2; exit 2; }
TL=./train_llama
GT=$build/test/gpu_test_dist
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # no NVLink multicast on shared machines
LOSS_TOL=2e-3  # relative, worst step, for runs that are not expected to be bit-identical
pass=0; fail=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$ngpu" -lt "$NP" ]; then bad "this machine has $ngpu GPUs; the tests need $NP"; finish; fi
for f in "$TL" "$GT"; do [ -x "$f" ] || { bad "$f is not built (make train_llama $GT)"; finish; }; done
LOCAL="bash dist/launch_local.sh 2"
LOCAL4="bash dist/launch_local.sh 4"
MPI=""; MPI4=""
if command -v mpirun > /dev/null; then
  MPI="mpirun --bind-to none -x NCCL_NVLS_ENABLE"
  [ "$(id -u)" = 0 ] && MPI="$MPI --allow-run-as-root"
  MPI4="$MPI -np 4"; MPI="$MPI -np 2"
  echo "mpirun: $(command -v mpirun)"
else
  echo "mpirun not found: the mpirun variants are skipped (launcher-free start only)"
fi
T=$(mktemp -d /tmp/llama_ao_dist.XXXXXX)
echo "work directory: $T"
make data > "$T/make_data.log" 2>&1 || bad "make data (see $T/make_data.log)"

# ---- helpers -------------------------------------------------------------------------------
gt_check() {  # label, ranks, command...
  local label=$1 nr=$2; shift 2
  timeout 600 "$@" > "$T/gt_$label.log" 2>&1; local rc=$?
  local lines; lines=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$T/gt_$label.log")
  if [ $rc -eq 0 ] && [ "$(echo "$lines" | grep -c ' 0 failed')" -eq "$nr" ]; then ok "gpu_test_dist on $nr ranks ($label): $(echo $lines)"
  else bad "gpu_test_dist on $nr ranks ($label): rc $rc: $(echo $lines) (log $T/gt_$label.log)"; grep -E "FAIL|error" "$T/gt_$label.log" | head -10; fi
}
# the model of sections 2-6
cat > "$T/cfg.json" <<'EOF'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 50304, "hidden_size": 256,
 "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
 "head_dim": 64, "max_position_embeddings": 1024, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
 "tie_word_embeddings": false, "hidden_act": "silu", "initializer_range": 0.02, "torch_dtype": "bfloat16"}
EOF
N=24
TB=2048  # the global batch: 2 micro-batches of 4 x 256 (section 6: 4096, four)
common_flags() { echo "--config $T/cfg.json -b 4 -t 256 --total-batch $TB -n $N --warmup 4 --lr 2e-3 --eval-every 12 --eval-batches 4 --sample-every 0 --save-every 12 --dist-timeout 120"; }
common=$(common_flags)
run() {  # name, launcher (or ""), extra flags...
  local name=$1 launcher=$2; shift 2
  timeout 600 $launcher $TL $common "$@" -o "$T/$name" > "$T/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || { bad "run $name exited $rc (log $T/$name.log)"; tail -5 "$T/$name.log"; }
}
# "step loss norm" per training step from log.jsonl (steps >= $2)
losses() { awk -v from="${2:-1}" -F'[:,}]' '/"loss"/ { gsub(/ /, ""); if ($2 + 0 >= from) print $2, $4, $6 }' "$T/$1/log.jsonl"; }
vals() { awk -F'[:,}]' '/"val_loss"/ { gsub(/ /, ""); print $2, $4 }' "$T/$1/log.jsonl"; }
# compare A B MODE LABEL [FROM_STEP]: MODE bitwise = identical logs and final weights; tol = losses within LOSS_TOL
compare() {
  local a=$1 b=$2 mode=$3 label=$4 from=${5:-1}
  local la lb; la=$(losses "$a" "$from"); lb=$(losses "$b" "$from")
  if [ -z "$la" ] || [ "$(echo "$la" | wc -l)" != "$(echo "$lb" | wc -l)" ]; then bad "$label: step counts differ or no steps"; return; fi
  local worst; worst=$(paste <(echo "$la") <(echo "$lb") | awk '{ d = ($2 - $5) / $2; if (d < 0) d = -d; if (d > w) w = d } END { printf "%.3g", w + 0 }')
  local first; first=$(paste <(echo "$la") <(echo "$lb") | head -1 | awk '{ print ($2 == $5) ? "equal" : "DIFFERENT" }')
  local same_w="differ"; cmp -s "$T/$a/ckpt_0000$N/model.safetensors" "$T/$b/ckpt_0000$N/model.safetensors" && same_w="identical"
  local same_log="differ"; [ "$la" = "$lb" ] && [ "$(vals "$a" | tail -1)" = "$(vals "$b" | tail -1)" ] && same_log="identical"
  local info="worst loss rel diff $worst, step-$from loss $first, logs $same_log, final weights $same_w"
  if [ "$mode" = bitwise ]; then
    if [ "$same_log" = identical ] && [ "$same_w" = identical ]; then ok "$label: bit-identical ($info)"; else bad "$label: expected bit-identical ($info)"; fi
  else
    if awk -v w="$worst" -v t="$LOSS_TOL" 'BEGIN { exit !(w <= t) }' && [ "$first" = equal ]; then ok "$label: within $LOSS_TOL ($info)"
    else bad "$label: beyond $LOSS_TOL or step-$from loss differs ($info)"; fi
  fi
}
resume() {  # name, launcher, checkpoint, extra flags...
  local name=$1 launcher=$2 ck=$3; shift 3
  run "$name" "$launcher" --resume "$T/$ck" "$@"
}

if [ "$NP" = 2 ]; then  # sections 1-5 -----------------------------------------------------------
skip() { [[ " ${SKIP:-} " == *" $1 "* ]] && echo "section $1 skipped (SKIP)"; }
# ---- 1. collectives ------------------------------------------------------------------------
if ! skip 1; then
gt_check local 2 $LOCAL "$GT"
[ -n "$MPI" ] && gt_check mpirun 2 $MPI "$GT"
fi

# ---- 2. one GPU vs two ---------------------------------------------------------------------
if ! skip 2; then
run one ""
run w1z1 "" --zero 1
run z1 "$LOCAL" --zero 1
run z2 "$LOCAL" --zero 2
run one4 "" --optim adamw4bit
run z1_4 "$LOCAL" --zero 1 --optim adamw4bit
run z2_8 "$LOCAL" --zero 2 --optim adamw8bit
run one8 "" --optim adamw8bit
compare one w1z1 bitwise "1 GPU vs --zero 1 on 1 GPU (sharded code path, world 1)"
compare one z1 bitwise "1 GPU vs 2 GPUs --zero 1 (adamw)"
compare one z2 tol "1 GPU vs 2 GPUs --zero 2 (adamw)"
compare one4 z1_4 bitwise "1 GPU vs 2 GPUs --zero 1 (adamw4bit)"
compare one8 z2_8 tol "1 GPU vs 2 GPUs --zero 2 (adamw8bit)"
run z2_ov "$LOCAL" --zero 2 --zero-gather-overlap
compare z2 z2_ov bitwise "2 GPUs --zero 2 --zero-gather-overlap vs without (adamw)"
run z1_ovo "$LOCAL" --zero 1 --offload --zero-gather-overlap
compare z1 z1_ovo bitwise "2 GPUs --zero 1 --offload --zero-gather-overlap vs --zero 1 (the offloaded step has the GPU step's bits)"
if grep -q "parameter all-gather: layer by layer" "$T/z2_ov.log" && grep -q "parameter all-gather: the whole vector" "$T/z2.log"
then ok "--zero-gather-overlap: the start-up line names the schedule (on and off)"
else bad "--zero-gather-overlap: no 'parameter all-gather:' line naming the schedule (logs $T/z2_ov.log, $T/z2.log)"; fi
if [ -n "$MPI" ]; then
  run z1_mpi "$MPI" --zero 1
  compare z1 z1_mpi bitwise "2 GPUs --zero 1: launch_local vs mpirun"
fi
grep -E "ZeRO-|NCCL communicator ready" "$T/z2.log" | head -3
fi  # section 2

# ---- 3. resume and re-shard ------------------------------------------------------------------
if ! skip 3; then
resume z1_r "$LOCAL" z1/ckpt_000012 --zero 1
compare z1 z1_r bitwise "resume on 2 GPUs --zero 1 from step 12" 13
resume z2_r "$LOCAL" z2/ckpt_000012 --zero 2
compare z2 z2_r bitwise "resume on 2 GPUs --zero 2 from step 12" 13
resume z1_to1 "" z1/ckpt_000012 --zero 1
compare z1 z1_to1 tol "re-shard 2 GPUs (--zero 1) -> 1 GPU (--zero 1)" 13
resume z2_to1 "" z2/ckpt_000012
compare z2 z2_to1 tol "re-shard 2 GPUs (--zero 2) -> 1 GPU without ZeRO" 13
resume one_to2 "$LOCAL" one/ckpt_000012 --zero 2
compare one one_to2 tol "re-shard 1 GPU (no ZeRO) -> 2 GPUs (--zero 2)" 13
resume z1_4_to1 "" z1_4/ckpt_000012 --optim adamw4bit
compare one4 z1_4_to1 tol "re-shard adamw4bit 2 GPUs (--zero 1) -> 1 GPU without ZeRO" 13
ls "$T/z1/ckpt_000012" | tr '\n' ' '; echo
fi  # section 3

# ---- 4. faults -------------------------------------------------------------------------------
if ! skip 4; then
TMO=20
LIMIT=$((TMO + 90))  # timeout + start-up and 5 steps, generously
fault() {  # label, launcher kind (local|mpi), kind (exit|hang), ZeRO level (default 1)
  local label=$1 how=$2 kind=$3 zl=${4:-1}
  local log="$T/fault_${how}_${kind}_z$zl.log" t0 t1 rc
  t0=$(date +%s)
  if [ "$how" = local ]; then
    LLAMA_AO_FAULT=1:5:$kind timeout 300 $LOCAL $TL $common --dist-timeout $TMO --zero $zl -o "$T/f_$how${kind}_z$zl" > "$log" 2>&1
  else
    timeout 300 $MPI -x LLAMA_AO_FAULT=1:5:$kind $TL $common --dist-timeout $TMO --zero $zl -o "$T/f_$how${kind}_z$zl" > "$log" 2>&1
  fi
  rc=$?; t1=$(date +%s)
  local el=$((t1 - t0)) r0 r1 named
  named=$(grep -E "rank 0/2.*(timed out|NCCL)" "$log" | head -1 | sed -E 's/^error: //' | cut -c1-200)
  if [ "$how" = local ]; then
    r0=$(sed -n -E 's/^launch_local: rank 0 exit ([0-9]+)/\1/p' "$log"); r1=$(sed -n -E 's/^launch_local: rank 1 exit ([0-9]+)/\1/p' "$log")
    if [ $rc -ne 124 ] && [ "${r0:-0}" -ne 0 ] && [ "${r1:-0}" -ne 0 ] && [ $el -le $LIMIT ] && [ -n "$named" ]; then
      ok "$label: rank 0 exit $r0, rank 1 exit $r1, after $el s (limit $LIMIT): $named"
    else bad "$label: rc $rc, rank 0 exit ${r0:-?}, rank 1 exit ${r1:-?}, after $el s (limit $LIMIT), message: ${named:-none} (log $log)"; fi
  else
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $el -le $LIMIT ]; then ok "$label: mpirun exit $rc after $el s (limit $LIMIT) ${named:+: $named}"
    else bad "$label: mpirun exit $rc after $el s (limit $LIMIT) (log $log)"; fi
  fi
}
fault "rank 1 dies at step 5 (launch_local)" local exit
fault "rank 1 hangs at step 5 (launch_local)" local hang
fault "rank 1 dies at step 5, --zero 3 (launch_local)" local exit 3
fault "rank 1 hangs at step 5, --zero 3 (launch_local)" local hang 3
if [ -n "$MPI" ]; then
  fault "rank 1 dies at step 5 (mpirun)" mpi exit
  fault "rank 1 hangs at step 5 (mpirun)" mpi hang
fi
# bad start-ups fail fast and name the cause
timeout 120 $LOCAL $TL $common -o "$T/nozero" > "$T/nozero.log" 2>&1
if [ $? -ne 0 ] && [ "$(grep -c 'pass --zero 1 or --zero 2' "$T/nozero.log")" -eq 2 ]; then ok "2 ranks without --zero: both refuse"
else bad "2 ranks without --zero (log $T/nozero.log)"; fi
echo stale > "$T/stale_init"
t0=$(date +%s)
LLAMA_AO_INIT_FILE="$T/stale_init" timeout 120 $LOCAL $TL $common --zero 1 --dist-timeout 10 -o "$T/stale" > "$T/stale.log" 2>&1
rc=$?; el=$(($(date +%s) - t0))
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "already exists" "$T/stale.log" && [ "$(grep -c 'exit [1-9]' "$T/stale.log")" -eq 2 ]; then
  ok "stale init file: both ranks exit non-zero after $el s, rank 0 names the file"
else bad "stale init file: rc $rc after $el s (log $T/stale.log)"; fi

fi  # section 4

# ---- 5. ZeRO-3 -------------------------------------------------------------------------------
if ! skip 5; then
run z3 "$LOCAL" --zero 3
compare z2 z3 bitwise "2 GPUs --zero 3 vs --zero 2 (adamw)"
run z3_8 "$LOCAL" --zero 3 --optim adamw8bit
compare z2_8 z3_8 bitwise "2 GPUs --zero 3 vs --zero 2 (adamw8bit)"
run z2_sr "$LOCAL" --zero 2 --master bf16-sr
run z3_sr "$LOCAL" --zero 3 --master bf16-sr
compare z2_sr z3_sr bitwise "2 GPUs --zero 3 vs --zero 2 (--master bf16-sr)"
run z3_off "$LOCAL" --zero 3 --offload
compare z2 z3_off bitwise "2 GPUs --zero 3 --offload vs --zero 2 (the offloaded step has the GPU step's bits)"
extra="--recompute-attn --recompute-norm --eval-batches 3 --sample-every 12 --sample-tokens 16"
run z2_x "$LOCAL" --zero 2 $extra
run z3_x "$LOCAL" --zero 3 $extra
compare z2_x z3_x bitwise "2 GPUs --zero 3 vs --zero 2 with recompute, samples and 3 eval batches over 2 ranks"
if [ "$(grep -c '^---- sample' "$T/z3_x.log")" -ge 2 ]; then ok "--zero 3: samples printed (every rank ran the sample's forwards)"
else bad "--zero 3: fewer than 2 samples in $T/z3_x.log"; fi
run z2_xo "$LOCAL" --zero 2 --zero-gather-overlap $extra
compare z2_x z2_xo bitwise "2 GPUs --zero 2 --zero-gather-overlap vs without, with recompute, samples and 3 eval batches"
smp() { sed -n '/^---- sample/,/^-----/p' "$T/$1.log"; }
if [ "$(grep -c '^---- sample' "$T/z2_xo.log")" -ge 2 ] && [ "$(smp z2_x)" = "$(smp z2_xo)" ]; then
  ok "--zero 2 --zero-gather-overlap: the samples are printed and equal to those without it"
else bad "--zero 2 --zero-gather-overlap: samples missing or different (logs $T/z2_x.log, $T/z2_xo.log)"; fi
run w1z3 "" --zero 3
compare one w1z3 bitwise "1 GPU vs --zero 3 on 1 GPU (gathers are copies)"
if [ -n "$MPI" ]; then
  run z3_mpi "$MPI" --zero 3
  compare z3 z3_mpi bitwise "2 GPUs --zero 3: launch_local vs mpirun"
fi
mt=$(grep -E "parameters \(bf16, shard\)|ZeRO-3 gather buffers|ZeRO-3 over" "$T/z3.log")
if [ "$(echo "$mt" | grep -c .)" -eq 3 ]; then ok "--zero 3 memory table shows the shard and the gather buffers"; echo "$mt"
else bad "--zero 3 memory table lines missing (log $T/z3.log)"; fi
resume z3_r "$LOCAL" z3/ckpt_000012 --zero 3
compare z3 z3_r bitwise "resume on 2 GPUs --zero 3 from step 12" 13
resume z3_as2 "$LOCAL" z3/ckpt_000012 --zero 2
compare z3 z3_as2 bitwise "resume a --zero 3 checkpoint with --zero 2 on 2 GPUs" 13
resume z3_to1 "" z3/ckpt_000012 --zero 3
compare z3 z3_to1 tol "re-shard 2 GPUs (--zero 3) -> 1 GPU (--zero 3)" 13
resume z3_to1n "" z3/ckpt_000012
compare z3 z3_to1n tol "re-shard 2 GPUs (--zero 3) -> 1 GPU without ZeRO" 13
resume one_to2z3 "$LOCAL" one/ckpt_000012 --zero 3
compare one one_to2z3 tol "re-shard 1 GPU (no ZeRO) -> 2 GPUs (--zero 3)" 13
fi  # section 5

# -- 5b. --fp8-allgather (fp8-tensorwise): each rank casts its shard, the gathers move fp8 codes; a
if ! skip 5b; then
# tensorwise cast is elementwise with one scale (from the amax all-reduced with max), so the codes
# are the unsharded cast's: bit-identical to --zero 3 with the same recipe, and to 1 GPU.
run z3f "$LOCAL" --zero 3 --recipe fp8-tensorwise
run z3fag "$LOCAL" --zero 3 --recipe fp8-tensorwise --fp8-allgather
compare z3f z3fag bitwise "2 GPUs --zero 3 --fp8-allgather vs --zero 3 (fp8-tensorwise)"
run onef "" --recipe fp8-tensorwise
run w1z3fag "" --zero 3 --recipe fp8-tensorwise --fp8-allgather
compare onef w1z3fag bitwise "1 GPU --zero 3 --fp8-allgather vs no ZeRO (fp8-tensorwise, 2 micro-batches, weight cache)"
acc="--total-batch 4096 --optim adamw8bit"  # 2 micro-batches per rank
run z3f_a "$LOCAL" --zero 3 --recipe fp8-tensorwise $acc
run z3fag_a "$LOCAL" --zero 3 --recipe fp8-tensorwise --fp8-allgather $acc
compare z3f_a z3fag_a bitwise "2 GPUs --zero 3 --fp8-allgather vs --zero 3 (fp8-tensorwise, 2 micro-batches, adamw8bit)"
if grep -q "fp8 all-gather codes" "$T/z3fag.log"; then ok "--fp8-allgather: the memory table shows its codes"
else bad "--fp8-allgather: no 'fp8 all-gather codes' line in the memory table (log $T/z3fag.log)"; fi
for bad_flags in "--zero 2 --recipe fp8-tensorwise --fp8-allgather" "--zero 3 --recipe fp8-rowwise --fp8-allgather"; do
  timeout 120 $TL $common $bad_flags -o "$T/fag_bad" > "$T/fag_bad.log" 2>&1
  if [ $? -ne 0 ] && grep -q -- "--fp8-allgather .*\(without --zero 3\|with --recipe\)" "$T/fag_bad.log"; then
    ok "--fp8-allgather refused with $bad_flags: $(grep -m1 -- '--fp8-allgather' "$T/fag_bad.log" | cut -c1-120)"
  else bad "--fp8-allgather with $bad_flags: expected a clear refusal (log $T/fag_bad.log)"; fi
done
# -- end of 5b.
fi  # section 5b

[ -d "$T/z3/ckpt_000012" ] && ls "$T/z3/ckpt_000012" | tr '\n' ' '; echo

fi  # sections 1-5

# ---- 6. four GPUs (NP=4) ---------------------------------------------------------------------
if [ "$NP" = 4 ]; then
gt_check local4 4 $LOCAL4 "$GT"
TB=4096; common=$(common_flags)  # 4 micro-batches: 1 GPU accumulates 4, 2 GPUs 2 each, 4 GPUs 1 each
run one_q ""
run q1 "$LOCAL4" --zero 1
run q2 "$LOCAL4" --zero 2
run q3 "$LOCAL4" --zero 3
compare one_q q1 tol "1 GPU (4 micro-batches) vs 4 GPUs --zero 1 (adamw)"
compare one_q q2 tol "1 GPU (4 micro-batches) vs 4 GPUs --zero 2 (adamw)"
compare one_q q3 tol "1 GPU (4 micro-batches) vs 4 GPUs --zero 3 (adamw)"
compare q2 q3 bitwise "4 GPUs --zero 3 vs --zero 2 (adamw)"
run q2_ov "$LOCAL4" --zero 2 --zero-gather-overlap
compare q2 q2_ov bitwise "4 GPUs --zero 2 --zero-gather-overlap vs without (adamw)"
resume q2_ovr "$LOCAL4" q2/ckpt_000012 --zero 2 --zero-gather-overlap
compare q2 q2_ovr bitwise "resume on 4 GPUs --zero 2 from step 12 (written without) with --zero-gather-overlap" 13
run q2_8 "$LOCAL4" --zero 2 --optim adamw8bit
run q3_8 "$LOCAL4" --zero 3 --optim adamw8bit
compare q2_8 q3_8 bitwise "4 GPUs --zero 3 vs --zero 2 (adamw8bit)"
run q3_off "$LOCAL4" --zero 3 --offload
compare q2 q3_off bitwise "4 GPUs --zero 3 --offload vs --zero 2"
if [ -n "$MPI4" ]; then
  run q3_mpi "$MPI4" --zero 3
  compare q3 q3_mpi bitwise "4 GPUs --zero 3: launch_local vs mpirun"
fi
mt=$(grep -E "ZeRO-3 over 4 ranks" "$T/q3.log")
if [ -n "$mt" ]; then ok "--zero 3 on 4 ranks: the memory table names the shard"; echo "$mt"
else bad "--zero 3 on 4 ranks: no 'ZeRO-3 over 4 ranks' line (log $T/q3.log)"; fi
run q3f "$LOCAL4" --zero 3 --recipe fp8-tensorwise
run q3fag "$LOCAL4" --zero 3 --recipe fp8-tensorwise --fp8-allgather
compare q3f q3fag bitwise "4 GPUs --zero 3 --fp8-allgather vs --zero 3 (fp8-tensorwise)"
resume q3_r "$LOCAL4" q3/ckpt_000012 --zero 3
compare q3 q3_r bitwise "resume on 4 GPUs --zero 3 from step 12" 13
resume q3_to2 "$LOCAL" q3/ckpt_000012 --zero 3
compare q3 q3_to2 tol "re-shard 4 GPUs (--zero 3) -> 2 GPUs (--zero 3)" 13
resume q3_to1 "" q3/ckpt_000012
compare q3 q3_to1 tol "re-shard 4 GPUs (--zero 3) -> 1 GPU without ZeRO" 13
run h2 "$LOCAL" --zero 2
resume h2_to4 "$LOCAL4" h2/ckpt_000012 --zero 3
compare h2 h2_to4 tol "re-shard 2 GPUs (--zero 2) -> 4 GPUs (--zero 3)" 13
# rank 2 of 4 dies or hangs at step 5: every rank exits non-zero, a survivor names itself
TMO=20; LIMIT=$((TMO + 90))
for kind in exit hang; do
  log="$T/fault4_$kind.log"; t0=$(date +%s)
  LLAMA_AO_FAULT=2:5:$kind timeout 300 $LOCAL4 $TL $common --dist-timeout $TMO --zero 3 -o "$T/f4_$kind" > "$log" 2>&1
  rc=$?; el=$(($(date +%s) - t0))
  exits=$(sed -n -E 's/^launch_local: rank ([0-9]) exit ([0-9]+)/\1:\2/p' "$log" | tr '\n' ' ')
  nz=$(sed -n -E 's/^launch_local: rank [0-9] exit ([1-9][0-9]*)$/\1/p' "$log" | wc -l)
  named=$(grep -E "rank [013]/4.*(timed out|NCCL)" "$log" | head -1 | sed -E 's/^error: //' | cut -c1-200)
  if [ $rc -ne 124 ] && [ "$nz" -eq 4 ] && [ $el -le $LIMIT ] && [ -n "$named" ]; then
    ok "rank 2 of 4 ${kind}s at step 5, --zero 3: exits $exits after $el s (limit $LIMIT): $named"
  else bad "rank 2 of 4 ${kind}s at step 5, --zero 3: rc $rc, exits ${exits:-?}, after $el s (limit $LIMIT), message: ${named:-none} (log $log)"; fi
done
fi  # section 6

finish
