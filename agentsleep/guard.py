"""Run a command and stop it when the process that started it dies, even by SIGKILL.

agentsleep starts servers (vLLM, the home server the daemon keeps, a Chroma server) in
process groups of their own, so that stopping one takes its workers too. A parent killed with
SIGKILL runs no cleanup, and such a server would then run on with nobody to stop it, holding
its port, its memory and, for vLLM, the model. Linux's parent-death signal does not fit: it fires
when the *thread* that started the child ends, and servers are started from short-lived threads
(a blue/green swap). So each server runs under this small watcher instead:

    python -I -S guard.py PARENT_PID [--remove DIR] COMMAND...

It starts COMMAND in its own process group (the group the parent signals), checks once a second
whether PARENT_PID is still its parent, and if not stops the group: SIGTERM, then SIGKILL after
GRACE_S. It exits with COMMAND's exit status, after removing DIR when given (a scratch folder
of the command's: vLLM never unlinks its IPC sockets). A signal sent to the whole group reaches
COMMAND directly; a SIGTERM or SIGINT sent to this process alone is passed on to COMMAND if it is
still running FORWARD_AFTER_S later. Standard library only, and run with -I -S, so it starts in
milliseconds and imports nothing of the environment.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

GRACE_S = 15.0
# A group signal reaches the command itself (how agentsleep stops its servers); one sent to this process
# alone (`kill PID`) is passed on once the command has not ended this long after it. A command still
# shutting down after a group signal may get it twice; by then SIGKILL is near anyway.
FORWARD_AFTER_S = 10.0


def command(cmd: list[str], remove: str | os.PathLike | None = None) -> list[str]:
    """`cmd` run under this watcher, for this process as the parent; `remove`: a folder deleted once the
    command has ended, however it ended (short of a SIGKILL of the guard itself)."""
    extra = ["--remove", os.fspath(remove)] if remove is not None else []
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), *extra, *cmd]


def main(argv: list[str]) -> int:
    remove = None
    if len(argv) > 2 and argv[1] == "--remove":
        remove, argv = argv[2], [argv[0], *argv[3:]]
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: guard.py PARENT_PID [--remove DIR] COMMAND...", file=sys.stderr)
        return 2
    parent, cmd = int(argv[0]), argv[1:]
    try:
        return _watch(parent, cmd, remove)
    finally:
        if remove:
            shutil.rmtree(remove, ignore_errors=True)


def _watch(parent: int, cmd: list[str], remove: str | None) -> int:
    if os.getpgrp() != os.getpid():
        os.setsid()  # a group of our own, so that stopping it never reaches the parent's
    signalled: list[tuple[int, float]] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a Python handler resets to default on exec
        signal.signal(sig, lambda s, _f: signalled.append((s, time.monotonic())))
    try:
        child = subprocess.Popen(cmd)
    except OSError as e:
        print(f"guard: cannot start {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127
    forwarded = False
    while True:
        try:
            rc = child.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:  # the parent died: we were handed to init or a subreaper
            _stop_group(child, remove)
            rc = child.wait()
            break
        if signalled and not forwarded and time.monotonic() - signalled[0][1] > FORWARD_AFTER_S:
            forwarded = True
            child.send_signal(signalled[0][0])
    if rc < 0:  # killed by a signal: die of the same one, so the parent reads the same status
        if remove:
            shutil.rmtree(remove, ignore_errors=True)  # before dying: no finally runs after that
        sig = -rc
        if sig == signal.SIGKILL:  # (the out-of-memory killer's) cannot be caught, so needs no reset
            os.kill(os.getpid(), sig)
        elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
    return rc if rc >= 0 else 128 - rc  # other signals (a crash) as the shell reports them, with no core of ours


def _stop_group(child: subprocess.Popen, remove: str | None) -> None:
    """SIGTERM our group (the command and its workers; this process ignores it), SIGKILL after GRACE_S."""
    group = os.getpgrp()
    os.killpg(group, signal.SIGTERM)
    try:
        child.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    if remove:
        shutil.rmtree(remove, ignore_errors=True)  # before the SIGKILL that takes this process too
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(group, signal.SIGKILL)  # takes this process too, after any workers that outlived the command


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
