"""The daemon as real processes: kill -9 mid-sleep and recovery, SIGTERM, start/status/stop.

The daemon runs as `python -m agentsleep.cli daemon run` and puts each sleep in a
worker process (`daemon sleep-worker`), exactly as in production; the worker calls
`fake_pipeline_sleep` below instead of Home.sleep (no model): it writes the journal
and a registry staging dir the way the pipeline does, ticks progress and takes the
real sleep lock. Knobs come from the environment (FAKE_*).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agentsleep.cli import load_daemon

load_daemon()
from agentsleep.daemon import daemon_info, daemon_status, journals, request_sleep, submit_request, wait_request  # noqa: E402
from agentsleep.home import Home  # noqa: E402

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(120)


# -- the fake sleeper (runs inside the worker process) ------------------------------
def fake_pipeline_sleep(job):
    """A stand-in for run_sleep with the same on-disk footprint (journal, staging, report)."""
    from agentsleep.models.registry import Registry
    from agentsleep.sleep.lock import sleep_lock

    seconds = float(os.environ.get("FAKE_SLEEP_S", "0.5"))
    ignore_cancel = os.environ.get("FAKE_IGNORE_CANCEL") == "1"
    home = Path(job.home)
    with sleep_lock(home):
        sid = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        jpath = home / "sleeps" / sid / "journal.json"
        jpath.parent.mkdir(parents=True)
        journal = {"sleep_id": sid, "pid": os.getpid(), "stage": "dream", "started_at": time.time(), "status": "running"}
        jpath.write_text(json.dumps(journal))
        reg = Registry(home / "registry", base_model="embedded")
        stage = reg.new_staging()
        (stage / "model.safetensors").write_bytes(b"\0" * 1024)  # half-written weights
        t_end = time.monotonic() + seconds
        step = 0
        while time.monotonic() < t_end:
            step += 1
            if ignore_cancel:
                time.sleep(0.05)
            else:
                job.progress("seed", step, 0, "training")
                time.sleep(0.05)
        v = reg.commit(stage, {"parent": reg.current_name(), "sleep_id": sid, "kind": "sleep"})
        journal.update(status="promoted", stage="done")
        jpath.write_text(json.dumps(journal))
        report = {"sleep_id": sid, "status": "promoted", "version": v.name, "finished_at": time.time(), "metrics": {"x": 1.0}}
        (jpath.parent / "report.json").write_text(json.dumps(report))
    return {"sleep_id": sid, "status": "promoted", "version": v.name, "metrics": {"x": 1.0}}


# -- helpers --------------------------------------------------------------------------
def _env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("AGENTSLEEP_HOME", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _home(tmp_path: Path, cron: str = "") -> Path:
    root = tmp_path / "home"
    Home.init(root)
    with open(root / "config.toml", "a", encoding="utf-8") as f:  # only on-demand triggers unless a test asks
        f.write(f'\n[daemon]\ncron = "{cron}"\n')
    return root


def _start(root: Path, *args: str, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "agentsleep.cli", "--home", str(root), "daemon", "run", "--heartbeat", "0.2",
           "--poll", "0.1", "--sleep-fn", "test_daemon_process:fake_pipeline_sleep", *args]
    proc = subprocess.Popen(cmd, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _wait(lambda: (daemon_info(root) or {}).get("pid") == proc.pid
          and (daemon_status(root, count_waiting=False)["daemon"].get("state") == "running"),
          90, "daemon up", proc)
    return proc


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: daemon exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _running_journal(root: Path):
    js = [j for _, j in journals(root) if j.get("status") == "running"]
    return js[0] if js else None


def _sleeping(root: Path):
    """The running journal once the sleep is mid-stage (journal written and staging dir created)."""
    j = _running_journal(root)
    return j if j and any(n.startswith(f"stage-{j['pid']}-") for n in _staging(root)) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # zombie?
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _staging(root: Path) -> list[str]:
    """Staging dir names; none yet while the sleep is still creating the registry."""
    try:
        return sorted(p.name for p in (root / "registry" / "staging").iterdir())
    except FileNotFoundError:
        return []


def _current(root: Path) -> str:
    return (root / "registry" / "CURRENT").read_text().strip()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            _kill_group(p)


# -- tests ------------------------------------------------------------------------------
def test_kill9_mid_sleep_then_restart_recovers(tmp_path, procs):
    root = _home(tmp_path)
    d = _start(root, FAKE_SLEEP_S=60)
    procs.append(d)
    assert request_sleep(root) is True
    j = _wait(lambda: _sleeping(root), 60, "sleep running", d)
    worker = j["pid"]
    assert worker != d.pid and _staging(root)

    # Power-cut style: daemon and worker die at once, no cleanup runs.
    os.killpg(d.pid, signal.SIGKILL)
    d.wait(timeout=10)
    _wait(lambda: not _alive(worker), 10, "worker gone")
    assert _running_journal(root)["sleep_id"] == j["sleep_id"]        # left behind
    st = daemon_status(root, count_waiting=False)
    assert st["daemon"]["alive"] is False and not st["health"]["ok"]
    assert any(j["sleep_id"] in p for p in st["health"]["problems"])

    d2 = _start(root, FAKE_SLEEP_S=0.2)
    procs.append(d2)
    jr = json.loads((root / "sleeps" / j["sleep_id"] / "journal.json").read_text())
    assert jr["status"] == "interrupted" and jr["stage"] == "dream"
    assert json.loads((root / "sleeps" / j["sleep_id"] / "report.json").read_text())["status"] == "interrupted"
    assert _staging(root) == []                   # partial version discarded
    assert _current(root) == "v0000"              # previous version still serving
    st = _wait(lambda: (lambda s: s if s.get("recovered") else None)(daemon_status(root, count_waiting=False)),
               10, "recovery in status")
    assert st["recovered"]["interrupted"][0]["sleep_id"] == j["sleep_id"]
    assert st["recovered"]["lock"] is None        # the sleep lock was released by the kernel
    # The home works again: an on-demand sleep now completes and promotes.
    rid = submit_request(root)
    res = wait_request(root, rid, timeout=60)
    assert res["status"] == "promoted" and _current(root) == "v0001"
    d2.send_signal(signal.SIGTERM)
    assert d2.wait(timeout=20) == 0


def test_kill9_daemon_alone_worker_aborts_cleanly(tmp_path, procs):
    root = _home(tmp_path)
    d = _start(root, FAKE_SLEEP_S=60)
    procs.append(d)
    assert request_sleep(root)
    j = _wait(lambda: _sleeping(root), 60, "sleep running", d)
    os.kill(d.pid, signal.SIGKILL)                # only the daemon
    d.wait(timeout=10)
    # The worker gets SIGTERM from the kernel (parent-death signal) and aborts its stage.
    _wait(lambda: not _alive(j["pid"]), 10, "worker exit")
    jr = json.loads((root / "sleeps" / j["sleep_id"] / "journal.json").read_text())
    assert jr["status"] == "aborted"
    assert _staging(root) == [] and _current(root) == "v0000"


def test_sigterm_aborts_running_stage_within_grace(tmp_path, procs):
    root = _home(tmp_path)
    d = _start(root, "--grace", "10", FAKE_SLEEP_S=60)
    procs.append(d)
    rid = submit_request(root)
    j = _wait(lambda: _sleeping(root), 60, "sleep running", d)
    t0 = time.monotonic()
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=30) == 0
    took = time.monotonic() - t0
    assert took < 10, f"stop took {took:.1f} s; the worker should abort at its next progress tick"
    jr = json.loads((root / "sleeps" / j["sleep_id"] / "journal.json").read_text())
    assert jr["status"] == "aborted" and not _alive(j["pid"])
    assert _staging(root) == [] and _current(root) == "v0000"
    assert json.loads((root / "daemon" / "requests" / "done" / f"{rid}.json").read_text())["status"] == "aborted"
    assert daemon_info(root) is None              # the home is free again
    assert json.loads((root / "daemon" / "status.json").read_text())["daemon"]["state"] == "stopped"
    log = (root / "logs" / "daemon.log").read_text()
    assert "got signal SIGTERM" in log or "stopping" in log


def test_sigterm_kills_a_sleep_that_ignores_it_after_grace(tmp_path, procs):
    root = _home(tmp_path)
    d = _start(root, "--grace", "1", FAKE_SLEEP_S=60, FAKE_IGNORE_CANCEL=1)
    procs.append(d)
    assert request_sleep(root)
    j = _wait(lambda: _sleeping(root), 60, "sleep running", d)
    t0 = time.monotonic()
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 15             # grace (1 s) + kill + recovery
    jr = json.loads((root / "sleeps" / j["sleep_id"] / "journal.json").read_text())
    assert jr["status"] == "interrupted" and not _alive(j["pid"])
    assert _staging(root) == [] and _current(root) == "v0000"


def test_cli_start_status_stop(tmp_path):
    root = _home(tmp_path, cron="0 3 * * *")  # threshold off: the daemon still counts what waits
    cli = [sys.executable, "-m", "agentsleep.cli", "--home", str(root), "daemon"]
    env = _env()
    r = subprocess.run(cli + ["status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and json.loads(r.stdout)["daemon"]["alive"] is False
    r = subprocess.run(cli + ["start", "--json"], env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["pid"]
    try:
        def counted():
            r = subprocess.run(cli + ["status", "--json"], env=env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            s = json.loads(r.stdout)
            return s if s["waiting"]["episodes"] is not None else None
        s = _wait(counted, 30, "episodes counted")
        assert s["daemon"]["alive"] and s["daemon"]["pid"] == pid and s["health"]["ok"]
        assert s["triggers"]["cron"] == "0 3 * * *" and "T03:00:00" in s["triggers"]["next_cron"]
        assert s["waiting"]["episodes"] == 0 and s["running"] is None
        r = subprocess.run(cli + ["start", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert json.loads(r.stdout)["already_running"] is True
        other = _home(tmp_path / "o", cron="0 3 * * *")  # one home has a daemon, one not: refused, not "ok"
        r = subprocess.run(cli + ["start", str(root), str(other)], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "already runs for" in r.stderr and str(other) in r.stderr
        assert subprocess.run(cli + ["start", "--wait", "0"], env=env, capture_output=True, text=True,
                              timeout=60).returncode == 2
    finally:
        r = subprocess.run(cli + ["stop", "--json"], env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and json.loads(r.stdout)["stopped"] is True
    assert not _alive(pid)
    assert "daemon stopped" in (root / "logs" / "daemon.log").read_text()
