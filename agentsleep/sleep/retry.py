"""No stalls: what happens to the episodes of a night that failed.

Each failed attempt counts per episode in the ledger. The first is retried at the next sleep with a
changed plan (`retry_config`: another seed, more rehearsal or more steps, never the same night
twice); later ones wait out a growing backoff (sleep.retry_backoff) while other episodes proceed;
after sleep.quarantine_after failures, or at once when no usable dream could be written about
them, they are set aside with the reason (`set_aside`). They stay in the store and in recall, and
`agentsleep retry` releases them.
"""
from __future__ import annotations

import math
from typing import Any

from .night import Night
from .select import load_rebuild, save_rebuild
from .types import SleepPlan


def set_aside(n: Night, reason: str) -> dict[str, str]:
    """Mark this sleep's episodes as skipped (SKIPPED + sleep id), with the reason: a sleep that can make
    nothing of them would otherwise retake them (oldest first) every night and never get to the newer
    ones. The same quarantine as repeated rejections (`record_failure`); `agentsleep retry` releases both."""
    ids = [m.id for m in n.plan.memories]
    cfg = n.cfg
    n.home.store.ledger.fail(ids, n.plan.sleep_id, "no_dreams", reason, now_sleep=n.plan.clock,
                             backoff=cfg.retry_backoff, quarantine_after=cfg.quarantine_after, quarantine_now=True)
    return {i: reason for i in ids}


def record_failure(n: Night, failed: list[str], reasons: list[str]) -> tuple[list[str], dict[str, str]]:
    """A rejected night: each of its episodes counts one failed attempt. The first is retried at the next
    sleep with a changed plan (`retry_config`); later ones wait out a growing backoff; after
    sleep.quarantine_after they are set aside. Returns (report lines, set-aside episode -> reason)."""
    cfg, plan = n.cfg, n.plan
    lines: list[str] = []
    ids = [m.id for m in plan.memories]
    if plan.rebuild:
        # A rebuild after `forget` is retried as a whole until it succeeds, never the same way twice; what
        # the weights held before stays out of the backoff. New episodes that rode along count their attempt
        # like any night's, or a daemon without cron would fire at once again for them, rebuild after rebuild.
        lines.append(_count_rebuild_attempt(n, failed))
        held = n.home.store.ledger.versions_of(ids)
        ids = [i for i in ids if i not in held]
    if not ids:
        return lines, {}
    why = "; ".join(reasons)[:500]
    # A batch that fails again is split in two that come back one sleep apart: one episode that cannot be
    # consolidated then drags ever fewer others towards quarantine, instead of the whole batch in lockstep.
    halves = (ids[::2], ids[1::2]) if plan.attempt else (ids, [])
    out = {}
    for extra, part in enumerate(halves):
        if part:
            out.update(n.home.store.ledger.fail(part, plan.sleep_id, ",".join(failed) or "rejected", why,
                                                now_sleep=plan.clock, backoff=cfg.retry_backoff,
                                                quarantine_after=cfg.quarantine_after, extra_wait=extra))
    quarantined = {e: f"set aside after {a.failures} failed attempts; last: {a.reason}" for e, a in out.items()
                   if a.quarantined}
    retried = [a for a in out.values() if not a.quarantined]
    now = [a for a in retried if a.wait_until <= plan.clock + 1]
    if now:
        lines.append(f"{len(now)} episode(s) will be retried at the next sleep with a changed plan (another seed, "
                     "more rehearsal or more steps)")
    if len(retried) > len(now):
        waits = sorted({a.wait_until - plan.clock - 1 for a in retried if a.wait_until > plan.clock + 1})
        lines.append(f"{len(retried) - len(now)} episode(s) failed again and sit out the next "
                     f"{'/'.join(map(str, waits))} sleep(s) (sleep.retry_backoff {cfg.retry_backoff}); other "
                     "episodes proceed")
    if quarantined:
        lines.append(f"{len(quarantined)} episode(s) set aside after {cfg.quarantine_after} failed attempts "
                     "(sleep.quarantine_after); they stay in the store and in recall; `agentsleep retry` releases them")
    return lines, quarantined


