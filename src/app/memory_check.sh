#!/bin/sh
# ctest driver for the memory commands need: what `fairkv plan` (profiles, plans) or `fairkv bench`
# (random weights) would need beyond the memory available is refused before the work, naming the
# option and the size; memory that runs out anyway ends the command with a message naming it and
# what it was doing, never a bare std::bad_alloc; a replica budget past every unit on every device
# plans at once. Each command runs under a 4 GiB address space limit (a regression then fails
# instead of taking the machine's memory) and 60 s.
# Usage: memory_check.sh FAIRKV
set -u
fairkv=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0

# check NAME WORD COMMAND...: the command must fail within 60 s with WORD in its message.
check() {
  name=$1 word=$2
  shift 2
  start=$(date +%s)
  (ulimit -v 4194304 && timeout 60 "$@") >/dev/null 2>"$dir/err"
  rc=$?
  took=$(($(date +%s) - start))
  if [ $rc -eq 0 ] || [ $rc -eq 124 ] || ! grep -q -- "$word" "$dir/err"; then
    echo "FAILED: $name (exit $rc after $took s), expected a message with: $word"
    sed 's/^/  stderr: /' "$dir/err"
    fail=1
  else
    echo "ok: $name in $took s: $(tail -1 "$dir/err")"
  fi
}

synth="plan --synthetic lognormal:1 --summary"
# 2e9 samples of 80 x 8 loads: hundreds of GiB.
check "synthetic samples" "--samples 2000000000: .* needs [0-9.]* GiB, more than the" \
  "$fairkv" $synth --devices 2 --samples 2000000000
# A profile of 4096 layers x 1024 KV heads split over 1024 devices with every replica allowed:
# a million shares per layer, hundreds of GiB of plans.
awk 'BEGIN { L = 4096; H = 1024
  printf "{\"model\": \"wide\", \"layers\": %d, \"kv_heads\": %d, \"query_heads\": %d, ", L, H, H
  printf "\"head_dim\": 128, \"tokens\": ["
  for (l = 0; l < L; l++) {
    printf "%s[", l ? "," : ""
    for (h = 0; h < H; h++) printf "%s%d", h ? "," : "", 1 + (l * 7 + h * 13) % 97
    printf "]"
  }
  print "]}" }' >"$dir/wide.json"
check "a plan of a million shares per layer" \
  "--planner split --devices 1024: a plan of 4096 layers x 1024 KV heads with up to 1047552 \
replicas per layer needs" \
  "$fairkv" plan --profile "$dir/wide.json" --planner split --devices 1024 \
  --replicas 1000000000 --summary
# The bench's random F16 weights of a 64-layer model of embedding 8192: 128 GiB.
awk 'BEGIN { L = 64; H = 64
  printf "{\"model\": \"big\", \"layers\": %d, \"kv_heads\": %d, \"query_heads\": %d, ", L, H, H
  printf "\"head_dim\": 128, \"tokens\": ["
  for (l = 0; l < L; l++) {
    printf "%s[", l ? "," : ""
    for (h = 0; h < H; h++) printf "%s1", h ? "," : ""
    printf "]"
  }
  print "]}" }' >"$dir/big.json"
check "bench weights" "bench: random F16 weights of the profile's shape (64 layers, embd 8192, \
ffn 32768) needs" "$fairkv" bench --profile "$dir/big.json" --devices 2
# 3e6 samples of stories260K's 5 x 4 loads fit the machine (about 1 GiB) but not a 1 GiB address
# space: the allocator fails, and the message says so with the command and its stage.
start=$(date +%s)
(ulimit -v 1048576 && timeout 60 "$fairkv" plan --synthetic lognormal:1 --shape stories260K \
  --summary --devices 2 --samples 3000000) >/dev/null 2>"$dir/err"
rc=$?
want="fairkv: error: plan: out of memory while generating a synthetic profile (3000000 samples)"
if [ $rc -ne 1 ] || ! grep -qF "$want" "$dir/err"; then
  echo "FAILED: out of memory (exit $rc), expected: $want"
  sed 's/^/  stderr: /' "$dir/err"
  fail=1
else
  echo "ok: out of memory in $(($(date +%s) - start)) s: $(cat "$dir/err")"
fi
# A budget of 2e9 replicas is every unit on every other device (8 x 7): planned at once.
start=$(date +%s)
out=$( (ulimit -v 4194304 && timeout 60 "$fairkv" $synth --planner split --devices 8 \
  --replicas 2000000000) 2>"$dir/err")
rc=$?
if [ $rc -ne 0 ] || ! echo "$out" | grep -q "up to 56 extra replicas per layer"; then
  echo "FAILED: --replicas 2000000000 (exit $rc after $(($(date +%s) - start)) s)"
  echo "$out" | head -3
  sed 's/^/  stderr: /' "$dir/err"
  fail=1
else
  echo "ok: --replicas 2000000000 planned in $(($(date +%s) - start)) s"
fi
exit $fail
