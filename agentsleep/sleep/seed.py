"""Knowledge seeding: teach a fresh LoRA expert what the model knows only in context.

Teacher = the pre-sleep model reading the memory (the same weights with the
adapter disabled, so no second copy). Student = the pre-sleep model plus the
expert, reading nothing. This module turns dreams and memories into items and
starts the training; objective.py holds the loss terms, train.py the loop
(accelerate: one code path for CPU, GPU and several processes) and launch.py
the worker processes. Per step:

    L = w_sft * CE(dream answers and raw memory text)                  hard labels
      + w_distill * [ alpha * (1 - lam) * D_off(teacher soft targets on dream answers)  off-policy
                    + alpha * lam * D_on(reverse KL on student samples, teacher-scored) on-policy
                    + (1 - alpha) * L_imitate(REINFORCE: complete a memory's prefix) ]  Learning-to-Imitate
      + w_replay * KL(pre-sleep || student) on generic prompts            keeps general behaviour
      + w_retain * KL(pre-sleep || student) on earlier facts' questions   keeps what the parent knew (64 questions)

w_distill is 0 by default: the distillation terms need a teacher that is sure
of its answer with the memory in context, which a small model is not
(docs/EXPERIMENTS.md has the measurements). The on-policy and imitate terms
need generation, so they run every `on_policy_every` steps.
"""
from __future__ import annotations

import re

from typing import Any, Callable

import torch

from ..config import SeedConfig
from ..progress import Progress, silent
from ..textmatch import contains_answer
from .dream import student_prompt, teacher_prompt
from .launch import train_in_workers
from .objective import Item, attach_soft_targets, distill_terms, lora_config
from .spans import answer_spans
from .tensors import encode
from .train import train
from .types import Dream, Memory



def balanced(dreams: list[Dream], at_least: int, per_answer: int = 0,
             spans: dict[str, list[str]] | None = None) -> list[Dream]:
    """Every new episode's trained dreams, repeated up to `at_least` items: a fact the writer found
    one good question for ("Where is the production database hosted?") otherwise gets one step's
    share of the gradient in four epochs, and loses to neighbours with ten phrasings.

    First each likely answer of an episode (`spans`: episode id -> its likely answers) that only a
    few trained dreams give has them repeated up to `per_answer`: a note's second answer (the date in
    "Project Falcon launches on 14 February 2027", the city in "My brother Tomas lives in Vancouver")
    often has one question among several about its first, and is the one the morning misses. An
    answer no dream gives gets nothing: there is no question to repeat."""
    train = [d for d in dreams if not d.held_out]
    by_ep: dict[str, list[Dream]] = {}
    for d in train:
        if not d.replay:
            by_ep.setdefault(d.episode_id, []).append(d)
    extra: list[Dream] = []
    for eid, ds in by_ep.items():
        mine: list[Dream] = []
        for span in (spans or {}).get(eid, []) if per_answer else []:
            giving = [d for d in ds if contains_answer(d.answer, span)]
            have = len(giving) + sum(contains_answer(d.answer, span) for d in mine)  # copies made for another span
            if giving:
                mine += [giving[i % len(giving)] for i in range(max(0, per_answer - have))]
        mine += [ds[i % len(ds)] for i in range(max(0, at_least - len(ds) - len(mine)))]
        extra += mine
    return train + extra


def token_chunks(tok: Any, text: str, max_tokens: int) -> list[str]:
    """`text` in pieces of at most `max_tokens` tokens, cut between sentences (between words when a
    sentence alone is longer): training sequences are cut to seed.max_seq_len, and a long document
    must be learned whole, not only its last part."""
    def n(t: str) -> int:
        return len(tok(t, add_special_tokens=False)["input_ids"])

    if n(text) <= max_tokens:
        return [text]
    units: list[str] = []
    for sent in re.split(r"(?<=[.!?])\s+", text.strip()):
        if n(sent) <= max_tokens:
            units.append(sent)
            continue
        words, cur = sent.split(), []
        for w in words:
            if cur and n(" ".join(cur + [w])) > max_tokens:
                units.append(" ".join(cur))
                cur = []
            cur.append(w)
        if cur:
            units.append(" ".join(cur))
    out, cur = [], ""
    for u in units:
        if cur and n(f"{cur} {u}") > max_tokens:
            out.append(cur)
            cur = u
        else:
            cur = f"{cur} {u}".strip()
    if cur:
        out.append(cur)
    return out


