"""The OpenAI request shapes we accept, validated once at the HTTP edge.

Unknown fields are kept (the vLLM backend passes them through; the in-process
backend ignores them). Two agentsleep extensions: `use_memory` (inject the
top memories into the system turn; default from serve.inject_memories) and
`memory_k` (how many). Sampling defaults to greedy (temperature 0) and the
length to model.max_new_tokens when the client does not say otherwise, so
the same question gets the same answer from both backends.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .backend import BadRequest

MAX_STOP = 8
MAX_STOP_CHARS = 64


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: str
    text: str | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class _Common(_Open):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=-2 ** 63, le=2 ** 64 - 1)  # what torch.manual_seed takes
    # The server's default length (model.max_new_tokens) when the client set none: unlike a client's
    # max_tokens it shrinks to the room the prompt leaves instead of failing a long prompt.
    _default_limit: int | None = PrivateAttr(None)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        for s in ([v] if isinstance(v, str) else v if isinstance(v, list) else []):
            # transformers' stop-string matcher costs vocabulary x length steps under the generation lock
            if isinstance(s, str) and len(s) > MAX_STOP_CHARS:
                raise ValueError(f"a stop string may be at most {MAX_STOP_CHARS} characters")
        if isinstance(v, list):
            if len(v) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop strings")
            if any(not s for s in v):
                raise ValueError("stop strings must not be empty")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) and self.stop else list(self.stop or [])

    def limit(self) -> int | None:
        """The client's own length limit (None: it set none)."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def default_limit(self) -> int | None:
        """The length to use when the client set none; it yields to the context window."""
        return None if self.limit() is not None else self._default_limit

    def set_default_limit(self, n: int | None) -> None:
        self._default_limit = n


class ChatRequest(_Common):
    messages: list[Message] = Field(..., min_length=1)
    use_memory: bool | None = None
    memory_k: int | None = Field(None, ge=1, le=50)


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def parse(cls: type[_Common], body: Any) -> _Common:
    """Validate a decoded JSON body; any problem becomes one 400 naming the field."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    try:
        req = cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or None
        raise BadRequest(f"{loc or 'body'}: {err['msg']}", param=loc) from None
    if req.n != 1:
        raise BadRequest("only n=1 is supported", param="n")
    if isinstance(req, CompletionRequest):
        if not req.prompts() or any(not isinstance(p, str) for p in req.prompts()):
            raise BadRequest("prompt: give a string or a list of strings", param="prompt")
        if req.stream and len(req.prompts()) != 1:
            raise BadRequest("prompt: streaming takes a single prompt", param="prompt")
    return req


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
