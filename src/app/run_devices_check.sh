#!/bin/sh
# ctest driver for `fairkv run --devices`: compares what R ranks print with the single-device
# greedy continuation of the same prompt and compression.
# Usage: run_devices_check.sh threads|batch|errors|mpi FAIRKV MODEL PROFILE [MPIEXEC ARGS...]
set -u
mode=$1 fairkv=$2 model=$3 profile=$4
shift 4
[ -f "$model" ] || { echo "skipped: $model is absent"; exit 77; }
err=$(mktemp)
trap 'rm -f "$err"' EXIT
fail=0
prompt="Once upon a time, there was a little girl named Lily. She loved to play outside in the \
park with her friends. One day, she saw a big red ball under a tree. She ran to the ball and \
picked it up. Her mom said it was time to go home, but Lily wanted to play more."
kv="--kv-policy adakv --kv-budget 48"

# expect NAME EXPECTED COMMAND...: the command's stdout must be EXPECTED.
expect() {
  name=$1 want=$2
  shift 2
  got=$("$@" 2>"$err")
  rc=$?
  if [ $rc -ne 0 ] || [ "$got" != "$want" ]; then
    echo "FAILED: $name (exit $rc)"
    echo "  expected: $want"
    echo "  got:      $got"
    sed 's/^/  stderr: /' "$err"
    fail=1
  else
    echo "ok: $name"
  fi
}

single() { "$fairkv" run -m "$model" -p "$1" -n 24 --temp 0 $kv 2>/dev/null; }

case $mode in
  threads)
    ref=$(single "$prompt") || exit 1
    for planner in tp balanced fair-copy split; do
      for R in 2 3 4; do
        expect "$planner R=$R" "$ref" "$fairkv" run -m "$model" -p "$prompt" -n 24 --temp 0 $kv \
          --devices $R --placement $planner --profile "$profile"
        expect "$planner R=$R rebalanced" "$ref" "$fairkv" run -m "$model" -p "$prompt" -n 24 \
          --temp 0 $kv --devices $R --placement $planner --profile "$profile" --rebalance
      done
    done
    # Every policy runs on ranks: Task-KV, DefensiveKV with CriticalKV's value norms, and
    # EpiCache's block-wise prefill.
    for kv in "--kv-policy taskkv --kv-budget 32 --kv-window 8" \
      "--kv-policy defensivekv --kv-budget 32 --kv-window 8 --kv-critical on" \
      "--kv-policy epicache --kv-budget 24 --kv-window 8 --kv-epicache-block 20"; do
      ref=$(single "$prompt") || exit 1
      for planner in tp split; do
        for R in 2 3; do
          expect "$kv $planner R=$R" "$ref" "$fairkv" run -m "$model" -p "$prompt" -n 24 \
            --temp 0 $kv --devices $R --placement $planner --profile "$profile"
        done
      done
    done
    ;;
  batch)
    batch=$(mktemp)
    trap 'rm -f "$err" "$batch"' EXIT
    printf '%s\n' "$prompt" "The little dog ran to the park and saw a big red ball." \
      "Lily and Tom were friends. One day they went to the park and" >"$batch"
    want="" i=0
    while IFS= read -r line; do
      cont=$(single "$line") || exit 1
      [ $i -gt 0 ] && want="$want

