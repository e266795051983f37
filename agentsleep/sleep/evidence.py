"""What the gate judges a night on, and the per-probe record it keeps across versions.

- `trusted_probes`: this night's held-out dreams that the reader (sleep.dream.reader: the base model,
  or the pre-sleep one), reading their memory, answers as written, topped up with blanks cut from the
  episodes' own text (sleep/probes.py);
- `earlier_items`: what is re-asked of earlier sleeps, never an item rehearsed tonight;
- `first_levels`: whether each of those was answered when its fact was first consolidated (the
  cumulative retention bound reads it);
- `base_reference`: the base model's drift reference, cached, for the bound on drift from the base;
- `record_answers`: the parent's and the candidate's answers, into the ledger.
"""
from __future__ import annotations

import itertools
import random
from typing import Any

from ..memory.ledger import CANDIDATE, probe_id
from ..models.loader import load
from ..textmatch import content_tokens
from .gate import drift_reference
from .generic_prompts import generic_pool
from .probes import checked, cloze
from .night import Night
from .types import Dream, Probe


def _in_turn(items: list, n: int, seed: int = 0) -> list:
    """`n` of `items` (dreams or probes) taken in turn from each episode, in a seeded order (reruns take the
    same ones), so that every earlier fact is asked about, not mostly the few a writer found a dozen
    questions for."""
    rng = random.Random(seed)
    by_episode: dict[str, list] = {}
    for x in items:
        by_episode.setdefault(x.episode_id, []).append(x)
    queues = [rng.sample(xs, len(xs)) for xs in by_episode.values()]
    rng.shuffle(queues)
    turns = (x for turn in itertools.zip_longest(*queues) for x in turn if x is not None)
    return list(itertools.islice(turns, n))


def to_the_point(dreams: list[Dream], most: int = 3) -> list[Dream]:
    """Per episode, its dreams whose answer is a few words (a name, a date, a value: at most `most` content
    words) when it has any. A retention probe asks for the fact; a whole-sentence answer ("Ingrid Solberg is
    a manager of the team") is missed as soon as the model words it otherwise, and the gate would count
    that as a forgotten fact (most of one development night's "lost" facts were such sentences)."""
    short = {d.episode_id for d in dreams if len(content_tokens(d.answer)) <= most}
    return [d for d in dreams if d.episode_id not in short or len(content_tokens(d.answer)) <= most]


def retained(dreams: list[Dream], rehearsed: list[Dream], n: int, seed: int = 0,
             taken: set[str] | frozenset[str] = frozenset()) -> list[Dream]:
    """Up to `n` questions of earlier facts (their trained dreams) that tonight's rehearsal does not train,
    taken in turn across their episodes (`seed`: another draw each night and retry): the candidates on which
    seeding holds the expert to the parent's answers (seed.retain_questions). The gate leaves them out as it
    leaves out the rehearsed ones, so each episode keeps one short-answer dream (`to_the_point`) for the gate
    to ask; a question asked tonight of a new episode (`taken`, lower-cased) is never held either."""
    if n <= 0:
        return []
    trained = {(d.episode_id, d.question) for d in rehearsed}
    pool = {(d.episode_id, d.question): d for d in dreams
            if (d.episode_id, d.question) not in trained and d.question.strip().lower() not in taken}
    reserved: dict[str, Dream] = {}
    for d in _in_turn(to_the_point(list(pool.values())), len(pool), seed=seed):
        reserved.setdefault(d.episode_id, d)
    for d in reserved.values():
        pool.pop((d.episode_id, d.question))
    return _in_turn(list(pool.values()), n, seed=seed)


