"""The `agentsleep` command line: a thin typer layer over `Home`.

Every command except export, serve, serve-homes, mcp and daemon run takes `--json` for
machine-readable output. Errors we expect
(bad input, locked store, missing model...) print one line and exit non-zero;
set AGENTSLEEP_DEBUG=1 to see a traceback for anything else.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import AgentsleepError, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Episodic memory and a sleep cycle for LLM agents.")


class _LazyConsole:
    """rich's Console, made on first use: a `--json` command never imports rich (about 0.05 s)."""

    def __init__(self, **kw: Any):
        object.__setattr__(self, "_kw", kw)
        object.__setattr__(self, "_console", None)

    @property
    def real(self) -> Any:
        """The rich Console itself, for what needs one (progress displays, the demo)."""
        if self._console is None:
            from rich.console import Console

            object.__setattr__(self, "_console", Console(**self._kw))
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.real, name, value)


def Table(*columns: Any, **kw: Any) -> Any:  # noqa: N802 - rich's Table, imported when a table is printed
    """rich's Table whose cells are plain text: a memory holding "[/]" or "[b]" is shown as written, never
    read as rich markup (which would drop it or fail the whole table)."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    class PlainTable(RichTable):
        def add_row(self, *cells: Any, **kw: Any) -> None:
            super().add_row(*(escape(c) if isinstance(c, str) else c for c in cells), **kw)

    return PlainTable(*columns, **kw)


def plain(text: Any) -> str:
    """User text (a memory, an answer, an error quoting input) made safe to print through rich."""
    from rich.markup import escape

    return escape(str(text))


out = _LazyConsole()
err = _LazyConsole(stderr=True)
# The commands that must answer at once: parsed without typer's validators (quickargs.py)
QUICK_COMMANDS = ("remember", "recall", "ask", "status", "forget", "sleep-now")


class State:
    home_path: Optional[Path] = None
    home_from_env: bool = False  # AGENTSLEEP_HOME, not a --home typed for this command (the demo ignores it)


CLI_WRITER_WAIT_S = 30.0


def _home(writable: bool = True, create: bool = False):
    """The home of --home, $AGENTSLEEP_HOME or the default. Only `remember` (and `init`) create one: a
    mistyped --home given to any other command is an error, not a new empty home that answers nothing."""
    from .home import Home

    # one-shot commands run side by side (an agent's tools calling the CLI at once): a write waits for
    # another's to finish rather than failing; a long-lived writer (serve, a sleep) still refuses it in time
    return Home.open(State.home_path, writable=writable, create=create, writer_wait=CLI_WRITER_WAIT_S)


def _server():
    """A client for the `agentsleep serve` running for this home, or None (see agentsleep/client.py)."""
    from .client import find, home_root

    return find(home_root(State.home_path))


def _via_server(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The answer of the running server, or None when there is none (the command then runs here)."""
    from .client import ServerGone

    c = _server()
    if c is None:
        return None
    try:
        return c.call(method, path, body)
    except ServerGone:
        return None


def _emit(as_json: bool, data: Any, human) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    else:
        human()


