"""The daemon with the real store, the real sleep pipeline and a serving process.

* the default probe counts episodes in the real (read-only) Chroma store;
* a REAL sleep (run_sleep via Home.sleep in the daemon's worker process) on a
  tiny random model: it cannot write parseable dreams, so it ends "rejected",
  but it runs select -> load -> dream through the daemon and leaves a journal,
  a report and a healthy status;
* a serving process (Home.ask, which follows CURRENT) picks up a version that a
  sleep run by the daemon promotes. The fast variant publishes a perturbed tiny
  model with the pipeline's own publish(); the integration variant runs a full
  real sleep on the embedded SmolLM2 with the gate opened.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agentsleep.cli import load_daemon

load_daemon()
from agentsleep.config import Config, DaemonConfig  # noqa: E402
from agentsleep.daemon import Daemon, daemon_info, daemon_status, journals, submit_request, wait_request  # noqa: E402
from agentsleep.home import Home  # noqa: E402
from tiny import tiny_model_dir  # noqa: E402

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(300)

FACTS = ["Alice's daughter is called Maya and she is seven years old.",
         "The spare key to the garden shed is hidden under the blue flower pot."]


def _fast_sleep_config(base: str, dreams: int = 3, dream_tokens: int = 24, **gate) -> dict:
    """A sleep small enough for tests; the gate opens fully when asked (any result promotes)."""
    return {
        "model": {"base": base},
        "sleep": {
            "dream": {"per_episode": dreams, "stems": ["What", "Where", "Who"][:dreams], "answer_spans": 0, "keep_top_k": 2,
                      "keep_random": 0, "probes_per_episode": 1, "max_new_tokens": dream_tokens, "batch_size": 8},
            "seed": {"epochs": 2, "min_steps": 0, "batch_size": 4, "max_seq_len": 96, "replay_prompts": 4, "replay_per_step": 1,
                     "on_policy_every": 1000, "lora_r": 4, "lora_alpha": 8},
            "rest": {"rounds": 0},
            "gate": {"drift_prompts": 2, **gate},
        },
        "daemon": {"cron": "", "threshold_episodes": 10**9, "check_seconds": 0.2},
    }


def _make_home(root: Path, cfg: dict, facts=FACTS) -> Path:
    Home.init(root, config=Config.model_validate(cfg))
    with Home.open(root) as h:                       # the agent: the store's one writer
        for f in facts:
            h.remember(f)
    return root


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("AGENTSLEEP_HOME", None)
    env.update(extra)
    return env


def _start_daemon(root: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "agentsleep.cli", "--home", str(root), "daemon", "run",
                             "--heartbeat", "0.2", "--poll", "0.1", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not ((daemon_info(root) or {}).get("pid") == proc.pid
               and daemon_status(root, count_waiting=False)["daemon"].get("state") == "running"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory, tiny):
    # A random model writes no parseable dreams: the real sleep ends "rejected" after dreaming.
    return _make_home(tmp_path_factory.mktemp("daemon-real") / "home",
                      _fast_sleep_config(str(tiny), dreams=1, dream_tokens=8))


def test_default_probe_counts_the_real_store(tiny_home):
    calls = []
    cfg = Config.load(tiny_home / "config.toml")
    d = Daemon([tiny_home], sleep_fn=lambda job: calls.append(job.reason) or {"status": "nothing-to-do"},
               heartbeat_s=0.2, request_poll_s=0.1)
    d.start()
    try:
        slot = d.slots[str(tiny_home.resolve())]
        assert slot.home.writable is False               # never the store's writer
        assert d.probe(slot)[0] == len(FACTS)
        slot.cfg = cfg.daemon.model_copy(update={"threshold_episodes": len(FACTS)})
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls == ["threshold"]
        assert d.status()["waiting"]["episodes"] == len(FACTS)
    finally:
        d.stop()


def test_real_sleep_runs_through_the_daemon(tiny_home):
    pytest.importorskip("agentsleep.sleep.pipeline")
    d = _start_daemon(tiny_home)
    try:
        rid = submit_request(tiny_home)
        assert rid
        res = wait_request(tiny_home, rid, timeout=240)
        assert res is not None, "no answer from the daemon"
        assert res["status"] in ("promoted", "rejected", "nothing-to-do"), res
        assert res["reason"] == "on-demand" and res.get("sleep_id")
        j = json.loads((tiny_home / "sleeps" / res["sleep_id"] / "journal.json").read_text())
        assert j["status"] == res["status"] and j["pid"] != d.pid          # ran in the worker process
        assert (tiny_home / "sleeps" / res["sleep_id"] / "report.json").is_file()
        st = daemon_status(tiny_home, count_waiting=False)
        assert st["health"]["ok"] and st["last_sleep"]["sleep_id"] == res["sleep_id"]
        assert not [x for _, x in journals(tiny_home) if x.get("status") == "running"]
        assert list((tiny_home / "registry" / "staging").iterdir()) == []
        log = (tiny_home / "logs" / "daemon.log").read_text()
        assert f"sleep {res['sleep_id']} finished: {res['status']}" in log
        assert "stage dream" in log                                          # the worker's stages
    finally:
        assert _stop(d) == 0


# -- a promoted version reaches a serving process ----------------------------------------
def publish_perturbed_sleep(job):
    """Runs in the daemon's worker: a sleep whose training is one random nudge of a LoRA,
    published with the pipeline's own publish() (merged weights, adapter, manifest)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from agentsleep.home import Home
    from agentsleep.models.loader import load
    from agentsleep.sleep.lock import sleep_lock
    from agentsleep.sleep.publish import publish

    home = Home.open(job.home, writable=False, create=False)
    with sleep_lock(home.root):
        sid = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        jdir = home.root / "sleeps" / sid
        jdir.mkdir(parents=True)
        journal = {"sleep_id": sid, "pid": os.getpid(), "stage": "seed", "started_at": time.time(), "status": "running"}
        (jdir / "journal.json").write_text(json.dumps(journal))
        parent = home.registry.current()
        model, tok = load(parent.weights)
        pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        job.progress("publish", 0, 1)
        v = publish(pm, tok, home.registry, {"parent": parent.name, "kind": "sleep", "sleep_id": sid})
        journal.update(status="promoted", stage="done")
        (jdir / "journal.json").write_text(json.dumps(journal))
        (jdir / "report.json").write_text(json.dumps({"sleep_id": sid, "status": "promoted", "version": v.name,
                                                      "finished_at": time.time()}))
    home.close()
    return {"status": "promoted", "sleep_id": sid, "version": v.name}