def build_items(tok: Any, dreams: list[Dream], memories: list[Memory], include_raw: bool, raw_repeats: int = 1,
                min_dreams: int = 0, max_tokens: int = 256, notes: list[tuple[str, str]] = (),
                per_answer: int = 0) -> list[Item]:
    """Training items: the dreams as questions answered closed-book, and as text (no prompt) the memories
    and `notes`, the (episode id, statement) implications written about them."""
    text = {m.id: m.view for m in memories}
    spans = {m.id: answer_spans(m.view, 16) for m in memories if not m.replay} if per_answer else {}
    items = [Item(student_prompt(tok, d.question), d.answer,
                  teacher_prompt(tok, d.question, text[d.episode_id]) if d.episode_id in text and not d.replay else None,
                  d.episode_id) for d in balanced(dreams, min_dreams, per_answer, spans)]
    if include_raw:
        items += [Item("", piece, None, m.id) for m in memories for piece in token_chunks(tok, m.view, max_tokens - 2)
                  for _ in range(raw_repeats)]
    items += [Item("", statement, None, eid) for eid, statement in notes]
    return items


def known(model: Any, tok: Any, dreams: list[Dream], max_len: int = 256, batch_size: int = 16) -> list[Dream]:
    """Those of `dreams` whose answer `model` gives itself asked closed-book: under teacher forcing every
    answer token is its first choice (one forward pass per batch, no generation). What the retain term
    holds: a fact the parent has lost is rehearsal's to bring back, not something to hold it to."""
    from .tensors import collate, forward_picked

    keep: list[Dream] = []
    dev = next(model.parameters()).device
    with torch.no_grad():
        for s in range(0, len(dreams), batch_size):
            part = dreams[s:s + batch_size]
            rows = [encode(tok, student_prompt(tok, d.question), d.answer, max_len) for d in part]
            sel, tgt, row = forward_picked(model, collate(rows, tok.pad_token_id, dev))
            hit = (sel.argmax(-1) == tgt).tolist()
            by_row: dict[int, list[bool]] = {}
            for r, h in zip(row.tolist(), hit):
                by_row.setdefault(r, []).append(h)
            # the last label is the end-of-sequence token: a parent that goes on after the answer still knows it
            keep += [d for i, d in enumerate(part) if by_row.get(i) and all(by_row[i][:-1] or by_row[i])]
    return keep


def seed(model: Any, tok: Any, dreams: list[Dream], memories: list[Memory], cfg: SeedConfig, *,
         replay_pool: list[tuple[str, str]] = (), retain: list[Dream] = (), progress: Progress = silent,
         should_stop: Callable[[], bool] = lambda: False, layers: list[int] | None = None, source: str | None = None,
         notes: list[tuple[str, str]] = ()):
    """Train a fresh LoRA expert on `model` (wrapped in place by peft). Returns (peft_model, SeedStats).

    `replay_pool` holds generic (prompt, answer) pairs and `retain` earlier facts' dreams, asked closed-book:
    on both the student is held to the pre-sleep model's distribution (train.py's KL terms).

    With `cfg.processes > 1` the training runs in `accelerate launch` worker
    processes that load `source` (the weights `model` was loaded from) and
    hand back the trained expert; otherwise it runs here.
    """
    from peft import get_peft_model

    items = build_items(tok, dreams, memories, cfg.include_raw_text, cfg.raw_repeats, cfg.min_dreams_per_episode,
                        cfg.max_seq_len, notes, cfg.min_dreams_per_answer)
    if cfg.w_distill * cfg.alpha * (1 - cfg.on_policy_lambda) > 0:
        attach_soft_targets(model, tok, items, cfg.max_seq_len)
    replay_rows = [encode(tok, p, a, cfg.max_seq_len) for p, a in replay_pool]
    retain_rows = [encode(tok, student_prompt(tok, d.question), d.answer, cfg.max_seq_len) for d in retain]
    new_memories = [m for m in memories if not m.replay]
    if cfg.processes > 1:
        pm, stats = train_in_workers(model, source, items, replay_rows, new_memories, cfg, layers=layers,
                                     progress=progress, should_stop=should_stop, retain_rows=retain_rows)
        return pm, stats
    torch.manual_seed(cfg.seed)  # the expert's initialisation is part of the result
    pm = get_peft_model(model, lora_config(cfg, layers))
    stats = train(pm, tok, items, cfg, replay_rows=replay_rows, retain_rows=retain_rows,
                  extra_terms=distill_terms(tok, items, new_memories, cfg), progress=progress, should_stop=should_stop)
    return pm, stats


