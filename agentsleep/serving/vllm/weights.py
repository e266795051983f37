"""What a version's weights look like on disk: where they are, their shapes, their KV-cache size."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from agentsleep.models.registry import Version

# config.json fields that fix tensor shapes: equal values mean the weights can be reloaded in place.
SHAPE_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
              "attention_bias", "mlp_bias", "hidden_act", "layer_types")


def weights_dir(version: Version) -> Path:
    """The directory holding `version`'s full (merged) weights."""
    from agentsleep.models.loader import resolve

    return Path(resolve(version.weights, progress=lambda m: None))


def read_config(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def arch_signature(d: Path) -> dict[str, Any]:
    cfg = read_config(d)
    return {k: cfg.get(k) for k in SHAPE_KEYS}


_DIGESTS: dict[tuple[str, str], str | None] = {}


def tensor_digest(d: Path, suffix: str = "embed_tokens.weight") -> str | None:
    """sha256 of the first tensor whose name ends with `suffix` in a safetensors model dir."""
    key = (str(d), suffix)
    if key in _DIGESTS:
        return _DIGESTS[key]
    import torch
    from safetensors import safe_open

    out = None
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name.endswith(suffix):
                    t = st.get_tensor(name).contiguous()
                    out = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
                    break
        if out:
            break
    _DIGESTS[key] = out
    return out


def kv_bytes_for(d: Path, max_model_len: int, sequences: int = 4, dtype_bytes: int = 4) -> int:
    """KV cache room for `sequences` full-length sequences (at least 64 MiB)."""
    cfg = read_config(d)
    layers = int(cfg.get("num_hidden_layers") or 32)
    kv_heads = int(cfg.get("num_key_value_heads") or cfg.get("num_attention_heads") or 8)
    head_dim = int(cfg.get("head_dim") or (int(cfg.get("hidden_size") or 4096) // int(cfg.get("num_attention_heads") or 32)))
    per_token = 2 * layers * kv_heads * head_dim * dtype_bytes
    return max(64 << 20, per_token * max_model_len * sequences)
