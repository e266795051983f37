"""The seeding objective: what one training step is made of.

Items (what the student reads and must answer), the step statistics, the LoRA
expert's configuration, and the loss terms besides plain cross-entropy:
teacher soft targets (off-policy distillation), reverse KL on the student's
own samples (on-policy distillation, GKD) and Learning-to-Imitate (REINFORCE
on completing a memory). seed.py builds the items, train.py runs the loop,
launch.py runs it in worker processes; all three import this module, and it
imports none of them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..config import SeedConfig
from ..models import generate as gen
from .tensors import collate, encode, per_sequence_nll
from .types import Memory

TOPK = 16  # teacher soft targets kept per answer token (off-policy distillation)


class Interrupted(Exception):
    """Training was asked to stop (SIGTERM / deadline); nothing is published."""


@dataclass
class Item:
    prompt: str            # what the student reads ("" for raw memory text)
    target: str
    teacher: str | None    # what the teacher reads (with the memory), or None
    memory_id: str = ""
    soft: tuple[torch.Tensor, torch.Tensor] | None = None  # (top-k ids, top-k probs) per answer token


@dataclass
class SeedStats:
    steps: int = 0
    seconds: float = 0.0
    items: int = 0
    tokens: int = 0  # forward tokens of the hard-label and replay batches (padding excluded)
    processes: int = 1  # training processes that took part
    losses: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, last: int = 10) -> dict[str, float]:
        return {k: round(sum(v[-last:]) / max(len(v[-last:]), 1), 4) for k, v in self.losses.items() if v}


def lora_config(cfg: SeedConfig, layers: list[int] | None = None):
    """This sleep's expert. After growth, `layers` limits it to the new blocks (new capacity only).

    A new block's o_proj and down_proj are zero (models/growth.py), so with LoRA's usual B = 0 its
    q/k/v/gate/up experts get no gradient until the output projections have moved, and the output
    projections' own A none until their B has. On new blocks the expert therefore starts from
    peft's orthogonal initialisation: A and B both non-zero with B @ A = 0, so the model still
    computes the same function and every LoRA tensor of a new block is trained from the first
    steps (tests/test_growth.py). It needs an even rank; an odd one keeps B = 0."""
    from peft import LoraConfig

    init = "orthogonal" if layers and cfg.lora_r % 2 == 0 else True
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
                      layers_to_transform=layers or None, init_lora_weights=init)


@torch.no_grad()
def attach_soft_targets(model: Any, tok: Any, items: list[Item], max_len: int, batch_size: int = 8) -> None:
    """Teacher top-k distributions on each dream answer, computed once (the teacher is frozen)."""
    todo = [it for it in items if it.teacher]
    dev = next(model.parameters()).device
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        rows = [encode(tok, it.teacher, it.target, max_len) for it in chunk]
        b = collate(rows, tok.pad_token_id, dev)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        mask = b["labels"][:, 1:] != -100
        for j, it in enumerate(chunk):
            probs = F.softmax(logits[j][mask[j]], -1)
            p, ids = probs.topk(TOPK, -1)
            it.soft = (ids.cpu(), (p / p.sum(-1, keepdim=True)).cpu())


def soft_ce(logits: torch.Tensor, labels: torch.Tensor, items: list[Item]) -> torch.Tensor | None:
    """Cross-entropy of the student to the teacher's top-k soft targets (= KL up to a constant),
    summed over the items (each item's mean over its answer tokens); None if no item has targets."""
    mask = labels[:, 1:] != -100
    losses = []
    for j, it in enumerate(items):
        if it.soft is None:
            continue
        ids, p = it.soft
        pos = F.log_softmax(logits[j, :-1][mask[j]].float(), -1)
        n = min(len(pos), len(ids))
        if n == 0:
            continue
        losses.append(-(p[:n].to(pos.device) * pos[:n].gather(-1, ids[:n].to(pos.device))).sum(-1).mean())
    return torch.stack(losses).sum() if losses else None


def on_policy(pm: Any, tok: Any, items: list[Item], rng: random.Random, n: int, max_len: int) -> torch.Tensor | None:
    """Reverse KL(student || teacher) on the student's own sampled answers (GKD)."""
    pool = [it for it in items if it.teacher]
    if not pool:
        return None
    chosen = rng.sample(pool, min(n, len(pool)))
    samples = gen.generate(pm, tok, [it.prompt for it in chosen], max_new_tokens=16, batch_size=len(chosen),
                           do_sample=True, temperature=0.8)
    dev = next(pm.parameters()).device
    s_rows = [encode(tok, it.prompt, s, max_len) for it, s in zip(chosen, samples)]
    t_rows = [encode(tok, it.teacher, s, max_len) for it, s in zip(chosen, samples)]
    sb, tb = collate(s_rows, tok.pad_token_id, dev), collate(t_rows, tok.pad_token_id, dev)
    with torch.no_grad(), pm.disable_adapter():
        t_logits = pm(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits[:, :-1].float()
    s_logits = pm(input_ids=sb["input_ids"], attention_mask=sb["attention_mask"]).logits[:, :-1].float()
    losses = []
    for j in range(len(chosen)):
        sm, tm = sb["labels"][j, 1:] != -100, tb["labels"][j, 1:] != -100
        s_lp, t_lp = F.log_softmax(s_logits[j][sm], -1), F.log_softmax(t_logits[j][tm], -1)
        n_tok = min(len(s_lp), len(t_lp))
        if n_tok:
            losses.append((s_lp[:n_tok].exp() * (s_lp[:n_tok] - t_lp[:n_tok])).sum(-1).mean())
    return torch.stack(losses).mean() if losses else None


def _embed(texts: list[str]) -> torch.Tensor:
    """MiniLM sentence embeddings: the episode store's model, loaded once per process."""
    from ..memory.embedder import embedded_model_path
    from ..memory.encoders import encoder

    return torch.from_numpy(encoder(embedded_model_path()).encode(texts))


def imitate_reward(completion: str, reference: str, g: float, lev_threshold: float) -> float:
    """r = g * r_sem + (1 - g) * r_abs (paper: Learning to Imitate)."""
    from rapidfuzz.distance import Levenshtein

    e = _embed([completion or " ", reference or " "])
    r_sem = float((e[0] * e[1]).sum().clamp(min=0))
    lev = Levenshtein.distance(completion, reference) / max(len(completion), len(reference), 1)
    r_abs = 1.0 - lev if lev < lev_threshold else 0.0
    return g * r_sem + (1 - g) * r_abs


def imitate(pm: Any, tok: Any, memories: list[Memory], rng: random.Random, cfg: SeedConfig) -> torch.Tensor | None:
    """REINFORCE: the student completes a random prefix of a memory; reward = match to the real rest."""
    pool = [m for m in memories if len(m.text.split()) >= 6]
    if not pool:
        return None
    chosen = [rng.choice(pool) for _ in range(cfg.on_policy_samples)]
    from .tensors import bos_ids

    bos = tok.bos_token if bos_ids(tok) else ""  # raw text starts as training's raw items do (encode)
    prefixes, refs = [], []
    for m in chosen:
        words = m.text.split()
        cut = rng.randint(max(2, len(words) // 3), max(2, 2 * len(words) // 3))
        prefixes.append(bos + " ".join(words[:cut]))
        refs.append(" ".join(words[cut:]))
    n_new = max(len(tok(r)["input_ids"]) for r in refs) + 4
    comps = gen.generate(pm, tok, prefixes, max_new_tokens=min(n_new, 32), batch_size=len(prefixes),
                         do_sample=True, temperature=1.0)
    rewards = torch.tensor([imitate_reward(c, r, cfg.imitate_g, cfg.imitate_lev_threshold) for c, r in zip(comps, refs)])
    adv = rewards - rewards.mean()
    if float(adv.abs().sum()) == 0.0:
        return None
    dev = next(pm.parameters()).device
    b = collate([encode(tok, p + " ", c, cfg.max_seq_len) for p, c in zip(prefixes, comps)], tok.pad_token_id, dev)
    logits = pm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    seq_lp = -per_sequence_nll(logits, b["labels"])
    return -(adv.to(dev) * seq_lp).mean()


def distill_terms(tok: Any, items: list[Item], new_memories: list[Memory], cfg: SeedConfig):
    """The generating terms (on-policy distillation, Learning-to-Imitate), every `on_policy_every` steps."""
    w_on, w_imit = cfg.w_distill * cfg.alpha * cfg.on_policy_lambda, cfg.w_distill * (1 - cfg.alpha)
    if w_on <= 0 and (w_imit <= 0 or not new_memories):
        return None
    rng = random.Random(cfg.seed + 1)

    def terms(pm: Any, micro: int, batch: list[Item]) -> dict[str, tuple[torch.Tensor, float]]:
        out: dict[str, tuple[torch.Tensor, float]] = {}
        if micro % cfg.on_policy_every != cfg.on_policy_every - 1:
            return out
        if w_on > 0:
            d_on = on_policy(pm, tok, items, rng, cfg.on_policy_samples, cfg.max_seq_len)
            if d_on is not None:
                out["distill_on"] = (d_on, w_on)
        if w_imit > 0 and new_memories:
            imit = imitate(pm, tok, new_memories, rng, cfg)
            if imit is not None:
                out["imitate"] = (imit, w_imit)
        return out

    return terms