def earlier_items(probes: list[Probe], dreams: list[Dream], rehearsed: list[Dream], n: int,
                  max_probes: int | None = None, night: int = 0,
                  replayed: set[str] | frozenset[str] = frozenset()) -> tuple[list[Probe], list[float]]:
    """What the gate re-asks of earlier sleeps, and how many earlier facts each item stands for.

    Their probes plus a seeded sample of `n` trained dreams (only the short answers of an episode that has
    any: `to_the_point`), each question once, and nothing trained tonight: no dream rehearsed tonight, and
    no blank cut from the text of an episode rehearsed tonight (`replayed`: its raw text is trained).

    Two strata, each a random sample of its own: the episodes rehearsed tonight (chosen on purpose, those the
    gate last found missed first, so never a sample of the history) and the rest. Past `max_probes` probes,
    each stratum is asked a draw taken in turn from its episodes (a different draw each `night`; the
    rehearsed ones at most half of the probes), so that the gate's cost stays flat however long the
    history, and its dream sample comes only from the episodes it asks. An item's scale (episodes of its
    stratum with a probe / those asked, else 1) turns the gate's counts into estimates over all earlier
    facts: losses counted on a sample must weigh what losses over the whole history would, or the net
    check would grow laxer night after night; and facts regained by tonight's rehearsal must not be
    multiplied as if they were a sample of the history."""
    trained = {(d.episode_id, d.question) for d in rehearsed}
    probes = list({probe_id(p.question, p.answer): p for p in probes
                   if not (p.kind == "cloze" and p.episode_id in replayed)}.values())
    sampled = max_probes is not None and len(probes) > max_probes
    asked: list[Probe] = []
    scale: dict[bool, float] = {}  # stratum (rehearsed tonight?) -> earlier facts each one asked stands for
    eligible: dict[bool, set[str] | None] = {}  # -> episodes whose dreams may be sampled (None: any)
    for rehearsed_tonight in (True, False):
        ps = [p for p in probes if (p.episode_id in replayed) == rehearsed_tonight]
        population = {p.episode_id for p in ps}
        if sampled:
            room = max_probes // 2 if rehearsed_tonight else max_probes - len(asked)
            ps = _in_turn(ps, max(0, min(len(ps), room)), seed=night)
        mine = {p.episode_id for p in ps}
        scale[rehearsed_tonight] = len(population) / len(mine) if mine else 1.0  # mine is a subset: at least 1
        eligible[rehearsed_tonight] = mine if sampled else None
        asked += ps

    def may_ask(d: Dream) -> bool:
        allowed = eligible[d.episode_id in replayed]
        return (d.episode_id, d.question) not in trained and (allowed is None or d.episode_id in allowed)

    sample = _in_turn(to_the_point([d for d in dreams if may_ask(d)]), n)
    items: dict[str, tuple[Probe, float]] = {}
    for p in asked + [d.probe() for d in sample]:
        items.setdefault(probe_id(p.question, p.answer), (p, scale[p.episode_id in replayed]))
    return [p for p, _ in items.values()], [sc for _, sc in items.values()]


def first_levels(n: Night, earlier: list[Probe]) -> list[bool | None]:
    """Whether each earlier probe was answered when its fact was first consolidated: the answer recorded
    for the first version of this lineage, from the one that consolidated its episode on, that was
    asked it (None when no version of the lineage has been; the gate then takes the parent's answer)."""
    ledger = n.home.store.ledger
    order = {v.name: i for i, v in enumerate(n.home.registry.lineage(n.parent.name))}
    origin: dict[str, str] = {}
    for v in n.lineage:  # base first: an episode's first version in the lineage
        for e in v.manifest.get("episode_ids") or []:
            origin.setdefault(e, v.name)
    ids = [probe_id(p.question, p.answer) for p in earlier]
    ledger.record_probes([(i, p.episode_id, p.question, p.answer) for i, p in zip(ids, earlier)])
    ledger.set_probe_since({i: origin[p.episode_id] for i, p in zip(ids, earlier) if p.episode_id in origin})
    since, results = ledger.probe_since(ids), ledger.results(ids)
    out: list[bool | None] = []
    for i, p in zip(ids, earlier):
        start = order.get(origin.get(p.episode_id) or since.get(i, ""), 0)
        seen = sorted((order[v], hit) for v, hit in results.get(i, {}).items() if v in order and order[v] >= start)
        out.append(seen[0][1] if seen else None)
    return out


def record_answers(n: Night, earlier: list[Probe]) -> None:
    """The per-probe record: the parent's answers, and the expert's as this sleep's candidate (named after
    the version if it is published)."""
    h, ledger = n.verdict.hits, n.home.store.ledger
    ledger.record_probes([(probe_id(p.question, p.answer), p.episode_id, p.question, p.answer) for p in n.probes])
    ids = [probe_id(p.question, p.answer) for p in n.probes]
    old = [probe_id(p.question, p.answer) for p in earlier]
    if not h:
        return
    ledger.record_results(n.parent.name, {**dict(zip(ids, h["before"])), **dict(zip(old, h["earlier_before"]))})
    ledger.record_results(CANDIDATE + n.plan.sleep_id, {**dict(zip(ids, h["after"])), **dict(zip(old, h["earlier_after"]))})


