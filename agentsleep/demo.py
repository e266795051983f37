"""`agentsleep demo`: remember facts, ask closed-book (wrong), sleep, ask again (right)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .bench.facts import SET_A
from .errors import HomeError
from .home import Home
from .progress import StageProgress
from .textmatch import contains_answer

MARKER = ".agentsleep-demo"
DEMO_FACTS = SET_A[:8]


def _demo_home(path: Path | None, fresh: bool) -> Path:
    """The demo's own home: made by the demo (marked so), wiped and made again unless `fresh` is False. A
    folder the demo did not make is never written to, let alone wiped: a real home keeps its memories and
    its model out of the demo's facts."""
    root = (path or Path("~/.agentsleep/demo")).expanduser()
    made_here = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    if not made_here and not (root / MARKER).exists():
        raise HomeError(f"demo: {root} was not made by the demo; it is left untouched (the demo would "
                        "remember its facts there and train them into its model); pass another --home, or "
                        "leave --home out for ~/.agentsleep/demo")
    if fresh and not made_here:
        shutil.rmtree(root)
    Home.init(root)
    (root / MARKER).write_text("created by agentsleep demo; safe to delete\n")
    return root


def _ask_all(home: Home, use_memory: bool) -> list[dict[str, Any]]:
    rows = []
    for f in DEMO_FACTS:
        r = home.ask(f.question, use_memory=use_memory, max_new_tokens=32)
        rows.append({"question": f.question, "expected": f.answer, "answer": r["answer"],
                     "correct": contains_answer(r["answer"], f.answer), "version": r["model_version"]})
    return rows


def run_demo(path: Path | None = None, *, fresh: bool = True, console: Console | None = None) -> dict[str, Any]:
    say = console.print if console else (lambda *a, **k: None)
    t0 = time.time()
    root = _demo_home(path, fresh)
    with Home.open(root) as home:
        say(f"[bold]1. Awake.[/] Remembering {len(DEMO_FACTS)} facts in {root}")
        for f in DEMO_FACTS:
            home.remember(f.text, kind="fact", source="demo")
            say(f"   + {f.text}")
        say("[bold]2. Closed-book[/] (no retrieval), base model:")
        before = _ask_all(home, use_memory=False)
        _table(console, before)
        say("[bold]3. With retrieval[/] (memories in the prompt):")
        rag = _ask_all(home, use_memory=True)
        _table(console, rag)
        say("[bold]4. Asleep.[/] Dreaming about the facts and consolidating them into the weights...")
        with StageProgress(enabled=console is not None, console=console) as prog:
            report = home.sleep(progress=prog)
        if console:
            report.print(console)
        say("[bold]5. Closed-book again[/], now on the version the sleep produced:")
        after = _ask_all(home, use_memory=False)
        _table(console, after)
    acc = {k: sum(r["correct"] for r in rows) / len(rows) for k, rows in
           (("closed_book_before", before), ("with_retrieval", rag), ("closed_book_after", after))}
    say(f"closed-book accuracy {acc['closed_book_before']:.0%} -> {acc['closed_book_after']:.0%} "
        f"(with retrieval {acc['with_retrieval']:.0%}); sleep {report.status}, {time.time() - t0:.0f} s in all")
    return {"home": str(root), "accuracy": acc, "sleep": report.summary(), "before": before, "with_retrieval": rag,
            "after": after, "duration_s": round(time.time() - t0, 1)}


def _table(console: Console | None, rows: list[dict[str, Any]]) -> None:
    if not console:
        return
    from rich.markup import escape

    t = Table("question", "answer", "ok", "version")
    for r in rows:  # the model's answer is shown as written, never read as markup
        t.add_row(escape(r["question"]), escape(r["answer"][:60]), "[green]yes[/]" if r["correct"] else "[red]no[/]",
                  r["version"])
    console.print(t)
