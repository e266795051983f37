"""Each sleep's record on disk, and recovery after a sleeper died.

``<home>/sleeps/<sleep_id>/`` holds ``journal.json`` (kept up to date while the
sleep runs: status, the stage being run, each stage's lap time and peak RSS),
``dreams.jsonl`` and, when the sleep ends, ``report.json`` and ``report.html``. This module is the
only writer of those files, for the pipeline and the daemon alike.

A journal still saying ``running`` whose process is gone belongs to a sleep
that was killed (kill -9, OOM, power loss). `recover` makes such a home
consistent again:

* the journal is marked ``interrupted`` (with the stage it died in) and a
  report saying so is written, so `status` and `history` tell the truth;
* half-written model versions in ``registry/staging`` are removed. The
  registry flips ``CURRENT`` only after a version is complete, so the version
  that served before the crash keeps serving;
* locks need no work: ``sleep.lock`` and the store's ``writer.lock`` are
  flock()-based and the kernel released them when the process died. Recovery
  checks that the sleep lock is free and says who holds it if not.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from ..atomic import atomic_write_json, read_json
from ..models.registry import sweep_staging as _sweep_registry_staging
from ..procs import pid_alive
from .scratch import sweep as sweep_scratch
from .types import Dream, SleepReport, Status


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class Journal:
    """The running record of one sleep. Open it when a sleep starts real work; run each stage
    inside `stage(name)`; end it with `finish(report)`."""

    def __init__(self, home: Path, sleep_id: str, parent_version: str | None = None):
        self.dir = Path(home) / "sleeps" / sleep_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}   # stage -> seconds
        self.peak_mb: dict[str, float] = {}   # stage -> the process's peak RSS when it ended
        self.data: dict[str, Any] = {"sleep_id": sleep_id, "pid": os.getpid(), "started_at": time.time(),
                                     "parent_version": parent_version, "status": Status.RUNNING.value,
                                     "stage": None, "stages": []}
        self._save()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Record that `name` runs; when it returns, its lap time and the peak RSS so far."""
        self.data["stage"] = name
        self.data["stages"].append({"stage": name, "at": time.time()})
        self._save()
        t0 = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - t0, 1)
        self.peak_mb[name] = peak_rss_mb()
        self.data["stages"][-1].update(seconds=self.timings[name], peak_rss_mb=self.peak_mb[name])
        self._save()

    def write_dreams(self, dreams: list[Dream], implications: list[tuple[str, str]] | None = None) -> None:
        """This sleep's dreams, read back by later sleeps to rehearse what it trained, and the implications
        trained as text (implications.jsonl, for people reading what a sleep learned from)."""
        with open(self.dir / "dreams.jsonl", "w", encoding="utf-8") as f:
            for d in dreams:
                f.write(json.dumps(asdict(d)) + "\n")
        if implications is not None:
            with open(self.dir / "implications.jsonl", "w", encoding="utf-8") as f:
                for eid, statement in implications:
                    f.write(json.dumps({"episode_id": eid, "text": statement}) + "\n")

    def finish(self, report: SleepReport | None = None, *, status: Status | None = None, **extra: Any) -> None:
        """Close the journal with `report`'s status (and write the report), or with `status` alone
        when the sleep ends in an error and the caller raises instead of reporting."""
        status = report.status if report is not None else status
        self.data.update(status=Status(status).value, finished_at=time.time(), **extra)
        if report is not None:
            self.data.update(version=report.version, reasons=report.reasons)
        self._save()
        if report is not None:
            write_report(self.dir, report)

    def _save(self) -> None:
        self.data["updated_at"] = time.time()
        atomic_write_json(self.dir / "journal.json", self.data)


def write_report(sleep_dir: Path, report: SleepReport, **extra: Any) -> None:
    """`report.json`: the report, plus `extra` fields (the stage a killed sleep died in)."""
    atomic_write_json(Path(sleep_dir) / "report.json", {**json.loads(report.to_json()), **extra})
    from .report_html import write_html  # report.html for people; a failure to draw is logged, never raised

    write_html(Path(sleep_dir))


