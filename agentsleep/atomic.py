"""Atomic file writes: readers see the old file or the new one, never half of either."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, data: str) -> None:
    """Write a temp file beside `path`, fsync it, rename it into place, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable (a reader never needs more)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
