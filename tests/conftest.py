"""Shared fixtures: offline mode, free ports, and a real Chroma server."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may be fetched from a model hub: a failing lookup costs ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from agentsleep.memory.chroma_server import chroma_executable  # noqa: E402,F401
from agentsleep.procs import free_port  # noqa: E402,F401
from agentsleep.memory.chroma_server import stop as stop_process  # noqa: E402


def start_chroma_server(path: Path, log: Path, timeout: float = 60.0):
    """Start `chroma run` on a free port; return (process, host, port) once its heartbeat answers."""
    from agentsleep.memory.chroma_server import start

    return start(path, log, timeout=timeout)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real Chroma server for the whole session: yields (host, port)."""
    d = tmp_path_factory.mktemp("chroma-server")
    proc, host, port = start_chroma_server(d / "data", d / "server.log")
    try:
        yield host, port
    finally:
        stop_process(proc)
