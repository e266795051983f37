"""Seeding in several processes: `accelerate launch` runs train.py's loop, the sleep waits.

The sleep writes a job (the training items, replay rows and configuration)
to a scratch directory and runs

    GPUs: python -m accelerate.commands.launch --num_processes N --multi_gpu [seed.launch_args...] \
              -m agentsleep.sleep.launch JOB_DIR
    CPU:  python -m torch.distributed.run --standalone --nproc_per_node N -m agentsleep.sleep.launch JOB_DIR

Every worker loads the pre-sleep weights from `source`, attaches a fresh
expert and trains on its share of each batch. Rank 0 writes the trained
expert and the statistics; the sleep loads the expert onto the model it holds.
Progress lines come back on stdout; a stop request terminates the workers.
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import SeedConfig
from . import scratch
from ..errors import SleepError
from ..models.loader import load
from ..procs import free_port, terminate_group
from ..progress import Progress, silent
from .objective import Interrupted, Item, SeedStats, distill_terms, lora_config
from .train import train
from .types import Memory

_PROGRESS = "@@seed-progress "


def launch_command(cfg: SeedConfig, job: Path, cpu: bool) -> list[str]:
    """CPU: torchrun (accelerate's `--cpu` launcher starts a single process, whatever
    --num_processes says). GPU: `accelerate launch --multi_gpu`, or the user's accelerate config."""
    worker = ["-m", "agentsleep.sleep.launch", str(job)]
    if cpu:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cfg.processes),
                *worker]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.processes),
           "--num_machines", "1", "--main_process_port", str(free_port()), "--dynamo_backend", "no",
           "--mixed_precision", "no"]  # train.py sets the precision itself (seed.mixed_precision)
    if "--config_file" not in cfg.launch_args:
        cmd += ["--multi_gpu"]
    return cmd + list(cfg.launch_args) + worker


def train_in_workers(model: Any, source: str | None, items: list, replay_rows: list, new_memories: list,
                     cfg: SeedConfig, *, layers: list[int] | None, progress: Progress = silent,
                     should_stop: Callable[[], bool] = lambda: False, retain_rows: list = ()):
    """Run the training in `cfg.processes` workers; return (peft model with the trained expert, SeedStats)."""
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    if not source:
        raise SleepError("seed.processes > 1 needs the weights' directory to start the workers from; "
                         "call seed(..., source=VERSION_DIR) or set seed.processes = 1")
    dev = next(model.parameters()).device
    with scratch.temporary_directory("agentsleep-seed-") as tmp:
        job = Path(tmp)
        torch.save({"items": [asdict(it) for it in items], "replay_rows": replay_rows,
                    "retain_rows": list(retain_rows),
                    "memories": [asdict(m) for m in new_memories], "cfg": cfg.model_dump(), "layers": layers,
                    "source": str(source), "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                    "device": dev.type}, job / "job.pt")
        cmd = launch_command(cfg, job, cpu=dev.type == "cpu")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        if dev.type == "cpu":  # split the cores between the workers instead of oversubscribing them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.processes)))
        if dev.type == "cuda" and cfg.processes > torch.cuda.device_count():
            raise SleepError(f"seed.processes = {cfg.processes} but only {torch.cuda.device_count()} GPUs are visible")
        rc = _run_workers(cmd, env, job, progress, should_stop)
        if rc != 0 or not (job / "adapter.safetensors").exists():
            here = scratch.folder()  # the log outlives the scratch folder: in the sleep's own folder
            fd, kept_name = tempfile.mkstemp(prefix="seed-workers-", suffix=".log", dir=here.parent if here else None)
            os.close(fd)
            kept = Path(kept_name)
            shutil.copyfile(job / "workers.log", kept)
            why = (job / "error.txt").read_text().strip() if (job / "error.txt").exists() else \
                "no adapter was written" if rc == 0 else "see the log"
            raise SleepError(f"seeding workers ({cfg.processes} processes) failed with exit code {rc}: "
                             f"{why.splitlines()[0][:300]} (log: {kept})")
        pm = get_peft_model(model, lora_config(cfg, layers))
        res = set_peft_model_state_dict(pm, {k: v.to(dev) for k, v in load_file(str(job / "adapter.safetensors")).items()})
        missing = [k for k in getattr(res, "missing_keys", []) if "lora_" in k]
        if getattr(res, "unexpected_keys", None) or missing:
            raise SleepError(f"the workers' expert does not fit this model ({len(missing)} missing, "
                             f"{len(res.unexpected_keys)} unexpected keys)")
        st = json.loads((job / "stats.json").read_text())
        stats = SeedStats(**st)
    pm.eval()
    return pm, stats


def _run_workers(cmd: list[str], env: dict[str, str], job: Path, progress, should_stop) -> int:
    """Run the launcher, relay progress lines, and honour stop requests even while nothing is printed."""
    with open(job / "workers.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True)
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                while True:
                    if should_stop():
                        raise Interrupted("stopped during seeding (workers terminated)")
                    if sel.select(timeout=0.5):
                        line = proc.stdout.readline()
                        if not line:  # the launcher closed its output: it is exiting
                            return proc.wait()
                        if line.startswith(_PROGRESS):
                            step, total, note = line[len(_PROGRESS):].rstrip("\n").split(" ", 2)
                            progress("seed", int(step), int(total), note)
        except BaseException:
            terminate_group(proc, grace=30)
            raise


def worker(job_dir: Path) -> None:
    """One training process (run by `accelerate launch`)."""
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file


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

    stats = train(pm, tok, items, cfg, replay_rows=job["replay_rows"], retain_rows=job["retain_rows"],
                  extra_terms=distill_terms(tok, items, memories, cfg), progress=progress)
    if stats.processes != cfg.processes:  # never let a launcher quietly train with fewer processes
        raise SleepError(f"accelerate started {stats.processes} training processes, not {cfg.processes}")
    if rank == 0:
        state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(pm).items()}
        save_file(state, str(job_dir / "adapter.tmp"))
        (job_dir / "stats.json").write_text(json.dumps(asdict(stats)))
        os.replace(job_dir / "adapter.tmp", job_dir / "adapter.safetensors")


def main(job_dir: Path) -> None:
    """Run one worker; on failure write the reason, one line, where the sleep reads it."""
    try:
        worker(job_dir)
    except BaseException as e:  # noqa: BLE001
        first = (str(e).splitlines() or [""])[0]
        rank = os.environ.get("RANK", "0")
        with open(job_dir / "error.txt", "a") as f:
            f.write(f"rank {rank}: {type(e).__name__}: {first}\n")
        raise


if __name__ == "__main__":
    main(Path(sys.argv[1]))
