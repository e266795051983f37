"""`agentsleep mcp` driven by the official MCP SDK's own client: over stdio (a real server process,
real Chroma, a tiny real model) and over streamable HTTP with the API key."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

mcp = pytest.importorskip("mcp")

from mcp import Client, StdioServerParameters  # noqa: E402

from agentsleep.config import Config  # noqa: E402
from agentsleep.home import Home  # noqa: E402
from agentsleep.procs import free_port  # noqa: E402
from cli_helpers import run_cli  # noqa: E402
from tiny import tiny_model_dir  # noqa: E402

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(300)
FACT = "Alice's daughter is called Maya and she is seven years old."
OTHER = "The spare key to the garden shed is hidden under the blue flower pot."


def _env(**extra: str) -> dict[str, str]:
    """The server's environment (the SDK passes only a safe minimum through on its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSLEEP_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(TESTS)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env.update(extra)
    return env


def _server(home: Path, *args: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "agentsleep.cli", "--home", str(home), "mcp", *args],
                                 env=_env())


def _data(result) -> dict:
    assert not result.is_error, result.content[0].text
    return json.loads(result.content[0].text)


def _error(result) -> str:
    assert result.is_error, result.content
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    tiny = tiny_model_dir(tmp_path_factory.mktemp("models"))
    root = tmp_path_factory.mktemp("mcp") / "home"
    cfg = {"model": {"base": str(tiny), "max_new_tokens": 4},
           "sleep": {"dream": {"per_episode": 1, "stems": ["What"], "answer_spans": 0, "keep_top_k": 1, "keep_random": 0,
                               "probes_per_episode": 1, "max_new_tokens": 8, "batch_size": 8},
                     "seed": {"epochs": 1, "min_steps": 0, "batch_size": 4, "max_seq_len": 96, "replay_prompts": 2,
                              "replay_per_step": 1, "on_policy_every": 1000, "lora_r": 2, "lora_alpha": 4},
                     "rest": {"rounds": 0}, "gate": {"drift_prompts": 2}},
           "daemon": {"cron": "", "threshold_episodes": 10**9}}
    Home.init(root, config=Config.model_validate(cfg))
    return root


