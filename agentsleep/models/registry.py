"""The model registry of one home: immutable versions and an atomic `CURRENT` pointer.

Layout (under ``<home>/registry``)::

    versions/v0000/manifest.json     the base model (a reference, no weights)
    versions/v0001/                  adapter/ + delta.json + config + tokenizer + manifest.json (a delta)
    versions/v0100/                  the same plus merged safetensors (a snapshot, every snapshot_every)
    staging/<tmp>/                   a version being written (never read)
    cache/<name>/                    a delta version's rebuilt weights (derived, may be deleted)
    CURRENT                          "v0001\n", replaced atomically

Why this is crash-safe: a version is written entirely inside ``staging/``,
its manifest last, then renamed into ``versions/`` (one atomic rename), and
only then does ``CURRENT`` flip (write a temp file, fsync, ``os.replace``).
A crash at any point leaves either the old pointer or the new complete
version. Leftover staging directories are swept on open. Delta versions
(models/deltas.py) are rebuilt into ``cache/`` on first load, checked against
the digest in their manifest; versions written before deltas hold full weights
and load as they always did.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text, fsync_dir, fsync_tree
from ..errors import RegistryError
from ..procs import pid_alive

BASE_VERSION = "v0000"
LAST = "LAST"  # the highest version name ever published, kept when versions are deleted
_NAME = re.compile(r"^v\d{4,}$")


@dataclass
class Version:
    """One immutable model version. `weights` is the directory to load."""

    name: str
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    registry_base: str | None = field(default=None, repr=False, compare=False)  # what v0000 stands for

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def weights(self) -> str:
        """A loadable model: this directory, the configured base for v0000, or for a delta version
        its rebuilt weights in the registry's cache (built on first use, checked against the manifest)."""
        if self.manifest.get("storage") == "delta":
            from .deltas import materialise

            return str(materialise(self.name, self.path, self.manifest, self.registry_base))
        return self.manifest.get("base_model") or str(self.path)

    @property
    def is_delta(self) -> bool:
        return self.manifest.get("storage") == "delta"

    @property
    def is_base(self) -> bool:
        return self.name == BASE_VERSION


