"""Fuzzing (hypothesis): config files, CLI arguments, remember payloads, serve API payloads.

Invariant everywhere: a clear error or a result, never a traceback, and nothing stored is lost.
"""
from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentsleep.config import Config, ModelConfig, ServeConfig
from agentsleep.errors import AgentsleepError, ConfigError
from agentsleep.home import Home
from agentsleep.models.registry import Registry
from agentsleep.serving.server import RegistryWatcher, ServerThread, create_app
from agentsleep.serving.transformers_backend import TransformersBackend
from tiny import tiny_model_dir

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

keys = st.sampled_from(["memory", "model", "sleep", "serve", "daemon", "seed", "gate", "lr", "port", "backend",
                        "recall_k", "epochs", "cron", "policy", "deny_patterns", "bogus"])
toml_values = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=12), st.booleans(), st.lists(st.text(max_size=5), max_size=3))


@FUZZ
@given(st.one_of(
    st.text(max_size=300),  # arbitrary (mostly invalid) TOML
    st.dictionaries(keys, st.one_of(toml_values, st.dictionaries(keys, st.one_of(toml_values, st.dictionaries(keys, toml_values, max_size=3)), max_size=4)), max_size=4),
))
def test_config_files_load_or_fail_clearly(tmp_path_factory, doc):
    import tomli_w

    p = tmp_path_factory.mktemp("cfg") / "config.toml"
    if isinstance(doc, str):
        p.write_text(doc, encoding="utf-8", errors="surrogatepass") if doc.isprintable() else p.write_bytes(doc.encode("utf-8", "replace"))
    else:
        p.write_text(tomli_w.dumps(doc))
    try:
        cfg = Config.load(p)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip() and "Traceback" not in msg
    else:
        assert isinstance(cfg, Config)


def _cli(argv: list[str], home: Path) -> tuple[int, str]:
    """Run the real CLI entry point in process (main() is what the console script calls)."""
    from agentsleep import cli

    err = io.StringIO()
    old = sys.argv
    sys.argv = ["agentsleep", "--home", str(home), *argv]
    cli.err.file = err
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
        cli.err.file = sys.stderr
    return code, err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def cli_home(tiny, tmp_path_factory):
    root = Home.init(tmp_path_factory.mktemp("fuzz") / "home",
                     config=Config.model_validate({"model": {"base": str(tiny)}}))
    with Home.open(root) as h:
        h.remember("The user's dentist is Dr. Okafor.")
    return root


commands = st.sampled_from(["recall", "forget", "rollback", "history", "status", "diff", "export", "sleep-now",
                            "grow", "remember", "bogus"])
args = st.lists(st.one_of(st.text(min_size=0, max_size=20).filter(lambda s: "\x00" not in s),
                          st.sampled_from(["--json", "-k", "-1", "0", "v0000", "v9999", "--query", "--max-episodes",
                                           "--dry-run", "--blocks", "--kind", "--yes", "--out"])), max_size=4)


@FUZZ
@given(commands, args)
def test_cli_arguments_never_traceback_and_lose_nothing(cli_home, command, rest):
    if command in ("sleep-now", "grow", "forget") and "--dry-run" not in rest:
        rest = [*rest, "--help"]  # the heavy and destructive commands are fuzzed for parsing only
    if command == "remember":
        rest = [a for a in rest if a != "--out"]
    code, err = _cli([command, *rest], cli_home)
    assert "Traceback" not in err and "internal error" not in err, err
    if code not in (0,):
        assert err.strip(), f"exit {code} without a message"
    with Home.open(cli_home, writable=False) as h:
        assert any(e.text == "The user's dentist is Dr. Okafor." for e in h.episodes())
        assert h.registry.current_name() == "v0000"


@pytest.fixture(scope="module")
def store_home(tiny, tmp_path_factory):
    root = Home.init(tmp_path_factory.mktemp("fuzz") / "store",
                     config=Config.model_validate({"model": {"base": str(tiny)}, "memory": {"max_text_chars": 5000}}))
    h = Home.open(root)
    yield h
    h.close()


@FUZZ
@given(text=st.text(max_size=6000), source=st.text(max_size=30), session=st.one_of(st.none(), st.text(max_size=30)),
       kind=st.sampled_from(["fact", "turn", "tool", "note", "bogus", ""]))
def test_remember_payloads_store_or_refuse(store_home, text, source, session, kind):
    before = store_home.store.count()
    try:
        r = store_home.remember(text, source=source or "user", session=session, kind=kind)
    except AgentsleepError as e:
        assert str(e) and "\n" not in str(e)
        assert store_home.store.count() == before
    else:
        assert store_home.store.count() >= before
        got = store_home.get(r.id)
        assert got.text in text or text.strip().startswith(got.text.strip()[:50])


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("reg") / "registry", base_model=str(tiny))
    backend = TransformersBackend(ModelConfig(max_new_tokens=4))
    watcher = RegistryWatcher(reg, backend, poll_s=5)
    watcher.record(backend.start(reg.current()))
    srv = ServerThread(create_app(backend, registry=reg, watcher=watcher, serve_cfg=ServeConfig(max_request_bytes=20_000))).start()
    yield httpx.Client(base_url=srv.url, timeout=60)
    srv.stop()
    backend.close()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False) | st.text(max_size=30),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=12)
chat_like = st.fixed_dictionaries({"messages": st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                    "content": st.one_of(st.text(max_size=60), json_values)}), max_size=3), json_values)},
    optional={"max_tokens": st.one_of(st.integers(-5, 5), json_values), "temperature": json_values,
              "stream": st.booleans(), "model": st.one_of(st.sampled_from(["v0000", "agentsleep"]), st.text(max_size=8)),
              "stop": json_values, "use_memory": json_values, "prompt": json_values, "n": json_values})


@FUZZ
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       body=st.one_of(chat_like, json_values, st.binary(max_size=200)))
def test_serve_api_payloads_get_http_answers(server, path, body):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = server.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 404, 413, 422), r.text
    if r.status_code != 200:
        err = r.json()["error"]
        assert err["message"] and err["type"]
    assert server.get("/health").status_code == 200