def test_round_trip_over_stdio_and_bad_input_loses_nothing(home):
    async def go():
        async with Client(_server(home)) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert tools == {"remember", "recall", "forget", "sleep_now", "status", "ask"}
            kept = _data(await c.call_tool("remember", {"text": FACT, "session": "s1"}))
            gone = _data(await c.call_tool("remember", {"text": OTHER, "kind": "observation"}))
            assert kept["id"].startswith("ep-") and not kept["duplicate"]
            again = _data(await c.call_tool("remember", {"text": FACT}))
            assert again["duplicate"] and again["id"] == kept["id"]

            hits = _data(await c.call_tool("recall", {"query": "Where is the shed key?", "k": 2}))["memories"]
            assert [h["id"] for h in hits][0] == gone["id"]
            only = _data(await c.call_tool("recall", {"query": "shed key", "k": 2, "session": "s1"}))["memories"]
            assert [h["id"] for h in only] == [kept["id"]]
            assert _data(await c.call_tool("recall", {"query": "shed key", "since": "2999-01-01"}))["memories"] == []
            assert len(_data(await c.call_tool("recall", {"query": "shed key", "until": "2999-01-01"}))["memories"]) == 2
            old = _data(await c.call_tool("remember", {"text": "Bob moved to Leeds.", "namespace": "user:bob",
                                                       "event_time": "2024-05-01T10:00", "speaker": "Bob"}))
            hits = _data(await c.call_tool("recall", {"query": "Where did Bob move?", "namespace": "user:bob",
                                                      "until": "2025-01-01"}))["memories"]
            assert [(h["id"], h["speaker"]) for h in hits] == [(old["id"], "Bob")]
            assert _data(await c.call_tool("forget", {"episode_id": old["id"]}))["forgotten"] == [old["id"]]
            assert "event_time" in _error(await c.call_tool("remember", {"text": "x", "event_time": "soonish"}))
            bobs = _data(await c.call_tool("remember", {"text": "Bob keeps bees.", "namespace": "user:bob"}))
            assert _data(await c.call_tool("recall", {"query": "bees", "namespace": "user:bob"}))["memories"][0]["id"] == bobs["id"]
            assert bobs["id"] not in [h["id"] for h in _data(await c.call_tool("recall", {"query": "bees", "k": 5}))["memories"]]
            assert _data(await c.call_tool("forget", {"query": "bees", "namespace": "user:bob"}))["forgotten"] == [bobs["id"]]

            # bad input: one clear line each, nothing stored or deleted
            assert _error(await c.call_tool("remember", {"text": ""})).startswith("remember: bad argument (text:")
            assert "unknown kind 'bogus'" in _error(await c.call_tool("remember", {"text": "x", "kind": "bogus"}))
            assert "k:" in _error(await c.call_tool("recall", {"query": "key", "k": 0}))
            assert "k:" in _error(await c.call_tool("recall", {"query": "key", "k": "many"}))
            assert "not an ISO date" in _error(await c.call_tool("recall", {"query": "key", "since": "last week"}))
            assert "no episode with id 'ep-nope'" in _error(await c.call_tool("forget", {"episode_id": "ep-nope"}))
            assert "not both" in _error(await c.call_tool("forget", {"episode_id": kept["id"], "query": "key"}))
            assert "no sleep 'x'" in _error(await c.call_tool("status", {"sleep_id": "x"}))
            assert "max_episodes" in _error(await c.call_tool("sleep_now", {"max_episodes": 0}))
            assert "question" in _error(await c.call_tool("ask", {"question": ""}))
            assert "namespace is empty" in _error(await c.call_tool("recall", {"query": "key", "namespace": " "}))
            assert "control characters" in _error(await c.call_tool("remember", {"text": "x", "namespace": "a\x07"}))
            st = _data(await c.call_tool("status", {}))
            assert st["episodes"] == 2 and st["writable"] and st["sleeps_running"] == []

            out = _data(await c.call_tool("forget", {"episode_id": gone["id"]}))
            assert out["forgotten"] == [gone["id"]]
            hits = _data(await c.call_tool("recall", {"query": "Where is the shed key?", "k": 5}))["memories"]
            assert [h["id"] for h in hits] == [kept["id"]]

            with_mem = _data(await c.call_tool("ask", {"question": "What is my daughter's name?"}))
            assert with_mem["model_version"] == "v0000" and with_mem["memories_used"] == [kept["id"]]
            closed = _data(await c.call_tool("ask", {"question": "What is my daughter's name?", "use_memory": False}))
            assert closed["memories_used"] == []

            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert uris == {"agentsleep://sleeps/latest", "agentsleep://history"}
            hist = json.loads((await c.read_resource("agentsleep://history")).contents[0].text)
            assert [v["version"] for v in hist] == ["v0000"] and hist[0]["current"]
            latest = json.loads((await c.read_resource("agentsleep://sleeps/latest")).contents[0].text)
            assert latest["sleep"] is None

    asyncio.run(go())
    with Home.open(home, writable=False) as h:
        assert [e.text for e in h.episodes()] == [FACT]


