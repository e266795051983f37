"""What a version is and what changed between two: shapes, episodes, weights.

Read from safetensors headers and manifests, never by loading a model, so
`agentsleep history` and `agentsleep diff` stay fast on any model size.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .registry import Registry, Version

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _weight_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


def shape(version: Version) -> dict[str, Any]:
    """Layer count and parameter count of a version (from config.json and safetensors headers; for a
    delta version from its own config.json and manifest, so `history` rebuilds nothing)."""
    out: dict[str, Any] = {"layers": None, "parameters": None}
    if version.is_delta:
        try:
            out["layers"] = json.loads((version.path / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers")
        except (OSError, ValueError):
            pass
        out["parameters"] = version.manifest.get("parameters")
        return out
    d = Path(version.weights)
    try:
        out["layers"] = json.loads((d / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError):
        pass
    files = _weight_files(d)
    if files:
        from safetensors import safe_open

        n = 0
        for f in files:
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    n += math.prod(st.get_slice(k).get_shape())
        out["parameters"] = n
    return out


def _episodes(lineage: list[Version]) -> set[str]:
    """Episode ids consolidated into the last version of `lineage`: its own and every ancestor's."""
    return {i for v in lineage for i in v.manifest.get("episode_ids") or []}


def diff(registry: Registry, a: str, b: str, top: int = 5) -> dict[str, Any]:
    """Summarise how version `b` differs from version `a`."""
    lin_a, lin_b = registry.lineage(a), registry.lineage(b)
    va, vb = lin_a[-1], lin_b[-1]
    la, lb = [v.name for v in lin_a], [v.name for v in lin_b]
    common = [n for n in la if n in lb]
    ea, eb = _episodes(lin_a), _episodes(lin_b)
    sa, sb = shape(va), shape(vb)
    res: dict[str, Any] = {
        "a": a, "b": b,
        "common_ancestor": common[-1] if common else None,
        "b_descends_from_a": a in lb,
        "steps": [{"version": v.name, "kind": v.manifest.get("kind", "base")} for v in lin_b if v.name not in la],
        "layers": {"a": sa["layers"], "b": sb["layers"]},
        "parameters": {"a": sa["parameters"], "b": sb["parameters"]},
        "episodes_only_in_a": sorted(ea - eb), "episodes_only_in_b": sorted(eb - ea),
        "weights": _weight_change(Path(va.weights), Path(vb.weights), top),
    }
    return res


def _weight_change(da: Path, db: Path, top: int) -> dict[str, Any]:
    """Relative L2 change per tensor present in both; tensors only in one (grown blocks)."""
    fa, fb = _weight_files(da), _weight_files(db)
    if not fa or not fb:
        return {"compared": 0, "note": "weights not stored locally (a hub model?)"}
    from safetensors import safe_open

    def index(files: list[Path]) -> dict[str, Path]:
        out = {}
        for f in files:
            with safe_open(str(f), "pt") as st:
                out.update({k: f for k in st.keys()})
        return out

    ia, ib = index(fa), index(fb)
    changes, total_num, total_den = [], 0.0, 0.0
    for k in sorted(ia.keys() & ib.keys()):
        with safe_open(str(ia[k]), "pt") as sa, safe_open(str(ib[k]), "pt") as sb:
            ta, tb = sa.get_tensor(k).float(), sb.get_tensor(k).float()
        if ta.shape != tb.shape:
            changes.append((float("inf"), k))
            continue
        num, den = float((tb - ta).norm()), float(ta.norm()) or 1.0
        total_num, total_den = total_num + num ** 2, total_den + den ** 2
        if num:
            changes.append((num / den, k))
    changes.sort(reverse=True)
    per_layer: dict[int, float] = {}
    for rel, k in changes:
        m = _LAYER.search(k)
        if m and math.isfinite(rel):
            per_layer[int(m.group(1))] = max(per_layer.get(int(m.group(1)), 0.0), rel)
    return {"compared": len(ia.keys() & ib.keys()), "changed": len(changes),
            "relative_change": round(math.sqrt(total_num) / math.sqrt(total_den), 6) if total_den else 0.0,
            "top": [{"tensor": k, "relative_change": round(r, 6)} for r, k in changes[:top]],
            "max_change_per_layer": {str(k): round(v, 6) for k, v in sorted(per_layer.items())},
            "only_in_a": sorted(ia.keys() - ib.keys())[:20], "only_in_b": sorted(ib.keys() - ia.keys())[:20],
            "only_in_a_count": len(ia.keys() - ib.keys()), "only_in_b_count": len(ib.keys() - ia.keys())}

