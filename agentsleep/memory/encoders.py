"""Sentence encoders behind the store's embedding function.

A CLI process that only stores or searches a memory should not spend seconds
importing torch, transformers and sentence-transformers. When the embedding
model is a mean-pooled, normalised sentence-transformers BERT (the embedded
all-MiniLM-L6-v2 is one), its transformer is exported once to ONNX, in a child
process, and cached under the user's cache directory; from then on every
process encodes with onnxruntime and tokenizers (both already installed with
chromadb). The vectors equal sentence-transformers' within 1e-5, so a store
written by either is read by the other. Any other model directory, or a
failed export, uses sentence-transformers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ModelError

log = logging.getLogger(__name__)
_ENCODERS: dict[str, "Encoder"] = {}
_LOCK = threading.Lock()
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 17


class Encoder(Protocol):
    max_tokens: int  # what the model reads of a text; the rest is cut off before encoding

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length sentence vectors, one row per text."""

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens each text is, special tokens included, before any cut."""


def cache_dir() -> Path:
    """$AGENTSLEEP_CACHE, else $XDG_CACHE_HOME/agentsleep, else ~/.cache/agentsleep."""
    if os.environ.get("AGENTSLEEP_CACHE"):
        return Path(os.environ["AGENTSLEEP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentsleep"


def onnx_settings(model_dir: str) -> dict[str, Any] | None:
    """{max_len} when `model_dir` is a BERT with mean pooling then normalisation; None otherwise."""
    d = Path(model_dir)
    try:
        listed = json.loads((d / "modules.json").read_text())
        modules = [m["type"].rsplit(".", 1)[-1] for m in listed]
        pooling = json.loads((d / next(m["path"] for m in listed if m["type"].endswith("Pooling")) / "config.json").read_text())
        st = json.loads((d / "sentence_bert_config.json").read_text())
        arch = json.loads((d / "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration):
        return None
    mean_only = pooling.get("pooling_mode_mean_tokens") and not any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens"))
    if modules != ["Transformer", "Pooling", "Normalize"] or not mean_only or arch.get("model_type") != "bert" \
            or not (d / "tokenizer.json").is_file() or not (d / "model.safetensors").is_file():
        return None
    max_len = min(int(st.get("max_seq_length") or 512), int(arch.get("max_position_embeddings") or 512))
    return {"max_len": max_len}


def onnx_path(model_dir: str) -> Path:
    """Where the export of `model_dir` is cached: keyed by the weights file's path, size and mtime."""
    w = Path(model_dir).resolve() / "model.safetensors"
    st = w.stat()
    key = hashlib.sha256(f"{w}:{st.st_size}:{st.st_mtime_ns}:{_OPSET}".encode()).hexdigest()[:16]
    return cache_dir() / "encoders" / f"{Path(model_dir).resolve().name}-{key}.onnx"


def export(model_dir: str, dest: Path) -> None:
    """Export the transformer of `model_dir` to `dest` (atomic). Runs torch: call it in a child process."""
    import torch
    from filelock import FileLock
    from transformers import AutoModel

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():
            return
        model = AutoModel.from_pretrained(model_dir).eval()

        class Hidden(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        ids = torch.ones(2, 8, dtype=torch.long)
        tmp = dest.with_suffix(f".{os.getpid()}.tmp")
        try:
            torch.onnx.export(Hidden(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(tmp),
                              input_names=list(_INPUTS), output_names=["hidden"], opset_version=_OPSET, dynamo=False,
                              dynamic_axes={k: {0: "batch", 1: "seq"} for k in (*_INPUTS, "hidden")})
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


class OnnxEncoder:
    """Mean pooling over the attention mask, then L2 normalisation (what the exported model's
    sentence-transformers modules do), on onnxruntime."""

    def __init__(self, model_file: Path, model_dir: str, max_len: int):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.counter = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.counter.no_truncation()  # counts whole texts (the file itself may ask for a cut)
        self.counter.no_padding()
        self.max_tokens = max_len
        self.tok.enable_truncation(max_length=max_len)
        pad = self.tok.token_to_id("[PAD]") or 0
        self.tok.enable_padding(pad_id=pad, pad_token="[PAD]")

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tok.encode_batch(list(texts[i:i + batch_size]))
            feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            hidden = self.session.run(None, feed)[0]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out.append(pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.counter.encode_batch(list(texts))]


class SentenceTransformerEncoder:
    def __init__(self, model_dir: str):
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(model_dir, device="cpu")
        except Exception as e:  # noqa: BLE001 - any load failure is the same story for the user
            raise ModelError(f"embedder: cannot load sentence-transformers model at {model_dir} ({e})") from None
        self.max_tokens = int(self.model.max_seq_length or 512)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.model.tokenizer(list(texts))["input_ids"]]


def _onnx(model_dir: str) -> OnnxEncoder | None:
    settings = onnx_settings(model_dir)
    if settings is None or os.environ.get("AGENTSLEEP_ONNX_ENCODER", "1") == "0":
        return None
    try:
        dest = onnx_path(model_dir)
        if not dest.is_file():
            r = subprocess.run([sys.executable, "-m", "agentsleep.memory.encoders", model_dir, str(dest)],
                               capture_output=True, text=True, timeout=600)
            if r.returncode or not dest.is_file():
                log.warning("embedder: ONNX export of %s failed (%s); using sentence-transformers", model_dir,
                            (r.stderr.strip().splitlines() or ["no output"])[-1][:200])
                return None
        return OnnxEncoder(dest, model_dir, settings["max_len"])
    except Exception as e:  # noqa: BLE001 - the fast path is optional: fall back, never fail the user
        log.warning("embedder: ONNX encoder for %s unavailable (%s); using sentence-transformers", model_dir, e)
        return None


def encoder(model_dir: str) -> Encoder:
    """The encoder for `model_dir`, built once per process and shared."""
    with _LOCK:
        if model_dir not in _ENCODERS:
            _ENCODERS[model_dir] = _onnx(model_dir) or SentenceTransformerEncoder(model_dir)
        return _ENCODERS[model_dir]


if __name__ == "__main__":  # python -m agentsleep.memory.encoders MODEL_DIR DEST: the export, in its own process
    export(sys.argv[1], Path(sys.argv[2]))
