"""`fairkv serve` against the real `openai` client and against jinja2.

Starts the fairkv binary on a free port and checks, through the openai package:
  - stories260K: /v1/models, completions (non-streamed and streamed, the stream's text equal to
    the whole answer, usage last), logprobs read by the client (streamed equal to whole, greedy:
    the most likely), refusals as the client's typed errors (chat without a chat template,
    unknown model, n > 1, logprobs out of range, a wrong API key), and the SIGTERM drain (a
    running stream finishes, the process exits 0);
  - SmolLM2-135M-Instruct when present: chat (non-streamed and streamed, greedy: equal), chat
    logprobs (logprobs: true, top_logprobs) through the client, streamed and not;
  - chat rendering byte for byte against jinja2 (as Hugging Face's apply_chat_template sets it
    up): SmolLM2's own tokenizer.chat_template, and the ChatML, Llama 3, Llama 2 and Mistral
    template strings of data/chat_templates/ with --chat-template picking each family, over
    conversations that the C++ tests do not cover (unicode spaces that `trim` removes, quotes and
    braces, empty contents, long exchanges, conversations the templates refuse);
  - under mpirun when given: 2 ranks (--devices 2 --comm mpi) answer as one device does, logprobs
    included (within float tolerance).

Usage: serve_openai_test.py FAIRKV STORIES260K SMOLLM2 TEMPLATE_DIR [MPIEXEC ARGS...]
Exit 77 when stories260K is absent; SmolLM2's checks skip (and say so) when it is absent.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

import jinja2
import jinja2.sandbox
import openai

FAIRKV, STORIES, SMOLLM2, TEMPLATES = sys.argv[1:5]
MPI = sys.argv[5:]
KEY = "sk-fairkv-test"


class Server:
    """A `fairkv serve` process on a free port; its stderr is collected."""

    def __init__(self, model, *args, launcher=()):
        cmd = [*launcher, FAIRKV, "serve", "-m", model, "--port", "0", "-t", "1", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines = []
        ready = threading.Event()
        self.url = None

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        ready.wait(120)
        if not self.url:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("fairkv serve did not start:\n" + "".join(self.lines))

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def get(self, path):
        req = urllib.request.Request(self.url + path, headers={"Authorization": "Bearer " + KEY})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path, body):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def rank0(self):
        """Under mpirun: the pid of the child that is rank 0 (it serves HTTP)."""
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if ppid == self.proc.pid and b"OMPI_COMM_WORLD_RANK=0" in env:
                return int(pid)
        return None

    def stop(self, pid=None):
        """SIGTERM to the server (or to pid), then its exit code."""
        if self.proc.poll() is None:
            os.kill(pid or self.proc.pid, signal.SIGTERM)
        code = self.proc.wait(120)
        self.reader.join(10)
        self.proc.stderr.close()
        return code


def stream_text(stream, chat):
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += (c.delta.content or "") if chat else c.text
            finish = c.finish_reason or finish
    return text, usage, finish


class Stories(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(STORIES, "--api-key", KEY, "-n", "32")
        cls.client = cls.server.client()
        cls.model = cls.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, "".join(cls.server.lines)

    def test_models(self):
        models = self.client.models.list().data
        self.assertEqual([m.id for m in models], ["stories260K.gguf"])
        self.assertEqual(models[0].owned_by, "fairkv")

    def test_completion_whole_and_streamed(self):
        args = dict(model=self.model, prompt="Once upon a time", max_tokens=24, temperature=0)
        whole = self.client.completions.create(**args)
        self.assertEqual(whole.object, "text_completion")
        self.assertEqual(len(whole.choices), 1)
        self.assertIn(whole.choices[0].finish_reason, ("stop", "length"))
        self.assertTrue(whole.choices[0].text)
        u = whole.usage
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)
        stream = self.client.completions.create(
            **args, stream=True, stream_options={"include_usage": True})
        text, usage, finish = stream_text(stream, chat=False)
        self.assertEqual(text, whole.choices[0].text)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertEqual(usage.completion_tokens, u.completion_tokens)

    def test_completion_logprobs_whole_and_streamed(self):
        args = dict(model=self.model, prompt="Once upon a time", max_tokens=16, temperature=0,
                    logprobs=3)
        whole = self.client.completions.create(**args)
        lp = whole.choices[0].logprobs
        n = whole.usage.completion_tokens
        self.assertEqual(len(lp.tokens), n)
        self.assertEqual(len(lp.token_logprobs), n)
        self.assertEqual(len(lp.text_offset), n)
        self.assertEqual(len(lp.top_logprobs), n)
        self.assertTrue("".join(lp.tokens).startswith(whole.choices[0].text))
        for tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            self.assertLessEqual(v, 0)
            self.assertIn(len(top), (3, 4))
            self.assertEqual(max(top.values()), v)  # greedy: the most likely
            self.assertEqual(top[tok], v)
        tokens, values = [], []
        for chunk in self.client.completions.create(**args, stream=True):
            for c in chunk.choices:
                if c.logprobs:
                    tokens += c.logprobs.tokens
                    values += c.logprobs.token_logprobs
        self.assertEqual(tokens, lp.tokens)
        self.assertEqual(values, lp.token_logprobs)

    def test_seeded_sampling_is_reproducible(self):
        args = dict(model=self.model, prompt="The cat", max_tokens=16, temperature=0.9, seed=7)
        a = self.client.completions.create(**args).choices[0].text
        b = self.client.completions.create(**args).choices[0].text
        self.assertEqual(a, b)

    def test_refusals_are_typed_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "Hi"}])
        self.assertIn("chat template", str(e.exception))
        with self.assertRaises(openai.NotFoundError):
            self.client.completions.create(model="gpt-4o", prompt="x")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=self.model, prompt="x", n=2)
        self.assertEqual(e.exception.body["param"], "n")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=self.model, prompt="x", logprobs=21)
        self.assertEqual(e.exception.body["param"], "logprobs")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=self.model, prompt="x", temperature=-1)
        self.assertEqual(e.exception.body["param"], "temperature")
        with self.assertRaises(openai.AuthenticationError):
            self.server.client(key="wrong").completions.create(model=self.model, prompt="x")


def drain_on_sigterm(test, model, max_tokens):
    """A stream running when SIGTERM arrives ends with all its tokens; the server exits 0."""
    server = Server(model)
    client = server.client()
    name = client.models.list().data[0].id
    stream = client.completions.create(
        model=name, prompt="Once upon a time", max_tokens=max_tokens, temperature=0,
        stream=True, extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
    it = iter(stream)
    first = next(it)
    server.proc.send_signal(signal.SIGTERM)
    text, usage, finish = stream_text(it, chat=False)
    test.assertEqual(finish, "length")
    test.assertEqual(usage.completion_tokens, max_tokens)
    test.assertTrue(first.choices[0].text + text)
    code = server.stop()
    log = "".join(server.lines)
    test.assertEqual(code, 0, log)
    test.assertIn("finishing the running requests", log)


class Drain(unittest.TestCase):
    def test_sigterm_lets_the_stream_finish(self):
        if os.path.exists(SMOLLM2):
            drain_on_sigterm(self, SMOLLM2, 48)  # slow enough to be mid-stream
        else:
            drain_on_sigterm(self, STORIES, 400)


def jinja_render(template, messages, bos, eos):
    """What Hugging Face's apply_chat_template renders (add_generation_prompt=True)."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)


