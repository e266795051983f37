"""agentsleep.guard: a server started by agentsleep stops when its parent is killed with SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentsleep import guard
from agentsleep.procs import terminate_group, wait_until

ROOT = Path(__file__).resolve().parents[1]
SLEEPER = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(300)"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent's wait() is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_server_stops_when_its_parent_is_killed(tmp_path):
    """The parent starts the guarded command the way agentsleep starts vLLM (its own session), then is
    SIGKILLed: no cleanup runs in it, and the guard stops the command and its group."""
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "from agentsleep import guard\n"
         f"p = subprocess.Popen(guard.command({SLEEPER!r}), stdout=subprocess.PIPE, start_new_session=True)\n"
         "print(p.pid, p.stdout.readline().decode().strip(), flush=True)\n"
         "time.sleep(300)\n"],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    try:
        guard_pid, server_pid = (int(x) for x in parent.stdout.readline().split())
        assert _alive(guard_pid) and _alive(server_pid)
        assert os.getpgid(server_pid) == guard_pid  # one group, led by the guard: the parent stops it whole
        time.sleep(0.5)
        assert _alive(server_pid)  # the guard leaves a live parent's server alone
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not _alive(server_pid) and not _alive(guard_pid), 20, interval=0.2)
    finally:
        parent.kill()
        for pid in locals().get("guard_pid", None), locals().get("server_pid", None):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_guard_exits_as_its_command_does():
    p = subprocess.Popen(guard.command([sys.executable, "-c", "import sys; sys.exit(3)"]), start_new_session=True)
    assert p.wait(20) == 3
    p = subprocess.Popen(guard.command(SLEEPER), stdout=subprocess.PIPE, start_new_session=True)
    server_pid = int(p.stdout.readline())
    assert terminate_group(p, grace=10) == -signal.SIGTERM  # a group signal, as agentsleep stops servers
    assert not _alive(server_pid)
    for sig, status in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGSEGV, 128 + signal.SIGSEGV)):
        p = subprocess.Popen(guard.command([sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(sig)})"]),
                             stderr=subprocess.PIPE, start_new_session=True)
        assert p.wait(20) == status and b"Traceback" not in p.stderr.read()  # the out-of-memory killer's, a crash
    p = subprocess.Popen(guard.command(["/nonexistent/server"]), stderr=subprocess.PIPE, start_new_session=True)
    assert p.wait(20) == 127 and b"cannot start /nonexistent/server" in p.stderr.read()


def test_a_signal_to_the_guard_alone_reaches_the_command():
    """`kill PID` on the pid agentsleep reports (the guard's) stops the server too, after FORWARD_AFTER_S."""
    p = subprocess.Popen(guard.command(SLEEPER), stdout=subprocess.PIPE, start_new_session=True)
    try:
        server_pid = int(p.stdout.readline())
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(guard.FORWARD_AFTER_S + 10) == -signal.SIGTERM
        assert time.monotonic() - t0 >= guard.FORWARD_AFTER_S - 1
        assert not _alive(server_pid)
    finally:
        terminate_group(p, grace=2)


def test_the_guard_removes_the_commands_scratch_folder_however_it_ends(tmp_path):
    """vLLM leaves its IPC socket files behind: its scratch folder goes once the command has ended, on a
    normal exit and on the group signal agentsleep stops servers with."""
    scratch = tmp_path / "rpc"
    scratch.mkdir()
    (scratch / "socket-file").write_text("")
    p = subprocess.Popen(guard.command([sys.executable, "-c", "import sys; sys.exit(4)"], remove=scratch),
                         start_new_session=True)
    assert p.wait(20) == 4 and not scratch.exists()
    scratch.mkdir()
    p = subprocess.Popen(guard.command(SLEEPER, remove=scratch), stdout=subprocess.PIPE, start_new_session=True)
    server_pid = int(p.stdout.readline())
    assert terminate_group(p, grace=10) == -signal.SIGTERM
    assert not _alive(server_pid) and not scratch.exists()
