"""Probes the gate can trust.

A held-out dream is only a fair test of what a sleep learned when it asks for
what the memory actually says. The writer is a small model and invents
("How did the building get moved?" with a made-up answer), so the gate does
not take its held-out items on faith: it keeps a probe only when

- its answer is in the memory, every content word of it (grounded),
- the question does not give the answer away, and
- the teacher (the sleep's reader, sleep.dream.reader, reading the memory) answers it with that answer.

An episode left without one gets a probe built from its own text, a blank where
a name, number, date or its closing phrase stood ("Fill in the blank from what
you know: The user's manager is ___"), which needs no writer at all; more blanks
top the probes up to `gate.min_probes`. Blanks pass the same check. The report
says how many of each kind decided. An episode none of whose items passes (a
note too short to cut a blank from, or one the teacher cannot answer from)
is not asked about.
"""
from __future__ import annotations

import re
from typing import Any

from ..models import generate as gen
from ..textmatch import grounded, teacher_agrees, tokens, trivial
from .dream import teacher_prompt
from .spans import answer_spans, span_in
from .types import Memory, Probe

CLOZE = "Fill in the blank from what you know: {prefix} ___"


def checked(model: Any, tok: Any, probes: list[Probe], memories: dict[str, str],
            batch_size: int = 24) -> tuple[list[Probe], dict[str, int]]:
    """The probes worth asking, and why the others were dropped. `model` is the teacher (the
    sleep's reader: the base model, or the pre-sleep one): it reads each probe's memory and must give
    the probe's answer."""
    dropped = {"ungrounded": 0, "trivial": 0, "teacher-disagrees": 0, "unknown-episode": 0}
    keep: list[Probe] = []
    for p in probes:
        text = memories.get(p.episode_id)
        if text is None:
            dropped["unknown-episode"] += 1
        elif not grounded(p.answer, text, min_share=1.0):
            dropped["ungrounded"] += 1
        elif trivial(p.question, p.answer):
            dropped["trivial"] += 1
        else:
            keep.append(p)
    if keep:
        answers = gen.generate(model, tok, [teacher_prompt(tok, p.question, memories[p.episode_id]) for p in keep],
                               max_new_tokens=24, batch_size=batch_size)
        agreed = [p for p, a in zip(keep, answers) if teacher_agrees(a, p.answer, p.question)]
        dropped["teacher-disagrees"] = len(keep) - len(agreed)
        keep = agreed
    return keep, {k: v for k, v in dropped.items() if v}


def cloze(memories: list[Memory], n: int, per_memory: int = 2) -> list[Probe]:
    """Up to `n` fill-in-the-blank probes from the episodes' text (user's voice): the text up to a likely
    answer (a date, number, name or its closing phrase), which must follow at least three words. Taken
    round-robin over the memories, so that a few long ones do not decide for all."""
    per: list[list[Probe]] = []
    for m in memories:
        text = re.sub(r"\s+", " ", m.view).strip()
        found = []
        for span in answer_spans(text, per_memory + 2):
            found_at = span_in(text, span)
            at = found_at.start() if found_at else -1
            prefix = text[:at].strip()
            if at <= 0 or len(tokens(prefix)) < 3 or not tokens(span):
                continue
            found.append(Probe(m.id, CLOZE.format(prefix=prefix[-300:]), span, kind="cloze"))
            if len(found) >= per_memory:
                break
        per.append(found)
    out: list[Probe] = []
    for i in range(per_memory):
        for found in per:
            if i < len(found) and len(out) < n:
                out.append(found[i])
    return out
