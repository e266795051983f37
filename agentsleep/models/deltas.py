"""Adapter-sized versions: a version stores what its sleep changed; full weights are rebuilt on demand.

A delta version's directory holds ``delta.json`` (what to apply to the parent's weights), the
sleep's LoRA under ``adapter/`` (for a grown version: a map of which parent block each layer is)
and ``config.json``; no weights and no tokenizer (a lineage shares its snapshot's). Every ``snapshot_every`` versions (and on demand)
a version also stores its merged safetensors, so a rebuild starts from the nearest snapshot
ancestor (or the base) and applies at most that many deltas, in order.

Rebuilds must give the bytes the publisher checksummed, so the one merge function below is used
by both: ``W + s * (B @ A)`` computed in float64 on one thread (BLAS blocking and thread count
cannot change the rounding), then cast to the stored dtype. The manifest's ``weights_sha256`` is
a digest of the merged tensors; a rebuild that differs raises `RegistryError`.

Materialised versions live in ``<registry>/cache/<name>/`` (written in a temp dir, renamed into
place under a file lock, so two processes build a version once); the cache keeps the current
version and the few most recently used ones, everything else in it can be deleted at any time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import RegistryError

DELTA_FILE = "delta.json"
READY = "materialised.json"
CACHE_DIR = "cache"
CACHE_KEEP = 2  # materialised versions kept besides CURRENT's (most recently used first)
ZEROED = ("self_attn.o_proj", "mlp.down_proj")  # what growth zeroes in a copied block (models/growth.py)
_LAYER = re.compile(r"^(.*?\.layers\.)(\d+)(\..*)$")
_SMALL = ("config.json", "generation_config.json")  # model files beside the weights (the tokenizer is copied too)


# -- tensors ------------------------------------------------------------------
def load_state(d: Path) -> dict[str, Any]:
    """Every tensor of the safetensors files in `d` (sharded or not)."""
    from safetensors.torch import load_file

    files = sorted(Path(d).glob("*.safetensors"))
    if not files:
        raise RegistryError(f"{d}: no safetensors weights to rebuild from")
    sd: dict[str, Any] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def stored_dtype(d: Path) -> Any:
    """The dtype a version's weights are stored in (read from the first safetensors header; no tensor is
    loaded), or None when `d` holds none: merges into it are rounded to this dtype."""
    from safetensors import safe_open

    files = sorted(Path(d).glob("*.safetensors"))
    if not files:
        return None
    with safe_open(str(files[0]), framework="pt") as f:
        keys = list(f.keys())
        return f.get_slice(keys[0]).get_dtype() if keys else None


def digest(sd: dict[str, Any]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: equal iff the weights are equal."""
    import torch

    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_weights(sd: dict[str, Any], d: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})


def plain_lora(adapter_dir: Path) -> bool:
    """Whether `merge_lora` can apply this adapter exactly (plain LoRA on linear layers, full tensors)."""
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (str(cfg.get("peft_type", "LORA")).upper() == "LORA" and not cfg.get("use_dora")
            and cfg.get("bias", "none") == "none" and not cfg.get("lora_bias") and not cfg.get("fan_in_fan_out")
            and not cfg.get("rank_pattern") and not cfg.get("alpha_pattern") and not cfg.get("target_parameters")
            and not cfg.get("modules_to_save")
            and (adapter_dir / "adapter_model.safetensors").is_file())


