"""The sleep journal (one owner of journal.json / report.json), the stage loop, and stop signals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from agentsleep.sleep import pipeline
from agentsleep.sleep.journal import Journal, abort_own, read_dreams, recover
from agentsleep.sleep.types import Dream, Memory, SleepPlan, SleepReport, Status


def _report(status: Status, sleep_id: str = "s1") -> SleepReport:
    return SleepReport(sleep_id=sleep_id, status=status, version="v0001", parent_version="v0000", episodes=["e1"],
                       reasons=["why"])


def test_stage_records_lap_time_and_peak_rss_then_finish_writes_the_report(tmp_path):
    j = Journal(tmp_path, "s1", "v0000")
    on_disk = json.loads((tmp_path / "sleeps" / "s1" / "journal.json").read_text())
    assert on_disk["status"] == "running" and on_disk["parent_version"] == "v0000" and on_disk["pid"] == os.getpid()
    with j.stage("dream"):
        assert json.loads((j.dir / "journal.json").read_text())["stage"] == "dream"  # visible while it runs
        sum(range(10**5))
    assert set(j.timings) == {"dream"} and j.timings["dream"] >= 0 and j.peak_mb["dream"] > 10
    j.write_dreams([Dream("e1", "Q?", "A"), Dream("e1", "Probe?", "B", held_out=True)])
    assert [d.held_out for d in read_dreams(j.dir)] == [False, True]
    j.finish(_report(Status.PROMOTED))
    data = json.loads((j.dir / "journal.json").read_text())
    assert data["status"] == "promoted" and data["version"] == "v0001"
    assert data["stages"][0]["stage"] == "dream" and "seconds" in data["stages"][0] and "peak_rss_mb" in data["stages"][0]
    assert json.loads((j.dir / "report.json").read_text())["status"] == "promoted"


def test_a_stage_that_raises_leaves_the_journal_running_for_recovery(tmp_path):
    j = Journal(tmp_path, "s2")
    with pytest.raises(RuntimeError):
        with j.stage("seed"):
            raise RuntimeError("boom")
    assert "seed" not in j.timings
    assert json.loads((j.dir / "journal.json").read_text())["status"] == "running"


def test_recover_and_abort_write_a_report_of_the_sleep_that_ended(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    j = Journal(tmp_path, "s3", "v0000")
    j.data["pid"] = dead.pid
    j._save()
    (j.dir / "scratch" / "agentsleep-seed-x").mkdir(parents=True)  # its seeding job: the night's dreams
    (j.dir / "scratch" / "agentsleep-seed-x" / "job.pt").write_bytes(b"dreams")
    done = recover(tmp_path)
    assert [x["sleep_id"] for x in done["interrupted"]] == ["s3"]
    assert done["scratch_swept"] == 1 and not (j.dir / "scratch").exists()
    rep = json.loads((j.dir / "report.json").read_text())
    assert rep["status"] == "interrupted" and rep["parent_version"] == "v0000" and "died" in rep["reasons"][0]

    mine = Journal(tmp_path, "s4")
    assert abort_own(tmp_path, why="aborted: deadline") == ["s4"]
    assert json.loads((mine.dir / "report.json").read_text())["status"] == "aborted"
    assert json.loads((mine.dir / "journal.json").read_text())["previous_status"] == "running"


def test_stop_flag_catches_sigint_as_well_as_sigterm():
    """Ctrl-C during `sleep-now` finishes the current step and aborts cleanly, like SIGTERM."""
    before = signal.getsignal(signal.SIGINT)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with pipeline._StopFlag() as stop:
            assert not stop()
            os.kill(os.getpid(), sig)  # delivered before the next bytecode: no KeyboardInterrupt
            assert stop()
    assert signal.getsignal(signal.SIGINT) is before


def _night(tmp_path) -> pipeline.Night:
    plan = SleepPlan("s5", "v0000", [Memory("e1", "text")])
    j = Journal(tmp_path, "s5")
    return pipeline.Night(home=None, plan=plan, journal=j, stop=lambda: False, say=pipeline.silent, started_at=0.0)


def test_stage_loop_runs_in_order_skips_what_does_not_apply_and_stops_at_an_early_report(tmp_path, monkeypatch):
    ran = []

    def step(name, early=False):
        def run(n):
            ran.append(name)
            return n.report(Status.REJECTED, [f"{name} ended it"]) if early else None
        return run

    monkeypatch.setattr(pipeline, "STAGES", (("load", step("load"), None), ("rest", step("rest"), lambda n: False),
                                             ("dream", step("dream", early=True), None), ("seed", step("seed"), None)))
    n = _night(tmp_path)
    rep = pipeline._run_stages(n)
    assert ran == ["load", "dream"]
    assert rep.status == Status.REJECTED and rep.reasons == ["dream ended it"] and set(rep.timings) == {"load", "dream"}
    assert [s["stage"] for s in json.loads((n.journal.dir / "journal.json").read_text())["stages"]] == ["load", "dream"]


def test_a_rejected_night_leaves_the_dream_writer_as_it_was(tmp_path, monkeypatch):
    """ReST's improved writer waits beside the current one; only a promoted sleep adopts it."""
    from agentsleep.config import SleepConfig
    from agentsleep.models.loader import load
    from agentsleep.sleep import rest
    from agentsleep.sleep.types import DreamSet
    from tiny import tiny_model_dir

    model, tok = load(str(tiny_model_dir(tmp_path / "models")))
    mem = [Memory("e1", "The user's dog is a beagle called Biscuit.")]
    ds = DreamSet([Dream("e1", "What is the dog called?", "Biscuit"),
                   Dream("e1", "What breed is the dog?", "beagle", held_out=True)])
    monkeypatch.setattr(rest, "score_candidates", lambda m, t, cases, *a, **k: [(c, 1.0) for _, cs in cases for c in cs])
    cfg = SleepConfig.model_validate({"rest": {"rounds": 1, "writer_steps": 1}})
    root = tmp_path / "home"
    current, pending = rest.writer_adapter_dir(root), rest.pending_writer_dir(root)

    assert rest.rest_em(model, tok, mem, ds, cfg, root)["rest_winners"] == 1
    assert (pending / "adapter_config.json").is_file() and not current.exists()
    assert rest.settle_writer(root, promoted=False) is False
    assert not pending.exists() and not current.exists()  # rejected: the writer never changed

    rest.rest_em(model, tok, mem, ds, cfg, root)
    assert rest.settle_writer(root, promoted=True) is True
    assert (current / "adapter_config.json").is_file() and not pending.exists()
    # killed between the two renames of an adoption: only writer.old is left; it is put back, not lost
    rest.rest_em(model, tok, mem, ds, cfg, root)
    current.rename(current.with_name("writer.old"))
    assert rest.settle_writer(root, promoted=False) is False
    assert (current / "adapter_config.json").is_file() and not pending.exists()
    # ReST's scoring LoRA starts from the sleep's seed, whatever was drawn before
    import torch

    first = [p.detach().clone() for p in rest._seeded_lora(load(str(tiny_model_dir(tmp_path / "models")))[0],
                                                            cfg).parameters() if p.requires_grad]
    torch.rand(1000)
    again = [p for p in rest._seeded_lora(load(str(tiny_model_dir(tmp_path / "models")))[0], cfg).parameters()
             if p.requires_grad]
    assert first and all(torch.equal(a, b) for a, b in zip(first, again))


