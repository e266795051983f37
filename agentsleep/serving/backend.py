"""What every serving backend provides, and the errors the HTTP layer maps to status codes.

A backend serves one registry `Version` at a time and can `swap()` to another
without failing requests: requests in flight finish on the version they
started with, new requests go to the new version, and each answer carries the
name of the version that produced it.

Requests arrive validated (`protocol.ChatRequest` / `CompletionRequest`) and
answers are OpenAI-shaped dicts or SSE streams, so the vLLM backend can pass
them through and the in-process backend builds the same shapes itself.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

from ..models.registry import Version


class APIError(Exception):
    """An error with an HTTP status and an OpenAI-style error body."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        kind = self.type if self.type != "server_error" or self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class BadRequest(APIError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"


class Forbidden(APIError):
    status = 403
    type = "permission_error"


class ModelNotFound(APIError):
    status = 404
    type = "invalid_request_error"

    def __init__(self, message: str, **kw: Any):
        kw.setdefault("code", "model_not_found")
        kw.setdefault("param", "model")
        super().__init__(message, **kw)


class TooLarge(APIError):
    status = 413
    type = "invalid_request_error"


class Unavailable(APIError):
    """The backend cannot answer right now (starting, restarting, failed)."""

    status = 503
    type = "server_error"

    def __init__(self, message: str, **kw: Any):
        kw.setdefault("headers", {"Retry-After": "5"})
        super().__init__(message, **kw)


class Overloaded(Unavailable):
    """More completion requests are running or waiting than `serve.max_pending` admits."""

    def __init__(self, message: str, **kw: Any):
        kw.setdefault("code", "overloaded")
        kw.setdefault("headers", {"Retry-After": "1"})
        super().__init__(message, **kw)


class UpstreamError(APIError):
    status = 502
    type = "server_error"


class SwapError(Exception):
    """A swap could not be done; the previous version keeps serving."""


@dataclass
class SwapReport:
    """What one swap did and how long new requests were held.

    `pause_ms`: time during which new requests were held (not admitted) -
    the pause a client can see. `drain_ms`: the part of it spent waiting for
    requests in flight to finish on the old weights (reload swaps only).
    `prepare_s`: work done off the request path before the switch (loading
    weights, starting a second server).
    """

    version: str
    previous: str | None
    kind: str                    # start | load | route | adapter | reload_weights | blue_green | restart
    ok: bool = True
    pause_ms: float = 0.0
    drain_ms: float = 0.0
    prepare_s: float = 0.0
    total_s: float = 0.0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("pause_ms", "drain_ms"):
            d[k] = round(d[k], 3)
        for k in ("prepare_s", "total_s"):
            d[k] = round(d[k], 4)
        return d


@runtime_checkable
class Backend(Protocol):
    """A served model. All methods may be called from many threads at once."""

    name: str

    @property
    def version(self) -> Version | None:
        """The version new requests go to (None before `start`)."""

    def start(self, version: Version) -> SwapReport:
        """Load or start serving `version` (blocking)."""

    def swap(self, version: Version) -> SwapReport:
        """Switch to `version` with no failed requests; raises SwapError and keeps the old one on failure."""

    def chat(self, request: Any, *, pin: str | None = None) -> "dict[str, Any] | Stream":
        """An OpenAI chat completion for a validated `protocol.ChatRequest` (a dict), or a
        `Stream` of SSE bytes when request.stream is true. The response's "model" is the
        version that answered. `pin`: answer only if that version is serving (else ModelNotFound)."""

    def completion(self, request: Any, *, pin: str | None = None) -> "dict[str, Any] | Stream":
        """An OpenAI text completion for a `protocol.CompletionRequest`, or a Stream."""

    def health(self) -> dict[str, Any]:
        """State for /health: at least {"ready": bool, "state": str}."""

    def close(self) -> None:
        """Stop serving; release processes and memory."""


def sse(obj: dict[str, Any] | str) -> bytes:
    import json

    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode("utf-8")


class Stream:
    """A streamed answer: SSE-encoded chunks, cancellable from any thread.

    `version` is the version producing it (known before the first chunk). `cancel()` stops the
    producer and runs the close callbacks (release a server lease, count the request done) exactly
    once; it also runs when the Stream is garbage-collected, so a response that was never sent
    (the client left first) cannot leak a lease.
    """

    def __init__(self, chunks: Iterator[bytes], *, version: str | None = None, cancel: Any = None):
        self._it = iter(chunks)
        self.version = version
        self._callbacks: list[Any] = [cancel] if cancel is not None else []
        self._finalizer = weakref.finalize(self, _run_callbacks, self._callbacks)

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> bytes:
        return next(self._it)

    def on_close(self, fn: Any) -> None:
        self._callbacks.append(fn)

    def cancel(self) -> None:
        """Safe to call more than once, from any thread."""
        self._finalizer()


def _run_callbacks(callbacks: list[Any]) -> None:
    for fn in callbacks:
        try:
            fn()
        except Exception:  # noqa: BLE001 - best effort
            pass
