"""Gate: promote only a version that gained knowledge on balance and did not forget.

Measured in the same run, on the same weights, with and without the expert
(peft's disable_adapter is the exact pre-sleep model):
- recall: closed-book accuracy on this sleep's held-out probes, before/after;
- net knowledge: facts gained (any probe answered after and not before) against
  facts lost (answered before, not after), as counts with an allowance, so one
  probe never decides; a fact is an episode, and the several questions asked
  about one earlier episode share its weight;
- retention, cumulative: of the earlier facts answered when they were first
  consolidated (the ledger's per-probe record), how many the expert still
  answers; a ratio to the parent alone would compound night after night;
- drift: mean per-token KL(pre || post) on the pre-sleep model's own answers
  to generic prompts kept apart from the training replay prompts, and
  KL(base || post) on the base model's answers (a cached top-k reference), so
  that drift cannot accumulate unseen over a long lineage.
"""
from __future__ import annotations

import collections
import contextlib
import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from ..config import GateConfig
from ..models import generate as gen
from ..textmatch import answers_question
from . import scratch
from .tensors import collate, encode, forward_picked, kl_picked
from ..progress import Progress, silent
from .types import Probe, Verdict


def closed_book_hits(model: Any, tok: Any, probes: list[Probe], batch_size: int = 24) -> tuple[list[bool], list[str]]:
    """Whether `model`, reading nothing, answers each probe (its reply says what the probe's gold adds to
    the question: textmatch.answers_question), and its replies."""
    if not probes:
        return [], []
    answers = gen.answers(model, tok, [p.question for p in probes], batch_size=batch_size)
    return [answers_question(a, p.question, p.answer) for a, p in zip(answers, probes)], answers


_STORED = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


