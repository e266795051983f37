"""The CLI end to end (real subprocesses, real Chroma, a tiny real model): JSON shapes and bad input."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli
from tiny import tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def env(tiny):
    return {"AGENTSLEEP_MODEL__BASE": str(tiny)}


def test_init_remember_recall_status_ask_json(tmp_path, env):
    home = tmp_path / "h"
    r = run_cli("init", "--json", home=home, env=env)
    assert r.code == 0, r.err
    assert r.json()["current_version"] == "v0000"
    assert (home / "config.toml").is_file()
    assert oct(home.stat().st_mode & 0o777) == "0o700"

    r = run_cli("remember", "The user's favourite tea is jasmine green tea.", "--json", home=home, env=env)
    assert r.code == 0, r.err
    first = r.json()
    assert first["id"].startswith("ep-") and first["duplicate"] is False
    r = run_cli("remember", "-", "--kind", "turn", "--session", "s1", "--json", home=home, env=env,
                stdin="Project Falcon launches in February.".encode())
    assert r.json()["kind"] == "turn"
    again = run_cli("remember", "The user's favourite tea is jasmine green tea.", "--json", home=home, env=env).json()
    assert again["duplicate"] is True and again["id"] == first["id"]

    hits = run_cli("recall", "what tea do I like", "-k", "2", "--json", home=home, env=env).json()
    assert [h["id"] for h in hits][0] == first["id"]
    assert {"id", "text", "score"} <= set(hits[0]) and hits[0]["score"] > hits[1]["score"]

    st = run_cli("status", "--json", home=home, env=env).json()
    assert st["episodes"] == 2 and st["unconsolidated"] == 2 and st["current_version"] == "v0000"
    assert st["paths"]["memory"] == str(home / "memory")

    a = run_cli("ask", "What tea do I like?", "--json", "--max-new-tokens", "4", home=home, env=env).json()
    assert set(a) == {"answer", "model_version", "memories_used"}
    assert a["model_version"] == "v0000" and first["id"] in a["memories_used"]
    a = run_cli("ask", "What tea do I like?", "--no-memory", "--json", "--max-new-tokens", "4", home=home, env=env).json()
    assert a["memories_used"] == []

    h = run_cli("history", "--json", home=home, env=env).json()
    assert h[0]["version"] == "v0000" and h[0]["current"]
    dry = run_cli("sleep-now", "--dry-run", "--json", home=home, env=env).json()
    assert dry["status"] == "dry-run" and len(dry["episodes"]) == 2


def test_bad_text_inputs_one_line(tmp_path, env):
    home = tmp_path / "h"
    for text in ("", "   \n\t "):
        msg = run_cli("remember", text, home=home, env=env).one_line_error()
        assert "empty" in msg
    r = run_cli("remember", "-", home=home, env=env, stdin=b"caf\xe9 \xff\xfe binary")
    assert r.code == 2 and "not UTF-8" in r.one_line_error()
    r = run_cli("remember", "x", "--kind", "dream", home=home, env=env)
    assert "unknown kind" in r.one_line_error()
    r = run_cli("ask", "  ", home=home, env=env)
    assert "empty" in r.one_line_error()
    assert run_cli("status", "--json", home=home, env=env).json()["episodes"] == 0


def test_unwritable_home(tmp_path, env):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    r = run_cli("remember", "hello there", home=blocker / "home", env=env)
    assert "home" in r.one_line_error()
    r = run_cli("status", home=blocker, env=env)
    assert "not a directory" in r.one_line_error()


def test_bad_config(tmp_path, env):
    home = tmp_path / "h"
    assert run_cli("init", home=home, env=env).code == 0
    (home / "config.toml").write_text("[sleep]\nbogus = 1\n")
    assert "unknown key 'sleep.bogus'" in run_cli("status", home=home, env=env).one_line_error()
    (home / "config.toml").write_text("[memory]\nrecall_k = 'many'\n")
    assert "memory.recall_k" in run_cli("status", home=home, env=env).one_line_error()
    (home / "config.toml").write_text("[memory\n")
    assert "not valid TOML" in run_cli("status", home=home, env=env).one_line_error()
    r = run_cli("status", home=home, env={**env, "AGENTSLEEP_SLEEP__MAX_EPISODES": "-3"})
    assert r.code == 2


def test_missing_model_cache(tmp_path):
    home = tmp_path / "h"
    env = {"AGENTSLEEP_CACHE": str(tmp_path / "empty-cache"), "AGENTSLEEP_SMOLLM2_GGUF": str(tmp_path / "nope.gguf")}
    assert run_cli("remember", "The sky is green on Mars.", home=home, env=env).code == 0
    msg = run_cli("ask", "What colour is the sky?", home=home, env=env).one_line_error()
    assert "embedded model" in msg and "does not exist" in msg
    assert run_cli("status", "--json", home=home, env=env).json()["episodes"] == 1
    msg = run_cli("ask", "hi", home=home, env={"AGENTSLEEP_MODEL__BASE": str(tmp_path / "no-such-model")}).one_line_error()
    assert "does not exist" in msg


def test_second_writer_process(tmp_path, env):
    home = tmp_path / "h"
    assert run_cli("remember", "first memory here", home=home, env=env).code == 0
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from agentsleep.home import Home
        h = Home.open({str(home)!r})
        h.remember("held by the holder process")
        print("ready", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, env={**os.environ, **env})
    try:
        assert holder.stdout.readline().strip() == b"ready"
        msg = run_cli("remember", "second writer", home=home, env=env).one_line_error()
        assert f"pid {holder.pid}" in msg and "one writer" in msg
        # readers still work and see the holder's write
        st = run_cli("status", "--json", home=home, env=env).json()
        assert st["episodes"] == 2
    finally:
        holder.kill()
        holder.wait()
    assert run_cli("remember", "after the holder died", home=home, env=env).code == 0
    assert run_cli("status", "--json", home=home, env=env).json()["episodes"] == 3


def test_rollback_unknown_version(tmp_path, env):
    home = tmp_path / "h"
    assert run_cli("init", home=home, env=env).code == 0
    msg = run_cli("rollback", "v0042", home=home, env=env).one_line_error()
    assert "no version v0042" in msg


def test_a_wrong_home_is_refused_never_made_into_one_or_purged(tmp_path, env):
    """`--home "$UNSET"` must not mean the current folder, a folder of other files is not a home (`purge
    --yes` would delete it), and a mistyped home given to a reading command is an error, not a new empty home."""
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    for args in (("status",), ("recall", "x"), ("history",)):
        r = run_cli("--home", "", *args, env=env)
        assert "--home is empty" in r.one_line_error()
    for args in (("status",), ("purge", "--yes"), ("remember", "x"), ("init",)):
        msg = run_cli(*args, home=docs, env=env).one_line_error()
        assert "not an agentsleep home" in msg, (args, msg)
    assert sorted(p.name for p in docs.iterdir()) == ["thesis.txt"]  # nothing written, nothing deleted
    proj = tmp_path / "proj"  # a project whose own folder happens to be named memory/ is no home either
    (proj / "memory").mkdir(parents=True)
    (proj / "memory" / "notes.md").write_text("notes")
    (proj / "main.py").write_text("print(1)")
    for args in (("status",), ("purge", "--yes")):
        assert "not an agentsleep home" in run_cli(*args, home=proj, env=env).one_line_error()
    assert sorted(p.name for p in proj.rglob("*")) == ["main.py", "memory", "notes.md"]
    typo = tmp_path / "alcie"
    for args in (("recall", "daughter"), ("status",), ("history",), ("rollback", "v0001")):
        assert "does not exist" in run_cli(*args, home=typo, env=env).one_line_error()
    assert not typo.exists()
    assert run_cli("remember", "Alice's daughter is Mia.", home=typo, env=env).code == 0  # remember makes it


def test_user_text_is_printed_as_written_never_as_markup(tmp_path, env):
    home = tmp_path / "h"
    text = "Use [b]old tags and [/] closers in [red]notes[/red]."
    assert run_cli("remember", text, home=home, env=env).code == 0
    r = run_cli("recall", "tags closers notes", home=home, env=env)
    assert r.code == 0 and "Traceback" not in r.err and "[b]old tags and [/] closers in [red]notes[/red]" in r.out
    assert "'[/]' is not a version name" in run_cli("rollback", "[/]", home=home, env=env).one_line_error()


def test_purge_and_migrate_stop_for_a_running_server(tmp_path, env):
    home = tmp_path / "h"
    assert run_cli("remember", "The shed key is blue.", home=home, env=env).code == 0
    (home / "serve.json").write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:9", "started_at": time.time()}))
    for extra in ({}, {"AGENTSLEEP_NO_SERVER": "1"}):  # commands may run here; a purge still may not
        assert "agentsleep serve` runs for" in run_cli("purge", "--yes", home=home, env={**env, **extra}).one_line_error()
        moved = run_cli("migrate", "--to", "server", "--port", "9", home=home, env={**env, **extra}).one_line_error()
        assert moved.startswith("error: migrate: `agentsleep serve` runs for")  # its writes would miss the copy
    (home / "serve.json").unlink()
    assert run_cli("purge", "--yes", home=home, env=env).code == 0 and not home.exists()


def test_the_demo_never_writes_to_or_wipes_a_home_it_did_not_make(tmp_path):
    from agentsleep.demo import MARKER, _demo_home
    from agentsleep.errors import HomeError
    from agentsleep.home import Home

    real = tmp_path / "real"
    Home.init(real)
    for fresh in (True, False):
        with pytest.raises(HomeError, match="was not made by the demo"):
            _demo_home(real, fresh=fresh)
    assert not (real / MARKER).exists() and (real / "config.toml").exists()
    demo = _demo_home(tmp_path / "demo", fresh=True)
    (demo / "leftover").write_text("x")
    assert _demo_home(demo, fresh=False) == demo and (demo / "leftover").exists()  # --keep
    assert _demo_home(demo, fresh=True) == demo and not (demo / "leftover").exists() and (demo / MARKER).exists()


def test_config_holds_only_what_the_home_sets(tmp_path, env, monkeypatch):
    """init writes no defaults (so an improved default reaches existing homes); `config` prints the
    settings in effect, secrets masked; `--changed` only what differs from the defaults."""
    from agentsleep.config import Config, SeedConfig

    home = tmp_path / "h"
    assert run_cli("init", home=home, env=env).code == 0
    written = Config.load(home / "config.toml", env={})
    assert written == Config()                                   # nothing pinned ...
    monkeypatch.setattr(SeedConfig.model_fields["lr"], "default", 7e-4)
    SeedConfig.model_rebuild(force=True)
    Config.model_rebuild(force=True)
    try:
        assert Config.load(home / "config.toml", env={}).sleep.seed.lr == 7e-4  # ... so a new default applies
    finally:
        monkeypatch.undo()
        SeedConfig.model_rebuild(force=True)
        Config.model_rebuild(force=True)

    with open(home / "config.toml", "a") as f:
        f.write('\n[sleep.seed]\nlr = 5e-4\n\n[serve]\napi_key = "sekrit"\n')
    r = run_cli("config", "--json", home=home, env=env)
    assert r.code == 0, r.err
    full = r.json()
    assert full["sleep"]["seed"]["lr"] == 5e-4 and full["serve"]["api_key"] == "***"
    assert full["memory"]["recall_k"] == Config().memory.recall_k       # defaults are shown too
    changed = run_cli("config", "--changed", "--json", home=home, env=env).json()
    assert changed == {"model": {"base": env["AGENTSLEEP_MODEL__BASE"]}, "sleep": {"seed": {"lr": 5e-4}},
                       "serve": {"api_key": "***"}}
    human = run_cli("config", "--changed", home=home, env=env)
    assert "lr = 0.0005" in human.out and "sekrit" not in human.out


def test_options_default_to_the_homes_config(tmp_path, env):
    """An option left out reads the home's config (config.py holds every default): `-k` is memory.recall_k,
    `grow --blocks` is sleep.grow_blocks."""
    home = tmp_path / "h"
    assert run_cli("init", home=home, env=env).code == 0
    with open(home / "config.toml", "a") as f:
        f.write("\n[memory]\nrecall_k = 2\n\n[sleep]\ngrow_blocks = 2\n")
    for text in ("The user's favourite tea is jasmine.", "Project Falcon launches in February.",
                 "The cat is called Miso.", "The office is on the fourth floor."):
        assert run_cli("remember", text, home=home, env=env).code == 0
    assert len(run_cli("recall", "what tea do I like", "--json", home=home, env=env).json()) == 2
    assert len(run_cli("recall", "what tea do I like", "-k", "3", "--json", home=home, env=env).json()) == 3
    a = run_cli("ask", "What tea do I like?", "--json", "--max-new-tokens", "2", home=home, env=env).json()
    assert len(a["memories_used"]) == 2
    r = run_cli("grow", "--json", home=home, env=env)
    assert r.code == 0, r.err
    assert r.json()["layers"]["after"] - r.json()["layers"]["before"] == 2


def test_serve_homes_listens_where_the_homes_agree(tmp_path):
    """serve-homes runs one server for all its homes: without --port their serve.port must agree."""
    for name, port in (("ann", 8500), ("ben", 8501)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_text(f"[serve]\nport = {port}\n")
    msg = run_cli("serve-homes", str(tmp_path / "ann"), str(tmp_path / "ben")).one_line_error()
    assert "different serve.port (ann: 8500; ben: 8501)" in msg and "--port" in msg


def test_bench_quick_keeps_the_suite_named_and_refuses_one_without_a_quick_profile(tmp_path):
    r = run_cli("bench", "nights", "--quick", "--out", str(tmp_path), "--docs", "")
    assert "only sleep, locomo, serve have a quick profile" in r.one_line_error()
    r = run_cli("sleep-now", "--max-episodes", "0", home=tmp_path / "h")
    assert r.code == 2 and ("at least 1" in r.err or "greater than or equal to 1" in r.err) and "Traceback" not in r.err


def test_commands_run_side_by_side_wait_for_the_store(tmp_path, env):
    """An agent's tools may call `remember` at once: each waits for the one writing instead of failing."""
    from concurrent.futures import ThreadPoolExecutor

    home = tmp_path / "h"
    assert run_cli("init", home=home, env=env).code == 0
    texts = [f"Fact number {i}: the locker of team {i} is on floor {i + 2}." for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: run_cli("remember", t, home=home, env=env), texts))
    assert all(r.code == 0 for r in results), [r.err for r in results]
    assert run_cli("status", "--json", home=home, env=env).json()["episodes"] == 4


