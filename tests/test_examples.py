"""The LangChain example runs end to end on the embedded model: awake with memory, sleep, closed-book."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.integration
def test_langchain_agent_example_end_to_end(tmp_path):
    # a small sleep (CPU budget) on the real embedded SmolLM2; the recipe itself is measured by `agentsleep bench`
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGENTSLEEP_SLEEP__REST__ROUNDS": "0",
           "AGENTSLEEP_SLEEP__SEED__EPOCHS": "3", "AGENTSLEEP_SLEEP__SEED__MIN_STEPS": "0", "AGENTSLEEP_SLEEP__SEED__REPLAY_PROMPTS": "16",
           "AGENTSLEEP_SLEEP__GATE__DRIFT_PROMPTS": "6", "AGENTSLEEP_SLEEP__GATE__MIN_RECALL_GAIN": "-1"}
    p = subprocess.run([sys.executable, str(EXAMPLES / "langchain_agent.py"), "--home", str(tmp_path / "home")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    awake, _, rest = out.partition("== asleep ==")
    asleep, _, closed = rest.partition("== awake, retrieval off")
    assert "agent [v0000]>" in awake and re.search(r"episodes stored: \d+", awake)
    m = re.search(r"sleep \S+: (\S+); serving (v\d{4})", asleep)
    assert m, asleep
    # The gate is open on recall (a handful of chat turns give too few probes to gate on) but still checks
    # drift: the turns are learnable facts about Alice, so this sleep must be promoted, and its report says
    # what the gate measured.
    assert (m.group(1), m.group(2)) == ("promoted", "v0001"), asleep
    assert re.search(r"  - recall \d\.\d\d -> \d\.\d\d.*drift KL \d", asleep), asleep
    # the agent now answers from the promoted version, without reloading anything
    assert closed.count("agent [v0001]>") == 2 and "agent [v0000]>" not in closed
