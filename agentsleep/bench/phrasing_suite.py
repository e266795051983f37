"""Phrasing benchmark: facts told the way agents hear them, closed-book after one sleep.

Three voices (bench/phrasings.py, the held-out test sets, and bench/phrasings_b.py, a second
held-out set written after the first had been read): the user in the first person, third-person
statements, and the assistant's own replies (stored with source "assistant", as an agent records
its turns). `dev=True` runs development variants of bench/facts.py instead, and its chat-style
set; tune on those, never on the test sets.

Per voice and seed, in a fresh home on the same base weights:
1. remember the facts as they were said; closed-book before, and with the fact in context;
2. one sleep (default config, seed.seed = the seed); closed-book after; the gate's verdict and drift;
3. plain LoRA on the raw text with the sleep's own schedule (warmup, linear decay, gradient
   clipping at 1.0) and step count, the best of three learning rates (lr/3, lr, 3 lr);
4. the same dreams, plain SFT: a LoRA trained with plain cross-entropy on the dreams the sleep
   trained on (no raw text, no distillation, no replay, no ReST, no gate), same schedule.
Figures are mean, min and max over the seeds.
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from ..config import env_overrides
from ..errors import InputError
from ..home import Home
from ..progress import silent
from .facts import CHAT, SET_A, Fact
from .sleep_suite import closed_book, plain_sft

TEST_SETS = {"a": "phrasings", "b": "phrasings_b"}  # --test-set: the module holding each held-out set

SOURCE = {"first_person": "user", "third_person": "user", "assistant": "assistant", "chat": "user"}
LR_SWEEP = (1 / 3, 1.0, 3.0)


def dev_sets(n: int = 20) -> dict[str, list[Fact]]:
    """Development variants of the development set (bench/facts.py SET_A), one per voice, and `chat`: the
    second development set (bench/facts.py CHAT), facts dropped into a chat the way people say them."""
    from ..sleep.voice import _SWAP, _swap_persons, from_the_user

    first = [Fact(from_the_user(f.text), f.question, f.answer) for f in SET_A[:n]]
    said = [Fact("Noted: " + _swap_persons(f.text[:1].lower() + f.text[1:], _SWAP), f.question, f.answer) for f in first]
    return {"first_person": first, "third_person": list(SET_A[:n]), "assistant": said, "chat": list(CHAT[:n])}


def test_sets(name: str = "a") -> dict[str, list[Fact]]:
    """The held-out test sets of `name` (TEST_SETS), by voice."""
    import importlib

    return importlib.import_module(f".{TEST_SETS[name]}", __package__).SETS


def one_run(root: Path, facts: list[Fact], source: str, seed: int, *, baselines: bool, say, progress,
            kind: str | None = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One fresh home told the facts' texts (each once: several questions may ask about one passage), one
    sleep, and the baselines on the same base weights. `config` overrides the default config (tests
    use a tiny model); `kind` is what the texts are stored as (default: a turn for the assistant's
    words, else a fact)."""
    from ..config import Config
    from ..models.loader import load
    from ..sleep.dream import student_prompt
    from ..sleep.journal import read_dreams
    from ..sleep.seed import token_chunks
    from .nights_suite import _merge

    shutil.rmtree(root, ignore_errors=True)
    Home.init(root, config=Config.model_validate(_merge(config or {}, {"sleep": {"seed": {"seed": seed}}})))
    texts = list(dict.fromkeys(f.text for f in facts))
    out: dict[str, Any] = {"seed": seed}
    with Home.open(root) as home:
        for t in texts:
            home.remember(t, source=source, kind=kind or ("turn" if source == "assistant" else "fact"))
        live = home.engine.live
        out["before"], _ = closed_book(live.model, live.tok, facts)
        out["in_context"], _ = closed_book(live.model, live.tok, facts, [f.text for f in facts])
        base = live.version
        t = time.time()
        rep = home.sleep(progress=progress)
        out["sleep_seconds"] = round(time.time() - t, 1)
        out["status"] = str(rep.status)
        out["drift_kl"] = rep.metrics.get("drift_kl")
        out["gate"] = {k: rep.metrics.get(k) for k in ("recall_before", "recall_after", "probes", "probes_trusted",
                                                       "probes_cloze")}
        live = home.engine.live
        out["sleep"], answers = closed_book(live.model, live.tok, facts)
        out["answers"] = [{"q": f.question, "gold": f.answer, "pred": a} for f, a in zip(facts, answers)]
        say(f"  seed {seed}: {rep.status} in {out['sleep_seconds']:.0f} s; closed-book {out['before']:.2f} -> "
            f"{out['sleep']:.2f} (in context {out['in_context']:.2f})")
        if not baselines:
            return out
        cfg = home.config.sleep.seed
        steps = int(rep.metrics.get("seed_steps") or 48)
        dreams = [d for d in read_dreams(root / "sleeps" / rep.sleep_id) if not d.held_out]
        lrs = {}
        for mult in LR_SWEEP:
            model, tok = load(base.weights)
            pm = plain_sft(model, tok, [("", piece) for t in texts for piece in token_chunks(tok, t, cfg.max_seq_len - 2)],
                           cfg, steps, cfg.lr * mult, seed, progress)  # long texts whole, as the sleep trains them
            lrs[f"{cfg.lr * mult:.2g}"] = closed_book(pm, tok, facts)[0]
        out["plain_lora_by_lr"] = lrs
        out["plain_lora"] = max(lrs.values())
        if dreams:
            model, tok = load(base.weights)
            pm = plain_sft(model, tok, [(student_prompt(tok, d.question), d.answer) for d in dreams], cfg, steps,
                           cfg.lr, seed, progress)
            out["same_dreams_sft"] = closed_book(pm, tok, facts)[0]
        say(f"  seed {seed}: plain LoRA {out['plain_lora']:.2f} (by lr {lrs}), same dreams SFT "
            f"{out.get('same_dreams_sft', 0):.2f}")
    return out