class Registry:
    def __init__(self, root: Path, base_model: str, snapshot_every: int = 100):
        """`base_model` is what v0000 stands for (the resolved config.model.base); a published version
        stores full weights when it would otherwise be the `snapshot_every`-th delta in a row."""
        self.root = root
        self.base_model = base_model
        self.snapshot_every = snapshot_every
        self.versions_dir = root / "versions"
        self.staging_dir = root / "staging"
        try:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            self.staging_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"registry {root}: cannot create ({e.strerror}); check permissions or pass another --home") from None
        base = self.versions_dir / BASE_VERSION
        if not (base / "manifest.json").exists():
            stage = self.staging_dir / f"{BASE_VERSION}-{uuid.uuid4().hex[:8]}"
            stage.mkdir()
            atomic_write_text(stage / "manifest.json", json.dumps(
                {"version": BASE_VERSION, "parent": None, "base_model": base_model,
                 "created_at": time.time(), "kind": "base"}, indent=1))
            try:
                os.rename(stage, base)
            except OSError:  # another process created it first
                shutil.rmtree(stage, ignore_errors=True)
        if not (root / "CURRENT").exists():
            atomic_write_text(root / "CURRENT", BASE_VERSION + "\n")

    # -- reading ----------------------------------------------------------
    def names(self) -> list[str]:
        """Complete versions, oldest first (a version without manifest is not complete)."""
        out = [p.name for p in self.versions_dir.iterdir()
               if _NAME.match(p.name) and (p / "manifest.json").is_file()]
        return sorted(out, key=lambda n: int(n[1:]))

    def get(self, name: str) -> Version:
        if not _NAME.match(name or ""):
            raise RegistryError(f"'{name}' is not a version name (expected e.g. v0003); see `agentsleep history`")
        path = self.versions_dir / name
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"no version {name} in {self.versions_dir}; see `agentsleep history`") from None
        except (OSError, ValueError) as e:
            raise RegistryError(f"version {name}: unreadable manifest ({e})") from None
        if not isinstance(manifest, dict):
            raise RegistryError(f"version {name}: unreadable manifest (a JSON {type(manifest).__name__}, "
                                "not an object)")
        if name == BASE_VERSION:  # v0000 is "the configured base": it follows config model.base
            manifest = {**manifest, "base_model": self.base_model}
        return Version(name, path, manifest, registry_base=self.base_model)

    def current_name(self) -> str:
        try:
            name = (self.root / "CURRENT").read_text(encoding="utf-8").strip()
        except OSError as e:
            raise RegistryError(f"registry {self.root}: cannot read CURRENT ({e.strerror})") from None
        return name

    def current(self) -> Version:
        return self.get(self.current_name())

    def history(self) -> list[Version]:
        return [self.get(n) for n in self.names()]

    def lineage(self, name: str | None = None) -> list[Version]:
        """The chain from the base to `name` (default current), base first."""
        chain, v = [], self.get(name or self.current_name())
        while True:
            chain.append(v)
            if not v.parent:
                return chain[::-1]
            v = self.get(v.parent)

    # -- writing ----------------------------------------------------------
    def new_staging(self) -> Path:
        """A fresh private directory to write a version into."""
        d = self.staging_dir / f"stage-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        return d

    def commit(self, staging: Path, manifest: dict[str, Any], *, make_current: bool = True) -> Version:
        """Write the manifest last, move the staged directory into place, flip CURRENT."""
        name = f"v{self._highest() + 1:04d}"
        manifest = {**manifest, "version": name, "created_at": manifest.get("created_at", time.time())}
        dest = self.versions_dir / name
        try:
            atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=1, default=str))
            fsync_tree(staging)  # the weights are on disk before the rename and CURRENT can point at them
            os.rename(staging, dest)
            fsync_dir(self.versions_dir)
        except OSError as e:
            raise RegistryError(f"registry: cannot publish {name} ({e.strerror}); the current version is unchanged") from None
        if make_current:
            self.set_current(name)
        return Version(name, dest, manifest, registry_base=self.base_model)

    def _highest(self) -> int:
        """The highest version number ever published: on disk, or deleted (`LAST`). A name is never given
        twice: the ledger's answers, serving and caches take a name to mean one set of weights."""
        names = self.names()
        try:
            last = int((self.root / LAST).read_text(encoding="utf-8").strip()[1:])
        except (OSError, ValueError):
            last = 0
        return max(int(names[-1][1:]) if names else 0, last)

    def deltas_since_snapshot(self, name: str) -> int:
        """How many delta versions a rebuild of `name` applies (0 for a full version or the base)."""
        n, v = 0, self.get(name)
        while v.is_delta and v.parent:
            n, v = n + 1, self.get(v.parent)
        return n

    def snapshot_due(self, parent: str) -> bool:
        """Whether a version published on `parent` should store full weights (every snapshot_every)."""
        return self.deltas_since_snapshot(parent) + 1 >= self.snapshot_every

    def materialise(self, name: str) -> Path:
        """Rebuild `name`'s weights now (checked against its manifest); its directory."""
        return Path(self.get(name).weights)

    def snapshot(self, name: str) -> Version:
        """Store delta version `name`'s merged weights in its own directory (on demand), so rebuilds of it
        and its descendants start there. The weights are written first and the manifest last, so a crash
        leaves a delta version with spare files, which loads as before."""
        from .deltas import copy_model_files, digest, load_state
        from .embedded import checksum_dir

        v = self.get(name)
        if not v.is_delta:
            return v
        src = self.materialise(name)
        sd = load_state(src)
        if digest(sd) != v.manifest.get("weights_sha256"):
            raise RegistryError(f"version {name}: its cached weights do not match its manifest; not snapshotted")
        tmp = v.path / f".snapshot-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for f in src.glob("*.safetensors"):
                shutil.copy2(f, tmp / f.name)
            copy_model_files(src, tmp)
            fsync_tree(tmp)
            for f in tmp.iterdir():
                os.replace(f, v.path / f.name)
            fsync_dir(v.path)
        except OSError as e:
            raise RegistryError(f"version {name}: cannot store its weights ({e.strerror}); it stays a delta") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest = dict(v.manifest)
        manifest.update(storage="full", checksums={k: x["sha256"] for k, x in checksum_dir(v.path).items()
                                                   if k != "manifest.json"})
        atomic_write_text(v.path / "manifest.json", json.dumps(manifest, indent=1, default=str))
        return self.get(name)

    def set_current(self, name: str) -> Version:
        v = self.get(name)  # validates it exists and is complete
        atomic_write_text(self.root / "CURRENT", name + "\n")
        return v

    def sweep_staging(self) -> int:
        """Remove staging dirs left by crashed writers (not our own live ones), and deletions a kill cut short."""
        sweep_trash(self.versions_dir)
        return sweep_staging(self.staging_dir)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the `keep` newest versions; never the base, current, or its lineage, nor a
        version a kept delta version is rebuilt from."""
        if keep <= 0:
            return []
        protected = {v.name for v in self.lineage()} | {BASE_VERSION}
        names = [n for n in self.names() if n not in protected]
        kept = (set(names[-keep:]) if names else set()) | protected
        present = set(self.names())
        for n in list(kept):  # every kept version keeps its history: lineage, diff, rollback and rebuilds read it
            v = self.get(n)
            while v.parent and v.parent not in kept and v.parent in present:  # (an older prune may have cut it)
                kept.add(v.parent)
                v = self.get(v.parent)
        return self._delete([n for n in names if n not in kept])

    def holding(self, episode_ids: set[str]) -> list[str]:
        """Versions whose weights hold any of `episode_ids`: one that consolidated (or rehearsed) one of
        them, and every version built on such a one. Their descendants are among them, so deleting them
        all never cuts a clean version's history."""
        held: set[str] = set()
        for n in self.names():  # a parent is always older than its children
            try:
                m = self.get(n).manifest
            except RegistryError:  # unreadable: `history` reports it; it cannot be served either
                continue
            if m.get("parent") in held or not episode_ids.isdisjoint(
                    list(m.get("episode_ids") or []) + list(m.get("replay_ids") or [])):
                held.add(n)
        return sorted(held, key=lambda n: int(n[1:]))

    def erase_holding(self, episode_ids: set[str], keep: set[str] | frozenset[str] = frozenset(),
                      held: list[str] | None = None) -> list[str]:
        """Delete for good the versions whose weights hold a forgotten episode (`holding`), their manifests
        (which quote its probes) and cached weights; not the base, `keep`, nor the serving version's
        lineage, which a rebuild replaces first (then this runs again). `held`: `holding(episode_ids)` when the
        caller has read it already. Returns the names deleted."""
        if not episode_ids:
            return []
        kept = {BASE_VERSION}
        present = set(self.names())
        for name in {self.current_name(), *keep}:
            if name not in present:
                continue
            try:
                kept |= {v.name for v in self.lineage(name)}  # with its history: a delta is rebuilt from it
            except RegistryError:  # a history that cannot be read cannot be protected: delete nothing now
                return []
        held = self.holding(episode_ids) if held is None else held
        return self._delete([n for n in held if n not in kept])

    def _delete(self, doomed: list[str]) -> list[str]:
        """Newest first: a kill midway leaves older versions, which `holding` still finds through their own
        manifests, never a child whose parent is gone."""
        if doomed:
            atomic_write_text(self.root / LAST, f"v{self._highest():04d}\n")
        for n in sorted(doomed, key=lambda n: int(n[1:]), reverse=True):
            remove_dir(self.versions_dir / n)
            # its merged weights (complete or not) and its answers to the generic prompts: they hold it too
            remove_dir(self.root / "cache" / n)
            (self.root / "cache" / f"{n}-generic.json").unlink(missing_ok=True)
        if doomed:
            from .deltas import evict

            evict(self.root, drop=set(doomed))
        return doomed


