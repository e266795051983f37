"""Where a request goes: a vLLM server, a route on it, and the gate requests pass to get one.

The single-home supervisor and the per-home lanes of a shared server route the same way: a
request leases a route (waiting while a server starts, restarts or a reload holds requests),
releases it when its answer is done, and after a transport error asks `recover` whether a retry
can succeed. `Gate` is that logic, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentsleep.models.registry import Version

from .process import SERVED_NAME, VLLMProcess


@dataclass(eq=False)
class Server:
    """A vLLM server we talk to: managed (a process we own) or attached (a URL)."""

    url: str
    api_key: str | None
    proc: VLLMProcess | None
    base: Version | None          # the version whose full weights the server holds (None: unknown)
    sig: dict[str, Any] | None    # their architecture signature
    base_dir: Path | None
    served_name: str = SERVED_NAME
    loras: dict[str, Version] = field(default_factory=dict)
    inflight: int = 0
    reloaded: bool = False   # its weights were already replaced in place once, on a traced graph

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def alive(self) -> bool:
        return self.proc is None or self.proc.alive()


@dataclass(eq=False)
class Route:
    """Where one request goes: a server and the model name that serves `version` there."""

    server: Server
    model: str
    version: Version
    inflight: int = 0

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def headers(self) -> dict[str, str]:
        return self.server.headers
