"""Start and stop a local `chroma run` server (tests, benchmarks, and trying server mode locally)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import StoreUnavailableError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chroma_executable() -> str:
    exe = Path(sys.executable).parent / "chroma"
    found = str(exe) if exe.is_file() else shutil.which("chroma")
    if not found:
        raise StoreUnavailableError("the `chroma` command is not installed next to this Python (pip install chromadb)")
    return found


def start(path: Path, log: Path, port: int | None = None, timeout: float = 60.0,
          token: str | None = None) -> tuple[subprocess.Popen, str, int]:
    """Start a Chroma server on 127.0.0.1; return (process, host, port) once its heartbeat answers.

    Without `token`: `chroma run` (Chroma's own server). With `token`: Chroma's
    Python server under uvicorn with its token authentication, because the
    `chroma run` server of chromadb 1.x has no authentication of its own. The
    token travels in the environment, never on the command line (`ps` shows that).
    """
    import os

    import httpx

    host, port = "127.0.0.1", port or free_port()
    if token:
        cmd = [sys.executable, "-m", "uvicorn", "agentsleep.memory.chroma_app:app", "--host", host, "--port", str(port), "--log-level", "warning"]
        env = {**os.environ, "IS_PERSISTENT": "TRUE", "PERSIST_DIRECTORY": str(path), "ANONYMIZED_TELEMETRY": "False",
               "CHROMA_SERVER_AUTHN_PROVIDER": "chromadb.auth.token_authn.TokenAuthenticationServerProvider",
               "CHROMA_SERVER_AUTHN_CREDENTIALS": token}
    else:
        cmd = [chroma_executable(), "run", "--path", str(path), "--host", host, "--port", str(port)]
        env = None
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    url = f"http://{host}:{port}/api/v2/heartbeat"
    while True:
        if proc.poll() is not None:
            raise StoreUnavailableError(f"chroma server exited with {proc.returncode}: "
                                        f"{log.read_text(errors='replace')[-500:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return proc, host, port
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise StoreUnavailableError(f"chroma server did not answer {url} within {timeout:.0f} s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
