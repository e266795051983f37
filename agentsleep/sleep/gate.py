"""Gate: promote only a version that learned and did not forget.

Measured in the same run, on the same weights, with and without the expert
(peft's disable_adapter is the exact pre-sleep model):
- recall: closed-book accuracy on this sleep's held-out probes, before/after;
- retention: accuracy on earlier sleeps' probes plus a sample of their trained
  dreams, after / before;
- drift: mean per-token KL(pre || post) on the pre-sleep model's own answers
  to generic prompts kept apart from the training replay prompts.
"""
from __future__ import annotations

import contextlib
import tempfile
from typing import Any

import torch

from ..config import GateConfig
from ..models import generate as gen
from ..textmatch import contains_answer
from .tensors import collate, encode, forward_picked, kl_picked
from ..progress import Progress, silent
from .types import Probe, Verdict


def closed_book_accuracy(model: Any, tok: Any, probes: list[Probe], batch_size: int = 24) -> tuple[float, list[str]]:
    if not probes:
        return 0.0, []
    answers = gen.answers(model, tok, [p.question for p in probes], batch_size=batch_size)
    hits = [contains_answer(a, p.answer) for a, p in zip(answers, probes)]
    return sum(hits) / len(hits), answers


@torch.no_grad()
def drift_kl(pm: Any, tok: Any, pool: list[tuple[str, str]], batch_size: int = 8, ref: Any = None) -> float:
    """KL(pre || post) per token on the pre-sleep model's answers to generic prompts.

    pre is `pm` with its adapter disabled, or `ref` when the two are separate
    models (a merged baseline in the benchmark)."""
    if not pool:
        return 0.0
    dev = next(pm.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(pool), batch_size):
        b = collate([encode(tok, p, a) for p, a in pool[i:i + batch_size]], tok.pad_token_id, dev)
        if ref is None:
            with pm.disable_adapter():
                pre = forward_picked(pm, b)[0]
        else:
            pre = forward_picked(ref, b)[0]
        total += float(kl_picked(pre, forward_picked(pm, b)[0])) * len(b["input_ids"])
        n += len(b["input_ids"])
    return total / max(n, 1)


def evaluate(pm: Any, tok: Any, probes: list[Probe], earlier: list[Probe], drift_pool: list[tuple[str, str]],
             cfg: GateConfig, progress: Progress = silent, generator: Any = None) -> Verdict:
    """Measure before (adapter disabled) and after (adapter on), then decide.

    With `generator` (a VllmGenerator on the pre-sleep weights) the probes are
    answered by vLLM: before on the base weights, after with the new expert
    saved as a LoRA adapter. Drift needs logits and stays on `pm`."""
    say = progress
    say("gate", 0, 3, "probes before")
    with contextlib.ExitStack() as stack:
        if generator is None:
            with pm.disable_adapter():
                before, _ = closed_book_accuracy(pm, tok, probes)
                old_before, _ = closed_book_accuracy(pm, tok, earlier)
            after_model = pm
        else:
            expert = stack.enter_context(tempfile.TemporaryDirectory(prefix="agentsleep-expert-"))
            pm.save_pretrained(expert)
            before, _ = closed_book_accuracy(generator.with_lora(None), tok, probes)
            old_before, _ = closed_book_accuracy(generator, tok, earlier)
            after_model = generator.with_lora(expert)
            stack.callback(generator.with_lora, None)  # the engine goes back to the base weights, whatever happens
        say("gate", 1, 3, "probes after")
        after, answers = closed_book_accuracy(after_model, tok, probes)
        old_after, _ = closed_book_accuracy(after_model, tok, earlier)
    say("gate", 2, 3, "drift")
    kl = drift_kl(pm, tok, drift_pool[:cfg.drift_prompts])
    say("gate", 3, 3, "done")
    retention = None if not earlier or old_before == 0 else old_after / old_before
    metrics: dict[str, Any] = {
        "probes": len(probes), "recall_before": round(before, 4), "recall_after": round(after, 4),
        "recall_gain": round(after - before, 4), "earlier_probes": len(earlier),
        "earlier_before": round(old_before, 4) if earlier else None,
        "earlier_after": round(old_after, 4) if earlier else None,
        "retention": None if retention is None else round(retention, 4), "drift_kl": round(kl, 4),
    }
    failed, reasons = decide(cfg, len(probes), before, after, retention, kl)
    metrics["gate_failed"] = failed
    ok = not failed
    metrics["sample_answers"] = [{"q": p.question, "gold": p.answer, "pred": a} for p, a in zip(probes[:5], answers[:5])]
    return Verdict(ok, reasons, metrics)


def decide(cfg: GateConfig, n_probes: int, before: float, after: float, retention: float | None,
           kl: float) -> tuple[list[str], list[str]]:
    """The verdict from the measurements: (names of the failed checks, reasons for the report).

    The recall gain asked for is capped by the headroom (1 - before): when the pre-sleep model already
    answers every probe, a sleep cannot show a gain, and rejecting it would leave its episodes waiting
    forever. Retention and drift still decide then."""
    failed, reasons = [], []  # `failed` names the checks (policies such as grow_on_reject read it)
    need = min(cfg.min_recall_gain, max(0.0, 1.0 - before))
    if not n_probes:  # nothing to measure recall on is no evidence against the sleep (sleep/probes.py)
        reasons.append("no probe could be built from these episodes: decided on retention and drift alone")
    elif after - before < need:
        failed.append("recall_gain")
        reasons.append(f"recall gain {after - before:+.2f} is below gate.min_recall_gain {need:.2f}")
    if retention is not None and retention < cfg.min_retention:
        failed.append("retention")
        reasons.append(f"retention {retention:.3f} of earlier probes is below gate.min_retention {cfg.min_retention:.2f}")
    if kl > cfg.max_drift_kl:
        failed.append("drift")
        reasons.append(f"general-behaviour drift KL {kl:.3f} exceeds gate.max_drift_kl {cfg.max_drift_kl:.3f}")
    if not failed:
        known = " (the probes were already known: no gain to show)" if need < cfg.min_recall_gain else ""
        reasons.append(f"recall {before:.2f} -> {after:.2f}{known}, retention "
                       f"{'n/a' if retention is None else f'{retention:.2f}'}, drift KL {kl:.3f}")
    return failed, reasons