def read_dreams(sleep_dir: Path) -> list[Dream]:
    """The dreams a sleep wrote (none if it wrote no file)."""
    f = Path(sleep_dir) / "dreams.jsonl"
    if not f.is_file():
        return []
    return [Dream(**json.loads(line)) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def scrub(home: Path, episode_ids: set[str]) -> list[str]:
    """After `forget`: take the forgotten episodes out of every sleep's record on disk. Their dreams and
    implications leave dreams.jsonl / implications.jsonl, their probes' sample answers leave report.json,
    and report.html is drawn again from what is left. Each file is replaced atomically; what killed sleeps left
    in their scratch folders goes, and so do failed seedings' logs. Call it with the sleep lock held. Returns
    the sleep ids whose records changed."""
    from ..atomic import atomic_write_json, atomic_write_text
    from .report_html import write_html

    sweep_scratch(Path(home))  # a killed sleep's seeding job and expert hold its episodes
    for log in (Path(home) / "sleeps").glob("*/seed-workers-*.log"):
        log.unlink(missing_ok=True)  # a failed seeding's log may quote what it trained on
    changed = []
    for d in sorted((Path(home) / "sleeps").glob("*/")):
        asked: set[str] = set()  # questions about the forgotten episodes (older reports name no episode)
        touched = False
        for name in ("dreams.jsonl", "implications.jsonl"):
            f = d / name
            try:
                lines = f.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            kept = []
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    kept.append(line)
                    continue
                if isinstance(rec, dict) and rec.get("episode_id") in episode_ids:
                    asked.add(str(rec.get("question", "")))
                else:
                    kept.append(line)
            if len(kept) != len(lines):
                atomic_write_text(f, "".join(line + "\n" for line in kept))
                touched = True
        try:
            rep = json.loads((d / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rep = None
        if not isinstance(rep, dict) or not isinstance(rep.get("metrics"), dict):
            rep = None  # not a report this code wrote: nothing of it is read, nor rewritten
        samples = ((rep or {}).get("metrics") or {}).get("sample_answers")
        if isinstance(samples, list):
            left = [x for x in samples if not (isinstance(x, dict) and (x.get("episode_id") in episode_ids
                                                                        or x.get("q") in asked))]
            if len(left) != len(samples):
                rep["metrics"]["sample_answers"] = left
                atomic_write_json(d / "report.json", rep)
                touched = True
        if touched:
            if rep is not None:
                write_html(d)
            changed.append(d.name)
    return changed


# ---- reading journals, and recovery (the daemon, `status`, `recover`) ----

def journals(home: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(path, journal) for every readable sleeps/*/journal.json, oldest sleep id first."""
    try:
        paths = sorted((Path(home) / "sleeps").glob("*/journal.json"))
    except OSError:
        return []
    found = [(p, read_json(p)) for p in paths]
    return [(p, j) for p, j in found if isinstance(j, dict)]


def running_journals(home: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, j) for p, j in journals(home) if j.get("status") == Status.RUNNING]


def _started(j: dict[str, Any]) -> float | None:
    v = j.get("started_at")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        from datetime import datetime

        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(v).timestamp()
    return None


def is_orphaned(j: dict[str, Any]) -> bool:
    """A journal saying `running` whose process is gone."""
    return j.get("status") == Status.RUNNING and not pid_alive(j.get("pid"), _started(j))


def mark(path: Path, status: Status, **fields: Any) -> dict[str, Any]:
    """Set a journal's status (keeping its other fields); returns the new journal."""
    status = Status(status)
    j = read_json(path) or {}
    prev = j.get("status")
    j.update(fields)
    j["status"] = status.value
    j.setdefault("previous_status", prev)
    j[f"{status.value}_at"] = time.time()
    atomic_write_json(path, j)
    return j


def serving_version(home: Path) -> str | None:
    try:
        return (Path(home) / "registry" / "CURRENT").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _report_ended(journal_path: Path, j: dict[str, Any], why: str) -> None:
    """The report of a sleep that ended without writing its own (killed, or stopped by the daemon)."""
    if (journal_path.parent / "report.json").exists():
        return
    serving = serving_version(journal_path.parent.parent.parent)
    now = time.time()
    started = _started(j) or now
    status = j.get("status", Status.INTERRUPTED)
    report = SleepReport(sleep_id=j.get("sleep_id") or journal_path.parent.name, status=Status(status),
                         version=serving, parent_version=j.get("parent_version") or serving or "", episodes=[],
                         reasons=[why], duration_s=max(0.0, now - started), started_at=started, finished_at=now)
    write_report(journal_path.parent, report, stage=j.get("stage"))


def sweep_staging(home: Path, *, own_pid: int | None = None) -> int:
    """Remove registry staging dirs of dead writers (and of `own_pid`, when aborting)."""
    return _sweep_registry_staging(Path(home) / "registry" / "staging", own_pid=own_pid)


def lock_holder(home: Path) -> str | None:
    """None when <home>/sleep.lock is free; otherwise who holds it (from sleep.json)."""
    lock = FileLock(str(Path(home) / "sleep.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        info = read_json(Path(home) / "sleep.json") or {}
        return f"pid {info.get('pid', '?')} ({info.get('what', 'sleep')})"
    except OSError:
        return None
    lock.release()
    return None


def recover(home: Path) -> dict[str, Any]:
    """Make `home` consistent after a crashed sleep; returns what was done (see module doc)."""
    from ..errors import SleepLockedError
    from .lock import sleep_lock

    home = Path(home)
    done: dict[str, Any] = {"home": str(home), "at": time.time(), "interrupted": [], "staging_swept": 0, "scratch_swept": 0,
                            "serving": serving_version(home), "lock": None}
    try:
        # Under the sleep lock: a live sleep holds it, wherever it runs. A process id says nothing about a
        # sleeper in another container sharing the home (ids are numbered per container), so without the
        # lock a live sleep's journal could be marked interrupted and its staging swept mid-publish.
        with sleep_lock(home, what="recovery"):
            for path, j in running_journals(home):
                if not is_orphaned(j):
                    continue
                why = (f"interrupted: pid {j.get('pid')} died during stage {j.get('stage') or '?'}; "
                       f"partial work discarded, {done['serving'] or 'the previous version'} still serving")
                j = mark(path, Status.INTERRUPTED, recovered_by=os.getpid(), reason=why)
                _report_ended(path, j, why)
                done["interrupted"].append({"sleep_id": j.get("sleep_id") or path.parent.name, "pid": j.get("pid"),
                                            "stage": j.get("stage"), "started_at": j.get("started_at")})
            done["staging_swept"] = sweep_staging(home)
            done["scratch_swept"] = len(sweep_scratch(home))  # a killed sleep's job and expert hold its episodes
    except SleepLockedError:
        pass  # a sleep is running: nothing of it is touched; the next recovery sees what it left
    done["lock"] = lock_holder(home)
    return done


def abort_own(home: Path, pid: int | None = None, why: str = "aborted", status: Status = Status.ABORTED) -> list[str]:
    """Called by a sleeper that stops early: mark its journals still `running` as `status`
    (aborted | failed), drop its staging dirs. The previous version keeps serving."""
    pid = os.getpid() if pid is None else pid
    ids = []
    for path, j in running_journals(home):
        if j.get("pid") == pid:
            j = mark(path, status, reason=why)
            _report_ended(path, j, why)
            ids.append(j.get("sleep_id") or path.parent.name)
    sweep_staging(home, own_pid=pid)
    return ids
