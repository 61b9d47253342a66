#!/usr/bin/env bash
# Runs each test binary, prints its output, and ends with the total line
# "N passed, N failed" (", N skipped" when some were skipped). Exit status is non-zero
# when any check failed or any binary crashed.
set -u
build=$1; shift
total_p=0; total_f=0; total_s=0; crashed=0
for bin in "$@"; do
  name=$(basename "$bin")
  echo "== $name"
  out=$("$bin" 2>&1); rc=$?
  printf '%s\n' "$out" | grep -v -E '^[0-9]+ passed, [0-9]+ failed' 
  last=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
  if [ -z "$last" ]; then
    echo "CRASH $name exited $rc without a summary line"; crashed=$((crashed+1)); total_f=$((total_f+1)); continue
  fi
  p=$(echo "$last" | sed -E 's/^([0-9]+) passed.*/\1/')
  f=$(echo "$last" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
  s=$(echo "$last" | sed -n -E 's/.*, ([0-9]+) skipped.*/\1/p'); s=${s:-0}
  echo "   $name: $last"
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "CRASH $name exited $rc"; total_f=$((total_f+1)); fi
  total_p=$((total_p+p)); total_f=$((total_f+f)); total_s=$((total_s+s))
done
if [ "$total_s" -gt 0 ]; then echo "$total_p passed, $total_f failed, $total_s skipped"; else echo "$total_p passed, $total_f failed"; fi
[ "$total_f" -eq 0 ]
