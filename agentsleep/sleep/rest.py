"""Dreaming RL with ReST-EM (as in SEAL): learn to write dreams that teach.

E-step: for a few episodes, each candidate dream is tried alone: a fresh
small LoRA trains on it for a few steps, and the dream is scored by how much
the episode's held-out probe answer becomes more likely closed-book. M-step:
the dream writer (a LoRA adapter kept in the home, used while dreaming) is
fine-tuned on the winners. The writer improves from sleep to sleep; this
sleep's training data is unchanged, so a bad round cannot hurt the version.
The improved writer waits beside the current one and replaces it only when
the sleep is promoted (`settle_writer`): a night the gate rejects teaches the
writer nothing.
"""
from __future__ import annotations

import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import SleepConfig
from ..progress import Progress, silent
from .dream import student_prompt, written_completion, written_from
from .tensors import ce_picked, collate, encode, forward_picked, sequence_nll
from .types import Dream, DreamSet, Memory
from .writer import _replace_dir, pending_writer_dir, settle_writer, writer_adapter_dir  # noqa: F401 - re-exported


@contextmanager
def with_writer(model: Any, adapter_dir: Path) -> Iterator[Any]:
    """The dream writer: the model plus the learned writer adapter when there is one."""
    if not (adapter_dir / "adapter_config.json").is_file():
        yield model
        return
    from peft import PeftModel

    pm = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name="writer")
    pm.eval()
    try:
        yield pm
    finally:
        pm.unload()  # removes the LoRA layers: `model` is the plain pre-sleep model again


def _small_lora(r: int = 8):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")


def _seeded_lora(model: Any, cfg: SleepConfig) -> Any:
    """A fresh small LoRA on `model`, initialised from the sleep's seed: the scores, the winners and the next
    writer must not depend on what drew from the random generator before (in a daemon, earlier sleeps)."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(cfg.seed.seed)
    return get_peft_model(model, _small_lora())


def _train(pm: Any, params: list, rows: list, steps: int, lr: float, pad_id: int, micro: int = 4) -> None:
    """`steps` full-batch AdamW steps on mean token CE over all `rows`, accumulated over micro-batches
    of `micro` rows: the same gradient as one batch, without holding every row's activations at once
    (all winners in one batch made the writer's fit the sleep's memory peak: 7.9 GB RSS on 135M)."""
    opt = torch.optim.AdamW(params, lr=lr)
    dev = next(pm.parameters()).device
    chunks = [collate(rows[i:i + micro], pad_id, dev) for i in range(0, len(rows), micro)]
    total = sum(int((c["labels"][:, 1:] != -100).sum()) for c in chunks) or 1
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        for c in chunks:
            (ce_picked(*forward_picked(pm, c)[:2], reduction="sum") / total).backward()
        opt.step()


def score_candidates(model: Any, tok: Any, cases: list[tuple[Dream, list[Dream]]], cfg: SleepConfig,
                     progress: Progress = silent, should_stop=lambda: False) -> list[tuple[Dream, float]]:
    """E-step: (candidate, probe-NLL improvement) for each (probe, candidates) case."""

    pm = _seeded_lora(model, cfg)
    params = [p for p in pm.parameters() if p.requires_grad]
    init = [p.detach().clone() for p in params]
    dev = next(pm.parameters()).device
    out: list[tuple[Dream, float]] = []
    total = sum(len(c) for _, c in cases)
    try:
        for probe, cands in cases:
            pb = collate([encode(tok, student_prompt(tok, probe.question), probe.answer)], tok.pad_token_id, dev)
            with torch.no_grad():
                base = float(sequence_nll(pm, pb)[0])
            for cand in cands:
                if should_stop():
                    return out
                with torch.no_grad():
                    for p, v in zip(params, init):
                        p.copy_(v)
                _train(pm, params, [encode(tok, student_prompt(tok, cand.question), cand.answer)],
                       cfg.rest.inner_steps, cfg.rest.inner_lr, tok.pad_token_id)
                with torch.no_grad():
                    after = float(sequence_nll(pm, pb)[0])
                out.append((cand, base - after))
                progress("rest", len(out), total, "scoring dreams")
    finally:
        pm.unload()
    return out


def fit_writer(model: Any, tok: Any, winners: list[Dream], text: dict[str, str], cfg: SleepConfig, adapter_dir: Path,
               start_from: Path | None = None) -> None:
    """M-step: fine-tune the writer adapter (from `start_from`, default `adapter_dir`, or a fresh one)
    on winning (note -> dream) pairs; save it to `adapter_dir` atomically."""
    from peft import PeftModel

    start_from = start_from or adapter_dir
    if (start_from / "adapter_config.json").is_file():
        pm = PeftModel.from_pretrained(model, str(start_from), is_trainable=True)
    else:
        pm = _seeded_lora(model, cfg)
    try:
        rows = []
        for d in winners:
            source = written_from(tok, text[d.episode_id], d)
            if source is not None:
                rows.append(encode(tok, source[0], written_completion(d, source[1])))
        params = [p for p in pm.parameters() if p.requires_grad]
        _train(pm, params, rows, cfg.rest.writer_steps, cfg.rest.writer_lr, tok.pad_token_id)
        tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pm.save_pretrained(str(tmp))
        _replace_dir(tmp, adapter_dir)
    finally:
        pm.unload()


def rest_em(model: Any, tok: Any, memories: list[Memory], ds: DreamSet, cfg: SleepConfig, home_root: Path,
            progress: Progress = silent, should_stop=lambda: False, writer_model: Any = None) -> dict[str, Any]:
    """`model` is the student the candidates are tried on; the writer adapter is fitted on `writer_model`
    (the weights that write the dreams, sleep.dream.reader), by default the same model."""
    rng = random.Random(cfg.seed.seed)
    text = {m.id: m.view for m in memories}
    stats = {"rest_candidates": 0, "rest_winners": 0, "rest_mean_gain": 0.0}
    gains: list[float] = []
    current, pending = writer_adapter_dir(home_root), pending_writer_dir(home_root)
    shutil.rmtree(pending, ignore_errors=True)  # a pending writer of a sleep that died is never adopted
    for _ in range(cfg.rest.rounds):
        cases = []
        probes = ds.probes[:]
        rng.shuffle(probes)
        for probe in probes[:cfg.rest.episodes]:
            cands = [d for d in ds.train if d.episode_id == probe.episode_id and d.kind not in ("voice", "echo")][:4]  # the writer's own
            if cands:
                cases.append((probe, cands))
        if not cases:
            break
        scored = score_candidates(model, tok, cases, cfg, progress, should_stop)
        winners = [d for d, g in scored if g > cfg.rest.margin]
        gains += [g for _, g in scored]
        stats["rest_candidates"] += len(scored)
        stats["rest_winners"] += len(winners)
        if winners and not should_stop():
            start = pending if (pending / "adapter_config.json").is_file() else current
            fit_writer(model if writer_model is None else writer_model, tok, winners, text, cfg, pending, start_from=start)
    stats["rest_mean_gain"] = round(sum(gains) / len(gains), 4) if gains else 0.0
    return stats
