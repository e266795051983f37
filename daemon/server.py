"""`[daemon] serve = true`: the daemon keeps an `agentsleep serve` running for its home.

The daemon itself never holds the episode store. The server it keeps does: while it runs it is
the home's one writer, answers the CLI's commands at once (agentsleep/client.py finds it through
``<home>/serve.json``) and hands sleeps back to the daemon. It is started on the daemon's first
heartbeat, restarted when it exits (at most once every RESTART_AFTER_S), and stopped with the
daemon. A server already answering for the home (one the user started) is left alone.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentsleep import guard
from agentsleep.procs import terminate_group

RESTART_AFTER_S = 30.0


class HomeServer:
    """One `agentsleep serve` child process for one home; its output goes to <home>/logs/serve.log."""

    def __init__(self, root: Path, log: logging.Logger):
        self.root, self.log = root, log
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0

    def keep(self) -> None:
        """Start the server unless one runs (ours, or another answering for the home)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            self.log.warning("home server (pid %s) exited with code %s; see %s", self.proc.pid,
                             self.proc.returncode, self.root / "logs" / "serve.log")
            self.proc = None
            self.restarts += 1
        if time.time() - self.started_at < RESTART_AFTER_S:
            return
        from agentsleep.client import find

        if find(self.root) is not None:
            return  # someone else serves this home
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.root / "logs" / "serve.log", "ab") as out:
            # its own process group (it may run vLLM), under the guard: a daemon killed with SIGKILL
            # does not leave it serving
            cmd = [sys.executable, "-m", "agentsleep.cli", "--home", str(self.root), "serve"]
            self.proc = subprocess.Popen(guard.command(cmd), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.time()
        self.log.info("home server started (pid %s); the CLI goes through it once it answers", self.proc.pid)

    def stop(self, timeout: float = 30.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        terminate_group(p, grace=timeout)  # the server, its guard and anything left in its group
        self.log.info("home server (pid %s) stopped", p.pid)

    def public(self) -> dict[str, Any]:
        alive = self.proc is not None and self.proc.poll() is None
        return {"pid": self.proc.pid if alive else None, "running": alive, "restarts": self.restarts,
                "log": str(self.root / "logs" / "serve.log")}