"
      want="$want[$i] $line$cont"
      i=$((i + 1))
    done <"$batch"
    for planner in fair-copy split; do
      expect "batch of 3, $planner R=3" "$want" "$fairkv" run -m "$model" --batch-file "$batch" \
        -n 24 --temp 0 $kv --devices 3 --placement $planner --profile "$profile" --rebalance
    done
    ;;
  errors)
    # Bad input ends with a message naming the option and a non-zero exit, never a hang.
    # word:arguments, the message must contain the word.
    for case in "--devices:--devices 0" "nosuch:--devices 2 --placement nosuch" \
      "--comm:--devices 2 --comm carrier-pigeon" "--temp:--devices 2 --temp 0.7" \
      "no-such-file:--devices 2 --placement split --profile no-such-file.json"; do
      word=${case%%:*} args=${case#*:}
      if "$fairkv" run -m "$model" -p "$prompt" -n 4 $args >/dev/null 2>"$err"; then
        echo "FAILED: $args was accepted"
        fail=1
      elif ! grep -q -- "$word" "$err"; then
        echo "FAILED: $args: the message does not name $word:"
        cat "$err"
        fail=1
      else
        echo "ok: $args: $(cat "$err")"
      fi
    done
    # refused WORD COMMAND...: a single-device input error, refused naming WORD, within 20 s.
    refused() {
      word=$1
      shift
      if timeout 20 "$@" >/dev/null 2>"$err"; then
        echo "FAILED: $* was accepted"
        fail=1
      elif ! grep -q -- "$word" "$err"; then
        echo "FAILED: $*: the message does not name $word:"
        cat "$err"
        fail=1
      else
        echo "ok: $*: $(cat "$err")"
      fi
    }
    fifo=$(mktemp -u)
    mkfifo "$fifo"
    refused "-p: the prompt is empty" "$fairkv" run -m "$model" -p "" -n 4
    refused "--ctx-size" "$fairkv" run -m "$model" -p "$prompt" -n 40 -c 32 --devices 2
    refused "--kv-stats-out" "$fairkv" run -m "$model" -p "$prompt" -n 4 --devices 2 \
      --kv-stats-out /tmp/unused.json
    refused "a directory" "$fairkv" run -m "$model" -f /tmp -n 4
    refused "a FIFO" "$fairkv" run -m "$fifo" -p "$prompt" -n 4
    refused "a character device" "$fairkv" run -m /dev/zero -p "$prompt" -n 4
    refused "--threads" "$fairkv" run -m "$model" -p "$prompt" -n 4 -t 100000
    refused "--temp" "$fairkv" run -m "$model" -p "$prompt" -n 4 --temp nan
    refused "--top-p" "$fairkv" run -m "$model" -p "$prompt" -n 4 --top-p 2
    refused "--top-k" "$fairkv" run -m "$model" -p "$prompt" -n 4 --top-k -5
    refused "--min-p" "$fairkv" run -m "$model" -p "$prompt" -n 4 --min-p nan
    rm -f "$fifo"
    ;;
  mpi)
    ref=$(single "$prompt") || exit 1
    for planner in tp split; do
      expect "mpi $planner" "$ref" "$@" "$fairkv" run -m "$model" -p "$prompt" -n 24 --temp 0 \
        $kv --devices 2 --comm mpi --placement $planner --profile "$profile" --rebalance
    done
    kv="--kv-policy defensivekv --kv-budget 32 --kv-window 8 --kv-critical on"
    expect "mpi fair-copy $kv" "$(single "$prompt")" "$@" "$fairkv" run -m "$model" -p "$prompt" \
      -n 24 --temp 0 $kv --devices 2 --comm mpi --placement fair-copy --profile "$profile"
    # Ranks started with different arguments or models stop together with one message naming
    # the rank, instead of hanging or printing garbage: MPMD launches give rank 1 other input.
    mpiexec=$1 np=$2
    shift 3
    copy=$(mktemp)
    cp "$model" "$copy"
    printf 'x' | dd of="$copy" bs=1 seek=200 conv=notrunc 2>/dev/null  # inside the metadata
    run="-p Once -n 4 --temp 0 --devices 2 --comm mpi"
    for case in "command-line arguments:run -m $model $run:run -m $model $run --top-k 7" \
      "model file:run -m $model $run:run -m $copy $run" \
      "agree:run -m $model $run:run -m $(realpath "$model") $run"; do
      what=${case%%:*} rest=${case#*:}
      a=${rest%%:*} b=${rest#*:}
      timeout 60 "$mpiexec" "$@" "$np" 1 "$fairkv" $a : "$np" 1 "$fairkv" $b >/dev/null 2>"$err"
      rc=$?
      if [ "$what" = agree ]; then
        if [ $rc -ne 0 ]; then echo "FAILED: the same model under two paths was refused"; cat "$err"; fail=1
        else echo "ok: the same model under two paths runs"; fi
      elif [ $rc -eq 0 ] || [ $rc -eq 124 ] || ! grep -q "rank 1 disagrees with rank 0: its $what" "$err"; then
        echo "FAILED: ranks with different $what (exit $rc):"
        cat "$err"
        fail=1
      else
        echo "ok: ranks with different $what stop: $(grep disagrees "$err" | head -1)"
      fi
    done
    rm -f "$copy"
    # A rank that stops responding (SIGSTOP here; a lost host alike) ends the job on every rank
    # within the collective timeout, named by the others, instead of hanging it.
    pidfile=$(mktemp -u)
    long="run -m $model -p Once -n 100000 --temp 0 --devices 2 --comm mpi --comm-timeout 2"
    start=$(date +%s)
    timeout 60 "$mpiexec" "$@" "$np" 1 "$fairkv" $long : "$np" 1 \
      sh -c "echo \$\$ > $pidfile; exec $fairkv $long" >/dev/null 2>"$err" &
    job=$!
    for i in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.1; done
    sleep 2  # past MPI's start, which no timeout of ours covers, into the decode
    kill -STOP "$(cat "$pidfile")"
    wait $job
    rc=$?
    took=$(($(date +%s) - start))
    kill -KILL "$(cat "$pidfile")" 2>/dev/null
    rm -f "$pidfile"
    if [ $rc -eq 0 ] || [ $took -ge 30 ] || ! grep -q "no answer from rank 1" "$err"; then
      echo "FAILED: a stopped rank (exit $rc after $took s):"
      cat "$err"
      fail=1
    else
      echo "ok: a stopped rank ends the job in $took s: $(grep 'no answer' "$err" | head -1)"
    fi
    ;;
  *)
    echo "unknown mode $mode"
    exit 2
    ;;
esac
exit $fail
