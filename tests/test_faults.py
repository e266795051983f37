"""Fault injection at test scale (tiny model): a full disk during publish, the Chroma server dying
while the agent is awake. The same faults on a real sleep, plus kill -9 at every stage, are counted
by `agentsleep bench faults`."""
import os
import subprocess
import sys
import textwrap

from agentsleep.config import Config
from agentsleep.home import Home
from agentsleep.memory.chroma_server import start, stop
from agentsleep.models.registry import Registry
from tiny import tiny_model_dir


def test_disk_full_during_publish_leaves_registry_intact(tmp_path):
    tiny = tiny_model_dir(tmp_path / "models")
    reg_root = tmp_path / "registry"
    Registry(reg_root, base_model=str(tiny))
    code = textwrap.dedent(f"""
        import resource, signal
        from peft import get_peft_model
        from agentsleep.config import SeedConfig
        from agentsleep.models.loader import load
        from agentsleep.models.registry import Registry
        from agentsleep.sleep.publish import publish
        from agentsleep.sleep.seed import lora_config
        model, tok = load({str(tiny)!r})
        pm = get_peft_model(model, lora_config(SeedConfig(lora_r=2)))
        from pathlib import Path
        reg = Registry(Path({str(reg_root)!r}), base_model={str(tiny)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # every larger write fails: EFBIG, like ENOSPC
        publish(pm, tok, reg, {{"parent": "v0000", "kind": "sleep", "episode_ids": ["e1"]}})
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0 and "RegistryError: publish: writing the new version failed" in p.stderr, p.stderr[-800:]
    assert "File too large" in p.stderr and "v0000 keeps serving" in p.stderr
    reg = Registry(reg_root, base_model=str(tiny))
    assert reg.names() == ["v0000"] and reg.current_name() == "v0000"
    assert not any(reg.staging_dir.iterdir())  # publish cleaned its own staging dir


def test_chroma_down_while_awake_agent_still_answers(tmp_path):
    tiny = tiny_model_dir(tmp_path / "models")
    proc, host, port = start(tmp_path / "chroma", tmp_path / "chroma.log")
    try:
        cfg = Config.model_validate({"model": {"base": str(tiny), "max_new_tokens": 4},
                                     "memory": {"backend": "server", "host": host, "port": port}})
        with Home.open(Home.init(tmp_path / "home", config=cfg)) as h:
            h.remember("The user's dog is called Biscuit.")
            assert h.ask("What is my dog's name?")["memories_used"]
            stop(proc)
            a = h.ask("What is my dog's name?")
            assert a["model_version"] == "v0000" and a["memories_used"] == [] and "memory_error" in a
    finally:
        stop(proc)
    proc, _, _ = start(tmp_path / "chroma", tmp_path / "chroma.log", port=port)  # nothing stored was lost
    try:
        with Home.open(tmp_path / "home") as h:
            assert [e.text for e in h.episodes()] == ["The user's dog is called Biscuit."]
    finally:
        stop(proc)


def test_vllm_fault_without_vllm_keeps_a_skipped_row(tmp_path, monkeypatch):
    """Where vLLM cannot run, the faults table still has the vLLM row, marked skipped with the reason,
    and it counts neither as injected nor as survived."""
    from agentsleep.bench import faults_suite
    from agentsleep.serving import vllm_backend

    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: "vLLM is not installed")
    root = Home.init(tmp_path / "home", config=Config.model_validate({"model": {"base": str(tiny_model_dir(tmp_path / "models"))}}))
    rows = []
    faults_suite.record_vllm(root, lambda *a, **k: rows.append(faults_suite.row(*a, **k)), say=lambda m: None)
    assert [r["fault"] for r in rows] == ["vLLM server killed while serving"]
    assert rows[0]["survived"] is None and "vLLM is not installed" in rows[0]["skipped"]
    res = faults_suite.summarize([faults_suite.row("kill -9 during seed", []), rows[0],
                                  faults_suite.row("recovery: clean sleep after the faults", [])])
    assert (res["faults_injected"], res["survived"], res["skipped"]) == (1, 1, ["vLLM server killed while serving"])
    assert res["targets"] == {"every fault survived": True, "recovered": True} and res["episodes_lost"] == 0
    md = faults_suite.markdown(res)
    assert "| vLLM server killed while serving | skipped | vLLM not available: " in md and "vLLM is not installed" in md
    assert "skipped 1 (vLLM server killed while serving)" in md


def test_publish_failure_is_read_from_the_journal_and_the_error():
    from agentsleep.bench.faults_suite import PUBLISH_FAILED, publish_failure_problems

    err = f"Traceback ...\nagentsleep.errors.RegistryError: {PUBLISH_FAILED} (File too large); v0000 keeps serving"
    failed_in = {"status": "failed", "stage": "publish", "error": f"{PUBLISH_FAILED} ([Errno 27] File too large)"}
    assert publish_failure_problems(1, "", err, failed_in) == []
    assert publish_failure_problems(1, "", "", failed_in) == []  # the journal's error alone is enough
    assert "did not fail" in publish_failure_problems(0, "promoted\n", "", {**failed_in, "status": "promoted"})[0]
    assert "no journal" in publish_failure_problems(1, "", "OSError: [Errno 27] File too large", None)[0]
    early = publish_failure_problems(1, "", "OSError: [Errno 27] File too large",
                                     {"status": "failed", "stage": "dream", "error": "OSError: File too large"})
    assert any("stage 'dream', not in publish" in p for p in early) and any("not publish's write failure" in p for p in early)
    assert any("not 'failed'" in p for p in publish_failure_problems(-9, "", err, {**failed_in, "status": "running"}))


def test_disk_full_row_fails_when_the_sleep_never_reaches_publish(tmp_path):
    """The disk-full fault counts as survived only if the sleep failed in publish: on a tiny random model
    the sleep ends after dreaming (no usable dreams), so the row must say the fault never happened,
    not that it was survived. The home still serves v0000."""
    from agentsleep.bench import faults_suite

    tiny = tiny_model_dir(tmp_path / "models")
    root = Home.init(tmp_path / "home", config=Config.model_validate(
        {"model": {"base": str(tiny), "max_new_tokens": 4}, "sleep": {"seed": {"replay_prompts": 2}}}))
    with Home.open(root) as h:
        h.remember(faults_suite.FACTS[0], source="bench")
    problems, note = faults_suite.disk_full(root, ["v0000"], "v0000", 1)
    assert problems and "did not fail on the full disk (exit 0: rejected)" in problems[0], problems
    assert note.startswith("(exit 0")
    assert problems[1:] == []  # nothing else is wrong: same versions, v0000 answers, the episode waits