def test_sleep_now_returns_at_once_and_a_second_client_works_while_it_runs(home):
    gate = home / "release-sleep"

    async def go():
        async with Client(_server(home, "--sleep-fn", "mcp_helpers:gated_sleep")) as first:
            _data(await first.call_tool("remember", {"text": OTHER}))
            t0 = time.monotonic()
            started = _data(await first.call_tool("sleep_now", {}))
            assert time.monotonic() - t0 < 3 and started["state"] == "started"
            sid = started["sleep_id"]
            deadline = time.monotonic() + 120
            while not (st := _data(await first.call_tool("status", {"sleep_id": sid}))).get("journal"):
                assert st["state"] == "running" and time.monotonic() < deadline, st
                await asyncio.sleep(0.2)
            journal = st["journal"]
            again = _data(await first.call_tool("sleep_now", {}))
            assert again == {"sleep_id": sid, "state": "running", "note": "a sleep started here is still running"}

            # a second client (its own server process): the store's writer is the first server
            async with Client(_server(home)) as second:
                st2 = _data(await second.call_tool("status", {}))
                assert not st2["writable"] and "read-only" in st2["read_only_reason"]
                assert [s["sleep_id"] for s in st2["sleeps_running"]] == [journal]
                hits = _data(await second.call_tool("recall", {"query": "shed key", "k": 1}))["memories"]
                assert hits[0]["text"] == OTHER
                err = _error(await second.call_tool("remember", {"text": "A new fact."}))
                assert err.startswith("remember: this server opened the home read-only") and "open for writing by pid" in err
                assert f"sleep {journal} is already running" in _error(await second.call_tool("sleep_now", {}))

            gate.write_text("go")
            deadline = time.monotonic() + 240
            while (st := _data(await first.call_tool("status", {"sleep_id": sid})))["state"] != "done":
                assert time.monotonic() < deadline, st
                await asyncio.sleep(0.5)
            assert st["journal"] == journal and st["result"]["status"] in ("promoted", "rejected"), st
            latest = json.loads((await first.read_resource("agentsleep://sleeps/latest")).contents[0].text)
            assert latest["sleep_id"] == journal and latest["status"] == st["result"]["status"]
            overall = _data(await first.call_tool("status", {}))
            assert overall["last_sleep"]["sleep_id"] == journal and overall["sleeps_running"] == []

    asyncio.run(go())
    with Home.open(home, writable=False) as h:
        assert "A new fact." not in [e.text for e in h.episodes()]


def _wait_port(proc: subprocess.Popen, port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the MCP HTTP server did not start"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)


def test_streamable_http_needs_the_serve_api_key(tmp_path):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    root = tmp_path / "h"
    Home.init(root)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agentsleep.cli", "--home", str(root), "mcp", "--transport", "http",
                             "--port", str(port)], env=_env(AGENTSLEEP_SERVE__API_KEY="sekrit"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(proc, port)
        url = f"http://127.0.0.1:{port}/mcp"
        refused = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
        wrong = httpx2.post(url, json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401

        async def go():
            async with httpx2.AsyncClient(headers={"Authorization": "Bearer sekrit"}, timeout=60) as http:
                async with Client(streamable_http_client(url, http_client=http)) as c:
                    r = _data(await c.call_tool("remember", {"text": FACT}))
                    hits = _data(await c.call_tool("recall", {"query": "daughter", "k": 1}))["memories"]
                    assert hits[0]["id"] == r["id"]
                    assert "k:" in _error(await c.call_tool("recall", {"query": "x", "k": -1}))

        asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # beyond loopback without a key: refused before listening, in one line
    r = run_cli("mcp", "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port()), home=root)
    assert "refusing to listen on 0.0.0.0 without serve.api_key" in r.one_line_error()
    r = run_cli("mcp", "--transport", "carrier-pigeon", home=root)
    assert "use stdio or http" in r.one_line_error()


def test_sleep_now_is_handed_to_the_daemon_when_one_runs(tmp_path):
    from agentsleep.daemon import Daemon
    from agentsleep.serving.mcp import MemoryServer

    root = tmp_path / "h"
    Home.init(root, config=Config.model_validate({"daemon": {"cron": "", "threshold_episodes": 10**9}}))
    ran = []
    d = Daemon([root], sleep_fn=lambda job: ran.append(job.reason) or {"status": "nothing-to-do"},
               heartbeat_s=0.2, request_poll_s=0.1).start()
    srv = MemoryServer(Home.open(root))
    try:
        out = srv.sleep_now()
        assert out["via"] == "daemon" and out["state"] == "queued" and out["sleep_id"].startswith("req-")
        deadline = time.monotonic() + 30
        while (st := srv.status(out["sleep_id"]))["state"] != "done":
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        assert st["result"]["status"] == "nothing-to-do" and ran == ["on-demand"]
    finally:
        d.stop()
        srv.close()


def test_without_the_sdk_the_command_says_what_to_install(tmp_path):
    fake = tmp_path / "fake" / "mcp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'mcp'\")\n")
    r = run_cli("mcp", home=tmp_path / "h", env={"PYTHONPATH": str(fake.parent)})
    assert "needs the MCP SDK: install agentsleep with its mcp extra (or pip install mcp)" in r.one_line_error()