def conversations():
    u, a, s = "user", "assistant", "system"
    return [
        [(u, "Hi")],
        [(s, "You answer in French."), (u, "Good morning!")],
        [(u, "  padded  "), (a, "\treply\n"), (u, "\u2003em-spaced\u3000")],
        [(u, "quotes ' \" and {{ braces }} {% raw %} <|im_end|> [INST]")],
        [(u, "")],
        [(s, "")],
        [(s, "sys"), (u, "one"), (a, "two"), (u, "three"), (a, "four"), (u, "five")],
        [(u, "line one\nline two\n\n"), (a, "ok\u00a0"), (u, "\x1cinformation separator\x1f")],
        [(u, "caf\u00e9 \u65e5\u672c \U0001F600")],
        [(u, "first"), (u, "second in a row")],       # Llama 2 and Mistral refuse
        [(a, "assistant first"), (u, "then user")],   # so do they
        [(u, "question"), (a, "answer")],             # ends with the assistant
    ]


def compare_family(test, server, template):
    props = server.get("/props")
    bos, eos = props["bos_token"], props["eos_token"]
    for conv in conversations():
        messages = [{"role": r, "content": c} for r, c in conv]
        try:
            want = jinja_render(template, messages, bos, eos)
        except jinja2.exceptions.TemplateError:
            want = None
        status, got = server.post("/apply-template", {"messages": messages})
        with test.subTest(conversation=conv):
            if want is None:
                test.assertEqual(status, 400, got)
            else:
                test.assertEqual(status, 200, got)
                test.assertEqual(got["prompt"], want)


def read_template(name):
    with open(os.path.join(TEMPLATES, name + ".jinja"), encoding="utf-8") as f:
        return f.read()


class ChatTemplatesByFamily(unittest.TestCase):
    def test_families_render_as_jinja2(self):
        for family in ("chatml", "llama3", "llama2", "mistral"):
            with self.subTest(family=family):
                server = Server(STORIES, "--api-key", KEY, "--chat-template", family)
                try:
                    self.assertEqual(server.get("/props")["chat_template_family"], family)
                    compare_family(self, server, read_template(family))
                finally:
                    self.assertEqual(server.stop(), 0)


