#!/bin/sh
# ctest driver for `fairkv eval --suite ruler` on a small model: two runs with the same seed
# write the same JSON, every (context, task, policy, budget) has its record, the SVG is written,
# and bad options are refused by name.
# Usage: ruler_check.sh FAIRKV MODEL
set -u
fairkv=$1 model=$2
[ -f "$model" ] || { echo "skipped: $model is absent"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0
base() {
  "$fairkv" eval -m "$model" --suite ruler --samples 1 --seed 3 -t 1 "$@" 2>"$dir/err"
}
run() {
  base --contexts 400 --policies snapkv,zipvl,taskkv,epicache --budgets 20%,50% \
    --kv-epicache-block 128 "$@"
}
if ! run --json "$dir/a.json" --svg "$dir/a.svg" >"$dir/a.txt" ||
   ! run --json "$dir/b.json" >/dev/null; then
  echo "FAILED: the suite did not run"; sed 's/^/  stderr: /' "$dir/err"; exit 1
fi
cmp -s "$dir/a.json" "$dir/b.json" || { echo "FAILED: two runs differ"; fail=1; }
# 9 tasks x (full once + 4 policies x 2 budgets) = 81 records.
n=$(grep -c '"policy"' "$dir/a.json")
[ "$n" = 81 ] || { echo "FAILED: $n records, expected 81"; fail=1; }
# EpiCache's block-wise prefill held less than the full prefill at both budgets.
[ "$(grep -c '^epicache at context 400, budget .*(\([0-9]\.\|[1-9][0-9]\.\)' "$dir/a.txt")" = 2 ] ||
  { echo "FAILED: no EpiCache peak below the full prefill's"; grep '^epicache' "$dir/a.txt"; fail=1; }
grep -q '<svg' "$dir/a.svg" || { echo "FAILED: no SVG"; fail=1; }
grep -q '^all  *zipvl' "$dir/a.txt" || { echo "FAILED: no mean row for zipvl"; fail=1; }

# refused NAME PATTERN ARGS...: the run must fail and say PATTERN.
refused() {
  name=$1 pattern=$2
  shift 2
  if base "$@" >/dev/null; then
    echo "FAILED: $name was accepted"; fail=1
  elif ! grep -q -- "$pattern" "$dir/err"; then
    echo "FAILED: $name: no '$pattern' in:"; sed 's/^/  stderr: /' "$dir/err"; fail=1
  else
    echo "ok: $name"
  fi
}
refused "token budgets" "--budgets" --contexts 400 --budgets 64
refused "bad context" "--contexts" --contexts 2x
refused "unknown task" "unknown task" --contexts 400 --tasks niah_single_9
refused "unknown policy" "unknown policy" --contexts 400 --policies snapkv,nope
exit $fail
