"""Publish: merge the expert into the base and write an immutable registry version.

The adapter is saved too (under adapter/) so a vLLM server can hot-load it
instead of reloading all weights. The registry writes the manifest last and
flips CURRENT atomically (models/registry.py); nothing here is visible until then.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..models.embedded import checksum_dir
from ..errors import RegistryError
from ..models.registry import Registry, Version


def publish(pm: Any, tok: Any, registry: Registry, manifest: dict[str, Any], *, should_stop=lambda: False) -> Version:
    staging = registry.new_staging()
    try:
        pm.save_pretrained(str(staging / "adapter"))
        merged = pm.merge_and_unload()
        merged.save_pretrained(str(staging))
        tok.save_pretrained(str(staging))
        manifest = {**manifest, "checksums": {k: v["sha256"] for k, v in checksum_dir(staging).items()}}
        if should_stop():
            raise InterruptedError("stopped before publishing")
        return registry.commit(staging, manifest)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":  # disk full, quota, read-only disk
            detail = " ".join(str(e).split())[:200]
            raise RegistryError(f"publish: writing the new version failed ({detail}); {manifest.get('parent')} keeps "
                                "serving and the episodes stay unconsolidated; free some disk space and sleep again") from None
        raise


def staged_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
