"""Implications: what a passage says, restated by the model reading it, trained as text.

Questions about a passage teach the spans a writer thought to ask about; a
passage holds more than that. SEAL's "self-edits" have the model list what
follows from a passage (restated facts, consequences, relations between its
parts) and fine-tune on that list: the knowledge is seen in new words, not
only in the passage's own. Here the model reading a long memory (a document,
a long turn: at least `dream.implication_min_chars`) writes such a list; a
statement is kept when it is grounded in the memory (its names and numbers
are there, most of its words too), is not a copy of one of the memory's
sentences, and says something the kept ones do not. Kept statements are
trained like the raw text (sleep/seed.py). One-line facts are left to the
questions: restating a single sentence adds nothing.
"""
from __future__ import annotations

import re
from typing import Any

from rapidfuzz import fuzz

from ..config import DreamConfig
from ..models import generate as gen
from ..progress import Progress, silent
from ..textmatch import STOP, grounded, tokens
from .types import Memory

INSTRUCTION = ("List what follows from this passage: short statements, one per line, each saying one thing "
               "in your own words.\nPassage: {note}")
EXAMPLE = ("Lake Morrow is a reservoir in northern Ontario, created in 1962 when the Tall Pines dam was finished. "
           "It supplies drinking water to three towns and is closed to motorboats.",
           "- Lake Morrow was made by people: the Tall Pines dam created it.\n"
           "- Before 1962 there was no Lake Morrow.\n"
           "- The Tall Pines dam was finished in 1962.\n"
           "- Three towns get their drinking water from Lake Morrow.\n"
           "- Motorboats are not allowed on Lake Morrow.")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def prompt(tok: Any, note: str) -> str:
    return gen.chat(tok, INSTRUCTION.format(note=note.strip()), history=[(INSTRUCTION.format(note=EXAMPLE[0]),
                                                                          EXAMPLE[1])], prefill="-")


def statements(completion: str) -> list[str]:
    """The listed statements of a completion written after the prefill "-"."""
    out = []
    for line in ("- " + completion.strip()).splitlines():
        s = _BULLET.sub("", line).strip()
        if s:
            out.append(s if s[-1] in ".!?" else s + ".")
    return out


def usable(lines: list[str], note: str, cfg: DreamConfig) -> list[str]:
    """At most `cfg.implications` statements that are grounded in `note` (their first word too, unless a
    common one), no copy of one of its sentences and no near-duplicate of one kept before."""
    sentences = [s.lower() for s in _SENTENCE.split(note.strip()) if s]
    have = set(tokens(note))
    out: list[str] = []
    for s in lines:
        if not 4 <= len(s.split()) <= 40 or not grounded(s, note):
            continue
        first = tokens(s.split()[0])  # a statement's first word escapes grounded's name check ("Karl Vell built ...")
        if first and first[0] not in STOP and first[0] not in have:
            continue
        if any(fuzz.ratio(s.lower(), x) >= cfg.dedupe_ratio for x in sentences + [o.lower() for o in out]):
            continue
        out.append(s)
        if len(out) >= cfg.implications:
            break
    return out


def implications(model: Any, tok: Any, memories: list[Memory], cfg: DreamConfig,
                 progress: Progress = silent) -> tuple[list[tuple[str, str]], int]:
    """(episode id, statement) for the new long memories, and how many statements were written."""
    long = [m for m in memories if cfg.implications and not m.replay and len(m.view) >= cfg.implication_min_chars]
    if not long:
        return [], 0
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        progress("dream", done[0], len(long), "implications")

    outs = gen.generate(model, tok, [prompt(tok, m.view) for m in long], max_new_tokens=min(256, 40 * cfg.implications),
                        batch_size=cfg.batch_size, progress=tick)
    kept: list[tuple[str, str]] = []
    written = 0
    for m, o in zip(long, outs):
        lines = statements(o)
        written += len(lines)
        kept += [(m.id, s) for s in usable(lines, m.view, cfg)]
    return kept, written
