"""How the daemon runs one sleep.

A *sleep callable* takes a :class:`SleepJob` and returns the sleep's summary
(a dict with at least ``"status"``). Two are provided:

* :func:`inprocess_sleep` - ``Home.open(home, writable=False).sleep(...)`` in
  the calling thread.
* :class:`SubprocessSleep` (the daemon's default) - the same ``Home.sleep``
  in a child process (``agentsleep daemon sleep-worker``). The daemon stays
  small between sleeps (torch and the model live only in the child), every
  sleep sees a fresh view of the episode store, and a stop request is always
  bounded: SIGTERM asks the child to abort at the next progress tick, SIGKILL
  follows after ``grace_s`` and recovery cleans up after it.

Both honour ``job.cancel``: the ``progress`` callback handed to the pipeline
raises :class:`SleepAborted` once cancel is set, which aborts the running
stage; the journal is then marked ``aborted`` and this sleeper's staging
directory is removed (the previous version keeps serving).
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agentsleep.atomic import atomic_write_json, read_json
from agentsleep.sleep.journal import abort_own, recover, running_journals
from agentsleep.sleep.types import Status

log = logging.getLogger("agentsleep.daemon")

EXIT_OK, EXIT_FAILED, EXIT_BUSY, EXIT_ABORTED = 0, 1, 3, 4


class SleepAborted(KeyboardInterrupt):
    """Raised from ``progress()`` when the sleep must stop (daemon shutting down).

    A KeyboardInterrupt subclass so pipeline code that cleans up after Ctrl-C
    (and lets other exceptions become a "failed" report) treats it the same.
    """


@dataclass
class SleepJob:
    """One sleep the daemon asked for."""

    home: Path
    reason: str                              # cron | cron-catchup | threshold | idle | on-demand | manual
    max_episodes: int | None = None
    request_ids: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    grace_s: float = 30.0
    started_at: float = field(default_factory=time.time)
    pid: int | None = None                   # the process doing the work
    stage: str | None = None
    done: int = 0
    total: int = 0
    note: str = ""
    on_progress: Callable[["SleepJob"], None] | None = None
    log: logging.Logger | None = None        # where a worker's output goes

    def progress(self, stage: str, done: int = 0, total: int = 0, note: str = "") -> None:
        """The pipeline's progress callback: records the stage; aborts once cancel is set."""
        self.stage, self.done, self.total, self.note = stage, done, total, note
        if self.on_progress is not None:
            try:
                self.on_progress(self)
            except Exception:  # noqa: BLE001 - progress reporting must never break a sleep
                pass
        if self.cancel.is_set():
            raise SleepAborted(f"sleep aborted during stage {stage}: the daemon is stopping")

    def public(self) -> dict[str, Any]:
        sleep_id = None
        for _, j in running_journals(self.home):
            if self.pid is not None and j.get("pid") == self.pid:
                sleep_id = j.get("sleep_id")
                self.stage = self.stage or j.get("stage")
        return {"reason": self.reason, "started_at": self.started_at, "pid": self.pid, "sleep_id": sleep_id,
                "stage": self.stage, "done": self.done, "total": self.total, "note": self.note,
                "max_episodes": self.max_episodes, "requests": list(self.request_ids),
                "stopping": self.cancel.is_set()}


SleepFn = Callable[[SleepJob], dict]


def _summary(report: Any) -> dict[str, Any]:
    if isinstance(report, dict):
        return report
    if hasattr(report, "summary"):
        return report.summary()
    return {"status": getattr(report, "status", "unknown")}


def inprocess_sleep(job: SleepJob) -> dict[str, Any]:
    """``Home.sleep`` in this process (read-only store: the sleep only reads episodes)."""
    from ..home import Home

    job.pid = os.getpid()
    home = Home.open(job.home, writable=False, create=False)
    try:
        return _summary(home.sleep(max_episodes=job.max_episodes, progress=job.progress))
    finally:
        home.close()


