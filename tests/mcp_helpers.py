"""A real sleep that holds at its first stage until the test says go (`agentsleep mcp --sleep-fn`).

It lets a test act *while* a sleep runs, deterministically: the journal says "running"
(with the worker's pid) from the first progress tick until `<home>/release-sleep` appears.
"""
from __future__ import annotations

import time


def gated_sleep(job):
    from agentsleep.home import Home

    gate = job.home / "release-sleep"
    deadline = time.monotonic() + 180

    def progress(stage, done=0, total=0, note=""):
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        job.progress(stage, done, total, note)

    home = Home.open(job.home, writable=False, create=False)
    try:
        return home.sleep(max_episodes=job.max_episodes, progress=progress).summary()
    finally:
        home.close()
