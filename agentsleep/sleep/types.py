"""Plain data passed between sleep stages (so each stage can be run and tested alone)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


from ..memory.ledger import SKIPPED  # noqa: F401  the ledger's mark for a set-aside episode ("skipped:<sleep id>")


class Status(str, Enum):
    """How a sleep ended (or that it is still running), as its report and journal say it."""

    RUNNING = "running"
    PROMOTED = "promoted"            # a new version was published and serves
    REJECTED = "rejected"            # the gate (or an empty curriculum) kept the parent serving
    NOTHING_TO_DO = "nothing-to-do"  # no episode the consolidation policy allows
    DRY_RUN = "dry-run"
    INTERRUPTED = "interrupted"      # stopped by a signal, or its process died
    FAILED = "failed"                # an error; the parent keeps serving
    ABORTED = "aborted"              # the daemon stopped the sleeper (deadline, shutdown)

    def __str__(self) -> str:  # f"{status}" and JSON read "promoted", not "Status.PROMOTED"
        return self.value


@dataclass
class Memory:
    """One episode as the sleep sees it: an id, its text as said, and who said it."""

    id: str
    text: str
    replay: bool = False  # consolidated earlier; rehearsed, not newly learned
    speaker: str = "user"  # the episode's source: "assistant" turns are read from the user's side
    who: str | None = None   # a named speaker (a conversation's "Caroline"): their "I" is them
    when: str | None = None  # when it happened, where the caller said so ("8 May 2023")

    @property
    def view(self) -> str:
        """The note the writer, teacher and student read (sleep/voice.py): who said it resolved, dated."""
        from .voice import note

        return note(self.text, self.speaker, who=self.who, when=self.when)


@dataclass
class SleepPlan:
    sleep_id: str
    parent_version: str
    memories: list[Memory]
    replay: list[Memory] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)  # policy reason -> episode ids kept out

    def excluded_note(self) -> str | None:
        """'2 episodes held back by the consolidation policy (untrusted 1, injection 1)', or None."""
        n = sum(len(v) for v in self.excluded.values())
        if not n:
            return None
        parts = ", ".join(f"{k} {len(v)}" for k, v in sorted(self.excluded.items()))
        return f"{n} episode(s) held back by the consolidation policy ({parts}); see sleep.policy and sleep.consolidate_untrusted"
    waiting_after: int = 0  # unconsolidated episodes left for the next sleep
    rebuild: bool = False   # after `forget`: rebuilding from a clean version
    attempt: int = 0        # most earlier failed attempts of any chosen episode: a retry changes the plan by it
    retry_failed: str = ""  # the checks the last failed attempt failed ("retention", "recall_gain", ...)
    backed_off: int = 0     # episodes waiting out a backoff after a failed attempt (not chosen, not blocking)
    quarantined: int = 0    # episodes set aside after repeated failures (`agentsleep retry` releases them)
    clock: int = 0          # sleeps run before this one (the ledger's count): backoff is measured in sleeps


@dataclass(frozen=True)
class Probe:
    """A question the gate asks closed-book, with the answer it must contain."""

    episode_id: str
    question: str
    answer: str
    kind: str = "dream"  # "dream": a held-out dream the gate checked; "cloze": a blank in the episode's own text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Probe":
        """A probe as a version manifest stores it."""
        return cls(str(d.get("episode_id", "")), str(d["question"]), str(d["answer"]), str(d.get("kind", "dream")))


@dataclass
class Dream:
    """A synthetic item about one episode: a question the model wrote and its answer."""

    episode_id: str
    question: str
    answer: str
    stem: str = ""
    kind: str = "qa"
    value: float = 0.0        # learning value: student NLL of the answer without context
    held_out: bool = False    # a probe: never trained on, used by the gate
    replay: bool = False      # from an earlier sleep, rehearsed

    def probe(self) -> Probe:
        """This dream as the gate (and the version manifest) asks it."""
        return Probe(self.episode_id, self.question, self.answer)


@dataclass
class DreamSet:
    dreams: list[Dream]                       # kept for training (and probes, held_out=True)
    written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)   # reason -> count
    implications: list[tuple[str, str]] = field(default_factory=list)  # (episode id, statement), trained as text
    implications_written: int = 0

    @property
    def train(self) -> list[Dream]:
        return [d for d in self.dreams if not d.held_out]

    @property
    def probes(self) -> list[Dream]:
        return [d for d in self.dreams if d.held_out]


@dataclass
class Verdict:
    promote: bool
    reasons: list[str]
    metrics: dict[str, Any]
    hits: dict[str, list[bool]] = field(default_factory=dict)  # per probe: answered before / after (the ledger's record)


@dataclass
class SleepReport:
    sleep_id: str
    status: Status
    version: str | None             # the version serving after this sleep
    parent_version: str
    episodes: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    dreams: dict[str, Any] = field(default_factory=dict)
    excluded: dict[str, list[str]] = field(default_factory=dict)  # held back by the consolidation policy

    def summary(self) -> dict[str, Any]:
        """The `sleep-now --json` shape."""
        return {"sleep_id": self.sleep_id, "status": self.status, "version": self.version,
                "parent_version": self.parent_version, "episodes": self.episodes, "metrics": self.metrics,
                "reasons": self.reasons, "timings": self.timings, "dreams": self.dreams,
                "excluded": self.excluded, "duration_s": round(self.duration_s, 1)}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def print(self, console) -> None:
        from rich.table import Table

        colour = {"promoted": "green", "rejected": "yellow"}.get(self.status, "white")
        console.print(f"sleep {self.sleep_id}: [bold {colour}]{self.status}[/] "
                      f"({len(self.episodes)} episodes, {self.duration_s:.0f} s) -> serving {self.version}")
        for r in self.reasons:
            console.print(f"  - {r}", markup=False)
        if self.metrics:
            t = Table("metric", "value", title="gate")
            for k, v in self.metrics.items():
                if k not in ("peak_rss_mb", "sample_answers", "gate_failed", "loss_curve", "probes_dropped"):  # shown with the timings / in --json
                    t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
            console.print(t)
        if self.timings:
            peak = self.metrics.get("peak_rss_mb") or {}
            t = Table("stage", "seconds", "peak RSS MB", title="timings")
            for k, v in self.timings.items():
                t.add_row(k, f"{v:.1f}", str(peak.get(k, "")))
            console.print(t)
