"""Start and stop a local `chroma run` server (tests, benchmarks, and trying server mode locally)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .. import guard
from ..errors import StoreUnavailableError
from ..procs import free_port, terminate_group, wait_until


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
        proc = subprocess.Popen(guard.command(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # its own process group: stop() takes its children too
    url = f"http://{host}:{port}/api/v2/heartbeat"

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        up = wait_until(answers, timeout, interval=0.2, stop=lambda: proc.poll() is not None)
    except BaseException:  # Ctrl-C while waiting: its own session would outlive us, holding the data folder
        stop(proc)
        raise
    if up and proc.poll() is None:  # (a server that exited at once may have been answered for by another)
        return proc, host, port
    if proc.poll() is not None:
        raise StoreUnavailableError(f"chroma server exited with {proc.returncode}: "
                                    f"{log.read_text(errors='replace')[-500:]}")
    stop(proc)
    raise StoreUnavailableError(f"chroma server did not answer {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it after 10 s."""
    terminate_group(proc, grace=10.0)