@contextlib.contextmanager
def as_published(pm: Any, stored: Any = None):
    """`pm` computing what publish will store, for as long as the block runs. A 16-bit model's version holds
    round(W + scale * B @ A) in its own dtype (models/deltas.merge_lora's arithmetic, in float64 before
    the rounding), which on bf16 weights can lose much of a small LoRA update: the gate must judge those
    weights, not the adapter beside them. Each LoRA-wrapped weight is replaced by its merge (the adapter
    off) and restored after; a float32 version is judged with its adapter, as the merge is exact to its
    rounding. `stored`: the dtype the parent's weights are stored in (a safetensors name such as "BF16",
    or a torch dtype; default the weights' own), which may differ from the dtype they were loaded in."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in pm.modules() if isinstance(m, LoraLayer) and hasattr(m, "base_layer")
              and getattr(m.base_layer, "weight", None) is not None]
    target = _STORED.get(stored, stored) if stored is not None else (layers[0].base_layer.weight.dtype
                                                                    if layers else None)
    if not layers or target not in (torch.bfloat16, torch.float16):
        yield pm
        return
    saved = []
    try:
        with torch.no_grad():
            for m in layers:
                name = m.active_adapters[0]
                if name not in m.lora_A:
                    continue
                w = m.base_layer.weight
                a, b = m.lora_A[name].weight, m.lora_B[name].weight
                saved.append((w, w.detach().to("cpu", copy=True)))
                merged = w.to(torch.float64) + m.scaling[name] * (b.to(torch.float64) @ a.to(torch.float64))
                w.copy_(merged.to(target).to(w.dtype))  # rounded as stored, computed in the loaded dtype
                del merged
        with pm.disable_adapter():
            yield pm
    finally:
        with torch.no_grad():
            for w, orig in saved:
                w.copy_(orig.to(w.device))


def _share(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


@dataclass
class Counts:
    """The gate's counts over facts, the evidence `decide` weighs.

    gained: facts (this sleep's and earlier ones) answered after and not before; lost: earlier facts answered
    before and not after; known_first: earlier facts answered when first consolidated; lost_first_before /
    lost_first_after: of those, how many the parent / the expert no longer answers. A fact is an episode: when
    the gate asks several questions about one (its probe and sampled dreams), each counts for its share, so an
    earlier episode asked three ways weighs what a new one asked once does. scale: how many earlier facts
    each one asked stands for (above 1 when the gate asked a sample of them, gate.earlier_probes); the
    earlier counts are already multiplied by it (the largest, where strata differ: evidence.earlier_items).
    known_first_asked / lost_first_after_asked: the same two counts over the facts actually asked, unscaled
    (what the confidence bound can read)."""

    gained: float = 0
    lost: float = 0
    known_first: float = 0
    lost_first_before: float = 0
    lost_first_after: float = 0
    scale: float = 1.0
    known_first_asked: float = 0
    lost_first_after_asked: float = 0


def _weights(episodes: list[str] | None, n: int) -> list[float]:
    """Each item's share of its episode (1 / the items asked about that episode); 1 each without ids."""
    if episodes is None:
        return [1.0] * n
    per = collections.Counter(episodes)
    return [1.0 / per[e] for e in episodes]


def count(new_before: list[bool], new_after: list[bool], old_before: list[bool], old_after: list[bool],
          first: list[bool | None], new_episodes: list[str] | None = None,
          old_episodes: list[str] | None = None, old_scale: float | list[float] = 1.0) -> Counts:
    """Counts from per-item hits; `first[i]` is earlier item i's level when first consolidated (None: unknown,
    the parent's answer stands in for it). With the items' episode ids, each item counts for its share of
    its episode (a fact), else for one. `old_scale`: the earlier facts each one asked stands for (one
    number, or one per earlier item)."""
    wn = _weights(new_episodes, len(new_before))
    scales = [old_scale] * len(old_before) if isinstance(old_scale, (int, float)) else list(old_scale)
    if len(scales) != len(old_before):
        raise ValueError(f"gate.count: {len(scales)} scales for {len(old_before)} earlier items")
    scales = [max(1.0, float(x)) for x in scales]  # a sample stands for at least itself
    raw = _weights(old_episodes, len(old_before))
    wo = [w * x for w, x in zip(raw, scales)]
    c = Counts(scale=max(scales, default=1.0))
    c.gained = sum(w for b, a, w in zip(new_before, new_after, wn) if a and not b) + \
        sum(w for b, a, w in zip(old_before, old_after, wo) if a and not b)
    c.lost = sum(w for b, a, w in zip(old_before, old_after, wo) if b and not a)
    for b, a, f, w, r in zip(old_before, old_after, first, wo, raw):
        if b if f is None else f:
            c.known_first += w
            c.lost_first_before += w * (not b)
            c.lost_first_after += w * (not a)
            c.known_first_asked += r
            c.lost_first_after_asked += r * (not a)
    return c


def facts(x: float) -> str:
    """A count of facts as people read it: 4, 2.5, 1.3."""
    return f"{x:.0f}" if abs(x - round(x)) < 0.05 else f"{x:.1f}"


@torch.no_grad()
def drift_reference(model: Any, tok: Any, pool: list[tuple[str, str]], k: int = 32, batch_size: int = 8) -> dict[str, Any]:
    """The base model's top-k log-probabilities on its own answers to the drift prompts: enough to read
    KL(base || any later version) without keeping or loading the base again (k=32 of a 49k vocabulary
    hold almost all of a greedy answer's mass; a few hundred KB, computed once per home)."""
    dev = next(model.parameters()).device
    idx, logp = [], []
    for i in range(0, len(pool), batch_size):
        b = collate([encode(tok, p, a) for p, a in pool[i:i + batch_size]], tok.pad_token_id, dev)
        lp = torch.log_softmax(forward_picked(model, b)[0].float(), -1)
        v, j = lp.topk(min(k, lp.shape[-1]), dim=-1)
        idx.append(j.cpu())
        logp.append(v.cpu())
    return {"pool": [list(x) for x in pool], "idx": torch.cat(idx) if idx else torch.zeros(0, k, dtype=torch.long),
            "logp": torch.cat(logp) if logp else torch.zeros(0, k)}


@torch.no_grad()
def drift_from_reference(model: Any, tok: Any, ref: dict[str, Any], batch_size: int = 8) -> float:
    """Mean per-token KL(base || model) on the reference's tokens, over the base's top-k and the rest of the
    vocabulary as one outcome (a lower bound of the full KL; equal to it as the base's top-k holds its mass)."""
    pool = [tuple(x) for x in ref["pool"]]
    if not pool:
        return 0.0
    dev = next(model.parameters()).device
    pos, total = 0, 0.0
    for i in range(0, len(pool), batch_size):
        b = collate([encode(tok, p, a) for p, a in pool[i:i + batch_size]], tok.pad_token_id, dev)
        lq = torch.log_softmax(forward_picked(model, b)[0].float(), -1)
        m = lq.shape[0]
        j, lp = ref["idx"][pos:pos + m].to(dev), ref["logp"][pos:pos + m].to(dev)
        lq = lq.gather(-1, j)
        p_rest = (1 - lp.exp().sum(-1)).clamp(min=1e-12)  # the rest of the vocabulary as one outcome:
        q_rest = (1 - lq.exp().sum(-1)).clamp(min=1e-12)  # a lower bound of the full KL, never negative
        total += float((lp.exp() * (lp - lq)).sum() + (p_rest * (p_rest.log() - q_rest.log())).sum())
        pos += m
    return total / max(pos, 1)


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
             cfg: GateConfig, progress: Progress = silent, generator: Any = None,
             first: list[bool | None] | None = None, base_ref: dict[str, Any] | None = None,
             earlier_scale: float | list[float] = 1.0, stored_dtype: Any = None) -> Verdict:
    """Measure before (adapter disabled) and after (adapter on), then decide.

    `first[i]`: whether earlier probe i was answered when its fact was first consolidated (the ledger's
    record; None or no list: unknown, the parent's answer stands in). `base_ref`: the base model's
    drift reference (`drift_reference`), for drift against the base. `earlier_scale`: how many earlier
    facts each earlier one asked stands for (evidence.earlier_items). The verdict's `hits` hold every
    probe's answer before and after, for the ledger. `stored_dtype`: the dtype the new version's weights
    will be stored in (`as_published`: a 16-bit version is judged on its rounded merge).

    With `generator` (a VllmGenerator on the pre-sleep weights) the probes are
    answered by vLLM: before on the base weights, after with the new expert
    saved as a LoRA adapter. Drift needs logits and stays on `pm`."""
    say = progress
    say("gate", 0, 3, "probes before")
    with contextlib.ExitStack() as stack:
        if generator is None:
            with pm.disable_adapter():
                hit_b, _ = closed_book_hits(pm, tok, probes)
                old_b, _ = closed_book_hits(pm, tok, earlier)
            after_model = stack.enter_context(as_published(pm, stored_dtype))  # the weights serving will hold
        else:
            expert = stack.enter_context(scratch.temporary_directory("agentsleep-expert-"))
            pm.save_pretrained(expert)
            hit_b, _ = closed_book_hits(generator.with_lora(None), tok, probes)
            old_b, _ = closed_book_hits(generator, tok, earlier)
            after_model = generator.with_lora(expert)
            stack.callback(generator.with_lora, None)  # the engine goes back to the base weights, whatever happens
        say("gate", 1, 3, "probes after")
        hit_a, answers = closed_book_hits(after_model, tok, probes)
        old_a, _ = closed_book_hits(after_model, tok, earlier)
    say("gate", 2, 3, "drift")
    kl = drift_kl(pm, tok, drift_pool[:cfg.drift_prompts])
    base_kl = None if base_ref is None else drift_from_reference(pm, tok, base_ref)
    say("gate", 3, 3, "done")
    hits = {"before": hit_b, "after": hit_a, "earlier_before": old_b, "earlier_after": old_a}
    before, after, old_before, old_after = _share(hit_b), _share(hit_a), _share(old_b), _share(old_a)
    counts = count(hits["before"], hits["after"], hits["earlier_before"], hits["earlier_after"],
                   first if first is not None else [None] * len(earlier),
                   [p.episode_id for p in probes], [p.episode_id for p in earlier], old_scale=earlier_scale)
    retention = None if not earlier or old_before == 0 else old_after / old_before
    metrics: dict[str, Any] = {
        "probes": len(probes), "recall_before": round(before, 4), "recall_after": round(after, 4),
        "recall_gain": round(after - before, 4), "earlier_probes": len(earlier),
        "earlier_before": round(old_before, 4) if earlier else None,
        "earlier_after": round(old_after, 4) if earlier else None,
        "retention": None if retention is None else round(retention, 4), "drift_kl": round(kl, 4),
        "facts_gained": round(counts.gained, 2), "facts_lost": round(counts.lost, 2),
        "facts_known_first": round(counts.known_first, 2), "facts_lost_since_first": round(counts.lost_first_after, 2),
        "retention_first": round(1 - counts.lost_first_after / counts.known_first, 4) if counts.known_first else None,
        "drift_kl_base": None if base_kl is None else round(base_kl, 4),
        "earlier_scale": round(counts.scale, 3),
    }
    failed, reasons = decide(cfg, len(probes), before, after, retention, kl, counts=counts, base_kl=base_kl)
    metrics["gate_failed"] = failed
    ok = not failed
    metrics["sample_answers"] = [{"q": p.question, "gold": p.answer, "pred": a, "episode_id": p.episode_id}
                                 for p, a in zip(probes[:5], answers[:5])]  # the episode: `forget` scrubs them
    return Verdict(ok, reasons, metrics, hits=hits)


