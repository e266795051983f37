"""Progress for long work: one bar per sleep stage (rich), or silence.

The pipeline calls `progress(stage, done, total, note)`; any callable with that
signature works (the daemon logs instead of drawing bars).
"""
from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress(Protocol):
    """What long work reports to: `progress("seed", 12, 72, "loss 1.234")`. Pass `silent` for nothing."""

    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None: ...


class StageProgress:
    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self._p = RichProgress(TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                           console=console or Console(stderr=True), transient=False) if enabled else None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "StageProgress":
        if self._p:
            self._p.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p:
            self._p.stop()

    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None:
        if not self._p:
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._p.add_task(stage, total=max(total, 1), note=note)
        self._p.update(self._tasks[stage], completed=done, total=max(total, 1), note=note)


def silent(stage: str, done: int, total: int, note: str = "") -> None:
    """A progress callback that does nothing."""
