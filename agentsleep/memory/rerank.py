"""Optional reranking of recall's fused candidates (memory.rerank; off by default).

Two scorers, both local: a sentence-transformers CrossEncoder directory, or a
causal LM asked "does this memory help answer the question? yes/no" and scored
by log P(yes) - log P(no) from its next-token logits (the home's base model by
default). Both cost a forward pass per candidate, which is why it is off.
"""
from __future__ import annotations

import threading
from typing import Any

from ..config import MemoryConfig
from ..errors import InputError, ModelError

_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


class CrossEncoderReranker:
    def __init__(self, path: str):
        from sentence_transformers import CrossEncoder

        try:
            self.model = CrossEncoder(path, device="cpu")
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"rerank: cannot load cross-encoder at {path} ({e})") from None

    def score(self, query: str, docs: list[str]) -> list[float]:
        return [float(s) for s in self.model.predict([(query, d) for d in docs], show_progress_bar=False)]


class LMReranker:
    """Yes/no relevance from a causal LM's next-token logits (batched, greedy-free, no generation)."""

    PROMPT = ("Memory: {doc}\nQuestion: {query}\n"
              "Does the memory help answer the question? Answer yes or no.")

    def __init__(self, path: str):
        from ..models.loader import load, resolve

        self.model, self.tok = load(resolve(path or "embedded"))
        yes = self.tok.encode(" yes", add_special_tokens=False) or self.tok.encode("yes", add_special_tokens=False)
        no = self.tok.encode(" no", add_special_tokens=False) or self.tok.encode("no", add_special_tokens=False)
        self.yes, self.no = yes[-1], no[-1]

    def _prompt(self, query: str, doc: str) -> str:
        msg = self.PROMPT.format(doc=doc, query=query)
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                                add_generation_prompt=True) + "Answer:"
        return msg + "\nAnswer:"

    def score(self, query: str, docs: list[str]) -> list[float]:
        import torch

        out: list[float] = []
        for s in range(0, len(docs), 8):
            batch = [self._prompt(query, d) for d in docs[s:s + 8]]
            enc = self.tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=512)
            with torch.no_grad():
                logits = self.model(**enc).logits[:, -1, :].float()  # left padding: the last position is real
            lp = torch.log_softmax(logits, dim=-1)
            out += (lp[:, self.yes] - lp[:, self.no]).tolist()
        return out


def make_reranker(cfg: MemoryConfig):
    """The configured reranker, loaded once per process."""
    key = (cfg.rerank, cfg.rerank_model)
    with _LOCK:
        if key not in _CACHE:
            if cfg.rerank == "cross-encoder":
                if not cfg.rerank_model:
                    raise InputError("rerank: memory.rerank = 'cross-encoder' needs memory.rerank_model (a local directory)")
                _CACHE[key] = CrossEncoderReranker(cfg.rerank_model)
            elif cfg.rerank == "lm":
                _CACHE[key] = LMReranker(cfg.rerank_model)
            else:
                raise InputError(f"rerank: memory.rerank is '{cfg.rerank}'; set it to 'cross-encoder' or 'lm'")
        return _CACHE[key]
