"""The seeding training loop, on Hugging Face accelerate: one code path for CPU, one GPU and many.

`train()` is what every process runs. In one process it runs inside the
sleep; with `seed.processes > 1` the sleep starts `accelerate launch` on
`agentsleep.sleep.launch`, and each process runs this same loop on its share
of every batch (DDP gradient averaging; FSDP through an accelerate config
file). The result does not depend on the number of processes: each process's
loss is its share of the *global* token sum divided by the global token count,
so the averaged gradient is exactly the one-process gradient
(tests/test_train.py checks 1 vs 2 CPU processes).

GPU knobs (all in SeedConfig): bf16 autocast (`mixed_precision`, "auto" =
bf16 on CUDA), gradient checkpointing, gradient accumulation.
"""
from __future__ import annotations

import contextlib
import random
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..config import SeedConfig
from .tensors import collate, encode, forward_picked, picked


class Interrupted(Exception):
    """Training was asked to stop (SIGTERM / deadline); nothing is published."""


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


def mixed_precision(cfg: SeedConfig, device: torch.device) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def accelerator(cfg: SeedConfig, device: torch.device):
    """The process's Accelerator. In one process it follows the model's device (model.device)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    mp = mixed_precision(cfg, device)
    if PartialState().num_processes == 1:
        # one process may run many sleeps with different devices or precisions (tests, benchmarks):
        # accelerate's state is a process-wide singleton, so start it afresh each time
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mp, gradient_accumulation_steps=1)  # accumulation by hand: no_sync + one step per group


def _n_labels(row: tuple[list[int], list[int]]) -> int:
    """Positions a row is scored on (labels shifted by one, as forward_picked reads them)."""
    return sum(1 for y in row[1][1:] if y != -100)


def _token_loss_sum(sel: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(sel, tgt, reduction="sum") if len(tgt) else sel.sum() * 0.0


def _kl_sum(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    if not len(lp):
        return lq.sum() * 0.0
    p_log, q_log = F.log_softmax(lp, -1), F.log_softmax(lq, -1)
    return (p_log.exp() * (p_log - q_log)).sum()


def train(pm: Any, tok: Any, items: list, cfg: SeedConfig, *, replay_rows: list = (), extra_terms=None,
          progress=None, should_stop: Callable[[], bool] = lambda: False):
    """Train the LoRA expert already attached to `pm` (a peft model) on `items`. Returns SeedStats.

    `extra_terms(pm, micro_step, batch_items)` adds the paper's distillation
    terms (seed.py); it returns {name: (loss, weight)}. They sample with their own
    seeded generator, so every process computes the same ones.
    """
    from .seed import SeedStats, _soft_ce

    t0 = time.time()
    dev0 = next(pm.parameters()).device
    acc = accelerator(cfg, dev0)
    rank, world = acc.process_index, acc.num_processes
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)  # the same order on every process: each takes its share of each batch
    base = pm.get_base_model()
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rows = {id(it): encode(tok, it.prompt, it.target, cfg.max_seq_len) for it in items}
    schedule: list[list] = []  # every micro-batch of every epoch, then grouped into optimizer steps
    for _ in range(cfg.epochs):
        order = items[:]
        rng.shuffle(order)
        schedule += [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    groups = [schedule[g:g + cfg.grad_accum] for g in range(0, len(schedule), cfg.grad_accum)]
    total = len(groups)
    warm = max(1, int(total * cfg.warmup_frac))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    student, opt = acc.prepare(Student(pm), opt)  # the scheduler steps once per optimizer step, by hand
    dev = acc.device
    stats = SeedStats(items=len(items))
    w_off = cfg.w_distill * cfg.alpha * (1 - cfg.on_policy_lambda)
    replay_rng = random.Random(cfg.seed + 2)

    def share(seq: list) -> tuple[list, float]:
        """This process's part of a list every process holds; a process with no part still joins the backward."""
        mine = seq[rank::world]
        return (mine, 1.0) if mine else (seq[:1], 0.0)

    def micro_step(batch: list, n_group: int, n_micro: int, micro: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This process's share of one micro-batch: (terms for the log, loss to backpropagate).

        Losses are sums over this process's tokens divided by the token count of
        the whole optimizer step (all micro-batches, all processes), times the
        process count that DDP's gradient averaging divides by again.
        """
        mine, on = share(batch)
        b = collate([rows[id(it)] for it in mine], tok.pad_token_id, dev)
        terms: dict[str, torch.Tensor] = {}
        logits = None
        if w_off > 0:
            logits = student(b, full=True)
            sel, tgt, _ = picked(logits, b["labels"])
        else:
            sel, tgt, _ = student(b)
        sft_sum = _token_loss_sum(sel, tgt) * on
        loss = cfg.w_sft * sft_sum * world / max(n_group, 1)
        terms["sft"] = sft_sum.detach() / max(len(tgt), 1)
        if logits is not None:
            d_off = _soft_ce(logits, b["labels"], mine)
            if d_off is not None:
                terms["distill_off"] = d_off.detach()
                loss = loss + w_off * d_off * on / n_micro
        stats.tokens += sum(len(rows[id(it)][0]) for it in batch)
        if replay_rows and cfg.w_replay > 0 and cfg.replay_per_step:
            drawn = replay_rng.sample(list(replay_rows), min(cfg.replay_per_step, len(replay_rows)))
            mine_r, on_r = share(drawn)
            rb = collate(mine_r, tok.pad_token_id, dev)
            with torch.no_grad(), pm.disable_adapter():
                t_sel = forward_picked(pm, rb)[0]
            s_sel = student(rb)[0]
            kl_sum = _kl_sum(t_sel.float(), s_sel.float()) * on_r
            terms["replay_kl"] = kl_sum.detach() / max(len(s_sel), 1)
            loss = loss + cfg.w_replay * kl_sum * world / max(sum(_n_labels(r) for r in drawn), 1) / n_micro
            stats.tokens += sum(len(r[0]) for r in drawn)
        if extra_terms is not None:
            for k, (v, w) in extra_terms(pm, micro, batch).items():
                terms[k] = v.detach()
                loss = loss + w * v / n_micro
        return terms, loss

    step = micro = 0
    pm.train()
    try:
        for group in groups:
            if should_stop():
                raise Interrupted(f"stopped during seeding at step {step}/{total}")
            n_group = sum(_n_labels(rows[id(it)]) for batch in group for it in batch)
            for k, batch in enumerate(group):
                last = k == len(group) - 1
                with (contextlib.nullcontext() if last else acc.no_sync(student)), acc.autocast():
                    terms, loss = micro_step(batch, n_group, len(group), micro)
                    acc.backward(loss)
                micro += 1
                for name, v in terms.items():
                    stats.losses.setdefault(name, []).append(float(v))
            stats.losses.setdefault("total", []).append(float(loss.detach()) * len(group) / world)
            acc.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            if progress:
                progress("seed", step, total, f"loss {stats.losses['total'][-1]:.3f}")
    finally:
        if cfg.gradient_checkpointing:
            base.gradient_checkpointing_disable()
            base.config.use_cache = True
        pm.eval()
        acc.free_memory()
    stats.steps, stats.seconds = step, round(time.time() - t0, 1)
    return stats
