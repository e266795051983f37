"""Knowledge incorporation on SQuAD passages (the SEAL / Sleep-paper protocol, continued-pretraining form).

N passages are remembered (as facts; a long one in linked chunks) in a fresh home; one sleep (default
config) consolidates them; then their questions are asked WITHOUT the passage (closed-book). Per seed,
on the same base weights (bench/phrasing_suite.one_run does the work, as for the phrasing sets):
- base closed-book, and each passage in context (the ceiling);
- the sleep (dreams, implications, seeding, gate), as a user gets it;
- plain LoRA on the raw passages with the sleep's schedule and step count, the best of three learning rates;
- the same dreams as plain SFT (no raw text, no replay, no gate).
The measure is answer containment (every content word of the gold answer in the reply), as in the
acceptance target: the sleep's gain over base at least 0.10 and at least 1.5 times the best plain LoRA's.
Tune on passages 0-499, test on 500-999 (`--offset 500 --count 30`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..progress import silent
from .facts import Fact

PUBLISHED = [  # accuracy %, single passage / continued pretraining n=200 where two numbers are given
    ("Sleep paper, Qwen2.5-7B-class", "base 31.9/31.9; passage fine-tune 33.4/32.0; sleep without dreaming 35.7/36.2; "
                                      "SEAL 46.7/43.2; Sleep 48.1/44.3"),
    ("SEAL paper, Qwen2.5-7B, single passage", "base 32.7; train on passage 33.5; own synthetic data 39.7; SEAL 47.0"),
]


def run(out_dir: Path, *, passages: int = 8, seeds: int = 3, say=print, data: Path | None = None, progress=silent,
        model_path: str = "embedded", offset: int = 0, count: int | None = None) -> dict[str, Any]:
    """`count` passages (default `passages`) from `offset` on, `seeds` sleeps each from the base."""
    from . import data_file
    from .phrasing_suite import _stats, one_run, summary

    src = data or data_file("squad_dev.json")
    if not src.is_file():
        say(f"squad: {src} not found (set AGENTSLEEP_BENCH_DATA to the folder holding it); skipped")
        return {"skipped": "dataset not found"}
    items = json.loads(src.read_text())[offset:offset + (count or passages)]
    if not items:
        say(f"squad: {src} has no passages from offset {offset}; skipped")
        return {"skipped": f"no passages from offset {offset}"}
    facts = [Fact(it["context"], q["question"], q["answer"]) for it in items for q in it["questions"]]
    config = {"model": {"base": model_path}} if model_path != "embedded" else None
    say(f"squad: {len(items)} passages from {offset}, {len(facts)} questions, {seeds} seed(s)")
    runs = [one_run(out_dir / f"seed{s}", facts, "user", s, baselines=True, say=say, progress=progress,
                    kind="fact", config=config) for s in range(seeds)]
    res: dict[str, Any] = {"passages": len(items), "offset": offset, "data": str(src), "questions": len(facts),
                           "seeds": seeds, "runs": runs, "model": model_path, **summary(runs)}
    for key in ("sleep", "plain_lora"):
        res[f"{key}_gain"] = _stats([r[key] - r["before"] for r in runs])
    res["targets"] = targets(res)
    return res


def targets(res: dict[str, Any]) -> dict[str, bool]:
    sleep, lora = res["sleep_gain"]["mean"], res["plain_lora_gain"]["mean"]
    return {"sleep_gain_at_least_0.10": sleep >= 0.10,
            "sleep_gain_at_least_1.5x_best_plain_lora": sleep >= 1.5 * max(lora, 0.0) and sleep > 0}


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    if "skipped" in res:
        return f"Skipped: {res['skipped']}."

    def cell(key):
        v = res.get(key)
        return f"{v['mean']:.3f} ({v['min']:.3f}-{v['max']:.3f})" if v else "-"

    rows = [("base (closed-book)", "before"), ("passage in context (ceiling)", "in_context"),
            ("sleep (default config)", "sleep"), ("plain LoRA on raw passages (best of 3 lr)", "plain_lora"),
            ("the same dreams, plain SFT", "same_dreams_sft")]
    table = "\n".join(f"| {name} | {cell(key)} |" for name, key in rows)
    pub = "\n".join(f"- {a}: {b}" for a, b in PUBLISHED)
    targets_line = ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in res.get("targets", {}).items())
    model = res.get("model") or "embedded"
    model = "embedded SmolLM2-135M" if model == "embedded" else model
    split = ("development passages (0-499: tuned on)" if res["offset"] + res["passages"] <= 500
             else "test passages (500 on)" if res["offset"] >= 500 else "development and test passages mixed")
    return (f"{res['passages']} {split} from offset {res['offset']}, {res['questions']} questions, "
            f"{model}, {res['seeds']} seed(s): mean (min-max) share of answers contained in the closed-book "
            f"reply. Sleeps promoted: {res['promoted']}/{len(res['runs'])}; sleep {cell('sleep_seconds')} s.\n\n"
            f"| method | answer contained |\n|---|---|\n{table}\n\n"
            f"Gain over base: sleep {cell('sleep_gain')}, best plain LoRA {cell('plain_lora_gain')}. "
            f"Targets: {targets_line}\n\n"
            f"Published, larger models (for scale, not comparable at 135M):\n{pub}\n")