@unittest.skipUnless(os.path.exists(SMOLLM2), f"{SMOLLM2} is absent (scripts/get-model)")
class SmolLM2(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(SMOLLM2, "--api-key", KEY, "--alias", "smollm2")
        cls.client = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, "".join(cls.server.lines)

    def test_chat_whole_and_streamed(self):
        args = dict(model="smollm2", max_tokens=32, temperature=0,
                    messages=[{"role": "user", "content": "What is the capital of France?"}])
        whole = self.client.chat.completions.create(**args)
        self.assertEqual(whole.object, "chat.completion")
        msg = whole.choices[0].message
        self.assertEqual(msg.role, "assistant")
        # The same answer as `fairkv run --chat` (greedy), which prints it and a newline.
        run = subprocess.run(
            [FAIRKV, "run", "-m", SMOLLM2, "--chat", "-p", args["messages"][0]["content"],
             "-n", "32", "--temp", "0", "-t", "1"], capture_output=True, text=True, check=True)
        self.assertEqual(msg.content + "\n", run.stdout)
        self.assertNotIn("<|im_end|>", msg.content)
        text, usage, finish = stream_text(
            self.client.chat.completions.create(
                **args, stream=True, stream_options={"include_usage": True}), chat=True)
        self.assertEqual(text, msg.content)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertEqual(usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_chat_logprobs_whole_and_streamed(self):
        args = dict(model="smollm2", max_tokens=12, temperature=0, logprobs=True, top_logprobs=3,
                    messages=[{"role": "user", "content": "Name a colour."}])
        whole = self.client.chat.completions.create(**args)
        content = whole.choices[0].logprobs.content
        self.assertEqual(len(content), whole.usage.completion_tokens)
        for t in content:
            self.assertEqual(len(t.top_logprobs), 3)
            self.assertEqual(t.top_logprobs[0].token, t.token)  # greedy
            self.assertEqual(t.top_logprobs[0].logprob, t.logprob)
            self.assertGreaterEqual(t.top_logprobs[1].logprob, t.top_logprobs[2].logprob)
            if "\ufffd" not in t.token:
                self.assertEqual(bytes(t.bytes).decode(), t.token)
        streamed = []
        for chunk in self.client.chat.completions.create(**args, stream=True):
            for c in chunk.choices:
                if c.logprobs and c.logprobs.content:
                    streamed += c.logprobs.content
        self.assertEqual([(t.token, t.logprob) for t in streamed],
                         [(t.token, t.logprob) for t in content])

    def test_completion(self):
        out = self.client.completions.create(
            model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0)
        self.assertTrue(out.choices[0].text.strip())

    def test_own_template_renders_as_jinja2(self):
        template = self.server.get("/props")["chat_template"]
        self.assertEqual(template, read_template("smollm2"))  # the test data is the GGUF's
        compare_family(self, self.server, template)


@unittest.skipUnless(MPI, "no mpiexec given")
class Mpi(unittest.TestCase):
    def test_two_ranks_answer_as_one_device(self):
        args = dict(prompt="Once upon a time", max_tokens=24, temperature=0, logprobs=3)
        one = Server(STORIES)
        try:
            c = one.client()
            want = c.completions.create(model=c.models.list().data[0].id, **args)
        finally:
            self.assertEqual(one.stop(), 0)
        two = Server(STORIES, "--devices", "2", "--comm", "mpi", launcher=MPI)
        try:
            c = two.client()
            got = c.completions.create(model=c.models.list().data[0].id, **args)
            self.assertEqual(got.choices[0].text, want.choices[0].text)
            # Logprobs: gathered logits on rank 0, equal to one device's within float sums.
            a, b = got.choices[0].logprobs, want.choices[0].logprobs
            self.assertEqual(a.tokens, b.tokens)
            for x, y in zip(a.token_logprobs, b.token_logprobs):
                self.assertAlmostEqual(x, y, delta=1e-4)
        finally:
            # SIGTERM to rank 0: it drains and ends the other ranks, and mpirun exits 0 (a
            # SIGTERM to mpirun drains too, but OpenMPI then reports the job as failed).
            code = two.stop(two.rank0())
        self.assertEqual(code, 0, "".join(two.lines))


if __name__ == "__main__":
    if not os.path.exists(STORIES):
        print(f"skipped: {STORIES} is absent")
        sys.exit(77)
    prog = unittest.main(argv=[sys.argv[0], "-v"], exit=False)
    sys.exit(0 if prog.result.wasSuccessful() else 1)
