"""Lineage: history tree with shapes, `diff` between versions, the automatic growth policy."""
import pytest

from agentsleep.config import Config, SeedConfig
from agentsleep.home import Home
from agentsleep.models.loader import load
from agentsleep.sleep.publish import publish
from agentsleep.sleep.objective import lora_config
from cli_helpers import run_cli
from tiny import grounded_writer, tiny_model_dir, trusting_check


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"), layers=3)


def _home(tmp_path, tiny, **sleep):
    cfg = Config.model_validate({"model": {"base": str(tiny)}, "sleep": {"seed": {"replay_prompts": 4}, **sleep}})
    return Home.open(Home.init(tmp_path / "home", config=cfg))


def _fake_sleep(h: Home, episode_ids: list[str]):
    """A real published sleep version (a random, non-zero LoRA expert merged into the current version)."""
    import torch
    from peft import get_peft_model

    parent = h.registry.current()
    model, tok = load(parent.weights)
    pm = get_peft_model(model, lora_config(SeedConfig(lora_r=2)))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    v = publish(pm, tok, h.registry, {"parent": parent.name, "kind": "sleep", "sleep_id": f"s-{parent.name}",
                                      "episode_ids": episode_ids, "metrics": {"recall_after": 0.5}})
    h.store.ledger.mark(episode_ids, v.name, f"s-{parent.name}")
    return v


def test_history_tree_and_diff(tiny, tmp_path):
    h = _home(tmp_path, tiny)
    a = h.remember("The user's dog is called Biscuit.").id
    v1 = _fake_sleep(h, [a])
    v2 = h.grow(1)
    rows = {r["version"]: r for r in h.history()}
    assert rows["v0000"]["kind"] == "base" and rows["v0000"]["layers"] == 3
    assert rows["v0001"]["expert"] and rows["v0001"]["parameters"] == rows["v0000"]["parameters"]
    assert rows["v0002"]["kind"] == "grow" and rows["v0002"]["layers"] == 4
    assert rows["v0002"]["parameters"] > rows["v0001"]["parameters"] and rows["v0002"]["current"]

    d = h.diff("v0000")
    assert d["b"] == "v0002" and d["b_descends_from_a"] and d["common_ancestor"] == "v0000"
    assert [s["kind"] for s in d["steps"]] == ["sleep", "grow"]
    assert d["layers"] == {"a": 3, "b": 4} and d["episodes_only_in_b"] == [a]
    w = d["weights"]
    assert w["changed"] > 0 and w["relative_change"] > 0 and w["only_in_b_count"] > 0
    assert all("lora" not in x["tensor"] for x in w["top"])
    # growth changes no function and no shared weight except by renumbering: v0001 -> v0002 keeps layer 0
    d12 = h.diff(v1.name, v2.name)
    assert d12["steps"] == [{"version": "v0002", "kind": "grow"}] and d12["episodes_only_in_b"] == []
    assert "0" not in d12["weights"]["max_change_per_layer"]
    h.close()

    out = run_cli("history", home=h.root).out
    assert "v0002 grown (4 layers" in out and "<- current" in out and "v0001 sleep s-v0000, 1 episodes" in out
    assert out.index("v0001") < out.index("v0002")
    res = run_cli("diff", "v0000", "v0001", home=h.root)
    assert res.code == 0 and "v0000 -> v0001" in res.out and "shared tensors changed" in res.out
    assert run_cli("diff", "v0000", "--json", home=h.root).json()["b"] == "v0002"
    bad = run_cli("diff", "v0009", home=h.root)
    assert "v0009" in bad.one_line_error()


