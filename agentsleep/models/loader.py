"""Load any causal LM: the embedded default, a local HF directory, or a hub id.

Every failure becomes a one-line `ModelError` naming the model and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ModelError

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def resolve(base: str, progress=None) -> str:
    """Turn `model.base` into something `from_pretrained` accepts."""
    if base == "embedded":
        from .embedded import embedded_model_dir

        return str(embedded_model_dir(progress=progress))
    p = Path(base).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"model {p}: not a Hugging Face model directory (no config.json)")
        return str(p)
    if base.startswith((".", "/", "~")) or os.sep in base and base.count("/") != 1:
        raise ModelError(f"model {base}: directory does not exist")
    return _hub_snapshot(base)


_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*", "*.jinja",
              "additional_chat_templates/*"]


_SNAPSHOTS: dict[str, str] = {}  # hub id -> its snapshot folder, once per process (online, each lookup asks the hub)


def _hub_snapshot(repo: str) -> str:
    """A hub id as the local directory of its snapshot (downloaded once, then read from the Hugging Face
    cache, offline too): every later step (publishing deltas, rebuilding versions, vLLM) reads a folder."""
    if repo in _SNAPSHOTS and Path(_SNAPSHOTS[repo]).is_dir():
        return _SNAPSHOTS[repo]
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        from huggingface_hub import snapshot_download

        d = Path(snapshot_download(repo, local_files_only=offline, allow_patterns=_HUB_FILES))
        if not any(d.glob("*.safetensors")):  # an older repository with PyTorch .bin weights only
            d = Path(snapshot_download(repo, local_files_only=offline, allow_patterns=_HUB_FILES + ["*.bin"]))
    except Exception as e:  # noqa: BLE001
        if offline:
            raise ModelError(f"model {repo}: not a local directory, not in the Hugging Face cache, and "
                             "HF_HUB_OFFLINE=1; download it first or point model.base at a directory") from None
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(f"model {repo}: cannot download it ({type(e).__name__}: {msg})") from None
    if not (d / "config.json").is_file():
        raise ModelError(f"model {repo}: its snapshot {d} has no config.json; not a Hugging Face model")
    _SNAPSHOTS[repo] = str(d)
    return str(d)


def load(path: str, *, dtype: str = "float32", device: str = "cpu", progress=None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode; the tokenizer pads on the left for batched generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress lines say what is happening
    src = resolve(path, progress=progress)
    try:
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, _DTYPES[dtype]))
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(f"model {path}: cannot load ({type(e).__name__}: {msg})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    try:
        model.to(device)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {path}: cannot move to device {device!r} ({e}); set model.device") from None
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
