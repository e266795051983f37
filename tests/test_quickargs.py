"""The everyday commands' lean parser (agentsleep/quickargs.py) binds argv exactly as typer does,
and hands anything it does not handle back to typer."""
from pathlib import Path

import pytest
from typer.main import get_command

from agentsleep.cli import QUICK_COMMANDS, app
from agentsleep.quickargs import parse

# (argv, the command it must bind) - every option of every quick command appears at least once
SAME = [
    ["--home", "/tmp/h", "recall", "where is the key", "--json"],
    ["--home=/tmp/h", "recall", "q", "-k", "3", "--kind", "fact", "--session", "s1", "--since", "2026-01-01",
     "--until", "2026-02-01", "--namespace", "alice", "--neighbours", "2"],
    ["recall", "--neighbours=0", "--", "-starts with a dash"],
    ["remember", "-", "--kind", "turn", "--source", "tool:search", "--session", "s", "--untrusted",
     "--namespace", "bob", "--event-time", "2026-05-01T10:00", "--speaker", "Ann", "--json"],
    ["remember", "I moved to Lisbon.", "--no-untrusted"],
    ["ask", "Where is the key?", "--no-memory", "-k", "2", "--max-new-tokens", "16", "--namespace", "n", "--json"],
    ["status", "--json"], ["status"],
    ["forget", "ep-1234", "--fallback", "--json"], ["forget", "--query", "the dentist", "-k", "2", "--namespace", "x"],
    ["sleep-now", "--max-episodes", "5", "--dry-run", "--no-daemon", "--json"], ["sleep-now"],
]
# typer must decide these (help, errors, forms this parser does not read)
TYPER = [["recall", "--help"], ["recall"], ["recall", "q", "-k", "three"], ["recall", "q", "--neighbours", "21"],
         ["recall", "q", "--nope"], ["recall", "q", "--json", "--json"], ["recall", "q", "extra"],
         ["remember", "x", "--untrusted=yes"], ["--verbose", "status"], ["history", "--json"], [],
         ["recall", "q", "-k"], ["recall", "q", "-k=3"], ["recall", "q", "-k", "\u0663"],
         ["sleep-now", "--max-episodes", "\uff15"]]


def typer_binding(argv):
    group = get_command(app)
    ctx = group.make_context("agentsleep", list(argv))
    name, cmd, rest = group.resolve_command(ctx, ctx._protected_args + ctx.args)
    home = ctx.params["home"]  # the app takes --home as text (an empty one is refused), then a Path
    return (Path(home) if home is not None else None), cmd.callback.__wrapped__ if hasattr(cmd.callback, "__wrapped__") else cmd.callback, \
        cmd.make_context(name, rest, parent=ctx).params


@pytest.mark.parametrize("argv", SAME, ids=lambda a: " ".join(a)[:40])
def test_binds_like_typer(argv, monkeypatch):
    monkeypatch.delenv("AGENTSLEEP_HOME", raising=False)
    home, fn, values = parse(app, argv, QUICK_COMMANDS)
    t_home, _, t_values = typer_binding(argv)
    assert home == t_home and values == t_values
    assert fn.__name__.replace("_", "-") == next(a for a in argv if a in QUICK_COMMANDS)


def test_home_from_the_environment_like_typer(monkeypatch):
    monkeypatch.setenv("AGENTSLEEP_HOME", "/tmp/from-env")
    assert parse(app, ["status"], QUICK_COMMANDS)[0] == typer_binding(["status"])[0]
    assert parse(app, ["--home", "/tmp/x", "status"], QUICK_COMMANDS)[0] == typer_binding(["--home", "/tmp/x", "status"])[0]


@pytest.mark.parametrize("argv", TYPER, ids=lambda a: " ".join(a)[:40] or "(none)")
def test_leaves_the_rest_to_typer(argv):
    assert parse(app, argv, QUICK_COMMANDS) is None


def test_every_quick_command_takes_the_quick_path():
    """A parameter this parser cannot read would silently send its command back through typer's
    ~0.1 s validators: fail here instead."""
    for name in QUICK_COMMANDS:
        argv = [name] + (["x"] if name in ("remember", "recall", "ask") else [])
        assert parse(app, argv, QUICK_COMMANDS) is not None, name


def test_a_reader_that_leaves_early_gets_no_internal_error(tmp_path):
    """`agentsleep status --json | head -0`: the write fails with EPIPE; the command exits 1 and says
    nothing more (typer's behaviour on its own path), not "internal error: BrokenPipeError"."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGENTSLEEP_NO_SERVER": "1"}
    subprocess.run([sys.executable, "-m", "agentsleep.cli", "--home", str(home), "init"], env=env, check=True,
                   capture_output=True, timeout=300)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    try:
        p = subprocess.run([sys.executable, "-m", "agentsleep.cli", "--home", str(home), "status", "--json"],
                           env=env, stdout=w, stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(w)
    assert p.returncode == 1 and p.stderr.decode().strip() == ""
