"""Seeding in several processes: `accelerate launch` runs train.py's loop, the sleep waits.

The sleep writes a job (the training items, replay rows and configuration)
to a scratch directory and runs

    python -m accelerate.commands.launch --num_processes N [--cpu] [seed.launch_args...] \
        -m agentsleep.sleep.launch JOB_DIR

Every worker loads the pre-sleep weights from `source`, attaches a fresh
expert and trains on its share of each batch. Rank 0 writes the trained
expert and the statistics; the sleep loads the expert onto the model it holds.
Progress lines come back on stdout; a stop request terminates the workers.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import SeedConfig
from ..errors import SleepError

_PROGRESS = "@@seed-progress "


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(cfg: SeedConfig, job: Path, cpu: bool) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.processes),
           "--num_machines", "1", "--main_process_port", str(_free_port()), "--dynamo_backend", "no",
           "--mixed_precision", "no"]  # train.py sets the precision itself (seed.mixed_precision)
    if cpu:
        cmd += ["--cpu"]
    return cmd + list(cfg.launch_args) + ["-m", "agentsleep.sleep.launch", str(job)]


def train_in_workers(model: Any, source: str | None, items: list, replay_rows: list, new_memories: list,
                     cfg: SeedConfig, *, layers: list[int] | None, progress=None,
                     should_stop: Callable[[], bool] = lambda: False):
    """Run the training in `cfg.processes` workers; return (peft model with the trained expert, SeedStats)."""
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from .seed import SeedStats, lora_config
    from .train import Interrupted

    if not source:
        raise SleepError("seed.processes > 1 needs the weights' directory to start the workers from; "
                         "call seed(..., source=VERSION_DIR) or set seed.processes = 1")
    dev = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="agentsleep-seed-") as tmp:
        job = Path(tmp)
        torch.save({"items": [asdict(it) for it in items], "replay_rows": replay_rows,
                    "memories": [asdict(m) for m in new_memories], "cfg": cfg.model_dump(), "layers": layers,
                    "source": str(source), "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                    "device": dev.type}, job / "job.pt")
        cmd = launch_command(cfg, job, cpu=dev.type == "cpu")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        if dev.type == "cpu":  # split the cores between the workers instead of oversubscribing them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.processes)))
        with open(job / "workers.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True)
            try:
                for line in proc.stdout:
                    if line.startswith(_PROGRESS) and progress:
                        step, total, note = line[len(_PROGRESS):].rstrip("\n").split(" ", 2)
                        progress("seed", int(step), int(total), note)
                    if should_stop():
                        raise Interrupted("stopped during seeding (workers terminated)")
                rc = proc.wait()
            except BaseException:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                raise
        if rc != 0 or not (job / "adapter.safetensors").exists():
            tail = [ln for ln in (job / "workers.log").read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
            raise SleepError(f"seeding workers (accelerate launch, {cfg.processes} processes) failed with exit code {rc}: "
                             f"{tail[0][:300]}")
        pm = get_peft_model(model, lora_config(cfg, layers))
        set_peft_model_state_dict(pm, {k: v.to(dev) for k, v in load_file(str(job / "adapter.safetensors")).items()})
        st = json.loads((job / "stats.json").read_text())
        stats = SeedStats(**st)
    pm.eval()
    return pm, stats


def worker(job_dir: Path) -> None:
    """One training process (run by `accelerate launch`)."""
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file

    from ..models.loader import load
    from .seed import Item, distill_terms, lora_config
    from .train import train
    from .types import Memory

    job = torch.load(job_dir / "job.pt", weights_only=False)
    cfg = SeedConfig(**job["cfg"])
    cpu = job["device"] == "cpu"
    device = torch.device("cpu") if cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    model, tok = load(job["source"], dtype=job["dtype"], device=str(device))
    items = [Item(**it) for it in job["items"]]
    memories = [Memory(**m) for m in job["memories"]]
    torch.manual_seed(cfg.seed)  # the same initialisation as one process
    pm = get_peft_model(model, lora_config(cfg, job["layers"]))
    rank = int(os.environ.get("RANK", "0"))

    def progress(stage: str, step: int, total: int, note: str = "") -> None:
        if rank == 0:
            print(f"{_PROGRESS}{step} {total} {note}", flush=True)

    stats = train(pm, tok, items, cfg, replay_rows=job["replay_rows"],
                  extra_terms=distill_terms(tok, items, memories, cfg), progress=progress)
    if rank == 0:
        state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(pm).items()}
        save_file(state, str(job_dir / "adapter.tmp"))
        (job_dir / "stats.json").write_text(json.dumps(asdict(stats)))
        os.replace(job_dir / "adapter.tmp", job_dir / "adapter.safetensors")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
