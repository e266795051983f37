"""Knowledge incorporation on SQuAD passages (the SEAL / Sleep-paper protocol).

The model reads N passages, consolidates them into its weights, then answers
their questions WITHOUT the passage (closed-book). Side by side, in one run:
base model, in-context (the ceiling), plain LoRA on the raw passages, seeding
without dreams (raw text + distillation terms + replay), and the full sleep
recipe (dreams + seeding). Each method starts from the same base weights.
Metrics: exact match (normalised) and token F1, plus answer containment.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..models import generate as gen
from ..models.loader import load
from ..textmatch import contains_answer, f1, normalize
from ..progress import silent

PUBLISHED = [  # accuracy %, single passage / continued pretraining n=200 where two numbers are given
    ("Sleep paper, Qwen2.5-7B-class", "base 31.9/31.9; passage fine-tune 33.4/32.0; sleep without dreaming 35.7/36.2; "
                                      "SEAL 46.7/43.2; Sleep 48.1/44.3"),
    ("SEAL paper, Qwen2.5-7B, single passage", "base 32.7; train on passage 33.5; own synthetic data 39.7; SEAL 47.0"),
]


def score(model: Any, tok: Any, qs: list[dict], contexts: list[str] | None = None) -> dict[str, float]:
    answers = gen.answers(model, tok, [q["question"] for q in qs], memories=[[c] for c in contexts] if contexts else None,
                          batch_size=16)
    em = sum(normalize(a) == normalize(q["answer"]) for a, q in zip(answers, qs)) / len(qs)
    return {"em": round(em, 3), "f1": round(sum(f1(a, q["answer"]) for a, q in zip(answers, qs)) / len(qs), 3),
            "contains": round(sum(contains_answer(a, q["answer"]) for a, q in zip(answers, qs)) / len(qs), 3)}


def run(out_dir: Path, *, passages: int = 8, say=print, data: Path | None = None, progress=silent,
        model_path: str = "embedded", offset: int = 0, count: int | None = None) -> dict[str, Any]:
    """`count` passages (default `passages`) from `offset` on: tune on passages 0-499, test on 500-999."""
    from ..sleep.dream import dream
    from ..sleep.seed import seed
    from ..sleep.types import Memory
    from .sleep_suite import train_lora

    from . import data_file

    src = data or data_file("squad_dev.json")
    if not src.is_file():
        say(f"squad: {src} not found (set AGENTSLEEP_BENCH_DATA to the folder holding it); skipped")
        return {"skipped": "dataset not found"}
    items = json.loads(src.read_text())[offset:offset + (count or passages)]
    if not items:
        say(f"squad: {src} has no passages from offset {offset}; skipped")
        return {"skipped": f"no passages from offset {offset}"}
    mems = [Memory(f"p{i}", it["context"]) for i, it in enumerate(items)]
    qs = [q for it in items for q in it["questions"]]
    ctx = [it["context"] for it in items for _ in it["questions"]]
    cfg = Config().sleep
    res: dict[str, Any] = {"passages": len(items), "offset": offset, "data": str(src), "questions": len(qs), "methods": {}}
    model, tok = load(model_path)
    res["methods"]["base (closed-book)"] = score(model, tok, qs)
    res["methods"]["passage in context (ceiling)"] = score(model, tok, qs, ctx)
    say(f"squad: base {res['methods']['base (closed-book)']}, in context {res['methods']['passage in context (ceiling)']}")

    t = time.time()
    ds = dream(model, tok, mems, cfg.dream, progress=progress)
    res["dream_seconds"], res["dreams"] = round(time.time() - t, 1), {"written": ds.written, "kept": len(ds.dreams),
                                                                       "dropped": ds.dropped}
    steps_full = None
    for name, dreams in (("seeding without dreams", []), ("full sleep recipe (dreams + seeding)", ds.dreams)):
        t = time.time()
        pm, stats = seed(model, tok, [d for d in dreams], mems, cfg.seed, progress=progress)
        pm.eval()
        res["methods"][name] = {**score(pm, tok, qs), "steps": stats.steps, "seconds": round(time.time() - t, 1)}
        steps_full = stats.steps
        model = pm.unload()
        say(f"squad: {name}: {res['methods'][name]}")
    t = time.time()
    pm = train_lora(model, tok, [m.text for m in mems], cfg.seed, steps_full or 20, progress)
    res["methods"]["plain LoRA on raw passages"] = {**score(pm, tok, qs), "steps": steps_full,
                                                    "seconds": round(time.time() - t, 1)}
    say(f"squad: plain LoRA: {res['methods']['plain LoRA on raw passages']}")
    return res


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    if "skipped" in res:
        return f"Skipped: {res['skipped']}."
    rows = "\n".join(f"| {k} | {v['em']:.3f} | {v['f1']:.3f} | {v['contains']:.3f} |" for k, v in res["methods"].items())
    pub = "\n".join(f"- {a}: {b}" for a, b in PUBLISHED)
    return (f"{res['passages']} passages, {res['questions']} questions, embedded SmolLM2-135M (closed-book unless noted). "
            f"Dreams: {res['dreams']['written']} written, {res['dreams']['kept']} kept.\n\n"
            f"| method | exact match | token F1 | answer contained |\n|---|---|---|---|\n{rows}\n\n"
            f"Published, larger models (for scale, not comparable at 135M):\n{pub}\n")