def merge_lora(sd: dict[str, Any], adapter_dir: Path) -> dict[str, Any]:
    """`sd` with the peft adapter in `adapter_dir` merged in: the one deterministic merge (see module doc).
    Publish uses it only for adapters `plain_lora` accepts, and stores anything else in full."""
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    r = int(cfg["r"])
    scale = float(cfg.get("lora_alpha", r)) / (r ** 0.5 if cfg.get("use_rslora") else r)
    ad = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = dict(sd)
    pairs: dict[str, dict[str, Any]] = {}
    for key, t in ad.items():
        name = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        m = re.match(r"^(.*)\.lora_([AB])\.weight$", name)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = t
        else:
            raise RegistryError(f"adapter {adapter_dir}: {name} is not a LoRA factor; it cannot be replayed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for mod, ab in sorted(pairs.items()):
            key = mod + ".weight"
            if key not in sd or set(ab) != {"A", "B"}:
                raise RegistryError(f"adapter {adapter_dir}: LoRA on {mod} does not match the parent's weights")
            w = sd[key]
            delta = ab["B"].to(torch.float64) @ ab["A"].to(torch.float64)
            if delta.shape != w.shape:
                raise RegistryError(f"adapter {adapter_dir}: LoRA on {mod} has shape {tuple(delta.shape)}, "
                                    f"the weight {tuple(w.shape)}")
            out[key] = (w.to(torch.float64) + scale * delta).to(w.dtype).contiguous()
    finally:
        torch.set_num_threads(threads)
    return out


def regrow(sd: dict[str, Any], layer_map: list[list[Any]]) -> dict[str, Any]:
    """`sd` re-laid out as a grown model: new layer i is parent layer ``src`` kept (``["keep", src]``)
    or copied with its output projections zeroed (``["copy", src]``, what models/growth.py inserts)."""
    import torch

    by_layer: dict[int, dict[str, tuple[str, str]]] = {}
    out = {}
    for k, t in sd.items():
        m = _LAYER.match(k)
        if m:
            by_layer.setdefault(int(m.group(2)), {})[m.group(3)] = (m.group(1), k)
        else:
            out[k] = t
    for i, (how, src) in enumerate(layer_map):
        if src not in by_layer:
            raise RegistryError(f"grow delta: the parent has no layer {src}")
        for rest, (prefix, k) in by_layer[src].items():
            t = sd[k]
            if how == "copy":
                t = torch.zeros_like(t) if any(rest.startswith("." + z + ".") for z in ZEROED) else t.clone()
            out[f"{prefix}{i}{rest}"] = t
    return out


def apply(sd: dict[str, Any], version_dir: Path, delta: dict[str, Any]) -> dict[str, Any]:
    """One version's delta applied to its parent's weights: growth first, then the adapter."""
    if delta.get("layers"):
        sd = regrow(sd, delta["layers"])
    if delta.get("adapter"):
        sd = merge_lora(sd, version_dir / delta["adapter"])
    return sd


def read_delta(version_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((version_dir / DELTA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RegistryError(f"version {version_dir.name}: unreadable {DELTA_FILE} ({e})") from None


def copy_model_files(src: Path, dst: Path, *, tokenizer: bool = True) -> None:
    """config, generation config and (with `tokenizer`) the tokenizer: the small files a loader reads
    beside the weights."""
    for p in Path(src).iterdir():
        if p.is_file() and (p.name in _SMALL or tokenizer and p.name.startswith(
                ("tokenizer", "special_tokens", "chat_template", "vocab", "merges", "added_tokens"))):
            shutil.copy2(p, dst / p.name)


# -- materialising ----------------------------------------------------------------
def is_delta(manifest: dict[str, Any]) -> bool:
    return manifest.get("storage") == "delta"


def _manifest(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"version {d.name} is missing; a later version is stored as a delta on it "
                            "(never delete version directories by hand; use prune)") from None
    except (OSError, ValueError) as e:
        raise RegistryError(f"version {d.name}: unreadable manifest ({e})") from None


def _complete(entry: Path) -> bool:
    """A cache entry that can be served: its marker and its weights (a delete cut short by a kill, before
    the marker went first, can leave the marker alone)."""
    return (entry / READY).is_file() and any(entry.glob("*.safetensors"))


def materialise(name: str, path: Path, manifest: dict[str, Any], base_model: str | None = None) -> Path:
    """The directory of `name`'s full weights: the cache entry, built (once, under a lock) if missing."""
    from filelock import FileLock

    root = path.parent.parent
    cache = root / CACHE_DIR
    out = cache / name
    if _complete(out):
        _touch(out / READY)
        return out
    try:
        cache.mkdir(exist_ok=True)
        lock = FileLock(str(cache / f"{name}.lock"))
        lock.acquire()
    except OSError as e:
        raise RegistryError(f"version {name}: cannot write the rebuild cache {cache} ({e.strerror})") from None
    try:
        if _complete(out):
            return out
        _sweep_tmp(cache)
        sd, sources = rebuild(name, path, manifest, base_model)
        write_cache(cache, name, sources, sd, manifest.get("weights_sha256"))
    finally:
        lock.release()
    evict(root, keep={name})
    return out


def rebuild(name: str, path: Path, manifest: dict[str, Any],
            base_model: str | None = None) -> tuple[dict[str, Any], list[Path]]:
    """`name`'s merged weights: the nearest snapshot ancestor (or a cached one) plus the deltas in order,
    checked against the manifest's digest; and the directories its model files come from, in order."""
    root = path.parent.parent
    chain: list[tuple[Path, dict[str, Any]]] = []
    d, m = path, manifest
    start: Path
    while True:
        if d != path and _complete(root / CACHE_DIR / d.name):
            start = root / CACHE_DIR / d.name
            break
        if not is_delta(m):
            if m.get("kind") == "base" or not m.get("parent") and not list(d.glob("*.safetensors")):
                from .loader import resolve

                start = Path(resolve(base_model or m.get("base_model") or "embedded", progress=lambda s: None))
            else:
                start = d
            break
        chain.append((d, m))
        if not m.get("parent"):
            raise RegistryError(f"version {d.name}: a delta without a parent")
        d = root / "versions" / m["parent"]
        m = _manifest(d)
    sd = load_state(start)
    for vd, _ in reversed(chain):
        sd = apply(sd, vd, read_delta(vd))
    want = manifest.get("weights_sha256")
    if want and digest(sd) != want:
        raise RegistryError(f"version {name}: the rebuilt weights do not match the checksum in its manifest "
                            f"(rebuilt from {start.name}); the version cannot be restored exactly. Roll back to a "
                            "version stored in full (its manifest says storage 'full') or to the base")
    return sd, [start] + [vd for vd, _ in reversed(chain)]


def write_cache(cache: Path, name: str, sources: list[Path], sd: dict[str, Any], sha: str | None) -> Path:
    """Write `sd` as `name`'s materialised directory (temp dir, then one rename), with the model files of
    `sources` (the snapshot's tokenizer and config, then each delta's config). Caller holds the lock."""
    out = cache / name
    tmp = cache / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        write_weights(sd, tmp)
        for src in sources:
            copy_model_files(src, tmp)
        (tmp / READY).write_text(json.dumps({"version": name, "weights_sha256": sha, "at": time.time()}))
        if out.exists():  # an incomplete entry (no READY, or no weights) left by a crash
            shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RegistryError(f"version {name}: cannot write its rebuilt weights to {cache} ({e.strerror}); "
                            "free some disk space") from None
    return out


def seed_cache(root: Path, name: str, sources: list[Path], sd: dict[str, Any], sha: str | None) -> None:
    """Put weights just computed (at publish) in the cache, so serving the new version rebuilds nothing."""
    from filelock import FileLock

    cache = root / CACHE_DIR
    try:
        cache.mkdir(exist_ok=True)
        with FileLock(str(cache / f"{name}.lock")):
            if not _complete(cache / name):
                write_cache(cache, name, sources, sd, sha)
    except (OSError, RegistryError):
        return  # only a cache: the version rebuilds on first load
    evict(root, keep={name})


def evict(root: Path, keep: set[str] = frozenset(), drop: set[str] = frozenset()) -> list[str]:
    """Delete cache entries beyond the CURRENT version's, `keep` and the CACHE_KEEP most recently used;
    `drop` names entries to delete regardless (pruned versions)."""
    cache = root / CACHE_DIR
    try:
        current = (root / "CURRENT").read_text(encoding="utf-8").strip()
        entries = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / READY).is_file()]
    except OSError:
        return []
    entries.sort(key=lambda p: _mtime(p / READY), reverse=True)
    protected = set(keep) | {current} | {p.name for p in entries[:CACHE_KEEP]}
    gone = []
    for p in entries:
        if p.name in drop or p.name not in protected:
            (p / READY).unlink(missing_ok=True)  # the marker first: a kill midway leaves an entry that is rebuilt
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return gone


def _sweep_tmp(cache: Path) -> None:
    from ..procs import pid_alive

    for p in cache.glob(".tmp-*"):
        m = re.match(r"\.tmp-.+-(\d+)-[0-9a-f]{8}$", p.name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _touch(p: Path) -> None:
    try:
        os.utime(p)
    except OSError:
        pass


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def disk_bytes(d: Path) -> int:
    """Bytes under `d` (what one version costs on disk)."""
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())
