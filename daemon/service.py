"""The consolidation daemon: APScheduler 3.x putting agent homes to sleep.

Per home (settings in the home's ``[daemon]`` config section):

* **cron** - crontab in local time (default ``0 3 * * *``); a 6-field form
  with seconds first (``*/5 * * * * *``) is accepted too. Runs missed while
  the daemon was down are coalesced into ONE catch-up sleep at start.
* **threshold** - sleep when ``threshold_episodes`` episodes wait.
* **idle** - sleep when episodes wait and none arrived for ``idle_minutes``.
* **on demand** - ``agentsleep sleep-now`` (:func:`request_sleep`) drops a
  request file; the daemon runs it now, or right after the running sleep.

Threshold and idle are checked every ``check_seconds``. After a sleep that did
not promote (rejected, failed, nothing to do) they wait for an episode newer
than that sleep's start, so the same episodes are not retried in a loop; after
a promoted sleep a remaining backlog may trigger the next one at once. Cron
and on-demand always run.

One sleep per home at a time: a per-home in-flight flag here, APScheduler's
``max_instances=1`` + ``coalesce=True`` on every job (an overrunning job is
not started twice), and ``<home>/sleep.lock`` taken by the sleep pipeline
itself, which also keeps the CLI and Python API out while the daemon sleeps.
A trigger that meets a busy home is dropped and counted (``skipped_busy``).

The daemon never opens the episode store writable (Chroma allows one writer
per embedded store; the agent is that writer): it reads to count what waits.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import logging.handlers
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from filelock import FileLock, Timeout

from ..config import Config, DaemonConfig
from ..errors import AgentsleepError, ConfigError, SleepLockedError
from agentsleep.atomic import atomic_write_json, read_json
from agentsleep.sleep.journal import abort_own, lock_holder, recover
from agentsleep.sleep.types import Status
from .requests import daemon_dir, requests_dir
from .runner import SleepAborted, SleepFn, SleepJob, SubprocessSleep

log = logging.getLogger("agentsleep.daemon")

LOG_MAX_BYTES = 5_000_000
LOG_BACKUPS = 5
LOCK_WAIT_S = 2.0  # how long a starting daemon waits for its home's lock: longer than any probe holds it


class DaemonAlreadyRunning(AgentsleepError):
    """Another daemon already serves this home."""


_DOW = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _crontab_dow(field: str) -> str:
    """Crontab weekdays (0 or 7 = Sunday, 1 = Monday) as APScheduler names.

    APScheduler 3's CronTrigger (and its from_crontab) counts 0 = Monday, so
    "0 3 * * 1" would silently run on Tuesdays; numbers are translated here."""
    if field == "*":
        return field
    out: list[str] = []
    for part in field.split(","):
        rng, _, step = part.partition("/")
        if not any(c.isdigit() for c in rng) and not step:
            out.append(part)  # names (mon-fri) mean the same to both
            continue
        if rng == "*":
            lo, hi = 0, 6
        elif "-" in rng:
            a, b = rng.split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = hi = int(rng)
            if step:
                hi = 6
        if not (0 <= lo <= 7 and 0 <= hi <= 7 and lo <= hi):
            raise ValueError(f"weekday {part!r} out of range 0-7")
        out.extend(_DOW[d] for d in range(lo, hi + 1, int(step) if step else 1))
    return ",".join(dict.fromkeys(out))


def parse_cron(expr: str, tz=None) -> CronTrigger:
    """5-field crontab (min hour dom mon dow, crontab weekday numbers), or 6 fields with seconds first."""
    fields = expr.split()
    try:
        if len(fields) in (5, 6):
            s, m, h, dom, mon, dow = (["0"] if len(fields) == 5 else []) + fields
            return CronTrigger(second=s, minute=m, hour=h, day=dom, month=mon, day_of_week=_crontab_dow(dow),
                               timezone=tz)
    except ValueError as e:
        raise ConfigError(f"daemon.cron {expr!r}: {e}") from None
    raise ConfigError(f"daemon.cron {expr!r}: expected 5 fields (min hour day month weekday), e.g. '0 3 * * *'")


def _local_tz():
    try:
        from tzlocal import get_localzone

        return get_localzone()
    except Exception:  # noqa: BLE001
        return datetime.now().astimezone().tzinfo


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


@dataclass
class _Slot:
    """One home the daemon looks after."""

    root: Path
    cfg: DaemonConfig
    consolidate_untrusted: bool
    log: logging.Logger
    handler: logging.Handler | None = None
    lock: FileLock | None = None
    home: Any = None                 # read-only Home, for probing what waits
    busy: bool = False
    job: SleepJob | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)    # accepted on-demand requests
    auto_mark: float = 0.0           # newest waiting episode when the last sleep started
    last_probe: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    recovered: dict[str, Any] | None = None
    counters: dict[str, int] = field(default_factory=lambda: {
        "sleeps": 0, "promoted": 0, "rejected": 0, "nothing_to_do": 0, "failed": 0, "aborted": 0,
        "skipped_busy": 0, "consecutive_failures": 0})
    fired: dict[str, float] = field(default_factory=dict)        # trigger -> last time it fired
    config_mtime: float | None = None
    prev_state: dict[str, Any] = field(default_factory=dict)     # state.json as the last daemon left it
    tag: str = ""                    # unique logger suffix
    server: Any = None               # the HomeServer kept running when [daemon] serve = true

    @property
    def key(self) -> str:
        return str(self.root)


ProbeFn = Callable[[Path], tuple[int, float | None]]


class _Gate:
    """At most `limit` sleeps at once across homes; the others wait in arrival order."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.running = 0
        self.queue: collections.deque = collections.deque()
        self._cv = threading.Condition()

    def reserve(self, token: Any) -> None:
        """Take a place in the queue (at trigger time, so the order is the order of triggers)."""
        if self.limit:
            with self._cv:
                self.queue.append(token)

    def discard(self, token: Any) -> None:
        """Give up a place that was never used (the sleep was cancelled before it began)."""
        with self._cv:
            if token in self.queue:
                self.queue.remove(token)
                self._cv.notify_all()

    def enter(self, token: Any, cancelled: Callable[[], bool]) -> None:
        if not self.limit:
            return
        with self._cv:
            if token not in self.queue:
                self.queue.append(token)
            try:
                while not (self.queue[0] is token and self.running < self.limit):
                    if cancelled():
                        raise SleepAborted("the daemon stopped while this sleep waited in the queue")
                    self._cv.wait(0.1)
            except BaseException:
                self.queue.remove(token)
                self._cv.notify_all()
                raise
            self.queue.popleft()
            self.running += 1

    def leave(self) -> None:
        if not self.limit:
            return
        with self._cv:
            self.running -= 1
            self._cv.notify_all()


