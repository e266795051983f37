"""The seeding training loop, on Hugging Face accelerate: one code path for CPU, one GPU and many.

`train()` is what every process runs. In one process it runs inside the
sleep; with `seed.processes > 1` the sleep starts `accelerate launch` on
`agentsleep.sleep.launch`, and each process runs this same loop on its share
of every batch (DDP gradient averaging; FSDP through an accelerate config
file). The result does not depend on the number of processes: each process's
loss is its share of the *global* token sum divided by the global token count,
so the averaged gradient is exactly the one-process gradient
(tests/test_train.py checks 1 vs 2 CPU processes).

Knobs (all in SeedConfig): bf16 autocast (`mixed_precision`, "auto" = bf16 on
CUDA and on CPUs with native bf16), gradient checkpointing, gradient accumulation.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import SeedConfig
from ..errors import SleepError
from ..progress import Progress, silent
from .objective import Interrupted, Item, SeedStats, soft_ce
from .tensors import ce_picked, collate, encode, forward_picked, kl_picked, picked


class Student(torch.nn.Module):
    """The peft model as one module whose forward returns what the losses read.

    DDP synchronises gradients through its wrapper's forward, so the training
    forward must go through a module accelerate prepared, not through the
    decoder directly (forward_picked reaches into the decoder).
    """

    def __init__(self, pm: Any):
        super().__init__()
        self.pm = pm

    def forward(self, batch: dict[str, torch.Tensor], full: bool = False):
        if full:  # off-policy distillation needs every answer position's logits
            return self.pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return forward_picked(self.pm, batch)


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX). Only there does bf16 autocast pay on a CPU
    (docs/EXPERIMENTS.md); "auto" keeps other CPUs in fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def mixed_precision(cfg: SeedConfig, device: torch.device) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "no"


def accelerator(cfg: SeedConfig, device: torch.device):
    """The process's Accelerator. It never moves the model (device_placement=False): the sleep
    put it on model.device, and a worker on its own GPU."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    cpu = device.type == "cpu"
    if PartialState(cpu=cpu).num_processes == 1:
        # One process may run many sleeps with different devices or precisions (tests, benchmarks),
        # and accelerate keeps its state in process-wide singletons: start them afresh each time.
        # (Private API, accelerate 1.x; it also clears the state of any other Accelerator in this process.)
        AcceleratorState._reset_state(reset_partial_state=True)
    # gradient accumulation is done by hand (no_sync, one optimizer step per group of micro-batches)
    acc = Accelerator(cpu=cpu, mixed_precision=mixed_precision(cfg, device), device_placement=False)
    if acc.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        raise SleepError(f"seeding runs in one process or with DDP (several CPU processes or GPUs); "
                         f"accelerate chose {acc.distributed_type.value}, which is not supported (FSDP/DeepSpeed)")
    return acc


def _n_labels(row: tuple[list[int], list[int]]) -> int:
    """Positions a row is scored on (labels shifted by one, as forward_picked reads them)."""
    return sum(1 for y in row[1][1:] if y != -100)


def train(pm: Any, tok: Any, items: list, cfg: SeedConfig, *, replay_rows: list = (), retain_rows: list = (),
          extra_terms=None, progress: Progress = silent, should_stop: Callable[[], bool] = lambda: False):
    """Train the LoRA expert already attached to `pm` (a peft model) on `items`. Returns SeedStats.

    `replay_rows` (generic answers) and `retain_rows` (earlier facts' questions) are encoded rows on which
    the student is held to the pre-sleep model by KL (`w_replay`, `w_retain`).
    `extra_terms(pm, micro_step, batch_items)` adds the paper's distillation
    terms (seed.py); it returns {name: (loss, weight)}. They sample with their own
    seeded generator, so every process computes the same ones.
    """
    t0 = time.time()
    acc = accelerator(cfg, next(pm.parameters()).device)
    torch.manual_seed(cfg.seed)
    base = pm.get_base_model()
    was_ckpt, was_cache = getattr(base, "is_gradient_checkpointing", False), getattr(base.config, "use_cache", True)
    try:
        if cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
        return _train(pm, tok, items, cfg, acc, replay_rows, retain_rows, extra_terms, progress, should_stop, t0)
    finally:
        if cfg.gradient_checkpointing and not was_ckpt:
            base.gradient_checkpointing_disable()
        base.config.use_cache = was_cache
        pm.eval()
        acc.free_memory()