@app.callback()
def _root(ctx: typer.Context,
          home: Optional[str] = typer.Option(None, "--home", envvar="AGENTSLEEP_HOME",
                                             help="Agent home directory (default ~/.agentsleep/default).")) -> None:
    if home is not None and not home.strip():  # `--home "$UNSET"` must not mean the current folder
        raise InputError("--home is empty (an unset variable?); pass the home's folder, or leave --home out "
                         "for ~/.agentsleep/default")
    State.home_path = Path(home) if home is not None else None
    State.home_from_env = getattr(ctx.get_parameter_source("home"), "name", "") == "ENVIRONMENT"


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
    if sys.stdin is None:  # started with standard input closed
        raise InputError("remember: '-' reads the memory from standard input, and there is none (it is closed)")
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
             namespace: str = typer.Option("default", "--namespace", help="Hard partition (user / agent / conversation) recall never crosses."),
             event_time: Optional[str] = typer.Option(None, "--event-time", help="When it happened, ISO date/time (default: now)."),
             speaker: Optional[str] = typer.Option(None, "--speaker", help="Who said it."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Store a memory (an episode)."""
    if text == "-":
        text = _read_stdin()
    r = _via_server("POST", "/remember", {"text": text, "kind": kind, "source": source, "session": session,
                                         "untrusted": untrusted, "namespace": namespace, "event_time": event_time,
                                         "speaker": speaker})
    if r is None:
        from .home import parse_since

        when = parse_since(event_time, "--event-time")
        with _home(create=True) as h:
            r = h.remember(text, kind=kind, source=source, session=session, trust="untrusted" if untrusted else "trusted",
                           namespace=namespace, event_time=when, speaker=speaker).model_dump()
    _emit(as_json, r, lambda: out.print(
        f"{'already remembered' if r['duplicate'] else 'remembered'} {r['id']}"
        + (f" ({len(r['chunk_ids'])} chunks)" if len(r['chunk_ids']) > 1 else "")))


@app.command()
def recall(query: str, k: Optional[int] = typer.Option(None, "-k", help="How many memories (default: memory.recall_k)."),
           kind: Optional[str] = typer.Option(None), session: Optional[str] = typer.Option(None),
           since: Optional[str] = typer.Option(None, help="Only memories whose event time is at or after this ISO date/time."),
           until: Optional[str] = typer.Option(None, help="Only memories whose event time is before this ISO date/time."),
           namespace: str = typer.Option("default", "--namespace", help="The partition to search (never crossed)."),
           neighbours: Optional[int] = typer.Option(None, "--neighbours", min=0, max=20,
                                                    help="Turns either side of each hit to bring along (default: memory.neighbours)."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Search memories by meaning and words (hybrid), within one namespace."""
    rows = _via_server("POST", "/recall", {"query": query, "k": k, "kind": kind, "session": session, "since": since,
                                           "until": until, "namespace": namespace, "neighbours": neighbours})
    if rows is None:
        from .home import parse_since

        lo, hi = parse_since(since), parse_since(until, "--until")
        with _home(writable=False) as h:
            eps = h.recall(query, k, kind=kind, session=session, since=lo, until=hi, namespace=namespace,
                           neighbours=neighbours)
        rows = [e.public() for e in eps]

    def human() -> None:  # from the JSON rows as they are: no episode model to import (0.15 s)
        t = Table()
        for col in ("score", "id", "kind", "when", "text", "sleep"):
            t.add_column(col, no_wrap=col in ("score", "id", "when"))  # an id stays whole: it is what forget takes
        for r in rows:
            sup = f" (superseded by {r['superseded_by']})" if r.get("superseded_by") else ""
            who = r.get("speaker")
            text = r["text"] if not who or r["text"].startswith(f"{who}:") else f"{who}: {r['text']}"
            t.add_row("-" if r.get("score") is None else f"{r['score']:.3f}", r["id"], r["kind"],
                      str(r.get("event_time") or r.get("created_at") or "")[:10], text[:90],
                      (r.get("consolidated_in") or "-") + sup)
        filtered = any(v is not None for v in (kind, session, since, until))
        out.print(t if rows else f"no memories{' match these filters' if filtered else ' yet'} in namespace {namespace!r}")
    _emit(as_json, rows, human)


@app.command()
def ask(question: str, no_memory: bool = typer.Option(False, "--no-memory", help="Closed-book: answer from the weights alone."),
        k: Optional[int] = typer.Option(None, "-k", help="Memories in the prompt (default: memory.recall_k)."),
        max_new_tokens: Optional[int] = typer.Option(None, help="Answer length in tokens (default: model.max_new_tokens)."),
        namespace: str = typer.Option("default", "--namespace", help="The partition memories come from."),
        as_json: bool = typer.Option(False, "--json")) -> None:
    """Answer a question with the current model version."""
    r = _via_server("POST", "/ask", {"question": question, "no_memory": no_memory, "k": k,
                                     "max_new_tokens": max_new_tokens, "namespace": namespace})
    if r is None:
        with _home(writable=False) as h:
            r = h.ask(question, use_memory=not no_memory, k=k, max_new_tokens=max_new_tokens, namespace=namespace)
    _emit(as_json, r, lambda: out.print(f"{plain(r['answer'])}\n[dim]({r['model_version']}, {len(r['memories_used'])} memories)[/]"))


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts, the current model version and where things live; cli_path says whether a running
    `agentsleep serve` answered (server) or this process did (local)."""
    s = _via_server("GET", "/status")
    if s is None:
        with _home(writable=False) as h:
            s = h.status()
        s.update(cli_path="local", server=None)

    def human() -> None:
        t = Table(show_header=False)
        for key in ("home", "episodes", "unconsolidated", "current_version", "versions", "base_model", "memory_backend"):
            chunked = key == "episodes" and s.get("chunks", s[key]) != s[key]
            t.add_row(key, str(s[key]) + (f" ({s['chunks']} stored chunks)" if chunked else ""))
        t.add_row("cli_path", s["cli_path"] + (f" ({s['server']})" if s.get("server") else ""))
        t.add_row("last_sleep", json.dumps(s["last_sleep"]) if s["last_sleep"] else "never")
        if s.get("superseded"):  # old id -> the newer episode that changed its value
            t.add_row("superseded", ", ".join(f"{o} by {n}" for o, n in list(s["superseded"].items())[:5])
                      + (f" (+{len(s['superseded']) - 5} more)" if len(s["superseded"]) > 5 else ""))
        out.print(t)
        _print_held_back(s.get("held_back") or [])
    _emit(as_json, s, human)


def _print_held_back(rows: list[dict]) -> None:
    """Episodes whose consolidation failed: backed off or set aside, and why (`agentsleep retry` releases them)."""
    if not rows:
        return
    t = Table("episode", "state", "failures", "failed", "last reason", title="held back from consolidation "
              "(agentsleep retry <id>|--all releases)")
    for r in rows[:20]:
        t.add_row(r["episode_id"], r["state"], str(r["failures"]), r["failed"], r["reason"][:100])
    out.print(t)
    if len(rows) > 20:
        out.print(f"... and {len(rows) - 20} more (--json lists them all)")


@app.command("config")
def show_config(changed: bool = typer.Option(False, "--changed", help="Only what differs from the defaults."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """The settings in effect: the home's config.toml and AGENTSLEEP_* overrides over the defaults."""
    import tomli_w

    from .config import redact_secrets

    with _home(writable=False) as h:
        data = redact_secrets(h.config.to_toml_dict(only_set=changed))
    _emit(as_json, data, lambda: out.print(tomli_w.dumps(data).rstrip() or "(all defaults)", markup=False,
                                           highlight=False))


@app.command("sleep-now")
def sleep_now(max_episodes: Optional[int] = typer.Option(None, min=1, help="Take at most N waiting episodes."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be consolidated; change nothing."),
              no_daemon: bool = typer.Option(False, "--no-daemon", help="Sleep in this process even if a daemon runs."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Consolidate waiting episodes into a new model version now."""
    from .progress import StageProgress

    if max_episodes is not None and max_episodes < 1:  # the quick path binds without typer's min=1
        raise InputError(f"sleep-now: --max-episodes must be at least 1, got {max_episodes}")
    if not dry_run and not no_daemon:
        # a running daemon owns this home's sleeps: ask it instead of racing it
        from .home import default_home

        home_root = State.home_path or default_home()
        d = load_daemon()
        rid = d.submit_request(home_root, max_episodes=max_episodes, by="sleep-now")
        if rid is not None:
            if not as_json:
                err.print(f"the daemon for {home_root} accepted this sleep (request {rid}); waiting for it "
                          "(Ctrl-C stops waiting, not the sleep)...")
            seen: list[Any] = [None, 0.0]

            def show() -> None:
                if as_json or time.monotonic() - seen[1] < 2.0:  # the status reads every sleep's journal
                    return
                seen[1] = time.monotonic()
                stage = (d.daemon_status(home_root, count_waiting=False).get("running") or {}).get("stage")
                if not as_json and stage and stage != seen[0]:
                    seen[0] = stage
                    err.print(f"  stage {stage}")
            try:
                res = d.wait_request(home_root, rid, on_progress=show)
            except KeyboardInterrupt:
                err.print(f"stopped waiting; the daemon's sleep (request {rid}) goes on: `agentsleep daemon "
                          "status` follows it, `agentsleep daemon stop` ends it")
                sys.exit(130)
            if res is None:
                raise AgentsleepError(f"the daemon stopped before finishing request {rid}; see `agentsleep daemon status`")
            _emit(as_json, _ran(res, f"the daemon's sleep (request {rid})", as_json),
                  lambda: out.print_json(json.dumps(res, default=str)))
            return
        res = _sleep_via_server(max_episodes, as_json)
        if res is not None:
            _emit(as_json, _ran(res, "the server's sleep", as_json), lambda: out.print_json(json.dumps(res, default=str)))
            return
    with _home(writable=False) as h, StageProgress(enabled=not as_json, console=None if as_json else err.real) as prog:
        rep = h.sleep(max_episodes=max_episodes, dry_run=dry_run, progress=prog)
    _emit(as_json, rep.summary(), lambda: rep.print(out))


def _ran(res: dict, who: str, as_json: bool = False) -> dict:
    """A sleep run elsewhere (daemon, server) that did not run to a verdict fails this command, as it
    would have here: exit non-zero with its reason (after the JSON, with --json), not 0."""
    from .errors import SleepError

    status = res.get("status")
    if status in ("failed", "aborted", "interrupted", "busy"):
        if as_json:
            _emit(True, res, lambda: None)
        why = res.get("error") or "; ".join(res.get("reasons") or []) or "no reason given"
        raise SleepError(f"sleep-now: {who} ended {status}: {str(why).splitlines()[0][:300]}")
    return res


def _sleep_via_server(max_episodes: Optional[int], as_json: bool) -> Optional[dict]:
    """sleep-now through a running `agentsleep serve` (it runs the sleep in a worker process)."""
    from .client import ServerGone, wait_sleep

    c = _server()
    if c is None:
        return None
    try:
        run = c.call("POST", "/sleep", {"max_episodes": max_episodes})
    except ServerGone:
        return None
    if not as_json:
        err.print(f"the server at {c.url} started this sleep ({run['sleep_id']}); waiting for it "
                  "(Ctrl-C stops waiting, not the sleep)...")
    seen: list[Any] = [None]

    def show(s: dict) -> None:
        stage = s.get("stage") or (s.get("progress") or {}).get("stage")
        if not as_json and stage and stage != seen[0]:
            seen[0] = stage
            err.print(f"  stage {stage}")
    try:
        return wait_sleep(c, run["sleep_id"], on_progress=show)
    except KeyboardInterrupt:
        err.print(f"stopped waiting; the server's sleep {run['sleep_id']} goes on (`agentsleep status` shows it)")
        sys.exit(130)


@app.command()
def report(sleep_id: str = typer.Argument("latest", help="A sleep id, or 'latest'."),
           open_it: bool = typer.Option(False, "--open", help="Open it in the web browser."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """The path of a sleep's report.html (what it consolidated, held back, dreamt; recall, loss, drift)."""
    from .home import default_home
    from .serving.ui import report_path

    root = Path(State.home_path or default_home()).expanduser()
    if not root.is_dir():
        raise InputError(f"report: home {root} does not exist")
    p = report_path(root, sleep_id)
    if open_it:
        import webbrowser

        if not webbrowser.open(p.resolve().as_uri()):
            raise InputError(f"report: no web browser to open {p}; open the file yourself")
    _emit(as_json, {"sleep_id": p.parent.name, "report": str(p)}, lambda: out.print(str(p), highlight=False, soft_wrap=True))


@app.command()
def history(as_json: bool = typer.Option(False, "--json")) -> None:
    """Model versions of this home, oldest first."""
    with _home(writable=False) as h:
        rows = h.history()
        held = h.held_back()

    def label(r: dict) -> str:
        m = r["metrics"]
        size = (f"{r['layers']} layers, {r['parameters'] / 1e6:.1f}M" if r.get("parameters") else
                f"{r['layers']} layers" if r.get("layers") is not None else "the configured base model")
        what = {"base": "base", "grow": "grown"}.get(r["kind"], f"sleep {r['sleep_id']}, {r['episodes']} episodes, "
                                                               f"recall {_fmt(m.get('recall_before'))}->{_fmt(m.get('recall_after'))}, "
                                                               f"retention {_fmt(m.get('retention'))}, drift {_fmt(m.get('drift_kl'))}"
                                                               + (f", facts +{m['facts_gained']:g}/-{m['facts_lost']:g}"
                                                                  if "facts_gained" in m else ""))
        cur = " [bold green]<- current[/]" if r["current"] else ""
        return f"[bold]{r['version']}[/] {what} ({size}){cur}"

    def human() -> None:
        from rich.tree import Tree

        nodes: dict[str, Any] = {}
        roots = Tree("versions", guide_style="dim")
        for r in rows:  # oldest first: a parent is always placed before its children
            nodes[r["version"]] = (nodes.get(r["parent"]) or roots).add(label(r))
        out.print(roots)
        _print_held_back(held)
    _emit(as_json, rows, human)


@app.command()
def diff(a: str = typer.Argument(..., help="Older version, e.g. v0001."),
         b: Optional[str] = typer.Argument(None, help="Newer version (default: current)."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """What changed between two versions: lineage, layers, parameters, episodes, weights."""
    with _home(writable=False) as h:
        d = h.diff(a, b)

    def human() -> None:
        w = d["weights"]
        steps = ", ".join(f"{s['version']} ({s['kind']})" for s in d["steps"]) or "none"
        out.print(f"{d['a']} -> {d['b']}: common ancestor {d['common_ancestor']}; steps {steps}")
        sizes = [f"{what} {d[what]['a']} -> {d[what]['b']}" for what in ("layers", "parameters")
                 if (d[what]["a"], d[what]["b"]) != (None, None)]  # the base's size is not recorded until it is read
        if sizes:
            out.print("; ".join(sizes))
        out.print(f"episodes only in {d['b']}: {len(d['episodes_only_in_b'])}; only in {d['a']}: {len(d['episodes_only_in_a'])}")
        if w.get("compared"):
            out.print(f"weights: {w['changed']} of {w['compared']} shared tensors changed, relative change "
                      f"{w['relative_change']:.2e}; {w['only_in_b_count']} new tensors, {w['only_in_a_count']} removed")
            t = Table("tensor", "relative change")
            for x in w["top"]:
                t.add_row(x["tensor"], f"{x['relative_change']:.2e}")
            out.print(t)
        else:
            out.print(f"weights: {w.get('note', 'nothing compared')}")
    _emit(as_json, d, human)


@app.command()
def rollback(version: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Serve an earlier model version again."""
    with _home(writable=False) as h:
        v = h.rollback(version)
    _emit(as_json, {"current_version": v.name}, lambda: out.print(f"current version is now {v.name}"))


@app.command()
def forget(episode_id: Optional[str] = typer.Argument(None, help="Episode id to forget."),
           query: Optional[str] = typer.Option(None, "--query", help="Forget the best match(es) of this query instead."),
           k: int = typer.Option(1, "-k", help="With --query: how many matches."),
           fallback: bool = typer.Option(False, help="Serve the last clean version right away."),
           namespace: str = typer.Option("default", "--namespace", help="With --query: the partition searched."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Forget exactly: from the store now, from the weights at the next sleep."""
    r = _via_server("POST", "/forget", {"episode_id": episode_id, "query": query, "k": k, "fallback": fallback,
                                        "namespace": namespace})
    if r is None:
        with _home() as h:
            r = h.forget(episode_id, query=query, k=k, fallback=fallback, namespace=namespace)
    deleted = r.get("versions_deleted") or []
    still = [v for v in r["versions_holding_it"] if v not in deleted]
    _emit(as_json, r, lambda: out.print(
        f"forgot {len(r['forgotten'])} episode(s)"
        + (f"; deleted version(s) {', '.join(deleted)} that held it" if deleted else "")
        + (f"; version(s) {', '.join(still)} still hold it: the next sleep rebuilds from {r['rebuild_from']}, "
           "then deletes them" if still else "")
        + f"; serving {r['serving']}"))


@app.command()
def retry(episode_ids: Optional[list[str]] = typer.Argument(None, help="Episode ids held back (see `agentsleep status`)."),
          all_: bool = typer.Option(False, "--all", help="Release every held-back episode."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Release episodes that consolidation set aside or backed off: the next sleep takes them afresh."""
    if bool(episode_ids) == all_:
        raise InputError("retry: give episode ids or --all (not both)")
    with _home(writable=False) as h:
        released = h.retry(None if all_ else list(episode_ids))
    _emit(as_json, {"released": released}, lambda: out.print(
        f"released {len(released)} episode(s): the next sleep takes them" if released else "nothing was held back"))


@app.command()
def export(out_file: Optional[Path] = typer.Option(None, "--out", help="Write here (JSON) instead of standard output.")) -> None:
    """Export this home's episodes (with provenance) and version manifests as JSON."""
    from .atomic import atomic_write_json

    with _home(writable=False) as h:
        if out_file is not None:
            _check_export_path(out_file, h.root)
        data = h.export()
    if out_file is None:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    else:
        try:
            atomic_write_json(out_file, data, mode=0o600)  # every memory of the home: readable by its owner only
        except OSError as e:
            raise InputError(f"export: cannot write {out_file} ({e.strerror or type(e).__name__})") from None
        n = len({e.get("parent_id") or e["id"] for e in data["episodes"]})
        err.print(f"exported {n} memories ({len(data['episodes'])} stored chunks) and {len(data['versions'])} versions "
                  f"to {out_file}")


def _check_export_path(path: Path, home: Path) -> None:
    """`export --out` writes a new file or replaces a regular one; never a folder, a link, a device,
    or a file of the home itself (the export is renamed over it)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise InputError(f"export: --out {path} exists and is not a regular file (a folder, link or device); "
                         "give the path of a new file")
    try:
        path.resolve().relative_to(home.resolve())
    except ValueError:
        return
    raise InputError(f"export: --out {path} lies inside the home {home}; write the export outside it")


def _refuse_while_served(command: str) -> None:
    """A command that replaces or deletes the whole store must not run beside a server or a daemon that
    writes to it (a Chroma server store has no writer lock to stop them)."""
    from .client import running_server
    from .home import default_home

    root = Path(State.home_path or default_home()).expanduser()
    running = running_server(root)
    if running is not None:
        raise InputError(f"{command}: `agentsleep serve` runs for {root} at {running['url']}; stop it first")
    load_daemon()
    from .daemon import daemon_info

    info = daemon_info(root)
    if info is not None:
        raise InputError(f"{command}: a daemon (pid {info.get('pid')}) runs for {root}; stop it first "
                         f"(`agentsleep daemon stop {root}`)")


@app.command()
def purge(yes: bool = typer.Option(False, "--yes", help="Confirm: this cannot be undone."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Delete this home for good: every episode, model version, report and log."""
    if not yes:
        raise InputError("purge deletes every episode and model version of this home and cannot be undone; "
                         "run `agentsleep export` first if you need a copy, then pass --yes")
    _refuse_while_served("purge")
    with _home() as h:
        r = h.purge()
    _emit(as_json, r, lambda: out.print(f"purged {r['purged']}: {r['episodes']} episodes, {r['versions']} versions"
                                        + (f"; deleted the server collection {r['server_collection']}"
                                           if r.get("server_collection") else "")
                                        + (f"; kept what agentsleep did not write there: {', '.join(r['kept'])}"
                                           if r.get("kept") else "")))


@app.command()
def migrate(ctx: typer.Context, to: str = typer.Option(..., "--to", help="embedded | server"),
            host: Optional[str] = typer.Option(None, help="Chroma server host (--to server; default: memory.host)."),
            port: Optional[int] = typer.Option(None, min=1, max=65535, help="Chroma server port (--to server; default: memory.port)."),
            collection: Optional[str] = typer.Option(None, help="Target collection (default: memory.collection)."),
            token: Optional[str] = typer.Option(None, envvar="AGENTSLEEP_CHROMA_TOKEN",
                                                help="Chroma server auth token (default: memory.token)."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Move this home's episodes to another store (embedded <-> Chroma server), verified, nothing lost."""
    from .config import MemoryConfig
    from .memory.migrate import migrate as run_migrate

    if to not in ("embedded", "server"):
        raise InputError(f"migrate: --to must be 'embedded' or 'server', got '{to}'")
    from pydantic import ValidationError

    # a token typed here is written to config.toml with the new store; one from the environment stays there
    typed = getattr(ctx.get_parameter_source("token"), "name", "") == "COMMANDLINE"
    _refuse_while_served("migrate")  # episodes written during the copy would stay behind in the old store
    with _home() as h:
        mem = h.config.memory
        try:
            target = MemoryConfig(**{**mem.model_dump(), "backend": to, "host": host or mem.host,
                                     "port": mem.port if port is None else port,
                                     "collection": collection or mem.collection, "token": token or mem.token})
        except ValidationError as e:
            first = e.errors()[0]
            raise InputError(f"migrate: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        r = run_migrate(h, target, persist_token=typed)
    _emit(as_json, r, lambda: out.print(f"moved {r['memories']} memories ({r['episodes']} stored chunks) from {r['from']} "
                                        f"to {r['to']} ({r['copied']} chunks copied, {r['already_there']} already there); "
                                        "the old store is kept"
                                        + (f"; the token was {r['token']}" if r.get("token") else "")))


@app.command()
def grow(blocks: Optional[int] = typer.Option(None, min=1, max=64,
                                             help="Identity-initialised decoder blocks to insert (default: sleep.grow_blocks)."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Add capacity: a new version with extra blocks that compute the same function."""
    with _home(writable=False) as h:
        v = h.grow(h.config.sleep.grow_blocks if blocks is None else blocks)
    m = v.manifest
    _emit(as_json, {"version": v.name, "layers": m["layers"], "new_layers": m["new_layers"], "parameters": m["parameters"]},
          lambda: out.print(f"{v.name}: {m['layers']['before']} -> {m['layers']['after']} layers "
                            f"({m['parameters'] / 1e6:.1f}M parameters); the next sleep trains the new blocks"))


@app.command()
def demo(as_json: bool = typer.Option(False, "--json"),
         keep: bool = typer.Option(False, help="Keep the demo home's earlier state instead of starting fresh.")) -> None:
    """Remember facts, ask closed-book, sleep, ask again: the whole idea in a few minutes."""
    from .demo import run_demo

    # $AGENTSLEEP_HOME names the user's real home: the demo keeps to its own unless --home is typed
    res = run_demo(None if State.home_from_env else State.home_path, fresh=not keep,
                   console=None if as_json else out.real)
    if as_json:
        _emit(True, res, lambda: None)


@app.command()
def bench(suite: str = typer.Argument("quick", help="quick (sleep, locomo, serve) | sleep | phrasing | squad | locomo | serve | ablation | faults | retrieval | continual | scaling | cli | nights | languages | all (= full)"),
          quick: bool = typer.Option(False, "--quick", help="The quick profile of the suites named (with no suite: sleep, locomo and serve, under 15 minutes on 2 CPU cores)."),
          full: bool = typer.Option(False, "--full", help="Every suite at full size (hours on CPU)."),
          out_dir: Path = typer.Option(Path("bench-results"), "--out", help="Where results, plots and the bench homes go."),
          docs: Optional[Path] = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update ('' to skip)."),
          facts: Optional[int] = typer.Option(None, min=1, max=20, help="Facts per sleep in the sleep suite (default 20; 10 and one sleep in quick)."),
          data: Optional[Path] = typer.Option(None, "--data", help="squad / locomo: the data file (default: under $AGENTSLEEP_BENCH_DATA)."),
          offset: int = typer.Option(0, "--offset", min=0, help="squad / locomo: skip this many passages or conversations."),
          count: Optional[int] = typer.Option(None, "--count", min=1, help="squad / locomo: take this many passages or conversations."),
          seeds: Optional[int] = typer.Option(None, "--seeds", min=1, max=10, help="phrasing: seeds per voice; nights, squad: seeds (default 3)."),
          nights: Optional[int] = typer.Option(None, "--nights", min=1, max=20, help="nights: how many nights (default 5)."),
          facts_per_night: Optional[int] = typer.Option(None, "--facts-per-night", min=1, max=8, help="nights: new facts a night (default 8)."),
          voice: list[str] = typer.Option([], "--voice", help="phrasing: first_person | third_person | assistant, and chat with --dev (repeatable; default all)."),
          dev: bool = typer.Option(False, "--dev", help="phrasing, nights: the development variants instead of the held-out test facts."),
          test_set: Optional[str] = typer.Option(None, "--test-set", help="phrasing: a (bench/phrasings.py, the default) | b (bench/phrasings_b.py, the second held-out set)."),
          dev_set: Optional[str] = typer.Option(None, "--dev-set", help="nights with --dev: bench (bench/facts.py in the first person, the default) | everyday (everyday facts asked in other words)."),
          retrieval_only: bool = typer.Option(False, "--retrieval-only", help="locomo: recall@k only (no answer sample, no sleeps)."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Measure the targets (recall, retention, drift, time, swaps under load) and write docs/BENCHMARKS.md."""
    from .bench import QUICK, QUICK_OPTIONS, SUITES, run_suites
    from .progress import StageProgress

    if quick and full:
        raise InputError("bench: --quick and --full exclude each other")
    suite = "all" if full or suite == "full" else suite
    names = list(QUICK) if suite == "quick" else list(SUITES) if suite == "all" else [suite]
    quick = quick or suite == "quick"  # `bench sleep --quick`: the sleep suite in its quick profile
    if quick and any(n not in QUICK_OPTIONS for n in names if n in SUITES):
        raise InputError(f"bench {suite} --quick: only {', '.join(QUICK_OPTIONS)} have a quick profile")
    if any(n not in SUITES for n in names):
        raise InputError(f"bench: unknown suite '{suite}'; use quick, all or one of {', '.join(SUITES)}")
    if data is not None and not data.is_file():
        raise InputError(f"bench --data {data}: no such file")
    options: dict[str, dict] = {"sleep": {"n_facts": facts}} if facts else {}
    sliced = {k: v for k, v in (("data", data), ("offset", offset), ("count", count)) if v}
    for name in ("squad", "locomo"):
        if sliced:
            options[name] = dict(sliced)
    if seeds:
        options.setdefault("squad", {})["seeds"] = seeds
    if retrieval_only:
        options.setdefault("locomo", {})["retrieval_only"] = True
    phrasing = {k: v for k, v in (("seeds", seeds), ("voices", tuple(voice)), ("dev", dev), ("n_facts", facts),
                                  ("test_set", test_set)) if v}
    if test_set is not None:
        from .bench.phrasing_suite import TEST_SETS

        if test_set not in TEST_SETS or dev or "phrasing" not in names:
            raise InputError(f"bench: --test-set goes with the phrasing suite without --dev: use {', '.join(TEST_SETS)}")
    if phrasing:
        options["phrasing"] = phrasing
    if dev_set is not None:
        from .bench.nights_suite import dev_set_facts

        if not dev or "nights" not in names:
            raise InputError("bench: --dev-set goes with --dev and the nights suite")
        dev_set_facts(dev_set)  # a wrong name fails now, not hours into `bench all`
    nightly = {k: v for k, v in (("seeds", seeds), ("nights", nights), ("facts_per_night", facts_per_night), ("dev", dev),
                                 ("dev_set", dev_set)) if v}
    if nightly:
        options["nights"] = nightly
    say = (lambda m: None) if as_json else (lambda m: err.print(m))
    with StageProgress(enabled=not as_json, console=None if as_json else err.real) as prog:
        results = run_suites(names, out_dir, docs=docs if docs and str(docs) not in ("", ".") else None, say=say, progress=prog,
                             options=options or None, quick=quick)
    _emit(as_json, results, lambda: out.print_json(json.dumps({k: v.get("targets", {"seconds": v.get("suite_seconds")})
                                                              for k, v in results.items()}, default=str)))


# -- serving ------------------------------------------------------------------

@app.command()
def serve(backend: Optional[str] = typer.Option(None, "--backend", help="transformers | vllm (default: serve.backend)."),
          host: Optional[str] = typer.Option(None, help="Address to listen on (default: serve.host)."),
          port: Optional[int] = typer.Option(None, help="Port (default: serve.port)."),
          vllm_url: Optional[str] = typer.Option(None, "--vllm-url", help="Attach to a running vLLM server instead of starting one."),
          vllm_arg: list[str] = typer.Option([], "--vllm-arg", help="Extra vLLM server argument, repeatable (e.g. --vllm-arg=--enforce-eager)."),
          no_memory: bool = typer.Option(False, "--no-memory", help="Do not inject memories unless a request asks (use_memory: true)."),
          poll_seconds: Optional[float] = typer.Option(None, "--poll-seconds",
                                                       help="Seconds between registry checks (default: serve.poll_seconds).")) -> None:
    """Serve the current model version over an OpenAI-compatible API (/v1/chat/completions,
    /v1/completions, /v1/models, /health); follows every promotion without downtime. Also the
    dashboard at /ui, and the home's API the CLI then uses (it answers at once, without loading models)."""
    import logging

    from .serving.server import serve_home

    if backend is not None and backend not in ("transformers", "vllm"):
        raise InputError(f"--backend {backend!r}: use transformers or vllm")
    if port is not None and not 1 <= port <= 65535:
        raise InputError(f"--port {port}: must be 1-65535")
    if poll_seconds is not None and not 0 < poll_seconds < math.inf:
        raise InputError("--poll-seconds must be a positive number")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .serving.mcp import open_home
    from .serving.ui import HomeAPI

    h, read_only = open_home(State.home_path)  # the home's writer while it runs (the CLI then comes here)
    if read_only:
        err.print(read_only, highlight=False, soft_wrap=True)
    with h:
        if poll_seconds is None:
            poll_seconds = h.config.serve.poll_seconds
        if vllm_url:
            h.config.serve.vllm_url = vllm_url
        serve_home(h, backend=backend, host=host, port=port, poll_s=poll_seconds, vllm_args=list(vllm_arg),
                   use_memory=False if no_memory else None, api=HomeAPI(h, read_only_reason=read_only),
                   say=lambda msg: err.print(msg, highlight=False, soft_wrap=True))


@app.command("mcp")
def mcp_cmd(transport: str = typer.Option("stdio", "--transport", help="stdio | http (streamable HTTP at /mcp)."),
            host: str = typer.Option("127.0.0.1", help="With --transport http: address to listen on."),
            port: int = typer.Option(8765, min=1, max=65535, help="With --transport http: port."),
            sleep_fn: Optional[str] = typer.Option(None, "--sleep-fn", hidden=True)) -> None:
    """Serve this home over the Model Context Protocol: tools remember, recall, forget, sleep_now,
    status, ask; resources: the latest sleep report and the version history (needs agentsleep[mcp])."""
    import logging

    from .serving.mcp import run as run_mcp

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    run_mcp(State.home_path, transport=transport, host=host, port=port, sleep_fn=sleep_fn,
            say=lambda msg: err.print(msg, highlight=False, soft_wrap=True))


@app.command("serve-homes")
def serve_homes_cmd(homes: list[Path] = typer.Argument(..., help="Agent home directories sharing one base model."),
                    host: Optional[str] = typer.Option(None, help="Address to listen on (default: the homes' serve.host)."),
                    port: Optional[int] = typer.Option(None, min=1, max=65535, help="Port (default: the homes' serve.port)."),
                    max_lora_rank: Optional[int] = typer.Option(None, "--max-lora-rank", min=1, max=512,
                                                                help="Largest composed adapter (default 4 x seed.lora_r)."),
                    vllm_arg: list[str] = typer.Option([], "--vllm-arg", help="Extra vLLM server argument, repeatable."),
                    no_memory: bool = typer.Option(False, "--no-memory", help="Do not inject memories unless a request asks."),
                    poll_seconds: Optional[float] = typer.Option(None, "--poll-seconds",
                                                                 help="Seconds between checks of each registry (default: the homes' serve.poll_seconds).")) -> None:
    """Serve many homes from ONE vLLM server: their shared base model plus each home's sleeps as its
    own LoRA adapter (multi-LoRA). Ask a home with "model": "<home directory name>"."""
    import logging

    from .serving.homes import serve_homes

    if poll_seconds is not None and not 0 < poll_seconds < math.inf:
        raise InputError("--poll-seconds must be a positive number")
    roots = [Path(h).expanduser() for h in homes]
    host = _homes_serve_setting(roots, "host", host)
    port = _homes_serve_setting(roots, "port", port)
    poll_seconds = _homes_serve_setting(roots, "poll_seconds", poll_seconds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    serve_homes(roots, host=host, port=port, poll_s=poll_seconds,
                vllm_args=list(vllm_arg), max_lora_rank=max_lora_rank, use_memory=False if no_memory else None,
                say=lambda msg: err.print(msg, highlight=False, soft_wrap=True))


def _homes_serve_setting(roots: list[Path], field: str, given: Any) -> Any:
    """A `serve` setting of one server shared by several homes: the option when given, else
    the value the homes' configs agree on."""
    if given is not None:
        return given
    from .config import Config

    seen: dict[Any, list[str]] = {}
    for r in roots:
        seen.setdefault(getattr(Config.load(r / "config.toml").serve, field), []).append(r.name)
    if len(seen) > 1:
        which = "; ".join(f"{', '.join(names)}: {v}" for v, names in seen.items())
        raise InputError(f"serve-homes: the homes set different serve.{field} ({which}); pass --{field.replace('_', '-')}")
    return next(iter(seen))


# -- daemon -------------------------------------------------------------------

def load_daemon():
    """The agentsleep.daemon package (the repo's daemon/ folder), imported on demand."""
    import agentsleep.daemon as mod

    return mod


def _daemon_exit(code: int) -> None:
    # SystemExit, not typer.Exit: main() runs the app with standalone_mode=False,
    # where click turns typer.Exit into a return value and the code would be lost.
    if code:
        raise SystemExit(code)


daemon_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Consolidation daemon: put homes to sleep on schedule (cron, threshold, idle, on demand).")
_HOMES_ARG = typer.Argument(None, help="Agent homes to look after (default: --home / $AGENTSLEEP_HOME).",
                            show_default=False)


def _daemon_homes(homes: Optional[list[Path]]) -> list[Path]:
    from .home import default_home

    return [Path(h).expanduser().resolve() for h in (homes or [State.home_path or default_home()])]


@daemon_app.command("run")
def daemon_run(homes: Optional[list[Path]] = _HOMES_ARG,
               grace: float = typer.Option(30.0, min=0.1, help="Seconds a running sleep gets to abort after SIGTERM before it is killed."),
               heartbeat: float = typer.Option(10.0, min=0.05, help="Seconds between status.json updates."),
               poll: float = typer.Option(1.0, min=0.05, help="Seconds between checks for on-demand requests."),
               quiet: bool = typer.Option(False, "--quiet", help="Log only to <home>/logs/daemon.log, not to stderr."),
               max_concurrent: int = typer.Option(1, "--max-concurrent", min=0,
                                                  help="Sleeps at once across homes (0 = no limit); the rest queue in order."),
               sleep_fn: Optional[str] = typer.Option(None, "--sleep-fn", hidden=True,
                                                      help="module:function the worker calls instead of Home.sleep."),
               in_process: bool = typer.Option(False, "--in-process", hidden=True,
                                               help="Run sleeps in the daemon process instead of a worker process.")) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT (systemd, containers, a terminal)."""
    import logging

    d = load_daemon()
    if not quiet:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("agentsleep.daemon").addHandler(h)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if in_process:
        fn = d.load_target(sleep_fn) if sleep_fn else d.inprocess_sleep
    else:
        fn = d.SubprocessSleep(target=sleep_fn)
    daemon = d.Daemon(_daemon_homes(homes), sleep_fn=fn, grace_s=grace, heartbeat_s=heartbeat, request_poll_s=poll,
                      max_concurrent=max_concurrent or None)
    _daemon_exit(daemon.run_forever())


@daemon_app.command("start")
def daemon_start(homes: Optional[list[Path]] = _HOMES_ARG,
                 grace: float = typer.Option(30.0, min=0.1, help="See `daemon run --grace`."),
                 max_concurrent: int = typer.Option(1, "--max-concurrent", min=0, help="See `daemon run --max-concurrent`."),
                 wait: float = typer.Option(60.0, help="Seconds to wait for the daemon to come up."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Start the daemon in the background (logs: <home>/logs/daemon.log)."""
    import subprocess

    d = load_daemon()
    roots = _daemon_homes(homes)
    if not 0 < wait < math.inf:
        raise InputError(f"daemon start: --wait must be more than 0 seconds, got {wait:g}")
    running = {}
    for r in roots:
        if not r.is_dir():
            raise InputError(f"daemon start: home {r} does not exist; run `agentsleep init --home {r}` first")
        info = d.daemon_info(r)
        if info is not None:
            running[r] = info.get("pid")
    if running and len(running) < len(roots):  # one daemon per home: the others would be left without one
        raise InputError("daemon start: a daemon already runs for "
                         + ", ".join(f"{r} (pid {pid})" for r, pid in running.items())
                         + f"; start one for the others alone: `agentsleep daemon start "
                         + " ".join(str(r) for r in roots if r not in running) + "`")
    if running:
        r, pid = next(iter(running.items()))
        _emit(as_json, {"started": False, "already_running": True, "pid": pid, "home": str(r),
                        "homes": [str(x) for x in roots]},
              lambda: out.print(f"a daemon (pid {pid}) already runs for {', '.join(map(str, roots))}"))
        return
    console_log = roots[0] / "logs" / "daemon-console.log"
    console_log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agentsleep.cli", "daemon", "run", *map(str, roots), "--grace", str(grace),
           "--max-concurrent", str(max_concurrent), "--quiet"]
    with open(console_log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = console_log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise InputError(f"daemon start: the daemon exited at once (code {proc.returncode}): "
                             + (" | ".join(tail) or f"see {console_log}"))
        ready = all((d.daemon_info(r) or {}).get("pid") == proc.pid
                    and (d.daemon_status(r, count_waiting=False).get("daemon") or {}).get("state") == "running"
                    for r in roots)
        if ready:
            _emit(as_json, {"started": True, "pid": proc.pid, "homes": [str(r) for r in roots]},
                  lambda: out.print(f"daemon started (pid {proc.pid}) for {', '.join(map(str, roots))}; "
                                    f"logs: {roots[0] / 'logs' / 'daemon.log'}"))
            return
        time.sleep(0.2)
    raise InputError(f"daemon start: pid {proc.pid} did not come up within {wait:.0f} s and is still starting "
                     f"in the background; `agentsleep daemon status` shows when it runs, `agentsleep daemon stop` "
                     f"ends it; see {console_log}")


@daemon_app.command("stop")
def daemon_stop(homes: Optional[list[Path]] = _HOMES_ARG,
                timeout: float = typer.Option(90.0, help="Seconds to wait for it to exit."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Stop the daemon (SIGTERM: a running sleep aborts its stage; the current version keeps serving)."""
    d = load_daemon()
    res = [d.stop_daemon(r, timeout=timeout) for r in _daemon_homes(homes)]

    def human() -> None:
        for x in res:
            msg = ("stopped daemon pid {pid}" if x["stopped"] and x["was_running"] else
                   "no daemon was running" if not x["was_running"] else x.get("error", "not stopped")).format(**x)
            out.print(f"{x['home']}: {msg}")
    _emit(as_json, res if len(res) > 1 else res[0], human)
    if any(x["was_running"] and not x["stopped"] for x in res):
        _daemon_exit(1)


@daemon_app.command("status")
def daemon_status_cmd(homes: Optional[list[Path]] = _HOMES_ARG, as_json: bool = typer.Option(False, "--json")) -> None:
    """Next run times, the running sleep, what waits, the last sleep, health.
    Exit code: 0 healthy, 1 running but unhealthy, 3 not running."""
    d = load_daemon()
    res = [d.daemon_status(r) for r in _daemon_homes(homes)]

    def human() -> None:
        for s in res:
            dm = s.get("daemon") or {}
            t = Table(show_header=False, title=s["home"])
            t.add_row("daemon", f"pid {dm.get('pid')} {dm.get('state')}" if dm.get("alive") else "not running")
            tr = s.get("triggers") or {}
            if tr:
                t.add_row("cron", f"{tr.get('cron') or 'off'}  next {tr.get('next_cron') or '-'}")
                t.add_row("threshold", str(tr.get("threshold_episodes") or "off"))
                t.add_row("idle minutes", str(tr.get("idle_minutes") or "off"))
            run = s.get("running")
            t.add_row("running", f"{run['reason']} stage {run.get('stage') or '?'} (pid {run.get('pid')})" if run else "-")
            w = s.get("waiting") or {}
            t.add_row("waiting", f"{w.get('episodes', '?')} episodes, {w.get('requests', 0)} requests")
            ls = s.get("last_sleep")
            t.add_row("last sleep", f"{ls.get('status')} {ls.get('sleep_id') or ''} -> {ls.get('version') or '-'}" if ls else "never")
            h = s["health"]
            t.add_row("health", "ok" if h["ok"] else "; ".join(h["problems"]))
            out.print(t)
    _emit(as_json, res if len(res) > 1 else res[0], human)
    if not all(s["health"]["ok"] for s in res):
        _daemon_exit(3 if any(not (s.get("daemon") or {}).get("alive") for s in res) else 1)


@daemon_app.command("sleep-worker", hidden=True)
def daemon_sleep_worker(result: Path = typer.Option(..., help="Where to write the sleep's summary (JSON)."),
                        reason: str = typer.Option("manual"),
                        max_episodes: Optional[int] = typer.Option(None),
                        sleep_fn: Optional[str] = typer.Option(None, "--sleep-fn"),
                        parent_pid: Optional[int] = typer.Option(None)) -> None:
    """One sleep in this process, for the daemon (internal)."""
    from .home import default_home

    d = load_daemon()
    home = Path(State.home_path or default_home()).expanduser().resolve()
    _daemon_exit(d.worker_main(home, result, reason=reason, max_episodes=max_episodes, sleep_fn=sleep_fn,
                                   parent_pid=parent_pid))


app.add_typer(daemon_app, name="daemon")


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def _quiet_libraries() -> None:
    """Library progress bars and warnings would break the one-line/JSON contract."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")  # (transformers reads the variables above when it is imported: no import here)


def main() -> None:
    t0 = time.time()
    _quiet_libraries()
    try:
        from .quickargs import parse

        quick = parse(app, sys.argv[1:], QUICK_COMMANDS)
        if quick is not None:
            State.home_path, command, kwargs = quick
            command(**kwargs)
            sys.exit(0)
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except AgentsleepError as e:
        err.print(f"[red]error:[/] {plain(e)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print(f"interrupted after {time.time() - t0:.0f} s; nothing was half-written")
        sys.exit(130)
    except BrokenPipeError:  # `agentsleep recall ... --json | head`: the reader left; say nothing more (as typer does)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # click usage errors and the unexpected
        import click

        if isinstance(e, click.ClickException) or (hasattr(e, "show") and hasattr(e, "exit_code")):
            # usage errors (typer may vendor its own click, hence the duck-typing), in one line like the others;
            # a command given no arguments shows its help (typer has printed it already when rich is there)
            if type(e).__name__ == "NoArgsIsHelpError":
                if e.format_message().strip():
                    e.show()
                sys.exit(e.exit_code)
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None and getattr(ctx, "command_path", "") else ""
            msg = e.format_message() if hasattr(e, "format_message") else str(e)
            err.print(f"[red]error:[/] {plain(' '.join(msg.split()))}{plain(where)}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        if os.environ.get("AGENTSLEEP_DEBUG"):
            raise
        err.print(f"[red]internal error:[/] {type(e).__name__}: {plain(str(e).splitlines()[0]) if str(e) else ''} "
                  "(set AGENTSLEEP_DEBUG=1 for a traceback and please report it)", highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