def _count_rebuild_attempt(n: Night, failed: list[str]) -> str:
    """A rejected rebuild: its episodes are never set aside (they were in the weights before `forget`), so
    the attempt is counted in the rebuild plan, which the next sleep's plan reads (`select`), and the
    rebuild is retried with another seed and more rehearsal or steps instead of the same verdict nightly."""
    k = _count_rebuild(n.home.root, ",".join(failed) or "rejected")
    return (f"the rebuild after `forget` will be retried at the next sleep with a changed plan (attempt "
            f"{max(k, 1) + 1}); {n.plan.parent_version} keeps serving")


def _count_rebuild(root: Any, failed: str) -> int:
    """One more failed attempt of the pending rebuild, in its plan (`select` reads it): the attempts so far
    (0 without a plan)."""
    rebuild = load_rebuild(root)
    if not rebuild:
        return 0
    rebuild["attempts"] = int(rebuild.get("attempts") or 0) + 1
    rebuild["failed"] = failed
    save_rebuild(root, rebuild)
    return rebuild["attempts"]


def count_crash(home: Any, plan: SleepPlan, error: BaseException) -> None:
    """A sleep that crashed on its episodes (an error no stage handled) counts one failed attempt for them,
    as a rejection does: otherwise an episode that makes a stage raise would be retaken, oldest first, by
    every sleep. Errors of the machine, not of the episodes, count nothing: out of memory, the disk or
    the ledger (OSError, MemoryError, sqlite3 errors, CUDA out of memory), and agentsleep's own errors
    (a store down) never reach here. A crashed rebuild counts in its plan. Counting never hides the
    crash: a failure to count is swallowed."""
    import sqlite3

    if isinstance(error, (OSError, MemoryError, sqlite3.Error)) or "out of memory" in str(error).lower():
        return
    try:
        if plan.rebuild:
            _count_rebuild(home.root, "crashed")
            return
        if not plan.memories:
            return
        cfg = home.config.sleep
        home.store.ledger.fail([m.id for m in plan.memories], plan.sleep_id, "crashed",
                               f"{type(error).__name__}: {error}"[:500], now_sleep=plan.clock,
                               backoff=cfg.retry_backoff, quarantine_after=cfg.quarantine_after)
    except Exception:  # noqa: BLE001 - the crash is the error to report
        pass


def retry_config(cfg: Any, plan: SleepPlan) -> tuple[Any, dict[str, Any]]:
    """The plan for a retried batch: never the same night twice. Another seed (from the attempt number) for
    the dreams kept and the expert; more rehearsal after forgetting (net, retention, drift), more steps
    after too little recall gain. Returns (the sleep settings, what changed) - unchanged on a first try."""
    k = plan.attempt
    if not k:
        return cfg, {}
    failed = set(filter(None, plan.retry_failed.split(",")))
    seed_upd: dict[str, Any] = {"seed": cfg.seed.seed + 1009 * k}
    upd: dict[str, Any] = {}
    if failed & {"net", "retention", "drift", "base_drift"}:
        upd["replay_dreams"] = min(16, cfg.replay_dreams + 2 * k)
    if "recall_gain" in failed:
        seed_upd["min_steps"] = max(cfg.seed.min_steps + 1, math.ceil(cfg.seed.min_steps * (1 + 0.5 * k)))
        seed_upd["epochs"] = max(cfg.seed.epochs + 1, math.ceil(cfg.seed.epochs * (1 + 0.5 * k)))
    new = cfg.model_copy(update={**upd, "seed": cfg.seed.model_copy(update=seed_upd)})
    return new, {"attempt": k, "after": plan.retry_failed, **upd, **seed_upd}
