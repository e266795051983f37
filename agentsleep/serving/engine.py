"""The in-process backend: one loaded model version, swapped atomically.

`swap()` loads the new version completely before replacing the reference
that requests read, so requests in flight finish on the old weights and new
ones start on the new weights; nobody waits on a half-loaded model.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig
from ..models import generate as gen
from ..models.loader import load
from ..models.registry import Version


@dataclass(frozen=True)
class Loaded:
    version: Version
    model: Any
    tok: Any


class Engine:
    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self._live: Loaded | None = None
        self._gen_lock = threading.Lock()  # torch generate is not re-entrant on one model
        self._swap_lock = threading.Lock()
        self.swaps = 0

    @property
    def version(self) -> Version | None:
        return self._live.version if self._live else None

    @property
    def live(self) -> Loaded:
        if self._live is None:
            raise RuntimeError("engine has no model loaded; call swap(version) first")
        return self._live

    def swap(self, version: Version) -> Loaded:
        """Load `version` fully, then make it live in one reference assignment."""
        with self._swap_lock:
            model, tok = load(version.weights, dtype=self.cfg.dtype, device=self.cfg.device)
            self._live = Loaded(version, model, tok)
            self.swaps += 1
            return self._live

    def complete(self, prompts: list[str], *, max_new_tokens: int | None = None) -> tuple[list[str], str]:
        """Raw completions of rendered prompts, and the version that produced them."""
        live = self.live
        with self._gen_lock:
            out = gen.generate(live.model, live.tok, prompts, max_new_tokens=max_new_tokens or self.cfg.max_new_tokens)
        return out, live.version.name

    def answer(self, question: str, memories: list[str] | None = None, *, max_new_tokens: int | None = None) -> str:
        live = self.live
        prompt = gen.chat(live.tok, question, system=gen.memory_system(memories or []))
        with self._gen_lock:
            return gen.generate(live.model, live.tok, [prompt], max_new_tokens=max_new_tokens or self.cfg.max_new_tokens)[0]
