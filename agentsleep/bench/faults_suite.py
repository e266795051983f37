"""Fault injection: kill -9 at every stage of a real sleep, a full disk during publish,
the Chroma server down while awake and while asleep, the vLLM server killed while serving. Counts faults injected, survived,
and episodes or versions lost (target: 0).

Every fault runs against a real home on the configured base model (SmolLM2 by
default) with a deliberately small sleep (3 facts, one epoch) so each stage is
reached within a minute. After each fault the home is reopened and checked:
same current version, every version intact (manifest present, checksums match),
no staging leftovers after the sweep, every episode still stored and still
unconsolidated. Then one clean sleep must promote (the home recovered).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..home import Home
from ..sleep.types import SKIPPED

FACTS = ["The user's dog is a beagle called Biscuit.", "The user's dentist is Dr. Okafor.",
         "The user's wifi network is named OrangeFox."]
SMALL = {"sleep": {"seed": {"epochs": 1, "replay_prompts": 8}, "rest": {"rounds": 0},
                   "gate": {"min_recall_gain": -1.0, "drift_prompts": 4, "max_drift_kl": 10.0}}}
STAGES = ("dream", "seed", "gate", "publish")


def _child(root: Path, fsize_limit: int | None = None) -> subprocess.Popen:
    limit = "" if fsize_limit is None else textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG: a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize_limit}, {fsize_limit}))
    """)
    code = limit + textwrap.dedent(f"""
        from agentsleep.home import Home
        with Home.open({str(root)!r}, writable=False) as h:
            print(h.sleep().status)
    """)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stage(root: Path) -> str | None:
    j = _journal(root)
    return j.get("stage") if j else None


def _journal(root: Path) -> dict[str, Any] | None:
    """The newest sleep's journal, or None."""
    js = sorted((root / "sleeps").glob("*/journal.json"), key=lambda p: p.stat().st_mtime)
    try:
        return json.loads(js[-1].read_text()) if js else None
    except (OSError, ValueError):
        return None


PUBLISH_FAILED = "publish: writing the new version failed"


def publish_failure_problems(returncode: int | None, out: str, err: str, journal: dict[str, Any] | None) -> list[str]:
    """What is wrong with a sleep run on a full disk, from its exit, output and journal (empty = it failed
    where it must: writing the new version in the publish stage, with publish's own error)."""
    if returncode == 0:
        return [f"the sleep did not fail on the full disk (exit 0: {out.strip()[-80:] or 'no output'})"]
    if journal is None:
        return ["the sleep left no journal: it failed before its stages ran"]
    problems = []
    if journal.get("stage") != "publish":
        problems.append(f"the sleep failed in stage {journal.get('stage')!r}, not in publish")
    if journal.get("status") != "failed":
        problems.append(f"the journal says {journal.get('status')!r}, not 'failed'")
    if PUBLISH_FAILED not in err and PUBLISH_FAILED not in str(journal.get("error", "")):
        last = (err.strip().splitlines() or [""])[-1]
        problems.append(f"the error is not publish's write failure: {last[-160:]!r}")
    return problems


def disk_full(root: Path, versions: list[str], current: str, n_episodes: int,
              fsize_limit: int = 64 * 1024 * 1024) -> tuple[list[str], str]:
    """A sleep whose writes past `fsize_limit` fail (EFBIG, like a full disk): the journals fit, the merged
    weights (hundreds of MB) do not. It must fail in publish, and the home must be as before and still
    serve `current`. Returns (problems, note)."""
    p = _child(root, fsize_limit=fsize_limit)
    out, err = p.communicate(timeout=900)
    last = (err.strip().splitlines() or [""])[-1]
    problems = publish_failure_problems(p.returncode, out, err, _journal(root))
    problems += check(root, versions, current, n_episodes, serves=True)
    return problems, f"(exit {p.returncode}: {last[-160:]})"


