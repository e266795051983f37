"""Select: snapshot what this sleep consolidates, plus earlier memories to rehearse.

The snapshot is taken once at the start: episodes remembered while the sleep
runs are not in it and wait for the next sleep.
"""
from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path

from ..atomic import atomic_write_json
from ..memory.ledger import CANDIDATE
from .policy import exclusion
from .types import Memory, SleepPlan


def new_sleep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


REBUILD = "rebuild.json"


def load_rebuild(root: Path) -> dict | None:
    """A pending rebuild after `forget`: {"from": clean version, "versions": tainted ones}."""
    try:
        return json.loads((root / "registry" / REBUILD).read_text())
    except (OSError, ValueError):
        return None


def save_rebuild(root: Path, plan: dict | None) -> None:
    p = root / "registry" / REBUILD
    if plan is None:
        p.unlink(missing_ok=True)
        return
    atomic_write_json(p, plan)


def memory(e, replay: bool = False) -> Memory:
    """An episode as the sleep reads it: who said it, and its date when the caller gave one (an event
    time more than a minute from when it was remembered)."""
    when = None
    if e.event_time is not None and abs((e.event_time - e.created_at).total_seconds()) > 60:
        when = e.event_time.strftime("%d %B %Y").lstrip("0")
    return Memory(e.id, e.text, replay=replay, speaker=e.source, who=e.speaker, when=when)


def rehearsal_order(earlier: list, chain: list, at_risk: set[str], rng: random.Random) -> list:
    """Earlier episodes in the order they are rehearsed (spaced repetition on a fixed budget): first those
    the serving version missed when the gate last asked, and on a retry those the rejected night's expert
    missed (`at_risk`), then the least recently rehearsed.

    Cost: one ledger query for the parent's recorded misses plus the lineage's manifests, which select
    reads anyway; the rehearsal itself is sleep.replay_episodes episodes a night however long the
    history, so each one comes round about every len(earlier) / replay_episodes nights."""
    last: dict[str, int] = {}
    for i, v in enumerate(chain):  # base first: the latest version that consolidated or rehearsed it wins
        for e in list(v.manifest.get("episode_ids") or []) + list(v.manifest.get("replay_ids") or []):
            last[e] = i
    keyed = [(e.id not in at_risk, last.get(e.id, -1), rng.random(), e) for e in earlier]
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:3])]


def select(home, *, max_episodes: int | None = None, sleep_id: str | None = None, seed: int = 0) -> SleepPlan:
    cfg = home.config.sleep
    limit = max_episodes or cfg.max_episodes
    rebuild = load_rebuild(home.root)
    if rebuild:  # exact forgetting: start over from the clean version, retake what the tainted ones held
        tainted = set(rebuild["versions"])
        waiting = [e for e in home.store.list() if not e.consolidated_in or e.consolidated_in in tainted]
        limit = max(limit, len(waiting))
        parent = rebuild["from"]
    else:
        waiting = home.store.list(unconsolidated_only=True)
        parent = home.registry.current_name()
    excluded: dict[str, list[str]] = {}
    allowed = []
    for e in waiting:
        why = exclusion(e, cfg)
        if why:
            excluded.setdefault(why, []).append(e.id)
        else:
            allowed.append(e)
    ledger = home.store.ledger
    attempts = ledger.attempts([e.id for e in allowed]) if allowed else {}
    now = ledger.sleeps()
    ready = [e for e in allowed if rebuild or e.id not in attempts or not attempts[e.id].waiting(now)]
    chosen = ready[:limit]  # oldest first: nothing starves; an episode waiting out a backoff holds nobody back
    tried = [attempts[e.id] for e in chosen if e.id in attempts]
    last = max(tried, key=lambda a: a.failures, default=None)
    chain = home.registry.lineage(parent)
    if rebuild:
        chain = [v for v in chain if v.name not in set(rebuild["versions"])]
    lineage = {v.name for v in chain}
    earlier = [e for e in home.store.list() if e.consolidated_in and e.consolidated_in in lineage]
    earlier = [e for e in earlier if not e.superseded_by]  # a newer episode changed its value: not rehearsed
    sleep_id = sleep_id or new_sleep_id()
    rng = random.Random(f"{seed}:{sleep_id}")  # ties broken differently each sleep
    at_risk = ledger.missed_by(parent)
    for failed_night in {a.sleep_id for a in tried}:  # a retry rehearses first what the rejected night forgot
        at_risk |= ledger.missed_by(CANDIDATE + failed_night)
    replay = rehearsal_order(earlier, chain, at_risk, rng)[:cfg.replay_episodes]
    return SleepPlan(
        sleep_id=sleep_id,
        parent_version=parent,
        rebuild=bool(rebuild),
        memories=[memory(e) for e in chosen],
        replay=[memory(e, replay=True) for e in replay],
        excluded=excluded,
        waiting_after=len(allowed) - len(chosen),
        attempt=(int(rebuild.get("attempts") or 0) if rebuild else last.failures if last else 0),
        retry_failed=(rebuild.get("failed", "") if rebuild else last.failed if last else ""),
        backed_off=len(allowed) - len(ready),
        quarantined=sum(a.quarantined for a in ledger.attempts().values()),
        clock=now,
    )