def remove_dir(path: Path) -> None:
    """Delete a version or cache directory so that a kill midway never leaves a half-deleted one that still
    looks complete: one rename out of sight first (atomic), then the delete; `sweep_trash` finishes any
    left behind."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def sweep_trash(folder: Path) -> None:
    for p in folder.glob(".trash-*"):
        shutil.rmtree(p, ignore_errors=True)


def sweep_staging(staging: Path, *, own_pid: int | None = None, unnamed_after_s: float = 3600.0) -> int:
    """Remove the staging dirs of dead writers under `staging` (and of `own_pid`, when it aborts).

    A writer names its dir ``stage-<pid>-...``. Unnamed dirs (the base version
    being created) are removed only once older than `unnamed_after_s`: a live
    creator finishes within seconds, and a sleeper that aborts never judges them."""
    n = 0
    try:
        entries = list(staging.iterdir())
    except OSError:
        return 0
    for d in entries:
        m = re.match(r"stage-(\d+)-", d.name)
        if m:
            pid = int(m.group(1))
            if pid != own_pid and pid_alive(pid):
                continue
        elif own_pid is not None:
            continue
        else:
            try:
                if time.time() - d.stat().st_mtime < unnamed_after_s:
                    continue
            except OSError:
                continue
        shutil.rmtree(d, ignore_errors=True)
        n += 1
    return n
