"""The `agentsleep` command line: a thin typer layer over `Home`.

Every command takes `--json` for machine-readable output. Errors we expect
(bad input, locked store, missing model...) print one line and exit non-zero;
set AGENTSLEEP_DEBUG=1 to see a traceback for anything else.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import AgentsleepError, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Episodic memory and a sleep cycle for LLM agents.")
out = Console()
err = Console(stderr=True)


class State:
    home_path: Optional[Path] = None


def _home(writable: bool = True):
    from .home import Home

    return Home.open(State.home_path, writable=writable)


def _emit(as_json: bool, data: Any, human) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    else:
        human()


@app.callback()
def _root(home: Optional[Path] = typer.Option(None, "--home", envvar="AGENTSLEEP_HOME",
                                              help="Agent home directory (default ~/.agentsleep/default).")) -> None:
    State.home_path = home


@app.command()
def init(as_json: bool = typer.Option(False, "--json")) -> None:
    """Create an agent home with a default config.toml."""
    from .home import Home, default_home

    root = Home.init(State.home_path or default_home())
    with Home.open(root) as h:
        v = h.registry.current_name()
    _emit(as_json, {"home": str(root), "config": str(root / "config.toml"), "current_version": v},
          lambda: out.print(f"home ready at [bold]{root}[/] (config: {root / 'config.toml'}, model {v})"))


def _read_stdin() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"remember: stdin is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "convert it first, e.g. with iconv") from None


@app.command()
def remember(text: str = typer.Argument(..., help="The memory, or '-' to read it from stdin."),
             kind: str = typer.Option("fact", help="turn | fact | observation | tool"),
             source: str = typer.Option("user", help="Where it came from (e.g. user, web, tool:search)."),
             session: Optional[str] = typer.Option(None, help="Conversation/session id."),
             untrusted: bool = typer.Option(False, help="Mark as untrusted: recalled, but not consolidated by default."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Store a memory (an episode)."""
    if text == "-":
        text = _read_stdin()
    with _home() as h:
        r = h.remember(text, kind=kind, source=source, session=session, trust="untrusted" if untrusted else "trusted")
    _emit(as_json, r.model_dump(), lambda: out.print(
        f"{'already remembered' if r.duplicate else 'remembered'} {r.id}"
        + (f" ({len(r.chunk_ids)} chunks)" if len(r.chunk_ids) > 1 else "")))


@app.command()
def recall(query: str, k: int = typer.Option(4, "-k", help="How many memories."),
           kind: Optional[str] = typer.Option(None), session: Optional[str] = typer.Option(None),
           since: Optional[str] = typer.Option(None, help="ISO date/time."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Search memories by meaning."""
    from .home import parse_since

    with _home(writable=False) as h:
        eps = h.recall(query, k, kind=kind, session=session, since=parse_since(since))
    rows = [e.public() for e in eps]

    def human() -> None:
        t = Table("score", "id", "kind", "text", "sleep")
        for e in eps:
            t.add_row(f"{e.score:.3f}", e.id, e.kind, e.text[:90], e.consolidated_in or "-")
        out.print(t if eps else "no memories yet")
    _emit(as_json, rows, human)


@app.command()
def ask(question: str, no_memory: bool = typer.Option(False, "--no-memory", help="Closed-book: answer from the weights alone."),
        k: int = typer.Option(4, "-k"), max_new_tokens: Optional[int] = typer.Option(None),
        as_json: bool = typer.Option(False, "--json")) -> None:
    """Answer a question with the current model version."""
    with _home(writable=False) as h:
        r = h.ask(question, use_memory=not no_memory, k=k, max_new_tokens=max_new_tokens)
    _emit(as_json, r, lambda: out.print(f"{r['answer']}\n[dim]({r['model_version']}, {len(r['memories_used'])} memories)[/]"))


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts, the current model version and where things live."""
    with _home(writable=False) as h:
        s = h.status()

    def human() -> None:
        t = Table(show_header=False)
        for key in ("home", "episodes", "unconsolidated", "current_version", "versions", "base_model", "memory_backend"):
            t.add_row(key, str(s[key]))
        t.add_row("last_sleep", json.dumps(s["last_sleep"]) if s["last_sleep"] else "never")
        out.print(t)
    _emit(as_json, s, human)


@app.command("sleep-now")
def sleep_now(max_episodes: Optional[int] = typer.Option(None, help="Take at most N waiting episodes."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be consolidated; change nothing."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Consolidate waiting episodes into a new model version now."""
    from .progress import StageProgress

    with _home(writable=False) as h, StageProgress(enabled=not as_json, console=err) as prog:
        rep = h.sleep(max_episodes=max_episodes, dry_run=dry_run, progress=prog)
    _emit(as_json, rep.summary(), lambda: rep.print(out))


@app.command()
def history(as_json: bool = typer.Option(False, "--json")) -> None:
    """Model versions of this home, oldest first."""
    with _home(writable=False) as h:
        rows = h.history()

    def human() -> None:
        t = Table("", "version", "parent", "sleep", "episodes", "recall", "retention", "drift")
        for r in rows:
            m = r["metrics"]
            t.add_row("*" if r["current"] else "", r["version"], r["parent"] or "-", r["sleep_id"] or "(base)",
                      str(r["episodes"]), _fmt(m.get("recall_after")), _fmt(m.get("retention")), _fmt(m.get("drift_kl")))
        out.print(t)
    _emit(as_json, rows, human)


@app.command()
def rollback(version: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Serve an earlier model version again."""
    with _home(writable=False) as h:
        v = h.rollback(version)
    _emit(as_json, {"current_version": v.name}, lambda: out.print(f"current version is now {v.name}"))


@app.command()
def demo(as_json: bool = typer.Option(False, "--json"),
         keep: bool = typer.Option(False, help="Keep the demo home's earlier state instead of starting fresh.")) -> None:
    """Remember facts, ask closed-book, sleep, ask again: the whole idea in a few minutes."""
    from .demo import run_demo

    res = run_demo(State.home_path, fresh=not keep, console=None if as_json else out)
    if as_json:
        _emit(True, res, lambda: None)


# ---- serve commands (owned by the serving work; keep edits inside this block) ----

# ---- end serve commands ----

# ---- daemon commands (owned by the daemon work; keep edits inside this block) ----

# ---- end daemon commands ----


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def main() -> None:
    t0 = time.time()
    try:
        app(standalone_mode=False)
    except AgentsleepError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print(f"interrupted after {time.time() - t0:.0f} s; nothing was half-written")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # click usage errors and the unexpected
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("AGENTSLEEP_DEBUG"):
            raise
        err.print(f"[red]internal error:[/] {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(set AGENTSLEEP_DEBUG=1 for a traceback and please report it)", highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
