"""LoRA adapters of sleep versions: finding the chain since some weights, composing it into one.

A sleep publishes ``adapter/`` (a peft LoRA relative to its parent) next to the merged weights.
Merging a LoRA adds ``s*B@A`` to a linear layer, so several sleeps in a row add up and can be
served as ONE adapter of the summed rank on the weights they started from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agentsleep.models.registry import Version

from .weights import weights_dir

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts


def lora_rank_for(r: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds rank r."""
    for x in LORA_RANKS:
        if x >= r:
            return x
    return LORA_RANKS[-1]


def adapter_info(version: Version) -> dict[str, Any] | None:
    """The LoRA adapter stored with `version` (relative to its parent), if any."""
    d = version.path / "adapter"
    try:
        cfg = json.loads((d / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {"path": str(d), "r": int(cfg.get("r") or 0), "target_modules": cfg.get("target_modules")}


def sibling(version: Version, name: str) -> Version | None:
    """Another version of the same registry, read from its manifest (None if unreadable)."""
    d = version.path.parent / name
    try:
        return Version(name, d, json.loads((d / "manifest.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def adapter_chain(version: Version, base_name: str, limit: int = 64) -> list[Version] | None:
    """The versions after `base_name` up to `version`, oldest first, when each one carries an
    adapter relative to its parent (what sleeps publish); None when the lineage does not reach
    `base_name` that way."""
    chain: list[Version] = []
    v: Version | None = version
    while v is not None and len(chain) <= limit:
        if v.name == base_name:
            return chain[::-1] or None
        if adapter_info(v) is None or not v.parent:
            return None
        chain.append(v)
        v = sibling(v, v.parent)
    return None


def chain_rank(chain: list[Version]) -> int:
    """The rank of the one adapter equal to `chain` (ranks add up)."""
    return sum(adapter_info(v)["r"] for v in chain)


def compose_adapters(chain: list[Version], out_dir: Path) -> dict[str, Any]:
    """Write one LoRA adapter equal to applying the chain's adapters in order.

    Merging a LoRA adds s*B@A to a linear layer, so sleeps stacked on each other add up: the
    combined adapter stacks the A matrices, puts the B matrices (each times its own scale) side
    by side, and uses scale 1 (lora_alpha = r). Exact for plain LoRA on linear layers; anything
    else (DoRA, bias, modules_to_save, rank patterns) raises ValueError.
    """
    import torch
    from safetensors.torch import load_file, save_file

    a_parts: dict[str, list[Any]] = {}
    b_parts: dict[str, list[Any]] = {}
    first_cfg: dict[str, Any] | None = None
    modules: set[str] | None = None
    for v in chain:
        d = v.path / "adapter"
        cfg = json.loads((d / "adapter_config.json").read_text(encoding="utf-8"))
        if str(cfg.get("peft_type", "LORA")).upper() != "LORA" or cfg.get("use_dora") or cfg.get("modules_to_save") \
                or cfg.get("bias", "none") != "none" or cfg.get("rank_pattern") or cfg.get("alpha_pattern") \
                or cfg.get("fan_in_fan_out") or cfg.get("lora_bias") or cfg.get("layers_to_transform") is not None:
            raise ValueError(f"{v.name}: adapter is not plain LoRA on linear layers")
        r = int(cfg["r"])
        scale = float(cfg.get("lora_alpha", r)) / (r ** 0.5 if cfg.get("use_rslora") else r)
        f = d / "adapter_model.safetensors"
        if not f.is_file():
            raise ValueError(f"{v.name}: no adapter_model.safetensors")
        sd = load_file(str(f))
        mods = set()
        for key, t in sd.items():
            if key.endswith(".lora_A.weight"):
                mod = key[: -len(".lora_A.weight")]
                a_parts.setdefault(mod, []).append(t.float())
            elif key.endswith(".lora_B.weight"):
                mod = key[: -len(".lora_B.weight")]
                b_parts.setdefault(mod, []).append(t.float() * scale)
            else:
                raise ValueError(f"{v.name}: adapter holds a non-LoRA tensor {key}")
            mods.add(mod)
        if modules is not None and mods != modules:
            raise ValueError(f"{v.name}: adapts other modules than the rest of the chain")
        modules = mods
        first_cfg = first_cfg or cfg
    assert first_cfg is not None and modules is not None
    total = sum(int(json.loads((v.path / "adapter" / "adapter_config.json").read_text())["r"]) for v in chain)
    out: dict[str, Any] = {}
    for mod in sorted(modules):
        out[f"{mod}.lora_A.weight"] = torch.cat(a_parts[mod], dim=0).contiguous()
        out[f"{mod}.lora_B.weight"] = torch.cat(b_parts[mod], dim=1).contiguous()
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(out, str(tmp / "adapter_model.safetensors"))
    cfg = {**first_cfg, "r": total, "lora_alpha": total, "use_rslora": False,
           "base_model_name_or_path": str(weights_dir(sibling(chain[0], chain[0].parent) or chain[0]))}
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, out_dir)
    return {"path": str(out_dir), "r": total, "parts": [v.name for v in chain]}


def chain_adapter(chain: list[Version], out_dir: Path) -> dict[str, Any]:
    """The one adapter equal to `chain`: the version's own adapter for a chain of one, else the
    chain composed into `out_dir` (reused when an earlier call already wrote it)."""
    if len(chain) == 1:
        return {"path": adapter_info(chain[0])["path"], "r": chain_rank(chain), "parts": [chain[0].name]}
    if not (out_dir / "adapter_config.json").is_file():
        return compose_adapters(chain, out_dir)
    return {"path": str(out_dir), "r": chain_rank(chain), "parts": [v.name for v in chain]}
