"""Where the learned dream writer lives, and its life cycle outside training (no torch here: `forget`
and the CLI use it). ReST-EM (sleep/rest.py) fits an improved writer during a sleep; it waits beside the
current one and replaces it only when the sleep is promoted."""
from __future__ import annotations

import shutil
from pathlib import Path


def writer_adapter_dir(home_root: Path) -> Path:
    """The dream writer every sleep starts from."""
    return home_root / "registry" / "writer"


def pending_writer_dir(home_root: Path) -> Path:
    """This sleep's improved writer, until the gate has spoken."""
    return home_root / "registry" / "writer.next"


def settle_writer(home_root: Path, promoted: bool) -> bool:
    """Adopt the pending writer when the sleep was promoted, else drop it; True if one was adopted."""
    pending, current = pending_writer_dir(home_root), writer_adapter_dir(home_root)
    _restore_cut_short(current)
    if not (pending / "adapter_config.json").is_file():
        shutil.rmtree(pending, ignore_errors=True)
        return False
    if not promoted:
        shutil.rmtree(pending, ignore_errors=True)
        return False
    _replace_dir(pending, current)
    return True


def forget_writer(home_root: Path) -> bool:
    """Drop the learned dream writer, and a pending one: it was fitted on dreams of the notes, so it could
    write a forgotten one back into later dreams. Sleeps then start from the plain model's writing again.
    True if there was one."""
    had = False
    for d in (writer_adapter_dir(home_root), pending_writer_dir(home_root)):
        had |= d.exists()
        for leftover in (d, d.with_name(d.name + ".old"), d.with_name(d.name + ".tmp")):
            shutil.rmtree(leftover, ignore_errors=True)
    return had


def _restore_cut_short(current: Path) -> None:
    """A kill inside `_replace_dir`, between its two renames, leaves no writer but `writer.old`: put it back
    (the learned writer would otherwise be lost without a word)."""
    old = current.with_name(current.name + ".old")
    if not current.exists() and (old / "adapter_config.json").is_file():
        old.rename(current)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing it; a crash leaves the old `dst` or the new one (or `dst`.old)."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
