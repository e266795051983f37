"""Publish: write the sleep's expert as an immutable registry version.

The version stores the expert (the LoRA under adapter/, relative to its parent) and, every
`sleep.snapshot_every` versions, the merged weights too; the others are rebuilt on first load
(models/deltas.py). The merged weights are computed here with the same deterministic merge a
rebuild uses, and their digest goes into the manifest, so any version restores exactly. The
adapter also lets a vLLM server hot-load the sleep instead of reloading all weights. The
registry writes the manifest last and flips CURRENT atomically (models/registry.py); nothing here
is visible until then.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import RegistryError
from ..models import deltas
from ..models.embedded import checksum_dir
from ..models.registry import Registry, Version


def publish(pm: Any, tok: Any, registry: Registry, manifest: dict[str, Any], *, should_stop=lambda: False,
            snapshot: bool | None = None) -> Version:
    """`snapshot` None follows the registry's snapshot_every; True/False forces full weights or a delta."""
    staging = registry.new_staging()
    try:
        pm.save_pretrained(str(staging / "adapter"))
        parent = registry.get(manifest["parent"])
        if not deltas.plain_lora(staging / "adapter"):  # nothing the deterministic merge can replay
            merged = pm.merge_and_unload()
            merged.save_pretrained(str(staging))
            tok.save_pretrained(str(staging))
            return _commit(registry, staging, {**manifest, "storage": "full"}, should_stop)
        from ..models.loader import resolve

        src = Path(resolve(parent.weights, progress=lambda m: None))
        sd = deltas.merge_lora(deltas.load_state(src), staging / "adapter")
        return write_version(registry, staging, src, sd, manifest, {"adapter": "adapter"}, tok=tok,
                             snapshot=snapshot, should_stop=should_stop)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":  # disk full, quota, read-only disk
            detail = " ".join(str(e).split())[:200]
            raise RegistryError(f"publish: writing the new version failed ({detail}); {manifest.get('parent')} keeps "
                                "serving and the episodes stay unconsolidated; free some disk space and sleep again") from None
        raise


def write_version(registry: Registry, staging: Path, parent_dir: Path, sd: dict[str, Any], manifest: dict[str, Any],
                  delta: dict[str, Any], *, tok: Any = None, config: Any = None, snapshot: bool | None = None,
                  should_stop=lambda: False) -> Version:
    """Finish a staged version whose merged weights are `sd`: delta.json, model files, the weights when a
    snapshot is due, the digest; commit, and seed the cache so serving it rebuilds nothing."""
    full = registry.snapshot_due(manifest["parent"]) if snapshot is None else snapshot
    deltas.copy_model_files(parent_dir, staging, tokenizer=False)
    if config is not None:  # a grown model: its own config.json
        config.save_pretrained(str(staging))
    if full and tok is not None:  # a delta shares its snapshot's tokenizer
        tok.save_pretrained(str(staging))
    (staging / deltas.DELTA_FILE).write_text(json.dumps({"format": 1, **delta}, indent=1), encoding="utf-8")
    if full:
        deltas.write_weights(sd, staging)
    sha = deltas.digest(sd)
    manifest = {**manifest, "storage": "full" if full else "delta", "weights_sha256": sha,
                "parameters": manifest.get("parameters") or sum(t.numel() for t in sd.values()),
                "stored_bytes": deltas.disk_bytes(staging)}
    v = _commit(registry, staging, manifest, should_stop, make_current=False)
    if not full:  # before CURRENT moves: a server that follows it finds the weights ready, not rebuilding them
        deltas.seed_cache(registry.root, v.name, [parent_dir, v.path], sd, sha)
    registry.set_current(v.name)
    return v


def _commit(registry: Registry, staging: Path, manifest: dict[str, Any], should_stop,
            make_current: bool = True) -> Version:
    manifest = {**manifest, "checksums": {k: v["sha256"] for k, v in checksum_dir(staging).items()}}
    if should_stop():
        raise InterruptedError("stopped before publishing")
    return registry.commit(staging, manifest, make_current=make_current)


def staged_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
