"""Benchmarks: `agentsleep bench` suites and the report writer (docs/BENCHMARKS.md).

Each suite module has `run(out_dir, say=, progress=, **opts) -> dict` and
`markdown(res, docs_dir) -> str`; results are saved as JSON and written into
their own block of docs/BENCHMARKS.md, so every number there comes from a run.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Callable

SUITES = {  # name -> (module, section title)
    "sleep": ("sleep_suite", "Sleep: facts consolidated per sleep, closed-book"),
    "squad": ("squad_suite", "SQuAD knowledge incorporation (closed-book)"),
    "locomo": ("locomo_suite", "LoCoMo: long-term conversational memory"),
    "serve": ("serve_suite", "Serving: hot-swap under load"),
    "ablation": ("ablation_suite", "Seeding ablation: which parts of the recipe help"),
    "faults": ("faults_suite", "Fault injection: kill -9, full disk, store down, vLLM down"),
    "retrieval": ("retrieval_suite", "Retrieval latency: 1k, 10k, 100k episodes"),
    "continual": ("continual_suite", "Continual learning: K sleeps, retention, drift and capacity (growth on/off)"),
    "scaling": ("scaling_suite", "Sleep cost vs episodes (embedded model, this CPU)"),
}
QUICK = ("sleep", "locomo", "serve")


def run_suites(names: list[str], out_dir: Path, *, docs: Path | None, say: Callable[[str], None],
               progress=None, options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    from . import report

    results: dict[str, Any] = {}
    for name in names:
        mod_name, title = SUITES[name]
        mod = importlib.import_module(f".{mod_name}", __name__)
        opts = (options or {}).get(name, {})
        key = name  # a smaller run (the quick profile's 10 facts) gets its own block and never overwrites the full one
        if opts.get("n_facts") not in (None, 20):
            key, title = f"{name}-{opts['n_facts']}", f"{title} ({opts['n_facts']} facts per sleep)"
        if opts.get("sleep_sessions") == 0:  # the quick LoCoMo run (no sleeps) keeps the full run's block
            key, title = f"{name}-retrieval", f"{title} (retrieval only)"
        t = time.time()
        res = mod.run(out_dir / key, say=say, progress=progress, **opts)
        res["suite_seconds"] = round(time.time() - t, 1)
        report.save(res, out_dir, key)
        if docs:
            header = f"## {title}\n\n_{report.machine()}; {time.strftime('%Y-%m-%d')}; {res['suite_seconds']:.0f} s_"
            report.update_doc(docs, key, mod.markdown(res, docs.parent), header)
        results[key] = res
    return results
