"""Atomic file writes: readers see the old file or the new one, never half of either."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, data: str, mode: int | None = None) -> None:
    """Write a temp file beside `path` (permissions `mode` when given), fsync it, rename it into place,
    fsync the directory. A failed write leaves no temp file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # make the rename itself durable


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (renames, new files) durable; a no-op where directories
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> int:
    """fsync every file under `root`, then its directories: written files are on disk before a pointer
    (a rename, `CURRENT`) makes them visible, so a power cut cannot publish empty weight files. The
    number of files synced."""
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
            n += 1
        fsync_dir(Path(dirpath))
    return n


def atomic_write_json(path: Path, data: Any, mode: int | None = None) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str), mode)


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable (a reader never needs more)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
