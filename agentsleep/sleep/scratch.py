"""The sleep's scratch folder. What carries the night's episodes on its way (the seeding workers' job, the
gate's trained expert) is written in the sleep's own folder inside the home (`sleeps/<id>/scratch`), never
in the system temp folder: a sleep killed midway then leaves nothing of its episodes outside the home, and
the next sleep, a forget and a purge remove what it left."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

_DIR: ContextVar[Path | None] = ContextVar("agentsleep_sleep_scratch", default=None)


@contextlib.contextmanager
def in_folder(folder: Path) -> Iterator[Path]:
    """Temporary files of this sleep (this thread and context) go to `folder`, removed at the end."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = _DIR.set(folder)
    try:
        yield folder
    finally:
        _DIR.reset(token)
        shutil.rmtree(folder, ignore_errors=True)


def folder() -> Path | None:
    """The running sleep's scratch folder (None outside a sleep: the system temp folder is used)."""
    return _DIR.get()


def temporary_directory(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix, dir=_DIR.get())


def sweep(home: Path) -> list[Path]:
    """Remove what sleeps killed midway left in their scratch folders (call with the sleep lock held)."""
    gone = sorted((Path(home) / "sleeps").glob("*/scratch"))
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone
