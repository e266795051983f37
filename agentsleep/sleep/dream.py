"""Dream: the model, reading a memory, writes questions and answers about it.

What works on a small model (docs/EXPERIMENTS.md): few-shot chat (two worked
note -> Q/A turns), variety from question stems prefilled into the answer
("Q: Where") rather than from temperature, greedy decoding, then strict
filters: the answer must appear in the memory, must not be given away by the
question, and the teacher (the reader, sleep.dream.reader: by default the base
model, with the memory in context) must agree.
Kept items are ranked by learning value (the student's loss without context).
The likely answers the writer is asked about come from spans.py.
"""
from __future__ import annotations

import random
import re
from typing import Any

from rapidfuzz import fuzz

from ..config import DreamConfig
from ..models import generate as gen
from ..textmatch import STOP, contains_answer, grounded, mistyped, teacher_agrees, tokens, trivial
from ..progress import Progress, silent
from .implications import implications
from .spans import answer_spans, as_words, echo_question, typed_stem, unplaced, whole_name
from .tensors import batched_nll
from .types import Dream, DreamSet, Memory
from .voice import user_question

INSTRUCTION = "Write one question about this note and its short answer.\nNote: {note}"
EXAMPLES = [
    ("My sister Priya moved to Denver in March.", "Q: Where did Priya move in March?\nA: Denver"),
    ("The team standup is every Tuesday at 9:30 in room B2.", "Q: When is the team standup?\nA: Every Tuesday at 9:30"),
]
ANSWER_INSTRUCTION = "Write one question about this note whose answer is: {span}\nNote: {note}"
ANSWER_EXAMPLES = [
    ("My sister Priya moved to Denver in March.", "Denver", "Q: Which city did Priya move to?\nA: Denver"),
    ("The team standup is every Tuesday at 9:30 in room B2.", "Tuesday", "Q: On which day is the team standup?\nA: Tuesday"),
]
BLANK_INSTRUCTION = ("This note has a blank (___). Write one question about the note whose answer is the blank.\n"
                     "Note: {note}")
BLANK_EXAMPLES = [
    ("My sister Priya moved to ___ in March.", "Q: Where did Priya move in March?"),
    ("The team standup is every ___ at 9:30 in room B2.", "Q: On which day is the team standup?"),
]
_QA = re.compile(r"^\s*(?P<q>[^\n]*?\?)\s*\n+\s*A:\s*(?P<a>[^\n]+)", re.S)


def writer_prompt(tok: Any, note: str, stem: str) -> str:
    history = [(INSTRUCTION.format(note=n), qa) for n, qa in EXAMPLES]
    return gen.chat(tok, INSTRUCTION.format(note=note.strip()), history=history, prefill=f"Q: {stem}")


ANSWER_LABEL = "(answer)"  # an answer-first dream's stem label: "(answer)", or "(answer) When" when typed


def answer_prompt(tok: Any, note: str, span: str, stem: str = "") -> str:
    history = [(ANSWER_INSTRUCTION.format(note=n, span=a), qa) for n, a, qa in ANSWER_EXAMPLES]
    return gen.chat(tok, ANSWER_INSTRUCTION.format(note=note.strip(), span=span), history=history,
                    prefill=f"Q: {stem}" if stem else "Q:")


BLANK_LABEL = "(blank)"  # a blank dream's stem label: "(blank)", or "(blank) Who" with a question word prefilled


def blank_prompt(tok: Any, note: str, span: str, stem: str = "") -> str | None:
    """The writer asked for a question about the note with `span` blanked out (None when the span is not
    in the note). A writer shown the answer tends to ask the reverse question ("Who is Ingrid Solberg?"),
    which gives it away; one that cannot see it asks for it ("Who is the user's manager?")."""
    masked, mentions = as_words(span).subn("___", note)  # every mention: none gives it away
    if not mentions:
        return None
    history = [(BLANK_INSTRUCTION.format(note=n), q) for n, q in BLANK_EXAMPLES]
    masked = masked.strip()
    return gen.chat(tok, BLANK_INSTRUCTION.format(note=masked), history=history, prefill=f"Q: {stem}" if stem else "Q:")


ECHO_LABEL = "(echo)"  # a dream asked by rule (spans.echo_question), not by the writer


def parse_question(stem: str, completion: str) -> str | None:
    """The question a blank prompt's completion writes: its first line up to the question mark."""
    line = _after_stem(stem, completion.strip()).strip().split("\n")[0]
    if "?" not in line:
        return None
    q = line[:line.index("?") + 1].strip()
    return q if len(q) >= 8 and "_" not in q else None


def written_completion(d: Dream, stem: str) -> str:
    """What the writer wrote after the prefilled `stem` (ReST's M-step trains it to write it again)."""
    rest = d.question[len(stem):] if stem and d.question.startswith(stem) else " " + d.question
    return rest if d.stem.startswith(BLANK_LABEL) else f"{rest}\nA: {d.answer}"


def written_from(tok: Any, note: str, d: Dream) -> tuple[str, str] | None:
    """The writer prompt a dream was written from and the stem its completion continues, so that
    ReST's M-step fine-tunes the writer on the prompts it dreams with (an answer-first or blank
    dream's span is taken to be its answer); None for a blank dream whose answer is not in the note."""
    if d.stem.startswith(BLANK_LABEL):
        stem = d.stem[len(BLANK_LABEL):].strip()
        prompt = blank_prompt(tok, note, d.answer, stem)
        return None if prompt is None else (prompt, stem)
    if d.stem.startswith(ANSWER_LABEL):
        stem = d.stem[len(ANSWER_LABEL):].strip()
        return answer_prompt(tok, note, d.answer, stem), stem
    stem = d.stem or d.question.split()[0]
    return writer_prompt(tok, note, stem), stem


def _after_stem(stem: str, completion: str) -> str:
    """The prefilled stem and what the writer wrote after it: "What" + "'s the ..." is "What's the ..."."""
    return f"{stem}{completion}" if completion[:1] in ("", " ", "'", ",") else f"{stem} {completion}"


def parse(stem: str, completion: str) -> tuple[str, str] | None:
    m = _QA.match(_after_stem(stem, completion))
    if not m:
        return None
    q, a = m.group("q").strip(), m.group("a").strip().rstrip(".").strip()
    if len(q) < 8 or not a or len(a) > 120:
        return None
    return q, a


def student_prompt(tok: Any, question: str) -> str:
    """How a closed-book question is asked: the same layout `ask --no-memory` uses."""
    return gen.chat(tok, question)


def teacher_prompt(tok: Any, question: str, memory: str) -> str:
    """The teacher reads the memory in the conversational layout, not `ask`'s terser answer layout: its
    longer replies, which often restate the note, pass more of the writer's questions that carry the
    answer (on the everyday development nights 1-3: 186 trained dreams against 166, a dream carrying
    each fact's answer for 24 of 24 facts against 23; docs/EXPERIMENTS.md, 2026-12-06)."""
    return gen.chat(tok, question, system=gen.memory_system([memory]))


def _cannot_fit(stem: str, answer: str) -> bool:
    """A question word whose answers `answer` cannot be ("When" and no time, "Who"/"Where" and only a
    time); "What"/"Which" can ask for anything ("What day ...?")."""
    return stem.split()[:1] not in (["What"], ["Which"]) and mistyped(f"{stem} ?", answer)


def write(model: Any, tok: Any, memories: list[Memory], cfg: DreamConfig, progress: Progress = silent) -> list[Dream]:
    """m candidate dreams per memory, one per question stem, plus per likely answer one or two written
    to have it and one per blank stem written with it blanked out (batched greedy). A job is (memory,
    the stem its completion continues, its label, prompt, the answer when the job fixes it)."""
    stems = (cfg.stems * (cfg.per_episode // max(len(cfg.stems), 1) + 1))[:cfg.per_episode]
    # A question word that cannot fit is not asked: "When ...?" about a note that says no time, or a
    # blank that is no time; "Who/Where ...?" about a blanked date. Their dreams would all be mistyped.
    jobs = [(m, s, s, writer_prompt(tok, m.view, s), None) for m in memories for s in stems
            if not _cannot_fit(s, m.view)]
    likely = {m.id: answer_spans(m.view, cfg.answer_spans) for m in memories}
    for m in memories:
        for a in likely[m.id]:
            jobs.append((m, "", ANSWER_LABEL, answer_prompt(tok, m.view, a), None))
            if cfg.typed_answer_questions:
                t = typed_stem(a)
                jobs.append((m, t, f"{ANSWER_LABEL} {t}", answer_prompt(tok, m.view, a, t), None))
            for b in cfg.blank_stems:
                if _cannot_fit(b, a) or (b == "Where" and unplaced(m.view, a)):
                    continue
                prompt = blank_prompt(tok, m.view, a, b)
                if prompt is not None:
                    jobs.append((m, b, f"{BLANK_LABEL} {b}".strip(), prompt, a))
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        progress("dream", done[0], len(jobs), "writing")

    outs = gen.generate(model, tok, [j[3] for j in jobs],
                        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=tick)
    dreams = []
    for (m, s, label, _, span), o in zip(jobs, outs):
        if span is None:
            qa = parse(s, o)
        else:  # a blank dream: the writer wrote the question, its answer is the blanked span
            q = parse_question(s, o)
            qa = (q, span) if q else None
        dreams.append(Dream(m.id, qa[0], qa[1], stem=label) if qa else Dream(m.id, "", "", stem=label, kind="unparsed"))
    if cfg.echo_questions:
        for m in memories:
            for a in likely[m.id]:
                q = echo_question(m.view, a)
                if q:
                    dreams.append(Dream(m.id, q, a, stem=ECHO_LABEL, kind="echo"))
    return dreams


def filter_dreams(model: Any, tok: Any, dreams: list[Dream], memories: list[Memory], cfg: DreamConfig,
                  progress: Progress = silent) -> tuple[list[Dream], dict[str, int]]:
    text = {m.id: m.view for m in memories}
    dropped = {"unparsed": 0, "ungrounded": 0, "trivial": 0, "mistyped": 0, "duplicate": 0, "conflicting": 0,
               "teacher-disagrees": 0}
    kept: list[Dream] = []
    for d in dreams:
        d.answer = whole_name(text[d.episode_id], d.answer, d.question)
        if d.kind == "unparsed" or not d.question:
            dropped["unparsed"] += 1
        elif not grounded(d.answer, text[d.episode_id]):
            dropped["ungrounded"] += 1
        elif trivial(d.question, d.answer):
            dropped["trivial"] += 1
        elif mistyped(d.question, d.answer) or (tokens(d.question)[:1] == ["where"]
                                                 and unplaced(text[d.episode_id], d.answer)):
            dropped["mistyped"] += 1  # "When did I run the marathon?" -> "Berlin"; "Where ...?" -> a person
        elif any(k.episode_id == d.episode_id and fuzz.ratio(k.question.lower(), d.question.lower()) >= cfg.dedupe_ratio
                 for k in kept):
            dropped["duplicate"] += 1
        else:
            kept.append(d)
    kept = _drop_conflicts(kept, dropped)
    if cfg.teacher_agreement and kept:
        answers = gen.generate(model, tok, [teacher_prompt(tok, d.question, text[d.episode_id]) for d in kept],
                               max_new_tokens=24, batch_size=cfg.batch_size,
                               progress=(lambda n: progress("dream", 0, 0, "teacher check")))
        agreed, disagreed = [], []
        for d, t in zip(kept, answers):
            if teacher_agrees(t, d.answer, d.question):
                agreed.append(d)
            else:
                disagreed.append(d)
                dropped["teacher-disagrees"] += 1
        # The teacher is a weak judge (it echoes questions, accepts invented values): a memory it rejects every item of would
        # otherwise get no dreams at all; keep its grounded items rather than nothing (the writer's: a question asked
        # by rule that the teacher cannot answer stays out).
        covered = {d.episode_id for d in agreed}
        for d in disagreed:
            if d.episode_id not in covered and d.kind != "echo":
                d.kind = "rescued"
                agreed.append(d)
                dropped["teacher-disagrees"] -= 1
                dropped["rescued"] = dropped.get("rescued", 0) + 1
        kept = agreed
    return kept, dropped


def _drop_conflicts(kept: list[Dream], dropped: dict[str, int]) -> list[Dream]:
    """Drop a question asked about two episodes with different answers ("What is my favourite
    project?" -> Osprey, and -> Kestrel): training both teaches the student that the question's
    template, not the memory, picks the answer."""
    answers: dict[str, set[str]] = {}
    for d in kept:
        answers.setdefault(" ".join(tokens(d.question)), set()).add(" ".join(tokens(d.answer)))
    out = [d for d in kept if len(answers[" ".join(tokens(d.question))]) == 1]
    dropped["conflicting"] = len(kept) - len(out)
    return out


def choose(model: Any, tok: Any, kept: list[Dream], cfg: DreamConfig, seed: int = 0) -> list[Dream]:
    """Per memory: hold out probes, keep the top-k by learning value plus b at random."""
    nll = batched_nll(model, tok, [(student_prompt(tok, d.question), d.answer) for d in kept])
    for d, v in zip(kept, nll):
        d.value = round(float(v), 4)
    rng = random.Random(seed)
    out: list[Dream] = []
    by_ep: dict[str, list[Dream]] = {}
    for d in kept:
        by_ep.setdefault(d.episode_id, []).append(d)
    # An episode with 1-2 usable items trains on all of them, unless no episode has 3: then the
    # gate would have no probe to read, and 2-item episodes give one as before.
    min_items = 3 if any(len(v) >= 3 for v in by_ep.values()) else 2
    for items in by_ep.values():
        items = sorted(items, key=lambda d: -d.value)
        probes: list[Dream] = []
        if len(items) >= min_items and cfg.probes_per_episode:
            pool = [d for d in items[1:] if d.kind == "qa"] or items[1:]  # the teacher agreed with these
            # where it can, not an answer's only question among the likely trained (the top k): the probe
            # would ask a fact that nothing trains
            top = items[:cfg.keep_top_k + cfg.probes_per_episode]
            pool = [d for d in pool if any(o is not d and contains_answer(o.answer, d.answer) for o in top)] or pool
            n = min(cfg.probes_per_episode, len(pool))
            probes = rng.sample(pool, n)  # never the single most valuable item
            for p in probes:
                p.held_out = True
        rest = [d for d in items if not d.held_out]
        top, others = rest[:cfg.keep_top_k], rest[cfg.keep_top_k:]
        out += probes + top + rng.sample(others, min(cfg.keep_random, len(others)))
    return out


_YOU = re.compile(r"\b(?:you|your|yours|yourself)\b", re.I)


def in_both_voices(dreams: list[Dream]) -> list[Dream]:
    """Every trained dream asked two ways: as the writer asked it about the note ("What is the name of the
    user's daughter?") and in the user's own voice ("What is the name of my daughter?"). People ask in
    the first person, agents and tools in the third; a fact trained under one voice is answered under
    that voice only, and twice the phrasings per fact is what teaches the fact rather than the question's
    template. A question asked back to the user ("What is your ...?") is kept in the user's voice only:
    trained as written it would teach the model that the fact is its own. Probes keep one voice."""
    out: list[Dream] = []
    for d in dreams:
        mine = user_question(d.question)
        if _YOU.search(d.question):
            d.question = mine  # the writer asked the note back to the user: only the user's voice
        out.append(d)
        if not d.held_out and mine != d.question:
            out.append(Dream(d.episode_id, mine, d.answer, stem=d.stem, kind="voice", value=d.value))
    # A rewrite can make a trained question the very words of a held-out probe of the same note ("What is
    # your manager's name?" and "What is the user's manager's name?" both become "What is my manager's
    # name?"): trained, it would hand the gate its answer. Such training copies are left out.
    probes = {(d.episode_id, _question_key(d.question)) for d in out if d.held_out}
    return [d for d in out if d.held_out or (d.episode_id, _question_key(d.question)) not in probes]


def _question_key(q: str) -> str:
    return " ".join(re.findall(r"\w+", q.casefold()))


_NOT_VALUES = frozenset("now days day month week year today new anymore instead again these those".split())


def new_values(new: str, old: str) -> list[str]:
    """The likely answers of the new note (answer_spans) that the old note does not state: its new value
    ("The user moved from Porto to Lisbon last month." after "The user lives in Porto." -> Lisbon)."""
    seen = set(tokens(old))
    out = []
    for span in answer_spans(new, 6):
        words = tokens(span)
        if words and not any(w in seen for w in words) and not all(w in _NOT_VALUES or w in STOP for w in words):
            out.append(span)
    return out


def stale_answer(answer: str, old: str, new: str) -> bool:
    """Whether a dream of the episode `new`, which superseded `old`, answers with the old value: a word
    of `old` that `new` dropped or names as left ("from Northgate"), and none of `new`'s new values.
    The 135M teacher reading "The user moved the user's accounts from Northgate to Lumen Bank" answers
    "Where did the user move their accounts?" with "Northgate"; such a dream would train the old value
    under the new episode's name. What both notes keep ("city hospital", "user") is not stale."""
    from ..memory.supersede import moved_from

    words, said = {w for w in tokens(answer) if w not in STOP}, set(tokens(old))
    gone = (said - set(tokens(new))) | ({w for x in moved_from(new) for w in tokens(x)} & said)
    return bool(words & gone) and not any(contains_answer(answer, v) for v in new_values(new, old))


def restate_options(asked: list[tuple[str, Dream]], answers: list[str], views: dict[str, str],
                    old_views: dict[str, str]) -> list[list[str]]:
    """Per superseded question, the candidate new answers: the new note's new values, and the teacher's
    own answer when grounded in the new note and carrying one of those new values (where the new note
    has any): "The user drives a Mazda hatchback", read from "I sold the Mazda; I drive a white Toyota
    now", is grounded and differs from the old answer's wording, yet restates the old value. None that
    still gives the old answer."""
    out = []
    for (new, d), a in zip(asked, answers):
        news = new_values(views[new], old_views.get(d.episode_id, d.answer))
        opts = list(news)
        a = a.strip().split("\n")[0].strip().rstrip(".").strip()
        if (a and len(a) <= 120 and grounded(a, views[new]) and not trivial(d.question, a)
                and (not news or any(contains_answer(a, v) for v in news))):
            opts.append(a)
        out.append([o for o in dict.fromkeys(opts) if not contains_answer(o, d.answer)])
    return out


def pick_restated(asked: list[tuple[str, Dream]], options: list[list[str]], nll: list[list[float]]) -> list[Dream]:
    """For each question (once), the candidate the teacher reading the new note finds likeliest."""
    out, seen = [], set()
    for (new, d), opts, scores in zip(asked, options, nll):
        if not opts or (new, d.question) in seen:
            continue
        seen.add((new, d.question))
        best = min(zip(scores, opts))[1]
        out.append(Dream(new, d.question, best, stem="(update)", kind="update"))
    return out


def restate(model: Any, tok: Any, asked: list[tuple[str, Dream]], views: dict[str, str], cfg: DreamConfig,
            old_views: dict[str, str] | None = None) -> list[Dream]:
    """An updated fact: the questions the superseded episode was trained on (`asked`: (new episode id,
    old dream)) get the new value, so that the sleep trains it against the questions that gave the old
    one. Candidates are the new note's new values and the teacher's answer reading it; the teacher's
    likelihood picks one. `old_views`: the superseded episodes' notes, by id."""
    if not asked:
        return []
    prompts = [teacher_prompt(tok, d.question, views[new]) for new, d in asked]
    answers = gen.generate(model, tok, prompts, max_new_tokens=24, batch_size=cfg.batch_size)
    options = restate_options(asked, answers, views, old_views or {})
    flat = [(p, o) for p, opts in zip(prompts, options) for o in opts]
    scores = iter(batched_nll(model, tok, flat) if flat else [])
    return pick_restated(asked, options, [[next(scores) for _ in opts] for opts in options])


def dream(model: Any, tok: Any, memories: list[Memory], cfg: DreamConfig, *, seed: int = 0, progress: Progress = silent,
          generator: Any = None, student: Any = None, written: list[Dream] | None = None) -> DreamSet:
    """Write, filter and choose. `model` reads the memories (writer and teacher); `generator` (a
    VllmGenerator set to the same weights as `model`) does its generating. The learning values are the
    student's loss (`student`, or `model` when it is the student). `written`: dreams written already (by
    the learned writer, which only writes: the teacher check and the implications read with `model`)."""
    g = generator or model
    written = write(g, tok, memories, cfg, progress) if written is None else written
    kept, dropped = filter_dreams(g, tok, written, memories, cfg, progress)
    chosen = choose(student if student is not None else model, tok, kept, cfg, seed) if kept else []
    dropped["not-chosen"] = len(kept) - len(chosen)
    chosen = in_both_voices(chosen)
    implied, implied_written = implications(g, tok, memories, cfg, progress)
    progress("dream", 1, 1, f"{len(chosen)} kept of {len(written)}")
    return DreamSet(chosen, written=len(written), dropped=dropped, implications=implied,
                    implications_written=implied_written)
