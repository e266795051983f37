"""The Night: what the stages of one sleep share (sleep/pipeline.py runs them over it in order).

Each stage reads what earlier stages left on it and adds its own result, plain data from
sleep/types.py; the modules the stages call (evidence.py, retry.py) take it too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..models.registry import Version
from ..progress import Progress
from .journal import Journal
from .objective import SeedStats
from .types import Dream, DreamSet, Probe, SleepPlan, SleepReport, Status, Verdict


@dataclass
class Night:
    """What the stages of one sleep share. Each stage fills in its part."""

    home: Any
    plan: SleepPlan
    journal: Journal
    stop: Callable[[], bool]
    say: Progress
    started_at: float
    parent: Version | None = None
    model: Any = None
    reader: Any = None                        # reads the new episodes (sleep.dream.reader): the base model or `model`;
                                              # None once the probes stage has released it
    tok: Any = None
    lineage: list[Version] = field(default_factory=list)
    engine: Any = None                        # the vLLM generation engine, when sleep.generator asks for one
    dreams: DreamSet | None = None
    updates: dict[str, dict[str, str]] = field(default_factory=dict)  # new episode id -> {superseded id: its note}
    rest_stats: dict[str, Any] = field(default_factory=dict)
    rehearsed: list[Dream] = field(default_factory=list)
    retained: list[Dream] = field(default_factory=list)  # earlier questions held to the parent's answers
    drift_pool: list[tuple[str, str]] = field(default_factory=list)
    earlier_probes: list[Probe] = field(default_factory=list)
    earlier_dreams: list[Dream] = field(default_factory=list)
    pm: Any = None                            # the model with this sleep's expert
    seed_stats: SeedStats | None = None
    probes: list[Probe] = field(default_factory=list)
    probe_dropped: dict[str, int] = field(default_factory=dict)
    probe_notes: list[str] = field(default_factory=list)  # what the probe check had to do, for the verdict
    verdict: Verdict | None = None
    version: Version | None = None            # published
    retry: dict[str, Any] = field(default_factory=dict)  # how a retried batch's plan was changed (retry_config)
    sleep_cfg: Any = None                     # the sleep settings for this night (changed on a retry)

    @property
    def cfg(self):
        return self.sleep_cfg or self.home.config.sleep

    def report(self, status: Status, reasons: list[str], **kw: Any) -> SleepReport:
        return SleepReport(sleep_id=self.plan.sleep_id, status=status, parent_version=self.plan.parent_version,
                           started_at=self.started_at, episodes=[m.id for m in self.plan.memories],
                           version=self.version.name if self.version else self.plan.parent_version,
                           reasons=reasons, timings=dict(self.journal.timings), **kw)

    def metrics(self) -> dict[str, Any]:
        ds, stats, timings = self.dreams, self.seed_stats, self.journal.timings
        return {**self.verdict.metrics, "seed_steps": stats.steps, "seed_loss": stats.mean(),
                "seed_tokens_per_s": round(stats.tokens / max(stats.seconds, 1e-9), 1),
                "loss_curve": {k: [round(float(x), 4) for x in v] for k, v in stats.losses.items()},
                "seconds_per_episode": round(sum(timings.values()) / max(len(self.plan.memories), 1), 1),
                "peak_rss_mb": dict(self.journal.peak_mb),
                "dreams_kept": len(ds.train), "dreams_written": ds.written,
                **({"implications_kept": len(ds.implications), "implications_written": ds.implications_written}
                   if ds.implications_written else {}),
                "generator": "vllm" if self.engine is not None else "transformers",
                **({"retry": self.retry} if self.retry else {}), **self.rest_stats}

    def dream_info(self) -> dict[str, Any]:
        ds = self.dreams
        return {"written": ds.written, "trained": len(ds.train), "probes": len(ds.probes),
                "rehearsed": len(self.rehearsed), **({"retained": len(self.retained)} if self.retained else {}),
                "dropped": ds.dropped, "implications": len(ds.implications)}
