"""The vLLM backend: OpenAI requests proxied to a supervised vLLM server.

The supervisor (`agentsleep.serving.vllm`) owns the server process(es) and
the swaps; this class only forwards `/v1/chat/completions` and
`/v1/completions` to the route the supervisor hands out, names the version
in every answer, and retries a request (up to twice) when the server died under it
(generation is a pure function of the request, so a retry is safe unless
part of a stream was already sent).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterator

from ..errors import ModelError
from ..models.registry import Version
from .backend import APIError, Stream, SwapReport, UpstreamError, sse
from .protocol import ChatRequest, CompletionRequest
from .vllm import VLLMSupervisor, vllm_available

_OURS = {"use_memory", "memory_k"}


def _upstream_error(status: int, text: str) -> APIError:
    try:
        err = json.loads(text)
    except ValueError:
        err = {"message": text[:500]}
    if isinstance(err, dict) and "error" in err:
        err = err["error"]
    if not isinstance(err, dict):
        err = {"message": str(err)}
    msg = str(err.get("message") or text[:500])
    code = err.get("code")
    e = APIError(msg, status=status, code=code if isinstance(code, str) else None, param=err.get("param"))
    e.type = err.get("type") or ("invalid_request_error" if status < 500 else "server_error")
    return e


def _no_room(resp: Any, body: dict[str, Any], req: ChatRequest | CompletionRequest) -> bool:
    """vLLM refused the server's default length (not the client's) for want of room in the context."""
    return (resp.status_code == 400 and "max_tokens" in body and req.limit() is None
            and "context length" in resp.text.lower())


class VLLMBackend:
    name = "vllm"

    def __init__(self, supervisor: Any, *, request_timeout: float = 600, acquire_timeout: float = 300):
        self.sup = supervisor
        self.request_timeout = request_timeout
        self.acquire_timeout = acquire_timeout

    @classmethod
    def for_home(cls, home: Any, *, url: str | None = None, api_key: str | None = None,
                 extra_args: list[str] | tuple[str, ...] = (), log_dir: Path | None = None) -> "VLLMBackend":
        if url is None and (why := vllm_available()):
            raise ModelError(f"--backend vllm: {why}; or attach to a running server with serve.vllm_url")
        sup = VLLMSupervisor(url=url, api_key=api_key, log_dir=log_dir or home.root / "logs",
                             # room for a few sleeps' adapters composed into one before weights must reload
                             max_lora_rank=max(4 * int(home.config.sleep.seed.lora_r), 8), extra_args=list(extra_args),
                             dtype=home.config.model.dtype)
        return cls(sup)

    # -- lifecycle ------------------------------------------------------------
    @property
    def version(self) -> Version | None:
        return self.sup.version

    @property
    def needs_swap(self) -> bool:
        """The served weights cannot be trusted (a reload failed midway): swap even to the same version."""
        return bool(getattr(self.sup, "needs_swap", False))

    def start(self, version: Version) -> SwapReport:
        return self.sup.start(version)

    def swap(self, version: Version) -> SwapReport:
        return self.sup.swap(version)

    def health(self) -> dict[str, Any]:
        return self.sup.health()

    def close(self) -> None:
        self.sup.close()

    # -- requests -------------------------------------------------------------
    def chat(self, req: ChatRequest, *, pin: str | None = None) -> dict[str, Any] | Stream:
        return self._call("/v1/chat/completions", req, pin)

    def completion(self, req: CompletionRequest, *, pin: str | None = None) -> dict[str, Any] | Stream:
        return self._call("/v1/completions", req, pin)

    def _call(self, path: str, req: ChatRequest | CompletionRequest, pin: str | None) -> dict[str, Any] | Stream:
        import httpx

        body = req.model_dump(exclude_none=True, exclude=_OURS)
        if req.default_limit:
            body["max_tokens"] = req.default_limit
        http = self.sup.http
        for attempt in range(4):
            route = self.sup.lease(pin, timeout=self.acquire_timeout)
            body["model"] = route.model
            try:
                if req.stream:
                    request = http.build_request("POST", route.url + path, json=body, headers=route.headers,
                                                 timeout=self.request_timeout)
                    resp = http.send(request, stream=True)
                else:
                    resp = http.post(route.url + path, json=body, headers=route.headers, timeout=self.request_timeout)
            except httpx.TransportError as e:
                self.sup.release(route)
                if attempt < 2 and self.sup.recover(route, timeout=self.acquire_timeout):
                    continue
                raise UpstreamError(f"vLLM did not answer ({type(e).__name__}: {e}); see GET /health") from None
            if resp.status_code >= 400:
                try:
                    resp.read()
                finally:
                    resp.close()
                    self.sup.release(route)
                if _no_room(resp, body, req):
                    del body["max_tokens"]  # vLLM then gives what room the prompt leaves, less than the default
                    continue
                raise _upstream_error(resp.status_code, resp.text)
            if req.stream:
                return self._relay(resp, route)
            self.sup.release(route)
            data = resp.json()
            data["model"] = route.version.name
            return data
        raise UpstreamError("vLLM did not answer")  # not reached

    def _relay(self, resp: Any, route: Any) -> Stream:
        import httpx

        version = route.version.name
        released = threading.Event()
        lock = threading.Lock()

        def release() -> None:  # once, whichever of the stream's end and cancel() comes first
            with lock:
                if released.is_set():
                    return
                released.set()
            self.sup.release(route)

        def events() -> Iterator[bytes]:
            try:
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        yield sse("[DONE]")
                        continue
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        yield f"data: {data}\n\n".encode()
                        continue
                    if isinstance(obj, dict) and "model" in obj:
                        obj["model"] = version
                    yield sse(obj)
            except (httpx.HTTPError, RuntimeError) as e:
                if not released.is_set():
                    yield sse({"error": {"message": f"vLLM stream broke: {type(e).__name__}: {e}",
                                         "type": "server_error", "param": None, "code": None}})
                    yield sse("[DONE]")
            finally:
                resp.close()
                release()

        def cancel() -> None:
            release()
            resp.close()

        return Stream(events(), version=version, cancel=cancel)
