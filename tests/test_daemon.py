"""Daemon triggers and one-sleep-per-home, with the real APScheduler and short intervals.

The sleep callable here is a light recorder (it takes the real sleep lock and
sleeps a little); the probe of waiting episodes is a controllable stand-in.
The real store, real worker processes and a real sleep are exercised in
test_daemon_process.py and test_daemon_sleep.py.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from agentsleep.cli import load_daemon

load_daemon()
from agentsleep.config import Config, DaemonConfig  # noqa: E402
from agentsleep.daemon import (Daemon, DaemonAlreadyRunning, SleepJob, daemon_status, parse_cron,  # noqa: E402
                               request_result, request_sleep, submit_request, wait_request)
from agentsleep.errors import ConfigError, SleepLockedError  # noqa: E402
from agentsleep.home import Home  # noqa: E402
from agentsleep.sleep.lock import sleep_lock  # noqa: E402

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A sleep callable that records calls and the largest number running at once."""

    def __init__(self, seconds: float = 0.05, status: str = "promoted"):
        self.seconds = seconds
        self.status = status
        self.calls: list[SleepJob] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self.aborted = 0

    def __call__(self, job: SleepJob) -> dict:
        with self._lock:
            self.calls.append(job)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            with sleep_lock(job.home, "test sleep"):   # the lock the pipeline holds
                t_end = time.monotonic() + self.seconds
                while time.monotonic() < t_end:
                    job.progress("seed", 0, 0)         # raises SleepAborted once cancelled
                    time.sleep(0.01)
        except KeyboardInterrupt:
            self.aborted += 1
            raise
        finally:
            with self._lock:
                self.active -= 1
        return {"status": self.status, "sleep_id": f"s{len(self.calls)}", "metrics": {"recall_gain": 0.1}}

    def reasons(self) -> list[str]:
        return [c.reason for c in self.calls]


class Probe:
    """Stand-in for counting unconsolidated episodes: (waiting, newest created_at)."""

    def __init__(self, waiting: int = 0, newest: float | None = None):
        self.waiting, self.newest = waiting, newest

    def __call__(self, root: Path):
        return self.waiting, self.newest


def make_home(tmp_path: Path, name: str = "home", **daemon) -> Path:
    # cron "" = off. threshold_episodes cannot be switched off in TOML (None is dropped, 0 is
    # invalid), so "off" here is a threshold no probe reaches.
    fields = {"cron": "", "threshold_episodes": 10**9, "idle_minutes": None, "check_seconds": 0.1}
    fields.update(daemon)
    root = tmp_path / name
    Home.init(root, config=Config(daemon=DaemonConfig(**fields)))
    return root


