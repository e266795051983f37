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
