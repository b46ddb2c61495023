#include "serve/page.h"

namespace fairkv::serve {

namespace {

// Plain DOM and fetch, no libraries: the page must work from the binary alone, offline.
const char* const kPage = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fairkv</title>
<style>
  :root { --fg: #1d2330; --muted: #6b7385; --line: #d9dde6; --accent: #2f6fdf; --warn: #d9822b; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: #f6f7fa; }
  header { padding: 10px 18px; background: #fff; border-bottom: 1px solid var(--line);
           display: flex; gap: 16px; align-items: baseline; flex-wrap: wrap; }
  header h1 { font-size: 17px; margin: 0; }
  header .muted { color: var(--muted); }
  main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 14px;
         padding: 14px 18px; }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; } }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
  h2 { font-size: 14px; margin: 0 0 8px; }
  #log { height: 52vh; overflow-y: auto; border: 1px solid var(--line); border-radius: 6px;
         padding: 8px; background: #fbfbfd; }
  .msg { margin: 6px 0; white-space: pre-wrap; word-wrap: break-word; }
  .msg b { color: var(--muted); font-weight: 600; margin-right: 4px; }
  .msg.error { color: #b3261e; }
  .meta { color: var(--muted); font-size: 12px; }
  textarea { width: 100%; min-height: 64px; margin-top: 8px; font: inherit; padding: 6px; }
  .row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin-top: 6px; }
  .row label { color: var(--muted); }
  .row input { width: 70px; }
  button { font: inherit; padding: 5px 14px; border-radius: 6px; border: 1px solid var(--accent);
           background: var(--accent); color: #fff; cursor: pointer; }
  button.secondary { background: #fff; color: var(--accent); }
  button:disabled { opacity: .5; cursor: default; }
  .counters { display: grid; grid-template-columns: repeat(4, 1fr); gap: 6px; margin-bottom: 10px; }
  .counter { border: 1px solid var(--line); border-radius: 6px; padding: 6px; text-align: center; }
  .counter div:first-child { font-size: 20px; font-weight: 600; }
  .counter div:last-child { color: var(--muted); font-size: 12px; }
  .bar { display: grid; grid-template-columns: 56px 1fr 92px; gap: 6px; align-items: center;
         margin: 3px 0; font-size: 12px; }
  .bar .track { background: #eef0f5; border-radius: 3px; height: 14px; overflow: hidden; }
  .bar .fill { background: var(--accent); height: 100%; }
  .bar .fill.step { background: var(--warn); }
  .bar span:last-child { text-align: right; font-variant-numeric: tabular-nums; }
  canvas { width: 100%; height: 120px; border: 1px solid var(--line); border-radius: 6px; }
</style>
</head>
<body>
<header>
  <h1>fairkv</h1>
  <span id="model" class="muted"></span>
  <span id="backend" class="muted"></span>
  <span class="row" style="margin: 0 0 0 auto">
    <label for="key">API key</label><input id="key" type="password" style="width: 140px">
  </span>
</header>
<main>
  <section>
    <h2 id="mode">Chat</h2>
    <div id="log"></div>
    <textarea id="input" placeholder="Write a message; Enter sends, Shift+Enter is a new line"></textarea>
    <div class="row">
      <button id="send">Send</button>
      <button id="stop" class="secondary" disabled>Stop</button>
      <button id="clear" class="secondary">Clear</button>
      <label for="max">max_tokens</label><input id="max" type="number" value="128" min="1">
      <label for="temp">temperature</label><input id="temp" type="number" value="0.7" step="0.1" min="0">
      <span id="speed" class="meta"></span>
    </div>
  </section>
  <section>
    <h2>Engine</h2>
    <div class="counters">
      <div class="counter"><div id="running">-</div><div>running</div></div>
      <div class="counter"><div id="waiting">-</div><div>waiting</div></div>
      <div class="counter"><div id="preempted">-</div><div>preempted</div></div>
      <div class="counter"><div id="finished">-</div><div>finished</div></div>
    </div>
    <h2>KV bytes per rank</h2>
    <div id="kv"></div>
    <h2 style="margin-top: 10px">Step time per rank</h2>
    <div id="step"></div>
    <h2 style="margin-top: 10px">KV imbalance (max / mean) <span id="imb" class="meta"></span></h2>
    <canvas id="chart" width="600" height="120"></canvas>
    <div id="totals" class="meta" style="margin-top: 6px"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = localStorage.getItem("fairkv-key") || "";
keyInput.onchange = () => localStorage.setItem("fairkv-key", keyInput.value);
function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}

let chatMode = true, modelName = "", history = [], controller = null;

function addMessage(role, text, cls) {
  const div = document.createElement("div");
  div.className = "msg" + (cls ? " " + cls : "");
  const who = document.createElement("b");
  who.textContent = role;
  const body = document.createElement("span");
  body.textContent = text;
  div.append(who, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return body;
}

// Reads server-sent events from a fetch response, calling onData with each parsed JSON.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send() {
  const text = $("input").value;
  if (!text.trim() || controller) return;
  $("input").value = "";
  addMessage(chatMode ? "user" : "prompt", text);
  const body = {
    model: modelName, stream: true, stream_options: { include_usage: true },
    max_tokens: Number($("max").value) || 128, temperature: Number($("temp").value) || 0,
  };
  let url;
  if (chatMode) {
    history.push({ role: "user", content: text });
    body.messages = history;
    url = "/v1/chat/completions";
  } else {
    body.prompt = text;
    url = "/v1/completions";
  }
  const out = addMessage(chatMode ? "assistant" : "completion", "");
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const t0 = performance.now();
  let tFirst = 0, reply = "";
  try {
    const res = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                   signal: controller.signal });
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || res.status + " " + res.statusText);
    }
    await readEvents(res, (j) => {
      if (j.error) throw new Error(j.error.message);
      if (j.usage) $("speed").textContent = j.usage.prompt_tokens + " prompt + " +
          j.usage.completion_tokens + " tokens";
      const c = j.choices && j.choices[0];
      if (!c) return;
      const piece = chatMode ? (c.delta && c.delta.content) || "" : c.text || "";
      if (piece && !tFirst) tFirst = performance.now();
      reply += piece;
      out.textContent = reply;
      $("log").scrollTop = $("log").scrollHeight;
    });
    const s = (performance.now() - t0) / 1000;
    $("speed").textContent += ", first token " + ((tFirst - t0) / 1000).toFixed(2) + " s, " +
        s.toFixed(2) + " s in all";
  } catch (e) {
    if (e.name === "AbortError") addMessage("", "(stopped)", "meta");
    else addMessage("error", e.message, "error");
  }
  if (chatMode) history.push({ role: "assistant", content: reply });
  controller = null;
  $("send").disabled = false;
  $("stop").disabled = true;
}