def load_target(spec: str) -> SleepFn:
    """'package.module:function' -> the function (for custom sleepers and tests)."""
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ValueError(f"sleep function {spec!r}: expected 'module:function'")
    fn = getattr(importlib.import_module(mod), attr)
    if not callable(fn):
        raise ValueError(f"sleep function {spec!r} is not callable")
    return fn


class SubprocessSleep:
    """Run the sleep in a child process; SIGTERM on cancel, SIGKILL after `job.grace_s`."""

    def __init__(self, target: str | None = None, python: str = sys.executable,
                 env: dict[str, str] | None = None, poll_s: float = 0.1):
        self.target = target          # 'module:function' the worker calls instead of Home.sleep
        self.python = python
        self.env = env
        self.poll_s = poll_s

    def command(self, job: SleepJob, result: Path) -> list[str]:
        cmd = [self.python, "-m", "agentsleep.cli", "--home", str(job.home), "daemon", "sleep-worker",
               "--result", str(result), "--reason", job.reason, "--parent-pid", str(os.getpid())]
        if job.max_episodes:
            cmd += ["--max-episodes", str(job.max_episodes)]
        if self.target:
            cmd += ["--sleep-fn", self.target]
        return cmd

    def __call__(self, job: SleepJob) -> dict[str, Any]:
        ddir = job.home / "daemon"
        ddir.mkdir(parents=True, exist_ok=True)
        result = ddir / f"result-{uuid.uuid4().hex[:8]}.json"
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(self.command(job, result), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, errors="replace")
        job.pid = proc.pid
        wlog = job.log or logging.getLogger(f"agentsleep.daemon.worker.{job.home.name}")
        reader = threading.Thread(target=_pump, args=(proc, wlog, job), daemon=True, name=f"worker-log-{proc.pid}")
        reader.start()
        term_at: float | None = None
        killed = False
        while proc.poll() is None:
            if job.cancel.is_set() and term_at is None:
                term_at = time.monotonic()
                _signal(proc, signal.SIGTERM)
            if term_at is not None and not killed and time.monotonic() - term_at > job.grace_s:
                log.warning("sleep worker pid %s did not stop within %.0f s of SIGTERM: killing it", proc.pid, job.grace_s)
                _signal(proc, signal.SIGKILL)
                killed = True
            time.sleep(self.poll_s)
        reader.join(timeout=2)
        res = read_json(result)
        try:
            result.unlink()
        except OSError:
            pass
        if isinstance(res, dict) and not killed:
            res.setdefault("returncode", proc.returncode)
            return res
        # No result: the worker was killed (by us after the grace period, or by the OS).
        rec = recover(job.home)
        status = "interrupted"
        return {"status": status, "returncode": proc.returncode, "killed": killed,
                "error": f"sleep worker pid {proc.pid} ended without a result (exit {proc.returncode})",
                "recovery": rec}


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


def _pump(proc: subprocess.Popen, wlog: logging.Logger, job: SleepJob) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            wlog.info("%s", line[-2000:])


# -- the worker side (inside `agentsleep daemon sleep-worker`) -------------------

