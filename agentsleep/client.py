"""The CLI's way to a running `agentsleep serve` for the same home.

`agentsleep serve` writes ``<home>/serve.json`` (its pid and local URL) and removes it
on exit. When that file names a live process, the commands that touch the store or
the model (remember, recall, ask, status, forget, sleep-now) send their arguments to
its /agentsleep routes instead of importing Chroma, torch and the models themselves,
and the server stays the home's one writer. Standard library only: this module is
imported on every such command, before anything heavy.
"""
from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import errors

SERVE_FILE = "serve.json"


class ServerGone(Exception):
    """Nothing answered at the address serve.json names (the request was never received)."""


class Client:
    """JSON over HTTP to one server; its errors come back as the same AgentsleepError classes."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0):
        u = urlsplit(url)
        self.url = url
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.api_key = api_key
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            try:
                conn.request(method, "/agentsleep" + path,
                             body=None if body is None else json.dumps(body, default=str).encode(), headers=headers)
            except (ConnectionRefusedError, FileNotFoundError) as e:
                raise ServerGone(str(e)) from None
            resp = conn.getresponse()
            data = resp.read()
            _record_timing(path, resp.getheader("Server-Timing"))
        except (OSError, http.client.HTTPException) as e:  # HTTPException: cut short, or not an HTTP server
            raise errors.AgentsleepError(f"the server at {self.url} did not answer ({type(e).__name__}: {e}); "
                                         "check `agentsleep serve`, or stop it to run commands locally") from None
        finally:
            conn.close()
        try:
            out = json.loads(data or b"null")
        except ValueError:
            raise errors.AgentsleepError(f"the server at {self.url} answered HTTP {resp.status} without JSON") from None
        if resp.status >= 400:
            raise as_error(out, resp.status, self.url)
        return out


def _record_timing(path: str, header: str | None) -> None:
    """With AGENTSLEEP_TIMING_FILE set (`bench cli` sets it), append the server's own time for this
    request, in seconds: the benchmark subtracts it from the command's wall time."""
    out = os.environ.get("AGENTSLEEP_TIMING_FILE")
    if not out or not header or "dur=" not in header:
        return
    try:
        ms = float(header.split("dur=", 1)[1].split(";", 1)[0].split(",", 1)[0])
        with open(out, "a", encoding="utf-8") as f:
            f.write(f"{path} {ms / 1000:.4f}\n")
    except (ValueError, OSError):
        pass


def as_error(body: Any, status: int, url: str) -> errors.AgentsleepError:
    """The server's error object as the exception the command would have raised locally."""
    e = body.get("error") if isinstance(body, dict) else None
    if not isinstance(e, dict):
        return errors.AgentsleepError(f"the server at {url} answered HTTP {status}")
    msg = str(e.get("message") or f"HTTP {status}")
    if status == 401:
        return errors.AgentsleepError(f"the server at {url} refused the API key ({msg}); "
                                      "set serve.api_key (or AGENTSLEEP_SERVE__API_KEY) to its key")
    cls = getattr(errors, str(e.get("type") or ""), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.AgentsleepError)):
        cls = errors.InputError if status == 400 else errors.AgentsleepError
    return cls(msg)


def find(root: Path) -> Client | None:
    """A client for the server running for `root`, or None (no serve.json, or its process is gone;
    AGENTSLEEP_NO_SERVER makes commands run here)."""
    if os.environ.get("AGENTSLEEP_NO_SERVER"):
        return None
    info = running_server(root)
    return Client(info["url"], api_key(Path(root))) if info else None


def running_server(root: Path) -> dict[str, Any] | None:
    """serve.json of the `agentsleep serve` running for `root` (whatever AGENTSLEEP_NO_SERVER says), or None."""
    try:
        info = json.loads((Path(root) / SERVE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    from .procs import pid_alive

    if not isinstance(info, dict) or not isinstance(info.get("url"), str) \
            or not pid_alive(info.get("pid"), info.get("started_at")):
        return None  # a server killed hard leaves its file behind; its pid tells
    return info


def api_key(root: Path) -> str | None:
    """serve.api_key as the server reads it: AGENTSLEEP_SERVE__API_KEY (any case), else config.toml's
    [serve] api_key. Read directly: loading the settings model would cost more than the request."""
    import tomllib

    for k, v in os.environ.items():
        if k.upper() == "AGENTSLEEP_SERVE__API_KEY":
            return v or None
    try:
        with open(root / "config.toml", "rb") as f:
            serve = tomllib.load(f).get("serve") or {}
    except (OSError, ValueError):
        serve = {}
    key = serve.get("api_key") if isinstance(serve, dict) else None
    return key if isinstance(key, str) and key else None


def home_root(path: Path | None) -> Path:
    """The home a command means: --home / $AGENTSLEEP_HOME, else home.DEFAULT_HOME (kept in step;
    not imported from there, which would load the settings and the store's modules)."""
    return Path(path or os.environ.get("AGENTSLEEP_HOME") or "~/.agentsleep/default").expanduser()


def wait_sleep(c: Client, run_id: str, poll_s: float = 1.0, on_progress: Any = None) -> dict[str, Any]:
    """Follow a sleep the server started until it ends; its result (sleep-now's --json shape)."""
    while True:
        s = c.call("GET", f"/sleep/{run_id}")
        if s.get("state") == "done":
            res = s.get("result") or {}
            if res.get("status") == "failed" and res.get("error"):
                raise errors.SleepError(f"sleep-now: {res['error']}")
            return res
        if on_progress:
            on_progress(s)
        time.sleep(poll_s)