def _stats(xs: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)} if xs else {}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max over the seeds of each measure one_run took, and how many sleeps were promoted."""
    out: dict[str, Any] = {"promoted": sum(r["status"] == "promoted" for r in runs)}
    for key in ("before", "in_context", "sleep", "plain_lora", "same_dreams_sft", "sleep_seconds", "drift_kl"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = _stats(vals)
    return out


def run(out_dir: Path, *, say=print, progress=silent, seeds: int = 3, voices: tuple[str, ...] | None = None,
        dev: bool = False, n_facts: int | None = None, baselines: bool = True, test_set: str = "a") -> dict[str, Any]:
    if test_set not in TEST_SETS:
        raise InputError(f"phrasing suite: unknown test set {test_set!r}; use {', '.join(TEST_SETS)}")
    if dev and test_set != "a":
        raise InputError("phrasing suite: --test-set names a held-out set; it does not go with --dev")
    sets = dev_sets() if dev else dict(test_sets(test_set))
    voices = tuple(voices or sets)
    unknown = [v for v in voices if v not in sets]
    if unknown:
        raise InputError(f"phrasing suite: unknown voice {unknown[0]!r}; use {', '.join(sets)}")
    from .report import provenance

    prov = provenance()  # rows saved by other code, packages or defaults are measured again, not merged in
    res: dict[str, Any] = {"set": "development (bench/facts.py variants)" if dev else f"test (bench/{TEST_SETS[test_set]}.py)",
                           "seeds": seeds, "baselines": baselines, "n_facts": n_facts, "voices": {},
                           "code": {"commit": prov["commit"], "versions": prov["versions"], "defaults": prov["config"],
                                    "env": env_overrides(os.environ)}}
    # Each voice's row is saved as soon as it is measured, so a run of some voices (--voice) keeps
    # the rows other runs measured with the same set, seeds and baselines, and an interrupted run
    # keeps the voices it finished.
    saved_path = out_dir / "voices.json"
    res["voices"] = {v: row for v, row in _saved(saved_path, res).items() if v in sets and v not in voices}
    for v in voices:
        facts = sets[v][:n_facts] if n_facts else sets[v]
        say(f"phrasing: {v}, {len(facts)} facts, {seeds} seed(s)")
        runs = [one_run(out_dir / f"{v}-seed{s}", facts, SOURCE[v], s, baselines=baselines, say=say, progress=progress)
                for s in range(seeds)]
        res["voices"][v] = {"facts": len(facts), "runs": runs, "measured": time.strftime("%Y-%m-%d"), **summary(runs)}
        _save(saved_path, res)
    res["voices"] = {v: res["voices"][v] for v in sets if v in res["voices"]}
    res["targets"] = targets(res)
    return res


def _saved(path: Path, res: dict[str, Any]) -> dict[str, Any]:
    """Rows an earlier run saved under the same out dir, when it measured the same set the same way."""
    import json

    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = all(old.get(k) == res.get(k) for k in ("set", "seeds", "baselines", "n_facts", "code")) \
        and (res.get("code") or {}).get("commit") is not None
    return old.get("voices", {}) if same else {}


def _save(path: Path, res: dict[str, Any]) -> None:
    import json

    from ..atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({k: res.get(k) for k in ("set", "seeds", "baselines", "n_facts", "code", "voices")},
                                       indent=1, default=str))


def targets(res: dict[str, Any]) -> dict[str, bool]:
    from ..config import GateConfig
    from .sleep_suite import drift_within_bound

    out = {}
    for v, row in res["voices"].items():
        out[f"{v}_recall_at_least_0.80"] = row.get("sleep", {}).get("mean", 0) >= 0.80
        sleeps = [{"status": r.get("status"), "metrics": {"drift_kl": r.get("drift_kl")}} for r in row.get("runs", [])]
        out[f"{v}_every_seed_promoted_with_drift_in_gate"] = (
            row.get("promoted") == len(sleeps) and drift_within_bound(sleeps, GateConfig().max_drift_kl))
        if "plain_lora" in row:
            out[f"{v}_beats_plain_lora_by_0.15"] = row["sleep"]["mean"] - row["plain_lora"]["mean"] >= 0.15
        out[f"{v}_under_10_min_per_20_facts"] = row.get("sleep_seconds", {}).get("max", 1e9) * 20 / row["facts"] <= 600
    return out


def markdown(res: dict[str, Any], docs_dir: Path) -> str:
    def cell(row, key):
        s = row.get(key)
        return f"{s['mean']:.2f} ({s['min']:.2f}-{s['max']:.2f})" if s else "-"

    lines = [f"Facts from the **{res['set']}**, {res['seeds']} seed(s): mean (min-max) closed-book recall on "
             "paraphrased questions.", "",
             "| voice | facts | before | in context | sleep | plain LoRA (best lr) | same dreams, plain SFT | "
             "promoted | sleep s | drift KL |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v, row in res["voices"].items():
        lines.append(f"| {v} | {row['facts']} | {cell(row, 'before')} | {cell(row, 'in_context')} | {cell(row, 'sleep')} | "
                     f"{cell(row, 'plain_lora')} | {cell(row, 'same_dreams_sft')} | {row['promoted']}/{len(row['runs'])} | "
                     f"{cell(row, 'sleep_seconds')} | {cell(row, 'drift_kl')} |")
    dates = {row.get("measured") for row in res["voices"].values()}
    if len(dates) > 1:
        lines += ["", "Rows measured on: " + ", ".join(f"{v} {row.get('measured', '?')}" for v, row in res["voices"].items())]
    lines += ["", "Targets: " + ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in res.get("targets", {}).items())]
    return "\n".join(lines)