def _set_parent_death_signal() -> None:
    """Linux: get SIGTERM when the daemon dies, so a kill -9'd daemon leaves no orphan sleeping."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _detach_output(home: Path) -> None:
    """Point stdout/stderr at <home>/logs/sleep-worker.log so writes cannot fail with EPIPE."""
    try:
        (home / "logs").mkdir(parents=True, exist_ok=True)
        fd = os.open(home / "logs" / "sleep-worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    except OSError:
        pass


def worker_main(home: Path, result: Path, *, reason: str = "manual", max_episodes: int | None = None,
                sleep_fn: str | None = None, parent_pid: int | None = None) -> int:
    """Run one sleep in this process and write its summary to `result`; returns the exit code."""
    cancel = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        if parent_pid and os.getppid() != parent_pid:
            _detach_output(home)  # the daemon (our stdout pipe's reader) is gone
        cancel.set()  # a sleep that ignores it is SIGKILLed by the daemon after its grace period
        try:
            print(f"sleep worker: got signal {signum}; aborting at the next progress tick", file=sys.stderr, flush=True)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _set_parent_death_signal()
    if parent_pid and os.getppid() != parent_pid:
        cancel.set()  # the daemon died before prctl took effect
    progress_path = home / "daemon" / "progress.json"
    last = [0.0]

    stages: list[str] = []

    def write_progress(job: SleepJob) -> None:
        if job.stage and (not stages or stages[-1] != job.stage):
            stages.append(job.stage)
            try:  # one line per stage, into the daemon's log
                print(f"stage {job.stage}: {job.note}".rstrip(": "), flush=True)
            except OSError:
                pass
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            atomic_write_json(progress_path, {"pid": os.getpid(), "stage": job.stage, "done": job.done,
                                              "total": job.total, "note": job.note, "at": time.time()})

    job = SleepJob(home=home, reason=reason, max_episodes=max_episodes, cancel=cancel, pid=os.getpid(),
                   on_progress=write_progress)
    fn: SleepFn = load_target(sleep_fn) if sleep_fn else inprocess_sleep
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = fn(job)
        except BaseException as e:  # noqa: BLE001 - judged below, in the main thread
            box["exc"] = e

    # The sleep runs in a second thread so that this (main) thread keeps the signal
    # handlers: SIGTERM sets `cancel` in every stage, and the next progress tick of
    # the pipeline raises SleepAborted there (the pipeline only installs its own
    # SIGTERM handler when it runs in the main thread).
    t = threading.Thread(target=target, name="sleep", daemon=True)
    t.start()
    while t.is_alive():
        t.join(timeout=0.2)
    try:
        progress_path.unlink()
    except OSError:
        pass
    out = _judge(home, job, box)
    code = {"aborted": EXIT_ABORTED, "busy": EXIT_BUSY, "failed": EXIT_FAILED}.get(out.get("status"), EXIT_OK)
    atomic_write_json(result, out)
    return code


def _judge(home: Path, job: SleepJob, box: dict[str, Any]) -> dict[str, Any]:
    """The worker's summary from what the sleep returned or raised."""
    from ..errors import AgentsleepError, SleepLockedError

    e = box.get("exc")
    if e is None:
        return _summary(box.get("out"))
    if isinstance(e, SleepLockedError):
        return {"status": "busy", "error": str(e)}
    if isinstance(e, (SleepAborted, KeyboardInterrupt)) or (job.cancel.is_set() and isinstance(e, AgentsleepError)):
        # Aborted on request. The pipeline turns the interrupt into an AgentsleepError
        # after marking its journal and sweeping its staging dir; a sleeper that did
        # not is cleaned up here.
        ids = abort_own(home, why=f"aborted: {e}")
        return {"status": "aborted", "sleep_ids": ids, "stage": job.stage, "error": str(e) or "aborted"}
    if isinstance(e, AgentsleepError):
        ids = abort_own(home, why=f"failed: {e}", status=Status.FAILED)
        return {"status": "failed", "sleep_ids": ids, "error": str(e)}
    import traceback

    traceback.print_exception(type(e), e, e.__traceback__)
    ids = abort_own(home, why=f"failed: {type(e).__name__}: {e}", status=Status.FAILED)
    return {"status": "failed", "sleep_ids": ids, "error": f"{type(e).__name__}: {e}"}


def run_summary_status(summary: dict[str, Any] | None) -> str:
    return (summary or {}).get("status", "unknown")


__all__ = ["SleepAborted", "SleepJob", "SleepFn", "SubprocessSleep", "inprocess_sleep", "worker_main",
           "load_target", "read_json"]
