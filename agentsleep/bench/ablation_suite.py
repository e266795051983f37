"""Seeding ablation: which parts of the sleep recipe earn their cost on this model.

One set of dreams is written for SET_A (the sleep suite's 20 facts); then the
seeding stage is trained from the same pre-sleep model under each variant and
scored closed-book on the held-out paraphrased questions:

- raw text only (sleep without dreaming: CE on the memory text + replay KL)
- dreams + raw text, CE + replay KL (the default recipe)
- the same plus the paper's distillation block (D_off, D_on, imitate) at weight w
- the default recipe without the replay KL (general-behaviour drift shows why it is there)

The drift column is the gate's measure: mean per-token KL(pre || post) on generic prompts.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..models.loader import load, resolve
from ..sleep.dream import dream
from ..sleep.gate import drift_kl
from ..sleep.generic_prompts import DRIFT, REPLAY
from ..sleep.seed import seed
from ..sleep.types import Memory
from ..progress import silent
from .facts import SET_A
from .sleep_suite import closed_book

VARIANTS: dict[str, dict[str, Any]] = {
    "raw text only (no dreaming)": {"_no_dreams": True},
    "dreams + raw text (default)": {},
    "+ distillation w=0.1": {"w_distill": 0.1},
    "+ distillation w=1.0": {"w_distill": 1.0, "on_policy_every": 8},
    "default without replay KL": {"w_replay": 0.0},
}


def run(out_dir: Path, *, say=print, progress=silent, n_facts: int = 20, variants: list[str] | None = None) -> dict[str, Any]:
    from ..models import generate as gen

    cfg = Config().sleep
    facts = SET_A[:n_facts]
    memories = [Memory(f"fact-{i}", f.text) for i, f in enumerate(facts)]
    base = resolve(Config().model.base)
    model, tok = load(base)
    t = time.time()
    ds = dream(model, tok, memories, cfg.dream, seed=cfg.seed.seed, progress=progress)
    res: dict[str, Any] = {"facts": len(facts), "dreams_trained": len(ds.train), "dream_seconds": round(time.time() - t, 1),
                           "rows": []}
    say(f"ablation: {len(ds.train)} dreams for {len(facts)} facts")
    prompts = [gen.chat(tok, p) for p in REPLAY[:cfg.seed.replay_prompts] + DRIFT[:cfg.gate.drift_prompts]]
    answers = gen.generate(model, tok, prompts, max_new_tokens=48, batch_size=24)
    pairs = list(zip(prompts, answers))
    replay, drift = pairs[:cfg.seed.replay_prompts], pairs[cfg.seed.replay_prompts:]
    for name in variants or list(VARIANTS):
        opts = dict(VARIANTS[name])
        no_dreams = opts.pop("_no_dreams", False)
        scfg = cfg.seed.model_copy(update=opts)
        t = time.time()
        pm, stats = seed(model, tok, [] if no_dreams else ds.train, memories, scfg, replay_pool=replay, progress=progress)
        seconds = round(time.time() - t, 1)
        acc, _ = closed_book(pm, tok, facts)
        kl = drift_kl(pm, tok, drift)
        model = pm.unload()
        row = {"variant": name, "closed_book": acc, "drift_kl": round(kl, 4), "steps": stats.steps, "seconds": seconds}
        res["rows"].append(row)
        say(f"ablation: {name}: closed-book {acc:.2f}, drift KL {kl:.3f}, {seconds:.0f} s")
    return res


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    lines = [f"{res['facts']} facts, one set of {res['dreams_trained']} dreams, one seed (20 questions: differences "
             "under ~0.1 are noise).", "",
             "| seeding variant | closed-book | drift KL | steps | seconds |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['variant']} | {r['closed_book']:.2f} | {r['drift_kl']:.3f} | {r['steps']} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"