def lost_share_lower_bound(lost: float, known: float, confidence: float) -> float:
    """The share of `known` facts lost, at least, with `confidence` (one-sided Wilson score bound): what a
    handful of facts can show. 2 of 5 lost (0.40) bounds the share at about 0.14; 8 of 40 (0.20) at 0.12."""
    if known <= 0:
        return 0.0
    z = statistics.NormalDist().inv_cdf(confidence)
    p = min(1.0, lost / known)
    centre = p + z * z / (2 * known)
    spread = z * math.sqrt(p * (1 - p) / known + z * z / (4 * known * known))
    return max(0.0, (centre - spread) / (1 + z * z / known))


def allowed_losses(cfg: GateConfig, c: Counts) -> tuple[float, float]:
    """(facts a sleep may lose tonight for what it gained, earlier facts that may be lost since first consolidated)."""
    net = max(cfg.loss_allowance, cfg.loss_per_gain * c.gained)
    cumulative = max(cfg.loss_allowance, (1 - cfg.min_retention) * c.known_first)
    return net, cumulative


def decide(cfg: GateConfig, n_probes: int, before: float, after: float, retention: float | None,
           kl: float, *, counts: Counts | None = None, base_kl: float | None = None) -> tuple[list[str], list[str]]:
    """The verdict from the measurements: (names of the failed checks, reasons for the report).

    The recall gain asked for is capped by the headroom (1 - before): when the pre-sleep model already
    answers every probe, a sleep cannot show a gain, and rejecting it would leave its episodes waiting
    forever. Retention and drift still decide then.

    With `counts` (the pipeline always has them) forgetting is judged on facts, not on a ratio one
    probe flips: tonight's losses against tonight's gains ("net"), and the earlier facts lost since
    they were first consolidated against gate.min_retention, both with gate.loss_allowance; a sleep
    that loses no more first-level facts than its parent had already lost passes the cumulative check.
    Without counts, `retention` (after / before on earlier probes) is the check, as a ratio."""
    failed, reasons = [], []  # `failed` names the checks (policies such as grow_on_reject read it)
    need = min(cfg.min_recall_gain, max(0.0, 1.0 - before))
    if not n_probes:  # nothing to measure recall on is no evidence against the sleep (sleep/probes.py)
        reasons.append("no probe could be built from these episodes: decided on retention and drift alone")
    elif after - before < need:
        failed.append("recall_gain")
        reasons.append(f"recall gain {after - before:+.2f} is below gate.min_recall_gain {need:.2f}")
    if counts is None:
        if retention is not None and retention < cfg.min_retention:
            failed.append("retention")
            reasons.append(f"retention {retention:.3f} of earlier probes is below gate.min_retention {cfg.min_retention:.2f}")
    else:
        net, cumulative = allowed_losses(cfg, counts)
        est = f" (estimated: each earlier fact asked stands for {counts.scale:.1f})" if counts.scale > 1 else ""
        if counts.lost > net + 1e-9:
            failed.append("net")
            reasons.append(f"lost {facts(counts.lost)} earlier facts{est} for {facts(counts.gained)} gained: more than the "
                           f"{facts(net)} allowed "
                           f"(gate.loss_per_gain {cfg.loss_per_gain:g} x gained, at least gate.loss_allowance "
                           f"{cfg.loss_allowance})")
        # the confidence is what the facts actually asked can show, not the estimate over all of them
        asked = counts.known_first_asked > 0  # else counts made by hand: the scale divides out
        sure = lost_share_lower_bound(counts.lost_first_after_asked if asked else counts.lost_first_after / counts.scale,
                                      counts.known_first_asked if asked else counts.known_first / counts.scale,
                                      cfg.retention_confidence)
        if (counts.lost_first_after > cumulative + 1e-9 and counts.lost_first_after > counts.lost_first_before + 1e-9
                and sure > 1 - cfg.min_retention):
            failed.append("retention")
            reasons.append(f"{facts(counts.lost_first_after)} of {facts(counts.known_first)} earlier facts answered "
                           f"when first consolidated are lost (the parent had lost {facts(counts.lost_first_before)}): "
                           f"more than the {facts(cumulative)} gate.min_retention {cfg.min_retention:.2f} allows, "
                           f"and at least {sure:.1%} of them with confidence {cfg.retention_confidence:g}{est}")
    if kl > cfg.max_drift_kl:
        failed.append("drift")
        reasons.append(f"general-behaviour drift KL {kl:.3f} exceeds gate.max_drift_kl {cfg.max_drift_kl:.3f}")
    if base_kl is not None and base_kl > cfg.max_base_drift_kl:
        failed.append("base_drift")
        reasons.append(f"drift from the base model KL {base_kl:.3f} exceeds gate.max_base_drift_kl "
                       f"{cfg.max_base_drift_kl:.3f}")
    if not failed:
        known = " (the probes were already known: no gain to show)" if need < cfg.min_recall_gain else ""
        if counts is None:
            kept = f"retention {'n/a' if retention is None else f'{retention:.2f}'}"
        else:
            kept = (f"facts gained {facts(counts.gained)}, lost {facts(counts.lost)}, earlier facts kept "
                    f"{facts(counts.known_first - counts.lost_first_after)}/{facts(counts.known_first)} of their "
                    f"first level")
            kept += est
        base = "" if base_kl is None else f", from base {base_kl:.3f}"
        reasons.append(f"recall {before:.2f} -> {after:.2f}{known}, {kept}, drift KL {kl:.3f}{base}")
    return failed, reasons
