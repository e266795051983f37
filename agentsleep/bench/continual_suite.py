"""K sequential sleeps over disjoint fact sets: retention curves, drift, and a capacity curve.

One run, three lines side by side, all from the same base model:
- sleep: remember set k, sleep, for k = 1..K (the product's default recipe);
- sleep + growth: the same home copied after sleep 1, then `grow` (one
  identity-initialised block) before every later sleep, whose expert trains
  only the new block (the paper's upward consolidation);
- naive fine-tuning: a plain LoRA per set on the raw text, merged before the next.
After each step: closed-book accuracy on every set so far (the retention
curve), drift KL from the base on the gate's generic prompts, parameters, and
seconds. The capacity curve is recall over all facts consolidated so far.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from ..home import Home
from .facts import SET_A, SET_B, SET_C, Fact
from .sleep_suite import closed_book, naive_continual

SETS = (SET_A, SET_B, SET_C)


def _point(home: Home, sets: list[list[Fact]], ref: Any, drift: list, seconds: float, status: str,
           reasons: list[str] = ()) -> dict[str, Any]:
    from ..sleep.gate import drift_kl

    live = home.engine.live
    acc = [closed_book(live.model, live.tok, s)[0] for s in sets]
    return {"after_set": len(sets), "accuracy": acc, "recall_all": round(sum(a * len(s) for a, s in zip(acc, sets))
                                                                        / sum(len(s) for s in sets), 3),
            "drift_kl": round(drift_kl(live.model, live.tok, drift, ref=ref), 4), "seconds": round(seconds, 1),
            "status": status, "reasons": list(reasons), "version": live.version.name,
            "parameters_m": round(sum(p.numel() for p in live.model.parameters()) / 1e6, 1)}


def _sleep_next(home: Home, facts: list[Fact], progress) -> tuple[float, str, list[str]]:
    """Remember `facts` and sleep: (seconds, status, the sleep report's reasons)."""
    for f in facts:
        home.remember(f.text, source="bench")
    t = time.time()
    rep = home.sleep(progress=progress)
    return time.time() - t, rep.status, list(rep.reasons)


def run(out_dir: Path, *, progress=None, say=print, n_facts: int = 10, k: int = 3) -> dict[str, Any]:
    from ..models.loader import load
    from ..sleep.generic_prompts import generic_pool

    sets = [s[:n_facts] for s in SETS[:k]]
    root, root_g = out_dir / "home", out_dir / "home-growth"
    for r in (root, root_g):
        shutil.rmtree(r, ignore_errors=True)
    res: dict[str, Any] = {"facts_per_sleep": n_facts, "k": k, "lines": {"sleep": [], "sleep + growth": []}}
    with Home.open(root) as home:
        base = home.registry.current()
        ref, tok = load(base.weights)
        cfg = home.config.sleep
        drift = [tuple(x) for x in generic_pool(ref, tok, home.registry, base.name, cfg.seed.replay_prompts,
                                                cfg.gate.drift_prompts)["drift"]]
        res["before"] = [closed_book(ref, tok, s)[0] for s in sets]
        seconds, status, reasons = _sleep_next(home, sets[0], progress)
        first = _point(home, sets[:1], ref, drift, seconds, status, reasons)
        res["lines"]["sleep"].append(first)
        say(f"continual: sleep 1 {status}: {first['accuracy']}")
        steps = int(home.registry.current().manifest.get("metrics", {}).get("seed_steps") or 60)
    shutil.copytree(root, root_g)  # the growth line shares sleep 1 (a paired comparison)
    res["lines"]["sleep + growth"].append({**first, "grow_seconds": 0.0})
    for line, path in (("sleep", root), ("sleep + growth", root_g)):
        with Home.open(path) as home:
            for j in range(1, k):
                grow_s = 0.0
                if line == "sleep + growth":
                    t = time.time()
                    home.grow(1)
                    grow_s = time.time() - t
                seconds, status, reasons = _sleep_next(home, sets[j], progress)
                p = _point(home, sets[:j + 1], ref, drift, seconds, status, reasons)
                p["grow_seconds"] = round(grow_s, 1)
                res["lines"][line].append(p)
                say(f"continual: {line}, sleep {j + 1} {status}: {p['accuracy']} (drift {p['drift_kl']})")
    with Home.open(root) as home:  # the baseline starts from the same base version
        naive = naive_continual(base, home, sets, steps, progress)
    for p in naive:
        done = sets[:p["after_set"]]
        p["recall_all"] = round(sum(a * len(x) for a, x in zip(p["accuracy"], done)) / sum(len(x) for x in done), 3)
    res["lines"]["naive fine-tuning"] = naive
    res["seed_steps_per_baseline_set"] = steps
    return res


def plot(res: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    n = res["facts_per_sleep"]
    for (name, pts), c in zip(res["lines"].items(), ("#3c9a5f", "#6a5fd4", "#d49a6a")):
        a1.plot([n * p["after_set"] for p in pts], [p["recall_all"] for p in pts], "o-", c=c, label=name)
        a2.plot([p["after_set"] for p in pts], [p["accuracy"][0] for p in pts], "o-", c=c, label=name)
    a1.set(xlabel="facts consolidated", ylabel="closed-book recall, all facts so far", ylim=(0, 1.05),
           title="capacity curve")
    a2.set(xlabel="sleeps (sets learned)", ylabel="accuracy on the first set", ylim=(0, 1.05),
           title="retention of set 1")
    a1.set_xticks([n * (i + 1) for i in range(res["k"])])
    a2.set_xticks(list(range(1, res["k"] + 1)))
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(res: dict[str, Any], docs_dir: Path) -> str:
    png = plot(res, docs_dir / "bench_continual.png")
    head = ("| method | after set | sleep | accuracy per set | recall, all facts | drift KL | parameters (M) | seconds |\n"
            "|---|---|---|---|---|---|---|---|\n")
    rows, why = [], []
    for name, pts in res["lines"].items():
        for p in pts:
            status = p.get("status", "merged")
            if status != "promoted" and p.get("reasons"):  # a sleep that was not promoted says why, under the table
                why.append(f"- {name}, sleep {p['after_set']}: {status}: {'; '.join(p['reasons'])}")
                status = f"{status} ({len(why)})"
            secs = p.get("seconds", "")
            if p.get("grow_seconds"):
                secs = f"{secs} (+{p['grow_seconds']} grow)"
            rows.append(f"| {name} | {p['after_set']} | {status} | {' / '.join(f'{a:.2f}' for a in p['accuracy'])} | "
                        f"{p['recall_all']:.2f} | {p['drift_kl']} | {p.get('parameters_m', '')} | {secs} |")
    return (f"{res['k']} sleeps of {res['facts_per_sleep']} facts each (disjoint sets), embedded SmolLM2; before any "
            f"sleep: {' / '.join(f'{a:.2f}' for a in res['before'])}. The growth line shares sleep 1 and grows one "
            f"block before each later sleep; naive fine-tuning uses {res['seed_steps_per_baseline_set']} LoRA steps per "
            f"set (sleep 1's seeding steps). A rejected sleep leaves the previous version serving (its reasons, numbered, are "
            f"under the table), so its row repeats the accuracy before it.\n\n{head}" + "\n".join(rows) + "\n\n"
            + ("Not promoted:\n\n" + "\n".join(why) + "\n\n" if why else "") + f"![continual]({png.name})\n")
