#!/usr/bin/env bash
# Starts N ranks of a command on this machine without MPI, through the launcher-free variables
# of dist/dist.cuh: rank r gets LLAMA_AO_RANK=r, LLAMA_AO_LOCAL_RANK=r (so GPU r), and all share
# a fresh LLAMA_AO_INIT_FILE (or the one already set in the environment). Every rank's output goes
# to this terminal. When they have all ended, one line per rank "launch_local: rank R exit S" goes
# to stderr, and the exit status is 0 if every rank exited 0, else the first non-zero one.
#   bash dist/launch_local.sh 2 ./train_llama --zero 1 ...
# On several machines, start each rank the same way by hand (or from a batch system) with
# LLAMA_AO_WORLD_SIZE, LLAMA_AO_RANK, LLAMA_AO_LOCAL_RANK and an init file on a shared filesystem.
set -u
if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash dist/launch_local.sh N COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1; shift
own_init=0
if [ -z "${LLAMA_AO_INIT_FILE:-}" ]; then
  LLAMA_AO_INIT_FILE=$(mktemp -u /tmp/llama_ao_init.XXXXXXXX)  # a name only: rank 0 creates the file
  own_init=1
fi
# NVLink multicast stays off unless the caller asked for it (shared machines, see docs/TRAINING.md)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
pids=()
for ((r = 0; r < n; r++)); do
  LLAMA_AO_WORLD_SIZE=$n LLAMA_AO_RANK=$r LLAMA_AO_LOCAL_RANK=$r LLAMA_AO_INIT_FILE=$LLAMA_AO_INIT_FILE "$@" &
  pids+=($!)
done
# Ctrl-C or a kill of this script ends the ranks it started (by their process ids).
trap 'kill ${pids[*]} 2>/dev/null; exit 130' INT TERM
rc=0
for ((r = 0; r < n; r++)); do
  wait "${pids[$r]}"
  s=$?
  echo "launch_local: rank $r exit $s" >&2
  if [ $s -ne 0 ] && [ $rc -eq 0 ]; then rc=$s; fi
done
if [ $own_init = 1 ]; then rm -f "$LLAMA_AO_INIT_FILE"; fi
exit $rc
