"""Benchmarks: `agentsleep bench` suites and the report writer (docs/BENCHMARKS.md).

Each suite module has `run(out_dir, say=, progress=, **opts) -> dict` and
`markdown(res, docs_dir) -> str`; results are saved as JSON and written into
their own block of docs/BENCHMARKS.md, so every number there comes from a run.
"""
from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError

SUITES = {  # name -> (module, section title)
    "sleep": ("sleep_suite", "Sleep: facts consolidated per sleep, closed-book"),
    "phrasing": ("phrasing_suite", "Phrasing: facts as agents hear them (first person, third person, the assistant's replies)"),
    "squad": ("squad_suite", "SQuAD knowledge incorporation (closed-book)"),
    "locomo": ("locomo_suite", "LoCoMo: long-term conversational memory"),
    "serve": ("serve_suite", "Serving: hot-swap under load"),
    "ablation": ("ablation_suite", "Seeding ablation: which parts of the recipe help"),
    "faults": ("faults_suite", "Fault injection: kill -9, full disk, store down, vLLM down"),
    "retrieval": ("retrieval_suite", "Retrieval latency: 1k, 10k, 100k episodes"),
    "continual": ("continual_suite", "Continual learning: K sleeps, retention, drift and capacity (growth on/off)"),
    "scaling": ("scaling_suite", "Sleep cost vs episodes (embedded model, this CPU)"),
    "cli": ("cli_suite", "CLI latency: cold, and through a running `agentsleep serve`"),
    "nights": ("nights_suite", "Night after night: facts told each day, one sleep a night, every fact asked each morning"),
    "languages": ("languages_suite", "Other languages: facts in Spanish, German, Russian and Japanese"),
}
QUICK = ("sleep", "locomo", "serve")


# The quick profile: under 15 minutes on 2 CPU cores (one 10-fact sleep is ~8 of them). Each suite's
# quick run has its own block in BENCHMARKS.md and never overwrites the full run's.
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "sleep": {"n_facts": 10, "sleeps": 1},
    "locomo": {"conversations": 1, "answer_sample": 20, "sleep_sessions": 0},
    "serve": {"backends": ("transformers",)},
}


def run_suites(names: list[str], out_dir: Path, *, docs: Path | None, say: Callable[[str], None],
               progress=None, options: dict[str, dict[str, Any]] | None = None, quick: bool = False) -> dict[str, Any]:
    from ..progress import silent
    from . import report

    results: dict[str, Any] = {}
    for name in names:
        mod_name, title = SUITES[name]
        mod = importlib.import_module(f".{mod_name}", __name__)
        opts = {**(QUICK_OPTIONS.get(name, {}) if quick else {}), **(options or {}).get(name, {})}
        takes = inspect.signature(mod.run).parameters
        extra = [k for k in opts if k not in takes]
        if extra:
            raise InputError(f"bench {name}: does not take {', '.join(extra)}")
        key = name  # a smaller run gets its own block and never overwrites the full one
        if quick:
            key, title = f"{name}-quick", f"{title} (quick profile)"
        elif opts.get("n_facts") not in (None, 20):
            key, title = f"{name}-{opts['n_facts']}", f"{title} ({opts['n_facts']} facts per sleep)"
        if name == "nights" and (opts.get("nights", 5), opts.get("facts_per_night", 8)) != (5, 8):
            n_k = f"{opts.get('nights', 5)}x{opts.get('facts_per_night', 8)}"
            key, title = f"{key}-{n_k}", f"{title} ({n_k})"
        if name in ("squad", "locomo") and (opts.get("offset") or opts.get("count")):
            span = f"{opts.get('offset', 0)}+{opts['count']}" if opts.get("count") else f"{opts['offset']}+"
            key, title = f"{key}-{span}", f"{title} (from {opts.get('offset', 0)}, {opts.get('count') or 'all'})"
        if opts.get("test_set", "a") != "a":
            key, title = f"{key}-{opts['test_set']}", f"{title}, test set {opts['test_set']}"
        if opts.get("dev"):
            key, title = f"{key}-dev", f"{title}, development set"
            if opts.get("dev_set", "bench") != "bench":
                key, title = f"{key}-{opts['dev_set']}", f"{title} '{opts['dev_set']}'"
        t = time.time()
        res = mod.run(out_dir / key, say=say, progress=progress or silent, **opts)
        res["suite_seconds"] = round(time.time() - t, 1)
        report.save(res, out_dir, key)
        if docs:
            header = f"## {title}\n\n_{report.machine()}; {time.strftime('%Y-%m-%d')}; {res['suite_seconds']:.0f} s_"
            report.update_doc(docs, key, mod.markdown(res, docs.parent), header)
        results[key] = res
    return results


def data_file(name: str) -> Path:
    """An evaluation data set the suites read: `name` under $AGENTSLEEP_BENCH_DATA (a folder,
    default ./data). The data sets are not shipped; a suite whose file is missing says so and skips."""
    import os

    return Path(os.environ.get("AGENTSLEEP_BENCH_DATA") or "data") / name