$("send").onclick = send;
$("stop").onclick = () => controller && controller.abort();
$("clear").onclick = () => { history = []; $("log").textContent = ""; };
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function bars(el, values, label, cls) {
  const max = Math.max(1e-9, ...values);
  el.textContent = "";
  values.forEach((v, r) => {
    const row = document.createElement("div");
    row.className = "bar";
    const name = document.createElement("span");
    name.textContent = "rank " + r;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill" + (cls ? " " + cls : "");
    fill.style.width = (100 * v / max).toFixed(1) + "%";
    track.append(fill);
    const num = document.createElement("span");
    num.textContent = label(v);
    row.append(name, track, num);
    el.append(row);
  });
}

const imbalance = [];
function drawChart() {
  const c = $("chart"), g = c.getContext("2d");
  const w = c.width, h = c.height;
  g.clearRect(0, 0, w, h);
  const top = Math.max(1.5, ...imbalance) * 1.05;
  const y = (v) => h - 4 - (v - 1) / (top - 1) * (h - 8);
  g.strokeStyle = "#d9dde6";
  g.fillStyle = "#6b7385";
  g.font = "11px sans-serif";
  for (const v of [1, (1 + top) / 2, top]) {
    g.beginPath(); g.moveTo(0, y(v)); g.lineTo(w, y(v)); g.stroke();
    g.fillText(v.toFixed(2), 4, Math.max(11, y(v) - 2));
  }
  g.strokeStyle = "#2f6fdf";
  g.lineWidth = 2;
  g.beginPath();
  imbalance.forEach((v, i) => {
    const x = w - (imbalance.length - 1 - i) * (w / 119);
    i ? g.lineTo(x, y(v)) : g.moveTo(x, y(v));
  });
  g.stroke();
}

async function poll() {
  try {
    const res = await fetch("/stats", { headers: headers() });
    if (res.ok) {
      const s = await res.json();
      if (modelName !== s.model) {
        modelName = s.model;
        chatMode = s.chat;
        $("model").textContent = s.model;
        $("mode").textContent = chatMode ? "Chat" : "Completion (the model has no chat template)";
      }
      $("backend").textContent = s.backend;
      for (const k of ["running", "waiting", "preempted", "finished"]) $(k).textContent = s[k];
      bars($("kv"), s.ranks.map((r) => r.kv_bytes), bytes);
      bars($("step"), s.ranks.map((r) => r.step_ms), (v) => v.toFixed(2) + " ms", "step");
      imbalance.push(s.imbalance);
      if (imbalance.length > 120) imbalance.shift();
      $("imb").textContent = "now " + s.imbalance.toFixed(3) + ", mean " +
          s.mean_imbalance.toFixed(3);
      drawChart();
      $("totals").textContent = s.prompt_tokens + " prompt tokens, " + s.generated_tokens +
          " generated, " + s.preemptions + " preemptions, " + s.replans + " re-plans, " +
          s.cancelled + " cancelled, " + s.refused + " refused";
    } else if (res.status === 401) {
      $("backend").textContent = "enter the API key (top right)";
    }
  } catch (e) {
    $("backend").textContent = "server unreachable";
  }
  setTimeout(poll, 500);
}
poll();
</script>
</body>
</html>
)PAGE";

}  // namespace

const char* index_page() {
  return kPage;
}

}  // namespace fairkv::serve