def check(root: Path, expect_versions: list[str], expect_current: str, n_episodes: int, serves: bool = False) -> list[str]:
    """What is wrong with the home after a fault (empty = survived). With `serves`, the home must also
    answer a question with `expect_current`."""
    from ..models.embedded import checksum_dir

    problems = []
    with Home.open(root) as h:
        reg = h.registry
        reg.sweep_staging()
        if reg.names() != expect_versions:
            problems.append(f"versions {reg.names()} != {expect_versions}")
        if reg.current_name() != expect_current:
            problems.append(f"current {reg.current_name()} != {expect_current}")
        for v in reg.history():
            if v.is_base:
                continue
            sums = {k: x["sha256"] for k, x in checksum_dir(v.path).items() if k != "manifest.json"}
            if sums != v.manifest.get("checksums"):
                problems.append(f"{v.name}: checksums differ")
        if any(reg.staging_dir.iterdir()):
            problems.append("staging leftovers after sweep")
        eps = h.episodes()
        if len(eps) != n_episodes:
            problems.append(f"{n_episodes - len(eps)} episodes lost")
        marked = [e.id for e in eps if e.consolidated_in and not e.consolidated_in.startswith(SKIPPED)]
        if marked:  # no fault may mark an episode consolidated: only a promoted version does
            problems.append(f"{len(marked)} episodes marked consolidated without a promoted version")
        if serves:
            answered_by = h.ask("What is my dog's name?", use_memory=False, max_new_tokens=8)["model_version"]
            if answered_by != expect_current:
                problems.append(f"answered by {answered_by}, not {expect_current}")
    return problems


def run(out_dir: Path, *, say=print, progress=None) -> dict[str, Any]:
    root = out_dir / "home"
    shutil.rmtree(root, ignore_errors=True)
    Home.init(root, config=Config.model_validate(SMALL))
    with Home.open(root) as h:
        for f in FACTS:
            h.remember(f, source="bench")
        versions, current = h.registry.names(), h.registry.current_name()
    rows: list[dict[str, Any]] = []

    def record(fault: str, problems: list[str], note: str = "", skipped: str | None = None) -> None:
        rows.append(row(fault, problems, note, skipped))
        say(f"faults: {fault}: " + (f"skipped ({skipped})" if skipped else
                                    f"{'survived' if not problems else 'FAILED ' + '; '.join(problems)} {note}"))

    for stage in STAGES:  # kill -9 once the sleep has entered each stage
        p = _child(root)
        reached, deadline = False, time.time() + 600
        while time.time() < deadline and p.poll() is None:
            if _stage(root) == stage:
                reached = True
                time.sleep(0.3 if stage == "publish" else 1.0)
                break
            time.sleep(0.05)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        note = "" if reached else f"(sleep ended before reaching {stage}: {p.stdout.read().strip() or p.stderr.read()[-200:]})"
        record(f"kill -9 during {stage}", check(root, versions, current, len(FACTS)) if reached else ["stage not reached"], note)

    record("disk full during publish", *disk_full(root, versions, current, len(FACTS)))

    record_chroma(root, out_dir, record)
    record_vllm(root, record, say)

    with Home.open(root) as h:  # recovery: a clean sleep promotes
        rep = h.sleep()
        ok = rep.status == "promoted" and len(h.episodes(unconsolidated_only=True)) == 0
    record("recovery: clean sleep after the faults", [] if ok else [f"status {rep.status}: {rep.reasons}"])
    return summarize(rows)