def test_out_of_range_input_gets_one_line(tmp_path, env):
    home = tmp_path / "h"
    assert run_cli("remember", "Ana lives in Porto.", home=home, env=env).code == 0
    cases = [(("recall", "Ana", "-k", "99999999999999999999999"), "k must be"),
             (("remember", "x", "--event-time", "0001-01-01"), "out of the range"),
             (("remember", "x", "--event-time", "9999-12-31T23:59:59-05:00"), "out of the range"),
             (("recall", "Ana", "--until", "0001-01-01"), "out of the range"),
             (("remember", "x \udced\udca0\udc80"), "not UTF-8"),
             (("recall", "\udced\udca0\udc80"), "not UTF-8"),
             (("ask", "Where?", "--max-new-tokens", "-1"), "max_new_tokens"),
             (("forget", "--query", "qqqzzz xyzzy"), "closely enough"),
             (("recall", "Ana", "-k", "abc"), "Invalid value for '-k'"),  # usage errors are one line too
             (("grow", "--blocks", "0"), "--blocks"),
             (("recalll", "Ana"), "No such command")]
    for args, want in cases:
        assert want in run_cli(*args, home=home, env=env).one_line_error(), args
    assert run_cli("status", "--json", home=home, env=env).json()["episodes"] == 1


def test_status_and_the_dashboard_count_memories_not_chunks(tmp_path, env):
    """A long text stored in chunks is one episode to a person: `status` and the dashboard's list say 2 here,
    not the 2 + chunks stored rows (those are shown apart)."""
    from agentsleep.config import Config
    from agentsleep.home import Home
    from agentsleep.serving.ui import HomeAPI

    root = Home.init(tmp_path / "h", config=Config.model_validate({"model": {"base": env["AGENTSLEEP_MODEL__BASE"]}}))
    long = " ".join(f"Paragraph {i} of the lease says the tenant keeps the garden tidy and the gate shut." for i in range(40))
    with Home.open(root) as h:
        chunks = len(h.remember(long, kind="observation").chunk_ids)
        h.remember("The landlord's name is Mrs. Okonkwo.")
        assert chunks > 2
        st = h.status()
        assert (st["episodes"], st["unconsolidated"], st["chunks"]) == (2, 2, chunks + 1)
        listed = HomeAPI(h).episodes({})
        assert listed["total"] == 2 and len(listed["episodes"]) == 2
        assert HomeAPI(h).episodes({"kind": "fact"})["total"] == 2  # filtered: the home's total still
    human = run_cli("status", home=root, env=env).out
    assert f"({chunks + 1} stored chunks)" in human
