#!/usr/bin/env python3
"""ctest: `fairkv bench-serve` against a running `fairkv serve` (stories260K) and against servers
that are not there or never answer.

Checks: the JSON result is well-formed; every request completes; with --ignore-eos every answer has
the tokens it asked for; prompt tokens come from usage; percentiles are ordered; goodput <= completed;
a sweep writes an SVG with both charts; a dataset file is read and cycled; chat completions are timed;
an unreachable server, a server that never answers (--timeout), an unknown model and bad options
end with a clear message and a non-zero exit, never a hang.

Usage: bench_serve_check.py FAIRKV MODEL   (exit 77 when the model is absent)
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET

FAIRKV, MODEL = sys.argv[1], sys.argv[2]
if not os.path.exists(MODEL):
    print(f"skipped: no model at {MODEL}")
    sys.exit(77)

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def serve(*args):
    proc = subprocess.Popen([FAIRKV, "serve", "-m", MODEL, "--port", "0", "-t", "1", *args],
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [lines.append(l) for l in proc.stderr],
                             daemon=True).start()
            return proc, m.group(1)
    proc.wait()
    raise RuntimeError("fairkv serve did not start:\n" + "".join(lines))


def bench(*args, timeout=300):
    return subprocess.run([FAIRKV, "bench-serve", *args], capture_output=True, text=True,
                          timeout=timeout)


def ordered(run, metric):
    keys = [f"median_{metric}_ms", f"p90_{metric}_ms", f"p99_{metric}_ms"]
    vals = [run[k] for k in keys]
    return all(v >= 0 for v in vals) and vals == sorted(vals)


tmp = tempfile.mkdtemp(prefix="bench_serve_check.")
proc, url = serve("--parallel", "4", "--chat-template", "chatml")
try:
    # Poisson arrivals under a concurrency cap, lengths spread, outputs fixed by ignore_eos.
    out = os.path.join(tmp, "run.json")
    r = bench("--base-url", url, "--num-prompts", "12", "--random-input-len", "24",
              "--random-output-len", "10", "--random-range-ratio", "0.5", "--ignore-eos",
              "--request-rate", "20", "--max-concurrency", "3", "--seed", "5",
              "--goodput", "ttft:2000", "tpot:1", "--result-file", out)
    check(r.returncode == 0, f"bench-serve exits 0 (rc {r.returncode}: {r.stderr[-500:]})")
    check("Serving Benchmark Result" in r.stdout and "P99 TPOT (ms):" in r.stdout,
          "the result table is printed")
    j = json.load(open(out))
    run = j["runs"][0]
    check(j["model_id"] != "" and j["num_prompts"] == 12, "the JSON names the model and requests")
    check(run["completed"] == 12 and run["failed"] == 0,
          f"completed == num-prompts ({run['completed']} completed, {run['failed']} failed)")
    check(run["output_lens"] == run["requested_output_lens"],
          f"--ignore-eos: every answer has the tokens asked for ({run['output_lens']} vs "
          f"{run['requested_output_lens']})")
    check(len(set(run["requested_output_lens"])) > 1, "output lengths are spread by the range ratio")
    check(all(n > 0 for n in run["input_lens"]) and run["requests_without_usage"] == 0,
          "prompt tokens come from the server's usage")
    check(run["total_output_tokens"] == sum(run["output_lens"]), "total output tokens add up")
    for m in ("ttft", "tpot", "itl", "e2el"):
        check(ordered(run, m), f"{m}: median <= p90 <= p99")
    check(all(t <= e for t, e in zip(run["ttfts"], run["e2els"])), "TTFT <= E2EL per request")
    # A chunk may carry several tokens (fairkv serve sends what is ready): gaps are per chunk,
    # and they span the time from the first chunk to the last.
    check(all(len(i) <= n - 1 and sum(i) <= e - t + 1e-6
              for i, n, t, e in zip(run["itls"], run["output_lens"], run["ttfts"], run["e2els"])),
          "at most one inter-token gap per token after the first, within TTFT..E2EL")
    check(run["peak_concurrency"] <= 3, f"--max-concurrency 3 holds (peak {run['peak_concurrency']})")
    check(0 <= run["good_requests"] <= run["completed"], "goodput <= completed")
    # Goodput recomputed from the per-request times: TTFT <= 2 s and TPOT <= 1 ms.
    good = sum(1 for t, e, n in zip(run["ttfts"], run["e2els"], run["output_lens"])
               if t * 1e3 <= 2000 and (n <= 1 or (e - t) / (n - 1) * 1e3 <= 1))
    check(run["good_requests"] == good,
          f"good requests as the objectives count them ({run['good_requests']} vs {good})")

    # A sweep: one run per rate, the SVG with both charts.
    out2, svg = os.path.join(tmp, "sweep.json"), os.path.join(tmp, "sweep.svg")
    r = bench("--base-url", url, "--num-prompts", "4", "--random-input-len", "8",
              "--random-output-len", "4", "--request-rate", "10,40,inf", "--arrival", "fixed",
              "--result-file", out2, "--svg", svg)
    check(r.returncode == 0, f"sweep exits 0 ({r.stderr[-300:]})")
    runs = json.load(open(out2))["runs"]
    check([x["request_rate"] for x in runs] == [10, 40, "inf"] and
          all(x["completed"] == 4 for x in runs), "the sweep runs every rate")
    check("| rate (req/s) |" in r.stdout, "the sweep prints a table")
    root = ET.parse(svg).getroot()
    texts = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    check("TPOT" in texts and "TTFT" in texts, "the SVG is well-formed XML with both charts")

    # A dataset file, cycled to --num-prompts; the chat endpoint.
    data = os.path.join(tmp, "data.jsonl")
    with open(data, "w") as f:
        f.write('{"prompt": "Once upon a time", "max_tokens": 5}\n')
        f.write('{"prompt": "The cat", "output_len": 3}\n')
    for endpoint in ("/v1/completions", "/v1/chat/completions"):
        out3 = os.path.join(tmp, "data.json")
        r = bench("--base-url", url, "--endpoint", endpoint, "--dataset-path", data,
                  "--num-prompts", "5", "--ignore-eos", "--result-file", out3)
        run = json.load(open(out3))["runs"][0] if r.returncode == 0 else {}
        check(run.get("completed") == 5 and run.get("output_lens") == [5, 3, 5, 3, 5],
              f"{endpoint}: the dataset's requests, cycled ({r.stderr[-300:]})")

    # Errors against a live server: an unknown model, bad options.
    r = bench("--base-url", url, "--model", "no-such-model", "--num-prompts", "2")
    check(r.returncode != 0 and "test request" in r.stderr and "HTTP 4" in r.stderr,
          f"an unknown model: the test request's HTTP error ({r.stderr.strip()})")
    for args, name in ((["--request-rate", "0"], "--request-rate"),
                       (["--request-rate", "1,x"], "--request-rate"),
                       (["--goodput", "tpot"], "--goodput"),
                       (["--svg", "x.svg"], "--svg"),
                       (["--base-url", "localhost:1"], "--base-url"),
                       (["--endpoint", "v1/completions"], "--endpoint")):
        if name != "--base-url":
            args = ["--base-url", url, *args]
        r = bench(*args, "--num-prompts", "1")
        check(r.returncode != 0 and name in r.stderr, f"{' '.join(args)}: refused naming {name}")
finally:
    proc.terminate()
    proc.wait(60)

# Nothing listening: a clear error at once.
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
r = bench("--base-url", f"http://127.0.0.1:{port}", "--num-prompts", "2", timeout=60)
check(r.returncode == 1 and "cannot reach the server" in r.stderr,
      f"an unreachable URL: non-zero exit, clear error ({r.stderr.strip()})")

# A server that accepts and never answers: --timeout ends the wait.
hold = socket.socket()
hold.bind(("127.0.0.1", 0))
hold.listen(8)
held = []
threading.Thread(target=lambda: [held.append(hold.accept()) for _ in range(8)], daemon=True).start()
r = bench("--base-url", f"http://127.0.0.1:{hold.getsockname()[1]}", "--model", "m",
          "--timeout", "1", "--num-prompts", "2", timeout=60)
check(r.returncode == 1 and "--timeout" in r.stderr,
      f"a server that never answers: --timeout ends it ({r.stderr.strip()})")

print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