def row(fault: str, problems: list[str], note: str = "", skipped: str | None = None) -> dict[str, Any]:
    """One line of the table. A fault that could not be injected here (vLLM missing) keeps its row,
    marked skipped with the reason, and counts neither as injected nor as survived."""
    if skipped:
        return {"fault": fault, "survived": None, "problems": [], "note": "", "skipped": skipped}
    return {"fault": fault, "survived": not problems, "problems": problems, "note": note}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and targets from the rows; the last row is the recovery sleep."""
    faults = [r for r in rows[:-1] if not r.get("skipped")]
    ran = faults + rows[-1:]
    res = {"rows": rows, "faults_injected": len(faults), "survived": sum(bool(r["survived"]) for r in faults),
           "skipped": [r["fault"] for r in rows if r.get("skipped")],
           "episodes_lost": 0 if all(r["survived"] for r in ran) else None, "recovered": bool(rows[-1]["survived"])}
    res["targets"] = {"every fault survived": res["survived"] == len(faults), "recovered": res["recovered"]}
    return res


def record_chroma(root: Path, out_dir: Path, record) -> None:
    """Chroma server down while awake (ask still answers, without memories) and asleep (clear error, nothing lost)."""
    from ..errors import AgentsleepError
    from ..memory.chroma_server import free_port, start, stop

    sroot = out_dir / "server-home"
    shutil.rmtree(sroot, ignore_errors=True)
    shutil.rmtree(out_dir / "chroma-data", ignore_errors=True)  # its collection belongs to the home just removed
    port = free_port()
    proc, _, _ = start(out_dir / "chroma-data", out_dir / "chroma.log", port=port)
    try:
        cfg = Config.model_validate({**SMALL, "memory": {"backend": "server", "host": "127.0.0.1", "port": port}})
        Home.init(sroot, config=cfg)
        with Home.open(sroot) as h:
            for f in FACTS:
                h.remember(f, source="bench")
            stop(proc)
            try:
                a = h.ask("What is my dog's name?")
                problems = [] if a["answer"] and a.get("memory_error") else ["ask did not report the store failure"]
            except AgentsleepError as e:
                problems = [f"ask failed: {e}"]
            record("Chroma server down while awake", problems, "(answered from the weights)")
            try:
                h.sleep()
                problems = ["sleep ran without its store"]
            except AgentsleepError:
                problems = [] if h.registry.names() == ["v0000"] else ["a version appeared"]
    finally:
        stop(proc)  # a server already stopped is left as it is
    proc, _, _ = start(out_dir / "chroma-data", out_dir / "chroma.log", port=port)
    try:
        with Home.open(sroot) as h:
            if len(h.episodes(unconsolidated_only=True)) != len(FACTS):
                problems.append("episodes lost or marked")
        record("Chroma server down while asleep", problems, "(clear error, nothing lost)")
    finally:
        stop(proc)


def record_vllm(root: Path, record, say=print) -> None:
    """A managed vLLM server killed (-9, whole process group) while serving: the supervisor
    restarts it on the same version and the next request is answered, the same way. Without
    vLLM the row is recorded as skipped, with the reason."""
    from ..errors import AgentsleepError
    from ..serving.protocol import ChatRequest
    from ..serving.vllm_backend import VLLMBackend

    with Home.open(root, writable=False) as h:
        try:
            backend = VLLMBackend.for_home(h)
        except AgentsleepError as e:
            record("vLLM server killed while serving", [], skipped=f"vLLM not available: {e}")
            return
        req = ChatRequest(messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0.0)
        problems: list[str] = []
        try:
            version = h.registry.current()
            backend.start(version)
            want = backend.chat(req)["choices"][0]["message"]["content"]
            pid = backend.health()["pid"]
            os.killpg(pid, signal.SIGKILL)
            t = time.time()
            got = backend.chat(req)["choices"][0]["message"]["content"]  # waits for the restart
            health = backend.health()
            if health["restarts"] < 1 or health["pid"] == pid:
                problems.append(f"no restart recorded ({health['restarts']} restarts)")
            if health["version"] != version.name or got != want:
                problems.append(f"answered by {health['version']}: {got!r} (before: {want!r})")
            note = f"(restarted and answered in {time.time() - t:.0f} s)"
        except Exception as e:  # noqa: BLE001 - whatever breaks is this fault's finding, not the suite's end
            problems.append(f"{type(e).__name__}: {e}")
            note = ""
        finally:
            backend.close()
    record("vLLM server killed while serving", problems, note)


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    skipped = res.get("skipped") or []
    lines = [f"Faults injected {res['faults_injected']}, survived {res['survived']}, episodes lost "
             f"{res['episodes_lost'] if res['episodes_lost'] is not None else 'see below'}, recovered: {res['recovered']}"
             + (f"; skipped {len(skipped)} ({', '.join(skipped)})." if skipped else "."), "",
             "| fault | survived | detail |", "|---|---|---|"]
    for r in res["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['fault']} | skipped | {r['skipped']} |")
        else:
            lines.append(f"| {r['fault']} | {'yes' if r['survived'] else 'NO'} | {'; '.join(r['problems']) or r['note']} |")
    return "\n".join(lines) + "\n"