class Daemon:
    """Schedule sleeps for one or more homes. ``start()``/``stop()`` for embedding
    in a program; ``run_forever()`` for ``agentsleep daemon run`` (signals, exit code)."""

    def __init__(self, homes: Iterable[str | Path], *, sleep_fn: SleepFn | None = None,
                 probe_fn: ProbeFn | None = None, grace_s: float = 30.0, request_poll_s: float = 1.0,
                 heartbeat_s: float = 10.0, log_max_bytes: int = LOG_MAX_BYTES, log_backups: int = LOG_BACKUPS,
                 catch_up: bool = True, max_concurrent: int | None = None):
        """`max_concurrent`: at most this many sleeps at once across all homes (None = one per home,
        all at once); the others wait in a first-come queue."""
        roots = []
        for h in homes:
            r = Path(h).expanduser().resolve()
            if r not in roots:
                roots.append(r)
        if not roots:
            raise ConfigError("daemon: no home given")
        self.roots = roots
        self.sleep_fn: SleepFn = sleep_fn or SubprocessSleep()
        self.probe_fn = probe_fn
        self.grace_s = grace_s
        self.request_poll_s = request_poll_s
        self.heartbeat_s = heartbeat_s
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.catch_up = catch_up
        if max_concurrent is not None and max_concurrent < 1:
            raise ConfigError(f"daemon: max_concurrent must be at least 1, got {max_concurrent}")
        self.gate = _Gate(max_concurrent)
        self.tz = _local_tz()
        self.slots: dict[str, _Slot] = {}
        self.state = "new"               # new | running | stopping | stopped
        self.started_at: float | None = None
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._scheduler: BackgroundScheduler | None = None
        self._stop_requested = threading.Event()
        self._seq = 0

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> "Daemon":
        """Take each home's daemon lock, recover crashed sleeps, schedule triggers, start."""
        if self.state != "new":
            raise RuntimeError("a Daemon starts once; create a new one")
        try:
            for root in self.roots:
                self._open_slot(root)
        except BaseException:
            self._release_all()
            raise
        self.started_at = time.time()
        n = len(self.slots)
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=3 + 3 * n)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
            timezone=self.tz)
        self._scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        for slot in self.slots.values():
            self._schedule(slot)
        now = datetime.now(self.tz)
        self._scheduler.add_job(self._poll_requests, IntervalTrigger(seconds=self.request_poll_s, timezone=self.tz),
                                id="requests", name="on-demand requests", next_run_time=now)
        self._scheduler.add_job(self._heartbeat, IntervalTrigger(seconds=self.heartbeat_s, timezone=self.tz),
                                id="heartbeat", name="heartbeat", next_run_time=now)
        self.state = "running"
        self._scheduler.start()
        for slot in self.slots.values():
            self._write_status(slot)
            self._catch_up(slot)
        return self

    def _open_slot(self, root: Path) -> _Slot:
        from ..home import Home

        if not root.is_dir():
            raise ConfigError(f"daemon: home {root} does not exist; run `agentsleep init --home {root}` first")
        home = Home.open(root, writable=False, create=False)
        ddir = daemon_dir(root)
        (ddir / "requests" / "accepted").mkdir(parents=True, exist_ok=True)
        (ddir / "requests" / "done").mkdir(parents=True, exist_ok=True)
        # not timeout=0: `daemon status`, `sleep-now` and the dashboard find a live daemon by taking this lock
        # for a moment (requests.daemon_info); a daemon starting in that moment must wait it out, not give up
        lock = FileLock(str(ddir / "daemon.lock"), timeout=LOCK_WAIT_S)
        try:
            lock.acquire()
        except Timeout:
            info = read_json(ddir / "daemon.json") or {}
            raise DaemonAlreadyRunning(f"home {root}: a daemon (pid {info.get('pid', '?')}) already runs for it; "
                                       "`agentsleep daemon stop` it first") from None
        tag = f"{root.name.replace('.', '_')}-{hashlib.sha1(str(root).encode()).hexdigest()[:6]}"
        slot = _Slot(root=root, cfg=home.config.daemon, consolidate_untrusted=home.config.sleep.consolidate_untrusted,
                     log=logging.getLogger(f"agentsleep.daemon.home.{tag}"), lock=lock, home=home, tag=tag)
        self.slots[slot.key] = slot       # from here on, _release_all() undoes it on failure
        slot.config_mtime = _mtime(root / "config.toml")
        slot.handler = self._add_log_handler(root, tag)
        atomic_write_json(ddir / "daemon.json", {"pid": os.getpid(), "started_at": time.time(),
                                                 "homes": [str(r) for r in self.roots], "state": "starting"})
        st = read_json(ddir / "state.json") or {}
        slot.prev_state = st
        slot.auto_mark = float(st.get("auto_mark") or 0.0)
        slot.last = st.get("last_sleep")
        slot.log.info("daemon pid %s starting for %s", os.getpid(), root)
        # Crash recovery: journals left `running` by a dead process, staging dirs, locks.
        rec = recover(root)
        if rec["interrupted"] or rec["staging_swept"]:
            slot.recovered = rec
            for it in rec["interrupted"]:
                slot.log.warning("recovered interrupted sleep %s (pid %s died during stage %s); %s still serving",
                                 it["sleep_id"], it["pid"], it["stage"], rec["serving"])
            if rec["staging_swept"]:
                slot.log.warning("removed %d half-written model version(s) from registry/staging", rec["staging_swept"])
        self._recover_requests(slot)
        return slot

    def _add_log_handler(self, root: Path, tag: str) -> logging.Handler:
        (root / "logs").mkdir(parents=True, exist_ok=True)
        h = logging.handlers.RotatingFileHandler(root / "logs" / "daemon.log", maxBytes=self.log_max_bytes,
                                                 backupCount=self.log_backups, encoding="utf-8")
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        h.setLevel(logging.INFO)
        # One file per home: its own records, the daemon-wide ones, and scheduler warnings
        # (APScheduler's INFO lines would log every poll).
        h.addFilter(lambda rec: rec.name.endswith(f".{tag}") or rec.name == "agentsleep.daemon"
                    or (rec.name.startswith("apscheduler") and rec.levelno >= logging.WARNING
                        and "maximum number of running instances" not in rec.getMessage()))
        for lg in (logging.getLogger("agentsleep.daemon"), logging.getLogger("apscheduler")):
            lg.addHandler(h)
        dl = logging.getLogger("agentsleep.daemon")
        if dl.level == logging.NOTSET or dl.level > logging.INFO:
            dl.setLevel(logging.INFO)
        return h

    def stop(self) -> bool:
        """Cancel a running sleep (abort at its next progress tick, SIGKILL after grace_s),
        stop the scheduler, release the homes. True when every sleep ended in time."""
        with self._lock:
            if self.state in ("stopping", "stopped", "new"):
                if self.state == "new":
                    self.state = "stopped"
                return self.state == "stopped"
            self.state = "stopping"
            for slot in self.slots.values():
                if slot.job is not None:
                    slot.log.info("stopping: asking sleep (%s) to abort its running stage", slot.job.reason)
                    slot.job.cancel.set()
                self._write_status(slot)
        assert self._scheduler is not None
        deadline = time.monotonic() + self.grace_s + 5.0
        with self._idle:
            while any(s.busy for s in self.slots.values()) and time.monotonic() < deadline:
                self._idle.wait(timeout=0.2)
            clean = not any(s.busy for s in self.slots.values())
        self._scheduler.shutdown(wait=False)
        with self._lock:
            self.state = "stopped"
            for slot in self.slots.values():
                slot.log.info("daemon stopped%s", "" if clean else " with a sleep still running (recovered next start)")
                self._write_status(slot)
                self._save_state(slot)
        self._release_all()
        return clean

    def _release_all(self) -> None:
        for slot in self.slots.values():
            if slot.server is not None:
                slot.server.stop()
            if slot.home is not None:
                try:
                    slot.home.close()
                except Exception:  # noqa: BLE001
                    pass
            if slot.lock is not None and slot.lock.is_locked:
                slot.lock.release()
            if slot.handler is not None:
                for lg in (logging.getLogger("agentsleep.daemon"), logging.getLogger("apscheduler")):
                    lg.removeHandler(slot.handler)
                slot.handler.close()
                slot.handler = None

    def run_forever(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code (0 = clean stop)."""
        def on_signal(signum, frame):  # noqa: ARG001
            log.info("got signal %s: stopping", signal.Signals(signum).name)
            self._stop_requested.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            log.info("daemon pid %s running for %s", os.getpid(), ", ".join(str(r) for r in self.roots))
            while not self._stop_requested.wait(timeout=1.0):
                pass
            clean = self.stop()
            return 0 if clean else 1
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def request_stop(self) -> None:
        """Thread-safe: make run_forever() return."""
        self._stop_requested.set()

    # -- scheduling ---------------------------------------------------------------
    def _schedule(self, slot: _Slot) -> None:
        assert self._scheduler is not None
        k = slot.key
        for jid in (f"cron:{k}", f"check:{k}"):
            if self._scheduler.get_job(jid):
                self._scheduler.remove_job(jid)
        c = slot.cfg
        if c.cron:
            self._scheduler.add_job(self._on_cron, parse_cron(c.cron, self.tz), args=[k], id=f"cron:{k}",
                                    name=f"cron {c.cron} for {slot.root.name}", misfire_grace_time=3600)
        if c.threshold_episodes or c.idle_minutes:
            self._scheduler.add_job(self._on_check, IntervalTrigger(seconds=c.check_seconds, timezone=self.tz),
                                    args=[k], id=f"check:{k}", name=f"threshold/idle check for {slot.root.name}",
                                    next_run_time=datetime.now(self.tz))

    def _catch_up(self, slot: _Slot) -> None:
        """Cron runs missed while the daemon was down: one sleep for all of them."""
        c = slot.cfg
        st = slot.prev_state
        seen = st.get("cron_seen_at")
        if not (self.catch_up and c.cron and seen and st.get("cron") == c.cron):
            return
        trig = parse_cron(c.cron, self.tz)
        now = datetime.now(self.tz)
        t = datetime.fromtimestamp(float(seen), self.tz)
        missed, first = 0, None
        nxt = trig.get_next_fire_time(None, t + timedelta(microseconds=1))
        while nxt is not None and nxt <= now and missed < 10_000:
            missed += 1
            first = first or nxt
            nxt = trig.get_next_fire_time(nxt, nxt + timedelta(microseconds=1))
        if missed:
            slot.log.info("%d cron run(s) missed while the daemon was down (first %s): one catch-up sleep",
                          missed, first.isoformat())
            self.fire(slot.key, "cron-catchup", note=f"{missed} missed")

    def _on_event(self, ev: JobExecutionEvent) -> None:
        slot = self._slot_of_job(ev.job_id)
        lg = slot.log if slot else log
        if ev.code == EVENT_JOB_MAX_INSTANCES:
            # Only meaningful for cron: a sleep window that overran. Checks and polls that
            # overlap on a busy machine are simply dropped.
            if ev.job_id.startswith("cron:"):
                lg.info("cron run dropped: the previous one is still going (max_instances=1)")
        elif ev.code == EVENT_JOB_MISSED:
            lg.info("job %s: missed its run time %s (coalesced)", ev.job_id, ev.scheduled_run_time)
        elif ev.code == EVENT_JOB_ERROR:
            lg.error("job %s failed: %r", ev.job_id, ev.exception)

    def _slot_of_job(self, job_id: str | None) -> _Slot | None:
        for key, slot in self.slots.items():
            if job_id and job_id.split(":", 1)[-1].startswith(key):
                return slot
        return None

    # -- triggers ------------------------------------------------------------------
    def _on_cron(self, key: str) -> None:
        slot = self.slots[key]
        self._save_state(slot)
        self.fire(key, "cron")

    def probe(self, slot: _Slot) -> tuple[int, float | None]:
        """(episodes waiting, created_at of the newest waiting one)."""
        if self.probe_fn is not None:
            return self.probe_fn(slot.root)
        eps = slot.home.store.list(unconsolidated_only=True)
        # episodes waiting out a backoff after failed sleeps do not count (a sleep that finds only them
        # would run their backoff down)
        backing_off = slot.home.store.ledger.backing_off([e.id for e in eps]) if eps else set()
        eps = [e for e in eps if e.id not in backing_off]
        if not slot.consolidate_untrusted:
            eps = [e for e in eps if e.trust == "trusted"]
        newest = max((e.created_at.timestamp() for e in eps), default=None)
        return len(eps), newest

    def _probe(self, slot: _Slot) -> tuple[int, float | None] | None:
        try:
            waiting, newest = self.probe(slot)
        except Exception as e:  # noqa: BLE001 - a store outage must not kill the daemon
            slot.last_probe = {"error": f"{type(e).__name__}: {str(e)[:200]}", "at": time.time()}
            slot.log.warning("cannot count waiting episodes: %s", slot.last_probe["error"])
            return None
        slot.last_probe = {"waiting": waiting, "newest_at": newest, "at": time.time()}
        return waiting, newest

    def _on_check(self, key: str) -> None:
        slot = self.slots[key]
        c = slot.cfg
        p = self._probe(slot)
        self._write_status(slot)
        if p is None:
            return
        waiting, newest = p
        if not waiting or newest is None or newest <= slot.auto_mark:
            return  # nothing new since the last sleep started
        if c.threshold_episodes and waiting >= c.threshold_episodes:
            self.fire(key, "threshold", note=f"{waiting} waiting >= {c.threshold_episodes}")
        elif c.idle_minutes and time.time() - newest >= c.idle_minutes * 60:
            self.fire(key, "idle", note=f"{waiting} waiting, idle {(time.time() - newest) / 60:.1f} min")

    def _poll_requests(self) -> None:
        for slot in list(self.slots.values()):
            rd = requests_dir(slot.root)
            try:
                files = sorted(rd.glob("*.json"))
            except OSError:
                continue
            for f in files:
                req = read_json(f)
                dest = rd / "accepted" / f.name
                try:
                    os.replace(f, dest)
                except FileNotFoundError:
                    continue  # withdrawn by the requester
                if not isinstance(req, dict):
                    req = {"id": f.stem}
                req.setdefault("id", f.stem)
                req["accepted_at"] = time.time()
                slot.log.info("on-demand sleep request %s accepted (from pid %s)", req["id"], req.get("pid"))
                with self._lock:
                    slot.pending.append(req)
            with self._lock:
                want = bool(slot.pending) and not slot.busy and self.state == "running"
            if want:
                self.fire(slot.key, "on-demand")

    def fire(self, home: str | Path, reason: str, note: str = "") -> bool:
        """Start a sleep for `home` now unless one is running (then: dropped, counted).
        On-demand requests waiting in the slot ride along. True if a sleep started."""
        key = home if isinstance(home, str) and home in self.slots else str(Path(home).expanduser().resolve())
        with self._lock:
            slot = self.slots[key]
            if self.state != "running":
                return False
            if slot.busy:
                slot.counters["skipped_busy"] += 1
                slot.log.info("%s trigger%s skipped: a sleep (%s) is already running", reason,
                              f" ({note})" if note else "", slot.job.reason if slot.job else "?")
                return False
            holder = lock_holder(slot.root)
            if holder:
                slot.counters["skipped_busy"] += 1
                slot.log.info("%s trigger skipped: %s holds the sleep lock", reason, holder)
                return False
            reqs, slot.pending = slot.pending, []
            if reqs and reason not in ("on-demand",):
                reason = f"{reason}+on-demand"
            maxes = [r.get("max_episodes") for r in reqs]
            max_episodes = None if (not reqs or None in maxes) else max(maxes)
            job = SleepJob(home=slot.root, reason=reason, max_episodes=max_episodes,
                           request_ids=[r["id"] for r in reqs], grace_s=self.grace_s,
                           log=logging.getLogger(f"agentsleep.daemon.worker.{slot.tag}"))
            slot.busy, slot.job = True, job
            self.gate.reserve(job)
            slot.fired[reason.split("+")[0]] = time.time()
            slot.log.info("sleep triggered by %s%s", reason, f" ({note})" if note else "")
            # Added under our lock so stop() never misses it; the sleep itself runs in
            # the scheduler's pool (max_instances=1: never twice at once for this home).
            assert self._scheduler is not None
            # A fresh id per sleep: the in-flight flag above is what keeps it single; a reused
            # id could be dropped by max_instances while the previous run is still unwinding.
            self._seq += 1
            self._scheduler.add_job(self._run_sleep, args=[key, job], id=f"sleep:{key}:{self._seq}",
                                    name=f"sleep {slot.root.name}", misfire_grace_time=None)
        return True

    # -- running a sleep ------------------------------------------------------------
    def _run_sleep(self, key: str, job: SleepJob) -> None:
        slot = self.slots[key]
        summary: dict[str, Any]
        mark_before, restored = slot.auto_mark, False
        try:
            if job.cancel.is_set():
                raise SleepAborted("the daemon stopped before this sleep began")
            p = self._probe(slot)
            if p is not None and p[1] is not None:
                slot.auto_mark = max(slot.auto_mark, p[1])
            self._save_state(slot)
            self._write_status(slot)
            if self.gate.limit and self.gate.running >= self.gate.limit:
                slot.log.info("sleep queued: %d running, %d waiting (max_concurrent %d)", self.gate.running,
                              len(self.gate.queue), self.gate.limit)
            self.gate.enter(job, job.cancel.is_set)
            try:
                summary = dict(self.sleep_fn(job) or {})
            finally:
                self.gate.leave()
        except SleepAborted as e:
            ids = abort_own(slot.root, why=f"aborted: {e}")
            summary = {"status": "aborted", "sleep_ids": ids, "error": str(e)}
        except SleepLockedError as e:
            summary = {"status": "busy", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - a failed sleep must not kill the daemon
            slot.log.exception("sleep failed")
            ids = abort_own(slot.root, why=f"failed: {type(e).__name__}: {e}", status=Status.FAILED)
            summary = {"status": "failed", "sleep_ids": ids, "error": f"{type(e).__name__}: {e}"}
        self.gate.discard(job)
        finished = time.time()
        status = summary.get("status", "unknown")
        outcome = {**summary, "status": status, "reason": job.reason, "started_at": job.started_at,
                   "finished_at": finished, "duration_s": round(finished - job.started_at, 2),
                   "requests": job.request_ids}
        with self._lock:
            c = slot.counters
            c["sleeps"] += 1
            if status in ("promoted", "rejected", "nothing-to-do"):
                c[status.replace("-", "_")] += 1
                c["consecutive_failures"] = 0
            elif status in ("failed", "interrupted"):
                c["failed"] += 1
                c["consecutive_failures"] += 1
            elif status == "aborted":
                c["aborted"] += 1
            elif status == "busy":
                c["skipped_busy"] += 1
            slot.last = outcome
            if status in ("promoted", "rejected"):
                # Promoted: if a backlog still waits (max_episodes per sleep), threshold/idle may fire again
                # without waiting for a new episode. Rejected: its episodes are retried once at the next
                # sleep with a changed plan, then back off (not counted as waiting), so a home with no cron
                # retries them at the next check instead of only when someone speaks again.
                slot.auto_mark = 0.0
            elif status == "busy" or (status in ("aborted", "interrupted") and job.cancel.is_set()):
                # No sleep ran on the waiting episodes (another process held the home, or the daemon stopped
                # it): threshold/idle must still see them as new. A sleep killed on its own (out of memory, a
                # deadline) keeps the mark, or the same batch would be retried every check.
                slot.auto_mark, restored = mark_before, True
            slot.busy, slot.job = False, None
            again = bool(slot.pending) and self.state == "running"
            self._idle.notify_all()
        if restored:
            self._save_state(slot)  # the restored mark, for a daemon started again
        lvl = logging.WARNING if status in ("failed", "interrupted", "aborted", "busy") else logging.INFO
        slot.log.log(lvl, "sleep %s finished: %s in %.1f s%s%s", summary.get("sleep_id") or "", status,
                     outcome["duration_s"], f" -> serving {summary['version']}" if summary.get("version") else "",
                     f" ({summary['error']})" if summary.get("error") else "")
        for rid in job.request_ids:
            try:
                atomic_write_json(requests_dir(slot.root) / "done" / f"{rid}.json", outcome)
                (requests_dir(slot.root) / "accepted" / f"{rid}.json").unlink(missing_ok=True)
            except OSError:
                pass
        self._save_state(slot)
        self._write_status(slot)
        if again:
            self.fire(key, "on-demand")

    def _recover_requests(self, slot: _Slot) -> None:
        """Requests accepted by a daemon that died: answered as interrupted. Old answers pruned."""
        rd = requests_dir(slot.root)
        for f in (rd / "accepted").glob("*.json"):
            atomic_write_json(rd / "done" / f.name, {"status": "interrupted", "reason": "on-demand",
                                                     "error": "the daemon stopped before this sleep finished"})
            f.unlink(missing_ok=True)
        week = time.time() - 7 * 86400
        for f in (rd / "done").glob("*.json"):
            try:
                if f.stat().st_mtime < week:
                    f.unlink()
            except OSError:
                pass

    # -- state and status ---------------------------------------------------------------
    def _heartbeat(self) -> None:
        for slot in list(self.slots.values()):
            self._maybe_reload_config(slot)
            if self.state == "running":
                self._keep_server(slot)
            if slot.cfg.threshold_episodes is None and slot.cfg.idle_minutes is None and not slot.last_probe:
                self._probe(slot)  # status shows what waits even without a check job
            if self.state == "running":
                self._save_state(slot)
            self._write_status(slot)

    def _keep_server(self, slot: _Slot) -> None:
        """[daemon] serve: keep the home's `agentsleep serve` running (daemon/server.py); stop it when unset."""
        from .server import HomeServer

        if slot.cfg.serve:
            slot.server = slot.server or HomeServer(slot.root, slot.log)
            slot.server.keep()
        elif slot.server is not None:
            slot.server.stop()
            slot.server = None

    def _maybe_reload_config(self, slot: _Slot) -> None:
        m = _mtime(slot.root / "config.toml")
        if m == slot.config_mtime:
            return
        slot.config_mtime = m
        try:
            cfg = Config.load(slot.root / "config.toml")
        except ConfigError as e:
            slot.log.error("config.toml changed but is invalid; keeping the old triggers: %s", e)
            return
        if cfg.daemon == slot.cfg:
            return
        try:
            if cfg.daemon.cron:
                parse_cron(cfg.daemon.cron, self.tz)
        except ConfigError as e:
            slot.log.error("%s; keeping the old triggers", e)
            return
        slot.log.info("config.toml changed: daemon triggers now %s", cfg.daemon.model_dump())
        slot.cfg, slot.consolidate_untrusted = cfg.daemon, cfg.sleep.consolidate_untrusted
        with self._lock:
            if self.state == "running":
                self._schedule(slot)

    def _save_state(self, slot: _Slot) -> None:
        try:
            atomic_write_json(daemon_dir(slot.root) / "state.json", {
                "cron": slot.cfg.cron, "cron_seen_at": time.time(), "auto_mark": slot.auto_mark,
                "last_sleep": slot.last, "pid": os.getpid()})
        except OSError as e:
            slot.log.error("cannot save daemon state: %s", e)

    def _next_run(self, job_id: str) -> str | None:
        if self._scheduler is None or self.state not in ("running",):
            return None
        j = self._scheduler.get_job(job_id)
        return _iso(j.next_run_time) if j else None

    def status(self, home: str | Path | None = None) -> dict[str, Any]:
        """What `agentsleep daemon status --json` shows for one home (the first by default)."""
        key = str(Path(home).expanduser().resolve()) if home is not None else next(iter(self.slots))
        slot = self.slots[key]
        with self._lock:
            return self._status_dict(slot)

    def _status_dict(self, slot: _Slot) -> dict[str, Any]:
        c = slot.cfg
        problems = []
        if slot.last_probe.get("error"):
            problems.append(f"episode store: {slot.last_probe['error']}")
        if slot.counters["consecutive_failures"] >= 2:
            problems.append(f"{slot.counters['consecutive_failures']} sleeps in a row failed; see logs/daemon.log")
        try:
            waiting_files = len(list(requests_dir(slot.root).glob("*.json")))
        except OSError:
            waiting_files = 0
        return {
            "home": str(slot.root),
            "daemon": {"pid": os.getpid(), "state": self.state, "started_at": self.started_at,
                       "heartbeat_at": time.time(), "heartbeat_s": self.heartbeat_s,
                       "homes": [str(r) for r in self.roots], "grace_s": self.grace_s},
            "triggers": {"cron": c.cron, "next_cron": self._next_run(f"cron:{slot.key}"),
                         "threshold_episodes": c.threshold_episodes, "idle_minutes": c.idle_minutes,
                         "check_seconds": c.check_seconds, "next_check": self._next_run(f"check:{slot.key}"),
                         "last_fired": {k: v for k, v in slot.fired.items()}},
            "running": slot.job.public() if slot.job else None,
            "waiting": {"episodes": slot.last_probe.get("waiting"), "newest_episode_at": slot.last_probe.get("newest_at"),
                        "counted_at": slot.last_probe.get("at"),
                        "requests": waiting_files + len(slot.pending),
                        "after_current_sleep": len(slot.pending) if slot.busy else 0},
            "last_sleep": slot.last,
            "recovered": slot.recovered,
            "counters": dict(slot.counters),
            "health": {"ok": not problems and self.state == "running", "problems": problems},
            "log": str(slot.root / "logs" / "daemon.log"),
            "server": slot.server.public() if slot.server is not None else None,
        }

    def _write_status(self, slot: _Slot) -> None:
        try:
            d = self._status_dict(slot)
            atomic_write_json(daemon_dir(slot.root) / "status.json", d)
            info = read_json(daemon_dir(slot.root) / "daemon.json") or {}
            if info.get("state") != self.state and info.get("pid") == os.getpid():
                info["state"] = self.state
                atomic_write_json(daemon_dir(slot.root) / "daemon.json", info)
        except OSError as e:
            slot.log.error("cannot write status.json: %s", e)


def _mtime(p: Path) -> float | None:
    try:
        return p.stat().st_mtime
    except OSError:
        return None