def test_recovery_never_touches_a_sleep_that_holds_the_lock(tmp_path):
    """A sleeper in another container has a process id that means nothing here: while it holds the sleep
    lock, recovery must neither mark its journal interrupted nor sweep its staging."""
    from agentsleep.sleep.lock import sleep_lock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    j = Journal(tmp_path, "s5", "v0000")
    j.data["pid"] = dead.pid  # looks dead from here
    j._save()
    staging = tmp_path / "registry" / "staging" / f"stage-{dead.pid}-x"
    staging.mkdir(parents=True)
    with sleep_lock(tmp_path, what="sleep"):
        done = recover(tmp_path)
        assert done["interrupted"] == [] and done["staging_swept"] == 0 and staging.is_dir()
        assert json.loads((j.dir / "journal.json").read_text())["status"] == "running"
    done = recover(tmp_path)  # the lock is free: the sleeper is gone
    assert [x["sleep_id"] for x in done["interrupted"]] == ["s5"] and not staging.exists()


def test_status_shows_the_newest_sleep_even_when_it_failed(tmp_path):
    """A failed or stopped sleep writes only its journal: `status` must show it, not the promoted one
    before it."""
    from agentsleep.home import Home
    from agentsleep.sleep.journal import Journal
    from agentsleep.sleep.types import SleepReport, Status

    with Home.open(tmp_path / "h") as h:
        ok = Journal(h.root, "20261201-030000-aaaaaa", "v0000")
        ok.finish(SleepReport(sleep_id="20261201-030000-aaaaaa", status="promoted", version="v0001",
                              parent_version="v0000", episodes=[], metrics={}, reasons=[]))
        assert h.status()["last_sleep"]["status"] == "promoted"
        bad = Journal(h.root, "20261202-030000-bbbbbb", "v0001")
        bad.finish(status=Status.FAILED, error="OSError: No space left on device")
        last = h.status()["last_sleep"]
        assert (last["sleep_id"], last["status"]) == ("20261202-030000-bbbbbb", "failed")
        assert "No space left" in last["error"]


def test_scrub_removes_what_killed_sleeps_left_of_their_episodes(tmp_path):
    """After a forget nothing of the episode may stay in the home: a killed sleep's scratch (its seeding job,
    its trained expert) and a failed seeding's log go with the records."""
    from agentsleep.sleep.journal import scrub

    d = tmp_path / "sleeps" / "s1"
    (d / "scratch" / "agentsleep-expert-x").mkdir(parents=True)
    (d / "scratch" / "agentsleep-expert-x" / "adapter_model.safetensors").write_bytes(b"weights")
    (d / "seed-workers-abc.log").write_text("trained on: Zephyrine's locker code is 4471")
    (d / "journal.json").write_text("{}")
    scrub(tmp_path, {"e1"})
    assert sorted(p.name for p in d.iterdir()) == ["journal.json"]
