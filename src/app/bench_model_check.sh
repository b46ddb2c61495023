#!/bin/sh
# ctest driver for `fairkv bench-model`: the tests llama-bench would run for the -p/-n/-d lists,
# each with its repetitions and llama-bench's JSON fields (what scripts/bench-llama-cpp reads
# from both engines), in the three output formats; bad options refused by name with exit code 1.
# Usage: bench_model_check.sh FAIRKV MODEL
set -u
fairkv=$1 model=$2
[ -f "$model" ] || { echo "skipped: $model is absent"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0

"$fairkv" bench-model -m "$model" -p 16,8 -n 4 -d 0,8 -r 2 -t 1 -o jsonl >"$dir/out.jsonl" \
  2>"$dir/err" || { echo "FAIL: jsonl run"; cat "$dir/err"; exit 1; }
python3 - "$dir/out.jsonl" <<'PY' || fail=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
want = [(16, 0, 0), (8, 0, 0), (0, 4, 0), (16, 0, 8), (8, 0, 8), (0, 4, 8)]
got = [(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in rows]
assert got == want, f"tests {got}, expected {want}"
for r in rows:
    assert len(r["samples_ns"]) == 2 and len(r["samples_ts"]) == 2, r
    tokens = r["n_prompt"] + r["n_gen"]
    for ns, ts in zip(r["samples_ns"], r["samples_ts"]):
        assert ns > 0 and abs(ts - 1e9 * tokens / ns) <= 1e-6 * ts, r
    assert abs(r["avg_ts"] - sum(r["samples_ts"]) / 2) <= 1e-6 * r["avg_ts"], r
    assert r["type_k"] == "f16" and r["n_threads"] == 1, r
print("jsonl: 6 tests with their samples")
PY

"$fairkv" bench-model -m "$model" -p 8 -n 2 -r 1 -t 1 -o json --kv-type f32 >"$dir/out.json" 2>/dev/null &&
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert len(r)==2 and r[0]["type_k"]=="f32", r' \
    "$dir/out.json" || { echo "FAIL: json output"; fail=1; }
"$fairkv" bench-model -m "$model" -p 8 -n 2 -d 4 -r 1 -t 1 >"$dir/out.md" 2>/dev/null &&
  grep -q '| pp8 @ d4 |' "$dir/out.md" && grep -q '| tg2 @ d4 |' "$dir/out.md" &&
  [ "$(grep -c '^|' "$dir/out.md")" = 4 ] || { echo "FAIL: markdown table"; cat "$dir/out.md"; fail=1; }

refused() {  # EXPECTED-TEXT ARGS...: exit code 1 and the message names the option
  want=$1
  shift
  "$fairkv" bench-model "$@" >/dev/null 2>"$dir/err"
  rc=$?
  if [ "$rc" != 1 ] || ! grep -q -- "$want" "$dir/err"; then
    echo "FAIL: bench-model $* gave $rc: $(cat "$dir/err")"
    fail=1
  fi
}
refused "-d/--n-depth" -m "$model" -d 4,x
refused "-p/--n-prompt" -m "$model" -p -3
refused "nothing to measure" -m "$model" -p 0 -n 0
refused "-o/--output" -m "$model" -o csv
refused "-r/--repetitions" -m "$model" -r 0
refused "--kv-type" -m "$model" --kv-type q9
refused "$dir/none.gguf" -m "$dir/none.gguf"
[ $fail = 0 ] && echo "bench-model: all checks passed"
exit $fail
