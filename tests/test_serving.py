"""Serving with the in-process backend: the OpenAI endpoint, bad input, following the registry,
swaps under load (tiny random Llama; no vLLM needed)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from agentsleep.config import ModelConfig, ServeConfig
from agentsleep.models.registry import Registry
from agentsleep.serving.backend import SwapReport
from agentsleep.serving.engine import Engine, GenParams
from agentsleep.serving.loadtest import make_swap_versions, reference_answers, run_swap_loadtest
from agentsleep.serving.server import RegistryWatcher, ServerThread, create_app
from agentsleep.serving.transformers_backend import TransformersBackend

from tiny import tiny_model_dir

CHAT = "/v1/chat/completions"


def chat_body(text: str = "Say hello.", **kw):
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 6, "use_memory": False, **kw}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def chain(tiny, tmp_path_factory):
    """A registry on the tiny model with three unpromoted versions: adapter, same-shape weights, grown."""
    reg = Registry(tmp_path_factory.mktemp("reg") / "registry", base_model=str(tiny))
    versions = make_swap_versions(reg, scale=20.0)
    return reg, versions


class Served:
    def __init__(self, reg, *, recall=None, cfg=None, poll_s=0.05, default_max_tokens=None):
        self.reg = reg
        self.backend = TransformersBackend(ModelConfig(max_new_tokens=6))
        self.watcher = RegistryWatcher(reg, self.backend, poll_s=poll_s, retry_s=0.2)
        self.watcher.record(self.backend.start(reg.current()))
        self.watcher.start()
        self.server = ServerThread(create_app(self.backend, registry=reg, watcher=self.watcher, recall=recall,
                                              serve_cfg=cfg or ServeConfig(),
                                              default_max_tokens=default_max_tokens)).start()
        self.http = httpx.Client(base_url=self.server.url, timeout=60)

    def wait_version(self, name: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.http.get("/health").json()
            if h["version"] == name and h["swaps"] and h["swaps"][-1]["version"] == name:
                return h
            time.sleep(0.02)
        raise AssertionError(f"server did not switch to {name}: {self.http.get('/health').json()}")

    def close(self):
        self.http.close()
        self.server.stop()
        self.watcher.stop()
        self.backend.close()


@pytest.fixture
def served(chain):
    reg, _ = chain
    reg.set_current("v0000")
    s = Served(reg)
    yield s
    s.close()
    reg.set_current("v0000")


# -- the endpoint ---------------------------------------------------------------------
def test_chat_completion_names_the_version(served):
    r = served.http.post(CHAT, json=chat_body())
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "chat.completion" and d["model"] == "v0000"
    assert r.headers["x-agentsleep-version"] == "v0000"
    assert d["choices"][0]["message"]["role"] == "assistant"
    assert d["choices"][0]["finish_reason"] in ("stop", "length")
    assert d["usage"]["completion_tokens"] <= 6 and d["usage"]["prompt_tokens"] > 0
    # the same question twice: the same greedy answer (temperature defaults to 0)
    again = served.http.post(CHAT, json=chat_body()).json()
    assert again["choices"][0]["message"]["content"] == d["choices"][0]["message"]["content"]
    for name in ("agentsleep", "v0000", None):
        assert served.http.post(CHAT, json=chat_body(model=name)).status_code == 200


def test_completion_stop_and_models(served):
    d = served.http.post("/v1/completions", json={"prompt": "one two three", "max_tokens": 8}).json()
    text = d["choices"][0]["text"]
    assert d["object"] == "text_completion" and d["model"] == "v0000" and text
    stop = text.strip()[:2]
    d2 = served.http.post("/v1/completions", json={"prompt": "one two three", "max_tokens": 8, "stop": [stop]}).json()
    assert d2["choices"][0]["finish_reason"] == "stop"
    assert stop not in d2["choices"][0]["text"] and text.startswith(d2["choices"][0]["text"])
    models = served.http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["agentsleep", "v0000"]
    assert served.http.get("/v1/models/v0000").status_code == 200
    assert served.http.get("/v1/models/v0009").status_code == 404


def test_streaming_equals_the_whole_answer(served):
    whole = served.http.post(CHAT, json=chat_body("Name a colour.", max_tokens=10)).json()
    pieces, finish, usage = [], None, None
    with served.http.stream("POST", CHAT, json=chat_body("Name a colour.", max_tokens=10, stream=True,
                                                          stream_options={"include_usage": True})) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-agentsleep-version"] == "v0000"
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        obj = json.loads(line[6:])
        assert obj["model"] == "v0000"
        if obj.get("usage"):
            usage = obj["usage"]
        for ch in obj["choices"]:
            pieces.append(ch["delta"].get("content") or "")
            finish = ch["finish_reason"] or finish
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert finish == whole["choices"][0]["finish_reason"]
    assert usage["completion_tokens"] == whole["usage"]["completion_tokens"]


@pytest.mark.parametrize("body, status, needle", [
    (b"{bad json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"", 400, "empty"),
    (b"\xff\xfe", 400, "UTF-8"),
    (json.dumps({"messages": []}).encode(), 400, "messages"),
    (json.dumps({"prompt": "x"}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "role"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 3}).encode(), 400, "n=1"),
    (json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "gpt-4o"),
    (json.dumps({"model": "v0001", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "v0001"),
    (json.dumps({"messages": [{"role": "user", "content": "word " * 600}]}).encode(), 400, "context length"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).encode(), 400,
     "context length"),
])
def test_bad_requests_get_openai_errors(served, body, status, needle):
    r = served.http.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle.lower() in err["message"].lower()
    assert err["type"] == "invalid_request_error"
    if "context" in needle:
        assert err["code"] == "context_length_exceeded"


def test_routes_limits_and_auth(chain):
    reg, _ = chain
    reg.set_current("v0000")
    s = Served(reg, cfg=ServeConfig(api_key="s3cret", max_request_bytes=4096))
    try:
        assert s.http.post(CHAT, json=chat_body()).status_code == 401
        assert s.http.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer nope"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert s.http.post(CHAT, json=chat_body(), headers=auth).status_code == 200
        assert s.http.get("/v1/models").status_code == 401
        assert s.http.get("/health").status_code == 200  # health needs no key
        big = s.http.post(CHAT, json=chat_body("x" * 10_000), headers=auth)
        assert big.status_code == 413 and "max_request_bytes" in big.json()["error"]["message"]

        def chunked():
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(100):
                yield b"y" * 100
            yield b'"}]}'
        r = s.http.post(CHAT, content=chunked(), headers={**auth, "content-type": "application/json"})
        assert r.status_code == 413
        assert s.http.get("/v1/nothing", headers=auth).status_code == 404
        assert s.http.get(CHAT, headers=auth).status_code == 405
        for path in ("/pause", "/collective_rpc", "/v1/load_lora_adapter"):  # never proxied
            assert s.http.post(path, json={}, headers=auth).status_code == 404
        stats = s.http.get("/health").json()["requests"]
        assert stats["failed"] >= 5 and stats["in_flight"] == 0
    finally:
        s.close()


def test_a_full_house_is_refused_at_once_and_health_still_answers(chain, monkeypatch):
    """More requests than serve.max_pending get 503 "overloaded" at once; the requests waiting on the model
    (more than the web server's shared worker threads, 40) never keep /health from answering."""
    reg, _ = chain
    reg.set_current("v0000")
    s = Served(reg, cfg=ServeConfig(max_pending=45))
    held, real = threading.Event(), s.backend.chat
    monkeypatch.setattr(s.backend, "chat", lambda req, pin=None: held.wait(60) and real(req, pin=pin))
    results: list[int] = []
    try:
        def one():
            with httpx.Client(base_url=s.server.url, timeout=120) as c:
                results.append(c.post(CHAT, json=chat_body()).status_code)
        threads = [threading.Thread(target=one) for _ in range(45)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            h = s.http.get("/health", timeout=5).json()  # answers while 45 requests wait on the model
            if h["requests"]["in_flight"] == 45:
                break
            time.sleep(0.05)
        assert h["requests"]["in_flight"] == 45 and h["status"] == "ok"
        r = s.http.post(CHAT, json=chat_body(), timeout=5)
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert r.headers["retry-after"] == "1" and "serve.max_pending" in r.json()["error"]["message"]
        held.set()
        for t in threads:
            t.join(120)
        assert results == [200] * 45
        assert s.http.post(CHAT, json=chat_body()).status_code == 200
        assert s.http.get("/health").json()["requests"]["in_flight"] == 0
    finally:
        held.set()
        s.close()


def test_a_long_prompt_without_max_tokens_gets_the_room_left(chain, tiny):
    """The server's default length (model.max_new_tokens) shrinks to what the context leaves; a client's
    own max_tokens does not, as in OpenAI's API."""
    from transformers import AutoTokenizer

    reg, _ = chain
    reg.set_current("v0000")
    tok = AutoTokenizer.from_pretrained(str(tiny))
    prompt = " ".join(["word"] * 600)
    ids = tok(prompt, add_special_tokens=False)["input_ids"][:509]  # the tiny model reads 512 tokens
    prompt = tok.decode(ids)
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) == 509
    s = Served(reg, default_max_tokens=6)
    try:
        r = s.http.post("/v1/completions", json={"prompt": prompt})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 3
        r = s.http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        r = s.http.post("/v1/completions", json={"prompt": "one two three"})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 6
    finally:
        s.close()


def test_serve_homes_answers_unknown_routes_with_openai_errors():
    from starlette.testclient import TestClient

    from agentsleep.serving.homes import create_homes_app

    http = TestClient(create_homes_app({}, None))
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found" and "/v1/models" in r.text
    r = http.post("/health")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = http.post(CHAT, json={"model": "dave", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_memories_are_injected(chain):
    reg, _ = chain
    reg.set_current("v0000")

    class Ep:
        def __init__(self, i, text):
            self.id, self.text = i, text

    seen = []

    def recall(query, k):
        seen.append((query, k))
        if query == "explode":
            raise RuntimeError("store unavailable")
        return [Ep("ep1", "Alice's daughter is called Maya."), Ep("ep2", "Maya likes chess.")][:k]

    s = Served(reg, recall=recall, cfg=ServeConfig(inject_memories=True))
    try:
        plain = s.http.post(CHAT, json=chat_body("Who is Maya?")).json()
        assert "agentsleep" not in plain
        r = s.http.post(CHAT, json={"messages": [{"role": "user", "content": "Who is Maya?"}], "max_tokens": 4}).json()
        assert r["agentsleep"]["memories_used"] == ["ep1", "ep2"]
        assert r["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 10
        assert seen[-1] == ("Who is Maya?", 4)
        one = s.http.post(CHAT, json={"messages": [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Who is Maya?"}],
                                      "max_tokens": 4, "memory_k": 1}).json()
        assert one["agentsleep"]["memories_used"] == ["ep1"]
        broken = s.http.post(CHAT, json={"messages": [{"role": "user", "content": "explode"}], "max_tokens": 4})
        assert broken.status_code == 200 and "store unavailable" in broken.json()["agentsleep"]["memory_error"]
    finally:
        s.close()


# -- following the registry ----------------------------------------------------------------
def test_follows_promotions_and_rollback(served, chain):
    reg, versions = chain
    before = served.http.post(CHAT, json=chat_body()).json()
    reg.set_current(versions["adapter"].name)
    h = served.wait_version(versions["adapter"].name)
    assert h["status"] == "ok" and h["following"] and h["swaps"][-1]["kind"] == "load"
    after = served.http.post(CHAT, json=chat_body()).json()
    assert after["model"] == versions["adapter"].name
    assert after["choices"][0]["message"]["content"] != before["choices"][0]["message"]["content"]
    reg.set_current(versions["grown"].name)  # a different architecture: just another load in-process
    served.wait_version(versions["grown"].name)
    reg.set_current("v0000")  # rollback
    served.wait_version("v0000")
    assert served.http.post(CHAT, json=chat_body()).json()["choices"] == before["choices"]


def test_a_broken_version_keeps_the_old_one_serving(served, chain):
    reg, _ = chain
    stage = reg.new_staging()
    (stage / "config.json").write_text("{not json")
    bad = reg.commit(stage, {"parent": "v0000", "kind": "sleep"})
    try:
        deadline = time.time() + 30
        h = served.http.get("/health").json()
        while time.time() < deadline and not h.get("error"):
            time.sleep(0.05)
            h = served.http.get("/health").json()
        assert h["status"] == "degraded" and h["version"] == "v0000" and not h["following"]
        assert bad.name in h["error"] and h["swaps"][-1]["ok"] is False
        assert served.http.post(CHAT, json=chat_body()).json()["model"] == "v0000"
    finally:
        reg.set_current("v0000")
        shutil.rmtree(bad.path, ignore_errors=True)
    deadline = time.time() + 10
    while served.http.get("/health").json()["status"] != "ok" and time.time() < deadline:
        time.sleep(0.05)
    assert served.http.get("/health").json()["status"] == "ok"


def test_requests_in_flight_finish_on_their_version(served, chain):
    reg, versions = chain
    ref = reference_answers([reg.get("v0000")], ["Count to fifty."], max_tokens=60)["v0000"]["Count to fifty."]
    chunks, models = [], set()
    started = threading.Event()

    def long_stream():
        with served.http.stream("POST", CHAT, json=chat_body("Count to fifty.", max_tokens=60, stream=True)) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    obj = json.loads(line[6:])
                    models.add(obj["model"])
                    for ch in obj["choices"]:
                        chunks.append(ch["delta"].get("content") or "")
                    started.set()

    t = threading.Thread(target=long_stream)
    t.start()
    assert started.wait(60)
    reg.set_current(versions["weights"].name)
    served.wait_version(versions["weights"].name)
    assert served.http.post(CHAT, json=chat_body()).json()["model"] == versions["weights"].name
    t.join(120)
    assert models == {"v0000"}
    assert "".join(chunks) == ref


def test_client_disconnect_stops_generation(served):
    with served.http.stream("POST", CHAT, json=chat_body("Go on forever.", max_tokens=400, stream=True)) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first chunk
    t0 = time.time()
    r = served.http.post(CHAT, json=chat_body())  # would queue behind 400 tokens if generation went on
    assert r.status_code == 200
    assert time.time() - t0 < 20
    deadline = time.time() + 10
    while served.http.get("/health").json()["requests"]["in_flight"] and time.time() < deadline:
        time.sleep(0.05)
    assert served.http.get("/health").json()["requests"]["in_flight"] == 0


# -- the load test ----------------------------------------------------------------------------
def test_swap_loadtest_zero_failures(chain):
    reg, versions = chain
    reg.set_current("v0000")
    prompts = ["Say hello.", "Name a colour.", "What is 2 + 2?"]
    names = [v.name for v in versions.values()]
    expected = reference_answers([reg.get("v0000")] + list(versions.values()), prompts, max_tokens=6)
    assert len({expected[n]["Say hello."] for n in ["v0000"] + names}) > 1  # versions are distinguishable
    s = Served(reg)
    try:
        rep = run_swap_loadtest(s.server.url, reg, names, prompts=prompts, clients=2, max_tokens=6, settle_s=0.7,
                                expected=expected, stream_every=3, swap_timeout_s=120)
    finally:
        s.close()
        reg.set_current("v0000")
    assert rep["ok"], json.dumps(rep, indent=1)
    assert rep["failed"] == 0 and not rep["inconsistent"] and not rep["reference_mismatches"]
    assert rep["order_regressions"] == 0
    assert set(rep["answers_by_version"]) == {"v0000", *names}
    assert [p["kind"] for p in rep["swaps"]] == ["load"] * 3
    assert all(p["server_pause_ms"] < 100 for p in rep["swaps"])


def test_a_question_with_memories_is_asked_in_the_answer_layout(chain, monkeypatch):
    """`ask` (Engine.answer) and the in-context evaluations share the answer layout; a chat that memories are
    injected into, and the sleep's teacher, keep the conversational one."""
    from agentsleep.models import generate as gen
    from agentsleep.sleep.dream import teacher_prompt

    reg, _ = chain
    eng = Engine(ModelConfig(max_new_tokens=5))
    eng.swap(reg.get("v0000"))
    mem = ["Maya is Alice's daughter."]
    qa = gen.chat(eng.live.tok, "Who is Maya?", system=gen.answer_system(mem))
    assert "about the user:\n- Maya is" in qa
    assert teacher_prompt(eng.live.tok, "Who is Maya?", mem[0]) == gen.chat(eng.live.tok, "Who is Maya?",
                                                                            system=gen.memory_system(mem))
    assert eng.answer("Who is Maya?", mem) == (eng.complete([qa])[0][0], "v0000")
    seen, real = [], gen.generate
    monkeypatch.setattr(gen, "generate", lambda model, tok, prompts, **kw: seen.extend(prompts) or real(model, tok, prompts, **kw))
    gen.answers(eng.live.model, eng.live.tok, ["Who is Maya?"], memories=[mem], max_new_tokens=2)  # the evaluations' way
    assert seen == [qa]
    assert gen.memory_system(mem) != gen.answer_system(mem) and gen.answer_system([]) is None


def test_engine_helpers_used_by_home(chain, monkeypatch):
    from agentsleep.models import generate as gen

    reg, versions = chain
    eng = Engine(ModelConfig(max_new_tokens=5))
    eng.swap(reg.get("v0000"))
    out, version = eng.complete(["Hello", "World"])
    assert version == "v0000" and len(out) == 2
    assert isinstance(eng.last_swap, SwapReport) and eng.last_swap.kind == "start"
    r = eng.generate(eng.render_chat([{"role": "user", "content": "hi"}]), GenParams(max_tokens=3, temperature=0.8,
                                                                                     seed=1))
    assert r.completion_tokens <= 3
    real = gen.generate

    def swapped_meanwhile(model, tok, prompts, **kw):  # a promotion lands while v0000 answers
        eng.swap(versions["adapter"])
        return real(model, tok, prompts, **kw)
    monkeypatch.setattr(gen, "generate", swapped_meanwhile)
    text, version = eng.answer("Who is Maya?", ["Maya is Alice's daughter."])
    assert isinstance(text, str) and version == "v0000"  # named after the model that answered
    assert eng.version.name == versions["adapter"].name
    monkeypatch.setattr(gen, "generate", real)


# -- the command ------------------------------------------------------------------------------
def test_serve_command(tiny, tmp_path):
    from conftest import free_port

    home = tmp_path / "home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGENTSLEEP_MODEL__BASE": str(tiny),
           "AGENTSLEEP_MODEL__MAX_NEW_TOKENS": "4"}
    bad = subprocess.run([sys.executable, "-m", "agentsleep.cli", "--home", str(home), "serve", "--backend", "tpu"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--backend" in bad.stderr and "Traceback" not in bad.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agentsleep.cli", "--home", str(home), "serve", "--port", str(port),
                             "--poll-seconds", "0.1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "serve did not come up"
            time.sleep(0.2)
        r = httpx.post(url + CHAT, json={"model": "agentsleep", "messages": [{"role": "user", "content": "hi"}]},
                       timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "v0000"
        # a new version published by a sleep (here: a copy of the base) is picked up by itself
        reg = Registry(home / "registry", base_model=str(tiny))
        stage = reg.new_staging()
        for f in tiny.iterdir():
            shutil.copy(f, stage / f.name)
        reg.commit(stage, {"parent": "v0000", "kind": "sleep"})
        deadline = time.time() + 60
        while httpx.get(url + "/health", timeout=5).json()["version"] != "v0001":
            assert time.time() < deadline
            time.sleep(0.1)
        assert httpx.post(url + CHAT, json={"messages": [{"role": "user", "content": "hi"}]},
                          timeout=60).json()["model"] == "v0001"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_exits_with_one_line_when_the_backend_cannot_start(tiny, tmp_path):
    from conftest import free_port

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGENTSLEEP_MODEL__BASE": str(tiny)}
    dead = free_port()  # nothing listens there
    r = subprocess.run([sys.executable, "-m", "agentsleep.cli", "--home", str(tmp_path / "h"), "serve",
                        "--backend", "vllm", "--vllm-url", f"http://127.0.0.1:{dead}", "--port", str(free_port())],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not start" in errors[0] and "cannot reach vLLM" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_loopback_and_bearer_helpers():
    """'' binds every interface, so it is not loopback (procs.is_loopback, used by the server too);
    the one bearer check takes any of several keys and refuses everything else."""
    from agentsleep.procs import is_loopback
    from agentsleep.serving.auth import require_bearer
    from agentsleep.serving.backend import Unauthorized
    from agentsleep.serving.server import exposed_without_key

    assert is_loopback("localhost") and is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]")
    assert not is_loopback("") and not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert exposed_without_key("", [None]) and exposed_without_key("0.0.0.0", ["k", None])
    assert not exposed_without_key("127.0.0.1", [None]) and not exposed_without_key("", ["k"])
    require_bearer("", [])                      # no key set: open
    require_bearer("", [None, ""])
    require_bearer("Bearer k2", ["k1", "k2"])
    require_bearer("bearer  k1 ", ["k1"])
    for header in ("", "Bearer nope", "Basic k1", "k1"):
        with pytest.raises(Unauthorized, match="Bearer <serve.api_key>"):
            require_bearer(header, ["k1"])


def test_swapping_to_the_live_version_loads_nothing(chain):
    """The registry watcher and `Home.rollback` can both ask the shared engine for the same new version:
    the second ask must not load the model again."""
    reg, _ = chain
    eng = Engine(ModelConfig(max_new_tokens=5))
    first = eng.swap(reg.get("v0000"))
    assert eng.swap(reg.get("v0000")) is first and eng.swaps == 1


def test_sigterm_runs_the_server_cleanup(tmp_path):
    """uvicorn re-raises the SIGTERM it caught after shutting down; without a handler that kills the process
    before cleanup, and a vLLM server started in its own session (serve, serve-homes) outlives it."""
    import signal

    from agentsleep.procs import free_port

    port, done = free_port(), tmp_path / "cleaned"
    code = (
        "import sys; from fastapi import FastAPI; from agentsleep.serving.server import run_app\n"
        "app = FastAPI()\n"
        "@app.get('/health')\n"
        "def health(): return {'ok': True}\n"
        f"run_app(app, '127.0.0.1', {port}, boot=lambda url: None, cleanup=lambda: open({str(done)!r}, 'w').write('x'))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert done.read_text() == "x"
