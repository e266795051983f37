"""The episode: one thing the agent lived through, as plain data."""
from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

EpisodeKind = Literal["turn", "fact", "observation", "tool"]
KINDS: tuple[str, ...] = ("turn", "fact", "observation", "tool")
Trust = Literal["trusted", "untrusted"]


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
    # Filled from the consolidation ledger when read; not stored in Chroma.
    consolidated_in: str | None = None
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
        }
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
        return cls(
            id=id, text=text, kind=md.get("kind", "fact"), source=md.get("source", "user"),
            session=md.get("session"), created_at=datetime.fromisoformat(md["created_at"]),
            trust=md.get("trust", "trusted"), parent_id=md.get("parent_id"),
            chunk_index=int(md.get("chunk_index", 0)), chunk_count=int(md.get("chunk_count", 1)),
            content_hash=md.get("content_hash", ""), provenance=prov, score=score,
        )

    def public(self) -> dict[str, Any]:
        """JSON-ready dict for the CLI and APIs."""
        return self.model_dump(mode="json", exclude_none=True)


class RememberResult(BaseModel):
    """What `remember` did: the id to refer to, its chunks, and whether it was a duplicate."""

    id: str
    chunk_ids: list[str]
    duplicate: bool = False
    kind: EpisodeKind
    chars: int


def chunk_text(text: str, size: int) -> list[str]:
    """Split into exact, non-overlapping slices of at most `size` chars.

    Cuts prefer a sentence end, then any whitespace, in the second half of the
    window; "".join(chunks) == text, so a chunked memory reassembles exactly.
    """
    chunks: list[str] = []
    pos = 0
    while len(text) - pos > size:
        window = text[pos:pos + size]
        cut = max((m.end() for m in re.finditer(r"[.!?\n]\s", window[size // 2:])), default=0)
        if cut:
            cut += size // 2
        else:
            ws = window.rfind(" ", size // 2)
            cut = ws + 1 if ws > 0 else size
        chunks.append(text[pos:pos + cut])
        pos += cut
    chunks.append(text[pos:])
    return chunks