SERVER = r"""
import sys
from agentsleep.home import Home
h = Home.open(sys.argv[1], writable=False)
for line in sys.stdin:
    r = h.ask("Where is the spare key?", use_memory=False, max_new_tokens=4)
    print(r["model_version"], flush=True)
"""


def _serve(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SERVER, str(root)], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _ask(server: subprocess.Popen) -> str:
    server.stdin.write("?\n")
    server.stdin.flush()
    return server.stdout.readline().strip()


def test_serving_process_picks_up_the_promoted_version(tiny_home):
    server = _serve(tiny_home)
    d = _start_daemon(tiny_home, "--sleep-fn", "test_daemon_sleep:publish_perturbed_sleep")
    try:
        before = _ask(server)
        assert before == (tiny_home / "registry" / "CURRENT").read_text().strip()
        rid = submit_request(tiny_home)
        res = wait_request(tiny_home, rid, timeout=120)
        assert res["status"] == "promoted", res
        assert _ask(server) == res["version"] != before    # the very next request uses it
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        assert _stop(d) == 0


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_real_sleep_on_smollm2_promotes_and_serving_follows(tmp_path):
    """Full pipeline on the embedded model, gate opened so the sleep promotes (minutes on 2 cores)."""
    pytest.importorskip("agentsleep.sleep.pipeline")
    cfg = _fast_sleep_config("embedded", min_recall_gain=-1.0, min_retention=0.0, max_drift_kl=1e9)
    root = _make_home(tmp_path / "home", cfg, facts=FACTS[1:])
    server = _serve(root)
    d = _start_daemon(root)
    try:
        assert _ask(server) == "v0000"
        rid = submit_request(root)
        res = wait_request(root, rid, timeout=1500)
        assert res["status"] == "promoted", res
        assert _ask(server) == res["version"]
        with Home.open(root, writable=False) as h:
            assert h.status()["unconsolidated"] == 0
    finally:
        server.stdin.close()
        server.wait(timeout=60)
        assert _stop(d) == 0
