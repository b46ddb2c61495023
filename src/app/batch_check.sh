#!/bin/sh
# ctest driver for `fairkv batch`: the requests of a file served together give each request the
# output it gets alone; on R ranks (threads, and under mpirun) the same greedy outputs as one
# device; under a tight --kv-memory the same outputs again; bad files and options are refused by
# name with exit code 1.
# Usage: batch_check.sh solo|devices|errors|mpi FAIRKV MODEL [MPIEXEC ARGS...]
# BATCH_ARGS (environment): more options for every run, e.g. --activations ggml.
set -u
BATCH_ARGS=${BATCH_ARGS-}
mode=$1 fairkv=$2 model=$3
shift 3
[ -f "$model" ] || { echo "skipped: $model is absent"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0

# Five requests arriving over 0.1 s, greedy and seeded, full and Ada-KV caches.
cat >"$dir/req.jsonl" <<'JSON'
{"id": "a", "prompt": "Once upon a time, there was a little girl named Lily. She loved to play outside in the park", "max_tokens": 24, "temperature": 0}
{"id": "b", "prompt": "The cat sat on the mat", "max_tokens": 16, "temperature": 0.8, "seed": 5, "arrival": 0.02}
{"id": "c", "prompt": "One day, a big dog came to the park and saw a ball. The dog wanted to play with the ball, so he ran to it", "max_tokens": 20, "temperature": 0, "kv_policy": "adakv", "kv_budget": 40, "arrival": 0.05}
{"id": "d", "prompt": [1, 365, 300], "max_tokens": 12, "temperature": 0.9, "seed": 11, "top_k": 10, "arrival": 0.08}
{"id": "e", "prompt": "Tom and Sue went to the", "max_tokens": 30, "temperature": 0, "stop": ["."], "arrival": 0.1}
JSON

# Two longer prompts for DefensiveKV on every request (--kv-budget 16 of about 100 tokens), where
# CriticalKV's value norms move one device's outputs.
cat >"$dir/defensive.jsonl" <<'JSON'
{"id": "g", "prompt": "Lily and Tom were friends. One day they went to the park with a big red ball and a kite. The sun was hot and the birds sang in the trees. Lily threw the ball to Tom, but it flew over his head and landed in the pond. Tom was sad, but Lily had an idea. She took the kite and", "max_tokens": 24, "temperature": 0}
{"id": "h", "prompt": "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball under a tree. She ran to the ball and picked it up. Her mom said it was time to go home, but Lily wanted to play more.", "max_tokens": 24, "temperature": 0, "arrival": 0.02}
JSON
defensive="--kv-policy defensivekv --kv-budget 16 --kv-critical"

# The deterministic part of each --json line (timings dropped), in file order.
outputs() {
  file=$1
  shift
  "$fairkv" batch -m "$model" --requests "$file" --json --kv-window 8 $BATCH_ARGS "$@" 2>"$dir/err" |
    sed 's/,"tpot_ms".*//; s/"preemptions":[0-9]*,//'
}

check() {
  name=$1 want=$2 got=$3
  if [ "$got" != "$want" ] || [ -z "$got" ]; then
    echo "FAILED: $name"
    printf '  expected: %s\n' "$want" | head -5
    printf '  got:      %s\n' "$got" | head -5
    sed 's/^/  stderr: /' "$dir/err"
    fail=1
  else
    echo "ok: $name"
  fi
}

# Each request alone (its own file, arrival 0), in file order.
alone() {
  n=0
  while IFS= read -r line; do
    n=$((n + 1))
    printf '%s\n' "$line" | sed 's/, "arrival": [0-9.]*//' >"$dir/one$n.jsonl"
    "$fairkv" batch -m "$model" --requests "$dir/one$n.jsonl" --json --kv-window 8 "$@" \
      2>>"$dir/err" | sed 's/,"tpot_ms".*//; s/"preemptions":[0-9]*,//'
  done <"$dir/req.jsonl"
}

# Three requests of four paragraphs each (630-690 tokens on stories260K, 2.5-2.7 blocks of the
# canonical order's 256 rows), greedy and seeded, in $dir/slices.jsonl, and a profile of them
# under Ada-KV in $dir/profile.json (uneven units, so that the planners replicate rather than
# keep tp).
token_slice_requests() {
  pa="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, a big dog came to the park and saw a ball. The dog wanted to play with the ball, so he ran to it. Lily saw the dog and smiled. She threw the ball far away and the dog ran after it. Tom and Sue went to the park too. They played with the dog and the ball all day long. When the sun went down, they all went home happy. The next morning, Lily woke up early and looked out of the window."
  pb="One day, a big dog came to the park and saw a ball. The dog wanted to play with the ball, so he ran to it. Lily saw the dog and smiled. She threw the ball far away and the dog ran after it. Tom and Sue went to the park too. They played with the dog and the ball all day long. When the sun went down, they all went home happy. It was raining, and the park was wet."
  pc="Tom and Sue went to the park too. They played with the dog and the ball all day long. When the sun went down, they all went home happy. The next morning, Lily woke up early and looked out of the window. It was raining, and the park was wet. Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends."
  printf '{"id": "la", "prompt": "%s %s %s %s", "max_tokens": 40, "temperature": 0}\n' \
    "$pa" "$pb" "$pc" "$pa" >"$dir/slices.jsonl"
  printf '{"id": "lb", "prompt": "%s %s %s %s", "max_tokens": 32, "temperature": 0.8, "seed": 7, "arrival": 0.02}\n' \
    "$pb" "$pc" "$pa" "$pb" >>"$dir/slices.jsonl"
  printf '{"id": "lc", "prompt": "%s %s %s %s", "max_tokens": 36, "temperature": 0, "arrival": 0.05}\n' \
    "$pc" "$pa" "$pb" "$pc" >>"$dir/slices.jsonl"
  "$fairkv" profile -m "$model" --prompts "$dir/slices.jsonl" -o "$dir/profile.json" \
    --kv-policy adakv --kv-budget 256 >/dev/null 2>"$dir/err" || check "profile" ok ""
}

case $mode in
  solo)
    ref=$(alone)
    check "together = alone" "$ref" "$(outputs "$dir/req.jsonl")"
    check "parallel 2 = alone" "$ref" "$(outputs "$dir/req.jsonl" --parallel 2)"
    # The chunk size is part of a prompt's arithmetic: compare with the same chunks alone.
    check "small chunks: together = alone" "$(alone --ubatch-size 8 --batch-size 16)" \
      "$(outputs "$dir/req.jsonl" --ubatch-size 8 --batch-size 16)"
    # Long outputs all arriving at once under a --kv-memory that holds two of them: one is
    # preempted (swapped out, or dropped and recomputed without swap space) and resumed.
    cat >"$dir/long.jsonl" <<'JSON'
{"id": "t0", "prompt": "Once upon a time", "max_tokens": 150, "ignore_eos": true, "temperature": 0}
{"id": "t1", "prompt": "The cat sat on the mat", "max_tokens": 150, "ignore_eos": true, "temperature": 0.8, "seed": 1}
{"id": "t2", "prompt": "One day, a big dog came to the park", "max_tokens": 150, "ignore_eos": true, "temperature": 0}
{"id": "t3", "prompt": "Tom and Sue went to the", "max_tokens": 150, "ignore_eos": true, "temperature": 0.8, "seed": 3}
JSON
    roomy=$(outputs "$dir/long.jsonl")
    for swap in 1G 0; do
      check "tight kv memory, swap space $swap = roomy" "$roomy" \
        "$(outputs "$dir/long.jsonl" --kv-memory 700K --swap-space $swap)"
      if ! grep -q 'preemptions *[1-9]' "$dir/err"; then
        echo "FAILED: no preemption under --kv-memory 700K --swap-space $swap"
        fail=1
      fi
    done
    ;;
  devices)
    # Every request, greedy and seeded: the canonical reduction gives one device's floats on R
    # ranks under tp and the FairKV planners with fixed shares.
    ref=$(outputs "$dir/req.jsonl")
    for planner in tp balanced fair-copy; do
      for R in 1 2 3 4; do
        got=$(outputs "$dir/req.jsonl" --devices $R --placement $planner --no-replan)
        if grep -q "needs the device count" "$dir/err"; then
          echo "skipped: $planner R=$R (the model's heads do not divide over $R ranks)"
          continue
        fi
        check "$planner R=$R" "$ref" "$got"
      done
    done
    # DefensiveKV: each unit's value norms from the ranks holding its query heads' W_o columns.
    ref=$(outputs "$dir/defensive.jsonl" $defensive on)
    if [ "$ref" = "$(outputs "$dir/defensive.jsonl" $defensive off)" ]; then
      echo "FAILED: CriticalKV's value norms change no output, so the ranks' could not be checked"
      fail=1
    fi
    for case in "tp 2" "balanced 3" "fair-copy 2" "fair-copy 4"; do
      set -- $case
      check "defensivekv $1 R=$2" "$ref" \
        "$(outputs "$dir/defensive.jsonl" $defensive on --devices $2 --placement $1 --no-replan)"
    done
    check "defensivekv split R=3" "$ref" \
      "$(outputs "$dir/defensive.jsonl" $defensive on --devices 3 --placement split)"
    # Token slices (split, and re-planning, which re-divides replicated units into them) are
    # canonical too: prompts long enough that slices hold one or more of the canonical order's
    # 256-row blocks, greedy and seeded, planned by a profile measured under Ada-KV (uneven
    # units, so that the planners replicate rather than keep tp).
    token_slice_requests
    ref=$(outputs "$dir/slices.jsonl")
    for R in 2 3 4; do
      for planner in split fair-copy; do
        got=$(outputs "$dir/slices.jsonl" --devices $R --placement $planner --profile "$dir/profile.json")
        check "$planner R=$R re-planned, long prompts" "$ref" "$got"
        if [ $planner = split ] && ! grep -q 'shares.* [1-9][0-9]* tokens' "$dir/err"; then
          echo "FAILED: split R=$R placed no token slices"
          fail=1
        fi
      done
    done
    ;;
  mpi)
    mpirun="$*"  # the launcher and its options (no spaces inside them)
    # mpi_outputs FILE PLANNER [OPTIONS]: the outputs on 2 MPI ranks.
    mpi_outputs() {
      file=$1 planner=$2
      shift 2
      $mpirun "$fairkv" batch -m "$model" --requests "$file" --json --kv-window 8 --devices 2 \
        --comm mpi --placement "$planner" $BATCH_ARGS "$@" 2>"$dir/err" |
        sed 's/,"tpot_ms".*//; s/"preemptions":[0-9]*,//'
    }
    ref=$(outputs "$dir/req.jsonl")
    for planner in tp fair-copy; do
      check "$planner on 2 MPI ranks" "$ref" "$(mpi_outputs "$dir/req.jsonl" $planner --no-replan)"
    done
    grep '"temperature": 0,' "$dir/req.jsonl" >"$dir/greedy.jsonl"
    check "split on 2 MPI ranks" "$(outputs "$dir/greedy.jsonl")" \
      "$(mpi_outputs "$dir/greedy.jsonl" split)"
    check "defensivekv fair-copy on 2 MPI ranks" "$(outputs "$dir/defensive.jsonl" $defensive on)" \
      "$(mpi_outputs "$dir/defensive.jsonl" fair-copy $defensive on --no-replan)"
    token_slice_requests
    check "split on 2 MPI ranks, long prompts" "$(outputs "$dir/slices.jsonl")" \
      "$(mpi_outputs "$dir/slices.jsonl" split --profile "$dir/profile.json")"
    ;;
  errors)
    # refuse NAME PATTERN ARGS...: exit code 1 and PATTERN on stderr.
    refuse() {
      name=$1 pattern=$2
      shift 2
      "$fairkv" batch -m "$model" "$@" >/dev/null 2>"$dir/err"
      rc=$?
      if [ $rc -ne 1 ] || ! grep -q -- "$pattern" "$dir/err"; then
        echo "FAILED: $name (exit $rc)"
        sed 's/^/  stderr: /' "$dir/err"
        fail=1
      else
        echo "ok: $name"
      fi
    }
    printf '{"prompt": "a"}\n{"prompt": "b", "temprature": 1}\n' >"$dir/bad1.jsonl"
    refuse "unknown field" 'bad1.jsonl: line 2: unknown field "temprature"' --requests "$dir/bad1.jsonl"
    printf '{"prompt": "a", "max_tokens": -1}\n' >"$dir/bad2.jsonl"
    refuse "bad max_tokens" 'line 1: field "max_tokens"' --requests "$dir/bad2.jsonl"
    printf 'not json\n' >"$dir/bad3.jsonl"
    refuse "not JSON" 'line 1: not JSON' --requests "$dir/bad3.jsonl"
    : >"$dir/empty.jsonl"
    refuse "empty file" 'no requests' --requests "$dir/empty.jsonl"
    refuse "missing file" 'cannot read the request file' --requests "$dir/nope.jsonl"
    refuse "bad kv memory" '--kv-memory: expected a size' --requests "$dir/req.jsonl" --kv-memory lots
    refuse "bad batch size" '--batch-size: expected at least' --requests "$dir/req.jsonl" \
      --batch-size 10 --ubatch-size 16
    refuse "bad comm" '--comm: expected threads or mpi' --requests "$dir/req.jsonl" --devices 2 \
      --comm carrier-pigeon
    # A request that cannot fit is refused (named), the others still run: exit 0.
    printf '{"id": "big", "prompt": "a b c d e f g h", "max_tokens": 5000}\n{"id": "ok", "prompt": "a", "max_tokens": 2}\n' >"$dir/big.jsonl"
    "$fairkv" batch -m "$model" --requests "$dir/big.jsonl" --kv-memory 300K --json >"$dir/out" 2>"$dir/err"
    if [ $? -ne 0 ] || ! grep -q 'big refused: kv memory' "$dir/err" || ! grep -q '"id":"ok"' "$dir/out"; then
      echo "FAILED: a request too large for --kv-memory"
      sed 's/^/  stderr: /' "$dir/err"
      fail=1
    else
      echo "ok: a request too large for --kv-memory"
    fi
    ;;
  *)
    echo "unknown mode $mode"
    exit 2
    ;;
esac
[ $fail -eq 0 ] && echo "batch_check $mode: all checks passed"
exit $fail
