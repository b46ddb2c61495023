"""The page `fairkv serve` shows at /, in headless Chromium driven over the DevTools protocol.

The browser talks the protocol over a pipe (--remote-debugging-pipe: JSON messages ended by a
NUL byte on file descriptors 3 and 4), so no package is needed. Checked, for a model without a
chat template (completion mode) and with --chat-template chatml (chat mode): the live view fills
in from /stats (model name, counters, a bar per rank, the imbalance), a prompt typed and sent
streams back exactly the text the API answers for the same request, and no script error is
thrown.

Usage: serve_page_test.py FAIRKV STORIES260K. Exit 77 when Chromium or the model is absent.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

FAIRKV, STORIES = sys.argv[1:3]
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)


def start_server(*args):
    proc = subprocess.Popen([FAIRKV, "serve", "-m", STORIES, "--port", "0", "-t", "1", *args],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    raise RuntimeError("fairkv serve did not start")


def api(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


class Browser:
    """Headless Chromium on one page, and the DevTools protocol over its pipe."""

    def __init__(self, url):
        to_browser, self.cmd = os.pipe()
        self.events, from_browser = os.pipe()
        self.profile = tempfile.mkdtemp()

        def wire():  # the browser reads commands on fd 3 and writes answers on fd 4
            a, b = os.dup(to_browser), os.dup(from_browser)
            os.dup2(a, 3)  # inheritable, unlike every other descriptor of this process
            os.dup2(b, 4)

        # close_fds would close 3 and 4 after wire() has made them.
        self.proc = subprocess.Popen(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-pipe", "--user-data-dir=" + self.profile, url],
            close_fds=False, preexec_fn=wire,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self.buffer = b""
        self.next_id = 0
        self.exceptions = []
        target = None
        for _ in range(100):
            pages = [t for t in self.call("Target.getTargets")["targetInfos"]
                     if t["type"] == "page"]
            if pages:
                target = pages[0]["targetId"]
                break
            time.sleep(0.1)
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.call("Runtime.enable", session=True)

    def call(self, method, params=None, session=False):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self.cmd, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.events, 1 << 16)
                if not chunk:
                    raise RuntimeError("the browser closed its pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(reply["params"]["exceptionDetails"])
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, session=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression, seconds=30):
        end = time.time() + seconds
        while time.time() < end:
            try:
                value = self.eval(expression)
            except RuntimeError:  # the page is still loading
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"still false after {seconds} s: {expression}")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.cmd)
        os.close(self.events)
        shutil.rmtree(self.profile, ignore_errors=True)


def check_page(chat, *server_args):
    proc, url = start_server(*server_args)
    browser = Browser(url + "/")
    try:
        mode = "chat" if chat else "completion"
        # The live view: /stats polled into the header, the counters and the per-rank bars.
        browser.wait("document.getElementById('model').textContent === 'stories260K.gguf'")
        browser.wait("document.getElementById('running').textContent === '0'")
        bars = browser.eval("document.querySelectorAll('#kv .bar').length")
        assert bars == 1, f"{mode}: {bars} KV bars for one rank"
        browser.wait("document.getElementById('imb').textContent.startsWith('now 1.000')")
        title = browser.eval("document.getElementById('mode').textContent")
        assert title.startswith("Chat" if chat else "Completion"), title

        # A prompt typed and sent streams back what the API answers for the same request.
        prompt = "Tell me a story." if chat else "Once upon a time"
        browser.eval(f"""
            document.getElementById('max').value = '20';
            document.getElementById('temp').value = '0';
            document.getElementById('input').value = {json.dumps(prompt)};
            document.getElementById('send').click();""")
        browser.wait("document.querySelectorAll('#log .msg').length >= 2 && "
                     "!document.getElementById('send').disabled")
        shown = browser.eval("document.querySelectorAll('#log .msg')[1]"
                             ".querySelector('span').textContent")
        body = {"max_tokens": 20, "temperature": 0}
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
            want = api(url, "/v1/chat/completions", body)["choices"][0]["message"]["content"]
        else:
            body["prompt"] = prompt
            want = api(url, "/v1/completions", body)["choices"][0]["text"]
        assert shown == want, f"{mode}: the page shows {shown!r}, the API answers {want!r}"
        usage = browser.eval("document.getElementById('speed').textContent")
        assert "prompt +" in usage, f"{mode}: no usage shown ({usage!r})"
        assert not browser.exceptions, f"{mode}: script errors {browser.exceptions}"
        print(f"ok: {mode} mode: live view filled in, streamed {len(shown)} characters as the "
              "API answers")
    finally:
        browser.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    if not BROWSER:
        print("skipped: no chromium (Debian: apt-get install chromium)")
        sys.exit(77)
    if not os.path.exists(STORIES):
        print(f"skipped: {STORIES} is absent")
        sys.exit(77)
    check_page(False)
    check_page(True, "--chat-template", "chatml")
    print("serve_page: all checks passed")