def step_groups(items: list[Item], cfg: SeedConfig, rng: random.Random) -> list[list[list[Item]]]:
    """Every micro-batch of every epoch (shuffled by `rng`), grouped into optimizer steps.

    Adam moves each weight by about lr per step, so a sleep's learning grows with its step count:
    a small sleep gets extra epochs up to seed.min_steps instead of learning next to nothing."""
    per_epoch = max(1, math.ceil(len(items) / cfg.batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps * cfg.grad_accum / per_epoch))
    schedule: list[list[Item]] = []
    for _ in range(epochs):
        order = items[:]
        rng.shuffle(order)
        schedule += [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    return [schedule[g:g + cfg.grad_accum] for g in range(0, len(schedule), cfg.grad_accum)]


def warmup_then_linear(opt: torch.optim.Optimizer, total: int, warmup_frac: float):
    warm = max(1, int(total * warmup_frac))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))


@dataclass
class _Loop:
    """What every micro-step of one training run reads (the same on every process)."""

    pm: Any
    tok: Any
    cfg: SeedConfig
    acc: Any
    student: Any
    rows: dict[int, tuple[list[int], list[int]]]   # id(item) -> encoded (ids, labels)
    stats: SeedStats
    replay_rows: list
    retain_rows: list
    extra_terms: Callable[[Any, int, list[Item]], dict[str, tuple[torch.Tensor, float]]] | None
    replay_rng: random.Random
    dev: torch.device
    retain_rng: random.Random  # its own: turning retain on leaves the replay draws as they were

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def w_off(self) -> float:
        c = self.cfg
        return c.w_distill * c.alpha * (1 - c.on_policy_lambda)

    @property
    def by_item(self) -> bool:
        return self.cfg.sft_average == "item"

    def share(self, seq: list) -> tuple[list, float]:
        """This process's part of a list every process holds; a process with no part still joins the backward."""
        mine = seq[self.rank::self.world]
        return (mine, 1.0) if mine else (seq[:1], 0.0)

    def denominators(self, group: list[list[Item]]) -> tuple[int, int]:
        """The step's hard-label denominator (its answer tokens, or its items) and its soft-target items."""
        n_group = sum(1 if self.by_item else _n_labels(self.rows[id(it)]) for batch in group for it in batch)
        n_soft = sum(it.soft is not None for batch in group for it in batch)
        return n_group, n_soft

    def micro_step(self, batch: list[Item], n_group: int, n_soft: int, n_micro: int,
                   micro: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This process's share of one micro-batch: (terms for the log, loss to backpropagate).

        Losses are sums over this process's tokens (the hard-label loss: over its
        items, with `sft_average` "item") divided by the token (item) count of the
        whole optimizer step (all micro-batches, all processes), times the process
        count that DDP's gradient averaging divides by again.
        """
        cfg, world = self.cfg, self.world
        mine, on = self.share(batch)
        b = collate([self.rows[id(it)] for it in mine], self.tok.pad_token_id, self.dev)
        terms: dict[str, torch.Tensor] = {}
        logits = None
        if self.w_off > 0:
            logits = self.student(b, full=True)
            sel, tgt, row = picked(logits, b["labels"])
        else:
            sel, tgt, row = self.student(b)
        sft_sum = ce_picked(sel, tgt, "item_sum" if self.by_item else "sum", row, len(mine)) * on
        loss = cfg.w_sft * sft_sum * world / max(n_group, 1)
        terms["sft_sum"] = sft_sum.detach()
        if logits is not None:
            d_off = soft_ce(logits, b["labels"], mine)  # a sum over items, normalised like the tokens
            # always logged when on: every rank must log the same terms, or their all-reduce in log_step
            # would pair different tensors (or hang) when one rank's share held no soft targets
            terms["distill_off"] = (d_off.detach() / max(sum(it.soft is not None for it in mine), 1)
                                    if d_off is not None else sft_sum.detach() * 0)
            if d_off is not None:
                loss = loss + self.w_off * d_off * on * world / max(n_soft, 1)
        self.stats.tokens += sum(len(self.rows[id(it)][0]) for it in batch)
        draws = [(name, pool, k, w, rng) for name, pool, k, w, rng in (
            ("replay_kl", self.replay_rows, cfg.replay_per_step, cfg.w_replay, self.replay_rng),
            ("retain_kl", self.retain_rows, cfg.retain_per_step, cfg.w_retain, self.retain_rng)) if pool and w > 0 and k]
        for name, w, kl_sum, n_mine, n_labels in self.kl_terms(draws):
            terms[name] = kl_sum.detach() / max(n_mine, 1)
            loss = loss + w * kl_sum * world / max(n_labels, 1) / n_micro
        if self.extra_terms is not None:
            for k, (v, w) in self.extra_terms(self.pm, micro, batch).items():
                terms[k] = v.detach()
                loss = loss + w * v / n_micro
        return terms, loss

    def kl_terms(self, draws: list) -> list[tuple[str, float, torch.Tensor, int, int]]:
        """KL(pre-sleep || student) for each (name, pool, k, weight, rng) of `draws`: k rows drawn from
        its pool, this process's share of them summed. One teacher and one student forward for all the
        terms together: on a CPU each pass has a fixed cost that two small batches would pay twice.
        Per term: (name, weight, KL sum, the positions this process summed, the labels of all its rows)."""
        if not draws:
            return []
        rows, parts = [], []
        for name, pool, k, w, rng in draws:
            drawn = rng.sample(list(pool), min(k, len(pool)))  # every process draws the same rows
            mine, on = self.share(drawn)
            self.stats.tokens += sum(len(r[0]) for r in drawn)
            parts.append((name, w, sum(_n_labels(r) for r in mine), on, sum(_n_labels(r) for r in drawn)))
            rows += mine
        rb = collate(rows, self.tok.pad_token_id, self.dev)
        with torch.no_grad(), self.pm.disable_adapter():
            t_sel = forward_picked(self.pm, rb)[0]
        per_token = kl_picked(t_sel.float(), self.student(rb)[0].float(), reduction="none")
        out, at = [], 0
        for name, w, n_mine, on, n_labels in parts:  # positions come row by row: each term's are one slice
            out.append((name, w, per_token[at:at + n_mine].sum() * on, n_mine, n_labels))
            at += n_mine
        return out

    def log_step(self, logged: dict[str, torch.Tensor], n_group: int) -> None:
        """What every process computed, as one number: the total carries the process count already
        (mean over processes); the hard-label loss is a token sum (summed, over the step's tokens)."""
        vals = torch.stack([logged[k] for k in sorted(logged)]).to(self.dev)
        vals = self.acc.reduce(vals, "sum") if self.world > 1 else vals
        for name, v in zip(sorted(logged), vals.tolist()):
            if name == "sft_sum":
                self.stats.losses.setdefault("sft", []).append(v / max(n_group, 1))
            else:
                self.stats.losses.setdefault(name, []).append(v / self.world)


def _train(pm: Any, tok: Any, items: list[Item], cfg: SeedConfig, acc: Any, replay_rows: list, retain_rows: list,
           extra_terms, progress: Progress, should_stop: Callable[[], bool], t0: float) -> SeedStats:
    dev = next(pm.parameters()).device
    groups = step_groups(items, cfg, random.Random(cfg.seed))  # the same order on every process
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rows = {id(it): encode(tok, it.prompt, it.target, cfg.max_seq_len) for it in items}
    sched = warmup_then_linear(opt, len(groups), cfg.warmup_frac)  # stepped once per optimizer step, by hand
    student, opt = acc.prepare(Student(pm), opt)
    loop = _Loop(pm, tok, cfg, acc, student, rows, SeedStats(items=len(items), processes=acc.num_processes),
                 list(replay_rows), list(retain_rows), extra_terms, random.Random(cfg.seed + 2), dev,
                 random.Random(cfg.seed + 3))
    micro = 0
    pm.train()
    for step, group in enumerate(groups):
        if should_stop():
            raise Interrupted(f"stopped during seeding at step {step}/{len(groups)}")
        n_group, n_soft = loop.denominators(group)
        logged: dict[str, torch.Tensor] = {}
        for k, batch in enumerate(group):
            last = k == len(group) - 1
            with (contextlib.nullcontext() if last else acc.no_sync(student)), acc.autocast():
                terms, loss = loop.micro_step(batch, n_group, n_soft, len(group), micro)
                acc.backward(loss)
            micro += 1
            terms["total"] = loss.detach()
            for name, v in terms.items():
                logged[name] = logged.get(name, 0.0) + v.float() / (1 if name in ("total", "sft_sum") else len(group))
        loop.log_step(logged, n_group)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        progress("seed", step + 1, len(groups), f"loss {loop.stats.losses['total'][-1]:.3f}")
    loop.stats.steps, loop.stats.seconds = len(groups), round(time.time() - t0, 1)
    return loop.stats
