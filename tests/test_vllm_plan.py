"""The vLLM supervisor's choices that need no vLLM: which kind of swap each version gets, composing
a chain of sleep adapters into one, and refusing to expose development endpoints."""
from __future__ import annotations

import pytest
import torch

from agentsleep.serving.vllm import SERVED_NAME, Route, Server, VLLMProcess, VLLMSupervisor
from agentsleep.serving.vllm.lora import adapter_chain, compose_adapters
from agentsleep.serving.vllm.weights import arch_signature, weights_dir
from agentsleep.models.registry import Registry
from agentsleep.serving.loadtest import _random_lora, _save, make_swap_versions

from tiny import tiny_model_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny = tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    reg = Registry(tmp_path_factory.mktemp("reg") / "registry", base_model=str(tiny))
    versions = make_swap_versions(reg, scale=20.0)
    # a second sleep on the adapter version (adapter relative to it): a chain of two
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = versions["adapter"]
    pm = _random_lora(AutoModelForCausalLM.from_pretrained(str(a.path)), r=8, seed=5, scale=20.0)
    stage = reg.new_staging()
    pm.save_pretrained(str(stage / "adapter"))
    _save(pm.merge_and_unload(), AutoTokenizer.from_pretrained(str(a.path)), stage)
    versions["chained"] = reg.commit(stage, {"parent": a.name, "kind": "sleep"}, make_current=False)
    # same shapes, but the (tied) embedding matrix changed: vLLM's in-place reload would keep a stale lm_head
    m = AutoModelForCausalLM.from_pretrained(str(tiny))
    with torch.no_grad():
        m.model.embed_tokens.weight.add_(0.01)
    stage = reg.new_staging()
    _save(m, AutoTokenizer.from_pretrained(str(tiny)), stage)
    versions["embeddings"] = reg.commit(stage, {"parent": "v0000", "kind": "sleep"}, make_current=False)
    return reg, versions


def supervisor_on(version, max_lora_rank=16):
    sup = VLLMSupervisor(max_lora_rank=max_lora_rank)
    d = weights_dir(version)
    sup._route = Route(Server("http://127.0.0.1:1", None, None, version, arch_signature(d), d), SERVED_NAME, version)
    return sup


def test_swap_kinds(setup):
    reg, v = setup
    sup = supervisor_on(reg.get("v0000"))
    try:
        assert sup.plan(reg.get("v0000")) == "noop"
        assert sup.plan(v["adapter"]) == "adapter"
        assert sup.plan(v["chained"]) == "adapter"            # two sleeps: composed, rank 16
        assert sup.plan(v["weights"]) == "reload_weights"     # same shapes, no adapter
        assert sup.plan(v["grown"]) == "blue_green"           # one more layer
        assert sup.plan(v["embeddings"]) == "blue_green"      # tied embeddings changed
        assert sup.plan(v["adapter"], adapters=False) == "reload_weights"
    finally:
        sup.close()
    small = supervisor_on(reg.get("v0000"), max_lora_rank=8)
    assert small.plan(v["chained"]) == "reload_weights"       # rank 16 does not fit: reload instead
    small.close()
    on_adapter = supervisor_on(v["adapter"])
    assert on_adapter.plan(v["chained"]) == "adapter"         # its own adapter, relative to the served weights
    assert on_adapter.plan(reg.get("v0000")) == "reload_weights"  # rollback
    on_adapter.close()
    assert adapter_chain(v["chained"], "v0000") == [v["adapter"], v["chained"]]
    assert adapter_chain(v["weights"], "v0000") is None


def test_composed_adapter_equals_the_merged_chain(setup, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reg, v = setup
    info = compose_adapters([v["adapter"], v["chained"]], tmp_path / "composed")
    assert info["r"] == 16 and info["parts"] == [v["adapter"].name, v["chained"].name]
    base = AutoModelForCausalLM.from_pretrained(weights_dir(reg.get("v0000")))
    merged = PeftModel.from_pretrained(base, info["path"]).merge_and_unload()
    want = AutoModelForCausalLM.from_pretrained(str(v["chained"].path))
    got_sd, want_sd = merged.state_dict(), want.state_dict()
    assert got_sd.keys() == want_sd.keys()
    for k in want_sd:
        assert torch.allclose(got_sd[k], want_sd[k], atol=2e-5), k
    ids = torch.tensor([[1, 400, 500, 600]])
    assert torch.allclose(merged(ids).logits, want(ids).logits, atol=1e-4)


def test_dev_endpoints_stay_on_loopback(tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        VLLMProcess(tmp_path, host="0.0.0.0")
    assert VLLMProcess(tmp_path, host="127.0.0.1").url.startswith("http://127.0.0.1:")
    keyed = VLLMProcess(tmp_path, api_key="k-" + "secret-123")
    assert "k-secret-123" not in " ".join(keyed.command())  # the key goes by environment, never argv or the log


def test_attach_to_nothing_is_a_clear_error(setup):
    from conftest import free_port

    from agentsleep.serving.backend import SwapError

    reg, _ = setup
    sup = VLLMSupervisor(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SwapError, match="cannot reach vLLM"):
        sup.start(reg.get("v0000"))
    assert sup.health(probe=False)["state"] == "failed"
    sup.close()
