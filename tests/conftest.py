"""Shared fixtures: offline mode, free ports, and a real Chroma server."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Nothing may be fetched from a model hub: a failing lookup costs ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chroma_executable() -> str:
    exe = Path(sys.executable).parent / "chroma"
    if exe.is_file():
        return str(exe)
    found = shutil.which("chroma")
    if found is None:
        pytest.fail("the `chroma` command is not installed next to this Python (pip install chromadb)")
    return found


def start_chroma_server(path: Path, log: Path, timeout: float = 60.0):
    """Start `chroma run` on a free port; return (process, host, port) once its heartbeat answers."""
    import httpx

    host, port = "127.0.0.1", free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [chroma_executable(), "run", "--path", str(path), "--host", host, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    url = f"http://{host}:{port}/api/v2/heartbeat"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"chroma server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return proc, host, port
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"chroma server did not answer {url} within {timeout:.0f} s: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real Chroma server for the whole session: yields (host, port)."""
    d = tmp_path_factory.mktemp("chroma-server")
    proc, host, port = start_chroma_server(d / "data", d / "server.log")
    try:
        yield host, port
    finally:
        stop_process(proc)
