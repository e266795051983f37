"""`agentsleep bench cli`: how long the commands take from the shell, cold and through a running server.

Cold: each command is a new process that loads what it needs itself (no server runs).
Warm: the same commands while `agentsleep serve` runs for the home, so they go through
it (agentsleep/client.py). Every number is the median of `runs` whole-process runs,
timed from the parent (interpreter start, imports, the work, exit). Warm runs also
record the server's own time for each request (its Server-Timing header, written to
AGENTSLEEP_TIMING_FILE by the client), so the CLI's share of a command (wall time minus
the server's work: generation for `ask`) is measured run by run.
No training: a few minutes on 2 CPU cores, most of it the cold runs' model loads.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

TARGETS = {"warm_remember_s": 0.3, "warm_recall_s": 0.3, "warm_ask_overhead_s": 0.3, "cold_remember_s": 3.5}
FACTS = ["The spare key to the garden shed is under the blue flower pot.",
         "Alice's daughter is called Maya and she is seven years old.",
         "Project Falcon launches on 20 July 2027.", "The wifi password at the cabin is heron-42.",
         "Bob's dentist is Dr. Okafor on Elm Street.", "The team standup moved to 9:30 on Mondays.",
         "Carol is allergic to peanuts.", "The car's next service is due in March."]


def _cli(home: Path, *args: str, env: dict[str, str], stdin: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "agentsleep.cli", "--home", str(home), *args], env=env, input=stdin,
                       capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"agentsleep {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-300:]}")
    return dt, p


def _commands(i: int) -> list[tuple[str, list[str]]]:
    fact = f"{FACTS[i % len(FACTS)]} (run {i}, {time.time_ns()})"
    return [("help", ["--help"]), ("status", ["status", "--json"]),
            ("remember", ["remember", fact, "--json"]), ("remember_duplicate", ["remember", FACTS[0], "--json"]),
            ("recall", ["recall", "where is the shed key", "--json"]),
            ("ask", ["ask", "Where is the spare key?", "--max-new-tokens", "16", "--json"])]


def _server_time(timing: Path | None) -> float:
    """The server's time for the one request the last command made (0 without a timing file)."""
    if timing is None or not timing.exists():
        return 0.0
    lines = timing.read_text().split()
    timing.unlink()
    return sum(float(x) for x in lines[1::2])


def _round(home: Path, env: dict[str, str], times: dict[str, list[float]], i: int,
           share: dict[str, list[float]] | None = None, timing: Path | None = None) -> None:
    """One run of every command; `share` gets each command's wall time minus the server's time."""
    import json

    eid = ""  # the episode `remember` stored this round: `forget` removes it
    for name, args in _commands(i) + [("forget", [])]:
        if name == "forget":
            args = ["forget", eid, "--json"]
        dt, p = _cli(home, *args, env=env)
        times.setdefault(name, []).append(dt)
        if share is not None:
            share.setdefault(name, []).append(dt - _server_time(timing))
        if name == "remember":
            eid = json.loads(p.stdout)["id"]


def run(out_dir: Path, *, say: Callable[[str], None] = print, progress: Any = None, runs: int = 5,
        cold_runs: int = 3) -> dict[str, Any]:
    from ..procs import free_port
    from .report import provenance

    load_before = os.getloadavg()[0]
    home = out_dir / "home"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("AGENTSLEEP_NO_SERVER", None)
    _cli(home, "init", "--json", env=env)
    _cli(home, "remember", FACTS[0], "--json", env=env)
    cold: dict[str, list[float]] = {}
    for i in range(cold_runs):
        say(f"cli: cold round {i + 1}/{cold_runs}")
        _round(home, env, cold, i)

    port = free_port()
    log = open(out_dir / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agentsleep.cli", "--home", str(home), "serve", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    warm: dict[str, list[float]] = {}
    share: dict[str, list[float]] = {}
    timing = out_dir / "server-timing.txt"
    warm_env = {**env, "AGENTSLEEP_TIMING_FILE": str(timing)}
    try:
        t0 = time.perf_counter()
        from ..client import find

        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"agentsleep serve exited ({proc.returncode}); see {out_dir / 'serve.log'}")
            c = find(home)
            if c is not None:
                try:
                    c.call("POST", "/ask", {"question": "warm up", "max_new_tokens": 16})  # loads the model once
                    break
                except Exception:  # noqa: BLE001 - still starting
                    pass
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("agentsleep serve did not come up in 10 minutes")
            time.sleep(0.5)
        say(f"cli: server up in {time.perf_counter() - t0:.1f} s")
        for i in range(runs):
            say(f"cli: warm round {i + 1}/{runs}")
            timing.unlink(missing_ok=True)
            _round(home, warm_env, warm, 100 + i, share, timing)
        st = _cli(home, "status", "--json", env=env)[1].stdout
        assert '"cli_path": "server"' in st, "the warm runs did not go through the server"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    res: dict[str, Any] = {"runs": runs, "cold_runs": cold_runs, "cold": {k: med(v) for k, v in cold.items()},
                           "warm": {k: med(v) for k, v in warm.items()}, "cli_share": {k: med(v) for k, v in share.items()},
                           "raw": {"cold": cold, "warm": warm, "cli_share": share},
                           "load_average": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
                           **provenance()}
    measured = {"warm_remember_s": res["warm"]["remember"], "warm_recall_s": res["warm"]["recall"],
                "warm_ask_overhead_s": res["cli_share"]["ask"], "cold_remember_s": res["cold"]["remember"]}
    res["targets"] = {k: {"value": v, "target": TARGETS[k], "met": v <= TARGETS[k]} for k, v in measured.items()}
    return res


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    rows = "\n".join(f"| `{k}` | {res['cold'].get(k, '-')} | {res['warm'].get(k, '-')} | {res['cli_share'].get(k, '-')} |"
                     for k in ("help", "status", "remember", "remember_duplicate", "recall", "forget", "ask"))
    t = "\n".join(f"- {k}: {v['value']} s (target at most {v['target']} s): {'met' if v['met'] else 'NOT met'}"
                  for k, v in res["targets"].items())
    return (f"Median wall time of whole `agentsleep` processes, in seconds ({res['cold_runs']} cold runs, "
            f"{res['runs']} warm runs; `ask` with 16 new tokens; `remember` stores a new memory, "
            f"`remember_duplicate` one already stored).\n\n"
            f"| command | cold (no server) | warm (through `agentsleep serve`) | warm, less the server's own time |\n"
            f"|---|---|---|---|\n{rows}\n\n"
            f"The last column is the CLI's share (process start, imports, the request): for `ask` that is the "
            f"wall time less the server's time for the request, generation included. The machine's load "
            f"average (1 min) was {res['load_average']['start']} at the start and {res['load_average']['end']} at the end "
            f"(other processes shared its cores; `help`, which does no work, shows the floor of a process start "
            f"here).\n\nTargets:\n{t}\n")