def base_reference(n: Night) -> dict[str, Any] | None:
    """The base model's drift reference (gate.drift_reference), cached in the registry: computed on the
    pre-sleep model when the parent is the base (nearly free), else once by loading the base. None on
    the first sleep: there drift from the parent is drift from the base."""
    import torch

    reg, cfg = n.home.registry, n.cfg.gate
    base = reg.lineage(n.parent.name)[0]
    path = reg.root / "cache" / f"{base.name}-drift-ref.pt"
    ref = None
    try:
        ref = torch.load(path, weights_only=True)
        if len(ref["pool"]) < min(cfg.drift_prompts, len(n.drift_pool)):
            ref = None
    except (OSError, RuntimeError, KeyError, ValueError, EOFError):
        ref = None
    if ref is None:
        n.say("gate", 0, 3, "base drift reference")
        if n.parent.name == base.name:
            with n.pm.disable_adapter():
                ref = drift_reference(n.pm, n.tok, n.drift_pool[:cfg.drift_prompts])
        else:
            model_cfg = n.home.config.model
            bm, btok = load(base.weights, dtype=model_cfg.dtype, device=model_cfg.device)
            pool = generic_pool(bm, btok, reg, base.name, 0, cfg.drift_prompts)["drift"]
            ref = drift_reference(bm, btok, [tuple(x) for x in pool])
            del bm
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(ref, tmp)
        tmp.replace(path)
    return None if n.parent.name == base.name else ref


def _current(n: Night, blanks: list[Probe], texts: dict[str, str]) -> list[Probe]:
    """Blanks less those of an updating episode that ask for the old value ("... from ___ to Lumen Bank");
    `texts`: the new episodes' notes, by id."""
    from .dream import stale_answer

    return [p for p in blanks if not any(stale_answer(p.answer, old, texts[p.episode_id])
                                         for old in n.updates.get(p.episode_id, {}).values())]


def trusted_probes(n: Night, engine: Any = None) -> tuple[list[Probe], list[str]]:
    """The held-out dreams the reader (sleep.dream.reader: the base or the parent, before training),
    reading their memory, answers as written; then a blank in the episode's own text for every episode
    left without one (a fact the gate cannot ask about is a fact it cannot see learned), topped up to
    gate.min_probes with more blanks. Blanks pass the same probe check (sleep/probes.py). Notes say when
    blanks were needed. `engine`: a vLLM engine holding the reader's weights, to generate with."""
    need = n.cfg.gate.min_probes
    texts = {m.id: m.view for m in n.plan.memories}
    teacher = n.reader if engine is None else engine.with_lora(None)
    probes, n.probe_dropped = checked(teacher, n.tok, [d.probe() for d in n.dreams.probes], texts)
    covered = {p.episode_id for p in probes}
    blanks = _current(n, cloze([m for m in n.plan.memories if m.id not in covered], len(n.plan.memories), per_memory=1),
                      texts)
    extra, _ = checked(teacher, n.tok, blanks, texts) if blanks else ([], {})
    failed = len(blanks) - len(extra)
    if len(probes) + len(extra) < need:  # top up with more blanks, those the teacher fills
        asked = {p.question for p in blanks}
        more = [p for p in _current(n, cloze(n.plan.memories, 2 * len(n.plan.memories)), texts)
                if p.question not in asked][:2 * need]
        passed, _ = checked(teacher, n.tok, more, texts) if more else ([], {})
        failed += len(more) - len(passed)
        extra += passed[:need - len(probes) - len(extra)]
    notes = []
    if extra or failed:
        dropped = ", ".join(f"{k} {v}" for k, v in n.probe_dropped.items()) or "none dropped"
        notes.append(f"{len(probes)} held-out dreams passed the probe check ({dropped}) for "
                     f"{len(covered)} of {len(n.plan.memories)} episodes: {len(extra)} fill-in-the-blank probes from the "
                     f"episodes' text were added ({failed} failed the probe check)")
    if len(probes) + len(extra) < need:
        notes.append(f"only {len(probes) + len(extra)} probes for {len(n.plan.memories)} episodes, under gate.min_probes "
                     f"{need}: the recall check was decided on what could be measured")
    return probes + extra, notes
