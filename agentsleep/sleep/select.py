"""Select: snapshot what this sleep consolidates, plus earlier memories to rehearse.

The snapshot is taken once at the start: episodes remembered while the sleep
runs are not in it and wait for the next sleep.
"""
from __future__ import annotations

import random
import time
import uuid

from .types import Memory, SleepPlan


def new_sleep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def select(home, *, max_episodes: int | None = None, sleep_id: str | None = None, seed: int = 0) -> SleepPlan:
    cfg = home.config.sleep
    limit = max_episodes or cfg.max_episodes
    waiting = home.store.list(unconsolidated_only=True)
    trusted = [e for e in waiting if e.trust == "trusted" or cfg.consolidate_untrusted]
    chosen = trusted[:limit]  # oldest first: nothing starves
    lineage = {v.name for v in home.registry.lineage()}
    earlier = [e for e in home.store.list() if e.consolidated_in and e.consolidated_in in lineage]
    rng = random.Random(seed)
    replay = rng.sample(earlier, min(cfg.replay_episodes, len(earlier)))
    return SleepPlan(
        sleep_id=sleep_id or new_sleep_id(),
        parent_version=home.registry.current_name(),
        memories=[Memory(e.id, e.text) for e in chosen],
        replay=[Memory(e.id, e.text, replay=True) for e in replay],
        skipped_untrusted=len(waiting) - len(trusted),
        waiting_after=len(trusted) - len(chosen),
    )