def test_growth_policy_every_n_sleeps(tiny, tmp_path):
    h = _home(tmp_path, tiny, grow_every=1)
    a = h.remember("The user's dentist is Dr. Okafor.").id
    assert h.sleep(dry_run=True).status == "dry-run" and h.registry.names() == ["v0000"]  # dry runs never grow
    _fake_sleep(h, [a])
    h.remember("The user's wifi is called OrangeFox.")
    rep = h.sleep()  # one sleep since the last growth, an episode waits: grow first, then sleep
    assert any(r.startswith("growth policy (every 1 sleeps): v0002 adds 1 block") for r in rep.reasons)
    v = h.registry.get("v0002")
    assert v.manifest["kind"] == "grow" and v.manifest["layers"] == {"before": 3, "after": 4}
    assert rep.parent_version == "v0002"  # the sleep ran on the grown model
    before = h.registry.names()
    h.sleep()  # the tiny model's sleep was rejected: no new sleep since growth, so no second growth
    assert h.registry.names() == before
    h.close()


def test_growth_policy_refusal_is_reported_not_raised(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(d)
    cfg = Config.model_validate({"model": {"base": str(d)}, "sleep": {"grow_every": 1}})
    with Home.open(Home.init(tmp_path / "home", config=cfg)) as h:
        line = h._grow_if_due("test", force=True)
        assert line.startswith("growth policy (test) did not grow:") and "not supported" in line
        assert h.registry.names() == ["v0000"]



FAST = {"seed": {"replay_prompts": 4, "epochs": 1, "min_steps": 0}, "rest": {"rounds": 0},
        "dream": {"per_episode": 3, "teacher_agreement": False}}


@pytest.mark.parametrize("gate,grows", [({"min_recall_gain": 2.0, "max_drift_kl": 1000}, True),
                                        ({"min_recall_gain": -1, "max_drift_kl": 0.0}, False)])
def test_growth_policy_on_reject_reads_which_check_failed(tiny, tmp_path, monkeypatch, gate, grows):
    """grow_on_reject grows after a sleep rejected for recall (fresh capacity may help), not after one
    rejected for drift (more capacity would not)."""
    monkeypatch.setattr("agentsleep.sleep.dream.write", grounded_writer)
    monkeypatch.setattr("agentsleep.sleep.evidence.checked", trusting_check)  # the gate can measure recall
    h = _home(tmp_path, tiny, grow_on_reject=True, **FAST, gate={"drift_prompts": 2, **gate})
    h.remember("The user's locker code is 4417.")
    rep = h.sleep()
    assert rep.status == "rejected"
    assert rep.metrics["gate_failed"] == (["recall_gain"] if grows else ["drift"])
    grown = [r for r in rep.reasons if r.startswith("growth policy (after a sleep rejected")]
    if grows:
        assert grown and h.registry.current().manifest["kind"] == "grow"
        assert h.registry.current().manifest["layers"] == {"before": 3, "after": 4}
    else:
        assert not grown and h.registry.names() == ["v0000"]
    assert len(h.store.list(unconsolidated_only=True)) == 1  # a rejected sleep keeps its episode waiting
    h.close()


def test_growth_on_reject_stops_at_max_grown_blocks(tiny, tmp_path, monkeypatch):
    """A run of rejected nights cannot grow the model without bound: once the lineage holds
    sleep.max_grown_blocks inserted blocks, the policy says so and adds none."""
    monkeypatch.setattr("agentsleep.sleep.dream.write", grounded_writer)
    monkeypatch.setattr("agentsleep.sleep.evidence.checked", trusting_check)  # the gate can measure recall
    h = _home(tmp_path, tiny, grow_on_reject=True, max_grown_blocks=1, **FAST,
              gate={"drift_prompts": 2, "min_recall_gain": 2.0, "max_drift_kl": 1000})
    h.remember("The user's locker code is 4417.")
    assert h.sleep().status == "rejected" and h.registry.current().manifest["kind"] == "grow"
    rep = h.sleep()
    assert rep.status == "rejected" and any("max_grown_blocks is 1" in r for r in rep.reasons), rep.reasons
    assert h.registry.current().manifest["layers"] == {"before": 3, "after": 4}  # still the one grown block
    h.close()