def until(cond, timeout: float = 20.0, step: float = 0.02):
    """Poll `cond` (generous timeout: a loaded CI machine is slow; success returns at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("condition not met in time")


@pytest.fixture
def daemons():
    made: list[Daemon] = []

    def make(*homes, **kw) -> Daemon:
        kw.setdefault("heartbeat_s", 0.2)
        kw.setdefault("request_poll_s", 0.05)
        kw.setdefault("grace_s", 2.0)
        d = Daemon(homes, **kw)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.stop()


# -- each trigger fires -----------------------------------------------------------------
def test_cron_trigger_fires(tmp_path, daemons):
    root = make_home(tmp_path, cron="* * * * * *")          # 6 fields: every second
    rec = Recorder()
    d = daemons(root, sleep_fn=rec)
    until(lambda: len(rec.calls) >= 2)
    assert set(rec.reasons()) == {"cron"}
    st = d.status()
    assert st["triggers"]["next_cron"] and st["last_sleep"]["status"] == "promoted"


def test_default_cron_is_nightly_at_3_local(tmp_path, daemons):
    root = tmp_path / "h"
    Home.init(root)                                          # default config
    d = daemons(root, sleep_fn=Recorder(), probe_fn=Probe())
    nxt = datetime.fromisoformat(d.status()["triggers"]["next_cron"])
    assert (nxt.hour, nxt.minute, nxt.second) == (3, 0, 0)
    assert nxt.utcoffset() == datetime.now().astimezone().utcoffset()
    assert 0 < (nxt - datetime.now(nxt.tzinfo)).total_seconds() <= 86400


def test_cron_parsing():
    from datetime import timezone
    nxt = parse_cron("30 3 * * 1", timezone.utc).get_next_fire_time(None, datetime.now(timezone.utc))
    assert (nxt.weekday(), nxt.hour, nxt.minute) == (0, 3, 30)               # crontab 1 = Monday
    for expr, days in (("0 3 * * 0", {6}), ("0 3 * * 7", {6}), ("0 3 * * 1-5", {0, 1, 2, 3, 4}),
                       ("0 3 * * 5-7", {4, 5, 6}), ("0 3 * * */3", {6, 2, 5}), ("0 3 * * sat,sun", {5, 6})):
        trig, t, seen = parse_cron(expr, timezone.utc), datetime.now(timezone.utc), set()
        for _ in range(14):
            t = trig.get_next_fire_time(None, t)
            seen.add(t.weekday())
            t = t.replace(microsecond=0) + timedelta(seconds=1)
        assert seen == days, expr
    nxt = parse_cron("*/5 * * * * *", timezone.utc).get_next_fire_time(None, datetime.now(timezone.utc))
    assert nxt.second % 5 == 0
    with pytest.raises(ConfigError, match="expected 5 fields"):
        parse_cron("every night")
    with pytest.raises(ConfigError, match="daemon.cron"):
        parse_cron("0 25 * * *")


def test_threshold_trigger_fires_once_per_new_episodes(tmp_path, daemons):
    root = make_home(tmp_path, threshold_episodes=5)
    probe = Probe(waiting=4, newest=time.time())
    rec = Recorder(status="rejected")
    daemons(root, sleep_fn=rec, probe_fn=probe)
    time.sleep(0.4)
    assert rec.calls == []                                   # 4 < 5
    probe.waiting, probe.newest = 5, time.time()
    until(lambda: rec.calls)
    probe.waiting = 0                                        # rejected: they back off (not counted as waiting)
    time.sleep(0.5)
    assert rec.reasons() == ["threshold"]
    probe.waiting, probe.newest = 6, time.time() + 1        # a new episode arrives
    until(lambda: len(rec.calls) == 2)
    assert rec.reasons() == ["threshold", "threshold"]


def test_a_sleep_that_never_ran_leaves_its_episodes_new_to_the_triggers(tmp_path, daemons):
    """A sleep that found the home busy (another process sleeping) ran on nothing: the threshold must fire
    again for the same waiting episodes, not wait for a new one."""
    root = make_home(tmp_path, threshold_episodes=5)
    probe = Probe(waiting=5, newest=time.time())
    rec = Recorder(status="busy")

    def busy_then_promoted(job):
        out = rec(job)
        if rec.status == "promoted":
            probe.waiting = 0
        rec.status = "promoted"
        return out

    daemons(root, sleep_fn=busy_then_promoted, probe_fn=probe)
    until(lambda: len(rec.calls) == 2)
    time.sleep(0.5)
    assert rec.reasons() == ["threshold", "threshold"]  # busy, then the same episodes consolidated


def test_a_sleep_killed_on_its_own_is_not_retried_every_check(tmp_path, daemons):
    """A worker killed by the OS (out of memory) ends `interrupted` while the daemon runs on: the same batch
    must not be fired again at every check."""
    root = make_home(tmp_path, threshold_episodes=5)
    probe = Probe(waiting=5, newest=time.time())
    rec = Recorder(status="interrupted")
    daemons(root, sleep_fn=rec, probe_fn=probe)
    until(lambda: rec.calls)
    time.sleep(0.8)
    assert rec.reasons() == ["threshold"]


def test_threshold_drains_a_backlog_after_promoted_sleeps(tmp_path, daemons):
    root = make_home(tmp_path, threshold_episodes=5)
    probe = Probe(waiting=12, newest=time.time())           # more than one sleep takes
    rec = Recorder(status="promoted")

    def sleep_and_consume(job):
        out = rec(job)
        probe.waiting = max(0, probe.waiting - 5)              # max_episodes = 5 per sleep
        return out

    daemons(root, sleep_fn=sleep_and_consume, probe_fn=probe)
    until(lambda: len(rec.calls) == 2)                       # 12 -> 7 -> 2 (< 5: stop)
    time.sleep(0.5)
    assert rec.reasons() == ["threshold", "threshold"] and probe.waiting == 2


def test_a_rejected_night_is_retried_without_a_new_episode_and_then_backs_off(tmp_path, daemons):
    """A home that sleeps on threshold/idle only (no cron): a rejected night's episodes are retried once at
    the next check with a changed plan; once they back off (the probe stops counting them) no sleep fires."""
    root = make_home(tmp_path, threshold_episodes=3)
    probe = Probe(waiting=3, newest=time.time())
    rec = Recorder(status="rejected")

    def sleep_and_fail(job):
        out = rec(job)
        if len(rec.calls) >= 2:  # failed twice: they sit out a backoff
            probe.waiting = 0
        return out

    daemons(root, sleep_fn=sleep_and_fail, probe_fn=probe)
    until(lambda: len(rec.calls) == 2)
    time.sleep(0.8)
    assert rec.reasons() == ["threshold", "threshold"]


def test_idle_trigger_fires_after_quiet_period(tmp_path, daemons):
    root = make_home(tmp_path, idle_minutes=0.6 / 60)        # 0.6 s of quiet
    probe = Probe(waiting=2, newest=time.time())
    rec = Recorder()
    daemons(root, sleep_fn=rec, probe_fn=probe)
    time.sleep(0.3)
    assert rec.calls == []
    until(lambda: rec.calls)
    assert rec.reasons() == ["idle"]
    probe.waiting = 0                                         # consolidated: nothing to do
    time.sleep(0.8)
    assert len(rec.calls) == 1


def test_idle_does_not_fire_with_nothing_waiting(tmp_path, daemons):
    root = make_home(tmp_path, idle_minutes=0.1 / 60)
    rec = Recorder()
    daemons(root, sleep_fn=rec, probe_fn=Probe(waiting=0, newest=None))
    time.sleep(0.6)
    assert rec.calls == []


def test_on_demand_request(tmp_path, daemons):
    root = make_home(tmp_path)
    assert request_sleep(root, ack_timeout=0.5) is False     # no daemon: caller sleeps itself
    rec = Recorder(seconds=1.0)
    daemons(root, sleep_fn=rec, probe_fn=Probe())
    rid = submit_request(root, max_episodes=7)
    assert rid is not None
    stages = []  # what `sleep-now` shows while the daemon sleeps for it
    res = wait_request(root, rid, timeout=20, poll=0.1, on_progress=lambda: stages.append(
        (daemon_status(root, count_waiting=False).get("running") or {}).get("stage")))
    assert res["status"] == "promoted" and res["reason"] == "on-demand" and res["requests"] == [rid]
    assert "seed" in stages
    assert rec.calls[0].max_episodes == 7
    assert request_sleep(root) is True
    until(lambda: len(rec.calls) == 2)
    assert not list((root / "daemon" / "requests").glob("*.json"))


# -- one sleep per home ---------------------------------------------------------------------
def test_no_double_sleep_under_concurrent_triggers(tmp_path, daemons):
    root = make_home(tmp_path, cron="* * * * * *", threshold_episodes=1)
    probe = Probe(waiting=3, newest=time.time())
    rec = Recorder(seconds=1.5)
    d = daemons(root, sleep_fn=rec, probe_fn=probe)
    until(lambda: rec.active == 1)
    # Everything at once while a sleep runs: manual fires from many threads, cron ticks,
    # new episodes for the threshold, and an on-demand request.
    probe.newest = time.time() + 1
    results = []
    threads = [threading.Thread(target=lambda: results.append(d.fire(root, "manual"))) for _ in range(8)]
    for t in threads:
        t.start()
    rid = submit_request(root)
    for t in threads:
        t.join()
    assert results == [False] * 8
    res = wait_request(root, rid, timeout=30)                 # ran after the first, not beside it
    assert res["status"] == "promoted"
    assert rec.max_active == 1
    st = d.status()
    assert st["counters"]["skipped_busy"] >= 8
    runs = [(c.started_at, c.reason) for c in rec.calls]
    assert runs[1][1].endswith("on-demand") or "on-demand" in [r for _, r in runs]


def test_sleep_by_another_process_blocks_the_daemon(tmp_path, daemons):
    root = make_home(tmp_path)
    rec = Recorder()
    d = daemons(root, sleep_fn=rec, probe_fn=Probe())
    with sleep_lock(root, "sleep-now"):                      # e.g. `agentsleep sleep-now` without daemon
        assert d.fire(root, "manual") is False
        with pytest.raises(SleepLockedError):
            rec(SleepJob(home=root, reason="x"))              # and the pipeline's lock refuses a 2nd
    assert d.status()["counters"]["skipped_busy"] == 1
    assert d.fire(root, "manual") is True
    until(lambda: d.status()["last_sleep"] and d.status()["last_sleep"]["reason"] == "manual")


def test_second_daemon_for_a_home_is_refused(tmp_path, daemons):
    root = make_home(tmp_path)
    daemons(root, sleep_fn=Recorder(), probe_fn=Probe())
    with pytest.raises(DaemonAlreadyRunning, match="already runs"):
        Daemon([root], sleep_fn=Recorder()).start()


def test_a_daemon_starting_while_status_probes_its_lock_still_starts(tmp_path, daemons):
    """`daemon status`, `sleep-now` and the dashboard find a live daemon by taking its lock for a moment; a
    daemon starting in that moment was refused as "already runs" (a restart beside a status poll failed)."""
    import threading

    from filelock import FileLock

    root = make_home(tmp_path)
    (root / "daemon").mkdir(exist_ok=True)
    held = threading.Event()

    def probe():
        with FileLock(str(root / "daemon" / "daemon.lock")):
            held.set()
            time.sleep(0.3)  # a probe holding it a little longer than they ever do

    t = threading.Thread(target=probe)
    t.start()
    assert held.wait(5)
    d = daemons(root, sleep_fn=Recorder(), probe_fn=Probe())
    t.join()
    assert d.state == "running"


def test_missed_cron_runs_coalesce_into_one(tmp_path, daemons):
    root = make_home(tmp_path, cron="0 3 * * *")
    (root / "daemon").mkdir()
    # The last daemon was last seen 3 days ago: three 03:00 runs were missed.
    (root / "daemon" / "state.json").write_text(json.dumps({"cron": "0 3 * * *",
                                                            "cron_seen_at": time.time() - 3 * 86400}))
    rec = Recorder()
    daemons(root, sleep_fn=rec, probe_fn=Probe())
    until(lambda: rec.calls)
    time.sleep(0.5)
    assert rec.reasons() == ["cron-catchup"]
    assert "3 cron run(s) missed" in (root / "logs" / "daemon.log").read_text()


def test_overrunning_cron_sleep_is_not_started_twice(tmp_path, daemons):
    root = make_home(tmp_path, cron="* * * * * *")
    rec = Recorder(seconds=2.5)                               # overruns two cron windows
    d = daemons(root, sleep_fn=rec, probe_fn=Probe())
    until(lambda: rec.calls)
    time.sleep(2.2)
    assert len(rec.calls) == 1 and rec.max_active == 1
    assert d.status()["counters"]["skipped_busy"] >= 1


def test_two_homes_sleep_independently(tmp_path, daemons):
    a, b = make_home(tmp_path, "a"), make_home(tmp_path, "b")
    rec = Recorder(seconds=0.5)
    d = daemons(a, b, sleep_fn=rec, probe_fn=Probe())
    assert d.fire(a, "manual") and d.fire(b, "manual")
    until(lambda: rec.max_active == 2)                        # one per home, both at once
    assert not d.fire(a, "manual")


# -- stopping, status, logs -------------------------------------------------------------------
def test_stop_aborts_an_inprocess_sleep_at_its_next_progress_tick(tmp_path, daemons):
    root = make_home(tmp_path)
    rec = Recorder(seconds=30)
    d = daemons(root, sleep_fn=rec, probe_fn=Probe())
    rid = submit_request(root)
    until(lambda: rec.active == 1)
    t0 = time.monotonic()
    assert d.stop() is True
    assert time.monotonic() - t0 < 1.0 and rec.aborted == 1
    assert request_result(root, rid)["status"] == "aborted"
    st = json.loads((root / "daemon" / "status.json").read_text())
    assert st["daemon"]["state"] == "stopped" and st["last_sleep"]["status"] == "aborted"


def test_status_json_shape_and_health(tmp_path, daemons):
    root = make_home(tmp_path, cron="0 3 * * *", threshold_episodes=10)
    probe = Probe(waiting=3, newest=time.time())
    rec = Recorder(seconds=1.0)
    d = daemons(root, sleep_fn=rec, probe_fn=probe)
    assert d.fire(root, "manual")
    until(lambda: rec.active == 1)
    s = until(lambda: (lambda x: x if (x.get("running") or {}).get("stage") else None)(
        daemon_status(root, count_waiting=False)))
    assert s["daemon"]["alive"] and s["health"]["ok"] and s["daemon"]["heartbeat_age_s"] < 5
    assert s["running"]["reason"] == "manual" and s["running"]["stage"] == "seed"
    assert s["triggers"]["threshold_episodes"] == 10 and s["triggers"]["next_check"]
    assert s["waiting"]["episodes"] == 3
    until(lambda: rec.active == 0 and daemon_status(root, count_waiting=False)["last_sleep"])
    s = until(lambda: (lambda x: x if x.get("last_sleep") and not x.get("running") else None)(
        daemon_status(root, count_waiting=False)))
    assert s["last_sleep"]["status"] == "promoted" and s["last_sleep"]["metrics"] == {"recall_gain": 0.1}
    d.stop()
    s = daemon_status(root, count_waiting=False)
    assert s["daemon"]["alive"] is False and not s["health"]["ok"]
    assert s["last_sleep"]["status"] == "promoted"             # remembered across restarts


def test_failing_sleeps_make_status_unhealthy(tmp_path, daemons):
    root = make_home(tmp_path)

    def broken(job):
        raise RuntimeError("disk full")

    d = daemons(root, sleep_fn=broken, probe_fn=Probe())
    for _ in range(2):
        assert d.fire(root, "manual")
        until(lambda: not d.slots[str(root.resolve())].busy)
    s = d.status()
    assert s["last_sleep"]["status"] == "failed" and "disk full" in s["last_sleep"]["error"]
    assert not s["health"]["ok"] and "2 sleeps in a row failed" in s["health"]["problems"][0]


def test_logs_rotate_inside_the_home(tmp_path, daemons):
    root = make_home(tmp_path)
    d = daemons(root, sleep_fn=Recorder(seconds=0), probe_fn=Probe(), log_max_bytes=2000, log_backups=2)
    lg = logging.getLogger("agentsleep.daemon")
    for i in range(200):
        lg.info("line %d %s", i, "x" * 40)
    logs = sorted(p.name for p in (root / "logs").glob("daemon.log*"))
    assert logs == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    assert all((root / "logs" / n).stat().st_size <= 2100 for n in logs)
    d.stop()


def test_config_change_reschedules_without_restart(tmp_path, daemons):
    root = make_home(tmp_path)
    rec = Recorder()
    d = daemons(root, sleep_fn=rec, probe_fn=Probe())
    assert d.status()["triggers"]["next_cron"] is None
    cfg = Config.load(root / "config.toml")
    cfg.daemon.cron = "* * * * * *"
    import tomli_w
    (root / "config.toml").write_text(tomli_w.dumps(cfg.to_toml_dict()))
    until(lambda: rec.calls)
    assert rec.reasons()[0] == "cron"


def test_many_homes_queue_under_a_concurrency_limit(tmp_path, daemons):
    homes = [make_home(tmp_path, f"h{i}") for i in range(3)]
    rec = Recorder(seconds=0.3)
    d = daemons(*homes, sleep_fn=rec, probe_fn=Probe(), max_concurrent=1)
    for h in homes:
        assert d.fire(h, "manual")
    until(lambda: len(rec.calls) == 3 and rec.active == 0)
    assert rec.max_active == 1                                   # one at a time across homes
    assert [c.home for c in rec.calls] == [h.resolve() for h in homes]  # first come, first served
    with pytest.raises(Exception, match="max_concurrent"):
        Daemon([homes[0]], max_concurrent=0)


def test_episodes_backing_off_are_not_counted_as_waiting(tmp_path, daemons):
    """The real probe (no stand-in): an episode waiting out a backoff after failed sleeps does not count
    towards the threshold, or a threshold daemon would sleep on it again at once and run its backoff down."""
    root = make_home(tmp_path)
    with Home.open(root) as h:
        ids = [h.remember(t).id for t in ("I keep bees.", "My sister is called Ines.", "Our boat is green.")]
        led = h.store.ledger
        led.fail(ids[:1], "s1", "retention", "lost old facts", now_sleep=led.sleeps(), backoff=2, quarantine_after=4)
        led.fail(ids[:1], "s2", "retention", "lost old facts", now_sleep=led.sleeps(), backoff=2, quarantine_after=4)
        assert led.attempts()[ids[0]].wait_until > led.sleeps()
    d = daemons(root, sleep_fn=Recorder())
    slot = next(iter(d.slots.values()))
    waiting, newest = d.probe(slot)
    assert waiting == 2 and newest is not None
