"""The episode: one thing the agent lived through, as plain data."""
from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from ..errors import InputError

EpisodeKind = Literal["turn", "fact", "observation", "tool"]
KINDS: tuple[str, ...] = ("turn", "fact", "observation", "tool")
Trust = Literal["trusted", "untrusted"]


DEFAULT_NAMESPACE = "default"
NAMESPACE_MAX_CHARS = 200


def check_namespace(namespace: Any, what: str = "namespace") -> str:
    """A namespace is a hard partition (user / agent / conversation): a non-empty string of at most
    200 characters without control characters, so it can be stored and filtered on exactly."""
    if not isinstance(namespace, str):
        raise InputError(f"{what} must be a string, got {type(namespace).__name__}")
    if not namespace.strip():
        raise InputError(f"{what} is empty; use '{DEFAULT_NAMESPACE}' or a name such as 'user:alice'")
    if len(namespace) > NAMESPACE_MAX_CHARS:
        raise InputError(f"{what} is {len(namespace)} characters, over the limit of {NAMESPACE_MAX_CHARS}")
    if any(unicodedata.category(c) == "Cc" for c in namespace):
        raise InputError(f"{what} {namespace[:40]!r} contains control characters")
    return namespace


def new_episode_id() -> str:
    return "ep-" + uuid.uuid4().hex[:16]


def content_hash(text: str) -> str:
    """Hash of the text with whitespace normalised: equal hashes = exact duplicates."""
    norm = re.sub(r"\s+", " ", text).strip()
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:32]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Episode(BaseModel):
    """A stored memory. Long texts become several chunk episodes sharing `parent_id`."""

    id: str
    text: str
    kind: EpisodeKind = "fact"
    source: str = "user"
    session: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    trust: Trust = "trusted"
    parent_id: str | None = None
    chunk_index: int = 0
    chunk_count: int = 1
    content_hash: str = ""
    provenance: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # Hard partition recall never crosses; records stored before namespaces read as "default".
    namespace: str = DEFAULT_NAMESPACE
    # When it happened (the caller's date, e.g. a conversation's session date); else when remembered.
    event_time: datetime | None = None
    speaker: str | None = None
    # Neighbouring turns of the same session, attached by recall(neighbours=N); never stored.
    context: list["Episode"] = Field(default_factory=list)
    # Filled from the consolidation ledger when read; not stored in Chroma.
    consolidated_in: str | None = None
    # The id of a newer episode that states another value for the same thing (memory/supersede.py); not stored in Chroma.
    superseded_by: str | None = None
    score: float | None = None

    def to_metadata(self) -> dict[str, Any]:
        """Chroma metadata: flat, no None values (Chroma rejects them)."""
        md: dict[str, Any] = {
            "kind": self.kind,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
            "created_ts": self.created_at.timestamp(),
            "trust": self.trust,
            "chunk_index": self.chunk_index,
            "chunk_count": self.chunk_count,
            "content_hash": self.content_hash,
            "namespace": self.namespace,
            "event_ts": (self.event_time or self.created_at).timestamp(),
        }
        if self.event_time is not None:
            md["event_at"] = self.event_time.isoformat()
        if self.speaker is not None:
            md["speaker"] = self.speaker
        if self.session is not None:
            md["session"] = self.session
        if self.parent_id is not None:
            md["parent_id"] = self.parent_id
        for k, v in self.provenance.items():
            md[f"prov_{k}"] = v
        return md

    @classmethod
    def from_record(cls, id: str, text: str, md: dict[str, Any], score: float | None = None) -> "Episode":
        prov = {k[5:]: v for k, v in md.items() if k.startswith("prov_")}
        created = datetime.fromisoformat(md["created_at"])
        return cls(
            id=id, text=text, kind=md.get("kind", "fact"), source=md.get("source", "user"),
            session=md.get("session"), created_at=created,
            trust=md.get("trust", "trusted"), parent_id=md.get("parent_id"),
            chunk_index=int(md.get("chunk_index", 0)), chunk_count=int(md.get("chunk_count", 1)),
            content_hash=md.get("content_hash", ""), provenance=prov, score=score,
            namespace=md.get("namespace") or DEFAULT_NAMESPACE, speaker=md.get("speaker"),
            event_time=datetime.fromisoformat(md["event_at"]) if md.get("event_at") else created,
        )

    def when(self) -> datetime:
        return self.event_time or self.created_at

    def prompt_text(self) -> str:
        """The memory as put into a prompt: its event date first (temporal questions need it), the
        speaker when known and not already at the text's start."""
        body = self.text
        if self.speaker and not body.startswith(f"{self.speaker}:"):
            body = f"{self.speaker}: {body}"
        t = self.when()
        t = t.astimezone() if t.tzinfo else t  # the local date: a date given alone is local midnight
        return f"[{t.strftime('%d %B %Y').lstrip('0')}] {body}"

    def public(self) -> dict[str, Any]:
        """JSON-ready dict for the CLI and APIs."""
        d = self.model_dump(mode="json", exclude_none=True)
        if not d.get("context"):
            d.pop("context", None)
        return d


class RememberResult(BaseModel):
    """What `remember` did: the id to refer to, its chunks, and whether it was a duplicate."""

    id: str
    chunk_ids: list[str]
    duplicate: bool = False
    kind: EpisodeKind
    chars: int


MIN_CHUNK_CHARS = 100


def chunk_text(text: str, size: int, fits: Callable[[str], bool] | None = None) -> list[str]:
    """Split into exact, non-overlapping slices of at most `size` chars.

    Cuts prefer a sentence end, then any whitespace, in the second half of the
    window; "".join(chunks) == text, so a chunked memory reassembles exactly.
    `fits(chunk)`, when given, says whether the embedding model reads a whole
    chunk; one it would cut short is split again, down to MIN_CHUNK_CHARS (a
    character of Japanese is a token, a word of English about a quarter).
    """
    chunks = _slices(text, size)
    if fits is None:
        return chunks
    out: list[str] = []
    for c in chunks:
        out += [c] if len(c) <= MIN_CHUNK_CHARS or fits(c) else chunk_text(c, max(MIN_CHUNK_CHARS, len(c) // 2), fits)
    return out


def _slices(text: str, size: int) -> list[str]:
    chunks: list[str] = []
    pos = 0
    while len(text) - pos > size:
        window = text[pos:pos + size]
        cut = max((m.end() for m in re.finditer(r"[.!?\n]\s|[。！？]", window[size // 2:])), default=0)
        if cut:
            cut += size // 2
        else:
            ws = window.rfind(" ", size // 2)
            cut = ws + 1 if ws > 0 else size
        while cut > 0 and pos + cut < len(text) and (_joins(text[pos + cut]) or text[pos + cut - 1] == "\u200d"):
            # never split a character from its marks, nor the parts of a joined emoji
            cut -= 1
        if cut == 0:  # a window of marks alone (pathological): cut where the window ends
            cut = size
        chunks.append(text[pos:pos + cut])
        pos += cut
    chunks.append(text[pos:])
    return chunks


def _joins(ch: str) -> bool:
    """Whether `ch` belongs to the character before it: a combining mark, a zero-width joiner or a variation
    selector (an accent, a Devanagari vowel sign, the parts of an emoji sequence)."""
    import unicodedata

    return unicodedata.category(ch) in ("Mn", "Mc", "Me") or ch in "\u200d\ufe0e\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef"
