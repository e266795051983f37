"""Awake memory: episodes in a Chroma vector store, retrieved into prompts."""
from .episode import Episode, EpisodeKind, RememberResult
from .store import EpisodeStore

__all__ = ["Episode", "EpisodeKind", "RememberResult", "EpisodeStore"]
