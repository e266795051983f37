"""The in-process backend: an `Engine` behind the OpenAI request shapes.

Every request takes a snapshot of the live model at its start and finishes
on it, so a swap in the middle never mixes versions; the swap loads the new
version beside the old one and switches one reference.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from ..config import ModelConfig
from ..models.registry import Version
from .backend import ModelNotFound, Stream, SwapError, SwapReport, Unavailable, sse
from .engine import Engine, GenParams, GenResult, Loaded, TokenStream
from .protocol import ChatRequest, CompletionRequest, new_id, now


def _params(req: ChatRequest | CompletionRequest) -> GenParams:
    return GenParams(max_tokens=req.limit(), default_max_tokens=req.default_limit, temperature=req.temperature or 0.0, top_p=req.top_p or 1.0,
                     stop=req.stops(), seed=req.seed)


def chat_messages(req: ChatRequest) -> list[dict[str, str]]:
    out = []
    for m in req.messages:
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": m.text()})
    return out


def _usage(r: GenResult) -> dict[str, int]:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_cfg: ModelConfig, engine: Engine | None = None):
        self.engine = engine or Engine(model_cfg)
        self.cfg = model_cfg

    @property
    def version(self) -> Version | None:
        return self.engine.version

    def start(self, version: Version) -> SwapReport:
        self.engine.swap(version)
        rep = self.engine.last_swap
        rep.kind = "start"
        return rep

    def swap(self, version: Version) -> SwapReport:
        prev = self.engine.version
        try:
            self.engine.swap(version)
        except Exception as e:  # noqa: BLE001
            raise SwapError(f"cannot load {version.name}: {e}") from None
        rep = self.engine.last_swap
        rep.detail["change"] = version.manifest.get("kind", "sleep")
        rep.detail["from"] = prev.name if prev else None
        return rep

    def _live(self, pin: str | None) -> Loaded:
        try:
            live = self.engine.live
        except RuntimeError:
            raise Unavailable("the model is still loading") from None
        if pin and live.version.name != pin:
            raise ModelNotFound(f"model '{pin}' is no longer served (now {live.version.name}); "
                                "ask for 'agentsleep' to follow the current version")
        return live

    # -- chat -----------------------------------------------------------------
    def chat(self, req: ChatRequest, *, pin: str | None = None) -> dict[str, Any] | Stream:
        live = self._live(pin)
        prompt = self.engine.render_chat(chat_messages(req), live)
        params = _params(req)
        if req.stream:
            return self._chat_stream(req, self.engine.stream(prompt, params, live=live), live)
        r = self.engine.generate(prompt, params, live=live)
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": r.version,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                             "finish_reason": r.finish_reason, "logprobs": None}],
                "usage": _usage(r)}

    def _chat_stream(self, req: ChatRequest, it: TokenStream, live: Loaded) -> Stream:
        cid, created, model = new_id("chatcmpl"), now(), live.version.name

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

        events = _events(it, first=[chunk({"role": "assistant", "content": ""})],
                         piece=lambda t: chunk({"content": t}), finish=lambda r: chunk({}, r),
                         usage=(lambda u: sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                                               "model": model, "choices": [], "usage": u}))
                         if (req.stream_options or {}).get("include_usage") else None)
        return Stream(events, version=model, cancel=it.cancel)

    # -- completions ------------------------------------------------------------
    def completion(self, req: CompletionRequest, *, pin: str | None = None) -> dict[str, Any] | Stream:
        live = self._live(pin)
        params = _params(req)
        if req.stream:
            prompt = req.prompts()[0]
            return self._completion_stream(req, prompt, self.engine.stream(prompt, params, live=live), live)
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for i, prompt in enumerate(req.prompts()):
            r = self.engine.generate(prompt, params, live=live)
            choices.append({"index": i, "text": (prompt if req.echo else "") + r.text,
                            "finish_reason": r.finish_reason, "logprobs": None})
            for k, v in _usage(r).items():
                usage[k] += v
        return {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": live.version.name,
                "choices": choices, "usage": usage}

    def _completion_stream(self, req: CompletionRequest, prompt: str, it: TokenStream, live: Loaded) -> Stream:
        cid, created, model = new_id("cmpl"), now(), live.version.name

        def chunk(text: str, finish: str | None = None) -> bytes:
            return sse({"id": cid, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]})

        events = _events(it, first=[chunk(prompt)] if req.echo else [], piece=chunk, finish=lambda r: chunk("", r),
                         usage=(lambda u: sse({"id": cid, "object": "text_completion", "created": created,
                                               "model": model, "choices": [], "usage": u}))
                         if (req.stream_options or {}).get("include_usage") else None)
        return Stream(events, version=model, cancel=it.cancel)

    # -- state ------------------------------------------------------------------
    def context_length(self) -> int | None:
        live = self.engine._live
        return live.context_length if live else None

    def health(self) -> dict[str, Any]:
        v = self.engine.version
        return {"ready": v is not None, "state": "ready" if v is not None else "starting",
                "device": self.cfg.device, "dtype": self.cfg.dtype, "loads": self.engine.swaps,
                "context_length": self.context_length()}

    def close(self) -> None:
        self.engine._live = None


def _events(it: TokenStream, *, first: list[bytes], piece: Callable[[str], bytes], finish: Callable[[str], bytes],
            usage: Callable[[dict], bytes] | None) -> Iterator[bytes]:
    """The server-sent events both streaming endpoints send: text pieces, the final chunk, optional
    usage, an in-band error if generation fails after the headers went out, then [DONE]."""
    yield from first
    try:
        for p in it:
            if isinstance(p, GenResult):
                yield finish(p.finish_reason)
                if usage:
                    yield usage(_usage(p))
            else:
                yield piece(p)
    except Exception as e:  # noqa: BLE001 - headers are sent; report in-band
        yield sse({"error": {"message": f"generation failed: {type(e).__name__}: {e}",
                             "type": "server_error", "param": None, "code": None}})
    finally:
        it.close()
    yield sse("[DONE]")
